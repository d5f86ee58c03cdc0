//! The guard's kernel side: drops TCP to the protected ports unless the source is allowed,
//! counts and reports every refusal, and (optionally) refuses local `connect()` calls to those
//! ports from cgroups that are not allowed.
//!
//! Two ingress programs, `guard_xdp` and `guard_tc`, share one parser and one decision so the
//! two attach modes cannot drift apart. Each comes twice: for Ethernet interfaces, and (`_ip`)
//! for interfaces whose packets start at the IP header (tun, WireGuard); the loader picks by
//! the interface's type, so neither pays for a run-time check. All state lives in maps pinned
//! by the loader; see `portcullis_common` for their layouts.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use portcullis_common::{
    AllowValue, DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, DropStats, Event, MAX_CGROUP_DEPTH,
    RateState, bind, hook, reason, stat, v4_mapped,
};

use crate::parse::{Bounds, L4, Packet};

#[map]
static PORTS: HashMap<u16, u8> = HashMap::pinned(64, 0);
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::pinned(4096, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::pinned(4096, 0);
#[map]
static DROPS: LruPerCpuHashMap<[u8; 16], DropStats> = LruPerCpuHashMap::pinned(8192, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);
#[map]
static RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);
#[map]
static CGROUP_ALLOW: HashMap<u64, u8> = HashMap::pinned(256, 0);
#[map]
static LOCAL_ADDRS: HashMap<[u8; 16], u8> = HashMap::pinned(256, 0);

#[unsafe(no_mangle)]
static EVENT_RATE: Global<u64> = Global::new(DEFAULT_EVENT_RATE);
#[unsafe(no_mangle)]
static EVENT_BURST: Global<u64> = Global::new(DEFAULT_EVENT_BURST);

/// Bytes the TC program makes linear before a second look: every header stack `parse`
/// accepts fits.
const TC_PULL_LEN: u32 = 576;

/// TC_ACT_SHOT; the bindings type it differently per target arch, so spelled out here.
const TC_ACT_SHOT: i32 = 2;

const SOCK_STREAM: u32 = 1;
const CONNECT_ALLOW: i32 = 1;
const CONNECT_REFUSE: i32 = 0;

#[xdp]
pub fn guard_xdp(ctx: XdpContext) -> u32 {
    xdp_verdict::<false>(&ctx)
}

#[xdp]
pub fn guard_xdp_ip(ctx: XdpContext) -> u32 {
    xdp_verdict::<true>(&ctx)
}

#[classifier]
pub fn guard_tc(ctx: TcContext) -> i32 {
    tc_verdict::<false>(&ctx)
}

#[classifier]
pub fn guard_tc_ip(ctx: TcContext) -> i32 {
    tc_verdict::<true>(&ctx)
}

/// `RAW_IP`: the packet starts at its IP header. A const parameter rather than a function
/// argument: passing the parser as a value gets it outlined into a BPF subprogram, which the
/// verifier then rejects (it returns the packet through a spilled stack slot).
#[inline(always)]
fn parse<const RAW_IP: bool>(b: &Bounds) -> Option<Packet> {
    if RAW_IP {
        parse::raw_ip(b)
    } else {
        parse::ethernet(b)
    }
}

#[inline(always)]
fn xdp_verdict<const RAW_IP: bool>(ctx: &XdpContext) -> u32 {
    match parse::<RAW_IP>(&Bounds::new(ctx.data(), ctx.data_end())) {
        Some(packet) if refuse(&packet, hook::XDP, ctx.ingress_ifindex() as u32) => {
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn tc_verdict<const RAW_IP: bool>(ctx: &TcContext) -> i32 {
    let mut packet = parse::<RAW_IP>(&Bounds::new(ctx.data(), ctx.data_end()));
    // A GRO'd or fragmented skb may hold its TCP header outside the linear area, which is
    // all direct packet access can see. Pull only then, so allowed bulk traffic is not copied.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if needs_more(&packet) && linear < ctx.len() {
        let want = if ctx.len() < TC_PULL_LEN {
            ctx.len()
        } else {
            TC_PULL_LEN
        };
        if ctx.pull_data(want).is_ok() {
            packet = parse::<RAW_IP>(&Bounds::new(ctx.data(), ctx.data_end()));
        }
    }
    // SAFETY: the kernel hands a valid __sk_buff; ingress_ifindex is a readable field.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match packet {
        Some(packet) if refuse(&packet, hook::TC, ifindex) => TC_ACT_SHOT,
        // UNSPEC is tcx's "next": later programs on the interface still see the packet.
        _ => TC_ACT_UNSPEC,
    }
}

fn needs_more(packet: &Option<Packet>) -> bool {
    match packet {
        None => true,
        Some(p) => matches!(
            p.l4,
            L4::Unknown {
                reason: reason::UNPARSEABLE
            }
        ),
    }
}

/// The one decision both ingress hooks make; `ifindex` is the interface it arrived on.
#[inline(always)]
fn refuse(packet: &Packet, hook: u8, ifindex: u32) -> bool {
    let (dport, why) = match packet.l4 {
        L4::Other => return false,
        L4::Tcp { dport, syn } => {
            if PORTS.get_ptr(dport).is_none() {
                return false;
            }
            (dport, if syn { reason::SYN } else { reason::MIDFLOW })
        }
        L4::Unknown { reason } => (0, reason),
    };
    let entry = allow_entry(packet);
    let why = match entry {
        None => why,
        Some(entry) if binding_holds(entry, packet, ifindex) => {
            if dport != 0 {
                bump(stat::PASSED);
            }
            return false;
        }
        Some(_) => reason::BINDING,
    };
    record_drop(packet, dport, why, hook);
    true
}

/// The longest allowlist prefix holding the source. Deliberately no fallback to a shorter
/// one when its binding fails: the most specific entry is the operator's word.
#[inline(always)]
fn allow_entry(packet: &Packet) -> Option<&AllowValue> {
    let s = &packet.src;
    if packet.family == 4 {
        ALLOW_V4.get(Key::new(32, [s[12], s[13], s[14], s[15]]))
    } else {
        ALLOW_V6.get(Key::new(128, *s))
    }
}

#[inline(always)]
fn binding_holds(entry: &AllowValue, packet: &Packet, ifindex: u32) -> bool {
    if entry.bind & bind::IFINDEX != 0 && entry.ifindex != ifindex {
        return false;
    }
    if entry.bind & bind::MAC != 0 {
        let Some(mac) = packet.mac else {
            return false;
        };
        // Byte by byte, folded: an array `==` may become a memcmp call BPF cannot make.
        let mut diff = 0u8;
        for i in 0..6 {
            diff |= mac[i] ^ entry.mac[i];
        }
        if diff != 0 {
            return false;
        }
    }
    true
}

#[inline(always)]
fn record_drop(packet: &Packet, dport: u16, why: u8, hook: u8) {
    // SAFETY: helper with no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // From the segment itself, not the reason: a SYN refused for its binding is still a
    // connection attempt.
    let syn = u64::from(matches!(packet.l4, L4::Tcp { syn: true, .. }));
    let new_source = match DROPS.get_ptr_mut(packet.src) {
        // SAFETY: a per-CPU value: no other program touches this CPU's copy meanwhile.
        Some(s) => unsafe {
            (*s).packets += 1;
            (*s).syns += syn;
            (*s).last_ns = now;
            false
        },
        None => {
            let first = DropStats {
                packets: 1,
                syns: syn,
                last_ns: now,
            };
            // A full LRU map evicts; an error here only loses one count.
            let _ = DROPS.insert(packet.src, first, 0);
            true
        }
    };
    bump(stat::DROPPED);
    if why == reason::FRAGMENT || why == reason::UNPARSEABLE {
        bump(stat::UNPARSEABLE_DROPPED);
    }
    let event = Event {
        ts_ns: now,
        cgroup_id: 0,
        addr: packet.src,
        pid: 0,
        dport,
        family: packet.family,
        hook,
        reason: why,
        _pad: [0; 7],
    };
    // A source not yet in DROPS (the key is shared by all CPUs) always gets its event,
    // whatever the bucket holds: during a flood the one real attempt must still leave a
    // trace. A spoofed flood of new sources is then bounded by the ring buffer, and what does
    // not fit is counted as lost.
    if new_source {
        output(&event);
    } else {
        emit(&event);
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, see `record_drop`.
        unsafe { *counter += 1 };
    }
}

/// Writes an event if this CPU's token bucket allows: a flood of spoofed SYNs must not keep
/// the reader (and the audit log behind it) from everything else. Counters still see it all.
#[inline(always)]
fn emit(event: &Event) {
    let Some(bucket) = RATE.get_ptr_mut(0) else {
        return;
    };
    let rate = EVENT_RATE.load();
    let burst = EVENT_BURST.load();
    // SAFETY: per-CPU slot, see `record_drop`.
    let allowed = unsafe {
        let elapsed = event.ts_ns.saturating_sub((*bucket).last_ns);
        // A plain product, not saturating_mul: that needs a 128-bit multiply BPF lacks. A
        // second or more refills everything; below it the product fits (the loader caps
        // the rate at a million).
        let refill = if elapsed >= 1_000_000_000 {
            burst
        } else {
            elapsed * rate / 1_000_000_000
        };
        if refill > 0 {
            let tokens = (*bucket).tokens.saturating_add(refill);
            (*bucket).tokens = if tokens > burst { burst } else { tokens };
            (*bucket).last_ns = event.ts_ns;
        }
        if (*bucket).tokens > 0 {
            (*bucket).tokens -= 1;
            true
        } else {
            false
        }
    };
    if !allowed {
        bump(stat::EVENTS_RATE_LIMITED);
        return;
    }
    output(event);
}

#[inline(always)]
fn output(event: &Event) {
    match EVENTS.output::<Event>(event, 0) {
        Ok(()) => bump(stat::EVENTS_SENT),
        Err(_) => bump(stat::EVENTS_LOST),
    }
}

#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr; these fields allow 4-byte reads.
    let (ty, port, ip) = unsafe {
        let sa = ctx.sock_addr;
        ((*sa).type_, (*sa).user_port, (*sa).user_ip4)
    };
    if ty != SOCK_STREAM {
        return CONNECT_ALLOW;
    }
    let dport = u16::from_be(port as u16);
    if PORTS.get_ptr(dport).is_none() {
        return CONNECT_ALLOW;
    }
    let addr = v4_mapped(ip.to_ne_bytes());
    if !is_local(&addr) {
        return CONNECT_ALLOW;
    }
    local_verdict(addr, 4, dport)
}

#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `guard_connect4`.
    let (ty, port, ip) = unsafe {
        let sa = ctx.sock_addr;
        ((*sa).type_, (*sa).user_port, (*sa).user_ip6)
    };
    if ty != SOCK_STREAM {
        return CONNECT_ALLOW;
    }
    let dport = u16::from_be(port as u16);
    if PORTS.get_ptr(dport).is_none() {
        return CONNECT_ALLOW;
    }
    let (a, b, c, d) = (
        ip[0].to_ne_bytes(),
        ip[1].to_ne_bytes(),
        ip[2].to_ne_bytes(),
        ip[3].to_ne_bytes(),
    );
    let addr = [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ];
    if !is_local(&addr) {
        return CONNECT_ALLOW;
    }
    local_verdict(addr, 6, dport)
}

/// Loopback, the unspecified address (Linux connects it to the host itself), or one of the
/// host's own addresses. An IPv6 socket reaches IPv4 through `::ffff:a.b.c.d` without ever
/// running the connect4 hook, hence the mapped forms here too.
#[inline(always)]
fn is_local(addr: &[u8; 16]) -> bool {
    let mapped = addr[..10].iter().all(|&x| x == 0) && addr[10] == 0xff && addr[11] == 0xff;
    let v6_prefix_zero = addr[..15].iter().all(|&x| x == 0);
    let local = (mapped && (addr[12] == 127 || addr[12..].iter().all(|&x| x == 0)))
        || (v6_prefix_zero && (addr[15] == 1 || addr[15] == 0));
    local || LOCAL_ADDRS.get_ptr(*addr).is_some()
}

#[inline(always)]
fn local_verdict(addr: [u8; 16], family: u8, dport: u16) -> i32 {
    // Allowing a cgroup allows its whole subtree: services put their workers in children.
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: helper taking a plain level number.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if CGROUP_ALLOW.get_ptr(id).is_some() {
            bump(stat::LOCAL_ALLOWED);
            return CONNECT_ALLOW;
        }
    }
    bump(stat::LOCAL_DENIED);
    // SAFETY: helpers with no arguments.
    let (now, cgroup_id, pid) = unsafe {
        (
            bpf_ktime_get_boot_ns(),
            bpf_get_current_cgroup_id(),
            (bpf_get_current_pid_tgid() >> 32) as u32,
        )
    };
    emit(&Event {
        ts_ns: now,
        cgroup_id,
        addr,
        pid,
        dport,
        family,
        hook: hook::CONNECT,
        reason: reason::LOCAL_CONNECT,
        _pad: [0; 7],
    });
    CONNECT_REFUSE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects any path that could get here.
    loop {}
}

/// GPL-compatible, as the kernel requires for some of the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
