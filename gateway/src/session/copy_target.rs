//! Which relation and columns a `COPY … TO STDOUT` statement reads, for masking.
//!
//! `COPY` results carry no column description, so the gateway reads the statement
//! itself. Only the plain form is understood (`COPY [schema.]table [(col, …)] TO …`);
//! anything else (`COPY (query) TO …`, odd syntax) yields `None` and the masking stage
//! fails closed when rules apply. The parser is strict and never panics.

/// The relation and optional column list of a `COPY … TO` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    pub schema: Option<String>,
    pub table: String,
    /// Columns in copy order, folded as PostgreSQL folds them; `None` = all columns.
    pub columns: Option<Vec<String>>,
    /// `FORMAT csv` (or the older bare `CSV` option) after `TO`: the rows are CSV.
    pub csv: bool,
}

impl CopyTarget {
    /// SQL listing the relation's columns in order: table OID, schema, table, attnum,
    /// column name, type OID. Names go in as a quoted `regclass` literal, never as SQL.
    pub fn columns_sql(&self) -> String {
        let mut rel = String::new();
        if let Some(s) = &self.schema {
            rel.push_str(&quote_ident(s));
            rel.push('.');
        }
        rel.push_str(&quote_ident(&self.table));
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
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parses `COPY [schema.]table [(col, …)] TO …`.
pub fn parse(sql: &[u8]) -> Option<CopyTarget> {
    let sql = std::str::from_utf8(sql).ok()?;
    let mut t = Tokens {
        s: sql.trim_start(),
    };
    if !t.keyword("copy") {
        return None;
    }
    let first = t.ident()?;
    let (schema, table) = if t.punct('.') {
        (Some(first), t.ident()?)
    } else {
        (None, first)
    };
    let columns = if t.punct('(') {
        let mut cols = vec![t.ident()?];
        while t.punct(',') {
            cols.push(t.ident()?);
        }
        if !t.punct(')') {
            return None;
        }
        Some(cols)
    } else {
        None
    };
    if !t.keyword("to") {
        return None;
    }
    Some(CopyTarget {
        schema,
        table,
        columns,
        csv: t.rest_has_csv(),
    })
}

struct Tokens<'a> {
    s: &'a str,
}

impl Tokens<'_> {
    fn skip_ws(&mut self) {
        self.s = self.s.trim_start();
    }

    fn keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let n = kw.len();
        let ok = self.s.len() >= n
            && self.s.is_char_boundary(n)
            && self.s[..n].eq_ignore_ascii_case(kw)
            && !self.s[n..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if ok {
            self.s = &self.s[n..];
        }
        ok
    }

    fn punct(&mut self, c: char) -> bool {
        self.skip_ws();
        match self.s.strip_prefix(c) {
            Some(rest) => {
                self.s = rest;
                true
            }
            None => false,
        }
    }

    /// Whether the options after `TO` ask for CSV: the legacy bare `CSV` word, or
    /// `FORMAT csv` / `FORMAT 'csv'`. Words are compared whole and quoted strings only as
    /// the value of `FORMAT`, so neither a file named `csv_export` nor `NULL 'csv'` counts.
    fn rest_has_csv(&self) -> bool {
        let mut tokens = Vec::new();
        let mut chars = self.s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' || c == '"' {
                let start = i + 1;
                let mut end = self.s.len();
                for (j, d) in chars.by_ref() {
                    if d == c {
                        end = j;
                        break;
                    }
                }
                tokens.push((true, &self.s[start.min(end)..end]));
            } else if c.is_alphanumeric() || c == '_' {
                let mut end = self.s.len();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                tokens.push((false, &self.s[i..end]));
            }
        }
        let is_csv = |t: &str| t.eq_ignore_ascii_case("csv");
        tokens.iter().enumerate().any(|(k, &(quoted, t))| {
            let after_format = k > 0 && {
                let (q, prev) = tokens[k - 1];
                !q && prev.eq_ignore_ascii_case("format")
            };
            is_csv(t) && (!quoted || after_format)
        })
    }

    /// An identifier: unquoted (folded to lower case) or double-quoted.
    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        if let Some(rest) = self.s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if rest[i + 1..].starts_with('"') {
                        out.push('"');
                        chars.next();
                    } else {
                        self.s = &rest[i + 1..];
                        return (!out.is_empty()).then_some(out);
                    }
                } else {
                    out.push(c);
                }
            }
            return None;
        }
        let end = self
            .s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(self.s.len());
        let word = &self.s[..end];
        if word.is_empty() || word.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
            return None;
        }
        self.s = &self.s[end..];
        Some(word.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms_parse() {
        let t = parse(b"COPY accounts TO STDOUT").unwrap();
        assert_eq!(
            (t.schema, t.table.as_str(), t.columns),
            (None, "accounts", None)
        );
        let t =
            parse(b"copy Public.\"Acc\"\"ts\" (ID, \"Ssn\") to stdout with (format csv)").unwrap();
        assert_eq!(t.schema.as_deref(), Some("public"));
        assert_eq!(t.table, "Acc\"ts");
        assert_eq!(t.columns, Some(vec!["id".into(), "Ssn".into()]));
        assert!(t.csv);
        assert!(
            t.columns_sql()
                .contains("'\"public\".\"Acc\"\"ts\"'::pg_catalog.regclass")
        );
    }

    #[test]
    fn csv_is_an_option_word_not_a_substring() {
        assert!(parse(b"COPY t TO STDOUT CSV HEADER").unwrap().csv);
        assert!(parse(b"COPY t TO STDOUT (FORMAT 'csv')").unwrap().csv);
        assert!(parse(b"COPY t TO STDOUT WITH (FORMAT csv)").unwrap().csv);
        assert!(!parse(b"COPY csv_export TO STDOUT").unwrap().csv);
        assert!(!parse(b"COPY \"csv\" TO STDOUT").unwrap().csv);
        assert!(
            !parse(b"COPY t TO STDOUT WITH (FORMAT text, NULL 'csv')")
                .unwrap()
                .csv
        );
    }

    #[test]
    fn other_forms_are_not_guessed() {
        for sql in [
            &b"COPY (SELECT 1) TO STDOUT"[..],
            b"COPY accounts FROM STDIN",
            b"COPY \"unterminated TO STDOUT",
            b"SELECT 1",
            b"COPY a.b.c TO STDOUT",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(parse(sql), None, "{}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn quotes_cannot_escape_the_literal() {
        let t = parse(b"COPY \"x'); DROP TABLE y; --\" TO STDOUT").unwrap();
        let sql = t.columns_sql();
        assert!(
            sql.contains("'\"x''); DROP TABLE y; --\"'::pg_catalog.regclass"),
            "{sql}"
        );
    }
}
