-- Pairing tools and delegated sessions (the relay). Keep column-for-column equal to
-- migrations/postgres/0100_pairing.sql: the repositories run the same SQL on both.

-- A pairing tool's device key. It belongs to exactly one admin (registered with an API token) or
-- one user (registered with an activation code). Revoked devices are kept for the audit trail.
CREATE TABLE pair_devices (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    admin_id BLOB NULL REFERENCES admins(id),
    user_id BLOB NULL REFERENCES users(id),
    name TEXT NOT NULL,
    -- Uncompressed SEC1 P-256 point (65 bytes).
    public_key BLOB NOT NULL,
    created_at TEXT NOT NULL,
    last_seen_at TEXT NULL,
    revoked_at TEXT NULL,
    CHECK ((admin_id IS NULL) <> (user_id IS NULL))
);
CREATE INDEX pair_devices_admin ON pair_devices (admin_id);
CREATE INDEX pair_devices_user ON pair_devices (user_id);

-- An admin connected to a user's key through the admin's pairing tool: registration only,
-- time-limited. ended_at is set by Disconnect, logout or revocation; expiry is expires_at.
CREATE TABLE delegated_sessions (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    admin_id BLOB NOT NULL REFERENCES admins(id),
    user_id BLOB NOT NULL REFERENCES users(id),
    key_id BLOB NOT NULL REFERENCES security_keys(id),
    device_id BLOB NOT NULL REFERENCES pair_devices(id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at TEXT NULL,
    end_reason TEXT NULL
);
CREATE INDEX delegated_sessions_open_user ON delegated_sessions (org_id, user_id) WHERE ended_at IS NULL;
CREATE INDEX delegated_sessions_open_device ON delegated_sessions (device_id) WHERE ended_at IS NULL;
