//! The I/O engines: thin drivers that move bytes between sockets and the sans-IO core.
//!
//! Both engines are thread-per-core: each worker thread owns a single-threaded runtime
//! and its own `SO_REUSEPORT` listener on the same address, so the kernel spreads
//! connections across cores and a session never migrates between threads.
//!
//! - [`epoll`]: tokio's current-thread runtime on epoll, what `auto` runs: on the
//!   bench it is the faster of the two for small queries and masked results and uses
//!   less CPU per GB (README, "Choosing the I/O engine").
//! - [`uring`]: io_uring, through this crate's own reactor ([`ring`]), when `io_engine = "uring"` asks for it.
//!
//! Everything else is shared: [`conn`] is the whole life of one connection, written
//! once against the [`transport::Transport`] trait both engines implement; [`side`]
//! holds the upstream connections the gateway reserves for its own questions.

mod batch;
pub mod cancel;
pub mod conn;
pub mod epoll;
mod hold;
pub mod probe;
mod ring;
pub mod shared;
pub mod side;
mod spin;
pub mod transport;
pub mod uring;

/// A read at least this long is part of a stream: PostgreSQL flushes a large result or a
/// COPY 8 KiB at a time (`PQ_SEND_BUFFER_SIZE`), so the next chunk is a server flush away,
/// not a round trip. Busy-polling ([`spin`]) stops for such reads and read batching
/// ([`batch`]) counts them.
pub(crate) const STREAMING_READ: usize = 8192;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::IoEngine;
pub use shared::Shared;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring is not available: {0}")]
    UringUnavailable(String),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Which engine ended up running, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    pub engine: IoEngine,
    pub reason: String,
}

/// Resolves `auto` to epoll, the engine the bench measures faster here (README,
/// "Choosing the I/O engine"); an explicit choice is honoured or fails.
pub fn choose(requested: IoEngine) -> Result<EngineChoice, EngineError> {
    match requested {
        IoEngine::Epoll => Ok(EngineChoice {
            engine: IoEngine::Epoll,
            reason: "requested".into(),
        }),
        IoEngine::Uring => uring::probe()
            .map(|()| EngineChoice {
                engine: IoEngine::Uring,
                reason: "requested".into(),
            })
            .map_err(EngineError::UringUnavailable),
        IoEngine::Auto => Ok(EngineChoice {
            engine: IoEngine::Epoll,
            reason:
                "auto: epoll, the faster engine on the bench (io_engine = \"uring\" for io_uring)"
                    .into(),
        }),
    }
}

/// Binds `workers` listeners on one address with `SO_REUSEPORT`. The first bind fixes
/// the port (which matters when the configured port is 0).
pub fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, EngineError> {
    // SO_REUSEPORT would let a second gateway (same user) silently share the port with
    // a running one, splitting sessions between them: claim the port alone first.
    if addr.port() != 0 {
        probe_exclusive(addr).map_err(|source| EngineError::Listen { addr, source })?;
    }
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let l = bind_one(addr).map_err(|source| EngineError::Listen { addr, source })?;
        addr = l
            .local_addr()
            .map_err(|source| EngineError::Listen { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

fn probe_exclusive(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Number of worker threads: configured, else one per core.
/// A worker's upstream pool, with the task that closes its stale idle connections.
/// Called on the worker's own runtime, inside its `LocalSet`.
fn worker_pool<C: conn::Connect>(shared: &Shared) -> std::rc::Rc<conn::UpstreamPool<C>> {
    let pool = std::rc::Rc::new(crate::pool::LocalPool::new(
        shared.pool_settings,
        shared.pools.clone(),
    ));
    if pool.enabled() {
        let reaper = std::rc::Rc::downgrade(&pool);
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(crate::pool::local::REAP_EVERY).await;
                match reaper.upgrade() {
                    Some(p) => p.reap(),
                    None => return,
                }
            }
        });
    }
    pool
}

pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Where the gateway is in its life, in order: each phase includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Phase {
    #[default]
    Running,
    /// SIGTERM: open sessions go on, new connections are refused with 57P03.
    Draining,
    /// The grace period is over (or SIGINT, or a second SIGTERM): open sessions are sent
    /// FATAL 57P01 and closed.
    Cutting,
    /// The listeners close and the workers end.
    Exiting,
}

/// The gateway's phase and live-session count, shared by all workers. A `watch` channel
/// rather than a runtime's primitive: workers run on io_uring and epoll runtimes alike.
#[derive(Debug)]
pub struct Lifecycle {
    phase: tokio::sync::watch::Sender<Phase>,
    sessions: AtomicUsize,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: tokio::sync::watch::Sender::new(Phase::Running),
            sessions: AtomicUsize::new(0),
        }
    }
}

impl Lifecycle {
    /// Moves to `phase` (never back).
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether new connections are refused (draining or later).
    pub fn is_stopping(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves once the gateway has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives as long as `self`, so this cannot fail while borrowed.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    pub fn session_started(self: &Arc<Self>) -> SessionCount {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        SessionCount(self.clone())
    }
}

/// Counts one live session until dropped.
pub struct SessionCount(Arc<Lifecycle>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the chosen engine's workers; returns their thread handles.
pub fn start(
    choice: &EngineChoice,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
) -> Result<Vec<std::thread::JoinHandle<()>>, EngineError> {
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let engine = choice.engine;
        let h = std::thread::Builder::new()
            .name(format!("portcullis-w{i}"))
            .spawn(move || match engine {
                IoEngine::Uring => uring::worker(shared, listener),
                _ => epoll::worker(shared, listener),
            })
            .map_err(EngineError::Thread)?;
        handles.push(h);
    }
    Ok(handles)
}
