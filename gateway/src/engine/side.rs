//! Reserved side connections: the upstream connections the gateway keeps open for its own
//! questions about a session (catalog rows for masking, COPY column lists, the approvals'
//! `EXPLAIN` and parameter types), so that an open session never needs a free slot on the
//! server.
//!
//! A full server refuses new connections (53300). Were these questions asked over a
//! connection opened at the moment of need, a session whose masked result needs a
//! catalog row would be refused its result exactly when the database is busiest. So the
//! slots are taken early: a database's reserved connections open before its first
//! session is answered (at start-up for `[upstream] reserve_databases`), a question waits
//! (bounded) for a free one instead of opening a fresh connection, and one that breaks is
//! opened again in the background. Databases no session uses give theirs back after
//! [`LINGER`].
//!
//! The connections live on a thread of their own with a tokio (epoll) runtime: sessions on
//! either engine send their question over a channel and await the answer, so no socket
//! crosses runtimes. Each connection logs in with `default_transaction_read_only = on`:
//! nothing asked on it can write, whatever the statement being explained says.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Shared;
use super::conn::{UpstreamStartError, connect_upstream};
use super::epoll::{Epoll, EpollStream};
use super::transport::{MaybeTls, Transport};
use crate::protocol::{backend as be, frame, frontend as fe};

/// How long a database no session uses keeps its reserved connections.
pub const LINGER: Duration = Duration::from_secs(60);
/// Longest a question waits for one of its database's reserved connections to be free.
pub const WAIT_FOR_FREE: Duration = Duration::from_secs(10);
/// How long a catalog lookup may run before it is cancelled on the server.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(10);
/// After a cancel, how long the server has to answer before the connection is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// How often idle connections are checked for a server that hung up, and lingering
/// databases for release.
const HOUSEKEEPING: Duration = Duration::from_secs(2);
/// Pause between failed attempts to open a reserved connection: doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SideError {
    #[error("the gateway's reserved connections are not running")]
    NotRunning,
    /// The server refused to open a reserved connection (`sqlstate` is its code, e.g.
    /// 53300 when it is full).
    #[error("the database refused the gateway's reserved connection to {database}: {message}")]
    Refused {
        database: String,
        sqlstate: String,
        message: String,
    },
    #[error("the gateway could not open its reserved connection to {database}: {why}")]
    Unreachable { database: String, why: String },
    #[error(
        "none of the gateway's {count} reserved connections to {database} was free within {}s",
        WAIT_FOR_FREE.as_secs()
    )]
    Busy { database: String, count: usize },
    #[error("took longer than {}s and was cancelled", .0.as_secs())]
    TimedOut(Duration),
    /// The server answered with an error; the connection is fine.
    #[error("{0}")]
    Server(String),
    #[error("the reserved connection broke: {0}")]
    Broken(String),
}

impl SideError {
    /// The SQLSTATE to refuse a session with when its database's connections could not
    /// be reserved.
    pub fn sqlstate(&self) -> &str {
        match self {
            SideError::Refused { sqlstate, .. } => sqlstate,
            _ => crate::protocol::sqlstate::CONNECTION_FAILURE,
        }
    }
}

/// One database's reserved connections as everyone may see them.
#[derive(Debug)]
struct Slots {
    database: String,
    target: usize,
    /// Open connections, busy or idle.
    open: AtomicUsize,
    /// Sessions holding a [`Reservation`].
    sessions: AtomicUsize,
    /// Opened at start-up and never given back.
    kept: bool,
    last_error: Mutex<Option<SideError>>,
}

impl Slots {
    fn last_error(&self) -> Option<SideError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<SideError>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// A session's claim on its database's reserved connections; they stay open while any
/// claim does (and [`LINGER`] after the last).
#[derive(Debug)]
pub struct Reservation(Arc<Slots>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Job {
    /// Open the database's connections; answer once one is open or an attempt failed.
    Reserve {
        database: String,
        reply: oneshot::Sender<Result<(), SideError>>,
    },
    Ask {
        database: String,
        /// The upstream role to ask as (`None`: the login role).
        role: Option<String>,
        messages: Bytes,
        keep: u8,
        limit: Duration,
        reply: oneshot::Sender<Result<Vec<Bytes>, SideError>>,
    },
}

/// What `portcullis status` shows: open and wanted connections, in all and per database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideStatus {
    pub open: usize,
    pub target: usize,
    pub databases: Vec<(String, usize, usize)>,
}

/// The handle sessions share; [`start`] runs the thread behind it.
#[derive(Debug)]
pub struct SidePool {
    per_database: usize,
    kept: Vec<String>,
    slots: Mutex<HashMap<String, Arc<Slots>>>,
    jobs: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl SidePool {
    pub fn new(per_database: usize, kept: &[String]) -> Self {
        SidePool {
            per_database: per_database.max(1),
            kept: kept.to_vec(),
            slots: Mutex::new(HashMap::new()),
            jobs: OnceLock::new(),
        }
    }

    /// The database's slots, claimed for a session when `claim`: under the map's lock, so
    /// housekeeping (which decides under the same lock) never gives back a pool between
    /// the look-up and the claim.
    fn slots_of(&self, database: &str, claim: bool) -> Arc<Slots> {
        let mut all = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = all
            .entry(database.to_owned())
            .or_insert_with(|| {
                Arc::new(Slots {
                    database: database.to_owned(),
                    target: self.per_database,
                    open: AtomicUsize::new(0),
                    sessions: AtomicUsize::new(0),
                    kept: self.kept.iter().any(|k| k == database),
                    last_error: Mutex::new(None),
                })
            })
            .clone();
        if claim {
            slots.sessions.fetch_add(1, Ordering::SeqCst);
        }
        slots
    }

    fn send(&self, job: Job) -> Result<(), SideError> {
        self.jobs
            .get()
            .ok_or(SideError::NotRunning)?
            .send(job)
            .map_err(|_| SideError::NotRunning)
    }

    /// Claims `database`'s reserved connections for a session that is about to be
    /// answered, opening them if none is open. An error means the server cannot give the
    /// gateway the slot it needs for this session's lookups: refuse the session.
    pub async fn reserve(&self, database: &str) -> Result<Reservation, SideError> {
        let claim = Reservation(self.slots_of(database, true));
        if claim.0.open.load(Ordering::SeqCst) > 0 {
            return Ok(claim);
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Reserve {
            database: database.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| SideError::NotRunning)??;
        Ok(claim)
    }

    /// Sends `messages` (ending in `Sync` or a `Query`) on one of `database`'s reserved
    /// connections and returns the answer's frames tagged `keep` (`DataRow`s, a
    /// `ParameterDescription`), or the server's error. What runs longer than `limit` is
    /// cancelled on the server. The question runs as the login role.
    pub async fn ask(
        &self,
        database: &str,
        messages: Bytes,
        keep: u8,
        limit: Duration,
    ) -> Result<Vec<Bytes>, SideError> {
        self.ask_as(database, None, messages, keep, limit).await
    }

    /// [`SidePool::ask`] as upstream role `role` (the session's, for an `EXPLAIN` the
    /// server must check privileges for as it would for the statement itself).
    pub async fn ask_as(
        &self,
        database: &str,
        role: Option<&str>,
        messages: Bytes,
        keep: u8,
        limit: Duration,
    ) -> Result<Vec<Bytes>, SideError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Ask {
            database: database.to_owned(),
            role: role.map(str::to_owned),
            messages,
            keep,
            limit,
            reply,
        })?;
        answer.await.map_err(|_| SideError::NotRunning)?
    }

    /// A simple query's `DataRow`s (catalog lookups).
    pub async fn query(&self, database: &str, sql: &str) -> Result<Vec<Bytes>, SideError> {
        self.ask(
            database,
            fe::query(sql.as_bytes()),
            be::DATA_ROW,
            LOOKUP_LIMIT,
        )
        .await
    }

    pub fn status(&self) -> SideStatus {
        let all = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = SideStatus::default();
        for slots in all.values() {
            let open = slots.open.load(Ordering::SeqCst);
            s.open += open;
            s.target += slots.target;
            s.databases
                .push((slots.database.clone(), open, slots.target));
        }
        s.databases.sort();
        s
    }
}

/// Starts the thread that owns the reserved connections and opens those of
/// `[upstream] reserve_databases`, waiting (at most the upstream connect timeout each)
/// until each has one open or failed to; failures are logged and retried in the
/// background. The thread ends with the process.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    if shared.side.jobs.set(tx).is_err() {
        return Ok(());
    }
    let kept = shared.side.kept.clone();
    let thread = shared.clone();
    std::thread::Builder::new()
        .name("portcullis-side".into())
        .spawn(move || run(thread, rx))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for database in kept {
        let limit = shared.upstream.connect_timeout + Duration::from_secs(1);
        match rt.block_on(tokio::time::timeout(limit, shared.side.reserve(&database))) {
            Ok(Ok(claim)) => {
                // Kept databases never linger out, so the claim can go.
                drop(claim);
                info!(%database, "reserved connections open");
            }
            Ok(Err(e)) => warn!(%database, "{e}; retrying in the background"),
            Err(_) => {
                warn!(%database, "reserved connections not open yet; retrying in the background")
            }
        }
    }
    Ok(())
}

struct SideConn {
    stream: MaybeTls<EpollStream>,
    addr: SocketAddr,
    cancel_key: Option<(i32, i32)>,
    buf: BytesMut,
    /// The upstream role it is `SET ROLE` to (`None`: the login role).
    role: Option<String>,
}

/// One question for a reserved connection.
struct Question {
    role: Option<String>,
    messages: Bytes,
    keep: u8,
    limit: Duration,
}

/// The thread's view of one database.
struct Db {
    slots: Arc<Slots>,
    idle: RefCell<Vec<SideConn>>,
    filling: Cell<bool>,
    /// Released by housekeeping: its tasks stop.
    closed: Cell<bool>,
    /// A connection was opened or freed, or an attempt to open one failed.
    changed: Notify,
    /// Finished attempts to open a connection.
    attempts: Cell<u64>,
    /// Since when no session claims it.
    unclaimed_since: Cell<Option<Instant>>,
}

type Dbs = Rc<RefCell<HashMap<String, Rc<Db>>>>;

fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the reserved connections' runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let dbs: Dbs = Rc::default();
        tokio::task::spawn_local(housekeeping(shared.clone(), dbs.clone()));
        while let Some(job) = rx.recv().await {
            match job {
                Job::Reserve { database, reply } => {
                    let db = db_of(&shared, &dbs, &database);
                    tokio::task::spawn_local(reserve(shared.clone(), db, reply));
                }
                Job::Ask {
                    database,
                    role,
                    messages,
                    keep,
                    limit,
                    reply,
                } => {
                    let db = db_of(&shared, &dbs, &database);
                    let shared = shared.clone();
                    tokio::task::spawn_local(async move {
                        let question = Question {
                            role,
                            messages,
                            keep,
                            limit,
                        };
                        let _ = reply.send(ask(&shared, &db, question).await);
                    });
                }
            }
        }
    });
}

fn db_of(shared: &Shared, dbs: &Dbs, database: &str) -> Rc<Db> {
    dbs.borrow_mut()
        .entry(database.to_owned())
        .or_insert_with(|| {
            Rc::new(Db {
                slots: shared.side.slots_of(database, false),
                idle: RefCell::new(Vec::new()),
                filling: Cell::new(false),
                closed: Cell::new(false),
                changed: Notify::new(),
                attempts: Cell::new(0),
                unclaimed_since: Cell::new(None),
            })
        })
        .clone()
}

async fn reserve(shared: Arc<Shared>, db: Rc<Db>, reply: oneshot::Sender<Result<(), SideError>>) {
    let seen = db.attempts.get();
    fill(&shared, &db);
    loop {
        let changed = db.changed.notified();
        if db.slots.open.load(Ordering::SeqCst) > 0 {
            let _ = reply.send(Ok(()));
            return;
        }
        if db.attempts.get() > seen {
            let e = db.slots.last_error().unwrap_or(SideError::Unreachable {
                database: db.slots.database.clone(),
                why: "no connection could be opened".into(),
            });
            let _ = reply.send(Err(e));
            return;
        }
        changed.await;
    }
}

/// Opens connections until the database has its count, in the background; one filler
/// per database.
fn fill(shared: &Arc<Shared>, db: &Rc<Db>) {
    if db.filling.replace(true) {
        return;
    }
    let (shared, db) = (shared.clone(), db.clone());
    tokio::task::spawn_local(async move {
        let mut backoff = FIRST_BACKOFF;
        while !db.closed.get() && db.slots.open.load(Ordering::SeqCst) < db.slots.target {
            let result = open(&shared, &db.slots.database).await;
            db.attempts.set(db.attempts.get() + 1);
            match result {
                Ok(conn) => {
                    db.slots.open.fetch_add(1, Ordering::SeqCst);
                    if db.slots.last_error().is_some() {
                        info!(database = %db.slots.database, "reserved connection open again");
                    }
                    db.slots.set_error(None);
                    db.idle.borrow_mut().push(conn);
                    db.changed.notify_waiters();
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    if db.slots.last_error().as_ref() != Some(&e) {
                        warn!(database = %db.slots.database, "{e}");
                    }
                    db.slots.set_error(Some(e));
                    db.changed.notify_waiters();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        db.filling.set(false);
    });
}

async fn open(shared: &Shared, database: &str) -> Result<SideConn, SideError> {
    let params = [
        (
            "application_name".to_owned(),
            "portcullis reserved".to_owned(),
        ),
        ("default_transaction_read_only".to_owned(), "on".to_owned()),
    ];
    match connect_upstream::<Epoll>(shared, database, &params, None).await {
        Ok((stream, session, addr)) => {
            debug!(%database, "reserved connection opened");
            Ok(SideConn {
                stream,
                addr,
                cancel_key: session.cancel_key,
                buf: BytesMut::with_capacity(8192),
                role: None,
            })
        }
        Err(UpstreamStartError::Refused(f)) => {
            let (sqlstate, message) = be::error_summary(f.get(5..).unwrap_or_default());
            Err(SideError::Refused {
                database: database.to_owned(),
                sqlstate,
                message,
            })
        }
        Err(UpstreamStartError::Other(e)) => Err(SideError::Unreachable {
            database: database.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// Takes a free connection, waiting for one at most [`WAIT_FOR_FREE`].
async fn acquire(shared: &Arc<Shared>, db: &Rc<Db>) -> Result<SideConn, SideError> {
    let deadline = Instant::now() + WAIT_FOR_FREE;
    let seen = db.attempts.get();
    loop {
        let changed = db.changed.notified();
        if let Some(c) = db.idle.borrow_mut().pop() {
            return Ok(c);
        }
        let open = db.slots.open.load(Ordering::SeqCst);
        if open < db.slots.target {
            fill(shared, db);
        }
        // None open and the latest attempt failed: say why rather than wait it out.
        if open == 0
            && db.attempts.get() > seen
            && let Some(e) = db.slots.last_error()
        {
            return Err(e);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(match db.slots.last_error() {
                Some(e) if db.slots.open.load(Ordering::SeqCst) == 0 => e,
                _ => SideError::Busy {
                    database: db.slots.database.clone(),
                    count: db.slots.target,
                },
            });
        }
    }
}

/// One question, retried once on another connection when the first broke before
/// answering anything (a server that closed an idle connection).
async fn ask(shared: &Arc<Shared>, db: &Rc<Db>, q: Question) -> Result<Vec<Bytes>, SideError> {
    let mut retried = false;
    loop {
        let mut conn = acquire(shared, db).await?;
        let mut outcome = None;
        if conn.role != q.role {
            // Switched per question: the connections serve every session of the database.
            let sql = match &q.role {
                Some(r) => crate::roles::set_role_sql(r),
                None => "RESET ROLE".to_owned(),
            };
            let switch = exchange(
                &mut conn,
                fe::query(sql.as_bytes()),
                0,
                q.limit,
                shared.limits.max_message,
            )
            .await;
            match switch {
                Exchange::Done { result: Ok(_), .. } => conn.role = q.role.clone(),
                other => outcome = Some(other),
            }
        }
        let outcome = match outcome {
            Some(failed) => failed,
            None => {
                exchange(
                    &mut conn,
                    q.messages.clone(),
                    q.keep,
                    q.limit,
                    shared.limits.max_message,
                )
                .await
            }
        };
        match outcome {
            Exchange::Done { result, reusable } => {
                if reusable && !db.closed.get() {
                    db.idle.borrow_mut().push(conn);
                    db.changed.notify_waiters();
                } else {
                    discard(shared, db, conn);
                }
                return result;
            }
            Exchange::Broken { why, answered } => {
                discard(shared, db, conn);
                if answered || retried {
                    return Err(SideError::Broken(why));
                }
                debug!(database = %db.slots.database, "reserved connection broke ({why}); asking on another");
                retried = true;
            }
        }
    }
}

/// Closes a connection and has another opened in its place.
fn discard(shared: &Arc<Shared>, db: &Rc<Db>, conn: SideConn) {
    db.slots.open.fetch_sub(1, Ordering::SeqCst);
    conn.stream.shutdown();
    db.changed.notify_waiters();
    if !db.closed.get() {
        fill(shared, db);
    }
}

enum Exchange {
    Done {
        result: Result<Vec<Bytes>, SideError>,
        /// The server is idle again, outside any transaction.
        reusable: bool,
    },
    Broken {
        why: String,
        /// Some answer had arrived (the question may have run).
        answered: bool,
    },
}

async fn exchange(
    conn: &mut SideConn,
    messages: Bytes,
    keep: u8,
    limit: Duration,
    max_message: usize,
) -> Exchange {
    let broken = |why: String, answered| Exchange::Broken { why, answered };
    if let Err(e) = conn.stream.write_all(messages).await {
        return broken(e.to_string(), false);
    }
    let cancel_at = Instant::now() + limit;
    let cancelled = Cell::new(false);
    let (addr, key) = (conn.addr, conn.cancel_key);
    // Beside the reader rather than around it: a read cut off would lose what it had
    // buffered, and the server's answer to the cancel is what makes the connection
    // reusable.
    let canceller = async {
        tokio::time::sleep_until(cancel_at).await;
        cancelled.set(true);
        send_cancel(addr, key).await;
    };
    let reader = async {
        let mut answered = false;
        let mut rows = Vec::new();
        let mut failure = None;
        let mut buf = std::mem::take(&mut conn.buf);
        loop {
            loop {
                let frame = match frame::split_frame(&mut buf, max_message) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return broken(e.to_string(), true),
                };
                answered = true;
                match frame.tag() {
                    t if t == keep => rows.push(frame.into_bytes()),
                    be::ERROR_RESPONSE => failure = Some(be::error_summary(frame.body()).1),
                    be::READY_FOR_QUERY => {
                        let reusable = frame.body() == b"I" && buf.is_empty();
                        conn.buf = buf;
                        let result = match failure {
                            None => Ok(rows),
                            Some(_) if cancelled.get() => Err(SideError::TimedOut(limit)),
                            Some(f) => Err(SideError::Server(f)),
                        };
                        return Exchange::Done { result, reusable };
                    }
                    _ => {}
                }
            }
            let read = conn.stream.read(buf, 8192);
            let (res, b) = match tokio::time::timeout_at(cancel_at + CANCEL_GRACE, read).await {
                Ok(r) => r,
                Err(_) => {
                    return broken(
                        format!("no answer within {}s, even to a cancel", limit.as_secs()),
                        true,
                    );
                }
            };
            buf = b;
            match res {
                Ok(0) => return broken("the database closed it".into(), answered),
                Ok(_) => {}
                Err(e) => return broken(e.to_string(), answered),
            }
        }
    };
    tokio::pin!(reader, canceller);
    let mut cancel_sent = false;
    loop {
        tokio::select! {
            outcome = &mut reader => {
                // A cancel under way is seen through before the connection is reused, so
                // it cannot land on the next question.
                if cancelled.get() && !cancel_sent {
                    (&mut canceller).await;
                }
                return outcome;
            }
            () = &mut canceller, if !cancel_sent => cancel_sent = true,
        }
    }
}

async fn send_cancel(addr: SocketAddr, key: Option<(i32, i32)>) {
    let Some((pid, secret)) = key else {
        return;
    };
    let connect = <Epoll as super::conn::Connect>::connect(addr);
    if let Ok(Ok(s)) = tokio::time::timeout(CANCEL_GRACE, connect).await {
        let _ = s.write_all(fe::cancel_request(pid, secret)).await;
        // PostgreSQL closes after reading the request.
        let _ = tokio::time::timeout(CANCEL_GRACE, s.read(BytesMut::with_capacity(16), 16)).await;
    }
}

/// Drops connections the server closed while idle (they are opened again) and gives
/// back those of databases no session has claimed for [`LINGER`].
async fn housekeeping(shared: Arc<Shared>, dbs: Dbs) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    loop {
        tick.tick().await;
        let all: Vec<Rc<Db>> = dbs.borrow().values().cloned().collect();
        for db in all {
            let hung_up: Vec<SideConn> = {
                let mut idle = db.idle.borrow_mut();
                let (gone, alive): (Vec<_>, Vec<_>) =
                    idle.drain(..).partition(|c| c.stream.peer_closed());
                *idle = alive;
                gone
            };
            for c in hung_up {
                debug!(database = %db.slots.database, "a reserved connection was closed by the server");
                discard(&shared, &db, c);
            }
            if db.slots.kept {
                continue;
            }
            let claimed = db.slots.sessions.load(Ordering::SeqCst) > 0;
            match (claimed, db.unclaimed_since.get()) {
                (true, _) => db.unclaimed_since.set(None),
                (false, None) => db.unclaimed_since.set(Some(Instant::now())),
                (false, Some(since)) if since.elapsed() >= LINGER => release(&shared, &dbs, &db),
                (false, Some(_)) => {}
            }
        }
    }
}

/// Gives a database's connections back, unless a session claimed it meanwhile.
fn release(shared: &Shared, dbs: &Dbs, db: &Rc<Db>) {
    {
        let mut all = shared.side.slots.lock().unwrap_or_else(|p| p.into_inner());
        if db.slots.sessions.load(Ordering::SeqCst) > 0 {
            return;
        }
        all.remove(&db.slots.database);
    }
    dbs.borrow_mut().remove(&db.slots.database);
    db.closed.set(true);
    for c in db.idle.borrow_mut().drain(..) {
        db.slots.open.fetch_sub(1, Ordering::SeqCst);
        let stream = c.stream;
        tokio::task::spawn_local(async move {
            let _ = stream.write_all(fe::terminate()).await;
            stream.shutdown();
        });
    }
    debug!(database = %db.slots.database, "reserved connections given back: no session for a minute");
}
