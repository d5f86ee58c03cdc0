//! `cargo xtask quickstart` (placeholder, being written).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask quickstart` is not written yet")
}
