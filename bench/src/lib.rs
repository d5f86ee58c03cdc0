//! The bench harness: the gateway against a direct connection and against pgbouncer, side
//! by side, in one run, with ratios, tables, JSON and charts.
//!
//! `cargo xtask bench` builds everything in release mode and runs the `portcullis-bench`
//! binary, which either sets up its own deployment ([`managed`]) or points at an existing one
//! (`--direct URL --gateway URL [--pgbouncer URL]`). The pieces:
//! [`wire`] is the lean client, [`workload`] the plan, [`runner`] the interleaved execution,
//! [`report`] the JSON schema everything else renders from.

pub mod charts;
pub mod cli;
pub mod compare;
pub mod goals;
pub mod managed;
pub mod pgbench;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod scram;
pub mod sockstat;
pub mod table;
pub mod target;
pub mod wire;
pub mod workload;
