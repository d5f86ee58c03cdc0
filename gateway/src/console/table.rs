//! A console answer: typed columns and rows, built from the gateway's state without any
//! I/O. [`super::server`] turns it into `RowDescription` and `DataRow`s.

use super::command::Show;

/// A column's type: what `RowDescription` announces and the values carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Text,
    }
}

const fn int(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Int,
    }
}

const fn boolean(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Bool,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(Some(s.to_owned()))
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(Some(s))
    }
}

impl From<Option<String>> for Cell {
    fn from(s: Option<String>) -> Cell {
        Cell::Text(s)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Int(Some(i64::try_from(n).unwrap_or(i64::MAX)))
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(Some(n))
    }
}

impl From<Option<u64>> for Cell {
    fn from(n: Option<u64>) -> Cell {
        Cell::Int(n.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Bool(Some(b))
    }
}

/// An answer: the columns of its command and its rows (each as long as the columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: &'static [Column],
    pub rows: Vec<Vec<Cell>>,
    /// The `CommandComplete` tag (`SHOW`, `RELOAD`, …); the row count follows it.
    pub tag: &'static str,
}

impl Table {
    pub fn new(columns: &'static [Column], tag: &'static str) -> Table {
        Table {
            columns,
            rows: Vec::new(),
            tag,
        }
    }

    /// Adds a row; cells past the columns are dropped, missing ones are NULL, so a row
    /// never disagrees with its description on the wire.
    pub fn push(&mut self, cells: Vec<Cell>) {
        let mut row: Vec<Cell> = cells.into_iter().take(self.columns.len()).collect();
        for c in &self.columns[row.len()..] {
            row.push(match c.kind {
                Kind::Text => Cell::Text(None),
                Kind::Int => Cell::Int(None),
                Kind::Bool => Cell::Bool(None),
            });
        }
        self.rows.push(row);
    }
}

pub const HELP: &[Column] = &[text("command"), text("description")];

pub const SESSIONS: &[Column] = &[
    text("id"),
    text("identity"),
    text("database"),
    text("client_addr"),
    int("client_port"),
    text("application_name"),
    text("tls"),
    text("engine"),
    text("worker"),
    text("upstream_role"),
    text("started_at"),
    text("state"),
    int("statements"),
    int("bytes_to_server"),
    int("bytes_to_client"),
];

pub const STATS: &[Column] = &[
    text("started_at"),
    int("uptime_secs"),
    text("state"),
    text("engine"),
    int("workers"),
    int("sessions_open"),
    int("sessions_total"),
    int("statements"),
    int("allowed"),
    int("denied"),
    int("held"),
    int("bytes_to_server"),
    int("bytes_to_client"),
    int("identities"),
    int("mask_rules"),
    int("policy_rules"),
    text("last_reload"),
    text("last_reload_by"),
    text("audit"),
    int("audit_records"),
    int("audit_lost"),
];

pub const POOLS: &[Column] = &[
    text("database"),
    text("role"),
    int("in_use"),
    int("idle"),
    int("waiting"),
    int("opened"),
    int("reused"),
    int("closed"),
    int("timeouts"),
];

pub const APPROVALS: &[Column] = &[
    int("id"),
    text("kind"),
    text("status"),
    text("identity"),
    text("database"),
    text("source"),
    text("rule"),
    int("approvals"),
    int("approvals_needed"),
    int("waited_secs"),
    int("timeout_secs"),
    text("statement"),
    text("digest"),
];

pub const GRANTS: &[Column] = &[
    int("id"),
    text("identity"),
    text("status"),
    text("roles"),
    text("databases"),
    text("classes"),
    text("tables"),
    int("duration_secs"),
    text("starts_at"),
    text("ends_at"),
    text("requested_by"),
    text("approved_by"),
    text("reason"),
];

pub const CONFIG: &[Column] = &[text("key"), text("value"), text("source")];

pub const RELOAD: &[Column] = &[boolean("ok"), text("outcome"), text("needs_restart")];

pub const DECISION: &[Column] = &[
    int("id"),
    text("status"),
    int("approvals"),
    int("approvals_needed"),
    text("reviewer"),
    text("outcome"),
];

/// The columns a command answers with, known before it runs (for `Describe`).
pub fn columns_of(cmd: &super::command::Command) -> &'static [Column] {
    use super::command::Command;
    match cmd {
        Command::Show(s) => match s {
            Show::Help => HELP,
            Show::Sessions => SESSIONS,
            Show::Stats => STATS,
            Show::Pools => POOLS,
            Show::Approvals => APPROVALS,
            Show::Grants => GRANTS,
            Show::Config => CONFIG,
        },
        Command::Reload => RELOAD,
        Command::Approve { .. } | Command::Deny { .. } => DECISION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_always_match_their_columns() {
        let mut t = Table::new(POOLS, "SHOW");
        t.push(vec!["app".into()]);
        t.push(vec![Cell::from(1u64); 20]);
        assert!(t.rows.iter().all(|r| r.len() == POOLS.len()));
        assert_eq!(t.rows[0][2], Cell::Int(None));
    }
}
