-- Admin sign-in beyond passwords: passkeys (WebAuthn) of admins, the server side of WebAuthn
-- ceremonies in flight, one-time tokens (first-run set-up, sign-in links) and the login rate
-- limiter's buckets, shared by every replica on one database. Keep it column-for-column equal to
-- migrations/postgres/0300_admin_auth.sql. Times that SQL compares are Unix milliseconds (INTEGER),
-- so both backends order them the same way.

CREATE TABLE admin_passkeys (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    admin_id BLOB NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    credential_id BLOB NOT NULL UNIQUE,
    -- The WebAuthn user handle of the admin: the same for all of one admin's passkeys.
    user_handle BLOB NOT NULL,
    name TEXT NOT NULL,
    -- webauthn_rp's binary encodings: the public key (fixed at registration) and the sign counter,
    -- backup and UV flags (updated by every sign-in).
    static_state BLOB NOT NULL,
    dynamic_state BLOB NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT NULL
);
CREATE INDEX admin_passkeys_admin ON admin_passkeys (admin_id);

CREATE TABLE webauthn_ceremonies (
    challenge BLOB PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('register', 'authenticate')),
    admin_id BLOB NULL REFERENCES admins(id) ON DELETE CASCADE,
    org_id BLOB NULL REFERENCES organisations(id),
    state BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE admin_one_time_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('setup', 'signin')),
    admin_id BLOB NULL REFERENCES admins(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE rate_limit_buckets (
    bucket BLOB PRIMARY KEY NOT NULL,
    window_start INTEGER NOT NULL,
    hits INTEGER NOT NULL
);
