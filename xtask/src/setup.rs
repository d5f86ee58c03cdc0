//! `cargo xtask setup`: installs what the project needs on a Debian machine, idempotently —
//! PostgreSQL 15 (server and client), pgbouncer, rsyslog, cargo-nextest, the browser the reviewers'
//! page is tested in (chromium, and playwright-core from `tests/browser`'s lock file) and
//! the BPF toolchain — and
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
    // The reviewers' page is tested in a real browser (tests/tests/approvals_page.rs).
    "chromium",
    // The audit log's syslog export is tested against a real rsyslogd.
    "rsyslog",
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
    ensure_node_packages()?;
    if with_bpf {
        crate::bpf::ensure_toolchain().context("installing the BPF toolchain")?;
        println!("setup: BPF toolchain (nightly rust-src, bpf-linker) present");
    }
    Ok(())
}

/// Python drivers the end-to-end tests run as agents (pinned: the tests assert what
/// they print).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("psycopg", "psycopg[binary]==3.2.3"),
    ("asyncpg", "asyncpg==0.30.0"),
];

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

/// Oldest Node.js the Node packages of the tests (playwright-core, node-postgres,
/// oidc-provider 8) run on.
const NODE_MAJOR: u32 = 20;

/// The tests' Node packages: a directory with a lock file, and a module that shows the
/// install is there.
const NODE_PACKAGES: [(&str, &str, &str); 3] = [
    ("tests/browser", "playwright-core", "the browser driver"),
    ("tests/drivers/node", "pg", "node-postgres"),
    (
        "tests/oidc",
        "oidc-provider",
        "the OpenID provider of the token tests",
    ),
];

/// `npm ci` in each of [`NODE_PACKAGES`] whose node_modules is missing or older than its
/// lock file (npm writes `node_modules/.package-lock.json` on every install).
fn ensure_node_packages() -> anyhow::Result<()> {
    let major = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let v = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            v.trim_start_matches('v')
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        });
    match major {
        Some(m) if m >= NODE_MAJOR => {}
        Some(m) => bail!(
            "Node.js {m} is too old for the browser and driver tests (they need {NODE_MAJOR} or newer)"
        ),
        None => bail!(
            "no Node.js: the browser and driver tests need node {NODE_MAJOR} or newer and npm"
        ),
    }
    let modified = |p: std::path::PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    for (rel, module, what) in NODE_PACKAGES {
        let dir = portcullis_tests::workspace_root().join(rel);
        let lock = modified(dir.join("package-lock.json"))
            .with_context(|| format!("{rel}/package-lock.json"))?;
        let current = modified(dir.join("node_modules/.package-lock.json"))
            .is_some_and(|t| t >= lock)
            && dir.join("node_modules").join(module).exists();
        if current {
            println!("setup: {what} ({rel}: {module}) present");
            continue;
        }
        println!("setup: installing {what} (npm ci in {rel})");
        sh(Command::new("npm").current_dir(&dir).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))?;
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
    // So does rsyslog's; its tests start their own throwaway daemon.
    for service in ["pgbouncer", "rsyslog"] {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", service])
            .output();
    }
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
