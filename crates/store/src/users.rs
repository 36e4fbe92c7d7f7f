//! Users (the people whose keys Keyward holds) and their activation codes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, now, on_pool, on_tx};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub upn: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// `new`, `assigned`, `active` or `disabled`.
    pub status: String,
    /// `csv`, `api` or `entra`.
    pub source: String,
    pub external_id: Option<String>,
    pub key_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub upn: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub source: String,
    pub external_id: Option<String>,
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<Option<String>>,
    pub display_name: Option<Option<String>>,
    pub status: Option<String>,
}

/// Search and paging of users, ordered by id (ids are UUIDv7, so roughly by creation).
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Case-insensitive substring of upn, e-mail or display name.
    pub q: Option<String>,
    pub status: Option<String>,
    /// Where the user came from: `entra`, `csv` or `api`.
    pub source: Option<String>,
    /// Only users with an id above this one (the previous page's last).
    pub after: Option<Uuid>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivationCodeRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str =
    "id, org_id, upn, email, display_name, status, source, external_id, key_id, created_at";

/// Escapes LIKE wildcards so a search for `a_b` finds exactly that.
fn like_pattern(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl Store {
    pub async fn user(&self, org_id: Uuid, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 AND id = $2");
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(id).fetch_optional(p).await?),
        )
    }

    pub async fn user_by_upn(
        &self,
        org_id: Uuid,
        upn: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 AND upn = $2");
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(upn).fetch_optional(p).await?),
        )
    }

    pub async fn list_users(
        &self,
        org_id: Uuid,
        f: &UserFilter,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 \
             AND ($2 IS NULL OR LOWER(upn) LIKE $2 ESCAPE '\\' OR LOWER(COALESCE(email, '')) LIKE $2 ESCAPE '\\' \
                  OR LOWER(COALESCE(display_name, '')) LIKE $2 ESCAPE '\\') \
             AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR id > $4) \
             AND ($5 IS NULL OR source = $5) ORDER BY id LIMIT $6"
        );
        let q = f.q.as_deref().filter(|q| !q.is_empty()).map(like_pattern);
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(org_id).bind(&q).bind(&f.status).bind(f.after).bind(&f.source).bind(f.limit).fetch_all(p).await?
        }))
    }
}

impl Tx {
    pub async fn user(&mut self, org_id: Uuid, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 AND id = $2");
        Ok(
            on_tx!(&mut self.inner, c => sqlx::query_as(&sql).bind(org_id).bind(id).fetch_optional(&mut *c).await?),
        )
    }

    pub async fn user_by_upn(
        &mut self,
        org_id: Uuid,
        upn: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 AND upn = $2");
        Ok(
            on_tx!(&mut self.inner, c => sqlx::query_as(&sql).bind(org_id).bind(upn).fetch_optional(&mut *c).await?),
        )
    }

    pub async fn insert_user(
        &mut self,
        org_id: Uuid,
        u: &NewUser,
    ) -> Result<UserRecord, StoreError> {
        let rec = UserRecord {
            id: Uuid::now_v7(),
            org_id,
            upn: u.upn.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            status: "new".into(),
            source: u.source.clone(),
            external_id: u.external_id.clone(),
            key_id: None,
            created_at: now(),
        };
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query(&format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING"))
                .bind(rec.id).bind(org_id).bind(&rec.upn).bind(&rec.email).bind(&rec.display_name)
                .bind(&rec.status).bind(&rec.source).bind(&rec.external_id).bind(rec.key_id).bind(rec.created_at)
                .execute(&mut *c).await?.rows_affected()
        });
        // DO NOTHING keeps a PostgreSQL transaction usable after a duplicate (CSV imports go on).
        if n == 0 {
            Err(StoreError::Conflict("upn already exists".into()))
        } else {
            Ok(rec)
        }
    }

    /// Applies a patch and returns the updated user.
    pub async fn update_user(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        patch: &UserPatch,
    ) -> Result<UserRecord, StoreError> {
        let mut user = self.user(org_id, id).await?.ok_or(StoreError::NotFound)?;
        if let Some(email) = &patch.email {
            user.email = email.clone();
        }
        if let Some(name) = &patch.display_name {
            user.display_name = name.clone();
        }
        if let Some(status) = &patch.status {
            user.status = status.clone();
        }
        on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE users SET email = $1, display_name = $2, status = $3 WHERE org_id = $4 AND id = $5")
                .bind(&user.email).bind(&user.display_name).bind(&user.status).bind(org_id).bind(id)
                .execute(&mut *c).await?;
        });
        Ok(user)
    }

    /// Stores an activation code's hash for a user.
    pub async fn insert_activation_code(
        &mut self,
        org_id: Uuid,
        user_id: Uuid,
        code_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<ActivationCodeRecord, StoreError> {
        let rec = ActivationCodeRecord {
            id: Uuid::now_v7(),
            org_id,
            user_id,
            expires_at,
            used_at: None,
        };
        let at = now();
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO activation_codes (id, org_id, user_id, code_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(rec.id).bind(org_id).bind(user_id).bind(code_hash).bind(at).bind(expires_at)
                .execute(&mut *c).await?;
        });
        Ok(rec)
    }
}
