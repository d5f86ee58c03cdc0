//! A real browser for tests of the reviewers' page: Debian's `chromium`, driven by
//! `playwright-core` through `tests/browser/driver.mjs`, one command at a time.
//!
//! `cargo xtask setup` installs both (`apt-get install chromium`, `npm ci` in
//! `tests/browser`). The test says what to do and checks what it gets; the script only
//! runs commands (see its header for the protocol), so a failure's story is in Rust.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::workspace_root;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "no browser at {0}: run `cargo xtask setup` (apt-get install chromium) or set CHROMIUM"
    )]
    NoChromium(PathBuf),
    #[error("playwright-core is not installed in {0}: run `cargo xtask setup` (npm ci there)")]
    NoModules(PathBuf),
    #[error("could not start node: {0}")]
    Spawn(std::io::Error),
    #[error("the browser driver exited\n--- driver output (tail) ---\n{0}")]
    Gone(String),
    #[error("the browser did not answer {cmd} within {secs}s\n--- driver output (tail) ---\n{log}")]
    Timeout { cmd: String, secs: u64, log: String },
    #[error("{cmd}: {error}")]
    Command { cmd: String, error: String },
}

/// One page in a fresh browser profile. Dropping it closes the browser.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: tempfile::NamedTempFile,
    /// Longest the test waits for one answer (the driver's own timeout is shorter).
    answer_timeout: Duration,
}

/// Where the driver and its `node_modules` live.
pub fn driver_dir() -> PathBuf {
    workspace_root().join("tests/browser")
}

impl Browser {
    pub fn start() -> Result<Browser, BrowserError> {
        let chromium = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        if !chromium.exists() {
            return Err(BrowserError::NoChromium(chromium));
        }
        let dir = driver_dir();
        if !dir.join("node_modules/playwright-core").exists() {
            return Err(BrowserError::NoModules(dir));
        }
        let log = tempfile::NamedTempFile::new().map_err(BrowserError::Spawn)?;
        let stderr = log.reopen().map_err(BrowserError::Spawn)?;
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group, so the browser it starts goes with it on drop.
            .process_group(0)
            .spawn()
            .map_err(BrowserError::Spawn)?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        // A thread reads answers so a hung browser becomes a timeout, not a hung test.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            lines,
            log,
            answer_timeout: Duration::from_secs(90),
        };
        b.answer("start")?;
        b.answer_timeout = Duration::from_secs(30);
        Ok(b)
    }

    /// What the driver wrote to stderr (the page's console among it).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    fn answer(&mut self, cmd: &str) -> Result<Value, BrowserError> {
        let line = match self.lines.recv_timeout(self.answer_timeout) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(BrowserError::Timeout {
                    cmd: cmd.into(),
                    secs: self.answer_timeout.as_secs(),
                    log: self.log_tail(30),
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BrowserError::Gone(self.log_tail(30)));
            }
        };
        let v: Value = serde_json::from_str(&line).map_err(|e| BrowserError::Command {
            cmd: cmd.into(),
            error: format!("not JSON ({e}): {line}"),
        })?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(BrowserError::Command {
                cmd: cmd.into(),
                error: v["error"].as_str().unwrap_or("?").into(),
            })
        }
    }

    /// Sends one command and returns its answer.
    pub fn call(&mut self, cmd: Value) -> Result<Value, BrowserError> {
        let text = cmd.to_string();
        writeln!(self.stdin, "{text}").map_err(|_| BrowserError::Gone(self.log_tail(30)))?;
        self.answer(&text)
    }

    pub fn goto(&mut self, url: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "goto", "url": url })).map(drop)
    }

    pub fn fill(&mut self, selector: &str, text: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "fill", "selector": selector, "text": text }))
            .map(drop)
    }

    pub fn click(&mut self, selector: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "click", "selector": selector }))
            .map(drop)
    }

    /// Waits until `selector` is visible.
    pub fn wait(&mut self, selector: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "wait", "selector": selector, "state": "visible" }))
            .map(drop)
    }

    /// Waits until nothing matches `selector`.
    pub fn wait_gone(&mut self, selector: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "wait", "selector": selector, "state": "detached" }))
            .map(drop)
    }

    /// The text of the first match.
    pub fn text(&mut self, selector: &str) -> Result<String, BrowserError> {
        let v = self.call(json!({ "cmd": "text", "selector": selector }))?;
        Ok(v["text"].as_str().unwrap_or_default().to_owned())
    }

    pub fn attr(&mut self, selector: &str, name: &str) -> Result<Option<String>, BrowserError> {
        let v = self.call(json!({ "cmd": "attr", "selector": selector, "name": name }))?;
        Ok(v["value"].as_str().map(str::to_owned))
    }

    pub fn count(&mut self, selector: &str) -> Result<u64, BrowserError> {
        let v = self.call(json!({ "cmd": "count", "selector": selector }))?;
        Ok(v["count"].as_u64().unwrap_or(0))
    }

    pub fn screenshot(&mut self, path: &Path) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "screenshot", "path": path }))
            .map(drop)
    }

    /// Errors the page raised or logged so far.
    pub fn page_errors(&mut self) -> Result<Vec<String>, BrowserError> {
        let v = self.call(json!({ "cmd": "errors" }))?;
        Ok(v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({ "cmd": "close" }));
        // The driver removes its profile on the way out; give it a moment, then make sure.
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on the process group this struct started; ESRCH at worst.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
