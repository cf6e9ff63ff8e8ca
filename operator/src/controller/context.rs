//! What every reconcile shares: the client, settings, metrics, the Event publisher, the
//! per-memory state; the error type; the fixed Event reasons.

use std::sync::Arc;
use std::time::Duration;

use kube::{Api, Client};

use super::caches::Caches;
use super::events;
use super::state::{Key, Memories};
use crate::metrics::Metrics;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "phoenix-operator";

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// A child could not be built.
    #[error("failed to build a child: {0}")]
    Build(#[from] serde_yaml::Error),
    /// The resource has no namespace (it is namespaced; the API server always sets one).
    #[error("the PhoenixMemory has no namespace")]
    NoNamespace,
    /// The StatefulSet is being replaced to grow its claims; applied again shortly.
    #[error("the StatefulSet {0} is being replaced to grow its volumes")]
    Resizing(String),
    /// A watch cache of the children stopped for good (the operator is shutting down).
    #[error("the watch caches of the children are gone")]
    CachesGone,
    /// The operating system's random generator failed (no token is made without it).
    #[error("the system's random generator failed: {0}")]
    Random(String),
    /// The API server refused a child for good (400, 403 or 422): retrying the same object
    /// cannot help. Shown as `Ready=False`, reason `ChildRejected`, and a Warning Event.
    #[error("the API server refused {child} ({code}): {message}")]
    Rejected {
        /// Kind and name of the child.
        child: String,
        /// The HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code >= 500 => "server",
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::NoNamespace => "invalid",
            Error::Rejected { .. } => "rejected",
            Error::Random(_) => "random",
            Error::Resizing(_) => "resizing",
            Error::CachesGone => "caches",
        }
    }
}

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node image when a spec names none.
    pub default_image: String,
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Time between resyncs of a converged resource.
    pub resync: Duration,
    /// Leader election; `None` runs without (one replica only).
    pub leader_election: Option<LeaderElection>,
    /// Time between observations of a memory's nodes (a reconcile also observes).
    pub observe_interval: Duration,
    /// Timeout of one node scrape.
    pub scrape_timeout: Duration,
    /// When a node's report is fresh enough to decide on.
    pub freshness: crate::observe::Freshness,
    /// How a replicated memory's nodes address each other.
    pub peer_addresses: PeerAddresses,
}

/// How the members of a Raft group reach each other (the address given when a node joins).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerAddresses {
    /// `http://NAME-i.NAME-nodes.NAMESPACE.svc:PORT`: stable across restarts (a cluster).
    #[default]
    ServiceDns,
    /// The pod's IP: for a cluster without DNS (the in-process sandbox, whose stand-in
    /// kubelet keeps each pod's address across restarts).
    PodIp,
}

/// Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
/// only one reconciles.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Seconds a lock stays valid after its last renewal.
    pub lease_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_margin_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_image: concat!("phoenix-memory:", env!("CARGO_PKG_VERSION")).into(),
            namespace: None,
            concurrency: 8,
            resync: Duration::from_secs(300),
            leader_election: None,
            observe_interval: Duration::from_secs(30),
            scrape_timeout: Duration::from_secs(5),
            freshness: crate::observe::Freshness::default(),
            peer_addresses: PeerAddresses::ServiceDns,
        }
    }
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    /// The client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events on the PhoenixMemory.
    pub events: events::Publisher,
    /// Scrapes the nodes.
    pub http: reqwest::Client,
    /// What is kept per memory between reconciles.
    pub memories: Arc<Memories>,
    /// Watch caches of the children.
    pub caches: Caches,
}

impl Context {
    /// Forgets everything kept for a memory that is gone: its state, its metric series.
    pub fn forget(&self, memory: &Key) {
        self.metrics.forget(
            memory.namespace.as_deref().unwrap_or_default(),
            &memory.name,
        );
        self.memories.forget(memory);
    }
}

/// Event reasons (a fixed set).
pub mod reasons {
    /// Children were created or changed.
    pub const APPLIED: &str = "Applied";
    /// The spec has a problem the schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The cleanup schedule changed.
    pub const PLAN_CHANGED: &str = "PlanChanged";
    /// An emergency cleanup Job was created.
    pub const EMERGENCY_CLEANUP: &str = "EmergencyCleanup";
    /// A node crossed the degradation threshold.
    pub const DEGRADED: &str = "Degraded";
    /// The nodes are back below the recover threshold.
    pub const RECOVERED: &str = "Recovered";
    /// Some nodes' metrics are missing or too old.
    pub const METRICS_STALE: &str = "MetricsStale";
    /// A node found corruption in its data.
    pub const NODE_CORRUPTED: &str = "NodeCorrupted";
    /// The API server refused a child for good.
    pub const CHILD_REJECTED: &str = "ChildRejected";
    /// Cleanups stopped helping; automatic cleanup backed off.
    pub const CLEANUP_INEFFECTIVE: &str = "CleanupIneffective";
    /// The operator changed a replicated memory's group (initialized it, added, promoted or
    /// removed a member, moved leadership).
    pub const MEMBERSHIP: &str = "Membership";
    /// A membership change is due but refused or waiting.
    pub const MEMBERSHIP_BLOCKED: &str = "MembershipBlocked";
    /// Fewer than a majority of a group's voters answer.
    pub const QUORUM_LOST: &str = "QuorumLost";
    /// Two nodes report different roots at the same applied index.
    pub const DIVERGED: &str = "Diverged";
    /// An even replica count: no more fault tolerance than one node fewer.
    pub const EVEN_REPLICAS: &str = "EvenReplicas";
    /// The operator raised the nodes' cache within `node.autoCache.max`.
    pub const CACHE_RAISED: &str = "CacheRaised";
    /// A hot set beyond the cache slows the nodes; more cache is recommended.
    pub const CACHE_RECOMMENDED: &str = "CacheRecommended";
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An `Api` over `namespace`, or every namespace.
pub fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
