//! `keyward quickstart`: the server on embedded defaults with a simulated Entra ID tenant.
//!
//! Everything a first look needs, in one process: the built-in Graph simulator
//! (`keyward_graph_sim`) holding demo users, an organisation with an owner, the simulator registered
//! as the organisation's Entra ID connection, and a first import already started. The data lives in
//! a fresh directory that is removed on exit unless `--data-dir` names one to keep.
//!
//! The directory connection is registered through the server's own REST API (the same router
//! `keyward serve` runs, called in-process), so the quickstart goes through every check and audit
//! entry a real connection does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Request, header};
use keyward_server::auth::{Role, new_secret};
use keyward_server::bootstrap;
use keyward_server::config::Config;
use tower::ServiceExt;

const ORG: &str = "Quickstart";
const OWNER: &str = "owner@quickstart.example";

/// Try Keyward in one command.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen; loopback only (the quickstart speaks plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Keep the data in this (new) directory instead of a temporary one removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How many demo users the simulated tenant holds.
    #[arg(long, default_value_t = 25)]
    pub users: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::serve::init_logging("text");
    if !args.listen.ip().is_loopback() {
        bail!(
            "the quickstart listens on loopback only; use keyward serve with TLS for anything else"
        );
    }
    let (data_dir, temporary) = match args.data_dir {
        Some(dir) => {
            if dir.join("keyward.db").exists() {
                bail!(
                    "{} already holds a Keyward database: run keyward serve on it instead",
                    dir.display()
                );
            }
            (dir, false)
        }
        None => (
            std::env::temp_dir().join(format!("keyward-quickstart-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // Embedded defaults: only the address and the data directory, never the caller's KEYWARD_*
    // environment, so a quickstart cannot touch a real installation's database by accident.
    let env = BTreeMap::from([
        ("KEYWARD_LISTEN".to_owned(), args.listen.to_string()),
        (
            "KEYWARD_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
    ]);
    let (config, _) = Config::load(None, &env).context("building the quickstart configuration")?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = rt.block_on(serve(config, args.users));
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

async fn serve(config: Config, users: usize) -> anyhow::Result<()> {
    let sim_config = keyward_graph_sim::SimConfig {
        users,
        ..Default::default()
    };
    let (tenant_id, client_id, client_secret) = (
        sim_config.tenant_id.clone(),
        sim_config.client_id.clone(),
        sim_config.client_secret.clone(),
    );
    let sim = keyward_graph_sim::spawn(sim_config)
        .await
        .context("starting the Graph simulator")?;

    let state = keyward_server::serve::open_state(&config)
        .await
        .context("opening the data directory, database and vault")?;
    bootstrap::create_org(&state.store, ORG).await?;
    let password = zeroize::Zeroizing::new(new_secret(""));
    bootstrap::create_admin(&state.store, ORG, OWNER, Role::Owner, &password).await?;
    let token = zeroize::Zeroizing::new(
        bootstrap::create_token(&state.store, Some(ORG), OWNER, "quickstart set-up").await?,
    );
    let base = config
        .effective_public_url()
        .context("the quickstart listens on loopback, so it has a public URL")?;
    let link = zeroize::Zeroizing::new(
        bootstrap::login_link(&state.store, Some(ORG), OWNER, &base)
            .await
            .context("creating the sign-in link")?,
    );

    let app = keyward_server::serve::app(state.clone());
    let directory = call(
        &app,
        &token,
        "/api/v1/directories/entra",
        serde_json::json!({
            "name": "Contoso (simulated)",
            "tenant_id": tenant_id,
            "client_id": client_id,
            "client_secret": client_secret,
            "authority_url": sim.url(),
            "graph_url": sim.url(),
        }),
    )
    .await
    .context("registering the simulated tenant")?;
    let id = directory["id"]
        .as_str()
        .context("the directory answer has no id")?
        .to_owned();
    call(
        &app,
        &token,
        &format!("/api/v1/directories/{id}/import"),
        serde_json::json!({}),
    )
    .await
    .context("starting the first import")?;

    keyward_server::serve::run(
        config,
        state,
        |url| {
            // Shown once, on the terminal that started the demo; never logged.
            println!("keyward listening on {url}");
            println!();
            println!("  Keyward quickstart is running with a simulated Entra ID tenant ({users} demo users).");
            println!("  Open this one-time sign-in link (it works once, for 15 minutes):");
            println!("    sign-in link: {}", link.as_str());
            println!("  Later, sign in at {base}/sign-in as");
            println!("    e-mail:   {OWNER}");
            println!("    password: {}", password.as_str());
            println!("  or register a passkey under My account and use Sign in with a passkey.");
            println!("  The users are being imported now; then select some and choose Automated RP Provisioning.");
            println!("  Press Ctrl-C to stop; the demo data is removed unless --data-dir was given.");
        },
        keyward_server::serve::shutdown_signal(),
    )
    .await
    .context("serving")?;
    drop(sim);
    Ok(())
}

/// One authorised JSON POST through the server's router, in-process.
async fn call(
    app: &axum::Router,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let request = Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .context("building the request")?;
    let response = app
        .clone()
        .oneshot(request)
        .await
        .context("calling the API")?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .context("reading the answer")?;
    if !status.is_success() {
        bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).context("the answer is not JSON")
}
