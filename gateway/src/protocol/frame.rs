//! Cutting frames off a receive buffer.
//!
//! A frame is one whole message, tag and length included, as a `Bytes` view into the
//! receive buffer (`split_to().freeze()`: no copy). Lengths are checked before any
//! arithmetic: below 4 is malformed, above the caller's limit is refused, and a partial
//! frame reserves room for the rest so that the next read completes it.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// Tag byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;
/// Start-up packets (untagged) are small; PostgreSQL caps what follows their length
/// field at 10000 bytes.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A message's tag and the length of its whole frame (tag and length field included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub frame_len: usize,
}

/// Reads the header at the front of `buf`, if 5 bytes are there.
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength {
            tag: h[0],
            len: len.into(),
        });
    }
    Ok(Some(Header {
        tag: h[0],
        frame_len: len as usize + 1,
    }))
}

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes known to hold exactly one well-framed message.
    pub fn from_bytes(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        Self { bytes }
    }

    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Cuts one tagged frame off the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(h) = peek_header(buf)? else {
        return Ok(None);
    };
    if h.frame_len > max_len {
        return Err(ProtocolError::TooLarge {
            len: h.frame_len,
            max: max_len,
        });
    }
    if buf.len() < h.frame_len {
        buf.reserve(h.frame_len - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(h.frame_len).freeze(),
    }))
}

/// Cuts one untagged start-up packet (SSLRequest, StartupMessage, CancelRequest…) off
/// the front of `buf`.
pub fn split_startup_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    let Some(h) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    // PostgreSQL's bounds: a version code at least, MAX_STARTUP_LEN after the length.
    if !(8..=4 + MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(ProtocolError::ImpossibleStartup(
            "invalid length of startup packet",
        ));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len).freeze()))
}

/// Builds a frame: `tag`, a back-patched length, and whatever `body` writes.
pub fn build(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    body(&mut out);
    let len = i32::try_from(out.len() - 1).unwrap_or(i32::MAX);
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend_from_slice(s);
    out.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn every_cut_of_a_stream_yields_the_same_frames() {
        let mut stream = Vec::new();
        stream.extend(msg(b'Q', b"select 1\0"));
        stream.extend(msg(b'S', b""));
        stream.extend(msg(b'D', &[0, 1, 0, 0, 0, 2, b'h', b'i']));
        let expected = [b'Q', b'S', b'D'];
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
                    got.push(f.tag());
                }
            }
            assert_eq!(got, expected, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn short_and_huge_lengths_are_errors_not_panics() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(split_startup_packet(&mut buf).is_err());
    }

    #[test]
    fn build_back_patches_the_length() {
        let f = build(b'Z', |b| b.extend_from_slice(b"I"));
        assert_eq!(&f[..], &[b'Z', 0, 0, 0, 5, b'I']);
    }
}
