//! Prepared statements and portals of one session, by name, with what later stages
//! need: the SQL, declared parameter types, the `Bind` that made a portal and the
//! result columns (`RowDescription`) once the server has described them.

use std::collections::HashMap;

use bytes::Bytes;

/// A statement created by `Parse`.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub sql: Bytes,
    pub param_types: Vec<u32>,
    /// The server's `RowDescription` for it (formats not yet known), or `Some(None)` for
    /// `NoData`; `None` until described.
    pub columns: Option<Option<Bytes>>,
}

/// A portal created by `Bind`.
#[derive(Debug, Clone, Default)]
pub struct Portal {
    pub statement: Bytes,
    pub sql: Bytes,
    /// The whole `Bind` frame: parameters stay as received, no copy.
    pub bind: Bytes,
    pub result_formats: Vec<i16>,
    /// The server's `RowDescription` for this portal (formats included), `Some(None)`
    /// for `NoData`, `None` until described.
    pub columns: Option<Option<Bytes>>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    statements: HashMap<Bytes, Statement>,
    portals: HashMap<Bytes, Portal>,
}

impl Tracker {
    pub fn parse(&mut self, name: Bytes, sql: Bytes, param_types: Vec<u32>) {
        self.statements.insert(
            name,
            Statement {
                sql,
                param_types,
                columns: None,
            },
        );
    }

    pub fn bind(&mut self, portal: Bytes, statement: Bytes, bind: Bytes, result_formats: Vec<i16>) {
        let sql = self
            .statements
            .get(&statement)
            .map(|s| s.sql.clone())
            .unwrap_or_default();
        self.portals.insert(
            portal,
            Portal {
                statement,
                sql,
                bind,
                result_formats,
                columns: None,
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

    /// Ends the transaction's portals (they do not outlive it, except holdable cursors,
    /// which are not portals of the extended protocol).
    pub fn end_transaction(&mut self) {
        self.portals.clear();
    }

    pub fn statement(&self, name: &[u8]) -> Option<&Statement> {
        self.statements.get(name)
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }

    pub fn describe_statement(&mut self, name: &[u8], columns: Option<Bytes>) {
        if let Some(s) = self.statements.get_mut(name) {
            s.columns = Some(columns);
        }
    }

    pub fn describe_portal(&mut self, name: &[u8], columns: Option<Bytes>) {
        if let Some(p) = self.portals.get_mut(name) {
            p.columns = Some(columns);
        }
    }

    /// Whether executing this portal would return rows whose columns the gateway does
    /// not know yet (so it must ask the server with a `Describe`).
    pub fn portal_needs_describe(&self, name: &[u8]) -> bool {
        match self.portals.get(name) {
            Some(p) => p.columns.is_none(),
            None => false,
        }
    }

    pub fn statements_len(&self) -> usize {
        self.statements.len()
    }
}
