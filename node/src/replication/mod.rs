//! Replication: the nodes of one memory form one Raft group (openraft 0.9).
//!
//! - [`log`]: the Raft log and vote, in sled beside the store (`DATA_DIR/raft`).
//! - [`machine`]: the state machine, which is the store (Merkle tree included), and its
//!   snapshots (a consistent export checked against its root before install).
//! - [`network`]: Raft RPCs over HTTP under `/v1/raft/`, behind the peer token.
//! - [`metrics`]: role, term, leader, indexes, lag, snapshots, forwarding, group commit.
//!
//! [`Replica`] is what the HTTP handlers use: [`Replica::write`] proposes a store, delete
//! or prune (on the leader; a follower is told where the leader is and forwards the
//! request), [`Replica::read_index`] makes a read linearizable (the leader confirms its
//! leadership with a quorum; a follower asks the leader for the index and waits until it
//! has applied it).

// openraft's storage traits return its `StorageError` (over 200 bytes) by value; that is
// its API, not ours to box.
#![allow(clippy::result_large_err)]

pub mod log;
pub mod machine;
pub mod metrics;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use phoenix_node_api::config::ReplicationConfig;

use crate::store::Store;
use crate::store::raft_log::RaftLog;
use machine::{Machine, Shared};
use metrics::Counters;

/// A Raft node id: the StatefulSet ordinal.
pub type NodeId = u64;

/// The header carrying the peer token on Raft RPCs.
pub const PEER_TOKEN_HEADER: &str = "x-phoenix-peer-token";
/// The header a forwarded request carries (a node never forwards it again).
pub const FORWARDED_HEADER: &str = "x-phoenix-forwarded-by";
/// The header every read and write answers with: the applied index it saw.
pub const APPLIED_INDEX_HEADER: &str = "x-phoenix-applied-index";

/// Entries sent in one append RPC at most (bounds an RPC body by this many values).
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// A write every replica applies in log order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store `value` under `key`, expiring at `expires_at_ms` (decided by the node that
    /// proposed it, so every replica expires it at the same moment).
    Store {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Absolute expiry, unix ms.
        expires_at_ms: Option<u64>,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Delete every memory expired at `now_ms` (the leader's clock).
    Prune {
        /// The moment, unix ms.
        now_ms: u64,
    },
    /// Several writes proposed as one entry (one log append, one fsync, one replication
    /// round for all of them), applied in order.
    Batch(Vec<Command>),
}

// Values stay out of logs: a key and a length are enough to follow what happened.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Store {
                key,
                value,
                expires_at_ms,
            } => write!(
                f,
                "Store({:?}, {} bytes, expires {expires_at_ms:?})",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Command::Delete { key } => write!(f, "Delete({:?})", String::from_utf8_lossy(key)),
            Command::Prune { now_ms } => write!(f, "Prune(at {now_ms})"),
            Command::Batch(commands) => write!(f, "Batch({} writes)", commands.len()),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A blank or membership entry.
    #[default]
    None,
    /// A store: whether the key was new, and its expiry.
    Stored {
        /// The key was new.
        created: bool,
        /// Absolute expiry, unix ms.
        expires_at_ms: Option<u64>,
    },
    /// A delete: whether the key existed.
    Deleted(bool),
    /// A prune: how many memories it removed.
    Pruned(u64),
    /// A batch: each write's reply, in order.
    Batch(Vec<Reply>),
}

openraft::declare_raft_types!(
    /// The Raft types of a memory's group.
    pub TypeConfig:
        D = Command,
        R = Reply,
        Node = BasicNode,
);

/// Why a write or a linearizable read was not served here.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Another node leads: send the request there.
    #[error("node {id} leads the group")]
    Leader {
        /// The leader's id.
        id: NodeId,
        /// Its base URL.
        url: String,
    },
    /// No leader now (an election), no quorum, or the outcome is not known in time.
    #[error("{0}")]
    Unavailable(String),
    /// The group has not been initialized.
    #[error("the replication group has not been initialized (POST /v1/admin/raft/init)")]
    Uninitialized,
}

/// Membership and progress, as the admin endpoint shows them.
pub use phoenix_node_api::wire::RaftStatus as GroupStatus;

/// One node's part in its memory's Raft group.
pub struct Replica {
    /// This node's id.
    pub id: NodeId,
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    peers: BTreeMap<NodeId, String>,
    http: reqwest::Client,
    peer_token: Arc<str>,
    peer_token_hash: blake3::Hash,
    write_wait: Duration,
    election_timeout: Duration,
    log_bytes: RaftLog,
    /// Memories found in the store written without replication (a single node upgraded),
    /// before this node had any Raft state.
    unreplicated: Option<u64>,
    /// Writes waiting to be proposed (see [`propose_batches`]).
    proposals: tokio::sync::mpsc::UnboundedSender<Proposal>,
    /// When a quorum last acknowledged this leader (an estimate from the metrics; `None`
    /// when not leading or before the leader applied an entry of its term).
    lease: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Set while leadership is being handed over: writes are refused meanwhile.
    moving: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A node started without replication whose data directory still holds a Raft log (its
/// memory was scaled down to one node): the store holds everything it applied, so the log
/// and the applied index are dropped and the node serves alone; scaled up again, it starts
/// a new group from its data as any single node does. Returns whether there was a log.
///
/// # Errors
/// The applied index cannot be removed or the log directory cannot be deleted.
pub fn leave_group(store: &Store) -> anyhow::Result<bool> {
    let dir = crate::store::raft_log::dir_in(&store.config().path);
    if !dir.exists() {
        return Ok(false);
    }
    store.delete_meta(machine::APPLIED)?;
    std::fs::remove_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("failed to remove the old Raft log {}: {e}", dir.display()))?;
    Ok(true)
}

/// The marker a node leaves when asked to rejoin its group from scratch
/// (`POST /v1/admin/raft/rejoin`): at its next start its memories, its Raft log and its
/// applied index are deleted before Raft starts, so it comes back as a new, empty node.
fn rejoin_marker(store: &Store) -> std::path::PathBuf {
    store.config().path.join("rejoin")
}

/// Asks for a rejoin at the next start (see [`rejoin_marker`]).
///
/// # Errors
/// The marker cannot be written.
pub fn ask_rejoin(store: &Store) -> anyhow::Result<()> {
    let marker = rejoin_marker(store);
    std::fs::write(
        &marker,
        b"rejoin the group from scratch at the next start\n",
    )
    .map_err(|e| anyhow::anyhow!("failed to write {}: {e}", marker.display()))?;
    Ok(())
}

/// At start: if a rejoin was asked for, deletes every memory, the applied index and the
/// Raft log (in that order; the marker goes last, so an interrupted reset is redone).
/// Returns how many memories were deleted.
///
/// # Errors
/// The store or the log directory cannot be cleared.
pub fn reset_if_asked(store: &Store) -> anyhow::Result<Option<u64>> {
    let marker = rejoin_marker(store);
    if !marker.exists() {
        return Ok(None);
    }
    let cleared = store.clear()?;
    store.delete_meta(machine::APPLIED)?;
    store.flush()?;
    let dir = crate::store::raft_log::dir_in(&store.config().path);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("failed to remove {}: {e}", dir.display()))?;
    }
    std::fs::remove_file(&marker)
        .map_err(|e| anyhow::anyhow!("failed to remove {}: {e}", marker.display()))?;
    Ok(Some(cleared))
}

impl Replica {
    /// Opens the log beside `store` and starts Raft ([`Replica::bootstrap`] initializes the
    /// group).
    ///
    /// # Errors
    /// An unreadable peer token, an unopenable log, an invalid Raft configuration, or
    /// memories written without replication on a node that would not keep them.
    pub async fn start(config: &ReplicationConfig, store: Arc<Store>) -> anyhow::Result<Replica> {
        let id = config.node_id().map_err(|e| anyhow::anyhow!(e))?;
        let token = std::fs::read_to_string(&config.peer_token_file).map_err(|e| {
            anyhow::anyhow!(
                "failed to read the peer token file {}: {e}",
                config.peer_token_file.display()
            )
        })?;
        let token = token.trim();
        if token.is_empty() {
            anyhow::bail!(
                "the peer token file {} is empty",
                config.peer_token_file.display()
            );
        }
        let raft_config = openraft::Config {
            cluster_name: "phoenix-memory".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            // openraft's leader lease (followers refuse votes) is the maximum: a narrow range
            // keeps a failover short (the first candidacy after a leader dies meets the
            // lease; the second wins).
            election_timeout_max: config.election_timeout_ms * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: (config.snapshot_every_entries / 10).max(100),
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared::default());
        let data_dir = store.config().path.clone();
        // Only explicit flushes: every append is flushed before it counts (see `LogStore`).
        let raft_log = RaftLog::open(&data_dir, None)?;
        let log = log::LogStore::new(raft_log.clone(), Arc::clone(&counters));
        let machine = Machine::open(
            Arc::clone(&store),
            Arc::clone(&shared),
            Arc::clone(&counters),
        )?;
        let unreplicated =
            (shared.applied_index().is_none() && raft_log.is_empty() && store.key_count() > 0)
                .then(|| store.key_count());
        if let Some(keys) = unreplicated {
            let lowest = config.peers.iter().map(|p| p.id).min();
            if config.bootstrap && lowest != Some(id) {
                anyhow::bail!(
                    "this data directory holds {keys} memories written without replication, and \
                     this node (id {}) does not initialize the group (the lowest id does): \
                     joining would replace them with the group's data. Start the node that holds \
                     them as the lowest id, or move the directory aside",
                    id
                );
            }
            tracing::warn!(
                keys,
                "the store holds memories written without replication (a single node upgraded)"
            );
        }
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        let peer_token: Arc<str> = Arc::from(token);
        let network =
            network::Network::new(http.clone(), Arc::clone(&peer_token), Arc::clone(&counters));
        let raft = Raft::new(id, Arc::new(raft_config), network, log, machine).await?;
        let (proposals, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(propose_batches(raft.clone(), queued));
        let replica = Replica {
            id,
            raft,
            shared,
            counters,
            peers: config
                .peers
                .iter()
                .map(|p| (p.id, p.url.trim_end_matches('/').to_owned()))
                .collect(),
            http,
            peer_token_hash: blake3::hash(token.as_bytes()),
            peer_token,
            write_wait: Duration::from_millis(config.write_wait_ms),
            election_timeout: Duration::from_millis(config.election_timeout_ms),
            log_bytes: raft_log,
            moving: std::sync::atomic::AtomicBool::new(false),
            unreplicated,
            lease: Arc::default(),
            proposals,
        };
        replica.watch_lease();
        Ok(replica)
    }

    /// With `bootstrap` on the lowest id: initializes the group (a no-op when it already
    /// is). A node holding memories written before replication (a single node upgraded)
    /// starts a group of itself, compacts its log so the data travels as a snapshot, then
    /// adds the other peers as learners and promotes them once they have caught up.
    pub async fn bootstrap(self: Arc<Self>, config: &ReplicationConfig) {
        let lowest = config.peers.iter().map(|p| p.id).min();
        if !config.bootstrap || lowest != Some(self.id) {
            return;
        }
        let voters = if self.unreplicated.is_some() {
            BTreeSet::from([self.id])
        } else {
            self.peers.keys().copied().collect()
        };
        match self.initialize(Some(voters)).await {
            Ok(status) => tracing::info!(voters = ?status.voters, "replication group bootstrapped"),
            Err(error) => {
                tracing::warn!(%error, "bootstrap of the replication group failed");
                return;
            }
        }
        if self.unreplicated.is_some() {
            tokio::spawn(async move { self.grow_from_upgraded().await });
        }
    }

    /// The upgrade path of [`Replica::bootstrap`]: snapshot, then learners, then voters.
    async fn grow_from_upgraded(&self) {
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.state == ServerState::Leader && m.last_applied.is_some(),
                "led alone",
            )
            .await;
        self.compact().await;
        let others: BTreeSet<NodeId> = self
            .peers
            .keys()
            .copied()
            .filter(|id| *id != self.id)
            .collect();
        loop {
            let status = self.status();
            if others.iter().all(|id| status.voters.contains(id)) {
                tracing::info!(voters = ?status.voters, "the upgraded node's group has every peer as a voter");
                return;
            }
            if status.leader == Some(self.id) {
                for id in &others {
                    if let Err(error) = self.add_learner(*id, None).await {
                        tracing::debug!(%error, id, "adding a learner");
                    }
                }
                let caught_up: BTreeSet<NodeId> = others
                    .iter()
                    .copied()
                    .filter(|id| {
                        status.matched.get(id).copied().flatten().is_some()
                            && status.matched.get(id).copied().flatten() >= status.applied_index
                    })
                    .collect();
                if caught_up.len() == others.len()
                    && let Err(error) = self.promote(caught_up).await
                {
                    tracing::debug!(%error, "promoting the learners");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Keeps [`Replica::lease`] from the metrics openraft publishes on every turn of its
    /// loop: the time of the last quorum acknowledgement is the moment a heartbeat or
    /// append was sent that a majority answered (openraft counts the sending time).
    fn watch_lease(&self) {
        let mut metrics = self.raft.metrics();
        let lease = Arc::clone(&self.lease);
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let acked = {
                    let m = metrics.borrow_and_update();
                    let settled = m.state == ServerState::Leader
                        && m.last_applied
                            .is_some_and(|l| l.leader_id.term == m.current_term);
                    m.millis_since_quorum_ack
                        .filter(|_| settled)
                        .and_then(|ms| {
                            std::time::Instant::now().checked_sub(Duration::from_millis(ms))
                        })
                };
                *lease
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = acked;
            }
        });
    }

    /// Whether this leader may serve a linearizable read from its own state (lease read):
    /// a majority acknowledged it less than half the minimum election timeout ago. A
    /// follower refuses to vote for `electionTimeoutMs × 1.5` after it last heard from its
    /// leader, so no other leader can have been elected meanwhile; the leader has applied
    /// an entry of its own term (so everything committed before is applied), and every
    /// write it acknowledged was applied before the acknowledgement. Never while
    /// leadership is being handed over.
    fn lease_holds(&self) -> bool {
        if self.moving.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let acked = *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        acked.is_some_and(|at| at.elapsed() < self.election_timeout / 2) && self.is_leader()
    }

    /// Whether `presented` is the peer token (constant time).
    pub fn peer_token_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let presented = blake3::hash(presented.trim().as_bytes());
        bool::from(self.peer_token_hash.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// The Raft handle (for the RPC routes).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Shared applied-state (local reads, roots).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The counters (forwarding is counted by the handlers).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The HTTP client, for forwarding.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The peer token, for node-to-node calls.
    pub fn peer_token(&self) -> &str {
        &self.peer_token
    }

    /// How long a write waits for a leader.
    pub fn write_wait(&self) -> Duration {
        self.write_wait
    }

    /// The configured election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// The URL of node `id`: from the membership first, then from the configuration.
    pub fn url_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.trim_end_matches('/').to_owned())
            .or_else(|| self.peers.get(&id).cloned())
    }

    /// The current metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The replication series for `/metrics`.
    pub fn render_metrics(&self) -> String {
        metrics::render(&self.metrics(), &self.counters)
    }

    /// The leader, when another node is known to lead (no waiting).
    pub fn leader_hint(&self) -> Option<(NodeId, String)> {
        let leader = self.raft.metrics().borrow().current_leader?;
        if leader == self.id {
            return None;
        }
        self.url_of(leader).map(|url| (leader, url))
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits up to the write wait for some node to lead; where it is.
    async fn leader(&self) -> Result<Option<NodeId>, Refusal> {
        let deadline = tokio::time::Instant::now() + self.write_wait;
        let mut watch = self.raft.metrics();
        loop {
            {
                let metrics = watch.borrow_and_update();
                if metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_none()
                {
                    return Err(Refusal::Uninitialized);
                }
                if let Some(leader) = metrics.current_leader {
                    return Ok((leader != self.id).then_some(leader));
                }
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Refusal::Unavailable("replication stopped".into())),
                Err(_) => {
                    return Err(Refusal::Unavailable(format!(
                        "no leader was elected within {} ms",
                        self.write_wait.as_millis()
                    )));
                }
            }
        }
    }

    fn refer(&self, leader: NodeId) -> Refusal {
        match self.url_of(leader) {
            Some(url) => Refusal::Leader { id: leader, url },
            None => Refusal::Unavailable(format!("node {leader} leads but its URL is unknown")),
        }
    }

    /// Proposes `command`; its reply once a majority has it and it is applied here.
    ///
    /// # Errors
    /// [`Refusal::Leader`] on a follower (forward the request), [`Refusal::Unavailable`]
    /// when no leader emerges or the commit does not happen within the write wait (the
    /// write may still take effect: the client retries).
    pub async fn write(&self, command: Command) -> Result<(Reply, Option<u64>), Refusal> {
        if let Some(leader) = self.leader().await? {
            return Err(self.refer(leader));
        }
        if self.moving.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refusal::Unavailable(
                "leadership is being handed to another node; retry".into(),
            ));
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        self.proposals
            .send(Proposal { command, done })
            .map_err(|_| Refusal::Unavailable("replication stopped".into()))?;
        match tokio::time::timeout(self.write_wait, answer).await {
            Err(_) => Err(Refusal::Unavailable(format!(
                "the write was not committed within {} ms: no quorum of the group \
                 acknowledged it (voters down or unreachable); it may still take effect",
                self.write_wait.as_millis()
            ))),
            Ok(Err(_)) => Err(Refusal::Unavailable("replication stopped".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// Makes a read linearizable: returns once this node has applied everything committed
    /// before the call. On the leader: a quorum confirms its leadership. On a follower:
    /// the leader's read index is fetched and waited for.
    ///
    /// # Errors
    /// [`Refusal::Unavailable`] without a leader or quorum within the write wait.
    pub async fn read_index(&self) -> Result<Option<u64>, Refusal> {
        if self.lease_holds() {
            self.counters.lease_reads.inc();
            return Ok(self.shared.applied_index());
        }
        let index = match self.leader().await? {
            None => self.leader_read_index().await?,
            Some(leader) => self.fetch_read_index(leader).await?,
        };
        if let Some(index) = index
            && self.shared.applied_index().is_none_or(|a| a < index)
        {
            self.raft
                .wait(Some(self.write_wait))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| {
                    Refusal::Unavailable(format!("waiting to apply index {index}: {e}"))
                })?;
        }
        Ok(index)
    }

    /// On the leader: the index a linearizable read must see.
    ///
    /// # Errors
    /// Not the leader, or no quorum within the write wait.
    pub async fn leader_read_index(&self) -> Result<Option<u64>, Refusal> {
        if self.lease_holds() {
            self.counters.lease_reads.inc();
            return Ok(self.shared.applied_index());
        }
        let asked = tokio::time::timeout(self.write_wait, self.raft.get_read_log_id()).await;
        match asked {
            Err(_) => Err(Refusal::Unavailable(
                "the leader could not confirm its leadership with a quorum in time".into(),
            )),
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index)),
            Ok(Err(RaftError::APIError(error))) => match error {
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward) => {
                    match forward.leader_id {
                        Some(leader) if leader != self.id => Err(self.refer(leader)),
                        _ => Err(Refusal::Unavailable("leadership is changing".into())),
                    }
                }
                other => Err(Refusal::Unavailable(other.to_string())),
            },
            Ok(Err(error)) => Err(Refusal::Unavailable(error.to_string())),
        }
    }

    async fn fetch_read_index(&self, leader: NodeId) -> Result<Option<u64>, Refusal> {
        let Some(url) = self.url_of(leader) else {
            return Err(Refusal::Unavailable(format!(
                "node {leader} leads but its URL is unknown"
            )));
        };
        let answer = self
            .http
            .post(format!("{url}/v1/raft/read-index"))
            .header(PEER_TOKEN_HEADER, &*self.peer_token)
            .timeout(self.write_wait)
            .send()
            .await
            .map_err(|e| {
                Refusal::Unavailable(format!("asking leader {leader} for a read index: {e}"))
            })?;
        if !answer.status().is_success() {
            return Err(Refusal::Unavailable(format!(
                "leader {leader} answered {} for a read index",
                answer.status()
            )));
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| Refusal::Unavailable(format!("leader {leader}'s read index: {e}")))?;
        let index: ReadIndex = serde_json::from_slice(&body)
            .map_err(|e| Refusal::Unavailable(format!("leader {leader}'s read index: {e}")))?;
        Ok(index.index)
    }

    /// The membership and progress.
    pub fn status(&self) -> GroupStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        GroupStatus {
            id: self.id,
            role: role.into(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|l| l.index),
            matched: metrics
                .replication
                .iter()
                .flatten()
                .map(|(id, m)| (*id, m.map(|l| l.index)))
                .collect(),
            unreplicated: self
                .unreplicated
                .filter(|_| membership.voter_ids().next().is_none()),
        }
    }

    fn node_of(&self, id: NodeId) -> Result<BasicNode, MembershipError> {
        self.url_of(id)
            .map(BasicNode::new)
            .ok_or(MembershipError::UnknownPeer(id))
    }

    /// Initializes the group with `voters` (default: every configured peer). Idempotent:
    /// an initialized group answers with its membership.
    ///
    /// # Errors
    /// A voter without a URL; Raft refusing.
    pub async fn initialize(
        &self,
        voters: Option<BTreeSet<NodeId>>,
    ) -> Result<GroupStatus, MembershipError> {
        let voters = voters.unwrap_or_else(|| self.peers.keys().copied().collect());
        if let Some(keys) = self.unreplicated
            && voters != BTreeSet::from([self.id])
            && self.status().voters.is_empty()
        {
            return Err(MembershipError::Raft(format!(
                "this node holds {keys} memories written without replication: initialize the \
                 group with this node alone ({{\"voters\": [{}]}}), then add the others as \
                 learners (they receive the data as a snapshot)",
                self.id
            )));
        }
        let nodes = voters
            .iter()
            .map(|id| Ok((*id, self.node_of(*id)?)))
            .collect::<Result<BTreeMap<_, _>, MembershipError>>()?;
        let first = match self.raft.initialize(nodes).await {
            Ok(()) => true,
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => false,
            Err(error) => return Err(MembershipError::Raft(error.to_string())),
        };
        if first && self.unreplicated.is_some() {
            // The memories written before replication are in the store, not in the log: a
            // snapshot, and the log purged up to it, make every joining node receive them
            // (a learner replaying the log from its start would miss them and diverge).
            let _ = self
                .raft
                .wait(Some(self.write_wait))
                .metrics(
                    |m| m.state == ServerState::Leader && m.last_applied.is_some(),
                    "led alone",
                )
                .await;
            self.compact().await;
        }
        // Answer with the membership in force here (a node initialized by another one may
        // not have received it yet).
        let _ = self
            .raft
            .wait(Some(self.write_wait))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_some()
                },
                "membership known",
            )
            .await;
        Ok(self.status())
    }

    /// Adds `id` as a learner (it starts receiving the log). Idempotent.
    ///
    /// # Errors
    /// Not the leader, unknown URL, Raft refusing.
    pub async fn add_learner(
        &self,
        id: NodeId,
        url: Option<String>,
    ) -> Result<GroupStatus, MembershipError> {
        let status = self.status();
        if status.voters.contains(&id) || status.learners.contains(&id) {
            return Ok(status);
        }
        let node = match url {
            Some(url) => BasicNode::new(url.trim_end_matches('/')),
            None => self.node_of(id)?,
        };
        self.change(self.raft.add_learner(id, node, false)).await
    }

    /// Makes learners `ids` voters. Idempotent.
    ///
    /// # Errors
    /// Not the leader, Raft refusing (for example a learner that has not caught up).
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<GroupStatus, MembershipError> {
        let status = self.status();
        if ids.iter().all(|id| status.voters.contains(id)) && !status.joint {
            return Ok(status);
        }
        self.change(
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false),
        )
        .await
    }

    /// Removes `ids` from the group (voters and learners). Idempotent.
    ///
    /// # Errors
    /// Not the leader, Raft refusing (for example removing every voter).
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<GroupStatus, MembershipError> {
        let status = self.status();
        let voters: BTreeSet<NodeId> = ids.intersection(&status.voters).copied().collect();
        let learners: BTreeSet<NodeId> = ids.intersection(&status.learners).copied().collect();
        if !voters.is_empty() {
            self.change(
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(voters), false),
            )
            .await?;
        }
        if !learners.is_empty() {
            self.change(
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(learners), false),
            )
            .await?;
        }
        Ok(self.status())
    }

    async fn change(
        &self,
        change: impl Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
            >,
        >,
    ) -> Result<GroupStatus, MembershipError> {
        match tokio::time::timeout(self.write_wait * 4, change).await {
            Err(_) => Err(MembershipError::Raft(
                "the membership change did not commit in time; it may still take effect".into(),
            )),
            Ok(Ok(_)) => Ok(self.status()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(MembershipError::NotLeader(forward.leader_id))
            }
            Ok(Err(error)) => Err(MembershipError::Raft(error.to_string())),
        }
    }

    /// Moves leadership away from this node (the leader), to node `to` if it wins.
    ///
    /// openraft 0.9 has no transfer, and a follower that heard from the leader within the
    /// leader lease refuses to vote, so the leader goes quiet: it waits until `to` has
    /// every entry, refuses new writes (503, clients retry elsewhere), stops heartbeats and
    /// its own elections, and asks `to` to stand for election (`/v1/raft/elect`, peer
    /// token). Once another node leads (normally `to`; any other node if `to` lost the
    /// race) this node follows it and serves again. Bounded by a few election timeouts.
    ///
    /// # Errors
    /// Not the leader, unknown node, or no other leader in time (this node then resumes
    /// leading).
    pub async fn move_leader(&self, to: NodeId) -> Result<GroupStatus, MembershipError> {
        let status = self.status();
        if status.leader == Some(to) {
            return Ok(status);
        }
        if !self.is_leader() {
            return Err(MembershipError::NotLeader(status.leader));
        }
        if !status.voters.contains(&to) {
            return Err(MembershipError::Raft(format!("node {to} is not a voter")));
        }
        let url = self.url_of(to).ok_or(MembershipError::UnknownPeer(to))?;
        // Let the target catch up first: a candidate behind the others loses.
        let _ = self
            .raft
            .wait(Some(self.election_timeout * 4))
            .metrics(
                |m| {
                    let last = m.last_log_index;
                    m.replication.as_ref().is_some_and(|r| {
                        r.get(&to)
                            .is_some_and(|matched| matched.map(|l| l.index) == last)
                    })
                },
                "target caught up",
            )
            .await;
        self.moving.store(true, std::sync::atomic::Ordering::SeqCst);
        let runtime = self.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let asked = self
            .http
            .post(format!("{url}/v1/raft/elect"))
            .header(PEER_TOKEN_HEADER, &*self.peer_token)
            .timeout(self.election_timeout * 8)
            .send()
            .await;
        if let Err(error) = &asked {
            tracing::warn!(%error, to, "the node to lead did not answer; another may take over");
        }
        let moved = self
            .raft
            .wait(Some(self.election_timeout * 8))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.id),
                "another leader",
            )
            .await;
        runtime.heartbeat(true);
        runtime.elect(true);
        self.moving
            .store(false, std::sync::atomic::Ordering::SeqCst);
        match moved {
            Ok(_) => Ok(self.status()),
            Err(error) => Err(MembershipError::Raft(format!(
                "no other node took over leadership in time ({error}); node {} leads on",
                self.id
            ))),
        }
    }

    /// Stands for election now (what moving leadership to this node does with openraft
    /// 0.9, which has no transfer). Waits up to twice the election timeout to see this
    /// node lead.
    ///
    /// # Errors
    /// Raft stopped, or the election was not won in time.
    pub async fn elect(&self) -> Result<GroupStatus, MembershipError> {
        if self.is_leader() {
            return Ok(self.status());
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| MembershipError::Raft(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.election_timeout * 4;
        let mut watch = self.raft.metrics();
        loop {
            if watch.borrow_and_update().state == ServerState::Leader {
                return Ok(self.status());
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(MembershipError::Raft(format!(
                        "node {} did not win the election in time (is its log behind?)",
                        self.id
                    )));
                }
            }
        }
    }

    /// Compacts the log (after a cleanup): takes a snapshot at the applied index (the
    /// store flushed) and purges the log up to it. Best effort, bounded: a failure is
    /// logged and the log stays as it was.
    pub async fn compact(&self) {
        let Some(applied) = self.shared.applied_index() else {
            return;
        };
        if let Err(error) = self.raft.trigger().snapshot().await {
            tracing::warn!(%error, "could not start a snapshot to compact the log");
            return;
        }
        let taken = self
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot for compaction",
            )
            .await;
        let snapshot = match taken {
            Ok(metrics) => metrics.snapshot.map(|s| s.index),
            Err(error) => {
                tracing::warn!(%error, "the snapshot to compact the log did not finish");
                return;
            }
        };
        if let Some(upto) = snapshot
            && let Err(error) = self.raft.trigger().purge_log(upto).await
        {
            tracing::warn!(%error, "could not purge the log");
        }
    }

    /// Bytes the Raft log takes on disk.
    pub fn log_disk_bytes(&self) -> u64 {
        self.log_bytes.disk_bytes()
    }

    /// Stops Raft (at shutdown).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "Raft did not shut down cleanly");
        }
    }
}

/// A write waiting to be proposed, and where its outcome goes.
struct Proposal {
    command: Command,
    done: tokio::sync::oneshot::Sender<Result<(Reply, Option<u64>), Refusal>>,
}

/// Proposals in flight at once.
const PROPOSALS_IN_FLIGHT: usize = 2;
/// Writes in one proposed entry at most.
const MAX_BATCH: usize = 256;

/// Proposes queued writes: up to [`PROPOSALS_IN_FLIGHT`] entries at once, each carrying
/// every write that queued up meanwhile (up to [`MAX_BATCH`]). openraft 0.9 appends and
/// fsyncs each proposal separately and waits for the fsync in its core loop, so without
/// this each write would cost its own fsync on the leader and on every follower.
async fn propose_batches(
    raft: Raft<TypeConfig>,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Proposal>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some(first) = queued.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose(&raft, batch).await;
        });
    }
}

async fn propose(raft: &Raft<TypeConfig>, mut batch: Vec<Proposal>) {
    let command = if batch.len() == 1 {
        batch[0].command.clone()
    } else {
        Command::Batch(batch.iter().map(|p| p.command.clone()).collect())
    };
    let outcome = raft.client_write(command).await;
    let replies: Result<Vec<(Reply, Option<u64>)>, Refusal> = match outcome {
        Ok(response) => {
            let index = Some(response.log_id.index);
            match response.data {
                Reply::Batch(replies) if batch.len() > 1 && replies.len() == batch.len() => {
                    Ok(replies.into_iter().map(|r| (r, index)).collect())
                }
                reply if batch.len() == 1 => Ok(vec![(reply, index)]),
                other => Err(Refusal::Unavailable(format!(
                    "a batch of {} writes was answered with {other:?}",
                    batch.len()
                ))),
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(Refusal::Unavailable(
                "leadership changed while writing; the write may still take effect".into(),
            ))
        }
        Err(error) => Err(Refusal::Unavailable(error.to_string())),
    };
    match replies {
        Ok(replies) => {
            for (proposal, reply) in batch.drain(..).zip(replies) {
                let _ = proposal.done.send(Ok(reply));
            }
        }
        Err(refusal) => {
            let message = refusal.to_string();
            for proposal in batch.drain(..) {
                let _ = proposal
                    .done
                    .send(Err(Refusal::Unavailable(message.clone())));
            }
        }
    }
}

/// A read index, as the leader answers a follower.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The index a linearizable read must see applied (none: an empty log).
    pub index: Option<u64>,
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership.
    #[error("this node does not lead (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The peer's URL is not configured.
    #[error("node {0} is not a configured peer and no URL was given")]
    UnknownPeer(NodeId),
    /// Raft refused or failed.
    #[error("{0}")]
    Raft(String),
}
