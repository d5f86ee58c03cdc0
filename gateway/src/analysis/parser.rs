//! PostgreSQL 15's own grammar, through libpg_query (built by the `pg_query` crate).
//!
//! The crate's Rust API returns protobuf structs; the gateway asks the same library for its
//! JSON rendering of the tree instead (see [`super::tree`] for why). `pg_query_parse` and
//! `pg_query_free_parse_result` are libpg_query's public C API, linked into this binary by
//! the crate; this is the only `unsafe` of the analysis.
//!
//! libpg_query parses with `standard_conforming_strings = on` (its default, a thread-local
//! of the C library): the session layer refuses statements in sessions where the server
//! would read string literals differently (see `crate::policy::gate`).

use std::ffi::{CStr, CString, c_char, c_int};

/// Why a text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// PostgreSQL's own message, and the 1-based character position it points at.
    #[error("{message}")]
    Syntax { message: String, position: usize },
    #[error("the statement contains a NUL byte")]
    Nul,
    #[error("the parse tree could not be read: {0}")]
    Tree(String),
}

#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryParseResult {
    parse_tree: *mut c_char,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

unsafe extern "C" {
    fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
    fn pg_query_free_parse_result(result: PgQueryParseResult);
}

// The crate is used for its build of libpg_query; naming one of its items keeps the
// crate, and with it the static library, linked.
#[used]
static LINK_PG_QUERY: fn(&str) -> pg_query::Result<String> = pg_query::normalize;

/// Parses `sql` and returns libpg_query's JSON parse tree.
pub fn parse_json(sql: &str) -> Result<String, ParseError> {
    let c = CString::new(sql).map_err(|_| ParseError::Nul)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; the result's
    // pointers are either null or NUL-terminated strings owned by the result, read before
    // the result is freed exactly once.
    unsafe {
        let r = pg_query_parse(c.as_ptr());
        let out = if !r.error.is_null() {
            let e = &*r.error;
            let message = if e.message.is_null() {
                "syntax error".to_owned()
            } else {
                CStr::from_ptr(e.message).to_string_lossy().into_owned()
            };
            Err(ParseError::Syntax {
                message,
                position: usize::try_from(e.cursorpos).unwrap_or(0),
            })
        } else if r.parse_tree.is_null() {
            Err(ParseError::Tree("libpg_query returned no tree".into()))
        } else {
            Ok(CStr::from_ptr(r.parse_tree).to_string_lossy().into_owned())
        };
        pg_query_free_parse_result(r);
        out
    }
}

/// PostgreSQL's own fingerprint of a text (libpg_query's: the parse tree with literal
/// values and aliases left out), as hex; `None` when it does not parse.
pub fn fingerprint(sql: &str) -> Option<String> {
    pg_query::fingerprint(sql).ok().map(|f| f.hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_postgres_message_and_position() {
        let e = parse_json("SELECT 1 'alias'").unwrap_err();
        match e {
            ParseError::Syntax { message, position } => {
                assert!(message.contains("syntax error"), "{message}");
                assert_eq!(position, 10);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_json("select 1\0x"), Err(ParseError::Nul));
    }

    #[test]
    fn threads_parse_concurrently() {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        assert!(parse_json(&format!("select {i} from t")).is_ok());
                        assert!(parse_json("select from from").is_err());
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
