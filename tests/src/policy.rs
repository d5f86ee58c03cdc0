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
"#;
