//! Throwaway databases for tests of this crate and of the crates above it.
//!
//! [`all`] gives a fresh temp-file SQLite store and, when `KEYWARD_TEST_POSTGRES_URL` names a
//! PostgreSQL server, a store on a freshly created database there, so one test body covers both
//! backends. Without that variable the PostgreSQL half is skipped loudly, unless `CI` is set, in
//! which case it fails: CI must never skip PostgreSQL silently.

use crate::{Backend, Store};

/// A store on a database that lives as long as this value (the SQLite file is deleted on drop;
/// PostgreSQL test databases are left for the throwaway cluster to take away).
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Everything the database holds, as bytes, for tests that scan it for secrets: the SQLite
    /// file with its WAL and journal, or a data-only `pg_dump` followed by its lowercased copy
    /// (pg_dump prints bytea as `\x` hex, so a needle may be searched in both encodings).
    pub fn bytes_on_disk(&self) -> Vec<u8> {
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-journal"] {
                if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                    all.extend(bytes);
                }
            }
            assert!(!all.is_empty(), "no database file at {path}");
            all
        } else {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", "--format=plain", "--dbname", &self.url])
                .output()
                .expect("pg_dump must be installed to test PostgreSQL");
            assert!(
                out.status.success(),
                "pg_dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut all = out.stdout.clone();
            all.extend(
                String::from_utf8_lossy(&out.stdout)
                    .to_lowercase()
                    .into_bytes(),
            );
            all
        }
    }
}

/// A fresh SQLite database in a temporary directory.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("invariant: a temp dir can be created in tests");
    let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
    let store = Store::connect(&url)
        .await
        .expect("invariant: a fresh SQLite database opens");
    TestDb {
        store,
        url,
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database, or `None` (with a loud message) when no server is configured.
///
/// # Panics
/// When `CI` is set and `KEYWARD_TEST_POSTGRES_URL` is not, or when the server cannot be used.
pub async fn postgres() -> Option<TestDb> {
    let Ok(base) = std::env::var("KEYWARD_TEST_POSTGRES_URL") else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "KEYWARD_TEST_POSTGRES_URL is not set but CI is: PostgreSQL tests must run in CI"
            );
        }
        eprintln!(
            "!!! SKIPPING PostgreSQL half of this test: KEYWARD_TEST_POSTGRES_URL is not set !!!"
        );
        return None;
    };
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to KEYWARD_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
    }
    let url = with_database(&base, &name);
    let store = Store::connect(&url)
        .await
        .expect("invariant: a fresh PostgreSQL database opens");
    Some(TestDb {
        store,
        url,
        _dir: None,
    })
}

/// SQLite, plus PostgreSQL when configured.
pub async fn all() -> Vec<TestDb> {
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    dbs
}

/// Replaces the database name in a PostgreSQL URL (`postgres://u@h:p/db?opts`).
fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced_or_added() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            super::with_database("postgres://u@h", "t1"),
            "postgres://u@h/t1"
        );
        assert_eq!(
            super::with_database("postgres://h/x?sslmode=disable", "t"),
            "postgres://h/t?sslmode=disable"
        );
    }
}
