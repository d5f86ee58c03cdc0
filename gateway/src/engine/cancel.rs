//! Cancel keys: the gateway hands each agent the server's real process id with a secret
//! of the gateway's own, and maps that pair to the server's real key, so a
//! `CancelRequest` reaches the right backend and the server's secret never leaves the
//! gateway. The pid is the server's so that what drivers compare it with matches: the pid
//! in a `NotificationResponse` (a driver's own notifications), `pg_stat_activity`,
//! `pg_locks`, `pg_terminate_backend(pid)`.
//!
//! Shared by every worker thread: a cancel request arrives on a new connection, which
//! may land on any core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

/// Where a cancel for one agent session must go.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub upstream: SocketAddr,
    pub pid: i32,
    pub secret: i32,
    /// The session's side of a cancel: while it holds a statement for approval the
    /// server runs nothing, so a cancel is the agent withdrawing the request.
    pub session: Arc<SessionCancel>,
}

impl PartialEq for CancelTarget {
    fn eq(&self, o: &Self) -> bool {
        (self.upstream, self.pid, self.secret) == (o.upstream, o.pid, o.secret)
    }
}

/// Lets a `CancelRequest` reach a session that is waiting for approval.
#[derive(Debug, Default)]
pub struct SessionCancel {
    holding: AtomicBool,
    /// Cancels delivered so far: a waiter compares against the count when it started,
    /// so a cancel meant for an earlier hold never ends a later one.
    count: AtomicU64,
    cancelled: tokio::sync::Notify,
}

impl SessionCancel {
    pub fn set_holding(&self, on: bool) {
        self.holding.store(on, Ordering::SeqCst);
    }

    /// Delivers a cancel to the session if it is holding a statement; `false` when it
    /// is not (the cancel is for the server).
    pub fn cancel_hold(&self) -> bool {
        if self.holding.load(Ordering::SeqCst) {
            self.count.fetch_add(1, Ordering::SeqCst);
            self.cancelled.notify_waiters();
            true
        } else {
            false
        }
    }

    /// How many cancels have been delivered; pass it to [`SessionCancel::cancelled`].
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once a cancel beyond `seen` has been delivered.
    pub async fn cancelled(&self, seen: u64) {
        loop {
            let notified = self.cancelled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() > seen {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Issues a fresh agent-facing key for `target`: its pid, and a secret of ours.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::thread_rng();
        loop {
            let secret = rng.r#gen::<i32>();
            if secret == target.secret {
                continue;
            }
            let key = (target.pid, secret);
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(key) {
                e.insert(target);
                return key;
            }
        }
    }

    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&(pid, secret)).cloned()
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
            session: Arc::default(),
        };
        let k = r.register(t.clone());
        assert_eq!(k.0, 42, "the agent sees the server's pid");
        assert_ne!(k.1, 7, "but never the server's secret");
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
