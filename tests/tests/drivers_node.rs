//! node-postgres (the pure-JavaScript `pg` driver, tests/drivers/node) lives the
//! connection's edges the same through the gateway as against PostgreSQL directly: a
//! session the server terminates (idle or running), `end()` called while connecting
//! (the driver writes `Terminate` before its start-up packet), a query after the server
//! has gone. What the driver reports is compared, event for event.

mod common;

use common::Env;
use portcullis_tests::{Engine, per_engine, workspace_root};
use std::process::Command;

per_engine!(node_postgres_meets_the_same_edges_as_directly);

/// The driver's report of `tests/drivers/node/edges.mjs` run against `url`.
fn edges(env: &Env, url: &str) -> serde_json::Value {
    let dir = workspace_root().join("tests/drivers/node");
    assert!(
        dir.join("node_modules/pg").exists(),
        "tests/drivers/node has no node_modules: run `cargo xtask setup`"
    );
    let out = common::run_timed(Command::new("node").current_dir(&dir).args([
        "edges.mjs",
        url,
        &env.pg.direct_uri(common::DB),
    ]));
    assert!(
        out.status.success(),
        "node-postgres against {url}: {}\n{}\n--- gateway log ---\n{}",
        common::stderr(&out),
        common::stdout(&out),
        env.gw.log_tail(30)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("edges.mjs printed no JSON ({e}): {}", common::stdout(&out)))
}

fn node_postgres_meets_the_same_edges_as_directly(engine: Engine) {
    let env = Env::start(engine);
    let direct = edges(&env, &env.pg.direct_uri(common::DB));
    let through = edges(&env, &env.uri());
    // The scenarios did what they say, directly: both terminations took, and the driver
    // heard the server's 57P01.
    assert_eq!(direct["terminated_idle"]["terminated"], true, "{direct:#}");
    assert!(
        direct["terminated_running"]["query"]
            .as_str()
            .is_some_and(|q| q.contains("57P01")),
        "{direct:#}"
    );
    assert_eq!(
        through,
        direct,
        "node-postgres saw the gateway differently from PostgreSQL\n--- gateway log ---\n{}",
        env.gw.log_tail(30)
    );
}
