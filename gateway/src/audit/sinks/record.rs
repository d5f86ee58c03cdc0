//! One record on its way out: its log index, its bytes, and the few common fields every
//! format needs (kind, time, gateway), read once.
//!
//! Records are the writer's JSON lines; a sink never rewrites them unless the sink's
//! schema asks for OCSF. A line that is not a JSON object (the log is the examiner's
//! evidence, so nothing in it is dropped) still leaves, wrapped in an `unparsed`
//! record that carries its text.

use portcullis_auditlog::time::{civil_from_days, days_from_civil};
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("audit record {index} is not a JSON object: {source}")]
    NotJson {
        index: u64,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its place in the log (the writer's `seq`).
    pub index: u64,
    /// A JSON object on one line.
    pub json: Vec<u8>,
    pub kind: String,
    /// RFC 3339, as the writer wrote it.
    pub time: String,
    /// Microseconds since the Unix epoch, from `time`.
    pub time_us: i64,
    pub gateway: String,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    gateway: Option<Cow<'a, str>>,
}

impl Record {
    /// The record at `index` of the log, as read from it.
    pub fn from_log(index: u64, bytes: Vec<u8>) -> Record {
        match Self::parse(index, &bytes) {
            Ok((kind, time, time_us, gateway)) => Record {
                index,
                json: bytes,
                kind,
                time,
                time_us,
                gateway,
            },
            Err(e) => {
                tracing::warn!(target: "portcullis::audit", "{e}; it is sent wrapped as kind \"unparsed\"");
                Self::unparsed(index, &bytes)
            }
        }
    }

    fn parse(index: u64, bytes: &[u8]) -> Result<(String, String, i64, String), RecordError> {
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|source| RecordError::NotJson { index, source })?;
        let time = head.time.map(Cow::into_owned).unwrap_or_default();
        // A record without a usable time still goes out, stamped when it is sent.
        let time_us = parse_rfc3339_us(&time).unwrap_or_else(now_us);
        let time = if parse_rfc3339_us(&time).is_some() {
            time
        } else {
            format_rfc3339_us(time_us)
        };
        Ok((
            head.kind
                .map(Cow::into_owned)
                .unwrap_or_else(|| "unknown".into()),
            time,
            time_us,
            head.gateway.map(Cow::into_owned).unwrap_or_default(),
        ))
    }

    fn unparsed(index: u64, bytes: &[u8]) -> Record {
        let time_us = now_us();
        let time = format_rfc3339_us(time_us);
        let json = serde_json::to_vec(&serde_json::json!({
            "v": 1,
            "seq": index,
            "kind": "unparsed",
            "time": time,
            "raw": String::from_utf8_lossy(bytes),
        }))
        .expect("a JSON value serialises");
        Record {
            index,
            json,
            kind: "unparsed".into(),
            time,
            time_us,
            gateway: String::new(),
        }
    }

    /// `<gateway>-<seq>`: the same on every delivery of this record.
    pub fn id(&self) -> String {
        if self.gateway.is_empty() {
            format!("portcullis-{}", self.index)
        } else {
            format!("{}-{}", self.gateway, self.index)
        }
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to microseconds since the epoch.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1_000_000 + micros)
}

/// Microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as the writer writes.
pub fn format_rfc3339_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let (m, d) = (m as i64, d as i64);
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_microseconds() {
        let us = parse_rfc3339_us("2026-12-01T14:00:00.123456Z").unwrap();
        assert_eq!(us, 1_796_133_600_123_456);
        assert_eq!(format_rfc3339_us(us), "2026-12-01T14:00:00.123456Z");
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_us("2026-12-01T15:00:00.5+01:00"),
            Some(1_796_133_600_500_000)
        );
        assert_eq!(
            format_rfc3339_us(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T00:00:00",
            "2026-12-01T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339_us(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_common_fields_are_read_and_bad_lines_are_wrapped() {
        let r = Record::from_log(
            7,
            br#"{"v":1,"seq":7,"kind":"statement","time":"2026-12-01T14:00:00.123456Z","gateway":"gw1","sql":"SELECT 1"}"#.to_vec(),
        );
        assert_eq!((r.kind.as_str(), r.gateway.as_str()), ("statement", "gw1"));
        assert_eq!(r.time_us, 1_796_133_600_123_456);
        assert_eq!(r.id(), "gw1-7");

        let r = Record::from_log(8, b"not json".to_vec());
        assert_eq!(r.kind, "unparsed");
        let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["raw"].as_str()),
            (Some(8), Some("not json"))
        );
    }
}
