//! The leaf-hash index `<log>/leaves`: the 32-byte leaf hash of every record, record `i` at
//! byte `32 * i`, written by the sealer before each checkpoint.
//!
//! It is what lets the verifier name the first altered record rather than the stretch
//! between two checkpoints: the index is unsigned, but if its first `n` hashes rebuild the
//! root a checkpoint of size `n` signed, they are the hashes that were sealed (finding others
//! that do means breaking SHA-256), so comparing them with the log's records shows exactly
//! which record changed, went missing, moved or appeared. An index that rebuilds no signed
//! root was altered too and is not used.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::merkle::Hash;

pub const FILE_NAME: &str = "leaves";

#[derive(Debug, thiserror::Error)]
#[error("leaf index {path}: {source}")]
pub struct LeavesError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Random and sequential reads of an index.
pub struct LeafIndex {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LeafIndex {
    /// Opens `<dir>/leaves`; `None` when there is none. A trailing partial hash (a torn
    /// write) is not counted.
    pub fn open(dir: &Path) -> Result<Option<Self>, LeavesError> {
        let path = dir.join(FILE_NAME);
        let err = |source| LeavesError {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let len = file.metadata().map_err(err)?.len() / 32;
        Ok(Some(Self { path, file, len }))
    }

    /// How many hashes it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash of record `i`, if the index reaches that far.
    pub fn get(&self, i: u64) -> Result<Option<Hash>, LeavesError> {
        if i >= self.len {
            return Ok(None);
        }
        let mut h = [0u8; 32];
        self.file
            .read_exact_at(&mut h, i * 32)
            .map_err(|source| LeavesError {
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(h))
    }

    /// Every hash in order, read through a file of its own.
    pub fn iter(
        &self,
    ) -> Result<impl Iterator<Item = Result<Hash, LeavesError>> + '_, LeavesError> {
        let err = |source| LeavesError {
            path: self.path.clone(),
            source,
        };
        let mut r = BufReader::with_capacity(1 << 16, File::open(&self.path).map_err(err)?);
        let mut left = self.len;
        Ok(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let mut h = [0u8; 32];
            Some(r.read_exact(&mut h).map(|()| h).map_err(err))
        }))
    }
}

/// The writer's side: appends hashes, truncates to repair.
pub(crate) struct LeafWriter {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

impl LeafWriter {
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        Ok(Self { path, file })
    }

    /// Keeps the first `n` hashes only.
    pub(crate) fn truncate(&mut self, n: u64) -> io::Result<()> {
        self.file.set_len(n * 32)
    }

    /// Writes `hashes` (concatenated) at hash position `at`.
    pub(crate) fn write_at(&mut self, at: u64, hashes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(hashes, at * 32)
    }

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
