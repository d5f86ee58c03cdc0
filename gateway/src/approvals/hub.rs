//! The hub: the one place that changes requests, on the control thread.
//!
//! Sessions (on the data-path workers), the admin socket and the HTTP API all talk to it
//! through an [`Approvals`] handle: a channel, so no worker ever blocks on the store. A
//! session that holds a statement gets a [`Ticket`] and waits on its outcome; the hub
//! resolves it when the request is decided here, when another gateway decided it (the
//! store's change feed), when it times out, or when the session withdraws it.
//!
//! Every change goes to the store first (compare-and-set on the request's version) and
//! only then to the waiting session and to subscribers: a decision is durable before
//! the statement it approves is forwarded.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::model::{Action, NewRequest, Origin, Request, Status, VoteError};
use super::store::{Store, StoreError};
use crate::grants::{EndKind, GrantError, GrantSpec, GrantStatus, Registry, Transition};

/// How sessions and reviewers reach the hub. Cheap to share.
pub struct Approvals {
    tx: mpsc::UnboundedSender<Cmd>,
    events: broadcast::Sender<Event>,
    settings: Settings,
}

/// What sessions need to know about holding, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This gateway's name in the queue.
    pub gateway: String,
    pub notice_interval: Duration,
    pub default_timeout: Duration,
    /// Cap on the wait of a previewed statement (it holds row locks meanwhile).
    pub preview_max: Duration,
    /// Earlier statements of the session shown with a request.
    pub recent: usize,
    /// Where reviewers open the page, for notices and notifications.
    pub page_url: Option<String>,
}

/// A held statement's place in the queue.
pub struct Ticket {
    pub request: Request,
    pub outcome: oneshot::Receiver<Resolution>,
}

/// How a request ended, for the session holding the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Run `sql`: the agent's statement, or a reviewer's edit of it.
    Run {
        sql: String,
        edited: bool,
        reviewers: Vec<String>,
    },
    Denied {
        reviewer: String,
        reason: String,
    },
    TimedOut {
        after_secs: u64,
    },
    Withdrawn {
        reason: String,
    },
}

impl Resolution {
    fn of(req: &Request) -> Option<Resolution> {
        Some(match req.status {
            Status::Pending => return None,
            Status::Approved | Status::Edited => Resolution::Run {
                sql: req.effective_sql.clone(),
                edited: req.status == Status::Edited,
                reviewers: req.approvers(),
            },
            Status::Denied => {
                let vote = req.votes.iter().rev().find(|v| v.kind == "deny");
                Resolution::Denied {
                    reviewer: vote.map(|v| v.reviewer.clone()).unwrap_or_default(),
                    reason: vote.and_then(|v| v.reason.clone()).unwrap_or_default(),
                }
            }
            Status::TimedOut => Resolution::TimedOut {
                after_secs: req.new.timeout_secs,
            },
            Status::Withdrawn => Resolution::Withdrawn {
                reason: req.end_reason.clone().unwrap_or_default(),
            },
        })
    }
}

/// What subscribers (the page's live view, webhooks) hear.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub request: Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A statement is held and waits.
    Requested,
    /// A reviewer approved or edited, and more approvals are needed.
    Voted,
    /// It ended: approved, edited, denied, timed out or withdrawn.
    Decided,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vote(#[from] VoteError),
    #[error("there is no request #{0}")]
    NotFound(i64),
    #[error("request #{0} kept changing while this decision was being recorded; try again")]
    Contended(i64),
    #[error("the approvals hub is not running")]
    Stopped,
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("grants are not enabled on this gateway")]
    NoGrants,
}

enum Cmd {
    Submit {
        new: Box<NewRequest>,
        reply: oneshot::Sender<Result<Ticket, ApprovalError>>,
    },
    Get {
        id: i64,
        reply: oneshot::Sender<Result<Option<Request>, ApprovalError>>,
    },
    List {
        pending_only: bool,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Request>, ApprovalError>>,
    },
    Decide {
        id: i64,
        reviewer: String,
        action: Action,
        digest: Option<String>,
        reply: oneshot::Sender<Result<Request, ApprovalError>>,
    },
    Withdraw {
        id: i64,
        reason: String,
    },
    RequestGrant {
        identity: String,
        spec: Box<GrantSpec>,
        source: String,
        reply: oneshot::Sender<Result<Request, ApprovalError>>,
    },
    Grants {
        live_only: bool,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Request>, ApprovalError>>,
    },
    Revoke {
        id: i64,
        by: String,
        reason: Option<String>,
        reply: oneshot::Sender<Result<Request, ApprovalError>>,
    },
}

/// What the hub needs to decide grants: where the active ones are published, where
/// their events are recorded, and the terms of a grant request.
pub struct GrantTerms {
    pub registry: std::sync::Arc<Registry>,
    pub audit: Option<crate::audit::AuditLog>,
    /// Distinct reviewers who must approve a grant.
    pub approvers: u32,
    /// How long a grant request waits for its approvals.
    pub timeout: Duration,
    /// The longest grant that may be asked for.
    pub max: Duration,
}

impl Approvals {
    /// The handle, and the hub to run on the control thread ([`Hub::run`]).
    pub fn new(settings: Settings, store: Store) -> (Approvals, Hub) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let hub = Hub {
            rx,
            events: events.clone(),
            gateway: settings.gateway.clone(),
            store,
            waiters: HashMap::new(),
            deadlines: BTreeSet::new(),
            emitted: HashMap::new(),
            grants: None,
            grant_ends: BTreeSet::new(),
        };
        (
            Approvals {
                tx,
                events,
                settings,
            },
            hub,
        )
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<T, ApprovalError>>) -> Cmd,
    ) -> Result<T, ApprovalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .map_err(|_| ApprovalError::Stopped)?;
        rx.await.map_err(|_| ApprovalError::Stopped)?
    }

    /// Records a held statement; it is pending once this returns.
    pub async fn submit(&self, new: NewRequest) -> Result<Ticket, ApprovalError> {
        self.ask(|reply| Cmd::Submit {
            new: Box::new(new),
            reply,
        })
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<Request>, ApprovalError> {
        self.ask(|reply| Cmd::Get { id, reply }).await
    }

    /// Newest first.
    pub async fn list(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, ApprovalError> {
        self.ask(|reply| Cmd::List {
            pending_only,
            limit,
            reply,
        })
        .await
    }

    /// A reviewer's decision. `digest` is the one the reviewer was shown (see
    /// [`Request::apply`]). Returns the request as it is afterwards.
    pub async fn decide(
        &self,
        id: i64,
        reviewer: &str,
        action: Action,
        digest: Option<String>,
    ) -> Result<Request, ApprovalError> {
        self.ask(|reply| Cmd::Decide {
            id,
            reviewer: reviewer.to_owned(),
            action,
            digest,
            reply,
        })
        .await
    }

    /// The session no longer waits (the agent cancelled or left). The ticket still
    /// resolves: withdrawn, or with the decision that came first.
    pub fn withdraw(&self, id: i64, reason: impl Into<String>) {
        let _ = self.tx.send(Cmd::Withdraw {
            id,
            reason: reason.into(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Asks for a grant for `identity`; it is pending once this returns. `source` says
    /// where the request came from (`admin socket`, `http`), for the reviewer.
    pub async fn request_grant(
        &self,
        identity: &str,
        spec: GrantSpec,
        source: &str,
    ) -> Result<Request, ApprovalError> {
        self.ask(|reply| Cmd::RequestGrant {
            identity: identity.to_owned(),
            spec: Box::new(spec),
            source: source.to_owned(),
            reply,
        })
        .await
    }

    /// Grant requests, newest first; `live_only`: pending and approved ones.
    pub async fn grants(
        &self,
        live_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, ApprovalError> {
        self.ask(|reply| Cmd::Grants {
            live_only,
            limit,
            reply,
        })
        .await
    }

    /// Ends an active grant, or withdraws a pending one. Sessions judge their next
    /// statement without it.
    pub async fn revoke(
        &self,
        id: i64,
        by: &str,
        reason: Option<String>,
    ) -> Result<Request, ApprovalError> {
        self.ask(|reply| Cmd::Revoke {
            id,
            by: by.to_owned(),
            reason,
            reply,
        })
        .await
    }
}

struct Waiter {
    tx: oneshot::Sender<Resolution>,
    deadline: Instant,
}

pub struct Hub {
    rx: mpsc::UnboundedReceiver<Cmd>,
    events: broadcast::Sender<Event>,
    gateway: String,
    store: Store,
    waiters: HashMap<i64, Waiter>,
    deadlines: BTreeSet<(Instant, i64)>,
    /// The newest version of each request told to subscribers: a change this gateway
    /// made comes back through the shared store's feed and is not told twice.
    emitted: HashMap<i64, u64>,
    grants: Option<GrantTerms>,
    /// When active grants run out: each is then marked expired in the store.
    grant_ends: BTreeSet<(Instant, i64)>,
}

/// Attempts at a compare-and-set before giving up on a contended request.
const CAS_ATTEMPTS: usize = 8;

impl Hub {
    /// Decides grant requests too, on these terms.
    pub fn with_grants(mut self, terms: GrantTerms) -> Hub {
        self.grants = Some(terms);
        self
    }

    /// Serves the handle until every handle is gone.
    pub async fn run(mut self) {
        self.end_orphans().await;
        self.load_grants().await;
        let mut changes = self.store.take_changes();
        loop {
            let next_deadline = match (self.deadlines.first(), self.grant_ends.first()) {
                (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
                (a, b) => a.or(b).map(|(at, _)| *at),
            };
            let deadline = async {
                match next_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let change = async {
                match &mut changes {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                },
                Some(id) = change => self.changed_elsewhere(id).await,
                () = deadline => self.expire().await,
            }
        }
    }

    /// Pending requests this gateway made in an earlier run: their sessions are gone.
    async fn end_orphans(&mut self) {
        let pending = match self.store.list(true, 10_000).await {
            Ok(p) => p,
            Err(e) => {
                warn!(target: "portcullis::approvals", "cannot read the queue at start-up: {e}");
                return;
            }
        };
        let gateway = self.gateway.clone();
        // A grant request has no session: it waits on in the store.
        for r in pending
            .into_iter()
            .filter(|r| r.new.origin.gateway == gateway && r.new.grant.is_none())
        {
            self.end(
                r.id,
                Status::Withdrawn,
                "the gateway restarted; the session that held it is gone",
            )
            .await;
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Submit { new, reply } => {
                let r = self.submit(*new).await;
                let _ = reply.send(r);
            }
            Cmd::Get { id, reply } => {
                let _ = reply.send(self.store.get(id).await.map_err(Into::into));
            }
            Cmd::List {
                pending_only,
                limit,
                reply,
            } => {
                let _ = reply.send(
                    self.store
                        .list(pending_only, limit)
                        .await
                        .map_err(Into::into),
                );
            }
            Cmd::Decide {
                id,
                reviewer,
                action,
                digest,
                reply,
            } => {
                let r = self.decide(id, &reviewer, &action, digest.as_deref()).await;
                let _ = reply.send(r);
            }
            Cmd::Withdraw { id, reason } => self.end(id, Status::Withdrawn, &reason).await,
            Cmd::RequestGrant {
                identity,
                spec,
                source,
                reply,
            } => {
                let r = self.request_grant(identity, *spec, source).await;
                let _ = reply.send(r);
            }
            Cmd::Grants {
                live_only,
                limit,
                reply,
            } => {
                let _ = reply.send(
                    self.store
                        .grants(live_only, limit)
                        .await
                        .map_err(Into::into),
                );
            }
            Cmd::Revoke {
                id,
                by,
                reason,
                reply,
            } => {
                let r = self
                    .end_grant(id, EndKind::Revoked, Some(&by), reason.as_deref())
                    .await;
                let _ = reply.send(r);
            }
        }
    }

    /// The stored grants at start-up: published silently (they are not news), their
    /// expiries and timeouts armed; one that ran out while the gateway was down is
    /// marked expired at once.
    async fn load_grants(&mut self) {
        let Some(terms) = &self.grants else { return };
        let live = match self.store.grants(true, 10_000).await {
            Ok(l) => l,
            Err(e) => {
                warn!(target: "portcullis::grants", "cannot read the grants at start-up: {e}");
                return;
            }
        };
        terms.registry.load(&live);
        for r in &live {
            if r.status == Status::Pending {
                let waited =
                    Duration::from_millis(super::model::now_ms().saturating_sub(r.created_ms));
                let left = Duration::from_secs(r.new.timeout_secs).saturating_sub(waited);
                self.deadlines.insert((Instant::now() + left, r.id));
            } else {
                self.arm_grant_end(r);
            }
        }
        info!(target: "portcullis::grants", live = live.len(), "grants loaded");
    }

    async fn request_grant(
        &mut self,
        identity: String,
        spec: GrantSpec,
        source: String,
    ) -> Result<Request, ApprovalError> {
        let terms = self.grants.as_ref().ok_or(ApprovalError::NoGrants)?;
        spec.validate(terms.max.as_secs().max(1))?;
        let new = NewRequest {
            origin: Origin {
                gateway: self.gateway.clone(),
                session: "grant".into(),
                identity: identity.clone(),
                roles: Vec::new(),
                source,
                application_name: "portcullis grants".into(),
                database: if spec.databases.is_empty() {
                    "*".into()
                } else {
                    spec.databases.join(", ")
                },
            },
            sql: spec.describe(&identity),
            params: Vec::new(),
            protocol: "grant".into(),
            rule: None,
            message: format!("{} asks for a grant: {}", spec.requested_by, spec.reason),
            recent: Vec::new(),
            estimate: None,
            preview: None,
            approvers: terms.approvers.max(1),
            timeout_secs: terms.timeout.as_secs().max(1),
            grant: Some(spec),
        };
        // Nobody waits on the outcome: the registry hears of the decision.
        let ticket = self.submit(new).await?;
        Ok(ticket.request)
    }

    async fn end_grant(
        &mut self,
        id: i64,
        kind: EndKind,
        by: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Request, ApprovalError> {
        if self.grants.is_none() {
            return Err(ApprovalError::NoGrants);
        }
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .store
                .get(id)
                .await?
                .filter(|r| r.new.grant.is_some())
                .ok_or(GrantError::NotFound(id))?;
            let next = current.end_grant(kind, by, reason)?;
            if self.store.update(&next).await? {
                self.settle(&next);
                return Ok(next);
            }
        }
        Err(ApprovalError::Contended(id))
    }

    /// Marks an approved grant expired when its time is up.
    fn arm_grant_end(&mut self, r: &Request) {
        // As stored (time 0): an approved grant not yet marked is active.
        let Some(g) = crate::grants::Grant::of(r, 0) else {
            return;
        };
        if g.status != GrantStatus::Active {
            return;
        }
        let Some(end) = g.ends_ms else { return };
        // A little after the end, so the clock has passed it when the mark is made
        // (sessions stop using the grant at the end itself, not at this mark).
        let left = Duration::from_millis(end.saturating_sub(super::model::now_ms()) + 50);
        self.grant_ends.insert((Instant::now() + left, r.id));
    }

    /// A grant changed status: published already; recorded and logged here.
    fn grant_changed(&mut self, req: &Request, t: &Transition) {
        let g = &t.grant;
        let event = match (t.before, g.status) {
            (_, GrantStatus::Pending) => "requested",
            (_, GrantStatus::Active) => "approved",
            (_, GrantStatus::Denied) => "denied",
            (_, GrantStatus::Revoked) => "revoked",
            (_, GrantStatus::Expired) => "expired",
        };
        if g.status == GrantStatus::Active {
            self.arm_grant_end(req);
        }
        let by: Vec<String> = match g.status {
            GrantStatus::Pending => vec![g.spec.requested_by.clone()],
            GrantStatus::Active => g.approved_by.clone(),
            _ => g.ended_by.iter().cloned().collect(),
        };
        let stamp = |ms: Option<u64>| {
            ms.map(|ms| {
                crate::audit::record::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            })
        };
        info!(
            target: "portcullis::grants",
            grant = g.id,
            event,
            identity = %g.identity,
            roles = %g.spec.roles.join(","),
            by = %by.join(","),
            reason = g.end_reason.as_deref().unwrap_or(&g.spec.reason),
            "grant {event}"
        );
        let Some(terms) = &self.grants else { return };
        if let Some(log) = &terms.audit {
            log.record(&crate::audit::Body::Grant {
                grant: g.id,
                event,
                identity: &g.identity,
                roles: &g.spec.roles,
                databases: &g.spec.databases,
                classes: &g.spec.classes,
                tables: &g.spec.tables,
                reason: &g.spec.reason,
                requested_by: &g.spec.requested_by,
                by: &by,
                note: g.end_reason.as_deref(),
                duration_secs: g.spec.duration_secs,
                starts: stamp(g.starts_ms),
                ends: stamp(g.ends_ms),
            });
        }
    }

    async fn submit(&mut self, new: NewRequest) -> Result<Ticket, ApprovalError> {
        let timeout = Duration::from_secs(new.timeout_secs);
        let request = self.store.insert(&new).await?;
        let (tx, outcome) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.waiters.insert(request.id, Waiter { tx, deadline });
        self.deadlines.insert((deadline, request.id));
        self.emit(EventKind::Requested, &request);
        Ok(Ticket { request, outcome })
    }

    async fn decide(
        &mut self,
        id: i64,
        reviewer: &str,
        action: &Action,
        digest: Option<&str>,
    ) -> Result<Request, ApprovalError> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .store
                .get(id)
                .await?
                .ok_or(ApprovalError::NotFound(id))?;
            let next = current.apply(reviewer, action, digest)?;
            if self.store.update(&next).await? {
                self.settle(&next);
                return Ok(next);
            }
        }
        Err(ApprovalError::Contended(id))
    }

    /// Ends a request no reviewer decided; if one did first, that decision stands.
    async fn end(&mut self, id: i64, status: Status, reason: &str) {
        for _ in 0..CAS_ATTEMPTS {
            let current = match self.store.get(id).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => return self.store_failed(id, &e),
            };
            let Some(next) = current.end(status, reason) else {
                self.settle(&current);
                return;
            };
            match self.store.update(&next).await {
                Ok(true) => {
                    self.settle(&next);
                    return;
                }
                Ok(false) => continue,
                Err(e) => return self.store_failed(id, &e),
            }
        }
    }

    /// The store cannot end a request. The session must not wait forever on a store that
    /// fails: it is told the request was withdrawn, and the statement does not run.
    fn store_failed(&mut self, id: i64, e: &StoreError) {
        warn!(target: "portcullis::approvals", id, "cannot end request: {e}");
        if let Some(w) = self.forget(id) {
            let _ = w.tx.send(Resolution::Withdrawn {
                reason: format!("the approvals store failed: {e}"),
            });
        }
    }

    async fn changed_elsewhere(&mut self, id: i64) {
        match self.store.get(id).await {
            Ok(Some(r)) => self.settle(&r),
            Ok(None) => {}
            Err(e) => {
                warn!(target: "portcullis::approvals", id, "cannot read a changed request: {e}")
            }
        }
    }

    async fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.grant_ends.first() {
            if at > now {
                break;
            }
            self.grant_ends.pop_first();
            match self.end_grant(id, EndKind::Expired, None, None).await {
                // Another gateway marked it, or it was revoked first: the store says
                // how it ended.
                Ok(_) | Err(ApprovalError::Grant(GrantError::NotRevocable { .. })) => {}
                Err(e) => {
                    warn!(target: "portcullis::grants", grant = id, "cannot mark an expired grant: {e}");
                }
            }
        }
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.end(id, Status::TimedOut, "no decision in time").await;
        }
    }

    fn forget(&mut self, id: i64) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        self.deadlines.remove(&(w.deadline, id));
        Some(w)
    }

    /// Tells the waiting session (if it is here) and subscribers what the request is now.
    fn settle(&mut self, req: &Request) {
        if let Some(resolution) = Resolution::of(req)
            && let Some(w) = self.forget(req.id)
        {
            let _ = w.tx.send(resolution);
        }
        let kind = match req.status {
            Status::Pending if req.votes.is_empty() => EventKind::Requested,
            Status::Pending => EventKind::Voted,
            _ => EventKind::Decided,
        };
        self.emit(kind, req);
    }

    fn emit(&mut self, kind: EventKind, req: &Request) {
        let seen = self.emitted.get(&req.id).copied();
        if seen.is_some_and(|v| v >= req.version) {
            return;
        }
        if self.emitted.len() > 100_000 {
            self.emitted.clear();
        }
        self.emitted.insert(req.id, req.version);
        if let Some(t) = self.grants.as_ref().and_then(|g| g.registry.observe(req)) {
            self.grant_changed(req, &t);
        }
        let last = req.votes.last();
        info!(
            target: "portcullis::approvals",
            event = ?kind,
            id = req.id,
            status = req.status.as_str(),
            identity = %req.new.origin.identity,
            session = %req.new.origin.session,
            gateway = %req.new.origin.gateway,
            rule = req.new.rule.as_deref().unwrap_or("default"),
            reviewer = last.map(|v| v.reviewer.as_str()).unwrap_or(""),
            vote = last.map(|v| v.kind.as_str()).unwrap_or(""),
            reason = last.and_then(|v| v.reason.as_deref()).or(req.end_reason.as_deref()).unwrap_or(""),
            statement = %req.new.sql,
            runs = %req.effective_sql,
            digest = %req.digest,
            "approval request"
        );
        let _ = self.events.send(Event {
            kind,
            request: req.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(timeout_secs: u64, approvers: u32) -> NewRequest {
        NewRequest::example("DROP TABLE t", approvers, timeout_secs)
    }

    fn hub(dir: &std::path::Path) -> std::sync::Arc<Approvals> {
        crate::approvals::testkit::hub(dir, None)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn decisions_timeouts_and_withdrawals_reach_the_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let a = hub(dir.path());
        let mut events = a.subscribe();

        let t = a.submit(new(60, 1)).await.unwrap();
        assert_eq!(events.recv().await.unwrap().kind, EventKind::Requested);
        let done = a
            .decide(
                t.request.id,
                "alice",
                Action::Approve { reason: None },
                Some(t.request.digest.clone()),
            )
            .await
            .unwrap();
        assert_eq!(done.status, Status::Approved);
        assert!(matches!(
            t.outcome.await.unwrap(),
            Resolution::Run { edited: false, .. }
        ));
        // Replaying the decision is refused.
        let replay = a
            .decide(
                t.request.id,
                "alice",
                Action::Approve { reason: None },
                None,
            )
            .await;
        assert!(matches!(
            replay,
            Err(ApprovalError::Vote(VoteError::NotPending { .. }))
        ));

        let t = a.submit(new(30, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            t.outcome.await.unwrap(),
            Resolution::TimedOut { after_secs: 30 }
        );
        assert_eq!(
            a.get(t.request.id).await.unwrap().unwrap().status,
            Status::TimedOut
        );

        let t = a.submit(new(30, 1)).await.unwrap();
        a.withdraw(t.request.id, "the agent cancelled it");
        assert!(matches!(
            t.outcome.await.unwrap(),
            Resolution::Withdrawn { .. }
        ));
        // A decision after the withdrawal finds nothing pending.
        let late = a
            .decide(
                t.request.id,
                "alice",
                Action::Approve { reason: None },
                None,
            )
            .await;
        assert!(late.is_err());
        assert_eq!(a.list(true, 10).await.unwrap().len(), 0);
    }
}
