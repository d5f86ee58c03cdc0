//! A credential a command prints: run without a shell, its standard output trimmed is
//! the value. It runs on a thread of its own, every refresh interval and when a login
//! was refused, and publishes what it got; a run that fails keeps the last good value
//! (it may well still work) and says why in the log.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wait_timeout::ChildExt;

use super::{Fetched, Secret, SecretError};

/// Least time between two runs, so a burst of refused logins runs it once.
pub(super) const MIN_GAP: Duration = Duration::from_millis(500);
/// Most of its output that is read: a password, not a document.
const MAX_OUTPUT: usize = 64 << 10;

/// The thread that runs the command; stops when dropped.
pub struct CommandRunner {
    wake: Arc<Wake>,
}

#[derive(Default)]
struct Wake {
    state: Mutex<WakeState>,
    cond: Condvar,
}

#[derive(Default)]
struct WakeState {
    now: bool,
    stop: bool,
}

impl CommandRunner {
    pub(super) fn spawn(
        argv: Vec<String>,
        refresh: Duration,
        timeout: Duration,
        publish: watch::Sender<Fetched>,
    ) -> Self {
        let wake = Arc::new(Wake::default());
        let w = wake.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-credential".into())
            .spawn(move || refresh_loop(&argv, refresh, timeout, &publish, &w));
        if let Err(e) = spawned {
            tracing::error!(
                "upstream.password_command: cannot start its thread ({e}); the value read at start-up stays"
            );
        }
        CommandRunner { wake }
    }

    /// Asks for a run now (coalesced with one already asked for).
    pub(super) fn run_now(&self) {
        let mut s = self.wake.state.lock().unwrap_or_else(|p| p.into_inner());
        s.now = true;
        self.wake.cond.notify_all();
    }
}

impl Drop for CommandRunner {
    fn drop(&mut self) {
        let mut s = self.wake.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stop = true;
        self.wake.cond.notify_all();
    }
}

fn refresh_loop(
    argv: &[String],
    refresh: Duration,
    timeout: Duration,
    publish: &watch::Sender<Fetched>,
    wake: &Wake,
) {
    let mut last = Instant::now();
    loop {
        {
            let mut s = wake.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if s.stop {
                    return;
                }
                let due = last + refresh;
                let now = Instant::now();
                if s.now || now >= due {
                    break;
                }
                s = wake
                    .cond
                    .wait_timeout(s, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            s.now = false;
        }
        let since = last.elapsed();
        if since < MIN_GAP {
            std::thread::sleep(MIN_GAP - since);
        }
        let outcome = run(argv, timeout);
        last = Instant::now();
        publish.send_modify(|f| {
            f.generation += 1;
            match outcome {
                Ok(v) => {
                    if !matches!(&f.value, Ok(old) if *old == v) {
                        tracing::info!(
                            "upstream.password_command gave a new value; new logins use it"
                        );
                    }
                    f.value = Ok(v);
                }
                Err(e) => tracing::error!("{e}; new logins keep the last value it gave"),
            }
        });
    }
}

/// One run: the trimmed first and only line of its standard output.
pub(super) fn run(argv: &[String], timeout: Duration) -> Result<Secret, SecretError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SecretError::Spawn {
            program: program.clone(),
            why: e.to_string(),
        })?;
    // Read beside the wait: a full pipe would otherwise stop the command for good.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(p) = pipe {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = p.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
                let _ = tx.send(out);
            });
        }
        rx
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SecretError::TimedOut {
                program,
                secs: timeout.as_secs_f64().ceil() as u64,
            });
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SecretError::Spawn {
                program,
                why: e.to_string(),
            });
        }
    };
    // A child it left behind may hold the pipes open: wait no longer than the timeout.
    let left = timeout.saturating_sub(started.elapsed()) + Duration::from_millis(100);
    let stdout = out.recv_timeout(left).unwrap_or_default();
    if !status.success() {
        let stderr = err
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
        return Err(SecretError::Failed {
            program,
            status: status.to_string(),
            stderr: last_line(&stderr),
        });
    }
    let bad = |problem| SecretError::BadOutput {
        program: program.clone(),
        problem,
    };
    if stdout.len() > MAX_OUTPUT {
        return Err(bad("more than 64 KiB"));
    }
    let text = String::from_utf8(stdout).map_err(|_| bad("something that is not UTF-8"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(bad("nothing"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(bad(
            "more than one line (it should print the password alone)",
        ));
    }
    Ok(Secret::new(value))
}

/// `": <last non-empty line>"`, at most 200 characters; empty when there is none.
fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => {
            let short: String = l.chars().take(200).collect();
            format!(": {short}")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_is_trimmed_and_must_be_one_line() {
        let t = Duration::from_secs(5);
        assert_eq!(run(&sh("printf '  pw \\n'"), t).unwrap().expose(), "pw");
        assert!(matches!(
            run(&sh("printf 'a\\nb\\n'"), t),
            Err(SecretError::BadOutput { .. })
        ));
        // No shell unless asked for: the argument is a file name, not a command line.
        assert!(matches!(
            run(&["echo $HOME".to_string()], t),
            Err(SecretError::Spawn { .. })
        ));
        assert_eq!(
            run(&["echo".into(), "$HOME".into()], t).unwrap().expose(),
            "$HOME"
        );
    }

    #[test]
    fn stderr_is_shortened_to_its_last_line() {
        assert_eq!(last_line(b"first\nsecond\n\n"), ": second");
        assert_eq!(last_line(b""), "");
        assert_eq!(last_line("x".repeat(300).as_bytes()).len(), 202);
    }
}
