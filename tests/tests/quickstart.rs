//! `cargo xtask quickstart` as a user runs it: a gateway stopped by hand is reaped at once
//! (no zombie waits for the quickstart to end), the quickstart says it exited and how to
//! start it again, Enter does, and Ctrl-C (SIGINT) stops everything.
//!
//! Not a data-path scenario: one engine (the default, `auto`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{psql_at, run_timed, stdout};
use portcullis_tests::gateway::{binary, workspace_root};

/// This checkout's xtask binary, built once.
fn xtask() -> std::path::PathBuf {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "--package", "xtask"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building xtask failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("debug/xtask")
}

/// Lines the quickstart printed, until one contains `needle`; panics after `within`.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
            Err(_) => panic!(
                "the quickstart never printed {needle:?}; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// `R` (running), `S`, `Z` (zombie) ... from /proc, `None` once the pid is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn the_quickstart_reaps_a_gateway_stopped_by_hand_and_starts_it_again() {
    let mut qs = Command::new(xtask())
        .args(["quickstart", "--rows", "200", "--port", "0"])
        .env("PORTCULLIS_BIN", binary().expect("gateway binary"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the quickstart");
    let (tx, lines) = mpsc::channel();
    let out = qs.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let uri = wait_line(&lines, &mut seen, "URI:", Duration::from_secs(600));
    let uri = uri.split_whitespace().last().unwrap().to_owned();
    // The admin console, with the login it prints.
    let console = wait_line(&lines, &mut seen, "console:", Duration::from_secs(10));
    let console = console
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no console URI in {console:?}"))
        .to_owned();
    assert!(console.ends_with("/portcullis"), "{console}");
    let pid_line = wait_line(&lines, &mut seen, "pid:", Duration::from_secs(10));
    let pid: u32 = pid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    wait_line(
        &lines,
        &mut seen,
        "Ctrl-C stops everything",
        Duration::from_secs(10),
    );
    assert_eq!(state(pid).map(|s| s != 'Z'), Some(true));
    let stats = run_timed(psql_at(&console).args(["-At", "-c", "SHOW STATS"]));
    assert!(stats.status.success(), "{stats:?}");
    assert!(stdout(&stats).contains("|running|"), "{}", stdout(&stats));

    // Stopped by hand, as a user trying the drain would.
    // SAFETY: kill(2) on the gateway the quickstart started for this test.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    wait_line(
        &lines,
        &mut seen,
        "the gateway exited on its own",
        Duration::from_secs(30),
    );
    let how = wait_line(&lines, &mut seen, "press Enter", Duration::from_secs(5));
    assert!(how.contains("start it again"), "{how}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid).is_some() {
        assert_ne!(state(pid), Some('Z'), "the exited gateway is a zombie");
        assert!(Instant::now() < deadline, "the gateway is still running");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Enter brings it back, on the same port.
    qs.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    wait_line(
        &lines,
        &mut seen,
        "the gateway is up again",
        Duration::from_secs(60),
    );
    let answer = run_timed(psql_at(&uri).args(["-At", "-c", "SELECT count(*) > 0 FROM accounts"]));
    assert!(answer.status.success(), "{answer:?}");
    assert_eq!(stdout(&answer).trim(), "t");

    // Ctrl-C stops everything and leaves nothing behind.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(qs.id() as i32, libc::SIGINT);
    }
    wait_line(
        &lines,
        &mut seen,
        "temporary directories removed",
        Duration::from_secs(60),
    );
    let status = qs.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
