//! The sealer: what the gateway's audit writer thread calls to keep the Merkle tree over the
//! records it has written and to cut signed checkpoints of it.
//!
//! The writer appends records with [`crate::segment::Writer`], makes them durable, then hands
//! each one to [`Sealer::add`] in the same order; when [`Sealer::due`] says so it calls
//! [`Sealer::checkpoint`], which
//! 1. writes the leaf hashes added since the last checkpoint to `<log>/leaves` and syncs it
//!    (see [`crate::leaves`]: that is what lets `verify` name the exact record altered),
//! 2. signs the tree's size and root (see [`crate::checkpoint`]) and appends the note to
//!    `<log>/checkpoints`, synced: a checkpoint is only handed out once it is durable,
//! 3. pushes it to every witness; a witness that fails is reported in [`Sealed`] and the log
//!    carries on.
//!
//! All of it runs on the writer's thread, so nothing here locks.
//!
//! On [`Sealer::open`] the tree is rebuilt from the segments (they are the truth; the leaf
//! index may lag behind them after a crash and is repaired) and checked against the last
//! checkpoint the log signed: a log that no longer matches its own checkpoint is refused,
//! since sealing on top of it would vouch for whatever changed it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::checkpoint::{Checkpoint, LogSigner, SignedCheckpoint, split_notes};
use crate::leaves::{LeafIndex, LeafWriter, LeavesError};
use crate::merkle::{Hash, Tree, leaf_hash};
use crate::segment::{Item, Reader, SegmentError};
use crate::witness::{Witness, WitnessError, append_note};

/// The log's own copy of its checkpoints.
pub const CHECKPOINTS_FILE: &str = "checkpoints";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Leaves(#[from] LeavesError),
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "audit log {dir}: segments do not follow each other ({expected} records expected before {segment}); run `portcullis audit verify`"
    )]
    Gap {
        dir: PathBuf,
        expected: u64,
        segment: PathBuf,
    },
    #[error(
        "audit log {dir} has {records} records but its last checkpoint covers {sealed}: records were removed; run `portcullis audit verify`"
    )]
    Shorter {
        dir: PathBuf,
        records: u64,
        sealed: u64,
    },
    #[error(
        "audit log {dir} no longer matches its checkpoint of {size} records: records were altered; run `portcullis audit verify`"
    )]
    Diverged { dir: PathBuf, size: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_owned(),
        source,
    }
}

/// When checkpoints are cut: after `every_records` records or `every_secs` seconds since
/// the last one, whichever comes first, and never with nothing new to seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub every_secs: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_records: 1000,
            every_secs: 60,
        }
    }
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub records: u64,
    /// The last checkpoint the log signed (size, time), if any.
    pub last_checkpoint: Option<(u64, Option<u64>)>,
    /// How long rebuilding the tree from the segments took.
    pub rebuild: Duration,
    /// Leaf hashes rewritten because the index lagged behind or disagreed with the segments.
    pub leaves_repaired: u64,
    /// A checkpoint cut short by a crash, moved here.
    pub torn_checkpoint: Option<PathBuf>,
}

/// A checkpoint just cut, and the witnesses that did not take it.
#[derive(Debug)]
pub struct Sealed {
    pub checkpoint: SignedCheckpoint,
    pub witness_failures: Vec<(String, WitnessError)>,
}

pub struct Sealer {
    dir: PathBuf,
    signer: LogSigner,
    policy: CheckpointPolicy,
    witnesses: Vec<Box<dyn Witness>>,
    tree: Tree,
    leaves: LeafWriter,
    /// Leaf hashes added since the last checkpoint, not yet in the index.
    pending: Vec<u8>,
    /// Where `pending` starts in the index.
    pending_from: u64,
    last: Option<SignedCheckpoint>,
    /// When the last checkpoint was cut (or the sealer opened, before the first).
    last_at: SystemTime,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("dir", &self.dir)
            .field("size", &self.tree.size())
            .field(
                "witnesses",
                &self.witnesses.iter().map(|w| w.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Sealer {
    /// Opens the sealer of the log in `dir` (open the segment [`crate::segment::Writer`]
    /// first, so a torn tail is already moved aside). The checkpoints' origin is the
    /// signer's key name.
    pub fn open(
        dir: &Path,
        signer: LogSigner,
        policy: CheckpointPolicy,
        witnesses: Vec<Box<dyn Witness>>,
    ) -> Result<(Self, Opened), SealError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let started = Instant::now();
        let (last, torn_checkpoint) = last_own_checkpoint(dir, &signer)?;
        let sealed = last.as_ref().map_or(0, |c| c.checkpoint.size);

        let index = LeafIndex::open(dir)?;
        let mut old = match &index {
            Some(i) => Some(i.iter()?),
            None => None,
        };
        let mut leaves = LeafWriter::open(dir).map_err(io_err(dir))?;
        let mut tree = Tree::new();
        let mut root_at_sealed = (sealed == 0).then(|| tree.root());
        // The first position where the index is missing or wrong; rewritten from there.
        let mut repair_from: Option<u64> = None;
        let mut repair = Vec::new();
        for item in Reader::open(dir, 0)? {
            match item? {
                Item::Record { bytes, .. } => {
                    let h = leaf_hash(&bytes);
                    let at = tree.size();
                    if repair_from.is_none() {
                        let on_file = old.as_mut().and_then(Iterator::next).transpose()?;
                        if on_file != Some(h) {
                            repair_from = Some(at);
                        }
                    }
                    if repair_from.is_some() {
                        repair.extend_from_slice(&h);
                    }
                    tree.push(h);
                    if tree.size() == sealed {
                        root_at_sealed = Some(tree.root());
                    }
                }
                // Not part of the log: the segment writer moves it aside.
                Item::Torn { .. } => {}
                Item::Gap { expected, segment } => {
                    return Err(SealError::Gap {
                        dir: dir.to_owned(),
                        expected,
                        segment: segment.path,
                    });
                }
            }
        }
        drop(old);
        if let Some(last) = &last {
            match root_at_sealed {
                None => {
                    return Err(SealError::Shorter {
                        dir: dir.to_owned(),
                        records: tree.size(),
                        sealed,
                    });
                }
                Some(r) if r != last.checkpoint.root => {
                    return Err(SealError::Diverged {
                        dir: dir.to_owned(),
                        size: sealed,
                    });
                }
                Some(_) => {}
            }
        }
        let from = repair_from.unwrap_or(tree.size());
        let stale = index.as_ref().map_or(0, |i| i.len());
        if repair_from.is_some() || stale > tree.size() {
            leaves.truncate(from).map_err(io_err(&leaves.path))?;
            leaves
                .write_at(from, &repair)
                .map_err(io_err(&leaves.path))?;
            leaves.sync().map_err(io_err(&leaves.path))?;
        }
        let opened = Opened {
            records: tree.size(),
            last_checkpoint: last
                .as_ref()
                .map(|c| (c.checkpoint.size, c.checkpoint.time)),
            rebuild: started.elapsed(),
            leaves_repaired: tree.size() - from,
            torn_checkpoint,
        };
        let last_at = last
            .as_ref()
            .and_then(|c| c.checkpoint.time)
            .map_or_else(SystemTime::now, |t| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(t)
            });
        let sealer = Self {
            dir: dir.to_owned(),
            signer,
            policy,
            witnesses,
            pending_from: tree.size(),
            tree,
            leaves,
            pending: Vec::new(),
            last,
            last_at,
        };
        Ok((sealer, opened))
    }

    /// Adds the next record (its bytes as written, without the `\n`). Call it for every
    /// record, in order, once the record is durable.
    pub fn add(&mut self, record: &[u8]) {
        let h = leaf_hash(record);
        self.tree.push(h);
        self.pending.extend_from_slice(&h);
    }

    /// Records added so far (the log's size).
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    pub fn last_checkpoint(&self) -> Option<&SignedCheckpoint> {
        self.last.as_ref()
    }

    /// Records not yet covered by a checkpoint.
    pub fn unsealed(&self) -> u64 {
        self.tree.size() - self.last.as_ref().map_or(0, |c| c.checkpoint.size)
    }

    /// Whether the policy asks for a checkpoint now.
    pub fn due(&self, now: SystemTime) -> bool {
        let new = self.unsealed();
        let elapsed = now.duration_since(self.last_at).unwrap_or_default();
        new > 0 && (new >= self.policy.every_records || elapsed.as_secs() >= self.policy.every_secs)
    }

    /// Signs a checkpoint of everything added so far, stores it durably, then gives it to
    /// the witnesses. An error means no checkpoint was cut (the next call tries again).
    pub fn checkpoint(&mut self, now: SystemTime) -> Result<Sealed, SealError> {
        let path = self.leaves.path.clone();
        self.leaves
            .write_at(self.pending_from, &self.pending)
            .map_err(io_err(&path))?;
        self.leaves.sync().map_err(io_err(&path))?;
        self.pending_from = self.tree.size();
        self.pending.clear();

        let signed = self.signer.sign(Checkpoint {
            origin: self.signer.name().to_owned(),
            size: self.tree.size(),
            root: self.tree.root(),
            time: Some(crate::time::unix_secs(now)),
            extensions: Vec::new(),
        });
        let file = self.dir.join(CHECKPOINTS_FILE);
        append_note(&file, &signed).map_err(io_err(&file))?;
        self.last = Some(signed.clone());
        self.last_at = now;

        let mut witness_failures = Vec::new();
        for w in &mut self.witnesses {
            if let Err(e) = w.push(&signed) {
                witness_failures.push((w.name(), e));
            }
        }
        Ok(Sealed {
            checkpoint: signed,
            witness_failures,
        })
    }
}

/// The last checkpoint in `<dir>/checkpoints` signed by `signer`. A last note cut short by
/// a crash is moved to `checkpoints.torn-<unix time>` so the next one starts clean.
fn last_own_checkpoint(
    dir: &Path,
    signer: &LogSigner,
) -> Result<(Option<SignedCheckpoint>, Option<PathBuf>), SealError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let verifier = signer.verifier();
    let notes = split_notes(&bytes);
    let mut torn = None;
    if let Some(last) = notes.last()
        && crate::checkpoint::SignedCheckpoint::parse(last.bytes).is_err()
    {
        let at = last.bytes.as_ptr() as usize - bytes.as_ptr() as usize;
        let secs = crate::time::unix_secs(SystemTime::now());
        let aside = dir.join(format!("{CHECKPOINTS_FILE}.torn-{secs}"));
        fs::write(&aside, last.bytes).map_err(io_err(&aside))?;
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.set_len(at as u64).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        torn = Some(aside);
    }
    let last = notes
        .iter()
        .filter_map(|n| SignedCheckpoint::parse(n.bytes).ok())
        .filter(|c| c.verify(&verifier).is_ok())
        .max_by_key(|c| c.checkpoint.size);
    Ok((last, torn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::VerifierKey;
    use crate::segment::{Rotation, Writer};
    use crate::witness::{DirWitness, FileWitness, read_notes};

    fn signer() -> LogSigner {
        LogSigner::new("test/log", ed25519_dalek::SigningKey::from_bytes(&[3; 32])).unwrap()
    }

    fn write(w: &mut Writer, s: &mut Sealer, n: u64) {
        for _ in 0..n {
            let r = format!("{{\"v\":1,\"kind\":\"test\",\"seq\":{}}}", w.next_index());
            w.append([r.as_bytes()]).unwrap();
            w.sync().unwrap();
            s.add(r.as_bytes());
        }
    }

    struct Failing;
    impl Witness for Failing {
        fn name(&self) -> String {
            "failing".into()
        }
        fn push(&mut self, _: &SignedCheckpoint) -> Result<(), WitnessError> {
            Err(WitnessError::Other {
                name: self.name(),
                message: "down".into(),
            })
        }
    }

    #[test]
    fn checkpoints_follow_the_policy_and_reach_the_witnesses() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let (mut w, _) = Writer::open(&log, Rotation::default()).unwrap();
        let policy = CheckpointPolicy {
            every_records: 10,
            every_secs: 60,
        };
        let witnesses: Vec<Box<dyn Witness>> = vec![
            Box::new(FileWitness::new(d.path().join("w.txt"))),
            Box::new(DirWitness::new(d.path().join("wdir"))),
            Box::new(Failing),
        ];
        let (mut s, opened) = Sealer::open(&log, signer(), policy, witnesses).unwrap();
        assert_eq!(opened.records, 0);
        let t0 = SystemTime::now();
        assert!(!s.due(t0));
        write(&mut w, &mut s, 9);
        assert!(!s.due(t0));
        assert!(s.due(t0 + Duration::from_secs(61)));
        write(&mut w, &mut s, 1);
        assert!(s.due(t0));
        let sealed = s.checkpoint(t0).unwrap();
        assert_eq!(sealed.checkpoint.checkpoint.size, 10);
        assert_eq!(sealed.witness_failures.len(), 1);
        sealed.checkpoint.verify(&signer().verifier()).unwrap();
        assert!(!s.due(t0 + Duration::from_secs(3600)));
        write(&mut w, &mut s, 5);
        s.checkpoint(t0 + Duration::from_secs(5)).unwrap();
        for p in [
            log.join(CHECKPOINTS_FILE),
            d.path().join("w.txt"),
            d.path().join("wdir"),
        ] {
            let sizes: Vec<u64> = read_notes(&p)
                .unwrap()
                .into_iter()
                .map(|n| n.parsed.unwrap().checkpoint.size)
                .collect();
            assert_eq!(sizes, vec![10, 15], "{p:?}");
        }
        let idx = LeafIndex::open(&log).unwrap().unwrap();
        assert_eq!(idx.len(), 15);

        // Reopening rebuilds the same tree and picks up the last checkpoint.
        let root = s.root();
        write(&mut w, &mut s, 3);
        drop(s);
        let (s, opened) = Sealer::open(&log, signer(), policy, vec![]).unwrap();
        assert_eq!(opened.records, 18);
        assert_eq!(opened.last_checkpoint.map(|c| c.0), Some(15));
        assert_eq!(opened.leaves_repaired, 3);
        assert_eq!(s.unsealed(), 3);
        assert_ne!(s.root(), root);
        let _ = VerifierKey::parse_vkey(&signer().verifier().to_string()).unwrap();
    }

    #[test]
    fn a_log_that_no_longer_matches_its_checkpoint_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(d.path(), Rotation::default()).unwrap();
        let (mut s, _) =
            Sealer::open(d.path(), signer(), CheckpointPolicy::default(), vec![]).unwrap();
        write(&mut w, &mut s, 4);
        s.checkpoint(SystemTime::now()).unwrap();
        drop(s);
        let seg = w.path().to_owned();
        drop(w);
        let text = fs::read_to_string(&seg).unwrap();
        fs::write(&seg, text.replace("\"seq\":2", "\"seq\":9")).unwrap();
        let e = Sealer::open(d.path(), signer(), CheckpointPolicy::default(), vec![]).unwrap_err();
        assert!(matches!(e, SealError::Diverged { size: 4, .. }), "{e}");
        let lines: Vec<&str> = text.lines().take(2).collect();
        fs::write(&seg, lines.join("\n") + "\n").unwrap();
        let e = Sealer::open(d.path(), signer(), CheckpointPolicy::default(), vec![]).unwrap_err();
        assert!(
            matches!(
                e,
                SealError::Shorter {
                    records: 2,
                    sealed: 4,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_torn_checkpoint_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(d.path(), Rotation::default()).unwrap();
        let (mut s, _) =
            Sealer::open(d.path(), signer(), CheckpointPolicy::default(), vec![]).unwrap();
        write(&mut w, &mut s, 2);
        s.checkpoint(SystemTime::now()).unwrap();
        drop(s);
        let file = d.path().join(CHECKPOINTS_FILE);
        let good = fs::read(&file).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(&good[..good.len() - 30]);
        fs::write(&file, &torn).unwrap();
        let (_, opened) =
            Sealer::open(d.path(), signer(), CheckpointPolicy::default(), vec![]).unwrap();
        assert!(opened.torn_checkpoint.is_some());
        assert_eq!(fs::read(&file).unwrap(), good);
    }
}
