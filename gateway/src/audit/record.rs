//! The audit record schema (version 1) and its encoding.
//!
//! A record is one JSON object on one line. Every record starts with the same fields, in
//! this order: `v` (schema version), `seq` (its index in the log, written by the log
//! writer), `time` (RFC 3339, UTC, microseconds, when the gateway saw the event),
//! `gateway` (the gateway's id) and `kind`; the fields of each kind follow. The schema is
//! documented field by field in `docs/audit.md`.
//!
//! A record is encoded where the event happens (the session's thread), without `v` and
//! `seq`: the writer, which alone knows the index, prepends `{"v":1,"seq":N,` to the
//! [`Encoded`] bytes, so the writer thread only copies.

use std::time::SystemTime;

use serde::Serialize;

/// The schema version in every record's `v`.
pub const VERSION: u32 = 1;

/// A record without its `v` and `seq`: `"time":…,"gateway":…,"kind":…,…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(pub Vec<u8>);

impl Encoded {
    /// The record as it goes into the log, with its index.
    pub fn with_seq(&self, seq: u64) -> Vec<u8> {
        portcullis_auditlog::journal::with_seq(seq, &self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Encodes a record body of `kind` for `gateway`, stamped now.
pub fn encode(gateway: &str, body: &Body<'_>) -> Encoded {
    encode_at(gateway, SystemTime::now(), body)
}

pub fn encode_at(gateway: &str, at: SystemTime, body: &Body<'_>) -> Encoded {
    // Serialising these types cannot fail (no maps with non-string keys, no I/O); the
    // fallback keeps the log whole should it ever.
    Encoded(
        portcullis_auditlog::journal::body(at, gateway, body).unwrap_or_else(|e| {
            portcullis_auditlog::journal::body(
                at,
                gateway,
                &Body::RecordsLost {
                    count: 1,
                    reason: &format!("a record could not be encoded: {e}"),
                },
            )
            .unwrap_or_default()
        }),
    )
}

/// `2026-12-01T14:00:00.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    portcullis_auditlog::time::format_micros(t)
}

/// Text from the wire: a JSON string when it is UTF-8 (it nearly always is), else
/// `{"base64": …}` so the exact bytes survive.
#[derive(Debug, Clone)]
pub struct WireText<'a>(pub &'a [u8]);

impl Serialize for WireText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => {
                use base64::Engine;
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(self.0),
                )?;
                m.end()
            }
        }
    }
}

/// A bound parameter as the audit policy keeps it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamRecord {
    /// Kept: text-format values as text, binary ones as `{"base64": …}`.
    Value {
        value: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        base64: Option<String>,
    },
    /// Hashed: SHA-256 of the value's bytes as sent (hex); NULL stays `null`.
    Hashed {
        sha256: Option<String>,
    },
    Dropped {
        dropped: bool,
    },
}

/// What the statement policy knew about a statement.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PolicyFacts {
    /// Per statement of the text: `read`, `write`, `ddl`, … (several for a
    /// multi-statement query).
    pub class: Vec<&'static str>,
    /// Tables read and written, as named (qualified when the statement qualified them).
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    /// The rule that decided, when one did (`None`: the policy's default or a built-in).
    pub rule: Option<String>,
    /// `allow`, `deny`, `hold`, `approved`.
    pub verdict: &'static str,
    /// The grants whose roles the statement was judged with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<i64>,
}

/// The kinds of record and their fields. Field names are the schema: renaming one is a
/// new schema version.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body<'a> {
    GatewayStart {
        version: &'a str,
        config_sha256: String,
        pid: u32,
    },
    GatewayStop {
        reason: &'a str,
    },
    SessionStart {
        session: &'a str,
        identity: &'a str,
        auth: &'a str,
        client_addr: String,
        client_port: u16,
        tls: Option<&'a str>,
        application_name: Option<&'a str>,
        database: &'a str,
        upstream_role: &'a str,
    },
    /// A connection that did not become a session: authentication failed, start-up was
    /// refused or took too long.
    LoginRefused {
        /// The user name it gave, if it got that far.
        identity: Option<&'a str>,
        auth: &'a str,
        client_addr: String,
        client_port: u16,
        tls: Option<&'a str>,
        reason: &'a str,
    },
    SessionEnd {
        session: &'a str,
        reason: &'a str,
        duration_ms: u64,
        statements: u64,
    },
    /// A statement as the server received it (or, for `forwarded: false`, would have).
    Statement {
        session: &'a str,
        /// Who asked (also in the session's `session_start`; here so each record stands
        /// alone in a SIEM).
        identity: &'a str,
        stmt: u64,
        /// `simple`, `extended` or `function_call`.
        via: &'a str,
        sql: WireText<'a>,
        /// `Bind` values (extended protocol); `null` for a simple query.
        params: Option<Vec<ParamRecord>>,
        /// PostgreSQL's own fingerprint of the statement (literals ignored), as hex.
        fingerprint: Option<String>,
        policy: Option<&'a PolicyFacts>,
        /// Statements a reviewer approved carry the approval request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval: Option<i64>,
    },
    Outcome {
        session: &'a str,
        stmt: u64,
        /// `complete`, `error`, `refused` (the gateway refused the result), `not_run`
        /// (the server skipped it after an earlier error in its batch, or the gateway
        /// could not record it).
        status: &'a str,
        tags: &'a [String],
        rows: u64,
        sqlstate: Option<&'a str>,
        duration_us: u64,
        bytes_to_agent: u64,
        /// Values masked, per masking rule and per detector (`detector:card`, …).
        masked: &'a [(String, u64)],
        /// SHA-256 (hex) of the exact bytes the agent received for this statement (see
        /// the schema document for where an answer starts and ends).
        result_sha256: String,
    },
    /// A statement the gateway refused before it reached the server.
    Refusal {
        session: &'a str,
        identity: &'a str,
        stmt: u64,
        via: &'a str,
        sql: WireText<'a>,
        sqlstate: &'a str,
        message: &'a str,
        policy: Option<&'a PolicyFacts>,
    },
    ApprovalRequest {
        session: &'a str,
        request: i64,
        sql: &'a str,
        rule: Option<&'a str>,
        approvers: u32,
    },
    ApprovalDecision {
        session: &'a str,
        request: i64,
        /// `approve`, `deny`, `edit`, `timeout`, `withdrawn`.
        action: &'a str,
        reviewers: &'a [String],
        reason: Option<&'a str>,
        sql: &'a str,
        edited_sql: Option<&'a str>,
    },
    /// A just-in-time grant changed: `requested`, `approved` (it is active from
    /// `starts` to `ends`), `denied` (or timed out, withdrawn), `revoked`, `expired`.
    Grant {
        grant: i64,
        event: &'a str,
        identity: &'a str,
        roles: &'a [String],
        databases: &'a [String],
        classes: &'a [String],
        tables: &'a [String],
        /// Why it was asked for.
        reason: &'a str,
        requested_by: &'a str,
        /// Who did this: the requester, the approvers, who denied or revoked it (none
        /// for an expiry or a timeout).
        by: &'a [String],
        /// Why it was denied, revoked or ended without a decision.
        note: Option<&'a str>,
        duration_secs: u64,
        starts: Option<String>,
        ends: Option<String>,
    },
    ConfigReload {
        by: &'a str,
        ok: bool,
        error: Option<&'a str>,
        policy_before_sha256: &'a str,
        policy_after_sha256: &'a str,
    },
    /// Someone logged in to the admin console (`crate::console`).
    ConsoleLogin {
        identity: &'a str,
        client_addr: String,
        client_port: u16,
        tls: Option<&'a str>,
    },
    /// A console command that changes something: `reload`, `approve`, `deny`.
    ConsoleCommand {
        identity: &'a str,
        client_addr: String,
        client_port: u16,
        command: &'a str,
        /// The approval request it acts on.
        request: Option<i64>,
        ok: bool,
        error: Option<&'a str>,
    },
    /// The log found a torn record on opening (the gateway died mid-write) and moved
    /// its bytes aside.
    LogRecovered {
        torn_bytes: u64,
        moved_to: String,
    },
    /// Records that could not be queued (the log was failing and its buffer full).
    RecordsLost {
        count: u64,
        reason: &'a str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_record_is_one_line_with_the_common_fields_first() {
        let at = UNIX_EPOCH + Duration::from_micros(1_764_597_600_123_456);
        let e = encode_at(
            "gw-1",
            at,
            &Body::SessionEnd {
                session: "gw-1/7",
                reason: "client closed",
                duration_ms: 12,
                statements: 3,
            },
        );
        let text = String::from_utf8(e.with_seq(42)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"seq":42,"time":"2025-12-01T14:00:00.123456Z","gateway":"gw-1","kind":"session_end","session":"gw-1/7","reason":"client closed","duration_ms":12,"statements":3}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "session_end");
    }

    #[test]
    fn text_that_is_not_utf8_keeps_its_bytes() {
        let e = encode(
            "g",
            &Body::Statement {
                session: "s",
                identity: "agent",
                stmt: 1,
                via: "simple",
                sql: WireText(b"select '\xff\n'"),
                params: None,
                fingerprint: None,
                policy: None,
                approval: None,
            },
        );
        let text = String::from_utf8(e.0.clone()).unwrap();
        assert!(
            text.contains(r#""sql":{"base64":"c2VsZWN0ICf/Cic="}"#),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn dates_are_proleptic_gregorian() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}
