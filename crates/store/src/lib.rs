//! Keyward persistence: SQLite and PostgreSQL through sqlx.
//!
//! The backend is chosen at run time from the database URL. Both backends run the *same* SQL text:
//! placeholders are written `$1, $2, …` (SQLite accepts them as numbered parameters as long as they
//! first appear in order), UUIDs, times, booleans and byte strings are bound as Rust types that each
//! driver maps to its own column type, and JSON travels as TEXT. The [`on_pool!`] and [`on_tx!`]
//! macros expand one block of query code once per backend, so there is one query per operation
//! and no `sqlx::Any` type erasure (which loses UUID and time types).
//!
//! sqlx types never leave this crate: repositories return the plain records defined here.

mod admin_auth;
mod admins;
mod audit;
mod directories;
mod jobs;
mod keys;
mod pairing;
mod rotation;
mod settings;
mod users;

pub mod testing;

#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use admin_auth::{
    AdminPasskeyRecord, CeremonyRecord, NewAdminPasskey, OneTimeTokenRecord, token_kind,
};
pub use admins::{AdminRecord, ApiTokenRecord, OrganisationRecord, SessionRecord};
pub use audit::{AuditEntry, AuditFilter, AuditVerifyError, AuditVerifyReport};
pub use directories::{DirectoryRecord, ExternalUser, ImportCounts, NewDirectory};
pub use jobs::{
    ItemFinish, ItemRegistration, JobItemRecord, JobRecord, ProvisioningSubject, RpRegistration,
    item_state, job_state,
};
pub use keys::{
    CredentialRecord, CredentialSummary, KeyTx, NewSecurityKey, OpEnd, OpMark, SecurityKeyRecord,
};
pub use pairing::{
    DelegatedSessionRecord, DeviceOwner, NewDelegatedSession, PairDeviceRecord, RelayListener,
};
pub use rotation::{SealedKind, SealedRow, SealedValue};
pub use settings::{AttestationBatchRecord, OrgSettingsRecord};
pub use users::{ActivationCodeRecord, NewUser, UserFilter, UserPatch, UserRecord};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Errors of the persistence layer. Messages never contain bound values (which may be secret
/// hashes), only what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or belongs to another organisation, which callers must not learn).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated, e.g. a UPN that already exists in the organisation.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A request that the data model rejects, e.g. an unsupported database URL.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Stored data that cannot be decoded, e.g. a broken JSON column.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Migrations could not be applied at start-up.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when the failure is the database's, not the request's: callers answer 503 (fail closed).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Migrate(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique constraint").to_owned())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Database(e),
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Expands `$body` once per backend with `$p` bound to that backend's pool.
macro_rules! on_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($p) => $body,
            $crate::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Expands `$body` once per backend with `$c` bound to the transaction's connection.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::TxInner::Sqlite(t) => {
                let $c: &mut sqlx::SqliteConnection = &mut *t;
                $body
            }
            $crate::TxInner::Postgres(t) => {
                let $c: &mut sqlx::PgConnection = &mut *t;
                $body
            }
        }
    };
}
pub(crate) use on_tx;

pub(crate) enum TxInner {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl TxInner {
    async fn commit(self) -> Result<(), StoreError> {
        match self {
            TxInner::Sqlite(t) => t.commit().await?,
            TxInner::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// A write transaction for admin actions: the change and its audit entry commit together or not at
/// all. Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    pub(crate) inner: TxInner,
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.inner.commit().await
    }
}

/// The handle to Keyward's database; cheap to clone (it holds a pool).
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

/// The current time, truncated to microseconds: PostgreSQL keeps microseconds, so values written
/// and read back compare equal (the audit hash depends on it) on both backends.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and runs the migrations.
    ///
    /// SQLite runs in WAL mode with foreign keys on and `synchronous=FULL`, so a key operation that
    /// returned has been fsynced (sign counters must never repeat, even after a power cut).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
                // Each pooled connection has its own page cache, emptied whenever another
                // connection writes; reading pages through a shared memory map instead keeps
                // a key operation's few reads from going back to the file system.
                .pragma("mmap_size", "268435456")
                .pragma("cache_size", "-16384")
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                // A SQLite connection is a file handle in this process: it cannot have gone away
                // while idle, and testing it costs a round trip to its thread on every acquire.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Store {
                db: Db::Sqlite(pool),
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Store {
                db: Db::Postgres(pool),
            }
        } else {
            return Err(StoreError::Invalid(
                "database URL must start with sqlite:// or postgres://".into(),
            ));
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// A cheap round trip, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.db, p => { sqlx::query("SELECT 1").execute(p).await?; });
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`),
    /// so a transaction that reads before writing cannot fail half-way with SQLITE_BUSY.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let inner = match &self.db {
            Db::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        Ok(Tx { inner })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_pool!(&self.db, p => p.close().await);
    }
}

/// Encodes a list of strings as the JSON text stored in TEXT columns.
pub(crate) fn to_json_text<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_json_text<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}
