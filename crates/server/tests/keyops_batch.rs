//! SQLite group commit: an operation that fails inside a batch rolls back only its own writes and
//! gets its own error; the other operations of the same batch succeed, are committed and
//! audited, and survive reopening the database.
//!
//! To put the operations in one batch for certain, the test holds SQLite's write lock while it
//! queues them: the committer takes the first operation and waits for the lock, everything
//! queued meanwhile becomes the next batch, which the committer's counters confirm.

mod keyops_common;

use std::time::Duration;

use keyward_server::keyops::KeyOpsError;
use keyward_store::{AuditFilter, Store, StoreError, testing};

use keyops_common::*;

const GOOD: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_touch_its_batch() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, keys) = setup(&db.store, vault_in(dir.path()), 2).await;
    let (good_key, bad_key) = (keys[0].1, keys[1].1);
    let good_cred = enrol(&f, good_key, false).await;
    let bad_cred = enrol(&f, bad_key, false).await;

    // The bad key's counter sits at the top of its range: the next increment is written, then
    // refused as corrupt (a counter must fit in 32 bits), so that operation fails after writing.
    let raw = sqlx::SqlitePool::connect(&db.url).await.expect("raw pool");
    sqlx::query("UPDATE credentials SET sign_count = 4294967295 WHERE key_id = $1")
        .bind(bad_key)
        .execute(&raw)
        .await
        .expect("set counter");
    raw.close().await;

    let before = f.ops.group_commit_stats().expect("SQLite has a committer");
    let blocker = db.store.begin().await.expect("hold the write lock");
    let first = {
        let ops = f.ops.clone();
        let (org, cred) = (f.org_id, good_cred.clone());
        tokio::spawn(async move {
            ops.ctap(
                org,
                good_key,
                "user:test",
                USER,
                get_assertion(RP_ID, &cred, "first"),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tasks = Vec::new();
    for i in 0..=GOOD {
        let ops = f.ops.clone();
        let org = f.org_id;
        // The failing operation sits in the middle of the batch.
        let (key, cred) = if i == GOOD / 2 {
            (bad_key, bad_cred.clone())
        } else {
            (good_key, good_cred.clone())
        };
        tasks.push(tokio::spawn(async move {
            let req = get_assertion(RP_ID, &cred, &format!("c{i}"));
            (key, ops.ctap(org, key, "user:test", USER, req).await)
        }));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.commit().await.expect("release the write lock");

    assert_eq!(sign_count(&first.await.expect("task").expect("first")), 1);
    let mut counters = Vec::new();
    let mut failures = 0;
    for t in tasks {
        match t.await.expect("task") {
            (k, Ok(resp)) if k == good_key => counters.push(sign_count(&resp)),
            (k, Err(e)) if k == bad_key => {
                assert!(
                    matches!(e, KeyOpsError::Store(StoreError::Corrupt(_))),
                    "the failing operation gets its own error: {e:?}"
                );
                failures += 1;
            }
            (k, r) => panic!("unexpected result for key {k}: {r:?}"),
        }
    }
    assert_eq!(failures, 1);
    counters.sort_unstable();
    assert_eq!(counters, (2..=GOOD + 1).collect::<Vec<_>>());
    let after = f.ops.group_commit_stats().expect("stats");
    assert_eq!(
        (
            after.batches - before.batches,
            after.operations - before.operations
        ),
        (2, u64::from(GOOD) + 2),
        "the first operation alone, then all the others in one batch"
    );

    // Durable: a fresh connection to the file sees the committed counters and the rollback.
    db.store.close().await;
    let reopened = Store::connect(&db.url).await.expect("reopen");
    let mut tx = reopened.begin_key(f.org_id, good_key).await.expect("lock");
    let good = tx
        .credential(&good_cred)
        .await
        .expect("read")
        .expect("cred");
    assert_eq!(good.sign_count, i64::from(GOOD) + 1);
    drop(tx);
    let mut tx = reopened.begin_key(f.org_id, bad_key).await.expect("lock");
    let bad = tx.credential(&bad_cred).await.expect("read").expect("cred");
    assert_eq!(
        bad.sign_count, 4_294_967_295,
        "the failed increment was rolled back"
    );
    drop(tx);

    // One audit entry per released signature, none for the failed operation, chain intact.
    let audit = reopened
        .list_audit(
            f.org_id,
            &AuditFilter {
                action: Some("key.ctap.get_assertion".into()),
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("audit");
    let on = |k: uuid::Uuid| {
        audit
            .iter()
            .filter(|e| e.target == format!("key:{k}"))
            .count()
    };
    assert_eq!(on(good_key), usize::try_from(GOOD).expect("small") + 1);
    assert_eq!(on(bad_key), 0);
    reopened
        .verify_audit()
        .await
        .expect("read")
        .expect("audit chain intact");
}
