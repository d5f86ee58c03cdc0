//! Any bytes as the SQL of a `Query` or a `Parse`, in a session with masking rules and a
//! default-deny policy: the gate answers allow or a refusal, never panics. Statements
//! that parse are walked in full, so this fuzzes the analysis of every node shape the
//! grammar produces from the input.
#![no_main]

use std::sync::Arc;

use arc_swap::ArcSwap;
use libfuzzer_sys::fuzz_target;
use portcullis::mask::{MaskConfig, Policy, Subject};
use portcullis::policy::{PolicyConfig, StatementGate, StatementPolicy};
use portcullis::session::hooks::Via;

const CONFIG: &str = r#"
[mask]
[[mask.rule]]
name = "ssn"
column = "public.accounts.ssn"
strategy = "redact"
[[mask.rule]]
name = "by-name"
column_regex = "(?i)card"
strategy = "redact"

[policy]
default = "deny"
[[policy.rule]]
name = "reads"
class = ["read", "write", "txn", "session"]
action = "allow"
[[policy.rule]]
name = "hold"
properties = ["unbounded", "drop"]
action = "hold"
"#;

#[derive(serde::Deserialize)]
struct Sections {
    mask: MaskConfig,
    policy: PolicyConfig,
}

fuzz_target!(|data: &[u8]| {
    let s: Sections = toml::from_str(CONFIG).unwrap();
    let mut gate = StatementGate::new(
        Arc::new(ArcSwap::from_pointee(StatementPolicy::compile(Some(&s.policy)).unwrap())),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    );
    // The first byte picks the path; a second statement checks the session state the
    // first one left (prepared names, search_path) is usable.
    let Some((&how, sql)) = data.split_first() else { return };
    let source = if how & 1 == 0 { Via::SimpleQuery } else { Via::Parse(b"p") };
    let _ = gate.check(sql, source);
    let _ = gate.check(b"EXECUTE p", Via::SimpleQuery);
});
