//! Bootstrap and maintenance commands that work on the configured database directly, whether the
//! server is running or not.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keyward_server::auth::Role;
use keyward_server::bootstrap;
use keyward_store::Store;

/// Where the database is: the same configuration as `keyward serve`.
#[derive(Args)]
pub struct DbArgs {
    /// The server's TOML configuration file; `KEYWARD_*` variables override it.
    #[arg(long, env = "KEYWARD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an organisation and print its id.
    Create {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an administrator; the password is read from stdin.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        email: String,
        /// owner, admin, helpdesk or auditor.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print a one-time sign-in link for an administrator (works once, for 15 minutes).
    LoginLink {
        #[arg(long)]
        email: String,
        /// The organisation, when the e-mail address is an admin in several.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token for an administrator and print it (shown once).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// The organisation, when the e-mail address is an admin in several.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute every organisation's audit hash chain; exits non-zero at the first bad entry.
    Verify {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Re-wrap every data key and every sealed value (directory secrets, attestation keys,
    /// Temporary Access Passes) under a new key-encryption key version; safe while servers run.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        /// After rewrapping, drop the old key-encryption key version (refused while anything still uses it).
        #[arg(long)]
        retire_old: bool,
    },
}

/// Opens the configured database (creating the data directory for the default SQLite file).
fn with_store<T>(
    db: &DbArgs,
    f: impl AsyncFnOnce(Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    crate::serve::init_logging("text");
    let config = crate::serve::load_config(db.config.as_deref())?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let store = Store::connect(config.database_url.expose())
            .await
            .context("opening the database")?;
        let out = f(store.clone()).await;
        store.close().await;
        out
    })
}

pub fn org(cmd: OrgCommand) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Create { name, db } => with_store(&db, async |store| {
            let org = bootstrap::create_org(&store, &name).await?;
            println!("{}", org.id);
            Ok(())
        }),
    }
}

pub fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Create {
            org,
            email,
            role,
            db,
        } => {
            let Some(role) = Role::parse(&role) else {
                bail!("--role must be owner, admin, helpdesk or auditor");
            };
            let mut password = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password =
                zeroize::Zeroizing::new(password.trim_end_matches(['\r', '\n']).to_owned());
            with_store(&db, async |store| {
                let admin = bootstrap::create_admin(&store, &org, &email, role, &password).await?;
                println!("{}", admin.id);
                Ok(())
            })
        }
        AdminCommand::LoginLink { email, org, db } => {
            let config = crate::serve::load_config(db.config.as_deref())?;
            let Some(base) = config.effective_public_url() else {
                bail!(
                    "set public_url (KEYWARD_PUBLIC_URL): the link must name the panel's address"
                );
            };
            with_store(&db, async |store| {
                let link = bootstrap::login_link(&store, org.as_deref(), &email, &base).await?;
                // Only the link on stdout, so scripts can capture it.
                println!("{link}");
                Ok(())
            })
        }
    }
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            email,
            name,
            org,
            db,
        } => with_store(&db, async |store| {
            let token = bootstrap::create_token(&store, org.as_deref(), &email, &name).await?;
            // Only the token on stdout, so scripts can capture it.
            println!("{token}");
            Ok(())
        }),
    }
}

pub fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { db } => {
            with_store(&db, async |store| {
                match bootstrap::verify_audit(&store).await? {
                    Ok(report) => {
                        println!(
                            "audit log intact: {} entries in {} organisations",
                            report.entries, report.organisations
                        );
                        Ok(())
                    }
                    Err(bad) => {
                        eprintln!(
                            "audit log BROKEN: organisation {} at seq {}: {}",
                            bad.org_id, bad.seq, bad.reason
                        );
                        std::process::exit(2);
                    }
                }
            })
        }
    }
}

pub fn vault(cmd: VaultCommand) -> anyhow::Result<()> {
    match cmd {
        VaultCommand::Rotate { db, retire_old } => {
            crate::vault_cmd::run_rotate(db.config.as_deref(), retire_old)
        }
    }
}
