//! Rebuild: copy the live database into a fresh directory, reopen it, switch to it.
//!
//! Churn (overwrites, deletes) leaves sled's files larger than the data; only a fresh copy
//! gives the space back. Copying into a *fresh* database and reopening it matters: an
//! `import(export())` inside the live handle was measured ~5× slower on reads until reopen.
//!
//! # Guarantees
//! - Reads are served from the old database until the handle is swapped.
//! - Writes arriving during the copy get [`StoreError::Busy`] (retryable), never dropped.
//! - The copy is marked complete after it is flushed, then `CURRENT` is replaced by an
//!   atomic rename (see [`super::generations`] for why start-up can never pick or delete the
//!   wrong generation after a crash at any point).
//! - If the switch fails after the copy was marked complete, the copy is removed before
//!   writes resume; if even that fails the store refuses writes, since a restart would roll
//!   forward to a copy that lacks them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::generations::{self, dir_of};
use super::{Engine, FlushError, Result, Store, StoreError, io};

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// On-disk bytes before.
    pub disk_bytes_before: u64,
    /// On-disk bytes after.
    pub disk_bytes_after: u64,
    /// Records copied (data, expiry index and meta).
    pub records: u64,
    /// Generation now live.
    pub generation: u64,
    /// Wall time, in seconds.
    pub seconds: f64,
}

impl Store {
    /// Rebuilds the database into a fresh directory and switches to it.
    ///
    /// # Errors
    /// [`StoreError::InsufficientSpace`] when the volume cannot hold the copy (checked
    /// first; nothing changes); [`StoreError::Busy`] when a rebuild is already running;
    /// I/O and engine errors, after which the old generation stays live and the partial
    /// copy is removed.
    pub fn rebuild(&self) -> Result<RebuildReport> {
        let started = Instant::now();
        let dir = self.config.path.clone();
        self.flusher.admit()?;
        let before = self.stats()?;
        // The copy is compact: it cannot be larger than the bloated original, and a fresh
        // sled database holds about 1.5× its logical bytes plus tree records.
        let estimate = before
            .disk_bytes
            .min(before.logical_bytes.saturating_mul(3))
            .max(1 << 20);
        let needed = estimate + self.config.rebuild.free_space_margin_bytes;
        let available = fs4::available_space(&dir).map_err(io("read free disk space"))?;
        if available < needed {
            return Err(StoreError::InsufficientSpace { needed, available });
        }
        if self.rebuilding.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Busy {
                retry_after: Duration::from_secs(5),
            });
        }
        let result = self.rebuild_locked(&dir, before.disk_bytes, started);
        self.rebuilding.store(false, Ordering::SeqCst);
        let report = result?;
        // So that a restart after the rebuild opens without a scan.
        self.checkpoint()?;
        Ok(report)
    }

    fn rebuild_locked(
        &self,
        dir: &Path,
        disk_before: u64,
        started: Instant,
    ) -> Result<RebuildReport> {
        // Wait for the write in flight, if any; new writers see `rebuilding` and back off.
        let mut state = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.engine.load_full();
        old.db.flush()?;
        if !self.config.rebuild_pause.is_zero() {
            std::thread::sleep(self.config.rebuild_pause);
        }
        let next = old.generation + 1;
        let next_dir = dir_of(dir, next);
        if next_dir.exists() {
            std::fs::remove_dir_all(&next_dir).map_err(io("clear the rebuild directory"))?;
        }
        let copied = copy_into(&old, &self.config, dir, next).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&next_dir);
        })?;
        // Reopen: a bulk-loaded handle reads slower than a freshly opened one.
        let reopened = Engine::open(dir, &self.config, next).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&next_dir);
        })?;
        self.swapping.store(true, Ordering::SeqCst);
        let switched = generations::mark_complete(dir, next)
            .and_then(|()| generations::write_current(dir, next));
        if let Err(error) = switched {
            self.swapping.store(false, Ordering::SeqCst);
            drop(reopened);
            if let Err(cleanup) = std::fs::remove_dir_all(&next_dir) {
                // A restart would roll forward to the complete copy, which lacks any write
                // taken from now on: take none.
                tracing::error!(%error, %cleanup, "rebuild failed and its copy could not be removed");
                self.flusher.fail(FlushError::Failed {
                    message: format!(
                        "a rebuild failed ({error}) and its copy could not be removed ({cleanup})"
                    ),
                    no_space: false,
                });
            }
            return Err(error);
        }
        self.engine.store(Arc::new(reopened));
        self.swapping.store(false, Ordering::SeqCst);
        // The copy left the checkpoint marker behind (see `copy_into`).
        state.checkpointed = false;
        // Readers that loaded the old handle finish on it; wait for them (bounded) before
        // its directory goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let old_dir = dir_of(dir, old.generation);
        drop(old);
        if let Err(error) = std::fs::remove_dir_all(&old_dir) {
            tracing::warn!(%error, "old generation could not be removed; it goes at next open");
        }
        let disk_after = self.engine.load().db.size_on_disk()?;
        Ok(RebuildReport {
            disk_bytes_before: disk_before,
            disk_bytes_after: disk_after,
            records: copied,
            generation: next,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Copies every record of `old` into a new database `generation`, flushed and closed.
///
/// Plain inserts, not batches: the copy needs no atomicity (`CURRENT` switches only after
/// the flush), and sled 0.34's first `apply_batch` switches a process-wide flag that makes
/// every later read take a shared lock.
fn copy_into(
    old: &Engine,
    config: &super::StoreConfig,
    dir: &Path,
    generation: u64,
) -> Result<u64> {
    let fresh = Engine::open(dir, config, generation)?;
    // Chunk sets some record names; others are left by a crash and not copied.
    let mut live = std::collections::HashSet::new();
    for entry in old.db.scan_prefix([super::DATA]) {
        let (_, record) = entry?;
        if let Some((id, _)) = super::chunks::body(&record).and_then(|b| b.chunk_set()) {
            live.insert(id);
        }
    }
    let mut records = 0u64;
    for entry in old.db.iter() {
        let (key, value) = entry?;
        if key == super::META_CHECKPOINT || super::chunks::is_orphan(&key, &live) {
            // The checkpoint is re-taken for the new generation once it is live.
            continue;
        }
        fresh.db.insert(key, value)?;
        records += 1;
    }
    fresh.db.flush()?;
    Ok(records)
}
