//! Checkpoints of the Merkle tree's leaves, so an open does not rescan the data.
//!
//! The file `DATA_DIR/tree.checkpoint` holds a random id, the key count, logical bytes and
//! the tree with its hashes ([`Tree::encode`]), followed by a blake3 checksum, so loading
//! it hashes nothing but the checksum. It is trusted only
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
use crate::merkle::Tree;

const FILE: &str = "tree.checkpoint";
const MAGIC: &[u8; 8] = b"PHXTREE2";
const HEADER: usize = 8 + 16 + 8 + 8;

/// Writes the checkpoint file for `tree`, then marks the database as matching it.
pub(super) fn save(dir: &Path, db: &sled::Db, counters: &Counters, tree: &Tree) -> Result<()> {
    let id: [u8; 16] = fastrand::u128(..).to_le_bytes();
    let mut bytes = Vec::with_capacity(HEADER + tree.len() * 100 + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&id);
    bytes.extend_from_slice(&counters.keys.to_le_bytes());
    bytes.extend_from_slice(&counters.logical.to_le_bytes());
    tree.encode(&mut bytes);
    let checksum = blake3::hash(&bytes);
    bytes.extend_from_slice(checksum.as_bytes());

    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io("create the tree checkpoint"))?;
    file.write_all(&bytes)
        .map_err(io("write the tree checkpoint"))?;
    file.sync_all().map_err(io("sync the tree checkpoint"))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io("replace the tree checkpoint"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the data directory"))?;
    db.insert(META_CHECKPOINT, &id[..])?;
    db.flush()?;
    Ok(())
}

/// A checkpoint read from its file; usable only if [`Checkpoint::matches`] the database.
#[derive(Debug)]
pub(super) struct Checkpoint {
    id: [u8; 16],
    pub(super) scanned: Scanned,
}

impl Checkpoint {
    /// Whether the database still holds exactly the data this checkpoint describes.
    pub(super) fn matches(&self, db: &sled::Db) -> Result<bool> {
        Ok(db
            .get(META_CHECKPOINT)?
            .is_some_and(|id| id.as_ref() == self.id))
    }
}

/// Reads and checks the checkpoint file, and builds its tree. Needs no database, so it runs
/// while sled opens; `None` when there is no intact file.
pub(super) fn read(dir: &Path) -> Result<Option<Checkpoint>> {
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
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8]) -> Option<Checkpoint> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, checksum) = bytes.split_at(body_len);
    if body.len() < HEADER || &body[..8] != MAGIC || blake3::hash(body).as_bytes() != checksum {
        return None;
    }
    let id: [u8; 16] = body[8..24].try_into().ok()?;
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let (keys, logical) = (word(24)?, word(32)?);
    let tree = Tree::decode(&body[HEADER..])?;
    if tree.len() as u64 != keys {
        return None;
    }
    Some(Checkpoint {
        id,
        scanned: Scanned {
            tree,
            counters: Counters { keys, logical },
        },
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
        };
        save(dir.path(), &db, &counters, &tree).expect("save");
        let loaded = read(dir.path()).expect("read").expect("valid checkpoint");
        assert!(loaded.matches(&db).expect("compare"));
        let scanned = &loaded.scanned;
        assert_eq!(
            (scanned.tree.root(), scanned.counters),
            (tree.root(), counters)
        );
        // A write after the checkpoint removes the marker: the file no longer matches.
        db.remove(META_CHECKPOINT).expect("remove");
        assert!(!loaded.matches(&db).expect("compare"));
        let bytes = std::fs::read(dir.path().join(FILE)).expect("read");
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(parse(&flipped).is_none());
        assert!(parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(parse(&[]).is_none());
    }
}
