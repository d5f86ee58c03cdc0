//! `--compare old.json`: what changed since an earlier run, workload by workload.

use std::fmt::Write;

use crate::report::Report;
use crate::workload::Primary;

/// Changes smaller than this are reported as unchanged: run-to-run noise on a shared box.
const NOISE: f64 = 0.05;

pub fn compare(old: &Report, new: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "changes since {} ({} run) — headline figure per workload and target; \
         + is better, - is worse; |change| < {:.0}% shown as ~\n",
        old.started_at,
        old.mode,
        NOISE * 100.0
    );
    if old.mode != new.mode || old.dataset.rows != new.dataset.rows {
        let _ = writeln!(
            out,
            "note: comparing a {} run of {} rows with a {} run of {} rows\n",
            old.mode, old.dataset.rows, new.mode, new.dataset.rows
        );
    }
    for w in &new.workloads {
        for m in new.results.iter().filter(|m| m.workload == w.id) {
            let Some(o) = old.result(&w.id, &m.target) else {
                let _ = writeln!(out, "{:<36} {:<16} new", w.id, m.target);
                continue;
            };
            if m.error.is_some() || o.error.is_some() {
                let _ = writeln!(
                    out,
                    "{:<36} {:<16} {} -> {}",
                    w.id,
                    m.target,
                    if o.error.is_some() { "error" } else { "ok" },
                    if m.error.is_some() { "error" } else { "ok" }
                );
                continue;
            }
            let (a, b) = (o.primary(w.primary), m.primary(w.primary));
            if a <= 0.0 {
                continue;
            }
            // Express every change as "better is positive".
            let gain = match w.primary {
                Primary::WallSeconds => a / b - 1.0,
                Primary::Tps => b / a - 1.0,
            };
            let mark = if gain.abs() < NOISE {
                "~"
            } else if gain > 0.0 {
                "+"
            } else {
                "-"
            };
            let unit = match w.primary {
                Primary::WallSeconds => "s/query",
                Primary::Tps => "tps",
            };
            let _ = writeln!(
                out,
                "{:<36} {:<16} {a:>12.4} -> {b:>12.4} {unit:<8} {mark}{:>6.1}%",
                w.id,
                m.target,
                gain.abs() * 100.0
            );
        }
    }
    for o in &old.results {
        if new.result(&o.workload, &o.target).is_none() {
            let _ = writeln!(out, "{:<36} {:<16} gone", o.workload, o.target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Latency, WorkloadInfo, fixtures};
    use crate::workload::Group;

    fn report(wall: f64, tps: f64) -> Report {
        let m = |w: &str, wall_s: f64, tps: f64| {
            fixtures::measurement(w, "direct", wall_s, tps, Latency::default())
        };
        let workloads = vec![
            WorkloadInfo {
                id: "narrow/x".into(),
                group: Group::Narrow,
                primary: Primary::WallSeconds,
                rounds: 1,
            },
            WorkloadInfo {
                id: "small/x".into(),
                group: Group::Small,
                primary: Primary::Tps,
                rounds: 1,
            },
        ];
        fixtures::report(
            Vec::new(),
            workloads,
            vec![m("narrow/x", wall, 0.0), m("small/x", 0.0, tps)],
        )
    }

    #[test]
    fn faster_is_better_for_both_kinds_of_figure() {
        let out = compare(&report(2.0, 100.0), &report(1.0, 200.0));
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("direct")).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.contains("+ 100.0%")), "{out}");
        let same = compare(&report(1.0, 100.0), &report(1.01, 100.0));
        assert!(
            same.lines()
                .filter(|l| l.contains("direct"))
                .all(|l| l.contains('~')),
            "{same}"
        );
    }
}
