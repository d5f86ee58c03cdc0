//! What an operator types at the console, parsed: sans-IO, no state.
//!
//! The grammar is pgbouncer's: one command per query, keywords in any case, an optional
//! trailing `;`. `APPROVE` and `DENY` take a request id and a reason, bare or as an SQL
//! string literal (`DENY 42 'not during the freeze'`).

use crate::protocol::sqlstate;

/// Longest command the console reads; real ones are a few dozen bytes.
pub const MAX_COMMAND: usize = 16 * 1024;
/// Longest reason kept with a vote.
const MAX_REASON: usize = 1000;

/// SQLSTATE 42601: the text is not a console command.
pub const SYNTAX_ERROR: &str = "42601";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Sessions,
    Stats,
    Pools,
    Approvals,
    Grants,
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Approve { id: i64, reason: Option<String> },
    Deny { id: i64, reason: String },
}

impl Command {
    /// The command as its audit record and the log name it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Show(_) => "show",
            Command::Reload => "reload",
            Command::Approve { .. } => "approve",
            Command::Deny { .. } => "deny",
        }
    }
}

/// Why a text is not a command: an `ErrorResponse`'s code, message and hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

const HINT: &str = "SHOW HELP lists the console's commands.";

fn error(code: &'static str, message: impl Into<String>) -> CommandError {
    CommandError {
        code,
        message: message.into(),
        hint: HINT.into(),
    }
}

/// A bounded, printable copy of what the operator typed, for messages.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let cut: String = cut
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 40 {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Parses one query's text.
pub fn parse(text: &str) -> Result<Command, CommandError> {
    if text.len() > MAX_COMMAND {
        return Err(error(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("console commands are at most {MAX_COMMAND} bytes"),
        ));
    }
    let t = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let (word, rest) = split_word(t);
    match word.to_ascii_uppercase().as_str() {
        "SHOW" => {
            let (what, more) = split_word(rest);
            if !more.is_empty() {
                return Err(error(
                    SYNTAX_ERROR,
                    format!("SHOW {} takes nothing after it", what.to_ascii_uppercase()),
                ));
            }
            let show = match what.to_ascii_uppercase().as_str() {
                "HELP" => Show::Help,
                "SESSIONS" => Show::Sessions,
                "STATS" => Show::Stats,
                "POOLS" => Show::Pools,
                "APPROVALS" => Show::Approvals,
                "GRANTS" => Show::Grants,
                "CONFIG" => Show::Config,
                "" => return Err(error(SYNTAX_ERROR, "SHOW what?")),
                _ => {
                    return Err(error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("the console has no SHOW {}", quoted(what)),
                    ));
                }
            };
            Ok(Command::Show(show))
        }
        "RELOAD" if rest.is_empty() => Ok(Command::Reload),
        "RELOAD" => Err(error(SYNTAX_ERROR, "RELOAD takes nothing after it")),
        "APPROVE" => {
            let (id, reason) = id_and_reason("APPROVE", rest)?;
            Ok(Command::Approve { id, reason })
        }
        "DENY" => {
            let (id, reason) = id_and_reason("DENY", rest)?;
            let reason = reason.ok_or_else(|| CommandError {
                code: SYNTAX_ERROR,
                message: "a denial needs a reason: the agent is told it".into(),
                hint: "DENY <id> 'why', e.g. DENY 42 'not during the release freeze'".into(),
            })?;
            Ok(Command::Deny { id, reason })
        }
        "" => Err(error(SYNTAX_ERROR, "empty command")),
        _ => Err(error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "\"{}\" is not a console command: this is the Portcullis admin console, not a database; it runs only its own commands",
                quoted(t)
            ),
        )),
    }
}

/// The first word (up to whitespace) and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn id_and_reason(verb: &str, rest: &str) -> Result<(i64, Option<String>), CommandError> {
    let (id, reason) = split_word(rest);
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| CommandError {
            code: SYNTAX_ERROR,
            message: format!(
                "{verb} needs a request id (a positive number), not \"{}\"",
                quoted(id)
            ),
            hint: format!("{verb} <id> [reason]; SHOW APPROVALS lists the ids."),
        })?;
    let reason = if reason.starts_with('\'') {
        string_literal(reason).ok_or_else(|| CommandError {
            code: SYNTAX_ERROR,
            message: "the reason's quote is not closed (write '' for a quote inside it)".into(),
            hint: format!("{verb} {id} 'reason'"),
        })?
    } else {
        reason.to_owned()
    };
    if reason.chars().count() > MAX_REASON {
        return Err(error(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("a reason is at most {MAX_REASON} characters"),
        ));
    }
    Ok((
        id,
        (!reason.trim().is_empty()).then(|| reason.trim().to_owned()),
    ))
}

/// `'it''s fine'` → `it's fine`; `None` if the literal does not end at the end of `s`.
fn string_literal(s: &str) -> Option<String> {
    let body = s.strip_prefix('\'')?;
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return chars.next().is_none().then_some(out);
        }
        out.push(c);
    }
    None
}

/// `SHOW HELP`'s rows: command and what it does.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW HELP", "this list"),
    (
        "SHOW SESSIONS",
        "the agent sessions open now: identity, database, client, engine and worker, upstream role, state, statements, bytes",
    ),
    (
        "SHOW STATS",
        "totals since start-up: sessions, statements by verdict, bytes, reloads, audit",
    ),
    (
        "SHOW POOLS",
        "upstream connection pools per database and role: in use, idle, waiting, opened, reused",
    ),
    (
        "SHOW APPROVALS",
        "held statements and grant requests waiting for a reviewer",
    ),
    ("SHOW GRANTS", "just-in-time grants pending or in force"),
    (
        "SHOW CONFIG",
        "the running configuration, key by key, secrets redacted",
    ),
    (
        "RELOAD",
        "re-read the configuration file, as SIGHUP and `portcullis reload` do",
    ),
    (
        "APPROVE <id> [reason]",
        "approve a request as shown by SHOW APPROVALS in this session (reviewers only)",
    ),
    (
        "DENY <id> <reason>",
        "deny a request; the agent is told the reason (reviewers only)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case_with_or_without_a_semicolon() {
        assert_eq!(parse("SHOW SESSIONS;"), Ok(Command::Show(Show::Sessions)));
        assert_eq!(parse("  show   stats  "), Ok(Command::Show(Show::Stats)));
        assert_eq!(parse("Show Pools;;\n"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(
            parse("APPROVE 42"),
            Ok(Command::Approve {
                id: 42,
                reason: None
            })
        );
        assert_eq!(
            parse("approve 7 planned change;"),
            Ok(Command::Approve {
                id: 7,
                reason: Some("planned change".into())
            })
        );
        assert_eq!(
            parse("DENY 3 'it''s the freeze'"),
            Ok(Command::Deny {
                id: 3,
                reason: "it's the freeze".into()
            })
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_right_code() {
        let code = |t: &str| parse(t).unwrap_err().code;
        assert_eq!(code("SHOW nonsense"), sqlstate::FEATURE_NOT_SUPPORTED);
        assert_eq!(code("DROP TABLE x"), sqlstate::FEATURE_NOT_SUPPORTED);
        assert_eq!(code("SELECT 1"), sqlstate::FEATURE_NOT_SUPPORTED);
        assert_eq!(code("SHOW"), SYNTAX_ERROR);
        assert_eq!(code("SHOW SESSIONS extra"), SYNTAX_ERROR);
        assert_eq!(code("RELOAD now"), SYNTAX_ERROR);
        assert_eq!(code("APPROVE"), SYNTAX_ERROR);
        assert_eq!(code("APPROVE -1"), SYNTAX_ERROR);
        assert_eq!(code("APPROVE abc"), SYNTAX_ERROR);
        assert_eq!(code("DENY 4"), SYNTAX_ERROR);
        assert_eq!(code("DENY 4 'open"), SYNTAX_ERROR);
        assert_eq!(code("DENY 4 'a' b"), SYNTAX_ERROR);
        assert_eq!(code(";"), SYNTAX_ERROR);
        assert_eq!(
            code(&"x".repeat(MAX_COMMAND + 1)),
            sqlstate::PROGRAM_LIMIT_EXCEEDED
        );
        let e = parse("SHOW nonsense").unwrap_err();
        assert!(e.hint.contains("SHOW HELP"), "{e:?}");
        assert!(e.message.contains("nonsense"), "{e:?}");
    }

    #[test]
    fn messages_quote_what_was_typed_safely() {
        let e = parse("DROP\u{1b}[2J TABLE x").unwrap_err();
        assert!(!e.message.contains('\u{1b}'), "{e:?}");
        let e = parse(&format!("SHOW {}", "é".repeat(100))).unwrap_err();
        assert!(e.message.ends_with('…'), "{e:?}");
    }
}
