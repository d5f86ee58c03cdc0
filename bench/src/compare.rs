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
