//! `portcullis-bench`: runs the bench harness; see the library docs and `bench/SCHEMA.md`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = portcullis_bench::cli::Args::parse();
    portcullis_bench::cli::run(&args)?;
    Ok(())
}
