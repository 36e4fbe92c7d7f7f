//! `keyward softkey`: one persistent virtual security key served over UDP.

/// Serve one persistent virtual security key over the UDP HID transport.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("keyward softkey is not built yet")
}
