//! Audit: evidence of every session, statement, result and decision, written before the
//! statement runs and verifiable by an examiner who distrusts the operator.
//!
//! - [`record`]: the record schema (version 1) and its one-line JSON encoding.
//! - [`trail`]: one session's records and open outcomes, kept by the relay core (sans-IO).
//! - [`writer`]: the log writer thread: group commit, fail-closed health, the Merkle
//!   seal after each sync.
//! - [`seal`]: the Merkle tree and signed checkpoints over what the writer made durable.
//! - [`search`]: finding statements and replaying a session, for auditors.
//! - [`cli`]: `portcullis audit verify, prove, consistency, keygen, public-key, search, show`.
//! - [`sinks`]: SIEM export of the durable log (stdout, syslog, Splunk, Elasticsearch,
//!   signed JSON), at least once, in order, from a cursor that survives restarts.
//! - [`config`]: the `[audit]` section.
//!
//! The log's storage, Merkle tree, checkpoints and verification are the
//! `portcullis-auditlog` crate, shared with `portcullis-guard`.

pub mod cli;
pub mod config;
pub mod record;
pub mod seal;
pub mod search;
pub mod sinks;
pub mod trail;
pub mod writer;

pub use config::AuditConfig;
pub use record::{Body, Encoded, PolicyFacts};
pub use trail::{StatementFacts, Trail};
pub use writer::{AuditError, AuditLog, Ticket};
