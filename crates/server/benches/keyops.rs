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
    let rate = run(&f, one, ops, tasks).await;
    println!(
        "{:?} getAssertion, one key, {tasks} callers: {rate:.0} durable ops/s ({ops} ops)",
        db.backend()
    );
    let spread = Arc::new(targets);
    let rate = run(&f, spread, ops, tasks).await;
    println!(
        "{:?} getAssertion, {keys} keys, {tasks} callers: {rate:.0} durable ops/s ({ops} ops)",
        db.backend()
    );
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
