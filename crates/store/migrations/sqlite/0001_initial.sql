-- Keyward schema, SQLite flavour. UUIDs are 16-byte BLOBs, times are RFC 3339 TEXT written by sqlx,
-- booleans are INTEGER 0/1. Keep it column-for-column equal to migrations/postgres/0001_initial.sql:
-- the repositories run the same SQL on both.

CREATE TABLE organisations (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE TABLE admins (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'helpdesk', 'auditor')),
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE admin_sessions (
    token_hash BLOB PRIMARY KEY NOT NULL,
    admin_id BLOB NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    csrf_hash BLOB NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id BLOB PRIMARY KEY NOT NULL,
    admin_id BLOB NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT NULL
);

CREATE TABLE users (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    upn TEXT NOT NULL,
    email TEXT NULL,
    display_name TEXT NULL,
    status TEXT NOT NULL CHECK (status IN ('new', 'assigned', 'active', 'disabled')),
    source TEXT NOT NULL CHECK (source IN ('csv', 'api', 'entra')),
    external_id TEXT NULL,
    key_id BLOB NULL,
    created_at TEXT NOT NULL,
    UNIQUE (org_id, upn)
);
CREATE INDEX users_org_external ON users (org_id, external_id);

CREATE TABLE security_keys (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    user_id BLOB NOT NULL REFERENCES users(id),
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    aaguid BLOB NOT NULL,
    wrapped_dek BLOB NOT NULL,
    kek_version INTEGER NOT NULL,
    pin_verifier BLOB NULL,
    pin_code_points INTEGER NOT NULL DEFAULT 0,
    pin_retries INTEGER NOT NULL DEFAULT 8,
    consecutive_pin_failures INTEGER NOT NULL DEFAULT 0,
    min_pin_length INTEGER NOT NULL DEFAULT 4,
    min_pin_length_rp_ids TEXT NOT NULL DEFAULT '[]',
    force_pin_change INTEGER NOT NULL DEFAULT 0,
    always_uv INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX security_keys_user ON security_keys (org_id, user_id);

CREATE TABLE credentials (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    key_id BLOB NOT NULL REFERENCES security_keys(id),
    credential_id BLOB NOT NULL,
    rp_id TEXT NOT NULL,
    rp_id_hash BLOB NOT NULL,
    rp_name TEXT NULL,
    user_handle BLOB NOT NULL,
    user_name TEXT NULL,
    user_display_name TEXT NULL,
    alg BIGINT NOT NULL,
    public_key_cose BLOB NOT NULL,
    sealed_private_key BLOB NOT NULL,
    sealed_cred_random BLOB NULL,
    discoverable INTEGER NOT NULL,
    cred_protect INTEGER NOT NULL,
    cred_blob BLOB NULL,
    sign_count BIGINT NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backup_state INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NULL,
    via TEXT NOT NULL CHECK (via IN ('automated', 'delegated', 'user')),
    UNIQUE (key_id, credential_id)
);
CREATE INDEX credentials_key_rp ON credentials (key_id, rp_id_hash);

CREATE TABLE activation_codes (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    user_id BLOB NOT NULL REFERENCES users(id),
    code_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT NULL
);

-- One row per organisation: the head of its audit chain. Appending locks this row, which serialises
-- appends per organisation on PostgreSQL (SQLite serialises all writers anyway).
CREATE TABLE audit_heads (
    org_id BLOB PRIMARY KEY NOT NULL REFERENCES organisations(id),
    seq BIGINT NOT NULL,
    hash BLOB NOT NULL
);

CREATE TABLE audit_log (
    org_id BLOB NOT NULL REFERENCES organisations(id),
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX audit_log_actor ON audit_log (org_id, actor);
CREATE INDEX audit_log_action ON audit_log (org_id, action);

CREATE TABLE jobs (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE job_items (
    job_id BLOB NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    user_id BLOB NOT NULL REFERENCES users(id),
    state TEXT NOT NULL,
    error TEXT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, user_id)
);

CREATE TABLE directories (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organisations(id),
    name TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sealed_client_secret BLOB NOT NULL,
    authority_url TEXT NOT NULL,
    graph_url TEXT NOT NULL,
    delta_link TEXT NULL,
    created_at TEXT NOT NULL
);
