//! Entra ID directory connections and the users their imports bring in.
//!
//! The client secret is stored only sealed by the vault (the caller seals it); this module never
//! sees it in the clear. An import writes one page of users per transaction: large directories
//! (100,000 users) import in minutes, and a crash loses at most one page, which the next import
//! writes again (every write is an idempotent upsert by Entra object id).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, now, on_pool, on_tx};

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DirectoryRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    /// The client secret, sealed by the vault for the context [`DirectoryRecord::secret_context`].
    pub sealed_client_secret: Vec<u8>,
    pub authority_url: String,
    pub graph_url: String,
    pub delta_link: Option<String>,
    pub group_id: Option<String>,
    pub consenting_upn: Option<String>,
    pub last_import_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl DirectoryRecord {
    /// The vault context that binds the sealed client secret to this row.
    pub fn secret_context(org_id: Uuid, id: Uuid) -> String {
        format!("directory/{org_id}/{id}/client_secret")
    }
}

// The delta link carries a sync token; the sealed secret is opaque but needs no airing either.
impl std::fmt::Debug for DirectoryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authority_url", &self.authority_url)
            .field("graph_url", &self.graph_url)
            .field("group_id", &self.group_id)
            .field("has_delta_link", &self.delta_link.is_some())
            .finish_non_exhaustive()
    }
}

/// What is needed to register a directory. `id` is chosen by the caller because the sealed
/// secret is bound to it.
#[derive(Clone)]
pub struct NewDirectory {
    pub id: Uuid,
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub sealed_client_secret: Vec<u8>,
    pub authority_url: String,
    pub graph_url: String,
    pub group_id: Option<String>,
    pub consenting_upn: Option<String>,
}

/// A user as the directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalUser {
    /// The directory's object id.
    pub external_id: String,
    pub upn: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub enabled: bool,
}

/// What one page of an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub disabled: u64,
    /// Users that could not be written (e.g. their UPN belongs to a user of another directory).
    pub skipped: u64,
}

impl ImportCounts {
    pub fn add(&mut self, o: &ImportCounts) {
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.disabled += o.disabled;
        self.skipped += o.skipped;
    }
}

const DIR_COLUMNS: &str = "id, org_id, name, tenant_id, client_id, sealed_client_secret, authority_url, \
     graph_url, delta_link, group_id, consenting_upn, last_import_at, created_at";

#[derive(sqlx::FromRow)]
struct LinkedUser {
    id: Uuid,
    upn: String,
    email: Option<String>,
    display_name: Option<String>,
    status: String,
}

impl Tx {
    pub async fn insert_directory(
        &mut self,
        org_id: Uuid,
        d: &NewDirectory,
    ) -> Result<DirectoryRecord, StoreError> {
        let rec = DirectoryRecord {
            id: d.id,
            org_id,
            name: d.name.clone(),
            tenant_id: d.tenant_id.clone(),
            client_id: d.client_id.clone(),
            sealed_client_secret: d.sealed_client_secret.clone(),
            authority_url: d.authority_url.clone(),
            graph_url: d.graph_url.clone(),
            delta_link: None,
            group_id: d.group_id.clone(),
            consenting_upn: d.consenting_upn.clone(),
            last_import_at: None,
            created_at: now(),
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query(&format!("INSERT INTO directories ({DIR_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
                .bind(rec.id).bind(org_id).bind(&rec.name).bind(&rec.tenant_id).bind(&rec.client_id)
                .bind(&rec.sealed_client_secret).bind(&rec.authority_url).bind(&rec.graph_url)
                .bind(&rec.delta_link).bind(&rec.group_id).bind(&rec.consenting_upn)
                .bind(rec.last_import_at).bind(rec.created_at)
                .execute(&mut *c).await?;
        });
        Ok(rec)
    }

    /// Creates or updates the users of one import page, by the directory's object id. A user
    /// already in the organisation with the same UPN (added by CSV or the API) is adopted: the
    /// directory manages it from now on. `seen_by` marks them seen by this import.
    pub async fn import_users(
        &mut self,
        org_id: Uuid,
        directory_id: Uuid,
        seen_by: Uuid,
        users: &[ExternalUser],
    ) -> Result<ImportCounts, StoreError> {
        let mut counts = ImportCounts::default();
        let at = now();
        on_tx!(&mut self.inner, c => {
            for u in users {
                let linked: Option<LinkedUser> = sqlx::query_as(
                    "SELECT u.id, u.upn, u.email, u.display_name, u.status FROM directory_users d \
                     JOIN users u ON u.id = d.user_id WHERE d.directory_id = $1 AND d.external_id = $2")
                    .bind(directory_id).bind(&u.external_id).fetch_optional(&mut *c).await?;
                let by_upn: Option<LinkedUser> = if linked.is_none() {
                    sqlx::query_as("SELECT id, upn, email, display_name, status FROM users WHERE org_id = $1 AND upn = $2")
                        .bind(org_id).bind(&u.upn).fetch_optional(&mut *c).await?
                } else {
                    None
                };
                let existing = match (linked, by_upn) {
                    (Some(l), _) => Some(l),
                    (None, Some(owner)) => {
                        // Adopt only a user no other directory holds.
                        let held: Option<(Uuid,)> = sqlx::query_as("SELECT directory_id FROM directory_users WHERE user_id = $1")
                            .bind(owner.id).fetch_optional(&mut *c).await?;
                        if held.is_some() {
                            counts.skipped += 1;
                            continue;
                        }
                        sqlx::query("INSERT INTO directory_users (directory_id, user_id, external_id, seen_by) VALUES ($1, $2, $3, $4)")
                            .bind(directory_id).bind(owner.id).bind(&u.external_id).bind(seen_by)
                            .execute(&mut *c).await?;
                        Some(owner)
                    }
                    (None, None) => None,
                };
                let want_status_disabled = !u.enabled;
                match existing {
                    None => {
                        let id = Uuid::now_v7();
                        let status = if want_status_disabled { "disabled" } else { "new" };
                        let n = sqlx::query("INSERT INTO users (id, org_id, upn, email, display_name, status, source, external_id, key_id, created_at) \
                                     VALUES ($1, $2, $3, $4, $5, $6, 'entra', $7, NULL, $8) ON CONFLICT DO NOTHING")
                            .bind(id).bind(org_id).bind(&u.upn).bind(&u.email).bind(&u.display_name).bind(status)
                            .bind(&u.external_id).bind(at)
                            .execute(&mut *c).await?.rows_affected();
                        if n == 0 {
                            counts.skipped += 1;
                            continue;
                        }
                        sqlx::query("INSERT INTO directory_users (directory_id, user_id, external_id, seen_by) VALUES ($1, $2, $3, $4)")
                            .bind(directory_id).bind(id).bind(&u.external_id).bind(seen_by)
                            .execute(&mut *c).await?;
                        counts.created += 1;
                    }
                    Some(e) => {
                        let status = if want_status_disabled {
                            "disabled".to_owned()
                        } else if e.status == "disabled" {
                            // Re-enabled in the directory: back to what the key state says.
                            String::new()
                        } else {
                            e.status.clone()
                        };
                        let changed = e.upn != u.upn || e.email != u.email || e.display_name != u.display_name
                            || (want_status_disabled != (e.status == "disabled"));
                        if changed {
                            let n = sqlx::query("UPDATE users SET upn = $1, email = $2, display_name = $3, source = 'entra', external_id = $4, \
                                         status = CASE WHEN $5 = '' THEN (CASE WHEN key_id IS NULL THEN 'new' ELSE 'assigned' END) ELSE $5 END \
                                         WHERE id = $6 AND NOT EXISTS (SELECT 1 FROM users o WHERE o.org_id = $7 AND o.upn = $1 AND o.id <> $6)")
                                .bind(&u.upn).bind(&u.email).bind(&u.display_name).bind(&u.external_id).bind(&status)
                                .bind(e.id).bind(org_id)
                                .execute(&mut *c).await?.rows_affected();
                            if n == 0 {
                                counts.skipped += 1;
                            } else if want_status_disabled && e.status != "disabled" {
                                counts.disabled += 1;
                            } else {
                                counts.updated += 1;
                            }
                        } else {
                            counts.unchanged += 1;
                        }
                        sqlx::query("UPDATE directory_users SET seen_by = $1 WHERE directory_id = $2 AND user_id = $3")
                            .bind(seen_by).bind(directory_id).bind(e.id).execute(&mut *c).await?;
                    }
                }
            }
        });
        Ok(counts)
    }

    /// Marks users that a delta import reports removed from the directory (or from the group) as
    /// disabled. Their keys and credentials stay until an admin revokes them.
    pub async fn disable_directory_users(
        &mut self,
        directory_id: Uuid,
        external_ids: &[String],
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        on_tx!(&mut self.inner, c => {
            for ext in external_ids {
                n += sqlx::query("UPDATE users SET status = 'disabled' WHERE status <> 'disabled' AND id = \
                                  (SELECT user_id FROM directory_users WHERE directory_id = $1 AND external_id = $2)")
                    .bind(directory_id).bind(ext).execute(&mut *c).await?.rows_affected();
            }
        });
        Ok(n)
    }

    /// After a full import: disables the directory's users that import `seen_by` did not see.
    pub async fn disable_unseen_directory_users(
        &mut self,
        directory_id: Uuid,
        seen_by: Uuid,
    ) -> Result<u64, StoreError> {
        Ok(on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE users SET status = 'disabled' WHERE status <> 'disabled' AND id IN \
                         (SELECT user_id FROM directory_users WHERE directory_id = $1 AND (seen_by IS NULL OR seen_by <> $2))")
                .bind(directory_id).bind(seen_by).execute(&mut *c).await?.rows_affected()
        }))
    }

    /// Stores the delta link for the next incremental import (or clears it to force a full one).
    pub async fn set_delta_link(
        &mut self,
        directory_id: Uuid,
        delta_link: Option<&str>,
    ) -> Result<(), StoreError> {
        on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE directories SET delta_link = $1, last_import_at = $2 WHERE id = $3")
                .bind(delta_link).bind(now()).bind(directory_id).execute(&mut *c).await?;
        });
        Ok(())
    }
}

impl Store {
    pub async fn directory(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<DirectoryRecord>, StoreError> {
        let sql = format!("SELECT {DIR_COLUMNS} FROM directories WHERE org_id = $1 AND id = $2");
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(id).fetch_optional(p).await?),
        )
    }

    /// Every directory's sealed client secret, in every organisation, as (organisation, directory,
    /// sealed blob): what a vault rotation re-wraps.
    pub async fn all_sealed_directory_secrets(
        &self,
    ) -> Result<Vec<(Uuid, Uuid, Vec<u8>)>, StoreError> {
        let sql = "SELECT org_id, id, sealed_client_secret FROM directories ORDER BY org_id, id";
        Ok(on_pool!(&self.db, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Replaces a directory's sealed client secret with `new` if it is still exactly `old`
    /// (compare-and-swap, so a rotation never overwrites a secret an admin re-saved meanwhile).
    /// Returns whether the row changed.
    pub async fn replace_sealed_directory_secret(
        &self,
        org_id: Uuid,
        id: Uuid,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE directories SET sealed_client_secret = $1 \
                   WHERE org_id = $2 AND id = $3 AND sealed_client_secret = $4";
        let n = on_pool!(&self.db, p => {
            sqlx::query(sql).bind(new).bind(org_id).bind(id).bind(old).execute(p).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// The organisation's directories, oldest first.
    pub async fn directories(&self, org_id: Uuid) -> Result<Vec<DirectoryRecord>, StoreError> {
        let sql = format!(
            "SELECT {DIR_COLUMNS} FROM directories WHERE org_id = $1 ORDER BY created_at, id"
        );
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).fetch_all(p).await?))
    }

    /// Remembers the account that consented to the app (Entra refuses to provision it).
    pub async fn set_consenting_upn(
        &self,
        org_id: Uuid,
        id: Uuid,
        upn: &str,
    ) -> Result<(), StoreError> {
        on_pool!(&self.db, p => {
            sqlx::query("UPDATE directories SET consenting_upn = $1 WHERE org_id = $2 AND id = $3")
                .bind(upn).bind(org_id).bind(id).execute(p).await?;
        });
        Ok(())
    }

    /// The directory object id of a user, if a directory import brought it in.
    pub async fn directory_user(
        &self,
        user_id: Uuid,
    ) -> Result<Option<(Uuid, String)>, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query_as("SELECT directory_id, external_id FROM directory_users WHERE user_id = $1")
                .bind(user_id).fetch_optional(p).await?
        }))
    }
}
