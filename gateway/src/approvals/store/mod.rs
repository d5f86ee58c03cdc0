//! Where requests and decisions are kept: a SQLite file for one gateway, PostgreSQL
//! tables for several sharing one queue.
//!
//! Both keep a request as its JSON document plus the columns queries filter on, and
//! change it only by compare-and-set on its version: two reviewers deciding at once, or a
//! decision racing a timeout, cannot both win, on one gateway or across many. The rules
//! of a vote are [`super::model::Request::apply`], the same for every store.

pub mod postgres;
mod sqlite;

use tokio::sync::mpsc;

use super::config::{ApprovalsConfig, StoreKind};
use super::model::{NewRequest, Request};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("approvals store {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("approvals store (PostgreSQL): {0}")]
    Postgres(String),
    #[error(
        "approvals.postgres_url or approvals.postgres_url_env must be set for store = \"postgres\""
    )]
    NoUrl,
    #[error("approvals.postgres_url_env: the variable {0} is not set")]
    UrlEnvMissing(String),
    #[error("approvals store: request #{0} holds a document this gateway cannot read: {1}")]
    Corrupt(i64, String),
}

pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens (and creates, the first time) the configured store.
    pub async fn open(cfg: &ApprovalsConfig) -> Result<Store, StoreError> {
        match cfg.store {
            StoreKind::Sqlite => Ok(Store::Sqlite(SqliteStore::open(
                &cfg.state_dir.join("approvals.sqlite"),
            )?)),
            StoreKind::Postgres => {
                let url = match (&cfg.postgres_url, &cfg.postgres_url_env) {
                    (_, Some(var)) => {
                        std::env::var(var).map_err(|_| StoreError::UrlEnvMissing(var.clone()))?
                    }
                    (Some(url), None) => url.clone(),
                    (None, None) => return Err(StoreError::NoUrl),
                };
                Ok(Store::Postgres(
                    PostgresStore::open(&url, cfg.postgres_ca.as_deref()).await?,
                ))
            }
        }
    }

    /// Stores a new pending request and gives it its id.
    pub async fn insert(&mut self, new: &NewRequest) -> Result<Request, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(new),
            Store::Postgres(s) => s.insert(new).await,
        }
    }

    pub async fn get(&mut self, id: i64) -> Result<Option<Request>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(id),
            Store::Postgres(s) => s.get(id).await,
        }
    }

    /// Newest first; `pending_only` for the queue.
    pub async fn list(
        &mut self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(pending_only, limit),
            Store::Postgres(s) => s.list(pending_only, limit).await,
        }
    }

    /// Writes `next` if the stored request is still at `next.version - 1`; `false` when
    /// someone else changed it first (read it again and retry).
    pub async fn update(&mut self, next: &Request) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.update(next),
            Store::Postgres(s) => s.update(next).await,
        }
    }

    /// Grant requests, newest first; `live_only`: the pending and approved ones (an
    /// approved one may have ended since: see [`crate::grants::Grant::of`]).
    pub async fn grants(
        &mut self,
        live_only: bool,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        match self {
            Store::Sqlite(s) => s.grants(live_only, limit),
            Store::Postgres(s) => s.grants(live_only, limit).await,
        }
    }

    /// Ids of requests other gateways changed, as they change (PostgreSQL's
    /// LISTEN/NOTIFY). `None` for a store only this gateway writes.
    pub fn take_changes(&mut self) -> Option<mpsc::UnboundedReceiver<i64>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => s.take_changes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> ApprovalsConfig {
        toml::from_str(toml_text).unwrap()
    }

    async fn open_err(toml_text: &str) -> String {
        match Store::open(&cfg(toml_text)).await {
            Ok(_) => panic!("opened with {toml_text}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_postgres_store_without_a_reachable_url_says_what_to_fix() {
        assert_eq!(
            open_err("store = \"postgres\"").await,
            "approvals.postgres_url or approvals.postgres_url_env must be set for store = \"postgres\""
        );
        assert_eq!(
            open_err("store = \"postgres\"\npostgres_url_env = \"PORTCULLIS_TEST_UNSET_URL_VAR\"")
                .await,
            "approvals.postgres_url_env: the variable PORTCULLIS_TEST_UNSET_URL_VAR is not set"
        );
        let e = open_err("store = \"postgres\"\npostgres_url = \"postgres://gw:pw@127.0.0.1:1/q?sslmode=disable\"")
            .await;
        assert!(
            e.starts_with("approvals store (PostgreSQL): 127.0.0.1:1/q: cannot connect: "),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
    }
}
