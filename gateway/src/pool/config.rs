//! `[pool]`: how upstream sessions are kept for reuse.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Keep upstream sessions for the next agent session; `false` opens one per agent
    /// session and closes it at the end, without a limit.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most upstream connections, in use and idle, per database and upstream role; an
    /// agent session beyond it waits for one (a session holds its connection from start
    /// to end, held statements included). The gateway's worker threads share it out
    /// evenly (each at least one): a connection belongs to the thread whose runtime
    /// drives its socket.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// An idle connection unused this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// A connection this old is closed when its session ends instead of being kept.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_secs: u64,
    /// How long an agent session waits for a connection when its pool is full, before
    /// it is refused with 53300.
    #[serde(default = "default_wait_timeout")]
    pub wait_timeout_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pool_size: default_pool_size(),
            idle_timeout_secs: default_idle_timeout(),
            max_lifetime_secs: default_max_lifetime(),
            wait_timeout_secs: default_wait_timeout(),
        }
    }
}

impl PoolConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.pool_size == 0 {
            return Err(("pool.pool_size", "must be at least 1".into()));
        }
        if self.wait_timeout_secs == 0 {
            return Err(("pool.wait_timeout_secs", "must be at least 1".into()));
        }
        if self.max_lifetime_secs == 0 {
            return Err(("pool.max_lifetime_secs", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The settings one worker thread of `workers` applies.
    pub fn per_worker(&self, workers: usize) -> Settings {
        Settings {
            enabled: self.enabled,
            size: (self.pool_size / workers.max(1)).max(1),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_lifetime: Duration::from_secs(self.max_lifetime_secs),
            wait_timeout: Duration::from_secs(self.wait_timeout_secs),
        }
    }
}

/// One worker's share of `[pool]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub enabled: bool,
    /// Connections per pool on this worker.
    pub size: usize,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub wait_timeout: Duration,
}

fn yes() -> bool {
    true
}
/// PostgreSQL's own default `max_connections`: without a `pool_size` the gateway never
/// holds more than a default server admits.
fn default_pool_size() -> usize {
    100
}
fn default_idle_timeout() -> u64 {
    600
}
fn default_max_lifetime() -> u64 {
    3600
}
fn default_wait_timeout() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_shared_out_among_workers() {
        let c = PoolConfig {
            pool_size: 20,
            ..Default::default()
        };
        assert_eq!(c.per_worker(2).size, 10);
        assert_eq!(c.per_worker(3).size, 6);
        assert_eq!(c.per_worker(64).size, 1);
        assert_eq!(c.per_worker(0).size, 20);
    }

    #[test]
    fn zero_limits_are_refused() {
        let c = PoolConfig {
            pool_size: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "pool.pool_size");
    }
}
