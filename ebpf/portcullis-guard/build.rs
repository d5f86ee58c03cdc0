//! Compiles `portcullis-ebpf` for the BPF target and leaves the object in `OUT_DIR`, where
//! `lib.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips that (host-only jobs, clippy without the BPF toolchain): an empty
//! object is embedded and the guard refuses to load it with a message saying why.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context, bail};
use aya_build::{Package, Toolchain};

const OBJECT: &str = "portcullis-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?).join(OBJECT);
    let common = manifest.join("../portcullis-common");
    println!("cargo:rerun-if-changed={}", common.display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    if !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!(
            "bpf-linker not found: run `cargo xtask setup` to install the BPF toolchain, \
             or set AYA_BUILD_SKIP=1 for a build that cannot load the guard"
        );
    }
    let root = manifest.join("../portcullis-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: OBJECT,
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
