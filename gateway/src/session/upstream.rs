//! The gateway's own start-up against the real server, sans-IO.
//!
//! The gateway logs in with its credential (SCRAM-SHA-256, md5 or, over TLS only,
//! cleartext), collects the server's `ParameterStatus` frames to replay to the agent and
//! keeps the server's cancel key to itself. Authentication failures are reported without
//! the server's text, which would name the gateway's database user. When the session
//! runs as an upstream role (`crate::roles`), its `SET ROLE` is part of start-up: the
//! session is ready only once the server has taken it.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::frontend;

use crate::auth::scram::MECHANISM as SCRAM_SHA_256;
use crate::auth::{SaltedCache, ScramClient};

use crate::protocol::backend as be;
use crate::protocol::frame::split_frame;
use crate::protocol::{Cursor, ProtocolError};

const MAX_STARTUP_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the database rejected the gateway's credential ({sqlstate})")]
    AuthRejected { sqlstate: String, message: String },
    /// An error the agent may see as it is (e.g. the database does not exist).
    #[error("the database refused the session: {message} ({sqlstate})")]
    Refused {
        frame: Bytes,
        sqlstate: String,
        message: String,
    },
    #[error("the database asked for {0}, which the gateway does not support")]
    UnsupportedAuth(&'static str),
    #[error(
        "the database asked for a cleartext password over an unencrypted connection; refusing to send it"
    )]
    CleartextWithoutTls,
    #[error("SCRAM exchange with the database failed: {0}")]
    Scram(String),
    #[error("the database refused SET ROLE \"{role}\": {message} ({sqlstate})")]
    SetRole {
        role: String,
        sqlstate: String,
        message: String,
    },
    #[error("protocol error from the database: {0}")]
    Protocol(#[from] ProtocolError),
}

/// What the driver does next.
#[derive(Debug)]
pub enum UpStep {
    Send(Bytes),
    /// Start-up done; the session can relay.
    Ready(Box<UpstreamSession>),
}

/// What start-up learnt about the upstream session.
#[derive(Debug, Default)]
pub struct UpstreamSession {
    /// `ParameterStatus` frames, as the server sent them.
    pub parameter_status: Vec<Bytes>,
    /// The server's cancel key (`pid`, `secret`).
    pub cancel_key: Option<(i32, i32)>,
    /// Notices sent during start-up.
    pub notices: Vec<Bytes>,
}

enum Auth {
    None,
    Scram(Box<ScramClient>),
}

pub struct UpstreamHandshake {
    user: String,
    password: String,
    encrypted: bool,
    auth: Auth,
    session: UpstreamSession,
    authenticated: bool,
    cache: Arc<SaltedCache>,
    /// The upstream role to switch to once logged in.
    role: Option<String>,
    /// `SET ROLE` is sent; the next `ReadyForQuery` ends start-up.
    setting_role: bool,
}

impl UpstreamHandshake {
    pub fn new(user: &str, password: &str, encrypted: bool, cache: Arc<SaltedCache>) -> Self {
        Self {
            cache,
            user: user.to_owned(),
            password: password.to_owned(),
            encrypted,
            auth: Auth::None,
            session: UpstreamSession::default(),
            authenticated: false,
            role: None,
            setting_role: false,
        }
    }

    /// Runs `SET ROLE role` after the login, before the session counts as ready.
    pub fn with_role(mut self, role: Option<&str>) -> Self {
        self.role = role.map(str::to_owned);
        self
    }

    /// The start-up packet: the gateway's user, the agent's database and parameters.
    pub fn startup_message(&self, database: &str, params: &[(String, String)]) -> Bytes {
        let mut all: Vec<(&str, &str)> = vec![("user", &self.user), ("database", database)];
        all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut b = BytesMut::new();
        frontend::startup_message(all, &mut b).expect("start-up parameters contain no NUL");
        b.freeze()
    }

    /// Consumes server bytes; appends what to send and, at the end, `Ready`.
    pub fn on_bytes(
        &mut self,
        buf: &mut BytesMut,
        steps: &mut Vec<UpStep>,
    ) -> Result<(), UpstreamError> {
        while let Some(frame) = split_frame(buf, MAX_STARTUP_MESSAGE)? {
            let body = frame.body();
            match frame.tag() {
                be::AUTHENTICATION => self.auth(body, steps)?,
                be::PARAMETER_STATUS => self.session.parameter_status.push(frame.into_bytes()),
                be::BACKEND_KEY_DATA => {
                    let mut c = Cursor::new(body);
                    self.session.cancel_key = c.i32().zip(c.i32());
                }
                be::NOTICE_RESPONSE => self.session.notices.push(frame.into_bytes()),
                be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::ERROR_RESPONSE if self.setting_role => {
                    let (sqlstate, message) = be::error_summary(body);
                    return Err(UpstreamError::SetRole {
                        role: self.role.clone().unwrap_or_default(),
                        sqlstate,
                        message,
                    });
                }
                be::COMMAND_COMPLETE if self.setting_role => {}
                be::ERROR_RESPONSE => {
                    let (sqlstate, message) = be::error_summary(body);
                    return Err(if !self.authenticated && sqlstate.starts_with("28") {
                        UpstreamError::AuthRejected { sqlstate, message }
                    } else {
                        UpstreamError::Refused {
                            frame: frame.into_bytes(),
                            sqlstate,
                            message,
                        }
                    });
                }
                be::READY_FOR_QUERY if !self.setting_role && self.role.is_some() => {
                    let sql = crate::roles::set_role_sql(self.role.as_deref().unwrap_or_default());
                    self.setting_role = true;
                    steps.push(UpStep::Send(crate::protocol::frontend::query(
                        sql.as_bytes(),
                    )));
                }
                be::READY_FOR_QUERY => {
                    steps.push(UpStep::Ready(Box::new(std::mem::take(&mut self.session))));
                    return Ok(());
                }
                tag => {
                    return Err(ProtocolError::Unexpected {
                        tag,
                        state: "upstream start-up",
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    fn auth(&mut self, body: &[u8], steps: &mut Vec<UpStep>) -> Result<(), UpstreamError> {
        let mut c = Cursor::new(body);
        let code = c.i32().ok_or(ProtocolError::Malformed {
            tag: be::AUTHENTICATION,
            what: "code",
        })?;
        let mut out = BytesMut::new();
        match code {
            0 => {
                self.authenticated = true;
                return Ok(());
            }
            3 => {
                if !self.encrypted {
                    return Err(UpstreamError::CleartextWithoutTls);
                }
                frontend::password_message(self.password.as_bytes(), &mut out)
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
            }
            5 => {
                let salt: [u8; 4] =
                    c.bytes(4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(ProtocolError::Malformed {
                            tag: be::AUTHENTICATION,
                            what: "md5 salt",
                        })?;
                let hash = md5_hash(self.user.as_bytes(), self.password.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
            }
            10 => {
                let mut offered = false;
                while let Some(m) = c.cstr() {
                    if m.is_empty() {
                        break;
                    }
                    offered |= m == SCRAM_SHA_256.as_bytes();
                }
                if !offered {
                    return Err(UpstreamError::UnsupportedAuth(
                        "a SASL mechanism other than SCRAM-SHA-256",
                    ));
                }
                let scram = ScramClient::new(&self.password);
                frontend::sasl_initial_response(SCRAM_SHA_256, &scram.client_first(), &mut out)
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                self.auth = Auth::Scram(Box::new(scram));
            }
            11 => {
                let Auth::Scram(scram) = &mut self.auth else {
                    return Err(UpstreamError::Scram("SASLContinue before SASL".into()));
                };
                let reply = scram
                    .server_first(c.remaining(), &self.cache)
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                frontend::sasl_response(&reply, &mut out)
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
            }
            12 => {
                let Auth::Scram(mut scram) = std::mem::replace(&mut self.auth, Auth::None) else {
                    return Err(UpstreamError::Scram("SASLFinal before SASL".into()));
                };
                // Verifies the server's signature: a server that does not know the
                // gateway's secret cannot impersonate the database.
                scram
                    .server_final(c.remaining())
                    .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                return Ok(());
            }
            2 => return Err(UpstreamError::UnsupportedAuth("Kerberos")),
            7 | 8 => return Err(UpstreamError::UnsupportedAuth("GSSAPI")),
            9 => return Err(UpstreamError::UnsupportedAuth("SSPI")),
            _ => return Err(UpstreamError::UnsupportedAuth("an unknown method")),
        }
        steps.push(UpStep::Send(out.freeze()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn logged_in() -> Vec<u8> {
        let mut b = frame(be::AUTHENTICATION, &0i32.to_be_bytes());
        b.extend(frame(be::PARAMETER_STATUS, b"is_superuser\0off\0"));
        b.extend(frame(be::BACKEND_KEY_DATA, &[0, 0, 0, 7, 0, 0, 0, 9]));
        b.extend(frame(be::READY_FOR_QUERY, b"I"));
        b
    }

    fn handshake(role: Option<&str>) -> UpstreamHandshake {
        UpstreamHandshake::new("login", "pw", false, Arc::default()).with_role(role)
    }

    #[test]
    fn without_a_role_the_login_is_the_session() {
        let mut hs = handshake(None);
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(&logged_in()[..]), &mut steps)
            .unwrap();
        assert!(matches!(steps.as_slice(), [UpStep::Ready(s)] if s.cancel_key == Some((7, 9))));
    }

    #[test]
    fn a_role_is_set_before_the_session_is_ready() {
        let mut hs = handshake(Some("app \"write\""));
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(&logged_in()[..]), &mut steps)
            .unwrap();
        let [UpStep::Send(q)] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert_eq!(
            &q[..],
            &frame(b'Q', b"SET ROLE \"app \"\"write\"\"\"\0")[..]
        );
        steps.clear();
        let mut answer = frame(be::COMMAND_COMPLETE, b"SET\0");
        answer.extend(frame(be::PARAMETER_STATUS, b"is_superuser\0off\0"));
        answer.extend(frame(be::READY_FOR_QUERY, b"I"));
        hs.on_bytes(&mut BytesMut::from(&answer[..]), &mut steps)
            .unwrap();
        let [UpStep::Ready(s)] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert_eq!(s.parameter_status.len(), 2, "both reports reach the agent");
    }

    #[test]
    fn a_refused_set_role_ends_start_up() {
        let mut hs = handshake(Some("writer"));
        let mut steps = Vec::new();
        hs.on_bytes(&mut BytesMut::from(&logged_in()[..]), &mut steps)
            .unwrap();
        let mut answer = frame(
            be::ERROR_RESPONSE,
            b"SERROR\0C42501\0Mpermission denied to set role \"writer\"\0\0",
        );
        answer.extend(frame(be::READY_FOR_QUERY, b"I"));
        let e = hs
            .on_bytes(&mut BytesMut::from(&answer[..]), &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(&e, UpstreamError::SetRole { role, sqlstate, .. } if role == "writer" && sqlstate == "42501"),
            "{e}"
        );
    }
}
