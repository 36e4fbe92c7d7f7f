//! Organisations, administrators, their sessions and API tokens. Secrets are stored only as
//! hashes computed by the caller; this module never sees a password or token in the clear.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, now, on_pool, on_tx};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrganisationRecord {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    /// `owner`, `admin`, `helpdesk` or `auditor`.
    pub role: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for AdminRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    pub admin_id: Uuid,
    pub csrf_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenRecord {
    pub id: Uuid,
    pub admin_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

const ADMIN_COLUMNS: &str = "id, org_id, email, role, password_hash, disabled, created_at";

impl Store {
    pub async fn organisation_by_name(
        &self,
        name: &str,
    ) -> Result<Option<OrganisationRecord>, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as("SELECT id, name, created_at FROM organisations WHERE name = $1")
                .bind(name).fetch_optional(p).await?
        }))
    }

    pub async fn organisation(&self, id: Uuid) -> Result<Option<OrganisationRecord>, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as("SELECT id, name, created_at FROM organisations WHERE id = $1")
                .bind(id).fetch_optional(p).await?
        }))
    }

    pub async fn admin(&self, id: Uuid) -> Result<Option<AdminRecord>, StoreError> {
        let sql = format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1");
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
    }

    /// Admins with this e-mail address, in any organisation when `org_id` is `None`.
    pub async fn admins_by_email(
        &self,
        org_id: Option<Uuid>,
        email: &str,
    ) -> Result<Vec<AdminRecord>, StoreError> {
        let sql = format!(
            "SELECT {ADMIN_COLUMNS} FROM admins WHERE LOWER(email) = LOWER($1) AND ($2 IS NULL OR org_id = $2) ORDER BY created_at"
        );
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(email).bind(org_id).fetch_all(p).await?),
        )
    }

    /// The live session with this token hash, with its admin.
    pub async fn session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        let row: Option<SessionRecord> = on_pool!(&self.db, p => {
            sqlx::query_as("SELECT admin_id, csrf_hash, expires_at FROM admin_sessions WHERE token_hash = $1")
                .bind(token_hash).fetch_optional(p).await?
        });
        // Expiry is compared here rather than in SQL so both backends agree on time arithmetic.
        Ok(row.filter(|s| s.expires_at > Utc::now()))
    }

    pub async fn insert_session(
        &self,
        token_hash: &[u8],
        admin_id: Uuid,
        csrf_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = now();
        on_pool!(&self.db, p => {
            sqlx::query("INSERT INTO admin_sessions (token_hash, admin_id, csrf_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(token_hash).bind(admin_id).bind(csrf_hash).bind(at).bind(expires_at).execute(p).await?;
        });
        Ok(())
    }

    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        on_pool!(&self.db, p => {
            sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1").bind(token_hash).execute(p).await?;
        });
        Ok(())
    }

    /// The admin owning the API token with this hash.
    pub async fn admin_by_token_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<AdminRecord>, StoreError> {
        let sql = "SELECT a.id, a.org_id, a.email, a.role, a.password_hash, a.disabled, a.created_at \
                   FROM api_tokens t JOIN admins a ON a.id = t.admin_id WHERE t.token_hash = $1";
        Ok(on_pool!(&self.db, p => sqlx::query_as(sql).bind(token_hash).fetch_optional(p).await?))
    }

    /// The organisation's admins, oldest first.
    pub async fn list_admins(&self, org_id: Uuid) -> Result<Vec<AdminRecord>, StoreError> {
        let sql =
            format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE org_id = $1 ORDER BY created_at, id");
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).fetch_all(p).await?))
    }

    pub async fn tokens_of_admin(&self, admin_id: Uuid) -> Result<Vec<ApiTokenRecord>, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as("SELECT id, admin_id, name, created_at FROM api_tokens WHERE admin_id = $1 ORDER BY created_at")
                .bind(admin_id).fetch_all(p).await?
        }))
    }
}

impl Tx {
    /// Creates an organisation and the head of its audit chain.
    pub async fn insert_organisation(
        &mut self,
        name: &str,
    ) -> Result<OrganisationRecord, StoreError> {
        let rec = OrganisationRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            created_at: now(),
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO organisations (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(rec.id).bind(&rec.name).bind(rec.created_at).execute(&mut *c).await?;
            sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2)")
                .bind(rec.id).bind(vec![0u8; 32]).execute(&mut *c).await?;
        });
        Ok(rec)
    }

    pub async fn insert_admin(
        &mut self,
        org_id: Uuid,
        email: &str,
        role: &str,
        password_hash: &str,
    ) -> Result<AdminRecord, StoreError> {
        let rec = AdminRecord {
            id: Uuid::now_v7(),
            org_id,
            email: email.to_owned(),
            role: role.to_owned(),
            password_hash: password_hash.to_owned(),
            disabled: false,
            created_at: now(),
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO admins (id, org_id, email, role, password_hash, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(rec.id).bind(rec.org_id).bind(&rec.email).bind(&rec.role).bind(&rec.password_hash)
                .bind(rec.disabled).bind(rec.created_at).execute(&mut *c).await?;
        });
        Ok(rec)
    }

    /// The organisation's admins inside this transaction (to check the last-owner rule).
    pub async fn list_admins(&mut self, org_id: Uuid) -> Result<Vec<AdminRecord>, StoreError> {
        let sql =
            format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE org_id = $1 ORDER BY created_at, id");
        Ok(
            on_tx!(&mut self.inner, c => sqlx::query_as(&sql).bind(org_id).fetch_all(&mut *c).await?),
        )
    }

    /// Changes an admin's role and/or disabled flag. Disabling also ends their sessions and
    /// deletes their API tokens, so access stops at once.
    pub async fn update_admin(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        role: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<(), StoreError> {
        on_tx!(&mut self.inner, c => {
            let n = sqlx::query(
                "UPDATE admins SET role = COALESCE($1, role), disabled = COALESCE($2, disabled) WHERE org_id = $3 AND id = $4",
            )
            .bind(role).bind(disabled).bind(org_id).bind(id).execute(&mut *c).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if disabled == Some(true) {
                sqlx::query("DELETE FROM admin_sessions WHERE admin_id = $1").bind(id).execute(&mut *c).await?;
                sqlx::query("DELETE FROM api_tokens WHERE admin_id = $1").bind(id).execute(&mut *c).await?;
            }
        });
        Ok(())
    }

    /// Stores a new API token's hash; the token itself is shown once by the caller.
    pub async fn insert_api_token(
        &mut self,
        admin_id: Uuid,
        name: &str,
        token_hash: &[u8],
    ) -> Result<ApiTokenRecord, StoreError> {
        let rec = ApiTokenRecord {
            id: Uuid::now_v7(),
            admin_id,
            name: name.to_owned(),
            created_at: now(),
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO api_tokens (id, admin_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(rec.id).bind(admin_id).bind(&rec.name).bind(token_hash).bind(rec.created_at).execute(&mut *c).await?;
        });
        Ok(rec)
    }
}
