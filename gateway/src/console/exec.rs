//! Running a console command against the running gateway: the answers read what the
//! admin socket's `status` and `approvals list` read, and the changes go through the same
//! calls ([`Control::reload_by`], [`crate::approvals::Approvals::decide`]), so every
//! rule and every audit record is the one those paths have.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::command::{Command, HELP, Show};
use super::table::{self, Cell, Table};
use crate::approvals::model::{Action, Request, now_ms};
use crate::auth::Identity;
use crate::control::admin::{Control, Trigger};
use crate::engine::Shared;
use crate::protocol::sqlstate;

/// What the console serves, shared by its connections.
pub struct Console {
    pub shared: Arc<Shared>,
    pub control: Arc<Control>,
    /// Identities holding one of these may log in (`[console] roles`).
    pub roles: Vec<String>,
    /// `[[approvals.reviewer]]` names: who may APPROVE and DENY.
    pub reviewers: Vec<String>,
    /// Settings given on the command line or in the environment, which win over the
    /// file: `(key, value)`.
    pub overrides: Vec<(String, String)>,
}

/// Who is logged in on one console connection.
#[derive(Debug, Clone)]
pub struct Login {
    pub identity: Arc<Identity>,
    pub peer: SocketAddr,
    pub tls: Option<&'static str>,
}

/// Why a command failed: an `ErrorResponse` (severity ERROR; the session goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// The console session ends with it (FATAL).
    pub fatal: bool,
}

fn fail(code: &'static str, message: impl Into<String>, hint: Option<&str>) -> ExecError {
    ExecError {
        code,
        message: message.into(),
        hint: hint.map(str::to_owned),
        fatal: false,
    }
}

/// SQLSTATE 55000: the object is not in a state the command can act on.
const NOT_IN_STATE: &str = "55000";
/// SQLSTATE 42704: no such request.
const UNDEFINED_OBJECT: &str = "42704";

/// Requests a listing returns at most.
const LIST_LIMIT: usize = 1000;

/// One console connection: its login and the digests of the requests it was shown,
/// which an APPROVE sends so that nobody approves a statement edited since they looked.
pub struct Session {
    pub console: Arc<Console>,
    pub login: Login,
    shown: Mutex<HashMap<i64, String>>,
}

impl Session {
    pub fn new(console: Arc<Console>, login: Login) -> Session {
        Session {
            console,
            login,
            shown: Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(&self, cmd: &Command) -> Result<Table, ExecError> {
        // A reload may have removed the login's key or its console role, or the key
        // expired: the session ends at its next command, as an agent's does.
        if let Some(why) = self.revoked() {
            let e = ExecError {
                fatal: true,
                ..fail(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("portcullis ended this console session: {why}"),
                    Some("Log in again with an identity that holds a console role."),
                )
            };
            self.audit(cmd, &Err(e.clone()));
            return Err(e);
        }
        let result = match cmd {
            Command::Show(s) => return self.show(*s).await,
            Command::Reload => self.reload(),
            Command::Approve { id, reason } => {
                self.vote(
                    *id,
                    Action::Approve {
                        reason: reason.clone(),
                    },
                )
                .await
            }
            Command::Deny { id, reason } => {
                self.vote(
                    *id,
                    Action::Deny {
                        reason: reason.clone(),
                    },
                )
                .await
            }
        };
        self.audit(cmd, &result);
        result
    }

    /// Why the login may no longer use the console, if it may not.
    fn revoked(&self) -> Option<String> {
        let name = &self.login.identity.name;
        let store = self.console.shared.identities.load();
        let Some(key) = store.get(name) else {
            return Some(format!("identity \"{name}\" is no longer configured"));
        };
        if let Some(why) = key.refusal(now_ms()) {
            return Some(why);
        }
        if !key
            .identity
            .roles
            .iter()
            .any(|r| self.console.roles.contains(r))
        {
            return Some(format!(
                "identity \"{name}\" no longer holds a console role"
            ));
        }
        None
    }

    fn audit(&self, cmd: &Command, result: &Result<Table, ExecError>) {
        let Some(log) = &self.console.shared.audit else {
            return;
        };
        let request = match cmd {
            Command::Approve { id, .. } | Command::Deny { id, .. } => Some(*id),
            _ => None,
        };
        // RELOAD's answer is a row whose `ok` says whether the file was taken.
        let refused = match result {
            Ok(t) if matches!(cmd, Command::Reload) => {
                t.rows.first().and_then(|r| match (&r[0], &r[1]) {
                    (Cell::Bool(Some(false)), Cell::Text(why)) => why.clone(),
                    _ => None,
                })
            }
            Ok(_) => None,
            Err(e) => Some(e.message.clone()),
        };
        log.record(&crate::audit::Body::ConsoleCommand {
            identity: &self.login.identity.name,
            client_addr: self.login.peer.ip().to_string(),
            client_port: self.login.peer.port(),
            command: cmd.name(),
            request,
            ok: refused.is_none(),
            error: refused.as_deref(),
        });
    }

    async fn show(&self, what: Show) -> Result<Table, ExecError> {
        Ok(match what {
            Show::Help => {
                let mut t = Table::new(table::HELP, "SHOW");
                for (c, d) in HELP {
                    t.push(vec![(*c).into(), (*d).into()]);
                }
                t
            }
            Show::Sessions => self.sessions(),
            Show::Stats => self.stats(),
            Show::Pools => self.pools(),
            Show::Approvals => self.approvals().await?,
            Show::Grants => self.grants().await?,
            Show::Config => self.config(),
        })
    }

    fn sessions(&self) -> Table {
        let mut t = Table::new(table::SESSIONS, "SHOW");
        for s in self.console.shared.sessions.snapshot() {
            let i = s.info;
            t.push(vec![
                i.id.to_string().into(),
                i.identity.into(),
                i.database.into(),
                i.client.ip().to_string().into(),
                i64::from(i.client.port()).into(),
                i.application_name.into(),
                i.tls.into(),
                i.engine.into(),
                i.worker.into(),
                i.upstream_role.into(),
                rfc3339(i.started_ms).into(),
                s.state.as_str().into(),
                s.statements.into(),
                s.bytes_to_server.into(),
                s.bytes_to_client.into(),
            ]);
        }
        t
    }

    fn stats(&self) -> Table {
        let shared = &self.console.shared;
        let o = self.console.control.overview();
        let totals = shared.sessions.totals();
        let (audit, records, lost) = match &shared.audit {
            None => ("off", None, None),
            Some(log) => {
                use std::sync::atomic::Ordering::Relaxed;
                let c = log.counters();
                (
                    if log.accepting().is_ok() {
                        "ok"
                    } else {
                        "refusing"
                    },
                    Some(c.records.load(Relaxed)),
                    Some(c.lost.load(Relaxed)),
                )
            }
        };
        let started = now_ms().saturating_sub(o.uptime_secs * 1000);
        let mut t = Table::new(table::STATS, "SHOW");
        t.push(vec![
            rfc3339(started).into(),
            o.uptime_secs.into(),
            o.state.into(),
            o.engine.into(),
            (o.workers as u64).into(),
            (shared.sessions.len() as u64).into(),
            totals.sessions.into(),
            totals.statements.into(),
            totals.allowed.into(),
            totals.denied.into(),
            totals.held.into(),
            totals.bytes_to_server.into(),
            totals.bytes_to_client.into(),
            (o.identities as u64).into(),
            (o.mask_rules as u64).into(),
            o.policy_rules.map(|n| n as u64).into(),
            o.last_reload.into(),
            o.last_reload_by.map(str::to_owned).into(),
            audit.into(),
            records.into(),
            lost.into(),
        ]);
        t
    }

    fn pools(&self) -> Table {
        let mut t = Table::new(table::POOLS, "SHOW");
        for p in self.console.shared.pools.snapshot() {
            let c = p.counters;
            t.push(vec![
                p.database.into(),
                p.role.into(),
                c.in_use.into(),
                c.idle.into(),
                c.waiting.into(),
                c.opened.into(),
                c.reused.into(),
                c.closed.into(),
                c.timeouts.into(),
            ]);
        }
        t
    }

    fn approvals_hub(&self) -> Result<&crate::approvals::Approvals, ExecError> {
        self.console.shared.approvals.as_deref().ok_or_else(|| {
            fail(
                sqlstate::FEATURE_NOT_SUPPORTED,
                crate::control::admin_approvals::NOT_CONFIGURED,
                Some("Held statements are refused on this gateway; there is nothing to review."),
            )
        })
    }

    async fn approvals(&self) -> Result<Table, ExecError> {
        let hub = self.approvals_hub()?;
        let list = hub.list(true, LIST_LIMIT).await.map_err(hub_error)?;
        let now = now_ms();
        let mut t = Table::new(table::APPROVALS, "SHOW");
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for r in &list {
            shown.insert(r.id, r.digest.clone());
            let o = &r.new.origin;
            t.push(vec![
                r.id.into(),
                if r.new.grant.is_some() {
                    "grant"
                } else {
                    "statement"
                }
                .into(),
                r.status.as_str().into(),
                o.identity.clone().into(),
                o.database.clone().into(),
                o.source.clone().into(),
                r.new.rule.clone().into(),
                (r.approvals() as u64).into(),
                u64::from(r.new.approvers).into(),
                (now.saturating_sub(r.created_ms) / 1000).into(),
                r.new.timeout_secs.into(),
                crate::control::admin_approvals::terminal_safe(&r.effective_sql, true).into(),
                r.digest.clone().into(),
            ]);
        }
        Ok(t)
    }

    async fn grants(&self) -> Result<Table, ExecError> {
        use crate::grants::GrantStatus;
        let hub = self.approvals_hub()?;
        let list = hub.grants(true, LIST_LIMIT).await.map_err(hub_error)?;
        let mut grants = crate::control::admin_grants::grants_of(&list);
        grants.retain(|g| matches!(g.status, GrantStatus::Pending | GrantStatus::Active));
        let mut t = Table::new(table::GRANTS, "SHOW");
        for g in grants {
            t.push(vec![
                g.id.into(),
                g.identity.into(),
                g.status.as_str().into(),
                g.spec.roles.join(",").into(),
                g.spec.databases.join(",").into(),
                g.spec.classes.join(",").into(),
                g.spec.tables.join(",").into(),
                g.spec.duration_secs.into(),
                g.starts_ms.map(rfc3339).into(),
                g.ends_ms.map(rfc3339).into(),
                g.spec.requested_by.into(),
                g.approved_by.join(",").into(),
                g.spec.reason.into(),
            ]);
        }
        Ok(t)
    }

    fn config(&self) -> Table {
        let mut t = Table::new(table::CONFIG, "SHOW");
        for (key, value, source) in super::settings::rows(
            &self.console.control.running_file(),
            &self.console.overrides,
        ) {
            t.push(vec![key.into(), value.into(), source.into()]);
        }
        t
    }

    fn reload(&self) -> Result<Table, ExecError> {
        let by = format!("console ({})", self.login.identity.name);
        let mut t = Table::new(table::RELOAD, "RELOAD");
        match self.console.control.reload_by(Trigger::Console, &by) {
            Ok(r) => t.push(vec![
                true.into(),
                format!(
                    "reloaded {r} from {}",
                    self.console.control.config_path().display()
                )
                .into(),
                (!r.needs_restart.is_empty())
                    .then(|| r.needs_restart.join(", "))
                    .into(),
            ]),
            // A refused file is an error: nothing changed and the operator must see it.
            Err(e) => {
                return Err(fail(
                    "F0000",
                    format!(
                        "reload refused, the running configuration is kept: {}",
                        e.one_line()
                    ),
                    Some(
                        "Fix the file and RELOAD again; `portcullis check-config` shows the same error.",
                    ),
                ));
            }
        }
        Ok(t)
    }

    async fn vote(&self, id: i64, action: Action) -> Result<Table, ExecError> {
        let hub = self.approvals_hub()?;
        let reviewer = &self.login.identity.name;
        if !self.console.reviewers.iter().any(|r| r == reviewer) {
            return Err(fail(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "\"{reviewer}\" is not a reviewer on this gateway, so it cannot approve or deny"
                ),
                Some(
                    "Reviewers are the [[approvals.reviewer]] entries; one named like this identity may vote here.",
                ),
            ));
        }
        let digest = self
            .shown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        // An approval binds to what was shown; a denial stops whatever the request is
        // now, as the admin socket accepts it without a digest.
        let digest = match (&action, digest) {
            (_, Some(d)) => Some(d),
            (Action::Approve { .. }, None) => {
                return Err(fail(
                    NOT_IN_STATE,
                    format!("request #{id} has not been shown in this session"),
                    Some(
                        "Run SHOW APPROVALS first: an approval is for the statement you looked at.",
                    ),
                ));
            }
            (_, None) => None,
        };
        let verb = match action {
            Action::Approve { .. } => "approve",
            _ => "deny",
        };
        tracing::info!(
            target: "portcullis::approvals",
            id,
            vote = verb,
            %reviewer,
            peer = %self.login.peer,
            "vote through the admin console"
        );
        let after = hub
            .decide(id, reviewer, action, digest)
            .await
            .map_err(hub_error)?;
        self.shown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, after.digest.clone());
        let mut t = Table::new(
            table::DECISION,
            if verb == "approve" { "APPROVE" } else { "DENY" },
        );
        t.push(vec![
            after.id.into(),
            after.status.as_str().into(),
            (after.approvals() as u64).into(),
            u64::from(after.new.approvers).into(),
            reviewer.clone().into(),
            outcome(&after).into(),
        ]);
        Ok(t)
    }
}

/// What a vote did, in a sentence.
fn outcome(r: &Request) -> String {
    use crate::approvals::model::Status;
    match r.status {
        Status::Pending => format!(
            "recorded; {} of {} approvals, waiting for more",
            r.approvals(),
            r.new.approvers
        ),
        Status::Approved | Status::Edited if r.new.grant.is_some() => {
            "approved: the grant is active".into()
        }
        Status::Approved | Status::Edited => "approved: the statement runs now".into(),
        Status::Denied => "denied: the agent gets the reason as its error".into(),
        other => other.as_str().into(),
    }
}

fn hub_error(e: crate::approvals::ApprovalError) -> ExecError {
    use crate::approvals::ApprovalError as E;
    use crate::approvals::model::VoteError as V;
    let code = match &e {
        E::NotFound(_) => UNDEFINED_OBJECT,
        E::Vote(V::SelfReview { .. } | V::OwnGrant { .. }) => sqlstate::INSUFFICIENT_PRIVILEGE,
        E::Vote(V::NoReason | V::EmptyEdit) => super::command::SYNTAX_ERROR,
        E::Vote(_) | E::Contended(_) => NOT_IN_STATE,
        E::Stopped | E::Store(_) => sqlstate::CONNECTION_EXCEPTION,
        E::Grant(_) | E::NoGrants => sqlstate::FEATURE_NOT_SUPPORTED,
    };
    let hint = match &e {
        E::Vote(V::Stale { .. }) => {
            Some("Run SHOW APPROVALS again and look at it before approving.")
        }
        E::NotFound(_) => Some("SHOW APPROVALS lists the pending requests."),
        _ => None,
    };
    fail(code, e.to_string(), hint)
}

/// Unix milliseconds as RFC 3339, to the second.
fn rfc3339(ms: u64) -> String {
    crate::auth::rfc3339_ms(ms)
}
