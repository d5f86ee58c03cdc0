//! Header walking shared by the XDP and TC programs: Ethernet (up to two VLAN tags) or, on
//! interfaces without a link-layer header (tun, WireGuard), the IP header at offset 0; then IPv4
//! with options, IPv6 with the extension headers that can be skipped safely, then TCP.
//!
//! The walk answers one question: is this TCP, and to which port? Where it cannot answer for a
//! packet that is or may be TCP (non-first fragments, truncated headers, too long an extension
//! chain) it says so, and the caller drops it unless the source is allowed: guessing would let a
//! crafted packet through. Everything it cannot recognise as IP passes, because the kernel's
//! own stack discards malformed IP before TCP could see it.

use core::mem::size_of;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use portcullis_common::{MAX_IPV6_EXT_HEADERS, reason, v4_mapped};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Past this offset we stop walking: keeps every packet offset provably bounded for the
/// verifier, and no legitimate TCP/IP header stack is that long.
const MAX_L4_OFFSET: usize = 512;

const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The readable part of a packet: `[start, end)` in kernel memory.
pub struct Bounds {
    start: usize,
    end: usize,
}

impl Bounds {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The only way packet memory is read: the check against `end` is what the verifier needs
    /// to see before every access.
    #[inline(always)]
    fn ptr_at<T>(&self, offset: usize) -> Option<*const T> {
        if self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *const T)
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `offset` are in the packet;
        // every `T` read here is a byte array or plain-integer header with no invalid values.
        self.ptr_at::<T>(offset)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}

/// What the walk found above IP.
#[derive(Clone, Copy)]
pub enum L4 {
    /// Not TCP: never the guard's business.
    Other,
    /// A TCP segment to `dport`; `syn` when it opens a connection (SYN without ACK).
    Tcp { dport: u16, syn: bool },
    /// TCP, or possibly TCP, whose port cannot be read; `reason` is a [`reason`] constant.
    Unknown { reason: u8 },
}

/// An IP packet's source and what it carries.
pub struct Packet {
    /// IPv4 sources as `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    pub family: u8,
    pub l4: L4,
    /// The Ethernet source address; `None` on interfaces without a link-layer header.
    pub mac: Option<[u8; 6]>,
}

/// Walks the headers of an Ethernet frame. `None` means not IP, or an IP header too short to
/// read, both of which pass untouched.
#[inline(always)]
pub fn ethernet(b: &Bounds) -> Option<Packet> {
    let eth: EthHdr = b.read(0)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut off = EthHdr::LEN;
    // 802.1Q / 802.1ad: the real EtherType follows each 4-byte tag. Without this a tagged
    // frame would reach the stack unparsed, and a VLAN sub-interface would be a way around.
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let inner: [u8; 2] = b.read(off + 2)?;
        ether_type = u16::from_be_bytes(inner);
        off += 4;
    }
    let mut packet = match ether_type {
        ETH_P_IPV4 => parse_v4(b, off),
        ETH_P_IPV6 => parse_v6(b, off),
        _ => None,
    }?;
    packet.mac = Some(eth.src_addr);
    Some(packet)
}

/// Walks the headers of a packet that starts at its IP header: what XDP and TC see on an
/// interface with no link-layer header (`ARPHRD_NONE`: tun, WireGuard). The version nibble
/// says which IP it is, as it does for the kernel's own receive path.
///
/// Unlike on Ethernet, where ARP and the rest are none of the guard's business, such an
/// interface carries nothing but IP: anything else means the packet is not laid out as the
/// loader expected. It has no source an allowlist could name (it is reported as `::`), so it
/// is dropped: a misjudged interface stays closed instead of open.
#[inline(always)]
pub fn raw_ip(b: &Bounds) -> Option<Packet> {
    // The smallest IP header, not one byte: LLVM turns a one-byte bounds check into a form
    // the verifier cannot follow. Anything shorter is no IP packet; the stack discards it.
    let head: [u8; Ipv4Hdr::LEN] = b.read(0)?;
    match head[0] >> 4 {
        4 => parse_v4(b, 0),
        6 => parse_v6(b, 0),
        _ => Some(Packet {
            src: [0; 16],
            family: 6,
            l4: L4::Unknown {
                reason: reason::UNPARSEABLE,
            },
            mac: None,
        }),
    }
}

#[inline(always)]
fn parse_v4(b: &Bounds, off: usize) -> Option<Packet> {
    let ip: Ipv4Hdr = b.read(off)?;
    let src = v4_mapped(ip.src_addr);
    let packet = |l4| {
        Some(Packet {
            src,
            family: 4,
            l4,
            mac: None,
        })
    };
    if ip.proto != IPPROTO_TCP {
        return packet(L4::Other);
    }
    let fragment_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
    if fragment_offset != 0 {
        return packet(L4::Unknown {
            reason: reason::FRAGMENT,
        });
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return packet(L4::Unknown {
            reason: reason::UNPARSEABLE,
        });
    }
    packet(parse_tcp(b, off + ihl))
}

#[inline(always)]
fn parse_v6(b: &Bounds, off: usize) -> Option<Packet> {
    let ip: Ipv6Hdr = b.read(off)?;
    let src = ip.src_addr;
    let packet = |l4| {
        Some(Packet {
            src,
            family: 6,
            l4,
            mac: None,
        })
    };
    let mut next = ip.next_hdr;
    let mut off = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return packet(parse_tcp(b, off)),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            }
            // ESP, no-next-header, UDP, ICMPv6, …: nothing the guard protects, or nothing it
            // can see into.
            _ => return packet(L4::Other),
        }
        let Some(hdr) = b.read::<[u8; 4]>(off) else {
            return packet(L4::Unknown {
                reason: reason::UNPARSEABLE,
            });
        };
        let len = match next {
            IPPROTO_FRAGMENT => {
                let fragment_offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                if fragment_offset != 0 {
                    // Only the first fragment carries the TCP header; for the others the
                    // fragment header still names the upper protocol.
                    return packet(match hdr[0] {
                        IPPROTO_TCP | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_AH => {
                            L4::Unknown {
                                reason: reason::FRAGMENT,
                            }
                        }
                        _ => L4::Other,
                    });
                }
                8
            }
            // AH counts its length in 4-byte units, minus 2.
            IPPROTO_AH => (hdr[1] as usize + 2) * 4,
            _ => (hdr[1] as usize + 1) * 8,
        };
        next = hdr[0];
        off += len;
        if off > MAX_L4_OFFSET {
            break;
        }
    }
    if next == IPPROTO_TCP && off <= MAX_L4_OFFSET {
        return packet(parse_tcp(b, off));
    }
    // A chain longer than we walk may hide TCP behind it: refuse rather than guess.
    packet(L4::Unknown {
        reason: reason::UNPARSEABLE,
    })
}

#[inline(always)]
fn parse_tcp(b: &Bounds, off: usize) -> L4 {
    if off > MAX_L4_OFFSET {
        return L4::Unknown {
            reason: reason::UNPARSEABLE,
        };
    }
    // One read of the whole fixed header: a second, separate bounds check for the flags
    // byte gets merged by LLVM into a form the verifier cannot follow.
    match b.read::<[u8; TcpHdr::LEN]>(off) {
        Some(tcp) => L4::Tcp {
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            syn: tcp[TCP_FLAGS_OFFSET] & (TCP_SYN | TCP_ACK) == TCP_SYN,
        },
        None => L4::Unknown {
            reason: reason::UNPARSEABLE,
        },
    }
}
