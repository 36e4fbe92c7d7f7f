//! The endpoint's CTAP-HID layer: keyward-ctap's sans-I/O `HidDevice`.

use keyward_ctap::hid::{Capabilities, HidDevice};

use crate::endpoint::{HidEvent, LocalHid};

/// A CTAP-HID device advertising WINK and CBOR, without CTAP1/U2F (NMSG): only CTAP2 is relayed.
pub fn new_device() -> HidDevice {
    HidDevice::new(Capabilities {
        wink: true,
        cbor: true,
        nmsg: true,
        version: (0, 1, 0),
    })
}

fn convert(events: Vec<keyward_ctap::hid::HidEvent>) -> Vec<HidEvent> {
    use keyward_ctap::hid::HidEvent as E;
    events
        .into_iter()
        .map(|e| match e {
            E::Send(r) => HidEvent::Send(r),
            E::Request { cid, cmd, payload } => HidEvent::Request { cid, cmd, payload },
            E::Cancel { cid } => HidEvent::Cancel { cid },
            E::Wink => HidEvent::Wink,
        })
        .collect()
}

impl LocalHid for HidDevice {
    fn handle_report(&mut self, now_ms: u64, report: &[u8]) -> Vec<HidEvent> {
        convert(HidDevice::handle_report(self, now_ms, report))
    }
    fn poll(&mut self, now_ms: u64) -> Vec<HidEvent> {
        convert(HidDevice::poll(self, now_ms))
    }
    fn respond(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; 64]> {
        HidDevice::respond(self, cid, cmd, payload)
    }
    fn keepalive(&self, cid: u32, status: u8) -> [u8; 64] {
        HidDevice::keepalive(self, cid, status)
    }
}
