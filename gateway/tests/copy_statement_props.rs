//! Property tests for masked `COPY … TO STDOUT` with the statement's format options: the
//! statement reader (PostgreSQL's grammar, then the option rules) never panics and reads
//! back every option it is given, in either syntax and any literal style, as the row
//! layout the masker is meant to use; and rows written the way PostgreSQL writes them, with any
//! delimiter, quote, escape, NULL string and header, come out of the masker with the
//! masked column replaced and every other byte as the server sent it, however the stream
//! is cut into messages.

use portcullis::mask::{Catalog, ColumnDesc, CopyFormat, MaskConfig, MaskStats, Policy, Subject};
use portcullis::protocol::backend::{copy_data, copy_out_response};
use portcullis::session::copy_target::{
    CopyOptions, CopyStatementError, ForceQuote, Format, parse_statement, parse_statement_as,
};
use proptest::prelude::*;

/// What the rule puts in place of an SSN: the delimiters and quotes a redaction may hold
/// (policy refuses quotes, backslashes and control characters in it).
const REDACTED: &str = "r|;,:#!`x é";

fn policy() -> Policy {
    let toml = format!(
        "hash_key = \"proptest-key-0123456789\"\n[[rule]]\nname = \"ssn\"\ncolumn_name = \"ssn\"\nstrategy = \"redact\"\ntext = {}\n",
        toml::Value::String(REDACTED.into())
    );
    let cfg: MaskConfig = toml::from_str(&toml).unwrap();
    Policy::compile(&cfg).unwrap()
}

const NAMES: [&str; 3] = ["id", "ssn", "No|tes;\"x\""];

fn columns() -> Vec<ColumnDesc> {
    NAMES.iter().map(|n| ColumnDesc::computed(n, 25)).collect()
}

/// Options that PostgreSQL accepts and the masker can split.
#[derive(Debug, Clone)]
struct Opts {
    csv: bool,
    delimiter: u8,
    null: String,
    header: bool,
    quote: u8,
    escape: u8,
    force_all: bool,
}

fn opts() -> impl Strategy<Value = Opts> {
    (
        any::<bool>(),
        prop::sample::select(&b"\t|;,:#!\\'\"x"[..]),
        prop::sample::select(vec!["\\N", "", "n/a", "NULL", "$$", "é"]),
        any::<bool>(),
        prop::sample::select(&b"\"'|`"[..]),
        prop::sample::select(&b"\"\\'!"[..]),
        any::<bool>(),
    )
        .prop_map(
            |(csv, delimiter, null, header, quote, escape, force_all)| Opts {
                csv,
                delimiter,
                null: null.to_owned(),
                header,
                quote,
                escape,
                force_all,
            },
        )
        .prop_filter("options PostgreSQL rejects", |o| {
            let text_bad =
                !o.csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&o.delimiter);
            let csv_bad = o.csv && (o.delimiter == o.quote || o.null.as_bytes().contains(&o.quote));
            !text_bad && !csv_bad && !o.null.as_bytes().contains(&o.delimiter)
        })
}

/// A literal in one of the styles the server reads (with standard_conforming_strings on,
/// which the statement gate keeps).
fn literal(value: &str, style: u8) -> String {
    match style % 4 {
        0 => format!("'{}'", value.replace('\'', "''")),
        1 if !value.contains("$$") => format!("$${value}$$"),
        2 => {
            let mut s = String::from("U&'");
            for (i, c) in value.chars().enumerate() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '\'' => s.push_str("''"),
                    c if i % 2 == 0 => s.push_str(&format!("\\{:04x}", u32::from(c))),
                    c => s.push(c),
                }
            }
            s.push('\'');
            s
        }
        _ => {
            let mut s = String::from("E'");
            for (i, c) in value.chars().enumerate() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '\'' if i % 2 == 0 => s.push_str("\\'"),
                    '\'' => s.push_str("''"),
                    c if c.is_ascii() && i % 2 == 1 => s.push_str(&format!("\\x{:02x}", c as u8)),
                    c => s.push(c),
                }
            }
            s.push('\'');
            s
        }
    }
}

fn render(o: &Opts, legacy: bool, style: u8) -> String {
    let lit = |v: &str, k: u8| literal(v, style.wrapping_add(k));
    let d = lit(&(o.delimiter as char).to_string(), 0);
    let n = lit(&o.null, 1);
    let mut sql = String::from("COPY accounts (id, ssn, \"No|tes;\"\"x\"\"\") TO STDOUT ");
    if legacy {
        sql += &format!("WITH DELIMITER AS {d} NULL {n}");
        if o.csv {
            sql += " CSV";
        }
        if o.header {
            sql += " HEADER";
        }
        if o.csv {
            sql += &format!(
                " QUOTE AS {} ESCAPE {}",
                lit(&(o.quote as char).to_string(), 2),
                lit(&(o.escape as char).to_string(), 3)
            );
            if o.force_all {
                sql += " FORCE QUOTE *";
            }
        }
    } else {
        let mut items = vec![
            format!("FORMAT {}", if o.csv { "csv" } else { "TEXT" }),
            format!("delimiter {d}"),
            format!("\"null\" {n}"),
            format!("Header {}", if o.header { "on" } else { "0" }),
        ];
        if o.csv {
            items.push(format!("QUOTE {}", lit(&(o.quote as char).to_string(), 2)));
            items.push(format!(
                "ESCAPE {}",
                lit(&(o.escape as char).to_string(), 3)
            ));
            if o.force_all {
                items.push("FORCE_QUOTE *".into());
            }
        }
        let turn = style as usize % items.len();
        items.rotate_left(turn);
        sql += &format!("/* options */ ({});", items.join(", "));
    }
    sql
}

fn expected(o: &Opts) -> CopyOptions {
    CopyOptions {
        format: if o.csv { Format::Csv } else { Format::Text },
        delimiter: o.delimiter,
        null: o.null.clone(),
        header: o.header,
        quote: if o.csv { o.quote } else { b'"' },
        escape: if o.csv { o.escape } else { b'"' },
        force_quote: if o.csv && o.force_all {
            ForceQuote::All
        } else {
            ForceQuote::None
        },
        encoding: None,
    }
}

/// The row layout the masker should get for `o`, with the copied columns [`NAMES`].
fn expected_format(o: &Opts) -> CopyFormat {
    let null = o.null.clone().into_bytes();
    let header = o
        .header
        .then(|| NAMES.iter().map(|n| n.as_bytes().to_vec()).collect());
    if o.csv {
        CopyFormat::Csv {
            delimiter: o.delimiter,
            quote: o.quote,
            escape: o.escape,
            null,
            header,
            force_quote: if o.force_all {
                vec![true; 3]
            } else {
                Vec::new()
            },
        }
    } else {
        CopyFormat::Text {
            delimiter: o.delimiter,
            null,
            header,
        }
    }
}

/// A field as PostgreSQL's `CopyAttributeOutText` / `CopyAttributeOutCSV` writes it.
fn write_field(o: &Opts, value: Option<&str>, force: bool, out: &mut Vec<u8>) {
    let Some(v) = value else {
        out.extend_from_slice(o.null.as_bytes());
        return;
    };
    let v = v.as_bytes();
    if !o.csv {
        for &c in v {
            let named = match c {
                8 => Some(b'b'),
                12 => Some(b'f'),
                b'\n' => Some(b'n'),
                b'\r' => Some(b'r'),
                b'\t' => Some(b't'),
                11 => Some(b'v'),
                _ => None,
            };
            match named {
                Some(n) => out.extend_from_slice(&[b'\\', n]),
                None if c == b'\\' || c == o.delimiter => out.extend_from_slice(&[b'\\', c]),
                None => out.push(c),
            }
        }
        return;
    }
    let quoted = force
        || v == o.null.as_bytes()
        || v.iter()
            .any(|&c| c == o.delimiter || c == o.quote || c == b'\n' || c == b'\r');
    if !quoted {
        out.extend_from_slice(v);
        return;
    }
    out.push(o.quote);
    for &c in v {
        if c == o.quote || c == o.escape {
            out.push(o.escape);
        }
        out.push(c);
    }
    out.push(o.quote);
}

fn write_rows(o: &Opts, rows: &[[Option<String>; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    if o.header {
        for (i, n) in NAMES.iter().enumerate() {
            if i > 0 {
                out.push(o.delimiter);
            }
            write_field(o, Some(n), false, &mut out);
        }
        out.push(b'\n');
    }
    for r in rows {
        for (i, f) in r.iter().enumerate() {
            if i > 0 {
                out.push(o.delimiter);
            }
            write_field(o, f.as_deref(), o.csv && o.force_all, &mut out);
        }
        out.push(b'\n');
    }
    out
}

/// Splits a whole stream into rows of raw fields, as PostgreSQL's COPY FROM would.
fn read_rows(o: &Opts, data: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = Vec::new();
    let mut in_quote = false;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        if !o.csv && c == b'\\' && i + 1 < data.len() {
            field.extend_from_slice(&data[i..i + 2]);
            i += 2;
            continue;
        }
        if o.csv && in_quote {
            if c == o.escape && o.escape != o.quote && i + 1 < data.len() {
                field.extend_from_slice(&data[i..i + 2]);
                i += 2;
                continue;
            }
            in_quote = c != o.quote;
            field.push(c);
        } else if o.csv && c == o.quote {
            in_quote = true;
            field.push(c);
        } else if c == o.delimiter {
            row.push(std::mem::take(&mut field));
        } else if c == b'\n' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        } else {
            field.push(c);
        }
        i += 1;
    }
    assert!(field.is_empty() && row.is_empty(), "unterminated row");
    rows
}

/// The value of a raw field; `None` for NULL.
fn decode(o: &Opts, raw: &[u8]) -> Option<Vec<u8>> {
    if raw == o.null.as_bytes() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_quote = false;
    while i < raw.len() {
        let c = raw[i];
        if !o.csv && c == b'\\' && i + 1 < raw.len() {
            out.push(match raw[i + 1] {
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                other => other,
            });
            i += 2;
            continue;
        }
        if o.csv && in_quote && c == o.escape && i + 1 < raw.len() {
            let next = raw[i + 1];
            if next == o.quote || next == o.escape {
                out.push(next);
                i += 2;
                continue;
            }
        }
        if o.csv && c == o.quote {
            in_quote = !in_quote;
        } else {
            out.push(c);
        }
        i += 1;
    }
    Some(out)
}

fn value() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.85,
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "7", "-", " ", "|", ";", ",", ":", "#", "!", "x", "'", "\"", "`", "\\", "\t",
                "\n", "\r", "\u{8}", "\u{b}", "n/a", "\\N", "NULL", "é", "$$", "\\.",
            ]),
            0..8,
        )
        .prop_map(|parts| parts.concat()),
    )
}

fn cut(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
}

const VOCABULARY: &[&str] = &[
    "COPY",
    "copy",
    "BINARY",
    "t",
    "\"T x\"",
    "public",
    ".",
    "(",
    ")",
    ",",
    ";",
    "TO",
    "STDOUT",
    "FROM",
    "WITH",
    "USING",
    "DELIMITERS",
    "FORMAT",
    "csv",
    "text",
    "binary",
    "DELIMITER",
    "NULL",
    "HEADER",
    "QUOTE",
    "ESCAPE",
    "FORCE",
    "NOT",
    "FORCE_QUOTE",
    "*",
    "AS",
    "ENCODING",
    "FREEZE",
    "true",
    "off",
    "1",
    "0",
    "01",
    "1.5",
    "-",
    "::",
    "'|'",
    "''''",
    "'\\'",
    "'\\N'",
    "E'\\x7c'",
    "E'\\\\'",
    "E'\\u00e9'",
    "E'\\",
    "$$x$$",
    "$a$y$a$",
    "$",
    "$1",
    "--",
    "/*",
    "*/",
    "\n",
    "'",
    "\"",
    "\\",
    "é",
    "U&'x'",
    "e'",
    "x'1'",
    "\u{0}",
    "\u{b}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(sql in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_statement(&sql);
    }

    #[test]
    fn statement_soup_never_panics_and_what_parses_is_consistent(
        words in prop::collection::vec(prop::sample::select(VOCABULARY), 0..24),
        glue in prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t"]), 24),
    ) {
        let mut sql = String::new();
        for (w, g) in words.iter().zip(&glue) {
            sql.push_str(w);
            sql.push_str(g);
        }
        if let Ok(t) = parse_statement(sql.as_bytes()) {
            let o = t.options;
            let eol = |c: u8| c == b'\n' || c == b'\r';
            prop_assert!(o.delimiter.is_ascii() && !eol(o.delimiter));
            prop_assert!(!o.null.bytes().any(|c| eol(c) || c == o.delimiter));
            if o.format == Format::Csv {
                prop_assert!(o.quote != o.delimiter && !eol(o.quote) && !eol(o.escape));
            }
        }
    }

    #[test]
    fn every_option_reads_back(o in opts(), legacy in any::<bool>(), style in any::<u8>()) {
        let sql = render(&o, legacy, style);
        let t = parse_statement(sql.as_bytes()).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        prop_assert_eq!(&t.options, &expected(&o), "{}", sql);
        prop_assert_eq!(
            t.format(&columns(), &copy_out_response(false, 3)).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?,
            expected_format(&o),
            "{}",
            sql
        );
        prop_assert_eq!(t.columns, Some(NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
    }

    #[test]
    fn masked_copy_keeps_every_other_byte(
        o in opts(),
        rows in prop::collection::vec((value(), value(), value()), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let rows: Vec<[Option<String>; 3]> = rows.into_iter().map(|(a, b, c)| [a, b, c]).collect();
        let sql = render(&o, false, 0);
        let target = parse_statement(sql.as_bytes()).unwrap();
        let response = copy_out_response(false, 3);
        let format = target.format(&columns(), &response).unwrap();
        let mut plan = policy()
            .plan_copy(&Subject::new("agent", ["agents"]), Some(&columns()), &Catalog::new(), &response, format)
            .unwrap();
        let input = write_rows(&o, &rows);
        let mut stats = MaskStats::new();
        let mut output = Vec::new();
        for piece in cut(&input, &cuts) {
            let frame = plan.mask_copy_data(copy_data(&piece), &mut stats).unwrap();
            if !frame.is_empty() {
                output.extend_from_slice(&frame[5..]);
            }
        }
        plan.finish().unwrap();

        let before = read_rows(&o, &input);
        let after = read_rows(&o, &output);
        prop_assert_eq!(after.len(), before.len());
        let skip = usize::from(o.header);
        if o.header {
            prop_assert_eq!(&after[0], &before[0]);
        }
        for (b, a) in before[skip..].iter().zip(&after[skip..]) {
            prop_assert_eq!(a.len(), 3);
            prop_assert_eq!(&a[0], &b[0]);
            prop_assert_eq!(&a[2], &b[2]);
            match decode(&o, &b[1]) {
                None => prop_assert_eq!(&a[1], &b[1]),
                Some(_) => prop_assert_eq!(decode(&o, &a[1]), Some(REDACTED.as_bytes().to_vec())),
            }
        }
    }
}

#[test]
fn refusals_name_the_reason() {
    let e = parse_statement(b"COPY t TO STDOUT (FORMAT csv, FORCE_NOT_NULL (a))").unwrap_err();
    assert!(e.to_string().contains("COPY FROM only"), "{e}");
    let e = parse_statement(b"COPY (SELECT 1) TO STDOUT WITH (FORMAT xml)").unwrap_err();
    assert!(e.to_string().contains("FORMAT"), "{e}");
    // A query is read with its text, for the server to describe.
    let q = parse_statement(b"COPY (SELECT 1) TO STDOUT").unwrap();
    assert_eq!(q.query.as_deref(), Some("SELECT 1"));
    // PostgreSQL's own message for what its grammar does not accept.
    let e = parse_statement(b"COPY t TO STDOUT WHERE a = 1").unwrap_err();
    assert!(e.to_string().contains("WHERE clause not allowed"), "{e}");
    assert_eq!(
        parse_statement_as(b"COPY t TO STDOUT (NULL '\\N')", Some(false)).unwrap_err(),
        CopyStatementError::StandardConformingStringsOff
    );
}
