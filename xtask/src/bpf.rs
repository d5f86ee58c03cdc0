//! The BPF toolchain the guard's `build.rs` needs: nightly's `rust-src` (for
//! `-Z build-std=core` on `bpfel-unknown-none`) and `bpf-linker` built against nightly's own
//! LLVM, so the linker and the compiler agree on the bitcode format.
//!
//! Idempotent: a machine that already has both only pays for two quick queries.

use std::process::Command;

use anyhow::{Context, bail};

/// The bpf-linker release known to work with nightly's LLVM 22 and aya-build 0.2.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs nightly `rust-src` and `bpf-linker` when they are missing.
pub fn ensure_toolchain() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    // `component add` also installs the nightly toolchain itself when it is absent.
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let lib_dir = format!("{}/lib", sysroot.trim());
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {lib_dir}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {lib_dir}: is nightly installed?"))?;
    // `libLLVM-22-rust-….so` -> `LLVM-22-rust-…`: bpf-linker links nightly's LLVM dynamically
    // instead of building its own, which would take far longer than the rest of the set-up.
    let dylib = llvm
        .strip_prefix("lib")
        .and_then(|n| n.strip_suffix(".so"))
        .unwrap_or(&llvm);
    let rustflags = format!("-L {lib_dir} -l dylib={dylib} -C link-arg=-Wl,-rpath,{lib_dir}");
    run(Command::new("cargo")
        .env("RUSTFLAGS", rustflags)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            "llvm-22,no-llvm-linking",
        ]))
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
