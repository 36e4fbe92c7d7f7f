-- Admin sign-in beyond passwords: passkeys (WebAuthn) of admins, the server side of WebAuthn
-- ceremonies in flight, one-time tokens (first-run set-up, sign-in links) and the login rate
-- limiter's buckets, shared by every replica on one database. Keep it column-for-column equal to
-- migrations/sqlite/0300_admin_auth.sql. Times that SQL compares are Unix milliseconds (BIGINT),
-- so both backends order them the same way.

CREATE TABLE admin_passkeys (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    admin_id UUID NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    credential_id BYTEA NOT NULL UNIQUE,
    -- The WebAuthn user handle of the admin: the same for all of one admin's passkeys.
    user_handle BYTEA NOT NULL,
    name TEXT NOT NULL,
    -- webauthn_rp's binary encodings: the public key (fixed at registration) and the sign counter,
    -- backup and UV flags (updated by every sign-in).
    static_state BYTEA NOT NULL,
    dynamic_state BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NULL
);
CREATE INDEX admin_passkeys_admin ON admin_passkeys (admin_id);

CREATE TABLE webauthn_ceremonies (
    challenge BYTEA PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('register', 'authenticate')),
    admin_id UUID NULL REFERENCES admins(id) ON DELETE CASCADE,
    org_id UUID NULL REFERENCES organisations(id),
    state BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE admin_one_time_tokens (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('setup', 'signin')),
    admin_id UUID NULL REFERENCES admins(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE rate_limit_buckets (
    bucket BYTEA PRIMARY KEY NOT NULL,
    window_start BIGINT NOT NULL,
    hits BIGINT NOT NULL
);
