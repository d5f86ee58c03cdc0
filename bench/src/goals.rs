//! The performance goals, checked against one report: each gateway target's figure,
//! the limit, and whether it is met. Derived from the report, never stored in it, so the
//! limits can change without changing the schema.
//!
//! Most goals are ratios to `direct`. The statement policy's cost is taken against the same
//! gateway with the policy off ([`policy_baseline`]), in the same run, so that what is
//! measured is the analysis and nothing else the gateway does.

use std::fmt::Write;

use crate::report::{Measurement, Report, TargetInfo};
use crate::target::Kind;

/// The workload of the policy's throughput goal.
pub const PGBENCH_C8: &str = "pgbench/select-only-c8";
/// A new agent connection per transaction: the harness's own client, then pgbench `-C`.
pub const CONNECT_WORKLOADS: [&str; 2] = ["connect/c1", "pgbench/select-only-connect-c8"];
/// The workloads of the latency goals: one client, so queueing does not hide the cost.
pub const SELECT1_C1: [&str; 2] = ["small/select1-simple-c1", "small/select1-prepared-c1"];
/// Policy on keeps at least this share of the policy-off TPS.
pub const POLICY_TPS_SHARE: f64 = 0.95;
/// Policy on adds at most this many µs to the policy-off `SELECT 1` p50.
pub const POLICY_ADDED_P50_US: f64 = 3.0;

/// Audit on keeps at least this share of the audit-off TPS.
pub const AUDIT_TPS_SHARE: f64 = 0.95;
/// Audit on adds at most this many µs to the audit-off `SELECT 1` p50.
pub const AUDIT_ADDED_P50_US: f64 = 5.0;
/// Audit targets and the audit-off gateway (same engine and policy) they are taken against.
pub const AUDIT_PAIRS: [(&str, &str); 2] = [
    ("gateway-audit", "gateway-uring"),
    ("gateway-audit-os", "gateway-uring"),
];

/// Large-result speed is judged against pgbouncer tuned for it (`pkt_buf = 65536`).
pub const TUNED_BOUNCER: &str = "pgbouncer-pktbuf";
/// The unmasked gateway the masked one is taken against: same policy, on the engine
/// `auto` runs (the masked target runs `auto`).
pub const MASKED_PARTNER: &str = "gateway-epoll";
/// Masking keeps the large results within this factor of the unmasked gateway's time.
pub const MASKED_TIME_SHARE: f64 = 1.10;

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

/// The worst ratio of `target`'s figure to `base`'s over the workloads under `prefixes`
/// that both ran, with the workload it was on.
fn worst_against(
    r: &Report,
    target: &str,
    base: &str,
    prefixes: &[&str],
    figure: impl Fn(&Measurement) -> Option<f64>,
) -> Option<(f64, String)> {
    prefixes
        .iter()
        .flat_map(|p| ok_results(r, target, p))
        .filter_map(|m| {
            let b = r.result(&m.workload, base).filter(|b| b.error.is_none())?;
            let (mine, theirs) = (figure(m)?, figure(b)?);
            (theirs > 0.0).then(|| (mine / theirs, m.workload.clone()))
        })
        .reduce(|a, b| if b.0 > a.0 { b } else { a })
}

/// A goal on a [`worst_against`] ratio: the figure names the workload it was on.
fn against_goal(
    goal: &'static str,
    target: &str,
    worst: Option<(f64, String)>,
    of: &str,
    met: impl Fn(f64) -> bool,
) -> Verdict {
    Verdict {
        goal,
        target: target.into(),
        figure: worst
            .as_ref()
            .map_or("-".into(), |(v, w)| format!("x{v:.2}{of} ({w})")),
        met: worst.map(|(v, _)| met(v)),
    }
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

/// Worst (p50, p99) latency `target` adds to `base` over the `SELECT 1` c1 workloads.
fn added_latency(r: &Report, target: &str, base: &str) -> Option<(f64, f64)> {
    let mut worst: Option<(f64, f64)> = None;
    for w in SELECT1_C1 {
        let (Some(g), Some(d)) = (r.result(w, target), r.result(w, base)) else {
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
            out.push(against_goal(
                "masked narrow and wide results: <= x1.10 of the unmasked gateway",
                name,
                worst_against(r, name, MASKED_PARTNER, &["narrow/", "wide/"], |m| {
                    Some(m.wall_s)
                }),
                "",
                |v| v <= MASKED_TIME_SHARE,
            ));
            continue;
        }
        out.push(against_goal(
            "narrow and wide results: time <= pgbouncer-pktbuf's",
            name,
            worst_against(r, name, TUNED_BOUNCER, &["narrow/", "wide/"], |m| {
                Some(m.wall_s)
            }),
            " of it",
            |v| v <= 1.0,
        ));
        out.push(against_goal(
            "every large result: CPU per GB < pgbouncer-pktbuf's",
            name,
            worst_against(
                r,
                name,
                TUNED_BOUNCER,
                &["narrow/", "wide/", "copy/"],
                |m| m.cpu_s_per_gb.proxy,
            ),
            " of it",
            |v| v < 1.0,
        ));
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
            .result(PGBENCH_C8, name)
            .filter(|m| m.error.is_none())
            .and_then(|m| m.ratio_to_direct);
        let bouncer = tps(r, PGBENCH_C8, "pgbouncer");
        let mine = tps(r, PGBENCH_C8, name);
        out.push(Verdict {
            goal: "pgbench -S, 8 clients: >= x0.80 of direct TPS and above pgbouncer",
            target: name.into(),
            figure: match (pgb, bouncer) {
                (Some(v), Some(b)) => format!(
                    "x{v:.2}, {} vs {}",
                    fmt_tps(mine.unwrap_or(0.0)),
                    fmt_tps(b)
                ),
                (Some(v), None) => format!("x{v:.2}"),
                _ => "-".into(),
            },
            met: pgb.map(|v| v >= 0.80 && mine.zip(bouncer).is_none_or(|(m, b)| m > b)),
        });
        let lat = added_latency(r, name, "direct");
        out.push(Verdict {
            goal: "SELECT 1 added latency: p50 <= 10 µs, p99 <= 30 µs",
            target: name.into(),
            figure: lat.map_or("-".into(), |(a, b)| format!("{a:+.0} / {b:+.0} µs")),
            met: lat.map(|(a, b)| a <= 10.0 && b <= 30.0),
        });
        // A new agent connection per transaction: with upstream reuse, at least what
        // pgbouncer's pooling reaches (a gateway without reuse is measured, not judged).
        if !name.ends_with("-nopool") {
            for w in CONNECT_WORKLOADS {
                let (mine, theirs) = (tps(r, w, name), tps(r, w, "pgbouncer"));
                out.push(Verdict {
                    goal: if w == CONNECT_WORKLOADS[0] {
                        "a connection per transaction: >= pgbouncer's TPS"
                    } else {
                        "pgbench -S -C, 8 clients: >= pgbouncer's TPS"
                    },
                    target: name.into(),
                    figure: match (mine, theirs) {
                        (Some(a), Some(b)) => format!("{} vs {}", fmt_tps(a), fmt_tps(b)),
                        (Some(a), None) => fmt_tps(a),
                        _ => "-".into(),
                    },
                    met: mine.zip(theirs).map(|(a, b)| a >= b),
                });
            }
        }
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
        policy_goals(r, t, &mut out);
        audit_goals(r, t, &mut out);
    }
    out
}

/// What writing evidence before each statement costs: pgbench TPS, `SELECT 1` p50 and the
/// large result's time against the same gateway without `[audit]`, in the same run.
fn audit_goals(r: &Report, t: &TargetInfo, out: &mut Vec<Verdict>) {
    let Some((_, base)) = AUDIT_PAIRS.iter().find(|(a, _)| *a == t.name) else {
        return;
    };
    pair_goals(
        r,
        t,
        Some(base),
        [
            "audit on, pgbench -S 8 clients: >= x0.95 of audit-off TPS",
            "audit on, SELECT 1 p50: <= audit-off + 5 µs",
        ],
        (AUDIT_TPS_SHARE, AUDIT_ADDED_P50_US),
        out,
    );
    let on = worst_ratio(r, &t.name, "narrow/");
    let off = worst_ratio(r, base, "narrow/");
    let ratio = on.zip(off).map(|(a, b)| a / b);
    out.push(Verdict {
        goal: "audit on, 1M-row result: <= x1.05 of audit-off time",
        target: t.name.clone(),
        figure: ratio.map_or("-".into(), |v| format!("x{v:.3}")),
        met: ratio.map(|v| v <= 1.05),
    });
}

/// The policy-off gateway `t`'s policy cost is taken against: a gateway target with
/// `[policy] enabled = false` on the same engine, without masking. `None` when `t` is not
/// an unmasked gateway with the policy on, or the run has no such partner.
pub fn policy_baseline<'a>(r: &'a Report, t: &TargetInfo) -> Option<&'a TargetInfo> {
    if t.kind != Kind::Gateway || t.masked || t.policy != Some(true) {
        return None;
    }
    r.targets.iter().find(|b| {
        b.kind == Kind::Gateway && !b.masked && b.policy == Some(false) && b.engine == t.engine
    })
}

fn tps(r: &Report, workload: &str, target: &str) -> Option<f64> {
    r.result(workload, target)
        .filter(|m| m.error.is_none() && m.tps > 0.0)
        .map(|m| m.tps)
}

fn fmt_tps(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// What analysing every statement costs `t`: pgbench TPS and `SELECT 1` p50 against its
/// policy-off partner. Without a partner in the run, reported as not measured only when the
/// run has no policy-off gateway at all (one on another engine is not `t`'s partner).
fn policy_goals(r: &Report, t: &TargetInfo, out: &mut Vec<Verdict>) {
    // Audit targets are taken against the same gateway without audit (audit_goals).
    if t.kind != Kind::Gateway
        || t.masked
        || t.policy != Some(true)
        || AUDIT_PAIRS.iter().any(|(a, _)| *a == t.name)
    {
        return;
    }
    let base = match policy_baseline(r, t) {
        Some(b) => Some(b.name.as_str()),
        None if r.targets.iter().any(|b| b.policy == Some(false)) => return,
        None => None,
    };
    pair_goals(
        r,
        t,
        base,
        [
            "policy on, pgbench -S 8 clients: >= x0.95 of policy-off TPS",
            "policy on, SELECT 1 p50: <= policy-off + 3 µs",
        ],
        (POLICY_TPS_SHARE, POLICY_ADDED_P50_US),
        out,
    );
}

/// A feature's cost on `t` against `base`, the same gateway without it: pgbench TPS kept
/// (at least `limits.0` of it) and `SELECT 1` p50 added (at most `limits.1` µs).
fn pair_goals(
    r: &Report,
    t: &TargetInfo,
    base: Option<&str>,
    goals: [&'static str; 2],
    limits: (f64, f64),
    out: &mut Vec<Verdict>,
) {
    let pair = base.and_then(|b| Some((tps(r, PGBENCH_C8, &t.name)?, tps(r, PGBENCH_C8, b)?)));
    out.push(Verdict {
        goal: goals[0],
        target: t.name.clone(),
        figure: pair.map_or("-".into(), |(on, off)| {
            format!("x{:.3} ({} / {} tps)", on / off, fmt_tps(on), fmt_tps(off))
        }),
        met: pair.map(|(on, off)| on >= limits.0 * off),
    });
    let lat = base.and_then(|b| added_latency(r, &t.name, b));
    out.push(Verdict {
        goal: goals[1],
        target: t.name.clone(),
        figure: lat.map_or("-".into(), |(p50, _)| format!("{p50:+.1} µs")),
        met: lat.map(|(p50, _)| p50 <= limits.1),
    });
}

pub fn table(r: &Report) -> String {
    let v = verdicts(r);
    let mut out =
        String::from("goals (same run; ratios to direct unless the goal says otherwise)\n\n");
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
    for t in &r.targets {
        if let Some(b) = policy_baseline(r, t) {
            let _ = writeln!(
                out,
                "\n  policy-off partner of {}: {} (same engine, [policy] enabled = false)",
                t.name, b.name
            );
        }
    }
    out.push_str(&audit_line(r));
    out
}

/// Which gateway targets keep evidence: a reader comparing the small-query goals must know
/// that the other gateways ran without `[audit]`.
fn audit_line(r: &Report) -> String {
    let gateways = || r.targets.iter().filter(|t| t.kind == Kind::Gateway);
    if gateways().next().is_none() {
        return String::new();
    }
    let audited: Vec<&str> = gateways()
        .map(|t| t.name.as_str())
        .filter(|n| AUDIT_PAIRS.iter().any(|(a, _)| a == n))
        .collect();
    let which = match audited.len() {
        0 => "no gateway target of this run keeps an audit log".to_string(),
        1 => format!("only {} keeps an audit log", audited[0]),
        _ => format!("only {} keep an audit log", audited.join(" and ")),
    };
    format!("\n  audit: {which}; the other gateway targets run without [audit]\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Latency, WorkloadInfo, fixtures};
    use crate::workload::{Group, Primary};

    fn target(name: &str, engine: &str, policy: bool, masked: bool) -> TargetInfo {
        TargetInfo {
            name: name.into(),
            kind: Kind::Gateway,
            masked,
            policy: Some(policy),
            engine: Some(engine.into()),
            url: String::new(),
            notes: String::new(),
        }
    }

    fn m(workload: &str, target: &str, tps: f64, p50: f64) -> Measurement {
        let latency = Latency {
            count: 1,
            p50,
            p99: p50 * 2.0,
            ..Latency::default()
        };
        fixtures::measurement(workload, target, 0.0, tps, latency)
    }

    /// A run of direct, `gateway-epoll`, `gateway-uring`, `gateway-nopolicy` (uring) and
    /// `gateway-masked`; `on` is gateway-uring's (pgbench TPS, simple p50, prepared p50),
    /// the policy-off figures are 10000 tps and 40 µs.
    fn report(on: (f64, f64, f64)) -> Report {
        let targets = vec![
            TargetInfo {
                kind: Kind::Direct,
                policy: None,
                engine: None,
                ..target("direct", "", false, false)
            },
            target("gateway-epoll", "epoll", true, false),
            target("gateway-uring", "uring", true, false),
            target("gateway-nopolicy", "uring", false, false),
            target("gateway-masked", "auto", true, true),
        ];
        let workloads = [PGBENCH_C8, SELECT1_C1[0], SELECT1_C1[1]]
            .iter()
            .map(|id| WorkloadInfo {
                id: (*id).into(),
                group: if id.starts_with("pgbench") {
                    Group::Pgbench
                } else {
                    Group::Small
                },
                primary: Primary::Tps,
                rounds: 1,
            })
            .collect();
        let mut results = Vec::new();
        for (t, (tps, simple, prepared)) in [
            ("direct", (12_000.0, 30.0, 28.0)),
            ("gateway-epoll", (9_000.0, 45.0, 44.0)),
            ("gateway-uring", on),
            ("gateway-nopolicy", (10_000.0, 40.0, 40.0)),
        ] {
            results.push(m(PGBENCH_C8, t, tps, 800.0));
            results.push(m(SELECT1_C1[0], t, 1e6 / simple, simple));
            results.push(m(SELECT1_C1[1], t, 1e6 / prepared, prepared));
        }
        let mut r = fixtures::report(targets, workloads, results);
        r.compute_ratios();
        r
    }

    fn policy_verdicts(r: &Report) -> Vec<Verdict> {
        verdicts(r)
            .into_iter()
            .filter(|v| v.goal.starts_with("policy on"))
            .collect()
    }

    /// Large results of pgbouncer-pktbuf, gateway-epoll and gateway-masked: (wall s,
    /// proxy s/GB) per workload.
    fn large(rows: &[(&str, &str, f64, f64)]) -> Report {
        let mut targets = vec![
            target("gateway-epoll", "epoll", true, false),
            target("gateway-masked", "auto", true, true),
        ];
        targets.push(TargetInfo {
            kind: Kind::Pgbouncer,
            policy: None,
            engine: None,
            ..target(TUNED_BOUNCER, "", false, false)
        });
        let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let workloads = ids
            .iter()
            .map(|id| WorkloadInfo {
                id: (*id).into(),
                group: Group::Narrow,
                primary: Primary::WallSeconds,
                rounds: 1,
            })
            .collect();
        let results = rows
            .iter()
            .map(|(w, t, wall, gb)| {
                let mut m = fixtures::measurement(w, t, *wall, 0.0, Latency::default());
                m.cpu_s_per_gb.proxy = Some(*gb);
                m
            })
            .collect();
        fixtures::report(targets, workloads, results)
    }

    fn goal<'a>(v: &'a [Verdict], prefix: &str, target: &str) -> &'a Verdict {
        v.iter()
            .find(|v| v.goal.starts_with(prefix) && v.target == target)
            .unwrap_or_else(|| panic!("{prefix} for {target} in {v:?}"))
    }

    #[test]
    fn large_results_against_tuned_pgbouncer_and_masked_against_unmasked() {
        let r = large(&[
            ("narrow/simple-text", TUNED_BOUNCER, 0.62, 0.97),
            ("narrow/simple-text", "gateway-epoll", 0.57, 0.90),
            ("narrow/simple-text", "gateway-masked", 0.62, 2.9),
            ("wide/simple-text", TUNED_BOUNCER, 0.82, 0.44),
            ("wide/simple-text", "gateway-epoll", 0.66, 0.31),
            ("wide/simple-text", "gateway-masked", 0.99, 0.7),
            ("copy/text", TUNED_BOUNCER, 0.91, 1.45),
            ("copy/text", "gateway-epoll", 0.86, 1.69),
        ]);
        let v = verdicts(&r);
        let time = goal(&v, "narrow and wide results: time", "gateway-epoll");
        assert_eq!(time.met, Some(true), "{time:?}");
        assert!(time.figure.contains("narrow/simple-text"), "{time:?}");
        // Copy costs more CPU per GB than pgbouncer-pktbuf: one workload misses it all.
        let cpu = goal(&v, "every large result: CPU", "gateway-epoll");
        assert_eq!(cpu.met, Some(false), "{cpu:?}");
        assert!(cpu.figure.starts_with("x1.17") && cpu.figure.contains("copy/text"));
        // Masked wide at 0.99 / 0.66 = x1.50: missed, named by its workload.
        let masked = goal(&v, "masked narrow and wide", "gateway-masked");
        assert_eq!(masked.met, Some(false));
        assert!(
            masked.figure.starts_with("x1.50 (wide/simple-text)"),
            "{masked:?}"
        );
    }

    #[test]
    fn partner_is_the_policy_off_gateway_on_the_same_engine() {
        let r = report((9_600.0, 42.0, 41.0));
        let partner = |name: &str| {
            let t = r.targets.iter().find(|t| t.name == name).unwrap();
            policy_baseline(&r, t).map(|b| b.name.clone())
        };
        assert_eq!(
            partner("gateway-uring").as_deref(),
            Some("gateway-nopolicy")
        );
        // Another engine, masking, policy off itself, not a gateway: no partner.
        for name in [
            "gateway-epoll",
            "gateway-masked",
            "gateway-nopolicy",
            "direct",
        ] {
            assert_eq!(partner(name), None, "{name}");
        }
        let v = policy_verdicts(&r);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|v| v.target == "gateway-uring"));
        assert!(table(&r).contains("policy-off partner of gateway-uring: gateway-nopolicy"));
        assert!(
            table(&r).contains("audit: no gateway target of this run keeps an audit log"),
            "{}",
            table(&r)
        );
        let mut audited = r.clone();
        audited
            .targets
            .push(target("gateway-audit-os", "uring", true, false));
        assert!(table(&audited).contains(
            "audit: only gateway-audit-os keeps an audit log; the other gateway targets run without [audit]"
        ));
    }

    #[test]
    fn throughput_share_and_added_p50() {
        // 0.96 of the TPS; p50 +2.0 and +1.0 µs: both met.
        let v = policy_verdicts(&report((9_600.0, 42.0, 41.0)));
        assert_eq!(v[0].met, Some(true), "{v:?}");
        assert_eq!(v[0].figure, "x0.960 (9600 / 10.0k tps)");
        assert_eq!(v[1].met, Some(true));
        assert_eq!(v[1].figure, "+2.0 µs");
        // 0.94 of the TPS; the worse of the two protocols (+3.5 µs) decides.
        let v = policy_verdicts(&report((9_400.0, 43.5, 41.0)));
        assert_eq!(v[0].met, Some(false));
        assert_eq!((v[1].met, v[1].figure.as_str()), (Some(false), "+3.5 µs"));
        // Exactly at the limits is met.
        let v = policy_verdicts(&report((9_500.0, 43.0, 43.0)));
        assert_eq!((v[0].met, v[1].met), (Some(true), Some(true)));
    }

    #[test]
    fn missing_figures_are_not_measured() {
        let mut r = report((9_600.0, 42.0, 41.0));
        for m in r
            .results
            .iter_mut()
            .filter(|m| m.target == "gateway-nopolicy")
        {
            m.error = Some("refused".into());
        }
        let v = policy_verdicts(&r);
        assert_eq!(v.len(), 2);
        assert!(
            v.iter().all(|v| v.met.is_none() && v.figure == "-"),
            "{v:?}"
        );
    }

    #[test]
    fn a_run_without_a_policy_off_gateway_says_so() {
        let mut r = report((9_600.0, 42.0, 41.0));
        r.targets.retain(|t| t.name != "gateway-nopolicy");
        let v = policy_verdicts(&r);
        // Both unmasked policy-on gateways, two goals each, none measured.
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v.iter().all(|v| v.met.is_none()));
        assert!(!v.iter().any(|v| v.target == "gateway-masked"));
    }

    #[test]
    fn direct_goals_still_use_direct() {
        let r = report((9_600.0, 42.0, 41.0));
        let v = verdicts(&r);
        let added = goal(&v, "SELECT 1 added", "gateway-uring");
        // 42 - 30 and 41 - 28: the worse p50 is +13; p99s double that. Over 10 µs.
        assert_eq!(added.figure, "+13 / +26 µs");
        assert_eq!(added.met, Some(false));
        let r = report((9_600.0, 38.0, 37.0));
        let v = verdicts(&r);
        let added = goal(&v, "SELECT 1 added", "gateway-uring");
        assert_eq!(added.figure, "+9 / +18 µs");
        assert_eq!(added.met, Some(true));
    }
}
