//! Checks made before touching the kernel, each failing with a message that says what to do,
//! instead of the bare `EPERM`/`ENOENT` the bpf() syscall would give.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "portcullis-guard must run as root (it loads eBPF programs and attaches them to interfaces and cgroups)"
    )]
    NotRoot,
    #[error(
        "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): the guard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "{dir} is not a bpffs mount, so pinned state could not survive the loader; mount it with `mount -t bpf bpf {dir}` (or pass --mount-bpffs)"
    )]
    BpffsNotMounted { dir: String },
    #[error("mounting bpffs on {dir}: {source}")]
    MountBpffs { dir: String, source: std::io::Error },
    #[error("interface `{0}` does not exist in this network namespace (see `ip link`)")]
    InterfaceMissing(String),
}

pub fn check_root() -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot);
    }
    Ok(())
}

pub fn check_btf() -> Result<(), PreflightError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

/// Checks that `pin_root`'s parent is bpffs, mounting it there first when `mount` is set.
pub fn check_bpffs(pin_root: &Path, mount: bool) -> Result<(), PreflightError> {
    let dir = pin_root.parent().unwrap_or(pin_root);
    let dir_text = dir.display().to_string();
    if is_bpffs(dir) {
        return Ok(());
    }
    if !mount {
        return Err(PreflightError::BpffsNotMounted { dir: dir_text });
    }
    let io = |source| PreflightError::MountBpffs {
        dir: dir_text.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(|e| io(e.into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn is_bpffs(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain data; the kernel fills it on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The interface's index, or a message naming the namespace problem.
pub fn check_interface(name: &str) -> Result<u32, PreflightError> {
    let missing = || PreflightError::InterfaceMissing(name.to_owned());
    let c = CString::new(name).map_err(|_| missing())?;
    // SAFETY: valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_is_not_bpffs_and_the_error_says_how_to_mount() {
        let err = check_bpffs(Path::new("/tmp/portcullis"), false).unwrap_err();
        assert!(matches!(err, PreflightError::BpffsNotMounted { .. }));
        assert!(err.to_string().contains("mount -t bpf bpf /tmp"), "{err}");
    }

    #[test]
    fn missing_interface_is_named() {
        let err = check_interface("pc-no-such-if").unwrap_err();
        assert!(
            err.to_string().contains("`pc-no-such-if` does not exist"),
            "{err}"
        );
        assert!(check_interface("lo").is_ok());
    }
}
