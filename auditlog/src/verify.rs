//! Offline verification: `portcullis audit verify LOG --public-key KEY [--witness P]...`.
//!
//! Needs nothing but the log directory, the public key and, ideally, checkpoints held
//! elsewhere. It
//! 1. reads every checkpoint in `<log>/checkpoints` and in each witness (a file of notes or
//!    a directory of `checkpoint-*.txt`), keeps those signed by the key, and reports the
//!    ones that are not (bad signature, another key, not a checkpoint at all) and any two
//!    validly signed ones that contradict each other;
//! 2. validates the leaf-hash index (see [`crate::leaves`]) against those checkpoints: the
//!    longest prefix that rebuilds a signed root is trusted;
//! 3. reads every segment in order, recomputes each leaf and the tree, compares each leaf
//!    with the trusted index and the tree with every checkpoint at its size.
//!
//! The first record that differs from the trusted index is named and classified by looking
//! at what follows it: the record sealed at that position reappearing later means records
//! were removed, the record found there reappearing later in the index means records were
//! inserted, two positions holding each other's records means reordering, anything else is
//! alteration (and a run of them, a replaced segment). Without a trusted index (deleted, or
//! altered along with the records) the problem is located between the last checkpoint the
//! log still matches and the first it does not. A checkpoint larger than the log means the
//! log was cut short; only a copy of a checkpoint kept outside the log (a witness) reliably
//! shows that, since whoever cuts the log can cut its `checkpoints` file too.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{CheckpointError, SignedCheckpoint, VerifierKey};
use crate::leaves::{LeafIndex, LeavesError};
use crate::merkle::{Hash, Tree, empty_root, leaf_hash};
use crate::sealer::CHECKPOINTS_FILE;
use crate::segment::{self, Item, Reader, Segment, SegmentError};
use crate::witness::read_notes;

/// How many records after the first difference are looked at to classify it.
const WINDOW: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0} is not an audit log directory")]
    NotALog(PathBuf),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Leaves(#[from] LeavesError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A checkpoint as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    /// The file it was read from.
    pub source: PathBuf,
    /// 1-based line of its first line in that file.
    pub line: usize,
    pub size: u64,
    /// Base64, as in the checkpoint.
    pub root: String,
    /// RFC 3339, when it has a time line.
    pub time: Option<String>,
}

impl CheckpointInfo {
    pub(crate) fn new(source: &Path, line: usize, c: &SignedCheckpoint) -> Self {
        Self {
            source: source.to_owned(),
            line,
            size: c.checkpoint.size,
            root: c.checkpoint.root_b64(),
            time: c.checkpoint.time.map(crate::time::format),
        }
    }
}

impl fmt::Display for CheckpointInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint of {} records at {} ({} line {})",
            self.size,
            self.time.as_deref().unwrap_or("no time"),
            self.source.display(),
            self.line
        )
    }
}

/// A record as reports name it: where it is and what it says in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRef {
    pub index: u64,
    /// Segment file name.
    pub segment: String,
    /// 1-based line in the segment.
    pub line: u64,
    /// `kind` and `time` of a JSON record, or the start of its text.
    pub summary: String,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.segment, self.line, self.summary)
    }
}

/// Something wrong with the log or its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The record at `record.index` is not the one sealed there, nor one sealed nearby;
    /// `count` records in a row differ (a replaced segment shows as a long run).
    Altered {
        record: RecordRef,
        count: u64,
        checkpoint: CheckpointInfo,
    },
    /// `count` sealed records starting at `index` are gone; the log goes on with the one
    /// sealed at `index + count`, now at `next`.
    Removed {
        index: u64,
        count: u64,
        /// Hex leaf hash of the first missing record.
        sealed_leaf: String,
        next: RecordRef,
        checkpoint: CheckpointInfo,
    },
    /// `count` records never sealed stand at `record.index`; the record sealed at that
    /// index follows them.
    Inserted {
        record: RecordRef,
        count: u64,
        checkpoint: CheckpointInfo,
    },
    /// The records at `record.index` and `other.index` hold each other's place.
    Reordered {
        record: RecordRef,
        other: RecordRef,
        checkpoint: CheckpointInfo,
    },
    /// Some record in `from..to` changed, but the leaf index that would name it is missing
    /// or was altered too.
    Unlocated {
        from: u64,
        to: u64,
        /// Segment holding record `from`.
        segment: String,
        checkpoint: CheckpointInfo,
        index: &'static str,
    },
    /// The log has `records` records but a signed checkpoint covers `sealed`.
    Truncated {
        records: u64,
        sealed: u64,
        checkpoint: CheckpointInfo,
    },
    /// A segment does not start where the previous one ended.
    Gap {
        expected: u64,
        segment: String,
        first: u64,
    },
    /// Bytes without a final newline at the end of a segment that is not the last.
    StrayBytes {
        segment: String,
        offset: u64,
        len: u64,
        at: u64,
    },
    /// A signature line of this key that does not verify.
    BadSignature { checkpoint: CheckpointInfo },
    /// A checkpoint signed only by other keys.
    ForeignKey {
        checkpoint: CheckpointInfo,
        signers: Vec<String>,
    },
    /// Text in a checkpoint file that is not a checkpoint.
    Malformed {
        source: PathBuf,
        line: usize,
        error: String,
    },
    /// Two validly signed checkpoints that cannot both describe one append-only log.
    Inconsistent {
        a: CheckpointInfo,
        b: CheckpointInfo,
    },
    /// Records, and no checkpoint signed by the key to check them against.
    NoCheckpoint { records: u64 },
}

impl Problem {
    /// The record position the problem starts at; problems of checkpoints come after all
    /// problems of records.
    fn at(&self) -> (u64, u8) {
        match self {
            Problem::Gap { expected, .. } => (*expected, 0),
            Problem::StrayBytes { at, .. } => (*at, 0),
            Problem::Altered { record, .. }
            | Problem::Inserted { record, .. }
            | Problem::Reordered { record, .. } => (record.index, 1),
            Problem::Removed { index, .. } => (*index, 1),
            Problem::Unlocated { from, .. } => (*from, 1),
            Problem::Truncated { records, .. } => (*records, 2),
            _ => (u64::MAX, 3),
        }
    }
}

/// `record 7` or `records 7..9`.
fn span(from: u64, to_inclusive: u64) -> String {
    if from == to_inclusive {
        format!("record {from}")
    } else {
        format!("records {from}..{to_inclusive}")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered {
                record,
                count: 1,
                checkpoint,
            } => write!(
                f,
                "record {} ({record}) was altered: it is not the record the {checkpoint} sealed",
                record.index
            ),
            Problem::Altered {
                record,
                count,
                checkpoint,
            } => write!(
                f,
                "{} ({record}, and the {} after it) differ from what the {checkpoint} sealed: rewritten or replaced{}",
                span(record.index, record.index + count - 1),
                count - 1,
                if *count as usize >= WINDOW {
                    " (and perhaps more)"
                } else {
                    ""
                }
            ),
            Problem::Removed {
                index,
                count,
                sealed_leaf,
                next,
                checkpoint,
            } => write!(
                f,
                "{} removed: the record the {checkpoint} sealed as number {index} (leaf hash {sealed_leaf}) is missing; the log goes on with the one sealed as {}, now at {next}",
                if *count == 1 {
                    format!("record {index} was")
                } else {
                    format!("{} were", span(*index, index + count - 1))
                },
                index + count
            ),
            Problem::Inserted {
                record,
                count,
                checkpoint,
            } => write!(
                f,
                "{} inserted at {}: {record} was never sealed; the record the {checkpoint} sealed as number {} comes {} later",
                plural(*count, "record", "records"),
                record.index,
                record.index,
                plural(*count, "record", "records"),
            ),
            Problem::Reordered {
                record,
                other,
                checkpoint,
            } => write!(
                f,
                "records {} and {} were reordered: {record} is the record the {checkpoint} sealed as number {}, and {other} the one it sealed as number {}",
                record.index, other.index, other.index, record.index
            ),
            Problem::Unlocated {
                from,
                to,
                segment,
                checkpoint,
                index,
            } => write!(
                f,
                "a record among {from}..{} (from {segment}) was altered, removed, inserted or reordered: the log matches what was sealed up to record {from} but not the {checkpoint}; the leaf index that would name the record {index}",
                to - 1
            ),
            Problem::Truncated {
                records,
                sealed,
                checkpoint,
            } => write!(
                f,
                "the log was cut short: it has {records} records but the {checkpoint} proves {sealed} existed; {} missing",
                span(*records, sealed - 1)
            ),
            Problem::Gap {
                expected,
                segment,
                first,
            } if first > expected => write!(
                f,
                "{} missing: {segment} starts at record {first} but the segments before it hold only {expected} records (a segment was removed or cut)",
                span(*expected, first - 1),
            ),
            Problem::Gap {
                expected,
                segment,
                first,
            } => write!(
                f,
                "{segment} starts at record {first} but the segments before it already hold {expected} records: a segment was inserted or renamed"
            ),
            Problem::StrayBytes {
                segment,
                offset,
                len,
                ..
            } => write!(
                f,
                "{segment} ends with {len} bytes without a newline at offset {offset} though it is not the last segment: bytes were appended to a closed segment"
            ),
            Problem::BadSignature { checkpoint } => write!(
                f,
                "the {checkpoint} carries a signature of this key that does not verify: it was altered or forged"
            ),
            Problem::ForeignKey {
                checkpoint,
                signers,
            } => write!(
                f,
                "the {checkpoint} is not signed by this key (signed by {}): forged or re-signed, or the wrong public key",
                signers.join(", ")
            ),
            Problem::Malformed {
                source,
                line,
                error,
            } => write!(
                f,
                "{} line {line} is not a checkpoint: {error}",
                source.display()
            ),
            Problem::Inconsistent { a, b } => write!(
                f,
                "the {a} and the {b} are both signed by this key but cannot describe the same log: the key signed two histories (a split view, or the key was stolen)"
            ),
            Problem::NoCheckpoint { records } => write!(
                f,
                "none of the {records} records is covered by a checkpoint signed by this key: nothing in the log can be verified"
            ),
        }
    }
}

/// What a source of checkpoints held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceTally {
    pub source: PathBuf,
    /// Notes read.
    pub notes: usize,
    /// Signed by the key, for this log's origin.
    pub verified: usize,
    /// Signed by the key for another origin (another log sharing the witness), ignored.
    pub other_origin: usize,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dir: PathBuf,
    pub intact: bool,
    pub records: u64,
    pub segments: usize,
    pub sources: Vec<SourceTally>,
    /// The largest checkpoint signed by the key that the log matches.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Records past every checkpoint (no larger than the log): nothing vouches for them yet.
    pub unsealed: u64,
    /// Leaf hashes of the index that rebuild a signed root (0: no usable index).
    pub leaf_index_trusted: u64,
    /// Every problem, the first (lowest record position) first.
    pub problems: Vec<Problem>,
    /// What is worth knowing but is no tampering: torn writes, unsealed records.
    pub notes: Vec<String>,
}

impl Report {
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verified: usize = self.sources.iter().map(|s| s.verified).sum();
        let tally: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{}: {}", s.source.display(), s.verified))
            .collect();
        if self.intact {
            write!(f, "intact: {} records", self.records)?;
            match &self.last_checkpoint {
                Some(c) => writeln!(
                    f,
                    ", last {c}, root {}; {} verified ({})",
                    c.root,
                    plural(verified as u64, "checkpoint", "checkpoints"),
                    tally.join(", ")
                )?,
                None => writeln!(f, ", no checkpoint")?,
            }
        } else {
            writeln!(f, "TAMPERED: {}", self.dir.display())?;
            if let Some(p) = self.problems.first() {
                writeln!(f, "first problem: {p}")?;
            }
            if self.problems.len() > 1 {
                writeln!(f, "also:")?;
                for p in self.problems.iter().skip(1).take(20) {
                    writeln!(f, "  - {p}")?;
                }
                if self.problems.len() > 21 {
                    writeln!(f, "  - and {} more", self.problems.len() - 21)?;
                }
            }
            write!(
                f,
                "{} records in {} segments; ",
                self.records, self.segments
            )?;
            match &self.last_checkpoint {
                Some(c) => writeln!(f, "the log matches up to the {c}")?,
                None => writeln!(f, "the log matches no checkpoint")?,
            }
            writeln!(
                f,
                "{} signed by this key ({})",
                plural(verified as u64, "checkpoint", "checkpoints"),
                tally.join(", ")
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// A checkpoint signed by the key, and where it was found.
struct Valid {
    info: CheckpointInfo,
    root: Hash,
}

/// Verifies the log in `dir` with `key` against its own checkpoints and the witnesses'.
pub fn verify(dir: &Path, key: &VerifierKey, witnesses: &[PathBuf]) -> Result<Report, VerifyError> {
    if !dir.is_dir() {
        return Err(VerifyError::NotALog(dir.to_owned()));
    }
    let segments = segment::list(dir)?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut sources = Vec::new();

    // 1. Checkpoints.
    let origin = key.name.clone();
    let mut valid: Vec<Valid> = Vec::new();
    let local = dir.join(CHECKPOINTS_FILE);
    for (path, is_local) in
        std::iter::once((&local, true)).chain(witnesses.iter().map(|w| (w, false)))
    {
        let found = match read_notes(path) {
            Ok(n) => n,
            Err(e) if is_local && e.kind() == io::ErrorKind::NotFound => {
                notes.push(format!(
                    "{} does not exist: the log has no checkpoints of its own",
                    path.display()
                ));
                continue;
            }
            Err(source) => {
                return Err(VerifyError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        let mut tally = SourceTally {
            source: path.clone(),
            notes: found.len(),
            ..SourceTally::default()
        };
        for n in found {
            let c = match n.parsed {
                Ok(c) => c,
                Err(e) if n.last_in_file => {
                    notes.push(format!(
                        "{} line {}: the last checkpoint of the file is unreadable, as a write cut short by a crash leaves it ({e})",
                        n.path.display(),
                        n.line
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(Problem::Malformed {
                        source: n.path,
                        line: n.line,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            if origin.as_ref().is_some_and(|o| *o != c.checkpoint.origin) {
                tally.other_origin += 1;
                continue;
            }
            let info = CheckpointInfo::new(&n.path, n.line, &c);
            match c.verify(key) {
                Ok(()) => {
                    tally.verified += 1;
                    valid.push(Valid {
                        info,
                        root: c.checkpoint.root,
                    });
                }
                Err(CheckpointError::NotSignedByKey { signers, .. }) => {
                    problems.push(Problem::ForeignKey {
                        checkpoint: info,
                        signers,
                    });
                }
                Err(_) => problems.push(Problem::BadSignature { checkpoint: info }),
            }
        }
        if tally.other_origin > 0 {
            notes.push(format!(
                "{}: {} checkpoints of other logs (origin not {:?}) ignored",
                path.display(),
                tally.other_origin,
                origin.as_deref().unwrap_or_default()
            ));
        }
        sources.push(tally);
    }
    // Local copies first among equals, so reports name the log's own checkpoint when a
    // witness holds the same one.
    valid.sort_by_key(|v| v.info.size);
    for pair in valid.windows(2) {
        if pair[0].info.size == pair[1].info.size && pair[0].root != pair[1].root {
            problems.push(Problem::Inconsistent {
                a: pair[0].info.clone(),
                b: pair[1].info.clone(),
            });
        }
    }

    // 2. The leaf index: trusted as far as it rebuilds a signed root.
    let index = LeafIndex::open(dir)?;
    let mut trusted = 0u64;
    let mut index_roots: Vec<(u64, Hash)> = Vec::new();
    if let Some(idx) = &index {
        let mut t = Tree::new();
        let mut vi = valid.iter().peekable();
        let mut check = |t: &Tree, vi: &mut std::iter::Peekable<std::slice::Iter<'_, Valid>>| {
            while let Some(v) = vi.next_if(|v| v.info.size == t.size()) {
                if v.root == t.root() {
                    trusted = trusted.max(t.size());
                }
                index_roots.push((t.size(), t.root()));
            }
        };
        check(&t, &mut vi);
        for h in idx.iter()? {
            t.push(h?);
            check(&t, &mut vi);
            if vi.peek().is_none() {
                break;
            }
        }
        if trusted == 0
            && valid
                .iter()
                .any(|v| v.info.size > 0 && v.info.size <= idx.len())
        {
            notes.push(format!(
                "the leaf index {} rebuilds no signed root: it was altered or damaged and is not used",
                dir.join(crate::leaves::FILE_NAME).display()
            ));
        }
        // Signed checkpoints within the trusted prefix must agree with it, or the key
        // signed two histories (equal sizes were compared above).
        if let Some(anchor) = valid.iter().find(|v| v.info.size == trusted && trusted > 0) {
            for v in valid.iter().filter(|v| v.info.size < trusted) {
                let sealed = index_roots.iter().find(|(s, _)| *s == v.info.size);
                if sealed.is_some_and(|(_, r)| *r != v.root) {
                    problems.push(Problem::Inconsistent {
                        a: v.info.clone(),
                        b: anchor.info.clone(),
                    });
                }
            }
        }
    } else if !valid.is_empty() {
        notes.push(
            "no leaf index (leaves): a changed record is located between two checkpoints, not named".into(),
        );
    }

    // 3. The records.
    let last_segment = segments.last().map(|s| s.path.clone());
    let mut tree = Tree::new();
    let mut sealed_iter = match (&index, trusted) {
        (Some(idx), t) if t > 0 => Some(idx.iter()?),
        _ => None,
    };
    let mut first_diff: Option<u64> = None;
    let mut window: Vec<(Hash, u64)> = Vec::new();
    let mut matched: Option<usize> = None;
    // The first checkpoint the log does not match, and the size of the last it matched
    // before that.
    let mut first_mismatch: Option<(usize, u64)> = None;
    let mut ci = 0;
    let compare = |tree: &Tree,
                   ci: &mut usize,
                   matched: &mut Option<usize>,
                   first_mismatch: &mut Option<(usize, u64)>| {
        while *ci < valid.len() && valid[*ci].info.size == tree.size() {
            let root = if tree.size() == 0 {
                empty_root()
            } else {
                tree.root()
            };
            if valid[*ci].root == root {
                // The first of equal checkpoints names it: the log's own copy sorts first.
                if matched.is_none_or(|m| valid[m].info.size < tree.size()) {
                    *matched = Some(*ci);
                }
            } else if first_mismatch.is_none() {
                *first_mismatch = Some((*ci, matched.map_or(0, |m| valid[m].info.size)));
            }
            *ci += 1;
        }
    };
    compare(&tree, &mut ci, &mut matched, &mut first_mismatch);
    // A missing first segment leaves no gap between two segments to see.
    if let Some(first) = segments.first()
        && first.first != 0
    {
        problems.push(Problem::Gap {
            expected: 0,
            segment: file_name(&first.path),
            first: first.first,
        });
    }
    for item in Reader::open(dir, 0)? {
        match item? {
            Item::Record { index: at, bytes } => {
                let p = tree.size();
                let h = leaf_hash(&bytes);
                if p < trusted
                    && let Some(it) = sealed_iter.as_mut()
                {
                    let sealed = it.next().transpose()?;
                    if first_diff.is_none() && sealed != Some(h) {
                        first_diff = Some(p);
                    }
                }
                if first_diff.is_some() && window.len() < WINDOW {
                    window.push((h, at));
                }
                tree.push(h);
                compare(&tree, &mut ci, &mut matched, &mut first_mismatch);
            }
            Item::Torn {
                segment,
                offset,
                bytes,
            } => {
                if Some(&segment) == last_segment.as_ref() {
                    notes.push(format!(
                        "{} ends with {} bytes without a newline at offset {offset}: a write cut short by a crash, not part of the log (the writer moves it aside when it next opens the log)",
                        segment.display(),
                        bytes.len()
                    ));
                } else {
                    problems.push(Problem::StrayBytes {
                        segment: file_name(&segment),
                        offset,
                        len: bytes.len() as u64,
                        at: tree.size(),
                    });
                }
            }
            Item::Gap { expected, segment } => problems.push(Problem::Gap {
                expected,
                segment: file_name(&segment.path),
                first: segment.first,
            }),
        }
    }
    drop(sealed_iter);
    let records = tree.size();

    if let Some(k) = first_diff
        && let Some(idx) = &index
    {
        // Name the first checkpoint that sealed record k, among those the index vouches for.
        let sealer = valid
            .iter()
            .find(|v| v.info.size > k && index_roots.contains(&(v.info.size, v.root)))
            .map(|v| v.info.clone());
        let sealed_end = trusted.min(k + WINDOW as u64);
        let mut sealed = Vec::with_capacity((sealed_end - k) as usize);
        for i in k..sealed_end {
            sealed.extend(idx.get(i)?);
        }
        if let Some(sealer) = sealer {
            problems.push(classify(dir, &segments, k, &window, &sealed, sealer)?);
        }
    } else if let Some((bad, from)) = first_mismatch {
        problems.push(Problem::Unlocated {
            from,
            to: valid[bad].info.size,
            segment: segment_of(&segments, from)
                .map(|s| file_name(&s.path))
                .unwrap_or_default(),
            checkpoint: valid[bad].info.clone(),
            index: if index.is_none() {
                "is missing"
            } else {
                "was altered too, or does not reach that far"
            },
        });
    }
    // Among the checkpoints past the end, name the largest: it shows how much is missing.
    if let Some(beyond) = valid
        .iter()
        .filter(|v| v.info.size > records)
        .max_by_key(|v| v.info.size)
    {
        problems.push(Problem::Truncated {
            records,
            sealed: beyond.info.size,
            checkpoint: beyond.info.clone(),
        });
    }
    if records > 0 && valid.is_empty() {
        problems.push(Problem::NoCheckpoint { records });
    }
    problems.sort_by_key(Problem::at);

    let last_checkpoint = matched.map(|m| valid[m].info.clone());
    // Records past every checkpoint: nothing could tell if they were changed.
    let covered = valid
        .iter()
        .map(|v| v.info.size)
        .filter(|&s| s <= records)
        .max();
    let unsealed = records - covered.unwrap_or(0);
    if unsealed > 0 && covered.is_some() {
        notes.push(format!(
            "{} after the last checkpoint not sealed yet: a change to them cannot be detected until the next checkpoint",
            plural(unsealed, "record", "records")
        ));
    }
    notes.extend(torn_files(dir)?);
    Ok(Report {
        dir: dir.to_owned(),
        intact: problems.is_empty(),
        records,
        segments: segments.len(),
        sources,
        last_checkpoint,
        unsealed,
        leaf_index_trusted: trusted,
        problems,
        notes,
    })
}

/// Names what happened at position `k`, the first whose record differs from the sealed
/// one. `found[i]` is the record now at `k + i` (hash, index in the log); `sealed[i]` the
/// hash sealed at `k + i`.
fn classify(
    dir: &Path,
    segments: &[Segment],
    k: u64,
    found: &[(Hash, u64)],
    sealed: &[Hash],
    checkpoint: CheckpointInfo,
) -> Result<Problem, VerifyError> {
    let r = |i: usize| found.get(i).map(|f| f.0);
    let s = |i: usize| sealed.get(i).copied();
    let here = |i: usize| describe(dir, segments, found.get(i).map_or(k + i as u64, |f| f.1));
    // Each pattern also asks the next position to line up, so that one coincidence is not
    // taken for a shift.
    let lines_up = |fi: usize, si: usize| match (r(fi + 1), s(si + 1)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if let (Some(r0), Some(s0)) = (r(0), s(0)) {
        if let Some(j) =
            (1..found.len().min(sealed.len())).find(|&j| r0 == sealed[j] && found[j].0 == s0)
        {
            return Ok(Problem::Reordered {
                record: here(0)?,
                other: here(j)?,
                checkpoint,
            });
        }
        if let Some(d) = (1..sealed.len()).find(|&d| sealed[d] == r0 && lines_up(0, d)) {
            return Ok(Problem::Removed {
                index: k,
                count: d as u64,
                sealed_leaf: hex::encode(s0),
                next: here(0)?,
                checkpoint,
            });
        }
        if let Some(d) = (1..found.len()).find(|&d| found[d].0 == s0 && lines_up(d, 0)) {
            return Ok(Problem::Inserted {
                record: here(0)?,
                count: d as u64,
                checkpoint,
            });
        }
    }
    let run = (0..found.len().min(sealed.len()))
        .take_while(|&i| found[i].0 != sealed[i])
        .count()
        .max(1);
    Ok(Problem::Altered {
        record: here(0)?,
        count: run as u64,
        checkpoint,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn segment_of(segments: &[Segment], index: u64) -> Option<&Segment> {
    segments.iter().rev().find(|s| s.first <= index)
}

/// Where record `index` is and what it says, read again from the log.
pub(crate) fn describe(
    dir: &Path,
    segments: &[Segment],
    index: u64,
) -> Result<RecordRef, VerifyError> {
    let seg = segment_of(segments, index);
    let mut summary = String::from("(not in the log)");
    for item in Reader::open(dir, index)? {
        if let Item::Record { index: i, bytes } = item?
            && i == index
        {
            summary = summarize(&bytes);
            break;
        }
    }
    Ok(RecordRef {
        index,
        segment: seg.map(|s| file_name(&s.path)).unwrap_or_default(),
        line: seg.map_or(0, |s| index - s.first + 1),
        summary,
    })
}

/// `kind "x", time T` for a gateway record; the first 80 characters otherwise.
pub(crate) fn summarize(bytes: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let field = |k: &str| m.get(k).map(|v| v.to_string());
        let parts: Vec<String> = [
            ("kind", field("kind")),
            ("time", field("time")),
            ("seq", field("seq")),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
        .collect();
        if !parts.is_empty() {
            return parts.join(", ");
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        s.push('…');
    }
    s
}

/// Torn writes the segment writer and the sealer moved aside.
fn torn_files(dir: &Path) -> Result<Vec<String>, VerifyError> {
    let err = |source| VerifyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(err)? {
        let e = e.map_err(err)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".torn-") {
            let len = e.metadata().map_err(err)?.len();
            out.push(format!(
                "{name}: {} cut short by a crash and moved aside by the writer (not part of the log)",
                plural(len, "byte", "bytes")
            ));
        }
    }
    out.sort();
    Ok(out)
}
