//! Several `keyward serve` replicas on one PostgreSQL database: a pairing tool connected to
//! replica A follows what admins do through replica B — connect, disconnect, key revocation, the
//! admin's logout, expiry, device revocation — within a second, through LISTEN/NOTIFY; a replica
//! whose LISTEN connection drops re-reads the state from the database; Connect through B reports
//! success only once the replica holding the tool acknowledged showing the key, so a replica
//! killed within its lease gets a prompt "did not answer" and leaves no session; a replica that
//! stopped heartbeating stops looking online after its lease. PostgreSQL only (SQLite is one
//! process); skipped loudly without KEYWARD_TEST_POSTGRES_URL, failing under CI.

mod api_common;
mod relay_common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use keyward_pair::protocol::{ErrorCode, ServerMessage};
use keyward_pair::relay::{RelayError, RelayEvent};
use keyward_server::auth::Role;
use keyward_server::relay::AttachOutcome;
use keyward_server::relay::protocol::SessionMode;
use keyward_store::{NewDelegatedSession, Store, testing};
use relay_common::{Replica, admin_tool, connect_through, ctap, next_event, next_message, replica};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(1);
const GET_INFO: u8 = 0x04;
const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_NOT_ALLOWED: u8 = 0x30;

struct Cluster {
    ctx: api_common::Ctx,
    a: Replica,
    b: Replica,
    org: api_common::Org,
}

async fn cluster() -> Option<Cluster> {
    let db = testing::postgres().await?;
    let url = db.url.clone();
    let ctx = api_common::ctx(db).await;
    let a = replica(&ctx.state, Store::connect(&url).await.expect("A's pool")).await;
    let b = replica(&ctx.state, Store::connect(&url).await.expect("B's pool")).await;
    assert_ne!(a.hub().replica_id(), b.hub().replica_id());
    let org = api_common::org(&ctx, "Alpha").await;
    Some(Cluster { ctx, a, b, org })
}

fn id_of(v: &serde_json::Value, field: &str) -> Uuid {
    v[field].as_str().expect("id").parse().expect("uuid")
}

async fn expect_attach(tool: &mut relay_common::Tool, key: Uuid) -> Uuid {
    let (m, took) = next_message(tool, WITHIN).await;
    let ServerMessage::Attach {
        key_id, session_id, ..
    } = m
    else {
        panic!("expected attach, got {m:?}");
    };
    assert_eq!(key_id, key.to_string());
    eprintln!("attach reached the tool on the other replica in {took:?}");
    session_id.parse().expect("uuid")
}

async fn expect_detach(tool: &mut relay_common::Tool, session: Uuid, within: Duration) -> String {
    let (m, took) = next_message(tool, within).await;
    let ServerMessage::Detach { session_id, reason } = m else {
        panic!("expected detach, got {m:?}");
    };
    assert_eq!(session_id, session.to_string());
    eprintln!("detach ({reason}) reached the tool on the other replica in {took:?}");
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_on_replica_a_follows_what_admins_do_through_replica_b() {
    let Some(c) = cluster().await else { return };
    let token = c.org.tokens[&Role::Owner].clone();
    let (u1, k1) = api_common::user_with_key(&c.ctx, &c.org, "u1@alpha.test").await;
    let (u2, k2) = api_common::user_with_key(&c.ctx, &c.org, "u2@alpha.test").await;
    let (u3, k3) = api_common::user_with_key(&c.ctx, &c.org, "u3@alpha.test").await;

    // The admin's tool registers through B and connects to A.
    let mut tool = admin_tool(&c.b, &token, &c.a).await;
    let devices =
        c.b.call(Method::GET, "/api/v1/pair/devices", &token, None)
            .await;
    assert_eq!(devices.status, StatusCode::OK);
    let items = devices.json()["items"].as_array().expect("items").clone();
    assert!(
        items
            .iter()
            .any(|d| d["id"] == tool.device_id.to_string() && d["online"] == true),
        "B sees the tool connected to A as online: {items:?}"
    );

    // Connect through B: the key appears on the tool at A, and CTAP runs there.
    let (status, body) = connect_through(&c.b, &token, u1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let s1 = expect_attach(&mut tool, k1).await;
    assert_eq!(s1, id_of(&body, "session_id"));
    let info = ctap(&mut tool, 1, vec![GET_INFO], Some(k1.to_string())).await;
    assert_eq!(
        info[0], CTAP2_OK,
        "getInfo through A on the key connected through B"
    );

    // Disconnect through B.
    let r =
        c.b.call(
            Method::DELETE,
            &format!("/api/v1/users/{u1}/connect"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    expect_detach(&mut tool, s1, WITHIN).await;
    let refused = ctap(&mut tool, 2, vec![GET_INFO], Some(k1.to_string())).await;
    assert_eq!(refused, vec![CTAP2_ERR_NOT_ALLOWED]);

    // Key revocation through B.
    let (status, body) = connect_through(&c.b, &token, u2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let s2 = expect_attach(&mut tool, k2).await;
    let r =
        c.b.call(
            Method::POST,
            &format!("/api/v1/keys/{k2}/revoke"),
            &token,
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let reason = expect_detach(&mut tool, s2, WITHIN).await;
    assert!(reason.contains("revoked"), "{reason}");
    let session =
        c.b.state
            .store
            .delegated_session(c.org.id, s2)
            .await
            .expect("db")
            .expect("row");
    assert!(
        session.ended_at.is_some(),
        "the revoked key's session ended"
    );

    // The admin's logout through B.
    let (status, body) = connect_through(&c.b, &token, u3).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let s3 = expect_attach(&mut tool, k3).await;
    let admin_id =
        c.b.state
            .store
            .pair_device(tool.device_id)
            .await
            .expect("db")
            .expect("device")
            .admin_id
            .expect("an admin's device");
    keyward_server::relay::api::end_admin_sessions(
        &c.b.hub(),
        c.org.id,
        admin_id,
        "admin logged out",
    )
    .await
    .expect("logout");
    expect_detach(&mut tool, s3, WITHIN).await;

    // Expiry: a session B starts that expires in 1.5 s ends on A by itself.
    let expires_at = keyward_store::now() + chrono::Duration::milliseconds(1500);
    let mut tx = c.b.state.store.begin().await.expect("tx");
    let (s4, _) = tx
        .insert_delegated_session(&NewDelegatedSession {
            org_id: c.org.id,
            admin_id,
            user_id: u3,
            key_id: k3,
            device_id: tool.device_id,
            expires_at,
        })
        .await
        .expect("session");
    tx.commit().await.expect("commit");
    let attached = keyward_server::relay::Attached {
        session_id: s4.id,
        key_id: k3,
        org_id: c.org.id,
        actor: "admin:test".into(),
        registration_only: true,
        expires_at: Some(expires_at),
    };
    assert_eq!(
        c.b.hub()
            .attach(tool.device_id, attached, SessionMode::Delegated)
            .await
            .expect("notify"),
        AttachOutcome::Shown,
        "A acknowledges the attach"
    );
    assert_eq!(expect_attach(&mut tool, k3).await, s4.id);
    let reason = expect_detach(&mut tool, s4.id, Duration::from_millis(1500) + WITHIN).await;
    assert_eq!(reason, "expired");
    // The replica holding the tool also ends the session in the database (just after the detach).
    let mut ended = None;
    for _ in 0..50 {
        ended =
            c.a.state
                .store
                .delegated_session(c.org.id, s4.id)
                .await
                .expect("db")
                .expect("row")
                .end_reason;
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended.as_deref(), Some("expired"));

    // Device revocation through B closes the tool's connection on A.
    let r =
        c.b.call(
            Method::DELETE,
            &format!("/api/v1/pair/devices/{}", tool.device_id),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    match next_event(&mut tool.events, WITHIN).await {
        RelayEvent::Fatal(RelayError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::Revoked)
        }
        other => panic!("expected the revocation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_lost_its_listen_connection_rereads_the_state() {
    let Some(c) = cluster().await else { return };
    let token = c.org.tokens[&Role::Owner].clone();
    let (u1, k1) = api_common::user_with_key(&c.ctx, &c.org, "u1@alpha.test").await;
    let mut tool = admin_tool(&c.b, &token, &c.a).await;
    let admin_id =
        c.a.state
            .store
            .pair_device(tool.device_id)
            .await
            .expect("db")
            .expect("device")
            .admin_id
            .expect("an admin's device");
    // A answers requests only after it looked for a session to show on connect: once this answer
    // is in, a session written now cannot be picked up by that first look.
    assert_eq!(
        ctap(&mut tool, 1, vec![GET_INFO], None).await,
        vec![CTAP2_ERR_NOT_ALLOWED]
    );

    // A session written while A cannot hear (no notification at all)...
    let mut tx = c.b.state.store.begin().await.expect("tx");
    let (s, _) = tx
        .insert_delegated_session(&NewDelegatedSession {
            org_id: c.org.id,
            admin_id,
            user_id: u1,
            key_id: k1,
            device_id: tool.device_id,
            expires_at: keyward_store::now() + chrono::Duration::minutes(5),
        })
        .await
        .expect("session");
    tx.commit().await.expect("commit");
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), tool.events.recv()).await {
        panic!("nothing reaches the tool without a notification, but it got {got:?}");
    }
    // ...reaches the tool once A's LISTEN connection is cut and comes back.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&c.ctx.db.url)
            .await
            .expect("connect");
        let cut: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("terminate listeners");
        assert!(cut.len() >= 2, "A's and B's listeners were cut: {cut:?}");
    }
    let (m, took) = next_message(&mut tool, Duration::from_secs(10)).await;
    let ServerMessage::Attach { session_id, .. } = m else {
        panic!("expected attach, got {m:?}")
    };
    assert_eq!(session_id, s.id.to_string());
    eprintln!("resync after the LISTEN connection dropped attached the session in {took:?}");

    // And notifications flow again afterwards.
    c.a.hub().ready().await;
    c.b.hub().ready().await;
    let r =
        c.b.call(
            Method::DELETE,
            &format!("/api/v1/users/{u1}/connect"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    expect_detach(&mut tool, s.id, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replica_takes_no_connect_and_stops_looking_online() {
    let Some(c) = cluster().await else { return };
    let token = c.org.tokens[&Role::Admin].clone();
    let (u1, _) = api_common::user_with_key(&c.ctx, &c.org, "u1@alpha.test").await;
    // The admin's tool is registered but its only connection was claimed by a replica that was
    // just killed (kill -9): its heartbeat is fresh, its presence row stands, nobody listens as it.
    let tool = admin_tool(&c.b, &token, &c.a).await;
    drop(tool); // closes the real connection; A releases its presence row
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = &c.b.state.store;
    let dead = Uuid::now_v7();
    let devices =
        c.b.call(Method::GET, "/api/v1/pair/devices", &token, None)
            .await;
    let device_id: Uuid = devices.json()["items"][0]["id"]
        .as_str()
        .expect("a device")
        .parse()
        .expect("uuid");
    let device = store
        .pair_device(device_id)
        .await
        .expect("db")
        .expect("device");
    store.relay_heartbeat(dead).await.expect("replica row");
    store.relay_claim(&device, dead).await.expect("claim");
    // Within its lease the dead replica still looks online, but nobody acknowledges the attach:
    // Connect answers that the tool's server did not answer, within the acknowledgement timeout,
    // and leaves no live session behind.
    let started = std::time::Instant::now();
    let (status, body) = connect_through(&c.b, &token, u1).await;
    let took = started.elapsed();
    eprintln!("connect through B to a tool on a dead replica answered in {took:?}");
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains("did not answer"), "{body}");
    assert!(
        took >= keyward_server::relay::cluster::ATTACH_ACK_TIMEOUT
            && took < keyward_server::relay::cluster::ATTACH_ACK_TIMEOUT + Duration::from_secs(1),
        "answered after the acknowledgement timeout, not a lease later: {took:?}"
    );
    let open = store
        .open_delegated_sessions_of_device(device_id)
        .await
        .expect("db");
    assert!(open.is_empty(), "no live session is left: {open:?}");
    let failed = relay_common::audit(store, c.org.id, "relay.connect_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].target, format!("user:{u1}"));
    assert_eq!(
        failed[0].detail["reason"], "the tool's server did not answer",
        "{failed:?}"
    );
    // Manual provisioning's connection gets the same truthful answer: `tool_offline`.
    let admin = store
        .admin(device.admin_id.expect("an admin's device"))
        .await
        .expect("db")
        .expect("admin");
    let principal = keyward_server::auth::Principal {
        admin_id: admin.id,
        org_id: c.org.id,
        role: Role::Admin,
        email: admin.email,
    };
    let outcome =
        keyward_server::relay::api::try_start_delegated_session(&c.b.state, &principal, u1)
            .await
            .expect("an answer, not an error");
    assert_eq!(outcome.status, "tool_offline", "{outcome:?}");
    assert!(outcome.detail.contains("did not answer"), "{outcome:?}");
    assert!(outcome.session_id.is_none());
    assert!(
        store
            .open_delegated_sessions_of_device(device_id)
            .await
            .expect("db")
            .is_empty()
    );
    assert_eq!(
        relay_common::audit(store, c.org.id, "relay.connect_failed")
            .await
            .len(),
        2
    );
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&c.ctx.db.url)
            .await
            .expect("connect");
        sqlx::query("UPDATE relay_replicas SET heartbeat_at = heartbeat_at - INTERVAL '1 minute' WHERE id = $1")
            .bind(dead)
            .execute(&mut conn)
            .await
            .expect("age the replica");
    }
    // ...after it, the tool is offline: a plain 409 naming keyward-pair.
    let (status, body) = connect_through(&c.b, &token, u1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("keyward-pair"),
        "{body}"
    );
    let devices =
        c.b.call(Method::GET, "/api/v1/pair/devices", &token, None)
            .await;
    assert_eq!(devices.json()["items"][0]["online"], false);
    // And any replica prunes it (and its presence rows) later.
    let before = keyward_store::now() - chrono::Duration::seconds(30);
    assert_eq!(
        store
            .relay_prune_replicas(before, None)
            .await
            .expect("prune"),
        1
    );
}
