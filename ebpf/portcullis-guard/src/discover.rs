//! The TCP ports PostgreSQL listens on, found the way `ss -ltnp` finds them: the socket
//! inodes held open by processes named `postgres`, matched against the listening sockets of
//! the caller's network namespace (`/proc/self/net/tcp{,6}`, which shows only that namespace).
//!
//! This is what `run` protects by default, so a second cluster, a replica or a PostgreSQL
//! moved to another port is covered without anyone remembering to say so. A server started
//! after the guard is not seen until the next `run`.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The process name the postmaster and its children run under.
const POSTGRES_COMM: &str = "postgres";
/// `TCP_LISTEN` in /proc/net/tcp's `st` column.
const LISTEN: &str = "0A";

/// Ports, sorted, that a `postgres` process listens on in this network namespace.
pub fn postgres_ports() -> Result<Vec<u16>, DiscoverError> {
    let ports: BTreeSet<u16> = postgres_listeners()?.into_iter().map(|(_, p)| p).collect();
    Ok(ports.into_iter().collect())
}

/// Every (address, port) a `postgres` process listens on in this network namespace; the
/// unspecified address stands for all of them.
pub fn postgres_listeners() -> Result<Vec<(IpAddr, u16)>, DiscoverError> {
    let inodes = postgres_socket_inodes(Path::new("/proc"));
    let mut found = BTreeSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DiscoverError::Read {
                    path: table.into(),
                    source,
                });
            }
        };
        found.extend(
            listening(&text)
                .filter(|(_, _, inode)| inodes.contains(inode))
                .map(|(addr, port, _)| (addr, port)),
        );
    }
    Ok(found.into_iter().collect())
}

/// Interfaces other than loopback (local mode's business) that carry an address PostgreSQL
/// listens on, and that `guarded` does not name: a way around the guard. `addresses` is
/// every (interface, address) of the namespace.
pub fn unguarded_interfaces(
    listeners: &[(IpAddr, u16)],
    addresses: &[(String, IpAddr)],
    guarded: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = addresses
        .iter()
        .filter(|(name, addr)| {
            !addr.is_loopback()
                && !guarded.contains(name)
                && listeners.iter().any(|(l, _)| {
                    // An IPv4 wildcard covers IPv4 addresses only; an IPv6 one normally
                    // covers both (dual-stack sockets), so count it for both.
                    l == addr || (l.is_unspecified() && (l.is_ipv6() || addr.is_ipv4()))
                })
        })
        .map(|(name, _)| name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Socket inodes open in any process whose `comm` is `postgres`. Processes that exit while
/// being read are skipped: the walk is a snapshot.
fn postgres_socket_inodes(proc: &Path) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    let Ok(entries) = fs::read_dir(proc) else {
        return inodes;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != POSTGRES_COMM {
            continue;
        }
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(t.to_str()?))
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local address, local port, inode) of every listening socket in a /proc/net/tcp or tcp6
/// table.
fn listening(table: &str) -> impl Iterator<Item = (IpAddr, u16, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if cols.len() < 10 || cols[3] != LISTEN {
            return None;
        }
        let (addr, port) = cols[1].rsplit_once(':')?;
        let addr = proc_addr(addr)?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let inode = cols[9].parse().ok()?;
        Some((addr, port, inode))
    })
}

/// /proc/net/tcp prints addresses as the kernel holds them: 32-bit words in host byte order.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => {
            let w = u32::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(w.to_le_bytes())))
        }
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(b);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 4242 1 0 100 0 0 10 0\n\
           1: 0100007F:89DA 0100007F:1538 01 00000000:00000000 03:0000012B 00000000   105        0 4243 3 0\n";
        let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(listening(v4).collect::<Vec<_>>(), vec![(lo4, 5432, 4242)]);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000000000000000000001000000:1920 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 777 1 0 100 0 0 10 0\n";
        let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(listening(v6).collect::<Vec<_>>(), vec![(lo6, 6432, 777)]);
        assert_eq!(listening("header only\n").count(), 0);
    }

    #[test]
    fn addresses_read_as_the_kernel_prints_them() {
        assert_eq!(proc_addr("0A00D20A"), Some("10.210.0.10".parse().unwrap()));
        assert_eq!(
            proc_addr("0002D2FD0A0000000000000001000000"),
            Some("fdd2:200:0:a::1".parse().unwrap())
        );
        assert_eq!(proc_addr("00000000"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(proc_addr("zz"), None);
    }

    #[test]
    fn interfaces_reachable_but_unguarded_are_named() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = vec![
            ("lo".to_string(), a("127.0.0.1")),
            ("eth0".to_string(), a("10.0.0.5")),
            ("eth1".to_string(), a("192.168.1.5")),
            ("eth1".to_string(), a("fd00::5")),
            ("wg0".to_string(), a("10.9.0.1")),
        ];
        let guarded = vec!["eth0".to_string()];
        assert_eq!(
            unguarded_interfaces(&[(a("10.0.0.5"), 5432)], &addrs, &guarded),
            Vec::<String>::new()
        );
        assert_eq!(
            unguarded_interfaces(&[(a("0.0.0.0"), 5432)], &addrs, &guarded),
            vec!["eth1", "wg0"]
        );
        assert_eq!(
            unguarded_interfaces(&[(a("::"), 5432)], &addrs, &guarded),
            vec!["eth1", "wg0"]
        );
        assert_eq!(
            unguarded_interfaces(&[(a("fd00::5"), 5433)], &addrs, &guarded),
            vec!["eth1"]
        );
    }

    #[test]
    fn socket_links_are_told_from_others() {
        assert_eq!(socket_inode("socket:[98765]"), Some(98765));
        assert_eq!(socket_inode("pipe:[98765]"), None);
        assert_eq!(socket_inode("/var/lib/postgresql/x"), None);
    }

    #[test]
    fn finds_nothing_without_postgres() {
        // No process of the test binary is called postgres; a PostgreSQL running elsewhere on
        // the machine may be, so only the walk is checked, not the result.
        let dir = tempfile_dir();
        assert!(postgres_socket_inodes(&dir).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pcg-discover-{}", std::process::id()));
        fs::create_dir_all(d.join("123")).unwrap();
        fs::write(d.join("123/comm"), "bash\n").unwrap();
        d
    }
}
