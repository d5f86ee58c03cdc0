//! The gateway's numbers for Prometheus: the instruments the data path bumps, and their
//! registry. The HTTP listener that serves them is the control plane's
//! ([`crate::control::metrics`]); what is read at scrape time rather than counted
//! (pools, the audit writer, reserved connections) is in [`scrape`].
//!
//! The hot path rule: a statement costs a few relaxed atomic adds. Labelled families
//! are resolved once (statement class × verdict when the gateway starts, a session's
//! identity when it opens) and the data path holds the resolved handles; values
//! masked and refusals, which name a rule or a SQLSTATE, go through a small per-session
//! cache so a session looks each label up once.
//!
//! - [`histogram`]: the lock-free latency histogram.
//! - [`config`]: the `[metrics]` section.
//! - [`scrape`]: the collector of values read when Prometheus asks.

pub mod config;
pub mod histogram;
pub mod scrape;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use config::MetricsConfig;
pub use histogram::LatencyHistogram;

use crate::analysis::Class;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// A statement's class as the `class` label has it: the analysis' classes, `multi` for a
/// query string of several statements of different classes, `unparsed` for text the
/// gateway has no reading of (refused before analysis, or a fast-path call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassLabel {
    Of(Class),
    Multi,
    Unparsed,
}

const CLASS_LABELS: usize = Class::ALL.len() + 2;

impl ClassLabel {
    fn index(self) -> usize {
        match self {
            ClassLabel::Of(c) => Class::ALL.iter().position(|k| *k == c).unwrap_or(8),
            ClassLabel::Multi => Class::ALL.len(),
            ClassLabel::Unparsed => Class::ALL.len() + 1,
        }
    }

    fn name(i: usize) -> &'static str {
        match i {
            i if i < Class::ALL.len() => Class::ALL[i].as_str(),
            i if i == Class::ALL.len() => "multi",
            _ => "unparsed",
        }
    }
}

/// What the gateway did with a statement (`verdict` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictLabel {
    /// The policy allowed it; it was sent to the server.
    Allow,
    /// A reviewer approved (or wrote) it; it was sent.
    Approved,
    /// The policy refused it.
    Deny,
    /// It waits for a reviewer.
    Hold,
    /// The gateway refused it for another reason: the audit log cannot record it, the
    /// agent's credential expired, its message is too large.
    Refused,
}

impl VerdictLabel {
    const ALL: [VerdictLabel; 5] = [
        VerdictLabel::Allow,
        VerdictLabel::Approved,
        VerdictLabel::Deny,
        VerdictLabel::Hold,
        VerdictLabel::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictLabel::Allow => "allow",
            VerdictLabel::Approved => "approved",
            VerdictLabel::Deny => "deny",
            VerdictLabel::Hold => "hold",
            VerdictLabel::Refused => "refused",
        }
    }
}

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

/// Every instrument of one gateway process. Built once; sessions hold an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    engine: OnceLock<&'static str>,
    sessions_open: Family<Labels2, Gauge>,
    pub sessions_started: Counter,
    pub sessions_ended: Counter,
    logins_refused: Family<Labels1, Counter>,
    /// Resolved at start: `[class][verdict]`.
    statements: Vec<[Counter; 5]>,
    /// Time the gateway itself spends on a statement before it goes to the server (or
    /// is refused): reading, analysis, policy, audit record.
    pub added: LatencyHistogram,
    /// From a statement's arrival to the `ReadyForQuery` the agent gets for it.
    pub end_to_end: LatencyHistogram,
    /// Agent → gateway bytes, per read.
    pub client_bytes: Counter,
    /// Server → gateway bytes, per read.
    pub server_bytes: Counter,
    /// Long results whose server reads went to batches (`engine::batch`).
    pub read_batches: Counter,
    masked: Family<Labels1, Counter>,
    refusals: Family<Labels1, Counter>,
    /// How long a session waited for its statement's audit record to be durable.
    pub audit_wait: LatencyHistogram,
    /// Requests waiting for a reviewer (kept by [`crate::control::metrics`]).
    pub approvals_pending: Gauge,
    decisions: Family<Labels1, LatencyHistogram, fn() -> LatencyHistogram>,
    /// 1 while the readiness checks pass (what `/readyz` answers).
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            registry: Registry::default(),
            engine: OnceLock::new(),
            sessions_open: Family::default(),
            sessions_started: Counter::default(),
            sessions_ended: Counter::default(),
            logins_refused: Family::default(),
            statements: Vec::new(),
            added: LatencyHistogram::statements(),
            end_to_end: LatencyHistogram::statements(),
            client_bytes: Counter::default(),
            server_bytes: Counter::default(),
            read_batches: Counter::default(),
            masked: Family::default(),
            refusals: Family::default(),
            audit_wait: LatencyHistogram::statements(),
            approvals_pending: Gauge::default(),
            decisions: Family::new_with_constructor(LatencyHistogram::decisions),
            ready: Gauge::default(),
        };
        let statements: Family<[(&'static str, &'static str); 2], Counter> = Family::default();
        let resolved = (0..CLASS_LABELS)
            .map(|c| {
                VerdictLabel::ALL.map(|v| {
                    statements
                        .get_or_create(&[("class", ClassLabel::name(c)), ("verdict", v.as_str())])
                        .clone()
                })
            })
            .collect();
        let bytes: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
        let client_bytes = bytes
            .get_or_create(&[("direction", "client_to_server")])
            .clone();
        let server_bytes = bytes
            .get_or_create(&[("direction", "server_to_client")])
            .clone();
        // Every outcome from the start, so dashboards and alerts find the series.
        for outcome in ["approved", "denied", "edited", "timed_out", "withdrawn"] {
            drop(
                m.decisions
                    .get_or_create(&[("outcome", outcome.to_owned())]),
            );
        }
        let m = Metrics {
            statements: resolved,
            client_bytes,
            server_bytes,
            ..m
        };
        registry.register(
            "sessions_open",
            "Agent sessions open now, by identity and I/O engine",
            m.sessions_open.clone(),
        );
        registry.register(
            "sessions_started",
            "Agent sessions established (authenticated, upstream open)",
            m.sessions_started.clone(),
        );
        registry.register(
            "sessions_ended",
            "Agent sessions that ended, whatever the reason",
            m.sessions_ended.clone(),
        );
        registry.register(
            "logins_refused",
            "Connections refused before they became a session, by reason",
            m.logins_refused.clone(),
        );
        registry.register(
            "statements",
            "Statements judged, by class and verdict (one per simple Query, extended-protocol Parse or fast-path call)",
            statements,
        );
        registry.register_with_unit(
            "statement_added",
            "Time the gateway itself spent on a statement (analysis, policy, audit record) before sending or refusing it",
            Unit::Seconds,
            m.added.clone(),
        );
        registry.register_with_unit(
            "statement_end_to_end",
            "From a statement's arrival to the ReadyForQuery the agent gets for it",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        registry.register_with_unit(
            "transferred",
            "Bytes read from agents (client_to_server) and from the database (server_to_client)",
            Unit::Bytes,
            bytes,
        );
        registry.register(
            "read_batches",
            "Long results whose server reads went to batches of up to [server] read_batch_bytes (the socket's low-water mark raised), one per result or stretch of one",
            m.read_batches.clone(),
        );
        registry.register(
            "values_masked",
            "Values masked in results, by rule (detector:KIND for detectors)",
            m.masked.clone(),
        );
        registry.register(
            "refusals",
            "ErrorResponses the gateway itself sent to agents, by SQLSTATE",
            m.refusals.clone(),
        );
        registry.register_with_unit(
            "audit_wait",
            "How long a statement waited for its audit record to be durable before it was sent",
            Unit::Seconds,
            m.audit_wait.clone(),
        );
        registry.register(
            "approvals_pending",
            "Held statements and grant requests waiting for a reviewer",
            m.approvals_pending.clone(),
        );
        registry.register_with_unit(
            "approval_decision",
            "From a request's creation to its decision, by outcome",
            Unit::Seconds,
            m.decisions.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200 (upstream reachable, audit writable, policy loaded)",
            m.ready.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The engine sessions run on (`engine` label); set once, before any session.
    pub fn set_engine(&self, engine: &'static str) {
        let _ = self.engine.set(engine);
    }

    pub fn engine(&self) -> &'static str {
        self.engine.get().copied().unwrap_or("none")
    }

    /// A session opened: counted until the guard drops.
    pub fn session(self: &Arc<Self>, identity: &str) -> SessionGuard {
        let open = self
            .sessions_open
            .get_or_create(&[
                ("identity", identity.to_owned()),
                ("engine", self.engine().to_owned()),
            ])
            .clone();
        open.inc();
        self.sessions_started.inc();
        SessionGuard {
            open,
            ended: self.sessions_ended.clone(),
        }
    }

    /// A connection refused before it became a session; `reason` is one of a few fixed
    /// words ([`login_reason`]).
    pub fn login_refused(&self, reason: &'static str) {
        self.logins_refused
            .get_or_create(&[("reason", reason.to_owned())])
            .inc();
    }

    /// A request left the queue: approved, denied, edited, timed out or withdrawn.
    pub fn decided(&self, outcome: &'static str, after: Duration) {
        self.decisions
            .get_or_create(&[("outcome", outcome.to_owned())])
            .observe(after);
    }

    /// A refusal outside any session's statements (start-up, shutdown).
    pub fn refusal(&self, sqlstate: &str) {
        self.refusals
            .get_or_create(&[("sqlstate", sqlstate.to_owned())])
            .inc();
    }

    /// The OpenMetrics text of these instruments and of `scraped` (values read now).
    pub fn render(&self, scraped: &Registry) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)?;
        prometheus_client::encoding::text::encode_registry(&mut out, scraped)?;
        prometheus_client::encoding::text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The `reason` label of a refused login, from the SQLSTATE the agent was sent (or
/// `timeout` when start-up took too long).
pub fn login_reason(sqlstate: &str) -> &'static str {
    match sqlstate {
        "28P01" => "bad_credentials",
        "28000" => "not_authorized",
        "57P03" => "shutting_down",
        "42501" => "forbidden_parameter",
        "53300" | "53400" => "too_many_connections",
        "08006" | "08001" | "08004" => "upstream_unavailable",
        "08P01" => "protocol",
        "timeout" => "timeout",
        _ => "other",
    }
}

/// Keeps one session in `portcullis_sessions_open` while it lives.
#[derive(Debug)]
pub struct SessionGuard {
    open: Gauge,
    ended: Counter,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.open.dec();
        self.ended.inc();
    }
}

/// What one session's relay bumps: the shared instruments and the labels it resolved.
#[derive(Debug)]
pub struct SessionMetrics {
    m: Arc<Metrics>,
    masked: Vec<(String, Counter)>,
    refusals: Vec<(&'static str, Counter)>,
    /// Arrival of the first statement the agent has not had its `ReadyForQuery` for.
    round: Option<Instant>,
}

impl SessionMetrics {
    pub fn new(m: Arc<Metrics>) -> Self {
        SessionMetrics {
            m,
            masked: Vec::new(),
            refusals: Vec::new(),
            round: None,
        }
    }

    #[inline]
    pub fn statement(&self, class: ClassLabel, verdict: VerdictLabel) {
        self.m.statements[class.index()][verdict as usize].inc();
    }

    #[inline]
    pub fn added(&self, since: Instant) {
        self.m.added.observe(since.elapsed());
    }

    /// A statement-bearing message arrived: its round starts unless one is open.
    #[inline]
    pub fn round_started(&mut self, at: Instant) {
        self.round.get_or_insert(at);
    }

    /// The agent got a `ReadyForQuery`.
    #[inline]
    pub fn round_done(&mut self) {
        if let Some(at) = self.round.take() {
            self.m.end_to_end.observe(at.elapsed());
        }
    }

    pub fn masked(&mut self, counts: &[(String, u64)]) {
        for (rule, n) in counts {
            let c = match self.masked.iter().find(|(r, _)| r == rule) {
                Some((_, c)) => c,
                None => {
                    let c = self
                        .m
                        .masked
                        .get_or_create(&[("rule", rule.clone())])
                        .clone();
                    self.masked.push((rule.clone(), c));
                    &self.masked[self.masked.len() - 1].1
                }
            };
            c.inc_by(*n);
        }
    }

    pub fn refusal(&mut self, sqlstate: &'static str) {
        if let Some((_, c)) = self.refusals.iter().find(|(s, _)| *s == sqlstate) {
            c.inc();
            return;
        }
        let c = self
            .m
            .refusals
            .get_or_create(&[("sqlstate", sqlstate.to_owned())])
            .clone();
        c.inc();
        self.refusals.push((sqlstate, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        m.render(&Registry::default()).unwrap()
    }

    #[test]
    fn every_class_and_verdict_is_exposed_from_the_start() {
        let m = Metrics::new();
        let t = text(&m);
        assert!(t.contains("portcullis_statements_total{class=\"read\",verdict=\"allow\"} 0"));
        assert!(t.contains("portcullis_statements_total{class=\"multi\",verdict=\"hold\"} 0"));
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn a_session_counts_statements_masks_and_refusals_under_its_labels() {
        let m = Arc::new(Metrics::new());
        m.set_engine("epoll");
        let guard = m.session("agent");
        let mut s = SessionMetrics::new(m.clone());
        s.statement(ClassLabel::Of(Class::Read), VerdictLabel::Allow);
        s.statement(ClassLabel::Of(Class::Read), VerdictLabel::Allow);
        s.statement(ClassLabel::Of(Class::Write), VerdictLabel::Deny);
        s.masked(&[("ssn".into(), 3), ("detector:card".into(), 1)]);
        s.masked(&[("ssn".into(), 2)]);
        s.refusal("42501");
        s.refusal("42501");
        s.round_started(Instant::now());
        s.round_done();
        s.round_done();
        let t = text(&m);
        assert!(t.contains("portcullis_statements_total{class=\"read\",verdict=\"allow\"} 2"));
        assert!(t.contains("portcullis_statements_total{class=\"write\",verdict=\"deny\"} 1"));
        assert!(t.contains("portcullis_values_masked_total{rule=\"ssn\"} 5"));
        assert!(t.contains("portcullis_values_masked_total{rule=\"detector:card\"} 1"));
        assert!(t.contains("portcullis_refusals_total{sqlstate=\"42501\"} 2"));
        assert!(t.contains("portcullis_sessions_open{identity=\"agent\",engine=\"epoll\"} 1"));
        assert!(t.contains("portcullis_statement_end_to_end_seconds_count 1"));
        drop(guard);
        let t = text(&m);
        assert!(t.contains("portcullis_sessions_open{identity=\"agent\",engine=\"epoll\"} 0"));
        assert!(t.contains("portcullis_sessions_ended_total 1"));
    }
}
