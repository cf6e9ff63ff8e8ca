//! Cross-crate scenarios, one test binary: each module links the operator, the node and the
//! in-process API server, so one binary instead of seven saves six links of the whole
//! dependency graph (time and disk on CI). `cargo nextest run -p phoenix-tests -E
//! 'test(/^degradation::/)'` runs one module's tests.

mod apiserver_conformance;
mod cache;
mod crd_install;
mod degradation;
mod events;
mod msrv;
mod observe;
mod operator;
mod real_cluster;
mod replication;
mod support;
