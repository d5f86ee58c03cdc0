//! The lean PostgreSQL client the bench measures with.
//!
//! It speaks the protocol itself over a tokio `TcpStream` so that the client is never the
//! bottleneck: it reads into one large buffer and, for `DataRow` and `CopyData`, looks at the
//! five-byte header only and skips the body, counting rows and bytes. Small control messages
//! (`ErrorResponse`, `CommandComplete`, authentication) are the only ones it looks inside.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scram::{Scram, ScramError};
use crate::sockstat::{self, WireBytes};
use crate::target::ConnInfo;

/// Big enough that a 1 GB result arrives in a few thousand reads, not millions.
const READ_BUF: usize = 1 << 20;
/// A control message larger than this is a protocol error, not something to buffer.
const MAX_CONTROL_MSG: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("SCRAM: {0}")]
    Scram(#[from] ScramError),
    #[error("authentication method {0} is not supported by the bench client")]
    UnsupportedAuth(i32),
}

/// What one round trip returned, counted without decoding.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// `DataRow` plus `CopyData` messages.
    pub rows: u64,
    /// Bytes of those messages, headers included: what the result costs on the wire.
    pub row_bytes: u64,
    /// Every byte read from the socket during the round trip.
    pub read_bytes: u64,
    /// Rows the server says it produced (`SELECT n`, `COPY n` in CommandComplete).
    pub reported_rows: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.rows += o.rows;
        self.row_bytes += o.row_bytes;
        self.read_bytes += o.read_bytes;
        self.reported_rows += o.reported_rows;
    }
}

/// Result formats for the extended protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text = 0,
    Binary = 1,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: BytesMut,
    backend_pid: Option<i32>,
}

impl Conn {
    /// Connects and authenticates (trust, cleartext, md5 or SCRAM-SHA-256).
    pub async fn connect(info: &ConnInfo) -> Result<Conn, WireError> {
        let addr = format!("{}:{}", info.host, info.port);
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| WireError::Connect { addr, source })?;
        // Latency workloads send tiny messages; Nagle would add tens of milliseconds.
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            out: BytesMut::with_capacity(4096),
            backend_pid: None,
        };
        conn.startup(info).await?;
        Ok(conn)
    }

    /// The backend's pid from `BackendKeyData`; through a pooler it is the pooler's fake key.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// The kernel's byte counters for this socket.
    pub fn wire_bytes(&self) -> std::io::Result<WireBytes> {
        sockstat::wire_bytes(&self.stream)
    }

    async fn startup(&mut self, info: &ConnInfo) -> Result<(), WireError> {
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", "portcullis-bench"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.out)?;
        self.flush().await?;
        let mut scram: Option<Scram> = None;
        let mut error = None;
        loop {
            let (tag, body) = self.next_control().await?;
            match tag {
                b'R' => {
                    let code = be_i32(&body, 0)?;
                    match code {
                        0 => {}
                        3 => {
                            frontend::password_message(info.password.as_bytes(), &mut self.out)?;
                            self.flush().await?;
                        }
                        5 => {
                            let salt: [u8; 4] = body
                                .get(4..8)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| proto("short md5 salt"))?;
                            let hash =
                                md5_hash(info.user.as_bytes(), info.password.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut self.out)?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechs = &body[4..];
                            if !mechs.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256") {
                                return Err(proto("server offers no SCRAM-SHA-256"));
                            }
                            let s = Scram::new(&info.password);
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.client_first().as_bytes(),
                                &mut self.out,
                            )?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| proto("SASL continue first"))?;
                            let reply = s.client_final(&body[4..])?;
                            frontend::sasl_response(reply.as_bytes(), &mut self.out)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_ref().ok_or_else(|| proto("SASL final first"))?;
                            s.verify(&body[4..])?;
                        }
                        other => return Err(WireError::UnsupportedAuth(other)),
                    }
                }
                b'K' => self.backend_pid = Some(be_i32(&body, 0)?),
                b'E' => return Err(server_error(&body)),
                b'Z' => return error.map_or(Ok(()), Err),
                b'S' | b'N' => {}
                other => {
                    error = Some(proto(&format!(
                        "unexpected {:?} at start-up",
                        other as char
                    )))
                }
            }
        }
    }

    /// One simple-protocol query; every statement's results are counted.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Counts, WireError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        self.drain_until_ready().await
    }

    /// The first column of the first row as text (for set-up questions, not measurements).
    pub async fn query_scalar(&mut self, sql: &str) -> Result<Option<String>, WireError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut value = None;
        let mut error = None;
        loop {
            let (tag, body) = self.next_control().await?;
            match tag {
                b'D' if value.is_none() => {
                    let len = be_i32(&body, 2)?;
                    if len >= 0 {
                        let v = body
                            .get(6..6 + len as usize)
                            .ok_or_else(|| proto("short DataRow"))?;
                        value = Some(String::from_utf8_lossy(v).into_owned());
                    }
                }
                b'E' => error = Some(server_error(&body)),
                b'Z' => return error.map_or(Ok(value), Err),
                _ => {}
            }
        }
    }

    /// Parse + Bind + Execute + Sync of an unnamed statement in one flight.
    pub async fn extended_query(&mut self, sql: &str, format: Format) -> Result<Counts, WireError> {
        frontend::parse("", sql, std::iter::empty(), &mut self.out)?;
        self.bind_execute("", &[], format)?;
        self.flush().await?;
        self.drain_until_ready().await
    }

    /// Prepares a named statement once (parameters typed by the server).
    pub async fn prepare(&mut self, name: &str, sql: &str) -> Result<(), WireError> {
        frontend::parse(name, sql, std::iter::empty(), &mut self.out)?;
        frontend::sync(&mut self.out);
        self.flush().await?;
        self.drain_until_ready().await.map(|_| ())
    }

    /// Bind + Execute + Sync of a prepared statement with text parameters.
    pub async fn execute_prepared(
        &mut self,
        name: &str,
        params: &[&str],
        format: Format,
    ) -> Result<Counts, WireError> {
        self.bind_execute(name, params, format)?;
        self.flush().await?;
        self.drain_until_ready().await
    }

    fn bind_execute(
        &mut self,
        stmt: &str,
        params: &[&str],
        format: Format,
    ) -> Result<(), WireError> {
        let bound = frontend::bind(
            "",
            stmt,
            std::iter::once(0i16),
            params.iter(),
            |p, buf| {
                buf.put_slice(p.as_bytes());
                Ok(IsNull::No)
            },
            std::iter::once(format as i16),
            &mut self.out,
        );
        if bound.is_err() {
            return Err(proto("bind parameters do not serialise"));
        }
        frontend::execute("", 0, &mut self.out)?;
        frontend::sync(&mut self.out);
        Ok(())
    }

    /// Says goodbye; errors are ignored because the server may already have gone.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads more bytes after `end`, making room first. Returns how many bytes arrived.
    async fn fill(&mut self, want: usize) -> Result<usize, WireError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.start < want || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        self.end += n;
        Ok(n)
    }

    /// The next whole control message: its tag and body (length word excluded).
    async fn next_control(&mut self) -> Result<(u8, Vec<u8>), WireError> {
        while self.end - self.start < 5 {
            self.fill(5).await?;
        }
        let (tag, len) = header(&self.buf[self.start..])?;
        let total = 1 + len;
        if total > MAX_CONTROL_MSG {
            return Err(proto("control message too large"));
        }
        while self.end - self.start < total {
            self.fill(total).await?;
        }
        let body = self.buf[self.start + 5..self.start + total].to_vec();
        self.start += total;
        Ok((tag, body))
    }

    /// Consumes messages up to `ReadyForQuery`, counting rows by their headers alone.
    async fn drain_until_ready(&mut self) -> Result<Counts, WireError> {
        let mut counts = Counts::default();
        let mut error = None;
        let mut skip = 0usize;
        loop {
            if skip > 0 {
                let n = skip.min(self.end - self.start);
                self.start += n;
                skip -= n;
                if skip > 0 {
                    counts.read_bytes += self.fill(1).await? as u64;
                    continue;
                }
            }
            // The hot loop: whole DataRows sitting in the buffer are skipped in place.
            while self.end - self.start >= 5 {
                let (tag, len) = header(&self.buf[self.start..])?;
                if tag != b'D' && tag != b'd' {
                    break;
                }
                counts.rows += 1;
                counts.row_bytes += 1 + len as u64;
                let avail = self.end - self.start;
                if avail > len {
                    self.start += 1 + len;
                } else {
                    self.start = self.end;
                    skip = 1 + len - avail;
                    break;
                }
            }
            if skip > 0 {
                continue;
            }
            if self.end - self.start < 5 {
                counts.read_bytes += self.fill(5).await? as u64;
                continue;
            }
            let (tag, len) = header(&self.buf[self.start..])?;
            let total = 1 + len;
            if total > MAX_CONTROL_MSG {
                return Err(proto("control message too large"));
            }
            while self.end - self.start < total {
                counts.read_bytes += self.fill(total).await? as u64;
            }
            let body = &self.buf[self.start + 5..self.start + total];
            match tag {
                b'Z' => {
                    self.start += total;
                    return error.map_or(Ok(counts), Err);
                }
                b'E' => error = Some(server_error(body)),
                b'C' => counts.reported_rows += command_rows(body),
                b'G' => error = Some(proto("COPY FROM STDIN is not a bench workload")),
                // CommandComplete, RowDescription, ParseComplete, BindComplete, CloseComplete,
                // NoData, ParameterDescription, EmptyQuery, CopyOut, CopyDone, notices...
                _ => {}
            }
            self.start += total;
        }
    }
}

fn header(b: &[u8]) -> Result<(u8, usize), WireError> {
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    if len < 4 {
        return Err(proto("message length below 4"));
    }
    Ok((b[0], len))
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`).
fn command_rows(body: &[u8]) -> u64 {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    tag.rsplit(|b| *b == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .unwrap_or(0)
}

fn be_i32(b: &[u8], at: usize) -> Result<i32, WireError> {
    b.get(at..at + 4)
        .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| proto("short message"))
}

fn proto(msg: &str) -> WireError {
    WireError::Protocol(msg.to_string())
}

fn server_error(body: &[u8]) -> WireError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into_owned(),
            Some(b'M') => message = String::from_utf8_lossy(&field[1..]).into_owned(),
            _ => {}
        }
    }
    WireError::Server { code, message }
}

/// Connects, retrying while the server is still coming up.
pub async fn connect_retry(info: &ConnInfo, within: Duration) -> Result<Conn, WireError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match Conn::connect(info).await {
            Ok(c) => return Ok(c),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_short_length() {
        assert!(header(&[b'D', 0, 0, 0, 3]).is_err());
        assert_eq!(header(&[b'D', 0, 0, 0, 9]).unwrap(), (b'D', 9));
    }

    #[test]
    fn command_complete_rows() {
        assert_eq!(command_rows(b"SELECT 42\0"), 42);
        assert_eq!(command_rows(b"COPY 7\0"), 7);
        assert_eq!(command_rows(b"BEGIN\0"), 0);
    }

    #[test]
    fn server_error_fields() {
        let body = b"SERROR\0C42P01\0Mno such table\0\0";
        match server_error(body) {
            WireError::Server { code, message } => {
                assert_eq!(code, "42P01");
                assert_eq!(message, "no such table");
            }
            e => panic!("{e}"),
        }
    }
}
