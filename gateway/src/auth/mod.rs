//! Who is asking: the agent identities the gateway knows and how they prove it.
//!
//! Identities come from the configuration with SCRAM verifiers, never secrets in clear.
//! An unknown name gets a decoy verifier so the failure looks the same as a wrong secret.

pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;

pub use scram::{SaltedCache, ScramClient, ScramError, ScramServer, Verifier};

/// A configured agent identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<String>,
    pub verifier: Verifier,
}

/// The identities known to one configuration generation.
#[derive(Debug)]
pub struct IdentityStore {
    by_name: HashMap<String, Arc<Identity>>,
    decoy_key: [u8; 32],
}

impl IdentityStore {
    pub fn new(identities: impl IntoIterator<Item = Identity>) -> Self {
        let mut decoy_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut decoy_key);
        Self {
            by_name: identities
                .into_iter()
                .map(|i| (i.name.clone(), Arc::new(i)))
                .collect(),
            decoy_key,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Identity>> {
        self.by_name.get(name).cloned()
    }

    /// The verifier to run SCRAM against: the identity's own, or a decoy.
    pub fn verifier_for(&self, name: &str) -> (Option<Arc<Identity>>, Verifier) {
        match self.get(name) {
            Some(id) => {
                let v = id.verifier.clone();
                (Some(id), v)
            }
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
