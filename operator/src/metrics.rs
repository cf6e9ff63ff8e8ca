//! The operator's Prometheus metrics (`phoenix_operator_` prefix). Labels come from fixed
//! sets: results, error categories.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            reconciles,
            duration,
            errors,
            leader,
        })
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
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "failed to encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
