//! API behaviour: bad input is refused with problem+json and writes nothing; sessions need CSRF;
//! login is rate-limited; writes fail closed when the audit log cannot be written; the user, key,
//! CSV and audit flows work end to end.

mod api_common;

use api_common::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_server::auth::Role;
use serde_json::{Value, json};

async fn counts(ctx: &Ctx, org: &Org) -> (usize, usize) {
    let t = &org.tokens[&Role::Owner];
    let users = call(ctx, Method::GET, "/api/v1/users?limit=200", t, None)
        .await
        .json()["items"]
        .as_array()
        .map_or(0, Vec::len);
    let audit = call(ctx, Method::GET, "/api/v1/audit?limit=200", t, None)
        .await
        .json()["items"]
        .as_array()
        .map_or(0, Vec::len);
    (users, audit)
}

fn assert_problem(r: &Resp, status: StatusCode, slug: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.content_type().starts_with("application/problem+json"),
        "content type {}",
        r.content_type()
    );
    let p = r.json();
    assert_eq!(p["type"], format!("https://keyward.dev/problems/{slug}"));
    assert_eq!(p["status"], status.as_u16());
    assert!(p["title"].is_string() && p["detail"].is_string());
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_writes_nothing() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let t = org.tokens[&Role::Owner].clone();
        let before = counts(&ctx, &org).await;
        let post = |ct: &'static str, body: Vec<u8>| {
            request(Method::POST, "/api/v1/users", Some(&t), Some(ct), body)
        };

        assert_problem(
            &send(&ctx.app, post("application/json", b"{\"upn\":".to_vec())).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
        assert_problem(
            &send(&ctx.app, post("application/json", b"{\"upn\": 5}".to_vec())).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        );
        assert_problem(
            &send(
                &ctx.app,
                post(
                    "application/json",
                    br#"{"upn":"a@b.c","admin":true}"#.to_vec(),
                ),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        );
        assert_problem(
            &send(
                &ctx.app,
                post("application/json", br#"{"upn":"no spaces@b.c"}"#.to_vec()),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        );
        assert_problem(
            &send(&ctx.app, post("text/plain", br#"{"upn":"a@b.c"}"#.to_vec())).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        );
        let huge = format!(
            "{{\"upn\":\"a@b.c\",\"display_name\":\"{}\"}}",
            "x".repeat(2 * 1024 * 1024)
        );
        assert_problem(
            &send(&ctx.app, post("application/json", huge.into_bytes())).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        );
        let r = call(&ctx, Method::GET, "/api/v1/users/not-a-uuid", &t, None).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not-found");
        assert_problem(
            &call(&ctx, Method::GET, "/api/v1/users?limit=0", &t, None).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
        assert_problem(
            &call(&ctx, Method::GET, "/api/v1/users?cursor=%%%", &t, None).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
        assert_problem(
            &call(&ctx, Method::GET, "/api/v1/users?bogus=1", &t, None).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
        assert_problem(
            &call(&ctx, Method::GET, "/api/v1/nothing-here", &t, None).await,
            StatusCode::NOT_FOUND,
            "not-found",
        );
        let csv = |body: &str, q: &str| {
            request(
                Method::POST,
                &format!("/api/v1/users/import-csv{q}"),
                Some(&t),
                Some("text/csv"),
                body.as_bytes().to_vec(),
            )
        };
        let big_csv = format!("upn\n{}", "x@y.z\n".repeat(9 * 1024 * 1024 / 6 + 1));
        assert_problem(
            &send(&ctx.app, csv(&big_csv, "")).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        );

        // A CSV with errors reports each line and imports nothing.
        let r = send(
            &ctx.app,
            csv(
                "upn,email,display_name\ngood@a.test,,G\nbad line,,B\n\"broken,,\n",
                "",
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(
            (v["created"].clone(), v["updated"].clone()),
            (json!(0), json!(0))
        );
        let lines: Vec<u64> = v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["line"].as_u64().expect("line"))
            .collect();
        assert_eq!(lines[0], 3, "{v}");
        assert!(lines.len() >= 2, "the broken quote must be reported: {v}");
        assert_eq!(
            counts(&ctx, &org).await,
            before,
            "nothing may be written by refused requests"
        );

        // With skip_invalid the good lines go in; a re-import updates.
        let r = send(
            &ctx.app,
            csv(
                "upn,email,display_name\ngood@a.test,,G\nbad line,,B\n",
                "?skip_invalid=true",
            ),
        )
        .await;
        assert_eq!(
            (
                r.json()["created"].clone(),
                r.json()["errors"][0]["line"].clone()
            ),
            (json!(1), json!(3))
        );
        let r = send(&ctx.app, csv("upn,display_name\ngood@a.test,Renamed\n", "")).await;
        assert_eq!(
            (r.json()["created"].clone(), r.json()["updated"].clone()),
            (json!(0), json!(1))
        );
        let r = call(&ctx, Method::GET, "/api/v1/users?q=good", &t, None).await;
        assert_eq!(r.json()["items"][0]["display_name"], "Renamed");
        assert_eq!(r.json()["items"][0]["source"], "csv");
    }
}

#[tokio::test]
async fn cookie_sessions_need_csrf_and_login_is_rate_limited() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let org = org(&ctx, "A").await;
    let email = org.emails[&Role::Admin].clone();
    let login = |password: &str| {
        let body = json!({"email": email, "password": password}).to_string();
        request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some("application/json"),
            body.into_bytes(),
        )
    };
    let r = send(&ctx.app, login(PASSWORD)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let cookie = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let session = cookie.split(';').next().expect("pair").to_owned();
    let csrf = r.json()["csrf_token"].as_str().expect("csrf").to_owned();
    assert_eq!(r.json()["admin"]["role"], "admin");

    let with_cookie = |m: Method, path: &str, csrf: Option<&str>, body: Option<Value>| {
        let mut b = Request::builder()
            .method(m)
            .uri(path)
            .header("cookie", &session);
        if let Some(c) = csrf {
            b = b.header("x-csrf-token", c);
        }
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        b.header("content-type", "application/json")
            .body(Body::from(body))
            .expect("req")
    };
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(Method::GET, "/api/v1/auth/me", None, None)
        )
        .await
        .status,
        StatusCode::OK
    );
    let user = json!({"upn": "c@a.test"});
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(Method::POST, "/api/v1/users", None, Some(user.clone()))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(
                Method::POST,
                "/api/v1/users",
                Some("wrong"),
                Some(user.clone())
            )
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(Method::POST, "/api/v1/users", Some(&csrf), Some(user))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(Method::POST, "/api/v1/auth/logout", Some(&csrf), None)
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(
            &ctx.app,
            with_cookie(Method::GET, "/api/v1/auth/me", None, None)
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    let r = send(&ctx.app, login("wrong password")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&r.body).contains("wrong password"));
    let mut limited = None;
    for _ in 0..12 {
        let r = send(&ctx.app, login("wrong password")).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("login must be rate-limited");
    assert!(r.headers.get("retry-after").is_some());
    // Even the right password is refused while limited.
    assert_eq!(
        send(&ctx.app, login(PASSWORD)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn admin_writes_fail_closed_without_the_audit_log() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let org = org(&ctx, "A").await;
    let t = org.tokens[&Role::Owner].clone();
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&ctx.db.url)
            .await
            .expect("connect");
        sqlx::query("DROP TABLE audit_log")
            .execute(&mut c)
            .await
            .expect("drop");
    }
    let r = call(
        &ctx,
        Method::POST,
        "/api/v1/users",
        &t,
        Some(json!({"upn": "x@a.test"})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        !String::from_utf8_lossy(&r.body).contains("audit_log"),
        "internal details must not leak"
    );
    let r = call(&ctx, Method::GET, "/api/v1/users?q=x@a.test", &t, None).await;
    assert_eq!(
        r.json()["items"],
        json!([]),
        "the user must not exist without its audit entry"
    );
}

#[tokio::test]
async fn users_keys_credentials_and_audit_flow() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let t = org.tokens[&Role::Owner].clone();
        let (user, key) = user_with_key(&ctx, &org, "flow@a.test").await;
        let u = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/users/{user}"),
            &t,
            None,
        )
        .await
        .json();
        assert_eq!(
            (u["status"].clone(), u["key_id"].clone()),
            (json!("assigned"), json!(key.to_string()))
        );
        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/users/{user}/key"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "one key per user");

        // getInfo through the CTAP endpoint answers CTAP2_OK; getAssertion is refused by policy.
        let ctap = |body: Vec<u8>| {
            request(
                Method::POST,
                &format!("/api/v1/keys/{key}/ctap"),
                Some(&t),
                Some("application/octet-stream"),
                body,
            )
        };
        let r = send(&ctx.app, ctap(vec![0x04])).await;
        assert_eq!(
            (r.status, r.body.first().copied()),
            (StatusCode::OK, Some(0x00))
        );
        let r = send(&ctx.app, ctap(vec![0x02, 0xa0])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(
            r.body.first().copied(),
            Some(0x00),
            "registration-only must refuse getAssertion"
        );

        for (action, status) in [("suspend", "suspended"), ("resume", "active")] {
            let r = call(
                &ctx,
                Method::POST,
                &format!("/api/v1/keys/{key}/{action}"),
                &t,
                None,
            )
            .await;
            assert_eq!(r.json()["status"], status);
        }
        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/keys/{key}/resume"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/keys/{key}/revoke"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.json()["status"], "revoked");
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/users/{user}/credentials"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.json()["items"], json!([]));
        let u = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/users/{user}"),
            &t,
            None,
        )
        .await
        .json();
        assert_eq!(
            (u["status"].clone(), u["key_id"].clone()),
            (json!("new"), json!(null))
        );

        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/users/{user}/activation"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let code = r.json()["code"].as_str().expect("code").to_owned();
        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/users/{user}/disable"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.json()["status"], "disabled");
        let r = call(
            &ctx,
            Method::POST,
            &format!("/api/v1/users/{user}/key"),
            &t,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "disabled users get no key");

        // The audit log holds every action, pages with a cursor, and never the activation code.
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/audit?user_id={user}&limit=2"),
            &t,
            None,
        )
        .await;
        let page = r.json();
        assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
        let cursor = page["next_cursor"].as_str().expect("more pages").to_owned();
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/audit?user_id={user}&limit=200&cursor={cursor}"),
            &t,
            None,
        )
        .await;
        let older: Vec<i64> = r.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect();
        assert!(
            older
                .iter()
                .all(|s| *s < page["items"][1]["seq"].as_i64().expect("seq"))
        );
        let all = call(&ctx, Method::GET, "/api/v1/audit?limit=200", &t, None).await;
        let text = String::from_utf8_lossy(&all.body).to_string();
        for action in [
            "user.create",
            "key.assign",
            "key.suspend",
            "key.resume",
            "key.revoke",
            "user.activation_code",
            "user.disable",
            "key.ctap.get_assertion",
        ] {
            assert!(text.contains(action), "audit lacks {action}");
        }
        assert!(
            !text.contains(&code),
            "the activation code must never be stored or shown again"
        );
        for tok in org.tokens.values() {
            assert!(!text.contains(tok.as_str()));
        }
        let report = ctx.state.store.verify_audit().await.expect("verify");
        assert!(report.is_ok(), "{report:?}");
        let metrics = send(
            &ctx.app,
            request(Method::GET, "/metrics", None, None, vec![]),
        )
        .await;
        let m = String::from_utf8_lossy(&metrics.body).to_string();
        assert!(m.contains("route=\"/api/v1/keys/{id}/ctap\""), "{m}");
        assert!(m.contains("keyward_key_operations_total{op=\"ctap\",result=\"ok\"}"));
    }
}

#[tokio::test]
async fn openapi_document_lists_every_table_route() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let r = send(
        &ctx.app,
        request(Method::GET, "/api/v1/openapi.json", None, None, vec![]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    for spec in keyward_server::api::routes() {
        if spec.path == "/openapi.json" || spec.path.starts_with("/jobs") {
            continue;
        }
        let path = format!("/api/v1{}", spec.path);
        let method = spec.method.as_str().to_lowercase();
        assert!(
            doc["paths"][&path][&method].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }
}

#[tokio::test]
async fn readiness_follows_the_database_and_writes_fail_closed_without_it() {
    let ctx = ctx(keyward_store::testing::sqlite().await).await;
    let org = org(&ctx, "A").await;
    let get = |p: &str| request(Method::GET, p, None, None, vec![]);
    assert_eq!(send(&ctx.app, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(send(&ctx.app, get("/readyz")).await.status, StatusCode::OK);
    ctx.state.store.close().await;
    let r = send(&ctx.app, get("/readyz")).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(
        send(&ctx.app, get("/healthz")).await.status,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
    let started = std::time::Instant::now();
    let r = call(
        &ctx,
        Method::GET,
        "/api/v1/users",
        &org.tokens[&Role::Owner],
        None,
    )
    .await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refusals come within 2 s"
    );
}
