//! Counters never repeat under concurrency (design.md invariant 3): 64 getAssertion calls in
//! parallel on one credential, on SQLite and PostgreSQL, through two independent `KeyOps`
//! instances sharing the database (two "replicas"), so the database row lock is what orders them,
//! not only the in-process mutex. Every call must succeed with a distinct counter, the counters
//! must be exactly 1..=64 (none lost), and the stored counter must end at 64.

mod keyops_common;

use std::sync::Arc;

use keyward_authenticator::Config;
use keyward_server::keyops::KeyOps;
use keyward_store::testing;

use keyops_common::*;

const PARALLEL: u32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_assertions_get_distinct_consecutive_counters() {
    for db in testing::all().await {
        let dir = tempfile::tempdir().expect("tempdir");
        let (f, _) = setup(&db.store, vault_in(dir.path()), 1).await;
        let cred_id = Arc::new(enrol(&f, f.key_id, false).await);
        let replica = Arc::new(KeyOps::new(
            db.store.clone(),
            f.vault.clone(),
            Config::new(AAGUID),
        ));

        let mut tasks = Vec::new();
        for i in 0..PARALLEL {
            let ops = if i % 2 == 0 {
                f.ops.clone()
            } else {
                replica.clone()
            };
            let cred_id = cred_id.clone();
            let (org, key) = (f.org_id, f.key_id);
            tasks.push(tokio::spawn(async move {
                let req = get_assertion(RP_ID, &cred_id, &format!("challenge-{i}"));
                let resp = ops
                    .ctap(org, key, "user:test", USER, req)
                    .await
                    .expect("getAssertion");
                sign_count(&resp)
            }));
        }
        let mut counters = Vec::new();
        for t in tasks {
            counters.push(t.await.expect("task"));
        }
        counters.sort_unstable();
        let expected: Vec<u32> = (1..=PARALLEL).collect();
        assert_eq!(
            counters,
            expected,
            "{:?}: counters repeated or lost",
            db.backend()
        );

        let mut tx = db.store.begin_key(f.org_id, f.key_id).await.expect("begin");
        let stored = tx
            .credential(&cred_id)
            .await
            .expect("read")
            .expect("credential");
        assert_eq!(
            stored.sign_count,
            i64::from(PARALLEL),
            "{:?}: stored counter",
            db.backend()
        );
        drop(tx);

        // Every released signature has its audit entry, and the chain is intact.
        let report = db
            .store
            .verify_audit()
            .await
            .expect("read audit")
            .expect("audit chain verifies");
        assert!(
            report.entries >= PARALLEL as usize,
            "{:?}: {report:?}",
            db.backend()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unknown_operations_change_nothing() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, _) = setup(&db.store, vault_in(dir.path()), 1).await;
    let cred_id = enrol(&f, f.key_id, false).await;

    // An unknown key, an empty request and another organisation's key are refused.
    let err = f
        .ops
        .ctap(f.org_id, uuid::Uuid::now_v7(), "a", USER, vec![0x04])
        .await
        .expect_err("unknown key");
    assert!(
        matches!(err, keyward_server::keyops::KeyOpsError::NotFound),
        "{err:?}"
    );
    let err = f
        .ops
        .ctap(f.org_id, f.key_id, "a", USER, vec![])
        .await
        .expect_err("empty request");
    assert!(!err.is_unavailable());
    let err = f
        .ops
        .ctap(uuid::Uuid::now_v7(), f.key_id, "a", USER, vec![0x04])
        .await
        .expect_err("other org");
    assert!(
        matches!(err, keyward_server::keyops::KeyOpsError::NotFound),
        "{err:?}"
    );

    // A registration-only session cannot sign, and the refusal does not spend a counter.
    let denied = f
        .ops
        .ctap(
            f.org_id,
            f.key_id,
            "admin:test",
            keyward_authenticator::Policy {
                registration_only: true,
                preauthorized_uv: false,
            },
            get_assertion(RP_ID, &cred_id, "x"),
        )
        .await
        .expect("answered");
    assert_eq!(
        denied.first(),
        Some(&0x27),
        "registration-only getAssertion must be OPERATION_DENIED"
    );
    let resp = f
        .ops
        .ctap(
            f.org_id,
            f.key_id,
            "u",
            USER,
            get_assertion(RP_ID, &cred_id, "y"),
        )
        .await
        .expect("assert");
    assert_eq!(sign_count(&resp), 1);
}
