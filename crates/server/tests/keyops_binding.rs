//! Sealed material is bound to its row (design.md invariant 5) and key operations fail closed
//! (invariant 6): a wrapped data key or a sealed private key copied onto another key's row does
//! not open, the operation is refused, and nothing is released. Rows are tampered with directly
//! in SQL, as an attacker with database access would.

mod keyops_common;

use keyward_server::keyops::KeyOpsError;
use keyward_store::testing;

use keyops_common::*;

async fn raw_pool(url: &str) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(url)
        .await
        .expect("raw connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_moved_to_another_row_does_not_open() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, keys) = setup(&db.store, vault_in(dir.path()), 2).await;
    let (key_a, key_b) = (keys[0].1, keys[1].1);
    let cred_b = enrol(&f, key_b, false).await;

    let pool = raw_pool(&db.url).await;
    sqlx::query("UPDATE security_keys SET wrapped_dek = (SELECT wrapped_dek FROM security_keys WHERE id = $1) WHERE id = $2")
        .bind(key_a)
        .bind(key_b)
        .execute(&pool)
        .await
        .expect("tamper");
    let audit_before: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .expect("count");

    let err = f
        .ops
        .ctap(
            f.org_id,
            key_b,
            "user:test",
            USER,
            get_assertion(RP_ID, &cred_b, "x"),
        )
        .await
        .expect_err("a moved data key must not open");
    assert!(matches!(err, KeyOpsError::Integrity), "{err:?}");
    let (count,): (i64,) =
        sqlx::query_as("SELECT sign_count FROM credentials WHERE credential_id = $1")
            .bind(&cred_b)
            .fetch_one(&pool)
            .await
            .expect("counter");
    assert_eq!(count, 0, "nothing may be written by a refused operation");
    let audit_after: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(audit_before, audit_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_copied_to_another_credential_does_not_sign() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, keys) = setup(&db.store, vault_in(dir.path()), 2).await;
    let cred_a = enrol(&f, keys[0].1, false).await;
    let cred_b = enrol(&f, keys[1].1, false).await;
    let cred_a2 = enrol(&f, keys[0].1, false).await;

    let pool = raw_pool(&db.url).await;
    let copy = "UPDATE credentials SET sealed_private_key = \
                (SELECT sealed_private_key FROM credentials WHERE credential_id = $1) WHERE credential_id = $2";
    // From another key (other data key), and from another credential of the same key (same data
    // key, other credential id in the binding): both must fail.
    sqlx::query(copy)
        .bind(&cred_a)
        .bind(&cred_b)
        .execute(&pool)
        .await
        .expect("tamper b");
    sqlx::query(copy)
        .bind(&cred_a)
        .bind(&cred_a2)
        .execute(&pool)
        .await
        .expect("tamper a2");

    for (key, cred) in [(keys[1].1, &cred_b), (keys[0].1, &cred_a2)] {
        let resp = f
            .ops
            .ctap(
                f.org_id,
                key,
                "user:test",
                USER,
                get_assertion(RP_ID, cred, "x"),
            )
            .await
            .expect("answered");
        assert_eq!(
            resp,
            vec![0x7F],
            "a moved private key must fail closed with CTAP2_ERR_OTHER"
        );
    }
    // The untouched credential still signs.
    let ok = f
        .ops
        .ctap(
            f.org_id,
            keys[0].1,
            "user:test",
            USER,
            get_assertion(RP_ID, &cred_a, "y"),
        )
        .await
        .expect("ok");
    assert_eq!(sign_count(&ok), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_keys_do_not_operate() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, _) = setup(&db.store, vault_in(dir.path()), 1).await;
    let cred = enrol(&f, f.key_id, false).await;
    let mut tx = db.store.begin().await.expect("begin");
    tx.set_key_status(f.org_id, f.key_id, "suspended")
        .await
        .expect("suspend");
    tx.commit().await.expect("commit");
    let err = f
        .ops
        .ctap(
            f.org_id,
            f.key_id,
            "user:test",
            USER,
            get_assertion(RP_ID, &cred, "x"),
        )
        .await
        .expect_err("suspended");
    assert!(
        matches!(err, KeyOpsError::KeyNotActive(ref s) if s == "suspended"),
        "{err:?}"
    );
    let err = f
        .ops
        .set_pin(
            f.org_id,
            f.key_id,
            "admin:test",
            &zeroize::Zeroizing::new("123456".into()),
            false,
        )
        .await
        .expect_err("suspended");
    assert!(matches!(err, KeyOpsError::KeyNotActive(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pin_enforces_the_pin_rules() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, _) = setup(&db.store, vault_in(dir.path()), 1).await;
    let short = f
        .ops
        .set_pin(
            f.org_id,
            f.key_id,
            "a",
            &zeroize::Zeroizing::new("123".into()),
            false,
        )
        .await;
    assert!(
        matches!(short, Err(KeyOpsError::InvalidRequest(_))),
        "{short:?}"
    );
    let long = f
        .ops
        .set_pin(
            f.org_id,
            f.key_id,
            "a",
            &zeroize::Zeroizing::new("9".repeat(64)),
            false,
        )
        .await;
    assert!(
        matches!(long, Err(KeyOpsError::InvalidRequest(_))),
        "{long:?}"
    );
    let rec = db
        .store
        .key_by_id(f.org_id, f.key_id)
        .await
        .expect("read")
        .expect("row");
    assert!(
        rec.pin_verifier.is_none(),
        "a refused PIN must not be stored"
    );

    // Four code points of multi-byte UTF-8 are a valid PIN (CTAP counts code points).
    f.ops
        .set_pin(
            f.org_id,
            f.key_id,
            "a",
            &zeroize::Zeroizing::new("äöüß".into()),
            true,
        )
        .await
        .expect("valid PIN");
    let rec = db
        .store
        .key_by_id(f.org_id, f.key_id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        (rec.pin_code_points, rec.pin_retries, rec.force_pin_change),
        (4, 8, true)
    );
    assert_eq!(rec.pin_verifier.map(|v| v.len()), Some(32));
}
