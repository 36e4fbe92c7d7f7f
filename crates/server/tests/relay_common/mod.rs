//! Shared helpers for the relay tests: real `keyward serve` apps on loopback TCP (one per
//! replica, each with its own store, key-operations engine and relay hub on one database), and
//! real pairing-tool relay clients (`keyward_pair::relay::RelayClient`) logged in as an admin.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_pair::protocol::{ClientMessage, ServerMessage};
use keyward_pair::relay::{Backoff, RelayClient, RelayConfig, RelayEvent};
use keyward_pair::state::DeviceKey;
use keyward_server::api::AppState;
use keyward_server::relay::RelayHub;
use keyward_store::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api_common::{Resp, request, send};

/// One `keyward serve` process's worth of server: its own store (pool), engine and relay hub.
pub struct Replica {
    pub app: axum::Router,
    pub state: AppState,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replica {
    pub fn hub(&self) -> Arc<RelayHub> {
        self.state.relay.clone().expect("relay hub")
    }

    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        let (ct, bytes) = match body {
            Some(v) => (
                Some("application/json"),
                serde_json::to_vec(&v).expect("json"),
            ),
            None => (None, Vec::new()),
        };
        send(&self.app, request(method, path, Some(token), ct, bytes)).await
    }
}

/// A replica like `template` (same vault, settings) but on its own connection pool to `store`'s
/// database, serving on a fresh loopback port.
pub async fn replica(template: &AppState, store: Store) -> Replica {
    let keyops = Arc::new(keyward_server::keyops::KeyOps::new(
        store.clone(),
        template.vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    ));
    let mut state = template.clone();
    state.store = store.clone();
    state.relay = Some(RelayHub::new(store, keyops.clone()));
    state.ctap = Some(keyops);
    serve(state).await
}

/// Two servers on one database: separate replicas (own pools, engines and hubs) on PostgreSQL;
/// on SQLite, which runs as one process, two listeners sharing `ctx`'s hub.
pub async fn replicas(
    ctx: &crate::api_common::Ctx,
    backend: keyward_store::Backend,
    url: &str,
) -> (Replica, Replica) {
    if backend == keyward_store::Backend::Postgres {
        (
            replica(&ctx.state, Store::connect(url).await.expect("A")).await,
            replica(&ctx.state, Store::connect(url).await.expect("B")).await,
        )
    } else {
        (
            serve(ctx.state.clone()).await,
            serve(ctx.state.clone()).await,
        )
    }
}

/// Presses *Connect* on `user`'s page through `via`: the status and the answer.
pub async fn connect_through(via: &Replica, token: &str, user: Uuid) -> (StatusCode, Value) {
    let resp = via
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}/connect"),
            token,
            None,
        )
        .await;
    (resp.status, resp.json())
}

/// Serves `state` (its own relay hub) on a fresh loopback port.
pub async fn serve(state: AppState) -> Replica {
    let hub = state.relay.clone().expect("hub");
    tokio::time::timeout(Duration::from_secs(10), hub.ready())
        .await
        .expect("the replica listens for notifications");
    let app = keyward_server::serve::app(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = app.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            served.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Replica {
        app,
        state,
        addr,
        task,
    }
}

/// A pairing tool: a registered device key and a running relay connection.
pub struct Tool {
    pub device_id: Uuid,
    pub client: RelayClient,
    pub events: mpsc::Receiver<RelayEvent>,
}

/// Registers `key` as a pairing tool of the admin holding `token`, through `via`.
pub async fn register_admin_device(
    via: &Replica,
    token: &str,
    key: &DeviceKey,
) -> keyward_pair::protocol::DeviceRegistered {
    let r = via
        .call(
            Method::POST,
            "/api/v1/pair/devices",
            token,
            Some(json!({"name": "test tool", "public_key": URL_SAFE_NO_PAD.encode(key.public_key())})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).expect("registration")
}

/// Waits until `tool` has logged in to its server.
pub async fn expect_connected(tool: &mut Tool) {
    match next_event(&mut tool.events, Duration::from_secs(10)).await {
        RelayEvent::Connected { .. } => {}
        other => panic!("expected the tool to connect, got {other:?}"),
    }
}

/// Registers a device for the admin holding `token` (through `via`) and connects it to `to`.
pub async fn admin_tool(via: &Replica, token: &str, to: &Replica) -> Tool {
    let (key, _) = DeviceKey::generate().expect("device key");
    let registered = register_admin_device(via, token, &key).await;
    let mut tool = connect_tool(to, registered.device_id.parse().expect("uuid"), key);
    expect_connected(&mut tool).await;
    tool
}

pub fn connect_tool(to: &Replica, device_id: Uuid, key: DeviceKey) -> Tool {
    let (client, events) = RelayClient::spawn(RelayConfig {
        url: format!("ws://{}/api/v1/relay", to.addr),
        device_id: device_id.to_string(),
        key: Arc::new(key),
        cert_pin: None,
        backoff: Backoff::default(),
    });
    Tool {
        device_id,
        client,
        events,
    }
}

pub async fn next_event(events: &mut mpsc::Receiver<RelayEvent>, within: Duration) -> RelayEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("an event in time")
        .expect("the relay client is running")
}

/// The next server message that is not a keepalive, within `within`; with how long it took.
pub async fn next_message(tool: &mut Tool, within: Duration) -> (ServerMessage, Duration) {
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        match next_event(&mut tool.events, left).await {
            RelayEvent::Message(ServerMessage::Keepalive { .. }) => continue,
            RelayEvent::Message(m) => return (m, start.elapsed()),
            other => panic!("expected a server message, got {other:?}"),
        }
    }
}

/// Sends one CTAP request through the tool's relay connection and returns the answer.
pub async fn ctap(tool: &mut Tool, id: u64, payload: Vec<u8>, key_id: Option<String>) -> Vec<u8> {
    tool.client.send(ClientMessage::Ctap {
        id,
        payload,
        user_present: true,
        key_id,
    });
    match next_message(tool, Duration::from_secs(10)).await.0 {
        ServerMessage::CtapResult { id: got, payload } if got == id => payload,
        other => panic!("expected the CTAP result, got {other:?}"),
    }
}

/// Audit entries of `org_id` with `action`.
pub async fn audit(store: &Store, org_id: Uuid, action: &str) -> Vec<keyward_store::AuditEntry> {
    store
        .list_audit(
            org_id,
            &keyward_store::AuditFilter {
                action: Some(action.into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("audit")
}

/// A POST without credentials (the public routes: activation).
pub async fn post_public(to: &Replica, path: &str, body: Value) -> Resp {
    send(
        &to.app,
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
