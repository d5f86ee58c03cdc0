//! SCRAM-SHA-256 (RFC 5802/7677) on the server side, as PostgreSQL speaks it.
//!
//! Secrets are stored as verifiers in PostgreSQL's own format
//! (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`), so the gateway never holds an
//! agent's secret in clear. The exchange is sans-IO: it takes the client's SASL payloads
//! and returns the server's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// How audit records name a SCRAM login.
pub const MECHANISM_AUDIT: &str = "scram-sha-256";
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error(
        "not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as printed by `portcullis hash-secret`)"
    )]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("authentication failed")]
    Failed,
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(ScramError::BadVerifier)
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Derives a verifier from a secret, with a fresh random salt.
    pub fn generate(secret: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::derive(secret.as_bytes(), salt, iterations)
    }

    fn derive(secret: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(secret, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations,
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A verifier no secret matches, for unknown identities: the exchange then runs to
    /// the end and fails exactly like a wrong secret, so a client cannot probe names.
    pub fn decoy(name: &str, key: &[u8; 32]) -> Self {
        let salt = hmac(key, name.as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt,
            stored_key,
            server_key: stored_key,
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// One server-side exchange.
#[derive(Debug)]
pub struct ScramServer {
    verifier: Verifier,
    state: State,
}

#[derive(Debug)]
enum State {
    Initial,
    SentFirst {
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

impl ScramServer {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            state: State::Initial,
        }
    }

    /// Takes `client-first-message`, returns `server-first-message`.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::Malformed("unexpected client-first-message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("channel binding flag")),
        }
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = State::SentFirst {
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(out)
    }

    /// Takes `client-final-message`, returns `server-final-message` if the proof holds.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentFirst {
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected client-final-message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut channel = None;
        let mut got_nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                got_nonce = Some(r);
            }
        }
        // Without channel binding the client echoes its gs2 header: "n,," or "y,,".
        match channel {
            Some("biws") | Some("eSws") => {}
            Some(_) => return Err(ScramError::ChannelBinding),
            None => return Err(ScramError::Malformed("missing channel binding")),
        }
        if got_nonce != Some(nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&computed, &self.verifier.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Salted passwords already derived, by (salt, iterations). The server's salt for a role
/// does not change between logins, so the gateway pays PBKDF2 once per upstream
/// credential instead of once per session.
#[derive(Debug, Default)]
pub struct SaltedCache {
    entries: std::sync::Mutex<Vec<SaltedEntry>>,
}

/// (digest of the password, salt, iterations) → salted password.
type SaltedEntry = ([u8; 32], Vec<u8>, u32, [u8; 32]);

impl SaltedCache {
    fn salted(&self, password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let who: [u8; 32] = Sha256::digest(password).into();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, _, k)) = entries
            .iter()
            .find(|(w, s, i, _)| *w == who && s == salt && *i == iterations)
        {
            return *k;
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        // A handful of upstream roles at most; a bound keeps a hostile server from
        // growing it by changing salts.
        if entries.len() >= 16 {
            entries.remove(0);
        }
        entries.push((who, salt.to_vec(), iterations, salted));
        salted
    }
}

/// One client-side exchange, for the gateway's login to the real server.
pub struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    state: ClientState,
}

/// The gateway's database password must not reach a log through a `Debug` print.
impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("password", &"<redacted>")
            .field("state", &self.state)
            .finish()
    }
}

#[derive(Debug)]
enum ClientState {
    Initial,
    SentFinal { server_signature: [u8; 32] },
    Done,
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        Self {
            password: password.as_bytes().to_vec(),
            nonce: B64.encode(raw),
            state: ClientState::Initial,
        }
    }

    /// `client-first-message`. PostgreSQL ignores the SCRAM user name (it has the
    /// start-up packet's), so it is left empty.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// Takes `server-first-message`, returns `client-final-message`.
    pub fn server_first(&mut self, msg: &[u8], cache: &SaltedCache) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::Initial) {
            return Err(ScramError::Malformed("unexpected server-first-message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len())
            .ok_or(ScramError::Malformed("server nonce"))?;
        let salt = salt.ok_or(ScramError::Malformed("salt"))?;
        let iterations = iterations
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or(ScramError::Malformed("iteration count"))?;
        let salted = cache.salted(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.first_bare());
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        let server_key = hmac(&salted, b"Server Key");
        self.state = ClientState::SentFinal {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks `server-final-message`: proof that the server knows the credential too.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::Malformed("unexpected server-final-message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = msg
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(ScramError::Failed)?;
        if constant_time_eq(&v, &server_signature) {
            Ok(())
        } else {
            Err(ScramError::Failed)
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(secret_stored: &str, secret_tried: &str) -> Result<(), ScramError> {
        let mut server = ScramServer::new(Verifier::generate(secret_stored, 64));
        let mut client = ScramSha256::new(secret_tried.as_bytes(), ChannelBinding::unsupported());
        let first = server.client_first(client.message())?;
        client.update(&first).unwrap();
        let fin = server.client_final(client.message())?;
        client.finish(&fin).map_err(|_| ScramError::Failed)
    }

    #[test]
    fn a_real_client_authenticates_and_a_wrong_secret_fails() {
        exchange("s3cret", "s3cret").unwrap();
        assert_eq!(exchange("s3cret", "wrong"), Err(ScramError::Failed));
    }

    #[test]
    fn our_client_and_our_server_agree_and_the_cache_is_used() {
        let cache = SaltedCache::default();
        let verifier = Verifier::generate("pw", 64);
        for attempt in 0..2 {
            let mut server = ScramServer::new(verifier.clone());
            let mut client = ScramClient::new("pw");
            let first = server.client_first(&client.client_first()).unwrap();
            let fin = client.server_first(&first, &cache).unwrap();
            let last = server.client_final(&fin).unwrap();
            client.server_final(&last).unwrap();
            assert_eq!(cache.entries.lock().unwrap().len(), 1, "attempt {attempt}");
        }
        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::new("other");
        let first = server.client_first(&client.client_first()).unwrap();
        let fin = client.server_first(&first, &cache).unwrap();
        assert_eq!(server.client_final(&fin), Err(ScramError::Failed));
    }

    #[test]
    fn verifier_roundtrips_through_its_text_form() {
        let v = Verifier::generate("x", 4096);
        assert_eq!(Verifier::parse(&v.to_string()).unwrap(), v);
        assert!(Verifier::parse("md5abc").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut s = ScramServer::new(Verifier::generate("x", 16));
        assert!(s.client_first(b"\xff").is_err());
        let mut s = ScramServer::new(Verifier::generate("x", 16));
        assert!(s.client_first(b"n,,n=,r=abc").is_ok());
        assert!(s.client_final(b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
