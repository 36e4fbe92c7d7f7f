//! Throughput of durable server-side getAssertion through `KeyOps` (lock, unwrap, sign, counter,
//! audit, commit), on one key and spread over many keys, on SQLite and (with
//! `KEYWARD_TEST_POSTGRES_URL`) PostgreSQL. The goal is at least 3,000 durable operations per
//! second on SQLite on two cores.
//!
//! `cargo bench -p keyward-server --bench keyops` (release), or quickly in the dev profile with
//! `cargo test -p keyward-server --bench keyops`. Settings: `KEYWARD_BENCH_OPS` (operations per
//! scenario, default 3000), `KEYWARD_BENCH_KEYS` (default 1000), `KEYWARD_BENCH_TASKS`
//! (concurrent callers, default 16). A plain throughput loop rather than criterion: the figure of
//! interest is operations per second under concurrency, not per-call latency.
//!
//! "Durable" means: an operation is counted only once its answer was released, and an answer is
//! released only after the transaction holding its new signature counter and its audit entry
//! has committed (SQLite: WAL mode, `synchronous=FULL`, so the commit's fsync has returned;
//! PostgreSQL: its default `synchronous_commit=on`). On SQLite, operations queued together share
//! one commit (group commit); the average batch size is printed.

#[path = "../tests/keyops_common/mod.rs"]
mod keyops_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use keyward_store::testing;
use uuid::Uuid;

use keyops_common::*;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `ops` getAssertions from `tasks` concurrent callers over `targets` (key, credential)
/// pairs, round-robin, and returns operations per second.
async fn run(f: &Fixture, targets: Arc<Vec<(Uuid, Vec<u8>)>>, ops: usize, tasks: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (keyops, targets, next, org) = (f.ops.clone(), targets.clone(), next.clone(), f.org_id);
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let (key_id, cred_id) = &targets[i % targets.len()];
                let req = get_assertion(RP_ID, cred_id, "bench");
                let resp = keyops
                    .ctap(org, *key_id, "user:bench", USER, req)
                    .await
                    .expect("getAssertion");
                assert_eq!(resp[0], 0, "CTAP error");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

async fn bench_backend(db: testing::TestDb, ops: usize, keys: usize, tasks: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let (f, all_keys) = setup(&db.store, vault_in(dir.path()), keys).await;
    let mut targets = Vec::with_capacity(keys);
    for (_, key_id) in &all_keys {
        targets.push((*key_id, enrol(&f, *key_id, false).await));
    }
    eprintln!(
        "{:?}: {keys} keys with a credential each set up in {:.1}s",
        db.backend(),
        t.elapsed().as_secs_f64()
    );

    let one = Arc::new(vec![targets[0].clone()]);
    let (rate, cpu, batch) = measure(&f, one, ops, tasks).await;
    println!(
        "{:?} getAssertion, one key, {tasks} callers: {rate:.0} durable ops/s ({ops} ops, {cpu}{batch})",
        db.backend()
    );
    let spread = Arc::new(targets);
    let (rate, cpu, batch) = measure(&f, spread, ops, tasks).await;
    println!(
        "{:?} getAssertion, {keys} keys, {tasks} callers: {rate:.0} durable ops/s ({ops} ops, {cpu}{batch})",
        db.backend()
    );
}

/// [`run`], plus this process's CPU time per operation and, on SQLite, the average number of
/// operations per commit.
async fn measure(
    f: &Fixture,
    targets: Arc<Vec<(Uuid, Vec<u8>)>>,
    ops: usize,
    tasks: usize,
) -> (f64, String, String) {
    let stats = f.ops.group_commit_stats();
    let cpu = process_cpu_seconds();
    let rate = run(f, targets, ops, tasks).await;
    let cpu = match (cpu, process_cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.3} ms CPU/op", (b - a) * 1000.0 / ops as f64),
        _ => "CPU/op unknown".into(),
    };
    let batch = match (stats, f.ops.group_commit_stats()) {
        (Some(a), Some(b)) if b.batches > a.batches => format!(
            ", {:.1} ops per commit",
            (b.operations - a.operations) as f64 / (b.batches - a.batches) as f64
        ),
        _ => String::new(),
    };
    (rate, cpu, batch)
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`), which includes
/// the SQLite worker threads but not a PostgreSQL server.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th there.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

fn main() {
    // `cargo test --benches` passes test-harness flags; a bench run without them is the same.
    let ops = setting("KEYWARD_BENCH_OPS", 3000);
    let keys = setting("KEYWARD_BENCH_KEYS", 1000);
    let tasks = setting("KEYWARD_BENCH_TASKS", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        bench_backend(testing::sqlite().await, ops, keys, tasks).await;
        if let Some(pg) = testing::postgres().await {
            bench_backend(pg, ops, keys, tasks).await;
        }
    });
}
