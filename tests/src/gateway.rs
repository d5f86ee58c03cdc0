//! A `portcullis` gateway process in front of a [`PgCluster`]: a generated TOML config, a
//! free port, start-up that waits until the port accepts connections, and a kill on drop.
//!
//! The binary is found, never built: `PORTCULLIS_BIN`, else the newer of
//! `target/release/portcullis` and `target/debug/portcullis` in this workspace.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::net::{NetError, free_port};
use crate::pg::PgCluster;
use crate::scram;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "no portcullis binary: set PORTCULLIS_BIN or build it (`cargo build -p portcullis`): {0}"
    )]
    NoBinary(String),
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Port(#[from] NetError),
    #[error("could not spawn {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("gateway exited during start-up ({status})\n--- gateway output (tail) ---\n{log}")]
    Exited { status: String, log: String },
    #[error(
        "gateway did not accept connections on {addr} within {secs}s\n--- gateway output (tail) ---\n{log}"
    )]
    Timeout {
        addr: SocketAddr,
        secs: u64,
        log: String,
    },
}

/// The I/O engine the gateway is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Auto,
    Uring,
    Epoll,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client identity the gateway accepts: the plain secret stays here so tests can log in,
/// the config only gets its SCRAM verifier.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub secret: String,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn new(name: &str, secret: &str, roles: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            secret: secret.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// How to run the gateway. [`GatewayOptions::new`] fills the upstream from a cluster.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The binary to run; `None` uses [`binary`].
    pub binary: Option<PathBuf>,
    pub engine: Engine,
    pub upstream_host: String,
    pub upstream_port: u16,
    pub upstream_user: String,
    pub upstream_password: String,
    /// Lines of `[upstream]` naming where the credential comes from (`password_file =
    /// …`, `password_command = […]`); `None` writes `password = upstream_password`.
    pub upstream_credential: Option<Vec<String>>,
    /// `[log] format`: `human` (default) or `json`.
    pub log_format: String,
    /// The database [`Gateway::uri`] names when the caller does not.
    pub db: String,
    /// 0 picks a free port.
    pub port: u16,
    pub listen_host: String,
    pub identities: Vec<Identity>,
    /// `None` leaves `workers` to the gateway's default (one per core).
    pub workers: Option<usize>,
    pub log_level: String,
    /// Appended to the generated config as is: masking rules and the like.
    pub extra_toml: String,
    /// The `[policy]` section; `None` writes none (the gateway then refuses everything).
    /// Defaults to [`ALLOW_ALL_POLICY`], for tests of the data path rather than the policy.
    pub policy_toml: Option<String>,
    /// `(cert, key)` PEM paths for `[server.tls]`.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    /// Lines of the `[upstream]` section about TLS (`tls = …`, `ca = …`,
    /// `tls_server_name = …`); plaintext by default.
    pub upstream_tls: Vec<String>,
    /// More lines of the `[server]` section (`shutdown_grace_secs = 2`, ...).
    pub server_lines: Vec<String>,
    /// More lines of the `[upstream]` section (`reserved_connections = 1`, ...).
    pub upstream_lines: Vec<String>,
    /// `[admin] socket`; a relative path is taken inside the gateway's temporary
    /// directory ([`Gateway::start`] resolves it). `None`: no admin socket.
    pub admin_socket: Option<PathBuf>,
    /// The `[approvals]` section after its `state_dir` line (which [`Gateway::start`]
    /// points into the gateway's temporary directory); `None`: no approvals.
    pub approvals_toml: Option<String>,
    /// The `[audit]` section's lines; without a `dir` line [`Gateway::start`] adds one in
    /// the gateway's temporary directory ([`Gateway::audit_dir`]). `None`: no audit.
    pub audit_toml: Option<String>,
    /// With [`GatewayOptions::audit`]: generate a checkpoint signing key (with the
    /// gateway's own `audit keygen`) and a witness directory in the temporary directory.
    pub audit_signed: bool,
    pub startup_timeout: Duration,
}

impl GatewayOptions {
    pub fn new(cluster: &PgCluster, db: &str) -> GatewayOptions {
        GatewayOptions {
            binary: None,
            engine: Engine::Auto,
            upstream_host: cluster.host.clone(),
            upstream_port: cluster.port,
            upstream_user: cluster.upstream_user.clone(),
            upstream_password: cluster.upstream_password.clone(),
            upstream_credential: None,
            log_format: "human".into(),
            db: db.into(),
            port: 0,
            listen_host: "127.0.0.1".into(),
            identities: vec![
                Identity::new("agent", "agent-secret", &["agent"]),
                Identity::new("auditor", "auditor-secret", &["auditor"]),
            ],
            workers: None,
            log_level: "info".into(),
            extra_toml: String::new(),
            policy_toml: Some(ALLOW_ALL_POLICY.into()),
            tls: None,
            tls_required: false,
            upstream_tls: vec!["tls = \"disable\"".into()],
            server_lines: Vec::new(),
            upstream_lines: Vec::new(),
            admin_socket: None,
            approvals_toml: None,
            audit_toml: None,
            audit_signed: false,
            startup_timeout: Duration::from_secs(30),
        }
    }

    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// An admin socket in the gateway's temporary directory ([`Gateway::admin_socket`]).
    pub fn admin_socket(mut self) -> Self {
        self.admin_socket = Some(PathBuf::from("admin.sock"));
        self
    }

    /// Approvals on, with the embedded store in the gateway's temporary directory;
    /// `toml` is the rest of the section and what follows (`[[approvals.reviewer]]`, ...).
    /// Keeps an audit log (`toml`: lines of `[audit]`, possibly empty).
    pub fn audit(mut self, toml: &str) -> Self {
        self.audit_toml = Some(toml.into());
        self
    }

    /// [`GatewayOptions::audit`] with signed checkpoints and a witness directory (see
    /// [`Gateway::audit_public_key`], [`Gateway::audit_witness`]).
    pub fn audit_signed(mut self, toml: &str) -> Self {
        self.audit_toml = Some(toml.into());
        self.audit_signed = true;
        self
    }

    pub fn approvals(mut self, toml: &str) -> Self {
        self.approvals_toml = Some(toml.into());
        self
    }

    /// Replaces the `[policy]` section (`toml` must start with `[policy]`).
    pub fn policy(mut self, toml: &str) -> Self {
        self.policy_toml = Some(toml.into());
        self
    }

    /// Logs in upstream as `user` instead of the cluster's upstream role (e.g. the role
    /// [`crate::create_gateway_role`] makes).
    pub fn upstream_login(mut self, user: &str, password: &str) -> Self {
        self.upstream_user = user.into();
        self.upstream_password = password.into();
        self
    }

    /// The credential from these `[upstream]` lines instead of a literal `password`.
    pub fn upstream_credential(mut self, lines: &[&str]) -> Self {
        self.upstream_credential = Some(lines.iter().map(|l| l.to_string()).collect());
        self
    }

    /// No `[policy]` section at all.
    pub fn no_policy(mut self) -> Self {
        self.policy_toml = None;
        self
    }

    /// Adds a line to the `[server]` section.
    pub fn server_line(mut self, line: &str) -> Self {
        self.server_lines.push(line.into());
        self
    }

    /// Adds a line to the `[upstream]` section.
    pub fn upstream_line(mut self, line: &str) -> Self {
        self.upstream_lines.push(line.into());
        self
    }

    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// The TOML the gateway is started with (listen address included).
    pub fn to_toml(&self, listen: SocketAddr) -> String {
        let mut t = String::new();
        let q = toml_str;
        let _ = writeln!(t, "[server]\nlisten = {}", q(&listen.to_string()));
        let _ = writeln!(t, "io_engine = {}", q(self.engine.as_str()));
        if let Some(w) = self.workers {
            let _ = writeln!(t, "workers = {w}");
        }
        for line in &self.server_lines {
            let _ = writeln!(t, "{line}");
        }
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(
                t,
                "\n[server.tls]\ncert = {}\nkey = {}\nrequired = {}",
                q(&cert.display().to_string()),
                q(&key.display().to_string()),
                self.tls_required
            );
        }
        let credential = match &self.upstream_credential {
            Some(lines) => lines.join("\n"),
            None => format!("password = {}", q(&self.upstream_password)),
        };
        let _ = writeln!(
            t,
            "\n[upstream]\nhost = {}\nport = {}\nuser = {}\n{credential}\n{}",
            q(&self.upstream_host),
            self.upstream_port,
            q(&self.upstream_user),
            self.upstream_tls.join("\n")
        );
        for line in &self.upstream_lines {
            let _ = writeln!(t, "{line}");
        }
        for id in &self.identities {
            let roles: Vec<String> = id.roles.iter().map(|r| q(r)).collect();
            let _ = writeln!(
                t,
                "\n[[identity]]\nname = {}\nsecret = {}\nroles = [{}]",
                q(&id.name),
                q(&scram::verifier(&id.secret)),
                roles.join(", ")
            );
        }
        let _ = writeln!(
            t,
            "\n[log]\nformat = {}\nlevel = {}",
            q(&self.log_format),
            q(&self.log_level)
        );
        if let Some(socket) = &self.admin_socket {
            let _ = writeln!(
                t,
                "\n[admin]\nsocket = {}",
                q(&socket.display().to_string())
            );
        }
        if let Some(p) = &self.policy_toml {
            t.push('\n');
            t.push_str(p);
            t.push('\n');
        }
        if let Some(a) = &self.approvals_toml {
            t.push_str("\n[approvals]\n");
            t.push_str(a);
            t.push('\n');
        }
        if let Some(a) = &self.audit_toml {
            t.push_str("\n[audit]\n");
            t.push_str(a);
            t.push('\n');
        }
        if !self.extra_toml.is_empty() {
            t.push('\n');
            t.push_str(&self.extra_toml);
        }
        t
    }
}

/// Runs `bin serve --config config`, its output appended to `dir/gateway.log`.
fn spawn(bin: &Path, config: &Path, dir: &Path, engine: Engine) -> Result<Child, GatewayError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .map_err(GatewayError::TempDir)?;
    let log2 = log.try_clone().map_err(GatewayError::TempDir)?;
    Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--io-engine", engine.as_str()])
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_LISTEN")
        .env_remove("PORTCULLIS_IO_ENGINE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| GatewayError::Spawn {
            bin: bin.to_owned(),
            source,
        })
}

/// The checkpoints' origin for gateways the harness starts with signed audit.
pub const AUDIT_ORIGIN: &str = "portcullis/test-gateway";

/// Every statement the built-in denials and masking allow: the data-path tests' policy.
pub const ALLOW_ALL_POLICY: &str = "[policy]\ndefault = \"allow\"\n";

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running gateway. Dropping it kills the process and deletes its config.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub opts: GatewayOptions,
    /// The checkpoint key's public half, with [`GatewayOptions::audit_signed`].
    audit_vkey: Option<String>,
}

impl Gateway {
    pub fn start(mut opts: GatewayOptions) -> Result<Gateway, GatewayError> {
        let bin = match &opts.binary {
            Some(b) => b.clone(),
            None => binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("portcullis-gw-")
            .tempdir()
            .map_err(GatewayError::TempDir)?;
        let port = if opts.port == 0 {
            free_port()?
        } else {
            opts.port
        };
        let ip: std::net::IpAddr = opts
            .listen_host
            .parse()
            .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, port);
        if let Some(socket) = &opts.admin_socket
            && socket.is_relative()
        {
            opts.admin_socket = Some(dir.path().join(socket));
        }
        if let Some(a) = &opts.approvals_toml
            && !a.contains("state_dir")
        {
            let state = dir.path().join("state");
            opts.approvals_toml = Some(format!(
                "state_dir = {}\n{a}",
                toml_str(&state.display().to_string())
            ));
        }
        if let Some(a) = &opts.audit_toml
            && !a.lines().any(|l| l.trim_start().starts_with("dir"))
        {
            let audit = dir.path().join("audit");
            opts.audit_toml = Some(format!(
                "dir = {}\n{a}",
                toml_str(&audit.display().to_string())
            ));
        }
        let mut audit_vkey = None;
        if opts.audit_signed
            && let Some(a) = &opts.audit_toml
        {
            let key = dir.path().join("audit.key");
            let witness = dir.path().join("audit-witness");
            std::fs::create_dir_all(&witness).map_err(GatewayError::TempDir)?;
            let out = Command::new(&bin)
                .args(["audit", "keygen", "--origin", AUDIT_ORIGIN, "--out"])
                .arg(&key)
                .stdin(Stdio::null())
                .output()
                .map_err(|source| GatewayError::Spawn {
                    bin: bin.clone(),
                    source,
                })?;
            if !out.status.success() {
                return Err(GatewayError::Exited {
                    status: out.status.to_string(),
                    log: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            audit_vkey = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            opts.audit_toml = Some(format!(
                "signing_key = {}\norigin = \"{AUDIT_ORIGIN}\"\nwitnesses = [{}]\n{a}",
                toml_str(&key.display().to_string()),
                toml_str(&witness.display().to_string())
            ));
        }
        let config = dir.path().join("portcullis.toml");
        std::fs::write(&config, opts.to_toml(addr)).map_err(GatewayError::TempDir)?;
        let child = spawn(&bin, &config, dir.path(), opts.engine)?;
        let mut gw = Gateway {
            child,
            dir,
            addr,
            opts,
            audit_vkey,
        };
        gw.wait_ready()?;
        Ok(gw)
    }

    fn wait_ready(&mut self) -> Result<(), GatewayError> {
        let deadline = Instant::now() + self.opts.startup_timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(GatewayError::Exited {
                    status: status.to_string(),
                    log: self.log_tail(40),
                });
            }
            // The gateway binds its admin socket before its port; checking both anyway
            // keeps tests from racing a gateway that ever changes that order.
            let admin_ready = self.admin_socket().is_none_or(Path::exists);
            if admin_ready
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(GatewayError::Timeout {
                    addr: self.addr,
                    secs: self.opts.startup_timeout.as_secs(),
                    log: self.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The audit log's directory, when [`GatewayOptions::audit`] asked for one without
    /// naming it.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Starts the gateway again, with the same configuration, directory and port, after
    /// it exited (or was killed): what an operator's restart does.
    pub fn restart(&mut self) -> Result<(), GatewayError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = match &self.opts.binary {
            Some(b) => b.clone(),
            None => binary()?,
        };
        self.child = spawn(&bin, &self.config_path(), self.dir.path(), self.opts.engine)?;
        self.wait_ready()
    }

    /// The public key `portcullis audit verify --public-key` takes, when the gateway
    /// signs its checkpoints ([`GatewayOptions::audit_signed`]).
    pub fn audit_public_key(&self) -> Option<&str> {
        self.audit_vkey.as_deref()
    }

    /// Where copies of the checkpoints go ([`GatewayOptions::audit_signed`]).
    pub fn audit_witness(&self) -> PathBuf {
        self.dir.path().join("audit-witness")
    }

    /// The config file it was started with (for tests that tweak and reload it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    /// The admin socket, when [`GatewayOptions::admin_socket`] asked for one.
    pub fn admin_socket(&self) -> Option<&Path> {
        self.opts.admin_socket.as_deref()
    }

    /// A libpq URI through the gateway; `sslmode` is left to the client's default so the
    /// gateway's SSLRequest handling is exercised too.
    pub fn uri(&self, identity: &str, secret: &str, db: &str) -> String {
        format!(
            "postgresql://{identity}:{secret}@{}:{}/{db}",
            self.host(),
            self.port()
        )
    }

    /// [`Gateway::uri`] as the default `agent` identity, on the options' database.
    pub fn agent_uri(&self) -> String {
        self.uri("agent", "agent-secret", &self.opts.db)
    }

    /// A tokio-postgres / libpq key-value string (tokio-postgres has no TLS here).
    pub fn conninfo(&self, identity: &str, secret: &str, db: &str) -> String {
        format!(
            "host={} port={} user={identity} password={secret} dbname={db} sslmode=disable",
            self.host(),
            self.port()
        )
    }

    /// Where the gateway's stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// Everything the gateway printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident set size in KiB from /proc, `None` once the process is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, once it has (reaping it: no zombie is left behind).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. `libc::SIGHUP` to reload, `libc::SIGTERM` to drain).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; the worst case is ESRCH.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Sends `sig` and waits for the process to exit; `None` if it is still running after
    /// `within`.
    pub fn stop_with(&mut self, sig: i32, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(sig);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of any process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `portcullis` binary to run: `PORTCULLIS_BIN` (what `cargo xtask test`, the
/// quickstart and the bench set), else this checkout's debug build, brought up to date
/// once per test process. Running the e2e tests alone (`cargo nextest run -p
/// portcullis-tests`) does not rebuild the gateway binary, and an older or a release
/// build left by a bench would otherwise be tested in place of the code at hand.
pub fn binary() -> Result<PathBuf, GatewayError> {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "--quiet",
                    "--package",
                    "portcullis",
                    "--bin",
                    "portcullis",
                ])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("cargo build of the gateway failed ({status})"));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            Ok(target.join("debug/portcullis"))
        })
        .clone()
        .map_err(GatewayError::NoBinary)
}
