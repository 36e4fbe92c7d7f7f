//! Durable jobs (directory imports, RP provisioning) and their per-user items.
//!
//! A job is owned by one runner at a time through a lease (`claimed_by`, `lease_until`): the
//! runner renews it while it works, and a runner that dies simply stops renewing, so another one —
//! or the same server after a restart — claims the job again and resumes its unfinished items. On
//! PostgreSQL the claim skips rows another replica is claiming (`FOR UPDATE SKIP LOCKED`); SQLite
//! has one writer at a time, so a plain `UPDATE … RETURNING` is already exclusive.
//!
//! The `done`/`failed` counters on the job row are kept in the same transaction as each item's
//! state change, so reading progress never scans the items.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Db, KeyTx, Store, StoreError, Tx, TxInner, UserRecord, from_json_text, now, on_pool, on_tx,
    to_json_text,
};

/// Job states as the API shows them.
pub mod job_state {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// Item states. `running` after a crash means "started, outcome unknown": the handler reconciles.
pub mod item_state {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const RETRYING: &str = "retrying";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub kind: String,
    pub state: String,
    pub params: Value,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub error: Option<String>,
    pub result: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobItemRecord {
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub seq: i32,
    pub state: String,
    pub error: Option<String>,
    pub request_id: Option<String>,
    pub attempts: i32,
    pub not_before: Option<DateTime<Utc>>,
    pub intent_credential_id: Option<Vec<u8>>,
    pub result: Option<Value>,
    pub updated_at: DateTime<Utc>,
}

impl JobItemRecord {
    /// The key of a manual-provisioning item's `result` object that holds its sealed Temporary
    /// Access Pass, base64 (written by the server's `provisioning::manual`, removed when revealed;
    /// found by `keyward vault rotate` under this name).
    pub const TAP_SEALED_FIELD: &'static str = "tap_sealed";

    /// The vault context of a manual-provisioning item's sealed Temporary Access Pass: bound to
    /// the organisation, the job and the user.
    pub fn tap_context(org_id: Uuid, job_id: Uuid, user_id: Uuid) -> String {
        format!("tap/{org_id}/{job_id}/{user_id}")
    }
}

/// How an item attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemFinish {
    Done {
        result: Option<Value>,
    },
    Failed {
        error: String,
        request_id: Option<String>,
    },
    /// Try again at `not_before` (throttled, or a transient failure).
    Retry {
        error: String,
        request_id: Option<String>,
        not_before: DateTime<Utc>,
    },
}

/// A credential registered at a relying party for a user, with the RP's own id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpRegistration {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub credential_id: Vec<u8>,
    /// `microsoft`.
    pub rp: String,
    pub directory_id: Option<Uuid>,
    /// The RP's id of the method (Entra's fido2 method id).
    pub external_id: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// What a provisioning item needs to know about its user before it calls the RP, read at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisioningSubject {
    pub user: UserRecord,
    /// The directory and the id it knows the user by, for a user imported from one.
    pub directory_user: Option<(Uuid, String)>,
    /// The user's key that is not revoked, with its status.
    pub key: Option<(Uuid, String)>,
    /// How many of the user's credentials are registered at the RP.
    pub registrations: i64,
    /// How many automated credentials on the user's key have no registration at any RP: leftovers
    /// of an attempt that never reached the RP.
    pub unregistered_automated: i64,
}

#[derive(sqlx::FromRow)]
struct SubjectRow {
    #[sqlx(flatten)]
    user: UserRecord,
    du_directory_id: Option<Uuid>,
    du_external_id: Option<String>,
    k_id: Option<Uuid>,
    k_status: Option<String>,
    registrations: i64,
    unregistered: i64,
}

/// A registration at an RP that finishes its job item `done`: written in one transaction with its
/// audit entry (`provisioning.registered`), the item's result and the job's counter, so neither
/// exists without the other, and the item's intent is dropped with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRegistration {
    pub registration: RpRegistration,
    pub job_id: Uuid,
    pub audit_detail: Value,
    pub result: Option<Value>,
}

const DONE_ITEM_SQL: &str = "UPDATE job_items SET state = 'done', error = NULL, request_id = NULL, not_before = NULL, \
     result = COALESCE($1, result), updated_at = $2, intent_credential_id = NULL \
     WHERE job_id = $3 AND user_id = $4 AND state = 'running'";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    org_id: Uuid,
    kind: String,
    state: String,
    params: String,
    total: i32,
    done: i32,
    failed: i32,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    error: Option<String>,
    result: Option<String>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(JobRecord {
            id: r.id,
            org_id: r.org_id,
            kind: r.kind,
            state: r.state,
            params: from_json_text(&r.params)?,
            total: r.total,
            done: r.done,
            failed: r.failed,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            error: r.error,
            result: r.result.as_deref().map(from_json_text).transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ItemRow {
    job_id: Uuid,
    user_id: Uuid,
    seq: i32,
    state: String,
    error: Option<String>,
    request_id: Option<String>,
    attempts: i32,
    not_before: Option<DateTime<Utc>>,
    intent_credential_id: Option<Vec<u8>>,
    result: Option<String>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ItemRow> for JobItemRecord {
    type Error = StoreError;
    fn try_from(r: ItemRow) -> Result<Self, StoreError> {
        Ok(JobItemRecord {
            job_id: r.job_id,
            user_id: r.user_id,
            seq: r.seq,
            state: r.state,
            error: r.error,
            request_id: r.request_id,
            attempts: r.attempts,
            not_before: r.not_before,
            intent_credential_id: r.intent_credential_id,
            result: r.result.as_deref().map(from_json_text).transpose()?,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RegRow {
    org_id: Uuid,
    user_id: Uuid,
    key_id: Uuid,
    credential_id: Vec<u8>,
    rp: String,
    directory_id: Option<Uuid>,
    external_id: String,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl From<RegRow> for RpRegistration {
    fn from(r: RegRow) -> Self {
        RpRegistration {
            org_id: r.org_id,
            user_id: r.user_id,
            key_id: r.key_id,
            credential_id: r.credential_id,
            rp: r.rp,
            directory_id: r.directory_id,
            external_id: r.external_id,
            created_by: r.created_by,
            created_at: r.created_at,
        }
    }
}

const JOB_COLUMNS: &str = "id, org_id, kind, state, params, total, done, failed, created_by, \
     created_at, updated_at, error, result";
const ITEM_COLUMNS: &str = "job_id, user_id, seq, state, error, request_id, attempts, not_before, \
     intent_credential_id, result, updated_at";
const REG_COLUMNS: &str = "org_id, user_id, key_id, credential_id, rp, directory_id, external_id, \
     created_by, created_at";

/// Items a runner may start: new, scheduled for retry, or started by a runner that died.
const RUNNABLE: &str = "state IN ('queued', 'retrying', 'running')";

impl Tx {
    /// Creates a queued job with one queued item per user (in the given order). Callers append the
    /// audit entry in the same transaction.
    pub async fn insert_job(
        &mut self,
        org_id: Uuid,
        kind: &str,
        params: &Value,
        created_by: &str,
        user_ids: &[Uuid],
    ) -> Result<JobRecord, StoreError> {
        let at = now();
        let total = i32::try_from(user_ids.len())
            .map_err(|_| StoreError::Invalid("too many items in one job".into()))?;
        let rec = JobRecord {
            id: Uuid::now_v7(),
            org_id,
            kind: kind.to_owned(),
            state: job_state::QUEUED.into(),
            params: params.clone(),
            total,
            done: 0,
            failed: 0,
            created_by: created_by.to_owned(),
            created_at: at,
            updated_at: at,
            error: None,
            result: None,
        };
        let params_text = to_json_text(params)?;
        on_tx!(&mut self.inner, c => {
            sqlx::query("INSERT INTO jobs (id, org_id, kind, state, params, total, done, failed, created_by, \
                         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7, $8, $8)")
                .bind(rec.id).bind(org_id).bind(kind).bind(&rec.state).bind(&params_text).bind(total)
                .bind(created_by).bind(at)
                .execute(&mut *c).await?;
            for (seq, user_id) in user_ids.iter().enumerate() {
                let seq = i32::try_from(seq).map_err(|_| StoreError::Invalid("too many items".into()))?;
                sqlx::query("INSERT INTO job_items (job_id, user_id, seq, state, attempts, updated_at) \
                             VALUES ($1, $2, $3, 'queued', 0, $4) ON CONFLICT DO NOTHING")
                    .bind(rec.id).bind(user_id).bind(seq).bind(at)
                    .execute(&mut *c).await?;
            }
        });
        Ok(rec)
    }

    /// Records that a credential was registered at an RP. Callers finish the item
    /// ([`Tx::finish_item`], which drops its intent) in the same transaction, so neither can
    /// exist without the other.
    pub async fn insert_rp_registration(&mut self, r: &RpRegistration) -> Result<(), StoreError> {
        insert_registration(&mut self.inner, r).await
    }

    /// Ends an item attempt in this transaction; see [`Store::finish_item`]. A `done` item's
    /// intent is cleared with it. Returns false (nothing changed) if the item was not running.
    pub async fn finish_item(
        &mut self,
        job_id: Uuid,
        user_id: Uuid,
        finish: &ItemFinish,
    ) -> Result<bool, StoreError> {
        let at = now();
        let (state, error, request_id, not_before, result) = match finish {
            ItemFinish::Done { result } => (
                item_state::DONE,
                None,
                None,
                None,
                result.as_ref().map(to_json_text).transpose()?,
            ),
            ItemFinish::Failed { error, request_id } => (
                item_state::FAILED,
                Some(error.as_str()),
                request_id.as_deref(),
                None,
                None,
            ),
            ItemFinish::Retry {
                error,
                request_id,
                not_before,
            } => (
                item_state::RETRYING,
                Some(error.as_str()),
                request_id.as_deref(),
                Some(*not_before),
                None,
            ),
        };
        let done_inc = i32::from(state == item_state::DONE);
        let failed_inc = i32::from(state == item_state::FAILED);
        let changed = on_tx!(&mut self.inner, c => {
            // A finished item has nothing left to reconcile: its intent (if any) is dropped with it.
            let n = sqlx::query("UPDATE job_items SET state = $1, error = $2, request_id = $3, not_before = $4, \
                                 result = COALESCE($5, result), updated_at = $6, \
                                 intent_credential_id = CASE WHEN $1 = 'done' THEN NULL ELSE intent_credential_id END \
                                 WHERE job_id = $7 AND user_id = $8 AND state = 'running'")
                .bind(state).bind(error).bind(request_id).bind(not_before).bind(&result).bind(at)
                .bind(job_id).bind(user_id)
                .execute(&mut *c).await?.rows_affected();
            if n == 1 && (done_inc + failed_inc) > 0 {
                sqlx::query("UPDATE jobs SET done = done + $1, failed = failed + $2, updated_at = $3 WHERE id = $4")
                    .bind(done_inc).bind(failed_inc).bind(at).bind(job_id)
                    .execute(&mut *c).await?;
            }
            n == 1
        });
        Ok(changed)
    }
}

impl Tx {
    /// Records a registration and finishes its item `done` ([`ItemRegistration`]). Returns
    /// whether the item was still running (it may have been cancelled meanwhile; the
    /// registration is recorded either way, since the RP has it).
    pub async fn record_registration(&mut self, r: &ItemRegistration) -> Result<bool, StoreError> {
        let reg = &r.registration;
        self.insert_rp_registration(reg).await?;
        self.append_audit(
            reg.org_id,
            &reg.created_by,
            "provisioning.registered",
            &format!("user:{}", reg.user_id),
            r.audit_detail.clone(),
        )
        .await?;
        self.finish_item(
            r.job_id,
            reg.user_id,
            &ItemFinish::Done {
                result: r.result.clone(),
            },
        )
        .await
    }
}

impl KeyTx {
    /// Records (or clears) a job item's intent in this key operation's transaction, so the
    /// credential and the intent that names it commit together.
    pub async fn set_item_intent(
        &mut self,
        job_id: Uuid,
        user_id: Uuid,
        credential_id: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        on_tx!(&mut self.inner, c => {
            sqlx::query("UPDATE job_items SET intent_credential_id = $1, updated_at = $2 WHERE job_id = $3 AND user_id = $4")
                .bind(credential_id).bind(now()).bind(job_id).bind(user_id).execute(&mut *c).await?;
        });
        Ok(())
    }

    /// [`Tx::record_registration`] as one operation of a batch (SQLite group commit): the audit
    /// head is cached, so the registration, its audit entry, the item and the job's counter are
    /// written by one multi-statement query. Outside a batch, statement by statement.
    pub async fn record_registration(&mut self, r: &ItemRegistration) -> Result<bool, StoreError> {
        let reg = &r.registration;
        self.org_id = reg.org_id;
        self.key_id = reg.key_id;
        let target = format!("user:{}", reg.user_id);
        let result = r.result.as_ref().map(to_json_text).transpose()?;
        let at = now();
        let batched_sqlite = self.batch.is_some() && matches!(self.inner, TxInner::Sqlite(_));
        if !batched_sqlite {
            insert_registration(&mut self.inner, reg).await?;
            self.append_audit(
                reg.org_id,
                &reg.created_by,
                "provisioning.registered",
                &target,
                r.audit_detail.clone(),
            )
            .await?;
            return finish_done(&mut self.inner, r.job_id, reg.user_id, result, at).await;
        }
        self.released = false;
        let entry = self
            .batched_entry(
                reg.org_id,
                &reg.created_by,
                "provisioning.registered",
                &target,
                &r.audit_detail,
            )
            .await?;
        // The batch's last operation also writes the audit heads back.
        let heads = self.take_heads_sql(22)?;
        // The job's counter moves only if the item did: `changes()` is the row count of the
        // statement before it. (Row counts of a multi-statement query cannot be told apart, so
        // the result is read from RETURNING.)
        let sql = format!(
            "{DONE_ITEM_SQL}; UPDATE jobs SET done = done + 1, updated_at = $2 WHERE id = $3 AND changes() = 1 \
             RETURNING id; \
             INSERT INTO rp_registrations ({REG_COLUMNS}) VALUES ($5, $4, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT DO NOTHING; {}; {}{}",
            crate::audit::PreparedEntry::sql(13),
            heads.as_ref().map_or("", |(sql, _)| sql.as_str()),
            crate::keys::KEEP_OP
        );
        let q = sqlx::query(&sql)
            .bind(&result)
            .bind(at)
            .bind(r.job_id)
            .bind(reg.user_id)
            .bind(reg.org_id)
            .bind(reg.key_id)
            .bind(&reg.credential_id)
            .bind(&reg.rp)
            .bind(reg.directory_id)
            .bind(&reg.external_id)
            .bind(&reg.created_by)
            .bind(reg.created_at);
        let mut q = entry.bind_sqlite(q);
        if let Some((_, values)) = &heads {
            q = crate::audit::bind_heads(q, values);
        }
        // Only the job's counter returns a row: when the item was still running.
        let rows = q.fetch_all(&mut *self.batch_connection()?).await?;
        if heads.is_some() {
            self.heads_written();
        }
        // The operation's savepoint is released with it (see `KeyTx::end_op`).
        self.released = true;
        Ok(!rows.is_empty())
    }
}

/// Inserts a registration (nothing if it exists).
async fn insert_registration(inner: &mut TxInner, r: &RpRegistration) -> Result<(), StoreError> {
    on_tx!(inner, c => {
        sqlx::query(&format!("INSERT INTO rp_registrations ({REG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                              ON CONFLICT DO NOTHING"))
            .bind(r.org_id).bind(r.user_id).bind(r.key_id).bind(&r.credential_id).bind(&r.rp)
            .bind(r.directory_id).bind(&r.external_id).bind(&r.created_by).bind(r.created_at)
            .execute(&mut *c).await?;
    });
    Ok(())
}

/// Finishes an item `done` and counts it on its job; false if it was not running.
async fn finish_done(
    inner: &mut TxInner,
    job_id: Uuid,
    user_id: Uuid,
    result: Option<String>,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(on_tx!(inner, c => {
        let n = sqlx::query(DONE_ITEM_SQL)
            .bind(&result).bind(at).bind(job_id).bind(user_id)
            .execute(&mut *c).await?.rows_affected();
        if n == 1 {
            sqlx::query("UPDATE jobs SET done = done + 1, updated_at = $1 WHERE id = $2")
                .bind(at).bind(job_id).execute(&mut *c).await?;
        }
        n == 1
    }))
}

impl Store {
    /// The user, their directory id, key, and registration counts for a provisioning item, in
    /// one query. `None` if the organisation has no such user.
    pub async fn provisioning_subject(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        rp: &str,
    ) -> Result<Option<ProvisioningSubject>, StoreError> {
        let sql = "SELECT u.id, u.org_id, u.upn, u.email, u.display_name, u.status, u.source, u.external_id, \
                   u.key_id, u.created_at, du.directory_id AS du_directory_id, du.external_id AS du_external_id, \
                   k.id AS k_id, k.status AS k_status, \
                   (SELECT COUNT(*) FROM rp_registrations r WHERE r.org_id = u.org_id AND r.user_id = u.id \
                    AND r.rp = $3) AS registrations, \
                   (SELECT COUNT(*) FROM credentials c WHERE c.org_id = u.org_id AND c.key_id = k.id \
                    AND c.via = 'automated' AND NOT EXISTS (SELECT 1 FROM rp_registrations r \
                    WHERE r.key_id = c.key_id AND r.credential_id = c.credential_id)) AS unregistered \
                   FROM users u LEFT JOIN directory_users du ON du.user_id = u.id \
                   LEFT JOIN security_keys k ON k.org_id = u.org_id AND k.user_id = u.id AND k.status <> 'revoked' \
                   WHERE u.org_id = $1 AND u.id = $2 LIMIT 1";
        let row: Option<SubjectRow> = on_pool!(&self.db, p => {
            sqlx::query_as(sql).bind(org_id).bind(user_id).bind(rp).fetch_optional(p).await?
        });
        Ok(row.map(|r| ProvisioningSubject {
            user: r.user,
            directory_user: r.du_directory_id.zip(r.du_external_id),
            key: r.k_id.zip(r.k_status),
            registrations: r.registrations,
            unregistered_automated: r.unregistered,
        }))
    }

    /// The job `id` of organisation `org_id`.
    pub async fn job(&self, org_id: Uuid, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE org_id = $1 AND id = $2");
        let row: Option<JobRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(org_id).bind(id).fetch_optional(p).await?
        });
        row.map(JobRecord::try_from).transpose()
    }

    /// A job by id alone, for the runner (which works across organisations).
    pub async fn job_by_id(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row: Option<JobRow> =
            on_pool!(&self.db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await?);
        row.map(JobRecord::try_from).transpose()
    }

    /// The items of a job in order, `limit` of them after position `after_seq`.
    pub async fn job_items(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        after_seq: Option<i32>,
        limit: i64,
    ) -> Result<Vec<JobItemRecord>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM job_items i WHERE job_id = $1 AND ($2 IS NULL OR seq > $2) \
             AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.job_id AND j.org_id = $3) ORDER BY seq LIMIT $4"
        );
        let rows: Vec<ItemRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(job_id).bind(after_seq).bind(org_id).bind(limit).fetch_all(p).await?
        });
        rows.into_iter().map(JobItemRecord::try_from).collect()
    }

    /// One item of a job.
    pub async fn job_item(
        &self,
        job_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<JobItemRecord>, StoreError> {
        let sql =
            format!("SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND user_id = $2");
        let row: Option<ItemRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(job_id).bind(user_id).fetch_optional(p).await?
        });
        row.map(JobItemRecord::try_from).transpose()
    }

    /// Claims the oldest job that is queued, or running under an expired lease, for `worker` until
    /// `lease_until`.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let at = now();
        // PostgreSQL: replicas claim concurrently, so skip rows another one has locked.
        let lock = match self.db {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', claimed_by = $1, lease_until = $2, updated_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE state IN ('queued', 'running') \
                         AND (lease_until IS NULL OR lease_until < $3) ORDER BY created_at, id LIMIT 1 {lock}) \
             RETURNING {JOB_COLUMNS}"
        );
        let row: Option<JobRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(worker).bind(lease_until).bind(at).fetch_optional(p).await?
        });
        row.map(JobRecord::try_from).transpose()
    }

    /// Extends `worker`'s lease on a job; false when the job was taken over or is no longer
    /// running (cancelled), in which case the worker must stop.
    pub async fn renew_job_lease(
        &self,
        job_id: Uuid,
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(&self.db, p => {
            sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND claimed_by = $3 AND state = 'running'")
                .bind(lease_until).bind(job_id).bind(worker).execute(p).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Drops every lease. Only for a single-process deployment (SQLite) at start-up: no other
    /// runner can exist, so leases left by a crashed process are stale and need not be waited out.
    pub async fn release_job_leases(&self) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.db, p => {
            sqlx::query("UPDATE jobs SET lease_until = NULL, claimed_by = NULL WHERE state = 'running'")
                .execute(p).await?.rows_affected()
        }))
    }

    /// Up to `limit` items of a job that may start now, in order.
    pub async fn runnable_items(
        &self,
        job_id: Uuid,
        limit: i64,
    ) -> Result<Vec<JobItemRecord>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND {RUNNABLE} \
             AND (not_before IS NULL OR not_before <= $2) ORDER BY seq LIMIT $3"
        );
        let rows: Vec<ItemRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(job_id).bind(now()).bind(limit).fetch_all(p).await?
        });
        rows.into_iter().map(JobItemRecord::try_from).collect()
    }

    /// When the next item scheduled for later becomes runnable, if any item is still unfinished.
    /// `Some(None)` means an unfinished item is runnable now.
    pub async fn next_item_due(
        &self,
        job_id: Uuid,
    ) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let sql = format!(
            "SELECT not_before FROM job_items WHERE job_id = $1 AND {RUNNABLE} \
             ORDER BY CASE WHEN not_before IS NULL THEN 0 ELSE 1 END, not_before LIMIT 1"
        );
        let row: Option<(Option<DateTime<Utc>>,)> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(job_id).fetch_optional(p).await?
        });
        Ok(row.map(|(t,)| t))
    }

    /// Marks an item started (one more attempt) and returns it; `None` if it is no longer runnable
    /// (cancelled meanwhile).
    pub async fn start_item(
        &self,
        job_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<JobItemRecord>, StoreError> {
        let sql = format!(
            "UPDATE job_items SET state = 'running', attempts = attempts + 1, updated_at = $1 \
             WHERE job_id = $2 AND user_id = $3 AND {RUNNABLE} RETURNING {ITEM_COLUMNS}"
        );
        let row: Option<ItemRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(now()).bind(job_id).bind(user_id).fetch_optional(p).await?
        });
        row.map(JobItemRecord::try_from).transpose()
    }

    /// Records (or clears) the local credential an item is about to register, committed before
    /// the RP is called.
    pub async fn set_item_intent(
        &self,
        job_id: Uuid,
        user_id: Uuid,
        credential_id: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        on_pool!(&self.db, p => {
            sqlx::query("UPDATE job_items SET intent_credential_id = $1, updated_at = $2 WHERE job_id = $3 AND user_id = $4")
                .bind(credential_id).bind(now()).bind(job_id).bind(user_id).execute(p).await?;
        });
        Ok(())
    }

    /// Replaces an item's result (e.g. to drop a sealed one-time secret once it was shown).
    pub async fn set_item_result(
        &self,
        job_id: Uuid,
        user_id: Uuid,
        result: Option<&Value>,
    ) -> Result<(), StoreError> {
        let result = result.map(to_json_text).transpose()?;
        on_pool!(&self.db, p => {
            sqlx::query("UPDATE job_items SET result = $1, updated_at = $2 WHERE job_id = $3 AND user_id = $4")
                .bind(&result).bind(now()).bind(job_id).bind(user_id).execute(p).await?;
        });
        Ok(())
    }

    /// Ends a running item and adjusts the job's counters in one transaction. Returns false if the
    /// item was not running (cancelled meanwhile), in which case nothing changed.
    pub async fn finish_item(
        &self,
        job_id: Uuid,
        user_id: Uuid,
        finish: &ItemFinish,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed = tx.finish_item(job_id, user_id, finish).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Ends a job held by `worker` once no item is left to run: `failed` if any item failed,
    /// `done` otherwise. Returns the final state, or `None` when items are still pending (a retry
    /// arrived meanwhile) or the job is no longer this worker's.
    pub async fn finish_job(
        &self,
        job_id: Uuid,
        worker: &str,
        result: Option<&Value>,
    ) -> Result<Option<String>, StoreError> {
        let result = result.map(to_json_text).transpose()?;
        let sql = format!(
            "UPDATE jobs SET state = CASE WHEN failed > 0 THEN 'failed' ELSE 'done' END, \
             result = COALESCE($1, result), claimed_by = NULL, lease_until = NULL, updated_at = $2 \
             WHERE id = $3 AND claimed_by = $4 AND state = 'running' \
             AND NOT EXISTS (SELECT 1 FROM job_items WHERE job_id = $3 AND {RUNNABLE}) RETURNING state"
        );
        let row: Option<(String,)> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(&result).bind(now()).bind(job_id).bind(worker).fetch_optional(p).await?
        });
        Ok(row.map(|(s,)| s))
    }

    /// Fails a whole job held by `worker` (e.g. the directory refused Keyward's credentials).
    pub async fn fail_job(
        &self,
        job_id: Uuid,
        worker: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(&self.db, p => {
            sqlx::query("UPDATE jobs SET state = 'failed', error = $1, claimed_by = NULL, lease_until = NULL, updated_at = $2 \
                         WHERE id = $3 AND claimed_by = $4 AND state = 'running'")
                .bind(error).bind(now()).bind(job_id).bind(worker).execute(p).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Updates an item-less job's progress (an import counts users as it pages).
    pub async fn set_job_progress(
        &self,
        job_id: Uuid,
        total: i32,
        done: i32,
        failed: i32,
    ) -> Result<(), StoreError> {
        on_pool!(&self.db, p => {
            sqlx::query("UPDATE jobs SET total = $1, done = $2, failed = $3, updated_at = $4 WHERE id = $5")
                .bind(total).bind(done).bind(failed).bind(now()).bind(job_id).execute(p).await?;
        });
        Ok(())
    }

    /// Cancels a queued or running job: its unstarted items are cancelled; items already running
    /// finish their attempt. Returns the job afterwards, or `None` if it does not exist.
    pub async fn cancel_job(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tx = self.begin().await?;
        tx.cancel_job(org_id, id).await?;
        tx.commit().await?;
        self.job(org_id, id).await
    }

    /// Puts a job's failed items back in the queue (and a finished job back to `queued`). Returns
    /// how many items will be retried, or `None` if the job does not exist.
    pub async fn retry_job(&self, org_id: Uuid, id: Uuid) -> Result<Option<u64>, StoreError> {
        let mut tx = self.begin().await?;
        let n = tx.retry_job(org_id, id).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// The state of a job, for a runner checking for cancellation between items.
    pub async fn job_state(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_pool!(&self.db, p => {
            sqlx::query_as("SELECT state FROM jobs WHERE id = $1").bind(id).fetch_optional(p).await?
        });
        Ok(row.map(|(s,)| s))
    }

    /// The registrations of a user's credentials at `rp`.
    pub async fn rp_registrations(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        rp: &str,
    ) -> Result<Vec<RpRegistration>, StoreError> {
        let sql = format!(
            "SELECT {REG_COLUMNS} FROM rp_registrations WHERE org_id = $1 AND user_id = $2 AND rp = $3 ORDER BY created_at"
        );
        let rows: Vec<RegRow> = on_pool!(&self.db, p => {
            sqlx::query_as(&sql).bind(org_id).bind(user_id).bind(rp).fetch_all(p).await?
        });
        Ok(rows.into_iter().map(RpRegistration::from).collect())
    }

    /// Removes a registration whose method no longer exists at the RP.
    pub async fn delete_rp_registration(
        &self,
        key_id: Uuid,
        credential_id: &[u8],
    ) -> Result<bool, StoreError> {
        let n = on_pool!(&self.db, p => {
            sqlx::query("DELETE FROM rp_registrations WHERE key_id = $1 AND credential_id = $2")
                .bind(key_id).bind(credential_id).execute(p).await?.rows_affected()
        });
        Ok(n > 0)
    }
}

impl Tx {
    /// [`Store::cancel_job`] inside a transaction, so the caller's audit entry commits with it.
    /// Returns whether the job changed state.
    pub async fn cancel_job(&mut self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let at = now();
        let n = on_tx!(&mut self.inner, c => {
            let n = sqlx::query("UPDATE jobs SET state = 'cancelled', claimed_by = NULL, lease_until = NULL, updated_at = $1 \
                                 WHERE org_id = $2 AND id = $3 AND state IN ('queued', 'running')")
                .bind(at).bind(org_id).bind(id).execute(&mut *c).await?.rows_affected();
            if n == 1 {
                sqlx::query("UPDATE job_items SET state = 'cancelled', updated_at = $1 \
                             WHERE job_id = $2 AND state IN ('queued', 'retrying')")
                    .bind(at).bind(id).execute(&mut *c).await?;
            }
            n
        });
        Ok(n == 1)
    }

    /// [`Store::retry_job`] inside a transaction, so the caller's audit entry commits with it.
    pub async fn retry_job(&mut self, org_id: Uuid, id: Uuid) -> Result<Option<u64>, StoreError> {
        let at = now();
        let n = on_tx!(&mut self.inner, c => {
            let exists: Option<(String,)> = sqlx::query_as("SELECT state FROM jobs WHERE org_id = $1 AND id = $2")
                .bind(org_id).bind(id).fetch_optional(&mut *c).await?;
            let Some((state,)) = exists else {
                return Ok(None);
            };
            let n = sqlx::query("UPDATE job_items SET state = 'retrying', error = NULL, request_id = NULL, \
                                 not_before = NULL, updated_at = $1 WHERE job_id = $2 AND state IN ('failed', 'cancelled')")
                .bind(at).bind(id).execute(&mut *c).await?.rows_affected();
            if n > 0 || state == job_state::FAILED {
                // The job's own failure (import) is retried as a whole: back to queued.
                sqlx::query("UPDATE jobs SET failed = 0, error = NULL, updated_at = $1, \
                             state = CASE WHEN state = 'running' THEN 'running' ELSE 'queued' END, \
                             claimed_by = CASE WHEN state = 'running' THEN claimed_by ELSE NULL END, \
                             lease_until = CASE WHEN state = 'running' THEN lease_until ELSE NULL END \
                             WHERE id = $2")
                    .bind(at).bind(id).execute(&mut *c).await?;
            }
            n
        });
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::{ExternalUser, NewDirectory, NewUser, testing};

    /// A job over `users`, committed.
    async fn new_job(
        store: &Store,
        org: Uuid,
        kind: &str,
        params: &serde_json::Value,
        created_by: &str,
        users: &[Uuid],
    ) -> JobRecord {
        let mut tx = store.begin().await.expect("begin");
        let job = tx
            .insert_job(org, kind, params, created_by, users)
            .await
            .expect("job");
        tx.commit().await.expect("commit");
        job
    }

    async fn org_with_users(store: &Store, n: usize) -> (Uuid, Vec<Uuid>) {
        let mut tx = store.begin().await.expect("begin");
        let org = tx
            .insert_organisation(&format!("org-{}", Uuid::new_v4()))
            .await
            .expect("org");
        let mut ids = Vec::new();
        for i in 0..n {
            let u = NewUser {
                upn: format!("u{i}@example.com"),
                source: "api".into(),
                ..Default::default()
            };
            ids.push(tx.insert_user(org.id, &u).await.expect("user").id);
        }
        tx.commit().await.expect("commit");
        (org.id, ids)
    }

    #[tokio::test]
    async fn a_job_runs_its_items_to_a_final_state_with_counters() {
        for db in testing::all().await {
            let s = &db.store;
            let (org, users) = org_with_users(s, 3).await;
            let job = new_job(s, org, "test", &json!({"x": 1}), "admin:a", &users).await;
            assert_eq!(job.total, 3);

            let lease = now() + Duration::seconds(30);
            let claimed = s
                .claim_job("w1", lease)
                .await
                .expect("claim")
                .expect("a job");
            assert_eq!(claimed.id, job.id);
            assert_eq!(claimed.state, job_state::RUNNING);
            // Held under a live lease: nobody else gets it.
            assert!(s.claim_job("w2", lease).await.expect("claim").is_none());

            let items = s.runnable_items(job.id, 10).await.expect("items");
            assert_eq!(items.iter().map(|i| i.user_id).collect::<Vec<_>>(), users);
            for (n, it) in items.iter().enumerate() {
                let started = s
                    .start_item(job.id, it.user_id)
                    .await
                    .expect("start")
                    .expect("runnable");
                assert_eq!(started.attempts, 1);
                let finish = match n {
                    0 => ItemFinish::Done {
                        result: Some(json!({"method": "m"})),
                    },
                    1 => ItemFinish::Failed {
                        error: "nope".into(),
                        request_id: Some("rid".into()),
                    },
                    _ => ItemFinish::Retry {
                        error: "throttled".into(),
                        request_id: None,
                        not_before: now() + Duration::seconds(60),
                    },
                };
                assert!(
                    s.finish_item(job.id, it.user_id, &finish)
                        .await
                        .expect("finish")
                );
                // A second finish of the same attempt changes nothing (not running any more).
                assert!(
                    !s.finish_item(job.id, it.user_id, &finish)
                        .await
                        .expect("finish")
                );
            }
            let j = s.job(org, job.id).await.expect("job").expect("exists");
            assert_eq!((j.done, j.failed), (1, 1));
            // The throttled item is not runnable yet, but keeps the job open.
            assert!(
                s.runnable_items(job.id, 10)
                    .await
                    .expect("items")
                    .is_empty()
            );
            assert!(matches!(
                s.next_item_due(job.id).await.expect("due"),
                Some(Some(_))
            ));
            assert_eq!(
                s.finish_job(job.id, "w1", None).await.expect("finish"),
                None
            );

            let it = s
                .job_item(job.id, users[1])
                .await
                .expect("item")
                .expect("exists");
            assert_eq!(it.error.as_deref(), Some("nope"));
            assert_eq!(it.request_id.as_deref(), Some("rid"));

            // Another organisation cannot see the job.
            let (other, _) = org_with_users(s, 0).await;
            assert!(s.job(other, job.id).await.expect("job").is_none());
            assert!(
                s.job_items(other, job.id, None, 10)
                    .await
                    .expect("items")
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn finished_failed_jobs_retry_and_cancel_stops_unstarted_items() {
        for db in testing::all().await {
            let s = &db.store;
            let (org, users) = org_with_users(s, 2).await;
            let job = new_job(s, org, "test", &json!({}), "a", &users).await;
            s.claim_job("w", now() + Duration::seconds(30))
                .await
                .expect("claim");
            for u in &users {
                s.start_item(job.id, *u).await.expect("start");
                let f = ItemFinish::Failed {
                    error: "e".into(),
                    request_id: None,
                };
                s.finish_item(job.id, *u, &f).await.expect("finish");
            }
            assert_eq!(
                s.finish_job(job.id, "w", None)
                    .await
                    .expect("finish")
                    .as_deref(),
                Some("failed")
            );
            assert_eq!(s.retry_job(org, job.id).await.expect("retry"), Some(2));
            let j = s.job(org, job.id).await.expect("job").expect("exists");
            assert_eq!((j.state.as_str(), j.failed), ("queued", 0));
            assert_eq!(s.runnable_items(job.id, 10).await.expect("items").len(), 2);

            let j = s
                .cancel_job(org, job.id)
                .await
                .expect("cancel")
                .expect("exists");
            assert_eq!(j.state, job_state::CANCELLED);
            assert!(
                s.runnable_items(job.id, 10)
                    .await
                    .expect("items")
                    .is_empty()
            );
            assert!(
                s.claim_job("w", now() + Duration::seconds(30))
                    .await
                    .expect("claim")
                    .is_none()
            );
            assert_eq!(s.retry_job(org, Uuid::now_v7()).await.expect("retry"), None);
        }
    }

    #[tokio::test]
    async fn an_expired_lease_is_claimed_again_and_startup_release_frees_it() {
        for db in testing::all().await {
            let s = &db.store;
            let (org, users) = org_with_users(s, 1).await;
            let job = new_job(s, org, "test", &json!({}), "a", &users).await;
            s.claim_job("dead", now() - Duration::seconds(1))
                .await
                .expect("claim");
            let again = s
                .claim_job("live", now() + Duration::seconds(30))
                .await
                .expect("claim");
            assert_eq!(again.map(|j| j.id), Some(job.id));
            assert!(
                !s.renew_job_lease(job.id, "dead", now())
                    .await
                    .expect("renew")
            );
            assert!(
                s.renew_job_lease(job.id, "live", now() + Duration::seconds(30))
                    .await
                    .expect("renew")
            );
            assert_eq!(s.release_job_leases().await.expect("release"), 1);
            assert!(
                s.claim_job("next", now() + Duration::seconds(30))
                    .await
                    .expect("claim")
                    .is_some()
            );
        }
    }

    fn new_credential(id: &[u8]) -> crate::CredentialRecord {
        crate::CredentialRecord {
            credential_id: id.to_vec(),
            rp_id: "login.microsoft.com".into(),
            rp_id_hash: vec![3; 32],
            rp_name: None,
            user_handle: vec![9; 8],
            user_name: Some("u0@example.com".into()),
            user_display_name: None,
            alg: -7,
            public_key_cose: vec![0xa5],
            sealed_private_key: vec![0xee; 40],
            sealed_cred_random: None,
            discoverable: true,
            cred_protect: 1,
            cred_blob: None,
            sign_count: 0,
            backup_eligible: false,
            backup_state: false,
            created_at: now(),
            created_by: Some("admin:a".into()),
            via: "automated".into(),
        }
    }

    fn new_key() -> crate::NewSecurityKey {
        crate::NewSecurityKey {
            id: Uuid::now_v7(),
            aaguid: vec![7; 16],
            wrapped_dek: vec![1; 60],
            kek_version: 1,
            min_pin_length: 6,
            force_pin_change: false,
        }
    }

    /// A provisioning item's writes: the key and credential with the item's intent in one key
    /// operation, then the registration that finishes the item. Batched (SQLite group commit,
    /// multi-statement writes) and plain (every backend) must leave the same rows: the key as
    /// `create_key` returned it, the item `done` without intent, the job counted, the audit
    /// chain whole.
    #[tokio::test]
    async fn a_provisioning_item_writes_the_same_rows_batched_or_not() {
        for batched in [true, false] {
            let dbs = if batched {
                vec![testing::sqlite().await]
            } else {
                testing::all().await
            };
            for db in dbs {
                let s = &db.store;
                let (org, users) = org_with_users(s, 2).await;
                let job = new_job(s, org, "provision", &json!({}), "admin:a", &users).await;
                s.claim_job("w", now() + Duration::seconds(30))
                    .await
                    .expect("claim");
                s.start_item(job.id, users[0]).await.expect("start");
                let subject = s
                    .provisioning_subject(org, users[0], "microsoft")
                    .await
                    .expect("subject")
                    .expect("user");
                assert_eq!(subject.user.id, users[0]);
                assert_eq!((subject.key.clone(), subject.registrations), (None, 0));

                let new = new_key();
                let cred = new_credential(b"cred-1");
                let detail = json!({"user_id": users[0]});
                let mut kt = if batched {
                    s.begin_key_batch().await.expect("batch")
                } else {
                    s.begin_key_create(org).await.expect("begin")
                };
                // An operation for a user that does not exist changes nothing.
                if batched {
                    let mark = kt.mark();
                    let missing = kt
                        .create_key(org, Uuid::now_v7(), &new_key(), "admin:a", json!({}))
                        .await;
                    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
                    kt.end_op(false, mark).await.expect("roll back");
                }
                let mark = kt.mark();
                let rec = kt
                    .create_key(org, users[0], &new, "admin:a", detail)
                    .await
                    .expect("create");
                kt.finish_op(
                    org,
                    crate::OpEnd {
                        credentials: std::slice::from_ref(&cred),
                        audit: Some(("admin:a", "key.ctap.make_credential", "key:x", json!({}))),
                        intent: Some((job.id, users[0], b"cred-1")),
                    },
                )
                .await
                .expect("finish");
                if batched {
                    kt.end_op(true, mark).await.expect("keep");
                }
                let registration = ItemRegistration {
                    registration: RpRegistration {
                        org_id: org,
                        user_id: users[0],
                        key_id: new.id,
                        credential_id: b"cred-1".to_vec(),
                        rp: "microsoft".into(),
                        directory_id: None,
                        external_id: "method-1".into(),
                        created_by: "admin:a".into(),
                        created_at: now(),
                    },
                    job_id: job.id,
                    audit_detail: json!({"method_id": "method-1"}),
                    result: Some(json!({"method_id": "method-1"})),
                };
                // Before the registration, the intent names the credential.
                if batched {
                    let mark = kt.mark();
                    assert!(kt.record_registration(&registration).await.expect("record"));
                    kt.end_op(true, mark).await.expect("keep");
                    // A released operation cannot be rolled back on its own any more. As the
                    // batch's last, it writes the audit heads back itself.
                    kt.write_heads_with_next_op();
                    let mark = kt.mark();
                    assert!(!kt.record_registration(&registration).await.expect("again"));
                    assert!(kt.end_op(false, mark).await.is_err());
                    kt.commit().await.expect("commit");
                } else {
                    kt.commit().await.expect("commit");
                    let item = s
                        .job_item(job.id, users[0])
                        .await
                        .expect("item")
                        .expect("item");
                    assert_eq!(item.intent_credential_id.as_deref(), Some(&b"cred-1"[..]));
                    let mut tx = s.begin().await.expect("begin");
                    assert!(tx.record_registration(&registration).await.expect("record"));
                    tx.commit().await.expect("commit");
                }

                let row = s.key_by_id(org, new.id).await.expect("key").expect("row");
                assert_eq!(row, rec, "create_key returns the row as written");
                let user = s.user(org, users[0]).await.expect("user").expect("user");
                assert_eq!(
                    (user.status.as_str(), user.key_id),
                    ("assigned", Some(new.id))
                );
                let creds = s.credentials_of_user(org, users[0]).await.expect("creds");
                assert_eq!(creds.len(), 1);
                assert_eq!(creds[0].credential_id, b"cred-1");
                let item = s
                    .job_item(job.id, users[0])
                    .await
                    .expect("item")
                    .expect("item");
                assert_eq!(item.state, item_state::DONE);
                assert_eq!(item.intent_credential_id, None);
                assert_eq!(item.result, Some(json!({"method_id": "method-1"})));
                let j = s.job(org, job.id).await.expect("job").expect("job");
                assert_eq!((j.done, j.failed), (1, 0));
                let regs = s
                    .rp_registrations(org, users[0], "microsoft")
                    .await
                    .expect("regs");
                assert_eq!(regs.len(), 1);
                let subject = s
                    .provisioning_subject(org, users[0], "microsoft")
                    .await
                    .expect("subject")
                    .expect("user");
                assert_eq!(subject.key, Some((new.id, "active".to_owned())));
                assert_eq!(
                    (subject.registrations, subject.unregistered_automated),
                    (1, 0)
                );
                let report = s
                    .verify_audit()
                    .await
                    .expect("audit")
                    .expect("chain verifies");
                assert!(report.entries >= 3, "{report:?}");
                let actions: Vec<String> = s
                    .list_audit(
                        org,
                        &crate::AuditFilter {
                            limit: 10,
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("audit")
                    .into_iter()
                    .map(|e| e.action)
                    .collect();
                let expected = if batched {
                    vec![
                        "provisioning.registered",
                        "provisioning.registered",
                        "key.ctap.make_credential",
                        "key.create",
                    ]
                } else {
                    vec![
                        "provisioning.registered",
                        "key.ctap.make_credential",
                        "key.create",
                    ]
                };
                assert_eq!(actions, expected);
            }
        }
    }

    #[tokio::test]
    async fn imports_upsert_by_object_id_and_disable_missing_users() {
        for db in testing::all().await {
            let s = &db.store;
            let (org, _) = org_with_users(s, 1).await; // u0@example.com exists from the API
            let dir = Uuid::now_v7();
            let mut tx = s.begin().await.expect("begin");
            tx.insert_directory(
                org,
                &NewDirectory {
                    id: dir,
                    name: "Contoso".into(),
                    tenant_id: "t".into(),
                    client_id: "c".into(),
                    sealed_client_secret: vec![1, 2, 3],
                    authority_url: "http://127.0.0.1:1".into(),
                    graph_url: "http://127.0.0.1:1".into(),
                    group_id: None,
                    consenting_upn: None,
                },
            )
            .await
            .expect("dir");
            let ext = |id: &str, upn: &str, enabled: bool| ExternalUser {
                external_id: id.into(),
                upn: upn.into(),
                email: Some(upn.into()),
                display_name: Some(format!("User {id}")),
                enabled,
            };
            let first = Uuid::now_v7();
            let c = tx
                .import_users(
                    org,
                    dir,
                    first,
                    &[
                        ext("a", "u0@example.com", true),
                        ext("b", "b@x", true),
                        ext("c", "c@x", false),
                    ],
                )
                .await
                .expect("import");
            assert_eq!(
                (c.created, c.updated),
                (2, 1),
                "u0 is adopted, b and c created"
            );
            tx.commit().await.expect("commit");
            let u0 = s
                .user_by_upn(org, "u0@example.com")
                .await
                .expect("u")
                .expect("exists");
            assert_eq!(
                (u0.source.as_str(), u0.external_id.as_deref()),
                ("entra", Some("a"))
            );
            let c_user = s.user_by_upn(org, "c@x").await.expect("u").expect("exists");
            assert_eq!(c_user.status, "disabled");

            // Second full import: b renamed, a gone, c re-enabled.
            let second = Uuid::now_v7();
            let mut tx = s.begin().await.expect("begin");
            let c = tx
                .import_users(
                    org,
                    dir,
                    second,
                    &[ext("b", "b2@x", true), ext("c", "c@x", true)],
                )
                .await
                .expect("import");
            assert_eq!(c.updated, 2);
            assert_eq!(
                tx.disable_unseen_directory_users(dir, second)
                    .await
                    .expect("missing"),
                1
            );
            tx.commit().await.expect("commit");
            assert!(s.user_by_upn(org, "b@x").await.expect("u").is_none());
            let b = s
                .user_by_upn(org, "b2@x")
                .await
                .expect("u")
                .expect("renamed");
            assert_eq!(b.external_id.as_deref(), Some("b"));
            assert_eq!(
                s.user_by_upn(org, "c@x")
                    .await
                    .expect("u")
                    .expect("c")
                    .status,
                "new"
            );
            assert_eq!(
                s.user(org, u0.id).await.expect("u").expect("a").status,
                "disabled"
            );
            assert_eq!(
                s.directory_user(b.id).await.expect("du"),
                Some((dir, "b".to_owned()))
            );
            let d = s.directory(org, dir).await.expect("dir").expect("exists");
            assert!(d.delta_link.is_none());
            let dbg = format!("{d:?}");
            assert!(
                !dbg.contains("sealed"),
                "the sealed secret stays out of Debug output"
            );
        }
    }
}
