//! The log writer: one thread per gateway that appends every session's records and makes
//! them durable with group commit.
//!
//! Sessions hand encoded records to [`AuditLog::submit`] and get a [`Ticket`]; a
//! statement is forwarded only once [`AuditLog::durable`] says its ticket is written.
//! The thread takes whatever is queued, writes it with one `write`, then one
//! `fdatasync` covers all of it: records that arrive while a sync is under way share the
//! next, so under load many sessions' statements cost one sync. `group_commit_window_us`
//! adds a bounded wait before each batch to gather more.
//!
//! When a write or sync fails (disk full, I/O error) the batch's tickets fail, the log
//! turns unhealthy and, with `on_failure = "refuse"`, sessions refuse statements until a
//! probe write succeeds again: nothing runs unrecorded. The records of a failed batch are
//! counted and the count is itself recorded once the log recovers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use portcullis_auditlog::segment::{self, Rotation};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::{AuditConfig, Durability, OnFailure};
use super::record::{self, Body, Encoded};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the audit log in {dir}: {why}")]
    Unwritable { dir: PathBuf, why: String },
    #[error(
        "the audit log in {dir} is not keeping up: {bytes} bytes of records are waiting to be written"
    )]
    Full { dir: PathBuf, bytes: usize },
    #[error("the audit log is shut down")]
    Closed,
    #[error("audit log {dir}: {why}")]
    Open { dir: PathBuf, why: String },
}

/// What the writer thread does after each sync with the records it made durable: the
/// Merkle tree and checkpoints.
pub trait Seal: Send {
    /// A record made durable, in log order (the line as written, without `\n`).
    fn add(&mut self, leaf: &[u8]);
    /// Called after each batch and when idle: cuts a checkpoint when one is due (and,
    /// with `force`, whenever anything is unsealed).
    fn tick(&mut self, force: bool) -> Result<(), String>;
}

/// A submission's place: durable once the writer has settled every ticket below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every record submitted before this count has been written (or failed).
    settled: u64,
    /// Recent failed batches (`[from, to)` in submission counts) and why.
    failed: VecDeque<(u64, u64, Arc<str>)>,
}

struct Queue {
    records: Vec<Encoded>,
    bytes: usize,
    submitted: u64,
    stop: bool,
    /// A record someone waits for is queued: the thread must not sleep.
    urgent: bool,
}

/// Counters for `status`, metrics and the bench.
#[derive(Debug, Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub lost: AtomicU64,
}

/// The log file and what the writer thread still has to do with what was written.
/// Locked before the queue wherever both are: batches are taken and written in ticket
/// order whoever writes them.
struct State {
    writer: segment::Writer,
    /// Lines written and not yet added to the Merkle tree (the writer thread seals).
    unsealed: Vec<Vec<u8>>,
    /// Written since the last sync (`os` durability).
    unsynced: bool,
}

struct Inner {
    dir: PathBuf,
    gateway: String,
    durability: Durability,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    /// Records in the log (index of the next): what sinks may read up to.
    written: watch::Sender<u64>,
    healthy: AtomicBool,
    queued: AtomicUsize,
    buffer_bytes: usize,
    on_failure: OnFailure,
    last_error: Mutex<Option<String>>,
    counters: Counters,
}

/// The handle sessions and the control plane share.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl AuditLog {
    /// Opens the log (recovering a torn tail) and starts the writer thread.
    pub fn open(cfg: &AuditConfig, gateway: &str) -> Result<Self, AuditError> {
        Self::open_with(cfg, gateway, Vec::new())
    }

    /// [`AuditLog::open`] with witnesses beyond the configured paths (syslog, HTTP).
    pub fn open_with(
        cfg: &AuditConfig,
        gateway: &str,
        witnesses: Vec<Box<dyn portcullis_auditlog::witness::Witness>>,
    ) -> Result<Self, AuditError> {
        let rotation = Rotation {
            max_bytes: cfg.segment_max_bytes,
            max_age: Duration::from_secs(cfg.segment_max_secs),
        };
        let (writer, recovery) =
            segment::Writer::open(&cfg.dir, rotation).map_err(|e| AuditError::Open {
                dir: cfg.dir.clone(),
                why: e.to_string(),
            })?;
        let seal = super::seal::open(cfg, gateway, witnesses)?;
        let inner = Arc::new(Inner {
            dir: cfg.dir.clone(),
            gateway: gateway.to_owned(),
            durability: cfg.durability,
            state: Mutex::new(State {
                writer,
                unsealed: Vec::new(),
                unsynced: false,
            }),
            queue: Mutex::new(Queue {
                records: Vec::new(),
                bytes: 0,
                submitted: 0,
                stop: false,
                urgent: false,
            }),
            wake: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            written: watch::Sender::new(recovery.records),
            healthy: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            buffer_bytes: cfg.buffer_bytes,
            on_failure: cfg.on_failure,
            last_error: Mutex::new(None),
            counters: Counters::default(),
        });
        if let Some((moved_to, torn_bytes)) = &recovery.torn {
            warn!(
                "audit log: a torn record ({torn_bytes} bytes) at the end of the last segment was moved to {}",
                moved_to.display()
            );
        }
        let log = Self {
            inner: inner.clone(),
            thread: Arc::default(),
        };
        if let Some((moved_to, torn_bytes)) = recovery.torn {
            log.record(&Body::LogRecovered {
                torn_bytes,
                moved_to: moved_to.display().to_string(),
            });
        }
        let durability = cfg.durability;
        let window = Duration::from_micros(cfg.group_commit_window_us);
        let handle = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || run(inner, seal, durability, window))
            .map_err(|e| AuditError::Open {
                dir: cfg.dir.clone(),
                why: format!("cannot start the writer thread: {e}"),
            })?;
        *log.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn gateway(&self) -> &str {
        &self.inner.gateway
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Records in the log so far; changes as batches are written (sinks read up to it).
    pub fn written(&self) -> watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// Why the last write failed, while the log is unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Encoded records queued and not yet written (bytes): the writer's backlog.
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Whether the last write succeeded (`false` until one does again).
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// Whether a statement may be forwarded now; the error says why not.
    pub fn accepting(&self) -> Result<(), AuditError> {
        if self.inner.on_failure == OnFailure::Continue {
            return Ok(());
        }
        if !self.inner.healthy.load(Ordering::Acquire) {
            return Err(AuditError::Unwritable {
                dir: self.inner.dir.clone(),
                why: self.last_error().unwrap_or_else(|| "write failed".into()),
            });
        }
        let bytes = self.inner.queued.load(Ordering::Relaxed);
        if bytes > self.inner.buffer_bytes {
            return Err(AuditError::Full {
                dir: self.inner.dir.clone(),
                bytes,
            });
        }
        Ok(())
    }

    /// Whether statements run when the log cannot record them (`on_failure = "continue"`).
    pub fn fails_open(&self) -> bool {
        self.inner.on_failure == OnFailure::Continue
    }

    /// Queues records; the ticket says when they are durable.
    pub fn submit(&self, records: impl IntoIterator<Item = Encoded>) -> Ticket {
        self.enqueue(records, true)
    }

    /// Queues records nobody waits for (outcomes) without waking the writer: they go
    /// with the next batch, or at the writer's next tick ([`LAZY_TICK`]), so a statement
    /// costs one wake-up of the writer, not two.
    pub fn submit_lazy(&self, records: impl IntoIterator<Item = Encoded>) -> Ticket {
        self.enqueue(records, false)
    }

    fn enqueue(&self, records: impl IntoIterator<Item = Encoded>, wake: bool) -> Ticket {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = 0usize;
        for r in records {
            added += r.len();
            q.records.push(r);
            q.submitted += 1;
        }
        q.bytes += added;
        let t = Ticket(q.submitted);
        // A lazy queue that has grown large is written now rather than at the tick.
        let wake = wake || q.bytes > LAZY_MAX;
        q.urgent |= wake;
        // Under the lock: the writer subtracts what it takes under it too.
        self.inner.queued.fetch_add(added, Ordering::Relaxed);
        drop(q);
        if wake && self.inner.durability == Durability::Os {
            // Written by the session itself: one write(2), no hand-over to the writer
            // thread and back, which on a busy machine costs more than the write.
            let mut st = lock(&self.inner.state);
            write_queued(&self.inner, &mut st, false);
        } else if wake {
            self.inner.wake.notify_one();
        }
        t
    }

    /// Encodes and queues one record, not waiting for it.
    pub fn record(&self, body: &Body<'_>) -> Ticket {
        self.submit([record::encode(&self.inner.gateway, body)])
    }

    /// Waits until every record up to `t` is durable; `Err` when its batch failed.
    pub async fn durable(&self, t: Ticket) -> Result<(), AuditError> {
        let mut rx = self.inner.progress.subscribe();
        let p = rx
            .wait_for(|p| p.settled >= t.0)
            .await
            .map_err(|_| AuditError::Closed)?;
        match p
            .failed
            .iter()
            .find(|(from, to, _)| *from < t.0 && t.0 <= *to)
        {
            None => Ok(()),
            Some((_, _, why)) => Err(AuditError::Unwritable {
                dir: self.inner.dir.clone(),
                why: why.to_string(),
            }),
        }
    }

    /// Blocking form of [`AuditLog::durable`], for threads outside a runtime.
    pub fn durable_blocking(&self, t: Ticket) -> Result<(), AuditError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|_| AuditError::Closed)?;
        rt.block_on(self.durable(t))
    }

    /// Writes what is queued, cuts a last checkpoint and stops the thread.
    pub fn close(&self) {
        {
            let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.stop = true;
        }
        self.inner.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// How long the thread sleeps when idle before it syncs (`os` durability), probes a
/// failed log or checks whether a checkpoint is due.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Longest a record queued with [`AuditLog::submit_lazy`] waits for a batch.
pub const LAZY_TICK: Duration = Duration::from_millis(50);
/// Lazily queued bytes past which the writer is woken anyway.
const LAZY_MAX: usize = 256 << 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes everything queued and writes it (one `write`), synced when `sync`; settles its
/// tickets either way. Call with the state locked. Returns whether anything was queued.
fn write_queued(inner: &Inner, st: &mut State, sync: bool) -> bool {
    let (batch, base) = {
        let mut q = lock(&inner.queue);
        let batch = std::mem::take(&mut q.records);
        let base = q.submitted - batch.len() as u64;
        inner.queued.fetch_sub(q.bytes, Ordering::Relaxed);
        q.bytes = 0;
        (batch, base)
    };
    if batch.is_empty() {
        return false;
    }
    let first = st.writer.next_index();
    let lines: Vec<Vec<u8>> = batch
        .iter()
        .enumerate()
        .map(|(i, r)| r.with_seq(first + i as u64))
        .collect();
    let result = st
        .writer
        .append(lines.iter().map(Vec::as_slice))
        .and_then(|_| {
            if sync {
                inner.counters.syncs.fetch_add(1, Ordering::Relaxed);
                st.writer.sync()
            } else {
                Ok(())
            }
        });
    let to = base + batch.len() as u64;
    match result {
        Ok(_) => {
            st.unsynced |= !sync;
            inner
                .counters
                .records
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            inner.progress.send_modify(|p| p.settled = to);
            if !inner.healthy.load(Ordering::Acquire) {
                recovered(inner);
            }
            st.unsealed.extend(lines);
        }
        Err(e) => {
            let why: Arc<str> = e.to_string().into();
            fail(inner, &why);
            inner
                .counters
                .lost
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            inner.progress.send_modify(|p| {
                p.settled = to;
                p.failed.push_back((base, to, why.clone()));
                if p.failed.len() > 256 {
                    p.failed.pop_front();
                }
            });
        }
    }
    true
}

fn run(
    inner: Arc<Inner>,
    mut seal: Option<Box<dyn Seal>>,
    durability: Durability,
    window: Duration,
) {
    loop {
        let stop = {
            let mut q = lock(&inner.queue);
            // Nothing anyone waits for: sleep until someone does (woken), or the tick
            // (records queued lazily, sessions' own writes to seal and publish, an idle
            // sync, a probe, a checkpoint due).
            if !q.stop && !q.urgent {
                let tick = if q.records.is_empty() && durability == Durability::Fsync {
                    IDLE_TICK
                } else {
                    LAZY_TICK
                };
                q = inner
                    .wake
                    .wait_timeout(q, tick)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            q.urgent = false;
            if !q.records.is_empty() && !window.is_zero() && !q.stop {
                drop(q);
                std::thread::sleep(window);
                q = lock(&inner.queue);
            }
            q.stop
        };
        let (lines, written, sync_handle) = {
            let mut st = lock(&inner.state);
            let wrote = write_queued(&inner, &mut st, durability == Durability::Fsync || stop);
            if !inner.healthy.load(Ordering::Acquire)
                && let Some(l) = probe(&inner, &mut st.writer)
            {
                st.unsealed.push(l);
            }
            // An idle `os` log is synced outside the lock, so sessions keep writing.
            let handle = (st.unsynced && (!wrote || stop))
                .then(|| st.writer.sync_handle().ok())
                .flatten();
            if handle.is_some() {
                st.unsynced = false;
            }
            (
                std::mem::take(&mut st.unsealed),
                st.writer.next_index(),
                handle,
            )
        };
        if let Some(f) = sync_handle {
            let _ = f.sync_data();
        }
        inner.written.send_if_modified(|w| {
            let changed = *w != written;
            *w = written;
            changed
        });
        if let Some(s) = &mut seal {
            for l in &lines {
                s.add(l);
            }
            if let Err(e) = s.tick(stop) {
                warn!("audit checkpoint: {e}");
            }
        }
        if stop {
            let mut st = lock(&inner.state);
            let _ = st.writer.sync();
            return;
        }
    }
}

fn fail(inner: &Inner, why: &str) {
    if inner.healthy.swap(false, Ordering::AcqRel) {
        if inner.on_failure == OnFailure::Continue {
            error!(
                "AUDIT LOG UNWRITABLE ({why}); on_failure = \"continue\": statements run WITHOUT a record until it recovers"
            );
        } else {
            error!("audit log unwritable ({why}): statements are refused until it recovers");
        }
    }
    *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
}

fn recovered(inner: &Inner) {
    inner.healthy.store(true, Ordering::Release);
    *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let lost = inner.counters.lost.swap(0, Ordering::AcqRel);
    info!("audit log writable again ({lost} records were lost while it was not)");
    if lost > 0 {
        let e = record::encode(
            &inner.gateway,
            &Body::RecordsLost {
                count: lost,
                reason: "the audit log could not be written",
            },
        );
        let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes += e.len();
        inner.queued.fetch_add(e.len(), Ordering::Relaxed);
        q.records.push(e);
        q.submitted += 1;
    }
}

/// While unhealthy: tries to write the count of lost records; success means the log
/// works again. Returns the line written.
fn probe(inner: &Inner, writer: &mut segment::Writer) -> Option<Vec<u8>> {
    let lost = inner.counters.lost.swap(0, Ordering::AcqRel);
    let e = record::encode(
        &inner.gateway,
        &Body::RecordsLost {
            count: lost,
            reason: "the audit log could not be written",
        },
    );
    let line = e.with_seq(writer.next_index());
    match writer.append([line.as_slice()]).and_then(|_| writer.sync()) {
        Ok(()) => {
            inner.healthy.store(true, Ordering::Release);
            *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            info!("audit log writable again ({lost} records were lost while it was not)");
            Some(line)
        }
        Err(e) => {
            inner.counters.lost.fetch_add(lost, Ordering::AcqRel);
            *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_auditlog::segment::{Item, Reader};

    fn config(dir: &Path, durability: Durability) -> AuditConfig {
        let mut c: AuditConfig =
            toml::from_str(&format!("dir = {:?}", dir.display().to_string())).unwrap();
        c.durability = durability;
        c
    }

    /// Sessions on several threads, waited-for and lazy records mixed: every record is in
    /// the log once, numbered in order, and the log never reports itself full.
    #[test]
    fn concurrent_sessions_write_every_record_once_in_order() {
        for durability in [Durability::Os, Durability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let log = AuditLog::open(&config(dir.path(), durability), "t").unwrap();
            let threads: Vec<_> = (0..4)
                .map(|n| {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        for i in 0..300 {
                            assert!(log.accepting().is_ok(), "{:?}", log.accepting());
                            let reason = format!("{n}-{i}");
                            let e = record::encode("t", &Body::GatewayStop { reason: &reason });
                            if i % 3 == 0 {
                                log.submit_lazy([e]);
                            } else {
                                log.durable_blocking(log.submit([e])).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            log.close();
            let mut seen = std::collections::HashSet::new();
            for (i, item) in Reader::open(dir.path(), 0).unwrap().enumerate() {
                let Item::Record { index, bytes } = item.unwrap() else {
                    panic!("not a record");
                };
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!((index, v["seq"].as_u64()), (i as u64, Some(i as u64)));
                assert!(seen.insert(v["reason"].as_str().unwrap().to_owned()));
            }
            assert_eq!(seen.len(), 1200, "{durability:?}");
        }
    }
}
