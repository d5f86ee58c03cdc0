//! Hostile and broken clients on raw TCP: garbage instead of a start-up packet, impossible
//! lengths, oversized messages before and after authentication, truncated frames, idle
//! sockets, abandoned handshakes, sessions the server ends. Before start-up the gateway
//! answers exactly as PostgreSQL 15 does (the same error, or the same silent close, checked
//! against a direct connection); after it, framing errors get 08P01. Nothing may disturb
//! other sessions or keep a socket open.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Env, connect, next_message, raw_login, raw_login_with, rt};
use portcullis_tests::{Engine, per_engine};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};

per_engine!(
    garbage_and_bad_lengths_before_startup,
    server_ended_sessions_end_as_the_server_ended_them,
    abandoned_handshakes_are_closed_at_the_timeout,
    messages_over_the_limit_are_refused_and_the_session_goes_on,
    oversized_and_broken_frames_after_login,
    idle_sockets_do_not_block_others,
);

/// How long the gateway may take to drop a hostile connection.
const REJECT_WITHIN: Duration = Duration::from_secs(10);

fn dial(env: &Env) -> TcpStream {
    let s = TcpStream::connect(env.gw.addr).expect("connect to the gateway");
    s.set_read_timeout(Some(REJECT_WITHIN)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the gateway closes; returns the SQLSTATEs of any ErrorResponses it sent.
/// Panics if the connection is still open after [`REJECT_WITHIN`].
fn read_until_closed(s: TcpStream, case: &str) -> Vec<String> {
    sqlstates(&read_all_until_closed(s, case))
}

/// SQLSTATEs of the ErrorResponses in a byte stream of backend messages.
fn sqlstates(mut buf: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len < 4 || buf.len() < 1 + len {
            break;
        }
        let (msg, rest) = buf.split_at(1 + len);
        if msg[0] == b'E' {
            for field in msg[5..].split(|b| *b == 0) {
                if let Some(code) = field.strip_prefix(b"C") {
                    codes.push(String::from_utf8_lossy(code).into_owned());
                }
            }
        }
        buf = rest;
    }
    codes
}

/// Either a plain close or an 08P01 ErrorResponse (then a close).
fn assert_protocol_rejection(codes: &[String], case: &str) {
    assert!(
        codes.is_empty() || codes.iter().all(|c| c == "08P01"),
        "{case}: expected 08P01 or a close, got {codes:?}"
    );
}

fn still_serves(env: &Env, case: &str) {
    let out = common::run_timed(env.psql_gw().args(["-At", "-c", "SELECT 'alive'"]));
    assert_eq!(
        common::stdout(&out).trim(),
        "alive",
        "after {case}: a new session failed: {}\n--- gateway log ---\n{}",
        common::stderr(&out),
        env.gw.log_tail(30)
    );
}

/// What a peer answers to bytes sent first, read until it closes: the bytes before any
/// message (an `SSLRequest`'s `N`), the SQLSTATEs of its ErrorResponses, and how many
/// bytes it sent in all.
fn answer(addr: &str, bytes: &[u8], case: &str) -> (Vec<u8>, Vec<String>, usize) {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{case}: connect {addr}: {e}"));
    s.set_read_timeout(Some(REJECT_WITHIN)).unwrap();
    let mut w = &s;
    // The peer may close before reading everything; that is a valid answer.
    let _ = w.write_all(bytes);
    let got = read_all_until_closed(s, case);
    let prefix: Vec<u8> = got.iter().take_while(|b| **b == b'N').copied().collect();
    let codes = sqlstates(&got[prefix.len()..]);
    (prefix, codes, got.len())
}

fn garbage_and_bad_lengths_before_startup(engine: Engine) {
    let mut env = Env::start(engine);
    let startup = {
        let mut v = BytesMut::new();
        frontend::startup_message([("user", "agent"), ("database", common::DB)], &mut v).unwrap();
        v.to_vec()
    };
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
        ),
        ("length below 8", vec![0, 0, 0, 3, 0, 3, 0, 0]),
        ("length zero", vec![0, 0, 0, 0]),
        ("negative length", vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]),
        ("1 GiB start-up packet", {
            let mut v = vec![0x40, 0, 0, 0, 0, 3, 0, 0];
            v.extend_from_slice(b"user\0agent\0");
            v
        }),
        // node-postgres writes Terminate when `end()` is called during connect.
        ("Terminate before the start-up packet", {
            let mut v = b"X\0\0\0\x04".to_vec();
            v.extend_from_slice(&startup);
            v
        }),
        ("cancel request of the wrong size", {
            let mut v = vec![0, 0, 0, 20, 0x04, 0xd2, 0x16, 0x2e];
            v.extend_from_slice(&[0; 12]);
            v
        }),
        ("start-up without terminator", {
            let body = b"user\0agent\0database\0app";
            let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v.extend_from_slice(body);
            v
        }),
        ("start-up with bytes after its terminator", {
            let body = b"user\0agent\0\0junk";
            let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v.extend_from_slice(body);
            v
        }),
        ("start-up without a user", {
            let body = b"database\0app\0\0";
            let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v.extend_from_slice(body);
            v
        }),
        ("unknown protocol version", vec![0, 0, 0, 8, 0, 9, 0, 0]),
        ("SSLRequest twice", [ssl, ssl].concat()),
    ];
    let direct = format!("{}:{}", env.pg.host, env.pg.port);
    let gateway = env.gw.addr.to_string();
    for (case, bytes) in cases {
        // PostgreSQL 15 is the reference: the same answer, or the same silence.
        let (pg_prefix, pg_codes, pg_len) = answer(&direct, &bytes, case);
        let (gw_prefix, gw_codes, gw_len) = answer(&gateway, &bytes, case);
        assert_eq!(
            (&gw_prefix, &gw_codes),
            (&pg_prefix, &pg_codes),
            "{case}: the gateway answered unlike PostgreSQL"
        );
        if pg_len == 0 {
            assert_eq!(
                gw_len, 0,
                "{case}: PostgreSQL sends nothing, the gateway did"
            );
        }
        assert!(
            env.gw.is_alive(),
            "gateway died on {case}:\n{}",
            env.gw.log_tail(30)
        );
        still_serves(&env, case);
    }
}

/// Everything a peer sends until it closes; panics if it is still open after
/// [`REJECT_WITHIN`].
fn read_all_until_closed(mut s: TcpStream, case: &str) -> Vec<u8> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if start.elapsed() > REJECT_WITHIN {
                    panic!("{case}: the peer kept talking for {:?}", start.elapsed());
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{case}: connection still open after {:?}, having sent {buf:?}",
                    start.elapsed()
                )
            }
            // A reset is a close too.
            Err(_) => return buf,
        }
    }
}

/// A session the server ends gets the server's own error and then EOF: nothing the
/// gateway adds, whether it was idle or running a statement.
fn server_ended_sessions_end_as_the_server_ended_them(engine: Engine) {
    let env = Env::start(engine);
    for idle in [false, true] {
        let (mut s, _, pid) = raw_login_with(&env, &{
            let mut v = BytesMut::new();
            frontend::startup_message([("user", "agent"), ("database", common::DB)], &mut v)
                .unwrap();
            v
        });
        let pid = pid.expect("BackendKeyData");
        if !idle {
            let mut q = BytesMut::new();
            frontend::query("SELECT pg_sleep(60)", &mut q).unwrap();
            s.write_all(&q).unwrap();
        }
        // From a direct connection, as an operator would (agents may not signal
        // backends); when running, once the server has started the statement.
        let wait = if idle { "idle" } else { "active" };
        let out = common::run_timed(env.psql_direct().args([
            "-At",
            "-c",
            &format!(
                "DO $$ BEGIN
                   FOR i IN 1..200 LOOP
                     EXIT WHEN EXISTS (SELECT FROM pg_stat_activity WHERE pid = {pid} AND state = '{wait}');
                     PERFORM pg_sleep(0.05);
                   END LOOP;
                 END $$;
                 SELECT pg_terminate_backend({pid})"
            ),
        ]));
        let said = common::stdout(&out);
        assert_eq!(said.lines().last(), Some("t"), "{}", common::stderr(&out));
        let case = if idle { "idle" } else { "in a statement" };
        let got = read_all_until_closed(s, case);
        let mut rest = &got[..];
        let mut last = None;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
            last = Some(rest[0]);
            rest = &rest[len.min(rest.len())..];
        }
        assert_eq!(sqlstates(&got), ["57P01"], "{case}: {got:?}");
        assert_eq!(
            last,
            Some(b'E'),
            "{case}: the server's error is the last message"
        );
    }
    still_serves(&env, "terminated sessions");
}

/// A `Bind` or `Query` over `max_message_bytes` (here 1 MiB) gets 54000 naming the
/// limit and the setting, read off the wire without being held, and the same session
/// runs its next statement; also inside a transaction, which the refusal fails.
fn messages_over_the_limit_are_refused_and_the_session_goes_on(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| {
        o.server_line("max_message_bytes = 1048576")
    });
    rt().block_on(async {
        let mut c = connect(&env.conninfo()).await;
        let big = "x".repeat(3 << 20);
        let check = |e: tokio_postgres::Error| {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not a server error: {e}"));
            assert_eq!(db.code().code(), "54000", "{db:?}");
            assert!(
                db.message().contains("max_message_bytes"),
                "{}",
                db.message()
            );
        };
        // Extended protocol: the 3 MiB parameter is in the Bind.
        check(
            c.query_one("SELECT length($1::text)", &[&big])
                .await
                .unwrap_err(),
        );
        let n: i32 = c
            .query_one("SELECT length($1::text)", &[&"ok"])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        // Simple protocol: the text itself.
        check(
            c.simple_query(&format!("SELECT '{big}'"))
                .await
                .unwrap_err(),
        );
        let t = c.transaction().await.unwrap();
        check(
            t.query_one("SELECT length($1::text)", &[&big])
                .await
                .unwrap_err(),
        );
        let e = t.query_one("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e}");
        t.rollback().await.unwrap();
        let n: i64 = c
            .query_one("SELECT 41::int8 + 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42);
    });
    still_serves(&env, "messages over the limit");
}

/// Connections that stop speaking during start-up are closed at the handshake timeout:
/// the client sees the FATAL and EOF, and the gateway holds no descriptor for them.
fn abandoned_handshakes_are_closed_at_the_timeout(engine: Engine) {
    let env = Env::start_with(engine, Default::default(), |o| {
        o.server_line("handshake_timeout_secs = 1")
    });
    still_serves(&env, "a first session");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", env.gw.pid()))
            .expect("the gateway's descriptors")
            .count()
    };
    let baseline = fds();
    let mut startup = BytesMut::new();
    frontend::startup_message([("user", "agent"), ("database", common::DB)], &mut startup).unwrap();
    let abandoned: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = dial(&env);
            s.write_all(&startup).unwrap();
            let mut buf = BytesMut::new();
            assert!(matches!(
                next_message(&mut s, &mut buf),
                backend::Message::AuthenticationSasl(_)
            ));
            // Half stop after the first SCRAM message, with the exchange under way.
            if i % 2 == 1 {
                let sc = ScramSha256::new(b"agent-secret", ChannelBinding::unsupported());
                let mut out = BytesMut::new();
                frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut out).unwrap();
                s.write_all(&out).unwrap();
                assert!(matches!(
                    next_message(&mut s, &mut buf),
                    backend::Message::AuthenticationSaslContinue(_)
                ));
            }
            s
        })
        .collect();
    for (i, s) in abandoned.into_iter().enumerate() {
        let got = read_all_until_closed(s, &format!("abandoned handshake {i}"));
        assert_eq!(sqlstates(&got), ["08P01"], "handshake {i}");
    }
    let deadline = Instant::now() + REJECT_WITHIN;
    while fds() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fds() <= baseline,
        "the gateway holds {} descriptors, {baseline} before the abandoned handshakes",
        fds()
    );
    still_serves(&env, "200 abandoned handshakes");
}

/// libpq 18 with `max_protocol_version=latest` asks for 3.2 and may send `_pq_.*`
/// options: PostgreSQL 15 answers `NegotiateProtocolVersion` (3.0, the options it does
/// not know) and goes on with authentication; so does the gateway.
#[test]
fn a_newer_protocol_minor_version_is_negotiated_down() {
    let env = Env::start(Engine::Auto);
    let body = b"user\0agent\0database\0app\0_pq_.future_feature\0on\0\0";
    let mut p = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 3, 0, 2]);
    p.extend_from_slice(body);
    let (mut s, negotiated, _) = raw_login_with(&env, &p);
    let v = negotiated.expect("NegotiateProtocolVersion before authentication");
    assert_eq!(&v[..4], &0i32.to_be_bytes(), "newest minor version: 0");
    assert_eq!(&v[4..8], &1i32.to_be_bytes());
    assert_eq!(&v[8..], b"_pq_.future_feature\0");
    let mut out = BytesMut::new();
    frontend::query("SELECT 41 + 1", &mut out).unwrap();
    s.write_all(&out).unwrap();
    let mut inbuf = BytesMut::new();
    loop {
        match next_message(&mut s, &mut inbuf) {
            backend::Message::DataRow(r) => {
                let v = r.buffer();
                assert!(v.ends_with(b"42"), "{v:?}");
            }
            backend::Message::ReadyForQuery(_) => break,
            backend::Message::ErrorResponse(_) => panic!("the negotiated session fails"),
            _ => {}
        }
    }
}

/// The pid in `BackendKeyData` is the server's, so a driver matches its own
/// notifications and finds itself in `pg_stat_activity` (issue 10, item 5); the secret
/// is the gateway's, and a cancel with it still reaches the backend.
#[test]
fn the_agent_sees_its_backends_real_pid() {
    let env = Env::start(Engine::Auto);
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "agent"), ("database", common::DB)], &mut out).unwrap();
    let (mut s, _, pid) = raw_login_with(&env, &out);
    let pid = pid.expect("BackendKeyData");
    let mut out = BytesMut::new();
    frontend::query("LISTEN c; NOTIFY c, 'x'; SELECT pg_backend_pid()", &mut out).unwrap();
    s.write_all(&out).unwrap();
    let mut inbuf = BytesMut::new();
    let (mut notified, mut selected) = (None, None);
    loop {
        match next_message(&mut s, &mut inbuf) {
            backend::Message::NotificationResponse(n) => notified = Some(n.process_id()),
            backend::Message::DataRow(r) => {
                let b = r.buffer();
                selected = Some(String::from_utf8_lossy(&b[4..]).parse::<i32>().unwrap());
            }
            backend::Message::ReadyForQuery(_) => break,
            backend::Message::ErrorResponse(_) => panic!("the query failed"),
            _ => {}
        }
    }
    assert_eq!(
        selected,
        Some(pid),
        "pg_backend_pid() differs from BackendKeyData"
    );
    assert_eq!(
        notified,
        Some(pid),
        "the session's own notification has another pid"
    );
}

fn oversized_and_broken_frames_after_login(engine: Engine) {
    let mut env = Env::start(engine);
    rt().block_on(async {
        // A session that is open throughout must not notice the others' trouble.
        let bystander = connect(&env.conninfo()).await;
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "2 GiB query message",
                {
                    let mut v = vec![b'Q', 0x7f, 0xff, 0xff, 0xf0];
                    v.extend_from_slice(b"SELECT 1");
                    v
                },
                false,
            ),
            ("length below 4", vec![b'Q', 0, 0, 0, 2, b'x'], false),
            (
                "unknown message type",
                {
                    let mut v = vec![b'!', 0, 0, 0, 8];
                    v.extend_from_slice(b"junk");
                    v
                },
                false,
            ),
            (
                "truncated frame then EOF",
                {
                    let mut v = vec![b'Q', 0, 0, 0, 100];
                    v.extend_from_slice(b"SELECT");
                    v
                },
                true,
            ),
        ];
        for (case, bytes, half_close) in cases {
            let mut s = raw_login(&env);
            let _ = s.write_all(&bytes);
            if half_close {
                let _ = s.shutdown(Shutdown::Write);
            }
            let codes = read_until_closed(s, case);
            assert_protocol_rejection(&codes, case);
            assert!(
                env.gw.is_alive(),
                "gateway died on {case}:\n{}",
                env.gw.log_tail(30)
            );
            let row = bystander
                .query_one("SELECT $1::text", &[&case])
                .await
                .unwrap_or_else(|e| panic!("bystander broken after {case}: {e}"));
            assert_eq!(row.get::<_, &str>(0), case);
            still_serves(&env, case);
        }
        // A well-formed raw session still works end to end.
        let mut s = raw_login(&env);
        let mut out = BytesMut::new();
        frontend::query("SELECT 6 * 7", &mut out).unwrap();
        s.write_all(&out).unwrap();
        let mut buf = BytesMut::new();
        loop {
            match next_message(&mut s, &mut buf) {
                backend::Message::DataRow(row) => {
                    // The body after the column count: length 2, then "42".
                    assert_eq!(row.buffer(), b"\0\0\0\x0242");
                }
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ErrorResponse(_) => panic!("query failed"),
                _ => {}
            }
        }
    });
}

fn idle_sockets_do_not_block_others(engine: Engine) {
    let env = Env::start(engine);
    // Sockets that connect and never speak, and one that sends half a start-up packet.
    let mut idle: Vec<TcpStream> = (0..64).map(|_| dial(&env)).collect();
    idle[0].write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
    let t = Instant::now();
    still_serves(&env, "64 idle sockets");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM generate_series(1, 100000)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 100_000);
    });
    drop(idle);
}
