//! What the scenarios ask of a client connection: rows as text, refusals as
//! `DbError`s, and the assertions every refusal must pass (42501, a message naming what
//! refused, a hint, and a session that still answers).

use tokio_postgres::error::DbError;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A client error as one line: severity, SQLSTATE, message and detail.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {} (detail: {:?})",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail()
        ),
        None => format!("{e:?}"),
    }
}

/// Runs one simple Query and panics, saying why, unless it succeeds.
pub async fn run(c: &Client, sql: &str) {
    if let Err(e) = c.batch_execute(sql).await {
        panic!("{sql}\n    -> {}", describe(&e));
    }
}

/// Rows of a simple query as text, NULL as `None`.
pub async fn texts(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = match c.simple_query(sql).await {
        Ok(m) => m,
        Err(e) => panic!("{sql}\n    -> {}", describe(&e)),
    };
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The first value of the first row.
pub async fn one(c: &Client, sql: &str) -> String {
    texts(c, sql)
        .await
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_else(|| panic!("{sql}: no value"))
}

/// The error a simple Query got; panics if it ran.
pub async fn refusal(c: &Client, sql: &str) -> DbError {
    match c.batch_execute(sql).await {
        Ok(()) => panic!("{sql}: ran, but should have been refused"),
        Err(e) => e
            .as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: not a database error: {e:?}")),
    }
}

/// Asserts a gateway refusal: 42501, a hint, the message starts with `message`, and
/// message, detail and hint together contain each of `names`.
pub fn assert_refused(what: &str, e: &DbError, message: &str, names: &[&str]) {
    let all = format!(
        "{} | {} | {}",
        e.message(),
        e.detail().unwrap_or_default(),
        e.hint().unwrap_or_default()
    );
    assert_eq!(e.code().code(), "42501", "{what}: {all}");
    assert!(
        e.message().starts_with(message),
        "{what}: message {:?} does not start with {message:?}",
        e.message()
    );
    for n in names {
        assert!(all.contains(n), "{what}: {n:?} not in {all:?}");
    }
    assert!(
        e.hint().is_some(),
        "{what}: a refusal without a hint: {all}"
    );
}

/// A refusal must leave the session idle and answering.
pub async fn assert_alive(c: &Client, after: &str) {
    match c.simple_query("SELECT 41 + 1").await {
        Ok(m) => assert!(
            m.iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))),
            "after {after:?}: {m:?}"
        ),
        Err(e) => panic!("session unusable after {after:?}: {}", describe(&e)),
    }
}

/// Row count and md5 over every row of `table` in id order, read directly.
pub async fn checksum(direct: &Client, table: &str) -> (u64, String) {
    let sql = format!(
        "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {table} t"
    );
    let row = &texts(direct, &sql).await[0];
    let count = row[0].as_deref().unwrap().parse().unwrap();
    (count, row[1].clone().unwrap())
}
