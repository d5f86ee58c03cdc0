//! pgbench through the gateway in each query mode: the tables are made directly against
//! PostgreSQL (`-i`), then TPC-B-like transactions run through the gateway and must all
//! complete without a failure.

mod common;

use common::{Env, stdout};
use portcullis_tests::{Engine, per_engine};

per_engine!(
    pgbench_simple,
    pgbench_extended,
    pgbench_prepared,
    pgbench_timed_prepared,
    busy_polling_loses_nothing
);

fn pgbench(env: &Env, args: &[&str]) -> String {
    let mut init = std::process::Command::new("pgbench");
    init.args([
        "-i",
        "-q",
        "-s",
        "1",
        "-d",
        &env.pg.superuser_uri(common::DB),
    ]);
    env.ok(&mut init);
    let mut c = std::process::Command::new("pgbench");
    // -n: vacuuming is set-up, not what is under test.
    c.args(["-n", "-c", "4", "-j", "2"])
        .args(args)
        .arg(env.uri());
    let out = env.ok(&mut c);
    let o = stdout(&out);
    assert!(
        o.contains("number of failed transactions: 0 (0.000%)"),
        "pgbench reported failures:\n{o}\n{}",
        common::stderr(&out)
    );
    o
}

fn processed(out: &str) -> (u64, Option<u64>) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .unwrap_or_else(|| panic!("no processed count in:\n{out}"));
    match line.split_once('/') {
        Some((done, want)) => (
            done.trim().parse().unwrap(),
            Some(want.trim().parse().unwrap()),
        ),
        None => (line.trim().parse().unwrap(), None),
    }
}

fn fixed_count(engine: Engine, mode: &str) {
    let env = Env::start(engine);
    let out = pgbench(&env, &["-M", mode, "-t", "100"]);
    assert_eq!(processed(&out), (400, Some(400)), "{out}");
    // Every transaction updated pgbench_history once: the work really reached PostgreSQL.
    let n = env
        .pg
        .psql(common::DB, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    assert_eq!(n.trim(), "400");
}

fn pgbench_simple(engine: Engine) {
    fixed_count(engine, "simple")
}

fn pgbench_extended(engine: Engine) {
    fixed_count(engine, "extended")
}

fn pgbench_prepared(engine: Engine) {
    fixed_count(engine, "prepared")
}

fn pgbench_timed_prepared(engine: Engine) {
    let env = Env::start(engine);
    let out = pgbench(&env, &["-M", "prepared", "-T", "5"]);
    let (done, _) = processed(&out);
    assert!(done > 0, "{out}");
}

/// `[server] busy_poll_us` changes only what a worker does before it sleeps (an epoll
/// worker looks at its sockets, an io_uring worker at its completion queue): every
/// transaction still completes, and a large result (which switches the looks off while
/// it streams) arrives exactly as the server sent it.
fn busy_polling_loses_nothing(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| {
        o.server_line("busy_poll_us = 200")
    });
    let out = pgbench(&env, &["-M", "prepared", "-t", "100"]);
    assert_eq!(processed(&out), (400, Some(400)), "{out}");
    let sql = "SELECT g, repeat(md5(g::text), 256) FROM generate_series(1, 2000) g";
    let through = env.ok(env.psql_gw().args(["-At", "-c", sql]));
    let direct = env.ok(env.psql_direct().args(["-At", "-c", sql]));
    assert_eq!(through.stdout.len(), direct.stdout.len());
    assert!(
        through.stdout == direct.stdout,
        "the streamed result differs"
    );
}
