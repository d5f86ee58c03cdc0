//! `cargo xtask setup`: installs what the project needs on a Debian machine, idempotently —
//! PostgreSQL 15 (server and client), pgbouncer, cargo-nextest and the BPF toolchain — and
//! says what it did. Every other command calls [`ensure`] first, so a fresh machine (CI's)
//! needs nothing but `cargo xtask …`.

use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages the tests, quickstart and bench run.
const APT_PACKAGES: &[&str] = &[
    "postgresql-15",
    "postgresql-client-15",
    "pgbouncer",
    "iproute2",
    // pg_query builds libpg_query from C and runs bindgen, which loads libclang.
    "clang",
    "libclang-dev",
    // ... and generates its protobuf bindings with protoc (PROTOC in .cargo/config.toml).
    "protobuf-compiler",
];

#[derive(clap::Args)]
pub struct Args {
    /// Skip the BPF toolchain (nightly rust-src, bpf-linker): enough for the quickstart.
    #[arg(long)]
    pub no_bpf: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure(!args.no_bpf)
}

/// Installs whatever is missing; prints one line per component.
pub fn ensure(with_bpf: bool) -> anyhow::Result<()> {
    ensure_apt()?;
    ensure_nextest()?;
    ensure_python_drivers()?;
    if with_bpf {
        crate::bpf::ensure_toolchain().context("installing the BPF toolchain")?;
        println!("setup: BPF toolchain (nightly rust-src, bpf-linker) present");
    }
    Ok(())
}

/// Python drivers the end-to-end tests run as agents (pinned: the tests assert what
/// they print).
const PYTHON_PACKAGES: &[(&str, &str)] = &[("psycopg", "psycopg[binary]==3.2.3")];

fn ensure_python_drivers() -> anyhow::Result<()> {
    for (module, spec) in PYTHON_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            println!("setup: python {module} present");
            continue;
        }
        println!("setup: installing python {spec}");
        sh(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            spec,
        ]))
        .with_context(|| format!("installing {spec} with pip"))?;
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn ensure_apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", APT_PACKAGES.join(", "));
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {missing:?}; run as root or: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    // Debian's postgresql package creates and starts a system-wide cluster on 5432 unless
    // told not to; the project only ever uses throwaway clusters of its own.
    let conf = std::path::Path::new("/etc/postgresql-common/createcluster.conf");
    if !conf.exists() {
        std::fs::create_dir_all(conf.parent().expect("has a parent"))?;
        std::fs::write(conf, "create_main_cluster = false\n")?;
    }
    println!("setup: installing {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        // Keep the createcluster.conf written above instead of asking about it.
        .args([
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ])
        .args(&missing))?;
    // pgbouncer's package enables a system service the bench starts its own copy of.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "pgbouncer"])
        .output();
    Ok(())
}

fn ensure_nextest() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("setup: cargo-nextest present");
        return Ok(());
    }
    println!("setup: installing cargo-nextest");
    sh(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}

pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
