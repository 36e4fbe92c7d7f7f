//! A user's own pairing tool follows the state of the user's key: suspending it (through any
//! replica) removes it from the tool at once, resuming it shows it again. SQLite (one server),
//! and PostgreSQL with the tool on replica A and the admin acting through replica B.

mod api_common;
mod relay_common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_pair::protocol::ServerMessage;
use keyward_pair::relay::RelayEvent;
use keyward_pair::state::DeviceKey;
use keyward_server::auth::Role;
use keyward_store::testing;
use relay_common::{Replica, connect_tool, ctap, next_event, next_message};
use serde_json::json;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(1);

async fn activate(via: &Replica, token: &str, user: Uuid) -> (Uuid, DeviceKey) {
    let r = via
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}/activation"),
            token,
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let code = r.json()["code"].as_str().expect("code").to_owned();
    let (key, _) = DeviceKey::generate().expect("device key");
    let body = json!({"code": code, "name": "alice's laptop", "public_key": URL_SAFE_NO_PAD.encode(key.public_key())});
    let r = relay_common::post_public(via, "/api/v1/pair/activate", body).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    (
        r.json()["device_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid"),
        key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_tool_loses_a_suspended_key_and_gets_it_back_on_resume() {
    for db in testing::all().await {
        let backend = db.backend();
        let url = db.url.clone();
        let ctx = api_common::ctx(db).await;
        let (a, b) = relay_common::replicas(&ctx, backend, &url).await;
        let org = api_common::org(&ctx, "Alpha").await;
        let token = org.tokens[&Role::Owner].clone();
        let (user, key) = api_common::user_with_key(&ctx, &org, "alice@alpha.test").await;
        let (device_id, device_key) = activate(&b, &token, user).await;
        let mut tool = connect_tool(&a, device_id, device_key);
        assert!(matches!(
            next_event(&mut tool.events, Duration::from_secs(10)).await,
            RelayEvent::Connected { .. }
        ));
        let (m, _) = next_message(&mut tool, Duration::from_secs(2)).await;
        let ServerMessage::Attach { key_id, .. } = m else {
            panic!("{backend:?}: expected attach, got {m:?}")
        };
        assert_eq!(key_id, key.to_string());

        let r = b
            .call(
                Method::POST,
                &format!("/api/v1/keys/{key}/suspend"),
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
        let (m, took) = next_message(&mut tool, WITHIN).await;
        assert!(
            matches!(m, ServerMessage::Detach { ref reason, .. } if reason.contains("suspended")),
            "{backend:?}: {m:?}"
        );
        eprintln!("{backend:?}: suspension reached the user's tool in {took:?}");
        assert_eq!(
            ctap(&mut tool, 1, vec![0x04], Some(key.to_string())).await,
            vec![0x30]
        );

        let r = b
            .call(
                Method::POST,
                &format!("/api/v1/keys/{key}/resume"),
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
        let (m, took) = next_message(&mut tool, WITHIN).await;
        assert!(
            matches!(m, ServerMessage::Attach { ref key_id, .. } if *key_id == key.to_string()),
            "{backend:?}: {m:?}"
        );
        eprintln!("{backend:?}: resumption reached the user's tool in {took:?}");
        assert_eq!(
            ctap(&mut tool, 2, vec![0x04], Some(key.to_string())).await[0],
            0x00
        );
    }
}
