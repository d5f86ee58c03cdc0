//! The gateway's own database credential, from wherever the operator keeps it: the config
//! file, an environment variable, a file a secret store maintains (systemd
//! `LoadCredential=`, a Kubernetes secret volume) or a command that prints it (a Vault or
//! cloud CLI).
//!
//! A rotation needs no restart: a file is looked at (`stat`) before each upstream login
//! and read again when it changed; a command runs on its own thread every
//! `password_command_refresh_secs` and again as soon as the database refuses the value a
//! login used, and that login is retried once with the new one. Sessions never wait on a
//! file read of another's or on a command: they take the value at hand, and only a login
//! the database refused waits for the fresh run.
//!
//! The value lives in a [`Secret`], whose `Debug` prints nothing of it; errors name the
//! source and what failed, never the value and never the command's output.

mod command;
mod file;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

pub use command::CommandRunner;
pub use file::FileStamp;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("upstream.password_env: environment variable {0} is not set")]
    EnvUnset(String),
    #[error("upstream.password_file: cannot read {path}: {why}")]
    FileRead { path: PathBuf, why: String },
    #[error("upstream.password_file: {0} is empty")]
    FileEmpty(PathBuf),
    #[error("upstream.password_command: cannot run {program}: {why}")]
    Spawn { program: String, why: String },
    #[error("upstream.password_command: {program} exited with {status}{stderr}")]
    Failed {
        program: String,
        status: String,
        /// `": "` and the last line of its standard error, shortened: what the operator
        /// needs to see why; its standard output (the password) is never shown.
        stderr: String,
    },
    #[error("upstream.password_command: {program} did not finish within {secs}s and was killed")]
    TimedOut { program: String, secs: u64 },
    #[error("upstream.password_command: {program} printed {problem}")]
    BadOutput {
        program: String,
        problem: &'static str,
    },
}

/// A credential's value. Cheap to clone; `Debug` redacts it; compared in constant time so
/// that "is this the value the database just refused?" leaks nothing by timing.
#[derive(Clone)]
pub struct Secret(Arc<SecretString>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::new(SecretString::from(value.into())))
    }

    /// The value itself, for the login that sends it and nothing else.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the credential comes from: exactly one of the `[upstream]` keys `password`,
/// `password_env`, `password_file`, `password_command`.
#[derive(Debug, Clone)]
pub enum Source {
    Literal(Secret),
    Env(String),
    File(PathBuf),
    Command {
        argv: Vec<String>,
        refresh: Duration,
        timeout: Duration,
    },
}

impl Source {
    /// The config key it came from, for messages.
    pub fn key(&self) -> &'static str {
        match self {
            Source::Literal(_) => "upstream.password",
            Source::Env(_) => "upstream.password_env",
            Source::File(_) => "upstream.password_file",
            Source::Command { .. } => "upstream.password_command",
        }
    }
}

/// The last value obtained (or why there is none) and how many times it was obtained.
#[derive(Debug, Clone)]
struct Fetched {
    generation: u64,
    value: Result<Secret, SecretError>,
}

/// The gateway's credential: hands out the current value and fetches a fresh one when
/// the source changed or the database refused it.
#[derive(Clone)]
pub struct Credential {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    current: watch::Sender<Fetched>,
    /// A file source: what the file looked like when it was last read.
    stamp: Mutex<Option<FileStamp>>,
    /// A command source: its thread, woken for an immediate run.
    runner: Option<CommandRunner>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.inner.source.key())
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Obtains the first value; a source that cannot give one is a start-up error, so a
    /// wrong path or a broken command is found before the first agent arrives.
    pub fn start(source: Source) -> Result<Self, SecretError> {
        let first = fetch_once(&source)?;
        let (value, stamp) = first;
        let (current, _) = watch::channel(Fetched {
            generation: 1,
            value: Ok(value),
        });
        let mut inner = Inner {
            source,
            current,
            stamp: Mutex::new(stamp),
            runner: None,
        };
        if let Source::Command {
            argv,
            refresh,
            timeout,
        } = &inner.source
        {
            inner.runner = Some(CommandRunner::spawn(
                argv.clone(),
                *refresh,
                *timeout,
                inner.current.clone(),
            ));
        }
        Ok(Credential {
            inner: Arc::new(inner),
        })
    }

    pub fn source(&self) -> &Source {
        &self.inner.source
    }

    /// The value to log in with now. A file is read again if it changed since the last
    /// read; a command's latest output is used as it is (its thread keeps it fresh).
    pub fn current(&self) -> Result<Secret, SecretError> {
        if let Source::File(path) = &self.inner.source {
            let seen = file::stamp(path);
            let mut stamp = self.inner.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_none() || seen != *stamp {
                self.reread(path, &mut stamp);
            }
        }
        self.inner.current.borrow().value.clone()
    }

    /// The database refused `used`: a fresh value, if the source has one that differs,
    /// for one more attempt. A command is run again now (one run serves every login
    /// refused meanwhile); a file is read again whatever its timestamp says.
    pub async fn refused(&self, used: &Secret) -> Option<Secret> {
        match &self.inner.source {
            Source::Literal(_) | Source::Env(_) => None,
            Source::File(path) => {
                let mut stamp = self.inner.stamp.lock().unwrap_or_else(|p| p.into_inner());
                self.reread(path, &mut stamp);
                drop(stamp);
                self.fresh_unlike(used)
            }
            Source::Command { timeout, .. } => {
                if let Some(fresh) = self.fresh_unlike(used) {
                    return Some(fresh);
                }
                let runner = self.inner.runner.as_ref()?;
                let mut rx = self.inner.current.subscribe();
                let seen = rx.borrow_and_update().generation;
                runner.run_now();
                let wait = *timeout + Duration::from_secs(2) + command::MIN_GAP;
                let _ = tokio::time::timeout(wait, rx.wait_for(|f| f.generation > seen)).await;
                self.fresh_unlike(used)
            }
        }
    }

    fn fresh_unlike(&self, used: &Secret) -> Option<Secret> {
        match &self.inner.current.borrow().value {
            Ok(v) if v != used => Some(v.clone()),
            _ => None,
        }
    }

    fn reread(&self, path: &std::path::Path, stamp: &mut Option<FileStamp>) {
        let value = file::read(path);
        *stamp = match &value {
            Ok(_) => file::stamp(path),
            // Read again at the next login rather than trust a stamp of a bad file.
            Err(_) => None,
        };
        let changed = match (&value, &self.inner.current.borrow().value) {
            (Ok(new), Ok(old)) => new != old,
            _ => true,
        };
        if let Err(e) = &value {
            tracing::error!("{e}");
        } else if changed {
            tracing::info!(
                "upstream.password_file: {} changed; new logins use its new value",
                path.display()
            );
        }
        self.inner.current.send_modify(|f| {
            f.generation += 1;
            f.value = value;
        });
    }
}

/// The first value and, for a file, its stamp.
fn fetch_once(source: &Source) -> Result<(Secret, Option<FileStamp>), SecretError> {
    match source {
        Source::Literal(s) => Ok((s.clone(), None)),
        Source::Env(var) => std::env::var(var)
            .map(|v| (Secret::new(v), None))
            .map_err(|_| SecretError::EnvUnset(var.clone())),
        Source::File(path) => {
            let stamp = file::stamp(path);
            Ok((file::read(path)?, stamp))
        }
        Source::Command { argv, timeout, .. } => Ok((command::run(argv, *timeout)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-upstream");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let c = Credential::start(Source::Literal(s.clone())).unwrap();
        let shown = format!("{c:?} {:?}", c.source());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(c.current().unwrap(), s);
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
    }

    #[test]
    fn an_unset_variable_names_itself() {
        let e = Credential::start(Source::Env("PORTCULLIS_TEST_SURELY_UNSET".into())).unwrap_err();
        assert!(
            e.to_string().contains("PORTCULLIS_TEST_SURELY_UNSET"),
            "{e}"
        );
    }

    #[test]
    fn a_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\n").unwrap();
        let c = Credential::start(Source::File(path.clone())).unwrap();
        assert_eq!(c.current().unwrap().expose(), "first");
        // A secret store replaces the file (a new inode), as kubelet and systemd do.
        let tmp = dir.path().join("pw.new");
        std::fs::write(&tmp, "second\r\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(c.current().unwrap().expose(), "second");
        std::fs::remove_file(&path).unwrap();
        let e = c.current().unwrap_err();
        assert!(matches!(e, SecretError::FileRead { .. }), "{e}");
        assert!(!e.to_string().contains("second"), "{e}");
        std::fs::write(&path, "third").unwrap();
        assert_eq!(c.current().unwrap().expose(), "third");
    }

    #[tokio::test]
    async fn a_refused_file_value_is_read_again_even_if_its_stamp_did_not_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "old").unwrap();
        let c = Credential::start(Source::File(path.clone())).unwrap();
        let used = c.current().unwrap();
        assert!(
            c.refused(&used).await.is_none(),
            "same value: nothing to retry"
        );
        std::fs::write(&path, "new").unwrap();
        assert_eq!(c.refused(&used).await.unwrap().expose(), "new");
    }

    #[tokio::test]
    async fn a_command_runs_again_when_its_value_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let value = dir.path().join("value");
        std::fs::write(&value, "one\n").unwrap();
        let c = Credential::start(Source::Command {
            argv: vec!["cat".into(), value.display().to_string()],
            refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let used = c.current().unwrap();
        assert_eq!(used.expose(), "one");
        std::fs::write(&value, "  two  \n").unwrap();
        // The interval is an hour: only the refusal makes it run again.
        assert_eq!(c.current().unwrap().expose(), "one");
        let fresh = c.refused(&used).await.unwrap();
        assert_eq!(fresh.expose(), "two");
        assert_eq!(c.current().unwrap().expose(), "two");
        assert!(c.refused(&fresh).await.is_none(), "no newer value");
    }

    #[tokio::test]
    async fn a_command_runs_again_on_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let value = dir.path().join("value");
        std::fs::write(&value, "one").unwrap();
        let c = Credential::start(Source::Command {
            argv: vec!["cat".into(), value.display().to_string()],
            refresh: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        std::fs::write(&value, "two").unwrap();
        let mut rx = c.inner.current.subscribe();
        rx.wait_for(|f| matches!(&f.value, Ok(v) if v.expose() == "two"))
            .await
            .unwrap();
        assert_eq!(c.current().unwrap().expose(), "two");
    }

    #[test]
    fn a_failing_command_says_why_without_its_output() {
        let e = Credential::start(Source::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo s3cr3t-out; echo vault: permission denied >&2; exit 3".into(),
            ],
            refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        })
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("vault: permission denied"), "{text}");
        assert!(!text.contains("s3cr3t-out"), "{text}");
        let e = Credential::start(Source::Command {
            argv: vec!["/nonexistent/vault".into()],
            refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        })
        .unwrap_err();
        assert!(matches!(e, SecretError::Spawn { .. }), "{e}");
        let e = Credential::start(Source::Command {
            argv: vec!["sleep".into(), "5".into()],
            refresh: Duration::from_secs(60),
            timeout: Duration::from_millis(200),
        })
        .unwrap_err();
        assert!(matches!(e, SecretError::TimedOut { .. }), "{e}");
        let e = Credential::start(Source::Command {
            argv: vec!["true".into()],
            refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        })
        .unwrap_err();
        assert!(matches!(e, SecretError::BadOutput { .. }), "{e}");
    }
}
