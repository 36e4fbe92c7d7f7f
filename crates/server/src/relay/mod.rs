//! The relay hub: pairing tools connect here over a WebSocket, authenticate with their device key,
//! and receive the key they should expose (`attach`) — a user's own key, or the key of a user an
//! admin connected to in a delegated session. CTAP requests from the tool run on the key-operations
//! engine; the protocol is specified in the `keyward-relay-protocol` crate (re-exported as [`protocol`]).
//!
//! Serialisation: every request goes through [`RelayKeys::ctap`], i.e. `KeyOps::ctap`, which
//! serialises operations on one key across all connections (per-key mutex plus the row lock), so
//! two tools showing the same key cannot interleave PIN or assertion state. A new attach is the
//! key's power cycle.
//!
//! Replicas: on PostgreSQL several `keyward serve` processes share the work (see [`cluster`]). A
//! tool's connection lives on one replica; presence rows (replica id + heartbeat lease) tell every
//! replica whether an admin's tool is online, and attach/detach/disconnect travel as PostgreSQL
//! notifications carrying ids only; an attach counts as done once the replica holding the tool
//! acknowledges it. On SQLite one process holds every connection and the same
//! calls act in memory.
//!
//! Policy: a delegated session runs with `Policy { registration_only: true }` (the engine refuses
//! assertions and destructive commands; key-ops records credentials as `via: delegated`,
//! `created_by: <admin>`); a user's own tool runs with the default policy.

pub mod api;
pub mod cluster;
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
use keyward_store::{Backend, DeviceOwner, PairDeviceRecord, Store, StoreError};
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
    /// How the audit log names the device's owner, e.g. `admin:<email>`.
    actor: String,
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
    /// This process, as named in presence rows and notifications.
    replica_id: Uuid,
    /// Several replicas may share the database (PostgreSQL): presence and notifications are used.
    cluster: bool,
    /// Set once this replica listens for other replicas' notifications.
    listening: tokio::sync::watch::Sender<bool>,
    /// Attaches sent to another replica and awaiting its acknowledgement, by session id.
    pending_acks: Mutex<HashMap<Uuid, tokio::sync::oneshot::Sender<()>>>,
}

/// What became of a request to show a delegated session's key on a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// The tool shows the key: attached here, or acknowledged by the replica holding the tool.
    Shown,
    /// The tool is connected to no replica (on SQLite: not to this process).
    NotConnected,
    /// The replica that the presence rows name for the tool did not acknowledge within
    /// [`cluster::ATTACH_ACK_TIMEOUT`]: it died (its lease has not run out yet), stalled, or no
    /// longer holds the tool.
    NoAnswer,
}

impl RelayHub {
    /// A hub for `store`. On PostgreSQL it joins the replicas (heartbeat, presence, `LISTEN`);
    /// call it inside a Tokio runtime.
    pub fn new(store: Store, keys: Arc<dyn RelayKeys>) -> Arc<Self> {
        let cluster = store.backend() == Backend::Postgres;
        let hub = Arc::new(Self {
            store,
            keys,
            conns: Mutex::new(HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            delegated_ttl: DEFAULT_DELEGATED_TTL,
            replica_id: Uuid::now_v7(),
            cluster,
            listening: tokio::sync::watch::Sender::new(!cluster),
            pending_acks: Mutex::new(HashMap::new()),
        });
        if cluster {
            cluster::start(&hub);
        }
        hub
    }

    /// This process's replica id.
    pub fn replica_id(&self) -> Uuid {
        self.replica_id
    }

    /// Waits until this hub receives other replicas' notifications and has re-read its tools'
    /// state after (re)starting to listen (at once on SQLite).
    pub async fn ready(&self) {
        let mut rx = self.listening.subscribe();
        let _ = rx.wait_for(|listening| *listening).await;
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Conn>> {
        // A panic while holding this lock leaves only a map of channels behind; keep serving.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device id of an admin's tool connected to this replica (the newest if several).
    fn local_device_of_admin(&self, org_id: Uuid, admin_id: Uuid) -> Option<Uuid> {
        self.conns()
            .iter()
            .filter(|(_, c)| c.org_id == org_id && c.owner == DeviceOwner::Admin(admin_id))
            .max_by_key(|(_, c)| c.conn_id)
            .map(|(id, _)| *id)
    }

    /// The device id of an admin's tool that is connected right now, to this replica or (on
    /// PostgreSQL) to another one whose heartbeat is within its lease.
    pub async fn online_device_of_admin(
        &self,
        org_id: Uuid,
        admin_id: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        if let Some(d) = self.local_device_of_admin(org_id, admin_id) {
            return Ok(Some(d));
        }
        if !self.cluster {
            return Ok(None);
        }
        let fresh_after = keyward_store::now()
            - chrono::Duration::from_std(cluster::PRESENCE_LEASE).unwrap_or_default();
        self.store
            .relay_online_admin_device(org_id, admin_id, fresh_after)
            .await
    }

    fn is_local(&self, device_id: Uuid) -> bool {
        self.conns().contains_key(&device_id)
    }

    /// Number of tools connected (for metrics and tests).
    pub fn connected(&self) -> usize {
        self.conns().len()
    }

    /// Shows a delegated session's key on a device's tool, wherever the tool is connected: here
    /// (at once), or through a notification to the replica holding it, which re-reads the session
    /// from the database, shows it and acknowledges; [`AttachOutcome::Shown`] only then. Without
    /// the acknowledgement within [`cluster::ATTACH_ACK_TIMEOUT`] the answer is
    /// [`AttachOutcome::NoAnswer`] and the caller ends the session.
    pub async fn attach(
        self: &Arc<Self>,
        device_id: Uuid,
        attached: Attached,
        mode: SessionMode,
    ) -> Result<AttachOutcome, StoreError> {
        if self.is_local(device_id) {
            return Ok(if self.attach_local(device_id, attached, mode).await {
                AttachOutcome::Shown
            } else {
                AttachOutcome::NotConnected
            });
        }
        if !self.cluster {
            return Ok(AttachOutcome::NotConnected);
        }
        let session_id = attached.session_id;
        let deadline = tokio::time::Instant::now() + cluster::ATTACH_ACK_TIMEOUT;
        // The answer comes through this replica's LISTEN connection: while it is being
        // re-established, wait for it (within the same bound) rather than miss the answer.
        let _ = tokio::time::timeout_at(deadline, self.ready()).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Registered before the notification goes out, so that even an immediate answer is heard.
        self.acks().insert(session_id, tx);
        let sent = self
            .notify(&cluster::Notice::Attach {
                device_id,
                org_id: attached.org_id,
                session_id,
            })
            .await;
        let acked = match sent {
            Ok(()) => matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(()))),
            Err(_) => false,
        };
        self.acks().remove(&session_id);
        sent?;
        Ok(if acked {
            AttachOutcome::Shown
        } else {
            AttachOutcome::NoAnswer
        })
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, tokio::sync::oneshot::Sender<()>>> {
        self.pending_acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another replica showed `session_id` on its tool: wakes the [`Self::attach`] waiting for it.
    fn acknowledged(&self, session_id: Uuid) {
        if let Some(tx) = self.acks().remove(&session_id) {
            let _ = tx.send(());
        }
    }

    /// Shows `attached` on a tool connected to this replica (a power cycle of that key), and
    /// schedules the end of a session that expires. `false` if the tool is not connected here.
    async fn attach_local(
        self: &Arc<Self>,
        device_id: Uuid,
        attached: Attached,
        mode: SessionMode,
    ) -> bool {
        let msg = ServerMessage::Attach {
            key_id: attached.key_id.to_string(),
            session_id: attached.session_id.to_string(),
            mode,
            expires_at: attached.expires_at.map(|t| t.to_rfc3339()),
        };
        let key_id = attached.key_id;
        let (org_id, session_id, expires_at) =
            (attached.org_id, attached.session_id, attached.expires_at);
        {
            let mut conns = self.conns();
            let Some(c) = conns.get_mut(&device_id) else {
                return false;
            };
            if c.org_id != attached.org_id {
                // Never reached through the API (sessions are created and read per organisation);
                // refused here too so that no path can show one organisation's key to another's tool.
                tracing::warn!(%device_id, %key_id, "refused to attach a key of another organisation");
                return false;
            }
            c.attached = Some(attached);
            let _ = c.tx.send(Outbound::Send(msg));
        }
        self.keys.power_cycle(key_id).await;
        if let Some(at) = expires_at {
            self.schedule_expiry(org_id, device_id, session_id, at);
        }
        true
    }

    /// Removes a session's key from the tool showing it, on whichever replica.
    pub async fn detach(
        &self,
        device_id: Uuid,
        session_id: Uuid,
        reason: &str,
    ) -> Result<(), StoreError> {
        if self.detach_local(device_id, session_id, reason) || !self.cluster {
            return Ok(());
        }
        self.notify(&cluster::Notice::Detach {
            device_id,
            session_id,
            reason: reason.to_owned(),
        })
        .await
    }

    /// Removes a session's key from a tool connected here; `false` if the tool is not here.
    fn detach_local(&self, device_id: Uuid, session_id: Uuid, reason: &str) -> bool {
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
        conns.contains_key(&device_id)
    }

    /// Closes a device's connection (revocation, logout), on whichever replica holds it.
    pub async fn disconnect_device(
        &self,
        device_id: Uuid,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), StoreError> {
        if self.disconnect_local(device_id, code, message) || !self.cluster {
            return Ok(());
        }
        self.notify(&cluster::Notice::Disconnect {
            device_id,
            code,
            reason: message.to_owned(),
        })
        .await
    }

    fn disconnect_local(&self, device_id: Uuid, code: ErrorCode, message: &str) -> bool {
        let Some(c) = self.conns().remove(&device_id) else {
            return false;
        };
        let _ = c.tx.send(Outbound::Close(ServerMessage::Error {
            code,
            message: message.to_owned(),
        }));
        true
    }

    /// A key stopped being usable (suspended or revoked): its delegated sessions end and every
    /// tool showing it, on every replica, loses it.
    pub async fn key_unavailable(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        tx.end_delegated_sessions_of_key(org_id, key_id, reason)
            .await?;
        tx.commit().await?;
        self.key_unavailable_local(org_id, key_id, reason);
        if self.cluster {
            self.notify(&cluster::Notice::KeyGone {
                org_id,
                key_id,
                reason: reason.to_owned(),
            })
            .await?;
        }
        Ok(())
    }

    fn key_unavailable_local(&self, org_id: Uuid, key_id: Uuid, reason: &str) {
        let mut conns = self.conns();
        for c in conns.values_mut() {
            let Some(a) = c.attached.as_ref() else {
                continue;
            };
            if a.org_id == org_id && a.key_id == key_id {
                let session_id = a.session_id;
                c.attached = None;
                let _ = c.tx.send(Outbound::Send(ServerMessage::Detach {
                    session_id: session_id.to_string(),
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    /// An admin set the key's PIN: every replica forgets the key's volatile state (PIN tokens,
    /// key agreement, a soft block) as at a power cycle. This replica's engine already did.
    pub async fn key_pin_reset(&self, org_id: Uuid, key_id: Uuid) -> Result<(), StoreError> {
        self.keys.power_cycle(key_id).await;
        if self.cluster {
            self.notify(&cluster::Notice::PowerCycle { org_id, key_id })
                .await?;
        }
        Ok(())
    }

    /// A key became usable again (resumed): the user's own tools, on every replica, show it.
    pub async fn key_available(
        self: &Arc<Self>,
        org_id: Uuid,
        key_id: Uuid,
    ) -> Result<(), StoreError> {
        self.key_available_local(org_id, key_id).await;
        if self.cluster {
            self.notify(&cluster::Notice::KeyBack { org_id, key_id })
                .await?;
        }
        Ok(())
    }

    async fn key_available_local(self: &Arc<Self>, org_id: Uuid, key_id: Uuid) {
        let Ok(Some(key)) = self.store.key_by_id(org_id, key_id).await else {
            return;
        };
        if key.status != "active" {
            return;
        }
        let tools: Vec<(Uuid, String)> = self
            .conns()
            .iter()
            .filter(|(_, c)| {
                c.org_id == org_id
                    && c.owner == DeviceOwner::User(key.user_id)
                    && c.attached.as_ref().is_none_or(|a| a.key_id != key_id)
            })
            .map(|(id, c)| (*id, c.actor.clone()))
            .collect();
        for (device_id, actor) in tools {
            let a = Attached {
                session_id: Uuid::now_v7(),
                key_id,
                org_id,
                actor,
                registration_only: false,
                expires_at: None,
            };
            self.attach_local(device_id, a, SessionMode::User).await;
        }
    }

    async fn notify(&self, notice: &cluster::Notice) -> Result<(), StoreError> {
        cluster::notify(&self.store, self.replica_id, notice).await
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
            hub.detach_local(device_id, session_id, "expired");
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
            let _ = refuse(&mut ws, ErrorCode::Revoked, api::OWNER_DISABLED).await;
            return Err(e);
        }
    };
    let _ = hub.store.touch_pair_device(device.id).await;

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
            actor: actor.clone(),
            tx,
            attached: None,
        },
    );
    if let Some(old) = replaced {
        let _ = old.tx.send(Outbound::Close(ServerMessage::Error {
            code: ErrorCode::Protocol,
            message: SUPERSEDED.into(),
        }));
    }
    if hub.cluster {
        // Presence for the other replicas, and an older connection of this device on another
        // replica (a half-open TCP connection, say) is closed there.
        if let Err(e) = cluster::claim(&hub, &device).await {
            tracing::warn!(error = %e, device_id = %device.id, "relay presence not recorded");
        }
    }
    // An admin disabled while this connection was being set up: the update may have looked for
    // the tool before it was registered above, so look at the admin again now that it is.
    // (A failed read lets it in: the same check passed a moment ago.)
    if let DeviceOwner::Admin(admin_id) = owner
        && let Ok(admin) = hub.store.admin(admin_id).await
        && admin.is_none_or(|a| a.disabled)
    {
        {
            let mut conns = hub.conns();
            if conns.get(&device.id).is_some_and(|c| c.conn_id == conn_id) {
                conns.remove(&device.id);
            }
        }
        if hub.cluster {
            let _ = hub.store.relay_release(device.id, hub.replica_id).await;
        }
        return Err(refuse(&mut ws, ErrorCode::Revoked, api::OWNER_DISABLED).await);
    }
    // Welcome only once the tool is reachable from every replica: a connect pressed as soon as
    // the tool says "connected" finds it online.
    let welcome = ServerMessage::Welcome {
        device_id: device.id.to_string(),
        principal,
    };
    let result = match send(&mut ws, &welcome).await {
        Ok(()) => {
            attach_on_connect(&hub, &device, &actor).await;
            connection_loop(&hub, &device, &mut ws, &mut rx).await
        }
        Err(e) => Err(e),
    };
    let gone = {
        let mut conns = hub.conns();
        let ours = conns.get(&device.id).is_some_and(|c| c.conn_id == conn_id);
        if ours {
            conns.remove(&device.id);
        }
        ours || !conns.contains_key(&device.id)
    };
    if hub.cluster && gone {
        let _ = hub.store.relay_release(device.id, hub.replica_id).await;
    }
    result
}

/// Why a connection closes when its device connects again (here or on another replica).
const SUPERSEDED: &str = "this device connected again elsewhere";

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
                hub.attach_local(device.id, a, SessionMode::User).await;
            }
        }
        Some(DeviceOwner::Admin(_)) => {
            if let Some(a) = live_delegated(hub, device, actor).await {
                hub.attach_local(device.id, a, SessionMode::Delegated).await;
            }
        }
        None => {}
    }
}

/// The delegated session an admin's device should show now, read from the database: open, not
/// expired, in the device's organisation, on a key that is still active.
async fn live_delegated(
    hub: &RelayHub,
    device: &PairDeviceRecord,
    actor: &str,
) -> Option<Attached> {
    let now = Utc::now();
    let open = hub
        .store
        .open_delegated_sessions_of_device(device.id)
        .await
        .ok()?;
    let s = open
        .into_iter()
        .find(|s| s.is_live(now) && s.org_id == device.org_id)?;
    let key = hub.store.key_by_id(s.org_id, s.key_id).await.ok()??;
    (key.status == "active").then(|| Attached {
        session_id: s.id,
        key_id: s.key_id,
        org_id: s.org_id,
        actor: actor.to_owned(),
        registration_only: true,
        expires_at: Some(s.expires_at),
    })
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
                    ClientMessage::Ctap { id, payload, key_id, .. } => {
                        run_ctap(hub, device, id, payload, key_id);
                    }
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
///
/// A request that names a key (`key_id`) other than the one attached is refused; naming a key of
/// another organisation is also audited, in both organisations.
fn run_ctap(
    hub: &Arc<RelayHub>,
    device: &PairDeviceRecord,
    id: u64,
    payload: Vec<u8>,
    named_key: Option<String>,
) {
    let device_id = device.id;
    let device_org = device.org_id;
    let attached = hub.conns().get(&device_id).and_then(|c| c.attached.clone());
    let hub = Arc::clone(hub);
    tokio::spawn(async move {
        let mismatch = named_key
            .as_deref()
            .is_some_and(|k| attached.as_ref().is_none_or(|a| a.key_id.to_string() != k));
        if mismatch {
            refuse_named_key(
                &hub,
                device_org,
                device_id,
                named_key.as_deref().unwrap_or(""),
            )
            .await;
        }
        let answer = match &attached {
            _ if mismatch => vec![CTAP2_ERR_NOT_ALLOWED],
            None => vec![CTAP2_ERR_NOT_ALLOWED],
            Some(a) if a.org_id != device_org => vec![CTAP2_ERR_NOT_ALLOWED],
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

/// Audits a relayed request naming a key of another organisation (a key of the tool's own
/// organisation that is not attached is a stale request after a detach: refused, not audited).
async fn refuse_named_key(hub: &RelayHub, device_org: Uuid, device_id: Uuid, named: &str) {
    let Ok(key_id) = Uuid::parse_str(named) else {
        return;
    };
    let Ok(Some(key_org)) = hub.store.key_org(key_id).await else {
        return;
    };
    if key_org == device_org {
        return;
    }
    tracing::warn!(%device_id, %key_id, "refused a relayed request for a key of another organisation");
    let detail = serde_json::json!({
        "device_id": device_id,
        "key_id": key_id,
        "reason": "the key belongs to another organisation",
    });
    if let Ok(mut tx) = hub.store.begin().await {
        let mut ok = tx
            .append_audit(
                device_org,
                "system",
                "relay.cross_org_refused",
                &format!("device:{device_id}"),
                detail.clone(),
            )
            .await
            .is_ok();
        ok &= tx
            .append_audit(
                key_org,
                "system",
                "relay.cross_org_refused",
                &format!("key:{key_id}"),
                detail,
            )
            .await
            .is_ok();
        if ok {
            let _ = tx.commit().await;
        }
    }
}
