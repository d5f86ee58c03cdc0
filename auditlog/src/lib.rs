//! The tamper-evident audit log shared by the gateway and `portcullis-guard`: records are
//! opaque single-line JSON leaves; this crate stores them, hashes them into a Merkle tree,
//! signs checkpoints and verifies all of it offline. What a record says is the writer's
//! business (`portcullis::audit` for the gateway).
//!
//! A log directory holds `seg-*.jsonl` (the records), `checkpoints` (the signed checkpoints,
//! one after another) and `leaves` (the leaf-hash index).
//!
//! - [`segment`]: the log on disk, one record a line, in rotated segment files.
//! - [`merkle`]: RFC 6962 hashing, the incremental tree, inclusion and consistency proofs.
//! - [`checkpoint`]: signed checkpoints (C2SP tlog-checkpoint in a signed note) and keys.
//! - [`leaves`]: the leaf-hash index that lets the verifier name the record that changed.
//! - [`witness`]: copies of the checkpoints kept elsewhere.
//! - [`sealer`]: the writer's side: the tree, checkpoints cut by policy, witnesses fed.
//! - [`journal`]: a synchronous writer (records numbered, written, synced, sealed) for
//!   processes that log little from one thread, such as `portcullis-guard`.
//! - [`verify`]: the offline verifier, naming the first record altered, removed, inserted
//!   or reordered, and a tail cut off.
//! - [`proof`]: inclusion and consistency proofs against checkpoints.

pub mod checkpoint;
pub mod journal;
pub mod leaves;
pub mod merkle;
pub mod proof;
pub mod sealer;
pub mod segment;
pub mod time;
pub mod verify;
pub mod witness;
