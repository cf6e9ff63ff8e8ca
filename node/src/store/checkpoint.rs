//! Checkpoints of the Merkle tree's leaves, so an open does not rescan the data.
//!
//! The file `DATA_DIR/tree.checkpoint` holds a random id, the key count, logical bytes and
//! every (path, leaf hash) in path order, followed by a blake3 checksum. It is trusted only
//! when the database's `META_CHECKPOINT` record holds the same id: that record is written
//! after the file is durable, and the first write after a checkpoint removes it in the
//! same atomic batch as the data. sled recovers a prefix of its log, so if any later write
//! survived a crash, the removal did too.
//!
//! # Guarantees
//! A missing, torn, stale or corrupt checkpoint is never used: [`load`] returns `None` and
//! the store rebuilds the tree from the records.

use std::io::Write;
use std::path::Path;

use super::{Counters, META_CHECKPOINT, Result, Scanned, StoreError, io};
use crate::merkle::{Hash, Tree};

const FILE: &str = "tree.checkpoint";
const MAGIC: &[u8; 8] = b"PHXTREE2";
const HEADER: usize = 8 + 16 + 8 + 8 + 8 + 8;
const LEAF: usize = 64;

/// Writes the checkpoint file for `tree`, then marks the database as matching it.
pub(super) fn save(dir: &Path, db: &sled::Db, counters: &Counters, tree: &Tree) -> Result<()> {
    let id: [u8; 16] = fastrand::u128(..).to_le_bytes();
    let leaves = tree.leaves();
    let mut bytes = Vec::with_capacity(HEADER + leaves.len() * LEAF + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&id);
    bytes.extend_from_slice(&counters.keys.to_le_bytes());
    bytes.extend_from_slice(&counters.logical.to_le_bytes());
    bytes.extend_from_slice(&counters.tombstones.to_le_bytes());
    bytes.extend_from_slice(&(leaves.len() as u64).to_le_bytes());
    for (path, leaf) in &leaves {
        bytes.extend_from_slice(path);
        bytes.extend_from_slice(leaf);
    }
    let checksum = blake3::hash(&bytes);
    bytes.extend_from_slice(checksum.as_bytes());

    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io("create the tree checkpoint"))?;
    file.write_all(&bytes).map_err(io("write the tree checkpoint"))?;
    file.sync_all().map_err(io("sync the tree checkpoint"))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io("replace the tree checkpoint"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the data directory"))?;
    db.insert(META_CHECKPOINT, &id[..])?;
    db.flush()?;
    Ok(())
}

/// The tree and counters from the checkpoint, when it matches the data.
pub(super) fn load(dir: &Path, db: &sled::Db) -> Result<Option<Scanned>> {
    let Some(expected_id) = db.get(META_CHECKPOINT)? else {
        return Ok(None);
    };
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                action: "read the tree checkpoint",
                source,
            });
        }
    };
    Ok(parse(&bytes, &expected_id))
}

fn parse(bytes: &[u8], expected_id: &[u8]) -> Option<Scanned> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, checksum) = bytes.split_at(body_len);
    if body.len() < HEADER || &body[..8] != MAGIC || blake3::hash(body).as_bytes() != checksum {
        return None;
    }
    if &body[8..24] != expected_id {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let (keys, logical, tombstones, count) = (word(24)?, word(32)?, word(40)?, word(48)?);
    let leaves_bytes = &body[HEADER..];
    if leaves_bytes.len() as u64 != count.checked_mul(LEAF as u64)? || count != keys {
        return None;
    }
    let leaves: Vec<(Hash, Hash)> = leaves_bytes
        .chunks_exact(LEAF)
        .filter_map(|chunk| Some((chunk[..32].try_into().ok()?, chunk[32..].try_into().ok()?)))
        .collect();
    Some(Scanned {
        tree: Tree::from_leaves(leaves),
        keys,
        logical,
        tombstones,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_or_foreign_checkpoint_is_refused() {
        let mut tree = Tree::new();
        tree.insert_pair(b"k", b"v");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().temporary(true).open().expect("db");
        let counters = Counters {
            keys: 1,
            logical: 2,
            tombstones: 3,
        };
        save(dir.path(), &db, &counters, &tree).expect("save");
        let id = db.get(META_CHECKPOINT).expect("get").expect("marked");
        let bytes = std::fs::read(dir.path().join(FILE)).expect("read");
        let loaded = parse(&bytes, &id).expect("valid checkpoint");
        assert_eq!(
            (loaded.tree.root(), loaded.keys, loaded.logical, loaded.tombstones),
            (tree.root(), 1, 2, 3)
        );
        assert!(parse(&bytes, b"another-id-16byt").is_none());
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(parse(&flipped, &id).is_none());
        assert!(parse(&bytes[..bytes.len() - 1], &id).is_none());
        assert!(parse(&[], &id).is_none());
    }
}
