//! What a `COPY … TO STDOUT` statement reads and how the server lays its rows out, for
//! masking.
//!
//! `COPY` data carries no column description, so the gateway reads the statement itself:
//! the relation and column list say which columns the rows hold (a side query resolves
//! them), the options how each row is written (format, delimiter, NULL string, header
//! line, quote and escape characters, forced quoting, encoding). Splitting fields at the
//! wrong byte would mask the wrong column or miss one, so the parser is strict. It reads
//! PostgreSQL 15's grammar for the plain form,
//!
//! ```text
//! COPY [BINARY] [schema.]table [(column, …)] TO STDOUT [[USING] DELIMITERS 'c'] [WITH]
//!     { (option [value], …) | legacy options … } [;]
//! ```
//!
//! with both the parenthesised option list and the legacy keywords (`CSV HEADER`,
//! `DELIMITER AS '|'`, `FORCE QUOTE *`, …), and returns an error for everything else:
//! `COPY (query) TO …`, `TO 'file'`, unknown or `COPY FROM`-only options, option values in
//! a form it does not read, a second statement. The masking stage then refuses the `COPY`
//! while rules apply. Nothing here panics, whatever the input.
//!
//! Literals are read as the server's lexer reads them: `'…'` with doubled quotes,
//! `E'…'` escapes, `$tag$…$tag$`, `"identifiers"` and comments. A plain `'…'` holding a
//! backslash means something else when the session has `standard_conforming_strings`
//! off, which the gateway does not track, so such a statement is read both ways and
//! refused unless both readings agree or the second one does not even lex (then the
//! server cannot have used it).

use thiserror::Error;

use crate::mask::copy::parse_copy_out_response;
use crate::mask::{ColumnDesc, CopyFormat, MaskError};

/// The relation, column list and options of a `COPY … TO STDOUT` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    pub schema: Option<String>,
    pub table: String,
    /// Columns in copy order, folded as PostgreSQL folds them; `None` = all columns.
    pub columns: Option<Vec<String>>,
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
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    #[error("{0} is not supported in a masked COPY")]
    Unsupported(&'static str),
    #[error(
        "expected {0}; only COPY [schema.]table [(column, …)] TO STDOUT [WITH options] is understood"
    )]
    Syntax(&'static str),
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
        "the statement reads differently with standard_conforming_strings off; write backslashes inside E'…' strings"
    )]
    AmbiguousBackslash,
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

/// Parses `COPY [schema.]table [(col, …)] TO STDOUT [options]`, saying why not.
pub fn parse_statement(sql: &[u8]) -> Result<CopyTarget, CopyStatementError> {
    parse_statement_as(sql, None)
}

/// [`parse_statement`] for a session whose `standard_conforming_strings` is known
/// (`Some(on)`, from the server's `ParameterStatus`): the statement is read the one way
/// the server read it. With `None` it is read both ways and must agree.
pub fn parse_statement_as(
    sql: &[u8],
    standard_conforming_strings: Option<bool>,
) -> Result<CopyTarget, CopyStatementError> {
    let sql = std::str::from_utf8(sql).map_err(|_| CopyStatementError::NotUtf8)?;
    match standard_conforming_strings {
        Some(true) => return lex(sql, Backslash::Literal).and_then(parse_tokens),
        Some(false) => return lex(sql, Backslash::Escape).and_then(parse_tokens),
        None => {}
    }
    let standard = lex(sql, Backslash::Literal).and_then(parse_tokens);
    if !sql.contains('\\') {
        return standard;
    }
    match lex(sql, Backslash::Escape) {
        // With standard_conforming_strings off the server could not even have lexed it,
        // so it read the statement the standard way.
        Err(CopyStatementError::Unterminated(_)) => standard,
        Err(_) => standard.and(Err(CopyStatementError::AmbiguousBackslash)),
        Ok(tokens) => match (standard, parse_tokens(tokens)) {
            (Ok(a), Ok(b)) if a == b => Ok(a),
            (Err(e), Err(_)) => Err(e),
            _ => Err(CopyStatementError::AmbiguousBackslash),
        },
    }
}

/// How a plain `'…'` literal treats backslashes: `standard_conforming_strings` on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backslash {
    Literal,
    Escape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An unquoted identifier or keyword, folded.
    Word(String),
    /// A `"quoted identifier"`.
    Ident(String),
    /// A string constant: `'…'`, `E'…'` or `$tag$…$tag$`.
    Str(String),
    /// An unsigned integer as written.
    Int(String),
    /// One of `( ) , . ; *`.
    Punct(u8),
    /// Anything else the server lexes (operators, parameters, decimals, …): never valid
    /// in the statements read here.
    Other,
}

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT: usize = 63;
const OPERATOR_CHARS: &[u8] = b"~!@#^&|`?+-*/%<>=";

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Truncates like the server does, never inside a character.
fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT {
        let mut n = MAX_IDENT;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

/// Splits `sql` into tokens the way PostgreSQL's lexer does, as far as these statements
/// need. Only an unterminated literal or comment is an error the server's lexer would
/// also raise; other errors mean "not read here".
fn lex(sql: &str, plain: Backslash) -> Result<Vec<Tok>, CopyStatementError> {
    let b = sql.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if next == Some(b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p);
            }
            b'/' if next == Some(b'*') => i = skip_block_comment(b, i)?,
            b'\'' => {
                let (s, end) = string_literal(b, i + 1, plain == Backslash::Escape)?;
                toks.push(Tok::Str(s));
                i = end;
            }
            b'"' => {
                let (s, end) = quoted_ident(b, i + 1)?;
                toks.push(Tok::Ident(s));
                i = end;
            }
            b'$' => {
                let (tok, end) = dollar(b, i)?;
                toks.push(tok);
                i = end;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'.' || is_ident_cont(b[i])) {
                    // A decimal, an exponent or trailing junk: nothing these statements use.
                    while i < b.len() && (b[i] == b'.' || is_ident_cont(b[i])) {
                        i += 1;
                    }
                    toks.push(Tok::Other);
                } else {
                    toks.push(Tok::Int(sql[start..i].to_owned()));
                }
            }
            b'.' if next.is_some_and(|d| d.is_ascii_digit()) => {
                i += 1;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                toks.push(Tok::Other);
            }
            b'(' | b')' | b',' | b';' | b'.' => {
                toks.push(Tok::Punct(c));
                i += 1;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &sql[start..i];
                let after = b.get(i).copied();
                if word.len() == 1 && (after == Some(b'\'') || after == Some(b'&')) {
                    match (c.to_ascii_lowercase(), after) {
                        (b'e', Some(b'\'')) => {
                            let (s, end) = string_literal(b, i + 1, true)?;
                            toks.push(Tok::Str(s));
                            i = end;
                            continue;
                        }
                        (b'u', Some(b'&')) if matches!(b.get(i + 1), Some(b'\'' | b'"')) => {
                            return Err(CopyStatementError::Unsupported("a U& literal"));
                        }
                        (b'b' | b'x' | b'n', Some(b'\'')) => {
                            return Err(CopyStatementError::Unsupported(
                                "a B'', X'' or N'' literal",
                            ));
                        }
                        _ => {}
                    }
                }
                // The server folds ASCII letters only (the connection is UTF8).
                toks.push(Tok::Word(truncate_ident(word.to_ascii_lowercase())));
            }
            c if OPERATOR_CHARS.contains(&c) => {
                let start = i;
                while i < b.len()
                    && OPERATOR_CHARS.contains(&b[i])
                    && !(i > start && (b[i..].starts_with(b"--") || b[i..].starts_with(b"/*")))
                {
                    i += 1;
                }
                toks.push(if &b[start..i] == b"*" {
                    Tok::Punct(b'*')
                } else {
                    Tok::Other
                });
            }
            _ => {
                toks.push(Tok::Other);
                i += 1;
            }
        }
    }
    Ok(toks)
}

/// `/* … */`, nested as the server nests them; returns the index after it.
fn skip_block_comment(b: &[u8], mut i: usize) -> Result<usize, CopyStatementError> {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(CopyStatementError::Unterminated("comment"))
}

/// The body of a `'…'` literal starting at `i` (after the quote); with `escapes`, the
/// backslash escapes of `E'…'`. Returns the value and the index after the closing quote.
fn string_literal(
    b: &[u8],
    mut i: usize,
    escapes: bool,
) -> Result<(String, usize), CopyStatementError> {
    const UNTERMINATED: CopyStatementError = CopyStatementError::Unterminated("string literal");
    let mut out = Vec::new();
    loop {
        let c = *b.get(i).ok_or(UNTERMINATED)?;
        if escapes && c == b'\\' {
            i = backslash_escape(b, i + 1, &mut out)?;
        } else if c == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                out.push(b'\'');
                i += 2;
            } else {
                i += 1;
                break;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(CopyStatementError::Unsupported("a NUL byte in a literal"));
    }
    let s = String::from_utf8(out)
        .map_err(|_| CopyStatementError::Unsupported("an escape that is not valid UTF-8"))?;
    Ok((s, i))
}

/// One `E'…'` escape; `i` is just after the backslash. Returns the index after it.
fn backslash_escape(b: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, CopyStatementError> {
    let c = *b
        .get(i)
        .ok_or(CopyStatementError::Unterminated("string literal"))?;
    let digits = |from: usize, max: usize, radix: u32| {
        let mut v = 0u32;
        let mut n = 0;
        while n < max {
            match b.get(from + n).and_then(|&d| char::from(d).to_digit(radix)) {
                Some(d) => v = v * radix + d,
                None => break,
            }
            n += 1;
        }
        (v, n)
    };
    let simple = |x: u8| {
        Some(match x {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => return None,
        })
    };
    if let Some(v) = simple(c) {
        out.push(v);
        return Ok(i + 1);
    }
    match c {
        b'0'..=b'7' => {
            let (v, n) = digits(i, 3, 8);
            // The server keeps the low byte of an octal escape above \377.
            out.push((v & 0xff) as u8);
            Ok(i + n)
        }
        b'x' => match digits(i + 1, 2, 16) {
            (_, 0) => {
                out.push(b'x');
                Ok(i + 1)
            }
            (v, n) => {
                out.push(v as u8);
                Ok(i + 1 + n)
            }
        },
        b'u' | b'U' => {
            let want = if c == b'u' { 4 } else { 8 };
            let (v, n) = digits(i + 1, want, 16);
            // Surrogate pairs are legal but rare: not worth reading here.
            let ch = (n == want)
                .then(|| char::from_u32(v))
                .flatten()
                .filter(|&ch| ch != '\0')
                .ok_or(CopyStatementError::Unsupported(
                    "this Unicode escape (surrogate, NUL or malformed)",
                ))?;
            let mut buf = [0; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            Ok(i + 1 + n)
        }
        other => {
            out.push(other);
            Ok(i + 1)
        }
    }
}

/// A `"quoted identifier"` starting at `i` (after the quote).
fn quoted_ident(b: &[u8], mut i: usize) -> Result<(String, usize), CopyStatementError> {
    let mut out = Vec::new();
    loop {
        let c = *b
            .get(i)
            .ok_or(CopyStatementError::Unterminated("quoted identifier"))?;
        i += 1;
        if c != b'"' {
            out.push(c);
        } else if b.get(i) == Some(&b'"') {
            out.push(b'"');
            i += 1;
        } else {
            break;
        }
    }
    if out.is_empty() {
        return Err(CopyStatementError::Syntax("a non-empty quoted identifier"));
    }
    // The input was UTF-8 and only whole ASCII quotes were removed.
    let s = String::from_utf8(out).map_err(|_| CopyStatementError::NotUtf8)?;
    Ok((truncate_ident(s), i))
}

/// At a `$`: a dollar-quoted string, a parameter (`$1`) or a lone `$`.
fn dollar(b: &[u8], i: usize) -> Result<(Tok, usize), CopyStatementError> {
    if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        return Ok((Tok::Other, j));
    }
    let mut j = i + 1;
    if b.get(j).is_some_and(|&c| is_ident_start(c)) {
        while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        // Not a delimiter: the server returns the `$` alone.
        return Ok((Tok::Other, i + 1));
    }
    let delim = &b[i..=j];
    let body = j + 1;
    let len = b[body..]
        .windows(delim.len())
        .position(|w| w == delim)
        .ok_or(CopyStatementError::Unterminated("dollar-quoted string"))?;
    let s = std::str::from_utf8(&b[body..body + len]).map_err(|_| CopyStatementError::NotUtf8)?;
    Ok((Tok::Str(s.to_owned()), body + len + delim.len()))
}

/// An option's argument as the grammar gives it.
#[derive(Debug)]
enum Arg {
    None,
    Str(String),
    Int(String),
    Star,
    List(Vec<String>),
}

impl Arg {
    fn string(self, option: &'static str) -> Result<String, CopyStatementError> {
        match self {
            Arg::Str(s) => Ok(s),
            Arg::None => Err(CopyStatementError::BadOption {
                option,
                problem: "needs a value",
            }),
            // The server would take `DELIMITER 1` or `NULL *` as strings; nobody writes
            // them, so they are not read here.
            _ => Err(CopyStatementError::BadOption {
                option,
                problem: "needs a string constant",
            }),
        }
    }

    /// As the server's `defGetBoolean`: no value, 0/1, or true/false/on/off.
    fn boolean(self, option: &'static str) -> Result<bool, CopyStatementError> {
        match self {
            Arg::None => Ok(true),
            Arg::Int(n) if n == "1" => Ok(true),
            Arg::Int(n) if n == "0" => Ok(false),
            Arg::Str(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("on") => {
                Ok(true)
            }
            Arg::Str(s) if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("off") => {
                Ok(false)
            }
            _ => Err(CopyStatementError::BadOption {
                option,
                problem: "needs a Boolean value",
            }),
        }
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

fn bad<T>(option: &'static str, problem: &'static str) -> Result<T, CopyStatementError> {
    Err(CopyStatementError::BadOption { option, problem })
}

fn set_once<T>(slot: &mut Option<T>, v: T, option: &'static str) -> Result<(), CopyStatementError> {
    if slot.is_some() {
        return Err(CopyStatementError::Repeated(option));
    }
    *slot = Some(v);
    Ok(())
}

impl RawOptions {
    /// One option by its generic name; the legacy keywords map onto the same names, as
    /// in the server's grammar.
    fn apply(&mut self, name: &str, arg: Arg) -> Result<(), CopyStatementError> {
        match name {
            "format" => {
                let f = match arg.string("FORMAT")?.as_str() {
                    "text" => Format::Text,
                    "csv" => Format::Csv,
                    "binary" => Format::Binary,
                    _ => {
                        return Err(CopyStatementError::BadOption {
                            option: "FORMAT",
                            problem: "must be text, csv or binary",
                        });
                    }
                };
                set_once(&mut self.format, f, "FORMAT")
            }
            "freeze" => set_once(&mut self.freeze, arg.boolean("FREEZE")?, "FREEZE"),
            "delimiter" => set_once(&mut self.delimiter, arg.string("DELIMITER")?, "DELIMITER"),
            "null" => set_once(&mut self.null, arg.string("NULL")?, "NULL"),
            "header" => set_once(&mut self.header, arg.boolean("HEADER")?, "HEADER"),
            "quote" => set_once(&mut self.quote, arg.string("QUOTE")?, "QUOTE"),
            "escape" => set_once(&mut self.escape, arg.string("ESCAPE")?, "ESCAPE"),
            "encoding" => set_once(&mut self.encoding, arg.string("ENCODING")?, "ENCODING"),
            "force_quote" => {
                let f = match arg {
                    Arg::Star => ForceQuote::All,
                    Arg::List(cols) => ForceQuote::Columns(cols),
                    _ => {
                        return Err(CopyStatementError::BadOption {
                            option: "FORCE_QUOTE",
                            problem: "needs * or a list of columns",
                        });
                    }
                };
                set_once(&mut self.force_quote, f, "FORCE_QUOTE")
            }
            "force_not_null" | "force_null" => Err(CopyStatementError::BadOption {
                option: "FORCE_NOT_NULL/FORCE_NULL",
                problem: "applies to COPY FROM only",
            }),
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

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let hit = matches!(self.peek(), Some(Tok::Word(w)) if w == kw);
        self.pos += usize::from(hit);
        hit
    }

    fn expect_keyword(&mut self, kw: &str, what: &'static str) -> Result<(), CopyStatementError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(CopyStatementError::Syntax(what))
        }
    }

    fn punct(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(c));
        self.pos += usize::from(hit);
        hit
    }

    /// An identifier: unquoted (folded) or quoted.
    fn name(&mut self, what: &'static str) -> Result<String, CopyStatementError> {
        match self.peek() {
            Some(Tok::Word(s) | Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(CopyStatementError::Syntax(what)),
        }
    }

    /// `name [, name …]`, as in a column list.
    fn names(&mut self, what: &'static str) -> Result<Vec<String>, CopyStatementError> {
        let mut v = vec![self.name(what)?];
        while self.punct(b',') {
            v.push(self.name(what)?);
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, CopyStatementError> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(CopyStatementError::Syntax("a string constant")),
        }
    }

    /// A parenthesised option's argument: nothing, a word or string, an integer, `*`, or
    /// a parenthesised list of words and strings.
    fn generic_arg(&mut self) -> Result<Arg, CopyStatementError> {
        let arg = match self.peek() {
            Some(Tok::Punct(b',' | b')')) => return Ok(Arg::None),
            Some(Tok::Word(s) | Tok::Ident(s) | Tok::Str(s)) => Arg::Str(s.clone()),
            Some(Tok::Int(n)) => Arg::Int(n.clone()),
            Some(Tok::Punct(b'*')) => Arg::Star,
            Some(Tok::Punct(b'(')) => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(Tok::Word(s) | Tok::Ident(s) | Tok::Str(s)) => {
                            items.push(s.clone());
                            self.pos += 1;
                        }
                        _ => return Err(CopyStatementError::Syntax("a column name")),
                    }
                    if !self.punct(b',') {
                        break;
                    }
                }
                if !self.punct(b')') {
                    return Err(CopyStatementError::Syntax("')' after the list"));
                }
                return Ok(Arg::List(items));
            }
            _ => return Err(CopyStatementError::Syntax("an option value")),
        };
        self.pos += 1;
        Ok(arg)
    }

    /// The unparenthesised options of older releases, until none follows.
    fn legacy_options(&mut self, raw: &mut RawOptions) -> Result<(), CopyStatementError> {
        loop {
            let Some(Tok::Word(w)) = self.peek() else {
                return Ok(());
            };
            let w = w.clone();
            match w.as_str() {
                "binary" => raw.apply("format", Arg::Str("binary".into()))?,
                "csv" => raw.apply("format", Arg::Str("csv".into()))?,
                "freeze" | "header" => raw.apply(&w, Arg::None)?,
                "delimiter" | "null" | "quote" | "escape" | "encoding" => {
                    self.pos += 1;
                    if w != "encoding" {
                        self.keyword("as");
                    }
                    let s = self.string()?;
                    raw.apply(&w, Arg::Str(s))?;
                    continue;
                }
                "force" => {
                    self.pos += 1;
                    if !self.keyword("quote") {
                        return raw.apply("force_null", Arg::None);
                    }
                    let arg = if self.punct(b'*') {
                        Arg::Star
                    } else {
                        Arg::List(self.names("a column name")?)
                    };
                    raw.apply("force_quote", arg)?;
                    continue;
                }
                _ => return Ok(()),
            }
            self.pos += 1;
        }
    }
}

fn parse_tokens(toks: Vec<Tok>) -> Result<CopyTarget, CopyStatementError> {
    let mut p = Parser { toks, pos: 0 };
    let mut raw = RawOptions::default();
    p.expect_keyword("copy", "COPY")?;
    if p.keyword("binary") {
        raw.apply("format", Arg::Str("binary".into()))?;
    }
    let first = p.name("a table name")?;
    let (schema, table) = if p.punct(b'.') {
        (Some(first), p.name("a table name")?)
    } else {
        (None, first)
    };
    let columns = if p.punct(b'(') {
        let cols = p.names("a column name")?;
        if !p.punct(b')') {
            return Err(CopyStatementError::Syntax("')' after the column list"));
        }
        Some(cols)
    } else {
        None
    };
    p.expect_keyword("to", "TO")?;
    p.expect_keyword("stdout", "STDOUT")?;
    let using = p.keyword("using");
    if p.keyword("delimiters") {
        let s = p.string()?;
        raw.apply("delimiter", Arg::Str(s))?;
    } else if using {
        return Err(CopyStatementError::Syntax("DELIMITERS after USING"));
    }
    p.keyword("with");
    if p.punct(b'(') {
        loop {
            let name = p.name("an option name")?;
            let arg = p.generic_arg()?;
            raw.apply(&name, arg)?;
            if !p.punct(b',') {
                break;
            }
        }
        if !p.punct(b')') {
            return Err(CopyStatementError::Syntax("')' after the options"));
        }
    } else {
        p.legacy_options(&mut raw)?;
    }
    while p.punct(b';') {}
    if p.peek().is_some() {
        return Err(CopyStatementError::Syntax("the end of the statement"));
    }
    Ok(CopyTarget {
        schema,
        table,
        columns,
        options: raw.finish()?,
    })
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
    fn backslashes_in_plain_literals_must_read_one_way() {
        // With standard_conforming_strings off, '\N' is "N" and '\|' is "|": refuse
        // what the two settings read differently.
        assert_eq!(
            err("COPY t TO STDOUT (NULL '\\N')"),
            CopyStatementError::AmbiguousBackslash
        );
        assert_eq!(
            err("COPY t TO STDOUT (DELIMITER '\\|')"),
            CopyStatementError::AmbiguousBackslash
        );
        // … unless the other reading does not even lex, or both agree.
        assert_eq!(
            opts("COPY t TO STDOUT (FORMAT csv, ESCAPE '\\')").escape,
            b'\\'
        );
        assert_eq!(opts("COPY t TO STDOUT (NULL E'\\\\N')").null, "\\N");
        assert_eq!(opts("COPY \"a\\b\" TO STDOUT -- \\ \n").delimiter, b'\t');
        assert_eq!(opts("COPY t TO STDOUT (NULL $$\\N$$)").null, "\\N");
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
            "COPY t TO STDOUT (HEADER 01)",
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
            "COPY t TO STDOUT (NULL E'\\uD83D\\uDE00')",
            "COPY t TO STDOUT (NULL E'\\u12')",
            "COPY t TO STDOUT (NULL U&'x')",
            "COPY t TO STDOUT (NULL X'41')",
            "COPY t TO STDOUT (NULL N'x')",
            "COPY t TO STDOUT (NULL 'a' 'b')",
            "COPY t TO STDOUT (NULL 'x' || 'y')",
            "COPY t TO STDOUT (NULL 'x'::text)",
            "COPY t TO STDOUT (NULL $1)",
            "COPY t TO STDOUT (HEADER 1.0)",
            "COPY t TO STDOUT (HEADER -1)",
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
            "COPY t TO STDIN",
            "COPY t FROM STDIN",
            "COPY (SELECT 1) TO STDOUT",
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
