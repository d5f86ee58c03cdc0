//! The control plane: everything an operator or a reviewer talks to, served on the
//! control thread and never on the data-path workers.
//!
//! - [`admin`]: the admin socket (`portcullis reload`, `status`, `approvals ...`).
//! - [`admin_approvals`]: the reviewer's commands on it, and how the CLI prints them.
//! - [`admin_grants`]: the operator's grant commands on it (`portcullis grants ...`).
//! - [`http`]: the reviewers' HTTP API and page (when `[approvals.http]` is set).
//! - [`metrics`]: `/metrics`, `/healthz` and `/readyz` (when `[metrics]` is set).
//! - [`webhook`]: notifications of held statements and decisions
//!   (`[[approvals.webhook]]`).

pub mod admin;
pub mod admin_approvals;
pub mod admin_grants;
pub mod http;
pub mod metrics;
pub mod webhook;
