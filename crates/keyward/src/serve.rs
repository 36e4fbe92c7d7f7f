//! `keyward serve`: the Keyward server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use keyward_server::config::Config;

/// Run the Keyward server.
#[derive(clap::Args)]
pub struct Args {
    /// A TOML configuration file; `KEYWARD_*` environment variables override it.
    #[arg(long, env = "KEYWARD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Loads the configuration shared by `serve` and the database commands, warning about unknown
/// `KEYWARD_*` variables (a typo there would otherwise silently fall back to a default).
pub fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (config, unknown) = Config::load(file, &env).context("loading configuration")?;
    for name in unknown {
        tracing::warn!(variable = %name, "unknown KEYWARD_* environment variable ignored");
    }
    Ok(config)
}

/// Logs go to stderr, as text or JSON; `KEYWARD_LOG` sets the filter (default `info`).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// While the database has no admin at all, prints a one-time link to the first-run set-up page on
/// stderr (never through the logger, so log collectors do not keep it). Each start makes a fresh
/// link and invalidates the one before.
async fn print_setup_link(config: &Config, store: &keyward_store::Store) -> anyhow::Result<()> {
    let Some(base) = config.effective_public_url() else {
        if store.admin_count().await? == 0 {
            eprintln!(
                "keyward: no admin exists yet. Set public_url (KEYWARD_PUBLIC_URL) to get a set-up link, \
                 or create one with keyward org create and keyward admin create."
            );
        }
        return Ok(());
    };
    if let Some(link) = keyward_server::bootstrap::setup_link(store, &base)
        .await
        .context("creating the set-up link")?
    {
        eprintln!();
        eprintln!(
            "  Keyward has no admin yet. Open this one-time link to create the organisation and its owner:"
        );
        eprintln!("    {link}");
        eprintln!(
            "  It works once, for {} hours, and only until this server restarts.",
            keyward_server::bootstrap::SETUP_LINK_HOURS
        );
        eprintln!();
        let _ = std::io::stderr().flush();
        tracing::info!("no admin exists: a one-time set-up link was printed on stderr");
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let env_format = std::env::var("KEYWARD_LOG_FORMAT").unwrap_or_else(|_| "text".into());
    init_logging(&env_format);
    let config = load_config(args.config.as_deref())?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let state = keyward_server::serve::open_state(&config)
            .await
            .context("opening the data directory, database and vault")?;
        tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), "starting");
        print_setup_link(&config, &state.store).await?;
        keyward_server::serve::run(
            config,
            state,
            |url| {
                // Tools and tests wait for this line on stdout.
                println!("keyward listening on {url}");
                let _ = std::io::stdout().flush();
                tracing::info!(%url, "serving");
            },
            keyward_server::serve::shutdown_signal(),
        )
        .await
        .context("serving")
    })
}
