//! The controller. [`reconcile::reconcile`] is a short driver over named steps, each in its
//! own module:
//!
//! validate ([`crate::validate`]) → apply the serving children ([`apply`], against
//! the [`caches`]) → observe the
//! nodes ([`nodes`]; a replicated memory's group and its membership: [`replication`]) →
//! decide ([`decision`], over the pure [`crate::policy`]) → plan the
//! schedule ([`crate::plan`]) → act (the CronJob, an emergency Job: [`apply`],
//! [`emergency`]) → status ([`status`], [`conditions`]) → Events ([`explain`], published
//! by [`events`]).
//!
//! Around it: [`context`] (what reconciles share, the error type, Event reasons),
//! [`state`] (what is kept per memory), [`caches`] (watch caches of the children), [`lease`]
//! (leader election), [`runner`] (the `Controller` and its watches), [`storage`] (growing
//! volumes in place).

pub mod apply;
pub mod caches;
pub mod conditions;
pub mod context;
pub mod decision;
pub mod emergency;
pub mod events;
pub mod explain;
pub mod lease;
pub mod nodes;
pub mod reconcile;
pub mod replication;
pub mod runner;
pub mod state;
pub mod status;
pub mod storage;

pub use context::{
    Context, Error, FIELD_MANAGER, LeaderElection, PeerAddresses, Settings, api, reasons,
};
pub use lease::run;
pub use reconcile::{REJECTED_RETRY, backoff, error_policy, reconcile};
