//! The io_uring engine: one tokio-uring runtime per worker thread.
//!
//! Reads and writes hand owned buffers to the kernel and get them back, so the relay's
//! `BytesMut` receive buffer is lent out as its spare capacity and frames are written
//! straight from the `Bytes` the core queued, without copies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tracing::{error, warn};

use super::Shared;
use super::conn::{self, Connect};
use super::transport::Transport;

pub struct UringStream(tokio_uring::net::TcpStream);

impl Drop for UringStream {
    fn drop(&mut self) {
        // An operation still in flight keeps the descriptor open until it completes:
        // a read abandoned by a timeout, on a peer that never sends again, would hold
        // the socket forever. Shutting it down completes that read, so the descriptor
        // is released and the peer sees EOF now, as on the epoll engine.
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport for UringStream {
    async fn read(&self, mut buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut) {
        buf.reserve(min_room);
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.0.read(buf.slice(len..cap)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        self.0.write_all(data).await.0
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    fn peer_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        super::transport::hung_up(self.0.as_raw_fd())
    }

    fn quiet(&self) -> bool {
        use std::os::fd::AsRawFd;
        super::transport::quiet(self.0.as_raw_fd())
    }

    fn set_low_water(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        super::transport::set_low_water(self.0.as_raw_fd(), bytes);
    }
}

pub struct Uring;

impl Connect for Uring {
    type Stream = UringStream;

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        let s = tokio_uring::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(UringStream(s))
    }
}

/// Checks that this process may create an io_uring instance (kernels can disable it
/// with `kernel.io_uring_disabled`, container seccomp profiles often block it).
pub fn probe() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && v.trim() == "2"
    {
        return Err("kernel.io_uring_disabled = 2".into());
    }
    io_uring::IoUring::new(8)
        .map(drop)
        .map_err(|e| format!("io_uring_setup failed: {e}"))
}

/// A worker thread's life: accept on its own listener until the gateway stops.
pub fn worker(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio_uring::start(async move {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            let pool = super::worker_pool::<Uring>(&shared);
            loop {
                tokio::select! {
                    _ = shared.lifecycle.reached(super::Phase::Exiting) => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            tokio_uring::spawn(conn::serve::<Uring>(shared.clone(), pool.clone(), UringStream(stream), peer));
                        }
                        Err(e) => {
                            warn!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            // The accept `select!` abandoned is still in flight and holds the listener
            // open: a connection arriving now would be taken and never served. Shutting
            // the socket down ends that accept, so the port closes at once.
            {
                use std::os::fd::AsRawFd;
                // SAFETY: shutdown(2) on a descriptor this listener owns and still holds.
                unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
            }
            drop(listener);
            super::epoll::wait_for_sessions(&shared).await;
            pool.close_all().await;
        })
    }));
    if result.is_err() {
        error!("an io_uring worker stopped unexpectedly");
    }
}
