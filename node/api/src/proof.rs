//! Merkle inclusion proofs as a client checks them: the hashing of keys, leaves and
//! branches of the node's integrity trie, and [`verify_proof`]. Pure (no I/O); the node's
//! trie (`phoenix_node::merkle`) builds on the same functions.

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
pub fn branch_hash(depth: u8, left: &Hash, right: &Hash) -> Hash {
    // One 66-byte input hashed at once (the same bytes as feeding the parts in turn).
    let mut input = [0u8; 66];
    input[0] = BRANCH_DOMAIN;
    input[1] = depth;
    input[2..34].copy_from_slice(left);
    input[34..].copy_from_slice(right);
    *blake3::hash(&input).as_bytes()
}

/// Bit `index` of `path`, most significant bit first.
pub fn bit(path: &Hash, index: u8) -> usize {
    usize::from(path[usize::from(index / 8)] & (0x80 >> (index % 8)) != 0)
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
        hash = if bit(&path, step.depth) == 1 {
            branch_hash(step.depth, &step.sibling, &hash)
        } else {
            branch_hash(step.depth, &hash, &step.sibling)
        };
    }
    &hash == root
}

/// Hex (de)serialisation of hashes for JSON.
pub mod hex_hash {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Lower-case hex of `hash`.
    pub fn to_hex(hash: &Hash) -> String {
        blake3::Hash::from_bytes(*hash).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Hash> {
        blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
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
