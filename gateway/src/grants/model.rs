//! What a grant is: the extra roles asked for, the scope they are limited to, for how
//! long and why; and where a grant stands, worked out from the approval request that
//! carries it. Pure: the hub stores requests, this reads them.

use serde::{Deserialize, Serialize};

use crate::analysis::Class;
use crate::approvals::model::{Request, Status};

use super::GrantError;

/// Longest role, database or table pattern in a grant.
const MAX_NAME: usize = 128;
/// Most roles, databases, classes or tables in one grant.
const MAX_ITEMS: usize = 32;
/// Longest reason.
const MAX_REASON: usize = 1000;

/// A grant as asked for. Stored inside the approval request that decides it
/// ([`crate::approvals::NewRequest::grant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSpec {
    /// Roles added to the identity's standing roles while the grant is active.
    pub roles: Vec<String>,
    /// Databases it applies in; empty: any.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Statement classes it applies to (`read`, `write`, `ddl`, …); empty: any.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Relation globs (`public.accounts`, `public.*`, `accounts`): a statement is
    /// covered only when every relation it touches matches one. Empty: any.
    #[serde(default)]
    pub tables: Vec<String>,
    pub reason: String,
    /// Who asked: `unix:<user>` on the admin socket, the reviewer's name on the API.
    /// Never the one who approves it.
    pub requested_by: String,
    pub duration_secs: u64,
}

/// How an approved grant ended before or at its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEnd {
    /// `revoked` or `expired`.
    pub kind: EndKind,
    /// Who revoked it; `None` for an expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix time, milliseconds.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    Revoked,
    Expired,
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Waiting for its approvals.
    Pending,
    /// Approved, within its time, not revoked: the policy sees its roles.
    Active,
    /// Denied, timed out or withdrawn before it was approved.
    Denied,
    Expired,
    Revoked,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Denied => "denied",
            GrantStatus::Expired => "expired",
            GrantStatus::Revoked => "revoked",
        }
    }

    /// No later change can follow.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            GrantStatus::Denied | GrantStatus::Expired | GrantStatus::Revoked
        )
    }
}

/// A statement class by its name in the policy (`write`).
pub fn class_named(name: &str) -> Option<Class> {
    Class::ALL.into_iter().find(|c| c.as_str() == name)
}

/// `90s`, `30m`, `2h`, `1d`, `1h30m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<u64, GrantError> {
    let bad = || GrantError::Duration(text.chars().take(32).collect());
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return (secs > 0).then_some(secs).ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

impl GrantSpec {
    /// Checks what a person typed, before it goes to a reviewer: names are bounded and
    /// printable, classes are classes, tables are globs the policy can read, the
    /// duration is within `max_secs`.
    pub fn validate(&self, max_secs: u64) -> Result<(), GrantError> {
        let invalid = |what: &str, why: String| GrantError::Invalid(format!("{what}: {why}"));
        if self.roles.is_empty() {
            return Err(invalid("roles", "give at least one role (--role)".into()));
        }
        for (what, list) in [
            ("roles", &self.roles),
            ("databases", &self.databases),
            ("classes", &self.classes),
            ("tables", &self.tables),
        ] {
            if list.len() > MAX_ITEMS {
                return Err(invalid(what, format!("at most {MAX_ITEMS}")));
            }
            for item in list {
                if item.trim().is_empty()
                    || item.chars().count() > MAX_NAME
                    || item.chars().any(char::is_control)
                {
                    return Err(invalid(
                        what,
                        format!("{item:?} must be 1 to {MAX_NAME} printable characters"),
                    ));
                }
            }
        }
        for c in &self.classes {
            if class_named(c).is_none() {
                return Err(invalid(
                    "classes",
                    format!(
                        "{c:?} is not a statement class (read, write, ddl, dcl, txn, session, utility, admin, unknown)"
                    ),
                ));
            }
        }
        for t in &self.tables {
            crate::policy::rules::NameGlob::parse(t).map_err(|e| invalid("tables", e))?;
        }
        if self.reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "say why the grant is needed (--reason); the reviewer reads it".into(),
            ));
        }
        if self.reason.chars().count() > MAX_REASON {
            return Err(invalid(
                "reason",
                format!("at most {MAX_REASON} characters"),
            ));
        }
        if self.duration_secs == 0 || self.duration_secs > max_secs {
            return Err(invalid(
                "duration",
                format!(
                    "must be between 1s and {}s ([approvals] grant_max_secs)",
                    max_secs
                ),
            ));
        }
        Ok(())
    }

    /// What the reviewer reads: the request's statement text.
    pub fn describe(&self, identity: &str) -> String {
        let mut s = format!(
            "GRANT ROLE {} TO {identity} FOR {}",
            self.roles.join(", "),
            human(self.duration_secs)
        );
        let list = |v: &[String]| v.join(", ");
        if !self.databases.is_empty() {
            s += &format!(" IN DATABASE {}", list(&self.databases));
        }
        if !self.classes.is_empty() {
            s += &format!(" FOR CLASS {}", list(&self.classes));
        }
        if !self.tables.is_empty() {
            s += &format!(" ON TABLES {}", list(&self.tables));
        }
        s
    }
}

/// `90s`, `30m`, `2h`, `1h30m`.
pub fn human(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let mut out = String::new();
    for (n, u) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out += &format!("{n}{u}");
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// A grant as `grants list` shows it: the request's id is the grant's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: i64,
    pub identity: String,
    #[serde(flatten)]
    pub spec: GrantSpec,
    pub status: GrantStatus,
    pub created_ms: u64,
    /// The approvers, in order.
    pub approved_by: Vec<String>,
    /// Approval time: the grant runs from here for its duration.
    pub starts_ms: Option<u64>,
    pub ends_ms: Option<u64>,
    /// Who denied, revoked; why; when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub approvals: usize,
    pub approvers_needed: u32,
}

impl Grant {
    /// The grant a request carries, as it stands at `now_ms`; `None` for a request that
    /// is a held statement.
    pub fn of(r: &Request, now_ms: u64) -> Option<Grant> {
        let spec = r.new.grant.clone()?;
        let approved = matches!(r.status, Status::Approved | Status::Edited);
        let starts_ms = approved.then_some(r.decided_ms).flatten();
        let ends_ms = starts_ms.map(|s| s.saturating_add(spec.duration_secs * 1000));
        let (status, ended_by, end_reason, ended_ms) = match (&r.grant_end, r.status) {
            (Some(e), _) => (
                match e.kind {
                    EndKind::Revoked => GrantStatus::Revoked,
                    EndKind::Expired => GrantStatus::Expired,
                },
                e.by.clone(),
                e.reason.clone(),
                Some(e.at_ms),
            ),
            (None, Status::Pending) => (GrantStatus::Pending, None, None, None),
            (None, Status::Approved | Status::Edited) => match ends_ms {
                Some(end) if end <= now_ms => (GrantStatus::Expired, None, None, Some(end)),
                _ => (GrantStatus::Active, None, None, None),
            },
            (None, _) => {
                let deny = r.votes.iter().rev().find(|v| v.kind == "deny");
                (
                    GrantStatus::Denied,
                    deny.map(|v| v.reviewer.clone()),
                    deny.and_then(|v| v.reason.clone())
                        .or_else(|| r.end_reason.clone()),
                    r.decided_ms,
                )
            }
        };
        Some(Grant {
            id: r.id,
            identity: r.new.origin.identity.clone(),
            spec,
            status,
            created_ms: r.created_ms,
            approved_by: if approved { r.approvers() } else { Vec::new() },
            starts_ms,
            ends_ms,
            ended_by,
            end_reason,
            ended_ms,
            approvals: r.approvals(),
            approvers_needed: r.new.approvers.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("1d").unwrap(), 86_400);
        assert_eq!(parse_duration(" 45 ").unwrap(), 45);
        for bad in [
            "",
            "0",
            "0m",
            "m",
            "30x",
            "-5m",
            "1.5h",
            "30m5",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(human(5400), "1h30m");
        assert_eq!(human(90), "1m30s");
    }

    fn spec() -> GrantSpec {
        GrantSpec {
            roles: vec!["writer".into()],
            databases: vec![],
            classes: vec!["write".into()],
            tables: vec!["public.accounts".into()],
            reason: "backfill ticket 812".into(),
            requested_by: "unix:ops".into(),
            duration_secs: 1800,
        }
    }

    #[test]
    fn a_grant_must_say_what_for_how_long_and_why() {
        spec().validate(86_400).unwrap();
        let mut s = spec();
        s.roles.clear();
        assert!(s.validate(86_400).unwrap_err().to_string().contains("role"));
        let mut s = spec();
        s.classes = vec!["writes".into()];
        assert!(
            s.validate(86_400)
                .unwrap_err()
                .to_string()
                .contains("class")
        );
        let mut s = spec();
        s.tables = vec!["a.b.c".into()];
        assert!(s.validate(86_400).is_err());
        let mut s = spec();
        s.reason = "  ".into();
        assert!(s.validate(86_400).is_err());
        assert!(spec().validate(600).is_err());
        assert_eq!(
            spec().describe("agent"),
            "GRANT ROLE writer TO agent FOR 30m FOR CLASS write ON TABLES public.accounts"
        );
    }
}
