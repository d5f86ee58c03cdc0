//! What every end-to-end test file shares: a cluster with a gateway in front, and clients
//! (psql, pgbench, tokio-postgres) pointed at either. Helpers panic with the gateway's log
//! tail so a failure says what the gateway saw.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::time::Duration;

use portcullis_tests::{Engine, Gateway, GatewayOptions, PgCluster, PgOptions};

/// Upper bound for any single client command: a hung gateway fails the test, not CI.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub const DB: &str = "app";

/// A cluster with database [`DB`] and a gateway in front. Field order is drop order: the
/// gateway goes first so it never outlives its upstream by surprise.
pub struct Env {
    pub gw: Gateway,
    pub pg: PgCluster,
}

impl Env {
    pub fn start(engine: Engine) -> Env {
        Env::start_with(engine, PgOptions::default(), |o| o)
    }

    pub fn start_with(
        engine: Engine,
        pg_opts: PgOptions,
        tweak: impl FnOnce(GatewayOptions) -> GatewayOptions,
    ) -> Env {
        let pg = PgCluster::start(pg_opts).expect("start PostgreSQL");
        pg.create_database(DB).expect("create database");
        let opts = tweak(GatewayOptions::new(&pg, DB).engine(engine));
        let gw = Gateway::start(opts).unwrap_or_else(|e| panic!("start gateway ({engine}): {e}"));
        Env { gw, pg }
    }

    /// A gateway with `toml` added to its config, in front of a cluster holding the
    /// financial dataset (`rows` accounts from `seed`).
    pub fn with_dataset(engine: Engine, toml: &str, rows: u64, seed: u64) -> Env {
        let env = Env::start_with(engine, PgOptions::default(), |o| o.extra_toml(toml));
        portcullis_tests::load_financial(&env.pg, DB, rows, seed)
            .expect("load the financial dataset");
        env
    }

    /// The agent's URI through the gateway.
    pub fn uri(&self) -> String {
        self.gw.agent_uri()
    }

    /// `psql` through the gateway as the agent.
    pub fn psql_gw(&self) -> Command {
        psql_at(&self.uri())
    }

    /// `psql` straight to PostgreSQL over TCP with the upstream credential.
    pub fn psql_direct(&self) -> Command {
        psql_at(&self.pg.direct_uri(DB))
    }

    /// Runs a command and panics, with the gateway's log, unless it succeeds.
    pub fn ok(&self, c: &mut Command) -> Output {
        let out = run_timed(c);
        if !out.status.success() {
            panic!(
                "{c:?} failed ({})\nstdout: {}\nstderr: {}\n--- gateway log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.gw.log_tail(40)
            );
        }
        out
    }

    /// The rows of one query through `uri`, as psql prints them unaligned: a line a
    /// row, fields split at tabs.
    pub fn rows(&self, uri: &str, sql: &str) -> Vec<Vec<String>> {
        let out = self.ok(psql_at(uri).args(["-At", "-F", "\t", "-c", sql]));
        stdout(&out)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// One query through the gateway, unaligned tuples-only output.
    pub fn query_gw(&self, sql: &str) -> String {
        stdout(&self.ok(self.psql_gw().args(["-At", "-c", sql])))
    }

    /// tokio-postgres key-value connection string through the gateway.
    pub fn conninfo(&self) -> String {
        self.gw.conninfo("agent", "agent-secret", DB)
    }
}

/// `psql` with no psqlrc, a connect timeout, and stdin closed.
pub fn psql_at(uri: &str) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-d", uri])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    c
}

/// Runs `c` under coreutils' `timeout` so a hang becomes a failure.
pub fn run_timed(c: &mut Command) -> Output {
    let mut t = Command::new("timeout");
    t.arg("--kill-after=5")
        .arg(CLIENT_TIMEOUT.as_secs().to_string())
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        t.current_dir(d);
    }
    t.output().unwrap_or_else(|e| panic!("run {c:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A current-thread runtime for tokio-postgres tests (the test harness is synchronous so the
/// same function can be generated per engine).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connects with tokio-postgres and drives the connection on a spawned task.
pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("connect timed out: {conninfo}"))
    .unwrap_or_else(|e| match e.as_db_error() {
        Some(db) => panic!(
            "connect {conninfo}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        None => panic!("connect {conninfo}: {e:?}"),
    });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The first column of every row of a simple-query answer (SQL NULL as `None`).
pub fn first_column(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

/// `portcullis <args>` (the binary under test), with nothing inherited that could point
/// it at another gateway.
pub fn portcullis(args: &[&str]) -> Command {
    let mut c = Command::new(portcullis_tests::gateway::binary().expect("gateway binary"));
    c.args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_ADMIN_SOCKET")
        .stdin(Stdio::null());
    c
}

/// Logs in over raw TCP with SCRAM, leaving the socket at ReadyForQuery.
pub fn raw_login(env: &Env) -> TcpStream {
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "agent"), ("database", DB)], &mut out).unwrap();
    let (s, negotiated, _) = raw_login_with(env, &out);
    assert!(
        negotiated.is_none(),
        "a 3.0 start-up got NegotiateProtocolVersion"
    );
    s
}

/// [`raw_login`] with the start-up packet given; also returns the body of a
/// `NegotiateProtocolVersion` if the gateway sent one (postgres-protocol does not parse
/// that message, so it is taken off the stream here), and the `BackendKeyData` pid.
pub fn raw_login_with(env: &Env, startup: &[u8]) -> (TcpStream, Option<Vec<u8>>, Option<i32>) {
    let mut s = TcpStream::connect(env.gw.addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(startup).unwrap();
    let mut inbuf = BytesMut::new();
    let mut scram = None;
    let mut negotiated = None;
    let mut pid = None;
    loop {
        let fill = |s: &mut TcpStream, buf: &mut BytesMut, want: usize| {
            while buf.len() < want {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).expect("read from gateway");
                assert!(n > 0, "gateway closed during login");
                buf.put_slice(&chunk[..n]);
            }
        };
        fill(&mut s, &mut inbuf, 1);
        if inbuf[0] == b'v' {
            fill(&mut s, &mut inbuf, 5);
            let len = u32::from_be_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]) as usize + 1;
            fill(&mut s, &mut inbuf, len);
            negotiated = Some(inbuf.split_to(len)[5..].to_vec());
            continue;
        }
        let msg = next_message(&mut s, &mut inbuf);
        let mut out = BytesMut::new();
        match msg {
            backend::Message::AuthenticationSasl(_) => {
                let sc = ScramSha256::new(b"agent-secret", ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut out).unwrap();
                scram = Some(sc);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let sc = scram.as_mut().expect("SASL continue before SASL");
                sc.update(body.data()).unwrap();
                frontend::sasl_response(sc.message(), &mut out).unwrap();
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                scram
                    .as_mut()
                    .expect("SASL final before SASL")
                    .finish(body.data())
                    .expect("server signature verifies");
            }
            backend::Message::ErrorResponse(_) => panic!("login refused"),
            backend::Message::BackendKeyData(k) => pid = Some(k.process_id()),
            backend::Message::ReadyForQuery(_) => return (s, negotiated, pid),
            _ => {}
        }
        if !out.is_empty() {
            s.write_all(&out).unwrap();
        }
    }
}

pub fn next_message(s: &mut TcpStream, buf: &mut BytesMut) -> backend::Message {
    loop {
        if let Some(m) = backend::Message::parse(buf).expect("well-formed backend message") {
            return m;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).expect("read from gateway");
        assert!(n > 0, "gateway closed during login");
        buf.put_slice(&chunk[..n]);
    }
}
