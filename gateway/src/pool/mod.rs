//! Upstream connection reuse: authenticated server sessions kept between agent sessions
//! with the same database, upstream role and start-up parameters, reset before reuse.
//!
//! - [`stats`]: the counts every worker's pools report, for `SHOW POOLS` and metrics.

pub mod stats;

pub use stats::{Counters, PoolSnapshot, PoolStats};
