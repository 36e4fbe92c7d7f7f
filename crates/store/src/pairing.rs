//! Pairing tools (their device keys) and delegated sessions, for the relay.
//!
//! Expiry is decided in Rust against the caller's clock rather than in SQL, because SQLite stores
//! times as text whose precision varies; "open" in SQL only means `ended_at IS NULL`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Db, Store, StoreError, Tx, now, on_pool, on_tx};

/// A pairing tool's registered device key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PairDeviceRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Set for an admin's tool (registered with an API token).
    pub admin_id: Option<Uuid>,
    /// Set for a user's tool (registered with an activation code).
    pub user_id: Option<Uuid>,
    pub name: String,
    /// Uncompressed SEC1 P-256 point.
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who a device belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOwner {
    Admin(Uuid),
    User(Uuid),
}

impl PairDeviceRecord {
    pub fn owner(&self) -> Option<DeviceOwner> {
        match (self.admin_id, self.user_id) {
            (Some(a), None) => Some(DeviceOwner::Admin(a)),
            (None, Some(u)) => Some(DeviceOwner::User(u)),
            _ => None, // excluded by the table's CHECK
        }
    }
}

/// An admin connected to a user's key through the admin's pairing tool.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DelegatedSessionRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub admin_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub device_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

impl DelegatedSessionRecord {
    /// Open (not ended) and not yet expired at `at`.
    pub fn is_live(&self, at: DateTime<Utc>) -> bool {
        self.ended_at.is_none() && at < self.expires_at
    }
}

/// What a new delegated session binds together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelegatedSession {
    pub org_id: Uuid,
    pub admin_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub device_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

const DEVICE_COLUMNS: &str =
    "id, org_id, admin_id, user_id, name, public_key, created_at, last_seen_at, revoked_at";
const SESSION_COLUMNS: &str = "id, org_id, admin_id, user_id, key_id, device_id, created_at, expires_at, ended_at, end_reason";

impl Store {
    /// A device by id, in any organisation: the relay's hello names only the device, and the
    /// organisation is learnt from the row once its key has signed the challenge.
    pub async fn pair_device(&self, id: Uuid) -> Result<Option<PairDeviceRecord>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM pair_devices WHERE id = $1");
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
    }

    /// Records that a device authenticated (shown in the panel).
    pub async fn touch_pair_device(&self, id: Uuid) -> Result<(), StoreError> {
        let at = now();
        on_pool!(&self.db, p => {
            sqlx::query("UPDATE pair_devices SET last_seen_at = $1 WHERE id = $2")
                .bind(at).bind(id).execute(p).await?;
        });
        Ok(())
    }

    /// An admin's devices that are not revoked, newest first.
    pub async fn pair_devices_of_admin(
        &self,
        org_id: Uuid,
        admin_id: Uuid,
    ) -> Result<Vec<PairDeviceRecord>, StoreError> {
        self.pair_devices_of(org_id, DeviceOwner::Admin(admin_id))
            .await
    }

    /// A user's devices that are not revoked, newest first.
    pub async fn pair_devices_of_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Vec<PairDeviceRecord>, StoreError> {
        self.pair_devices_of(org_id, DeviceOwner::User(user_id))
            .await
    }

    async fn pair_devices_of(
        &self,
        org_id: Uuid,
        owner: DeviceOwner,
    ) -> Result<Vec<PairDeviceRecord>, StoreError> {
        let (column, owner_id) = match owner {
            DeviceOwner::Admin(id) => ("admin_id", id),
            DeviceOwner::User(id) => ("user_id", id),
        };
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM pair_devices WHERE org_id = $1 AND {column} = $2 \
             AND revoked_at IS NULL ORDER BY created_at DESC, id DESC"
        );
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(owner_id).fetch_all(p).await?),
        )
    }

    pub async fn delegated_session(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<DelegatedSessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM delegated_sessions WHERE org_id = $1 AND id = $2"
        );
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(id).fetch_optional(p).await?),
        )
    }

    /// Sessions not ended (they may have expired: check [`DelegatedSessionRecord::is_live`]) on a
    /// device, newest first.
    pub async fn open_delegated_sessions_of_device(
        &self,
        device_id: Uuid,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM delegated_sessions WHERE device_id = $1 AND ended_at IS NULL \
             ORDER BY created_at DESC, id DESC"
        );
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(device_id).fetch_all(p).await?))
    }

    /// Sessions not ended on a user's key, newest first.
    pub async fn open_delegated_sessions_of_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM delegated_sessions WHERE org_id = $1 AND user_id = $2 \
             AND ended_at IS NULL ORDER BY created_at DESC, id DESC"
        );
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).bind(user_id).fetch_all(p).await?),
        )
    }
}

impl Tx {
    /// Registers a device key for an admin or a user.
    pub async fn insert_pair_device(
        &mut self,
        org_id: Uuid,
        owner: DeviceOwner,
        name: &str,
        public_key: &[u8],
    ) -> Result<PairDeviceRecord, StoreError> {
        let (admin_id, user_id) = match owner {
            DeviceOwner::Admin(a) => (Some(a), None),
            DeviceOwner::User(u) => (None, Some(u)),
        };
        let rec = PairDeviceRecord {
            id: Uuid::now_v7(),
            org_id,
            admin_id,
            user_id,
            name: name.to_owned(),
            public_key: public_key.to_vec(),
            created_at: now(),
            last_seen_at: None,
            revoked_at: None,
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query(&format!("INSERT INTO pair_devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                .bind(rec.id).bind(org_id).bind(admin_id).bind(user_id).bind(&rec.name).bind(&rec.public_key)
                .bind(rec.created_at).bind(rec.last_seen_at).bind(rec.revoked_at)
                .execute(&mut *c).await?;
        });
        Ok(rec)
    }

    /// Revokes a device and ends its open delegated sessions (reason `device revoked`).
    /// `false` if it does not exist in this organisation or was already revoked.
    pub async fn revoke_pair_device(&mut self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let at = now();
        let n = on_tx!(&mut self.inner, c => {
            let n = sqlx::query("UPDATE pair_devices SET revoked_at = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL")
                .bind(at).bind(org_id).bind(id).execute(&mut *c).await?.rows_affected();
            sqlx::query("UPDATE delegated_sessions SET ended_at = $1, end_reason = 'device revoked' WHERE org_id = $2 AND device_id = $3 AND ended_at IS NULL")
                .bind(at).bind(org_id).bind(id).execute(&mut *c).await?;
            n
        });
        Ok(n == 1)
    }

    /// Spends a one-time activation code: `Some((org_id, user_id))` if the code's hash matches an
    /// unused code that has not expired at `at`, which is then marked used in this transaction.
    pub async fn redeem_activation_code(
        &mut self,
        code_hash: &[u8],
        at: DateTime<Utc>,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let row: Option<(Uuid, Uuid, Uuid, DateTime<Utc>)> = on_tx!(&mut self.inner, c => {
            sqlx::query_as("SELECT id, org_id, user_id, expires_at FROM activation_codes WHERE code_hash = $1 AND used_at IS NULL")
                .bind(code_hash).fetch_optional(&mut *c).await?
        });
        let Some((id, org_id, user_id, expires_at)) = row else {
            return Ok(None);
        };
        if at >= expires_at {
            return Ok(None);
        }
        let n = on_tx!(&mut self.inner, c => {
            // The `used_at IS NULL` guard makes a concurrent redemption of the same code lose.
            sqlx::query("UPDATE activation_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
                .bind(now()).bind(id).execute(&mut *c).await?.rows_affected()
        });
        Ok((n == 1).then_some((org_id, user_id)))
    }

    /// Starts a delegated session. Any open session on the same user's key or the same device ends
    /// first (reason `replaced`): one admin at a time per key, one key at a time per tool.
    /// Returns the new session and the ones it ended.
    pub async fn insert_delegated_session(
        &mut self,
        new: &NewDelegatedSession,
    ) -> Result<(DelegatedSessionRecord, Vec<DelegatedSessionRecord>), StoreError> {
        let at = now();
        let select = format!(
            "SELECT {SESSION_COLUMNS} FROM delegated_sessions WHERE org_id = $1 AND ended_at IS NULL \
             AND (user_id = $2 OR device_id = $3)"
        );
        let replaced: Vec<DelegatedSessionRecord> = on_tx!(&mut self.inner, c => {
            let rows: Vec<DelegatedSessionRecord> = sqlx::query_as(&select)
                .bind(new.org_id).bind(new.user_id).bind(new.device_id).fetch_all(&mut *c).await?;
            sqlx::query("UPDATE delegated_sessions SET ended_at = $1, end_reason = 'replaced' WHERE org_id = $2 AND ended_at IS NULL AND (user_id = $3 OR device_id = $4)")
                .bind(at).bind(new.org_id).bind(new.user_id).bind(new.device_id).execute(&mut *c).await?;
            rows
        });
        let rec = DelegatedSessionRecord {
            id: Uuid::now_v7(),
            org_id: new.org_id,
            admin_id: new.admin_id,
            user_id: new.user_id,
            key_id: new.key_id,
            device_id: new.device_id,
            created_at: at,
            expires_at: new.expires_at,
            ended_at: None,
            end_reason: None,
        };
        on_tx!(&mut self.inner, c => {
            sqlx::query(&format!("INSERT INTO delegated_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                .bind(rec.id).bind(rec.org_id).bind(rec.admin_id).bind(rec.user_id).bind(rec.key_id)
                .bind(rec.device_id).bind(rec.created_at).bind(rec.expires_at).bind(rec.ended_at).bind(&rec.end_reason)
                .execute(&mut *c).await?;
        });
        Ok((rec, replaced))
    }

    /// Ends the open delegated sessions on a user's key (Disconnect). Returns the ended sessions.
    pub async fn end_delegated_sessions_of_user(
        &mut self,
        org_id: Uuid,
        user_id: Uuid,
        reason: &str,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        self.end_sessions_where("user_id", org_id, user_id, reason)
            .await
    }

    /// Ends the open delegated sessions an admin started (the admin logged out or was disabled).
    pub async fn end_delegated_sessions_of_admin(
        &mut self,
        org_id: Uuid,
        admin_id: Uuid,
        reason: &str,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        self.end_sessions_where("admin_id", org_id, admin_id, reason)
            .await
    }

    /// Ends the open delegated sessions on a key (the key was suspended or revoked).
    pub async fn end_delegated_sessions_of_key(
        &mut self,
        org_id: Uuid,
        key_id: Uuid,
        reason: &str,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        self.end_sessions_where("key_id", org_id, key_id, reason)
            .await
    }

    /// Ends one session (expiry noticed by the relay, or the tool disconnected).
    pub async fn end_delegated_session(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        reason: &str,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        self.end_sessions_where("id", org_id, id, reason).await
    }

    async fn end_sessions_where(
        &mut self,
        column: &'static str,
        org_id: Uuid,
        value: Uuid,
        reason: &str,
    ) -> Result<Vec<DelegatedSessionRecord>, StoreError> {
        let at = now();
        let select = format!(
            "SELECT {SESSION_COLUMNS} FROM delegated_sessions WHERE org_id = $1 AND {column} = $2 AND ended_at IS NULL"
        );
        let update = format!(
            "UPDATE delegated_sessions SET ended_at = $1, end_reason = $2 WHERE org_id = $3 AND {column} = $4 AND ended_at IS NULL"
        );
        let mut rows: Vec<DelegatedSessionRecord> = on_tx!(&mut self.inner, c => {
            let rows = sqlx::query_as(&select).bind(org_id).bind(value).fetch_all(&mut *c).await?;
            sqlx::query(&update).bind(at).bind(reason).bind(org_id).bind(value).execute(&mut *c).await?;
            rows
        });
        for r in &mut rows {
            r.ended_at = Some(at);
            r.end_reason = Some(reason.to_owned());
        }
        Ok(rows)
    }
}

/// Relay presence and notifications across replicas (PostgreSQL only; see migration 0400).
///
/// Presence rows say which replica holds a tool's connection; a replica's rows count only while its
/// heartbeat is fresh, so a replica that died without cleaning up stops looking online after one
/// lease. Times are compared in SQL here: only PostgreSQL writes these rows.
impl Store {
    /// Refreshes a replica's heartbeat, creating its row if needed. `false` when the row had to be
    /// created: first start, or another replica pruned this one as stale (its presence rows went
    /// with it, so the caller claims its connections again).
    pub async fn relay_heartbeat(&self, replica_id: Uuid) -> Result<bool, StoreError> {
        let at = now();
        let n = on_pool!(&self.db, p => {
            sqlx::query("UPDATE relay_replicas SET heartbeat_at = $1 WHERE id = $2")
                .bind(at).bind(replica_id).execute(p).await?.rows_affected()
        });
        if n == 1 {
            return Ok(true);
        }
        on_pool!(&self.db, p => {
            sqlx::query("INSERT INTO relay_replicas (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
                         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at")
                .bind(replica_id).bind(at).execute(p).await?;
        });
        Ok(false)
    }

    /// Removes replicas (and the connections they claimed) whose heartbeat is older than `before`,
    /// and a stopping replica's own row when `also` is given. Returns how many replicas went.
    pub async fn relay_prune_replicas(
        &self,
        before: DateTime<Utc>,
        also: Option<Uuid>,
    ) -> Result<u64, StoreError> {
        let n = on_pool!(&self.db, p => {
            sqlx::query("DELETE FROM relay_replicas WHERE heartbeat_at < $1 OR id = $2")
                .bind(before).bind(also).execute(p).await?.rows_affected()
        });
        Ok(n)
    }

    /// Records that `device_id` is connected to `replica_id` (replacing an older claim).
    pub async fn relay_claim(
        &self,
        device: &PairDeviceRecord,
        replica_id: Uuid,
    ) -> Result<(), StoreError> {
        let at = now();
        on_pool!(&self.db, p => {
            sqlx::query("INSERT INTO relay_presence (device_id, replica_id, org_id, admin_id, user_id, connected_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id) DO UPDATE SET \
                         replica_id = excluded.replica_id, connected_at = excluded.connected_at")
                .bind(device.id).bind(replica_id).bind(device.org_id).bind(device.admin_id)
                .bind(device.user_id).bind(at).execute(p).await?;
        });
        Ok(())
    }

    /// Drops a device's presence row if `replica_id` still holds it.
    pub async fn relay_release(&self, device_id: Uuid, replica_id: Uuid) -> Result<(), StoreError> {
        on_pool!(&self.db, p => {
            sqlx::query("DELETE FROM relay_presence WHERE device_id = $1 AND replica_id = $2")
                .bind(device_id).bind(replica_id).execute(p).await?;
        });
        Ok(())
    }

    /// The newest not-revoked device of an admin connected to a replica whose heartbeat is newer
    /// than `fresh_after`.
    pub async fn relay_online_admin_device(
        &self,
        org_id: Uuid,
        admin_id: Uuid,
        fresh_after: DateTime<Utc>,
    ) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Uuid,)> = on_pool!(&self.db, p => {
            sqlx::query_as("SELECT p.device_id FROM relay_presence p \
                            JOIN relay_replicas r ON r.id = p.replica_id \
                            JOIN pair_devices d ON d.id = p.device_id \
                            WHERE p.org_id = $1 AND p.admin_id = $2 AND r.heartbeat_at > $3 \
                            AND d.revoked_at IS NULL ORDER BY p.connected_at DESC LIMIT 1")
                .bind(org_id).bind(admin_id).bind(fresh_after).fetch_optional(p).await?
        });
        Ok(row.map(|r| r.0))
    }

    /// The organisation a key belongs to, in any organisation: the relay uses it only to tell a
    /// stale key id from one of another organisation when refusing (and auditing) a request.
    pub async fn key_org(&self, key_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Uuid,)> = on_pool!(&self.db, p => {
            sqlx::query_as("SELECT org_id FROM security_keys WHERE id = $1")
                .bind(key_id).fetch_optional(p).await?
        });
        Ok(row.map(|r| r.0))
    }

    /// Sends `payload` on a notification channel to every replica listening (PostgreSQL
    /// `pg_notify`); nothing on SQLite, where one process holds every connection.
    pub async fn relay_notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        if let Db::Postgres(p) = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// Listens on a notification channel; `None` on SQLite.
    pub async fn relay_listener(&self, channel: &str) -> Result<Option<RelayListener>, StoreError> {
        match &self.db {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(p) => {
                let mut l = sqlx::postgres::PgListener::connect_with(p).await?;
                l.listen(channel).await?;
                Ok(Some(RelayListener { inner: l }))
            }
        }
    }
}

/// A PostgreSQL `LISTEN` connection that reconnects by itself.
pub struct RelayListener {
    inner: sqlx::postgres::PgListener,
}

impl RelayListener {
    /// The next payload. `Ok(None)` means the connection was lost and is being re-established:
    /// notifications sent meanwhile are gone, so the caller re-reads its state from the database.
    pub async fn recv(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.inner.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::testing;
    use crate::{NewSecurityKey, NewUser};

    struct Fixture {
        org: Uuid,
        admin: Uuid,
        user: Uuid,
        key: Uuid,
    }

    async fn fixture(store: &Store) -> Fixture {
        let mut tx = store.begin().await.expect("begin");
        let org = tx
            .insert_organisation(&format!("org-{}", Uuid::new_v4()))
            .await
            .expect("org");
        let admin = tx
            .insert_admin(org.id, "admin@example.com", "admin", "$argon2id$x")
            .await
            .expect("admin");
        let user = tx
            .insert_user(
                org.id,
                &NewUser {
                    upn: "alice@example.com".into(),
                    source: "api".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("user");
        let key = NewSecurityKey {
            id: Uuid::now_v7(),
            aaguid: vec![7; 16],
            wrapped_dek: vec![1, 2, 3],
            kek_version: 1,
            min_pin_length: 4,
            force_pin_change: false,
        };
        tx.insert_security_key(org.id, user.id, &key)
            .await
            .expect("key");
        tx.commit().await.expect("commit");
        Fixture {
            org: org.id,
            admin: admin.id,
            user: user.id,
            key: key.id,
        }
    }

    #[tokio::test]
    async fn devices_register_and_revoke() {
        for db in testing::all().await {
            let s = &db.store;
            let f = fixture(s).await;
            let mut tx = s.begin().await.expect("begin");
            let d = tx
                .insert_pair_device(f.org, DeviceOwner::Admin(f.admin), "pc", &[4; 65])
                .await
                .expect("device");
            let u = tx
                .insert_pair_device(f.org, DeviceOwner::User(f.user), "laptop", &[4; 65])
                .await
                .expect("device");
            tx.commit().await.expect("commit");

            let got = s.pair_device(d.id).await.expect("get").expect("exists");
            assert_eq!(got, d, "{:?}", db.backend());
            assert_eq!(got.owner(), Some(DeviceOwner::Admin(f.admin)));
            assert_eq!(
                s.pair_device(u.id)
                    .await
                    .expect("get")
                    .and_then(|r| r.owner()),
                Some(DeviceOwner::User(f.user))
            );
            assert_eq!(
                s.pair_devices_of_admin(f.org, f.admin).await.expect("list"),
                vec![d.clone()]
            );
            assert_eq!(
                s.pair_devices_of_user(f.org, f.user).await.expect("list"),
                vec![u.clone()]
            );
            s.touch_pair_device(d.id).await.expect("touch");
            assert!(
                s.pair_device(d.id)
                    .await
                    .expect("get")
                    .expect("exists")
                    .last_seen_at
                    .is_some()
            );

            let mut tx = s.begin().await.expect("begin");
            assert!(
                !tx.revoke_pair_device(Uuid::now_v7(), d.id)
                    .await
                    .expect("other org"),
                "other org: no-op"
            );
            assert!(tx.revoke_pair_device(f.org, d.id).await.expect("revoke"));
            assert!(
                !tx.revoke_pair_device(f.org, d.id).await.expect("again"),
                "already revoked"
            );
            tx.commit().await.expect("commit");
            assert!(
                s.pair_device(d.id)
                    .await
                    .expect("get")
                    .expect("kept")
                    .revoked_at
                    .is_some()
            );
            assert!(
                s.pair_devices_of_admin(f.org, f.admin)
                    .await
                    .expect("list")
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn activation_codes_are_single_use_and_expire() {
        for db in testing::all().await {
            let s = &db.store;
            let f = fixture(s).await;
            let mut tx = s.begin().await.expect("begin");
            tx.insert_activation_code(f.org, f.user, b"hash-live", now() + Duration::minutes(10))
                .await
                .expect("code");
            tx.insert_activation_code(f.org, f.user, b"hash-old", now() - Duration::minutes(1))
                .await
                .expect("code");
            tx.commit().await.expect("commit");

            let mut tx = s.begin().await.expect("begin");
            assert_eq!(
                tx.redeem_activation_code(b"hash-live", now())
                    .await
                    .expect("redeem"),
                Some((f.org, f.user))
            );
            assert_eq!(
                tx.redeem_activation_code(b"hash-live", now())
                    .await
                    .expect("again"),
                None,
                "single use"
            );
            assert_eq!(
                tx.redeem_activation_code(b"hash-old", now())
                    .await
                    .expect("expired"),
                None
            );
            assert_eq!(
                tx.redeem_activation_code(b"nope", now())
                    .await
                    .expect("unknown"),
                None
            );
            tx.commit().await.expect("commit");
        }
    }

    #[tokio::test]
    async fn delegated_sessions_replace_end_and_expire() {
        for db in testing::all().await {
            let s = &db.store;
            let f = fixture(s).await;
            let mut tx = s.begin().await.expect("begin");
            let d = tx
                .insert_pair_device(f.org, DeviceOwner::Admin(f.admin), "pc", &[4; 65])
                .await
                .expect("device");
            let new = NewDelegatedSession {
                org_id: f.org,
                admin_id: f.admin,
                user_id: f.user,
                key_id: f.key,
                device_id: d.id,
                expires_at: now() + Duration::minutes(15),
            };
            let (first, replaced) = tx.insert_delegated_session(&new).await.expect("session");
            assert!(replaced.is_empty());
            let (second, replaced) = tx.insert_delegated_session(&new).await.expect("session");
            assert_eq!(
                replaced.iter().map(|r| r.id).collect::<Vec<_>>(),
                vec![first.id],
                "one session per key"
            );
            tx.commit().await.expect("commit");

            assert!(second.is_live(now()));
            assert!(!second.is_live(second.expires_at), "expired at expires_at");
            let open = s
                .open_delegated_sessions_of_device(d.id)
                .await
                .expect("open");
            assert_eq!(open, vec![second.clone()]);
            assert_eq!(
                s.open_delegated_sessions_of_user(f.org, f.user)
                    .await
                    .expect("open"),
                vec![second.clone()]
            );
            let ended = s
                .delegated_session(f.org, first.id)
                .await
                .expect("get")
                .expect("kept");
            assert_eq!(ended.end_reason.as_deref(), Some("replaced"));
            assert!(
                s.delegated_session(Uuid::now_v7(), second.id)
                    .await
                    .expect("get")
                    .is_none(),
                "other org"
            );

            let mut tx = s.begin().await.expect("begin");
            let ended = tx
                .end_delegated_sessions_of_user(f.org, f.user, "disconnected")
                .await
                .expect("end");
            assert_eq!(ended.len(), 1);
            assert_eq!(ended[0].end_reason.as_deref(), Some("disconnected"));
            assert!(
                tx.end_delegated_sessions_of_user(f.org, f.user, "again")
                    .await
                    .expect("end")
                    .is_empty()
            );
            tx.commit().await.expect("commit");
            assert!(
                s.open_delegated_sessions_of_device(d.id)
                    .await
                    .expect("open")
                    .is_empty()
            );

            // Admin logout and device revocation end sessions too.
            let mut tx = s.begin().await.expect("begin");
            let (third, _) = tx.insert_delegated_session(&new).await.expect("session");
            assert_eq!(
                tx.end_delegated_sessions_of_admin(f.org, f.admin, "logout")
                    .await
                    .expect("end")
                    .len(),
                1
            );
            let (fourth, _) = tx.insert_delegated_session(&new).await.expect("session");
            assert!(tx.revoke_pair_device(f.org, d.id).await.expect("revoke"));
            tx.commit().await.expect("commit");
            let r = s
                .delegated_session(f.org, fourth.id)
                .await
                .expect("get")
                .expect("kept");
            assert_eq!(r.end_reason.as_deref(), Some("device revoked"));
            assert!(
                !s.delegated_session(f.org, third.id)
                    .await
                    .expect("get")
                    .expect("kept")
                    .is_live(now())
            );
        }
    }

    #[tokio::test]
    async fn device_needs_exactly_one_owner_in_its_organisation() {
        for db in testing::all().await {
            let s = &db.store;
            let f = fixture(s).await;
            let mut tx = s.begin().await.expect("begin");
            // A user id that does not exist violates the foreign key.
            assert!(
                tx.insert_pair_device(f.org, DeviceOwner::User(Uuid::now_v7()), "x", &[4; 65])
                    .await
                    .is_err()
            );
        }
    }
}
