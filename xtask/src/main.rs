//! `cargo xtask …`: the project's one entry point for set-up, tests, the quickstart and benches.
//!
//! Each subcommand lives in its own module; `setup` holds the idempotent installers every
//! other command calls first, so a fresh Debian machine needs nothing but this command.

mod bench;
mod bpf;
mod quickstart;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Portcullis build, test, quickstart and bench orchestration"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (PostgreSQL, pgbouncer, the BPF toolchain), idempotently.
    Setup(setup::Args),
    /// Throwaway PostgreSQL with sample financial data, a gateway in front, a URI to paste.
    Quickstart(quickstart::Args),
    /// Install, build and run every unit, property and end-to-end test.
    Test(test::Args),
    /// Run the bench harness (gateway vs direct vs pgbouncer).
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup(a) => setup::run(a),
        Cmd::Quickstart(a) => quickstart::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::Bench(a) => bench::run(a),
    }
}
