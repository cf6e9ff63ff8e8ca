//! The node's metric names, as the node exports them and the operator and the cleanup job
//! read them, and one parser of the text exposition for every reader.

use std::collections::HashMap;

/// Metric names.
pub mod names {
    /// 1 when the node serves.
    pub const READY: &str = "phoenix_node_ready";
    /// Memories stored.
    pub const KEYS: &str = "phoenix_node_keys";
    /// Sum of key and value lengths.
    pub const LOGICAL_BYTES: &str = "phoenix_node_logical_bytes";
    /// Bytes on disk.
    pub const DISK_BYTES: &str = "phoenix_node_disk_bytes";
    /// sled's cache capacity.
    pub const CACHE_CAPACITY_BYTES: &str = "phoenix_node_cache_capacity_bytes";
    /// Baseline median retrieve latency.
    pub const PROBE_BASELINE_SECONDS: &str = "phoenix_node_probe_baseline_seconds";
    /// Recent median retrieve latency.
    pub const PROBE_RECENT_SECONDS: &str = "phoenix_node_probe_recent_seconds";
    /// Recent over baseline.
    pub const PROBE_RATIO: &str = "phoenix_node_probe_ratio";
    /// Retrieves in the recent window.
    pub const PROBE_SAMPLES: &str = "phoenix_node_probe_samples";
    /// Time since the probe last sampled.
    pub const PROBE_AGE_SECONDS: &str = "phoenix_node_probe_age_seconds";
    /// When the baseline was taken.
    pub const PROBE_BASELINE_TIMESTAMP: &str = "phoenix_node_probe_baseline_timestamp_seconds";
    /// When the last cleanup started.
    pub const LAST_CLEANUP_TIMESTAMP: &str = "phoenix_node_last_cleanup_timestamp_seconds";
    /// Ratio before the last cleanup.
    pub const LAST_CLEANUP_RATIO_BEFORE: &str = "phoenix_node_last_cleanup_ratio_before";
    /// Ratio after it, once settled.
    pub const LAST_CLEANUP_RATIO_AFTER: &str = "phoenix_node_last_cleanup_ratio_after";
    /// Disk bytes before the last cleanup.
    pub const LAST_CLEANUP_DISK_BEFORE: &str = "phoenix_node_last_cleanup_disk_bytes_before";
    /// Disk bytes after it.
    pub const LAST_CLEANUP_DISK_AFTER: &str = "phoenix_node_last_cleanup_disk_bytes_after";
    /// 1 while writes can be made durable.
    pub const DURABLE: &str = "phoenix_node_durable";
    /// When a flush last succeeded.
    pub const LAST_FLUSH_SUCCESS: &str = "phoenix_node_last_flush_success_timestamp_seconds";
    /// Flushes that failed.
    pub const FLUSH_ERRORS: &str = "phoenix_node_flush_errors_total";
    /// 1 once corruption was found.
    pub const CORRUPTED: &str = "phoenix_node_corrupted";
    /// Corrupt records or pages found.
    pub const CORRUPTION_DETECTED: &str = "phoenix_node_corruption_detected_total";
    /// Resident memory of the node process.
    pub const RESIDENT_MEMORY: &str = "phoenix_node_resident_memory_bytes";
    /// Served retrieve latency, p50 over the recent window.
    pub const SERVED_P50_SECONDS: &str = "phoenix_node_served_p50_seconds";
    /// Served retrieve latency, p99 over the recent window.
    pub const SERVED_P99_SECONDS: &str = "phoenix_node_served_p99_seconds";
    /// The served baseline's p50.
    pub const SERVED_BASELINE_SECONDS: &str = "phoenix_node_served_baseline_seconds";
    /// The served baseline's p99.
    pub const SERVED_BASELINE_P99_SECONDS: &str = "phoenix_node_served_baseline_p99_seconds";
    /// Recent served p50 over the baseline's.
    pub const SERVED_RATIO: &str = "phoenix_node_served_ratio";
    /// Retrieves served in the recent window.
    pub const SERVED_SAMPLES: &str = "phoenix_node_served_samples";
    /// Expired memories not yet pruned (counted up to a cap).
    pub const EXPIRED_KEYS: &str = "phoenix_node_expired_keys";
    /// 1 when the disk holds more than the rebuild multiple of logical bytes.
    pub const REBUILD_DUE: &str = "phoenix_node_rebuild_due";
    /// HTTP request duration by operation (histogram).
    pub const REQUEST_DURATION: &str = "phoenix_node_request_duration_seconds";
    /// HTTP requests by operation and status class.
    pub const REQUESTS: &str = "phoenix_node_requests_total";
    /// Cleanups by outcome.
    pub const CLEANUPS: &str = "phoenix_node_cleanups_total";
    /// Raft role: 0 learner, 1 follower, 2 candidate, 3 leader.
    pub const RAFT_ROLE: &str = "phoenix_node_raft_role";
    /// Current Raft term.
    pub const RAFT_TERM: &str = "phoenix_node_raft_term";
    /// The leader's id, as this node knows it.
    pub const RAFT_LEADER_ID: &str = "phoenix_node_raft_leader_id";
    /// 1 when this node votes.
    pub const RAFT_VOTER: &str = "phoenix_node_raft_voter";
    /// Highest committed log index.
    pub const RAFT_COMMIT_INDEX: &str = "phoenix_node_raft_commit_index";
    /// Highest applied log index.
    pub const RAFT_APPLIED_INDEX: &str = "phoenix_node_raft_applied_index";
    /// Highest log index held.
    pub const RAFT_LAST_LOG_INDEX: &str = "phoenix_node_raft_last_log_index";
    /// Entries a member lags the leader (`peer` label; leader only).
    pub const RAFT_FOLLOWER_LAG: &str = "phoenix_node_raft_follower_lag_entries";
    /// Snapshots sent to followers.
    pub const RAFT_SNAPSHOTS_SENT: &str = "phoenix_node_raft_snapshots_sent_total";
    /// Snapshots installed.
    pub const RAFT_SNAPSHOTS_INSTALLED: &str = "phoenix_node_raft_snapshots_installed_total";
    /// Snapshots refused (root mismatch).
    pub const RAFT_SNAPSHOTS_REFUSED: &str = "phoenix_node_raft_snapshots_refused_total";
    /// Requests forwarded to the leader.
    pub const RAFT_FORWARDED: &str = "phoenix_node_raft_forwarded_requests_total";
    /// Read indexes served under the leader's lease.
    pub const RAFT_LEASE_READS: &str = "phoenix_node_raft_lease_reads_total";
    /// Raft log flushes.
    pub const RAFT_LOG_FLUSHES: &str = "phoenix_node_raft_log_flushes_total";
    /// Appends those flushes made durable.
    pub const RAFT_LOG_FLUSHED_APPENDS: &str = "phoenix_node_raft_log_flushed_appends_total";
}

/// The kind of a series in the exposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up.
    Counter,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One unlabelled series the node writes at scrape time.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// Its name (one of [`names`]).
    pub name: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Series {
    Series {
        name,
        kind: Kind::Gauge,
        help,
    }
}

/// The node's state series, in the order it writes them.
pub const STATE: [Series; 30] = [
    gauge(
        names::READY,
        "1 when the node serves, 0 while opening, rebuilding or stopping.",
    ),
    gauge(
        names::KEYS,
        "Memories stored (expired ones count until pruned).",
    ),
    gauge(names::LOGICAL_BYTES, "Sum of key and value lengths."),
    gauge(names::DISK_BYTES, "Bytes the database occupies on disk."),
    gauge(
        names::CACHE_CAPACITY_BYTES,
        "sled's configured cache capacity.",
    ),
    gauge(
        names::PROBE_BASELINE_SECONDS,
        "Baseline median retrieve latency.",
    ),
    gauge(
        names::PROBE_RECENT_SECONDS,
        "Recent median retrieve latency.",
    ),
    gauge(names::PROBE_RATIO, "Recent over baseline retrieve latency."),
    gauge(
        names::PROBE_SAMPLES,
        "Retrieves in the probe's recent window.",
    ),
    gauge(
        names::PROBE_AGE_SECONDS,
        "Time since the probe last sampled.",
    ),
    gauge(
        names::PROBE_BASELINE_TIMESTAMP,
        "When the baseline was taken (unix).",
    ),
    gauge(
        names::SERVED_P50_SECONDS,
        "Served retrieve latency (successful retrieves, router to response), p50 over the probe's window; absent when traffic is thin.",
    ),
    gauge(
        names::SERVED_P99_SECONDS,
        "Served retrieve latency, p99 over the probe's window.",
    ),
    gauge(
        names::SERVED_BASELINE_SECONDS,
        "The served baseline's p50 (settled after start and after cleanups that helped).",
    ),
    gauge(
        names::SERVED_BASELINE_P99_SECONDS,
        "The served baseline's p99.",
    ),
    gauge(
        names::SERVED_RATIO,
        "Recent served p50 over the baseline's.",
    ),
    gauge(
        names::SERVED_SAMPLES,
        "Retrieves served in the recent window (a sample of at most 256 per tick).",
    ),
    gauge(
        names::EXPIRED_KEYS,
        "Expired memories not yet pruned (counted up to 10000).",
    ),
    gauge(
        names::REBUILD_DUE,
        "1 when the disk holds more than the rebuild multiple of logical bytes (a cleanup rebuilds).",
    ),
    gauge(
        names::LAST_CLEANUP_TIMESTAMP,
        "When the last cleanup started (unix).",
    ),
    gauge(
        names::LAST_CLEANUP_RATIO_BEFORE,
        "Probe ratio before the last cleanup.",
    ),
    gauge(
        names::LAST_CLEANUP_RATIO_AFTER,
        "Probe ratio after it, against the same baseline.",
    ),
    gauge(
        names::LAST_CLEANUP_DISK_BEFORE,
        "Disk bytes before the last cleanup.",
    ),
    gauge(
        names::LAST_CLEANUP_DISK_AFTER,
        "Disk bytes after the last cleanup.",
    ),
    gauge(
        names::DURABLE,
        "1 while writes can be made durable; 0 after a failed flush or while one hangs (writes are refused, /healthz fails).",
    ),
    gauge(
        names::LAST_FLUSH_SUCCESS,
        "When a flush last succeeded (unix).",
    ),
    Series {
        name: names::FLUSH_ERRORS,
        kind: Kind::Counter,
        help: "Flushes that failed.",
    },
    gauge(
        names::CORRUPTED,
        "1 once corruption has been found (by the scrub or a read): the node is unready.",
    ),
    Series {
        name: names::CORRUPTION_DETECTED,
        kind: Kind::Counter,
        help: "Corrupt records or pages found by the scrub or by reads.",
    },
    gauge(
        names::RESIDENT_MEMORY,
        "Resident memory of the node process.",
    ),
];

/// The unlabelled values of one scrape (gauges, counters and untyped samples; the first
/// sample of a name wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    values: HashMap<String, f64>,
}

impl Scrape {
    /// Parses the Prometheus text exposition.
    ///
    /// # Errors
    /// The text is not the exposition format.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).map_err(|e| e.to_string())?;
        let mut values = HashMap::new();
        for sample in parsed.samples {
            let value = match sample.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            if sample.labels.is_empty() {
                values.entry(sample.metric).or_insert(value);
            }
        }
        Ok(Scrape { values })
    }

    /// The value of `name` (one of [`names`]), if the scrape has it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// `name` when it is a finite number.
    pub fn finite(&self, name: &str) -> Option<f64> {
        self.get(name).filter(|v| v.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_gauges_counters_and_untyped_values_are_read() {
        let text = "# TYPE phoenix_node_ready gauge\nphoenix_node_ready 1\n\
                    # TYPE phoenix_node_flush_errors_total counter\nphoenix_node_flush_errors_total 2\n\
                    phoenix_node_probe_ratio_extra 9\nphoenix_node_probe_ratio 1.5\n\
                    # TYPE phoenix_node_cleanups_total counter\nphoenix_node_cleanups_total{outcome=\"success\"} 3\n";
        let scrape = Scrape::parse(text).expect("parses");
        assert_eq!(scrape.get(names::READY), Some(1.0));
        assert_eq!(scrape.get(names::FLUSH_ERRORS), Some(2.0));
        assert_eq!(scrape.get(names::PROBE_RATIO), Some(1.5));
        assert_eq!(
            scrape.get(names::CLEANUPS),
            None,
            "labelled series are not unlabelled values"
        );
        assert_eq!(scrape.get(names::KEYS), None);
    }

    #[test]
    fn every_state_series_has_its_own_name() {
        let mut seen = std::collections::BTreeSet::new();
        for series in STATE {
            assert!(series.name.starts_with("phoenix_node_"));
            assert!(seen.insert(series.name), "{} twice", series.name);
        }
    }
}
