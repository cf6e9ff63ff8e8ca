//! The contract between a Phoenix memory node and those who run and call it (the operator,
//! the cleanup job, other nodes): the node's configuration file, quantities, metric names
//! and their parser, the HTTP API's bodies, and a client.
//!
//! - [`config`]: `node.yaml` — what the operator writes and the node reads.
//! - [`metrics`]: metric names and [`metrics::Scrape`], the one exposition parser.
//! - [`wire`]: the API's request and answer bodies.
//! - [`proof`]: Merkle inclusion proofs and [`proof::verify_proof`].
//! - [`client`]: [`client::NodeClient`], an async client of one node, and
//!   [`client::MemoryClient`], a client of a memory's nodes that follows the retry rule.

pub mod client;
pub mod config;
pub mod metrics;
pub mod proof;
pub mod wire;

pub use client::{ClientError, Consistency, MemoryClient, NodeClient};
