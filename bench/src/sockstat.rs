//! Bytes on the wire, from the kernel's own TCP counters rather than estimates.
//!
//! `getsockopt(TCP_INFO)` on the client socket gives `tcpi_bytes_received` (payload the
//! kernel delivered to us) and `tcpi_bytes_acked` (payload we sent that the peer acknowledged).

use std::os::fd::AsRawFd;

/// Cumulative payload bytes of one socket since it opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireBytes {
    pub received: u64,
    pub sent: u64,
}

impl WireBytes {
    pub fn since(&self, earlier: &WireBytes) -> WireBytes {
        WireBytes {
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
        }
    }
}

pub fn wire_bytes(sock: &impl AsRawFd) -> std::io::Result<WireBytes> {
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Kernels older than 4.1 return a shorter struct without these counters.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    if (len as usize) < needed {
        return Err(std::io::Error::other(
            "kernel's TCP_INFO has no byte counters",
        ));
    }
    Ok(WireBytes {
        received: info.tcpi_bytes_received,
        sent: info.tcpi_bytes_acked,
    })
}
