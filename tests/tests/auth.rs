//! Client authentication at the gateway: SCRAM with the identity's secret, the same 28P01
//! answer for a wrong secret and for an identity that does not exist (so the gateway does
//! not reveal which names exist), and the CLI helpers that produce the config's verifiers.

mod common;

use common::{Env, stdout};
use portcullis_tests::{Engine, per_engine};
use tokio_postgres::error::SqlState;

per_engine!(
    agent_and_auditor_log_in,
    wrong_secret_is_28p01,
    unknown_identity_looks_like_wrong_secret,
    upstream_user_is_the_gateways,
);

fn agent_and_auditor_log_in(engine: Engine) {
    let env = Env::start(engine);
    for (who, secret) in [("agent", "agent-secret"), ("auditor", "auditor-secret")] {
        let out = env.ok(common::psql_at(&env.gw.uri(who, secret, common::DB)).args([
            "-At",
            "-c",
            "SELECT 'in'",
        ]));
        assert_eq!(stdout(&out).trim(), "in", "{who}");
    }
}

async fn login_error(conninfo: &str) -> tokio_postgres::Error {
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls),
    )
    .await
    .expect("the gateway answered a failed login within 15s");
    match r {
        Ok(_) => panic!("login unexpectedly succeeded: {conninfo}"),
        Err(e) => e,
    }
}

fn wrong_secret_is_28p01(engine: Engine) {
    let env = Env::start(engine);
    common::rt().block_on(async {
        let e = login_error(&env.gw.conninfo("agent", "not-the-secret", common::DB)).await;
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e}"));
        assert_eq!(db.code(), &SqlState::INVALID_PASSWORD, "{db:?}");
        // The secret the client sent never shows up in the answer.
        assert!(!db.message().contains("not-the-secret"));
    });
    // psql's view: exit code 2, nothing on stdout.
    let out = common::run_timed(
        common::psql_at(&env.gw.uri("agent", "wrong", common::DB)).args(["-c", "SELECT 1"]),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

fn unknown_identity_looks_like_wrong_secret(engine: Engine) {
    let env = Env::start(engine);
    common::rt().block_on(async {
        let wrong = login_error(&env.gw.conninfo("agent", "nope", common::DB)).await;
        let unknown = login_error(&env.gw.conninfo("mallory", "nope", common::DB)).await;
        let (w, u) = (wrong.as_db_error().unwrap(), unknown.as_db_error().unwrap());
        assert_eq!(u.code(), &SqlState::INVALID_PASSWORD, "{u:?}");
        // Same message modulo the name the client itself supplied.
        assert_eq!(
            w.message().replace("agent", "<name>"),
            u.message().replace("mallory", "<name>"),
            "unknown identity is distinguishable from a wrong secret"
        );
    });
}

fn upstream_user_is_the_gateways(engine: Engine) {
    let env = Env::start(engine);
    let out = env.query_gw("SELECT current_user, session_user, current_database()");
    assert_eq!(
        out.trim(),
        format!(
            "{}|{}|{}",
            env.pg.upstream_user,
            env.pg.upstream_user,
            common::DB
        )
    );
    // The agent's startup database is the one it gets upstream.
    env.pg.create_database("other").unwrap();
    let out = env.ok(
        common::psql_at(&env.gw.uri("agent", "agent-secret", "other")).args([
            "-At",
            "-c",
            "SELECT current_database()",
        ]),
    );
    assert_eq!(stdout(&out).trim(), "other");
}

/// `portcullis hash-secret` prints a verifier PostgreSQL itself accepts as a password.
#[test]
fn hash_secret_output_is_a_postgres_verifier() {
    let bin = portcullis_tests::gateway::binary().expect("portcullis binary");
    let out = std::process::Command::new(&bin)
        .args(["hash-secret", "hunter2-long-secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = stdout(&out).trim().to_string();
    assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
    let pg = portcullis_tests::PgCluster::start(Default::default()).unwrap();
    pg.psql("postgres", &format!("CREATE ROLE h LOGIN PASSWORD '{v}'"))
        .unwrap();
    let uri = format!(
        "postgresql://h:hunter2-long-secret@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let out = common::run_timed(common::psql_at(&uri).args(["-At", "-c", "SELECT 'ok'"]));
    assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
}

/// `check-config` accepts what the harness generates and rejects a config with no upstream.
#[test]
fn check_config_accepts_good_and_rejects_bad() {
    let bin = portcullis_tests::gateway::binary().expect("portcullis binary");
    let pg = portcullis_tests::PgCluster::start(Default::default()).unwrap();
    let opts = portcullis_tests::GatewayOptions::new(&pg, "postgres");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, opts.to_toml("127.0.0.1:6432".parse().unwrap())).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"not an address\"\n").unwrap();
    let out = std::process::Command::new(&bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "bad config accepted: {out:?}");
}
