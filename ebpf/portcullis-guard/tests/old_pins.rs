//! A guard started over the pins of an older one whose allowlist held 1-byte values: aya
//! would adopt those maps and the verifier would then reject the programs with a message no
//! operator can act on, so `run` refuses first and says what to do. Nothing is attached.
//!
//! Needs root and bpffs, as the BPF_PROG_TEST_RUN tests do.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::PathBuf};

use portcullis_common::maps;
use portcullis_guard::{
    config::Config,
    loader::{self, LoaderError},
    preflight,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel zero-extends the rest.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins an LPM trie with `value_size`-byte values at `path`, as an older guard left it.
fn pin_trie(path: &std::path::Path, key_size: u32, value_size: u32) {
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size,
        value_size,
        max_entries: 16,
        map_flags: BPF_F_NO_PREALLOC,
    };
    // SAFETY: `create` outlives the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const MapCreate,
            size_of::<MapCreate>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let pin = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: `pin` and the path it points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            size_of::<ObjPin>() as u32,
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_refuses_an_older_guards_allowlist_maps_and_says_what_to_do() {
    preflight::check_root().expect("needs root");
    preflight::check_bpffs(&PathBuf::from("/sys/fs/bpf/x"), true).expect("bpffs");
    let dir = Dir(PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-old-pins-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(dir.0.join("maps")).unwrap();
    // Key: a u32 prefix length, then the address.
    pin_trie(&dir.0.join("maps").join(maps::ALLOW_V4), 4 + 4, 1);
    let cfg = Config {
        interfaces: vec!["lo".into()],
        ports: vec![5432],
        pin_dir: dir.0.clone(),
        ..Config::default()
    };
    let err = loader::attach(&cfg).expect_err("attached over an older guard's maps");
    assert!(matches!(err, LoaderError::OldPins { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("written by an older portcullis-guard")
            && text.contains("map ALLOW_V4 holds 1-byte entries")
            && text.contains("`portcullis-guard detach`"),
        "{text}"
    );
    let links = std::fs::read_dir(dir.0.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "something was attached");
}
