//! Phoenix Memory operator.
//!
//! - [`crd`]: the `PhoenixMemory` custom resource.
//! - [`validate`]: the pure check of a spec (what CEL and the schema cannot fully check).
//! - [`build`]: pure builders of every child.
//! - [`controller`]: reconcile by server-side apply, status, leader election.
//! - [`metrics`], [`http`]: the operator's metrics and its `/metrics`, `/healthz`, `/readyz`.
//! - [`rbac`]: the API calls the operator makes, as the RBAC rules the chart grants.
//! - [`observe`]: scrape the nodes' metrics into observations (stale, never zero).
//! - [`schedule`]: the pure cleanup policy (observations → cadence, emergency, decision).
//!
//! The controller (reconcile by server-side apply, status, leader election) and the
//! observe → schedule policy join with their issues.

pub mod build;
pub mod controller;
pub mod crd;
pub mod health;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod rbac;
pub mod schedule;
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
