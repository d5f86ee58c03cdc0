//! A full database does not break sessions that are already open: with every connection
//! slot of the server taken, a session whose masked result needs a catalog lookup (its
//! entry expired) still gets its masked rows, and a held statement still gets its
//! planner's estimate, because the gateway asks on connections it reserved before the
//! session was answered, never on a fresh one (`portcullis status` shows them). New
//! sessions are refused with the server's own 53300, as PostgreSQL refuses them.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{DB, Env, run_timed, stderr, stdout};
use portcullis_tests::{Engine, PgOptions, per_engine};
use serde_json::Value;

per_engine!(an_open_session_keeps_working_when_the_server_is_full);

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-unbounded"
properties = ["unbounded"]
action = "hold"
message = "deleting every row needs a reviewer"
"#;

const MASK: &str = r#"[mask]
catalog_ttl_secs = 1

[[mask.rule]]
name = "ssn"
column = "public.*.ssn"
strategy = "redact"
text = "[MASKED]"
"#;

fn admin(env: &Env, args: &[&str]) -> Output {
    let socket = env.gw.admin_socket().expect("admin socket");
    run_timed(common::portcullis(args).arg("--admin-socket").arg(socket))
}

fn admin_ok(env: &Env, args: &[&str]) -> String {
    let out = admin(env, args);
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}\n{}",
        stderr(&out),
        env.gw.log_tail(30)
    );
    stdout(&out)
}

fn an_open_session_keeps_working_when_the_server_is_full(engine: Engine) {
    let pg = PgOptions {
        extra_conf: vec![
            "max_connections = 12".into(),
            "superuser_reserved_connections = 0".into(),
        ],
        ..PgOptions::default()
    };
    let env = Env::start_with(engine, pg, |o| {
        o.policy(POLICY)
            .approvals("timeout_secs = 120\n")
            .admin_socket()
            .upstream_line("reserved_connections = 2")
            .extra_toml(MASK)
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE people (id int, ssn text);
             INSERT INTO people VALUES (1, '123-45-6789'), (2, '987-65-4321');
             CREATE TABLE other (id int, ssn text);
             INSERT INTO other VALUES (1, '111-22-3333');",
        )
        .expect("create tables");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let session = rt.block_on(common::connect(&env.conninfo()));
    let ssns = |sql: &str| -> Vec<String> {
        let rows = rt
            .block_on(session.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{}", env.gw.log_tail(20)));
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    assert_eq!(ssns("SELECT ssn FROM people ORDER BY id"), ["[MASKED]"; 2]);
    let status = admin_ok(&env, &["status"]);
    assert!(
        status.contains(" reserved=2/2 ") && status.contains(&format!("{DB}:2/2")),
        "{status}"
    );

    // Every slot taken, as a busy application would take them.
    let direct = env.pg.direct_uri(DB);
    let mut fillers = Vec::new();
    let refused = loop {
        assert!(fillers.len() < 20, "max_connections = 12 never filled");
        match rt.block_on(tokio_postgres::connect(&direct, tokio_postgres::NoTls)) {
            Ok((client, conn)) => {
                rt.spawn(conn);
                fillers.push(client);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        refused.as_db_error().map(|d| d.code().code()),
        Some("53300"),
        "{refused:?}"
    );
    // A new session is refused as the server refuses it...
    let out = run_timed(common::psql_at(&env.uri()).args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("too many clients already"),
        "{}",
        stderr(&out)
    );

    // ...while the open one goes on: its catalog entries have expired, and a table it
    // never read needs a lookup too.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ssns("SELECT ssn AS x FROM people ORDER BY id"),
        ["[MASKED]"; 2]
    );
    assert_eq!(ssns("SELECT ssn FROM other"), ["[MASKED]"]);

    // A held statement still gets its estimate, from a reserved connection.
    let held = {
        rt.block_on(async {
            let delete = session.simple_query("DELETE FROM people");
            tokio::pin!(delete);
            let deadline = Instant::now() + Duration::from_secs(30);
            let request = loop {
                tokio::select! {
                    r = &mut delete => panic!("the DELETE was not held: {r:?}"),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let list = admin_ok(&env, &["approvals", "list", "--json"]);
                let list: Vec<Value> = serde_json::from_str(list.trim()).expect("JSON list");
                if let Some(r) = list.into_iter().next() {
                    break r;
                }
                assert!(
                    Instant::now() < deadline,
                    "the DELETE never became a request"
                );
            };
            let id = request["id"].as_i64().unwrap().to_string();
            admin_ok(
                &env,
                &[
                    "approvals",
                    "deny",
                    &id,
                    "--reason",
                    "not while full",
                    "--reviewer",
                    "alice",
                ],
            );
            (request, delete.await)
        })
    };
    let (request, outcome) = held;
    let estimate = &request["estimate"];
    assert!(
        estimate["node"] == "Delete on people" && estimate["rows"].is_number(),
        "no estimate while the server is full: {request:#}"
    );
    let e = outcome.expect_err("a denied DELETE ran");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42501"));
    assert_eq!(ssns("SELECT ssn FROM people ORDER BY id").len(), 2);
    drop(fillers);
}
