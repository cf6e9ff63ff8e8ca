//! The bodies of the node's HTTP API, as the node writes them and clients read them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// `PUT /v1/memories/{key}`: what was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// The key.
    pub key: String,
    /// Whether the key was new.
    pub created: bool,
    /// When it expires (unix ms), if it does.
    pub expires_at_ms: Option<u64>,
}

/// One entry of a list page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListItem {
    /// The key.
    pub key: String,
    /// Length of its value.
    pub value_bytes: usize,
    /// When it expires (unix ms), if it does.
    pub expires_at_ms: Option<u64>,
}

/// `GET /v1/memories`: one page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage {
    /// The entries.
    pub items: Vec<ListItem>,
    /// Where the next page starts, when there is one.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// `GET /v1/root`: the Merkle root (hex) and the number of keys under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// The root, 64 hex digits.
    pub root: String,
    /// Keys under it.
    pub keys: u64,
    /// On a replicated node: the log index applied when the root was read (nodes at the
    /// same index have the same root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

/// An error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `insufficient_storage`, …).
    pub code: String,
    /// For people.
    pub message: String,
}

/// `POST /v1/admin/cleanup`: what a cleanup did and what it changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    /// When it started (unix ms).
    pub started_at_ms: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Expired memories removed.
    pub pruned: u64,
    /// Whether the database was rebuilt.
    pub rebuilt: bool,
    /// Why it was not, when it was not.
    pub rebuild_skipped: Option<String>,
    /// Keys before and after.
    pub keys_before: u64,
    /// Keys after.
    pub keys_after: u64,
    /// Logical bytes before.
    pub logical_bytes_before: u64,
    /// Logical bytes after.
    pub logical_bytes_after: u64,
    /// On-disk bytes before.
    pub disk_bytes_before: u64,
    /// On-disk bytes after.
    pub disk_bytes_after: u64,
    /// Recent retrieve latency before, nanoseconds (`None`: no data).
    pub recent_before_ns: Option<f64>,
    /// Retrieve latency after, once the node settled, nanoseconds (`None` until then).
    pub recent_after_ns: Option<f64>,
    /// Ratio against the baseline in force before the cleanup.
    pub ratio_before: Option<f64>,
    /// The settled latency after against that same baseline (`None` until settled).
    pub ratio_after: Option<f64>,
    /// Whether the baseline was re-taken (only when latency came back).
    pub baseline_reset: bool,
    /// Whether the "after" figures are in: the probe measures them a settle period plus a
    /// window after the cleanup, not while the rebuild has everything hot.
    #[serde(default)]
    pub settled: bool,
}

/// `GET /v1/admin/raft`: a replicated node's membership and progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader this node knows.
    pub leader: Option<u64>,
    /// Voters of the membership in force (the last one, during a joint change).
    pub voters: BTreeSet<u64>,
    /// Learners (non-voting members).
    pub learners: BTreeSet<u64>,
    /// Whether the membership is a joint configuration (a change in flight).
    pub joint: bool,
    /// Highest log index held.
    pub last_log_index: Option<u64>,
    /// Highest applied index.
    pub applied_index: Option<u64>,
    /// On the leader: each member's matched index.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matched: BTreeMap<u64, Option<u64>>,
    /// Before the group is initialized: memories this node holds that were written without
    /// replication (a single node upgraded). Such a node starts the group alone (`init`
    /// with itself) and the others join it as learners; it never joins another group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreplicated: Option<u64>,
}

/// `GET /v1/proof/{key}`: a value with its inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProofBody {
    /// The key.
    pub key: String,
    /// The value, base64.
    pub value: String,
    /// The root the proof is against, hex.
    pub root: String,
    /// The proof.
    pub proof: crate::proof::Proof,
    /// On a replicated node: the log index applied when the proof was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}
