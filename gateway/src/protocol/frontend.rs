//! Frontend (client → server) messages the gateway looks inside, and the few it sends
//! upstream on its own behalf.

use bytes::{BufMut, Bytes};

use super::frame::build;
use super::{Cursor, ProtocolError};

pub const BIND: u8 = b'B';
pub const CLOSE: u8 = b'C';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const PARSE: u8 = b'P';
/// Password, SASLInitialResponse and SASLResponse all share this tag.
pub const PASSWORD: u8 = b'p';
pub const QUERY: u8 = b'Q';
pub const SYNC: u8 = b'S';
pub const TERMINATE: u8 = b'X';

const SSL_REQUEST_CODE: i32 = 80877103;
const GSSENC_REQUEST_CODE: i32 = 80877104;
const CANCEL_REQUEST_CODE: i32 = 80877102;
const PROTOCOL_3_0: i32 = 196608;

/// The untagged packets a client may open a connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.`minor`: the gateway speaks 3.0 and says so to a client asking for
    /// more (`NegotiateProtocolVersion`), as PostgreSQL 15 does.
    Startup {
        params: Vec<(String, String)>,
        minor: u16,
    },
}

impl StartupPacket {
    /// Parses a whole packet (length included) as cut by `split_startup_packet`. Its
    /// errors are PostgreSQL's, so a client meets the same refusals it would directly.
    pub fn parse(packet: &[u8]) -> Result<Self, ProtocolError> {
        let body = packet.get(4..).unwrap_or_default();
        let mut c = Cursor::new(body);
        let code = c
            .i32()
            .ok_or(ProtocolError::ImpossibleStartup(INVALID_LENGTH))?;
        match code {
            SSL_REQUEST_CODE => Ok(Self::SslRequest),
            GSSENC_REQUEST_CODE => Ok(Self::GssEncRequest),
            CANCEL_REQUEST_CODE => match (c.i32(), c.i32(), c.remaining().is_empty()) {
                (Some(pid), Some(secret), true) => Ok(Self::Cancel { pid, secret }),
                _ => Err(ProtocolError::ImpossibleStartup(INVALID_LENGTH)),
            },
            v if v >> 16 == PROTOCOL_3_0 >> 16 => {
                let minor = v as u16;
                let layout = ProtocolError::BadStartup(
                    "invalid startup packet layout: expected terminator as last byte",
                );
                let mut params = Vec::new();
                loop {
                    let key = c.cstr().ok_or(layout.clone())?;
                    if key.is_empty() {
                        break;
                    }
                    let value = c.cstr().ok_or(layout.clone())?;
                    params.push((utf8(key)?, utf8(value)?));
                }
                // The terminator must be the packet's last byte.
                if !c.remaining().is_empty() {
                    return Err(layout);
                }
                Ok(Self::Startup { params, minor })
            }
            v => Err(ProtocolError::UnsupportedVersion {
                major: (v >> 16) as u16,
                minor: v as u16,
            }),
        }
    }

    /// The request code of a repeated `SSLRequest`/`GSSENCRequest`, which PostgreSQL
    /// refuses as an unknown protocol version.
    pub fn repeated(&self) -> ProtocolError {
        let code = match self {
            Self::GssEncRequest => GSSENC_REQUEST_CODE,
            _ => SSL_REQUEST_CODE,
        };
        ProtocolError::UnsupportedVersion {
            major: (code >> 16) as u16,
            minor: code as u16,
        }
    }
}

/// PostgreSQL's words for a packet whose length no client would send.
const INVALID_LENGTH: &str = "invalid length of startup packet";

fn utf8(b: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ProtocolError::BadStartup("invalid startup packet: a parameter is not UTF-8"))
}

fn malformed(tag: u8, what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { tag, what }
}

/// `Query`: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&[u8], ProtocolError> {
    Cursor::new(body)
        .cstr()
        .ok_or(malformed(QUERY, "unterminated query string"))
}

/// `Parse`: statement name, SQL, declared parameter type OIDs.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub sql: &'a [u8],
    pub param_types: Vec<u32>,
}

pub fn parse_parse(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut c = Cursor::new(body);
    let name = c.cstr().ok_or(malformed(PARSE, "statement name"))?;
    let sql = c.cstr().ok_or(malformed(PARSE, "query string"))?;
    let n = c.i16().ok_or(malformed(PARSE, "parameter count"))?;
    let n = usize::try_from(n).map_err(|_| malformed(PARSE, "negative parameter count"))?;
    let mut param_types = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        param_types.push(c.u32().ok_or(malformed(PARSE, "parameter types"))?);
    }
    Ok(ParseMsg {
        name,
        sql,
        param_types,
    })
}

/// `Bind`: portal and statement names, and the requested result formats.
#[derive(Debug, PartialEq, Eq)]
pub struct BindMsg<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub param_count: usize,
    /// Result-column format codes as sent: empty = all text, one = all that, else per column.
    pub result_formats: Vec<i16>,
}

pub fn parse_bind(body: &[u8]) -> Result<BindMsg<'_>, ProtocolError> {
    let mut c = Cursor::new(body);
    let portal = c.cstr().ok_or(malformed(BIND, "portal name"))?;
    let statement = c.cstr().ok_or(malformed(BIND, "statement name"))?;
    let nfmt = count(c.i16(), BIND)?;
    c.bytes(nfmt * 2)
        .ok_or(malformed(BIND, "parameter formats"))?;
    let nparams = count(c.i16(), BIND)?;
    for _ in 0..nparams {
        let len = c.i32().ok_or(malformed(BIND, "parameter length"))?;
        if len > 0 {
            c.bytes(len as usize)
                .ok_or(malformed(BIND, "parameter value"))?;
        } else if len < -1 {
            return Err(malformed(BIND, "negative parameter length"));
        }
    }
    let nres = count(c.i16(), BIND)?;
    let mut result_formats = Vec::with_capacity(nres.min(1024));
    for _ in 0..nres {
        result_formats.push(c.i16().ok_or(malformed(BIND, "result formats"))?);
    }
    Ok(BindMsg {
        portal,
        statement,
        param_count: nparams,
        result_formats,
    })
}

fn count(v: Option<i16>, tag: u8) -> Result<usize, ProtocolError> {
    let v = v.ok_or(malformed(tag, "count"))?;
    usize::try_from(v).map_err(|_| malformed(tag, "negative count"))
}

/// `Describe` and `Close` both carry a kind (`S`tatement or `P`ortal) and a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Statement(&'a [u8]),
    Portal(&'a [u8]),
}

pub fn parse_target(tag: u8, body: &[u8]) -> Result<Target<'_>, ProtocolError> {
    let mut c = Cursor::new(body);
    let kind = c.u8().ok_or(malformed(tag, "kind"))?;
    let name = c.cstr().ok_or(malformed(tag, "name"))?;
    match kind {
        b'S' => Ok(Target::Statement(name)),
        b'P' => Ok(Target::Portal(name)),
        _ => Err(malformed(tag, "kind must be S or P")),
    }
}

/// `Execute`: portal name and row limit (0 = all).
pub fn parse_execute(body: &[u8]) -> Result<(&[u8], i32), ProtocolError> {
    let mut c = Cursor::new(body);
    let portal = c.cstr().ok_or(malformed(EXECUTE, "portal name"))?;
    let max_rows = c.i32().ok_or(malformed(EXECUTE, "row limit"))?;
    Ok((portal, max_rows))
}

/// `FunctionCall` (the fast-path interface): the OID of the function it calls.
pub fn parse_function_call(body: &[u8]) -> Result<u32, ProtocolError> {
    let mut c = Cursor::new(body);
    let oid = c.i32().ok_or(malformed(FUNCTION_CALL, "function OID"))?;
    Ok(oid as u32)
}

/// `Describe` of a portal, which the gateway injects when a client executes a portal
/// whose result columns it never asked for.
pub fn describe_portal(name: &[u8]) -> Bytes {
    build(DESCRIBE, |b| {
        b.put_u8(b'P');
        super::frame::put_cstr(b, name);
    })
}

/// `Describe` of a prepared statement.
pub fn describe_statement(name: &[u8]) -> Bytes {
    build(DESCRIBE, |b| {
        b.put_u8(b'S');
        super::frame::put_cstr(b, name);
    })
}

/// A simple `Query`.
pub fn query(sql: &[u8]) -> Bytes {
    build(QUERY, |b| super::frame::put_cstr(b, sql))
}

/// `Parse` of `sql` as statement `name`, with no declared parameter types.
pub fn parse(name: &[u8], sql: &[u8]) -> Bytes {
    build(PARSE, |b| {
        super::frame::put_cstr(b, name);
        super::frame::put_cstr(b, sql);
        b.put_i16(0);
    })
}

pub fn sync() -> Bytes {
    build(SYNC, |_| {})
}

pub fn flush() -> Bytes {
    build(FLUSH, |_| {})
}

pub fn terminate() -> Bytes {
    build(TERMINATE, |_| {})
}

pub fn ssl_request() -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(8);
    b.put_i32(8);
    b.put_i32(SSL_REQUEST_CODE);
    b.freeze()
}

pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(16);
    b.put_i32(16);
    b.put_i32(CANCEL_REQUEST_CODE);
    b.put_i32(pid);
    b.put_i32(secret);
    b.freeze()
}

/// One bound parameter: format code and value (`None`: NULL).
pub type BindParam<'a> = (i16, Option<&'a [u8]>);

/// A `Bind`'s parameters as sent: `(format code, value)` with `None` for NULL. Format
/// codes follow the protocol: none given = all text, one = all that, else per parameter.
pub fn bind_params(body: &[u8]) -> Result<Vec<BindParam<'_>>, ProtocolError> {
    let mut c = Cursor::new(body);
    c.cstr().ok_or(malformed(BIND, "portal name"))?;
    c.cstr().ok_or(malformed(BIND, "statement name"))?;
    let nfmt = count(c.i16(), BIND)?;
    let mut formats = Vec::with_capacity(nfmt.min(1024));
    for _ in 0..nfmt {
        formats.push(c.i16().ok_or(malformed(BIND, "parameter formats"))?);
    }
    let nparams = count(c.i16(), BIND)?;
    let mut out = Vec::with_capacity(nparams.min(1024));
    for i in 0..nparams {
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i).ok_or(malformed(BIND, "parameter formats"))?,
        };
        let len = c.i32().ok_or(malformed(BIND, "parameter length"))?;
        let value = match len {
            -1 => None,
            n if n >= 0 => Some(
                c.bytes(n as usize)
                    .ok_or(malformed(BIND, "parameter value"))?,
            ),
            _ => return Err(malformed(BIND, "negative parameter length")),
        };
        out.push((format, value));
    }
    Ok(out)
}

/// The same `Bind` for another portal and statement: formats, parameters and result
/// formats as the client sent them.
pub fn rebind(body: &[u8], portal: &[u8], statement: &[u8]) -> Result<Bytes, ProtocolError> {
    let mut c = Cursor::new(body);
    let p = c.cstr().ok_or(malformed(BIND, "portal name"))?;
    let s = c.cstr().ok_or(malformed(BIND, "statement name"))?;
    let rest = &body[p.len() + s.len() + 2..];
    Ok(build(BIND, |b| {
        super::frame::put_cstr(b, portal);
        super::frame::put_cstr(b, statement);
        b.extend_from_slice(rest);
    }))
}

/// `Parse` with declared parameter types.
pub fn parse_typed(name: &[u8], sql: &[u8], param_types: &[u32]) -> Bytes {
    build(PARSE, |b| {
        super::frame::put_cstr(b, name);
        super::frame::put_cstr(b, sql);
        b.put_i16(param_types.len().min(i16::MAX as usize) as i16);
        for t in param_types.iter().take(i16::MAX as usize) {
            b.put_u32(*t);
        }
    })
}

pub fn execute(portal: &[u8], max_rows: i32) -> Bytes {
    build(EXECUTE, |b| {
        super::frame::put_cstr(b, portal);
        b.put_i32(max_rows);
    })
}

/// `Close` of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &[u8]) -> Bytes {
    build(CLOSE, |b| {
        b.put_u8(kind);
        super::frame::put_cstr(b, name);
    })
}

/// A `Bind` of `statement` to `portal` with these parameters (format, value) and every
/// result column in text.
pub fn bind(portal: &[u8], statement: &[u8], params: &[BindParam<'_>]) -> Bytes {
    build(BIND, |b| {
        super::frame::put_cstr(b, portal);
        super::frame::put_cstr(b, statement);
        b.put_i16(params.len() as i16);
        for (f, _) in params {
            b.put_i16(*f);
        }
        b.put_i16(params.len() as i16);
        for (_, v) in params {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v);
                }
            }
        }
        b.put_i16(0);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets() {
        assert_eq!(
            StartupPacket::parse(&ssl_request()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            StartupPacket::parse(&cancel_request(7, 9)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        p.extend_from_slice(b"user\0agent\0database\0bank\0\0");
        let len = p.len() as i32;
        p[..4].copy_from_slice(&len.to_be_bytes());
        let StartupPacket::Startup { params, minor } = StartupPacket::parse(&p).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(
            (params[0].clone(), minor),
            (("user".into(), "agent".into()), 0)
        );
        assert!(StartupPacket::parse(&p[..p.len() - 3]).is_err());
        // Bytes after the terminator are a layout error too, as in PostgreSQL.
        let mut trailing = p.clone();
        trailing.push(b'x');
        assert!(matches!(
            StartupPacket::parse(&trailing),
            Err(ProtocolError::BadStartup(_))
        ));
        // A cancel request of any other size is no client's.
        let mut cancel = cancel_request(7, 9).to_vec();
        cancel.extend_from_slice(b"xx");
        assert!(matches!(
            StartupPacket::parse(&cancel),
            Err(ProtocolError::ImpossibleStartup(_))
        ));
        // A newer minor version parses (libpq 18 asks for 3.2); another major does not.
        p[4..8].copy_from_slice(&(PROTOCOL_3_0 | 2).to_be_bytes());
        assert!(matches!(
            StartupPacket::parse(&p),
            Ok(StartupPacket::Startup { minor: 2, .. })
        ));
        p[4..8].copy_from_slice(&(4i32 << 16).to_be_bytes());
        assert!(StartupPacket::parse(&p).is_err());
    }

    #[test]
    fn bind_parses_and_rejects_truncation() {
        let body = b"p1\0s1\0\0\x01\0\x01\0\x01\0\0\0\x02ab\0\x01\0\x01";
        let b = parse_bind(body).unwrap();
        assert_eq!(
            (b.portal, b.statement, b.param_count),
            (&b"p1"[..], &b"s1"[..], 1)
        );
        assert_eq!(b.result_formats, vec![1]);
        for cut in 0..body.len() {
            assert!(parse_bind(&body[..cut]).is_err(), "cut {cut}");
        }
    }
}
