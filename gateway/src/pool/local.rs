//! One worker thread's upstream connections: the idle ones kept for the next session,
//! and the limit on how many a pool may have.
//!
//! A connection's socket belongs to the runtime of the thread that opened it (io_uring
//! submissions cannot move between rings), so each worker keeps its own; the counts
//! every worker reports go to the shared [`PoolStats`].
//!
//! A pool's limit is a semaphore whose permits travel with the connections: one is
//! taken to open a connection and given back when that connection closes, whether it
//! was serving a session or idle. An agent session that finds neither an idle
//! connection nor a permit waits for either, up to the wait timeout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::config::Settings;
use super::stats::PoolStats;
use crate::engine::transport::Transport;
use crate::protocol::frontend as fe;
use crate::session::upstream::UpstreamSession;

/// Longest a polite `Terminate` to a closing idle connection may take.
const CLOSE_WRITE: Duration = Duration::from_millis(200);

/// Which server sessions are interchangeable: same database, same upstream role and
/// the same start-up parameters (their values are what `DISCARD ALL` resets to).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub role: Option<String>,
    params: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(database: &str, role: Option<&str>, params: &[(String, String)]) -> Self {
        let mut params = params.to_vec();
        params.sort();
        Self {
            database: database.to_owned(),
            role: role.map(str::to_owned),
            params,
        }
    }

    /// The role as the stats name it: the login role's sessions have none.
    fn role_label(&self) -> &str {
        self.role.as_deref().unwrap_or("")
    }
}

/// An authenticated server session, between agent sessions.
pub struct Kept<T> {
    pub conn: T,
    pub session: UpstreamSession,
    pub addr: SocketAddr,
    pub opened: Instant,
}

struct Idle<T> {
    kept: Kept<T>,
    since: Instant,
    permit: Option<OwnedSemaphorePermit>,
}

struct Pool<T> {
    idle: Vec<Idle<T>>,
    limit: Arc<Semaphore>,
    /// Signalled when a connection goes back idle, for a session waiting on a full pool.
    returned: Rc<Notify>,
}

/// What an agent session gets.
pub enum Checkout<T> {
    /// A kept connection, already reset.
    Reused(Kept<T>, Lease),
    /// Room to open one.
    Open(Lease),
    /// The pool stayed full for the whole wait.
    Full,
}

/// A session's claim on its pool's limit, and its place in the counts. Dropped without
/// [`LocalPool::put_back`], the connection is counted as closed.
pub struct Lease {
    stats: Arc<PoolStats>,
    database: String,
    role: String,
    permit: Option<OwnedSemaphorePermit>,
    /// A connection exists (opened, or reused): dropping the lease closes it.
    live: bool,
}

impl Lease {
    /// The connection this lease made room for is open.
    pub fn opened(&mut self) {
        self.live = true;
        self.stats
            .update(&self.database, &self.role, |c| c.opened += 1);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let live = self.live;
        self.stats.update(&self.database, &self.role, |c| {
            c.in_use = c.in_use.saturating_sub(1);
            if live {
                c.closed += 1;
            }
        });
    }
}

pub struct LocalPool<T> {
    settings: Settings,
    stats: Arc<PoolStats>,
    pools: RefCell<HashMap<PoolKey, Pool<T>>>,
}

impl<T: Transport + 'static> LocalPool<T> {
    pub fn new(settings: Settings, stats: Arc<PoolStats>) -> Self {
        Self {
            settings,
            stats,
            pools: RefCell::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn lease(&self, key: &PoolKey, permit: Option<OwnedSemaphorePermit>, live: bool) -> Lease {
        self.stats.update(&key.database, key.role_label(), |c| {
            c.in_use += 1;
            if live {
                c.reused += 1;
            }
        });
        Lease {
            stats: self.stats.clone(),
            database: key.database.clone(),
            role: key.role_label().to_owned(),
            permit,
            live,
        }
    }

    /// A connection for a session with `key`: a kept one if one is idle and sound, else
    /// room to open one, waiting while the pool is full.
    pub async fn checkout(&self, key: &PoolKey) -> Checkout<T> {
        if !self.settings.enabled {
            return Checkout::Open(self.lease(key, None, false));
        }
        let deadline = tokio::time::Instant::now() + self.settings.wait_timeout;
        let mut waiting = false;
        let outcome = loop {
            let (limit, returned) = {
                let mut pools = self.pools.borrow_mut();
                let pool = pools.entry(key.clone()).or_insert_with(|| Pool {
                    idle: Vec::new(),
                    limit: Arc::new(Semaphore::new(self.settings.size)),
                    returned: Rc::new(Notify::new()),
                });
                let mut found = None;
                // The most recently used first: its server process is the warmest.
                while let Some(idle) = pool.idle.pop() {
                    self.stats
                        .update(&key.database, key.role_label(), |c| c.idle -= 1);
                    if idle.kept.opened.elapsed() < self.settings.max_lifetime
                        && idle.kept.conn.quiet()
                    {
                        found = Some(idle);
                        break;
                    }
                    // Closed by the server (a restart, pg_terminate_backend) or past its
                    // lifetime: dropped, and its permit with it.
                    self.stats
                        .update(&key.database, key.role_label(), |c| c.closed += 1);
                    tokio::task::spawn_local(close(idle.kept.conn));
                }
                if let Some(mut idle) = found {
                    let lease = self.lease(key, idle.permit.take(), true);
                    break Checkout::Reused(idle.kept, lease);
                }
                if let Ok(permit) = pool.limit.clone().try_acquire_owned() {
                    break Checkout::Open(self.lease(key, Some(permit), false));
                }
                (pool.limit.clone(), pool.returned.clone())
            };
            if !waiting {
                waiting = true;
                self.stats
                    .update(&key.database, key.role_label(), |c| c.waiting += 1);
            }
            tokio::select! {
                () = returned.notified() => {}
                permit = limit.acquire_owned() => {
                    if let Ok(permit) = permit {
                        break Checkout::Open(self.lease(key, Some(permit), false));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.stats
                        .update(&key.database, key.role_label(), |c| c.timeouts += 1);
                    break Checkout::Full;
                }
            }
        };
        if waiting {
            self.stats
                .update(&key.database, key.role_label(), |c| c.waiting -= 1);
        }
        outcome
    }

    /// Keeps a connection whose reset worked for the next session with `key`. One past
    /// its lifetime, or any connection while pooling is off, is closed instead.
    pub fn put_back(&self, key: PoolKey, kept: Kept<T>, mut lease: Lease) {
        if !self.settings.enabled || kept.opened.elapsed() >= self.settings.max_lifetime {
            drop(lease);
            tokio::task::spawn_local(close(kept.conn));
            return;
        }
        lease.live = false;
        let permit = lease.permit.take();
        drop(lease);
        let mut pools = self.pools.borrow_mut();
        let Some(pool) = pools.get_mut(&key) else {
            // Every checkout creates its pool, and pools are never removed.
            return;
        };
        self.stats
            .update(&key.database, key.role_label(), |c| c.idle += 1);
        pool.idle.push(Idle {
            kept,
            since: Instant::now(),
            permit,
        });
        pool.returned.notify_one();
    }

    /// Closes the idle connections unused for the idle timeout, past their lifetime or
    /// no longer sound. Run now and then by the worker.
    pub fn reap(&self) {
        let mut closed = Vec::new();
        for (key, pool) in self.pools.borrow_mut().iter_mut() {
            let before = pool.idle.len();
            let settings = self.settings;
            let (keep, gone): (Vec<_>, Vec<_>) =
                std::mem::take(&mut pool.idle).into_iter().partition(|i| {
                    i.since.elapsed() < settings.idle_timeout
                        && i.kept.opened.elapsed() < settings.max_lifetime
                        && i.kept.conn.quiet()
                });
            pool.idle = keep;
            let n = (before - pool.idle.len()) as u64;
            if n > 0 {
                self.stats.update(&key.database, key.role_label(), |c| {
                    c.idle -= n;
                    c.closed += n;
                });
            }
            closed.extend(gone);
        }
        for idle in closed {
            tokio::task::spawn_local(close(idle.kept.conn));
        }
    }

    /// Closes every idle connection (the gateway is stopping).
    pub async fn close_all(&self) {
        let mut all = Vec::new();
        for (key, pool) in self.pools.borrow_mut().iter_mut() {
            let n = pool.idle.len() as u64;
            if n > 0 {
                self.stats.update(&key.database, key.role_label(), |c| {
                    c.idle -= n;
                    c.closed += n;
                });
            }
            all.append(&mut pool.idle);
        }
        for idle in all {
            close(idle.kept.conn).await;
        }
    }
}

/// Ends an upstream session the way a client should, so the server logs a clean exit.
async fn close<T: Transport + 'static>(conn: T) {
    let _ = tokio::time::timeout(CLOSE_WRITE, conn.write_all(fe::terminate())).await;
    conn.shutdown();
}

/// How often a worker looks for idle connections to close.
pub const REAP_EVERY: Duration = Duration::from_secs(5);
