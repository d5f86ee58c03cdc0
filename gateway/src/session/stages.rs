//! The gateway's own stages behind the relay's [`Hooks`]: the statement gate of the
//! policy ([`crate::policy::StatementGate`]) and masking, with audit to sit beside them.
//!
//! Sans-IO like the rest of the session: when masking needs to know which table a
//! result column comes from and the catalog cache does not, it asks the relay to stall
//! and the driver fetches the rows over the gateway's own connection.
//!
//! The gateway's connection cannot see what the session's open transaction created or
//! altered. After such DDL, and until the transaction ends, each statement is preceded
//! on the session's own connection by a lookup of the relations it names
//! ([`Hooks::lookup`]); what it finds is the session's alone and sits over the shared
//! cache, and the shared cache is forgotten again when that transaction ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tracing::info;

use super::copy_target;
use super::hooks::{Ask, Effects, Hooks, Outcome, Refusal, RowStage, Verdict, Via};
use crate::mask::wire::data_row_fields;
use crate::mask::{
    Catalog, CatalogFill, ColumnDesc, CopyFormat, CopyPlan, Layered, MaskError, MaskStats, Policy,
    RowPlan, Subject, TableNames, TypeFill, apply_result_formats, parse_row_description,
};
use crate::policy::{StatementGate, StatementPolicy};
use crate::protocol::backend as be;
use crate::protocol::sqlstate;

/// Per-session stages.
pub struct Stages {
    gate: StatementGate,
    policy: Arc<ArcSwap<Policy>>,
    subject: Subject,
    catalog: Arc<Mutex<Catalog>>,
    /// This session's own names over the shared `catalog`: tables its open transaction
    /// created or changed (looked up on its connection), and the misses of the
    /// statement at hand.
    own: Catalog,
    /// DDL completed in the transaction still open: statements are looked up first.
    ddl_open: bool,
    /// Lookups sent on the session's connection whose answer has not come back, in order.
    lookups: std::collections::VecDeque<Lookup>,
    /// The query of the `COPY (query) TO STDOUT` just allowed, to describe before it runs.
    copy_query: Option<String>,
    /// Its result's columns, as the server described them.
    copy_described: Option<Vec<ColumnDesc>>,
    /// Why the last catalog fetch failed, to explain a refusal.
    catalog_error: Option<String>,
    /// The side query under way, and what its rows are for.
    pending: Option<Pending>,
    /// Columns of the `COPY` about to start, resolved by a side query.
    copy_columns: Option<Vec<ColumnDesc>>,
    /// Values masked since the last statement completed, shared with the row stages
    /// of its results and reported when it completes.
    statement_stats: Rc<RefCell<MaskStats>>,
    /// The session's `standard_conforming_strings`, once the server has said.
    standard_conforming_strings: Option<bool>,
    /// The session's `client_encoding` when it is one masking cannot work in.
    unsafe_encoding: Option<String>,
    /// Someone can approve held statements (`[approvals]`); otherwise they are refused.
    approvals: bool,
}

/// PostgreSQL's client-only encodings: a byte below 0x80 can be the second half of a
/// character (`\` and `|` included), so the masker's reading of ASCII digits, letters,
/// delimiters and escapes would be wrong. Every other encoding PostgreSQL offers keeps
/// ASCII bytes ASCII.
const UNSAFE_ENCODINGS: [&str; 7] = [
    "SJIS",
    "SHIFT_JIS_2004",
    "BIG5",
    "GBK",
    "UHC",
    "GB18030",
    "JOHAB",
];

/// A question asked on the session's own connection ([`Hooks::lookup`]).
enum Lookup {
    /// Relations by name, after DDL in the open transaction.
    Names(CatalogFill),
    /// The query of a `COPY (query)`.
    Describe,
}

enum Pending {
    Catalog(CatalogFill),
    Types(TypeFill),
    CopyColumns(Option<Vec<String>>),
}

impl Stages {
    /// `upstream_user` is the role the gateway logs in as (`$user` of `search_path`).
    pub fn new(
        statements: Arc<ArcSwap<StatementPolicy>>,
        policy: Arc<ArcSwap<Policy>>,
        subject: Subject,
        upstream_user: &str,
        catalog: Arc<Mutex<Catalog>>,
    ) -> Self {
        Self {
            gate: StatementGate::new(statements, policy.clone(), subject.clone(), upstream_user),
            policy,
            subject,
            catalog,
            own: Catalog::with_ttl(std::time::Duration::MAX),
            ddl_open: false,
            lookups: Default::default(),
            copy_query: None,
            copy_described: None,
            catalog_error: None,
            pending: None,
            copy_columns: None,
            statement_stats: Rc::default(),
            standard_conforming_strings: None,
            unsafe_encoding: None,
            approvals: false,
        }
    }

    /// Statements are judged with the identity's active grants (see
    /// [`crate::grants`]).
    pub fn with_grants(mut self, grants: crate::grants::SessionGrants) -> Self {
        self.gate = self.gate.with_grants(grants);
        self
    }

    /// Held statements wait for a reviewer instead of being refused.
    pub fn with_approvals(mut self, on: bool) -> Self {
        self.approvals = on;
        self
    }

    /// Masking is refused in an encoding where ASCII bytes are not always characters.
    fn check_encoding(&self) -> Result<(), Refusal> {
        match &self.unsafe_encoding {
            None => Ok(()),
            Some(enc) => Err(Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "portcullis refused this result: masking rules apply to it and client_encoding is {enc}, in which the gateway cannot read values safely"
                ),
            )
            .with_hint("SET client_encoding = 'UTF8' (the client library converts), then run it again.")),
        }
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the names as this session sees them.
    fn with_names<R>(&self, f: impl FnOnce(&dyn TableNames) -> R) -> R {
        let shared = self.catalog();
        f(&Layered {
            session: &self.own,
            shared: &shared,
        })
    }

    fn refusal(&self, e: &MaskError) -> Refusal {
        let mut r = Refusal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("portcullis refused this result: {e}"),
        );
        if let Some(why) = &self.catalog_error {
            r = r.with_detail(format!("the catalog lookup failed: {why}"));
        }
        if self.ddl_open && matches!(e, MaskError::Unresolvable { .. }) {
            return r.with_hint("This transaction changed tables, and the gateway looks up the ones a statement names just before it; a table created in the same query string, or by a statement still in flight in a pipeline, cannot be. Send the statement after the DDL's answer, or COMMIT first.");
        }
        r.with_hint("Masking rules apply to this result and the gateway could not apply them safely; ask an operator or select other columns.")
    }
}

impl Hooks for Stages {
    fn statement(&mut self, sql: &[u8], via: Via<'_>) -> Verdict {
        let v = match self.gate.verdict(sql, via) {
            Verdict::Hold(h) if !self.approvals => Verdict::Deny(h.without_approvals()),
            v => v,
        };
        self.note_copy_query(sql, &v);
        v
    }

    fn approved_statement(&mut self, sql: &[u8], via: Via<'_>) -> Verdict {
        let v = self.gate.verdict_approved(sql, via);
        self.note_copy_query(sql, &v);
        v
    }

    fn execute(&mut self, sql: &[u8], statement: &[u8]) -> Verdict {
        match self.gate.execute(sql, statement) {
            Verdict::Hold(h) if !self.approvals => Verdict::Deny(h.without_approvals()),
            v => v,
        }
    }

    fn function_call(&mut self, oid: u32) -> Verdict {
        match self.gate.check_function_call(oid) {
            Ok(()) => Verdict::Allow,
            Err(r) => Verdict::Deny(r),
        }
    }

    fn close_statement(&mut self, name: &[u8]) {
        self.gate.closed(name);
    }

    fn effects(&mut self) -> Effects {
        self.gate.effects()
    }

    fn wants_columns(&mut self) -> bool {
        !self.policy.load().is_exempt(&self.subject)
    }

    fn side_query(&mut self, frame: &Bytes, sql: &[u8]) -> Option<String> {
        let policy = self.policy.load();
        // A failed lookup is not asked again for the same statement: it refuses.
        if policy.is_exempt(&self.subject) || self.catalog_error.is_some() {
            return None;
        }
        if frame.first() == Some(&be::COPY_OUT_RESPONSE) {
            if let Some(columns) = &self.copy_columns {
                // Found by an earlier round: the catalog may still lack their types.
                let planned = self.with_names(|names| policy.plan(&self.subject, columns, names));
                return self.fetch_for(planned);
            }
            let target =
                copy_target::parse_statement_as(sql, self.standard_conforming_strings).ok()?;
            if target.query.is_some() {
                // Described before it ran; the catalog may still need the tables.
                let columns = self.copy_described.take()?;
                let planned = self.with_names(|names| policy.plan(&self.subject, &columns, names));
                self.copy_columns = Some(columns);
                return self.fetch_for(planned);
            }
            let query = target.columns_sql();
            self.pending = Some(Pending::CopyColumns(target.columns));
            return Some(query);
        }
        let columns = parse_row_description(frame).ok()?;
        let planned = self.with_names(|names| policy.plan(&self.subject, &columns, names));
        self.fetch_for(planned)
    }

    fn side_query_done(&mut self, rows: Result<Vec<Bytes>, String>) {
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.catalog_error = Some(e);
                self.pending = None;
                return;
            }
        };
        let outcome = match self.pending.take() {
            Some(Pending::Catalog(mut fill)) => rows
                .iter()
                .try_for_each(|r| fill.ingest_data_row(r))
                .map(|()| {
                    let missing = self.catalog().complete(fill);
                    self.own.mark_missing(&missing);
                }),
            Some(Pending::Types(mut fill)) => rows
                .iter()
                .try_for_each(|r| fill.ingest_data_row(r))
                .map(|()| {
                    let missing = self.catalog().complete_types(fill);
                    self.own.mark_types_unreadable(&missing);
                }),
            Some(Pending::CopyColumns(wanted)) => self.copy_columns_from(&rows, wanted),
            None => Ok(()),
        };
        self.catalog_error = outcome.err().map(|e| e.to_string());
    }

    fn result(
        &mut self,
        row_description: &Bytes,
        formats: &[i16],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        let policy = self.policy.load();
        if policy.is_exempt(&self.subject) {
            return Ok(None);
        }
        let plan = (|| {
            let mut columns = parse_row_description(row_description)?;
            if !formats.is_empty() {
                apply_result_formats(&mut columns, formats)?;
            }
            self.with_names(|names| policy.plan(&self.subject, &columns, names))
        })()
        .map_err(|e| self.refusal(&e))?;
        if plan.is_passthrough() {
            return Ok(None);
        }
        self.check_encoding()?;
        Ok(Some(Box::new(MaskRows {
            plan,
            stats: self.statement_stats.clone(),
        })))
    }

    fn copy_out(
        &mut self,
        copy_out_response: &Bytes,
        sql: &[u8],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        let policy = self.policy.load();
        if policy.is_exempt(&self.subject) {
            return Ok(None);
        }
        // COPY data is not described on the wire: the columns come from the side query
        // on the statement's relation, the layout from its options. A statement not read
        // with certainty (`COPY (query)`, unknown options) is refused.
        let columns = self.copy_columns.take();
        let target = copy_target::parse_statement_as(sql, self.standard_conforming_strings)
            .map_err(|e| self.refusal(&e.into()))?;
        let format = match &columns {
            Some(cols) => target
                .format(cols, copy_out_response)
                .map_err(|e| self.refusal(&e.into()))?,
            // plan_copy refuses unknown columns below.
            None => CopyFormat::text(),
        };
        let plan = self
            .with_names(|names| {
                policy.plan_copy(
                    &self.subject,
                    columns.as_deref(),
                    names,
                    copy_out_response,
                    format,
                )
            })
            .map_err(|e| self.refusal(&e))?;
        if plan.is_passthrough() {
            return Ok(None);
        }
        target
            .check_encoding()
            .map_err(|e| self.refusal(&e.into()))?;
        self.check_encoding()?;
        Ok(Some(Box::new(MaskCopy {
            plan,
            stats: self.statement_stats.clone(),
        })))
    }

    fn server_message(&mut self, frame: Bytes) -> Bytes {
        let policy = self.policy.load();
        // Counted with the statement's values, so the audit line shows them too.
        let redact = |text: &[u8]| {
            let mut stats = self.statement_stats.borrow_mut();
            policy.redact_message_text(&self.subject, text, &mut stats)
        };
        let (Some(&tag), Some(body)) = (frame.first(), frame.get(5..)) else {
            return frame;
        };
        match tag {
            be::ERROR_RESPONSE | be::NOTICE_RESPONSE => {
                let Ok(fields) = be::error_fields(body) else {
                    return frame;
                };
                // The SQLSTATE is a code, never data.
                let redacted: Vec<Option<Vec<u8>>> = fields
                    .iter()
                    .map(|(code, v)| (*code != b'C').then(|| redact(v)).flatten())
                    .collect();
                if redacted.iter().all(Option::is_none) {
                    return frame;
                }
                let merged: Vec<(u8, &[u8])> = fields
                    .iter()
                    .zip(&redacted)
                    .map(|((code, v), r)| (*code, r.as_deref().unwrap_or(v)))
                    .collect();
                be::fields_message(tag, &merged)
            }
            be::NOTIFICATION_RESPONSE => {
                let Some((pid, channel, payload)) = be::notification_parts(body) else {
                    return frame;
                };
                match (redact(channel), redact(payload)) {
                    (None, None) => frame,
                    (c, p) => be::notification_response(
                        pid,
                        c.as_deref().unwrap_or(channel),
                        p.as_deref().unwrap_or(payload),
                    ),
                }
            }
            _ => frame,
        }
    }

    fn parameter_status(&mut self, frame: &Bytes) {
        let Some((name, value)) = be::parameter(frame) else {
            return;
        };
        if let (Ok(n), Ok(v)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
            self.gate.parameter_status(n, v);
        }
        match name {
            b"standard_conforming_strings" => {
                self.standard_conforming_strings = match value {
                    b"on" => Some(true),
                    b"off" => Some(false),
                    _ => None,
                };
            }
            b"client_encoding" => {
                let enc = String::from_utf8_lossy(value).to_ascii_uppercase();
                self.unsafe_encoding = UNSAFE_ENCODINGS.contains(&enc.as_str()).then_some(enc);
            }
            _ => {}
        }
    }

    fn facts(&mut self, sql: &[u8], verdict: &Verdict) -> crate::audit::StatementFacts {
        self.gate.facts(sql, verdict)
    }

    fn class(&self) -> crate::metrics::ClassLabel {
        self.gate.last_class()
    }

    fn lookup(&mut self) -> Option<Ask> {
        if let Some(query) = self.copy_query.take() {
            self.lookups.push_back(Lookup::Describe);
            return Some(Ask::Describe(query));
        }
        if !self.ddl_open || self.policy.load().is_exempt(&self.subject) {
            return None;
        }
        let relations = self.gate.relations();
        if relations.is_empty() {
            return None;
        }
        let fill = CatalogFill::named(
            relations
                .iter()
                .map(|r| (r.schema.as_deref(), r.name.as_str())),
        );
        let sql = fill.sql();
        self.lookups.push_back(Lookup::Names(fill));
        Some(Ask::Query(sql))
    }

    fn lookup_done(&mut self, rows: Result<Vec<Bytes>, String>) {
        match self.lookups.pop_front() {
            None => {}
            // A failed lookup leaves the shared cache to answer: its misses fail closed.
            Some(Lookup::Names(mut fill)) => {
                if let Ok(frames) = rows
                    && frames
                        .iter()
                        .filter(|f| f.first() == Some(&be::DATA_ROW))
                        .all(|r| fill.ingest_data_row(r).is_ok())
                {
                    self.own.complete(fill);
                }
            }
            // No description (an error, a statement the server would not prepare) leaves
            // the COPY's columns unknown, which refuses it while rules apply.
            Some(Lookup::Describe) => {
                self.copy_described = rows.ok().and_then(|frames| {
                    let desc = frames
                        .iter()
                        .find(|f| f.first() == Some(&be::ROW_DESCRIPTION))?;
                    parse_row_description(desc).ok()
                });
            }
        }
    }

    fn ready(&mut self, status: u8) {
        if status == b'I' {
            if self.ddl_open {
                // What the transaction did is everyone's now (or nobody's): entries
                // fetched while it was open may describe the tables before it.
                self.catalog().invalidate();
            }
            self.ddl_open = false;
            self.own.invalidate();
        }
    }

    fn completed(&mut self, outcome: Outcome<'_>) -> Vec<(String, u64)> {
        // A failed lookup explains refusals of this statement only, and its misses
        // and COPY columns hold for it alone.
        self.catalog_error = None;
        self.own.forget_missing();
        self.copy_columns = None;
        self.copy_described = None;
        let stats = self.statement_stats.borrow_mut().take();
        let counts = if stats.total() > 0 {
            // Also in the tracing log under their own target, with the session span
            // naming who asked: a gateway without [audit] still shows what it masked.
            let (status, tag) = match outcome {
                Outcome::Complete { command_tag } => {
                    ("complete", String::from_utf8_lossy(command_tag))
                }
                Outcome::Error { sqlstate } => ("error", sqlstate.into()),
                Outcome::Refused => ("refused", "".into()),
                Outcome::Suspended => ("suspended", "".into()),
            };
            info!(
                target: "portcullis::audit",
                status,
                tag = %tag,
                rows = stats.rows,
                masked = stats.total(),
                per_rule = %stats,
                "statement masked"
            );
            stats.counts()
        } else {
            Vec::new()
        };
        if let Outcome::Complete { command_tag } = outcome {
            // Names and column numbers may have changed: forget what the cache knows.
            if [&b"ALTER"[..], b"DROP", b"CREATE", b"COMMENT"]
                .iter()
                .any(|p| command_tag.starts_with(p))
            {
                self.catalog().invalidate();
                self.own.invalidate();
                self.ddl_open = true;
            }
        }
        counts
    }
}

impl Stages {
    /// The side query a plan's outcome asks for: table names or type layouts the
    /// catalog does not have yet.
    fn fetch_for(&mut self, planned: Result<RowPlan, MaskError>) -> Option<String> {
        let (query, pending) = match planned {
            Err(MaskError::NeedCatalog { oids }) => {
                let fill = self.catalog().start_fill(&oids);
                (fill.sql(), Pending::Catalog(fill))
            }
            Err(MaskError::NeedTypes { oids }) => {
                let fill = TypeFill::new(&oids);
                (fill.sql(), Pending::Types(fill))
            }
            _ => return None,
        };
        self.pending = Some(pending);
        Some(query)
    }

    /// Remembers the query of an allowed `COPY (query) TO STDOUT`, for
    /// [`Hooks::lookup`] to have it described first, when masking applies.
    fn note_copy_query(&mut self, sql: &[u8], verdict: &Verdict) {
        self.copy_query = None;
        let starts_copy = sql
            .trim_ascii_start()
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"copy"));
        if !starts_copy
            || !matches!(verdict, Verdict::Allow)
            || self.policy.load().is_exempt(&self.subject)
        {
            return;
        }
        if let Ok(target) = copy_target::parse_statement_as(sql, self.standard_conforming_strings) {
            self.copy_query = target.query;
        }
    }

    /// Builds the copied columns from the side query's rows (table OID, schema, table,
    /// attnum, name, type OID), in the statement's column order, and caches the names.
    fn copy_columns_from(
        &mut self,
        rows: &[Bytes],
        wanted: Option<Vec<String>>,
    ) -> Result<(), MaskError> {
        let mut all = Vec::with_capacity(rows.len());
        let mut oids = Vec::new();
        let mut catalog_rows = Vec::with_capacity(rows.len());
        for row in rows {
            let fields = data_row_fields::<6>(row, "catalog row")?;
            let num = |b: Option<&[u8]>| -> Result<i64, MaskError> {
                std::str::from_utf8(b.unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(MaskError::malformed("catalog row", "not a number"))
            };
            let table_oid = num(fields[0])? as u32;
            let name = String::from_utf8_lossy(fields[4].unwrap_or_default()).into_owned();
            all.push(ColumnDesc {
                table_oid,
                attnum: num(fields[3])? as i16,
                type_oid: num(fields[5])? as u32,
                ..ColumnDesc::computed(&name, 0)
            });
            if !oids.contains(&table_oid) {
                oids.push(table_oid);
            }
            catalog_rows.push(fields);
        }
        if oids.len() > 1 {
            let mut schemas: Vec<String> = catalog_rows
                .iter()
                .map(|f| String::from_utf8_lossy(f[1].unwrap_or_default()).into_owned())
                .collect();
            schemas.dedup();
            let table = catalog_rows[0][2].unwrap_or_default();
            return Err(MaskError::CopyStatement(format!(
                "table {:?} exists in several schemas ({}), and which one the session's search_path picks is not known to the gateway; qualify it with its schema",
                String::from_utf8_lossy(table),
                schemas.join(", ")
            )));
        }
        let mut fill = self.catalog().start_fill(&oids);
        for f in &catalog_rows {
            fill.ingest_row(&f[..5])?;
        }
        // Every OID came from a row, so none is missing.
        self.catalog().complete(fill);
        let columns = match wanted {
            None => all,
            Some(names) => names
                .iter()
                .map(|n| {
                    all.iter()
                        .find(|c| c.name == n.as_bytes())
                        .cloned()
                        .ok_or(MaskError::CopyColumnsUnknown)
                })
                .collect::<Result<_, _>>()?,
        };
        self.copy_columns = Some(columns);
        Ok(())
    }
}

struct MaskRows {
    plan: RowPlan,
    stats: Rc<RefCell<MaskStats>>,
}

impl RowStage for MaskRows {
    fn data_row(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<bool, Refusal> {
        self.plan
            .mask_row_into(frame, out, &mut self.stats.borrow_mut())
            .map_err(|e| {
                Refusal::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this result: {e}"),
                )
            })
    }
}

struct MaskCopy {
    plan: CopyPlan,
    stats: Rc<RefCell<MaskStats>>,
}

impl RowStage for MaskCopy {
    fn data_row(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<bool, Refusal> {
        self.plan
            .mask_copy_into(frame, out, &mut self.stats.borrow_mut())
            .map_err(|e| {
                Refusal::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this COPY: {e}"),
                )
            })
    }
}
