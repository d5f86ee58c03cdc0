//! What a `COPY` statement says, as PostgreSQL's grammar reads it: the relation or query,
//! the column list, the direction and endpoint, and the options as the grammar hands them
//! to the server's `ProcessCopyOptions`.
//!
//! Both option syntaxes arrive here already normalised: the grammar turns the legacy
//! keywords (`CSV HEADER`, `DELIMITER AS '|'`, `FORCE QUOTE *`, `COPY BINARY`, `USING
//! DELIMITERS`) into the same `DefElem`s as the parenthesised list, and string constants
//! arrive unescaped (`E'\t'`, `U&'\0041'`, `$$…$$`, adjacent literals on separate lines).
//! Names arrive folded and truncated as the server folds and truncates them. What the
//! options mean (defaults, conflicts, which are allowed) is left to the caller: this module
//! only says what was written.
//!
//! One quirk of the JSON rendering this reads: libpg_query 15 prints an `Integer` only when
//! it is positive, so `0` and a negative integer both read as `0` here. The server refuses
//! negative values for every `COPY` option, so a caller that accepts `0` accepts nothing
//! the server would run differently.

use super::parser::{self, ParseError};
use super::tree::{self, J};

/// Why a text has no `COPY` reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyReadError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("expected one statement, found {0}")]
    Statements(usize),
    #[error("the statement is not a COPY")]
    NotCopy,
    #[error("the COPY parse tree has an unexpected shape: {0}")]
    Shape(&'static str),
}

/// A `COPY` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// What is copied: a relation, or a query (`COPY (SELECT …) TO …`).
    pub source: CopySource,
    /// The column list as written (folded); empty when there is none.
    pub columns: Vec<String>,
    /// `COPY … FROM` rather than `COPY … TO`.
    pub is_from: bool,
    pub endpoint: Endpoint,
    /// The options in the order written, legacy keywords included.
    pub options: Vec<CopyOption>,
}

/// What a `COPY` reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    Relation(RelationName),
    /// `COPY (query) TO …`; the query itself is the walker's business.
    Query,
}

/// A relation name as written, folded: `[[catalog.]schema.]name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationName {
    pub catalog: Option<String>,
    pub schema: Option<String>,
    pub name: String,
}

/// Where the rows go to or come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `STDIN` or `STDOUT`: the client connection. The grammar does not tell them apart
    /// (`COPY t TO STDIN` copies out to the client, as the server runs it).
    Client,
    /// `'filename'` on the server.
    File(String),
    /// `PROGRAM 'command'` on the server.
    Program(String),
}

/// One option: its name as written (folded unless quoted) and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOption {
    pub name: String,
    pub arg: OptionArg,
}

/// An option's argument, as the grammar builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionArg {
    /// No argument (`HEADER` in a parenthesised list).
    None,
    /// A string constant or a word (`csv`, `on`, `true` and `'x'` alike).
    Str(String),
    /// An integer constant (negative ones read as 0, see the module doc).
    Int(i64),
    /// A numeric constant that is not an integer, as written.
    Float(String),
    /// A legacy keyword option (`CSV HEADER`, `FREEZE`).
    Bool(bool),
    /// `*` (`FORCE_QUOTE *`).
    Star,
    /// A parenthesised list of names or strings (`FORCE_QUOTE (a, "B")`).
    List(Vec<String>),
    /// Any other node, by its type: nothing the PostgreSQL 15 grammar builds for `COPY`.
    Other(String),
}

/// Reads `sql`, which must be exactly one `COPY` statement (trailing semicolons and
/// comments are fine).
pub fn read(sql: &str) -> Result<CopyStatement, CopyReadError> {
    let json = parser::parse_json(sql)?;
    let root = tree::read(&json).map_err(|e| ParseError::Tree(e.to_string()))?;
    let stmts = root.list("stmts");
    let [raw] = stmts else {
        return Err(CopyReadError::Statements(stmts.len()));
    };
    let stmt = raw
        .get("stmt")
        .ok_or(CopyReadError::Shape("a statement without a tree"))?;
    from_tree(stmt)
}

/// The text of the query in `COPY (query) …`, as the server's own lexer splits the
/// statement: from after the parenthesis that follows `COPY` to just before its match
/// (parentheses inside literals, quoted names and comments are not tokens). `None` when
/// the text does not start that way or does not lex.
pub fn query_text(sql: &str) -> Option<&str> {
    use pg_query::protobuf::Token;
    let scan = pg_query::scan(sql).ok()?;
    let is = |t: &pg_query::protobuf::ScanToken, k: Token| t.token == k as i32;
    let mut tokens = scan
        .tokens
        .iter()
        .filter(|t| !is(t, Token::SqlComment) && !is(t, Token::CComment));
    if !tokens.next().is_some_and(|t| is(t, Token::Copy)) {
        return None;
    }
    let open = tokens.next().filter(|t| is(t, Token::Ascii40))?;
    let mut depth = 1u32;
    for t in tokens {
        if is(t, Token::Ascii40) {
            depth += 1;
        } else if is(t, Token::Ascii41) {
            depth -= 1;
            if depth == 0 {
                let start = usize::try_from(open.end).ok()?;
                let end = usize::try_from(t.start).ok()?;
                return sql.get(start..end);
            }
        }
    }
    None
}

/// Reads a statement node of the parse tree (`{"CopyStmt": {…}}`).
pub fn from_tree(stmt: &J<'_>) -> Result<CopyStatement, CopyReadError> {
    let copy = stmt.as_node("CopyStmt").ok_or(CopyReadError::NotCopy)?;
    let source = match (copy.get("relation"), copy.get("query")) {
        (Some(rel), None) => CopySource::Relation(relation(rel)?),
        (None, Some(_)) => CopySource::Query,
        _ => return Err(CopyReadError::Shape("neither one relation nor one query")),
    };
    let columns = copy
        .list("attlist")
        .iter()
        .map(|c| string_node(c).ok_or(CopyReadError::Shape("a column that is not a name")))
        .collect::<Result<_, _>>()?;
    let filename = copy.get("filename").map(|f| {
        f.str()
            .map(str::to_owned)
            .ok_or(CopyReadError::Shape("a file name that is not a string"))
    });
    let endpoint = match (filename.transpose()?, copy.flag("is_program")) {
        (None, false) => Endpoint::Client,
        (Some(f), false) => Endpoint::File(f),
        (Some(p), true) => Endpoint::Program(p),
        (None, true) => return Err(CopyReadError::Shape("PROGRAM without a command")),
    };
    let options = copy
        .list("options")
        .iter()
        .map(option)
        .collect::<Result<_, _>>()?;
    Ok(CopyStatement {
        source,
        columns,
        is_from: copy.flag("is_from"),
        endpoint,
        options,
    })
}

/// A typed field such as `relation` is printed as the bare fields of its `RangeVar`; the
/// wrapped form is read too, so a change of rendering cannot turn a name into nothing.
fn relation(rel: &J<'_>) -> Result<RelationName, CopyReadError> {
    let rel = rel.as_node("RangeVar").unwrap_or(rel);
    let part = |key| rel.get(key).and_then(J::str).map(str::to_owned);
    Ok(RelationName {
        catalog: part("catalogname"),
        schema: part("schemaname"),
        name: part("relname").ok_or(CopyReadError::Shape("a relation without a name"))?,
    })
}

fn option(node: &J<'_>) -> Result<CopyOption, CopyReadError> {
    let def = node
        .as_node("DefElem")
        .ok_or(CopyReadError::Shape("an option that is not a DefElem"))?;
    let name = def
        .get("defname")
        .and_then(J::str)
        .ok_or(CopyReadError::Shape("an option without a name"))?;
    Ok(CopyOption {
        name: name.to_owned(),
        arg: def.get("arg").map_or(OptionArg::None, arg),
    })
}

fn arg(node: &J<'_>) -> OptionArg {
    let Some((ty, f)) = node.node() else {
        return OptionArg::Other("a value that is not a node".into());
    };
    match ty {
        "String" => OptionArg::Str(f.text("sval").to_owned()),
        "Integer" => OptionArg::Int(f.int("ival")),
        "Float" => OptionArg::Float(f.text("fval").to_owned()),
        "Boolean" => OptionArg::Bool(f.flag("boolval")),
        "A_Star" => OptionArg::Star,
        "List" => f
            .list("items")
            .iter()
            .map(string_node)
            .collect::<Option<_>>()
            .map_or_else(|| OptionArg::Other("List".into()), OptionArg::List),
        other => OptionArg::Other(other.to_owned()),
    }
}

/// The value of a `String` node (an absent `sval` is the empty string).
fn string_node(node: &J<'_>) -> Option<String> {
    node.as_node("String").map(|f| f.text("sval").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(sql: &str) -> Vec<(String, OptionArg)> {
        read(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .options
            .into_iter()
            .map(|o| (o.name, o.arg))
            .collect()
    }

    fn o(name: &str, arg: OptionArg) -> (String, OptionArg) {
        (name.into(), arg)
    }

    fn s(v: &str) -> OptionArg {
        OptionArg::Str(v.into())
    }

    #[test]
    fn relation_columns_and_endpoint() {
        let c = read("copy Public.\"Acc\"\"ts\" (ID, \"Ssn\") to stdout;").unwrap();
        assert_eq!(
            c.source,
            CopySource::Relation(RelationName {
                catalog: None,
                schema: Some("public".into()),
                name: "Acc\"ts".into(),
            })
        );
        assert_eq!(c.columns, ["id", "Ssn"]);
        assert_eq!((c.is_from, c.endpoint), (false, Endpoint::Client));
        assert!(c.options.is_empty());

        let c = read("COPY (SELECT 1) TO PROGRAM 'gzip > /tmp/x'").unwrap();
        assert_eq!(c.source, CopySource::Query);
        assert_eq!(c.endpoint, Endpoint::Program("gzip > /tmp/x".into()));
        let c = read("COPY a.b.c FROM '/tmp/x'").unwrap();
        assert!(c.is_from);
        assert_eq!(c.endpoint, Endpoint::File("/tmp/x".into()));
        assert!(matches!(c.source, CopySource::Relation(r) if r.catalog.as_deref() == Some("a")));
        // The server folds ASCII only and cuts names at 63 bytes; STDIN and STDOUT are
        // one endpoint to the grammar.
        let c = read("COPY ÄbC TO STDIN").unwrap();
        assert!(matches!(c.source, CopySource::Relation(r) if r.name == "Äbc"));
        assert_eq!(c.endpoint, Endpoint::Client);
        let long = read(&format!("COPY {} TO STDOUT", "x".repeat(70))).unwrap();
        assert!(matches!(long.source, CopySource::Relation(r) if r.name.len() == 63));
    }

    #[test]
    fn both_option_syntaxes_arrive_as_def_elems() {
        assert_eq!(
            opts(
                "COPY t TO STDOUT (FORMAT csv, \"null\" '', HEADER, header 0, header 2, force_quote *, force_quote (a, \"B\", 'c'), header 1.5)"
            ),
            [
                o("format", s("csv")),
                o("null", s("")),
                o("header", OptionArg::None),
                o("header", OptionArg::Int(0)),
                o("header", OptionArg::Int(2)),
                o("force_quote", OptionArg::Star),
                o(
                    "force_quote",
                    OptionArg::List(vec!["a".into(), "B".into(), "c".into()])
                ),
                o("header", OptionArg::Float("1.5".into())),
            ]
        );
        assert_eq!(
            opts(
                "COPY BINARY t TO STDOUT USING DELIMITERS '|' WITH CSV HEADER QUOTE AS '\"' FORCE QUOTE a, b FORCE NOT NULL c ENCODING 'x'"
            ),
            [
                o("format", s("binary")),
                o("delimiter", s("|")),
                o("format", s("csv")),
                o("header", OptionArg::Bool(true)),
                o("quote", s("\"")),
                o("force_quote", OptionArg::List(vec!["a".into(), "b".into()])),
                o("force_not_null", OptionArg::List(vec!["c".into()])),
                o("encoding", s("x")),
            ]
        );
        // A quoted option name keeps its case: the server does not know "FORMAT".
        assert_eq!(
            opts("COPY t TO STDOUT (\"FORMAT\" csv)"),
            [o("FORMAT", s("csv"))]
        );
    }

    #[test]
    fn literals_arrive_unescaped() {
        let null = |sql: &str| match opts(sql).pop() {
            Some((_, OptionArg::Str(v))) => v,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(null("COPY t TO STDOUT (NULL 'it''s')"), "it's");
        assert_eq!(
            null("COPY t TO STDOUT (NULL E'\\\\N\\t\\x41\\u00e9')"),
            "\\N\tAé"
        );
        assert_eq!(null("COPY t TO STDOUT (NULL E'\\uD83D\\uDE00')"), "😀");
        assert_eq!(null("COPY t TO STDOUT (NULL U&'\\0041')"), "A");
        assert_eq!(null("COPY t TO STDOUT (NULL $q$a$$b$q$)"), "a$$b");
        assert_eq!(null("COPY t TO STDOUT (NULL 'a'\n'b')"), "ab");
        // standard_conforming_strings on, as the gate makes sure of.
        assert_eq!(null("COPY t TO STDOUT (NULL '\\N')"), "\\N");
    }

    #[test]
    fn what_is_not_one_copy_is_an_error() {
        assert_eq!(read(""), Err(CopyReadError::Statements(0)));
        assert_eq!(
            read("COPY t TO STDOUT; COPY u TO STDOUT"),
            Err(CopyReadError::Statements(2))
        );
        assert_eq!(read("SELECT 1"), Err(CopyReadError::NotCopy));
        for sql in [
            "COPY t TO STDOUT (NULL E'\\0')",
            "COPY t TO STDOUT (NULL E'\\xff')",
            "COPY t TO STDOUT (NULL X'41')",
            "COPY t TO STDOUT (NULL 'x'::text)",
            "COPY t TO STDOUT WHERE a = 1",
            "COPY \"\" TO STDOUT",
            "COPY t TO STDOUT (NULL 'x",
            "COPY t TO STDOUT\0",
        ] {
            assert!(matches!(read(sql), Err(CopyReadError::Parse(_))), "{sql}");
        }
    }
}
