//! The audit log end to end: a real PostgreSQL, the gateway with `[audit]`, agents on
//! psql, tokio-postgres and pgbench; the records read back from the log on disk.
//!
//! What an examiner would check: every statement the server ran has a record, written
//! before it ran, in the order the server received it, with the agent's identity, the
//! parameters as the audit policy keeps them, and an outcome with the right tag, rows,
//! SQLSTATE and masking counts; a result's digest is the SHA-256 of the bytes the client
//! received; refusals are recorded with their reason.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::{DB, Env, rt};
use portcullis_auditlog::segment::{Item, Reader};
use portcullis_tests::{Engine, per_engine};
use serde_json::Value;
use sha2::{Digest, Sha256};

per_engine!(statements_and_outcomes_are_recorded_in_server_order);
per_engine!(a_masked_results_digest_is_what_the_client_received);

/// Every record in the log, in order.
fn records(dir: &Path) -> Vec<Value> {
    Reader::open(dir, 0)
        .expect("open the audit log")
        .map(|i| match i.expect("read the audit log") {
            Item::Record { bytes, .. } => serde_json::from_slice(&bytes).expect("a JSON record"),
            other => panic!("the log is not whole: {other:?}"),
        })
        .collect()
}

fn of_kind<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|r| r["kind"] == kind).collect()
}

/// The outcome of statement `stmt` of `session`.
fn outcome<'a>(all: &'a [Value], session: &Value, stmt: &Value) -> &'a Value {
    all.iter()
        .find(|r| r["kind"] == "outcome" && &r["session"] == session && &r["stmt"] == stmt)
        .unwrap_or_else(|| panic!("no outcome for statement {stmt} of {session}"))
}

/// Waits until the log holds a record matching `f` (outcomes are written after the
/// answer, not before it, so a test reads them a moment later).
fn wait_for(dir: &Path, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let all = records(dir);
        if f(&all) {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never got there: {all:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn statements_and_outcomes_are_recorded_in_server_order(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| o.audit("params = \"keep\""));
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE TABLE t (id int primary key, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    ]));
    // Simple protocol, several statements, one failing.
    let out = common::run_timed(env.psql_gw().args([
        "-c",
        "SELECT * FROM t ORDER BY id",
        "-c",
        "UPDATE t SET name = 'c' WHERE id = 2",
        "-c",
        "SELECT 1/0",
    ]));
    assert!(!out.status.success());
    // Extended protocol, with parameters, pipelined by tokio-postgres.
    let conninfo = env.conninfo();
    rt().block_on(async {
        let c = common::connect(&conninfo).await;
        let (a, b) = futures_util::join!(
            c.query("SELECT name FROM t WHERE id = $1", &[&1i32]),
            c.execute("INSERT INTO t VALUES ($1, $2)", &[&3i32, &"three"]),
        );
        assert_eq!(a.unwrap().len(), 1);
        assert_eq!(b.unwrap(), 1);
    });
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| of_kind(all, "session_end").len() >= 2);

    assert_eq!(all[0]["kind"], "gateway_start");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["v"], 1);
        assert_eq!(r["seq"], i as u64, "records are numbered in log order");
    }
    let starts = of_kind(&all, "session_start");
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["identity"], "agent");
    assert_eq!(starts[0]["database"], DB);
    assert_eq!(starts[0]["auth"], "scram-sha-256");
    assert_eq!(starts[0]["client_addr"], "127.0.0.1");
    let psql_session = &starts[0]["session"];

    let stmts: Vec<&Value> = of_kind(&all, "statement")
        .into_iter()
        .filter(|s| &s["session"] == psql_session)
        .collect();
    let sqls: Vec<&str> = stmts.iter().map(|s| s["sql"].as_str().unwrap()).collect();
    assert_eq!(
        sqls,
        [
            "SELECT * FROM t ORDER BY id",
            "UPDATE t SET name = 'c' WHERE id = 2",
            "SELECT 1/0"
        ]
    );
    assert_eq!(stmts[0]["policy"]["class"][0], "read");
    assert_eq!(stmts[1]["policy"]["writes"][0], "t");
    assert!(
        stmts[0]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 16)
    );
    let o = outcome(&all, psql_session, &stmts[0]["stmt"]);
    assert_eq!(o["status"], "complete");
    assert_eq!(o["tags"][0], "SELECT 2");
    assert_eq!(o["rows"], 2);
    let o = outcome(&all, psql_session, &stmts[1]["stmt"]);
    assert_eq!(
        (o["tags"][0].as_str(), o["rows"].as_u64()),
        (Some("UPDATE 1"), Some(1))
    );
    let o = outcome(&all, psql_session, &stmts[2]["stmt"]);
    assert_eq!(
        (o["status"].as_str(), o["sqlstate"].as_str()),
        (Some("error"), Some("22012"))
    );

    // Each statement's record comes before its outcome: written before it ran.
    for s in &stmts {
        let at = |r: &Value| r["seq"].as_u64().unwrap();
        assert!(at(s) < at(outcome(&all, psql_session, &s["stmt"])));
    }

    let tp_session = &starts[1]["session"];
    let ext: Vec<&Value> = of_kind(&all, "statement")
        .into_iter()
        .filter(|s| &s["session"] == tp_session)
        .collect();
    assert_eq!(ext.len(), 2, "{ext:#?}");
    assert_eq!(ext[0]["via"], "extended");
    assert_eq!(ext[0]["sql"], "SELECT name FROM t WHERE id = $1");
    // tokio-postgres sends an int4 in binary: kept as base64 of its four bytes.
    assert_eq!(ext[0]["params"][0]["base64"], "AAAAAQ==");
    assert_eq!(ext[1]["params"][1]["base64"], "dGhyZWU=");
    let o = outcome(&all, tp_session, &ext[1]["stmt"]);
    assert_eq!(o["tags"][0], "INSERT 0 1");
    let end = of_kind(&all, "session_end");
    assert!(
        end.iter()
            .any(|e| &e["session"] == psql_session && e["statements"] == 3)
    );
}

const MASKING: &str = r#"
[[mask.rule]]
name = "ssn"
column = "public.people.ssn"
strategy = "redact"
text = "[MASKED]"
"#;

/// Sends one simple query over a raw connection (SCRAM done by the harness's client)
/// and returns the bytes of its answer up to, not including, `ReadyForQuery`.
fn raw_answer(env: &Env, sql: &str) -> Vec<u8> {
    let mut s = common::raw_login(env);
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
        // Walk whole frames to find ReadyForQuery.
        let mut at = 0;
        while at + 5 <= got.len() {
            let len = u32::from_be_bytes(got[at + 1..at + 5].try_into().unwrap()) as usize;
            if at + 1 + len > got.len() {
                break;
            }
            if got[at] == b'Z' {
                got.truncate(at);
                return got;
            }
            at += 1 + len;
        }
    }
}

fn a_masked_results_digest_is_what_the_client_received(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| {
        o.audit("").extra_toml(MASKING)
    });
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE TABLE people (id int, ssn text); INSERT INTO people SELECT g, '123-45-' || lpad(g::text, 4, '0') FROM generate_series(1, 500) g",
    ]));
    let sql = "SELECT id, ssn FROM people ORDER BY id";
    let answer = raw_answer(&env, sql);
    assert!(
        !answer.windows(7).any(|w| w == b"123-45-"),
        "the client saw a raw SSN"
    );
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| !of_kind(all, "outcome").is_empty());
    let o = of_kind(&all, "outcome")[0];
    assert_eq!(o["tags"][0], "SELECT 500");
    assert_eq!(o["masked"][0], serde_json::json!(["ssn", 500]));
    assert_eq!(o["bytes_to_agent"], answer.len() as u64);
    assert_eq!(o["result_sha256"], hex::encode(Sha256::digest(&answer)));
}

per_engine!(the_gateways_own_lookups_are_recorded_as_the_gateways);

/// What the gateway itself sends on the agent's connection (a catalog lookup after DDL
/// in a transaction, the describe before a `COPY (query)`) is in the log as the
/// gateway's, in the order it reached the server; the agent's statements keep their
/// own outcomes and masking counts.
fn the_gateways_own_lookups_are_recorded_as_the_gateways(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| {
        o.audit("").extra_toml(MASKING)
    });
    env.ok(env.psql_gw().args([
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "BEGIN",
        "-c",
        "CREATE TABLE people (id int, ssn text)",
        "-c",
        "INSERT INTO people VALUES (1, '123-45-6789')",
        "-c",
        "SELECT ssn AS x FROM people",
        "-c",
        "COMMIT",
        "-c",
        "COPY (SELECT ssn FROM people) TO STDOUT",
    ]));
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| !of_kind(all, "session_end").is_empty());
    let stmts = of_kind(&all, "statement");
    let gateway: Vec<&str> = stmts
        .iter()
        .filter(|s| s["policy"]["verdict"] == "gateway")
        .map(|s| s["sql"].as_str().unwrap())
        .collect();
    assert!(
        gateway
            .iter()
            .any(|q| q.contains("to_regclass(E'\"people\"')")),
        "the lookup is recorded: {gateway:#?}"
    );
    assert!(
        gateway.contains(&"SELECT ssn FROM people"),
        "the describe is recorded: {gateway:#?}"
    );
    let agent = |sql: &str| {
        *stmts
            .iter()
            .find(|s| s["sql"] == sql)
            .unwrap_or_else(|| panic!("no record of {sql}: {stmts:#?}"))
    };
    for (sql, tag) in [
        ("SELECT ssn AS x FROM people", "SELECT 1"),
        ("COPY (SELECT ssn FROM people) TO STDOUT", "COPY 1"),
    ] {
        let s = agent(sql);
        assert_eq!(s["policy"]["verdict"], "allow");
        let o = outcome(&all, &s["session"], &s["stmt"]);
        assert_eq!(o["tags"][0], tag, "{o:#}");
        assert_eq!(o["masked"][0], serde_json::json!(["ssn", 1]), "{o:#}");
    }
    // Each lookup was recorded before the agent's statement it serves.
    let pos = |f: &dyn Fn(&Value) -> bool| all.iter().position(f).unwrap();
    let lookup = pos(&|r| r["sql"].as_str().is_some_and(|q| q.contains("to_regclass")));
    let select = pos(&|r| r["sql"] == "SELECT ssn AS x FROM people");
    let describe = pos(&|r| r["sql"] == "SELECT ssn FROM people");
    let copy = pos(&|r| r["sql"] == "COPY (SELECT ssn FROM people) TO STDOUT");
    assert!(lookup < select && describe < copy);
}

per_engine!(the_log_verifies_and_tampering_is_named_by_the_cli);

/// The CLI an examiner runs: `keygen`, then after traffic `verify` (intact), `search`,
/// `show`, `prove`; then one byte changed in a record and the tail cut off, each found.
fn the_log_verifies_and_tampering_is_named_by_the_cli(engine: Engine) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.key");
    let witness = keys.path().join("witness");
    std::fs::create_dir(&witness).unwrap();
    let origin = "portcullis/test-gw";
    let out = common::run_timed(&mut common::portcullis(&[
        "audit",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--origin",
        origin,
    ]));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let vkey = common::stdout(&out).trim().to_owned();
    let audit = format!(
        "signing_key = {key:?}\ngateway_id = \"test-gw\"\ncheckpoint_every_records = 5\nwitnesses = [{witness:?}]\n"
    );
    let mut env = Env::start_with(engine, Default::default(), |o| o.audit(&audit));
    env.ok(env.psql_direct().args(["-c", "CREATE TABLE t (id int)"]));
    for i in 0..6 {
        env.query_gw(&format!("INSERT INTO t VALUES ({i})"));
    }
    assert_eq!(env.query_gw("SELECT count(*) FROM t").trim(), "6");
    let dir = env.gw.audit_dir();
    assert!(
        env.gw
            .stop_with(libc::SIGTERM, std::time::Duration::from_secs(30))
            .is_some(),
        "the gateway did not stop"
    );
    let all = records(&dir);
    assert_eq!(all.last().unwrap()["kind"], "gateway_stop");

    let d = dir.to_str().unwrap();
    let w = witness.to_str().unwrap();
    let verify = || {
        common::run_timed(&mut common::portcullis(&[
            "audit",
            "verify",
            d,
            "--public-key",
            &vkey,
            "--witness",
            w,
        ]))
    };
    let out = verify();
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(
        text.starts_with(&format!("intact: {} records", all.len())),
        "{text}"
    );

    // What an auditor asks: every write by the agent, and one session replayed.
    let out = common::run_timed(&mut common::portcullis(&[
        "audit",
        "search",
        d,
        "--identity",
        "agent",
        "--class",
        "write",
        "--json",
    ]));
    let hits: Vec<Value> = common::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 6, "{hits:#?}");
    assert!(hits.iter().all(|h| h["outcome"]["tags"][0] == "INSERT 0 1"));
    let session = hits[0]["record"]["session"].as_str().unwrap();
    let out = common::run_timed(&mut common::portcullis(&["audit", "show", d, session]));
    let shown = common::stdout(&out);
    assert!(
        shown.contains("session start: agent (scram-sha-256)"),
        "{shown}"
    );
    assert!(shown.contains("INSERT INTO t VALUES (0)"), "{shown}");
    assert!(shown.contains("-> complete [\"INSERT 0 1\"]"), "{shown}");
    let out = common::run_timed(&mut common::portcullis(&[
        "audit",
        "prove",
        d,
        "3",
        "--public-key",
        &vkey,
        "--json",
    ]));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let proof: Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(proof["index"], 3);

    // One byte of record 7 changed: named.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let original = std::fs::read(&seg).unwrap();
    let mut bytes = original.clone();
    let line7 = bytes
        .split(|b| *b == b'\n')
        .take(7)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = line7 + bytes[line7..].iter().position(|b| *b == b'"').unwrap() + 1;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let out = verify();
    let text = common::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("record 7"), "{text}");

    // The tail cut off, checkpoints and all: the witness still knows how long it was.
    let cut = original
        .split(|b| *b == b'\n')
        .take(all.len() - 3)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    std::fs::write(&seg, &original[..cut]).unwrap();
    std::fs::remove_file(dir.join("checkpoints")).unwrap();
    let _ = std::fs::remove_file(dir.join("leaves"));
    let out = verify();
    let text = common::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the log was cut short") && text.contains("missing"),
        "{text}"
    );
}

per_engine!(copy_and_cursors_are_recorded_with_their_row_counts);

fn copy_and_cursors_are_recorded_with_their_row_counts(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| o.audit(""));
    env.ok(env
        .psql_direct()
        .args(["-c", "CREATE TABLE t (id int, name text)"]));
    let conninfo = env.conninfo();
    rt().block_on(async {
        use futures_util::SinkExt;
        let c = common::connect(&conninfo).await;
        let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\ta\n2\tb\n3\tc\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 3);
        let out = c.copy_out("COPY t TO STDOUT").await.unwrap();
        futures_util::pin_mut!(out);
        let mut got = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"1\ta\n2\tb\n3\tc\n");
        c.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT * FROM t ORDER BY id")
            .await
            .unwrap();
        for _ in 0..2 {
            c.simple_query("FETCH 2 FROM c").await.unwrap();
        }
        c.batch_execute("CLOSE c; COMMIT").await.unwrap();
    });
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| !of_kind(all, "session_end").is_empty());
    let stmt_outcome = |sql: &str| -> Vec<&Value> {
        of_kind(&all, "statement")
            .into_iter()
            .filter(|s| s["sql"] == sql)
            .map(|s| outcome(&all, &s["session"], &s["stmt"]))
            .collect()
    };
    let o = stmt_outcome("COPY t FROM STDIN");
    assert_eq!(
        (o[0]["tags"][0].as_str(), o[0]["rows"].as_u64()),
        (Some("COPY 3"), Some(3))
    );
    let o = stmt_outcome("COPY t TO STDOUT");
    assert_eq!(o[0]["tags"][0], "COPY 3");
    let fetches = stmt_outcome("FETCH 2 FROM c");
    let tags: Vec<&str> = fetches
        .iter()
        .map(|o| o["tags"][0].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["FETCH 2", "FETCH 1"]);
    let o = stmt_outcome("BEGIN; DECLARE c CURSOR FOR SELECT * FROM t ORDER BY id");
    assert_eq!(o[0]["tags"], serde_json::json!(["BEGIN", "DECLARE CURSOR"]));
}

const HOLD_POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-destructive"
properties = ["unbounded"]
action = "hold"
message = "unbounded writes need a reviewer"
"#;

#[test]
fn an_approval_is_recorded_with_the_statement_it_released() {
    let env = Env::start_with(Engine::Auto, Default::default(), |o| {
        o.policy(HOLD_POLICY)
            .approvals("notice_interval_secs = 1\ntimeout_secs = 60\n")
            .admin_socket()
            .audit("")
    });
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5)",
    ]));
    let mut held = env.psql_gw();
    held.args(["-c", "DELETE FROM t"]);
    let agent = std::thread::spawn(move || common::run_timed(&mut held));
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| !of_kind(all, "approval_request").is_empty());
    let request = of_kind(&all, "approval_request")[0]["request"]
        .as_i64()
        .unwrap();
    let socket = env.gw.admin_socket().unwrap().to_owned();
    let out = common::run_timed(
        common::portcullis(&[
            "approvals",
            "approve",
            &request.to_string(),
            "--reviewer",
            "alice",
        ])
        .arg("--admin-socket")
        .arg(&socket),
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = agent.join().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let all = wait_for(&dir, |all| {
        of_kind(all, "statement")
            .iter()
            .any(|s| s["sql"] == "DELETE FROM t")
            && !of_kind(all, "session_end").is_empty()
    });
    let decision = of_kind(&all, "approval_decision")[0];
    assert_eq!(decision["action"], "approve");
    assert_eq!(decision["reviewers"], serde_json::json!(["alice"]));
    let stmt = of_kind(&all, "statement")
        .into_iter()
        .find(|s| s["sql"] == "DELETE FROM t")
        .unwrap();
    assert_eq!(stmt["approval"], request);
    assert_eq!(stmt["policy"]["verdict"], "approved");
    assert!(decision["seq"].as_u64() < stmt["seq"].as_u64());
    assert_eq!(
        outcome(&all, &stmt["session"], &stmt["stmt"])["tags"][0],
        "DELETE 5"
    );
    let out = common::run_timed(&mut common::portcullis(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--approved-by",
        "alice",
        "--json",
    ]));
    let hits: Vec<Value> = common::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["record"]["sql"], "DELETE FROM t");
    // The operator's view: the log is healthy and counting.
    let out = common::run_timed(common::portcullis(&["status", "--admin-socket"]).arg(&socket));
    let status = common::stdout(&out);
    assert!(status.contains(" audit=ok audit_records="), "{status}");
    assert!(status.contains(" audit_lost=0 "), "{status}");
}

/// What a security team looks for first: logins that failed, with who they claimed to be
/// and where they came from.
#[test]
fn refused_logins_are_recorded() {
    let env = Env::start_with(Engine::Auto, Default::default(), |o| o.audit(""));
    let bad = env.gw.uri("agent", "wrong-secret", DB);
    let out = common::run_timed(common::psql_at(&bad).args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    let unknown = env.gw.uri("mallory", "guess", DB);
    let out = common::run_timed(common::psql_at(&unknown).args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    let dir = env.gw.audit_dir();
    let all = wait_for(&dir, |all| of_kind(all, "login_refused").len() >= 2);
    let refused = of_kind(&all, "login_refused");
    let who: Vec<&str> = refused
        .iter()
        .map(|r| r["identity"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["agent", "mallory"]);
    for r in &refused {
        assert_eq!(r["client_addr"], "127.0.0.1");
        assert!(r["reason"].as_str().unwrap().contains("28P01"), "{r}");
    }
    assert!(of_kind(&all, "session_start").is_empty());
}
