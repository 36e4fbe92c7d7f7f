//! The durable job runner: directory imports and RP provisioning run here, one item per user.
//!
//! Jobs and items live in the database (`keyward_store::jobs`), so the runner holds nothing that a
//! crash could lose. A runner claims a job under a lease and renews it while it works; if the
//! process dies, the lease runs out and the job is claimed again — at once on SQLite, where only
//! one process can exist and leases are dropped at start-up — and its unfinished items resume.
//! Items left `running` by a crash are handed to the job kind again, which must reconcile (the
//! provisioning kind asks Graph what was already registered) rather than repeat blindly.
//!
//! Concurrency is bounded per *bucket* (an Entra tenant): all jobs against one tenant share a
//! [`TenantGate`], and a throttled call (HTTP 429 with `Retry-After`) pauses the whole bucket for
//! that long, because Graph counts throttled calls against the same budget.

pub mod api;

use crate::api::AppState;
use crate::directories::{DirectoryDeps, ImportKind};
use crate::keyops::KeyOps;
use crate::provisioning::{ProvisionDeps, ProvisionKind};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_store::{ItemFinish, JobItemRecord, JobRecord, Store, StoreError, job_state};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A boxed future, so job kinds can be stored as trait objects.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How one attempt at an item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Finished; the value is shown on the item (never a secret in the clear).
    Done(Option<Value>),
    /// Finished, and already recorded as `done` by the job kind in the transaction that wrote its
    /// effect ([`keyward_store::Tx::finish_item`]): the runner has nothing left to write.
    Recorded,
    /// Will not succeed by retrying: the reason is shown to the admin.
    Failed {
        reason: String,
        request_id: Option<String>,
    },
    /// The service asked us to slow down: the bucket pauses for `after`, the item is retried.
    Throttled {
        after: Duration,
        reason: String,
        request_id: Option<String>,
    },
    /// A failure that may pass (5xx, network): retried with exponential back-off.
    Transient {
        reason: String,
        request_id: Option<String>,
    },
}

/// A kind of job (`import`, `provision`): turns a claimed job into a [`JobRun`].
pub trait JobKind: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Prepares a claimed job (opens the directory connection, checks the policy). Job-level
    /// work without items — an import — is done here too. An error fails the whole job with
    /// that reason, which the admin reads on the job.
    fn start<'a>(&'a self, job: &'a JobRecord) -> BoxFut<'a, Result<Arc<dyn JobRun>, String>>;
}

/// One job being worked on.
pub trait JobRun: Send + Sync {
    /// The concurrency bucket (an Entra tenant id); jobs sharing it share one [`TenantGate`].
    fn bucket(&self) -> String;

    /// One attempt at one item. `item.attempts` counts this attempt; an item whose earlier
    /// attempt was cut short by a crash arrives with its recorded intent.
    fn run_item<'a>(&'a self, item: &'a JobItemRecord) -> BoxFut<'a, ItemOutcome>;

    /// A job-level summary stored on the job when it ends.
    fn summary(&self) -> Option<Value> {
        None
    }
}

/// Tunables of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Names this runner in job leases (host + process id + random by default).
    pub worker_id: String,
    pub lease: Duration,
    /// How often to look for new jobs, and for cancellation of running ones.
    pub poll: Duration,
    /// Jobs worked on at once by this runner.
    pub max_jobs: usize,
    /// Items in flight at once per bucket (tenant).
    pub per_bucket: usize,
    /// Attempts before a transiently failing item is marked failed.
    pub max_attempts: i32,
    /// Attempts before an item that keeps being throttled is marked failed.
    pub max_throttled_attempts: i32,
    /// First back-off after a transient failure; doubles per attempt.
    pub backoff: Duration,
    /// Only one process uses the database (SQLite): leases left by a crash are dropped at start.
    pub single_process: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            max_jobs: 4,
            per_bucket: 16,
            max_attempts: 5,
            max_throttled_attempts: 50,
            backoff: Duration::from_secs(1),
            single_process: false,
        }
    }
}

/// Bounds and paces the calls to one tenant.
pub struct TenantGate {
    slots: Semaphore,
    paused_until: Mutex<Option<Instant>>,
}

impl TenantGate {
    pub fn new(concurrency: usize) -> Self {
        TenantGate {
            slots: Semaphore::new(concurrency.max(1)),
            paused_until: Mutex::new(None),
        }
    }

    /// Waits for a free slot and for any pause to end.
    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        let permit = self
            .slots
            .acquire()
            .await
            .expect("invariant: the gate's semaphore is never closed");
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        permit
    }

    /// Pauses every caller of this tenant for `d` (never shortens a longer pause).
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
}

/// The runner: claims jobs and works on them until shut down.
pub struct JobRunner {
    store: Store,
    cfg: RunnerConfig,
    kinds: HashMap<&'static str, Arc<dyn JobKind>>,
    gates: Mutex<HashMap<String, Arc<TenantGate>>>,
    wake: Notify,
}

impl JobRunner {
    pub fn new(store: Store, cfg: RunnerConfig) -> Self {
        JobRunner {
            store,
            cfg,
            kinds: HashMap::new(),
            gates: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    /// Adds a job kind (before [`JobRunner::spawn`]).
    pub fn register(&mut self, kind: Arc<dyn JobKind>) {
        self.kinds.insert(kind.kind(), kind);
    }

    /// Looks for work now instead of at the next poll (after a job was created in-process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The gate of a bucket, shared by every job against it.
    pub fn gate(&self, bucket: &str) -> Arc<TenantGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(bucket.to_owned())
            .or_insert_with(|| Arc::new(TenantGate::new(self.cfg.per_bucket)))
            .clone()
    }

    /// Starts the runner in the background; it stops claiming when `shutdown` completes and
    /// leaves running jobs to be resumed (their leases lapse or are dropped at the next start).
    pub fn spawn(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::select! {
                _ = self.clone().main_loop() => {},
                _ = shutdown => {},
            }
        })
    }

    async fn main_loop(self: Arc<Self>) {
        if self.cfg.single_process {
            match self.store.release_job_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "resuming jobs interrupted by the last shutdown"),
                Err(e) => tracing::error!(error = %e, "could not release job leases"),
            }
        }
        let running = Arc::new(Semaphore::new(self.cfg.max_jobs.max(1)));
        loop {
            // Claim as many jobs as there is room for.
            while let Ok(slot) = running.clone().try_acquire_owned() {
                match self
                    .store
                    .claim_job(&self.cfg.worker_id, self.lease_until())
                    .await
                {
                    Ok(Some(job)) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.work(job).await;
                            drop(slot);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim a job; will try again");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.cfg.poll) => {},
            }
        }
    }

    fn lease_until(&self) -> chrono::DateTime<chrono::Utc> {
        keyward_store::now()
            + chrono::Duration::from_std(self.cfg.lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// Works on one claimed job until it ends, is cancelled, or its lease is lost.
    async fn work(self: Arc<Self>, job: JobRecord) {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(self.clone().watch(job.id, stop.clone()));
        let result = self.clone().work_inner(&job, &stop).await;
        watcher.abort();
        if let Err(e) = result {
            // The lease lapses and the job is resumed, by this runner or another.
            tracing::warn!(job_id = %job.id, error = %e, "job interrupted by a storage error");
        }
        self.wake();
    }

    /// Renews the lease and notices cancellation; sets `stop` when the job is no longer ours.
    async fn watch(self: Arc<Self>, job_id: uuid::Uuid, stop: Arc<AtomicBool>) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.poll.min(self.cfg.lease / 3)).await;
            match self.store.job_state(job_id).await {
                Ok(Some(s)) if s == job_state::RUNNING => {}
                Ok(_) => {
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not read job state"),
            }
            if last_renewal.elapsed() >= self.cfg.lease / 3 {
                match self
                    .store
                    .renew_job_lease(job_id, &self.cfg.worker_id, self.lease_until())
                    .await
                {
                    Ok(true) => last_renewal = Instant::now(),
                    Ok(false) => {
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew a job lease"),
                }
            }
        }
    }

    async fn work_inner(
        self: Arc<Self>,
        job: &JobRecord,
        stop: &Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        let worker = self.cfg.worker_id.clone();
        let Some(kind) = self.kinds.get(job.kind.as_str()).cloned() else {
            self.store
                .fail_job(job.id, &worker, &format!("unknown job kind {:?}", job.kind))
                .await?;
            return Ok(());
        };
        tracing::info!(job_id = %job.id, kind = %job.kind, "job started");
        let run = match kind.start(job).await {
            Ok(run) => run,
            Err(reason) => {
                tracing::warn!(job_id = %job.id, %reason, "job failed");
                self.store.fail_job(job.id, &worker, &reason).await?;
                return Ok(());
            }
        };
        let gate = self.gate(&run.bucket());
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let items = self.store.runnable_items(job.id, 1024).await?;
            if items.is_empty() {
                match self.store.next_item_due(job.id).await? {
                    None => {
                        if let Some(state) = self
                            .store
                            .finish_job(job.id, &worker, run.summary().as_ref())
                            .await?
                        {
                            tracing::info!(job_id = %job.id, %state, "job finished");
                            return Ok(());
                        }
                        // A retry arrived between the two reads, or the job is no longer ours.
                        if self.store.job_state(job.id).await?.as_deref()
                            != Some(job_state::RUNNING)
                        {
                            return Ok(());
                        }
                    }
                    Some(None) => {}
                    Some(Some(due)) => {
                        let wait = (due - keyward_store::now())
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(self.cfg.poll);
                        tokio::time::sleep(wait).await;
                    }
                }
                continue;
            }
            let mut set = JoinSet::new();
            for item in items {
                let (me, run, gate, stop) = (self.clone(), run.clone(), gate.clone(), stop.clone());
                set.spawn(async move {
                    let _permit = gate.acquire().await;
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    me.attempt(&*run, &gate, item).await
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        set.abort_all();
                        return Err(e);
                    }
                    Err(e) if e.is_panic() => {
                        tracing::error!(job_id = %job.id, "a job item panicked");
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// One attempt at one item: mark it started, run it, record the outcome.
    async fn attempt(
        &self,
        run: &dyn JobRun,
        gate: &TenantGate,
        item: JobItemRecord,
    ) -> Result<(), StoreError> {
        let Some(item) = self.store.start_item(item.job_id, item.user_id).await? else {
            return Ok(()); // cancelled meanwhile
        };
        let outcome = run.run_item(&item).await;
        let Some(finish) = self.finish_for(&item, outcome, gate) else {
            return Ok(()); // the job kind recorded the item with its effect
        };
        self.store
            .finish_item(item.job_id, item.user_id, &finish)
            .await?;
        Ok(())
    }

    fn finish_for(
        &self,
        item: &JobItemRecord,
        outcome: ItemOutcome,
        gate: &TenantGate,
    ) -> Option<ItemFinish> {
        let later = |d: Duration| {
            keyward_store::now()
                + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(60))
        };
        Some(match outcome {
            ItemOutcome::Done(result) => ItemFinish::Done { result },
            ItemOutcome::Recorded => return None,
            ItemOutcome::Failed { reason, request_id } => ItemFinish::Failed {
                error: reason,
                request_id,
            },
            ItemOutcome::Throttled {
                after,
                reason,
                request_id,
            } => {
                gate.pause(after);
                if item.attempts >= self.cfg.max_throttled_attempts {
                    ItemFinish::Failed {
                        error: format!(
                            "still throttled after {} attempts: {reason}",
                            item.attempts
                        ),
                        request_id,
                    }
                } else {
                    ItemFinish::Retry {
                        error: reason,
                        request_id,
                        not_before: later(after),
                    }
                }
            }
            ItemOutcome::Transient { reason, request_id } => {
                if item.attempts >= self.cfg.max_attempts {
                    ItemFinish::Failed {
                        error: format!("gave up after {} attempts: {reason}", item.attempts),
                        request_id,
                    }
                } else {
                    let exp =
                        u32::try_from(item.attempts.saturating_sub(1).clamp(0, 10)).unwrap_or(0);
                    ItemFinish::Retry {
                        error: reason,
                        request_id,
                        not_before: later(self.cfg.backoff * 2u32.pow(exp)),
                    }
                }
            }
        })
    }
}

/// `KEYWARD_JOB_LEASE_SECS` (at least 2): how long a job stays claimed by a runner that stopped
/// renewing it (a crashed replica) before another takes it over on PostgreSQL. Default 30 s.
fn lease_from_env() -> Option<Duration> {
    let secs: u64 = std::env::var("KEYWARD_JOB_LEASE_SECS").ok()?.parse().ok()?;
    Some(Duration::from_secs(secs.max(2)))
}

/// Starts the runner a server needs: imports always, provisioning when key operations are
/// available. On SQLite the server is the only process, so leases of a crashed run are dropped
/// at once and its jobs resume immediately.
///
/// Provisioning gets its own [`KeyOps`] over the same store and vault: the row lock taken by every
/// key operation (`BEGIN IMMEDIATE` / `FOR UPDATE`) serialises it with the API's instance.
pub fn start(
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let keyops = Some(Arc::new(KeyOps::new(
        state.store.clone(),
        state.vault.clone(),
        keyward_authenticator::Config::new(state.aaguid),
    )));
    let mut cfg = RunnerConfig {
        single_process: state.store.backend() == keyward_store::Backend::Sqlite,
        ..RunnerConfig::default()
    };
    if let Some(lease) = lease_from_env() {
        cfg.lease = lease;
    }
    let mut runner = JobRunner::new(state.store.clone(), cfg);
    runner.register(Arc::new(ImportKind::new(DirectoryDeps {
        store: state.store.clone(),
        vault: state.vault.clone(),
    })));
    if let Some(keyops) = keyops {
        runner.register(Arc::new(ProvisionKind::new(ProvisionDeps {
            store: state.store.clone(),
            vault: state.vault.clone(),
            keyops,
            aaguid: state.aaguid,
        })));
    }
    Arc::new(runner).spawn(shutdown)
}
