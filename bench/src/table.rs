//! The terminal tables: each workload's headline figure per target, with ratios against
//! direct (and pgbouncer), then latency, CPU and memory.

use std::fmt::Write;

use crate::report::{Measurement, Report};
use crate::workload::Primary;

fn fmt_primary(p: Primary, v: f64) -> String {
    match p {
        Primary::WallSeconds if v < 0.1 => format!("{:.2}ms", v * 1e3),
        Primary::WallSeconds => format!("{v:.3}s"),
        Primary::Tps if v >= 10_000.0 => format!("{:.1}k tps", v / 1e3),
        Primary::Tps => format!("{v:.0} tps"),
    }
}

fn cell(m: Option<&Measurement>, p: Primary) -> String {
    match m {
        None => "-".into(),
        Some(m) if m.error.is_some() => "ERROR".into(),
        Some(m) => {
            let mut s = fmt_primary(p, m.primary(p));
            if let Some(r) = m.ratio_to_direct.filter(|_| m.target != "direct") {
                let _ = write!(s, " x{r:.2}");
            }
            if let Some(r) = m
                .ratio_to_pgbouncer
                .filter(|_| m.target.starts_with("gateway"))
            {
                let _ = write!(s, " (pgb x{r:.2})");
            }
            s
        }
    }
}

fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// Every table, as one string for the terminal (and the closing note).
pub fn tables(r: &Report) -> String {
    let names: Vec<String> = r.targets.iter().map(|t| t.name.clone()).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "portcullis-bench {} run, {} rows, wide {} MB, {} cpus, started {}",
        r.mode,
        r.dataset.rows,
        r.dataset.wide_bytes / 1_000_000,
        r.host.cpus,
        r.started_at
    );
    let _ = writeln!(
        out,
        "large results: median time per query (xN = ratio to direct, lower is better); \
         others: TPS (xN = ratio to direct, higher is better)\n"
    );
    let mut header = vec!["workload".to_string()];
    header.extend(names.iter().cloned());
    let rows: Vec<Vec<String>> = r
        .workloads
        .iter()
        .map(|w| {
            let mut row = vec![w.id.clone()];
            row.extend(names.iter().map(|n| cell(r.result(&w.id, n), w.primary)));
            row
        })
        .collect();
    out.push_str(&render(&header, &rows));

    let _ = writeln!(
        out,
        "\nlatency per query, µs: p50 / p99 / max (+added p50/p99 vs direct)\n"
    );
    let rows: Vec<Vec<String>> = r
        .workloads
        .iter()
        .filter(|w| w.id.ends_with("-c1") || w.id.starts_with("connect/"))
        .map(|w| {
            let direct = r.result(&w.id, "direct");
            let mut row = vec![w.id.clone()];
            row.extend(names.iter().map(|n| match r.result(&w.id, n) {
                Some(m) if m.error.is_none() => {
                    let l = m.latency_us;
                    let mut s = format!("{:.0}/{:.0}/{:.0}", l.p50, l.p99, l.max);
                    if let Some(d) = direct.filter(|_| n != "direct") {
                        let _ = write!(
                            s,
                            " ({:+.0}/{:+.0})",
                            l.p50 - d.latency_us.p50,
                            l.p99 - d.latency_us.p99
                        );
                    }
                    s
                }
                Some(_) => "ERROR".into(),
                None => "-".into(),
            }));
            row
        })
        .collect();
    out.push_str(&render(&header, &rows));

    let _ = writeln!(
        out,
        "\nCPU: proxy s/GB (large results) or µs/tx (others); postgres in brackets; proxy peak RSS MiB\n"
    );
    let rows: Vec<Vec<String>> = r
        .workloads
        .iter()
        .map(|w| {
            let mut row = vec![w.id.clone()];
            row.extend(names.iter().map(|n| match r.result(&w.id, n) {
                Some(m) if m.error.is_none() => {
                    let (unit, c) = match w.primary {
                        Primary::WallSeconds => ("s/GB", m.cpu_s_per_gb),
                        Primary::Tps => ("µs", m.cpu_us_per_tx),
                    };
                    let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
                    let mut s = match c.proxy {
                        Some(_) => format!("{}{unit} [{}]", f(c.proxy), f(c.postgres)),
                        None => format!("[{}{unit}]", f(c.postgres)),
                    };
                    if let Some(k) = m.proxy_peak_rss_kib {
                        let _ = write!(s, " {:.0}M", k as f64 / 1024.0);
                    }
                    s
                }
                Some(_) => "ERROR".into(),
                None => "-".into(),
            }));
            row
        })
        .collect();
    out.push_str(&render(&header, &rows));

    let errors: Vec<&Measurement> = r.results.iter().filter(|m| m.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nerrors:");
        for m in errors {
            let _ = writeln!(
                out,
                "  {} @ {}: {}",
                m.workload,
                m.target,
                m.error.as_deref().unwrap_or_default()
            );
        }
    }
    for u in &r.unavailable {
        let _ = writeln!(out, "not available: {}: {}", u.name, u.reason);
    }
    out
}
