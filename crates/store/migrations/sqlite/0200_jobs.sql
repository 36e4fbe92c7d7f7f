-- Durable jobs (imports, provisioning) and Entra directories: what the job runner needs beyond the
-- initial tables. Keep column-for-column equal to migrations/postgres/0200_jobs.sql.

-- A job is owned by one runner at a time through a lease; a runner that dies stops renewing it and
-- another one (or the same process after a restart) takes the job over.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT NULL;
ALTER TABLE jobs ADD COLUMN lease_until TEXT NULL;
-- Why a whole job failed (e.g. the directory's credentials were refused), for the API.
ALTER TABLE jobs ADD COLUMN error TEXT NULL;
-- A job-level summary (an import's created/updated/disabled counts), JSON.
ALTER TABLE jobs ADD COLUMN result TEXT NULL;
CREATE INDEX jobs_state ON jobs (state);

-- The Graph request-id of the last failed call, for support.
ALTER TABLE job_items ADD COLUMN request_id TEXT NULL;
-- A retried item waits until then (Retry-After, back-off).
ALTER TABLE job_items ADD COLUMN not_before TEXT NULL;
-- Provisioning writes the local credential id here before it calls Graph, so a resumed item can
-- reconcile with Entra instead of registering twice.
ALTER TABLE job_items ADD COLUMN intent_credential_id BLOB NULL;
-- What an item produced that the API shows (JSON; never a secret).
ALTER TABLE job_items ADD COLUMN result TEXT NULL;
-- Items are processed in insertion order.
ALTER TABLE job_items ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX job_items_state ON job_items (job_id, state);

-- An optional group to import instead of the whole directory, and the account that consented to
-- the app (Entra refuses to provision passkeys for it, so Keyward refuses up front).
ALTER TABLE directories ADD COLUMN group_id TEXT NULL;
ALTER TABLE directories ADD COLUMN consenting_upn TEXT NULL;
ALTER TABLE directories ADD COLUMN last_import_at TEXT NULL;

-- Which users an import of a directory has seen, so a full import can mark the missing ones
-- without touching users of another directory or of another source.
CREATE TABLE directory_users (
    directory_id BLOB NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    user_id BLOB NOT NULL REFERENCES users(id),
    external_id TEXT NOT NULL,
    -- The import job that last saw this user; a full import marks the others missing.
    seen_by BLOB NULL,
    PRIMARY KEY (directory_id, external_id)
);
CREATE INDEX directory_users_user ON directory_users (user_id);

-- A credential registered at a relying party on the user's behalf, with the id the RP gave it
-- (Entra's fido2 method id). Deleted with its credential.
CREATE TABLE rp_registrations (
    org_id BLOB NOT NULL REFERENCES organisations(id),
    user_id BLOB NOT NULL REFERENCES users(id),
    key_id BLOB NOT NULL,
    credential_id BLOB NOT NULL,
    rp TEXT NOT NULL,
    directory_id BLOB NULL,
    external_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, credential_id),
    FOREIGN KEY (key_id, credential_id) REFERENCES credentials (key_id, credential_id) ON DELETE CASCADE
);
CREATE INDEX rp_registrations_user ON rp_registrations (org_id, user_id, rp);
