//! Admin passkeys end to end through the router: registration and sign-in ceremonies verified by
//! webauthn_rp against a software authenticator, on SQLite and PostgreSQL.

mod api_common;
mod auth_common;

use api_common::*;
use auth_common::*;
use axum::http::{Method, StatusCode};
use keyward_server::auth::Role;
use serde_json::{Value, json};

async fn public(ctx: &Ctx, path: &str, body: Value) -> Resp {
    send(
        &ctx.app,
        request(
            Method::POST,
            path,
            None,
            Some("application/json"),
            serde_json::to_vec(&body).expect("json"),
        ),
    )
    .await
}

/// Registers a passkey for the admin behind `token`; returns the authenticator and the row id.
async fn register(ctx: &Ctx, token: &str, name: &str) -> (SoftPasskey, String) {
    let r = call(
        ctx,
        Method::POST,
        "/api/v1/account/passkeys/begin",
        token,
        Some(json!({})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (key, response) = SoftPasskey::create(&r.json(), ORIGIN);
    let r = call(
        ctx,
        Method::POST,
        "/api/v1/account/passkeys",
        token,
        Some(json!({"name": name, "credential": response})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    (key, r.json()["id"].as_str().expect("id").to_owned())
}

async fn sign_in_options(ctx: &Ctx, body: Value) -> Value {
    let r = public(ctx, "/api/v1/auth/passkey/begin", body).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let options = r.json();
    assert_eq!(options["publicKey"]["rpId"], RP_ID);
    assert_eq!(options["publicKey"]["userVerification"], "required");
    options
}

async fn audit_actions(ctx: &Ctx, owner: &str) -> Vec<(String, Value)> {
    let r = call(ctx, Method::GET, "/api/v1/audit?limit=200", owner, None).await;
    r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["detail"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_role_registers_a_passkey_and_signs_in_with_it() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        for role in Role::ALL {
            let token = &org.tokens[&role];
            let (mut key, id) = register(&ctx, token, "Laptop").await;
            let list = call(&ctx, Method::GET, "/api/v1/account/passkeys", token, None).await;
            assert_eq!(list.json()["items"][0]["id"], id.as_str(), "{role:?}");
            assert_eq!(list.json()["items"][0]["name"], "Laptop");
            for _ in 0..2 {
                let options = sign_in_options(&ctx, json!({})).await;
                let r = public(&ctx, "/api/v1/auth/passkey/finish", key.get(&options)).await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{role:?}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.json()["admin"]["email"], org.emails[&role].as_str());
                assert!(
                    r.json()["csrf_token"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("kwc_"))
                );
                let cookie = r.headers["set-cookie"].to_str().expect("cookie");
                assert!(cookie.starts_with("keyward_session=kws_") && cookie.contains("HttpOnly"));
            }
            let list = call(&ctx, Method::GET, "/api/v1/account/passkeys", token, None).await;
            assert!(list.json()["items"][0]["last_used_at"].is_string());
        }
        let actions = audit_actions(&ctx, &org.tokens[&Role::Owner]).await;
        assert_eq!(
            actions
                .iter()
                .filter(|(a, _)| a == "admin.passkey.register")
                .count(),
            4
        );
        assert_eq!(
            actions
                .iter()
                .filter(|(a, d)| a == "auth.login" && d["method"] == "passkey")
                .count(),
            8
        );
    }
}

#[tokio::test]
async fn ceremonies_are_single_use_and_counters_must_grow() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        // A registration response cannot be submitted twice.
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys/begin",
            owner,
            Some(json!({})),
        )
        .await;
        let (mut key, response) = SoftPasskey::create(&r.json(), ORIGIN);
        let body = json!({"name": "Key", "credential": response});
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys",
            owner,
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys",
            owner,
            Some(body),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        // An assertion cannot be replayed: its challenge is spent.
        let options = sign_in_options(&ctx, json!({})).await;
        let assertion = key.get(&options);
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", assertion.clone())
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", assertion)
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        // A fresh challenge with a counter that did not grow (a cloned authenticator) is refused.
        let options = sign_in_options(&ctx, json!({})).await;
        let stale = key.assert_with_counter(&options, key.counter);
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", stale)
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let options = sign_in_options(&ctx, json!({})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", key.get(&options))
                .await
                .status,
            StatusCode::OK
        );
        // A response for another origin (a phishing site relaying the challenge) is refused.
        let options = sign_in_options(&ctx, json!({})).await;
        key.origin = "http://localhost:9999".into();
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let failures = audit_actions(&ctx, owner)
            .await
            .into_iter()
            .filter(|(a, _)| a == "auth.login_failed")
            .count();
        assert_eq!(
            failures, 3,
            "every refused sign-in of a known passkey is audited"
        );
        let refused = audit_actions(&ctx, owner)
            .await
            .into_iter()
            .filter(|(a, _)| a == "admin.passkey.register_failed")
            .count();
        assert_eq!(refused, 1);
    }
}

/// Pushes every stored ceremony's expiry into the past, as if five minutes had gone by.
async fn expire_ceremonies(db: &keyward_store::testing::TestDb) {
    match db.backend() {
        keyward_store::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("sqlite");
            sqlx::query("UPDATE webauthn_ceremonies SET expires_at = 0")
                .execute(&pool)
                .await
                .expect("update");
            pool.close().await;
        }
        keyward_store::Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("postgres");
            sqlx::query("UPDATE webauthn_ceremonies SET expires_at = 0")
                .execute(&pool)
                .await
                .expect("update");
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn expired_ceremonies_are_refused() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys/begin",
            owner,
            Some(json!({})),
        )
        .await;
        let (_, response) = SoftPasskey::create(&r.json(), ORIGIN);
        expire_ceremonies(&ctx.db).await;
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys",
            owner,
            Some(json!({"credential": response})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(String::from_utf8_lossy(&r.body).contains("expired"));

        let (mut key, _) = register(&ctx, owner, "Key").await;
        let options = sign_in_options(&ctx, json!({})).await;
        expire_ceremonies(&ctx.db).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let expired = audit_actions(&ctx, owner)
            .await
            .into_iter()
            .filter(|(a, d)| a == "auth.login_failed" && d["reason"] == "the ceremony expired")
            .count();
        assert_eq!(expired, 1);
    }
}

#[tokio::test]
async fn passkeys_stay_within_their_admin_and_organisation() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let a = org(&ctx, "A").await;
        let b = org(&ctx, "B").await;
        let (mut b_key, b_id) = register(&ctx, &b.tokens[&Role::Owner], "B's key").await;
        // A sign-in restricted to organisation A refuses B's passkey (and says nothing more).
        let options = sign_in_options(&ctx, json!({"org": "A"})).await;
        let r = public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // Restricted to B it works.
        let options = sign_in_options(&ctx, json!({"org": "B"})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options))
                .await
                .status,
            StatusCode::OK
        );
        // An unknown organisation is not revealed: the ceremony starts, no passkey matches.
        let options = sign_in_options(&ctx, json!({"org": "Nope"})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        // Restricted to an e-mail address, only that admin's passkey is accepted.
        let a_owner_email = a.emails[&Role::Owner].clone();
        let options = sign_in_options(&ctx, json!({"email": a_owner_email})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let b_owner_email = b.emails[&Role::Owner].clone();
        let options = sign_in_options(&ctx, json!({"email": b_owner_email, "org": "B"})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options))
                .await
                .status,
            StatusCode::OK
        );
        let options = sign_in_options(&ctx, json!({"email": "nobody@b.test"})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", b_key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        // A's owner cannot see, rename or delete B's passkey, nor another admin's in A.
        let a_owner = &a.tokens[&Role::Owner];
        let list = call(&ctx, Method::GET, "/api/v1/account/passkeys", a_owner, None).await;
        assert_eq!(list.json()["items"], json!([]));
        let path = format!("/api/v1/account/passkeys/{b_id}");
        assert_eq!(
            call(&ctx, Method::DELETE, &path, a_owner, None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(
                &ctx,
                Method::PATCH,
                &path,
                a_owner,
                Some(json!({"name": "x"}))
            )
            .await
            .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&ctx, Method::DELETE, &path, &b.tokens[&Role::Auditor], None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        // A registration ceremony begun by one admin cannot be finished by another.
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys/begin",
            a_owner,
            Some(json!({})),
        )
        .await;
        let (_, response) = SoftPasskey::create(&r.json(), ORIGIN);
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys",
            &b.tokens[&Role::Admin],
            Some(json!({"credential": response})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        // Failures are audited in the passkey's organisation, not in the one that was asked for.
        let b_failures = audit_actions(&ctx, &b.tokens[&Role::Owner])
            .await
            .into_iter()
            .filter(|(a, d)| {
                a == "auth.login_failed" && d["reason"] == "passkey of another organisation"
            })
            .count();
        assert_eq!(b_failures, 1);
        let wrong_admin = audit_actions(&ctx, &b.tokens[&Role::Owner])
            .await
            .into_iter()
            .filter(|(a, d)| a == "auth.login_failed" && d["reason"] == "passkey of another admin")
            .count();
        assert_eq!(wrong_admin, 1);
    }
}

#[tokio::test]
async fn disabled_admins_and_deleted_or_unknown_passkeys_cannot_sign_in() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        let (mut helpdesk_key, _) = register(&ctx, &org.tokens[&Role::Helpdesk], "Key").await;
        let (mut owner_key, owner_key_id) = register(&ctx, owner, "Key").await;
        // Disable the helpdesk admin: their passkey stops working at once.
        let admins = call(&ctx, Method::GET, "/api/v1/admins", owner, None)
            .await
            .json();
        let helpdesk = admins["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|a| a["role"] == "helpdesk")
            .expect("helpdesk")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let r = call(
            &ctx,
            Method::PATCH,
            &format!("/api/v1/admins/{helpdesk}"),
            owner,
            Some(json!({"disabled": true})),
        )
        .await;
        assert!(
            r.status.is_success(),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let options = sign_in_options(&ctx, json!({})).await;
        assert_eq!(
            public(
                &ctx,
                "/api/v1/auth/passkey/finish",
                helpdesk_key.get(&options)
            )
            .await
            .status,
            StatusCode::UNAUTHORIZED
        );
        // A deleted passkey no longer signs in; deleting is audited.
        let r = call(
            &ctx,
            Method::DELETE,
            &format!("/api/v1/account/passkeys/{owner_key_id}"),
            owner,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let options = sign_in_options(&ctx, json!({})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", owner_key.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        // A credential the server never saw.
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/account/passkeys/begin",
            owner,
            Some(json!({})),
        )
        .await;
        let (mut stranger, _) = SoftPasskey::create(&r.json(), ORIGIN);
        let options = sign_in_options(&ctx, json!({})).await;
        assert_eq!(
            public(&ctx, "/api/v1/auth/passkey/finish", stranger.get(&options))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        // Garbage is a clear 400, not a 5xx.
        let r = public(&ctx, "/api/v1/auth/passkey/finish", json!({"id": "x"})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.content_type().starts_with("application/problem+json"));
        let actions = audit_actions(&ctx, owner).await;
        assert!(
            actions
                .iter()
                .any(|(a, d)| a == "auth.login_failed" && d["reason"] == "the admin is disabled")
        );
        assert!(actions.iter().any(|(a, _)| a == "admin.passkey.delete"));
    }
}

#[tokio::test]
async fn passkeys_can_be_renamed_and_bad_names_are_refused() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let org = org(&ctx, "A").await;
    let token = &org.tokens[&Role::Auditor];
    let (_, id) = register(&ctx, token, "").await;
    let list = call(&ctx, Method::GET, "/api/v1/account/passkeys", token, None).await;
    assert_eq!(
        list.json()["items"][0]["name"],
        "Passkey",
        "an empty name gets the default"
    );
    let path = format!("/api/v1/account/passkeys/{id}");
    let r = call(
        &ctx,
        Method::PATCH,
        &path,
        token,
        Some(json!({"name": "Phone"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(
        &ctx,
        Method::PATCH,
        &path,
        token,
        Some(json!({"name": "x".repeat(101)})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let list = call(&ctx, Method::GET, "/api/v1/account/passkeys", token, None).await;
    assert_eq!(list.json()["items"][0]["name"], "Phone");
}
