//! Putting a server session back as a fresh login found it, before another agent gets
//! it, sans-IO.
//!
//! The reset is `DISCARD ALL` (prepared statements, portals, temporary tables, `SET`s,
//! `LISTEN`s, advisory locks, sequences' `currval`, cached plans, and the session's
//! authorization), then `SET ROLE` again when the pool's sessions run as an upstream
//! role (`DISCARD ALL` resets it with the other settings). Both go as separate simple
//! queries in one write: `DISCARD ALL` refuses to run inside a transaction block,
//! which a multi-statement query is.
//!
//! Anything but the expected answer (an error, a result, a transaction left open) means
//! the connection is closed rather than kept: a reset that cannot be shown to have
//! worked is not a reset.

use bytes::{Bytes, BytesMut};

use crate::protocol::backend as be;
use crate::protocol::frame::split_frame;
use crate::protocol::frontend as fe;
use crate::protocol::{ProtocolError, sqlstate};

/// Longest message a reset's answer may hold (its frames are all small).
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResetError {
    #[error("the server refused the reset: {message} ({sqlstate})")]
    Refused { sqlstate: String, message: String },
    #[error("the server answered the reset with an unexpected '{}' message", *.0 as char)]
    Unexpected(u8),
    #[error("the reset left the session in a transaction")]
    InTransaction,
    #[error("protocol error during the reset: {0}")]
    Protocol(#[from] ProtocolError),
}

/// One reset in progress.
#[derive(Debug)]
pub struct Reset {
    /// `ReadyForQuery` messages still to come, one per query sent.
    ready_left: u8,
    /// `ParameterStatus` frames the server sent along: the values it reports changed.
    parameter_status: Vec<Bytes>,
    failed: Option<ResetError>,
}

/// What a finished reset learnt.
#[derive(Debug, Default)]
pub struct ResetDone {
    pub parameter_status: Vec<Bytes>,
}

impl Reset {
    /// The reset and the bytes to send the server for it.
    pub fn start(role: Option<&str>) -> (Self, Bytes) {
        let mut out = BytesMut::new();
        out.extend_from_slice(&fe::query(b"DISCARD ALL"));
        let mut ready_left = 1;
        if let Some(role) = role {
            out.extend_from_slice(&fe::query(crate::roles::set_role_sql(role).as_bytes()));
            ready_left += 1;
        }
        (
            Self {
                ready_left,
                parameter_status: Vec::new(),
                failed: None,
            },
            out.freeze(),
        )
    }

    /// Consumes what the server sent. `Ok(Some(_))` once the last answer is in and every
    /// query worked; `Ok(None)` while more is due.
    pub fn on_bytes(&mut self, buf: &mut BytesMut) -> Result<Option<ResetDone>, ResetError> {
        while let Some(frame) = split_frame(buf, MAX_FRAME)? {
            match frame.tag() {
                be::COMMAND_COMPLETE | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {}
                be::PARAMETER_STATUS => self.parameter_status.push(frame.into_bytes()),
                be::ERROR_RESPONSE => {
                    let (code, message) = be::error_summary(frame.body());
                    // The first failure is the one worth reporting; the queries after it
                    // still answer and are read to the end.
                    self.failed.get_or_insert(ResetError::Refused {
                        sqlstate: if code.is_empty() {
                            sqlstate::INTERNAL_ERROR.to_owned()
                        } else {
                            code
                        },
                        message,
                    });
                }
                be::READY_FOR_QUERY => {
                    let status = be::ready_status(frame.body())?;
                    self.ready_left = self.ready_left.saturating_sub(1);
                    if self.ready_left > 0 {
                        continue;
                    }
                    if let Some(e) = self.failed.take() {
                        return Err(e);
                    }
                    if status != b'I' {
                        return Err(ResetError::InTransaction);
                    }
                    if !buf.is_empty() {
                        return Err(ResetError::Unexpected(buf[0]));
                    }
                    return Ok(Some(ResetDone {
                        parameter_status: std::mem::take(&mut self.parameter_status),
                    }));
                }
                other => return Err(ResetError::Unexpected(other)),
            }
        }
        Ok(None)
    }
}

/// Replaces the frames in `current` whose parameter a frame in `changed` reports again,
/// and appends the others.
pub fn apply_parameter_status(current: &mut Vec<Bytes>, changed: Vec<Bytes>) {
    for frame in changed {
        let Some((name, _)) = be::parameter(&frame) else {
            continue;
        };
        match current
            .iter_mut()
            .find(|f| be::parameter(f).is_some_and(|(n, _)| n == name))
        {
            Some(slot) => *slot = frame,
            None => current.push(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn done(tag: &[u8]) -> Vec<u8> {
        let mut b = tag.to_vec();
        b.push(0);
        frame(b'C', &b)
    }

    fn ready(s: u8) -> Vec<u8> {
        frame(b'Z', &[s])
    }

    #[test]
    fn a_role_is_set_again_after_the_discard() {
        let (_, out) = Reset::start(Some("app_read"));
        let mut want = fe::query(b"DISCARD ALL").to_vec();
        want.extend_from_slice(&fe::query(b"SET ROLE \"app_read\""));
        assert_eq!(&out[..], &want[..]);
        let (_, out) = Reset::start(None);
        assert_eq!(&out[..], &fe::query(b"DISCARD ALL")[..]);
    }

    #[test]
    fn the_answer_may_arrive_in_any_pieces() {
        let mut all = done(b"DISCARD ALL");
        all.extend(frame(b'S', b"application_name\0psql\0"));
        all.extend(ready(b'I'));
        all.extend(done(b"SET"));
        all.extend(ready(b'I'));
        for cut in 0..all.len() {
            let (mut r, _) = Reset::start(Some("x"));
            let mut buf = BytesMut::from(&all[..cut]);
            assert!(r.on_bytes(&mut buf).unwrap().is_none(), "cut at {cut}");
            buf.extend_from_slice(&all[cut..]);
            let d = r.on_bytes(&mut buf).unwrap().expect("done");
            assert_eq!(d.parameter_status.len(), 1);
        }
    }

    #[test]
    fn a_failed_query_keeps_nothing() {
        let (mut r, _) = Reset::start(Some("gone"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&done(b"DISCARD ALL"));
        buf.extend_from_slice(&ready(b'I'));
        buf.extend_from_slice(&frame(
            b'E',
            b"SERROR\0C22023\0Mrole \"gone\" does not exist\0\0",
        ));
        buf.extend_from_slice(&ready(b'I'));
        assert_eq!(
            r.on_bytes(&mut buf).unwrap_err(),
            ResetError::Refused {
                sqlstate: "22023".into(),
                message: "role \"gone\" does not exist".into()
            }
        );
    }

    #[test]
    fn rows_or_an_open_transaction_are_not_a_reset() {
        let (mut r, _) = Reset::start(None);
        let mut buf = BytesMut::from(&frame(b'D', b"\0\0")[..]);
        assert_eq!(
            r.on_bytes(&mut buf).unwrap_err(),
            ResetError::Unexpected(b'D')
        );
        let (mut r, _) = Reset::start(None);
        let mut buf = BytesMut::from(&ready(b'T')[..]);
        assert_eq!(r.on_bytes(&mut buf).unwrap_err(), ResetError::InTransaction);
        let (mut r, _) = Reset::start(None);
        let mut buf = BytesMut::from(&[b'Z', 0, 0, 0, 1][..]);
        assert!(r.on_bytes(&mut buf).is_err());
    }

    #[test]
    fn reported_parameters_replace_their_old_values() {
        let mut cur = vec![
            Bytes::from(frame(b'S', b"application_name\0old\0")),
            Bytes::from(frame(b'S', b"TimeZone\0UTC\0")),
        ];
        apply_parameter_status(
            &mut cur,
            vec![
                Bytes::from(frame(b'S', b"application_name\0psql\0")),
                Bytes::from(frame(b'S', b"is_superuser\0off\0")),
            ],
        );
        assert_eq!(cur.len(), 3);
        assert_eq!(be::parameter(&cur[0]).unwrap().1, b"psql");
        assert_eq!(be::parameter(&cur[2]).unwrap().0, b"is_superuser");
    }
}
