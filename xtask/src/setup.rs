//! `cargo xtask setup` (placeholder, being written).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask setup` is not written yet")
}
