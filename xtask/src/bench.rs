//! `cargo xtask bench`: builds the gateway and the bench harness in release mode, then runs
//! `portcullis-bench` with every argument passed through (`--quick`, `--compare old.json`...).
//!
//! The bench must measure optimised code on both sides, so it never runs from a debug build;
//! the gateway binary it starts is the one just built, named through `PORTCULLIS_BIN`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Shown under `cargo xtask bench --help`: the runs people ask for, spelled out.
pub const EXAMPLES: &str = "\
Examples:
  cargo xtask bench                  full run: every workload, every target
  cargo xtask bench --quick          a few seconds per workload, 20k rows
  cargo xtask bench -- --help        every option of portcullis-bench

What the statement policy costs: gateway-uring runs the quickstart statement policy,
gateway-nopolicy is the same gateway (io_uring) with `[policy] enabled = false`; the goals
table checks pgbench -S with 8 clients at >= x0.95 of the policy-off TPS and SELECT 1 p50
at most 3 µs over the policy-off p50, both from the same run:
  cargo xtask bench --targets gateway-uring,gateway-nopolicy --rows 20000 --rounds 7 \\
      --clients 1 --only small/select1,pgbench/select-only-c8
  (--quick --rounds 1 for a smoke run; `direct` always runs, every ratio needs it; --only
  matches substrings, so --clients 1 is what keeps small/select1 to the c1 workloads)

One setting against the default, same run: gateway-variant is gateway-epoll with the
--variant lines added to [server] (repeatable; --variant-engine uring for io_uring):
  cargo xtask bench --targets gateway-epoll,gateway-variant --variant 'busy_poll_us = 50' \\
      --rows 20000 --clients 1,8 --only small/select1,pgbench/select-only-c8

Target names: direct, pgbouncer, pgbouncer-pktbuf, gateway-epoll, gateway-uring,
gateway-nopool, gateway-nopolicy, gateway-masked, gateway-approvals, gateway-audit,
gateway-audit-os, gateway-variant (with --variant). Workload ids: narrow/*, wide/*, copy/*,
small/{select1,pk}-{simple,prepared}-c{N}, connect/c1, pgbench/select-only[-connect]-c8.";

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `portcullis-bench` (see `cargo xtask bench -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask sits in the workspace")?
        .to_path_buf();
    if !PathBuf::from("/usr/sbin/pgbouncer").exists() {
        eprintln!("xtask: installing pgbouncer (the bench compares against it)");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "pgbouncer"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "xtask: pgbouncer could not be installed; its targets will be reported as not available"
            );
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "portcullis",
            "-p",
            "portcullis-bench",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("release build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let status = Command::new(target.join("release/portcullis-bench"))
        .current_dir(&root)
        .env("PORTCULLIS_BIN", target.join("release/portcullis"))
        .args(&args.args)
        .status()
        .context("running portcullis-bench")?;
    if !status.success() {
        bail!("portcullis-bench failed ({status})");
    }
    Ok(())
}
