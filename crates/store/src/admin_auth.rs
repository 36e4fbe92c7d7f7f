//! Admin sign-in state beyond passwords: admins' passkeys, WebAuthn ceremonies in flight, one-time
//! tokens (the first-run set-up link and sign-in links) and the login rate limiter's buckets.
//!
//! Everything that must hold across replicas lives here rather than in a server's memory: a
//! ceremony begun on one replica finishes on another, a token is spent once wherever it is used,
//! and the rate limit counts attempts made against any replica. Secrets arrive already hashed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, now, on_pool, on_tx};

/// One passkey of an admin. The states are webauthn_rp's binary encodings, opaque here.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminPasskeyRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub admin_id: Uuid,
    pub credential_id: Vec<u8>,
    pub user_handle: Vec<u8>,
    pub name: String,
    pub static_state: Vec<u8>,
    pub dynamic_state: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a new passkey row holds.
pub struct NewAdminPasskey<'a> {
    pub org_id: Uuid,
    pub admin_id: Uuid,
    pub credential_id: &'a [u8],
    pub user_handle: &'a [u8],
    pub name: &'a str,
    pub static_state: &'a [u8],
    pub dynamic_state: &'a [u8],
}

/// The server side of a WebAuthn ceremony, taken back (and thereby spent) when it finishes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CeremonyRecord {
    /// The admin who began a registration, or the only admin a sign-in may end as.
    pub admin_id: Option<Uuid>,
    /// The organisation a sign-in was restricted to, if any.
    pub org_id: Option<Uuid>,
    pub state: Vec<u8>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// A spent one-time token: who it was for and until when it was valid.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OneTimeTokenRecord {
    pub admin_id: Option<Uuid>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// The kinds of one-time token.
pub mod token_kind {
    /// The first-run owner set-up link (no admin yet).
    pub const SETUP: &str = "setup";
    /// A sign-in link for an existing admin, issued by the bootstrap CLI.
    pub const SIGNIN: &str = "signin";
}

const PASSKEY_COLUMNS: &str = "id, org_id, admin_id, credential_id, user_handle, name, static_state, dynamic_state, created_at, last_used_at";

impl Store {
    /// The admin's passkeys, oldest first.
    pub async fn admin_passkeys(
        &self,
        admin_id: Uuid,
    ) -> Result<Vec<AdminPasskeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {PASSKEY_COLUMNS} FROM admin_passkeys WHERE admin_id = $1 ORDER BY created_at, id"
        );
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(admin_id).fetch_all(p).await?))
    }

    /// The passkey with this WebAuthn credential id, whoever owns it.
    pub async fn admin_passkey_by_credential_id(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<AdminPasskeyRecord>, StoreError> {
        let sql = format!("SELECT {PASSKEY_COLUMNS} FROM admin_passkeys WHERE credential_id = $1");
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(credential_id).fetch_optional(p).await?),
        )
    }

    /// Saves the server side of a ceremony under its challenge, and drops expired ones.
    pub async fn put_ceremony(
        &self,
        challenge: &[u8],
        kind: &str,
        admin_id: Option<Uuid>,
        org_id: Option<Uuid>,
        state: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now_ms = now().timestamp_millis();
        on_pool!(&self.db, p => {
            sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < $1")
                .bind(now_ms).execute(p).await?;
            sqlx::query("INSERT INTO webauthn_ceremonies (challenge, kind, admin_id, org_id, state, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(challenge).bind(kind).bind(admin_id).bind(org_id).bind(state).bind(expires_at)
                .execute(p).await?;
        });
        Ok(())
    }

    /// Takes the ceremony with this challenge and kind out of the table: a second finish with the
    /// same challenge finds nothing. Expiry is the caller's to check.
    pub async fn take_ceremony(
        &self,
        challenge: &[u8],
        kind: &str,
    ) -> Result<Option<CeremonyRecord>, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as("DELETE FROM webauthn_ceremonies WHERE challenge = $1 AND kind = $2 RETURNING admin_id, org_id, state, expires_at")
                .bind(challenge).bind(kind).fetch_optional(p).await?
        }))
    }

    /// How many admins exist in all organisations (zero before the first-run set-up).
    pub async fn admin_count(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM admins").fetch_one(p).await?
        }))
    }

    /// Replaces any set-up token with this one: only the link printed last works.
    pub async fn replace_setup_token(
        &self,
        token_hash: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let at = now();
        on_tx!(&mut tx.inner, c => {
            sqlx::query("DELETE FROM admin_one_time_tokens WHERE kind = $1")
                .bind(token_kind::SETUP).execute(&mut *c).await?;
            sqlx::query("INSERT INTO admin_one_time_tokens (token_hash, kind, admin_id, created_at, expires_at) VALUES ($1, $2, NULL, $3, $4)")
                .bind(token_hash).bind(token_kind::SETUP).bind(at).bind(expires_at).execute(&mut *c).await?;
        });
        tx.commit().await
    }

    /// Counts one attempt in a fixed-window bucket, atomically on both backends (one upsert, so
    /// replicas sharing the database share the count). Returns the attempts in the current window,
    /// this one included, and when the window started (Unix milliseconds). Old buckets are swept
    /// now and then.
    pub async fn rate_limit_hit(
        &self,
        bucket: &[u8],
        now_ms: i64,
        window_ms: i64,
    ) -> Result<(i64, i64), StoreError> {
        let stale_before = now_ms - window_ms;
        let sql = "INSERT INTO rate_limit_buckets (bucket, window_start, hits) VALUES ($1, $2, 1) \
                   ON CONFLICT (bucket) DO UPDATE SET \
                   hits = CASE WHEN rate_limit_buckets.window_start <= $3 THEN 1 ELSE rate_limit_buckets.hits + 1 END, \
                   window_start = CASE WHEN rate_limit_buckets.window_start <= $3 THEN $2 ELSE rate_limit_buckets.window_start END \
                   RETURNING hits, window_start";
        let row: (i64, i64) = on_pool!(&self.db, p => {
            sqlx::query_as(sql).bind(bucket).bind(now_ms).bind(stale_before).fetch_one(p).await?
        });
        // One sweep per window's worth of first hits keeps the table small without a timer.
        if row.0 == 1 && bucket.first().is_some_and(|b| b % 64 == 0) {
            on_pool!(&self.db, p => {
                sqlx::query("DELETE FROM rate_limit_buckets WHERE window_start <= $1")
                    .bind(stale_before).execute(p).await?;
            });
        }
        Ok(row)
    }
}

impl Tx {
    pub async fn insert_admin_passkey(
        &mut self,
        new: &NewAdminPasskey<'_>,
    ) -> Result<AdminPasskeyRecord, StoreError> {
        let rec = AdminPasskeyRecord {
            id: Uuid::now_v7(),
            org_id: new.org_id,
            admin_id: new.admin_id,
            credential_id: new.credential_id.to_vec(),
            user_handle: new.user_handle.to_vec(),
            name: new.name.to_owned(),
            static_state: new.static_state.to_vec(),
            dynamic_state: new.dynamic_state.to_vec(),
            created_at: now(),
            last_used_at: None,
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO admin_passkeys (id, org_id, admin_id, credential_id, user_handle, name, static_state, dynamic_state, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)")
                .bind(rec.id).bind(rec.org_id).bind(rec.admin_id).bind(&rec.credential_id)
                .bind(&rec.user_handle).bind(&rec.name).bind(&rec.static_state).bind(&rec.dynamic_state)
                .bind(rec.created_at).execute(&mut *c).await?;
        });
        Ok(rec)
    }

    /// Deletes one of the admin's own passkeys; another admin's (or organisation's) is not found.
    pub async fn delete_admin_passkey(
        &mut self,
        org_id: Uuid,
        admin_id: Uuid,
        id: Uuid,
    ) -> Result<AdminPasskeyRecord, StoreError> {
        let sql = format!(
            "DELETE FROM admin_passkeys WHERE id = $1 AND admin_id = $2 AND org_id = $3 RETURNING {PASSKEY_COLUMNS}"
        );
        let rec: Option<AdminPasskeyRecord> = on_tx!(&mut self.inner, c => {
            sqlx::query_as(&sql).bind(id).bind(admin_id).bind(org_id).fetch_optional(&mut *c).await?
        });
        rec.ok_or(StoreError::NotFound)
    }

    /// Renames one of the admin's own passkeys.
    pub async fn rename_admin_passkey(
        &mut self,
        org_id: Uuid,
        admin_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> Result<(), StoreError> {
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE admin_passkeys SET name = $1 WHERE id = $2 AND admin_id = $3 AND org_id = $4")
                .bind(name).bind(id).bind(admin_id).bind(org_id).execute(&mut *c).await?.rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records a sign-in: the new counter and flags, only if the stored state is still the one the
    /// sign-in was verified against (two concurrent sign-ins with one counter value cannot both
    /// pass). Returns whether the row was updated.
    pub async fn update_admin_passkey_state(
        &mut self,
        id: Uuid,
        old_state: &[u8],
        new_state: &[u8],
    ) -> Result<bool, StoreError> {
        let at = now();
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE admin_passkeys SET dynamic_state = $1, last_used_at = $2 WHERE id = $3 AND dynamic_state = $4")
                .bind(new_state).bind(at).bind(id).bind(old_state).execute(&mut *c).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// How many admins exist, inside this transaction (the set-up checks it before creating one).
    pub async fn admin_count(&mut self) -> Result<i64, StoreError> {
        Ok(on_tx!(&mut self.inner, c => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM admins").fetch_one(&mut *c).await?
        }))
    }

    /// Stores a one-time token's hash.
    pub async fn insert_one_time_token(
        &mut self,
        token_hash: &[u8],
        kind: &str,
        admin_id: Option<Uuid>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let at = now();
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO admin_one_time_tokens (token_hash, kind, admin_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(token_hash).bind(kind).bind(admin_id).bind(at).bind(expires_at).execute(&mut *c).await?;
        });
        Ok(())
    }

    /// Spends a one-time token: deletes it and returns what it was for, or `None` when no such
    /// token exists (never issued, already used, or replaced). Expiry is the caller's to check.
    pub async fn take_one_time_token(
        &mut self,
        token_hash: &[u8],
        kind: &str,
    ) -> Result<Option<OneTimeTokenRecord>, StoreError> {
        Ok(on_tx!(&mut self.inner, c => {
            sqlx::query_as("DELETE FROM admin_one_time_tokens WHERE token_hash = $1 AND kind = $2 RETURNING admin_id, expires_at")
                .bind(token_hash).bind(kind).fetch_optional(&mut *c).await?
        }))
    }
}
