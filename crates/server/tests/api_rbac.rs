//! Invariant 8: every route is authorised. The matrix is generated from the route table, so a new
//! route is covered the moment it is declared.

mod api_common;

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_server::api::{Permission, routes};
use keyward_server::auth::Role;
use serde_json::json;
use uuid::Uuid;

/// A plausible request for a route: ids of real objects of the caller's organisation and a body
/// of the right kind, so an allowed caller gets past authorisation into the handler.
fn concrete(
    path: &str,
    user: Uuid,
    key: Uuid,
    admin: Uuid,
    n: usize,
) -> (String, Option<&'static str>, Vec<u8>) {
    let p = if path.starts_with("/users/{id}") {
        path.replace("{id}", &user.to_string())
    } else if path.starts_with("/keys/{id}") {
        path.replace("{id}", &key.to_string())
    } else if path.starts_with("/admins/{id}") {
        path.replace("{id}", &admin.to_string())
    } else {
        path.replace("{id}", &Uuid::new_v4().to_string())
    };
    let (ct, body): (Option<&str>, Vec<u8>) = match path {
        "/users" => (
            Some("application/json"),
            json!({"upn": format!("rbac{n}@a.test")})
                .to_string()
                .into_bytes(),
        ),
        "/users/import-csv" => (
            Some("text/csv"),
            format!("upn\ncsv{n}@a.test\n").into_bytes(),
        ),
        "/users/{id}" => (
            Some("application/json"),
            json!({"display_name": "X"}).to_string().into_bytes(),
        ),
        "/keys/assign" => (
            Some("application/json"),
            json!({"user_ids": [user]}).to_string().into_bytes(),
        ),
        "/tokens" => (
            Some("application/json"),
            json!({"name": "t"}).to_string().into_bytes(),
        ),
        "/keys/{id}/ctap" => (Some("application/octet-stream"), vec![0x04]),
        _ => (Some("application/json"), b"{}".to_vec()),
    };
    (format!("/api/v1{p}"), ct, body)
}

async fn admin_id(ctx: &Ctx, token: &str) -> Uuid {
    let me = call(ctx, Method::GET, "/api/v1/auth/me", token, None)
        .await
        .json();
    me["id"].as_str().expect("id").parse().expect("uuid")
}

#[tokio::test]
async fn every_role_on_every_route_gets_exactly_its_permission() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let (user, key) = user_with_key(&ctx, &org, "target@a.test").await;
        let auditor = admin_id(&ctx, &org.tokens[&Role::Auditor]).await;
        let mut n = 0;
        let mut checked = 0;
        for spec in routes() {
            if spec.permission == Permission::Public {
                continue;
            }
            // Unauthenticated callers are refused on every non-public route.
            let (path, ct, body) = concrete(spec.path, user, key, auditor, n);
            let r = send(
                &ctx.app,
                request(spec.method.clone(), &path, None, ct, body),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} {} without credentials",
                spec.method,
                spec.path
            );
            assert!(r.content_type().starts_with("application/problem+json"));

            for role in Role::ALL {
                n += 1;
                let (path, ct, body) = concrete(spec.path, user, key, auditor, n);
                let r = send(
                    &ctx.app,
                    request(
                        spec.method.clone(),
                        &path,
                        Some(&org.tokens[&role]),
                        ct,
                        body,
                    ),
                )
                .await;
                let what = format!(
                    "{:?} {} {} -> {} {}",
                    role,
                    spec.method,
                    spec.path,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                if spec.permission.allows(role) {
                    assert!(
                        !matches!(
                            r.status,
                            StatusCode::UNAUTHORIZED
                                | StatusCode::FORBIDDEN
                                | StatusCode::METHOD_NOT_ALLOWED
                        ) && !r.status.is_server_error(),
                        "allowed but refused or failed: {what}"
                    );
                } else {
                    assert_eq!(
                        r.status,
                        StatusCode::FORBIDDEN,
                        "denied but not 403: {what}"
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 4 * 20,
            "the matrix must cover the whole table, covered {checked}"
        );
    }
}

#[test]
fn the_role_matrix_matches_design_md() {
    use Permission::*;
    use Role::*;
    // auditor: read-only including the audit log; helpdesk: view and help, no audit, no writes.
    assert!(ViewAudit.allows(Auditor) && !ViewAudit.allows(Helpdesk));
    assert!(!ManageUsers.allows(Auditor) && !ManageUsers.allows(Helpdesk));
    assert!(ManageUsers.allows(Admin) && ManageUsers.allows(Owner));
    assert!(IssueActivation.allows(Helpdesk) && !IssueActivation.allows(Auditor));
    assert!(!UseKeys.allows(Helpdesk) && !UseKeys.allows(Auditor));
    // One-time PINs are the helpdesk's "forgot my PIN" path; auditors change nothing.
    assert!(ResetPins.allows(Helpdesk) && ResetPins.allows(Admin) && ResetPins.allows(Owner));
    assert!(!ResetPins.allows(Auditor));
    let pin = routes()
        .into_iter()
        .find(|r| r.path == "/keys/{id}/pin")
        .expect("the one-time PIN route is in the table");
    assert_eq!((pin.method, pin.permission), (Method::POST, ResetPins));
}

#[tokio::test]
async fn another_organisations_objects_answer_404_by_id_and_by_search() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let a = org(&ctx, "A").await;
        let b = org(&ctx, "B").await;
        let (b_user, b_key) = user_with_key(&ctx, &b, "secret-user@b.test").await;
        let b_admin = admin_id(&ctx, &b.tokens[&Role::Helpdesk]).await;
        let owner_a = &a.tokens[&Role::Owner];
        for spec in routes() {
            if !spec.path.contains("{id}") {
                continue;
            }
            let (path, ct, body) = concrete(spec.path, b_user, b_key, b_admin, 0);
            let r = send(
                &ctx.app,
                request(spec.method.clone(), &path, Some(owner_a), ct, body),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{} {} on B's object: {}",
                spec.method,
                path,
                String::from_utf8_lossy(&r.body)
            );
        }
        let r = call(
            &ctx,
            Method::GET,
            "/api/v1/users?q=secret-user",
            owner_a,
            None,
        )
        .await;
        assert_eq!(r.json()["items"], json!([]));
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/audit?user_id={b_user}"),
            owner_a,
            None,
        )
        .await;
        assert_eq!(r.json()["items"], json!([]));
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/keys/assign",
            owner_a,
            Some(json!({"user_ids": [b_user]})),
        )
        .await;
        assert_eq!(
            r.json()["items"][0]["key_id"],
            json!(null),
            "bulk assign must not reach B's user"
        );
        // B's objects are untouched.
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/keys/{b_key}"),
            &b.tokens[&Role::Owner],
            None,
        )
        .await;
        assert_eq!(r.json()["status"], "active");
    }
}
