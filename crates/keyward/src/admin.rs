//! Bootstrap and maintenance commands that work on the configured database directly.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum OrgCommand {}
#[derive(Subcommand)]
pub enum AdminCommand {}
#[derive(Subcommand)]
pub enum TokenCommand {}
#[derive(Subcommand)]
pub enum AuditCommand {}
#[derive(Subcommand)]
pub enum VaultCommand {}

pub fn org(cmd: OrgCommand) -> anyhow::Result<()> {
    match cmd {}
}
pub fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {}
}
pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {}
}
pub fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {}
}
pub fn vault(cmd: VaultCommand) -> anyhow::Result<()> {
    match cmd {}
}
