//! Who is asking: the agent identities the gateway knows and how they prove it.
//!
//! - Static keys: `[[identity]]` entries with SCRAM verifiers, never secrets in clear; a
//!   key may expire (`expires_at`) or be switched off (`disabled`). An unknown name gets a
//!   decoy verifier so the failure looks the same as a wrong secret.
//! - [`oidc`]: access tokens from an identity provider, given as the password or through
//!   [`oauthbearer`] (PostgreSQL 18's SASL mechanism).
//!
//! Either way a session ends up with an [`Identity`]: a name, roles, and the time its
//! credential stops being valid, which the relay checks at every statement.

pub mod oauthbearer;
pub mod oidc;
pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;

pub use scram::{SaltedCache, ScramClient, ScramError, ScramServer, Verifier};

/// How an identity proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// A static key: SCRAM-SHA-256 against a configured verifier.
    Scram,
    /// An access token of this issuer, as the password (`password`) or by OAUTHBEARER.
    Token {
        issuer: String,
        mechanism: &'static str,
    },
}

impl Method {
    /// For the audit record's `auth` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Scram => scram::MECHANISM_AUDIT,
            Method::Token { mechanism, .. } => mechanism,
        }
    }
}

/// An authenticated agent identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<String>,
    pub method: Method,
    /// When the credential stops being valid (Unix time, milliseconds): a token's `exp`,
    /// a static key's `expires_at`. The session's statements are refused from then on.
    pub expires_at_ms: Option<u64>,
}

/// A configured static key: an identity and its SCRAM verifier.
#[derive(Debug, Clone)]
pub struct StaticKey {
    pub identity: Arc<Identity>,
    pub verifier: Verifier,
    /// Refused at login (after the secret was proven, so only its holder learns why).
    pub disabled: bool,
}

impl StaticKey {
    pub fn new(name: &str, roles: Vec<String>, verifier: Verifier) -> Self {
        StaticKey {
            identity: Arc::new(Identity {
                name: name.to_owned(),
                roles,
                method: Method::Scram,
                expires_at_ms: None,
            }),
            verifier,
            disabled: false,
        }
    }

    /// Why this key may not log in at `now_ms`, if it may not.
    pub fn refusal(&self, now_ms: u64) -> Option<String> {
        let name = &self.identity.name;
        if self.disabled {
            return Some(format!("identity \"{name}\" is disabled"));
        }
        match self.identity.expires_at_ms {
            Some(at) if at <= now_ms => Some(format!(
                "the key of identity \"{name}\" expired at {}",
                rfc3339_ms(at)
            )),
            _ => None,
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC, for messages.
pub fn rfc3339_ms(ms: u64) -> String {
    let s = crate::audit::sinks::record::format_rfc3339_us(ms as i64 * 1000);
    // Seconds are enough for a person; the record keeps the rest.
    match (s.find('.'), s.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &s[..dot]),
        _ => s,
    }
}

/// The static keys known to one configuration generation.
#[derive(Debug)]
pub struct IdentityStore {
    by_name: HashMap<String, StaticKey>,
    decoy_key: [u8; 32],
}

impl IdentityStore {
    pub fn new(keys: impl IntoIterator<Item = StaticKey>) -> Self {
        let mut decoy_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut decoy_key);
        Self {
            by_name: keys
                .into_iter()
                .map(|k| (k.identity.name.clone(), k))
                .collect(),
            decoy_key,
        }
    }

    pub fn get(&self, name: &str) -> Option<&StaticKey> {
        self.by_name.get(name)
    }

    /// The verifier to run SCRAM against: the key's own, or a decoy.
    pub fn verifier_for(&self, name: &str) -> (Option<StaticKey>, Verifier) {
        match self.get(name) {
            Some(k) => (Some(k.clone()), k.verifier.clone()),
            None => (None, Verifier::decoy(name, &self.decoy_key)),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
