//! The statement gate of one session: every `Query` and `Parse` passes it before the relay
//! forwards it.
//!
//! It keeps what the server's reading of later statements depends on: prepared statements
//! by name (SQL `PREPARE` and protocol `Parse` share one namespace in PostgreSQL, and so
//! here; an `EXECUTE` is judged as what it runs), the `search_path` that qualifies names,
//! and the session settings that change how text is lexed. Sans-IO: it sees bytes and
//! `ParameterStatus` values, and answers allow or a refusal.
//!
//! Order of checks, per statement: the text must be read exactly as the server reads it
//! (encoding, `standard_conforming_strings`), then it must parse, then built-in denials,
//! then masked-column uses, then the rules. A multi-statement `Query` is all or nothing.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::analysis::{
    self, Analysis, AnalysisError, Class, Effect, ParseError, Property, Relation, Statement,
    analyze_cached,
};
use crate::grants::SessionGrants;
use crate::mask::{Policy as MaskPolicy, Subject};
use crate::protocol::sqlstate;
use crate::session::hooks::{Effects, Hold, Refusal, Verdict, Via};

use super::builtin;
use super::config::Action;
use super::masked::{self, MaskedCheck};
use super::rules::{Resolver, StatementPolicy};

/// Bound on remembered prepared statements per session (PostgreSQL has none; a client
/// that prepares without end gets its oldest forgotten, and `EXECUTE` of a forgotten one
/// is refused, which fails closed).
const MAX_PREPARED: usize = 10_000;

pub struct StatementGate {
    policy: Arc<ArcSwap<StatementPolicy>>,
    mask: Arc<ArcSwap<MaskPolicy>>,
    subject: Subject,
    /// The upstream role (`$user` in `search_path`).
    user: String,
    /// With the grant epoch each was judged in (see [`StatementGate::execute`]).
    prepared: HashMap<Vec<u8>, (Prepared, u64)>,
    /// `None` until the session sets one: the policy's configured default.
    search_path: Option<Vec<String>>,
    /// Every schema any `search_path` of this session named (see [`Resolver::also`]).
    seen_schemas: Vec<String>,
    /// The policy's `search_path`, as last seen.
    default_path: Vec<String>,
    /// Texts allowed whole, by their cached reading (the `Rc` keeps the address from
    /// being reused), with the generation they were judged in.
    allowed: HashMap<usize, (Rc<Result<Analysis, AnalysisError>>, u64)>,
    /// Bumped whenever what a judgement depends on changes: the policy or masking rules
    /// (a reload), the search_path.
    generation: u64,
    versions: (usize, usize),
    /// The server reported `standard_conforming_strings = off`.
    scs_off: bool,
    client_encoding: String,
    /// Judging a statement a reviewer approved ([`StatementGate::verdict_approved`]).
    approving: bool,
    /// The reading of the text judged last, for its audit record.
    last: Option<Rc<Result<Analysis, AnalysisError>>>,
    /// Audit facts by reading (the `Rc` keeps the address from being reused) and the
    /// generation they were worked out in: texts of one shape share them.
    facts: HashMap<usize, CachedFacts>,
    /// The identity's just-in-time grants; `None`: a gateway without grants.
    grants: Option<SessionGrants>,
    /// The grant epoch the last statement was judged in.
    grant_epoch: u64,
}

/// A prepared statement's reading: the statement in a cached analysis (no copy: clients
/// that parse every query before running it pay a map insert, not a clone), or the
/// reading of an `EXECUTE` it prepares, merged with what that runs.
#[derive(Clone)]
enum Prepared {
    Text(Rc<Result<Analysis, AnalysisError>>, usize),
    Merged(Rc<Statement>),
}

impl Prepared {
    fn statement(&self) -> Option<&Statement> {
        match self {
            Prepared::Text(a, i) => a.as_ref().as_ref().ok()?.statements.get(*i),
            Prepared::Merged(s) => Some(s),
        }
    }
}

/// A reading's audit facts: the reading (kept so its address is not reused), the
/// generation they were worked out in, the facts.
type CachedFacts = (
    Rc<Result<Analysis, AnalysisError>>,
    u64,
    crate::audit::StatementFacts,
);

/// Bound on remembered allowed texts per session.
const MAX_ALLOWED: usize = 1024;

/// How a statement that is not refused was judged.
enum Judged {
    /// Allowed, nothing logged: the same text may skip judging next time.
    Quiet,
    /// Allowed but logged (a `log` rule, observe mode): judged every time, so every
    /// occurrence is logged.
    Logged,
    /// A person must decide; judged every time.
    Held(Hold),
}

const SQLSTATE_SYNTAX: &str = "42601";
const SQLSTATE_CHARACTER: &str = "22021";

impl StatementGate {
    pub fn new(
        policy: Arc<ArcSwap<StatementPolicy>>,
        mask: Arc<ArcSwap<MaskPolicy>>,
        subject: Subject,
        user: impl Into<String>,
    ) -> Self {
        StatementGate {
            policy,
            mask,
            subject,
            user: user.into(),
            prepared: HashMap::new(),
            search_path: None,
            seen_schemas: Vec::new(),
            default_path: Vec::new(),
            allowed: HashMap::new(),
            generation: 0,
            versions: (0, 0),
            scs_off: false,
            client_encoding: "UTF8".into(),
            approving: false,
            last: None,
            facts: HashMap::new(),
            grants: None,
            grant_epoch: 0,
        }
    }

    /// Statements are judged with the roles of the identity's active grants that cover
    /// them.
    pub fn with_grants(mut self, grants: SessionGrants) -> Self {
        self.grant_epoch = 0;
        self.grants = Some(grants);
        self
    }

    /// Re-reads the grants in force; a change makes every cached judgement stale.
    fn refresh_grants(&mut self) -> u64 {
        if let Some(g) = &mut self.grants {
            let epoch = g.epoch();
            if epoch != self.grant_epoch {
                self.grant_epoch = epoch;
                self.generation += 1;
            }
        }
        self.grant_epoch
    }

    /// An `Execute` of prepared statement `name` (text `sql`) is about to be sent. A
    /// statement judged at its `Parse` under other grants than those in force now (one
    /// expired or was revoked since, or one was approved) is judged again; otherwise
    /// this is an integer compare.
    pub fn execute(&mut self, sql: &[u8], name: &[u8]) -> Verdict {
        if self.grants.is_none() {
            return Verdict::Allow;
        }
        let epoch = self.refresh_grants();
        // Nothing changed since the session started: every Parse saw these grants.
        if epoch == 0 {
            return Verdict::Allow;
        }
        match self.prepared.get(name) {
            Some((_, judged)) if *judged == epoch => Verdict::Allow,
            _ if sql.is_empty() => Verdict::Allow,
            _ => self.verdict(sql, Via::Parse(name)),
        }
    }

    /// For a refusal: the identity holds grants, none of which covered the statement
    /// (nothing `widened` its roles), so the agent knows why they did not help.
    fn uncovered_grants(&self, widened: bool) -> Option<String> {
        let g = self.grants.as_ref().filter(|g| g.any())?;
        if widened {
            return None;
        }
        Some(format!(
            "Grant {} is active but does not cover this statement (its database, class or tables), so it was judged without it.",
            g.ids()
                .map(|id| format!("#{id}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// The subject `reading` is judged as: the standing roles, plus those of the grants
    /// in force that cover it. Borrowed unless a grant adds a role.
    fn subject_for(
        &self,
        reading: &Statement,
        res: &Resolver<'_>,
    ) -> std::borrow::Cow<'_, Subject> {
        let Some(g) = self.grants.as_ref().filter(|g| g.any()) else {
            return std::borrow::Cow::Borrowed(&self.subject);
        };
        let mut subject: Option<Subject> = None;
        for live in g.covering(reading, res) {
            let s = subject.get_or_insert_with(|| self.subject.clone());
            for r in &live.roles {
                if !s.roles.contains(r) {
                    s.roles.push(r.clone());
                }
            }
        }
        match subject {
            Some(s) => std::borrow::Cow::Owned(s),
            None => std::borrow::Cow::Borrowed(&self.subject),
        }
    }

    /// What the text judged last can leave behind if it runs: nothing when every
    /// statement reads or is transaction control (which returns no rows, so no result
    /// of it is ever refused), undoable when they read or change rows, otherwise not
    /// known.
    pub fn effects(&self) -> Effects {
        let Some(Ok(a)) = self.last.as_deref() else {
            return Effects::Other;
        };
        let mut classes = a.statements.iter().map(|s| s.class);
        if a.statements.is_empty() {
            Effects::Other
        } else if classes
            .clone()
            .all(|c| matches!(c, Class::Read | Class::Txn))
        {
            Effects::None
        } else if classes.all(|c| matches!(c, Class::Read | Class::Write)) {
            Effects::Undoable
        } else {
            Effects::Other
        }
    }

    /// The relations the text judged last names, each once, as written.
    pub fn relations(&self) -> Vec<&Relation> {
        let Some(Ok(a)) = self.last.as_deref() else {
            return Vec::new();
        };
        let mut out: Vec<&Relation> = Vec::new();
        for r in a.statements.iter().flat_map(|s| &s.relations) {
            if !out.iter().any(|o| o.name == r.name && o.schema == r.schema) {
                out.push(r);
            }
        }
        out
    }

    /// The class of the text judged last, for the statements metric: one statement's
    /// class, the common class of several, `Multi` when they differ, `Unparsed` when it
    /// had no reading.
    pub fn last_class(&self) -> crate::metrics::ClassLabel {
        use crate::metrics::ClassLabel;
        let Some(Ok(a)) = self.last.as_deref() else {
            return ClassLabel::Unparsed;
        };
        let mut classes = a.statements.iter().map(|s| s.class);
        match classes.next() {
            None => ClassLabel::Unparsed,
            Some(first) if classes.all(|c| c == first) => ClassLabel::Of(first),
            Some(_) => ClassLabel::Multi,
        }
    }

    /// What the last judged text was, for the audit record of `sql` (that text) under
    /// `verdict`.
    pub fn facts(&mut self, sql: &[u8], verdict: &Verdict) -> crate::audit::StatementFacts {
        let (verdict_name, rule) = match verdict {
            Verdict::Allow if self.approving => ("approved", None),
            Verdict::Allow => ("allow", None),
            Verdict::Deny(_) => ("deny", None),
            Verdict::Hold(h) => ("hold", h.rule.clone()),
        };
        let mut facts = match self.last.clone() {
            Some(last) if last.is_ok() => {
                let key = Rc::as_ptr(&last) as usize;
                match self.facts.get(&key) {
                    Some((_, generation, f)) if *generation == self.generation => f.clone(),
                    _ => {
                        let f = self.work_out_facts(&last, sql);
                        if self.facts.len() >= MAX_ALLOWED {
                            self.facts.clear();
                        }
                        self.facts.insert(key, (last, self.generation, f.clone()));
                        f
                    }
                }
            }
            _ => crate::audit::StatementFacts {
                policy: Some(crate::audit::PolicyFacts::default()),
                ..Default::default()
            },
        };
        if let Some(p) = &mut facts.policy {
            p.verdict = verdict_name;
            p.rule = rule;
        }
        facts
    }

    /// Class, tables, masked-column use and fingerprint of a reading of `sql`.
    fn work_out_facts(
        &self,
        reading: &Result<Analysis, AnalysisError>,
        sql: &[u8],
    ) -> crate::audit::StatementFacts {
        let mut policy = crate::audit::PolicyFacts::default();
        let mut facts = crate::audit::StatementFacts::default();
        if let Ok(a) = reading {
            let p = self.policy.load();
            let mask = self.mask.load();
            let res = Resolver {
                search_path: self.search_path(&p),
                user: &self.user,
                also: &self.seen_schemas,
            };
            for st in &a.statements {
                policy.class.push(st.class.as_str());
                for r in &st.relations {
                    let list = if r.write {
                        &mut policy.writes
                    } else {
                        &mut policy.reads
                    };
                    let name = r.to_string();
                    if !list.contains(&name) {
                        list.push(name);
                    }
                }
                facts.touches_masked |= masked::touches(st, &mask, &self.subject, &res);
                if let Some(g) = self.grants.as_ref().filter(|g| g.any()) {
                    for live in g.covering(st, &res) {
                        if !policy.grants.contains(&live.id) {
                            policy.grants.push(live.id);
                        }
                    }
                }
            }
            facts.fingerprint = std::str::from_utf8(sql)
                .ok()
                .and_then(|t| a.fingerprint(t))
                .map(str::to_owned);
        }
        facts.policy = Some(policy);
        facts
    }

    /// A setting the server reported (`ParameterStatus`).
    pub fn parameter_status(&mut self, name: &str, value: &str) {
        match name {
            "standard_conforming_strings" => self.scs_off = !value.eq_ignore_ascii_case("on"),
            "client_encoding" => self.client_encoding = value.to_ascii_uppercase(),
            _ => {}
        }
    }

    /// The client closed a prepared statement (`Close`).
    pub fn closed(&mut self, name: &[u8]) {
        self.prepared.remove(name);
    }

    fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal::new(code, message)
    }

    /// Decides on the SQL text of a `Query` or `Parse`, as a gateway without approvals
    /// does: a held statement is refused.
    pub fn check(&mut self, sql: &[u8], source: Via<'_>) -> Result<(), Refusal> {
        match self.verdict(sql, source) {
            Verdict::Allow => Ok(()),
            Verdict::Deny(r) => Err(r),
            Verdict::Hold(h) => Err(h.without_approvals()),
        }
    }

    /// Judges again a statement a reviewer approved (or wrote): a hold now allows it and
    /// its effects apply; a refusal (the policy changed meanwhile) still refuses.
    pub fn verdict_approved(&mut self, sql: &[u8], source: Via<'_>) -> Verdict {
        self.approving = true;
        let v = self.verdict(sql, source);
        self.approving = false;
        match v {
            Verdict::Hold(_) => Verdict::Allow,
            v => v,
        }
    }

    /// Decides on the SQL text of a `Query` or `Parse`: allowed, refused, or held for a
    /// person (a multi-statement `Query` is held whole, on the strictest terms of its
    /// held statements; a refusal of any of them refuses it).
    pub fn verdict(&mut self, sql: &[u8], source: Via<'_>) -> Verdict {
        match self.judge_text(sql, source) {
            Ok(None) => Verdict::Allow,
            Ok(Some(h)) => Verdict::Hold(h),
            Err(r) => Verdict::Deny(r),
        }
    }

    fn judge_text(&mut self, sql: &[u8], source: Via<'_>) -> Result<Option<Hold>, Refusal> {
        self.last = None;
        let policy = self.policy.load_full();
        let mask = Arc::as_ptr(&self.mask.load_full()) as usize;
        let versions = (Arc::as_ptr(&policy) as usize, mask);
        if versions != self.versions {
            self.versions = versions;
            self.generation += 1;
        }
        self.refresh_grants();
        if self.default_path.as_slice() != policy.search_path() {
            self.default_path = policy.search_path().to_vec();
        }
        if !policy.is_configured() {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "portcullis refused this statement: no statement policy is configured",
            )
            .with_hint("The gateway refuses every statement until its configuration has a [policy] section; ask an operator to add one and reload."));
        }
        if !policy.is_enabled() {
            return Ok(None);
        }
        if sql.len() > policy.max_statement() {
            return Err(Self::refuse(
                "54000",
                format!(
                    "portcullis refused this statement: its text is {} bytes, over the {} bytes the gateway analyses ([policy] max_statement_bytes)",
                    sql.len(),
                    policy.max_statement()
                ),
            )
            .with_hint("Send bulk data with COPY ... FROM STDIN, or split the statement; an operator can raise max_statement_bytes."));
        }
        let text = self.readable(sql)?;
        let cached = analyze_cached(text);
        self.last = Some(cached.clone());
        let analysis = match cached.as_ref() {
            Ok(a) => a,
            Err(e) => return Err(self.unparsed(e, text)),
        };
        if self.scs_off && !resets_scs(analysis) {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "portcullis refused this statement: standard_conforming_strings is off in this session, and the gateway reads SQL with it on",
            )
            .with_hint("SET standard_conforming_strings = on (the PostgreSQL default), then send it again; write backslash escapes as E'...' strings."));
        }
        let count = analysis.statements.len();
        // Statements of one Query run in order, so a later one sees what an earlier one
        // did (`PREPARE q ...; EXECUTE q`, `SET search_path ...; SELECT ...`): effects are
        // applied as the statements are judged, and undone if any is refused, since then
        // none of them reaches the server.
        // A held query runs only once approved, and is judged again then: its effects
        // wait too (one statement: not applied; several: undone like a refusal's).
        let saved =
            (count > 1 && analysis.statements.iter().any(|s| s.effect.is_some())).then(|| {
                (
                    self.prepared.clone(),
                    self.search_path.clone(),
                    self.seen_schemas.clone(),
                )
            });
        // A text this session already ran under the same policy, masking and path
        // passes again without being judged: only its effects are applied.
        let key = Rc::as_ptr(&cached) as usize;
        let known = self
            .allowed
            .get(&key)
            .is_some_and(|(_, generation)| *generation == self.generation);
        let mut quiet = !analysis.statements.iter().any(|s| s.executes.is_some());
        let generation = self.generation;
        let mut held: Option<Hold> = None;
        for (i, stmt) in analysis.statements.iter().enumerate() {
            let judged = if known {
                Ok(Judged::Quiet)
            } else {
                self.resolve_execute(stmt).and_then(|resolved| {
                    let reading: &Statement = resolved.as_deref().unwrap_or(stmt);
                    self.judge(&policy, reading, stmt, text, i, count)
                })
            };
            match judged {
                Ok(Judged::Quiet) => {}
                Ok(Judged::Logged) => quiet = false,
                Ok(Judged::Held(h)) => {
                    quiet = false;
                    match &mut held {
                        None => held = Some(h),
                        Some(first) => first.merge(&h),
                    }
                }
                Err(r) => {
                    if let Some((prepared, path, seen)) = saved {
                        self.prepared = prepared;
                        self.search_path = path;
                        self.seen_schemas = seen;
                    }
                    return Err(r);
                }
            }
            if count == 1 && held.is_some() && source == Via::SimpleQuery && !self.approving {
                return Ok(held);
            }
            self.apply(&cached, i);
        }
        if held.is_some()
            && source == Via::SimpleQuery
            && !self.approving
            && let Some((prepared, path, seen)) = saved
        {
            self.prepared = prepared;
            self.search_path = path;
            self.seen_schemas = seen;
            return Ok(held);
        }
        if quiet && !known {
            if self.allowed.len() >= MAX_ALLOWED {
                self.allowed.clear();
            }
            // Judged under `generation`: if a statement of this text changed the path, the
            // entry is stale at once, and the text is judged again next time.
            self.allowed.insert(key, (cached.clone(), generation));
        }
        if let Via::Parse(name) = source
            && let [only] = analysis.statements.as_slice()
        {
            if self.prepared.len() >= MAX_PREPARED {
                self.prepared.clear();
            }
            let reading = match self.resolve_execute(only).ok().flatten() {
                Some(merged) => Prepared::Merged(merged),
                None => Prepared::Text(cached.clone(), 0),
            };
            self.prepared
                .insert(name.to_vec(), (reading, self.grant_epoch));
        }
        Ok(held)
    }

    /// Decides on a fast-path `FunctionCall`, which names a function by OID with no SQL
    /// around it. Only the large-object functions client libraries call this way are let
    /// through (libpq's `lo_*` API), judged by the rules as a call of that function; any
    /// other OID could be `pg_read_file` or a user function, so it is refused.
    pub fn check_function_call(&mut self, oid: u32) -> Result<(), Refusal> {
        let policy = self.policy.load_full();
        if !policy.is_configured() {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "portcullis refused this function call: no statement policy is configured",
            ));
        }
        if !policy.is_enabled() {
            return Ok(());
        }
        // pg_proc.dat's fixed OIDs; the same in every PostgreSQL release since 9.3.
        let (name, writes) = match oid {
            715 => ("lo_create", true),
            957 => ("lo_creat", true),
            955 => ("lowrite", true),
            964 => ("lo_unlink", true),
            1004 => ("lo_truncate", true),
            3172 => ("lo_truncate64", true),
            952 => ("lo_open", false),
            953 => ("lo_close", false),
            954 => ("loread", false),
            956 => ("lo_lseek", false),
            3170 => ("lo_lseek64", false),
            958 => ("lo_tell", false),
            3171 => ("lo_tell64", false),
            _ => {
                return Err(Self::refuse(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused a fast-path call of function OID {oid}: only large-object functions may be called this way"),
                )
                .with_hint("Call the function in a SQL statement (SELECT f(...)), where the policy can see what it is."));
            }
        };
        let mut stmt = Statement::new((0, 0));
        stmt.command = format!("FUNCTION CALL {name}");
        stmt.class = if writes { Class::Write } else { Class::Read };
        if writes {
            stmt.properties.insert(Property::Persists);
        }
        stmt.functions.push(analysis::Function {
            schema: Some("pg_catalog".into()),
            name: name.into(),
        });
        let text = stmt.command.clone();
        stmt.span = (0, text.len());
        self.judge(&policy, &stmt, &stmt, &text, 0, 1).map(|_| ())
    }

    /// The text as the server will read it, or why it cannot be read the same way.
    fn readable<'a>(&self, sql: &'a [u8]) -> Result<&'a str, Refusal> {
        if !sql.is_ascii()
            && !matches!(
                self.client_encoding.as_str(),
                "UTF8" | "UNICODE" | "SQL_ASCII"
            )
        {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "portcullis refused this statement: it has non-ASCII characters and client_encoding is {}, which the gateway does not read",
                    self.client_encoding
                ),
            )
            .with_hint("SET client_encoding = 'UTF8' (the client library converts), then send it again."));
        }
        let text = std::str::from_utf8(sql).map_err(|e| {
            Self::refuse(
                SQLSTATE_CHARACTER,
                format!(
                    "invalid byte sequence for encoding \"UTF8\" at byte {} of the statement",
                    e.valid_up_to() + 1
                ),
            )
        })?;
        Ok(text)
    }

    fn unparsed(&self, e: &AnalysisError, text: &str) -> Refusal {
        match e {
            AnalysisError::Parse(ParseError::Syntax { message, position }) => {
                // What PostgreSQL itself would answer: the server reads it with the same
                // grammar, so the agent sees the error it would have seen.
                let mut r = Self::refuse(SQLSTATE_SYNTAX, message.clone());
                if *position > 0 {
                    r = r.with_position(*position);
                }
                r.with_detail("portcullis did not forward the statement: it does not parse with PostgreSQL 15's grammar.")
            }
            other => {
                warn!(target: "portcullis::policy", error = %other, len = text.len(), "statement refused: no reading");
                Self::refuse(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this statement: the gateway could not analyse it ({other})"),
                )
                .with_hint("Simplify the statement (very deep nesting is refused), then send it again.")
            }
        }
    }

    /// The prepared statement an `EXECUTE` runs, if it is one.
    fn resolve_execute(&self, stmt: &Statement) -> Result<Option<Rc<Statement>>, Refusal> {
        let Some(name) = &stmt.executes else {
            return Ok(None);
        };
        let Some(prepared) = self
            .prepared
            .get(name.as_bytes())
            .and_then(|(p, _)| p.statement())
        else {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("portcullis refused this statement: prepared statement \"{name}\" is not known to the gateway"),
            )
            .with_hint("Prepare it through this gateway connection (PREPARE or the extended protocol) before executing it."));
        };
        // `EXPLAIN ANALYZE EXECUTE p` and `CREATE TABLE t AS EXECUTE p` add to what p does.
        let mut merged = prepared.clone();
        merged.span = stmt.span;
        merged.properties.union(stmt.properties);
        merged.functions.extend(stmt.functions.iter().cloned());
        if stmt.has(Property::Persists) {
            merged.properties.insert(Property::Persists);
        }
        if stmt.command.starts_with("EXPLAIN") && !stmt.has(Property::ExplainAnalyze) {
            // Plain EXPLAIN of a prepared statement plans it: a read, unless it is opaque.
            if merged.class != Class::Unknown {
                merged.class = Class::Read;
            }
        } else if stmt.class == Class::Ddl {
            merged.class = Class::Ddl;
        }
        merged.command = format!("{} ({})", stmt.command, prepared.command);
        Ok(Some(Rc::new(merged)))
    }

    fn search_path<'a>(&'a self, policy: &'a StatementPolicy) -> &'a [String] {
        self.search_path.as_deref().unwrap_or(policy.search_path())
    }

    fn judge(
        &self,
        policy: &StatementPolicy,
        reading: &Statement,
        written: &Statement,
        text: &str,
        index: usize,
        count: usize,
    ) -> Result<Judged, Refusal> {
        let also: &[String] = if self.seen_schemas.is_empty() {
            &[]
        } else {
            &self.seen_schemas
        };
        let res = Resolver {
            search_path: self.search_path(policy),
            user: &self.user,
            also,
        };
        // Built only when something is refused or logged: the allowed path allocates
        // nothing here.
        let quoted = || quote(text, written.span);
        let which = || {
            if count > 1 {
                format!("statement {} of {count}: {}", index + 1, quoted())
            } else {
                format!("statement: {}", quoted())
            }
        };
        let mut reading_owned;
        let mut reading = reading;
        if reading.unqualified_functions && !res.catalog_first() && reading.class != Class::Unknown
        {
            // `search_path` puts another schema before pg_catalog: `lower(x)` may be anyone's.
            reading_owned = reading.clone();
            reading_owned.class = Class::Unknown;
            reading_owned.properties.insert(Property::Opaque);
            reading = &reading_owned;
        }
        if let Some((p, why)) = builtin::denial(reading) {
            self.log(reading, "deny", Some("built-in"), &quoted());
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("portcullis refused this statement: {why} ({p} is denied to every agent)", p = p.as_str()),
            )
            .with_detail(which())
            .with_hint("This is a built-in denial that no policy rule lifts; a database administrator can run it directly if it is needed."));
        }
        if let Some(Effect::StandardConformingStrings(Some(false))) = &reading.effect {
            return Err(Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "portcullis refused this statement: the gateway reads SQL with standard_conforming_strings on, so it cannot be turned off",
            )
            .with_detail(which())
            .with_hint("Write backslash escapes as E'...' strings instead."));
        }
        let mask = self.mask.load();
        match masked::check(reading, &mask, &self.subject, &res) {
            Ok(()) => {}
            Err(MaskedCheck::Use(u)) => {
                self.log(
                    reading,
                    "deny",
                    Some(&format!("mask:{}", u.rule)),
                    &quoted(),
                );
                return Err(Self::refuse(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "portcullis refused this statement: column {} is masked (rule \"{}\") and this statement {}",
                        u.column, u.rule, u.what()
                    ),
                )
                .with_detail(format!("{} stands for {}; a masked column may only be selected as itself, grouped by, counted or joined on. {}", u.column, u.source, which()))
                .with_hint(format!(
                    "Select the column as it is and let the gateway mask it, or ask an operator to add \"{}\" to permit of masking rule \"{}\".",
                    u.permit.as_str(), u.rule
                )));
            }
            Err(MaskedCheck::Statistics(view)) => {
                self.log(reading, "deny", Some("mask:statistics"), &quoted());
                return Err(Self::refuse(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this statement: {view} quotes sampled column values, which masking rules cannot cover"),
                )
                .with_detail(which())
                .with_hint("Ask an operator for the statistics you need, or query the tables themselves."));
            }
        }
        let subject = self.subject_for(reading, &res);
        let decision = policy.decide(&subject, reading, &res);
        for name in &decision.logged {
            self.log(reading, "log", Some(name), &quoted());
        }
        let rule = decision.rule.as_deref();
        let verdict = decision.action;
        if verdict == Action::Allow {
            return Ok(if decision.logged.is_empty() {
                Judged::Quiet
            } else {
                Judged::Logged
            });
        }
        let verb = if verdict == Action::Hold {
            "hold"
        } else {
            "deny"
        };
        if !policy.enforces() {
            self.log(
                reading,
                &format!("would {verb} (observe mode)"),
                rule,
                &quoted(),
            );
            return Ok(Judged::Logged);
        }
        let verb = if verdict == Action::Hold && self.approving {
            "approved hold: runs"
        } else {
            verb
        };
        self.log(reading, verb, rule, &quoted());
        let facts = facts(reading);
        if verdict == Action::Hold {
            let message = decision.message.clone().unwrap_or_else(|| match rule {
                Some(r) => format!(
                    "rule \"{r}\" holds {} statements for a reviewer",
                    reading.command
                ),
                None => "the policy default holds statements no rule allows".into(),
            });
            return Ok(Judged::Held(Hold {
                rule: rule.map(str::to_owned),
                message,
                facts: format!("{} ({facts})", which()),
                approvers: decision.approvers,
                timeout_secs: decision.approval_timeout_secs,
                explainable: count == 1
                    && matches!(reading.class, Class::Read | Class::Write)
                    && reading.executes.is_none(),
                preview: decision.preview
                    && count == 1
                    && reading.class == Class::Write
                    && reading.executes.is_none(),
            }));
        }
        let refusal = match (verdict, rule) {
            (_, Some(r)) => Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "portcullis refused this statement: {}",
                    decision.message.clone().unwrap_or_else(|| format!("policy rule \"{r}\" denies it"))
                ),
            )
            .with_detail(format!("{} ({facts}; rule \"{r}\")", which()))
            .with_hint("If the statement is needed, ask an operator to change the [policy] rules."),
            (_, None) => Self::refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "portcullis refused this statement: no policy rule allows {} ({} statements) for {}",
                    reading.command, reading.class, self.subject.identity
                ),
            )
            .with_detail(format!("{} ({facts})", which()))
            .with_hint("The [policy] default for this identity is deny; an operator can add a rule that allows such statements."),
        };
        Err(
            match self.uncovered_grants(matches!(subject, std::borrow::Cow::Owned(_))) {
                Some(note) => {
                    let hint = refusal.hint.clone().unwrap_or_default();
                    refusal.with_hint(format!("{note} {hint}"))
                }
                None => refusal,
            },
        )
    }

    fn log(&self, stmt: &Statement, verdict: &str, rule: Option<&str>, quoted: &str) {
        info!(
            target: "portcullis::policy",
            verdict,
            rule = rule.unwrap_or("default"),
            class = stmt.class.as_str(),
            command = %stmt.command,
            properties = %stmt.properties.iter().map(Property::as_str).collect::<Vec<_>>().join(","),
            statement = quoted,
            "policy decision"
        );
    }

    /// Tracks what statement `index` of `cached` (allowed) does to the session.
    fn apply(&mut self, cached: &Rc<Result<Analysis, AnalysisError>>, index: usize) {
        let Some(stmt) = cached
            .as_ref()
            .as_ref()
            .ok()
            .and_then(|a| a.statements.get(index))
        else {
            return;
        };
        if matches!(
            stmt.effect,
            Some(Effect::SearchPath(_) | Effect::ResetAll | Effect::DiscardAll)
        ) {
            self.generation += 1;
        }
        match &stmt.effect {
            Some(Effect::Prepare(name)) => {
                if self.prepared.len() >= MAX_PREPARED {
                    self.prepared.clear();
                }
                let reading = match self.resolve_execute(stmt).ok().flatten() {
                    Some(merged) => Prepared::Merged(merged),
                    None => Prepared::Text(cached.clone(), index),
                };
                self.prepared
                    .insert(name.as_bytes().to_vec(), (reading, self.grant_epoch));
            }
            Some(Effect::Deallocate(Some(name))) => {
                self.prepared.remove(name.as_bytes());
            }
            Some(Effect::Deallocate(None)) => self.prepared.clear(),
            Some(Effect::DiscardAll) => {
                self.prepared.clear();
                self.search_path = None;
            }
            Some(Effect::ResetAll) | Some(Effect::SearchPath(None)) => self.search_path = None,
            Some(Effect::SearchPath(Some(p))) => {
                // What the server may still be on if this SET turns out LOCAL or is
                // rolled back: the path before it.
                let before = self
                    .search_path
                    .clone()
                    .unwrap_or_else(|| self.default_path.clone());
                for s in before.into_iter().chain(p.iter().cloned()) {
                    if !self.seen_schemas.contains(&s) {
                        self.seen_schemas.push(s);
                    }
                }
                self.search_path = Some(p.clone());
            }
            Some(Effect::StandardConformingStrings(_)) | None => {}
        }
    }
}

/// `SET standard_conforming_strings = on`, `RESET standard_conforming_strings` or
/// `RESET ALL`, alone: the way out of a session that turned it off. They read the same
/// whatever the setting.
fn resets_scs(a: &Analysis) -> bool {
    a.statements.len() == 1
        && matches!(
            a.statements[0].effect,
            Some(Effect::StandardConformingStrings(None | Some(true))) | Some(Effect::ResetAll)
        )
}

/// The statement's text for a message: one line, at most 120 characters.
fn quote(text: &str, (start, end): (usize, usize)) -> String {
    // A shape-cached reading's span is the whole text (`usize::MAX`).
    let end = end.min(text.len());
    let s = text.get(start.min(end)..end).unwrap_or(text).trim();
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn facts(stmt: &Statement) -> String {
    let mut s = format!("{}, class {}", stmt.command, stmt.class);
    let props: Vec<&str> = stmt
        .properties
        .iter()
        .filter(|p| *p != Property::Persists)
        .map(Property::as_str)
        .collect();
    if !props.is_empty() {
        s.push_str("; ");
        s.push_str(&props.join(", "));
    }
    s
}
