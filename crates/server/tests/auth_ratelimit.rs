//! The login rate limit is kept in the database, so two servers on one database share it (on
//! PostgreSQL, replicas; on SQLite, two processes on one file).

mod api_common;

use std::sync::Arc;

use api_common::*;
use axum::http::{Method, StatusCode};
use serde_json::json;

fn login(email: &str, password: &str) -> axum::http::Request<axum::body::Body> {
    request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some("application/json"),
        serde_json::to_vec(&json!({"email": email, "password": password})).expect("json"),
    )
}

#[tokio::test]
async fn two_servers_on_one_database_share_the_login_limit() {
    for db in keyward_store::testing::all().await {
        let url = db.url.clone();
        let first = ctx(db).await;
        let org = org(&first, "A").await;
        let email = org.emails[&keyward_server::auth::Role::Admin].clone();
        // A second server: its own connection pool and limiter on the same database.
        let mut state = first.state.clone();
        state.store = keyward_store::Store::connect(&url)
            .await
            .expect("second pool");
        state.login_limiter = Arc::new(keyward_server::auth::RateLimiter::new(
            10,
            std::time::Duration::from_secs(60),
        ));
        let second = keyward_server::serve::app(state);
        // Ten wrong passwords, alternating between the servers, are all answered normally ...
        for i in 0..10 {
            let app = if i % 2 == 0 { &first.app } else { &second };
            let r = send(app, login(&email, "wrong password")).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        }
        // ... and then both refuse, even the right password, with Retry-After.
        for app in [&first.app, &second] {
            let r = send(app, login(&email, PASSWORD)).await;
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            let wait: u64 = r.headers["retry-after"]
                .to_str()
                .expect("header")
                .parse()
                .expect("secs");
            assert!((1..=60).contains(&wait));
        }
        // Another e-mail address has its own bucket.
        let other = org.emails[&keyward_server::auth::Role::Owner].clone();
        assert_eq!(
            send(&second, login(&other, PASSWORD)).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn the_limit_counts_atomically_under_concurrency() {
    for db in keyward_store::testing::all().await {
        let store = db.store.clone();
        let limiter = Arc::new(keyward_server::auth::RateLimiter::new(
            10,
            std::time::Duration::from_secs(60),
        ));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (store, limiter) = (store.clone(), limiter.clone());
            tasks.push(tokio::spawn(async move {
                limiter.check(&store, "login|ip|x@y").await.is_ok()
            }));
        }
        let mut allowed = 0;
        for t in tasks {
            if t.await.expect("task") {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, 10,
            "exactly the limit passes, however the attempts interleave"
        );
        drop(db);
    }
}
