//! An in-test relay server (axum on loopback) that follows `keyward_pair::protocol`: device
//! registration, activation, challenge–response, attach, and a fake "key" that answers each CTAP
//! request with `0x00 ‖ command byte`.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use keyward_pair::enroll::EnrollTarget;
use keyward_pair::protocol::*;
use keyward_pair::relay::{Backoff, RelayConfig, RelayEvent};
use keyward_pair::state::{Home, ServerUrl};
use tokio::sync::{broadcast, mpsc, watch};

pub const TOKEN: &str = "kw_test_token";
pub const CODE: &str = "ACTIVATE-123";

#[derive(Default)]
pub struct Fake {
    pub devices: HashMap<String, (Vec<u8>, bool /* revoked */)>,
    pub next: u32,
    pub connections: u32,
    /// Don't attach a key on connect.
    pub no_attach: bool,
    /// Answer requests with this command byte only after this long.
    pub slow: Option<(u8, Duration)>,
    /// Every CTAP request the "key" saw: (payload, user_present).
    pub seen: Vec<(Vec<u8>, bool)>,
}

#[derive(Clone)]
pub struct App {
    pub fake: Arc<Mutex<Fake>>,
    /// Bumping this ends every open relay connection (a server restart as the tool sees it).
    pub generation: watch::Sender<u32>,
    /// Messages pushed to every authenticated connection (attach/detach).
    pub push: broadcast::Sender<ServerMessage>,
}

async fn register(
    State(app): State<App>,
    headers: HeaderMap,
    Json(req): Json<RegisterDeviceRequest>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut f = app.fake.lock().expect("lock");
    f.next += 1;
    let id = format!("dev-{}", f.next);
    f.devices.insert(id.clone(), (req.public_key, false));
    let principal = Principal::Admin {
        id: "a1".into(),
        email: "admin@example.com".into(),
    };
    (
        StatusCode::CREATED,
        Json(DeviceRegistered {
            device_id: id,
            principal,
        }),
    )
        .into_response()
}

async fn activate(State(app): State<App>, Json(req): Json<ActivateRequest>) -> Response {
    if req.code != CODE {
        return StatusCode::GONE.into_response();
    }
    let mut f = app.fake.lock().expect("lock");
    f.next += 1;
    let id = format!("dev-{}", f.next);
    f.devices.insert(id.clone(), (req.public_key, false));
    let principal = Principal::User {
        id: "u1".into(),
        upn: "alice@example.com".into(),
    };
    (
        StatusCode::CREATED,
        Json(DeviceRegistered {
            device_id: id,
            principal,
        }),
    )
        .into_response()
}

async fn relay(State(app): State<App>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| relay_conn(app, socket))
}

async fn send(ws: &mut WebSocket, m: &ServerMessage) -> bool {
    ws.send(Message::Text(
        serde_json::to_string(m).expect("json").into(),
    ))
    .await
    .is_ok()
}

async fn recv(ws: &mut WebSocket) -> Option<ClientMessage> {
    loop {
        match ws.recv().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

async fn relay_conn(app: App, mut ws: WebSocket) {
    let mut gen_rx = app.generation.subscribe();
    let mut push_rx = app.push.subscribe();
    let Some(ClientMessage::Hello {
        version: 1,
        device_id,
    }) = recv(&mut ws).await
    else {
        return;
    };
    let nonce = vec![7u8; NONCE_LEN];
    send(
        &mut ws,
        &ServerMessage::Challenge {
            nonce: nonce.clone(),
        },
    )
    .await;
    let Some(ClientMessage::Response { signature }) = recv(&mut ws).await else {
        return;
    };
    let known = app
        .fake
        .lock()
        .expect("lock")
        .devices
        .get(&device_id)
        .cloned();
    let Some((public_key, revoked)) = known else {
        send(
            &mut ws,
            &ServerMessage::Error {
                code: ErrorCode::UnknownDevice,
                message: "no such device".into(),
            },
        )
        .await;
        return;
    };
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public_key)
        .verify(&auth_message(&device_id, &nonce), &signature)
        .is_err()
    {
        send(
            &mut ws,
            &ServerMessage::Error {
                code: ErrorCode::BadSignature,
                message: "bad signature".into(),
            },
        )
        .await;
        return;
    }
    if revoked {
        send(
            &mut ws,
            &ServerMessage::Error {
                code: ErrorCode::Revoked,
                message: "revoked".into(),
            },
        )
        .await;
        return;
    }
    app.fake.lock().expect("lock").connections += 1;
    let principal = Principal::Admin {
        id: "a1".into(),
        email: "admin@example.com".into(),
    };
    send(
        &mut ws,
        &ServerMessage::Welcome {
            device_id: device_id.clone(),
            principal,
        },
    )
    .await;
    let no_attach = app.fake.lock().expect("lock").no_attach;
    if !no_attach {
        send(
            &mut ws,
            &ServerMessage::Attach {
                key_id: "k1".into(),
                session_id: "s1".into(),
                mode: SessionMode::Delegated,
                expires_at: None,
            },
        )
        .await;
    }
    loop {
        tokio::select! {
            _ = gen_rx.changed() => return,
            p = push_rx.recv() => if let Ok(p) = p { send(&mut ws, &p).await; },
            m = recv(&mut ws) => match m {
                // The fake "key" echoes the command byte behind a success status.
                Some(ClientMessage::Ctap { id, payload, user_present, .. }) => {
                    let slow = {
                        let mut f = app.fake.lock().expect("lock");
                        f.seen.push((payload.clone(), user_present));
                        f.slow
                    };
                    send(&mut ws, &ServerMessage::Keepalive { id, status: KeepaliveStatus::Processing }).await;
                    if let Some((cmd, d)) = slow && payload.first() == Some(&cmd) {
                        // Pushed messages (a detach) still go out while the "key" works.
                        let done = tokio::time::sleep(d);
                        tokio::pin!(done);
                        loop {
                            tokio::select! {
                                _ = &mut done => break,
                                p = push_rx.recv() => if let Ok(p) = p { send(&mut ws, &p).await; },
                            }
                        }
                    }
                    send(&mut ws, &ServerMessage::CtapResult { id, payload: vec![0x00, payload[0]] }).await;
                }
                Some(ClientMessage::Logout) => {
                    if let Some(d) = app.fake.lock().expect("lock").devices.get_mut(&device_id) {
                        d.1 = true;
                    }
                    send(&mut ws, &ServerMessage::LoggedOut).await;
                    return;
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

pub async fn start_fake() -> (SocketAddr, App) {
    let (generation, _) = watch::channel(0);
    let (push, _) = broadcast::channel(16);
    let app = App {
        fake: Arc::new(Mutex::new(Fake::default())),
        generation,
        push,
    };
    let router = Router::new()
        .route(REGISTER_DEVICE_PATH, post(register))
        .route(ACTIVATE_PATH, post(activate))
        .route(RELAY_PATH, any(relay))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    (addr, app)
}

pub fn target(addr: SocketAddr) -> EnrollTarget {
    EnrollTarget {
        server: ServerUrl::parse(&format!("http://{addr}")).expect("url"),
        cert_pin: None,
        name: "test-pc".into(),
    }
}

pub fn relay_config(home: &Home) -> RelayConfig {
    let (key, state) = home.load().expect("logged in");
    let server = ServerUrl::parse(&state.server).expect("url");
    RelayConfig {
        url: server.relay_url(),
        device_id: state.device_id,
        key: Arc::new(key),
        cert_pin: None,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    }
}

pub async fn next_event(rx: &mut mpsc::Receiver<RelayEvent>) -> RelayEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event within 5 s")
        .expect("relay task alive")
}
