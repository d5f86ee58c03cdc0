//! The SASL `OAUTHBEARER` mechanism (RFC 7628) as a PostgreSQL 18 server speaks it: the
//! client's initial response carries `auth=Bearer <token>`; an empty `auth` asks where to
//! get a token, and is answered with the issuer's discovery address and the scope, after
//! which the client sends a lone `0x01` and the exchange fails.

use crate::protocol::ProtocolError;

pub const MECHANISM: &str = "OAUTHBEARER";
/// How audit records name a token login through OAUTHBEARER.
pub const MECHANISM_AUDIT: &str = "oauthbearer";

const KVSEP: u8 = 0x01;

/// What the client's initial response asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Initial<'a> {
    /// Check this bearer token.
    Token(&'a str),
    /// No token: the client wants to know where to get one.
    Discovery,
}

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed {
        tag: crate::protocol::frontend::PASSWORD,
        what,
    }
}

/// Reads `gs2-header kvsep *kvpair kvsep`: `n,,` (or `y,,`), then `key=value` pairs each
/// ended by 0x01, then a final 0x01. Channel binding (`p=`) and an authorization identity
/// are refused, as by PostgreSQL.
pub fn parse_initial(msg: &[u8]) -> Result<Initial<'_>, ProtocolError> {
    let rest = match msg {
        [b'n' | b'y', b',', rest @ ..] => rest,
        [b'p', ..] => return Err(malformed("OAUTHBEARER has no channel binding")),
        _ => return Err(malformed("OAUTHBEARER: unexpected channel-binding flag")),
    };
    let rest = match rest {
        [b'a', ..] => {
            return Err(malformed(
                "OAUTHBEARER: an authorization identity is not supported",
            ));
        }
        [b',', KVSEP, rest @ ..] => rest,
        _ => return Err(malformed("OAUTHBEARER: malformed gs2 header")),
    };
    let mut auth = None;
    let mut pos = rest;
    loop {
        let Some(end) = pos.iter().position(|&b| b == KVSEP) else {
            return Err(malformed("OAUTHBEARER: unterminated key/value pair"));
        };
        let pair = &pos[..end];
        pos = &pos[end + 1..];
        if pair.is_empty() {
            break;
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Err(malformed("OAUTHBEARER: a key without a value"));
        };
        let (key, value) = (&pair[..eq], &pair[eq + 1..]);
        if key.is_empty() || !key.iter().all(u8::is_ascii_alphabetic) {
            return Err(malformed("OAUTHBEARER: invalid key name"));
        }
        if !value
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) || matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(malformed("OAUTHBEARER: invalid value"));
        }
        if key == b"auth" {
            if auth.is_some() {
                return Err(malformed("OAUTHBEARER: more than one auth value"));
            }
            auth = Some(value);
        }
    }
    if !pos.is_empty() {
        return Err(malformed("OAUTHBEARER: data after the final terminator"));
    }
    let auth = auth.ok_or(malformed("OAUTHBEARER: no auth value"))?;
    if auth.is_empty() {
        return Ok(Initial::Discovery);
    }
    // `Bearer` is case-insensitive (RFC 7235); the token is a b64token (RFC 6750).
    let token = auth
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
        .map(|_| auth[7..].trim_ascii())
        .ok_or(malformed(
            "OAUTHBEARER: the auth value is not a Bearer token",
        ))?;
    if token.is_empty()
        || !token.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
    {
        return Err(malformed(
            "OAUTHBEARER: the bearer token has invalid characters",
        ));
    }
    // Checked ASCII above.
    Ok(Initial::Token(
        std::str::from_utf8(token).unwrap_or_default(),
    ))
}

/// The reply to a discovery request or a refused token (RFC 7628 §3.2.2), as PostgreSQL
/// writes it.
pub fn error_reply(discovery_url: &str, scope: &str) -> Vec<u8> {
    serde_json::json!({
        "status": "invalid_token",
        "openid-configuration": discovery_url,
        "scope": scope,
    })
    .to_string()
    .into_bytes()
}

/// The only message a client may send after [`error_reply`].
pub fn is_kvsep(msg: &[u8]) -> bool {
    msg == [KVSEP]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_discovery_are_read_as_postgresql_reads_them() {
        assert_eq!(
            parse_initial(b"n,,\x01auth=Bearer abc.def-_~\x01\x01").unwrap(),
            Initial::Token("abc.def-_~")
        );
        assert_eq!(
            parse_initial(b"n,,\x01host=db\x01auth=bEaReR  t0k\x01port=5\x01\x01").unwrap(),
            Initial::Token("t0k")
        );
        assert_eq!(
            parse_initial(b"n,,\x01auth=\x01\x01").unwrap(),
            Initial::Discovery
        );
        for bad in [
            &b""[..],
            b"p=x,,\x01auth=Bearer a\x01\x01",
            b"n,a=me,\x01auth=Bearer a\x01\x01",
            b"n,,\x01auth=Bearer a\x01",
            b"n,,\x01auth=Bearer a\x01\x01extra",
            b"n,,\x01auth=Basic a\x01\x01",
            b"n,,\x01auth=Bearer a\x01auth=Bearer b\x01\x01",
            b"n,,\x01au th=x\x01\x01",
            b"n,,\x01\x01",
            b"n,,\x01auth=Bearer a\"b\x01\x01",
        ] {
            assert!(parse_initial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_cut_and_byte_is_refused_or_read_without_panic() {
        let good = b"n,,\x01auth=Bearer abc\x01\x01";
        for cut in 0..good.len() {
            let _ = parse_initial(&good[..cut]);
        }
        for b in 0..=255u8 {
            for i in 0..good.len() {
                let mut m = good.to_vec();
                m[i] = b;
                let _ = parse_initial(&m);
            }
        }
    }
}
