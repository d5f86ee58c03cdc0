//! The shared store: tables in a PostgreSQL database that several gateways use as one
//! queue. A change is committed with a `NOTIFY`, so the gateway holding the session
//! hears of a decision made through any other gateway at once.

use tokio::sync::mpsc;

use super::StoreError;
use crate::approvals::model::{NewRequest, Request};

pub struct PostgresStore {
    changes: Option<mpsc::UnboundedReceiver<i64>>,
}

impl PostgresStore {
    pub async fn open(_url: &str) -> Result<PostgresStore, StoreError> {
        Err(StoreError::Postgres("not built yet".into()))
    }

    pub async fn insert(&mut self, _new: &NewRequest) -> Result<Request, StoreError> {
        Err(StoreError::Postgres("not built yet".into()))
    }

    pub async fn get(&mut self, _id: i64) -> Result<Option<Request>, StoreError> {
        Err(StoreError::Postgres("not built yet".into()))
    }

    pub async fn list(
        &mut self,
        _pending_only: bool,
        _limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        Err(StoreError::Postgres("not built yet".into()))
    }

    pub async fn update(&mut self, _next: &Request) -> Result<bool, StoreError> {
        Err(StoreError::Postgres("not built yet".into()))
    }

    pub fn take_changes(&mut self) -> Option<mpsc::UnboundedReceiver<i64>> {
        self.changes.take()
    }
}
