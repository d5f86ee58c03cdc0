//! Reading the gateway's `[metrics]` listener as Prometheus would: one plain HTTP GET,
//! and the exposition parsed by a real parser.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One plain HTTP GET: the status code and the body.
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// The scrape, parsed as Prometheus would: each sample's value by name and labels.
pub struct Scrape {
    pub samples: Vec<prometheus_parse::Sample>,
    /// Every family the exposition declares (`# TYPE` lines), with and without samples.
    pub names: BTreeSet<String>,
}

impl Scrape {
    pub fn take(port: u16) -> Scrape {
        let (code, body) = get(port, "/metrics");
        assert_eq!(code, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "not OpenMetrics text:\n{body}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let mut names: BTreeSet<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        names.extend(parsed.samples.iter().map(|s| s.metric.clone()));
        Scrape {
            samples: parsed.samples,
            names,
        }
    }

    /// The value of `metric` with exactly these labels among its own (others ignored).
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    pub fn histogram_count(&self, metric: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                _ => 0.0,
            })
            .sum()
    }
}

/// Waits (bounded) until `f` holds for a fresh scrape; returns it.
pub fn scrape_until(port: u16, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = Scrape::take(port);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
