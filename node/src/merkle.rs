//! The integrity tree: a compressed binary Merkle trie (crit-bit trie) over `blake3(key)`.
//!
//! Every live (key, value) pair is a leaf placed at the 256-bit path `key_path(key)`. Inner
//! nodes ("branches") exist only where two sub-tries diverge, at the bit depth of the first
//! differing bit, so the shape of the trie — and therefore the root — depends only on the
//! set of pairs, never on the order in which they were written. With uniformly distributed
//! paths the expected depth is `log2(n)`, so a write rehashes `O(log n)` nodes and never
//! walks the other keys.
//!
//! The module is pure (no I/O): [`Tree`] is the live structure, [`verify_proof`] the
//! function a client calls (it lives in `phoenix_node_api::proof`, with the hashing, so a
//! client needs no more than that crate), [`compute_root`] the from-scratch reference.

pub use phoenix_node_api::proof::{
    EMPTY_ROOT, Hash, Proof, ProofStep, bit, branch_hash, hex_hash, key_path, leaf_hash,
    verify_proof,
};

/// The index of the first bit where `a` and `b` differ, or `None` when they are equal.
fn first_difference(a: &Hash, b: &Hash) -> Option<u8> {
    a.iter().zip(b.iter()).enumerate().find_map(|(i, (x, y))| {
        let diff = x ^ y;
        // i < 32 and leading_zeros < 8, so the index fits in a u8.
        (diff != 0).then(|| (i * 8) as u8 + diff.leading_zeros() as u8)
    })
}

/// A node of the arena. Children are arena indices.
#[derive(Clone, Copy, Debug)]
enum Node {
    Leaf {
        path: Hash,
        hash: Hash,
    },
    Branch {
        depth: u8,
        children: [u32; 2],
        hash: Hash,
    },
    Free,
}

impl Node {
    fn hash(&self) -> &Hash {
        match self {
            Node::Leaf { hash, .. } | Node::Branch { hash, .. } => hash,
            Node::Free => &EMPTY_ROOT,
        }
    }
}

/// The integrity tree: a crit-bit trie in an arena, rehashed along one path per write.
///
/// It is derived state: the store rebuilds it from the data (or loads a checkpoint of its
/// leaves) at open, so the write path adds no I/O for it.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: Option<u32>,
    leaves: usize,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The tree holding exactly `leaves` (path, leaf hash); duplicate paths keep one.
    pub fn from_leaves(mut leaves: Vec<(Hash, Hash)>) -> Tree {
        leaves.sort_unstable_by_key(|leaf| leaf.0);
        leaves.dedup_by(|a, b| a.0 == b.0);
        let mut tree = Tree {
            nodes: Vec::with_capacity(leaves.len().saturating_mul(2)),
            ..Tree::default()
        };
        if !leaves.is_empty() {
            tree.root = Some(tree.build(&leaves));
            tree.leaves = leaves.len();
        }
        tree
    }

    fn build(&mut self, leaves: &[(Hash, Hash)]) -> u32 {
        let (first, last) = (&leaves[0], &leaves[leaves.len() - 1]);
        let Some(depth) = first_difference(&first.0, &last.0) else {
            return self.alloc(Node::Leaf {
                path: first.0,
                hash: first.1,
            });
        };
        // Sorted, so the first and last paths share exactly the prefix all of them share.
        let split = leaves.partition_point(|(p, _)| bit(p, depth) == 0);
        let left = self.build(&leaves[..split]);
        let right = self.build(&leaves[split..]);
        self.alloc_branch(depth, [left, right])
    }

    fn alloc(&mut self, node: Node) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.nodes[index as usize] = node;
                index
            }
            None => {
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 tree nodes")
            }
        }
    }

    fn alloc_branch(&mut self, depth: u8, children: [u32; 2]) -> u32 {
        let hash = self.branch_hash_of(depth, children);
        self.alloc(Node::Branch {
            depth,
            children,
            hash,
        })
    }

    fn release(&mut self, index: u32) {
        self.nodes[index as usize] = Node::Free;
        self.free.push(index);
    }

    fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize]
    }

    fn branch_hash_of(&self, depth: u8, children: [u32; 2]) -> Hash {
        branch_hash(
            depth,
            self.node(children[0]).hash(),
            self.node(children[1]).hash(),
        )
    }

    /// Rehashes the branches on `stack` bottom-up.
    fn rehash(&mut self, stack: &[(u32, usize)]) {
        for &(index, _) in stack.iter().rev() {
            if let Node::Branch {
                depth, children, ..
            } = self.nodes[index as usize]
            {
                let hash = self.branch_hash_of(depth, children);
                if let Node::Branch { hash: h, .. } = &mut self.nodes[index as usize] {
                    *h = hash;
                }
            }
        }
    }

    /// Points the parent on top of `stack` (or the root) at `child`.
    fn attach(&mut self, stack: &[(u32, usize)], child: u32) {
        match stack.last() {
            None => self.root = Some(child),
            Some(&(parent, side)) => {
                if let Node::Branch { children, .. } = &mut self.nodes[parent as usize] {
                    children[side] = child;
                }
            }
        }
    }

    /// Walks from the root following `path`'s bits through branches shallower than
    /// `limit`; returns the visited branches (with the side taken) and where it stopped.
    fn descend(&self, root: u32, path: &Hash, limit: u16) -> (Vec<(u32, usize)>, u32) {
        let mut stack = Vec::with_capacity(40);
        let mut current = root;
        while let Node::Branch {
            depth, children, ..
        } = self.node(current)
        {
            if u16::from(*depth) >= limit {
                break;
            }
            let side = bit(path, *depth);
            stack.push((current, side));
            current = children[side];
        }
        (stack, current)
    }

    /// The root hash ([`EMPTY_ROOT`] when empty).
    pub fn root(&self) -> Hash {
        self.root.map_or(EMPTY_ROOT, |r| *self.node(r).hash())
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// Inserts or replaces the leaf at `path`: `O(depth)` hashes.
    pub fn insert(&mut self, path: Hash, leaf: Hash) {
        let Some(root) = self.root else {
            self.root = Some(self.alloc(Node::Leaf { path, hash: leaf }));
            self.leaves = 1;
            return;
        };
        // The leaf sharing the longest prefix with `path` tells where `path` diverges. One
        // walk serves both cases: the walk to the divergence is a prefix of this one.
        let (mut stack, nearest) = self.descend(root, &path, 256);
        let nearest_path = match self.node(nearest) {
            Node::Leaf { path, .. } => *path,
            _ => unreachable!("descent ends at a leaf"),
        };
        match first_difference(&nearest_path, &path) {
            None => {
                self.nodes[nearest as usize] = Node::Leaf { path, hash: leaf };
                self.rehash(&stack);
            }
            Some(critical) => {
                // Stop at the first branch at or below the divergence (or the leaf).
                let keep = stack
                    .iter()
                    .position(|&(index, _)| {
                        matches!(self.node(index), Node::Branch { depth, .. } if *depth >= critical)
                    })
                    .unwrap_or(stack.len());
                let at = stack.get(keep).map_or(nearest, |&(index, _)| index);
                stack.truncate(keep);
                let new_leaf = self.alloc(Node::Leaf { path, hash: leaf });
                let children = if bit(&path, critical) == 1 {
                    [at, new_leaf]
                } else {
                    [new_leaf, at]
                };
                let branch = self.alloc_branch(critical, children);
                self.attach(&stack, branch);
                self.rehash(&stack);
                self.leaves += 1;
            }
        }
    }

    /// Removes the leaf at `path`; false when absent.
    pub fn remove(&mut self, path: &Hash) -> bool {
        let Some(root) = self.root else { return false };
        let (mut stack, at) = self.descend(root, path, 256);
        if !matches!(self.node(at), Node::Leaf { path: p, .. } if p == path) {
            return false;
        }
        self.release(at);
        self.leaves -= 1;
        let Some((parent, side)) = stack.pop() else {
            self.root = None;
            return true;
        };
        // The parent collapses: the other side takes its place.
        let sibling = match self.node(parent) {
            Node::Branch { children, .. } => children[1 - side],
            _ => unreachable!("stack holds branches"),
        };
        self.release(parent);
        self.attach(&stack, sibling);
        self.rehash(&stack);
        true
    }

    /// The inclusion proof of the leaf at `path`, or `None` when absent.
    pub fn prove(&self, path: &Hash) -> Option<Proof> {
        let root = self.root?;
        let (stack, at) = self.descend(root, path, 256);
        if !matches!(self.node(at), Node::Leaf { path: p, .. } if p == path) {
            return None;
        }
        let steps = stack
            .iter()
            .map(|&(index, side)| match self.node(index) {
                Node::Branch {
                    depth, children, ..
                } => ProofStep {
                    depth: *depth,
                    sibling: *self.node(children[1 - side]).hash(),
                },
                _ => unreachable!("stack holds branches"),
            })
            .collect();
        Some(Proof { steps })
    }

    /// The leaf hash stored at `path`, or `None` when absent.
    pub fn leaf(&self, path: &Hash) -> Option<Hash> {
        let root = self.root?;
        let (_, at) = self.descend(root, path, 256);
        match self.node(at) {
            Node::Leaf { path: p, hash } if p == path => Some(*hash),
            _ => None,
        }
    }

    /// Every leaf (path, leaf hash) in path order.
    pub fn leaves(&self) -> Vec<(Hash, Hash)> {
        let mut out = Vec::with_capacity(self.leaves);
        let mut stack: Vec<u32> = self.root.into_iter().collect();
        while let Some(index) = stack.pop() {
            match self.node(index) {
                Node::Leaf { path, hash } => out.push((*path, *hash)),
                Node::Branch { children, .. } => {
                    stack.push(children[1]);
                    stack.push(children[0]);
                }
                Node::Free => {}
            }
        }
        out
    }

    /// Appends the tree in pre-order: a leaf as `0, path, hash` (65 bytes), a branch as
    /// `1, depth, hash` (34 bytes) followed by its left and right sub-trees. Hashes are
    /// stored, so [`Tree::decode`] rebuilds the tree without rehashing.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut stack: Vec<u32> = self.root.into_iter().collect();
        while let Some(index) = stack.pop() {
            match self.node(index) {
                Node::Leaf { path, hash } => {
                    out.push(0);
                    out.extend_from_slice(path);
                    out.extend_from_slice(hash);
                }
                Node::Branch {
                    depth,
                    children,
                    hash,
                } => {
                    out.extend_from_slice(&[1, *depth]);
                    out.extend_from_slice(hash);
                    stack.push(children[1]);
                    stack.push(children[0]);
                }
                Node::Free => {}
            }
        }
    }

    /// Rebuilds a tree from [`Tree::encode`]'s output; `None` when the bytes are not a
    /// well-formed encoding (wrong tags, depths not increasing downwards, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Option<Tree> {
        let mut tree = Tree::new();
        if bytes.is_empty() {
            return Some(tree);
        }
        let mut at = 0;
        let root = tree.decode_node(bytes, &mut at, None)?;
        if at != bytes.len() {
            return None;
        }
        tree.root = Some(root);
        Some(tree)
    }

    fn decode_node(&mut self, bytes: &[u8], at: &mut usize, above: Option<u8>) -> Option<u32> {
        match *bytes.get(*at)? {
            0 => {
                let path: Hash = bytes.get(*at + 1..*at + 33)?.try_into().ok()?;
                let hash: Hash = bytes.get(*at + 33..*at + 65)?.try_into().ok()?;
                *at += 65;
                self.leaves += 1;
                Some(self.alloc(Node::Leaf { path, hash }))
            }
            1 => {
                let depth = *bytes.get(*at + 1)?;
                if above.is_some_and(|d| d >= depth) {
                    return None;
                }
                let hash: Hash = bytes.get(*at + 2..*at + 34)?.try_into().ok()?;
                *at += 34;
                let index = self.alloc(Node::Free);
                let left = self.decode_node(bytes, at, Some(depth))?;
                let right = self.decode_node(bytes, at, Some(depth))?;
                self.nodes[index as usize] = Node::Branch {
                    depth,
                    children: [left, right],
                    hash,
                };
                Some(index)
            }
            _ => None,
        }
    }

    /// Inserts or replaces `key` with `value` (hashing both).
    pub fn insert_pair(&mut self, key: &[u8], value: &[u8]) {
        self.insert(key_path(key), leaf_hash(key, value));
    }

    /// Removes `key`; false when absent.
    pub fn remove_key(&mut self, key: &[u8]) -> bool {
        self.remove(&key_path(key))
    }

    /// The inclusion proof of `key`.
    pub fn prove_key(&self, key: &[u8]) -> Option<Proof> {
        self.prove(&key_path(key))
    }

    /// Arena slots in use (leaves + branches); for tests and memory accounting.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

/// The root of the tree holding exactly `leaves` (path, leaf hash), computed from scratch
/// (bulk build, no incremental updates). Used by offline verification and tests.
pub fn compute_root(leaves: Vec<(Hash, Hash)>) -> Hash {
    Tree::from_leaves(leaves).root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const GOLDEN: &str = "3e132602d37b3ed5944d6e2db803b23e0913cb32e0a866dbb685d4ff7dcdddc2";

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

    /// The root of a fixed set, as every earlier version of the tree computed it: a change
    /// of layout must not change a root (replicas and checkpoints compare them).
    #[test]
    fn the_root_of_a_known_set_does_not_change() {
        let mut tree = Tree::new();
        for i in 0..1000u32 {
            tree.insert_pair(format!("key-{i}").as_bytes(), &i.to_le_bytes());
        }
        for i in (0..1000u32).step_by(7) {
            tree.remove_key(format!("key-{i}").as_bytes());
        }
        assert_eq!(hex_hash::to_hex(&tree.root()), GOLDEN);
    }

    #[test]
    fn empty_tree_has_the_empty_root() {
        let tree = Tree::new();
        assert_eq!(tree.root(), EMPTY_ROOT);
        assert_eq!(compute_root(Vec::new()), EMPTY_ROOT);
    }

    #[test]
    fn insert_then_remove_everything_returns_to_empty() {
        let mut tree = Tree::new();
        for i in 0..200u32 {
            tree.insert_pair(&i.to_be_bytes(), b"v");
        }
        assert_eq!(tree.node_count(), 399);
        for i in 0..200u32 {
            assert!(tree.remove_key(&i.to_be_bytes()));
        }
        assert_eq!(tree.root(), EMPTY_ROOT);
        assert_eq!(tree.node_count(), 0);
        assert!(!tree.remove_key(b"absent"));
    }

    #[test]
    fn bulk_built_and_incremental_trees_agree_and_list_leaves_in_order() {
        let mut incremental = Tree::new();
        let mut leaves = Vec::new();
        for i in 0..500u32 {
            incremental.insert_pair(&i.to_be_bytes(), &i.to_le_bytes());
            leaves.push((
                key_path(&i.to_be_bytes()),
                leaf_hash(&i.to_be_bytes(), &i.to_le_bytes()),
            ));
        }
        let bulk = Tree::from_leaves(leaves.clone());
        assert_eq!(bulk.root(), incremental.root());
        let mut encoded = Vec::new();
        incremental.encode(&mut encoded);
        let decoded = Tree::decode(&encoded).expect("decodes");
        assert_eq!((decoded.root(), decoded.len()), (incremental.root(), 500));
        assert_eq!(decoded.leaves(), incremental.leaves());
        assert!(Tree::decode(&encoded[..encoded.len() - 1]).is_none());
        let mut bad_tag = encoded.clone();
        bad_tag[0] = 7;
        assert!(Tree::decode(&bad_tag).is_none());
        assert!(Tree::decode(&[]).expect("empty").is_empty());
        assert_eq!(bulk.len(), 500);
        leaves.sort();
        assert_eq!(incremental.leaves(), leaves);
        assert_eq!(bulk.leaves(), leaves);
    }

    #[test]
    fn freed_slots_are_reused() {
        let mut tree = Tree::new();
        for round in 0..10u8 {
            for i in 0..100u32 {
                tree.insert_pair(&i.to_be_bytes(), &[round]);
            }
            for i in 0..100u32 {
                tree.remove_key(&i.to_be_bytes());
            }
        }
        assert!(
            tree.nodes.len() <= 199,
            "arena grew to {}",
            tree.nodes.len()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn root_matches_reference_after_any_operation_sequence(ops in proptest::collection::vec(op(), 0..120)) {
            let mut tree = Tree::new();
            let mut contents = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => { tree.insert_pair(&key(k), &v); contents.insert(key(k), v); }
                    Op::Del(k) => { prop_assert_eq!(tree.remove_key(&key(k)), contents.remove(&key(k)).is_some()); }
                }
            }
            prop_assert_eq!(tree.root(), reference_root(&contents));
            prop_assert_eq!(tree.len(), contents.len());
            prop_assert_eq!(tree.node_count(), (2 * contents.len()).saturating_sub(1));
        }

        #[test]
        fn root_does_not_depend_on_operation_order(
            entries in proptest::collection::btree_map(any::<u16>(), any::<u8>(), 1..60),
            seed in any::<u64>(),
            noise in proptest::collection::vec(any::<u16>(), 0..20),
        ) {
            // Order A: plain inserts in key order.
            let mut a = Tree::new();
            for (k, v) in &entries { a.insert_pair(&k.to_be_bytes(), &[*v]); }
            // Order B: shuffled, with transient keys and stale values written first and removed
            // or overwritten later.
            let mut b = Tree::new();
            let mut order: Vec<_> = entries.iter().collect();
            fastrand::Rng::with_seed(seed).shuffle(&mut order);
            for n in &noise {
                if !entries.contains_key(n) { b.insert_pair(&n.to_be_bytes(), b"transient"); }
            }
            for (k, v) in &order { b.insert_pair(&k.to_be_bytes(), &[v.wrapping_add(1)]); }
            for (k, v) in order.iter().rev() { b.insert_pair(&k.to_be_bytes(), &[**v]); }
            for n in &noise {
                if !entries.contains_key(n) { b.remove_key(&n.to_be_bytes()); }
            }
            prop_assert_eq!(a.root(), b.root());
        }

        #[test]
        fn every_present_key_has_a_proof_that_verifies_and_tampering_fails(
            entries in proptest::collection::btree_map(any::<u16>(), proptest::collection::vec(any::<u8>(), 1..6), 1..80),
            flip in any::<u8>(),
        ) {
            let mut tree = Tree::new();
            for (k, v) in &entries { tree.insert_pair(&k.to_be_bytes(), v); }
            let root = tree.root();
            for (k, v) in &entries {
                let key = k.to_be_bytes();
                let proof = tree.prove_key(&key).expect("present key has a proof");
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
            prop_assert!(tree.prove_key(b"absent-key").is_none());
        }
    }

    #[test]
    fn proof_json_round_trips() {
        let mut tree = Tree::new();
        tree.insert_pair(b"a", b"1");
        tree.insert_pair(b"b", b"2");
        let proof = tree.prove_key(b"a").expect("present");
        let json = serde_json::to_string(&proof).expect("serialise");
        let back: Proof = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, proof);
        assert!(verify_proof(&tree.root(), b"a", b"1", &back));
    }
}
