//! The gateway's configuration: a TOML file, overridable by CLI flags and environment.
//!
//! `Config` is what the file says; [`Config::load`] parses it with unknown keys refused
//! and then validates it, so every error names the key and what is wrong with it before
//! the gateway accepts a single connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::oidc::OidcConfig;
use crate::auth::{StaticKey, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse {
        path: PathBuf,
        /// toml's rendering, with the offending line quoted under a caret.
        message: String,
        /// The same on one line (`line L, column C: problem`), for answers that cannot
        /// span lines: the admin socket's protocol is one line per answer.
        brief: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    /// The error on a single line, for the admin socket; names the key just as
    /// `Display` does.
    pub fn one_line(&self) -> String {
        match self {
            ConfigError::Parse { path, brief, .. } => format!("{}: {brief}", path.display()),
            other => other.to_string(),
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// The engine the bench measures faster on the kernels it ran on: epoll.
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityConfig>,
    /// Identity providers whose access tokens agents may log in with.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// `[[role]]`: roles that name an upstream PostgreSQL role (`crate::roles`).
    #[serde(default, rename = "role")]
    pub roles: Vec<crate::roles::RoleConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub mask: crate::mask::MaskConfig,
    /// The statement policy. No `[policy]` section: every statement is refused (fail
    /// closed), with a message saying so.
    pub policy: Option<crate::policy::PolicyConfig>,
    /// No `[admin]` section, no admin socket: see `crate::control::admin` for why.
    pub admin: Option<AdminConfig>,
    /// No `[approvals]`: held statements are refused, saying approval is required.
    pub approvals: Option<crate::approvals::ApprovalsConfig>,
    /// No `[audit]`: the gateway keeps no evidence (`check-config` says so).
    pub audit: Option<crate::audit::AuditConfig>,
    /// Upstream session reuse; on, with its defaults, without a `[pool]` section.
    #[serde(default)]
    pub pool: crate::pool::PoolConfig,
    /// No `[metrics]`: no metrics or health listener.
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// No `[console]`: no admin console (`crate::console`).
    pub console: Option<ConsoleConfig>,
}

/// `[console]`: the admin console, PostgreSQL's protocol for `psql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address the console listens on (`127.0.0.1:6433`). Read at start-up only.
    pub listen: String,
    /// Static `[[identity]]` entries holding one of these roles may log in.
    #[serde(default = "default_console_roles")]
    pub roles: Vec<String>,
}

fn default_console_roles() -> Vec<String> {
    vec!["admin".into()]
}

impl ConsoleConfig {
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "console.listen",
                format!("\"{}\" is not an address:port", self.listen),
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Worker threads; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// Largest message held whole (statements, masked rows), in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Read buffer per connection and direction, in bytes.
    #[serde(default = "default_read_buffer")]
    pub read_buffer_bytes: usize,
    /// Microseconds a worker looks for its sessions' next input (an epoll worker at their
    /// sockets, an io_uring worker at its completion queue) before it sleeps (0: sleep at
    /// once). Saves the wake-up a small query's answer would cost.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// The most a server socket gathers before it wakes the gateway, once a result has
    /// streamed for a megabyte (`SO_RCVLOWAT`; 0: wake for every server flush). Batches
    /// start at 192 KiB (or this, if smaller) and grow towards it while they arrive in
    /// time. The read buffer of a session doing so grows to a third more than its batch.
    #[serde(default = "default_read_batch")]
    pub read_batch_bytes: usize,
    /// Seconds a client has to complete start-up and authentication.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Seconds to let sessions finish on shutdown.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    pub tls: Option<ServerTls>,
    /// How an agent without a static key gives its access token (with `[[oidc]]`).
    #[serde(default)]
    pub token_mechanism: TokenMechanism,
    /// Accept tokens outside TLS. Only on a loopback listener (a sidecar on the agent's
    /// own host): anywhere else a token in clear text can be read off the wire.
    #[serde(default)]
    pub plaintext_tokens: bool,
}

/// How the gateway asks for an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenMechanism {
    /// As the password (`AuthenticationCleartextPassword`): every driver can.
    #[default]
    Password,
    /// PostgreSQL 18's SASL `OAUTHBEARER`, for clients that speak it.
    Oauthbearer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse sessions that do not negotiate TLS.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub user: String,
    /// The credential, literally: fine for a demo, not for production.
    pub password: Option<crate::secrets::Secret>,
    /// An environment variable holding it.
    pub password_env: Option<String>,
    /// A file holding it (systemd `LoadCredential=`, a Kubernetes secret volume), read
    /// again whenever it changes; a trailing newline is not part of it.
    pub password_file: Option<PathBuf>,
    /// A command printing it (argv, no shell), run again every
    /// `password_command_refresh_secs` and when the database refuses the value.
    pub password_command: Option<Vec<String>>,
    #[serde(default = "default_command_refresh")]
    pub password_command_refresh_secs: u64,
    /// A run taking longer is killed (and the last value kept).
    #[serde(default = "default_command_timeout")]
    pub password_command_timeout_secs: u64,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full`; the system's web PKI roots otherwise.
    pub ca: Option<PathBuf>,
    /// Name to verify in the server's certificate (defaults to `host`).
    pub tls_server_name: Option<String>,
    /// The gateway's TLS client certificate (PEM chain) for the upstream connection, so that
    /// PostgreSQL can require it (`hostssl ... clientcert=verify-full`, CN = `user`) and an
    /// address spoofed past the eBPF guard alone gets nowhere. With `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Connections per database the gateway keeps open for its own questions (catalog
    /// lookups for masking, approvals' estimates), so that an open session never needs a
    /// free slot on the server: they open before a database's first session is answered.
    #[serde(default = "default_reserved_connections")]
    pub reserved_connections: usize,
    /// Databases whose reserved connections open at start-up, before the gateway accepts
    /// anyone, and stay open; the others' open with their first session and close a
    /// minute after their last.
    #[serde(default)]
    pub reserve_databases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    /// A SCRAM-SHA-256 verifier from `portcullis hash-secret`.
    pub secret: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339 time after which the key no longer logs in, and sessions opened with it
    /// have their statements refused.
    pub expires_at: Option<String>,
    /// Refuse logins with this key (sessions already open end at their next statement).
    #[serde(default)]
    pub disabled: bool,
}

impl IdentityConfig {
    /// `expires_at` in Unix milliseconds.
    pub fn expires_at_ms(&self) -> Result<Option<u64>, String> {
        self.expires_at
            .as_deref()
            .map(|t| {
                crate::audit::sinks::record::parse_rfc3339_us(t)
                    .filter(|us| *us >= 0)
                    .map(|us| us as u64 / 1000)
                    .ok_or_else(|| {
                        format!("\"{t}\" is not an RFC 3339 time (2027-01-31T18:00:00Z)")
                    })
            })
            .transpose()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket for `portcullis reload` and `portcullis status`, created mode 0600.
    /// Read at start-up only: a reload does not move it.
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: default_level(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
/// PostgreSQL's own bound on a message (`PQ_LARGE_MESSAGE_LIMIT`, just under 1 GiB): by
/// default the gateway takes whatever the server would. The server holds such a message
/// whole too, so an agent gains no memory it could not already make a backend spend.
fn default_max_message() -> usize {
    1 << 30
}
fn default_read_buffer() -> usize {
    128 << 10
}
fn default_read_batch() -> usize {
    512 << 10
}
fn default_handshake_timeout() -> u64 {
    15
}
fn default_shutdown_grace() -> u64 {
    10
}
fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    5000
}
fn default_command_refresh() -> u64 {
    300
}
fn default_command_timeout() -> u64 {
    10
}
fn default_reserved_connections() -> usize {
    2
}
/// Most reserved connections per database: they are slots taken from sessions.
pub const MAX_RESERVED_CONNECTIONS: usize = 16;
fn default_level() -> String {
    "info".into()
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, brief, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
                brief,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
            brief: brief_parse_error(text, &e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.pool.validate().map_err(|(k, p)| invalid(k, p))?;
        if self.server.busy_poll_us > 1000 {
            return Err(invalid(
                "server.busy_poll_us",
                "must be at most 1000 (a millisecond of spinning per wait is a busy CPU)",
            ));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1024"));
        }
        if !(4096..=64 << 20).contains(&self.server.read_buffer_bytes) {
            return Err(invalid(
                "server.read_buffer_bytes",
                "must be between 4096 and 67108864",
            ));
        }
        let batch = self.server.read_batch_bytes;
        if batch != 0 && !(16384..=16 << 20).contains(&batch) {
            return Err(invalid(
                "server.read_batch_bytes",
                "must be 0 (off) or between 16384 and 16777216",
            ));
        }
        if self.upstream.host.is_empty() {
            return Err(invalid("upstream.host", "must not be empty"));
        }
        if self.upstream.user.is_empty() {
            return Err(invalid("upstream.user", "must not be empty"));
        }
        self.upstream_secret()?;
        if !(1..=MAX_RESERVED_CONNECTIONS).contains(&self.upstream.reserved_connections) {
            return Err(invalid(
                "upstream.reserved_connections",
                format!(
                    "must be between 1 and {MAX_RESERVED_CONNECTIONS}: catalog lookups and approvals' estimates run on these"
                ),
            ));
        }
        if let Some(i) = self
            .upstream
            .reserve_databases
            .iter()
            .position(String::is_empty)
        {
            return Err(invalid(
                format!("upstream.reserve_databases[{i}]"),
                "must not be empty",
            ));
        }
        if self.identities.is_empty() && self.oidc.is_empty() {
            return Err(invalid(
                "identity",
                "no agent identities configured: add [[identity]] entries (name, secret from `portcullis hash-secret`) or an [[oidc]] issuer",
            ));
        }
        for (i, o) in self.oidc.iter().enumerate() {
            o.validate()
                .map_err(|(k, p)| invalid(format!("oidc[{i}].{k}"), p))?;
            if self.oidc[..i].iter().any(|p| p.issuer == o.issuer) {
                return Err(invalid(
                    format!("oidc[{i}].issuer"),
                    format!("\"{}\" is configured twice", o.issuer),
                ));
            }
        }
        if self.server.plaintext_tokens && !self.listen_addr()?.ip().is_loopback() {
            return Err(invalid(
                "server.plaintext_tokens",
                "tokens outside TLS are accepted only on a loopback listen address",
            ));
        }
        if !self.oidc.is_empty() && self.server.tls.is_none() && !self.server.plaintext_tokens {
            return Err(invalid(
                "oidc",
                "token logins need TLS: configure [server.tls] (or, on a loopback listener, server.plaintext_tokens = true)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, id) in self.identities.iter().enumerate() {
            if id.name.is_empty() {
                return Err(invalid(format!("identity[{i}].name"), "must not be empty"));
            }
            if !seen.insert(&id.name) {
                return Err(invalid(
                    format!("identity[{i}].name"),
                    format!("\"{}\" is configured twice", id.name),
                ));
            }
            Verifier::parse(&id.secret)
                .map_err(|e| invalid(format!("identity[{i}].secret"), e.to_string()))?;
            id.expires_at_ms()
                .map_err(|e| invalid(format!("identity[{i}].expires_at"), e))?;
        }
        crate::roles::validate(&self.roles).map_err(|e| invalid(e.key, e.problem))?;
        if let Some(tls) = &self.server.tls {
            for (key, p) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !p.exists() {
                    return Err(invalid(key, format!("{} does not exist", p.display())));
                }
            }
        }
        match (&self.upstream.client_cert, &self.upstream.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                if self.upstream.tls == UpstreamTls::Disable {
                    return Err(invalid(
                        "upstream.client_cert",
                        "a client certificate needs TLS: set upstream.tls to \"verify-full\" (or \"require\")",
                    ));
                }
                for (k, p) in [("upstream.client_cert", cert), ("upstream.client_key", key)] {
                    if !p.exists() {
                        return Err(invalid(k, format!("{} does not exist", p.display())));
                    }
                }
            }
            (Some(_), None) => {
                return Err(invalid(
                    "upstream.client_key",
                    "upstream.client_cert is set: give its private key too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "upstream.client_cert",
                    "upstream.client_key is set: give its certificate too",
                ));
            }
        }
        if let Some(ca) = &self.upstream.ca
            && !ca.exists()
        {
            return Err(invalid(
                "upstream.ca",
                format!("{} does not exist", ca.display()),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        if let Some(admin) = &self.admin {
            validate_admin_socket(&admin.socket)?;
        }
        if let Some(console) = &self.console {
            console.listen_addr()?;
            if let Some(i) = console.roles.iter().position(|r| r.trim().is_empty()) {
                return Err(invalid(format!("console.roles[{i}]"), "must not be empty"));
            }
            if !self
                .identities
                .iter()
                .any(|id| id.roles.iter().any(|r| console.roles.contains(r)))
            {
                return Err(invalid(
                    "console.roles",
                    format!(
                        "no [[identity]] holds one of {:?}, so nobody could log in to the console: give an operator's identity that role",
                        console.roles
                    ),
                ));
            }
        }
        if let Some(approvals) = &self.approvals {
            approvals
                .validate()
                .map_err(|e| invalid(e.key, e.problem))?;
        }
        if let Some(audit) = &self.audit {
            audit.validate().map_err(|e| {
                let (key, problem) = e.split_once(": ").unwrap_or(("audit", &e));
                invalid(key, problem)
            })?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.validate().map_err(|e| invalid(e.key, e.problem))?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("\"{}\" is not an address:port", self.server.listen),
            )
        })
    }

    /// Where the upstream credential comes from: exactly one of `password`,
    /// `password_env`, `password_file`, `password_command`.
    pub fn upstream_secret(&self) -> Result<crate::secrets::Source, ConfigError> {
        use crate::secrets::Source;
        let up = &self.upstream;
        let set: Vec<&str> = [
            ("password", up.password.is_some()),
            ("password_env", up.password_env.is_some()),
            ("password_file", up.password_file.is_some()),
            ("password_command", up.password_command.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        match set.as_slice() {
            [] => {
                return Err(invalid(
                    "upstream.password",
                    "missing: set one of password, password_env, password_file, password_command",
                ));
            }
            [_] => {}
            [first, second, ..] => {
                return Err(invalid(
                    format!("upstream.{second}"),
                    format!(
                        "upstream.{first} is set too: give exactly one source of the credential"
                    ),
                ));
            }
        }
        if let Some(p) = &up.password {
            return Ok(Source::Literal(p.clone()));
        }
        if let Some(var) = &up.password_env {
            if std::env::var_os(var).is_none() {
                return Err(invalid(
                    "upstream.password_env",
                    format!("environment variable {var} is not set"),
                ));
            }
            return Ok(Source::Env(var.clone()));
        }
        if let Some(path) = &up.password_file {
            if !path.is_absolute() {
                return Err(invalid(
                    "upstream.password_file",
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            return Ok(Source::File(path.clone()));
        }
        let argv = up.password_command.clone().unwrap_or_default();
        if argv.first().is_none_or(String::is_empty) {
            return Err(invalid(
                "upstream.password_command",
                "must name a program: [\"vault\", \"kv\", \"get\", \"-field=password\", \"secret/db\"]",
            ));
        }
        if up.password_command_refresh_secs == 0 {
            return Err(invalid(
                "upstream.password_command_refresh_secs",
                "must be at least 1",
            ));
        }
        if up.password_command_timeout_secs == 0 {
            return Err(invalid(
                "upstream.password_command_timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(Source::Command {
            argv,
            refresh: std::time::Duration::from_secs(up.password_command_refresh_secs),
            timeout: std::time::Duration::from_secs(up.password_command_timeout_secs),
        })
    }

    pub fn identities(&self) -> Vec<StaticKey> {
        self.identities
            .iter()
            .map(|i| {
                let mut key = StaticKey::new(
                    &i.name,
                    i.roles.clone(),
                    Verifier::parse(&i.secret).expect("validated at load"),
                );
                key.disabled = i.disabled;
                if let Ok(at) = i.expires_at_ms() {
                    std::sync::Arc::make_mut(&mut key.identity).expires_at_ms = at;
                }
                key
            })
            .collect()
    }
}

fn validate_admin_socket(path: &Path) -> Result<(), ConfigError> {
    const KEY: &str = "admin.socket";
    // sun_path holds 108 bytes including the terminating NUL.
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().is_empty() {
        return Err(invalid(KEY, "must not be empty"));
    }
    // The gateway and `portcullis reload` run from different working directories; only
    // an absolute path means the same socket to both.
    if !path.is_absolute() {
        return Err(invalid(
            KEY,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(invalid(
            KEY,
            format!(
                "{} is {len} bytes long; a Unix socket path holds at most {SUN_PATH_MAX}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `line L, column C: problem` from toml's error, whose `Display` spans several lines.
fn brief_parse_error(text: &str, e: &toml::de::Error) -> String {
    let problem = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {problem}")
        }
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        let v = Verifier::generate("s", 16);
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"p\"\npassword = \"x\"\n[[identity]]\nname = \"agent\"\nsecret = \"{v}\"\n"
        )
    }

    #[test]
    fn a_good_config_loads() {
        let c = Config::parse(&good()).unwrap();
        assert_eq!(c.identities().len(), 1);
        assert_eq!(c.server.io_engine, IoEngine::Auto);
        assert_eq!(c.server.busy_poll_us, 0, "busy-polling is opt-in");
    }

    #[test]
    fn busy_polling_is_bounded() {
        let with = |us: u64| {
            Config::parse(&good().replace(
                "listen = \"127.0.0.1:0\"\n",
                &format!("listen = \"127.0.0.1:0\"\nbusy_poll_us = {us}\n"),
            ))
        };
        assert_eq!(with(50).unwrap().server.busy_poll_us, 50);
        let e = with(1001).unwrap_err();
        assert!(e.to_string().starts_with("server.busy_poll_us:"), "{e}");
    }

    #[test]
    fn read_batches_are_bounded() {
        let with = |line: &str| {
            Config::parse(&good().replace(
                "listen = \"127.0.0.1:0\"\n",
                &format!("listen = \"127.0.0.1:0\"\n{line}\n"),
            ))
        };
        assert_eq!(with("").unwrap().server.read_batch_bytes, 524288);
        assert_eq!(
            with("read_batch_bytes = 0")
                .unwrap()
                .server
                .read_batch_bytes,
            0
        );
        for bad in ["read_batch_bytes = 100", "read_batch_bytes = 16777217"] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().starts_with("server.read_batch_bytes:"), "{e}");
        }
        let big = with("read_batch_bytes = 1048576").unwrap();
        assert_eq!(big.server.read_batch_bytes, 1048576);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse(&good().replace("127.0.0.1:0", "nowhere")).unwrap_err();
        assert!(e.to_string().starts_with("server.listen:"), "{e}");
        let e = Config::parse(&good().replace("secret = \"SCRAM", "secret = \"plain")).unwrap_err();
        assert!(e.to_string().starts_with("identity[0].secret:"), "{e}");
        let e = Config::parse(&format!("{}\n[server2]\n", good())).unwrap_err();
        assert!(e.to_string().contains("server2"), "{e}");
        let e = Config::parse(&good().replace("password = \"x\"", "")).unwrap_err();
        assert!(e.to_string().starts_with("upstream.password:"), "{e}");
    }

    #[test]
    fn exactly_one_credential_source() {
        let with = |lines: &str| Config::parse(&good().replace("password = \"x\"\n", lines));
        let e = with("password = \"x\"\npassword_file = \"/run/credentials/pw\"\n").unwrap_err();
        assert!(e.to_string().starts_with("upstream.password_file:"), "{e}");
        assert!(
            e.to_string().contains("upstream.password is set too"),
            "{e}"
        );
        let e = with("password_file = \"/a\"\npassword_command = [\"cat\", \"/a\"]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("upstream.password_command:"),
            "{e}"
        );
        let e = with("").unwrap_err();
        assert!(e.to_string().contains("password_command"), "{e}");

        let c = with("password_file = \"/run/credentials/portcullis/pw\"\n").unwrap();
        assert!(matches!(
            c.upstream_secret().unwrap(),
            crate::secrets::Source::File(p) if p == Path::new("/run/credentials/portcullis/pw")
        ));
        let e = with("password_file = \"pw.txt\"\n").unwrap_err();
        assert!(e.to_string().starts_with("upstream.password_file:"), "{e}");

        let c = with(
            "password_command = [\"vault\", \"kv\", \"get\"]\npassword_command_refresh_secs = 60\n",
        )
        .unwrap();
        match c.upstream_secret().unwrap() {
            crate::secrets::Source::Command {
                argv,
                refresh,
                timeout,
            } => {
                assert_eq!(argv, ["vault", "kv", "get"]);
                assert_eq!(refresh.as_secs(), 60);
                assert_eq!(timeout.as_secs(), 10);
            }
            other => panic!("{other:?}"),
        }
        for bad in ["password_command = []\n", "password_command = [\"\"]\n"] {
            let e = with(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("upstream.password_command:"),
                "{bad}: {e}"
            );
        }
        let e =
            with("password_command = [\"x\"]\npassword_command_refresh_secs = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("upstream.password_command_refresh_secs:"),
            "{e}"
        );
        let e = with("password_command = \"vault kv get\"\n").unwrap_err();
        assert!(e.to_string().contains("password_command"), "{e}");
    }

    #[test]
    fn the_literal_password_is_not_in_a_debug_print() {
        let c = Config::parse(&good().replace("password = \"x\"", "password = \"hunter2-up\""))
            .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-up"), "{shown}");
    }

    #[test]
    fn upstream_client_certificate_needs_its_key_and_tls() {
        let cert = std::env::temp_dir().join(format!("pc-cc-{}.pem", std::process::id()));
        std::fs::write(&cert, "x").unwrap();
        let with = |tls: &str, lines: &str| {
            Config::parse(&good().replace(
                "password = \"x\"\n",
                &format!("password = \"x\"\ntls = \"{tls}\"\nca = {cert:?}\n{lines}"),
            ))
        };
        let both = format!("client_cert = {cert:?}\nclient_key = {cert:?}\n");
        assert!(with("verify-full", &both).is_ok());
        let e = with("disable", &both).unwrap_err();
        assert!(e.to_string().starts_with("upstream.client_cert:"), "{e}");
        let e = with("verify-full", &format!("client_cert = {cert:?}\n")).unwrap_err();
        assert!(e.to_string().starts_with("upstream.client_key:"), "{e}");
        let e = with("verify-full", "client_key = \"/nonexistent/k.pem\"\n").unwrap_err();
        assert!(e.to_string().starts_with("upstream.client_cert:"), "{e}");
        let e = with(
            "verify-full",
            &format!("client_cert = {cert:?}\nclient_key = \"/nonexistent/k.pem\"\n"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/k.pem does not exist"),
            "{e}"
        );
        let _ = std::fs::remove_file(&cert);
    }

    #[test]
    fn admin_socket_is_optional_and_validated() {
        assert!(Config::parse(&good()).unwrap().admin.is_none());
        let with = |v: &str| Config::parse(&format!("{}[admin]\nsocket = {v}\n", good()));
        let c = with("\"/run/portcullis/admin.sock\"").unwrap();
        assert_eq!(
            c.admin.unwrap().socket,
            PathBuf::from("/run/portcullis/admin.sock")
        );
        for bad in [
            "\"\"",
            "\"admin.sock\"",
            &format!("\"/{}\"", "x".repeat(120)),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().starts_with("admin.socket:"), "{bad}: {e}");
        }
        let e = Config::parse(&format!("{}[admin]\nsockt = \"/x\"\n", good())).unwrap_err();
        assert!(e.to_string().contains("sockt"), "{e}");
    }

    #[test]
    fn approvals_are_validated_with_the_rest() {
        let text = format!(
            "{}[approvals]\nstate_dir = \"/tmp/p\"\n[[approvals.reviewer]]\nname = \"alice\"\ntoken_sha256 = \"abc\"\n",
            good()
        );
        let e = Config::parse(&text).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("approvals.reviewer[0].token_sha256:"),
            "{e}"
        );
    }

    #[test]
    fn the_console_needs_an_identity_that_may_use_it() {
        let with = |section: &str| Config::parse(&format!("{}{section}", good()));
        let e = with("[console]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(e.to_string().starts_with("console.roles:"), "{e}");
        let admin = good().replace("name = \"agent\"", "name = \"ops\"\nroles = [\"admin\"]");
        let c = Config::parse(&format!("{admin}[console]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
        assert_eq!(c.console.unwrap().roles, ["admin"]);
        let e = Config::parse(&format!("{admin}[console]\nlisten = \"nowhere\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("console.listen:"), "{e}");
        let e = Config::parse(&format!(
            "{admin}[console]\nlisten = \"127.0.0.1:0\"\nroles = [\"ops\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("console.roles:"), "{e}");
    }

    #[test]
    fn parse_errors_fit_on_one_line() {
        let text = format!("{}[admin]\nsockt = \"/x\"\n", good());
        let e = Config::parse(&text).unwrap_err();
        let line = e.one_line();
        assert!(!line.contains('\n'), "{line}");
        let at = text.lines().position(|l| l.starts_with("sockt")).unwrap() + 1;
        assert!(line.contains(&format!("line {at}, column 1:")), "{line}");
        assert!(line.contains("unknown field `sockt`"), "{line}");
    }
}
