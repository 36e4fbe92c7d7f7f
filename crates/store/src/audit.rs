//! The audit log: append-only, one hash chain per organisation.
//!
//! Entry `n` stores `hash_n = SHA-256(hash_{n-1} ‖ canonical JSON of entry n)`, with 32 zero bytes
//! before the first entry. The canonical JSON is the entry's fields (`action`, `actor`, `at`,
//! `detail`, `org_id`, `seq`, `target`) with object keys sorted at every level and no whitespace,
//! so anyone can recompute it. `audit_heads` holds the last sequence number and hash per
//! organisation, which also reveals a deleted tail.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, TxInner, from_json_text, now, on_pool, on_tx};

/// One audit entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub org_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: Value,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    org_id: Uuid,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target: String,
    detail: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;
    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        Ok(AuditEntry {
            seq: r.seq,
            org_id: r.org_id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            detail: from_json_text(&r.detail)?,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

/// Filters for listing the audit log; entries come newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Entries whose target is this user or whose detail names it as `user_id`.
    pub user_id: Option<Uuid>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Only entries with a sequence number below this one (the previous page's last).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// Serialises JSON with object keys sorted at every level and no insignificant whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The chain hash of an entry given the previous entry's hash.
// The arguments are exactly the hashed fields; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    prev_hash: &[u8],
    seq: i64,
    org_id: Uuid,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Vec<u8> {
    let body = serde_json::json!({
        "action": action,
        "actor": actor,
        "at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "detail": detail,
        "org_id": org_id.to_string(),
        "seq": seq,
        "target": target,
    });
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical_json(&body).as_bytes());
    h.finalize().to_vec()
}

/// Appends an entry inside the caller's transaction and returns its sequence number.
pub(crate) async fn append(
    inner: &mut TxInner,
    org_id: Uuid,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<i64, StoreError> {
    let at = now();
    let detail_text = canonical_json(&detail);
    on_tx!(inner, c => {
        // Bumping the head row takes its lock (PostgreSQL) so concurrent appends of one
        // organisation queue up instead of forking the chain.
        let bump = "UPDATE audit_heads SET seq = seq + 1 WHERE org_id = $1 RETURNING seq, hash";
        let mut head: Option<(i64, Vec<u8>)> =
            sqlx::query_as(bump).bind(org_id).fetch_optional(&mut *c).await?;
        if head.is_none() {
            sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (org_id) DO NOTHING")
                .bind(org_id).bind(vec![0u8; 32]).execute(&mut *c).await?;
            head = sqlx::query_as(bump).bind(org_id).fetch_optional(&mut *c).await?;
        }
        let (seq, prev_hash) = head.ok_or(StoreError::NotFound)?;
        let hash = entry_hash(&prev_hash, seq, org_id, at, actor, action, target, &detail);
        sqlx::query(
            "INSERT INTO audit_log (org_id, seq, at, actor, action, target, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(org_id).bind(seq).bind(at).bind(actor).bind(action).bind(target).bind(&detail_text)
        .bind(&prev_hash).bind(&hash)
        .execute(&mut *c).await?;
        sqlx::query("UPDATE audit_heads SET hash = $1 WHERE org_id = $2")
            .bind(&hash).bind(org_id).execute(&mut *c).await?;
        Ok(seq)
    })
}

/// Audit chain heads advanced inside a batch transaction of key operations but not yet written
/// back to `audit_heads`. Valid only while that transaction holds SQLite's write lock (nobody else
/// can append in between); written back by [`flush_heads`] before every commit.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadCache {
    heads: std::collections::HashMap<Uuid, (i64, Vec<u8>)>,
    /// The cached heads are already written back in this transaction (by [`HeadCache::write_sql`]
    /// in an operation's last statement): [`flush_heads`] has nothing to do.
    written: bool,
}

impl HeadCache {
    /// Statements that write every cached head back, parameters numbered from `$first`, and
    /// their values (seq, hash, organisation) in that order. The caller marks them
    /// [`HeadCache::set_written`] once they ran.
    pub(crate) fn write_sql(&self, first: usize) -> HeadsSql {
        let mut sql = String::new();
        let mut values = Vec::with_capacity(self.heads.len());
        for (i, (org_id, (seq, hash))) in self.heads.iter().enumerate() {
            let p = first + 3 * i;
            sql.push_str(&format!(
                "UPDATE audit_heads SET seq = ${}, hash = ${} WHERE org_id = ${}; ",
                p,
                p + 1,
                p + 2
            ));
            values.push((*seq, hash.clone(), *org_id));
        }
        (sql, values)
    }

    pub(crate) fn set_written(&mut self) {
        self.written = true;
    }
}

/// Appends an entry like [`append`], but reads the organisation's head once per transaction and
/// keeps it in `cache` instead of rewriting the head row for every entry: one statement per entry.
// The arguments are the entry's fields plus the transaction and its cache.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn append_cached(
    inner: &mut TxInner,
    cache: &mut HeadCache,
    org_id: Uuid,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<i64, StoreError> {
    load_head(inner, cache, org_id).await?;
    // Like every cached entry, on error the caller rolls back to its mark (see `prepare_cached`).
    let e = prepare_cached(cache, org_id, actor, action, target, &detail)?;
    on_tx!(inner, c => {
        sqlx::query(&PreparedEntry::sql(1))
            .bind(e.org_id).bind(e.seq).bind(e.at).bind(&e.actor).bind(&e.action).bind(&e.target)
            .bind(&e.detail_text).bind(&e.prev_hash).bind(&e.hash)
            .execute(&mut *c).await?;
    });
    Ok(e.seq)
}

/// An audit entry chained onto a cached head, for a caller that inserts it together with other
/// statements ([`PreparedEntry::SQL`], bound by [`PreparedEntry::bind_sqlite`]).
pub(crate) struct PreparedEntry {
    org_id: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target: String,
    detail_text: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl PreparedEntry {
    /// The insert, with its nine parameters numbered from `$first`.
    pub(crate) fn sql(first: usize) -> String {
        let p: Vec<String> = (first..first + 9).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO audit_log (org_id, seq, at, actor, action, target, detail, prev_hash, hash) \
             VALUES ({})",
            p.join(", ")
        )
    }

    /// Binds the nine values in the order of [`PreparedEntry::sql`].
    pub(crate) fn bind_sqlite<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
        q.bind(self.org_id)
            .bind(self.seq)
            .bind(self.at)
            .bind(self.actor)
            .bind(self.action)
            .bind(self.target)
            .bind(self.detail_text)
            .bind(self.prev_hash)
            .bind(self.hash)
    }
}

/// The statements that write cached audit heads back, and their values (seq, hash, org).
pub(crate) type HeadsSql = (String, Vec<(i64, Vec<u8>, Uuid)>);

/// Binds the values of [`HeadCache::write_sql`], in its order.
pub(crate) fn bind_heads<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    values: &[(i64, Vec<u8>, Uuid)],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for (seq, hash, org) in values {
        q = q.bind(*seq).bind(hash.clone()).bind(*org);
    }
    q
}

/// Makes sure `cache` holds the head of `org_id`'s chain (reading it, or creating it, in this
/// transaction), so [`prepare_cached`] can chain entries without a round trip.
pub(crate) async fn load_head(
    inner: &mut TxInner,
    cache: &mut HeadCache,
    org_id: Uuid,
) -> Result<(), StoreError> {
    if cache.heads.contains_key(&org_id) {
        return Ok(());
    }
    let head = on_tx!(inner, c => {
        let head: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE org_id = $1")
                .bind(org_id).fetch_optional(&mut *c).await?;
        match head {
            Some(h) => h,
            None => {
                sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2)")
                    .bind(org_id).bind(vec![0u8; 32]).execute(&mut *c).await?;
                (0, vec![0u8; 32])
            }
        }
    });
    cache.heads.insert(org_id, head);
    Ok(())
}

/// Chains the next entry of `org_id` onto the cached head (loaded by [`load_head`]) and advances
/// the cache; the caller must insert the entry in the same transaction or roll back to its mark.
pub(crate) fn prepare_cached(
    cache: &mut HeadCache,
    org_id: Uuid,
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<PreparedEntry, StoreError> {
    let (prev_seq, prev_hash) = cache
        .heads
        .get(&org_id)
        .cloned()
        .ok_or_else(|| StoreError::Invalid("audit head not loaded".into()))?;
    let at = now();
    let seq = prev_seq + 1;
    let hash = entry_hash(&prev_hash, seq, org_id, at, actor, action, target, detail);
    cache.heads.insert(org_id, (seq, hash.clone()));
    cache.written = false;
    Ok(PreparedEntry {
        org_id,
        seq,
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail_text: canonical_json(detail),
        prev_hash,
        hash,
    })
}

/// Writes the cached heads back to `audit_heads` and empties the cache.
pub(crate) async fn flush_heads(
    inner: &mut TxInner,
    cache: &mut HeadCache,
) -> Result<(), StoreError> {
    if std::mem::take(&mut cache.written) {
        cache.heads.clear();
        return Ok(());
    }
    for (org_id, (seq, hash)) in cache.heads.drain() {
        on_tx!(&mut *inner, c => {
            sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE org_id = $3")
                .bind(seq).bind(&hash).bind(org_id).execute(&mut *c).await?;
        });
    }
    Ok(())
}

impl Tx {
    /// Appends an audit entry in this transaction: the admin write and its record commit together.
    pub async fn append_audit(
        &mut self,
        org_id: Uuid,
        actor: &str,
        action: &str,
        target: &str,
        detail: Value,
    ) -> Result<i64, StoreError> {
        append(&mut self.inner, org_id, actor, action, target, detail).await
    }
}

/// What `keyward audit verify` found wrong first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain of organisation {org_id} broken at seq {seq}: {reason}")]
pub struct AuditVerifyError {
    pub org_id: Uuid,
    pub seq: i64,
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerifyReport {
    pub organisations: usize,
    pub entries: usize,
}

const AUDIT_COLUMNS: &str = "seq, org_id, at, actor, action, target, detail, prev_hash, hash";

impl Store {
    /// Lists audit entries of one organisation, newest first.
    pub async fn list_audit(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE org_id = $1 \
             AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $3) \
             AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR seq < $5) \
             AND ($6 IS NULL OR target = $6 OR detail LIKE $7) \
             ORDER BY seq DESC LIMIT $8"
        );
        let user_target = f.user_id.map(|u| format!("user:{u}"));
        let user_detail = f.user_id.map(|u| format!("%\"user_id\":\"{u}\"%"));
        let rows: Vec<AuditRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql)
                .bind(org_id).bind(&f.actor).bind(&f.action).bind(f.since).bind(f.before_seq)
                .bind(&user_target).bind(&user_detail).bind(f.limit)
                .fetch_all(p).await?
        });
        rows.into_iter().map(AuditEntry::try_from).collect()
    }

    /// Recomputes every organisation's chain. `Ok(Err(..))` names the first broken entry.
    pub async fn verify_audit(
        &self,
    ) -> Result<Result<AuditVerifyReport, AuditVerifyError>, StoreError> {
        let orgs: Vec<(Uuid,)> = on_pool!(&self.db, p => sqlx::query_as("SELECT id FROM organisations ORDER BY id").fetch_all(p).await?);
        let mut report = AuditVerifyReport {
            organisations: orgs.len(),
            entries: 0,
        };
        for (org_id,) in orgs {
            let sql =
                format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE org_id = $1 ORDER BY seq");
            let rows: Vec<AuditRow> =
                on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).fetch_all(p).await?);
            let mut prev = vec![0u8; 32];
            let mut expected_seq = 1;
            for row in rows {
                let bad = |reason: &str| AuditVerifyError {
                    org_id,
                    seq: expected_seq,
                    reason: reason.into(),
                };
                if row.seq != expected_seq {
                    return Ok(Err(bad("entry missing (sequence gap)")));
                }
                if row.prev_hash != prev {
                    return Ok(Err(bad("previous hash does not match the chain")));
                }
                let Ok(detail) = serde_json::from_str::<Value>(&row.detail) else {
                    return Ok(Err(bad("detail is not JSON")));
                };
                let hash = entry_hash(
                    &prev,
                    row.seq,
                    org_id,
                    row.at,
                    &row.actor,
                    &row.action,
                    &row.target,
                    &detail,
                );
                if hash != row.hash {
                    return Ok(Err(bad("entry was modified (hash mismatch)")));
                }
                prev = hash;
                expected_seq += 1;
                report.entries += 1;
            }
            let head: Option<(i64, Vec<u8>)> = on_pool!(&self.db, p => {
                sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE org_id = $1").bind(org_id).fetch_optional(p).await?
            });
            if let Some((head_seq, head_hash)) = head
                && (head_seq != expected_seq - 1 || (head_seq > 0 && head_hash != prev))
            {
                return Ok(Err(AuditVerifyError {
                    org_id,
                    seq: expected_seq,
                    reason: format!(
                        "entries after seq {} were deleted (head is at {head_seq})",
                        expected_seq - 1
                    ),
                }));
            }
        }
        Ok(Ok(report))
    }
}
