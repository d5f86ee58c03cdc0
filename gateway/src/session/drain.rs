//! What a gateway that is shutting down tells clients, as PostgreSQL tells them.
//!
//! - A connection that arrives during the drain is answered after its start-up packet
//!   with FATAL 57P03 `the database system is shutting down` ([`DrainGreeter`]): GSS
//!   encryption is declined and TLS negotiated as usual first, so the client reads the
//!   refusal whatever its `sslmode`; a cancel request is still honoured, since the
//!   statement it stops may be what holds the drain up.
//! - A session still open when the grace period ends gets FATAL 57P01 `terminating
//!   connection due to administrator command` ([`terminating`]) before its socket closes.

use bytes::{Bytes, BytesMut};

use crate::protocol::backend::{Severity, error_response};
use crate::protocol::frame::split_startup_packet;
use crate::protocol::frontend::StartupPacket;
use crate::protocol::sqlstate;

pub const SHUTTING_DOWN: &str = "the database system is shutting down";
pub const TERMINATING: &str = "terminating connection due to administrator command";

/// FATAL 57P03, PostgreSQL's answer to a start-up during shutdown.
pub fn shutting_down() -> Bytes {
    error_response(
        Severity::Fatal,
        sqlstate::CANNOT_CONNECT_NOW,
        SHUTTING_DOWN,
        Some("The gateway is draining: open sessions may finish, new ones are refused."),
        Some("Connect again once the gateway is back."),
    )
}

/// FATAL 57P01, sent to the sessions a shutdown ends.
pub fn terminating() -> Bytes {
    error_response(
        Severity::Fatal,
        sqlstate::ADMIN_SHUTDOWN,
        TERMINATING,
        Some(
            "The gateway is shutting down; a statement in progress was cancelled and an open transaction rolled back.",
        ),
        Some("Connect again once the gateway is back."),
    )
}

/// What the driver does next with a connection that arrived during the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStep {
    /// Write these bytes and go on reading.
    Send(Bytes),
    /// Answer `S` and run the TLS handshake, then call [`DrainGreeter::tls_established`].
    StartTls,
    /// Forward this cancel request, then close.
    Cancel { pid: i32, secret: i32 },
    /// Write `frame` (FATAL 57P03) and close; `user` is who the client said it was.
    Refuse { frame: Bytes, user: Option<String> },
    /// Close without a word: what arrived is not a PostgreSQL start-up.
    Close(&'static str),
}

/// Reads start-up packets until it can refuse the connection.
#[derive(Debug)]
pub struct DrainGreeter {
    tls_offered: bool,
    tls_done: bool,
}

impl DrainGreeter {
    pub fn new(tls_offered: bool) -> Self {
        DrainGreeter {
            tls_offered,
            tls_done: false,
        }
    }

    pub fn tls_established(&mut self) {
        self.tls_done = true;
    }

    /// The next step for what `buf` holds; `None` until a whole packet has arrived.
    pub fn on_bytes(&mut self, buf: &mut BytesMut) -> Option<DrainStep> {
        let packet = match split_startup_packet(buf) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(_) => return Some(DrainStep::Close("malformed start-up packet")),
        };
        Some(match StartupPacket::parse(&packet) {
            Ok(StartupPacket::SslRequest) if self.tls_offered && !self.tls_done => {
                // Bytes sent before the handshake would be read as TLS records.
                if !buf.is_empty() {
                    return Some(DrainStep::Close("data after SSLRequest"));
                }
                DrainStep::StartTls
            }
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                DrainStep::Send(Bytes::from_static(b"N"))
            }
            Ok(StartupPacket::Cancel { pid, secret }) => DrainStep::Cancel { pid, secret },
            Ok(StartupPacket::Startup { params, .. }) => DrainStep::Refuse {
                frame: shutting_down(),
                user: params
                    .into_iter()
                    .find(|(k, _)| k == "user")
                    .map(|(_, v)| v),
            },
            // An older protocol or a garbled packet: PostgreSQL would refuse it too.
            Err(_) => DrainStep::Refuse {
                frame: shutting_down(),
                user: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::error_summary;

    fn startup(params: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut b)
            .unwrap();
        b
    }

    fn code(packet: i32) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&packet.to_be_bytes());
        b
    }

    #[test]
    fn a_startup_is_refused_with_57p03_and_who_asked() {
        let mut g = DrainGreeter::new(false);
        let mut buf = code(80877103);
        assert_eq!(
            g.on_bytes(&mut buf),
            Some(DrainStep::Send(Bytes::from_static(b"N")))
        );
        let whole = startup(&[("user", "agent"), ("database", "app")]);
        let mut buf = BytesMut::from(&whole[..whole.len() - 3]);
        assert_eq!(g.on_bytes(&mut buf), None, "half a packet: wait for more");
        buf.extend_from_slice(&whole[whole.len() - 3..]);
        let Some(DrainStep::Refuse { frame, user }) = g.on_bytes(&mut buf) else {
            panic!("not refused");
        };
        assert_eq!(user.as_deref(), Some("agent"));
        assert_eq!(frame[0], b'E');
        let (state, message) = error_summary(&frame[5..]);
        assert_eq!((state.as_str(), message.as_str()), ("57P03", SHUTTING_DOWN));
    }

    #[test]
    fn tls_is_negotiated_when_offered_and_cancels_go_through() {
        let mut g = DrainGreeter::new(true);
        assert_eq!(g.on_bytes(&mut code(80877103)), Some(DrainStep::StartTls));
        g.tls_established();
        assert_eq!(
            g.on_bytes(&mut code(80877103)),
            Some(DrainStep::Send(Bytes::from_static(b"N")))
        );
        assert_eq!(
            g.on_bytes(&mut code(80877104)),
            Some(DrainStep::Send(Bytes::from_static(b"N")))
        );
        let mut cancel = BytesMut::new();
        cancel.extend_from_slice(&16i32.to_be_bytes());
        cancel.extend_from_slice(&80877102i32.to_be_bytes());
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            g.on_bytes(&mut cancel),
            Some(DrainStep::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut g = DrainGreeter::new(true);
        assert!(matches!(
            g.on_bytes(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..])),
            Some(DrainStep::Close(_))
        ));
        for len in 0..64u8 {
            let mut b = BytesMut::from(&[0, 0, 0, len, 0, 3, 0, 0, 1, 2, 3][..]);
            let _ = DrainGreeter::new(false).on_bytes(&mut b);
        }
        let terminating = terminating();
        let (state, message) = error_summary(&terminating[5..]);
        assert_eq!((state.as_str(), message.as_str()), ("57P01", TERMINATING));
    }
}
