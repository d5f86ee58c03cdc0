//! Segment files: the audit log on disk, one record a line.
//!
//! A log is a directory of segments named `seg-<index of its first record, 16 digits>.jsonl`.
//! Each record is one line of JSON ending in `\n`; the record's bytes (the line without
//! its `\n`) are the Merkle leaf, so what is hashed is exactly what is on disk. Record
//! indexes are implicit: the first record of the log is 0 and segments follow each other
//! without gaps, which is how a removed segment is noticed.
//!
//! A line without its `\n` at the very end of the last segment is a torn write (the
//! gateway died mid-`write`). Readers report it; the writer, on opening, moves the torn
//! bytes to `<segment>.torn-<unix time>` for the examiner and carries on after the last
//! whole record, so nothing is ever appended to a half record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "audit log {dir}: segments do not follow each other: {expected} records expected before {found}"
    )]
    Gap {
        dir: PathBuf,
        expected: u64,
        found: PathBuf,
    },
    #[error("audit record has a newline in it; records are single JSON lines")]
    Newline,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One segment file and the index of its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
}

/// The name of the segment whose first record has this index.
pub fn segment_name(first: u64) -> String {
    format!("seg-{first:016}.jsonl")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".jsonl")?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The log's segments in order. Files that are not segments are ignored.
pub fn list(dir: &Path) -> Result<Vec<Segment>, SegmentError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            out.push(Segment {
                first,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

/// What a reader found in one place of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole record: its index and bytes (without the `\n`).
    Record { index: u64, bytes: Vec<u8> },
    /// Bytes after the last `\n` of a segment: a torn write.
    Torn {
        segment: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// A segment starts at another index than the records before it end: records were
    /// removed or added between them (or a segment is missing).
    Gap { expected: u64, segment: Segment },
}

/// Reads the log's records in order from record `from`, reporting torn tails and gaps
/// instead of stopping at them, so a verifier can say exactly what is wrong.
pub struct Reader {
    segments: std::vec::IntoIter<Segment>,
    current: Option<(Segment, BufReader<File>, u64)>,
    next: u64,
    from: u64,
    /// The index the next segment must start at, once one has been read.
    expected: Option<u64>,
    line: Vec<u8>,
}

impl Reader {
    pub fn open(dir: &Path, from: u64) -> Result<Self, SegmentError> {
        let mut all = list(dir)?;
        // Skip segments that end before `from`: the one holding `from` is the last whose
        // first index is <= from.
        let start = all.iter().rposition(|s| s.first <= from).unwrap_or(0);
        all.drain(..start);
        Ok(Self {
            segments: all.into_iter(),
            current: None,
            next: 0,
            from,
            expected: None,
            line: Vec::new(),
        })
    }

    fn next_item(&mut self) -> Result<Option<Item>, SegmentError> {
        loop {
            if self.current.is_none() {
                let Some(seg) = self.segments.next() else {
                    return Ok(None);
                };
                let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
                let gap = self.expected.filter(|&e| e != seg.first);
                self.next = seg.first;
                self.current = Some((seg.clone(), BufReader::with_capacity(1 << 16, file), 0));
                if let Some(expected) = gap {
                    return Ok(Some(Item::Gap {
                        expected,
                        segment: seg,
                    }));
                }
            }
            let (seg, reader, offset) = self.current.as_mut().expect("set above");
            self.line.clear();
            let n = reader
                .read_until(b'\n', &mut self.line)
                .map_err(io_err(&seg.path))?;
            if n == 0 {
                self.expected = Some(self.next);
                self.current = None;
                continue;
            }
            let at = *offset;
            *offset += n as u64;
            if self.line.last() != Some(&b'\n') {
                let item = Item::Torn {
                    segment: seg.path.clone(),
                    offset: at,
                    bytes: std::mem::take(&mut self.line),
                };
                return Ok(Some(item));
            }
            self.line.pop();
            let index = self.next;
            self.next += 1;
            if index >= self.from {
                return Ok(Some(Item::Record {
                    index,
                    bytes: std::mem::take(&mut self.line),
                }));
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Item, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}

/// When a segment is closed and the next begun.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// What opening the log for writing found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records already in the log.
    pub records: u64,
    /// A torn tail moved aside: where it went and how many bytes it had.
    pub torn: Option<(PathBuf, u64)>,
}

/// Appends records to the newest segment, rotating by size and age. Writes go straight
/// to the file (no user-space buffer), so what `append` returned is in the kernel and
/// survives the gateway being killed; `sync` makes it survive the machine.
pub struct Writer {
    dir: PathBuf,
    rotation: Rotation,
    file: File,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
    next: u64,
    scratch: Vec<u8>,
    /// A segment was begun since the last `sync`: the directory entry must be synced too.
    dir_dirty: bool,
}

impl Writer {
    /// Opens the log in `dir` (created if missing) to append after its last whole record.
    pub fn open(dir: &Path, rotation: Rotation) -> Result<(Self, Recovery), SegmentError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = list(dir)?;
        let mut recovery = Recovery::default();
        let Some(last) = segments.last().cloned() else {
            let w = Self::begin(dir, rotation, 0)?;
            return Ok((w, recovery));
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        let mut lines = 0u64;
        let mut whole = 0u64;
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(io_err(&last.path))?;
        for (i, b) in content.iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                whole = i as u64 + 1;
            }
        }
        let len = content.len() as u64;
        if whole < len {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let aside = last.path.with_extension(format!("jsonl.torn-{secs}"));
            fs::write(&aside, &content[whole as usize..]).map_err(io_err(&aside))?;
            file.set_len(whole).map_err(io_err(&last.path))?;
            file.sync_data().map_err(io_err(&last.path))?;
            recovery.torn = Some((aside, len - whole));
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(&last.path))?;
        recovery.records = last.first + lines;
        let w = Self {
            dir: dir.to_owned(),
            rotation,
            file,
            path: last.path,
            bytes: whole,
            opened: Instant::now(),
            next: recovery.records,
            scratch: Vec::new(),
            dir_dirty: false,
        };
        Ok((w, recovery))
    }

    fn begin(dir: &Path, rotation: Rotation, first: u64) -> Result<Self, SegmentError> {
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self {
            dir: dir.to_owned(),
            rotation,
            file,
            path,
            bytes: 0,
            opened: Instant::now(),
            next: first,
            scratch: Vec::new(),
            dir_dirty: true,
        })
    }

    /// The index the next record will get.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records in one `write`; they get consecutive indexes from
    /// [`Writer::next_index`]. On error nothing is counted as written (a partial write is
    /// a torn tail the next `open` moves aside).
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64, SegmentError> {
        if self.bytes > 0
            && (self.bytes >= self.rotation.max_bytes
                || self.opened.elapsed() >= self.rotation.max_age)
        {
            self.rotate()?;
        }
        self.scratch.clear();
        let mut n = 0u64;
        for r in records {
            if memchr::memchr(b'\n', r).is_some() {
                return Err(SegmentError::Newline);
            }
            self.scratch.extend_from_slice(r);
            self.scratch.push(b'\n');
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = self.file.write_all(&self.scratch) {
            // Leave the file as it was, so a failed batch is not a torn record later.
            let _ = self.file.set_len(self.bytes);
            return Err(io_err(&self.path)(e));
        }
        self.bytes += self.scratch.len() as u64;
        self.next += n;
        Ok(n)
    }

    /// Makes everything appended so far survive a crash of the machine.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        if self.dir_dirty {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// A second handle on the segment being written, to sync it without holding the
    /// writer (the directory entry of a new segment is synced here first).
    pub fn sync_handle(&mut self) -> Result<File, SegmentError> {
        if self.dir_dirty {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            self.dir_dirty = false;
        }
        self.file.try_clone().map_err(io_err(&self.path))
    }

    /// Closes the current segment (synced) and begins the next.
    pub fn rotate(&mut self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        let next = Self::begin(&self.dir, self.rotation, self.next)?;
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(dir: &Path) -> Vec<Item> {
        Reader::open(dir, 0).unwrap().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn records_come_back_in_order_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_bytes: 20,
            max_age: Duration::from_secs(3600),
        };
        let (mut w, rec) = Writer::open(d.path(), rot).unwrap();
        assert_eq!(rec.records, 0);
        for i in 0..10 {
            let r = format!("{{\"n\":{i}}}");
            w.append([r.as_bytes()]).unwrap();
        }
        w.sync().unwrap();
        assert!(list(d.path()).unwrap().len() > 2);
        let got = records(d.path());
        assert_eq!(got.len(), 10);
        for (i, item) in got.iter().enumerate() {
            assert_eq!(
                item,
                &Item::Record {
                    index: i as u64,
                    bytes: format!("{{\"n\":{i}}}").into_bytes()
                }
            );
        }
        let from7: Vec<_> = Reader::open(d.path(), 7)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(from7.len(), 3);
        let (w2, rec) = Writer::open(d.path(), rot).unwrap();
        assert_eq!((rec.records, w2.next_index()), (10, 10));
    }

    #[test]
    fn a_torn_tail_is_reported_then_moved_aside_on_open() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(d.path(), Rotation::default()).unwrap();
        w.append([&b"{\"a\":1}"[..], b"{\"a\":2}"]).unwrap();
        let path = w.path().to_owned();
        drop(w);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"a\":")
            .unwrap();
        let got = records(d.path());
        assert!(matches!(&got[2], Item::Torn { offset: 16, .. }), "{got:?}");
        let (mut w, rec) = Writer::open(d.path(), Rotation::default()).unwrap();
        assert_eq!(rec.records, 2);
        let (aside, n) = rec.torn.unwrap();
        assert_eq!((fs::read(&aside).unwrap(), n), (b"{\"a\":".to_vec(), 5));
        w.append([&b"{\"a\":3}"[..]]).unwrap();
        assert_eq!(records(d.path()).len(), 3);
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let d = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_bytes: 1,
            max_age: Duration::from_secs(3600),
        };
        let (mut w, _) = Writer::open(d.path(), rot).unwrap();
        for _ in 0..3 {
            w.append([&b"{}"[..]]).unwrap();
        }
        fs::remove_file(d.path().join(segment_name(1))).unwrap();
        let got = records(d.path());
        assert!(
            matches!(&got[1], Item::Gap { expected: 1, segment } if segment.first == 2),
            "{got:?}"
        );
    }

    #[test]
    fn a_record_with_a_newline_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(d.path(), Rotation::default()).unwrap();
        assert!(matches!(
            w.append([&b"a\nb"[..]]),
            Err(SegmentError::Newline)
        ));
        assert_eq!(w.next_index(), 0);
    }
}
