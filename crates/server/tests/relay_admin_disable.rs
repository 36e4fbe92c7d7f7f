//! Disabling an admin takes everything away at once: their delegated session's key leaves their
//! pairing tool within a second (on whichever replica holds it), the tool's connection closes,
//! their API token and cookie session stop working, and it is audited. Demoting an admin to a role
//! that may not use keys ends their delegated sessions but leaves the tool connected. Re-enabling
//! brings none of it back. SQLite (one server), and PostgreSQL with the admin's tool on replica A
//! and the owner acting through replica B.

mod api_common;
mod relay_common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_pair::protocol::{ErrorCode, ServerMessage};
use keyward_pair::relay::{RelayError, RelayEvent};
use keyward_pair::state::{DeviceKey, Home, PairState};
use keyward_server::auth::Role;
use keyward_store::{Backend, Store, testing};
use relay_common::{Replica, Tool, connect_tool, ctap, next_event, next_message};
use serde_json::json;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(1);
const GET_INFO: u8 = 0x04;
const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_NOT_ALLOWED: u8 = 0x30;

async fn connect(via: &Replica, token: &str, user: Uuid) -> Uuid {
    let (status, body) = relay_common::connect_through(via, token, user).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["session_id"]
        .as_str()
        .expect("session id")
        .parse()
        .expect("uuid")
}

async fn patch_admin(via: &Replica, owner: &str, admin: Uuid, body: serde_json::Value) {
    let r = via
        .call(
            Method::PATCH,
            &format!("/api/v1/admins/{admin}"),
            owner,
            Some(body),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

async fn expect_attach(tool: &mut Tool, session: Uuid) {
    let (m, _) = next_message(tool, WITHIN).await;
    assert!(
        matches!(m, ServerMessage::Attach { ref session_id, .. } if *session_id == session.to_string()),
        "expected the attach of {session}, got {m:?}"
    );
}

async fn expect_detach(tool: &mut Tool, session: Uuid, backend: Backend) -> String {
    let (m, took) = next_message(tool, WITHIN).await;
    let ServerMessage::Detach { session_id, reason } = m else {
        panic!("{backend:?}: expected detach, got {m:?}");
    };
    assert_eq!(session_id, session.to_string());
    eprintln!("{backend:?}: detach ({reason}) reached the admin's tool in {took:?}");
    reason
}

/// Logs the admin in with their password and returns the session cookie (`name=value`).
async fn cookie_login(via: &Replica, email: &str) -> String {
    let body = json!({"email": email, "password": api_common::PASSWORD}).to_string();
    let r = api_common::send(
        &via.app,
        api_common::request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some("application/json"),
            body.into_bytes(),
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned()
}

async fn me_with_cookie(via: &Replica, cookie: &str) -> StatusCode {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/auth/me")
        .header("cookie", cookie)
        .body(Body::empty())
        .expect("request");
    api_common::send(&via.app, req).await.status
}

/// Registers a pairing tool for the admin holding `token` (through `via`) and keeps its key in
/// `home`, so that the same device can connect again later; connects it to `to`.
async fn admin_tool_in(home: &Home, via: &Replica, token: &str, to: &Replica) -> Tool {
    let (key, pkcs8) = DeviceKey::generate().expect("device key");
    let registered = relay_common::register_admin_device(via, token, &key).await;
    let state = PairState {
        server: format!("http://{}", to.addr),
        device_id: registered.device_id.clone(),
        principal: registered.principal,
        cert_pin: None,
    };
    home.save(&pkcs8, &state).expect("save");
    let mut tool = connect_again(home, to);
    relay_common::expect_connected(&mut tool).await;
    tool
}

/// The tool saved in `home`, connecting to `to` again (a restarted `keyward-pair run`).
fn connect_again(home: &Home, to: &Replica) -> Tool {
    let (key, state) = home.load().expect("load");
    connect_tool(to, state.device_id.parse().expect("uuid"), key)
}

async fn session_end_reason(store: &Store, org: Uuid, session: Uuid) -> Option<String> {
    store
        .delegated_session(org, session)
        .await
        .expect("db")
        .expect("session row")
        .end_reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabling_an_admin_takes_their_key_tool_token_and_cookie_away_at_once() {
    for db in testing::all().await {
        let backend = db.backend();
        let url = db.url.clone();
        let ctx = api_common::ctx(db).await;
        let (a, b) = relay_common::replicas(&ctx, backend, &url).await;
        let store = ctx.state.store.clone();
        let org = api_common::org(&ctx, "Alpha").await;
        let owner = org.tokens[&Role::Owner].clone();
        let admin_token = org.tokens[&Role::Admin].clone();
        let admin_id: Uuid = b
            .call(Method::GET, "/api/v1/auth/me", &admin_token, None)
            .await
            .json()["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        let (u1, k1) = api_common::user_with_key(&ctx, &org, "u1@alpha.test").await;
        let (u2, k2) = api_common::user_with_key(&ctx, &org, "u2@alpha.test").await;
        let cookie = cookie_login(&a, &org.emails[&Role::Admin]).await;
        assert_eq!(me_with_cookie(&b, &cookie).await, StatusCode::OK);

        // The admin's tool is on A; the owner acts through B.
        let dir = tempfile::tempdir().expect("tmp");
        let home = Home::resolve(Some(dir.path().join("pair"))).expect("home");
        let mut tool = admin_tool_in(&home, &b, &admin_token, &a).await;

        // Demoted to auditor: the session ends and the key leaves the tool, which stays connected.
        let s1 = connect(&b, &admin_token, u1).await;
        expect_attach(&mut tool, s1).await;
        assert_eq!(
            ctap(&mut tool, 1, vec![GET_INFO], Some(k1.to_string())).await[0],
            CTAP2_OK
        );
        patch_admin(&b, &owner, admin_id, json!({"role": "auditor"})).await;
        let reason = expect_detach(&mut tool, s1, backend).await;
        assert!(reason.contains("role"), "{reason}");
        assert!(
            session_end_reason(&store, org.id, s1)
                .await
                .is_some_and(|r| r.contains("role")),
            "{backend:?}: the demoted admin's session ended in the database"
        );
        assert_eq!(
            ctap(&mut tool, 2, vec![GET_INFO], None).await,
            vec![CTAP2_ERR_NOT_ALLOWED],
            "{backend:?}: the tool is still connected, with nothing to show"
        );
        let r = b
            .call(
                Method::POST,
                &format!("/api/v1/users/{u1}/connect"),
                &admin_token,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "auditors may not Connect");

        // Back to admin, Connect again, then disabled while a key operation is in flight.
        patch_admin(&b, &owner, admin_id, json!({"role": "admin"})).await;
        let s2 = connect(&b, &admin_token, u2).await;
        expect_attach(&mut tool, s2).await;
        tool.client
            .send(keyward_pair::protocol::ClientMessage::Ctap {
                id: 3,
                payload: vec![GET_INFO],
                user_present: true,
                key_id: Some(k2.to_string()),
            });
        let started = Instant::now();
        patch_admin(&b, &owner, admin_id, json!({"disabled": true})).await;
        // Whatever answer the in-flight request got, the key leaves and the connection closes.
        let mut detached = false;
        loop {
            match next_event(&mut tool.events, WITHIN).await {
                RelayEvent::Message(ServerMessage::Keepalive { .. })
                | RelayEvent::Message(ServerMessage::CtapResult { .. }) => {}
                RelayEvent::Message(ServerMessage::Detach { session_id, reason }) => {
                    assert_eq!(session_id, s2.to_string());
                    assert_eq!(reason, "admin disabled");
                    detached = true;
                }
                RelayEvent::Fatal(RelayError::Rejected { code, message }) => {
                    assert_eq!(code, ErrorCode::Revoked, "{message}");
                    break;
                }
                other => panic!("{backend:?}: expected detach and close, got {other:?}"),
            }
        }
        assert!(detached, "{backend:?}: the key left before the tool closed");
        eprintln!(
            "{backend:?}: disabling reached the admin's tool (detach and close) in {:?}",
            started.elapsed()
        );
        assert_eq!(
            session_end_reason(&store, org.id, s2).await.as_deref(),
            Some("admin disabled")
        );
        for r in [&a, &b] {
            let me = r
                .call(Method::GET, "/api/v1/auth/me", &admin_token, None)
                .await;
            assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{backend:?}: token");
            assert_eq!(
                me_with_cookie(r, &cookie).await,
                StatusCode::UNAUTHORIZED,
                "{backend:?}: cookie"
            );
        }
        let audit = relay_common::audit(&store, org.id, "admin.update").await;
        let disabled = audit
            .iter()
            .find(|e| e.detail["disabled"] == true)
            .expect("the disabling is audited");
        assert_eq!(disabled.target, format!("admin:{admin_id}"));
        assert_eq!(disabled.detail["sessions_ended"], json!([s2]));
        assert_eq!(disabled.detail["tools_closed"], json!([tool.device_id]));

        // While disabled, the tool is refused at login (on either replica).
        for to in [&a, &b] {
            let mut again = connect_again(&home, to);
            match next_event(&mut again.events, Duration::from_secs(10)).await {
                RelayEvent::Fatal(RelayError::Rejected { code, .. }) => {
                    assert_eq!(code, ErrorCode::Revoked)
                }
                other => panic!("{backend:?}: expected the refusal, got {other:?}"),
            }
        }

        // Re-enabled: no session, token or cookie comes back.
        patch_admin(&b, &owner, admin_id, json!({"disabled": false})).await;
        let mut again = connect_again(&home, &a);
        assert!(matches!(
            next_event(&mut again.events, Duration::from_secs(10)).await,
            RelayEvent::Connected { .. }
        ));
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match again.events.recv().await {
                    Some(RelayEvent::Message(ServerMessage::Keepalive { .. })) => continue,
                    other => return other,
                }
            }
        })
        .await
        {
            panic!("{backend:?}: the re-enabled admin's tool shows nothing, but got {got:?}");
        }
        assert!(
            store
                .open_delegated_sessions_of_device(tool.device_id)
                .await
                .expect("db")
                .is_empty(),
            "{backend:?}: no session is resurrected"
        );
        let me = b
            .call(Method::GET, "/api/v1/auth/me", &admin_token, None)
            .await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "the token was deleted");
        assert_eq!(me_with_cookie(&a, &cookie).await, StatusCode::UNAUTHORIZED);
    }
}
