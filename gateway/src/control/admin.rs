//! The admin socket: where an operator asks the running gateway to reload its
//! configuration and hears back whether it took.
//!
//! SIGHUP reloads too, but a signal carries no answer: a refused file only shows up in
//! the log. `portcullis reload` sends `reload` here and prints the one-line verdict, so
//! `systemctl reload` (and a script) can fail when the new rules were refused.
//!
//! # Protocol
//!
//! One command per connection, one line each way. The client sends `reload\n`,
//! `status\n` or an `approvals …` line (a reviewer's command, see
//! [`super::admin_approvals`]); the gateway answers one line starting with `ok: ` or
//! `error: ` and closes. A command longer than [`MAX_REQUEST`] bytes
//! ([`admin_approvals::MAX_LINE`] for `approvals`), or one not finished within the read
//! timeout, gets an `error:` answer, so a stuck client cannot hold a handler open.
//!
//! # Where it lives
//!
//! The socket is served on the control thread (the one that waits for signals), never
//! on the data-path workers, and reloads go through [`Control::reload`], the same
//! function SIGHUP calls.
//!
//! Off unless `[admin] socket` is set. No default path, because any fixed one would be
//! wrong somewhere: `/run/portcullis` exists only where a service manager made it, and two
//! gateways on one host (tests, a quickstart next to a service) would fight over it. The
//! socket is created mode 0600: file permissions are the only access control, and the
//! only users who should reload the gateway (or decide held statements through it) are
//! its own user and root.

use std::convert::Infallible;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, error, info, warn};

use super::admin_approvals::{self, ApprovalsCommand, Peer};
use super::admin_grants;
use crate::config::{Config, ConfigError, IoEngine};
use crate::engine::shared::SharedError;
use crate::engine::{Phase, Shared};

/// Longest command line accepted; real commands are a few bytes.
pub const MAX_REQUEST: usize = 256;
/// Time a client has to send its command, and the gateway to hand over the answer.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time `portcullis reload` waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer the client reads: status lines are a few hundred bytes, but `approvals
/// list --all` answers with up to a thousand requests, statements and all.
const MAX_ANSWER: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin.socket: {} is in use by a running gateway; stop it or give this one another path",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "admin.socket: {} exists and is not a socket; refusing to replace it",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("admin.socket: cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("is the gateway running? admin socket {} not found", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "is the gateway running? nothing listens on admin socket {} (a stale file from a gateway that died)",
        path.display()
    )]
    NotListening { path: PathBuf },
    #[error(
        "permission denied on admin socket {}: run this as the gateway's user or root",
        path.display()
    )]
    Denied { path: PathBuf },
    #[error("admin socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {}: no answer within {}s", path.display(), CLIENT_TIMEOUT.as_secs())]
    NoAnswer { path: PathBuf },
    #[error("admin socket {}: not a Portcullis answer: {answer:?}", path.display())]
    BadAnswer { path: PathBuf, answer: String },
    #[error("admin socket {}: the answer is longer than {} MiB", path.display(), MAX_ANSWER >> 20)]
    AnswerTooLong { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: not valid TOML, so its admin socket is unknown (the gateway was not asked anything and keeps its configuration): {message}",
        path.display()
    )]
    ConfigSyntax { path: PathBuf, message: String },
    #[error(
        "{} has no [admin] socket: add `[admin] socket = \"/run/portcullis/admin.sock\"` and restart the gateway, pass --admin-socket, or reload with SIGHUP",
        path.display()
    )]
    NoAdminSocket { path: PathBuf },
}

/// Why a reload was refused. The running configuration is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Apply(#[from] SharedError),
}

impl ReloadError {
    pub fn one_line(&self) -> String {
        match self {
            ReloadError::Config(e) => e.one_line(),
            ReloadError::Apply(e) => e.to_string(),
        }
    }
}

/// What a successful reload put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub identities: usize,
    pub mask_rules: usize,
    /// `None`: no `[policy]` (every statement is refused).
    pub policy_rules: Option<usize>,
    /// Sections that differ from the file the gateway started with but only apply at
    /// start-up: the operator must restart for them, and is told so.
    pub needs_restart: Vec<&'static str>,
}

/// The sections a reload cannot apply, each as a comparable fingerprint (their `Debug`
/// form: never logged, since `[upstream]` may hold a password).
fn restart_only(cfg: &Config) -> [(&'static str, String); 7] {
    [
        ("[server]", format!("{:?}", cfg.server)),
        ("[upstream]", format!("{:?}", cfg.upstream)),
        ("[log]", format!("{:?}", cfg.log)),
        ("[admin]", format!("{:?}", cfg.admin)),
        ("[console]", format!("{:?}", cfg.console)),
        // Each worker's pools are sized as it starts.
        ("[pool]", format!("{:?}", cfg.pool)),
        ("[metrics]", format!("{:?}", cfg.metrics)),
    ]
}

/// The sections of [`restart_only`], by their TOML names.
pub const RESTART_ONLY: [&str; 7] = [
    "server", "upstream", "log", "admin", "console", "pool", "metrics",
];

/// Who asked for a reload, for the log and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    /// The admin console's `RELOAD`.
    Console,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
            Trigger::Console => "console",
        }
    }
}

/// A command read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reload,
    Status,
    Approvals(ApprovalsCommand),
    Grants(admin_grants::GrantsCommand),
}

/// Why a request is not a command; the text goes back to the client after `error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty command (commands: reload, status, approvals, grants)")]
    Empty,
    #[error("unknown command {0:?} (commands: reload, status, approvals, grants)")]
    Unknown(String),
    #[error("command longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("approvals command longer than {} bytes", admin_approvals::MAX_LINE)]
    ApprovalsTooLong,
    #[error(transparent)]
    Approvals(#[from] admin_approvals::CommandError),
    #[error(transparent)]
    Grants(#[from] admin_grants::GrantsCommandError),
}

/// Whether a request (or the start of one) is a reviewer's command, allowed a longer
/// line.
fn is_approvals(line: &[u8]) -> bool {
    line == b"approvals"
        || line.starts_with(b"approvals ")
        || line == b"grants"
        || line.starts_with(b"grants ")
}

/// Parses one request line (its newline already stripped or not). Surrounding blanks and a
/// `\r` are tolerated so `printf`, `socat` and `nc` all work.
pub fn parse_command(line: &[u8]) -> Result<Command, RequestError> {
    let approvals = is_approvals(line.trim_ascii_start());
    if approvals && line.len() > admin_approvals::MAX_LINE {
        return Err(RequestError::ApprovalsTooLong);
    }
    if !approvals && line.len() > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let text = String::from_utf8_lossy(line);
    match text.trim() {
        "reload" => Ok(Command::Reload),
        "status" => Ok(Command::Status),
        "" => Err(RequestError::Empty),
        t if approvals && t.starts_with("grants") => Ok(Command::Grants(
            admin_grants::GrantsCommand::parse(t.strip_prefix("grants").unwrap_or(t))?,
        )),
        t if approvals => Ok(Command::Approvals(ApprovalsCommand::parse(
            t.strip_prefix("approvals").unwrap_or(t),
        )?)),
        // Echo a bounded, printable copy: this text goes back into a one-line answer.
        other => Err(RequestError::Unknown(other.chars().take(64).collect())),
    }
}

/// Reads one request: the bytes before the first newline, or before EOF. `Ok(None)` when
/// the client closed without sending anything (a liveness probe).
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 128];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!buf.is_empty()).then_some(buf));
        }
        let got = &chunk[..n];
        if let Some(end) = memchr::memchr(b'\n', got) {
            buf.extend_from_slice(&got[..end]);
            return Ok(Some(buf));
        }
        buf.extend_from_slice(got);
        // Past the limit the command is refused whatever follows: stop reading.
        let limit = if is_approvals(buf.trim_ascii_start()) {
            admin_approvals::MAX_LINE
        } else {
            MAX_REQUEST
        };
        if buf.len() > limit {
            return Ok(Some(buf));
        }
    }
}

/// One answer line: `ok: …` or `error: …`, newline-terminated, with any line break inside
/// the text flattened so the answer stays one line.
fn answer(result: Result<String, String>) -> String {
    let (prefix, text) = match result {
        Ok(t) => ("ok", t),
        Err(t) => ("error", t),
    };
    let flat: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("{prefix}: {}\n", flat.join(" | "))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}, {}",
            plural(self.identities, "identity", "identities"),
            plural(self.mask_rules, "masking rule", "masking rules"),
            match self.policy_rules {
                Some(n) => plural(n, "policy rule", "policy rules"),
                None => "no [policy] (every statement refused)".into(),
            }
        )
    }
}

struct LastReload {
    at: Instant,
    trigger: Trigger,
    refused: Option<String>,
}

struct State {
    active: Reloaded,
    last: Option<LastReload>,
    /// SHA-256 of the running `[policy]` and `[mask]` sections, for the audit record of
    /// the next reload.
    policy_digest: String,
    /// The running file as TOML, for `SHOW CONFIG`: the last one applied, with the
    /// restart-only sections as the gateway started.
    file: toml::Table,
}

/// Reads a configuration file as a TOML table; empty if it cannot be read.
fn file_table(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .unwrap_or_default()
}

/// What `SHOW STATS` reports of the gateway, as `status` does.
#[derive(Debug, Clone)]
pub struct Overview {
    pub pid: u32,
    pub listen: String,
    pub engine: &'static str,
    pub workers: usize,
    pub uptime_secs: u64,
    /// `running`, `draining`, `stopping`.
    pub state: &'static str,
    pub identities: usize,
    pub mask_rules: usize,
    pub policy_rules: Option<usize>,
    /// `never`, `ok` or `refused`, by whom, how long ago.
    pub last_reload: &'static str,
    pub last_reload_by: Option<&'static str>,
    pub last_reload_secs_ago: Option<u64>,
    pub last_reload_error: Option<String>,
    pub config: PathBuf,
}

/// SHA-256 (hex) of a configuration file's `[policy]` and `[mask]` sections, as TOML
/// values (so comments and layout do not change it); empty if the file cannot be read.
pub fn policy_digest(path: &std::path::Path) -> String {
    use sha2::Digest;
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let Ok(value) = text.parse::<toml::Table>() else {
        return String::new();
    };
    let mut h = sha2::Sha256::new();
    for key in ["policy", "mask"] {
        if let Some(v) = value.get(key) {
            h.update(key.as_bytes());
            h.update(toml::to_string(v).unwrap_or_default().as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// The running gateway as the control thread sees it: what reloads change and what
/// `status` reports. SIGHUP and the admin socket share one instance.
pub struct Control {
    shared: Arc<Shared>,
    config: PathBuf,
    engine: IoEngine,
    workers: usize,
    listen: String,
    started: Instant,
    /// The start-up file's restart-only sections, as read from the file (flags and
    /// environment overrides are not differences the operator made in it).
    boot: Option<[(&'static str, String); 7]>,
    /// Held for the whole reload, so two at once apply in order and `status` never
    /// reports one that another has already replaced.
    state: Mutex<State>,
}

impl Control {
    /// `cfg` is what the gateway started with, read from `config`.
    pub fn new(
        shared: Arc<Shared>,
        cfg: &Config,
        config: PathBuf,
        engine: IoEngine,
        workers: usize,
        listen: String,
    ) -> Self {
        let digest = policy_digest(&config);
        let file = file_table(&config);
        Control {
            shared,
            engine,
            workers,
            listen,
            started: Instant::now(),
            boot: Config::load(&config).ok().map(|c| restart_only(&c)),
            config,
            state: Mutex::new(State {
                active: Reloaded {
                    identities: cfg.identities.len(),
                    mask_rules: cfg.mask.rules.len(),
                    policy_rules: cfg.policy.as_ref().map(|p| p.rules.len()),
                    needs_restart: Vec::new(),
                },
                last: None,
                policy_digest: digest,
                file,
            }),
        }
    }

    /// Re-reads the configuration file and applies what can change without a restart
    /// (identities, masking rules); on any error the running configuration stays.
    /// Logs the outcome itself, since SIGHUP has nobody else to tell.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        self.reload_by(trigger, trigger.as_str())
    }

    /// [`Control::reload`], recording `by` (who asked) in the audit log.
    pub fn reload_by(&self, trigger: Trigger, by: &str) -> Result<Reloaded, ReloadError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.policy_digest.clone();
        let result = Config::load(&self.config)
            .map_err(ReloadError::from)
            .and_then(|cfg| {
                self.shared.reload(&cfg)?;
                let needs_restart = match &self.boot {
                    Some(boot) => boot
                        .iter()
                        .zip(restart_only(&cfg))
                        .filter(|(a, b)| a.1 != b.1)
                        .map(|(a, _)| a.0)
                        .collect(),
                    None => Vec::new(),
                };
                Ok(Reloaded {
                    identities: cfg.identities.len(),
                    mask_rules: cfg.mask.rules.len(),
                    policy_rules: cfg.policy.as_ref().map(|p| p.rules.len()),
                    needs_restart,
                })
            });
        match &result {
            Ok(r) => {
                info!(
                    identities = r.identities,
                    mask_rules = r.mask_rules,
                    by = trigger.as_str(),
                    "configuration reloaded"
                );
                if !r.needs_restart.is_empty() {
                    warn!(
                        sections = %r.needs_restart.join(", "),
                        "these sections changed in the file and apply only at a restart"
                    );
                }
                state.active = r.clone();
                let mut file = file_table(&self.config);
                for section in RESTART_ONLY {
                    match state.file.get(section) {
                        Some(v) => file.insert(section.to_owned(), v.clone()),
                        None => file.remove(section),
                    };
                }
                state.file = file;
            }
            Err(e) => error!(
                by = trigger.as_str(),
                "reload refused, keeping the running configuration: {e}"
            ),
        }
        let after = if result.is_ok() {
            policy_digest(&self.config)
        } else {
            before.clone()
        };
        if let Some(log) = &self.shared.audit {
            let error = result.as_ref().err().map(ReloadError::one_line);
            log.record(&crate::audit::Body::ConfigReload {
                by,
                ok: result.is_ok(),
                error: error.as_deref(),
                policy_before_sha256: &before,
                policy_after_sha256: &after,
            });
        }
        state.policy_digest = after;
        state.last = Some(LastReload {
            at: Instant::now(),
            trigger,
            refused: result.as_ref().err().map(ReloadError::one_line),
        });
        result
    }

    /// Runs one command for `peer` and renders its answer line.
    pub async fn execute(&self, command: Command, peer: &Peer) -> String {
        match command {
            Command::Approvals(cmd) => {
                answer(admin_approvals::run(self.shared.approvals.as_deref(), cmd, peer).await)
            }
            Command::Grants(cmd) => {
                answer(admin_grants::run(self.shared.approvals.as_deref(), cmd, peer).await)
            }
            Command::Reload => answer(
                self.reload_by(
                    Trigger::Admin,
                    &format!(
                        "admin socket ({})",
                        peer.user
                            .clone()
                            .or(peer.uid.map(|u| format!("uid {u}")))
                            .unwrap_or_else(|| "unknown peer".into())
                    ),
                )
                .map(|r| {
                    let mut line = format!("reloaded {r} from {}", self.config.display());
                    if !r.needs_restart.is_empty() {
                        line += &format!(
                            "; changed but applied only at a restart: {}",
                            r.needs_restart.join(", ")
                        );
                    }
                    line
                })
                .map_err(|e| {
                    format!(
                        "reload refused, the running configuration is kept: {}",
                        e.one_line()
                    )
                }),
            ),
            Command::Status => answer(Ok(self.status())),
        }
    }

    /// The running configuration file as TOML (see [`State::file`]).
    pub fn running_file(&self) -> toml::Table {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .clone()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The gateway's engine, as `status` names it.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            IoEngine::Uring => "uring",
            IoEngine::Epoll => "epoll",
            IoEngine::Auto => "auto",
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// What `status` says, as values.
    pub fn overview(&self) -> Overview {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Overview {
            pid: std::process::id(),
            listen: self.listen.clone(),
            engine: self.engine_name(),
            workers: self.workers,
            uptime_secs: self.started.elapsed().as_secs(),
            state: match self.shared.lifecycle.phase() {
                Phase::Running => "running",
                Phase::Draining => "draining",
                Phase::Cutting | Phase::Exiting => "stopping",
            },
            identities: state.active.identities,
            mask_rules: state.active.mask_rules,
            policy_rules: state.active.policy_rules,
            last_reload: match &state.last {
                None => "never",
                Some(l) if l.refused.is_some() => "refused",
                Some(_) => "ok",
            },
            last_reload_by: state.last.as_ref().map(|l| l.trigger.as_str()),
            last_reload_secs_ago: state.last.as_ref().map(|l| l.at.elapsed().as_secs()),
            last_reload_error: state.last.as_ref().and_then(|l| l.refused.clone()),
            config: self.config.clone(),
        }
    }

    fn status(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let engine = match self.engine {
            IoEngine::Uring => "uring",
            IoEngine::Epoll => "epoll",
            IoEngine::Auto => "auto",
        };
        let mut s = format!(
            "pid={} listen={} engine={engine} workers={} sessions={} identities={} mask_rules={} policy_rules={} uptime_secs={}",
            std::process::id(),
            self.listen,
            self.workers,
            self.shared.lifecycle.sessions(),
            state.active.identities,
            state.active.mask_rules,
            state
                .active
                .policy_rules
                .map_or_else(|| "none".to_owned(), |n| n.to_string()),
            self.started.elapsed().as_secs(),
        );
        s.push_str(match self.shared.lifecycle.phase() {
            Phase::Running => " state=running",
            Phase::Draining => " state=draining",
            Phase::Cutting | Phase::Exiting => " state=stopping",
        });
        // The server slots the gateway holds for its own questions (catalog lookups,
        // approvals' estimates): open of wanted, then per database.
        let side = self.shared.side.status();
        s.push_str(&format!(" reserved={}/{}", side.open, side.target));
        if !side.databases.is_empty() {
            let per: Vec<String> = side
                .databases
                .iter()
                .map(|(db, open, target)| format!("{db}:{open}/{target}"))
                .collect();
            s.push_str(&format!(" reserved_by_database={}", per.join(",")));
        }
        match &state.last {
            None => s.push_str(" last_reload=never"),
            Some(last) => s.push_str(&format!(
                " last_reload={} last_reload_by={} last_reload_secs_ago={}",
                if last.refused.is_some() {
                    "refused"
                } else {
                    "ok"
                },
                last.trigger.as_str(),
                last.at.elapsed().as_secs()
            )),
        }
        match &self.shared.audit {
            None => s.push_str(" audit=off"),
            Some(log) => {
                let c = log.counters();
                s.push_str(&format!(
                    " audit={} audit_records={} audit_syncs={} audit_lost={}",
                    if log.accepting().is_ok() {
                        "ok"
                    } else {
                        "refusing"
                    },
                    c.records.load(std::sync::atomic::Ordering::Relaxed),
                    c.syncs.load(std::sync::atomic::Ordering::Relaxed),
                    c.lost.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        }
        // Free text last and quoted, so the fields before it split on blanks.
        s.push_str(&format!(" config={:?}", self.config.display().to_string()));
        if let Some(Some(why)) = state.last.as_ref().map(|l| &l.refused) {
            s.push_str(&format!(" last_error={why:?}"));
        }
        s
    }
}

/// The listening admin socket. Dropping it removes the socket file, if it is still ours.
pub struct AdminSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// (device, inode) of the file we bound, so drop never removes someone else's.
    file: (u64, u64),
    timeout: Duration,
}

impl AdminSocket {
    /// Binds `path` mode 0600, replacing a stale socket file nobody listens on. Must run
    /// inside a tokio runtime, and before any other thread exists: it narrows the umask
    /// for the bind, which is process-wide.
    pub fn bind(path: &Path) -> Result<Self, AdminError> {
        claim(path)?;
        let bind_err = |source| AdminError::Bind {
            path: path.to_owned(),
            source,
        };
        // The umask keeps the socket private from its creation on; the chmod after it
        // makes 0600 hold whatever the umask semantics of the filesystem.
        // SAFETY: umask(2) cannot fail; the caller guarantees no other thread creates
        // files meanwhile.
        let old = unsafe { libc::umask(0o177) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        let std_listener = bound.map_err(bind_err)?;
        let socket = (|| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            let meta = std::fs::metadata(path)?;
            std_listener.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(std_listener)?;
            Ok(AdminSocket {
                listener,
                path: path.to_owned(),
                file: (meta.dev(), meta.ino()),
                timeout: SERVER_TIMEOUT,
            })
        })();
        socket.map_err(|source| {
            let _ = std::fs::remove_file(path);
            bind_err(source)
        })
    }

    /// A shorter per-client timeout, for tests.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each on its own task so a slow one delays nobody.
    pub async fn serve(&self, control: Arc<Control>) -> Infallible {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let control = control.clone();
                    let timeout = self.timeout;
                    tokio::spawn(async move { handle(stream, &control, timeout).await });
                }
                Err(e) => {
                    // EMFILE and the like pass; a tight retry loop would not help them.
                    warn!("admin socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.file)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), "cannot remove the admin socket: {e}");
        }
    }
}

/// Makes `path` free to bind: nothing there, or a stale socket (removed). A socket with
/// a listener behind it, or anything that is not a socket, is refused.
fn claim(path: &Path) -> Result<(), AdminError> {
    let bind_err = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bind_err(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(AdminError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AdminError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing a stale admin socket");
            std::fs::remove_file(path).map_err(bind_err)
        }
        Err(e) => Err(bind_err(e)),
    }
}

async fn handle(mut stream: tokio::net::UnixStream, control: &Control, timeout: Duration) {
    let peer = Peer::of(&stream);
    let request = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
        Err(_) => Err(format!("no command within {}s", timeout.as_secs_f32())),
        Ok(Err(e)) => {
            debug!("admin socket: read failed: {e}");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(line))) => parse_command(&line).map_err(|e| e.to_string()),
    };
    let reply = match request {
        Ok(command) => control.execute(command, &peer).await,
        Err(why) => answer(Err(why)),
    };
    // The answer fits in the socket buffer; the timeout only matters for a peer gone odd.
    if let Ok(Err(e)) = tokio::time::timeout(timeout, stream.write_all(reply.as_bytes())).await {
        debug!("admin socket: write failed: {e}");
    }
}

/// The gateway's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Whether it started with `ok:`.
    pub ok: bool,
    /// The whole line, without its newline.
    pub line: String,
}

/// Sends one command to the admin socket at `path` and returns the answer.
pub fn request(path: &Path, command: &str) -> Result<Answer, AdminError> {
    let p = || path.to_owned();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => AdminError::NotFound { path: p() },
        ErrorKind::ConnectionRefused => AdminError::NotListening { path: p() },
        ErrorKind::PermissionDenied => AdminError::Denied { path: p() },
        _ => AdminError::Io {
            path: p(),
            source: e,
        },
    })?;
    let io = |source: std::io::Error| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => AdminError::NoAnswer { path: p() },
        _ => AdminError::Io { path: p(), source },
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io)?;
    // Up to the newline, not EOF: after an answer to an over-long command the server
    // closes with bytes unread, and the kernel then turns EOF into a reset.
    let mut raw = Vec::new();
    let mut reader = std::io::BufReader::new(stream.take(MAX_ANSWER as u64));
    std::io::BufRead::read_until(&mut reader, b'\n', &mut raw).map_err(io)?;
    if raw.len() >= MAX_ANSWER && !raw.ends_with(b"\n") {
        return Err(AdminError::AnswerTooLong { path: p() });
    }
    let text = String::from_utf8_lossy(&raw);
    let line = text.lines().next().unwrap_or("").to_owned();
    let ok = line.starts_with("ok:");
    if !ok && !line.starts_with("error:") {
        return Err(AdminError::BadAnswer {
            path: p(),
            answer: line,
        });
    }
    Ok(Answer { ok, line })
}

/// The `[admin] socket` of a configuration file. Reads only that key, leniently: a file
/// the gateway would refuse must still lead to the gateway, which then says why.
pub fn socket_from_config(config: &Path) -> Result<PathBuf, AdminError> {
    let text = std::fs::read_to_string(config).map_err(|source| AdminError::ReadConfig {
        path: config.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| AdminError::ConfigSyntax {
        path: config.to_owned(),
        message: e.message().trim().to_owned(),
    })?;
    table
        .get("admin")
        .and_then(|a| a.get("socket"))
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| AdminError::NoAdminSocket {
            path: config.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command(b"reload"), Ok(Command::Reload));
        assert_eq!(parse_command(b"status"), Ok(Command::Status));
        assert_eq!(parse_command(b"  reload\r"), Ok(Command::Reload));
        assert_eq!(parse_command(b""), Err(RequestError::Empty));
        assert_eq!(parse_command(b" \r"), Err(RequestError::Empty));
        assert_eq!(
            parse_command(b"RELOAD"),
            Err(RequestError::Unknown("RELOAD".into()))
        );
        assert_eq!(
            parse_command(b"reload now"),
            Err(RequestError::Unknown("reload now".into()))
        );
        assert_eq!(
            parse_command(&[b'x'; MAX_REQUEST + 1]),
            Err(RequestError::TooLong)
        );
    }

    #[test]
    fn unknown_commands_are_echoed_bounded_and_on_one_line() {
        let e = parse_command(&[0xff, b'\t', b'x']).unwrap_err().to_string();
        assert!(e.starts_with("unknown command \"\u{fffd}\\tx\""), "{e}");
        let long = "y".repeat(MAX_REQUEST);
        let e = parse_command(long.as_bytes()).unwrap_err().to_string();
        assert!(e.len() < 140, "{e}");
        let a = answer(Err(parse_command(b"a\x0bb").unwrap_err().to_string()));
        assert_eq!(a.matches('\n').count(), 1, "{a:?}");
    }

    #[test]
    fn answers_are_one_line() {
        assert_eq!(answer(Ok("fine".into())), "ok: fine\n");
        assert_eq!(
            answer(Err("TOML parse error\n  |\n3 | x\nunknown field".into())),
            "error: TOML parse error | | | 3 | x | unknown field\n"
        );
    }

    #[test]
    fn reload_summary_counts() {
        let mut r = Reloaded {
            identities: 1,
            mask_rules: 2,
            policy_rules: Some(3),
            needs_restart: Vec::new(),
        };
        assert_eq!(r.to_string(), "1 identity, 2 masking rules, 3 policy rules");
        r.mask_rules = 1;
        r.policy_rules = None;
        assert_eq!(
            r.to_string(),
            "1 identity, 1 masking rule, no [policy] (every statement refused)"
        );
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn requests_end_at_newline_eof_or_the_limit() {
        rt().block_on(async {
            let read = |b: &'static [u8]| async move { read_request(&mut &b[..]).await.unwrap() };
            assert_eq!(read(b"status\nrest").await, Some(b"status".to_vec()));
            assert_eq!(read(b"reload").await, Some(b"reload".to_vec()));
            assert_eq!(read(b"").await, None);
            let long: &'static [u8] = Box::leak(vec![b'a'; 10_000].into_boxed_slice());
            let got = read(long).await.unwrap();
            assert!(got.len() > MAX_REQUEST && got.len() < 1000, "{}", got.len());
            assert_eq!(parse_command(&got), Err(RequestError::TooLong));
        });
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "portcullis-admin-{tag}-{}-{:?}",
                std::process::id(),
                Instant::now()
            ));
            let dir = PathBuf::from(dir.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config_text(extra: &str) -> String {
        let v = crate::auth::Verifier::generate("s", 16);
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"p\"\npassword = \"x\"\n[[identity]]\nname = \"agent\"\nsecret = \"{v}\"\n{extra}"
        )
    }

    fn control(path: &Path) -> Arc<Control> {
        let cfg = Config::load(path).unwrap();
        let shared = Arc::new(Shared::from_config(&cfg).unwrap());
        Arc::new(Control::new(
            shared,
            &cfg,
            path.to_owned(),
            IoEngine::Epoll,
            1,
            "127.0.0.1:0".into(),
        ))
    }

    fn bind(rt: &tokio::runtime::Runtime, path: &Path) -> Result<AdminSocket, AdminError> {
        let _rt = rt.enter();
        AdminSocket::bind(path)
    }

    /// Sends raw bytes and returns whatever comes back before the server closes.
    async fn raw(path: &Path, send: &[u8], then_eof: bool) -> String {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(send).await.unwrap();
        if then_eof {
            s.shutdown().await.unwrap();
        }
        let mut back = Vec::new();
        let mut buf = [0u8; 512];
        // A reset after the answer is expected when the server left bytes unread.
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            back.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(back).unwrap()
    }

    #[test]
    fn the_socket_answers_reloads_and_cleans_up() {
        let dir = Scratch::new("answers");
        let config = dir.0.join("gw.toml");
        std::fs::write(&config, config_text("")).unwrap();
        let control = control(&config);
        let sock = dir.0.join("admin.sock");
        let rt = rt();
        let admin = bind(&rt, &sock)
            .unwrap()
            .with_timeout(Duration::from_secs(2));
        let meta = std::fs::metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A listening socket is never taken over, served yet or not.
        assert!(matches!(bind(&rt, &sock), Err(AdminError::InUse { .. })));

        let ask = |cmd: &'static str| {
            let sock = sock.clone();
            tokio::task::spawn_blocking(move || request(&sock, cmd).unwrap())
        };
        rt.block_on(async {
            let serving = admin.serve(control.clone());
            tokio::pin!(serving);
            let script = async {
                let a = ask("status").await.unwrap();
                assert!(a.ok, "{a:?}");
                assert!(a.line.contains(" identities=1 "), "{a:?}");
                assert!(a.line.contains(" last_reload=never "), "{a:?}");
                assert!(a.line.contains(" audit=off "), "{a:?}");

                let a = ask("reload").await.unwrap();
                assert!(a.ok, "{a:?}");
                assert!(
                    a.line
                        .starts_with("ok: reloaded 1 identity, 0 masking rules, no [policy] (every statement refused) from "),
                    "{a:?}"
                );
                assert!(!a.line.contains("restart"), "{a:?}");

                // A section read only at start-up changed: applied later, and said so.
                std::fs::write(&config, config_text("").replace(":0\"", ":1\"")).unwrap();
                let a = ask("reload").await.unwrap();
                assert!(
                    a.ok && a
                        .line
                        .ends_with("; changed but applied only at a restart: [server]"),
                    "{a:?}"
                );

                std::fs::write(&config, config_text("bogus = 1\n")).unwrap();
                let a = ask("reload").await.unwrap();
                assert!(!a.ok, "{a:?}");
                assert!(
                    a.line
                        .starts_with("error: reload refused, the running configuration is kept: "),
                    "{a:?}"
                );
                assert!(a.line.contains("unknown field `bogus`"), "{a:?}");
                let a = ask("status").await.unwrap();
                assert!(a.line.contains(" last_reload=refused "), "{a:?}");
                assert!(a.line.contains(" last_reload_by=admin "), "{a:?}");
                assert!(a.line.contains("last_error=") && a.line.contains("bogus"));

                let a = ask("frobnicate").await.unwrap();
                assert_eq!(
                    a.line,
                    "error: unknown command \"frobnicate\" (commands: reload, status, approvals, grants)"
                );

                // A client that never finishes its line is answered and dropped at the
                // timeout; others are served meanwhile.
                let stuck = tokio::spawn({
                    let sock = sock.clone();
                    async move {
                        let started = Instant::now();
                        (raw(&sock, b"rel", false).await, started.elapsed())
                    }
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(ask("status").await.unwrap().ok);
                assert!(!stuck.is_finished(), "the stuck client held up the others");
                let (back, took) = stuck.await.unwrap();
                assert_eq!(back, "error: no command within 2s\n");
                assert!(took >= Duration::from_millis(1900), "{took:?}");

                let back = raw(&sock, &[b'a'; 10_000], false).await;
                assert_eq!(back, "error: command longer than 256 bytes\n");
                // EOF ends a command as a newline would.
                assert!(raw(&sock, b"status", true).await.starts_with("ok: pid="));
            };
            tokio::select! {
                never = &mut serving => match never {},
                () = script => {}
            }
        });
        drop(admin);
        assert!(!sock.exists(), "the socket outlived its server");
    }

    #[test]
    fn approvals_commands_parse_and_may_be_longer() {
        assert_eq!(
            parse_command(b"approvals show 3"),
            Ok(Command::Approvals(ApprovalsCommand::Show(3)))
        );
        assert_eq!(
            parse_command(b"  approvals list\r"),
            Ok(Command::Approvals(ApprovalsCommand::List(
                Default::default()
            )))
        );
        // An edit carries a statement: far past the limit of the other commands.
        let edit = format!("approvals edit 1 {{\"sql\":\"{}\"}}", "x".repeat(10_000));
        assert!(matches!(
            parse_command(edit.as_bytes()),
            Ok(Command::Approvals(ApprovalsCommand::Vote { .. }))
        ));
        let huge = format!("approvals edit 1 {}", "x".repeat(admin_approvals::MAX_LINE));
        assert_eq!(
            parse_command(huge.as_bytes()),
            Err(RequestError::ApprovalsTooLong)
        );
        // Only `approvals` itself buys the longer line.
        let other = format!("approvalsx {}", "x".repeat(MAX_REQUEST));
        assert_eq!(parse_command(other.as_bytes()), Err(RequestError::TooLong));
        let e = parse_command(b"approvals").unwrap_err().to_string();
        assert!(e.starts_with("approvals: no verb (usage: "), "{e}");
        rt().block_on(async {
            let line: &'static [u8] =
                Box::leak(format!("{edit}\n").into_bytes().into_boxed_slice());
            assert_eq!(
                read_request(&mut &line[..]).await.unwrap().unwrap().len(),
                edit.len()
            );
        });
    }

    #[test]
    fn reviewers_decide_through_the_socket() {
        use crate::approvals::{Approvals, NewRequest, Request, Resolution};

        let dir = Scratch::new("review");
        let config = dir.0.join("gw.toml");
        std::fs::write(&config, config_text("")).unwrap();
        let without = control(&config);
        std::fs::write(
            &config,
            config_text(&format!(
                "[approvals]\nstate_dir = \"{}\"\n",
                dir.0.join("state").display()
            )),
        )
        .unwrap();
        let cfg = Config::load(&config).unwrap();
        let rt = rt();
        let mut shared = Shared::from_config(&cfg).unwrap();
        let store = rt
            .block_on(crate::approvals::store::Store::open(
                cfg.approvals.as_ref().unwrap(),
            ))
            .unwrap();
        let (handle, hub) = Approvals::new(crate::approvals::testkit::settings(None), store);
        rt.spawn(hub.run());
        let handle = Arc::new(handle);
        shared.approvals = Some(handle.clone());
        let with = Arc::new(Control::new(
            Arc::new(shared),
            &cfg,
            config.clone(),
            IoEngine::Epoll,
            1,
            "127.0.0.1:0".into(),
        ));

        let sock = dir.0.join("admin.sock");
        let sock_without = dir.0.join("without.sock");
        let admin = bind(&rt, &sock).unwrap();
        let admin_without = bind(&rt, &sock_without).unwrap();
        let ask = |sock: &Path, line: String| {
            let sock = sock.to_owned();
            tokio::task::spawn_blocking(move || request(&sock, &line).unwrap())
        };
        rt.block_on(async {
            let serving = admin.serve(with.clone());
            let serving_without = admin_without.serve(without.clone());
            tokio::pin!(serving, serving_without);
            let script = async {
                let a = ask(&sock_without, "approvals list".into()).await.unwrap();
                assert_eq!(
                    a.line,
                    "error: approvals are not configured on this gateway ([approvals] section)"
                );

                let ticket = handle
                    .submit(NewRequest::example("DROP TABLE t", 1, 60))
                    .await
                    .unwrap();
                let id = ticket.request.id;
                let a = ask(&sock, "approvals list".into()).await.unwrap();
                assert!(a.ok, "{a:?}");
                let listed: Vec<Request> =
                    serde_json::from_str(a.line.strip_prefix("ok: ").unwrap()).unwrap();
                assert_eq!(listed.len(), 1);
                assert_eq!(listed[0].id, id);

                let a = ask(&sock, "approvals show 999".into()).await.unwrap();
                assert_eq!(a.line, "error: there is no request #999");
                let a = ask(&sock, format!("approvals approve {id} {{}}"))
                    .await
                    .unwrap();
                assert!(
                    a.line.starts_with("error: approve needs the digest"),
                    "{a:?}"
                );

                // No --reviewer: the vote is the socket peer's, by its user name.
                let line = ApprovalsCommand::Vote {
                    verb: admin_approvals::Verb::Approve,
                    id,
                    args: admin_approvals::VoteArgs {
                        reason: Some("fine".into()),
                        digest: Some(ticket.request.digest.clone()),
                        ..Default::default()
                    },
                }
                .to_line();
                let a = ask(&sock, line.clone()).await.unwrap();
                assert!(a.ok, "{a:?}");
                let after: Request =
                    serde_json::from_str(a.line.strip_prefix("ok: ").unwrap()).unwrap();
                // SAFETY: geteuid cannot fail.
                let me = Peer::from_uid(unsafe { libc::geteuid() });
                assert_eq!(Some(&after.votes[0].reviewer), me.reviewer().as_ref());
                assert!(matches!(
                    ticket.outcome.await.unwrap(),
                    Resolution::Run { .. }
                ));
                let a = ask(&sock, line).await.unwrap();
                assert!(a.line.contains("is approved already"), "{a:?}");
                let a = ask(&sock, "approvals list {\"all\":true}".into())
                    .await
                    .unwrap();
                assert!(a.line.contains("\"status\":\"approved\""), "{a:?}");
            };
            tokio::select! {
                never = &mut serving => match never {},
                never = &mut serving_without => match never {},
                () = script => {}
            }
        });
    }

    #[test]
    fn stale_sockets_are_replaced_other_files_are_not() {
        let dir = Scratch::new("stale");
        let rt = rt();
        let sock = dir.0.join("admin.sock");
        // A socket file whose listener is gone, as a killed gateway leaves it.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let admin = bind(&rt, &sock).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        drop(admin);

        std::fs::write(&sock, "not a socket").unwrap();
        assert!(matches!(
            bind(&rt, &sock),
            Err(AdminError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket");

        let missing = dir.0.join("no/such/dir/admin.sock");
        let e = bind(&rt, &missing).err().unwrap().to_string();
        assert!(e.starts_with("admin.socket: cannot listen on "), "{e}");
    }

    #[test]
    fn the_client_says_when_no_gateway_is_there() {
        let dir = Scratch::new("client");
        let sock = dir.0.join("admin.sock");
        let e = request(&sock, "status").unwrap_err().to_string();
        assert!(
            e.starts_with("is the gateway running? admin socket "),
            "{e}"
        );
        assert!(e.ends_with(" not found"), "{e}");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = request(&sock, "status").unwrap_err().to_string();
        assert!(e.contains("nothing listens on admin socket"), "{e}");
    }

    #[test]
    fn the_client_reads_only_the_socket_from_the_config() {
        let dir = Scratch::new("cfg");
        let config = dir.0.join("gw.toml");
        // Invalid for the gateway (unknown key), still enough to find the socket.
        std::fs::write(
            &config,
            "bogus = 1\n[admin]\nsocket = \"/run/portcullis/admin.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            socket_from_config(&config).unwrap(),
            PathBuf::from("/run/portcullis/admin.sock")
        );
        std::fs::write(&config, "[server]\n").unwrap();
        let e = socket_from_config(&config).unwrap_err().to_string();
        assert!(e.contains("has no [admin] socket"), "{e}");
        std::fs::write(&config, "[admin\n").unwrap();
        let e = socket_from_config(&config).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }
}
