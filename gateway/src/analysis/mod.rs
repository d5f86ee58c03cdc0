//! Statement analysis: what a statement will do, read with PostgreSQL's own grammar before
//! the gateway forwards it.
//!
//! Sans-IO and pure: [`analyze`] takes the SQL text of a `Query` or `Parse` message and
//! returns one [`Statement`] reading per statement in it: its [`Class`], the relations it
//! reads and writes, the functions it calls, every column reference with where its value
//! is used ([`Use`]), [`Property`] facts rules match on (no `WHERE`, writable CTE, `COPY`
//! to a program, ...), and what it does to the session ([`Effect`]). Rules live in
//! [`crate::policy`]; this room only describes.
//!
//! - [`parser`]: libpg_query (PostgreSQL 15's grammar), the one SQL parser of the gateway.
//! - [`tree`]: its JSON parse tree, read into a compact borrowed tree.
//! - [`walk`]: the walk that fills a [`Statement`].
//! - [`copy`]: what a `COPY` statement says (relation, columns, endpoint, options).
//! - [`functions`]: built-ins known to be free of side effects, and names denied by name.
//! - [`model`]: the reading itself.
//!
//! Readings are cached per thread by exact text ([`analyze_cached`]), so a prepared
//! statement or an agent's repeated query is parsed once.

pub mod copy;
pub mod functions;
pub mod model;
pub mod parser;
pub mod tree;
mod walk;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub use model::{
    Analysis, Class, ColumnUse, Effect, Function, Properties, Property, Relation, Source,
    Statement, Use,
};
pub use parser::ParseError;

/// Why a text has no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the parse tree has an unexpected shape: {0}")]
    Shape(String),
}

/// Analyses SQL text: every statement in it, in order. Text with no statement (empty,
/// only comments or semicolons) has an empty reading.
pub fn analyze(sql: &str) -> Result<Analysis, AnalysisError> {
    let json = parser::parse_json(sql)?;
    let root = tree::read(&json).map_err(|e| ParseError::Tree(e.to_string()))?;
    let mut statements = Vec::new();
    for raw in root.list("stmts") {
        let start = usize::try_from(raw.int("stmt_location")).unwrap_or(0).min(sql.len());
        let len = usize::try_from(raw.int("stmt_len")).unwrap_or(0);
        let end = if len == 0 { sql.len() } else { (start + len).min(sql.len()) };
        let mut stmt = Statement::new((start, end));
        match raw.get("stmt") {
            Some(node) => walk::statement(node, &mut stmt),
            None => return Err(AnalysisError::Shape("a statement without a tree".into())),
        }
        statements.push(stmt);
    }
    Ok(Analysis { statements })
}

/// Bound on cached readings per thread: past it the cache starts over (agents repeat a
/// few shapes; a flood of distinct texts costs a parse each, never memory).
const CACHE_ENTRIES: usize = 4096;
/// Texts longer than this are analysed every time rather than kept.
const CACHE_MAX_TEXT: usize = 16 << 10;

type Cached = Rc<Result<Analysis, AnalysisError>>;

thread_local! {
    static CACHE: RefCell<HashMap<Box<str>, Cached>> = RefCell::new(HashMap::new());
}

/// [`analyze`], cached per thread by exact text.
pub fn analyze_cached(sql: &str) -> Cached {
    if sql.len() > CACHE_MAX_TEXT {
        return Rc::new(analyze(sql));
    }
    if let Some(hit) = CACHE.with(|c| c.borrow().get(sql).cloned()) {
        return hit;
    }
    let result = Rc::new(analyze(sql));
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(sql.into(), result.clone());
    });
    result
}
