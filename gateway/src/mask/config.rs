//! The `[mask]` section of the gateway configuration, exactly as written in TOML.
//!
//! These are plain data: [`super::Policy::compile`] validates them and builds what the
//! hot path uses, so a config that parses can still be rejected there with an error that
//! names the rule.
//!
//! ```toml
//! [mask]
//! hash_key_env = "PORTCULLIS_MASK_KEY"
//! exempt_roles = ["auditor"]
//! # Computed columns (`ssn || ''`, `row_to_json(a)`) that no rule names:
//! # "scan" (default) redacts what the detectors find, "refuse", or "pass".
//! unattributed = "scan"
//!
//! [[mask.rule]]
//! name = "ssn"
//! column = "public.accounts.ssn"
//! strategy = "format_preserving"
//!
//! [[mask.rule]]
//! column_name = "*_card_number"
//! strategy = "partial"
//! keep_last = 4
//! mask_char = "*"
//!
//! [[mask.rule]]
//! name = "notes-scan"
//! column = "public.*.notes"
//! detectors = ["card", "ssn", "iban", "email", "routing"]
//! strategy = "redact"
//! text = "[REDACTED]"
//! ```

use serde::Deserialize;

/// `[mask]`: the key for keyed strategies, global exemptions and the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    /// Key for `hash` and `format_preserving` (UTF-8 bytes, at least 16). Prefer
    /// `hash_key_env` so the key stays out of the file.
    pub hash_key: Option<String>,
    /// Name of an environment variable holding the key.
    pub hash_key_env: Option<String>,
    /// Roles that see raw values for every rule (e.g. `auditor`).
    pub exempt_roles: Vec<String>,
    /// Agent identities that see raw values for every rule.
    pub exempt_identities: Vec<String>,
    /// `[[mask.rule]]` entries. Whole-value rules win over scanning rules on the same
    /// column; within each kind the first matching rule wins.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// What happens to result columns no rule covers whose source is not a table column
    /// (expressions such as `ssn || ''`, `row_to_json(a)`, function results, view
    /// columns), while any rule applies to the reader.
    pub unattributed: Unattributed,
    /// Seconds a table's names stay cached without DDL seen through the gateway (a
    /// rename made directly on the database is noticed within this); default 60.
    pub catalog_ttl_secs: Option<u64>,
}

/// A use of a masked column in a statement that a rule allows (`permit = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permit {
    /// `GROUP BY`, `DISTINCT ON`, `PARTITION BY` (allowed by default).
    Group,
    /// `count(col)` (allowed by default).
    Count,
    /// Equality with another column: joins, `USING`, `IN (SELECT ...)` (allowed by default).
    Join,
    /// Comparison with a constant, parameter or expression; `IS NULL`; `IN (list)`.
    Compare,
    /// `LIKE`, `ILIKE`, `SIMILAR TO`, regular expressions.
    Pattern,
    /// `ORDER BY` and ordered aggregates or windows.
    Order,
    /// Any function or operator argument, cast, `CASE`, `COALESCE`.
    Function,
    /// Read by a statement that stores what it reads (`INSERT ... SELECT`, `CREATE TABLE
    /// AS`, `UPDATE ... SET x = col`, a view definition).
    Write,
}

impl Permit {
    /// What every column rule allows without saying so.
    pub const DEFAULT: [Permit; 3] = [Permit::Group, Permit::Count, Permit::Join];

    pub fn as_str(self) -> &'static str {
        match self {
            Permit::Group => "group",
            Permit::Count => "count",
            Permit::Join => "join",
            Permit::Compare => "compare",
            Permit::Pattern => "pattern",
            Permit::Order => "order",
            Permit::Function => "function",
            Permit::Write => "write",
        }
    }
}

/// `[mask] unattributed`: a value computed from a masked column loses its table OID,
/// so neither column rules nor (after an alias) name rules can see where it came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unattributed {
    /// Scan text-like values with every detector, taking bare numbers that validate as
    /// an SSN, routing or card number for one (a computed value has no context to
    /// judge by), and redact what is found. Numeric results pass.
    #[default]
    Scan,
    /// Refuse results with such text-like columns: agents must select table columns.
    Refuse,
    /// Forward them unmasked (trusting name rules and the agents).
    Pass,
}

/// One `[[mask.rule]]`: a selector (exactly one of `column`, `column_name`,
/// `column_regex`), an optional list of detectors, and a strategy with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in errors and audit counts; defaults to `#<position>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `schema.table.column` with `*`/`?` globs per part, resolved through the catalog
    /// from the result's table OID and attribute number (so aliases do not evade it).
    #[serde(default)]
    pub column: Option<String>,
    /// Glob on the result column's name (and on the source column's name when known);
    /// covers computed columns that have no table OID.
    #[serde(default)]
    pub column_name: Option<String>,
    /// Regular expression on the same names as `column_name` (matched once per plan).
    #[serde(default)]
    pub column_regex: Option<String>,
    /// When non-empty, the rule scans the value and masks only what these detectors
    /// find; when empty, the whole value is masked.
    #[serde(default)]
    pub detectors: Vec<DetectorKind>,
    /// What the column is known to hold, for scanning rules: lets `ssn` match a bare
    /// 9-digit number and `routing` match without a keyword nearby.
    #[serde(default)]
    pub hints: Vec<DetectorKind>,
    pub strategy: StrategyKind,
    /// `partial`: characters (letters and digits) kept at the end.
    #[serde(default)]
    pub keep_last: Option<usize>,
    /// `partial`: characters kept at the start.
    #[serde(default)]
    pub keep_first: Option<usize>,
    /// `partial`: replacement character (not a letter or digit); default `*`.
    #[serde(default)]
    pub mask_char: Option<char>,
    /// `redact`: the replacement text; default `[REDACTED]`.
    #[serde(default)]
    pub text: Option<String>,
    /// Roles for which this rule does not apply.
    #[serde(default)]
    pub exempt_roles: Vec<String>,
    /// Identities for which this rule does not apply.
    #[serde(default)]
    pub exempt_identities: Vec<String>,
    /// How statements may use the column besides selecting it as itself, on top of the
    /// default `group`, `count` and `join` (see [`Permit`]). Anything else (a function
    /// argument, a comparison with a constant, `LIKE`, `ORDER BY`, reading it into a
    /// write) is refused before the statement runs, since it would let SQL read the value
    /// around the mask.
    #[serde(default)]
    pub permit: Vec<Permit>,
}

impl RuleConfig {
    /// A rule with this strategy and nothing else set, for building configs in code.
    pub fn new(strategy: StrategyKind) -> Self {
        RuleConfig {
            name: None,
            column: None,
            column_name: None,
            column_regex: None,
            detectors: Vec::new(),
            hints: Vec::new(),
            strategy,
            keep_last: None,
            keep_first: None,
            mask_char: None,
            text: None,
            exempt_roles: Vec::new(),
            exempt_identities: Vec::new(),
            permit: Vec::new(),
        }
    }
}

/// How a value (or each finding inside it) is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Fixed text.
    Redact,
    /// Keep the first/last N letters and digits, mask the rest, keep separators.
    Partial,
    /// Keyed HMAC-SHA256 token, deterministic per key (joins still work).
    Hash,
    /// Same shape (digits stay digits, separators and length stay) but never a valid
    /// card, SSN, routing number or IBAN.
    FormatPreserving,
    /// SQL NULL (for a scanning rule: the whole value when anything is found).
    Null,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Redact => "redact",
            StrategyKind::Partial => "partial",
            StrategyKind::Hash => "hash",
            StrategyKind::FormatPreserving => "format_preserving",
            StrategyKind::Null => "null",
        }
    }
}

/// What a scanning rule looks for inside free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// Payment card numbers: 13-19 digits, Luhn, known IIN ranges.
    Card,
    /// US social security numbers `AAA-GG-SSSS` with issued-range checks.
    Ssn,
    /// ABA routing numbers (needs a hint or a keyword such as "routing" nearby).
    Routing,
    /// IBANs: per-country length and mod-97.
    Iban,
    /// E-mail addresses.
    Email,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 5] = [
        DetectorKind::Card,
        DetectorKind::Ssn,
        DetectorKind::Routing,
        DetectorKind::Iban,
        DetectorKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Card => "card",
            DetectorKind::Ssn => "ssn",
            DetectorKind::Routing => "routing",
            DetectorKind::Iban => "iban",
            DetectorKind::Email => "email",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Root {
        mask: MaskConfig,
    }

    #[test]
    fn parses_the_issue_example() {
        let toml = r#"
            [mask]
            hash_key = "0123456789abcdef0123"
            exempt_roles = ["auditor"]
            exempt_identities = []
            [[mask.rule]]
            name = "ssn"
            column = "public.accounts.ssn"
            strategy = "format_preserving"
            [[mask.rule]]
            column_name = "*_card_number"
            strategy = "partial"
            keep_last = 4
            mask_char = "*"
            [[mask.rule]]
            name = "notes-scan"
            column = "public.*.notes"
            detectors = ["card", "ssn", "iban", "email", "routing"]
            strategy = "redact"
            text = "[REDACTED]"
        "#;
        let root: Root = toml::from_str(toml).unwrap();
        assert_eq!(root.mask.rules.len(), 3);
        assert_eq!(root.mask.rules[1].keep_last, Some(4));
        assert_eq!(root.mask.rules[2].detectors.len(), 5);
        assert_eq!(root.mask.exempt_roles, ["auditor"]);
    }

    #[test]
    fn rejects_unknown_fields() {
        let bad = "[mask]\nhash_keys = \"x\"\n";
        assert!(toml::from_str::<Root>(bad).is_err());
        let bad_rule = "[[mask.rule]]\ncolumn = \"a.b.c\"\nstrategy = \"null\"\nkeep = 1\n";
        assert!(toml::from_str::<Root>(bad_rule).is_err());
        let bad_strategy = "[[mask.rule]]\ncolumn = \"a.b.c\"\nstrategy = \"scramble\"\n";
        assert!(toml::from_str::<Root>(bad_strategy).is_err());
    }

    #[test]
    fn default_is_empty() {
        let root: Root = toml::from_str("[mask]\n").unwrap();
        assert_eq!(root.mask, MaskConfig::default());
    }
}
