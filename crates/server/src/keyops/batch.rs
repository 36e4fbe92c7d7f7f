//! Group commit of key operations on SQLite.
//!
//! SQLite has one writer at a time, and with `synchronous=FULL` every commit waits for a WAL
//! fsync. Committing each key operation on its own therefore caps throughput at the rate of
//! fsyncs plus a dozen round trips per operation. Instead, one thread per [`super::KeyOps`] takes
//! every operation queued at that moment (up to [`MAX_BATCH`]) and runs them one after another
//! in a single `BEGIN IMMEDIATE` transaction:
//!
//! - each operation runs in its own savepoint: one that fails (a storage error, a corrupt row,
//!   a vault failure, a panic in the engine) rolls back only its own writes and gets its own
//!   error, while the others go on;
//! - the audit chain stays linear, since operations run in order on one connection, and its
//!   heads are written back once per batch;
//! - nobody is answered before the one `COMMIT` has returned (durable: WAL fsynced). If the
//!   commit fails, every operation of the batch is refused and their keys' volatile state is
//!   dropped, so nothing that was not committed is ever released.
//!
//! A PIN retry spent mid-batch commits the batch so far at once ([`keyward_store::KeyTx::checkpoint`]),
//! exactly as a lone operation would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::{GroupCommitStats, KeyOpsError, Op, Shared};

/// The most operations one transaction carries; more wait for the next batch. Each takes a
/// fraction of a millisecond, so a full batch holds the write lock for tens of milliseconds.
const MAX_BATCH: usize = 256;

/// What a batch runs: a key operation, or a provisioning item's registration (which touches no
/// key, but shares the batch's commit).
pub(super) enum Work {
    Ctap(Box<Op>),
    Record(Box<keyward_store::ItemRegistration>),
}

/// The answer to a [`Work`]: the CTAP response, or whether the recorded item was still running.
pub(super) enum Answer {
    Ctap(Vec<u8>),
    Recorded(bool),
}

type Reply = oneshot::Sender<Result<Answer, KeyOpsError>>;

struct Job {
    work: Work,
    reply: Reply,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    operations: AtomicU64,
}

/// The queue to a committer thread, started on first use.
#[derive(Default)]
pub(super) struct Committer {
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
    counters: Arc<Counters>,
}

impl Committer {
    pub(super) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            operations: self.counters.operations.load(Ordering::Relaxed),
        }
    }

    /// Queues `work` and waits until its batch has committed (or failed).
    pub(super) async fn submit(
        &self,
        shared: &Arc<Shared>,
        work: Work,
    ) -> Result<Answer, KeyOpsError> {
        let queue = self.queue.get_or_init(|| self.start(shared.clone()));
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { work, reply })
            .map_err(|_| KeyOpsError::Unavailable("the key operation committer stopped".into()))?;
        answer
            .await
            .map_err(|_| KeyOpsError::Internal("key operation aborted".into()))?
    }

    /// Starts the committer thread. It ends when the queue's sender (this `Committer`) is dropped.
    fn start(&self, shared: Arc<Shared>) -> mpsc::UnboundedSender<Job> {
        let (queue, jobs) = mpsc::unbounded_channel();
        let handle = Handle::current();
        let counters = self.counters.clone();
        let spawned = std::thread::Builder::new()
            .name("keyops-commit".into())
            .spawn(move || run(&shared, &handle, jobs, &counters));
        if let Err(e) = spawned {
            // The receiver went down with the closure: every submission is refused (fail closed).
            tracing::error!(error = %e, "cannot start the key operation committer");
        }
        queue
    }
}

fn run(
    shared: &Shared,
    handle: &Handle,
    mut queue: mpsc::UnboundedReceiver<Job>,
    counters: &Counters,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let n = u64::try_from(jobs.len()).unwrap_or(u64::MAX);
        // The engine has its own guard; this one keeps the committer alive through anything
        // else. A panicking batch drops its reply senders, so its callers get errors.
        let survived = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_batch(shared, handle, jobs)
        }));
        if survived.is_err() {
            tracing::error!("a key operation batch panicked; its operations were refused");
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.operations.fetch_add(n, Ordering::Relaxed);
    }
}

fn run_batch(shared: &Shared, handle: &Handle, jobs: Vec<Job>) {
    let turn = shared
        .sqlite_writer
        .as_ref()
        .map(|m| handle.block_on(m.lock()));
    let mut tx = match handle.block_on(shared.store.begin_key_batch()) {
        Ok(tx) => Some(tx),
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, "cannot start a key operation batch");
            for job in jobs {
                let _ = job.reply.send(Err(KeyOpsError::Unavailable(msg.clone())));
            }
            return;
        }
    };
    let mut done: Vec<(Job, Result<Answer, KeyOpsError>)> = Vec::with_capacity(jobs.len());
    // Set when the batch itself is lost (a savepoint could not be released or rolled back):
    // what follows is refused, and so is everything before it, since it will not commit.
    let mut broken: Option<String> = None;
    let last = jobs.len().saturating_sub(1);
    for (i, job) in jobs.into_iter().enumerate() {
        let Some(mut t) = tx.take() else {
            let msg = broken.clone().unwrap_or_default();
            done.push((job, Err(KeyOpsError::Unavailable(msg))));
            continue;
        };
        if i == last {
            // Its last statement writes the audit heads back, one round trip fewer at commit.
            t.write_heads_with_next_op();
        }
        let mark = t.mark();
        let op = match &job.work {
            Work::Ctap(op) => op,
            Work::Record(r) => {
                let result = handle
                    .block_on(t.record_registration(r))
                    .map(Answer::Recorded)
                    .map_err(KeyOpsError::from);
                match handle.block_on(t.end_op(result.is_ok(), mark)) {
                    Ok(()) => tx = Some(t),
                    Err(e) => broken = Some(e.to_string()),
                }
                done.push((job, result));
                continue;
            }
        };
        let begun = match &op.create {
            Some((user_id, new)) => handle.block_on(t.create_key(
                op.org_id,
                *user_id,
                new,
                &op.actor,
                super::create_detail(*user_id, new),
            )),
            None => handle.block_on(t.begin_op(op.org_id, op.key_id)),
        };
        let rec = match begun {
            Ok(rec) => rec,
            Err(e) => {
                // Undo whatever the start wrote (a created key); a failure to do so loses the
                // batch.
                match handle.block_on(t.end_op(false, mark)) {
                    Ok(()) => tx = Some(t),
                    Err(e) => broken = Some(e.to_string()),
                }
                done.push((job, Err(e.into())));
                continue;
            }
        };
        let slot = shared.slot(op.key_id);
        let mut volatile = handle.block_on(slot.lock_owned());
        let (back, mark, result) = shared.execute(handle, t, mark, rec, op, &mut volatile);
        let result = result.map(Answer::Ctap);
        drop(volatile);
        match back {
            Some(mut t) => match handle.block_on(t.end_op(result.is_ok(), mark)) {
                Ok(()) => tx = Some(t),
                Err(e) => broken = Some(e.to_string()),
            },
            None => broken = Some("key transaction lost".into()),
        }
        done.push((job, result));
    }
    let committed = match (tx, broken) {
        (Some(t), None) => handle.block_on(t.commit()).map_err(|e| e.to_string()),
        (_, Some(msg)) => Err(msg),
        (None, None) => Err("key transaction lost".into()),
    };
    drop(turn);
    match committed {
        Ok(()) => {
            for (job, result) in done {
                let _ = job.reply.send(result);
            }
        }
        Err(msg) => {
            tracing::error!(error = %msg, operations = done.len(), "a key operation batch did not commit; its operations are refused");
            for (job, result) in done {
                let result = match (result, &job.work) {
                    (Ok(_), Work::Ctap(op)) => {
                        // The engine's volatile state may reflect writes that did not stand.
                        let slot = shared.slot(op.key_id);
                        *handle.block_on(slot.lock()) = None;
                        Err(KeyOpsError::Unavailable(msg.clone()))
                    }
                    (Ok(_), Work::Record(_)) => Err(KeyOpsError::Unavailable(msg.clone())),
                    (Err(e), _) => Err(e),
                };
                let _ = job.reply.send(result);
            }
        }
    }
}
