//! Proofs handed to someone who holds a checkpoint but not the log:
//! `portcullis audit prove LOG RECORD [--checkpoint FILE]` (this record is in the log that
//! checkpoint describes) and `portcullis audit consistency LOG --old .. --new ..` (the newer
//! checkpoint's log extends the older's, nothing rewritten). Each proof is computed from the
//! log's records, checked before it is returned, and prints with everything another RFC 9162
//! implementation needs to check it again: leaf hash, index, tree sizes, roots, hashes in hex.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::merkle::{self, Hash, MerkleError, leaf_hash};
use crate::sealer::CHECKPOINTS_FILE;
use crate::segment::{self, Item, Reader, SegmentError};
use crate::verify::{CheckpointInfo, RecordRef, VerifyError, describe};
use crate::witness::read_notes;

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no checkpoint {what} in {path}")]
    NoCheckpoint { what: String, path: PathBuf },
    #[error("record {index} is not covered by the checkpoint of {size} records (not sealed yet?)")]
    NotSealed { index: u64, size: u64 },
    #[error("the old checkpoint ({old} records) is larger than the new one ({new})")]
    OutOfOrder { old: u64, new: u64 },
    #[error(
        "the log does not match the {0}: it was altered or cut short since; run `portcullis audit verify`"
    )]
    LogMismatch(Box<CheckpointInfo>),
    #[error("the proof does not check: {0}")]
    Merkle(#[from] MerkleError),
    #[error("proof field {0} is not the hex of 32 bytes")]
    Hex(&'static str),
}

/// Which checkpoint a proof is against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointChoice {
    /// The largest in `<log>/checkpoints`.
    Latest,
    /// The one of this size in `<log>/checkpoints`.
    Size(u64),
    /// The largest in this file (a witness copy, say).
    File(PathBuf),
}

/// That record `index` is in the tree a checkpoint signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InclusionProof {
    pub index: u64,
    pub record: RecordRef,
    /// Hex of `SHA-256(0x00 || record)`.
    pub leaf_hash: String,
    pub tree_size: u64,
    /// Hex of the checkpoint's root.
    pub root: String,
    /// Hex hashes, leaf side first (RFC 6962 §2.1.1).
    pub audit_path: Vec<String>,
    pub checkpoint: CheckpointInfo,
    /// Whether the checkpoint's signature was checked here (a public key was given).
    pub signature_checked: bool,
}

/// That the tree of `old` is a prefix of the tree of `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyProof {
    pub old: CheckpointInfo,
    pub new: CheckpointInfo,
    /// Hex of each root.
    pub old_root: String,
    pub new_root: String,
    /// Hex hashes (RFC 6962 §2.1.2).
    pub proof: Vec<String>,
    pub signature_checked: bool,
}

fn unhex(s: &str, what: &'static str) -> Result<Hash, ProofError> {
    hex::decode(s)
        .ok()
        .and_then(|v| Hash::try_from(v).ok())
        .ok_or(ProofError::Hex(what))
}

fn unhex_all(v: &[String], what: &'static str) -> Result<Vec<Hash>, ProofError> {
    v.iter().map(|s| unhex(s, what)).collect()
}

impl InclusionProof {
    /// Checks the proof from its printed fields alone (RFC 9162 §2.1.3.2).
    pub fn verify(&self) -> Result<(), ProofError> {
        let path = unhex_all(&self.audit_path, "audit_path")?;
        merkle::verify_inclusion(
            self.index,
            self.tree_size,
            &unhex(&self.leaf_hash, "leaf_hash")?,
            &path,
            &unhex(&self.root, "root")?,
        )?;
        Ok(())
    }
}

impl ConsistencyProof {
    /// Checks the proof from its printed fields alone (RFC 9162 §2.1.4.2).
    pub fn verify(&self) -> Result<(), ProofError> {
        merkle::verify_consistency(
            self.old.size,
            self.new.size,
            &unhex(&self.old_root, "old_root")?,
            &unhex(&self.new_root, "new_root")?,
            &unhex_all(&self.proof, "proof")?,
        )?;
        Ok(())
    }
}

fn signature_line(checked: bool) -> &'static str {
    if checked {
        "signature checked with the public key given"
    } else {
        "signature NOT checked here (no public key given; `portcullis audit verify` checks it)"
    }
}

impl fmt::Display for InclusionProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "record     {} ({})", self.index, self.record)?;
        writeln!(f, "leaf hash  {}", self.leaf_hash)?;
        writeln!(f, "tree size  {}", self.tree_size)?;
        writeln!(f, "root       {} ({})", self.root, self.checkpoint.root)?;
        writeln!(
            f,
            "checkpoint {}; {}",
            self.checkpoint,
            signature_line(self.signature_checked)
        )?;
        writeln!(
            f,
            "audit path ({} hashes, leaf side first):",
            self.audit_path.len()
        )?;
        for h in &self.audit_path {
            writeln!(f, "  {h}")?;
        }
        writeln!(
            f,
            "verified: the path leads from the leaf to the root (RFC 9162 §2.1.3.2)"
        )
    }
}

impl fmt::Display for ConsistencyProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "old        {} (root {})", self.old, self.old_root)?;
        writeln!(f, "new        {} (root {})", self.new, self.new_root)?;
        writeln!(f, "signatures {}", signature_line(self.signature_checked))?;
        writeln!(f, "proof ({} hashes):", self.proof.len())?;
        for h in &self.proof {
            writeln!(f, "  {h}")?;
        }
        writeln!(
            f,
            "verified: the log of {} records extends the log of {} unchanged (RFC 9162 §2.1.4.2)",
            self.new.size, self.old.size
        )
    }
}

/// Proves record `index` against a checkpoint; with `key`, only checkpoints it signed count.
pub fn prove(
    dir: &Path,
    index: u64,
    choice: &CheckpointChoice,
    key: Option<&VerifierKey>,
) -> Result<InclusionProof, ProofError> {
    let (cp, info) = choose(dir, choice, key)?;
    let size = cp.checkpoint.size;
    if index >= size {
        return Err(ProofError::NotSealed { index, size });
    }
    let leaves = read_leaves(dir, size)?;
    check_root(&leaves, &cp, &info)?;
    let path = merkle::inclusion_proof(&leaves[..size as usize], index)?;
    merkle::verify_inclusion(
        index,
        size,
        &leaves[index as usize],
        &path,
        &cp.checkpoint.root,
    )?;
    let segments = segment::list(dir)?;
    Ok(InclusionProof {
        index,
        record: describe(dir, &segments, index)?,
        leaf_hash: hex::encode(leaves[index as usize]),
        tree_size: size,
        root: hex::encode(cp.checkpoint.root),
        audit_path: path.iter().map(hex::encode).collect(),
        checkpoint: info,
        signature_checked: key.is_some(),
    })
}

/// Proves that the log of checkpoint `new` extends the log of checkpoint `old`.
pub fn consistency(
    dir: &Path,
    old: &CheckpointChoice,
    new: &CheckpointChoice,
    key: Option<&VerifierKey>,
) -> Result<ConsistencyProof, ProofError> {
    let (old_cp, old_info) = choose(dir, old, key)?;
    let (new_cp, new_info) = choose(dir, new, key)?;
    let (m, n) = (old_cp.checkpoint.size, new_cp.checkpoint.size);
    if m > n {
        return Err(ProofError::OutOfOrder { old: m, new: n });
    }
    let leaves = read_leaves(dir, n)?;
    check_root(&leaves, &old_cp, &old_info)?;
    check_root(&leaves, &new_cp, &new_info)?;
    let proof = merkle::consistency_proof(&leaves[..n as usize], m)?;
    merkle::verify_consistency(
        m,
        n,
        &old_cp.checkpoint.root,
        &new_cp.checkpoint.root,
        &proof,
    )?;
    Ok(ConsistencyProof {
        old: old_info,
        new: new_info,
        old_root: hex::encode(old_cp.checkpoint.root),
        new_root: hex::encode(new_cp.checkpoint.root),
        proof: proof.iter().map(hex::encode).collect(),
        signature_checked: key.is_some(),
    })
}

fn check_root(
    leaves: &[Hash],
    cp: &SignedCheckpoint,
    info: &CheckpointInfo,
) -> Result<(), ProofError> {
    let size = cp.checkpoint.size as usize;
    if leaves.len() < size || merkle::root(&leaves[..size]) != cp.checkpoint.root {
        return Err(ProofError::LogMismatch(Box::new(info.clone())));
    }
    Ok(())
}

/// The leaf hashes of the first `up_to` records (fewer if the log is shorter).
fn read_leaves(dir: &Path, up_to: u64) -> Result<Vec<Hash>, ProofError> {
    let mut out = Vec::new();
    for item in Reader::open(dir, 0)? {
        if out.len() as u64 >= up_to {
            break;
        }
        if let Item::Record { bytes, .. } = item? {
            out.push(leaf_hash(&bytes));
        }
    }
    Ok(out)
}

fn choose(
    dir: &Path,
    choice: &CheckpointChoice,
    key: Option<&VerifierKey>,
) -> Result<(SignedCheckpoint, CheckpointInfo), ProofError> {
    let path = match choice {
        CheckpointChoice::File(p) => p.clone(),
        _ => dir.join(CHECKPOINTS_FILE),
    };
    let notes = read_notes(&path).map_err(|source| ProofError::Io {
        path: path.clone(),
        source,
    })?;
    let usable = notes.into_iter().filter_map(|n| {
        let c = n.parsed.ok()?;
        key.is_none_or(|k| c.verify(k).is_ok()).then(|| {
            let info = CheckpointInfo::new(&n.path, n.line, &c);
            (c, info)
        })
    });
    let signed = if key.is_some() {
        " signed by the key"
    } else {
        ""
    };
    let found = match choice {
        CheckpointChoice::Size(s) => usable
            .filter(|(c, _)| c.checkpoint.size == *s)
            .last()
            .ok_or_else(|| format!("of {s} records{signed}")),
        _ => usable
            .max_by_key(|(c, _)| c.checkpoint.size)
            .ok_or_else(|| format!("readable{signed}")),
    };
    found.map_err(|what| ProofError::NoCheckpoint { what, path })
}
