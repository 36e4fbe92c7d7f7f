//! `keyward-pair`: exposes a Keyward security key on this PC as a local FIDO device.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use keyward_pair::enroll::{self, EnrollTarget};
use keyward_pair::protocol::Principal;
use keyward_pair::relay::{self, Backoff, RelayConfig};
use keyward_pair::state::{Home, ServerUrl, StateError, parse_pin};

/// Connects this PC to a Keyward server so that a Keyward security key appears here as if it were
/// plugged in.
#[derive(Debug, Parser)]
#[command(name = "keyward-pair", version)]
struct Cli {
    /// Where the device key and server settings live (default: the platform config directory).
    #[arg(long, global = true, env = "KEYWARD_PAIR_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registers this PC for an admin: reads an API token from stdin.
    Login {
        /// The Keyward server, e.g. https://keyward.example.com (http:// only for loopback).
        #[arg(long)]
        server: String,
        /// Read the admin's API token from the first line of stdin (it never goes on the command line).
        #[arg(long, required = true)]
        token_stdin: bool,
        /// Trust exactly this server certificate: sha256:<hex of the DER certificate's SHA-256>.
        #[arg(long)]
        pin: Option<String>,
        /// The name the panel shows for this PC (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Registers this PC for a user with their one-time activation code.
    Activate {
        #[arg(long)]
        server: String,
        #[arg(long)]
        code: String,
        #[arg(long)]
        pin: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Exposes the key currently connected to this tool until interrupted.
    Run {
        /// Serve the UDP HID transport on this address (one 64-byte report per datagram).
        #[arg(long)]
        udp: Option<SocketAddr>,
        /// Create a Linux uhid device (needs access to /dev/uhid).
        #[arg(long)]
        uhid: bool,
        /// `auto`: operations count as confirmed; `prompt`: confirm each on the terminal.
        #[arg(long, value_enum, default_value_t = PresenceArg::Auto)]
        presence: PresenceArg,
    },
    /// Revokes this PC's device key at the server and deletes it here.
    Logout,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PresenceArg {
    Auto,
    Prompt,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYWARD_PAIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyward-pair: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward-pair: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        Command::Login {
            server,
            token_stdin: _,
            pin,
            name,
        } => {
            let target = target(&server, pin, name)?;
            let mut token = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut token)
                .context("reading the API token from stdin")?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no API token on stdin");
            }
            let reg = enroll::login(&home, &target, token).await?;
            println!(
                "logged in to {} as {}; device {}",
                target.server.as_url(),
                who(&reg.principal),
                reg.device_id
            );
            Ok(())
        }
        Command::Activate {
            server,
            code,
            pin,
            name,
        } => {
            let target = target(&server, pin, name)?;
            let reg = enroll::activate(&home, &target, &code).await?;
            println!(
                "activated for {} on {}; device {}",
                who(&reg.principal),
                target.server.as_url(),
                reg.device_id
            );
            Ok(())
        }
        Command::Run {
            udp,
            uhid,
            presence,
        } => run(&home, udp, uhid, presence).await,
        Command::Logout => {
            let config = match relay_config(&home) {
                Ok(c) => c,
                Err(StateError::NotLoggedIn) => {
                    println!("not logged in");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let outcome = relay::logout(&config).await;
            home.clear()?;
            match outcome {
                Ok(()) => println!("logged out; the server revoked this device"),
                Err(e) => eprintln!(
                    "keyward-pair: deleted the local device key, but the server could not be told ({e}); \
                     revoke device {} in the panel",
                    config.device_id
                ),
            }
            Ok(())
        }
    }
}

fn target(server: &str, pin: Option<String>, name: Option<String>) -> anyhow::Result<EnrollTarget> {
    let server = ServerUrl::parse(server)?;
    let cert_pin = match pin {
        None => None,
        Some(p) => Some(parse_pin(&p).context("--pin must be sha256:<64 hex digits>")?),
    };
    Ok(EnrollTarget {
        server,
        cert_pin,
        name: name.unwrap_or_else(enroll::default_device_name),
    })
}

fn who(p: &Principal) -> String {
    match p {
        Principal::Admin { email, .. } => format!("admin {email}"),
        Principal::User { upn, .. } => format!("user {upn}"),
    }
}

fn relay_config(home: &Home) -> Result<RelayConfig, StateError> {
    let (key, state) = home.load()?;
    let server = ServerUrl::parse(&state.server).map_err(|e| StateError::Corrupt {
        path: home.dir().join("state.json"),
        reason: e.to_string(),
    })?;
    Ok(RelayConfig {
        url: server.relay_url(),
        device_id: state.device_id,
        key: Arc::new(key),
        cert_pin: state.cert_pin,
        backoff: Backoff::default(),
    })
}

#[cfg(feature = "ctap-hid")]
async fn run(
    home: &Home,
    udp: Option<SocketAddr>,
    uhid: bool,
    presence: PresenceArg,
) -> anyhow::Result<()> {
    use keyward_pair::endpoint::PresenceMode;
    use keyward_pair::run::{Notice, serve, udp_transport};

    let config = relay_config(home)?;
    let io = match (udp, uhid) {
        (Some(_), true) => bail!("choose one local transport: --udp ADDR or --uhid"),
        (Some(addr), false) => {
            let (io, bound) = udp_transport(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?;
            eprintln!(
                "keyward-pair: serving CTAP-HID on udp://{bound}, relaying to {}",
                config.url
            );
            io
        }
        (None, true) => uhid_io()?,
        (None, false) => bail!("choose a local transport: --udp ADDR or --uhid"),
    };
    let (client, events) = relay::RelayClient::spawn(config);
    let presence = match presence {
        PresenceArg::Auto => PresenceMode::Auto,
        PresenceArg::Prompt => PresenceMode::Prompt,
    };
    let notify = |n: Notice| match n {
        Notice::Connected(p) => {
            eprintln!("keyward-pair: connected as {}; waiting for a key", who(&p))
        }
        Notice::Disconnected { reason, retry_in } => {
            eprintln!(
                "keyward-pair: {reason}; retrying in {:.1}s",
                retry_in.as_secs_f64()
            );
        }
        Notice::Attached {
            key_id,
            mode,
            expires_at,
        } => eprintln!(
            "keyward-pair: key {key_id} connected ({mode:?}{})",
            expires_at
                .map(|e| format!(", until {e}"))
                .unwrap_or_default()
        ),
        Notice::Detached { reason } => eprintln!("keyward-pair: key disconnected ({reason})"),
        Notice::Wink => eprintln!("keyward-pair: *wink*"),
        Notice::AskPresence(what) => eprintln!("keyward-pair: allow this key to {what}? [y/N]"),
    };
    let hid = keyward_pair::hid::new_device();
    tokio::select! {
        fatal = serve(hid, presence, io, client, events, notify) => Err(fatal.into()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(all(feature = "ctap-hid", target_os = "linux"))]
fn uhid_io() -> anyhow::Result<keyward_pair::run::LocalIo> {
    let path = std::path::Path::new("/dev/uhid");
    let io = keyward_pair::uhid::uhid_transport(path, "Keyward security key").with_context(|| {
        "cannot create the HID device through /dev/uhid (load the uhid module and allow access with \
         the udev rule in keyward-pair's documentation, or use --udp)"
    })?;
    eprintln!("keyward-pair: serving a FIDO HID device through /dev/uhid");
    Ok(io)
}

#[cfg(all(feature = "ctap-hid", not(target_os = "linux")))]
fn uhid_io() -> anyhow::Result<keyward_pair::run::LocalIo> {
    bail!("--uhid needs Linux; use --udp")
}

#[cfg(not(feature = "ctap-hid"))]
async fn run(
    _home: &Home,
    _udp: Option<SocketAddr>,
    _uhid: bool,
    _presence: PresenceArg,
) -> anyhow::Result<()> {
    bail!("this keyward-pair was built without the CTAP-HID endpoint (feature `ctap-hid`)")
}
