//! `cargo xtask bench`: builds the gateway and the bench harness in release mode, then runs
//! `portcullis-bench` with every argument passed through (`--quick`, `--compare old.json`...).
//!
//! The bench must measure optimised code on both sides, so it never runs from a debug build;
//! the gateway binary it starts is the one just built, named through `PORTCULLIS_BIN`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

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
