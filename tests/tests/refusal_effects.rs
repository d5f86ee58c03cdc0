//! A refused result leaves no effect: when masking refuses a result after the server ran
//! its statement, the server's outcome is made to match what the client is told. Checked
//! with psql, tokio-postgres and raw extended-protocol pipelines against the masked
//! quickstart policy, and by looking at the table directly afterwards.

mod common;

use std::io::Write;

use bytes::BytesMut;
use common::{DB, Env, connect, next_message, raw_login, rt, stderr, stdout};
use fallible_iterator::FallibleIterator;
use portcullis_tests::{Engine, QUICKSTART_MASK_POLICY, per_engine};
use postgres_protocol::message::{backend, frontend};

per_engine!(
    a_refused_write_in_a_block_fails_the_block,
    a_refused_write_outside_a_block_is_undone,
    a_refused_statement_fails_its_pipeline,
);

/// Adds an account and returns the whole new row: the masking policy refuses that result
/// (a whole row would carry masked columns unmasked), after the server ran the insert.
fn refused_insert(new_id: i64) -> String {
    format!(
        "INSERT INTO accounts VALUES ({new_id}, 'Test Person', 'test@example.com', \
         '000-00-0000', '0000 0000 0000 0000', '000000000', 'XX00TEST', 1.00, now(), \
         'note') RETURNING accounts"
    )
}

/// The same insert, returning only its id: masking has nothing to refuse.
fn allowed_insert(new_id: i64) -> String {
    refused_insert(new_id).replace("RETURNING accounts", "RETURNING id")
}

fn env(engine: Engine) -> Env {
    Env::with_dataset(engine, QUICKSTART_MASK_POLICY, 50, 11)
}

/// How many accounts have `id`, read directly.
fn count(env: &Env, id: i64) -> String {
    env.rows(
        &env.pg.direct_uri(DB),
        &format!("SELECT count(*) FROM accounts WHERE id = {id}"),
    )[0][0]
        .clone()
}

fn a_refused_write_in_a_block_fails_the_block(engine: Engine) {
    let env = env(engine);
    // The psql session: the refused row must not be committed.
    // One psql session, one statement a `-c`, going on after errors as a script does.
    let out = common::run_timed(env.psql_gw().args([
        "-c",
        "BEGIN",
        "-c",
        &refused_insert(1_000_001),
        "-c",
        "SELECT 'after refusal'",
        "-c",
        "COMMIT",
    ]));
    let (said, err) = (stdout(&out), stderr(&out));
    assert!(err.contains("portcullis refused this result"), "{err}");
    assert!(
        err.contains("current transaction is aborted"),
        "the statement after the refusal must fail like after any error:\n{err}"
    );
    assert!(
        said.contains("ROLLBACK"),
        "COMMIT of a failed block rolls back:\n{said}"
    );
    assert_eq!(count(&env, 1_000_001), "0", "the refused row was committed");

    // tokio-postgres (extended protocol, a Sync per statement) in a transaction.
    rt().block_on(async {
        let mut c = connect(&env.conninfo()).await;
        let t = c.transaction().await.unwrap();
        let e = t.query(&refused_insert(1_000_002), &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
        let e = t.query("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e}");
        let _ = t.commit().await;
    });
    assert_eq!(count(&env, 1_000_002), "0");
    // A refused read in a block fails it too, as the server's own error would.
    rt().block_on(async {
        let mut c = connect(&env.conninfo()).await;
        let t = c.transaction().await.unwrap();
        t.execute(&allowed_insert(1_000_003), &[]).await.unwrap();
        let e = t
            .query("SELECT a FROM accounts a WHERE id = 1", &[])
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
        let _ = t.commit().await;
    });
    assert_eq!(
        count(&env, 1_000_003),
        "0",
        "the block's earlier write was committed"
    );
}

fn a_refused_write_outside_a_block_is_undone(engine: Engine) {
    let env = env(engine);
    let out = common::run_timed(env.psql_gw().args(["-c", &refused_insert(1_000_011)]));
    assert!(
        stderr(&out).contains("portcullis refused this result"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&env, 1_000_011),
        "0",
        "the refused autocommit write stayed"
    );
    // A write whose result passes is committed, and the session is back outside a block.
    let out = env.ok(env.psql_gw().args([
        "-At",
        "-c",
        &allowed_insert(1_000_012),
        "-c",
        // No transaction of the gateway's is left open around the next statement.
        "SELECT txid_current_if_assigned() IS NULL",
    ]));
    let said = stdout(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines, ["1000012", "INSERT 0 1", "t"]);
    assert_eq!(count(&env, 1_000_012), "1");
    // tokio-postgres, extended protocol outside a block.
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let e = c.query(&refused_insert(1_000_013), &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
        let n: i64 = c
            .query_one("SELECT 41::int8 + 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42, "the session goes on");
    });
    assert_eq!(count(&env, 1_000_013), "0");
}

/// Extended protocol, one batch: a refused write, then another write, then Sync. The
/// client is told the batch failed; neither write may be there afterwards.
fn a_refused_statement_fails_its_pipeline(engine: Engine) {
    let env = env(engine);
    let mut s = raw_login(&env);
    let mut out = BytesMut::new();
    for sql in [refused_insert(1_000_021), allowed_insert(1_000_022)] {
        frontend::parse("", &sql, [], &mut out).unwrap();
        frontend::bind(
            "",
            "",
            [],
            std::iter::empty::<()>(),
            |_, _: &mut BytesMut| Ok(postgres_protocol::IsNull::No),
            [0],
            &mut out,
        )
        .map_err(|_| "bind")
        .unwrap();
        frontend::describe(b'P', "", &mut out).unwrap();
        frontend::execute("", 0, &mut out).unwrap();
    }
    frontend::sync(&mut out);
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    let mut errors = Vec::new();
    let status = loop {
        match next_message(&mut s, &mut buf) {
            backend::Message::ErrorResponse(e) => {
                let mut fields = e.fields();
                while let Some(f) = fields.next().unwrap() {
                    if f.type_() == b'C' {
                        errors.push(String::from_utf8_lossy(f.value_bytes()).into_owned());
                    }
                }
            }
            backend::Message::ReadyForQuery(r) => break r.status(),
            _ => {}
        }
    };
    assert_eq!(
        errors,
        ["42501"],
        "one refusal, the rest of the batch skipped"
    );
    assert_eq!(status, b'I');
    assert_eq!(count(&env, 1_000_021), "0", "the refused write stayed");
    assert_eq!(
        count(&env, 1_000_022),
        "0",
        "a statement after the refusal ran"
    );
    // The session goes on.
    let mut q = BytesMut::new();
    frontend::query("SELECT 1", &mut q).unwrap();
    s.write_all(&q).unwrap();
    loop {
        match next_message(&mut s, &mut buf) {
            backend::Message::ReadyForQuery(_) => break,
            backend::Message::ErrorResponse(_) => panic!("the session is broken"),
            _ => {}
        }
    }
}
