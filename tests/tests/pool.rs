//! Upstream connection reuse: an agent session that ends hands its server session, reset,
//! to the next agent session with the same database, role and start-up parameters, and
//! that next session finds none of the first one's state; the pool keeps to its limits.
//!
//! Reuse is proved by the server's own backend pid (the same process serves both
//! sessions), and isolation by asking the server, not the gateway.

mod common;

use std::time::Duration;

use common::{Env, connect, first_column, rt};
use portcullis_tests::metrics::scrape_until;
use portcullis_tests::{Engine, PgOptions, free_port, per_engine};

per_engine!(
    the_next_session_sees_nothing_of_the_last,
    an_open_transaction_is_never_handed_on,
    a_full_pool_makes_sessions_wait_then_refuses_with_53300,
    a_connection_the_server_closed_is_not_reused,
    two_hundred_agents_at_once_share_the_pool_within_its_limit,
    a_connection_that_streamed_a_large_result_is_handed_on_awake,
);

fn env(engine: Engine, pool: &str, workers: usize) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        // One worker: every session lands on the same worker's pool.
        o.workers = Some(workers);
        o.extra_toml(pool)
    });
    env.pg
        .psql(
            common::DB,
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items VALUES (1, 'one');",
        )
        .expect("schema");
    env
}

fn conninfo(env: &Env, app: &str) -> String {
    format!("{} application_name={app}", env.conninfo())
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    match c
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        }) {
        Some(v) => v,
        None => panic!("{sql}: no row"),
    }
}

/// Waits until the gateway has put the ended session's connection back (the reset is
/// asynchronous to the agent's disconnect).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn the_next_session_sees_nothing_of_the_last(engine: Engine) {
    let port = free_port().unwrap();
    let env = env(
        engine,
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        1,
    );
    rt().block_on(async {
        let first = connect(&conninfo(&env, "pool-test")).await;
        let pid_first = pid(&first).await;
        first
            .batch_execute(
                "PREPARE leftover AS SELECT 42;
                 CREATE TEMP TABLE scratch (secret text);
                 INSERT INTO scratch VALUES ('agent one was here');
                 SET search_path = pg_temp, public;
                 SET statement_timeout = '123s';
                 SET application_name = 'changed-by-agent-one';
                 LISTEN agent_one_channel;
                 SELECT pg_advisory_lock(4242);
                 DECLARE held CURSOR WITH HOLD FOR SELECT * FROM items;",
            )
            .await
            .unwrap();
        // The extended protocol's named statements too.
        first
            .prepare("SELECT name FROM items WHERE id = $1")
            .await
            .unwrap();
        drop(first);
        settle().await;

        let second = connect(&conninfo(&env, "pool-test")).await;
        assert_eq!(
            pid(&second).await,
            pid_first,
            "the second session runs on the first one's server process"
        );
        assert_eq!(
            one(&second, "SELECT count(*) FROM pg_prepared_statements").await,
            "0"
        );
        assert_eq!(
            one(
                &second,
                "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'"
            )
            .await,
            "0",
            "the temporary table is gone"
        );
        assert_eq!(one(&second, "SHOW search_path").await, "\"$user\", public");
        assert_eq!(one(&second, "SHOW statement_timeout").await, "0");
        assert_eq!(one(&second, "SHOW application_name").await, "pool-test");
        assert_eq!(
            one(&second, "SELECT count(*) FROM pg_listening_channels()").await,
            "0"
        );
        assert_eq!(
            one(
                &second,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            )
            .await,
            "0",
            "the advisory lock was released"
        );
        assert_eq!(
            one(&second, "SELECT count(*) FROM pg_cursors").await,
            "0",
            "the cursor is closed"
        );
        assert_eq!(one(&second, "SELECT name FROM items").await, "one");
        drop(second);
        settle().await;

        // Other start-up parameters: another pool, so another server process.
        let other = connect(&conninfo(&env, "other-app")).await;
        assert_ne!(pid(&other).await, pid_first);
    });
    // What an operator sees: two connections opened (one per start-up parameters), one
    // reuse, and both back idle once every session has gone.
    let pool = [("database", common::DB)];
    let s = scrape_until(port, "both connections idle", |s| {
        s.value("portcullis_pool_idle", &pool) == 2.0
    });
    assert_eq!(s.value("portcullis_pool_opened_total", &pool), 2.0);
    assert_eq!(s.value("portcullis_pool_reused_total", &pool), 1.0);
    assert_eq!(s.value("portcullis_pool_in_use", &pool), 0.0);
}

fn an_open_transaction_is_never_handed_on(engine: Engine) {
    let env = env(engine, "", 1);
    rt().block_on(async {
        let first = connect(&conninfo(&env, "pool-test")).await;
        let pid_first = pid(&first).await;
        first
            .batch_execute("BEGIN; INSERT INTO items VALUES (2, 'uncommitted')")
            .await
            .unwrap();
        drop(first);
        settle().await;

        let second = connect(&conninfo(&env, "pool-test")).await;
        assert_ne!(
            pid(&second).await,
            pid_first,
            "a connection left inside a transaction is closed, not reset"
        );
        assert_eq!(one(&second, "SELECT count(*) FROM items").await, "1");
        let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid_first}");
        assert_eq!(
            one(&second, &gone).await,
            "0",
            "the old server process has ended"
        );
    });
}

fn a_full_pool_makes_sessions_wait_then_refuses_with_53300(engine: Engine) {
    let env = env(engine, "[pool]\npool_size = 1\nwait_timeout_secs = 2\n", 1);
    rt().block_on(async {
        let holder = connect(&conninfo(&env, "pool-test")).await;
        let pid_holder = pid(&holder).await;

        // A session that arrives while the pool is full waits for the connection.
        let info = conninfo(&env, "pool-test");
        let waiter = tokio::spawn(async move {
            let c = connect(&info).await;
            let p = pid(&c).await;
            drop(c);
            p
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "the second session waits");
        drop(holder);
        let p = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiting session got the connection")
            .unwrap();
        assert_eq!(p, pid_holder, "it got the freed connection");
        settle().await;

        // One that waits longer than wait_timeout_secs is refused.
        let holder = connect(&conninfo(&env, "pool-test")).await;
        let e = tokio_postgres::connect(&conninfo(&env, "pool-test"), tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused while the pool is full");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "53300", "{}", db.message());
        assert!(db.message().contains("pool"), "{}", db.message());
        // The holder is unaffected.
        assert_eq!(one(&holder, "SELECT 1").await, "1");
    });
}

fn a_connection_the_server_closed_is_not_reused(engine: Engine) {
    let env = env(engine, "", 1);
    rt().block_on(async {
        let first = connect(&conninfo(&env, "pool-test")).await;
        let pid_first = pid(&first).await;
        drop(first);
        settle().await;
        let direct = connect(&env.pg.direct_uri(common::DB)).await;
        direct
            .query_one("SELECT pg_terminate_backend($1)", &[&pid_first])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let second = connect(&conninfo(&env, "pool-test")).await;
        assert_ne!(pid(&second).await, pid_first);
        assert_eq!(one(&second, "SELECT name FROM items").await, "one");
    });
}

/// [`one`], failing after 10 s instead of waiting forever.
async fn answer(c: &tokio_postgres::Client, sql: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), one(c, sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within 10 s"))
}

/// A long result raises the server socket's low-water mark (`[server] read_batch_bytes`):
/// its end, shorter than a batch, still arrives, the same session's next small answers
/// are not held back (a gateway that never lowers the mark fails here, on both engines),
/// and the next agent on the reused connection gets its answers too.
fn a_connection_that_streamed_a_large_result_is_handed_on_awake(engine: Engine) {
    let env = env(engine, "", 1);
    rt().block_on(async {
        let first = connect(&conninfo(&env, "pool-test")).await;
        let pid_first = pid(&first).await;
        // 16 MB in 8 KiB rows: well past the streak that starts batching, and its end
        // (the last rows, CommandComplete, ReadyForQuery) fills no batch.
        let rows = tokio::time::timeout(
            Duration::from_secs(60),
            first.simple_query("SELECT repeat('x', 8000) FROM generate_series(1, 2000)"),
        )
        .await
        .expect("the large result's end arrives")
        .unwrap();
        let data = first_column(&rows);
        assert_eq!(data.len(), 2000);
        assert!(
            data.iter()
                .all(|v| v.as_deref().map(str::len) == Some(8000))
        );
        for _ in 0..20 {
            assert_eq!(answer(&first, "SELECT 'after'").await, "after");
        }
        drop(first);
        settle().await;

        let second = connect(&conninfo(&env, "pool-test")).await;
        let pid_second = tokio::time::timeout(Duration::from_secs(10), pid(&second))
            .await
            .expect("the next agent's first answer arrives");
        assert_eq!(pid_second, pid_first, "the connection was reused");
        for _ in 0..20 {
            assert_eq!(answer(&second, "SELECT name FROM items").await, "one");
        }
    });
}

fn two_hundred_agents_at_once_share_the_pool_within_its_limit(engine: Engine) {
    // Two workers, two connections each: four upstream sessions serve all 200 agents.
    let env = env(engine, "[pool]\npool_size = 4\nwait_timeout_secs = 60\n", 2);
    rt().block_on(async {
        let info = conninfo(&env, "pool-test");
        let direct = connect(&env.pg.direct_uri(common::DB)).await;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The server's own count of the pool's sessions, sampled while the agents run.
        let watch = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let n: i64 = direct
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-test'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let agents = (0..200).map(|i| {
            let info = info.clone();
            tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("agent {i}: {e}"));
                tokio::spawn(conn);
                let row = c
                    .query_one("SELECT pg_backend_pid(), $1::int", &[&i])
                    .await
                    .unwrap_or_else(|e| panic!("agent {i}: {e}"));
                assert_eq!(row.get::<_, i32>(1), i);
                row.get::<_, i32>(0)
            })
        });
        let pids: Vec<i32> = futures_util::future::join_all(agents)
            .await
            .into_iter()
            .map(|r| r.expect("every agent ran its statement"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watch.await.unwrap();
        let distinct: std::collections::BTreeSet<i32> = pids.iter().copied().collect();
        assert_eq!(pids.len(), 200);
        assert!(
            distinct.len() <= 4,
            "200 agents ran on {} server processes, not at most 4",
            distinct.len()
        );
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        assert!(peak <= 4, "the server saw {peak} of the pool's sessions at once");
    });
}
