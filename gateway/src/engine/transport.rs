//! The one I/O shape both engines provide, and TLS on top of it.
//!
//! A [`Transport`] reads into an owned buffer and writes owned bytes, through `&self`, so
//! the reader and the writer of one socket can run as separate futures of one task. That
//! is io_uring's model (buffers are lent to the kernel and handed back); the epoll engine
//! implements it with readiness plus `try_read`/`try_write`.
//!
//! TLS is [`rustls`] driven sans-IO over any transport: ciphertext in, plaintext out.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// A connected byte stream.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Appends what arrives to `buf` (reserving `min_room` spare bytes first) and
    /// returns the buffer with the count; 0 means the peer closed.
    async fn read(&self, buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut);
    /// Writes all of `data`.
    async fn write_all(&self, data: Bytes) -> io::Result<()>;
    /// Shuts both directions down, waking a pending read.
    fn shutdown(&self);
    /// Whether the peer has hung up, asked without reading anything (a session holding
    /// a statement must not consume what the client pipelined behind it).
    fn peer_closed(&self) -> bool;
    /// Whether nothing has arrived and the peer has not hung up: an idle upstream
    /// connection that fails this was closed by the server or has something unasked
    /// for waiting, and is not handed to another session.
    fn quiet(&self) -> bool;
    /// Sets how many bytes must have arrived before a pending read wakes
    /// (`SO_RCVLOWAT`; see [`super::batch`]). A read still takes whatever is there.
    fn set_low_water(&self, bytes: usize);
}

/// `SO_RCVLOWAT` on `fd`. Lowering it wakes a read that the new mark satisfies.
pub fn set_low_water(fd: std::os::fd::RawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to a c_int that outlives the call and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // Only a closed or foreign descriptor fails here; the read that follows says so.
        tracing::debug!("SO_RCVLOWAT {v}: {}", io::Error::last_os_error());
    }
}

/// Asks the kernel whether `fd` has nothing to read and its peer has not hung up,
/// without reading.
pub fn quiet(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0: poll only fills in `revents`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

/// Asks the kernel whether the peer of `fd` closed its side, without reading.
pub fn hung_up(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0: poll only fills in `revents`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// A transport that may have been upgraded to TLS.
pub enum MaybeTls<T> {
    Plain(T),
    /// Boxed: a TLS session's state is large and plaintext sessions should not carry it.
    Tls(Box<TlsTransport<T>>),
}

impl<T: Transport> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The negotiated TLS version (`TLSv1.3`), for the audit record of the session.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(t) => Some(match t.conn.borrow().protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            }),
        }
    }
}

impl<T: Transport> Transport for MaybeTls<T> {
    async fn read(&self, buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut) {
        match self {
            MaybeTls::Plain(t) => t.read(buf, min_room).await,
            MaybeTls::Tls(t) => t.read(buf, min_room).await,
        }
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        match self {
            MaybeTls::Plain(t) => t.write_all(data).await,
            MaybeTls::Tls(t) => t.write_all(data).await,
        }
    }

    fn shutdown(&self) {
        match self {
            MaybeTls::Plain(t) => t.shutdown(),
            MaybeTls::Tls(t) => t.shutdown(),
        }
    }

    fn peer_closed(&self) -> bool {
        match self {
            MaybeTls::Plain(t) => t.peer_closed(),
            MaybeTls::Tls(t) => t.inner.peer_closed(),
        }
    }

    fn quiet(&self) -> bool {
        match self {
            MaybeTls::Plain(t) => t.quiet(),
            MaybeTls::Tls(t) => t.quiet(),
        }
    }

    fn set_low_water(&self, bytes: usize) {
        match self {
            MaybeTls::Plain(t) => t.set_low_water(bytes),
            MaybeTls::Tls(t) => t.set_low_water(bytes),
        }
    }
}

/// TLS over a transport, with rustls doing the records.
pub struct TlsTransport<T> {
    inner: T,
    conn: RefCell<rustls::Connection>,
    /// Ciphertext received and not yet handed to rustls.
    cipher_in: RefCell<BytesMut>,
    /// Serialises ciphertext writes: records must reach the wire in the order rustls made
    /// them, and both the reader (handshake, alerts) and the writer produce some.
    write_lock: tokio::sync::Mutex<()>,
}

impl<T: Transport> TlsTransport<T> {
    pub fn server(inner: T, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self::new(inner, conn.into()))
    }

    pub fn client(
        inner: T,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Self::new(inner, conn.into()))
    }

    fn new(inner: T, conn: rustls::Connection) -> Self {
        Self {
            inner,
            conn: RefCell::new(conn),
            cipher_in: RefCell::new(BytesMut::new()),
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs the TLS handshake to completion.
    pub async fn handshake(&self) -> io::Result<()> {
        loop {
            self.flush_tls().await?;
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            if !self.pull().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// Writes whatever records rustls has queued.
    async fn flush_tls(&self) -> io::Result<()> {
        let _guard = self.write_lock.lock().await;
        let out = {
            let mut conn = self.conn.borrow_mut();
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
            out
        };
        if out.is_empty() {
            return Ok(());
        }
        self.inner.write_all(Bytes::from(out)).await
    }

    /// Reads ciphertext and hands it to rustls; false at end of stream.
    async fn pull(&self) -> io::Result<bool> {
        let buf = std::mem::take(&mut *self.cipher_in.borrow_mut());
        let (res, mut buf) = self.inner.read(buf, 16 * 1024).await;
        let n = res?;
        let processed = {
            let mut conn = self.conn.borrow_mut();
            let mut slice = &buf[..];
            let mut result = Ok(());
            while !slice.is_empty() {
                match conn.read_tls(&mut slice) {
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                if let Err(e) = conn.process_new_packets() {
                    result = Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    break;
                }
            }
            let consumed = buf.len() - slice.len();
            bytes::Buf::advance(&mut buf, consumed);
            result
        };
        *self.cipher_in.borrow_mut() = buf;
        // Alerts and handshake replies go out even when processing failed.
        self.flush_tls().await?;
        processed?;
        Ok(n > 0)
    }
}

impl<T: Transport> Transport for TlsTransport<T> {
    async fn read(&self, mut buf: BytesMut, min_room: usize) -> (io::Result<usize>, BytesMut) {
        loop {
            {
                let mut conn = self.conn.borrow_mut();
                let mut reader = conn.reader();
                buf.reserve(min_room);
                let start = buf.len();
                buf.resize(buf.capacity(), 0);
                match reader.read(&mut buf[start..]) {
                    Ok(n) => {
                        buf.truncate(start + n);
                        return (Ok(n), buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
                    Err(e) => {
                        buf.truncate(start);
                        return (Err(e), buf);
                    }
                }
            }
            match self.pull().await {
                Ok(true) => {}
                // A peer that closes without close_notify: end of stream all the same.
                Ok(false) => return (Ok(0), buf),
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        self.conn.borrow_mut().writer().write_all(&data)?;
        self.flush_tls().await
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn peer_closed(&self) -> bool {
        self.inner.peer_closed()
    }

    fn quiet(&self) -> bool {
        // Records already received but not read count as something waiting.
        let buffered = self
            .conn
            .borrow_mut()
            .process_new_packets()
            .map_or(true, |s| s.plaintext_bytes_to_read() > 0);
        !buffered && self.cipher_in.borrow().is_empty() && self.inner.quiet()
    }

    fn set_low_water(&self, bytes: usize) {
        self.inner.set_low_water(bytes);
    }
}
