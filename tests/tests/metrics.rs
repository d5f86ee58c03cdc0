//! What an operator reads from `[metrics]`: `/metrics` scraped during a run matches what
//! the agent did (statements by class and verdict, values masked per rule, refusals by
//! SQLSTATE, bytes, the session gauge going up and down, long results read in batches),
//! `/readyz` follows the upstream going away and coming back, and the dashboard and alert
//! rules in `deploy/` name only metrics the gateway exports.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{DB, Env, connect, first_column, rt};
use portcullis_tests::metrics::{Scrape, get, scrape_until};
use portcullis_tests::{Engine, PgOptions, free_port, per_engine, workspace_root};

per_engine!(metrics_match_what_the_agent_did);

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "no-writes"
class = ["write"]
action = "deny"
message = "agents may not write here"
"#;

const MASK: &str = r#"
[[mask.rule]]
name = "ssn"
column = "public.people.ssn"
strategy = "redact"
text = "[MASKED]"
"#;

fn start(engine: Engine, port: u16, extra: &str) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        o.policy(POLICY)
            .audit("")
            .extra_toml(MASK)
            .extra_toml(&format!(
                "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}"
            ))
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE people (id int, ssn text); \
             INSERT INTO people VALUES (1, '123-45-6789'), (2, '987-65-4321');",
        )
        .expect("create the table");
    env
}

fn metrics_match_what_the_agent_did(engine: Engine) {
    let port = free_port().unwrap();
    let env = start(engine, port, "");
    let before = Scrape::take(port);
    let agent = [("identity", "agent")];
    assert_eq!(before.value("portcullis_sessions_open", &agent), 0.0);
    let read_allow = [("class", "read"), ("verdict", "allow")];
    let write_deny = [("class", "write"), ("verdict", "deny")];
    assert_eq!(
        before.value("portcullis_statements_total", &read_allow),
        0.0
    );

    let denied_code = rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let during = Scrape::take(port);
        assert_eq!(
            during.value("portcullis_sessions_open", &agent),
            1.0,
            "one session is open"
        );
        assert_eq!(
            during.value(
                "portcullis_sessions_open",
                &[("identity", "agent"), ("engine", engine_label(engine))]
            ),
            1.0,
            "the session is counted under its engine"
        );
        // The writes go first: tokio-postgres reports an error before the statement's
        // `ReadyForQuery` has arrived, and a session that ended on a denial could close
        // before the gateway relayed it, leaving that round unfinished (and uncounted in
        // `portcullis_statement_end_to_end_seconds`). A read's answer is awaited whole.
        let mut code = String::new();
        for _ in 0..2 {
            let e = c
                .simple_query("INSERT INTO people VALUES (3, '111-22-3333')")
                .await
                .expect_err("writes are denied");
            code = e.code().expect("a SQLSTATE").code().to_owned();
        }
        for _ in 0..3 {
            let rows = c
                .simple_query("SELECT ssn FROM people ORDER BY id")
                .await
                .expect("the read runs");
            let values = first_column(&rows);
            let masked = Some("[MASKED]".to_owned());
            assert_eq!(values, [masked.clone(), masked]);
        }
        code
    });

    let after = scrape_until(port, "the session end", |s| {
        s.value("portcullis_sessions_open", &agent) == 0.0
    });
    let log = env.gw.log_tail(40);
    assert_eq!(
        after.value("portcullis_statements_total", &read_allow),
        3.0,
        "three reads allowed\n{log}"
    );
    assert_eq!(
        after.value("portcullis_statements_total", &write_deny),
        2.0,
        "two writes denied\n{log}"
    );
    assert_eq!(
        after.value("portcullis_statements_total", &[("verdict", "hold")]),
        0.0
    );
    assert_eq!(
        after.value("portcullis_values_masked_total", &[("rule", "ssn")]),
        6.0,
        "two values masked per read"
    );
    assert_eq!(
        after.value("portcullis_refusals_total", &[("sqlstate", &denied_code)]),
        2.0,
        "each denial is a refusal with the SQLSTATE the agent got ({denied_code})"
    );
    for dir in ["client_to_server", "server_to_client"] {
        assert!(
            after.value("portcullis_transferred_bytes_total", &[("direction", dir)]) > 0.0,
            "bytes {dir}"
        );
    }
    assert!(after.value("portcullis_sessions_started_total", &[]) >= 1.0);
    assert!(after.value("portcullis_sessions_ended_total", &[]) >= 1.0);
    assert!(after.histogram_count("portcullis_statement_added_seconds") >= 5.0);
    assert!(
        after.histogram_count("portcullis_statement_end_to_end_seconds") >= 5.0,
        "every round the agent finished is timed\n{log}"
    );
    assert!(after.value("portcullis_audit_records_total", &[]) > 0.0);
    assert_eq!(
        after.value("portcullis_build_info", &[("engine", engine_label(engine))]),
        1.0
    );

    // A wrong secret is a refused login, by reason.
    let bad = env.gw.conninfo("agent", "not-the-secret", DB);
    rt().block_on(async {
        let r = tokio_postgres::connect(&bad, tokio_postgres::NoTls).await;
        assert!(r.is_err(), "a wrong secret logged in");
    });
    let refused = scrape_until(port, "the refused login", |s| {
        s.value(
            "portcullis_logins_refused_total",
            &[("reason", "bad_credentials")],
        ) >= 1.0
    });
    assert_eq!(refused.value("portcullis_sessions_open", &agent), 0.0);

    // A long result is read in batches ([server] read_batch_bytes), and counted; the short
    // ones above never were.
    assert_eq!(refused.value("portcullis_read_batches_total", &[]), 0.0);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let rows = c
            .simple_query("SELECT repeat('x', 8000) FROM generate_series(1, 2000)")
            .await
            .expect("the long read runs");
        assert_eq!(first_column(&rows).len(), 2000);
    });
    scrape_until(port, "the batched read", |s| {
        s.value("portcullis_read_batches_total", &[]) >= 1.0
    });

    // The dashboard and the alert rules ask only for what is exported.
    let exported = &refused.names;
    for (file, text) in deploy_files() {
        for name in metric_names(&text) {
            assert!(
                exported.contains(&name)
                    || ["_bucket", "_sum", "_count", "_total"]
                        .iter()
                        .any(|s| name.strip_suffix(s).is_some_and(|b| exported.contains(b))),
                "{file} names {name}, which the gateway does not export; it exports {exported:?}"
            );
        }
    }
}

fn engine_label(engine: Engine) -> &'static str {
    match engine {
        Engine::Uring => "uring",
        // `auto` runs epoll.
        _ => "epoll",
    }
}

/// The Grafana dashboard (parsed as JSON) and the alert rules (parsed as YAML).
fn deploy_files() -> Vec<(String, String)> {
    let root = workspace_root().join("deploy");
    let dash = root.join("grafana/portcullis.json");
    let alerts = root.join("prometheus/alerts.yml");
    let d = std::fs::read_to_string(&dash).expect("the dashboard");
    let _: serde_json::Value = serde_json::from_str(&d).expect("the dashboard is JSON");
    let a = std::fs::read_to_string(&alerts).expect("the alert rules");
    let docs = yaml_rust2::YamlLoader::load_from_str(&a).expect("the alert rules are YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let mut rules = 0;
    for g in groups {
        for r in g["rules"].as_vec().expect("rules") {
            assert!(
                r["alert"].as_str().is_some(),
                "a rule without a name: {r:?}"
            );
            assert!(r["expr"].as_str().is_some(), "a rule without expr: {r:?}");
            rules += 1;
        }
    }
    assert!(rules >= 6, "the alert rules cover too little");
    vec![
        (dash.display().to_string(), d),
        (alerts.display().to_string(), a),
    ]
}

/// Every `portcullis_…` identifier in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn readyz_follows_the_upstream() {
    let port = free_port().unwrap();
    let mut env = start(Engine::Epoll, port, "probe_interval_secs = 1\n");
    let wait = |want: u16, what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = get(port, "/readyz");
            if code == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {want} ({what}): {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let body = wait(200, "upstream up");
    let v: HashMap<String, serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(get(port, "/healthz").0, 200);

    env.pg.stop().expect("stop PostgreSQL");
    let body = wait(503, "upstream stopped");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert_ne!(v["checks"]["upstream"], "ok", "{body}");
    assert_eq!(v["checks"]["policy"], "ok", "{body}");
    assert_eq!(v["checks"]["audit"], "ok", "{body}");
    assert_eq!(
        get(port, "/healthz").0,
        200,
        "alive while the upstream is down"
    );
    assert_eq!(Scrape::take(port).value("portcullis_ready", &[]), 0.0);

    env.pg.restart().expect("start PostgreSQL again");
    wait(200, "upstream back");
    assert_eq!(Scrape::take(port).value("portcullis_ready", &[]), 1.0);
}
