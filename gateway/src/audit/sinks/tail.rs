//! Following the durable log from a sink's cursor, the way `tail -f` follows a file.
//!
//! `segment::Reader` is one pass over what is there when it opens: at the end of the
//! log it is done, and starting again at record N reads the segment from its start.
//! A sink that has caught up waits at the end and goes on when more is written, many
//! times a second, so this keeps its place (segment, byte offset, record index) and
//! reads on from there. It follows the segment format of `portcullis_auditlog::segment`
//! (one record a line, the index implicit, the next segment named after its first
//! index) and reads nothing but whole lines: a line still being written is left for the
//! next call.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use portcullis_auditlog::segment::{self, SegmentError};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the next read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Record {
        index: u64,
        bytes: Vec<u8>,
    },
    /// Records `from..to` are not in the log (segments removed, or missing between two
    /// others); reading goes on at `to`.
    Missing {
        from: u64,
        to: u64,
    },
    /// Nothing more is written yet.
    End,
}

struct Open {
    first: u64,
    path: PathBuf,
    file: BufReader<File>,
    /// Where the next line starts.
    offset: u64,
}

pub struct Tail {
    dir: PathBuf,
    next: u64,
    open: Option<Open>,
    line: Vec<u8>,
}

impl Tail {
    /// Reads from record `from` on. Nothing is opened until the first read.
    pub fn new(dir: &Path, from: u64) -> Tail {
        Tail {
            dir: dir.to_owned(),
            next: from,
            open: None,
            line: Vec::new(),
        }
    }

    /// The index of the record the next read returns.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    pub fn read(&mut self) -> Result<Next, TailError> {
        if self.open.is_none() {
            if let Some(missing) = self.position()? {
                return Ok(missing);
            }
            if self.open.is_none() {
                return Ok(Next::End);
            }
        }
        loop {
            let open = self.open.as_mut().expect("positioned above");
            self.line.clear();
            let n = open
                .file
                .read_until(b'\n', &mut self.line)
                .map_err(io_err(&open.path))?;
            if n > 0 && self.line.last() == Some(&b'\n') {
                open.offset += n as u64;
                self.line.pop();
                let index = self.next;
                self.next += 1;
                return Ok(Next::Record {
                    index,
                    bytes: std::mem::take(&mut self.line),
                });
            }
            if n > 0 {
                // Half a line: the writer is mid-write. Come back to its start later
                // (seeking also drops what the buffer read ahead).
                open.file
                    .seek(SeekFrom::Start(open.offset))
                    .map_err(io_err(&open.path))?;
                return Ok(Next::End);
            }
            // The end of this segment: the next one, if the writer has begun it.
            let following = self.dir.join(segment::segment_name(self.next));
            if following.exists() {
                self.open = Some(open_at(self.next, following)?);
                continue;
            }
            let first = open.first;
            let later = segment::list(&self.dir)?
                .into_iter()
                .find(|s| s.first > first);
            return match later {
                // A later segment that does not start where this one ends.
                Some(s) if s.first != self.next => {
                    let from = self.next;
                    self.next = s.first;
                    self.open = Some(open_at(s.first, s.path)?);
                    Ok(Next::Missing { from, to: s.first })
                }
                // Begun between the check and the listing: read it on the next call.
                Some(_) => Ok(Next::End),
                None => Ok(Next::End),
            };
        }
    }

    /// Opens the segment holding record `next` and skips to it. Reports records that
    /// are no longer in the log (the oldest segments removed past the cursor).
    fn position(&mut self) -> Result<Option<Next>, TailError> {
        let all = segment::list(&self.dir)?;
        let Some(oldest) = all.first() else {
            return Ok(None);
        };
        if oldest.first > self.next {
            let from = self.next;
            self.next = oldest.first;
            self.open = Some(open_at(oldest.first, oldest.path.clone())?);
            return Ok(Some(Next::Missing {
                from,
                to: oldest.first,
            }));
        }
        let seg = all
            .iter()
            .rev()
            .find(|s| s.first <= self.next)
            .expect("the oldest starts at or before next");
        let mut open = open_at(seg.first, seg.path.clone())?;
        for _ in seg.first..self.next {
            self.line.clear();
            let n = open
                .file
                .read_until(b'\n', &mut self.line)
                .map_err(io_err(&open.path))?;
            if n == 0 || self.line.last() != Some(&b'\n') {
                // The record is not written yet: try again from the start later.
                return Ok(None);
            }
            open.offset += n as u64;
        }
        self.open = Some(open);
        Ok(None)
    }
}

fn open_at(first: u64, path: PathBuf) -> Result<Open, TailError> {
    let file = File::open(&path).map_err(io_err(&path))?;
    Ok(Open {
        first,
        path,
        file: BufReader::with_capacity(1 << 16, file),
        offset: 0,
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TailError + '_ {
    move |source| TailError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::time::Duration;

    use portcullis_auditlog::segment::{Rotation, Writer};

    use super::*;

    fn rec(index: u64, s: &str) -> Next {
        Next::Record {
            index,
            bytes: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn follows_appends_and_rotations_and_waits_for_whole_lines() {
        let d = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_bytes: 12,
            max_age: Duration::from_secs(3600),
        };
        let mut tail = Tail::new(d.path(), 0);
        assert_eq!(tail.read().unwrap(), Next::End, "no log yet");
        let (mut w, _) = Writer::open(d.path(), rot).unwrap();
        w.append([&b"{\"a\":0}"[..]]).unwrap();
        assert_eq!(tail.read().unwrap(), rec(0, "{\"a\":0}"));
        assert_eq!(tail.read().unwrap(), Next::End);
        for i in 1..5 {
            w.append([format!("{{\"a\":{i}}}").as_bytes()]).unwrap();
        }
        assert!(segment::list(d.path()).unwrap().len() > 2);
        for i in 1..5 {
            assert_eq!(tail.read().unwrap(), rec(i, &format!("{{\"a\":{i}}}")));
        }
        assert_eq!(tail.read().unwrap(), Next::End);

        // Half a record: not returned until its newline is there.
        let path = w.path().to_owned();
        w.rotate().unwrap();
        drop(w);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(segment::segment_name(5)))
            .unwrap();
        assert_ne!(path, d.path().join(segment::segment_name(5)));
        f.write_all(b"{\"a\":").unwrap();
        assert_eq!(tail.read().unwrap(), Next::End);
        f.write_all(b"5}\n").unwrap();
        assert_eq!(tail.read().unwrap(), rec(5, "{\"a\":5}"));

        // Starting in the middle of the log.
        let mut from3 = Tail::new(d.path(), 3);
        assert_eq!(from3.read().unwrap(), rec(3, "{\"a\":3}"));
    }

    #[test]
    fn removed_segments_are_reported_as_missing() {
        let d = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_bytes: 1,
            max_age: Duration::from_secs(3600),
        };
        let (mut w, _) = Writer::open(d.path(), rot).unwrap();
        for _ in 0..5 {
            w.append([&b"{}"[..]]).unwrap();
        }
        std::fs::remove_file(d.path().join(segment::segment_name(0))).unwrap();
        std::fs::remove_file(d.path().join(segment::segment_name(3))).unwrap();
        let mut t = Tail::new(d.path(), 0);
        assert_eq!(t.read().unwrap(), Next::Missing { from: 0, to: 1 });
        assert_eq!(t.read().unwrap(), rec(1, "{}"));
        assert_eq!(t.read().unwrap(), rec(2, "{}"));
        assert_eq!(t.read().unwrap(), Next::Missing { from: 3, to: 4 });
        assert_eq!(t.read().unwrap(), rec(4, "{}"));
        assert_eq!(t.read().unwrap(), Next::End);
    }
}
