//! kill -9 of the real `keyward serve` in the middle of a 200-user provisioning job: after a
//! restart the job resumes and ends with exactly one Keyward passkey per user in Entra (the
//! simulator) and exactly one credential per user in Keyward — none twice, none orphaned.
//!
//! The binary is `KEYWARD_BIN`, or target/<profile>/keyward (built on first use).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_graph_sim::SimConfig;
use serde_json::{Value, json};

fn keyward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("keyward");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "keyward", "--bin", "keyward"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the keyward binary failed");
    bin
}

/// Points a `keyward` command at the test's database: the data dir's SQLite file, or PostgreSQL.
fn database(cmd: &mut Command, db: Option<&str>) {
    match db {
        Some(url) => cmd.env("KEYWARD_DATABASE_URL", url),
        None => cmd.env_remove("KEYWARD_DATABASE_URL"),
    };
}

fn cli(bin: &Path, data: &Path, db: Option<&str>, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(bin);
    database(&mut cmd, db);
    let mut child = cmd
        .args(args)
        .env("KEYWARD_DATA_DIR", data)
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
            .expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "keyward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, data: &Path, db: Option<&str>, port: u16) -> (Server, String) {
    let mut cmd = Command::new(bin);
    database(&mut cmd, db);
    if db.is_some() {
        // PostgreSQL may be shared by several servers, so a restarted one waits for the killed
        // one's job lease to lapse before resuming: a short lease keeps the test quick.
        cmd.env("KEYWARD_JOB_LEASE_SECS", "3");
    }
    let mut child = cmd
        .arg("serve")
        .env("KEYWARD_DATA_DIR", data)
        .env("KEYWARD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let url = line.trim().rsplit(' ').next().expect("url").to_owned();
    (Server(child), url)
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/jobs/{id}?limit=10000"),
            None,
        )
        .await
        .1
    }

    async fn wait(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.job(id).await;
            if matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled")) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job did not finish: {} of {}",
                j["done"],
                j["total"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_provisioning_leaves_exactly_one_passkey_per_user_on_both_sides() {
    kill_9_on(None).await;
}

/// The same crash test with the server on PostgreSQL (skipped loudly without
/// `KEYWARD_TEST_POSTGRES_URL`, a failure under CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_provisioning_on_postgresql() {
    if let Some(db) = keyward_store::testing::postgres().await {
        // The test's pool is closed first: the servers are the database's only users.
        db.store.close().await;
        kill_9_on(Some(&db.url)).await;
    }
}

async fn kill_9_on(db: Option<&str>) {
    let bin = keyward_bin();
    // Latency per Graph call stretches the job so the kills land mid-item.
    let sim = keyward_graph_sim::spawn(SimConfig {
        users: 201,
        latency: Duration::from_millis(15),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data = tempfile::tempdir().expect("tmp");
    let d = data.path();
    cli(&bin, d, db, &["org", "create", "Contoso"], None);
    cli(
        &bin,
        d,
        db,
        &[
            "admin",
            "create",
            "--org",
            "Contoso",
            "--email",
            "o@contoso.test",
            "--role",
            "owner",
        ],
        Some("a long enough password\n"),
    );
    let token = cli(
        &bin,
        d,
        db,
        &[
            "token",
            "create",
            "--email",
            "o@contoso.test",
            "--name",
            "crash",
        ],
        None,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();

    let (mut server, base) = serve(&bin, d, db, port);
    let api = Api {
        http: reqwest::Client::new(),
        base,
        token,
    };
    let cfg = sim.control.simulator().config().clone();
    let (s, dir) = api
        .call(reqwest::Method::POST, "/directories/entra", Some(json!({
            "name": "Contoso", "tenant_id": cfg.tenant_id, "client_id": cfg.client_id, "client_secret": cfg.client_secret,
            "authority_url": sim.url(), "graph_url": sim.url(),
        })))
        .await;
    assert_eq!(s, 201, "{dir}");
    let dir = dir["id"].as_str().expect("dir").to_owned();
    let (s, j) = api
        .call(
            reqwest::Method::POST,
            &format!("/directories/{dir}/import"),
            None,
        )
        .await;
    assert_eq!(s, 202);
    let imported = api.wait(j["job_id"].as_str().expect("job"), 60).await;
    assert_eq!(imported["state"], "done", "{imported}");

    // The 200 users that are not the consenting admin.
    let mut users = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (_, page) = api
            .call(reqwest::Method::GET, &format!("/users?limit=200{q}"), None)
            .await;
        for u in page["items"].as_array().expect("items") {
            if u["upn"] != cfg.consenting_admin.as_str() && u["status"] != "disabled" {
                users.push((
                    u["id"].as_str().expect("id").to_owned(),
                    u["upn"].as_str().expect("upn").to_owned(),
                ));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids: Vec<&str> = users.iter().map(|(id, _)| id.as_str()).collect();
    let (s, j) = api
        .call(reqwest::Method::POST, "/provisioning", Some(json!({
            "rp": "microsoft", "mode": "automated", "user_ids": ids, "assign_missing_keys": true,
        })))
        .await;
    assert_eq!(s, 202, "{j}");
    let job = j["job_id"].as_str().expect("job").to_owned();

    // Kill -9 twice, at different points of the run, restarting in between.
    for threshold in [users.len() / 5, users.len() / 2] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = api.job(&job).await;
            if j["done"].as_u64().unwrap_or(0) as usize >= threshold {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.0.kill().expect("kill -9"); // SIGKILL on Unix
        let _ = server.0.wait();
        let (s2, _) = serve(&bin, d, db, port);
        server = s2;
    }
    let j = api.wait(&job, 180).await;
    let not_done: Vec<&Value> = j["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["state"] != "done")
        .collect();
    assert!(not_done.is_empty(), "{not_done:?}");
    assert_eq!(j["state"], "done");

    for (id, upn) in &users {
        let methods = sim.control.passkeys(upn);
        assert_eq!(
            methods.len(),
            1,
            "exactly one passkey in Entra for {upn}: {methods:?}"
        );
        let (_, creds) = api
            .call(
                reqwest::Method::GET,
                &format!("/users/{id}/credentials"),
                None,
            )
            .await;
        let creds = creds["items"].as_array().expect("credentials");
        assert_eq!(
            creds.len(),
            1,
            "exactly one local credential for {upn}: {creds:?}"
        );
    }
    drop(server);
}
