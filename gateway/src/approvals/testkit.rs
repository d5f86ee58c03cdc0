//! What the approvals, admin-socket, HTTP and webhook tests share: a real hub over a SQLite store in a temporary
//! directory, and the request an agent's held statement would make.

use std::sync::Arc;
use std::time::Duration;

use crate::approvals::store::{SqliteStore, Store};
use crate::approvals::{Approvals, NewRequest, Settings};

pub fn settings(page_url: Option<&str>) -> Settings {
    Settings {
        gateway: "g1".into(),
        notice_interval: Duration::from_secs(10),
        default_timeout: Duration::from_secs(60),
        preview_max: Duration::from_secs(60),
        recent: 3,
        page_url: page_url.map(str::to_owned),
    }
}

pub fn store(dir: &std::path::Path) -> Store {
    Store::Sqlite(SqliteStore::open(&dir.join("approvals.sqlite")).unwrap())
}

/// A running hub; keep the directory alive as long as it.
pub fn hub(dir: &std::path::Path, page_url: Option<&str>) -> Arc<Approvals> {
    let (approvals, hub) = Approvals::new(settings(page_url), store(dir));
    tokio::spawn(hub.run());
    Arc::new(approvals)
}

/// `DROP TABLE accounts` from the `agent` identity, needing `approvers` approvals.
pub fn held(approvers: u32) -> NewRequest {
    NewRequest {
        rule: Some("hold-ddl".into()),
        message: "DDL needs a reviewer".into(),
        recent: vec!["SELECT count(*) FROM accounts".into()],
        ..NewRequest::example("DROP TABLE accounts", approvers, 60)
    }
}
