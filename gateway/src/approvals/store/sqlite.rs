//! The embedded store: one SQLite file in the gateway's state directory, written by one
//! gateway. Each change is its own transaction, durable (`synchronous = FULL`) before
//! the hub acts on it: a decision is on disk before the statement it approves runs.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::approvals::model::{NewRequest, Request};

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway    TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, id);
";

/// Added with grants; a file made before them gets it on opening.
const KIND: &str = "
ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'statement';
CREATE INDEX requests_kind ON requests (kind, id);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Sqlite {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| err(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| err(&e))?;
        let has_kind: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('requests') WHERE name = 'kind'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| err(&e))?;
        if !has_kind {
            conn.execute_batch(KIND).map_err(|e| err(&e))?;
        }
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub fn insert(&mut self, new: &NewRequest) -> Result<Request, StoreError> {
        let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut req = Request::new(0, new.clone());
        tx.execute(
            "INSERT INTO requests (gateway, status, created_ms, version, body, kind) VALUES (?1, ?2, ?3, ?4, '', ?5)",
            params![
                req.new.origin.gateway,
                req.status.as_str(),
                req.created_ms as i64,
                req.version as i64,
                if req.new.grant.is_some() { "grant" } else { "statement" }
            ],
        )
        .map_err(|e| StoreError::Sqlite {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        req.id = tx.last_insert_rowid();
        let body =
            serde_json::to_string(&req).map_err(|e| StoreError::Corrupt(req.id, e.to_string()))?;
        tx.execute(
            "UPDATE requests SET body = ?1 WHERE id = ?2",
            params![body, req.id],
        )
        .and_then(|_| tx.commit())
        .map_err(|e| StoreError::Sqlite {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(req)
    }

    pub fn get(&mut self, id: i64) -> Result<Option<Request>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        body.map(|b| decode(id, &b)).transpose()
    }

    pub fn list(&mut self, pending_only: bool, limit: usize) -> Result<Vec<Request>, StoreError> {
        let sql = if pending_only {
            "SELECT id, body FROM requests WHERE status = 'pending' ORDER BY id DESC LIMIT ?1"
        } else {
            "SELECT id, body FROM requests ORDER BY id DESC LIMIT ?1"
        };
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| StoreError::Sqlite {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| StoreError::Sqlite {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })?;
        rows.iter().map(|(id, b)| decode(*id, b)).collect()
    }

    /// Grant requests, newest first; `live_only`: pending or approved ones.
    pub fn grants(&mut self, live_only: bool, limit: usize) -> Result<Vec<Request>, StoreError> {
        let sql = if live_only {
            "SELECT id, body FROM requests WHERE kind = 'grant' AND status IN ('pending', 'approved') ORDER BY id DESC LIMIT ?1"
        } else {
            "SELECT id, body FROM requests WHERE kind = 'grant' ORDER BY id DESC LIMIT ?1"
        };
        let rows = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.query_map([limit as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            })
            .map_err(|e| self.err(e))?;
        rows.iter().map(|(id, b)| decode(*id, b)).collect()
    }

    pub fn update(&mut self, next: &Request) -> Result<bool, StoreError> {
        let body =
            serde_json::to_string(next).map_err(|e| StoreError::Corrupt(next.id, e.to_string()))?;
        let n = self
            .conn
            .execute(
                "UPDATE requests SET status = ?1, version = ?2, body = ?3 WHERE id = ?4 AND version = ?5",
                params![
                    next.column_status(),
                    next.version as i64,
                    body,
                    next.id,
                    next.version as i64 - 1
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}

fn decode(id: i64, body: &str) -> Result<Request, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::{Action, Status};

    fn new() -> NewRequest {
        NewRequest::example("DROP TABLE t", 1, 5)
    }

    #[test]
    fn requests_survive_reopening_and_updates_are_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let mut s = SqliteStore::open(&path).unwrap();
        let r1 = s.insert(&new()).unwrap();
        let r2 = s.insert(&new()).unwrap();
        assert!(r2.id > r1.id);
        let approved = r1
            .apply("alice", &Action::Approve { reason: None }, None)
            .unwrap();
        assert!(s.update(&approved).unwrap());
        // A second writer that read the same version loses.
        let late = r1
            .apply(
                "bob",
                &Action::Deny {
                    reason: "no".into(),
                },
                None,
            )
            .unwrap();
        assert!(!s.update(&late).unwrap());
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get(r1.id).unwrap().unwrap().status, Status::Approved);
        let pending = s.list(true, 10).unwrap();
        assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), [r2.id]);
        assert_eq!(s.list(false, 10).unwrap().len(), 2);
        assert!(s.get(999).unwrap().is_none());
    }
}
