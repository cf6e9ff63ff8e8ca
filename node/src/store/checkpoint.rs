//! Checkpoints of the Merkle tree's leaves, so an open does not rescan the data, and the
//! check that the database still holds everything it had made durable.
//!
//! The file `DATA_DIR/tree.checkpoint` holds a sequence number, the generation it describes,
//! the key count, logical bytes and the tree with its hashes ([`Tree::encode`]), followed by
//! a blake3 checksum, so loading it hashes nothing but the checksum. The database's
//! `META_CHECKPOINT` record holds a state byte and a sequence number:
//!
//! 1. `pending N` is written and flushed,
//! 2. then the file for N is written, synced and renamed into place,
//! 3. then `clean N` is written and flushed;
//! 4. the first write after that turns it into `dirty N` (in the same log, before the data).
//!
//! sled recovers a prefix of its log. So at open, with the file for N of the live generation:
//!
//! | marker | meaning |
//! |---|---|
//! | `clean N` | the data is exactly the file's: load the tree from it |
//! | `pending N`, `dirty N`, or newer than N | a crash during a checkpoint, or writes since: rebuild the tree by scanning |
//! | older than N, or none | the database lost records it had flushed before step 2: **refuse to start** |
//!
//! The last row is how a log cut short by corruption (sled's recovery stops at a bad
//! message) is found instead of silently serving fewer memories.
//!
//! # Guarantees
//! A missing, torn, stale or corrupt checkpoint file is never used: [`read`] returns `None`
//! and the store rebuilds the tree from the records.

use std::io::Write;
use std::path::Path;

use super::{Counters, META_CHECKPOINT, Result, Scanned, StoreError, io};
use crate::merkle::Tree;

const FILE: &str = "tree.checkpoint";
const MAGIC: &[u8; 8] = b"PHXTREE3";
const HEADER: usize = 8 + 8 + 8 + 8 + 8;

const PENDING: u8 = b'p';
const CLEAN: u8 = b'c';
const DIRTY: u8 = b'd';

/// The database's checkpoint marker: state and sequence number.
fn marker(db: &sled::Db) -> Result<Option<(u8, u64)>> {
    Ok(db.get(META_CHECKPOINT)?.and_then(|value| {
        let (&state, seq) = value.split_first()?;
        Some((state, u64::from_le_bytes(seq.try_into().ok()?)))
    }))
}

fn set_marker(db: &sled::Db, state: u8, seq: u64) -> Result<()> {
    let mut value = [0u8; 9];
    value[0] = state;
    value[1..].copy_from_slice(&seq.to_le_bytes());
    db.insert(META_CHECKPOINT, &value[..])?;
    Ok(())
}

/// The sequence number the database's marker holds (0 without one).
pub(super) fn marker_seq(db: &sled::Db) -> Result<u64> {
    Ok(marker(db)?.map_or(0, |(_, seq)| seq))
}

/// Marks the database as changed since checkpoint `seq` (the first write after it).
pub(super) fn mark_dirty(db: &sled::Db, seq: u64) -> Result<()> {
    set_marker(db, DIRTY, seq)
}

/// Writes checkpoint `seq` for `tree` of `generation` (see the module docs for the order).
pub(super) fn save(
    dir: &Path,
    db: &sled::Db,
    seq: u64,
    generation: u64,
    counters: &Counters,
    tree: &Tree,
) -> Result<()> {
    set_marker(db, PENDING, seq)?;
    db.flush()?;
    let mut bytes = Vec::with_capacity(HEADER + tree.len() * 100 + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
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
    set_marker(db, CLEAN, seq)?;
    db.flush()?;
    Ok(())
}

/// A checkpoint read from its file; see [`Checkpoint::judge`].
#[derive(Debug)]
pub(super) struct Checkpoint {
    seq: u64,
    generation: u64,
    pub(super) scanned: Scanned,
}

/// What a checkpoint says about the database.
#[derive(Debug)]
pub(super) enum Verdict {
    /// The data is exactly the checkpoint's: use its tree.
    Matches(Scanned),
    /// Written since, or a checkpoint interrupted: rebuild the tree by scanning.
    Stale,
}

impl Checkpoint {
    /// The checkpoint's sequence number.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Compares the checkpoint with the database of `generation`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the database lacks records it had flushed before this
    /// checkpoint was written.
    pub(super) fn judge(self, db: &sled::Db, generation: u64) -> Result<Verdict> {
        if self.generation != generation {
            // Written for the generation before a rebuild: says nothing about this one.
            return Ok(Verdict::Stale);
        }
        match marker(db)? {
            Some((CLEAN, seq)) if seq == self.seq => Ok(Verdict::Matches(self.scanned)),
            Some((_, seq)) if seq >= self.seq => Ok(Verdict::Stale),
            found => Err(StoreError::Corrupt(format!(
                "the database of generation {generation} lacks records it had made durable: \
                 tree checkpoint {} was recorded in it before the checkpoint file was written, \
                 but its log now ends before that ({}). Its files are corrupt (sled's recovery \
                 stops at a damaged record); refusing to start rather than serve fewer memories. \
                 Restore the data directory (with replication: from a peer)",
                self.seq,
                match found {
                    Some((_, seq)) => format!("it holds checkpoint {seq}"),
                    None => "it holds no checkpoint record".to_string(),
                }
            ))),
        }
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
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let (seq, generation, keys, logical) = (word(8)?, word(16)?, word(24)?, word(32)?);
    let tree = Tree::decode(&body[HEADER..])?;
    if tree.len() as u64 != keys {
        return None;
    }
    Some(Checkpoint {
        seq,
        generation,
        scanned: Scanned {
            tree,
            counters: Counters { keys, logical },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, sled::Db, Tree, Counters) {
        let mut tree = Tree::new();
        tree.insert_pair(b"k", b"v");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().temporary(true).open().expect("db");
        let counters = Counters {
            keys: 1,
            logical: 2,
        };
        (dir, db, tree, counters)
    }

    #[test]
    fn a_corrupt_or_foreign_checkpoint_is_refused() {
        let (dir, db, tree, counters) = setup();
        save(dir.path(), &db, 1, 0, &counters, &tree).expect("save");
        let loaded = read(dir.path()).expect("read").expect("valid checkpoint");
        match loaded.judge(&db, 0).expect("judge") {
            Verdict::Matches(scanned) => assert_eq!(
                (scanned.tree.root(), scanned.counters),
                (tree.root(), counters)
            ),
            Verdict::Stale => panic!("a fresh checkpoint matches"),
        }
        // A write after the checkpoint marks it dirty: the file no longer matches.
        mark_dirty(&db, 1).expect("dirty");
        let loaded = read(dir.path()).expect("read").expect("valid checkpoint");
        assert!(matches!(loaded.judge(&db, 0), Ok(Verdict::Stale)));
        // A checkpoint of another generation says nothing.
        let loaded = read(dir.path()).expect("read").expect("valid checkpoint");
        assert!(matches!(loaded.judge(&db, 1), Ok(Verdict::Stale)));
        let bytes = std::fs::read(dir.path().join(FILE)).expect("read");
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(parse(&flipped).is_none());
        assert!(parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(parse(&[]).is_none());
    }

    #[test]
    fn a_database_behind_its_checkpoint_is_corrupt() {
        let (dir, db, tree, counters) = setup();
        save(dir.path(), &db, 7, 0, &counters, &tree).expect("save");
        // What a log cut short leaves: the marker of an older checkpoint, or none.
        set_marker(&db, CLEAN, 6).expect("older");
        let loaded = read(dir.path()).expect("read").expect("valid");
        let error = loaded.judge(&db, 0).expect_err("behind").to_string();
        assert!(error.contains("refusing to start"), "{error}");
        db.remove(META_CHECKPOINT).expect("remove");
        let loaded = read(dir.path()).expect("read").expect("valid");
        assert!(loaded.judge(&db, 0).is_err());
        // A crash between the pending marker and the file leaves the marker ahead: fine.
        set_marker(&db, PENDING, 8).expect("pending");
        let loaded = read(dir.path()).expect("read").expect("valid");
        assert!(matches!(loaded.judge(&db, 0), Ok(Verdict::Stale)));
    }
}
