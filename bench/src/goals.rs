//! The performance goals, checked against one report: each gateway target's figure,
//! the limit, and whether it is met. Derived from the report, never stored in it, so the
//! limits can change without changing the schema.

use std::fmt::Write;

use crate::report::{Measurement, Report};
use crate::target::Kind;

/// One line of the goals table.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub goal: &'static str,
    pub target: String,
    /// What was measured, formatted with its unit.
    pub figure: String,
    /// `None` when the run lacks the workloads or targets the goal needs.
    pub met: Option<bool>,
}

fn ok_results<'a>(r: &'a Report, target: &str, prefix: &str) -> Vec<&'a Measurement> {
    r.results
        .iter()
        .filter(|m| m.target == target && m.workload.starts_with(prefix) && m.error.is_none())
        .collect()
}

fn worst_ratio(r: &Report, target: &str, prefix: &str) -> Option<f64> {
    ok_results(r, target, prefix)
        .iter()
        .filter_map(|m| m.ratio_to_direct)
        .reduce(f64::max)
}

/// Proxy CPU seconds per GB over every large-result workload of a target.
fn cpu_per_gb(r: &Report, target: &str) -> Option<f64> {
    let mut cpu = 0.0;
    let mut bytes = 0u64;
    for m in ["narrow/", "wide/", "copy/"]
        .iter()
        .flat_map(|p| ok_results(r, target, p))
    {
        cpu += m.cpu_s.proxy?;
        bytes += m.wire_bytes_received;
    }
    (bytes > 0).then(|| cpu / (bytes as f64 / 1e9))
}

fn added_latency(r: &Report, target: &str) -> Option<(f64, f64)> {
    let mut worst: Option<(f64, f64)> = None;
    for w in ["small/select1-simple-c1", "small/select1-prepared-c1"] {
        let (Some(g), Some(d)) = (r.result(w, target), r.result(w, "direct")) else {
            continue;
        };
        if g.error.is_some() || d.error.is_some() {
            continue;
        }
        let p50 = g.latency_us.p50 - d.latency_us.p50;
        let p99 = g.latency_us.p99 - d.latency_us.p99;
        worst = Some(worst.map_or((p50, p99), |(a, b)| (a.max(p50), b.max(p99))));
    }
    worst
}

pub fn verdicts(r: &Report) -> Vec<Verdict> {
    let mut out = Vec::new();
    let ratio_goal = |out: &mut Vec<Verdict>, goal, target: &str, prefix, limit: f64| {
        let v = worst_ratio(r, target, prefix);
        out.push(Verdict {
            goal,
            target: target.into(),
            figure: v.map_or("-".into(), |v| format!("x{v:.2} worst")),
            met: v.map(|v| v <= limit),
        });
    };
    for t in r.targets.iter().filter(|t| t.kind == Kind::Gateway) {
        let name = t.name.as_str();
        if t.masked {
            ratio_goal(
                &mut out,
                "large narrow result, masked: <= x1.15",
                name,
                "narrow/",
                1.15,
            );
            continue;
        }
        ratio_goal(
            &mut out,
            "large narrow result: <= x1.05",
            name,
            "narrow/",
            1.05,
        );
        ratio_goal(
            &mut out,
            "1 GB of 8 KiB rows: <= x1.10",
            name,
            "wide/",
            1.10,
        );
        let pgb = r
            .result("pgbench/select-only-c8", name)
            .filter(|m| m.error.is_none())
            .and_then(|m| m.ratio_to_direct);
        out.push(Verdict {
            goal: "pgbench -S, 8 clients: >= x0.75 of direct TPS",
            target: name.into(),
            figure: pgb.map_or("-".into(), |v| format!("x{v:.2}")),
            met: pgb.map(|v| v >= 0.75),
        });
        let lat = added_latency(r, name);
        out.push(Verdict {
            goal: "SELECT 1 added latency: p50 <= 15 µs, p99 <= 40 µs",
            target: name.into(),
            figure: lat.map_or("-".into(), |(a, b)| format!("+{a:.0} / +{b:.0} µs")),
            met: lat.map(|(a, b)| a <= 15.0 && b <= 40.0),
        });
        let (mine, theirs) = (cpu_per_gb(r, name), cpu_per_gb(r, "pgbouncer"));
        out.push(Verdict {
            goal: "CPU per GB below pgbouncer's",
            target: name.into(),
            figure: match (mine, theirs) {
                (Some(a), Some(b)) => format!("{a:.2} vs {b:.2} s/GB"),
                (Some(a), None) => format!("{a:.2} s/GB"),
                _ => "-".into(),
            },
            met: mine.zip(theirs).map(|(a, b)| a < b),
        });
        let rss: Vec<u64> = ["narrow/", "wide/", "copy/"]
            .iter()
            .flat_map(|p| ok_results(r, name, p))
            .filter_map(|m| m.proxy_peak_rss_kib)
            .collect();
        let (lo, hi) = (rss.iter().min(), rss.iter().max());
        out.push(Verdict {
            goal: "memory flat whatever the result size (peak RSS spread <= 32 MiB)",
            target: name.into(),
            figure: lo.zip(hi).map_or("-".into(), |(a, b)| {
                format!("{:.0}-{:.0} MiB", *a as f64 / 1024.0, *b as f64 / 1024.0)
            }),
            met: lo.zip(hi).map(|(a, b)| b - a <= 32 * 1024),
        });
    }
    out
}

pub fn table(r: &Report) -> String {
    let v = verdicts(r);
    let mut out = String::from("goals (ratios to direct, same run)\n\n");
    if v.is_empty() {
        out.push_str("  no gateway target ran\n");
    }
    let w = v.iter().map(|x| x.goal.chars().count()).max().unwrap_or(0);
    let tw = v.iter().map(|x| x.target.len()).max().unwrap_or(0);
    for x in &v {
        let mark = match x.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let pad = w - x.goal.chars().count();
        let _ = writeln!(
            out,
            "  {}{}  {:<tw$}  {:<24} {mark}",
            x.goal,
            " ".repeat(pad),
            x.target,
            x.figure
        );
    }
    out
}
