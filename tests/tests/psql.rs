//! The data path as `psql` drives it: multi-statement strings, `\copy` both ways in text and
//! CSV, binary `COPY … TO STDOUT`, NOTICEs and LISTEN/NOTIFY. Each scenario runs once per
//! I/O engine and compares with what PostgreSQL returns directly where that is meaningful.

mod common;

use common::{Env, stderr, stdout};
use portcullis_tests::{Engine, per_engine};

per_engine!(
    multi_statement_string,
    script_with_error_recovers,
    copy_text_both_ways,
    copy_csv_both_ways,
    copy_binary_to_stdout_matches_direct,
    notice_reaches_client,
    listen_notify,
    select_matches_direct,
);

/// Rows with everything COPY must escape: tabs, newlines, backslashes, quotes, NULLs,
/// multi-byte UTF-8 and a long value.
const TRICKY: &str = "
CREATE TABLE tricky (id int PRIMARY KEY, body text, amount numeric(10,2), tags text[]);
INSERT INTO tricky
SELECT i,
       CASE WHEN i % 7 = 0 THEN NULL
            ELSE 'row ' || i || E'\\ttab\\nnewline\\\\backslash \"quoted\", comma; ünïcødé €'
                 || CASE WHEN i % 100 = 0 THEN repeat('long', 2000) ELSE '' END
       END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.25 END,
       ARRAY['a' || i, 'b,c', NULL]
FROM generate_series(1, 5000) i;
CREATE TABLE tricky_in (LIKE tricky);
";

fn multi_statement_string(engine: Engine) {
    let env = Env::start(engine);
    let out = env.query_gw(
        "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2), (3); \
         UPDATE t SET a = a * 10 WHERE a > 1; SELECT sum(a) FROM t;",
    );
    // psql 15 prints every statement's result; the last one is the sum.
    assert_eq!(out.lines().last(), Some("51"), "{out}");
    // The same session sees its own transaction block and temporary objects.
    let out = env.query_gw(
        "BEGIN; CREATE TEMP TABLE tmp AS SELECT generate_series(1, 10) g; \
         SELECT count(*) FROM tmp; COMMIT;",
    );
    assert!(out.contains("10"), "{out}");
}

fn script_with_error_recovers(engine: Engine) {
    let env = Env::start(engine);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.sql");
    std::fs::write(
        &script,
        "SELECT 'before';\n\
         BEGIN;\nSELECT 1/0;\nSELECT 'in failed tx';\nROLLBACK;\n\
         SELECT 'after';\n\
         SELECT 1 AS a \\; SELECT 2 AS b;\n",
    )
    .unwrap();
    let out = common::run_timed(env.psql_gw().args(["-At", "-f"]).arg(&script));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        o.contains("before") && o.contains("after"),
        "stdout: {o}\nstderr: {e}"
    );
    assert!(!o.contains("in failed tx"), "{o}");
    assert!(e.contains("division by zero"), "{e}");
    assert!(e.contains("current transaction is aborted"), "{e}");
    assert!(
        o.lines().any(|l| l == "1") && o.lines().any(|l| l == "2"),
        "{o}"
    );
}

fn copy_both_ways(engine: Engine, options: &str, ext: &str) {
    let env = Env::start(engine);
    env.pg.psql(common::DB, TRICKY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let via_gw = dir.path().join(format!("gw.{ext}"));
    let direct = dir.path().join(format!("direct.{ext}"));
    let copy_out = |file: &std::path::Path| {
        format!(
            "\\copy (SELECT * FROM tricky ORDER BY id) TO '{}' {options}",
            file.display()
        )
    };
    env.ok(env.psql_gw().args(["-c", &copy_out(&via_gw)]));
    env.ok(env.psql_direct().args(["-c", &copy_out(&direct)]));
    let (a, b) = (
        std::fs::read(&via_gw).unwrap(),
        std::fs::read(&direct).unwrap(),
    );
    assert!(a.len() > 100_000, "export is {} bytes", a.len());
    assert!(a == b, "\\copy out through the gateway differs from direct");

    let copy_in = format!("\\copy tricky_in FROM '{}' {options}", via_gw.display());
    let out = env.ok(env.psql_gw().args(["-c", &copy_in]));
    assert!(stdout(&out).contains("COPY 5000"), "{}", stdout(&out));
    let diff = env
        .pg
        .psql(
            common::DB,
            "SELECT count(*) FROM ((TABLE tricky EXCEPT ALL TABLE tricky_in) \
             UNION ALL (TABLE tricky_in EXCEPT ALL TABLE tricky)) d",
        )
        .unwrap();
    assert_eq!(diff.trim(), "0", "rows differ after a round trip");
}

fn copy_text_both_ways(engine: Engine) {
    copy_both_ways(engine, "", "txt")
}

fn copy_csv_both_ways(engine: Engine) {
    copy_both_ways(engine, "WITH (FORMAT csv, HEADER true)", "csv")
}

fn copy_binary_to_stdout_matches_direct(engine: Engine) {
    let env = Env::start(engine);
    env.pg.psql(common::DB, TRICKY).unwrap();
    let sql = "COPY (SELECT * FROM tricky ORDER BY id) TO STDOUT (FORMAT binary)";
    let a = env.ok(env.psql_gw().args(["-c", sql])).stdout;
    let b = env.ok(env.psql_direct().args(["-c", sql])).stdout;
    assert!(
        a.starts_with(b"PGCOPY\n\xff\r\n\0"),
        "not a binary COPY stream"
    );
    assert!(
        a == b,
        "binary COPY differs ({} vs {} bytes)",
        a.len(),
        b.len()
    );
}

fn notice_reaches_client(engine: Engine) {
    let env = Env::start(engine);
    let out = env.ok(env.psql_gw().args([
        "-c",
        "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$",
        "-c",
        "SELECT 'still here'",
    ]));
    let e = stderr(&out);
    assert!(e.contains("NOTICE:  hello 42"), "{e}");
    assert!(e.contains("WARNING:  careful"), "{e}");
    assert!(stdout(&out).contains("still here"));
}

fn listen_notify(engine: Engine) {
    let env = Env::start(engine);
    let out = env.ok(env.psql_gw().args([
        "-c",
        "LISTEN portcullis_ch",
        "-c",
        "NOTIFY portcullis_ch, 'payload-1'",
        "-c",
        "SELECT pg_notify('portcullis_ch', 'payload-2')",
    ]));
    let o = stdout(&out);
    assert!(
        o.contains("Asynchronous notification \"portcullis_ch\" with payload \"payload-1\""),
        "{o}"
    );
    assert!(o.contains("payload-2"), "{o}");
}

fn select_matches_direct(engine: Engine) {
    let env = Env::start(engine);
    portcullis_tests::load_financial(&env.pg, common::DB, 2000, 11).unwrap();
    let sql = "SELECT * FROM accounts ORDER BY id";
    let a = env.ok(env.psql_gw().args(["-c", sql])).stdout;
    let b = env.ok(env.psql_direct().args(["-c", sql])).stdout;
    assert!(a == b, "aligned output differs between gateway and direct");
    assert!(String::from_utf8_lossy(&a).contains("(2000 rows)"));
}
