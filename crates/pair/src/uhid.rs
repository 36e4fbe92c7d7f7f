//! `--uhid`: a Linux HID device (through `/dev/uhid`) that browsers and libfido2 see as a USB
//! security key.
//!
//! The design names the uhid-virt crate; it pulls `uhidrs-sys`, which runs bindgen and therefore
//! needs libclang at build time, which our build machines do not have. The kernel ABI we need is
//! four fixed, packed structures from `linux/uhid.h` (CREATE2, INPUT2, OUTPUT, DESTROY), so this
//! module encodes them itself: plain reads and writes of byte arrays, no unsafe code.
//!
//! Access without root: `/dev/uhid` is root-only by default. A udev rule gives a group access, e.g.
//! `/etc/udev/rules.d/70-keyward-uhid.rules`:
//! `KERNEL=="uhid", SUBSYSTEM=="misc", GROUP="keyward", MODE="0660"` (then
//! `sudo modprobe uhid; sudo udevadm trigger`, and add the user to the `keyward` group). The created
//! hidraw node of a FIDO device (usage page 0xF1D0) is made accessible to the logged-in user by
//! systemd's FIDO rules (systemd ≥ 244).
//!
//! The device exists for as long as `keyward-pair run --uhid` runs; while no key is attached it
//! answers CTAP2 requests with CTAP2_ERR_NOT_ALLOWED (see [`crate::endpoint`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use tokio::sync::mpsc;

use crate::run::LocalIo;

/// The 34-byte FIDO HID report descriptor: usage page 0xF1D0, usage 0x01, 64-byte input and
/// output reports, no report ID (ctap.md §2).
pub const FIDO_REPORT_DESCRIPTOR: [u8; 34] = [
    0x06, 0xd0, 0xf1, 0x09, 0x01, 0xa1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xff, 0x00, 0x75, 0x08,
    0x95, 0x40, 0x81, 0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xff, 0x00, 0x75, 0x08, 0x95, 0x40, 0x91,
    0x02, 0xc0,
];

const UHID_DESTROY: u32 = 1;
const UHID_OUTPUT: u32 = 6;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const UHID_DATA_MAX: usize = 4096;
/// `sizeof(struct uhid_event)`: the type word plus the largest request (create2: 4372 bytes).
pub const UHID_EVENT_SIZE: usize = 4 + 128 + 64 + 64 + 2 + 2 + 4 * 4 + 4096;
const BUS_USB: u16 = 0x03;

/// `UHID_CREATE2` for a FIDO device named `name`.
pub fn create2_event(name: &str) -> Vec<u8> {
    let mut e = vec![0u8; UHID_EVENT_SIZE];
    e[..4].copy_from_slice(&UHID_CREATE2.to_ne_bytes());
    let mut at = 4;
    let n = name.as_bytes();
    e[at..at + n.len().min(127)].copy_from_slice(&n[..n.len().min(127)]);
    at += 128 + 64 + 64; // name, phys, uniq (empty)
    e[at..at + 2].copy_from_slice(
        &u16::try_from(FIDO_REPORT_DESCRIPTOR.len())
            .unwrap_or(0)
            .to_ne_bytes(),
    );
    e[at + 2..at + 4].copy_from_slice(&BUS_USB.to_ne_bytes());
    // Vendor/product 0xFFFF as rust-u2f does: no real vendor claims it.
    e[at + 4..at + 8].copy_from_slice(&0xffffu32.to_ne_bytes());
    e[at + 8..at + 12].copy_from_slice(&0xffffu32.to_ne_bytes());
    e[at + 12..at + 16].copy_from_slice(&1u32.to_ne_bytes()); // version
    at += 20; // + country
    e[at..at + FIDO_REPORT_DESCRIPTOR.len()].copy_from_slice(&FIDO_REPORT_DESCRIPTOR);
    e
}

/// `UHID_INPUT2` carrying one 64-byte input report.
pub fn input2_event(report: &[u8; 64]) -> Vec<u8> {
    let mut e = vec![0u8; UHID_EVENT_SIZE];
    e[..4].copy_from_slice(&UHID_INPUT2.to_ne_bytes());
    e[4..6].copy_from_slice(&64u16.to_ne_bytes());
    e[6..70].copy_from_slice(report);
    e
}

fn destroy_event() -> Vec<u8> {
    let mut e = vec![0u8; UHID_EVENT_SIZE];
    e[..4].copy_from_slice(&UHID_DESTROY.to_ne_bytes());
    e
}

/// The 64-byte output report inside a `UHID_OUTPUT` event, if `event` is one. The host's write
/// carries a leading report-ID byte 0 (65 bytes) because the descriptor declares no report IDs;
/// it is stripped here.
pub fn output_report(event: &[u8]) -> Option<[u8; 64]> {
    let kind = u32::from_ne_bytes(event.get(..4)?.try_into().ok()?);
    if kind != UHID_OUTPUT {
        return None;
    }
    let size_at = 4 + UHID_DATA_MAX;
    let size = usize::from(u16::from_ne_bytes(
        event.get(size_at..size_at + 2)?.try_into().ok()?,
    ));
    let data = event.get(4..4 + size.min(UHID_DATA_MAX))?;
    let data = match data.len() {
        65 => &data[1..],
        64 => data,
        _ => return None,
    };
    data.try_into().ok()
}

/// Creates the device at `path` (normally `/dev/uhid`) and returns its report channels. A reader
/// thread blocks on the device; a writer thread sends input reports.
pub fn uhid_transport(path: &Path, name: &str) -> std::io::Result<LocalIo> {
    let mut dev = OpenOptions::new().read(true).write(true).open(path)?;
    dev.write_all(&create2_event(name))?;
    let mut reader: File = dev.try_clone()?;
    let (in_tx, in_rx) = mpsc::channel::<[u8; 64]>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<[u8; 64]>(256);
    std::thread::Builder::new()
        .name("uhid-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; UHID_EVENT_SIZE];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Some(report) = output_report(&buf[..n])
                            && in_tx.blocking_send(report).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })?;
    std::thread::Builder::new()
        .name("uhid-write".into())
        .spawn(move || {
            while let Some(report) = out_rx.blocking_recv() {
                if dev.write_all(&input2_event(&report)).is_err() {
                    break;
                }
            }
            // The endpoint stopped: remove the device from the system.
            let _ = dev.write_all(&destroy_event());
        })?;
    Ok(LocalIo {
        from_host: in_rx,
        to_host: out_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_size_matches_the_kernel_struct() {
        // struct uhid_event is packed: __u32 type + union, the largest member being
        // uhid_create2_req (128 + 64 + 64 + 2 + 2 + 4 * 4 + 4096).
        assert_eq!(UHID_EVENT_SIZE, 4376);
    }

    #[test]
    fn create2_layout() {
        let e = create2_event("Keyward");
        assert_eq!(&e[..4], &11u32.to_ne_bytes());
        assert_eq!(&e[4..11], b"Keyward");
        assert_eq!(
            &e[260..262],
            &34u16.to_ne_bytes(),
            "rd_size after name, phys, uniq"
        );
        assert_eq!(&e[262..264], &3u16.to_ne_bytes(), "BUS_USB");
        assert_eq!(&e[280..314], &FIDO_REPORT_DESCRIPTOR);
        assert_eq!(
            &FIDO_REPORT_DESCRIPTOR[..3],
            &[0x06, 0xd0, 0xf1],
            "usage page 0xF1D0"
        );
        // A name longer than the field is cut, keeping the terminating zero.
        let long = create2_event(&"x".repeat(300));
        assert_eq!(long[4 + 127], 0);
    }

    #[test]
    fn input2_layout() {
        let mut r = [0u8; 64];
        r[0] = 0xff;
        r[63] = 0x42;
        let e = input2_event(&r);
        assert_eq!(&e[..4], &12u32.to_ne_bytes());
        assert_eq!(&e[4..6], &64u16.to_ne_bytes());
        assert_eq!(&e[6..70], &r);
    }

    fn output(data: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; UHID_EVENT_SIZE];
        e[..4].copy_from_slice(&6u32.to_ne_bytes());
        e[4..4 + data.len()].copy_from_slice(data);
        e[4 + 4096..4 + 4098]
            .copy_from_slice(&u16::try_from(data.len()).expect("len").to_ne_bytes());
        e[4 + 4098] = UHID_OUTPUT_REPORT;
        e
    }

    // Kernel ABI facts, from include/uapi/linux/uhid.h (all structures `__packed__`):
    // `enum uhid_event_type` counts from 0: __UHID_LEGACY_CREATE, UHID_DESTROY, UHID_START,
    // UHID_STOP, UHID_OPEN, UHID_CLOSE, UHID_OUTPUT, __UHID_LEGACY_OUTPUT_EV, __UHID_LEGACY_INPUT,
    // UHID_GET_REPORT, UHID_GET_REPORT_REPLY, UHID_CREATE2, UHID_INPUT2, ...;
    // `struct uhid_event { __u32 type; union { ... } u; }`;
    // `uhid_create2_req { name[128]; phys[64]; uniq[64]; __u16 rd_size; __u16 bus; __u32 vendor,
    // product, version, country; __u8 rd_data[HID_MAX_DESCRIPTOR_SIZE = 4096]; }`;
    // `uhid_input2_req { __u16 size; __u8 data[UHID_DATA_MAX = 4096]; }`;
    // `uhid_output_req { __u8 data[4096]; __u16 size; __u8 rtype; }` with
    // `enum uhid_report_type { UHID_FEATURE_REPORT, UHID_OUTPUT_REPORT, UHID_INPUT_REPORT }`;
    // `uhid_start_req { __u64 dev_flags; }`. The kernel sends START, STOP, OPEN and CLOSE to the
    // device; they carry no report.
    const UHID_START: u32 = 2;
    const UHID_STOP: u32 = 3;
    const UHID_OPEN: u32 = 4;
    const UHID_CLOSE: u32 = 5;
    const UHID_OUTPUT_REPORT: u8 = 1;
    /// `UHID_DEV_NUMBERED_FEATURE_REPORTS | UHID_DEV_NUMBERED_OUTPUT_REPORTS | ..._INPUT_REPORTS`.
    const ALL_DEV_FLAGS: u64 = 0b111;

    #[test]
    fn event_type_numbers_match_the_kernel_enum() {
        assert_eq!(UHID_DESTROY, 1);
        assert_eq!(UHID_OUTPUT, 6);
        assert_eq!(UHID_CREATE2, 11);
        assert_eq!(UHID_INPUT2, 12);
        assert_eq!(UHID_DATA_MAX, 4096);
        assert_eq!(&destroy_event()[..4], &1u32.to_ne_bytes());
        assert_eq!(destroy_event().len(), UHID_EVENT_SIZE);
    }

    #[test]
    fn create2_fields_sit_at_the_kernel_offsets() {
        let e = create2_event("Keyward");
        assert_eq!(e.len(), 4 + 4372, "type + sizeof(struct uhid_create2_req)");
        // name 4..132, phys 132..196, uniq 196..260: only the name is set.
        assert!(e[4 + 7..132].iter().all(|&b| b == 0), "name is NUL-padded");
        assert!(e[132..260].iter().all(|&b| b == 0), "phys and uniq empty");
        let u32_at = |at: usize| u32::from_ne_bytes(e[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(u32_at(264), 0xffff, "vendor");
        assert_eq!(u32_at(268), 0xffff, "product");
        assert_eq!(u32_at(272), 1, "version");
        assert_eq!(u32_at(276), 0, "country");
        // rd_data starts at 280 and holds exactly rd_size bytes; the rest of its 4096 is zero.
        let rd_size = usize::from(u16::from_ne_bytes([e[260], e[261]]));
        assert_eq!(&e[280..280 + rd_size], &FIDO_REPORT_DESCRIPTOR);
        assert!(e[280 + rd_size..].iter().all(|&b| b == 0));
        assert_eq!(280 + 4096, UHID_EVENT_SIZE);
    }

    #[test]
    fn output_events_follow_the_kernel_layout() {
        // size at 4 + 4096, rtype just after it.
        let mut data = vec![0u8; 65];
        data[1] = 0x81;
        let e = output(&data);
        assert_eq!(u16::from_ne_bytes([e[4100], e[4101]]), 65);
        assert_eq!(e[4102], UHID_OUTPUT_REPORT);
        assert_eq!(output_report(&e).map(|r| r[0]), Some(0x81));
        // A size beyond UHID_DATA_MAX is not trusted past the data field.
        let mut e = output(&[0u8; 65]);
        e[4100..4102].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(output_report(&e), None);
        // An event cut before its size field is ignored.
        assert_eq!(output_report(&e[..4100]), None);
    }

    #[test]
    fn start_stop_open_and_close_carry_no_report() {
        for kind in [UHID_START, UHID_STOP, UHID_OPEN, UHID_CLOSE] {
            let mut e = vec![0u8; UHID_EVENT_SIZE];
            e[..4].copy_from_slice(&kind.to_ne_bytes());
            if kind == UHID_START {
                e[4..12].copy_from_slice(&ALL_DEV_FLAGS.to_ne_bytes());
            }
            // Even with bytes where an output's size would be, these are not reports.
            e[4100..4102].copy_from_slice(&64u16.to_ne_bytes());
            assert_eq!(output_report(&e), None, "event type {kind}");
        }
    }

    /// The descriptor, read as HID short items (HID 1.11 §6.2.2.2: prefix byte = tag << 4 |
    /// type << 2 | size code, size code 3 meaning 4 bytes; data little-endian).
    fn hid_items(d: &[u8]) -> Vec<(u8, u8, u32)> {
        let mut items = Vec::new();
        let mut at = 0;
        while at < d.len() {
            let prefix = d[at];
            let size = [0, 1, 2, 4][usize::from(prefix & 3)];
            let data = d[at + 1..at + 1 + size]
                .iter()
                .rev()
                .fold(0u32, |v, &b| (v << 8) | u32::from(b));
            items.push(((prefix >> 2) & 3, prefix >> 4, data));
            at += 1 + size;
        }
        assert_eq!(at, d.len(), "no item runs past the end");
        items
    }

    #[test]
    fn the_report_descriptor_declares_fido_64_byte_reports_without_ids() {
        const MAIN: u8 = 0;
        const GLOBAL: u8 = 1;
        const LOCAL: u8 = 2;
        let data_report = |usage: u32, main_tag: u8| {
            [
                (LOCAL, 0x0, usage), // Usage
                (GLOBAL, 0x1, 0),    // Logical Minimum
                (GLOBAL, 0x2, 0xff), // Logical Maximum
                (GLOBAL, 0x7, 8),    // Report Size (bits)
                (GLOBAL, 0x9, 64),   // Report Count
                (MAIN, main_tag, 2), // Input / Output (Data, Variable, Absolute)
            ]
        };
        let mut want = vec![
            (GLOBAL, 0x0, 0xf1d0), // Usage Page (FIDO Alliance)
            (LOCAL, 0x0, 0x01),    // Usage (CTAPHID)
            (MAIN, 0xa, 0x01),     // Collection (Application)
        ];
        want.extend(data_report(0x20, 0x8)); // input report: usage "data in", Input
        want.extend(data_report(0x21, 0x9)); // output report: usage "data out", Output
        want.push((MAIN, 0xc, 0)); // End Collection
        let items = hid_items(&FIDO_REPORT_DESCRIPTOR);
        assert_eq!(items, want);
        // No Report ID item (global tag 0x8): reports are 64 bytes, and hosts prepend byte 0.
        assert!(!items.iter().any(|&(t, tag, _)| t == GLOBAL && tag == 0x8));
        assert_eq!(FIDO_REPORT_DESCRIPTOR.len(), 34);
    }

    #[test]
    fn output_reports_lose_the_report_id_byte() {
        let mut data = vec![0u8; 65];
        data[1] = 0xff;
        data[64] = 7;
        let r = output_report(&output(&data)).expect("report");
        assert_eq!((r[0], r[63]), (0xff, 7));
        assert_eq!(output_report(&output(&[1u8; 64])), Some([1u8; 64]));
        assert_eq!(
            output_report(&output(&[1u8; 10])),
            None,
            "short reports are dropped"
        );
        let mut not_output = output(&[0u8; 65]);
        not_output[..4].copy_from_slice(&4u32.to_ne_bytes()); // UHID_OPEN
        assert_eq!(output_report(&not_output), None);
        assert_eq!(output_report(&[6, 0]), None, "truncated event");
    }
}
