//! The real `portcullis approvals` CLI against running gateways sharing one PostgreSQL
//! approvals store: a statement held on gateway A is listed, shown and approved through
//! gateway B's admin socket, and A's session then runs it. Also what the CLI says with
//! no approvals configured, with an empty queue and for a request that does not exist,
//! and `hash-token`.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{DB, Env, portcullis, run_timed, stderr, stdout};
use portcullis_tests::{Engine, Gateway, GatewayOptions, PgOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-destructive"
properties = ["drop", "truncate", "unbounded"]
action = "hold"
message = "destructive statements need a reviewer"
"#;

const STORE_DB: &str = "approvals_store";

/// `portcullis approvals <args> --admin-socket <gw's>`.
fn cli(gw: &Gateway, args: &[&str]) -> Output {
    let socket = gw.admin_socket().expect("admin socket");
    run_timed(
        portcullis(&[&["approvals"], args].concat())
            .arg("--admin-socket")
            .arg(socket),
    )
}

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = cli(gw, args);
    assert!(
        out.status.success(),
        "portcullis approvals {args:?} failed: {}\n{}",
        stderr(&out),
        gw.log_tail(30)
    );
    stdout(&out)
}

/// `Err(stderr)` of a command that must fail with exit status 1.
fn cli_err(gw: &Gateway, args: &[&str]) -> String {
    let out = cli(gw, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
    stderr(&out)
}

fn shared_store(env: &Env, gateway_id: &str) -> String {
    format!(
        "store = \"postgres\"\npostgres_url = \"{}\"\ngateway_id = \"{gateway_id}\"\nnotice_interval_secs = 1\n",
        env.pg.direct_uri(STORE_DB)
    )
}

fn gateway(env: &Env, approvals: Option<&str>) -> Gateway {
    let mut o = GatewayOptions::new(&env.pg, DB)
        .policy(POLICY)
        .admin_socket();
    if let Some(a) = approvals {
        o = o.approvals(a);
    }
    Gateway::start(o).unwrap_or_else(|e| panic!("start gateway: {e}"))
}

fn pending(gw: &Gateway) -> Vec<Value> {
    match serde_json::from_str(cli_ok(gw, &["list", "--json"]).trim()) {
        Ok(Value::Array(v)) => v,
        other => panic!("list --json: {other:?}"),
    }
}

#[test]
fn a_statement_held_on_one_gateway_is_approved_through_another() {
    let env = Env::start_with(Engine::Auto, PgOptions::default(), |o| o.admin_socket());
    env.pg.create_database(STORE_DB).unwrap();
    env.pg
        .psql(
            DB,
            "CREATE TABLE junk (id int); INSERT INTO junk VALUES (1)",
        )
        .unwrap();

    // The gateway the harness started has no [approvals].
    let e = cli_err(&env.gw, &["list"]);
    assert_eq!(
        e.trim(),
        "error: approvals are not configured on this gateway ([approvals] section)"
    );

    let a = gateway(&env, Some(&shared_store(&env, "gw-a")));
    let b = gateway(&env, Some(&shared_store(&env, "gw-b")));
    assert_eq!(cli_ok(&b, &["list"]), "no pending requests\n");
    assert_eq!(cli_ok(&b, &["list", "--all"]), "no requests\n");
    assert_eq!(cli_ok(&b, &["list", "--json"]).trim(), "[]");
    assert_eq!(
        cli_err(&b, &["show", "999"]).trim(),
        "error: there is no request #999"
    );
    assert_eq!(
        cli_err(&b, &["approve", "999"]).trim(),
        "error: there is no request #999"
    );

    // Held on A.
    let agent = common::psql_at(&a.agent_uri())
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", "DROP TABLE junk"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let deadline = Instant::now() + Duration::from_secs(30);
    let req = loop {
        if let Some(r) = pending(&b).pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "never held:\n{}", a.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    };
    let id = req["id"].as_i64().unwrap().to_string();
    assert_eq!(req["gateway"], "gw-a");
    assert_eq!(req["identity"], "agent");
    assert_eq!(req["sql"], "DROP TABLE junk");

    // Readable on B, as a table and as the whole request.
    let table = cli_ok(&b, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[0].ends_with(" STATEMENT"), "{table}");
    assert!(lines[1].starts_with(&format!("{id} ")), "{table}");
    assert!(
        lines[1].contains(" pending ") && lines[1].ends_with(" DROP TABLE junk"),
        "{table}"
    );
    let shown = cli_ok(&b, &["show", &id]);
    for want in [
        format!("request #{id}: pending, waiting "),
        "  identity     agent (roles: agent)\n".into(),
        format!("  database     {DB}\n"),
        "  application  psql\n".into(),
        "  rule         hold-destructive: destructive statements need a reviewer\n".into(),
        "  approvals    0 of 1\n".into(),
        "  statement (simple protocol):\n    DROP TABLE junk\n".into(),
        format!("  digest       {}\n", req["digest"].as_str().unwrap()),
    ] {
        assert!(shown.contains(&want), "{want:?} not in\n{shown}");
    }
    assert!(
        shown.contains(" on gateway gw-a\n"),
        "the session is A's: {shown}"
    );
    assert_eq!(
        env.pg.psql(DB, "SELECT count(*) FROM junk").unwrap().trim(),
        "1",
        "ran before approval"
    );

    // Approved through B by whoever runs the CLI: A's session runs the statement.
    let out = cli_ok(&b, &["approve", &id, "--reason", "cleanup"]);
    assert!(
        out.starts_with(&format!(
            "approving request #{id} (agent on {DB}, pending):\n    DROP TABLE junk\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("  digest {}\n", req["digest"].as_str().unwrap())),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("request #{id}: approved\n")),
        "{out}"
    );
    let done = agent.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "the approved DROP failed: {}\n{}",
        stderr(&done),
        a.log_tail(30)
    );
    assert_eq!(
        env.pg
            .psql(DB, "SELECT to_regclass('junk') IS NULL")
            .unwrap()
            .trim(),
        "t"
    );
    let me = stdout(&run_timed(Command::new("id").arg("-un")));
    let shown: Value = serde_json::from_str(cli_ok(&a, &["show", &id, "--json"]).trim()).unwrap();
    assert_eq!(shown["status"], "approved");
    assert_eq!(shown["votes"][0]["reviewer"], format!("unix:{}", me.trim()));
    assert_eq!(shown["votes"][0]["reason"], "cleanup");
    // Decided once, on either gateway.
    let again = cli_err(&a, &["approve", &id, "--reviewer", "bob"]);
    assert!(again.contains("is approved already"), "{again}");
    let deny = cli_err(&a, &["deny", &id, "--reason", "late"]);
    assert!(deny.contains("is approved already"), "{deny}");
    assert!(cli_ok(&a, &["list", "--all"]).contains(" approved "));
}

#[test]
fn hash_token_makes_a_token_and_its_config_line() {
    let out = run_timed(&mut portcullis(&["approvals", "hash-token"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let token = lines[0].strip_prefix("token: ").expect("a token line");
    assert_eq!(token.len(), 43, "32 bytes in base64url: {token}");
    assert_eq!(
        lines[1],
        format!(
            "token_sha256 = \"{}\"",
            hex(&Sha256::digest(token.as_bytes()))
        )
    );
    assert!(stderr(&out).contains("[[approvals.reviewer]]"));

    let out = run_timed(&mut portcullis(&["approvals", "hash-token", "abc"]));
    assert_eq!(
        stdout(&out),
        "token: abc\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
