//! The key-operations repository: security keys and their credentials, used by the key-operations
//! layer (`keyward_server::keyops`) through [`KeyTx`], one transaction per CTAP operation.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    Db, Store, StoreError, Tx, TxInner, from_json_text, now, on_pool, on_tx, to_json_text,
};

/// One security key row. PIN fields mirror the authenticator's persistent PIN state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityKeyRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub aaguid: Vec<u8>,
    /// The key's data key, sealed under the vault's key-encryption key `kek_version`.
    pub wrapped_dek: Vec<u8>,
    pub kek_version: i32,
    pub pin_verifier: Option<Vec<u8>>,
    pub pin_code_points: i32,
    pub pin_retries: i32,
    pub consecutive_pin_failures: i32,
    pub min_pin_length: i32,
    pub min_pin_length_rp_ids: Vec<String>,
    pub force_pin_change: bool,
    pub always_uv: bool,
}

/// What is needed to create a security key; PIN state starts empty (no PIN, full retries).
#[derive(Debug, Clone)]
pub struct NewSecurityKey {
    pub id: Uuid,
    pub aaguid: Vec<u8>,
    pub wrapped_dek: Vec<u8>,
    pub kek_version: i32,
    pub min_pin_length: i32,
    pub force_pin_change: bool,
}

/// One credential (passkey) on a key. Private material is only ever stored sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub rp_id_hash: Vec<u8>,
    pub rp_name: Option<String>,
    pub user_handle: Vec<u8>,
    pub user_name: Option<String>,
    pub user_display_name: Option<String>,
    pub alg: i64,
    pub public_key_cose: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub sealed_cred_random: Option<Vec<u8>>,
    pub discoverable: bool,
    pub cred_protect: i32,
    pub cred_blob: Option<Vec<u8>>,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    /// `automated`, `delegated` or `user`.
    pub via: String,
}

// Sealed material is not secret in the clear, but keeping it out of logs costs nothing.
impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("credential_id", &hex::encode(&self.credential_id))
            .field("rp_id", &self.rp_id)
            .field("user_name", &self.user_name)
            .field("sign_count", &self.sign_count)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    org_id: Uuid,
    user_id: Uuid,
    status: String,
    aaguid: Vec<u8>,
    wrapped_dek: Vec<u8>,
    kek_version: i32,
    pin_verifier: Option<Vec<u8>>,
    pin_code_points: i32,
    pin_retries: i32,
    consecutive_pin_failures: i32,
    min_pin_length: i32,
    min_pin_length_rp_ids: String,
    force_pin_change: bool,
    always_uv: bool,
}

impl TryFrom<KeyRow> for SecurityKeyRecord {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        Ok(SecurityKeyRecord {
            id: r.id,
            org_id: r.org_id,
            user_id: r.user_id,
            status: r.status,
            aaguid: r.aaguid,
            wrapped_dek: r.wrapped_dek,
            kek_version: r.kek_version,
            pin_verifier: r.pin_verifier,
            pin_code_points: r.pin_code_points,
            pin_retries: r.pin_retries,
            consecutive_pin_failures: r.consecutive_pin_failures,
            min_pin_length: r.min_pin_length,
            min_pin_length_rp_ids: from_json_text(&r.min_pin_length_rp_ids)?,
            force_pin_change: r.force_pin_change,
            always_uv: r.always_uv,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CredRow {
    credential_id: Vec<u8>,
    rp_id: String,
    rp_id_hash: Vec<u8>,
    rp_name: Option<String>,
    user_handle: Vec<u8>,
    user_name: Option<String>,
    user_display_name: Option<String>,
    alg: i64,
    public_key_cose: Vec<u8>,
    sealed_private_key: Vec<u8>,
    sealed_cred_random: Option<Vec<u8>>,
    discoverable: bool,
    cred_protect: i32,
    cred_blob: Option<Vec<u8>>,
    sign_count: i64,
    backup_eligible: bool,
    backup_state: bool,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    via: String,
}

impl From<CredRow> for CredentialRecord {
    fn from(r: CredRow) -> Self {
        CredentialRecord {
            credential_id: r.credential_id,
            rp_id: r.rp_id,
            rp_id_hash: r.rp_id_hash,
            rp_name: r.rp_name,
            user_handle: r.user_handle,
            user_name: r.user_name,
            user_display_name: r.user_display_name,
            alg: r.alg,
            public_key_cose: r.public_key_cose,
            sealed_private_key: r.sealed_private_key,
            sealed_cred_random: r.sealed_cred_random,
            discoverable: r.discoverable,
            cred_protect: r.cred_protect,
            cred_blob: r.cred_blob,
            sign_count: r.sign_count,
            backup_eligible: r.backup_eligible,
            backup_state: r.backup_state,
            created_at: r.created_at,
            created_by: r.created_by,
            via: r.via,
        }
    }
}

const KEY_COLUMNS: &str = "id, org_id, user_id, status, aaguid, wrapped_dek, kek_version, pin_verifier, \
     pin_code_points, pin_retries, consecutive_pin_failures, min_pin_length, min_pin_length_rp_ids, \
     force_pin_change, always_uv";

const CRED_COLUMNS: &str = "credential_id, rp_id, rp_id_hash, rp_name, user_handle, user_name, \
     user_display_name, alg, public_key_cose, sealed_private_key, sealed_cred_random, discoverable, \
     cred_protect, cred_blob, sign_count, backup_eligible, backup_state, created_at, created_by, via";

/// A credential as the API lists it (no sealed material).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialSummary {
    pub id: Uuid,
    pub rp_id: String,
    pub user_name: Option<String>,
    pub credential_id: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub via: String,
}

/// Inserts a key row (nine parameters); PIN state starts at the table's defaults.
const CREATE_KEY_SQL: &str = "INSERT INTO security_keys (id, org_id, user_id, status, aaguid, wrapped_dek, \
     kek_version, min_pin_length, force_pin_change, created_at) VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, $9)";

const UPDATE_PIN_STATE: &str = "UPDATE security_keys SET pin_verifier = $1, pin_code_points = $2, \
     pin_retries = $3, consecutive_pin_failures = $4, min_pin_length = $5, min_pin_length_rp_ids = $6, \
     force_pin_change = $7, always_uv = $8 WHERE org_id = $9 AND id = $10";

impl Store {
    /// The key `key_id` of organisation `org_id`, if it exists there.
    pub async fn key_by_id(
        &self,
        org_id: Uuid,
        key_id: Uuid,
    ) -> Result<Option<SecurityKeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM security_keys WHERE org_id = $1 AND id = $2");
        let row: Option<KeyRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(org_id).bind(key_id).fetch_optional(p).await?
        });
        row.map(SecurityKeyRecord::try_from).transpose()
    }

    /// Starts the transaction of one key operation and locks the key row for its duration: on
    /// PostgreSQL with `SELECT … FOR UPDATE`, on SQLite with `BEGIN IMMEDIATE` (one writer at a
    /// time). This serialises operations on one key across connections and replicas.
    pub async fn begin_key(&self, org_id: Uuid, key_id: Uuid) -> Result<KeyTx, StoreError> {
        let mut inner = match &self.db {
            Db::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        // SQLite has no row locks and rejects FOR UPDATE; its BEGIN IMMEDIATE already excludes
        // every other writer.
        let lock_sql = match &self.db {
            Db::Sqlite(_) => "SELECT id FROM security_keys WHERE org_id = $1 AND id = $2",
            Db::Postgres(_) => {
                "SELECT id FROM security_keys WHERE org_id = $1 AND id = $2 FOR UPDATE"
            }
        };
        let exists: Option<(Uuid,)> = on_tx!(&mut inner, c => {
            sqlx::query_as(lock_sql).bind(org_id).bind(key_id).fetch_optional(&mut *c).await?
        });
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        Ok(KeyTx {
            org_id,
            key_id,
            inner,
            batch: None,
            released: false,
            write_heads: false,
        })
    }

    /// Starts the transaction of a key operation on a key that does not exist yet: the caller
    /// creates it first with [`KeyTx::create_key`]. Nobody else can see (or lock) the new row
    /// before this transaction commits, so it needs no lock of its own; on SQLite `BEGIN
    /// IMMEDIATE` takes the write lock as for every key operation.
    pub async fn begin_key_create(&self, org_id: Uuid) -> Result<KeyTx, StoreError> {
        let inner = match &self.db {
            Db::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        Ok(KeyTx {
            org_id,
            key_id: Uuid::nil(),
            inner,
            batch: None,
            released: false,
            write_heads: false,
        })
    }

    /// Starts one transaction for a *batch* of key operations (group commit on SQLite): the
    /// caller runs operations one after another with [`KeyTx::begin_op`] / [`KeyTx::end_op`], each
    /// inside its own savepoint so a failed operation rolls back only its own writes, and commits
    /// them all with one [`KeyTx::commit`] (one WAL fsync for the whole batch). On SQLite the
    /// `BEGIN IMMEDIATE` write lock covers every key, so the audit chain heads are read once per
    /// batch and written back once at commit.
    ///
    /// Only for SQLite: on PostgreSQL a batch would hold many keys' row locks at once, and two
    /// replicas batching the same keys in different orders would deadlock.
    pub async fn begin_key_batch(&self) -> Result<KeyTx, StoreError> {
        let Db::Sqlite(p) = &self.db else {
            return Err(StoreError::Invalid(
                "batched key operations are for SQLite only".into(),
            ));
        };
        // The first operation's savepoint is opened with the transaction, in one round trip.
        let inner = TxInner::Sqlite(p.begin_with(BEGIN_BATCH).await?);
        Ok(KeyTx {
            org_id: Uuid::nil(),
            key_id: Uuid::nil(),
            inner,
            batch: Some(crate::audit::HeadCache::default()),
            released: false,
            write_heads: false,
        })
    }

    /// Writes the key's PIN state and commits at once: the authenticator spends a PIN retry before
    /// it compares the PIN, and that spend must survive a crash in between.
    pub async fn update_key_pin_state(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        rec: &SecurityKeyRecord,
    ) -> Result<(), StoreError> {
        let rp_ids = to_json_text(&rec.min_pin_length_rp_ids)?;
        let done = on_pool!(&self.db, p => {
            sqlx::query(UPDATE_PIN_STATE)
                .bind(&rec.pin_verifier).bind(rec.pin_code_points).bind(rec.pin_retries)
                .bind(rec.consecutive_pin_failures).bind(rec.min_pin_length).bind(&rp_ids)
                .bind(rec.force_pin_change).bind(rec.always_uv).bind(org_id).bind(key_id)
                .execute(p).await?.rows_affected()
        });
        if done == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    /// Every key's wrapped data key, for re-wrapping under a new key-encryption key.
    pub async fn all_wrapped_deks(&self) -> Result<Vec<(Uuid, Uuid, Vec<u8>, i32)>, StoreError> {
        let sql =
            "SELECT org_id, id, wrapped_dek, kek_version FROM security_keys ORDER BY org_id, id";
        Ok(on_pool!(&self.db, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Replaces a wrapped data key if it is still at `old_version` (compare-and-swap, so two
    /// concurrent rotations cannot lose a key). Returns whether the row changed.
    pub async fn replace_wrapped_dek(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        old_version: i32,
        wrapped: &[u8],
        new_version: i32,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE security_keys SET wrapped_dek = $1, kek_version = $2 \
                   WHERE org_id = $3 AND id = $4 AND kek_version = $5";
        let n = on_pool!(&self.db, p => {
            sqlx::query(sql).bind(wrapped).bind(new_version).bind(org_id).bind(key_id).bind(old_version)
                .execute(p).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// The keys of a user (normally one).
    pub async fn key_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<SecurityKeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM security_keys WHERE org_id = $1 AND user_id = $2 AND status <> 'revoked'"
        );
        let row: Option<KeyRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(org_id).bind(user_id).fetch_optional(p).await?
        });
        row.map(SecurityKeyRecord::try_from).transpose()
    }

    /// The credentials on a user's keys, for the API (no sealed material).
    pub async fn credentials_of_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Vec<CredentialSummary>, StoreError> {
        let sql = "SELECT c.id, c.rp_id, c.user_name, c.credential_id, c.created_at, c.created_by, c.via \
                   FROM credentials c JOIN security_keys k ON k.id = c.key_id \
                   WHERE c.org_id = $1 AND k.user_id = $2 ORDER BY c.created_at, c.id";
        Ok(
            on_pool!(&self.db, p => sqlx::query_as(sql).bind(org_id).bind(user_id).fetch_all(p).await?),
        )
    }
}

/// Inserts a security key for a user and marks the user `assigned`; `NotFound` when there is no
/// such user.
async fn insert_key(
    inner: &mut TxInner,
    org_id: Uuid,
    user_id: Uuid,
    key: &NewSecurityKey,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    on_tx!(inner, c => {
        sqlx::query(CREATE_KEY_SQL)
            .bind(key.id).bind(org_id).bind(user_id).bind(&key.aaguid).bind(&key.wrapped_dek)
            .bind(key.kek_version).bind(key.min_pin_length).bind(key.force_pin_change).bind(at)
            .execute(&mut *c).await?;
        let n = sqlx::query("UPDATE users SET key_id = $1, status = 'assigned' WHERE org_id = $2 AND id = $3")
            .bind(key.id).bind(org_id).bind(user_id).execute(&mut *c).await?.rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
    });
    Ok(())
}

impl Tx {
    /// Creates a security key for a user and marks the user `assigned`.
    pub async fn insert_security_key(
        &mut self,
        org_id: Uuid,
        user_id: Uuid,
        key: &NewSecurityKey,
    ) -> Result<(), StoreError> {
        insert_key(&mut self.inner, org_id, user_id, key, now()).await
    }

    /// Gives a key created in this transaction its first PIN (an admin's one-time PIN): only the
    /// keyed verifier is stored, with the PIN's length in code points and whether the key demands
    /// a new PIN before it verifies the user (CTAP forcePINChange). Retries stay full.
    pub async fn set_initial_pin(
        &mut self,
        org_id: Uuid,
        key_id: Uuid,
        pin_verifier: &[u8],
        pin_code_points: i32,
        force_pin_change: bool,
    ) -> Result<(), StoreError> {
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query(
                "UPDATE security_keys SET pin_verifier = $1, pin_code_points = $2, \
                 consecutive_pin_failures = 0, force_pin_change = $3 WHERE org_id = $4 AND id = $5",
            )
            .bind(pin_verifier).bind(pin_code_points).bind(force_pin_change).bind(org_id).bind(key_id)
            .execute(&mut *c).await?.rows_affected()
        });
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    /// Sets a key's status (`active`, `suspended`, `revoked`). Revoking also deletes its
    /// credentials and detaches it from its user, who goes back to `new`.
    pub async fn set_key_status(
        &mut self,
        org_id: Uuid,
        key_id: Uuid,
        status: &str,
    ) -> Result<(), StoreError> {
        on_tx!(&mut self.inner, c => {
            let n = sqlx::query("UPDATE security_keys SET status = $1 WHERE org_id = $2 AND id = $3 AND status <> 'revoked'")
                .bind(status).bind(org_id).bind(key_id).execute(&mut *c).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if status == "revoked" {
                sqlx::query("DELETE FROM credentials WHERE org_id = $1 AND key_id = $2")
                    .bind(org_id).bind(key_id).execute(&mut *c).await?;
                sqlx::query("UPDATE users SET key_id = NULL, status = CASE WHEN status = 'disabled' THEN status ELSE 'new' END \
                             WHERE org_id = $1 AND key_id = $2")
                    .bind(org_id).bind(key_id).execute(&mut *c).await?;
            }
        });
        Ok(())
    }
}

/// The savepoint every operation of a batch runs in. A batch keeps one open between operations:
/// a kept operation releases it and opens the next at once, a failed one rolls back to it (which
/// leaves it open at the same point), so each operation boundary costs one round trip.
const BEGIN_BATCH: &str = "BEGIN IMMEDIATE; SAVEPOINT keyop";
pub(crate) const KEEP_OP: &str = "RELEASE keyop; SAVEPOINT keyop";
const DROP_OP: &str = "ROLLBACK TO keyop";

/// The transaction of one key operation, holding the key's row lock. Everything written through it,
/// including its audit entry, commits together in [`KeyTx::commit`]; dropping it rolls back.
///
/// A batch transaction ([`Store::begin_key_batch`]) carries several operations, each delimited by
/// [`KeyTx::begin_op`] and [`KeyTx::end_op`].
pub struct KeyTx {
    pub(crate) org_id: Uuid,
    pub(crate) key_id: Uuid,
    pub(crate) inner: TxInner,
    /// For a batch: audit heads advanced in this transaction, and their state when the current
    /// operation began (restored if it rolls back).
    pub(crate) batch: Option<crate::audit::HeadCache>,
    /// In a batch: the current operation's savepoint was already released with its last writes
    /// ([`KeyTx::finish_op`], [`KeyTx::record_registration`]), so [`KeyTx::end_op`] has nothing
    /// left to do for it.
    pub(crate) released: bool,
    /// In a batch: the next operation's last statement also writes the audit heads back, because
    /// it is the batch's last operation ([`KeyTx::write_heads_with_next_op`]).
    pub(crate) write_heads: bool,
}

/// What a key operation writes last ([`KeyTx::finish_op`]).
pub struct OpEnd<'a> {
    /// Credentials the operation created and has not written yet (on a key created in the same
    /// operation, whose credentials the caller keeps in memory until here).
    pub credentials: &'a [CredentialRecord],
    /// The operation's audit entry: actor, action, target, detail.
    pub audit: Option<(&'a str, &'a str, &'a str, serde_json::Value)>,
    /// A provisioning item (job id, user id) whose intent names the credential created.
    pub intent: Option<(Uuid, Uuid, &'a [u8])>,
}

/// A batch transaction's audit heads as they were before the current operation (nothing for a
/// single operation's transaction).
#[derive(Default)]
pub struct OpMark(Option<crate::audit::HeadCache>);

impl KeyTx {
    /// Starts the next operation of a batch on key `key_id` of `org_id` and returns its row
    /// (`NotFound` if the organisation has no such key). Whatever the operation writes until
    /// [`KeyTx::end_op`] can be rolled back on its own.
    pub async fn begin_op(
        &mut self,
        org_id: Uuid,
        key_id: Uuid,
    ) -> Result<SecurityKeyRecord, StoreError> {
        self.org_id = org_id;
        self.key_id = key_id;
        self.released = false;
        let sql = format!("SELECT {KEY_COLUMNS} FROM security_keys WHERE org_id = $1 AND id = $2");
        let row: Option<KeyRow> = on_tx!(&mut self.inner, c => {
            sqlx::query_as(&sql).bind(org_id).bind(key_id).fetch_optional(&mut *c).await?
        });
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Creates a security key for `user_id` (who becomes `assigned`) with its `key.create` audit
    /// entry, and makes it the key of the operation that follows: in a batch this *begins* the
    /// operation, like [`KeyTx::begin_op`]. Returns the row as written, without reading it back.
    /// `NotFound` if the organisation has no such user.
    pub async fn create_key(
        &mut self,
        org_id: Uuid,
        user_id: Uuid,
        key: &NewSecurityKey,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<SecurityKeyRecord, StoreError> {
        self.org_id = org_id;
        self.key_id = key.id;
        self.released = false;
        let at = now();
        let target = format!("key:{}", key.id);
        // The row as the INSERT below and the table's defaults make it.
        let rec = SecurityKeyRecord {
            id: key.id,
            org_id,
            user_id,
            status: "active".into(),
            aaguid: key.aaguid.clone(),
            wrapped_dek: key.wrapped_dek.clone(),
            kek_version: key.kek_version,
            pin_verifier: None,
            pin_code_points: 0,
            pin_retries: 8,
            consecutive_pin_failures: 0,
            min_pin_length: key.min_pin_length,
            min_pin_length_rp_ids: Vec::new(),
            force_pin_change: key.force_pin_change,
            always_uv: false,
        };
        let batched_sqlite = self.batch.is_some() && matches!(self.inner, TxInner::Sqlite(_));
        if batched_sqlite {
            // A batch on SQLite: the audit head is cached, so the key, the user and the audit
            // entry are written by one multi-statement query (one round trip to SQLite's thread).
            let entry = self
                .batched_entry(org_id, actor, "key.create", &target, &detail)
                .await?;
            let c = self.batch_connection()?;
            let sql = format!(
                "{CREATE_KEY_SQL}; UPDATE users SET key_id = $1, status = 'assigned' \
                 WHERE org_id = $2 AND id = $3; {}",
                crate::audit::PreparedEntry::sql(10)
            );
            let q = sqlx::query(&sql)
                .bind(key.id)
                .bind(org_id)
                .bind(user_id)
                .bind(&key.aaguid)
                .bind(&key.wrapped_dek)
                .bind(key.kek_version)
                .bind(key.min_pin_length)
                .bind(key.force_pin_change)
                .bind(at);
            let n = entry.bind_sqlite(q).execute(&mut *c).await?.rows_affected();
            // The key, the user and the audit entry; a missing user leaves one row unchanged.
            if n != 3 {
                return Err(StoreError::NotFound);
            }
        } else {
            insert_key(&mut self.inner, org_id, user_id, key, at).await?;
            self.append_audit(org_id, actor, "key.create", &target, detail)
                .await?;
        }
        Ok(rec)
    }

    /// Marks the operation about to begin as the batch's last: if it ends with one multi-statement
    /// query ([`KeyTx::finish_op`], [`KeyTx::record_registration`]), that query also writes the
    /// audit heads back, which saves [`KeyTx::commit`] a round trip. If it fails instead, the
    /// commit writes them as usual.
    pub fn write_heads_with_next_op(&mut self) {
        self.write_heads = true;
    }

    /// What [`KeyTx::end_op`] restores if the operation about to begin is rolled back; take it
    /// before [`KeyTx::begin_op`].
    pub fn mark(&self) -> OpMark {
        OpMark(self.batch.clone())
    }

    /// Ends the current operation of a batch: `keep` keeps its writes in the batch, otherwise they
    /// are rolled back (and the audit heads restored to `mark`). An error here leaves the batch
    /// in an unknown state: the caller must drop it (rolling everything back) and fail every
    /// operation in it.
    pub async fn end_op(&mut self, keep: bool, mark: OpMark) -> Result<(), StoreError> {
        if std::mem::take(&mut self.released) {
            // Its writes are already part of the batch: they can no longer be undone alone.
            return if keep {
                Ok(())
            } else {
                Err(StoreError::Invalid(
                    "a released operation cannot be rolled back".into(),
                ))
            };
        }
        let sql = if keep { KEEP_OP } else { DROP_OP };
        on_tx!(&mut self.inner, c => { sqlx::raw_sql(sql).execute(&mut *c).await?; });
        if !keep && let Some(saved) = mark.0 {
            self.batch = Some(saved);
        }
        Ok(())
    }

    /// Commits everything written so far and goes on in a new transaction holding the same lock
    /// again (the key row on PostgreSQL, the write lock on SQLite). A spent PIN retry must be
    /// durable before the PIN is compared. In a batch this commits the earlier operations too,
    /// and the current operation continues in a fresh savepoint; its later writes can still be
    /// rolled back alone. Callers must re-read state that another writer may have changed.
    pub async fn checkpoint(&mut self, mark: &mut OpMark) -> Result<(), StoreError> {
        if let Some(cache) = self.batch.as_mut() {
            crate::audit::flush_heads(&mut self.inner, cache).await?;
            // The heads are re-read after the commit: another writer may append in between.
            *mark = OpMark(Some(crate::audit::HeadCache::default()));
        }
        let (org, key) = (self.org_id, self.key_id);
        match &mut self.inner {
            TxInner::Sqlite(t) => {
                let c: &mut sqlx::SqliteConnection = &mut *t;
                let again = if self.batch.is_some() {
                    "COMMIT; BEGIN IMMEDIATE; SAVEPOINT keyop"
                } else {
                    "COMMIT; BEGIN IMMEDIATE"
                };
                sqlx::raw_sql(again).execute(&mut *c).await?;
            }
            TxInner::Postgres(t) => {
                let c: &mut sqlx::PgConnection = &mut *t;
                sqlx::raw_sql("COMMIT; BEGIN").execute(&mut *c).await?;
                let found: Option<(Uuid,)> = sqlx::query_as(
                    "SELECT id FROM security_keys WHERE org_id = $1 AND id = $2 FOR UPDATE",
                )
                .bind(org)
                .bind(key)
                .fetch_optional(&mut *c)
                .await?;
                if found.is_none() {
                    return Err(StoreError::NotFound);
                }
            }
        }
        Ok(())
    }

    pub fn org_id(&self) -> Uuid {
        self.org_id
    }

    pub fn key_id(&self) -> Uuid {
        self.key_id
    }

    pub async fn key(&mut self) -> Result<SecurityKeyRecord, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM security_keys WHERE org_id = $1 AND id = $2");
        let (org, key) = (self.org_id, self.key_id);
        let row: KeyRow = on_tx!(&mut self.inner, c => {
            sqlx::query_as(&sql).bind(org).bind(key).fetch_one(&mut *c).await?
        });
        row.try_into()
    }

    /// Writes the key's mutable state (PIN state and options; identity fields are ignored).
    pub async fn save_key_state(&mut self, rec: &SecurityKeyRecord) -> Result<(), StoreError> {
        let rp_ids = to_json_text(&rec.min_pin_length_rp_ids)?;
        let (org, key) = (self.org_id, self.key_id);
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query(UPDATE_PIN_STATE)
                .bind(&rec.pin_verifier).bind(rec.pin_code_points).bind(rec.pin_retries)
                .bind(rec.consecutive_pin_failures).bind(rec.min_pin_length).bind(&rp_ids)
                .bind(rec.force_pin_change).bind(rec.always_uv).bind(org).bind(key)
                .execute(&mut *c).await?.rows_affected()
        });
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn select_credentials(
        &mut self,
        filter: &str,
        arg: Option<&[u8]>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let sql = format!(
            "SELECT {CRED_COLUMNS} FROM credentials WHERE org_id = $1 AND key_id = $2 {filter} ORDER BY created_at, id"
        );
        let (org, key) = (self.org_id, self.key_id);
        let rows: Vec<CredRow> = on_tx!(&mut self.inner, c => {
            let mut q = sqlx::query_as(&sql).bind(org).bind(key);
            if let Some(a) = arg {
                q = q.bind(a);
            }
            q.fetch_all(&mut *c).await?
        });
        Ok(rows.into_iter().map(CredentialRecord::from).collect())
    }

    pub async fn credentials_for_rp(
        &mut self,
        rp_id_hash: &[u8],
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        self.select_credentials("AND rp_id_hash = $3", Some(rp_id_hash))
            .await
    }

    pub async fn credential(
        &mut self,
        credential_id: &[u8],
    ) -> Result<Option<CredentialRecord>, StoreError> {
        Ok(self
            .select_credentials("AND credential_id = $3", Some(credential_id))
            .await?
            .into_iter()
            .next())
    }

    pub async fn discoverable_credentials(&mut self) -> Result<Vec<CredentialRecord>, StoreError> {
        let disc = match self.inner {
            TxInner::Sqlite(_) => "AND discoverable = 1",
            TxInner::Postgres(_) => "AND discoverable = TRUE",
        };
        self.select_credentials(disc, None).await
    }

    /// Writes what a key operation writes last ([`OpEnd`]). In a batch on SQLite (audit head
    /// cached) this is one multi-statement query that also releases the operation's savepoint,
    /// so the operation ends in one round trip to SQLite's thread; the caller's
    /// [`KeyTx::end_op`] then only confirms it. Otherwise statement by statement.
    pub async fn finish_op(&mut self, org_id: Uuid, end: OpEnd<'_>) -> Result<(), StoreError> {
        let batched_sqlite = self.batch.is_some() && matches!(self.inner, TxInner::Sqlite(_));
        let (first, rest) = match end.credentials.split_first() {
            Some((c, rest)) => (Some(c), rest),
            None => (None, &[][..]),
        };
        if !batched_sqlite {
            for c in end.credentials {
                self.insert_credential(c).await?;
            }
            if let Some((job_id, user_id, id)) = end.intent {
                self.set_item_intent(job_id, user_id, Some(id)).await?;
            }
            if let Some((actor, action, target, detail)) = end.audit {
                self.append_audit(org_id, actor, action, target, detail)
                    .await?;
            }
            return Ok(());
        }
        for c in rest {
            self.insert_credential(c).await?;
        }
        let (key, at) = (self.key_id, now());
        let entry = match &end.audit {
            Some((actor, action, target, detail)) => Some(
                self.batched_entry(org_id, actor, action, target, detail)
                    .await?,
            ),
            None => None,
        };
        // Parameters: the credential $1..$23, the intent $24..$27, the audit entry $28..$36.
        let mut sql = String::new();
        if first.is_some() {
            // The only statement that returns a row, when the credential went in (row counts of
            // a multi-statement query cannot be told apart).
            sql.push_str(&insert_credential_sql());
            sql.push_str(" RETURNING id; ");
        }
        if end.intent.is_some() {
            // Only if the credential before it went in: `changes()` is that INSERT's count.
            sql.push_str(
                "UPDATE job_items SET intent_credential_id = $24, updated_at = $25 \
                 WHERE job_id = $26 AND user_id = $27",
            );
            sql.push_str(if first.is_some() {
                " AND changes() = 1; "
            } else {
                "; "
            });
        }
        if entry.is_some() {
            sql.push_str(&crate::audit::PreparedEntry::sql(28));
            sql.push_str("; ");
        }
        let heads = self.take_heads_sql(37)?;
        if let Some((heads_sql, _)) = &heads {
            sql.push_str(heads_sql);
        }
        sql.push_str(KEEP_OP);
        let mut q = sqlx::query(&sql);
        // Unused parameters are bound as NULLs so that the numbering holds.
        q = match first {
            Some(r) => bind_credential(q, Uuid::now_v7(), org_id, key, r),
            None => {
                for _ in 0..23 {
                    q = q.bind(None::<i64>);
                }
                q
            }
        };
        q = match end.intent {
            Some((job_id, user_id, id)) => q.bind(id).bind(at).bind(job_id).bind(user_id),
            None => q
                .bind(None::<i64>)
                .bind(None::<i64>)
                .bind(None::<i64>)
                .bind(None::<i64>),
        };
        q = match entry {
            Some(entry) => entry.bind_sqlite(q),
            None => {
                for _ in 0..9 {
                    q = q.bind(None::<i64>);
                }
                q
            }
        };
        if let Some((_, values)) = &heads {
            q = crate::audit::bind_heads(q, values);
        }
        let rows = q.fetch_all(&mut *self.batch_connection()?).await?;
        if heads.is_some() {
            self.heads_written();
        }
        if first.is_some() && rows.is_empty() {
            return Err(StoreError::Conflict(
                "credential id already on this key".into(),
            ));
        }
        self.released = true;
        Ok(())
    }

    /// In a SQLite batch: the next audit entry of `org_id`, chained onto the head cached for the
    /// batch (read, or created, in this transaction the first time), for the caller to insert
    /// with its other statements ([`crate::audit::prepare_cached`]).
    pub(crate) async fn batched_entry(
        &mut self,
        org_id: Uuid,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<crate::audit::PreparedEntry, StoreError> {
        let cache = self
            .batch
            .as_mut()
            .ok_or_else(|| StoreError::Invalid("not a batch".into()))?;
        crate::audit::load_head(&mut self.inner, cache, org_id).await?;
        crate::audit::prepare_cached(cache, org_id, actor, action, target, detail)
    }

    /// In a batch, for an operation's last query: the SQL that writes the cached audit heads
    /// back (parameters numbered from `$first`) when this is the batch's last operation
    /// ([`KeyTx::write_heads_with_next_op`]). Call [`KeyTx::heads_written`] once it ran.
    pub(crate) fn take_heads_sql(
        &mut self,
        first: usize,
    ) -> Result<Option<crate::audit::HeadsSql>, StoreError> {
        let cache = self
            .batch
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("not a batch".into()))?;
        Ok(std::mem::take(&mut self.write_heads).then(|| cache.write_sql(first)))
    }

    /// The SQL of [`KeyTx::take_heads_sql`] ran: the heads are on record.
    pub(crate) fn heads_written(&mut self) {
        if let Some(cache) = self.batch.as_mut() {
            cache.set_written();
        }
    }

    /// The connection of a batch on SQLite, for its multi-statement queries.
    pub(crate) fn batch_connection(&mut self) -> Result<&mut sqlx::SqliteConnection, StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => Ok(&mut **t),
            TxInner::Postgres(_) => Err(StoreError::Invalid("not a SQLite batch".into())),
        }
    }

    pub async fn insert_credential(&mut self, r: &CredentialRecord) -> Result<(), StoreError> {
        let sql = insert_credential_sql();
        let (org, key) = (self.org_id, self.key_id);
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query(&sql)
                .bind(Uuid::now_v7()).bind(org).bind(key)
                .bind(&r.credential_id).bind(&r.rp_id).bind(&r.rp_id_hash).bind(&r.rp_name)
                .bind(&r.user_handle).bind(&r.user_name).bind(&r.user_display_name).bind(r.alg)
                .bind(&r.public_key_cose).bind(&r.sealed_private_key).bind(&r.sealed_cred_random)
                .bind(r.discoverable).bind(r.cred_protect).bind(&r.cred_blob).bind(r.sign_count)
                .bind(r.backup_eligible).bind(r.backup_state).bind(r.created_at).bind(&r.created_by)
                .bind(&r.via)
                .execute(&mut *c).await?.rows_affected()
        });
        // DO NOTHING + a count instead of a failed INSERT: on PostgreSQL a failed statement would
        // poison the whole transaction, and the caller may want to carry on.
        if n == 0 {
            Err(StoreError::Conflict(
                "credential id already on this key".into(),
            ))
        } else {
            Ok(())
        }
    }

    pub async fn update_credential_user(
        &mut self,
        credential_id: &[u8],
        handle: &[u8],
        name: Option<&str>,
        display: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (org, key) = (self.org_id, self.key_id);
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE credentials SET user_handle = $1, user_name = $2, user_display_name = $3 \
                         WHERE org_id = $4 AND key_id = $5 AND credential_id = $6")
                .bind(handle).bind(name).bind(display).bind(org).bind(key).bind(credential_id)
                .execute(&mut *c).await?.rows_affected()
        });
        Ok(n > 0)
    }

    pub async fn delete_credential(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        let (org, key) = (self.org_id, self.key_id);
        let n = on_tx!(&mut self.inner, c => {
            sqlx::query("DELETE FROM credentials WHERE org_id = $1 AND key_id = $2 AND credential_id = $3")
                .bind(org).bind(key).bind(credential_id).execute(&mut *c).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Increments the credential's signature counter in this transaction and returns the new value.
    pub async fn next_sign_count(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        let (org, key) = (self.org_id, self.key_id);
        let (count,): (i64,) = on_tx!(&mut self.inner, c => {
            sqlx::query_as("UPDATE credentials SET sign_count = sign_count + 1 \
                            WHERE org_id = $1 AND key_id = $2 AND credential_id = $3 RETURNING sign_count")
                .bind(org).bind(key).bind(credential_id).fetch_one(&mut *c).await?
        });
        u32::try_from(count)
            .map_err(|_| StoreError::Corrupt("signature counter out of range".into()))
    }

    /// Deletes every credential of the key (authenticatorReset, revocation).
    pub async fn wipe_credentials(&mut self) -> Result<(), StoreError> {
        let (org, key) = (self.org_id, self.key_id);
        on_tx!(&mut self.inner, c => {
            sqlx::query("DELETE FROM credentials WHERE org_id = $1 AND key_id = $2")
                .bind(org).bind(key).execute(&mut *c).await?;
        });
        Ok(())
    }

    /// Appends an audit entry in this transaction: no key operation commits without its record.
    pub async fn append_audit(
        &mut self,
        org_id: Uuid,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        match self.batch.as_mut() {
            Some(cache) => {
                crate::audit::append_cached(
                    &mut self.inner,
                    cache,
                    org_id,
                    actor,
                    action,
                    target,
                    detail,
                )
                .await
            }
            None => {
                crate::audit::append(&mut self.inner, org_id, actor, action, target, detail).await
            }
        }
        .map(|_| ())
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Some(cache) = self.batch.as_mut() {
            crate::audit::flush_heads(&mut self.inner, cache).await?;
        }
        self.inner.commit().await
    }
}

/// Inserts a credential: `$1` row id, `$2` organisation, `$3` key, then the 20 credential columns.
fn insert_credential_sql() -> String {
    format!(
        "INSERT INTO credentials (id, org_id, key_id, {CRED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) ON CONFLICT DO NOTHING"
    )
}

/// Binds the 23 parameters of [`insert_credential_sql`] (SQLite).
fn bind_credential<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    id: Uuid,
    org: Uuid,
    key: Uuid,
    r: &'q CredentialRecord,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    q.bind(id)
        .bind(org)
        .bind(key)
        .bind(&r.credential_id)
        .bind(&r.rp_id)
        .bind(&r.rp_id_hash)
        .bind(&r.rp_name)
        .bind(&r.user_handle)
        .bind(&r.user_name)
        .bind(&r.user_display_name)
        .bind(r.alg)
        .bind(&r.public_key_cose)
        .bind(&r.sealed_private_key)
        .bind(&r.sealed_cred_random)
        .bind(r.discoverable)
        .bind(r.cred_protect)
        .bind(&r.cred_blob)
        .bind(r.sign_count)
        .bind(r.backup_eligible)
        .bind(r.backup_state)
        .bind(r.created_at)
        .bind(&r.created_by)
        .bind(&r.via)
}
