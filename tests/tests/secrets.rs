//! The gateway's upstream credential from a secret store: a password file that is rotated
//! and a `password_command` whose output changes are picked up by the next session without
//! a restart; a credential the gateway cannot obtain refuses the agent with 08006 and the
//! log says why; neither the old nor the new password ever appears in the gateway's log,
//! human or JSON, even at debug level.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Env, rt};
use portcullis_tests::{Engine, PgOptions, per_engine, scram};
use rand::Rng;

per_engine!(
    a_rotated_password_file_is_used_by_the_next_session,
    a_refused_login_runs_the_password_command_again,
    the_password_command_runs_again_on_its_interval,
);

/// The upstream login role these tests rotate.
/// These tests are about each upstream login: reuse would hand the first session's
/// connection (logged in with the old credential) to the next, as PostgreSQL keeps a
/// session open when its role's password changes.
const EVERY_SESSION_LOGS_IN: &str = "[pool]\nenabled = false\n";

const ROLE: &str = "rotating_login";

fn fresh_password(tag: &str) -> String {
    let s: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("{tag}-{s}")
}

/// Sets the role's password (sent already hashed, so the server's log never has it).
fn set_password(env: &Env, password: &str) {
    let v = scram::verifier(password);
    env.pg
        .psql(
            "postgres",
            &format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                     CREATE ROLE {ROLE} LOGIN;
                   END IF;
                 END $$;
                 ALTER ROLE {ROLE} PASSWORD '{v}';"
            ),
        )
        .expect("set the login role's password");
}

/// Replaces the file the way kubelet and systemd do: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `SELECT current_user` through the gateway as the agent, or the error's SQLSTATE,
/// message and hint.
fn whoami(env: &Env) -> Result<String, (String, String, String)> {
    rt().block_on(async {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_postgres::connect(&env.conninfo(), tokio_postgres::NoTls),
        )
        .await
        .expect("the gateway answered within 30s")
        .map_err(|e| {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not a database error: {e:?}"));
            (
                db.code().code().to_owned(),
                db.message().to_owned(),
                db.hint().unwrap_or_default().to_owned(),
            )
        })?;
        tokio::spawn(conn);
        let row = client.query_one("SELECT current_user::text", &[]).await;
        Ok(row.expect("query").get::<_, String>(0))
    })
}

fn assert_absent(env: &Env, secrets: &[&str]) {
    let log = env.gw.log();
    assert!(!log.is_empty());
    for s in secrets {
        assert!(
            !log.contains(s),
            "the gateway's log holds a password:\n{log}"
        );
    }
}

/// Waits (bounded) until the gateway's log has `needle`.
fn wait_for_log(env: &Env, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.gw.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the gateway's log:\n{}",
            env.gw.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_rotated_password_file_is_used_by_the_next_session(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream-password");
    let (old, new) = (fresh_password("old"), fresh_password("new"));
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let line = format!("password_file = {:?}", file.display().to_string());
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.upstream_user = ROLE.into();
        o.log_level = "debug".into();
        o.upstream_credential(&[&line])
            .extra_toml(EVERY_SESSION_LOGS_IN)
    });
    set_password(&env, &old);
    assert_eq!(whoami(&env).unwrap(), ROLE);

    // The database's password changes first: the file still has the old one, so the
    // session is refused, without a word of the credential, and the agent is told whom
    // to ask.
    set_password(&env, &new);
    let (code, message, hint) = whoami(&env).unwrap_err();
    assert_eq!(code, "08006", "{message}");
    assert_eq!(
        message,
        "the gateway could not open a session on the database"
    );
    assert!(hint.contains("operator"), "{hint}");

    // The secret store catches up: the next session works, no restart.
    replace(&file, &format!("{new}\n"));
    assert_eq!(whoami(&env).unwrap(), ROLE);
    assert!(
        env.gw
            .log()
            .contains("changed; new logins use its new value"),
        "{}",
        env.gw.log_tail(20)
    );

    // A file the gateway cannot read: refused the same way; the log says why.
    std::fs::remove_file(&file).unwrap();
    let (code, _, _) = whoami(&env).unwrap_err();
    assert_eq!(code, "08006");
    assert!(
        env.gw.log().contains("upstream.password_file: cannot read"),
        "{}",
        env.gw.log_tail(20)
    );
    replace(&file, &new);
    assert_eq!(whoami(&env).unwrap(), ROLE);
    assert_absent(&env, &[&old, &new]);
}

/// A script that prints the content of `value` (what a Vault or cloud CLI would fetch).
fn credential_script(dir: &Path, value: &Path) -> String {
    let script = dir.join("fetch-db-password");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec cat '{}'\n", value.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn a_refused_login_runs_the_password_command_again(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("value");
    let (old, new) = (fresh_password("old"), fresh_password("new"));
    std::fs::write(&value, format!("{old}\n")).unwrap();
    let script = credential_script(dir.path(), &value);
    // An hour: within the test only a refused login makes it run again.
    let lines = [
        format!("password_command = [{script:?}]"),
        "password_command_refresh_secs = 3600".to_string(),
    ];
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.upstream_user = ROLE.into();
        o.log_level = "debug".into();
        o.log_format = "json".into();
        o.upstream_credential(&[&lines[0], &lines[1]])
            .extra_toml(EVERY_SESSION_LOGS_IN)
    });
    set_password(&env, &old);
    assert_eq!(whoami(&env).unwrap(), ROLE);

    set_password(&env, &new);
    std::fs::write(&value, format!("{new}\n")).unwrap();
    assert_eq!(whoami(&env).unwrap(), ROLE);
    let log = env.gw.log();
    assert!(
        log.contains("trying again with the fresh value from upstream.password_command"),
        "{log}"
    );
    // The JSON log is JSON throughout, and has neither password.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert_absent(&env, &[&old, &new]);
}

fn the_password_command_runs_again_on_its_interval(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("value");
    let (old, new) = (fresh_password("old"), fresh_password("new"));
    std::fs::write(&value, &old).unwrap();
    let script = credential_script(dir.path(), &value);
    let lines = [
        format!("password_command = [{script:?}]"),
        "password_command_refresh_secs = 1".to_string(),
    ];
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.upstream_user = ROLE.into();
        o.upstream_credential(&[&lines[0], &lines[1]])
            .extra_toml(EVERY_SESSION_LOGS_IN)
    });
    set_password(&env, &old);
    assert_eq!(whoami(&env).unwrap(), ROLE);

    // The new value is fetched on the interval, before any login needs it ...
    std::fs::write(&value, &new).unwrap();
    wait_for_log(&env, "upstream.password_command gave a new value");
    set_password(&env, &new);
    // ... so the next session logs in at the first try.
    assert_eq!(whoami(&env).unwrap(), ROLE);
    assert!(
        !env.gw.log().contains("trying again"),
        "{}",
        env.gw.log_tail(20)
    );
    assert_absent(&env, &[&old, &new]);
}
