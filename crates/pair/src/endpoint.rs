//! The local FIDO device: CTAP-HID terminated here, whole CTAP2 requests relayed to the server.
//!
//! [`Endpoint`] is sans-I/O: it is fed HID output reports, relay events, presence answers and clock
//! ticks, and returns [`Action`]s (input reports to send, messages for the relay, a presence
//! question to ask). The UDP and uhid front-ends and the relay client do the I/O.
//!
//! Behaviour with **no key connected** (no `attach` from the server, or the relay is down): the
//! device still answers CTAP-HID INIT, PING and WINK (the tool is there), but every CTAP2 request
//! is answered at once with CTAP2_ERR_NOT_ALLOWED (0x30). We chose an immediate, clear error over
//! silence so a host never hangs; with `--uhid` the device additionally disappears from the system
//! while no key is attached. A request in flight when the key is detached or the relay drops is
//! answered with CTAP2_ERR_NOT_ALLOWED too.
//!
//! While a request is with the server (or waiting for the local user's confirmation) the
//! endpoint sends CTAPHID_KEEPALIVE every 100 ms: PROCESSING, or UPNEEDED when the server hinted
//! so or the local prompt is open.

use crate::protocol::{ClientMessage, ServerMessage, SessionMode};
use crate::relay::RelayEvent;

/// CTAPHID command codes (without the 0x80 bit), as in CTAP 2.1 §11.2.9.
pub const HID_CMD_CBOR: u8 = 0x10;
pub const HID_CMD_ERROR: u8 = 0x3F;
const HID_ERR_INVALID_CMD: u8 = 0x01;

/// CTAP2 status bytes this module produces.
pub const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;
pub const CTAP2_ERR_KEEPALIVE_CANCEL: u8 = 0x2D;
pub const CTAP2_ERR_USER_ACTION_TIMEOUT: u8 = 0x2F;
pub const CTAP2_ERR_NOT_ALLOWED: u8 = 0x30;
pub const CTAP2_ERR_ACTION_TIMEOUT: u8 = 0x3A;

const KEEPALIVE_EVERY_MS: u64 = 100;
/// The local user has this long to confirm (the CTAP user-presence timeout, 30 s).
const PRESENCE_TIMEOUT_MS: u64 = 30_000;
/// The server answers every request long before this unless something is wrong.
const SERVER_TIMEOUT_MS: u64 = 60_000;
const KEEPALIVE_PROCESSING: u8 = 1;
const KEEPALIVE_UPNEEDED: u8 = 2;

/// The CTAP-HID layer this endpoint drives; `keyward_ctap::hid::HidDevice` implements it
/// (see `hid.rs`). A trait so the relay logic is testable without a transport.
pub trait LocalHid {
    fn handle_report(&mut self, now_ms: u64, report: &[u8]) -> Vec<HidEvent>;
    fn poll(&mut self, now_ms: u64) -> Vec<HidEvent>;
    fn respond(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; 64]>;
    fn keepalive(&self, cid: u32, status: u8) -> [u8; 64];
}

/// What the CTAP-HID layer reports (mirrors `keyward_ctap::hid::HidEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HidEvent {
    Send([u8; 64]),
    Request { cid: u32, cmd: u8, payload: Vec<u8> },
    Cancel { cid: u32 },
    Wink,
}

/// How user presence is established for operations that need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    /// Every request counts as confirmed: for a tool whose pairing itself is the user's consent
    /// (and for tests).
    Auto,
    /// makeCredential, getAssertion (unless `up: false`), reset and selection wait for the local
    /// user to confirm.
    Prompt,
}

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this 64-byte input report to the host.
    Report([u8; 64]),
    /// Send this to the relay.
    Relay(ClientMessage),
    /// Ask the local user to confirm `what`; answer with [`Endpoint::on_presence`] and `ticket`.
    AskPresence { ticket: u64, what: String },
    /// The host asked the device to identify itself.
    Wink,
}

/// The key currently connected to this tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub key_id: String,
    pub session_id: String,
    pub mode: SessionMode,
}

#[derive(Debug)]
enum Phase {
    AwaitingPresence { payload: Vec<u8> },
    AwaitingServer,
}

#[derive(Debug)]
struct Pending {
    cid: u32,
    id: u64,
    phase: Phase,
    started_ms: u64,
    last_keepalive_ms: u64,
    status: u8,
}

/// The local device state machine.
pub struct Endpoint<H: LocalHid> {
    hid: H,
    presence: PresenceMode,
    attached: Option<Attachment>,
    relay_up: bool,
    pending: Option<Pending>,
    next_id: u64,
}

impl<H: LocalHid> Endpoint<H> {
    pub fn new(hid: H, presence: PresenceMode) -> Self {
        Self {
            hid,
            presence,
            attached: None,
            relay_up: false,
            pending: None,
            next_id: 1,
        }
    }

    /// The key connected right now, if any.
    pub fn attached(&self) -> Option<&Attachment> {
        self.attached.as_ref()
    }

    /// True while a request is outstanding (for tests and status output).
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// One HID output report from the host.
    pub fn on_report(&mut self, now_ms: u64, report: &[u8]) -> Vec<Action> {
        let events = self.hid.handle_report(now_ms, report);
        self.on_hid_events(now_ms, events)
    }

    /// Timers: HID inter-packet timeouts, keepalives, presence and server timeouts.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let events = self.hid.poll(now_ms);
        let mut out = self.on_hid_events(now_ms, events);
        let Some(p) = self.pending.as_mut() else {
            return out;
        };
        let limit = match p.phase {
            Phase::AwaitingPresence { .. } => PRESENCE_TIMEOUT_MS,
            Phase::AwaitingServer => SERVER_TIMEOUT_MS,
        };
        if now_ms.saturating_sub(p.started_ms) >= limit {
            let status = match p.phase {
                Phase::AwaitingPresence { .. } => CTAP2_ERR_USER_ACTION_TIMEOUT,
                Phase::AwaitingServer => CTAP2_ERR_ACTION_TIMEOUT,
            };
            if matches!(p.phase, Phase::AwaitingServer) {
                out.push(Action::Relay(ClientMessage::Cancel { id: p.id }));
            }
            out.extend(self.finish(&[status]));
        } else if now_ms.saturating_sub(p.last_keepalive_ms) >= KEEPALIVE_EVERY_MS {
            p.last_keepalive_ms = now_ms;
            out.push(Action::Report(self.hid.keepalive(p.cid, p.status)));
        }
        out
    }

    /// An event from the relay client.
    pub fn on_relay(&mut self, _now_ms: u64, event: RelayEvent) -> Vec<Action> {
        match event {
            RelayEvent::Connected { .. } => {
                self.relay_up = true;
                Vec::new()
            }
            RelayEvent::Disconnected { .. } | RelayEvent::Fatal(_) => {
                self.relay_up = false;
                self.attached = None;
                self.fail_pending()
            }
            RelayEvent::Message(m) => self.on_server(m),
        }
    }

    /// The local user's answer to [`Action::AskPresence`].
    pub fn on_presence(&mut self, now_ms: u64, ticket: u64, approved: bool) -> Vec<Action> {
        let Some(p) = self.pending.as_mut() else {
            return Vec::new();
        };
        if p.id != ticket {
            return Vec::new(); // answered too late: that request already ended
        }
        let Phase::AwaitingPresence { payload } =
            std::mem::replace(&mut p.phase, Phase::AwaitingServer)
        else {
            return Vec::new();
        };
        if !approved {
            return self.finish(&[CTAP2_ERR_OPERATION_DENIED]);
        }
        p.status = KEEPALIVE_PROCESSING;
        p.started_ms = now_ms;
        let key_id = self.attached.as_ref().map(|a| a.key_id.clone());
        vec![Action::Relay(ClientMessage::Ctap {
            id: p.id,
            payload,
            user_present: true,
            key_id,
        })]
    }

    fn on_server(&mut self, msg: ServerMessage) -> Vec<Action> {
        match msg {
            ServerMessage::Attach {
                key_id,
                session_id,
                mode,
                ..
            } => {
                // A new attach is a power cycle of the (new) key: whatever was pending belonged to
                // the previous one.
                let out = self.fail_pending();
                self.attached = Some(Attachment {
                    key_id,
                    session_id,
                    mode,
                });
                out
            }
            ServerMessage::Detach { session_id, .. } => {
                if self
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.session_id == session_id)
                {
                    self.attached = None;
                    return self.fail_pending();
                }
                Vec::new()
            }
            ServerMessage::CtapResult { id, payload } => {
                match &self.pending {
                    Some(p) if p.id == id && matches!(p.phase, Phase::AwaitingServer) => {}
                    _ => return Vec::new(), // a cancelled or timed-out request's late answer
                }
                if payload.is_empty() {
                    return self.finish(&[CTAP2_ERR_NOT_ALLOWED]);
                }
                self.finish(&payload)
            }
            ServerMessage::Keepalive { id, status } => {
                if let Some(p) = self.pending.as_mut().filter(|p| p.id == id) {
                    p.status = status.hid_status();
                }
                Vec::new()
            }
            ServerMessage::Challenge { .. }
            | ServerMessage::Welcome { .. }
            | ServerMessage::LoggedOut
            | ServerMessage::Error { .. } => Vec::new(),
        }
    }

    fn on_hid_events(&mut self, now_ms: u64, events: Vec<HidEvent>) -> Vec<Action> {
        let mut out = Vec::new();
        for e in events {
            match e {
                HidEvent::Send(r) => out.push(Action::Report(r)),
                HidEvent::Wink => out.push(Action::Wink),
                HidEvent::Cancel { cid } => {
                    if let Some(p) = self.pending.as_ref().filter(|p| p.cid == cid) {
                        if matches!(p.phase, Phase::AwaitingServer) {
                            out.push(Action::Relay(ClientMessage::Cancel { id: p.id }));
                        }
                        out.extend(self.finish(&[CTAP2_ERR_KEEPALIVE_CANCEL]));
                    }
                }
                HidEvent::Request { cid, cmd, payload } => {
                    out.extend(self.on_request(now_ms, cid, cmd, payload))
                }
            }
        }
        out
    }

    fn on_request(&mut self, now_ms: u64, cid: u32, cmd: u8, payload: Vec<u8>) -> Vec<Action> {
        if cmd != HID_CMD_CBOR {
            // Only CTAP2 is relayed (the device advertises NMSG).
            return self
                .hid
                .respond(cid, HID_CMD_ERROR, &[HID_ERR_INVALID_CMD])
                .into_iter()
                .map(Action::Report)
                .collect();
        }
        if self.pending.is_some() {
            // The HID layer serialises requests, so this is a bug there; answer rather than lose it.
            return self.respond_now(cid, &[CTAP2_ERR_NOT_ALLOWED]);
        }
        if !self.relay_up || self.attached.is_none() {
            return self.respond_now(cid, &[CTAP2_ERR_NOT_ALLOWED]);
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.presence == PresenceMode::Prompt && needs_presence(&payload) {
            let what = describe(&payload);
            self.pending = Some(Pending {
                cid,
                id,
                phase: Phase::AwaitingPresence { payload },
                started_ms: now_ms,
                last_keepalive_ms: now_ms,
                status: KEEPALIVE_UPNEEDED,
            });
            return vec![Action::AskPresence { ticket: id, what }];
        }
        self.pending = Some(Pending {
            cid,
            id,
            phase: Phase::AwaitingServer,
            started_ms: now_ms,
            last_keepalive_ms: now_ms,
            status: KEEPALIVE_PROCESSING,
        });
        let user_present = self.presence == PresenceMode::Auto;
        vec![Action::Relay(ClientMessage::Ctap {
            id,
            payload,
            user_present,
            // Binds the request to the key the tool shows: the server refuses it if another key
            // is attached by the time it arrives.
            key_id: self.attached.as_ref().map(|a| a.key_id.clone()),
        })]
    }

    fn respond_now(&mut self, cid: u32, payload: &[u8]) -> Vec<Action> {
        self.hid
            .respond(cid, HID_CMD_CBOR, payload)
            .into_iter()
            .map(Action::Report)
            .collect()
    }

    /// Answers the pending request with `payload` and frees the device.
    fn finish(&mut self, payload: &[u8]) -> Vec<Action> {
        match self.pending.take() {
            Some(p) => self.respond_now(p.cid, payload),
            None => Vec::new(),
        }
    }

    fn fail_pending(&mut self) -> Vec<Action> {
        self.finish(&[CTAP2_ERR_NOT_ALLOWED])
    }
}

/// Whether a CTAP2 request needs the user's confirmation in `--presence prompt` mode.
fn needs_presence(payload: &[u8]) -> bool {
    match payload.first() {
        Some(0x01) | Some(0x07) | Some(0x0B) => true,
        // getAssertion with options {up: false} is a silent probe (e.g. a browser checking an
        // exclude list); asking the user about it would be confusing.
        Some(0x02) => crate::cbor_peek::get_assertion_up(&payload[1..]).unwrap_or(true),
        _ => false,
    }
}

fn describe(payload: &[u8]) -> String {
    match payload.first() {
        Some(0x01) => "register a passkey (makeCredential)".into(),
        Some(0x02) => "sign in (getAssertion)".into(),
        Some(0x07) => "RESET the key, deleting all its passkeys".into(),
        Some(0x0B) => "select this key".into(),
        Some(c) => format!("CTAP command 0x{c:02x}"),
        None => "an empty request".into(),
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
