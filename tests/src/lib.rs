//! Cross-crate scenarios for Phoenix Memory.
//!
//! - [`apiserver`]: an in-process Kubernetes API server that the real kube client and
//!   kube-runtime work against, for the operator's tests and the no-cluster sandbox.
//! - [`sandbox`]: that server, the operator's controller and real `phoenix-node`
//!   processes as pods — the observe → schedule scenarios and `phoenix-sandbox`.
//!
//! The node's own end-to-end tests live in `node/tests/`, where Cargo hands them the
//! `phoenix-node` binary.

pub mod apiserver;
pub mod sandbox;
