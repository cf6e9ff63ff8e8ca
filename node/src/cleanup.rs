//! Cleanup: prune expired memories, rebuild when disk has bloated, flush, re-measure.
//!
//! # Guarantees
//! Reads are served throughout. Writes are applied, or refused with a retryable
//! [`StoreError::Busy`] while a rebuild copies — never dropped. The report compares latency
//! before and after against the same baseline, so a cleanup that did not help is visible.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::probe::Probe;
use crate::store::{RebuildReport, Result, Store, StoreError};

const LAST_CLEANUP_META: &str = "cleanup.last";

/// Cleanup settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Rebuild even when disk is within the policy's multiple of logical bytes.
    pub force_rebuild: bool,
}

/// What a cleanup did and what it changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    /// When it started (unix ms).
    pub started_at_ms: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Expired memories removed.
    pub pruned: u64,
    /// Whether the database was rebuilt.
    pub rebuilt: bool,
    /// Why it was not, when it was not.
    pub rebuild_skipped: Option<String>,
    /// Keys before and after.
    pub keys_before: u64,
    /// Keys after.
    pub keys_after: u64,
    /// Logical bytes before.
    pub logical_bytes_before: u64,
    /// Logical bytes after.
    pub logical_bytes_after: u64,
    /// On-disk bytes before.
    pub disk_bytes_before: u64,
    /// On-disk bytes after.
    pub disk_bytes_after: u64,
    /// Recent retrieve latency before, nanoseconds (`None`: no data).
    pub recent_before_ns: Option<f64>,
    /// Re-measured retrieve latency after, nanoseconds.
    pub recent_after_ns: Option<f64>,
    /// Ratio against the baseline in force before the cleanup.
    pub ratio_before: Option<f64>,
    /// Re-measured latency against that same baseline.
    pub ratio_after: Option<f64>,
    /// Whether the baseline was re-taken (only when latency came back).
    pub baseline_reset: bool,
}

impl CleanupReport {
    /// The last cleanup recorded in `store`, if any.
    ///
    /// # Errors
    /// Engine errors.
    pub fn last(store: &Store) -> Result<Option<CleanupReport>> {
        Ok(store
            .meta(LAST_CLEANUP_META)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }
}

/// Runs one cleanup of `store`, re-measuring with `probe`.
///
/// # Errors
/// Engine and I/O errors; [`StoreError::InsufficientSpace`] when a due rebuild cannot fit
/// (pruning has happened, nothing is lost); [`StoreError::Busy`] when a rebuild is running.
pub fn run(store: &Store, probe: &mut Probe, options: CleanupOptions) -> Result<CleanupReport> {
    let started = Instant::now();
    let started_at_ms = store.config().clock.now_ms();
    let before = store.stats()?;
    let probe_before = probe.snapshot();
    let baseline_before = probe.baseline();

    let pruned = store.prune_expired()?;
    let (rebuild, rebuild_skipped): (Option<RebuildReport>, Option<String>) =
        if options.force_rebuild || store.needs_rebuild()? {
            (Some(store.rebuild()?), None)
        } else {
            let stats = store.stats()?;
            (
                None,
                Some(format!(
                    "disk {} bytes is within {}× logical {} bytes (or below {} bytes)",
                    stats.disk_bytes,
                    store.config().rebuild.disk_ratio,
                    stats.logical_bytes,
                    store.config().rebuild.min_disk_bytes
                )),
            )
        };
    store.flush()?;
    store.fault().on_cleanup();

    let window = probe.config().window_ticks;
    let after = probe.remeasure(store, window)?;
    let ratio_after = match (after.recent_ns, baseline_before) {
        (Some(recent), Some(base)) if base.latency_ns > 0.0 => Some(recent / base.latency_ns),
        _ => None,
    };
    let baseline_reset = probe.after_cleanup(store)?;
    let stats = store.stats()?;
    let report = CleanupReport {
        started_at_ms,
        seconds: started.elapsed().as_secs_f64(),
        pruned,
        rebuilt: rebuild.is_some(),
        rebuild_skipped,
        keys_before: before.keys,
        keys_after: stats.keys,
        logical_bytes_before: before.logical_bytes,
        logical_bytes_after: stats.logical_bytes,
        disk_bytes_before: before.disk_bytes,
        disk_bytes_after: stats.disk_bytes,
        recent_before_ns: probe_before.recent_ns,
        recent_after_ns: after.recent_ns,
        ratio_before: probe_before.ratio,
        ratio_after,
        baseline_reset,
    };
    let bytes = serde_json::to_vec(&report)
        .map_err(|e| StoreError::Corrupt(format!("cleanup report: {e}")))?;
    store.set_meta(LAST_CLEANUP_META, &bytes)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeConfig;
    use crate::store::{ManualClock, StoreConfig};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn cleanup_prunes_rebuilds_and_keeps_every_live_key_and_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_000));
        let mut config = StoreConfig::new(dir.path());
        config.clock = clock.clone();
        config.rebuild.min_disk_bytes = 0;
        config.rebuild.free_space_margin_bytes = 0;
        let store = Store::open(config).expect("open");
        for round in 0..4u8 {
            for i in 0..2000u32 {
                store
                    .store(&i.to_be_bytes(), &[round; 300], None)
                    .expect("store");
            }
        }
        for i in 0..100u32 {
            store
                .store(
                    format!("tmp-{i}").as_bytes(),
                    b"short-lived",
                    Some(Duration::from_secs(5)),
                )
                .expect("store");
        }
        let mut probe = Probe::load(&store, ProbeConfig::default()).expect("probe");
        probe.remeasure(&store, 10).expect("baseline");
        clock.advance(Duration::from_secs(6));
        let live_root = {
            let mut tree = crate::merkle::Tree::new();
            for i in 0..2000u32 {
                tree.insert_pair(&i.to_be_bytes(), &[3u8; 300]);
            }
            tree.root()
        };

        let report = run(&store, &mut probe, CleanupOptions::default()).expect("cleanup");
        assert_eq!(report.pruned, 100);
        assert!(report.rebuilt, "{report:?}");
        assert_eq!(report.keys_after, 2000);
        assert!(
            report.disk_bytes_after < report.disk_bytes_before,
            "{report:?}"
        );
        assert!(report.ratio_before.is_some() && report.ratio_after.is_some());
        assert_eq!(store.root(), live_root);
        assert!(store.verify().expect("verify").ok());
        for i in 0..2000u32 {
            let value = store
                .retrieve(&i.to_be_bytes())
                .expect("get")
                .expect("kept");
            assert_eq!(value.as_bytes(), &[3u8; 300]);
        }
        let last = CleanupReport::last(&store)
            .expect("meta")
            .expect("recorded");
        assert_eq!(
            (
                last.started_at_ms,
                last.pruned,
                last.rebuilt,
                last.disk_bytes_after
            ),
            (
                report.started_at_ms,
                report.pruned,
                report.rebuilt,
                report.disk_bytes_after
            )
        );
    }

    #[test]
    fn cleanup_skips_the_rebuild_when_disk_is_compact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        store.store(b"k", b"v", None).expect("store");
        let mut probe = Probe::load(&store, ProbeConfig::default()).expect("probe");
        let report = run(&store, &mut probe, CleanupOptions::default()).expect("cleanup");
        assert!(!report.rebuilt);
        assert!(report.rebuild_skipped.is_some());
        assert_eq!(store.generation(), 0);
    }
}
