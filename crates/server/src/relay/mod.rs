//! The relay hub: pairing tools connect here over a WebSocket, authenticate with their device key,
//! and receive the key they should expose (`attach`) — a user's own key, or the key of a user an
//! admin connected to in a delegated session. CTAP requests from the tool run on the key-operations
//! engine; the protocol is specified in `keyward_pair::protocol` (wire types in [`protocol`]).
//!
//! Serialisation: every request goes through [`RelayKeys::ctap`], i.e. `KeyOps::ctap`, which
//! serialises operations on one key across all connections (per-key mutex plus the row lock), so
//! two tools showing the same key cannot interleave PIN or assertion state. A new attach is the
//! key's power cycle.
//!
//! Policy: a delegated session runs with `Policy { registration_only: true }` (the engine refuses
//! assertions and destructive commands; key-ops records credentials as `via: delegated`,
//! `created_by: <admin>`); a user's own tool runs with the default policy.

pub mod api;
pub mod protocol;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{any, post};
use chrono::{DateTime, Utc};
use keyward_store::{DeviceOwner, PairDeviceRecord, Store};
use tokio::sync::mpsc;
use uuid::Uuid;

use protocol::{
    ClientMessage, ErrorCode, NONCE_LEN, PROTOCOL_VERSION, Principal, ServerMessage, SessionMode,
};

/// Delegated sessions last this long unless configured otherwise (design.md invariant 1).
pub const DEFAULT_DELEGATED_TTL: Duration = Duration::from_secs(15 * 60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CTAP2_ERR_NOT_ALLOWED: u8 = 0x30;
const CTAP2_ERR_OTHER: u8 = 0x7F;

/// The key-operations engine as the relay needs it.
pub trait RelayKeys: Send + Sync {
    /// One CTAP2 message on a key; `registration_only` selects the delegated-session policy.
    fn ctap<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        registration_only: bool,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
    /// Forget the key's volatile state (PIN token, key agreement, cursors): a re-plug.
    fn power_cycle<'a>(&'a self, key_id: Uuid) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl RelayKeys for crate::keyops::KeyOps {
    fn ctap<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        registration_only: bool,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        let policy = keyward_authenticator::Policy {
            registration_only,
            ..Default::default()
        };
        Box::pin(async move {
            crate::keyops::KeyOps::ctap(self, org_id, key_id, actor, policy, request)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn power_cycle<'a>(&'a self, key_id: Uuid) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(crate::keyops::KeyOps::power_cycle(self, key_id))
    }
}

/// What a connected tool currently exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub session_id: Uuid,
    pub key_id: Uuid,
    pub org_id: Uuid,
    /// How the audit log names whoever drives the key: `admin:<email>` or `user:<upn>`.
    pub actor: String,
    pub registration_only: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

struct Conn {
    conn_id: u64,
    org_id: Uuid,
    owner: DeviceOwner,
    tx: mpsc::UnboundedSender<Outbound>,
    attached: Option<Attached>,
}

enum Outbound {
    Send(ServerMessage),
    /// End the connection after sending this.
    Close(ServerMessage),
}

/// Live tool connections, by device id. Shared by the WebSocket handler and the API.
pub struct RelayHub {
    store: Store,
    keys: Arc<dyn RelayKeys>,
    conns: Mutex<HashMap<Uuid, Conn>>,
    next_conn: std::sync::atomic::AtomicU64,
    pub delegated_ttl: Duration,
}

impl RelayHub {
    pub fn new(store: Store, keys: Arc<dyn RelayKeys>) -> Arc<Self> {
        Arc::new(Self {
            store,
            keys,
            conns: Mutex::new(HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            delegated_ttl: DEFAULT_DELEGATED_TTL,
        })
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Conn>> {
        // A panic while holding this lock leaves only a map of channels behind; keep serving.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device id of an admin's tool that is connected right now (the newest if several).
    pub fn online_device_of_admin(&self, org_id: Uuid, admin_id: Uuid) -> Option<Uuid> {
        self.conns()
            .iter()
            .filter(|(_, c)| c.org_id == org_id && c.owner == DeviceOwner::Admin(admin_id))
            .max_by_key(|(_, c)| c.conn_id)
            .map(|(id, _)| *id)
    }

    /// Number of tools connected (for metrics and tests).
    pub fn connected(&self) -> usize {
        self.conns().len()
    }

    /// Shows `attached` on a device's tool (a power cycle of that key). `false` if the tool is
    /// not connected.
    pub async fn attach(&self, device_id: Uuid, attached: Attached, mode: SessionMode) -> bool {
        let msg = ServerMessage::Attach {
            key_id: attached.key_id.to_string(),
            session_id: attached.session_id.to_string(),
            mode,
            expires_at: attached.expires_at.map(|t| t.to_rfc3339()),
        };
        let key_id = attached.key_id;
        {
            let mut conns = self.conns();
            let Some(c) = conns.get_mut(&device_id) else {
                return false;
            };
            c.attached = Some(attached);
            let _ = c.tx.send(Outbound::Send(msg));
        }
        self.keys.power_cycle(key_id).await;
        true
    }

    /// Removes a session's key from whichever tool shows it.
    pub fn detach(&self, device_id: Uuid, session_id: Uuid, reason: &str) {
        let mut conns = self.conns();
        if let Some(c) = conns.get_mut(&device_id)
            && c.attached
                .as_ref()
                .is_some_and(|a| a.session_id == session_id)
        {
            c.attached = None;
            let _ = c.tx.send(Outbound::Send(ServerMessage::Detach {
                session_id: session_id.to_string(),
                reason: reason.to_owned(),
            }));
        }
    }

    /// Closes a device's connection (revocation, logout).
    pub fn disconnect_device(&self, device_id: Uuid, code: ErrorCode, message: &str) {
        if let Some(c) = self.conns().remove(&device_id) {
            let _ = c.tx.send(Outbound::Close(ServerMessage::Error {
                code,
                message: message.to_owned(),
            }));
        }
    }

    /// Ends a delegated session when it expires, unless it ended before.
    fn schedule_expiry(
        self: &Arc<Self>,
        org_id: Uuid,
        device_id: Uuid,
        session_id: Uuid,
        at: DateTime<Utc>,
    ) {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            hub.detach(device_id, session_id, "expired");
            if let Ok(mut tx) = hub.store.begin().await
                && let Ok(ended) = tx
                    .end_delegated_session(org_id, session_id, "expired")
                    .await
                && !ended.is_empty()
            {
                let _ = tx
                    .append_audit(
                        org_id,
                        "system",
                        "relay.session_expired",
                        &format!("session:{session_id}"),
                        serde_json::json!({ "device_id": device_id }),
                    )
                    .await;
                let _ = tx.commit().await;
            }
        });
    }
}

/// Public routes authenticated by the relay protocol itself (device key) or by an activation
/// code: `GET /api/v1/relay` and `POST /api/v1/pair/activate`. Merge into the app router; the
/// route-table handlers in [`api`] find the hub in `AppState::relay`.
pub fn router(hub: Arc<RelayHub>) -> Router {
    Router::new()
        .route("/api/v1/relay", any(ws_upgrade))
        .route("/api/v1/pair/activate", post(api::activate))
        .with_state(hub)
}

async fn ws_upgrade(State(hub): State<Arc<RelayHub>>, ws: WebSocketUpgrade) -> Response {
    // A relayed CTAP message is at most ~10 KiB of JSON. Small buffers keep an idle tool's
    // connection cheap (tungstenite's default 128 KiB read buffer would dominate at 1,000 tools).
    ws.max_message_size(64 * 1024)
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            if let Err(reason) = serve_connection(hub, socket).await {
                tracing::debug!(%reason, "relay connection ended");
            }
        })
}

async fn send(ws: &mut WebSocket, m: &ServerMessage) -> Result<(), String> {
    let text = serde_json::to_string(m).map_err(|e| e.to_string())?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

async fn recv(ws: &mut WebSocket) -> Result<ClientMessage, String> {
    loop {
        let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.recv())
            .await
            .map_err(|_| "handshake timeout".to_owned())?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        match frame {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("bad message: {e}"));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return Err("unexpected frame".into()),
        }
    }
}

/// Tells the tool why it is refused and closes; returns the reason for the caller's `Err`.
async fn refuse(ws: &mut WebSocket, code: ErrorCode, message: &str) -> String {
    let _ = send(
        ws,
        &ServerMessage::Error {
            code,
            message: message.to_owned(),
        },
    )
    .await;
    let _ = ws.send(Message::Close(None)).await;
    format!("refused: {code:?}")
}

/// Challenge–response: returns the authenticated device.
async fn authenticate(hub: &RelayHub, ws: &mut WebSocket) -> Result<PairDeviceRecord, String> {
    let ClientMessage::Hello { version, device_id } = recv(ws).await? else {
        return Err(refuse(ws, ErrorCode::Protocol, "expected hello").await);
    };
    if version != PROTOCOL_VERSION {
        return Err(refuse(
            ws,
            ErrorCode::UnsupportedVersion,
            "this server speaks relay protocol version 1",
        )
        .await);
    }
    let mut nonce = vec![0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness".to_owned())?;
    send(
        ws,
        &ServerMessage::Challenge {
            nonce: nonce.clone(),
        },
    )
    .await?;
    let ClientMessage::Response { signature } = recv(ws).await? else {
        return Err(refuse(ws, ErrorCode::Protocol, "expected response").await);
    };
    let device = match Uuid::parse_str(&device_id) {
        Ok(id) => hub.store.pair_device(id).await.map_err(|e| e.to_string())?,
        Err(_) => None,
    };
    let Some(device) = device else {
        return Err(refuse(
            ws,
            ErrorCode::UnknownDevice,
            "this device is not registered with this server",
        )
        .await);
    };
    let message = protocol::auth_message(&device_id, &nonce);
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &device.public_key)
        .verify(&message, &signature)
        .is_err()
    {
        return Err(refuse(
            ws,
            ErrorCode::BadSignature,
            "the device key does not match the registered one",
        )
        .await);
    }
    // Checked after the signature so that an unauthenticated caller cannot probe device states.
    if device.revoked_at.is_some() {
        return Err(refuse(ws, ErrorCode::Revoked, "this device was revoked").await);
    }
    Ok(device)
}

async fn principal_of(
    store: &Store,
    device: &PairDeviceRecord,
) -> Result<(Principal, String), String> {
    match device.owner() {
        Some(DeviceOwner::Admin(id)) => {
            let admin = store
                .admin(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("admin gone")?;
            if admin.disabled {
                return Err("admin disabled".into());
            }
            let actor = format!("admin:{}", admin.email);
            Ok((
                Principal::Admin {
                    id: id.to_string(),
                    email: admin.email,
                },
                actor,
            ))
        }
        Some(DeviceOwner::User(id)) => {
            let user = store
                .user(device.org_id, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("user gone")?;
            let actor = format!("user:{}", user.upn);
            Ok((
                Principal::User {
                    id: id.to_string(),
                    upn: user.upn,
                },
                actor,
            ))
        }
        None => Err("device without owner".into()),
    }
}

async fn serve_connection(hub: Arc<RelayHub>, mut ws: WebSocket) -> Result<(), String> {
    let device = authenticate(&hub, &mut ws).await?;
    let (principal, actor) = match principal_of(&hub.store, &device).await {
        Ok(p) => p,
        Err(e) => {
            let _ = refuse(
                &mut ws,
                ErrorCode::Revoked,
                "the device's owner is no longer active",
            )
            .await;
            return Err(e);
        }
    };
    let _ = hub.store.touch_pair_device(device.id).await;
    send(
        &mut ws,
        &ServerMessage::Welcome {
            device_id: device.id.to_string(),
            principal,
        },
    )
    .await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn_id = hub
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let owner = device.owner().ok_or("device without owner")?;
    let replaced = hub.conns().insert(
        device.id,
        Conn {
            conn_id,
            org_id: device.org_id,
            owner,
            tx,
            attached: None,
        },
    );
    if let Some(old) = replaced {
        let _ = old.tx.send(Outbound::Close(ServerMessage::Error {
            code: ErrorCode::Protocol,
            message: "this device connected again elsewhere".into(),
        }));
    }
    attach_on_connect(&hub, &device, &actor).await;

    let result = connection_loop(&hub, &device, &mut ws, &mut rx).await;
    let mut conns = hub.conns();
    if conns.get(&device.id).is_some_and(|c| c.conn_id == conn_id) {
        conns.remove(&device.id);
    }
    result
}

/// A user's tool shows the user's key; an admin's tool shows the key of its live delegated
/// session, if any (the tool reconnected during a session).
async fn attach_on_connect(hub: &Arc<RelayHub>, device: &PairDeviceRecord, actor: &str) {
    match device.owner() {
        Some(DeviceOwner::User(user_id)) => {
            if let Ok(Some(key)) = hub.store.key_for_user(device.org_id, user_id).await
                && key.status == "active"
            {
                let a = Attached {
                    session_id: Uuid::now_v7(),
                    key_id: key.id,
                    org_id: device.org_id,
                    actor: actor.to_owned(),
                    registration_only: false,
                    expires_at: None,
                };
                hub.attach(device.id, a, SessionMode::User).await;
            }
        }
        Some(DeviceOwner::Admin(_)) => {
            let now = Utc::now();
            let open = hub
                .store
                .open_delegated_sessions_of_device(device.id)
                .await
                .unwrap_or_default();
            if let Some(s) = open.into_iter().find(|s| s.is_live(now)) {
                let a = Attached {
                    session_id: s.id,
                    key_id: s.key_id,
                    org_id: s.org_id,
                    actor: actor.to_owned(),
                    registration_only: true,
                    expires_at: Some(s.expires_at),
                };
                hub.attach(device.id, a, SessionMode::Delegated).await;
                hub.schedule_expiry(s.org_id, device.id, s.id, s.expires_at);
            }
        }
        None => {}
    }
}

async fn connection_loop(
    hub: &Arc<RelayHub>,
    device: &PairDeviceRecord,
    ws: &mut WebSocket,
    rx: &mut mpsc::UnboundedReceiver<Outbound>,
) -> Result<(), String> {
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Send(m)) => send(ws, &m).await?,
                Some(Outbound::Close(m)) => {
                    let _ = send(ws, &m).await;
                    let _ = ws.send(Message::Close(None)).await;
                    return Ok(());
                }
                None => return Ok(()),
            },
            frame = ws.recv() => {
                let msg = match frame {
                    None | Some(Err(_)) => return Ok(()),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMessage>(t.as_str()) {
                        Ok(m) => m,
                        Err(_) => {
                            return Err(refuse(ws, ErrorCode::Protocol, "unexpected message").await);
                        }
                    },
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                match msg {
                    ClientMessage::Ctap { id, payload, .. } => run_ctap(hub, device.id, id, payload),
                    // Key operations are atomic and short; a cancelled one simply completes and its
                    // answer is ignored by the tool, which already answered the host.
                    ClientMessage::Cancel { .. } => {}
                    ClientMessage::Logout => {
                        api::revoke_device(hub, device.org_id, device.id, "device logged out").await.map_err(|e| e.to_string())?;
                        send(ws, &ServerMessage::LoggedOut).await?;
                        return Ok(());
                    }
                    ClientMessage::Hello { .. } | ClientMessage::Response { .. } => {
                        return Err(refuse(ws, ErrorCode::Protocol, "already authenticated").await);
                    }
                }
            }
        }
    }
}

/// Runs one relayed request in its own task so the connection keeps delivering detach and
/// keepalive messages meanwhile. The answer is dropped if the key was detached in between: the
/// tool has already failed that request, and a new session must not see an old session's result.
fn run_ctap(hub: &Arc<RelayHub>, device_id: Uuid, id: u64, payload: Vec<u8>) {
    let attached = hub.conns().get(&device_id).and_then(|c| c.attached.clone());
    let hub = Arc::clone(hub);
    tokio::spawn(async move {
        let answer = match &attached {
            None => vec![CTAP2_ERR_NOT_ALLOWED],
            Some(a) if a.expires_at.is_some_and(|t| Utc::now() >= t) => vec![CTAP2_ERR_NOT_ALLOWED],
            Some(a) => match hub
                .keys
                .ctap(a.org_id, a.key_id, &a.actor, a.registration_only, payload)
                .await
            {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Fail closed (invariant 6): nothing was committed; the host sees an error.
                    tracing::warn!(key_id = %a.key_id, error = %e, "relayed key operation failed");
                    vec![CTAP2_ERR_OTHER]
                }
            },
        };
        let conns = hub.conns();
        let Some(c) = conns.get(&device_id) else {
            return;
        };
        let still = match (&attached, &c.attached) {
            (None, _) => true,
            (Some(a), Some(b)) => a.session_id == b.session_id,
            (Some(_), None) => false,
        };
        if still {
            let _ = c.tx.send(Outbound::Send(ServerMessage::CtapResult {
                id,
                payload: answer,
            }));
        }
    });
}
