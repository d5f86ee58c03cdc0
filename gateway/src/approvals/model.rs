//! What a held statement's request is, what a reviewer may do to it, and the rules a
//! decision must pass. Pure: the hub and the stores call [`Request::apply`] and store
//! what it returns, so every store enforces the same rules.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One bound parameter of a held extended-protocol statement, as the reviewer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// `None` for SQL NULL.
    pub value: Option<String>,
    /// The value arrived in binary and is shown as hex.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

/// The planner's view of a held statement, from `EXPLAIN` on the gateway's own
/// connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// `Plan Rows` of the top node.
    pub rows: Option<f64>,
    /// `Node Type` of the top node (`Delete`, `Seq Scan`, …).
    pub node: Option<String>,
    /// Why there is no estimate (DDL cannot be explained, the plan failed, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// What the statement did when it ran as a preview (inside a transaction or savepoint
/// the gateway rolls back unless it is approved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    /// Rows it inserted, updated or deleted.
    pub rows: Option<u64>,
    /// Its command tag (`DELETE 12`).
    pub tag: Option<String>,
    /// Why there is no count: the statement failed, or its answer was too large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the preview's locks may be held: the request's timeout.
    pub holds_locks_secs: u64,
}

/// Who is asking, from where: fixed when the request is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub gateway: String,
    /// The gateway's session id (unique per gateway run).
    pub session: String,
    pub identity: String,
    pub roles: Vec<String>,
    pub source: String,
    pub application_name: String,
    pub database: String,
}

/// What a request is for, as submitted by the session holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRequest {
    pub origin: Origin,
    pub sql: String,
    pub params: Vec<Param>,
    /// `simple` (a `Query`, held whole) or `extended` (an `Execute` of a bound portal).
    pub protocol: String,
    pub rule: Option<String>,
    pub message: String,
    /// The session's previous statements, oldest first.
    pub recent: Vec<String>,
    pub estimate: Option<Estimate>,
    /// The statement ran as a preview and waits, uncommitted, for the decision.
    #[serde(default)]
    pub preview: Option<Preview>,
    /// Distinct reviewers who must approve.
    pub approvers: u32,
    pub timeout_secs: u64,
    /// A just-in-time grant, not a held statement: `sql` describes it for the reviewer
    /// and nothing runs when it is approved (see [`crate::grants`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<crate::grants::GrantSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Edited,
    TimedOut,
    Withdrawn,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Edited => "edited",
            Status::TimedOut => "timed_out",
            Status::Withdrawn => "withdrawn",
        }
    }
}

/// One reviewer's act on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub reviewer: String,
    /// `approve`, `deny` or `edit`.
    pub kind: String,
    pub reason: Option<String>,
    /// The statement the reviewer wrote (`edit`).
    pub sql: Option<String>,
    /// Unix time, milliseconds.
    pub at_ms: u64,
}

/// A request with everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: i64,
    #[serde(flatten)]
    pub new: NewRequest,
    pub status: Status,
    /// Unix time, milliseconds.
    pub created_ms: u64,
    pub decided_ms: Option<u64>,
    /// The statement that runs if it is approved: the agent's, or the last edit.
    pub effective_sql: String,
    /// Binds a decision to exactly what the reviewer saw: SHA-256 over the session,
    /// identity, the statement that would run and its parameters. A vote must carry it.
    pub digest: String,
    pub votes: Vec<Vote>,
    /// Why it ended, for the statuses no reviewer decided (timed out, withdrawn).
    pub end_reason: Option<String>,
    /// Bumped on every change: stores update only the version they read.
    pub version: u64,
    /// An approved grant that was revoked, or marked expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_end: Option<crate::grants::GrantEnd>,
}

/// What a reviewer does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Approve { reason: Option<String> },
    Deny { reason: String },
    Edit { sql: String, reason: Option<String> },
}

/// Why a vote is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("request #{id} is {status} already; a decision counts once")]
    NotPending { id: i64, status: &'static str },
    #[error("{reviewer} cannot review request #{id}: it was made under their own identity")]
    SelfReview { id: i64, reviewer: String },
    #[error("{reviewer} has already approved request #{id}; it needs another reviewer")]
    AlreadyVoted { id: i64, reviewer: String },
    #[error(
        "request #{id} changed since it was shown (digest {given} is not {current}); look at it again"
    )]
    Stale {
        id: i64,
        given: String,
        current: String,
    },
    #[error("a denial needs a reason")]
    NoReason,
    #[error("the edited statement is empty")]
    EmptyEdit,
    #[error("{reviewer} cannot approve grant #{id}: they asked for it")]
    OwnGrant { id: i64, reviewer: String },
    #[error("request #{id} is a grant; approve or deny it, a grant has no statement to edit")]
    GrantEdit { id: i64 },
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// SHA-256 over length-prefixed fields, so no two field lists hash alike.
pub fn digest(origin: &Origin, sql: &str, params: &[Param]) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(origin.gateway.as_bytes());
    field(origin.session.as_bytes());
    field(origin.identity.as_bytes());
    field(sql.as_bytes());
    for p in params {
        match &p.value {
            None => field(b"\xffNULL"),
            Some(v) => field(format!("{}{v}", if p.binary { 'b' } else { 't' }).as_bytes()),
        }
    }
    hex::encode(h.finalize())
}

impl NewRequest {
    /// `sql` held from the `agent` identity's psql session: the tests' request.
    #[cfg(test)]
    pub(crate) fn example(sql: &str, approvers: u32, timeout_secs: u64) -> NewRequest {
        NewRequest {
            origin: Origin {
                gateway: "g1".into(),
                session: "s1".into(),
                identity: "agent".into(),
                roles: vec!["agent".into()],
                source: "127.0.0.1:50000".into(),
                application_name: "psql".into(),
                database: "bank".into(),
            },
            sql: sql.into(),
            params: vec![],
            protocol: "simple".into(),
            rule: Some("hold".into()),
            message: "needs a reviewer".into(),
            recent: vec![],
            estimate: None,
            preview: None,
            approvers,
            timeout_secs,
            grant: None,
        }
    }
}

impl Request {
    pub fn new(id: i64, new: NewRequest) -> Request {
        let digest = digest(&new.origin, &new.sql, &new.params);
        Request {
            id,
            effective_sql: new.sql.clone(),
            new,
            status: Status::Pending,
            created_ms: now_ms(),
            decided_ms: None,
            digest,
            votes: Vec::new(),
            end_reason: None,
            version: 0,
            grant_end: None,
        }
    }

    /// The `status` column stores filter on: the status, or `grant_ended` for a grant
    /// revoked or marked expired (so live grants are found without reading the ended).
    pub fn column_status(&self) -> &'static str {
        if self.grant_end.is_some() {
            "grant_ended"
        } else {
            self.status.as_str()
        }
    }

    pub fn approvals(&self) -> usize {
        self.votes
            .iter()
            .filter(|v| v.kind == "approve" || v.kind == "edit")
            .count()
    }

    /// Applies one reviewer's action; returns the request as it is afterwards. The
    /// `digest` is what the reviewer was shown; `None` is accepted only from the admin
    /// socket, whose client fetched the request just before.
    pub fn apply(
        &self,
        reviewer: &str,
        action: &Action,
        shown: Option<&str>,
    ) -> Result<Request, VoteError> {
        if self.status != Status::Pending {
            return Err(VoteError::NotPending {
                id: self.id,
                status: self.status.as_str(),
            });
        }
        if reviewer == self.new.origin.identity {
            return Err(VoteError::SelfReview {
                id: self.id,
                reviewer: reviewer.into(),
            });
        }
        if let Some(g) = &self.new.grant {
            // Whoever asked may deny their own request, never approve it.
            if reviewer == g.requested_by && !matches!(action, Action::Deny { .. }) {
                return Err(VoteError::OwnGrant {
                    id: self.id,
                    reviewer: reviewer.into(),
                });
            }
            if matches!(action, Action::Edit { .. }) {
                return Err(VoteError::GrantEdit { id: self.id });
            }
        }
        if let Some(given) = shown
            && given != self.digest
        {
            return Err(VoteError::Stale {
                id: self.id,
                given: given.into(),
                current: self.digest.clone(),
            });
        }
        let mut next = self.clone();
        next.version += 1;
        let at_ms = now_ms();
        match action {
            Action::Approve { reason } => {
                if self
                    .votes
                    .iter()
                    .any(|v| v.reviewer == reviewer && (v.kind == "approve" || v.kind == "edit"))
                {
                    return Err(VoteError::AlreadyVoted {
                        id: self.id,
                        reviewer: reviewer.into(),
                    });
                }
                next.votes.push(Vote {
                    reviewer: reviewer.into(),
                    kind: "approve".into(),
                    reason: reason.clone(),
                    sql: None,
                    at_ms,
                });
                if next.approvals() >= self.new.approvers.max(1) as usize {
                    next.status = if next.effective_sql == next.new.sql {
                        Status::Approved
                    } else {
                        Status::Edited
                    };
                    next.decided_ms = Some(at_ms);
                }
            }
            Action::Deny { reason } => {
                if reason.trim().is_empty() {
                    return Err(VoteError::NoReason);
                }
                next.votes.push(Vote {
                    reviewer: reviewer.into(),
                    kind: "deny".into(),
                    reason: Some(reason.clone()),
                    sql: None,
                    at_ms,
                });
                next.status = Status::Denied;
                next.decided_ms = Some(at_ms);
            }
            Action::Edit { sql, reason } => {
                if sql.trim().is_empty() {
                    return Err(VoteError::EmptyEdit);
                }
                // An edit is a new statement: approvals of the old one no longer count,
                // and the digest others must confirm changes with it.
                next.votes.retain(|v| v.kind == "deny");
                next.votes.push(Vote {
                    reviewer: reviewer.into(),
                    kind: "edit".into(),
                    reason: reason.clone(),
                    sql: Some(sql.clone()),
                    at_ms,
                });
                next.effective_sql = sql.clone();
                next.digest = digest(&next.new.origin, sql, &next.new.params);
                if next.approvals() >= self.new.approvers.max(1) as usize {
                    next.status = Status::Edited;
                    next.decided_ms = Some(at_ms);
                }
            }
        }
        Ok(next)
    }

    /// Ends a pending request that no reviewer decided.
    pub fn end(&self, status: Status, reason: &str) -> Option<Request> {
        if self.status != Status::Pending {
            return None;
        }
        let mut next = self.clone();
        next.version += 1;
        next.status = status;
        next.decided_ms = Some(now_ms());
        next.end_reason = Some(reason.into());
        Some(next)
    }

    /// Ends an active or pending grant: revoked by a person, or marked expired once its
    /// time is up. A pending one that is revoked is withdrawn as a request too.
    pub fn end_grant(
        &self,
        kind: crate::grants::EndKind,
        by: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Request, crate::grants::GrantError> {
        use crate::grants::{EndKind, Grant, GrantEnd, GrantError, GrantStatus};
        let now = now_ms();
        let g = Grant::of(self, now).ok_or(GrantError::NotFound(self.id))?;
        let allowed = match kind {
            EndKind::Revoked => matches!(g.status, GrantStatus::Active | GrantStatus::Pending),
            // Marked once its time is up (the status says expired already).
            EndKind::Expired => self.grant_end.is_none() && g.status == GrantStatus::Expired,
        };
        if !allowed {
            return Err(GrantError::NotRevocable {
                id: self.id,
                status: g.status.as_str(),
            });
        }
        let mut next = self.clone();
        next.version += 1;
        if self.status == Status::Pending {
            next.status = Status::Withdrawn;
            next.decided_ms = Some(now);
            next.end_reason = Some(reason.unwrap_or("revoked before it was decided").into());
        }
        next.grant_end = Some(GrantEnd {
            kind,
            by: by.map(str::to_owned),
            reason: reason.map(str::to_owned),
            // An expiry is dated when it happened, not when it was noticed.
            at_ms: match (kind, g.ends_ms) {
                (EndKind::Expired, Some(end)) => end,
                _ => now,
            },
        });
        Ok(next)
    }

    /// The reviewers who approved (or edited), in order.
    pub fn approvers(&self) -> Vec<String> {
        self.votes
            .iter()
            .filter(|v| v.kind != "deny")
            .map(|v| v.reviewer.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(approvers: u32) -> Request {
        Request::new(7, NewRequest::example("DELETE FROM t", approvers, 60))
    }

    fn approve() -> Action {
        Action::Approve { reason: None }
    }

    #[test]
    fn one_approval_decides_and_counts_once() {
        let r = request(1);
        let d = r.apply("alice", &approve(), Some(&r.digest)).unwrap();
        assert_eq!(d.status, Status::Approved);
        assert!(matches!(
            d.apply("bob", &approve(), None),
            Err(VoteError::NotPending { .. })
        ));
    }

    #[test]
    fn self_review_stale_digests_and_repeat_voters_are_refused() {
        let r = request(2);
        assert!(matches!(
            r.apply("agent", &approve(), None),
            Err(VoteError::SelfReview { .. })
        ));
        assert!(matches!(
            r.apply("alice", &approve(), Some("00")),
            Err(VoteError::Stale { .. })
        ));
        let one = r.apply("alice", &approve(), None).unwrap();
        assert_eq!(one.status, Status::Pending);
        assert!(matches!(
            one.apply("alice", &approve(), None),
            Err(VoteError::AlreadyVoted { .. })
        ));
        let two = one.apply("bob", &approve(), None).unwrap();
        assert_eq!(two.status, Status::Approved);
        assert_eq!(two.approvers(), ["alice", "bob"]);
    }

    #[test]
    fn an_edit_resets_approvals_and_the_digest() {
        let r = request(2);
        let one = r.apply("alice", &approve(), None).unwrap();
        let edited = one
            .apply(
                "bob",
                &Action::Edit {
                    sql: "DELETE FROM t WHERE id = 1".into(),
                    reason: None,
                },
                None,
            )
            .unwrap();
        assert_eq!(edited.status, Status::Pending);
        assert_ne!(edited.digest, r.digest);
        assert!(matches!(
            edited.apply("alice", &approve(), Some(&r.digest)),
            Err(VoteError::Stale { .. })
        ));
        let done = edited
            .apply("alice", &approve(), Some(&edited.digest))
            .unwrap();
        assert_eq!(done.status, Status::Edited);
        assert_eq!(done.effective_sql, "DELETE FROM t WHERE id = 1");
    }

    #[test]
    fn a_denial_needs_a_reason_and_ends_it() {
        let r = request(2);
        assert!(matches!(
            r.apply("alice", &Action::Deny { reason: " ".into() }, None),
            Err(VoteError::NoReason)
        ));
        let d = r
            .apply(
                "alice",
                &Action::Deny {
                    reason: "not today".into(),
                },
                None,
            )
            .unwrap();
        assert_eq!(d.status, Status::Denied);
        assert!(d.end(Status::TimedOut, "late").is_none());
    }
}
