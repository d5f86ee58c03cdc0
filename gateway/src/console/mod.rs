//! The admin console: `psql -h GATEWAY -p PORT -U admin portcullis`, as pgbouncer and
//! PgDog have one. `SHOW SESSIONS`, `SHOW STATS`, `SHOW POOLS`, `SHOW APPROVALS`,
//! `SHOW GRANTS`, `SHOW CONFIG`, `RELOAD`, and `APPROVE`/`DENY` for reviewers.
//!
//! Off unless `[console] listen` is set. Served on the control thread's runtime, never
//! on the data-path workers, so pgwire's decoding into owned messages costs the control
//! thread only.
//!
//! - [`command`]: the commands' grammar (sans-IO).
//! - [`table`]: typed answers, and the columns of each command.
//! - [`exec`]: running a command against the gateway (the admin socket's calls).
//! - [`settings`]: `SHOW CONFIG`'s rows, secrets redacted.
//! - [`server`]: the listener, start-up and SCRAM, and pgwire's query side.
//!
//! # Who may log in
//!
//! A static `[[identity]]` whose roles include one of `[console] roles` (default
//! `["admin"]`), with SCRAM-SHA-256 against the same verifiers the data path uses; a
//! wrong secret is FATAL 28P01, exactly as for an unknown name; an identity without a
//! console role FATAL 42501; another database than `portcullis` FATAL 3D000. With
//! `[server] tls` the console offers (or requires) TLS with the same certificate.
//! `APPROVE` and `DENY` need the identity to be a reviewer too (an
//! `[[approvals.reviewer]]` of the same name), and go through the approvals hub like
//! every other vote: no self-approval, distinct approvers, the digest of what was shown.

pub mod command;
pub mod exec;
pub mod server;
pub mod settings;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;

pub use exec::Console;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the console on `listener` (from [`server::bind`]) on the given runtime.
pub fn start(rt: &tokio::runtime::Runtime, listener: std::net::TcpListener, console: Arc<Console>) {
    rt.spawn(server::serve(listener, console));
}
