//! Upstream connection reuse: authenticated server sessions kept between agent sessions
//! with the same database, upstream role and start-up parameters, reset before reuse.
//!
//! Session pooling only: an agent session has its server session to itself from start
//! to end, because the policy, masking and audit context are per session. What is
//! shared is the cost of a login, not a session's state.
//!
//! - [`config`]: the `[pool]` section.
//! - [`reset`]: the sans-IO reset (`DISCARD ALL`, the role again) between two agents.
//! - [`local`]: one worker thread's idle connections and limits.
//! - [`stats`]: the counts every worker's pools report, for `SHOW POOLS` and metrics.

pub mod config;
pub mod local;
pub mod reset;
pub mod stats;

pub use config::PoolConfig;
pub use local::{Checkout, Kept, LocalPool, PoolKey};
pub use stats::{Counters, PoolSnapshot, PoolStats};
