//! CTAP-HID (CTAP 2.1 §11.2): 64-byte report framing and the channel state machine.
//!
//! [`HidDevice`] is sans-I/O. The host's output reports go in through
//! [`HidDevice::handle_report`], the passing of time through [`HidDevice::poll`], and out come
//! [`HidEvent`]s: input reports to transmit, and complete requests for the application (the
//! CTAP2 engine, or the pairing tool's relay). The application answers with
//! [`HidDevice::respond`], which fragments the answer into reports and frees the channel.
//!
//! One transaction runs at a time across the whole device, as the spec requires: while a message
//! is being reassembled or a request is outstanding, other channels get `ERR_CHANNEL_BUSY` (hosts
//! retry), and only INIT on the broadcast channel is still answered so that new clients can open.
//! Channel ids are handed out by a counter from 1 (no RNG here), which also makes "is this channel
//! allocated?" a comparison instead of an ever-growing set.

/// The size of every HID report, in and out. There is no report-ID byte.
pub const REPORT_SIZE: usize = 64;
/// The largest message: 57 bytes in the init packet plus 128 continuation packets of 59.
pub const MAX_MESSAGE_SIZE: usize = INIT_DATA + 128 * CONT_DATA;
/// The broadcast channel, valid only for INIT.
pub const BROADCAST_CID: u32 = 0xFFFF_FFFF;
/// Inter-packet timeout of a multi-packet message (OpenSK uses the same 100 ms).
pub const INTER_PACKET_TIMEOUT_MS: u64 = 100;
/// The longest LOCK a host may request, in seconds.
pub const MAX_LOCK_SECONDS: u8 = 10;
/// The CTAPHID protocol version reported by INIT.
pub const PROTOCOL_VERSION: u8 = 2;

const INIT_DATA: usize = REPORT_SIZE - 7;
const CONT_DATA: usize = REPORT_SIZE - 5;

/// CTAPHID command codes, without the 0x80 bit an init packet sets on the wire.
pub mod cmd {
    pub const PING: u8 = 0x01;
    pub const MSG: u8 = 0x03;
    pub const LOCK: u8 = 0x04;
    pub const INIT: u8 = 0x06;
    pub const WINK: u8 = 0x08;
    pub const CBOR: u8 = 0x10;
    pub const CANCEL: u8 = 0x11;
    pub const KEEPALIVE: u8 = 0x3B;
    pub const ERROR: u8 = 0x3F;
}

/// KEEPALIVE status bytes.
pub mod keepalive {
    /// The authenticator is still processing the request.
    pub const PROCESSING: u8 = 1;
    /// The authenticator is waiting for the user's touch.
    pub const UPNEEDED: u8 = 2;
}

/// CTAPHID error codes sent in an ERROR report. They share their values with
/// [`crate::status::StatusCode`].
pub mod error {
    pub const INVALID_CMD: u8 = 0x01;
    pub const INVALID_PAR: u8 = 0x02;
    pub const INVALID_LEN: u8 = 0x03;
    pub const INVALID_SEQ: u8 = 0x04;
    pub const MSG_TIMEOUT: u8 = 0x05;
    pub const CHANNEL_BUSY: u8 = 0x06;
    pub const LOCK_REQUIRED: u8 = 0x0A;
    pub const INVALID_CHANNEL: u8 = 0x0B;
    pub const OTHER: u8 = 0x7F;
}

/// What INIT advertises about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// WINK is supported (capability bit 0x01).
    pub wink: bool,
    /// CTAPHID_CBOR is supported (0x04); without it python-fido2 refuses to speak CTAP2.
    pub cbor: bool,
    /// MSG (CTAP1/U2F) is *not* supported (0x08): MSG is then answered with ERR_INVALID_CMD.
    pub nmsg: bool,
    /// Device version (major, minor, build) reported by INIT.
    pub version: (u8, u8, u8),
}

impl Capabilities {
    /// The capability byte of the INIT response.
    pub fn flags(&self) -> u8 {
        u8::from(self.wink) | (u8::from(self.cbor) << 2) | (u8::from(self.nmsg) << 3)
    }
}

/// Something the device wants its host-facing side to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HidEvent {
    /// An input report to transmit to the host.
    Send([u8; REPORT_SIZE]),
    /// A complete CBOR (or, without NMSG, MSG) request for the application. The whole device is
    /// busy until [`HidDevice::respond`] answers it.
    Request { cid: u32, cmd: u8, payload: Vec<u8> },
    /// The host cancelled the outstanding request on `cid` (CANCEL, or INIT resynchronising the
    /// channel). The application should stop and answer with CTAP2_ERR_KEEPALIVE_CANCEL.
    Cancel { cid: u32 },
    /// The host asked the device to identify itself (blink, beep, show a notification).
    Wink,
}

/// A message being reassembled from an init packet and its continuation packets.
#[derive(Debug)]
struct Assembly {
    cid: u32,
    cmd: u8,
    expected_len: usize,
    data: Vec<u8>,
    next_seq: u8,
    last_packet_ms: u64,
}

/// The request handed to the application and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    cid: u32,
    cmd: u8,
    /// The host resynchronised the channel with INIT: the application's eventual answer is
    /// stale and is dropped, but the device stays busy until it arrives so that a late answer
    /// can never be mistaken for the answer to a newer request.
    aborted: bool,
}

/// The CTAP-HID side of one authenticator. See the module documentation.
#[derive(Debug)]
pub struct HidDevice {
    caps: Capabilities,
    next_cid: u32,
    /// Set once the channel counter has wrapped, after which every id counts as allocated.
    cid_wrapped: bool,
    assembly: Option<Assembly>,
    pending: Option<Pending>,
    lock: Option<(u32, u64)>,
}

impl HidDevice {
    pub fn new(caps: Capabilities) -> Self {
        Self {
            caps,
            next_cid: 1,
            cid_wrapped: false,
            assembly: None,
            pending: None,
            lock: None,
        }
    }

    /// The channel id of the outstanding request, if the application still owes an answer that
    /// the host is waiting for (keepalives should be sent to it).
    pub fn pending(&self) -> Option<u32> {
        self.pending.filter(|p| !p.aborted).map(|p| p.cid)
    }

    /// A KEEPALIVE report for `cid` (`status`: [`keepalive::PROCESSING`] or
    /// [`keepalive::UPNEEDED`]).
    pub fn keepalive(&self, cid: u32, status: u8) -> [u8; REPORT_SIZE] {
        single_report(cid, cmd::KEEPALIVE, &[status])
    }

    /// Answers the outstanding request on `cid` and frees the device. Returns the reports to
    /// send, or nothing when `cid` has no outstanding request or the host abandoned it (the
    /// answer is then stale). `payload` longer than [`MAX_MESSAGE_SIZE`] is replaced by
    /// ERR_OTHER rather than sent truncated.
    pub fn respond(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; REPORT_SIZE]> {
        match self.pending {
            Some(p) if p.cid == cid => {
                self.pending = None;
                if p.aborted {
                    return Vec::new();
                }
                if payload.len() > MAX_MESSAGE_SIZE {
                    return vec![error_report(cid, error::OTHER)];
                }
                fragment(cid, cmd, payload)
            }
            _ => Vec::new(),
        }
    }

    /// Lets time pass: a multi-packet message whose next packet is overdue ends with
    /// ERR_MSG_TIMEOUT, and an expired LOCK is released.
    pub fn poll(&mut self, now_ms: u64) -> Vec<HidEvent> {
        let mut events = Vec::new();
        if let Some(a) = &self.assembly
            && now_ms.saturating_sub(a.last_packet_ms) >= INTER_PACKET_TIMEOUT_MS
        {
            events.push(HidEvent::Send(error_report(a.cid, error::MSG_TIMEOUT)));
            self.assembly = None;
        }
        if let Some((_, until)) = self.lock
            && now_ms >= until
        {
            self.lock = None;
        }
        events
    }

    /// Processes one output report from the host. Reports that are not exactly
    /// [`REPORT_SIZE`] bytes are ignored.
    pub fn handle_report(&mut self, now_ms: u64, report: &[u8]) -> Vec<HidEvent> {
        let Ok(report) = <&[u8; REPORT_SIZE]>::try_from(report) else {
            return Vec::new();
        };
        // Timeouts that fell due since the last poll are applied first, so a late packet finds
        // its message already expired rather than silently resuming it.
        let mut events = self.poll(now_ms);
        let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
        if report[4] & 0x80 != 0 {
            self.init_packet(now_ms, cid, report, &mut events);
        } else {
            self.continuation_packet(now_ms, cid, report, &mut events);
        }
        events
    }

    fn allocated(&self, cid: u32) -> bool {
        cid != 0 && cid != BROADCAST_CID && (self.cid_wrapped || cid < self.next_cid)
    }

    fn allocate(&mut self) -> u32 {
        let cid = self.next_cid;
        self.next_cid += 1;
        if self.next_cid == BROADCAST_CID {
            self.next_cid = 1;
            self.cid_wrapped = true;
        }
        cid
    }

    /// The channel that currently owns the device (a message being reassembled or a request
    /// being processed), if any.
    fn busy_with(&self) -> Option<u32> {
        self.assembly
            .as_ref()
            .map(|a| a.cid)
            .or(self.pending.map(|p| p.cid))
    }

    fn locked_by_other(&self, cid: u32) -> bool {
        matches!(self.lock, Some((owner, _)) if owner != cid)
    }

    fn init_packet(
        &mut self,
        now_ms: u64,
        cid: u32,
        report: &[u8; REPORT_SIZE],
        events: &mut Vec<HidEvent>,
    ) {
        let command = report[4] & 0x7F;
        let len = usize::from(u16::from_be_bytes([report[5], report[6]]));
        let data = &report[7..];

        if command == cmd::INIT {
            self.init_command(cid, len, data, events);
            return;
        }
        if !self.allocated(cid) {
            events.push(HidEvent::Send(error_report(cid, error::INVALID_CHANNEL)));
            return;
        }
        if command == cmd::CANCEL {
            // CANCEL never gets a reply; it only matters for this channel's own request.
            if self.pending() == Some(cid) {
                events.push(HidEvent::Cancel { cid });
            }
            return;
        }
        if self.locked_by_other(cid) {
            events.push(HidEvent::Send(error_report(cid, error::CHANNEL_BUSY)));
            return;
        }
        match self.busy_with() {
            Some(owner) if owner != cid => {
                events.push(HidEvent::Send(error_report(cid, error::CHANNEL_BUSY)));
                return;
            }
            Some(_) if self.pending.is_some() => {
                // This channel's own request is still being processed.
                events.push(HidEvent::Send(error_report(cid, error::CHANNEL_BUSY)));
                return;
            }
            Some(_) => {
                // A new init packet in the middle of this channel's message: the message is
                // abandoned.
                self.assembly = None;
                events.push(HidEvent::Send(error_report(cid, error::INVALID_SEQ)));
                return;
            }
            None => {}
        }
        if len > MAX_MESSAGE_SIZE {
            events.push(HidEvent::Send(error_report(cid, error::INVALID_LEN)));
            return;
        }
        if len <= INIT_DATA {
            self.dispatch(now_ms, cid, command, data[..len].to_vec(), events);
        } else {
            let mut buffer = Vec::with_capacity(len);
            buffer.extend_from_slice(data);
            self.assembly = Some(Assembly {
                cid,
                cmd: command,
                expected_len: len,
                data: buffer,
                next_seq: 0,
                last_packet_ms: now_ms,
            });
        }
    }

    fn init_command(&mut self, cid: u32, len: usize, data: &[u8], events: &mut Vec<HidEvent>) {
        if cid != BROADCAST_CID && !self.allocated(cid) {
            events.push(HidEvent::Send(error_report(cid, error::INVALID_CHANNEL)));
            return;
        }
        if self.locked_by_other(cid) {
            events.push(HidEvent::Send(error_report(cid, error::CHANNEL_BUSY)));
            return;
        }
        if len != 8 {
            events.push(HidEvent::Send(error_report(cid, error::INVALID_LEN)));
            return;
        }
        let new_cid = if cid == BROADCAST_CID {
            self.allocate()
        } else {
            // Resynchronisation: abandon whatever this channel was doing and keep its id.
            if self.assembly.as_ref().is_some_and(|a| a.cid == cid) {
                self.assembly = None;
            }
            if let Some(p) = self.pending.as_mut().filter(|p| p.cid == cid && !p.aborted) {
                p.aborted = true;
                events.push(HidEvent::Cancel { cid });
            }
            cid
        };
        let (major, minor, build) = self.caps.version;
        let mut response = [0u8; 17];
        response[..8].copy_from_slice(&data[..8]);
        response[8..12].copy_from_slice(&new_cid.to_be_bytes());
        response[12..].copy_from_slice(&[PROTOCOL_VERSION, major, minor, build, self.caps.flags()]);
        events.push(HidEvent::Send(single_report(cid, cmd::INIT, &response)));
    }

    fn continuation_packet(
        &mut self,
        now_ms: u64,
        cid: u32,
        report: &[u8; REPORT_SIZE],
        events: &mut Vec<HidEvent>,
    ) {
        let seq = report[4];
        let Some(assembly) = self.assembly.as_mut() else {
            // A stray continuation with no message in progress is ignored, as OpenSK does.
            return;
        };
        if assembly.cid != cid {
            if self.allocated(cid) {
                events.push(HidEvent::Send(error_report(cid, error::CHANNEL_BUSY)));
            } else if cid != BROADCAST_CID {
                events.push(HidEvent::Send(error_report(cid, error::INVALID_CHANNEL)));
            }
            return;
        }
        if seq != assembly.next_seq {
            self.assembly = None;
            events.push(HidEvent::Send(error_report(cid, error::INVALID_SEQ)));
            return;
        }
        let remaining = assembly.expected_len - assembly.data.len();
        assembly
            .data
            .extend_from_slice(&report[5..5 + remaining.min(CONT_DATA)]);
        assembly.next_seq += 1;
        assembly.last_packet_ms = now_ms;
        if assembly.data.len() == assembly.expected_len {
            let done = self
                .assembly
                .take()
                .expect("invariant: assembly checked above");
            self.dispatch(now_ms, done.cid, done.cmd, done.data, events);
        }
    }

    /// Acts on a complete message.
    fn dispatch(
        &mut self,
        now_ms: u64,
        cid: u32,
        command: u8,
        payload: Vec<u8>,
        events: &mut Vec<HidEvent>,
    ) {
        match command {
            cmd::PING => events.extend(
                fragment(cid, cmd::PING, &payload)
                    .into_iter()
                    .map(HidEvent::Send),
            ),
            cmd::WINK if self.caps.wink => {
                events.push(HidEvent::Wink);
                events.push(HidEvent::Send(single_report(cid, cmd::WINK, &[])));
            }
            cmd::LOCK => {
                let [seconds] = payload[..] else {
                    events.push(HidEvent::Send(error_report(cid, error::INVALID_LEN)));
                    return;
                };
                if seconds > MAX_LOCK_SECONDS {
                    events.push(HidEvent::Send(error_report(cid, error::INVALID_PAR)));
                    return;
                }
                self.lock = (seconds > 0).then(|| (cid, now_ms + u64::from(seconds) * 1000));
                events.push(HidEvent::Send(single_report(cid, cmd::LOCK, &[])));
            }
            cmd::CBOR if self.caps.cbor => {
                if payload.is_empty() {
                    // There is not even a CTAP2 command byte.
                    events.push(HidEvent::Send(error_report(cid, error::INVALID_LEN)));
                    return;
                }
                self.start_request(cid, command, payload, events);
            }
            cmd::MSG if !self.caps.nmsg => self.start_request(cid, command, payload, events),
            _ => events.push(HidEvent::Send(error_report(cid, error::INVALID_CMD))),
        }
    }

    fn start_request(
        &mut self,
        cid: u32,
        command: u8,
        payload: Vec<u8>,
        events: &mut Vec<HidEvent>,
    ) {
        self.pending = Some(Pending {
            cid,
            cmd: command,
            aborted: false,
        });
        events.push(HidEvent::Request {
            cid,
            cmd: command,
            payload,
        });
    }

    /// The command of the outstanding request (CBOR or MSG), for hosts of the state machine that
    /// need to tell them apart when answering.
    pub fn pending_command(&self) -> Option<u8> {
        self.pending.filter(|p| !p.aborted).map(|p| p.cmd)
    }
}

/// One report carrying a whole (short) message. `data` must fit in an init packet.
fn single_report(cid: u32, command: u8, data: &[u8]) -> [u8; REPORT_SIZE] {
    debug_assert!(data.len() <= INIT_DATA);
    let mut report = [0u8; REPORT_SIZE];
    report[..4].copy_from_slice(&cid.to_be_bytes());
    report[4] = 0x80 | command;
    report[5..7].copy_from_slice(&(data.len() as u16).to_be_bytes());
    report[7..7 + data.len()].copy_from_slice(data);
    report
}

/// An ERROR report.
pub fn error_report(cid: u32, code: u8) -> [u8; REPORT_SIZE] {
    single_report(cid, cmd::ERROR, &[code])
}

/// Splits a message into an init packet and continuation packets, zero-padded.
/// `payload` must not exceed [`MAX_MESSAGE_SIZE`].
pub fn fragment(cid: u32, command: u8, payload: &[u8]) -> Vec<[u8; REPORT_SIZE]> {
    debug_assert!(payload.len() <= MAX_MESSAGE_SIZE);
    let first = payload.len().min(INIT_DATA);
    let mut reports = Vec::with_capacity(1 + (payload.len() - first).div_ceil(CONT_DATA));
    let mut init = single_report(cid, command, &payload[..first]);
    // The length field announces the whole message, not just this packet.
    let total = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    init[5..7].copy_from_slice(&total.to_be_bytes());
    reports.push(init);
    for (seq, chunk) in payload[first..].chunks(CONT_DATA).enumerate() {
        let mut report = [0u8; REPORT_SIZE];
        report[..4].copy_from_slice(&cid.to_be_bytes());
        // At most 128 chunks for a payload within MAX_MESSAGE_SIZE, so seq fits in 0..=0x7F.
        report[4] = (seq & 0x7F) as u8;
        report[5..5 + chunk.len()].copy_from_slice(chunk);
        reports.push(report);
    }
    reports
}

#[cfg(test)]
mod tests;
