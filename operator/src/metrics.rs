//! The operator's Prometheus metrics (`phoenix_operator_` prefix). Labels come from fixed
//! sets: results, error categories.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// One memory's own series.
#[derive(Clone, Copy, Debug, Default)]
struct PerMemory {
    /// The cleanup cadence decided, seconds.
    cadence: Option<f64>,
    /// When its nodes were last observed (the age is worked out at scrape time).
    observed_at: Option<Instant>,
}

/// Every memory's own figures, by namespace and name (sorted: the exposition is stable).
type PerMemories = BTreeMap<String, BTreeMap<String, PerMemory>>;

/// One per-memory family's figure of a memory, if it has one.
type Figure = fn(&PerMemory) -> Option<f64>;

/// `phoenix_operator_cleanup_interval_seconds`: HELP text.
const CADENCE_HELP: &str = "The cleanup cadence decided for each memory.";
/// `phoenix_operator_observation_age_seconds`: HELP text.
const AGE_HELP: &str = "Age of the node observations behind each memory's status and decisions, \
                        at scrape time (status is not rewritten to show it).";

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    duration: HistogramVec,
    errors: IntCounterVec,
    /// 1 while this replica reconciles (leads), 0 otherwise.
    pub leader: IntGauge,
    scrapes: IntCounterVec,
    decisions: IntCounterVec,
    emergency_jobs: IntCounter,
    status_writes: IntCounterVec,
    membership_steps: IntCounterVec,
    replication: GaugeVec,
    /// Each memory's series (`cadence`, `observation_age`), kept as plain figures by
    /// (namespace, name) and written out at scrape time: at 10,000 memories a `GaugeVec` of
    /// each and the registry's copy of every series at a scrape took ~15 MiB.
    per_memory: std::sync::Arc<std::sync::Mutex<PerMemories>>,
    /// Readiness and liveness of the controller (see [`crate::health`]).
    pub health: std::sync::Arc<crate::health::Health>,
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Errors
    /// Only if the static definitions are invalid.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("phoenix_operator_reconciles_total", "Reconciles by result."),
            &["result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "phoenix_operator_reconcile_duration_seconds",
                "Reconcile duration.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "phoenix_operator_reconcile_errors_total",
                "Failed reconciles by error category.",
            ),
            &["category"],
        )?;
        let leader = IntGauge::new(
            "phoenix_operator_leader",
            "1 while this replica holds the lease and reconciles.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let scrapes = IntCounterVec::new(
            Opts::new(
                "phoenix_operator_node_scrapes_total",
                "Node observations by outcome (fresh, stale).",
            ),
            &["outcome"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "phoenix_operator_decisions_total",
                "Cleanup policy decisions by rule (stale, ineffective, emergency, degraded, rising, flat).",
            ),
            &["rule"],
        )?;
        let emergency_jobs = IntCounter::new(
            "phoenix_operator_emergency_jobs_total",
            "Emergency cleanup Jobs created (or adopted).",
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "phoenix_operator_status_writes_total",
                "Status updates by outcome (written; deferred: only jittering figures changed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(status_writes.clone()))?;
        for outcome in ["written", "deferred"] {
            status_writes.with_label_values(&[outcome]);
        }
        let membership_steps = IntCounterVec::new(
            Opts::new(
                "phoenix_operator_membership_steps_total",
                "Membership changes of replicated memories by outcome (done, failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(membership_steps.clone()))?;
        for outcome in ["done", "failed"] {
            membership_steps.with_label_values(&[outcome]);
        }
        let replication = GaugeVec::new(
            Opts::new(
                "phoenix_operator_replication_condition",
                "Replicated memories: 1 while a condition holds (QuorumLost, Diverged, \
                 Replicated), 0 otherwise.",
            ),
            &["namespace", "name", "condition"],
        )?;
        registry.register(Box::new(replication.clone()))?;
        registry.register(Box::new(scrapes.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(emergency_jobs.clone()))?;
        for outcome in ["fresh", "stale"] {
            scrapes.with_label_values(&[outcome]);
        }
        for rule in crate::policy::Rule::ALL {
            decisions.with_label_values(&[rule.as_str()]);
        }
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            reconciles,
            duration,
            errors,
            leader,
            scrapes,
            decisions,
            emergency_jobs,
            status_writes,
            membership_steps,
            replication,
            per_memory: std::sync::Arc::default(),
            health: std::sync::Arc::default(),
        })
    }

    /// Counts one node observation (`fresh` or `stale`).
    pub fn scraped(&self, outcome: &'static str) {
        self.scrapes.with_label_values(&[outcome]).inc();
    }

    /// Counts one decision by its rule.
    pub fn decided(&self, rule: crate::policy::Rule) {
        self.decisions.with_label_values(&[rule.as_str()]).inc();
    }

    /// Counts one emergency Job.
    pub fn emergency_job(&self) {
        self.emergency_jobs.inc();
    }

    /// Counts one status update by outcome (`written`, `deferred`).
    pub fn status_write(&self, outcome: &'static str) {
        self.status_writes.with_label_values(&[outcome]).inc();
    }

    /// Sets a replicated memory's `Replicated`, `QuorumLost` and `Diverged` (1 = True);
    /// a memory without them (one node) has no series.
    pub fn replication_conditions(&self, namespace: &str, name: &str, conditions: &[(&str, bool)]) {
        for condition in crate::crd::conditions::REPLICATION {
            match conditions.iter().find(|(c, _)| *c == condition) {
                Some((_, holds)) => self
                    .replication
                    .with_label_values(&[namespace, name, condition])
                    .set(if *holds { 1.0 } else { 0.0 }),
                None => {
                    let _ = self
                        .replication
                        .remove_label_values(&[namespace, name, condition]);
                }
            }
        }
    }

    /// Counts one membership step by outcome (`done`, `failed`).
    pub fn membership_step(&self, outcome: &'static str) {
        self.membership_steps.with_label_values(&[outcome]).inc();
    }

    fn per_memory(&self) -> std::sync::MutexGuard<'_, PerMemories> {
        self.per_memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes one memory's figures (its entry made on first use: its name is copied only
    /// then).
    fn with_memory(&self, namespace: &str, name: &str, change: impl FnOnce(&mut PerMemory)) {
        let mut all = self.per_memory();
        if let Some(memory) = all.get_mut(namespace).and_then(|names| names.get_mut(name)) {
            change(memory);
            return;
        }
        let mut memory = PerMemory::default();
        change(&mut memory);
        all.entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), memory);
    }

    /// Sets a memory's cadence.
    pub fn cadence(&self, namespace: &str, name: &str, seconds: f64) {
        self.with_memory(namespace, name, |m| m.cadence = Some(seconds));
    }

    /// Notes when a memory's nodes were observed (the figures its status and decision use).
    pub fn observed(&self, namespace: &str, name: &str, at: Instant) {
        self.with_memory(namespace, name, |m| m.observed_at = Some(at));
    }

    /// Drops a deleted memory's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.replication_conditions(namespace, name, &[]);
        let mut all = self.per_memory();
        if let Some(names) = all.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                all.remove(namespace);
            }
        }
    }

    /// Counts a child the API server refused for good (`errors_total{category="rejected"}`);
    /// that reconcile itself ends with the refusal written to status.
    pub fn child_rejected(&self) {
        self.errors.with_label_values(&["rejected"]).inc();
    }

    /// Records one reconcile; `error` is the error's category when it failed.
    pub fn reconciled(&self, seconds: f64, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.with_label_values(&[result]).inc();
        self.duration.with_label_values(&[result]).observe(seconds);
        if let Some(category) = error {
            self.errors.with_label_values(&[category]).inc();
        }
    }

    /// The text exposition: the registry's families, then each memory's series written
    /// straight from their figures (labels in name order, as the registry writes them).
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "failed to encode metrics");
        }
        let mut text = String::from_utf8(buffer).unwrap_or_default();
        let all = self.per_memory();
        let families: [(&str, &str, Figure); 2] = [
            (
                "phoenix_operator_cleanup_interval_seconds",
                CADENCE_HELP,
                |m| m.cadence,
            ),
            ("phoenix_operator_observation_age_seconds", AGE_HELP, |m| {
                m.observed_at.map(|at| at.elapsed().as_secs_f64())
            }),
        ];
        for (family, help, value) in families {
            let mut series = all.iter().flat_map(|(namespace, names)| {
                names
                    .iter()
                    .filter_map(move |(name, m)| Some((namespace, name, value(m)?)))
            });
            let Some(first) = series.next() else {
                continue;
            };
            let _ = writeln!(text, "# HELP {family} {help}");
            let _ = writeln!(text, "# TYPE {family} gauge");
            for (namespace, name, value) in std::iter::once(first).chain(series) {
                let _ = writeln!(
                    text,
                    "{family}{{name=\"{}\",namespace=\"{}\"}} {value}",
                    escape(name),
                    escape(namespace)
                );
            }
        }
        text
    }
}

/// A label value as the text format writes it (`\\`, `\"` and `\n` escaped).
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_memorys_series_are_written_from_its_figures_and_gone_when_it_is() {
        let metrics = Metrics::new().expect("metrics");
        assert!(
            !metrics
                .render()
                .contains("phoenix_operator_cleanup_interval_seconds")
        );
        metrics.cadence("ns", "b", 3600.0);
        metrics.cadence("ns", "a", 900.0);
        metrics.cadence("ns", "a", 300.0);
        metrics.observed("ns", "b", Instant::now());
        metrics.observed("o\"dd", "c\\d", Instant::now());
        let text = metrics.render();
        let lines: Vec<&str> = text.lines().collect();
        let at = |line: &str| lines.iter().position(|l| *l == line);
        let a = at(r#"phoenix_operator_cleanup_interval_seconds{name="a",namespace="ns"} 300"#);
        let b = at(r#"phoenix_operator_cleanup_interval_seconds{name="b",namespace="ns"} 3600"#);
        assert!(a.is_some() && a < b, "sorted, latest value: {text}");
        assert_eq!(
            text.matches("# TYPE phoenix_operator_cleanup_interval_seconds gauge")
                .count(),
            1
        );
        // Two observed memories; "a" never was: no age series for it.
        let ages: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("phoenix_operator_observation_age_seconds{"))
            .collect();
        assert_eq!(ages.len(), 2, "{ages:?}");
        assert!(
            ages[0].starts_with(
                r#"phoenix_operator_observation_age_seconds{name="b",namespace="ns"} "#
            )
        );
        assert!(ages[1].starts_with(
            r#"phoenix_operator_observation_age_seconds{name="c\\d",namespace="o\"dd"} "#
        ));
        let age: f64 = ages[0]
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!((0.0..60.0).contains(&age), "{age}");

        metrics.forget("ns", "a");
        metrics.forget("ns", "b");
        metrics.forget("o\"dd", "c\\d");
        let text = metrics.render();
        assert!(
            !text.contains("phoenix_operator_cleanup_interval_seconds"),
            "{text}"
        );
        assert!(
            !text.contains("phoenix_operator_observation_age_seconds"),
            "{text}"
        );
    }
}
