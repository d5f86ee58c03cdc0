//! Hostile and broken clients on raw TCP: garbage instead of a start-up packet, impossible
//! lengths, oversized messages before and after authentication, truncated frames and idle
//! sockets. Each must get an ErrorResponse (08P01 for framing errors) or a closed socket
//! promptly, and must not disturb other sessions on the same gateway.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Env, connect, next_message, raw_login, raw_login_with, rt};
use portcullis_tests::{Engine, per_engine};
use postgres_protocol::message::{backend, frontend};

per_engine!(
    garbage_and_bad_lengths_before_startup,
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
fn read_until_closed(mut s: TcpStream, case: &str) -> Vec<String> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{case}: connection still open after {:?}", start.elapsed())
            }
            // A reset is a close too.
            Err(_) => break,
        }
        if start.elapsed() > REJECT_WITHIN {
            panic!("{case}: gateway kept talking for {:?}", start.elapsed());
        }
    }
    sqlstates(&buf)
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

fn garbage_and_bad_lengths_before_startup(engine: Engine) {
    let mut env = Env::start(engine);
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
        ("start-up without terminator", {
            let body = b"user\0agent\0database\0app";
            let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v.extend_from_slice(body);
            v
        }),
        ("unknown protocol version", vec![0, 0, 0, 8, 0, 9, 0, 0]),
    ];
    for (case, bytes) in cases {
        let mut s = dial(&env);
        // The gateway may close before reading everything; that is a valid answer.
        let _ = s.write_all(&bytes);
        let codes = read_until_closed(s, case);
        if case == "unknown protocol version" {
            // PostgreSQL answers 0A000 here; any error or a close is fine.
            assert!(codes.len() <= 1, "{case}: {codes:?}");
        } else {
            assert_protocol_rejection(&codes, case);
        }
        assert!(
            env.gw.is_alive(),
            "gateway died on {case}:\n{}",
            env.gw.log_tail(30)
        );
        still_serves(&env, case);
    }
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
