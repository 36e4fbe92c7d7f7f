//! `keyward-pair run`: wires the endpoint to a local transport, the relay and the presence prompt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::endpoint::{Action, Endpoint, LocalHid, PresenceMode};
use crate::protocol::{Principal, ServerMessage, SessionMode};
use crate::relay::{RelayClient, RelayError, RelayEvent};

/// How often timers run: keepalives are due every 100 ms, so 20 ms keeps them punctual.
const TICK: Duration = Duration::from_millis(20);

/// The host side of a local transport: HID output reports in, input reports out.
pub struct LocalIo {
    pub from_host: mpsc::Receiver<[u8; 64]>,
    pub to_host: mpsc::Sender<[u8; 64]>,
}

/// Binds `addr` and serves the design's UDP HID contract: each datagram is one 64-byte output
/// report (no report-ID byte), datagrams of another size are dropped, and every input report goes
/// to the address the last request came from.
pub async fn udp_transport(addr: SocketAddr) -> std::io::Result<(LocalIo, SocketAddr)> {
    let sock = Arc::new(UdpSocket::bind(addr).await?);
    let local = sock.local_addr()?;
    let (in_tx, in_rx) = mpsc::channel::<[u8; 64]>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<[u8; 64]>(256);
    tokio::spawn(async move {
        let mut peer: Option<SocketAddr> = None;
        let mut buf = [0u8; 2048];
        loop {
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let Ok(report) = <[u8; 64]>::try_from(&buf[..n]) else {
                        tracing::debug!(len = n, "dropping UDP datagram that is not one 64-byte report");
                        continue;
                    };
                    peer = Some(from);
                    if in_tx.send(report).await.is_err() {
                        return;
                    }
                }
                out = out_rx.recv() => {
                    let Some(report) = out else { return };
                    if let Some(p) = peer
                        && let Err(e) = sock.send_to(&report, p).await
                    {
                        tracing::debug!(error = %e, "UDP send failed");
                    }
                }
            }
        }
    });
    Ok((
        LocalIo {
            from_host: in_rx,
            to_host: out_tx,
        },
        local,
    ))
}

/// Progress the runner reports to its caller (the CLI prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Connected(Principal),
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    Attached {
        key_id: String,
        mode: SessionMode,
        expires_at: Option<String>,
    },
    Detached {
        reason: String,
    },
    Wink,
    AskPresence(String),
}

/// Serves until the relay stops for good; returns why.
pub async fn serve<H: LocalHid>(
    hid: H,
    presence: PresenceMode,
    mut io: LocalIo,
    relay: RelayClient,
    mut events: mpsc::Receiver<RelayEvent>,
    notify: impl Fn(Notice),
) -> RelayError {
    let mut ep = Endpoint::new(hid, presence);
    let start = Instant::now();
    let now = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (answer_tx, mut answers) = mpsc::channel::<bool>(4);
    let mut stdin_started = false;
    let mut asking: Option<u64> = None;

    loop {
        let actions = tokio::select! {
            r = io.from_host.recv() => match r {
                Some(report) => ep.on_report(now(), &report),
                None => return RelayError::Config("the local transport stopped".into()),
            },
            ev = events.recv() => {
                let Some(ev) = ev else { return RelayError::Config("the relay task stopped".into()) };
                match &ev {
                    RelayEvent::Fatal(e) => {
                        let e = e.clone();
                        drain(&mut io, ep.on_relay(now(), ev)).await;
                        return e;
                    }
                    RelayEvent::Connected { principal } => notify(Notice::Connected(principal.clone())),
                    RelayEvent::Disconnected { reason, retry_in } => {
                        notify(Notice::Disconnected { reason: reason.clone(), retry_in: *retry_in });
                    }
                    RelayEvent::Message(ServerMessage::Attach { key_id, mode, expires_at, .. }) => {
                        notify(Notice::Attached { key_id: key_id.clone(), mode: *mode, expires_at: expires_at.clone() });
                    }
                    RelayEvent::Message(ServerMessage::Detach { session_id, reason })
                        if ep.attached().is_some_and(|a| &a.session_id == session_id) =>
                    {
                        notify(Notice::Detached { reason: reason.clone() });
                    }
                    RelayEvent::Message(_) => {}
                }
                ep.on_relay(now(), ev)
            }
            a = answers.recv() => match (a, asking.take()) {
                (Some(approved), Some(ticket)) => ep.on_presence(now(), ticket, approved),
                _ => Vec::new(),
            },
            _ = tick.tick() => ep.tick(now()),
        };
        for action in actions {
            match action {
                Action::Report(r) => {
                    let _ = io.to_host.send(r).await;
                }
                Action::Relay(m) => relay.send(m),
                Action::Wink => notify(Notice::Wink),
                Action::AskPresence { ticket, what } => {
                    if !stdin_started {
                        stdin_started = true;
                        spawn_stdin_answers(answer_tx.clone());
                    }
                    asking = Some(ticket);
                    notify(Notice::AskPresence(what));
                }
            }
        }
    }
}

async fn drain(io: &mut LocalIo, actions: Vec<Action>) {
    for a in actions {
        if let Action::Report(r) = a {
            let _ = io.to_host.send(r).await;
        }
    }
}

/// Reads yes/no answers from the terminal: a line starting with `y` approves, anything else denies.
fn spawn_stdin_answers(tx: mpsc::Sender<bool>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let yes = line.trim().to_ascii_lowercase().starts_with('y');
            if tx.send(yes).await.is_err() {
                return;
            }
        }
    });
}
