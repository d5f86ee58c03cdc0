//! Runs the plan: every workload against every target in interleaved rounds, so drift on the
//! machine (other load, thermal, page cache) hits all targets alike, and folds the trials
//! into [`Measurement`]s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::pgbench;
use crate::procstat::{self, ProcSet};
use crate::report::{Cpu, Latency, Measurement};
use crate::sockstat::WireBytes;
use crate::target::Target;
use crate::wire::{Conn, Counts, Format, WireError};
use crate::workload::{Action, Protocol, SmallQuery, Timing, Workload};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("expected {expected} rows, the server reported {got}")]
    RowCount { expected: u64, got: u64 },
    #[error("{rows} rows arrived but the server reported {reported}")]
    RowsLost { rows: u64, reported: u64 },
    #[error("reading socket counters: {0}")]
    SockStat(std::io::Error),
    #[error("a client task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Pgbench(#[from] pgbench::PgbenchError),
}

/// What one trial measured.
struct Trial {
    elapsed: Duration,
    queries: u64,
    counts: Counts,
    wire: WireBytes,
    hist: Histogram<u64>,
    cpu: Cpu,
    peak_rss_kib: Option<u64>,
    /// pgbench's own figure; overrides queries/elapsed when set.
    tps: Option<f64>,
}

/// CPU counters at one instant.
struct CpuMark {
    proxy: Option<f64>,
    postgres: Option<f64>,
    client: f64,
}

fn cpu_mark(t: &Target) -> CpuMark {
    let read = |p: &Option<ProcSet>| p.as_ref().and_then(|p| p.cpu_seconds().ok());
    let me = ProcSet {
        pid: std::process::id(),
        with_children: false,
    };
    CpuMark {
        proxy: read(&t.proxy),
        postgres: read(&t.postgres),
        client: me.cpu_seconds().unwrap_or(0.0),
    }
}

fn cpu_since(t: &Target, before: &CpuMark) -> Cpu {
    let now = cpu_mark(t);
    // A process that exits inside the window moves from schedstat nanoseconds to tick-rounded
    // cutime, which can make a tiny delta come out below zero.
    let d = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
    Cpu {
        proxy: d(now.proxy, before.proxy),
        postgres: d(now.postgres, before.postgres),
        client: now.client - before.client,
    }
}

fn new_hist() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 1 hour at 3 significant digits: whole microseconds would round
    // each `SELECT 1` p50 (tens of µs) by up to 1 µs, a third of the policy's 3 µs budget.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid")
}

fn nanos(d: Duration) -> u64 {
    (d.as_nanos() as u64).max(1)
}

pub struct Runner {
    pub timing: Timing,
    pub rows: u64,
    pub pgbench_bin: String,
    pub show_progress: bool,
    /// Set on Ctrl-C: the remaining trials are skipped, so the report covers what ran and the
    /// managed processes are torn down instead of left behind.
    pub stop: Arc<AtomicBool>,
}

impl Runner {
    /// Runs everything and returns one measurement per (workload, target) pair.
    pub fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        workloads: &[Workload],
        targets: &[Target],
    ) -> Vec<Measurement> {
        let total: u64 = workloads
            .iter()
            .map(|w| targets.iter().filter(|t| w.applies_to(t)).count() as u64)
            .sum::<u64>()
            * self.timing.rounds as u64;
        let bar = if self.show_progress {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        let mut out = Vec::new();
        for w in workloads {
            let active: Vec<&Target> = targets.iter().filter(|t| w.applies_to(t)).collect();
            let mut trials: Vec<Vec<Trial>> = active.iter().map(|_| Vec::new()).collect();
            let mut errors: Vec<Option<String>> = vec![None; active.len()];
            for round in 0..self.timing.rounds {
                // Rotate the order each round so no target always runs first (cold) or last.
                for k in 0..active.len() {
                    let i = (k + round as usize) % active.len();
                    let t = active[i];
                    bar.set_message(format!("{} @ {}", w.id, t.name));
                    if self.stop.load(Ordering::Relaxed) {
                        errors[i].get_or_insert_with(|| "interrupted".into());
                    }
                    if errors[i].is_none() {
                        match rt.block_on(self.trial(w, t)) {
                            Ok(tr) => trials[i].push(tr),
                            Err(e) => errors[i] = Some(e.to_string()),
                        }
                    }
                    bar.inc(1);
                }
            }
            for (i, t) in active.iter().enumerate() {
                out.push(fold(w, t, &trials[i], errors[i].take()));
            }
        }
        bar.finish_and_clear();
        out
    }

    async fn trial(&self, w: &Workload, t: &Target) -> Result<Trial, RunError> {
        match &w.action {
            Action::Stream { sql, protocol } => self.stream(w, t, sql, *protocol).await,
            Action::Small {
                query,
                prepared,
                clients,
            } => self.small(t, *query, *prepared, *clients).await,
            Action::Connect { clients } => self.connect(t, *clients).await,
            Action::Pgbench { clients, connect } => {
                let mark = cpu_mark(t);
                reset_rss(t);
                let r = pgbench::run(
                    &self.pgbench_bin,
                    &t.conn,
                    *clients,
                    *connect,
                    // A fork and an authentication per transaction: far fewer fit in a slice.
                    if *connect {
                        (self.timing.pgbench_tx / 80).max(10)
                    } else {
                        self.timing.pgbench_tx
                    },
                )
                .await?;
                let mut hist = new_hist();
                let _ = hist.record((r.latency_avg_ms * 1e6).max(1.0) as u64);
                Ok(Trial {
                    elapsed: r.elapsed,
                    queries: r.transactions,
                    counts: Counts::default(),
                    wire: WireBytes::default(),
                    hist,
                    cpu: cpu_since(t, &mark),
                    peak_rss_kib: peak_rss(t),
                    tps: Some(r.tps),
                })
            }
        }
    }

    async fn stream(
        &self,
        w: &Workload,
        t: &Target,
        sql: &str,
        protocol: Protocol,
    ) -> Result<Trial, RunError> {
        let mut conn = Conn::connect(&t.conn).await?;
        let wire0 = conn.wire_bytes().map_err(RunError::SockStat)?;
        let mut hist = new_hist();
        let mut total = Counts::default();
        let mut queries = 0;
        reset_rss(t);
        let mark = cpu_mark(t);
        let t0 = Instant::now();
        loop {
            let q0 = Instant::now();
            let c = match protocol {
                Protocol::Simple => conn.simple_query(sql).await?,
                Protocol::Extended(f) => conn.extended_query(sql, f).await?,
            };
            let _ = hist.record(nanos(q0.elapsed()));
            if let Some(expected) = w.expected_rows
                && c.reported_rows != expected
            {
                return Err(RunError::RowCount {
                    expected,
                    got: c.reported_rows,
                });
            }
            if c.rows < c.reported_rows {
                return Err(RunError::RowsLost {
                    rows: c.rows,
                    reported: c.reported_rows,
                });
            }
            total.add(&c);
            queries += 1;
            if t0.elapsed() >= self.timing.min_stream {
                break;
            }
        }
        let elapsed = t0.elapsed();
        let cpu = cpu_since(t, &mark);
        let wire = conn.wire_bytes().map_err(RunError::SockStat)?.since(&wire0);
        conn.terminate().await;
        Ok(Trial {
            elapsed,
            queries,
            counts: total,
            wire,
            hist,
            cpu,
            peak_rss_kib: peak_rss(t),
            tps: None,
        })
    }

    async fn small(
        &self,
        t: &Target,
        query: SmallQuery,
        prepared: bool,
        clients: u32,
    ) -> Result<Trial, RunError> {
        // Connect everyone first: start-up cost is the connect workload's business.
        let mut conns = Vec::with_capacity(clients as usize);
        for _ in 0..clients {
            let mut c = Conn::connect(&t.conn).await?;
            if prepared {
                c.prepare("q", small_sql(query, true)).await?;
            }
            conns.push(c);
        }
        reset_rss(t);
        let mark = cpu_mark(t);
        let slice = self.timing.slice;
        let max_id = self.rows.max(1);
        let start = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
        let mut tasks = Vec::new();
        for (n, mut conn) in conns.into_iter().enumerate() {
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
                let mut hist = new_hist();
                let mut total = Counts::default();
                let mut queries = 0u64;
                let wire0 = conn.wire_bytes().map_err(RunError::SockStat)?;
                start.wait().await;
                let t0 = Instant::now();
                while t0.elapsed() < slice {
                    let id = rng.gen_range(1..=max_id).to_string();
                    let q0 = Instant::now();
                    let c = match (query, prepared) {
                        (SmallQuery::Select1, false) => conn.simple_query("SELECT 1").await?,
                        (SmallQuery::PkLookup, false) => {
                            conn.simple_query(&format!("SELECT * FROM accounts WHERE id = {id}"))
                                .await?
                        }
                        (SmallQuery::Select1, true) => {
                            conn.execute_prepared("q", &[], Format::Binary).await?
                        }
                        (SmallQuery::PkLookup, true) => {
                            conn.execute_prepared("q", &[&id], Format::Binary).await?
                        }
                    };
                    let _ = hist.record(nanos(q0.elapsed()));
                    if c.reported_rows != 1 {
                        return Err(RunError::RowCount {
                            expected: 1,
                            got: c.reported_rows,
                        });
                    }
                    total.add(&c);
                    queries += 1;
                }
                let wire = conn.wire_bytes().map_err(RunError::SockStat)?.since(&wire0);
                // The connection goes back open: closing it now would end its backend inside
                // the CPU window, where its time would move from schedstat to coarse ticks.
                Ok::<_, RunError>((conn, queries, total, wire, hist))
            }));
        }
        start.wait().await;
        let t0 = Instant::now();
        let mut acc = Trial {
            elapsed: Duration::ZERO,
            queries: 0,
            counts: Counts::default(),
            wire: WireBytes::default(),
            hist: new_hist(),
            cpu: Cpu::default(),
            peak_rss_kib: None,
            tps: None,
        };
        let mut first_err = None;
        let mut open = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok((conn, q, c, wire, h))) => {
                    open.push(conn);
                    acc.queries += q;
                    acc.counts.add(&c);
                    acc.wire.received += wire.received;
                    acc.wire.sent += wire.sent;
                    let _ = acc.hist.add(&h);
                }
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(RunError::Join(e.to_string()))),
            }
        }
        acc.elapsed = t0.elapsed();
        acc.cpu = cpu_since(t, &mark);
        acc.peak_rss_kib = peak_rss(t);
        for conn in open {
            conn.terminate().await;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(acc),
        }
    }

    async fn connect(&self, t: &Target, clients: u32) -> Result<Trial, RunError> {
        reset_rss(t);
        let mark = cpu_mark(t);
        let slice = self.timing.slice;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let conn_info = t.conn.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = new_hist();
                let mut total = Counts::default();
                let mut wire = WireBytes::default();
                let mut queries = 0u64;
                let t0 = Instant::now();
                while t0.elapsed() < slice {
                    let q0 = Instant::now();
                    let mut conn = Conn::connect(&conn_info).await?;
                    let c = conn.simple_query("SELECT 1").await?;
                    let _ = hist.record(nanos(q0.elapsed()));
                    // Counters are read before Terminate, which is not part of the reply.
                    let w = conn.wire_bytes().map_err(RunError::SockStat)?;
                    wire.received += w.received;
                    wire.sent += w.sent;
                    conn.terminate().await;
                    total.add(&c);
                    queries += 1;
                }
                Ok::<_, RunError>((queries, total, wire, hist))
            }));
        }
        let mut acc = Trial {
            elapsed: Duration::ZERO,
            queries: 0,
            counts: Counts::default(),
            wire: WireBytes::default(),
            hist: new_hist(),
            cpu: Cpu::default(),
            peak_rss_kib: None,
            tps: None,
        };
        for task in tasks {
            let (q, c, wire, h) = task.await.map_err(|e| RunError::Join(e.to_string()))??;
            acc.queries += q;
            acc.counts.add(&c);
            acc.wire.received += wire.received;
            acc.wire.sent += wire.sent;
            let _ = acc.hist.add(&h);
        }
        acc.elapsed = t0.elapsed();
        acc.cpu = cpu_since(t, &mark);
        acc.peak_rss_kib = peak_rss(t);
        Ok(acc)
    }
}

fn small_sql(q: SmallQuery, prepared: bool) -> &'static str {
    match (q, prepared) {
        (SmallQuery::Select1, _) => "SELECT 1",
        (SmallQuery::PkLookup, true) => "SELECT * FROM accounts WHERE id = $1",
        (SmallQuery::PkLookup, false) => "SELECT * FROM accounts WHERE id = 1",
    }
}

fn reset_rss(t: &Target) {
    if let Some(p) = &t.proxy {
        procstat::reset_peak_rss(p.pid);
    }
}

fn peak_rss(t: &Target) -> Option<u64> {
    t.proxy
        .as_ref()
        .and_then(|p| procstat::peak_rss_kib(p.pid).ok())
}

/// Folds a target's trials of one workload into its measurement.
fn fold(w: &Workload, t: &Target, trials: &[Trial], error: Option<String>) -> Measurement {
    let mut hist = new_hist();
    let mut elapsed = 0.0;
    let mut queries = 0;
    let mut counts = Counts::default();
    let mut wire = WireBytes::default();
    let mut cpu = Cpu {
        proxy: Some(0.0),
        postgres: Some(0.0),
        client: 0.0,
    };
    let mut rss = None;
    let mut per_query = Vec::new();
    let mut tps_samples = Vec::new();
    for tr in trials {
        let _ = hist.add(&tr.hist);
        elapsed += tr.elapsed.as_secs_f64();
        queries += tr.queries;
        counts.add(&tr.counts);
        wire.received += tr.wire.received;
        wire.sent += tr.wire.sent;
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        cpu.proxy = add(cpu.proxy, tr.cpu.proxy);
        cpu.postgres = add(cpu.postgres, tr.cpu.postgres);
        cpu.client += tr.cpu.client;
        rss = rss.max(tr.peak_rss_kib);
        if tr.queries > 0 {
            per_query.push(tr.elapsed.as_secs_f64() / tr.queries as f64);
        }
        if let Some(tps) = tr.tps {
            tps_samples.push(tps);
        }
    }
    if trials.is_empty() {
        cpu = Cpu::default();
    }
    let per_sec = |x: f64| if elapsed > 0.0 { x / elapsed } else { 0.0 };
    let tps = if tps_samples.is_empty() {
        per_sec(queries as f64)
    } else {
        median(&mut tps_samples)
    };
    let gb = wire.received as f64 / 1e9;
    let per = |v: Option<f64>, d: f64, k: f64| v.filter(|_| d > 0.0).map(|v| v / d * k);
    Measurement {
        workload: w.id.clone(),
        target: t.name.clone(),
        trials: trials.len() as u32,
        error,
        elapsed_s: elapsed,
        queries,
        wall_s: median(&mut per_query),
        rows: counts.rows,
        reported_rows: counts.reported_rows,
        payload_bytes: counts.row_bytes,
        wire_bytes_received: wire.received,
        wire_bytes_sent: wire.sent,
        mb_s: per_sec(wire.received as f64) / 1e6,
        rows_s: per_sec(counts.rows as f64),
        tps,
        latency_us: latency(&hist),
        cpu_s: cpu,
        cpu_s_per_gb: Cpu {
            proxy: per(cpu.proxy, gb, 1.0),
            postgres: per(cpu.postgres, gb, 1.0),
            client: if gb > 0.0 { cpu.client / gb } else { 0.0 },
        },
        cpu_us_per_tx: Cpu {
            proxy: per(cpu.proxy, queries as f64, 1e6),
            postgres: per(cpu.postgres, queries as f64, 1e6),
            client: if queries > 0 {
                cpu.client / queries as f64 * 1e6
            } else {
                0.0
            },
        },
        proxy_peak_rss_kib: rss,
        ratio_to_direct: None,
        ratio_to_pgbouncer: None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    // Recorded in nanoseconds, reported in microseconds.
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1e3;
    Latency {
        count: h.len(),
        mean: h.mean() / 1e3,
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_in_microseconds_below_one() {
        let mut h = new_hist();
        for ns in [40_000, 41_500, 43_250] {
            h.record(ns).unwrap();
        }
        let l = latency(&h);
        assert_eq!(l.count, 3);
        // 3 significant digits: within 0.1% of 41.5 µs, not rounded to a whole µs.
        assert!((l.p50 - 41.5).abs() < 0.05, "p50 {}", l.p50);
        assert!((l.max - 43.25).abs() < 0.05, "max {}", l.max);
        assert_eq!(nanos(Duration::from_micros(7)), 7_000);
        assert_eq!(nanos(Duration::ZERO), 1);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
