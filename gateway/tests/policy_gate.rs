//! The statement gate with the quickstart's policy and masking rules (read from
//! `deploy/quickstart.toml`, the file the README shows), against the SQL corpus and
//! against the ways of reading masked values around the mask.
//!
//! The end-to-end tests (`tests/tests/policy.rs`) run the same kinds of statement against
//! a real PostgreSQL 15 through real clients; these check the decisions themselves, fast
//! and for many more statements.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis::analysis::{self, Class};
use portcullis::mask::{MaskConfig, Policy, Subject};
use portcullis::policy::{PolicyConfig, StatementGate, StatementPolicy};
use portcullis::session::hooks::Refusal;
use portcullis::session::hooks::{Verdict, Via};

#[derive(serde::Deserialize)]
struct Sections {
    mask: MaskConfig,
    policy: PolicyConfig,
}

fn quickstart() -> Sections {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/quickstart.toml"
    ))
    .unwrap();
    toml::from_str(&text).unwrap()
}

fn gate_for(identity: &str, roles: &[&str]) -> StatementGate {
    let s = quickstart();
    StatementGate::new(
        Arc::new(ArcSwap::from_pointee(
            StatementPolicy::compile(Some(&s.policy)).unwrap(),
        )),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new(identity, roles.iter().copied()),
        "portcullis",
    )
}

fn agent() -> StatementGate {
    gate_for("agent", &["agent"])
}

fn check(g: &mut StatementGate, sql: &str) -> Result<(), Refusal> {
    g.check(sql.as_bytes(), Via::SimpleQuery)
}

/// Blocks of the corpus: (expected, why, sql).
fn corpus() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sql-corpus.sql"
    ))
    .unwrap();
    text.split("\n-- ---\n")
        .skip(1)
        .map(|block| {
            let (head, sql) = block.split_once('\n').unwrap_or((block, ""));
            let head = head.trim_start_matches("-- expect: ");
            let (expect, why) = head.split_once(';').unwrap_or((head, ""));
            (
                expect.trim().to_owned(),
                why.trim().to_owned(),
                sql.to_owned(),
            )
        })
        .collect()
}

/// The class of a multi-statement block: its most consequential statement's.
fn block_class(sql: &str) -> Option<Class> {
    let rank = |c: Class| match c {
        Class::Txn => 0,
        Class::Session | Class::Utility => 1,
        Class::Read => 2,
        Class::Write => 3,
        Class::Ddl => 4,
        Class::Dcl => 5,
        Class::Admin => 6,
        Class::Unknown => 7,
    };
    let a = analysis::analyze(sql).ok()?;
    a.statements
        .iter()
        .map(|s| s.class)
        .max_by_key(|c| rank(*c))
}

#[test]
fn the_corpus_is_read_as_postgres_reads_it() {
    let blocks = corpus();
    assert!(blocks.len() > 100, "corpus has {} blocks", blocks.len());
    let mut wrong = Vec::new();
    for (expect, why, sql) in &blocks {
        let mut g = agent();
        let verdict = check(&mut g, sql);
        let ok = match expect.as_str() {
            "invalid" => matches!(&verdict, Err(r) if r.code == "42601"),
            // Must never pass as allowed for an agent: refused or held.
            "danger" => matches!(&verdict, Err(r) if r.code == "42501"),
            class => {
                let want: Class = serde_json::from_value(serde_json::Value::String(class.into()))
                    .unwrap_or_else(|_| panic!("corpus class {class}"));
                block_class(sql) == Some(want)
            }
        };
        if !ok {
            wrong.push(format!(
                "{expect} ({why}): {sql:?}\n    got class {:?}, verdict {:?}",
                block_class(sql),
                verdict.map_err(|r| (r.code, r.message))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misread:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Ways to read a masked value around the result masking with plain SQL: each is refused
/// before it runs, naming the column and the rule.
#[test]
fn masked_columns_cannot_be_read_around() {
    let leaks = [
        (
            "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM accounts",
            "ssn",
        ),
        (
            "SELECT encode(convert_to(ssn, 'UTF8'), 'hex') FROM accounts",
            "ssn",
        ),
        ("SELECT reverse(ssn) FROM accounts", "ssn"),
        ("SELECT split_part(ssn, '-', 1) FROM accounts", "ssn"),
        (
            "SELECT substr(card_number, 1, 8) FROM accounts",
            "card_number",
        ),
        ("SELECT id FROM accounts WHERE ssn LIKE '485-58%'", "ssn"),
        (
            "SELECT count(*) FROM accounts WHERE ssn = '485-58-2913'",
            "ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn IN ('485-58-2913', '1')",
            "ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn BETWEEN '4' AND '5'",
            "ssn",
        ),
        ("SELECT id FROM accounts WHERE ssn > $1", "ssn"),
        ("SELECT id FROM accounts WHERE ssn IS NULL", "ssn"),
        ("SELECT a.ssn::text FROM accounts a", "a.ssn"),
        ("SELECT CAST(iban AS varchar(4)) FROM accounts", "iban"),
        ("SELECT ssn FROM accounts ORDER BY ssn", "ssn"),
        ("SELECT ssn, id FROM accounts ORDER BY 1", "ssn"),
        ("SELECT ssn AS s FROM accounts ORDER BY s", "s"),
        ("SELECT id FROM accounts ORDER BY email DESC", "email"),
        (
            "SELECT row_number() OVER (ORDER BY ssn) FROM accounts",
            "ssn",
        ),
        ("SELECT min(ssn) FROM accounts", "ssn"),
        ("SELECT string_agg(ssn, ',') FROM accounts", "ssn"),
        ("SELECT array_agg(card_number) FROM accounts", "card_number"),
        ("SELECT ssn || '' FROM accounts", "ssn"),
        ("SELECT CASE WHEN ssn > '5' THEN 1 END FROM accounts", "ssn"),
        ("SELECT coalesce(ssn, 'x') FROM accounts", "ssn"),
        ("SELECT ssn COLLATE \"C\" FROM accounts", "ssn"),
        (
            "SELECT length(routing_number) FROM accounts",
            "routing_number",
        ),
        ("SELECT md5(a::text) FROM accounts a", "a"),
        ("SELECT row_to_json(a) FROM accounts a", "a"),
        ("SELECT row_to_json(a.*) FROM accounts a", "a.*"),
        (
            "SELECT a.id FROM accounts a JOIN accounts b ON a.ssn > b.ssn",
            "a.ssn",
        ),
        (
            "SELECT 1 FROM accounts WHERE EXISTS (SELECT 1 WHERE ssn LIKE '4%')",
            "ssn",
        ),
        (
            "SELECT upper((SELECT ssn FROM accounts LIMIT 1))",
            "(subquery)",
        ),
        ("SELECT ARRAY(SELECT ssn FROM accounts)", "(subquery)"),
        (
            "SELECT id FROM accounts WHERE '485-58-2913' IN (SELECT ssn FROM accounts)",
            "(subquery)",
        ),
        // Equality with a value no table holds is a comparison with a constant, not a join.
        (
            "SELECT a.id FROM accounts a JOIN (VALUES ('485-58-2913')) g(v) ON a.ssn = g.v",
            "a.ssn",
        ),
        (
            "SELECT id FROM accounts NATURAL JOIN (VALUES ('485-58-2913')) g(ssn)",
            "ssn",
        ),
        (
            "SELECT id FROM accounts JOIN unnest(ARRAY['485-58-2913']) AS g(ssn) USING (ssn)",
            "ssn",
        ),
        (
            "SELECT id FROM accounts NATURAL JOIN unnest(ARRAY['485-58-2913']) AS ssn",
            "ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn = (SELECT '485-58-2913')",
            "ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn IN (VALUES ('485-58-2913'))",
            "ssn",
        ),
        (
            "SELECT a.id FROM accounts a, LATERAL (SELECT '485-58-2913' AS v) x WHERE a.ssn = x.v",
            "a.ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn IS NOT DISTINCT FROM '485-58-2913'",
            "ssn",
        ),
        (
            "SELECT id FROM accounts WHERE (ssn, id) = ('485-58-2913', 1)",
            "ssn",
        ),
        (
            "SELECT id FROM accounts GROUP BY substr(ssn, 1, 3), id",
            "ssn",
        ),
        ("SELECT ssn AS id FROM accounts ORDER BY id", "id"),
        (
            "EXPLAIN ANALYZE SELECT id FROM accounts WHERE ssn = '485-58-2913'",
            "ssn",
        ),
        (
            "EXPLAIN SELECT id FROM accounts WHERE ssn = '485-58-2913'",
            "ssn",
        ),
        (
            "DECLARE c CURSOR FOR SELECT reverse(ssn) FROM accounts",
            "ssn",
        ),
        ("COPY (SELECT reverse(ssn) FROM accounts) TO STDOUT", "ssn"),
        ("PREPARE p AS SELECT id FROM accounts WHERE ssn = $1", "ssn"),
        ("SELECT (a).ssn FROM accounts a", "a"),
        ("SELECT xmlelement(name x, ssn) FROM accounts", "ssn"),
        // Joining with a column the agent controls is an equality oracle.
        (
            "SELECT a.id FROM accounts a JOIN transactions t ON a.ssn = t.memo",
            "a.ssn",
        ),
        (
            "SELECT a.id FROM accounts a JOIN transactions t ON t.memo = a.ssn",
            "a.ssn",
        ),
        (
            "SELECT id FROM accounts WHERE ssn IN (SELECT memo FROM transactions)",
            "ssn",
        ),
        (
            "SELECT a.id FROM accounts a JOIN transactions t ON a.card_number = t.memo",
            "a.card_number",
        ),
        // Renamed through a subquery, a CTE, a column alias list, a star.
        (
            "SELECT upper(s) FROM (SELECT ssn AS s FROM accounts) x",
            "s",
        ),
        (
            "WITH x AS (SELECT ssn AS s FROM accounts) SELECT upper(s) FROM x",
            "s",
        ),
        (
            "WITH x(s) AS (SELECT ssn FROM accounts) SELECT reverse(x.s) FROM x",
            "x.s",
        ),
        (
            "SELECT reverse(x.ssn) FROM (SELECT * FROM accounts) x",
            "x.ssn",
        ),
        ("SELECT reverse(z) FROM accounts AS a(i, n, e, z)", "z"),
        (
            "SELECT reverse(q.c) FROM (SELECT * FROM accounts AS a(i, n, e, z)) q(a, b, c)",
            "q.c",
        ),
        (
            "SELECT reverse(s) FROM (SELECT ssn FROM accounts UNION SELECT 'x') u(s)",
            "s",
        ),
        (
            "SELECT upper(u.ssn) FROM (SELECT ssn FROM accounts) AS u JOIN transactions t ON true",
            "u.ssn",
        ),
        (
            "SELECT upper(accounts.ssn) FROM public.accounts",
            "accounts.ssn",
        ),
        (
            "SELECT upper(public.accounts.ssn) FROM public.accounts",
            "public.accounts.ssn",
        ),
        (
            "SELECT t.id FROM transactions t, LATERAL (SELECT reverse(ssn) FROM accounts) r",
            "ssn",
        ),
        // Read into something that stores it.
        (
            "CREATE TABLE exf AS SELECT ssn AS a, card_number AS b FROM accounts",
            "ssn",
        ),
        ("SELECT ssn INTO TEMP exf FROM accounts", "ssn"),
        ("CREATE VIEW v AS SELECT ssn FROM accounts", "ssn"),
        (
            "CREATE MATERIALIZED VIEW mv AS SELECT iban FROM accounts",
            "iban",
        ),
        (
            "INSERT INTO transactions (id, account_id, amount, booked_at, memo) SELECT 1, 1, 1, now(), ssn FROM accounts",
            "ssn",
        ),
        ("UPDATE accounts SET full_name = ssn WHERE id = 1", "ssn"),
        (
            "UPDATE transactions t SET memo = 'x' FROM accounts a WHERE a.ssn = t.memo AND t.id = 1",
            "a.ssn",
        ),
        (
            "INSERT INTO accounts SELECT * FROM accounts WHERE id = 1",
            "*",
        ),
        (
            "WITH c AS (INSERT INTO transactions (memo) SELECT ssn FROM accounts RETURNING 1) SELECT 1",
            "ssn",
        ),
        (
            "DELETE FROM transactions WHERE memo IN (SELECT ssn FROM accounts) AND id = 1",
            "ssn",
        ),
    ];
    let mut missed = Vec::new();
    for (sql, column) in leaks {
        let mut g = agent();
        match check(&mut g, sql) {
            Err(r) if r.code == "42501" && r.message.contains("is masked") => {
                if !r.message.contains(&format!("column {column} ")) {
                    missed.push(format!("{sql}: names another column: {}", r.message));
                }
                assert!(
                    r.hint.as_deref().is_some_and(|h| h.contains("permit")),
                    "{r:?}"
                );
            }
            other => missed.push(format!("{sql}: {other:?}")),
        }
    }
    assert!(
        missed.is_empty(),
        "not refused as masked uses:\n{}",
        missed.join("\n")
    );
}

/// What agents ordinarily do passes, masked columns included as themselves.
#[test]
fn ordinary_agent_work_passes() {
    let fine = [
        "SELECT id, full_name, ssn, card_number FROM accounts WHERE id = 5",
        "SELECT * FROM accounts LIMIT 5",
        "TABLE transactions",
        "SELECT DISTINCT ssn FROM accounts",
        "SELECT ssn, count(*) FROM accounts GROUP BY ssn",
        "SELECT count(ssn), count(DISTINCT card_number) FROM accounts",
        "SELECT a.id FROM accounts a JOIN accounts b ON a.ssn = b.ssn",
        "SELECT a.id FROM accounts a JOIN accounts b USING (ssn)",
        "SELECT id FROM accounts WHERE ssn IN (SELECT ssn FROM accounts WHERE id < 10)",
        "WITH x AS (SELECT id, ssn FROM accounts) SELECT ssn FROM x WHERE id = 3",
        "SELECT (SELECT ssn FROM accounts WHERE id = 1) AS s",
        "SELECT t.amount, a.full_name FROM transactions t JOIN accounts a ON a.id = t.account_id \
         WHERE t.amount > 100 ORDER BY t.amount DESC LIMIT 20",
        "SELECT account_id, sum(amount), avg(amount), max(booked_at) FROM transactions \
         GROUP BY account_id HAVING sum(amount) > 10 ORDER BY 2 DESC",
        "SELECT date_trunc('month', booked_at) m, count(*) FROM transactions GROUP BY 1 ORDER BY 1",
        "SELECT id FROM transactions WHERE memo ILIKE '%rent%' ORDER BY memo",
        "SELECT lower(full_name), upper(full_name) FROM accounts WHERE balance > 0",
        "SELECT id, ssn FROM accounts WHERE id = $1",
        "INSERT INTO transactions (id, account_id, amount, booked_at, memo) VALUES (1, 1, 5.00, now(), 'x')",
        "INSERT INTO accounts (id, full_name, email, ssn, card_number, routing_number, iban, balance, opened_at, notes) \
         VALUES (1, 'a', 'b', '123-45-6789', 'c', 'd', 'e', 0, now(), '') \
         ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn",
        "UPDATE accounts SET balance = balance + 1 WHERE id = 3",
        "UPDATE accounts SET ssn = '123-45-6789' WHERE id = 1 RETURNING ssn",
        "DELETE FROM transactions WHERE id = 42 RETURNING *",
        "DELETE FROM transactions WHERE booked_at < now() - interval '7 years'",
        "DELETE FROM transactions WHERE id = ANY($1)",
        "UPDATE transactions SET memo = 'x' WHERE id IN (1, 2, 3) AND memo <> 'x'",
        "DELETE FROM transactions WHERE account_id IN (SELECT id FROM accounts WHERE balance < 0) AND booked_at < now()",
        "BEGIN",
        "BEGIN; UPDATE accounts SET balance = 0 WHERE id = 1; COMMIT",
        "SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a",
        "SET statement_timeout = '5s'",
        "SET search_path = public",
        "SHOW search_path",
        "PREPARE q(bigint) AS SELECT full_name FROM accounts WHERE id = $1",
        "SELECT now(), current_date, version()",
        "SELECT relname FROM pg_class WHERE relkind = 'r'",
        "EXPLAIN SELECT * FROM accounts WHERE id = 1",
        "COPY accounts (id, full_name) TO STDOUT",
        "DECLARE c CURSOR FOR SELECT id, ssn FROM accounts",
        "",
        ";",
        "-- only a comment",
    ];
    let mut refused = Vec::new();
    for sql in fine {
        let mut g = agent();
        if let Err(r) = check(&mut g, sql) {
            refused.push(format!("{sql}: {} {} / {:?}", r.code, r.message, r.detail));
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

#[test]
fn refusals_name_the_rule_and_hold_says_approval_is_required() {
    let mut g = agent();
    let r = check(&mut g, "DELETE FROM transactions").unwrap_err();
    assert_eq!(r.code, "42501");
    assert!(r.message.contains("approval required"), "{r:?}");
    assert!(r.detail.as_deref().unwrap().contains("no_where"), "{r:?}");
    let r = check(&mut g, "DROP TABLE transactions").unwrap_err();
    assert!(
        r.message.starts_with("portcullis held this statement"),
        "{r:?}"
    );
    let r = check(&mut g, "CREATE TABLE t (a int)").unwrap_err();
    assert!(r.message.contains("no policy rule allows CREATE"), "{r:?}");
    assert!(r.hint.is_some());
    let r = check(&mut g, "SELECT pg_read_file('/etc/hostname')").unwrap_err();
    assert!(r.message.contains("server_file"), "{r:?}");
    assert!(
        r.hint.as_deref().unwrap().contains("no policy rule lifts"),
        "{r:?}"
    );
    let r = check(&mut g, "SET session_replication_role = replica").unwrap_err();
    assert!(
        r.detail
            .as_deref()
            .unwrap()
            .contains("deny-session-escapes"),
        "{r:?}"
    );
    // Syntax errors are what PostgreSQL answers, position included.
    let r = check(&mut g, "SELEC 1").unwrap_err();
    assert_eq!(r.code, "42601");
    assert_eq!(r.position, Some(1));
    // A multi-statement query is judged whole and the refusal says which statement.
    let r = check(&mut g, "SELECT 1; SELECT 2; DROP TABLE accounts").unwrap_err();
    assert!(
        r.detail
            .as_deref()
            .unwrap()
            .contains("statement 3 of 3: DROP TABLE accounts"),
        "{r:?}"
    );
}

#[test]
fn auditor_reads_raw_but_may_not_write() {
    let mut g = gate_for("auditor", &["auditor"]);
    check(&mut g, "SELECT reverse(ssn) FROM accounts ORDER BY ssn").unwrap();
    let r = check(&mut g, "UPDATE accounts SET balance = 0 WHERE id = 1").unwrap_err();
    assert!(r.message.contains("no policy rule allows UPDATE"), "{r:?}");
}

#[test]
fn prepared_statements_are_judged_as_what_they_run() {
    let mut g = agent();
    // Held at PREPARE: the server never gets it, so EXECUTE has nothing to run.
    assert!(check(&mut g, "PREPARE d AS DELETE FROM transactions").is_err());
    let r = check(&mut g, "EXECUTE d").unwrap_err();
    assert!(r.message.contains("not known to the gateway"), "{r:?}");
    check(
        &mut g,
        "PREPARE ok(bigint) AS SELECT full_name FROM accounts WHERE id = $1",
    )
    .unwrap();
    check(&mut g, "EXECUTE ok(1)").unwrap();
    check(&mut g, "EXPLAIN ANALYZE EXECUTE ok(1)").unwrap();
    // A protocol-level Parse shares the namespace with SQL PREPARE.
    g.check(
        b"UPDATE accounts SET balance = 0 WHERE id = $1",
        Via::Parse(b"s1"),
    )
    .unwrap();
    check(&mut g, "EXECUTE s1(3)").unwrap();
    // A masked use inside a prepared statement stays refused when executed by another way.
    assert!(
        g.check(b"SELECT reverse(ssn) FROM accounts", Via::Parse(b"s2"))
            .is_err()
    );
    assert!(check(&mut g, "EXECUTE s2").is_err());
    // CREATE TABLE AS EXECUTE stores what the prepared statement reads.
    check(&mut g, "PREPARE m AS SELECT ssn FROM accounts").unwrap();
    check(&mut g, "EXECUTE m").unwrap();
    let r = check(&mut g, "CREATE TABLE loot AS EXECUTE m").unwrap_err();
    assert!(
        r.message.contains("is masked") || r.message.contains("no policy rule"),
        "{r:?}"
    );
    // One Query: a later statement sees what an earlier one prepared (psql -c sends this).
    check(&mut g, "PREPARE q(bigint) AS SELECT full_name FROM accounts WHERE id = $1; EXECUTE q(3); DEALLOCATE q").unwrap();
    assert!(check(&mut g, "EXECUTE q(3)").is_err());
    // ... and a refused Query leaves nothing behind.
    assert!(check(&mut g, "PREPARE r AS SELECT 1; DROP TABLE accounts").is_err());
    assert!(check(&mut g, "EXECUTE r").is_err());
    // Deallocated and discarded names are forgotten.
    check(&mut g, "DEALLOCATE ok").unwrap();
    assert!(check(&mut g, "EXECUTE ok(1)").is_err());
    g.closed(b"s1");
    assert!(check(&mut g, "EXECUTE s1(3)").is_err());
    check(&mut g, "PREPARE again AS SELECT 1").unwrap();
    check(&mut g, "PREPARE more AS SELECT 2").unwrap();
    check(&mut g, "DEALLOCATE ALL").unwrap();
    assert!(check(&mut g, "EXECUTE again").is_err());
    check(&mut g, "PREPARE again AS SELECT 1").unwrap();
    // DISCARD ALL would also reset the database role the gateway set: refused, so the
    // session keeps what it prepared.
    let r = check(&mut g, "DISCARD ALL").unwrap_err();
    assert_eq!(r.code, "42501");
    check(&mut g, "EXECUTE again").unwrap();
}

#[test]
fn the_session_is_read_as_the_server_reads_it() {
    let mut g = agent();
    // Turning standard_conforming_strings off is refused; if the server says it is off
    // (a role default, a start-up option), statements are refused until it is back on.
    let r = check(&mut g, "SET standard_conforming_strings = off").unwrap_err();
    assert_eq!(r.code, "42501");
    g.parameter_status("standard_conforming_strings", "off");
    let r = check(&mut g, "SELECT 'a\\'; DELETE FROM accounts; -- '").unwrap_err();
    assert!(
        r.message.contains("standard_conforming_strings is off"),
        "{r:?}"
    );
    check(&mut g, "SET standard_conforming_strings = on").unwrap_err(); // lexer setting rule
    check(&mut g, "RESET standard_conforming_strings").unwrap_err();
    g.parameter_status("standard_conforming_strings", "on");
    check(&mut g, "SELECT 1").unwrap();
    // Non-ASCII text is read only in UTF-8.
    g.parameter_status("client_encoding", "SJIS");
    check(&mut g, "SELECT 1").unwrap();
    let r = check(&mut g, "SELECT 'ｱ'").unwrap_err();
    assert!(r.message.contains("client_encoding is SJIS"), "{r:?}");
    g.parameter_status("client_encoding", "UTF8");
    check(&mut g, "SELECT 'ｱ'").unwrap();
    let r = g.check(b"SELECT '\xff'", Via::SimpleQuery).unwrap_err();
    assert_eq!(r.code, "22021");
    // search_path before pg_catalog makes unqualified functions anyone's.
    check(&mut g, "SELECT lower(full_name) FROM accounts").unwrap();
    check(&mut g, "SET search_path = evil, pg_catalog, public").unwrap();
    let r = check(&mut g, "SELECT lower(full_name) FROM accounts").unwrap_err();
    assert!(r.message.contains("unknown"), "{r:?}");
    check(&mut g, "SELECT pg_catalog.lower(full_name) FROM accounts").unwrap();
    // ... and masked columns of a table in any schema of the path count.
    let r = check(&mut g, "SELECT pg_catalog.reverse(ssn) FROM accounts").unwrap_err();
    assert!(r.message.contains("is masked"), "{r:?}");
    check(&mut g, "RESET search_path").unwrap();
    check(&mut g, "SELECT lower(full_name) FROM accounts").unwrap();
    // A SET LOCAL (or a SET rolled back) is not followed as such: the schemas of the
    // path before it still count for masking.
    check(&mut g, "BEGIN; SET LOCAL search_path = elsewhere; COMMIT").unwrap();
    let r = check(&mut g, "SELECT reverse(ssn) FROM accounts").unwrap_err();
    assert!(r.message.contains("is masked"), "{r:?}");
}

#[test]
fn no_policy_refuses_everything_and_observe_mode_only_logs() {
    let s = quickstart();
    let mut g = StatementGate::new(
        Arc::new(ArcSwap::from_pointee(StatementPolicy::missing())),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    );
    let r = check(&mut g, "SELECT 1").unwrap_err();
    assert!(
        r.message.contains("no statement policy is configured"),
        "{r:?}"
    );

    let mut observe = s.policy.clone();
    observe.enforce = false;
    let mut g = StatementGate::new(
        Arc::new(ArcSwap::from_pointee(
            StatementPolicy::compile(Some(&observe)).unwrap(),
        )),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    );
    check(&mut g, "DROP TABLE transactions").unwrap();
    check(&mut g, "CREATE TABLE t (a int)").unwrap();
    // Built-in denials and masked uses are refused even when observing.
    assert!(check(&mut g, "COPY accounts TO PROGRAM 'cat'").is_err());
    assert!(check(&mut g, "SELECT reverse(ssn) FROM accounts").is_err());
}

#[test]
fn a_reload_applies_to_the_next_statement() {
    let s = quickstart();
    let policy = Arc::new(ArcSwap::from_pointee(
        StatementPolicy::compile(Some(&s.policy)).unwrap(),
    ));
    let mut g = StatementGate::new(
        policy.clone(),
        Arc::new(ArcSwap::from_pointee(Policy::compile(&s.mask).unwrap())),
        Subject::new("agent", ["agent"]),
        "portcullis",
    );
    assert!(check(&mut g, "CREATE TABLE t (a int)").is_err());
    let mut p = s.policy.clone();
    p.default = portcullis::policy::Action::Allow;
    policy.store(Arc::new(StatementPolicy::compile(Some(&p)).unwrap()));
    check(&mut g, "CREATE TABLE t (a int)").unwrap();
}

#[test]
fn fast_path_calls_are_large_object_functions_only() {
    let mut g = agent();
    g.check_function_call(952).unwrap(); // lo_open
    g.check_function_call(955).unwrap(); // lowrite: a write, which agents may do
    // pg_read_file by OID, or any other function: refused.
    let r = g.check_function_call(2624).unwrap_err();
    assert!(r.message.contains("only large-object functions"), "{r:?}");
    let mut auditor = gate_for("auditor", &["auditor"]);
    auditor.check_function_call(954).unwrap(); // loread
    assert!(auditor.check_function_call(955).is_err());
}

#[test]
fn statements_over_the_size_limit_are_refused_with_the_setting_named() {
    let mut g = agent();
    let mut sql = String::from("INSERT INTO transactions (id) VALUES ");
    for i in 0..300_000 {
        sql.push_str(if i == 0 { "(1)" } else { ",(1)" });
    }
    let r = check(&mut g, &sql).unwrap_err();
    assert_eq!(r.code, "54000");
    assert!(r.message.contains("max_statement_bytes"), "{r:?}");
}

#[test]
fn a_held_statement_takes_effect_only_once_approved() {
    let mut g = agent();
    let prepare = b"PREPARE d AS DELETE FROM transactions";
    let Verdict::Hold(h) = g.verdict(prepare, Via::SimpleQuery) else {
        panic!("an unbounded DELETE is held");
    };
    assert_eq!(h.rule.as_deref(), Some("hold-destructive"));
    assert!(h.message.contains("reviewer"), "{h:?}");
    // While it waits the server has no `d`, and neither has the gate.
    let r = check(&mut g, "EXECUTE d").unwrap_err();
    assert!(r.message.contains("not known to the gateway"), "{r:?}");
    // Approved, it runs, and what it prepared is judged as what it runs: held again.
    assert_eq!(
        g.verdict_approved(prepare, Via::SimpleQuery),
        Verdict::Allow
    );
    assert!(matches!(
        g.verdict(b"EXECUTE d", Via::SimpleQuery),
        Verdict::Hold(_)
    ));
    // An approval does not lift a refusal: a built-in denial stays one.
    assert!(matches!(
        g.verdict_approved(b"SELECT pg_read_file('/etc/hostname')", Via::SimpleQuery),
        Verdict::Deny(_)
    ));
    // Held statements of one query are held whole, on the strictest terms.
    let Verdict::Hold(h) = g.verdict(b"TRUNCATE transactions; SELECT 1", Via::SimpleQuery) else {
        panic!("held whole");
    };
    assert!(!h.explainable, "a multi-statement query has no single plan");
    let Verdict::Hold(h) = g.verdict(b"DELETE FROM transactions", Via::SimpleQuery) else {
        panic!("held");
    };
    assert!(h.explainable);
}
