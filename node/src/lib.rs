//! Phoenix memory node: an embedded sled store under a Merkle integrity root, a latency
//! probe that measures retrieves against the node's own baseline, and cleanup.
//!
//! Modules:
//! - [`store`]: the only module that touches sled; typed API and [`store::StoreError`].
//! - [`merkle`]: the order-independent integrity trie and pure proof verification.
//! - [`probe`]: the retrieve-latency probe and its persisted baseline.
//! - [`served`]: the latency of the retrieves clients were served, against its own baseline.
//! - [`cleanup`]: prune, rebuild, flush, re-measure.
//! - [`cleanup_job`]: `phoenix-node cleanup`, the CronJob's program.
//! - `bench`: the `phoenix-node bench` scenarios (feature `bench`, on by default; the
//!   image can leave it out).
//! - [`config`]: the node's configuration file, flags and validation.
//! - [`replication`]: the Raft group of a memory's nodes (log, state machine, RPCs).
//! - [`service`]: the HTTP API (`app()` and `serve()`), metrics, health, shutdown.

#[cfg(feature = "bench")]
pub mod bench;
pub mod cleanup;
pub mod cleanup_job;
pub mod config;
pub mod fault;
pub mod merkle;
pub mod probe;
pub mod replication;
pub mod served;
pub mod service;
pub mod stages;
pub mod store;

/// The node's version, kept in step with the operator and the chart.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
