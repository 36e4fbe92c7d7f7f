//! CTAP-HID reassembly and the channel state machine under arbitrary report sequences.
//!
//! The input is a sequence of steps of 66 bytes: one byte of elapsed time (ms), one control byte,
//! and a 64-byte report. Two channels are opened first so that the fuzzer reaches the allocated-
//! channel paths without having to guess INIT. Invariants checked on every step:
//! - nothing panics;
//! - every emitted report carries a command (init packet) or is a continuation of a response we
//!   produced, and the whole response reassembles to at most 7609 bytes;
//! - at most one request is outstanding, and `pending()` names it;
//! - a request's payload never exceeds the maximum message size and is never empty for CBOR.
#![no_main]

use keyward_ctap::hid::{
    BROADCAST_CID, Capabilities, HidDevice, HidEvent, MAX_MESSAGE_SIZE, REPORT_SIZE, cmd,
};
use libfuzzer_sys::fuzz_target;

const CAPS: Capabilities = Capabilities {
    wink: true,
    cbor: true,
    nmsg: true,
    version: (0, 1, 0),
};

fn init(dev: &mut HidDevice) {
    let mut report = [0u8; REPORT_SIZE];
    report[..4].copy_from_slice(&BROADCAST_CID.to_be_bytes());
    report[4] = 0x80 | cmd::INIT;
    report[6] = 8;
    let events = dev.handle_report(0, &report);
    assert!(matches!(events[..], [HidEvent::Send(_)]));
}

fn check_reports(reports: &[[u8; REPORT_SIZE]]) {
    let Some(first) = reports.first() else { return };
    assert!(
        first[4] & 0x80 != 0,
        "a response starts with an init packet"
    );
    let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
    assert!(len <= MAX_MESSAGE_SIZE);
    assert_eq!(
        reports.len(),
        1 + len.saturating_sub(57).div_ceil(59),
        "packet count matches the length"
    );
    for (seq, report) in reports[1..].iter().enumerate() {
        assert_eq!(report[..4], first[..4], "same channel");
        assert_eq!(usize::from(report[4]), seq);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dev = HidDevice::new(CAPS);
    init(&mut dev);
    init(&mut dev);
    let mut now = 0u64;
    let mut outstanding: Option<u32> = None;
    for step in data.chunks_exact(2 + REPORT_SIZE) {
        now += u64::from(step[0]);
        let control = step[1];
        let report = &step[2..];
        let mut events = dev.handle_report(now, report);
        events.extend(dev.poll(now));
        let mut sent = Vec::new();
        for event in events {
            match event {
                HidEvent::Send(r) => sent.push(r),
                HidEvent::Request {
                    cid,
                    cmd: command,
                    payload,
                } => {
                    assert!(outstanding.is_none(), "two requests outstanding");
                    assert!(payload.len() <= MAX_MESSAGE_SIZE);
                    assert!(command != cmd::CBOR || !payload.is_empty());
                    assert_eq!(dev.pending(), Some(cid));
                    outstanding = Some(cid);
                }
                HidEvent::Cancel { .. } | HidEvent::Wink => {}
            }
        }
        // Group the emitted reports into messages: an init packet starts a new one.
        let mut message: Vec<[u8; REPORT_SIZE]> = Vec::new();
        for r in sent {
            if r[4] & 0x80 != 0 && !message.is_empty() {
                check_reports(&message);
                message.clear();
            }
            message.push(r);
        }
        check_reports(&message);
        // The control byte decides whether and how the application answers now.
        if let Some(cid) = outstanding
            && control & 1 == 1
        {
            let size = usize::from(control >> 1) * 61;
            let reports = dev.respond(cid, cmd::CBOR, &vec![0xA5; size]);
            check_reports(&reports);
            assert_eq!(dev.pending(), None);
            outstanding = None;
        }
    }
});
