//! The `PhoenixMemory` custom resource (`phoenix.dev/v1alpha1`, short name `pmem`). Every
//! field's doc comment becomes its `kubectl explain` text.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A memory: a StatefulSet of memory nodes whose cleanup the operator schedules from the
/// retrieve-latency degradation it observes.
// Each `printcolumn(...)` repeats the same keys; clippy reads that as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "phoenix.dev",
    version = "v1alpha1",
    kind = "PhoenixMemory",
    plural = "phoenixmemories",
    shortname = "pmem",
    namespaced,
    status = "PhoenixMemoryStatus",
    doc = "A memory: a StatefulSet of memory nodes whose cleanup is scheduled from observed retrieve-latency degradation.",
    validation = Rule::new("size(self.metadata.name) <= 44").message("the name must be at most 44 characters: the cleanup CronJob NAME-cleanup must fit in 52"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.replication.leader"
    ),
    printcolumn(
        name = "Worst Ratio",
        type_ = "number",
        json_path = ".status.worstRatio"
    ),
    printcolumn(
        name = "Served",
        type_ = "string",
        json_path = ".status.servedLatency"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".status.plan.schedule"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = known_formats_only)]
pub struct PhoenixMemorySpec {
    /// Number of memory nodes (pods of the StatefulSet). `kubectl scale` changes it.
    #[schemars(range(min = 0, max = 100))]
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Container image of the nodes; defaults to the operator's `--default-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each node container. When unset, memory is
    /// derived from `node.cacheCapacity`: request `cacheCapacity + 128Mi`, limit
    /// `2 × cacheCapacity + 512Mi` (measured peaks: the cache, up to ~280 MiB of pages sled
    /// counts late, 64 MiB of request bodies, ~150 bytes per key for the Merkle tree), and
    /// 100m CPU requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent storage of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Configuration of each node's store.
    #[serde(default)]
    pub node: NodeSpec,
    /// How cleanup is scheduled from the observed degradation.
    #[serde(default)]
    pub cleanup: CleanupSpec,
}

fn default_replicas() -> i32 {
    1
}

/// Persistent storage of each node.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's PersistentVolumeClaim, a Kubernetes quantity (e.g. `10Gi`). It
    /// can grow on an existing memory (the claims are expanded in place when their
    /// StorageClass allows it); it cannot shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the claims; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep the claims (and the data) when the PhoenixMemory is deleted or scaled down.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            retain_on_delete: true,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".into()
}

fn default_true() -> bool {
    true
}

/// When writes become durable: the node's own type (`phoenix-node-api`).
pub use phoenix_node_api::config::DurabilityMode;

/// Configuration of each node's store.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// sled's page cache per node, a quantity (e.g. `256Mi`). It counts serialised page
    /// bytes: the pod's memory use exceeds it (sled counts recently read pages late, up to
    /// ~280 MiB; the Merkle tree adds ~150 bytes per key), so a memory limit must be well
    /// above it (see `resources`). A hot set larger than this is what slows retrieves.
    #[serde(default = "default_cache")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub cache_capacity: String,
    /// `Periodic` (default) or `Sync`.
    #[serde(default = "default_durability")]
    pub durability: DurabilityMode,
    /// Flush interval of `Periodic` durability, milliseconds.
    #[serde(default = "default_flush_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub flush_every_ms: u64,
    /// Time-to-live of memories stored without one, seconds; 0 means they never expire.
    #[serde(default)]
    #[schemars(range(max = 3153600000u64))]
    pub default_ttl_seconds: u64,
    /// Opt-in cache right-sizing. When the operator finds that a hot set beyond
    /// `cacheCapacity` is what slows the nodes, it raises the cache (and the memory request
    /// and limit with it) up to `max`, in a rolling restart one node at a time, and records
    /// the raise in `status.cache` with a `CacheRaised` Event. Without it, it only
    /// recommends a size (in the decision's reason and a `CacheRecommended` Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cache: Option<AutoCache>,
}

/// Bounds of the opt-in cache right-sizing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoCache {
    /// The largest cache per node the operator may set, a quantity (e.g. `2Gi`); at least
    /// `cacheCapacity`.
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max: String,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            cache_capacity: default_cache(),
            durability: default_durability(),
            flush_every_ms: default_flush_ms(),
            default_ttl_seconds: 0,
            auto_cache: None,
        }
    }
}

/// Which latency the cleanup policy decides on.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LatencySignal {
    /// The retrieve latency each node served to clients (p50 against its own settled
    /// baseline); a node with too little traffic for a figure is judged by its probe, and
    /// the decision says so.
    #[default]
    Served,
    /// The engine probe alone (the node times retrieves of its own keys on a fixed cadence).
    Probe,
}

fn default_cache() -> String {
    "256Mi".into()
}

fn default_durability() -> DurabilityMode {
    DurabilityMode::Periodic
}

fn default_flush_ms() -> u64 {
    500
}

/// Whether cleanup acts or only records its decisions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CleanupMode {
    /// Schedule the CronJob and run emergency Jobs.
    Enforce,
    /// Decide and record in status and Events; create no Jobs.
    DryRun,
}

/// Days of the week for maintenance windows.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

/// A maintenance window: scheduled cleanups run only inside one (emergencies may not wait).
/// It opens on each of its days at `startHour` and stays open through `endHour`; one that
/// ends before it starts runs past midnight into the next day. The schedule uses the
/// largest set of days × hours inside the windows whose runs keep the decided cadence (when
/// none can, the one whose runs are closest together, and `CleanupScheduled` says so).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days the window opens; every day when empty.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// First hour of the window (0–23), in `timeZone`.
    #[schemars(range(min = 0, max = 23))]
    pub start_hour: u8,
    /// Last hour of the window (0–23, inclusive), in `timeZone`.
    #[schemars(range(min = 0, max = 23))]
    pub end_hour: u8,
}

/// How cleanup is scheduled. The cross-field rules are CEL (`x-kubernetes-validations`), so
/// the API server refuses a bad combination at admission.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.emergencyThreshold > self.degradationThreshold").message("emergencyThreshold must be greater than degradationThreshold"))]
#[x_kube(validation = Rule::new("self.degradationThreshold > self.recoverThreshold").message("degradationThreshold must be greater than recoverThreshold"))]
#[x_kube(validation = Rule::new("duration(self.minInterval) <= duration(self.maxInterval)").message("minInterval must not exceed maxInterval"))]
#[x_kube(validation = Rule::new("duration(self.maxInterval) <= duration('168h')").message("maxInterval must not exceed 168h: a cron schedule repeats evenly at most weekly"))]
#[x_kube(validation = Rule::new("duration(self.minInterval) >= duration('1m')").message("minInterval must be at least 1m (the CronJob's resolution)"))]
pub struct CleanupSpec {
    /// Schedule cleanups at all; `false` suspends the CronJob.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `Enforce` (default) or `DryRun`.
    #[serde(default = "default_mode")]
    pub mode: CleanupMode,
    /// Ratio of recent to baseline retrieve latency at which a node counts as degraded.
    #[serde(default = "default_degradation")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub degradation_threshold: f64,
    /// Ratio below which a degraded node counts as recovered (hysteresis).
    #[serde(default = "default_recover")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub recover_threshold: f64,
    /// Ratio above which a cleanup runs at once, as a one-off Job.
    #[serde(default = "default_emergency")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub emergency_threshold: f64,
    /// Shortest time between cleanups, a duration (`15m`, `1h30m`; units s, m, h).
    #[serde(default = "default_min_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub min_interval: String,
    /// Longest time between cleanups, a duration; the cadence while latency is flat. At
    /// most `168h` (a cron schedule repeats evenly at most weekly).
    #[serde(default = "default_max_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub max_interval: String,
    /// Maintenance windows for scheduled cleanups; any time when empty.
    #[serde(default)]
    pub windows: Vec<MaintenanceWindow>,
    /// IANA time zone of the windows and the CronJob (`Etc/UTC` by default).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Suspend the CronJob without disabling decisions.
    #[serde(default)]
    pub suspend: bool,
    /// A fixed cron schedule that overrides the computed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Which latency decides: `Served` (default; the probe for a node with too little
    /// traffic) or `Probe`.
    #[serde(default)]
    pub signal: LatencySignal,
    /// An absolute floor on the served p99 retrieve latency, a duration (`1ms`, `500us`,
    /// `0.5ms`): while every node serves under it, nothing is `Degraded`, tightened or
    /// cleaned at once, whatever the ratios. Unset: no floor. A node with too little traffic
    /// for a served figure is not under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(us|ms|s)$"))]
    pub latency_floor: Option<String>,
}

impl Default for CleanupSpec {
    fn default() -> Self {
        CleanupSpec {
            enabled: true,
            mode: default_mode(),
            degradation_threshold: default_degradation(),
            recover_threshold: default_recover(),
            emergency_threshold: default_emergency(),
            min_interval: default_min_interval(),
            max_interval: default_max_interval(),
            windows: Vec::new(),
            time_zone: default_time_zone(),
            suspend: false,
            schedule: None,
            signal: LatencySignal::Served,
            latency_floor: None,
        }
    }
}

fn default_mode() -> CleanupMode {
    CleanupMode::Enforce
}
fn default_degradation() -> f64 {
    2.0
}
fn default_recover() -> f64 {
    1.5
}
fn default_emergency() -> f64 {
    8.0
}
fn default_min_interval() -> String {
    "15m".into()
}
fn default_max_interval() -> String {
    "24h".into()
}
/// Formats Kubernetes' OpenAPI validation knows; schemars also emits `uint8`, `uint32`,
/// `uint64`, which `kubectl apply` of the CRD warns about ("unrecognized format").
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "duration",
    "password",
    "uuid",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uri",
];

/// Drops every `format` Kubernetes does not know from a schema, at any depth (the bounds
/// schemars sets for unsigned integers, `minimum: 0`, stay).
fn known_formats_only(schema: &mut schemars::Schema) {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let unknown = map
                    .get("format")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|f| !KNOWN_FORMATS.contains(&f));
                if unknown {
                    map.remove("format");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(object) = schema.as_object_mut() {
        object.values_mut().for_each(walk);
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_time_zone() -> String {
    "Etc/UTC".into()
}

/// What the operator observed and decided.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = known_formats_only)]
pub struct PhoenixMemoryStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Nodes that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the nodes (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The worst node's latency ratio, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_ratio: Option<f64>,
    /// `Ready`, `Progressing`, `Degraded`, `CleanupScheduled`, `MetricsStale`,
    /// `CleanupIneffective`; replicated memories also `Replicated`, `QuorumLost`, `Diverged`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-node observations from the nodes' metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeObservation>,
    /// When the figures in `nodes` and `worstRatio` were observed (a scrape is
    /// reused by reconciles within the observe interval). Figures that only jitter (less
    /// than 10%) are not rewritten; a ratio, baseline or size that moves by 10% or more, and
    /// everything a decision depends on, are written at once. How old the observations are
    /// is the operator's metric `phoenix_operator_observation_age_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// The cleanup plan in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<CleanupPlan>,
    /// The last scheduling decision that changed something, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Decision>,
    /// The last emergency cleanup Job the operator created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_emergency_job: Option<EmergencyJob>,
    /// The Raft group of a replicated memory (two nodes or more): who leads, who votes,
    /// and how far each node has applied the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    /// The worst node's served latency, e.g. `p99 0.39 ms, 1.38×` (the `Served` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_latency: Option<String>,
    /// The cache the operator set with `node.autoCache` (absent until it raised one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
}

/// A cache the operator raised within `node.autoCache.max`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    /// The cache each node runs with, a quantity (`cacheCapacity` until raised).
    pub capacity: String,
    /// When it was last raised.
    pub raised_at: Time,
    /// Why.
    pub reason: String,
}

/// A replicated memory's group, as its nodes report it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// Whether the group has been initialized (by the operator, through node 0, once).
    #[serde(default)]
    pub initialized: bool,
    /// The leader's pod; absent while there is none (an election, or no quorum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's term.
    #[serde(default)]
    pub term: u64,
    /// Pods that vote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<String>,
    /// Pods that receive the log without voting (joining, not yet caught up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<String>,
    /// The leader's applied index (everything it applied is committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<u64>,
    /// Each node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ReplicaStatus>,
}

/// One node of a replicated memory.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pod name.
    pub name: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `unknown` when it does not answer.
    pub role: String,
    /// The log index it has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// Entries behind the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Its Merkle root at `appliedIndex` (nodes at the same index have the same root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// It found corruption in its data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub corrupted: bool,
    /// Why it could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// An emergency cleanup Job.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmergencyJob {
    /// The Job's name.
    pub name: String,
    /// When it was created.
    pub time: Time,
}

/// What one node reported at the last scrape.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeObservation {
    /// Pod name.
    pub name: String,
    /// Recent over baseline retrieve latency; absent when the node has no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Recent median retrieve latency, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_seconds: Option<f64>,
    /// Baseline median retrieve latency, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_seconds: Option<f64>,
    /// Retrieves in the probe's window.
    #[serde(default)]
    pub samples: u64,
    /// Memories stored.
    #[serde(default)]
    pub keys: u64,
    /// Sum of key and value lengths.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Bytes on disk.
    #[serde(default)]
    pub disk_bytes: u64,
    /// The cache the node runs with, bytes (shows when a raised cache has rolled out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_capacity_bytes: u64,
    /// When the node's last cleanup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cleanup: Option<Time>,
    /// The ratio before and after that cleanup, e.g. `6.1→1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cleanup_effect: Option<String>,
    /// Cleanups in a row that did not lower this node's ratio.
    #[serde(default)]
    pub ineffective_cleanups: u32,
    /// Why the observation is not usable, when it is not (unreachable, too few samples, too old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// The node found corruption in its data (by its background scrub or a read): it is
    /// unready, serves only what it can still read, and needs repair (restore its volume;
    /// with replication, from a peer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub corrupted: bool,
    /// Recent served p50 over the node's served baseline; absent without enough traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_ratio: Option<f64>,
    /// Recent served p50 retrieve latency, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_p50_seconds: Option<f64>,
    /// Recent served p99 retrieve latency, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_p99_seconds: Option<f64>,
    /// Which ratio the policy judged this node by: `served`, or `probe` (the spec asks for
    /// it, or the node had too little traffic for a served figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// A scheduling decision: inputs, rule, outcome, reason.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// When it was taken.
    pub time: Time,
    /// The rule that decided (e.g. `flat`, `rising`, `emergency`, `stale`, `ineffective`).
    pub rule: String,
    /// What it decided (e.g. `keep`, `tighten`, `relax`, `emergency-job`, `none`).
    pub outcome: String,
    /// A sentence a person can read.
    pub reason: String,
    /// The worst node ratio it decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_ratio: Option<f64>,
    /// Age of the oldest observation used, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_age_seconds: Option<f64>,
    /// The cadence decided, seconds.
    #[serde(default)]
    pub interval_seconds: u64,
    /// Nodes with a usable observation.
    #[serde(default)]
    pub fresh_nodes: u32,
    /// Nodes without one.
    #[serde(default)]
    pub stale_nodes: u32,
    /// The cause named for the worst node (`cache-pressure`, `disk-bloat`,
    /// `expired-memories`, `unknown`), when it was degraded, rising or past the emergency line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// The cleanup plan in force.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupPlan {
    /// The CronJob's schedule.
    pub schedule: String,
    /// The schedule's time zone.
    #[serde(default)]
    pub time_zone: String,
    /// The cadence the policy decided, seconds.
    pub interval_seconds: u64,
    /// Longest time between two runs of `schedule`, seconds, as its runs fall:
    /// `intervalSeconds` rounded to a step cron repeats evenly (a divisor of an hour or a
    /// day, 2 or 3 days, a week), never below `minInterval`, and longer when the
    /// maintenance windows allow no schedule that keeps it (the `CleanupScheduled`
    /// condition says so). Absent with a fixed `spec.cleanup.schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_every_seconds: Option<u64>,
    /// When the worst node is predicted to cross `degradationThreshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_breach: Option<Time>,
    /// Why this plan.
    #[serde(default)]
    pub reason: String,
}

/// The condition types the operator sets.
pub mod conditions {
    /// The memory serves: the spec is valid, every child is applied and every node is
    /// ready (`kubectl wait --for=condition=Ready` returns when it can take traffic).
    pub const READY: &str = "Ready";
    /// A rollout, scale or resize of the nodes is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// At least one node's ratio is above the degradation threshold.
    pub const DEGRADED: &str = "Degraded";
    /// A cleanup schedule is in force.
    pub const CLEANUP_SCHEDULED: &str = "CleanupScheduled";
    /// Some nodes' metrics are missing or too old to decide on.
    pub const METRICS_STALE: &str = "MetricsStale";
    /// Recent cleanups did not lower the ratio.
    pub const CLEANUP_INEFFECTIVE: &str = "CleanupIneffective";
    /// Replicated memories: every voter answers and is within the lag bound of the leader.
    pub const REPLICATED: &str = "Replicated";
    /// Replicated memories: fewer than a majority of the voters answer; writes are refused.
    pub const QUORUM_LOST: &str = "QuorumLost";
    /// Replicated memories: two nodes report different roots at the same applied index
    /// (which must never happen).
    pub const DIVERGED: &str = "Diverged";
    /// The conditions only a replicated memory has (dropped when it is one node again).
    pub const REPLICATION: [&str; 3] = [REPLICATED, QUORUM_LOST, DIVERGED];
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: PhoenixMemorySpec =
            serde_json::from_value(serde_json::json!({})).expect("parses");
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.storage.size, "1Gi");
        assert!(spec.storage.retain_on_delete);
        assert_eq!(spec.node.cache_capacity, "256Mi");
        assert_eq!(spec.cleanup.degradation_threshold, 2.0);
        assert_eq!(spec.cleanup.emergency_threshold, 8.0);
        assert_eq!(spec.cleanup.mode, CleanupMode::Enforce);
    }

    /// `kubectl apply` of the CRD warned `unrecognized format "uint64"` (and uint8, uint32).
    #[test]
    fn the_crd_uses_only_formats_kubernetes_knows() {
        fn formats(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(format) = map.get("format").and_then(serde_json::Value::as_str) {
                        out.push(format.to_string());
                    }
                    map.values().for_each(|v| formats(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let crd = serde_json::to_value(PhoenixMemory::crd()).expect("serialises");
        let mut found = Vec::new();
        formats(&crd, &mut found);
        assert!(!found.is_empty(), "the walk sees formats");
        let unknown: Vec<_> = found
            .iter()
            .filter(|f| !KNOWN_FORMATS.contains(&f.as_str()))
            .collect();
        assert!(unknown.is_empty(), "unknown formats: {unknown:?}");
    }

    #[test]
    fn the_crd_has_subresources_printer_columns_and_a_short_name() {
        let crd = serde_json::to_value(PhoenixMemory::crd()).expect("serialises");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "pmem");
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(
            version["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Replicas",
                "Ready",
                "Leader",
                "Worst Ratio",
                "Served",
                "Schedule",
                "Age"
            ]
        );
        let replicas =
            &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"], 0.0);
        assert!(
            replicas["description"]
                .as_str()
                .is_some_and(|d| d.contains("kubectl scale"))
        );
    }
}
