//! Shared helpers for the API tests: an app on a throwaway database and vault, organisations with
//! one admin (and API token) per role, and a request helper over `tower::ServiceExt::oneshot`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_server::api::AppState;
use keyward_server::auth::{RateLimiter, Role};
use keyward_server::metrics::Metrics;
use keyward_store::testing::TestDb;
use keyward_vault::{KekSource, Vault};
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

pub struct Ctx {
    pub app: Router,
    pub state: AppState,
    pub db: TestDb,
    _dir: tempfile::TempDir,
}

pub async fn ctx(db: TestDb) -> Ctx {
    let dir = tempfile::tempdir().expect("tmp");
    let vault =
        Arc::new(Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("vault"));
    let keyops = Arc::new(keyward_server::keyops::KeyOps::new(
        db.store.clone(),
        vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    ));
    let state = AppState {
        store: db.store.clone(),
        vault,
        metrics: Arc::new(Metrics::default()),
        login_limiter: Arc::new(RateLimiter::new(10, Duration::from_secs(60))),
        session_hours: 1,
        secure_cookies: false,
        aaguid: keyward_server::serve::KEYWARD_AAGUID,
        relay: Some(keyward_server::relay::RelayHub::new(
            db.store.clone(),
            keyops.clone(),
        )),
        ctap: Some(keyops),
        relying_party: Some(Arc::new(
            keyward_server::auth::RelyingParty::from_public_url("http://localhost:8080")
                .expect("relying party"),
        )),
    };
    let app = keyward_server::serve::app(state.clone());
    Ctx {
        app,
        state,
        db,
        _dir: dir,
    }
}

pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub tokens: HashMap<Role, String>,
    pub emails: HashMap<Role, String>,
}

pub const PASSWORD: &str = "a long test password";

/// An organisation with one admin per role, each with an API token.
pub async fn org(ctx: &Ctx, name: &str) -> Org {
    let store = &ctx.state.store;
    let org = keyward_server::bootstrap::create_org(store, name)
        .await
        .expect("org");
    let mut tokens = HashMap::new();
    let mut emails = HashMap::new();
    for role in Role::ALL {
        let email = format!("{}@{}.test", role.as_str(), name.to_lowercase());
        keyward_server::bootstrap::create_admin(store, name, &email, role, PASSWORD)
            .await
            .expect("admin");
        let token = keyward_server::bootstrap::create_token(store, Some(name), &email, "test")
            .await
            .expect("token");
        tokens.insert(role, token);
        emails.insert(role, email);
    }
    Org {
        id: org.id,
        name: name.into(),
        tokens,
        emails,
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// A request with an optional bearer token and a body of the given content type.
pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Body::from(body)).expect("request")
}

pub async fn call(ctx: &Ctx, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
    let (ct, bytes) = match body {
        Some(v) => (
            Some("application/json"),
            serde_json::to_vec(&v).expect("json"),
        ),
        None => (None, Vec::new()),
    };
    send(&ctx.app, request(method, path, Some(token), ct, bytes)).await
}

/// Creates a user with a key in `org` through the API; returns (user id, key id).
pub async fn user_with_key(ctx: &Ctx, org: &Org, upn: &str) -> (Uuid, Uuid) {
    let owner = &org.tokens[&Role::Owner];
    let r = call(
        ctx,
        Method::POST,
        "/api/v1/users",
        owner,
        Some(serde_json::json!({"upn": upn})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let user: Uuid = r.json()["id"].as_str().expect("id").parse().expect("uuid");
    let r = call(
        ctx,
        Method::POST,
        &format!("/api/v1/users/{user}/key"),
        owner,
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let key: Uuid = r.json()["key_id"]
        .as_str()
        .expect("key")
        .parse()
        .expect("uuid");
    (user, key)
}
