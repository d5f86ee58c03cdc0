//! The audit log's costs: what a session's thread pays per statement (encoding the
//! statement and outcome records, hashing the answer), and the sustained record rate the
//! group-commit writer reaches on this machine's disk with many sessions waiting for
//! durability at once.
//!
//! `cargo bench -p portcullis --bench audit` (add `-- --quick` for a fast look). The log
//! goes in `PORTCULLIS_AUDIT_BENCH_DIR` (default: a directory under `target/`, on the
//! same disk a deployment would use, not a tmpfs).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use portcullis::audit::config::{AuditConfig, Durability, Params};
use portcullis::audit::trail::Via;
use portcullis::audit::{AuditLog, Body, StatementFacts, Trail};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(dir: &std::path::Path, durability: Durability) -> AuditConfig {
    let text = format!("dir = {:?}\n", dir.display().to_string());
    let mut c: AuditConfig = toml::from_str(&text).expect("audit config");
    c.durability = durability;
    c
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("PORTCULLIS_AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base).expect("bench directory");
    tempfile::tempdir_in(base).expect("bench directory")
}

fn per_statement(c: &mut Criterion) {
    let dir = bench_dir();
    let log = AuditLog::open(&config(dir.path(), Durability::Os), "bench").expect("open");
    let mut trail = Trail::new(
        log.clone(),
        Arc::from("0123456789abcdef"),
        "agent",
        Params::Hash,
    );
    let facts = StatementFacts {
        policy: Some(portcullis::audit::PolicyFacts {
            class: vec!["read"],
            reads: vec!["pgbench_accounts".into()],
            verdict: "allow",
            ..Default::default()
        }),
        fingerprint: Some("a1b2c3d4e5f60718".into()),
        touches_masked: false,
    };
    let answer = vec![0x44u8; 120];
    c.bench_function("audit/statement+outcome records (select-only)", |b| {
        b.iter(|| {
            let id = trail.statement(
                Via::Simple,
                black_box(b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
                None,
                &facts,
                None,
            );
            trail.sent(id, &answer);
            trail.command_complete(id, b"SELECT 1");
            trail.close(id, true);
            black_box(trail.take());
        })
    });
    let mb = vec![0x44u8; 1 << 20];
    c.bench_function("audit/result digest per MiB", |b| {
        let id = trail.statement(Via::Simple, b"SELECT * FROM accounts", None, &facts, None);
        b.iter(|| trail.sent(id, black_box(&mb)))
    });
    log.close();
}

/// Records per second with `sessions` tasks each submitting one record and waiting for
/// it to be durable, over `secs`.
fn sustained(durability: Durability, sessions: usize, secs: u64) -> (f64, f64, Duration) {
    let dir = bench_dir();
    let log = AuditLog::open(&config(dir.path(), durability), "bench").expect("open");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let body = "x".repeat(300);
    let local = tokio::task::LocalSet::new();
    let mut waits = local.block_on(&rt, async {
        let tasks: Vec<_> = (0..sessions)
            .map(|_| {
                let log = log.clone();
                let body = body.clone();
                tokio::task::spawn_local(async move {
                    let mut waits = Vec::new();
                    while Instant::now() < until {
                        let t0 = Instant::now();
                        let t = log.record(&Body::GatewayStop { reason: &body });
                        log.durable(t).await.expect("durable");
                        waits.push(t0.elapsed());
                    }
                    waits
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let c = log.counters();
    let records = c.records.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let syncs = c.syncs.load(std::sync::atomic::Ordering::Relaxed) as f64;
    log.close();
    waits.sort();
    let p50 = waits.get(waits.len() / 2).copied().unwrap_or_default();
    (records / secs as f64, syncs / secs as f64, p50)
}

criterion_group!(benches, per_statement);

fn main() {
    benches();
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2 } else { 5 };
    println!("\nsustained group commit ({secs} s each, 300-byte records, this machine's disk):");
    for (name, d) in [("fsync", Durability::Fsync), ("os", Durability::Os)] {
        for sessions in [1, 8, 64] {
            let (rate, syncs, p50) = sustained(d, sessions, secs);
            println!(
                "  durability = {name:<5} {sessions:>3} sessions: {rate:>9.0} records/s, {syncs:>7.0} syncs/s, p50 wait {:>7.1} µs",
                p50.as_secs_f64() * 1e6
            );
        }
    }
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
