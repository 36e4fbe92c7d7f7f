//! Provisioning and import throughput against the Graph simulator.
//!
//! `cargo bench -p keyward-server --bench provisioning` — prints:
//! - provisioning N users (default 10,000; `KEYWARD_BENCH_USERS`) with 20 ms latency per Graph call
//!   and the simulator's real write throttle (3,000 writes per 150 s): wall time against the
//!   minimum the throttle allows, Keyward's CPU ms per user, Keyward's peak memory;
//! - importing M users (default 100,000; `KEYWARD_BENCH_IMPORT`), and a tenth of that first:
//!   wall time and peak memory of each, to show memory does not grow with the number of users.
//!
//! The simulator runs in a child process (this executable started again with
//! `KEYWARD_BENCH_SIM_CHILD` set), so the bench process is Keyward alone: its CPU time (user +
//! system, from `/proc/self/stat`, what getrusage reports) and peak RSS (`VmHWM`, reset before each
//! phase through `/proc/self/clear_refs`) are Keyward's, with the simulator's CPU printed apart.
//! `KEYWARD_BENCH_WRITE_WINDOW_S` and `KEYWARD_BENCH_WRITE_LIMIT` scale the throttle down for
//! quick runs (e.g. `KEYWARD_BENCH_USERS=1000 KEYWARD_BENCH_IMPORT=10000`);
//! `KEYWARD_BENCH_CONCURRENCY` sets the items in flight per tenant (default 32).
//!
//! Per provisioned user it also prints the context switches of Keyward's threads (voluntary and
//! not, summed over `/proc/self/task/*/status`: threads that ended during the run are missing, so
//! the figure is a floor). `KEYWARD_BENCH_COUNT_SQL=1` counts the SQL statements sqlx runs
//! (transaction BEGIN/COMMIT are not logged by sqlx, so not counted); logging every statement
//! costs CPU, so the CPU figure of such a run is inflated.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Peak resident memory of this process since start or the last [`reset_peak_rss`].
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `RssAnon` and `RssFile` of this process now, in MiB.
fn rss_split_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// Samples [`rss_split_mib`] every 20 ms on a thread of its own and keeps each peak: anonymous
/// memory (heap, stacks, SQLite's page caches) apart from file-backed pages (the database file
/// that SQLite maps, which the kernel can drop at any time).
struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(f64, f64)>,
}

impl MemorySampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = (0.0f64, 0.0f64);
            loop {
                let (anon, file) = rss_split_mib();
                peak = (peak.0.max(anon), peak.1.max(file));
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        MemorySampler { stop, thread }
    }

    /// The peaks (anonymous, file-backed) in MiB.
    fn stop(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Resets `VmHWM` to the current RSS (Linux: writing 5 to clear_refs); false if refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Voluntary and involuntary context switches of this process's live threads.
fn context_switches() -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("voluntary_ctxt_switches:") {
                total.0 += value(line);
            } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                total.1 += value(line);
            }
        }
    }
    total
}

/// Counts the statements sqlx logs (target `sqlx::query`), when `KEYWARD_BENCH_COUNT_SQL` is set.
static SQL_STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct SqlCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlCounter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() == "sqlx::query" {
            SQL_STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn sql_statements() -> u64 {
    SQL_STATEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const CHILD_ENV: &str = "KEYWARD_BENCH_SIM_CHILD";

/// The simulator's settings travel to the child as `users,latency_ms,window_s,limit`.
fn sim_config(users: usize, latency_ms: u64, window_s: u64, limit: u32) -> SimConfig {
    SimConfig {
        users,
        latency: Duration::from_millis(latency_ms),
        write_window: Duration::from_secs(window_s),
        write_limit: limit,
        ..SimConfig::default()
    }
}

/// The child: serves a simulator, prints its URL, and exits when the parent closes stdin.
fn sim_child(spec: &str) {
    let v: Vec<u64> = spec.split(',').filter_map(|x| x.parse().ok()).collect();
    assert_eq!(v.len(), 4, "{CHILD_ENV}={spec}");
    let cfg = sim_config(
        usize::try_from(v[0]).expect("users"),
        v[1],
        v[2],
        u32::try_from(v[3]).expect("limit"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sim = keyward_graph_sim::spawn(cfg).await.expect("sim");
        println!("{}", sim.url());
        // Parent gone (or done with us): stdin reaches EOF.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .ok();
        drop(sim);
    });
}

/// A simulator in a child process; killed on drop.
struct SimProcess {
    child: Child,
    url: String,
    config: SimConfig,
}

impl SimProcess {
    fn start(users: usize, latency_ms: u64, window_s: u64, limit: u32) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .env(
                CHILD_ENV,
                format!("{users},{latency_ms},{window_s},{limit}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the simulator process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("simulator URL");
        SimProcess {
            child,
            url: line.trim().to_owned(),
            config: sim_config(users, latency_ms, window_s, limit),
        }
    }

    fn stat(&self) -> String {
        format!("/proc/{}/stat", self.child.id())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup(store: &Store, vault: &Vault, sim: &SimProcess) -> (Uuid, Uuid) {
    let (url, cfg) = (&sim.url, &sim.config);
    let mut tx = store.begin().await.expect("begin");
    let org = tx
        .insert_organisation(&format!("bench-{}", Uuid::new_v4()))
        .await
        .expect("org");
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
        // Slow enough not to weigh on the CPU figure (an admin's browser polls less often).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn runner(
    store: &Store,
    vault: &Arc<Vault>,
    keyops: Arc<KeyOps>,
    per_bucket: usize,
) -> tokio::task::JoinHandle<()> {
    let cfg = RunnerConfig {
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

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        sim_child(&spec);
        return;
    }
    // RUST_LOG=sqlx::query=debug (say) shows what the runner does per item.
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, Layer};
        let log = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(EnvFilter::from_default_env())
        });
        let count = std::env::var_os("KEYWARD_BENCH_COUNT_SQL")
            .is_some()
            .then(|| {
                SqlCounter.with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("sqlx::query", tracing::Level::TRACE),
                )
            });
        if log.is_some() || count.is_some() {
            tracing_subscriber::registry().with(log).with(count).init();
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

async fn import_once(store: &Store, vault: &Vault, users: usize) {
    let sim = SimProcess::start(users, 0, 150, 3000);
    let (org, dir_id) = setup(store, vault, &sim).await;
    let reset = reset_peak_rss();
    let sampler = MemorySampler::start();
    let (cpu0, t0) = (cpu_secs("/proc/self/stat"), Instant::now());
    let j = run_job(store, org, "import", json!({"directory_id": dir_id}), &[]).await;
    let (wall, cpu) = (t0.elapsed(), cpu_secs("/proc/self/stat") - cpu0);
    let (anon, file) = sampler.stop();
    println!(
        "import: {users} users, state {}, wall {:.1} s, Keyward CPU {:.0} ms ({:.3} ms per user), result {}",
        j.state,
        wall.as_secs_f64(),
        cpu * 1000.0,
        cpu * 1000.0 / users.max(1) as f64,
        j.result.unwrap_or_default()
    );
    println!(
        "  Keyward peak RSS {:.0} MiB {}; sampled peaks: anonymous {anon:.0} MiB (heap, stacks, \
         SQLite page caches of at most 16 MiB per connection), file-backed {file:.0} MiB (the \
         database file SQLite maps)",
        peak_rss_mib(),
        if reset {
            "during this import"
        } else {
            "since start (the peak could not be reset)"
        }
    );
}

async fn bench() {
    let n = env_usize("KEYWARD_BENCH_USERS", 10_000);
    let m = env_usize("KEYWARD_BENCH_IMPORT", 100_000);
    let window_s = env_usize("KEYWARD_BENCH_WRITE_WINDOW_S", 150) as u64;
    let window = Duration::from_secs(window_s);
    let write_limit = env_usize("KEYWARD_BENCH_WRITE_LIMIT", 3000);
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
    let _runner = runner(&store, &vault, keyops.clone(), per_bucket);

    // Provisioning.
    let sim = SimProcess::start(
        n + 1,
        20,
        window_s,
        u32::try_from(write_limit).expect("limit"),
    );
    let (org, dir_id) = setup(&store, &vault, &sim).await;
    let j = run_job(&store, org, "import", json!({"directory_id": dir_id}), &[]).await;
    assert_eq!(j.state, "done", "{:?}", j.error);
    let admin = sim.config.consenting_admin.clone();
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
    let reset = reset_peak_rss();
    let (cpu0, sim0) = (cpu_secs("/proc/self/stat"), cpu_secs(&sim.stat()));
    let (cs0, sql0) = (context_switches(), sql_statements());
    let gc0 = keyops.group_commit_stats().unwrap_or_default();
    let t0 = Instant::now();
    let params = json!({"rp": "microsoft", "mode": "automated", "directory_id": dir_id, "assign_missing_keys": true});
    let j = run_job(&store, org, PROVISION_KIND, params, &users).await;
    let wall = t0.elapsed();
    let (cpu1, sim1) = (cpu_secs("/proc/self/stat"), cpu_secs(&sim.stat()));
    let (cs1, sql1) = (context_switches(), sql_statements());
    let gc1 = keyops.group_commit_stats().unwrap_or_default();
    let keyward_cpu = cpu1 - cpu0;
    drop(sim);
    let items = store
        .job_items(org, j.id, None, 1_000_000)
        .await
        .expect("items");
    let attempts: i64 = items.iter().map(|i| i64::from(i.attempts)).sum();
    // Sliding window: write k (0-based) cannot happen before floor(k / limit) windows have passed.
    let min = window.mul_f64(((count.max(1) - 1) / write_limit.max(1)) as f64);
    println!(
        "provisioning: {count} users, state {}, done {}, failed {}, {per_bucket} in flight, \
         {attempts} attempts ({} repeated after a 429 or a failure)",
        j.state,
        j.done,
        j.failed,
        attempts - items.len() as i64
    );
    println!(
        "  wall {:.1} s; throttle minimum {:.1} s; ratio {} (goal <= 1.1x)",
        wall.as_secs_f64(),
        min.as_secs_f64(),
        if min.is_zero() {
            "n/a (the run fits in one throttle window)".to_owned()
        } else {
            format!("{:.2}x", wall.as_secs_f64() / min.as_secs_f64())
        }
    );
    println!(
        "  Keyward CPU {:.0} ms total, {:.2} ms per user (goal <= 2); simulator CPU {:.0} ms (its own process)",
        keyward_cpu * 1000.0,
        keyward_cpu * 1000.0 / count.max(1) as f64,
        (sim1 - sim0) * 1000.0
    );
    let per_user = |n: u64| n as f64 / count.max(1) as f64;
    println!(
        "  per user: {:.0} voluntary + {:.0} involuntary context switches (live threads){}",
        per_user(cs1.0.saturating_sub(cs0.0)),
        per_user(cs1.1.saturating_sub(cs0.1)),
        if std::env::var_os("KEYWARD_BENCH_COUNT_SQL").is_some() {
            format!(
                "; {:.1} SQL statements (BEGIN/COMMIT not counted; CPU inflated by the counting)",
                per_user(sql1 - sql0)
            )
        } else {
            String::new()
        }
    );
    if gc1.batches > gc0.batches {
        println!(
            "  SQLite group commit: {} operations in {} transactions ({:.1} per commit)",
            gc1.operations - gc0.operations,
            gc1.batches - gc0.batches,
            (gc1.operations - gc0.operations) as f64 / (gc1.batches - gc0.batches) as f64
        );
    }
    println!(
        "  Keyward peak RSS {:.0} MiB {}",
        peak_rss_mib(),
        if reset {
            "during provisioning"
        } else {
            "since start (the peak could not be reset)"
        }
    );

    // Import: a tenth first, then the full size; the peaks should match.
    if m >= 10 {
        import_once(&store, &vault, m / 10).await;
    }
    import_once(&store, &vault, m).await;
}
