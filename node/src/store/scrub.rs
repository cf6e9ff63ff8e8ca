//! Corruption: found by a rate-limited background scrub as well as by reads.
//!
//! The scrub walks the records in key order, a bounded batch at a time, and checks each
//! one the way `verify` does: the record decodes and its (key, value) hashes to the leaf
//! the Merkle tree holds for the key. A batch is checked under the write lock, so a write
//! can never be half-seen. sled reports pages it cannot read as corruption; those end the
//! pass. Anything found is recorded in [`Corruption`]: the node turns unready and exports
//! it, and keeps serving every key it can still read.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{DATA, Result, Store, StoreError, full_value, prefixed};
use crate::merkle;

/// Keys named in the corruption record (the counter keeps counting past it).
const KEYS_KEPT: usize = 100;

/// Value bytes one batch reads at most, so that a batch of large (chunked) values holds the
/// write lock about a millisecond, not a batch's worth of megabytes.
const BATCH_BYTES: usize = 1 << 20;

/// What corruption has been found since the node started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Corruption {
    /// Corrupt records or pages found (by the scrub or by reads).
    pub detected: u64,
    /// Up to 100 affected keys (lossy UTF-8), in key order.
    pub keys: BTreeSet<String>,
    /// Unix time of the first finding, seconds.
    pub first_at_unix: Option<u64>,
    /// The last finding, for logs and status.
    pub last_message: Option<String>,
}

/// Where the scrub stands in its pass.
#[derive(Clone, Debug, Default)]
pub struct ScrubCursor {
    after: Option<Vec<u8>>,
    /// Writes applied when the pass began: a pass during which nothing was written must
    /// have seen exactly as many records as the tree has leaves.
    began_at_write: Option<u64>,
    /// Records checked in this pass so far.
    pub checked: u64,
}

/// One batch's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrubStep {
    /// More records follow.
    More,
    /// The pass reached the end (or a page that cannot be read); the next starts afresh.
    PassDone,
}

impl Store {
    /// Records corruption found at `key` (when known).
    pub(super) fn found_corruption(&self, key: Option<&[u8]>, message: &str) {
        let mut corruption = self.lock_corruption();
        corruption.detected += 1;
        if corruption.first_at_unix.is_none() {
            corruption.first_at_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        }
        if let Some(key) = key
            && corruption.keys.len() < KEYS_KEPT
        {
            corruption
                .keys
                .insert(String::from_utf8_lossy(key).into_owned());
        }
        corruption.last_message = Some(message.to_string());
        tracing::error!(
            key = key.map(|k| String::from_utf8_lossy(k).into_owned()),
            message,
            "corruption detected"
        );
    }

    fn lock_corruption(&self) -> MutexGuard<'_, Corruption> {
        self.corruption
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Corruption found so far (empty when none).
    pub fn corruption(&self) -> Corruption {
        self.lock_corruption().clone()
    }

    /// Whether any corruption has been found.
    pub fn is_corrupted(&self) -> bool {
        self.lock_corruption().detected > 0
    }

    /// Fault injection (tests and the sandbox, behind `faultInjection`): replaces the stored
    /// record of `key` with bytes that do not decode, under the store, as a bad disk would.
    /// Reads of the key and the scrub then find it. False when the key is absent.
    ///
    /// # Errors
    /// Engine errors.
    pub fn damage_record(&self, key: &[u8]) -> Result<bool> {
        let _state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let engine = self.engine.load();
        let data_key = prefixed(DATA, key);
        if engine.db.get(&data_key)?.is_none() {
            return Ok(false);
        }
        engine.db.insert(data_key, &[0xff_u8, 0xde, 0xad][..])?;
        Ok(true)
    }

    /// Checks up to `batch` records (and about 1 MiB of values) after `cursor` against the
    /// Merkle tree.
    ///
    /// # Errors
    /// None for corruption (it is recorded); engine errors that are not corruption.
    pub fn scrub_step(&self, cursor: &mut ScrubCursor, batch: usize) -> Result<ScrubStep> {
        let lower = match &cursor.after {
            Some(after) => Bound::Excluded(prefixed(DATA, after)),
            None => Bound::Included(vec![DATA]),
        };
        let upper = Bound::Excluded(vec![DATA + 1]);
        // The write lock keeps records and tree in step for the batch.
        let state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let tree = self.lock_tree();
        let writes = self.flusher.applied_count();
        let began_at_write = *cursor.began_at_write.get_or_insert(writes);
        let engine = self.engine.load();
        let mut seen = 0;
        let mut bytes = 0usize;
        for entry in engine.db.range::<Vec<u8>, _>((lower, upper)) {
            let (key, record) = match entry {
                Ok(entry) => entry,
                Err(sled::Error::Corruption { .. }) => {
                    drop((tree, state));
                    let after = cursor.after.clone();
                    self.found_corruption(
                        after.as_deref(),
                        "the database has a page it cannot read (after the named key)",
                    );
                    *cursor = ScrubCursor::default();
                    return Ok(ScrubStep::PassDone);
                }
                Err(error) => return Err(StoreError::from(error)),
            };
            let user_key = &key[1..];
            let expected = tree.leaf(&merkle::key_path(user_key));
            let value = full_value(&engine.db, &record);
            bytes += value.as_ref().map_or(0, |v| v.len());
            let problem = match (value, expected) {
                (Err(error), _) if error.is_corruption() => {
                    Some("the record does not decode, or its chunks are missing or unreadable")
                }
                (Err(error), _) => return Err(error),
                (Ok(_), None) => Some("the record has no Merkle leaf"),
                (Ok(value), Some(leaf)) if merkle::leaf_hash(user_key, &value) != leaf => {
                    Some("the value does not match its Merkle leaf")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                self.found_corruption(Some(user_key), problem);
            }
            cursor.after = Some(user_key.to_vec());
            cursor.checked += 1;
            seen += 1;
            if seen == batch || bytes >= BATCH_BYTES {
                return Ok(ScrubStep::More);
            }
        }
        let (checked, leaves) = (cursor.checked, tree.len() as u64);
        drop((tree, state));
        if began_at_write == writes && checked != leaves {
            self.found_corruption(
                None,
                &format!(
                    "the database holds {checked} records but the Merkle tree {leaves}: \
                     records are missing or unreadable"
                ),
            );
        }
        *cursor = ScrubCursor::default();
        Ok(ScrubStep::PassDone)
    }
}
