//! The delegated-session length setting through a real relay: Connect lasts 15 minutes by
//! default and no longer than the organisation's setting once an owner shortens it (design.md
//! invariant 1: "15 minutes by default; shorter by setting"). SQLite, and PostgreSQL when
//! configured.

mod api_common;
mod relay_common;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use keyward_server::auth::Role;
use keyward_store::testing;
use relay_common::{admin_tool, connect_through, replica};
use serde_json::json;

/// Connects the admin's tool to `user` and returns how long the session is granted, in seconds.
async fn connect_for(server: &relay_common::Replica, token: &str, user: uuid::Uuid) -> i64 {
    let before = Utc::now();
    let (status, body) = connect_through(server, token, user).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let expires: DateTime<Utc> = body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("time");
    (expires - before).num_seconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_lasts_no_longer_than_the_organisations_setting() {
    for db in testing::all().await {
        let backend = db.backend();
        let ctx = api_common::ctx(db).await;
        let server = replica(&ctx.state, ctx.state.store.clone()).await;
        let org = api_common::org(&ctx, "A").await;
        let (user, _) = api_common::user_with_key(&ctx, &org, "u@a.test").await;
        let owner = org.tokens[&Role::Owner].clone();
        let _tool = admin_tool(&server, &owner, &server).await;

        let granted = connect_for(&server, &owner, user).await;
        assert!(
            (14 * 60..=15 * 60).contains(&granted),
            "{backend:?}: default {granted} s"
        );

        let r = server
            .call(
                Method::PUT,
                "/api/v1/settings",
                &owner,
                Some(json!({"delegated_session_minutes": 3})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let granted = connect_for(&server, &owner, user).await;
        assert!(
            (2 * 60 + 50..=3 * 60).contains(&granted),
            "{backend:?}: setting of 3 min gave {granted} s"
        );
        let sessions = ctx
            .state
            .store
            .open_delegated_sessions_of_user(org.id, user)
            .await
            .expect("db");
        assert_eq!(
            sessions.len(),
            1,
            "{backend:?}: the new session replaced the old"
        );
        let stored = (sessions[0].expires_at - Utc::now()).num_seconds();
        assert!(
            stored <= 3 * 60,
            "{backend:?}: stored expiry {stored} s away"
        );
    }
}
