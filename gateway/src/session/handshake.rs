//! The agent's side of start-up, sans-IO.
//!
//! Fed the bytes an agent sends before its session is established, it answers
//! `SSLRequest`/`GSSENCRequest`, recognises `CancelRequest`, reads the start-up packet
//! and authenticates the agent: SCRAM-SHA-256 for a configured static key; otherwise,
//! when `[[oidc]]` issuers are configured, an access token, given as the password (only
//! inside TLS) or through OAUTHBEARER. Checking a token needs the issuer's keys, which
//! may have to be fetched: the handshake then returns [`Step::VerifyToken`] and waits in
//! a state of its own until the driver calls [`ClientHandshake::token_checked`].
//!
//! Every failure is a FATAL `ErrorResponse` with the right SQLSTATE; a SCRAM failure says
//! nothing about whether the name or the secret was wrong.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::auth::{
    Identity, IdentityStore, ScramError, ScramServer, StaticKey, oauthbearer, scram,
};
use crate::protocol::backend::{self as be, Severity, error_response};
use crate::protocol::frame::{split_frame, split_startup_packet};
use crate::protocol::frontend::{self as fe, StartupPacket};
use crate::protocol::{Cursor, ProtocolError, sqlstate};

/// Handshake messages are small, except a password that is an access token: real ones are
/// 2-7 kB, and some carry many groups. Larger than this is hostile.
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write these bytes to the agent.
    Send(Bytes),
    /// After writing what came before, switch the connection to TLS (server side).
    StartTls,
    /// This connection is a cancel request; act on it and close.
    Cancel { pid: i32, secret: i32 },
    /// Check this access token (`mechanism`: how it was given) and call
    /// [`ClientHandshake::token_checked`] with the result.
    VerifyToken {
        token: String,
        mechanism: &'static str,
    },
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

impl Agent {
    /// The `application_name` the agent's start-up gave, if any.
    pub fn application_name(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.as_str())
    }
}

/// What start-up has learnt while SCRAM runs.
#[derive(Debug)]
struct Login {
    user: String,
    /// `None` for an unknown name: the exchange runs against a decoy and fails.
    key: Option<StaticKey>,
    scram: ScramServer,
    database: String,
    params: Vec<(String, String)>,
}

/// What start-up has learnt while a token login runs.
#[derive(Debug)]
struct TokenLogin {
    user: String,
    database: String,
    params: Vec<(String, String)>,
}

#[derive(Debug)]
enum State {
    AwaitStartup,
    AwaitSaslInitial(Login),
    AwaitSaslFinal(Login),
    /// A cleartext password (the token) was asked for.
    AwaitPassword(TokenLogin),
    /// OAUTHBEARER was offered; its initial response is next.
    AwaitOauthInitial(TokenLogin),
    /// The client sent no initial response and was sent an empty challenge.
    AwaitOauthResponse(TokenLogin),
    /// The driver is checking the token ([`Step::VerifyToken`]).
    AwaitToken(TokenLogin, &'static str),
    /// OAUTHBEARER failed (or was a discovery request) and its error reply was sent: the
    /// client's lone 0x01 ends it. `Some`: why the token was refused.
    AwaitOauthEnd(TokenLogin, Option<String>),
    Done,
}

/// How agents without a static key log in: with an access token.
#[derive(Debug, Clone, Default)]
pub struct TokenAuth {
    /// `[[oidc]]` issuers are configured.
    pub enabled: bool,
    /// Ask for the token with PostgreSQL 18's OAUTHBEARER instead of as a password.
    pub oauthbearer: bool,
    /// A token may be sent outside TLS (a loopback-only listener whose configuration
    /// says so).
    pub plaintext: bool,
    /// For OAUTHBEARER's discovery reply: the issuer's discovery document and the scope.
    pub discovery: Option<(String, String)>,
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
    tokens: TokenAuth,
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
        Self::with_tokens(identities, tls, TokenAuth::default())
    }

    pub fn with_tokens(identities: Arc<IdentityStore>, tls: TlsOffer, tokens: TokenAuth) -> Self {
        Self {
            identities,
            tokens,
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
                        | Step::VerifyToken { .. }
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
                let (mechanism, data) = sasl_initial(frame.body())?;
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
                let data = data.ok_or(malformed("SCRAM needs an initial response"))?;
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
                    key,
                    scram,
                    database,
                    params,
                } = &mut login;
                match (scram.client_final(frame.body()), key.take()) {
                    (Ok(_), Some(key)) if let Some(why) = key.refusal(now_ms()) => {
                        steps.push(Step::Reject(error_response(
                            Severity::Fatal,
                            sqlstate::INVALID_AUTHORIZATION,
                            &format!("portcullis refused the login: {why}"),
                            None,
                            Some("Ask an operator for a new key (portcullis hash-secret) or a token login."),
                        )));
                    }
                    (Ok(reply), Some(key)) => {
                        steps.push(Step::Send(be::authentication_sasl_final(&reply)));
                        steps.push(Step::Send(be::authentication_ok()));
                        steps.push(Step::Authenticated(Box::new(Agent {
                            identity: key.identity,
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
            State::AwaitPassword(login) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitPassword(login);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                let mut c = Cursor::new(frame.body());
                let password = c.cstr().ok_or(malformed("password"))?;
                if !c.remaining().is_empty() {
                    return Err(malformed("password"));
                }
                let Ok(token) = std::str::from_utf8(password) else {
                    steps.push(Step::Reject(token_failed(
                        &login.user,
                        "the token is not text",
                    )));
                    return Ok(false);
                };
                let token = token.trim().to_owned();
                if token.is_empty() {
                    steps.push(Step::Reject(token_failed(
                        &login.user,
                        "no token was given",
                    )));
                    return Ok(false);
                }
                steps.push(Step::VerifyToken {
                    token,
                    mechanism: TOKEN_AS_PASSWORD,
                });
                self.state = State::AwaitToken(login, TOKEN_AS_PASSWORD);
                Ok(false)
            }
            State::AwaitOauthInitial(login) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitOauthInitial(login);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                let (mechanism, data) = sasl_initial(frame.body())?;
                if mechanism != oauthbearer::MECHANISM.as_bytes() {
                    steps.push(Step::Reject(error_response(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "client selected an invalid SASL authentication mechanism",
                        None,
                        None,
                    )));
                    return Ok(false);
                }
                let Some(data) = data else {
                    steps.push(Step::Send(be::authentication_sasl_continue(b"")));
                    self.state = State::AwaitOauthResponse(login);
                    return Ok(true);
                };
                self.oauth_initial(login, data, steps)
            }
            State::AwaitOauthResponse(login) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitOauthResponse(login);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                self.oauth_initial(login, frame.body(), steps)
            }
            State::AwaitOauthEnd(login, failed) => {
                let Some(frame) = split_frame(buf, MAX_HANDSHAKE_MESSAGE)? else {
                    self.state = State::AwaitOauthEnd(login, failed);
                    return Ok(false);
                };
                expect_password(frame.tag())?;
                if !oauthbearer::is_kvsep(frame.body()) {
                    return Err(malformed(
                        "OAUTHBEARER: the client did not send a kvsep response",
                    ));
                }
                match failed {
                    Some(why) => steps.push(Step::Reject(oauth_failed(&login.user, &why))),
                    // As PostgreSQL: a discovery request ends without an error.
                    None => steps.push(Step::Close(
                        "answered an OAUTHBEARER discovery request".into(),
                    )),
                }
                Ok(false)
            }
            // Nothing is read while the token is checked.
            State::AwaitToken(login, mechanism) => {
                self.state = State::AwaitToken(login, mechanism);
                Ok(false)
            }
            State::Done => Ok(false),
        }
    }

    fn oauth_initial(
        &mut self,
        login: TokenLogin,
        data: &[u8],
        steps: &mut Vec<Step>,
    ) -> Result<bool, ProtocolError> {
        match oauthbearer::parse_initial(data)? {
            oauthbearer::Initial::Token(token) => {
                steps.push(Step::VerifyToken {
                    token: token.to_owned(),
                    mechanism: oauthbearer::MECHANISM_AUDIT,
                });
                self.state = State::AwaitToken(login, oauthbearer::MECHANISM_AUDIT);
                Ok(false)
            }
            oauthbearer::Initial::Discovery => {
                steps.push(Step::Send(be::authentication_sasl_continue(
                    &self.discovery_reply(),
                )));
                self.state = State::AwaitOauthEnd(login, None);
                Ok(true)
            }
        }
    }

    fn discovery_reply(&self) -> Vec<u8> {
        let (url, scope) = self
            .tokens
            .discovery
            .clone()
            .unwrap_or_else(|| (String::new(), "openid".into()));
        oauthbearer::error_reply(&url, &scope)
    }

    /// The driver checked the token [`Step::VerifyToken`] asked about: `Ok` with the
    /// identity it stands for, or why it was refused.
    pub fn token_checked(
        &mut self,
        result: Result<Identity, crate::auth::oidc::TokenError>,
        steps: &mut Vec<Step>,
    ) {
        let State::AwaitToken(mut login, mechanism) =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return;
        };
        match result {
            Ok(identity) => {
                steps.push(Step::Send(be::authentication_ok()));
                steps.push(Step::Authenticated(Box::new(Agent {
                    identity: Arc::new(identity),
                    database: std::mem::take(&mut login.database),
                    params: std::mem::take(&mut login.params),
                })));
            }
            Err(e) if e.is_transient() => steps.push(Step::Reject(error_response(
                Severity::Fatal,
                sqlstate::REJECTED_CONNECTION,
                &format!("portcullis cannot check tokens right now: {e}"),
                None,
                Some("The identity provider could not be reached; retry in a moment, or ask an operator."),
            ))),
            Err(e) if mechanism == oauthbearer::MECHANISM_AUDIT => {
                steps.push(Step::Send(be::authentication_sasl_continue(
                    &self.discovery_reply(),
                )));
                self.state = State::AwaitOauthEnd(login, Some(e.to_string()));
            }
            Err(e) => steps.push(Step::Reject(token_failed(&login.user, &e.to_string()))),
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
                let (key, verifier) = self.identities.verifier_for(&user);
                // As PostgreSQL 15: a client asking for a newer minor version or for
                // extensions is told what it gets (3.0, none of them), then goes on.
                if minor > 0 || !extensions.is_empty() {
                    steps.push(Step::Send(be::negotiate_protocol_version(0, &extensions)));
                }
                self.user = Some(user.clone());
                if key.is_none() && self.tokens.enabled {
                    if !self.encrypted && !self.tokens.plaintext {
                        steps.push(Step::Reject(error_response(
                            Severity::Fatal,
                            sqlstate::INVALID_AUTHORIZATION,
                            "portcullis accepts access tokens only over TLS",
                            Some("A token sent in clear text could be read off the network and replayed until it expires."),
                            Some("Connect with sslmode=require (or verify-full), or use a static key."),
                        )));
                        return;
                    }
                    let login = TokenLogin {
                        user,
                        database,
                        params: rest,
                    };
                    if self.tokens.oauthbearer {
                        steps.push(Step::Send(be::authentication_sasl(&[
                            oauthbearer::MECHANISM,
                        ])));
                        self.state = State::AwaitOauthInitial(login);
                    } else {
                        steps.push(Step::Send(be::authentication_cleartext_password()));
                        self.state = State::AwaitPassword(login);
                    }
                    return;
                }
                steps.push(Step::Send(be::authentication_sasl(&[scram::MECHANISM])));
                self.state = State::AwaitSaslInitial(Login {
                    user,
                    key,
                    scram: ScramServer::new(verifier),
                    database,
                    params: rest,
                });
            }
        }
    }
}

/// A `SASLInitialResponse` body: the mechanism and its initial response (`None`: the
/// client sent none, length -1).
fn sasl_initial(body: &[u8]) -> Result<(&[u8], Option<&[u8]>), ProtocolError> {
    let mut c = Cursor::new(body);
    let mechanism = c.cstr().ok_or(malformed("mechanism"))?;
    let len = c.i32().ok_or(malformed("length"))?;
    let data = c.remaining();
    if len == -1 && data.is_empty() {
        return Ok((mechanism, None));
    }
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err(malformed("SASL data length"));
    }
    Ok((mechanism, Some(data)))
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

/// How audit records name a token given as the password.
pub const TOKEN_AS_PASSWORD: &str = "token-password";

fn now_ms() -> u64 {
    crate::approvals::model::now_ms()
}

fn token_failed(user: &str, why: &str) -> Bytes {
    error_response(
        Severity::Fatal,
        sqlstate::INVALID_AUTHORIZATION,
        &format!("token authentication failed for user \"{user}\""),
        Some(why),
        Some("Connect with a fresh access token from your identity provider as the password."),
    )
}

fn oauth_failed(user: &str, why: &str) -> Bytes {
    error_response(
        Severity::Fatal,
        sqlstate::INVALID_AUTHORIZATION,
        &format!("OAuth bearer authentication failed for user \"{user}\""),
        Some(why),
        None,
    )
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
        Arc::new(IdentityStore::new([StaticKey::new(
            "agent",
            vec![],
            Verifier::generate("secret", 16),
        )]))
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

    fn tokens(oauthbearer: bool) -> TokenAuth {
        TokenAuth {
            enabled: true,
            oauthbearer,
            plaintext: false,
            discovery: Some((
                "https://idp/.well-known/openid-configuration".into(),
                "openid".into(),
            )),
        }
    }

    fn token_identity() -> Identity {
        Identity {
            name: "svc".into(),
            roles: vec!["agent".into()],
            method: crate::auth::Method::Token {
                issuer: "https://idp".into(),
                mechanism: TOKEN_AS_PASSWORD,
            },
            expires_at_ms: Some(1),
        }
    }

    fn password(p: &str) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::password_message(p.as_bytes(), &mut b).unwrap();
        b
    }

    #[test]
    fn a_token_is_asked_for_only_inside_tls_and_checked_by_the_driver() {
        // Outside TLS: refused before any token is sent.
        let mut hs = ClientHandshake::with_tokens(store(), TlsOffer::Optional, tokens(false));
        let mut steps = Vec::new();
        hs.on_bytes(&mut startup("svc"), &mut steps);
        assert_eq!(rejected_with(&steps), "28000");
        // Inside TLS: a cleartext password request, then the check, then AuthenticationOk.
        let mut hs = ClientHandshake::with_tokens(store(), TlsOffer::Optional, tokens(false));
        hs.tls_established();
        let mut steps = Vec::new();
        hs.on_bytes(&mut startup("anyone"), &mut steps);
        assert!(
            matches!(&steps[..], [Step::Send(r)] if r[..] == be::authentication_cleartext_password()[..])
        );
        let big = "t".repeat(20_000);
        let mut steps = Vec::new();
        let mut b = password(&big);
        // Arriving in pieces, as a 20 kB token does.
        let mut first = b.split_to(5000);
        hs.on_bytes(&mut first, &mut steps);
        assert!(steps.is_empty(), "{steps:?}");
        first.extend_from_slice(&b);
        hs.on_bytes(&mut first, &mut steps);
        let [Step::VerifyToken { token, mechanism }] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!((token.len(), *mechanism), (20_000, TOKEN_AS_PASSWORD));
        let mut steps = Vec::new();
        hs.token_checked(Ok(token_identity()), &mut steps);
        assert!(
            matches!(&steps[..], [Step::Send(_), Step::Authenticated(a)] if a.identity.name == "svc" && a.database == "bank")
        );
        // A refused token: FATAL 28000 naming why.
        let mut hs = ClientHandshake::with_tokens(store(), TlsOffer::Optional, tokens(false));
        hs.tls_established();
        let mut steps = Vec::new();
        hs.on_bytes(&mut startup("svc"), &mut steps);
        hs.on_bytes(&mut password("x.y.z"), &mut steps);
        let mut steps = Vec::new();
        hs.token_checked(Err(crate::auth::oidc::TokenError::Signature), &mut steps);
        assert_eq!(rejected_with(&steps), "28000");
        // A static key still logs in with SCRAM on the same gateway.
        let mut hs = ClientHandshake::with_tokens(store(), TlsOffer::Optional, tokens(false));
        let mut steps = Vec::new();
        hs.on_bytes(&mut startup("agent"), &mut steps);
        assert!(
            matches!(&steps[..], [Step::Send(r)] if r[..] == be::authentication_sasl(&[scram::MECHANISM])[..])
        );
    }

    #[test]
    fn oauthbearer_answers_discovery_and_failures_as_postgresql_18() {
        let sasl_initial = |data: &[u8]| {
            let mut b = BytesMut::new();
            frontend::sasl_initial_response(oauthbearer::MECHANISM, data, &mut b).unwrap();
            b
        };
        let kvsep = || {
            let mut b = BytesMut::new();
            frontend::sasl_response(b"\x01", &mut b).unwrap();
            b
        };
        let begin = || {
            let mut hs = ClientHandshake::with_tokens(store(), TlsOffer::Optional, tokens(true));
            hs.tls_established();
            let mut steps = Vec::new();
            hs.on_bytes(&mut startup("svc"), &mut steps);
            assert!(
                matches!(&steps[..], [Step::Send(r)] if r[..] == be::authentication_sasl(&[oauthbearer::MECHANISM])[..])
            );
            hs
        };
        // Discovery: the issuer and scope, then a silent close after the kvsep.
        let mut hs = begin();
        let mut steps = Vec::new();
        hs.on_bytes(&mut sasl_initial(b"n,,\x01auth=\x01\x01"), &mut steps);
        let [Step::Send(cont)] = &steps[..] else {
            panic!("{steps:?}")
        };
        let json: serde_json::Value = serde_json::from_slice(&cont[9..]).unwrap();
        assert_eq!(json["status"], "invalid_token");
        assert_eq!(
            json["openid-configuration"],
            "https://idp/.well-known/openid-configuration"
        );
        let mut steps = Vec::new();
        hs.on_bytes(&mut kvsep(), &mut steps);
        assert!(matches!(&steps[..], [Step::Close(_)]), "{steps:?}");
        // A good token: AuthenticationOk with no SASL final message.
        let mut hs = begin();
        let mut steps = Vec::new();
        hs.on_bytes(
            &mut sasl_initial(b"n,,\x01auth=Bearer a.b.c\x01\x01"),
            &mut steps,
        );
        assert!(matches!(&steps[..], [Step::VerifyToken { token, .. }] if token == "a.b.c"));
        let mut steps = Vec::new();
        hs.token_checked(Ok(token_identity()), &mut steps);
        assert!(
            matches!(&steps[..], [Step::Send(ok), Step::Authenticated(_)] if ok[..] == be::authentication_ok()[..])
        );
        // A bad one: the error reply, then FATAL 28000 after the kvsep.
        let mut hs = begin();
        let mut steps = Vec::new();
        hs.on_bytes(
            &mut sasl_initial(b"n,,\x01auth=Bearer a.b.c\x01\x01"),
            &mut steps,
        );
        let mut steps = Vec::new();
        hs.token_checked(Err(crate::auth::oidc::TokenError::Expired(0)), &mut steps);
        assert!(matches!(&steps[..], [Step::Send(c)] if c[0] == be::AUTHENTICATION));
        let mut steps = Vec::new();
        hs.on_bytes(&mut kvsep(), &mut steps);
        assert_eq!(rejected_with(&steps), "28000");
    }

    #[test]
    fn a_disabled_or_expired_key_is_refused_after_its_secret_is_proven() {
        for (disabled, expires) in [(true, None), (false, Some(1))] {
            let mut key = StaticKey::new("agent", vec![], Verifier::generate("secret", 16));
            key.disabled = disabled;
            Arc::make_mut(&mut key.identity).expires_at_ms = expires;
            let store = Arc::new(IdentityStore::new([key]));
            let mut hs = ClientHandshake::new(store, TlsOffer::None);
            let mut all = Vec::new();
            hs.on_bytes(&mut startup("agent"), &mut all);
            let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
            let mut b = BytesMut::new();
            frontend::sasl_initial_response(scram::MECHANISM, client.message(), &mut b).unwrap();
            hs.on_bytes(&mut b, &mut all);
            let Some(Step::Send(cont)) = all.last() else {
                panic!("{all:?}")
            };
            client.update(&cont[9..]).unwrap();
            let mut b = BytesMut::new();
            frontend::sasl_response(client.message(), &mut b).unwrap();
            hs.on_bytes(&mut b, &mut all);
            let Some(Step::Reject(e)) = all.last() else {
                panic!("{all:?}")
            };
            let (code, msg) = be::error_summary(&e[5..]);
            assert_eq!(code, "28000");
            assert!(
                msg.contains(if disabled { "disabled" } else { "expired" }),
                "{msg}"
            );
        }
    }
}
