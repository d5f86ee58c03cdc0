//! The PostgreSQL v3 wire protocol, as much of it as a gateway needs.
//!
//! Everything here works on byte buffers and never allocates per forwarded frame:
//! [`frame`] cuts frames off a `BytesMut` (zero-copy `Bytes` views), [`frontend`] and
//! [`backend`] parse the handful of messages the gateway must look inside and build the
//! ones it synthesises. Parsers return errors on malformed input; they never panic.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod sqlstate;

/// What can be wrong with bytes received from a peer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {len} in a '{tag}' message", tag = char::from(*.tag))]
    BadLength { tag: u8, len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed '{tag}' message: {what}", tag = char::from(*.tag))]
    Malformed { tag: u8, what: &'static str },
    #[error("unexpected message type '{tag}' ({state})", tag = char::from(*.tag).escape_default())]
    Unexpected { tag: u8, state: &'static str },
    /// A start-up packet a client could have meant, laid out wrongly: answered.
    #[error("{0}")]
    BadStartup(&'static str),
    /// Bytes no PostgreSQL client opens with (an impossible length, a cancel request of
    /// the wrong size): PostgreSQL closes without a word, and so does the gateway.
    #[error("{0}")]
    ImpossibleStartup(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion { major: u16, minor: u16 },
}

/// A cursor over a message body that reads big-endian integers and C strings, returning
/// `None` on a short body instead of panicking.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    pub fn i16(&mut self) -> Option<i16> {
        let b = self.bytes(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let b = self.bytes(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.i32().map(|v| v as u32)
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = memchr::memchr(0, self.buf)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Some(s)
    }
}
