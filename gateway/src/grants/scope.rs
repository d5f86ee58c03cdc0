//! Whether an active grant covers a statement: its database, its class, and every
//! relation it touches. Pure, on the statement's reading.
//!
//! A grant widens what an agent may do, so its scope fails closed: a grant limited to
//! tables covers a statement only when the gateway knows every relation the statement
//! touches and each matches a table glob. A statement that touches no relation, whose
//! reading is opaque (`DO`, `CALL`, an unknown function) or that calls a function not
//! known to be free of side effects could reach other tables, so it is judged without
//! the grant.

use crate::analysis::{Class, Property, Statement, functions};
use crate::policy::Resolver;
use crate::policy::rules::NameGlob;

use super::model::{GrantSpec, class_named};

/// A grant's scope, compiled once.
#[derive(Debug, Clone)]
pub struct Scope {
    databases: Vec<String>,
    classes: Vec<Class>,
    tables: Vec<NameGlob>,
    readable: bool,
}

impl Scope {
    /// The scope of a spec. One whose class or table entry cannot be read (a document
    /// from another version) covers nothing rather than more than it said.
    pub fn of(spec: &GrantSpec) -> Scope {
        let tables: Vec<Option<NameGlob>> = spec
            .tables
            .iter()
            .map(|t| NameGlob::parse(t).ok())
            .collect();
        let classes: Vec<Option<Class>> = spec.classes.iter().map(|c| class_named(c)).collect();
        Scope {
            databases: spec.databases.clone(),
            readable: tables.iter().all(Option::is_some) && classes.iter().all(Option::is_some),
            classes: classes.into_iter().flatten().collect(),
            tables: tables.into_iter().flatten().collect(),
        }
    }

    pub fn covers_database(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }

    /// Whether the grant applies to `stmt` (its database was checked when the session
    /// took the grant).
    pub fn covers(&self, stmt: &Statement, res: &Resolver<'_>) -> bool {
        if !self.readable {
            return false;
        }
        if !self.classes.is_empty() && !self.classes.contains(&stmt.class) {
            return false;
        }
        if self.tables.is_empty() {
            return true;
        }
        if stmt.class == Class::Unknown
            || stmt.has(Property::Opaque)
            || stmt.relations.is_empty()
            || stmt
                .functions
                .iter()
                .any(|f| !functions::known_safe(f.schema.as_deref(), &f.name))
        {
            return false;
        }
        // Names resolve as the policy's allow rules read them: where they most likely
        // are on the session's search_path.
        stmt.relations.iter().all(|r| {
            let schemas = [res.primary(r.schema.as_deref(), &r.name)];
            self.tables.iter().any(|g| g.matches(&schemas, &r.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::analyze;

    fn spec(classes: &[&str], tables: &[&str]) -> GrantSpec {
        GrantSpec {
            roles: vec!["writer".into()],
            databases: vec!["bank".into()],
            classes: classes.iter().map(|s| s.to_string()).collect(),
            tables: tables.iter().map(|s| s.to_string()).collect(),
            reason: "r".into(),
            requested_by: "ops".into(),
            duration_secs: 60,
        }
    }

    fn covers(scope: &Scope, sql: &str, path: &[&str]) -> bool {
        let a = analyze(sql).unwrap();
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let res = Resolver {
            search_path: &path,
            user: "gw",
            also: &[],
        };
        a.statements.iter().all(|s| scope.covers(s, &res))
    }

    #[test]
    fn a_table_grant_covers_its_table_and_nothing_beside_it() {
        let s = Scope::of(&spec(&["write"], &["public.accounts"]));
        let path = ["$user", "public"];
        assert!(covers(
            &s,
            "UPDATE accounts SET balance = 0 WHERE id = 1",
            &path
        ));
        assert!(covers(
            &s,
            "UPDATE public.accounts SET balance = 0 WHERE id = 1",
            &path
        ));
        assert!(!covers(
            &s,
            "UPDATE ledger SET amount = 0 WHERE id = 1",
            &path
        ));
        // Touching both: the other table is outside the grant.
        assert!(!covers(
            &s,
            "UPDATE accounts SET balance = 0 WHERE id IN (SELECT id FROM ledger)",
            &path
        ));
        assert!(!covers(
            &s,
            "WITH d AS (DELETE FROM ledger RETURNING id) UPDATE accounts SET balance = 0 WHERE id IN (SELECT id FROM d)",
            &path
        ));
        // Another schema first on the path: `accounts` is not public.accounts.
        assert!(!covers(
            &s,
            "UPDATE accounts SET balance = 0 WHERE id = 1",
            &["evil", "public"]
        ));
        // Wrong class, no relation, opaque, unknown functions.
        assert!(!covers(&s, "SELECT * FROM accounts", &path));
        let any_class = Scope::of(&spec(&[], &["public.accounts"]));
        assert!(covers(&any_class, "SELECT * FROM accounts", &path));
        assert!(!covers(&any_class, "SELECT 1", &path));
        assert!(!covers(
            &any_class,
            "DO $$ BEGIN DELETE FROM ledger; END $$",
            &path
        ));
        assert!(!covers(
            &any_class,
            "UPDATE accounts SET balance = my_func() WHERE id = 1",
            &path
        ));
        assert!(covers(
            &any_class,
            "UPDATE accounts SET owner = lower(owner) WHERE id = 1",
            &path
        ));
    }

    #[test]
    fn globs_classes_and_databases() {
        let s = Scope::of(&spec(&["write", "read"], &["public.*"]));
        let path = ["public"];
        assert!(covers(
            &s,
            "INSERT INTO ledger SELECT * FROM accounts",
            &path
        ));
        assert!(!covers(&s, "INSERT INTO audit.log VALUES (1)", &path));
        assert!(!covers(&s, "DROP TABLE ledger", &path));
        assert!(s.covers_database("bank"));
        assert!(!s.covers_database("other"));
        let anything = Scope::of(&spec(&[], &[]));
        assert!(covers(&anything, "DO $$ BEGIN END $$", &path));
    }
}
