//! The contract between the guard's eBPF programs and its loader: map names, the layout of
//! every key and value, and the bypass event record.
//!
//! Both sides compile this crate, so a layout change cannot reach one side only. Every type is
//! `#[repr(C)]` with explicit padding fields, because the kernel copies them byte for byte and
//! implicit padding would leak stack bytes into maps and events.
#![no_std]

/// Maps, pinned by these names under `<pin dir>/maps/` so a restarted loader adopts them.
pub mod maps {
    /// `HashMap<u16, u8>`: protected TCP ports (host byte order); the value is unused.
    pub const PORTS: &str = "PORTS";
    /// `LpmTrie<[u8; 4], AllowValue>`: allowed IPv4 source prefixes.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<[u8; 16], AllowValue>`: allowed IPv6 source prefixes.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `LruPerCpuHashMap<[u8; 16], DropStats>`: drops per source (IPv4 as `::ffff:a.b.c.d`).
    /// LRU, so a flood of spoofed sources evicts old entries instead of failing inserts.
    pub const DROPS: &str = "DROPS";
    /// `PerCpuArray<u64>` indexed by [`super::stat`].
    pub const STATS: &str = "STATS";
    /// `RingBuf` of [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<RateState>` with one slot: the event token bucket of each CPU.
    pub const RATE: &str = "RATE";
    /// `HashMap<u64, u8>`: cgroup ids (cgroup v2 inode numbers) allowed to connect locally.
    pub const CGROUP_ALLOW: &str = "CGROUP_ALLOW";
    /// `HashMap<[u8; 16], u8>`: the host's own addresses, for the local-connect check.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";

    /// Every map, in the order `status` and `detach` walk them.
    pub const ALL: [&str; 9] = [
        PORTS,
        ALLOW_V4,
        ALLOW_V6,
        DROPS,
        STATS,
        EVENTS,
        RATE,
        CGROUP_ALLOW,
        LOCAL_ADDRS,
    ];
}

/// Program names (the functions' symbols in the object file).
pub mod progs {
    /// Ingress programs for Ethernet interfaces.
    pub const XDP: &str = "guard_xdp";
    pub const TC: &str = "guard_tc";
    /// The same for interfaces whose packets start at the IP header (tun, WireGuard).
    pub const XDP_IP: &str = "guard_xdp_ip";
    pub const TC_IP: &str = "guard_tc_ip";
    pub const CONNECT4: &str = "guard_connect4";
    pub const CONNECT6: &str = "guard_connect6";
}

/// Load-time constants (`Global<T>` statics overridden by the loader).
pub mod globals {
    /// `u64`: events each CPU may emit per second once its burst is spent.
    pub const EVENT_RATE: &str = "EVENT_RATE";
    /// `u64`: the size of each CPU's token bucket.
    pub const EVENT_BURST: &str = "EVENT_BURST";
}

/// Indices into the `STATS` per-CPU array.
pub mod stat {
    /// Packets to a protected port from an allowed source.
    pub const PASSED: u32 = 0;
    /// Packets dropped (any reason).
    pub const DROPPED: u32 = 1;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 2;
    /// Events not written because the CPU's token bucket was empty.
    pub const EVENTS_RATE_LIMITED: u32 = 3;
    /// Events not written because the ring buffer was full (user space too slow).
    pub const EVENTS_LOST: u32 = 4;
    /// Local `connect()` calls refused.
    pub const LOCAL_DENIED: u32 = 5;
    /// Local `connect()` calls to a protected port let through (allowed cgroup).
    pub const LOCAL_ALLOWED: u32 = 6;
    /// Fragments and unparseable TCP packets dropped because their port could not be read.
    pub const UNPARSEABLE_DROPPED: u32 = 7;
    pub const COUNT: u32 = 8;
    /// Names in index order, for `status`.
    pub const NAMES: [&str; COUNT as usize] = [
        "passed",
        "dropped",
        "events_sent",
        "events_rate_limited",
        "events_lost",
        "local_denied",
        "local_allowed",
        "unparseable_dropped",
    ];
}

/// Where an event was raised.
pub mod hook {
    pub const XDP: u8 = 1;
    pub const TC: u8 = 2;
    pub const CONNECT: u8 = 3;
}

/// Why a packet or a connect() was refused.
pub mod reason {
    /// A TCP SYN without ACK: a new connection attempt.
    pub const SYN: u8 = 1;
    /// Any other TCP segment: traffic of a flow that was not set up through the guard's view
    /// (e.g. established before the guard attached, or crafted).
    pub const MIDFLOW: u8 = 2;
    /// A non-first fragment: no TCP header, so the port is unknown and we refuse to guess.
    pub const FRAGMENT: u8 = 3;
    /// TCP whose header could not be read (truncated, too many IPv6 extension headers).
    pub const UNPARSEABLE: u8 = 4;
    /// A local `connect()` from a cgroup that is not allowed.
    pub const LOCAL_CONNECT: u8 = 5;
    /// From an allowed address, but not with the source MAC address or on the interface its
    /// entry binds: someone else claiming a gateway's address.
    pub const BINDING: u8 = 6;
}

/// Who added an allowlist entry ([`AllowValue::origin`]); only user space reads it.
pub mod origin {
    /// `run`'s configuration. Entries pinned by a guard that predates origins hold 1 too.
    pub const CONFIG: u8 = 1;
    /// `allow add`.
    pub const RUNTIME: u8 = 2;
}

/// What an allowlist entry binds besides the source address ([`AllowValue::bind`] bits).
pub mod bind {
    /// The Ethernet source address must be [`super::AllowValue::mac`].
    pub const MAC: u8 = 1;
    /// The packet must arrive on interface [`super::AllowValue::ifindex`].
    pub const IFINDEX: u8 = 2;
}

/// The value of an allowlist entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowValue {
    /// An [`origin`] constant.
    pub origin: u8,
    /// [`bind`] bits; 0: the address alone is enough.
    pub bind: u8,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

/// One refused packet or connect(), as written to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`), so suspend does not skew it.
    pub ts_ns: u64,
    /// The caller's cgroup id for [`reason::LOCAL_CONNECT`], else 0.
    pub cgroup_id: u64,
    /// The packet's source, or the connect()'s destination; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// The calling process (tgid) for [`reason::LOCAL_CONNECT`], else 0.
    pub pid: u32,
    /// Destination port, host byte order; 0 when unknown (fragments).
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// A [`hook`] constant.
    pub hook: u8,
    /// A [`reason`] constant.
    pub reason: u8,
    pub _pad: [u8; 7],
}

/// Drops from one source, per CPU; user space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    pub packets: u64,
    /// Of which were connection attempts (SYN without ACK).
    pub syns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the latest drop on this CPU.
    pub last_ns: u64,
}

/// A token bucket for events, one per CPU so no lock is needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Default event budget per CPU: enough to show every attempt of a real agent, small enough
/// that a SYN flood cannot keep the reader busy.
pub const DEFAULT_EVENT_RATE: u64 = 100;
pub const DEFAULT_EVENT_BURST: u64 = 200;

/// Maximum IPv6 extension headers skipped before a TCP packet counts as unparseable.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Maximum cgroup depth searched for an allowed ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Maps an IPv4 address into the IPv6 key space used by `DROPS` and events.
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are `#[repr(C)]`, made only of integers and byte arrays, with the
    // padding spelled out, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::DropStats {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::AllowValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Event>(), 48);
        assert_eq!(core::mem::size_of::<DropStats>(), 24);
        assert_eq!(core::mem::size_of::<RateState>(), 16);
        assert_eq!(core::mem::size_of::<AllowValue>(), 12);
    }

    #[test]
    fn v4_mapped_matches_std() {
        let m = v4_mapped([10, 1, 2, 3]);
        assert_eq!(
            std::net::Ipv6Addr::from(m),
            std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()
        );
    }
}
