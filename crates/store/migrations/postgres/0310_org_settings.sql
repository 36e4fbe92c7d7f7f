-- Organisation settings: what new security keys are made with (AAGUID, attestation, minimum PIN
-- length, PIN policy) and how long a delegated session may last. One row per organisation; an
-- organisation without a row uses the server's defaults. Keep it column-for-column equal to
-- migrations/sqlite/0310_org_settings.sql.

CREATE TABLE org_settings (
    org_id UUID PRIMARY KEY NOT NULL REFERENCES organisations(id),
    aaguid BYTEA NOT NULL,
    attestation TEXT NOT NULL CHECK (attestation IN ('none', 'packed')),
    min_pin_length INTEGER NOT NULL CHECK (min_pin_length BETWEEN 4 AND 63),
    pin_policy TEXT NOT NULL CHECK (pin_policy IN ('user')),
    delegated_session_minutes INTEGER NOT NULL CHECK (delegated_session_minutes BETWEEN 1 AND 15),
    -- The organisation's packed-attestation CA: its certificate (public, exported to relying
    -- parties) and its private key sealed by the vault. Created the first time packed attestation
    -- is chosen.
    attestation_ca_cert BYTEA NULL,
    attestation_ca_key_sealed BYTEA NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT NULL
);

-- Batch attestation certificates, one per AAGUID the organisation's keys carry (the certificate
-- names the AAGUID, so keys made before an AAGUID change keep a matching one).
CREATE TABLE attestation_batches (
    org_id UUID NOT NULL REFERENCES organisations(id),
    aaguid BYTEA NOT NULL,
    cert_der BYTEA NOT NULL,
    key_sealed BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, aaguid)
);
