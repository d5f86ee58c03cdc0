//! Backend (server → client) messages the gateway builds or looks inside.

use bytes::{BufMut, Bytes};

use super::frame::{build, put_cstr};
use super::{Cursor, ProtocolError};

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const DATA_ROW: u8 = b'D';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const ERROR_RESPONSE: u8 = b'E';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const NO_DATA: u8 = b'n';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const PARAMETER_STATUS: u8 = b'S';
pub const PARSE_COMPLETE: u8 = b'1';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ROW_DESCRIPTION: u8 = b'T';

/// Error severity as PostgreSQL spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An `ErrorResponse` with the fields a person needs to act on it.
pub fn error_response(
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    error_response_at(severity, code, message, detail, hint, None)
}

/// [`error_response`] with a cursor position (`P`: 1-based, in characters of the
/// statement), which psql uses to point at the error.
pub fn error_response_at(
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
    position: Option<usize>,
) -> Bytes {
    let position = position.map(|p| p.to_string());
    build(ERROR_RESPONSE, |b| {
        for (field, value) in [
            (b'S', Some(severity.as_str())),
            (b'V', Some(severity.as_str())),
            (b'C', Some(code)),
            (b'M', Some(message)),
            (b'D', detail),
            (b'H', hint),
            (b'P', position.as_deref()),
        ] {
            if let Some(v) = value {
                b.put_u8(field);
                put_cstr(b, v.as_bytes());
            }
        }
        b.put_u8(0);
    })
}

/// A `NoticeResponse` (severity NOTICE, SQLSTATE 00000) of the gateway's own.
pub fn notice_response(message: &str, detail: Option<&str>) -> Bytes {
    build(NOTICE_RESPONSE, |b| {
        for (field, value) in [
            (b'S', Some("NOTICE")),
            (b'V', Some("NOTICE")),
            (b'C', Some("00000")),
            (b'M', Some(message)),
            (b'D', detail),
        ] {
            if let Some(v) = value {
                b.put_u8(field);
                put_cstr(b, v.as_bytes());
            }
        }
        b.put_u8(0);
    })
}

/// `NegotiateProtocolVersion`: the newest minor version of protocol 3 the gateway speaks
/// and the start-up options (`_pq_.*`) it does not know.
pub fn negotiate_protocol_version(minor: i32, unknown: &[String]) -> Bytes {
    build(NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(minor);
        b.put_i32(unknown.len() as i32);
        for o in unknown {
            put_cstr(b, o.as_bytes());
        }
    })
}

pub fn ready_for_query(status: u8) -> Bytes {
    build(READY_FOR_QUERY, |b| b.put_u8(status))
}

pub fn authentication_ok() -> Bytes {
    build(AUTHENTICATION, |b| b.put_i32(0))
}

/// `AuthenticationCleartextPassword`: the gateway asks for the password itself (an
/// access token; only inside TLS).
pub fn authentication_cleartext_password() -> Bytes {
    build(AUTHENTICATION, |b| b.put_i32(3))
}

pub fn authentication_sasl(mechanisms: &[&str]) -> Bytes {
    build(AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    })
}

pub fn authentication_sasl_continue(data: &[u8]) -> Bytes {
    build(AUTHENTICATION, |b| {
        b.put_i32(11);
        b.extend_from_slice(data);
    })
}

pub fn authentication_sasl_final(data: &[u8]) -> Bytes {
    build(AUTHENTICATION, |b| {
        b.put_i32(12);
        b.extend_from_slice(data);
    })
}

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    build(BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    })
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    build(PARAMETER_STATUS, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    })
}

/// `CopyOutResponse` for `columns` columns, all text or all binary (as the server sends
/// it: a binary COPY marks every column binary).
pub fn copy_out_response(binary: bool, columns: i16) -> Bytes {
    build(COPY_OUT_RESPONSE, |b| {
        b.put_u8(u8::from(binary));
        b.put_i16(columns);
        for _ in 0..columns {
            b.put_i16(i16::from(binary));
        }
    })
}

/// `CopyData` carrying `payload`.
pub fn copy_data(payload: &[u8]) -> Bytes {
    build(COPY_DATA, |b| b.put_slice(payload))
}

/// `DataRow` of `fields`, `None` being SQL NULL.
pub fn data_row(fields: &[Option<&[u8]>]) -> Bytes {
    build(DATA_ROW, |b| {
        b.put_i16(fields.len() as i16);
        for f in fields {
            match f {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    })
}

/// An `ErrorResponse` or `NoticeResponse` (`tag`) with these fields.
pub fn fields_message(tag: u8, fields: &[(u8, &[u8])]) -> Bytes {
    build(tag, |b| {
        for (code, value) in fields {
            b.put_u8(*code);
            put_cstr(b, value);
        }
        b.put_u8(0);
    })
}

/// `(process id, channel, payload)` of a `NotificationResponse` body.
pub fn notification_parts(body: &[u8]) -> Option<(i32, &[u8], &[u8])> {
    let mut c = Cursor::new(body);
    let pid = c.i32()?;
    let channel = c.cstr()?;
    let payload = c.cstr()?;
    Some((pid, channel, payload))
}

pub fn notification_response(pid: i32, channel: &[u8], payload: &[u8]) -> Bytes {
    build(NOTIFICATION_RESPONSE, |b| {
        b.put_i32(pid);
        put_cstr(b, channel);
        put_cstr(b, payload);
    })
}

/// Name and value of a whole `ParameterStatus` frame; `None` if it is not one.
pub fn parameter(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = match frame {
        [PARAMETER_STATUS, _, _, _, _, body @ ..] => body,
        _ => return None,
    };
    let body = body.strip_suffix(&[0])?;
    let nul = body.iter().position(|&b| b == 0)?;
    Some((&body[..nul], &body[nul + 1..]))
}

/// The transaction status byte of a `ReadyForQuery` body.
pub fn ready_status(body: &[u8]) -> Result<u8, ProtocolError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtocolError::Malformed {
            tag: READY_FOR_QUERY,
            what: "status must be I, T or E",
        }),
    }
}

/// The fields of an `ErrorResponse`/`NoticeResponse` body, by field code.
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, ProtocolError> {
    let mut c = Cursor::new(body);
    let mut out = Vec::new();
    loop {
        match c.u8() {
            Some(0) => return Ok(out),
            Some(code) => {
                let v = c.cstr().ok_or(ProtocolError::Malformed {
                    tag: ERROR_RESPONSE,
                    what: "unterminated field",
                })?;
                out.push((code, v));
            }
            None => {
                return Err(ProtocolError::Malformed {
                    tag: ERROR_RESPONSE,
                    what: "missing terminator",
                });
            }
        }
    }
}

/// `(sqlstate, message)` of an error body, for logs.
pub fn error_summary(body: &[u8]) -> (String, String) {
    let fields = error_fields(body).unwrap_or_default();
    let get = |k: u8| {
        fields
            .iter()
            .find(|(c, _)| *c == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    (get(b'C'), get(b'M'))
}

/// Whether an `ErrorResponse` body ends the session (`FATAL` or `PANIC`). Reads the
/// untranslated severity (`V`, sent since 9.6) and falls back to the localized one.
pub fn ends_session(body: &[u8]) -> bool {
    let Ok(fields) = error_fields(body) else {
        return false;
    };
    let severity = fields
        .iter()
        .find(|(c, _)| *c == b'V')
        .or_else(|| fields.iter().find(|(c, _)| *c == b'S'));
    matches!(severity, Some((_, b"FATAL" | b"PANIC")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_notifications_read_back() {
        let f = fields_message(ERROR_RESPONSE, &[(b'C', b"22P02"), (b'M', b"bad")]);
        assert_eq!(
            error_fields(&f[5..]).unwrap(),
            [(b'C', &b"22P02"[..]), (b'M', &b"bad"[..])]
        );
        let n = notification_response(42, b"chan", b"payload");
        assert_eq!(
            notification_parts(&n[5..]),
            Some((42, &b"chan"[..], &b"payload"[..]))
        );
        for cut in 0..n.len() - 5 {
            assert!(notification_parts(&n[5..5 + cut]).is_none());
        }
    }

    #[test]
    fn parameter_status_reads_back() {
        let f = parameter_status("client_encoding", "UTF8");
        assert_eq!(parameter(&f), Some((&b"client_encoding"[..], &b"UTF8"[..])));
        for cut in 0..f.len() {
            assert!(parameter(&f[..cut]).is_none() || cut == f.len());
        }
        assert_eq!(parameter(b"S\0\0\0\x06x\0"), None, "no value");
    }

    #[test]
    fn error_roundtrip() {
        let e = error_response(Severity::Error, "08P01", "bad", Some("d"), None);
        let (code, msg) = error_summary(&e[5..]);
        assert_eq!((code.as_str(), msg.as_str()), ("08P01", "bad"));
        assert!(error_fields(b"Cx").is_err());
    }
}
