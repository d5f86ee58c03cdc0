//! A bare frontend on a TCP socket for what drivers do not send on request: several
//! `Parse`/`Bind`/`Execute` runs before one `Sync`, the shape of a libpq or JDBC pipeline.
//! Replies are decoded just enough to assert on (SQLSTATE, command tags, text rows).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

/// What the backend answered, one entry per message the tests care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    Row(Vec<Option<String>>),
    Complete(String),
    Error {
        code: String,
        message: String,
    },
    Ready(u8),
    /// Anything else (RowDescription, NoData, ParameterStatus, notices…), by tag.
    Other(u8),
}

pub struct Wire {
    s: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
}

impl Wire {
    /// Logs in with SCRAM-SHA-256 and returns at the first `ReadyForQuery`.
    pub fn login(addr: SocketAddr, user: &str, secret: &str, db: &str) -> Wire {
        let s = TcpStream::connect(addr).expect("connect to the gateway");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut w = Wire {
            s,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
        };
        frontend::startup_message([("user", user), ("database", db)], &mut w.out).unwrap();
        w.flush();
        let mut scram = None;
        loop {
            let (tag, body) = w.next();
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        10 => {
                            let sc =
                                ScramSha256::new(secret.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                sc.message(),
                                &mut w.out,
                            )
                            .unwrap();
                            scram = Some(sc);
                        }
                        11 => {
                            let sc = scram.as_mut().expect("SASL continue before SASL");
                            sc.update(&body[4..]).expect("server-first-message");
                            frontend::sasl_response(sc.message(), &mut w.out).unwrap();
                        }
                        12 => scram
                            .as_mut()
                            .expect("SASL final before SASL")
                            .finish(&body[4..])
                            .expect("server signature verifies"),
                        other => panic!("unexpected authentication request {other}"),
                    }
                    w.flush();
                }
                b'E' => panic!("login refused: {:?}", error(&body)),
                b'Z' => return w,
                _ => {}
            }
        }
    }

    /// Queues `Parse` (unnamed), `Bind` (unnamed portal, no parameters, text results),
    /// `Describe` of the portal and `Execute` for `sql`, without a `Sync`.
    pub fn extended(&mut self, sql: &str) {
        let mut body = BytesMut::new();
        body.put_u8(0); // unnamed statement
        put_cstr(&mut body, sql);
        body.put_i16(0); // no parameter types
        self.frame(b'P', &body);
        let mut body = BytesMut::new();
        body.put_u8(0); // unnamed portal
        body.put_u8(0); // unnamed statement
        body.put_i16(0); // no parameter formats
        body.put_i16(0); // no parameters
        body.put_i16(0); // text results
        self.frame(b'B', &body);
        self.frame(b'D', b"P\0");
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_i32(0); // all rows
        self.frame(b'E', &body);
    }

    /// Sends what is queued plus a `Sync` and reads everything up to `ReadyForQuery`.
    pub fn sync(&mut self) -> Vec<Reply> {
        self.frame(b'S', b"");
        self.flush();
        let mut replies = Vec::new();
        loop {
            let (tag, body) = self.next();
            let reply = match tag {
                b'1' => Reply::ParseComplete,
                b'2' => Reply::BindComplete,
                b'D' => Reply::Row(row(&body)),
                b'C' => Reply::Complete(cstr(&body)),
                b'E' => {
                    let (code, message) = error(&body);
                    Reply::Error { code, message }
                }
                b'Z' => Reply::Ready(body[0]),
                // RowDescription, NoData, notices and parameter status: not asserted on.
                other => Reply::Other(other),
            };
            let done = matches!(reply, Reply::Ready(_));
            if !matches!(reply, Reply::Other(_)) {
                replies.push(reply);
            }
            if done {
                return replies;
            }
        }
    }

    fn frame(&mut self, tag: u8, body: &[u8]) {
        self.out.put_u8(tag);
        self.out.put_i32(body.len() as i32 + 4);
        self.out.put_slice(body);
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.s.write_all(&self.out).expect("write to the gateway");
            self.out.clear();
        }
    }

    /// The next whole backend message as (tag, body).
    fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.inbuf.len() >= 5 {
                let len = u32::from_be_bytes(self.inbuf[1..5].try_into().unwrap()) as usize;
                assert!(len >= 4, "backend message length {len}");
                if self.inbuf.len() > len {
                    let msg = self.inbuf.split_to(1 + len);
                    return (msg[0], msg[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).expect("read from the gateway");
            assert!(n > 0, "the gateway closed the connection");
            self.inbuf.put_slice(&chunk[..n]);
        }
    }
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// SQLSTATE and message of an `ErrorResponse` body.
fn error(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

/// The text values of a `DataRow` body.
fn row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut at = 2;
    let mut values = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let end = at + len as usize;
            values.push(Some(String::from_utf8_lossy(&body[at..end]).into_owned()));
            at = end;
        }
    }
    values
}
