//! One session's audit trail, kept by the relay core (sans-IO).
//!
//! The relay tells the trail about every statement it forwards or refuses and about
//! every byte of an answer it sends the agent; the trail encodes the records and keeps
//! each open statement's outcome (tags, rows, SQLSTATE, masking counts, duration, bytes
//! and the SHA-256 of those bytes) until the statement's answer ends. The driver takes
//! the encoded records with [`Trail::take`] and, when a statement record is among them,
//! makes them durable before it writes the statement to the server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::config::Params;
use super::record::{self, Body, Encoded, ParamRecord, PolicyFacts, WireText};
use super::writer::AuditLog;
use crate::protocol::frontend as fe;
use crate::protocol::sqlstate;
use crate::session::hooks::Refusal;

/// What the policy and analysis knew about a statement, for its record.
#[derive(Debug, Clone, Default)]
pub struct StatementFacts {
    pub policy: Option<PolicyFacts>,
    pub fingerprint: Option<String>,
    /// It reads or writes a column under a masking rule for this agent: its parameter
    /// values are never kept raw.
    pub touches_masked: bool,
}

/// How a statement came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Simple,
    Extended,
    FunctionCall,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Simple => "simple",
            Via::Extended => "extended",
            Via::FunctionCall => "function_call",
        }
    }
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Complete,
    Error,
    Refused,
    NotRun,
    /// The session ended before the answer did.
    Interrupted,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Error => "error",
            Status::Refused => "refused",
            Status::NotRun => "not_run",
            Status::Interrupted => "interrupted",
        }
    }
}

struct Open {
    id: u64,
    started: Instant,
    hasher: Sha256,
    bytes: u64,
    tags: Vec<String>,
    rows: u64,
    sqlstate: Option<String>,
    masked: Vec<(String, u64)>,
    refused: bool,
}

pub struct Trail {
    log: AuditLog,
    gateway: Arc<str>,
    session: Arc<str>,
    identity: Arc<str>,
    params: Params,
    next: u64,
    out: Vec<Encoded>,
    /// A statement record is in `out`: it must be durable before the statement is sent.
    gate: bool,
    open: VecDeque<Open>,
    /// Statement numbers in the records last taken (`[from, to]`).
    taken: (u64, u64),
    /// The approval request the next statement record runs under.
    approval: Option<i64>,
}

impl Trail {
    pub fn new(log: AuditLog, session: Arc<str>, identity: &str, params: Params) -> Self {
        Self {
            gateway: log.gateway().into(),
            log,
            session,
            identity: identity.into(),
            params,
            next: 0,
            out: Vec::new(),
            gate: false,
            open: VecDeque::new(),
            taken: (1, 0),
            approval: None,
        }
    }

    /// Statements recorded so far.
    pub fn statements(&self) -> u64 {
        self.next
    }

    /// `Err` with the refusal to give when no statement may run because the log cannot
    /// record it.
    pub fn check(&self) -> Result<(), Refusal> {
        self.log.accepting().map_err(|e| refusal(&e))
    }

    /// Statement numbers in the records [`Trail::take`] returned last.
    pub fn last_taken(&self) -> (u64, u64) {
        self.taken
    }

    fn push(&mut self, body: &Body<'_>) {
        self.out.push(record::encode(&self.gateway, body));
    }

    /// A statement is about to be forwarded. Returns its number in the session, to
    /// close its outcome with.
    pub fn statement(
        &mut self,
        via: Via,
        sql: &[u8],
        bind: Option<&[u8]>,
        facts: &StatementFacts,
        approval: Option<i64>,
    ) -> u64 {
        let approval = approval.or(self.approval.take());
        self.next += 1;
        let id = self.next;
        let params = bind.map(|b| self.params_of(b, facts.touches_masked));
        let session = self.session.clone();
        let identity = self.identity.clone();
        self.push(&Body::Statement {
            session: &session,
            identity: &identity,
            stmt: id,
            via: via.as_str(),
            sql: WireText(sql),
            params,
            fingerprint: facts.fingerprint.clone(),
            policy: facts.policy.as_ref(),
            approval,
        });
        self.gate = true;
        self.open.push_back(Open {
            id,
            started: Instant::now(),
            hasher: Sha256::new(),
            bytes: 0,
            tags: Vec::new(),
            rows: 0,
            sqlstate: None,
            masked: Vec::new(),
            refused: false,
        });
        id
    }

    /// A statement the gateway refused before the server saw it.
    pub fn refusal(&mut self, via: Via, sql: &[u8], r: &Refusal, facts: &StatementFacts) {
        self.next += 1;
        let session = self.session.clone();
        let identity = self.identity.clone();
        self.push(&Body::Refusal {
            session: &session,
            identity: &identity,
            stmt: self.next,
            via: via.as_str(),
            sql: WireText(sql),
            sqlstate: r.code,
            message: &r.message,
            policy: facts.policy.as_ref(),
        });
    }

    /// A held statement became approval request `request`.
    pub fn approval_request(
        &mut self,
        request: i64,
        sql: &str,
        rule: Option<&str>,
        approvers: u32,
    ) {
        let session = self.session.clone();
        self.push(&Body::ApprovalRequest {
            session: &session,
            request,
            sql,
            rule,
            approvers,
        });
    }

    /// The request was decided (`approve`, `edit`, `deny`, `timeout`, `withdrawn`). An
    /// approval or edit marks the statement that runs next with the request.
    pub fn approval_decision(
        &mut self,
        request: i64,
        action: &str,
        reviewers: &[String],
        reason: Option<&str>,
        sql: &str,
        edited_sql: Option<&str>,
    ) {
        let session = self.session.clone();
        self.push(&Body::ApprovalDecision {
            session: &session,
            request,
            action,
            reviewers,
            reason,
            sql,
            edited_sql,
        });
        if matches!(action, "approve" | "edit") {
            self.approval = Some(request);
        }
    }

    fn params_of(&self, bind_frame: &[u8], touches_masked: bool) -> Vec<ParamRecord> {
        let body = bind_frame.get(5..).unwrap_or_default();
        let Ok(values) = fe::bind_params(body) else {
            return Vec::new();
        };
        let mode = match self.params {
            Params::Keep if touches_masked => Params::Hash,
            m => m,
        };
        values
            .iter()
            .map(|(format, v)| match mode {
                Params::Drop => ParamRecord::Dropped { dropped: true },
                Params::Hash => ParamRecord::Hashed {
                    sha256: v.map(|v| format!("{:x}", Sha256::digest(v))),
                },
                Params::Keep => match (format, v) {
                    (_, None) => ParamRecord::Value {
                        value: None,
                        base64: None,
                    },
                    (0, Some(v)) if std::str::from_utf8(v).is_ok() => ParamRecord::Value {
                        value: Some(String::from_utf8_lossy(v).into_owned()),
                        base64: None,
                    },
                    (_, Some(v)) => {
                        use base64::Engine;
                        ParamRecord::Value {
                            value: None,
                            base64: Some(base64::engine::general_purpose::STANDARD.encode(v)),
                        }
                    }
                },
            })
            .collect()
    }

    fn find(&mut self, id: u64) -> Option<&mut Open> {
        self.open.iter_mut().find(|o| o.id == id)
    }

    /// Bytes of statement `id`'s answer went to the agent.
    #[inline]
    pub fn sent(&mut self, id: u64, bytes: &[u8]) {
        // The answer streaming is nearly always the oldest open one: found first.
        if let Some(o) = self.find(id) {
            o.hasher.update(bytes);
            o.bytes += bytes.len() as u64;
        }
    }

    /// The server completed one statement of `id` (a simple query may hold several).
    pub fn command_complete(&mut self, id: u64, tag: &[u8]) {
        if let Some(o) = self.find(id) {
            let text = String::from_utf8_lossy(tag).into_owned();
            o.rows += rows_of(&text);
            o.tags.push(text);
        }
    }

    pub fn error(&mut self, id: u64, code: &str) {
        if let Some(o) = self.find(id) {
            o.sqlstate.get_or_insert_with(|| code.to_owned());
        }
    }

    /// The gateway refused `id`'s result part-way (masking could not be applied).
    pub fn refused(&mut self, id: u64, code: &str) {
        if let Some(o) = self.find(id) {
            o.refused = true;
            o.sqlstate.get_or_insert_with(|| code.to_owned());
        }
    }

    pub fn masked(&mut self, id: u64, counts: Vec<(String, u64)>) {
        if let Some(o) = self.find(id) {
            for (name, n) in counts {
                match o.masked.iter_mut().find(|(m, _)| *m == name) {
                    Some((_, c)) => *c += n,
                    None => o.masked.push((name, n)),
                }
            }
        }
    }

    /// `id`'s answer is over: its outcome record is written. `ran: false` when the server
    /// skipped it (an earlier error in its batch).
    pub fn close(&mut self, id: u64, ran: bool) {
        self.close_as(id, if ran { None } else { Some(Status::NotRun) });
    }

    fn close_as(&mut self, id: u64, forced: Option<Status>) {
        let Some(at) = self.open.iter().position(|o| o.id == id) else {
            return;
        };
        let o = self.open.remove(at).expect("position found above");
        let status = if let Some(s) = forced {
            s
        } else if o.refused {
            Status::Refused
        } else if o.sqlstate.is_some() {
            Status::Error
        } else {
            Status::Complete
        };
        let session = self.session.clone();
        // The digest's own hex formatting: `hex::encode` builds the text a char at a time.
        let digest = format!("{:x}", o.hasher.finalize());
        self.push(&Body::Outcome {
            session: &session,
            stmt: o.id,
            status: status.as_str(),
            tags: &o.tags,
            rows: o.rows,
            sqlstate: o.sqlstate.as_deref(),
            duration_us: o.started.elapsed().as_micros() as u64,
            bytes_to_agent: o.bytes,
            masked: &o.masked,
            result_sha256: digest,
        });
    }

    /// Closes every open statement as interrupted (the session ended under them).
    pub fn close_all(&mut self) {
        while let Some(id) = self.open.front().map(|o| o.id) {
            self.close_as(id, Some(Status::Interrupted));
        }
    }

    /// The records last taken could not be made durable, so their statements were never
    /// sent: they are recorded as not run.
    pub fn batch_failed(&mut self) {
        let (from, to) = self.taken;
        for id in from..=to {
            self.close_as(id, Some(Status::NotRun));
        }
    }

    /// [`Trail::take`] when no statement record is waiting; `None` otherwise.
    pub fn take_outcomes(&mut self) -> Option<(Vec<Encoded>, bool)> {
        if self.gate {
            return None;
        }
        self.take()
    }

    /// Records to write, and whether a statement among them waits for them to be durable.
    pub fn take(&mut self) -> Option<(Vec<Encoded>, bool)> {
        if self.out.is_empty() {
            return None;
        }
        let from = self.taken.1 + 1;
        self.taken = (from, self.next);
        let gate = std::mem::take(&mut self.gate);
        Some((std::mem::take(&mut self.out), gate))
    }
}

/// What the agent is told when the log cannot record its statement.
pub fn refusal(e: &super::writer::AuditError) -> Refusal {
    Refusal::new(
        if matches!(e, super::writer::AuditError::Full { .. }) {
            sqlstate::INSUFFICIENT_RESOURCES
        } else {
            sqlstate::IO_ERROR
        },
        format!("portcullis refused this statement: {e}, and nothing runs unrecorded"),
    )
    .with_hint("An operator must make the audit log writable again (free space, fix the device); statements run again as soon as it is. The session is still open.")
}

/// Rows returned or affected, from a command tag (`SELECT 3`, `INSERT 0 2`, `COPY 10`).
fn rows_of(tag: &str) -> u64 {
    let mut words = tag.split(' ');
    let cmd = words.next().unwrap_or_default();
    let last = tag.rsplit(' ').next().unwrap_or_default();
    match cmd {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            last.parse().unwrap_or(0)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_the_command_tag() {
        assert_eq!(rows_of("SELECT 3"), 3);
        assert_eq!(rows_of("INSERT 0 12"), 12);
        assert_eq!(rows_of("CREATE TABLE"), 0);
        assert_eq!(rows_of("FETCH 5"), 5);
    }
}
