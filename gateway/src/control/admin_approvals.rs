//! The reviewer's commands on the admin socket (`portcullis approvals ...`): their wire
//! form, what the gateway does with them, and how the CLI prints the answers.
//!
//! # Wire form
//!
//! Still one line each way. The request is `approvals <verb> [<id>] [<JSON arguments>]`:
//!
//! ```text
//! approvals list {"all":false,"limit":50}
//! approvals show 42
//! approvals approve 42 {"reason":"planned","digest":"9f2c…"}
//! approvals deny 42 {"reason":"not today"}
//! approvals edit 42 {"sql":"DELETE FROM t WHERE id = 1","digest":"9f2c…"}
//! ```
//!
//! and the answer `ok: <JSON>` (the request as stored, or an array of them, newest
//! first) or `error: <why>`. A line may be up to [`MAX_LINE`] bytes, since an edit
//! carries a statement.
//!
//! # Who decides
//!
//! The socket is mode 0600: whoever reaches it is the gateway's own user or root, a
//! trusted operator. The vote is recorded under the name the client gives
//! (`--reviewer NAME`), else as `unix:<user>` of the peer's uid (`SO_PEERCRED`); both
//! are logged with the peer's uid. The rules of a vote still apply to either: a reviewer
//! named like the agent identity cannot approve its request, nor one name twice.
//!
//! An approval must carry the digest of the request the reviewer was shown (the CLI
//! fetches the request, prints it and sends its digest): if the statement was edited in
//! between, the approval is refused rather than applied to something nobody looked at.
//! Denials and edits send it too when the CLI has it, and are accepted without it from
//! a script.

use std::ffi::CStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::approvals::model::{Param, Request, Status};
use crate::approvals::{Action, Approvals};

/// Longest approvals command line.
pub const MAX_LINE: usize = 1 << 20;
/// Requests `list` returns when the client does not say, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Longest `--reviewer` name.
const MAX_REVIEWER: usize = 64;

pub const NOT_CONFIGURED: &str =
    "approvals are not configured on this gateway ([approvals] section)";

const USAGE: &str =
    "approvals list [JSON] | show ID | approve ID JSON | deny ID JSON | edit ID JSON";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("approvals: {0} (usage: {USAGE})")]
    Usage(String),
    #[error("approvals {verb}: the arguments are not valid: {why}")]
    Args { verb: &'static str, why: String },
}

/// `list`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Decided ones too, not only the queue.
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The arguments of a vote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteArgs {
    /// Recorded instead of `unix:<user>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `edit`: the statement to run instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The digest of the request as the reviewer was shown it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Approve,
    Deny,
    Edit,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Approve => "approve",
            Verb::Deny => "deny",
            Verb::Edit => "edit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalsCommand {
    List(ListArgs),
    Show(i64),
    Vote { verb: Verb, id: i64, args: VoteArgs },
}

impl ApprovalsCommand {
    /// Parses what follows `approvals ` on the request line.
    pub fn parse(rest: &str) -> Result<ApprovalsCommand, CommandError> {
        let rest = rest.trim();
        let (verb, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (verb, has_id) = match verb {
            "list" => ("list", false),
            "show" => ("show", true),
            "approve" => ("approve", true),
            "deny" => ("deny", true),
            "edit" => ("edit", true),
            "" => return Err(CommandError::Usage("no verb".into())),
            other => {
                return Err(CommandError::Usage(format!(
                    "unknown verb {:?}",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let (id, json) = if has_id {
            let rest = rest.trim_start();
            let (id, json) = rest.split_once(' ').unwrap_or((rest, ""));
            let id = id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                CommandError::Usage(format!(
                    "{verb} needs a request id (a positive number), not {:?}",
                    id.chars().take(32).collect::<String>()
                ))
            })?;
            (id, json.trim())
        } else {
            (0, rest.trim())
        };
        fn args<T: for<'de> Deserialize<'de> + Default>(
            verb: &'static str,
            json: &str,
        ) -> Result<T, CommandError> {
            if json.is_empty() {
                return Ok(T::default());
            }
            serde_json::from_str(json).map_err(|e| CommandError::Args {
                verb,
                why: e.to_string(),
            })
        }
        Ok(match verb {
            "list" => ApprovalsCommand::List(args("list", json)?),
            "show" if json.is_empty() => ApprovalsCommand::Show(id),
            "show" => {
                return Err(CommandError::Usage("show takes only an id".into()));
            }
            "approve" => ApprovalsCommand::Vote {
                verb: Verb::Approve,
                id,
                args: args("approve", json)?,
            },
            "deny" => ApprovalsCommand::Vote {
                verb: Verb::Deny,
                id,
                args: args("deny", json)?,
            },
            _ => ApprovalsCommand::Vote {
                verb: Verb::Edit,
                id,
                args: args("edit", json)?,
            },
        })
    }

    /// The request line (without its newline) that [`ApprovalsCommand::parse`] reads
    /// back. JSON escapes every line break, so it stays one line.
    pub fn to_line(&self) -> String {
        match self {
            ApprovalsCommand::List(a) => format!("approvals list {}", to_json(a)),
            ApprovalsCommand::Show(id) => format!("approvals show {id}"),
            ApprovalsCommand::Vote { verb, id, args } => {
                format!("approvals {} {id} {}", verb.as_str(), to_json(args))
            }
        }
    }
}

/// Compact JSON of plain argument and request structs, which cannot fail to serialise.
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub user: Option<String>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer::from_uid(c.uid()),
            Err(_) => Peer::default(),
        }
    }

    pub fn from_uid(uid: u32) -> Peer {
        Peer {
            uid: Some(uid),
            user: user_name(uid),
        }
    }

    /// The name a vote is recorded under when the client gives none.
    pub fn reviewer(&self) -> Option<String> {
        match (&self.user, self.uid) {
            (Some(name), _) => Some(format!("unix:{name}")),
            (None, Some(uid)) => Some(format!("unix:uid{uid}")),
            (None, None) => None,
        }
    }
}

/// The login name of `uid` from the password database (NSS), if it has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: passwd is plain data; getpwuid_r fills it with pointers into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name is a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Runs one approvals command for `peer`; the text of the answer line.
pub async fn run(
    approvals: Option<&Approvals>,
    cmd: ApprovalsCommand,
    peer: &Peer,
) -> Result<String, String> {
    let approvals = approvals.ok_or_else(|| NOT_CONFIGURED.to_owned())?;
    match cmd {
        ApprovalsCommand::List(a) => {
            let limit = a.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
            let list = approvals
                .list(!a.all, limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok(to_json(&list))
        }
        ApprovalsCommand::Show(id) => match approvals.get(id).await {
            Ok(Some(r)) => Ok(to_json(&r)),
            Ok(None) => Err(format!("there is no request #{id}")),
            Err(e) => Err(e.to_string()),
        },
        ApprovalsCommand::Vote { verb, id, args } => {
            let reviewer = match &args.reviewer {
                Some(name) => checked_reviewer(name)?,
                None => peer.reviewer().ok_or_else(|| {
                    "cannot tell which user is on the admin socket; give --reviewer NAME".to_owned()
                })?,
            };
            let action = match verb {
                Verb::Approve => {
                    if args.sql.is_some() {
                        return Err("approve takes no statement; use edit".into());
                    }
                    if args.digest.is_none() {
                        return Err(format!(
                            "approve needs the digest of request #{id} as it was shown (`portcullis approvals approve` sends it)"
                        ));
                    }
                    Action::Approve {
                        reason: args.reason.clone(),
                    }
                }
                Verb::Deny => Action::Deny {
                    reason: args
                        .reason
                        .clone()
                        .ok_or_else(|| "a denial needs a reason (--reason)".to_owned())?,
                },
                Verb::Edit => Action::Edit {
                    sql: args
                        .sql
                        .clone()
                        .ok_or_else(|| "edit needs the statement to run (--sql)".to_owned())?,
                    reason: args.reason.clone(),
                },
            };
            info!(
                target: "portcullis::approvals",
                id,
                vote = verb.as_str(),
                %reviewer,
                peer_uid = peer.uid.map(i64::from).unwrap_or(-1),
                peer_user = peer.user.as_deref().unwrap_or(""),
                "vote through the admin socket"
            );
            let after = approvals
                .decide(id, &reviewer, action, args.digest)
                .await
                .map_err(|e| e.to_string())?;
            Ok(to_json(&after))
        }
    }
}

fn checked_reviewer(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("--reviewer is empty".into());
    }
    if name.chars().count() > MAX_REVIEWER || name.chars().any(char::is_control) {
        return Err(format!(
            "--reviewer must be at most {MAX_REVIEWER} characters, none of them control characters"
        ));
    }
    Ok(name.to_owned())
}

// --- what the CLI prints

/// A request as `--json` prints it: one flat object, the stored request with its
/// origin's fields (`identity`, `database`, `source`, …) at the top level, plus
/// `approvals_given` and `waited_ms`.
pub fn flat_json(r: &Request, now_ms: u64) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        if let Some(Value::Object(origin)) = map.remove("origin") {
            for (k, val) in origin {
                map.entry(k).or_insert(val);
            }
        }
        map.insert("approvals_given".into(), r.approvals().into());
        map.insert("waited_ms".into(), waited_ms(r, now_ms).into());
    }
    v
}

fn waited_ms(r: &Request, now_ms: u64) -> u64 {
    r.decided_ms.unwrap_or(now_ms).saturating_sub(r.created_ms)
}

/// `45s`, `2m13s`, `1h05m`, `2d03h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Text from the agent as it may be put on a reviewer's terminal: control characters
/// (escape sequences could rewrite what the screen shows) and bidirectional overrides
/// (which reorder what is read) are shown as `\u{…}`; line breaks and tabs only where
/// `multiline`.
pub fn terminal_safe(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if multiline && (c == '\n' || c == '\t') {
            out.push(c);
        } else if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of a statement for a table cell: blanks collapsed, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat = terminal_safe(&s.split_whitespace().collect::<Vec<_>>().join(" "), false);
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn param(i: usize, p: &Param) -> String {
    let value = match (&p.value, p.binary) {
        (None, _) => "NULL".to_owned(),
        (Some(v), true) => format!("\\x{} (binary)", terminal_safe(v, false)),
        (Some(v), false) => format!("'{}'", terminal_safe(&v.replace('\'', "''"), false)),
    };
    format!("${} = {value}", i + 1)
}

fn indented(text: &str, by: &str) -> String {
    terminal_safe(text, true)
        .lines()
        .map(|l| format!("{by}{l}\n"))
        .collect()
}

/// The queue as a table; `all` says whether decided requests were asked for.
pub fn render_table(list: &[Request], all: bool, now_ms: u64) -> String {
    if list.is_empty() {
        return if all {
            "no requests\n".into()
        } else {
            "no pending requests\n".into()
        };
    }
    let header = [
        "ID",
        "STATUS",
        "WAITED",
        "IDENTITY",
        "DATABASE",
        "APPROVALS",
        "GATEWAY",
        "STATEMENT",
    ];
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.status.as_str().to_owned(),
                human_duration(waited_ms(r, now_ms)),
                one_line(&r.new.origin.identity, 24),
                one_line(&r.new.origin.database, 24),
                format!("{}/{}", r.approvals(), r.new.approvers.max(1)),
                one_line(&r.new.origin.gateway, 24),
                one_line(&r.effective_sql, 72),
            ]
        })
        .collect();
    columns(header, &rows)
}

/// Rows under a header, each column as wide as its widest cell plus two spaces; the last
/// column is not padded.
pub(super) fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for row in rows {
        out += &line(&row.each_ref().map(String::as_str));
    }
    out
}

/// What the statement did as a preview, and what that costs while the reviewer thinks.
fn preview(r: &Request) -> String {
    let Some(p) = &r.new.preview else {
        return "none (nothing ran)".into();
    };
    if let Some(why) = &p.error {
        return format!("failed: {why} (rolled back)");
    }
    let what = match (&p.tag, p.rows) {
        (Some(tag), _) => tag.clone(),
        (None, Some(rows)) => format!("{rows} rows"),
        (None, None) => "ran".into(),
    };
    match r.status {
        Status::Pending => format!(
            "{what}, uncommitted; its row locks are held until a decision (at most {})",
            human_duration(p.holds_locks_secs * 1000)
        ),
        Status::Approved => format!("{what}, committed when approved"),
        _ => format!("{what}, rolled back"),
    }
}

/// Everything a reviewer is shown about one request.
pub fn render_request(r: &Request, now_ms: u64) -> String {
    let o = &r.new.origin;
    let waited = human_duration(waited_ms(r, now_ms));
    let mut out = match r.status {
        Status::Pending => format!("request #{}: pending, waiting {waited}\n", r.id),
        s => format!("request #{}: {} after {waited}\n", r.id, s.as_str()),
    };
    let roles = if o.roles.is_empty() {
        "no roles".to_owned()
    } else {
        format!("roles: {}", o.roles.join(", "))
    };
    let rule = match &r.new.rule {
        Some(rule) => format!("{rule}: {}", r.new.message),
        None => r.new.message.clone(),
    };
    let estimate = match &r.new.estimate {
        None => "none".to_owned(),
        Some(e) => match (&e.unavailable, e.rows) {
            (Some(why), _) => format!("none ({why})"),
            (None, Some(rows)) => format!(
                "~{rows:.0} rows{}",
                e.node
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            (None, None) => e.node.clone().unwrap_or_else(|| "none".into()),
        },
    };
    let fields = [
        ("identity", format!("{} ({roles})", o.identity)),
        ("source", o.source.clone()),
        (
            "application",
            if o.application_name.is_empty() {
                "(none)".into()
            } else {
                o.application_name.clone()
            },
        ),
        ("database", o.database.clone()),
        ("session", format!("{} on gateway {}", o.session, o.gateway)),
        ("rule", rule),
        ("estimate", estimate),
        ("preview", preview(r)),
        (
            "approvals",
            format!("{} of {}", r.approvals(), r.new.approvers.max(1)),
        ),
        ("digest", r.digest.clone()),
    ];
    for (k, v) in fields {
        out += &format!("  {k:<12} {}\n", terminal_safe(&v, false));
    }
    out += &format!("  statement ({} protocol):\n", r.new.protocol);
    out += &indented(&r.new.sql, "    ");
    if !r.new.params.is_empty() {
        out += "  parameters:\n";
        for (i, p) in r.new.params.iter().enumerate() {
            out += &format!("    {}\n", param(i, p));
        }
    }
    if r.effective_sql != r.new.sql {
        out += "  runs instead (edited):\n";
        out += &indented(&r.effective_sql, "    ");
    }
    if !r.new.recent.is_empty() {
        out += "  recent statements, oldest first:\n";
        for s in &r.new.recent {
            out += &format!("    {}\n", one_line(s, 100));
        }
    }
    if !r.votes.is_empty() {
        out += "  votes:\n";
        for v in &r.votes {
            let ago = human_duration(now_ms.saturating_sub(v.at_ms));
            let what = match v.kind.as_str() {
                "approve" => "approved",
                "deny" => "denied",
                "edit" => "edited",
                other => other,
            };
            let reason = v
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            out += &format!(
                "    {} {what} {ago} ago{}\n",
                terminal_safe(&v.reviewer, false),
                terminal_safe(&reason, false)
            );
        }
    }
    if let Some(why) = &r.end_reason {
        out += &format!("  ended: {}\n", terminal_safe(why, false));
    }
    out
}

/// What a vote is about to act on, printed before it is sent.
pub fn render_preview(r: &Request, verb: Verb) -> String {
    let mut out = format!(
        "{} request #{} ({} on {}, {}):\n",
        match verb {
            Verb::Approve => "approving",
            Verb::Deny => "denying",
            Verb::Edit => "editing",
        },
        r.id,
        terminal_safe(&r.new.origin.identity, false),
        terminal_safe(&r.new.origin.database, false),
        r.status.as_str()
    );
    out += &indented(&r.effective_sql, "    ");
    for (i, p) in r.new.params.iter().enumerate() {
        out += &format!("    {}\n", param(i, p));
    }
    if r.new.preview.is_some() {
        out += &format!("  preview {}\n", terminal_safe(&preview(r), false));
    }
    out += &format!("  digest {}\n", r.digest);
    out
}

/// What came of a vote.
pub fn render_outcome(r: &Request) -> String {
    let needed = r.new.approvers.max(1);
    match r.status {
        Status::Pending => format!(
            "request #{}: {} of {needed} approvals; still pending (digest {})\n",
            r.id,
            r.approvals(),
            r.digest
        ),
        Status::Edited => format!(
            "request #{}: edited; the agent's session runs:\n{}",
            r.id,
            indented(&r.effective_sql, "    ")
        ),
        s => format!("request #{}: {}\n", r.id, s.as_str()),
    }
}

// --- reviewer tokens

/// A new personal API token: 32 random bytes, base64url without padding.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What `[[approvals.reviewer]] token_sha256` holds: hex SHA-256 of the token's bytes.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::{Estimate, NewRequest, Origin};

    pub(super) fn request() -> Request {
        let mut r = Request::new(
            42,
            NewRequest {
                origin: Origin {
                    gateway: "gw-a".into(),
                    session: "s7".into(),
                    identity: "agent".into(),
                    roles: vec!["agent".into()],
                    source: "10.0.0.9:5123".into(),
                    application_name: "psql".into(),
                    database: "bank".into(),
                },
                sql: "UPDATE accounts\n   SET closed = $1\n WHERE id = $2".into(),
                params: vec![
                    Param {
                        value: Some("it's".into()),
                        binary: false,
                    },
                    Param {
                        value: None,
                        binary: false,
                    },
                ],
                protocol: "extended".into(),
                rule: Some("hold-writes".into()),
                message: "writes need a reviewer".into(),
                recent: vec!["SELECT 1".into(), "BEGIN".into()],
                estimate: Some(Estimate {
                    rows: Some(1200.0),
                    node: Some("Update on accounts".into()),
                    unavailable: None,
                }),
                preview: None,
                approvers: 2,
                timeout_secs: 60,
                grant: None,
            },
        );
        r.created_ms = 1_000_000;
        r
    }

    #[test]
    fn commands_round_trip_through_their_line() {
        let cmds = [
            ApprovalsCommand::List(ListArgs::default()),
            ApprovalsCommand::List(ListArgs {
                all: true,
                limit: Some(5),
            }),
            ApprovalsCommand::Show(42),
            ApprovalsCommand::Vote {
                verb: Verb::Approve,
                id: 42,
                args: VoteArgs {
                    reviewer: Some("alice".into()),
                    reason: Some("two\nlines".into()),
                    sql: None,
                    digest: Some("ab".into()),
                },
            },
            ApprovalsCommand::Vote {
                verb: Verb::Edit,
                id: 7,
                args: VoteArgs {
                    sql: Some("DELETE FROM t\r\nWHERE id = 1".into()),
                    ..VoteArgs::default()
                },
            },
        ];
        for c in cmds {
            let line = c.to_line();
            assert!(!line.contains(['\n', '\r']), "{line}");
            let rest = line.strip_prefix("approvals ").unwrap();
            assert_eq!(ApprovalsCommand::parse(rest), Ok(c), "{line}");
        }
        assert_eq!(
            ApprovalsCommand::parse("approve 3"),
            Ok(ApprovalsCommand::Vote {
                verb: Verb::Approve,
                id: 3,
                args: VoteArgs::default()
            })
        );
        assert_eq!(
            ApprovalsCommand::parse("list"),
            Ok(ApprovalsCommand::List(ListArgs::default()))
        );
    }

    #[test]
    fn malformed_commands_say_what_is_wrong() {
        let err = |s: &str| ApprovalsCommand::parse(s).unwrap_err().to_string();
        assert!(err("").contains("no verb"), "{}", err(""));
        assert!(err("frob 1").contains("unknown verb \"frob\""));
        assert!(err("show").contains("show needs a request id"));
        assert!(err("approve x {}").contains("approve needs a request id"));
        assert!(err("deny -1 {}").contains("a positive number"));
        assert!(err("show 1 {}").contains("show takes only an id"));
        let e = err("approve 1 {\"reviewr\":\"a\"}");
        assert!(
            e.starts_with(
                "approvals approve: the arguments are not valid: unknown field `reviewr`"
            ),
            "{e}"
        );
        assert!(err("list [1]").contains("arguments are not valid"));
        assert!(err("frob").contains("usage: approvals list"));
    }

    #[test]
    fn the_peer_is_recorded_by_name_or_uid() {
        assert_eq!(Peer::from_uid(0).reviewer().as_deref(), Some("unix:root"));
        assert_eq!(
            Peer::from_uid(4_000_000_000).reviewer().as_deref(),
            Some("unix:uid4000000000")
        );
        assert_eq!(Peer::default().reviewer(), None);
    }

    #[test]
    fn reviewer_names_are_checked() {
        assert_eq!(checked_reviewer(" alice ").unwrap(), "alice");
        assert!(checked_reviewer("  ").is_err());
        assert!(checked_reviewer("a\u{1b}[2Jb").is_err());
        assert!(checked_reviewer(&"x".repeat(65)).is_err());
    }

    #[test]
    fn json_output_is_flat() {
        let r = request();
        let v = flat_json(&r, 1_005_000);
        assert_eq!(v["id"], 42);
        assert_eq!(v["identity"], "agent");
        assert_eq!(v["database"], "bank");
        assert_eq!(v["application_name"], "psql");
        assert_eq!(v["gateway"], "gw-a");
        assert_eq!(v["sql"], r.new.sql);
        assert_eq!(v["params"][0]["value"], "it's");
        assert_eq!(v["status"], "pending");
        assert_eq!(v["approvals_given"], 0);
        assert_eq!(v["waited_ms"], 5000);
        assert!(v.get("origin").is_none());
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human_duration(999), "0s");
        assert_eq!(human_duration(45_000), "45s");
        assert_eq!(human_duration(133_000), "2m13s");
        assert_eq!(human_duration(3_900_000), "1h05m");
        assert_eq!(human_duration(2 * 86_400_000 + 3 * 3_600_000), "2d03h");
    }

    #[test]
    fn agent_text_cannot_drive_the_reviewers_terminal() {
        assert_eq!(
            terminal_safe("a\u{1b}[2Jb\nc\td", false),
            "a\\u{1b}[2Jb\\u{a}c\\u{9}d"
        );
        assert_eq!(terminal_safe("a\nb\tc\u{7}", true), "a\nb\tc\\u{7}");
        // A right-to-left override would show `DROP` … reordered.
        assert_eq!(terminal_safe("x\u{202e}y", true), "x\\u{202e}y");
        assert_eq!(terminal_safe("naïve 名前", false), "naïve 名前");
    }

    #[test]
    fn a_request_is_shown_whole() {
        let mut r = request();
        r = r
            .apply(
                "alice",
                &Action::Approve {
                    reason: Some("ok".into()),
                },
                None,
            )
            .unwrap();
        r.votes[0].at_ms = 1_002_000;
        let text = render_request(&r, 1_133_000);
        for want in [
            "request #42: pending, waiting 2m13s\n",
            "  identity     agent (roles: agent)\n",
            "  source       10.0.0.9:5123\n",
            "  application  psql\n",
            "  database     bank\n",
            "  session      s7 on gateway gw-a\n",
            "  rule         hold-writes: writes need a reviewer\n",
            "  estimate     ~1200 rows (Update on accounts)\n",
            "  preview      none (nothing ran)\n",
            "  approvals    1 of 2\n",
            &format!("  digest       {}\n", r.digest),
            "  statement (extended protocol):\n    UPDATE accounts\n       SET closed = $1\n     WHERE id = $2\n",
            "  parameters:\n    $1 = 'it''s'\n    $2 = NULL\n",
            "  recent statements, oldest first:\n    SELECT 1\n    BEGIN\n",
            "  votes:\n    alice approved 2m11s ago: ok\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(!text.contains("runs instead"), "{text}");
        let edited = r
            .apply(
                "bob",
                &Action::Edit {
                    sql: "UPDATE accounts SET closed = $1 WHERE id = 1".into(),
                    reason: None,
                },
                None,
            )
            .unwrap();
        let text = render_request(&edited, 1_133_000);
        assert!(
            text.contains(
                "  runs instead (edited):\n    UPDATE accounts SET closed = $1 WHERE id = 1\n"
            ),
            "{text}"
        );
        assert!(render_outcome(&edited).contains("1 of 2 approvals; still pending"));
        let preview = render_preview(&edited, Verb::Approve);
        assert!(preview.starts_with("approving request #42 (agent on bank, pending):\n    UPDATE accounts SET closed = $1 WHERE id = 1\n    $1 = 'it''s'\n"), "{preview}");
        assert!(preview.ends_with(&format!("  digest {}\n", edited.digest)));

        let mut held = request();
        held.new.preview = Some(crate::approvals::Preview {
            rows: Some(12),
            tag: Some("UPDATE 12".into()),
            error: None,
            holds_locks_secs: 300,
        });
        let text = render_request(&held, 1_133_000);
        assert!(
            text.contains("  preview      UPDATE 12, uncommitted; its row locks are held until a decision (at most 5m00s)\n"),
            "{text}"
        );
        assert!(render_preview(&held, Verb::Approve).contains("  preview UPDATE 12, uncommitted;"));
        held.new.preview.as_mut().unwrap().error = Some("deadlock detected".into());
        assert!(
            render_request(&held, 0)
                .contains("  preview      failed: deadlock detected (rolled back)\n")
        );
    }

    #[test]
    fn the_table_lines_up_and_cuts_long_statements() {
        let mut a = request();
        a.new.sql = format!("SELECT {}", "x, ".repeat(60));
        a.effective_sql = a.new.sql.clone();
        let mut b = request();
        b.id = 7;
        b.status = Status::Denied;
        b.decided_ms = Some(1_045_000);
        let t = render_table(&[a, b], true, 1_133_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with(
                "ID  STATUS   WAITED  IDENTITY  DATABASE  APPROVALS  GATEWAY  STATEMENT"
            ),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "42  pending  2m13s   agent     bank      0/2        gw-a     SELECT x, x,"
            ),
            "{t}"
        );
        assert!(
            lines[1].ends_with('…') && lines[1].chars().count() < 140,
            "{t}"
        );
        assert!(lines[2].starts_with("7   denied   45s "), "{t}");
        assert_eq!(render_table(&[], false, 0), "no pending requests\n");
        assert_eq!(render_table(&[], true, 0), "no requests\n");
    }

    #[test]
    fn tokens_are_random_and_hashed_as_written() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(t, new_token());
        // sha256("abc")
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn hub() -> (Approvals, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::approvals::store::Store::Sqlite(
            crate::approvals::store::SqliteStore::open(&dir.path().join("a.sqlite")).unwrap(),
        );
        let (a, hub) = Approvals::new(
            crate::approvals::Settings {
                gateway: "gw-a".into(),
                notice_interval: std::time::Duration::from_secs(10),
                default_timeout: std::time::Duration::from_secs(60),
                preview_max: std::time::Duration::from_secs(60),
                recent: 3,
                page_url: None,
            },
            store,
        );
        tokio::spawn(hub.run());
        (a, dir)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn votes_on_the_socket_follow_the_rules() {
        let peer = Peer {
            uid: Some(0),
            user: Some("root".into()),
        };
        assert_eq!(
            run(None, ApprovalsCommand::Show(1), &peer).await,
            Err(NOT_CONFIGURED.into())
        );
        let (a, _dir) = hub();
        let t = a.submit(request().new).await.unwrap();
        let id = t.request.id;
        let vote = |verb, args| ApprovalsCommand::Vote { verb, id, args };
        let list = run(Some(&a), ApprovalsCommand::List(ListArgs::default()), &peer)
            .await
            .unwrap();
        let list: Vec<Request> = serde_json::from_str(&list).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            run(Some(&a), ApprovalsCommand::Show(999), &peer).await,
            Err("there is no request #999".into())
        );

        // An approval without the digest it was shown is refused; with a stale one too.
        let e = run(Some(&a), vote(Verb::Approve, VoteArgs::default()), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("needs the digest"), "{e}");
        let stale = VoteArgs {
            digest: Some("00".into()),
            ..VoteArgs::default()
        };
        let e = run(Some(&a), vote(Verb::Approve, stale), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("changed since it was shown"), "{e}");
        let e = run(Some(&a), vote(Verb::Deny, VoteArgs::default()), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("needs a reason"), "{e}");
        let e = run(Some(&a), vote(Verb::Edit, VoteArgs::default()), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("--sql"), "{e}");

        // The peer's user, then a named reviewer: two distinct approvals.
        let ok = VoteArgs {
            digest: Some(t.request.digest.clone()),
            ..VoteArgs::default()
        };
        let after: Request = serde_json::from_str(
            &run(Some(&a), vote(Verb::Approve, ok.clone()), &peer)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(after.votes[0].reviewer, "unix:root");
        assert_eq!(after.status, Status::Pending);
        let e = run(Some(&a), vote(Verb::Approve, ok.clone()), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("already approved"), "{e}");
        let as_agent = VoteArgs {
            reviewer: Some("agent".into()),
            ..ok.clone()
        };
        let e = run(Some(&a), vote(Verb::Approve, as_agent), &peer)
            .await
            .unwrap_err();
        assert!(e.contains("own identity"), "{e}");
        let alice = VoteArgs {
            reviewer: Some("alice".into()),
            ..ok
        };
        let after: Request = serde_json::from_str(
            &run(Some(&a), vote(Verb::Approve, alice), &peer)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(after.status, Status::Approved);
        assert_eq!(after.approvers(), ["unix:root", "alice"]);
        assert!(matches!(
            t.outcome.await.unwrap(),
            crate::approvals::Resolution::Run { .. }
        ));
        let all = run(
            Some(&a),
            ApprovalsCommand::List(ListArgs {
                all: true,
                limit: None,
            }),
            &peer,
        )
        .await
        .unwrap();
        assert!(all.starts_with("[{"), "{all}");
        assert!(
            run(Some(&a), ApprovalsCommand::List(ListArgs::default()), &peer)
                .await
                .unwrap()
                == "[]"
        );
    }
}
