//! The workloads, as data: what each one sends, to which targets, and how long it runs.
//!
//! The plan is built once per run from the mode (quick or full) and the dataset, so the
//! runner, the report and the tests all agree on one list.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::target::Target;
use crate::wire::Format;

/// The family a workload belongs to; decides its headline figure and which targets run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// SELECT * of the dataset table.
    Narrow,
    /// ~1 GB of 8 KiB rows.
    Wide,
    /// COPY … TO STDOUT.
    Copy,
    /// SELECT 1 and primary-key lookups.
    Small,
    /// A new connection per transaction.
    Connect,
    /// pgbench as an outside witness.
    Pgbench,
}

impl Group {
    /// Large results are judged on time, everything else on transactions per second.
    pub fn primary(self) -> Primary {
        match self {
            Group::Narrow | Group::Wide | Group::Copy => Primary::WallSeconds,
            Group::Small | Group::Connect | Group::Pgbench => Primary::Tps,
        }
    }

    /// Masking targets only see the large query results (workload 6 of the issue): the
    /// gateway refuses COPY out of masked tables by design, since COPY output cannot be
    /// mapped to source columns.
    pub fn runs_masked(self) -> bool {
        matches!(self, Group::Narrow | Group::Wide)
    }
}

/// The figure a workload's ratios are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Primary {
    /// Median seconds per query; lower is better.
    WallSeconds,
    /// Transactions per second; higher is better.
    Tps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Extended(Format),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallQuery {
    Select1,
    PkLookup,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// One large result per query, repeated until the slice is used up.
    Stream { sql: String, protocol: Protocol },
    /// Closed-loop small queries from `clients` connections.
    Small {
        query: SmallQuery,
        prepared: bool,
        clients: u32,
    },
    /// Connect, authenticate, SELECT 1, disconnect; over and over.
    Connect { clients: u32 },
    /// `pgbench -S` (`connect` adds `-C`).
    Pgbench { clients: u32, connect: bool },
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Stable id: `narrow/extended-binary`, `small/select1-prepared-c8`...
    pub id: String,
    pub group: Group,
    pub action: Action,
    /// Rows one query must return, when known; a mismatch fails the trial.
    pub expected_rows: Option<u64>,
}

impl Workload {
    pub fn applies_to(&self, t: &Target) -> bool {
        !t.masked || self.group.runs_masked()
    }
}

/// Run lengths for one mode.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A/B/C rounds: each round runs every target once, in a rotated order.
    pub rounds: u32,
    /// How long one trial of a closed-loop workload measures.
    pub slice: Duration,
    /// Large-result trials repeat the query until at least this much time has passed.
    pub min_stream: Duration,
    /// pgbench transactions per client per trial.
    pub pgbench_tx: u32,
}

impl Timing {
    pub fn quick() -> Timing {
        Timing {
            rounds: 2,
            slice: Duration::from_millis(100),
            min_stream: Duration::from_millis(30),
            pgbench_tx: 50,
        }
    }

    pub fn full() -> Timing {
        Timing {
            rounds: 3,
            slice: Duration::from_millis(1500),
            min_stream: Duration::from_millis(1000),
            pgbench_tx: 4000,
        }
    }
}

/// What the plan is built from.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Rows in `accounts`.
    pub rows: u64,
    /// Total bytes of the wide result (8 KiB rows).
    pub wide_bytes: u64,
    pub client_counts: Vec<u32>,
    /// Whether pgbench's tables are there.
    pub pgbench: bool,
}

/// Bytes of text in one wide row: 8 KiB.
pub const WIDE_ROW: u64 = 8192;

pub fn plan(o: &PlanOptions) -> Vec<Workload> {
    let mut w = Vec::new();
    let narrow = "SELECT * FROM accounts";
    for (name, protocol) in [
        ("simple-text", Protocol::Simple),
        ("extended-text", Protocol::Extended(Format::Text)),
        ("extended-binary", Protocol::Extended(Format::Binary)),
    ] {
        w.push(Workload {
            id: format!("narrow/{name}"),
            group: Group::Narrow,
            action: Action::Stream {
                sql: narrow.into(),
                protocol,
            },
            expected_rows: Some(o.rows),
        });
    }
    let wide_rows = (o.wide_bytes / WIDE_ROW).max(1);
    // Generated on the fly so the server does no TOAST work and the proxy is what's measured;
    // md5 makes rows differ so nothing along the way can shortcut repeated content.
    let wide = format!(
        "SELECT i, repeat(md5(i::text), {}) AS payload FROM generate_series(1, {wide_rows}) AS i",
        WIDE_ROW / 32
    );
    for (name, protocol) in [
        ("simple-text", Protocol::Simple),
        ("extended-binary", Protocol::Extended(Format::Binary)),
    ] {
        w.push(Workload {
            id: format!("wide/{name}"),
            group: Group::Wide,
            action: Action::Stream {
                sql: wide.clone(),
                protocol,
            },
            expected_rows: Some(wide_rows),
        });
    }
    for (name, sql) in [
        ("text", "COPY accounts TO STDOUT"),
        ("binary", "COPY accounts TO STDOUT (FORMAT binary)"),
    ] {
        w.push(Workload {
            id: format!("copy/{name}"),
            group: Group::Copy,
            action: Action::Stream {
                sql: sql.into(),
                protocol: Protocol::Simple,
            },
            // Binary COPY sends its header in the first row's CopyData, so counts match.
            expected_rows: Some(o.rows),
        });
    }
    for (qname, query) in [
        ("select1", SmallQuery::Select1),
        ("pk", SmallQuery::PkLookup),
    ] {
        for prepared in [false, true] {
            for &clients in &o.client_counts {
                let proto = if prepared { "prepared" } else { "simple" };
                w.push(Workload {
                    id: format!("small/{qname}-{proto}-c{clients}"),
                    group: Group::Small,
                    action: Action::Small {
                        query,
                        prepared,
                        clients,
                    },
                    expected_rows: Some(1),
                });
            }
        }
    }
    w.push(Workload {
        id: "connect/c1".into(),
        group: Group::Connect,
        action: Action::Connect { clients: 1 },
        expected_rows: Some(1),
    });
    if o.pgbench {
        for connect in [false, true] {
            w.push(Workload {
                id: format!(
                    "pgbench/select-only{}-c8",
                    if connect { "-connect" } else { "" }
                ),
                group: Group::Pgbench,
                action: Action::Pgbench {
                    clients: 8,
                    connect,
                },
                expected_rows: None,
            });
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_unique() {
        let p = plan(&PlanOptions {
            rows: 10,
            wide_bytes: 1 << 20,
            client_counts: vec![1, 8],
            pgbench: true,
        });
        let mut ids: Vec<_> = p.iter().map(|w| w.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), p.len());
        assert!(
            p.iter()
                .any(|w| w.id == "wide/simple-text" && w.expected_rows == Some(128))
        );
    }
}
