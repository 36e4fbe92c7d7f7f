//! Boots the real `keyward` binary on a free port with a temporary data directory, the way an
//! operator would: bootstrap CLI, `keyward serve`, `/healthz`, an API call with the printed token,
//! graceful SIGTERM, and `keyward audit verify` catching a tampered entry.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `keyward` binary next to this test's target directory, built on first use.
fn keyward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("keyward");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "keyward", "--bin", "keyward"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the keyward binary failed");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn cli(bin: &Path, data: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(bin)
        .args(args)
        .env("KEYWARD_DATA_DIR", data)
        .env_remove("KEYWARD_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, data: &Path, listen: &str) -> (Server, String) {
    let mut child = Command::new(bin)
        .arg("serve")
        .env("KEYWARD_DATA_DIR", data)
        .env("KEYWARD_LISTEN", listen)
        .env_remove("KEYWARD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    (Server(child), line.trim().to_owned())
}

#[tokio::test]
async fn the_binary_serves_bootstraps_and_verifies_its_audit_log() {
    let bin = keyward_bin();
    let data = tempfile::tempdir().expect("tmp");
    let d = data.path();

    let out = cli(&bin, d, &["org", "create", "Acme"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let org_id = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        uuid::Uuid::parse_str(org_id.trim()).is_ok(),
        "org create prints the id: {org_id:?}"
    );
    let out = cli(
        &bin,
        d,
        &[
            "admin",
            "create",
            "--org",
            "Acme",
            "--email",
            "o@acme.test",
            "--role",
            "owner",
        ],
        Some("a long enough password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &bin,
        d,
        &[
            "admin",
            "create",
            "--org",
            "Acme",
            "--email",
            "x@acme.test",
            "--role",
            "root",
        ],
        Some("a long enough password\n"),
    );
    assert!(!out.status.success(), "unknown roles are refused");
    let out = cli(
        &bin,
        d,
        &["token", "create", "--email", "o@acme.test", "--name", "ci"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(
        stdout.lines().count(),
        1,
        "token create prints only the token"
    );
    let token = stdout.trim().to_owned();

    let port = free_port();
    let (mut server, line) = serve(&bin, d, &format!("127.0.0.1:{port}"));
    assert_eq!(
        line,
        format!("keyward listening on http://127.0.0.1:{port}")
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let r = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"upn": "u@acme.test"}))
        .send()
        .await
        .expect("create user");
    assert_eq!(r.status(), 201);
    let r = http
        .get(format!("{base}/api/v1/users"))
        .bearer_auth("kwt_wrong")
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 401);

    // SIGTERM: the server drains and exits cleanly.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let out = cli(&bin, d, &["audit", "verify"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", d.join("keyward.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("db");
        sqlx::query("UPDATE audit_log SET detail = '{\"upn\":\"evil@acme.test\"}' WHERE seq = 4")
            .execute(&mut c)
            .await
            .expect("tamper");
    }
    let out = cli(&bin, d, &["audit", "verify"], None);
    assert!(
        !out.status.success(),
        "a tampered audit log must fail verification"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("seq 4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn non_loopback_listening_uses_tls() {
    let bin = keyward_bin();
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let (_server, line) = serve(&bin, data.path(), &format!("0.0.0.0:{port}"));
    assert_eq!(line, format!("keyward listening on https://0.0.0.0:{port}"));
    assert!(
        data.path().join("self-signed.crt").exists(),
        "the generated certificate is left for pinning"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
}
