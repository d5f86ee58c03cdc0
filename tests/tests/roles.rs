//! Roles down to the database: the gateway logs in as a NOINHERIT login role with no
//! privileges of its own and `SET ROLE`s each session to the `[[role]]`'s upstream role,
//! so PostgreSQL's own privileges back the policy; every way for the agent to undo that
//! (SET/RESET ROLE, SESSION AUTHORIZATION, DISCARD ALL, set_config, start-up options,
//! through simple and extended protocol, PREPARE, COPY, DO) is refused.

mod common;

use common::{Env, psql_at, rt, run_timed, stderr, stdout};
use portcullis_tests::{Engine, Identity, PgOptions, per_engine, scram};

per_engine!(
    sessions_run_as_their_upstream_role,
    the_agent_cannot_change_its_role,
    a_role_the_login_cannot_become_refuses_the_session,
);

const LOGIN: &str = "gw_login";
const LOGIN_PASSWORD: &str = "gw-login-password-7f3a";

/// Whatever the roles allow, the policy allows: PostgreSQL's privileges are what the
/// tests see. Code the gateway cannot read (DO, CALL) stays refused, as the README says
/// a policy must when roles are used.
const POLICY: &str = r#"[policy]
default = "deny"
[[policy.rule]]
name = "rows"
class = ["read", "write", "txn", "session", "utility"]
action = "allow"
"#;

const ROLES: &str = r#"
[[role]]
name = "reader"
upstream_role = "app_read"
description = "reads the sample table"

[[role]]
name = "writer"
upstream_role = "app_write"

[[role]]
name = "watcher"
"#;

fn env(engine: Engine) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.upstream_user = LOGIN.into();
        o.upstream_password = LOGIN_PASSWORD.into();
        o.identities = vec![
            Identity::new("agent", "agent-secret", &["writer"]),
            Identity::new("reader", "reader-secret", &["reader"]),
            Identity::new("both", "both-secret", &["writer", "reader"]),
            Identity::new("watcher", "watcher-secret", &["watcher"]),
            Identity::new("ghost", "ghost-secret", &["ghost"]),
        ];
        o.policy(POLICY)
            .extra_toml(ROLES)
            .extra_toml("[[role]]\nname = \"ghost\"\nupstream_role = \"app_ghost\"\n")
    });
    let v = scram::verifier(LOGIN_PASSWORD);
    env.pg
        .psql(
            common::DB,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, name text);
                 INSERT INTO items VALUES (1, 'one');
                 CREATE ROLE app_read NOLOGIN;
                 CREATE ROLE app_write NOLOGIN;
                 CREATE ROLE app_ghost NOLOGIN;
                 GRANT SELECT ON items TO app_read;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON items TO app_write;
                 CREATE ROLE {LOGIN} LOGIN NOINHERIT PASSWORD '{v}';
                 GRANT app_read, app_write TO {LOGIN};"
            ),
        )
        .expect("roles");
    env
}

fn uri(env: &Env, who: &str) -> String {
    env.gw.uri(who, &format!("{who}-secret"), common::DB)
}

/// One statement through psql: Ok(stdout) or Err(stderr).
fn psql(env: &Env, who: &str, sql: &str) -> Result<String, String> {
    let out = run_timed(psql_at(&uri(env, who)).args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]));
    if out.status.success() {
        Ok(stdout(&out).trim().to_owned())
    } else {
        Err(stderr(&out))
    }
}

fn sessions_run_as_their_upstream_role(engine: Engine) {
    let env = env(engine);
    assert_eq!(
        psql(&env, "reader", "SELECT current_user").unwrap(),
        "app_read"
    );
    // The login role shows as session_user; that is the gateway's, not a way out.
    assert_eq!(psql(&env, "reader", "SELECT session_user").unwrap(), LOGIN);
    assert_eq!(
        psql(&env, "reader", "SELECT name FROM items").unwrap(),
        "one"
    );
    // The policy allows the write; PostgreSQL refuses it for the read-only role.
    let e = psql(&env, "reader", "INSERT INTO items VALUES (2, 'two')").unwrap_err();
    assert!(e.contains("permission denied for table items"), "{e}");
    assert!(
        !e.contains("portcullis"),
        "the server refused it, not the gateway: {e}"
    );

    assert_eq!(
        psql(&env, "agent", "SELECT current_user").unwrap(),
        "app_write"
    );
    psql(&env, "agent", "INSERT INTO items VALUES (2, 'two')").unwrap();
    // Several roles: the one listed last in the file wins.
    assert_eq!(
        psql(&env, "both", "SELECT current_user").unwrap(),
        "app_write"
    );
    // A role without upstream_role leaves the session as the login role, which has no
    // privileges of its own (NOINHERIT).
    assert_eq!(psql(&env, "watcher", "SELECT current_user").unwrap(), LOGIN);
    let e = psql(&env, "watcher", "SELECT name FROM items").unwrap_err();
    assert!(e.contains("permission denied for table items"), "{e}");
    // RESET ALL leaves the role alone (PostgreSQL's `role` is GUC_NO_RESET_ALL).
    let out = psql(&env, "reader", "RESET ALL; SELECT current_user").unwrap();
    assert_eq!(out.lines().last(), Some("app_read"), "{out}");

    // tokio-postgres, extended protocol: the same role.
    rt().block_on(async {
        let c = common::connect(&env.gw.conninfo("reader", "reader-secret", common::DB)).await;
        let row = c
            .query_one("SELECT current_user::text, $1::int", &[&7i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "app_read");
        let e = c
            .execute("UPDATE items SET name = $1 WHERE id = 1", &[&"x"])
            .await
            .unwrap_err();
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message().contains("permission denied"),
            "{}",
            db.message()
        );
    });
}

fn the_agent_cannot_change_its_role(engine: Engine) {
    let env = env(engine);
    let simple = [
        "SET ROLE app_write",
        "SET role app_write",
        "SET \"role\" = 'app_write'",
        "SET ROLE NONE",
        "RESET ROLE",
        "SET role TO DEFAULT",
        "BEGIN; SET LOCAL ROLE app_write; SELECT current_user; COMMIT",
        "SET SESSION AUTHORIZATION gw_login",
        "RESET SESSION AUTHORIZATION",
        "SET SESSION AUTHORIZATION DEFAULT",
        "DISCARD ALL",
        "SELECT set_config('role', 'app_write', false)",
        "SELECT pg_catalog.set_config('ROLE', 'app_write', true)",
        "SELECT set_config('ro' || 'le', 'app_write', false)",
        "SELECT set_config('role'::text, 'app_write', false)",
        "SELECT set_config('session_authorization', 'gw_login', false)",
        "PREPARE become AS SELECT set_config('role', 'app_write', false)",
        "COPY (SELECT set_config('role', 'app_write', false)) TO STDOUT",
        "SELECT 1; SET ROLE app_write",
        "DO $$ BEGIN SET ROLE app_write; END $$",
        "DO $$ BEGIN PERFORM set_config('role', 'app_write', false); END $$",
    ];
    for sql in simple {
        let e = psql(&env, "reader", sql).unwrap_err();
        assert!(e.contains("portcullis refused"), "{sql}: {e}");
        assert_eq!(
            psql(&env, "reader", "SELECT current_user").unwrap(),
            "app_read",
            "after {sql}"
        );
    }
    let e = psql(&env, "reader", "SET ROLE app_write").unwrap_err();
    assert!(
        e.contains("the gateway decides the session's database role"),
        "{e}"
    );

    rt().block_on(async {
        let c = common::connect(&env.gw.conninfo("reader", "reader-secret", common::DB)).await;
        // The setting's name bound as a parameter: the gateway cannot know it is not role.
        let e = c
            .query_one("SELECT set_config($1, $2, false)", &[&"role", &"app_write"])
            .await
            .unwrap_err();
        let db = e.as_db_error().expect("refused by the gateway");
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message().starts_with("portcullis refused"),
            "{}",
            db.message()
        );
        let e = c.prepare("SET ROLE app_write").await.unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
        // A prepared statement prepared with SQL that would switch role cannot exist, and
        // one that does not exist cannot be executed into one.
        assert!(c.batch_execute("EXECUTE become").await.is_err());
        let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "app_read");
    });

    // Start-up parameters are settings too: refused before the server sees them.
    for options in [
        "-c role=app_write",
        "-c session_authorization=gw_login",
        "--role=app_write",
    ] {
        let out = run_timed(
            psql_at(&uri(&env, "reader"))
                .env("PGOPTIONS", options)
                .args(["-At", "-c", "SELECT current_user"]),
        );
        assert!(!out.status.success(), "{options}: {}", stdout(&out));
        let e = stderr(&out);
        assert!(
            e.contains("portcullis refused the start-up parameter \"options\""),
            "{options}: {e}"
        );
    }
}

fn a_role_the_login_cannot_become_refuses_the_session(engine: Engine) {
    let env = env(engine);
    // gw_login is not a member of app_ghost: the session is refused with the server's
    // reason and a hint, before the agent could run anything as the login role.
    let e = psql(&env, "ghost", "SELECT current_user").unwrap_err();
    assert!(
        e.contains("the gateway could not switch this session to its database role \"app_ghost\""),
        "{e}"
    );
    assert!(e.contains("permission denied to set role"), "{e}");
    rt().block_on(async {
        let r = tokio_postgres::connect(
            &env.gw.conninfo("ghost", "ghost-secret", common::DB),
            tokio_postgres::NoTls,
        )
        .await;
        let e = r.err().expect("refused");
        let db = e.as_db_error().expect("a FATAL from the gateway");
        assert_eq!(db.code().code(), "42501");
        assert_eq!(db.severity(), "FATAL");
    });
    assert_eq!(
        psql(&env, "reader", "SELECT current_user").unwrap(),
        "app_read"
    );
}
