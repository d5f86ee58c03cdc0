//! `[metrics]`: where Prometheus scrapes and the orchestrator probes, and how the
//! readiness check reaches the database.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct MetricsConfigError {
    pub key: &'static str,
    pub problem: String,
}

fn default_probe_interval() -> u64 {
    5
}

/// No section: no listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz` and `/readyz` (plain HTTP; bind it where only your
    /// scraper and orchestrator reach).
    pub listen: String,
    /// How often the readiness check logs in to the database (seconds); `/readyz`
    /// answers from the last result, so probes never open connections themselves.
    #[serde(default = "default_probe_interval")]
    pub probe_interval_secs: u64,
    /// The database the readiness check logs in to; default: the first of `[upstream]
    /// reserve_databases`, else `postgres`.
    #[serde(default)]
    pub probe_database: Option<String>,
}

impl MetricsConfig {
    pub fn listen_addr(&self) -> Result<SocketAddr, MetricsConfigError> {
        self.listen.parse().map_err(|_| MetricsConfigError {
            key: "metrics.listen",
            problem: format!("\"{}\" is not an address:port", self.listen),
        })
    }

    pub fn validate(&self) -> Result<(), MetricsConfigError> {
        self.listen_addr()?;
        if self.probe_interval_secs == 0 {
            return Err(MetricsConfigError {
                key: "metrics.probe_interval_secs",
                problem: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}
