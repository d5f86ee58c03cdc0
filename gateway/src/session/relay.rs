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

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::hooks::{Hooks, Outcome, Refusal, RowStage, Verdict, Via};
use super::tracker::{Described, Tracker};
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
            max_message: 64 << 20,
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
    },
    Bind,
    Close,
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
    },
    Sync,
    /// A simple query or function call: everything up to `ReadyForQuery`. `refusal` as
    /// for `Parse`, for a refused query or call.
    Query {
        sql: Bytes,
        refusal: Option<Bytes>,
    },
}

/// What the gateway sends the server in place of a refused statement: text that fails to
/// parse, so the server answers with an error exactly where the refused statement would
/// have been and its transaction state follows PostgreSQL's rules for an error (an open
/// transaction block is aborted, an extended-protocol batch is rolled back at `Sync`).
/// The client gets the gateway's refusal in place of the server's error, and then the
/// server's own `ReadyForQuery`, so what it is told is what happened.
pub const REFUSED_SQL: &[u8] = b"-- portcullis refused the client's statement; this placeholder fails on purpose\nportcullis_refused";

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
    /// A `RowDescription` or `CopyOutResponse` the hooks cannot judge until the driver
    /// has run their side query: server processing waits here.
    stalled: Option<Frame>,
    side_query: Option<String>,
}

impl<H: Hooks> Relay<H> {
    pub fn new(limits: RelayLimits, hooks: H) -> Self {
        Self {
            limits,
            hooks,
            tracker: Tracker::default(),
            expect: VecDeque::new(),
            to_client: VecDeque::new(),
            to_client_bytes: 0,
            to_server: VecDeque::new(),
            to_server_bytes: 0,
            client_pass: 0,
            server_pass: 0,
            skip_to_sync: false,
            rows: Rows::Unknown,
            txn_status: b'I',
            terminated: false,
            stalled: None,
            side_query: None,
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
            self.server_frame(frame, true)?;
        }
        self.on_server_bytes(buf)
    }

    /// The SQL of the statement whose results are streaming now.
    fn current_sql(&self) -> Bytes {
        match self.expect.front() {
            Some(Expect::Query { sql, .. }) | Some(Expect::Execute { sql, .. }) => sql.clone(),
            _ => Bytes::new(),
        }
    }

    fn send_client(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.to_client_bytes += b.len();
            self.to_client.push_back(b);
        }
    }

    fn send_server(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.to_server_bytes += b.len();
            self.to_server.push_back(b);
        }
    }

    // ---------------------------------------------------------------- client → server

    /// Consumes what the client sent. On error the session must end: a fatal
    /// `ErrorResponse` has been queued for the client.
    pub fn on_client_bytes(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        let r = self.client_bytes(buf);
        if let Err(RelayError::Client(e)) = &r {
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
        loop {
            if from == Origin::Server && self.stalled.is_some() {
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
            if h.frame_len > self.limits.max_message {
                return Err(wrap(ProtocolError::TooLarge {
                    len: h.frame_len,
                    max: self.limits.max_message,
                }));
            }
            if buf.len() - run < h.frame_len {
                break;
            }
            if run > 0 {
                self.forward(from, buf.split_to(run).freeze());
                run = 0;
            }
            let frame = split_frame(buf, self.limits.max_message)
                .map_err(wrap)?
                .expect("whole frame checked above");
            match from {
                Origin::Client => self.client_frame(frame)?,
                Origin::Server => self.server_frame(frame, false)?,
            }
        }
        if run > 0 {
            self.forward(from, buf.split_to(run).freeze());
        }
        Ok(())
    }

    /// Queues bytes received from one side for the other.
    fn forward(&mut self, from: Origin, b: Bytes) {
        match from {
            Origin::Client => self.send_server(b),
            Origin::Server => self.send_client(b),
        }
    }

    fn client_frame(&mut self, frame: Frame) -> Result<(), RelayError> {
        let tag = frame.tag();
        if self.skip_to_sync && tag != fe::SYNC && tag != fe::TERMINATE {
            return Ok(());
        }
        let err = RelayError::Client;
        match tag {
            fe::QUERY => {
                let sql = fe::parse_query(frame.body()).map_err(err)?;
                self.tracker.simple_query();
                match self.hooks.statement(sql, Via::SimpleQuery) {
                    Verdict::Allow => {
                        let sql = frame.as_bytes().slice_ref(sql);
                        self.expect.push_back(Expect::Query { sql, refusal: None });
                        self.send_server(frame.into_bytes());
                    }
                    Verdict::Deny(r) => self.refuse_query(r),
                }
            }
            fe::PARSE => {
                let p = fe::parse_parse(frame.body()).map_err(err)?;
                match self.hooks.statement(p.sql, Via::Parse(p.name)) {
                    Verdict::Allow => {
                        let bytes = frame.as_bytes();
                        self.tracker.parse(
                            bytes.slice_ref(p.name),
                            bytes.slice_ref(p.sql),
                            p.param_types,
                        );
                        self.expect.push_back(Expect::Parse { refusal: None });
                        self.send_server(frame.into_bytes());
                    }
                    Verdict::Deny(r) => {
                        self.hooks.completed(Outcome::Refused);
                        self.send_server(fe::parse(b"", REFUSED_SQL));
                        self.expect.push_back(Expect::Parse {
                            refusal: Some(r.to_error_response()),
                        });
                        self.skip_to_sync = true;
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
                self.expect.push_back(Expect::Bind);
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
            fe::EXECUTE => {
                let (name, _) = fe::parse_execute(frame.body()).map_err(err)?;
                let wants_columns = self.hooks.wants_columns();
                let (sql, slot, formats, inject) = match self.tracker.portal_mut(name) {
                    Some(p) => {
                        let inject = wants_columns && !p.describe_sent;
                        p.describe_sent |= inject;
                        (
                            p.sql.clone(),
                            Some(p.described.clone()),
                            p.result_formats.clone(),
                            inject,
                        )
                    }
                    None => (Bytes::new(), None, Vec::new(), false),
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
                self.expect
                    .push_back(Expect::Execute { sql, slot, formats });
                self.send_server(frame.into_bytes());
            }
            fe::CLOSE => {
                match fe::parse_target(tag, frame.body()).map_err(err)? {
                    fe::Target::Statement(n) => {
                        self.hooks.close_statement(n);
                        self.tracker.close_statement(n)
                    }
                    fe::Target::Portal(n) => self.tracker.close_portal(n),
                }
                self.expect.push_back(Expect::Close);
                self.send_server(frame.into_bytes());
            }
            fe::SYNC => {
                self.skip_to_sync = false;
                self.expect.push_back(Expect::Sync);
                self.send_server(frame.into_bytes());
            }
            fe::FUNCTION_CALL => {
                let oid = fe::parse_function_call(frame.body()).map_err(err)?;
                match self.hooks.function_call(oid) {
                    Verdict::Allow => {
                        self.expect.push_back(Expect::Query {
                            sql: Bytes::new(),
                            refusal: None,
                        });
                        self.send_server(frame.into_bytes());
                    }
                    // Answered like a refused simple query: error, then ReadyForQuery.
                    Verdict::Deny(r) => self.refuse_query(r),
                }
            }
            fe::FLUSH | fe::COPY_DONE | fe::COPY_FAIL => self.send_server(frame.into_bytes()),
            fe::TERMINATE => {
                self.terminated = true;
                self.send_server(frame.into_bytes());
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

    /// Refuses a simple query or function call: the server gets [`REFUSED_SQL`] in its
    /// place and the client the refusal in place of the server's error.
    fn refuse_query(&mut self, r: Refusal) {
        self.hooks.completed(Outcome::Refused);
        self.send_server(fe::query(REFUSED_SQL));
        self.expect.push_back(Expect::Query {
            sql: Bytes::new(),
            refusal: Some(r.to_error_response()),
        });
    }

    // ---------------------------------------------------------------- server → client

    /// Consumes what the server sent.
    pub fn on_server_bytes(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        self.scan(Origin::Server, buf)
    }

    /// The hot-path test: may this frame go through unseen?
    #[inline]
    fn passes_through(&mut self, from: Origin, tag: u8) -> bool {
        if from == Origin::Client {
            // COPY FROM STDIN data streams through, however large, unless skipping.
            return tag == fe::COPY_DATA && !self.skip_to_sync;
        }
        match tag {
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
        self.send_client(r.to_error_response());
        self.rows = Rows::Discard;
    }

    /// After an error the server skips to `Sync`: what it owed before then is void.
    fn drop_expected_to_sync(&mut self) {
        while let Some(e) = self.expect.front() {
            if matches!(e, Expect::Sync | Expect::Query { .. }) {
                break;
            }
            self.expect.pop_front();
        }
    }

    fn server_frame(&mut self, frame: Frame, side_query_done: bool) -> Result<(), RelayError> {
        let tag = frame.tag();
        if (tag == be::ROW_DESCRIPTION || tag == be::COPY_OUT_RESPONSE)
            && !side_query_done
            && !matches!(self.rows, Rows::Discard)
            && let Some(sql) = self.hooks.side_query(frame.as_bytes(), &self.current_sql())
        {
            self.stalled = Some(frame);
            self.side_query = Some(sql);
            return Ok(());
        }
        if let Rows::Discard = self.rows {
            if tag != be::READY_FOR_QUERY {
                return Ok(());
            }
            // Whatever the server still owed for this batch is void for the client.
            self.drop_expected_to_sync();
        }
        if tag == be::ERROR_RESPONSE
            && let Some(Expect::Query { refusal, .. } | Expect::Parse { refusal }) =
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
                Rows::Stage(stage) => match stage.data_row(frame.into_bytes()) {
                    Ok(out) => self.send_client(out),
                    Err(r) => self.fail_result(r),
                },
                _ => self.send_client(frame.into_bytes()),
            },
            be::PARSE_COMPLETE | be::BIND_COMPLETE | be::CLOSE_COMPLETE => {
                self.expect.pop_front();
                self.send_client(frame.into_bytes());
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
                if tag == be::COMMAND_COMPLETE {
                    let body = frame.body();
                    let tag_text = body.strip_suffix(&[0]).unwrap_or(body);
                    self.hooks.completed(Outcome::Complete {
                        command_tag: tag_text,
                    });
                }
                self.rows = Rows::Unknown;
                if let Some(Expect::Execute { .. }) = self.expect.front() {
                    self.expect.pop_front();
                }
                self.send_client(frame.into_bytes());
            }
            be::ERROR_RESPONSE => {
                let (code, _) = be::error_summary(frame.body());
                // Before `completed`, so what the message had redacted counts for the
                // statement that failed.
                let frame = self.hooks.server_message(frame.into_bytes());
                self.hooks.completed(Outcome::Error { sqlstate: &code });
                self.rows = Rows::Unknown;
                // In the extended protocol the server now skips to Sync: so does the
                // queue, and refusals queued in that stretch are void.
                if !matches!(self.expect.front(), Some(Expect::Query { .. })) {
                    self.drop_expected_to_sync();
                }
                self.send_client(frame);
            }
            be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {
                let frame = self.hooks.server_message(frame.into_bytes());
                self.send_client(frame);
            }
            be::READY_FOR_QUERY => {
                self.txn_status = be::ready_status(frame.body()).map_err(RelayError::Server)?;
                self.rows = Rows::Unknown;
                while let Some(e) = self.expect.pop_front() {
                    if matches!(e, Expect::Sync | Expect::Query { .. }) {
                        break;
                    }
                }
                self.send_client(frame.into_bytes());
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

    /// The server's connection ended. Queues an error for the client if a frame was cut
    /// or the server owed it an answer. Returns whether the client can still parse what
    /// it received (false when the server died inside a frame already partly forwarded).
    pub fn on_server_eof(&mut self) -> bool {
        if self.server_pass > 0 {
            return false;
        }
        if !self.terminated {
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

    /// Wants columns and replaces every row it is handed by an empty one, so a test can
    /// tell which rows went through a stage.
    struct Masking;
    struct Blank;
    impl RowStage for Blank {
        fn data_row(&mut self, _frame: Bytes) -> Result<Bytes, Refusal> {
            Ok(build(be::DATA_ROW, |b| b.put_i16(0)))
        }
    }
    impl Hooks for Masking {
        fn wants_columns(&mut self) -> bool {
            true
        }
        fn result(&mut self, _d: &Bytes, _f: &[i16]) -> Result<Option<Box<dyn RowStage>>, Refusal> {
            Ok(Some(Box::new(Blank)))
        }
    }

    fn describe_reply() -> Bytes {
        msg(
            be::ROW_DESCRIPTION,
            b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        )
    }

    #[test]
    fn pipelined_rebinds_of_the_unnamed_portal_are_all_staged() {
        let mut r = Relay::new(RelayLimits::default(), Masking);
        let mut c = BytesMut::new();
        c.extend_from_slice(&msg(fe::PARSE, b"s1\0select 1\0\0\0"));
        c.extend_from_slice(&fe::sync());
        for _ in 0..3 {
            c.extend_from_slice(&msg(fe::BIND, b"\0s1\0\0\0\0\0\0\0"));
            c.extend_from_slice(&msg(fe::EXECUTE, b"\0\0\0\0\0"));
            c.extend_from_slice(&fe::sync());
        }
        r.on_client_bytes(&mut c).unwrap();
        assert_eq!(tags(&drain_server(&mut r)), b"PSBDESBDESBDES");
        let mut s = BytesMut::new();
        s.extend_from_slice(&msg(be::PARSE_COMPLETE, b""));
        s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        for _ in 0..3 {
            s.extend_from_slice(&msg(be::BIND_COMPLETE, b""));
            s.extend_from_slice(&describe_reply());
            s.extend_from_slice(&row(&[b"secret"]));
            s.extend_from_slice(&msg(be::COMMAND_COMPLETE, b"SELECT 1\0"));
            s.extend_from_slice(&msg(be::READY_FOR_QUERY, b"I"));
        }
        r.on_server_bytes(&mut s).unwrap();
        let out = drain_client(&mut r);
        assert_eq!(tags(&out), b"1Z2DCZ2DCZ2DCZ");
        assert!(
            !out.windows(6).any(|w| w == b"secret"),
            "a row passed unstaged"
        );
    }

    #[test]
    fn rows_of_an_undescribed_portal_are_refused_when_a_stage_wants_them() {
        let mut r = Relay::new(RelayLimits::default(), Masking);
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
        let mut r = Relay::new(RelayLimits::default(), Masking);
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
