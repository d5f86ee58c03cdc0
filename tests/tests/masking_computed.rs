//! Masking of values the rules cannot attribute: expressions over masked columns
//! (`ssn || ''`, `replace(ssn, '-', '')`, `lower(iban)`, `row_to_json(a)`), view columns
//! under new names, and what the gateway logs per statement for the audit trail. The
//! quickstart policy names table columns only, so without the built-in scan every one of
//! these queries would hand the agent raw values.
//!
//! Statement-side, the gateway refuses these expressions before they run (tests/tests/
//! policy.rs); here every rule permits them, so what is tested is the result-side scan
//! that still covers views and functions the gateway cannot see into.

mod common;

use common::{DB, Env, psql_at, rt, stdout};
use portcullis_tests::{Engine, QUICKSTART_MASK_POLICY, per_engine, result_side_only, ssn_valid};

const ROWS: u64 = 500;

fn env_with(engine: Engine, policy: &str) -> Env {
    Env::with_dataset(engine, &result_side_only(policy), ROWS, 11)
}

/// The raw sensitive values of every account, in id order, in every spelling the
/// queries below could produce: as stored, digits only, and lowercase.
fn raw_spellings(env: &Env) -> Vec<Vec<String>> {
    env.rows(
        &env.pg.direct_uri(DB),
        "SELECT ssn, card_number, routing_number, iban FROM accounts ORDER BY id",
    )
    .into_iter()
    .map(|r| {
        let mut all = Vec::new();
        for v in r {
            all.push(v.to_lowercase());
            all.push(v.chars().filter(char::is_ascii_digit).collect());
            all.push(v);
        }
        all
    })
    .collect()
}

fn computed_values_never_carry_raw_values(engine: Engine) {
    let env = env_with(engine, QUICKSTART_MASK_POLICY);
    let raw = raw_spellings(&env);
    let masked = env.rows(
        &env.uri(),
        "SELECT ssn || '', replace(ssn, '-', ''), card_number || ' ', routing_number || '', \
                lower(iban), row_to_json(a)::text, concat_ws('/', a.id, a.ssn, a.iban) \
         FROM accounts a ORDER BY id",
    );
    assert_eq!(masked.len() as u64, ROWS);
    for (row, raw) in masked.iter().zip(&raw) {
        for value in row {
            let lower = value.to_lowercase();
            for secret in raw {
                assert!(
                    !lower.contains(secret.as_str()),
                    "raw value {secret:?} reached the agent in {value:?}"
                );
            }
        }
        assert!(row[0].contains("[REDACTED]"), "{row:?}");
        // JSON stays JSON, and what is not sensitive is still there.
        assert!(row[5].starts_with("{\"id\":") && row[5].contains("\"full_name\":"));
    }
    // A whole row would carry every column: refused, saying what to do instead.
    let out =
        common::run_timed(psql_at(&env.uri()).args(["-c", "SELECT a FROM accounts a LIMIT 1"]));
    let err = common::stderr(&out);
    assert!(
        err.contains("whole table row") && err.contains("select the columns"),
        "{err}"
    );
    // Numbers computed over the data are not touched.
    let direct = env.rows(
        &env.pg.direct_uri(DB),
        "SELECT count(*), sum(balance), max(opened_at) FROM accounts",
    );
    let gw = env.rows(
        &env.uri(),
        "SELECT count(*), sum(balance), max(opened_at) FROM accounts",
    );
    assert_eq!(gw, direct);
}

fn view_columns_under_new_names_are_scanned(engine: Engine) {
    let env = env_with(engine, QUICKSTART_MASK_POLICY);
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE VIEW customer_tax AS SELECT id, full_name, ssn AS tax_id, iban AS payout FROM accounts",
    ]));
    let raw = raw_spellings(&env);
    let masked = env.rows(
        &env.uri(),
        "SELECT tax_id, payout, full_name FROM customer_tax ORDER BY id",
    );
    let names = env.rows(
        &env.pg.direct_uri(DB),
        "SELECT full_name FROM accounts ORDER BY id",
    );
    for ((row, raw), name) in masked.iter().zip(&raw).zip(&names) {
        for secret in raw {
            assert!(!row[0].contains(secret.as_str()) && !row[1].contains(secret.as_str()));
        }
        assert_eq!(row[2], name[0], "names carry nothing sensitive and pass");
    }
}

fn binary_drivers_get_masked_text_and_a_clear_refusal(engine: Engine) {
    let env = env_with(engine, QUICKSTART_MASK_POLICY);
    rt().block_on(async {
        let client = common::connect(&env.conninfo()).await;
        // tokio-postgres asks for binary results: text is the same bytes, so it is scanned.
        let rows = client
            .query(
                "SELECT ssn || '' AS x, id * 2 AS n FROM accounts ORDER BY id LIMIT 5",
                &[],
            )
            .await
            .expect("computed text in binary format");
        for r in &rows {
            assert_eq!(r.get::<_, String>(0), "[REDACTED]");
            assert!(r.get::<_, i64>(1) > 0);
        }
        // A binary array is walked element by element: each is scanned like text.
        let arrays = client
            .query("SELECT array_agg(ssn ORDER BY id) FROM accounts", &[])
            .await
            .expect("a binary text[] is scanned");
        let ssns: Vec<String> = arrays[0].get(0);
        assert_eq!(ssns.len() as u64, ROWS);
        assert!(ssns.iter().all(|s| !ssn_valid(s)), "{ssns:?}");
        assert!(ssns.iter().filter(|s| *s == "[REDACTED]").count() as u64 > ROWS / 2);
        // A binary value of a type whose layout the gateway does not read (tsvector) is
        // refused, naming the built-in rule.
        let err = client
            .query(
                "SELECT to_tsvector('simple', full_name) FROM accounts LIMIT 1",
                &[],
            )
            .await
            .expect_err("a binary tsvector is not read");
        let db = err.as_db_error().expect("a server-style error");
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message().contains("unattributed") && db.message().contains("cast it to text"),
            "{}",
            db.message()
        );
        // The session goes on.
        let n: i64 = client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("session still usable")
            .get(0);
        assert_eq!(n as u64, ROWS);
    });
}

fn refuse_mode_refuses_computed_text(engine: Engine) {
    let policy =
        QUICKSTART_MASK_POLICY.replacen("unattributed = \"scan\"", "unattributed = \"refuse\"", 1);
    assert_ne!(policy, QUICKSTART_MASK_POLICY);
    let env = env_with(engine, &policy);
    let out = common::run_timed(env.psql_gw().args([
        "-v",
        "ON_ERROR_STOP=0",
        "-c",
        "SELECT ssn || '' FROM accounts LIMIT 1",
        "-c",
        "SELECT count(*) FROM accounts",
    ]));
    let err = common::stderr(&out);
    assert!(
        err.contains("unattributed = \"refuse\"") && err.contains("select the table's columns"),
        "{err}"
    );
    assert!(
        stdout(&out).contains(&ROWS.to_string()),
        "numbers still pass"
    );
}

/// Errors, notices and notifications quote values too: a failed cast, a unique
/// violation's key, `RAISE NOTICE`, `pg_notify`. The agent reads them redacted; the
/// auditor reads them as the server wrote them.
fn server_messages_do_not_carry_raw_values(engine: Engine) {
    let env = env_with(engine, QUICKSTART_MASK_POLICY);
    let raw = raw_spellings(&env);
    let first = &raw[0];
    let script = [
        "SELECT ssn::int FROM accounts ORDER BY id LIMIT 1",
        "SELECT card_number::int FROM accounts ORDER BY id LIMIT 1",
        "CREATE TEMP TABLE seen (ssn text PRIMARY KEY)",
        "INSERT INTO seen SELECT ssn FROM accounts ORDER BY id LIMIT 1",
        "INSERT INTO seen SELECT ssn FROM accounts ORDER BY id LIMIT 1",
        "DO $$ BEGIN RAISE NOTICE 'iban %', (SELECT iban FROM accounts ORDER BY id LIMIT 1); END $$",
        "LISTEN leak",
        "SELECT pg_notify('leak', ssn) FROM accounts ORDER BY id LIMIT 1",
    ];
    let run = |uri: &str| {
        let mut c = psql_at(uri);
        for sql in script {
            c.args(["-c", sql]);
        }
        let out = common::run_timed(&mut c);
        format!("{}{}", stdout(&out), common::stderr(&out))
    };
    let agent = run(&env.uri());
    // What the server said is all there, only the values are gone.
    for want in [
        "invalid input syntax for type integer",
        "duplicate key value violates unique constraint",
        "NOTICE:  iban [REDACTED]",
        "Asynchronous notification \"leak\" with payload \"[REDACTED]\"",
    ] {
        assert!(agent.contains(want), "{want:?} missing from:\n{agent}");
    }
    for secret in first {
        assert!(
            !agent.to_lowercase().contains(secret.as_str()),
            "raw value {secret:?} reached the agent:\n{agent}"
        );
    }
    // The redactions count for the statement that failed, in its audit line.
    let log = env.gw.log();
    assert!(
        log.lines().any(|l| l.contains("statement masked")
            && l.contains("status=\"error\"")
            && l.contains("tag=22P02")
            && l.contains("per_rule=unattributed=1")),
        "{log}"
    );
    let auditor = run(&env.gw.uri("auditor", "auditor-secret", common::DB));
    let raw_ssn = &first[2];
    assert!(
        auditor.contains(raw_ssn.as_str()),
        "the auditor is exempt:\n{auditor}"
    );
}

fn masked_statements_are_counted_in_the_log(engine: Engine) {
    let env = env_with(engine, QUICKSTART_MASK_POLICY);
    env.query_gw("SELECT id, ssn, card_number FROM accounts ORDER BY id LIMIT 40");
    env.query_gw("SELECT id, full_name FROM accounts LIMIT 3");
    let log = env.gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("statement masked"))
        .collect();
    assert_eq!(lines.len(), 1, "one masked statement, one line:\n{log}");
    let line = lines[0];
    for want in [
        "rows=40",
        "masked=80",
        "ssn=40",
        "card=40",
        "SELECT 40",
        "identity=\"agent\"",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line}");
    }
}

per_engine!(
    computed_values_never_carry_raw_values,
    view_columns_under_new_names_are_scanned,
    binary_drivers_get_masked_text_and_a_clear_refusal,
    refuse_mode_refuses_computed_text,
    masked_statements_are_counted_in_the_log,
    server_messages_do_not_carry_raw_values,
);
