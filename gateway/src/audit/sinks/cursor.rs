//! Each sink's cursor: how many records of the log it has had acknowledged, kept in
//! `<log dir>/cursors/<sink name>` as decimal digits and a newline.
//!
//! A cursor is only ever written after the receiver acknowledged everything below it,
//! and written so that a crash leaves the old value or the new one, never a mix: a temp
//! file, fsync, rename over the old one, fsync of the directory. After a crash a sink
//! therefore sends again at most the batch it was sending (at-least-once), never less.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("audit sink cursor {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit sink cursor {path}: {found:?} is not a record count")]
    Garbled { path: PathBuf, found: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CursorError + '_ {
    move |source| CursorError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn path(log_dir: &Path, sink: &str) -> PathBuf {
    log_dir.join("cursors").join(sink)
}

/// The stored cursor; 0 (the whole log) for a sink that never delivered.
pub fn load(log_dir: &Path, sink: &str) -> Result<u64, CursorError> {
    let path = path(log_dir, sink);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&path)(e)),
    };
    // A garbled cursor stops the sink rather than starting it over from 0 or from the
    // end: neither a flood of duplicates nor a silent gap is the right guess.
    text.trim().parse().map_err(|_| CursorError::Garbled {
        found: text.chars().take(40).collect(),
        path,
    })
}

pub fn store(log_dir: &Path, sink: &str, next: u64) -> Result<(), CursorError> {
    let dir = log_dir.join("cursors");
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        sync_dir(log_dir)?;
    }
    let path = dir.join(sink);
    let tmp = dir.join(format!(".{sink}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(format!("{next}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(&dir)
}

fn sync_dir(dir: &Path) -> Result<(), CursorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_and_starts_at_zero() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "s").unwrap(), 0);
        store(d.path(), "s", 42).unwrap();
        store(d.path(), "s", 43).unwrap();
        assert_eq!(load(d.path(), "s").unwrap(), 43);
        assert_eq!(fs::read_to_string(path(d.path(), "s")).unwrap(), "43\n");
        let names: Vec<_> = fs::read_dir(d.path().join("cursors"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s"], "no temp file left behind");
        fs::write(path(d.path(), "s"), "x").unwrap();
        assert!(matches!(
            load(d.path(), "s"),
            Err(CursorError::Garbled { .. })
        ));
    }
}
