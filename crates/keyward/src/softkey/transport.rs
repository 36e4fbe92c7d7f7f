//! The UDP HID transport of design.md: each datagram received is one 64-byte output report (no
//! report-ID byte), each reply one 64-byte input report sent to the address the request came
//! from; datagrams of any other size are dropped.
//!
//! A key whose requests can wait on a person (`--presence-delay-ms`) runs two threads sharing one
//! [`HidDevice`] behind a mutex: the receive loop feeds it reports, applies its timeouts and sends
//! KEEPALIVE every ~100 ms while a request is outstanding; a worker thread runs the CTAP2 engine
//! and sends the answer. Keepalives and answers are both sent with the lock held, so a keepalive
//! can never follow the answer to the same request. A key whose requests never wait runs each
//! request on the receive loop itself: there is nothing to keep alive or cancel, and the hand-off
//! to another thread (a wake-up, tens of microseconds on a virtual machine) is saved.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keyward_ctap::hid::{self, Capabilities, HidDevice, HidEvent, REPORT_SIZE};
use keyward_ctap::status::StatusCode;

/// How often the receive loop wakes up without traffic to run timers.
const TICK: Duration = Duration::from_millis(20);
/// How many channels' sender addresses are remembered.
const MAX_TRACKED_CHANNELS: usize = 1024;
/// Interval between KEEPALIVE reports (CTAP 2.1 §11.2.9.1.7 asks for about 100 ms).
pub const KEEPALIVE_INTERVAL_MS: u64 = 100;

/// State shared between the receive loop, the worker and the presence check.
#[derive(Debug, Default)]
pub struct Signals {
    /// The host cancelled the outstanding request.
    pub cancel: AtomicBool,
    /// The engine is waiting for the user: keepalives say UPNEEDED rather than PROCESSING.
    pub up_needed: AtomicBool,
    /// Set to stop the receive loop (tests).
    pub stop: AtomicBool,
}

/// Runs one CTAP2 request to completion and returns `status ‖ CBOR`.
pub trait Handler: Send + 'static {
    fn handle(&mut self, request: &[u8]) -> Vec<u8>;

    /// Called once the answer to the last request has been sent: work the answer did not need
    /// to wait for.
    fn answered(&mut self) {}

    /// Whether a request may wait on something outside the key (a person's touch), so that it
    /// needs keepalives and CANCEL while it runs.
    fn may_wait(&self) -> bool {
        true
    }
}

/// Where CTAP2 requests run.
enum Runner<H> {
    /// On the receive loop, for handlers that never wait.
    Inline(H),
    /// On a worker thread.
    Worker {
        jobs: mpsc::Sender<Job>,
        thread: std::thread::JoinHandle<()>,
    },
}

struct Link {
    device: HidDevice,
    /// Where the outstanding request came from, and so where its keepalives and answer go.
    request_peer: Option<SocketAddr>,
    last_keepalive_ms: u64,
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // A panic while holding the lock cannot leave the device half-updated in a way that matters
    // more than stopping would, so keep serving.
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Job {
    cid: u32,
    payload: Vec<u8>,
}

/// The capabilities the softkey advertises: CBOR and WINK, no CTAP1/U2F (NMSG).
pub fn capabilities() -> Capabilities {
    let version = |s: &str| s.parse::<u8>().unwrap_or(0);
    Capabilities {
        wink: true,
        cbor: true,
        nmsg: true,
        version: (
            version(env!("CARGO_PKG_VERSION_MAJOR")),
            version(env!("CARGO_PKG_VERSION_MINOR")),
            version(env!("CARGO_PKG_VERSION_PATCH")),
        ),
    }
}

/// The channel id at the start of every report.
fn channel_of(report: &[u8]) -> u32 {
    u32::from_be_bytes([report[0], report[1], report[2], report[3]])
}

/// One line per answered CTAP2 request, written once the answer has left: the line costs a
/// write to the log's output, which the host should not wait for.
fn log_answered(command: u8, response: &[u8]) {
    tracing::info!(
        command,
        status = response.first().copied().unwrap_or(0),
        "ctap2 request"
    );
}

fn send(socket: &UdpSocket, report: &[u8; REPORT_SIZE], peer: SocketAddr) {
    if let Err(e) = socket.send_to(report, peer) {
        tracing::debug!(%peer, error = %e, "could not send a report");
    }
}

/// Sends the reports of one message, in order. On Linux they go in one `sendmmsg` call: one
/// system call for the whole answer instead of one per report.
#[cfg(target_os = "linux")]
fn send_all(socket: &UdpSocket, reports: &[[u8; REPORT_SIZE]], peer: SocketAddr) {
    use rustix::net::addr::SocketAddrArg as _;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};
    use std::io::IoSlice;

    let address = peer.as_any();
    let slices: Vec<[IoSlice<'_>; 1]> = reports.iter().map(|r| [IoSlice::new(r)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = reports
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = slices
        .iter()
        .zip(&mut controls)
        .map(|(slice, control)| MMsgHdr::new_with_addr(&address, slice, control))
        .collect();
    let mut sent = 0;
    while sent < messages.len() {
        match sendmmsg(socket, &mut messages[sent..], SendFlags::empty()) {
            Ok(n) if n > 0 => sent += n,
            // Report by report from here, each failure logged as `send` does.
            _ => break,
        }
    }
    for report in &reports[sent..] {
        send(socket, report, peer);
    }
}

#[cfg(not(target_os = "linux"))]
fn send_all(socket: &UdpSocket, reports: &[[u8; REPORT_SIZE]], peer: SocketAddr) {
    for report in reports {
        send(socket, report, peer);
    }
}

/// Serves the device on `socket` until `signals.stop` is set. Requests run on a worker thread
/// with `handler`.
pub fn serve(
    socket: UdpSocket,
    handler: impl Handler,
    signals: Arc<Signals>,
) -> std::io::Result<()> {
    socket.set_read_timeout(Some(TICK))?;
    let started = Instant::now();
    let now_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let link = Arc::new(Mutex::new(Link {
        device: HidDevice::new(capabilities()),
        request_peer: None,
        last_keepalive_ms: 0,
    }));
    let mut runner = if handler.may_wait() {
        let (jobs, job_queue) = mpsc::channel::<Job>();
        let socket = socket.try_clone()?;
        let link = Arc::clone(&link);
        let signals = Arc::clone(&signals);
        let thread = std::thread::Builder::new()
            .name("softkey-ctap".into())
            .spawn(move || work(job_queue, handler, &socket, &link, &signals))?;
        Runner::Worker { jobs, thread }
    } else {
        Runner::Inline(handler)
    };

    // One byte more than a report, so an oversized datagram shows up as such instead of being
    // silently truncated to 64 bytes.
    let mut buffer = [0u8; REPORT_SIZE + 1];
    // Which address each channel was last heard from, so that an error raised later by a timer
    // (MSG_TIMEOUT) reaches the host whose message timed out. Bounded: a host allocating
    // channels without end only flushes the table.
    let mut peers: HashMap<u32, SocketAddr> = HashMap::new();
    while !signals.stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buffer) {
            Ok((REPORT_SIZE, peer)) => {
                if peers.len() >= MAX_TRACKED_CHANNELS {
                    peers.clear();
                }
                peers.insert(channel_of(&buffer), peer);
                let mut link = lock(&link);
                let now = now_ms();
                let events = link.device.handle_report(now, &buffer[..REPORT_SIZE]);
                for event in events {
                    match event {
                        HidEvent::Send(report) => send(&socket, &report, peer),
                        HidEvent::Request { cid, cmd, payload } => {
                            tracing::debug!(cid, cmd, len = payload.len(), "request");
                            let command = payload.first().copied().unwrap_or(0);
                            link.request_peer = Some(peer);
                            link.last_keepalive_ms = now;
                            signals.cancel.store(false, Ordering::SeqCst);
                            let response = match &mut runner {
                                _ if cmd != hid::cmd::CBOR => None,
                                Runner::Inline(handler) => Some(handler.handle(&payload)),
                                Runner::Worker { jobs, .. } => {
                                    match jobs.send(Job { cid, payload }) {
                                        Ok(()) => continue,
                                        Err(_) => None,
                                    }
                                }
                            };
                            // MSG is refused by the state machine under NMSG, so `None` only
                            // happens if the worker is gone: answer rather than hang.
                            let response =
                                response.unwrap_or_else(|| vec![StatusCode::Other.as_u8()]);
                            send_all(&socket, &link.device.respond(cid, cmd, &response), peer);
                            if let Runner::Inline(handler) = &mut runner {
                                handler.answered();
                            }
                            log_answered(command, &response);
                        }
                        HidEvent::Cancel { cid } => {
                            tracing::debug!(cid, "host cancelled the request");
                            signals.cancel.store(true, Ordering::SeqCst);
                        }
                        HidEvent::Wink => tracing::info!("wink"),
                    }
                }
            }
            Ok((size, peer)) => {
                tracing::debug!(%peer, size, "dropped a datagram that is not one 64-byte report")
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors from an earlier send (a host that went away) surface here on some
            // systems; they concern that host only.
            Err(e) => tracing::debug!(error = %e, "receive failed"),
        }
        let mut link = lock(&link);
        let now = now_ms();
        for event in link.device.poll(now) {
            if let HidEvent::Send(report) = event
                && let Some(peer) = peers.get(&channel_of(&report))
            {
                send(&socket, &report, *peer);
            }
        }
        if let (Some(cid), Some(peer)) = (link.device.pending(), link.request_peer)
            && now.saturating_sub(link.last_keepalive_ms) >= KEEPALIVE_INTERVAL_MS
        {
            let status = if signals.up_needed.load(Ordering::SeqCst) {
                hid::keepalive::UPNEEDED
            } else {
                hid::keepalive::PROCESSING
            };
            send(&socket, &link.device.keepalive(cid, status), peer);
            link.last_keepalive_ms = now;
        }
    }
    if let Runner::Worker { jobs, thread } = runner {
        drop(jobs);
        // The worker ends when the queue closes; a panic there has been logged by the hook
        // already.
        let _ = thread.join();
    }
    Ok(())
}

fn work(
    queue: mpsc::Receiver<Job>,
    mut handler: impl Handler,
    socket: &UdpSocket,
    link: &Mutex<Link>,
    signals: &Signals,
) {
    for job in queue {
        let command = job.payload.first().copied().unwrap_or(0);
        let response = if signals.cancel.load(Ordering::SeqCst) {
            // Cancelled before the engine saw it: nothing was done, say so.
            vec![StatusCode::KeepaliveCancel.as_u8()]
        } else {
            // A CANCEL that arrives once the engine is running is honoured while it waits for
            // presence (see `SoftPresence`); work that completed is reported as it is, since its
            // effects are already persisted.
            handler.handle(&job.payload)
        };
        signals.up_needed.store(false, Ordering::SeqCst);
        let mut link = lock(link);
        let peer = link.request_peer;
        let reports = link.device.respond(job.cid, hid::cmd::CBOR, &response);
        if let Some(peer) = peer {
            send_all(socket, &reports, peer);
        }
        drop(link);
        handler.answered();
        log_answered(command, &response);
    }
}
