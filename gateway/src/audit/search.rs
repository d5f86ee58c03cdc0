//! Reading the log as an auditor does: statements found by who, what, when and how they
//! ended ([`search`]), and one session replayed in order ([`show`]).
//!
//! Both read the segments from the start, one record at a time, so memory holds the
//! matches, not the log. They read what is there; whether it is intact is
//! `portcullis audit verify`'s question.

use std::collections::HashMap;
use std::path::Path;

use portcullis_auditlog::segment::{Item, Reader, SegmentError};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("record {index} is not JSON: {why}")]
    NotJson { index: u64, why: String },
}

/// What an auditor asks for; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub identity: Option<String>,
    /// A table read or written (as the statement named it, or its last name part).
    pub table: Option<String>,
    /// `read`, `write`, `ddl`, …: any statement of the text.
    pub class: Option<String>,
    /// `allow`, `deny`, `hold`, `approved`, …
    pub verdict: Option<String>,
    /// RFC 3339 bounds (a date alone is its midnight, UTC).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only statements whose result had values masked (`true`) or had none (`false`).
    pub masked: Option<bool>,
    /// Only statements a reviewer of this name approved.
    pub approved_by: Option<String>,
    pub session: Option<String>,
    /// Statements judged with this grant's roles; with `grants`, this grant's events.
    pub grant: Option<i64>,
    /// Grant events (`grant` records) instead of statements; `identity`, `since`,
    /// `until` and `grant` narrow them.
    pub grants: bool,
}

/// One statement (or refusal) and what became of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    pub identity: Option<String>,
    pub record: Value,
    pub outcome: Option<Value>,
    /// Reviewers who approved it, when it ran after an approval.
    pub approved_by: Vec<String>,
}

impl Hit {
    pub fn masked_total(&self) -> u64 {
        self.outcome
            .as_ref()
            .and_then(|o| o["masked"].as_array())
            .map_or(0, |m| m.iter().filter_map(|p| p[1].as_u64()).sum())
    }
}

fn records(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<(u64, Value), SearchError>>, SearchError> {
    Ok(Reader::open(dir, 0)?.filter_map(|item| match item {
        Ok(Item::Record { index, bytes }) => Some(
            serde_json::from_slice(&bytes)
                .map(|v| (index, v))
                .map_err(|e| SearchError::NotJson {
                    index,
                    why: e.to_string(),
                }),
        ),
        // A torn tail or a gap is verify's to report; search reads what is whole.
        Ok(_) => None,
        Err(e) => Some(Err(e.into())),
    }))
}

fn bound(b: &str) -> String {
    if b.len() == 10 {
        format!("{b}T00:00:00.000000Z")
    } else {
        b.to_owned()
    }
}

fn str_list(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn matches_table(record: &Value, table: &str) -> bool {
    let p = &record["policy"];
    str_list(&p["reads"])
        .chain(str_list(&p["writes"]))
        .any(|t| t == table || t.rsplit('.').next() == Some(table))
}

/// The statements and refusals that match, in log order, with their outcomes.
pub fn search(dir: &Path, f: &Filter) -> Result<Vec<Hit>, SearchError> {
    let since = f.since.as_deref().map(bound);
    let until = f.until.as_deref().map(bound);
    let mut identities: HashMap<String, String> = HashMap::new();
    // Approvals waiting for the statement they released, per session.
    let mut approvals: HashMap<(String, i64), Vec<String>> = HashMap::new();
    let mut hits: Vec<Hit> = Vec::new();
    let mut open: HashMap<(String, u64), usize> = HashMap::new();
    for r in records(dir)? {
        let (_, v) = r?;
        let session = v["session"].as_str().unwrap_or_default().to_owned();
        match v["kind"].as_str().unwrap_or_default() {
            "session_start" => {
                identities.insert(session, v["identity"].as_str().unwrap_or_default().into());
            }
            "approval_decision" if v["action"] == "approve" || v["action"] == "edit" => {
                if let Some(id) = v["request"].as_i64() {
                    approvals.insert(
                        (session, id),
                        str_list(&v["reviewers"]).map(str::to_owned).collect(),
                    );
                }
            }
            "outcome" => {
                if let Some(stmt) = v["stmt"].as_u64()
                    && let Some(at) = open.remove(&(session, stmt))
                {
                    hits[at].outcome = Some(v);
                }
            }
            "grant" if f.grants => {
                let time = v["time"].as_str().unwrap_or_default();
                let keep = f
                    .identity
                    .as_ref()
                    .is_none_or(|i| v["identity"].as_str() == Some(i))
                    && f.grant.is_none_or(|g| v["grant"].as_i64() == Some(g))
                    && since.as_ref().is_none_or(|s| time >= s.as_str())
                    && until.as_ref().is_none_or(|u| time <= u.as_str());
                if keep {
                    hits.push(Hit {
                        identity: v["identity"].as_str().map(str::to_owned),
                        record: v,
                        outcome: None,
                        approved_by: Vec::new(),
                    });
                }
            }
            kind @ ("statement" | "refusal") if !f.grants => {
                let identity = identities.get(&session).cloned();
                let time = v["time"].as_str().unwrap_or_default();
                let approved_by = v["approval"]
                    .as_i64()
                    .and_then(|id| approvals.remove(&(session.clone(), id)))
                    .unwrap_or_default();
                let keep = f
                    .identity
                    .as_ref()
                    .is_none_or(|i| identity.as_ref() == Some(i))
                    && f.session.as_ref().is_none_or(|s| *s == session)
                    && f.table.as_ref().is_none_or(|t| matches_table(&v, t))
                    && f.class
                        .as_ref()
                        .is_none_or(|c| str_list(&v["policy"]["class"]).any(|x| x == c))
                    && f.verdict.as_ref().is_none_or(|w| {
                        v["policy"]["verdict"].as_str() == Some(w)
                            || (w == "deny" && kind == "refusal")
                    })
                    && since.as_ref().is_none_or(|s| time >= s.as_str())
                    && until.as_ref().is_none_or(|u| time <= u.as_str())
                    && f.approved_by
                        .as_ref()
                        .is_none_or(|a| approved_by.contains(a))
                    && f.grant.is_none_or(|g| {
                        v["policy"]["grants"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|x| x.as_i64() == Some(g)))
                    });
                if keep {
                    if kind == "statement"
                        && let Some(stmt) = v["stmt"].as_u64()
                    {
                        open.insert((session, stmt), hits.len());
                    }
                    hits.push(Hit {
                        identity,
                        record: v,
                        outcome: None,
                        approved_by,
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(m) = f.masked {
        hits.retain(|h| (h.masked_total() > 0) == m);
    }
    Ok(hits)
}

/// Every record of one session, in log order.
pub fn show(dir: &Path, session: &str) -> Result<Vec<Value>, SearchError> {
    let mut out = Vec::new();
    for r in records(dir)? {
        let (_, v) = r?;
        if v["session"] == session {
            out.push(v);
        }
    }
    Ok(out)
}

/// A table of hits for a terminal: time, identity, statement, verdict, outcome, SQL;
/// grant events as `audit show` describes them.
pub fn render_table(hits: &[Hit]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if hits.iter().all(|h| h.record["kind"] == "grant") && !hits.is_empty() {
        for h in hits {
            let _ = writeln!(out, "{}", describe(&h.record));
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<27} {:<12} {:<18} {:<9} {:<10} {:<16} {:>7} {:>6}  sql",
        "time", "identity", "session/stmt", "class", "verdict", "outcome", "rows", "masked"
    );
    for h in hits {
        let r = &h.record;
        let class: Vec<&str> = str_list(&r["policy"]["class"]).collect();
        let verdict = if r["kind"] == "refusal" {
            "refused".to_owned()
        } else {
            r["policy"]["verdict"].as_str().unwrap_or("-").to_owned()
        };
        let outcome = match (&h.outcome, r["kind"].as_str()) {
            (_, Some("refusal")) => r["sqlstate"].as_str().unwrap_or("-").to_owned(),
            (Some(o), _) => match o["sqlstate"].as_str() {
                Some(code) => format!("{} {code}", o["status"].as_str().unwrap_or("")),
                None => o["tags"][0].as_str().unwrap_or("-").to_owned(),
            },
            (None, _) => "(no outcome)".into(),
        };
        let sql = match &r["sql"] {
            Value::String(s) => s.replace(['\n', '\t'], " "),
            other => other.to_string(),
        };
        let sql: String = if sql.chars().count() > 80 {
            sql.chars().take(79).chain(['…']).collect()
        } else {
            sql
        };
        let _ = writeln!(
            out,
            "{:<27} {:<12} {:<18} {:<9} {:<10} {:<16} {:>7} {:>6}  {sql}",
            r["time"].as_str().unwrap_or("-"),
            h.identity.as_deref().unwrap_or("?"),
            format!(
                "{}/{}",
                r["session"].as_str().unwrap_or("?").get(..8).unwrap_or("?"),
                r["stmt"]
            ),
            if class.is_empty() {
                "-".into()
            } else {
                class.join(",")
            },
            verdict,
            outcome,
            h.outcome
                .as_ref()
                .map_or("-".into(), |o| o["rows"].to_string()),
            h.masked_total(),
        );
    }
    out
}

/// One record as a line for `audit show`.
pub fn describe(r: &Value) -> String {
    let time = r["time"].as_str().unwrap_or("-");
    let sql = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let body = match r["kind"].as_str().unwrap_or_default() {
        "session_start" => format!(
            "session start: {} ({}) from {}:{}, database {}, as {}, tls {}, application {}",
            r["identity"].as_str().unwrap_or("?"),
            r["auth"].as_str().unwrap_or("?"),
            r["client_addr"].as_str().unwrap_or("?"),
            r["client_port"],
            r["database"].as_str().unwrap_or("?"),
            r["upstream_role"].as_str().unwrap_or("?"),
            r["tls"].as_str().unwrap_or("none"),
            r["application_name"].as_str().unwrap_or("-"),
        ),
        "session_end" => format!(
            "session end: {} after {} ms, {} statements",
            r["reason"].as_str().unwrap_or("?"),
            r["duration_ms"],
            r["statements"]
        ),
        "statement" => format!(
            "#{} {} [{}{}] {}{}",
            r["stmt"],
            r["via"].as_str().unwrap_or("?"),
            r["policy"]["verdict"].as_str().unwrap_or("-"),
            r["policy"]["rule"]
                .as_str()
                .map(|x| format!(" by {x}"))
                .unwrap_or_default(),
            sql(&r["sql"]),
            if r["params"].is_array() {
                format!("  params {}", r["params"])
            } else {
                String::new()
            }
        ),
        "outcome" => format!(
            "#{} -> {} {} rows {} in {} us, {} bytes to the agent{}, sha256 {}",
            r["stmt"],
            r["status"].as_str().unwrap_or("?"),
            r["sqlstate"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| r["tags"].to_string()),
            r["rows"],
            r["duration_us"],
            r["bytes_to_agent"],
            match r["masked"].as_array() {
                Some(m) if !m.is_empty() => format!(", masked {}", r["masked"]),
                _ => String::new(),
            },
            r["result_sha256"].as_str().unwrap_or("?"),
        ),
        "refusal" => format!(
            "#{} REFUSED {} {}: {}",
            r["stmt"],
            r["sqlstate"].as_str().unwrap_or("?"),
            sql(&r["sql"]),
            r["message"].as_str().unwrap_or("?")
        ),
        "approval_request" => format!(
            "approval request {} ({} approvers): {}",
            r["request"],
            r["approvers"],
            r["sql"].as_str().unwrap_or("?")
        ),
        "approval_decision" => format!(
            "approval request {}: {} by {}{}{}",
            r["request"],
            r["action"].as_str().unwrap_or("?"),
            r["reviewers"],
            r["reason"]
                .as_str()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            r["edited_sql"]
                .as_str()
                .map(|x| format!(", edited to: {x}"))
                .unwrap_or_default()
        ),
        "grant" => format!(
            "grant {} {}: {} to {} for {}s{}{} by {}{}",
            r["grant"],
            r["event"].as_str().unwrap_or("?"),
            str_list(&r["roles"]).collect::<Vec<_>>().join(","),
            r["identity"].as_str().unwrap_or("?"),
            r["duration_secs"],
            match str_list(&r["tables"]).collect::<Vec<_>>() {
                t if t.is_empty() => String::new(),
                t => format!(" on {}", t.join(",")),
            },
            r["ends"]
                .as_str()
                .map(|e| format!(" until {e}"))
                .unwrap_or_default(),
            match str_list(&r["by"]).collect::<Vec<_>>() {
                b if b.is_empty() => "-".to_owned(),
                b => b.join(","),
            },
            r["note"]
                .as_str()
                .or(r["reason"].as_str())
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
        ),
        other => format!("{other}: {r}"),
    };
    format!("{time}  {body}")
}
