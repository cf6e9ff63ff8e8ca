//! Cross-crate scenarios for Phoenix Memory.
//!
//! The in-process Kubernetes API server, the operator scenarios and the
//! `phoenix-sandbox` program join this crate with their issues. The node's own end-to-end
//! tests live in `node/tests/`, where Cargo hands them the `phoenix-node` binary.

/// The node crate's version; the operator and chart are kept in step with it.
pub fn node_version() -> &'static str {
    phoenix_node::VERSION
}
