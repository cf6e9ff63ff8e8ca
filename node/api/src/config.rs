//! The node's configuration file: what the operator's ConfigMap holds and the node reads at
//! start (flags and environment override it there), validated with one clear message per
//! bad field.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// One or more fields have invalid values.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// When writes become durable. One type for the CRD's `spec.node.durability` (`Periodic`,
/// `Sync`) and the node file's `durability.mode` (written `periodic`, `sync`; either
/// spelling is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DurabilityMode {
    /// Flushed every `flushEveryMs`; a crash may lose the last interval's writes.
    #[serde(alias = "periodic")]
    Periodic,
    /// Durable before acknowledged, concurrent writers sharing flushes (group commit).
    #[serde(alias = "sync")]
    Sync,
}

/// Durability settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// `periodic` or `sync`.
    #[serde(serialize_with = "mode_in_file")]
    pub mode: DurabilityMode,
    /// Flush interval for `periodic`, milliseconds.
    pub flush_every_ms: u64,
    /// A flush that has not returned (or, periodic, no flush succeeding) for this long
    /// refuses writes and fails `/healthz`, milliseconds.
    pub stall_timeout_ms: u64,
}

/// The file's spelling of a mode (unchanged since the file format began, so that a new
/// operator writes the same `node.yaml` and restarts no node).
fn mode_in_file<S: serde::Serializer>(mode: &DurabilityMode, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(match mode {
        DurabilityMode::Periodic => "periodic",
        DurabilityMode::Sync => "sync",
    })
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            mode: DurabilityMode::Periodic,
            flush_every_ms: 500,
            stall_timeout_ms: 10_000,
        }
    }
}

/// The data volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DiskSettings {
    /// Free space to keep on the data volume: writes get 507 below it (plus about 100
    /// bytes per key for the tree checkpoint). 0 turns the guard off (not recommended: a
    /// full volume then fails a flush, and the node refuses writes until restarted).
    pub min_free_bytes: Quantity,
}

impl Default for DiskSettings {
    fn default() -> Self {
        DiskSettings {
            min_free_bytes: Quantity(64 << 20),
        }
    }
}

/// The background scrub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ScrubSettings {
    /// Records checked per second (0: no scrub).
    pub keys_per_second: u64,
    /// Time from the start of one full pass to the start of the next, seconds.
    pub period_seconds: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            keys_per_second: 2000,
            period_seconds: 3600,
        }
    }
}

/// One member of a memory's Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// Raft node id (the StatefulSet ordinal on Kubernetes).
    pub id: u64,
    /// Base URL of the peer's HTTP API, e.g. `http://mem-1.mem-nodes.ns.svc:8080`.
    pub url: String,
}

/// Replication: the nodes of one memory form one Raft group. Absent: a single node that
/// serves alone, as before replication existed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// This node's Raft id. Absent: the ordinal at the end of the `POD_NAME` environment
    /// variable (`NAME-3` → 3; a StatefulSet pod's name, given by the downward API), so one
    /// ConfigMap serves every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Every member the group may have, this node included (id and URL).
    pub peers: Vec<PeerConfig>,
    /// The peer address: Raft RPCs (and requests forwarded to this node as leader) are
    /// served here and no longer on `listen`, so a NetworkPolicy can keep every client off
    /// the Raft paths. Absent: `listen` serves them too. The peers' URLs name this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// File holding the peer token: Raft RPCs without it are refused. Distinct from the
    /// admin token.
    pub peer_token_file: PathBuf,
    /// Election timeout, milliseconds (a follower waits between this and 1.5× this before
    /// it stands for election; a follower refuses to vote for 1.5× this after it last heard
    /// from its leader, so a failover takes about 2–3× this).
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval, milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a write waits for a leader (during an election) before 503 + Retry-After.
    #[serde(default = "default_write_wait_ms")]
    pub write_wait_ms: u64,
    /// Log entries applied since the last snapshot before a new one is taken (and the log
    /// up to it compacted).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_entries: u64,
    /// Initialize the group with every peer as a voter on start if it has no membership
    /// yet (only the lowest id does it; initializing twice is harmless). Off: the group
    /// waits for `POST /v1/admin/raft/init`.
    #[serde(default)]
    pub bootstrap: bool,
}

impl ReplicationConfig {
    /// Replication among `peers` with the peer token in `peer_token_file`, the id from
    /// `$POD_NAME`, the group initialized by `POST /v1/admin/raft/init` (no `bootstrap`),
    /// and the default timings.
    pub fn new(peers: Vec<PeerConfig>, peer_token_file: PathBuf) -> ReplicationConfig {
        ReplicationConfig {
            id: None,
            peers,
            listen: None,
            peer_token_file,
            election_timeout_ms: default_election_timeout_ms(),
            heartbeat_ms: default_heartbeat_ms(),
            write_wait_ms: default_write_wait_ms(),
            snapshot_every_entries: default_snapshot_every(),
            bootstrap: false,
        }
    }
}

/// The environment variable a node without `replication.id` takes its id from.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// The ordinal at the end of a StatefulSet pod's name (`mem-12` → 12).
pub fn ordinal_of(pod_name: &str) -> Option<u64> {
    let (_, ordinal) = pod_name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

impl ReplicationConfig {
    /// This node's id: `id`, else the ordinal of `$POD_NAME`; it must be one of the peers.
    ///
    /// # Errors
    /// Neither is set, the pod name has no ordinal, or the id is not a peer.
    pub fn node_id(&self) -> Result<u64, String> {
        let id = match self.id {
            Some(id) => id,
            None => {
                let pod = std::env::var(POD_NAME_ENV).map_err(|_| {
                    format!(
                        "replication.id is not set and ${POD_NAME_ENV} is not set: give the node \
                         its id in the file or run it as a StatefulSet pod"
                    )
                })?;
                ordinal_of(&pod).ok_or_else(|| {
                    format!(
                        "replication.id is not set and ${POD_NAME_ENV} ({pod:?}) does not end \
                         in an ordinal"
                    )
                })?
            }
        };
        if self.peers.iter().any(|p| p.id == id) {
            Ok(id)
        } else {
            Err(format!(
                "this node's id {id} is not among replication.peers {:?}",
                self.peers.iter().map(|p| p.id).collect::<Vec<_>>()
            ))
        }
    }
}

fn default_election_timeout_ms() -> u64 {
    500
}
fn default_heartbeat_ms() -> u64 {
    100
}
fn default_write_wait_ms() -> u64 {
    5000
}
fn default_snapshot_every() -> u64 {
    50_000
}

/// Limits on requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Largest request body, bytes (at least `maxValueBytes`).
    pub max_body_bytes: usize,
    /// Largest page a list may ask for.
    pub max_list_limit: usize,
    /// Time a request may take before it is answered 503, milliseconds.
    pub request_timeout_ms: u64,
    /// Requests served at once by the whole node; more wait (health, readiness and
    /// metrics are not counted, so probes answer under load).
    pub max_concurrent_requests: usize,
    /// Request-body bytes held at once by the whole node (each request reserves its
    /// declared length, or `maxBodyBytes` without one, before its body is read); more wait.
    pub max_inflight_body_bytes: usize,
    /// Open client connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers, milliseconds.
    pub header_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
            max_list_limit: 1000,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 512,
            max_inflight_body_bytes: 64 << 20,
            max_connections: 512,
            header_timeout_ms: 10_000,
            max_header_bytes: 16 << 10,
        }
    }
}

/// Latency probe settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProbeSettings {
    /// Time between ticks, milliseconds.
    pub interval_ms: u64,
    /// Retrieves timed per tick.
    pub samples_per_tick: usize,
    /// Ticks the recent value covers.
    pub window_ticks: usize,
    /// Samples needed before a ratio is reported.
    pub min_samples: usize,
    /// Ticks to wait after a start or a cleanup before measuring a baseline.
    pub settle_ticks: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            interval_ms: 1000,
            samples_per_tick: 32,
            window_ticks: 30,
            min_samples: 200,
            settle_ticks: 10,
        }
    }
}

/// Rebuild settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RebuildSettings {
    /// Rebuild when disk bytes exceed this multiple of logical bytes.
    pub disk_ratio: f64,
    /// Never rebuild below this many disk bytes.
    pub min_disk_bytes: u64,
    /// Free bytes to keep on the volume beyond the copy.
    pub free_space_margin_bytes: u64,
}

impl Default for RebuildSettings {
    fn default() -> Self {
        RebuildSettings {
            disk_ratio: 2.0,
            min_disk_bytes: 32 << 20,
            free_space_margin_bytes: 64 << 20,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The node's configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// sled's cache, as bytes or a Kubernetes quantity ("256Mi"). It counts serialised
    /// page bytes; the process's memory exceeds it by the Merkle tree and allocator.
    pub cache_capacity: Quantity,
    /// Durability.
    pub durability: DurabilityConfig,
    /// Time-to-live given to memories stored without one, seconds (0: none).
    pub default_ttl_seconds: u64,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Latency probe.
    pub probe: ProbeSettings,
    /// Rebuild policy of cleanup.
    pub rebuild: RebuildSettings,
    /// The data volume's free-space reserve.
    pub disk: DiskSettings,
    /// The background corruption scrub.
    pub scrub: ScrubSettings,
    /// File holding the admin bearer token; without it the admin endpoints answer 403.
    pub admin_token_file: Option<PathBuf>,
    /// Time in-flight requests get to finish at shutdown, seconds.
    pub shutdown_timeout_seconds: u64,
    /// Accept `PUT /v1/admin/faults` (tests and the sandbox only).
    pub fault_injection: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Replication with the memory's other nodes (absent: a single node).
    pub replication: Option<ReplicationConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("/data"),
            cache_capacity: Quantity(256 << 20),
            durability: DurabilityConfig::default(),
            default_ttl_seconds: 0,
            limits: LimitsConfig::default(),
            probe: ProbeSettings::default(),
            rebuild: RebuildSettings::default(),
            disk: DiskSettings::default(),
            scrub: ScrubSettings::default(),
            admin_token_file: None,
            shutdown_timeout_seconds: 20,
            fault_injection: false,
            log_format: LogFormat::Human,
            replication: None,
        }
    }
}

/// A byte count written as an integer or a Kubernetes quantity (`512Mi`, `1G`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct Quantity(pub u64);

impl From<Quantity> for u64 {
    fn from(q: Quantity) -> u64 {
        q.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Quantity(n)),
            Raw::Text(text) => parse_quantity(&text)
                .map(Quantity)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a byte quantity: digits with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T).
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity like 256Mi"))?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => return Err(format!("{text:?} has an unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl NodeConfig {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the field.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses YAML (an empty document gives the defaults) and validates it.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn from_yaml(text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = if text.trim().is_empty() {
            NodeConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::from("<inline>"),
                message: e.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; all problems are reported together.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, rule: String| {
            if !ok {
                problems.push(format!("{field}: {rule}"));
            }
        };
        let l = &self.limits;
        check(
            self.cache_capacity.0 >= 1 << 20,
            "cacheCapacity",
            format!("must be at least 1Mi, got {} bytes", self.cache_capacity.0),
        );
        check(
            self.durability.mode == DurabilityMode::Sync
                || (1..=60_000).contains(&self.durability.flush_every_ms),
            "durability.flushEveryMs",
            format!(
                "must lie in 1..=60000, got {}",
                self.durability.flush_every_ms
            ),
        );
        check(
            self.default_ttl_seconds <= 100 * 365 * 24 * 3600,
            "defaultTtlSeconds",
            format!(
                "must be at most 100 years, got {}",
                self.default_ttl_seconds
            ),
        );
        check(
            (1..=65_536).contains(&l.max_key_bytes),
            "limits.maxKeyBytes",
            format!("must lie in 1..=65536, got {}", l.max_key_bytes),
        );
        check(
            (1..=64 << 20).contains(&l.max_value_bytes),
            "limits.maxValueBytes",
            format!("must lie in 1..=64Mi, got {}", l.max_value_bytes),
        );
        check(
            l.max_body_bytes >= l.max_value_bytes && l.max_body_bytes <= 128 << 20,
            "limits.maxBodyBytes",
            format!(
                "must lie in maxValueBytes ({})..=128Mi, got {}",
                l.max_value_bytes, l.max_body_bytes
            ),
        );
        check(
            (1..=100_000).contains(&l.max_list_limit),
            "limits.maxListLimit",
            format!("must lie in 1..=100000, got {}", l.max_list_limit),
        );
        check(
            (10..=600_000).contains(&l.request_timeout_ms),
            "limits.requestTimeoutMs",
            format!("must lie in 10..=600000, got {}", l.request_timeout_ms),
        );
        check(
            (1..=100_000).contains(&l.max_concurrent_requests),
            "limits.maxConcurrentRequests",
            format!("must lie in 1..=100000, got {}", l.max_concurrent_requests),
        );
        check(
            l.max_inflight_body_bytes >= l.max_body_bytes && l.max_inflight_body_bytes <= 16 << 30,
            "limits.maxInflightBodyBytes",
            format!(
                "must lie in maxBodyBytes ({})..=16Gi, got {}",
                l.max_body_bytes, l.max_inflight_body_bytes
            ),
        );
        check(
            (1..=100_000).contains(&l.max_connections),
            "limits.maxConnections",
            format!("must lie in 1..=100000, got {}", l.max_connections),
        );
        check(
            (10..=600_000).contains(&l.header_timeout_ms),
            "limits.headerTimeoutMs",
            format!("must lie in 10..=600000, got {}", l.header_timeout_ms),
        );
        check(
            (1024..=1 << 20).contains(&l.max_header_bytes),
            "limits.maxHeaderBytes",
            format!("must lie in 1024..=1Mi, got {}", l.max_header_bytes),
        );
        if let Some(r) = &self.replication {
            let mut ids: Vec<u64> = r.peers.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            let distinct = ids.windows(2).all(|w| w[0] != w[1]);
            check(
                distinct && r.id.is_none_or(|id| ids.contains(&id)),
                "replication.peers",
                match r.id {
                    Some(id) => format!(
                        "must name distinct ids, this node's ({id}) among them, got {ids:?}"
                    ),
                    None => format!("must name distinct ids, got {ids:?}"),
                },
            );
            for peer in &r.peers {
                check(
                    peer.url.starts_with("http://") || peer.url.starts_with("https://"),
                    "replication.peers[].url",
                    format!("must start with http:// or https://, got {:?}", peer.url),
                );
            }
            check(
                (50..=60_000).contains(&r.election_timeout_ms),
                "replication.electionTimeoutMs",
                format!("must lie in 50..=60000, got {}", r.election_timeout_ms),
            );
            check(
                r.heartbeat_ms >= 10 && r.heartbeat_ms * 3 <= r.election_timeout_ms,
                "replication.heartbeatMs",
                format!(
                    "must be at least 10 and at most a third of electionTimeoutMs ({}), got {}",
                    r.election_timeout_ms, r.heartbeat_ms
                ),
            );
            check(
                (10..=600_000).contains(&r.write_wait_ms),
                "replication.writeWaitMs",
                format!("must lie in 10..=600000, got {}", r.write_wait_ms),
            );
            check(
                r.snapshot_every_entries >= 10,
                "replication.snapshotEveryEntries",
                format!("must be at least 10, got {}", r.snapshot_every_entries),
            );
        }
        check(
            (100..=3_600_000).contains(&self.durability.stall_timeout_ms),
            "durability.stallTimeoutMs",
            format!(
                "must lie in 100..=3600000, got {}",
                self.durability.stall_timeout_ms
            ),
        );
        check(
            self.scrub.keys_per_second <= 10_000_000,
            "scrub.keysPerSecond",
            format!(
                "must lie in 0..=10000000, got {}",
                self.scrub.keys_per_second
            ),
        );
        check(
            (1..=30 * 24 * 3600).contains(&self.scrub.period_seconds),
            "scrub.periodSeconds",
            format!("must lie in 1..=2592000, got {}", self.scrub.period_seconds),
        );
        let p = &self.probe;
        check(
            (10..=3_600_000).contains(&p.interval_ms),
            "probe.intervalMs",
            format!("must lie in 10..=3600000, got {}", p.interval_ms),
        );
        check(
            (1..=10_000).contains(&p.samples_per_tick),
            "probe.samplesPerTick",
            format!("must lie in 1..=10000, got {}", p.samples_per_tick),
        );
        check(
            (1..=10_000).contains(&p.window_ticks),
            "probe.windowTicks",
            format!("must lie in 1..=10000, got {}", p.window_ticks),
        );
        check(
            p.min_samples >= 1 && p.min_samples <= p.samples_per_tick * p.window_ticks,
            "probe.minSamples",
            format!(
                "must lie in 1..=samplesPerTick×windowTicks ({}), got {}",
                p.samples_per_tick * p.window_ticks,
                p.min_samples
            ),
        );
        check(
            p.settle_ticks <= 10_000,
            "probe.settleTicks",
            format!("must lie in 0..=10000, got {}", p.settle_ticks),
        );
        check(
            self.rebuild.disk_ratio.is_finite() && self.rebuild.disk_ratio >= 1.0,
            "rebuild.diskRatio",
            format!("must be at least 1.0, got {}", self.rebuild.disk_ratio),
        );
        check(
            (1..=3600).contains(&self.shutdown_timeout_seconds),
            "shutdownTimeoutSeconds",
            format!(
                "must lie in 1..=3600, got {}",
                self.shutdown_timeout_seconds
            ),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(
            NodeConfig::from_yaml("").expect("valid"),
            NodeConfig::default()
        );
    }

    #[test]
    fn a_full_file_parses() {
        let config = NodeConfig::from_yaml(
            "listen: 127.0.0.1:9000\ndataDir: /tmp/x\ncacheCapacity: 64Mi\n\
             durability: {mode: sync}\ndefaultTtlSeconds: 60\n\
             limits: {maxKeyBytes: 128, maxValueBytes: 4096, maxBodyBytes: 8192}\n\
             probe: {intervalMs: 100}\nadminTokenFile: /etc/token\nlogFormat: json\n",
        )
        .expect("valid");
        assert_eq!(config.cache_capacity, Quantity(64 << 20));
        assert_eq!(config.durability.mode, DurabilityMode::Sync);
        assert_eq!(config.limits.max_key_bytes, 128);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.default_ttl_seconds, 60);
    }

    #[test]
    fn durability_is_written_as_the_file_always_spelt_it_and_read_either_way() {
        let mut config = NodeConfig::default();
        config.durability.mode = DurabilityMode::Sync;
        let text = serde_yaml::to_string(&config).expect("serialises");
        assert!(text.contains("mode: sync"), "{text}");
        assert_eq!(NodeConfig::from_yaml(&text).expect("valid"), config);
        let pascal = NodeConfig::from_yaml("durability: {mode: Sync}\n").expect("valid");
        assert_eq!(pascal.durability.mode, DurabilityMode::Sync);
    }

    #[test]
    fn every_bad_field_is_named() {
        let error = NodeConfig::from_yaml(
            "cacheCapacity: 10\nlimits: {maxKeyBytes: 0, maxListLimit: 0}\nprobe: {intervalMs: 1, settleTicks: 20000}\n",
        )
        .expect_err("invalid");
        let text = error.to_string();
        for field in [
            "cacheCapacity",
            "limits.maxKeyBytes",
            "limits.maxListLimit",
            "probe.intervalMs",
            "probe.settleTicks",
        ] {
            assert!(text.contains(field), "{field} missing from: {text}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_quantities_are_refused() {
        let error = NodeConfig::from_yaml("cacheCapacty: 1Gi\n").expect_err("typo");
        assert!(error.to_string().contains("cacheCapacty"), "{error}");
        let error = NodeConfig::from_yaml("cacheCapacity: 1Qi\n").expect_err("unit");
        assert!(error.to_string().contains("unknown unit"), "{error}");
        assert_eq!(parse_quantity("1Gi"), Ok(1 << 30));
        assert_eq!(parse_quantity("500M"), Ok(500_000_000));
        assert!(parse_quantity("Mi").is_err());
        assert!(parse_quantity("99999999999999999999Ti").is_err());
    }
}
