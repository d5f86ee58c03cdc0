//! Just-in-time grants: extra roles for one identity, for a stated reason, approved by a
//! person, limited in scope and time.
//!
//! A grant is asked for with `portcullis grants request` (or `POST /api/grants`) and
//! decided like a held statement: it is an approval request whose statement text
//! describes the grant, so reviewers, the number of approvers, the ban on self-approval,
//! notifications, timeouts and the shared store all come from [`crate::approvals`].
//! Once approved it is active from the approval for its duration, until it expires or
//! is revoked (`portcullis grants revoke`).
//!
//! - [`model`]: what a grant is and where it stands (pure).
//! - [`scope`]: whether a grant covers a statement (pure).
//! - [`registry`]: the active grants, published by the hub and read by every session
//!   at every statement (an atomic load when nothing changed).
//!
//! The policy side is in [`crate::policy::gate`]: the subject a statement is judged for
//! is the identity's standing roles plus the roles of the grants that cover it.

pub mod model;
pub mod registry;
pub mod scope;

pub use model::{EndKind, Grant, GrantEnd, GrantSpec, GrantStatus, parse_duration};
pub use registry::{Registry, SessionGrants, Transition};

/// Why a grant cannot be asked for or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("{0:?} is not a duration (write 90s, 30m, 2h or 1h30m)")]
    Duration(String),
    #[error("the grant is not valid: {0}")]
    Invalid(String),
    #[error("there is no grant #{0}")]
    NotFound(i64),
    #[error("grant #{id} is {status}; only an active or pending grant can be revoked")]
    NotRevocable { id: i64, status: &'static str },
}
