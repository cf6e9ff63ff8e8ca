//! Prometheus metrics (`phoenix_node_` prefix, base units). Gauges describing the store and
//! the probe are refreshed at scrape time; probe gauges without data are left out, never 0.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use phoenix_node_api::metrics::{STATE, names};

use crate::cleanup::CleanupReport;
use crate::probe::ProbeSnapshot;
use crate::served::ServedSnapshot;
use crate::store::{FlushHealth, Stats};

/// What the data-safety metrics are rendered from.
#[derive(Clone, Debug, Default)]
pub struct Safety {
    /// The flusher's state.
    pub flush: FlushHealth,
    /// Corruption findings so far.
    pub corruption: u64,
    /// The process's resident memory, when the platform tells.
    pub resident_bytes: Option<u64>,
    /// Expired memories not yet pruned (up to [`EXPIRED_CAP`]), when the store answered.
    pub expired_keys: Option<u64>,
    /// Whether a cleanup would rebuild, when the store answered.
    pub rebuild_due: Option<bool>,
}

/// The expired memories counted per scrape at most.
pub const EXPIRED_CAP: u64 = 10_000;

/// The process's resident set size (`VmRSS` in `/proc/self/status`), bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Operation label values (a fixed set).
pub const OPERATIONS: [&str; 9] = [
    "store", "retrieve", "delete", "list", "root", "proof", "cleanup", "ping", "other",
];

/// The node's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    request_duration: HistogramVec,
    requests: IntCounterVec,
    cleanups: IntCounterVec,
}

impl Metrics {
    /// Registers the counters and histograms.
    ///
    /// # Errors
    /// Only if the static definitions are invalid (a programming error).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "HTTP request duration by operation.",
            )
            .buckets(vec![
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["operation"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                names::REQUESTS,
                "HTTP requests by operation and status class.",
            ),
            &["operation", "class"],
        )?;
        let cleanups = IntCounterVec::new(
            Opts::new(names::CLEANUPS, "Cleanups by outcome."),
            &["outcome"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(cleanups.clone()))?;
        for outcome in ["success", "failure", "refused"] {
            cleanups.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            registry,
            request_duration,
            requests,
            cleanups,
        })
    }

    /// Records one request.
    pub fn observe_request(&self, operation: &str, status: u16, seconds: f64) {
        let operation = if OPERATIONS.contains(&operation) {
            operation
        } else {
            "other"
        };
        self.request_duration
            .with_label_values(&[operation])
            .observe(seconds);
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[operation, class]).inc();
    }

    /// Counts a cleanup by outcome (`success`, `failure`, `refused`).
    pub fn count_cleanup(&self, outcome: &'static str) {
        self.cleanups.with_label_values(&[outcome]).inc();
    }

    /// Renders the text exposition: the registry, then the state gauges that have a value.
    pub fn render(
        &self,
        stats: Option<&Stats>,
        probe: &ProbeSnapshot,
        served: &ServedSnapshot,
        last_cleanup: Option<&CleanupReport>,
        ready: bool,
        safety: &Safety,
    ) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "failed to encode metrics");
        }
        let mut text = String::from_utf8(buffer).unwrap_or_default();
        let value = |name: &str| -> Option<f64> {
            match name {
                names::READY => Some(f64::from(u8::from(ready))),
                names::KEYS => stats.map(|s| s.keys as f64),
                names::LOGICAL_BYTES => stats.map(|s| s.logical_bytes as f64),
                names::DISK_BYTES => stats.map(|s| s.disk_bytes as f64),
                names::CACHE_CAPACITY_BYTES => stats.map(|s| s.cache_capacity_bytes as f64),
                names::PROBE_BASELINE_SECONDS => probe.baseline_ns.map(|ns| ns / 1e9),
                names::PROBE_RECENT_SECONDS => probe.recent_ns.map(|ns| ns / 1e9),
                names::PROBE_RATIO => probe.ratio,
                names::PROBE_SAMPLES => Some(probe.samples as f64),
                names::PROBE_AGE_SECONDS => probe.age.map(|a| a.as_secs_f64()),
                names::PROBE_BASELINE_TIMESTAMP => {
                    probe.baseline_taken_at_ms.map(|ms| ms as f64 / 1000.0)
                }
                names::SERVED_P50_SECONDS => served.p50_ns.map(|ns| ns / 1e9),
                names::SERVED_P99_SECONDS => served.p99_ns.map(|ns| ns / 1e9),
                names::SERVED_BASELINE_SECONDS => served.baseline_p50_ns.map(|ns| ns / 1e9),
                names::SERVED_BASELINE_P99_SECONDS => served.baseline_p99_ns.map(|ns| ns / 1e9),
                names::SERVED_RATIO => served.ratio,
                names::SERVED_SAMPLES => Some(served.samples as f64),
                names::EXPIRED_KEYS => safety.expired_keys.map(|n| n as f64),
                names::REBUILD_DUE => safety.rebuild_due.map(|due| f64::from(u8::from(due))),
                names::LAST_CLEANUP_TIMESTAMP => {
                    last_cleanup.map(|r| r.started_at_ms as f64 / 1000.0)
                }
                names::LAST_CLEANUP_RATIO_BEFORE => last_cleanup.and_then(|r| r.ratio_before),
                names::LAST_CLEANUP_RATIO_AFTER => last_cleanup.and_then(|r| r.ratio_after),
                names::LAST_CLEANUP_DISK_BEFORE => last_cleanup.map(|r| r.disk_bytes_before as f64),
                names::LAST_CLEANUP_DISK_AFTER => last_cleanup.map(|r| r.disk_bytes_after as f64),
                names::DURABLE => Some(f64::from(u8::from(safety.flush.ok()))),
                names::LAST_FLUSH_SUCCESS => safety.flush.last_success_unix,
                names::FLUSH_ERRORS => Some(safety.flush.errors as f64),
                names::CORRUPTED => Some(f64::from(u8::from(safety.corruption > 0))),
                names::CORRUPTION_DETECTED => Some(safety.corruption as f64),
                names::RESIDENT_MEMORY => safety.resident_bytes.map(|b| b as f64),
                _ => None,
            }
        };
        for series in STATE {
            if let Some(v) = value(series.name) {
                let (name, help, kind) = (series.name, series.help, series.kind.as_str());
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
                ));
            }
        }
        text
    }
}
