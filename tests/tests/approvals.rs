//! Held statements end to end: a real PostgreSQL, the gateway with a hold policy and the
//! embedded approvals store, agents on psql and tokio-postgres, reviewers on the real
//! `portcullis approvals` CLI over the admin socket.
//!
//! What a user would check: a held statement does not run until a reviewer approves it
//! (the database shows it), the agent's session waits and then gets the statement's own
//! result; a denial is an error with the reviewer's reason and the session (and an open
//! transaction) stays usable; an edit runs the reviewer's statement; a timeout, a cancel
//! and a disconnect end the request without running anything; the rules of a decision
//! (no self-approval, N distinct approvers, no replay) hold; many held sessions do not
//! stop the others.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{DB, Env, rt, run_timed, stderr, stdout};
use portcullis_tests::{Engine, PgOptions, per_engine};
use serde_json::Value;

per_engine!(held_statements_wait_for_the_reviewer);

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-two-person"
relations = ["vault"]
class = ["write", "ddl"]
action = "hold"
approvers = 2
message = "the vault needs two reviewers"

[[policy.rule]]
name = "hold-scratch-quickly"
relations = ["scratch"]
class = ["ddl"]
action = "hold"
approval_timeout_secs = 2
message = "scratch DDL waits two seconds at most"

[[policy.rule]]
name = "preview-ledger"
relations = ["ledger"]
class = ["write"]
action = "hold"
preview = true
message = "ledger writes are previewed for the reviewer"

[[policy.rule]]
name = "hold-destructive"
properties = ["drop", "truncate", "unbounded"]
action = "hold"
message = "destructive statements need a reviewer"
"#;

const APPROVALS: &str = "notice_interval_secs = 1\ntimeout_secs = 120\n";

fn start(engine: Engine) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        o.policy(POLICY).approvals(APPROVALS).admin_socket()
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;
             CREATE TABLE vault (id int, v text); INSERT INTO vault VALUES (1, 'gold');
             CREATE TABLE scratch (id int); CREATE TABLE junk (id int);
             CREATE TABLE ledger (id int); INSERT INTO ledger SELECT generate_series(1, 7);",
        )
        .expect("create tables");
    env
}

/// `portcullis approvals <args> --admin-socket <the gateway's>`.
fn approvals(env: &Env, args: &[&str]) -> Output {
    let socket = env.gw.admin_socket().expect("admin socket");
    run_timed(
        common::portcullis(&["approvals"])
            .args(args)
            .arg("--admin-socket")
            .arg(socket),
    )
}

fn approvals_ok(env: &Env, args: &[&str]) -> String {
    let out = approvals(env, args);
    assert!(
        out.status.success(),
        "portcullis approvals {args:?} failed: {}\n{}",
        stderr(&out),
        env.gw.log_tail(30)
    );
    stdout(&out)
}

/// The pending requests, as the CLI lists them.
fn pending(env: &Env) -> Vec<Value> {
    let out = approvals_ok(env, &["list", "--json"]);
    match serde_json::from_str::<Value>(out.trim()) {
        Ok(Value::Array(v)) => v,
        other => panic!("approvals list --json printed {out:?}: {other:?}"),
    }
}

/// Waits until `n` requests are pending; returns them, oldest first.
fn wait_pending(env: &Env, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut p = pending(env);
        if p.len() >= n {
            p.sort_by_key(|r| r["id"].as_i64());
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{n} requests never became pending (have {}):\n{}",
            p.len(),
            env.gw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn id(r: &Value) -> String {
    r["id"].as_i64().expect("request id").to_string()
}

fn direct(env: &Env, sql: &str) -> String {
    env.pg
        .psql(DB, sql)
        .expect("direct query")
        .trim()
        .to_owned()
}

/// A psql session through the gateway running `sql`, in the background.
fn psql_background(env: &Env, sql: &str) -> std::process::Child {
    common::psql_at(&env.uri())
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql")
}

fn finish(child: std::process::Child) -> Output {
    child.wait_with_output().expect("psql output")
}

fn held_statements_wait_for_the_reviewer(engine: Engine) {
    let env = start(engine);

    // Approved: nothing runs until the reviewer says so, then the agent gets the result.
    let agent = psql_background(&env, "DROP TABLE t");
    let req = &wait_pending(&env, 1)[0];
    assert_eq!(req["sql"], "DROP TABLE t");
    assert_eq!(req["rule"], "hold-destructive");
    assert_eq!(req["identity"], "agent");
    assert_eq!(req["database"], DB);
    assert_eq!(req["application_name"], "psql");
    assert_eq!(
        direct(&env, "SELECT count(*) FROM t"),
        "10",
        "ran before approval"
    );
    let shown = approvals_ok(&env, &["show", &id(req)]);
    assert!(shown.contains("DROP TABLE t"), "show printed {shown}");
    approvals_ok(
        &env,
        &[
            "approve",
            &id(req),
            "--reviewer",
            "alice",
            "--reason",
            "cleanup",
        ],
    );
    let out = finish(agent);
    assert!(
        out.status.success(),
        "approved DROP failed: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("waiting for approval #{}", id(req))),
        "no notice: {}",
        stderr(&out)
    );
    assert_eq!(direct(&env, "SELECT to_regclass('t') IS NULL"), "t");
    // Replaying the decision is refused.
    let replay = approvals(&env, &["approve", &id(req), "--reviewer", "bob"]);
    assert!(!replay.status.success());
    assert!(stderr(&replay).contains("already"), "{}", stderr(&replay));

    env.pg
        .psql(DB, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;")
        .unwrap();

    let rt = rt();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &env.gw.conninfo("agent", "agent-secret", DB),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(conn);
        let client = std::sync::Arc::new(client);

        // Denied inside a transaction: an error with the reason; the block goes on.
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (11, 'kept')")
            .await
            .unwrap();
        let del = tokio::spawn({
            let c = client.clone();
            async move { c.execute("DELETE FROM t", &[]).await }
        });
        let req = wait_pending_async(&env, 1).await;
        let deny = approvals(
            &env,
            &[
                "deny",
                &id(&req),
                "--reviewer",
                "alice",
                "--reason",
                "not in business hours",
            ],
        );
        assert!(deny.status.success(), "{}", stderr(&deny));
        let err = del.await.unwrap().expect_err("a denied statement fails");
        let db = err.as_db_error().expect("a server-style error");
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message().contains("not in business hours"),
            "{}",
            db.message()
        );
        let n: i64 = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("the transaction is still usable")
            .get(0);
        assert_eq!(n, 11);
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            direct(&env, "SELECT count(*) FROM t"),
            "11",
            "the block's insert committed, the delete never ran"
        );

        // Edited: the reviewer's statement runs instead, and the agent is told.
        let upd = tokio::spawn({
            let c = client.clone();
            async move { c.execute("UPDATE t SET v = $1", &[&"x"]).await }
        });
        let req = wait_pending_async(&env, 1).await;
        assert_eq!(req["protocol"], "extended");
        assert_eq!(
            req["params"][0]["value"], "x",
            "the reviewer sees the bound parameter"
        );
        approvals_ok(
            &env,
            &[
                "edit",
                &id(&req),
                "--reviewer",
                "alice",
                "--sql",
                "UPDATE t SET v = $1 WHERE id <= 2",
            ],
        );
        let n = upd.await.unwrap().expect("the edited statement runs");
        assert_eq!(n, 2);
        assert_eq!(direct(&env, "SELECT count(*) FROM t WHERE v = 'x'"), "2");

        // Pipelined (tokio-postgres sends these without waiting): the statement before
        // the held one completes, the one after it waits behind it, unread.
        let (a, b, c) = (client.clone(), client.clone(), client.clone());
        let before =
            tokio::spawn(
                async move { a.execute("INSERT INTO t VALUES (12, 'before')", &[]).await },
            );
        let held = tokio::spawn(async move { b.execute("DELETE FROM t", &[]).await });
        let after = tokio::spawn(async move { c.query_one("SELECT count(*) FROM t", &[]).await });
        assert_eq!(
            before
                .await
                .unwrap()
                .expect("the statement before the hold runs"),
            1
        );
        let req = wait_pending_async(&env, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !after.is_finished(),
            "a statement pipelined behind the held one ran first"
        );
        approvals_ok(&env, &["approve", &id(&req), "--reviewer", "alice"]);
        assert_eq!(held.await.unwrap().expect("approved"), 12);
        let n: i64 = after
            .await
            .unwrap()
            .expect("runs after the held one")
            .get(0);
        assert_eq!(n, 0, "it ran after the approved DELETE");
        env.pg
            .psql(
                DB,
                "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 11) g",
            )
            .unwrap();

        // Two distinct reviewers, never the agent itself.
        let vault = tokio::spawn({
            let c = client.clone();
            async move {
                c.execute("UPDATE vault SET v = 'lead' WHERE id = 1", &[])
                    .await
            }
        });
        let req = wait_pending_async(&env, 1).await;
        let own = approvals(&env, &["approve", &id(&req), "--reviewer", "agent"]);
        assert!(
            !own.status.success() && stderr(&own).contains("own identity"),
            "{}",
            stderr(&own)
        );
        approvals_ok(&env, &["approve", &id(&req), "--reviewer", "alice"]);
        let twice = approvals(&env, &["approve", &id(&req), "--reviewer", "alice"]);
        assert!(!twice.status.success(), "one reviewer counted twice");
        assert_eq!(
            direct(&env, "SELECT v FROM vault"),
            "gold",
            "ran with one approval of two"
        );
        approvals_ok(&env, &["approve", &id(&req), "--reviewer", "bob"]);
        assert_eq!(vault.await.unwrap().expect("runs after two approvals"), 1);
        assert_eq!(direct(&env, "SELECT v FROM vault"), "lead");

        // Timed out: its own SQLSTATE and message, never a denial.
        let err = client
            .batch_execute("DROP TABLE scratch")
            .await
            .expect_err("times out");
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "57014");
        assert!(
            db.message().contains("no reviewer decided"),
            "{}",
            db.message()
        );
        assert_eq!(
            direct(&env, "SELECT to_regclass('scratch') IS NOT NULL"),
            "t"
        );

        // Cancelled while held: withdrawn, nothing ran, the session goes on.
        let token = client.cancel_token();
        let drop = tokio::spawn({
            let c = client.clone();
            async move { c.batch_execute("TRUNCATE t").await }
        });
        let req = wait_pending_async(&env, 1).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("send cancel");
        let err = drop.await.unwrap().expect_err("cancelled");
        assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
        let shown: Value =
            serde_json::from_str(approvals_ok(&env, &["show", &id(&req), "--json"]).trim())
                .unwrap();
        assert_eq!(shown["status"], "withdrawn");
        assert_eq!(direct(&env, "SELECT count(*) FROM t"), "11");
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });

    // Previewed: the write runs uncommitted while the reviewer looks at its row count.
    let agent = psql_background(&env, "DELETE FROM ledger WHERE id > 2");
    let req = wait_pending(&env, 1)[0].clone();
    assert_eq!(req["preview"]["rows"], 5, "{req}");
    assert_eq!(
        direct(&env, "SELECT count(*) FROM ledger"),
        "7",
        "uncommitted while held"
    );
    approvals_ok(&env, &["approve", &id(&req), "--reviewer", "alice"]);
    let out = finish(agent);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "DELETE 5",
        "the agent gets the statement's own answer"
    );
    assert_eq!(direct(&env, "SELECT count(*) FROM ledger"), "2");
    // ... and denied inside the agent's transaction, it is rolled back to its savepoint.
    // Separate queries (psql runs each -c alone), no ON_ERROR_STOP: the block goes on.
    let agent = common::psql_at(&env.uri())
        .args(["-X", "-At"])
        .args([
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO junk VALUES (100)",
            "-c",
            "DELETE FROM ledger",
        ])
        .args(["-c", "SELECT count(*) FROM ledger", "-c", "COMMIT"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let req = wait_pending(&env, 1)[0].clone();
    assert_eq!(req["preview"]["rows"], 2, "{req}");
    approvals_ok(
        &env,
        &[
            "deny",
            &id(&req),
            "--reviewer",
            "alice",
            "--reason",
            "keep them",
        ],
    );
    let out = finish(agent);
    assert!(stderr(&out).contains("keep them"), "{}", stderr(&out));
    assert!(
        stdout(&out).lines().any(|l| l == "2"),
        "the block saw its rows back: {}",
        stdout(&out)
    );
    assert_eq!(
        direct(&env, "SELECT count(*) FROM ledger"),
        "2",
        "the delete was rolled back"
    );
    assert_eq!(
        direct(&env, "SELECT count(*) FROM junk"),
        "1",
        "the rest of the block committed"
    );

    // The agent hangs up while held: the request is withdrawn.
    let mut agent = psql_background(&env, "TRUNCATE t");
    let req = wait_pending(&env, 1)[0].clone();
    agent.kill().unwrap();
    let _ = agent.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown: Value =
            serde_json::from_str(approvals_ok(&env, &["show", &id(&req), "--json"]).trim())
                .unwrap();
        if shown["status"] == "withdrawn" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a request of a gone session stayed {}",
            shown["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(direct(&env, "SELECT count(*) FROM t"), "11");
}

async fn wait_pending_async(env: &Env, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pending(env);
        if p.len() >= n {
            return p.into_iter().min_by_key(|r| r["id"].as_i64()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never held:\n{}",
            env.gw.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// psycopg 3 (extended protocol, a transaction by default) and pgbench scripts, as agents
/// of a held statement; and fifty sessions held at once while another keeps working.
#[test]
fn drivers_and_many_sessions_wait_for_the_reviewer() {
    let env = start(Engine::Auto);

    // psycopg: the held UPDATE waits inside its transaction; approved, it commits.
    let script = format!(
        r#"
import psycopg
with psycopg.connect({dsn:?}) as conn:
    cur = conn.cursor()
    cur.execute("INSERT INTO t VALUES (%s, %s)", (100, "py"))
    cur.execute("UPDATE t SET v = %s", ("approved",))
    print("updated", cur.rowcount)
    try:
        cur.execute("DELETE FROM t")
    except psycopg.errors.InsufficientPrivilege as e:
        print("denied:", e.diag.message_primary)
    cur.execute("SELECT count(*) FROM t")
    print("rows", cur.fetchone()[0])
    conn.commit()
"#,
        dsn = env.gw.conninfo("agent", "agent-secret", DB)
    );
    let py = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let req = &wait_pending(&env, 1)[0];
    assert_eq!(req["sql"], "UPDATE t SET v = $1");
    assert_eq!(req["params"][0]["value"], "approved");
    approvals_ok(&env, &["approve", &id(req), "--reviewer", "alice"]);
    let req = &wait_pending(&env, 1)[0];
    assert_eq!(req["sql"], "DELETE FROM t");
    approvals_ok(
        &env,
        &[
            "deny",
            &id(req),
            "--reviewer",
            "alice",
            "--reason",
            "keep the rows",
        ],
    );
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "psycopg: {}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.contains("updated 11"), "{printed}");
    assert!(
        printed.contains("denied: portcullis: approval #") && printed.contains("keep the rows"),
        "{printed}"
    );
    assert!(printed.contains("rows 11"), "{printed}");
    assert_eq!(
        direct(&env, "SELECT count(*) FROM t WHERE v = 'approved'"),
        "11"
    );

    // pgbench: a script whose second statement is held; pgbench completes once approved.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("held.sql");
    std::fs::write(
        &file,
        "\\set id random(1, 10)\nUPDATE t SET v = 'bench' WHERE id = :id;\nTRUNCATE junk;\n",
    )
    .unwrap();
    let bench = Command::new("pgbench")
        .args(["-n", "-t", "1", "-c", "1", "-f"])
        .arg(&file)
        .arg(env.gw.conninfo("agent", "agent-secret", DB))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    let req = &wait_pending(&env, 1)[0];
    assert!(
        req["sql"].as_str().unwrap().starts_with("TRUNCATE junk"),
        "{req}"
    );
    approvals_ok(&env, &["approve", &id(req), "--reviewer", "alice"]);
    let out = bench.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("number of failed transactions: 0"),
        "{}",
        stdout(&out)
    );

    // Fifty sessions held at once; another session's statements go on meanwhile.
    rt().block_on(async {
        let conninfo = env.gw.conninfo("agent", "agent-secret", DB);
        let mut held = Vec::new();
        for _ in 0..50 {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            held.push(tokio::spawn(async move {
                c.batch_execute("DELETE FROM t").await
            }));
        }
        let (free, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let pending_now = loop {
            let p = pending(&env);
            if p.len() == 50 {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for i in 0..200 {
            let n: i32 = free
                .query_one("SELECT $1::int", &[&i])
                .await
                .expect("a free session runs")
                .get(0);
            assert_eq!(n, i);
        }
        for r in &pending_now {
            approvals_ok(
                &env,
                &["deny", &id(r), "--reviewer", "alice", "--reason", "bulk"],
            );
        }
        for h in held {
            let err = h.await.unwrap().expect_err("denied");
            assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
        }
    });
    assert_eq!(direct(&env, "SELECT count(*) FROM t"), "11");
}
