//! The integrity tree: a compressed binary Merkle trie over `blake3(key)`.
//!
//! Every live (key, value) pair is a leaf placed at the 256-bit path `key_path(key)`. Inner
//! nodes ("branches") exist only where two sub-tries diverge, at the bit depth of the first
//! differing bit, so the shape of the trie — and therefore the root — depends only on the
//! set of pairs, never on the order in which they were written. With uniformly distributed
//! paths the expected depth is `log2(n)`, so a write rehashes `O(log n)` nodes.
//!
//! A branch is identified by its depth and the path prefix above it ([`BranchId`]). That
//! identity never changes when the trie is reshaped, so a delete that collapses a branch
//! moves the surviving sub-trie up without rewriting it.
//!
//! This module is pure: it reads branches through [`BranchSource`] and returns the
//! [`Update`] to persist. The storage module applies that update atomically with the data.

use std::collections::HashMap;

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// The root of an empty tree.
pub const EMPTY_ROOT: Hash = [0; 32];

const LEAF_DOMAIN: u8 = 0x00;
const BRANCH_DOMAIN: u8 = 0x01;
const PATH_DOMAIN: u8 = 0x02;

/// The path of a key in the trie.
pub fn key_path(key: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[PATH_DOMAIN]);
    hasher.update(key);
    *hasher.finalize().as_bytes()
}

/// The hash of one (key, value) leaf.
pub fn leaf_hash(key: &[u8], value: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[LEAF_DOMAIN]);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

/// The hash of a branch at `depth` with the given children.
fn branch_hash(depth: u8, left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[BRANCH_DOMAIN, depth]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// Bit `index` of `path`, most significant bit first.
fn bit(path: &Hash, index: u8) -> bool {
    path[usize::from(index / 8)] & (0x80 >> (index % 8)) != 0
}

/// The index of the first bit where `a` and `b` differ, or `None` when they are equal.
fn first_difference(a: &Hash, b: &Hash) -> Option<u8> {
    a.iter().zip(b.iter()).enumerate().find_map(|(i, (x, y))| {
        let diff = x ^ y;
        // i < 32 and leading_zeros < 8, so the index fits in a u8.
        (diff != 0).then(|| (i * 8) as u8 + diff.leading_zeros() as u8)
    })
}

/// `path` with every bit from `depth` on cleared.
fn prefix(path: &Hash, depth: u8) -> Hash {
    let mut out = [0u8; 32];
    let full = usize::from(depth / 8);
    out[..full].copy_from_slice(&path[..full]);
    let rest = depth % 8;
    if rest != 0 {
        out[full] = path[full] & (0xFFu8 << (8 - rest));
    }
    out
}

/// The stable identity of a branch: its depth and the path prefix of everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BranchId {
    /// The bit index at which the branch's two sub-tries diverge.
    pub depth: u8,
    /// The common path prefix of the sub-trie, bits from `depth` on cleared.
    pub prefix: Hash,
}

impl BranchId {
    /// The compact byte encoding used as a storage key: the depth, then the prefix bytes
    /// that carry bits (`ceil(depth / 8)` of them).
    pub fn encode(&self) -> Vec<u8> {
        let used = usize::from(self.depth).div_ceil(8);
        let mut out = Vec::with_capacity(1 + used);
        out.push(self.depth);
        out.extend_from_slice(&self.prefix[..used]);
        out
    }
}

/// A reference to a sub-trie held by its parent (or by the tree as its root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Child {
    /// A single (key, value) pair.
    Leaf {
        /// `key_path(key)`.
        path: Hash,
        /// `leaf_hash(key, value)`.
        hash: Hash,
    },
    /// An inner node.
    Branch {
        /// Where the branch is stored.
        id: BranchId,
        /// The branch's hash.
        hash: Hash,
    },
}

/// Encoded size of a [`Child`].
pub const CHILD_BYTES: usize = 1 + 1 + 32 + 32;

impl Child {
    /// The hash this child contributes to its parent.
    pub fn hash(&self) -> &Hash {
        match self {
            Child::Leaf { hash, .. } | Child::Branch { hash, .. } => hash,
        }
    }

    /// Fixed-size encoding: tag, depth, path or prefix, hash.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Child::Leaf { path, hash } => {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(path);
                out.extend_from_slice(hash);
            }
            Child::Branch { id, hash } => {
                out.extend_from_slice(&[1, id.depth]);
                out.extend_from_slice(&id.prefix);
                out.extend_from_slice(hash);
            }
        }
    }

    /// Decodes what [`Child::encode`] wrote; `None` for malformed bytes.
    pub fn decode(bytes: &[u8]) -> Option<Child> {
        if bytes.len() != CHILD_BYTES {
            return None;
        }
        let path: Hash = bytes[2..34].try_into().ok()?;
        let hash: Hash = bytes[34..66].try_into().ok()?;
        match bytes[0] {
            0 => Some(Child::Leaf { path, hash }),
            1 => Some(Child::Branch {
                id: BranchId {
                    depth: bytes[1],
                    prefix: path,
                },
                hash,
            }),
            _ => None,
        }
    }

    fn branch(id: BranchId, node: &Branch) -> Child {
        Child::Branch {
            id,
            hash: branch_hash(id.depth, node.left.hash(), node.right.hash()),
        }
    }

    /// The path (leaf) or prefix (branch) to compare a searched path against.
    fn path(&self) -> &Hash {
        match self {
            Child::Leaf { path, .. } => path,
            Child::Branch { id, .. } => &id.prefix,
        }
    }
}

/// An inner node: the sub-tries whose paths have bit `depth` clear (left) and set (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Branch {
    /// Paths with bit `depth` = 0.
    pub left: Child,
    /// Paths with bit `depth` = 1.
    pub right: Child,
}

impl Branch {
    /// Encoding: left child, then right child.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * CHILD_BYTES);
        self.left.encode(&mut out);
        self.right.encode(&mut out);
        out
    }

    /// Decodes what [`Branch::encode`] wrote; `None` for malformed bytes.
    pub fn decode(bytes: &[u8]) -> Option<Branch> {
        if bytes.len() != 2 * CHILD_BYTES {
            return None;
        }
        Some(Branch {
            left: Child::decode(&bytes[..CHILD_BYTES])?,
            right: Child::decode(&bytes[CHILD_BYTES..])?,
        })
    }

    fn child(&self, right: bool) -> &Child {
        if right { &self.right } else { &self.left }
    }

    fn set_child(&mut self, right: bool, child: Child) {
        if right {
            self.right = child;
        } else {
            self.left = child;
        }
    }
}

/// Errors of tree operations.
#[derive(Debug, thiserror::Error)]
pub enum MerkleError<E> {
    /// The backing store failed to read a branch.
    #[error("failed to read a merkle branch: {0}")]
    Source(E),
    /// A branch the tree refers to is not stored: the tree is corrupt.
    #[error("merkle branch at depth {depth} is missing")]
    MissingBranch {
        /// Depth of the missing branch.
        depth: u8,
    },
}

/// Where the tree reads its branches from.
pub trait BranchSource {
    /// The backing store's error.
    type Error;
    /// The branch stored under `id`, if any.
    fn branch(&self, id: &BranchId) -> Result<Option<Branch>, Self::Error>;
}

/// What a write changes in the tree; applied atomically with the data by the caller.
#[derive(Debug, Default)]
pub struct Update {
    /// The new root (`None` for an empty tree).
    pub root: Option<Child>,
    /// Branches to store (new or rehashed).
    pub put: Vec<(BranchId, Branch)>,
    /// Branches to remove.
    pub remove: Vec<BranchId>,
}

/// The root hash of a tree whose root reference is `root`.
pub fn root_hash(root: &Option<Child>) -> Hash {
    root.as_ref().map_or(EMPTY_ROOT, |c| *c.hash())
}

fn load<S: BranchSource>(source: &S, id: &BranchId) -> Result<Branch, MerkleError<S::Error>> {
    source
        .branch(id)
        .map_err(MerkleError::Source)?
        .ok_or(MerkleError::MissingBranch { depth: id.depth })
}

/// A branch joining `a` and `b`, which first differ at bit `depth`.
fn join(depth: u8, a: Child, b: Child, put: &mut Vec<(BranchId, Branch)>) -> Child {
    let id = BranchId {
        depth,
        prefix: prefix(a.path(), depth),
    };
    let node = if bit(a.path(), depth) {
        Branch { left: b, right: a }
    } else {
        Branch { left: a, right: b }
    };
    let child = Child::branch(id, &node);
    put.push((id, node));
    child
}

/// Rehashes the visited branches bottom-up with `child` replacing the visited sub-trie.
fn unwind(
    mut stack: Vec<(BranchId, Branch, bool)>,
    mut child: Child,
    put: &mut Vec<(BranchId, Branch)>,
) -> Child {
    while let Some((id, mut node, right)) = stack.pop() {
        node.set_child(right, child);
        child = Child::branch(id, &node);
        put.push((id, node));
    }
    child
}

/// Where a search for `path` ends.
enum Found {
    /// The leaf at exactly `path`.
    Leaf,
    /// `path` is absent; the sub-trie `child` is where it would diverge, at bit `depth`.
    Diverges { child: Child, depth: u8 },
}

/// Walks from `root` towards `path`, returning the visited branches (with the side taken).
#[allow(clippy::type_complexity)]
fn descend<S: BranchSource>(
    source: &S,
    root: Child,
    path: &Hash,
) -> Result<(Vec<(BranchId, Branch, bool)>, Found), MerkleError<S::Error>> {
    let mut stack = Vec::with_capacity(32);
    let mut current = root;
    loop {
        match current {
            Child::Leaf { path: leaf_path, .. } => {
                let found = match first_difference(&leaf_path, path) {
                    None => Found::Leaf,
                    Some(depth) => Found::Diverges {
                        child: current,
                        depth,
                    },
                };
                return Ok((stack, found));
            }
            Child::Branch { id, .. } => {
                if let Some(depth) = first_difference(&id.prefix, path).filter(|d| *d < id.depth)
                {
                    return Ok((
                        stack,
                        Found::Diverges {
                            child: current,
                            depth,
                        },
                    ));
                }
                let node = load(source, &id)?;
                let right = bit(path, id.depth);
                current = *node.child(right);
                stack.push((id, node, right));
            }
        }
    }
}

/// Inserts or replaces the leaf at `key_path(key)`.
pub fn insert<S: BranchSource>(
    source: &S,
    root: Option<Child>,
    path: Hash,
    leaf: Hash,
) -> Result<Update, MerkleError<S::Error>> {
    let new_leaf = Child::Leaf { path, hash: leaf };
    let Some(root) = root else {
        return Ok(Update {
            root: Some(new_leaf),
            ..Update::default()
        });
    };
    let (stack, found) = descend(source, root, &path)?;
    let mut put = Vec::with_capacity(stack.len() + 1);
    let replacement = match found {
        Found::Leaf => new_leaf,
        Found::Diverges { child, depth } => join(depth, child, new_leaf, &mut put),
    };
    let root = unwind(stack, replacement, &mut put);
    Ok(Update {
        root: Some(root),
        put,
        remove: Vec::new(),
    })
}

/// Removes the leaf at `path`; `None` when there is no such leaf (nothing changes).
pub fn remove<S: BranchSource>(
    source: &S,
    root: Option<Child>,
    path: Hash,
) -> Result<Option<Update>, MerkleError<S::Error>> {
    let Some(root) = root else { return Ok(None) };
    let (mut stack, found) = descend(source, root, &path)?;
    if !matches!(found, Found::Leaf) {
        return Ok(None);
    }
    let Some((parent_id, parent, right)) = stack.pop() else {
        return Ok(Some(Update::default()));
    };
    // The parent branch collapses: its other sub-trie takes its place unchanged.
    let sibling = *parent.child(!right);
    let mut put = Vec::with_capacity(stack.len());
    let root = unwind(stack, sibling, &mut put);
    Ok(Some(Update {
        root: Some(root),
        put,
        remove: vec![parent_id],
    }))
}

/// One level of an inclusion proof: the hash of the sibling sub-trie at a branch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProofStep {
    /// The branch's depth (which bit of the key's path chooses the side).
    pub depth: u8,
    /// The other side's hash.
    #[serde(with = "hex_hash")]
    pub sibling: Hash,
}

/// An inclusion proof for one key, from the root down.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proof {
    /// Branches from the root to the leaf.
    pub steps: Vec<ProofStep>,
}

/// The inclusion proof of the leaf at `path`, or `None` when it is absent.
pub fn prove<S: BranchSource>(
    source: &S,
    root: Option<Child>,
    path: &Hash,
) -> Result<Option<Proof>, MerkleError<S::Error>> {
    let Some(root) = root else { return Ok(None) };
    let (stack, found) = descend(source, root, path)?;
    if !matches!(found, Found::Leaf) {
        return Ok(None);
    }
    let steps = stack
        .into_iter()
        .map(|(id, node, right)| ProofStep {
            depth: id.depth,
            sibling: *node.child(!right).hash(),
        })
        .collect();
    Ok(Some(Proof { steps }))
}

/// Checks that `(key, value)` is in the tree whose root is `root`. Pure: a client can call
/// it with a root and a proof it received.
pub fn verify_proof(root: &Hash, key: &[u8], value: &[u8], proof: &Proof) -> bool {
    let path = key_path(key);
    // Depths strictly increase from the root down; anything else is a forged proof.
    if proof.steps.windows(2).any(|w| w[0].depth >= w[1].depth) {
        return false;
    }
    let mut hash = leaf_hash(key, value);
    for step in proof.steps.iter().rev() {
        hash = if bit(&path, step.depth) {
            branch_hash(step.depth, &step.sibling, &hash)
        } else {
            branch_hash(step.depth, &hash, &step.sibling)
        };
    }
    &hash == root
}

/// The root of the tree holding exactly `leaves` (path, leaf hash), computed from scratch.
/// Used by offline verification and tests; `O(n log n)`.
pub fn compute_root(mut leaves: Vec<(Hash, Hash)>) -> Hash {
    leaves.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    leaves.dedup_by(|a, b| a.0 == b.0);
    if leaves.is_empty() {
        return EMPTY_ROOT;
    }
    subtree_hash(&leaves)
}

fn subtree_hash(leaves: &[(Hash, Hash)]) -> Hash {
    let (first, last) = (&leaves[0], &leaves[leaves.len() - 1]);
    let Some(depth) = first_difference(&first.0, &last.0) else {
        return first.1;
    };
    // Sorted, so the first and last paths share exactly the prefix all of them share.
    let split = leaves.partition_point(|(p, _)| !bit(p, depth));
    branch_hash(
        depth,
        &subtree_hash(&leaves[..split]),
        &subtree_hash(&leaves[split..]),
    )
}

/// An in-memory tree: the reference implementation used by tests and offline tools.
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    root: Option<Child>,
    branches: HashMap<BranchId, Branch>,
}

impl BranchSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn branch(&self, id: &BranchId) -> Result<Option<Branch>, Self::Error> {
        Ok(self.branches.get(id).copied())
    }
}

impl MemoryTree {
    /// The current root hash.
    pub fn root(&self) -> Hash {
        root_hash(&self.root)
    }

    /// Number of stored branches (always leaves − 1 for a non-empty tree).
    pub fn branch_count(&self) -> usize {
        self.branches.len()
    }

    fn apply(&mut self, update: Update) {
        for id in update.remove {
            self.branches.remove(&id);
        }
        self.branches.extend(update.put);
        self.root = update.root;
    }

    /// Inserts or replaces `key`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        let update = match insert(self, self.root, key_path(key), leaf_hash(key, value)) {
            Ok(update) => update,
            Err(MerkleError::MissingBranch { depth }) => {
                unreachable!("memory tree lost its branch at depth {depth}")
            }
        };
        self.apply(update);
    }

    /// Removes `key`; false when it was absent.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match remove(self, self.root, key_path(key)) {
            Ok(Some(update)) => {
                self.apply(update);
                true
            }
            Ok(None) => false,
            Err(MerkleError::MissingBranch { depth }) => {
                unreachable!("memory tree lost its branch at depth {depth}")
            }
        }
    }

    /// The inclusion proof of `key`.
    pub fn prove(&self, key: &[u8]) -> Option<Proof> {
        match prove(self, self.root, &key_path(key)) {
            Ok(proof) => proof,
            Err(MerkleError::MissingBranch { depth }) => {
                unreachable!("memory tree lost its branch at depth {depth}")
            }
        }
    }
}

/// Hex (de)serialisation of hashes for JSON.
pub mod hex_hash {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Lower-case hex of `hash`.
    pub fn to_hex(hash: &Hash) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Hash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    /// Serde serialiser.
    pub fn serialize<S: Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_hex(hash))
    }

    /// Serde deserialiser.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        from_hex(&text).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn reference_root(contents: &BTreeMap<Vec<u8>, Vec<u8>>) -> Hash {
        compute_root(
            contents
                .iter()
                .map(|(k, v)| (key_path(k), leaf_hash(k, v)))
                .collect(),
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>),
        Del(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::Put(k, v)),
            1 => any::<u8>().prop_map(Op::Del),
        ]
    }

    fn key(k: u8) -> Vec<u8> {
        format!("key-{k}").into_bytes()
    }

    #[test]
    fn empty_tree_has_the_empty_root() {
        let tree = MemoryTree::default();
        assert_eq!(tree.root(), EMPTY_ROOT);
        assert_eq!(compute_root(Vec::new()), EMPTY_ROOT);
    }

    #[test]
    fn insert_then_remove_everything_returns_to_empty() {
        let mut tree = MemoryTree::default();
        for i in 0..200u32 {
            tree.insert(&i.to_be_bytes(), b"v");
        }
        assert_eq!(tree.branch_count(), 199);
        for i in 0..200u32 {
            assert!(tree.remove(&i.to_be_bytes()));
        }
        assert_eq!(tree.root(), EMPTY_ROOT);
        assert_eq!(tree.branch_count(), 0);
        assert!(!tree.remove(b"absent"));
    }

    #[test]
    fn branch_and_child_encodings_round_trip() {
        let mut tree = MemoryTree::default();
        for i in 0..50u32 {
            tree.insert(&i.to_be_bytes(), &i.to_le_bytes());
        }
        for (id, branch) in &tree.branches {
            assert_eq!(Branch::decode(&branch.encode()).as_ref(), Some(branch));
            let mut out = Vec::new();
            Child::branch(*id, branch).encode(&mut out);
            assert_eq!(Child::decode(&out), Some(Child::branch(*id, branch)));
        }
        assert_eq!(Branch::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn prefix_clears_bits_from_depth() {
        let path = [0xFF; 32];
        let p = prefix(&path, 11);
        assert_eq!(p[0], 0xFF);
        assert_eq!(p[1], 0b1110_0000);
        assert!(p[2..].iter().all(|b| *b == 0));
        assert_eq!(first_difference(&p, &path), Some(11));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn root_matches_reference_after_any_operation_sequence(ops in proptest::collection::vec(op(), 0..120)) {
            let mut tree = MemoryTree::default();
            let mut contents = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => { tree.insert(&key(k), &v); contents.insert(key(k), v); }
                    Op::Del(k) => { prop_assert_eq!(tree.remove(&key(k)), contents.remove(&key(k)).is_some()); }
                }
            }
            prop_assert_eq!(tree.root(), reference_root(&contents));
            prop_assert_eq!(tree.branch_count(), contents.len().saturating_sub(1));
        }

        #[test]
        fn root_does_not_depend_on_operation_order(
            entries in proptest::collection::btree_map(any::<u16>(), any::<u8>(), 1..60),
            seed in any::<u64>(),
            noise in proptest::collection::vec(any::<u16>(), 0..20),
        ) {
            // Order A: plain inserts in key order.
            let mut a = MemoryTree::default();
            for (k, v) in &entries { a.insert(&k.to_be_bytes(), &[*v]); }
            // Order B: shuffled, with transient keys and stale values written first and removed
            // or overwritten later.
            let mut b = MemoryTree::default();
            let mut order: Vec<_> = entries.iter().collect();
            fastrand::Rng::with_seed(seed).shuffle(&mut order);
            for n in &noise {
                if !entries.contains_key(n) { b.insert(&n.to_be_bytes(), b"transient"); }
            }
            for (k, v) in &order { b.insert(&k.to_be_bytes(), &[v.wrapping_add(1)]); }
            for (k, v) in order.iter().rev() { b.insert(&k.to_be_bytes(), &[**v]); }
            for n in &noise {
                if !entries.contains_key(n) { b.remove(&n.to_be_bytes()); }
            }
            prop_assert_eq!(a.root(), b.root());
        }

        #[test]
        fn every_present_key_has_a_proof_that_verifies_and_tampering_fails(
            entries in proptest::collection::btree_map(any::<u16>(), proptest::collection::vec(any::<u8>(), 1..6), 1..80),
            flip in any::<u8>(),
        ) {
            let mut tree = MemoryTree::default();
            for (k, v) in &entries { tree.insert(&k.to_be_bytes(), v); }
            let root = tree.root();
            for (k, v) in &entries {
                let key = k.to_be_bytes();
                let proof = tree.prove(&key).expect("present key has a proof");
                prop_assert!(verify_proof(&root, &key, v, &proof));
                // A changed value fails.
                let mut value = v.clone();
                value[0] ^= flip | 1;
                prop_assert!(!verify_proof(&root, &key, &value, &proof));
                // A changed key fails.
                let other = k.wrapping_add(1).to_be_bytes();
                prop_assert!(!verify_proof(&root, &other, v, &proof));
                // A changed sibling fails.
                if !proof.steps.is_empty() {
                    let mut forged = proof.clone();
                    let i = usize::from(flip) % forged.steps.len();
                    forged.steps[i].sibling[usize::from(flip) % 32] ^= 1;
                    prop_assert!(!verify_proof(&root, &key, v, &forged));
                }
            }
            prop_assert!(tree.prove(b"absent-key").is_none());
        }
    }

    #[test]
    fn proof_json_round_trips() {
        let mut tree = MemoryTree::default();
        tree.insert(b"a", b"1");
        tree.insert(b"b", b"2");
        let proof = tree.prove(b"a").expect("present");
        let json = serde_json::to_string(&proof).expect("serialise");
        let back: Proof = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, proof);
        assert!(verify_proof(&tree.root(), b"a", b"1", &back));
    }
}
