//! The tamper-evident audit log shared by the gateway and `portcullis-guard`: records are
//! opaque single-line JSON leaves; this crate stores them, hashes them into a Merkle tree,
//! signs checkpoints and verifies all of it offline. What a record says is the writer's
//! business (`portcullis::audit` for the gateway).
//!
//! - [`segment`]: the log on disk, one record a line, in rotated segment files.
//! - [`merkle`]: RFC 6962 hashing, the incremental tree, inclusion and consistency proofs.
//! - [`checkpoint`]: signed checkpoints (C2SP tlog-checkpoint in a signed note) and keys.

pub mod checkpoint;
pub mod merkle;
pub mod segment;
mod time;
