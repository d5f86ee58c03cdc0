//! The client side of SCRAM-SHA-256 (RFC 5802/7677), with the salted password cached.
//!
//! PBKDF2 with 4096 iterations costs the client about a millisecond in release builds and a
//! hundred in debug ones, on every connection. A pool would pay it once per credential, and
//! the bench wants to measure the server's and the proxy's side of start-up, not its own, so
//! the salted password is remembered per (password, salt, iterations).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("malformed server-first message")]
    ServerFirst,
    #[error("the server's nonce does not extend ours")]
    Nonce,
    #[error("malformed server-final message: {0}")]
    ServerFinal(String),
    #[error("the server's signature is wrong: it does not know the password")]
    Signature,
}

type Key = (String, Vec<u8>, u32);

fn cache() -> &'static Mutex<HashMap<Key, [u8; 32]>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, [u8; 32]>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let key = (password.to_string(), salt.to_vec(), iterations);
    if let Some(v) = cache().lock().expect("cache lock").get(&key) {
        return *v;
    }
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    cache().lock().expect("cache lock").insert(key, out);
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// One exchange: `client_first()`, then `client_final(server_first)`, then `verify(server_final)`.
pub struct Scram {
    password: String,
    nonce: String,
    auth_message: String,
    server_key: [u8; 32],
}

impl Scram {
    pub fn new(password: &str) -> Scram {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        Scram {
            password: password.into(),
            nonce: STANDARD.encode(raw),
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    /// PostgreSQL takes the user from the start-up packet, so `n=` stays empty.
    pub fn client_first(&self) -> String {
        format!("n,,n=,r={}", self.nonce)
    }

    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let sf = std::str::from_utf8(server_first).map_err(|_| ScramError::ServerFirst)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in sf.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) => (n, s, i),
            _ => return Err(ScramError::ServerFirst),
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("n=,r={},{sf},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_key = hmac(&salted, b"Server Key");
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = String::from_utf8_lossy(server_final);
        let v = text
            .strip_prefix("v=")
            .ok_or_else(|| ScramError::ServerFinal(text.to_string()))?;
        let got = STANDARD
            .decode(v.trim_end_matches('\0'))
            .map_err(|_| ScramError::ServerFinal(text.to_string()))?;
        let want = hmac(&self.server_key, self.auth_message.as_bytes());
        if got != want {
            return Err(ScramError::Signature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the server with a known verifier and checks both proofs.
    #[test]
    fn round_trip_against_a_server_computation() {
        let (password, salt, iter) = ("pencil", b"saltsaltsalt".to_vec(), 4096);
        let mut c = Scram::new(password);
        let first = c.client_first();
        let cnonce = first.strip_prefix("n,,n=,r=").unwrap().to_string();
        let server_first = format!("r={cnonce}SERVER,s={},i={iter}", STANDARD.encode(&salt));
        let final_msg = c.client_final(server_first.as_bytes()).unwrap();
        let (without_proof, proof) = final_msg.rsplit_once(",p=").unwrap();
        let salted = salted_password(password, &salt, iter);
        let stored = Sha256::digest(hmac(&salted, b"Client Key"));
        let auth = format!("n=,r={cnonce},{server_first},{without_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let client_key: Vec<u8> = STANDARD
            .decode(proof)
            .unwrap()
            .iter()
            .zip(sig)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
        let server_sig = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
        c.verify(format!("v={}", STANDARD.encode(server_sig)).as_bytes())
            .unwrap();
        assert!(c.verify(b"v=AAAA").is_err());
    }

    #[test]
    fn rejects_a_foreign_nonce() {
        let mut c = Scram::new("pw");
        assert!(matches!(
            c.client_final(b"r=zzz,s=AAAA,i=4096"),
            Err(ScramError::Nonce)
        ));
    }
}
