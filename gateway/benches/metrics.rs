//! What the metrics cost a statement: the counter of its class and verdict, the two
//! latency observations (gateway-added and end-to-end, each with its clock read) and the
//! byte counts of the reads it took, as a relay's session handles do them. The rule is a
//! few relaxed atomic adds per statement; this measures whether it holds.
//!
//! `cargo bench -p portcullis --bench metrics` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::analysis::Class;
use portcullis::metrics::{ClassLabel, Metrics, SessionMetrics, VerdictLabel};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn per_statement(c: &mut Criterion) {
    let m = Arc::new(Metrics::new());
    m.set_engine("epoll");
    let _session = m.session("agent");
    let mut s = SessionMetrics::new(m.clone());
    let mut g = c.benchmark_group("metrics");
    g.bench_function("statement (count, added, end-to-end, bytes)", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            s.round_started(t0);
            s.statement(black_box(ClassLabel::Of(Class::Read)), VerdictLabel::Allow);
            s.added(t0);
            m.client_bytes.inc_by(black_box(24));
            m.server_bytes.inc_by(black_box(64));
            s.round_done();
        })
    });
    g.bench_function("counter only", |b| {
        b.iter(|| s.statement(black_box(ClassLabel::Of(Class::Read)), VerdictLabel::Allow))
    });
    g.bench_function("clock read (Instant::now)", |b| b.iter(Instant::now));
    g.bench_function("masked statement (one rule, cached label)", |b| {
        let counts = vec![("ssn".to_string(), 2u64)];
        b.iter(|| s.masked(black_box(&counts)))
    });
    g.finish();
}

criterion_group!(benches, per_statement);
criterion_main!(benches);
