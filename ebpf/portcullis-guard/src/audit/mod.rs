//! The guard's own audit log on the database host: the gateway's record format and
//! sealing, so `portcullis audit verify DIR --public-key KEY` checks it.
//!
//! [`Audit::open`] opens the log before anything is attached (a bad key or a log that no
//! longer matches its checkpoint stops the guard before it touches the kernel);
//! [`Audit::start`] makes the `guard_start` record durable and starts the writer thread.
//! The event loop hands every decoded event to [`Audit::event`], which only queues it, so
//! a slow disk never stalls the ring buffer. The thread folds events into windows
//! ([`aggregate`]), and every tick writes the closed windows as `guard_bypass` records with
//! one `write` and one `fdatasync` (the [`journal`](portcullis_auditlog::journal)), seals
//! them and cuts a checkpoint when due. [`Audit::stop`] closes every window, writes
//! `guard_stop` and cuts a final checkpoint.
//!
//! Enforcement never depends on this log: the kernel drops packets whether or not a record
//! gets written. When writes fail the thread says so on stderr and retries; past
//! [`MAX_PENDING`] unwritten records it stops queueing, counts what it could not queue, and
//! records that count (`guard_audit_gap`) once the disk takes writes again.

pub mod aggregate;
pub mod record;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use portcullis_auditlog::checkpoint::LogSigner;
use portcullis_auditlog::journal::{Journal, JournalError, Sealing};
use portcullis_auditlog::sealer::CheckpointPolicy;
use portcullis_auditlog::segment::Rotation;
use portcullis_auditlog::witness::{DirWitness, FileWitness, Witness};
use sha2::{Digest, Sha256};

use crate::config::{AuditConfig, Config};
use crate::events::BypassEvent;
use crate::loader::Report;
use aggregate::{Aggregate, Aggregator};
use record::Body;

/// How often the writer wakes with nothing to do: windows close and checkpoints come due.
const TICK: Duration = Duration::from_millis(200);
/// Distinct keys per window before sources overflow into one bucket.
const MAX_KEYS: usize = 4096;
/// Records waiting for a failing disk before new ones are only counted.
pub const MAX_PENDING: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("guard audit log {dir}: {source}")]
    Journal { dir: PathBuf, source: JournalError },
    #[error("guard audit log: signing key {path}: {source}")]
    Key {
        path: PathBuf,
        source: portcullis_auditlog::checkpoint::CheckpointError,
    },
    #[error("guard audit log: the writer thread panicked")]
    Panicked,
    #[error("guard audit log: starting the writer thread: {0}")]
    Thread(std::io::Error),
}

/// The checkpoints' origin and the records' `gateway` field.
pub fn origin(cfg: &AuditConfig) -> String {
    cfg.origin
        .clone()
        .unwrap_or_else(|| format!("portcullis-guard/{}", hostname()))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    // A key name must not hold spaces or '+'.
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '+' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if rc != 0 || name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// SHA-256 (hex) of the effective configuration, as JSON.
pub fn config_digest(cfg: &Config) -> String {
    let json = serde_json::to_vec(cfg).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

fn witness(path: &std::path::Path) -> Box<dyn Witness> {
    if path.is_dir() {
        Box::new(DirWitness::new(path))
    } else {
        Box::new(FileWitness::new(path))
    }
}

/// An opened log, not yet started.
pub struct Opened {
    journal: Journal,
    cfg: AuditConfig,
    source: String,
}

impl Opened {
    pub fn is_signed(&self) -> bool {
        self.journal.is_sealed()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.journal.dir()
    }

    pub fn origin(&self) -> &str {
        &self.source
    }
}

enum Msg {
    Event(Box<BypassEvent>),
    Stop {
        reason: String,
        kernel: Option<BTreeMap<&'static str, u64>>,
    },
}

/// What a run wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub events: u64,
    pub bypass_records: u64,
    /// The log's size at stop.
    pub records: u64,
    /// Records not durable at stop (the disk kept failing).
    pub unwritten: u64,
}

/// The running writer.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<Summary>,
}

impl Audit {
    /// Opens (and recovers) the log in `cfg.dir` and loads the signing key.
    pub fn open(cfg: &AuditConfig) -> Result<Opened, AuditError> {
        let source = origin(cfg);
        let sealing = match &cfg.signing_key {
            Some(path) => Some(Sealing {
                signer: LogSigner::load(path, &source).map_err(|source| AuditError::Key {
                    path: path.clone(),
                    source,
                })?,
                policy: CheckpointPolicy {
                    every_records: cfg.checkpoint_every_records,
                    every_secs: cfg.checkpoint_every_secs,
                },
                witnesses: cfg.witnesses.iter().map(|p| witness(p)).collect(),
            }),
            None => {
                eprintln!(
                    "portcullis-guard: WARNING: audit.signing_key is not set: the audit log in {} is written but NO CHECKPOINT IS SIGNED, so `portcullis audit verify` cannot prove it was not rewritten",
                    cfg.dir.display()
                );
                None
            }
        };
        let err = |source| AuditError::Journal {
            dir: cfg.dir.clone(),
            source,
        };
        let (journal, opened) =
            Journal::open(&cfg.dir, Rotation::default(), sealing).map_err(err)?;
        if let Some((path, bytes)) = &opened.recovery.torn {
            eprintln!(
                "portcullis-guard: audit log: a torn last record ({bytes} bytes) was moved to {}",
                path.display()
            );
        }
        if let Some(p) = opened
            .sealer
            .as_ref()
            .and_then(|s| s.torn_checkpoint.as_ref())
        {
            eprintln!(
                "portcullis-guard: audit log: a torn last checkpoint was moved to {}",
                p.display()
            );
        }
        Ok(Opened {
            journal,
            cfg: cfg.clone(),
            source,
        })
    }

    /// Writes `guard_start` (durable before this returns) and starts the writer thread.
    pub fn start(opened: Opened, cfg: &Config, report: &Report) -> Result<Audit, AuditError> {
        let Opened {
            mut journal,
            cfg: audit,
            source,
        } = opened;
        let err = |source| AuditError::Journal {
            dir: audit.dir.clone(),
            source,
        };
        let names = |v: &[crate::pins::Attachment]| v.iter().map(ToString::to_string).collect();
        let digest = config_digest(cfg);
        let start = Body::GuardStart {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            config_sha256: &digest,
            mode: cfg.mode,
            interfaces: &cfg.interfaces,
            ports: &cfg.ports,
            allow: &cfg.allow,
            local: cfg.local.enabled,
            attached: names(&report.attached),
            adopted: names(&report.adopted),
            signed: journal.is_sealed(),
        };
        let now = SystemTime::now();
        journal
            .push(&start.encode(now, &source).map_err(err)?)
            .map_err(err)?;
        journal.commit().map_err(err)?;
        journal.checkpoint(now, false).map_err(err)?;
        // With one interface on the ingress hook every refused packet arrived there.
        let dst = match cfg.interfaces.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let window = Duration::from_millis(audit.aggregate_ms);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("guard-audit".into())
            .spawn(move || {
                Writer {
                    journal,
                    source,
                    dst,
                    agg: Aggregator::new(window, MAX_KEYS),
                    bypass_records: 0,
                    gap: None,
                    last_error: None,
                }
                .run(rx)
            })
            .map_err(AuditError::Thread)?;
        Ok(Audit { tx, thread })
    }

    /// Queues one event (never blocks on the disk).
    pub fn event(&self, e: &BypassEvent) {
        // A send fails only once the thread is gone, which `stop` reports.
        let _ = self.tx.send(Msg::Event(Box::new(e.clone())));
    }

    /// Closes every window, writes `guard_stop` and a final checkpoint, and waits for it.
    pub fn stop(
        self,
        reason: &str,
        kernel: Option<BTreeMap<&'static str, u64>>,
    ) -> Result<Summary, AuditError> {
        let _ = self.tx.send(Msg::Stop {
            reason: reason.to_owned(),
            kernel,
        });
        self.thread.join().map_err(|_| AuditError::Panicked)
    }
}

/// Events that could not be queued while the disk was failing.
struct Gap {
    events: u64,
    records: u64,
    first: SystemTime,
    last: SystemTime,
}

struct Writer {
    journal: Journal,
    source: String,
    dst: Option<String>,
    agg: Aggregator,
    bypass_records: u64,
    gap: Option<Gap>,
    /// The last failure reported, so a failing disk is reported once, not every tick.
    last_error: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) -> Summary {
        loop {
            let now = Instant::now();
            let wait = self
                .agg
                .next_due()
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
            let mut stop = None;
            let mut msg = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Msg::Stop {
                    reason: "loader exited".into(),
                    kernel: None,
                }),
            };
            // Take everything already queued: one commit covers it all.
            while let Some(m) = msg {
                match m {
                    Msg::Event(e) => self.agg.add(&e, Instant::now()),
                    Msg::Stop { reason, kernel } => {
                        stop = Some((reason, kernel));
                        break;
                    }
                }
                msg = rx.try_recv().ok();
            }
            if let Some((reason, kernel)) = stop {
                return self.finish(&reason, kernel.as_ref());
            }
            for a in self.agg.due(Instant::now()) {
                self.record(&a);
            }
            self.commit(false);
        }
    }

    fn record(&mut self, a: &Aggregate) {
        if self.journal.pending() >= MAX_PENDING {
            let g = self.gap.get_or_insert(Gap {
                events: 0,
                records: 0,
                first: a.first,
                last: a.last,
            });
            g.events += a.count;
            g.records += 1;
            g.first = g.first.min(a.first);
            g.last = g.last.max(a.last);
            return;
        }
        // A copy: `push` borrows all of `self`. One short string a record.
        let dst = self.dst.clone();
        self.push(&Body::bypass(a, dst.as_deref()));
        self.bypass_records += 1;
    }

    fn push(&mut self, body: &Body<'_>) {
        let pushed = body
            .encode(SystemTime::now(), &self.source)
            .and_then(|b| self.journal.push(&b));
        if let Err(e) = pushed {
            self.report(&e.to_string());
        }
    }

    /// Makes everything queued durable and seals it, then checkpoints when due (`force`:
    /// whenever anything is unsealed).
    fn commit(&mut self, force: bool) {
        if self.journal.pending() > 0 {
            match self.journal.commit() {
                Ok(_) => {
                    if self.last_error.take().is_some() {
                        eprintln!("portcullis-guard: audit log: writing again");
                    }
                    if let Some(g) = self.gap.take() {
                        let body = Body::GuardAuditGap {
                            events: g.events,
                            records: g.records,
                            first: portcullis_auditlog::time::format_micros(g.first),
                            last: portcullis_auditlog::time::format_micros(g.last),
                        };
                        self.push(&body);
                        if let Err(e) = self.journal.commit() {
                            self.report(&e.to_string());
                        }
                    }
                }
                Err(e) => {
                    self.report(&e.to_string());
                    return;
                }
            }
        }
        match self.journal.checkpoint(SystemTime::now(), force) {
            Ok(Some(sealed)) => {
                for (name, e) in sealed.witness_failures {
                    eprintln!(
                        "portcullis-guard: audit witness {name} did not take checkpoint {}: {e}",
                        sealed.checkpoint.checkpoint.size
                    );
                }
            }
            Ok(None) => {}
            Err(e) => self.report(&e.to_string()),
        }
    }

    fn report(&mut self, e: &str) {
        if self.last_error.as_deref() != Some(e) {
            eprintln!(
                "portcullis-guard: audit log {}: {e} (enforcement is unaffected; retrying)",
                self.journal.dir().display()
            );
            self.last_error = Some(e.to_owned());
        }
    }

    fn finish(mut self, reason: &str, kernel: Option<&BTreeMap<&'static str, u64>>) -> Summary {
        for a in self.agg.drain() {
            self.record(&a);
        }
        let stop = Body::GuardStop {
            reason,
            events: self.agg.events(),
            bypass_records: self.bypass_records,
            kernel,
        };
        self.push(&stop);
        // A few tries: this is the last chance for these records.
        for attempt in 0..3 {
            self.commit(true);
            if self.journal.pending() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100 << attempt));
        }
        Summary {
            events: self.agg.events(),
            bypass_records: self.bypass_records,
            records: self.journal.next_seq() - self.journal.pending() as u64,
            unwritten: self.journal.pending() as u64,
        }
    }
}
