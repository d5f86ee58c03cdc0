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

use super::model::{Action, NewRequest, Request, Status, VoteError};
use super::store::{Store, StoreError};

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
}

/// Attempts at a compare-and-set before giving up on a contended request.
const CAS_ATTEMPTS: usize = 8;

impl Hub {
    /// Serves the handle until every handle is gone.
    pub async fn run(mut self) {
        self.end_orphans().await;
        let mut changes = self.store.take_changes();
        loop {
            let next_deadline = self.deadlines.first().map(|(at, _)| *at);
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
        for r in pending
            .into_iter()
            .filter(|r| r.new.origin.gateway == gateway)
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
