//! The driver's part of a held statement: ask the planner for an estimate, file the
//! request with the approvals hub, keep the agent informed while it waits, and hand the
//! decision back to the relay core.
//!
//! While a statement is held nothing more is read from the client (what it pipelined
//! stays in the kernel's socket buffer, so memory stays bounded), but the session still
//! notices a hang-up (`POLLRDHUP`, asked without reading) and a `CancelRequest` (the
//! session's [`SessionCancel`]); either withdraws the request. The server half of the
//! session goes on meanwhile: results of earlier statements keep streaming.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::info;

use super::Shared;
use super::cancel::SessionCancel;
use super::conn::{Connect, Flow, Side};
use super::side::SideError;
use super::transport::Transport;
use crate::approvals::Resolution;
use crate::approvals::explain::{explain_sql, read_plan};
use crate::approvals::model::{Estimate, NewRequest, Origin, Param, Preview};
use crate::mask::wire::{data_row_start, read_field};
use crate::protocol::frontend as fe;
use crate::protocol::{backend as be, sqlstate};
use crate::session::handshake::Agent;
use crate::session::hooks::{Hooks, Refusal};
use crate::session::relay::Release;

/// How often a held session looks for a hang-up.
const HANGUP_POLL: Duration = Duration::from_millis(250);
/// How long a preview may run before the gateway cancels it on the server.
const PREVIEW_RUN: Duration = Duration::from_secs(30);
/// How often a running preview is looked at.
const PREVIEW_POLL: Duration = Duration::from_millis(5);
/// Longest the estimate may take before the request is filed without one.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session tells the hub about itself.
pub struct HoldContext {
    origin: Option<Origin>,
    signal: Arc<SessionCancel>,
    /// The server session's own cancel key, to stop a preview that runs too long.
    upstream: Option<(SocketAddr, i32, i32)>,
    /// The upstream role the session runs as: the estimate is asked as it too, and a
    /// reset for reuse sets it again.
    upstream_role: Option<String>,
    /// The server session is reset and kept when the agent's ends (`crate::pool`).
    reuse: bool,
}

impl HoldContext {
    pub fn new(
        shared: &Shared,
        agent: &Agent,
        peer: SocketAddr,
        signal: Arc<SessionCancel>,
        upstream: Option<(SocketAddr, i32, i32)>,
    ) -> Self {
        let origin = shared.approvals.as_ref().map(|a| Origin {
            gateway: a.settings().gateway.clone(),
            session: format!("{:016x}", rand::random::<u64>()),
            identity: agent.identity.name.clone(),
            roles: agent.identity.roles.clone(),
            source: peer.to_string(),
            application_name: agent.application_name().unwrap_or_default().to_owned(),
            database: agent.database.clone(),
        });
        HoldContext {
            origin,
            signal,
            upstream,
            upstream_role: None,
            reuse: false,
        }
    }

    /// The server session is kept for another agent session when this one ends.
    pub fn with_reuse(mut self, reuse: bool) -> Self {
        self.reuse = reuse;
        self
    }

    /// The session runs as upstream role `role` (`crate::roles`).
    pub fn with_upstream_role(mut self, role: Option<&str>) -> Self {
        self.upstream_role = role.map(str::to_owned);
        self
    }
}

impl HoldContext {
    /// The server session's cancel key and address.
    pub(super) fn upstream(&self) -> Option<(SocketAddr, i32, i32)> {
        self.upstream
    }

    /// `Some(role to set again)` when the server session is to be reset for reuse.
    pub(super) fn reset_role(&self) -> Option<Option<&str>> {
        self.reuse.then_some(self.upstream_role.as_deref())
    }
}

/// Withdraws a filed request when the wait is dropped before a decision: the gateway's
/// shutdown cut the session.
struct WithdrawOnDrop<'a, H: Hooks> {
    approvals: &'a crate::approvals::Approvals,
    flow: &'a Flow<H>,
    id: i64,
    sql: &'a str,
    armed: bool,
}

impl<H: Hooks> Drop for WithdrawOnDrop<'_, H> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        const WHY: &str = "the gateway shut down";
        self.approvals.withdraw(self.id, WHY);
        if let Ok(mut relay) = self.flow.relay.try_borrow_mut()
            && let Some(t) = relay.audit_mut()
        {
            t.approval_decision(self.id, "withdrawn", &[], Some(WHY), self.sql, None);
        }
    }
}

/// The client left while its statement was held.
pub struct Gone;

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn one_line(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}

/// Waits for the decision on the statement the relay holds and hands it back.
pub(super) async fn wait<C: Connect, H: Hooks>(
    shared: &Shared,
    database: &str,
    flow: &Flow<H>,
    client: &impl Transport,
    server: &impl Transport,
    buf: &mut BytesMut,
    ctx: &HoldContext,
) -> Result<(), Gone> {
    let (Some(approvals), Some(origin)) = (shared.approvals.as_ref(), ctx.origin.as_ref()) else {
        // Holds are refused by the stages when no one can approve; never wait here.
        let r = Refusal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "portcullis held this statement and approvals are not configured",
        );
        return finish(flow, client, server, Release::Refuse(r), buf).await;
    };
    let settings = approvals.settings();
    let (mut new, explain, raw_params, describe) = {
        let relay = flow.relay.borrow();
        let Some(held) = relay.held() else {
            return Ok(());
        };
        let raw_params: Vec<(i16, Option<Vec<u8>>)> = match &held.bind {
            Some(b) => fe::bind_params(&b[5..])
                .map(|ps| {
                    ps.iter()
                        .map(|(f, v)| (*f, v.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // Binary parameters are shown by their type, which the server says (drivers
        // such as tokio-postgres send even text in binary).
        let describe = raw_params.iter().any(|(f, _)| *f != 0).then(|| {
            let mut m = BytesMut::new();
            m.extend_from_slice(&fe::parse_typed(b"", &held.sql, held.param_types()));
            m.extend_from_slice(&fe::describe_statement(b""));
            m.extend_from_slice(&fe::sync());
            m.freeze()
        });
        let sql = String::from_utf8_lossy(&held.sql).into_owned();
        let explain = held.hold.explainable.then(|| {
            let text = explain_sql(&sql);
            match &held.bind {
                None => fe::query(text.as_bytes()),
                Some(b) => {
                    let ps = fe::bind_params(&b[5..]).unwrap_or_default();
                    let mut m = BytesMut::new();
                    m.extend_from_slice(&fe::parse_typed(b"", text.as_bytes(), held.param_types()));
                    m.extend_from_slice(&fe::bind(b"", b"", &ps));
                    m.extend_from_slice(&fe::execute(b"", 0));
                    m.extend_from_slice(&fe::sync());
                    m.freeze()
                }
            }
        });
        let new = NewRequest {
            origin: origin.clone(),
            sql,
            params: Vec::new(),
            protocol: if held.is_extended() {
                "extended"
            } else {
                "simple"
            }
            .into(),
            rule: held.hold.rule.clone(),
            message: held.hold.message.clone(),
            recent: relay.recent().map(str::to_owned).collect(),
            estimate: None,
            preview: None,
            approvers: held.hold.approvers,
            timeout_secs: held
                .hold
                .timeout_secs
                .unwrap_or(settings.default_timeout.as_secs())
                .max(1),
            grant: None,
        };
        (new, explain, raw_params, describe)
    };
    let types = match describe {
        Some(m) => shared
            .side
            .ask_as(
                database,
                ctx.upstream_role.as_deref(),
                m,
                be::PARAMETER_DESCRIPTION,
                EXPLAIN_TIMEOUT,
            )
            .await
            .ok()
            .and_then(|frames| frames.first().map(|f| parameter_types(f)))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    new.params = raw_params
        .iter()
        .enumerate()
        .map(|(i, (format, value))| render_param(*format, value.as_deref(), types.get(i).copied()))
        .collect();
    if let Some(messages) = explain {
        new.estimate =
            Some(estimate(shared, database, ctx.upstream_role.as_deref(), messages).await);
    }
    if flow.relay.borrow_mut().start_preview() {
        new.timeout_secs = new.timeout_secs.min(settings.preview_max.as_secs().max(1));
        new.preview = Some(preview::<C, H>(flow, client, server, ctx, new.timeout_secs).await?);
    }
    let statement = one_line(&new.sql);
    let held_sql = new.sql.clone();
    let ticket = match approvals.submit(new).await {
        Ok(t) => t,
        Err(e) => {
            let r = Refusal::new(
                "58000",
                format!("portcullis could not record the approval request, so the held statement did not run: {e}"),
            )
            .with_hint("An operator should check the approvals store ([approvals] in the gateway's configuration); the gateway's log has the details.");
            return finish(flow, client, server, Release::Refuse(r), buf).await;
        }
    };
    let id = ticket.request.id;
    if let Some(t) = flow.relay.borrow_mut().audit_mut() {
        let n = &ticket.request.new;
        t.approval_request(id, &held_sql, n.rule.as_deref(), n.approvers);
    }
    let mut on_drop = WithdrawOnDrop {
        approvals,
        flow,
        id,
        sql: &held_sql,
        armed: true,
    };
    let withdrawn = |why: &str| {
        if let Some(t) = flow.relay.borrow_mut().audit_mut() {
            t.approval_decision(id, "withdrawn", &[], Some(why), &held_sql, None);
        }
    };
    let how_to = match &settings.page_url {
        Some(url) => {
            format!("A reviewer can decide at {url} or with `portcullis approvals approve {id}`.")
        }
        None => format!(
            "A reviewer can decide with `portcullis approvals approve {id}` (or deny/edit)."
        ),
    };
    let timeout = Duration::from_secs(ticket.request.new.timeout_secs);
    let message = ticket.request.new.message.clone();
    flow.relay.borrow_mut().notice(
        &format!("portcullis: waiting for approval #{id}: {message}"),
        Some(&format!(
            "{statement} is held until a reviewer decides (at most {}). {how_to}",
            human(timeout)
        )),
    );
    if flow.drain(Side::Client, client).await.is_err() {
        approvals.withdraw(id, "the agent disconnected");
        withdrawn("the agent disconnected");
        on_drop.armed = false;
        return Err(Gone);
    }

    ctx.signal.set_holding(true);
    let seen = ctx.signal.count();
    let started = tokio::time::Instant::now();
    let mut next_notice = started + settings.notice_interval;
    let mut poll = tokio::time::interval(HANGUP_POLL);
    let mut outcome = ticket.outcome;
    let mut cancelled = false;
    let resolution = loop {
        tokio::select! {
            r = &mut outcome => break r.unwrap_or(Resolution::Withdrawn {
                reason: "the approvals hub stopped".into(),
            }),
            () = ctx.signal.cancelled(seen), if !cancelled => {
                cancelled = true;
                approvals.withdraw(id, "the agent cancelled it (CancelRequest)");
            }
            _ = poll.tick() => {
                if client.peer_closed() || flow.server_done.get() {
                    ctx.signal.set_holding(false);
                    let why = if flow.server_done.get() {
                        "the database closed the session's connection"
                    } else {
                        "the agent disconnected"
                    };
                    approvals.withdraw(id, why);
                    withdrawn(why);
                    info!(id, "{why} while a statement was held");
                    on_drop.armed = false;
                    return Err(Gone);
                }
                let now = tokio::time::Instant::now();
                if now >= next_notice {
                    next_notice = now + settings.notice_interval;
                    flow.relay.borrow_mut().notice(
                        &format!(
                            "portcullis: still waiting for approval #{id} ({} so far): {message}",
                            human(now - started)
                        ),
                        Some(&how_to),
                    );
                    if flow.drain(Side::Client, client).await.is_err() {
                        ctx.signal.set_holding(false);
                        approvals.withdraw(id, "the agent disconnected");
                        withdrawn("the agent disconnected");
                        on_drop.armed = false;
                    return Err(Gone);
                    }
                }
            }
        }
    };
    on_drop.armed = false;
    ctx.signal.set_holding(false);
    if let Some(t) = flow.relay.borrow_mut().audit_mut() {
        match &resolution {
            Resolution::Run {
                sql,
                edited,
                reviewers,
            } => t.approval_decision(
                id,
                if *edited { "edit" } else { "approve" },
                reviewers,
                None,
                &held_sql,
                edited.then_some(sql.as_str()),
            ),
            Resolution::Denied { reviewer, reason } => t.approval_decision(
                id,
                "deny",
                std::slice::from_ref(reviewer),
                Some(reason),
                &held_sql,
                None,
            ),
            Resolution::TimedOut { after_secs } => t.approval_decision(
                id,
                "timeout",
                &[],
                Some(&format!("no decision within {after_secs} s")),
                &held_sql,
                None,
            ),
            Resolution::Withdrawn { reason } => {
                t.approval_decision(id, "withdrawn", &[], Some(reason), &held_sql, None)
            }
        }
    }
    let release = match resolution {
        Resolution::Run {
            edited: false,
            reviewers,
            ..
        } => {
            flow.relay.borrow_mut().notice(
                &format!("portcullis: approval #{id} granted by {}; running the statement", reviewers.join(", ")),
                None,
            );
            Release::Run
        }
        Resolution::Run {
            sql,
            edited: true,
            reviewers,
        } => Release::Edit {
            notice: format!(
                "portcullis: approval #{id}: {} edited the statement; what runs instead: {}",
                reviewers.join(", "),
                one_line(&sql)
            ),
            sql,
        },
        Resolution::Denied { reviewer, reason } => Release::Refuse(
            Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("portcullis: approval #{id} was denied by {reviewer}: {reason}"),
            )
            .with_detail(format!("statement: {statement}"))
            .with_hint("The statement did not run; the session and any open transaction are as they were before it."),
        ),
        Resolution::TimedOut { after_secs } => Release::Refuse(
            Refusal::new(
                sqlstate::QUERY_CANCELED,
                format!(
                    "canceling statement: no reviewer decided on approval #{id} within {}",
                    human(Duration::from_secs(after_secs))
                ),
            )
            .with_detail(format!("statement: {statement}"))
            .with_hint("The statement did not run. Send it again to file a new request; the rule's approval_timeout_secs sets how long it waits."),
        ),
        Resolution::Withdrawn { .. } if cancelled => Release::Refuse(
            Refusal::new(sqlstate::QUERY_CANCELED, "canceling statement due to user request")
                .with_detail(format!("approval #{id} was withdrawn; the statement did not run")),
        ),
        Resolution::Withdrawn { reason } => Release::Refuse(
            Refusal::new(
                sqlstate::QUERY_CANCELED,
                format!("portcullis withdrew approval #{id}: {reason}"),
            )
            .with_detail(format!("statement: {statement}; it did not run")),
        ),
    };
    finish(flow, client, server, release, buf).await
}

/// Hands the decision to the core and writes what it produced.
async fn finish<H: Hooks>(
    flow: &Flow<H>,
    client: &impl Transport,
    server: &impl Transport,
    release: Release,
    buf: &mut BytesMut,
) -> Result<(), Gone> {
    let res = flow.relay.borrow_mut().release(release, buf);
    if flow.drain(Side::Server, server).await.is_err()
        || flow.drain(Side::Client, client).await.is_err()
    {
        return Err(Gone);
    }
    res.map_err(|_| Gone)
}

/// Runs the held write as a preview on the session's own connection and waits for its
/// answer; a statement still running after [`PREVIEW_RUN`] is cancelled on the server.
async fn preview<C: Connect, H: Hooks>(
    flow: &Flow<H>,
    client: &impl Transport,
    server: &impl Transport,
    ctx: &HoldContext,
    holds_locks_secs: u64,
) -> Result<Preview, Gone> {
    if flow.drain(Side::Server, server).await.is_err() {
        return Err(Gone);
    }
    let started = tokio::time::Instant::now();
    let mut cancel_sent = false;
    loop {
        if let Some(done) = flow.relay.borrow().preview_done() {
            return Ok(Preview {
                rows: done
                    .tag
                    .as_deref()
                    .and_then(|t| t.rsplit(' ').next())
                    .and_then(|n| n.parse().ok()),
                tag: done.tag.clone(),
                error: done.error.clone(),
                holds_locks_secs,
            });
        }
        if client.peer_closed() || flow.server_done.get() {
            return Err(Gone);
        }
        if !cancel_sent
            && started.elapsed() > PREVIEW_RUN
            && let Some((addr, pid, secret)) = ctx.upstream
        {
            // Blocked on a lock, or slow: the preview gives up; the statement's error
            // ends it, the transaction is rolled back at the decision.
            cancel_sent = true;
            if let Ok(s) = C::connect(addr).await {
                let _ = s.write_all(fe::cancel_request(pid, secret)).await;
                let _ = s.read(BytesMut::with_capacity(16), 16).await;
            }
        }
        tokio::time::sleep(PREVIEW_POLL).await;
    }
}

/// The type OIDs of a `ParameterDescription` frame.
fn parameter_types(frame: &[u8]) -> Vec<u32> {
    let body = frame.get(5..).unwrap_or_default();
    let Some(n) = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
    else {
        return Vec::new();
    };
    (0..n)
        .filter_map(|i| body.get(2 + 4 * i..6 + 4 * i))
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A bound parameter as the reviewer reads it: text as sent; binary decoded for the
/// common types, hex otherwise.
fn render_param(format: i16, value: Option<&[u8]>, oid: Option<u32>) -> Param {
    let Some(v) = value else {
        return Param {
            value: None,
            binary: false,
        };
    };
    if format == 0 {
        return Param {
            value: Some(String::from_utf8_lossy(v).into_owned()),
            binary: false,
        };
    }
    let decoded = match (oid, v.len()) {
        // text, varchar, bpchar, name, json, unknown: binary is the text itself
        (Some(25 | 1043 | 1042 | 19 | 114 | 705), _) => {
            std::str::from_utf8(v).ok().map(str::to_owned)
        }
        (Some(3802), _) if v.first() == Some(&1) => {
            std::str::from_utf8(&v[1..]).ok().map(str::to_owned)
        }
        (Some(16), 1) => Some((v[0] != 0).to_string()),
        (Some(21), 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (Some(23 | 26), 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (Some(20), 8) => Some(i64::from_be_bytes(v.try_into().unwrap_or_default()).to_string()),
        (Some(700), 4) => Some(f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (Some(701), 8) => Some(f64::from_be_bytes(v.try_into().unwrap_or_default()).to_string()),
        (Some(2950), 16) => {
            let h = hex::encode(v);
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        _ => None,
    };
    match decoded {
        Some(text) => Param {
            value: Some(text),
            binary: false,
        },
        None => Param {
            value: Some(hex::encode(v)),
            binary: true,
        },
    }
}

/// The planner's estimate, from one of the database's reserved connections.
async fn estimate(
    shared: &Shared,
    database: &str,
    role: Option<&str>,
    messages: Bytes,
) -> Estimate {
    let unavailable = |why: String| Estimate {
        rows: None,
        node: None,
        unavailable: Some(why),
    };
    match shared
        .side
        .ask_as(database, role, messages, be::DATA_ROW, EXPLAIN_TIMEOUT)
        .await
    {
        Err(SideError::TimedOut(limit)) => {
            unavailable(format!("EXPLAIN took longer than {}s", limit.as_secs()))
        }
        Err(e) => unavailable(format!("EXPLAIN failed: {e}")),
        Ok(rows) => {
            let text: String = rows
                .iter()
                .filter_map(|r| {
                    let start = data_row_start(r, 1).ok()?;
                    let ((from, to), _) = match read_field(r, start, "DataRow").ok()? {
                        (Some(range), next) => (range, next),
                        (None, _) => return None,
                    };
                    Some(String::from_utf8_lossy(&r[from..to]).into_owned())
                })
                .collect::<Vec<_>>()
                .join("\n");
            read_plan(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_parameters_are_shown_by_their_type() {
        let text = |v: &[u8], oid| render_param(1, Some(v), oid).value.unwrap();
        assert_eq!(text(b"x", Some(25)), "x");
        assert_eq!(text(&42i32.to_be_bytes(), Some(23)), "42");
        assert_eq!(text(&(-7i64).to_be_bytes(), Some(20)), "-7");
        assert_eq!(text(&[1], Some(16)), "true");
        assert_eq!(text(b"\x01{\"a\":1}", Some(3802)), "{\"a\":1}");
        // An int4 whose bytes spell text is not shown as text without its type.
        let unknown = render_param(1, Some(b"ABCD"), None);
        assert_eq!(
            (unknown.value.as_deref(), unknown.binary),
            (Some("41424344"), true)
        );
        assert_eq!(
            render_param(0, Some(b"7"), Some(23)).value.as_deref(),
            Some("7")
        );
        assert_eq!(render_param(1, None, Some(23)).value, None);
        let pd = [b't', 0, 0, 0, 14, 0, 2, 0, 0, 0, 25, 0, 0, 0, 23];
        assert_eq!(parameter_types(&pd), [25, 23]);
    }
}
