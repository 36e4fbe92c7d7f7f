//! `keyward-graph-sim`: serves a simulated Microsoft Graph and token endpoint on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use keyward_graph_sim::{SimConfig, spawn_on};

/// A Microsoft Graph + Entra ID token endpoint simulator for development, tests and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "keyward-graph-sim", version)]
struct Args {
    /// Address to listen on (loopback; the simulator has no TLS).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of seeded users (user 0 is the consenting admin).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Seed for the generated directory; the same seed gives the same ids and names.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency added to every Graph request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long)]
    tenant_id: Option<String>,
    #[arg(long)]
    client_id: Option<String>,
    /// The app's client secret (also from KEYWARD_GRAPH_SIM_CLIENT_SECRET).
    #[arg(long, env = "KEYWARD_GRAPH_SIM_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// A PEM or DER certificate registered on the app, for client assertions (repeatable).
    #[arg(long)]
    client_cert: Vec<std::path::PathBuf>,
    /// UPN of the consenting admin, for whom provisioning answers 405.
    #[arg(long)]
    consenting_admin: Option<String>,
    /// Writes allowed per window (Graph: 3000 per 150 s).
    #[arg(long, default_value_t = 3000)]
    write_limit: u32,
    #[arg(long, default_value_t = 150)]
    write_window_secs: u64,
    /// Resource units per 10 s (default: Graph's figure for the tenant size).
    #[arg(long)]
    read_limit: Option<u32>,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime_secs: u64,
    /// Enforce attestation in the FIDO2 policy from the start.
    #[arg(long)]
    enforce_attestation: bool,
}

fn pem_or_der(raw: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(&raw);
    if let Some(start) = text.find("-----BEGIN CERTIFICATE-----") {
        let body = &text[start + 27..];
        let end = body
            .find("-----END CERTIFICATE-----")
            .context("PEM certificate has no END line")?;
        let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("PEM body is not base64");
    }
    Ok(raw)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let mut config = SimConfig {
        users: args.users,
        seed: args.seed,
        ..SimConfig::default()
    };
    config.latency = Duration::from_millis(args.latency_ms);
    if let Some(t) = args.tenant_id {
        config.tenant_id = t;
    }
    if let Some(c) = args.client_id {
        config.client_id = c;
    }
    if let Some(s) = args.client_secret {
        config.client_secret = s;
    }
    if let Some(a) = args.consenting_admin {
        config.consenting_admin = a;
    }
    for path in &args.client_cert {
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        config.client_certificates.push(pem_or_der(raw)?);
    }
    config.write_limit = args.write_limit;
    config.write_window = Duration::from_secs(args.write_window_secs);
    config.token_lifetime = Duration::from_secs(args.token_lifetime_secs);
    config.read_limit = args.read_limit;
    config.policy.is_attestation_enforced = args.enforce_attestation;
    let (tenant, client) = (config.tenant_id.clone(), config.client_id.clone());
    let sim = spawn_on(args.listen, config)
        .await
        .context("binding the listen address")?;
    println!("keyward-graph-sim listening on http://{}", sim.addr);
    println!("tenant {tenant} client {client}");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
