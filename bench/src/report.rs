//! The result of a run as one serialisable document: the JSON schema `portcullis-bench/1`.
//!
//! Everything the table, the charts and `--compare` show is derived from a [`Report`], so a
//! JSON file from an earlier run can be re-rendered or compared without re-running. The
//! schema is documented field by field in `bench/SCHEMA.md`; change both together and bump
//! [`SCHEMA`] when a field changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::target::{Kind, Unavailable};
use crate::workload::{Group, Primary};

pub const SCHEMA: &str = "portcullis-bench/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// `quick` or `full`.
    pub mode: String,
    pub host: HostInfo,
    pub dataset: DatasetInfo,
    pub targets: Vec<TargetInfo>,
    /// Targets that were wanted but could not run, with the reason.
    pub unavailable: Vec<Unavailable>,
    pub workloads: Vec<WorkloadInfo>,
    /// One per (workload, target) pair that ran.
    pub results: Vec<Measurement>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpus: usize,
    pub kernel: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub table: String,
    pub rows: u64,
    pub seed: Option<u64>,
    /// Bytes of the wide result.
    pub wide_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub kind: Kind,
    pub masked: bool,
    /// Gateways: statement policy on or off (`[policy] enabled = false`); `None` otherwise.
    /// Absent from reports written before it existed.
    #[serde(default)]
    pub policy: Option<bool>,
    /// Gateways: the configured I/O engine, when known.
    #[serde(default)]
    pub engine: Option<String>,
    /// Password redacted.
    pub url: String,
    pub notes: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub id: String,
    pub group: Group,
    pub primary: Primary,
    pub rounds: u32,
}

/// Latency percentiles in microseconds (fractional), from an HDR histogram of every query
/// recorded in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// CPU seconds by process role over the whole measurement; `None` when not observable
/// (a remote deployment, or no such process for this target).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    /// The gateway or pgbouncer process.
    pub proxy: Option<f64>,
    /// The postmaster and every backend.
    pub postgres: Option<f64>,
    /// This bench process: evidence that the client was not the bottleneck.
    pub client: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub workload: String,
    pub target: String,
    /// Trials that completed (one per round).
    pub trials: u32,
    /// Set when a trial failed; the figures then cover the trials before it.
    pub error: Option<String>,
    /// Seconds measured, all trials.
    pub elapsed_s: f64,
    /// Queries (or transactions) completed, all trials.
    pub queries: u64,
    /// Median over trials of seconds per query: the large-result headline.
    pub wall_s: f64,
    /// DataRow/CopyData messages received.
    pub rows: u64,
    /// Rows the server reported in CommandComplete.
    pub reported_rows: u64,
    /// Bytes of the DataRow/CopyData messages, as counted by the client.
    pub payload_bytes: u64,
    /// Kernel TCP counters of the client sockets: `tcpi_bytes_received` / `tcpi_bytes_acked`.
    pub wire_bytes_received: u64,
    pub wire_bytes_sent: u64,
    /// Wire bytes received per second, in 10^6 bytes.
    pub mb_s: f64,
    pub rows_s: f64,
    pub tps: f64,
    pub latency_us: Latency,
    pub cpu_s: Cpu,
    /// Proxy and postgres CPU seconds per 10^9 wire bytes received.
    pub cpu_s_per_gb: Cpu,
    /// Proxy and postgres CPU microseconds per query or transaction.
    pub cpu_us_per_tx: Cpu,
    /// Highest VmHWM of the proxy process across trials, KiB (reset before each trial).
    pub proxy_peak_rss_kib: Option<u64>,
    /// Primary figure of this target divided by direct's (wall time or TPS).
    pub ratio_to_direct: Option<f64>,
    /// The same against the `pgbouncer` target.
    pub ratio_to_pgbouncer: Option<f64>,
}

impl Measurement {
    pub fn primary(&self, p: Primary) -> f64 {
        match p {
            Primary::WallSeconds => self.wall_s,
            Primary::Tps => self.tps,
        }
    }
}

impl Report {
    pub fn workload(&self, id: &str) -> Option<&WorkloadInfo> {
        self.workloads.iter().find(|w| w.id == id)
    }

    pub fn result(&self, workload: &str, target: &str) -> Option<&Measurement> {
        self.results
            .iter()
            .find(|m| m.workload == workload && m.target == target)
    }

    /// Fills `ratio_to_direct` and `ratio_to_pgbouncer` from the primary figures.
    pub fn compute_ratios(&mut self) {
        let primaries: BTreeMap<String, Primary> = self
            .workloads
            .iter()
            .map(|w| (w.id.clone(), w.primary))
            .collect();
        let base = |r: &[Measurement], w: &str, t: &str, p: Primary| {
            r.iter()
                .find(|m| m.workload == w && m.target == t && m.error.is_none())
                .map(|m| m.primary(p))
                .filter(|v| *v > 0.0)
        };
        let snapshot = self.results.clone();
        for m in &mut self.results {
            let Some(&p) = primaries.get(&m.workload) else {
                continue;
            };
            let own = m.primary(p);
            if m.error.is_some() || own <= 0.0 {
                continue;
            }
            m.ratio_to_direct = base(&snapshot, &m.workload, "direct", p).map(|b| own / b);
            m.ratio_to_pgbouncer = base(&snapshot, &m.workload, "pgbouncer", p).map(|b| own / b);
        }
    }
}

/// Reports and measurements for the bench's own unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// One trial of `workload` on `target` with these figures and nothing else measured.
    pub fn measurement(
        workload: &str,
        target: &str,
        wall_s: f64,
        tps: f64,
        latency_us: Latency,
    ) -> Measurement {
        Measurement {
            workload: workload.into(),
            target: target.into(),
            trials: 1,
            error: None,
            elapsed_s: 1.0,
            queries: 1,
            wall_s,
            rows: 1,
            reported_rows: 1,
            payload_bytes: 10,
            wire_bytes_received: 10,
            wire_bytes_sent: 10,
            mb_s: 0.0,
            rows_s: 0.0,
            tps,
            latency_us,
            cpu_s: Cpu::default(),
            cpu_s_per_gb: Cpu::default(),
            cpu_us_per_tx: Cpu::default(),
            proxy_peak_rss_kib: None,
            ratio_to_direct: None,
            ratio_to_pgbouncer: None,
        }
    }

    /// A quick-mode report on a two-CPU host.
    pub fn report(
        targets: Vec<TargetInfo>,
        workloads: Vec<WorkloadInfo>,
        results: Vec<Measurement>,
    ) -> Report {
        Report {
            schema: SCHEMA.into(),
            started_at: "t".into(),
            mode: "quick".into(),
            host: HostInfo {
                cpus: 2,
                kernel: String::new(),
                hostname: String::new(),
            },
            dataset: DatasetInfo {
                table: "accounts".into(),
                rows: 1,
                seed: None,
                wide_bytes: 0,
            },
            targets,
            unavailable: Vec::new(),
            workloads,
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_before_the_policy_fields_still_load() {
        let t: TargetInfo = serde_json::from_str(
            r#"{"name":"gateway-uring","kind":"gateway","masked":false,"url":"u","notes":""}"#,
        )
        .unwrap();
        assert_eq!((t.policy, t.engine), (None, None));
    }
}
