//! Masking-stage throughput (placeholder, written with issue 4).
fn main() {}
