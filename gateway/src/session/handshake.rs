//! The agent's side of start-up, sans-IO.
//!
//! Fed the bytes an agent sends before its session is established, it answers
//! `SSLRequest`/`GSSENCRequest`, recognises `CancelRequest`, reads the start-up packet
//! and runs SCRAM-SHA-256 against the agent's identity. Every failure is a FATAL
//! `ErrorResponse` with the right SQLSTATE; an authentication failure says nothing
//! about whether the name or the secret was wrong.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::auth::{Identity, IdentityStore, ScramError, ScramServer, scram};
use crate::protocol::backend::{self as be, Severity, error_response};
use crate::protocol::frame::{split_frame, split_startup_packet};
use crate::protocol::frontend::{self as fe, StartupPacket};
use crate::protocol::{Cursor, ProtocolError, sqlstate};

/// Handshake messages are small; anything larger is hostile.
const MAX_HANDSHAKE_MESSAGE: usize = 16 * 1024;

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write these bytes to the agent.
    Send(Bytes),
    /// After writing what came before, switch the connection to TLS (server side).
    StartTls,
    /// This connection is a cancel request; act on it and close.
    Cancel { pid: i32, secret: i32 },
    /// Start-up done: the agent proved its identity.
    Authenticated(Box<Agent>),
    /// Write this error and close.
    Reject(Bytes),
    /// Close without a word, as PostgreSQL does with bytes no client opens with; the
    /// reason is for the gateway's log.
    Close(String),
}

/// An authenticated agent and what it asked for.
#[derive(Debug, Clone)]
pub struct Agent {
    pub identity: Arc<Identity>,
    pub database: String,
    /// Start-up parameters to pass upstream (`user` and `database` excluded).
    pub params: Vec<(String, String)>,
}

/// What start-up has learnt while SASL runs.
#[derive(Debug)]
struct Login {
    user: String,
    /// `None` for an unknown name: the exchange runs against a decoy and fails.
    identity: Option<Arc<Identity>>,
    scram: ScramServer,
    database: String,
    params: Vec<(String, String)>,
}

#[derive(Debug)]
enum State {
    AwaitStartup,
    AwaitSaslInitial(Login),
    AwaitSaslFinal(Login),
    Done,
}

/// TLS as the listener offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOffer {
    None,
    Optional,
    Required,
}

pub struct ClientHandshake {
    identities: Arc<IdentityStore>,
    tls: TlsOffer,
    encrypted: bool,
    state: State,
    /// The user name the start-up packet gave, for the audit record of a refused login.
    user: Option<String>,
    /// Each encryption request is answered once, as by PostgreSQL; a second one is an
    /// unknown protocol version.
    ssl_asked: bool,
    gss_asked: bool,
}

impl ClientHandshake {
    pub fn new(identities: Arc<IdentityStore>, tls: TlsOffer) -> Self {
        Self {
            identities,
            tls,
            encrypted: false,
            state: State::AwaitStartup,
            user: None,
            ssl_asked: false,
            gss_asked: false,
        }
    }

    /// The user name the client gave, once its start-up packet has been read.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The driver switched the connection to TLS.
    pub fn tls_established(&mut self) {
        self.encrypted = true;
        // As PostgreSQL: inside TLS, a GSSAPI encryption request is no longer valid.
        self.gss_asked = true;
    }

    /// Consumes the agent's bytes and appends the steps to take, in order. Stops after a
    /// step that changes the transport or ends the handshake.
    pub fn on_bytes(&mut self, buf: &mut BytesMut, steps: &mut Vec<Step>) {
        loop {
            let before = steps.len();
            let more = match self.step(buf, steps) {
                Ok(more) => more,
                Err(e) => {
                    self.state = State::Done;
                    let code = match e {
                        ProtocolError::ImpossibleStartup(_) => {
                            steps.push(Step::Close(e.to_string()));
                            return;
                        }
                        ProtocolError::UnsupportedVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
                        _ => sqlstate::PROTOCOL_VIOLATION,
                    };
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        code,
                        &e.to_string(),
                        None,
                        None,
                    )));
                    return;
                }
            };
            let last_ends = matches!(
                steps.last(),
                Some(
                    Step::StartTls
                        | Step::Cancel { .. }
                        | Step::Authenticated(_)
                        | Step::Reject(_)
                        | Step::Close(_)
                )
            );
            if !more || last_ends || steps.len() == before && buf.is_empty() {
                return;
            }
        }
    }

    fn step(&mut self, buf: &mut BytesMut, steps: &mut Vec<Step>) -> Result<bool, ProtocolError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitStartup => {
                let Some(packet) = split_startup_packet(buf)? else {
                    self.state = State::AwaitStartup;
                    return Ok(false);
                };
                let packet = StartupPacket::parse(&packet)?;
                match packet {
                    StartupPacket::SslRequest if std::mem::replace(&mut self.ssl_asked, true) => {
                        return Err(packet.repeated());
                    }
                    StartupPacket::GssEncRequest
                        if std::mem::replace(&mut self.gss_asked, true) =>
                    {
                        return Err(packet.repeated());
                    }
                    _ => {}
                }
                self.startup(packet, buf, steps);
                Ok(true)
            }
            State::AwaitSaslInitial(mut login) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitSaslInitial(login);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                let mut c = Cursor::new(frame.body());
                let mechanism = c.cstr().ok_or(malformed("mechanism"))?;
                let len = c.i32().ok_or(malformed("length"))?;
                let data = c.remaining();
                if mechanism != scram::MECHANISM.as_bytes() {
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        sqlstate::INVALID_AUTHORIZATION,
                        "unsupported SASL mechanism: the gateway offers SCRAM-SHA-256 only",
                        None,
                        None,
                    )));
                    return Ok(false);
                }
                if usize::try_from(len).ok() != Some(data.len()) {
                    return Err(malformed("SASL data length"));
                }
                match login.scram.client_first(data) {
                    Ok(reply) => {
                        steps.push(Step::Send(be::authentication_sasl_continue(&reply)));
                        self.state = State::AwaitSaslFinal(login);
                    }
                    Err(e) => steps.push(Step::Reject(scram_error(e, &login.user))),
                }
                Ok(true)
            }
            State::AwaitSaslFinal(mut login) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitSaslFinal(login);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                let Login {
                    user,
                    identity,
                    scram,
                    database,
                    params,
                } = &mut login;
                match (scram.client_final(frame.body()), identity.take()) {
                    (Ok(reply), Some(identity)) => {
                        steps.push(Step::Send(be::authentication_sasl_final(&reply)));
                        steps.push(Step::Send(be::authentication_ok()));
                        steps.push(Step::Authenticated(Box::new(Agent {
                            identity,
                            database: std::mem::take(database),
                            params: std::mem::take(params),
                        })));
                    }
                    // A decoy verifier cannot succeed; if it somehow did, still refuse.
                    (Ok(_), None) => {
                        steps.push(Step::Reject(scram_error(ScramError::Failed, user)))
                    }
                    (Err(e), _) => steps.push(Step::Reject(scram_error(e, user))),
                }
                Ok(false)
            }
            State::Done => Ok(false),
        }
    }

    fn startup(&mut self, packet: StartupPacket, buf: &BytesMut, steps: &mut Vec<Step>) {
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let tls = matches!(packet, StartupPacket::SslRequest)
                    && self.tls != TlsOffer::None
                    && !self.encrypted;
                // Bytes sent before the answer was read would be plaintext smuggled into
                // what follows (CVE-2021-23214). PostgreSQL refuses them whatever it
                // answered; with TLS offered the gateway does not even start it.
                if !tls {
                    steps.push(Step::Send(Bytes::from_static(b"N")));
                }
                if !buf.is_empty() {
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                        Some("This could be either a client-software bug or evidence of an attempted man-in-the-middle attack."),
                        None,
                    )));
                    return;
                }
                if tls {
                    steps.push(Step::Send(Bytes::from_static(b"S")));
                    steps.push(Step::StartTls);
                }
                self.state = State::AwaitStartup;
            }
            StartupPacket::Cancel { pid, secret } => steps.push(Step::Cancel { pid, secret }),
            StartupPacket::Startup { params, minor } => {
                if self.tls == TlsOffer::Required && !self.encrypted {
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        sqlstate::INVALID_AUTHORIZATION,
                        "this gateway requires TLS",
                        None,
                        Some("Connect with sslmode=require (or stronger)."),
                    )));
                    return;
                }
                let mut user = None;
                let mut database = None;
                let mut rest = Vec::new();
                let mut extensions = Vec::new();
                for (k, v) in params {
                    match k.as_str() {
                        "user" => user = Some(v),
                        "database" => database = Some(v),
                        "replication" => {
                            steps.push(Step::Reject(error_response(
                                Severity::Fatal,
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                "replication connections are not supported through the gateway",
                                None,
                                None,
                            )));
                            return;
                        }
                        // Protocol extensions the gateway does not know: listed back.
                        _ if k.starts_with("_pq_.") => extensions.push(k),
                        _ => rest.push((k, v)),
                    }
                }
                let Some(user) = user.filter(|u| !u.is_empty()) else {
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        sqlstate::INVALID_AUTHORIZATION,
                        "no PostgreSQL user name specified in startup packet",
                        None,
                        Some("Connect with user=<your agent identity>."),
                    )));
                    return;
                };
                let database = database
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| user.clone());
                let (identity, verifier) = self.identities.verifier_for(&user);
                // As PostgreSQL 15: a client asking for a newer minor version or for
                // extensions is told what it gets (3.0, none of them), then goes on.
                if minor > 0 || !extensions.is_empty() {
                    steps.push(Step::Send(be::negotiate_protocol_version(0, &extensions)));
                }
                steps.push(Step::Send(be::authentication_sasl(&[scram::MECHANISM])));
                self.user = Some(user.clone());
                self.state = State::AwaitSaslInitial(Login {
                    user,
                    identity,
                    scram: ScramServer::new(verifier),
                    database,
                    params: rest,
                });
            }
        }
    }
}

fn expect_password(tag: u8) -> Result<(), ProtocolError> {
    if tag == fe::PASSWORD {
        Ok(())
    } else {
        Err(ProtocolError::Unexpected {
            tag,
            state: "expected a SASL response during authentication",
        })
    }
}

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed {
        tag: fe::PASSWORD,
        what,
    }
}

fn scram_error(e: ScramError, user: &str) -> Bytes {
    match e {
        ScramError::Failed => error_response(
            Severity::Fatal,
            sqlstate::INVALID_PASSWORD,
            &format!("password authentication failed for user \"{user}\""),
            None,
            None,
        ),
        other => error_response(
            Severity::Fatal,
            sqlstate::PROTOCOL_VIOLATION,
            &other.to_string(),
            None,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;
    use bytes::BufMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;

    fn store() -> Arc<IdentityStore> {
        Arc::new(IdentityStore::new([Identity {
            name: "agent".into(),
            roles: vec![],
            verifier: Verifier::generate("secret", 16),
        }]))
    }

    fn startup(user: &str) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::startup_message([("user", user), ("database", "bank")], &mut b).unwrap();
        b
    }

    /// Runs a whole start-up, cutting the client's bytes at `cut` each time.
    fn login(user: &str, secret: &str, cut: usize) -> Vec<Step> {
        let mut hs = ClientHandshake::new(store(), TlsOffer::None);
        let mut all = Vec::new();
        let feed = |hs: &mut ClientHandshake, bytes: &[u8], all: &mut Vec<Step>| {
            let mut buf = BytesMut::new();
            let cut = cut.min(bytes.len());
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                let mut steps = Vec::new();
                hs.on_bytes(&mut buf, &mut steps);
                all.extend(steps);
            }
        };
        feed(&mut hs, &startup(user), &mut all);
        let mut client = ScramSha256::new(secret.as_bytes(), ChannelBinding::unsupported());
        let mut b = BytesMut::new();
        frontend::sasl_initial_response(scram::MECHANISM, client.message(), &mut b).unwrap();
        feed(&mut hs, &b, &mut all);
        let Some(Step::Send(cont)) = all.last() else {
            return all;
        };
        client.update(&cont[9..]).unwrap();
        let mut b = BytesMut::new();
        frontend::sasl_response(client.message(), &mut b).unwrap();
        feed(&mut hs, &b, &mut all);
        all
    }

    #[test]
    fn right_secret_authenticates_at_every_cut() {
        for cut in 0..40 {
            let steps = login("agent", "secret", cut);
            assert!(
                matches!(steps.last(), Some(Step::Authenticated(a)) if a.database == "bank"),
                "cut {cut}: {steps:?}"
            );
        }
    }

    #[test]
    fn wrong_secret_and_unknown_user_fail_alike() {
        for (user, secret) in [("agent", "nope"), ("nobody", "secret")] {
            let steps = login(user, secret, 3);
            let Some(Step::Reject(e)) = steps.last() else {
                panic!("{steps:?}")
            };
            let (code, msg) = be::error_summary(&e[5..]);
            assert_eq!(code, "28P01");
            assert_eq!(
                msg,
                format!("password authentication failed for user \"{user}\"")
            );
        }
    }

    fn first_steps(tls: TlsOffer, bytes: &[u8]) -> Vec<Step> {
        let mut hs = ClientHandshake::new(store(), tls);
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(bytes), &mut steps);
        steps
    }

    fn rejected_with(steps: &[Step]) -> String {
        let Some(Step::Reject(e)) = steps.last() else {
            panic!("{steps:?}")
        };
        be::error_summary(&e[5..]).0
    }

    #[test]
    fn bytes_no_client_opens_with_are_closed_on_without_a_word() {
        // An HTTP request, a Terminate sent before the start-up packet (node-postgres
        // does when ended mid-connect), lengths out of range, a cancel of the wrong
        // size: PostgreSQL only logs these, and answers nothing.
        let mut odd_cancel = fe::cancel_request(1, 2).to_vec();
        odd_cancel[3] = 20;
        odd_cancel.extend_from_slice(&[0; 4]);
        for bytes in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &b"X\0\0\0\x04"[..],
            &[0, 0, 0, 7, 0, 3, 0, 0][..],
            &[0, 0, 0x27, 0x15][..],
            &odd_cancel[..],
        ] {
            let steps = first_steps(TlsOffer::None, bytes);
            assert!(
                matches!(&steps[..], [Step::Close(_)]),
                "{bytes:?}: {steps:?}"
            );
        }
    }

    #[test]
    fn start_up_refusals_are_postgresqls() {
        // Another protocol: 0A000, PostgreSQL's message.
        let steps = first_steps(TlsOffer::None, &[0, 0, 0, 8, 0, 9, 0, 0]);
        let Some(Step::Reject(e)) = steps.last() else {
            panic!("{steps:?}")
        };
        assert_eq!(
            be::error_summary(&e[5..]),
            (
                "0A000".into(),
                "unsupported frontend protocol 9.0: server supports 3.0 to 3.0".into()
            )
        );
        // A second SSLRequest after the first was answered.
        let mut hs = ClientHandshake::new(store(), TlsOffer::None);
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(&fe::ssl_request()[..]), &mut steps);
        hs.on_bytes(&mut BytesMut::from(&fe::ssl_request()[..]), &mut steps);
        assert!(matches!(&steps[0], Step::Send(n) if &n[..] == b"N"));
        assert_eq!(rejected_with(&steps), "0A000");
        // A start-up packet whose terminator is not its last byte.
        let mut p = startup("agent");
        p.extend_from_slice(b"x");
        let len = (p.len() as i32).to_be_bytes();
        p[..4].copy_from_slice(&len);
        assert_eq!(rejected_with(&first_steps(TlsOffer::None, &p)), "08P01");
    }

    #[test]
    fn a_newer_minor_version_and_extensions_are_negotiated_down() {
        let mut hs = ClientHandshake::new(store(), TlsOffer::None);
        let mut p = BytesMut::new();
        p.put_i32(0);
        p.put_i32((3 << 16) | 2);
        p.put_slice(b"user\0agent\0_pq_.test_ext\0on\0\0");
        let len = p.len() as i32;
        p[..4].copy_from_slice(&len.to_be_bytes());
        let mut steps = Vec::new();
        hs.on_bytes(&mut p, &mut steps);
        let [Step::Send(v), Step::Send(auth)] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(
            &v[..],
            &be::negotiate_protocol_version(0, &["_pq_.test_ext".into()])[..]
        );
        assert_eq!(auth[0], be::AUTHENTICATION);
        // A plain 3.0 start-up gets no negotiation.
        let mut hs = ClientHandshake::new(store(), TlsOffer::None);
        let mut steps = Vec::new();
        hs.on_bytes(&mut startup("agent"), &mut steps);
        assert!(matches!(&steps[..], [Step::Send(a)] if a[0] == be::AUTHENTICATION));
    }

    #[test]
    fn ssl_request_is_answered() {
        let mut hs = ClientHandshake::new(store(), TlsOffer::Optional);
        let mut steps = Vec::new();
        let mut b = BytesMut::new();
        b.put_slice(&fe::ssl_request());
        hs.on_bytes(&mut b, &mut steps);
        assert!(matches!(&steps[..], [Step::Send(s), Step::StartTls] if &s[..] == b"S"));
        let mut hs = ClientHandshake::new(store(), TlsOffer::None);
        let mut steps = Vec::new();
        let mut b = BytesMut::from(&fe::ssl_request()[..]);
        hs.on_bytes(&mut b, &mut steps);
        hs.on_bytes(&mut startup("agent"), &mut steps);
        assert!(matches!(&steps[..], [Step::Send(s), Step::Send(_)] if &s[..] == b"N"));
        // A start-up packet sent before the answer was read: refused, as by PostgreSQL.
        let mut b = BytesMut::from(&fe::ssl_request()[..]);
        b.extend_from_slice(&startup("agent"));
        let steps = first_steps(TlsOffer::None, &b);
        assert!(matches!(&steps[0], Step::Send(n) if &n[..] == b"N"));
        assert_eq!(rejected_with(&steps), "08P01");
    }
}
