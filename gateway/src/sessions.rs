//! The agent sessions open now: who, from where, on which worker, doing what. Read by
//! the console's `SHOW SESSIONS` (and anything else that wants a live list).
//!
//! A session registers once it is established and is removed when its [`Listed`] guard
//! drops, however the session ends. The registry's lock is taken only then, and by a
//! reader taking a snapshot; while the session runs it updates its [`Live`] counters with
//! relaxed atomics (a handful per statement), so the data path never waits on a reader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a session is doing, as `SHOW SESSIONS` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Between statements, outside a transaction.
    Idle = 0,
    /// A statement was sent and its answer is not complete yet.
    Active = 1,
    /// A statement waits for a reviewer's decision.
    Held = 2,
    /// Between statements inside a transaction.
    IdleInTransaction = 3,
    /// Between statements inside a failed transaction.
    FailedTransaction = 4,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Active => "active",
            State::Held => "held",
            State::IdleInTransaction => "idle in transaction",
            State::FailedTransaction => "idle in transaction (aborted)",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Active,
            2 => State::Held,
            3 => State::IdleInTransaction,
            4 => State::FailedTransaction,
            _ => State::Idle,
        }
    }
}

/// The counters a running session updates; relaxed, since readers only report them.
#[derive(Debug, Default)]
pub struct Live {
    state: AtomicU8,
    statements: AtomicU64,
    denied: AtomicU64,
    held: AtomicU64,
    /// Bytes the gateway forwarded to the server for this session.
    to_server: AtomicU64,
    /// Bytes the gateway sent to the agent.
    to_client: AtomicU64,
}

impl Live {
    #[inline]
    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// A statement was judged: `Allow`, `Deny` or `Hold`.
    #[inline]
    pub fn statement(&self, verdict: &crate::session::hooks::Verdict) {
        use crate::session::hooks::Verdict;
        self.statements.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Allow => {}
            Verdict::Deny(_) => {
                self.denied.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Hold(_) => {
                self.held.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn totals(&self) -> Totals {
        let statements = self.statements.load(Ordering::Relaxed);
        let denied = self.denied.load(Ordering::Relaxed);
        let held = self.held.load(Ordering::Relaxed);
        Totals {
            sessions: 1,
            statements,
            allowed: statements.saturating_sub(denied + held),
            denied,
            held,
            bytes_to_server: self.to_server.load(Ordering::Relaxed),
            bytes_to_client: self.to_client.load(Ordering::Relaxed),
        }
    }

    #[inline]
    pub fn sent_to_server(&self, n: usize) {
        self.to_server.fetch_add(n as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn sent_to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// What is fixed about a session when it registers.
#[derive(Debug, Clone)]
pub struct Info {
    /// The session id its audit records carry.
    pub id: Arc<str>,
    pub identity: String,
    pub database: String,
    pub client: SocketAddr,
    pub application_name: String,
    /// `uring` or `epoll`.
    pub engine: &'static str,
    /// The worker thread serving it (`portcullis-w0`, …).
    pub worker: String,
    /// The role its upstream session runs as.
    pub upstream_role: String,
    /// The TLS version to the agent, if any.
    pub tls: Option<String>,
    /// Unix time, milliseconds.
    pub started_ms: u64,
}

/// One row of a snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub info: Info,
    pub state: State,
    pub statements: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

struct Entry {
    info: Info,
    live: Arc<Live>,
}

/// Sums over sessions since start-up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub sessions: u64,
    pub statements: u64,
    pub allowed: u64,
    pub denied: u64,
    pub held: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.sessions += o.sessions;
        self.statements += o.statements;
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.held += o.held;
        self.bytes_to_server += o.bytes_to_server;
        self.bytes_to_client += o.bytes_to_client;
    }
}

#[derive(Default)]
struct Inner {
    open: BTreeMap<u64, Entry>,
    /// What the sessions that ended added up to.
    closed: Totals,
}

/// The open sessions, in registration order, and the totals of those that ended.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

impl Registry {
    /// Lists a session until the returned guard drops.
    pub fn register(&self, info: Info) -> Listed<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live::default());
        self.lock().open.insert(
            key,
            Entry {
                info,
                live: live.clone(),
            },
        );
        Listed {
            registry: self,
            key,
            live,
        }
    }

    /// The sessions open now, oldest first.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.lock()
            .open
            .values()
            .map(|e| Snapshot {
                info: e.info.clone(),
                state: e.live.state(),
                statements: e.live.statements.load(Ordering::Relaxed),
                bytes_to_server: e.live.to_server.load(Ordering::Relaxed),
                bytes_to_client: e.live.to_client.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Every session since start-up, the open ones as far as they got.
    pub fn totals(&self) -> Totals {
        let inner = self.lock();
        let mut t = inner.closed;
        for e in inner.open.values() {
            t.add(e.live.totals());
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a list, not broken invariants.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's place in the registry; dropping it removes the session.
pub struct Listed<'a> {
    registry: &'a Registry,
    key: u64,
    live: Arc<Live>,
}

impl Listed<'_> {
    /// The counters the session updates.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(e) = inner.open.remove(&self.key) {
            let t = e.live.totals();
            inner.closed.add(t);
        }
    }
}

/// The engine name of a `Connect` type (`uring`, `epoll`), from its type name.
pub fn engine_name<C>() -> &'static str {
    let name = std::any::type_name::<C>();
    if name.ends_with("Uring") {
        "uring"
    } else if name.ends_with("Epoll") {
        "epoll"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> Info {
        Info {
            id: id.into(),
            identity: "agent".into(),
            database: "app".into(),
            client: "127.0.0.1:5000".parse().unwrap(),
            application_name: String::new(),
            engine: "epoll",
            worker: "portcullis-w0".into(),
            upstream_role: "app".into(),
            tls: None,
            started_ms: 1,
        }
    }

    #[test]
    fn a_session_is_listed_while_its_guard_lives() {
        let r = Registry::default();
        let a = r.register(info("a"));
        {
            let _b = r.register(info("b"));
            assert_eq!(r.len(), 2);
        }
        let snap = r.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(&*snap[0].info.id, "a");
        use crate::session::hooks::{Refusal, Verdict};
        a.live().statement(&Verdict::Allow);
        a.live()
            .statement(&Verdict::Deny(Refusal::new("42501", "no")));
        a.live().sent_to_server(10);
        a.live().sent_to_client(20);
        a.live().set_state(State::Held);
        let s = &r.snapshot()[0];
        assert_eq!(
            (s.statements, s.bytes_to_server, s.bytes_to_client),
            (2, 10, 20)
        );
        assert_eq!(s.state, State::Held);
        drop(a);
        assert!(r.is_empty());
        let t = r.totals();
        assert_eq!(
            (t.sessions, t.statements, t.allowed, t.denied, t.held),
            (2, 2, 1, 1, 0)
        );
        assert_eq!(t.bytes_to_client, 20);
    }

    #[test]
    fn engine_names_come_from_the_connect_type() {
        assert_eq!(engine_name::<crate::engine::epoll::Epoll>(), "epoll");
        assert_eq!(engine_name::<crate::engine::uring::Uring>(), "uring");
    }
}
