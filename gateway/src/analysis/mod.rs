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
//! Readings are cached per thread by exact text and by shape ([`analyze_cached`]), so a
//! prepared statement, an agent's repeated query or the same query with other constants
//! is parsed once.

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
        let start = usize::try_from(raw.int("stmt_location"))
            .unwrap_or(0)
            .min(sql.len());
        let len = usize::try_from(raw.int("stmt_len")).unwrap_or(0);
        let end = if len == 0 {
            sql.len()
        } else {
            (start + len).min(sql.len())
        };
        let mut stmt = Statement::new((start, end));
        match raw.get("stmt") {
            Some(node) => walk::statement(node, &mut stmt),
            None => return Err(AnalysisError::Shape("a statement without a tree".into())),
        }
        statements.push(stmt);
    }
    Ok(Analysis {
        statements,
        fingerprint: Default::default(),
    })
}

/// Bound on cached readings per thread: past it the cache starts over (agents repeat a
/// few shapes; a flood of distinct texts costs a parse each, never memory).
const CACHE_ENTRIES: usize = 4096;
/// Texts longer than this are analysed every time rather than kept.
const CACHE_MAX_TEXT: usize = 16 << 10;

type Cached = Rc<Result<Analysis, AnalysisError>>;

thread_local! {
    static CACHE: RefCell<HashMap<Box<str>, Cached>> = RefCell::new(HashMap::new());
    static SHAPES: RefCell<HashMap<Box<str>, Cached>> = RefCell::new(HashMap::new());
    static QUICK: RefCell<HashMap<Box<str>, Cached>> = RefCell::new(HashMap::new());
}

/// [`analyze`], cached per thread: by exact text, and for a single data statement whose
/// reading does not depend on its constants, by its shape (the same statement with other
/// constants: `WHERE aid = 1` and `WHERE aid = 2`, as pgbench and ORMs that inline values
/// send). The shape is the token sequence from PostgreSQL's own lexer with each literal
/// replaced by its kind, so two texts share a shape only if the grammar sees the same
/// tokens; a shape is cached only for readings that never looked at a literal's value
/// ([`Statement::reads_literals`]).
pub fn analyze_cached(sql: &str) -> Cached {
    if sql.len() > CACHE_MAX_TEXT {
        return Rc::new(analyze(sql));
    }
    if let Some(hit) = CACHE.with(|c| c.borrow().get(sql).cloned()) {
        return hit;
    }
    // A quick hit is not kept by exact text: a stream of new constants would only churn
    // that cache.
    let quick = quick_shape(sql);
    if let Some(key) = &quick
        && let Some(hit) = QUICK.with(|c| c.borrow().get(key.as_str()).cloned())
    {
        return hit;
    }
    let shape = shape(sql);
    if let Some(key) = &shape
        && let Some(hit) = SHAPES.with(|c| c.borrow().get(key.as_str()).cloned())
    {
        if let Some(q) = quick {
            QUICK.with(|c| insert(&mut c.borrow_mut(), q.into(), &hit));
        }
        CACHE.with(|c| insert(&mut c.borrow_mut(), sql.into(), &hit));
        return hit;
    }
    let result = analyze(sql);
    let reusable = matches!(&result, Ok(a) if a.statements.len() == 1
        && !a.statements[0].reads_literals
        && matches!(a.statements[0].command.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"));
    let result = Rc::new(match result {
        // A shape's reading stands for texts of other lengths: its span is the whole text.
        Ok(mut a) if reusable => {
            a.statements[0].span = (0, usize::MAX);
            Ok(a)
        }
        other => other,
    });
    if let Some(key) = shape.filter(|_| reusable) {
        SHAPES.with(|c| insert(&mut c.borrow_mut(), key.into(), &result));
        if let Some(q) = quick {
            QUICK.with(|c| insert(&mut c.borrow_mut(), q.into(), &result));
        }
    }
    // The exact text too, so a repeat costs a lookup rather than a scan.
    CACHE.with(|c| insert(&mut c.borrow_mut(), sql.into(), &result));
    result
}

fn insert(cache: &mut HashMap<Box<str>, Cached>, key: Box<str>, value: &Cached) {
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, value.clone());
}

/// A cheaper key for the commonest shape, an integer constant in plain text, found
/// without the lexer's protobuf round trip (a third of an uncached statement's cost):
/// the text itself with each such constant replaced by `\u{1}`; `None` when the text
/// has no such constant or anything this key cannot vouch for.
///
/// Two texts with the same quick key always have the same [`shape`], so the quick key
/// is only a faster way to the lexer's answer, never a second reading of the grammar:
/// - it gives up on anything that takes PostgreSQL's lexer out of its initial state
///   (quotes, `$`, comments, backslashes), on non-ASCII text and on control characters,
///   so every byte it keeps means what it means in plain SQL, and the marker cannot occur
///   in the text;
/// - it replaces only a run of 1 to 9 digits between whitespace or `(`, `,`, `=`, `<`, `>`
///   before and whitespace, `)`, `,`, `;` or the end after: in PostgreSQL's lexer that
///   run is one whole integer constant whatever its digits (an `Iconst`, never an
///   `Fconst`, which a longer integer becomes), and its neighbours' tokens do not change
///   with it. A test checks both against the lexer.
fn quick_shape(sql: &str) -> Option<String> {
    const BEFORE: &[u8] = b" \t\n\r(,=<>";
    const AFTER: &[u8] = b" \t\n\r),;";
    let b = sql.as_bytes();
    let mut key = Vec::with_capacity(b.len());
    let mut literals = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'$' | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'0'..=b'9' => {
                let end = b[i..]
                    .iter()
                    .position(|d| !d.is_ascii_digit())
                    .map_or(b.len(), |n| i + n);
                let bounded = i > 0
                    && BEFORE.contains(&b[i - 1])
                    && b.get(end).is_none_or(|a| AFTER.contains(a));
                if bounded && end - i <= 9 {
                    key.push(1);
                    literals += 1;
                } else {
                    key.extend_from_slice(&b[i..end]);
                }
                i = end;
                continue;
            }
            b' '..=b'~' | b'\t' | b'\n' | b'\r' => key.push(c),
            _ => return None,
        }
        i += 1;
    }
    // Only ASCII was kept, so the bytes are UTF-8.
    (literals > 0)
        .then(|| String::from_utf8(key).ok())
        .flatten()
}

/// The text's tokens with every literal replaced by its kind, comments dropped; `None`
/// when it has no literal (the exact text is the key then) or does not lex.
fn shape(sql: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let scan = pg_query::scan(sql).ok()?;
    let mut key = String::with_capacity(sql.len());
    let mut literals = 0;
    for t in &scan.tokens {
        let kind = t.token;
        if kind == Token::SqlComment as i32 || kind == Token::CComment as i32 {
            continue;
        }
        let literal = [
            Token::Iconst,
            Token::Fconst,
            Token::Sconst,
            Token::Usconst,
            Token::Bconst,
            Token::Xconst,
        ]
        .iter()
        .any(|k| *k as i32 == kind);
        if literal {
            literals += 1;
            key.push('\u{1}');
            key.push_str(&kind.to_string());
        } else {
            key.push_str(sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)?);
        }
        key.push('\u{0}');
    }
    (literals > 0).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut a = analyze(sql).unwrap();
        assert_eq!(a.statements.len(), 1, "{sql}");
        a.statements.remove(0)
    }

    fn rels(s: &Statement) -> Vec<String> {
        s.relations
            .iter()
            .map(|r| format!("{r}{}", if r.write { " (w)" } else { "" }))
            .collect()
    }

    #[test]
    fn signalling_the_sessions_own_backend_is_not_signalling_others() {
        for own in [
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "SELECT pg_catalog.pg_cancel_backend(pg_catalog.pg_backend_pid())",
        ] {
            assert!(!one(own).has(Property::SignalBackend), "{own}");
        }
        for other in [
            "SELECT pg_terminate_backend(12345)",
            "SELECT pg_terminate_backend(pg_backend_pid() + 1)",
            "SELECT pg_terminate_backend(pg_backend_pid(), 1000)",
            "SELECT pg_terminate_backend(pg_backend_pid()), pg_cancel_backend(77)",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "SELECT myschema.pg_terminate_backend(pg_backend_pid()), pg_terminate_backend(1)",
            "EXPLAIN ANALYZE SELECT pg_terminate_backend(1)",
        ] {
            assert!(one(other).has(Property::SignalBackend), "{other}");
        }
    }

    #[test]
    fn a_cte_shadows_a_table_only_inside_its_with() {
        let s = one("WITH accounts AS (SELECT 1 AS ssn) SELECT ssn FROM accounts");
        assert!(s.relations.is_empty(), "{:?}", rels(&s));
        let s = one(
            "SELECT * FROM (WITH accounts AS (SELECT 1 AS ssn) SELECT * FROM accounts) x, public.accounts",
        );
        assert_eq!(rels(&s), ["public.accounts"]);
        let s = one("WITH t AS (SELECT 1) SELECT * FROM accounts a JOIN t ON true");
        assert_eq!(rels(&s), ["accounts"]);
    }

    #[test]
    fn writes_are_found_wherever_they_hide() {
        for (sql, want) in [
            ("INSERT INTO s.t SELECT * FROM u", vec!["s.t (w)", "u"]),
            (
                "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
                vec!["t (w)"],
            ),
            ("SELECT * INTO new_t FROM t", vec!["t", "new_t (w)"]),
            ("CREATE TABLE x AS SELECT 1 FROM y", vec!["x (w)", "y"]),
            ("COPY t FROM STDIN", vec!["t (w)"]),
            ("TRUNCATE a, b.c", vec!["a (w)", "b.c (w)"]),
            ("DROP TABLE IF EXISTS a, s.b", vec!["a (w)", "s.b (w)"]),
            (
                "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
                vec!["t (w)", "u"],
            ),
            (
                "EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE id = 2",
                vec!["t (w)"],
            ),
            ("VACUUM FULL t", vec!["t"]),
        ] {
            assert_eq!(rels(&one(sql)), want, "{sql}");
        }
    }

    #[test]
    fn unbounded_writes() {
        for (sql, unbounded) in [
            ("DELETE FROM t", true),
            ("DELETE FROM t WHERE true", true),
            ("DELETE FROM t WHERE id = id", true),
            ("DELETE FROM t WHERE id = $1 OR $2", true),
            ("DELETE FROM t WHERE name LIKE $1", true),
            ("DELETE FROM t WHERE name LIKE '%x'", true),
            ("DELETE FROM t WHERE id IS NOT NULL", true),
            ("DELETE FROM t WHERE NOT (id = 1)", true),
            ("UPDATE t SET a = 1 WHERE id IN (SELECT id FROM t)", true),
            ("DELETE FROM t WHERE id = 1", false),
            ("DELETE FROM t WHERE id = $1", false),
            ("DELETE FROM t WHERE name LIKE 'abc%'", false),
            ("DELETE FROM t WHERE id = 1 OR id = 2", false),
            ("DELETE FROM t WHERE archived", false),
            (
                "DELETE FROM t WHERE created < now() - interval '1 day'",
                false,
            ),
            (
                "DELETE FROM t WHERE ctid IN (SELECT ctid FROM t LIMIT 10)",
                false,
            ),
            ("UPDATE t SET a = 1 WHERE CURRENT OF c", false),
            ("DELETE FROM t WHERE deleted_at IS NULL", false),
        ] {
            assert_eq!(one(sql).has(Property::Unbounded), unbounded, "{sql}");
        }
    }

    #[test]
    fn readings_of_settings_and_prepared_statements() {
        let s = one("SET search_path = a, \"B\", public");
        assert_eq!(
            s.effect,
            Some(Effect::SearchPath(Some(vec![
                "a".into(),
                "B".into(),
                "public".into()
            ])))
        );
        assert_eq!(
            one("RESET search_path").effect,
            Some(Effect::SearchPath(None))
        );
        let s = one("PREPARE p(int) AS DELETE FROM t");
        assert_eq!(s.effect, Some(Effect::Prepare("p".into())));
        assert_eq!(s.class, Class::Write);
        assert!(s.has(Property::Unbounded));
        let s = one("EXPLAIN ANALYZE EXECUTE p(1)");
        assert_eq!(s.executes.as_deref(), Some("p"));
        assert!(s.has(Property::ExplainAnalyze));
        assert_eq!(
            one("SET standard_conforming_strings TO off").effect,
            Some(Effect::StandardConformingStrings(Some(false)))
        );
    }

    #[test]
    fn statements_differing_in_constants_share_a_reading_only_when_it_holds_for_both() {
        let a = analyze_cached("SELECT abalance FROM shape_t WHERE aid = 1");
        let b = analyze_cached("SELECT abalance FROM shape_t WHERE aid = 12345 -- other");
        assert!(Rc::ptr_eq(&a, &b));
        // Another token (an identifier, an operator, a keyword) is another shape.
        let c = analyze_cached("SELECT abalance FROM shape_t WHERE bid = 1");
        assert!(!Rc::ptr_eq(&a, &c));
        // `ORDER BY 1` and `ORDER BY 2` are different statements; so are LIKE prefixes.
        let d = analyze_cached("SELECT a, b FROM shape_t ORDER BY 1");
        let e = analyze_cached("SELECT a, b FROM shape_t ORDER BY 2");
        assert!(!Rc::ptr_eq(&d, &e));
        let f = analyze_cached("DELETE FROM shape_t WHERE n LIKE 'abc%'");
        let g = analyze_cached("DELETE FROM shape_t WHERE n LIKE '%'");
        assert!(g.as_ref().as_ref().unwrap().statements[0].has(Property::Unbounded));
        assert!(!f.as_ref().as_ref().unwrap().statements[0].has(Property::Unbounded));
        // A literal that is a structural token elsewhere is not a literal here.
        let h = analyze_cached("SELECT 'x' FROM shape_t");
        let i = analyze_cached("SELECT 1 FROM shape_t");
        assert!(!Rc::ptr_eq(&h, &i));
    }

    #[test]
    fn the_quick_key_takes_plain_integer_constants_and_nothing_else() {
        let q = |s: &str| quick_shape(s);
        assert_eq!(
            q("SELECT abalance FROM pgbench_accounts WHERE aid = 46158;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = \u{1};")
        );
        assert_eq!(
            q("SELECT * FROM t WHERE a IN (1,22)").as_deref(),
            Some("SELECT * FROM t WHERE a IN (\u{1},\u{1})")
        );
        for other in [
            "SELECT 1.5 FROM t",
            "SELECT * FROM t1",
            "SELECT * FROM t WHERE a = -",
            "SELECT * FROM t WHERE a = 1e5",
            "SELECT * FROM t WHERE a = 1234567890",
            "SELECT * FROM t WHERE a = 1::int",
            "SELECT * FROM t WHERE a = '1'",
            "SELECT * FROM \"t 1\"",
            "SELECT $1 + 2",
            "SELECT 2 -- 3",
            "SELECT 2 /* 3 */",
            "SELECT 2 FROM tü",
            "SELECT 2\0",
        ] {
            assert_eq!(q(other), None, "{other}");
        }
    }

    #[test]
    fn a_quick_hit_is_the_lexers_shape_hit() {
        let a = analyze_cached("SELECT abalance FROM quick_t WHERE aid = 7;");
        let b = analyze_cached("SELECT abalance FROM quick_t WHERE aid = 8;");
        // No quick key (a comment), the lexer's shape: the same reading.
        let c = analyze_cached("SELECT abalance FROM quick_t WHERE aid =  9; -- x");
        assert!(Rc::ptr_eq(&a, &b) && Rc::ptr_eq(&a, &c));
        // A string constant is another shape.
        let s = analyze_cached("SELECT abalance FROM quick_t WHERE aid = '8';");
        assert!(!Rc::ptr_eq(&a, &s));
        // Not reusable, so neither cache keeps it by shape.
        let d = analyze_cached("SELECT a, b FROM quick_t ORDER BY 1");
        let e = analyze_cached("SELECT a, b FROM quick_t ORDER BY 2");
        assert!(!Rc::ptr_eq(&d, &e));
    }

    proptest::proptest! {
        /// What makes the quick key safe: each run it replaces is one whole integer
        /// constant to PostgreSQL's lexer, and other digits there leave the lexer's shape
        /// (and the quick key) as they were.
        #[test]
        fn the_quick_key_agrees_with_the_lexer(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "SELECT", "select", " ", "\n", "\t", "a", "t1", "1", "42", "123456789", "1234567890",
                "=", "<", ">", "(", ")", ",", ";", ".", "e", "E", "_", "x", "'", "\"", "$", "$1",
                "-", "--", "/", "*", "/*", "*/", "+", ":", "::", "\\", "ü", "0x", "U&", "b'", "%",
            ]), 1..24),
            digits in proptest::collection::vec("[0-9]{1,9}", 8),
        ) {
            let text: String = parts.concat();
            if let Some(key) = quick_shape(&text) {
                let scan = pg_query::scan(&text).expect("a text with a quick key lexes");
                let iconst: Vec<(usize, usize)> = scan.tokens.iter()
                    .filter(|t| t.token == pg_query::protobuf::Token::Iconst as i32)
                    .map(|t| (t.start as usize, t.end as usize))
                    .collect();
                // Rebuild the text from the key with other digits in each marker.
                let mut other = String::new();
                let mut at = 0;
                let mut n = 0;
                for c in key.chars() {
                    if c == '\u{1}' {
                        let end = at + text[at..].find(|d: char| !d.is_ascii_digit()).unwrap_or(text.len() - at);
                        proptest::prop_assert!(iconst.contains(&(at, end)), "{text:?}: {at}..{end} not an Iconst");
                        other.push_str(&digits[n % digits.len()]);
                        n += 1;
                        at = end;
                    } else {
                        other.push(c);
                        at += c.len_utf8();
                    }
                }
                proptest::prop_assert_eq!(quick_shape(&other), Some(key));
                proptest::prop_assert_eq!(shape(&other), shape(&text), "{:?} / {:?}", text, other);
            }
        }
    }

    #[test]
    fn the_cache_returns_the_same_reading() {
        let a = analyze_cached("SELECT 1 FROM cached_t");
        let b = analyze_cached("SELECT 1 FROM cached_t");
        assert!(Rc::ptr_eq(&a, &b));
        assert!(analyze_cached("SELEC").is_err());
    }
}
