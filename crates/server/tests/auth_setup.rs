//! The first-run set-up link and one-time sign-in links, on SQLite and PostgreSQL.

mod api_common;

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_server::auth::Role;
use keyward_server::bootstrap;
use serde_json::{Value, json};

const BASE: &str = "http://localhost:8080";

async fn public(ctx: &Ctx, method: Method, path: &str, body: Option<Value>) -> Resp {
    let (ct, bytes) = match body {
        Some(b) => (
            Some("application/json"),
            serde_json::to_vec(&b).expect("json"),
        ),
        None => (None, Vec::new()),
    };
    send(&ctx.app, request(method, path, None, ct, bytes)).await
}

fn token_of(link: &str, marker: &str) -> String {
    link.split_once(marker)
        .expect("token in the fragment")
        .1
        .to_owned()
}

fn setup_body(token: &str) -> Value {
    json!({"token": token, "org": "Acme", "email": "owner@acme.test", "password": "a long enough password"})
}

#[tokio::test]
async fn the_setup_link_creates_the_owner_once_and_then_set_up_is_refused() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let store = &ctx.state.store;
        let first = bootstrap::setup_link(store, BASE)
            .await
            .expect("link")
            .expect("no admin yet");
        assert!(
            first.starts_with("http://localhost:8080/setup#token=kwsetup_"),
            "{first}"
        );
        // A restart prints a fresh link; the old one stops working.
        let second = bootstrap::setup_link(store, BASE)
            .await
            .expect("link")
            .expect("no admin yet");
        assert_ne!(first, second);
        let r = public(&ctx, Method::GET, "/api/v1/setup", None).await;
        assert_eq!(r.json(), json!({"needed": true}));

        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/setup",
            Some(setup_body(&token_of(&first, "#token="))),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "the replaced link is refused"
        );
        assert_eq!(
            store.admin_count().await.expect("count"),
            0,
            "nothing was written"
        );
        let token = token_of(&second, "#token=");
        // Bad input is refused before the token is spent.
        let mut short = setup_body(&token);
        short["password"] = json!("short");
        let r = public(&ctx, Method::POST, "/api/v1/setup", Some(short)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let mut unknown = setup_body(&token);
        unknown["role"] = json!("owner");
        let r = public(&ctx, Method::POST, "/api/v1/setup", Some(unknown)).await;
        assert!(r.status.is_client_error());

        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/setup",
            Some(setup_body(&token)),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["admin"]["role"], "owner");
        assert!(
            r.headers["set-cookie"]
                .to_str()
                .expect("cookie")
                .starts_with("keyward_session=kws_")
        );
        let org = store
            .organisation_by_name("Acme")
            .await
            .expect("org")
            .expect("created");
        let owner = store
            .admins_by_email(Some(org.id), "owner@acme.test")
            .await
            .expect("admin");
        assert_eq!(owner.len(), 1);
        assert!(keyward_server::auth::verify_password(
            "a long enough password",
            &owner[0].password_hash
        ));

        // The link is spent, and set-up is over anyway: a clear 409 for any token.
        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/setup",
            Some(setup_body(&token)),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(r.content_type().starts_with("application/problem+json"));
        assert!(String::from_utf8_lossy(&r.body).contains("set-up is done"));
        let r = public(&ctx, Method::GET, "/api/v1/setup", None).await;
        assert_eq!(r.json(), json!({"needed": false}));
        assert!(
            bootstrap::setup_link(store, BASE)
                .await
                .expect("link")
                .is_none()
        );

        // Audited in the new organisation.
        let token = bootstrap::create_token(store, Some("Acme"), "owner@acme.test", "t")
            .await
            .expect("token");
        let audit = call(&ctx, Method::GET, "/api/v1/audit", &token, None)
            .await
            .json();
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert!(
            actions.contains(&"setup.complete") && actions.contains(&"org.create"),
            "{actions:?}"
        );
        assert!(
            audit["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|e| e["action"] == "auth.login" && e["detail"]["method"] == "setup")
        );
    }
}

#[tokio::test]
async fn setup_is_refused_once_an_admin_exists_even_with_a_valid_token() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let store = &ctx.state.store;
    let link = bootstrap::setup_link(store, BASE)
        .await
        .expect("link")
        .expect("no admin");
    // An admin appears another way (the bootstrap CLI) while the link is still unused.
    org(&ctx, "Other").await;
    let r = public(
        &ctx,
        Method::POST,
        "/api/v1/setup",
        Some(setup_body(&token_of(&link, "#token="))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        store
            .organisation_by_name("Acme")
            .await
            .expect("org")
            .is_none()
    );
}

#[tokio::test]
async fn sign_in_links_work_once_and_expire() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let store = &ctx.state.store;
        let email = org.emails[&Role::Helpdesk].clone();
        let link = bootstrap::login_link(store, Some("A"), &email, BASE)
            .await
            .expect("link");
        assert!(
            link.starts_with("http://localhost:8080/sign-in#link=kwlink_"),
            "{link}"
        );
        let token = token_of(&link, "#link=");
        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/auth/link",
            Some(json!({"token": token})),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["admin"]["email"], email.as_str());
        assert_eq!(r.json()["admin"]["role"], "helpdesk");
        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/auth/link",
            Some(json!({"token": token})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a link works once");
        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/auth/link",
            Some(json!({"token": "kwlink_forged"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // An expired link is refused.
        let link = bootstrap::login_link(store, None, &email, BASE)
            .await
            .expect("link");
        expire_tokens(&ctx.db).await;
        let r = public(
            &ctx,
            Method::POST,
            "/api/v1/auth/link",
            Some(json!({"token": token_of(&link, "#link=")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // Unknown admins get no link; issuing one is audited.
        assert!(
            bootstrap::login_link(store, None, "nobody@a.test", BASE)
                .await
                .is_err()
        );
        let audit = call(
            &ctx,
            Method::GET,
            "/api/v1/audit?action=auth.link_issued",
            &org.tokens[&Role::Owner],
            None,
        )
        .await
        .json();
        assert_eq!(audit["items"].as_array().expect("items").len(), 2);
        let logins = call(
            &ctx,
            Method::GET,
            "/api/v1/audit?action=auth.login",
            &org.tokens[&Role::Owner],
            None,
        )
        .await
        .json();
        assert!(
            logins["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|e| e["detail"]["method"] == "link")
        );
    }
}

async fn expire_tokens(db: &keyward_store::testing::TestDb) {
    let sql = "UPDATE admin_one_time_tokens SET expires_at = 0";
    match db.backend() {
        keyward_store::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("sqlite");
            sqlx::query(sql).execute(&pool).await.expect("update");
            pool.close().await;
        }
        keyward_store::Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("postgres");
            sqlx::query(sql).execute(&pool).await.expect("update");
            pool.close().await;
        }
    }
}
