//! `cargo xtask test`: the whole gate, as CI runs it. Set-up, a debug build of the gateway,
//! every unit, property and end-to-end test of the default workspace members through
//! nextest, then rustfmt and clippy. Every step runs even when an earlier one failed, so one
//! run reports everything; the exit code is non-zero if anything failed.
//!
//! Debug, not release: on two cores a release build with thin LTO costs minutes more than it
//! saves, since the end-to-end tests wait on PostgreSQL and psql far more than on the gateway.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip installing anything (assume `cargo xtask setup` already ran).
    #[arg(long)]
    no_setup: bool,
    /// Passed to `cargo nextest run` after the defaults, e.g. `-- -E 'test(/psql/)'`.
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

struct Step {
    name: &'static str,
    took: Duration,
    ok: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let root = portcullis_tests::gateway::workspace_root();
    let mut steps: Vec<Step> = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        println!("xtask test: {name}");
        let t = Instant::now();
        let r = f();
        if let Err(e) = &r {
            eprintln!("xtask test: {name} FAILED: {e:#}");
        }
        steps.push(Step {
            name,
            took: t.elapsed(),
            ok: r.is_ok(),
        });
        r.is_ok()
    };

    if !args.no_setup && !timed("setup", &mut || crate::setup::ensure(true)) {
        bail!("set-up failed; nothing else can run");
    }
    if !args.no_lint {
        timed("rustfmt", &mut || {
            crate::setup::sh(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(["fmt", "--all", "--check"]),
            )
        });
    }
    let built = timed("build gateway (debug)", &mut || {
        crate::setup::sh(Command::new("cargo").current_dir(&root).args([
            "build",
            "--package",
            "portcullis",
            "--bins",
        ]))
    });
    let mut summary = None;
    if built {
        let bin = target_dir(&root).join("debug/portcullis");
        timed("nextest", &mut || {
            let (ok, s) = nextest(&root, &bin, &args.nextest_args)?;
            summary = s;
            if ok {
                Ok(())
            } else {
                bail!("some tests failed")
            }
        });
    }
    if !args.no_lint {
        timed("clippy", &mut || {
            crate::setup::sh(Command::new("cargo").current_dir(&root).args([
                "clippy",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
    }

    println!("\nxtask test: summary");
    for s in &steps {
        println!(
            "  {:<24} {:>8.1}s  {}",
            s.name,
            s.took.as_secs_f64(),
            if s.ok { "ok" } else { "FAILED" }
        );
    }
    println!("  {:<24} {:>8.1}s", "total", start.elapsed().as_secs_f64());
    match &summary {
        Some(c) => {
            println!(
                "  tests: {} run, {} passed, {} failed, {} skipped",
                c.run, c.passed, c.failed, c.skipped
            );
            // The plain closing line CI reads, alone on its line.
            println!(
                "{} passed, {} failed, {} skipped",
                c.passed, c.failed, c.skipped
            );
        }
        None => println!("  tests: no nextest summary (did the build fail?)"),
    }
    let failed: Vec<&str> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn target_dir(root: &std::path::Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

#[derive(Debug, Default, PartialEq)]
struct Counts {
    run: u64,
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// Runs nextest, echoing its output, and picks its closing `Summary` line apart.
fn nextest(
    root: &std::path::Path,
    bin: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<(bool, Option<Counts>)> {
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args(["nextest", "run", "--no-fail-fast"])
        .args(extra)
        .env("PORTCULLIS_BIN", bin)
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo nextest")?;
    let stderr = child.stderr.take().expect("piped");
    let mut counts = None;
    let mut err = std::io::stderr();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let _ = writeln!(err, "{line}");
        if let Some(c) = parse_summary(&line) {
            counts = Some(c);
        }
    }
    let status = child.wait()?;
    Ok((status.success(), counts))
}

/// `Summary [ 12.3s] 120 tests run: 118 passed, 1 failed, 3 skipped` (nextest's last line;
/// "failed" also counts timed-out tests, which nextest lists separately).
fn parse_summary(line: &str) -> Option<Counts> {
    let rest = line.trim_start().strip_prefix("Summary")?;
    let (_, after) = rest.split_once(']')?;
    let (run, tail) = after
        .split_once("tests run:")
        .or_else(|| after.split_once("test run:"))?;
    let mut c = Counts {
        run: run.trim().parse().ok()?,
        ..Counts::default()
    };
    for part in tail.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => c.passed += n,
            "failed" | "timed" => c.failed += n,
            "skipped" => c.skipped += n,
            _ => {}
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nextest_summaries() {
        assert_eq!(
            parse_summary(
                "     Summary [  93.337s] 120 tests run: 118 passed, 2 failed, 3 skipped"
            ),
            Some(Counts {
                run: 120,
                passed: 118,
                failed: 2,
                skipped: 3
            })
        );
        assert_eq!(
            parse_summary("Summary [ 1.0s] 1 test run: 1 passed (1 slow), 0 skipped"),
            Some(Counts {
                run: 1,
                passed: 1,
                failed: 0,
                skipped: 0
            })
        );
        assert_eq!(
            parse_summary(
                "Summary [ 9.0s] 4 tests run: 2 passed, 1 failed, 1 timed out, 0 skipped"
            ),
            Some(Counts {
                run: 4,
                passed: 2,
                failed: 2,
                skipped: 0
            })
        );
        assert_eq!(parse_summary("   PASS [ 1.0s] foo"), None);
    }
}
