//! Folds bypass events into audit records: identical events (same source, port, reason and
//! hook) within a window become one record with an exact count and the first and last
//! times, so a flood from one source costs one record per window instead of one per packet.
//!
//! Local connects also key on the process (pid, cgroup): two programs trying the port are
//! two findings. Spoofed sources could make every event a new key, so past `max_keys` open
//! keys events of a new key go to one overflow bucket per (port, reason, hook) with no
//! source: the record count stays bounded and the event count stays exact.
//!
//! Pure logic, fed with the caller's clock, so the tests need no kernel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::events::BypassEvent;

/// What makes two events the same finding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `None`: the overflow bucket (too many distinct sources in one window).
    pub src: Option<IpAddr>,
    pub dport: u16,
    pub reason: &'static str,
    pub hook: &'static str,
    /// (pid, cgroup id), local connects only.
    pub process: Option<(u32, u64)>,
}

impl Key {
    pub fn of(e: &BypassEvent) -> Key {
        Key {
            src: Some(e.address),
            dport: e.dport,
            reason: e.reason,
            hook: e.hook,
            process: e.pid.zip(e.cgroup_id),
        }
    }

    fn overflow(&self) -> Key {
        Key {
            src: None,
            process: None,
            ..self.clone()
        }
    }
}

/// One closed window of one key: what becomes a `guard_bypass` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub key: Key,
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
    /// When the window opened, on the caller's monotonic clock.
    opened: Instant,
}

#[derive(Debug)]
pub struct Aggregator {
    window: Duration,
    max_keys: usize,
    open: HashMap<Key, Aggregate>,
    /// Events added, ever.
    events: u64,
}

impl Aggregator {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            open: HashMap::new(),
            events: 0,
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Counts `e`, received at `now`.
    pub fn add(&mut self, e: &BypassEvent, now: Instant) {
        self.events += 1;
        let mut key = Key::of(e);
        if !self.open.contains_key(&key) && self.open.len() >= self.max_keys {
            key = key.overflow();
        }
        let a = self.open.entry(key.clone()).or_insert(Aggregate {
            key,
            count: 0,
            first: e.at,
            last: e.at,
            opened: now,
        });
        a.count += 1;
        // Ring-buffer order is per CPU, not global: keep the true extremes.
        a.first = a.first.min(e.at);
        a.last = a.last.max(e.at);
    }

    /// The windows that have closed by `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Aggregate> {
        let window = self.window;
        let closed: Vec<Key> = self
            .open
            .values()
            .filter(|a| now.saturating_duration_since(a.opened) >= window)
            .map(|a| a.key.clone())
            .collect();
        let mut out: Vec<Aggregate> = closed.iter().filter_map(|k| self.open.remove(k)).collect();
        sort(&mut out);
        out
    }

    /// Every open window, closed now (on stop).
    pub fn drain(&mut self) -> Vec<Aggregate> {
        let mut out: Vec<Aggregate> = self.open.drain().map(|(_, a)| a).collect();
        sort(&mut out);
        out
    }

    /// When the next window closes.
    pub fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|a| a.opened + self.window).min()
    }
}

fn sort(v: &mut [Aggregate]) {
    v.sort_by(|a, b| a.first.cmp(&b.first).then_with(|| a.key.cmp(&b.key)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn ev(src: &str, ms: u64) -> BypassEvent {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_133_600_000 + ms);
        BypassEvent {
            time: crate::events::rfc3339(at),
            at,
            event: "bypass",
            hook: "xdp",
            reason: "syn",
            address: src.parse().unwrap(),
            dport: 5432,
            pid: None,
            cgroup_id: None,
        }
    }

    const W: Duration = Duration::from_secs(1);

    #[test]
    fn a_flood_from_one_source_is_one_record_per_window_with_exact_counts() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(W, 16);
        for i in 0..10_000u64 {
            agg.add(&ev("10.0.0.3", i / 20), t0 + Duration::from_micros(i * 50));
        }
        assert_eq!(agg.due(t0 + Duration::from_millis(999)), vec![]);
        let first = agg.due(t0 + W);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].count, 10_000);
        assert_eq!(first[0].key.src, Some("10.0.0.3".parse().unwrap()));
        assert_eq!(
            first[0].last.duration_since(first[0].first).unwrap(),
            Duration::from_millis(499)
        );
        // The next event opens a new window.
        agg.add(&ev("10.0.0.3", 1500), t0 + Duration::from_millis(1500));
        assert_eq!(agg.next_due(), Some(t0 + Duration::from_millis(2500)));
        assert_eq!(agg.drain()[0].count, 1);
        assert_eq!(agg.events(), 10_001);
        assert!(agg.next_due().is_none());
    }

    #[test]
    fn different_sources_ports_reasons_and_processes_stay_apart() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(W, 16);
        agg.add(&ev("10.0.0.3", 5), t0);
        agg.add(&ev("10.0.0.4", 1), t0);
        let mut other_port = ev("10.0.0.3", 2);
        other_port.dport = 6432;
        agg.add(&other_port, t0);
        let mut midflow = ev("10.0.0.3", 3);
        midflow.reason = "mid_flow";
        agg.add(&midflow, t0);
        let local = |pid| BypassEvent {
            event: "local_connect_refused",
            hook: "connect",
            reason: "local_connect",
            pid: Some(pid),
            cgroup_id: Some(77),
            ..ev("127.0.0.1", 4)
        };
        agg.add(&local(100), t0);
        agg.add(&local(100), t0);
        agg.add(&local(101), t0);
        let out = agg.due(t0 + W);
        assert_eq!(out.len(), 6, "{out:#?}");
        // Oldest first.
        assert_eq!(out[0].key.src, Some("10.0.0.4".parse().unwrap()));
        let counts: Vec<(Option<(u32, u64)>, u64)> = out
            .iter()
            .filter(|a| a.key.hook == "connect")
            .map(|a| (a.key.process, a.count))
            .collect();
        assert_eq!(counts, vec![(Some((100, 77)), 2), (Some((101, 77)), 1)]);
    }

    #[test]
    fn too_many_sources_overflow_into_one_bucket_keeping_the_count() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(W, 4);
        for i in 0..1000u32 {
            let src = format!("10.1.{}.{}", i / 256, i % 256);
            agg.add(&ev(&src, u64::from(i)), t0);
        }
        let out = agg.due(t0 + W);
        assert_eq!(out.len(), 5);
        assert_eq!(out.iter().map(|a| a.count).sum::<u64>(), 1000);
        let overflow = out.iter().find(|a| a.key.src.is_none()).unwrap();
        assert_eq!(overflow.count, 996);
    }
}
