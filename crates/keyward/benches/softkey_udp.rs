//! getAssertion and PING round trips over UDP loopback against the real `keyward softkey` binary.
//!
//! The benchmark spawns `keyward softkey --udp 127.0.0.1:0 --attestation none` on a fresh state file
//! (key file beside it, `KEYWARD_SOFTKEY_PASSPHRASE` unset), acts as a CTAP-HID host over one UDP
//! socket (64-byte reports), registers one non-discoverable ES256 credential, then times N
//! sequential getAssertion calls with that credential in the allowList, each sent as soon as the
//! previous answer is in (the goal's line), N PINGs of 8 bytes as the transport-only floor, and N
//! in-place 64-byte writes with `fdatasync` into a preallocated file in the state's directory, the
//! disk's floor for one durable counter. The three take turns in rounds of 100 so that a busy
//! stretch of the machine affects all of them. Then, on their own, N more getAssertion calls, each
//! 1 ms after the previous answer, as one person's sign-ins come. A round trip runs from the first
//! report sent to the last report of the answer received and reassembled (the pause is not
//! counted); KEEPALIVE reports are skipped.
//!
//! ```sh
//! KEYWARD_BIN=target/release/keyward cargo bench -p keyward --bench softkey_udp
//! ```
//!
//! `KEYWARD_BIN` names the binary (default: the one cargo built for this bench);
//! `KEYWARD_BENCH_OPS` sets N (default 2000). The softkey's own log level follows `RUST_LOG`
//! (default `info`, which logs one line per presence check).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyward_ctap::hid::cmd;
use keyward_testkit::{UdpHost, get_assertion_request, make_credential, sign_count, spawn_softkey};

const RP_ID: &str = "bench.keyward.example";
const DEFAULT_OPS: usize = 2000;
const WARMUP: usize = 20;
/// The pause before each call of the spaced getAssertion line, as between one person's sign-ins.
const SPACED: Duration = Duration::from_millis(1);

/// `KEYWARD_BIN`, else the binary cargo built for this bench. A relative `KEYWARD_BIN` that does
/// not exist from the current directory (cargo runs benches in the package directory) is taken
/// from the workspace root.
fn keyward_bin() -> PathBuf {
    let Some(bin) = std::env::var_os("KEYWARD_BIN").filter(|p| !p.is_empty()) else {
        return PathBuf::from(env!("CARGO_BIN_EXE_keyward"));
    };
    let bin = PathBuf::from(bin);
    if bin.is_relative() && !bin.exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let joined = root.join(&bin);
        return std::fs::canonicalize(&joined).unwrap_or(joined);
    }
    bin
}

struct Stats {
    ops: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    ops_per_s: f64,
}

fn stats(mut samples: Vec<Duration>, wall: Duration) -> Stats {
    samples.sort_unstable();
    let ops = samples.len();
    let rank = |p: usize| samples[(ops * p).div_ceil(100).max(1) - 1];
    let total: Duration = samples.iter().sum();
    Stats {
        ops,
        p50: rank(50),
        p99: rank(99),
        mean: total / u32::try_from(ops).expect("ops fit in u32"),
        ops_per_s: ops as f64 / wall.as_secs_f64(),
    }
}

/// Calls made of each operation per round; the operations take turns round by round.
const ROUND: usize = 100;

/// Runs each of `operations` `ops` times after `WARMUP` untimed calls, taking turns in rounds of
/// [`ROUND`] calls, so that all of them see the same machine: a busy disk or CPU in one stretch
/// of time slows every line, not just the one measured then. Returns per-operation statistics
/// (the rate is over the time spent in that operation's own calls). Each operation comes with a
/// pause taken before each of its calls, outside the time measured.
fn measure_interleaved(ops: usize, operations: &mut [(&mut dyn FnMut(), Duration)]) -> Vec<Stats> {
    for (op, _) in operations.iter_mut() {
        for _ in 0..WARMUP {
            op();
        }
    }
    let mut samples: Vec<Vec<Duration>> =
        operations.iter().map(|_| Vec::with_capacity(ops)).collect();
    let mut done = 0;
    while done < ops {
        let n = ROUND.min(ops - done);
        for ((op, pause), samples) in operations.iter_mut().zip(&mut samples) {
            for _ in 0..n {
                if !pause.is_zero() {
                    std::thread::sleep(*pause);
                }
                let t = Instant::now();
                op();
                samples.push(t.elapsed());
            }
        }
        done += n;
    }
    samples
        .into_iter()
        .map(|s| {
            let busy = s.iter().sum();
            stats(s, busy)
        })
        .collect()
}

/// A 64-byte write in place into a preallocated (zero-filled, synced) file followed by
/// `fdatasync`, as the softkey's journal does per counter: the durable-write floor of the disk
/// under the state directory. Returns the operation; the file is removed with the directory.
fn fdatasync_probe(dir: &std::path::Path, ops: usize) -> impl FnMut() {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    let mut file = std::fs::File::create(dir.join("fdatasync-probe")).expect("probe file");
    let record = [0x5Au8; 64];
    file.write_all(&vec![0u8; 64 * (ops + WARMUP)])
        .expect("preallocate");
    file.sync_all().expect("sync");
    let mut offset = 0u64;
    move || {
        file.write_all_at(&record, offset).expect("write");
        file.sync_data().expect("fdatasync");
        offset += 64;
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments, as a harness-less bench may.
    let ops = std::env::var("KEYWARD_BENCH_OPS")
        .ok()
        .map(|v| v.parse::<usize>().expect("KEYWARD_BENCH_OPS is a number"))
        .unwrap_or(DEFAULT_OPS)
        .max(1);
    let bin = keyward_bin();
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("state");
    let (child, address) = spawn_softkey(&bin, &state, None);
    let host = UdpHost::connect(address, Duration::from_secs(5));

    let credential_id = make_credential(&host, RP_ID);
    let request = get_assertion_request(RP_ID, &credential_id);

    let assertion_call = || {
        let (host, request) = (&host, &request);
        let mut last_count = 0u32;
        move || {
            let (command, response) = host.call(cmd::CBOR, request);
            assert_eq!(command, cmd::CBOR, "CBOR answer");
            let count = sign_count(&response);
            assert!(count > last_count, "sign counter increases");
            last_count = count;
        }
    };
    let mut assertion = assertion_call();
    let mut spaced_assertion = assertion_call();
    let ping_payload = [0xA5u8; 8];
    let mut ping = || {
        let (command, response) = host.call(cmd::PING, &ping_payload);
        assert_eq!(command, cmd::PING, "PING answer");
        assert_eq!(response, ping_payload, "PING echoed");
    };
    let mut disk = fdatasync_probe(dir.path(), ops);
    let results = measure_interleaved(
        ops,
        &mut [
            (&mut assertion, Duration::ZERO),
            (&mut ping, Duration::ZERO),
            (&mut disk, Duration::ZERO),
        ],
    );
    // Apart from the others: a machine idle for a millisecond at a time answers its next
    // interrupts more slowly (a virtual CPU that halts is woken later), which would slow the
    // back-to-back lines measured in turn with it.
    let spaced = measure_interleaved(ops, &mut [(&mut spaced_assertion, SPACED)]);
    let (assertion, ping, disk, spaced) = (&results[0], &results[1], &results[2], &spaced[0]);

    drop(host);
    drop(child);

    println!();
    println!("keyward softkey over UDP loopback ({})", bin.display());
    println!(
        "sequential round trips, one host socket, {WARMUP} untimed warm-up calls each, the first \
         three lines taking turns in rounds of {ROUND}, the spaced line measured after them; \
         request sent -> answer reassembled"
    );
    println!();
    println!(
        "{:<34} {:>7} {:>11} {:>11} {:>11} {:>10}",
        "operation", "ops", "p50", "p99", "mean", "ops/s"
    );
    for (name, s) in [
        ("getAssertion (ES256, allowList)", assertion),
        ("PING 8 bytes (transport floor)", ping),
        ("64-byte write + fdatasync (disk)", disk),
        ("getAssertion, 1 ms after the last", spaced),
    ] {
        println!(
            "{:<34} {:>7} {:>11} {:>11} {:>11} {:>10.0}",
            name,
            s.ops,
            micros(s.p50),
            micros(s.p99),
            micros(s.mean),
            s.ops_per_s
        );
    }
    println!();
    println!(
        "each getAssertion's counter is on disk before its answer leaves: the key writes the \
         credential's next counter into its preallocated journal (one record in place, \
         fdatasync) once the answer has left, starting the write just before the answer when the \
         host came back at once last time; a call made straight after the previous answer waits \
         for what is left of that write, one made 1 ms later finds its counter on disk already; \
         the disk line times one such write and fdatasync in the same directory"
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average at the end: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let goal = Duration::from_micros(150);
    println!(
        "goal: getAssertion p50 <= 150 µs -> {} (p50 {})",
        if assertion.p50 <= goal {
            "met"
        } else {
            "NOT met"
        },
        micros(assertion.p50)
    );
}
