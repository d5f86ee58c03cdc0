//! The guard's audit records, schema version 1, in the gateway's envelope: `v`, `seq`,
//! `time`, `gateway` (here the guard's source id) and `kind`, then the kind's fields
//! (the gateway's `audit::record` describes the envelope). Field names are the schema.

use std::net::IpAddr;
use std::time::SystemTime;

use portcullis_auditlog::journal::{self, JournalError};
use portcullis_auditlog::time::format_micros;
use serde::Serialize;

use super::aggregate::Aggregate;
use crate::allow::AllowSpec;
use crate::config::Mode;

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body<'a> {
    /// The loader started: what it guards, and the digest of its effective configuration.
    GuardStart {
        version: &'a str,
        pid: u32,
        /// SHA-256 (hex) of the effective configuration (file and flags) as JSON.
        config_sha256: &'a str,
        mode: Mode,
        interfaces: &'a [String],
        ports: &'a [u16],
        allow: &'a [AllowSpec],
        local: bool,
        /// Attachments made now, and those adopted from an earlier loader's pins.
        attached: Vec<String>,
        adopted: Vec<String>,
        /// Whether checkpoints are signed (without a key nothing vouches for the log).
        signed: bool,
    },
    /// The loader stopped (enforcement stays pinned unless `reason` is `detached`).
    GuardStop {
        reason: &'a str,
        /// Events received from the kernel by this run, and the records they became.
        events: u64,
        bypass_records: u64,
        /// The kernel's counters at stop (`events_rate_limited`, `events_lost`: events
        /// that never reached the loader), when the pins are still there to read.
        kernel: Option<&'a std::collections::BTreeMap<&'static str, u64>>,
    },
    /// Refused packets or connect() calls, aggregated (see [`super::aggregate`]).
    GuardBypass {
        /// The packet's source; for local connects the destination the process asked
        /// for. `null`: the overflow bucket of a window with too many sources.
        src: Option<IpAddr>,
        /// The guarded interface when it is known (one interface on the ingress hook).
        dst: Option<&'a str>,
        dport: u16,
        proto: &'static str,
        hook: &'static str,
        reason: &'static str,
        /// Events in this record.
        count: u64,
        first: String,
        last: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup_id: Option<u64>,
    },
    /// Events the log could not take while it was failing (disk full, I/O errors), counted
    /// and recorded once it recovered.
    GuardAuditGap {
        events: u64,
        records: u64,
        first: String,
        last: String,
    },
}

impl<'a> Body<'a> {
    /// The record for one closed window; `dst` as in [`Body::GuardBypass`].
    pub fn bypass(a: &Aggregate, dst: Option<&'a str>) -> Self {
        let ingress = a.key.hook != "connect";
        Body::GuardBypass {
            src: a.key.src,
            dst: dst.filter(|_| ingress),
            dport: a.key.dport,
            proto: "tcp",
            hook: a.key.hook,
            reason: a.key.reason,
            count: a.count,
            first: format_micros(a.first),
            last: format_micros(a.last),
            pid: a.key.process.map(|p| p.0),
            cgroup_id: a.key.process.map(|p| p.1),
        }
    }

    /// The record without `v` and `seq` (the journal adds them), stamped `at`.
    pub fn encode(&self, at: SystemTime, source: &str) -> Result<Vec<u8>, JournalError> {
        journal::body(at, source, self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::Aggregator;
    use super::*;
    use crate::events::BypassEvent;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_133_600_000 + ms)
    }

    fn line(b: &Body<'_>) -> serde_json::Value {
        let body = b.encode(at(2000), "portcullis-guard/db1").unwrap();
        serde_json::from_slice(&journal::with_seq(4, &body)).unwrap()
    }

    #[test]
    fn a_bypass_record_has_the_envelope_and_every_field() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(Duration::from_secs(1), 8);
        for ms in [10, 400, 250] {
            let e = BypassEvent {
                time: String::new(),
                at: at(ms),
                event: "bypass",
                hook: "tc",
                reason: "syn",
                address: "fd00::3".parse().unwrap(),
                dport: 5432,
                pid: None,
                cgroup_id: None,
            };
            agg.add(&e, t0);
        }
        let a = &agg.drain()[0];
        let v = line(&Body::bypass(a, Some("eth0")));
        assert_eq!(
            v,
            serde_json::json!({
                "v": 1, "seq": 4, "time": "2026-12-01T14:00:02.000000Z",
                "gateway": "portcullis-guard/db1", "kind": "guard_bypass",
                "src": "fd00::3", "dst": "eth0", "dport": 5432, "proto": "tcp",
                "hook": "tc", "reason": "syn", "count": 3,
                "first": "2026-12-01T14:00:00.010000Z", "last": "2026-12-01T14:00:00.400000Z",
            })
        );
        // The envelope's order is the gateway's: v, seq, time, gateway, kind.
        let text = String::from_utf8(journal::with_seq(
            4,
            &Body::bypass(a, None).encode(at(0), "g").unwrap(),
        ))
        .unwrap();
        assert!(
            text.starts_with(
                r#"{"v":1,"seq":4,"time":"2026-12-01T14:00:00.000000Z","gateway":"g","kind":"guard_bypass","src":"fd00::3","dst":null,"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_local_connect_names_the_process_and_no_interface() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(Duration::from_secs(1), 8);
        agg.add(
            &BypassEvent {
                time: String::new(),
                at: at(1),
                event: "local_connect_refused",
                hook: "connect",
                reason: "local_connect",
                address: "127.0.0.1".parse().unwrap(),
                dport: 5432,
                pid: Some(4242),
                cgroup_id: Some(99),
            },
            t0,
        );
        let v = line(&Body::bypass(&agg.drain()[0], Some("eth0")));
        assert_eq!(v["src"], "127.0.0.1");
        assert_eq!(v["dst"], serde_json::Value::Null);
        assert_eq!(
            (v["pid"].as_u64(), v["cgroup_id"].as_u64()),
            (Some(4242), Some(99))
        );
        assert_eq!(v["count"], 1);
    }

    #[test]
    fn start_and_stop_records() {
        let v = line(&Body::GuardStart {
            version: "0.1.0",
            pid: 1,
            config_sha256: "ab",
            mode: Mode::Xdp,
            interfaces: &["eth0".into()],
            ports: &[5432],
            allow: &["10.0.0.2/32".parse().unwrap()],
            local: false,
            attached: vec!["xdp@eth0".into()],
            adopted: vec![],
            signed: true,
        });
        assert_eq!(v["kind"], "guard_start");
        assert_eq!(v["mode"], "xdp");
        assert_eq!(v["allow"][0], "10.0.0.2/32");
        let v = line(&Body::GuardStop {
            reason: "signalled",
            events: 3,
            bypass_records: 1,
            kernel: None,
        });
        assert_eq!(
            (v["kind"].as_str(), v["events"].as_u64()),
            (Some("guard_stop"), Some(3))
        );
    }
}
