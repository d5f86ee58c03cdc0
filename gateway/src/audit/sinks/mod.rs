//! SIEM export: every `[[audit.sinks]]` entry gets the audit log's records, in order,
//! at least once, from the durable log itself.
//!
//! One task per sink follows the log from the sink's cursor ([`tail`]), reads a batch
//! of records that are durable (below the count the writer publishes after each
//! fdatasync), sends it, and only when the receiver acknowledged it moves the cursor
//! past it and stores the cursor ([`cursor`]). A receiver that is down is retried with
//! capped exponential backoff; meanwhile its backlog is the log on disk, so memory
//! holds one batch whatever the outage, and it catches up in order when it is back. On
//! restart delivery resumes at the stored cursor, so what was sent but not yet
//! acknowledged is sent again: receivers see duplicates, never gaps (Elasticsearch
//! drops them by `_id`; the JSON webhook's delivery id lets others do the same).
//!
//! - [`config`]: the `[[audit.sinks]]` entry ([`SinkConfig`]) and its checks.
//! - [`syslog`]: RFC 5424 over unix, UDP and TCP (octet counting).
//! - [`http`]: Splunk HEC, Elasticsearch bulk, signed JSON.
//! - [`ocsf`]: records as OCSF events (`schema = "ocsf"`).
//! - [`record`], [`tail`], [`cursor`]: a record's common fields, following the log,
//!   the stored cursors.
//!
//! [`Witness`] sends one text blob (a signed checkpoint) through a sink's transport, so
//! the log's witnesses can be the same collectors.

pub mod config;
pub mod cursor;
pub mod http;
pub mod ocsf;
pub mod record;
pub mod syslog;
pub mod tail;

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use config::{Checked, Target};
pub use config::{HttpFormat, Schema, SinkConfig, SinkConfigError, SinkKind, check_all};
use cursor::CursorError;
use http::{Http, HttpError};
use record::{Record, format_rfc3339_us, now_us};
use syslog::{Syslog, SyslogError};
use tail::{Next, Tail, TailError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Config(#[from] SinkConfigError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error(transparent)]
    Syslog(#[from] SyslogError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("reading the audit log: {0}")]
    Reader(String),
}

/// What a sink is doing, for `portcullis status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    pub name: String,
    /// `stdout`, `syslog` or `http`.
    pub kind: &'static str,
    /// Records acknowledged by the receiver: the index of the next one to send.
    pub cursor: u64,
    /// Records durable in the log.
    pub durable: u64,
    /// `durable - cursor`: waiting in the log for this sink.
    pub lag: u64,
    /// Records acknowledged since this task started.
    pub delivered: u64,
    /// Failed attempts in a row at the current batch (0 when delivering).
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
    pub last_success_unix_ms: Option<u64>,
    /// Records the log no longer has (segments removed ahead of the cursor): skipped.
    pub missing: u64,
    /// Datagrams cut to `max_message`.
    pub truncated: u64,
    /// The task has ended (stopped, or the log's writer is gone and all was sent).
    pub stopped: bool,
}

/// A running sink. Dropping it stops its task, as [`Sink::stop`] does without waiting.
pub struct Sink {
    name: String,
    status: Arc<Mutex<SinkStatus>>,
    durable: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sink {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> SinkStatus {
        let mut s = self.status.lock().expect("status lock").clone();
        s.durable = *self.durable.borrow();
        s.lag = s.durable.saturating_sub(s.cursor);
        s
    }

    /// Stops the task and waits for it. A batch in flight is abandoned unacknowledged:
    /// the next start sends it again.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits for the task to end by itself: after the log's writer dropped its side of
    /// `durable` and everything durable was delivered.
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// Starts one delivery task per sink on `rt`. `log_dir` is the audit log's directory
/// (cursors go in `<log_dir>/cursors/`); `durable` is the writer's count of durable
/// records. Configuration, cursors and TLS set-up are checked before anything starts.
pub fn spawn(
    rt: &tokio::runtime::Handle,
    sinks: &[SinkConfig],
    log_dir: &Path,
    durable: watch::Receiver<u64>,
) -> Result<Vec<Sink>, SinkError> {
    let checked = check_all(sinks)?;
    let mut ready = Vec::with_capacity(checked.len());
    for c in checked {
        let cursor = cursor::load(log_dir, &c.name)?;
        let transport = Transport::new(&c)?;
        ready.push((c, cursor, transport));
    }
    let mut out = Vec::with_capacity(ready.len());
    for (c, cursor, transport) in ready {
        let status = Arc::new(Mutex::new(SinkStatus {
            name: c.name.clone(),
            kind: transport.kind(),
            cursor,
            ..SinkStatus::default()
        }));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = Task {
            log_dir: log_dir.to_owned(),
            name: c.name.clone(),
            cursor,
            checked: c,
            transport,
            durable: durable.clone(),
            stop: stop_rx,
            status: status.clone(),
        };
        let name = task.name.clone();
        let handle = rt.spawn(task.run());
        out.push(Sink {
            name,
            status,
            durable: durable.clone(),
            stop: stop_tx,
            task: handle,
        });
    }
    Ok(out)
}

/// Sends one text blob (a signed checkpoint) through a sink's transport: as a syslog
/// message with MSGID `checkpoint`, a HEC event of sourcetype `portcullis:checkpoint`,
/// a bulk `create` with `_id` = `checkpoint-<sha256 of the text>`, or, for `json`, the
/// text itself as a signed `text/plain` POST with `X-Portcullis-Event: checkpoint`.
pub struct Witness {
    transport: Transport,
}

impl Witness {
    pub fn new(config: &SinkConfig) -> Result<Witness, SinkError> {
        let checked = config.check(0)?;
        Ok(Witness {
            transport: Transport::new(&checked)?,
        })
    }

    /// One attempt (bounded by the sink's timeouts); retrying is the caller's choice.
    pub async fn send_text(&mut self, text: &str) -> Result<(), SinkError> {
        self.transport.send_text(text).await
    }
}

/// [`Witness::send_text`] without keeping a connection.
pub async fn send_text(config: &SinkConfig, text: &str) -> Result<(), SinkError> {
    Witness::new(config)?.send_text(text).await
}

enum Transport {
    Stdout,
    Syslog(Box<Syslog>),
    Http(Box<Http>),
}

impl Transport {
    fn new(c: &Checked) -> Result<Transport, SinkError> {
        Ok(match &c.target {
            Target::Stdout => Transport::Stdout,
            Target::Syslog(t) => Transport::Syslog(Box::new(Syslog::new(
                t.clone(),
                c.connect_timeout,
                c.timeout,
            ))),
            Target::Http(t) => Transport::Http(Box::new(Http::new(
                t.clone(),
                c.connect_timeout,
                c.timeout,
            )?)),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Transport::Stdout => "stdout",
            Transport::Syslog(_) => "syslog",
            Transport::Http(_) => "http",
        }
    }

    /// Sends a batch; `docs[i]` is `batch[i]` in the sink's schema. Returns how many
    /// messages were cut short.
    async fn send_batch(&mut self, batch: &[Record], docs: &[Vec<u8>]) -> Result<u64, SinkError> {
        match self {
            Transport::Stdout => {
                let mut out = Vec::new();
                for d in docs {
                    out.extend_from_slice(d);
                    out.push(b'\n');
                }
                write_stdout(&out).await?;
                Ok(0)
            }
            Transport::Syslog(s) => {
                let msgs: Vec<Vec<u8>> = batch
                    .iter()
                    .zip(docs)
                    .map(|(r, d)| {
                        syslog::message(
                            s.target(),
                            s.procid(),
                            &format_rfc3339_us(r.time_us),
                            &r.kind,
                            d,
                        )
                    })
                    .collect();
                Ok(s.send(&msgs).await?)
            }
            Transport::Http(h) => {
                let refs: Vec<&[u8]> = docs.iter().map(Vec::as_slice).collect();
                let body = h.batch_body(batch, &refs);
                h.post(&body).await?;
                Ok(0)
            }
        }
    }

    async fn send_text(&mut self, text: &str) -> Result<(), SinkError> {
        match self {
            Transport::Stdout => {
                let mut out = text.as_bytes().to_vec();
                out.push(b'\n');
                write_stdout(&out).await
            }
            Transport::Syslog(s) => {
                let now = format_rfc3339_us(now_us());
                let msg =
                    syslog::message(s.target(), s.procid(), &now, "checkpoint", text.as_bytes());
                s.send(&[msg]).await?;
                Ok(())
            }
            Transport::Http(h) => {
                let host = match h.format() {
                    HttpFormat::SplunkHec => "portcullis",
                    _ => "",
                };
                let body = h.text_body(text, host);
                Ok(h.post(&body).await?)
            }
        }
    }
}

async fn write_stdout(bytes: &[u8]) -> Result<(), SinkError> {
    let mut out = tokio::io::stdout();
    out.write_all(bytes).await.map_err(SinkError::Stdout)?;
    out.flush().await.map_err(SinkError::Stdout)
}

/// What one read of the log brought.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    docs: Vec<Vec<u8>>,
    missing: Vec<(u64, u64)>,
}

/// Reads durable records below `durable`, up to the batch limits, and renders them.
fn read_batch(tail: &mut Tail, durable: u64, c: &Checked) -> Result<Batch, TailError> {
    let mut b = Batch::default();
    let mut bytes = 0usize;
    while tail.next_index() < durable && b.records.len() < c.batch_max && bytes < c.batch_bytes {
        match tail.read()? {
            Next::Record { index, bytes: line } => {
                bytes += line.len();
                let r = Record::from_log(index, line);
                let doc = match c.schema {
                    Schema::Portcullis => Cow::Borrowed(&r.json),
                    Schema::Ocsf => Cow::Owned(ocsf::render_bytes(&r)),
                };
                b.docs.push(doc.into_owned());
                b.records.push(r);
            }
            Next::Missing { from, to } => b.missing.push((from, to)),
            Next::End => break,
        }
    }
    Ok(b)
}

fn unix_ms() -> u64 {
    (now_us() / 1000).max(0) as u64
}

/// The wait after the `n`th failure in a row (1-based): doubling, capped, plus up to a
/// quarter more so several gateways do not come back at the same instant.
fn backoff(c: &Checked, n: u32) -> Duration {
    let base = c
        .retry_initial
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
        .min(c.retry_max);
    let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

struct Task {
    log_dir: PathBuf,
    name: String,
    /// Acknowledged up to here (in memory; the stored one may lag if storing failed).
    cursor: u64,
    checked: Checked,
    transport: Transport,
    durable: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    status: Arc<Mutex<SinkStatus>>,
}

impl Task {
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        f(&mut self.status.lock().expect("status lock"));
    }

    fn failed(&self, failures: u32, e: &SinkError) {
        let msg = e.to_string();
        if failures == 1 {
            warn!(target: "portcullis::audit", sink = %self.name, cursor = self.cursor, "audit sink failed, retrying (its backlog waits in the log): {msg}");
        } else {
            debug!(target: "portcullis::audit", sink = %self.name, failures, "audit sink failed again: {msg}");
        }
        self.update(|s| {
            s.failures = failures;
            s.last_error = Some(msg);
            s.last_error_unix_ms = Some(unix_ms());
        });
    }

    /// Sleeps `wait` unless told to stop first; false when stopping.
    async fn pause(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.stop.changed() => false,
        }
    }

    async fn store_cursor(&self) {
        let (dir, name, next) = (self.log_dir.clone(), self.name.clone(), self.cursor);
        let stored = tokio::task::spawn_blocking(move || cursor::store(&dir, &name, next)).await;
        // Not stored is not lost: delivery goes on from the cursor in memory, and a
        // restart before the next store sends these records again.
        let err = match stored {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        warn!(target: "portcullis::audit", sink = %self.name, "audit sink cursor not stored: {err}");
        self.update(|s| {
            s.last_error = Some(err);
            s.last_error_unix_ms = Some(unix_ms());
        });
    }

    async fn run(mut self) {
        let mut tail = Some(Tail::new(&self.log_dir, self.cursor));
        let mut failures = 0u32;
        let mut pending = Batch::default();
        loop {
            if *self.stop.borrow() {
                break;
            }
            if pending.records.is_empty() {
                let durable = *self.durable.borrow_and_update();
                if self.cursor >= durable {
                    tokio::select! {
                        changed = self.durable.changed() => {
                            if changed.is_err() && *self.durable.borrow() <= self.cursor {
                                break;
                            }
                        }
                        _ = self.stop.changed() => break,
                    }
                    continue;
                }
                let mut t = tail.take().expect("the tail is put back after each read");
                let checked = self.checked.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let r = read_batch(&mut t, durable, &checked);
                    (t, r)
                })
                .await;
                let result = match read {
                    Ok((t, r)) => {
                        tail = Some(t);
                        r.map_err(SinkError::from)
                    }
                    Err(e) => {
                        tail = Some(Tail::new(&self.log_dir, self.cursor));
                        Err(SinkError::Reader(e.to_string()))
                    }
                };
                match result {
                    Ok(b) => pending = b,
                    Err(e) => {
                        failures += 1;
                        self.failed(failures, &e);
                        if !self.pause(backoff(&self.checked, failures)).await {
                            break;
                        }
                        continue;
                    }
                }
                for &(from, to) in &pending.missing {
                    warn!(target: "portcullis::audit", sink = %self.name, from, to, "audit records {from}..{to} are no longer in the log; this sink skips them");
                    self.update(|s| s.missing += to - from);
                }
                pending.missing.clear();
                if pending.records.is_empty() {
                    let next = tail.as_ref().map_or(self.cursor, Tail::next_index);
                    if next > self.cursor {
                        // Only a missing range: move past it.
                        self.cursor = next;
                        self.store_cursor().await;
                        self.update(|s| s.cursor = next);
                    } else if !self.pause(Duration::from_millis(20)).await {
                        // Counted durable but not readable yet (a slow file system).
                        break;
                    }
                    continue;
                }
            }
            let attempt = self
                .transport
                .send_batch(&pending.records, &pending.docs)
                .await;
            match attempt {
                Ok(truncated) => {
                    if failures > 0 {
                        info!(target: "portcullis::audit", sink = %self.name, failures, "audit sink delivers again");
                    }
                    failures = 0;
                    let n = pending.records.len() as u64;
                    self.cursor = tail.as_ref().map_or(self.cursor, Tail::next_index);
                    pending = Batch::default();
                    self.store_cursor().await;
                    let cursor = self.cursor;
                    self.update(|s| {
                        s.cursor = cursor;
                        s.delivered += n;
                        s.truncated += truncated;
                        s.failures = 0;
                        s.last_success_unix_ms = Some(unix_ms());
                    });
                }
                Err(e) => {
                    failures += 1;
                    self.failed(failures, &e);
                    if !self.pause(backoff(&self.checked, failures)).await {
                        break;
                    }
                }
            }
        }
        self.update(|s| s.stopped = true);
    }
}

#[cfg(test)]
mod tests;
