//! Approvals: a statement the policy holds waits, inside the agent's live session, until
//! a person approves, denies or edits it.
//!
//! - [`model`]: requests, votes and the rules a decision must pass (pure).
//! - [`store`]: where requests live (a SQLite file, or PostgreSQL shared by gateways).
//! - [`hub`]: the one task that changes requests, and the handle sessions and reviewers
//!   use to reach it.
//! - [`config`]: the `[approvals]` section.
//!
//! The session side (holding the frames, answering the agent) is in
//! [`crate::session::relay`]; reviewers reach the hub through [`crate::control`].

pub mod config;
pub mod explain;
pub mod hub;
pub mod model;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;

pub use config::ApprovalsConfig;
pub use hub::{ApprovalError, Approvals, Event, EventKind, Resolution, Settings, Ticket};
pub use model::{Action, NewRequest, Origin, Param, Preview, Request, Status};
