//! Portcullis: a PostgreSQL gateway between AI agents and production databases.
//!
//! The crate is split so that everything that understands bytes is sans-IO and
//! everything that moves bytes is thin:
//!
//! - [`protocol`]: wire framing and the few message parsers/builders the gateway needs.
//! - [`session`]: the sans-IO state machines (client handshake, upstream handshake,
//!   the relay core that tracks statements and can refuse one).
//! - [`auth`]: agent identities and SCRAM-SHA-256 on the server side.
//! - [`analysis`]: what a statement will do, read with PostgreSQL 15's own grammar.
//! - [`policy`]: the `[policy]` rules, built-in denials and masked-column checks that
//!   decide on each statement before it is forwarded, and the per-session gate.
//! - [`mask`]: column and value masking over `DataRow`s and `COPY` data.
//! - [`engine`]: the two I/O drivers (io_uring and epoll) around the core.
//! - [`pool`]: upstream connections kept for reuse across agent sessions.
//! - [`config`]: the TOML configuration and its validation.
//! - [`secrets`]: the gateway's own database credential (literal, env, file, command).
//! - [`roles`]: `[[role]]`s down to the database (`SET ROLE` on the upstream session).
//! - [`approvals`]: held statements waiting for a person: requests, decisions, their store.
//! - [`audit`]: the audit log: records, the session trail, the group-commit writer.
//! - [`control`]: the control plane (admin socket, reviewers' HTTP API and page).
//! - [`metrics`]: the numbers for Prometheus the data path bumps.
//! - [`console`]: the admin console, over PostgreSQL's protocol (`psql … portcullis`).
//! - [`sessions`]: the agent sessions open now, for the console.

pub mod analysis;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod control;
pub mod engine;
pub mod grants;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod protocol;
pub mod roles;
pub mod secrets;
pub mod session;
pub mod sessions;
pub mod telemetry;
