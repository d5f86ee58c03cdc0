//! Whatever a server sends as `RowDescription`, `DataRow` or `CopyData`, masking must not
//! panic: malformed input is an error, never a crash or a pass of unchecked bytes.
//!
//! Register in `gateway/fuzz/Cargo.toml` with a `[[bin]] name = "mask_rows"` entry.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("mask_rows_body.rs");

fuzz_target!(|data: &[u8]| run(data));
