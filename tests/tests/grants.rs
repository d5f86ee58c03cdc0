//! Just-in-time grants end to end: a real PostgreSQL, the gateway with a policy where
//! the agent's standing role only reads, the embedded approvals store, the agent on
//! psql and tokio-postgres, operators and reviewers on the real `portcullis grants` and
//! `portcullis approvals` CLI over the admin socket.
//!
//! What a user would check: a write the standing role is refused passes once a grant is
//! approved, and only on the tables the grant names; the requester and the identity
//! itself cannot approve it; it stops at its end time (a statement prepared while it
//! was active is refused when executed after) and when revoked, in the same session;
//! it survives a gateway restart; every step is in the audit log, which still verifies.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{DB, Env, rt, run_timed, stderr, stdout};
use portcullis_tests::{Engine, PgOptions, per_engine};
use serde_json::Value;

per_engine!(a_grant_opens_its_table_until_it_ends);

/// The agent reads; writes need the `writer` role.
const POLICY: &str = r#"[policy]
default = "deny"

[[policy.rule]]
name = "agents-read"
roles = ["agent"]
class = ["read", "txn", "session", "utility"]
action = "allow"

[[policy.rule]]
name = "writers-write"
roles = ["writer"]
class = ["write"]
action = "allow"
"#;

const APPROVALS: &str = "notice_interval_secs = 1\ntimeout_secs = 120\n";

/// Roles down to the database: the agent's standing role reads, a writer grant writes.
const ROLES: &str = "[[role]]\nname = \"agent\"\nupstream_role = \"grants_read\"\n[[role]]\nname = \"writer\"\nupstream_role = \"grants_write\"\n";

fn start(engine: Engine) -> Env {
    start_with(engine, "")
}

fn start_with(engine: Engine, extra: &str) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        o.policy(POLICY)
            .approvals(APPROVALS)
            .admin_socket()
            .audit("")
            .extra_toml(extra)
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int);
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5) g;
             CREATE TABLE ledger (id int PRIMARY KEY, amount int);
             INSERT INTO ledger SELECT g, 10 FROM generate_series(1, 5) g;",
        )
        .expect("create tables");
    env
}

/// `portcullis <group> <args> --admin-socket <the gateway's>`.
fn cli(env: &Env, group: &str, args: &[&str]) -> Output {
    let socket = env.gw.admin_socket().expect("admin socket");
    run_timed(
        common::portcullis(&[group])
            .args(args)
            .arg("--admin-socket")
            .arg(socket),
    )
}

fn cli_ok(env: &Env, group: &str, args: &[&str]) -> String {
    let out = cli(env, group, args);
    assert!(
        out.status.success(),
        "portcullis {group} {args:?} failed: {}\n{}",
        stderr(&out),
        env.gw.log_tail(30)
    );
    stdout(&out)
}

fn cli_err(env: &Env, group: &str, args: &[&str]) -> String {
    let out = cli(env, group, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
    stderr(&out)
}

/// Asks for a grant of `writer` to the agent; returns its id.
fn request(env: &Env, duration: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "request",
        "--identity",
        "agent",
        "--role",
        "writer",
        "--for",
        duration,
        "--reason",
        "backfill ticket 812",
        "--json",
    ];
    args.extend_from_slice(extra);
    let g: Value = serde_json::from_str(&cli_ok(env, "grants", &args)).expect("grant JSON");
    assert_eq!(g["status"], "pending", "{g}");
    assert_eq!(g["roles"][0], "writer");
    g["id"].as_i64().expect("id").to_string()
}

fn approve(env: &Env, id: &str) {
    let out = cli_ok(env, "approvals", &["approve", id, "--reviewer", "alice"]);
    assert!(out.contains("approved"), "{out}");
}

fn grants(env: &Env, all: bool) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    if all {
        args.push("--all");
    }
    match serde_json::from_str(&cli_ok(env, "grants", &args)) {
        Ok(Value::Array(v)) => v,
        other => panic!("grants list: {other:?}"),
    }
}

fn grant(env: &Env, id: &str) -> Value {
    grants(env, true)
        .into_iter()
        .find(|g| g["id"].as_i64() == id.parse().ok())
        .unwrap_or_else(|| panic!("no grant {id}"))
}

/// What psql says to `sql` through the gateway: `Ok(stdout)` or `Err(stderr)`.
fn psql(env: &Env, sql: &str) -> Result<String, String> {
    let out = run_timed(
        env.psql_gw()
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]),
    );
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(stderr(&out))
    }
}

fn refused(env: &Env, r: Result<String, String>, what: &str) -> String {
    match r {
        Ok(out) => panic!("{what} was not refused: {out}\n{}", env.gw.log_tail(30)),
        Err(e) => {
            assert!(
                e.contains("portcullis refused"),
                "{what}: {e}\n--- gateway log ---\n{}",
                env.gw.log_tail(30)
            );
            e
        }
    }
}

fn db_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Sleeps until the grant's end time has passed on the gateway's clock.
fn wait_past_end(g: &Value) {
    let end = g["ends_ms"].as_u64().expect("an approved grant has an end");
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if now > end + 100 {
            return;
        }
        std::thread::sleep(Duration::from_millis(end + 150 - now));
    }
}

fn a_grant_opens_its_table_until_it_ends(engine: Engine) {
    let env = start(engine);
    let write = "UPDATE accounts SET balance = balance + 1 WHERE id = 1";
    let e = refused(&env, psql(&env, write), "a write without a grant");
    assert!(e.contains("no policy rule allows"), "{e}");
    assert_eq!(cli_ok(&env, "grants", &["list"]), "no grants\n");

    let rt = rt();
    let (id, id2, id3) = rt.block_on(async {
        // One session for the whole story: grants change under it.
        let client = common::connect(&env.conninfo()).await;
        let update = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";
        let e = client.prepare(update).await.expect_err("no grant yet");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");

        let id = request(
            &env,
            "8s",
            &["--class", "write", "--table", "public.accounts"],
        );
        // Pending: nothing is open yet; it sits in the reviewers' queue.
        refused(
            &env,
            psql(&env, write),
            "a write while the grant is pending",
        );
        let queue = cli_ok(&env, "approvals", &["list"]);
        assert!(
            queue.contains(" pending ") && queue.contains("GRANT ROLE writer TO agent FOR 8s"),
            "{queue}"
        );
        // Neither who asked (this unix user) nor the identity itself may approve it.
        let e = cli_err(&env, "approvals", &["approve", &id]);
        assert!(e.contains("they asked for it"), "{e}");
        let e = cli_err(&env, "approvals", &["approve", &id, "--reviewer", "agent"]);
        assert!(e.contains("own identity"), "{e}");
        approve(&env, &id);
        let g = grant(&env, &id);
        assert_eq!(g["status"], "active", "{g}");
        assert_eq!(g["approved_by"][0], "alice");

        // Used: the write passes now, in the open session and in a new one.
        let st = client
            .prepare(update)
            .await
            .expect("prepare under the grant");
        assert_eq!(
            client.execute(&st, &[&1i32, &1i32]).await.expect("write"),
            1
        );
        assert_eq!(psql(&env, write).expect("psql write"), "UPDATE 1\n");
        // Its table only: another table, and a statement touching both, are judged
        // without it.
        let e = client
            .execute("UPDATE ledger SET amount = 0 WHERE id = 1", &[])
            .await
            .expect_err("ledger is not in the grant");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(
            hint.contains(&format!("Grant #{id} is active but does not cover")),
            "{hint}"
        );
        let e = client
            .execute(
                "UPDATE accounts SET balance = 0 WHERE id IN (SELECT id FROM ledger)",
                &[],
            )
            .await
            .expect_err("a statement reaching ledger");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");
        let e = client
            .execute("DELETE FROM ledger WHERE id = 2", &[])
            .await
            .expect_err("delete from ledger");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");

        // Expired mid-session: the statement prepared while it was active is refused
        // at its next Execute.
        wait_past_end(&g);
        let e = client
            .execute(&st, &[&1i32, &1i32])
            .await
            .expect_err("the grant has ended");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");
        refused(&env, psql(&env, write), "a write after the grant expired");
        // The session goes on reading.
        let n: i64 = client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("read")
            .get(0);
        assert_eq!(n, 5);
        // Marked expired in the store.
        let deadline = Instant::now() + Duration::from_secs(30);
        while grant(&env, &id)["status"] != "expired" {
            assert!(Instant::now() < deadline, "{}", env.gw.log_tail(30));
            std::thread::sleep(Duration::from_millis(100));
        }

        // Revoked mid-session.
        let id2 = request(&env, "10m", &["--table", "public.accounts"]);
        approve(&env, &id2);
        let st = client
            .prepare(update)
            .await
            .expect("prepare under the second grant");
        assert_eq!(
            client.execute(&st, &[&1i32, &2i32]).await.expect("write"),
            1
        );
        let out = cli_ok(&env, "grants", &["revoke", &id2, "--reason", "done early"]);
        assert!(out.contains("revoked"), "{out}");
        let e = client
            .execute(&st, &[&1i32, &2i32])
            .await
            .expect_err("revoked");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");
        let e = cli_err(&env, "grants", &["revoke", &id2]);
        assert!(e.contains("only an active or pending grant"), "{e}");

        // A denied request opens nothing.
        let id3 = request(&env, "10m", &[]);
        cli_ok(
            &env,
            "approvals",
            &[
                "deny",
                &id3,
                "--reviewer",
                "bob",
                "--reason",
                "use a migration",
            ],
        );
        assert_eq!(grant(&env, &id3)["status"], "denied");
        let e = client
            .execute("UPDATE accounts SET balance = 0 WHERE id = 3", &[])
            .await
            .expect_err("denied grant");
        assert!(db_error(&e).contains("no policy rule allows"), "{e}");
        (id, id2, id3)
    });
    // Two writes under the first grant, one under the second.
    let balances = env
        .pg
        .psql(
            DB,
            "SELECT balance FROM accounts WHERE id IN (1, 2) ORDER BY id",
        )
        .unwrap();
    assert_eq!(
        balances.split_whitespace().collect::<Vec<_>>(),
        ["102", "101"]
    );
    assert_eq!(cli_ok(&env, "grants", &["list"]), "no grants\n");

    // The audit log: every grant event, and the statements that used a grant.
    let dir = env.gw.audit_dir();
    let d = dir.to_str().unwrap();
    let out = run_timed(&mut common::portcullis(&[
        "audit", "search", d, "--grants", "--json",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<(i64, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["record"]["grant"].as_i64().unwrap(),
                v["record"]["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let of = |id: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|(g, _)| Some(*g) == id.parse().ok())
            .map(|(_, e)| e.as_str())
            .collect()
    };
    assert_eq!(of(&id), ["requested", "approved", "expired"], "{events:?}");
    assert_eq!(of(&id2), ["requested", "approved", "revoked"], "{events:?}");
    assert_eq!(of(&id3), ["requested", "denied"], "{events:?}");
    let out = run_timed(&mut common::portcullis(&[
        "audit", "search", d, "--grant", &id, "--json",
    ]));
    let used: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(used.len(), 2, "{used:#?}");
    assert!(used.iter().all(|h| h["outcome"]["tags"][0] == "UPDATE 1"));
}

#[test]
fn grants_survive_a_restart() {
    let mut env = start_with(Engine::Auto, ROLES);
    env.pg
        .psql(
            DB,
            &format!(
                "CREATE ROLE grants_read NOLOGIN; CREATE ROLE grants_write NOLOGIN;
                 GRANT SELECT ON accounts, ledger TO grants_read;
                 GRANT SELECT, UPDATE ON accounts, ledger TO grants_write;
                 GRANT grants_read, grants_write TO {};",
                portcullis_tests::pg::UPSTREAM_USER
            ),
        )
        .expect("upstream roles");
    let who = "SELECT current_user";
    assert_eq!(psql(&env, who).unwrap(), "grants_read\n");
    let write = "UPDATE accounts SET balance = 0 WHERE id = 4";
    let id = request(&env, "10m", &["--table", "public.accounts"]);
    approve(&env, &id);
    // A session opened while the grant is active runs as the grant's upstream role too,
    // so PostgreSQL lets the write the policy allows through.
    assert_eq!(psql(&env, who).unwrap(), "grants_write\n");
    assert_eq!(psql(&env, write).unwrap(), "UPDATE 1\n");
    // A pending one survives too, and can still be approved after.
    let pending = request(&env, "10m", &["--table", "public.ledger"]);

    env.gw.restart().expect("restart the gateway");
    assert_eq!(psql(&env, write).unwrap(), "UPDATE 1\n");
    let live = grants(&env, false);
    assert_eq!(live.len(), 2, "{live:#?}");
    refused(
        &env,
        psql(&env, "UPDATE ledger SET amount = 0 WHERE id = 4"),
        "ledger before its grant is approved",
    );
    approve(&env, &pending);
    assert_eq!(
        psql(&env, "UPDATE ledger SET amount = 0 WHERE id = 4").unwrap(),
        "UPDATE 1\n"
    );
    cli_ok(&env, "grants", &["revoke", &id]);
    refused(&env, psql(&env, write), "a write after the revocation");
    env.gw.restart().expect("restart the gateway again");
    refused(&env, psql(&env, write), "a write after the restart");
    assert_eq!(grant(&env, &id)["status"], "revoked");
    // The ledger grant is still active: its role is still the session's.
    assert_eq!(psql(&env, who).unwrap(), "grants_write\n");
}
