//! The statement policy: what an identity may run, decided on the statement's reading
//! ([`crate::analysis`]) before the gateway forwards it.
//!
//! - [`config`]: the `[policy]` section as written.
//! - [`rules`]: compiled rules and their matching (`allow`, `deny`, `hold`, `log`).
//! - [`builtin`]: denials no rule can lift (programs, server files, other servers,
//!   signalling backends, `ALTER SYSTEM`, identity and role changes, `LOAD`).
//! - [`masked`]: uses of masked columns that would read around the mask.
//! - [`gate`]: the per-session gate the relay asks, with the session state statements
//!   depend on (prepared statements, `search_path`, lexer settings).
//!
//! Fail closed: no `[policy]` refuses everything; a statement that does not parse, or that
//! no rule allows under a default-deny role, is refused with an `ErrorResponse` and the
//! session goes on.

pub mod builtin;
pub mod config;
pub mod gate;
pub mod masked;
pub mod rules;

pub use config::{Action, PolicyConfig, PolicyRuleConfig};
pub use gate::StatementGate;
pub use rules::{Decision, Resolver, StatementPolicy};

/// A `[policy]` that cannot be used, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}
