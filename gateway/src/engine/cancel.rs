//! Cancel keys: the gateway hands each agent a key of its own and maps it to the
//! upstream server's real key, so a `CancelRequest` reaches the right backend and the
//! agent never learns anything about the server's processes.
//!
//! Shared by every worker thread: a cancel request arrives on a new connection, which
//! may land on any core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use rand::Rng;

/// Where a cancel for one agent session must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub upstream: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Issues a fresh agent-facing key for `target`.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::thread_rng();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.r#gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(key) {
                e.insert(target);
                return key;
            }
        }
    }

    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&(pid, secret)).copied()
    }

    pub fn remove(&self, key: (i32, i32)) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes a session's key when the session ends, however it ends.
pub struct CancelGuard<'a> {
    pub registry: &'a CancelRegistry,
    pub key: (i32, i32),
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_and_unmap() {
        let r = CancelRegistry::default();
        let t = CancelTarget {
            upstream: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            secret: 7,
        };
        let k = r.register(t);
        assert_eq!(r.lookup(k.0, k.1), Some(t));
        assert_eq!(
            r.lookup(42, 7),
            None,
            "the upstream key itself is not a valid key"
        );
        drop(CancelGuard {
            registry: &r,
            key: k,
        });
        assert!(r.is_empty());
    }
}
