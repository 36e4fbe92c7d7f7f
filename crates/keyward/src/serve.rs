//! `keyward serve`: the Keyward server.

/// Run the Keyward server.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("keyward serve is not built yet")
}
