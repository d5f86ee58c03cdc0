//! Values read when Prometheus asks rather than counted as they happen: the upstream
//! pools ([`crate::pool::PoolStats`]), the audit writer, the reserved side connections,
//! the lifecycle and the build. Read from their owners each scrape, never copied.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::engine::Shared;

/// The collector registered in the control plane's scrape registry.
pub struct Scraped {
    shared: Arc<Shared>,
    /// `auto` resolved: what sessions run on.
    engine: &'static str,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped")
            .field("engine", &self.engine)
            .finish()
    }
}

impl Scraped {
    pub fn new(shared: Arc<Shared>, engine: &'static str) -> Self {
        Scraped { shared, engine }
    }
}

type Pair = [(&'static str, String); 2];

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, unit, m.metric_type())?)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn i(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let info = prometheus_client::metrics::info::Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("engine", self.engine),
            ]);
            info.encode(enc.encode_descriptor(
                "build",
                "The gateway's version and the I/O engine its sessions run on",
                None,
                MetricType::Info,
            )?)?;
        }
        gauge(
            &mut enc,
            "draining",
            "1 once the gateway is shutting down (new sessions are refused with 57P03)",
            None,
            i64::from(self.shared.lifecycle.is_stopping()),
        )?;

        // Upstream pools: per database and role.
        let pools = self.shared.pools.snapshot();
        type Field = fn(&crate::pool::Counters) -> u64;
        let gauges: [(&str, &str, Field); 3] = [
            (
                "pool_in_use",
                "Upstream connections serving an agent session now",
                |c| c.in_use,
            ),
            (
                "pool_idle",
                "Upstream connections kept for the next session",
                |c| c.idle,
            ),
            (
                "pool_waiting",
                "Agent sessions waiting for an upstream connection (the pool is at pool_size)",
                |c| c.waiting,
            ),
        ];
        for (name, help, f) in gauges {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &pools {
                let labels: Pair = [("database", p.database.clone()), ("role", p.role.clone())];
                ConstGauge::new(i(f(&p.counters))).encode(e.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, Field); 4] = [
            (
                "pool_opened",
                "Upstream connections opened since start-up",
                |c| c.opened,
            ),
            (
                "pool_reused",
                "Agent sessions served by a kept upstream connection instead of a new one",
                |c| c.reused,
            ),
            (
                "pool_closed",
                "Upstream connections closed since start-up (any reason)",
                |c| c.closed,
            ),
            (
                "pool_timeouts",
                "Agent sessions refused because no upstream connection freed up in time",
                |c| c.timeouts,
            ),
        ];
        for (name, help, f) in counters {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &pools {
                let labels: Pair = [("database", p.database.clone()), ("role", p.role.clone())];
                ConstCounter::new(f(&p.counters)).encode(e.encode_family(&labels)?)?;
            }
        }

        let side = self.shared.side.status();
        gauge(
            &mut enc,
            "reserved_connections_open",
            "The gateway's own upstream connections (catalog lookups, EXPLAIN) open now",
            None,
            i(side.open),
        )?;
        gauge(
            &mut enc,
            "reserved_connections_wanted",
            "The gateway's own upstream connections it keeps open when it can",
            None,
            i(side.target),
        )?;

        if let Some(log) = &self.shared.audit {
            let c = log.counters();
            use std::sync::atomic::Ordering::Relaxed;
            counter(
                &mut enc,
                "audit_records",
                "Audit records written",
                c.records.load(Relaxed),
            )?;
            counter(
                &mut enc,
                "audit_syncs",
                "Audit log syncs (fsync or write batches)",
                c.syncs.load(Relaxed),
            )?;
            counter(
                &mut enc,
                "audit_lost",
                "Audit records that could not be written",
                c.lost.load(Relaxed),
            )?;
            gauge(
                &mut enc,
                "audit_backlog",
                "Audit records queued and not yet written",
                Some(&Unit::Bytes),
                i(log.queued_bytes()),
            )?;
            gauge(
                &mut enc,
                "audit_healthy",
                "1 while the audit log's last write succeeded",
                None,
                i64::from(log.healthy()),
            )?;
        }
        Ok(())
    }
}
