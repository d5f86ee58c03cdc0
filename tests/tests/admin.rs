//! Reloading a running gateway through its admin socket with the real `portcullis reload`:
//! an accepted file takes effect by the time the command returns, a refused one fails the
//! command with the reason and leaves the running configuration serving.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{DB, Env, portcullis, psql_at, rt, run_timed, stderr, stdout};
use portcullis_tests::{Engine, PgOptions, per_engine, scram};

/// `portcullis <command> --config <config>`.
fn admin(command: &str, config: &Path) -> Output {
    run_timed(portcullis(&[command, "--config"]).arg(config))
}

fn start(engine: Engine) -> Env {
    Env::start_with(engine, PgOptions::default(), |o| o.admin_socket())
}

/// psql as `identity`; `Err(stderr)` when the session could not be opened or failed.
fn psql_as(env: &Env, identity: &str, secret: &str, sql: &str) -> Result<String, String> {
    let out = run_timed(psql_at(&env.gw.uri(identity, secret, DB)).args(["-At", "-c", sql]));
    if out.status.success() {
        Ok(stdout(&out).trim().to_owned())
    } else {
        Err(stderr(&out))
    }
}

const NAME_QUERY: &str = "SELECT full_name FROM people WHERE id = 1";

fn reload_through_the_admin_socket(engine: Engine) {
    let env = start(engine);
    let socket = env.gw.admin_socket().expect("admin socket configured");
    let meta = std::fs::symlink_metadata(socket).expect("the admin socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the admin socket is not owner-only"
    );
    env.query_gw("CREATE TABLE people (id int, full_name text); INSERT INTO people VALUES (1, 'Ada Lovelace')");

    // A session opened before the reload, kept across it.
    let rt = rt();
    let client = rt.block_on(common::connect(&env.conninfo()));
    let name = |client: &tokio_postgres::Client| -> String {
        rt.block_on(client.query_one(NAME_QUERY, &[]))
            .expect("query in the long session")
            .get(0)
    };
    assert_eq!(name(&client), "Ada Lovelace");
    assert!(psql_as(&env, "analyst", "analyst-secret", "SELECT 1").is_err());

    let config = env.gw.config_path();
    let original = std::fs::read_to_string(&config).unwrap();
    let analyst_verifier = scram::verifier("analyst-secret");
    let analyst = format!(
        "\n[[identity]]\nname = \"analyst\"\nsecret = \"{analyst_verifier}\"\nroles = [\"analyst\"]\n"
    );
    let rule = "\n[[mask.rule]]\nname = \"names\"\ncolumn = \"public.people.full_name\"\nstrategy = \"redact\"\ntext = \"[MASKED]\"\n";
    let good = format!("{original}{analyst}{rule}");
    std::fs::write(&config, &good).unwrap();

    let out = admin("reload", &config);
    assert!(
        out.status.success(),
        "reload failed: {}\n{}",
        stderr(&out),
        env.gw.log_tail(20)
    );
    assert!(
        stdout(&out).starts_with("ok: reloaded 3 identities, 1 masking rule, 0 policy rules from "),
        "{}",
        stdout(&out)
    );
    // In effect once the command returns: no waiting, unlike SIGHUP.
    assert_eq!(
        psql_as(&env, "analyst", "analyst-secret", NAME_QUERY).as_deref(),
        Ok("[MASKED]")
    );
    assert_eq!(
        name(&client),
        "[MASKED]",
        "the open session kept the old rules"
    );

    let out = admin("status", &config);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&out);
    for want in [
        format!(" engine={engine} "),
        " identities=3 mask_rules=1 ".into(),
        " last_reload=ok last_reload_by=admin ".into(),
    ] {
        assert!(status.contains(&want), "{want:?} not in {status}");
    }
    assert!(status.contains(" sessions="), "{status}");

    // Refused files: an unknown key (a TOML error, with its line) and a bad value (a
    // validation error, with the key's path).
    let mallory = format!(
        "\n[[identity]]\nname = \"mallory\"\nsecret = \"{}\"\nrole = [\"agent\"]\n",
        scram::verifier("mallory-secret")
    );
    let bad_line = good.lines().count() + 5;
    let broken = [
        (
            format!("{good}{mallory}"),
            format!("line {bad_line}, column 1: unknown field `role`"),
        ),
        (
            good.replacen(&analyst_verifier, "plain-text", 1),
            "identity[2].secret:".to_owned(),
        ),
    ];
    for (text, reason) in &broken {
        std::fs::write(&config, text).unwrap();
        let out = admin("reload", &config);
        assert_eq!(out.status.code(), Some(1), "a broken file was accepted");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: reload refused, the running configuration is kept: "),
            "{err}"
        );
        assert!(err.contains(reason.as_str()), "{reason:?} not in {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(stdout(&out).is_empty());
        // The previous configuration still serves, untouched by the refused file.
        assert_eq!(
            psql_as(&env, "analyst", "analyst-secret", NAME_QUERY).as_deref(),
            Ok("[MASKED]")
        );
        assert!(psql_as(&env, "mallory", "mallory-secret", "SELECT 1").is_err());
        assert_eq!(name(&client), "[MASKED]");
    }

    // SIGHUP goes through the same reload, and `status` is where its verdict shows.
    env.gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = stdout(&admin("status", &config));
        if status.contains("last_reload_by=sighup") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.contains(" last_reload=refused last_reload_by=sighup "),
        "{status}"
    );
    assert!(status.contains("identity[2].secret"), "{status}");
    assert_eq!(name(&client), "[MASKED]");
}

per_engine!(reload_through_the_admin_socket);

/// One admin socket, one gateway: a second is refused at start, a stale file from a dead
/// one is replaced, and a clean shutdown removes the socket. Not data-path: one engine.
#[test]
fn admin_socket_is_exclusive_and_cleaned_up() {
    let mut env = start(Engine::Epoll);
    let config = env.gw.config_path();
    let socket = env.gw.admin_socket().unwrap().to_owned();

    let serve_again = || {
        let mut c = portcullis(&["serve", "--config"]);
        c.arg(&config).args(["--listen", "127.0.0.1:0"]);
        c
    };
    let out = run_timed(&mut serve_again());
    assert!(
        !out.status.success(),
        "a second gateway took the admin socket"
    );
    let err = stderr(&out);
    assert!(
        err.contains("admin.socket: ") && err.contains("is in use by a running gateway"),
        "{err}"
    );
    assert!(admin("status", &config).status.success());

    env.gw.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.gw.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!env.gw.is_alive(), "the gateway ignored SIGTERM");
    assert!(
        !socket.exists(),
        "the admin socket outlived a clean shutdown"
    );
    let out = admin("reload", &config);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is the gateway running? admin socket ") && err.contains(" not found"),
        "{err}"
    );

    // What a killed gateway leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = stderr(&admin("status", &config));
    assert!(err.contains("nothing listens on admin socket"), "{err}");
    let mut second = serve_again()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a gateway over the stale socket");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let out = admin("status", &config);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(second.id() as i32, libc::SIGTERM);
    }
    let _ = second.wait();
    assert!(
        answered.status.success(),
        "no gateway over the stale socket: {}",
        stderr(&answered)
    );
    assert!(!socket.exists());
}

#[test]
fn reload_without_an_admin_socket_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        run_timed(portcullis(&["reload", "--admin-socket"]).arg(dir.path().join("admin.sock")));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is the gateway running? admin socket "),
        "{err}"
    );

    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:6432\"\n").unwrap();
    let out = admin("reload", &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no [admin] socket"),
        "{}",
        stderr(&out)
    );
}
