//! The points where policy, masking and audit plug into the relay core.
//!
//! The relay calls these synchronously, in protocol order, with zero-copy views of the
//! frames. The default implementation passes everything: a gateway with no rules costs
//! one predictable branch per result set, not per row.

use bytes::{Bytes, BytesMut};

use crate::protocol::backend::{Severity, error_response_at};

/// Why the gateway refuses something, phrased for the person reading the client's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement the error points at.
    pub position: Option<usize>,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn with_position(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn to_error_response(&self) -> Bytes {
        error_response_at(
            Severity::Error,
            self.code,
            &self.message,
            self.detail.as_deref(),
            self.hint.as_deref(),
            self.position,
        )
    }
}

/// Which protocol path a statement came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    SimpleQuery,
    /// A `Parse` creating the named prepared statement (`b""`: the unnamed one).
    Parse(&'a [u8]),
}

/// What to do with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Refusal),
    /// A person must decide first: the relay holds the statement (see
    /// [`super::relay::Relay::held`]).
    Hold(Hold),
}

/// Why a statement waits for a reviewer, and on what terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The rule that held it; `None` for the policy default.
    pub rule: Option<String>,
    /// Shown to the agent and the reviewer.
    pub message: String,
    /// What the policy knew (class, relations, properties), for the reviewer.
    pub facts: String,
    /// Distinct reviewers who must approve.
    pub approvers: u32,
    /// How long it may wait; `None`: the gateway's default.
    pub timeout_secs: Option<u64>,
    /// One statement the planner can estimate (`EXPLAIN` without `ANALYZE`).
    pub explainable: bool,
    /// One write the rule wants previewed (run and rolled back unless approved).
    pub preview: bool,
}

impl Hold {
    /// The refusal a held statement gets on a gateway where nobody can approve it.
    pub fn without_approvals(&self) -> Refusal {
        Refusal::new(
            crate::protocol::sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("portcullis held this statement: approval required ({})", self.message),
        )
        .with_detail(self.facts.clone())
        .with_hint("Approvals are not configured on this gateway ([approvals]), so a held statement is refused; a person with database access must run it or change the rule.")
    }

    /// The strictest terms of two holds (a multi-statement query held as a whole).
    pub fn merge(&mut self, other: &Hold) {
        self.approvers = self.approvers.max(other.approvers);
        self.timeout_secs = match (self.timeout_secs, other.timeout_secs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.explainable = false;
        self.preview = false;
        if self.rule != other.rule {
            self.facts = format!("{}; {}", self.facts, other.facts);
        }
    }
}

/// Rewrites the rows of one result set.
pub trait RowStage {
    /// Looks at one whole `DataRow` (or `CopyData`) frame where it arrived. `false`:
    /// forward it as it is, so kept rows stay in the run of received bytes passed on
    /// uncopied, like unstaged rows. `true`: what replaces it (possibly nothing) has been
    /// appended to `out`, where the replacements of consecutive rows gather into one
    /// write. On error `out` must be as it was.
    fn data_row(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<bool, Refusal>;
}

/// The relay's extension points. All methods have pass-through defaults.
pub trait Hooks {
    /// A statement is about to be sent upstream.
    fn statement(&mut self, _sql: &[u8], _via: Via<'_>) -> Verdict {
        Verdict::Allow
    }

    /// A statement a reviewer approved (or wrote, editing a held one) is about to be
    /// sent: judged again, but a hold now lets it through.
    fn approved_statement(&mut self, sql: &[u8], via: Via<'_>) -> Verdict {
        match self.statement(sql, via) {
            Verdict::Hold(_) => Verdict::Allow,
            v => v,
        }
    }

    /// An `Execute` of a portal bound to prepared statement `statement` (text `sql`) is
    /// about to be sent. Its `Parse` was judged already; this is for what changed since
    /// (a grant that ended), and must cost next to nothing when nothing did.
    fn execute(&mut self, _sql: &[u8], _statement: &[u8]) -> Verdict {
        Verdict::Allow
    }

    /// A fast-path `FunctionCall` of the function with this OID is about to be sent.
    fn function_call(&mut self, _oid: u32) -> Verdict {
        Verdict::Allow
    }

    /// The client closed a prepared statement (`Close` of a statement).
    fn close_statement(&mut self, _name: &[u8]) {}

    /// Whether any stage needs to see rows. When true the relay makes sure it knows
    /// every result's columns (asking the server itself if the client did not) and
    /// refuses rows it cannot attribute; when false rows are never looked at.
    fn wants_columns(&mut self) -> bool {
        false
    }

    /// What the statement judged last can leave behind on the server if it runs. Asked
    /// when [`Hooks::wants_columns`]: a result refused after the server ran its
    /// statement must be undone, and how depends on this.
    fn effects(&mut self) -> Effects {
        Effects::Other
    }

    /// The server described a result (`RowDescription` of a query, a portal or a
    /// statement) or started a `COPY` out (`CopyOutResponse`; `sql` is the statement).
    /// Returns a catalog query the hooks need answered before they can decide on it; the
    /// relay then stalls the server stream at this frame until the driver has run the
    /// query on a connection of its own and called [`Hooks::side_query_done`].
    fn side_query(&mut self, _frame: &Bytes, _sql: &[u8]) -> Option<String> {
        None
    }

    /// The driver ran the side query: `rows` are its `DataRow` frames, or `Err` with why
    /// it could not.
    fn side_query_done(&mut self, _rows: Result<Vec<Bytes>, String>) {}

    /// Asked after a statement is allowed, when [`Hooks::wants_columns`]: a catalog query
    /// to run on the session's own connection just before it, for what only the
    /// session can see (tables its open transaction created or changed). Its answer
    /// never reaches the client; its rows come back through [`Hooks::lookup_done`], in
    /// order, before the statement's own answer.
    fn lookup(&mut self) -> Option<Ask> {
        None
    }

    /// The answer to a [`Hooks::lookup`]: its `RowDescription` and `DataRow` frames (a
    /// described statement that returns no rows has none), or the server's error.
    fn lookup_done(&mut self, _rows: Result<Vec<Bytes>, String>) {}

    /// The server is ready for the next query, with this transaction status (`I`, `T`
    /// or `E`).
    fn ready(&mut self, _status: u8) {}

    /// A result set is starting. `row_description` is the whole frame; `formats` the
    /// result formats the client asked for in `Bind` (empty for a simple query, where
    /// the description's own format codes are right). Returning a stage makes the relay
    /// hand it every `DataRow` of this result; `Ok(None)` forwards them untouched.
    fn result(
        &mut self,
        _row_description: &Bytes,
        _formats: &[i16],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        Ok(None)
    }

    /// A `COPY … TO STDOUT` is starting (`CopyOutResponse` frame). Returning a stage
    /// makes the relay hand it every `CopyData` frame.
    fn copy_out(
        &mut self,
        _copy_out_response: &Bytes,
        _sql: &[u8],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        Ok(None)
    }

    /// The server finished a statement (`CommandComplete` frame) or failed it. Returns
    /// the values masked in its result, per rule and detector, for its audit record.
    fn completed(&mut self, _outcome: Outcome<'_>) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// The class of the statement just judged, for the statements metric. Must cost
    /// next to nothing: it is asked for every statement.
    fn class(&self) -> crate::metrics::ClassLabel {
        crate::metrics::ClassLabel::Unparsed
    }

    /// What the policy knew about the statement just judged (`sql`, with `verdict`),
    /// for its audit record. Asked only when the session keeps an audit trail.
    fn facts(&mut self, _sql: &[u8], _verdict: &Verdict) -> crate::audit::StatementFacts {
        crate::audit::StatementFacts::default()
    }

    /// An error, notice or notification from the server (whole frame), before it goes
    /// to the client: returns the frame to send instead (the same `Bytes` when nothing
    /// changed). Their text can quote values (`invalid input syntax for type integer:
    /// "123-45-6789"`).
    fn server_message(&mut self, frame: Bytes) -> Bytes {
        frame
    }

    /// The server reported a run-time parameter (`ParameterStatus` frame): at start-up,
    /// and whenever the session changes one that clients are told about
    /// (`client_encoding`, `standard_conforming_strings`, ...).
    fn parameter_status(&mut self, _frame: &Bytes) {}
}

/// What the gateway asks on the session's own connection before a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A simple query; its rows come back.
    Query(String),
    /// A statement to describe, never run (prepared under a name of the gateway's and
    /// closed again): its `RowDescription` comes back.
    Describe(String),
}

/// What a statement can leave behind on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effects {
    /// It only reads: a refusal of its result leaves nothing to undo.
    None,
    /// It changes rows and may run inside a transaction block, so a transaction of the
    /// gateway's can keep it undoable until its result is judged.
    Undoable,
    /// Anything else, or not known.
    #[default]
    Other,
}

/// How a statement ended, for audit.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Complete {
        command_tag: &'a [u8],
    },
    Error {
        sqlstate: &'a str,
    },
    Refused,
    /// An `Execute` stopped at its row limit (`PortalSuspended`); a later one goes on.
    Suspended,
}

/// No policy, no masking: everything passes.
#[derive(Debug, Default)]
pub struct PassThrough;

impl Hooks for PassThrough {}
