//! A synchronous journal: the whole writer's side of a log for a process that writes few
//! records from one thread (`portcullis-guard`), where the gateway's group-commit writer
//! would be machinery for nothing.
//!
//! Records are handed in as bodies, the record without its opening `{"v":1,"seq":N,`:
//! `"time":…,"gateway":…,"kind":…,…}` ([`body`] builds one). The journal alone knows the
//! next index, so it prepends the header; `seq` is then the record's position in the log
//! by construction. [`Journal::push`] only queues; [`Journal::commit`] writes everything
//! queued with one `write`, makes it durable with one `fdatasync`, and only then hands each
//! record to the [`Sealer`], so a checkpoint never covers a record a crash could lose.
//!
//! A commit that fails keeps its records: those not written are written by the next
//! commit, with the same indexes; those written but not synced are synced by it. Without a
//! signer the log is still written, but nothing is sealed and `verify` will say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::checkpoint::LogSigner;
use crate::sealer::{CheckpointPolicy, Opened, SealError, Sealed, Sealer};
use crate::segment::{Recovery, Rotation, SegmentError, Writer};
use crate::witness::Witness;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(
        "audit record body must be the fields of a JSON object after its `{{` (`\"time\":…}}`), got {0:?}"
    )]
    Body(String),
    #[error("encoding an audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How the log is sealed: who signs, when, and who gets copies.
pub struct Sealing {
    pub signer: LogSigner,
    pub policy: CheckpointPolicy,
    pub witnesses: Vec<Box<dyn Witness>>,
}

/// What opening the journal found.
#[derive(Debug)]
pub struct JournalOpened {
    pub recovery: Recovery,
    /// `None` without a signer.
    pub sealer: Option<Opened>,
}

pub struct Journal {
    writer: Writer,
    sealer: Option<Sealer>,
    /// Encoded records not yet written.
    queued: Vec<Vec<u8>>,
    /// Written (in the kernel) but not yet synced, so not yet sealed.
    unsynced: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.writer.dir())
            .field("next_seq", &self.next_seq())
            .field("sealed", &self.sealer.is_some())
            .finish()
    }
}

impl Journal {
    /// Opens the log in `dir` (created if missing), moving a torn tail aside, and, with
    /// `sealing`, rebuilds its tree and checks it against the last checkpoint.
    pub fn open(
        dir: &Path,
        rotation: Rotation,
        sealing: Option<Sealing>,
    ) -> Result<(Self, JournalOpened), JournalError> {
        // The segment writer first: the sealer must not see a torn tail.
        let (writer, recovery) = Writer::open(dir, rotation)?;
        let (sealer, opened) = match sealing {
            Some(s) => {
                let (sealer, opened) = Sealer::open(dir, s.signer, s.policy, s.witnesses)?;
                (Some(sealer), Some(opened))
            }
            None => (None, None),
        };
        let journal = Self {
            writer,
            sealer,
            queued: Vec::new(),
            unsynced: Vec::new(),
        };
        Ok((
            journal,
            JournalOpened {
                recovery,
                sealer: opened,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        self.writer.dir()
    }

    /// The `seq` the next pushed record gets.
    pub fn next_seq(&self) -> u64 {
        self.writer.next_index() + self.queued.len() as u64
    }

    /// Records pushed and not yet durable.
    pub fn pending(&self) -> usize {
        self.queued.len() + self.unsynced.len()
    }

    /// Whether checkpoints are signed at all.
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// Queues a record (see the module doc for `body`); returns its `seq`.
    pub fn push(&mut self, body: &[u8]) -> Result<u64, JournalError> {
        if body.first() != Some(&b'"') || body.last() != Some(&b'}') {
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            return Err(JournalError::Body(shown));
        }
        let seq = self.next_seq();
        self.queued.push(with_seq(seq, body));
        Ok(seq)
    }

    /// Writes and syncs everything pushed, then seals it; returns how many records became
    /// durable.
    pub fn commit(&mut self) -> Result<usize, JournalError> {
        if !self.queued.is_empty() {
            self.writer.append(self.queued.iter().map(Vec::as_slice))?;
            self.unsynced.append(&mut self.queued);
        }
        if self.unsynced.is_empty() {
            return Ok(0);
        }
        self.writer.sync()?;
        if let Some(s) = &mut self.sealer {
            for r in &self.unsynced {
                s.add(r);
            }
        }
        let n = self.unsynced.len();
        self.unsynced.clear();
        Ok(n)
    }

    /// Cuts a checkpoint when the policy says one is due, or with `force` whenever a
    /// durable record is not yet covered (on stop).
    pub fn checkpoint(
        &mut self,
        now: SystemTime,
        force: bool,
    ) -> Result<Option<Sealed>, JournalError> {
        let Some(s) = &mut self.sealer else {
            return Ok(None);
        };
        if !(s.due(now) || force && s.unsealed() > 0) {
            return Ok(None);
        }
        Ok(Some(s.checkpoint(now)?))
    }

    /// The segment being written (for messages).
    pub fn segment(&self) -> PathBuf {
        self.writer.path().to_owned()
    }
}

/// `{"v":1,"seq":N,` + `body`.
pub fn with_seq(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(b"{\"v\":1,\"seq\":");
    // Written into the line: `to_string` would allocate once per record.
    let _ = write!(out, "{seq}");
    out.push(b',');
    out.extend_from_slice(body);
    out
}

/// A record body in the gateway's shape: `"time":"<RFC 3339 µs>","gateway":<source>,`
/// followed by `fields`, which must serialise as a JSON object (its `kind` first, by
/// convention: `#[serde(tag = "kind")]` does that).
pub fn body(
    at: SystemTime,
    source: &str,
    fields: &impl Serialize,
) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"\"time\":\"");
    crate::time::write_micros(at, &mut out);
    out.extend_from_slice(b"\",\"gateway\":");
    serde_json::to_writer(&mut out, source)?;
    out.push(b',');
    let from = out.len();
    serde_json::to_writer(&mut out, fields)?;
    // The fields continue the header's object: drop their own opening brace. An empty
    // object would leave a dangling comma.
    if out.get(from) != Some(&b'{') || out.len() - from < 3 {
        let shown = String::from_utf8_lossy(&out[from..]).into_owned();
        return Err(JournalError::Body(shown));
    }
    out.remove(from);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Rec {
        Ping { n: u32 },
    }

    #[test]
    fn body_continues_the_header_object() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_133_600_000_042);
        let b = body(at, "src/1", &Rec::Ping { n: 7 }).unwrap();
        let line = with_seq(3, &b);
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            r#"{"v":1,"seq":3,"time":"2026-12-01T14:00:00.000042Z","gateway":"src/1","kind":"ping","n":7}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["seq"], 3);
        for seq in [0, 9, 10, 1_234_567, u64::MAX] {
            let line = with_seq(seq, b"\"kind\":\"x\"}");
            assert_eq!(
                line,
                format!("{{\"v\":1,\"seq\":{seq},\"kind\":\"x\"}}").into_bytes()
            );
        }
        assert!(body(at, "s", &serde_json::json!({})).is_err());
        assert!(body(at, "s", &5).is_err());
    }

    #[test]
    fn seq_is_the_position_and_bad_bodies_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, opened) = Journal::open(d.path(), Rotation::default(), None).unwrap();
        assert_eq!(opened.recovery.records, 0);
        assert!(j.push(b"{\"kind\":\"x\"}").is_err());
        assert!(j.push(b"").is_err());
        assert_eq!(j.push(b"\"kind\":\"a\"}").unwrap(), 0);
        assert_eq!(j.push(b"\"kind\":\"b\"}").unwrap(), 1);
        assert_eq!(j.pending(), 2);
        assert_eq!(j.commit().unwrap(), 2);
        assert_eq!(j.commit().unwrap(), 0);
        assert!(j.checkpoint(SystemTime::now(), true).unwrap().is_none());
        drop(j);
        let (mut j, opened) = Journal::open(d.path(), Rotation::default(), None).unwrap();
        assert_eq!(opened.recovery.records, 2);
        assert_eq!(j.push(b"\"kind\":\"c\"}").unwrap(), 2);
        j.commit().unwrap();
        let lines: Vec<String> = crate::segment::Reader::open(d.path(), 0)
            .unwrap()
            .map(|i| match i.unwrap() {
                crate::segment::Item::Record { bytes, .. } => String::from_utf8(bytes).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            lines,
            [
                r#"{"v":1,"seq":0,"kind":"a"}"#,
                r#"{"v":1,"seq":1,"kind":"b"}"#,
                r#"{"v":1,"seq":2,"kind":"c"}"#
            ]
        );
    }
}
