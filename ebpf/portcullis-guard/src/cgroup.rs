//! Cgroup v2 lookups for local mode: where the unified hierarchy is mounted, and the id the
//! kernel reports for a cgroup (`bpf_get_current_cgroup_id`), which is its directory's inode.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); local mode needs one"
    )]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    info.lines()
        .find_map(|line| {
            // "... <mount point> <options> - <fstype> <source> ..."
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup id of the directory `path`.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    let meta = std::fs::metadata(path).map_err(|source| CgroupError::Stat {
        path: path.into(),
        source,
    })?;
    if !path.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup2(path.into()));
    }
    Ok(meta.ino())
}
