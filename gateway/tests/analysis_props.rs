//! The analysis and the gate never panic, whatever the text: arbitrary bytes, and token
//! soups from SQL's own vocabulary that reach deep into the grammar (which random bytes
//! rarely do). `gateway/fuzz` has the coverage-guided version (`statement_gate`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis::analysis;
use portcullis::mask::{MaskConfig, Policy, RuleConfig, StrategyKind, Subject};
use portcullis::policy::{PolicyConfig, StatementGate, StatementPolicy};
use portcullis::session::hooks::Via;
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "accounts",
    "a",
    "ssn",
    "x.ssn",
    "a.*",
    "*",
    "(",
    ")",
    ",",
    ";",
    "=",
    "<",
    "LIKE",
    "'485'",
    "$1",
    "1",
    "AS",
    "JOIN",
    "ON",
    "USING",
    "(ssn)",
    "NATURAL",
    "LATERAL",
    "WITH",
    "x",
    "RECURSIVE",
    "UNION",
    "ALL",
    "VALUES",
    "INSERT",
    "INTO",
    "UPDATE",
    "SET",
    "DELETE",
    "RETURNING",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "count(*)",
    "reverse(",
    "upper(",
    "::text",
    "CASE",
    "WHEN",
    "THEN",
    "END",
    "EXISTS",
    "IN",
    "NOT",
    "AND",
    "OR",
    "IS",
    "NULL",
    "COPY",
    "TO",
    "STDOUT",
    "PROGRAM",
    "'x'",
    "EXPLAIN",
    "ANALYZE",
    "PREPARE",
    "p",
    "EXECUTE",
    "CREATE",
    "TABLE",
    "t",
    "VIEW",
    "DO",
    "$$",
    "BEGIN",
    "COMMIT",
    "OVER",
    "PARTITION",
    "ARRAY",
    "[1]",
    "ROW",
    "DISTINCT",
    "FILTER",
    "MERGE",
    "MATCHED",
    "TRUNCATE",
    "DROP",
    "ALTER",
    "GRANT",
    "RESET",
    "SHOW",
    "search_path",
    "FOR",
    "UPDATE",
];

fn gate() -> StatementGate {
    let mut mask = MaskConfig::default();
    let mut r = RuleConfig::new(StrategyKind::Redact);
    r.name = Some("ssn".into());
    r.column = Some("public.accounts.ssn".into());
    mask.rules.push(r);
    let mut policy = PolicyConfig::default();
    policy.default = portcullis::policy::Action::Allow;
    StatementGate::new(
        Arc::new(ArcSwap::from_pointee(
            StatementPolicy::compile(Some(&policy)).unwrap(),
        )),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..300), parse in any::<bool>()) {
        let mut g = gate();
        let source = if parse { Via::Parse(b"s") } else { Via::SimpleQuery };
        let _ = g.check(&bytes, source);
        let _ = g.check(b"EXECUTE s", Via::SimpleQuery);
    }

    #[test]
    fn token_soup_is_analysed_or_refused(toks in proptest::collection::vec(0..TOKENS.len(), 1..40)) {
        let sql: Vec<&str> = toks.iter().map(|&i| TOKENS[i]).collect();
        let sql = sql.join(" ");
        let _ = analysis::analyze(&sql);
        let mut g = gate();
        let _ = g.check(sql.as_bytes(), Via::SimpleQuery);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let mut g = gate();
    for depth in [50, 500, 5000] {
        let parens = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        let subqueries = format!(
            "SELECT * FROM {}accounts{}",
            "(SELECT * FROM ".repeat(depth),
            ") x".repeat(depth)
        );
        // Parentheses make no tree nodes: read at any depth.
        g.check(parens.as_bytes(), Via::SimpleQuery).unwrap();
        // Nested queries do; too deep for the grammar's own stack (PostgreSQL answers
        // "memory exhausted", 42601) or the tree reader's depth limit, they are refused.
        let verdict = g.check(subqueries.as_bytes(), Via::SimpleQuery);
        if depth == 5000 {
            let r = verdict.expect_err("5000 nested queries must be refused");
            assert!(["42501", "42601"].contains(&r.code), "{r:?}");
        }
    }
}
