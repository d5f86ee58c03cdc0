//! Prepared statements and portals of one session, by name, with what later stages
//! need: the SQL, declared parameter types, the `Bind` that made a portal and the
//! result columns (`RowDescription`) once the server has described them.
//!
//! Names are reused all the time (the unnamed statement and portal above all, and a
//! pipelining client binds the next portal before the server has answered for the last),
//! so a description is not stored under a name: each `Parse` and `Bind` gets a fresh
//! [`Described`] slot, and the relay's queue entries hold the slot of the binding they
//! belong to. A late answer fills the right slot whatever the client did since.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::hooks::{Effects, Hold};
use crate::audit::StatementFacts;

/// Bound on tracked names: past it, stale entries go (a later `Execute` of a dropped
/// portal is then treated as undescribed, which fails closed where it matters).
const MAX_TRACKED: usize = 10_000;

/// What the server said a statement or portal returns: `None` until it answers, then
/// `Some(Some(RowDescription frame))` or `Some(None)` for `NoData`.
pub type Described = Rc<RefCell<Option<Option<Bytes>>>>;

/// A statement created by `Parse`.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub sql: Bytes,
    pub param_types: Vec<u32>,
    /// Formats in the server's description are not yet known (they come with `Bind`).
    pub described: Described,
    /// The policy holds it: an `Execute` of a portal bound to it waits for a person.
    pub hold: Option<Rc<Hold>>,
    /// What the policy knew, for the audit record of each `Execute` (audit on only).
    pub facts: Option<Rc<StatementFacts>>,
    /// What running it can leave behind, when a stage may refuse its result.
    pub effects: Effects,
}

/// A portal created by `Bind`.
#[derive(Debug, Clone, Default)]
pub struct Portal {
    pub statement: Bytes,
    pub sql: Bytes,
    /// The whole `Bind` frame: parameters stay as received, no copy.
    pub bind: Bytes,
    pub result_formats: Vec<i16>,
    pub described: Described,
    /// A `Describe` for this binding is on its way (the client's or the gateway's).
    pub describe_sent: bool,
    /// Its statement's hold.
    pub hold: Option<Rc<Hold>>,
    /// The statement's declared parameter types (to prepare an edit of it).
    pub param_types: Vec<u32>,
    pub facts: Option<Rc<StatementFacts>>,
    pub effects: Effects,
}

#[derive(Debug, Default)]
pub struct Tracker {
    statements: HashMap<Bytes, Statement>,
    portals: HashMap<Bytes, Portal>,
}

impl Tracker {
    pub fn parse(
        &mut self,
        name: Bytes,
        sql: Bytes,
        param_types: Vec<u32>,
        hold: Option<Hold>,
        facts: Option<Rc<StatementFacts>>,
        effects: Effects,
    ) {
        if self.statements.len() >= MAX_TRACKED {
            self.statements.clear();
        }
        self.statements.insert(
            name,
            Statement {
                sql,
                param_types,
                described: Described::default(),
                hold: hold.map(Rc::new),
                facts,
                effects,
            },
        );
    }

    pub fn bind(&mut self, portal: Bytes, statement: Bytes, bind: Bytes, result_formats: Vec<i16>) {
        if self.portals.len() >= MAX_TRACKED {
            self.portals.clear();
        }
        let (sql, hold, param_types, facts, effects) = self
            .statements
            .get(&statement)
            .map(|s| {
                // Types are kept only where an edit may need them: no copy per Bind.
                let types = if s.hold.is_some() {
                    s.param_types.clone()
                } else {
                    Vec::new()
                };
                (
                    s.sql.clone(),
                    s.hold.clone(),
                    types,
                    s.facts.clone(),
                    s.effects,
                )
            })
            .unwrap_or_default();
        self.portals.insert(
            portal,
            Portal {
                statement,
                sql,
                bind,
                result_formats,
                described: Described::default(),
                describe_sent: false,
                hold,
                param_types,
                facts,
                effects,
            },
        );
    }

    /// A simple `Query` destroys the unnamed statement and portal, as PostgreSQL does.
    pub fn simple_query(&mut self) {
        self.statements.remove(&b""[..]);
        self.portals.remove(&b""[..]);
    }

    pub fn close_statement(&mut self, name: &[u8]) {
        self.statements.remove(name);
    }

    pub fn close_portal(&mut self, name: &[u8]) {
        self.portals.remove(name);
    }

    pub fn statement(&self, name: &[u8]) -> Option<&Statement> {
        self.statements.get(name)
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }

    pub fn portal_mut(&mut self, name: &[u8]) -> Option<&mut Portal> {
        self.portals.get_mut(name)
    }
}
