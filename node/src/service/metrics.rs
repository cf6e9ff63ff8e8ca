//! Prometheus metrics (`phoenix_node_` prefix, base units). Gauges describing the store and
//! the probe are refreshed at scrape time; probe gauges without data are left out, never 0.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::cleanup::CleanupReport;
use crate::probe::ProbeSnapshot;
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
}

/// The process's resident set size (`VmRSS` in `/proc/self/status`), bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Safety series written at scrape time: name, type and help.
const SAFETY: [(&str, &str, &str); 6] = [
    (
        "phoenix_node_durable",
        "gauge",
        "1 while writes can be made durable; 0 after a failed flush or while one hangs (writes are refused, /healthz fails).",
    ),
    (
        "phoenix_node_last_flush_success_timestamp_seconds",
        "gauge",
        "When a flush last succeeded (unix).",
    ),
    (
        "phoenix_node_flush_errors_total",
        "counter",
        "Flushes that failed.",
    ),
    (
        "phoenix_node_corrupted",
        "gauge",
        "1 once corruption has been found (by the scrub or a read): the node is unready.",
    ),
    (
        "phoenix_node_corruption_detected_total",
        "counter",
        "Corrupt records or pages found by the scrub or by reads.",
    ),
    (
        "phoenix_node_resident_memory_bytes",
        "gauge",
        "Resident memory of the node process.",
    ),
];

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

/// State gauges written at scrape time: name and help.
const GAUGES: [(&str, &str); 16] = [
    (
        "phoenix_node_ready",
        "1 when the node serves, 0 while opening, rebuilding or stopping.",
    ),
    (
        "phoenix_node_keys",
        "Memories stored (expired ones count until pruned).",
    ),
    (
        "phoenix_node_logical_bytes",
        "Sum of key and value lengths.",
    ),
    (
        "phoenix_node_disk_bytes",
        "Bytes the database occupies on disk.",
    ),
    (
        "phoenix_node_cache_capacity_bytes",
        "sled's configured cache capacity.",
    ),
    (
        "phoenix_node_probe_baseline_seconds",
        "Baseline median retrieve latency.",
    ),
    (
        "phoenix_node_probe_recent_seconds",
        "Recent median retrieve latency.",
    ),
    (
        "phoenix_node_probe_ratio",
        "Recent over baseline retrieve latency.",
    ),
    (
        "phoenix_node_probe_samples",
        "Retrieves in the probe's recent window.",
    ),
    (
        "phoenix_node_probe_age_seconds",
        "Time since the probe last sampled.",
    ),
    (
        "phoenix_node_probe_baseline_timestamp_seconds",
        "When the baseline was taken (unix).",
    ),
    (
        "phoenix_node_last_cleanup_timestamp_seconds",
        "When the last cleanup started (unix).",
    ),
    (
        "phoenix_node_last_cleanup_ratio_before",
        "Probe ratio before the last cleanup.",
    ),
    (
        "phoenix_node_last_cleanup_ratio_after",
        "Probe ratio after it, against the same baseline.",
    ),
    (
        "phoenix_node_last_cleanup_disk_bytes_before",
        "Disk bytes before the last cleanup.",
    ),
    (
        "phoenix_node_last_cleanup_disk_bytes_after",
        "Disk bytes after the last cleanup.",
    ),
];

impl Metrics {
    /// Registers the counters and histograms.
    ///
    /// # Errors
    /// Only if the static definitions are invalid (a programming error).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "phoenix_node_request_duration_seconds",
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
                "phoenix_node_requests_total",
                "HTTP requests by operation and status class.",
            ),
            &["operation", "class"],
        )?;
        let cleanups = IntCounterVec::new(
            Opts::new("phoenix_node_cleanups_total", "Cleanups by outcome."),
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
                "phoenix_node_ready" => Some(f64::from(u8::from(ready))),
                "phoenix_node_keys" => stats.map(|s| s.keys as f64),
                "phoenix_node_logical_bytes" => stats.map(|s| s.logical_bytes as f64),
                "phoenix_node_disk_bytes" => stats.map(|s| s.disk_bytes as f64),
                "phoenix_node_cache_capacity_bytes" => stats.map(|s| s.cache_capacity_bytes as f64),
                "phoenix_node_probe_baseline_seconds" => probe.baseline_ns.map(|ns| ns / 1e9),
                "phoenix_node_probe_recent_seconds" => probe.recent_ns.map(|ns| ns / 1e9),
                "phoenix_node_probe_ratio" => probe.ratio,
                "phoenix_node_probe_samples" => Some(probe.samples as f64),
                "phoenix_node_probe_age_seconds" => probe.age.map(|a| a.as_secs_f64()),
                "phoenix_node_probe_baseline_timestamp_seconds" => {
                    probe.baseline_taken_at_ms.map(|ms| ms as f64 / 1000.0)
                }
                "phoenix_node_last_cleanup_timestamp_seconds" => {
                    last_cleanup.map(|r| r.started_at_ms as f64 / 1000.0)
                }
                "phoenix_node_last_cleanup_ratio_before" => {
                    last_cleanup.and_then(|r| r.ratio_before)
                }
                "phoenix_node_last_cleanup_ratio_after" => last_cleanup.and_then(|r| r.ratio_after),
                "phoenix_node_last_cleanup_disk_bytes_before" => {
                    last_cleanup.map(|r| r.disk_bytes_before as f64)
                }
                "phoenix_node_last_cleanup_disk_bytes_after" => {
                    last_cleanup.map(|r| r.disk_bytes_after as f64)
                }
                _ => None,
            }
        };
        for (name, help) in GAUGES {
            if let Some(v) = value(name) {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
                ));
            }
        }
        let safety_value = |name: &str| -> Option<f64> {
            match name {
                "phoenix_node_durable" => Some(f64::from(u8::from(safety.flush.ok()))),
                "phoenix_node_last_flush_success_timestamp_seconds" => {
                    safety.flush.last_success_unix
                }
                "phoenix_node_flush_errors_total" => Some(safety.flush.errors as f64),
                "phoenix_node_corrupted" => Some(f64::from(u8::from(safety.corruption > 0))),
                "phoenix_node_corruption_detected_total" => Some(safety.corruption as f64),
                "phoenix_node_resident_memory_bytes" => safety.resident_bytes.map(|b| b as f64),
                _ => None,
            }
        };
        for (name, kind, help) in SAFETY {
            if let Some(v) = safety_value(name) {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
                ));
            }
        }
        text
    }
}
