//! The operator's Prometheus metrics (`phoenix_operator_` prefix). Labels come from fixed
//! sets: results, error categories.

use std::collections::HashMap;
use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

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
    cadence: GaugeVec,
    status_writes: IntCounterVec,
    membership_steps: IntCounterVec,
    replication: GaugeVec,
    observation_age: GaugeVec,
    /// When each memory's nodes were last observed (the age is worked out at scrape time).
    observed_at: std::sync::Arc<std::sync::Mutex<HashMap<(String, String), Instant>>>,
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
        let cadence = GaugeVec::new(
            Opts::new(
                "phoenix_operator_cleanup_interval_seconds",
                "The cleanup cadence decided for each memory.",
            ),
            &["namespace", "name"],
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
        let observation_age = GaugeVec::new(
            Opts::new(
                "phoenix_operator_observation_age_seconds",
                "Age of the node observations behind each memory's status and decisions, \
                 at scrape time (status is not rewritten to show it).",
            ),
            &["namespace", "name"],
        )?;
        registry.register(Box::new(observation_age.clone()))?;
        registry.register(Box::new(cadence.clone()))?;
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
            cadence,
            status_writes,
            membership_steps,
            replication,
            observation_age,
            observed_at: std::sync::Arc::default(),
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

    /// Sets a memory's cadence.
    pub fn cadence(&self, namespace: &str, name: &str, seconds: f64) {
        self.cadence
            .with_label_values(&[namespace, name])
            .set(seconds);
    }

    /// Notes when a memory's nodes were observed (the figures its status and decision use).
    pub fn observed(&self, namespace: &str, name: &str, at: Instant) {
        self.observed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((namespace.to_string(), name.to_string()), at);
    }

    /// Drops a deleted memory's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        // Absent when the memory never got a plan: nothing to drop.
        let _ = self.cadence.remove_label_values(&[namespace, name]);
        let _ = self.observation_age.remove_label_values(&[namespace, name]);
        self.replication_conditions(namespace, name, &[]);
        self.observed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(namespace.to_string(), name.to_string()));
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

    /// The text exposition.
    pub fn render(&self) -> String {
        for ((namespace, name), at) in self
            .observed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            self.observation_age
                .with_label_values(&[namespace.as_str(), name.as_str()])
                .set(at.elapsed().as_secs_f64());
        }
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "failed to encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
