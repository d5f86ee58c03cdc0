//! TLS on both legs, on both engines: agents reach the gateway over TLS (and are refused
//! in plaintext when the config requires it), and the gateway reaches PostgreSQL over TLS
//! with the server's certificate checked against a CA. Certificates come from `openssl`.

mod common;

use std::path::Path;

use common::{DB, Env, psql_at, run_timed, stderr, stdout};
use portcullis_tests::{Certs, Engine, Gateway, GatewayOptions, PgOptions, per_engine};

fn with_tls(uri: &str, params: &str) -> String {
    format!("{uri}?{params}")
}

fn agents_over_tls(engine: Engine) {
    let certs = Certs::new();
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.tls = Some((cert, key));
        o.tls_required = true;
        o
    });
    let ca = certs.path("ca.pem");
    // verify-full: the client checks the gateway's certificate and name.
    let uri = env.uri().replace("@127.0.0.1:", "@localhost:");
    let uri = with_tls(
        &uri,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let out = env.ok(psql_at(&uri).args(["-At", "-c", "SELECT 'over tls'"]));
    assert_eq!(stdout(&out).trim(), "over tls");
    // Plaintext is refused with a reason.
    let out = run_timed(psql_at(&with_tls(&env.uri(), "sslmode=disable")).args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
}

fn upstream_over_verified_tls(engine: Engine) {
    let certs = Certs::new();
    let pg_opts = PgOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", certs.path("server.pem").display()),
            format!("ssl_key_file = '{}'", certs.path("server.key").display()),
        ],
        ..PgOptions::default()
    };
    let ca = certs.path("ca.pem");
    let env = Env::start_with(engine, pg_opts, |mut o| {
        o.upstream_tls = vec![
            "tls = \"verify-full\"".into(),
            format!("ca = \"{}\"", ca.display()),
            "tls_server_name = \"localhost\"".into(),
        ];
        o
    });
    // The server itself reports the gateway's connection as encrypted.
    let out = env.query_gw("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert_eq!(out.trim(), "t");
    // A 16 MB result crosses the TLS leg intact, long enough for the server socket's reads to
    // go to batches ([server] read_batch_bytes) under the TLS records, and the same session's
    // next answer still arrives.
    let sql = "SELECT g, repeat(md5(g::text), 250) FROM generate_series(1, 2000) g";
    let args = ["-At", "-c", sql, "-c", "SELECT 'after'"];
    let through = env.ok(env.psql_gw().args(args));
    let direct = env.ok(env.psql_direct().args(args));
    assert_eq!(through.stdout.len(), direct.stdout.len());
    assert!(
        through.stdout == direct.stdout,
        "the result differs over TLS"
    );
    assert!(stdout(&through).ends_with("after\n"));
}

fn upstream_with_an_untrusted_certificate_is_refused(engine: Engine) {
    let certs = Certs::new();
    let other = Certs::new();
    let pg_opts = PgOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", certs.path("server.pem").display()),
            format!("ssl_key_file = '{}'", certs.path("server.key").display()),
        ],
        ..PgOptions::default()
    };
    let wrong_ca: &Path = &other.path("ca.pem");
    let env = Env::start_with(engine, pg_opts, |mut o| {
        o.upstream_tls = vec![
            "tls = \"verify-full\"".into(),
            format!("ca = \"{}\"", wrong_ca.display()),
            "tls_server_name = \"localhost\"".into(),
        ];
        o
    });
    let out = run_timed(env.psql_gw().args(["-c", "SELECT 1"]));
    assert!(
        !out.status.success(),
        "a server with an unknown CA was trusted"
    );
    assert!(
        stderr(&out).contains("could not open a session"),
        "{}",
        stderr(&out)
    );
    let _ = DB;
}

/// PostgreSQL requiring the gateway's certificate (`hostssl ... clientcert=verify-full`, CN =
/// the upstream user, the only TCP rule): the gateway with `upstream.client_cert` and
/// `client_key` gets in and the server names its certificate; the same gateway without
/// them is refused.
fn upstream_client_certificate_meets_clientcert_verify_full(engine: Engine) {
    let certs = Certs::new();
    let pg_opts = PgOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", certs.path("server.pem").display()),
            format!("ssl_key_file = '{}'", certs.path("server.key").display()),
            format!("ssl_ca_file = '{}'", certs.path("ca.pem").display()),
        ],
        ..PgOptions::default()
    };
    let ca = certs.path("ca.pem");
    let verify_full = |o: &mut GatewayOptions| {
        o.upstream_tls = vec![
            "tls = \"verify-full\"".into(),
            format!("ca = \"{}\"", ca.display()),
            "tls_server_name = \"localhost\"".into(),
        ];
    };
    let mut env = Env::start_with(engine, pg_opts, |mut o| {
        verify_full(&mut o);
        o.upstream_tls.push(format!(
            "client_cert = \"{}\"",
            certs.path("client.pem").display()
        ));
        o.upstream_tls.push(format!(
            "client_key = \"{}\"",
            certs.path("client.key").display()
        ));
        o
    });
    std::fs::write(
        env.pg.data_dir().join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
         hostssl all all ::1/128 scram-sha-256 clientcert=verify-full\n",
    )
    .unwrap();
    // A restart, not a reload: the next connection must see the new rules for certain.
    env.pg
        .restart()
        .expect("restart PostgreSQL with the new pg_hba.conf");
    let out = env.query_gw("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert_eq!(
        out.trim(),
        format!("t|/CN={}", portcullis_tests::pg::UPSTREAM_USER)
    );

    let mut opts = GatewayOptions::new(&env.pg, DB).engine(engine);
    verify_full(&mut opts);
    let bare = Gateway::start(opts).expect("start a gateway without a client certificate");
    let out = run_timed(psql_at(&bare.agent_uri()).args(["-c", "SELECT 1"]));
    assert!(
        !out.status.success(),
        "PostgreSQL let in a gateway without a client certificate"
    );
    assert!(
        stderr(&out).contains("could not open a session"),
        "{}",
        stderr(&out)
    );
}

per_engine!(tls_clients_read_the_drains_refusal_over_tls);
per_engine!(upstream_client_certificate_meets_clientcert_verify_full);
per_engine!(
    agents_over_tls,
    upstream_over_verified_tls,
    upstream_with_an_untrusted_certificate_is_refused,
);

/// During the drain a TLS client is refused as PostgreSQL refuses it, over TLS: the
/// handshake completes and `sslmode=verify-full` psql reads 57P03, not a TLS failure.
fn tls_clients_read_the_drains_refusal_over_tls(engine: Engine) {
    let certs = Certs::new();
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let env = Env::start_with(engine, PgOptions::default(), |mut o| {
        o.tls = Some((cert, key));
        o.tls_required = true;
        o.server_line("shutdown_grace_secs = 60")
    });
    let uri = env.uri().replace("@127.0.0.1:", "@localhost:");
    let uri = with_tls(
        &uri,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            certs.path("ca.pem").display()
        ),
    );
    // An open session keeps the gateway draining.
    let mut open = psql_at(&uri)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start psql");
    {
        use std::io::{BufRead, Write};
        let stdin = open.stdin.as_mut().unwrap();
        stdin
            .write_all(b"\\pset tuples_only on\nSELECT 'open';\n")
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(open.stdout.take().unwrap());
        while !line.contains("open") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended");
        }
    }
    env.gw.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = run_timed(psql_at(&uri).args(["-At", "-c", "SELECT 1"]));
        let err = stderr(&out);
        if err.contains("FATAL:  the database system is shutting down") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 57P03 over TLS: {err}\n{}",
            env.gw.log_tail(20)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    env.gw.signal(libc::SIGINT);
    drop(open.stdin.take());
    let _ = open.wait();
}
