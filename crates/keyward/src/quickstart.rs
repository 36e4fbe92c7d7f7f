//! `keyward quickstart`: the server on embedded defaults with a simulated Entra ID tenant.

/// Try Keyward in one command.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("keyward quickstart is not built yet")
}
