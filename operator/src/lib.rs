//! Phoenix Memory operator.
//!
//! - [`crd`]: the `PhoenixMemory` custom resource.
//! - [`validate`]: the pure check of a spec (what CEL and the schema cannot fully check).
//! - [`children`]: pure builders of every child object.
//! - [`observe`]: a node's metrics → an observation (stale, never zero).
//! - [`policy`]: the pure cleanup policy (observations → cadence, emergency, reason).
//! - [`plan`]: the pure step from a cadence to the CronJob's schedule; [`cron`] its
//!   calendar maths.
//! - [`controller`]: the reconcile driver and its steps, status, Events, leader election.
//! - [`metrics`], [`http`], [`health`]: the operator's metrics and its `/metrics`,
//!   `/healthz`, `/readyz`.
//! - [`rbac`]: the API calls the operator makes, as the RBAC rules the chart grants.
//! - [`throttle`]: client-side rate limiting of those calls (QPS and burst).
//!
//! The node's side of the contract (its config file, metric names, API bodies, client) is
//! the `phoenix-node-api` crate.

pub mod children;
pub mod controller;
pub mod crd;
pub mod cron;
pub mod health;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod rbac;
pub mod throttle;
pub mod validate;

/// The operator's version, kept in step with the node crate and the chart.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The CRD as YAML, exactly what `phoenix-operator crd` prints and `crds/` holds.
///
/// # Errors
/// Only if serialisation fails (a programming error).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&crd::PhoenixMemory::crd())
}
