//! The io_uring engine: one ring ([`super::ring`]) per worker thread, inside a tokio
//! current-thread runtime.
//!
//! Reads and writes hand owned buffers to the kernel and get them back, so the relay's
//! `BytesMut` receive buffer is lent out as its spare capacity and frames are written
//! straight from the `Bytes` the core queued, without copies. Sockets stay in blocking
//! mode: the ring never blocks on them, it waits for them itself.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tracing::{error, warn};

use super::Shared;
use super::conn::{self, Connect};
use super::ring;
use super::transport::Transport;

/// The socket, and the size of its last read: a full one means a stream is under way
/// (see [`super::spin`]).
pub struct UringStream {
    sock: std::net::TcpStream,
    last_read: Cell<usize>,
    /// Whether the socket's `SO_RCVLOWAT` is raised ([`super::batch`]): reads then wait
    /// for the mark before they receive.
    batching: Cell<bool>,
}

impl UringStream {
    fn new(sock: std::net::TcpStream) -> UringStream {
        UringStream {
            sock,
            last_read: Cell::new(0),
            batching: Cell::new(false),
        }
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        // An operation queued but not yet submitted names this descriptor by number:
        // submitted after the close, it would act on whatever socket reuses the number.
        ring::flush();
        // An operation still in flight keeps the socket open until it completes: a read
        // abandoned by a timeout, on a peer that never sends again, would hold it
        // forever. Shutting it down completes that read, so the socket is released and
        // the peer sees EOF now, as on the epoll engine.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport for UringStream {
    async fn read(&self, mut buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut) {
        buf.reserve(min_room);
        let streaming = self.last_read.get() >= super::STREAMING_READ;
        let _watched = super::spin::watch(self.fd(), streaming);
        if self.batching.get()
            && let Err(e) = ring::readable(self.fd()).await
        {
            return (Err(e), buf);
        }
        let (res, buf) = ring::recv(self.fd(), buf).await;
        if let Ok(n) = res {
            self.last_read.set(n);
        }
        (res, buf)
    }

    async fn write_all(&self, mut data: Bytes) -> io::Result<()> {
        // A large write is a stream being delivered, which may wait for the client to
        // drain its socket: no spinning meanwhile.
        let _streaming = (data.len() >= super::STREAMING_READ)
            .then(|| super::spin::watch(self.fd(), true))
            .flatten();
        let mut off = 0;
        while off < data.len() {
            let (res, d) = ring::send(self.fd(), data, off).await;
            data = d;
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    fn peer_closed(&self) -> bool {
        super::transport::hung_up(self.fd())
    }

    fn quiet(&self) -> bool {
        super::transport::quiet(self.fd())
    }

    fn set_low_water(&self, bytes: usize) {
        self.batching.set(bytes > 1);
        super::transport::set_low_water(self.fd(), bytes);
    }
}

pub struct Uring;

impl Connect for Uring {
    type Stream = UringStream;

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // Owned by the stream from here, so a connect abandoned by a timeout is flushed
        // and shut down like any other operation on it.
        let stream = UringStream::new(sock.into());
        ring::connect(stream.fd(), addr.into()).await?;
        stream.sock.set_nodelay(true)?;
        Ok(stream)
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
    let ring_fd = match ring::install() {
        Ok(fd) => fd,
        Err(e) => {
            error!("cannot create an io_uring instance: {e}");
            return;
        }
    };
    let budget = shared.busy_poll;
    if !budget.is_zero() {
        super::spin::enable();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || ring::before_park(budget))
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start an io_uring worker's runtime: {e}");
            ring::uninstall();
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local.block_on(&rt, async move {
            tokio::task::spawn_local(ring::drive(ring_fd));
            // The ring waits for the listener itself: accept must not return EAGAIN.
            if let Err(e) = listener.set_nonblocking(false) {
                error!("cannot prepare the listener: {e}");
                return;
            }
            let pool = super::worker_pool::<Uring>(&shared);
            loop {
                tokio::select! {
                    _ = shared.lifecycle.reached(super::Phase::Exiting) => break,
                    accepted = ring::accept(listener.as_raw_fd()) => match accepted.and_then(accepted_stream) {
                        Ok((stream, peer)) => {
                            tokio::task::spawn_local(conn::serve::<Uring>(shared.clone(), pool.clone(), stream, peer));
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
            ring::flush();
            // SAFETY: shutdown(2) on a descriptor this listener owns and still holds.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
            drop(listener);
            super::epoll::wait_for_sessions(&shared).await;
            pool.close_all().await;
        })
    }));
    drop(local);
    drop(rt);
    ring::uninstall();
    if result.is_err() {
        error!("an io_uring worker stopped unexpectedly");
    }
}

fn accepted_stream(fd: RawFd) -> io::Result<(UringStream, SocketAddr)> {
    // SAFETY: a descriptor accept(2) just created, owned by nobody else.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = sock.peer_addr()?;
    let _ = sock.set_nodelay(true);
    Ok((UringStream::new(sock), peer))
}
