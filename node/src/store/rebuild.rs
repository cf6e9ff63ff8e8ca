//! Rebuild: copy the live database into a fresh directory, reopen it, switch to it.
//!
//! Churn (overwrites, deletes) leaves sled's files larger than the data; only a fresh copy
//! gives the space back. Copying into a *fresh* database and reopening it matters: an
//! `import(export())` inside the live handle was measured ~5× slower on reads until reopen.
//!
//! # Guarantees
//! - Reads are served from the old database until the handle is swapped.
//! - Writes arriving during the copy get [`StoreError::Busy`] (retryable), never dropped.
//! - `CURRENT` is replaced by an atomic rename after the copy is flushed, so a crash leaves
//!   either the old or the new generation live, each complete; [`remove_stale_generations`]
//!   deletes the other at the next open.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Engine, Result, Store, StoreError, generation_dir, io};

const CURRENT: &str = "CURRENT";

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

/// The live generation named by `CURRENT` (0 for a new directory).
pub(super) fn current_generation(dir: &Path) -> Result<u64> {
    match std::fs::read_to_string(dir.join(CURRENT)) {
        Ok(text) => text.trim().parse().map_err(|_| {
            StoreError::Corrupt(format!("{CURRENT} holds {text:?}, not a generation number"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_current(dir, 0)?;
            Ok(0)
        }
        Err(source) => Err(StoreError::Io {
            action: "read CURRENT",
            source,
        }),
    }
}

/// Atomically points `CURRENT` at `generation`.
fn write_current(dir: &Path, generation: u64) -> Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io("create CURRENT.tmp"))?;
    writeln!(file, "{generation}").map_err(io("write CURRENT.tmp"))?;
    file.sync_all().map_err(io("sync CURRENT.tmp"))?;
    std::fs::rename(&tmp, dir.join(CURRENT)).map_err(io("replace CURRENT"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the data directory"))?;
    Ok(())
}

/// Deletes every `gen-N` directory but the live one (leftovers of an interrupted rebuild).
pub(super) fn remove_stale_generations(dir: &Path, live: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("read the data directory"))? {
        let entry = entry.map_err(io("read the data directory"))?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if generation != live {
            std::fs::remove_dir_all(entry.path()).map_err(io("remove a stale generation"))?;
        }
    }
    Ok(())
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
        let next = old.generation + 1;
        let next_dir = generation_dir(dir, next);
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
        write_current(dir, next)?;
        self.engine.store(Arc::new(reopened));
        // The copy left the checkpoint marker behind (see `copy_into`).
        state.checkpointed = false;
        // Readers that loaded the old handle finish on it; wait for them (bounded) before
        // its directory goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let old_dir = generation_dir(dir, old.generation);
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
    let mut records = 0u64;
    for entry in old.db.iter() {
        let (key, value) = entry?;
        if key == super::META_CHECKPOINT {
            // The checkpoint is re-taken for the new generation once it is live.
            continue;
        }
        fresh.db.insert(key, value)?;
        records += 1;
    }
    fresh.db.flush()?;
    Ok(records)
}
