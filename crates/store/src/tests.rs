//! Repository tests; every body runs on SQLite and, when configured, PostgreSQL.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::testing;
use crate::*;

async fn org_user_key(store: &Store) -> (Uuid, Uuid, Uuid) {
    let mut tx = store.begin().await.expect("begin");
    let org = tx
        .insert_organisation(&format!("org-{}", Uuid::new_v4()))
        .await
        .expect("org");
    let user = tx
        .insert_user(
            org.id,
            &NewUser {
                upn: "alice@example.com".into(),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user");
    let key = NewSecurityKey {
        id: Uuid::now_v7(),
        aaguid: vec![7; 16],
        wrapped_dek: vec![1, 2, 3],
        kek_version: 1,
        min_pin_length: 4,
        force_pin_change: false,
    };
    tx.insert_security_key(org.id, user.id, &key)
        .await
        .expect("key");
    tx.commit().await.expect("commit");
    (org.id, user.id, key.id)
}

fn credential(id: &[u8], rp: &str, discoverable: bool) -> CredentialRecord {
    CredentialRecord {
        credential_id: id.to_vec(),
        rp_id: rp.into(),
        rp_id_hash: rp.as_bytes().to_vec(),
        rp_name: Some("RP".into()),
        user_handle: vec![9; 8],
        user_name: Some("alice".into()),
        user_display_name: None,
        alg: -7,
        public_key_cose: vec![0xa5],
        sealed_private_key: vec![0xee; 40],
        sealed_cred_random: None,
        discoverable,
        cred_protect: 1,
        cred_blob: Some(vec![1]),
        sign_count: 0,
        backup_eligible: false,
        backup_state: false,
        created_at: now(),
        created_by: Some("admin:x".into()),
        via: "delegated".into(),
    }
}

#[tokio::test]
async fn key_transaction_round_trips_credentials_and_counters() {
    for db in testing::all().await {
        let s = &db.store;
        let (org, user, key) = org_user_key(s).await;
        let mut tx = s.begin_key(org, key).await.expect("begin_key");
        let k = tx.key().await.expect("key");
        assert_eq!(
            (k.user_id, k.status.as_str(), k.pin_retries),
            (user, "active", 8)
        );
        tx.insert_credential(&credential(b"c1", "a.example", true))
            .await
            .expect("insert c1");
        tx.insert_credential(&credential(b"c2", "b.example", false))
            .await
            .expect("insert c2");
        assert!(matches!(
            tx.insert_credential(&credential(b"c1", "a.example", true))
                .await,
            Err(StoreError::Conflict(_))
        ));
        tx.append_audit(
            org,
            "admin:x",
            "key.make_credential",
            &format!("key:{key}"),
            json!({"rp_id": "a.example"}),
        )
        .await
        .expect("audit");
        tx.commit().await.expect("commit");

        let mut tx = s.begin_key(org, key).await.expect("begin_key");
        assert_eq!(tx.next_sign_count(b"c1").await.expect("count"), 1);
        assert_eq!(tx.next_sign_count(b"c1").await.expect("count"), 2);
        assert!(matches!(
            tx.next_sign_count(b"nope").await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            tx.credentials_for_rp(b"a.example").await.expect("rp").len(),
            1
        );
        let disc = tx.discoverable_credentials().await.expect("disc");
        assert_eq!(
            disc.iter()
                .map(|c| c.credential_id.clone())
                .collect::<Vec<_>>(),
            vec![b"c1".to_vec()]
        );
        assert!(
            tx.update_credential_user(b"c2", &[1], Some("bob"), None)
                .await
                .expect("upd")
        );
        assert!(
            !tx.update_credential_user(b"zz", &[1], None, None)
                .await
                .expect("upd")
        );
        assert!(tx.delete_credential(b"c2").await.expect("del"));
        assert!(!tx.delete_credential(b"c2").await.expect("del"));
        drop(tx); // rolled back: c2 and the counter bumps come back

        let mut tx = s.begin_key(org, key).await.expect("begin_key");
        let c1 = tx.credential(b"c1").await.expect("get").expect("c1 exists");
        assert_eq!(
            c1.sign_count, 0,
            "a dropped transaction must not keep its counter increments"
        );
        assert!(tx.credential(b"c2").await.expect("get").is_some());
        tx.wipe_credentials().await.expect("wipe");
        tx.commit().await.expect("commit");
        let mut tx = s.begin_key(org, key).await.expect("begin_key");
        assert!(tx.credential(b"c1").await.expect("get").is_none());
    }
}

#[tokio::test]
async fn keys_are_scoped_to_their_organisation_and_pin_state_persists() {
    for db in testing::all().await {
        let s = &db.store;
        let (org, _user, key) = org_user_key(s).await;
        let (other_org, _, _) = org_user_key(s).await;
        assert!(s.key_by_id(other_org, key).await.expect("query").is_none());
        assert!(matches!(
            s.begin_key(other_org, key).await,
            Err(StoreError::NotFound)
        ));

        let mut rec = s.key_by_id(org, key).await.expect("query").expect("key");
        rec.pin_verifier = Some(vec![5; 32]);
        rec.pin_retries = 7;
        rec.min_pin_length_rp_ids = vec!["a.example".into()];
        rec.force_pin_change = true;
        s.update_key_pin_state(org, key, &rec)
            .await
            .expect("pin state");
        assert_eq!(s.key_by_id(org, key).await.expect("q").expect("key"), rec);
        assert!(matches!(
            s.update_key_pin_state(other_org, key, &rec).await,
            Err(StoreError::NotFound)
        ));

        let deks = s.all_wrapped_deks().await.expect("deks");
        assert!(deks.contains(&(org, key, vec![1, 2, 3], 1)));
        assert!(
            s.replace_wrapped_dek(org, key, 1, &[4, 4], 2)
                .await
                .expect("cas")
        );
        assert!(
            !s.replace_wrapped_dek(org, key, 1, &[5, 5], 2)
                .await
                .expect("stale cas must fail")
        );
        assert_eq!(
            s.key_by_id(org, key)
                .await
                .expect("q")
                .expect("key")
                .wrapped_dek,
            vec![4, 4]
        );
    }
}

#[tokio::test]
async fn audit_chain_verifies_and_detects_edits_and_deletions() {
    for db in testing::all().await {
        let s = &db.store;
        let (org, user, _) = org_user_key(s).await;
        for i in 0..3 {
            let mut tx = s.begin().await.expect("begin");
            tx.append_audit(
                org,
                "admin:a",
                "user.update",
                &format!("user:{user}"),
                json!({"n": i, "z": {"b": 1, "a": 2}}),
            )
            .await
            .expect("append");
            tx.commit().await.expect("commit");
        }
        let report = s
            .verify_audit()
            .await
            .expect("verify")
            .expect("chain intact");
        assert!(report.entries >= 3);
        let page = s
            .list_audit(
                org,
                &AuditFilter {
                    user_id: Some(user),
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2]);
        let next = s
            .list_audit(
                org,
                &AuditFilter {
                    before_seq: Some(2),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);

        on_pool!(&s.db, p => {
            sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE org_id = $1 AND seq = 2").bind(org).execute(p).await.expect("tamper");
        });
        let err = s
            .verify_audit()
            .await
            .expect("verify")
            .expect_err("edit must be detected");
        assert_eq!((err.org_id, err.seq), (org, 2));

        on_pool!(&s.db, p => {
            sqlx::query("UPDATE audit_log SET actor = 'admin:a' WHERE org_id = $1 AND seq = 2").bind(org).execute(p).await.expect("undo");
            sqlx::query("DELETE FROM audit_log WHERE org_id = $1 AND seq = 3").bind(org).execute(p).await.expect("delete tail");
        });
        let err = s
            .verify_audit()
            .await
            .expect("verify")
            .expect_err("deleted tail must be detected");
        assert_eq!((err.org_id, err.seq), (org, 3));
    }
}

#[tokio::test]
async fn users_search_page_and_patch() {
    for db in testing::all().await {
        let s = &db.store;
        let mut tx = s.begin().await.expect("begin");
        let org = tx.insert_organisation("acme").await.expect("org");
        for i in 0..5 {
            let u = NewUser {
                upn: format!("user{i}@acme.test"),
                display_name: Some(format!("User_{i}")),
                source: "csv".into(),
                ..Default::default()
            };
            tx.insert_user(org.id, &u).await.expect("user");
        }
        let dup = NewUser {
            upn: "user0@acme.test".into(),
            source: "api".into(),
            ..Default::default()
        };
        assert!(matches!(
            tx.insert_user(org.id, &dup).await,
            Err(StoreError::Conflict(_))
        ));
        tx.commit().await.expect("commit");

        let first = s
            .list_users(
                org.id,
                &UserFilter {
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("page 1");
        assert_eq!(first.len(), 2);
        let rest = s
            .list_users(
                org.id,
                &UserFilter {
                    limit: 10,
                    after: Some(first[1].id),
                    ..Default::default()
                },
            )
            .await
            .expect("page 2");
        assert_eq!(rest.len(), 3);
        let hit = s
            .list_users(
                org.id,
                &UserFilter {
                    q: Some("USER3".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("q");
        assert_eq!(hit.len(), 1);
        // `_` is a literal in searches, not a wildcard.
        let none = s
            .list_users(
                org.id,
                &UserFilter {
                    q: Some("r_3@".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("q");
        assert!(none.is_empty());

        let mut tx = s.begin().await.expect("begin");
        let patched = tx
            .update_user(
                org.id,
                hit[0].id,
                &UserPatch {
                    email: Some(Some("u3@x.test".into())),
                    status: Some("disabled".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("patch");
        tx.commit().await.expect("commit");
        assert_eq!(
            s.user(org.id, hit[0].id).await.expect("get"),
            Some(patched.clone())
        );
        let disabled = s
            .list_users(
                org.id,
                &UserFilter {
                    status: Some("disabled".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("q");
        assert_eq!(disabled, vec![patched]);
    }
}

#[tokio::test]
async fn sessions_and_tokens_resolve_by_hash_only() {
    for db in testing::all().await {
        let s = &db.store;
        let mut tx = s.begin().await.expect("begin");
        let org = tx.insert_organisation("o").await.expect("org");
        let admin = tx
            .insert_admin(org.id, "Ann@o.test", "owner", "$argon2id$fake")
            .await
            .expect("admin");
        tx.insert_api_token(admin.id, "ci", &[1; 32])
            .await
            .expect("token");
        tx.commit().await.expect("commit");
        assert_eq!(
            s.admin_by_token_hash(&[1; 32])
                .await
                .expect("q")
                .map(|a| a.id),
            Some(admin.id)
        );
        assert!(s.admin_by_token_hash(&[2; 32]).await.expect("q").is_none());
        assert_eq!(
            s.admins_by_email(None, "ann@o.test")
                .await
                .expect("q")
                .len(),
            1
        );

        s.insert_session(
            &[3; 32],
            admin.id,
            &[4; 32],
            Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .expect("session");
        s.insert_session(
            &[5; 32],
            admin.id,
            &[4; 32],
            Utc::now() - chrono::Duration::hours(1),
        )
        .await
        .expect("session");
        assert!(s.session(&[3; 32]).await.expect("q").is_some());
        assert!(
            s.session(&[5; 32]).await.expect("q").is_none(),
            "expired sessions must not resolve"
        );
        s.delete_session(&[3; 32]).await.expect("logout");
        assert!(s.session(&[3; 32]).await.expect("q").is_none());
    }
}

#[tokio::test]
async fn unsupported_urls_are_rejected() {
    assert!(matches!(
        Store::connect("mysql://x").await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn disabling_an_admin_ends_sessions_and_tokens() {
    for db in testing::all().await {
        let s = &db.store;
        let mut tx = s.begin().await.expect("begin");
        let org = tx.insert_organisation("o").await.expect("org");
        let admin = tx
            .insert_admin(org.id, "a@o.test", "admin", "$argon2id$x")
            .await
            .expect("admin");
        tx.insert_api_token(admin.id, "t", &[7; 32])
            .await
            .expect("token");
        tx.commit().await.expect("commit");
        s.insert_session(
            &[8; 32],
            admin.id,
            &[9; 32],
            Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .expect("session");

        let mut tx = s.begin().await.expect("begin");
        tx.update_admin(org.id, admin.id, Some("auditor"), None)
            .await
            .expect("role");
        assert!(matches!(
            tx.update_admin(Uuid::now_v7(), admin.id, None, Some(true))
                .await,
            Err(StoreError::NotFound)
        ));
        tx.commit().await.expect("commit");
        let a = s.admin(admin.id).await.expect("q").expect("admin");
        assert_eq!((a.role.as_str(), a.disabled), ("auditor", false));
        assert!(s.admin_by_token_hash(&[7; 32]).await.expect("q").is_some());

        let mut tx = s.begin().await.expect("begin");
        tx.update_admin(org.id, admin.id, None, Some(true))
            .await
            .expect("disable");
        tx.commit().await.expect("commit");
        assert!(s.admin_by_token_hash(&[7; 32]).await.expect("q").is_none());
        assert!(s.session(&[8; 32]).await.expect("q").is_none());
        assert_eq!(s.list_admins(org.id).await.expect("list").len(), 1);
    }
}

#[tokio::test]
async fn saving_settings_keeps_a_ca_key_rewrapped_since_it_was_read() {
    for db in testing::all().await {
        let s = &db.store;
        let mut tx = s.begin().await.expect("begin");
        let org = tx.insert_organisation("o").await.expect("org");
        let mut rec = OrgSettingsRecord {
            org_id: org.id,
            aaguid: vec![1; 16],
            attestation: "packed".into(),
            min_pin_length: 4,
            pin_policy: "user".into(),
            delegated_session_minutes: 15,
            attestation_ca_cert: Some(b"ca-1".to_vec()),
            attestation_ca_key_sealed: Some(b"sealed-under-v1".to_vec()),
            updated_at: Utc::now(),
            updated_by: None,
        };
        tx.put_org_settings(&rec).await.expect("put");
        tx.commit().await.expect("commit");

        // A rotation re-wraps the CA key after an admin read the settings …
        let listed = s
            .sealed_values(SealedKind::AttestationCaKey)
            .await
            .expect("list");
        let value = listed.iter().find(|v| v.org_id == org.id).expect("listed");
        assert!(
            s.replace_sealed_value(value, b"sealed-under-v2")
                .await
                .expect("swap")
        );
        // … and the admin saves what they read: the re-wrapped key must survive.
        rec.min_pin_length = 6;
        let mut tx = s.begin().await.expect("begin");
        tx.put_org_settings(&rec).await.expect("put stale");
        tx.commit().await.expect("commit");
        let saved = s.org_settings(org.id).await.expect("read").expect("row");
        assert_eq!(saved.min_pin_length, 6);
        assert_eq!(
            saved.attestation_ca_key_sealed.as_deref(),
            Some(&b"sealed-under-v2"[..])
        );

        // A new CA (another certificate) brings its own key.
        rec.attestation_ca_cert = Some(b"ca-2".to_vec());
        rec.attestation_ca_key_sealed = Some(b"new-ca-key".to_vec());
        let mut tx = s.begin().await.expect("begin");
        tx.put_org_settings(&rec).await.expect("put new ca");
        tx.commit().await.expect("commit");
        let saved = s.org_settings(org.id).await.expect("read").expect("row");
        assert_eq!(
            saved.attestation_ca_key_sealed.as_deref(),
            Some(&b"new-ca-key"[..])
        );
    }
}
