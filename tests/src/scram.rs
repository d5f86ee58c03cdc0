//! SCRAM-SHA-256 verifiers for gateway identities, computed here rather than by
//! `portcullis hash-secret` so the harness can configure a gateway whose CLI is broken, and so
//! tests can cross-check that command against an independent implementation (RFC 5802/7677).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The iteration count PostgreSQL itself uses by default.
pub const ITERATIONS: u32 = 4096;

/// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, PostgreSQL's own format.
pub fn verifier(secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    verifier_with(secret, &salt, ITERATIONS)
}

/// Deterministic form of [`verifier`], for tests that compare against known vectors.
pub fn verifier_with(secret: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_postgres() {
        let v = verifier("agent-secret");
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert!(head.starts_with("4096:"));
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(STANDARD.decode(stored).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(server).unwrap().len(), 32);
    }

    /// Computed independently with Python's hashlib/hmac; also the verifier in
    /// deploy/quickstart.toml.
    #[test]
    fn matches_an_independent_implementation() {
        assert_eq!(
            verifier_with("agent-secret", b"portcullis-demo1", 4096),
            "SCRAM-SHA-256$4096:cG9ydGN1bGxpcy1kZW1vMQ==$\
             k0AtXuh8GLOH5LpT4moc8T3t4LGcmTnARd4e3NGC1f0=:\
             y5KdJK+TFnaYjW5ShMXxk+LrIAtpSnUd5YHdxEka1gM="
        );
    }

    #[test]
    fn deterministic_for_a_salt() {
        assert_eq!(
            verifier_with("pw", b"0123456789abcdef", 4096),
            verifier_with("pw", b"0123456789abcdef", 4096)
        );
        assert_ne!(verifier("pw"), verifier("pw"));
    }
}
