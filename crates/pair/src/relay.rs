//! The relay client: one authenticated WebSocket to the server, re-established with backoff.
//!
//! [`RelayClient::spawn`] runs the connection in a task. The local endpoint sends
//! [`ClientMessage`]s through [`RelayClient::send`] and receives [`RelayEvent`]s. Messages sent
//! while disconnected are dropped (the endpoint fails its pending request when it sees
//! [`RelayEvent::Disconnected`]), and stale ones are discarded on reconnect, so a request never
//! reaches a key twice or after a power cycle.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, Principal, ServerMessage, auth_message,
};
use crate::state::DeviceKey;
use crate::tls::{PinVerifier, pinned_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake step may take before the attempt counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A WebSocket ping this often keeps NATs and proxies from dropping an idle relay.
const PING_EVERY: Duration = Duration::from_secs(20);
/// With nothing heard for this long (not even a pong) the connection is considered dead.
const DEAD_AFTER: Duration = Duration::from_secs(60);

/// Why the relay stopped for good (no retry can help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(
        "the server refused this device ({code:?}): {message}. Run `keyward-pair login` (or `activate`) again."
    )]
    Rejected { code: ErrorCode, message: String },
    #[error(
        "the server presented a certificate with SHA-256 {seen}, but this tool pinned {expected}. \
         If the server's certificate was replaced on purpose, log in again with the new --pin."
    )]
    CertificateMismatch { expected: String, seen: String },
    #[error("this device was logged out")]
    LoggedOut,
    #[error("invalid relay configuration: {0}")]
    Config(String),
}

/// What the relay tells the local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    Connected {
        principal: Principal,
    },
    /// The connection is gone; the client retries after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// `attach`, `detach`, `ctap_result` or `keepalive` from the server.
    Message(ServerMessage),
    /// The relay stopped for good.
    Fatal(RelayError),
}

/// Reconnection delays: doubling from `initial` up to `max`, reset after a successful login.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Everything needed to connect.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `ws://…` (loopback) or `wss://…`, already validated.
    pub url: String,
    pub device_id: String,
    pub key: Arc<DeviceKey>,
    /// Hex SHA-256 of the pinned server certificate, if any.
    pub cert_pin: Option<String>,
    pub backoff: Backoff,
}

/// A running relay connection.
pub struct RelayClient {
    outbound: mpsc::UnboundedSender<ClientMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelayClient {
    /// Starts connecting; events arrive on the returned receiver.
    pub fn spawn(config: RelayConfig) -> (Self, mpsc::Receiver<RelayEvent>) {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let task = tokio::spawn(run(config, out_rx, ev_tx));
        (
            Self {
                outbound: out_tx,
                task,
            },
            ev_rx,
        )
    }

    /// Queues a message for the server (dropped if the relay is down).
    pub fn send(&self, msg: ClientMessage) {
        // The receiver lives as long as the task; if the task ended, the endpoint already got
        // a Fatal event and there is nobody to deliver to.
        let _ = self.outbound.send(msg);
    }
}

/// One connection attempt's failure.
enum AttemptError {
    Retry(String),
    Fatal(RelayError),
}

async fn run(
    config: RelayConfig,
    mut outbound: mpsc::UnboundedReceiver<ClientMessage>,
    events: mpsc::Sender<RelayEvent>,
) {
    let mut delay = config.backoff.initial;
    loop {
        // Requests queued for a previous connection belong to a previous power cycle.
        while outbound.try_recv().is_ok() {}
        let reason = match connect(&config).await {
            Ok((ws, principal)) => {
                delay = config.backoff.initial;
                if events
                    .send(RelayEvent::Connected { principal })
                    .await
                    .is_err()
                {
                    return;
                }
                match session(ws, &mut outbound, &events).await {
                    Ok(reason) => reason,
                    Err(fatal) => {
                        let _ = events.send(RelayEvent::Fatal(fatal)).await;
                        return;
                    }
                }
            }
            Err(AttemptError::Retry(reason)) => reason,
            Err(AttemptError::Fatal(fatal)) => {
                let _ = events.send(RelayEvent::Fatal(fatal)).await;
                return;
            }
        };
        let retry_in = jitter(delay);
        if events
            .send(RelayEvent::Disconnected { reason, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry_in).await;
        delay = (delay * 2).min(config.backoff.max);
    }
}

/// Adds up to 20 % random delay so a fleet of tools does not reconnect in lock-step after a
/// server restart.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return d;
    }
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 0.2;
    d + d.mul_f64(frac)
}

/// Opens the WebSocket and authenticates.
async fn connect(config: &RelayConfig) -> Result<(Ws, Principal), AttemptError> {
    let (mut ws, _verifier) = open(config).await?;
    let principal = authenticate(&mut ws, config).await?;
    Ok((ws, principal))
}

async fn open(config: &RelayConfig) -> Result<(Ws, Option<Arc<PinVerifier>>), AttemptError> {
    let (connector, verifier) = match &config.cert_pin {
        Some(pin) if config.url.starts_with("wss://") => {
            let (cfg, v) = pinned_config(pin)
                .map_err(|e| AttemptError::Fatal(RelayError::Config(e.to_string())))?;
            (Some(Connector::Rustls(cfg)), Some(v))
        }
        _ => (None, None),
    };
    let attempt = tokio_tungstenite::connect_async_tls_with_config(
        config.url.as_str(),
        None,
        true,
        connector,
    );
    match timeout(STEP_TIMEOUT, attempt).await {
        Err(_) => Err(AttemptError::Retry(format!(
            "no answer from {} within {STEP_TIMEOUT:?}",
            config.url
        ))),
        Ok(Ok((ws, _response))) => Ok((ws, verifier)),
        Ok(Err(e)) => {
            if let (Some(v), Some(expected)) = (&verifier, &config.cert_pin)
                && let Some(seen) = v.mismatch_seen()
            {
                return Err(AttemptError::Fatal(RelayError::CertificateMismatch {
                    expected: expected.clone(),
                    seen,
                }));
            }
            Err(AttemptError::Retry(describe_connect_error(&config.url, &e)))
        }
    }
}

fn describe_connect_error(url: &str, e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => format!(
            "{url} answered HTTP {} instead of opening the relay: is --server the Keyward server's address?",
            resp.status()
        ),
        E::Io(io) => format!("cannot reach {url}: {io}"),
        E::Tls(tls) => format!(
            "TLS with {url} failed: {tls}. If the server uses a self-signed certificate, log in with --pin sha256:<fingerprint>"
        ),
        other => format!("relay connection to {url} failed: {other}"),
    }
}

async fn recv_server(ws: &mut Ws) -> Result<ServerMessage, AttemptError> {
    loop {
        let frame = match timeout(STEP_TIMEOUT, ws.next()).await {
            Err(_) => {
                return Err(AttemptError::Retry(
                    "the server did not answer the login handshake".into(),
                ));
            }
            Ok(None) => {
                return Err(AttemptError::Retry(
                    "the server closed the connection during login".into(),
                ));
            }
            Ok(Some(Err(e))) => {
                return Err(AttemptError::Retry(format!(
                    "relay connection failed during login: {e}"
                )));
            }
            Ok(Some(Ok(f))) => f,
        };
        match frame {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|e| {
                    AttemptError::Retry(format!("the server sent an unexpected message: {e}"))
                });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => {
                return Err(AttemptError::Retry("the server sent a binary frame".into()));
            }
            Message::Close(_) => {
                return Err(AttemptError::Retry(
                    "the server closed the connection during login".into(),
                ));
            }
        }
    }
}

async fn send_client(
    ws: &mut Ws,
    msg: &ClientMessage,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let text = serde_json::to_string(msg).expect("invariant: relay messages always serialise");
    ws.send(Message::text(text)).await
}

fn rejected(code: ErrorCode, message: String) -> AttemptError {
    if code.is_fatal() {
        AttemptError::Fatal(RelayError::Rejected { code, message })
    } else {
        AttemptError::Retry(format!(
            "the server refused the connection ({code:?}): {message}"
        ))
    }
}

async fn authenticate(ws: &mut Ws, config: &RelayConfig) -> Result<Principal, AttemptError> {
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        device_id: config.device_id.clone(),
    };
    send_client(ws, &hello)
        .await
        .map_err(|e| AttemptError::Retry(format!("relay send failed: {e}")))?;
    let nonce = match recv_server(ws).await? {
        ServerMessage::Challenge { nonce } => nonce,
        ServerMessage::Error { code, message } => return Err(rejected(code, message)),
        other => {
            return Err(AttemptError::Retry(format!(
                "expected a challenge, got {other:?}"
            )));
        }
    };
    let signature = config.key.sign(&auth_message(&config.device_id, &nonce));
    send_client(ws, &ClientMessage::Response { signature })
        .await
        .map_err(|e| AttemptError::Retry(format!("relay send failed: {e}")))?;
    match recv_server(ws).await? {
        ServerMessage::Welcome { principal, .. } => Ok(principal),
        ServerMessage::Error { code, message } => Err(rejected(code, message)),
        other => Err(AttemptError::Retry(format!(
            "expected a welcome, got {other:?}"
        ))),
    }
}

/// Serves one authenticated connection until it ends. `Ok(reason)` means "reconnect".
async fn session(
    mut ws: Ws,
    outbound: &mut mpsc::UnboundedReceiver<ClientMessage>,
    events: &mpsc::Sender<RelayEvent>,
) -> Result<String, RelayError> {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = ws.next() => {
                last_heard = Instant::now();
                let text = match frame {
                    None => return Ok("the server closed the relay connection".into()),
                    Some(Err(e)) => return Ok(format!("relay connection lost: {e}")),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Ok("the server closed the relay connection".into()),
                    Some(Ok(Message::Binary(_))) => return Ok("the server sent a binary frame".into()),
                    Some(Ok(_)) => continue,
                };
                let msg: ServerMessage = match serde_json::from_str(text.as_str()) {
                    Ok(m) => m,
                    Err(e) => return Ok(format!("the server sent an unexpected message: {e}")),
                };
                match msg {
                    ServerMessage::LoggedOut => return Err(RelayError::LoggedOut),
                    ServerMessage::Error { code, message } if code.is_fatal() => {
                        return Err(RelayError::Rejected { code, message });
                    }
                    ServerMessage::Error { code, message } => {
                        return Ok(format!("the server ended the relay ({code:?}): {message}"));
                    }
                    m => {
                        if events.send(RelayEvent::Message(m)).await.is_err() {
                            return Ok("the endpoint stopped".into());
                        }
                    }
                }
            }
            out = outbound.recv() => {
                let Some(msg) = out else { return Ok("the endpoint stopped".into()) };
                if let Err(e) = send_client(&mut ws, &msg).await {
                    return Ok(format!("relay send failed: {e}"));
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > DEAD_AFTER {
                    return Ok(format!("nothing heard from the server for {DEAD_AFTER:?}"));
                }
                if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                    return Ok(format!("relay connection lost: {e}"));
                }
            }
        }
    }
}

/// Connects once, authenticates and asks the server to revoke this device.
pub async fn logout(config: &RelayConfig) -> Result<(), String> {
    let mut ws = match connect(config).await {
        Ok((ws, _)) => ws,
        Err(AttemptError::Retry(r)) => return Err(r),
        Err(AttemptError::Fatal(f)) => return Err(f.to_string()),
    };
    send_client(&mut ws, &ClientMessage::Logout)
        .await
        .map_err(|e| format!("relay send failed: {e}"))?;
    loop {
        match recv_server(&mut ws).await {
            Ok(ServerMessage::LoggedOut) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ok(ServerMessage::Error { code, message }) => {
                return Err(format!("the server refused ({code:?}): {message}"));
            }
            Ok(_) => continue,
            Err(AttemptError::Retry(r)) => return Err(r),
            Err(AttemptError::Fatal(f)) => return Err(f.to_string()),
        }
    }
}
