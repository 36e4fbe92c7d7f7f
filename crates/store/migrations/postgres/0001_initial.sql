-- Keyward schema, PostgreSQL flavour. UUIDs are UUID, times TIMESTAMPTZ, booleans BOOLEAN, byte strings
-- BYTEA. Keep it column-for-column equal to migrations/sqlite/0001_initial.sql: the repositories run
-- the same SQL on both.

CREATE TABLE organisations (
    id UUID PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE admins (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'helpdesk', 'auditor')),
    password_hash TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE admin_sessions (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    admin_id UUID NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    csrf_hash BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_tokens (
    id UUID PRIMARY KEY NOT NULL,
    admin_id UUID NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NULL
);

CREATE TABLE users (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    upn TEXT NOT NULL,
    email TEXT NULL,
    display_name TEXT NULL,
    status TEXT NOT NULL CHECK (status IN ('new', 'assigned', 'active', 'disabled')),
    source TEXT NOT NULL CHECK (source IN ('csv', 'api', 'entra')),
    external_id TEXT NULL,
    key_id UUID NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, upn)
);
CREATE INDEX users_org_external ON users (org_id, external_id);

CREATE TABLE security_keys (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    user_id UUID NOT NULL REFERENCES users(id),
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    aaguid BYTEA NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    kek_version INTEGER NOT NULL,
    pin_verifier BYTEA NULL,
    pin_code_points INTEGER NOT NULL DEFAULT 0,
    pin_retries INTEGER NOT NULL DEFAULT 8,
    consecutive_pin_failures INTEGER NOT NULL DEFAULT 0,
    min_pin_length INTEGER NOT NULL DEFAULT 4,
    min_pin_length_rp_ids TEXT NOT NULL DEFAULT '[]',
    force_pin_change BOOLEAN NOT NULL DEFAULT FALSE,
    always_uv BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX security_keys_user ON security_keys (org_id, user_id);

CREATE TABLE credentials (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    key_id UUID NOT NULL REFERENCES security_keys(id),
    credential_id BYTEA NOT NULL,
    rp_id TEXT NOT NULL,
    rp_id_hash BYTEA NOT NULL,
    rp_name TEXT NULL,
    user_handle BYTEA NOT NULL,
    user_name TEXT NULL,
    user_display_name TEXT NULL,
    alg BIGINT NOT NULL,
    public_key_cose BYTEA NOT NULL,
    sealed_private_key BYTEA NOT NULL,
    sealed_cred_random BYTEA NULL,
    discoverable BOOLEAN NOT NULL,
    cred_protect INTEGER NOT NULL,
    cred_blob BYTEA NULL,
    sign_count BIGINT NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    backup_state BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NULL,
    via TEXT NOT NULL CHECK (via IN ('automated', 'delegated', 'user')),
    UNIQUE (key_id, credential_id)
);
CREATE INDEX credentials_key_rp ON credentials (key_id, rp_id_hash);

CREATE TABLE activation_codes (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    user_id UUID NOT NULL REFERENCES users(id),
    code_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ NULL
);

-- One row per organisation: the head of its audit chain. Appending locks this row, which serialises
-- appends per organisation on PostgreSQL (SQLite serialises all writers anyway).
CREATE TABLE audit_heads (
    org_id UUID PRIMARY KEY NOT NULL REFERENCES organisations(id),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);

CREATE TABLE audit_log (
    org_id UUID NOT NULL REFERENCES organisations(id),
    seq BIGINT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX audit_log_actor ON audit_log (org_id, actor);
CREATE INDEX audit_log_action ON audit_log (org_id, action);

CREATE TABLE jobs (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE job_items (
    job_id UUID NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users(id),
    state TEXT NOT NULL,
    error TEXT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, user_id)
);

CREATE TABLE directories (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL REFERENCES organisations(id),
    name TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sealed_client_secret BYTEA NOT NULL,
    authority_url TEXT NOT NULL,
    graph_url TEXT NOT NULL,
    delta_link TEXT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
