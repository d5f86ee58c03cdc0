//! Stopping the gateway as PostgreSQL stops: SIGTERM refuses new connections with
//! FATAL 57P03 at once while open sessions go on; at the end of the grace period the
//! sessions still open get FATAL 57P01 (psql and tokio-postgres show it), what they were
//! running on the server is cancelled, and their `session_end` records are in the audit
//! log before the process exits. SIGINT, or a second SIGTERM, cuts at once.
//!
//! The drain's timings (signal to the last session closed, to the listener closed) are
//! printed; run with `--no-capture` to see them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{DB, Env, connect, psql_at, rt, run_timed, stderr};
use portcullis_auditlog::segment::{Item, Reader};
use portcullis_tests::{Engine, PgOptions, per_engine};
use serde_json::Value;

per_engine!(
    the_drain_refuses_newcomers_and_tells_the_sessions_it_ends,
    sigint_and_a_second_sigterm_cut_at_once
);

const GRACE_SECS: u64 = 3;

/// A start-up packet to the gateway over raw TCP; returns the SQLSTATE and message of
/// the ErrorResponse it answers with, and how long that took from the connect; `None`
/// when it asked for authentication instead.
fn refused_startup(env: &Env) -> Option<(String, String, Duration)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(env.gw.addr).expect("connect during the drain");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "agent"), ("database", DB)],
        &mut out,
    )
    .unwrap();
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read the answer");
        assert!(n > 0, "closed without an answer ({} bytes)", buf.len());
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
            if buf.len() >= len {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    if buf[0] == b'R' {
        // Accepted before the gateway took the signal in: authentication goes on.
        return None;
    }
    assert_eq!(buf[0], b'E', "not an ErrorResponse: {buf:?}");
    let mut fields = std::collections::HashMap::new();
    for f in buf[5..].split(|b| *b == 0).filter(|f| !f.is_empty()) {
        fields.insert(f[0], String::from_utf8_lossy(&f[1..]).into_owned());
    }
    assert_eq!(fields.get(&b'S').map(String::as_str), Some("FATAL"));
    Some((fields[&b'C'].clone(), fields[&b'M'].clone(), elapsed))
}

/// [`refused_startup`] until the gateway refuses (a signal takes effect a moment after
/// it is sent); the refusal and how long after `signalled` it came.
fn refused_after(env: &Env, signalled: Instant) -> (String, String, Duration) {
    loop {
        if let Some((code, message, _)) = refused_startup(env) {
            return (code, message, signalled.elapsed());
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "still authenticating newcomers 5s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An interactive psql through the gateway, fed on its standard input.
fn psql_interactive(env: &Env) -> Child {
    psql_at(&env.uri())
        .args(["-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql")
}

/// Every record in the gateway's audit log, in order.
fn records(env: &Env) -> Vec<Value> {
    Reader::open(&env.gw.audit_dir(), 0)
        .expect("open the audit log")
        .map(|i| match i.expect("read the audit log") {
            Item::Record { bytes, .. } => serde_json::from_slice(&bytes).expect("a JSON record"),
            other => panic!("the log is not whole: {other:?}"),
        })
        .collect()
}

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or_default()
}

/// Waits until nothing accepts on the gateway's port; returns when.
fn wait_listener_closed(env: &Env, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&env.gw.addr, Duration::from_millis(200)).is_err() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the listener never closed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn the_drain_refuses_newcomers_and_tells_the_sessions_it_ends(engine: Engine) {
    let mut env = Env::start_with(engine, PgOptions::default(), |o| {
        o.server_line(&format!("shutdown_grace_secs = {GRACE_SECS}"))
            .audit("")
    });
    // Threads of its own: the sessions' connections are driven while this one waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let conninfo = env.conninfo();
    let mut psql = psql_interactive(&env);
    psql.stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 'psql is in';\n")
        .unwrap();

    let (idle, idle_conn) = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(15),
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
        )
        .await
        .expect("connect")
        .expect("connect")
    });
    let idle_end = rt.spawn(idle_conn);
    let busy = rt.block_on(connect(&conninfo));
    let sleeping = rt.spawn(async move {
        let r = busy.simple_query("SELECT pg_sleep(600)").await;
        (r, Instant::now())
    });
    // The busy session's statement is running on the server before the signal, and psql
    // has run its first one (on a loaded machine its start-up could still be under way,
    // and the drain would rightly refuse it).
    let deadline = Instant::now() + Duration::from_secs(20);
    while env
        .pg
        .psql(
            DB,
            "SELECT count(*) FILTER (WHERE query = 'SELECT pg_sleep(600)') \
                 || ',' || count(*) FILTER (WHERE query = 'SELECT ''psql is in'';') \
             FROM pg_stat_activity",
        )
        .unwrap()
        .trim()
        != "1,1"
    {
        assert!(
            Instant::now() < deadline,
            "pg_sleep never started, or psql never ran its first statement"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let signalled = Instant::now();
    env.gw.signal(libc::SIGTERM);

    // Newcomers are refused at once, as PostgreSQL refuses them during shutdown.
    let (code, message, after) = refused_after(&env, signalled);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("57P03", "the database system is shutting down")
    );
    let (_, _, took) = refused_startup(&env).expect("refused during the drain");
    println!(
        "{engine}: connections refused with 57P03 from {after:?} after SIGTERM; one took {took:?} from connect to refusal"
    );
    assert!(
        took < Duration::from_millis(500) && after < Duration::from_secs(1),
        "refused {took:?} after connecting, {after:?} into a {GRACE_SECS}s grace period"
    );
    let out = run_timed(psql_at(&env.uri()).args(["-c", "SELECT 1"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the database system is shutting down"),
        "{}",
        stderr(&out)
    );
    // Open sessions go on meanwhile.
    let answer = rt.block_on(idle.simple_query("SELECT 'still here'"));
    assert!(answer.is_ok(), "{answer:?}");

    // At the end of the grace period: 57P01, to the busy session and the idle one.
    let (result, busy_closed) = rt.block_on(sleeping).unwrap();
    let e = result.expect_err("pg_sleep(600) completed");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert_eq!(
        db.message(),
        "terminating connection due to administrator command"
    );
    assert_eq!(db.severity(), "FATAL");
    let since = busy_closed - signalled;
    assert!(
        since >= Duration::from_secs(GRACE_SECS) - Duration::from_millis(200),
        "cut after {since:?}, before the grace period ended"
    );
    let e = rt
        .block_on(idle_end)
        .unwrap()
        .expect_err("the idle connection ended without an error");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57P01"),
        "{e:?}"
    );
    let last_session = Instant::now();
    // psql shows it at its next statement, as it does for PostgreSQL's own.
    {
        let mut stdin = psql.stdin.take().unwrap();
        let _ = stdin.write_all(b"SELECT 'after';\n");
    }
    let out = psql.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("FATAL:  terminating connection due to administrator command"),
        "psql printed: {err}\n{}",
        env.gw.log_tail(20)
    );

    let closed = wait_listener_closed(&env, Duration::from_secs(20));
    println!(
        "{engine}: drain with a {GRACE_SECS}s grace period: signal to last session closed {:?}, to listener closed {:?}",
        last_session - signalled,
        closed - signalled
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.gw.is_alive() {
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The statement was cancelled on the server, not left running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env
        .pg
        .psql(
            DB,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)' AND state = 'active'",
        )
        .unwrap()
        .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "pg_sleep still runs upstream");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Evidence: every cut session ended in the log, before the gateway's last record.
    let all = records(&env);
    let ends: Vec<&Value> = all.iter().filter(|r| kind(r) == "session_end").collect();
    assert_eq!(
        ends.iter()
            .filter(|r| r["reason"] == "gateway shutdown")
            .count(),
        3,
        "{ends:#?}"
    );
    let refused: Vec<&Value> = all.iter().filter(|r| kind(r) == "login_refused").collect();
    assert!(
        refused
            .iter()
            .any(|r| r["reason"] == "the database system is shutting down (57P03)"),
        "{refused:#?}"
    );
    let last = all.last().unwrap();
    assert_eq!(kind(last), "gateway_stop");
    assert_eq!(last["reason"], "grace period over, sessions cut");
}

fn sigint_and_a_second_sigterm_cut_at_once(engine: Engine) {
    let mut env = Env::start_with(engine, PgOptions::default(), |o| {
        o.server_line("shutdown_grace_secs = 600").audit("")
    });
    let rt = rt();
    for second in [libc::SIGTERM, libc::SIGINT] {
        let (client, conn) = rt.block_on(async {
            tokio_postgres::connect(&env.conninfo(), tokio_postgres::NoTls)
                .await
                .expect("connect")
        });
        let ended = rt.spawn(conn);
        let signalled = Instant::now();
        if second == libc::SIGTERM {
            env.gw.signal(libc::SIGTERM);
            let (code, _, _) = refused_after(&env, signalled);
            assert_eq!(code, "57P03");
            assert!(rt.block_on(client.simple_query("SELECT 1")).is_ok());
        }
        // pg_ctl -m fast: no waiting for the grace period.
        env.gw.signal(second);
        let e = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), ended).await })
            .expect("the session outlived a fast shutdown")
            .unwrap()
            .expect_err("closed without an error");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P01"));
        let status = env
            .gw
            .stop_with(0, Duration::from_secs(30))
            .expect("the gateway did not exit");
        assert!(status.success(), "{status:?}");
        println!(
            "{engine}: fast shutdown ({}): exited {:?} after the first signal",
            if second == libc::SIGINT {
                "SIGINT"
            } else {
                "second SIGTERM"
            },
            signalled.elapsed()
        );
        let all = records(&env);
        let last = all.last().unwrap();
        assert_eq!(kind(last), "gateway_stop");
        assert_eq!(
            last["reason"],
            "fast shutdown (SIGINT or a second SIGTERM), sessions cut"
        );
        env.gw.restart().expect("restart the gateway");
    }
}
