//! The Raft log and vote of a replicated node, in their own sled database
//! (`DATA_DIR/raft`), beside the store's generations (a rebuild of the store never touches
//! it; a lost volume loses both, and the node rejoins from a peer's snapshot).
//!
//! The log is bytes keyed by index (big-endian, so sled's order is the log's order); what
//! an entry means is the [`crate::replication`] module's business. Small named records
//! (vote, committed, last purged) sit in a second tree. [`RaftLog::flush`] is what makes
//! an append or a vote durable; callers batch appends between flushes (group commit).

use std::path::{Path, PathBuf};

use super::{Result, StoreError};

/// The log database.
#[derive(Clone, Debug)]
pub struct RaftLog {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    path: PathBuf,
}

/// The directory of the log inside a data directory.
pub fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

impl RaftLog {
    /// Opens (creating if needed) the log in `data_dir/raft`. `flush_every_ms`: sled's own
    /// background flush (`None`: only explicit flushes).
    ///
    /// # Errors
    /// Engine errors (a log that sled cannot open is a start-up error; nothing is deleted).
    pub fn open(data_dir: &Path, flush_every_ms: Option<u64>) -> Result<RaftLog> {
        let path = dir_in(data_dir);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(16 << 20)
            .flush_every_ms(flush_every_ms)
            .open()?;
        let entries = db.open_tree("entries")?;
        let meta = db.open_tree("meta")?;
        Ok(RaftLog {
            db,
            entries,
            meta,
            path,
        })
    }

    /// Writes entries (index, encoded entry); durable after the next [`RaftLog::flush`].
    ///
    /// # Errors
    /// Engine errors.
    pub fn append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index.to_be_bytes(), bytes);
        }
        self.entries.apply_batch(batch)?;
        Ok(())
    }

    /// Entries with index in `from..to`, in order.
    ///
    /// # Errors
    /// Engine errors.
    pub fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.entries
            .range(from.to_be_bytes()..to.to_be_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                Ok((index_of(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// The entry with the highest index.
    ///
    /// # Errors
    /// Engine errors.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.entries.last()? {
            None => Ok(None),
            Some((key, value)) => Ok(Some((index_of(&key)?, value.to_vec()))),
        }
    }

    /// Deletes entries with index ≥ `from` (a conflicting suffix).
    ///
    /// # Errors
    /// Engine errors.
    pub fn truncate_from(&self, from: u64) -> Result<()> {
        self.remove_range(from.to_be_bytes().to_vec(), None)
    }

    /// Deletes entries with index ≤ `upto` (compaction after a snapshot).
    ///
    /// # Errors
    /// Engine errors.
    pub fn purge_upto(&self, upto: u64) -> Result<()> {
        let end = upto.saturating_add(1).to_be_bytes().to_vec();
        self.remove_range(Vec::new(), Some(end))
    }

    fn remove_range(&self, from: Vec<u8>, to: Option<Vec<u8>>) -> Result<()> {
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            let keys = match &to {
                Some(to) => self.entries.range(from.clone()..to.clone()),
                None => self.entries.range(from.clone()..),
            };
            for key in keys.keys().take(4096) {
                batch.remove(key?);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.entries.apply_batch(batch)?;
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A named record.
    ///
    /// # Errors
    /// Engine errors.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(name.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Writes a named record; durable after the next [`RaftLog::flush`].
    ///
    /// # Errors
    /// Engine errors.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(name.as_bytes(), value)?;
        Ok(())
    }

    /// Makes everything written so far durable (one fsync for any number of appends).
    ///
    /// # Errors
    /// Engine errors.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the log takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn index_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StoreError::Corrupt(format!("a Raft log key is {} bytes, not 8", key.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_ranges_truncates_and_purges_in_index_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RaftLog::open(dir.path(), None).expect("open");
        log.append((1..=300u64).map(|i| (i, i.to_le_bytes().to_vec())))
            .expect("append");
        assert_eq!(log.range(255, 258).expect("range").len(), 3);
        assert_eq!(log.last().expect("last").map(|(i, _)| i), Some(300));
        log.truncate_from(200).expect("truncate");
        assert_eq!(log.last().expect("last").map(|(i, _)| i), Some(199));
        log.purge_upto(100).expect("purge");
        let left = log.range(0, u64::MAX).expect("range");
        assert_eq!(left.first().map(|(i, _)| *i), Some(101));
        assert_eq!(left.len(), 99);
        log.set_meta("vote", b"v").expect("meta");
        log.flush().expect("flush");
        drop(log);
        // sled releases its file lock when its background flusher lets go of the database,
        // a moment after the handle is dropped: reopen as a restarted process would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let log = loop {
            match RaftLog::open(dir.path(), None) {
                Ok(log) => break log,
                Err(error)
                    if error.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("reopen: {error}"),
            }
        };
        assert_eq!(log.meta("vote").expect("meta").as_deref(), Some(&b"v"[..]));
        assert_eq!(log.len(), 99);
    }
}
