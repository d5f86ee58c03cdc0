//! The operator's grant commands on the admin socket (`portcullis grants ...`): their
//! wire form, what the gateway does with them, and how the CLI prints the answers.
//! The HTTP API takes the same request body ([`RequestArgs`]).
//!
//! # Wire form
//!
//! One line each way, like `approvals`:
//!
//! ```text
//! grants request {"identity":"agent","roles":["writer"],"for":"30m","reason":"backfill ticket 812"}
//! grants list {"all":false}
//! grants revoke 42 {"reason":"done early"}
//! ```
//!
//! The answer is `ok: <JSON>` (the grant, or an array of them, newest first) or
//! `error: <why>`. Approving is `portcullis approvals approve ID`: a grant request is
//! an approval request.
//!
//! # Who asks
//!
//! On the socket the requester is `--requested-by NAME`, else `unix:<user>` of the peer;
//! over HTTP it is the signed-in reviewer. Either way that name cannot approve the grant
//! (nor can the identity it is for).

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::approvals::Approvals;
use crate::approvals::model::now_ms;
use crate::grants::{Grant, GrantSpec, GrantStatus, parse_duration};

use super::admin_approvals::{NOT_CONFIGURED, Peer, columns, human_duration, terminal_safe};

const USAGE: &str = "grants request JSON | list [JSON] | revoke ID [JSON]";
/// Grants `list` returns at most.
const MAX_LIST: usize = 1000;
/// Longest `--requested-by` / `--by` name.
const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantsCommandError {
    #[error("grants: {0} (usage: {USAGE})")]
    Usage(String),
    #[error("grants {verb}: the arguments are not valid: {why}")]
    Args { verb: &'static str, why: String },
}

/// What a grant request says (admin socket and `POST /api/grants`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    pub identity: String,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// `30m`, `2h`, `90s`.
    #[serde(rename = "for")]
    pub duration: String,
    pub reason: String,
    /// Admin socket only: recorded instead of `unix:<user>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl RequestArgs {
    /// The grant asked for, by `requested_by`.
    pub fn spec(&self, requested_by: String) -> Result<GrantSpec, String> {
        if self.identity.trim().is_empty() {
            return Err("give the identity the grant is for (--identity)".into());
        }
        Ok(GrantSpec {
            roles: self.roles.clone(),
            databases: self.databases.clone(),
            classes: self.classes.clone(),
            tables: self.tables.clone(),
            reason: self.reason.trim().to_owned(),
            requested_by,
            duration_secs: parse_duration(&self.duration).map_err(|e| e.to_string())?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Ended and denied grants too, not only pending and active ones.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Recorded instead of `unix:<user>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantsCommand {
    Request(RequestArgs),
    List(ListArgs),
    Revoke { id: i64, args: RevokeArgs },
}

fn args<T: for<'de> Deserialize<'de> + Default>(
    verb: &'static str,
    json: &str,
    required: bool,
) -> Result<T, GrantsCommandError> {
    if json.is_empty() && !required {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| GrantsCommandError::Args {
        verb,
        why: e.to_string(),
    })
}

impl GrantsCommand {
    /// Parses what follows `grants ` on the request line.
    pub fn parse(rest: &str) -> Result<GrantsCommand, GrantsCommandError> {
        let rest = rest.trim();
        let (verb, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let rest = rest.trim();
        match verb {
            "request" => Ok(GrantsCommand::Request(args("request", rest, true)?)),
            "list" => Ok(GrantsCommand::List(args("list", rest, false)?)),
            "revoke" => {
                let (id, json) = rest.split_once(' ').unwrap_or((rest, ""));
                let id = id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                    GrantsCommandError::Usage(format!(
                        "revoke needs a grant id (a positive number), not {:?}",
                        id.chars().take(32).collect::<String>()
                    ))
                })?;
                Ok(GrantsCommand::Revoke {
                    id,
                    args: args("revoke", json.trim(), false)?,
                })
            }
            "" => Err(GrantsCommandError::Usage("no verb".into())),
            other => Err(GrantsCommandError::Usage(format!(
                "unknown verb {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// The request line [`GrantsCommand::parse`] reads back.
    pub fn to_line(&self) -> String {
        match self {
            GrantsCommand::Request(a) => format!("grants request {}", to_json(a)),
            GrantsCommand::List(a) => format!("grants list {}", to_json(a)),
            GrantsCommand::Revoke { id, args } => format!("grants revoke {id} {}", to_json(args)),
        }
    }
}

/// Compact JSON of plain structs, which cannot fail to serialise.
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn checked_name(flag: &str, name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "{flag} must be 1 to {MAX_NAME} characters, none of them control characters"
        ));
    }
    Ok(name.to_owned())
}

/// The grants of `requests` as they stand now.
pub fn grants_of(requests: &[crate::approvals::Request]) -> Vec<Grant> {
    let now = now_ms();
    requests.iter().filter_map(|r| Grant::of(r, now)).collect()
}

/// Runs one grants command for `peer`; the text of the answer line.
pub async fn run(
    approvals: Option<&Approvals>,
    cmd: GrantsCommand,
    peer: &Peer,
) -> Result<String, String> {
    let approvals = approvals
        .ok_or_else(|| format!("{NOT_CONFIGURED}; grants are decided by its reviewers"))?;
    let who = |given: &Option<String>, flag: &str| match given {
        Some(name) => checked_name(flag, name),
        None => peer.reviewer().ok_or_else(|| {
            format!("cannot tell which user is on the admin socket; give {flag} NAME")
        }),
    };
    match cmd {
        GrantsCommand::Request(a) => {
            let by = who(&a.requested_by, "--requested-by")?;
            let spec = a.spec(by.clone())?;
            info!(target: "portcullis::grants", identity = %a.identity, requested_by = %by, peer_uid = peer.uid.map(i64::from).unwrap_or(-1), "grant requested through the admin socket");
            let r = approvals
                .request_grant(a.identity.trim(), spec, &format!("admin socket ({by})"))
                .await
                .map_err(|e| e.to_string())?;
            Ok(to_json(&Grant::of(&r, now_ms())))
        }
        GrantsCommand::List(a) => {
            let list = approvals
                .grants(!a.all, MAX_LIST)
                .await
                .map_err(|e| e.to_string())?;
            let mut grants = grants_of(&list);
            if !a.all {
                grants.retain(|g| matches!(g.status, GrantStatus::Pending | GrantStatus::Active));
            }
            Ok(to_json(&grants))
        }
        GrantsCommand::Revoke { id, args } => {
            let by = who(&args.by, "--by")?;
            info!(target: "portcullis::grants", grant = id, %by, peer_uid = peer.uid.map(i64::from).unwrap_or(-1), "grant revoked through the admin socket");
            let r = approvals
                .revoke(id, &by, args.reason.filter(|r| !r.trim().is_empty()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(to_json(&Grant::of(&r, now_ms())))
        }
    }
}

// --- what the CLI prints

/// Grants as a table.
pub fn render_table(grants: &[Grant], now_ms: u64) -> String {
    if grants.is_empty() {
        return "no grants\n".into();
    }
    let header = [
        "ID",
        "STATUS",
        "IDENTITY",
        "ROLES",
        "LEFT",
        "APPROVALS",
        "SCOPE",
        "REASON",
    ];
    let rows: Vec<[String; 8]> = grants
        .iter()
        .map(|g| {
            let left = match (g.status, g.ends_ms) {
                (GrantStatus::Active, Some(end)) => human_duration(end.saturating_sub(now_ms)),
                (GrantStatus::Pending, _) => {
                    format!("({})", crate::grants::model::human(g.spec.duration_secs))
                }
                _ => "-".into(),
            };
            let mut scope = Vec::new();
            if !g.spec.databases.is_empty() {
                scope.push(format!("db {}", g.spec.databases.join(",")));
            }
            if !g.spec.classes.is_empty() {
                scope.push(g.spec.classes.join(","));
            }
            if !g.spec.tables.is_empty() {
                scope.push(g.spec.tables.join(","));
            }
            [
                g.id.to_string(),
                g.status.as_str().into(),
                terminal_safe(&g.identity, false),
                terminal_safe(&g.spec.roles.join(","), false),
                left,
                format!("{}/{}", g.approvals, g.approvers_needed),
                terminal_safe(
                    &if scope.is_empty() {
                        "any".into()
                    } else {
                        scope.join(" ")
                    },
                    false,
                ),
                terminal_safe(&g.spec.reason, false),
            ]
        })
        .collect();
    columns(header, &rows)
}

/// One grant after a request or a revocation.
pub fn render_one(g: &Grant) -> String {
    let what = g.spec.describe(&g.identity);
    match g.status {
        GrantStatus::Pending => format!(
            "grant #{} pending ({} approval{} needed): {}\n  approve with: portcullis approvals approve {}\n",
            g.id,
            g.approvers_needed,
            if g.approvers_needed == 1 { "" } else { "s" },
            terminal_safe(&what, false),
            g.id
        ),
        s => format!(
            "grant #{} {}: {}\n",
            g.id,
            s.as_str(),
            terminal_safe(&what, false)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_line() {
        let cmds = [
            GrantsCommand::Request(RequestArgs {
                identity: "agent".into(),
                roles: vec!["writer".into()],
                tables: vec!["public.accounts".into()],
                duration: "30m".into(),
                reason: "backfill\nticket 812".into(),
                ..Default::default()
            }),
            GrantsCommand::List(ListArgs { all: true }),
            GrantsCommand::Revoke {
                id: 4,
                args: RevokeArgs {
                    reason: Some("done".into()),
                    by: None,
                },
            },
        ];
        for c in cmds {
            let line = c.to_line();
            assert!(!line.contains('\n'));
            let rest = line.strip_prefix("grants").unwrap();
            assert_eq!(GrantsCommand::parse(rest).unwrap(), c);
        }
        assert!(GrantsCommand::parse(" revoke x").is_err());
        assert!(GrantsCommand::parse(" request").is_err());
        assert!(GrantsCommand::parse(" list {\"bogus\":1}").is_err());
    }
}
