//! What a `COPY … TO STDOUT` statement reads and how the server lays its rows out, for
//! masking.
//!
//! `COPY` data carries no column description, so the gateway reads the statement itself:
//! the relation and column list say which columns the rows hold (a side query resolves
//! them), the options how each row is written (format, delimiter, NULL string, header
//! line, quote and escape characters, forced quoting, encoding). Splitting fields at the
//! wrong byte would mask the wrong column or miss one, so the reading is strict.
//!
//! The statement is read with PostgreSQL's own grammar ([`crate::analysis::copy`]): both
//! option syntaxes, every literal style and identifier folding come out as the server sees
//! them, so there is no second SQL parser here to disagree with it. This module gives the
//! options their meaning as the server's `ProcessCopyOptions` does (defaults, repeated and
//! conflicting options, which values are allowed) and refuses what masking cannot follow:
//! a file or program, `COPY FROM`, unknown or `COPY FROM`-only options, a value in a form
//! it does not read, more than one statement. The masking stage then refuses the `COPY`
//! while rules apply. Nothing here panics, whatever the input.
//!
//! `COPY (query) TO STDOUT` carries the query's result: its text is cut out with the
//! server's lexer ([`grammar::query_text`]) so the session can have the server describe
//! it, never run it, before the `COPY` goes.
//!
//! The grammar reads string literals with `standard_conforming_strings` on. The statement
//! gate refuses statements in sessions that turned it off; when the policy is disabled
//! the gate does not look, so here a statement with a backslash is refused in a session
//! known to have it off.

use thiserror::Error;

use crate::analysis::copy::{self as grammar, CopyReadError, CopySource, Endpoint, OptionArg};
use crate::mask::copy::parse_copy_out_response;
use crate::mask::{ColumnDesc, CopyFormat, MaskError};

/// The relation, column list and options of a `COPY … TO STDOUT` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    pub schema: Option<String>,
    /// Empty for `COPY (query)`.
    pub table: String,
    /// Columns in copy order, folded as PostgreSQL folds them; `None` = all columns.
    pub columns: Option<Vec<String>>,
    /// `COPY (query)`: the query's text. Its rows are the query's result, described
    /// by the server on the session's own connection, not a relation's columns.
    pub query: Option<String>,
    pub options: CopyOptions,
}

/// `FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Csv,
    Binary,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Csv => "csv",
            Format::Binary => "binary",
        }
    }
}

/// `FORCE_QUOTE`: the columns whose non-NULL values are always quoted (CSV).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ForceQuote {
    #[default]
    None,
    All,
    Columns(Vec<String>),
}

/// A statement's options with PostgreSQL's defaults filled in. In binary format only
/// `format` and `encoding` mean anything; the rest hold the text defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: Format,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
    pub force_quote: ForceQuote,
    /// `ENCODING` as written; `None` means the connection's client encoding.
    pub encoding: Option<String>,
}

/// Why a `COPY` statement cannot be masked safely.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CopyStatementError {
    #[error("the statement is not valid UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Read(#[from] CopyReadError),
    #[error("{0} is not supported in a masked COPY")]
    Unsupported(&'static str),
    #[error("COPY option {0:?} is not understood")]
    UnknownOption(String),
    #[error("COPY option {0} is given more than once")]
    Repeated(&'static str),
    #[error("COPY option {option}: {problem}")]
    BadOption {
        option: &'static str,
        problem: &'static str,
    },
    #[error(
        "standard_conforming_strings is off in this session, and the gateway reads backslashes in string literals as with it on"
    )]
    StandardConformingStringsOff,
    #[error("FORCE_QUOTE column {0:?} is not one of the copied columns")]
    ForceQuoteColumn(String),
    #[error("the server sent {server} COPY data for a statement asking for {statement}")]
    FormatMismatch {
        server: &'static str,
        statement: &'static str,
    },
    #[error(
        "ENCODING {0:?}: the gateway masks COPY data only in UTF8 (in other encodings a delimiter byte can sit inside a character)"
    )]
    Encoding(String),
}

impl From<CopyStatementError> for MaskError {
    fn from(e: CopyStatementError) -> Self {
        MaskError::CopyStatement(e.to_string())
    }
}

impl CopyTarget {
    /// SQL listing the relation's columns in order: table OID, schema, table, attnum,
    /// column name, type OID. Names go in as quoted literals, never as SQL.
    ///
    /// An unqualified name is looked up in every schema, not through a search_path: the
    /// query runs on the gateway's own connection, and the agent's session may have set
    /// another path (pg_dump sets an empty one). More than one match is then ambiguous
    /// and refused by the caller, so the columns can never come from the wrong table.
    pub fn columns_sql(&self) -> String {
        let Some(schema) = &self.schema else {
            return format!(
                "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, a.atttypid \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = {} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY c.oid, a.attnum",
                quote_literal(&self.table)
            );
        };
        let rel = format!("{}.{}", quote_ident(schema), quote_ident(&self.table));
        format!(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, a.atttypid \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attrelid = {}::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            quote_literal(&rel)
        )
    }

    /// The row layout for masking `columns` (the copied columns, in copy order). The
    /// server's `CopyOutResponse` must agree on binary or not: if it does not, the
    /// statement was misread and nothing about its layout can be trusted.
    pub fn format(
        &self,
        columns: &[ColumnDesc],
        copy_out_response: &[u8],
    ) -> Result<CopyFormat, CopyStatementError> {
        let o = &self.options;
        if let Ok((binary, _)) = parse_copy_out_response(copy_out_response)
            && binary != (o.format == Format::Binary)
        {
            return Err(CopyStatementError::FormatMismatch {
                server: if binary { "binary" } else { "text" },
                statement: o.format.name(),
            });
        }
        // The header line names the copied columns; the masker checks it does, so a data
        // row can never be waved through as the header.
        let header = o
            .header
            .then(|| columns.iter().map(|c| c.name.clone()).collect());
        let null = o.null.clone().into_bytes();
        Ok(match o.format {
            Format::Binary => CopyFormat::text(),
            Format::Text => CopyFormat::Text {
                delimiter: o.delimiter,
                null,
                header,
            },
            Format::Csv => CopyFormat::Csv {
                delimiter: o.delimiter,
                quote: o.quote,
                escape: o.escape,
                null,
                header,
                force_quote: force_quote_flags(&o.force_quote, columns)?,
            },
        })
    }

    /// Refuses an `ENCODING` other than UTF8. The masker splits rows and fields byte by
    /// byte and the strategies read and write UTF-8: in encodings such as SJIS, BIG5 or
    /// GBK the second byte of a character can be `\`, `|` or another ASCII byte, so a
    /// byte-wise split would cut characters apart and disagree with the server about
    /// where fields end (PostgreSQL's own COPY walks those encodings character by
    /// character). Call it only when masking applies: passed-through data is not split.
    pub fn check_encoding(&self) -> Result<(), CopyStatementError> {
        match &self.options.encoding {
            Some(name) if !is_utf8_name(name) => Err(CopyStatementError::Encoding(name.clone())),
            _ => Ok(()),
        }
    }
}

/// PostgreSQL compares encoding names ignoring case and punctuation, and knows UTF8 as
/// `UTF8` and `UNICODE`: 'utf-8', 'Utf_8' and 'unicode' all name it.
fn is_utf8_name(name: &str) -> bool {
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    clean == "utf8" || clean == "unicode"
}

fn force_quote_flags(
    force: &ForceQuote,
    columns: &[ColumnDesc],
) -> Result<Vec<bool>, CopyStatementError> {
    Ok(match force {
        ForceQuote::None => Vec::new(),
        ForceQuote::All => vec![true; columns.len()],
        ForceQuote::Columns(names) => {
            let mut flags = vec![false; columns.len()];
            for n in names {
                let i = columns
                    .iter()
                    .position(|c| c.name == n.as_bytes())
                    .ok_or_else(|| CopyStatementError::ForceQuoteColumn(n.clone()))?;
                flags[i] = true;
            }
            flags
        }
    })
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal that reads the same whatever `standard_conforming_strings` is (as
/// PostgreSQL's own `quote_literal` writes it): a backslash would otherwise let a table
/// named `x\` end the literal early on a server that has it off.
fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Reads `COPY [schema.]table [(col, …)] TO STDOUT [options]`, saying why not.
pub fn parse_statement(sql: &[u8]) -> Result<CopyTarget, CopyStatementError> {
    let sql = std::str::from_utf8(sql).map_err(|_| CopyStatementError::NotUtf8)?;
    let stmt = grammar::read(sql)?;
    if stmt.is_from {
        return Err(CopyStatementError::Unsupported("COPY FROM"));
    }
    if stmt.endpoint != Endpoint::Client {
        return Err(CopyStatementError::Unsupported("COPY to a file or program"));
    }
    let rel = match stmt.source {
        CopySource::Relation(rel) => rel,
        CopySource::Query => {
            let query = grammar::query_text(sql).ok_or(CopyStatementError::Unsupported(
                "a COPY (query) whose query the gateway cannot delimit",
            ))?;
            let mut raw = RawOptions::default();
            for o in &stmt.options {
                raw.apply(&o.name, &o.arg)?;
            }
            return Ok(CopyTarget {
                schema: None,
                table: String::new(),
                columns: None,
                query: Some(query.to_owned()),
                options: raw.finish()?,
            });
        }
    };
    if rel.catalog.is_some() {
        // The side query looks names up in the gateway's database; a catalog name is
        // only legal when it names that same database, and nobody writes it.
        return Err(CopyStatementError::Unsupported(
            "a database-qualified table name",
        ));
    }
    let mut raw = RawOptions::default();
    for o in &stmt.options {
        raw.apply(&o.name, &o.arg)?;
    }
    Ok(CopyTarget {
        schema: rel.schema,
        table: rel.name,
        columns: (!stmt.columns.is_empty()).then_some(stmt.columns),
        query: None,
        options: raw.finish()?,
    })
}

/// [`parse_statement`] for a session whose `standard_conforming_strings` the server has
/// reported (`None`: not yet, read as the default, on, as the statement gate does).
///
/// With it off, the setting changes only what a backslash in a `'…'` literal means, so a
/// statement without a backslash reads the same either way; one with a backslash is
/// refused rather than read the way the server did not.
pub fn parse_statement_as(
    sql: &[u8],
    standard_conforming_strings: Option<bool>,
) -> Result<CopyTarget, CopyStatementError> {
    if standard_conforming_strings == Some(false) && sql.contains(&b'\\') {
        return Err(CopyStatementError::StandardConformingStringsOff);
    }
    parse_statement(sql)
}

fn bad<T>(option: &'static str, problem: &'static str) -> Result<T, CopyStatementError> {
    Err(CopyStatementError::BadOption { option, problem })
}

/// A string option's value. The server would also take `DELIMITER 1` or `NULL *` as
/// strings; nobody writes them, and a negative integer does not survive the parse tree,
/// so they are not read here.
fn string(arg: &OptionArg, option: &'static str) -> Result<String, CopyStatementError> {
    match arg {
        OptionArg::Str(s) => Ok(s.clone()),
        OptionArg::None => bad(option, "needs a value"),
        _ => bad(option, "needs a string constant"),
    }
}

/// As the server's `defGetBoolean`: no value, 0/1, or true/false/on/off in any case.
/// `Int(0)` may have been a negative integer (see [`crate::analysis::copy`]), which the
/// server refuses: reading it as false lets nothing through that the server runs.
fn boolean(arg: &OptionArg, option: &'static str) -> Result<bool, CopyStatementError> {
    let word = |s: &str| ["true", "on"].iter().any(|w| s.eq_ignore_ascii_case(w));
    let not = |s: &str| ["false", "off"].iter().any(|w| s.eq_ignore_ascii_case(w));
    match arg {
        OptionArg::None => Ok(true),
        OptionArg::Bool(b) => Ok(*b),
        OptionArg::Int(1) => Ok(true),
        OptionArg::Int(0) => Ok(false),
        OptionArg::Str(s) if word(s) => Ok(true),
        OptionArg::Str(s) if not(s) => Ok(false),
        _ => bad(option, "needs a Boolean value"),
    }
}

/// Options as given, before defaults and checks.
#[derive(Debug, Default)]
struct RawOptions {
    format: Option<Format>,
    freeze: Option<bool>,
    delimiter: Option<String>,
    null: Option<String>,
    header: Option<bool>,
    quote: Option<String>,
    escape: Option<String>,
    force_quote: Option<ForceQuote>,
    encoding: Option<String>,
}

fn set_once<T>(slot: &mut Option<T>, v: T, option: &'static str) -> Result<(), CopyStatementError> {
    if slot.is_some() {
        return Err(CopyStatementError::Repeated(option));
    }
    *slot = Some(v);
    Ok(())
}

impl RawOptions {
    /// One option by its name as the grammar gives it (legacy keywords already mapped
    /// onto the generic names), checked as the server's `ProcessCopyOptions` checks it.
    fn apply(&mut self, name: &str, arg: &OptionArg) -> Result<(), CopyStatementError> {
        match name {
            "format" => {
                // Compared case-sensitively, as the server does: 'CSV' is an error there.
                let f = match string(arg, "FORMAT")?.as_str() {
                    "text" => Format::Text,
                    "csv" => Format::Csv,
                    "binary" => Format::Binary,
                    _ => return bad("FORMAT", "must be text, csv or binary"),
                };
                set_once(&mut self.format, f, "FORMAT")
            }
            "freeze" => set_once(&mut self.freeze, boolean(arg, "FREEZE")?, "FREEZE"),
            "delimiter" => set_once(&mut self.delimiter, string(arg, "DELIMITER")?, "DELIMITER"),
            "null" => set_once(&mut self.null, string(arg, "NULL")?, "NULL"),
            // `HEADER match` is for COPY FROM only; the server refuses it here too.
            "header" => set_once(&mut self.header, boolean(arg, "HEADER")?, "HEADER"),
            "quote" => set_once(&mut self.quote, string(arg, "QUOTE")?, "QUOTE"),
            "escape" => set_once(&mut self.escape, string(arg, "ESCAPE")?, "ESCAPE"),
            "encoding" => set_once(&mut self.encoding, string(arg, "ENCODING")?, "ENCODING"),
            "force_quote" => {
                let f = match arg {
                    OptionArg::Star => ForceQuote::All,
                    OptionArg::List(cols) => ForceQuote::Columns(cols.clone()),
                    _ => return bad("FORCE_QUOTE", "needs * or a list of columns"),
                };
                set_once(&mut self.force_quote, f, "FORCE_QUOTE")
            }
            "force_not_null" | "force_null" => {
                bad("FORCE_NOT_NULL/FORCE_NULL", "applies to COPY FROM only")
            }
            other => Err(CopyStatementError::UnknownOption(other.to_owned())),
        }
    }

    /// Defaults and the server's own consistency checks, plus two of the masker's: it
    /// finds row ends by newline, so neither quote nor escape may be one.
    fn finish(self) -> Result<CopyOptions, CopyStatementError> {
        let format = self.format.unwrap_or_default();
        let csv = format == Format::Csv;
        if format == Format::Binary
            && (self.delimiter.is_some() || self.null.is_some() || self.header == Some(true))
        {
            return bad("DELIMITER/NULL/HEADER", "not allowed in binary format");
        }
        if !csv && (self.quote.is_some() || self.escape.is_some() || self.force_quote.is_some()) {
            return bad("QUOTE/ESCAPE/FORCE_QUOTE", "allowed in CSV format only");
        }
        let one_byte = |v: Option<String>, default: u8, option| match v {
            None => Ok(default),
            // One byte of valid UTF-8 is one ASCII character.
            Some(s) if s.len() == 1 => Ok(s.as_bytes()[0]),
            Some(_) => bad(option, "must be a single one-byte character"),
        };
        let delimiter = one_byte(self.delimiter, if csv { b',' } else { b'\t' }, "DELIMITER")?;
        let quote = one_byte(self.quote, b'"', "QUOTE")?;
        let escape = one_byte(self.escape, quote, "ESCAPE")?;
        let null = self
            .null
            .unwrap_or_else(|| if csv { String::new() } else { "\\N".into() });
        let eol = |c: u8| c == b'\n' || c == b'\r';
        if eol(delimiter) {
            return bad("DELIMITER", "cannot be a newline or carriage return");
        }
        if null.bytes().any(eol) {
            return bad("NULL", "cannot hold a newline or carriage return");
        }
        if !csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
            return bad("DELIMITER", "not allowed in text format");
        }
        if null.as_bytes().contains(&delimiter) {
            return bad("NULL", "must not hold the delimiter");
        }
        if csv {
            if delimiter == quote {
                return bad("QUOTE", "must differ from the delimiter");
            }
            if null.as_bytes().contains(&quote) {
                return bad("NULL", "must not hold the quote character");
            }
            if eol(quote) || eol(escape) {
                return bad(
                    "QUOTE/ESCAPE",
                    "a newline or carriage return cannot be masked",
                );
            }
        }
        Ok(CopyOptions {
            format,
            delimiter,
            null,
            header: self.header.unwrap_or(false),
            quote,
            escape,
            force_quote: self.force_quote.unwrap_or_default(),
            encoding: self.encoding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &[u8]) -> Option<CopyTarget> {
        parse_statement(sql).ok()
    }
    use crate::protocol::backend::copy_out_response;

    fn opts(sql: &str) -> CopyOptions {
        parse_statement(sql.as_bytes())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .options
    }

    fn err(sql: &str) -> CopyStatementError {
        match parse_statement(sql.as_bytes()) {
            Ok(t) => panic!("{sql} parsed: {t:?}"),
            Err(e) => e,
        }
    }

    fn text() -> CopyOptions {
        CopyOptions {
            format: Format::Text,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
            force_quote: ForceQuote::None,
            encoding: None,
        }
    }

    fn csv() -> CopyOptions {
        CopyOptions {
            format: Format::Csv,
            delimiter: b',',
            null: String::new(),
            ..text()
        }
    }

    #[test]
    fn plain_forms_parse() {
        let t = parse(b"COPY accounts TO STDOUT").unwrap();
        assert_eq!(
            (t.schema, t.table.as_str(), t.columns, t.options),
            (None, "accounts", None, text())
        );
        let t =
            parse(b"copy Public.\"Acc\"\"ts\" (ID, \"Ssn\") to stdout with (format csv)").unwrap();
        assert_eq!(t.schema.as_deref(), Some("public"));
        assert_eq!(t.table, "Acc\"ts");
        assert_eq!(t.columns, Some(vec!["id".into(), "Ssn".into()]));
        assert_eq!(t.options, csv());
        assert!(
            t.columns_sql()
                .contains("'\"public\".\"Acc\"\"ts\"'::pg_catalog.regclass")
        );
    }

    #[test]
    fn csv_is_an_option_word_not_a_substring() {
        let is_csv = |sql: &str| opts(sql).format == Format::Csv;
        assert!(is_csv("COPY t TO STDOUT CSV HEADER"));
        assert!(is_csv("COPY t TO STDOUT WITH (FORMAT csv)"));
        assert!(is_csv("COPY t TO STDOUT WITH (FORMAT \"csv\")"));
        assert!(!is_csv("COPY csv_export TO STDOUT"));
        assert!(!is_csv("COPY \"csv\" TO STDOUT"));
        assert!(!is_csv("COPY t TO STDOUT WITH (FORMAT text, NULL 'csv')"));
        // The server compares the value case-sensitively: 'CSV' is an error there too.
        assert!(matches!(
            err("COPY t TO STDOUT (FORMAT 'CSV')"),
            CopyStatementError::BadOption { .. }
        ));
    }

    #[test]
    fn parenthesised_options() {
        assert_eq!(
            opts(
                "COPY accounts TO STDOUT WITH (FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'n/a', HEADER true)"
            ),
            CopyOptions {
                delimiter: b';',
                quote: b'\'',
                escape: b'\\',
                null: "n/a".into(),
                header: true,
                ..csv()
            }
        );
        assert_eq!(
            opts("COPY t TO STDOUT (delimiter '|', header, null '')"),
            CopyOptions {
                delimiter: b'|',
                header: true,
                null: String::new(),
                ..text()
            }
        );
        assert_eq!(
            opts(
                "COPY t TO STDOUT (\"format\" csv, force_quote (a, \"B c\", 'd'), header 0, freeze on, encoding 'UTF8')"
            ),
            CopyOptions {
                force_quote: ForceQuote::Columns(vec!["a".into(), "B c".into(), "d".into()]),
                encoding: Some("UTF8".into()),
                ..csv()
            }
        );
        assert_eq!(
            opts("COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE *, HEADER OFF)").force_quote,
            ForceQuote::All
        );
        assert_eq!(
            opts("COPY t TO STDOUT (FORMAT binary)").format,
            Format::Binary
        );
        assert!(opts("COPY t TO STDOUT (HEADER 1)").header);
        assert!(!opts("COPY t TO STDOUT (HEADER False)").header);
    }

    #[test]
    fn legacy_options() {
        assert_eq!(
            opts(
                "COPY accounts TO STDOUT WITH CSV HEADER DELIMITER AS '|' QUOTE AS '\"' NULL AS ''"
            ),
            CopyOptions {
                delimiter: b'|',
                header: true,
                ..csv()
            }
        );
        assert_eq!(
            opts("COPY t TO STDOUT WITH DELIMITER '|'"),
            CopyOptions {
                delimiter: b'|',
                ..text()
            }
        );
        assert_eq!(
            opts(
                "COPY t TO STDOUT DELIMITER ';' NULL 'x' CSV FORCE QUOTE a, b ESCAPE AS '\\' ENCODING 'utf-8'"
            ),
            CopyOptions {
                delimiter: b';',
                null: "x".into(),
                escape: b'\\',
                force_quote: ForceQuote::Columns(vec!["a".into(), "b".into()]),
                encoding: Some("utf-8".into()),
                ..csv()
            }
        );
        assert_eq!(
            opts("COPY t TO STDOUT CSV FORCE QUOTE * HEADER").force_quote,
            ForceQuote::All
        );
        assert_eq!(
            opts("COPY t TO STDOUT USING DELIMITERS '|'").delimiter,
            b'|'
        );
        assert_eq!(opts("COPY t TO STDOUT DELIMITERS ','").delimiter, b',');
        assert_eq!(opts("COPY BINARY t TO STDOUT").format, Format::Binary);
        assert_eq!(opts("COPY t TO STDOUT WITH BINARY").format, Format::Binary);
        assert_eq!(opts("COPY t TO STDOUT WITH"), text());
        assert!(opts("COPY t TO STDOUT WITH HEADER FREEZE").header);
    }

    #[test]
    fn literals_read_as_the_server_reads_them() {
        let null = |sql: &str| opts(sql).null;
        assert_eq!(null("COPY t TO STDOUT (NULL 'it''s')"), "it's");
        assert_eq!(null("COPY t TO STDOUT (NULL E'\\\\N')"), "\\N");
        assert_eq!(
            null("COPY t TO STDOUT (NULL e'a\\'b\\x41\\101\\u00e9\\U0001F600')"),
            "a'bAAé😀"
        );
        assert_eq!(null("COPY t TO STDOUT (NULL $$it's \\N$$)"), "it's \\N");
        assert_eq!(null("COPY t TO STDOUT (NULL $q$a$$b$q$)"), "a$$b");
        assert_eq!(null("COPY t TO STDOUT (NULL E'\\q\\x')"), "qx");
        assert_eq!(
            opts("COPY t TO STDOUT (DELIMITER E'\\x7c')").delimiter,
            b'|'
        );
        assert_eq!(
            opts("COPY t TO STDOUT (DELIMITER E'\\174')").delimiter,
            b'|'
        );
        assert_eq!(opts("COPY t TO STDOUT (DELIMITER E'\\t')").delimiter, b'\t');
        assert_eq!(
            opts("COPY /* a /* nested */ comment */ t -- to a file\n TO STDOUT (HEADER);"),
            CopyOptions {
                header: true,
                ..text()
            }
        );
        let t = parse(b"COPY \"A b\" (\"X\", y$1) TO STDOUT;;").unwrap();
        assert_eq!(t.table, "A b");
        assert_eq!(t.columns, Some(vec!["X".into(), "y$1".into()]));
        // The server folds ASCII only and cuts names at 63 bytes.
        let t = parse("COPY ÄbC TO STDOUT".as_bytes()).unwrap();
        assert_eq!(t.table, "Äbc");
        let long = format!("COPY {} TO STDOUT", "x".repeat(70));
        assert_eq!(parse(long.as_bytes()).unwrap().table.len(), 63);
    }

    #[test]
    fn backslashes_read_as_with_standard_conforming_strings_on() {
        // The gate keeps sessions on the default; a session known to be off is refused.
        assert_eq!(opts("COPY t TO STDOUT (NULL '\\N')").null, "\\N");
        assert_eq!(
            opts("COPY t TO STDOUT (FORMAT csv, ESCAPE '\\')").escape,
            b'\\'
        );
        assert_eq!(opts("COPY t TO STDOUT (NULL E'\\\\N')").null, "\\N");
        assert_eq!(
            parse_statement_as(b"COPY t TO STDOUT (NULL '\\N')", Some(false)),
            Err(CopyStatementError::StandardConformingStringsOff)
        );
        assert_eq!(
            parse_statement_as(b"COPY t TO STDOUT (NULL E'\\\\N')", Some(false)),
            Err(CopyStatementError::StandardConformingStringsOff)
        );
        // Without a backslash the setting changes nothing.
        assert_eq!(
            parse_statement_as(b"COPY t TO STDOUT (NULL 'x')", Some(false))
                .unwrap()
                .options
                .null,
            "x"
        );
        assert!(parse_statement_as(b"COPY t TO STDOUT (NULL '\\N')", Some(true)).is_ok());
        assert!(parse_statement_as(b"COPY t TO STDOUT", None).is_ok());
    }

    #[test]
    fn what_the_grammar_reads_the_old_reader_did_not() {
        // Read exactly as the server reads them, so there is nothing to refuse.
        assert_eq!(opts("COPY t TO STDOUT (NULL E'\\uD83D\\uDE00')").null, "😀");
        assert_eq!(opts("COPY t TO STDOUT (NULL U&'\\0041x')").null, "Ax");
        assert!(opts("COPY t TO STDOUT (HEADER 01)").header);
        // STDIN and STDOUT are one endpoint to the grammar: the server copies out.
        assert_eq!(parse(b"COPY t TO STDIN").unwrap().table, "t");
        // A negative integer reads as 0 in the parse tree; the server refuses it before
        // sending any row, so reading it as false lets nothing through.
        assert!(!opts("COPY t TO STDOUT (HEADER -1)").header);
    }

    #[test]
    fn a_query_is_cut_out_as_the_lexer_reads_it() {
        let t = parse(
            b"copy /* ( */ ( SELECT ')', \"a)\" FROM (SELECT 1 AS \"a)\") s -- )\n ) TO STDOUT (FORMAT csv)",
        )
        .unwrap();
        assert_eq!(
            t.query.as_deref(),
            Some(" SELECT ')', \"a)\" FROM (SELECT 1 AS \"a)\") s -- )\n ")
        );
        assert_eq!(t.options.format, Format::Csv);
        assert!(t.table.is_empty() && t.columns.is_none());
        assert_eq!(parse(b"COPY t TO STDOUT").unwrap().query, None);
    }

    #[test]
    fn what_masking_cannot_follow_is_refused_by_name() {
        use CopyStatementError as E;
        for (sql, want) in [
            (
                "COPY (SELECT 1) TO '/tmp/f'",
                E::Unsupported("COPY to a file or program"),
            ),
            ("COPY t FROM STDIN", E::Unsupported("COPY FROM")),
            (
                "COPY t TO 'file'",
                E::Unsupported("COPY to a file or program"),
            ),
            (
                "COPY t TO PROGRAM 'cat'",
                E::Unsupported("COPY to a file or program"),
            ),
            (
                "COPY a.b.c TO STDOUT",
                E::Unsupported("a database-qualified table name"),
            ),
            (
                "COPY t TO STDOUT; COPY u TO STDOUT",
                E::Read(CopyReadError::Statements(2)),
            ),
            ("SELECT 1", E::Read(CopyReadError::NotCopy)),
        ] {
            assert_eq!(err(sql), want, "{sql}");
        }
        assert_eq!(
            parse_statement(b"COPY t TO STDOUT (NULL '\xff')"),
            Err(E::NotUtf8)
        );
        assert_eq!(
            parse_statement(b"COPY t TO STDOUT\0"),
            Err(E::Read(CopyReadError::Parse(
                crate::analysis::ParseError::Nul
            )))
        );
    }

    #[test]
    fn what_the_server_refuses_or_the_masker_cannot_split_is_refused() {
        use CopyStatementError as E;
        for (sql, want) in [
            (
                "COPY t TO STDOUT (FORMAT csv, FORMAT csv)",
                E::Repeated("FORMAT"),
            ),
            ("COPY t TO STDOUT CSV BINARY", E::Repeated("FORMAT")),
            (
                "COPY BINARY t TO STDOUT (FORMAT binary)",
                E::Repeated("FORMAT"),
            ),
            ("COPY t TO STDOUT (HEADER, HEADER)", E::Repeated("HEADER")),
            ("COPY t TO STDOUT (OIDS)", E::UnknownOption("oids".into())),
            (
                "COPY t TO STDOUT (\"FORMAT\" csv)",
                E::UnknownOption("FORMAT".into()),
            ),
            (
                "COPY t TO STDOUT (convert_selectively (a))",
                E::UnknownOption("convert_selectively".into()),
            ),
        ] {
            assert_eq!(err(sql), want, "{sql}");
        }
        for sql in [
            "COPY t TO STDOUT (FORMAT xml)",
            "COPY t TO STDOUT (FORMAT)",
            "COPY t TO STDOUT (HEADER match)",
            "COPY t TO STDOUT (HEADER yes)",
            "COPY t TO STDOUT (DELIMITER 1, FORMAT csv)",
            "COPY t TO STDOUT (DELIMITER *, FORMAT csv)",
            "COPY t TO STDOUT (NULL (a, b))",
            "COPY t TO STDOUT (DELIMITER '||')",
            "COPY t TO STDOUT (DELIMITER '')",
            "COPY t TO STDOUT (DELIMITER 'é')",
            "COPY t TO STDOUT (DELIMITER E'\\n')",
            "COPY t TO STDOUT (DELIMITER E'\\\\')",
            "COPY t TO STDOUT (DELIMITER 'a')",
            "COPY t TO STDOUT (DELIMITER '.')",
            "COPY t TO STDOUT (NULL E'a\\rb')",
            "COPY t TO STDOUT (DELIMITER '|', NULL 'a|b')",
            "COPY t TO STDOUT (QUOTE '\"')",
            "COPY t TO STDOUT (ESCAPE '\"')",
            "COPY t TO STDOUT (FORCE_QUOTE *)",
            "COPY t TO STDOUT (FORMAT csv, QUOTE ',')",
            "COPY t TO STDOUT (FORMAT csv, NULL 'a\"')",
            "COPY t TO STDOUT (FORMAT csv, QUOTE E'\\n')",
            "COPY t TO STDOUT (FORMAT csv, ESCAPE E'\\r')",
            "COPY t TO STDOUT (FORMAT csv, ESCAPE '')",
            "COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE)",
            "COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE a)",
            "COPY t TO STDOUT (FORMAT csv, FORCE_NOT_NULL (a))",
            "COPY t TO STDOUT CSV FORCE NOT NULL a",
            "COPY t TO STDOUT CSV FORCE NULL a",
            "COPY t TO STDOUT (FORMAT binary, HEADER)",
            "COPY t TO STDOUT (FORMAT binary, DELIMITER '|')",
            "COPY t TO STDOUT (FORMAT binary, NULL 'x')",
            "COPY t TO STDOUT (NULL E'\\0')",
            "COPY t TO STDOUT (NULL E'\\xff')",
            "COPY t TO STDOUT (NULL E'\\u12')",
            "COPY t TO STDOUT (NULL X'41')",
            "COPY t TO STDOUT (NULL N'x')",
            "COPY t TO STDOUT (NULL 'a' 'b')",
            "COPY t TO STDOUT (NULL 'x' || 'y')",
            "COPY t TO STDOUT (NULL 'x'::text)",
            "COPY t TO STDOUT (NULL $1)",
            "COPY t TO STDOUT (HEADER 1.0)",
            "COPY t TO STDOUT ()",
            "COPY t TO STDOUT (HEADER",
            "COPY t TO STDOUT (HEADER true,)",
            "COPY t TO STDOUT WITH DELIMITER AS",
            "COPY t TO STDOUT WITH DELIMITER \"|\"",
            "COPY t TO STDOUT USING HEADER",
            "COPY t TO STDOUT; COPY u TO STDOUT",
            "COPY t TO STDOUT WHERE a = 1",
            "COPY t TO STDOUT WITH CSV 'x'",
            "COPY t TO 'file'",
            "COPY t TO PROGRAM 'cat'",
            "COPY t FROM STDIN",
            "COPY (SELECT 1) TO PROGRAM 'cat'",
            "COPY t () TO STDOUT",
            "COPY t (a TO STDOUT",
            "COPY a.b.c TO STDOUT",
            "COPY \"\" TO STDOUT",
            "COPY \"unterminated TO STDOUT",
            "COPY t TO STDOUT /* unterminated",
            "COPY t TO STDOUT (NULL 'unterminated)",
            "COPY t TO STDOUT (NULL $x$unterminated$y$)",
            "COPY t TO STDOUT (NULL E'\\",
            "SELECT 1",
            "",
        ] {
            let _ = err(sql);
        }
        assert_eq!(parse(b"\xff\xfe"), None);
    }

    #[test]
    fn quotes_cannot_escape_the_literal() {
        let t = parse(b"COPY \"x'); DROP TABLE y; --\" TO STDOUT").unwrap();
        let sql = t.columns_sql();
        assert!(
            sql.contains("c.relname = 'x''); DROP TABLE y; --' AND"),
            "{sql}"
        );
        let t = parse(b"COPY s.\"x'); DROP TABLE y; --\" TO STDOUT").unwrap();
        let sql = t.columns_sql();
        assert!(
            sql.contains("'\"s\".\"x''); DROP TABLE y; --\"'::pg_catalog.regclass"),
            "{sql}"
        );
        // A trailing backslash cannot swallow the closing quote on any server setting.
        let t = parse(b"COPY \"x\\\" TO STDOUT").unwrap();
        assert!(
            t.columns_sql().contains("c.relname = E'x\\\\' AND"),
            "{}",
            t.columns_sql()
        );
    }

    #[test]
    fn format_carries_the_options_to_the_masker() {
        let cols = [
            ColumnDesc::computed("id", 23),
            ColumnDesc::computed("Ssn", 25),
            ColumnDesc::computed("notes", 25),
        ];
        let t = parse_statement(
            b"COPY t TO STDOUT (FORMAT csv, DELIMITER '|', QUOTE '''', NULL 'n/a', HEADER, FORCE_QUOTE (notes, \"Ssn\"))",
        )
        .unwrap();
        assert_eq!(
            t.format(&cols, &copy_out_response(false, 3)).unwrap(),
            CopyFormat::Csv {
                delimiter: b'|',
                quote: b'\'',
                escape: b'\'',
                null: b"n/a".to_vec(),
                header: Some(vec![b"id".to_vec(), b"Ssn".to_vec(), b"notes".to_vec()]),
                force_quote: vec![false, true, true],
            }
        );
        assert_eq!(
            t.format(&cols, &copy_out_response(true, 3)),
            Err(CopyStatementError::FormatMismatch {
                server: "binary",
                statement: "csv"
            })
        );
        let t = parse_statement(b"COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE (ssn))").unwrap();
        assert_eq!(
            t.format(&cols, &copy_out_response(false, 3)),
            Err(CopyStatementError::ForceQuoteColumn("ssn".into()))
        );
        let t = parse_statement(b"COPY t TO STDOUT WITH DELIMITER '|' NULL ''").unwrap();
        assert_eq!(
            t.format(&cols, &copy_out_response(false, 3)).unwrap(),
            CopyFormat::Text {
                delimiter: b'|',
                null: Vec::new(),
                header: None
            }
        );
        let t = parse_statement(b"COPY t TO STDOUT (FORMAT binary)").unwrap();
        assert!(t.format(&cols, &copy_out_response(false, 3)).is_err());
        assert!(t.format(&cols, &copy_out_response(true, 3)).is_ok());
    }

    #[test]
    fn only_utf8_encodings_are_masked() {
        for name in ["UTF8", "utf-8", "Utf_8", "unicode"] {
            let sql = format!("COPY t TO STDOUT (ENCODING '{name}')");
            assert_eq!(parse(sql.as_bytes()).unwrap().check_encoding(), Ok(()));
        }
        assert_eq!(parse(b"COPY t TO STDOUT").unwrap().check_encoding(), Ok(()));
        for name in ["SJIS", "LATIN1", "utf16", "SQL_ASCII"] {
            let sql = format!("COPY t TO STDOUT ENCODING '{name}'");
            assert_eq!(
                parse(sql.as_bytes()).unwrap().check_encoding(),
                Err(CopyStatementError::Encoding(name.into()))
            );
        }
    }
}
