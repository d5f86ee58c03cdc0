//! `portcullis-guard`: keeps every connection to PostgreSQL on the database host going
//! through a gateway.
//!
//! The kernel programs (crate `portcullis-ebpf`) do the enforcing; this library loads them,
//! attaches them per a [`config::Config`], pins everything under bpffs so enforcement outlives
//! the loader, reads their maps and events, and keeps its own tamper-evident audit log
//! ([`audit`]). The binary in `main.rs` is a thin CLI on top.

pub mod allow;
pub mod audit;
pub mod cgroup;
pub mod cidr;
pub mod config;
pub mod discover;
pub mod events;
pub mod loader;
pub mod netif;
pub mod pins;
pub mod preflight;
pub mod state;

/// The compiled eBPF object, built by `build.rs`. Empty when built with `AYA_BUILD_SKIP=1`.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-ebpf"));
