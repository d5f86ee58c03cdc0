//! The host's own addresses: a local `connect()` to any of them reaches PostgreSQL without
//! crossing an ingress hook, so local mode treats them like loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("listing interface addresses: {0}")]
    GetIfAddrs(std::io::Error),
}

/// Every address configured on an interface of the current network namespace.
pub fn local_addresses() -> Result<Vec<IpAddr>, NetifError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer to a list the kernel allocates; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NetifError::GetIfAddrs(std::io::Error::last_os_error()));
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; each sockaddr matches its family.
        unsafe {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found.sort();
    found.dedup();
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
    fn keys_round_trip() {
        for a in ["10.0.0.1", "fd00::1", "::1"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(addr_key(a)), a);
        }
    }
}
