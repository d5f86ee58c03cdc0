//! Syslog: RFC 5424 messages over a unix datagram socket, UDP (RFC 5426) or TCP with
//! octet-counting framing (RFC 6587).
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//! <134>1 2026-12-01T14:00:00.123456Z db-gw-1 portcullis 4242 statement - {"v":1,"seq":…}
//! ```
//!
//! MSGID is the record's kind, MSG the record's JSON (no BOM: several receivers keep it
//! as part of the text), the structured data empty (`-`): everything is in the JSON.
//! Severity follows the kind: warning for refusals and guard bypasses, notice for
//! approvals, configuration reloads and gateway start/stop, informational otherwise.
//!
//! What "acknowledged" means here is as much as each transport can say: a datagram is
//! acknowledged when the kernel took it, a TCP batch when it is written and flushed.
//! Plain TCP syslog has no application-level acknowledgement, so messages in flight
//! when a collector dies can be lost; before each batch the connection is checked for a
//! close from the other side, which catches a collector that went away while idle.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};

use super::config::{SyslogAddress, SyslogTarget};

#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("syslog {what}: no progress within {}s", .after.as_secs_f32())]
    Timeout { what: String, after: Duration },
}

/// Severity (RFC 5424 table 2) for a record kind.
pub fn severity(kind: &str) -> u8 {
    match kind {
        "refusal" | "guard_bypass" | "unparsed" => 4,
        "approval_request" | "approval_decision" | "config_reload" | "gateway_start"
        | "gateway_stop" | "checkpoint" | "console_login" | "console_command" => 5,
        _ => 6,
    }
}

/// A header field as RFC 5424 wants it: printable ASCII, no spaces, at most `max`.
fn field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

/// One RFC 5424 message.
pub fn message(t: &SyslogTarget, procid: u32, timestamp: &str, msgid: &str, msg: &[u8]) -> Vec<u8> {
    let pri = u16::from(t.facility) * 8 + u16::from(severity(msgid));
    let mut out = format!(
        "<{pri}>1 {timestamp} {} {} {procid} {} - ",
        t.hostname,
        t.app_name,
        field(msgid, 32)
    )
    .into_bytes();
    out.extend_from_slice(msg);
    out
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// `msg` cut to at most `max` bytes, not inside a UTF-8 sequence.
fn cut(msg: &[u8], max: usize) -> &[u8] {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while end > 0 && msg[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &msg[..end]
}

enum Conn {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// A syslog transport: connects on first use and again after any failure.
pub struct Syslog {
    target: SyslogTarget,
    conn: Option<Conn>,
    connect_timeout: Duration,
    timeout: Duration,
    procid: u32,
    /// Scratch for a TCP batch.
    buf: Vec<u8>,
}

impl Syslog {
    pub fn new(target: SyslogTarget, connect_timeout: Duration, timeout: Duration) -> Syslog {
        Syslog {
            target,
            conn: None,
            connect_timeout,
            timeout,
            procid: std::process::id(),
            buf: Vec::new(),
        }
    }

    pub fn target(&self) -> &SyslogTarget {
        &self.target
    }

    pub fn procid(&self) -> u32 {
        self.procid
    }

    fn what(&self) -> String {
        match &self.target.address {
            SyslogAddress::Unix(p) => format!("unix:{}", p.display()),
            SyslogAddress::Udp(a) => format!("udp:{a}"),
            SyslogAddress::Tcp(a) => format!("tcp:{a}"),
        }
    }

    async fn connect(&self) -> Result<Conn, SyslogError> {
        let what = self.what();
        let io = |source| SyslogError::Io {
            what: what.clone(),
            source,
        };
        let attempt = async {
            match &self.target.address {
                SyslogAddress::Unix(path) => {
                    let s = UnixDatagram::unbound().map_err(io)?;
                    s.connect(path).map_err(io)?;
                    Ok(Conn::Unix(s))
                }
                SyslogAddress::Udp(addr) => {
                    let peer = tokio::net::lookup_host(addr.as_str())
                        .await
                        .map_err(io)?
                        .next()
                        .ok_or_else(|| io(io::Error::other("the name has no address")))?;
                    let local = if peer.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    };
                    let s = UdpSocket::bind(local).await.map_err(io)?;
                    s.connect(peer).await.map_err(io)?;
                    Ok(Conn::Udp(s))
                }
                SyslogAddress::Tcp(addr) => {
                    let s = TcpStream::connect(addr.as_str()).await.map_err(io)?;
                    s.set_nodelay(true).map_err(io)?;
                    Ok(Conn::Tcp(s))
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| SyslogError::Timeout {
                what: format!("{} (connect)", self.what()),
                after: self.connect_timeout,
            })?
    }

    /// Sends messages built by [`message`], in order. Returns how many datagrams had
    /// to be cut to `max_message`. On error the connection is dropped; the next call
    /// connects again.
    pub async fn send(&mut self, messages: &[Vec<u8>]) -> Result<u64, SyslogError> {
        if let Some(Conn::Tcp(s)) = &self.conn {
            // The collector never talks on plain TCP syslog: readable means closed.
            let mut probe = [0u8; 64];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => self.conn = None,
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let what = self.what();
        let timeout = self.timeout;
        let max = self.target.max_message;
        let mut truncated = 0u64;
        let conn = self.conn.as_mut().expect("connected above");
        let buf = &mut self.buf;
        let attempt = async {
            match conn {
                Conn::Unix(s) => {
                    for m in messages {
                        let out = cut(m, max);
                        truncated += u64::from(out.len() < m.len());
                        s.send(out).await?;
                    }
                }
                Conn::Udp(s) => {
                    for m in messages {
                        let out = cut(m, max);
                        truncated += u64::from(out.len() < m.len());
                        s.send(out).await?;
                    }
                }
                Conn::Tcp(s) => {
                    buf.clear();
                    for m in messages {
                        frame(m, buf);
                    }
                    s.write_all(buf).await?;
                    s.flush().await?;
                }
            }
            Ok::<(), io::Error>(())
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => Ok(truncated),
            Ok(Err(source)) => Err(SyslogError::Io { what, source }),
            Err(_) => Err(SyslogError::Timeout {
                what,
                after: timeout,
            }),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SyslogTarget {
        SyslogTarget {
            address: SyslogAddress::Udp("127.0.0.1:514".into()),
            facility: 16,
            app_name: "portcullis".into(),
            hostname: "db-gw-1".into(),
            max_message: 65_507,
        }
    }

    #[test]
    fn an_rfc5424_line_has_every_header_field() {
        let m = message(
            &target(),
            4242,
            "2026-12-01T14:00:00.123456Z",
            "statement",
            br#"{"v":1}"#,
        );
        assert_eq!(
            String::from_utf8(m).unwrap(),
            r#"<134>1 2026-12-01T14:00:00.123456Z db-gw-1 portcullis 4242 statement - {"v":1}"#
        );
        // local0 (16) * 8 + warning (4)
        let m = message(&target(), 1, "2026-12-01T14:00:00Z", "refusal", b"x");
        assert!(m.starts_with(b"<132>1 "), "{}", String::from_utf8_lossy(&m));
        let m = message(
            &target(),
            1,
            "t",
            "a kind with spaces and more than thirty-two characters",
            b"",
        );
        assert!(
            String::from_utf8(m)
                .unwrap()
                .contains(" a_kind_with_spaces_and_more_than - "),
            "MSGID is printable ASCII, at most 32"
        );
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_bytes() {
        let mut out = Vec::new();
        frame("<134>1 - - - - - - é".as_bytes(), &mut out);
        frame(b"ab", &mut out);
        assert_eq!(out, "21 <134>1 - - - - - - é2 ab".as_bytes());
    }

    #[test]
    fn datagrams_are_cut_on_a_character_boundary() {
        assert_eq!(cut("aé".as_bytes(), 2), b"a");
        assert_eq!(cut(b"abc", 2), b"ab");
        assert_eq!(cut(b"abc", 5), b"abc");
    }
}
