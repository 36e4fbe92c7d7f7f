//! Refused password sign-ins are audited as `auth.login_failed` in the organisation of every admin
//! the e-mail address names (with the reason and the client's address, never the password), and
//! not at all when it names none; the audit chain stays intact, and `GET /audit` finds them.

mod api_common;

use std::net::SocketAddr;
use std::time::Duration;

use api_common::*;
use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode};
use keyward_server::auth::Role;
use serde_json::{Value, json};
use uuid::Uuid;

/// A password distinctive enough to be found if it leaked into an audit entry.
const GUESS: &str = "Tr0ub4dor&3-guessed";
const CLIENT: [u8; 4] = [192, 0, 2, 7];

async fn login(ctx: &Ctx, org: Option<&str>, email: &str, password: &str) -> StatusCode {
    let mut body = json!({"email": email, "password": password});
    if let Some(org) = org {
        body["org"] = json!(org);
    }
    let mut req = request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some("application/json"),
        serde_json::to_vec(&body).expect("json"),
    );
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((CLIENT, 41_000))));
    send(&ctx.app, req).await.status
}

/// The organisation's `auth.login_failed` entries through `GET /audit`, newest first, read by
/// its auditor.
async fn failures(ctx: &Ctx, org: &Org) -> Vec<Value> {
    let r = call(
        ctx,
        Method::GET,
        "/api/v1/audit?action=auth.login_failed&limit=100",
        &org.tokens[&Role::Auditor],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the organisation holds `n` failure entries (they are written after the answer).
async fn wait_for_failures(ctx: &Ctx, org: &Org, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let items = failures(ctx, org).await;
        if items.len() >= n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = failures(ctx, org).await;
    panic!(
        "expected {n} auth.login_failed entries in {}, got {items:?}",
        org.name
    );
}

async fn admin_id(ctx: &Ctx, org: &Org, email: &str) -> Uuid {
    ctx.state
        .store
        .admins_by_email(Some(org.id), email)
        .await
        .expect("admins")
        .first()
        .expect("admin")
        .id
}

fn assert_entry(entry: &Value, email: &str, id: Uuid, reason: &str) {
    assert_eq!(entry["action"], "auth.login_failed");
    assert_eq!(entry["actor"], format!("admin:{email}"));
    assert_eq!(entry["target"], format!("admin:{id}"));
    assert_eq!(entry["detail"]["method"], "password");
    assert_eq!(entry["detail"]["reason"], reason);
    assert_eq!(entry["detail"]["ip"], "192.0.2.7");
    assert!(
        !entry.to_string().contains(GUESS) && !entry.to_string().contains(PASSWORD),
        "a password reached the audit log: {entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_password_logins_are_audited_in_the_admins_organisation() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let a = org(&ctx, "A").await;
        let b = org(&ctx, "B").await;
        let email = a.emails[&Role::Admin].clone();
        let id_a = admin_id(&ctx, &a, &email).await;

        // An address that names no admin: refused, and nothing to audit anywhere.
        assert_eq!(
            login(&ctx, None, "nobody@a.test", GUESS).await,
            StatusCode::UNAUTHORIZED
        );
        // Nor for an organisation that does not exist.
        assert_eq!(
            login(&ctx, Some("Nowhere"), &email, GUESS).await,
            StatusCode::UNAUTHORIZED
        );

        // A wrong password for A's admin: one entry in A, none in B.
        assert_eq!(
            login(&ctx, None, &email, GUESS).await,
            StatusCode::UNAUTHORIZED
        );
        let items = wait_for_failures(&ctx, &a, 1).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_entry(&items[0], &email, id_a, "wrong password");
        assert!(failures(&ctx, &b).await.is_empty());

        // The same address is also an admin of B: a refusal without `org` is audited in both
        // organisations, each naming its own admin.
        keyward_server::bootstrap::create_admin(
            &ctx.state.store,
            "B",
            &email,
            Role::Helpdesk,
            "B's own password, not A's",
        )
        .await
        .expect("admin in B");
        let id_b = admin_id(&ctx, &b, &email).await;
        assert_eq!(
            login(&ctx, None, &email, GUESS).await,
            StatusCode::UNAUTHORIZED
        );
        let in_a = wait_for_failures(&ctx, &a, 2).await;
        let in_b = wait_for_failures(&ctx, &b, 1).await;
        assert_entry(&in_a[0], &email, id_a, "wrong password");
        assert_entry(&in_b[0], &email, id_b, "wrong password");

        // A disabled admin with the right password: refused, and audited as disabled.
        let mut tx = ctx.state.store.begin().await.expect("begin");
        tx.update_admin(a.id, id_a, None, Some(true))
            .await
            .expect("disable");
        tx.commit().await.expect("commit");
        assert_eq!(
            login(&ctx, Some("A"), &email, PASSWORD).await,
            StatusCode::UNAUTHORIZED
        );
        let in_a = wait_for_failures(&ctx, &a, 3).await;
        assert_entry(&in_a[0], &email, id_a, "the admin is disabled");

        // A successful sign-in adds no failure.
        let owner = a.emails[&Role::Owner].clone();
        assert_eq!(
            login(&ctx, Some("A"), &owner, PASSWORD).await,
            StatusCode::OK
        );

        // The filter by actor finds the same entries; the unknown addresses left none; the
        // chains of every organisation still verify.
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/audit?actor=admin:{email}&action=auth.login_failed"),
            &a.tokens[&Role::Auditor],
            None,
        )
        .await;
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(3));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(failures(&ctx, &a).await.len(), 3);
        assert_eq!(failures(&ctx, &b).await.len(), 1);
        let report = ctx
            .state
            .store
            .verify_audit()
            .await
            .expect("read")
            .expect("chain intact");
        assert!(report.entries > 0);
    }
}

/// The login limit still applies before anything is checked or audited: past it, even the right
/// password is refused with 429, and the refused attempts add no entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_attempts_are_refused_before_they_are_audited() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let a = org(&ctx, "A").await;
        let email = a.emails[&Role::Helpdesk].clone();
        for i in 0..10 {
            assert_eq!(
                login(&ctx, None, &email, GUESS).await,
                StatusCode::UNAUTHORIZED,
                "attempt {i}"
            );
        }
        wait_for_failures(&ctx, &a, 10).await;
        for _ in 0..3 {
            assert_eq!(
                login(&ctx, None, &email, PASSWORD).await,
                StatusCode::TOO_MANY_REQUESTS
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(failures(&ctx, &a).await.len(), 10);
    }
}
