//! Masking end to end: the quickstart's policy over the sample financial data, read
//! through the gateway by psql and tokio-postgres, on both engines. An agent never sees
//! a value that validates as a real SSN, card, routing number or IBAN; the auditor sees
//! the raw data in the same session layout.

mod common;

use common::{DB, Env, psql_at, rt, stdout};
use portcullis_tests::{
    Engine, PgOptions, QUICKSTART_MASK_POLICY, aba_valid, iban_valid, load_financial, luhn_valid,
    per_engine, result_side_only, ssn_valid,
};

const ROWS: u64 = 3000;

fn env(engine: Engine) -> Env {
    Env::with_dataset(engine, QUICKSTART_MASK_POLICY, ROWS, 7)
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Every 13-19 digit run (spaces and dashes allowed inside) that passes Luhn.
fn luhn_runs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut j = i;
            let mut d = String::new();
            while j < b.len()
                && (b[j].is_ascii_digit()
                    || ((b[j] == b' ' || b[j] == b'-')
                        && j + 1 < b.len()
                        && b[j + 1].is_ascii_digit()))
            {
                if b[j].is_ascii_digit() {
                    d.push(b[j] as char);
                }
                j += 1;
            }
            if (13..=19).contains(&d.len()) && luhn_valid(&d) {
                found.push(d);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

fn agent_sees_no_valid_identifiers(engine: Engine) {
    let env = env(engine);
    let rows = env.rows(
        &env.uri(),
        "SELECT ssn, card_number, routing_number, iban, email, notes FROM accounts ORDER BY id",
    );
    assert_eq!(rows.len() as u64, ROWS);
    let raw = env.rows(
        &env.pg.direct_uri(DB),
        "SELECT ssn, card_number, routing_number, iban, email, notes FROM accounts ORDER BY id",
    );
    for (m, r) in rows.iter().zip(&raw) {
        let (ssn, card, routing, iban, email, notes) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        // format_preserving: same shape, never a valid SSN
        assert_eq!(ssn.len(), r[0].len(), "{ssn}");
        assert_eq!(&ssn[3..4], "-");
        assert!(!ssn_valid(ssn), "masked SSN {ssn} is valid");
        // partial: last four kept, separators kept, the rest starred
        assert_eq!(card.len(), r[1].len());
        assert_eq!(digits(card), digits(&r[1])[digits(&r[1]).len() - 4..]);
        assert!(card.contains('*'));
        assert_eq!(routing.len(), 9);
        assert!(!aba_valid(routing), "masked routing {routing} is valid");
        assert!(!iban_valid(iban), "masked IBAN {iban} is valid");
        assert_ne!(iban, &r[3]);
        assert!(email.starts_with(&r[4][..1]) && email.contains('*'));
        assert!(
            luhn_runs(notes).is_empty(),
            "a card number survived in {notes:?}"
        );
        assert!(!notes.contains('@'), "an e-mail survived in {notes:?}");
    }
    // Deterministic per key: joins and group-bys on the masked value still work.
    let groups = env.rows(&env.uri(), "SELECT count(DISTINCT iban) FROM accounts");
    let again = env.rows(&env.uri(), "SELECT iban FROM accounts ORDER BY id LIMIT 1");
    assert_eq!(again[0][0], rows[0][3]);
    assert_eq!(
        groups[0][0],
        env.rows(
            &env.pg.direct_uri(DB),
            "SELECT count(DISTINCT iban) FROM accounts"
        )[0][0]
    );
}

fn auditor_sees_raw_values(engine: Engine) {
    let env = env(engine);
    let sql = "SELECT * FROM accounts ORDER BY id LIMIT 500";
    let audited = env.rows(&env.gw.uri("auditor", "auditor-secret", DB), sql);
    let raw = env.rows(&env.pg.direct_uri(DB), sql);
    assert_eq!(audited, raw);
}

fn every_result_path_is_masked(engine: Engine) {
    // Expressions over masked columns are refused statement-side by default; permitted
    // here so the result side is what is tested.
    let env = Env::with_dataset(engine, &result_side_only(QUICKSTART_MASK_POLICY), ROWS, 7);
    let one = |sql: &str| -> String {
        let rows = env.rows(&env.uri(), sql);
        rows.last()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default()
    };
    let raw_ssn = env.rows(
        &env.pg.direct_uri(DB),
        "SELECT ssn FROM accounts WHERE id = 1",
    )[0][0]
        .clone();
    assert!(ssn_valid(&raw_ssn));
    // a cursor and FETCH
    let fetched = one(
        "BEGIN; DECLARE c CURSOR FOR SELECT ssn FROM accounts WHERE id = 1; FETCH 1 FROM c; COMMIT",
    );
    assert!(
        !fetched.is_empty() && !ssn_valid(&fetched) && fetched != raw_ssn,
        "FETCH: {fetched}"
    );
    // RETURNING
    let returned = one("UPDATE accounts SET balance = balance WHERE id = 1 RETURNING ssn");
    assert!(
        !ssn_valid(&returned) && returned != raw_ssn,
        "RETURNING: {returned}"
    );
    // an expression loses the table OID: the by-name rule catches it
    let expr = one("SELECT upper(ssn) AS ssn FROM accounts WHERE id = 1");
    assert_eq!(expr, "[MASKED]");
    // a function returning rows of the table
    env.pg
        .psql(DB, "CREATE FUNCTION acct(i bigint) RETURNS SETOF accounts LANGUAGE sql AS 'SELECT * FROM accounts WHERE id = i'")
        .expect("create function");
    let func = one("SELECT ssn FROM acct(1)");
    assert!(
        func == "[MASKED]" || (!ssn_valid(&func) && func != raw_ssn),
        "function: {func}"
    );
    // a view
    env.pg
        .psql(DB, "CREATE VIEW v AS SELECT id, ssn FROM accounts")
        .expect("create view");
    let view = one("SELECT ssn FROM v WHERE id = 1");
    assert!(!ssn_valid(&view) && view != raw_ssn, "view: {view}");
    // COPY of the table, text and CSV: masked like rows
    for sql in [
        "COPY accounts (id, ssn, card_number) TO STDOUT",
        "COPY public.accounts (id, ssn, card_number) TO STDOUT WITH (FORMAT csv)",
    ] {
        let out = env.ok(psql_at(&env.uri()).args(["-c", sql]));
        let text = stdout(&out);
        let sep = if sql.contains("csv") { ',' } else { '\t' };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, ROWS, "{sql}");
        for l in lines {
            let f: Vec<&str> = l.split(sep).collect();
            assert!(!ssn_valid(f[1]), "{sql}: SSN {} survived", f[1]);
            assert!(luhn_runs(f[2]).is_empty(), "{sql}: card {} survived", f[2]);
        }
    }
    // binary COPY: the raw SSN bytes never appear
    let out = env
        .ok(psql_at(&env.uri()).args(["-c", "COPY accounts (ssn) TO STDOUT WITH (FORMAT binary)"]));
    assert!(out.stdout.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(
        !out.stdout
            .windows(raw_ssn.len())
            .any(|w| w == raw_ssn.as_bytes()),
        "binary COPY leaked an SSN"
    );
    assert_eq!(one("SELECT count(*) FROM accounts"), ROWS.to_string());
}

/// `COPY (query) TO STDOUT` (what psycopg's and asyncpg's copy-from-query send) is
/// masked like the query's own result: the gateway has the server describe the query on
/// the agent's connection first (never running it), so every column is attributed as in
/// a `SELECT`. Text, CSV with a header, binary; an error is the server's own; in a
/// transaction block the describe leaves the block as it was.
fn copy_of_a_query_is_masked_like_its_result(engine: Engine) {
    let env = env(engine);
    let query = "SELECT id, ssn, card_number AS c, full_name FROM accounts ORDER BY id";
    let selected = env.rows(&env.uri(), query);
    let copied =
        stdout(&env.ok(psql_at(&env.uri()).args(["-c", &format!("COPY ({query}) TO STDOUT")])));
    let copied: Vec<Vec<String>> = copied
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(copied.len() as u64, ROWS);
    assert_eq!(copied, selected, "COPY (query) is masked as the SELECT is");
    for r in &copied {
        assert!(!ssn_valid(&r[1]), "SSN {} survived", r[1]);
        assert!(luhn_runs(&r[2]).is_empty(), "card {} survived", r[2]);
    }
    let raw = env.rows(&env.pg.direct_uri(DB), query);
    assert_ne!(copied[0][1], raw[0][1]);
    assert_eq!(copied[0][3], raw[0][3], "unmasked columns pass as they are");

    // CSV with a header naming the query's columns.
    let csv = stdout(&env.ok(psql_at(&env.uri()).args([
        "-c",
        "COPY (SELECT ssn AS tax_id, id FROM accounts WHERE id <= 3 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
    ])));
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("tax_id,id"));
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 3);
    for (l, r) in body.iter().zip(&selected) {
        assert_eq!(*l, format!("{},{}", r[1], r[0]), "CSV row as the SELECT's");
    }

    // Binary: the raw SSN bytes never appear.
    let out = env.ok(psql_at(&env.uri()).args([
        "-c",
        "COPY (SELECT ssn FROM accounts WHERE id = 1) TO STDOUT WITH (FORMAT binary)",
    ]));
    assert!(out.stdout.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(
        !out.stdout
            .windows(raw[0][1].len())
            .any(|w| w == raw[0][1].as_bytes()),
        "binary COPY (query) leaked an SSN"
    );

    // An error is the server's own, and in a block the describe leaves nothing behind.
    let out = common::run_timed(
        psql_at(&env.uri()).args(["-c", "COPY (SELECT nosuch FROM accounts) TO STDOUT"]),
    );
    assert!(
        common::stderr(&out).contains("column \"nosuch\" does not exist"),
        "{}",
        common::stderr(&out)
    );
    let out = env.ok(psql_at(&env.uri()).args([
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "COPY (SELECT ssn FROM accounts WHERE id = 1) TO STDOUT",
        "-c",
        "SELECT 'still in the block'",
        "-c",
        "COMMIT",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains(&selected[0][1]) && text.contains("still in the block"),
        "{text}"
    );

    // The auditor is exempt: the raw rows, no describe needed.
    let auditor = env.gw.uri("auditor", "auditor-secret", DB);
    let sql = format!("COPY ({query}) TO STDOUT");
    assert_eq!(
        env.ok(psql_at(&auditor).args(["-c", &sql])).stdout,
        env.ok(env.psql_direct().args(["-c", &sql])).stdout
    );
}

fn tokio_postgres_binary_and_prepared(engine: Engine) {
    let env = env(engine);
    rt().block_on(async {
        let client = common::connect(&env.conninfo()).await;
        let stmt = client
            .prepare("SELECT id, ssn, card_number, balance::text FROM accounts WHERE id = $1")
            .await
            .unwrap();
        for id in 1..=50i64 {
            // tokio-postgres asks for binary results: text columns come back raw UTF-8.
            let row = client.query_one(&stmt, &[&id]).await.unwrap();
            let ssn: String = row.get(1);
            let card: String = row.get(2);
            assert!(!ssn_valid(&ssn), "{ssn}");
            assert!(luhn_runs(&card).is_empty(), "{card}");
        }
        // a pipeline of masked queries
        let futs = (1..=20i64).map(|id| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&id])
                    .await
                    .unwrap()
                    .get::<_, String>(1)
            }
        });
        for ssn in futures_util::future::join_all(futs).await {
            assert!(!ssn_valid(&ssn));
        }
    });
}

fn reload_changes_rules_without_restart(engine: Engine) {
    let env = env(engine);
    let before = env.rows(&env.uri(), "SELECT full_name FROM accounts WHERE id = 1")[0][0].clone();
    assert_ne!(before, "[MASKED]");
    let path = env.gw.config_path();
    let mut cfg = std::fs::read_to_string(&path).unwrap();
    cfg.push_str("\n[[mask.rule]]\nname = \"names\"\ncolumn = \"public.accounts.full_name\"\nstrategy = \"redact\"\ntext = \"[MASKED]\"\n");
    std::fs::write(&path, cfg).unwrap();
    env.gw.signal(libc_sighup());
    let mut after = String::new();
    for _ in 0..50 {
        after = env.rows(&env.uri(), "SELECT full_name FROM accounts WHERE id = 1")[0][0].clone();
        if after == "[MASKED]" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        after,
        "[MASKED]",
        "SIGHUP did not apply the new rule\n{}",
        env.gw.log_tail(20)
    );
}

fn libc_sighup() -> i32 {
    1
}

/// How one COPY output is laid out, to split it as `COPY FROM` would.
#[derive(Debug, Clone, Copy)]
struct Layout {
    csv: bool,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &'static str,
    header: bool,
}

const fn text_layout(delimiter: u8, null: &'static str, header: bool) -> Layout {
    Layout {
        csv: false,
        delimiter,
        quote: b'"',
        escape: b'"',
        null,
        header,
    }
}

const fn csv_layout(delimiter: u8, quote: u8, escape: u8, null: &'static str) -> Layout {
    Layout {
        csv: true,
        delimiter,
        quote,
        escape,
        null,
        header: true,
    }
}

/// Rows of raw fields (quotes and backslash escapes kept) of a whole COPY output.
fn copy_rows(out: &[u8], l: Layout) -> Vec<Vec<Vec<u8>>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_quote = false;
    let mut i = 0;
    while i < out.len() {
        let c = out[i];
        let escaped = if l.csv {
            in_quote && c == l.escape && l.escape != l.quote
        } else {
            c == b'\\'
        };
        if escaped && i + 1 < out.len() {
            field.extend_from_slice(&out[i..i + 2]);
            i += 2;
            continue;
        }
        if l.csv && (in_quote || c == l.quote) {
            in_quote = !in_quote || c != l.quote;
            field.push(c);
        } else if c == l.delimiter {
            row.push(std::mem::take(&mut field));
        } else if c == b'\n' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        } else {
            field.push(c);
        }
        i += 1;
    }
    assert!(
        row.is_empty() && field.is_empty(),
        "COPY output ends inside a row"
    );
    rows
}

/// The value of a raw field, quotes and escapes removed; `None` for the null string.
fn copy_value(raw: &[u8], l: Layout) -> Option<String> {
    if raw == l.null.as_bytes() {
        return None;
    }
    let mut v = Vec::new();
    let mut in_quote = false;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        let next = raw.get(i + 1).copied();
        if !l.csv && c == b'\\' {
            v.push(match next {
                Some(b'n') => b'\n',
                Some(b't') => b'\t',
                Some(b'r') => b'\r',
                Some(other) => other,
                None => b'\\',
            });
            i += 2;
            continue;
        }
        if l.csv && in_quote && c == l.escape && (next == Some(l.quote) || next == Some(l.escape)) {
            v.extend(next);
            i += 2;
            continue;
        }
        if l.csv && c == l.quote {
            in_quote = !in_quote;
        } else {
            v.push(c);
        }
        i += 1;
    }
    Some(String::from_utf8(v).expect("UTF-8 field"))
}

/// COPY output through the gateway as the agent, and straight from PostgreSQL.
fn copy_both(env: &Env, sql: &str) -> (Vec<u8>, Vec<u8>) {
    let masked = env.ok(psql_at(&env.uri()).args(["-c", sql])).stdout;
    let raw = env.ok(env.psql_direct().args(["-c", sql])).stdout;
    (masked, raw)
}

fn copy_honours_format_options(engine: Engine) {
    let env = env(engine);
    // NULLs in the masked column, and a name holding every delimiter, quote and escape
    // used below.
    env.pg
        .psql(
            DB,
            "ALTER TABLE accounts ALTER ssn DROP NOT NULL; \
             UPDATE accounts SET ssn = NULL WHERE id % 7 = 0; \
             UPDATE accounts SET full_name = E'O''Brien | Jr; \"x\" \\\\ y, n/a' WHERE id = 2",
        )
        .expect("prepare rows");
    let cols = "id, full_name, ssn, card_number, balance";
    let cases = [
        // Text with a delimiter that occurs in names and card numbers: the server escapes
        // it, and `\ ` must not split a field.
        (
            format!("COPY accounts ({cols}) TO STDOUT WITH (DELIMITER ' ')"),
            text_layout(b' ', "\\N", false),
        ),
        (
            format!("COPY accounts ({cols}) TO STDOUT WITH (DELIMITER ';', NULL 'n/a')"),
            text_layout(b';', "n/a", false),
        ),
        (
            format!("COPY accounts ({cols}) TO STDOUT WITH DELIMITER '|' HEADER"),
            text_layout(b'|', "\\N", true),
        ),
        (
            format!(
                "COPY public.accounts ({cols}) TO STDOUT WITH (FORMAT csv, DELIMITER '|', QUOTE '''', HEADER)"
            ),
            csv_layout(b'|', b'\'', b'\'', ""),
        ),
        (
            format!(
                "COPY accounts ({cols}) TO STDOUT WITH CSV HEADER DELIMITER AS '|' QUOTE AS '\"' NULL AS ''"
            ),
            csv_layout(b'|', b'"', b'"', ""),
        ),
        (
            format!(
                "COPY accounts ({cols}) TO STDOUT WITH (FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'n/a', HEADER true, FORCE_QUOTE (ssn, full_name))"
            ),
            csv_layout(b';', b'\'', b'\\', "n/a"),
        ),
    ];
    for (sql, layout) in cases {
        let (masked, raw) = copy_both(&env, &sql);
        let (m, r) = (copy_rows(&masked, layout), copy_rows(&raw, layout));
        let skip = usize::from(layout.header);
        assert_eq!(m.len() as u64, ROWS + skip as u64, "{sql}");
        assert_eq!(m.len(), r.len(), "{sql}");
        if layout.header {
            let line = |out: &[u8]| out.split(|&b| b == b'\n').next().unwrap().to_vec();
            assert_eq!(line(&masked), line(&raw), "{sql}: header line");
            assert_eq!(copy_value(&m[0][2], layout).as_deref(), Some("ssn"));
        }
        let mut nulls = 0;
        for (mr, rr) in m[skip..].iter().zip(&r[skip..]) {
            assert_eq!(mr.len(), 5, "{sql}: {mr:?}");
            for c in [0, 1, 4] {
                assert_eq!(mr[c], rr[c], "{sql}: unmasked column {c} differs");
            }
            match copy_value(&rr[2], layout) {
                None => {
                    assert_eq!(mr[2], rr[2], "{sql}: NULL SSN");
                    nulls += 1;
                }
                Some(raw_ssn) => {
                    let ssn = copy_value(&mr[2], layout).expect("masked SSN is not NULL");
                    assert!(
                        ssn != raw_ssn && !ssn_valid(&ssn),
                        "{sql}: SSN {raw_ssn} came out as {ssn}"
                    );
                }
            }
            let card = copy_value(&mr[3], layout).unwrap();
            assert!(
                card != copy_value(&rr[3], layout).unwrap() && luhn_runs(&card).is_empty(),
                "{sql}: card {card} survived"
            );
        }
        assert_eq!(nulls, ROWS / 7, "{sql}");
        // The name with every special character went through byte for byte.
        let o_brien = m[skip..]
            .iter()
            .find(|row| copy_value(&row[0], layout).as_deref() == Some("2"))
            .and_then(|row| copy_value(&row[1], layout));
        assert_eq!(
            o_brien.as_deref(),
            Some("O'Brien | Jr; \"x\" \\ y, n/a"),
            "{sql}"
        );
    }
}

fn copy_statements_not_read_for_sure_are_refused(engine: Engine) {
    let env = env(engine);
    let refused = |sql: &str, why: &str| {
        let out = common::run_timed(psql_at(&env.uri()).args(["-c", sql]));
        let err = common::stderr(&out);
        assert!(
            !out.status.success() && err.contains("refused") && err.contains(why),
            "{sql}: {err}"
        );
        assert!(
            !stdout(&out).contains('-'),
            "{sql} sent SSNs before refusing: {}",
            stdout(&out)
        );
    };
    // Both COPYs arrive with the same query text: the second one's rows would be split
    // with the first one's columns.
    refused(
        "COPY portcullis_dataset TO STDOUT; COPY accounts (ssn, id) TO STDOUT",
        "expected one statement, found 2",
    );
    refused(
        "COPY accounts (ssn) TO STDOUT WITH (ENCODING 'SJIS')",
        "ENCODING",
    );
    refused(
        "COPY accounts (ssn) TO STDOUT WITH (FORMAT csv, DELIMITER 1)",
        "DELIMITER",
    );
    // The encoding matters only where something is masked; the auditor is exempt.
    let out = env.ok(psql_at(&env.uri()).args([
        "-c",
        "COPY portcullis_dataset TO STDOUT WITH (ENCODING 'LATIN1')",
    ]));
    assert_eq!(stdout(&out), format!("{ROWS}\t7\n"));
    let auditor = env.gw.uri("auditor", "auditor-secret", DB);
    let sql = "COPY accounts (ssn) TO STDOUT WITH (ENCODING 'SJIS')";
    let audited = env.ok(psql_at(&auditor).args(["-c", sql])).stdout;
    assert_eq!(audited, env.ok(env.psql_direct().args(["-c", sql])).stdout);
    // Nothing of the refusals lingers in the session.
    assert_eq!(
        env.rows(&env.uri(), "SELECT count(*) FROM accounts")[0][0],
        ROWS.to_string()
    );
}

/// The gateway reads statements and values the way the session's settings say, as the
/// server reports them (`ParameterStatus`), and refuses to mask where it cannot read.
fn session_settings_are_followed(engine: Engine) {
    let env = env(engine);
    let masked_ssns = |out: &str| {
        let rows: Vec<&str> = out.lines().filter(|l| *l != "SET").collect();
        assert_eq!(rows.len() as u64, ROWS, "{out}");
        for l in rows {
            let ssn = l.split('\t').nth(1).unwrap_or_default();
            assert!(
                ssn.len() == 11 && !ssn_valid(ssn),
                "raw or broken SSN in {l:?}"
            );
        }
    };
    // standard_conforming_strings on (the default): '\N' is backslash-N to the server,
    // and now to the gateway too, so the statement is no longer ambiguous.
    let copy = "COPY accounts (id, ssn) TO STDOUT WITH (NULL '\\N')";
    masked_ssns(&stdout(&env.ok(psql_at(&env.uri()).args(["-c", copy]))));
    // Off: both read it as 'N'.
    let off = env.ok(psql_at(&env.uri()).args([
        "-c",
        "SET standard_conforming_strings = off",
        "-c",
        copy,
    ]));
    masked_ssns(&stdout(&off));

    // In SJIS a byte below 0x80 can be half a character: masking refuses, and the
    // session recovers once the encoding is back.
    let out = common::run_timed(psql_at(&env.uri()).args([
        "-c",
        "SET client_encoding = 'SJIS'",
        "-c",
        "SELECT ssn FROM accounts LIMIT 1",
        "-c",
        "SELECT count(*) FROM accounts",
        "-c",
        "SET client_encoding = 'UTF8'",
        "-c",
        "SELECT ssn FROM accounts ORDER BY id LIMIT 1",
    ]));
    let (o, e) = (stdout(&out), common::stderr(&out));
    assert!(e.contains("client_encoding is SJIS"), "{e}");
    assert!(
        o.contains(&ROWS.to_string()),
        "results without masked columns pass: {o}"
    );
    let last = o
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.len() == 11 && l.as_bytes()[3] == b'-' && l.as_bytes()[6] == b'-')
        .unwrap_or_else(|| panic!("no SSN after switching back to UTF8: {o}"));
    assert!(!ssn_valid(last), "masked again in UTF8: {o}");
}

/// COPY names its table without a schema: which table that is depends on the agent's
/// search_path, which the gateway's own catalog connection does not share. A name that
/// exists in two schemas is refused rather than masked with the wrong table's columns.
fn copy_of_an_ambiguous_table_name_is_refused(engine: Engine) {
    let env = env(engine);
    // Same name and column count, other layout: read with public.accounts' columns, the
    // SSN in the second column would pass as `full_name`, which no rule masks.
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE SCHEMA shadow",
        "-c",
        "CREATE TABLE shadow.accounts (id int, tax_id text, c3 text, c4 text, c5 text, \
         c6 text, c7 text, c8 text, c9 text, c10 text)",
        "-c",
        "INSERT INTO shadow.accounts VALUES (1, '219-09-9999', '', '', '', '', '', '', '', '')",
    ]));
    let out = common::run_timed(psql_at(&env.uri()).args([
        "-c",
        "SET search_path = shadow, public",
        "-c",
        "COPY accounts TO STDOUT",
    ]));
    let (o, e) = (stdout(&out), common::stderr(&out));
    assert!(
        e.contains("several schemas") && e.contains("qualify"),
        "{e}"
    );
    assert!(!o.contains("219-09-9999"), "{o}");
    // Qualified, it is read exactly.
    let out = env.ok(psql_at(&env.uri()).args([
        "-c",
        "SET search_path = shadow, public",
        "-c",
        "COPY public.accounts (id, ssn) TO STDOUT",
    ]));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().filter(|l| *l != "SET").collect();
    assert_eq!(rows.len() as u64, ROWS);
    for l in rows {
        let ssn = l
            .split('\t')
            .nth(1)
            .unwrap_or_else(|| panic!("no ssn in {l:?}"));
        assert!(
            ssn.len() == 11 && !ssn_valid(ssn),
            "raw or broken SSN in {l:?}"
        );
    }
}

/// The `null` strategy on a text column and on a numeric one.
const NULL_RULES: &str = r#"
[[mask.rule]]
name = "no-names"
column = "public.accounts.full_name"
strategy = "null"

[[mask.rule]]
name = "no-balances"
column = "public.accounts.balance"
strategy = "null"
"#;

/// Any column's raw wire value, whatever its type: `None` is SQL NULL.
struct Wire(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Wire {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(Some(raw.to_vec())))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

fn null_strategy_end_to_end(engine: Engine) {
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        o.extra_toml(&format!("{QUICKSTART_MASK_POLICY}\n{NULL_RULES}"))
    });
    load_financial(&env.pg, DB, ROWS, 7).expect("load the financial dataset");
    // Simple query (psql): the masked columns are NULL, the others as stored (iban has
    // its own rule).
    let sql = "SELECT id, full_name, balance, opened_at, iban FROM accounts ORDER BY id LIMIT 200";
    let rows = |uri: &str| -> Vec<Vec<String>> {
        let out = env.ok(psql_at(uri).args(["-At", "-F", "\t", "-P", "null=<NULL>", "-c", sql]));
        stdout(&out)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    };
    let masked = rows(&env.uri());
    let raw = rows(&env.pg.direct_uri(DB));
    assert_eq!(masked.len(), 200);
    for (m, r) in masked.iter().zip(&raw) {
        assert_eq!((&m[1][..], &m[2][..]), ("<NULL>", "<NULL>"), "{m:?}");
        assert_ne!(r[1], "<NULL>");
        assert_eq!((&m[0], &m[3]), (&r[0], &r[3]));
        assert_ne!(m[4], r[4]);
    }
    // Extended protocol with binary results (tokio-postgres): SQL NULL, not an empty or
    // placeholder value, for text and numeric alike; the other columns byte-identical.
    rt().block_on(async {
        let gw = common::connect(&env.conninfo()).await;
        let direct = common::connect(&env.pg.direct_uri(DB)).await;
        let q = "SELECT id, full_name, balance, opened_at FROM accounts WHERE id = $1";
        let (gs, ds) = (
            gw.prepare(q).await.unwrap(),
            direct.prepare(q).await.unwrap(),
        );
        for id in [1i64, 2, 99, 1234] {
            let g = gw.query_one(&gs, &[&id]).await.unwrap();
            let d = direct.query_one(&ds, &[&id]).await.unwrap();
            assert_eq!(g.get::<_, i64>(0), id);
            assert_eq!(g.get::<_, Option<String>>(1), None);
            assert!(d.get::<_, Option<String>>(1).is_some());
            assert!(g.get::<_, Wire>(2).0.is_none(), "balance is not NULL");
            assert!(d.get::<_, Wire>(2).0.is_some());
            assert_eq!(g.get::<_, Wire>(3).0, d.get::<_, Wire>(3).0);
        }
        // Text results through the simple-query API.
        let messages = gw
            .simple_query("SELECT full_name, balance, id FROM accounts WHERE id = 3")
            .await
            .unwrap();
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (row.get(0), row.get(1), row.get(2)),
            (None, None, Some("3"))
        );
    });
    // COPY: `\N` in text, an empty unquoted field in CSV (or the NULL string, never
    // quoted), -1 in binary.
    let copy = |sql: &str| {
        let (m, r) = copy_both(&env, sql);
        (String::from_utf8(m).unwrap(), String::from_utf8(r).unwrap())
    };
    let (m, r) = copy("COPY accounts (id, full_name, balance) TO STDOUT");
    assert_eq!(m.lines().count() as u64, ROWS);
    for (ml, rl) in m.lines().zip(r.lines()) {
        let id = rl.split('\t').next().unwrap();
        assert_eq!(ml, format!("{id}\t\\N\t\\N"));
    }
    let (m, r) = copy("COPY accounts (full_name, id, balance) TO STDOUT WITH (FORMAT csv)");
    assert_eq!(m.lines().count() as u64, ROWS);
    for (ml, rl) in m.lines().zip(r.lines()) {
        let id = rl.rsplit(',').nth(1).unwrap();
        assert_eq!(ml, format!(",{id},"));
    }
    let (m, _) = copy(
        "COPY accounts (id, full_name) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *, NULL 'NULL')",
    );
    assert!(m.lines().all(|l| l.ends_with("\",NULL")), "{m}");
    let out = env
        .ok(psql_at(&env.uri()).args([
            "-c",
            "COPY accounts (id, full_name) TO STDOUT (FORMAT binary)",
        ]))
        .stdout;
    // Signature, flags, extension; per tuple 2 fields, an 8-byte id, a NULL name; trailer.
    let tuples = &out[19..out.len() - 2];
    assert_eq!(tuples.len() as u64, ROWS * 18);
    for t in tuples.chunks(18) {
        assert_eq!(&t[..6], b"\x00\x02\x00\x00\x00\x08");
        assert_eq!(&t[14..], b"\xff\xff\xff\xff");
    }
}

/// A card number as the quickstart's `card` rule (`public.*.card_number`, partial, last
/// four kept) leaves it.
const CARD: &str = "4111 1111 1111 1111";
const CARD_MASKED: &str = "**** **** **** 1111";

/// Tables the agent's open transaction created or altered are invisible to the
/// gateway's own catalog connection: the gateway looks them up on the agent's
/// connection, so they read masked inside the transaction, under their new names after
/// a rename, and after `COMMIT` (no miss was cached). The aliases keep the name rules
/// out of it: only the table's own column name, resolved through the catalog, can
/// match `public.*.card_number`.
fn tables_of_the_open_transaction_read_masked(engine: Engine) {
    let env = Env::with_dataset(engine, QUICKSTART_MASK_POLICY, 10, 7);
    // Simple protocol (psql), one statement per Query.
    let out = env.ok(psql_at(&env.uri()).args([
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "CREATE TABLE fresh (id int, cn text, card_number text)",
        "-c",
        &format!("INSERT INTO fresh VALUES (1, '{CARD}', '{CARD}')"),
        "-c",
        "SELECT 'new', card_number AS c, cn AS raw FROM fresh",
        "-c",
        "ALTER TABLE fresh RENAME COLUMN card_number TO old",
        "-c",
        "ALTER TABLE fresh RENAME COLUMN cn TO card_number",
        "-c",
        "SELECT 'renamed', card_number AS c, old AS raw FROM fresh",
        "-c",
        "COMMIT",
        "-c",
        "SELECT 'committed', card_number AS c FROM fresh",
    ]));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert!(
        lines.contains(&format!("new|{CARD_MASKED}|{CARD}")),
        "created in the transaction: {lines:?}"
    );
    assert!(
        lines.contains(&format!("renamed|{CARD_MASKED}|{CARD}")),
        "renamed in the transaction: {lines:?}"
    );
    assert!(
        lines.contains(&format!("committed|{CARD_MASKED}")),
        "after COMMIT: {lines:?}"
    );

    // Extended protocol (tokio-postgres: Parse/Bind/Execute/Sync per statement), in a
    // transaction, the way drivers that default to one work; then a fresh session
    // after COMMIT, and a rolled-back table that leaves nothing behind.
    rt().block_on(async {
        let mut client = common::connect(&env.conninfo()).await;
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(&format!(
            "CREATE TABLE fresh2 (id int, card_number text); INSERT INTO fresh2 VALUES (1, '{CARD}')"
        ))
        .await
        .unwrap();
        let row = tx
            .query_one("SELECT card_number AS c FROM fresh2 WHERE id = $1", &[&1i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), CARD_MASKED);
        tx.commit().await.unwrap();

        let tx = client.transaction().await.unwrap();
        tx.batch_execute("CREATE TABLE gone (card_number text)")
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        let other = common::connect(&env.conninfo()).await;
        let row = other
            .query_one("SELECT card_number AS c FROM fresh2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), CARD_MASKED);
        let err = other
            .query_one("SELECT card_number AS c FROM gone", &[])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
            "{err}"
        );
    });
}

per_engine!(
    tables_of_the_open_transaction_read_masked,
    copy_of_a_query_is_masked_like_its_result,
    agent_sees_no_valid_identifiers,
    auditor_sees_raw_values,
    every_result_path_is_masked,
    tokio_postgres_binary_and_prepared,
    reload_changes_rules_without_restart,
    copy_honours_format_options,
    copy_statements_not_read_for_sure_are_refused,
    null_strategy_end_to_end,
    session_settings_are_followed,
    copy_of_an_ambiguous_table_name_is_refused,
);
