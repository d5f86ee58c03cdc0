//! What the pools are doing, per database and upstream role, for `SHOW POOLS`, metrics
//! and `portcullis status`.
//!
//! Connections live in per-worker pools (their sockets belong to one worker's runtime);
//! the counts are kept here, in one place all workers update, so a reader sees the whole
//! gateway. Updates happen once per session start or end, never per statement.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The counts of one pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Upstream connections serving an agent session now.
    pub in_use: u64,
    /// Upstream connections kept for the next session.
    pub idle: u64,
    /// Agent sessions waiting for a connection (the pool is at `pool_size`).
    pub waiting: u64,
    /// Upstream connections opened since start-up.
    pub opened: u64,
    /// Agent sessions served by a kept connection instead of a new one.
    pub reused: u64,
    /// Upstream connections closed since start-up (any reason).
    pub closed: u64,
    /// Agent sessions refused because no connection freed up in time.
    pub timeouts: u64,
}

/// One pool's identity and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub database: String,
    /// The upstream role its sessions run as; the login role when none.
    pub role: String,
    pub counters: Counters,
}

#[derive(Debug, Default)]
pub struct PoolStats {
    pools: Mutex<BTreeMap<(String, String), Counters>>,
}

impl PoolStats {
    /// Every pool seen since start-up, ordered by database and role.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.lock()
            .iter()
            .map(|((database, role), c)| PoolSnapshot {
                database: database.clone(),
                role: role.clone(),
                counters: *c,
            })
            .collect()
    }

    /// The sum over every pool.
    pub fn totals(&self) -> Counters {
        self.lock().values().fold(Counters::default(), |mut t, c| {
            t.in_use += c.in_use;
            t.idle += c.idle;
            t.waiting += c.waiting;
            t.opened += c.opened;
            t.reused += c.reused;
            t.closed += c.closed;
            t.timeouts += c.timeouts;
            t
        })
    }

    pub fn update(&self, database: &str, role: &str, f: impl FnOnce(&mut Counters)) {
        let mut pools = self.lock();
        // The common case finds the pool without allocating its key.
        if let Some((_, c)) = pools
            .iter_mut()
            .find(|((d, r), _)| d == database && r == role)
        {
            f(c);
            return;
        }
        let mut c = Counters::default();
        f(&mut c);
        pools.insert((database.to_owned(), role.to_owned()), c);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Counters>> {
        // A panic elsewhere while holding the lock leaves counts, not invariants.
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_counted_apart_and_summed() {
        let s = PoolStats::default();
        s.update("app", "reader", |c| c.opened += 1);
        s.update("app", "reader", |c| c.in_use += 1);
        s.update("app", "writer", |c| c.opened += 2);
        let snap = s.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].role, "reader");
        assert_eq!(snap[0].counters.opened, 1);
        assert_eq!(snap[0].counters.in_use, 1);
        assert_eq!(s.totals().opened, 3);
    }
}
