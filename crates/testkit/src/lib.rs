//! Test and benchmark support shared by Keyward's crates: a CTAP-HID host over the UDP transport
//! of design.md, `keyward softkey` as a child process, and the CTAP2 requests the benchmarks send.
//! [`pin`] is the platform side of PIN/UV auth protocol 2. Only dev-dependencies use this crate; it panics with a message on anything unexpected, as a
//! test should.

pub mod pin;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::hid::{BROADCAST_CID, REPORT_SIZE, cmd};

/// Kills a child process by its PID when dropped, also when the test or benchmark panics.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread of its own, handing each line to `on_line`, so the child
/// never blocks on a full pipe.
pub fn drain(pipe: impl Read + Send + 'static, on_line: impl Fn(&str) + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            on_line(&line);
        }
    });
}

/// Starts `keyward softkey --udp 127.0.0.1:0 --state STATE --attestation none` and returns it with
/// the address from its ready line. `rust_log` sets its log filter (else it follows `RUST_LOG`).
pub fn spawn_softkey(bin: &Path, state: &Path, rust_log: Option<&str>) -> (ChildGuard, SocketAddr) {
    let mut command = Command::new(bin);
    command
        .args(["softkey", "--udp", "127.0.0.1:0", "--state"])
        .arg(state)
        .args(["--attestation", "none"])
        .env_remove("KEYWARD_SOFTKEY_PASSPHRASE");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
    drain(child.stderr.take().expect("stderr"), |_| {});
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let guard = ChildGuard(child);
    let address = loop {
        let line = lines
            .next()
            .expect("softkey exited before its ready line")
            .expect("reading the softkey's stdout");
        if let Some(addr) = line.strip_prefix("keyward softkey listening on ") {
            break addr.trim().parse().expect("ready line address");
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (guard, address)
}

/// A minimal CTAP-HID host over UDP: 64-byte reports, one per datagram.
pub struct UdpHost {
    pub socket: UdpSocket,
    pub cid: u32,
}

impl UdpHost {
    /// Connects and allocates a channel with INIT; replies must come within `timeout`.
    pub fn connect(target: SocketAddr, timeout: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect(target).expect("connect");
        socket
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut host = UdpHost {
            socket,
            cid: BROADCAST_CID,
        };
        let nonce = [0x5A; 8];
        let (command, response) = host.call(cmd::INIT, &nonce);
        assert_eq!(command, cmd::INIT, "INIT answer");
        assert_eq!(response[..8], nonce, "INIT nonce echoed");
        host.cid = u32::from_be_bytes([response[8], response[9], response[10], response[11]]);
        assert_eq!(response[16] & 0x04, 0x04, "CBOR capability");
        host
    }

    /// Sends one message, fragmented into reports.
    pub fn send_message(&self, command: u8, payload: &[u8]) {
        for report in keyward_ctap::hid::fragment(self.cid, command, payload) {
            self.socket.send(&report).expect("send");
        }
    }

    /// Sends a message and returns the first non-KEEPALIVE answer, reassembled.
    pub fn call(&self, command: u8, payload: &[u8]) -> (u8, Vec<u8>) {
        self.send_message(command, payload);
        self.answer()
    }

    /// The next non-KEEPALIVE answer, reassembled: (command, payload).
    pub fn answer(&self) -> (u8, Vec<u8>) {
        self.try_answer().expect("a whole answer in time")
    }

    /// [`UdpHost::answer`], or `None` when the key stops answering (a timeout, or the port no
    /// longer open) before the whole answer is in.
    pub fn try_answer(&self) -> Option<(u8, Vec<u8>)> {
        loop {
            let first = self.try_recv()?;
            if first[4] == 0x80 | cmd::KEEPALIVE {
                continue;
            }
            assert_eq!(first[4] & 0x80, 0x80, "an init packet");
            let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
            let mut data = first[7..].to_vec();
            while data.len() < len {
                data.extend_from_slice(&self.try_recv()?[5..]);
            }
            data.truncate(len);
            return Some((first[4] & 0x7F, data));
        }
    }

    /// One CTAP2 request (`command byte ‖ CBOR`) over CTAPHID_CBOR that must succeed; returns
    /// `status ‖ CBOR`.
    pub fn ctap(&self, request: &[u8]) -> Vec<u8> {
        let (command, response) = self.call(cmd::CBOR, request);
        assert_eq!(command, cmd::CBOR, "CBOR answer (got {command:#04x})");
        assert_eq!(
            response.first(),
            Some(&0x00),
            "CTAP2 status OK (got {response:02x?})"
        );
        response
    }

    /// One report; panics if none comes within the timeout or it is not 64 bytes.
    pub fn recv(&self) -> [u8; REPORT_SIZE] {
        self.try_recv().expect("a reply in time")
    }

    /// One report, or `None` when none comes within the timeout or the key's port is closed
    /// (the ICMP error of an earlier send); panics on any other error or a report that is not
    /// 64 bytes.
    pub fn try_recv(&self) -> Option<[u8; REPORT_SIZE]> {
        use std::io::ErrorKind;
        let mut report = [0u8; REPORT_SIZE];
        match self.socket.recv(&mut report) {
            Ok(n) => {
                assert_eq!(n, REPORT_SIZE, "one 64-byte report per datagram");
                Some(report)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                ) =>
            {
                None
            }
            Err(e) => panic!("receiving a report: {e}"),
        }
    }
}

/// A makeCredential (ES256, non-discoverable, user present) for `rp_id`, as `0x01 ‖ CBOR`.
pub fn make_credential_request(rp_id: &str) -> Vec<u8> {
    let request = cbor::int_map(vec![
        (1, Value::bytes([0x11; 32])),
        (
            2,
            cbor::text_map(vec![
                ("id", Value::text(rp_id)),
                ("name", Value::text("Bench")),
            ]),
        ),
        (
            3,
            cbor::text_map(vec![
                ("id", Value::bytes(b"bench-user".to_vec())),
                ("name", Value::text("bench")),
            ]),
        ),
        (
            4,
            Value::Array(vec![cbor::text_map(vec![
                ("alg", Value::int(-7)),
                ("type", Value::text("public-key")),
            ])]),
        ),
        (
            7,
            cbor::text_map(vec![("rk", Value::Bool(false)), ("up", Value::Bool(true))]),
        ),
    ]);
    let mut payload = vec![0x01];
    payload.extend_from_slice(&cbor::encode(&request));
    payload
}

/// Runs [`make_credential_request`] on `host` and returns the new credential's id.
pub fn make_credential(host: &UdpHost, rp_id: &str) -> Vec<u8> {
    let response = host.ctap(&make_credential_request(rp_id));
    let map = cbor::decode(&response[1..]).expect("canonical CBOR response");
    let auth_data = map
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    // rpIdHash(32) flags(1) signCount(4) aaguid(16) credentialIdLength(2) credentialId
    assert_eq!(auth_data[32] & 0x40, 0x40, "attested credential data");
    let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    auth_data[55..55 + len].to_vec()
}

/// A getAssertion for `rp_id` naming `credential_id` (user present), as `0x02 ‖ CBOR`.
pub fn get_assertion_request(rp_id: &str, credential_id: &[u8]) -> Vec<u8> {
    let request = cbor::int_map(vec![
        (1, Value::text(rp_id)),
        (2, Value::bytes([0x22; 32])),
        (
            3,
            Value::Array(vec![cbor::text_map(vec![
                ("id", Value::bytes(credential_id.to_vec())),
                ("type", Value::text("public-key")),
            ])]),
        ),
        (5, cbor::text_map(vec![("up", Value::Bool(true))])),
    ]);
    let mut payload = vec![0x02];
    payload.extend_from_slice(&cbor::encode(&request));
    payload
}

/// The signature counter of a successful getAssertion answer (`status ‖ CBOR`); checks UP.
pub fn sign_count(response: &[u8]) -> u32 {
    assert_eq!(response.first(), Some(&0x00), "CTAP2 status OK");
    let map = cbor::decode(&response[1..]).expect("canonical CBOR response");
    let auth_data = map
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    assert_eq!(auth_data[32] & 0x01, 0x01, "user present");
    u32::from_be_bytes([auth_data[33], auth_data[34], auth_data[35], auth_data[36]])
}
