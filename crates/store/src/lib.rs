//! Keyward persistence: SQLite and PostgreSQL through sqlx
