-- PIN policy `admin_one_time`: assigning a key sets a generated one-time PIN that the key forces
-- the user to change (CTAP forcePINChange). SQLite cannot change a CHECK constraint in place, so
-- the table is rebuilt (nothing references it). Keep it column-for-column equal to
-- migrations/postgres/0310_org_settings.sql as changed by 0700.

CREATE TABLE org_settings_0700 (
    org_id BLOB PRIMARY KEY NOT NULL REFERENCES organisations(id),
    aaguid BLOB NOT NULL,
    attestation TEXT NOT NULL CHECK (attestation IN ('none', 'packed')),
    min_pin_length INTEGER NOT NULL CHECK (min_pin_length BETWEEN 4 AND 63),
    pin_policy TEXT NOT NULL CHECK (pin_policy IN ('user', 'admin_one_time')),
    delegated_session_minutes INTEGER NOT NULL CHECK (delegated_session_minutes BETWEEN 1 AND 15),
    attestation_ca_cert BLOB NULL,
    attestation_ca_key_sealed BLOB NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NULL
);

INSERT INTO org_settings_0700 (org_id, aaguid, attestation, min_pin_length, pin_policy,
    delegated_session_minutes, attestation_ca_cert, attestation_ca_key_sealed, updated_at, updated_by)
SELECT org_id, aaguid, attestation, min_pin_length, pin_policy, delegated_session_minutes,
    attestation_ca_cert, attestation_ca_key_sealed, updated_at, updated_by
FROM org_settings;

DROP TABLE org_settings;
ALTER TABLE org_settings_0700 RENAME TO org_settings;
