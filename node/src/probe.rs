//! The latency probe: times retrieves of a sample of the node's own keys at a fixed cadence,
//! so the degradation signal does not depend on the traffic mix.
//!
//! It keeps two figures:
//! - **recent**: the median retrieve latency over the last `window_ticks` ticks;
//! - **baseline**: the recent value of a settled window on a fresh database, and again
//!   after each cleanup that brought latency back (see [`Probe::begin_after_cleanup`]).
//!   "Settled": the window starts `settle_ticks` ticks after the start or the cleanup, so
//!   the baseline is not measured while bulk work has everything hot in the CPU's caches.
//!   It is persisted with the data, so a restart keeps comparing against it.
//!
//! An empty store, or too few samples, gives "no data" (`None`), never zero.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::{Result, Store};

const BASELINE_META: &str = "probe.baseline";

/// Probe settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Retrieves timed per tick.
    pub samples_per_tick: usize,
    /// Ticks the recent value covers.
    pub window_ticks: usize,
    /// Samples needed before recent (and so a baseline or ratio) is reported.
    pub min_samples: usize,
    /// After a cleanup the baseline is re-measured only if latency came back to within this
    /// multiple of the old baseline; otherwise the old one stays, so degradation a cleanup
    /// cannot fix (a hot set larger than the cache) stays visible.
    pub baseline_keep_ratio: f64,
    /// Ticks to wait after a start or a cleanup before the window that gives a baseline
    /// begins. Right after bulk work (the open's scan, loading data, a rebuild) the data is
    /// hot in the CPU's caches, and a baseline measured then was 2–3× faster than the same
    /// idle node a second later: every node looked degraded. See [`Probe::tick`].
    pub settle_ticks: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            samples_per_tick: 32,
            window_ticks: 30,
            min_samples: 200,
            baseline_keep_ratio: 1.5,
            settle_ticks: 10,
        }
    }
}

/// Why the baseline was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BaselineReason {
    /// First measurement on a fresh database.
    FreshStart,
    /// Re-measured after a cleanup.
    AfterCleanup,
}

/// The reference latency the ratio is computed against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Median retrieve latency in nanoseconds.
    pub latency_ns: f64,
    /// Samples it was computed from.
    pub samples: u64,
    /// When it was taken (unix ms).
    pub taken_at_ms: u64,
    /// Why it was taken.
    pub reason: BaselineReason,
}

/// What the probe currently knows. `None` fields mean "no data".
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSnapshot {
    /// Baseline retrieve latency, nanoseconds.
    pub baseline_ns: Option<f64>,
    /// Recent median retrieve latency, nanoseconds.
    pub recent_ns: Option<f64>,
    /// recent / baseline.
    pub ratio: Option<f64>,
    /// Samples in the recent window.
    pub samples: usize,
    /// Time since the last tick that produced samples.
    pub age: Option<Duration>,
    /// When the baseline was taken (unix ms).
    pub baseline_taken_at_ms: Option<u64>,
}

#[derive(Debug)]
struct Tick {
    latencies_ns: Vec<u64>,
}

/// The probe. Not shared: the node runs it from one task (behind a mutex).
#[derive(Debug)]
pub struct Probe {
    config: ProbeConfig,
    window: VecDeque<Tick>,
    baseline: Option<Baseline>,
    last_sampled: Option<Instant>,
    pending: Option<Pending>,
    settled: Option<Settled>,
    rng: fastrand::Rng,
}

/// A baseline waiting for the node to settle.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// `None`: a fresh start; `Some(old)`: after a cleanup, against the baseline then.
    after_cleanup: Option<Option<Baseline>>,
    ticks_left: usize,
}

/// The settled measurement after a cleanup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settled {
    /// Recent retrieve latency, nanoseconds.
    pub recent_ns: f64,
    /// Against the baseline in force before the cleanup.
    pub ratio_after: Option<f64>,
    /// Whether the baseline was re-taken (latency came back within `baseline_keep_ratio`).
    pub baseline_reset: bool,
}

impl Probe {
    /// A probe for `store`, with the baseline persisted there, if any.
    ///
    /// # Errors
    /// Engine errors reading the baseline.
    pub fn load(store: &Store, config: ProbeConfig) -> Result<Probe> {
        let baseline = store
            .meta(BASELINE_META)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Ok(Probe {
            config,
            window: VecDeque::with_capacity(config.window_ticks + 1),
            baseline,
            last_sampled: None,
            pending: None,
            settled: None,
            rng: fastrand::Rng::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// The current baseline.
    pub fn baseline(&self) -> Option<Baseline> {
        self.baseline
    }

    /// Times retrieves of `samples_per_tick` sampled keys; returns how many were timed.
    /// Establishes the baseline on a fresh database once enough samples exist.
    ///
    /// # Errors
    /// Engine errors (from the retrieves or from persisting a new baseline).
    pub fn tick(&mut self, store: &Store) -> Result<usize> {
        let keys = store.key_count();
        let sampled = store.sample_len() as u64;
        if keys > 0 && sampled < keys.min(1024) / 4 {
            store.refill_sample()?;
        }
        let sample = store.sample_keys(self.config.samples_per_tick, &mut self.rng);
        let mut latencies_ns = Vec::with_capacity(sample.len());
        for key in &sample {
            let started = Instant::now();
            let found = store.retrieve(key)?;
            let elapsed = started.elapsed();
            match found {
                Some(value) => {
                    std::hint::black_box(value.as_bytes());
                    latencies_ns.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                }
                // Deleted or expired since it was sampled: a miss is timed differently.
                None => store.forget_sample(key),
            }
        }
        let timed = latencies_ns.len();
        if timed > 0 {
            self.last_sampled = Some(Instant::now());
            self.window.push_back(Tick { latencies_ns });
            while self.window.len() > self.config.window_ticks {
                self.window.pop_front();
            }
        }
        if timed > 0 {
            if self.baseline.is_none() && self.pending.is_none() {
                self.pending = Some(Pending {
                    after_cleanup: None,
                    ticks_left: self.settle_and_window(),
                });
            }
            self.advance(store)?;
        }
        Ok(timed)
    }

    fn settle_and_window(&self) -> usize {
        self.config.settle_ticks + self.config.window_ticks
    }

    /// Counts a tick towards a pending baseline; takes it once the node has settled and a
    /// whole window was measured after that.
    fn advance(&mut self, store: &Store) -> Result<()> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        pending.ticks_left = pending.ticks_left.saturating_sub(1);
        if pending.ticks_left > 0 {
            return Ok(());
        }
        let after_cleanup = pending.after_cleanup;
        let Some((recent, samples)) = self.recent() else {
            return Ok(());
        };
        self.pending = None;
        match after_cleanup {
            None => self.set_baseline(store, recent, samples, BaselineReason::FreshStart)?,
            Some(old) => {
                let recovered =
                    old.is_none_or(|b| recent <= b.latency_ns * self.config.baseline_keep_ratio);
                if recovered {
                    self.set_baseline(store, recent, samples, BaselineReason::AfterCleanup)?;
                }
                self.settled = Some(Settled {
                    recent_ns: recent,
                    ratio_after: old
                        .filter(|b| b.latency_ns > 0.0)
                        .map(|b| recent / b.latency_ns),
                    baseline_reset: recovered,
                });
            }
        }
        Ok(())
    }

    /// Median of the window and its sample count, when there are enough samples.
    fn recent(&self) -> Option<(f64, usize)> {
        let mut all: Vec<u64> = self
            .window
            .iter()
            .flat_map(|t| t.latencies_ns.iter().copied())
            .collect();
        if all.len() < self.config.min_samples.max(1) {
            return None;
        }
        let mid = all.len() / 2;
        let (_, median, _) = all.select_nth_unstable(mid);
        Some((*median as f64, all.len()))
    }

    fn set_baseline(
        &mut self,
        store: &Store,
        latency_ns: f64,
        samples: usize,
        reason: BaselineReason,
    ) -> Result<()> {
        let baseline = Baseline {
            latency_ns,
            samples: samples as u64,
            taken_at_ms: store.config().clock.now_ms(),
            reason,
        };
        let bytes = serde_json::to_vec(&baseline)
            .map_err(|e| crate::store::StoreError::Corrupt(format!("baseline: {e}")))?;
        store.set_meta(BASELINE_META, &bytes)?;
        self.baseline = Some(baseline);
        Ok(())
    }

    /// What the probe knows now.
    pub fn snapshot(&self) -> ProbeSnapshot {
        let recent = self.recent();
        let samples = self.window.iter().map(|t| t.latencies_ns.len()).sum();
        let baseline_ns = self.baseline.map(|b| b.latency_ns);
        ProbeSnapshot {
            baseline_ns,
            recent_ns: recent.map(|r| r.0),
            ratio: match (recent, baseline_ns) {
                (Some((r, _)), Some(b)) if b > 0.0 => Some(r / b),
                _ => None,
            },
            samples,
            age: self.last_sampled.map(|at| at.elapsed()),
            baseline_taken_at_ms: self.baseline.map(|b| b.taken_at_ms),
        }
    }

    /// Called when a cleanup has finished: starts settling. Once settled, the window is
    /// compared with the baseline in force now, and the baseline is re-taken only if the
    /// cleanup brought latency back to within `baseline_keep_ratio` of it (or there was
    /// none), so degradation a cleanup cannot fix stays visible. The result comes from
    /// [`Probe::take_settled`].
    pub fn begin_after_cleanup(&mut self) {
        // The window is kept (the ratio stays reported, never "no data" because of a
        // cleanup); by the time the settled value is taken, `settle_ticks + window_ticks`
        // ticks later, only post-settle ticks are left in it.
        self.settled = None;
        self.pending = Some(Pending {
            after_cleanup: Some(self.baseline),
            ticks_left: self.settle_and_window(),
        });
    }

    /// Forgets the window and takes `ticks` ticks back to back: a fresh recent value (a
    /// pending baseline counts these ticks too).
    ///
    /// # Errors
    /// Engine errors.
    pub fn remeasure(&mut self, store: &Store, ticks: usize) -> Result<ProbeSnapshot> {
        self.window.clear();
        for _ in 0..ticks {
            self.tick(store)?;
        }
        Ok(self.snapshot())
    }

    /// Whether a baseline is waiting for the node to settle.
    pub fn settling(&self) -> bool {
        self.pending.is_some()
    }

    /// The settled measurement after a cleanup, once (then `None`).
    pub fn take_settled(&mut self) -> Option<Settled> {
        self.settled.take()
    }

    /// Ticks every `interval` until a baseline exists and none is pending (at most
    /// `max_ticks`); for the bench and tests, which drive the probe themselves. Returns the
    /// settled measurement after a cleanup, if one was pending.
    ///
    /// # Errors
    /// Engine errors.
    pub fn settle(
        &mut self,
        store: &Store,
        interval: Duration,
        max_ticks: usize,
    ) -> Result<Option<Settled>> {
        for _ in 0..max_ticks {
            if !self.settling() && self.baseline.is_some() {
                break;
            }
            std::thread::sleep(interval);
            self.tick(store)?;
        }
        Ok(self.take_settled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn config() -> ProbeConfig {
        ProbeConfig {
            samples_per_tick: 16,
            window_ticks: 4,
            min_samples: 32,
            baseline_keep_ratio: 1.5,
            settle_ticks: 1,
        }
    }

    #[test]
    fn an_empty_store_reports_no_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        let mut probe = Probe::load(&store, config()).expect("probe");
        assert_eq!(probe.tick(&store).expect("tick"), 0);
        let snapshot = probe.snapshot();
        assert_eq!(snapshot.recent_ns, None);
        assert_eq!(snapshot.ratio, None);
        assert_eq!(snapshot.baseline_ns, None);
        assert_eq!(snapshot.samples, 0);
        assert!(snapshot.age.is_none());
    }

    #[test]
    fn too_few_samples_give_no_ratio_then_a_baseline_is_taken_and_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..1000u32 {
            store
                .store(&i.to_be_bytes(), &[0u8; 100], None)
                .expect("store");
        }
        let mut probe = Probe::load(&store, config()).expect("probe");
        assert_eq!(probe.tick(&store).expect("tick"), 16);
        assert_eq!(probe.snapshot().ratio, None, "16 samples are not enough");
        // One tick to settle, then a whole window of four.
        for _ in 0..3 {
            probe.tick(&store).expect("tick");
            assert!(probe.baseline().is_none(), "no baseline before it settled");
            assert!(probe.settling());
        }
        probe.tick(&store).expect("tick");
        assert!(!probe.settling());
        let snapshot = probe.snapshot();
        let baseline = probe.baseline().expect("baseline taken");
        assert_eq!(baseline.reason, BaselineReason::FreshStart);
        assert!(baseline.latency_ns > 0.0);
        assert_eq!(snapshot.ratio, Some(1.0));
        assert_eq!(snapshot.samples, 64);
        drop(probe);
        let reloaded = Probe::load(&store, config()).expect("probe");
        assert_eq!(reloaded.baseline(), Some(baseline));
    }

    #[test]
    fn the_window_keeps_only_the_last_ticks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..1000u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        let mut probe = Probe::load(&store, config()).expect("probe");
        for _ in 0..10 {
            probe.tick(&store).expect("tick");
        }
        assert_eq!(probe.snapshot().samples, 4 * 16);
    }

    #[test]
    fn deleted_sampled_keys_are_not_timed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..10u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        for i in 0..10u32 {
            store.delete(&i.to_be_bytes()).expect("delete");
        }
        let mut probe = Probe::load(&store, config()).expect("probe");
        assert_eq!(probe.tick(&store).expect("tick"), 0);
        assert_eq!(store.sample_len(), 0);
    }

    #[test]
    fn the_baseline_is_kept_when_a_cleanup_did_not_bring_latency_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..1000u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        let mut probe = Probe::load(&store, config()).expect("probe");
        let none = probe
            .settle(&store, Duration::ZERO, 10)
            .expect("fresh baseline");
        assert_eq!(none, None, "a fresh start is not a cleanup");
        // Pretend the reference was far faster than anything this machine can do now.
        let fast = Baseline {
            latency_ns: 1.0,
            samples: 64,
            taken_at_ms: 0,
            reason: BaselineReason::FreshStart,
        };
        probe.baseline = Some(fast);
        probe.begin_after_cleanup();
        assert!(
            probe.snapshot().ratio.is_some(),
            "still reported while settling"
        );
        let settled = probe
            .settle(&store, Duration::ZERO, 10)
            .expect("settle")
            .expect("settled");
        assert!(!settled.baseline_reset);
        assert!(settled.ratio_after.is_some_and(|r| r > 1.5));
        assert_eq!(probe.baseline(), Some(fast));
        // And reset when it did.
        probe.baseline = Some(Baseline {
            latency_ns: 1e12,
            ..fast
        });
        probe.begin_after_cleanup();
        let settled = probe
            .settle(&store, Duration::ZERO, 10)
            .expect("settle")
            .expect("settled");
        assert!(settled.baseline_reset);
        assert_eq!(
            probe.baseline().map(|b| b.reason),
            Some(BaselineReason::AfterCleanup)
        );
        assert_eq!(probe.take_settled(), None, "reported once");
    }
}
