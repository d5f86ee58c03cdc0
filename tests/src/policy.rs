//! The example masking policy of the quickstart, the bench's masked target and the
//! masking end-to-end tests: one place, so what the README shows is what is tested.

/// `[mask]` for the sample financial schema (`tests/src/dataset.rs`). Appended to a
/// gateway config; the `auditor` role sees raw values.
pub const QUICKSTART_MASK_POLICY: &str = r#"
[mask]
# Demo key: a deployment sets hash_key_env and keeps the key out of the file.
hash_key = "portcullis-demo-key-change-me-0001"
exempt_roles = ["auditor"]
# Computed columns no rule names (`ssn || ''`, row_to_json(a)) are scanned by every
# detector and what is found is redacted ("refuse" and "pass" are the alternatives).
unattributed = "scan"

[[mask.rule]]
name = "ssn"
column = "public.accounts.ssn"
strategy = "format_preserving"

[[mask.rule]]
name = "card"
column = "public.*.card_number"
strategy = "partial"
keep_last = 4
mask_char = "*"

[[mask.rule]]
name = "routing"
column = "public.accounts.routing_number"
strategy = "format_preserving"

[[mask.rule]]
name = "iban"
column = "public.accounts.iban"
strategy = "hash"

[[mask.rule]]
name = "email"
column = "public.accounts.email"
strategy = "partial"
keep_first = 1
mask_char = "*"

# Expressions and views lose the table OID: catch the usual names too.
[[mask.rule]]
name = "by-name"
column_regex = "(?i)^(ssn|.*card_number|routing_number|iban)$"
strategy = "redact"
text = "[MASKED]"

# Free text: find and redact what validates as a card, SSN, IBAN, routing number, e-mail.
[[mask.rule]]
name = "free-text"
column_regex = "(?i)^(notes|memo)$"
detectors = ["card", "ssn", "iban", "email", "routing"]
strategy = "redact"
text = "[REDACTED]"
# Free text is scanned, not hidden: agents may filter and sort by it (an oracle on what
# the scan would redact, accepted for free text); functions over it are still refused.
permit = ["compare", "pattern", "order"]
"#;

/// `[policy]` of the quickstart and the policy end-to-end tests: agents read and write
/// rows; destructive statements wait for a reviewer; session escapes and anything the
/// gateway cannot see into are refused, as is what no rule allows.
pub const QUICKSTART_STATEMENT_POLICY: &str = r#"
[policy]
enforce = true
# What no rule below decides is refused.
default = "deny"

# DROP, TRUNCATE, ALTER, and DELETE/UPDATE that do not restrict rows wait for a person.
[[policy.rule]]
name = "hold-destructive"
roles = ["agent"]
properties = ["drop", "truncate", "alter", "unbounded"]
action = "hold"
message = "destructive statements (DROP, TRUNCATE, ALTER, DELETE or UPDATE without a restricting WHERE) need a reviewer's approval"

# Settings that would undo the session's guarantees.
[[policy.rule]]
name = "deny-session-escapes"
properties = ["reset_all", "lexer_setting", "protected_setting"]
action = "deny"
message = "this setting would undo guarantees the gateway gives for the session"

# Transactions left behind the session, and locks that stop every reader.
[[policy.rule]]
name = "deny-lingering-locks"
properties = ["two_phase", "exclusive_lock"]
action = "deny"
message = "two-phase transactions and exclusive table locks would block other sessions beyond this one"

[[policy.rule]]
name = "agents-read-write"
roles = ["agent"]
class = ["read", "write", "txn", "session", "utility"]
action = "allow"

[[policy.rule]]
name = "auditors-read"
roles = ["auditor"]
class = ["read", "txn", "session", "utility"]
action = "allow"
"#;

/// The quickstart's `[[role]]`s: the agent's sessions run as the writer role, the
/// auditor's as the read-only one ([`crate::create_gateway_role`] makes both). The writer
/// comes last: a session holding both runs as it.
pub const QUICKSTART_ROLES: &str = r#"
[[role]]
name = "auditor"
upstream_role = "portcullis_read"
description = "reads the sample tables"

[[role]]
name = "agent"
upstream_role = "portcullis_write"
description = "reads and writes rows of the sample tables"
"#;

/// `policy` (a `[mask]` section) with every statement-side use of masked columns
/// permitted, for tests of the result-side masking: the second line, which covers views
/// and functions the gateway cannot see into. Statement-side, the quickstart policy
/// refuses `upper(ssn)` before it runs; these tests need it to run.
pub fn result_side_only(policy: &str) -> String {
    let mut out = String::with_capacity(policy.len() + 512);
    for line in policy.lines() {
        if line.trim_start().starts_with("permit =") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[[mask.rule]]" {
            out.push_str(
                "permit = [\"compare\", \"pattern\", \"order\", \"function\", \"write\"]\n",
            );
        }
    }
    out
}

/// The quickstart's `[approvals]`, after `state_dir` (the harness puts the store in the
/// gateway's temporary directory) and before `[approvals.http]` (the quickstart adds its
/// port). The reviewer's token is a demo value, like the identities' secrets.
pub const QUICKSTART_APPROVALS: &str = r#"
# A held statement waits at most this long for a decision.
timeout_secs = 900
notice_interval_secs = 10

[[approvals.reviewer]]
name = "reviewer"
# `portcullis approvals hash-token reviewer-demo-token`; never reuse it outside a demo.
token_sha256 = "789d3e19ceda3c21862155f9474c18ff9687193e771ac1f0f077c4a99300fd45"
"#;

/// The demo token whose hash [`QUICKSTART_APPROVALS`] holds.
pub const QUICKSTART_REVIEWER_TOKEN: &str = "reviewer-demo-token";
