//! Phoenix Memory operator.
//!
//! The operator crate is filled by the operator-core issue (CRD types, children builders,
//! reconcile) and the observe → schedule issue. Until then it only carries the version
//! shared with the node so the workspace layout of the design is in place.

/// The operator's version, kept in step with the node crate and the chart.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
