//! Name patterns for rule selectors: `*`/`?` globs and `schema.table.column` paths.
//!
//! Matching is ASCII case-insensitive: PostgreSQL folds unquoted identifiers to lower
//! case, and a rule written `Public.Accounts.SSN` should not silently miss. Matching more
//! than intended only masks more, which is the safe direction.

/// A compiled glob: `*` matches any run (including empty), `?` one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<[u8]>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.as_bytes().to_ascii_lowercase().into_boxed_slice(),
        }
    }

    /// Iterative matcher with single-star backtracking: linear in practice, no recursion
    /// an adversarial name could blow up.
    pub fn matches(&self, name: &[u8]) -> bool {
        let p = &self.pattern;
        let (mut pi, mut ni) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ni < name.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == name[ni].to_ascii_lowercase()) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == b'*' {
            pi += 1;
        }
        pi == p.len()
    }
}

/// `schema.table.column`, each part a [`Glob`] (a `*` does not cross a dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPath {
    pub schema: Glob,
    pub table: Glob,
    pub column: Glob,
}

impl ColumnPath {
    /// Parses a three-part path; the error text says what is wrong.
    pub fn parse(path: &str) -> Result<Self, String> {
        let parts: Vec<&str> = path.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "column {path:?} must be schema.table.column (globs allowed in each part)"
            ));
        }
        Ok(ColumnPath {
            schema: Glob::new(parts[0]),
            table: Glob::new(parts[1]),
            column: Glob::new(parts[2]),
        })
    }

    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches(schema.as_bytes())
            && self.table.matches(table.as_bytes())
            && self.column.matches(column.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Glob::new("*_card_number");
        assert!(g.matches(b"customer_card_number"));
        assert!(g.matches(b"_card_number"));
        assert!(g.matches(b"X_CARD_NUMBER"));
        assert!(!g.matches(b"card_number"));
        assert!(!g.matches(b"customer_card_numbers"));
        assert!(Glob::new("ssn").matches(b"SSN"));
        assert!(!Glob::new("ssn").matches(b"ssn2"));
        assert!(Glob::new("s?n").matches(b"ssn"));
        assert!(Glob::new("*").matches(b""));
        assert!(Glob::new("a*b*c").matches(b"aXXbYYbc"));
        assert!(!Glob::new("a*b*c").matches(b"aXXbYYb"));
        assert!(Glob::new("**x").matches(b"abcx"));
    }

    #[test]
    fn paths() {
        let p = ColumnPath::parse("public.*.notes").unwrap();
        assert!(p.matches("public", "accounts", "notes"));
        assert!(!p.matches("audit", "accounts", "notes"));
        assert!(!p.matches("public", "accounts", "notes2"));
        assert!(ColumnPath::parse("accounts.ssn").is_err());
        assert!(ColumnPath::parse("a..b").is_err());
    }
}
