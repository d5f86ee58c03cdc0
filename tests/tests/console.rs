//! The admin console end to end: the real gateway with `[console]`, a real PostgreSQL
//! behind it, operators on the real `psql` and on tokio-postgres (extended protocol),
//! agents on psql.
//!
//! What an operator would check: each SHOW answers with its columns and with rows that
//! match what the agents are doing (an open session appears with its identity, a held
//! statement appears in SHOW APPROVALS); APPROVE releases the waiting agent's statement
//! and DENY refuses it with the reason; RELOAD applies an edited file and refuses a
//! broken one, keeping the running configuration; only admin identities with the right
//! secret get in, and only to the `portcullis` database; garbage gets a clear error and
//! the console session goes on; every login and change is in the audit log.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{DB, Env, connect, psql_at, rt, run_timed, stderr, stdout};
use portcullis_auditlog::segment::{Item, Reader};
use portcullis_tests::{Engine, Identity, PgOptions, free_port, per_engine};
use serde_json::Value;

per_engine!(console_shows_sessions_and_decides_held_statements);

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-writes-on-t"
relations = ["t"]
class = ["write"]
action = "hold"
message = "writes on t wait for a reviewer"
"#;

/// `ops` may use the console and review; `viewer` may use the console only.
fn start(engine: Engine) -> (Env, u16) {
    let port = free_port().expect("a free port");
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.identities
            .push(Identity::new("ops", "ops-secret", &["admin"]));
        o.identities
            .push(Identity::new("viewer", "viewer-secret", &["admin"]));
        o.policy(POLICY)
            .approvals(&format!(
                "timeout_secs = 120\nnotice_interval_secs = 1\n[[approvals.reviewer]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\n",
                "ab".repeat(32)
            ))
            .audit("")
            .extra_toml(&format!("[console]\nlisten = \"127.0.0.1:{port}\"\n"))
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g;",
        )
        .expect("create tables");
    (env, port)
}

fn console_uri(port: u16, user: &str, secret: &str, db: &str) -> String {
    format!("postgresql://{user}:{secret}@127.0.0.1:{port}/{db}")
}

/// `psql` on the console as `ops`, verbose errors (with their SQLSTATE).
fn console(port: u16) -> Command {
    let mut c = psql_at(&console_uri(port, "ops", "ops-secret", "portcullis"));
    c.args(["-v", "VERBOSITY=verbose"]);
    c
}

/// Runs psql commands in one console session; every row of every result, unaligned.
fn console_rows(env: &Env, port: u16, commands: &[&str]) -> Vec<Vec<String>> {
    let mut c = console(port);
    c.args(["-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"]);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    stdout(&env.ok(&mut c))
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The column names a SHOW answers with, as psql prints its header.
fn header(env: &Env, port: u16, command: &str) -> Vec<String> {
    let out = env.ok(console(port).args(["-A", "-F", "\t", "-c", command]));
    stdout(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .split('\t')
        .map(str::to_owned)
        .collect()
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// A psql session of the agent's running `sql`, in the background.
fn agent_background(env: &Env, sql: &str) -> std::process::Child {
    psql_at(&env.uri())
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql")
}

fn finish(child: std::process::Child) -> Output {
    child.wait_with_output().expect("psql output")
}

/// Polls SHOW APPROVALS until `n` requests are pending (bounded), returning the rows.
fn wait_pending(env: &Env, port: u16, n: usize) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = console_rows(env, port, &["SHOW APPROVALS"]);
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{n} requests never became pending: {rows:?}\n{}",
            env.gw.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn console_shows_sessions_and_decides_held_statements(engine: Engine) {
    let (env, port) = start(engine);

    // Every command's columns, as the operator sees them.
    assert_eq!(header(&env, port, "SHOW HELP"), ["command", "description"]);
    let sessions = header(&env, port, "SHOW SESSIONS");
    for c in [
        "id",
        "identity",
        "database",
        "client_addr",
        "engine",
        "worker",
        "upstream_role",
        "started_at",
        "state",
        "statements",
        "bytes_to_server",
        "bytes_to_client",
    ] {
        column(&sessions, c);
    }
    let pools = header(&env, port, "SHOW POOLS;");
    assert_eq!(
        pools,
        [
            "database", "role", "in_use", "idle", "waiting", "opened", "reused", "closed",
            "timeouts"
        ]
    );
    let help = console_rows(&env, port, &["SHOW HELP"]);
    for c in [
        "SHOW SESSIONS",
        "SHOW STATS",
        "SHOW POOLS",
        "SHOW APPROVALS",
        "SHOW GRANTS",
        "SHOW CONFIG",
        "RELOAD",
    ] {
        assert!(help.iter().any(|r| r[0] == c), "{c} missing from {help:?}");
    }

    // An agent session open now is listed with its identity and what it did.
    let rt = rt();
    rt.block_on(async {
        let agent = connect(&env.conninfo()).await;
        agent.simple_query("SELECT 1").await.expect("select 1");
        agent.simple_query("SELECT 2").await.expect("select 2");
        let rows = console_rows(&env, port, &["SHOW SESSIONS"]);
        let row = rows
            .iter()
            .find(|r| r[column(&sessions, "identity")] == "agent")
            .unwrap_or_else(|| panic!("agent not in SHOW SESSIONS: {rows:?}"));
        assert_eq!(row[column(&sessions, "database")], DB);
        assert_eq!(row[column(&sessions, "client_addr")], "127.0.0.1");
        assert_eq!(row[column(&sessions, "engine")], engine.as_str());
        assert_eq!(row[column(&sessions, "state")], "idle");
        assert_eq!(row[column(&sessions, "statements")], "2");
        assert!(row[column(&sessions, "worker")].starts_with("portcullis-w"));
        let sent: u64 = row[column(&sessions, "bytes_to_client")].parse().unwrap();
        assert!(sent > 0, "{row:?}");

        // The same through tokio-postgres: the extended protocol, binary results.
        let op = connect(&format!(
            "host=127.0.0.1 port={port} user=ops password=ops-secret dbname=portcullis"
        ))
        .await;
        let rows = op.query("SHOW SESSIONS", &[]).await.expect("SHOW SESSIONS");
        let mine = rows
            .iter()
            .find(|r| r.get::<_, &str>("identity") == "agent")
            .expect("agent listed");
        assert_eq!(mine.get::<_, i64>("statements"), 2);
        let stats = op.query_one("SHOW STATS", &[]).await.expect("SHOW STATS");
        assert!(stats.get::<_, i64>("sessions_open") >= 1);
        assert!(stats.get::<_, i64>("statements") >= 2);
        assert_eq!(stats.get::<_, &str>("engine"), engine.as_str());
        assert_eq!(stats.get::<_, &str>("audit"), "ok");
        // A prepared statement with the wrong number of formats or a parameter is
        // refused, and the connection goes on.
        op.query("SHOW SESSIONS", &[&1i32])
            .await
            .expect_err("a parameter");
        let e = op
            .simple_query("SHOW nonsense")
            .await
            .expect_err("nonsense");
        let db = e.as_db_error().expect("an ErrorResponse");
        assert_eq!(db.code().code(), "0A000");
        assert!(
            db.hint().unwrap_or_default().contains("SHOW HELP"),
            "{db:?}"
        );
        // The agent's session holds one connection of its database's pool.
        let pools = op.query("SHOW POOLS", &[]).await.expect("pools");
        let app = pools
            .iter()
            .find(|r| r.get::<_, String>("database") == DB)
            .expect("the agent's pool is listed");
        assert_eq!(app.get::<_, i64>("in_use"), 1);
        assert_eq!(app.get::<_, i64>("opened"), 1);

        drop(agent);
        // Gone from the list once it ends (the registry entry drops with the session).
        let deadline = Instant::now() + Duration::from_secs(30);
        while op
            .query("SHOW SESSIONS", &[])
            .await
            .expect("SHOW SESSIONS")
            .iter()
            .any(|r| r.get::<_, &str>("identity") == "agent")
        {
            assert!(
                Instant::now() < deadline,
                "the ended session is still listed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // A held statement appears in SHOW APPROVALS; APPROVE in the same console session
    // releases it to the waiting agent.
    let approvals = header(&env, port, "SHOW APPROVALS");
    let agent = agent_background(&env, "UPDATE t SET v = 'approved' WHERE id = 1");
    let pending = wait_pending(&env, port, 1);
    let req = &pending[0];
    assert_eq!(req[column(&approvals, "identity")], "agent");
    assert_eq!(req[column(&approvals, "rule")], "hold-writes-on-t");
    assert_eq!(req[column(&approvals, "status")], "pending");
    assert!(req[column(&approvals, "statement")].contains("UPDATE t SET v = 'approved'"));
    let id = req[column(&approvals, "id")].clone();
    // APPROVE needs the request shown in this session first.
    let out = run_timed(console(port).args(["-c", &format!("APPROVE {id}")]));
    assert!(
        stderr(&out).contains("has not been shown in this session"),
        "{}",
        stderr(&out)
    );
    // A console admin who is not a reviewer cannot decide.
    let out = run_timed(
        psql_at(&console_uri(port, "viewer", "viewer-secret", "portcullis")).args([
            "-c",
            "SHOW APPROVALS",
            "-c",
            &format!("APPROVE {id}"),
        ]),
    );
    assert!(
        stderr(&out).contains("is not a reviewer"),
        "{}",
        stderr(&out)
    );
    let decided = console_rows(
        &env,
        port,
        &["SHOW APPROVALS", &format!("APPROVE {id} 'planned fix'")],
    );
    let last = decided.last().expect("the decision row");
    assert_eq!(last[0], id);
    assert_eq!(last[1], "approved", "{decided:?}");
    let out = finish(agent);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.pg
            .psql(DB, "SELECT v FROM t WHERE id = 1")
            .unwrap()
            .trim(),
        "approved"
    );

    // DENY refuses it: the agent gets the reason, nothing runs.
    let agent = agent_background(&env, "DELETE FROM t WHERE id = 2");
    let id = wait_pending(&env, port, 1)[0][column(&approvals, "id")].clone();
    console_rows(&env, port, &[&format!("DENY {id} 'not during the freeze'")]);
    let out = finish(agent);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not during the freeze"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.pg
            .psql(DB, "SELECT count(*) FROM t WHERE id = 2")
            .unwrap()
            .trim(),
        "1"
    );

    // Garbage gets a clear error each, and the session goes on to the last command.
    let out = run_timed(console(port).args([
        "-At",
        "-c",
        "SHOW nonsense",
        "-c",
        "DROP TABLE t",
        "-c",
        "",
        "-c",
        "APPROVE soon",
        "-c",
        "SHOW HELP",
    ]));
    let err = stderr(&out);
    assert!(
        err.contains("0A000") && err.contains("the console has no SHOW nonsense"),
        "{err}"
    );
    assert!(
        err.contains("HINT:  SHOW HELP lists the console's commands."),
        "{err}"
    );
    assert!(err.contains("is not a console command"), "{err}");
    assert!(
        err.contains("42601") && err.contains("APPROVE needs a request id"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("SHOW SESSIONS"),
        "the session ended early: {err}"
    );
    assert_eq!(
        env.pg.psql(DB, "SELECT count(*) FROM t").unwrap().trim(),
        "5",
        "DROP TABLE reached the database"
    );

    // SHOW STATS counts what happened: the held statements and the refusal.
    let stats_header = header(&env, port, "SHOW STATS");
    let stats = &console_rows(&env, port, &["SHOW STATS"])[0];
    let held: u64 = stats[column(&stats_header, "held")].parse().unwrap();
    assert!(held >= 2, "{stats:?}");
    assert!(
        stats[column(&stats_header, "sessions_total")]
            .parse::<u64>()
            .unwrap()
            >= 3
    );

    // The audit log has the logins and the decisions' commands.
    let all = audit_until(&env, |all| {
        has(all, "console_command", "command", "approve")
            && has(all, "console_command", "command", "deny")
    });
    assert!(has(&all, "console_login", "identity", "ops"));
    assert!(
        all.iter()
            .any(|r| r["kind"] == "approval_decision" && r["reviewers"][0] == "ops"),
        "{all:#?}"
    );
}

/// The audit log's records once `done` holds for them (bounded wait: records are
/// written in groups, a moment after the event).
fn audit_until(env: &Env, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<Value> = Reader::open(&env.gw.audit_dir(), 0)
            .expect("open the audit log")
            .filter_map(|i| match i.expect("read the audit log") {
                Item::Record { bytes, .. } => serde_json::from_slice(&bytes).ok(),
                _ => None,
            })
            .collect();
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never got there: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has(all: &[Value], kind: &str, key: &str, value: &str) -> bool {
    all.iter().any(|r| r["kind"] == kind && r[key] == value)
}

/// Who gets in: admin identities with their secret, to `portcullis` only. The console
/// is no data path, so one engine is enough.
#[test]
fn console_refuses_wrong_logins() {
    let (env, port) = start(Engine::Epoll);
    // psql shows what a person reads; tokio-postgres the SQLSTATE.
    let refused = |user: &str, secret: &str, db: &str| {
        let out =
            run_timed(psql_at(&console_uri(port, user, secret, db)).args(["-c", "SHOW HELP"]));
        assert!(!out.status.success(), "{user} got in");
        let e = rt()
            .block_on(tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user={user} password={secret} dbname={db}"),
                tokio_postgres::NoTls,
            ))
            .err()
            .unwrap_or_else(|| panic!("{user} got in with tokio-postgres"));
        let db = e.as_db_error().expect("an ErrorResponse");
        (db.code().code().to_owned(), stderr(&out))
    };
    let (code, e) = refused("agent", "agent-secret", "portcullis");
    assert_eq!(code, "42501", "{e}");
    assert!(e.contains("may not use the admin console"), "{e}");
    let (code, e) = refused("ops", "wrong", "portcullis");
    assert_eq!(code, "28P01", "{e}");
    let (code, e) = refused("nobody", "x", "portcullis");
    assert_eq!(code, "28P01", "{e}");
    let (code, e) = refused("ops", "ops-secret", "app");
    assert_eq!(code, "3D000", "{e}");
    assert!(e.contains("database \"app\" does not exist"), "{e}");
    assert!(
        e.contains("HINT:") && e.contains("portcullis"),
        "the hint names the console's database: {e}"
    );

    // Each refusal is a login_refused record, told apart from the data path's.
    let all = audit_until(&env, |all| {
        all.iter()
            .filter(|r| r["kind"] == "login_refused" && r["auth"] == "console scram-sha-256")
            .count()
            >= 4
    });
    assert!(
        all.iter().any(|r| r["kind"] == "login_refused"
            && r["identity"] == "agent"
            && r["reason"].as_str().unwrap_or("").contains("42501")),
        "{all:#?}"
    );

    // SHOW CONFIG: the running settings, secrets redacted.
    let rows = console_rows(&env, port, &["SHOW CONFIG"]);
    let get = |k: &str| {
        rows.iter()
            .find(|r| r[0] == k)
            .unwrap_or_else(|| panic!("{k} not in SHOW CONFIG: {rows:?}"))
            .clone()
    };
    assert_eq!(get("upstream.password")[1], "(redacted)");
    assert_eq!(get("upstream.password")[2], "file");
    assert_eq!(get("console.listen")[1], format!("\"127.0.0.1:{port}\""));
    // The harness passes --io-engine with the file's own value: still the file's.
    assert_eq!(get("server.io_engine")[1], "\"epoll\"");
    assert_eq!(get("server.shutdown_grace_secs")[2], "default");
    assert_eq!(get("log.level")[2], "file");
    let text = format!("{rows:?}");
    assert!(
        !text.contains("SCRAM-SHA-256$"),
        "a verifier is shown: {text}"
    );
    assert!(!text.contains(&env.gw.opts.upstream_password), "{text}");
    assert!(
        !text.contains(&"ab".repeat(32)),
        "a token hash is shown: {text}"
    );
}

/// RELOAD applies an edited file and refuses a broken one, keeping what runs.
#[test]
fn console_reload_applies_and_refuses() {
    let (env, port) = start(Engine::Epoll);
    let path = env.gw.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    // A new identity, usable once reloaded.
    let added = format!(
        "{original}\n[[identity]]\nname = \"late\"\nsecret = \"{}\"\nroles = [\"agent\"]\n",
        portcullis_tests::scram::verifier("late-secret")
    );
    std::fs::write(&path, added).unwrap();
    let rt = rt();
    let viewer = rt.block_on(connect(&format!(
        "host=127.0.0.1 port={port} user=viewer password=viewer-secret dbname=portcullis"
    )));
    rt.block_on(viewer.simple_query("SHOW HELP"))
        .expect("viewer's SHOW HELP");
    // ... and `viewer` loses its console role.
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find("name = \"viewer\"")
        .expect("viewer in the config");
    let (head, tail) = text.split_at(at);
    std::fs::write(
        &path,
        format!(
            "{head}{}",
            tail.replacen("roles = [\"admin\"]", "roles = [\"agent\"]", 1)
        ),
    )
    .unwrap();
    let rows = console_rows(&env, port, &["RELOAD"]);
    assert_eq!(rows[0][0], "t", "{rows:?}");
    // The open session ends at its next command; a new login is refused.
    let e = rt
        .block_on(viewer.simple_query("SHOW HELP"))
        .expect_err("a session whose role was taken away");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.severity(), db.code().code()),
        ("FATAL", "28000"),
        "{db:?}"
    );
    assert!(
        db.message().contains("no longer holds a console role"),
        "{db:?}"
    );
    let out = run_timed(
        psql_at(&console_uri(port, "viewer", "viewer-secret", "portcullis"))
            .args(["-c", "SHOW HELP"]),
    );
    assert!(!out.status.success());
    assert!(rows[0][1].contains("reloaded 5 identities"), "{rows:?}");
    env.ok(psql_at(&env.gw.uri("late", "late-secret", DB)).args(["-c", "SELECT 1"]));

    // A broken file: refused with the reason, the old configuration stays.
    std::fs::write(&path, format!("{original}\n[policy]\nbroken = \n")).unwrap();
    let out = run_timed(console(port).args(["-c", "RELOAD", "-c", "SHOW STATS"]));
    let err = stderr(&out);
    assert!(
        err.contains("F0000") && err.contains("reload refused"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("refused"),
        "SHOW STATS after it: {}",
        stdout(&out)
    );
    env.ok(psql_at(&env.gw.uri("late", "late-secret", DB)).args(["-c", "SELECT 1"]));

    let all = audit_until(&env, |all| {
        all.iter()
            .filter(|r| r["kind"] == "console_command" && r["command"] == "reload")
            .count()
            >= 2
    });
    let reloads: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "config_reload" && r["by"] == "console (ops)")
        .collect();
    assert_eq!(reloads.len(), 2, "{all:#?}");
    assert_eq!(reloads[0]["ok"], true);
    assert_eq!(reloads[1]["ok"], false);
}

/// With `[server.tls]` the console speaks TLS with the gateway's certificate, and
/// refuses plaintext when TLS is required.
#[test]
fn console_over_tls() {
    let certs = portcullis_tests::Certs::new();
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let port = free_port().expect("a free port");
    let env = Env::start_with(Engine::Epoll, PgOptions::default(), |mut o| {
        o.identities
            .push(Identity::new("ops", "ops-secret", &["admin"]));
        o.tls = Some((cert, key));
        o.tls_required = true;
        o.extra_toml(&format!("[console]\nlisten = \"127.0.0.1:{port}\"\n"))
    });
    let uri = format!(
        "postgresql://ops:ops-secret@localhost:{port}/portcullis?sslmode=verify-full&sslrootcert={}",
        certs.path("ca.pem").display()
    );
    let out = env.ok(psql_at(&uri).args(["-At", "-c", "SHOW STATS"]));
    assert!(stdout(&out).contains("|running|"), "{}", stdout(&out));
    let out = run_timed(
        psql_at(&format!(
            "{}?sslmode=disable",
            console_uri(port, "ops", "ops-secret", "portcullis")
        ))
        .args(["-c", "SHOW STATS"]),
    );
    assert!(!out.status.success(), "plaintext got in");
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
}
