//! `keyward`: the Keyward server, a standalone security key and the administration commands.
//!
//! Each subcommand lives in its own module, which exports its clap `Args` and an entry point.

mod admin;
mod quickstart;
mod serve;
mod softkey;
mod vault_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Keyward: security keys held for your users, passkeys registered on their behalf"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Keyward server.
    Serve(serve::Args),
    /// Try Keyward in one command: the server on embedded defaults with a simulated Entra ID tenant.
    Quickstart(quickstart::Args),
    /// Serve one persistent virtual security key over the UDP HID transport.
    Softkey(softkey::Args),
    /// Organisations.
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Administrators of an organisation.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// The key vault.
    #[command(subcommand)]
    Vault(admin::VaultCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Softkey(args) => softkey::run(args),
        Command::Org(cmd) => admin::org(cmd),
        Command::Admin(cmd) => admin::admin(cmd),
        Command::Token(cmd) => admin::token(cmd),
        Command::Audit(cmd) => admin::audit(cmd),
        Command::Vault(cmd) => admin::vault(cmd),
    }
}
