//! Served latency: what clients see. Every successful retrieve the node answers is timed
//! (from the request's arrival in the router to its response) and kept per probe tick; the
//! node reports p50 and p99 over the same window as the probe, against its own settled
//! baseline, persisted with the data like the probe's.
//!
//! The probe measures the engine alone on a fixed cadence; this measures the requests that
//! real clients sent, so it has no data when traffic is thin (fewer than `min_samples`
//! retrieves in the window) — never zero.
//!
//! Recording is one short mutex section per retrieve; a tick keeps at most
//! `max_per_tick` durations (a uniform reservoir of that tick's retrieves), so a busy node
//! costs the same to summarise as a quiet one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Result, Store, StoreError};

const BASELINE_META: &str = "served.baseline";

/// Served-latency settings (the window and settling follow the probe's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServedConfig {
    /// Ticks the recent figures cover.
    pub window_ticks: usize,
    /// Ticks to wait after a start or a cleanup before the window that gives a baseline.
    pub settle_ticks: usize,
    /// Retrieves needed in the window before anything is reported.
    pub min_samples: usize,
    /// Durations kept per tick.
    pub max_per_tick: usize,
    /// After a cleanup the baseline is re-taken only if p50 came back within this multiple.
    pub baseline_keep_ratio: f64,
}

impl Default for ServedConfig {
    fn default() -> Self {
        ServedConfig {
            window_ticks: 30,
            settle_ticks: 10,
            min_samples: 100,
            max_per_tick: 256,
            baseline_keep_ratio: 1.5,
        }
    }
}

/// The served baseline, persisted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedBaseline {
    /// p50, nanoseconds.
    pub p50_ns: f64,
    /// p99, nanoseconds.
    pub p99_ns: f64,
    /// Retrieves it was computed from.
    pub samples: u64,
    /// When it was taken (unix ms).
    pub taken_at_ms: u64,
}

/// What is known now; `None` means no data.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServedSnapshot {
    /// Recent p50, nanoseconds.
    pub p50_ns: Option<f64>,
    /// Recent p99, nanoseconds.
    pub p99_ns: Option<f64>,
    /// Retrieves in the window.
    pub samples: usize,
    /// Baseline p50, nanoseconds.
    pub baseline_p50_ns: Option<f64>,
    /// Baseline p99, nanoseconds.
    pub baseline_p99_ns: Option<f64>,
    /// Recent p50 over baseline p50.
    pub ratio: Option<f64>,
    /// When the baseline was taken (unix ms).
    pub baseline_taken_at_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Current {
    kept: Vec<u32>,
    seen: u64,
}

#[derive(Debug)]
struct Window {
    ticks: VecDeque<Vec<u32>>,
    baseline: Option<ServedBaseline>,
    /// Ticks left before a baseline may be taken; `None` when none is pending.
    pending: Option<Pending>,
    snapshot: ServedSnapshot,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    ticks_left: usize,
    /// The baseline in force when a cleanup ended (`None`: a fresh start).
    after_cleanup: Option<Option<ServedBaseline>>,
}

/// The served-latency tracker, shared by the request tasks (which record) and the probe
/// task (which ticks).
#[derive(Debug)]
pub struct Served {
    config: ServedConfig,
    current: Mutex<Current>,
    window: Mutex<Window>,
    rng: Mutex<fastrand::Rng>,
}

/// Nanoseconds as kept (saturating at ~4.3 s, far past any floor).
fn as_kept(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
}

/// The value at quantile `q` (0..=1) of `sorted`.
fn quantile(sorted: &[u32], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let index = ((last as f64) * q).round() as usize;
    f64::from(sorted[index.min(last)])
}

impl Served {
    /// A tracker with the baseline persisted in `store`, if any.
    ///
    /// # Errors
    /// Engine errors reading the baseline.
    pub fn load(store: &Store, config: ServedConfig) -> Result<Served> {
        let baseline: Option<ServedBaseline> = store
            .meta(BASELINE_META)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let pending = baseline.is_none().then_some(Pending {
            ticks_left: config.settle_ticks + config.window_ticks,
            after_cleanup: None,
        });
        let mut window = Window {
            ticks: VecDeque::with_capacity(config.window_ticks + 1),
            baseline,
            pending,
            snapshot: ServedSnapshot::default(),
        };
        window.snapshot = window.summarise(&config);
        Ok(Served {
            config,
            current: Mutex::new(Current::default()),
            window: Mutex::new(window),
            rng: Mutex::new(fastrand::Rng::new()),
        })
    }

    /// Records one served retrieve.
    pub fn record(&self, took: Duration) {
        let nanos = as_kept(took);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.seen += 1;
        if current.kept.len() < self.config.max_per_tick {
            current.kept.push(nanos);
        } else {
            // Reservoir: each of the tick's retrieves is kept with equal probability.
            let slot = self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .u64(0..current.seen);
            if let Ok(slot) = usize::try_from(slot)
                && slot < current.kept.len()
            {
                current.kept[slot] = nanos;
            }
        }
    }

    /// Closes the current tick (called at the probe's cadence): the window moves on, and a
    /// pending baseline is taken once the node has settled and a whole window with enough
    /// retrieves was served after that.
    ///
    /// # Errors
    /// Engine errors persisting a new baseline.
    pub fn tick(&self, store: &Store) -> Result<()> {
        let kept =
            std::mem::take(&mut *self.current.lock().unwrap_or_else(PoisonError::into_inner)).kept;
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.ticks.push_back(kept);
        while window.ticks.len() > self.config.window_ticks {
            window.ticks.pop_front();
        }
        window.snapshot = window.summarise(&self.config);
        let recent = (window.snapshot.p50_ns, window.snapshot.p99_ns);
        if let Some(pending) = window.pending.as_mut() {
            pending.ticks_left = pending.ticks_left.saturating_sub(1);
            if pending.ticks_left == 0
                && let (Some(p50), Some(p99)) = recent
            {
                let after_cleanup = pending.after_cleanup;
                window.pending = None;
                let recovered = after_cleanup
                    .flatten()
                    .is_none_or(|old| p50 <= old.p50_ns * self.config.baseline_keep_ratio);
                if recovered {
                    let baseline = ServedBaseline {
                        p50_ns: p50,
                        p99_ns: p99,
                        samples: window.snapshot.samples as u64,
                        taken_at_ms: store.config().clock.now_ms(),
                    };
                    let bytes = serde_json::to_vec(&baseline)
                        .map_err(|e| StoreError::Corrupt(format!("served baseline: {e}")))?;
                    store.set_meta(BASELINE_META, &bytes)?;
                    window.baseline = Some(baseline);
                    window.snapshot = window.summarise(&self.config);
                }
            }
        }
        Ok(())
    }

    /// Called when a cleanup ended: the baseline is re-taken after settling if p50 came
    /// back within `baseline_keep_ratio` of it (as the probe's).
    pub fn begin_after_cleanup(&self) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.pending = Some(Pending {
            ticks_left: self.config.settle_ticks + self.config.window_ticks,
            after_cleanup: Some(window.baseline),
        });
    }

    /// The figures as of the last tick.
    pub fn snapshot(&self) -> ServedSnapshot {
        self.window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot
    }
}

impl Window {
    fn summarise(&self, config: &ServedConfig) -> ServedSnapshot {
        let mut all: Vec<u32> = self.ticks.iter().flatten().copied().collect();
        let baseline = self.baseline;
        let mut snapshot = ServedSnapshot {
            samples: all.len(),
            baseline_p50_ns: baseline.map(|b| b.p50_ns),
            baseline_p99_ns: baseline.map(|b| b.p99_ns),
            baseline_taken_at_ms: baseline.map(|b| b.taken_at_ms),
            ..ServedSnapshot::default()
        };
        if all.is_empty() || all.len() < config.min_samples.max(1) {
            return snapshot;
        }
        all.sort_unstable();
        let (p50, p99) = (quantile(&all, 0.5), quantile(&all, 0.99));
        snapshot.p50_ns = Some(p50);
        snapshot.p99_ns = Some(p99);
        snapshot.ratio = baseline.filter(|b| b.p50_ns > 0.0).map(|b| p50 / b.p50_ns);
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn config() -> ServedConfig {
        ServedConfig {
            window_ticks: 4,
            settle_ticks: 2,
            min_samples: 20,
            max_per_tick: 50,
            baseline_keep_ratio: 1.5,
        }
    }

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(StoreConfig::new(dir.path())).expect("store")
    }

    fn serve(served: &Served, micros: u64, n: usize) {
        for _ in 0..n {
            served.record(Duration::from_micros(micros));
        }
    }

    /// `ticks` ticks, each of `n` retrieves taking `micros`.
    fn ticks(served: &Served, store: &Store, ticks: usize, micros: u64, n: usize) {
        for _ in 0..ticks {
            serve(served, micros, n);
            served.tick(store).expect("tick");
        }
    }

    #[test]
    fn thin_traffic_reports_no_data_never_zero() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir);
        let served = Served::load(&store, config()).expect("served");
        ticks(&served, &store, 10, 50, 3);
        let snapshot = served.snapshot();
        assert_eq!(snapshot.samples, 12, "the window holds four ticks of three");
        assert_eq!((snapshot.p50_ns, snapshot.ratio), (None, None));
    }

    #[test]
    fn a_settled_baseline_is_taken_persisted_and_the_ratio_follows_p50() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir);
        let served = Served::load(&store, config()).expect("served");
        // Settle (2 ticks) + a whole window (4 ticks) of 10 retrieves at 100 µs.
        ticks(&served, &store, 6, 100, 10);
        let snapshot = served.snapshot();
        assert_eq!(snapshot.baseline_p50_ns, Some(100_000.0));
        assert_eq!(snapshot.ratio, Some(1.0));
        // Slower requests move p50, p99 and the ratio.
        for _ in 0..4 {
            serve(&served, 300, 9);
            serve(&served, 5_000, 1);
            served.tick(&store).expect("tick");
        }
        let slow = served.snapshot();
        assert_eq!(slow.p50_ns, Some(300_000.0));
        assert_eq!(slow.p99_ns, Some(5_000_000.0));
        assert_eq!(slow.ratio, Some(3.0));
        // A restart keeps the baseline (no new one is pending).
        let again = Served::load(&store, config()).expect("reloaded");
        ticks(&again, &store, 4, 300, 10);
        assert_eq!(again.snapshot().ratio, Some(3.0));
    }

    #[test]
    fn a_busy_tick_keeps_a_bounded_uniform_sample() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir);
        let served = Served::load(&store, config()).expect("served");
        // 5,000 retrieves in one tick: half fast, half slow, interleaved.
        for i in 0..5000 {
            served.record(Duration::from_micros(if i % 2 == 0 { 10 } else { 1000 }));
        }
        served.tick(&store).expect("tick");
        let window = served.window.lock().expect("window");
        let kept = &window.ticks[0];
        assert_eq!(kept.len(), 50);
        let slow = kept.iter().filter(|&&n| n > 100_000).count();
        assert!((10..=40).contains(&slow), "{slow} of 50 slow: not uniform");
    }

    #[test]
    fn after_a_cleanup_the_baseline_is_kept_unless_latency_came_back() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir);
        let served = Served::load(&store, config()).expect("served");
        ticks(&served, &store, 6, 100, 10);
        // A cleanup that did not help: 400 µs after settling, the 100 µs baseline stays.
        served.begin_after_cleanup();
        ticks(&served, &store, 6, 400, 10);
        assert_eq!(served.snapshot().baseline_p50_ns, Some(100_000.0));
        assert_eq!(served.snapshot().ratio, Some(4.0));
        // One that did: 120 µs is within 1.5× of 100 µs, so it becomes the baseline.
        served.begin_after_cleanup();
        ticks(&served, &store, 6, 120, 10);
        assert_eq!(served.snapshot().baseline_p50_ns, Some(120_000.0));
    }
}
