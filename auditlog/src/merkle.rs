//! The log's Merkle tree, hashed as RFC 6962 (and RFC 9162) says, so that any
//! transparency-log tool can recompute a root or check a proof we hand out.
//!
//! - leaf hash: `SHA-256(0x00 || record bytes)`; interior node: `SHA-256(0x01 || left || right)`.
//!   The one-byte prefixes keep a leaf from passing for a node (second-preimage attacks).
//! - The tree over `n` leaves splits at `k`, the largest power of two below `n`; the empty
//!   tree's root is `SHA-256("")`.
//!
//! [`Tree`] is the writer's side: it keeps only the roots of the perfect subtrees that make
//! up the tree so far (one per set bit of the size), so adding a record costs one leaf hash
//! plus, on average, one node hash, and memory stays O(log n). Proofs are computed from the
//! full list of leaf hashes (which a verifier recomputes from the log) with RFC 6962 §2.1.1
//! and §2.1.2, and checked with the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2, which
//! need nothing but the proof, the sizes and the roots.

use sha2::{Digest, Sha256};

/// A SHA-256 output: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes ({got}) for these tree sizes")]
    WrongLength { got: usize },
    #[error("the proof does not lead to the root")]
    RootMismatch,
}

/// `SHA-256(0x00 || bytes)`: the hash of one record.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree with no leaves: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// An append-only tree that remembers only its frontier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    size: u64,
    /// Roots of the perfect subtrees covering leaves `0..size`, largest (leftmost) first:
    /// one per set bit of `size`, from the highest bit down.
    frontier: Vec<Hash>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf hash (see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        // Like incrementing a binary counter: every trailing one bit of the size is a
        // perfect subtree of the same height as the carry, and merges with it.
        let mut carry = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.frontier.pop() else {
                break;
            };
            carry = node_hash(&left, &carry);
            size >>= 1;
        }
        self.frontier.push(carry);
        self.size += 1;
    }

    /// Hashes `bytes` as a leaf and appends it.
    pub fn push_record(&mut self, bytes: &[u8]) {
        self.push(leaf_hash(bytes));
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash (RFC 6962 MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.frontier.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The frontier, largest subtree first (one hash per set bit of the size).
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier
    }

    /// Rebuilds a tree from a frontier saved with [`Tree::frontier`]; `None` if the number of
    /// hashes does not match the size.
    pub fn from_frontier(size: u64, frontier: Vec<Hash>) -> Option<Self> {
        (frontier.len() == size.count_ones() as usize).then_some(Self { size, frontier })
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over `leaves` (RFC 6962 MTH).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut t = Tree::new();
    for l in leaves {
        t.push(*l);
    }
    t.root()
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 6962 §2.1.1 PATH), leaf
/// side first.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, MerkleError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The proof that the tree over `leaves[..old_size]` is a prefix of the tree over all of
/// `leaves` (RFC 6962 §2.1.2 PROOF). Empty when `old_size` is 0 or the whole tree.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, MerkleError> {
    let new = leaves.len() as u64;
    if old_size > new {
        return Err(MerkleError::SizesOutOfOrder { old: old_size, new });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new {
        subproof(old_size as usize, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !whole {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], whole, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Checks an audit path (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::WrongLength { got: proof.len() });
    }
    if r == *root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size || old_size == 0 {
        // Nothing to prove, so a proof must be empty; equal sizes must have equal roots.
        if !proof.is_empty() {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        return if old_size == 0 || old_root == new_root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(MerkleError::WrongLength { got: 0 });
    };
    // When the old tree is a perfect subtree its root is the first node of the path and is
    // left out of the proof; put it back.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = *seed;
    let mut sr = *seed;
    for c in rest {
        if sn == 0 {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::WrongLength { got: proof.len() });
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// MTH written straight from RFC 6962, recursively, to check the incremental tree against.
    fn mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => Sha256::digest([]).into(),
            1 => {
                let mut v = vec![0u8];
                v.extend_from_slice(&d[0]);
                Sha256::digest(&v).into()
            }
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                let mut v = vec![1u8];
                v.extend_from_slice(&mth(&d[..k]));
                v.extend_from_slice(&mth(&d[k..]));
                Sha256::digest(&v).into()
            }
        }
    }

    /// How many hashes an audit path for `index` in a tree of `size` has (for error messages).
    fn inclusion_len(index: u64, size: u64) -> usize {
        let mut fn_ = index;
        let mut sn = size.saturating_sub(1);
        let mut n = 0;
        while sn != 0 {
            if fn_ & 1 == 0 && fn_ == sn {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
            fn_ >>= 1;
            sn >>= 1;
            n += 1;
        }
        n
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"seq\":{i}}}").into_bytes())
            .collect()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        records(n).iter().map(|r| leaf_hash(r)).collect()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Tree::new().root(), empty_root());
        // RFC 6962's leaf of the empty string: SHA-256(0x00).
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        // The first entries of the certificate-transparency test vectors (leaves 0x00,
        // 0x10, 0x2021, ...) and their roots.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let mut t = Tree::new();
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (i, w) in inputs.iter().zip(want) {
            t.push_record(i);
            assert_eq!(hex::encode(t.root()), w, "size {}", t.size());
        }
    }

    #[test]
    fn the_incremental_tree_agrees_with_the_recursive_definition() {
        for n in 0..70 {
            let r = records(n);
            let mut t = Tree::new();
            r.iter().for_each(|x| t.push_record(x));
            assert_eq!(t.root(), mth(&r), "size {n}");
            assert_eq!(t.frontier().len(), n.count_ones() as usize);
            let again = Tree::from_frontier(t.size(), t.frontier().to_vec()).unwrap();
            assert_eq!(again.root(), t.root());
        }
    }

    #[test]
    fn rfc_examples_have_the_documented_shape() {
        // RFC 6962 §2.1.3: the tree of 7 leaves d0..d6.
        let l = leaves(7);
        let p = inclusion_proof(&l, 3).unwrap();
        assert_eq!(p, vec![l[2], node_hash(&l[0], &l[1]), root(&l[4..7])]);
        let p = consistency_proof(&l, 3).unwrap();
        assert_eq!(p, vec![l[2], l[3], node_hash(&l[0], &l[1]), root(&l[4..7])]);
        let p = consistency_proof(&l, 4).unwrap();
        assert_eq!(p, vec![root(&l[4..7])]);
        let p = consistency_proof(&l, 6).unwrap();
        assert_eq!(p, vec![node_hash(&l[4], &l[5]), l[6], root(&l[0..4])]);
    }

    #[test]
    fn edge_cases_are_refused_not_panicked_on() {
        let l = leaves(5);
        let r = root(&l);
        assert!(inclusion_proof(&l, 5).is_err());
        assert!(verify_inclusion(5, 5, &l[0], &[], &r).is_err());
        assert!(verify_inclusion(0, 0, &l[0], &[], &r).is_err());
        assert!(verify_inclusion(0, 1, &l[0], &[l[1]], &l[0]).is_err());
        assert!(verify_inclusion(0, 1, &l[0], &[], &l[0]).is_ok());
        assert!(verify_consistency(6, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(5, 5, &r, &r, &[]).is_ok());
        assert!(verify_consistency(5, 5, &r, &l[0], &[]).is_err());
        assert!(verify_consistency(3, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(0, 5, &empty_root(), &r, &[]).is_ok());
        assert!(verify_consistency(u64::MAX, u64::MAX, &r, &r, &[r]).is_err());
        assert!(verify_inclusion(u64::MAX - 1, u64::MAX, &r, &[r; 70], &r).is_err());
    }

    fn flip(h: &mut [Hash], which: usize, bit: u8) {
        let n = h.len();
        h[which % n][(bit / 8) as usize % 32] ^= 1 << (bit % 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn every_inclusion_proof_verifies_and_a_flipped_bit_fails(
            size in 1usize..300, index in any::<prop::sample::Index>(),
            which in any::<usize>(), bit in any::<u8>(),
        ) {
            let l = leaves(size);
            let i = index.index(size);
            let r = root(&l);
            let mut p = inclusion_proof(&l, i as u64).unwrap();
            prop_assert_eq!(p.len(), inclusion_len(i as u64, size as u64));
            prop_assert!(verify_inclusion(i as u64, size as u64, &l[i], &p, &r).is_ok());
            let mut bad_leaf = l[i];
            bad_leaf[(bit / 8) as usize % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(i as u64, size as u64, &bad_leaf, &p, &r).is_err());
            if !p.is_empty() {
                flip(&mut p, which, bit);
                prop_assert!(verify_inclusion(i as u64, size as u64, &l[i], &p, &r).is_err());
            }
            if size > 1 {
                let other = (i + 1) % size;
                let good = inclusion_proof(&l, i as u64).unwrap();
                prop_assert!(verify_inclusion(other as u64, size as u64, &l[i], &good, &r).is_err());
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_a_flipped_bit_fails(
            new in 1usize..300, old in any::<prop::sample::Index>(),
            which in any::<usize>(), bit in any::<u8>(),
        ) {
            let l = leaves(new);
            let m = old.index(new + 1);
            let (or, nr) = (root(&l[..m]), root(&l));
            let mut p = consistency_proof(&l, m as u64).unwrap();
            prop_assert!(verify_consistency(m as u64, new as u64, &or, &nr, &p).is_ok());
            if !p.is_empty() {
                flip(&mut p, which, bit);
                prop_assert!(verify_consistency(m as u64, new as u64, &or, &nr, &p).is_err());
            }
            if m > 0 && m < new {
                let good = consistency_proof(&l, m as u64).unwrap();
                let mut bad = or;
                bad[(bit / 8) as usize % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(m as u64, new as u64, &bad, &nr, &good).is_err());
                prop_assert!(verify_consistency(m as u64, new as u64, &or, &bad, &good).is_err());
            }
        }

        #[test]
        fn verification_of_arbitrary_proofs_never_panics(
            index in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
            proof in prop::collection::vec(any::<[u8; 32]>(), 0..70),
        ) {
            let h = [0u8; 32];
            let _ = verify_inclusion(index, size, &h, &proof, &h);
            let _ = verify_consistency(old, size, &h, &h, &proof);
        }
    }
}
