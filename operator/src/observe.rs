//! Observe: scrape each node's `/metrics` (as Prometheus would) and turn it into an
//! [`Observation`] for the policy. A node that does not answer, answers garbage, or reports
//! a probe with too few samples or too old is *stale* — never read as zero.

use std::time::Duration;

use phoenix_node_api::metrics::{Scrape, names};
use phoenix_node_api::{ClientError, NodeClient};

use crate::policy::{LastCleanup, NodeReport, Observation, ServedReport};

/// When a report is fresh enough to decide on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Freshness {
    /// Fewer probe samples than this: stale.
    pub min_samples: f64,
    /// A probe older than this: stale.
    pub max_age: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            min_samples: 100.0,
            max_age: Duration::from_secs(120),
        }
    }
}

/// The stale reason of a node that found corruption in its data (`status.nodes[].corrupted`
/// is set from it).
pub const CORRUPTED: &str = "corruption detected in the node's data";

/// Turns one node's metrics text into an observation. Pure; `now_unix` is the clock.
pub fn from_metrics(node: &str, text: &str, freshness: &Freshness, now_unix: f64) -> Observation {
    match Scrape::parse(text) {
        Ok(scrape) => from_scrape(node, &scrape, freshness, now_unix),
        Err(error) => Observation::Stale {
            node: node.to_string(),
            reason: format!("metrics do not parse: {error}"),
        },
    }
}

/// Turns one node's parsed metrics into an observation.
pub fn from_scrape(
    node: &str,
    scrape: &Scrape,
    freshness: &Freshness,
    now_unix: f64,
) -> Observation {
    let stale = |reason: String| Observation::Stale {
        node: node.to_string(),
        reason,
    };
    if scrape.get(names::READY).is_none() {
        return stale("not a phoenix node's metrics".into());
    }
    // A node whose data or durability is in doubt says nothing the policy may act on.
    if scrape.get(names::CORRUPTED).is_some_and(|v| v > 0.0) {
        return stale(format!(
            "{CORRUPTED}: it is unready, serves what it can read and needs repair"
        ));
    }
    if scrape.get(names::DURABLE) == Some(0.0) {
        return stale(
            "it cannot make writes durable (a flush failed or hangs) and refuses them; \
             its liveness probe fails so the kubelet restarts it"
                .into(),
        );
    }
    let Some(ratio) = scrape.finite(names::PROBE_RATIO) else {
        return stale("the probe has no ratio yet".into());
    };
    let samples = scrape.get(names::PROBE_SAMPLES).unwrap_or(0.0);
    if samples < freshness.min_samples {
        return stale(format!(
            "{samples} probe samples, fewer than {}",
            freshness.min_samples
        ));
    }
    let age = scrape
        .get(names::PROBE_AGE_SECONDS)
        .unwrap_or(f64::INFINITY);
    if age > freshness.max_age.as_secs_f64() {
        return stale(format!("probe data is {age:.0} s old"));
    }
    let baseline_at = scrape
        .get(names::PROBE_BASELINE_TIMESTAMP)
        .unwrap_or(now_unix);
    let count = |name| scrape.get(name).map_or(0, |v| v.max(0.0) as u64);
    let last_cleanup = scrape
        .finite(names::LAST_CLEANUP_TIMESTAMP)
        .map(|at| LastCleanup {
            at_unix: at,
            ratio_before: scrape.finite(names::LAST_CLEANUP_RATIO_BEFORE),
            ratio_after: scrape.finite(names::LAST_CLEANUP_RATIO_AFTER),
        });
    Observation::Fresh(NodeReport {
        node: node.to_string(),
        ratio,
        seconds_since_baseline: (now_unix - baseline_at).max(0.0),
        age_seconds: age,
        logical_bytes: count(names::LOGICAL_BYTES),
        disk_bytes: count(names::DISK_BYTES),
        cache_capacity_bytes: count(names::CACHE_CAPACITY_BYTES),
        recent_seconds: scrape.finite(names::PROBE_RECENT_SECONDS),
        baseline_seconds: scrape.finite(names::PROBE_BASELINE_SECONDS),
        samples: samples.max(0.0) as u64,
        keys: count(names::KEYS),
        last_cleanup,
        served: match (
            scrape.finite(names::SERVED_P50_SECONDS),
            scrape.finite(names::SERVED_P99_SECONDS),
        ) {
            (Some(p50), Some(p99)) => Some(ServedReport {
                ratio: scrape.finite(names::SERVED_RATIO),
                p50_seconds: p50,
                p99_seconds: p99,
                samples: count(names::SERVED_SAMPLES),
            }),
            _ => None,
        },
        expired_keys: count(names::EXPIRED_KEYS),
        rebuild_due: scrape.get(names::REBUILD_DUE).is_some_and(|v| v > 0.0),
    })
}

/// Scrapes `base_url/metrics` with a timeout.
pub async fn scrape(
    http: &reqwest::Client,
    node: &str,
    base_url: &str,
    timeout: Duration,
    freshness: &Freshness,
) -> Observation {
    let stale = |reason: String| Observation::Stale {
        node: node.to_string(),
        reason,
    };
    match NodeClient::new(http.clone(), base_url)
        .scrape(timeout)
        .await
    {
        Ok(scrape) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            from_scrape(node, &scrape, freshness, now)
        }
        Err(ClientError::Unreachable(error)) => stale(format!("unreachable: {error}")),
        Err(ClientError::Status { status, .. }) => stale(format!("metrics answered {status}")),
        Err(ClientError::Body(error)) => stale(format!("metrics unreadable: {error}")),
    }
}

/// Scrapes every `(node, base_url)` concurrently.
pub async fn scrape_all(
    http: &reqwest::Client,
    nodes: &[(String, String)],
    timeout: Duration,
    freshness: &Freshness,
) -> Vec<Observation> {
    futures::future::join_all(
        nodes
            .iter()
            .map(|(node, url)| scrape(http, node, url, timeout, freshness)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE phoenix_node_ready gauge\nphoenix_node_ready 1\n\
        # TYPE phoenix_node_probe_ratio gauge\nphoenix_node_probe_ratio 2.5\n\
        # TYPE phoenix_node_probe_samples gauge\nphoenix_node_probe_samples 960\n\
        # TYPE phoenix_node_probe_age_seconds gauge\nphoenix_node_probe_age_seconds 0.4\n\
        # TYPE phoenix_node_probe_baseline_timestamp_seconds gauge\nphoenix_node_probe_baseline_timestamp_seconds 1000\n\
        # TYPE phoenix_node_logical_bytes gauge\nphoenix_node_logical_bytes 500\n\
        # TYPE phoenix_node_disk_bytes gauge\nphoenix_node_disk_bytes 900\n\
        # TYPE phoenix_node_cache_capacity_bytes gauge\nphoenix_node_cache_capacity_bytes 4096\n\
        # TYPE phoenix_node_last_cleanup_timestamp_seconds gauge\nphoenix_node_last_cleanup_timestamp_seconds 1500\n\
        # TYPE phoenix_node_last_cleanup_ratio_before gauge\nphoenix_node_last_cleanup_ratio_before 6.5\n\
        # TYPE phoenix_node_last_cleanup_ratio_after gauge\nphoenix_node_last_cleanup_ratio_after 6.1\n";

    #[test]
    fn a_complete_report_is_fresh() {
        match from_metrics("n0", METRICS, &Freshness::default(), 1600.0) {
            Observation::Fresh(r) => {
                assert_eq!(
                    (
                        r.ratio,
                        r.seconds_since_baseline,
                        r.logical_bytes,
                        r.disk_bytes
                    ),
                    (2.5, 600.0, 500, 900)
                );
                assert_eq!(r.cache_capacity_bytes, 4096);
                assert_eq!(
                    r.last_cleanup,
                    Some(LastCleanup {
                        at_unix: 1500.0,
                        ratio_before: Some(6.5),
                        ratio_after: Some(6.1)
                    })
                );
            }
            stale => panic!("expected fresh, got {stale:?}"),
        }
    }

    #[test]
    fn served_figures_and_causes_are_read_when_present() {
        let with = format!(
            "{METRICS}phoenix_node_served_p50_seconds 0.0001\nphoenix_node_served_p99_seconds 0.0004\n\
             phoenix_node_served_ratio 1.38\nphoenix_node_served_samples 700\n\
             phoenix_node_expired_keys 12\nphoenix_node_rebuild_due 1\n"
        );
        match from_metrics("n0", &with, &Freshness::default(), 1600.0) {
            Observation::Fresh(r) => {
                let served = r.served.expect("served");
                assert_eq!(
                    (served.ratio, served.p99_seconds, served.samples),
                    (Some(1.38), 0.0004, 700)
                );
                assert_eq!((r.expired_keys, r.rebuild_due), (12, true));
            }
            stale => panic!("expected fresh, got {stale:?}"),
        }
        // No served p50/p99 (thin traffic): no served figures, never zeros.
        match from_metrics("n0", METRICS, &Freshness::default(), 1600.0) {
            Observation::Fresh(r) => assert_eq!((r.served, r.rebuild_due), (None, false)),
            stale => panic!("expected fresh, got {stale:?}"),
        }
    }

    #[test]
    fn missing_few_old_or_garbage_data_is_stale_never_zero() {
        let f = Freshness::default();
        let no_ratio = METRICS.replace("phoenix_node_probe_ratio 2.5", "");
        let few = METRICS.replace("samples 960", "samples 3");
        let old = METRICS.replace("age_seconds 0.4", "age_seconds 9000");
        for (text, expected) in [
            (no_ratio.as_str(), "no ratio"),
            (few.as_str(), "fewer than"),
            (old.as_str(), "old"),
            ("<html>not metrics</html>", "not a phoenix node"),
            (
                &format!(
                    "{METRICS}# TYPE phoenix_node_corrupted gauge\nphoenix_node_corrupted 1\n"
                ),
                CORRUPTED,
            ),
            (
                &format!("{METRICS}# TYPE phoenix_node_durable gauge\nphoenix_node_durable 0\n"),
                "cannot make writes durable",
            ),
            ("", "not a phoenix node"),
        ] {
            match from_metrics("n0", text, &f, 2000.0) {
                Observation::Stale { reason, .. } => assert!(reason.contains(expected), "{reason}"),
                fresh => panic!("expected stale for {expected}, got {fresh:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_node_is_stale() {
        let http = reqwest::Client::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let obs = scrape(
            &http,
            "down",
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(1),
            &Freshness::default(),
        )
        .await;
        assert!(
            matches!(obs, Observation::Stale { ref reason, .. } if reason.contains("unreachable")),
            "{obs:?}"
        );
    }
}
