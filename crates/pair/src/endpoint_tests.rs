//! Relay logic of the endpoint, driven through a scripted CTAP-HID layer (the framing itself is
//! keyward-ctap's and tested there; the UDP integration test runs the real one).

use std::collections::VecDeque;

use super::*;
use crate::protocol::{KeepaliveStatus, Principal};

/// Returns queued events for each report; encodes responses as one "report" that tests can read:
/// `cid[4] | cmd|0x80 | payload…`.
#[derive(Default)]
struct ScriptedHid {
    next: VecDeque<Vec<HidEvent>>,
}

fn frame(cid: u32, cmd: u8, payload: &[u8]) -> [u8; 64] {
    let mut r = [0u8; 64];
    r[..4].copy_from_slice(&cid.to_be_bytes());
    r[4] = cmd | 0x80;
    r[5..5 + payload.len()].copy_from_slice(payload);
    r
}

impl LocalHid for ScriptedHid {
    fn handle_report(&mut self, _now_ms: u64, _report: &[u8]) -> Vec<HidEvent> {
        self.next.pop_front().unwrap_or_default()
    }
    fn poll(&mut self, _now_ms: u64) -> Vec<HidEvent> {
        Vec::new()
    }
    fn respond(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; 64]> {
        vec![frame(cid, cmd, payload)]
    }
    fn keepalive(&self, cid: u32, status: u8) -> [u8; 64] {
        frame(cid, 0x3b, &[status])
    }
}

const CID: u32 = 0x0102_0304;

fn endpoint(presence: PresenceMode) -> Endpoint<ScriptedHid> {
    Endpoint::new(ScriptedHid::default(), presence)
}

fn request(ep: &mut Endpoint<ScriptedHid>, now: u64, payload: &[u8]) -> Vec<Action> {
    ep.hid.next.push_back(vec![HidEvent::Request {
        cid: CID,
        cmd: HID_CMD_CBOR,
        payload: payload.to_vec(),
    }]);
    ep.on_report(now, &[0u8; 64])
}

fn connect_and_attach(ep: &mut Endpoint<ScriptedHid>) {
    ep.on_relay(
        0,
        RelayEvent::Connected {
            principal: Principal::Admin {
                id: "a".into(),
                email: "a@x".into(),
            },
        },
    );
    ep.on_relay(
        0,
        RelayEvent::Message(ServerMessage::Attach {
            key_id: "k1".into(),
            session_id: "s1".into(),
            mode: SessionMode::Delegated,
            expires_at: None,
        }),
    );
}

fn sent_ctap(actions: &[Action]) -> (u64, Vec<u8>, bool) {
    for a in actions {
        if let Action::Relay(ClientMessage::Ctap {
            id,
            payload,
            user_present,
            ..
        }) = a
        {
            return (*id, payload.clone(), *user_present);
        }
    }
    panic!("no ctap message in {actions:?}");
}

fn reports(actions: &[Action]) -> Vec<[u8; 64]> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Report(r) = a {
                Some(*r)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn no_key_attached_answers_not_allowed_at_once() {
    let mut ep = endpoint(PresenceMode::Auto);
    let out = request(&mut ep, 0, &[0x04]);
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
    assert!(!ep.busy());
    // Connected but nothing attached: still not allowed.
    ep.on_relay(
        0,
        RelayEvent::Connected {
            principal: Principal::User {
                id: "u".into(),
                upn: "u@x".into(),
            },
        },
    );
    let out = request(&mut ep, 0, &[0x04]);
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
}

#[test]
fn request_is_relayed_and_result_returned_to_host() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    let out = request(&mut ep, 0, &[0x04]);
    let (id, payload, up) = sent_ctap(&out);
    assert_eq!(payload, vec![0x04]);
    assert!(up, "auto presence marks requests as confirmed");
    assert!(
        reports(&out).is_empty(),
        "nothing goes to the host before the server answers"
    );
    let out = ep.on_relay(
        5,
        RelayEvent::Message(ServerMessage::CtapResult {
            id,
            payload: vec![0x00, 0xa0],
        }),
    );
    assert_eq!(reports(&out), vec![frame(CID, HID_CMD_CBOR, &[0x00, 0xa0])]);
    assert!(!ep.busy());
}

#[test]
fn keepalives_every_100ms_follow_server_hints() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    let (id, ..) = sent_ctap(&request(&mut ep, 1000, &[0x01, 0xa0]));
    assert!(
        reports(&ep.tick(1050)).is_empty(),
        "no keepalive before 100 ms"
    );
    assert_eq!(reports(&ep.tick(1100)), vec![frame(CID, 0x3b, &[1])]);
    ep.on_relay(
        1150,
        RelayEvent::Message(ServerMessage::Keepalive {
            id,
            status: KeepaliveStatus::UpNeeded,
        }),
    );
    assert_eq!(reports(&ep.tick(1200)), vec![frame(CID, 0x3b, &[2])]);
    // A hint for another request id changes nothing.
    ep.on_relay(
        1250,
        RelayEvent::Message(ServerMessage::Keepalive {
            id: id + 9,
            status: KeepaliveStatus::Processing,
        }),
    );
    assert_eq!(reports(&ep.tick(1300)), vec![frame(CID, 0x3b, &[2])]);
}

#[test]
fn stale_result_is_ignored() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    let (id, ..) = sent_ctap(&request(&mut ep, 0, &[0x04]));
    let out = ep.on_relay(
        1,
        RelayEvent::Message(ServerMessage::CtapResult {
            id: id + 1,
            payload: vec![0],
        }),
    );
    assert!(out.is_empty());
    assert!(ep.busy());
}

#[test]
fn host_cancel_answers_keepalive_cancel_and_tells_server() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    let (id, ..) = sent_ctap(&request(&mut ep, 0, &[0x01, 0xa0]));
    ep.hid.next.push_back(vec![HidEvent::Cancel { cid: CID }]);
    let out = ep.on_report(10, &[0u8; 64]);
    assert!(out.contains(&Action::Relay(ClientMessage::Cancel { id })));
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_KEEPALIVE_CANCEL])]
    );
    // The server's late answer to the cancelled request does not reach the host.
    assert!(
        ep.on_relay(
            20,
            RelayEvent::Message(ServerMessage::CtapResult {
                id,
                payload: vec![0]
            })
        )
        .is_empty()
    );
}

#[test]
fn detach_mid_operation_fails_the_request_cleanly() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    sent_ctap(&request(&mut ep, 0, &[0x01, 0xa0]));
    // Detach of another session id is ignored.
    let out = ep.on_relay(
        1,
        RelayEvent::Message(ServerMessage::Detach {
            session_id: "other".into(),
            reason: "x".into(),
        }),
    );
    assert!(out.is_empty());
    let out = ep.on_relay(
        2,
        RelayEvent::Message(ServerMessage::Detach {
            session_id: "s1".into(),
            reason: "expired".into(),
        }),
    );
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
    assert!(ep.attached().is_none());
    let out = request(&mut ep, 3, &[0x04]);
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
}

#[test]
fn relay_loss_detaches() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    sent_ctap(&request(&mut ep, 0, &[0x04]));
    let out = ep.on_relay(
        1,
        RelayEvent::Disconnected {
            reason: "gone".into(),
            retry_in: std::time::Duration::from_millis(1),
        },
    );
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
    assert!(ep.attached().is_none());
}

#[test]
fn server_silence_times_out() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    let (id, ..) = sent_ctap(&request(&mut ep, 0, &[0x04]));
    let out = ep.tick(SERVER_TIMEOUT_MS);
    assert!(out.contains(&Action::Relay(ClientMessage::Cancel { id })));
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_ACTION_TIMEOUT])]
    );
}

#[test]
fn prompt_mode_asks_before_relaying_make_credential() {
    let mut ep = endpoint(PresenceMode::Prompt);
    connect_and_attach(&mut ep);
    let out = request(&mut ep, 0, &[0x01, 0xa0]);
    let Some(Action::AskPresence { ticket, what }) = out.first().cloned() else {
        panic!("expected a prompt: {out:?}")
    };
    assert!(what.contains("makeCredential"));
    assert_eq!(
        reports(&ep.tick(100)),
        vec![frame(CID, 0x3b, &[2])],
        "UPNEEDED while the prompt is open"
    );
    let out = ep.on_presence(200, ticket, true);
    let (_, payload, up) = sent_ctap(&out);
    assert_eq!(payload, vec![0x01, 0xa0]);
    assert!(up);
}

#[test]
fn prompt_denied_or_unanswered() {
    let mut ep = endpoint(PresenceMode::Prompt);
    connect_and_attach(&mut ep);
    let out = request(&mut ep, 0, &[0x01, 0xa0]);
    let Some(Action::AskPresence { ticket, .. }) = out.first().cloned() else {
        panic!("expected a prompt")
    };
    assert_eq!(
        reports(&ep.on_presence(1, ticket, false)),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_OPERATION_DENIED])]
    );

    let out = request(&mut ep, 10, &[0x01, 0xa0]);
    let Some(Action::AskPresence { ticket, .. }) = out.first().cloned() else {
        panic!("expected a prompt")
    };
    let out = ep.tick(10 + PRESENCE_TIMEOUT_MS);
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_USER_ACTION_TIMEOUT])]
    );
    assert!(
        ep.on_presence(20 + PRESENCE_TIMEOUT_MS, ticket, true)
            .is_empty(),
        "a late yes does nothing"
    );
}

#[test]
fn prompt_mode_relays_get_info_and_silent_probes_without_asking() {
    let mut ep = endpoint(PresenceMode::Prompt);
    connect_and_attach(&mut ep);
    let (id, _, up) = sent_ctap(&request(&mut ep, 0, &[0x04]));
    assert!(!up, "nothing was confirmed");
    ep.on_relay(
        1,
        RelayEvent::Message(ServerMessage::CtapResult {
            id,
            payload: vec![0],
        }),
    );
    // getAssertion {1: "a", 5: {"up": false}}
    let ga = [
        0x02, 0xa2, 0x01, 0x61, b'a', 0x05, 0xa1, 0x62, b'u', b'p', 0xf4,
    ];
    let (_, payload, up) = sent_ctap(&request(&mut ep, 2, &ga));
    assert_eq!(payload, ga.to_vec());
    assert!(!up);
}

#[test]
fn non_cbor_commands_are_refused() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    ep.hid.next.push_back(vec![HidEvent::Request {
        cid: CID,
        cmd: 0x03,
        payload: vec![0; 7],
    }]);
    let out = ep.on_report(0, &[0u8; 64]);
    assert_eq!(reports(&out), vec![frame(CID, HID_CMD_ERROR, &[0x01])]);
}

#[test]
fn reattach_is_a_power_cycle() {
    let mut ep = endpoint(PresenceMode::Auto);
    connect_and_attach(&mut ep);
    sent_ctap(&request(&mut ep, 0, &[0x04]));
    let out = ep.on_relay(
        1,
        RelayEvent::Message(ServerMessage::Attach {
            key_id: "k2".into(),
            session_id: "s2".into(),
            mode: SessionMode::User,
            expires_at: None,
        }),
    );
    assert_eq!(
        reports(&out),
        vec![frame(CID, HID_CMD_CBOR, &[CTAP2_ERR_NOT_ALLOWED])]
    );
    assert_eq!(ep.attached().map(|a| a.key_id.as_str()), Some("k2"));
}
