//! Checking one access token against one issuer's keys: pure, no I/O. The signature and
//! the registered claims are checked by `jsonwebtoken`; what is specific to the gateway
//! (which algorithms, `typ`, which claim names the identity, how claims become roles) is
//! here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::TokenError;
use super::config::{Algorithm, OidcConfig};
use crate::auth::{Identity, Method};

/// What a token says of itself before anything is verified: enough to find its issuer
/// and key. Nothing here is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub alg: String,
    pub typ: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawIssuer {
    #[serde(default)]
    iss: Option<String>,
}

/// Reads a compact JWS's header and `iss` without checking anything.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not a signed JWT (three base64url parts separated by dots)",
        ));
    };
    let header: RawHeader = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("its header is not base64url JSON"))?;
    let payload: RawIssuer = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("its payload is not base64url JSON"))?;
    Ok(Unverified {
        alg: header.alg,
        typ: header.typ,
        kid: header.kid,
        iss: payload.iss,
    })
}

/// A verification key from the issuer's JWKS.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithm the JWK pins (`alg`), if it does.
    pub alg: Option<jsonwebtoken::Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.kid, self.alg)
    }
}

/// The signing keys from a JWKS document; HMAC keys and keys for other uses are left
/// out, so no algorithm confusion can pick one.
pub fn keys_from_jwks(json: &[u8]) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(json).map_err(|e| format!("the JWKS is not a key set: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<jsonwebtoken::Algorithm>().ok());
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

/// Picks the key a token names. A token without `kid` may use the issuer's only key.
pub fn find<'k>(keys: &'k [Key], kid: Option<&str>) -> Option<&'k Key> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
}

/// Checks `token` (already [`peek`]ed as `seen`) with `key` under `cfg` at `now` (Unix
/// seconds), and makes the identity it stands for.
pub fn verify(
    token: &str,
    seen: &Unverified,
    key: &Key,
    cfg: &OidcConfig,
    now: u64,
    mechanism: &'static str,
) -> Result<Identity, TokenError> {
    let alg = allowed_alg(seen, cfg)?;
    if let Some(pinned) = key.alg
        && pinned != alg
    {
        return Err(TokenError::Algorithm(format!(
            "the token says {} but its key is for {pinned:?}",
            seen.alg
        )));
    }
    check_typ(seen, cfg)?;
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = cfg.clock_skew_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_audience(&cfg.audiences);
    v.set_issuer(&[cfg.issuer.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &v)
        .map_err(|e| from_jwt(e, cfg))?;
    let claims = data.claims;
    // jsonwebtoken compares against its own clock; the gateway's (`now`) decides too, so
    // tests and the per-statement check agree on one time.
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp + cfg.clock_skew_secs <= now {
        return Err(TokenError::Expired(exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64)
        && nbf > now + cfg.clock_skew_secs
    {
        return Err(TokenError::NotYetValid(nbf));
    }
    let name = match claims.get(&cfg.identity_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(TokenError::Claim(format!(
                "it has no {} claim to name the identity",
                cfg.identity_claim
            )));
        }
    };
    Ok(Identity {
        name,
        roles: roles(&claims, cfg),
        method: Method::Token {
            issuer: cfg.issuer.clone(),
            mechanism,
        },
        expires_at_ms: Some(exp.saturating_mul(1000)),
    })
}

fn allowed_alg(seen: &Unverified, cfg: &OidcConfig) -> Result<jsonwebtoken::Algorithm, TokenError> {
    let named = cfg
        .algorithms
        .iter()
        .copied()
        .find(|a: &Algorithm| a.as_str() == seen.alg);
    match named {
        Some(a) => Ok(a.to_jwt()),
        None if seen.alg.eq_ignore_ascii_case("none") => Err(TokenError::Algorithm(
            "it is unsigned (alg none), which is never accepted".into(),
        )),
        None if seen.alg.starts_with("HS") => Err(TokenError::Algorithm(format!(
            "it is signed with {}, a shared-secret algorithm the gateway never accepts",
            seen.alg
        ))),
        None => Err(TokenError::Algorithm(format!(
            "{} is not among this issuer's algorithms ({})",
            seen.alg,
            cfg.algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn check_typ(seen: &Unverified, cfg: &OidcConfig) -> Result<(), TokenError> {
    if cfg.require_typ.is_empty() {
        return Ok(());
    }
    let want = cfg.require_typ.to_ascii_lowercase();
    let ok = seen.typ.as_deref().is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == want || t.strip_prefix("application/") == Some(want.as_str())
    });
    if ok {
        Ok(())
    } else {
        Err(TokenError::Typ {
            found: seen.typ.clone(),
            want: cfg.require_typ.clone(),
        })
    }
}

fn from_jwt(e: jsonwebtoken::errors::Error, cfg: &OidcConfig) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired(0),
        K::ImmatureSignature => TokenError::NotYetValid(0),
        K::InvalidAudience => TokenError::Audience(cfg.audiences.join(", ")),
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidSignature => TokenError::Signature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            TokenError::Algorithm("its algorithm does not fit its key".into())
        }
        K::MissingRequiredClaim(c) => TokenError::Claim(format!("it has no {c} claim")),
        _ => TokenError::Malformed("it could not be decoded"),
    }
}

/// The gateway roles a token's claims give: the issuer's `roles`, then every value of the
/// role claims (a list, or a space-separated string such as `scope`) that `role_map`
/// names, each once.
fn roles(claims: &serde_json::Map<String, Value>, cfg: &OidcConfig) -> Vec<String> {
    let mut out: Vec<String> = cfg.roles.clone();
    let mut add = |value: &str| {
        if let Some(role) = cfg.role_map.get(value)
            && !out.contains(role)
        {
            out.push(role.clone());
        }
    };
    for claim in &cfg.role_claims {
        match claims.get(claim) {
            Some(Value::String(s)) => s.split_ascii_whitespace().for_each(&mut add),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut add),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OidcConfig {
        toml::from_str(
            "issuer = \"https://idp\"\naudiences = [\"db\"]\nrole_map = { \"db-writers\" = \"writer\", \"db:read\" = \"reader\" }\nroles = [\"agent\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn peek_never_panics_on_garbage() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "e30.e30.",
            "\u{0}.\u{0}.\u{0}",
        ] {
            let _ = peek(t);
        }
        let t = format!(
            "{}.{}.",
            B64URL.encode(br#"{"alg":"none"}"#),
            B64URL.encode(b"{}")
        );
        assert_eq!(peek(&t).unwrap().alg, "none");
    }

    #[test]
    fn claims_map_to_roles_once_and_unknown_values_give_nothing() {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"groups": ["db-writers", "admins", "db-writers"], "scope": "openid db:read", "roles": 7}"#,
        )
        .unwrap();
        assert_eq!(roles(&claims, &cfg()), ["agent", "writer", "reader"]);
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_used() {
        let c = cfg();
        for (alg, what) in [
            ("none", "unsigned"),
            ("HS256", "shared-secret"),
            ("RS999", "not among"),
        ] {
            let seen = Unverified {
                alg: alg.into(),
                typ: Some("at+jwt".into()),
                kid: None,
                iss: None,
            };
            let e = allowed_alg(&seen, &c).unwrap_err().to_string();
            assert!(e.contains(what), "{alg}: {e}");
        }
    }

    #[test]
    fn typ_is_checked_unless_switched_off() {
        let mut c = cfg();
        let seen = |t: Option<&str>| Unverified {
            alg: "RS256".into(),
            typ: t.map(Into::into),
            kid: None,
            iss: None,
        };
        assert!(check_typ(&seen(Some("at+jwt")), &c).is_ok());
        assert!(check_typ(&seen(Some("application/AT+JWT")), &c).is_ok());
        assert!(check_typ(&seen(Some("JWT")), &c).is_err());
        assert!(check_typ(&seen(None), &c).is_err());
        c.require_typ.clear();
        assert!(check_typ(&seen(None), &c).is_ok());
    }
}
