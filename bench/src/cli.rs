//! The command line and the run it drives: set up (or point at) the targets, run the plan,
//! write the JSON and the charts, print the tables and, with `--compare`, what changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::managed::{self, ManagedOptions};
use crate::procstat::ProcSet;
use crate::report::{DatasetInfo, HostInfo, Report, SCHEMA, TargetInfo, WorkloadInfo};
use crate::runner::Runner;
use crate::target::{ConnInfo, Kind, Target, TargetError, Unavailable};
use crate::wire;
use crate::workload::{self, PlanOptions, Timing};
use crate::{charts, compare, goals, table};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("set-up: {0}")]
    Managed(#[from] managed::ManagedError),
    #[error("asking {target} about the dataset: {source}")]
    Probe {
        target: String,
        source: wire::WireError,
    },
    #[error(
        "the `accounts` table is missing or empty at {0}; load the dataset first (the quickstart does)"
    )]
    NoDataset(String),
    #[error("--gateway needs --direct: ratios are taken against a direct connection")]
    NoDirect,
    #[error("--targets: no target named `{0}` against an existing deployment (direct, {names})", names = EXISTING.join(", "))]
    UnknownTarget(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Chart(#[from] charts::ChartError),
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// The I/O engine of `gateway-variant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantEngine {
    Epoll,
    Uring,
}

impl From<VariantEngine> for portcullis_tests::Engine {
    fn from(e: VariantEngine) -> Self {
        match e {
            VariantEngine::Epoll => portcullis_tests::Engine::Epoll,
            VariantEngine::Uring => portcullis_tests::Engine::Uring,
        }
    }
}

/// Measure the gateway against a direct connection and pgbouncer.
///
/// Without `--direct` it starts everything itself (PostgreSQL, pgbouncer, the gateway).
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-bench", version)]
pub struct Args {
    /// A few seconds per workload and a small dataset (the default is the full run).
    #[arg(long)]
    pub quick: bool,
    /// Rows in the financial dataset [default: 1000000, quick: 20000].
    #[arg(long)]
    pub rows: Option<u64>,
    /// Seed of the deterministic dataset.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Size of the wide result in MiB [default: 1024, quick: 32].
    #[arg(long)]
    pub wide_mib: Option<u64>,
    /// Client counts for the small-query workloads [default: 1,8,32,128, quick: 1,8].
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<u32>>,
    /// Rounds per workload (each runs every target once) [default: 3, quick: 2].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Only workloads whose id contains one of these (comma-separated): a substring, so
    /// `small/select1-simple-c1` also picks `-c128`; pair with `--clients 1` instead, e.g.
    /// `--clients 1 --only small/select1,pgbench/select-only-c8`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only these targets (comma-separated names; `direct` always runs). Managed:
    /// direct, pgbouncer, pgbouncer-pktbuf, gateway-epoll, gateway-uring,
    /// gateway-nopool, gateway-nopolicy, gateway-masked, gateway-approvals, gateway-audit,
    /// gateway-audit-os, gateway-variant (with `--variant`). Existing: direct, pgbouncer, gateway,
    /// gateway-nopolicy, gateway-masked.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,

    /// Existing deployment: a direct connection URL (postgres://user:pass@host:port/db).
    #[arg(long)]
    pub direct: Option<String>,
    /// Existing deployment: the gateway URL.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Existing deployment: a gateway URL whose identity has masking on.
    #[arg(long)]
    pub gateway_masked: Option<String>,
    /// Existing deployment: the same gateway with `[policy] enabled = false`, which the
    /// policy-cost goals compare `--gateway` with.
    #[arg(long)]
    pub gateway_nopolicy: Option<String>,
    /// Existing deployment: pgbouncer's URL.
    #[arg(long)]
    pub pgbouncer: Option<String>,
    /// Pids to read CPU time and memory from, when the processes are on this machine.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    #[arg(long)]
    pub gateway_nopolicy_pid: Option<u32>,
    #[arg(long)]
    pub pgbouncer_pid: Option<u32>,
    /// The postmaster's pid (its children are the backends).
    #[arg(long)]
    pub postgres_pid: Option<u32>,

    /// The pgbouncer binary for the managed set-up.
    #[arg(long, default_value = "/usr/sbin/pgbouncer")]
    pub pgbouncer_bin: PathBuf,
    /// A gateway config whose `[mask…]` tables replace the quickstart's masking policy for
    /// the masked target.
    #[arg(long)]
    pub mask_policy: Option<PathBuf>,
    /// A line for the `[server]` section of `gateway-variant` (repeatable), which runs
    /// only when one is given: `gateway-epoll` with one setting changed, in the same run,
    /// e.g. `--variant "read_batch_bytes = 0"`.
    #[arg(long)]
    pub variant: Vec<String>,
    /// The engine `gateway-variant` runs on.
    #[arg(long, value_enum, default_value_t = VariantEngine::Epoll)]
    pub variant_engine: VariantEngine,
    /// Do not start the gateway (managed set-up): direct and pgbouncer only.
    #[arg(long)]
    pub no_gateway: bool,
    /// pgbench binary, the outside witness.
    #[arg(long, default_value = "pgbench")]
    pub pgbench_bin: String,

    /// Where bench.json and the charts go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// An earlier bench.json to compare with.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    #[arg(long)]
    pub no_charts: bool,
    /// Run nothing: print the tables and draw the charts of an earlier bench.json.
    #[arg(long)]
    pub render: Option<PathBuf>,
    #[arg(long)]
    pub no_progress: bool,
}

/// What a run leaves behind.
pub struct Outcome {
    pub report: Report,
    pub json: PathBuf,
    pub charts: Vec<PathBuf>,
}

fn load(path: &PathBuf) -> Result<Report, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BenchError::Json {
        path: path.clone(),
        source,
    })
}

/// Tables, goals, the comparison and charts of a finished report.
fn present(args: &Args, report: &Report) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        path: args.out.clone(),
        source,
    })?;
    let charts = if args.no_charts {
        Vec::new()
    } else {
        charts::write_all(report, &args.out)?
    };
    println!("{}", table::tables(report));
    println!("{}", goals::table(report));
    if let Some(old) = &args.compare {
        println!("{}", compare::compare(&load(old)?, report));
    }
    for c in &charts {
        println!("chart: {}", c.display());
    }
    Ok(charts)
}

pub fn run(args: &Args) -> Result<Outcome, BenchError> {
    if let Some(path) = &args.render {
        let report = load(path)?;
        let charts = present(args, &report)?;
        return Ok(Outcome {
            report,
            json: path.clone(),
            charts,
        });
    }
    let quick = args.quick;
    let mut timing = if quick {
        Timing::quick()
    } else {
        Timing::full()
    };
    if let Some(r) = args.rounds {
        timing.rounds = r.max(1);
    }
    let rows = args.rows.unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let wide_bytes = args.wide_mib.unwrap_or(if quick { 32 } else { 1024 }) << 20;
    let client_counts = args.clients.clone().unwrap_or_else(|| {
        if quick {
            vec![1, 8, 32]
        } else {
            vec![1, 8, 32, 128]
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let say = |m: &str| {
        if !args.no_progress {
            eprintln!("bench: {m}");
        }
    };

    let started_at = rfc3339(SystemTime::now());
    // Keeps the managed processes alive until the report is written.
    let _deployment;
    let (targets, unavailable, dataset_rows, pgbench_ready, seed) = match &args.direct {
        None if args.gateway.is_some()
            || args.gateway_nopolicy.is_some()
            || args.gateway_masked.is_some()
            || args.pgbouncer.is_some() =>
        {
            return Err(BenchError::NoDirect);
        }
        None => {
            let d = managed::start(
                &ManagedOptions {
                    rows,
                    seed: args.seed,
                    pgbench_scale: if quick { 1 } else { 10 },
                    pgbouncer_bin: args.pgbouncer_bin.clone(),
                    mask_policy: args.mask_policy.clone(),
                    gateway: !args.no_gateway,
                    targets: args.targets.clone(),
                    variant: args.variant.clone(),
                    variant_engine: args.variant_engine.into(),
                },
                &say,
            )?;
            let out = (
                d.targets.clone(),
                d.unavailable.clone(),
                rows,
                d.pgbench_ready,
                Some(args.seed),
            );
            _deployment = d;
            out
        }
        Some(direct) => {
            let (t, u) = existing_targets(args, direct)?;
            let (n, pgb) = rt.block_on(probe(&t[0]))?;
            (t, u, n, pgb, None)
        }
    };
    let wl: Vec<_> = workload::plan(&PlanOptions {
        rows: dataset_rows,
        wide_bytes,
        client_counts,
        pgbench: pgbench_ready,
    })
    .into_iter()
    .filter(|w| args.only.is_empty() || args.only.iter().any(|o| w.id.contains(o.as_str())))
    .collect();
    say(&format!(
        "{} workloads x {} targets x {} rounds",
        wl.len(),
        targets.len(),
        timing.rounds
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("bench: interrupted; finishing the report with what ran");
            flag.store(true, Ordering::Relaxed);
        }
    });
    let runner = Runner {
        timing,
        rows: dataset_rows,
        pgbench_bin: args.pgbench_bin.clone(),
        show_progress: !args.no_progress,
        stop,
    };
    let results = runner.run(&rt, &wl, &targets);

    let mut report = Report {
        schema: SCHEMA.into(),
        started_at,
        mode: if quick { "quick" } else { "full" }.into(),
        host: host_info(),
        dataset: DatasetInfo {
            table: "accounts".into(),
            rows: dataset_rows,
            seed,
            wide_bytes: (wide_bytes / workload::WIDE_ROW).max(1) * workload::WIDE_ROW,
        },
        targets: targets
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                kind: t.kind,
                masked: t.masked,
                policy: t.policy,
                engine: t.engine.clone(),
                url: t.conn.redacted(),
                notes: notes(t),
            })
            .collect(),
        unavailable,
        workloads: wl
            .iter()
            .map(|w| WorkloadInfo {
                id: w.id.clone(),
                group: w.group,
                primary: w.group.primary(),
                rounds: timing.rounds,
            })
            .collect(),
        results,
    };
    report.compute_ratios();

    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        path: args.out.clone(),
        source,
    })?;
    let json = args.out.join("bench.json");
    let text = serde_json::to_string_pretty(&report).map_err(|source| BenchError::Json {
        path: json.clone(),
        source,
    })?;
    std::fs::write(&json, text).map_err(|source| BenchError::Io {
        path: json.clone(),
        source,
    })?;
    println!("json: {}", json.display());
    let charts = present(args, &report)?;
    Ok(Outcome {
        report,
        json,
        charts,
    })
}

fn notes(t: &Target) -> String {
    let mut n = Vec::new();
    if t.masked {
        n.push("masking on");
    }
    if t.policy == Some(false) {
        n.push("statement policy off");
    }
    if t.proxy.is_none() && t.kind != Kind::Direct {
        n.push("proxy CPU/RSS not observed (no pid)");
    }
    if t.postgres.is_none() {
        n.push("postgres CPU not observed (no pid)");
    }
    n.join("; ")
}

/// Target names against an existing deployment, besides `direct`.
const EXISTING: [&str; 4] = ["pgbouncer", "gateway", "gateway-nopolicy", "gateway-masked"];

fn existing_targets(
    args: &Args,
    direct: &str,
) -> Result<(Vec<Target>, Vec<Unavailable>), BenchError> {
    if let Some(bad) = args
        .targets
        .iter()
        .find(|t| *t != "direct" && !EXISTING.contains(&t.as_str()))
    {
        return Err(BenchError::UnknownTarget(bad.clone()));
    }
    let postgres = args.postgres_pid.map(|pid| ProcSet {
        pid,
        with_children: true,
    });
    let mut targets = vec![Target {
        name: "direct".into(),
        kind: Kind::Direct,
        conn: ConnInfo::parse(direct)?,
        masked: false,
        policy: None,
        engine: None,
        proxy: None,
        postgres,
    }];
    let mut unavailable = Vec::new();
    // What the URLs are is the caller's word: `--gateway` runs its policy, the
    // `--gateway-nopolicy` one has `[policy] enabled = false`; the engines are not known.
    let gw = Some(true);
    let given = [
        (
            "pgbouncer",
            &args.pgbouncer,
            Kind::Pgbouncer,
            false,
            None,
            args.pgbouncer_pid,
        ),
        (
            "gateway",
            &args.gateway,
            Kind::Gateway,
            false,
            gw,
            args.gateway_pid,
        ),
        (
            "gateway-nopolicy",
            &args.gateway_nopolicy,
            Kind::Gateway,
            false,
            Some(false),
            args.gateway_nopolicy_pid,
        ),
        (
            "gateway-masked",
            &args.gateway_masked,
            Kind::Gateway,
            true,
            gw,
            args.gateway_pid,
        ),
    ];
    for (name, url, kind, masked, policy, pid) in given {
        if !args.targets.is_empty() && !args.targets.iter().any(|t| t == name) {
            continue;
        }
        match url {
            Some(u) => targets.push(Target {
                name: name.into(),
                kind,
                conn: ConnInfo::parse(u)?,
                masked,
                policy,
                engine: None,
                proxy: pid.map(|pid| ProcSet {
                    pid,
                    with_children: false,
                }),
                postgres,
            }),
            None => unavailable.push(Unavailable {
                name: name.into(),
                reason: "no URL given".into(),
            }),
        }
    }
    Ok((targets, unavailable))
}

/// How many rows `accounts` has and whether pgbench's tables are there.
async fn probe(direct: &Target) -> Result<(u64, bool), BenchError> {
    let err = |source| BenchError::Probe {
        target: direct.conn.redacted(),
        source,
    };
    let mut c = wire::connect_retry(&direct.conn, Duration::from_secs(5))
        .await
        .map_err(err)?;
    let rows = c
        .query_scalar("SELECT CASE WHEN to_regclass('accounts') IS NULL THEN 0 ELSE (SELECT count(*) FROM accounts) END")
        .await
        .map_err(err)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pgbench = c
        .query_scalar("SELECT to_regclass('pgbench_accounts') IS NOT NULL")
        .await
        .map_err(err)?
        .is_some_and(|v| v == "t");
    c.terminate().await;
    if rows == 0 {
        return Err(BenchError::NoDataset(direct.conn.redacted()));
    }
    Ok((rows, pgbench))
}

fn host_info() -> HostInfo {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    HostInfo {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
    }
}

/// UTC timestamp without a date library: days-to-civil from Howard Hinnant's algorithm.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_953_600);
        assert_eq!(rfc3339(t), "2026-11-29T12:00:00Z");
    }
}
