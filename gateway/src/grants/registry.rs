//! The active grants, as sessions see them.
//!
//! The approvals hub (control thread) is the only writer: it tells the [`Registry`] of
//! every grant request it stores or hears of from another gateway, and the registry
//! publishes the grants active now as one immutable list. Sessions (data-path workers)
//! hold a [`SessionGrants`]: at each statement it loads one atomic counter and compares
//! it with the one it saw last; only when the counter moved does it look at the list,
//! and only when its identity holds a grant does it read the clock, so an expiry is
//! seen by the first statement after it without a timer having to fire first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::analysis::Statement;
use crate::approvals::model::{Request, now_ms};
use crate::policy::Resolver;

use super::model::{Grant, GrantStatus};
use super::scope::Scope;

/// An active grant, compiled for matching.
#[derive(Debug)]
pub struct Live {
    pub id: i64,
    pub identity: String,
    pub roles: Vec<String>,
    pub scope: Scope,
    /// Unix time, milliseconds: not active from this instant on.
    pub ends_ms: u64,
}

/// A grant that changed status, for the audit record and the log.
#[derive(Debug, Clone)]
pub struct Transition {
    /// `None`: the registry had not seen it (a new request).
    pub before: Option<GrantStatus>,
    pub grant: Grant,
}

/// The time [`Grant::of`] is asked at for the stored status: before any grant ends.
const STORED: u64 = 0;

#[derive(Default)]
pub struct Registry {
    /// Bumped after every change of `live`.
    generation: AtomicU64,
    live: ArcSwap<Vec<Arc<Live>>>,
    /// What the hub told it, by request id (control thread only).
    known: Mutex<HashMap<i64, GrantStatus>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("live", &self.live.load().len())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// The grants active now (for `status` and tests).
    pub fn live(&self) -> Arc<Vec<Arc<Live>>> {
        self.live.load_full()
    }

    /// Takes a request as stored; returns the change of its grant's stored status, if
    /// it changed. Requests that are not grants are ignored.
    ///
    /// Statuses here are as stored: an approved grant whose time is up stays active
    /// until the hub marks it expired. Sessions do not wait for that: they drop a grant
    /// at its end time themselves.
    pub fn observe(&self, req: &Request) -> Option<Transition> {
        let grant = Grant::of(req, STORED)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let before = known.insert(grant.id, grant.status);
        if before == Some(grant.status) {
            return None;
        }
        self.publish(req, &grant);
        Some(Transition { before, grant })
    }

    /// Takes the grants stored at start-up, without reporting them as changes.
    pub fn load<'a>(&self, requests: impl IntoIterator<Item = &'a Request>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for req in requests {
            if let Some(grant) = Grant::of(req, STORED) {
                known.insert(grant.id, grant.status);
                self.publish(req, &grant);
            }
        }
    }

    /// Puts the grant in or out of the published list.
    fn publish(&self, req: &Request, grant: &Grant) {
        let current = self.live.load();
        let was = current.iter().any(|l| l.id == grant.id);
        let is = grant.status == GrantStatus::Active;
        if !was && !is {
            return;
        }
        let mut next: Vec<Arc<Live>> = current
            .iter()
            .filter(|l| l.id != grant.id)
            .cloned()
            .collect();
        if is && let (Some(spec), Some(ends_ms)) = (&req.new.grant, grant.ends_ms) {
            next.push(Arc::new(Live {
                id: grant.id,
                identity: grant.identity.clone(),
                roles: spec.roles.clone(),
                scope: Scope::of(spec),
                ends_ms,
            }));
        }
        self.live.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The grants of `identity` in `database`, for one session.
    pub fn session(self: &Arc<Self>, identity: &str, database: &str) -> SessionGrants {
        let mut s = SessionGrants {
            registry: self.clone(),
            identity: identity.into(),
            database: database.into(),
            seen: u64::MAX,
            mine: Vec::new(),
            next_end: u64::MAX,
            epoch: 0,
        };
        s.reload();
        s
    }
}

/// One session's view of its identity's grants.
pub struct SessionGrants {
    registry: Arc<Registry>,
    identity: String,
    database: String,
    /// The registry generation `mine` was taken at.
    seen: u64,
    /// Active grants of this identity in this database, as of the last check.
    mine: Vec<Arc<Live>>,
    /// Earliest end among `mine`.
    next_end: u64,
    /// Bumped whenever `mine` changes: what was judged under another epoch is judged
    /// again.
    epoch: u64,
}

impl SessionGrants {
    fn reload(&mut self) -> bool {
        self.seen = self.registry.generation.load(Ordering::Acquire);
        let live = self.registry.live.load();
        let now = now_ms();
        let next: Vec<Arc<Live>> = live
            .iter()
            .filter(|l| {
                l.identity == self.identity
                    && l.ends_ms > now
                    && l.scope.covers_database(&self.database)
            })
            .cloned()
            .collect();
        let changed =
            next.len() != self.mine.len() || next.iter().zip(&self.mine).any(|(a, b)| a.id != b.id);
        self.mine = next;
        self.next_end = self
            .mine
            .iter()
            .map(|l| l.ends_ms)
            .min()
            .unwrap_or(u64::MAX);
        changed
    }

    /// The epoch of the grants in force now. Costs an atomic load and a compare when
    /// nothing changed and the identity holds no grant; a clock read when it holds one.
    pub fn epoch(&mut self) -> u64 {
        if self.registry.generation.load(Ordering::Acquire) != self.seen && self.reload() {
            self.epoch += 1;
        }
        if !self.mine.is_empty() && now_ms() >= self.next_end {
            self.reload();
            self.epoch += 1;
        }
        self.epoch
    }

    /// Whether any grant is in force (as of the last [`SessionGrants::epoch`]).
    pub fn any(&self) -> bool {
        !self.mine.is_empty()
    }

    /// The roles of the grants in force, whatever their scope.
    pub fn roles(&self) -> impl Iterator<Item = &str> + '_ {
        self.mine
            .iter()
            .flat_map(|l| l.roles.iter().map(String::as_str))
    }

    /// The ids of the grants in force.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.mine.iter().map(|l| l.id)
    }

    /// The grants in force whose scope covers `stmt`.
    pub fn covering<'a>(
        &'a self,
        stmt: &'a Statement,
        res: &'a Resolver<'a>,
    ) -> impl Iterator<Item = &'a Live> + 'a {
        self.mine
            .iter()
            .map(Arc::as_ref)
            .filter(move |l| l.scope.covers(stmt, res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::{Action, NewRequest};
    use crate::grants::model::GrantSpec;

    fn grant_request(id: i64, secs: u64) -> Request {
        let mut new = NewRequest::example("GRANT", 1, 60);
        new.grant = Some(GrantSpec {
            roles: vec!["writer".into()],
            databases: vec![],
            classes: vec![],
            tables: vec![],
            reason: "r".into(),
            requested_by: "ops".into(),
            duration_secs: secs,
        });
        Request::new(id, new)
    }

    #[test]
    fn sessions_see_approvals_and_revocations_through_the_epoch() {
        let reg = Registry::new();
        let mut s = reg.session("agent", "bank");
        let mut other = reg.session("someone", "bank");
        assert_eq!(s.epoch(), 0);
        let pending = grant_request(1, 60);
        let t = reg.observe(&pending).unwrap();
        assert_eq!((t.before, t.grant.status), (None, GrantStatus::Pending));
        assert!(reg.observe(&pending).is_none(), "no change, no transition");
        assert_eq!(s.epoch(), 0);
        let approved = pending
            .apply("alice", &Action::Approve { reason: None }, None)
            .unwrap();
        let t = reg.observe(&approved).unwrap();
        assert_eq!(t.grant.status, GrantStatus::Active);
        assert_eq!(s.epoch(), 1);
        assert!(s.any());
        // Another identity's grants do not change this one's epoch.
        assert_eq!(other.epoch(), 0);
        assert!(!other.any());
        let mut revoked = approved.clone();
        revoked.version += 1;
        revoked.grant_end = Some(crate::grants::model::GrantEnd {
            kind: crate::grants::model::EndKind::Revoked,
            by: Some("bob".into()),
            reason: None,
            at_ms: now_ms(),
        });
        assert_eq!(
            reg.observe(&revoked).unwrap().grant.status,
            GrantStatus::Revoked
        );
        assert_eq!(s.epoch(), 2);
        assert!(!s.any());
    }

    #[test]
    fn an_expiry_is_seen_by_the_first_check_after_it() {
        let reg = Registry::new();
        let mut approved = grant_request(1, 1)
            .apply("alice", &Action::Approve { reason: None }, None)
            .unwrap();
        // Approved 900 ms ago: 100 ms left.
        approved.decided_ms = Some(now_ms() - 900);
        reg.load([&approved]);
        let mut s = reg.session("agent", "bank");
        let e = s.epoch();
        assert!(s.any());
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(s.epoch(), e + 1);
        assert!(!s.any());
    }
}
