//! Cleanup: prune expired memories, rebuild when disk has bloated, flush; the probe then
//! settles and re-measures, and [`record_settled`] completes the report.
//!
//! # Guarantees
//! Reads are served throughout. Writes are applied, or refused with a retryable
//! [`StoreError::Busy`] while a rebuild copies — never dropped. The report compares latency
//! before and after against the same baseline, so a cleanup that did not help is visible.

use std::time::Instant;

use crate::probe::{Probe, Settled};
use crate::store::{RebuildReport, Result, Store, StoreError};

const LAST_CLEANUP_META: &str = "cleanup.last";

/// Cleanup settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Rebuild even when disk is within the policy's multiple of logical bytes.
    pub force_rebuild: bool,
    /// Memories the Raft group already pruned for this cleanup (a replicated node prunes
    /// through the log so every replica deletes the same ones): `Some` skips the local
    /// prune and reports this count.
    pub pruned_by_group: Option<u64>,
}

pub use phoenix_node_api::wire::CleanupReport;

fn save(report: &CleanupReport, store: &Store) -> Result<()> {
    let bytes = serde_json::to_vec(report)
        .map_err(|e| StoreError::Corrupt(format!("cleanup report: {e}")))?;
    store.set_meta(LAST_CLEANUP_META, &bytes)
}

/// The last cleanup recorded in `store`, if any.
///
/// # Errors
/// Engine errors.
pub fn last_report(store: &Store) -> Result<Option<CleanupReport>> {
    Ok(store
        .meta(LAST_CLEANUP_META)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// After a restart: when the last cleanup's report is still waiting for its settled
/// figures (the node stopped before the probe settled), settles `probe` again against the
/// baseline in force, so the report is completed — and the operator can judge whether the
/// cleanup helped — instead of staying unsettled for good. Returns whether it resumed.
///
/// # Errors
/// Engine errors reading the report.
pub fn resume_unsettled(store: &Store, probe: &mut Probe) -> Result<bool> {
    let unsettled = last_report(store)?.is_some_and(|report| !report.settled);
    if unsettled {
        probe.begin_after_cleanup();
    }
    Ok(unsettled)
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

    let pruned = match options.pruned_by_group {
        Some(pruned) => pruned,
        None => store.prune_expired()?,
    };
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

    probe.begin_after_cleanup();
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
        recent_after_ns: None,
        ratio_before: probe_before.ratio,
        ratio_after: None,
        baseline_reset: false,
        settled: false,
    };
    save(&report, store)?;
    Ok(report)
}

/// [`run`], then the probe settled by ticking every `interval` (for the bench and tests,
/// which drive the probe themselves), and the report completed.
///
/// # Errors
/// As [`run`].
pub fn run_settled(
    store: &Store,
    probe: &mut Probe,
    options: CleanupOptions,
    interval: std::time::Duration,
) -> Result<CleanupReport> {
    let report = run(store, probe, options)?;
    let max_ticks = 4 * (probe.config().settle_ticks + probe.config().window_ticks);
    Ok(match probe.settle(store, interval, max_ticks)? {
        Some(settled) => record_settled(store, settled)?.unwrap_or(report),
        None => report,
    })
}

/// Completes the last cleanup's report with the probe's settled measurement; returns it.
///
/// # Errors
/// Engine errors.
pub fn record_settled(store: &Store, settled: Settled) -> Result<Option<CleanupReport>> {
    let Some(mut report) = last_report(store)? else {
        return Ok(None);
    };
    report.recent_after_ns = Some(settled.recent_ns);
    report.ratio_after = settled.ratio_after;
    report.baseline_reset = settled.baseline_reset;
    report.settled = true;
    save(&report, store)?;
    Ok(Some(report))
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
        probe.settle(&store, Duration::ZERO, 100).expect("baseline");
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
        assert!(report.ratio_before.is_some());
        assert!(
            !report.settled && report.ratio_after.is_none(),
            "measured once settled"
        );
        let settled = probe
            .settle(&store, Duration::ZERO, 100)
            .expect("settle")
            .expect("settled");
        let completed = record_settled(&store, settled)
            .expect("record")
            .expect("report");
        assert!(completed.settled && completed.ratio_after.is_some());
        let stored = last_report(&store).expect("last").expect("stored");
        assert!(stored.settled && stored.recent_after_ns == completed.recent_after_ns);
        assert_eq!(store.root(), live_root);
        assert!(store.verify().expect("verify").ok());
        for i in 0..2000u32 {
            let value = store
                .retrieve(&i.to_be_bytes())
                .expect("get")
                .expect("kept");
            assert_eq!(value.as_bytes(), &[3u8; 300]);
        }
        let last = last_report(&store).expect("meta").expect("recorded");
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
    fn a_cleanup_interrupted_before_settling_is_completed_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..500u32 {
            store
                .store(&i.to_be_bytes(), &[1u8; 100], None)
                .expect("store");
        }
        let mut probe = Probe::load(&store, ProbeConfig::default()).expect("probe");
        probe.settle(&store, Duration::ZERO, 100).expect("baseline");
        let report = run(&store, &mut probe, CleanupOptions::default()).expect("cleanup");
        assert!(!report.settled);
        // The node stops before its probe settles; a new process loads a new probe.
        drop(probe);
        let mut restarted = Probe::load(&store, ProbeConfig::default()).expect("probe");
        assert!(resume_unsettled(&store, &mut restarted).expect("resume"));
        let settled = restarted
            .settle(&store, Duration::ZERO, 100)
            .expect("settle")
            .expect("settled after the restart");
        let completed = record_settled(&store, settled)
            .expect("record")
            .expect("report");
        assert!(
            completed.settled && completed.ratio_after.is_some(),
            "{completed:?}"
        );
        assert_eq!(completed.started_at_ms, report.started_at_ms);
        // Settled reports are not resumed again.
        let mut again = Probe::load(&store, ProbeConfig::default()).expect("probe");
        assert!(!resume_unsettled(&store, &mut again).expect("resume"));
        assert!(!again.settling());
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
