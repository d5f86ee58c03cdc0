//! Witnesses: places outside the log that keep a copy of every checkpoint, so that a log cut
//! short, rolled back or rewritten wholesale (checkpoints included, even re-signed if the
//! key leaked) still disagrees with something its writer no longer controls.
//!
//! [`Witness`] is what the sealer pushes to; the gateway implements it for syslog and HTTP.
//! Here are the two local kinds, and the reading side the verifier uses for both:
//! - [`FileWitness`]: appends each checkpoint to one file, a blank line after each, the same
//!   layout as the log's own `checkpoints` file.
//! - [`DirWitness`]: one file per checkpoint, `checkpoint-<tree size>.txt`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointError, SignedCheckpoint, split_notes};

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// For witnesses implemented elsewhere (syslog, HTTP).
    #[error("witness {name}: {message}")]
    Other { name: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WitnessError + '_ {
    move |source| WitnessError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Somewhere a checkpoint is copied to as soon as it is signed. A push that fails is
/// reported by the sealer and never holds up the log; the next checkpoint supersedes it.
pub trait Witness: Send {
    /// How reports name this witness (a path, a URL).
    fn name(&self) -> String;
    fn push(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), WitnessError>;
}

/// Appends checkpoints to one file (created if missing), fsynced after each.
#[derive(Debug, Clone)]
pub struct FileWitness {
    path: PathBuf,
}

impl FileWitness {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Witness for FileWitness {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn push(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), WitnessError> {
        append_note(&self.path, checkpoint).map_err(io_err(&self.path))
    }
}

/// Appends one note and a blank line in a single write, and syncs it (and, for a new file,
/// its directory entry).
pub(crate) fn append_note(path: &Path, checkpoint: &SignedCheckpoint) -> io::Result<()> {
    let existed = path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let mut text = checkpoint.to_text();
    text.push('\n');
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    if !existed {
        sync_parent(path)?;
    }
    Ok(())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => File::open(p)?.sync_all(),
        _ => Ok(()),
    }
}

/// Writes each checkpoint to its own file `checkpoint-<size>.txt` in a directory (created
/// if missing). A file is never overwritten: a second checkpoint of the same size goes to
/// `checkpoint-<size>-<unix time>.txt`.
#[derive(Debug, Clone)]
pub struct DirWitness {
    dir: PathBuf,
}

impl DirWitness {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Witness for DirWitness {
    fn name(&self) -> String {
        self.dir.display().to_string()
    }

    fn push(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), WitnessError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let c = &checkpoint.checkpoint;
        let names = [
            format!("checkpoint-{}.txt", c.size),
            format!("checkpoint-{}-{}.txt", c.size, c.time.unwrap_or(0)),
        ];
        for name in names {
            let path = self.dir.join(name);
            // Written under a temporary name and renamed, so a reader never sees half a note.
            let tmp = self.dir.join(format!(".tmp-checkpoint-{}", c.size));
            let write = || -> io::Result<bool> {
                let mut f = File::create(&tmp)?;
                f.write_all(checkpoint.to_text().as_bytes())?;
                f.sync_all()?;
                drop(f);
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        fs::remove_file(&tmp)?;
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
                fs::remove_file(&tmp)?;
                File::open(&self.dir)?.sync_all()?;
                Ok(true)
            };
            if write().map_err(io_err(&path))? {
                return Ok(());
            }
        }
        Err(WitnessError::Other {
            name: self.name(),
            message: format!(
                "checkpoints of size {} at the same second already exist",
                c.size
            ),
        })
    }
}

/// One note read back from a checkpoint file or witness.
#[derive(Debug)]
pub struct FoundNote {
    /// The file it is in.
    pub path: PathBuf,
    /// 1-based line of its first line.
    pub line: usize,
    /// Whether it is the last note of its file (a torn last note is a crash, not a forgery).
    pub last_in_file: bool,
    pub parsed: Result<SignedCheckpoint, CheckpointError>,
}

/// Reads every note of a checkpoint file, or of every `checkpoint-*.txt` file in a
/// directory (in name order). A missing path yields an error; an empty file, nothing.
pub fn read_notes(path: &Path) -> io::Result<Vec<FoundNote>> {
    let meta = fs::metadata(path)?;
    let mut files = Vec::new();
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("checkpoint-") && name.ends_with(".txt") {
                files.push(entry.path());
            }
        }
        files.sort();
    } else {
        files.push(path.to_owned());
    }
    let mut out = Vec::new();
    for file in files {
        let bytes = fs::read(&file)?;
        let notes = split_notes(&bytes);
        let n = notes.len();
        for (i, note) in notes.into_iter().enumerate() {
            out.push(FoundNote {
                path: file.clone(),
                line: note.line,
                last_in_file: i + 1 == n,
                parsed: SignedCheckpoint::parse(note.bytes),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, LogSigner};

    fn signed(size: u64, time: u64) -> SignedCheckpoint {
        let s = LogSigner::new("w", ed25519_dalek::SigningKey::from_bytes(&[1; 32])).unwrap();
        s.sign(Checkpoint {
            origin: "w".into(),
            size,
            root: [0; 32],
            time: Some(time),
            extensions: vec![],
        })
    }

    #[test]
    fn file_and_directory_witnesses_read_back() {
        let d = tempfile::tempdir().unwrap();
        let mut f = FileWitness::new(d.path().join("w.txt"));
        let mut w = DirWitness::new(d.path().join("wdir"));
        for (size, time) in [(1, 10), (2, 20), (2, 30)] {
            f.push(&signed(size, time)).unwrap();
            w.push(&signed(size, time)).unwrap();
        }
        assert!(w.push(&signed(2, 30)).is_err());
        for path in [d.path().join("w.txt"), d.path().join("wdir")] {
            let notes = read_notes(&path).unwrap();
            let sizes: Vec<u64> = notes
                .iter()
                .map(|n| n.parsed.as_ref().unwrap().checkpoint.size)
                .collect();
            assert_eq!(sizes, vec![1, 2, 2], "{path:?}");
        }
        assert!(
            fs::read_dir(d.path().join("wdir"))
                .unwrap()
                .all(|e| { !e.unwrap().file_name().to_string_lossy().starts_with(".tmp") })
        );
    }
}
