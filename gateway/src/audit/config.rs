//! The `[audit]` section, exactly as written in TOML.
//!
//! ```toml
//! [audit]
//! dir = "/var/lib/portcullis/audit"        # segments, checkpoints, sink cursors
//! signing_key = "/etc/portcullis/audit.key" # Ed25519 (PKCS#8 PEM): signs checkpoints
//! durability = "fsync"                      # or "os": written, not synced (see below)
//! group_commit_window_us = 0                # extra wait to gather more records per sync
//! on_failure = "refuse"                     # or "continue" (explicit, loudly logged)
//! params = "hash"                           # Bind values: "keep", "hash" or "drop"
//! checkpoint_every_records = 10000
//! checkpoint_every_secs = 60
//! witnesses = ["/mnt/worm/portcullis-checkpoints"]
//! ```
//!
//! Without an `[audit]` section the gateway keeps no evidence; `check-config` says so.

use std::path::PathBuf;

use serde::Deserialize;

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fdatasync` before the statement is forwarded: survives a power loss.
    #[default]
    Fsync,
    /// Handed to the kernel (`write`) before the statement is forwarded: survives the
    /// gateway being killed, not the machine losing power. Synced in the background.
    Os,
}

/// What happens to statements when the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Nothing runs unrecorded: statements are refused (SQLSTATE 58030) until the log
    /// can be written again.
    #[default]
    Refuse,
    /// Statements run anyway, and every one that does is logged as unrecorded.
    Continue,
}

/// What the log keeps of `Bind` parameter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Params {
    /// The values as sent. A statement that touches a column under a masking rule for
    /// this agent gets its values hashed instead: masked data never sits raw in the log.
    Keep,
    /// SHA-256 of each value: equal values can be matched, not read.
    #[default]
    Hash,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes
    /// it, or `portcullis audit keygen`). Without one no checkpoint is signed and
    /// `verify` can only check the log against itself.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// This gateway's id in records; default: host name and listen port.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// The checkpoints' origin line (and the key's name in `verify --public-key`);
    /// default `portcullis/<gateway id>`.
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub group_commit_window_us: u64,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub params: Params,
    /// Records waiting to be written, in bytes, past which statements are refused (the
    /// disk is not keeping up or failing).
    #[serde(default = "default_buffer")]
    pub buffer_bytes: usize,
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: u64,
    #[serde(default = "default_segment_secs")]
    pub segment_max_secs: u64,
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    /// Files or directories that get a copy of every checkpoint (keep them where the
    /// gateway's operator cannot rewrite them).
    #[serde(default)]
    pub witnesses: Vec<PathBuf>,
    /// Sinks (by name) that also get a copy of every signed checkpoint: a syslog server
    /// or HTTP collector the gateway's operator does not control is a witness too.
    #[serde(default)]
    pub witness_sinks: Vec<String>,
    /// SIEM export: `[[audit.sinks]]` (see `docs/audit-siem.md`).
    #[serde(default)]
    pub sinks: Vec<super::sinks::SinkConfig>,
}

fn default_buffer() -> usize {
    64 << 20
}
fn default_segment_bytes() -> u64 {
    256 << 20
}
fn default_segment_secs() -> u64 {
    86_400
}
fn default_checkpoint_records() -> u64 {
    10_000
}
fn default_checkpoint_secs() -> u64 {
    60
}

impl AuditConfig {
    /// Checks what parsing cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("audit.dir: must name a directory".into());
        }
        if self.buffer_bytes < 1 << 20 {
            return Err("audit.buffer_bytes: at least 1048576".into());
        }
        if self.group_commit_window_us > 100_000 {
            return Err(
                "audit.group_commit_window_us: at most 100000 (100 ms): statements wait this long"
                    .into(),
            );
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_secs == 0 {
            return Err("audit.checkpoint_every_records and checkpoint_every_secs: above 0".into());
        }
        super::sinks::check_all(&self.sinks).map_err(|e| e.to_string())?;
        for w in &self.witness_sinks {
            if !self.sinks.iter().any(|s| &s.name == w) {
                return Err(format!(
                    "audit.witness_sinks: no [[audit.sinks]] is named {w:?}"
                ));
            }
        }
        if let Some(id) = &self.gateway_id
            && (id.is_empty() || id.len() > 200)
        {
            return Err("audit.gateway_id: 1 to 200 characters".into());
        }
        Ok(())
    }
}
