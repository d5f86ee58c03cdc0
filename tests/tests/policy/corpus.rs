//! The statement corpus (`gateway/tests/data/sql-corpus.sql`): its blocks, its fixture,
//! and the test that replays it directly against PostgreSQL and through the gateway.

use std::fmt::Write as _;
use std::path::PathBuf;

use tokio_postgres::Client;
use tokio_postgres::error::DbError;

use crate::client::run;
use crate::common::{connect, rt};
use crate::{quickstart_gateway, socket_conninfo};
use portcullis_tests::Engine;

/// One block of the corpus: what a fail-closed classifier must conclude and the SQL.
#[derive(Debug, Clone)]
pub struct Block {
    /// 1-based line of the block's `-- expect:` line, for messages.
    pub line: usize,
    pub expect: String,
    pub why: String,
    pub sql: String,
}

impl Block {
    /// The corpus marks blocks that are the text of one extended-protocol `Parse` (their
    /// `$1` is a parameter, which a simple Query would reject before any policy question).
    pub fn is_parse_text(&self) -> bool {
        self.why.starts_with("Parse text")
    }

    /// The SQL on one line, shortened, for tables and messages.
    pub fn short(&self) -> String {
        let one: String = self.sql.split_whitespace().collect::<Vec<_>>().join(" ");
        match one.char_indices().nth(70) {
            Some((i, _)) => format!("{}…", &one[..i]),
            None => one,
        }
    }
}

/// The fixture DDL of the corpus header, run in a fresh database before the blocks.
/// The header defines `lying_immutable()` without arguments and a block calls it with
/// one; that block then fails on the missing function, as it did when it was checked.
pub const FIXTURE: &str = "
CREATE EXTENSION dblink;
CREATE ROLE agent; CREATE ROLE app; CREATE SCHEMA evil;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, amount numeric);
CREATE TABLE audit_log (id serial PRIMARY KEY, note text);
CREATE SEQUENCE s1;
CREATE FUNCTION lying_immutable() RETURNS int IMMUTABLE LANGUAGE plpgsql
  AS $$ BEGIN DELETE FROM audit_log; RETURN 1; END $$;
CREATE PROCEDURE purge_everything() LANGUAGE sql AS $$ DELETE FROM orders $$;
CREATE FUNCTION trg_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
";

pub fn path() -> PathBuf {
    portcullis_tests::gateway::workspace_root().join("gateway/tests/data/sql-corpus.sql")
}

/// Every block after the header, in file order.
pub fn blocks() -> Vec<Block> {
    let path = path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse(&text)
}

/// Splits at lines that are exactly `-- ---`; the first part is the header.
pub fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    let mut in_header = true;
    for (i, line) in text.lines().enumerate() {
        if line == "-- ---" {
            if let Some((start, lines)) = current.take() {
                blocks.push(block(start, &lines));
            }
            in_header = false;
            current = Some((i + 2, Vec::new()));
            continue;
        }
        if !in_header && let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((start, lines)) = current {
        blocks.push(block(start, &lines));
    }
    blocks
}

fn block(line: usize, lines: &[&str]) -> Block {
    let head = lines.first().copied().unwrap_or_default();
    let spec = head
        .strip_prefix("-- expect: ")
        .unwrap_or_else(|| panic!("corpus line {line}: block does not start with `-- expect:`"));
    let (expect, why) = spec.split_once(';').unwrap_or((spec, ""));
    let sql = lines[1..].join("\n").trim_end_matches('\n').to_string();
    assert!(!sql.trim().is_empty(), "corpus line {line}: empty block");
    Block {
        line,
        expect: expect.trim().to_string(),
        why: why.trim().to_string(),
        sql,
    }
}

/// Every block of the corpus, first directly against PostgreSQL 15, then through the
/// gateway as the agent.
///
/// Directly, each block runs in a fresh connection as `nobody`, a LOGIN role with no
/// privileges (not a superuser, no table rights, not in `pg_read_server_files`,
/// `pg_execute_server_program` or `pg_signal_backend`), inside `BEGIN … ROLLBACK` with a
/// 500 ms statement timeout. PostgreSQL parses a whole Query string, and analyses each
/// statement, before it checks privileges, so a block with a syntax error still gets
/// 42601, while a valid one stops at a permission error, a missing object or the timeout,
/// or runs and is rolled back: nothing in the corpus can then touch a file, run a
/// program, signal a backend, reach another database or outlive the rollback. A block
/// PostgreSQL will not run in a transaction block (`VACUUM`, `DISCARD ALL`,
/// `DROP DATABASE`…) answers 25001, which already shows it parsed; it is run again as
/// `nobody` outside a transaction, where its lack of privileges stops it. dblink is the
/// contrib extension Debian's postgresql-15 ships: a cluster without it fails at the
/// fixture, loudly, rather than skip blocks.
///
/// Through the gateway, the blocks run in one agent session, each inside
/// `BEGIN … ROLLBACK` so allowed writes leave the fixture as it was for later blocks;
/// blocks the corpus marks as Parse text go through the extended protocol. `danger`
/// blocks must be refused by the gateway (42501 with a portcullis message), `invalid`
/// blocks must get 42601 with PostgreSQL's message and position, and no other block may
/// be called a syntax error.
#[test]
fn statement_corpus_direct_and_through_the_gateway() {
    let blocks = blocks();
    let env = quickstart_gateway(Engine::Auto);
    // Not "lab": the dblink blocks dial dbname=lab and must find nothing.
    let db = "corpus";
    env.pg.create_database(db).unwrap();
    if let Err(e) = env.pg.psql(db, FIXTURE) {
        panic!("corpus fixture (is postgresql-15's contrib dblink installed?): {e}");
    }
    env.pg
        .psql(
            db,
            "CREATE ROLE nobody LOGIN; REVOKE ALL ON DATABASE corpus FROM PUBLIC; \
             GRANT CONNECT ON DATABASE corpus TO nobody",
        )
        .unwrap();
    let mut failures = Vec::new();
    let mut table = String::new();
    rt().block_on(async {
        let nobody = socket_conninfo(&env, "nobody", db);
        let mut direct = Vec::new();
        for b in &blocks {
            let r = run_directly(&nobody, b).await;
            let code = r.as_ref().err().map(|e| e.code().code());
            if (b.expect == "invalid") != (code == Some("42601")) {
                failures.push(format!("line {} directly: {code:?} {}", b.line, b.short()));
            }
            direct.push(r);
        }
        let conninfo = env.gw.conninfo("agent", "agent-secret", db);
        let c = connect(&conninfo).await;
        for (b, d) in blocks.iter().zip(&direct) {
            assert!(
                !c.is_closed(),
                "the gateway closed the session before line {}",
                b.line
            );
            run(&c, "BEGIN").await;
            let r = run_block(&c, b).await;
            let _ = c.batch_execute("ROLLBACK").await;
            let (code, message) = match &r {
                Ok(()) => ("ok", ""),
                Err(e) => (e.code().code(), e.message()),
            };
            let direct_code = d.as_ref().err().map_or("ok", |e| e.code().code());
            let _ = writeln!(
                table,
                "{:4} {:8} direct {direct_code:6} gateway {code:6} {} | {message}",
                b.line,
                b.expect,
                b.short()
            );
            let wrong = match b.expect.as_str() {
                "danger" => code != "42501" || !message.starts_with("portcullis "),
                "invalid" => !matches!((&r, d), (Err(g), Err(s))
                    if g.code().code() == "42601"
                        && g.message() == s.message()
                        && g.position() == s.position()),
                _ => code == "42601",
            };
            if wrong {
                failures.push(format!(
                    "line {} ({}) through the gateway: {code} {message:?} for {}",
                    b.line,
                    b.expect,
                    b.short()
                ));
            }
        }
    });
    println!("{table}");
    assert!(
        failures.is_empty(),
        "corpus mismatches:\n{}\n\nall blocks:\n{table}",
        failures.join("\n")
    );
}

/// One block as `nobody`, in a rolled-back transaction, or outside one when PostgreSQL
/// refuses it inside (25001).
async fn run_directly(conninfo: &str, b: &Block) -> Result<(), DbError> {
    let c = connect(conninfo).await;
    run(&c, "BEGIN; SET LOCAL statement_timeout = '500ms'").await;
    let r = run_block(&c, b).await;
    let _ = c.batch_execute("ROLLBACK").await;
    match r {
        Err(e) if e.code().code() == "25001" => {
            let c = connect(conninfo).await;
            run(&c, "SET statement_timeout = '500ms'").await;
            run_block(&c, b).await
        }
        r => r,
    }
}

/// One corpus block as the corpus means it to be sent.
async fn run_block(c: &Client, b: &Block) -> Result<(), DbError> {
    let copy_out = b.sql.trim_start().to_ascii_uppercase().starts_with("COPY")
        && b.sql.to_ascii_uppercase().contains("TO STDOUT");
    let r = if b.is_parse_text() {
        c.prepare(&b.sql).await.map(drop)
    } else if copy_out {
        // A COPY that runs streams its rows: read them to the end, as a client does.
        match c.copy_out(b.sql.as_str()).await {
            Ok(stream) => {
                futures_util::pin_mut!(stream);
                let mut r = Ok(());
                while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                    if let Err(e) = chunk {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
            Err(e) => Err(e),
        }
    } else {
        c.batch_execute(&b.sql).await
    };
    r.map_err(|e| {
        e.as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("line {}: not a database error: {e:?}", b.line))
    })
}

#[test]
fn corpus_blocks_parse() {
    let b = parse(concat!(
        "header\n-- ---\n-- expect: read; why\nSELECT 1;\n",
        "-- ---\n-- expect: invalid; x\nSELECT\n 2;\n",
    ));
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[0].line, b[0].expect.as_str(), b[0].why.as_str()),
        (3, "read", "why")
    );
    assert_eq!(b[0].sql, "SELECT 1;");
    assert_eq!(b[1].sql, "SELECT\n 2;");
    let all = blocks();
    assert!(all.len() > 100, "{} blocks", all.len());
    let known = [
        "read", "write", "ddl", "dcl", "admin", "txn", "session", "danger", "invalid",
    ];
    for b in &all {
        assert!(
            known.contains(&b.expect.as_str()),
            "line {}: class {:?}",
            b.line,
            b.expect
        );
    }
}
