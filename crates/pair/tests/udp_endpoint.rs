//! `keyward-pair run --udp` end to end inside one process: a CTAP-HID host on a UDP socket →
//! the tool's endpoint (keyward-ctap's HidDevice) → the relay client → the in-test relay server.
#![cfg(feature = "ctap-hid")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use keyward_pair::endpoint::PresenceMode;
use keyward_pair::enroll;
use keyward_pair::protocol::ServerMessage;
use keyward_pair::relay::RelayClient;
use keyward_pair::run::{serve, udp_transport};
use keyward_pair::state::Home;
use tokio::net::UdpSocket;

/// A minimal CTAP-HID host, as python-fido2 or a browser would be.
struct Host {
    sock: UdpSocket,
    dev: SocketAddr,
    cid: u32,
}

fn packet(cid: u32, cmd: u8, payload: &[u8]) -> [u8; 64] {
    assert!(
        payload.len() <= 57,
        "test helper sends single-packet messages"
    );
    let mut r = [0u8; 64];
    r[..4].copy_from_slice(&cid.to_be_bytes());
    r[4] = cmd | 0x80;
    r[5..7].copy_from_slice(&u16::try_from(payload.len()).expect("len").to_be_bytes());
    r[7..7 + payload.len()].copy_from_slice(payload);
    r
}

impl Host {
    async fn connect(dev: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind host");
        let mut host = Host {
            sock,
            dev,
            cid: 0xffff_ffff,
        };
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        let (cmd, resp) = host.exchange(0x06, &nonce).await;
        assert_eq!(cmd, 0x86);
        assert_eq!(&resp[..8], &nonce);
        host.cid = u32::from_be_bytes(resp[8..12].try_into().expect("cid"));
        assert_eq!(resp[16] & 0x04, 0x04, "CBOR capability advertised");
        host
    }

    async fn recv(&self, within: Duration) -> Option<[u8; 64]> {
        let mut buf = [0u8; 128];
        let (n, _) = tokio::time::timeout(within, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        assert_eq!(n, 64, "every reply is one 64-byte report");
        Some(buf[..64].try_into().expect("64"))
    }

    /// Sends one message and returns (response command, payload), skipping keepalives.
    async fn exchange(&self, cmd: u8, payload: &[u8]) -> (u8, Vec<u8>) {
        let (c, p, _) = self.exchange_counting(cmd, payload).await;
        (c, p)
    }

    async fn exchange_counting(&self, cmd: u8, payload: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
        self.sock
            .send_to(&packet(self.cid, cmd, payload), self.dev)
            .await
            .expect("send");
        let mut keepalives = Vec::new();
        loop {
            let r = self
                .recv(Duration::from_secs(5))
                .await
                .expect("a reply within 5 s");
            if r[4] == 0xbb {
                keepalives.push(r[7]);
                continue;
            }
            let len = usize::from(u16::from_be_bytes([r[5], r[6]]));
            let mut data = r[7..].to_vec();
            while data.len() < len {
                let c = self
                    .recv(Duration::from_secs(1))
                    .await
                    .expect("continuation");
                data.extend_from_slice(&c[5..]);
            }
            data.truncate(len);
            return (r[4], data, keepalives);
        }
    }
}

async fn start_tool(app_addr: SocketAddr) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    enroll::login(&home, &target(app_addr), TOKEN)
        .await
        .expect("login");
    let (io, bound) = udp_transport("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("udp");
    let (client, events) = RelayClient::spawn(relay_config(&home));
    let hid = keyward_pair::hid::new_device();
    tokio::spawn(async move { serve(hid, PresenceMode::Auto, io, client, events, |_| {}).await });
    (bound, dir)
}

/// Waits until the tool has connected and attached (requests before that answer NOT_ALLOWED).
async fn wait_attached(host: &Host) {
    for _ in 0..100 {
        if host.exchange(0x10, &[0x04]).await.1 != [0x30] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key was never attached");
}

#[tokio::test]
async fn cbor_request_is_relayed_whole_and_answered() {
    let (addr, app) = start_fake().await;
    let (dev, _home) = start_tool(addr).await;
    let host = Host::connect(dev).await;
    wait_attached(&host).await;

    // PING is answered locally, not relayed.
    assert_eq!(
        host.exchange(0x01, b"ping!").await,
        (0x81, b"ping!".to_vec())
    );
    let seen_before = app.fake.lock().expect("lock").seen.len();
    let (cmd, resp) = host.exchange(0x10, &[0x01, 0xa0]).await;
    assert_eq!((cmd, resp), (0x90, vec![0x00, 0x01]));
    let seen = app.fake.lock().expect("lock").seen.clone();
    assert_eq!(seen.len(), seen_before + 1);
    assert_eq!(seen.last(), Some(&(vec![0x01, 0xa0], true)));
}

#[tokio::test]
async fn keepalives_flow_while_the_server_works() {
    let (addr, app) = start_fake().await;
    app.fake.lock().expect("lock").slow = Some((0x01, Duration::from_millis(450)));
    let (dev, _home) = start_tool(addr).await;
    let host = Host::connect(dev).await;
    wait_attached(&host).await;
    let (cmd, resp, keepalives) = host.exchange_counting(0x10, &[0x01, 0xa0]).await;
    assert_eq!((cmd, resp), (0x90, vec![0x00, 0x01]));
    assert!(
        keepalives.len() >= 3,
        "about one keepalive per 100 ms: {keepalives:?}"
    );
    assert!(
        keepalives.iter().all(|s| *s == 1),
        "PROCESSING: {keepalives:?}"
    );
}

#[tokio::test]
async fn no_key_attached_answers_not_allowed() {
    let (addr, app) = start_fake().await;
    app.fake.lock().expect("lock").no_attach = true;
    let (dev, _home) = start_tool(addr).await;
    let host = Host::connect(dev).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.exchange(0x10, &[0x04]).await, (0x90, vec![0x30]));
    assert!(
        app.fake.lock().expect("lock").seen.is_empty(),
        "nothing reached the server"
    );
}

#[tokio::test]
async fn detach_mid_operation_ends_the_request_at_once() {
    let (addr, app) = start_fake().await;
    app.fake.lock().expect("lock").slow = Some((0x01, Duration::from_secs(3)));
    let (dev, _home) = start_tool(addr).await;
    let host = Host::connect(dev).await;
    wait_attached(&host).await;
    let push = app.push.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = push.send(ServerMessage::Detach {
            session_id: "s1".into(),
            reason: "disconnected by admin".into(),
        });
    });
    let started = std::time::Instant::now();
    assert_eq!(host.exchange(0x10, &[0x01, 0xa0]).await, (0x90, vec![0x30]));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "within a second, not after the server's 3 s"
    );
    // And the key stays gone.
    assert_eq!(host.exchange(0x10, &[0x04]).await, (0x90, vec![0x30]));
}

#[tokio::test]
async fn datagrams_that_are_not_one_report_are_dropped() {
    let (addr, _app) = start_fake().await;
    let (dev, _home) = start_tool(addr).await;
    let host = Host::connect(dev).await;
    let mut long = [0u8; 65];
    long[1..].copy_from_slice(&packet(host.cid, 0x01, b"x"));
    host.sock.send_to(&long, dev).await.expect("send");
    host.sock
        .send_to(&packet(host.cid, 0x01, b"x")[..63], dev)
        .await
        .expect("send");
    assert!(
        host.recv(Duration::from_millis(300)).await.is_none(),
        "no answer to malformed datagrams"
    );
    assert_eq!(host.exchange(0x01, b"ok").await, (0x81, b"ok".to_vec()));
}
