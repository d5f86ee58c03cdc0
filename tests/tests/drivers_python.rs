//! Python drivers as the masked agent (tests/drivers/python): asyncpg, which speaks the
//! extended protocol with binary results and introspects every array, enum and
//! composite type it meets with a query over the system catalogs, and psycopg 3, which
//! works inside a transaction it opens itself. The same script runs against PostgreSQL
//! directly; what the driver reports must be the same except where masking changed a
//! value, and there it must never be a real identifier.

mod common;

use common::Env;
use portcullis_tests::{Engine, QUICKSTART_MASK_POLICY, per_engine, ssn_valid, workspace_root};
use serde_json::Value;
use std::process::Command;

per_engine!(
    asyncpg_works_for_the_masked_agent,
    psycopg_works_for_the_masked_agent
);

/// What `tests/drivers/python/<script>` printed, run against `dsn`.
fn run(env: &Env, script: &str, dsn: &str) -> Value {
    let dir = workspace_root().join("tests/drivers/python");
    let out = common::run_timed(
        Command::new("python3")
            .current_dir(&dir)
            .args([script, dsn]),
    );
    assert!(
        out.status.success(),
        "{script} against {dsn}: {}\n{}\n--- gateway log ---\n{}",
        common::stderr(&out),
        common::stdout(&out),
        env.gw.log_tail(30)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", common::stdout(&out)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn asyncpg_works_for_the_masked_agent(engine: Engine) {
    let env = Env::with_dataset(engine, QUICKSTART_MASK_POLICY, 50, 7);
    let direct = run(&env, "asyncpg_agent.py", &env.pg.direct_uri(common::DB));
    let through = run(&env, "asyncpg_agent.py", &env.uri());

    // Masked where a rule applies, and never a valid SSN.
    let (raw, masked) = (strings(&direct["ssns"]), strings(&through["ssns"]));
    assert!(
        raw.iter().all(|s| ssn_valid(s)),
        "the dataset's SSNs: {raw:?}"
    );
    assert!(masked.iter().all(|s| !ssn_valid(s)), "{masked:?}");
    // A binary text[] of computed values: each element scanned. asyncpg's fetchval runs
    // it with a row limit (the portal is suspended), and what was masked is logged with
    // it, not with the next statement that completes.
    assert_eq!(strings(&direct["ssn_array"]), ["485-58-2913", "note"]);
    assert_eq!(strings(&through["ssn_array"]), ["[REDACTED]", "note"]);
    let log = env.gw.log_tail(400);
    assert!(
        log.lines().any(|l| l.contains("statement masked")
            && l.contains("status=\"suspended\"")
            && l.contains("detector:ssn=1")),
        "{log}"
    );
    // COPY (query) as the query's own result: the same masked SSNs.
    let copied: Vec<String> = through["copy_from_query"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(copied, masked, "copy_from_query is masked as the SELECT is");
    // A table created in the open transaction reads masked, before and after COMMIT.
    for k in ["fresh_in_transaction", "fresh_after_commit"] {
        assert_eq!(direct[k], "4111 1111 1111 1111");
        assert_eq!(through[k], "**** **** **** 1111", "{k}");
    }
    // A composite built from an SSN: masked inside, or refused outright.
    match &through["composite_of_ssn"] {
        Value::String(e) => assert_eq!(e, "error 42501"),
        v => assert!(!ssn_valid(v[0].as_str().unwrap_or_default()), "{v}"),
    }

    // Everything else is what PostgreSQL itself gives the driver: arrays, enums,
    // composites and domains (the driver's introspection of them went through),
    // notifications carrying the session's own backend pid.
    for k in [
        "names_array",
        "enum",
        "enum_param",
        "enum_array",
        "composite",
        "composite_param",
        "domain",
        "range",
        "notification_pid_is_own",
        "notification_payload",
        "backend_pid_is_own",
        "terminate_own",
    ] {
        assert_eq!(
            through[k],
            direct[k],
            "{k}\n--- gateway log ---\n{}",
            env.gw.log_tail(20)
        );
    }
    assert_eq!(through["notification_pid_is_own"], true);
    // asyncpg reports the server's FATAL 57P01 as the connection gone (08003): the
    // session really ended, directly and through the gateway, and was not refused.
    assert_eq!(direct["terminate_own"], "error 08003");
}

fn psycopg_works_for_the_masked_agent(engine: Engine) {
    let env = Env::with_dataset(engine, QUICKSTART_MASK_POLICY, 50, 7);
    let direct = run(&env, "psycopg_agent.py", &env.pg.direct_uri(common::DB));
    let through = run(&env, "psycopg_agent.py", &env.uri());
    for k in ["fresh_in_transaction", "fresh_after_commit"] {
        assert_eq!(direct[k], "4111 1111 1111 1111");
        assert_eq!(through[k], "**** **** **** 1111", "{k}");
    }
    assert_eq!(
        through["fresh_binary_prepared"],
        serde_json::json!(["**** **** **** 1111"])
    );
    // COPY (query) gives the rows the SELECT gives, masked alike.
    assert_eq!(through["copy_rows"], through["select_rows"]);
    assert_ne!(through["copy_rows"], direct["copy_rows"]);
    for row in through["copy_rows"].as_array().unwrap() {
        assert!(!ssn_valid(row[1].as_str().unwrap()), "{row}");
    }
    assert_eq!(direct["copy_rows"], direct["select_rows"]);
}
