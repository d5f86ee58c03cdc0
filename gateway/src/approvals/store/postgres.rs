//! The shared store: one table in a PostgreSQL database that several gateways use as one
//! queue. A change is committed with a `NOTIFY`, so the gateway holding the session
//! hears of a decision made through any other gateway at once.
//!
//! # The table
//!
//! `portcullis.approval_requests`, made on first use (under an advisory lock, so two
//! gateways starting at once do not trip over each other's `CREATE`):
//!
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS portcullis;
//! CREATE TABLE IF NOT EXISTS portcullis.approval_requests (
//!     id         bigserial PRIMARY KEY,    -- unique across gateways
//!     gateway    text NOT NULL,            -- the gateway holding the session
//!     status     text NOT NULL,
//!     created_ms bigint NOT NULL,
//!     updated_at timestamptz NOT NULL DEFAULT now(),
//!     version    bigint NOT NULL,          -- compare-and-set
//!     body       text NOT NULL             -- the request's JSON, id included
//! );
//! ```
//!
//! The body is `text`, not `jsonb`: `jsonb` refuses a `\u0000` escape, and a request
//! must not become unstorable because a reviewer's reason held one. `body::jsonb` reads
//! it as JSON. A DBA who would rather not let the gateway create anything can run the
//! DDL above (see [`SCHEMA`]) beforehand; the gateway's role then needs only `USAGE` on
//! the schema, `SELECT, INSERT, UPDATE` on the table and `USAGE` on its sequence.
//!
//! # Connections
//!
//! Two per gateway. The writer runs the hub's reads and writes one at a time; every
//! write is a single statement (an implicit transaction) that also calls `pg_notify`,
//! so the notification goes out exactly when the change commits. The listener sits in
//! `LISTEN portcullis_approvals` (the payload of each notification is a request id) and feeds the ids it hears to the hub
//! ([`PostgresStore::take_changes`]).
//!
//! Either may drop. The writer reconnects on the next operation, failing fast while a
//! back-off runs so a dead server does not stall the hub for a connect timeout per
//! call; a failed read is retried once on a fresh connection, a failed write is not
//! (it may have committed). The listener reconnects with back-off on its own and then
//! feeds the ids of every pending request and of every one changed since shortly before
//! it lost its connection: a decision made meanwhile still reaches its waiting session.
//! It also pings every [`PING_INTERVAL`], so a connection that died silently (a
//! partition, no RST) is noticed within a minute, not at TCP keepalive's two hours.
//!
//! # TLS
//!
//! - `approvals.postgres_ca` set: TLS is required and the server's certificate is
//!   verified against that CA bundle and the host name (libpq's `verify-full`). Use this
//!   for a store across a network: whoever can impersonate the store can approve
//!   statements.
//! - Otherwise the URL's `sslmode`, as libpq reads it: `disable` is plaintext; `prefer`
//!   (the default) and `require` encrypt without checking who the server is, `prefer`
//!   falling back to plaintext when the server has no TLS.
//!
//! TLS is rustls with the ring provider, as everywhere else in the gateway. Channel
//! binding is not offered (`tls-server-end-point` depends on the certificate's hash
//! algorithm); SCRAM still authenticates both sides.

use std::error::Error as _;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Statement};
use tracing::{debug, info, warn};

use super::StoreError;
use crate::approvals::model::{NewRequest, Request};

/// The table, made when missing. Run as one simple query: one implicit transaction,
/// so the advisory lock is held until the table is committed.
pub const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7021786315468958828);
CREATE SCHEMA IF NOT EXISTS portcullis;
CREATE TABLE IF NOT EXISTS portcullis.approval_requests (
    id         bigserial PRIMARY KEY,
    gateway    text NOT NULL,
    status     text NOT NULL,
    created_ms bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    version    bigint NOT NULL,
    body       text NOT NULL,
    kind       text NOT NULL DEFAULT 'statement'
);
CREATE INDEX IF NOT EXISTS approval_requests_pending
    ON portcullis.approval_requests (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approval_requests_updated
    ON portcullis.approval_requests (updated_at);
CREATE INDEX IF NOT EXISTS approval_requests_grants
    ON portcullis.approval_requests (id) WHERE kind = 'grant';
";

/// What a table made before grants existed lacks (run under the same lock).
pub const GRANTS_MIGRATION: &str = "
SELECT pg_advisory_xact_lock(7021786315468958828);
ALTER TABLE portcullis.approval_requests
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'statement';
CREATE INDEX IF NOT EXISTS approval_requests_grants
    ON portcullis.approval_requests (id) WHERE kind = 'grant';
";

/// The longest a single store operation may take before the connection is given up.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout when the URL does not give one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the listener checks its connection is alive.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// After a reconnect the listener feeds requests changed since this long before it
/// noticed the loss (a ping interval at worst, plus slack), and at least this long.
const CATCH_UP_MIN: Duration = Duration::from_secs(5 * 60);
/// Most ids fed after a reconnect; more pending requests than this is no queue a person
/// works through.
const CATCH_UP_LIMIT: i64 = 10_000;

pub struct PostgresStore {
    target: Arc<Target>,
    // Boxed: its prepared statements would make every `Store` as large.
    conn: Option<Box<Conn>>,
    /// Set while the writer cannot connect: when to try again, and why it failed.
    down: Option<(Instant, String)>,
    backoff: Backoff,
    changes: Option<mpsc::UnboundedReceiver<i64>>,
    listener: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The listener is a task of its own; without this it would outlive the store.
        self.listener.abort();
    }
}

/// Where the store is and how to reach it.
struct Target {
    config: tokio_postgres::Config,
    /// `None`: plaintext.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `host:port/database`, for messages (never the password).
    place: String,
}

impl Target {
    fn new(url: &str, ca: Option<&Path>) -> Result<Target, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            // Not the URL itself: it may hold a password.
            StoreError::Postgres(format!(
                "the connection string (approvals.postgres_url or the variable in postgres_url_env) is not valid: {}",
                describe(&e)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let place = place(&config);
        let tls = match (ca, config.get_ssl_mode()) {
            (Some(_), SslMode::Disable) => {
                return Err(StoreError::Postgres(format!(
                    "{place}: approvals.postgres_ca is set but the connection string says sslmode=disable; drop one of them"
                )));
            }
            (Some(ca), _) => {
                config.ssl_mode(SslMode::Require);
                Some(Arc::new(verified_tls(ca).map_err(|why| {
                    StoreError::Postgres(format!("approvals.postgres_ca {}: {why}", ca.display()))
                })?))
            }
            (None, SslMode::Disable) => None,
            (None, _) => Some(Arc::new(unverified_tls()?)),
        };
        Ok(Target { config, tls, place })
    }

    /// A new connection whose driver runs on a task of its own; notifications go to
    /// `notes`. The task's result is why the connection ended.
    async fn connect(
        &self,
        application: &str,
        notes: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<(Client, JoinHandle<String>), String> {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            config.application_name(application);
        }
        // The connect timeout covers the TCP connect; this one covers TLS and start-up.
        let limit = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            * 2;
        let connecting = async {
            match &self.tls {
                None => config
                    .connect(NoTls)
                    .await
                    .map(|(client, conn)| (client, drive(conn, notes))),
                Some(tls) => config
                    .connect(RustlsConnect(tls.clone()))
                    .await
                    .map(|(client, conn)| (client, drive(conn, notes))),
            }
        };
        match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot connect: {}", describe(&e))),
            Err(_) => Err(format!(
                "cannot connect: no answer within {}s",
                limit.as_secs()
            )),
        }
    }

    fn err(&self, what: &str, why: impl std::fmt::Display) -> StoreError {
        StoreError::Postgres(format!("{}: {what}: {why}", self.place))
    }
}

fn place(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost".to_owned()
    } else {
        hosts.join(",")
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{hosts}:{port}/{db}")
}

/// A PostgreSQL error as a person reads it: the server's own message with its detail,
/// hint and code, or the chain of causes of a client-side failure.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s += &format!(" ({d})");
        }
        if let Some(h) = db.hint() {
            s += &format!("; hint: {h}");
        }
        s += &format!(" [SQLSTATE {}]", db.code().code());
        return s;
    }
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

/// Drives a connection, handing notifications to `notes`; ends with the reason the
/// connection closed.
fn drive<S, T>(
    mut conn: Connection<S, T>,
    notes: Option<mpsc::UnboundedSender<String>>,
) -> JoinHandle<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(tx) = &notes {
                        let _ = tx.send(n.payload().to_owned());
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    debug!(target: "portcullis::approvals", "store: {}: {}", n.severity(), n.message());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return describe(&e),
                None => return "the connection closed".to_owned(),
            }
        }
    })
}

/// Doubling waits between connection attempts.
struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            max,
        }
    }

    fn wait(&mut self) -> Duration {
        let w = self.next;
        self.next = (self.next * 2).min(self.max);
        w
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The writer connection and its prepared statements.
struct Conn {
    client: Client,
    next_id: Statement,
    insert: Statement,
    get: Statement,
    list_all: Statement,
    list_pending: Statement,
    update: Statement,
    grants_all: Statement,
    grants_live: Statement,
}

impl Conn {
    async fn open(target: &Target, make_schema: bool) -> Result<Conn, StoreError> {
        let (client, _driver) = target
            .connect("portcullis approvals", None)
            .await
            .map_err(|why| StoreError::Postgres(format!("{}: {why}", target.place)))?;
        let within = |what: &'static str| move |_| target.err(what, "no answer within 10s");
        if make_schema {
            let exists = tokio::time::timeout(
                OP_TIMEOUT,
                client.query_one(
                    "SELECT to_regclass('portcullis.approval_requests') IS NOT NULL",
                    &[],
                ),
            )
            .await
            .map_err(within("checking for the table"))?
            .map_err(|e| target.err("checking for the table", describe(&e)))?
            .get::<_, bool>(0);
            if !exists {
                tokio::time::timeout(OP_TIMEOUT, client.batch_execute(SCHEMA))
                    .await
                    .map_err(within("creating portcullis.approval_requests"))?
                    .map_err(|e| {
                        let mut why = describe(&e);
                        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                        {
                            why += "; the gateway's role needs CREATE on the database the first time, or a DBA can create the schema and table beforehand (the DDL is in the docs of the postgres store)";
                        }
                        target.err("creating portcullis.approval_requests", why)
                    })?;
                info!(target: "portcullis::approvals", store = %target.place, "created portcullis.approval_requests");
            }
            let has_kind = tokio::time::timeout(
                OP_TIMEOUT,
                client.query_one(
                    "SELECT count(*) > 0 FROM information_schema.columns
                     WHERE table_schema = 'portcullis' AND table_name = 'approval_requests'
                       AND column_name = 'kind'",
                    &[],
                ),
            )
            .await
            .map_err(within("checking for the kind column"))?
            .map_err(|e| target.err("checking for the kind column", describe(&e)))?
            .get::<_, bool>(0);
            if !has_kind {
                tokio::time::timeout(OP_TIMEOUT, client.batch_execute(GRANTS_MIGRATION))
                    .await
                    .map_err(within("adding the kind column"))?
                    .map_err(|e| {
                        target.err(
                            "adding the kind column (grants)",
                            format!("{}; the table's owner can run the migration in the docs of the postgres store", describe(&e)),
                        )
                    })?;
                info!(target: "portcullis::approvals", store = %target.place, "added the kind column to portcullis.approval_requests");
            }
        }
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                tokio::time::timeout(OP_TIMEOUT, client.prepare(sql))
                    .await
                    .map_err(|_| target.err("preparing statements", "no answer within 10s"))?
                    .map_err(|e| target.err("preparing statements", describe(&e)))
            }
        };
        Ok(Conn {
            next_id: prepare(
                "SELECT nextval(pg_get_serial_sequence('portcullis.approval_requests', 'id'))",
            )
            .await?,
            insert: prepare(
                "WITH ins AS (
                    INSERT INTO portcullis.approval_requests
                        (id, gateway, status, created_ms, version, body, kind)
                    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id)
                 SELECT pg_notify('portcullis_approvals', id::text) FROM ins",
            )
            .await?,
            get: prepare("SELECT body FROM portcullis.approval_requests WHERE id = $1").await?,
            list_all: prepare(
                "SELECT id, body FROM portcullis.approval_requests ORDER BY id DESC LIMIT $1",
            )
            .await?,
            list_pending: prepare(
                "SELECT id, body FROM portcullis.approval_requests
                 WHERE status = 'pending' ORDER BY id DESC LIMIT $1",
            )
            .await?,
            update: prepare(
                "WITH up AS (
                    UPDATE portcullis.approval_requests
                    SET status = $1, version = $2, body = $3, updated_at = now()
                    WHERE id = $4 AND version = $5 RETURNING id)
                 SELECT pg_notify('portcullis_approvals', id::text) FROM up",
            )
            .await?,
            grants_all: prepare(
                "SELECT id, body FROM portcullis.approval_requests
                 WHERE kind = 'grant' ORDER BY id DESC LIMIT $1",
            )
            .await?,
            grants_live: prepare(
                "SELECT id, body FROM portcullis.approval_requests
                 WHERE kind = 'grant' AND status IN ('pending', 'approved')
                 ORDER BY id DESC LIMIT $1",
            )
            .await?,
            client,
        })
    }
}

/// How one operation on the writer failed.
enum Failure {
    /// The connection broke or stopped answering: it is dropped, and a read may retry.
    Lost(StoreError),
    /// The server refused the statement; the connection is fine.
    Refused(StoreError),
}

impl Failure {
    fn into_error(self) -> StoreError {
        match self {
            Failure::Lost(e) | Failure::Refused(e) => e,
        }
    }
}

impl PostgresStore {
    /// Connects both connections, creates the table when missing and starts listening.
    /// `ca`: verify the server against this CA bundle (see the module docs on TLS).
    pub async fn open(url: &str, ca: Option<&Path>) -> Result<PostgresStore, StoreError> {
        let target = Arc::new(Target::new(url, ca)?);
        let conn = Conn::open(&target, true).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Listening before open returns: a change made right after is heard.
        let first = subscribe(&target)
            .await
            .map_err(|why| StoreError::Postgres(format!("{}: listening: {why}", target.place)))?;
        let listener = tokio::spawn(listen(target.clone(), tx, first));
        info!(target: "portcullis::approvals", store = %target.place, tls = target.tls.is_some(), "approvals store (PostgreSQL) open");
        Ok(PostgresStore {
            target,
            conn: Some(Box::new(conn)),
            down: None,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(5)),
            changes: Some(rx),
            listener,
        })
    }

    /// The writer, reconnected if it was lost.
    async fn conn(&mut self) -> Result<&Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
            warn!(target: "portcullis::approvals", store = %self.target.place, "lost the connection to the approvals store; reconnecting");
        }
        if self.conn.is_none() {
            if let Some((at, why)) = &self.down
                && Instant::now() < *at
            {
                return Err(StoreError::Postgres(format!(
                    "{}: not connected ({why}); next attempt in {}ms",
                    self.target.place,
                    at.saturating_duration_since(Instant::now()).as_millis()
                )));
            }
            match Conn::open(&self.target, false).await {
                Ok(c) => {
                    if self.down.take().is_some() {
                        info!(target: "portcullis::approvals", store = %self.target.place, "reconnected to the approvals store");
                    }
                    self.backoff.reset();
                    self.conn = Some(Box::new(c));
                }
                Err(e) => {
                    let wait = self.backoff.wait();
                    warn!(target: "portcullis::approvals", "{e}; retrying in {}ms", wait.as_millis());
                    self.down = Some((Instant::now() + wait, e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_ref().expect("connected above"))
    }

    /// Sorts an operation's outcome; a broken connection is dropped so the next
    /// operation reconnects.
    fn outcome<T>(
        &mut self,
        what: &str,
        r: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, Failure> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.as_db_error().is_some() && !e.is_closed() => {
                Err(Failure::Refused(self.target.err(what, describe(&e))))
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(Failure::Lost(self.target.err(what, describe(&e))))
            }
            Err(_) => {
                // The connection may be mid-statement; a fresh one is simpler than
                // finding out.
                self.conn = None;
                Err(Failure::Lost(self.target.err(
                    what,
                    format!("no answer within {}s", OP_TIMEOUT.as_secs()),
                )))
            }
        }
    }

    pub async fn insert(&mut self, new: &NewRequest) -> Result<Request, StoreError> {
        let c = self.conn().await?;
        let r = tokio::time::timeout(OP_TIMEOUT, c.client.query_one(&c.next_id, &[])).await;
        let id: i64 = self
            .outcome("assigning an id", r)
            .map_err(Failure::into_error)?
            .get(0);
        let req = Request::new(id, new.clone());
        let body =
            serde_json::to_string(&req).map_err(|e| StoreError::Corrupt(id, e.to_string()))?;
        let c = self.conn().await?;
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            c.client.execute(
                &c.insert,
                &[
                    &id,
                    &req.new.origin.gateway,
                    &req.status.as_str(),
                    &(req.created_ms as i64),
                    &(req.version as i64),
                    &body,
                    &kind(&req),
                ],
            ),
        )
        .await;
        // Not retried: the insert may have committed before the connection broke, and a
        // second copy would sit pending with no session waiting on it.
        self.outcome("storing a request", r)
            .map_err(Failure::into_error)?;
        Ok(req)
    }

    pub async fn get(&mut self, id: i64) -> Result<Option<Request>, StoreError> {
        let mut retried = false;
        loop {
            let c = self.conn().await?;
            let r = tokio::time::timeout(OP_TIMEOUT, c.client.query_opt(&c.get, &[&id])).await;
            match self.outcome("reading a request", r) {
                Ok(row) => return row.map(|r| decode(id, r.get(0))).transpose(),
                Err(Failure::Lost(_)) if !retried => retried = true,
                Err(f) => return Err(f.into_error()),
            }
        }
    }

    pub async fn list(
        &mut self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let which = if pending_only {
            Listing::Pending
        } else {
            Listing::All
        };
        self.requests("listing requests", which, limit).await
    }

    pub async fn update(&mut self, next: &Request) -> Result<bool, StoreError> {
        let body =
            serde_json::to_string(next).map_err(|e| StoreError::Corrupt(next.id, e.to_string()))?;
        let c = self.conn().await?;
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            c.client.execute(
                &c.update,
                &[
                    &next.column_status(),
                    &(next.version as i64),
                    &body,
                    &next.id,
                    &(next.version as i64 - 1),
                ],
            ),
        )
        .await;
        // Not retried either: if it committed, the retry would lose the compare-and-set
        // to itself and report someone else's change.
        let n = self
            .outcome("updating a request", r)
            .map_err(Failure::into_error)?;
        Ok(n == 1)
    }

    pub fn take_changes(&mut self) -> Option<mpsc::UnboundedReceiver<i64>> {
        self.changes.take()
    }

    /// Grant requests, newest first; `live_only`: pending or approved ones.
    pub async fn grants(
        &mut self,
        live_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let which = if live_only {
            Listing::GrantsLive
        } else {
            Listing::GrantsAll
        };
        self.requests("listing grants", which, limit).await
    }

    /// Runs one of the listing statements, retried once on a lost connection (it only
    /// reads).
    async fn requests(
        &mut self,
        what: &'static str,
        which: Listing,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut retried = false;
        loop {
            let c = self.conn().await?;
            let st = match which {
                Listing::Pending => &c.list_pending,
                Listing::All => &c.list_all,
                Listing::GrantsLive => &c.grants_live,
                Listing::GrantsAll => &c.grants_all,
            };
            let r = tokio::time::timeout(OP_TIMEOUT, c.client.query(st, &[&limit])).await;
            match self.outcome(what, r) {
                Ok(rows) => {
                    return rows.iter().map(|r| decode(r.get(0), r.get(1))).collect();
                }
                Err(Failure::Lost(_)) if !retried => retried = true,
                Err(f) => return Err(f.into_error()),
            }
        }
    }
}

/// Which listing statement [`PostgresStore::requests`] runs.
#[derive(Clone, Copy)]
enum Listing {
    Pending,
    All,
    GrantsLive,
    GrantsAll,
}

/// The `kind` column: what the request is for.
fn kind(req: &Request) -> &'static str {
    if req.new.grant.is_some() {
        "grant"
    } else {
        "statement"
    }
}

fn decode(id: i64, body: &str) -> Result<Request, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}

/// A listening connection.
struct Subscription {
    client: Client,
    driver: JoinHandle<String>,
    notes: mpsc::UnboundedReceiver<String>,
}

async fn subscribe(target: &Target) -> Result<Subscription, String> {
    let (ntx, notes) = mpsc::unbounded_channel();
    let (client, driver) = target
        .connect("portcullis approvals listener", Some(ntx))
        .await?;
    match tokio::time::timeout(
        OP_TIMEOUT,
        client.batch_execute("LISTEN portcullis_approvals"),
    )
    .await
    {
        Ok(Ok(())) => Ok(Subscription {
            client,
            driver,
            notes,
        }),
        Ok(Err(e)) => Err(format!("LISTEN failed: {}", describe(&e))),
        Err(_) => Err(format!(
            "LISTEN: no answer within {}s",
            OP_TIMEOUT.as_secs()
        )),
    }
}

/// The listener task: forwards ids until the hub's receiver is gone, reconnecting
/// whenever the connection is lost.
async fn listen(target: Arc<Target>, tx: mpsc::UnboundedSender<i64>, first: Subscription) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut current = Some(first);
    // When the last good connection was lost (for the catch-up after reconnecting).
    let mut lost_at: Option<Instant> = None;
    loop {
        let sub = match current.take() {
            Some(s) => s,
            None => match subscribe(&target).await {
                Ok(s) => s,
                Err(why) => {
                    let wait = backoff.wait();
                    warn!(target: "portcullis::approvals", store = %target.place, "approvals listener: {why}; retrying in {}ms", wait.as_millis());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = tx.closed() => return,
                    }
                }
            },
        };
        if let Some(at) = lost_at {
            match catch_up(&sub.client, at.elapsed()).await {
                Ok(ids) => {
                    info!(target: "portcullis::approvals", store = %target.place, fed = ids.len(), "approvals listener reconnected");
                    for id in ids {
                        if tx.send(id).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // Listening without having caught up could leave a session waiting
                    // on a decision it never hears of: start over.
                    let wait = backoff.wait();
                    warn!(target: "portcullis::approvals", store = %target.place, "approvals listener: catching up failed: {}; retrying in {}ms", describe(&e), wait.as_millis());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        backoff.reset();
        match serve(sub, &tx).await {
            None => return,
            Some(why) => {
                lost_at = Some(Instant::now());
                warn!(target: "portcullis::approvals", store = %target.place, "approvals listener lost its connection: {why}; reconnecting");
            }
        }
    }
}

/// Ids of requests still pending or changed within the window.
async fn catch_up(
    client: &Client,
    since_lost: Duration,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let window = (since_lost + PING_INTERVAL * 2).max(CATCH_UP_MIN);
    let rows = client
        .query(
            "SELECT id FROM portcullis.approval_requests
             WHERE status = 'pending' OR updated_at > now() - $1::float8 * interval '1 second'
             ORDER BY id LIMIT $2",
            &[&window.as_secs_f64(), &CATCH_UP_LIMIT],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Forwards notifications until the connection is lost (`Some(why)`) or the hub is gone
/// (`None`).
async fn serve(mut sub: Subscription, tx: &mpsc::UnboundedSender<i64>) -> Option<String> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            note = sub.notes.recv() => match note {
                Some(payload) => match payload.parse::<i64>() {
                    Ok(id) => {
                        if tx.send(id).is_err() {
                            return None;
                        }
                    }
                    Err(_) => debug!(target: "portcullis::approvals", payload, "ignoring a notification that is not a request id"),
                },
                None => {
                    return Some(
                        (&mut sub.driver)
                            .await
                            .unwrap_or_else(|e| format!("the connection task failed: {e}")),
                    );
                }
            },
            _ = ping.tick() => {
                match tokio::time::timeout(OP_TIMEOUT, sub.client.batch_execute("SELECT 1")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(describe(&e)),
                    Err(_) => return Some(format!("no answer to a ping within {}s", OP_TIMEOUT.as_secs())),
                }
            }
            () = tx.closed() => return None,
        }
    }
}

// --- TLS for tokio-postgres on rustls

fn verified_tls(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let f = std::fs::File::open(ca).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(f)) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::engine::shared::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn unverified_tls() -> Result<rustls::ClientConfig, StoreError> {
    let provider = crate::engine::shared::provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Postgres(format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::engine::shared::NoVerify(provider)))
            .with_no_client_auth(),
    )
}

/// rustls as tokio-postgres' TLS (also what the end-to-end tests connect to the gateway
/// with).
#[derive(Clone)]
pub struct RustlsConnect(pub Arc<rustls::ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = RustlsHandshake;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsHandshake, Self::Error> {
        Ok(RustlsHandshake {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

pub struct RustlsHandshake {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(TlsStream)
        })
    }
}

pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_name_the_server_never_the_password() {
        let t = Target::new(
            "postgresql://gw:s3cret@db.example.com:6000/approvals?sslmode=disable",
            None,
        )
        .unwrap();
        assert_eq!(t.place, "db.example.com:6000/approvals");
        assert!(t.tls.is_none());
        let t = Target::new("host=/run/postgresql user=gw sslmode=require", None).unwrap();
        assert_eq!(t.place, "/run/postgresql:5432/gw");
        assert!(t.tls.is_some());
        let e = Target::new("postgresql://gw:s3cret@h/db?sslrootcert=x", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not valid"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = Target::new("postgresql://h/db?sslmode=disable", Some(Path::new("/x")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslmode=disable"), "{e}");
        let e = Target::new("postgresql://h/db", Some(Path::new("/no/such/ca.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("approvals store (PostgreSQL): approvals.postgres_ca /no/such/ca.pem: "),
            "{e}"
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let waits: Vec<u128> = (0..4).map(|_| b.wait().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 1000]);
        b.reset();
        assert_eq!(b.wait().as_millis(), 250);
    }
}
