//! Unit and loopback tests of the softkey: the state file, its Store, opening and creating keys,
//! and CTAP over the real UDP transport.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keyward_authenticator::{KeyState, Store, StoredCredential, UserEntity};
use keyward_ctap::cbor;
use keyward_ctap::hid::cmd;
use keyward_testkit::UdpHost;

use super::*;

fn args(dir: &Path) -> Args {
    Args {
        udp: "127.0.0.1:0".parse().expect("address"),
        state: dir.join("key.json"),
        presence: PresenceMode::Auto,
        aaguid: None,
        attestation: AttestationMode::Packed,
        attestation_ca_out: None,
        presence_delay_ms: 0,
    }
}

fn credential(id: u8, rp: &str, user: u8, discoverable: bool) -> StoredCredential {
    StoredCredential {
        id: vec![id; 32],
        rp_id: rp.into(),
        rp_id_hash: [rp.len() as u8; 32],
        rp_name: None,
        user: UserEntity {
            id: vec![user],
            name: Some("alice".into()),
            display_name: None,
        },
        alg: -7,
        public_key_cose: vec![0xA0],
        sealed_private_key: vec![1, 2, 3],
        sealed_cred_random: None,
        discoverable,
        cred_protect: 1,
        cred_blob: Some(vec![9]),
        sign_count: 0,
        backup_eligible: false,
        backup_state: false,
        created_at_ms: 5,
    }
}

/// Re-reads the state file and its journal from disk as a fresh store: what a restarted process
/// would see.
fn reload(path: &Path) -> FileStore {
    FileStore::load(path).expect("state file and journal readable")
}

#[test]
fn every_store_change_is_on_disk_when_the_call_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SoftKey::open(&args(dir.path()), None).expect("create");
    let path = dir.path().join("key.json");
    let mut store = key.store;

    store
        .insert_credential(&credential(1, "example.com", 1, true))
        .expect("insert");
    store
        .insert_credential(&credential(2, "example.com", 2, false))
        .expect("insert");
    assert_eq!(
        reload(&path)
            .discoverable_credentials()
            .expect("list")
            .len(),
        1
    );
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 1);
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 2);
    assert_eq!(
        reload(&path)
            .credential(&[1; 32])
            .expect("read")
            .expect("present")
            .sign_count,
        2
    );

    let spent = store.spend_pin_retry().expect("spend");
    assert_eq!((spent.pin_retries, spent.consecutive_pin_failures), (7, 1));
    let on_disk = reload(&path).load_state().expect("state");
    assert_eq!(
        (on_disk.pin_retries, on_disk.consecutive_pin_failures),
        (7, 1)
    );

    let user = UserEntity {
        id: vec![1],
        name: Some("bob".into()),
        display_name: Some("Bob".into()),
    };
    assert!(store.update_user(&[1; 32], &user).expect("update"));
    assert!(
        !store
            .update_user(&[7; 32], &user)
            .expect("update of a missing credential")
    );
    assert_eq!(
        reload(&path)
            .credential(&[1; 32])
            .expect("read")
            .expect("present")
            .user,
        user
    );

    assert!(store.delete_credential(&[2; 32]).expect("delete"));
    assert!(!store.delete_credential(&[2; 32]).expect("second delete"));
    assert!(reload(&path).credential(&[2; 32]).expect("read").is_none());

    let state = KeyState {
        pin_verifier: Some([3; 32]),
        pin_code_points: 6,
        always_uv: true,
        ..KeyState::default()
    };
    store.save_state(&state).expect("save");
    assert_eq!(reload(&path).load_state().expect("state"), state);

    store.wipe().expect("wipe");
    let mut after = reload(&path);
    assert!(after.discoverable_credentials().expect("list").is_empty());
    assert!(after.credential(&[1; 32]).expect("read").is_none());
    assert_eq!(after.load_state().expect("state"), KeyState::default());
    // Only the state, its journal and its key file are in the directory: no temporary files are
    // left behind.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["key.json", "key.json.journal", "key.json.key"]);
}

#[test]
fn a_discoverable_credential_replaces_the_same_rp_and_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SoftKey::open(&args(dir.path()), None)
        .expect("create")
        .store;
    store
        .insert_credential(&credential(1, "a.example", 1, true))
        .expect("insert");
    store
        .insert_credential(&credential(2, "a.example", 1, true))
        .expect("insert");
    store
        .insert_credential(&credential(3, "a.example", 2, true))
        .expect("insert");
    let ids: Vec<_> = store
        .discoverable_credentials()
        .expect("list")
        .into_iter()
        .map(|c| c.id[0])
        .collect();
    assert_eq!(ids, [2, 3]);
    assert!(
        store
            .insert_credential(&credential(2, "b.example", 9, false))
            .is_err(),
        "duplicate id"
    );
}

#[test]
fn a_failed_write_changes_nothing_and_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key.json");
    let mut store = SoftKey::open(&args(dir.path()), None)
        .expect("create")
        .store;
    store
        .insert_credential(&credential(1, "example.com", 1, true))
        .expect("insert");
    // Make the directory unusable: the next write cannot create its temporary file.
    let state_copy = StateFile::read(&path).expect("read");
    let mut broken = FileStore::new(dir.path().join("missing-dir").join("key.json"), state_copy);
    assert!(broken.next_sign_count(&[1; 32]).is_err());
    assert!(broken.spend_pin_retry().is_err());
    assert_eq!(
        broken
            .credential(&[1; 32])
            .expect("read")
            .expect("present")
            .sign_count,
        0
    );
    assert_eq!(broken.load_state().expect("state").pin_retries, 8);
}

#[test]
fn restart_keeps_credentials_and_lifts_the_three_strikes_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = args(dir.path());
    let aaguid;
    {
        let mut key = SoftKey::open(&args, None).expect("create");
        aaguid = key.engine.config().aaguid;
        key.store
            .insert_credential(&credential(1, "example.com", 1, true))
            .expect("insert");
        for _ in 0..3 {
            key.store.spend_pin_retry().expect("spend");
        }
    }
    let mut key = SoftKey::open(&args, None).expect("reopen");
    assert_eq!(key.engine.config().aaguid, aaguid, "same key after restart");
    let state = key.store.load_state().expect("state");
    assert_eq!((state.pin_retries, state.consecutive_pin_failures), (5, 0));
    assert!(key.store.credential(&[1; 32]).expect("read").is_some());
    assert!(matches!(
        key.engine.config().attestation,
        Attestation::Packed(_)
    ));
}

#[test]
fn key_file_is_private_and_the_state_holds_no_plaintext_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SoftKey::open(&args(dir.path()), None).expect("create");
    let mode = fs::metadata(dir.path().join("key.json.key"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = fs::read_to_string(dir.path().join("key.json")).expect("state");
    assert!(text.contains("\"version\": 2"));
    assert!(!text.contains("PRIVATE KEY"));
    let Attestation::Packed(batch) = &key.engine.config().attestation else {
        panic!("packed expected")
    };
    let batch_b64 = state::to_base64(&batch.pkcs8_der);
    assert!(
        !text.contains(&batch_b64),
        "the batch private key must be sealed"
    );
    let journal = fs::read(dir.path().join("key.json.journal")).expect("journal");
    let journal_mode = fs::metadata(dir.path().join("key.json.journal"))
        .expect("journal")
        .permissions()
        .mode();
    assert_eq!(journal_mode & 0o777, 0o600);
    assert!(
        !journal
            .windows(batch.pkcs8_der.len())
            .any(|w| w == batch.pkcs8_der.as_slice())
    );
}

#[test]
fn passphrase_keys_need_the_same_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = args(dir.path());
    SoftKey::open(&args, Some(b"correct horse")).expect("create");
    assert!(
        !dir.path().join("key.json.key").exists(),
        "no key file with a passphrase"
    );
    let text = fs::read_to_string(&args.state).expect("state");
    assert!(text.contains("\"kind\": \"passphrase\"") && text.contains("\"iterations\": 600000"));
    assert!(SoftKey::open(&args, Some(b"correct horse")).is_ok());
    let wrong = SoftKey::open(&args, Some(b"wrong"))
        .err()
        .expect("wrong passphrase refused");
    assert!(wrong.to_string().contains("does not open"), "{wrong}");
    assert!(SoftKey::open(&args, None).is_err(), "passphrase missing");
}

#[test]
fn aaguid_is_taken_at_creation_and_cannot_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = args(dir.path());
    args.aaguid = Some("00112233-4455-6677-8899-aabbccddeeff".into());
    args.attestation = AttestationMode::None;
    let key = SoftKey::open(&args, None).expect("create");
    assert_eq!(
        hex::encode(key.engine.config().aaguid),
        "00112233445566778899aabbccddeeff"
    );
    assert!(matches!(key.engine.config().attestation, Attestation::None));
    drop(key);
    args.aaguid = Some("ff".repeat(16));
    assert!(SoftKey::open(&args, None).is_err());
    assert!(parse_aaguid("abcd").is_err() && parse_aaguid("zz").is_err());
}

#[test]
fn presence_modes() {
    let signals = Arc::new(Signals::default());
    let request = PresenceRequest {
        rp_id: None,
        kind: keyward_authenticator::PresenceKind::Selection,
    };
    let mut deny = SoftPresence {
        mode: PresenceMode::Deny,
        delay: Duration::ZERO,
        signals: Arc::clone(&signals),
    };
    assert_eq!(deny.confirm(&request), Err(StatusCode::OperationDenied));
    let mut auto = SoftPresence {
        mode: PresenceMode::Auto,
        delay: Duration::ZERO,
        signals: Arc::clone(&signals),
    };
    assert_eq!(auto.confirm(&request), Ok(()));
    signals.cancel.store(true, Ordering::SeqCst);
    let mut slow = SoftPresence {
        mode: PresenceMode::Auto,
        delay: Duration::from_secs(5),
        signals: Arc::clone(&signals),
    };
    assert_eq!(slow.confirm(&request), Err(StatusCode::KeepaliveCancel));
    assert!(!signals.up_needed.load(Ordering::SeqCst));
}

fn start(
    args: &Args,
) -> (
    std::net::SocketAddr,
    Arc<Signals>,
    std::thread::JoinHandle<()>,
) {
    let key = SoftKey::open(args, None).expect("open");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let address = socket.local_addr().expect("address");
    let signals = key.signals();
    let thread_signals = Arc::clone(&signals);
    let handle =
        std::thread::spawn(move || transport::serve(socket, key, thread_signals).expect("serve"));
    (address, signals, handle)
}

#[test]
fn ctap_over_udp_get_info_ping_and_odd_datagrams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (address, signals, handle) = start(&args(dir.path()));
    let host = UdpHost::connect(address, Duration::from_secs(5));

    let (command, response) = host.call(cmd::CBOR, &[0x04]);
    assert_eq!(command, cmd::CBOR);
    assert_eq!(response[0], 0x00, "getInfo succeeds");
    let info = cbor::decode(&response[1..]).expect("canonical getInfo");
    assert!(
        info.map_get_int(1)
            .and_then(cbor::Value::as_array)
            .is_some_and(|v| v.contains(&cbor::Value::text("FIDO_2_1")))
    );

    let ping: Vec<u8> = (0..500).map(|i| i as u8).collect();
    assert_eq!(host.call(cmd::PING, &ping), (cmd::PING, ping));

    // Datagrams that are not one report are dropped without an answer; the device still works.
    host.socket.send(&[0u8; 63]).expect("send");
    host.socket.send(&[0u8; 65]).expect("send");
    assert_eq!(
        host.call(cmd::PING, b"still here"),
        (cmd::PING, b"still here".to_vec())
    );

    // MSG is refused (no CTAP1), an unknown CTAP2 command byte gets INVALID_COMMAND.
    assert_eq!(host.call(cmd::MSG, &[0, 1, 0, 0]), (cmd::ERROR, vec![0x01]));
    assert_eq!(host.call(cmd::CBOR, &[0x55]), (cmd::CBOR, vec![0x01]));

    signals.stop.store(true, Ordering::SeqCst);
    handle.join().expect("serve thread");
}

#[test]
fn slow_presence_sends_upneeded_keepalives_and_honours_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = args(dir.path());
    args.presence_delay_ms = 10_000;
    let (address, signals, handle) = start(&args);
    let host = UdpHost::connect(address, Duration::from_secs(5));

    // authenticatorSelection (0x0B) waits for presence.
    host.send_message(cmd::CBOR, &[0x0B]);
    let keepalive = host.recv();
    assert_eq!(keepalive[4], 0x80 | cmd::KEEPALIVE);
    assert_eq!(keepalive[7], keyward_ctap::hid::keepalive::UPNEEDED);
    host.send_message(cmd::CANCEL, &[]);
    let answer = loop {
        let report = host.recv();
        if report[4] != 0x80 | cmd::KEEPALIVE {
            break report;
        }
    };
    assert_eq!(answer[4], 0x80 | cmd::CBOR);
    assert_eq!(answer[7], StatusCode::KeepaliveCancel.as_u8());

    signals.stop.store(true, Ordering::SeqCst);
    handle.join().expect("serve thread");
}

// --- The counter journal: crash points and damage ------------------------------------------

/// A store on a fresh key with one credential (id [1; 32]), and the state file's path.
fn store_with_credential(dir: &Path) -> (FileStore, PathBuf) {
    let mut store = SoftKey::open(&args(dir), None).expect("create").store;
    store
        .insert_credential(&credential(1, "example.com", 1, true))
        .expect("insert");
    (store, dir.join("key.json"))
}

/// A store with one credential (id [1; 32]) whose journals are the smallest possible (a few
/// dozen records), so that they fill up quickly.
fn store_with_small_journal(dir: &Path) -> (FileStore, PathBuf) {
    let (mut store, path) = store_with_credential(dir);
    store.set_journal_capacity(0);
    store.compact().expect("compact");
    (store, path)
}

/// The bytes of `after` that differ from `before`, first to last.
fn changed_bytes(before: &[u8], after: &[u8]) -> std::ops::Range<usize> {
    let differs = |(a, b): (&u8, &u8)| a != b;
    let start = before.iter().zip(after).position(differs);
    let last = before.iter().zip(after).rposition(differs);
    start
        .zip(last)
        .map(|(s, l)| s..l + 1)
        .expect("the file changed")
}

fn count_on_disk(path: &Path) -> u32 {
    reload(path)
        .credential(&[1; 32])
        .expect("read")
        .expect("present")
        .sign_count
}

#[test]
fn counters_take_the_journal_not_a_state_rewrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let state_before = fs::read(&path).expect("state");
    for expected in 1..=50 {
        assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), expected);
        assert_eq!(
            count_on_disk(&path),
            expected,
            "on disk when the call returns"
        );
    }
    store.spend_pin_retry().expect("spend");
    assert_eq!(reload(&path).load_state().expect("state").pin_retries, 7);
    assert_eq!(
        fs::read(&path).expect("state"),
        state_before,
        "the state file itself was not rewritten"
    );
    // A rare change rewrites the state file and records how far the journal is folded in; the
    // records before that point are not replayed again over it.
    store
        .save_state(&KeyState {
            pin_verifier: Some([3; 32]),
            ..KeyState::default()
        })
        .expect("set PIN");
    let mut after = reload(&path);
    let state = after.load_state().expect("state");
    assert_eq!((state.pin_retries, state.pin_verifier), (8, Some([3; 32])));
    assert_eq!(count_on_disk(&path), 50);
}

#[test]
fn a_torn_last_record_loses_only_the_unanswered_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let journal = journal::path_for(&path);
    for _ in 0..5 {
        store.next_sign_count(&[1; 32]).expect("count");
    }
    let before = fs::read(&journal).expect("journal");
    // The sixth change, as if the process died during its write: every prefix of the record.
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 6);
    let after = fs::read(&journal).expect("journal");
    let std::ops::Range { start, end } = changed_bytes(&before, &after);
    let state = fs::read(&path).expect("state");
    for cut in start..end {
        let mut torn = after.clone();
        torn[cut..end].fill(0);
        fs::write(&journal, &torn).expect("write");
        let mut reopened = reload(&path);
        let on_disk = reopened
            .credential(&[1; 32])
            .expect("read")
            .expect("present")
            .sign_count;
        assert_eq!(on_disk, 5, "a torn record is discarded (cut at {cut})");
        // The answer with 6 never left; the next one may reuse 6 but never 5 or lower.
        assert!(reopened.next_sign_count(&[1; 32]).expect("count") > 5);
        // The reopened store started a new journal; put the crashed files back for the next cut.
        fs::write(&path, &state).expect("restore");
        fs::write(&journal, &after).expect("restore");
    }
    assert_eq!(count_on_disk(&path), 6);
}

#[test]
fn a_damaged_journal_record_before_others_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let before = fs::read(journal::path_for(&path)).expect("journal");
    for _ in 0..3 {
        store.next_sign_count(&[1; 32]).expect("count");
    }
    let mut bytes = fs::read(journal::path_for(&path)).expect("journal");
    let first = before
        .iter()
        .zip(&bytes)
        .position(|(a, b)| a != b)
        .expect("records written");
    bytes[first + 5] ^= 0x01;
    fs::write(journal::path_for(&path), &bytes).expect("write");
    let error = FileStore::load(&path).expect_err("damage refused");
    let message = format!("{error:#}");
    assert!(message.contains("damaged at offset"), "{message}");
    assert!(
        SoftKey::open(&args(dir.path()), None).is_err(),
        "the key does not start on a damaged journal"
    );
}

#[test]
fn a_missing_journal_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    store.next_sign_count(&[1; 32]).expect("count");
    fs::remove_file(journal::path_for(&path)).expect("remove");
    let message = format!("{:#}", FileStore::load(&path).expect_err("refused"));
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn every_crash_point_of_a_compaction_keeps_the_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let journal = journal::path_for(&path);
    for _ in 0..4 {
        store.next_sign_count(&[1; 32]).expect("count");
    }
    let old_state = fs::read(&path).expect("state");
    let old_journal = fs::read(&journal).expect("journal");
    store.compact().expect("compact");
    let new_state = fs::read(&path).expect("state");
    assert_ne!(old_state, new_state);
    // Crashed before the new state file: old state and old journal.
    fs::write(&path, &old_state).expect("write");
    fs::write(&journal, &old_journal).expect("write");
    assert_eq!(count_on_disk(&path), 4);
    // Crashed after the new state file, before the new journal went in: the old journal is
    // stale and ignored, the state file holds its counters.
    fs::write(&path, &new_state).expect("write");
    assert_eq!(count_on_disk(&path), 4);
    // A journal from another key (or an old generation) is never replayed.
    let other = tempfile::tempdir().expect("tempdir");
    let (mut other_store, other_path) = store_with_credential(other.path());
    for _ in 0..9 {
        other_store.next_sign_count(&[1; 32]).expect("count");
    }
    fs::copy(journal::path_for(&other_path), &journal).expect("copy");
    assert_eq!(count_on_disk(&path), 4);
}

#[test]
fn a_full_journal_is_folded_into_the_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_small_journal(dir.path());
    let mut ids = std::collections::HashSet::new();
    for expected in 1..=200u32 {
        assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), expected);
        ids.insert(store.state().journal.clone().expect("journal").id);
        if expected % 17 == 0 {
            assert_eq!(count_on_disk(&path), expected);
        }
    }
    assert!(ids.len() > 2, "the journal was replaced as it filled up");
    assert_eq!(count_on_disk(&path), 200);
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no temporary files left: {names:?}");
}

// --- Counter reservations --------------------------------------------------------------------

#[test]
fn a_reserved_counter_is_on_disk_before_it_is_issued_and_never_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let journal = journal::path_for(&path);
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 1);
    assert_eq!(count_on_disk(&path), 1);
    // What the transport calls once the answer has left.
    store.reserve_next_count();
    assert_eq!(
        count_on_disk(&path),
        2,
        "the next value is written ahead of use"
    );
    for expected in 2..=20 {
        let before = fs::read(&journal).expect("journal");
        assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), expected);
        assert_eq!(
            fs::read(&journal).expect("journal"),
            before,
            "a reserved value needs no write of its own"
        );
        assert_eq!(
            count_on_disk(&path),
            expected,
            "on disk before it is issued"
        );
        store.reserve_next_count();
        assert_eq!(count_on_disk(&path), expected + 1);
    }
    // Answers without a signature reserve nothing.
    let before = fs::read(&journal).expect("journal");
    store.reserve_next_count();
    assert_eq!(fs::read(&journal).expect("journal"), before);
    // A restart or crash with a reservation outstanding: the key continues above the reserved
    // value, which is skipped; no value issued is ever issued again.
    let mut restarted = reload(&path);
    assert_eq!(restarted.next_sign_count(&[1; 32]).expect("count"), 22);
}

#[test]
fn a_reservation_started_before_the_answer_is_finished_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let journal = journal::path_for(&path);
    for expected in 1..=20 {
        let before = fs::read(&journal).expect("journal");
        assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), expected);
        if expected > 1 {
            assert_eq!(
                fs::read(&journal).expect("journal"),
                before,
                "a reserved value needs no write of its own"
            );
        }
        // What the softkey does: start before the answer is sent, finish once it has left.
        store.start_reservation();
        assert_ne!(fs::read(&journal).expect("journal"), before, "written");
        store.reserve_next_count();
        assert_eq!(count_on_disk(&path), expected + 1);
    }
    assert_eq!(reload(&path).next_sign_count(&[1; 32]).expect("count"), 22);
}

#[test]
fn a_change_between_start_and_finish_syncs_the_reservation_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    store
        .insert_credential(&credential(2, "example.org", 2, false))
        .expect("insert");
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 1);
    store.start_reservation();
    // Whatever comes before the finish syncs and adopts the started reservation, so the journal
    // never has more than its last record unsynced and the reserved value is not issued twice.
    store.spend_pin_retry().expect("spend");
    assert_eq!(reload(&path).load_state().expect("state").pin_retries, 7);
    assert_eq!(count_on_disk(&path), 2);
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 2);
    store.start_reservation();
    // Another credential signs before the finish: its own counter is written after the
    // reservation, and then holds the reservation; the first credential's reserved 3 is given
    // up, skipped rather than ever issued.
    assert_eq!(store.next_sign_count(&[2; 32]).expect("count"), 1);
    store.reserve_next_count();
    assert_eq!(store.next_sign_count(&[2; 32]).expect("count"), 2);
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 4);
    let mut restarted = reload(&path);
    assert!(restarted.next_sign_count(&[1; 32]).expect("count") > 3);
    assert!(restarted.next_sign_count(&[2; 32]).expect("count") > 1);
}

#[test]
fn the_write_starts_before_the_answer_only_for_a_host_that_comes_back_at_once() {
    let (us, t0) = (Duration::from_micros, std::time::Instant::now());
    let mut pacing = Pacing::default();
    pacing.request(t0);
    assert!(!pacing.start_early(), "no history: the answer goes first");
    // The reservation took 90 µs after its answer, and the next request was already waiting.
    pacing.answered(t0 + us(100), Some(t0 + us(190)));
    pacing.request(t0 + us(195));
    assert!(pacing.start_early());
    // Started early, 50 µs were left after the answer; the host then paused for a millisecond.
    pacing.answered(t0 + us(300), Some(t0 + us(350)));
    pacing.request(t0 + us(1350));
    assert!(!pacing.start_early());
    // An answer without a signature makes no reservation and changes nothing.
    pacing.answered(t0 + us(1400), None);
    pacing.request(t0 + us(1405));
    assert!(!pacing.start_early());
    // Back at once after a reservation written after its answer.
    pacing.answered(t0 + us(1500), Some(t0 + us(1590)));
    pacing.request(t0 + us(1600));
    assert!(pacing.start_early());
}

#[test]
fn a_reservation_lost_in_a_crash_leaves_the_issued_counter_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    let journal = journal::path_for(&path);
    for _ in 0..3 {
        store.next_sign_count(&[1; 32]).expect("count");
        store.reserve_next_count();
    }
    // Three signatures, each followed by a reservation; the fourth takes the reserved 4, and
    // the reservation of 5 is cut off at every byte, as a crash during its write would.
    assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), 3 + 1);
    let before = fs::read(&journal).expect("journal");
    store.reserve_next_count();
    let after = fs::read(&journal).expect("journal");
    let changed = changed_bytes(&before, &after);
    for cut in changed.start..=changed.end {
        let mut torn = after.clone();
        torn[cut..].copy_from_slice(&before[cut..]);
        fs::write(&journal, &torn).expect("write");
        let on_disk = count_on_disk(&path);
        assert!(
            on_disk == 4 || (on_disk == 5 && torn == after),
            "cut at {cut}: counter {on_disk}"
        );
    }
    // The key continues above whatever the crash left (loading writes nothing; signing does).
    fs::write(&journal, &before).expect("write");
    assert_eq!(reload(&path).next_sign_count(&[1; 32]).expect("count"), 5);
}

#[test]
fn another_credential_writes_its_own_counter_and_nothing_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    store
        .insert_credential(&credential(2, "example.org", 2, false))
        .expect("insert");
    let mut last = std::collections::HashMap::<u8, u32>::new();
    // Alternating, repeating and restarting: each credential's counters only ever grow.
    for (step, id) in [1u8, 1, 2, 2, 1, 2, 1, 1, 1, 2].into_iter().enumerate() {
        let count = store.next_sign_count(&[id; 32]).expect("count");
        let on_disk = reload(&path)
            .credential(&[id; 32])
            .expect("read")
            .expect("present")
            .sign_count;
        assert!(
            on_disk >= count,
            "step {step}: issued {count}, on disk {on_disk}"
        );
        if let Some(previous) = last.insert(id, count) {
            assert!(count > previous, "step {step}: {count} after {previous}");
        }
        store.reserve_next_count();
        if step == 6 {
            store = reload(&path);
        }
    }
}

#[test]
fn deleting_or_wiping_drops_the_reservation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _path) = store_with_credential(dir.path());
    store.next_sign_count(&[1; 32]).expect("count");
    store.reserve_next_count();
    assert!(store.delete_credential(&[1; 32]).expect("delete"));
    store.reserve_next_count();
    assert!(
        store.next_sign_count(&[1; 32]).is_err(),
        "gone, reservation too"
    );

    store
        .insert_credential(&credential(2, "example.org", 2, true))
        .expect("insert");
    store.next_sign_count(&[2; 32]).expect("count");
    store.reserve_next_count();
    store.wipe().expect("wipe");
    store
        .insert_credential(&credential(2, "example.org", 2, true))
        .expect("insert");
    assert_eq!(
        store.next_sign_count(&[2; 32]).expect("count"),
        1,
        "a credential created after the reset starts afresh, not at the old reservation"
    );
}

#[test]
fn a_reservation_that_fills_the_journal_folds_it_while_nothing_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_small_journal(dir.path());
    let mut ids = std::collections::HashSet::new();
    for expected in 1..=200u32 {
        let before = store.state().journal.clone().expect("journal").id;
        assert_eq!(store.next_sign_count(&[1; 32]).expect("count"), expected);
        if expected > 1 {
            assert_eq!(
                store.state().journal.clone().expect("journal").id,
                before,
                "signatures take reserved values: the journal is replaced only by reservations"
            );
        }
        store.reserve_next_count();
        ids.insert(store.state().journal.clone().expect("journal").id);
        assert_eq!(count_on_disk(&path), expected + 1);
    }
    assert!(ids.len() > 2, "the journal was replaced as it filled up");
}

#[test]
fn a_version_1_state_file_is_read_and_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, path) = store_with_credential(dir.path());
    store.next_sign_count(&[1; 32]).expect("count");
    store.compact().expect("compact");
    drop(store);
    // What an older keyward wrote: version 1, no journal.
    let mut file = StateFile::read(&path).expect("read");
    file.version = 1;
    file.journal = None;
    let json = serde_json::to_string_pretty(&file).expect("json");
    assert!(!json.contains("journal"));
    fs::write(&path, json).expect("write");
    fs::remove_file(journal::path_for(&path)).expect("remove");
    let mut key = SoftKey::open(&args(dir.path()), None).expect("open");
    assert_eq!(key.store.next_sign_count(&[1; 32]).expect("count"), 2);
    let text = fs::read_to_string(&path).expect("state");
    assert!(text.contains("\"version\": 2") && text.contains("\"journal\""));
    assert_eq!(count_on_disk(&path), 2);
}
