//! The compiled policy, per-result-set plans, and the `DataRow` hot path.
//!
//! [`Policy`] is built once per config load and shared (`Clone` is an `Arc` bump).
//! [`Policy::plan`] runs once per `RowDescription`: it resolves every column to at most
//! one rule, checks that the rule can rewrite that column's wire format, and returns a
//! [`RowPlan`]. [`RowPlan::mask_data_row`] then runs per row and touches only the fields
//! the plan marks, returning the input `Bytes` untouched when nothing changed.
//!
//! Which rule wins on a column: rules exempt for the subject are skipped; a whole-value
//! rule (no `detectors`) beats a scanning rule, since it hides everything anyway; among
//! rules of the same kind the first in config order wins.
//!
//! Binary-format columns: text-like types (`text`, `varchar`, `bpchar`, `name`, `char`,
//! `json`, `unknown`) carry the same bytes as in text format and take every strategy;
//! binary `jsonb` is a version byte plus text and is handled too. Any other binary type
//! (integers, numeric, dates, ...) only takes `null`: rewriting its bytes with text would
//! make the client misread it, so the plan fails with [`MaskError::UnsafeBinary`]. In text
//! format every type takes every strategy; for numeric columns prefer `null` or
//! `format_preserving`, which keep the value parseable.
//!
//! JSON (`json`, `jsonb`): findings inside a JSON string are replaced in place; findings
//! that are bare JSON numbers, and whole-value replacements, become JSON strings, so the
//! document stays valid.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::MaskError;
use super::binary::{self, TypeKind};
use super::catalog::{Lookup, TableNames};
use super::config::{DetectorKind, MaskConfig, Permit, RuleConfig, StrategyKind, Unattributed};
use super::copy::{CopyFormat, CopyPlan};
use super::detect::{DetectorSet, Finding, Scanner};
use super::pattern::{ColumnPath, Glob};
use super::strategy::{Sink, Strategy};
use super::wire::{ColumnDesc, data_row_start, read_field};

/// Who is reading: the agent identity and its roles, for exemptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub identity: String,
    pub roles: Vec<String>,
}

impl Subject {
    pub fn new(
        identity: impl Into<String>,
        roles: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Subject {
            identity: identity.into(),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    fn in_lists(&self, identities: &[String], roles: &[String]) -> bool {
        identities.contains(&self.identity) || self.roles.iter().any(|r| roles.contains(r))
    }
}

enum Selector {
    Path(ColumnPath),
    Name(Glob),
    Regex(regex::bytes::Regex),
    /// The built-in rule for computed columns: chosen by [`Policy::plan`], never by
    /// matching.
    Unattributed,
}

pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    selector: Selector,
    /// `None`: the whole value is masked; `Some`: only what the scanner finds.
    pub(crate) scan: Option<Scanner>,
    /// The scan without e-mail, to re-check output: a format-preserving e-mail still
    /// looks like one by design, the checksummed kinds must not.
    rescan: Scanner,
    pub(crate) strategy: Strategy,
    exempt_roles: Vec<String>,
    exempt_identities: Vec<String>,
    permits: Vec<Permit>,
}

/// A rule that covers a column a statement uses: see [`Policy::query_rule`].
#[derive(Debug, Clone, Copy)]
pub struct QueryRule<'a> {
    pub name: &'a str,
    /// What it allows besides selecting the column (the defaults included).
    pub permits: &'a [Permit],
}

pub(crate) struct Inner {
    /// The configured rules, then (when there are any) the built-in scanning rule for
    /// what cannot be attributed to a column: computed columns under
    /// `[mask] unattributed = "scan"`, server messages unless it is `pass`.
    pub(crate) rules: Vec<Rule>,
    /// How many of `rules` came from the config.
    configured: usize,
    unattributed: Unattributed,
    exempt_roles: Vec<String>,
    exempt_identities: Vec<String>,
}

/// Name of the built-in rule that scans computed columns (in errors and audit counts).
pub const UNATTRIBUTED_RULE: &str = "unattributed";

/// A validated, compiled `[mask]` config. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.rule_names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const MIN_KEY_BYTES: usize = 16;
const DEFAULT_REDACTION: &str = "[REDACTED]";

impl Policy {
    /// Validates and compiles the config, reading `hash_key_env` from the process
    /// environment.
    pub fn compile(cfg: &MaskConfig) -> Result<Policy, MaskError> {
        Self::compile_with_env(cfg, |name| std::env::var(name).ok())
    }

    /// [`Policy::compile`] with an explicit environment lookup (tests, or a gateway that
    /// reads secrets elsewhere).
    pub fn compile_with_env(
        cfg: &MaskConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Policy, MaskError> {
        let key = match (&cfg.hash_key, &cfg.hash_key_env) {
            (Some(_), Some(_)) => {
                return Err(MaskError::InvalidConfig(
                    "set hash_key or hash_key_env, not both".into(),
                ));
            }
            (Some(k), None) => Some(k.clone()),
            (None, Some(var)) => Some(env(var).ok_or_else(|| {
                MaskError::InvalidConfig(format!(
                    "hash_key_env: environment variable {var} is not set"
                ))
            })?),
            (None, None) => None,
        };
        if key.as_ref().is_some_and(|k| k.len() < MIN_KEY_BYTES) {
            return Err(MaskError::InvalidConfig(format!(
                "hash key must be at least {MIN_KEY_BYTES} bytes"
            )));
        }
        // Without a key, format-preserving output is still unlinkable to the input, just
        // not stable across restarts; `hash` exists to be stable, so it needs a key.
        let fpe_key: Vec<u8> = match &key {
            Some(k) => k.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };

        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, rc) in cfg.rules.iter().enumerate() {
            let name: Arc<str> = match &rc.name {
                Some(n) if !n.is_empty() => n.as_str().into(),
                Some(_) => return Err(invalid(&format!("#{}", i + 1), "name is empty")),
                None => format!("#{}", i + 1).into(),
            };
            if rules.iter().any(|r: &Rule| r.name == name) {
                return Err(invalid(&name, "duplicate rule name"));
            }
            rules.push(compile_rule(&name, rc, key.as_deref(), &fpe_key)?);
        }
        let configured = rules.len();
        if configured > 0 {
            if rules.iter().any(|r| &*r.name == UNATTRIBUTED_RULE) {
                return Err(invalid(
                    UNATTRIBUTED_RULE,
                    "the name is taken by the built-in rule for computed columns",
                ));
            }
            rules.push(unattributed_rule());
        }
        Ok(Policy {
            inner: Arc::new(Inner {
                rules,
                configured,
                unattributed: cfg.unattributed,
                exempt_roles: cfg.exempt_roles.clone(),
                exempt_identities: cfg.exempt_identities.clone(),
            }),
        })
    }

    /// Names of the configured rules, in config order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.configured().iter().map(|r| &*r.name)
    }

    fn configured(&self) -> &[Rule] {
        &self.inner.rules[..self.inner.configured]
    }

    /// True when no rule can apply to this subject: every result passes through and no
    /// catalog is needed.
    pub fn is_exempt(&self, who: &Subject) -> bool {
        who.in_lists(&self.inner.exempt_identities, &self.inner.exempt_roles)
            || self.configured().iter().all(|r| r.exempt_for(who))
    }

    /// Redacts what the detectors find in server text that is not a result column: the
    /// fields of errors and notices (`invalid input syntax for type integer:
    /// "123-45-6789"`, a unique violation's `Key (ssn)=(…)`), notification payloads.
    /// Such text cannot be attributed to a column, so it gets the built-in scan of
    /// `[mask] unattributed` (every detector, bare numbers included) unless that is
    /// `pass` or no rule applies to `who`. Returns the new text when anything was found.
    pub fn redact_message_text(
        &self,
        who: &Subject,
        text: &[u8],
        stats: &mut MaskStats,
    ) -> Option<Vec<u8>> {
        let inner = &*self.inner;
        if inner.unattributed == Unattributed::Pass || self.is_exempt(who) {
            return None;
        }
        // Not exempt means some rule applies, so the built-in rule exists.
        let cp = ColPlan {
            rule: inner.configured,
            kind: ValueKind::Text,
            json: false,
        };
        let mut work = Work::default();
        if decide(inner, &cp, text, &mut work, stats) == Decision::Keep {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        // Text that cannot be made safe is dropped whole rather than passed.
        Some(match write(inner, &cp, text, &mut work, &mut out) {
            Ok(()) => out,
            Err(_) => DEFAULT_REDACTION.as_bytes().to_vec(),
        })
    }

    /// The first configured rule (in config order) that masks column `column` of table
    /// `table` in any of `schemas` for `who`, for the statement-side check: `column: None`
    /// stands for any column of the table (a whole-row reference, or a column behind an
    /// alias list), so every name rule covers it.
    pub fn query_rule(
        &self,
        who: &Subject,
        schemas: &[impl AsRef<str>],
        table: &str,
        column: Option<&str>,
    ) -> Option<QueryRule<'_>> {
        if who.in_lists(&self.inner.exempt_identities, &self.inner.exempt_roles) {
            return None;
        }
        self.configured()
            .iter()
            .filter(|r| !r.exempt_for(who))
            .find(|r| match &r.selector {
                Selector::Path(p) => {
                    schemas
                        .iter()
                        .any(|s| p.schema.matches(s.as_ref().as_bytes()))
                        && p.table.matches(table.as_bytes())
                        && column.is_none_or(|c| p.column.matches(c.as_bytes()))
                }
                Selector::Name(g) => column.is_none_or(|c| g.matches(c.as_bytes())),
                Selector::Regex(re) => column.is_none_or(|c| re.is_match(c.as_bytes())),
                Selector::Unattributed => false,
            })
            .map(|r| QueryRule {
                name: &r.name,
                permits: &r.permits,
            })
    }

    /// Decides, for each column of a result set, which rule masks it.
    ///
    /// Errors: [`MaskError::NeedCatalog`] when a rule applies to `who` and some table
    /// OIDs are not cached yet (fetch them and call again); [`MaskError::Unresolvable`]
    /// when a `column` rule may cover a column whose source cannot be resolved;
    /// [`MaskError::UnsafeBinary`] when the chosen rule cannot rewrite a binary column.
    /// Both of the latter mean: do not forward this result set.
    pub fn plan(
        &self,
        who: &Subject,
        columns: &[ColumnDesc],
        catalog: &dyn TableNames,
    ) -> Result<RowPlan, MaskError> {
        let inner = &self.inner;
        let passthrough = || RowPlan::new(self.inner.clone(), vec![None; columns.len()], true);
        if self.is_exempt(who) {
            return Ok(passthrough());
        }
        let active: Vec<usize> = (0..inner.configured)
            .filter(|&i| !inner.rules[i].exempt_for(who))
            .collect();
        // Every selector needs the source: `column` rules match it, and name rules match
        // the source column's name too, so `SELECT ssn AS x` cannot dodge them.
        {
            let mut missing: Vec<u32> = columns
                .iter()
                .filter(|c| c.table_oid != 0 && !catalog.contains(c.table_oid))
                .map(|c| c.table_oid)
                .collect();
            if !missing.is_empty() {
                missing.sort_unstable();
                missing.dedup();
                return Err(MaskError::NeedCatalog { oids: missing });
            }
        }

        let mut plans = Vec::with_capacity(columns.len());
        for col in columns {
            let source = (col.table_oid != 0).then(|| catalog.lookup(col.table_oid, col.attnum));
            let source_column = match source {
                Some(Lookup::Column { column, .. }) => Some(column.as_bytes()),
                _ => None,
            };
            let mut whole = None;
            let mut scan = None;
            let mut unresolved = None;
            for &i in &active {
                let rule = &inner.rules[i];
                let hit = match &rule.selector {
                    Selector::Path(p) => match source {
                        Some(Lookup::Column {
                            schema,
                            table,
                            column,
                        }) => p.matches(schema, table, column),
                        Some(Lookup::Unresolvable | Lookup::Unknown) => {
                            unresolved.get_or_insert(i);
                            false
                        }
                        None => false,
                    },
                    Selector::Name(g) => {
                        g.matches(&col.name) || source_column.is_some_and(|c| g.matches(c))
                    }
                    Selector::Regex(r) => {
                        r.is_match(&col.name) || source_column.is_some_and(|c| r.is_match(c))
                    }
                    Selector::Unattributed => false,
                };
                if hit {
                    if rule.scan.is_none() {
                        whole = Some(i);
                        break;
                    }
                    scan.get_or_insert(i);
                }
            }
            if let (None, Some(i)) = (whole, unresolved) {
                // Attribute 0 is the whole row (`SELECT a FROM accounts a`): every
                // column in one value, masked columns included.
                if col.attnum == 0 {
                    return Err(MaskError::WholeRow {
                        rule: inner.rules[i].name.to_string(),
                        column: col.name_lossy(),
                    });
                }
                return Err(MaskError::Unresolvable {
                    rule: inner.rules[i].name.to_string(),
                    column: col.name_lossy(),
                    table_oid: col.table_oid,
                    attnum: col.attnum,
                });
            }
            let Some(i) = whole.or(scan) else {
                let computed = col.table_oid == 0 || catalog.is_derived(col.table_oid);
                let plan = match inner.unattributed {
                    _ if !computed || !may_carry_text(col.type_oid) => None,
                    Unattributed::Pass => None,
                    Unattributed::Refuse => {
                        return Err(MaskError::Unattributed {
                            column: col.name_lossy(),
                        });
                    }
                    // A binary value whose type holds no text has nothing to scan.
                    Unattributed::Scan => match value_kind(col, catalog)? {
                        None => None,
                        Some(kind) => {
                            let i = inner.configured;
                            Some(col_plan(&inner.rules[i], i, col, kind)?)
                        }
                    },
                };
                plans.push(plan);
                continue;
            };
            let kind = value_kind(col, catalog)?.unwrap_or(ValueKind::Opaque);
            plans.push(Some(col_plan(&inner.rules[i], i, col, kind)?));
        }
        let passthrough = plans.iter().all(Option::is_none);
        let mut plan = RowPlan::new(self.inner.clone(), plans, passthrough);
        if plan.columns.iter().any(|c| {
            matches!(
                c,
                Some(ColPlan {
                    kind: ValueKind::Structured(_),
                    ..
                })
            )
        }) {
            plan.types = Arc::new(catalog.known_types());
        }
        Ok(plan)
    }

    /// Plans a `COPY ... TO STDOUT` from its `CopyOutResponse` frame.
    ///
    /// `columns` are the copied relation's columns in copy order (with table OID and
    /// attnum, as a `RowDescription` of `SELECT cols FROM rel` would give them); pass
    /// `None` when the gateway cannot map them (`COPY (query) TO STDOUT`): that is
    /// allowed only when no rule applies to `who`, otherwise it fails closed with
    /// [`MaskError::CopyColumnsUnknown`]. `format` says how text-format data is written
    /// (`text` or `csv` options from the statement); it is ignored for binary COPY.
    pub fn plan_copy(
        &self,
        who: &Subject,
        columns: Option<&[ColumnDesc]>,
        catalog: &dyn TableNames,
        copy_out_response: &[u8],
        format: CopyFormat,
    ) -> Result<CopyPlan, MaskError> {
        let (binary, count) = super::copy::parse_copy_out_response(copy_out_response)?;
        let plan = match columns {
            None if self.is_exempt(who) => {
                RowPlan::new(self.inner.clone(), vec![None; count], true)
            }
            None => return Err(MaskError::CopyColumnsUnknown),
            Some(cols) => {
                if cols.len() != count {
                    return Err(MaskError::ColumnCount {
                        what: "CopyOutResponse",
                        got: count,
                        expected: cols.len(),
                    });
                }
                let cols: Vec<ColumnDesc> = cols
                    .iter()
                    .map(|c| ColumnDesc {
                        format: i16::from(binary),
                        ..c.clone()
                    })
                    .collect();
                self.plan(who, &cols, catalog)?
            }
        };
        Ok(CopyPlan::new(plan, binary, format))
    }
}

impl Rule {
    fn exempt_for(&self, who: &Subject) -> bool {
        who.in_lists(&self.exempt_identities, &self.exempt_roles)
    }
}

fn invalid(rule: &str, problem: &str) -> MaskError {
    MaskError::InvalidRule {
        rule: rule.to_owned(),
        problem: problem.to_owned(),
    }
}

fn compile_rule(
    name: &str,
    rc: &RuleConfig,
    key: Option<&str>,
    fpe_key: &[u8],
) -> Result<Rule, MaskError> {
    let bad = |p: &str| invalid(name, p);
    let selector = match (&rc.column, &rc.column_name, &rc.column_regex) {
        (Some(path), None, None) => Selector::Path(ColumnPath::parse(path).map_err(|p| bad(&p))?),
        (None, Some(glob), None) if !glob.is_empty() => Selector::Name(Glob::new(glob)),
        (None, None, Some(re)) => Selector::Regex(
            regex::bytes::RegexBuilder::new(re)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| bad(&format!("column_regex: {e}")))?,
        ),
        (None, None, None) => return Err(bad("needs one of column, column_name or column_regex")),
        _ => {
            return Err(bad(
                "set exactly one of column, column_name or column_regex",
            ));
        }
    };
    let kind = rc.strategy;
    if kind != StrategyKind::Partial
        && (rc.keep_first.is_some() || rc.keep_last.is_some() || rc.mask_char.is_some())
    {
        return Err(bad(
            "keep_first, keep_last and mask_char only apply to strategy \"partial\"",
        ));
    }
    if kind != StrategyKind::Redact && rc.text.is_some() {
        return Err(bad("text only applies to strategy \"redact\""));
    }
    if rc.detectors.is_empty() && !rc.hints.is_empty() {
        return Err(bad("hints only apply to rules with detectors"));
    }
    let strategy = match kind {
        StrategyKind::Redact => {
            let text = rc.text.as_deref().unwrap_or(DEFAULT_REDACTION);
            if text
                .bytes()
                .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
            {
                return Err(bad(
                    "text must not contain quotes, backslashes or control characters",
                ));
            }
            let all = Scanner::new(DetectorSet::all(), DetectorSet::all());
            if all.finds_any(text.as_bytes()) {
                return Err(bad("text itself looks like a sensitive value"));
            }
            Strategy::Redact(text.as_bytes().into())
        }
        StrategyKind::Partial => {
            let mask = rc.mask_char.unwrap_or('*');
            if !mask.is_ascii_graphic()
                || mask.is_ascii_alphanumeric()
                || mask == '"'
                || mask == '\\'
            {
                return Err(bad(
                    "mask_char must be printable ASCII, not a letter or digit (which could \
                     complete a valid number), a quote or a backslash",
                ));
            }
            let (keep_first, keep_last) = (rc.keep_first.unwrap_or(0), rc.keep_last.unwrap_or(0));
            if keep_first > 64 || keep_last > 64 {
                return Err(bad("keep_first/keep_last above 64 would keep whole values"));
            }
            Strategy::Partial {
                keep_first,
                keep_last,
                mask: mask as u8,
            }
        }
        StrategyKind::Hash => match key {
            Some(k) => Strategy::hash(k.as_bytes()),
            None => {
                return Err(bad(
                    "strategy \"hash\" needs [mask] hash_key or hash_key_env",
                ));
            }
        },
        StrategyKind::FormatPreserving => Strategy::format_preserving(fpe_key),
        StrategyKind::Null => Strategy::Null,
    };
    let scan = (!rc.detectors.is_empty()).then(|| {
        Scanner::new(
            rc.detectors.iter().copied().collect(),
            rc.hints.iter().copied().collect(),
        )
    });
    let rescan = Scanner::new(
        rc.detectors
            .iter()
            .copied()
            .filter(|k| *k != DetectorKind::Email)
            .collect(),
        rc.hints.iter().copied().collect(),
    );
    Ok(Rule {
        name: name.into(),
        selector,
        scan,
        rescan,
        strategy,
        exempt_roles: rc.exempt_roles.clone(),
        exempt_identities: rc.exempt_identities.clone(),
        permits: Permit::DEFAULT
            .iter()
            .chain(&rc.permit)
            .copied()
            .fold(Vec::new(), |mut v, p| {
                if !v.contains(&p) {
                    v.push(p);
                }
                v
            }),
    })
}

/// The built-in scanning rule for computed columns. Every detector, and every hint: a
/// computed value has no surrounding words to judge by, so a bare number that validates
/// as an SSN, routing or card number is taken for one. A false positive costs a redacted
/// computed value; a false negative leaks.
fn unattributed_rule() -> Rule {
    let all = DetectorSet::all();
    let checksummed: DetectorSet = DetectorKind::ALL
        .into_iter()
        .filter(|k| *k != DetectorKind::Email)
        .collect();
    Rule {
        name: UNATTRIBUTED_RULE.into(),
        selector: Selector::Unattributed,
        scan: Some(Scanner::new(all, all)),
        rescan: Scanner::new(checksummed, all),
        strategy: Strategy::Redact(DEFAULT_REDACTION.as_bytes().into()),
        exempt_roles: Vec::new(),
        exempt_identities: Vec::new(),
        permits: Vec::new(),
    }
}

/// Types whose values can hold a copied string: text-like ones, JSON, XML, records,
/// arrays of those, and user-defined types (composites, enums, domains: OIDs from
/// 16384). Numbers, dates and the like are left alone: they cannot hold separators or
/// letters, and redacting them would break the client's parsing.
fn may_carry_text(type_oid: u32) -> bool {
    const OTHERS: [u32; 17] = [
        JSONB, 142,  // xml
        2249, // record
        1009, 1015, 1014, 1003, 1002, 199, 3807, 143,
        2287, // text[], varchar[], bpchar[], name[], char[], json[], jsonb[], xml[], record[]
        3614, 3615, 3643, 3645, // tsvector, tsquery and their arrays
        1790, // refcursor
    ];
    TEXT_LIKE.contains(&type_oid) || OTHERS.contains(&type_oid) || type_oid >= 16384
}

/// How a column's bytes relate to text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// The bytes are the text.
    Text,
    /// Binary `jsonb`: a version byte (1) then the text.
    JsonbBinary,
    /// Binary of a non-text type: only `null` can touch it.
    Opaque,
    /// Binary of this type, holding text leaves (arrays, records, enums, ranges,
    /// domains): walked by [`super::binary`], each leaf masked as text.
    Structured(u32),
}

#[derive(Debug, Clone, Copy)]
struct ColPlan {
    rule: usize,
    kind: ValueKind,
    json: bool,
}

const TEXT_LIKE: [u32; 7] = [25, 1043, 1042, 19, 18, 114, 705];
const JSON: u32 = 114;
const JSONB: u32 = 3802;

/// How a column's values are read for masking; `Ok(None)`: binary values of a type that
/// holds no text (nothing for a scan to find).
fn value_kind(col: &ColumnDesc, types: &dyn TableNames) -> Result<Option<ValueKind>, MaskError> {
    if !col.is_binary() || TEXT_LIKE.contains(&col.type_oid) {
        return Ok(Some(ValueKind::Text));
    }
    if col.type_oid == JSONB {
        return Ok(Some(ValueKind::JsonbBinary));
    }
    match binary::needs(types, col.type_oid) {
        Ok(true) => match types.type_kind(col.type_oid) {
            Some(TypeKind::Unsupported) => Ok(Some(ValueKind::Opaque)),
            _ => Ok(Some(ValueKind::Structured(col.type_oid))),
        },
        Ok(false) => Ok(None),
        Err(oids) => Err(MaskError::NeedTypes { oids }),
    }
}

fn col_plan(
    rule: &Rule,
    idx: usize,
    col: &ColumnDesc,
    kind: ValueKind,
) -> Result<ColPlan, MaskError> {
    // Opaque bytes can only be dropped, and a scan cannot read them.
    if kind == ValueKind::Opaque && matches!(rule.selector, Selector::Unattributed) {
        return Err(MaskError::UnattributedBinary {
            column: col.name_lossy(),
            type_oid: col.type_oid,
        });
    }
    if kind == ValueKind::Opaque
        && (rule.strategy.kind() != StrategyKind::Null || rule.scan.is_some())
    {
        return Err(MaskError::UnsafeBinary {
            rule: rule.name.to_string(),
            column: col.name_lossy(),
            type_oid: col.type_oid,
            strategy: rule.strategy.kind().as_str(),
        });
    }
    Ok(ColPlan {
        rule: idx,
        kind,
        json: col.type_oid == JSON || col.type_oid == JSONB,
    })
}

/// Values masked, per rule and per detector, for the audit log. Keep one per session
/// (or per statement) and read it when the statement completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskStats {
    /// Rows that went through a plan that masks something.
    pub rows: u64,
    per_rule: Vec<(Arc<str>, u64)>,
    per_detector: [u64; 5],
}

impl MaskStats {
    pub fn new() -> Self {
        Self::default()
    }

    fn add_rule(&mut self, name: &Arc<str>) {
        // A handful of rules: a linear scan by pointer beats hashing the name. Names are
        // compared only when the pointer is new (stats kept across a reload).
        let at = self
            .per_rule
            .iter()
            .position(|(n, _)| Arc::ptr_eq(n, name))
            .or_else(|| self.per_rule.iter().position(|(n, _)| n == name));
        match at {
            Some(i) => self.per_rule[i].1 += 1,
            None => self.per_rule.push((name.clone(), 1)),
        }
    }

    fn add_findings(&mut self, findings: &[Finding]) {
        for f in findings {
            let i = DetectorKind::ALL
                .iter()
                .position(|k| *k == f.kind)
                .unwrap_or(0);
            self.per_detector[i] += 1;
        }
    }

    /// `(rule name, values masked)`, in first-seen order.
    pub fn per_rule(&self) -> impl Iterator<Item = (&str, u64)> {
        self.per_rule.iter().map(|(n, c)| (&**n, *c))
    }

    /// Values masked by one rule.
    pub fn for_rule(&self, name: &str) -> u64 {
        self.per_rule
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(0, |e| e.1)
    }

    /// Findings of scanning rules, per detector.
    pub fn for_detector(&self, kind: DetectorKind) -> u64 {
        DetectorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.per_detector[i])
    }

    /// Total values masked.
    pub fn total(&self) -> u64 {
        self.per_rule.iter().map(|e| e.1).sum()
    }

    /// Returns the counts and resets them.
    pub fn take(&mut self) -> MaskStats {
        std::mem::take(self)
    }
}

/// `rule=count` pairs, then `detector:kind=count` for scanning rules' findings: the
/// form the audit log records.
impl MaskStats {
    /// Values masked per rule name and per detector (`detector:card`), for audit.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> =
            self.per_rule().map(|(r, n)| (r.to_string(), n)).collect();
        for (kind, n) in DetectorKind::ALL.iter().zip(self.per_detector) {
            if n > 0 {
                out.push((format!("detector:{}", kind.as_str()), n));
            }
        }
        out
    }
}

impl std::fmt::Display for MaskStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        for (rule, n) in self.per_rule() {
            write!(f, "{sep}{rule}={n}")?;
            sep = " ";
        }
        for (kind, n) in DetectorKind::ALL.iter().zip(self.per_detector) {
            if n > 0 {
                write!(f, "{sep}detector:{}={n}", kind.as_str())?;
                sep = " ";
            }
        }
        Ok(())
    }
}

/// What happened to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Keep,
    Null,
    /// The replacement is in [`Scratch::out`].
    Replaced,
}

/// Reusable buffers for masking values.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) out: Vec<u8>,
    work: Work,
    /// A binary structured value being rewritten.
    structured: BytesMut,
}

/// Buffers that the masking of one value uses internally.
#[derive(Debug, Default, Clone)]
struct Work {
    findings: Vec<Finding>,
    tmp: Vec<u8>,
}

/// What to do with one value, decided before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Keep,
    Null,
    Write,
}

/// The masking decision for one result set: which columns are masked, by which rule.
///
/// Holds the policy by `Arc`, so it stays valid across a config reload and can be kept
/// in the session for the life of the portal or `COPY`.
#[derive(Clone)]
pub struct RowPlan {
    policy: Arc<Inner>,
    columns: Arc<[Option<ColPlan>]>,
    passthrough: bool,
    work: Work,
    /// Layouts of the non-fixed types that structured columns may hold, as the catalog
    /// knew them when the plan was made.
    types: Arc<HashMap<u32, TypeKind>>,
    /// A structured value being rewritten.
    structured: BytesMut,
    /// Masked rows are written one after another into this buffer and split off as
    /// `Bytes` sharing it, so a result costs one allocation per [`ARENA_BYTES`] of
    /// masked rows instead of one per row. A chunk lives until the last row cut from it
    /// has been sent, which the relay's output bound already limits.
    arena: BytesMut,
}

/// Size of each chunk of [`RowPlan`]'s output arena.
const ARENA_BYTES: usize = 64 * 1024;

impl std::fmt::Debug for RowPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cols: Vec<Option<&str>> = self
            .columns
            .iter()
            .map(|c| c.map(|c| &*self.policy.rules[c.rule].name))
            .collect();
        f.debug_struct("RowPlan").field("columns", &cols).finish()
    }
}

impl RowPlan {
    fn new(policy: Arc<Inner>, columns: Vec<Option<ColPlan>>, passthrough: bool) -> Self {
        RowPlan {
            policy,
            columns: columns.into(),
            passthrough,
            work: Work::default(),
            types: Arc::default(),
            structured: BytesMut::new(),
            arena: BytesMut::new(),
        }
    }

    /// Nothing to mask: forward `DataRow`s without calling [`RowPlan::mask_data_row`].
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Number of columns planned.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// The rule masking column `i`, if any.
    pub fn rule_for(&self, i: usize) -> Option<&str> {
        self.columns
            .get(i)?
            .map(|c| &*self.policy.rules[c.rule].name)
    }

    /// Masks one whole `DataRow` frame (`'D'`, length, count, fields).
    ///
    /// Returns `frame` itself (no copy) when nothing changed, otherwise one new frame
    /// built in a single pass: unchanged bytes are copied once, masked values are written
    /// straight into it and their lengths patched. Malformed frames and column-count
    /// mismatches are errors.
    pub fn mask_data_row(
        &mut self,
        frame: Bytes,
        stats: &mut MaskStats,
    ) -> Result<Bytes, MaskError> {
        let mut arena = std::mem::take(&mut self.arena);
        let out = self
            .mask_row_into(&frame, &mut arena, stats)
            .map(|changed| {
                if changed {
                    arena.split().freeze()
                } else {
                    frame
                }
            });
        self.arena = arena;
        out
    }

    /// Masks one whole `DataRow` frame into `out`: `false` (and `out` untouched) when
    /// nothing changed, `true` when the masked frame was appended to it. The relay hands
    /// in one buffer for a run of rows, so masked rows leave as one write, not a `Bytes`
    /// each. On error `out` is as it was.
    pub fn mask_row_into(
        &mut self,
        buf: &[u8],
        out: &mut BytesMut,
        stats: &mut MaskStats,
    ) -> Result<bool, MaskError> {
        const WHAT: &str = "DataRow";
        if self.passthrough {
            return Ok(false);
        }
        stats.rows += 1;
        let mut pos = data_row_start(buf, self.columns.len())?;
        // `out` gets this row once a value needs rewriting.
        let start = out.len();
        let mut rewriting = false;
        let mut copied = 0;
        let result = (|| {
            for col in self.columns.iter() {
                let field_at = pos;
                let (range, next) = read_field(buf, pos, WHAT)?;
                pos = next;
                let (Some(cp), Some((s, e))) = (col, range) else {
                    continue;
                };
                let (prefix, text) = split_value(cp, &buf[s..e])?;
                let decision = match cp.kind {
                    ValueKind::Structured(oid) => structured(
                        &self.policy,
                        cp,
                        oid,
                        &self.types,
                        text,
                        &mut self.work,
                        &mut self.structured,
                        stats,
                    )?,
                    _ => decide(&self.policy, cp, text, &mut self.work, stats),
                };
                if decision == Decision::Keep {
                    continue;
                }
                let o = &mut *out;
                if !rewriting {
                    if o.capacity() - o.len() < buf.len() + 64 {
                        o.reserve(ARENA_BYTES.max(buf.len() + 64));
                    }
                    rewriting = true;
                }
                o.extend_from_slice(&buf[copied..field_at]);
                if decision == Decision::Null {
                    o.put_i32(-1);
                } else {
                    let len_at = o.len();
                    o.put_i32(0);
                    if let ValueKind::Structured(_) = cp.kind {
                        o.extend_from_slice(&self.structured);
                    } else {
                        o.extend_from_slice(prefix);
                        write(&self.policy, cp, text, &mut self.work, o)?;
                    }
                    let len = i32::try_from(o.len() - len_at - 4)
                        .map_err(|_| MaskError::malformed(WHAT, "masked value too large"))?;
                    o[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
                }
                copied = e;
            }
            if pos != buf.len() {
                return Err(MaskError::malformed(
                    WHAT,
                    "trailing bytes after the last field",
                ));
            }
            Ok(())
        })();
        if !rewriting {
            return result.map(|()| false);
        }
        if let Err(e) = result {
            out.truncate(start);
            return Err(e);
        }
        out.extend_from_slice(&buf[copied..]);
        let Ok(len) = i32::try_from(out.len() - start - 1) else {
            out.truncate(start);
            return Err(MaskError::malformed(WHAT, "masked row too large"));
        };
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        Ok(true)
    }

    /// Masks the value of column `col` (raw wire bytes for the plan's format). The
    /// replacement, when there is one, is left in `scratch.out`.
    pub(crate) fn mask_value(
        &self,
        col: usize,
        value: &[u8],
        scratch: &mut Scratch,
        stats: &mut MaskStats,
    ) -> Result<Outcome, MaskError> {
        let Some(Some(cp)) = self.columns.get(col) else {
            return Ok(Outcome::Keep);
        };
        if let ValueKind::Structured(oid) = cp.kind {
            return Ok(
                match structured(
                    &self.policy,
                    cp,
                    oid,
                    &self.types,
                    value,
                    &mut scratch.work,
                    &mut scratch.structured,
                    stats,
                )? {
                    Decision::Keep => Outcome::Keep,
                    Decision::Null => Outcome::Null,
                    Decision::Write => {
                        scratch.out.clear();
                        scratch.out.extend_from_slice(&scratch.structured);
                        Outcome::Replaced
                    }
                },
            );
        }
        let (prefix, text) = split_value(cp, value)?;
        match decide(&self.policy, cp, text, &mut scratch.work, stats) {
            Decision::Keep => Ok(Outcome::Keep),
            Decision::Null => Ok(Outcome::Null),
            Decision::Write => {
                scratch.out.clear();
                scratch.out.extend_from_slice(prefix);
                write(&self.policy, cp, text, &mut scratch.work, &mut scratch.out)?;
                Ok(Outcome::Replaced)
            }
        }
    }
}

/// Masks the text leaves of a binary structured value into `out` (cleared first): `Keep`
/// when no leaf needed it, `Null` when the rule's strategy is `null` and some leaf did
/// (the whole value goes), `Write` with the rewritten value in `out`.
#[allow(clippy::too_many_arguments)]
fn structured(
    policy: &Inner,
    cp: &ColPlan,
    oid: u32,
    types: &HashMap<u32, TypeKind>,
    value: &[u8],
    work: &mut Work,
    out: &mut BytesMut,
    stats: &mut MaskStats,
) -> Result<Decision, MaskError> {
    out.clear();
    let mut null = false;
    let changed = binary::rewrite(
        types,
        oid,
        value,
        &mut |leaf: binary::Leaf<'_>, o: &mut BytesMut| {
            let leaf_plan = ColPlan {
                rule: cp.rule,
                kind: ValueKind::Text,
                json: leaf.json,
            };
            Ok(match decide(policy, &leaf_plan, leaf.text, work, stats) {
                Decision::Keep => binary::LeafOut::Keep,
                Decision::Null => {
                    null = true;
                    binary::LeafOut::Keep
                }
                Decision::Write => {
                    write(policy, &leaf_plan, leaf.text, work, o)?;
                    binary::LeafOut::Written
                }
            })
        },
        out,
    )?;
    Ok(if null {
        Decision::Null
    } else if changed {
        Decision::Write
    } else {
        Decision::Keep
    })
}

/// Decides what happens to a value; a scanning rule leaves its findings in `work`.
fn decide(
    policy: &Inner,
    cp: &ColPlan,
    text: &[u8],
    work: &mut Work,
    stats: &mut MaskStats,
) -> Decision {
    let rule = &policy.rules[cp.rule];
    if let Some(scanner) = &rule.scan {
        scanner.scan(text, &mut work.findings);
        if work.findings.is_empty() {
            return Decision::Keep;
        }
        stats.add_findings(&work.findings);
    }
    stats.add_rule(&rule.name);
    if matches!(rule.strategy, Strategy::Null) {
        Decision::Null
    } else {
        Decision::Write
    }
}

/// Appends the masked form of `text` to `out` after [`decide`] said `Write`.
fn write<S: Sink>(
    policy: &Inner,
    cp: &ColPlan,
    text: &[u8],
    work: &mut Work,
    out: &mut S,
) -> Result<(), MaskError> {
    let rule = &policy.rules[cp.rule];
    let unspoilable = || MaskError::Unspoilable {
        rule: rule.name.to_string(),
    };
    let Some(_) = &rule.scan else {
        if cp.json {
            work.tmp.clear();
            rule.strategy
                .write(text, &mut work.tmp)
                .map_err(|_| unspoilable())?;
            json_string(&work.tmp, out);
        } else {
            rule.strategy.write(text, out).map_err(|_| unspoilable())?;
        }
        return Ok(());
    };
    let start = out.len();
    rewrite(rule, cp.json, text, &work.findings, out).map_err(|_| unspoilable())?;
    // Replacements can meet their neighbours ("6 " before a masked card may form a
    // new valid window): re-check what is sent until nothing is found.
    if matches!(rule.strategy, Strategy::FormatPreserving(..)) {
        return super::strategy::fix_findings(&mut out[start..], &rule.rescan)
            .map_err(|_| unspoilable());
    }
    for _ in 0..4 {
        rule.rescan.scan(&out[start..], &mut work.findings);
        if work.findings.is_empty() {
            return Ok(());
        }
        work.tmp.clear();
        work.tmp.extend_from_slice(&out[start..]);
        out.truncate_to(start);
        rewrite(rule, cp.json, &work.tmp, &work.findings, out).map_err(|_| unspoilable())?;
    }
    Err(unspoilable())
}

/// Splits a wire value into the bytes kept as they are (binary `jsonb`'s version byte)
/// and the text to mask.
fn split_value<'a>(cp: &ColPlan, value: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), MaskError> {
    match cp.kind {
        ValueKind::JsonbBinary => match value.split_first() {
            Some((&1, rest)) => Ok((&value[..1], rest)),
            _ => Err(MaskError::malformed("jsonb value", "unknown jsonb version")),
        },
        _ => Ok((&value[..0], value)),
    }
}

/// Copies `text` to `out` with each finding replaced by the rule's strategy; in JSON,
/// a finding outside a string (a bare number) becomes a string.
fn rewrite<S: Sink>(
    rule: &Rule,
    json: bool,
    text: &[u8],
    findings: &[Finding],
    out: &mut S,
) -> Result<(), super::strategy::Unspoilable> {
    let mut cursor = JsonCursor::default();
    let mut last = 0;
    for f in findings {
        out.put_slice(&text[last..f.start]);
        let quote = json && !cursor.in_string_at(text, f.start);
        if quote {
            out.put_u8(b'"');
        }
        rule.strategy.write(&text[f.start..f.end], out)?;
        if quote {
            out.put_u8(b'"');
        }
        last = f.end;
    }
    out.put_slice(&text[last..]);
    Ok(())
}

/// Writes `s` as a JSON string literal.
fn json_string<S: Sink>(s: &[u8], out: &mut S) {
    out.put_u8(b'"');
    for &b in s {
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            0..=0x1f => out.put_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.put_u8(b),
        }
    }
    out.put_u8(b'"');
}

/// Tracks whether a position in JSON text is inside a string, moving forward only.
#[derive(Default)]
struct JsonCursor {
    pos: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonCursor {
    fn in_string_at(&mut self, text: &[u8], at: usize) -> bool {
        while self.pos < at.min(text.len()) {
            let b = text[self.pos];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else if b == b'"' {
                self.in_string = true;
            }
            self.pos += 1;
        }
        self.in_string
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mask::catalog::{Catalog, Layered};
    use crate::mask::wire::tests::row_description;
    use crate::mask::{parse_row_description, wire};

    pub(crate) const KEY: &str = "test-key-0123456789abcdef";

    pub(crate) fn policy(toml_rules: &str) -> Policy {
        let cfg: MaskConfig =
            toml::from_str(&format!("hash_key = \"{KEY}\"\n{toml_rules}")).unwrap();
        Policy::compile(&cfg).unwrap()
    }

    pub(crate) fn data_row(fields: &[Option<&[u8]>]) -> Bytes {
        crate::protocol::backend::data_row(fields)
    }

    pub(crate) fn fields(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
        let n = i16::from_be_bytes([frame[5], frame[6]]) as usize;
        let mut pos = wire::data_row_start(frame, n).unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let (r, next) = read_field(frame, pos, "test").unwrap();
            out.push(r.map(|(s, e)| frame[s..e].to_vec()));
            pos = next;
        }
        assert_eq!(pos, frame.len());
        out
    }

    fn col(name: &str, oid: u32, attnum: i16, type_oid: u32) -> ColumnDesc {
        ColumnDesc {
            name: name.as_bytes().to_vec(),
            table_oid: oid,
            attnum,
            type_oid,
            type_len: -1,
            type_mod: -1,
            format: 0,
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        for (n, name) in ["id", "full_name", "ssn", "card_number", "notes"]
            .iter()
            .enumerate()
        {
            c.insert_column(16384, "public", "accounts", n as i16 + 1, name);
        }
        c
    }

    const RULES: &str = r#"
        exempt_roles = ["auditor"]
        [[rule]]
        name = "ssn"
        column = "public.accounts.ssn"
        strategy = "format_preserving"
        [[rule]]
        name = "cards"
        column_name = "*card_number"
        strategy = "partial"
        keep_last = 4
        [[rule]]
        name = "notes-scan"
        column = "public.*.notes"
        detectors = ["card", "ssn", "iban", "email", "routing"]
        strategy = "redact"
        text = "[REDACTED]"
    "#;

    fn who() -> Subject {
        Subject::new("agent-7", ["reader"])
    }

    #[test]
    fn plans_by_source_not_alias() {
        let p = policy(RULES);
        let cols = [
            col("x", 16384, 3, 25),
            col("y", 16384, 2, 25),
            col("n", 0, 0, 25),
        ];
        let plan = p.plan(&who(), &cols, &catalog()).unwrap();
        assert_eq!(plan.rule_for(0), Some("ssn"));
        assert_eq!(plan.rule_for(1), None);
        assert!(!plan.is_passthrough());
    }

    #[test]
    fn needs_catalog_then_resolves() {
        let p = policy(RULES);
        let cols = [
            col("ssn", 20000, 1, 25),
            col("b", 20001, 1, 25),
            col("c", 20000, 2, 25),
        ];
        let mut cat = Catalog::new();
        let err = p.plan(&who(), &cols, &cat).unwrap_err();
        assert_eq!(err.needed_oids(), Some(&[20000, 20001][..]));
        let fill = cat.start_fill(err.needed_oids().unwrap());
        // Both came back empty (dropped tables): the session keeps the misses.
        let mut own = Catalog::new();
        own.mark_missing(&cat.complete(fill));
        let view = Layered {
            session: &own,
            shared: &cat,
        };
        let err = p.plan(&who(), &cols, &view).unwrap_err();
        assert!(
            matches!(err, MaskError::Unresolvable { ref rule, .. } if rule == "ssn"),
            "{err}"
        );
    }

    #[test]
    fn name_rules_follow_aliases_through_the_catalog() {
        let p = policy("[[rule]]\ncolumn_name = \"ssn\"\nstrategy = \"null\"\n");
        // A computed column needs no catalog.
        let plan = p
            .plan(&who(), &[col("ssn", 0, 0, 25)], &Catalog::new())
            .unwrap();
        assert_eq!(plan.rule_for(0), Some("#1"));
        // An aliased table column is resolved first, then matched by its source name.
        let aliased = [col("x", 16384, 3, 25)];
        let err = p.plan(&who(), &aliased, &Catalog::new()).unwrap_err();
        assert_eq!(err.needed_oids(), Some(&[16384][..]));
        let plan = p.plan(&who(), &aliased, &catalog()).unwrap();
        assert_eq!(plan.rule_for(0), Some("#1"));
    }

    #[test]
    fn exemptions() {
        let p = policy(RULES);
        let auditor = Subject::new("a", ["auditor"]);
        assert!(p.is_exempt(&auditor));
        let plan = p
            .plan(&auditor, &[col("ssn", 16384, 3, 25)], &Catalog::new())
            .unwrap();
        assert!(plan.is_passthrough());
        // Computed columns here test the rules themselves, not the built-in scan.
        let per_rule = policy(
            "unattributed = \"pass\"\n\
             [[rule]]\ncolumn_name = \"ssn\"\nstrategy = \"null\"\nexempt_identities = [\"agent-7\"]\n\
             [[rule]]\ncolumn_name = \"email\"\nstrategy = \"null\"\n",
        );
        let plan = per_rule
            .plan(
                &who(),
                &[col("ssn", 0, 0, 25), col("email", 0, 0, 25)],
                &Catalog::new(),
            )
            .unwrap();
        assert_eq!((plan.rule_for(0), plan.rule_for(1)), (None, Some("#2")));
    }

    fn mask_one(plan: &mut RowPlan, values: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        let row = data_row(&values.iter().map(|v| Some(*v)).collect::<Vec<_>>());
        fields(&plan.mask_data_row(row, &mut MaskStats::new()).unwrap())
    }

    #[test]
    fn computed_text_columns_are_scanned_by_default() {
        let p = policy(RULES);
        let cols = [
            col("x", 0, 0, 25),     // ssn || ''
            col("j", 0, 0, JSON),   // row_to_json(a)
            col("count", 0, 0, 20), // count(*)
            col("full_name", 16384, 2, 25),
        ];
        let mut plan = p.plan(&who(), &cols, &catalog()).unwrap();
        assert_eq!(plan.rule_for(0), Some(UNATTRIBUTED_RULE));
        assert_eq!(plan.rule_for(1), Some(UNATTRIBUTED_RULE));
        assert_eq!(plan.rule_for(2), None, "numbers pass");
        assert_eq!(plan.rule_for(3), None, "table columns no rule names pass");
        let out = mask_one(
            &mut plan,
            &[
                b"485-58-2913",
                br#"{"ssn":"485582913","card":4111111111111111,"note":"fine"}"#,
                b"485582913",
                b"Ada",
            ],
        );
        assert_eq!(out[0].as_deref(), Some(&b"[REDACTED]"[..]));
        assert_eq!(
            out[1].as_deref(),
            Some(&br#"{"ssn":"[REDACTED]","card":"[REDACTED]","note":"fine"}"#[..]),
            "bare numbers count in computed values, and the JSON stays valid"
        );
        assert_eq!(out[2].as_deref(), Some(&b"485582913"[..]));
        // lower(iban): an IBAN hint reads letters of either case.
        let out = mask_one(&mut plan, &[b"de89370400440532013000", b"{}", b"1", b"Ada"]);
        assert_eq!(out[0].as_deref(), Some(&b"[REDACTED]"[..]));
        // Nothing sensitive: the row is forwarded as it came.
        let clean = data_row(&[Some(b"hello"), Some(b"{}"), Some(b"1"), Some(b"Ada")]);
        let same = plan
            .mask_data_row(clean.clone(), &mut MaskStats::new())
            .unwrap();
        assert_eq!(same.as_ptr(), clean.as_ptr());
    }

    #[test]
    fn message_text_is_scanned_unless_exempt_or_pass() {
        let p = policy(RULES);
        let mut stats = MaskStats::new();
        let mut redact =
            |p: &Policy, who: &Subject, text: &[u8]| p.redact_message_text(who, text, &mut stats);
        let msg = br#"invalid input syntax for type integer: "485-58-2913""#;
        assert_eq!(
            redact(&p, &who(), msg).as_deref(),
            Some(&br#"invalid input syntax for type integer: "[REDACTED]""#[..])
        );
        let key = b"Key (card)=(4111111111111111) already exists.";
        assert_eq!(
            redact(&p, &who(), key).as_deref(),
            Some(&b"Key (card)=([REDACTED]) already exists."[..])
        );
        assert_eq!(redact(&p, &who(), b"relation \"x\" does not exist"), None);
        let auditor = Subject::new("a", ["auditor"]);
        assert_eq!(redact(&p, &auditor, msg), None);
        let pass = policy(&format!("unattributed = \"pass\"\n{RULES}"));
        assert_eq!(redact(&pass, &who(), msg), None);
        // Refuse mode refuses computed columns; messages are still scanned.
        let refuse = policy(&format!("unattributed = \"refuse\"\n{RULES}"));
        assert!(redact(&refuse, &who(), msg).is_some());
        assert_eq!(stats.for_rule(UNATTRIBUTED_RULE), 3);
    }

    #[test]
    fn a_whole_row_is_refused_by_name() {
        let p = policy(RULES);
        let err = p
            .plan(&who(), &[col("a", 16384, 0, 16384)], &catalog())
            .unwrap_err();
        assert!(
            matches!(err, MaskError::WholeRow { ref rule, ref column } if rule == "ssn" && column == "a"),
            "{err}"
        );
    }

    #[test]
    fn view_columns_count_as_computed() {
        let p = policy(RULES);
        let mut cat = catalog();
        cat.insert_column(30000, "public", "v_customers", 1, "tax_id");
        let cols = [col("tax_id", 30000, 1, 25)];
        assert_eq!(p.plan(&who(), &cols, &cat).unwrap().rule_for(0), None);
        cat.set_derived(30000, true);
        let plan = p.plan(&who(), &cols, &cat).unwrap();
        assert_eq!(plan.rule_for(0), Some(UNATTRIBUTED_RULE));
    }

    #[test]
    fn unattributed_refuse_and_pass() {
        let refuse = policy(&format!("unattributed = \"refuse\"\n{RULES}"));
        let err = refuse
            .plan(&who(), &[col("x", 0, 0, 25)], &catalog())
            .unwrap_err();
        assert!(
            matches!(err, MaskError::Unattributed { ref column } if column == "x"),
            "{err}"
        );
        assert!(err.to_string().contains("unattributed = \"refuse\""));
        // Numbers are not refused, nor is anything for an exempt reader.
        assert!(
            refuse
                .plan(&who(), &[col("n", 0, 0, 20)], &catalog())
                .is_ok()
        );
        let auditor = Subject::new("a", ["auditor"]);
        assert!(
            refuse
                .plan(&auditor, &[col("x", 0, 0, 25)], &catalog())
                .is_ok()
        );
        let pass = policy(&format!("unattributed = \"pass\"\n{RULES}"));
        let plan = pass
            .plan(&who(), &[col("x", 0, 0, 25)], &catalog())
            .unwrap();
        assert!(plan.is_passthrough());
    }

    #[test]
    fn no_rules_means_no_built_in_scan() {
        let p = policy("");
        assert!(p.is_exempt(&who()));
        let plan = p
            .plan(&who(), &[col("x", 0, 0, 25)], &Catalog::new())
            .unwrap();
        assert!(plan.is_passthrough());
        assert_eq!(policy(RULES).rule_names().count(), 3);
        let taken = "[[rule]]\nname = \"unattributed\"\ncolumn_name = \"x\"\nstrategy = \"null\"\n";
        let cfg: MaskConfig = toml::from_str(taken).unwrap();
        assert!(Policy::compile(&cfg).is_err());
    }

    #[test]
    fn whole_value_rule_beats_scan_rule() {
        let p = policy(
            "[[rule]]\ncolumn_name = \"*\"\ndetectors = [\"email\"]\nstrategy = \"redact\"\n\
             [[rule]]\nname = \"notes\"\ncolumn_name = \"notes\"\nstrategy = \"null\"\n",
        );
        let plan = p
            .plan(
                &who(),
                &[col("notes", 0, 0, 25), col("x", 0, 0, 25)],
                &Catalog::new(),
            )
            .unwrap();
        assert_eq!(
            (plan.rule_for(0), plan.rule_for(1)),
            (Some("notes"), Some("#1"))
        );
    }

    #[test]
    fn binary_columns() {
        let p = policy("[[rule]]\nname = \"c\"\ncolumn_name = \"c\"\nstrategy = \"redact\"\n");
        let mut int8 = col("c", 0, 0, 20);
        int8.format = 1;
        let err = p
            .plan(&who(), std::slice::from_ref(&int8), &Catalog::new())
            .unwrap_err();
        assert!(
            matches!(err, MaskError::UnsafeBinary { type_oid: 20, .. }),
            "{err}"
        );
        let mut text = col("c", 0, 0, 25);
        text.format = 1;
        assert!(p.plan(&who(), &[text], &Catalog::new()).is_ok());
        let nulls = policy("[[rule]]\ncolumn_name = \"c\"\nstrategy = \"null\"\n");
        let mut plan = nulls.plan(&who(), &[int8], &Catalog::new()).unwrap();
        let row = data_row(&[Some(&7i64.to_be_bytes())]);
        let out = plan.mask_data_row(row, &mut MaskStats::new()).unwrap();
        assert_eq!(fields(&out), [None]);
    }

    #[test]
    fn masks_a_row_and_counts() {
        let p = policy(RULES);
        let cols = [
            col("id", 16384, 1, 23),
            col("ssn", 16384, 3, 25),
            col("customer_card_number", 0, 0, 25),
            col("notes", 16384, 5, 25),
        ];
        let frame = row_description(&cols);
        let mut plan = p
            .plan(&who(), &parse_row_description(&frame).unwrap(), &catalog())
            .unwrap();
        let row = data_row(&[
            Some(b"42"),
            Some(b"123-45-6789"),
            Some(b"4111-1111-1111-1234"),
            Some(b"call jane@example.com re card 4111 1111 1111 1111, ok"),
        ]);
        let mut stats = MaskStats::new();
        let out = plan.mask_data_row(row.clone(), &mut stats).unwrap();
        let f = fields(&out);
        assert_eq!(f[0].as_deref(), Some(&b"42"[..]));
        let ssn = f[1].clone().unwrap();
        assert_eq!(ssn.len(), 11);
        assert!(ssn.starts_with(b"9"));
        assert_eq!(f[2].as_deref(), Some(&b"****-****-****-1234"[..]));
        assert_eq!(
            f[3].as_deref(),
            Some(&b"call [REDACTED] re card [REDACTED], ok"[..])
        );
        assert_eq!(stats.for_rule("ssn"), 1);
        assert_eq!(stats.for_rule("notes-scan"), 1);
        assert_eq!(stats.for_detector(DetectorKind::Card), 1);
        assert_eq!(stats.for_detector(DetectorKind::Email), 1);
        assert_eq!(stats.total(), 3);
        assert_eq!(stats.rows, 1);
        // Nothing to mask: the very same buffer comes back.
        let clean = data_row(&[Some(b"1"), None, None, Some(b"no secrets here")]);
        let same = plan.mask_data_row(clean.clone(), &mut stats).unwrap();
        assert_eq!(same.as_ptr(), clean.as_ptr());
    }

    #[test]
    fn rows_masked_into_a_shared_buffer_follow_each_other_and_errors_leave_it_alone() {
        let mut plan = policy(RULES)
            .plan(&who(), &[col("ssn", 16384, 3, 25)], &catalog())
            .unwrap();
        let secret = data_row(&[Some(b"123-45-6789")]);
        let alone = plan
            .mask_data_row(secret.clone(), &mut MaskStats::new())
            .unwrap();
        let mut out = BytesMut::from(&b"before"[..]);
        let mut stats = MaskStats::new();
        assert!(plan.mask_row_into(&secret, &mut out, &mut stats).unwrap());
        assert!(plan.mask_row_into(&secret, &mut out, &mut stats).unwrap());
        let mut expected = b"before".to_vec();
        expected.extend_from_slice(&alone);
        expected.extend_from_slice(&alone);
        assert_eq!(&out[..], &expected[..]);
        // A NULL ssn needs nothing: not written, and the caller forwards the row as is.
        let null = data_row(&[None]);
        assert!(!plan.mask_row_into(&null, &mut out, &mut stats).unwrap());
        // A row cut short fails and leaves the buffer as it was.
        for cut in 0..secret.len() {
            assert!(
                plan.mask_row_into(&secret[..cut], &mut out, &mut stats)
                    .is_err()
            );
            assert_eq!(&out[..], &expected[..], "cut at {cut}");
        }
    }

    #[test]
    fn rejects_malformed_rows_without_panicking() {
        let p = policy(RULES);
        let mut plan = p
            .plan(&who(), &[col("ssn", 16384, 3, 25)], &catalog())
            .unwrap();
        let good = data_row(&[Some(b"123-45-6789")]);
        for cut in 0..good.len() {
            let _ = plan
                .mask_data_row(good.slice(..cut), &mut MaskStats::new())
                .unwrap_err();
        }
        assert!(
            plan.mask_data_row(data_row(&[Some(b"a"), Some(b"b")]), &mut MaskStats::new())
                .is_err()
        );
        let mut lying = good.to_vec();
        lying[10] = 0x7f; // field length far past the end
        assert!(
            plan.mask_data_row(lying.into(), &mut MaskStats::new())
                .is_err()
        );
        let mut neg = good.to_vec();
        neg[7..11].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(
            plan.mask_data_row(neg.into(), &mut MaskStats::new())
                .is_err()
        );
        // A row that fails after its first value was rewritten leaves nothing behind in
        // the output buffer: the next row comes out whole and alone.
        let two = p
            .plan(
                &who(),
                &[col("ssn", 16384, 3, 25), col("ssn2", 16384, 3, 25)],
                &catalog(),
            )
            .unwrap();
        let mut plan2 = two;
        let mut broken = data_row(&[Some(b"123-45-6789"), Some(b"123-45-6789")]).to_vec();
        broken.truncate(broken.len() - 3);
        let len = (broken.len() - 1) as i32;
        broken[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(
            plan2
                .mask_data_row(broken.into(), &mut MaskStats::new())
                .is_err()
        );
        let ok = plan2
            .mask_data_row(
                data_row(&[Some(b"123-45-6789"), Some(b"123-45-6789")]),
                &mut MaskStats::new(),
            )
            .unwrap();
        let f = fields(&ok);
        assert_eq!(f.len(), 2);
        assert!(
            f.iter()
                .all(|v| v.as_deref().is_some_and(|v| v.len() == 11 && v[0] == b'9'))
        );
    }

    #[test]
    fn json_stays_json() {
        let p = policy(
            "[[rule]]\ncolumn_name = \"doc\"\ndetectors = [\"card\", \"email\"]\nstrategy = \"partial\"\nkeep_last = 4\n\
             [[rule]]\ncolumn_name = \"whole\"\nstrategy = \"redact\"\n",
        );
        let mut jsonb = col("doc", 0, 0, JSONB);
        jsonb.format = 1;
        let cols = [col("doc", 0, 0, JSON), jsonb, col("whole", 0, 0, JSON)];
        let mut plan = p.plan(&who(), &cols, &Catalog::new()).unwrap();
        let doc = br#"{"card": 4111111111111111, "note": "mail a@b.io"}"#;
        let mut bin = vec![1u8];
        bin.extend_from_slice(doc);
        let out = plan
            .mask_data_row(
                data_row(&[Some(doc), Some(&bin), Some(br#"{"a":1}"#)]),
                &mut MaskStats::new(),
            )
            .unwrap();
        let f = fields(&out);
        let expect = br#"{"card": "************1111", "note": "mail *@*.**"}"#;
        assert_eq!(f[0].as_deref(), Some(&expect[..]));
        assert_eq!(f[1].as_deref().map(|v| &v[1..]), Some(&expect[..]));
        assert_eq!(f[2].as_deref(), Some(&br#""[REDACTED]""#[..]));
        let bad_version = data_row(&[Some(doc), Some(b"\x02{}"), None]);
        assert!(
            plan.mask_data_row(bad_version, &mut MaskStats::new())
                .is_err()
        );
    }

    #[test]
    fn compile_errors_name_the_rule() {
        let cases = [
            (
                "[[rule]]\nname = \"r\"\nstrategy = \"null\"\n",
                "needs one of",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn = \"a.b\"\nstrategy = \"null\"\n",
                "schema.table.column",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_regex = \"(\"\nstrategy = \"null\"\n",
                "column_regex",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_name = \"a\"\nstrategy = \"null\"\nkeep_last = 4\n",
                "only apply",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_name = \"a\"\nstrategy = \"partial\"\nmask_char = \"0\"\n",
                "mask_char",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_name = \"a\"\nstrategy = \"redact\"\ntext = \"4111111111111111\"\n",
                "looks like",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_name = \"a\"\nstrategy = \"null\"\nhints = [\"ssn\"]\n",
                "hints",
            ),
            (
                "[[rule]]\nname = \"r\"\ncolumn_name = \"a\"\ncolumn = \"a.b.c\"\nstrategy = \"null\"\n",
                "exactly one",
            ),
        ];
        for (toml_rules, want) in cases {
            let cfg: MaskConfig = toml::from_str(toml_rules).unwrap();
            let err = Policy::compile(&cfg).unwrap_err().to_string();
            assert!(err.contains("rule r") && err.contains(want), "{err}");
        }
        let cfg: MaskConfig =
            toml::from_str("[[rule]]\nname = \"h\"\ncolumn_name = \"a\"\nstrategy = \"hash\"\n")
                .unwrap();
        assert!(
            Policy::compile(&cfg)
                .unwrap_err()
                .to_string()
                .contains("hash_key")
        );
        let cfg: MaskConfig = toml::from_str("hash_key = \"short\"\n").unwrap();
        assert!(Policy::compile(&cfg).is_err());
        let cfg: MaskConfig = toml::from_str(
            "hash_key_env = \"K\"\n[[rule]]\ncolumn_name = \"a\"\nstrategy = \"hash\"\n",
        )
        .unwrap();
        assert!(Policy::compile_with_env(&cfg, |_| None).is_err());
        assert!(Policy::compile_with_env(&cfg, |_| Some(KEY.into())).is_ok());
        let dup = "[[rule]]\nname = \"d\"\ncolumn_name = \"a\"\nstrategy = \"null\"\n\
                   [[rule]]\nname = \"d\"\ncolumn_name = \"b\"\nstrategy = \"null\"\n";
        let cfg: MaskConfig = toml::from_str(dup).unwrap();
        assert!(
            Policy::compile(&cfg)
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
    }
}
