//! The relay's cost, measured through the real binaries on loopback (issue 5's benchmark):
//!
//! 1. **getAssertion round trip** through `keyward-pair run --udp` → relay (WebSocket) →
//!    `keyward serve` (SQLite) → the user's key, against `keyward softkey --udp` directly: p50,
//!    p99 and the difference (the relay's added latency). One CTAP-HID host per target registers a
//!    non-discoverable credential, then N getAssertions run in alternating rounds of 100 so that a
//!    busy stretch of the machine affects both. A round trip runs from the first report sent to the
//!    last report of the answer; KEEPALIVE reports are skipped.
//! 2. **1,000 tools at once**: 1,000 device keys are registered, 1,000 pairing-tool relay
//!    connections (`keyward_pair::relay::RelayClient`, the tool's own client) log in to one
//!    `keyward serve`; the server's RSS before and after gives memory per connection; then every
//!    connection sends one relayed request (no key attached, so the server answers NOT_ALLOWED
//!    without touching the database) and all answers are counted.
//!
//! ```sh
//! cargo bench -p keyward-server --bench relay
//! ```
//!
//! The binaries are `KEYWARD_BIN` and `KEYWARD_PAIR_BIN` when set; otherwise the benchmark runs
//! `cargo build --release -p keyward -p keyward-pair` and uses those (in `CARGO_TARGET_DIR` or
//! `target/`). `KEYWARD_BENCH_OPS` sets N (default 1000), `KEYWARD_BENCH_TOOLS` the number of
//! tools (default 1000). Both servers fsync per operation (the softkey its state file, the server
//! its SQLite transaction), so the figures include each one's durability cost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_ctap::hid::cmd;
use keyward_pair::protocol::{ClientMessage, ServerMessage};
use keyward_pair::relay::{Backoff, RelayClient, RelayConfig, RelayEvent};
use keyward_pair::state::DeviceKey;
use keyward_testkit::{
    ChildGuard, UdpHost, drain, get_assertion_request, make_credential, spawn_softkey,
};
use serde_json::{Value as Json, json};

const RP_ID: &str = "bench.keyward.example";
const ROUND: usize = 100;
const WARMUP: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(keyward, keyward-pair)`: from the environment, or built in release mode now.
fn binaries() -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let from_env = |name: &str| {
        std::env::var_os(name).filter(|p| !p.is_empty()).map(|p| {
            let p = PathBuf::from(p);
            if p.is_relative() && !p.exists() {
                root.join(p)
            } else {
                p
            }
        })
    };
    if let (Some(k), Some(p)) = (from_env("KEYWARD_BIN"), from_env("KEYWARD_PAIR_BIN")) {
        return (k, p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building keyward and keyward-pair (release) for the benchmark…");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "keyward",
            "-p",
            "keyward-pair",
            "--bins",
        ])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build --release failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    (
        target.join("release/keyward"),
        target.join("release/keyward-pair"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `keyward serve` on a fresh data directory, with an organisation, an admin and an API token.
struct Server {
    _child: ChildGuard,
    pid: u32,
    base: String,
    token: String,
}

fn keyward_cli(bin: &Path, data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("KEYWARD_DATA_DIR", data)
        .env("KEYWARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("keyward cli");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("stdin");
    }
    let out = child.wait_with_output().expect("keyward cli");
    assert!(
        out.status.success(),
        "keyward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn start_server(bin: &Path, data: &Path) -> Server {
    keyward_cli(bin, data, &["org", "create", "Benchco"], None);
    keyward_cli(
        bin,
        data,
        &[
            "admin",
            "create",
            "--org",
            "Benchco",
            "--email",
            "admin@bench.test",
            "--role",
            "admin",
        ],
        Some("a long admin password\n"),
    );
    let token = keyward_cli(
        bin,
        data,
        &[
            "token",
            "create",
            "--email",
            "admin@bench.test",
            "--name",
            "bench",
        ],
        None,
    );
    let port = free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("KEYWARD_DATA_DIR", data)
        .env("KEYWARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYWARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyward serve");
    drain(child.stderr.take().expect("stderr"), |_| {});
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "keyward serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        _child: ChildGuard(child),
        pid,
        base,
        token,
    }
}

async fn api(
    http: &reqwest::Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Json>,
) -> Json {
    let mut req = http
        .request(method, format!("{}/api/v1{path}", s.base))
        .bearer_auth(&s.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API call");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Json::Null)
}

/// The server's resident set size in KiB (Linux /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `keyward-pair activate` then `run --udp`; returns it with its address.
fn spawn_user_tool(pair: &Path, home: &Path, server: &str, code: &str) -> (ChildGuard, SocketAddr) {
    let out = Command::new(pair)
        .arg("--home")
        .arg(home)
        .args(["activate", "--server", server, "--code", code])
        .output()
        .expect("keyward-pair activate");
    assert!(
        out.status.success(),
        "activate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(pair)
        .arg("--home")
        .arg(home)
        .args(["run", "--udp", "127.0.0.1:0"])
        .env("KEYWARD_PAIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyward-pair run");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    drain(child.stderr.take().expect("stderr"), move |line| {
        let _ = tx.send(line.to_owned());
    });
    let mut address = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(rest) = line.split("serving CTAP-HID on udp://").nth(1) {
            address = rest.split([',', ' ']).next().and_then(|a| a.parse().ok());
        }
        if address.is_some() && line.contains("key ") {
            break;
        }
    }
    let address = address.expect("keyward-pair run printed its address");
    // Wait for the key to be attached: a getInfo answers OK once it is.
    let host = UdpHost::connect(address, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, r) = host.call(cmd::CBOR, &[0x04]);
        if r.first() == Some(&0x00) {
            break;
        }
        assert!(Instant::now() < deadline, "the user's key never attached");
        std::thread::sleep(Duration::from_millis(50));
    }
    (ChildGuard(child), address)
}

fn round_trips(
    rt: &tokio::runtime::Runtime,
    keyward: &Path,
    pair: &Path,
    server: &Server,
    dir: &Path,
) {
    let ops = env_usize("KEYWARD_BENCH_OPS", 1000);
    let http = reqwest::Client::new();
    let code = rt.block_on(async {
        let user = api(
            &http,
            server,
            reqwest::Method::POST,
            "/users",
            Some(json!({"upn": "bench@bench.test"})),
        )
        .await;
        let id = user["id"].as_str().expect("user id").to_owned();
        api(
            &http,
            server,
            reqwest::Method::POST,
            &format!("/users/{id}/key"),
            None,
        )
        .await;
        let a = api(
            &http,
            server,
            reqwest::Method::POST,
            &format!("/users/{id}/activation"),
            None,
        )
        .await;
        a["code"].as_str().expect("code").to_owned()
    });
    let (_tool, tool_addr) = spawn_user_tool(pair, &dir.join("pair-home"), &server.base, &code);
    let (_softkey, soft_addr) = spawn_softkey(keyward, &dir.join("softkey.state"), Some("warn"));

    let targets = [
        ("keyward softkey --udp (direct)", soft_addr),
        ("keyward-pair --udp → relay → keyward serve", tool_addr),
    ];
    let hosts: Vec<(UdpHost, Vec<u8>)> = targets
        .iter()
        .map(|(_, addr)| {
            let host = UdpHost::connect(*addr, Duration::from_secs(10));
            let cred = make_credential(&host, RP_ID);
            let request = get_assertion_request(RP_ID, &cred);
            for _ in 0..WARMUP {
                host.ctap(&request);
            }
            (host, request)
        })
        .collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ops); hosts.len()];
    let mut done = 0;
    while done < ops {
        let n = ROUND.min(ops - done);
        for (i, (host, request)) in hosts.iter().enumerate() {
            for _ in 0..n {
                let start = Instant::now();
                host.ctap(request);
                samples[i].push(start.elapsed());
            }
        }
        done += n;
    }
    println!(
        "getAssertion round trip over UDP loopback, {ops} each, alternating rounds of {ROUND}:"
    );
    let mut p = Vec::new();
    for ((name, _), s) in targets.iter().zip(samples.iter_mut()) {
        s.sort();
        let (p50, p99) = (percentile(s, 0.50), percentile(s, 0.99));
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        println!(
            "  {name:<46} p50 {}  p99 {}  mean {}",
            ms(p50),
            ms(p99),
            ms(mean)
        );
        p.push((p50, p99));
    }
    let diff = |a: Duration, b: Duration| (b.as_secs_f64() - a.as_secs_f64()) * 1e3;
    println!(
        "  added by the relay path:                       p50 {:+.3} ms  p99 {:+.3} ms",
        diff(p[0].0, p[1].0),
        diff(p[0].1, p[1].1)
    );
}

async fn many_tools(server: &Server, tools: usize) {
    let http = reqwest::Client::new();
    // Register the device keys (one HTTP call each), a few at a time.
    let started = Instant::now();
    let mut devices = Vec::with_capacity(tools);
    for chunk in (0..tools).collect::<Vec<_>>().chunks(50) {
        let mut calls = Vec::new();
        for i in chunk {
            let (key, _) = DeviceKey::generate().expect("device key");
            let body = json!({"name": format!("bench tool {i}"), "public_key": URL_SAFE_NO_PAD.encode(key.public_key())});
            let http = http.clone();
            calls.push(async move {
                let resp = http
                    .post(format!("{}/api/v1/pair/devices", server.base))
                    .bearer_auth(&server.token)
                    .json(&body)
                    .send()
                    .await
                    .expect("register");
                assert!(resp.status().is_success(), "register: {}", resp.status());
                let v: Json = resp.json().await.expect("json");
                (v["device_id"].as_str().expect("id").to_owned(), key)
            });
        }
        devices.extend(futures::future::join_all(calls).await);
    }
    eprintln!(
        "registered {tools} device keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.pid);
    let ws = format!(
        "ws://{}/api/v1/relay",
        server.base.trim_start_matches("http://")
    );
    let started = Instant::now();
    let mut clients = Vec::with_capacity(tools);
    for (device_id, key) in devices {
        let (client, events) = RelayClient::spawn(RelayConfig {
            url: ws.clone(),
            device_id,
            key: Arc::new(key),
            cert_pin: None,
            backoff: Backoff::default(),
        });
        clients.push((client, events));
    }
    let mut connected = 0;
    for (_, events) in clients.iter_mut() {
        if let Ok(Some(RelayEvent::Connected { .. })) =
            tokio::time::timeout(Duration::from_secs(60), events.recv()).await
        {
            connected += 1;
        }
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(server.pid);
    println!(
        "{tools} pairing tools connected at once: {connected} logged in (challenge–response) in {:.2} s",
        connect_time.as_secs_f64()
    );
    println!(
        "  keyward serve RSS {} KiB → {} KiB: {:.1} KiB per connection",
        before,
        after,
        (after.saturating_sub(before)) as f64 / tools as f64
    );

    let started = Instant::now();
    for (i, (client, _)) in clients.iter().enumerate() {
        client.send(ClientMessage::Ctap {
            id: i as u64,
            payload: vec![0x04],
            user_present: false,
            key_id: None,
        });
    }
    let mut answered = 0;
    for (i, (_, events)) in clients.iter_mut().enumerate() {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(RelayEvent::Message(ServerMessage::CtapResult { id, .. })))
                    if id == i as u64 =>
                {
                    answered += 1;
                    break;
                }
                Ok(Some(RelayEvent::Message(_))) => continue,
                _ => break,
            }
        }
    }
    println!(
        "  relayed ping (one request through the server on every connection): {answered}/{tools} answered in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(answered, tools, "every connection answers");
}

fn main() {
    let (keyward, pair) = binaries();
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let server = start_server(&keyward, &dir.path().join("server"));
    round_trips(&rt, &keyward, &pair, &server, dir.path());
    drop(server);
    // A fresh server for the connection count, so the round trips' state does not count.
    let server = start_server(&keyward, &dir.path().join("server-many"));
    let tools = env_usize("KEYWARD_BENCH_TOOLS", 1000);
    rt.block_on(many_tools(&server, tools));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
}
