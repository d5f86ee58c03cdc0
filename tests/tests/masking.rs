//! Masking end to end: the quickstart's policy over the sample financial data, read
//! through the gateway by psql and tokio-postgres, on both engines. An agent never sees
//! a value that validates as a real SSN, card, routing number or IBAN; the auditor sees
//! the raw data in the same session layout.

mod common;

use common::{DB, Env, psql_at, rt, stdout};
use portcullis_tests::{
    Engine, PgOptions, QUICKSTART_MASK_POLICY, aba_valid, iban_valid, load_financial, luhn_valid,
    per_engine, ssn_valid,
};

const ROWS: u64 = 3000;

fn env(engine: Engine) -> Env {
    let env = Env::start_with(engine, PgOptions::default(), |o| {
        o.extra_toml(QUICKSTART_MASK_POLICY)
    });
    load_financial(&env.pg, DB, ROWS, 7).expect("load the financial dataset");
    env
}

fn psql_rows(env: &Env, uri: &str, sql: &str) -> Vec<Vec<String>> {
    let out = env.ok(psql_at(uri).args(["-At", "-F", "\t", "-c", sql]));
    stdout(&out)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
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
    let rows = psql_rows(
        &env,
        &env.uri(),
        "SELECT ssn, card_number, routing_number, iban, email, notes FROM accounts ORDER BY id",
    );
    assert_eq!(rows.len() as u64, ROWS);
    let raw = psql_rows(
        &env,
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
    let groups = psql_rows(
        &env,
        &env.uri(),
        "SELECT count(DISTINCT iban) FROM accounts",
    );
    let again = psql_rows(
        &env,
        &env.uri(),
        "SELECT iban FROM accounts ORDER BY id LIMIT 1",
    );
    assert_eq!(again[0][0], rows[0][3]);
    assert_eq!(
        groups[0][0],
        psql_rows(
            &env,
            &env.pg.direct_uri(DB),
            "SELECT count(DISTINCT iban) FROM accounts"
        )[0][0]
    );
}

fn auditor_sees_raw_values(engine: Engine) {
    let env = env(engine);
    let sql = "SELECT * FROM accounts ORDER BY id LIMIT 500";
    let audited = psql_rows(&env, &env.gw.uri("auditor", "auditor-secret", DB), sql);
    let raw = psql_rows(&env, &env.pg.direct_uri(DB), sql);
    assert_eq!(audited, raw);
}

fn every_result_path_is_masked(engine: Engine) {
    let env = env(engine);
    let one = |sql: &str| -> String {
        let rows = psql_rows(&env, &env.uri(), sql);
        rows.last()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default()
    };
    let raw_ssn = psql_rows(
        &env,
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
    // a COPY whose columns cannot be mapped is refused, with the reason
    let out = common::run_timed(
        psql_at(&env.uri()).args(["-c", "COPY (SELECT ssn FROM accounts) TO STDOUT"]),
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("refused"),
        "{}",
        common::stderr(&out)
    );
    // and the session is still usable afterwards
    assert_eq!(one("SELECT count(*) FROM accounts"), ROWS.to_string());
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
    let before = psql_rows(
        &env,
        &env.uri(),
        "SELECT full_name FROM accounts WHERE id = 1",
    )[0][0]
        .clone();
    assert_ne!(before, "[MASKED]");
    let path = env.gw.config_path();
    let mut cfg = std::fs::read_to_string(&path).unwrap();
    cfg.push_str("\n[[mask.rule]]\nname = \"names\"\ncolumn = \"public.accounts.full_name\"\nstrategy = \"redact\"\ntext = \"[MASKED]\"\n");
    std::fs::write(&path, cfg).unwrap();
    env.gw.signal(libc_sighup());
    let mut after = String::new();
    for _ in 0..50 {
        after = psql_rows(
            &env,
            &env.uri(),
            "SELECT full_name FROM accounts WHERE id = 1",
        )[0][0]
            .clone();
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

per_engine!(
    agent_sees_no_valid_identifiers,
    auditor_sees_raw_values,
    every_result_path_is_masked,
    tokio_postgres_binary_and_prepared,
    reload_changes_rules_without_restart,
);
