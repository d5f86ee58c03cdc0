//! Masking that SQL cannot read around: a column under a masking rule may reach the agent
//! only as itself, where the result masking rewrites it.
//!
//! By default such a column may be selected, grouped by, counted and compared for equality
//! with another column. Any other use is refused before the statement runs, since it
//! turns the value into something the result masking cannot recognise or into an oracle:
//! `translate(ssn, ...)`, `substr(card, 1, 8)`, `ssn::text`, `WHERE ssn LIKE '485%'`,
//! `ORDER BY ssn`, and a statement that stores what it reads (`CREATE TABLE AS`,
//! `INSERT ... SELECT`, `UPDATE ... SET x = ssn`, a view). A masking rule widens this with
//! `permit`. Views and functions the gateway cannot see into keep the result-side scan as
//! the second line.

use crate::analysis::{Property, Statement, Use};
use crate::mask::{Permit, Policy, Subject};

use super::rules::Resolver;

/// A refused use of a masked column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedUse {
    /// The column as written (`a.ssn`), and the table column it stands for.
    pub column: String,
    pub source: String,
    pub rule: String,
    pub permit: Permit,
}

impl MaskedUse {
    pub fn what(&self) -> &'static str {
        match self.permit {
            Permit::Compare => "compares it with a value",
            Permit::Pattern => "matches it against a pattern",
            Permit::Order => "sorts by it",
            Permit::Function => "passes it to a function, operator or cast",
            Permit::Write => "stores what it reads from it",
            Permit::Group => "groups by it",
            Permit::Count => "counts it",
            Permit::Join => "joins on it",
        }
    }
}

/// Statistics views quote sampled column values (`most_common_vals`).
const STATISTICS: [&str; 4] = [
    "pg_stats",
    "pg_statistic",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
];

fn permit_for(usage: Use, persists: bool, returning: bool) -> Option<Permit> {
    let p = match usage {
        Use::Output if returning || !persists => return None,
        Use::Output => Permit::Write,
        Use::Group => Permit::Group,
        Use::Count => Permit::Count,
        Use::Join => Permit::Join,
        Use::Compare => Permit::Compare,
        Use::Pattern => Permit::Pattern,
        Use::Order => Permit::Order,
        Use::Function => Permit::Function,
    };
    // Grouping, counting and joining are reads; in a statement that stores what it
    // reads they feed the stored rows.
    Some(match p {
        Permit::Group | Permit::Count | Permit::Join if persists && !returning => Permit::Write,
        p => p,
    })
}

/// The first use in `stmt` that masking rules forbid for `who`, if any. Returns
/// `Err(relation)` for a read of a statistics view while any rule applies.
pub fn check(
    stmt: &Statement,
    mask: &Policy,
    who: &Subject,
    res: &Resolver,
) -> Result<(), MaskedCheck> {
    if mask.is_exempt(who) {
        return Ok(());
    }
    if let Some(r) = stmt.relations.iter().find(|r| {
        STATISTICS.contains(&r.name.as_str())
            && r.schema.as_deref().is_none_or(|s| s == "pg_catalog")
    }) {
        return Err(MaskedCheck::Statistics(r.name.clone()));
    }
    let persists = stmt.has(Property::Persists);
    for u in &stmt.columns {
        let Some(permit) = permit_for(u.usage, persists, u.returning) else {
            continue;
        };
        for src in &u.sources {
            let rel = &stmt.relations[src.relation];
            let schemas = res.candidates(rel.schema.as_deref());
            let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
            let Some(rule) = mask.query_rule(who, &schemas, &rel.name, src.column.as_deref())
            else {
                continue;
            };
            // Joining a masked column is allowed with a column the same rule masks (keys
            // joined across tables); with any other column it is an equality oracle the
            // agent may control (a column it can write, a table it filled with guesses).
            let permit =
                if permit == Permit::Join && !joined_within(stmt, u, rule.name, mask, who, res) {
                    Permit::Compare
                } else {
                    permit
                };
            if rule.permits.contains(&permit) {
                continue;
            }
            return Err(MaskedCheck::Use(MaskedUse {
                column: u.name.clone(),
                source: match &src.column {
                    Some(c) => format!("{rel}.{c}"),
                    None => format!("{rel}.* (a whole row, or a column behind an alias list)"),
                },
                rule: rule.name.to_owned(),
                permit,
            }));
        }
    }
    Ok(())
}

/// Whether `stmt` uses any column under a masking rule for `who` (its bound values are
/// then never kept raw in the audit log).
pub fn touches(stmt: &Statement, mask: &Policy, who: &Subject, res: &Resolver) -> bool {
    if mask.is_exempt(who) {
        return false;
    }
    stmt.columns.iter().any(|u| {
        u.sources.iter().any(|src| {
            let rel = &stmt.relations[src.relation];
            let schemas = res.candidates(rel.schema.as_deref());
            mask.query_rule(who, &schemas, &rel.name, src.column.as_deref())
                .is_some()
        })
    })
}

/// Whether every table column on the other side of `u`'s join equality is masked by rule
/// `rule` too.
fn joined_within(
    stmt: &Statement,
    u: &crate::analysis::ColumnUse,
    rule: &str,
    mask: &Policy,
    who: &Subject,
    res: &Resolver,
) -> bool {
    let Some(other) = u.partner.and_then(|p| stmt.columns.get(p)) else {
        return false;
    };
    !other.sources.is_empty()
        && other.sources.iter().all(|src| {
            let rel = &stmt.relations[src.relation];
            let schemas = res.candidates(rel.schema.as_deref());
            mask.query_rule(who, &schemas, &rel.name, src.column.as_deref())
                .is_some_and(|r| r.name == rule)
        })
}

/// Why the masking check refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedCheck {
    Use(MaskedUse),
    Statistics(String),
}
