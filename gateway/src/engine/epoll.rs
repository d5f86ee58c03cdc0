//! The epoll engine: one tokio current-thread runtime per worker thread.
//!
//! Sockets are driven by readiness plus `try_read`/`try_write`, which take `&self`, so a
//! socket's reader and writer run side by side in one task without locks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tracing::{error, warn};

use super::Shared;
use super::conn::{self, Connect};
use super::transport::Transport;

/// The socket, and the size of its last read: a full one means a stream is under way
/// (see [`super::spin`]).
pub struct EpollStream(tokio::net::TcpStream, std::cell::Cell<usize>);

impl EpollStream {
    fn new(s: tokio::net::TcpStream) -> EpollStream {
        EpollStream(s, std::cell::Cell::new(0))
    }
}

impl Transport for EpollStream {
    async fn read(&self, mut buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut) {
        buf.reserve(min_room);
        loop {
            // A read that fills less than the room it was given has emptied the socket
            // (epoll is edge-triggered: what arrives later is a new event), so the
            // readiness is cleared there and then, as tokio's own `poll_read` does.
            // Otherwise the next read would be a `recv` that only says WouldBlock: one
            // wasted system call per message. `try_io` clears readiness when its closure
            // says WouldBlock, so the closure says so after a short read and hands the
            // count over on the side.
            let mut short = None;
            let res = self.0.try_io(Interest::READABLE, || {
                let room = buf.capacity() - buf.len();
                let n = self.0.try_read_buf(&mut buf)?;
                if n > 0 && n < room {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            if let Some(n) = short {
                self.1.set(n);
                return (Ok(n), buf);
            }
            match res {
                Ok(n) => {
                    self.1.set(n);
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use std::os::fd::AsRawFd;
                    let streaming = self.1.get() >= super::STREAMING_READ;
                    let _watched = super::spin::watch(self.0.as_raw_fd(), streaming);
                    if let Err(e) = self.0.readable().await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            match self.0.try_write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A full socket is a stream being delivered: no spinning meanwhile.
                    use std::os::fd::AsRawFd;
                    let _streaming = super::spin::watch(self.0.as_raw_fd(), true);
                    self.0.writable().await?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        let _ = socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Both);
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

pub struct Epoll;

impl Connect for Epoll {
    type Stream = EpollStream;

    async fn connect(addr: SocketAddr) -> io::Result<EpollStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(EpollStream::new(s))
    }
}

/// A worker thread's life: accept on its own listener until the gateway stops.
pub fn worker(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let budget = shared.busy_poll;
    if !budget.is_zero() {
        super::spin::enable();
        builder.on_thread_park(move || super::spin::before_park(budget));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start an epoll runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot register the listener: {e}");
                return;
            }
        };
        let pool = super::worker_pool::<Epoll>(&shared);
        loop {
            tokio::select! {
                _ = shared.lifecycle.reached(super::Phase::Exiting) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::task::spawn_local(conn::serve::<Epoll>(shared.clone(), pool.clone(), EpollStream::new(stream), peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        wait_for_sessions(&shared).await;
        pool.close_all().await;
    });
}

/// Lets this worker's sessions finish, within the shutdown grace period set by main.
pub(crate) async fn wait_for_sessions(shared: &Shared) {
    while shared.lifecycle.sessions() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
