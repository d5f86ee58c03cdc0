//! A credential kept in a file: its value (the trailing newline a secret store or an
//! editor leaves is not part of it) and the stamp that tells a changed file from the
//! one last read without reading it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Secret, SecretError};

/// What `stat` says about the file (through symlinks, so a Kubernetes secret volume's
/// `..data` swap shows as a new inode): any difference means read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

pub(super) fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// Larger than any password; a path pointed at the wrong file is not read whole.
const MAX_FILE: u64 = 64 << 10;

pub(super) fn read(path: &Path) -> Result<Secret, SecretError> {
    let err = |why: String| SecretError::FileRead {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_FILE {
        return Err(err(format!("larger than {MAX_FILE} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(SecretError::FileEmpty(path.to_owned()));
    }
    if value.contains('\0') {
        return Err(err("holds a NUL byte".into()));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_trailing_newline_goes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        for (text, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            (" pw ", " pw "),
            ("pw", "pw"),
        ] {
            std::fs::write(&p, text).unwrap();
            assert_eq!(read(&p).unwrap().expose(), want, "{text:?}");
        }
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read(&p), Err(SecretError::FileEmpty(_))));
        assert!(matches!(
            read(dir.path()),
            Err(SecretError::FileRead { .. })
        ));
    }

    #[test]
    fn a_rewrite_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "a").unwrap();
        let before = stamp(&p).unwrap();
        assert_eq!(stamp(&p), Some(before));
        std::fs::write(&p, "bb").unwrap();
        assert_ne!(stamp(&p), Some(before));
        assert_eq!(stamp(&dir.path().join("missing")), None);
    }
}
