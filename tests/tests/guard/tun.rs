//! A tun device held open by the test, standing in for the database host's end of a
//! WireGuard (or any layer-3) link: the IP packets the test writes into it arrive on the
//! database host from "the far end", and the host's answers come back out of it. No link-layer
//! header on either side, as on WireGuard and Tailscale.

use std::{
    fs::File,
    io::{Read, Write},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETLINK: libc::c_ulong = 0x4004_54cd;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: a name and flags, padded to the union's size.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tun device inside a network namespace. Dropping it closes the descriptor, which
/// removes the device (it is not persistent); removing the namespace would too.
pub struct Tun {
    file: File,
}

impl Tun {
    /// Creates tun device `name` inside namespace `ns` (which must exist). With `link_type`,
    /// the device reports that ARPHRD type instead of `ARPHRD_NONE` (TUNSETLINK), which is how
    /// a test gets an interface type the guard must refuse without a tunnel kernel module.
    pub fn create(ns: &str, name: &str, link_type: Option<u16>) -> Tun {
        let ns = ns.to_owned();
        let name = name.to_owned();
        // setns changes the calling thread only: do it on a thread of its own, so the test's
        // other threads stay in the host's namespace. The descriptor outlives the thread.
        std::thread::spawn(move || {
            let netns = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            // SAFETY: a valid namespace descriptor; affects this thread only.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            let fd = File::options()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("open /dev/net/tun");
            let mut req = IfReqFlags {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TUN | IFF_NO_PI,
                _pad: [0; 22],
            };
            assert!(name.len() < libc::IFNAMSIZ, "{name}: too long");
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: `req` is an ifreq-sized buffer for the duration of the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
            assert_eq!(
                rc,
                0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            if let Some(t) = link_type {
                // SAFETY: TUNSETLINK takes the type by value.
                let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETLINK, libc::c_ulong::from(t)) };
                assert_eq!(rc, 0, "TUNSETLINK {t}: {}", std::io::Error::last_os_error());
            }
            Tun { file: fd }
        })
        .join()
        .expect("the tun thread panicked")
    }

    /// Writes one IP packet into the device: the kernel receives it on the interface.
    pub fn send(&mut self, packet: &[u8]) {
        self.file
            .write_all(packet)
            .expect("write to the tun device");
    }

    /// Waits up to `secs` for the database's SYN-ACK to `to:sport` from port `dport`, reading
    /// and discarding whatever else the host sends (router solicitations, retransmissions).
    pub fn syn_ack(&mut self, to: Ipv4Addr, sport: u16, dport: u16, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            if ready <= 0 {
                continue;
            }
            let n = self.file.read(&mut buf).expect("read from the tun device");
            if is_syn_ack(&buf[..n], to, sport, dport) {
                return true;
            }
        }
    }
}

fn is_syn_ack(p: &[u8], to: Ipv4Addr, sport: u16, dport: u16) -> bool {
    if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let Some(tcp) = p.get(ihl..ihl + 20) else {
        return false;
    };
    p[16..20] == to.octets()
        && u16::from_be_bytes([tcp[0], tcp[1]]) == dport
        && u16::from_be_bytes([tcp[2], tcp[3]]) == sport
        && tcp[13] & 0x12 == 0x12
}

/// An IPv4 TCP SYN from `src:sport` to `dst:dport`, checksums included (the kernel drops a
/// segment with a bad one before TCP sees it, which would make a "dropped" result meaningless).
pub fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
