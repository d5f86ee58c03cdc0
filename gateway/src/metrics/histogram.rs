//! A latency histogram the data path can bump with two relaxed atomic adds.
//!
//! prometheus-client's own `Histogram` takes a lock per observation; a statement must
//! not. This one keeps a fixed set of upper bounds (in nanoseconds, compared as
//! integers), one counter per bucket and the sum, and is encoded through the crate's
//! [`EncodeMetric`] like any of its own types, so the exposition stays the crate's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Statement-scale latencies: 10 µs to 10 s.
pub const STATEMENT_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Reviewer-scale latencies: a second to a day.
pub const DECISION_BOUNDS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// Clones share their counts, as prometheus-client's own metrics do.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    bounds_ns: Box<[u64]>,
    /// One per bound, then +Inf; not cumulative (the encoder sums them).
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        LatencyHistogram(Arc::new(Inner {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// For statement latencies (a family's constructor).
    pub fn statements() -> Self {
        Self::new(STATEMENT_BOUNDS)
    }

    /// For reviewers' decisions (a family's constructor).
    pub fn decisions() -> Self {
        Self::new(DECISION_BOUNDS)
    }

    #[inline]
    pub fn observe(&self, d: Duration) {
        let h = &*self.0;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = h.bounds_ns.partition_point(|&b| b < ns);
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so a scrape racing an observation never shows a
        // count that disagrees with its own +Inf bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::new(STATEMENT_BOUNDS);
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(60));
        let b = &h.0.buckets;
        assert_eq!(b[0].load(Ordering::Relaxed), 1);
        assert_eq!(b[1].load(Ordering::Relaxed), 1);
        assert_eq!(b[STATEMENT_BOUNDS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(h.count(), 3);
    }
}
