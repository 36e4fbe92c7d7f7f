//! Provisioning and import throughput against the Graph simulator.
//!
//! `cargo bench -p keyward-server --bench provisioning` — prints:
//! - provisioning N users (default 10,000; `KEYWARD_BENCH_USERS`) with 20 ms latency per Graph call
//!   and the simulator's real write throttle (3,000 writes per 150 s): wall time against the
//!   minimum the throttle allows, Keyward's CPU ms per user, peak memory;
//! - importing M users (default 100,000; `KEYWARD_BENCH_IMPORT`): wall time and peak memory.
//!
//! The simulator runs on its own OS thread (a single-threaded runtime) so its CPU time — it
//! verifies every attestation — can be subtracted from the process's; CPU figures come from the
//! kernel's per-process and per-thread accounting (`/proc/self/stat`, the numbers getrusage
//! reports). `KEYWARD_BENCH_WRITE_WINDOW_S` and `KEYWARD_BENCH_WRITE_LIMIT` scale the throttle
//! down for quick runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_graph_sim::SimConfig;
use keyward_server::directories::{DirectoryDeps, ImportKind};
use keyward_server::jobs::{JobRunner, RunnerConfig};
use keyward_server::keyops::KeyOps;
use keyward_server::provisioning::{PROVISION_KIND, ProvisionDeps, ProvisionKind};
use keyward_store::{DirectoryRecord, NewDirectory, Store, UserFilter};
use keyward_vault::{KekSource, Vault};
use serde_json::json;
use uuid::Uuid;

/// User + system CPU seconds of a /proc stat file (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_secs(path: &str) -> f64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Serves a simulator on a dedicated thread; returns its URL, control and /proc stat path.
fn spawn_sim(cfg: SimConfig) -> (String, keyward_graph_sim::SimControl, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tid = std::fs::read_link("/proc/thread-self")
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let sim = keyward_graph_sim::spawn(cfg).await.expect("sim");
            tx.send((sim.url(), sim.control.clone(), format!("{tid}/stat")))
                .expect("send");
            std::future::pending::<()>().await;
        });
    });
    let (url, control, tid) = rx.recv().expect("sim started");
    let stat = if tid.starts_with("/proc") {
        tid
    } else {
        format!("/proc/{tid}")
    };
    (url, control, stat)
}

async fn setup(
    store: &Store,
    vault: &Vault,
    url: &str,
    control: &keyward_graph_sim::SimControl,
) -> (Uuid, Uuid) {
    let mut tx = store.begin().await.expect("begin");
    let org = tx
        .insert_organisation(&format!("bench-{}", Uuid::new_v4()))
        .await
        .expect("org");
    let cfg = control.simulator().config().clone();
    let id = Uuid::now_v7();
    let sealed = vault
        .seal_secret(
            &DirectoryRecord::secret_context(org.id, id),
            cfg.client_secret.as_bytes(),
        )
        .expect("seal");
    tx.insert_directory(
        org.id,
        &NewDirectory {
            id,
            name: "bench".into(),
            tenant_id: cfg.tenant_id.clone(),
            client_id: cfg.client_id.clone(),
            sealed_client_secret: sealed,
            authority_url: url.into(),
            graph_url: url.into(),
            group_id: None,
            consenting_upn: Some(cfg.consenting_admin.clone()),
        },
    )
    .await
    .expect("directory");
    tx.commit().await.expect("commit");
    (org.id, id)
}

async fn run_job(
    store: &Store,
    org: Uuid,
    kind: &str,
    params: serde_json::Value,
    users: &[Uuid],
) -> keyward_store::JobRecord {
    let mut tx = store.begin().await.expect("begin");
    let job = tx
        .insert_job(org, kind, &params, "admin:bench", users)
        .await
        .expect("job");
    tx.commit().await.expect("commit");
    loop {
        let j = store.job(org, job.id).await.expect("job").expect("exists");
        if matches!(j.state.as_str(), "done" | "failed" | "cancelled") {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runner(
    store: &Store,
    vault: &Arc<Vault>,
    keyops: Arc<KeyOps>,
    per_bucket: usize,
) -> tokio::task::JoinHandle<()> {
    let cfg = RunnerConfig {
        poll: Duration::from_millis(50),
        per_bucket,
        single_process: true,
        ..RunnerConfig::default()
    };
    let mut r = JobRunner::new(store.clone(), cfg);
    r.register(Arc::new(ImportKind::new(DirectoryDeps {
        store: store.clone(),
        vault: vault.clone(),
    })));
    r.register(Arc::new(ProvisionKind::new(ProvisionDeps {
        store: store.clone(),
        vault: vault.clone(),
        keyops,
        aaguid: keyward_server::serve::KEYWARD_AAGUID,
    })));
    Arc::new(r).spawn(std::future::pending())
}

#[tokio::main]
async fn main() {
    let n = env_usize("KEYWARD_BENCH_USERS", 10_000);
    let m = env_usize("KEYWARD_BENCH_IMPORT", 100_000);
    let window = Duration::from_secs(env_usize("KEYWARD_BENCH_WRITE_WINDOW_S", 150) as u64);
    let per_bucket = env_usize("KEYWARD_BENCH_CONCURRENCY", 32);
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ))
    .await
    .expect("db");
    let vault =
        Arc::new(Vault::open(KekSource::KeyFile(dir.path().join("vault.key"))).expect("vault"));
    let keyops = Arc::new(KeyOps::new(
        store.clone(),
        vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    ));
    let _runner = runner(&store, &vault, keyops, per_bucket);

    // Provisioning.
    let sim_cfg = SimConfig {
        users: n + 1,
        latency: Duration::from_millis(20),
        write_window: window,
        write_limit: env_usize("KEYWARD_BENCH_WRITE_LIMIT", 3000) as u32,
        ..SimConfig::default()
    };
    let write_limit = sim_cfg.write_limit as usize;
    let (url, control, sim_stat) = spawn_sim(sim_cfg);
    let (org, dir_id) = setup(&store, &vault, &url, &control).await;
    let j = run_job(&store, org, "import", json!({"directory_id": dir_id}), &[]).await;
    assert_eq!(j.state, "done", "{:?}", j.error);
    let admin = control.simulator().config().consenting_admin.clone();
    let users: Vec<Uuid> = store
        .list_users(
            org,
            &UserFilter {
                limit: 1_000_000,
                ..Default::default()
            },
        )
        .await
        .expect("users")
        .into_iter()
        .filter(|u| u.upn != admin && u.status != "disabled")
        .map(|u| u.id)
        .collect();
    let count = users.len();
    let (cpu0, sim0) = (cpu_secs("/proc/self/stat"), cpu_secs(&sim_stat));
    let t0 = Instant::now();
    let params = json!({"rp": "microsoft", "mode": "automated", "directory_id": dir_id, "assign_missing_keys": true});
    let j = run_job(&store, org, PROVISION_KIND, params, &users).await;
    let wall = t0.elapsed();
    let (cpu1, sim1) = (cpu_secs("/proc/self/stat"), cpu_secs(&sim_stat));
    let keyward_cpu = (cpu1 - cpu0) - (sim1 - sim0);
    // Sliding window: write k (0-based) cannot happen before floor(k / limit) windows have passed.
    let min = window.mul_f64(((count.max(1) - 1) / write_limit) as f64);
    println!(
        "provisioning: {count} users, state {}, done {}, failed {}",
        j.state, j.done, j.failed
    );
    println!(
        "  wall {:.1} s; throttle minimum {:.1} s; ratio {:.2}x (goal <= 1.1x)",
        wall.as_secs_f64(),
        min.as_secs_f64(),
        if min.is_zero() {
            0.0
        } else {
            wall.as_secs_f64() / min.as_secs_f64()
        }
    );
    println!(
        "  Keyward CPU {:.0} ms total, {:.2} ms per user (goal <= 2); simulator CPU {:.0} ms",
        keyward_cpu * 1000.0,
        keyward_cpu * 1000.0 / count.max(1) as f64,
        (sim1 - sim0) * 1000.0
    );
    println!(
        "  peak RSS so far {:.0} MiB (process, simulator included)",
        peak_rss_mib()
    );

    // Import.
    let (url, control, _) = spawn_sim(SimConfig {
        users: m,
        ..SimConfig::default()
    });
    let (org, dir_id) = setup(&store, &vault, &url, &control).await;
    let t0 = Instant::now();
    let j = run_job(&store, org, "import", json!({"directory_id": dir_id}), &[]).await;
    println!(
        "import: {m} users, state {}, wall {:.1} s, result {}",
        j.state,
        t0.elapsed().as_secs_f64(),
        j.result.unwrap_or_default()
    );
    println!(
        "  peak RSS {:.0} MiB (process, both simulators included)",
        peak_rss_mib()
    );
}
