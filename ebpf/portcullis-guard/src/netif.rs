//! Facts about the host's interfaces the loader needs: their own addresses (a local
//! `connect()` to any of them reaches PostgreSQL without crossing an ingress hook, so local
//! mode treats them like loopback) and their link type (which decides where the IP header
//! starts in what XDP and TC see).

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("listing interface addresses: {0}")]
    GetIfAddrs(std::io::Error),
    #[error("reading the link type of interface `{interface}`: {source}")]
    LinkType {
        interface: String,
        source: std::io::Error,
    },
    #[error(
        "interface `{interface}` has link type {arphrd} ({name}), whose packets the guard cannot parse; it guards Ethernet interfaces and interfaces without a link-layer header (tun, WireGuard). Guard the interface the traffic arrives on before it is decapsulated, or not at all: attaching here would protect nothing"
    )]
    Unsupported {
        interface: String,
        arphrd: u16,
        name: &'static str,
    },
}

/// Where the IP header starts in a packet the ingress hooks see on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Behind an Ethernet header (and maybe VLAN tags): Ethernet, veth, bridges, bonds,
    /// VLANs, macvlan, tap, loopback.
    Ethernet,
    /// At offset 0: the interface has no link-layer header (tun, WireGuard, Tailscale).
    RawIp,
}

// From linux/if_arp.h.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 0xfffe;

/// The framing for an `ARPHRD_*` link type, or `None` for types the parser cannot read.
///
/// Only types whose layout at the XDP and TC hooks is known for certain are accepted. IP
/// tunnels with their own ARPHRD (ipip 768, ip6tnl 769, sit 776, GRE 778/823) are refused:
/// GRE in broadcast mode, for one, hands the hooks the outer IP header, and a guard reading
/// that would see a GRE packet from the tunnel's peer and let the inner SYN through.
pub fn framing_of(arphrd: u16) -> Option<Framing> {
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(Framing::Ethernet),
        ARPHRD_NONE => Some(Framing::RawIp),
        _ => None,
    }
}

fn arphrd_name(arphrd: u16) -> &'static str {
    match arphrd {
        24 => "IEEE 1394",
        32 => "InfiniBand",
        280 => "CAN",
        512 => "PPP",
        519 => "raw IP",
        768 => "ipip tunnel",
        769 => "ip6tnl tunnel",
        776 => "sit tunnel",
        778 => "GRE tunnel",
        801..=803 => "802.11",
        823 => "ip6gre tunnel",
        _ => "not Ethernet",
    }
}

/// The interface's framing, from its link type as the kernel reports it
/// (`SIOCGIFHWADDR`, in the caller's network namespace: /sys/class/net may show another).
pub fn framing(interface: &str) -> Result<Framing, NetifError> {
    let arphrd = link_type(interface)?;
    framing_of(arphrd).ok_or_else(|| NetifError::Unsupported {
        interface: interface.to_owned(),
        arphrd,
        name: arphrd_name(arphrd),
    })
}

/// `struct ifreq` as SIOCGIFHWADDR fills it: the name, then a `struct sockaddr` whose family
/// is the ARPHRD type; the union is 24 bytes on 64-bit Linux.
#[repr(C)]
struct IfReqHwAddr {
    name: [u8; libc::IFNAMSIZ],
    family: u16,
    data: [u8; 22],
}

fn link_type(interface: &str) -> Result<u16, NetifError> {
    let err = |source| NetifError::LinkType {
        interface: interface.to_owned(),
        source,
    };
    let name = CString::new(interface)
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    let mut req = IfReqHwAddr {
        name: [0; libc::IFNAMSIZ],
        family: 0,
        data: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket call; the descriptor is owned (and closed) below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq-sized buffer for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(req.family)
}

/// Every address configured on an interface of the current network namespace.
pub fn local_addresses() -> Result<Vec<IpAddr>, NetifError> {
    let mut found: Vec<IpAddr> = interface_addresses()?.into_iter().map(|(_, a)| a).collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// Every (interface name, address) of the current network namespace.
pub fn interface_addresses() -> Result<Vec<(String, IpAddr)>, NetifError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer to a list the kernel allocates; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NetifError::GetIfAddrs(std::io::Error::last_os_error()));
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; each sockaddr matches its family
        // and ifa_name is a NUL-terminated name.
        unsafe {
            let sa = (*cur).ifa_addr;
            let name = std::ffi::CStr::from_ptr((*cur).ifa_name)
                .to_string_lossy()
                .into_owned();
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        let a = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        found.push((name, IpAddr::V4(a)));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        found.push((name, IpAddr::V6(a)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The 16-byte key the kernel side uses: IPv4 as `::ffff:a.b.c.d`.
pub fn addr_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Inverse of [`addr_key`].
pub fn key_addr(key: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let addrs = local_addresses().unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn link_types_map_to_framings() {
        assert_eq!(framing("lo").unwrap(), Framing::Ethernet);
        assert_eq!(framing_of(ARPHRD_ETHER), Some(Framing::Ethernet));
        assert_eq!(framing_of(ARPHRD_NONE), Some(Framing::RawIp));
        for refused in [768, 776, 778, 823, 32] {
            assert_eq!(framing_of(refused), None, "{refused}");
        }
        let err = framing("pc-no-such-if").unwrap_err();
        assert!(err.to_string().contains("`pc-no-such-if`"), "{err}");
    }

    #[test]
    fn keys_round_trip() {
        for a in ["10.0.0.1", "fd00::1", "::1"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(addr_key(a)), a);
        }
    }
}
