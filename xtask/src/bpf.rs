//! The BPF toolchain (nightly rust-src, bpf-linker on nightly's LLVM), installed idempotently.
//! Placeholder, being written with the eBPF guard.
