//! The writer's seal: every durable record goes into the log's Merkle tree, and signed
//! checkpoints are cut every N records or T seconds and copied to the witnesses.

use std::path::Path;
use std::time::SystemTime;

use portcullis_auditlog::checkpoint::LogSigner;
use portcullis_auditlog::sealer::{CheckpointPolicy, Sealer};
use portcullis_auditlog::witness::{DirWitness, FileWitness, Witness};
use tracing::{info, warn};

use super::config::AuditConfig;
use super::writer::{self, AuditError};

/// The checkpoints' origin (the signing key's name in signed notes): one per gateway, so
/// several gateways may share a key and a witness.
pub fn origin(cfg: &AuditConfig, gateway: &str) -> String {
    cfg.origin
        .clone()
        .unwrap_or_else(|| format!("portcullis/{gateway}"))
}

/// A configured witness path: a directory that exists gets one file per checkpoint,
/// anything else is a file the checkpoints are appended to.
pub fn witness(path: &Path) -> Box<dyn Witness> {
    if path.is_dir() {
        Box::new(DirWitness::new(path))
    } else {
        Box::new(FileWitness::new(path))
    }
}

struct Seal(Sealer);

impl writer::Seal for Seal {
    fn add(&mut self, leaf: &[u8]) {
        self.0.add(leaf);
    }

    fn tick(&mut self, force: bool) -> Result<(), String> {
        let now = SystemTime::now();
        if !(self.0.due(now) || force && self.0.unsealed() > 0) {
            return Ok(());
        }
        let sealed = self.0.checkpoint(now).map_err(|e| e.to_string())?;
        for (name, e) in sealed.witness_failures {
            warn!(
                "audit witness {name} did not take checkpoint {}: {e}",
                sealed.checkpoint.checkpoint.size
            );
        }
        Ok(())
    }
}

/// Opens the seal of the log in `cfg.dir` (after its segment writer: a torn tail is
/// already moved aside). `None` without a signing key: no checkpoints, said loudly.
pub(super) fn open(
    cfg: &AuditConfig,
    gateway: &str,
    mut extra: Vec<Box<dyn Witness>>,
) -> Result<Option<Box<dyn writer::Seal>>, AuditError> {
    let Some(key) = &cfg.signing_key else {
        warn!(
            "audit.signing_key is not set: the log is written but no checkpoint is signed, so `portcullis audit verify` cannot prove it was not rewritten"
        );
        return Ok(None);
    };
    let fail = |why: String| AuditError::Open {
        dir: cfg.dir.clone(),
        why,
    };
    let signer = LogSigner::load(key, &origin(cfg, gateway))
        .map_err(|e| fail(format!("signing key {}: {e}", key.display())))?;
    let mut witnesses: Vec<Box<dyn Witness>> = cfg.witnesses.iter().map(|p| witness(p)).collect();
    witnesses.append(&mut extra);
    let policy = CheckpointPolicy {
        every_records: cfg.checkpoint_every_records,
        every_secs: cfg.checkpoint_every_secs,
    };
    let (sealer, opened) =
        Sealer::open(&cfg.dir, signer, policy, witnesses).map_err(|e| fail(e.to_string()))?;
    info!(
        records = opened.records,
        rebuild_ms = opened.rebuild.as_millis() as u64,
        "audit log sealed up to its last checkpoint ({})",
        opened
            .last_checkpoint
            .map_or("none yet".to_owned(), |(size, _)| format!("{size} records"))
    );
    if let Some(p) = opened.torn_checkpoint {
        warn!("a torn last checkpoint was moved to {}", p.display());
    }
    Ok(Some(Box::new(Seal(sealer))))
}

/// A sink that gets checkpoints: the writer thread queues each one (it must never wait
/// on a network) and a task on the control runtime sends it.
struct QueuedWitness {
    name: String,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Witness for QueuedWitness {
    fn name(&self) -> String {
        format!("sink {}", self.name)
    }

    fn push(
        &mut self,
        cp: &portcullis_auditlog::checkpoint::SignedCheckpoint,
    ) -> Result<(), portcullis_auditlog::witness::WitnessError> {
        self.tx
            .send(cp.to_text())
            .map_err(|_| portcullis_auditlog::witness::WitnessError::Other {
                name: self.name(),
                message: "the sender task has stopped".into(),
            })
    }
}

/// Witnesses for `[audit] witness_sinks`, their senders running on `rt`.
pub fn sink_witnesses(
    cfg: &AuditConfig,
    rt: &tokio::runtime::Handle,
) -> Result<Vec<Box<dyn Witness>>, super::sinks::SinkError> {
    let mut out: Vec<Box<dyn Witness>> = Vec::new();
    for name in &cfg.witness_sinks {
        let Some(sink) = cfg.sinks.iter().find(|s| &s.name == name) else {
            continue;
        };
        let mut w = super::sinks::Witness::new(sink)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let label = name.clone();
        rt.spawn(async move {
            while let Some(text) = rx.recv().await {
                // A few tries, then the copy is given up: the log's own checkpoints and
                // the other witnesses still have it.
                let mut delay = std::time::Duration::from_millis(200);
                for attempt in 1..=5 {
                    match w.send_text(&text).await {
                        Ok(()) => break,
                        Err(e) if attempt == 5 => {
                            warn!("audit witness sink {label}: checkpoint not delivered: {e}")
                        }
                        Err(_) => {
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
            }
        });
        out.push(Box::new(QueuedWitness {
            name: name.clone(),
            tx,
        }));
    }
    Ok(out)
}
