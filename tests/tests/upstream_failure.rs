//! What clients see when PostgreSQL goes away: a server killed in the middle of a large
//! result gives the client an error (never a hang or a silently short result), an upstream
//! that is down refuses new sessions with an error, and once PostgreSQL is back the same
//! gateway serves new sessions again.

mod common;

use std::time::{Duration, Instant};

use common::{Env, connect, rt};
use futures_util::{StreamExt, pin_mut};
use portcullis_tests::{Engine, per_engine};

per_engine!(upstream_killed_mid_result, upstream_down_then_back);

fn upstream_killed_mid_result(engine: Engine) {
    let mut env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let params: [i32; 0] = [];
        let rows = c
            .query_raw(
                "SELECT g, repeat('x', 500) FROM generate_series(1, 50000000) g",
                params,
            )
            .await
            .expect("query starts");
        pin_mut!(rows);
        let mut seen = 0u64;
        while seen < 2000 {
            rows.next()
                .await
                .expect("rows keep coming")
                .expect("row ok");
            seen += 1;
        }
        env.pg.kill().expect("kill PostgreSQL");
        let killed_at = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match rows.next().await {
                    Some(Ok(_)) => seen += 1,
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        })
        .await
        .expect("the client was left hanging after the upstream died");
        let e = outcome.expect_err("the result ended cleanly although the server was killed");
        eprintln!(
            "error after {seen} rows, {:?} after the kill: {e}",
            killed_at.elapsed()
        );
        assert!(seen < 50_000_000);
    });
    assert!(
        env.gw.is_alive(),
        "gateway died with its upstream:\n{}",
        env.gw.log_tail(30)
    );
    env.pg.restart().expect("restart PostgreSQL");
    let out = env.query_gw("SELECT 'back'");
    assert_eq!(out.trim(), "back");
}

fn upstream_down_then_back(engine: Engine) {
    let mut env = Env::start(engine);
    env.pg.stop().unwrap();
    rt().block_on(async {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_postgres::connect(&env.conninfo(), tokio_postgres::NoTls),
        )
        .await
        .expect("the gateway answered within 20s while the upstream is down");
        match r {
            Ok(_) => panic!("a session was accepted with no upstream"),
            Err(e) => eprintln!("refused as expected: {e}"),
        }
    });
    let out = common::run_timed(env.psql_gw().args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    assert!(env.gw.is_alive());
    env.pg.restart().unwrap();
    assert_eq!(env.query_gw("SELECT 'up'").trim(), "up");
}
