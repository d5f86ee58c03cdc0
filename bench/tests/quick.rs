//! The harness's `--quick` mode end to end: it sets everything up itself, runs every workload
//! against every target it could start, and the JSON it writes must hold together. No speed is
//! asserted: only that each figure is there, non-zero and consistent with the others.

use std::path::Path;

use portcullis_bench::cli::{self, Args};
use portcullis_bench::goals;
use portcullis_bench::report::Report;
use portcullis_bench::workload::{Group, Primary};

use clap::Parser;

#[test]
fn quick_mode_end_to_end() {
    let out = tempfile::tempdir().expect("temp dir");
    let args = Args::parse_from([
        "portcullis-bench",
        "--quick",
        "--no-progress",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let outcome = cli::run(&args).expect("quick run");

    // The file on disk, not the in-memory copy, is what machines read.
    let text = std::fs::read_to_string(&outcome.json).expect("bench.json");
    let r: Report = serde_json::from_str(&text).expect("bench.json parses");
    assert_eq!(r.schema, "portcullis-bench/1");
    assert_eq!(r.mode, "quick");
    for u in &r.unavailable {
        eprintln!("not available: {}: {}", u.name, u.reason);
    }

    let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"direct"));
    if Path::new("/usr/sbin/pgbouncer").exists() {
        assert!(
            names.contains(&"pgbouncer"),
            "pgbouncer is installed but did not run: {:?}",
            r.unavailable
        );
        assert!(names.contains(&"pgbouncer-pktbuf"));
    }
    for group in [
        Group::Narrow,
        Group::Wide,
        Group::Copy,
        Group::Small,
        Group::Connect,
        Group::Pgbench,
    ] {
        assert!(
            r.workloads.iter().any(|w| w.group == group),
            "no {group:?} workload"
        );
    }

    for w in &r.workloads {
        for t in &r.targets {
            let applies = !t.masked || w.group.runs_masked();
            let m = r.result(&w.id, &t.name);
            if !applies {
                assert!(m.is_none(), "{} ran against masked {}", w.id, t.name);
                continue;
            }
            let m = m.unwrap_or_else(|| panic!("no result for {} @ {}", w.id, t.name));
            let at = format!("{} @ {}", w.id, t.name);
            assert!(m.error.is_none(), "{at}: {:?}", m.error);
            assert_eq!(m.trials, w.rounds, "{at}");
            assert!(m.queries > 0 && m.elapsed_s > 0.0, "{at}");
            assert!(m.primary(w.primary) > 0.0, "{at}: zero headline");
            assert!(m.cpu_s.client > 0.0, "{at}: client CPU not measured");
            if t.name != "direct" {
                assert!(m.ratio_to_direct.is_some_and(|x| x > 0.0), "{at}: no ratio");
            }
            if w.group == Group::Pgbench {
                assert!(m.tps > 0.0, "{at}");
                continue;
            }
            // Bytes must match rows: every row arrived, was counted, and crossed the socket.
            assert!(
                m.rows >= m.reported_rows && m.reported_rows > 0,
                "{at}: {} rows, {} reported",
                m.rows,
                m.reported_rows
            );
            assert!(
                m.payload_bytes >= m.rows * 5,
                "{at}: {} bytes for {} rows",
                m.payload_bytes,
                m.rows
            );
            assert!(
                m.wire_bytes_received >= m.payload_bytes,
                "{at}: wire {} < payload {}",
                m.wire_bytes_received,
                m.payload_bytes
            );
            assert!(m.wire_bytes_sent > 0, "{at}");
            assert!(m.latency_us.count > 0 && m.latency_us.p50 > 0.0, "{at}");
            assert!(
                m.latency_us.p50 <= m.latency_us.p99 && m.latency_us.p99 <= m.latency_us.max,
                "{at}"
            );
            assert!(
                m.cpu_s.postgres.is_some_and(|c| c >= 0.0),
                "{at}: postgres CPU not observed"
            );
            if t.name != "direct" {
                assert!(
                    m.proxy_peak_rss_kib.is_some_and(|k| k > 0),
                    "{at}: proxy RSS not observed"
                );
            }
            if w.primary == Primary::WallSeconds {
                assert_eq!(
                    m.reported_rows % r_expected(&r, &w.id),
                    0,
                    "{at}: partial results"
                );
                assert!(m.mb_s > 0.0 && m.rows_s > 0.0, "{at}");
            }
        }
    }
    // Every gateway but one runs the statement policy (so every workload above passed it);
    // the one without is what the policy's cost is taken against.
    let target = |n: &str| r.targets.iter().find(|t| t.name == n);
    if let (Some(on), Some(off)) = (target("gateway-uring"), target("gateway-nopolicy")) {
        assert_eq!((on.policy, off.policy), (Some(true), Some(false)));
        assert_eq!(on.engine, off.engine);
        let v: Vec<_> = goals::verdicts(&r)
            .into_iter()
            .filter(|v| v.goal.starts_with("policy on"))
            .collect();
        // Two goals each for gateway-uring, gateway-approvals (the same gateway with
        // approvals on: holding must cost statements that are not held nothing) and
        // gateway-nopool (the same without upstream reuse, which these persistent-connection
        // workloads do not use).
        assert_eq!(v.len(), 6, "{v:?}");
        assert!(
            v.iter()
                .all(|v| ["gateway-uring", "gateway-approvals", "gateway-nopool"]
                    .contains(&v.target.as_str())
                    && v.met.is_some()),
            "{v:?}"
        );
    }
    // The audit targets are taken against gateway-uring: three goals each, all measured
    // (whether they are met on a loaded test machine is the bench's report, not a test).
    let audit: Vec<_> = goals::verdicts(&r)
        .into_iter()
        .filter(|v| v.goal.starts_with("audit on"))
        .collect();
    assert_eq!(audit.len(), 6, "{audit:?}");
    assert!(audit.iter().all(|v| v.met.is_some()), "{audit:?}");

    // The large-result goals find their partners: pgbouncer-pktbuf for the unmasked
    // gateways, gateway-epoll (what `auto` runs) for the masked one.
    let goals = goals::verdicts(&r);
    for (goal, t, partner) in [
        (
            "narrow and wide results: time",
            "gateway-uring",
            goals::TUNED_BOUNCER,
        ),
        (
            "every large result: CPU",
            "gateway-epoll",
            goals::TUNED_BOUNCER,
        ),
        (
            "masked narrow and wide",
            "gateway-masked",
            goals::MASKED_PARTNER,
        ),
    ] {
        if target(t).is_some() && target(partner).is_some() {
            let v = goals
                .iter()
                .find(|v| v.goal.starts_with(goal) && v.target == t);
            assert!(v.is_some_and(|v| v.met.is_some()), "{goal} for {t}: {v:?}");
        }
    }

    // Wide rows are 8 KiB of text each: the payload must say so.
    let wide = r.result("wide/simple-text", "direct").unwrap();
    assert!(
        wide.payload_bytes / wide.rows >= 8192,
        "wide rows are {} bytes",
        wide.payload_bytes / wide.rows
    );

    for c in [
        "latency.svg",
        "latency.png",
        "throughput.svg",
        "throughput.png",
    ] {
        let p = out.path().join(c);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{} missing or empty",
            p.display()
        );
    }
}

/// Rows one query of a large-result workload returns.
fn r_expected(r: &Report, workload: &str) -> u64 {
    if workload.starts_with("wide/") {
        r.dataset.wide_bytes / 8192
    } else {
        r.dataset.rows
    }
}
