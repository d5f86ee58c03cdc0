//! The relay core of an established session.
//!
//! It is fed the bytes each side sent and queues the bytes to deliver to the other.
//! Frames nobody needs to look at are forwarded as zero-copy runs: consecutive frames
//! become one `Bytes` cut from the receive buffer, and a pass-through frame larger than
//! the buffer (a 1 GB `DataRow` value, a long `CopyData`) is forwarded piece by piece as it
//! arrives, so memory stays bounded by the read buffer whatever the result size.
//!
//! The core keeps an ordered queue of what the server still owes the client ([`Expect`]).
//! That is how it knows which statement a `RowDescription` belongs to, which portal's
//! rows are streaming, and where in the response stream a refusal must go: a refused
//! statement becomes a synthetic `ErrorResponse` queued at its place, the client's
//! following messages are skipped up to `Sync`, and the session carries on.
//!
//! A statement the policy holds for a person is a state of the core too ([`Held`]): the
//! relay stops consuming what the client sends (its bytes stay in the driver's buffer,
//! which the driver stops filling), and the driver waits for the decision and hands it
//! back with [`Relay::release`]. A simple `Query` is held whole; in the extended
//! protocol the `Parse` and `Bind` go through (they run nothing) and the `Execute` of a
//! held statement's portal is what waits, so the reviewer sees the bound parameters.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::hooks::{Ask, Effects, Hold, Hooks, Outcome, Refusal, RowStage, Verdict, Via};
use super::tracker::{Described, Tracker};
use crate::audit::trail::{self, StatementFacts, Trail};
use crate::metrics::{ClassLabel, SessionMetrics, VerdictLabel};
use crate::protocol::backend::{self as be, Severity, error_response};
use crate::protocol::frame::{Frame, peek_header, split_frame};
use crate::protocol::frontend as fe;
use crate::protocol::{ProtocolError, sqlstate};

/// Limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Largest message the gateway will hold whole (statements, `Bind`s, rows under a
    /// masking rule). Pass-through frames stream and are not held.
    pub max_message: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_message: 1 << 30,
        }
    }
}

/// Why a session ends.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client protocol violation: {0}")]
    Client(ProtocolError),
    #[error("server protocol violation: {0}")]
    Server(ProtocolError),
    #[error("the database server closed the connection")]
    ServerGone,
}

/// Which side bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Server,
}

/// What the server still owes the client, in order.
#[derive(Debug)]
enum Expect {
    /// `refusal`: the client's `Parse` was refused and replaced by one that fails (see
    /// [`REFUSED_SQL`]); the server's error for it is swapped for this frame.
    Parse {
        refusal: Option<Bytes>,
        /// Sent by the gateway itself (an edit): its completion is not the client's.
        quiet: bool,
    },
    Bind {
        quiet: bool,
    },
    Close {
        quiet: bool,
    },
    /// An answer of the gateway's own, owed at this place: sent when it reaches the
    /// front, followed by `ReadyForQuery` with the session's status when `ready`.
    Answer {
        frames: Bytes,
        ready: bool,
    },
    DescribeStatement(Described),
    /// `slot` is `None` when the portal was never bound (the server will say so).
    DescribePortal {
        slot: Option<Described>,
        injected: bool,
    },
    Execute {
        sql: Bytes,
        slot: Option<Described>,
        formats: Vec<i16>,
        /// Its number in the session's audit trail.
        audit: Option<u64>,
        /// The statement [`Relay::guard`] watches.
        guarded: bool,
    },
    Sync,
    /// A simple query or function call: everything up to `ReadyForQuery`. `refusal` as
    /// for `Parse`, for a refused query or call.
    Query {
        sql: Bytes,
        refusal: Option<Bytes>,
        mode: QueryMode,
        audit: Option<u64>,
        guarded: bool,
    },
    /// A previewed statement's captured answer, owed the client once the preview's
    /// transaction is committed: sent when it reaches the front, with `ReadyForQuery`.
    Replay {
        frames: Vec<Bytes>,
    },
}

/// Whose a simple query's answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryMode {
    Client,
    /// The gateway's own (opening or ending a preview's transaction): dropped, its
    /// error kept in [`Relay::quiet_error`].
    Quiet,
    /// A held statement run as a preview: kept in [`Preview::captured`].
    Capture,
    /// The gateway's own, settling the server's state after a guarded statement (see
    /// [`Guard`]): its `ReadyForQuery` is the client's, and with `errors` so is its
    /// error (a `COMMIT` that failed); the rest is dropped.
    Settle {
        errors: bool,
    },
    /// The gateway's own catalog lookup before a client statement ([`Hooks::lookup`]):
    /// its rows go to the hooks, nothing to the client.
    Lookup,
}

/// A statement whose result a stage may refuse after the server ran it. Until its
/// answer is judged the client's next messages wait (the driver reads on when
/// [`Relay::client_waits`] turns false), so a refusal can still decide what the server
/// does next and the server's outcome is the one the client is told:
///
/// - a simple query in a transaction block fails the block (the gateway's failing
///   placeholder runs after it), so the client sees `ReadyForQuery('E')` and its
///   `COMMIT` rolls back;
/// - a simple query that changes rows outside a block runs in a transaction of the
///   gateway's, committed only when its result went through whole;
/// - an `Execute` is followed by a failing one of the gateway's, so the server skips the
///   batch's later messages and rolls the batch back at `Sync` (or fails the block);
/// - an `Execute` in the client's block with its `Sync` next goes as sent, and a refusal
///   fails the block after that `Sync`, before the client's next batch (no round trip).
///
/// A read outside a block followed by its `Sync` leaves nothing to undo and is not
/// guarded: the common one-statement batch costs nothing.
#[derive(Debug, Clone, Copy)]
struct Guard {
    settle: Settle,
    refused: bool,
    /// The statement is a `COPY … FROM STDIN`: it reads the client's data and returns no
    /// rows, so the client is not held (its data is what the server waits for).
    copy_in: bool,
    /// [`Settle::AfterSync`]: the batch's `Sync` has gone; what follows it waits.
    sync_seen: bool,
}

impl Guard {
    fn new(settle: Settle) -> Self {
        Guard {
            settle,
            refused: false,
            copy_in: false,
            sync_seen: false,
        }
    }

    /// Whether the client's next frames must wait now.
    fn blocks(&self) -> bool {
        !self.copy_in && (self.settle != Settle::AfterSync || self.sync_seen)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// A simple query inside the gateway's own `BEGIN`.
    Wrapped,
    /// A simple query inside the client's transaction block.
    Block,
    /// An `Execute` (extended protocol) with more of its batch to come, or outside a
    /// block: what follows it waits, its `Sync` too.
    Batch,
    /// An `Execute` in the client's block with its `Sync` next: the batch goes as sent,
    /// and a refusal fails the block after it, before the client's next batch.
    AfterSync,
    /// The gateway's settling query is running.
    Settling,
}

/// A held write run inside a transaction (or a savepoint of the agent's) while the
/// reviewer decides.
#[derive(Debug)]
struct Preview {
    /// The agent was in a transaction block: a savepoint, not a transaction of ours.
    in_block: bool,
    captured: Vec<Bytes>,
    captured_bytes: usize,
    /// More than [`PREVIEW_CAPTURE`] came back: the preview is not replayed.
    overflow: bool,
    done: Option<PreviewDone>,
}

/// What a preview showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewDone {
    /// The statement's command tag (`DELETE 12`).
    pub tag: Option<String>,
    /// The server's error, if the statement failed.
    pub error: Option<String>,
}

/// Most of a previewed statement's answer the gateway keeps to replay (its `RETURNING`
/// rows); beyond this the preview is rolled back and the statement runs again once
/// approved.
const PREVIEW_CAPTURE: usize = 1 << 20;

/// What the gateway sends the server in place of a refused statement: text that fails to
/// parse, so the server answers with an error exactly where the refused statement would
/// have been and its transaction state follows PostgreSQL's rules for an error (an open
/// transaction block is aborted, an extended-protocol batch is rolled back at `Sync`).
/// The client gets the gateway's refusal in place of the server's error, and then the
/// server's own `ReadyForQuery`, so what it is told is what happened.
pub const REFUSED_SQL: &[u8] = b"-- portcullis refused the client's statement; this placeholder fails on purpose\nportcullis_refused";

/// What the gateway sends in place of an `Execute` refused while it was held outside a
/// transaction block: it fails (the portal does not exist), so the server rolls the
/// batch back at `Sync` as it would after its own error.
const REFUSED_PORTAL: &[u8] = b"portcullis_refused";

/// The refusal of a statement sent after the agent's credential expired.
fn expired(at: u64) -> Refusal {
    Refusal::new(
        crate::protocol::sqlstate::INVALID_AUTHORIZATION,
        format!(
            "portcullis refused this statement: the credential this session logged in with expired at {}",
            crate::auth::rfc3339_ms(at)
        ),
    )
    .with_hint("Reconnect with a fresh token (or a new key); this session can run nothing more.")
}

/// The largest `Query`, `Parse` or `Bind` frame PostgreSQL reads: a body of up to
/// `PQ_LARGE_MESSAGE_LIMIT` (1 GB less a byte) after the tag and length.
const PG_MAX_MESSAGE: usize = (1 << 30) - 1 + crate::protocol::frame::HEADER_LEN;

/// A statement waiting for a person.
#[derive(Debug)]
pub struct Held {
    /// The statement text (a `Query`'s, or the held portal's statement).
    pub sql: Bytes,
    /// The `Bind` that made the held portal (extended protocol).
    pub bind: Option<Bytes>,
    pub hold: Hold,
    frame: Bytes,
    /// Extended protocol: the portal's statement's declared parameter types.
    param_types: Vec<u32>,
}

impl Held {
    pub fn is_extended(&self) -> bool {
        self.bind.is_some()
    }

    /// The held portal's statement's declared parameter types.
    pub fn param_types(&self) -> &[u32] {
        &self.param_types
    }
}

/// What to do with the held statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Approved: run it as it was sent.
    Run,
    /// Run this instead (a reviewer's edit); the policy judges it again first, and
    /// `notice` tells the agent what ran.
    Edit { sql: String, notice: String },
    /// Denied, timed out or withdrawn: the agent gets this error and nothing runs.
    Refuse(Refusal),
}

/// Reads a preview's captured answer: its command tag, or its error.
fn preview_outcome(captured: &[Bytes], overflow: bool) -> PreviewDone {
    let mut done = PreviewDone {
        tag: None,
        error: overflow.then(|| {
            format!(
                "its answer is over the {} KiB the gateway keeps for a preview",
                PREVIEW_CAPTURE >> 10
            )
        }),
    };
    for f in captured {
        match f.first() {
            Some(&be::COMMAND_COMPLETE) => {
                let body = &f[5..];
                let body = body.strip_suffix(&[0]).unwrap_or(body);
                done.tag = Some(String::from_utf8_lossy(body).into_owned());
            }
            Some(&be::ERROR_RESPONSE) => done.error = Some(be::error_summary(&f[5..]).1),
            _ => {}
        }
    }
    done
}

/// How rows of the current result are handled.
enum Rows {
    /// Not decided yet for this result.
    Unknown,
    Pass,
    Stage(Box<dyn RowStage>),
    /// The result was refused mid-stream: drop server output up to `ReadyForQuery`.
    Discard,
}

pub struct Relay<H: Hooks> {
    limits: RelayLimits,
    hooks: H,
    tracker: Tracker,
    expect: VecDeque<Expect>,
    to_client: VecDeque<Bytes>,
    /// Replacements a row stage wrote for consecutive rows of the read being scanned,
    /// queued for the client as one `Bytes` when the run of replaced rows ends.
    staged: BytesMut,
    to_client_bytes: usize,
    to_server: VecDeque<Bytes>,
    to_server_bytes: usize,
    /// Bytes still to forward of a pass-through frame cut across reads.
    client_pass: usize,
    server_pass: usize,
    /// After a refusal in the extended protocol: drop client messages up to `Sync`.
    skip_to_sync: bool,
    rows: Rows,
    txn_status: u8,
    terminated: bool,
    /// The server sent a `FATAL` or `PANIC`: it is ending the session, and that error
    /// is all the client should hear about it.
    server_fatal: bool,
    /// A `RowDescription` or `CopyOutResponse` the hooks cannot judge until the driver
    /// has run their side query: server processing waits here.
    stalled: Option<Frame>,
    side_query: Option<String>,
    /// Side queries asked for the stalled frame so far.
    side_rounds: u8,
    held: Option<Held>,
    /// Re-judging an approved statement (or an edit): a hold now means go.
    approved: bool,
    /// Frames of the gateway's own being fed through the client path (an edit): their
    /// completions are not forwarded.
    injecting: bool,
    /// Notices of the gateway's own waiting for the end of a frame cut across reads.
    notices: Vec<Bytes>,
    /// Names of the statements and portals edits run under.
    edits: u64,
    /// The session's last few statements, for a reviewer (allocations reused).
    recent: VecDeque<String>,
    recent_max: usize,
    preview: Option<Preview>,
    /// Queued queries whose answer is not the client's: while there are none, output
    /// goes straight to the client.
    diverted: usize,
    /// The error of the gateway's own last quiet query.
    quiet_error: Option<Bytes>,
    /// The session's audit trail, when the gateway keeps one.
    audit: Option<Box<Trail>>,
    /// The session's handles on the gateway's metrics, when it counts.
    metrics: Option<Box<SessionMetrics>>,
    /// When the agent's credential stops being valid (Unix ms): from then on every
    /// statement is refused.
    expires_at_ms: Option<u64>,
    guard: Option<Guard>,
    /// A simple query of a session whose results may be refused waits until earlier
    /// answers are in, so the transaction status it is guarded by is current.
    query_waits: bool,
    /// The tag of the client frame after the one being handled, when it has arrived.
    next_client_tag: Option<u8>,
    /// The last scan of client bytes stopped at a whole frame that must wait (see
    /// [`Relay::client_parked`]).
    parked: bool,
    /// Bytes still to drop of a client message over the size limit, refused unread.
    client_discard: usize,
    /// An extended-protocol batch is open (messages since the last `Sync`): a query of
    /// the gateway's cannot go in before its next `Parse` without joining the batch.
    batch_open: bool,
    /// Rows, or the error, of the lookup at the front ([`QueryMode::Lookup`]).
    lookup_rows: Vec<Bytes>,
    lookup_error: Option<String>,
    /// The server session outlives this one (`crate::pool`): the agent's `Terminate`
    /// ends the agent's session only.
    keep_server: bool,
    /// The session's entry in the registry of open sessions (`SHOW SESSIONS`).
    live: Option<Arc<crate::sessions::Live>>,
}

/// Most side queries for one frame (table names, then type layouts, then a spare).
const MAX_SIDE_ROUNDS: u8 = 3;

/// The prepared statement a [`Ask::Describe`] runs under (parsed, described and closed
/// in one batch of the gateway's).
const DESCRIBE_NAME: &[u8] = b"portcullis.describe";

/// Facts of a statement the gateway itself sends on the agent's connection.
fn gateway_facts(verdict: &'static str) -> StatementFacts {
    StatementFacts {
        policy: Some(crate::audit::PolicyFacts {
            verdict,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Longest statement text kept in [`Relay::recent`].
const RECENT_TEXT: usize = 1024;

impl<H: Hooks> Relay<H> {
    pub fn new(limits: RelayLimits, hooks: H) -> Self {
        Self {
            limits,
            hooks,
            tracker: Tracker::default(),
            expect: VecDeque::new(),
            to_client: VecDeque::new(),
            staged: BytesMut::new(),
            to_client_bytes: 0,
            to_server: VecDeque::new(),
            to_server_bytes: 0,
            client_pass: 0,
            server_pass: 0,
            skip_to_sync: false,
            rows: Rows::Unknown,
            txn_status: b'I',
            terminated: false,
            server_fatal: false,
            stalled: None,
            side_query: None,
            side_rounds: 0,
            held: None,
            approved: false,
            injecting: false,
            notices: Vec::new(),
            edits: 0,
            recent: VecDeque::new(),
            recent_max: 0,
            preview: None,
            diverted: 0,
            quiet_error: None,
            audit: None,
            expires_at_ms: None,
            guard: None,
            query_waits: false,
            next_client_tag: None,
            parked: false,
            client_discard: 0,
            batch_open: false,
            lookup_rows: Vec::new(),
            lookup_error: None,
            keep_server: false,
            metrics: None,
            live: None,
        }
    }

    /// Counts statements, latencies, refusals and masked values in `m`.
    pub fn with_metrics(mut self, m: SessionMetrics) -> Self {
        self.metrics = Some(Box::new(m));
        self
    }

    /// A statement was judged: `relay` when the relay refused it before the policy could.
    fn count_statement(&self, verdict: &Verdict, relay: bool, judged_text: bool) {
        let Some(m) = &self.metrics else { return };
        let v = match verdict {
            Verdict::Allow if self.approved => VerdictLabel::Approved,
            Verdict::Allow => VerdictLabel::Allow,
            Verdict::Deny(_) if relay => VerdictLabel::Refused,
            Verdict::Deny(_) => VerdictLabel::Deny,
            Verdict::Hold(_) if self.approved => VerdictLabel::Approved,
            Verdict::Hold(_) => VerdictLabel::Hold,
        };
        let class = if relay || !judged_text {
            ClassLabel::Unparsed
        } else {
            self.hooks.class()
        };
        m.statement(class, v);
    }

    /// The gateway is sending the agent an error of its own.
    fn count_refusal(&mut self, sqlstate: &'static str) {
        if let Some(m) = &mut self.metrics {
            m.refusal(sqlstate);
        }
    }

    fn count_masked(&mut self, counts: &[(String, u64)]) {
        if let (Some(m), false) = (&mut self.metrics, counts.is_empty()) {
            m.masked(counts);
        }
    }

    /// Reports state, statements and bytes to the session's registry entry.
    pub fn with_live(mut self, live: Arc<crate::sessions::Live>) -> Self {
        self.live = Some(live);
        self
    }

    /// What the session is doing now, for its registry entry.
    fn publish_live(&self) {
        use crate::sessions::State;
        let Some(live) = &self.live else {
            return;
        };
        live.set_state(if self.held.is_some() {
            State::Held
        } else if !self.is_idle() {
            State::Active
        } else {
            match self.txn_status {
                b'T' => State::IdleInTransaction,
                b'E' => State::FailedTransaction,
                _ => State::Idle,
            }
        });
    }

    /// Keeps an audit trail of every statement and outcome.
    pub fn with_audit(mut self, trail: Trail) -> Self {
        self.audit = Some(Box::new(trail));
        self
    }

    pub fn audit_mut(&mut self) -> Option<&mut Trail> {
        self.audit.as_deref_mut()
    }

    /// Audit records to write, and whether a statement queued for the server waits for
    /// them to be durable (the driver must not write to the server before they are).
    pub fn take_audit(&mut self) -> Option<(Vec<crate::audit::Encoded>, bool)> {
        self.audit.as_mut()?.take()
    }

    /// [`Relay::take_audit`], unless a statement record is among them (those are for
    /// the driver about to write to the server).
    pub fn take_audit_outcomes(&mut self) -> Option<(Vec<crate::audit::Encoded>, bool)> {
        self.audit.as_mut()?.take_outcomes()
    }

    /// The audit log could not record the statements queued for the server: none of them
    /// may run. What is queued is this batch's frames; each statement in it is swapped
    /// for a placeholder that fails (so the server's transaction state follows an error
    /// there, as for any refusal) and the client gets `refusal` in place of its answer.
    /// `Parse`, `Bind` and the like run nothing and go as they are; so does `COPY` data,
    /// which the server ignores outside a `COPY`.
    pub fn fail_unrecorded(&mut self, refusal: &Refusal) {
        for b in self.to_server.iter_mut() {
            match b.first() {
                Some(&fe::QUERY) | Some(&fe::FUNCTION_CALL) => *b = fe::query(REFUSED_SQL),
                Some(&fe::EXECUTE) => *b = fe::execute(REFUSED_PORTAL, 0),
                _ => {}
            }
        }
        self.to_server_bytes = self.to_server.iter().map(Bytes::len).sum();
        let Some(t) = &mut self.audit else {
            return;
        };
        let (from, to) = t.last_taken();
        let batch = |id: &Option<u64>| id.is_some_and(|id| (from..=to).contains(&id));
        let error = refusal.to_error_response();
        let mut refused = 0;
        for e in self.expect.iter_mut() {
            match e {
                Expect::Query {
                    audit,
                    refusal,
                    mode: QueryMode::Client,
                    ..
                } if batch(audit) => {
                    *refusal = Some(error.clone());
                    *audit = None;
                    refused += 1;
                }
                Expect::Execute { audit, .. } if batch(audit) => {
                    *e = Expect::Parse {
                        refusal: Some(error.clone()),
                        quiet: false,
                    };
                    refused += 1;
                }
                _ => {}
            }
        }
        t.batch_failed();
        if let Some(m) = &mut self.metrics {
            for _ in 0..refused {
                m.refusal(refusal.code);
            }
        }
    }

    /// What the policy knew about the statement just judged, when audit wants it.
    fn facts(&mut self, sql: &[u8], verdict: &Verdict) -> Option<StatementFacts> {
        self.audit.as_ref()?;
        let mut f = self.hooks.facts(sql, verdict);
        if self.approved
            && let Some(p) = &mut f.policy
            && p.verdict == "allow"
        {
            p.verdict = "approved";
        }
        Some(f)
    }

    fn audit_statement(
        &mut self,
        via: trail::Via,
        sql: &[u8],
        bind: Option<&[u8]>,
        facts: Option<&StatementFacts>,
    ) -> Option<u64> {
        let t = self.audit.as_mut()?;
        let empty = StatementFacts::default();
        Some(t.statement(via, sql, bind, facts.unwrap_or(&empty), None))
    }

    fn audit_refusal(
        &mut self,
        via: trail::Via,
        sql: &[u8],
        r: &Refusal,
        facts: Option<&StatementFacts>,
    ) {
        if let Some(t) = &mut self.audit {
            let empty = StatementFacts::default();
            t.refusal(via, sql, r, facts.unwrap_or(&empty));
        }
    }

    /// `Err` when the audit log cannot record a statement now.
    /// Whether anything may run now: the agent's credential is still valid, and the
    /// audit trail can take the statement's record.
    fn audit_check(&self) -> Result<(), Refusal> {
        self.expiry_check()?;
        match &self.audit {
            Some(t) => t.check(),
            None => Ok(()),
        }
    }

    /// Refused once the agent's credential has expired.
    fn expiry_check(&self) -> Result<(), Refusal> {
        match self.expires_at_ms {
            Some(at) if crate::approvals::model::now_ms() >= at => Err(expired(at)),
            _ => Ok(()),
        }
    }

    /// When the agent's credential expires (Unix ms), if it does.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at_ms
    }

    /// Refuses every statement from `at` (Unix ms) on: the agent's token or key expires
    /// then.
    pub fn with_expiry(mut self, at: Option<u64>) -> Self {
        self.expires_at_ms = at;
        self
    }

    /// The server session is kept for another agent session afterwards, so the agent's
    /// `Terminate` is not forwarded.
    pub fn keeping_server(mut self, keep: bool) -> Self {
        self.keep_server = keep;
        self
    }

    /// Whether the server session is between statements with nothing of this session's
    /// in flight (no statement, no batch without its `Sync`, no half-sent message, no
    /// transaction), so that a reset can hand it to another session.
    pub fn server_reusable(&self) -> bool {
        self.txn_status == b'I'
            && self.is_idle()
            && !self.server_fatal
            && self.to_server.is_empty()
            && self.client_pass == 0
            && !self.batch_open
            && self.held.is_none()
            && self.stalled.is_none()
            && self.preview.is_none()
            && self.diverted == 0
            && !self.injecting
    }

    /// The audit number of the statement whose answer is at the front.
    #[inline]
    fn front_audit(&self) -> Option<u64> {
        match self.expect.front() {
            Some(Expect::Query { audit, .. } | Expect::Execute { audit, .. }) => *audit,
            _ => None,
        }
    }

    fn audit_close(&mut self, id: Option<u64>, ran: bool) {
        if let (Some(t), Some(id)) = (&mut self.audit, id) {
            t.close(id, ran);
        }
    }

    /// Keeps the last `n` statement texts for [`Relay::recent`] (none by default).
    pub fn with_recent(mut self, n: usize) -> Self {
        self.recent_max = n;
        self
    }

    /// The session's previous statements, oldest first (the held one excluded).
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }

    fn remember(&mut self, sql: &[u8]) {
        if self.recent_max == 0 {
            return;
        }
        let mut slot = if self.recent.len() >= self.recent_max {
            self.recent.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        slot.clear();
        let cut = sql.len().min(RECENT_TEXT);
        slot.push_str(&String::from_utf8_lossy(&sql[..cut]));
        if cut < sql.len() {
            slot.push('…');
        }
        self.recent.push_back(slot);
    }

    /// The statement waiting for a person, if any. While there is one the relay
    /// consumes nothing the client sends.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// The session's transaction status as the server last reported it.
    pub fn transaction_status(&self) -> u8 {
        self.txn_status
    }

    /// Hands the decision on the held statement to the core, then goes on with what
    /// the client sent meanwhile (`buf`).
    pub fn release(&mut self, how: Release, buf: &mut BytesMut) -> Result<(), RelayError> {
        let Some(held) = self.held.take() else {
            return self.on_client_bytes(buf);
        };
        // What followed the held frame is not known here: a guard must assume more.
        self.next_client_tag = None;
        let r = self.release_held(held, how);
        if let Err(RelayError::Client(e)) = &r {
            self.count_refusal(sqlstate::PROTOCOL_VIOLATION);
            self.send_client(error_response(
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                &e.to_string(),
                None,
                None,
            ));
            return r;
        }
        r?;
        self.settle_answers();
        self.on_client_bytes(buf)
    }

    fn release_held(&mut self, held: Held, how: Release) -> Result<(), RelayError> {
        if let Some(p) = self.preview.take() {
            return self.release_previewed(held, how, p);
        }
        let frame = Frame::from_bytes(held.frame.clone());
        match (how, held.bind) {
            (Release::Run, None) => {
                self.approved = true;
                let r = self.client_frame(frame);
                self.approved = false;
                r
            }
            (Release::Run, Some(_)) => self.execute(frame, true),
            (Release::Edit { sql, notice }, None) => {
                self.notice(&notice, None);
                self.approved = true;
                let q = Frame::from_bytes(fe::query(sql.as_bytes()));
                let r = self.client_frame(q);
                self.approved = false;
                r
            }
            (Release::Edit { sql, notice }, Some(bind)) => {
                self.notice(&notice, None);
                let (_, max_rows) = fe::parse_execute(frame.body()).map_err(RelayError::Client)?;
                self.edits += 1;
                let name = format!("portcullis_edit_{}", self.edits);
                let name = name.as_bytes();
                let frames = [
                    fe::parse_typed(name, sql.as_bytes(), &held.param_types),
                    fe::rebind(&bind[5..], name, name).map_err(RelayError::Client)?,
                    fe::execute(name, max_rows),
                    fe::close(b'S', name),
                ];
                self.approved = true;
                let mut r = Ok(());
                for (i, f) in frames.into_iter().enumerate() {
                    // The client sees the edit's rows and completion in place of its
                    // Execute's; the rest of what the gateway sent is answered to it.
                    self.injecting = i != 2;
                    r = self.client_frame(Frame::from_bytes(f));
                    if r.is_err() {
                        break;
                    }
                }
                self.injecting = false;
                self.approved = false;
                r
            }
            (Release::Refuse(refusal), None) => {
                self.hooks.completed(Outcome::Refused);
                self.count_refusal(refusal.code);
                self.audit_refusal(trail::Via::Simple, &held.sql, &refusal, None);
                // Nothing ran: the transaction, if any, is as it was.
                self.expect.push_back(Expect::Answer {
                    frames: refusal.to_error_response(),
                    ready: true,
                });
                Ok(())
            }
            (Release::Refuse(refusal), Some(_)) => {
                self.audit_refusal(trail::Via::Extended, &held.sql, &refusal, None);
                self.refuse_execute(refusal);
                Ok(())
            }
        }
    }

    /// Refuses an `Execute` that has not been sent: outside a transaction block the
    /// server is made to fail the batch (so nothing earlier in it commits at `Sync`),
    /// inside one the client is answered and the block stays usable.
    fn refuse_execute(&mut self, refusal: Refusal) {
        self.hooks.completed(Outcome::Refused);
        self.count_refusal(refusal.code);
        if self.txn_status == b'I' {
            // Statements earlier in this batch must not commit at Sync when the client is
            // told the batch failed: make the server fail it too.
            self.send_server(fe::execute(REFUSED_PORTAL, 0));
            self.expect.push_back(Expect::Parse {
                refusal: Some(refusal.to_error_response()),
                quiet: false,
            });
        } else {
            // Inside a transaction block nothing ran and nothing failed on the server:
            // the block stays usable.
            self.expect.push_back(Expect::Answer {
                frames: refusal.to_error_response(),
                ready: false,
            });
        }
        self.skip_to_sync = true;
    }

    /// The decision on a statement that ran as a preview: approval commits it and replays
    /// its answer; anything else rolls it back first.
    fn release_previewed(
        &mut self,
        held: Held,
        how: Release,
        p: Preview,
    ) -> Result<(), RelayError> {
        let replayable = p
            .done
            .as_ref()
            .is_some_and(|d| d.error.is_none() && !p.overflow);
        if how == Release::Run && replayable {
            // Judged again like any approved statement: a rule tightened meanwhile wins.
            match self.hooks.approved_statement(&held.sql, Via::SimpleQuery) {
                Verdict::Deny(r) => {
                    self.roll_back_preview(&p);
                    return self.release_held(held, Release::Refuse(r));
                }
                Verdict::Allow | Verdict::Hold(_) => {}
            }
            self.tracker.simple_query();
            self.remember(&held.sql.clone());
            self.quiet_query(if p.in_block {
                "RELEASE SAVEPOINT portcullis_preview"
            } else {
                "COMMIT"
            });
            // The captured answer ends before its ReadyForQuery (never captured: the
            // commit's says the session's status).
            self.expect.push_back(Expect::Replay { frames: p.captured });
            return Ok(());
        }
        self.roll_back_preview(&p);
        self.release_held(held, how)
    }

    /// Queues a `NoticeResponse` of the gateway's own for the client, at the next frame
    /// boundary of the server stream.
    pub fn notice(&mut self, message: &str, detail: Option<&str>) {
        let n = be::notice_response(message, detail);
        if self.server_pass == 0 && self.notices.is_empty() {
            self.push_client(n);
        } else {
            self.notices.push(n);
        }
    }

    fn flush_notices(&mut self) {
        if self.server_pass == 0 && !self.notices.is_empty() {
            for n in std::mem::take(&mut self.notices) {
                self.push_client(n);
            }
        }
    }

    /// Sends the gateway's own answers that have reached the front of the queue.
    fn settle_answers(&mut self) {
        while let Some(Expect::Answer { .. } | Expect::Replay { .. }) = self.expect.front() {
            match self.expect.pop_front() {
                Some(Expect::Answer { frames, ready }) => {
                    self.push_client(frames);
                    if ready {
                        self.push_client(be::ready_for_query(self.txn_status));
                    }
                }
                Some(Expect::Replay { frames }) => {
                    // The commit of the preview's transaction failed (a deferred
                    // constraint): that error is the statement's outcome.
                    match self.quiet_error.take() {
                        Some(e) => self.push_client(e),
                        None => {
                            for f in frames {
                                self.push_client(f);
                            }
                        }
                    }
                    self.push_client(be::ready_for_query(self.txn_status));
                }
                _ => {}
            }
        }
    }

    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Bytes queued for the client and not yet taken by the driver.
    pub fn pending_to_client(&self) -> usize {
        self.to_client_bytes
    }

    pub fn pending_to_server(&self) -> usize {
        self.to_server_bytes
    }

    pub fn pop_to_client(&mut self) -> Option<Bytes> {
        let b = self.to_client.pop_front()?;
        self.to_client_bytes -= b.len();
        Some(b)
    }

    pub fn pop_to_server(&mut self) -> Option<Bytes> {
        let b = self.to_server.pop_front()?;
        self.to_server_bytes -= b.len();
        Some(b)
    }

    /// The client sent `Terminate`: once the queues drain, the session is over.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Whether the server owes the client nothing (between statements).
    pub fn is_idle(&self) -> bool {
        self.expect.is_empty() && self.server_pass == 0
    }

    /// Whether what is queued for the client ends at a frame boundary, so a frame of the
    /// gateway's own may follow it (false inside a pass-through frame forwarded in
    /// pieces).
    pub fn client_at_frame_boundary(&self) -> bool {
        self.server_pass == 0
    }

    /// A catalog query the driver must run (on the gateway's own connection) before the
    /// server stream can go on; see [`Hooks::side_query`].
    pub fn take_side_query(&mut self) -> Option<String> {
        self.side_query.take()
    }

    /// Hands the side query's rows to the hooks and resumes the server stream with the
    /// stalled frame, then whatever is in `buf`.
    pub fn resume_after_side_query(
        &mut self,
        rows: Result<Vec<Bytes>, String>,
        buf: &mut BytesMut,
    ) -> Result<(), RelayError> {
        self.hooks.side_query_done(rows);
        if let Some(frame) = self.stalled.take() {
            // The hooks may need another round (types after tables), a few at most.
            let last = self.side_rounds >= MAX_SIDE_ROUNDS;
            self.server_frame(frame, last)?;
            if self.stalled.is_some() {
                return Ok(());
            }
        }
        self.side_rounds = 0;
        self.on_server_bytes(buf)
    }

    /// The SQL of the statement whose results are streaming now.
    fn current_sql(&self) -> Bytes {
        match self.expect.front() {
            Some(Expect::Query { sql, .. }) | Some(Expect::Execute { sql, .. }) => sql.clone(),
            _ => Bytes::new(),
        }
    }

    /// Queues output of the server stream for the client, unless the answer it belongs
    /// to is the gateway's own (a preview's).
    #[inline]
    fn send_client(&mut self, b: Bytes) {
        if self.diverted > 0 && self.divert(&b) {
            return;
        }
        self.push_client(b);
    }

    /// Queues bytes for the client as they are.
    fn push_client(&mut self, b: Bytes) {
        if let Some(id) = self.audit.as_ref().and_then(|_| self.front_audit())
            && let Some(t) = &mut self.audit
        {
            t.sent(id, &b);
        }
        if !b.is_empty() {
            if let Some(l) = &self.live {
                l.sent_to_client(b.len());
            }
            self.to_client_bytes += b.len();
            self.to_client.push_back(b);
        }
    }

    /// Keeps or drops output of the answer at the front when it is not the client's;
    /// `false`: it is the client's.
    fn divert(&mut self, b: &Bytes) -> bool {
        let mode = match self.expect.front() {
            Some(Expect::Query { mode, .. }) => *mode,
            _ => return false,
        };
        // Asynchronous messages are the session's whoever's query they arrived during.
        if mode != QueryMode::Capture
            && matches!(
                b.first(),
                Some(&(be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS))
            )
        {
            return false;
        }
        match mode {
            QueryMode::Client => false,
            // Read whole by `lookup_frame`; nothing of it is forwarded.
            QueryMode::Lookup => true,
            QueryMode::Quiet => {
                if b.first() == Some(&be::ERROR_RESPONSE) {
                    self.quiet_error = Some(b.clone());
                }
                true
            }
            QueryMode::Settle { errors } => !(errors && b.first() == Some(&be::ERROR_RESPONSE)),
            QueryMode::Capture => {
                if let Some(p) = &mut self.preview {
                    p.captured_bytes += b.len();
                    if p.captured_bytes > PREVIEW_CAPTURE {
                        p.overflow = true;
                        p.captured.clear();
                    } else if !p.overflow {
                        p.captured.push(b.clone());
                    }
                }
                true
            }
        }
    }

    /// Sends the catalog lookup the hooks want run before the statement just allowed
    /// (see [`Hooks::lookup`]). Not in a failed transaction, where it could only fail.
    fn lookup_first(&mut self) {
        if self.txn_status == b'E' || !self.hooks.wants_columns() {
            return;
        }
        match self.hooks.lookup() {
            None => {}
            Some(Ask::Query(sql)) => self.gateway_query(sql.as_bytes(), QueryMode::Lookup),
            // A client statement of that name would make the Parse fail: answer with no
            // description instead, which the hooks refuse on.
            Some(Ask::Describe(_)) if self.tracker.statement(DESCRIBE_NAME).is_some() => {
                self.gateway_query(b"SELECT WHERE false", QueryMode::Lookup)
            }
            Some(Ask::Describe(sql)) => self.gateway_send(
                trail::Via::Extended,
                sql.as_bytes(),
                [
                    fe::parse(DESCRIBE_NAME, sql.as_bytes()),
                    fe::describe_statement(DESCRIBE_NAME),
                    fe::close(b'S', DESCRIBE_NAME),
                    fe::sync(),
                ],
                QueryMode::Lookup,
            ),
        }
    }

    /// The answer to a lookup of the gateway's, up to its `ReadyForQuery`: kept for the
    /// hooks, except what is the session's whoever asked (notifications, parameters).
    fn lookup_frame(&mut self, frame: Frame) -> Result<(), RelayError> {
        match frame.tag() {
            be::DATA_ROW | be::ROW_DESCRIPTION => self.lookup_rows.push(frame.into_bytes()),
            be::ERROR_RESPONSE if be::ends_session(frame.body()) => {
                self.server_fatal = true;
                let frame = self.hooks.server_message(frame.into_bytes());
                self.push_client(frame);
            }
            be::ERROR_RESPONSE => {
                let (code, message) = be::error_summary(frame.body());
                self.lookup_error = Some(format!("{code} {message}"));
            }
            be::NOTIFICATION_RESPONSE => {
                let frame = self.hooks.server_message(frame.into_bytes());
                self.push_client(frame);
            }
            be::PARAMETER_STATUS => {
                self.hooks.parameter_status(frame.as_bytes());
                self.push_client(frame.into_bytes());
            }
            be::READY_FOR_QUERY => {
                self.txn_status = be::ready_status(frame.body()).map_err(RelayError::Server)?;
                self.hooks.ready(self.txn_status);
                if let Some(Expect::Query { audit, .. }) = self.expect.pop_front() {
                    self.audit_close(audit, true);
                }
                self.diverted -= 1;
                let rows = std::mem::take(&mut self.lookup_rows);
                let answer = match self.lookup_error.take() {
                    Some(e) => Err(e),
                    None => Ok(rows),
                };
                self.hooks.lookup_done(answer);
            }
            // Completions, notices: the gateway's own.
            _ => {}
        }
        Ok(())
    }

    /// Whether the answer at the front is a lookup of the gateway's. Asked per server
    /// frame: the counter of the gateway's own queries settles the usual case.
    #[inline]
    fn lookup_front(&self) -> bool {
        self.diverted > 0
            && matches!(
                self.expect.front(),
                Some(Expect::Query {
                    mode: QueryMode::Lookup,
                    ..
                })
            )
    }

    /// Sends the gateway's own simple query, whose answer the client never sees.
    fn quiet_query(&mut self, sql: &str) {
        self.gateway_query(sql.as_bytes(), QueryMode::Quiet);
    }

    fn gateway_query(&mut self, sql: &[u8], mode: QueryMode) {
        self.gateway_send(trail::Via::Simple, sql, [fe::query(sql)], mode);
    }

    /// Sends messages of the gateway's own, recorded as `sql` and answered up to one
    /// `ReadyForQuery` that the client never sees as such.
    fn gateway_send<const N: usize>(
        &mut self,
        via: trail::Via,
        sql: &[u8],
        frames: [Bytes; N],
        mode: QueryMode,
    ) {
        self.quiet_error = None;
        self.diverted += 1;
        let facts = self.audit.as_ref().map(|_| gateway_facts("gateway"));
        let audit = self.audit_statement(via, sql, None, facts.as_ref());
        for frame in frames {
            self.send_server(frame);
        }
        self.expect.push_back(Expect::Query {
            sql: Bytes::new(),
            refusal: None,
            mode,
            audit,
            guarded: false,
        });
    }

    /// Runs the held statement as a preview: inside a transaction of the gateway's (or a
    /// savepoint, when the agent is in a block), its answer kept, not sent. `false` when
    /// it cannot be previewed: not a simple query the rule previews, a failed
    /// transaction, or earlier statements still in flight.
    pub fn start_preview(&mut self) -> bool {
        let Some(held) = &self.held else {
            return false;
        };
        if held.bind.is_some()
            || !held.hold.preview
            || self.preview.is_some()
            || !self.expect.is_empty()
            || !matches!(self.txn_status, b'I' | b'T')
        {
            return false;
        }
        let frame = held.frame.clone();
        let sql = held.sql.clone();
        let in_block = self.txn_status == b'T';
        self.tracker.simple_query();
        self.quiet_query(if in_block {
            "SAVEPOINT portcullis_preview"
        } else {
            "BEGIN"
        });
        self.preview = Some(Preview {
            in_block,
            captured: Vec::new(),
            captured_bytes: 0,
            overflow: false,
            done: None,
        });
        self.diverted += 1;
        let facts = self.audit.as_ref().map(|_| gateway_facts("preview"));
        let audit = self.audit_statement(trail::Via::Simple, &sql, None, facts.as_ref());
        self.send_server(frame);
        self.expect.push_back(Expect::Query {
            sql,
            refusal: None,
            mode: QueryMode::Capture,
            audit,
            guarded: false,
        });
        true
    }

    /// The preview's outcome, once the server has answered it.
    pub fn preview_done(&self) -> Option<&PreviewDone> {
        self.preview.as_ref()?.done.as_ref()
    }

    /// Whether a preview was started and is not over yet.
    pub fn previewing(&self) -> bool {
        self.preview.as_ref().is_some_and(|p| p.done.is_none())
    }

    /// Undoes a preview: the agent's transaction (if any) is as before the statement.
    fn roll_back_preview(&mut self, p: &Preview) {
        self.quiet_query(if p.in_block {
            "ROLLBACK TO SAVEPOINT portcullis_preview; RELEASE SAVEPOINT portcullis_preview"
        } else {
            "ROLLBACK"
        });
    }

    fn send_server(&mut self, b: Bytes) {
        if !b.is_empty() {
            if let Some(l) = &self.live {
                l.sent_to_server(b.len());
            }
            self.to_server_bytes += b.len();
            self.to_server.push_back(b);
        }
    }

    // ---------------------------------------------------------------- client → server

    /// Consumes what the client sent. On error the session must end: a fatal
    /// `ErrorResponse` has been queued for the client.
    pub fn on_client_bytes(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        let r = self.client_bytes(buf);
        self.publish_live();
        if let Err(RelayError::Client(e)) = &r {
            self.count_refusal(sqlstate::PROTOCOL_VIOLATION);
            self.send_client(error_response(
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                &e.to_string(),
                None,
                None,
            ));
        }
        r
    }

    fn client_bytes(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        self.scan(Origin::Client, buf)
    }

    /// Walks the frames at the front of `buf` as they arrive from one side. Frames that
    /// pass through unseen accumulate into one run, cut off as a single `Bytes` only when
    /// a frame must be handled or the buffer ends; a pass-through frame longer than what
    /// has arrived is forwarded in pieces. Everything else is handled whole.
    fn scan(&mut self, from: Origin, buf: &mut BytesMut) -> Result<(), RelayError> {
        let wrap = |e| match from {
            Origin::Client => RelayError::Client(e),
            Origin::Server => RelayError::Server(e),
        };
        let mut run = 0usize;
        if from == Origin::Client {
            self.query_waits = false;
            self.parked = false;
        }
        loop {
            if from == Origin::Server && self.stalled.is_some() {
                break;
            }
            if from == Origin::Client && self.client_discard > 0 {
                if run > 0 {
                    self.forward(from, buf.split_to(run).freeze());
                    run = 0;
                }
                let n = self.client_discard.min(buf.len());
                buf.advance(n);
                self.client_discard -= n;
                if self.client_discard > 0 {
                    break;
                }
                continue;
            }
            if from == Origin::Client && self.held.is_some() {
                break;
            }
            if from == Origin::Client && self.guard.is_some_and(|g| g.blocks()) {
                self.parked = true;
                break;
            }
            let pass = match from {
                Origin::Client => &mut self.client_pass,
                Origin::Server => &mut self.server_pass,
            };
            if *pass > 0 {
                let n = (*pass).min(buf.len() - run);
                run += n;
                *pass -= n;
                if *pass > 0 {
                    break;
                }
            }
            let Some(h) = peek_header(&buf[run..]).map_err(wrap)? else {
                break;
            };
            if self.passes_through(from, h.tag) {
                self.flush_staged();
                let avail = buf.len() - run;
                if avail >= h.frame_len {
                    run += h.frame_len;
                    continue;
                }
                let rest = h.frame_len - avail;
                match from {
                    Origin::Client => self.client_pass = rest,
                    Origin::Server => self.server_pass = rest,
                }
                run = buf.len();
                break;
            }
            // Up to PostgreSQL's own bound a message is one a client may send it: over
            // the gateway's limit it is refused, not treated as a broken stream.
            if from == Origin::Client
                && h.frame_len > self.limits.max_message
                && h.frame_len <= PG_MAX_MESSAGE
                && matches!(h.tag, fe::QUERY | fe::PARSE | fe::BIND)
            {
                // Refused unread, its bytes dropped as they come: the client is told
                // why and its session goes on.
                if run > 0 {
                    self.forward(from, buf.split_to(run).freeze());
                    run = 0;
                }
                // Skipping to Sync already: the batch has its error.
                if !self.skip_to_sync {
                    self.refuse_oversized(h.tag, h.frame_len);
                }
                self.client_discard = h.frame_len;
                continue;
            }
            if h.frame_len > self.limits.max_message {
                return Err(wrap(ProtocolError::TooLarge {
                    len: h.frame_len,
                    max: self.limits.max_message,
                }));
            }
            if buf.len() - run < h.frame_len {
                break;
            }
            if from == Origin::Client
                && h.tag == fe::QUERY
                && !self.expect.is_empty()
                && !self.injecting
                && self.hooks.wants_columns()
            {
                self.query_waits = true;
                self.parked = true;
                break;
            }
            if from == Origin::Server && self.staged_in_place(h.tag) {
                // At most one of the two is pending: the kept rows' run or the
                // replacements, so the client gets them in the server's order. A full
                // buffer is queued before the stage grows it: growing would copy it.
                if self.staged.capacity() - self.staged.len() < h.frame_len + 64 {
                    self.flush_staged();
                }
                let Rows::Stage(stage) = &mut self.rows else {
                    unreachable!("staged_in_place checked the rows are staged")
                };
                match stage.data_row(&buf[run..run + h.frame_len], &mut self.staged) {
                    Ok(false) => {
                        self.flush_staged();
                        run += h.frame_len;
                    }
                    Ok(true) => {
                        if run > 0 {
                            self.forward(from, buf.split_to(run).freeze());
                            run = 0;
                        }
                        buf.advance(h.frame_len);
                    }
                    Err(r) => {
                        if run > 0 {
                            self.forward(from, buf.split_to(run).freeze());
                            run = 0;
                        }
                        self.flush_staged();
                        buf.advance(h.frame_len);
                        self.fail_result(r);
                    }
                }
                continue;
            }
            if run > 0 {
                self.forward(from, buf.split_to(run).freeze());
                run = 0;
            }
            self.flush_staged();
            let frame = split_frame(buf, self.limits.max_message)
                .map_err(wrap)?
                .expect("whole frame checked above");
            match from {
                Origin::Client => {
                    self.next_client_tag = peek_header(buf).ok().flatten().map(|h| h.tag);
                    self.client_frame(frame)?
                }
                Origin::Server => self.server_frame(frame, false)?,
            }
        }
        if run > 0 {
            self.forward(from, buf.split_to(run).freeze());
        }
        self.flush_staged();
        if from == Origin::Server {
            self.flush_notices();
        }
        Ok(())
    }

    /// Queues the replacements gathered for the rows just scanned.
    fn flush_staged(&mut self) {
        if !self.staged.is_empty() {
            let b = self.staged.split().freeze();
            self.send_client(b);
        }
    }

    /// Whether a whole server frame with this tag can go to the result's row stage where
    /// it lies in the receive buffer, skipping [`Relay::server_frame`]: a row (or `COPY`
    /// data) of a staged result that nothing else has to see. Anything the gateway reads
    /// itself (a lookup, an answer it settles, output it diverts) takes the full path.
    fn staged_in_place(&self, tag: u8) -> bool {
        matches!(tag, be::DATA_ROW | be::COPY_DATA)
            && matches!(self.rows, Rows::Stage(_))
            && self.diverted == 0
            && !self.lookup_front()
            && !matches!(
                self.expect.front(),
                Some(Expect::Answer { .. } | Expect::Replay { .. })
            )
    }

    /// Queues bytes received from one side for the other.
    fn forward(&mut self, from: Origin, b: Bytes) {
        match from {
            Origin::Client => self.send_server(b),
            Origin::Server => self.send_client(b),
        }
    }

    fn client_frame(&mut self, frame: Frame) -> Result<(), RelayError> {
        // Set after the frame is handled: a Parse opening a batch may still be preceded
        // by a query of the gateway's.
        let opens = matches!(
            frame.tag(),
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH
        );
        // Timed only when counted: an `Instant` is a clock read per message.
        let timed = self.metrics.is_some()
            && matches!(
                frame.tag(),
                fe::QUERY | fe::PARSE | fe::EXECUTE | fe::FUNCTION_CALL
            );
        let t0 = timed.then(std::time::Instant::now);
        if let (Some(t0), Some(m)) = (t0, &mut self.metrics) {
            m.round_started(t0);
        }
        let r = self.client_message(frame);
        if let (Some(t0), Some(m)) = (t0, &self.metrics) {
            m.added(t0);
        }
        if opens && r.is_ok() {
            self.batch_open = true;
        }
        r
    }

    fn client_message(&mut self, frame: Frame) -> Result<(), RelayError> {
        let tag = frame.tag();
        if self.skip_to_sync && tag != fe::SYNC && tag != fe::TERMINATE {
            return Ok(());
        }
        let err = RelayError::Client;
        match tag {
            fe::QUERY => {
                let sql = fe::parse_query(frame.body()).map_err(err)?;
                let mut by_relay = false;
                let verdict = if let Err(r) = self.audit_check() {
                    by_relay = true;
                    Verdict::Deny(r)
                } else if self.approved {
                    self.hooks.approved_statement(sql, Via::SimpleQuery)
                } else {
                    self.hooks.statement(sql, Via::SimpleQuery)
                };
                self.count_statement(&verdict, by_relay, true);
                // A released statement is judged again; it counts once.
                if !self.approved
                    && let Some(l) = &self.live
                {
                    l.statement(&verdict);
                }
                let facts = match &verdict {
                    Verdict::Hold(_) if !self.approved => None,
                    v => self.facts(sql, v),
                };
                match verdict {
                    Verdict::Hold(hold) if !self.approved => {
                        self.held = Some(Held {
                            sql: frame.as_bytes().slice_ref(sql),
                            bind: None,
                            hold,
                            frame: frame.into_bytes(),
                            param_types: Vec::new(),
                        });
                        return Ok(());
                    }
                    Verdict::Allow | Verdict::Hold(_) => {
                        self.tracker.simple_query();
                        self.remember(sql);
                        self.lookup_first();
                        let settle = self.guard_for_query();
                        if settle == Some(Settle::Wrapped) {
                            self.quiet_query("BEGIN");
                        }
                        let audit =
                            self.audit_statement(trail::Via::Simple, sql, None, facts.as_ref());
                        let sql = frame.as_bytes().slice_ref(sql);
                        self.expect.push_back(Expect::Query {
                            sql,
                            refusal: None,
                            mode: QueryMode::Client,
                            audit,
                            guarded: settle.is_some(),
                        });
                        self.send_server(frame.into_bytes());
                        self.guard = settle.map(Guard::new);
                    }
                    Verdict::Deny(r) => {
                        self.tracker.simple_query();
                        self.audit_refusal(trail::Via::Simple, sql, &r, facts.as_ref());
                        self.refuse_query(r)
                    }
                }
            }
            fe::PARSE => {
                let p = fe::parse_parse(frame.body()).map_err(err)?;
                let mut by_relay = false;
                let verdict = if let Err(r) = self.expiry_check() {
                    by_relay = true;
                    Verdict::Deny(r)
                } else if self.approved {
                    self.hooks.approved_statement(p.sql, Via::Parse(p.name))
                } else {
                    self.hooks.statement(p.sql, Via::Parse(p.name))
                };
                // The gateway's own Parse (a lookup's Describe, an edit) is no statement
                // of the agent's.
                if !self.injecting {
                    self.count_statement(&verdict, by_relay, true);
                }
                // A released statement is judged again; it counts once.
                if !self.approved
                    && let Some(l) = &self.live
                {
                    l.statement(&verdict);
                }
                let facts = self.facts(p.sql, &verdict);
                match verdict {
                    Verdict::Allow | Verdict::Hold(_) => {
                        // A held statement is prepared (that runs nothing); what waits
                        // is the Execute of a portal bound to it.
                        let hold = match verdict {
                            Verdict::Hold(h) if !self.approved => Some(h),
                            _ => None,
                        };
                        if hold.is_none() {
                            self.remember(p.sql);
                        }
                        let bytes = frame.as_bytes();
                        let effects = if self.hooks.wants_columns() {
                            self.hooks.effects()
                        } else {
                            Effects::Other
                        };
                        if !self.batch_open && !self.injecting {
                            self.lookup_first();
                        }
                        self.tracker.parse(
                            bytes.slice_ref(p.name),
                            bytes.slice_ref(p.sql),
                            p.param_types,
                            hold,
                            facts.map(std::rc::Rc::new),
                            effects,
                        );
                        self.expect.push_back(Expect::Parse {
                            refusal: None,
                            quiet: self.injecting,
                        });
                        self.send_server(frame.into_bytes());
                    }
                    Verdict::Deny(r) => {
                        self.audit_refusal(trail::Via::Extended, p.sql, &r, facts.as_ref());
                        self.refuse_parse(&r);
                    }
                }
            }
            fe::BIND => {
                let b = fe::parse_bind(frame.body()).map_err(err)?;
                let bytes = frame.as_bytes();
                self.tracker.bind(
                    bytes.slice_ref(b.portal),
                    bytes.slice_ref(b.statement),
                    bytes.clone(),
                    b.result_formats,
                );
                self.expect.push_back(Expect::Bind {
                    quiet: self.injecting,
                });
                self.send_server(frame.into_bytes());
            }
            fe::DESCRIBE => {
                let t = fe::parse_target(tag, frame.body()).map_err(err)?;
                self.expect.push_back(match t {
                    fe::Target::Statement(n) => Expect::DescribeStatement(
                        self.tracker
                            .statement(n)
                            .map(|s| s.described.clone())
                            .unwrap_or_default(),
                    ),
                    fe::Target::Portal(n) => Expect::DescribePortal {
                        slot: self.tracker.portal_mut(n).map(|p| {
                            p.describe_sent = true;
                            p.described.clone()
                        }),
                        injected: false,
                    },
                });
                self.send_server(frame.into_bytes());
            }
            fe::EXECUTE => self.execute(frame, false)?,
            fe::CLOSE => {
                match fe::parse_target(tag, frame.body()).map_err(err)? {
                    fe::Target::Statement(n) => {
                        self.hooks.close_statement(n);
                        self.tracker.close_statement(n)
                    }
                    fe::Target::Portal(n) => self.tracker.close_portal(n),
                }
                self.expect.push_back(Expect::Close {
                    quiet: self.injecting,
                });
                self.send_server(frame.into_bytes());
            }
            fe::SYNC => {
                self.skip_to_sync = false;
                self.batch_open = false;
                self.expect.push_back(Expect::Sync);
                self.send_server(frame.into_bytes());
                if let Some(g) = &mut self.guard
                    && g.settle == Settle::AfterSync
                {
                    g.sync_seen = true;
                }
            }
            fe::FUNCTION_CALL => {
                let oid = fe::parse_function_call(frame.body()).map_err(err)?;
                let mut by_relay = false;
                let verdict = match self.audit_check() {
                    Err(r) => {
                        by_relay = true;
                        Verdict::Deny(r)
                    }
                    Ok(()) => self.hooks.function_call(oid),
                };
                self.count_statement(&verdict, by_relay, false);
                let text = format!("-- fast-path function call, function OID {oid}");
                let facts = self.audit.as_ref().map(|_| {
                    gateway_facts(match &verdict {
                        Verdict::Allow => "allow",
                        _ => "deny",
                    })
                });
                match verdict {
                    Verdict::Allow => {
                        let audit = self.audit_statement(
                            trail::Via::FunctionCall,
                            text.as_bytes(),
                            None,
                            facts.as_ref(),
                        );
                        self.expect.push_back(Expect::Query {
                            sql: Bytes::new(),
                            refusal: None,
                            mode: QueryMode::Client,
                            audit,
                            guarded: false,
                        });
                        self.send_server(frame.into_bytes());
                    }
                    // Answered like a refused simple query: error, then ReadyForQuery.
                    Verdict::Deny(r) => {
                        self.audit_refusal(
                            trail::Via::FunctionCall,
                            text.as_bytes(),
                            &r,
                            facts.as_ref(),
                        );
                        self.refuse_query(r)
                    }
                    Verdict::Hold(h) => {
                        let r = h.without_approvals();
                        self.audit_refusal(
                            trail::Via::FunctionCall,
                            text.as_bytes(),
                            &r,
                            facts.as_ref(),
                        );
                        self.refuse_query(r)
                    }
                }
            }
            fe::FLUSH | fe::COPY_DONE | fe::COPY_FAIL => self.send_server(frame.into_bytes()),
            fe::TERMINATE => {
                self.terminated = true;
                if !self.keep_server {
                    self.send_server(frame.into_bytes());
                }
            }
            other => {
                return Err(RelayError::Client(ProtocolError::Unexpected {
                    tag: other,
                    state: "not a frontend message of an established session",
                }));
            }
        }
        Ok(())
    }

    /// Refuses the `Execute` of portal `name`, with its statement's audit record.
    fn refuse_portal(&mut self, name: &[u8], r: Refusal) {
        let sql = self
            .tracker
            .portal(name)
            .map(|p| p.sql.clone())
            .unwrap_or_default();
        self.audit_refusal(trail::Via::Extended, &sql, &r, None);
        self.refuse_execute(r);
    }

    /// An `Execute`: held when its portal's statement is, unless `released`.
    fn execute(&mut self, frame: Frame, released: bool) -> Result<(), RelayError> {
        let (name, _) = fe::parse_execute(frame.body()).map_err(RelayError::Client)?;
        if !released
            && let Some(p) = self.tracker.portal(name)
            && let Some(hold) = &p.hold
        {
            self.held = Some(Held {
                sql: p.sql.clone(),
                bind: Some(p.bind.clone()),
                hold: (**hold).clone(),
                param_types: p.param_types.clone(),
                frame: frame.into_bytes(),
            });
            return Ok(());
        }
        // Judged again when what its Parse was judged under changed (a grant ended).
        let verdict = match self.tracker.portal(name) {
            Some(p) if !released && !self.approved => self.hooks.execute(&p.sql, &p.statement),
            _ => Verdict::Allow,
        };
        match verdict {
            Verdict::Allow => {}
            Verdict::Deny(r) => {
                self.refuse_portal(name, r);
                return Ok(());
            }
            Verdict::Hold(hold) => {
                if let Some(p) = self.tracker.portal(name) {
                    self.held = Some(Held {
                        sql: p.sql.clone(),
                        bind: Some(p.bind.clone()),
                        hold,
                        param_types: p.param_types.clone(),
                        frame: frame.into_bytes(),
                    });
                }
                return Ok(());
            }
        }
        if released && let Some(p) = self.tracker.portal(name) {
            let sql = p.sql.clone();
            self.remember(&sql);
        }
        if let Err(r) = self.audit_check() {
            self.refuse_portal(name, r);
            return Ok(());
        }
        let audit = if self.audit.is_some() {
            let (sql, bind, mut facts) = match self.tracker.portal(name) {
                Some(p) => (
                    p.sql.clone(),
                    Some(p.bind.clone()),
                    p.facts.as_deref().cloned().unwrap_or_default(),
                ),
                None => (Bytes::new(), None, StatementFacts::default()),
            };
            if (released || self.approved)
                && let Some(p) = &mut facts.policy
            {
                p.verdict = "approved";
            }
            self.audit_statement(trail::Via::Extended, &sql, bind.as_deref(), Some(&facts))
        } else {
            None
        };
        let wants_columns = self.hooks.wants_columns();
        let (sql, slot, formats, inject, effects) = match self.tracker.portal_mut(name) {
            Some(p) => {
                let inject = wants_columns && !p.describe_sent;
                p.describe_sent |= inject;
                (
                    p.sql.clone(),
                    Some(p.described.clone()),
                    p.result_formats.clone(),
                    inject,
                    p.effects,
                )
            }
            None => (Bytes::new(), None, Vec::new(), false, Effects::Other),
        };
        // The client never asked what this portal returns and a stage needs to
        // know, so the gateway asks on its behalf and keeps the answer to itself.
        if inject {
            self.send_server(fe::describe_portal(name));
            self.expect.push_back(Expect::DescribePortal {
                slot: slot.clone(),
                injected: true,
            });
        }
        let settle = if wants_columns {
            self.guard_for_execute(effects)
        } else {
            None
        };
        self.expect.push_back(Expect::Execute {
            sql,
            slot,
            formats,
            audit,
            guarded: settle.is_some(),
        });
        self.send_server(frame.into_bytes());
        if settle == Some(Settle::Batch) {
            // The server keeps its output until Sync or Flush, and Sync waits.
            self.send_server(fe::flush());
        }
        self.guard = settle.map(Guard::new);
        Ok(())
    }

    /// How a simple query about to be sent must be guarded, if at all (see [`Guard`]).
    fn guard_for_query(&mut self) -> Option<Settle> {
        if self.injecting || self.preview.is_some() || !self.hooks.wants_columns() {
            return None;
        }
        // The status is current only with nothing in flight (see `query_waits`).
        let current = self.expect.is_empty();
        match self.txn_status {
            b'T' => Some(Settle::Block),
            b'I' if current && self.hooks.effects() == Effects::Undoable => Some(Settle::Wrapped),
            _ => None,
        }
    }

    /// How an `Execute` of a statement with `effects` must be guarded, if at all.
    fn guard_for_execute(&self, effects: Effects) -> Option<Settle> {
        if self.injecting || self.preview.is_some() || self.txn_status == b'E' {
            return None;
        }
        // The status is current when no statement went since the last ReadyForQuery.
        let since_ready = self.expect.iter().any(|e| {
            matches!(
                e,
                Expect::Execute { .. } | Expect::Query { .. } | Expect::Sync
            )
        });
        let sync_next = !since_ready && self.next_client_tag == Some(fe::SYNC);
        match self.txn_status {
            // Outside a block a read whose Sync is next leaves nothing behind and
            // nothing after it can run.
            b'I' if sync_next && effects == Effects::None => None,
            // In a block whatever ran is undone with the block: failing it after the
            // Sync is enough, and costs no round trip.
            b'T' if sync_next => Some(Settle::AfterSync),
            _ => Some(Settle::Batch),
        }
    }

    /// Whether the client's next messages must wait: a guarded statement's answer is not
    /// judged yet, or a simple query waits for earlier answers. The driver feeds the
    /// client's bytes again once this turns false.
    /// Whether the last feed of client bytes left frames unread because they must wait
    /// ([`Relay::client_waits`]): once that is over they are to be fed again before the
    /// driver reads more, even if it is over already.
    pub fn client_parked(&self) -> bool {
        self.parked
    }

    pub fn client_waits(&self) -> bool {
        self.guard.is_some_and(|g| g.blocks()) || (self.query_waits && !self.expect.is_empty())
    }

    /// Refuses a client message over [`RelayLimits::max_message`] without reading it: as
    /// a refused query, or for `Parse`/`Bind` as a refused `Parse` (the batch skips to
    /// `Sync`).
    fn refuse_oversized(&mut self, tag: u8, len: usize) {
        let r = Refusal::new(
            "54000",
            format!(
                "portcullis refused this message: its '{}' message is {len} bytes, over the {} bytes the gateway reads whole ([server] max_message_bytes)",
                char::from(tag),
                self.limits.max_message
            ),
        )
        .with_hint("Send large values with COPY ... FROM STDIN, or ask an operator to raise max_message_bytes.");
        let text = format!("-- a {len}-byte message the gateway did not read");
        if tag == fe::QUERY {
            self.tracker.simple_query();
            self.audit_refusal(trail::Via::Simple, text.as_bytes(), &r, None);
            self.refuse_query(r);
        } else {
            self.audit_refusal(trail::Via::Extended, text.as_bytes(), &r, None);
            self.refuse_parse(&r);
        }
    }

    /// Refuses a `Parse` (or a message standing for one): the server gets a `Parse` of
    /// [`REFUSED_SQL`] in its place, whose error the client gets as `r`, and the rest of
    /// the batch is dropped up to `Sync`.
    fn refuse_parse(&mut self, r: &Refusal) {
        self.hooks.completed(Outcome::Refused);
        self.count_refusal(r.code);
        self.send_server(fe::parse(b"", REFUSED_SQL));
        self.expect.push_back(Expect::Parse {
            refusal: Some(r.to_error_response()),
            quiet: false,
        });
        self.skip_to_sync = true;
    }

    /// Refuses a simple query or function call: the server gets [`REFUSED_SQL`] in its
    /// place and the client the refusal in place of the server's error.
    fn refuse_query(&mut self, r: Refusal) {
        self.hooks.completed(Outcome::Refused);
        self.count_refusal(r.code);
        self.send_server(fe::query(REFUSED_SQL));
        self.expect.push_back(Expect::Query {
            sql: Bytes::new(),
            refusal: Some(r.to_error_response()),
            mode: QueryMode::Client,
            audit: None,
            guarded: false,
        });
    }

    // ---------------------------------------------------------------- server → client

    /// Consumes what the server sent.
    pub fn on_server_bytes(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        let r = self.scan(Origin::Server, buf);
        self.publish_live();
        r
    }

    /// The hot-path test: may this frame go through unseen?
    #[inline]
    fn passes_through(&mut self, from: Origin, tag: u8) -> bool {
        if from == Origin::Client {
            // COPY FROM STDIN data streams through, however large, unless skipping.
            return tag == fe::COPY_DATA && !self.skip_to_sync;
        }
        match tag {
            // A lookup's rows are the gateway's, read whole.
            be::DATA_ROW if self.lookup_front() => false,
            be::DATA_ROW => {
                if let Rows::Unknown = self.rows {
                    self.rows = self.rows_for_execute();
                }
                matches!(self.rows, Rows::Pass)
            }
            be::COPY_DATA => matches!(self.rows, Rows::Pass | Rows::Unknown),
            _ => false,
        }
    }

    /// Rows arriving with no `RowDescription` just before them belong to an `Execute`:
    /// the portal's description (asked for by the client or injected) says what they are.
    fn rows_for_execute(&mut self) -> Rows {
        let described = match self.expect.front() {
            Some(Expect::Execute { slot, formats, .. }) => slot
                .as_ref()
                .and_then(|s| s.borrow().clone())
                .map(|d| (d, formats.clone())),
            _ => None,
        };
        match described {
            Some((Some(desc), formats)) => self.start_result(&desc, &formats),
            // Rows the gateway cannot attribute to a description: fine when no stage
            // looks at rows, refused when one would have to.
            _ if self.hooks.wants_columns() => {
                self.fail_result(Refusal::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "portcullis refused this result: it cannot tell which columns these rows carry",
                ));
                Rows::Discard
            }
            _ => Rows::Pass,
        }
    }

    fn start_result(&mut self, desc: &Bytes, formats: &[i16]) -> Rows {
        match self.hooks.result(desc, formats) {
            Ok(None) => Rows::Pass,
            Ok(Some(stage)) => Rows::Stage(stage),
            Err(r) => {
                self.fail_result(r);
                Rows::Discard
            }
        }
    }

    /// Refuses the rest of a result that has started: the client gets an error and the
    /// server's output is dropped up to its `ReadyForQuery`.
    fn fail_result(&mut self, r: Refusal) {
        self.hooks.completed(Outcome::Refused);
        self.count_refusal(r.code);
        if let Some(id) = self.front_audit()
            && let Some(t) = &mut self.audit
        {
            t.refused(id, r.code);
        }
        self.send_client(r.to_error_response());
        self.rows = Rows::Discard;
        let front_guarded = matches!(
            self.expect.front(),
            Some(Expect::Execute { guarded: true, .. } | Expect::Query { guarded: true, .. })
        );
        if let Some(g) = &mut self.guard
            && front_guarded
        {
            g.refused = true;
            if g.settle == Settle::Batch {
                // The server ran (or is running) the refused Execute: a failing one
                // after it makes the server skip the rest of the batch and fail it at
                // Sync, as its own error would. Its error is dropped with the rest.
                self.send_server(fe::execute(REFUSED_PORTAL, 0));
                self.skip_to_sync = true;
                self.guard = None;
            }
        }
    }

    /// After an error the server skips to `Sync`: what it owed before then is void.
    fn drop_expected_to_sync(&mut self) {
        while let Some(e) = self.expect.front() {
            if matches!(e, Expect::Sync | Expect::Query { .. }) {
                break;
            }
            // An Execute the server skips: recorded as not run.
            if let Some(Expect::Execute { audit, .. }) = self.expect.pop_front() {
                self.audit_close(audit, false);
            }
        }
    }

    fn server_frame(&mut self, frame: Frame, side_query_done: bool) -> Result<(), RelayError> {
        let tag = frame.tag();
        if matches!(tag, be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE)
            && let Some(g) = &mut self.guard
        {
            g.copy_in = true;
        }
        let r = self.server_frame_inner(frame, side_query_done);
        if let Some(Expect::Answer { .. } | Expect::Replay { .. }) = self.expect.front() {
            self.settle_answers();
        }
        // A guarded Execute's answer is in once it has left the queue (completed,
        // failed, or skipped after an error). Rows cannot end it: not looked at.
        if let Some(Guard {
            settle: Settle::Batch,
            ..
        }) = self.guard
            && tag != be::DATA_ROW
            && tag != be::COPY_DATA
            && !self
                .expect
                .iter()
                .any(|e| matches!(e, Expect::Execute { guarded: true, .. }))
        {
            self.guard = None;
        }
        r
    }

    /// A guarded simple query's `ReadyForQuery` (status already read): `true` when the
    /// gateway settles the server's state first, the client's `ReadyForQuery` then
    /// being the settling query's.
    fn settle_guarded_query(&mut self) -> bool {
        let Some(g) = self.guard else {
            return false;
        };
        let (sql, errors): (&[u8], bool) = match g.settle {
            Settle::AfterSync if g.refused && self.txn_status == b'T' => (REFUSED_SQL, false),
            Settle::Wrapped if g.refused || self.txn_status != b'T' => (b"ROLLBACK", false),
            Settle::Wrapped => (b"COMMIT", true),
            Settle::Block if g.refused && self.txn_status == b'T' => (REFUSED_SQL, false),
            _ => {
                self.guard = None;
                return false;
            }
        };
        self.gateway_query(sql, QueryMode::Settle { errors });
        self.guard = Some(Guard {
            settle: Settle::Settling,
            ..g
        });
        true
    }

    fn server_frame_inner(
        &mut self,
        frame: Frame,
        side_query_done: bool,
    ) -> Result<(), RelayError> {
        let tag = frame.tag();
        if self.lookup_front() {
            return self.lookup_frame(frame);
        }
        if (tag == be::ROW_DESCRIPTION || tag == be::COPY_OUT_RESPONSE)
            && !side_query_done
            && !matches!(self.rows, Rows::Discard)
            && let Some(sql) = self.hooks.side_query(frame.as_bytes(), &self.current_sql())
        {
            self.stalled = Some(frame);
            self.side_query = Some(sql);
            self.side_rounds += 1;
            return Ok(());
        }
        if tag == be::ERROR_RESPONSE && be::ends_session(frame.body()) {
            self.server_fatal = true;
            // Whatever the gateway was doing with the stream (dropping a refused result,
            // reading an answer of its own), the client must hear why its session ends.
            if matches!(self.rows, Rows::Discard) || self.diverted > 0 {
                let frame = self.hooks.server_message(frame.into_bytes());
                self.push_client(frame);
                return Ok(());
            }
        }
        if let Rows::Discard = self.rows {
            if tag != be::READY_FOR_QUERY {
                return Ok(());
            }
            // Whatever the server still owed for this batch is void for the client.
            self.drop_expected_to_sync();
        }
        if tag == be::ERROR_RESPONSE
            && let Some(Expect::Query { refusal, .. } | Expect::Parse { refusal, .. }) =
                self.expect.front_mut()
            && let Some(ours) = refusal.take()
        {
            // The server's error for the placeholder of a refused statement: the client
            // gets the refusal instead, and the stream goes on as after any error.
            self.rows = Rows::Unknown;
            if !matches!(self.expect.front(), Some(Expect::Query { .. })) {
                self.drop_expected_to_sync();
            }
            self.send_client(ours);
            return Ok(());
        }
        match tag {
            be::DATA_ROW | be::COPY_DATA => match &mut self.rows {
                Rows::Stage(stage) => match stage.data_row(frame.as_bytes(), &mut self.staged) {
                    Ok(true) => self.flush_staged(),
                    Ok(false) => self.send_client(frame.into_bytes()),
                    Err(r) => self.fail_result(r),
                },
                _ => self.send_client(frame.into_bytes()),
            },
            be::PARSE_COMPLETE | be::BIND_COMPLETE | be::CLOSE_COMPLETE => {
                let quiet = matches!(
                    self.expect.pop_front(),
                    Some(
                        Expect::Parse { quiet: true, .. }
                            | Expect::Bind { quiet: true }
                            | Expect::Close { quiet: true }
                    )
                );
                if !quiet {
                    self.send_client(frame.into_bytes());
                }
            }
            be::PARAMETER_DESCRIPTION => self.send_client(frame.into_bytes()),
            be::ROW_DESCRIPTION | be::NO_DATA => {
                let desc = (tag == be::ROW_DESCRIPTION).then(|| frame.as_bytes().clone());
                match self.expect.front() {
                    Some(Expect::DescribeStatement(slot)) => {
                        *slot.borrow_mut() = Some(desc);
                        self.expect.pop_front();
                        self.send_client(frame.into_bytes());
                    }
                    Some(Expect::DescribePortal { slot, injected }) => {
                        let injected = *injected;
                        if let Some(slot) = slot {
                            *slot.borrow_mut() = Some(desc);
                        }
                        self.expect.pop_front();
                        if !injected {
                            self.send_client(frame.into_bytes());
                        }
                    }
                    _ => {
                        if let Some(desc) = desc {
                            self.rows = self.start_result(&desc, &[]);
                        }
                        if !matches!(self.rows, Rows::Discard) {
                            self.send_client(frame.into_bytes());
                        }
                    }
                }
            }
            be::COPY_OUT_RESPONSE => {
                let sql = self.current_sql();
                self.rows = match self.hooks.copy_out(frame.as_bytes(), &sql) {
                    Ok(None) => Rows::Pass,
                    Ok(Some(stage)) => Rows::Stage(stage),
                    Err(r) => {
                        self.fail_result(r);
                        return Ok(());
                    }
                };
                self.send_client(frame.into_bytes());
            }
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                let id = self.front_audit();
                if tag == be::COMMAND_COMPLETE {
                    let body = frame.body();
                    let tag_text = body.strip_suffix(&[0]).unwrap_or(body);
                    let masked = self.hooks.completed(Outcome::Complete {
                        command_tag: tag_text,
                    });
                    self.count_masked(&masked);
                    if let (Some(t), Some(id)) = (&mut self.audit, id) {
                        t.command_complete(id, tag_text);
                        if !masked.is_empty() {
                            t.masked(id, masked);
                        }
                    }
                } else if tag == be::PORTAL_SUSPENDED {
                    // The rows of this Execute are its own record's, whatever follows.
                    let masked = self.hooks.completed(Outcome::Suspended);
                    self.count_masked(&masked);
                    if let (Some(t), Some(id), false) = (&mut self.audit, id, masked.is_empty()) {
                        t.masked(id, masked);
                    }
                }
                self.rows = Rows::Unknown;
                // Sent before the Execute leaves the queue: its completion is part of
                // the answer the audit digest covers.
                self.send_client(frame.into_bytes());
                if let Some(Expect::Execute { .. }) = self.expect.front() {
                    self.expect.pop_front();
                    self.audit_close(id, true);
                }
            }
            be::ERROR_RESPONSE => {
                let (code, _) = be::error_summary(frame.body());
                // Before `completed`, so what the message had redacted counts for the
                // statement that failed.
                let frame = self.hooks.server_message(frame.into_bytes());
                let masked = self.hooks.completed(Outcome::Error { sqlstate: &code });
                self.count_masked(&masked);
                let id = self.front_audit();
                if let (Some(t), Some(id)) = (&mut self.audit, id) {
                    t.error(id, &code);
                    if !masked.is_empty() {
                        t.masked(id, masked);
                    }
                }
                self.rows = Rows::Unknown;
                self.send_client(frame);
                // In the extended protocol the server now skips to Sync: so does the
                // queue, and refusals queued in that stretch are void.
                if !matches!(self.expect.front(), Some(Expect::Query { .. })) {
                    if let Some(Expect::Execute { .. }) = self.expect.front() {
                        self.expect.pop_front();
                        self.audit_close(id, true);
                    }
                    self.drop_expected_to_sync();
                }
            }
            be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {
                let frame = self.hooks.server_message(frame.into_bytes());
                self.send_client(frame);
            }
            be::READY_FOR_QUERY => {
                self.txn_status = be::ready_status(frame.body()).map_err(RelayError::Server)?;
                self.hooks.ready(self.txn_status);
                self.rows = Rows::Unknown;
                let mut mode = QueryMode::Client;
                // A Sync's: guarded when it ends the batch of an AfterSync guard.
                let mut was_guarded = false;
                while let Some(e) = self.expect.pop_front() {
                    match e {
                        Expect::Query {
                            mode: m,
                            audit,
                            guarded,
                            ..
                        } => {
                            mode = m;
                            was_guarded = guarded;
                            self.audit_close(audit, true);
                            break;
                        }
                        Expect::Sync => {
                            was_guarded = self.guard.is_some_and(|g| g.sync_seen);
                            break;
                        }
                        Expect::Execute { audit, .. } => self.audit_close(audit, false),
                        _ => {}
                    }
                }
                match mode {
                    QueryMode::Client if was_guarded && self.settle_guarded_query() => {}
                    QueryMode::Client => {
                        if let Some(m) = &mut self.metrics {
                            m.round_done();
                        }
                        self.send_client(frame.into_bytes())
                    }
                    QueryMode::Settle { .. } => {
                        self.diverted -= 1;
                        self.guard = None;
                        if let Some(m) = &mut self.metrics {
                            m.round_done();
                        }
                        self.send_client(frame.into_bytes());
                    }
                    QueryMode::Quiet => self.diverted -= 1,
                    // Answered in `lookup_frame`.
                    QueryMode::Lookup => {}
                    QueryMode::Capture => {
                        self.diverted -= 1;
                        if let Some(p) = &mut self.preview {
                            p.done = Some(preview_outcome(&p.captured, p.overflow));
                        }
                    }
                }
            }
            be::PARAMETER_STATUS => {
                self.hooks.parameter_status(frame.as_bytes());
                self.send_client(frame.into_bytes());
            }
            // The upstream's cancel key must never reach the agent.
            be::BACKEND_KEY_DATA => {}
            be::AUTHENTICATION | be::NEGOTIATE_PROTOCOL_VERSION => {
                return Err(RelayError::Server(ProtocolError::Unexpected {
                    tag,
                    state: "start-up message in an established session",
                }));
            }
            // Notices, notifications, parameter changes, COPY in/both responses,
            // function results: forwarded as they are.
            _ => self.send_client(frame.into_bytes()),
        }
        Ok(())
    }

    /// The server's connection ended. `cut`: the server's last bytes stopped inside a
    /// frame the gateway had not forwarded yet.
    ///
    /// The client gets an error of the gateway's only where a direct connection would
    /// have left it wondering: a frame cut off, or an answer it was owed and never got.
    /// A server that ended the session with `FATAL`/`PANIC` has said why, and an idle
    /// session's end is a plain close, as it is from PostgreSQL itself.
    ///
    /// Returns whether the client can still parse what it received (false when the
    /// server died inside a frame already partly forwarded).
    pub fn on_server_eof(&mut self, cut: bool) -> bool {
        if self.server_pass > 0 {
            return false;
        }
        let owed = !self.expect.is_empty() || self.held.is_some();
        if !self.terminated && !self.server_fatal && (cut || owed) {
            self.count_refusal(sqlstate::CONNECTION_FAILURE);
            self.send_client(error_response(
                Severity::Fatal,
                sqlstate::CONNECTION_FAILURE,
                "the database server closed the connection unexpectedly",
                Some("The gateway lost its connection to PostgreSQL; any statement in progress did not complete."),
                Some("Reconnect to the gateway and retry."),
            ));
        }
        true
    }

    /// Whether the server ended the session with an error of its own (`FATAL`/`PANIC`).
    pub fn server_ended_session(&self) -> bool {
        self.server_fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::build;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Bytes {
        build(tag, |b| b.extend_from_slice(body))
    }

    fn drain_client<H: Hooks>(r: &mut Relay<H>) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = r.pop_to_client() {
            v.extend_from_slice(&b);
        }
        v
    }

    fn drain_server<H: Hooks>(r: &mut Relay<H>) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = r.pop_to_server() {
            v.extend_from_slice(&b);
        }
        v
    }

    fn tags(mut bytes: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        while bytes.len() >= 5 {
            let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize + 1;
            t.push(bytes[0]);
            bytes = &bytes[len..];
        }
        t
    }

    fn row(vals: &[&[u8]]) -> Bytes {
        build(be::DATA_ROW, |b| {
            b.put_i16(vals.len() as i16);
            for v in vals {
                b.put_i32(v.len() as i32);
                b.extend_from_slice(v);
            }
        })
    }

    fn server_result(rows: usize) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&msg(
            be::ROW_DESCRIPTION,
            b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ));
        for i in 0..rows {
            s.extend_from_slice(&row(&[format!("v{i}").as_bytes()]));
        }
        s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 3\0"));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        s
    }

    #[test]
    fn server_stream_is_forwarded_unchanged_at_every_cut() {
        let stream = server_result(3);
        for cut in 0..=stream.len() {
            let mut r = Relay::new(RelayLimits::default(), super::super::hooks::PassThrough);
            let mut c = BytesMut::from(&msg(fe::QUERY, b"select\0")[..]);
            r.on_client_bytes(&mut c).unwrap();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(part);
                r.on_server_bytes(&mut buf).unwrap();
                out.extend(drain_client(&mut r));
            }
            assert_eq!(out, stream, "cut at {cut}");
            assert!(r.is_idle());
        }
    }

    fn fatal(code: &str) -> Bytes {
        be::fields_message(
            be::ERROR_RESPONSE,
            &[
                (b'S', b"FATAL"),
                (b'V', b"FATAL"),
                (b'C', code.as_bytes()),
                (b'M', b"terminating connection due to administrator command"),
            ],
        )
    }

    /// What the client receives when the server's connection ends after `stream`
    /// (with `cut` more bytes of an unfinished frame), a `Query` outstanding or not.
    fn end_of_server(stream: &[u8], cut: &[u8], query: bool) -> Vec<u8> {
        let mut r = Relay::new(RelayLimits::default(), super::super::hooks::PassThrough);
        if query {
            r.on_client_bytes(&mut BytesMut::from(&msg(fe::QUERY, b"select\0")[..]))
                .unwrap();
        }
        let mut buf = BytesMut::from(stream);
        buf.extend_from_slice(cut);
        r.on_server_bytes(&mut buf).unwrap();
        assert!(r.on_server_eof(!buf.is_empty()));
        drain_client(&mut r)
    }

    #[test]
    fn a_server_that_ends_the_session_is_heard_alone() {
        let f = fatal("57P01");
        // Terminated while idle, and while a statement ran: the server's FATAL only.
        assert_eq!(end_of_server(&f, b"", false), f[..]);
        assert_eq!(end_of_server(&f, b"", true), f[..]);
        // An idle session whose server just went away: a plain close, as direct.
        assert!(end_of_server(b"", b"", false).is_empty());
        // The server owed an answer, or stopped inside a frame: the gateway says so.
        for (cut, query) in [(&b""[..], true), (&b"Z\0\0"[..], false)] {
            let out = end_of_server(b"", cut, query);
            assert_eq!(tags(&out), [be::ERROR_RESPONSE]);
            assert_eq!(be::error_summary(&out[5..]).0, "08006");
        }
    }

    #[test]
    fn a_fatal_reaches_the_client_while_a_refused_result_is_dropped() {
        let mut r = Relay::new(RelayLimits::default(), super::super::hooks::PassThrough);
        r.on_client_bytes(&mut BytesMut::from(&msg(fe::QUERY, b"select\0")[..]))
            .unwrap();
        r.fail_result(Refusal::new(sqlstate::INSUFFICIENT_PRIVILEGE, "no"));
        let refusal = drain_client(&mut r);
        let f = fatal("57P01");
        let mut buf = BytesMut::from(&row(&[b"secret"])[..]);
        buf.extend_from_slice(&f);
        r.on_server_bytes(&mut buf).unwrap();
        assert!(r.on_server_eof(false));
        assert_eq!(be::error_summary(&refusal[5..]).0, "42501");
        assert_eq!(drain_client(&mut r), f[..]);
    }

    #[test]
    fn an_oversized_message_is_refused_unread_and_the_session_goes_on() {
        let mut r = Relay::new(
            RelayLimits { max_message: 1024 },
            super::super::hooks::PassThrough,
        );
        let mut big = b"select '".to_vec();
        big.extend(std::iter::repeat_n(b'x', 5000));
        big.extend_from_slice(b"'\0");
        let q = msg(fe::QUERY, &big);
        // It arrives in pieces; nothing of it is kept or forwarded.
        for chunk in q.chunks(700) {
            let mut buf = BytesMut::from(chunk);
            r.on_client_bytes(&mut buf).unwrap();
            assert!(buf.is_empty());
        }
        let sent = drain_server(&mut r);
        assert!(has(&sent, b"portcullis_refused") && sent.len() < 200);
        let mut s = BytesMut::from(&server_error()[..]);
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"EZ");
        assert_eq!(be::error_summary(&out[5..]).0, "54000");
        // The next statement goes as usual.
        r.on_client_bytes(&mut BytesMut::from(&msg(fe::QUERY, b"select 1\0")[..]))
            .unwrap();
        assert_eq!(drain_server(&mut r), msg(fe::QUERY, b"select 1\0")[..]);
    }

    #[test]
    fn a_huge_pass_through_row_streams_without_being_held() {
        let mut r = Relay::new(
            RelayLimits { max_message: 1024 },
            super::super::hooks::PassThrough,
        );
        r.on_client_bytes(&mut BytesMut::from(&msg(fe::QUERY, b"q\0")[..]))
            .unwrap();
        let big = row(&[&vec![b'x'; 100_000]]);
        let mut total = 0;
        for chunk in big.chunks(4096) {
            let mut buf = BytesMut::from(chunk);
            r.on_server_bytes(&mut buf).unwrap();
            assert!(buf.is_empty(), "nothing may stay buffered");
            total += drain_client(&mut r).len();
        }
        assert_eq!(total, big.len());
    }

    struct DenyDrop;
    impl Hooks for DenyDrop {
        fn statement(&mut self, sql: &[u8], _via: Via<'_>) -> Verdict {
            if sql.starts_with(b"drop") {
                Verdict::Deny(Refusal::new(sqlstate::INSUFFICIENT_PRIVILEGE, "no drops"))
            } else {
                Verdict::Allow
            }
        }
    }

    fn server_error() -> Bytes {
        error_response(
            Severity::Error,
            "42601",
            "syntax error at or near \"portcullis_refused\"",
            None,
            None,
        )
    }

    fn has(out: &[u8], text: &[u8]) -> bool {
        out.windows(text.len()).any(|w| w == text)
    }

    #[test]
    fn a_refused_simple_query_answers_in_order_and_the_session_lives() {
        let mut r = Relay::new(RelayLimits::default(), DenyDrop);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::QUERY, b"select 1\0"));
        c.extend_from_slice(&msg(fe::QUERY, b"drop table t\0"));
        r.on_client_bytes(&mut c).unwrap();
        // The refused query never reaches the server; a placeholder that fails does.
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"QQ");
        assert!(!has(&to_server, b"drop table") && has(&to_server, REFUSED_SQL));
        // Nothing for the client until the first query is answered.
        assert!(drain_client(&mut r).is_empty());
        let mut s = BytesMut::from(&server_result(1)[..]);
        s.extend_from_slice(&server_error());
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"T"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"TDCZEZ");
        // The client gets the refusal, not the placeholder's error, and the server's
        // transaction status.
        assert!(has(&out, b"no drops") && !has(&out, b"portcullis_refused"));
        assert_eq!(out.last(), Some(&b'T'));
        assert!(r.is_idle());
    }

    /// A relay with an audit trail on a real log in a temporary directory.
    fn audited() -> (
        Relay<crate::session::hooks::PassThrough>,
        tempfile::TempDir,
        crate::audit::AuditLog,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg: crate::audit::AuditConfig =
            toml::from_str(&format!("dir = {:?}", dir.path().display().to_string())).unwrap();
        let log = crate::audit::AuditLog::open(&cfg, "test").unwrap();
        let trail = Trail::new(
            log.clone(),
            "s".into(),
            "agent",
            crate::audit::config::Params::Hash,
        );
        (
            Relay::new(RelayLimits::default(), crate::session::hooks::PassThrough)
                .with_audit(trail),
            dir,
            log,
        )
    }

    #[test]
    fn statements_the_log_could_not_record_are_refused_and_the_session_lives() {
        let (mut r, _dir, log) = audited();
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::QUERY, b"delete from t where id = 1\0"));
        c.extend_from_slice(&extended_drop());
        r.on_client_bytes(&mut c).unwrap();
        let (records, gate) = r.take_audit().unwrap();
        assert!(
            gate && records.len() == 2,
            "two statement records gate the batch"
        );
        // The driver's durable wait failed: nothing of the batch may run.
        r.fail_unrecorded(&Refusal::new(sqlstate::IO_ERROR, "the audit log is full"));
        let to_server = drain_server(&mut r);
        assert!(!has(&to_server, b"delete from t"));
        assert_eq!(tags(&to_server), b"QPBES");
        let execute_at = to_server.len() - fe::sync().len() - fe::execute(REFUSED_PORTAL, 0).len();
        assert!(
            has(&to_server[..execute_at], REFUSED_SQL),
            "the query is a placeholder"
        );
        assert!(
            has(&to_server[execute_at..], REFUSED_PORTAL),
            "so is the Execute"
        );
        // The server fails both placeholders; the client gets the refusal for each.
        let mut s = BytesMut::new();
        s.extend_from_slice(&server_error());
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
        s.extend_from_slice(&server_error());
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"EZ12EZ");
        assert!(has(&out, b"the audit log is full") && !has(&out, b"portcullis_refused"));
        assert!(r.is_idle());
        // Both statements are recorded as not run.
        let (records, _) = r.take_audit().unwrap();
        let text: Vec<String> = records
            .iter()
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
            .collect();
        assert_eq!(
            text.iter()
                .filter(|t| t.contains(r#""status":"not_run""#))
                .count(),
            2,
            "{text:?}"
        );
        log.close();
    }

    #[test]
    fn a_refused_parse_skips_to_sync() {
        let mut r = Relay::new(RelayLimits::default(), DenyDrop);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"\0select 1\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0\0\0\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::PARSE, b"\0drop t\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0\0\0\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        // The batch's first statement, then a failing placeholder (so the server rolls
        // the batch back at Sync, as it would for its own error), then Sync.
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"PBEPS");
        assert!(!has(&to_server, b"drop t"));
        assert!(drain_client(&mut r).is_empty());
        let mut s = BytesMut::new();
        s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
        s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 1\0"));
        s.extend_from_slice(&server_error());
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"12CEZ");
        assert!(has(&out, b"no drops"));
        assert!(r.is_idle());
    }

    struct NoFastPath;
    impl Hooks for NoFastPath {
        fn function_call(&mut self, _oid: u32) -> Verdict {
            Verdict::Deny(Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "no fast path",
            ))
        }
    }

    #[test]
    fn a_refused_function_call_is_answered_in_order_and_never_sent() {
        let mut r = Relay::new(RelayLimits::default(), NoFastPath);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::QUERY, b"select 1\0"));
        c.extend_from_slice(&msg(fe::FUNCTION_CALL, b"\0\0\x0a\x50\0\0\0\0\0\0"));
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"QQ");
        let mut s = BytesMut::from(&server_result(1)[..]);
        s.extend_from_slice(&server_error());
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"TDCZEZ");
        assert!(has(&out, b"no fast path") && !has(&out, b"portcullis_refused"));
        // A FunctionCall too short to name a function is a protocol violation.
        let e = r.on_client_bytes(&mut BytesMut::from(&msg(fe::FUNCTION_CALL, b"\0")[..]));
        assert!(matches!(e, Err(RelayError::Client(_))));
    }

    /// Wants columns and replaces the rows it is handed by empty ones, so a test can
    /// tell which rows went through a stage: every row (`MASKING`), or only those that
    /// hold "secret", keeping the others as they are (`SELECTIVE`).
    struct Staging {
        only_secrets: bool,
    }
    const MASKING: Staging = Staging {
        only_secrets: false,
    };
    const SELECTIVE: Staging = Staging { only_secrets: true };
    struct Blank {
        only_secrets: bool,
    }
    impl RowStage for Blank {
        fn data_row(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<bool, Refusal> {
            let blank = !self.only_secrets || frame.windows(6).any(|w| w == b"secret");
            if blank {
                out.extend_from_slice(&build(be::DATA_ROW, |b| b.put_i16(0)));
            }
            Ok(blank)
        }
    }
    impl Hooks for Staging {
        fn wants_columns(&mut self) -> bool {
            true
        }
        fn effects(&mut self) -> Effects {
            Effects::None
        }
        fn result(&mut self, _d: &Bytes, _f: &[i16]) -> Result<Option<Box<dyn RowStage>>, Refusal> {
            Ok(Some(Box::new(Blank {
                only_secrets: self.only_secrets,
            })))
        }
    }

    #[test]
    fn kept_rows_of_a_staged_result_pass_in_runs_and_replaced_ones_in_their_place_together() {
        let rows: [&[u8]; 7] = [
            b"one",
            b"secret",
            b"two",
            b"three",
            b"a secret",
            b"secret too",
            b"four",
        ];
        let mut answer = BytesMut::new();
        answer.extend_from_slice(&describe_reply());
        let mut expected = answer.clone();
        for v in rows {
            answer.extend_from_slice(&row(&[v]));
            if v.windows(6).any(|w| w == b"secret") {
                expected.extend_from_slice(&build(be::DATA_ROW, |b| b.put_i16(0)));
            } else {
                expected.extend_from_slice(&row(&[v]));
            }
        }
        for tail in [
            msg(be::COMMAND_COMPLETE, b"SELECT 7\0"),
            msg(be::READY_FOR_QUERY, b"I"),
        ] {
            answer.extend_from_slice(&tail);
            expected.extend_from_slice(&tail);
        }
        // Whatever the reads' sizes, the client gets exactly the expected stream.
        for cut in 1..answer.len() {
            let mut r = Relay::new(RelayLimits::default(), SELECTIVE);
            let mut c = BytesMut::from(&msg(fe::QUERY, b"select a\0")[..]);
            r.on_client_bytes(&mut c).unwrap();
            drain_server(&mut r);
            let mut s = BytesMut::from(&answer[..cut]);
            r.on_server_bytes(&mut s).unwrap();
            let mut out = drain_client(&mut r);
            s.extend_from_slice(&answer[cut..]);
            r.on_server_bytes(&mut s).unwrap();
            out.extend(drain_client(&mut r));
            assert!(s.is_empty(), "cut at {cut}: {} bytes left unread", s.len());
            assert_eq!(out, &expected[..], "cut at {cut}");
        }
        // Kept rows next to each other leave as one piece of the received bytes.
        let mut r = Relay::new(RelayLimits::default(), SELECTIVE);
        let mut c = BytesMut::from(&msg(fe::QUERY, b"select a\0")[..]);
        r.on_client_bytes(&mut c).unwrap();
        drain_server(&mut r);
        let mut s = answer.clone();
        r.on_server_bytes(&mut s).unwrap();
        let mut pieces = Vec::new();
        while let Some(b) = r.pop_to_client() {
            pieces.push(b.len());
        }
        let two_rows = row(&[b"two"]).len() + row(&[b"three"]).len();
        assert!(pieces.contains(&two_rows), "{pieces:?}");
        // And so do replacements of rows next to each other.
        let two_blanks = 2 * build(be::DATA_ROW, |b| b.put_i16(0)).len();
        assert!(pieces.contains(&two_blanks), "{pieces:?}");
    }

    fn describe_reply() -> Bytes {
        msg(
            be::ROW_DESCRIPTION,
            b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        )
    }

    #[test]
    fn rebinds_of_the_unnamed_portal_are_all_staged() {
        let mut r = Relay::new(RelayLimits::default(), MASKING);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"s1\0select 1\0\0\0"));
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        let mut sent = drain_server(&mut r);
        let mut s = BytesMut::new();
        s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let mut out = drain_client(&mut r);
        for _ in 0..3 {
            let mut c = BytesMut::new();
            c.extend_from_slice(&msg(fe::BIND, b"\0s1\0\0\0\0\0\0\0"));
            c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
            c.extend_from_slice(&fe::sync());
            r.on_client_bytes(&mut c).unwrap();
            sent.extend(drain_server(&mut r));
            let mut s = BytesMut::new();
            s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
            s.extend_from_slice(&describe_reply());
            s.extend_from_slice(&row(&[b"secret"]));
            s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 1\0"));
            s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
            r.on_server_bytes(&mut s).unwrap();
            out.extend(drain_client(&mut r));
        }
        // A read outside a block with its Sync right after is not guarded: one round trip.
        assert_eq!(tags(&sent), b"PSBDESBDESBDES");
        assert_eq!(tags(&out), b"1Z2DCZ2DCZ2DCZ");
        assert!(
            !out.windows(6).any(|w| w == b"secret"),
            "a row passed unstaged"
        );
    }

    #[test]
    fn rows_of_an_undescribed_portal_are_refused_when_a_stage_wants_them() {
        let mut r = Relay::new(RelayLimits::default(), MASKING);
        let mut c = BytesMut::new();
        // Execute of a portal the gateway never saw bound: it cannot know the columns.
        c.extend_from_slice(&msg(fe::EXECUTE, b"ghost\0\0\0\0\0"));
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        let mut s = BytesMut::new();
        s.extend_from_slice(&row(&[b"secret"]));
        s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 1\0"));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"EZ");
        assert!(!out.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn execute_without_describe_gets_an_injected_describe_that_the_client_never_sees() {
        let mut r = Relay::new(RelayLimits::default(), MASKING);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"s1\0select 1\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0s1\0\0\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"PBDES");
        let mut s = BytesMut::new();
        s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
        s.extend_from_slice(&msg(
            be::ROW_DESCRIPTION,
            b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ));
        s.extend_from_slice(&row(&[b"1"]));
        s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 1\0"));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        assert_eq!(tags(&drain_client(&mut r)), b"12DCZ");
        assert!(r.is_idle());
    }

    /// Wants columns; refuses every result when `refuse`, else passes it. What a
    /// statement leaves behind is read off its first word, as the analysis would.
    struct Judging {
        refuse: bool,
        last: Vec<u8>,
    }
    impl Judging {
        fn new(refuse: bool) -> Self {
            Judging {
                refuse,
                last: Vec::new(),
            }
        }
    }
    impl Hooks for Judging {
        fn statement(&mut self, sql: &[u8], _via: Via<'_>) -> Verdict {
            self.last = sql.to_vec();
            Verdict::Allow
        }
        fn wants_columns(&mut self) -> bool {
            true
        }
        fn effects(&mut self) -> Effects {
            if self.last.starts_with(b"select") {
                Effects::None
            } else if self.last.starts_with(b"insert") {
                Effects::Undoable
            } else {
                Effects::Other
            }
        }
        fn result(&mut self, _d: &Bytes, _f: &[i16]) -> Result<Option<Box<dyn RowStage>>, Refusal> {
            if self.refuse {
                Err(Refusal::new(sqlstate::INSUFFICIENT_PRIVILEGE, "refused"))
            } else {
                Ok(None)
            }
        }
    }

    fn feed_server<H: Hooks>(r: &mut Relay<H>, frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut s = answer(frames);
        r.on_server_bytes(&mut s).unwrap();
        drain_client(r)
    }

    /// Queries sent one by one, as a client does: what the server got, each time.
    fn query<H: Hooks>(r: &mut Relay<H>, sql: &str) -> Vec<u8> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        r.on_client_bytes(&mut BytesMut::from(&msg(fe::QUERY, &text)[..]))
            .unwrap();
        drain_server(r)
    }

    /// Opens a transaction block, as the client would.
    fn begin<H: Hooks>(r: &mut Relay<H>) {
        query(r, "begin");
        feed_server(r, &BEGAN);
    }

    /// The server's answer to a `BEGIN`.
    const BEGAN: [(u8, &[u8]); 2] = [
        (be::COMMAND_COMPLETE, b"BEGIN\0"),
        (be::READY_FOR_QUERY, b"T"),
    ];

    const INSERTED: [(u8, &[u8]); 4] = [
        (
            be::ROW_DESCRIPTION,
            b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ),
        (be::DATA_ROW, b"\0\x01\0\0\0\x06secret"),
        (be::COMMAND_COMPLETE, b"INSERT 0 1\0"),
        (be::READY_FOR_QUERY, b"T"),
    ];

    #[test]
    fn a_result_refused_in_a_block_fails_the_block() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(true));
        begin(&mut r);
        assert_eq!(
            tags(&query(&mut r, "insert into t select 1 returning t")),
            b"Q"
        );
        let out = feed_server(&mut r, &INSERTED);
        assert_eq!(tags(&out), b"E", "the refusal; ReadyForQuery waits");
        assert!(r.client_waits());
        // The gateway fails the block on the server before the client may go on.
        let settle = drain_server(&mut r);
        assert!(has(&settle, b"portcullis_refused"));
        let out = feed_server(
            &mut r,
            &[
                (be::ERROR_RESPONSE, b"C42601\0\0"),
                (be::READY_FOR_QUERY, b"E"),
            ],
        );
        assert_eq!(out, &be::ready_for_query(b'E')[..]);
        assert!(!r.client_waits() && r.is_idle());
    }

    #[test]
    fn a_write_refused_outside_a_block_is_rolled_back() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(true));
        let sent = query(&mut r, "insert into t select 1 returning t");
        assert!(has(&sent, b"BEGIN") && tags(&sent) == b"QQ");
        assert!(
            r.client_waits(),
            "nothing more goes until the result is judged"
        );
        let mut out = feed_server(&mut r, &BEGAN);
        out.extend(feed_server(&mut r, &INSERTED));
        assert!(has(&drain_server(&mut r), b"ROLLBACK"));
        out.extend(feed_server(
            &mut r,
            &[
                (be::COMMAND_COMPLETE, b"ROLLBACK\0"),
                (be::READY_FOR_QUERY, b"I"),
            ],
        ));
        assert_eq!(tags(&out), b"EZ");
        assert!(!has(&out, b"secret") && out.ends_with(&be::ready_for_query(b'I')));
        assert!(!r.client_waits() && r.is_idle());
        // A read outside a block is not wrapped: nothing to undo.
        assert_eq!(tags(&query(&mut r, "select 1")), b"Q");
        assert!(!r.client_waits());
    }

    #[test]
    fn a_write_passed_whole_outside_a_block_is_committed_and_a_failed_commit_told() {
        for commit_fails in [false, true] {
            let mut r = Relay::new(RelayLimits::default(), Judging::new(false));
            query(&mut r, "insert into t select 1 returning t");
            let mut out = feed_server(&mut r, &BEGAN);
            out.extend(feed_server(&mut r, &INSERTED));
            assert!(has(&drain_server(&mut r), b"COMMIT"));
            let commit: &[(u8, &[u8])] = if commit_fails {
                &[
                    (be::ERROR_RESPONSE, b"SERROR\0C23505\0Mduplicate\0\0"),
                    (be::READY_FOR_QUERY, b"I"),
                ]
            } else {
                &[
                    (be::COMMAND_COMPLETE, b"COMMIT\0"),
                    (be::READY_FOR_QUERY, b"I"),
                ]
            };
            out.extend(feed_server(&mut r, commit));
            let want: &[u8] = if commit_fails { b"TDCEZ" } else { b"TDCZ" };
            assert_eq!(tags(&out), want);
            assert!(out.ends_with(&be::ready_for_query(b'I')));
        }
    }

    #[test]
    fn an_execute_refused_mid_batch_fails_the_batch_and_the_rest_never_runs() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(true));
        let mut c = BytesMut::new();
        for sql in [
            &b"insert into t select 1 returning t"[..],
            b"insert into t values (2)",
        ] {
            let mut body = b"\0".to_vec();
            body.extend_from_slice(sql);
            body.extend_from_slice(b"\0\0\0");
            c.extend_from_slice(&msg(fe::PARSE, &body));
            c.extend_from_slice(&msg(fe::BIND, b"\0\0\0\0\0\0\0\0"));
            c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        }
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        // The first Execute, a Flush so its answer comes, and nothing after it.
        assert_eq!(tags(&drain_server(&mut r)), b"PBDEH");
        assert!(r.client_waits() && !c.is_empty());
        let mut out = feed_server(
            &mut r,
            &[
                (be::PARSE_COMPLETE, b""),
                (be::BIND_COMPLETE, b""),
                INSERTED[0],
                INSERTED[1],
            ],
        );
        // Refused: a failing Execute of the gateway's fails the batch on the server.
        let failing = drain_server(&mut r);
        assert_eq!(tags(&failing), b"E");
        assert!(has(&failing, REFUSED_PORTAL));
        assert!(!r.client_waits());
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(
            tags(&drain_server(&mut r)),
            b"S",
            "the rest of the batch is dropped"
        );
        out.extend(feed_server(
            &mut r,
            &[
                INSERTED[2],
                (be::ERROR_RESPONSE, b"C34000\0\0"),
                (be::READY_FOR_QUERY, b"I"),
            ],
        ));
        assert_eq!(tags(&out), b"12EZ");
        assert!(r.is_idle());
    }

    #[test]
    fn an_execute_refused_in_a_block_with_its_sync_next_fails_the_block_after_it() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(true));
        begin(&mut r);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"\0select 1\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0\0\0\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        c.extend_from_slice(&fe::sync());
        // The client's next batch, already sent.
        c.extend_from_slice(&msg(fe::QUERY, b"select 2\0"));
        r.on_client_bytes(&mut c).unwrap();
        // The batch goes as sent, no Flush and no wait; what follows its Sync waits.
        assert_eq!(tags(&drain_server(&mut r)), b"PBDES");
        assert!(r.client_waits() && r.client_parked() && !c.is_empty());
        let mut out = feed_server(
            &mut r,
            &[
                (be::PARSE_COMPLETE, b""),
                (be::BIND_COMPLETE, b""),
                INSERTED[0],
                INSERTED[1],
                (be::COMMAND_COMPLETE, b"SELECT 1\0"),
                (be::READY_FOR_QUERY, b"T"),
            ],
        );
        // The block is failed before the next batch may go.
        assert!(has(&drain_server(&mut r), b"portcullis_refused"));
        out.extend(feed_server(
            &mut r,
            &[
                (be::ERROR_RESPONSE, b"C42601\0\0"),
                (be::READY_FOR_QUERY, b"E"),
            ],
        ));
        assert_eq!(tags(&out), b"12EZ");
        assert!(out.ends_with(&be::ready_for_query(b'E')));
        assert!(!r.client_waits());
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"Q");
    }

    #[test]
    fn copy_from_stdin_in_a_guarded_block_is_not_held() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(true));
        begin(&mut r);
        query(&mut r, "copy t from stdin");
        assert!(r.client_waits());
        // The server asks for the client's data: that is what it waits for.
        feed_server(&mut r, &[(be::COPY_IN_RESPONSE, b"\0\0\0")]);
        assert!(!r.client_waits());
        let mut c = BytesMut::from(&msg(fe::COPY_DATA, b"1\n")[..]);
        c.extend_from_slice(&msg(fe::COPY_DONE, b""));
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"dc");
        let out = feed_server(
            &mut r,
            &[
                (be::COMMAND_COMPLETE, b"COPY 1\0"),
                (be::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(tags(&out), b"CZ");
        assert!(!r.client_waits() && r.is_idle());
    }

    #[test]
    fn pipelined_batches_of_a_guarded_session_go_through_one_after_another() {
        let mut r = Relay::new(RelayLimits::default(), Judging::new(false));
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"s1\0select 1\0\0\0"));
        c.extend_from_slice(&fe::sync());
        for _ in 0..3 {
            c.extend_from_slice(&msg(fe::BIND, b"\0s1\0\0\0\0\0\0\0"));
            c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
            c.extend_from_slice(&fe::sync());
        }
        r.on_client_bytes(&mut c).unwrap();
        let mut sent = drain_server(&mut r);
        let mut out = feed_server(
            &mut r,
            &[(be::PARSE_COMPLETE, b""), (be::READY_FOR_QUERY, b"I")],
        );
        let batch: [(u8, &[u8]); 5] = [
            (be::BIND_COMPLETE, b""),
            INSERTED[0],
            INSERTED[1],
            (be::COMMAND_COMPLETE, b"SELECT 1\0"),
            (be::READY_FOR_QUERY, b"I"),
        ];
        for i in 0..3 {
            // The server answers what it got: the Execute (and its Sync when it came).
            out.extend(feed_server(&mut r, &batch[..4]));
            if r.client_waits() {
                panic!("batch {i}: still waiting; sent {:?}", tags(&sent));
            }
            r.on_client_bytes(&mut c).unwrap();
            sent.extend(drain_server(&mut r));
            out.extend(feed_server(&mut r, &batch[4..]));
        }
        assert!(c.is_empty());
        assert_eq!(tags(&out), b"1Z2DCZ2DCZ2DCZ");
        let _ = sent;
    }

    /// Holds statements starting with `drop`, like a policy with a hold rule.
    struct HoldDrop;
    impl Hooks for HoldDrop {
        fn statement(&mut self, sql: &[u8], _via: Via<'_>) -> Verdict {
            if sql.starts_with(b"drop") {
                Verdict::Hold(Hold {
                    rule: Some("hold-drop".into()),
                    message: "drops wait".into(),
                    facts: String::new(),
                    approvers: 1,
                    timeout_secs: None,
                    explainable: false,
                    preview: false,
                })
            } else {
                Verdict::Allow
            }
        }
    }

    fn denied() -> Release {
        Release::Refuse(Refusal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "denied by alice",
        ))
    }

    #[test]
    fn a_held_query_stops_the_client_stream_until_released() {
        let mut r = Relay::new(RelayLimits::default(), HoldDrop);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::QUERY, b"select 1\0"));
        c.extend_from_slice(&msg(fe::QUERY, b"drop table t\0"));
        c.extend_from_slice(&msg(fe::QUERY, b"select 2\0"));
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(
            tags(&drain_server(&mut r)),
            b"Q",
            "only the statement before the hold"
        );
        assert_eq!(&r.held().unwrap().sql[..], b"drop table t");
        // What the client sent after the held query stays unread.
        assert_eq!(tags(&c), b"Q");
        r.on_client_bytes(&mut c).unwrap();
        assert!(drain_server(&mut r).is_empty());
        // Approved: the held query goes, then what followed it.
        r.release(Release::Run, &mut c).unwrap();
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"QQ");
        assert!(has(&to_server, b"drop table t") && has(&to_server, b"select 2"));
        assert!(r.held().is_none() && c.is_empty());
    }

    #[test]
    fn a_denied_query_runs_nothing_and_keeps_the_transaction() {
        let mut r = Relay::new(RelayLimits::default(), HoldDrop);
        let mut c = BytesMut::from(&msg(fe::QUERY, b"select 1\0")[..]);
        c.extend_from_slice(&msg(fe::QUERY, b"drop table t\0"));
        r.on_client_bytes(&mut c).unwrap();
        drain_server(&mut r);
        r.release(denied(), &mut c).unwrap();
        assert!(
            drain_server(&mut r).is_empty(),
            "nothing of a denied query reaches the server"
        );
        // The answer waits its turn behind the first query's result.
        assert!(drain_client(&mut r).is_empty());
        let mut s = BytesMut::from(&server_result(1)[..]);
        s.truncate(s.len() - 6);
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"T"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"TDCZEZ");
        assert!(has(&out, b"denied by alice"));
        assert_eq!(out.last(), Some(&b'T'), "the open transaction is as it was");
        assert!(r.is_idle());
    }

    /// Wants a lookup before every statement, and keeps what comes back.
    #[derive(Default)]
    struct LookingUp {
        found: Vec<Result<Vec<Bytes>, String>>,
    }
    impl Hooks for LookingUp {
        fn wants_columns(&mut self) -> bool {
            true
        }
        fn effects(&mut self) -> Effects {
            Effects::None
        }
        fn lookup(&mut self) -> Option<Ask> {
            Some(Ask::Query("lookup".into()))
        }
        fn lookup_done(&mut self, rows: Result<Vec<Bytes>, String>) {
            self.found.push(rows);
        }
    }

    #[test]
    fn a_lookup_runs_before_its_statement_and_only_the_hooks_see_it() {
        let mut r = Relay::new(RelayLimits::default(), LookingUp::default());
        let sent = [msg(fe::QUERY, b"lookup\0"), msg(fe::QUERY, b"select\0")].concat();
        assert_eq!(query(&mut r, "select"), sent);
        let row = msg(be::DATA_ROW, b"\0\x01\0\0\0\x01x");
        let out = feed_server(
            &mut r,
            &[
                INSERTED[0],
                (be::DATA_ROW, &row[5..]),
                (be::NOTIFICATION_RESPONSE, b"\0\0\0\x07ch\0hi\0"),
                (be::COMMAND_COMPLETE, b"SELECT 1\0"),
                (be::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(tags(&out), b"A", "only the notification reaches the client");
        assert_eq!(
            r.hooks().found,
            vec![Ok(vec![msg(INSERTED[0].0, INSERTED[0].1), row])]
        );

        // The statement's own answer is the client's, whole.
        let out = feed_server(
            &mut r,
            &[
                (be::COMMAND_COMPLETE, b"SELECT 0\0"),
                (be::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(tags(&out), b"CZ");

        // In the extended protocol it goes before a batch, never inside one; a lookup
        // that fails is the hooks' to know, not the client's.
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"\0select\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0\0\0\0\0\0\0\0"));
        c.extend_from_slice(&msg(fe::PARSE, b"\0select\0\0\0"));
        c.extend_from_slice(&fe::sync());
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"QPBPS");
        let out = feed_server(
            &mut r,
            &[
                (be::ERROR_RESPONSE, b"SERROR\0C42P01\0Mno\0\0"),
                (be::READY_FOR_QUERY, b"T"),
                (be::PARSE_COMPLETE, b""),
                (be::BIND_COMPLETE, b""),
                (be::PARSE_COMPLETE, b""),
                (be::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(tags(&out), b"121Z");
        assert_eq!(r.hooks().found[1], Err("42P01 no".into()));
    }

    fn extended_drop() -> BytesMut {
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"s1\0drop t\0\0\0"));
        c.extend_from_slice(&msg(fe::BIND, b"\0s1\0\0\0\0\x01\0\0\0\x0242\0\0"));
        c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
        c.extend_from_slice(&fe::sync());
        c
    }

    #[test]
    fn an_extended_hold_waits_at_execute_with_its_parameters() {
        let mut r = Relay::new(RelayLimits::default(), HoldDrop);
        let mut c = extended_drop();
        r.on_client_bytes(&mut c).unwrap();
        // Parse and Bind run nothing and go; the Execute waits.
        assert_eq!(tags(&drain_server(&mut r)), b"PB");
        let held = r.held().unwrap();
        assert!(held.is_extended());
        let params = fe::bind_params(&held.bind.as_ref().unwrap()[5..]).unwrap();
        assert_eq!(params, [(0, Some(&b"42"[..]))]);
        r.release(Release::Run, &mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"ES");
    }

    #[test]
    fn an_extended_denial_fails_the_batch_outside_a_block_and_not_inside() {
        for status in [b'I', b'T'] {
            let mut r = Relay::new(RelayLimits::default(), HoldDrop);
            r.txn_status = status;
            let mut c = extended_drop();
            r.on_client_bytes(&mut c).unwrap();
            drain_server(&mut r);
            r.release(denied(), &mut c).unwrap();
            let to_server = drain_server(&mut r);
            let mut s = BytesMut::new();
            s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
            s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
            if status == b'I' {
                // A failing Execute, so the implicit transaction rolls back at Sync.
                assert_eq!(tags(&to_server), b"ES");
                assert!(has(&to_server, REFUSED_PORTAL));
                s.extend_from_slice(&server_error());
            } else {
                assert_eq!(tags(&to_server), b"S");
            }
            s.extend_from_slice(&msg(be::READY_FOR_QUERY, &[status]));
            r.on_server_bytes(&mut s).unwrap();
            let out = drain_client(&mut r);
            assert_eq!(tags(&out), b"12EZ", "status {}", status as char);
            assert!(has(&out, b"denied by alice") && !has(&out, b"portcullis_refused"));
            assert!(r.is_idle());
        }
    }

    #[test]
    fn an_edit_runs_in_place_and_the_client_sees_only_its_answer() {
        let mut r = Relay::new(RelayLimits::default(), HoldDrop);
        let mut c = extended_drop();
        r.on_client_bytes(&mut c).unwrap();
        drain_server(&mut r);
        let edit = Release::Edit {
            sql: "delete from t where id = $1".into(),
            notice: "alice edited it".into(),
        };
        r.release(edit, &mut c).unwrap();
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"PBECS");
        assert!(has(&to_server, b"delete from t where id = $1") && has(&to_server, b"42"));
        let mut s = BytesMut::new();
        for t in [
            be::PARSE_COMPLETE,
            be::BIND_COMPLETE,
            be::PARSE_COMPLETE,
            be::BIND_COMPLETE,
        ] {
            s.extend_from_slice(&msg(t, b""));
        }
        s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"DELETE 1\0"));
        s.extend_from_slice(&msg(be::CLOSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        // The notice, the client's own Parse and Bind completions, the edit's result.
        assert_eq!(tags(&out), b"N12CZ");
        assert!(has(&out, b"alice edited it"));
        assert!(r.is_idle());

        // A simple query's edit is judged again: a hold then counts as the reviewer's.
        let mut r = Relay::new(RelayLimits::default(), HoldDrop);
        let mut c = BytesMut::from(&msg(fe::QUERY, b"drop table t\0")[..]);
        r.on_client_bytes(&mut c).unwrap();
        let edit = Release::Edit {
            sql: "drop table t2".into(),
            notice: "edited".into(),
        };
        r.release(edit, &mut c).unwrap();
        let to_server = drain_server(&mut r);
        assert!(has(&to_server, b"drop table t2") && !has(&to_server, b"drop table t\0"));
    }

    /// Holds statements starting with `delete` and previews them.
    struct PreviewDeletes;
    impl Hooks for PreviewDeletes {
        fn statement(&mut self, sql: &[u8], _via: Via<'_>) -> Verdict {
            if sql.starts_with(b"delete") {
                Verdict::Hold(Hold {
                    rule: None,
                    message: "deletes wait".into(),
                    facts: String::new(),
                    approvers: 1,
                    timeout_secs: None,
                    explainable: true,
                    preview: true,
                })
            } else {
                Verdict::Allow
            }
        }
    }

    fn answer(tags_and_bodies: &[(u8, &[u8])]) -> BytesMut {
        let mut s = BytesMut::new();
        for (t, b) in tags_and_bodies {
            s.extend_from_slice(&msg(*t, b));
        }
        s
    }

    #[test]
    fn a_previewed_write_commits_on_approval_and_the_client_gets_its_answer_then() {
        let mut r = Relay::new(RelayLimits::default(), PreviewDeletes);
        let mut c = BytesMut::from(&msg(fe::QUERY, b"delete from t\0")[..]);
        r.on_client_bytes(&mut c).unwrap();
        assert!(r.start_preview());
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"QQ");
        assert!(has(&to_server, b"BEGIN") && has(&to_server, b"delete from t"));
        let mut s = answer(&[
            (be::COMMAND_COMPLETE, b"BEGIN\0"),
            (be::READY_FOR_QUERY, b"T"),
            (be::COMMAND_COMPLETE, b"DELETE 3\0"),
            (be::READY_FOR_QUERY, b"T"),
        ]);
        r.on_server_bytes(&mut s).unwrap();
        assert!(
            drain_client(&mut r).is_empty(),
            "the preview's answer waits for the decision"
        );
        assert_eq!(r.preview_done().unwrap().tag.as_deref(), Some("DELETE 3"));
        r.release(Release::Run, &mut c).unwrap();
        let to_server = drain_server(&mut r);
        assert_eq!(tags(&to_server), b"Q");
        assert!(has(&to_server, b"COMMIT"));
        let mut s = answer(&[
            (be::COMMAND_COMPLETE, b"COMMIT\0"),
            (be::READY_FOR_QUERY, b"I"),
        ]);
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"CZ");
        assert!(has(&out, b"DELETE 3") && !has(&out, b"COMMIT"));
        assert_eq!(out.last(), Some(&b'I'));
        assert!(r.is_idle());
    }

    #[test]
    fn a_previewed_write_denied_in_a_block_is_rolled_back_to_its_savepoint() {
        let mut r = Relay::new(RelayLimits::default(), PreviewDeletes);
        r.txn_status = b'T';
        let mut c = BytesMut::from(&msg(fe::QUERY, b"delete from t\0")[..]);
        c.extend_from_slice(&msg(fe::QUERY, b"select 1\0"));
        r.on_client_bytes(&mut c).unwrap();
        assert!(r.start_preview());
        assert!(has(&drain_server(&mut r), b"SAVEPOINT portcullis_preview"));
        let mut s = answer(&[
            (be::COMMAND_COMPLETE, b"SAVEPOINT\0"),
            (be::READY_FOR_QUERY, b"T"),
            (be::COMMAND_COMPLETE, b"DELETE 3\0"),
            (be::READY_FOR_QUERY, b"T"),
        ]);
        r.on_server_bytes(&mut s).unwrap();
        r.release(denied(), &mut c).unwrap();
        let to_server = drain_server(&mut r);
        assert!(has(&to_server, b"ROLLBACK TO SAVEPOINT portcullis_preview"));
        assert!(
            has(&to_server, b"select 1"),
            "what the client sent next goes on"
        );
        let mut s = answer(&[
            (be::COMMAND_COMPLETE, b"ROLLBACK\0"),
            (be::COMMAND_COMPLETE, b"RELEASE\0"),
            (be::READY_FOR_QUERY, b"T"),
        ]);
        s.extend_from_slice(&server_result(1)[..]);
        let n = s.len();
        s[n - 1] = b'T';
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"EZTDCZ");
        assert!(has(&out, b"denied by alice") && !has(&out, b"DELETE 3"));
        assert!(r.is_idle());
    }

    #[test]
    fn garbage_from_the_client_is_a_fatal_protocol_error() {
        let mut r = Relay::new(RelayLimits::default(), super::super::hooks::PassThrough);
        let e = r.on_client_bytes(&mut BytesMut::from(&b"\x01\0\0\0\x05x"[..]));
        assert!(matches!(e, Err(RelayError::Client(_))));
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"E");
        assert!(String::from_utf8_lossy(&out).contains("08P01"));
    }
}
