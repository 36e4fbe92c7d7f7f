//! Admin management: owners add admins and change roles, the last owner cannot be removed, and a
//! disabled admin's token stops working at once.

mod api_common;

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_server::auth::Role;
use serde_json::json;

#[tokio::test]
async fn owners_manage_admins_and_keep_one_owner() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = org.tokens[&Role::Owner].clone();

        let r = call(
            &ctx,
            Method::GET,
            "/api/v1/admins",
            &org.tokens[&Role::Auditor],
            None,
        )
        .await;
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(4));
        assert!(
            !String::from_utf8_lossy(&r.body).contains("argon2"),
            "hashes never leave"
        );

        let body = json!({"email": "new@a.test", "role": "helpdesk", "password": "short"});
        let r = call(&ctx, Method::POST, "/api/v1/admins", &owner, Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body =
            json!({"email": "new@a.test", "role": "superuser", "password": "long enough password"});
        let r = call(&ctx, Method::POST, "/api/v1/admins", &owner, Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown roles are refused"
        );
        let body =
            json!({"email": "new@a.test", "role": "helpdesk", "password": "long enough password"});
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/admins",
            &owner,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["role"], "helpdesk");
        let r = call(&ctx, Method::POST, "/api/v1/admins", &owner, Some(body)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);

        // The only owner can neither demote nor disable themselves.
        let me = call(&ctx, Method::GET, "/api/v1/auth/me", &owner, None)
            .await
            .json();
        let me_path = format!("/api/v1/admins/{}", me["id"].as_str().expect("id"));
        let r = call(
            &ctx,
            Method::PATCH,
            &me_path,
            &owner,
            Some(json!({"role": "admin"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        let r = call(
            &ctx,
            Method::PATCH,
            &me_path,
            &owner,
            Some(json!({"disabled": true})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT);

        // Disabling an admin revokes their token immediately.
        let admin_token = org.tokens[&Role::Admin].clone();
        let admin_id = call(&ctx, Method::GET, "/api/v1/auth/me", &admin_token, None)
            .await
            .json()["id"]
            .clone();
        let path = format!("/api/v1/admins/{}", admin_id.as_str().expect("id"));
        let r = call(
            &ctx,
            Method::PATCH,
            &path,
            &owner,
            Some(json!({"disabled": true})),
        )
        .await;
        assert_eq!(r.json()["disabled"], true);
        let r = call(&ctx, Method::GET, "/api/v1/users", &admin_token, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        let audit = call(
            &ctx,
            Method::GET,
            "/api/v1/audit?action=admin.update",
            &owner,
            None,
        )
        .await
        .json();
        assert_eq!(audit["items"].as_array().map(Vec::len), Some(1));
    }
}
