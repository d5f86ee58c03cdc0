//! Agents logging in with access tokens from a real OpenID provider (`oidc-provider`, run
//! by node over HTTPS), through psql and tokio-postgres over TLS: tokens the provider
//! issues are accepted and their groups become roles; every kind of bad token is refused
//! with a message that says what is wrong; keys rotate and survive the provider going
//! down; and a session's statements stop when its token expires.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{DB, Env, run_timed, stderr, stdout};
use portcullis_tests::oidc::{Client, OidcProvider};
use portcullis_tests::{Certs, Engine, Gateway, PgOptions, per_engine};
use serde_json::json;

/// Readers read; only the `writer` role (the provider's `db-writers` group) writes.
const POLICY: &str = r#"[policy]
default = "deny"
[[policy.rule]]
name = "writers-write"
roles = ["writer"]
class = ["write"]
action = "allow"
[[policy.rule]]
name = "waiting-is-fine"
functions = ["pg_sleep"]
action = "allow"
[[policy.rule]]
name = "everyone-reads"
class = ["read", "txn", "session", "utility"]
action = "allow"
"#;

struct Setup {
    env: Env,
    idp: OidcProvider,
    certs: Certs,
}

fn start(engine: Engine, clients: Vec<Client>) -> Setup {
    start_with(engine, clients, &[])
}

fn start_with(engine: Engine, clients: Vec<Client>, server_lines: &[&str]) -> Setup {
    let certs = Certs::new();
    let idp = OidcProvider::start(&certs, clients, 600).expect("start the OpenID provider");
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let oidc = idp.gateway_toml();
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        let mut o = o.policy(POLICY).extra_toml(&oidc);
        for l in server_lines {
            o = o.server_line(l);
        }
        o.tls = Some((cert, key));
        o
    });
    env.pg
        .psql(
            DB,
            "CREATE TABLE notes (id int, body text); INSERT INTO notes VALUES (1, 'hello'); GRANT ALL ON notes TO PUBLIC",
        )
        .expect("seed");
    Setup { env, idp, certs }
}

impl Setup {
    /// psql over verified TLS with `token` as the password.
    fn psql(&self, gw: &Gateway, user: &str, token: &str, sql: &[&str]) -> std::process::Output {
        let conn = format!(
            "host=localhost port={} dbname={DB} user={user} sslmode=verify-full sslrootcert={}",
            gw.port(),
            self.certs.path("ca.pem").display()
        );
        let mut c = std::process::Command::new("psql");
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &conn])
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null());
        for s in sql {
            c.args(["-c", s]);
        }
        run_timed(&mut c)
    }

    fn refused(&self, token: &str, expect: &str) {
        let out = self.psql(&self.env.gw, "svc", token, &["SELECT 1"]);
        assert!(!out.status.success(), "accepted: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
    }

    fn forge(&self, req: serde_json::Value) -> String {
        self.idp.forge(req).expect("forge a token")
    }
}

#[test]
fn tokens_of_a_real_provider_log_in_and_bad_ones_are_refused_with_a_reason() {
    let mut big = Client::new("ci-big", &["db-writers"]);
    big.pad = 16_000;
    let mut s = start(
        Engine::Auto,
        vec![
            Client::new("ci-writer", &["db-writers"]),
            Client::new("ci-reader", &[]),
            big,
        ],
    );
    let gw = &s.env.gw;

    // A token from the token endpoint, as the password: the identity is its subject, and
    // the db-writers group maps to the writer role, which may write.
    let writer = s.idp.token("ci-writer").expect("token");
    let out = s.psql(
        gw,
        "anything",
        &writer,
        &[
            "INSERT INTO notes VALUES (2, 'w')",
            "SELECT count(*) FROM notes",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().last(), Some("2"));
    // A client without the group reads but may not write.
    let reader = s.idp.token("ci-reader").expect("token");
    let out = s.psql(gw, "ci-reader", &reader, &["SELECT count(*) FROM notes"]);
    assert_eq!(stdout(&out).trim(), "2", "{}", stderr(&out));
    let out = s.psql(gw, "ci-reader", &reader, &["DELETE FROM notes"]);
    assert!(
        stderr(&out).contains("portcullis refused"),
        "{}",
        stderr(&out)
    );
    // A 16 kB token (a padding claim) goes through.
    let large = s.idp.token("ci-big").expect("token");
    assert!(large.len() > 16_000, "{}", large.len());
    let out = s.psql(gw, "ci-big", &large, &["SELECT 'large'"]);
    assert_eq!(stdout(&out).trim(), "large", "{}", stderr(&out));

    // Outside TLS a token is never asked for.
    let plain = format!(
        "host=127.0.0.1 port={} dbname={DB} user=svc sslmode=disable",
        gw.port()
    );
    let out = run_timed(
        std::process::Command::new("psql")
            .args(["-X", "-d", &plain, "-c", "SELECT 1"])
            .env("PGPASSWORD", &writer),
    );
    assert!(stderr(&out).contains("only over TLS"), "{}", stderr(&out));

    // Every way a token can be wrong, each with its reason.
    let claims = |secs| s.idp.claims("svc", secs);
    let mut not_yet = claims(600);
    not_yet["nbf"] = json!(not_yet["iat"].as_i64().unwrap() + 3600);
    let mut other_aud = claims(600);
    other_aud["aud"] = json!("urn:some-other-api");
    let mut other_iss = claims(600);
    other_iss["iss"] = json!("https://evil.example");
    let cases = [
        (json!({"claims": claims(-120)}), "expired"),
        (json!({"claims": not_yet}), "not valid yet"),
        (json!({"claims": other_aud}), "not for this gateway"),
        (
            json!({"claims": other_iss}),
            "issuer is not one this gateway accepts",
        ),
        (
            json!({"claims": claims(600), "mode": "tamper", "tampered": {"sub": "admin"}}),
            "signature does not verify",
        ),
        (json!({"claims": claims(600), "mode": "none"}), "alg none"),
        (
            json!({"claims": claims(600), "mode": "hmac-public"}),
            "shared-secret algorithm",
        ),
        (
            json!({"claims": claims(600), "typ": "JWT"}),
            "type (typ) is JWT",
        ),
        (
            json!({"claims": claims(600), "typ": null}),
            "type (typ) is missing",
        ),
        (
            json!({"claims": claims(600), "mode": "foreign", "kid": "not-published"}),
            "does not publish",
        ),
    ];
    for (req, why) in cases {
        let token = s.forge(req.clone());
        s.refused(&token, why);
        s.refused(&token, "token authentication failed for user \"svc\"");
    }
    s.refused("not-a-jwt", "malformed");
    // A subject that is a static key's name does not become that identity.
    let impostor = s.forge(json!({"claims": s.idp.claims("agent", 600)}));
    s.refused(&impostor, "which is a static key of this gateway");

    // Key rotation: the provider restarts with new keys; a token under the new kid makes
    // the gateway refetch, and a token under the withdrawn key is refused after that.
    let old = s.forge(json!({"claims": s.idp.claims("svc", 600)}));
    s.idp.restart(true).expect("rotate the provider's keys");
    std::thread::sleep(Duration::from_millis(1100)); // jwks_refetch_min_secs = 1
    let rotated = s.idp.token("ci-writer").expect("token after rotation");
    let out = s.psql(gw, "svc", &rotated, &["SELECT 'rotated'"]);
    assert_eq!(stdout(&out).trim(), "rotated", "{}", stderr(&out));
    s.refused(&old, "does not publish");

    // The provider goes down: keys already fetched still verify tokens.
    let while_down = s.forge(json!({"claims": s.idp.claims("svc", 600)}));
    s.idp.stop();
    let out = s.psql(gw, "svc", &while_down, &["SELECT 'cached'"]);
    assert_eq!(stdout(&out).trim(), "cached", "{}", stderr(&out));
    // A gateway that never reached the provider has no keys: refused as a transient
    // failure (08004), not as a bad token.
    let mut opts = s.env.gw.opts.clone();
    opts.port = 0;
    let mut cold = Gateway::start(opts).expect("second gateway");
    let out = s.psql(&cold, "svc", &while_down, &["SELECT 1"]);
    assert!(
        stderr(&out).contains("cannot check tokens right now"),
        "{}",
        stderr(&out)
    );
    cold.stop_with(libc::SIGTERM, Duration::from_secs(5));

    // No token ever reaches the gateway's log.
    let log = gw.log();
    for t in [&writer, &reader, &rotated, &while_down] {
        assert!(!log.contains(t.as_str()), "a token is in the gateway's log");
    }
    assert!(
        log.contains("token refused"),
        "refusals are logged with their reason"
    );
}

/// A session's token expires while it is open: the statement after the expiry is
/// refused with a reason, and an idle session is closed with a FATAL message.
fn a_session_ends_with_its_token(engine: Engine) {
    let s = start(engine, vec![Client::new("ci-writer", &["db-writers"])]);
    let gw = &s.env.gw;

    // Busy across the expiry (psql, one connection): the next statement is refused.
    let token = s.forge(json!({"claims": s.idp.claims("svc", 3)}));
    let out = s.psql(
        gw,
        "svc",
        &token,
        &["SELECT pg_sleep(4.5)", "SELECT 'after expiry'"],
    );
    let err = stderr(&out);
    assert!(!stdout(&out).contains("after expiry"), "{}", stdout(&out));
    assert!(err.contains("expired at"), "{err}");
    assert!(err.contains("Reconnect with a fresh token"), "{err}");

    // Idle at the expiry (tokio-postgres over TLS): the gateway closes the session with
    // a FATAL error the driver reports.
    let token = s.forge(json!({"claims": s.idp.claims("svc", 3)}));
    let ca = s.certs.path("ca.pem");
    common::rt().block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&ca).unwrap();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = portcullis::approvals::store::postgres::RustlsConnect(Arc::new(tls));
        let conninfo = format!(
            "host=localhost port={} user=svc dbname={DB} sslmode=require password={token}",
            gw.port()
        );
        let (client, conn) = tokio_postgres::connect(&conninfo, connector)
            .await
            .expect("a token login with tokio-postgres");
        let ended = tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), DB);
        let result = tokio::time::timeout(Duration::from_secs(15), ended)
            .await
            .expect("the session is closed at expiry")
            .unwrap();
        let e = result.expect_err("closed with an error");
        let db = e.as_db_error().expect("a FATAL from the gateway");
        assert_eq!(db.code().code(), "28000");
        assert!(db.message().contains("expired at"), "{}", db.message());
        assert!(client.query_one("SELECT 1", &[]).await.is_err());
    });
}

per_engine!(a_session_ends_with_its_token);

/// One backend message off a raw socket: its tag and body.
fn read_message(s: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

fn sasl(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// OAUTHBEARER exactly as a PostgreSQL 18 server runs it (no PostgreSQL 18 client is on
/// this machine, so the client side is written out here, byte for byte from RFC 7628):
/// a discovery request answered with the issuer's discovery document and ended without an
/// error, a good token logged in, a bad one refused after the error reply. This gateway
/// also takes tokens outside TLS, as `plaintext_tokens` allows on a loopback listener.
#[test]
fn oauthbearer_is_spoken_as_postgresql_18_speaks_it() {
    use std::io::Write;
    let s = start_with(
        Engine::Auto,
        vec![Client::new("ci-writer", &["db-writers"])],
        &[
            "token_mechanism = \"oauthbearer\"",
            "plaintext_tokens = true",
        ],
    );
    let begin = || {
        let mut c = std::net::TcpStream::connect(s.env.gw.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut p = Vec::new();
        p.extend_from_slice(&196608u32.to_be_bytes());
        p.extend_from_slice(format!("user\0svc\0database\0{DB}\0\0").as_bytes());
        let mut startup = ((p.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&p);
        c.write_all(&startup).unwrap();
        let (tag, body) = read_message(&mut c).unwrap();
        assert_eq!((tag, &body[..4]), (b'R', &10u32.to_be_bytes()[..]));
        assert_eq!(&body[4..], b"OAUTHBEARER\0\0");
        c
    };
    let initial = |auth: &str| {
        let data = format!("n,,\x01auth={auth}\x01\x01");
        let mut body = b"OAUTHBEARER\0".to_vec();
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(data.as_bytes());
        sasl(b'p', &body)
    };

    // Discovery: an empty auth value gets the issuer's discovery document and scope; the
    // client's lone 0x01 ends the exchange, and the server closes without an error.
    let mut c = begin();
    c.write_all(&initial("")).unwrap();
    let (tag, body) = read_message(&mut c).unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &11u32.to_be_bytes()[..]));
    let reply: serde_json::Value = serde_json::from_slice(&body[4..]).unwrap();
    assert_eq!(reply["status"], "invalid_token");
    assert_eq!(
        reply["openid-configuration"],
        format!("{}/.well-known/openid-configuration", s.idp.issuer())
    );
    c.write_all(&sasl(b'p', b"\x01")).unwrap();
    assert!(read_message(&mut c).is_none(), "closed without a message");

    // A token from the provider: AuthenticationOk (no SASL final data), then a session.
    let token = s.idp.token("ci-writer").unwrap();
    let mut c = begin();
    c.write_all(&initial(&format!("Bearer {token}"))).unwrap();
    let (tag, body) = read_message(&mut c).unwrap();
    assert_eq!((tag, &body[..]), (b'R', &0u32.to_be_bytes()[..]));
    loop {
        let (tag, _) = read_message(&mut c).unwrap();
        if tag == b'Z' {
            break;
        }
    }
    c.write_all(&sasl(b'Q', b"SELECT current_database()\0"))
        .unwrap();
    let mut rows = Vec::new();
    loop {
        let (tag, body) = read_message(&mut c).unwrap();
        match tag {
            b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            b'Z' => break,
            b'E' => panic!("{}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert_eq!(rows, [DB]);

    // An expired token: the error reply, then FATAL 28000 once the client sends 0x01.
    let expired = s.forge(json!({"claims": s.idp.claims("svc", -300)}));
    let mut c = begin();
    c.write_all(&initial(&format!("Bearer {expired}"))).unwrap();
    let (tag, body) = read_message(&mut c).unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &11u32.to_be_bytes()[..]));
    c.write_all(&sasl(b'p', b"\x01")).unwrap();
    let (tag, body) = read_message(&mut c).unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(tag, b'E');
    assert!(text.contains("C28000"), "{text}");
    assert!(
        text.contains("OAuth bearer authentication failed for user \"svc\""),
        "{text}"
    );
    assert!(text.contains("expired"), "{text}");
}
