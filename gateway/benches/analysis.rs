//! Statement analysis and the policy gate on typical agent statements.
//!
//! `cargo bench -p portcullis --bench analysis` (add `-- --quick` for a fast look).
//! Goals (issue 9): a cached statement under 1 µs through the whole gate (cache lookup,
//! built-in denials, masked-column check, rules), an uncached one under 25 µs
//! (libpg_query parse, tree read, walk). Times are thread CPU time, as in `mask`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::analysis;
use portcullis::mask::{MaskConfig, Policy, Subject};
use portcullis::policy::{PolicyConfig, StatementGate, StatementPolicy};
use portcullis::session::hooks::Via;

mod common;
use common::{CpuTime, config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What agents send: point reads, a join with an aggregate, an insert, an update, a
/// transaction statement, pgbench's read.
const STATEMENTS: [(&str, &str); 6] = [
    (
        "point-select",
        "SELECT id, full_name, ssn, balance FROM accounts WHERE id = $1",
    ),
    (
        "join-aggregate",
        "SELECT a.id, a.full_name, sum(t.amount) AS total FROM accounts a JOIN transactions t \
         ON t.account_id = a.id WHERE t.booked_at > now() - interval '30 days' \
         GROUP BY a.id, a.full_name ORDER BY total DESC LIMIT 20",
    ),
    (
        "insert",
        "INSERT INTO transactions (id, account_id, amount, booked_at, memo) VALUES ($1, $2, $3, now(), $4)",
    ),
    (
        "update",
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
    ),
    ("begin", "BEGIN"),
    (
        "pgbench-select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
];

#[derive(serde::Deserialize)]
struct Sections {
    mask: MaskConfig,
    policy: PolicyConfig,
}

fn gate() -> StatementGate {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/quickstart.toml"
    ))
    .expect("deploy/quickstart.toml");
    let s: Sections = toml::from_str(&text).expect("quickstart sections");
    StatementGate::new(
        Arc::new(ArcSwap::from_pointee(
            StatementPolicy::compile(Some(&s.policy)).unwrap(),
        )),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    )
}

fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("uncached");
    for (name, sql) in STATEMENTS {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(analysis::analyze(black_box(sql)).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cached-gate");
    for (name, sql) in STATEMENTS {
        let mut gate = gate();
        gate.check(sql.as_bytes(), Via::SimpleQuery)
            .expect("allowed");
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(gate.check(black_box(sql.as_bytes()), Via::SimpleQuery)))
        });
    }
    g.finish();

    // A text never seen before through the whole gate: parse, walk, judge, cache insert.
    let mut g = c.benchmark_group("uncached-gate");
    let mut gate = gate();
    let mut n = 0u64;
    g.bench_function("point-select-distinct-literal", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!("SELECT id, full_name, ssn, balance FROM accounts WHERE id = {n}");
            black_box(gate.check(sql.as_bytes(), Via::SimpleQuery))
        })
    });
    // pgbench -S in its default simple protocol: the same shape, a new literal each time.
    let mut fresh = self::gate();
    g.bench_function("pgbench-select-distinct-literal", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                n % 1_000_000
            );
            black_box(fresh.check(sql.as_bytes(), Via::SimpleQuery))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
