use super::*;
use crate::status::StatusCode;
use proptest::prelude::*;

const CAPS: Capabilities = Capabilities {
    wink: true,
    cbor: true,
    nmsg: true,
    version: (1, 2, 3),
};
const NONCE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// Host-side helpers: build output reports the way python-fido2 does.
fn init_packet(cid: u32, command: u8, total_len: usize, data: &[u8]) -> [u8; REPORT_SIZE] {
    let mut r = [0u8; REPORT_SIZE];
    r[..4].copy_from_slice(&cid.to_be_bytes());
    r[4] = 0x80 | command;
    r[5..7].copy_from_slice(&(total_len as u16).to_be_bytes());
    r[7..7 + data.len()].copy_from_slice(data);
    r
}

fn cont_packet(cid: u32, seq: u8, data: &[u8]) -> [u8; REPORT_SIZE] {
    let mut r = [0u8; REPORT_SIZE];
    r[..4].copy_from_slice(&cid.to_be_bytes());
    r[4] = seq;
    r[5..5 + data.len()].copy_from_slice(data);
    r
}

fn sent(events: &[HidEvent]) -> Vec<[u8; REPORT_SIZE]> {
    events
        .iter()
        .filter_map(|e| match e {
            HidEvent::Send(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn only_error(events: &[HidEvent]) -> (u32, u8) {
    assert_eq!(events.len(), 1, "expected one event, got {events:?}");
    let HidEvent::Send(r) = events[0] else {
        panic!("expected a report, got {events:?}")
    };
    assert_eq!(r[4], 0x80 | cmd::ERROR, "expected ERROR, got {r:?}");
    assert_eq!(u16::from_be_bytes([r[5], r[6]]), 1);
    (u32::from_be_bytes([r[0], r[1], r[2], r[3]]), r[7])
}

/// Reassembles the device's reports into (cid, cmd, payload), checking the framing.
fn reassemble(reports: &[[u8; REPORT_SIZE]]) -> (u32, u8, Vec<u8>) {
    let first = reports.first().expect("at least one report");
    let cid = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    assert!(first[4] & 0x80 != 0);
    let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
    let mut data = first[7..].to_vec();
    for (i, r) in reports[1..].iter().enumerate() {
        assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]), cid);
        assert_eq!(usize::from(r[4]), i);
        data.extend_from_slice(&r[5..]);
    }
    assert!(data.len() >= len && data.len() - len < REPORT_SIZE);
    assert!(data[len..].iter().all(|b| *b == 0), "padding must be zero");
    data.truncate(len);
    (cid, first[4] & 0x7F, data)
}

/// A device with one allocated channel, returned alongside.
fn opened() -> (HidDevice, u32) {
    let mut dev = HidDevice::new(CAPS);
    let cid = allocate(&mut dev, 0);
    (dev, cid)
}

fn allocate(dev: &mut HidDevice, now: u64) -> u32 {
    let events = dev.handle_report(now, &init_packet(BROADCAST_CID, cmd::INIT, 8, &NONCE));
    let (cid, command, payload) = reassemble(&sent(&events));
    assert_eq!((cid, command), (BROADCAST_CID, cmd::INIT));
    assert_eq!(payload.len(), 17);
    assert_eq!(payload[..8], NONCE);
    u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]])
}

/// Sends a whole message from the host, one report at a time, collecting the events.
fn send_message(
    dev: &mut HidDevice,
    now: u64,
    cid: u32,
    command: u8,
    payload: &[u8],
) -> Vec<HidEvent> {
    let mut events = Vec::new();
    let first = payload.len().min(57);
    events.extend(dev.handle_report(
        now,
        &init_packet(cid, command, payload.len(), &payload[..first]),
    ));
    for (seq, chunk) in payload[first..].chunks(59).enumerate() {
        events.extend(dev.handle_report(now, &cont_packet(cid, seq as u8, chunk)));
    }
    events
}

#[test]
fn init_allocates_distinct_channels_and_reports_capabilities() {
    let mut dev = HidDevice::new(CAPS);
    let events = dev.handle_report(0, &init_packet(BROADCAST_CID, cmd::INIT, 8, &NONCE));
    let (_, _, payload) = reassemble(&sent(&events));
    assert_eq!(
        payload[12..],
        [PROTOCOL_VERSION, 1, 2, 3, 0x01 | 0x04 | 0x08]
    );
    let a = u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]);
    let b = allocate(&mut dev, 0);
    assert_ne!(a, b);
    assert!(![0, BROADCAST_CID].contains(&a) && ![0, BROADCAST_CID].contains(&b));
}

#[test]
fn init_with_wrong_length_is_invalid_len() {
    let mut dev = HidDevice::new(CAPS);
    let events = dev.handle_report(0, &init_packet(BROADCAST_CID, cmd::INIT, 7, &NONCE[..7]));
    assert_eq!(only_error(&events), (BROADCAST_CID, error::INVALID_LEN));
}

#[test]
fn broadcast_channel_accepts_only_init() {
    let mut dev = HidDevice::new(CAPS);
    let events = dev.handle_report(0, &init_packet(BROADCAST_CID, cmd::PING, 1, &[9]));
    assert_eq!(only_error(&events), (BROADCAST_CID, error::INVALID_CHANNEL));
}

#[test]
fn unallocated_and_reserved_channels_are_invalid() {
    let (mut dev, cid) = opened();
    for bad in [0, cid + 1, 0x1234_5678] {
        let events = dev.handle_report(0, &init_packet(bad, cmd::PING, 1, &[9]));
        assert_eq!(only_error(&events), (bad, error::INVALID_CHANNEL));
    }
    let events = dev.handle_report(0, &init_packet(0x1234_5678, cmd::INIT, 8, &NONCE));
    assert_eq!(only_error(&events), (0x1234_5678, error::INVALID_CHANNEL));
}

#[test]
fn ping_echoes_short_and_long_payloads() {
    let (mut dev, cid) = opened();
    for len in [0, 1, 57, 58, 116, 117, 1000, MAX_MESSAGE_SIZE] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let events = send_message(&mut dev, 0, cid, cmd::PING, &payload);
        assert_eq!(
            reassemble(&sent(&events)),
            (cid, cmd::PING, payload),
            "length {len}"
        );
    }
}

#[test]
fn oversized_message_is_invalid_len() {
    let (mut dev, cid) = opened();
    let events = dev.handle_report(0, &init_packet(cid, cmd::CBOR, MAX_MESSAGE_SIZE + 1, &[4]));
    assert_eq!(only_error(&events), (cid, error::INVALID_LEN));
    // Nothing is left half-assembled: the channel works right away.
    let events = send_message(&mut dev, 0, cid, cmd::PING, b"ok");
    assert_eq!(reassemble(&sent(&events)).2, b"ok");
}

#[test]
fn cbor_request_reaches_the_application_and_the_answer_is_fragmented() {
    let (mut dev, cid) = opened();
    let request: Vec<u8> = (0..300).map(|i| i as u8).collect();
    let events = send_message(&mut dev, 0, cid, cmd::CBOR, &request);
    assert_eq!(
        events,
        vec![HidEvent::Request {
            cid,
            cmd: cmd::CBOR,
            payload: request
        }]
    );
    assert_eq!(dev.pending(), Some(cid));
    assert_eq!(dev.pending_command(), Some(cmd::CBOR));
    let answer = vec![0u8; 700];
    let reports = dev.respond(cid, cmd::CBOR, &answer);
    assert_eq!(reports.len(), 1 + (700 - 57usize).div_ceil(59));
    assert_eq!(reassemble(&reports), (cid, cmd::CBOR, answer));
    assert_eq!(dev.pending(), None);
    // A second answer for the same request is dropped.
    assert!(dev.respond(cid, cmd::CBOR, &[0]).is_empty());
}

#[test]
fn empty_cbor_message_is_invalid_len() {
    let (mut dev, cid) = opened();
    let events = dev.handle_report(0, &init_packet(cid, cmd::CBOR, 0, &[]));
    assert_eq!(only_error(&events), (cid, error::INVALID_LEN));
    assert_eq!(dev.pending(), None);
}

#[test]
fn msg_is_invalid_cmd_when_nmsg_is_advertised() {
    let (mut dev, cid) = opened();
    let events = dev.handle_report(0, &init_packet(cid, cmd::MSG, 4, &[0, 3, 0, 0]));
    assert_eq!(only_error(&events), (cid, error::INVALID_CMD));
    let mut u2f = HidDevice::new(Capabilities {
        nmsg: false,
        ..CAPS
    });
    let cid = allocate(&mut u2f, 0);
    let events = u2f.handle_report(0, &init_packet(cid, cmd::MSG, 4, &[0, 3, 0, 0]));
    assert!(matches!(
        events[..],
        [HidEvent::Request { cmd: cmd::MSG, .. }]
    ));
}

#[test]
fn unknown_and_device_only_commands_are_invalid_cmd() {
    let (mut dev, cid) = opened();
    for command in [cmd::KEEPALIVE, cmd::ERROR, 0x40, 0x7F, 0x02] {
        let events = dev.handle_report(0, &init_packet(cid, command, 0, &[]));
        assert_eq!(
            only_error(&events),
            (cid, error::INVALID_CMD),
            "command {command:#x}"
        );
    }
}

#[test]
fn wink_answers_and_notifies_the_application() {
    let (mut dev, cid) = opened();
    let events = dev.handle_report(0, &init_packet(cid, cmd::WINK, 0, &[]));
    assert_eq!(events[0], HidEvent::Wink);
    assert_eq!(reassemble(&sent(&events)), (cid, cmd::WINK, vec![]));
    let mut plain = HidDevice::new(Capabilities {
        wink: false,
        ..CAPS
    });
    let cid = allocate(&mut plain, 0);
    assert_eq!(
        only_error(&plain.handle_report(0, &init_packet(cid, cmd::WINK, 0, &[]))),
        (cid, error::INVALID_CMD)
    );
}

#[test]
fn other_channel_is_busy_during_reassembly_and_while_a_request_is_pending() {
    let mut dev = HidDevice::new(CAPS);
    let a = allocate(&mut dev, 0);
    let b = allocate(&mut dev, 0);
    // A starts a two-packet message.
    assert!(
        dev.handle_report(0, &init_packet(a, cmd::CBOR, 100, &[4; 57]))
            .is_empty()
    );
    assert_eq!(
        only_error(&dev.handle_report(1, &init_packet(b, cmd::PING, 1, &[1]))),
        (b, error::CHANNEL_BUSY)
    );
    assert_eq!(
        only_error(&dev.handle_report(1, &cont_packet(b, 0, &[1]))),
        (b, error::CHANNEL_BUSY)
    );
    // New clients can still open a channel.
    let c = allocate(&mut dev, 2);
    assert_ne!(c, a);
    // A finishes; its request is now pending and B is still refused.
    let events = dev.handle_report(3, &cont_packet(a, 0, &[4; 43]));
    assert!(matches!(events[..], [HidEvent::Request { cid, .. }] if cid == a));
    assert_eq!(
        only_error(&dev.handle_report(4, &init_packet(b, cmd::PING, 1, &[1]))),
        (b, error::CHANNEL_BUSY)
    );
    // A itself may not start another request either.
    assert_eq!(
        only_error(&dev.handle_report(4, &init_packet(a, cmd::CBOR, 1, &[4]))),
        (a, error::CHANNEL_BUSY)
    );
    assert!(!dev.respond(a, cmd::CBOR, &[0]).is_empty());
    let events = send_message(&mut dev, 5, b, cmd::PING, &[1]);
    assert_eq!(reassemble(&sent(&events)).2, vec![1]);
}

#[test]
fn out_of_order_sequence_is_invalid_seq_and_drops_the_message() {
    let (mut dev, cid) = opened();
    dev.handle_report(0, &init_packet(cid, cmd::PING, 200, &[1; 57]));
    assert!(
        dev.handle_report(0, &cont_packet(cid, 0, &[1; 59]))
            .is_empty()
    );
    assert_eq!(
        only_error(&dev.handle_report(0, &cont_packet(cid, 2, &[1; 59]))),
        (cid, error::INVALID_SEQ)
    );
    // The rest of the abandoned message is ignored as stray continuation packets.
    assert!(
        dev.handle_report(0, &cont_packet(cid, 1, &[1; 59]))
            .is_empty()
    );
}

#[test]
fn new_init_packet_mid_message_is_invalid_seq() {
    let (mut dev, cid) = opened();
    dev.handle_report(0, &init_packet(cid, cmd::PING, 200, &[1; 57]));
    assert_eq!(
        only_error(&dev.handle_report(0, &init_packet(cid, cmd::PING, 1, &[1]))),
        (cid, error::INVALID_SEQ)
    );
    let events = send_message(&mut dev, 0, cid, cmd::PING, &[7]);
    assert_eq!(reassemble(&sent(&events)).2, vec![7]);
}

#[test]
fn stray_continuation_packets_are_ignored() {
    let (mut dev, cid) = opened();
    assert!(dev.handle_report(0, &cont_packet(cid, 0, &[1])).is_empty());
    assert!(
        dev.handle_report(0, &cont_packet(0xDEAD_BEEF, 5, &[1]))
            .is_empty()
    );
}

#[test]
fn inter_packet_timeout_ends_the_message_with_msg_timeout() {
    let (mut dev, cid) = opened();
    dev.handle_report(1000, &init_packet(cid, cmd::PING, 100, &[1; 57]));
    assert!(dev.poll(1000 + INTER_PACKET_TIMEOUT_MS - 1).is_empty());
    assert_eq!(
        only_error(&dev.poll(1000 + INTER_PACKET_TIMEOUT_MS)),
        (cid, error::MSG_TIMEOUT)
    );
    assert!(dev.poll(5000).is_empty(), "the timeout is reported once");
}

#[test]
fn late_continuation_finds_its_message_expired() {
    let (mut dev, cid) = opened();
    dev.handle_report(0, &init_packet(cid, cmd::PING, 100, &[1; 57]));
    // No poll in between: handle_report applies the timeout itself, then ignores the stray packet.
    let events = dev.handle_report(500, &cont_packet(cid, 0, &[1; 43]));
    assert_eq!(only_error(&events), (cid, error::MSG_TIMEOUT));
}

#[test]
fn each_packet_restarts_the_inter_packet_timer() {
    let (mut dev, cid) = opened();
    dev.handle_report(0, &init_packet(cid, cmd::PING, 57 + 59 * 3, &[1; 57]));
    for seq in 0..3u8 {
        let now = 90 * (u64::from(seq) + 1);
        let events = dev.handle_report(now, &cont_packet(cid, seq, &[1; 59]));
        if seq < 2 {
            assert!(events.is_empty(), "seq {seq}: {events:?}");
        } else {
            assert_eq!(reassemble(&sent(&events)).2.len(), 57 + 59 * 3);
        }
    }
}

#[test]
fn init_on_an_allocated_channel_resynchronises_it() {
    let (mut dev, cid) = opened();
    dev.handle_report(0, &init_packet(cid, cmd::PING, 200, &[1; 57]));
    let events = dev.handle_report(0, &init_packet(cid, cmd::INIT, 8, &NONCE));
    let (reply_cid, command, payload) = reassemble(&sent(&events));
    assert_eq!((reply_cid, command), (cid, cmd::INIT));
    assert_eq!(
        payload[8..12],
        cid.to_be_bytes(),
        "resync keeps the channel id"
    );
    // The half-received message was abandoned.
    assert!(
        dev.handle_report(0, &cont_packet(cid, 0, &[1; 59]))
            .is_empty()
    );
    let events = send_message(&mut dev, 0, cid, cmd::PING, &[3]);
    assert_eq!(reassemble(&sent(&events)).2, vec![3]);
}

#[test]
fn init_resync_cancels_the_pending_request_and_drops_its_late_answer() {
    let (mut dev, cid) = opened();
    send_message(&mut dev, 0, cid, cmd::CBOR, &[4]);
    let events = dev.handle_report(10, &init_packet(cid, cmd::INIT, 8, &NONCE));
    assert!(events.contains(&HidEvent::Cancel { cid }));
    assert_eq!(
        dev.pending(),
        None,
        "no keepalives for an abandoned request"
    );
    // The device stays busy until the application answers, and that stale answer is dropped.
    assert_eq!(
        only_error(&dev.handle_report(11, &init_packet(cid, cmd::CBOR, 1, &[4]))),
        (cid, error::CHANNEL_BUSY)
    );
    assert!(
        dev.respond(cid, cmd::CBOR, &[StatusCode::KeepaliveCancel.as_u8()])
            .is_empty()
    );
    let events = send_message(&mut dev, 12, cid, cmd::CBOR, &[4]);
    assert!(matches!(events[..], [HidEvent::Request { .. }]));
}

#[test]
fn cancel_is_silent_and_reaches_only_the_pending_channel() {
    let mut dev = HidDevice::new(CAPS);
    let a = allocate(&mut dev, 0);
    let b = allocate(&mut dev, 0);
    // Nothing pending: no reply at all.
    assert!(
        dev.handle_report(0, &init_packet(a, cmd::CANCEL, 0, &[]))
            .is_empty()
    );
    send_message(&mut dev, 0, a, cmd::CBOR, &[4]);
    assert!(
        dev.handle_report(0, &init_packet(b, cmd::CANCEL, 0, &[]))
            .is_empty()
    );
    assert_eq!(
        dev.handle_report(0, &init_packet(a, cmd::CANCEL, 0, &[])),
        vec![HidEvent::Cancel { cid: a }]
    );
    // The application finishes the request with KEEPALIVE_CANCEL, which does reach the host.
    let reports = dev.respond(a, cmd::CBOR, &[StatusCode::KeepaliveCancel.as_u8()]);
    assert_eq!(reassemble(&reports), (a, cmd::CBOR, vec![0x2D]));
}

#[test]
fn lock_keeps_other_channels_out_until_it_expires_or_is_released() {
    let mut dev = HidDevice::new(CAPS);
    let a = allocate(&mut dev, 0);
    let b = allocate(&mut dev, 0);
    let events = dev.handle_report(0, &init_packet(a, cmd::LOCK, 1, &[2]));
    assert_eq!(reassemble(&sent(&events)), (a, cmd::LOCK, vec![]));
    assert_eq!(
        only_error(&dev.handle_report(100, &init_packet(b, cmd::PING, 1, &[1]))),
        (b, error::CHANNEL_BUSY)
    );
    assert_eq!(
        only_error(&dev.handle_report(100, &init_packet(BROADCAST_CID, cmd::INIT, 8, &NONCE))),
        (BROADCAST_CID, error::CHANNEL_BUSY)
    );
    // The owner works normally.
    assert_eq!(
        reassemble(&sent(&send_message(&mut dev, 100, a, cmd::PING, &[5]))).2,
        vec![5]
    );
    // Expiry after two seconds.
    assert!(dev.poll(2000).is_empty());
    assert_eq!(
        reassemble(&sent(&send_message(&mut dev, 2000, b, cmd::PING, &[6]))).2,
        vec![6]
    );
    // Lock again, then release with 0.
    dev.handle_report(3000, &init_packet(b, cmd::LOCK, 1, &[10]));
    assert_eq!(
        only_error(&dev.handle_report(3001, &init_packet(a, cmd::PING, 1, &[1]))),
        (a, error::CHANNEL_BUSY)
    );
    dev.handle_report(3002, &init_packet(b, cmd::LOCK, 1, &[0]));
    assert_eq!(
        reassemble(&sent(&send_message(&mut dev, 3003, a, cmd::PING, &[7]))).2,
        vec![7]
    );
}

#[test]
fn lock_rejects_bad_durations_and_lengths() {
    let (mut dev, cid) = opened();
    assert_eq!(
        only_error(&dev.handle_report(0, &init_packet(cid, cmd::LOCK, 1, &[11]))),
        (cid, error::INVALID_PAR)
    );
    assert_eq!(
        only_error(&dev.handle_report(0, &init_packet(cid, cmd::LOCK, 0, &[]))),
        (cid, error::INVALID_LEN)
    );
    assert_eq!(
        only_error(&dev.handle_report(0, &init_packet(cid, cmd::LOCK, 2, &[1, 1]))),
        (cid, error::INVALID_LEN)
    );
}

#[test]
fn reports_of_the_wrong_size_are_ignored() {
    let mut dev = HidDevice::new(CAPS);
    let report = init_packet(BROADCAST_CID, cmd::INIT, 8, &NONCE);
    assert!(dev.handle_report(0, &report[..63]).is_empty());
    let mut longer = report.to_vec();
    longer.push(0);
    assert!(dev.handle_report(0, &longer).is_empty());
}

#[test]
fn keepalive_report_layout() {
    let (dev, cid) = opened();
    let report = dev.keepalive(cid, keepalive::UPNEEDED);
    assert_eq!(reassemble(&[report]), (cid, cmd::KEEPALIVE, vec![2]));
}

#[test]
fn respond_refuses_to_truncate_an_oversized_answer() {
    let (mut dev, cid) = opened();
    send_message(&mut dev, 0, cid, cmd::CBOR, &[4]);
    let reports = dev.respond(cid, cmd::CBOR, &vec![0; MAX_MESSAGE_SIZE + 1]);
    assert_eq!(reassemble(&reports), (cid, cmd::ERROR, vec![error::OTHER]));
}

#[test]
fn channel_ids_wrap_without_reaching_the_reserved_ones() {
    let mut dev = HidDevice::new(CAPS);
    dev.next_cid = BROADCAST_CID - 1;
    assert_eq!(allocate(&mut dev, 0), BROADCAST_CID - 1);
    assert_eq!(allocate(&mut dev, 0), 1);
}

proptest! {
    /// Any sequence of reports and clock ticks leaves the device consistent: it never panics,
    /// every report it emits is well-formed, and at most one request is outstanding at a time.
    #[test]
    fn arbitrary_report_sequences_never_panic(
        steps in proptest::collection::vec(
            (any::<u8>(), 0u8..3, any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..8), 0u64..150),
            1..60,
        )
    ) {
        let mut dev = HidDevice::new(CAPS);
        let cid = allocate(&mut dev, 0);
        let mut now = 0;
        let mut outstanding: Option<u32> = None;
        for (kind, cid_choice, command_or_seq, len, data, dt) in steps {
            now += dt;
            let target = match cid_choice { 0 => cid, 1 => BROADCAST_CID, _ => cid + 1 };
            let report = match kind % 4 {
                0 => init_packet(target, command_or_seq & 0x7F, usize::from(len), &data),
                1 => cont_packet(target, command_or_seq & 0x7F, &data),
                2 => init_packet(target, cmd::CBOR, data.len().max(1), &data),
                _ => init_packet(BROADCAST_CID, cmd::INIT, 8, &NONCE),
            };
            for event in dev.handle_report(now, &report).into_iter().chain(dev.poll(now)) {
                match event {
                    HidEvent::Send(r) => prop_assert!(r[4] & 0x80 != 0),
                    HidEvent::Request { cid: from, .. } => {
                        prop_assert_eq!(outstanding, None, "two requests outstanding");
                        prop_assert_eq!(dev.pending(), Some(from));
                        outstanding = Some(from);
                    }
                    _ => {}
                }
            }
            if let Some(from) = outstanding.filter(|_| kind % 2 == 0) {
                // The answer may be dropped (resync), but the device is free afterwards.
                let _ = dev.respond(from, cmd::CBOR, &[0]);
                prop_assert_eq!(dev.pending(), None);
                outstanding = None;
            }
        }
    }
}
