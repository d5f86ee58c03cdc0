//! Bypass events as evidence: decoded from the ring buffer's raw records into JSON lines with
//! wall-clock time, ready for a log shipper or the audit log.

use std::{
    io::Write,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Map, MapData, RingBuf};
use portcullis_common::{Event, hook, maps, reason};

use crate::{netif::key_addr, pins::Pins};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("ring buffer record of {0} bytes is not an event ({1} bytes)")]
    Size(usize, usize),
    #[error("opening the pinned event ring buffer: {0}")]
    Open(#[from] aya::maps::MapError),
    #[error("event stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Why [`follow`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowEnd {
    /// The pinned state disappeared: someone ran `detach`.
    Detached,
    /// SIGINT or SIGTERM: the loader stops, enforcement stays.
    Signalled,
}

/// Streams events from the pinned ring buffer to `out` as JSON lines, and hands each to
/// `each` (the audit log), until the guard is detached or the process is told to stop.
pub async fn follow(
    pins: &Pins,
    out: &mut impl Write,
    mut each: impl FnMut(&BypassEvent),
) -> Result<FollowEnd, EventError> {
    use tokio::{
        io::unix::AsyncFd,
        signal::unix::{SignalKind, signal},
    };
    let data = MapData::from_pin(pins.map(maps::EVENTS))?;
    let ring: RingBuf<MapData> = RingBuf::try_from(Map::from_map_data(data)?)?;
    // SAFETY: the ring buffer owns its map descriptor and keeps it, unchanged, until the
    // `AsyncFd` (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| EventError::Io(e.into()))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Detach is noticed by polling: bpffs offers no inotify.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Ok(e) => {
                            let line = serde_json::to_string(&e).map_err(std::io::Error::other)?;
                            writeln!(out, "{line}")?;
                            each(&e);
                        }
                        Err(e) => eprintln!("portcullis-guard: skipping event: {e}"),
                    }
                }
                out.flush()?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if !pins.exists() {
                    return Ok(FollowEnd::Detached);
                }
            }
            _ = term.recv() => return Ok(FollowEnd::Signalled),
            _ = int.recv() => return Ok(FollowEnd::Signalled),
        }
    }
}

/// One refused packet or connect(), as logged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BypassEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The same instant, for the audit log's microsecond times.
    #[serde(skip)]
    pub at: SystemTime,
    /// "bypass" for packets, "local_connect_refused" for connect().
    pub event: &'static str,
    pub hook: &'static str,
    /// "syn", "mid_flow", "fragment", "unparseable", "binding_mismatch" (an allowed address
    /// without the MAC or interface its entry binds) or "local_connect".
    pub reason: &'static str,
    /// The packet's source; for local connects, the destination the process asked for.
    pub address: IpAddr,
    pub dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<BypassEvent, EventError> {
    let size = std::mem::size_of::<Event>();
    if bytes.len() < size {
        return Err(EventError::Size(bytes.len(), size));
    }
    // SAFETY: length checked; `Event` is plain data valid for any bytes; unaligned read.
    let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let local = e.reason == reason::LOCAL_CONNECT;
    let at = boot_ns_to_wall(e.ts_ns);
    Ok(BypassEvent {
        time: rfc3339(at),
        at,
        event: if local {
            "local_connect_refused"
        } else {
            "bypass"
        },
        hook: match e.hook {
            hook::XDP => "xdp",
            hook::TC => "tc",
            hook::CONNECT => "connect",
            _ => "unknown",
        },
        reason: reason_name(e.reason),
        address: key_addr(e.addr),
        dport: e.dport,
        pid: local.then_some(e.pid),
        cgroup_id: local.then_some(e.cgroup_id),
    })
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::SYN => "syn",
        reason::MIDFLOW => "mid_flow",
        reason::FRAGMENT => "fragment",
        reason::UNPARSEABLE => "unparseable",
        reason::LOCAL_CONNECT => "local_connect",
        reason::BINDING => "binding_mismatch",
        _ => "unknown",
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: `timespec` is plain data filled by the kernel.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts a `CLOCK_BOOTTIME` stamp from the kernel to wall-clock time.
pub fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let now_boot = clock_ns(libc::CLOCK_BOOTTIME);
    let age = Duration::from_nanos(now_boot.saturating_sub(boot_ns));
    SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, without pulling in a date crate for one format.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = portcullis_auditlog::time::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn decodes_an_ingress_event() {
        let e = Event {
            ts_ns: 1,
            addr: portcullis_common::v4_mapped([10, 9, 0, 3]),
            dport: 5432,
            family: 4,
            hook: hook::XDP,
            reason: reason::SYN,
            ..Default::default()
        };
        // SAFETY: reading a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>())
        };
        let d = decode(bytes).unwrap();
        assert_eq!(d.address, "10.9.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            (d.event, d.hook, d.reason, d.dport),
            ("bypass", "xdp", "syn", 5432)
        );
        assert_eq!(d.pid, None);
        assert!(decode(&bytes[..10]).is_err());
    }
}
