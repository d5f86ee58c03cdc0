//! What `run` attaches: read from a TOML file, then overridden by command-line flags.
//!
//! ```toml
//! mode = "xdp"                 # or "tc" where XDP does not fit the interface
//! interfaces = ["eth0"]
//! ports = [6432]               # extra ports; every port PostgreSQL listens on is protected anyway
//! discover_ports = true        # the default: protect the ports `postgres` processes listen on
//! allow = ["10.0.1.10/32,mac=02:00:0a:00:01:0a", "fd00:1::10/128"]   # the gateways
//! pin_dir = "/sys/fs/bpf/portcullis"
//!
//! [local]                      # refuse local connect() from other cgroups; off by default
//! enabled = true
//! allow_cgroups = ["/sys/fs/cgroup/system.slice/portcullis.service"]
//!
//! [audit]                      # a tamper-evident log of its own; off without this section
//! dir = "/var/lib/portcullis-guard/audit"
//! signing_key = "/etc/portcullis-guard/audit.key"   # Ed25519, PKCS#8 PEM
//! origin = "portcullis-guard/db1"                   # default: portcullis-guard/<hostname>
//! checkpoint_every_records = 1000
//! checkpoint_every_secs = 60
//! witnesses = ["/mnt/worm/guard-checkpoints"]
//! ```

use std::path::{Path, PathBuf};

use portcullis_common::{DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE};

use crate::{allow::AllowSpec, pins::DEFAULT_ROOT};

/// PostgreSQL's default port: protected when discovery finds no server and none is configured.
pub const DEFAULT_PG_PORT: u16 = 5432;

/// Where the protected ports came from, for the start line.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub configured: Vec<u16>,
    pub discovered: Vec<u16>,
    /// Nothing configured or discovered: 5432 alone.
    pub fallback: bool,
}

/// The kernel's token bucket multiplies elapsed nanoseconds (< 1 s) by the rate in 64 bits.
pub const MAX_EVENT_RATE: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("no interface to guard: set `interfaces` or pass --interface")]
    NoInterfaces,
    #[error("no protected port: list them in `ports` (or --port), or leave discover_ports on")]
    NoPorts,
    #[error("event_rate {0} is above the maximum of {MAX_EVENT_RATE} per second per CPU")]
    EventRate(u64),
    #[error("audit.{0}")]
    Audit(&'static str),
}

/// The ingress hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP, native where the driver supports it, else generic.
    #[default]
    Xdp,
    /// tcx ingress (kernel 6.6+): for interfaces where XDP does not fit.
    Tc,
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    pub interfaces: Vec<String>,
    /// Ports protected in addition to the discovered ones; after [`Config::resolve_ports`],
    /// every protected port.
    pub ports: Vec<u16>,
    /// Protect every port a `postgres` process listens on in the guard's network namespace.
    pub discover_ports: bool,
    /// Allowed sources: `CIDR[,mac=MAC][,interface=NAME]` (see [`crate::allow`]).
    pub allow: Vec<AllowSpec>,
    pub pin_dir: PathBuf,
    /// Mount bpffs on the pin directory's parent when it is not mounted.
    pub mount_bpffs: bool,
    /// Events per second each CPU may emit after its burst.
    pub event_rate: u64,
    pub event_burst: u64,
    pub local: LocalConfig,
    /// The guard's own audit log; `None`: events go to stdout only.
    pub audit: Option<AuditConfig>,
}

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub enabled: bool,
    /// The cgroup the connect hooks attach to; default: the cgroup v2 root (every process).
    pub cgroup: Option<PathBuf>,
    /// Cgroups (with their subtrees) whose processes may connect locally.
    pub allow_cgroups: Vec<PathBuf>,
}

/// The `[audit]` section: the same log format, signing and checkpoints as the gateway's
/// `[audit]`, so `portcullis audit verify` checks it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Ed25519 private key (PKCS#8 PEM; `portcullis audit keygen` writes one). Without it
    /// the log is written but no checkpoint is signed, so nothing proves it unaltered.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The checkpoints' origin (the key's name for `verify --public-key`) and the records'
    /// `gateway` field; default `portcullis-guard/<hostname>`.
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    /// Files or directories that get a copy of every checkpoint.
    #[serde(default)]
    pub witnesses: Vec<PathBuf>,
    /// Identical events (source, port, reason, hook) within this window become one record
    /// with a count, so a flood writes a bounded number of records.
    #[serde(default = "default_aggregate_ms")]
    pub aggregate_ms: u64,
}

fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    60
}
fn default_aggregate_ms() -> u64 {
    1000
}

impl AuditConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::Audit("dir: must name a directory"));
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_secs == 0 {
            return Err(ConfigError::Audit(
                "checkpoint_every_records and checkpoint_every_secs: above 0",
            ));
        }
        if !(1..=60_000).contains(&self.aggregate_ms) {
            return Err(ConfigError::Audit("aggregate_ms: 1 to 60000"));
        }
        if let Some(o) = &self.origin
            && (o.is_empty() || o.chars().any(|c| c.is_whitespace() || c == '+'))
        {
            return Err(ConfigError::Audit(
                "origin: not empty, no spaces, no '+' (a signed-note key name)",
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Xdp,
            interfaces: Vec::new(),
            ports: Vec::new(),
            discover_ports: true,
            allow: Vec::new(),
            pin_dir: DEFAULT_ROOT.into(),
            mount_bpffs: false,
            event_rate: DEFAULT_EVENT_RATE,
            event_burst: DEFAULT_EVENT_BURST,
            local: LocalConfig::default(),
            audit: None,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Makes `ports` every port to protect: the configured ones plus, with `discover_ports`,
    /// those in `discovered`. With neither, PostgreSQL's default 5432, so a guard started
    /// before its database still protects something; [`Ports::fallback`] says so.
    pub fn resolve_ports(&mut self, discovered: &[u16]) -> Ports {
        let configured = self.ports.clone();
        let mut all: Vec<u16> = configured.clone();
        if self.discover_ports {
            all.extend_from_slice(discovered);
        }
        all.sort_unstable();
        all.dedup();
        let fallback = all.is_empty() && self.discover_ports;
        if fallback {
            all.push(DEFAULT_PG_PORT);
        }
        self.ports = all;
        Ports {
            configured,
            discovered: if self.discover_ports {
                discovered.to_vec()
            } else {
                Vec::new()
            },
            fallback,
        }
    }

    /// Checks what `run` needs; other subcommands only need `pin_dir`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(ConfigError::NoInterfaces);
        }
        if self.ports.is_empty() {
            return Err(ConfigError::NoPorts);
        }
        if self.event_rate > MAX_EVENT_RATE {
            return Err(ConfigError::EventRate(self.event_rate));
        }
        if let Some(a) = &self.audit {
            a.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_the_discovered_ones_plus_the_configured_ones() {
        let mut c = Config::from_toml("interfaces = [\"eth0\"]\nports = [6432]").unwrap();
        let p = c.resolve_ports(&[5433, 5432]);
        assert_eq!(c.ports, vec![5432, 5433, 6432]);
        assert!(!p.fallback);
        let mut c = Config::from_toml("interfaces = [\"eth0\"]").unwrap();
        assert!(c.resolve_ports(&[]).fallback);
        assert_eq!(c.ports, vec![5432]);
        let mut c =
            Config::from_toml("interfaces = [\"eth0\"]\ndiscover_ports = false\nports = [7000]")
                .unwrap();
        c.resolve_ports(&[5432]);
        assert_eq!(c.ports, vec![7000]);
        let mut c = Config::from_toml("interfaces = [\"eth0\"]\ndiscover_ports = false").unwrap();
        c.resolve_ports(&[5432]);
        assert!(matches!(c.validate(), Err(ConfigError::NoPorts)));
    }

    #[test]
    fn defaults_discover_ports_with_xdp_and_local_off() {
        let c = Config::from_toml("interfaces = [\"eth0\"]").unwrap();
        assert!(c.ports.is_empty() && c.discover_ports);
        assert_eq!(c.mode, Mode::Xdp);
        assert!(!c.local.enabled);
        assert!(c.audit.is_none());
        assert_eq!(c.pin_dir, PathBuf::from(DEFAULT_ROOT));
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
            mode = "tc"
            interfaces = ["veth0"]
            ports = [5432, 6432]
            allow = ["10.0.0.1", "fd00::/64"]
            [local]
            enabled = true
            allow_cgroups = ["/sys/fs/cgroup/gw"]
            [audit]
            dir = "/var/lib/portcullis-guard/audit"
            signing_key = "/etc/portcullis-guard/audit.key"
            witnesses = ["/mnt/worm/w.txt"]
            "#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.allow.len(), 2);
        assert!(c.local.enabled);
        let a = c.audit.as_ref().unwrap();
        assert_eq!(
            (
                a.checkpoint_every_records,
                a.checkpoint_every_secs,
                a.aggregate_ms
            ),
            (1000, 60, 1000)
        );
        assert_eq!(a.origin, None);
        c.validate().unwrap();
    }

    #[test]
    fn audit_section_is_checked() {
        let base = "interfaces = [\"eth0\"]\nports = [5432]\n[audit]\ndir = \"/a\"\n";
        assert!(Config::from_toml(&format!("{base}signing_kye = \"/k\"")).is_err());
        for bad in [
            "checkpoint_every_records = 0",
            "aggregate_ms = 0",
            "origin = \"a b\"",
        ] {
            let c = Config::from_toml(&format!("{base}{bad}")).unwrap();
            assert!(matches!(c.validate(), Err(ConfigError::Audit(_))), "{bad}");
        }
    }

    #[test]
    fn rejects_typos_and_empty_sets() {
        assert!(Config::from_toml("interface = [\"eth0\"]").is_err());
        assert!(matches!(
            Config::default().validate(),
            Err(ConfigError::NoInterfaces)
        ));
        let c = Config::from_toml("interfaces = [\"eth0\"]\nports = []").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::NoPorts)));
    }
}
