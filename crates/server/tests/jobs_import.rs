//! Entra import jobs against the Graph simulator over loopback HTTP: a 10,000-user first import
//! through paging, an incremental (delta) import after users are added, changed and removed, and
//! bad settings that must fail clearly without writing anything.

mod api_common;

use std::sync::Arc;
use std::time::Duration;

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_graph_sim::{RunningSim, SimConfig};
use keyward_server::auth::Role;
use keyward_server::directories::{DirectoryDeps, ImportKind};
use keyward_server::jobs::{JobRunner, RunnerConfig};
use keyward_store::UserFilter;
use keyward_store::testing::{self, TestDb};
use serde_json::{Value, json};
use uuid::Uuid;

fn start_runner(ctx: &Ctx) -> tokio::task::JoinHandle<()> {
    let cfg = RunnerConfig {
        poll: Duration::from_millis(50),
        single_process: true,
        ..RunnerConfig::default()
    };
    let mut runner = JobRunner::new(ctx.state.store.clone(), cfg);
    runner.register(Arc::new(ImportKind::new(DirectoryDeps {
        store: ctx.state.store.clone(),
        vault: ctx.state.vault.clone(),
    })));
    Arc::new(runner).spawn(std::future::pending())
}

async fn create_directory(ctx: &Ctx, org: &Org, sim: &RunningSim, secret: &str) -> Uuid {
    let cfg = sim.control.simulator().config().clone();
    let body = json!({
        "name": "Contoso", "tenant_id": cfg.tenant_id, "client_id": cfg.client_id, "client_secret": secret,
        "authority_url": sim.url(), "graph_url": sim.url(),
    });
    let r = call(
        ctx,
        Method::POST,
        "/api/v1/directories/entra",
        &org.tokens[&Role::Owner],
        Some(body),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        !String::from_utf8_lossy(&r.body).contains(secret),
        "the secret is never returned"
    );
    r.json()["id"].as_str().expect("id").parse().expect("uuid")
}

async fn import(ctx: &Ctx, org: &Org, dir: Uuid, body: Option<Value>) -> Value {
    let r = call(
        ctx,
        Method::POST,
        &format!("/api/v1/directories/{dir}/import"),
        &org.tokens[&Role::Admin],
        body,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let job = r.json()["job_id"].as_str().expect("job id").to_owned();
    for _ in 0..2400 {
        let r = call(
            ctx,
            Method::GET,
            &format!("/api/v1/jobs/{job}?limit=1"),
            &org.tokens[&Role::Auditor],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let j = r.json();
        if matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled")) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("import did not finish");
}

async fn users(ctx: &Ctx, org: &Org) -> Vec<keyward_store::UserRecord> {
    let f = UserFilter {
        limit: 100_000,
        ..Default::default()
    };
    ctx.state.store.list_users(org.id, &f).await.expect("users")
}

#[tokio::test]
async fn ten_thousand_users_import_then_delta_brings_only_the_changes() {
    ten_thousand_users_on(testing::sqlite().await).await;
}

/// The same import on PostgreSQL (skipped loudly without `KEYWARD_TEST_POSTGRES_URL`, a failure
/// under CI).
#[tokio::test]
async fn ten_thousand_users_import_then_delta_on_postgresql() {
    if let Some(db) = testing::postgres().await {
        ten_thousand_users_on(db).await;
    }
}

async fn ten_thousand_users_on(db: TestDb) {
    let backend = db.backend();
    let sim = keyward_graph_sim::spawn(SimConfig {
        users: 10_000,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let ctx = ctx(db).await;
    let org = org(&ctx, "Contoso").await;
    let runner = start_runner(&ctx);
    let secret = sim.control.simulator().config().client_secret.clone();
    let dir = create_directory(&ctx, &org, &sim, &secret).await;

    let started = std::time::Instant::now();
    let j = import(&ctx, &org, dir, None).await;
    eprintln!(
        "{backend:?}: first import of 10,000 users: {:?}",
        started.elapsed()
    );
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["result"]["created"], 10_000, "{j}");
    assert_eq!(j["result"]["full"], true);
    assert_eq!(
        (j["total"].as_i64(), j["done"].as_i64()),
        (Some(10_000), Some(10_000))
    );
    let all = users(&ctx, &org).await;
    assert_eq!(all.len(), 10_000);
    assert!(
        all.iter()
            .all(|u| u.source == "entra" && u.external_id.is_some())
    );
    let disabled = all.iter().filter(|u| u.status == "disabled").count();
    assert_eq!(
        disabled, 200,
        "accounts disabled in Entra are disabled here"
    );

    // Changes in the directory: one added, one renamed, one disabled, one deleted.
    let c = &sim.control;
    let added = c.add_user("new.hire@contoso.example", "New Hire");
    let (renamed, _) = c.nth_user(1).expect("user 1");
    let (turned_off, _) = c.nth_user(2).expect("user 2");
    let (deleted, _) = c.nth_user(3).expect("user 3");
    assert!(c.update_user(&renamed, Some("Renamed Person"), None));
    assert!(c.update_user(&turned_off, None, Some(false)));
    assert!(c.remove_user(&deleted));
    let before = c.request_count();

    let j = import(&ctx, &org, dir, None).await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(
        j["result"]["full"], false,
        "the second import is incremental: {j}"
    );
    assert_eq!(j["result"]["created"], 1, "{j}");
    assert!(
        c.request_count() - before < 10,
        "a delta import reads only the changes, not 10,000 users"
    );
    let all = users(&ctx, &org).await;
    let by_ext = |ext: &str| {
        all.iter()
            .find(|u| u.external_id.as_deref() == Some(ext))
            .expect("user")
            .clone()
    };
    assert_eq!(by_ext(&added).upn, "new.hire@contoso.example");
    assert_eq!(
        by_ext(&renamed).display_name.as_deref(),
        Some("Renamed Person")
    );
    assert_eq!(by_ext(&turned_off).status, "disabled");
    assert_eq!(
        by_ext(&deleted).status,
        "disabled",
        "removed from Entra: disabled here, not deleted"
    );
    assert_eq!(all.len(), 10_001);

    // The secret appears nowhere in the audit log.
    let audit = call(
        &ctx,
        Method::GET,
        "/api/v1/audit?limit=200",
        &org.tokens[&Role::Owner],
        None,
    )
    .await;
    assert!(!String::from_utf8_lossy(&audit.body).contains(&secret));
    runner.abort();
}

#[tokio::test]
async fn a_wrong_secret_fails_the_import_clearly_and_writes_no_user() {
    for db in testing::all().await {
        a_wrong_secret_fails_the_import_clearly_and_writes_no_user_on(db).await;
    }
}

async fn a_wrong_secret_fails_the_import_clearly_and_writes_no_user_on(db: TestDb) {
    let sim = keyward_graph_sim::spawn(SimConfig {
        users: 50,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let ctx = ctx(db).await;
    let org = org(&ctx, "Contoso").await;
    let runner = start_runner(&ctx);
    let dir = create_directory(&ctx, &org, &sim, "not-the-secret").await;
    let j = import(&ctx, &org, dir, None).await;
    assert_eq!(j["state"], "failed", "{j}");
    let err = j["error"].as_str().expect("error");
    assert!(
        err.contains("could not sign in"),
        "plain-language reason: {err}"
    );
    assert!(!err.contains("not-the-secret"));
    assert!(users(&ctx, &org).await.is_empty(), "nothing half-written");

    // The progress stream of a finished job sends its final counts once and ends.
    let id = j["id"].as_str().expect("id");
    let r = call(
        &ctx,
        Method::GET,
        &format!("/api/v1/jobs/{id}/events"),
        &org.tokens[&Role::Helpdesk],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(body.matches("event: progress").count(), 1, "{body}");
    assert!(body.contains("\"state\":\"failed\""), "{body}");
    let r = call(
        &ctx,
        Method::GET,
        &format!("/api/v1/jobs/{}/events", Uuid::now_v7()),
        &org.tokens[&Role::Owner],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = call(
        &ctx,
        Method::POST,
        &format!("/api/v1/directories/{dir}/test"),
        &org.tokens[&Role::Owner],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ok"], false);
    runner.abort();
}

#[tokio::test]
async fn missing_permission_and_malformed_pages_fail_the_import_and_a_retry_recovers() {
    for db in testing::all().await {
        missing_permission_and_malformed_pages_fail_the_import_and_a_retry_recovers_on(db).await;
    }
}

async fn missing_permission_and_malformed_pages_fail_the_import_and_a_retry_recovers_on(
    db: TestDb,
) {
    let sim = keyward_graph_sim::spawn(SimConfig {
        users: 30,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let ctx = ctx(db).await;
    let org = org(&ctx, "Contoso").await;
    let runner = start_runner(&ctx);
    let secret = sim.control.simulator().config().client_secret.clone();
    let dir = create_directory(&ctx, &org, &sim, &secret).await;

    sim.control.set_forbidden(true);
    let j = import(&ctx, &org, dir, None).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("permission")),
        "{j}"
    );
    sim.control.set_forbidden(false);

    sim.control
        .push_fault(keyward_graph_sim::Fault::Malformed, 10);
    let j = import(&ctx, &org, dir, Some(json!({"full": true}))).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot understand")),
        "{j}"
    );
    sim.control.clear_faults();

    // Retrying the failed job runs it again.
    let id = j["id"].as_str().expect("id");
    let r = call(
        &ctx,
        Method::POST,
        &format!("/api/v1/jobs/{id}/retry"),
        &org.tokens[&Role::Admin],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for _ in 0..400 {
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/jobs/{id}"),
            &org.tokens[&Role::Admin],
            None,
        )
        .await;
        if r.json()["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(users(&ctx, &org).await.len(), 30);

    // The directory connection settings are validated up front.
    let r = call(&ctx, Method::POST, "/api/v1/directories/entra", &org.tokens[&Role::Owner], Some(json!({
        "name": "x", "tenant_id": "t", "client_id": "c", "client_secret": "s", "graph_url": "http://graph.example.com"
    }))).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "plain http to a non-loopback host is refused"
    );
    let r = call(
        &ctx,
        Method::POST,
        "/api/v1/directories/entra",
        &org.tokens[&Role::Admin],
        Some(json!({
            "name": "x", "tenant_id": "t", "client_id": "c", "client_secret": "s"
        })),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "only owners register directories"
    );
    runner.abort();
}
