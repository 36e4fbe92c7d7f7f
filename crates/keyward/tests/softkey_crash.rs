//! `keyward softkey` killed with SIGKILL while a host sends getAssertion requests back to back —
//! the pattern in which the key starts writing each next counter just before its answer and
//! syncs it after — never repeats a signature counter a host has seen, across restarts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyward_ctap::hid::cmd;
use keyward_testkit::{UdpHost, get_assertion_request, make_credential, sign_count, spawn_softkey};

const RP_ID: &str = "crash.keyward.example";
const ROUNDS: u64 = 6;

#[test]
fn a_key_killed_mid_burst_never_repeats_a_counter() {
    let bin = Path::new(env!("CARGO_BIN_EXE_keyward"));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("key.json");
    let timeout = Duration::from_millis(500);
    let (mut child, address) = spawn_softkey(bin, &state, Some("warn"));
    let mut host = UdpHost::connect(address, timeout);
    let request = get_assertion_request(RP_ID, &make_credential(&host, RP_ID));

    let mut seen: Vec<u32> = Vec::new();
    for round in 0..ROUNDS {
        // Kill at a different moment each round, while this thread keeps signing.
        let pid = child.0.id().to_string();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(30_000 + round * 3_700));
            let killed = Command::new("kill").args(["-KILL", &pid]).status();
            assert!(killed.expect("running kill").success(), "kill -KILL {pid}");
        });
        let before = seen.len();
        loop {
            host.send_message(cmd::CBOR, &request);
            let Some((command, response)) = host.try_answer() else {
                break;
            };
            assert_eq!(command, cmd::CBOR, "CBOR answer");
            assert_eq!(response.first(), Some(&0), "getAssertion succeeded");
            let count = sign_count(&response);
            if let Some(&last) = seen.last() {
                assert!(count > last, "round {round}: counter {count} after {last}");
            }
            seen.push(count);
        }
        killer.join().expect("the killer thread");
        assert!(
            seen.len() > before + 10,
            "round {round}: signed before the kill"
        );
        drop(child); // reaps the killed process
        (child, host) = {
            let (child, address) = spawn_softkey(bin, &state, Some("warn"));
            (child, UdpHost::connect(address, timeout))
        };
    }
    // The key signs on after the last restart, above everything it ever answered.
    let (_, response) = host.call(cmd::CBOR, &request);
    let count = sign_count(&response);
    assert!(
        count > *seen.last().expect("signatures"),
        "{count} after restarts"
    );
}
