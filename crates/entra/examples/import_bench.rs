//! Imports every user from a Graph simulator and prints wall time and peak RSS.
//!
//! ```sh
//! # Client and simulator in one process (RSS includes the simulator's directory):
//! cargo run -p keyward-entra --example import_bench -- 100000
//! # Client alone, against a simulator started separately:
//! keyward-graph-sim --listen 127.0.0.1:8099 --users 100000 &
//! cargo run -p keyward-entra --example import_bench -- 100000 http://127.0.0.1:8099
//! ```

use std::time::Instant;

use keyward_entra::{ClientCredential, EntraConfig, GraphClient, Secret, UserSource};
use keyward_graph_sim::SimConfig;

/// Peak resident set size of this process in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let users: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let external = args.next();
    let defaults = SimConfig::default();
    let (_sim, url) = match external {
        Some(url) => (None, url),
        None => {
            let sim = keyward_graph_sim::spawn(SimConfig {
                users,
                ..SimConfig::default()
            })
            .await?;
            let url = sim.url();
            (Some(sim), url)
        }
    };
    let rss_before = peak_rss_kib().unwrap_or(0);
    let config = EntraConfig::new(
        defaults.tenant_id,
        defaults.client_id,
        ClientCredential::Secret(Secret::new(defaults.client_secret)),
    )
    .with_authority_url(&url)
    .with_graph_url(&url);
    let graph = GraphClient::new(config)?;
    for (name, source) in [
        ("list", UserSource::All),
        ("delta", UserSource::Delta { delta_link: None }),
    ] {
        let start = Instant::now();
        let (mut seen, mut pages_n) = (0usize, 0usize);
        let mut pages = graph.users(source);
        while let Some(page) = pages.next_page().await {
            let page = page?;
            seen += page.users.len();
            pages_n += 1;
        }
        let wall = start.elapsed();
        println!(
            "{name}: imported {seen} users in {pages_n} pages, wall {:.2} s ({:.0} users/s), peak RSS {} KiB (before import {} KiB)",
            wall.as_secs_f64(),
            seen as f64 / wall.as_secs_f64(),
            peak_rss_kib().unwrap_or(0),
            rss_before
        );
        anyhow::ensure!(seen == users, "expected {users} users, saw {seen}");
    }
    Ok(())
}
