//! Replication: the nodes of a memory of two replicas or more form one Raft group, and the
//! operator drives its membership the way etcd's operators and CloudNativePG drive theirs.
//!
//! Each reconcile of a replicated memory asks every node for its view of the group (`GET
//! /v1/admin/raft` with the admin token, and `GET /v1/root?consistency=local`: root and
//! applied index read together), then:
//!
//! - **sizes the StatefulSet** ([`sizing`]): `spec.replicas`, or more while a member the
//!   spec no longer wants is still in the group — its pod goes only after it has left;
//! - takes **the one membership step due** ([`next_step`]), one per reconcile, each
//!   idempotent on the node: initialize the group through node 0 once every initial node
//!   answers (exactly once: an initialized group is never initialized again); add a new
//!   node as a learner; promote a learner once it is within [`CAUGHT_UP`] entries of the
//!   leader; move leadership off a leaving voter; remove a leaving member — a voter only
//!   when the voters left would still have a healthy majority;
//! - reports the group in `status.replication` and the conditions `Replicated`,
//!   `QuorumLost` and `Diverged` ([`conditions`]), and whether the group has a quorum
//!   member to spare for a cleanup ([`quorum_at_risk`]).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use phoenix_node_api::config::ordinal_of;
use phoenix_node_api::wire::{RaftStatus, Root};
use phoenix_node_api::{ClientError, NodeClient};

use super::conditions::condition;
use super::context::{Context, PeerAddresses};
use super::nodes::targets;
use crate::children::{INSTANCE_LABEL, peer_url};
use crate::crd::{PhoenixMemory, ReplicaStatus, ReplicationStatus, conditions};

/// A learner this close to the leader's applied index (entries) is promoted to voter.
pub const CAUGHT_UP: u64 = 64;
/// A voter this far behind the leader (entries) makes `Replicated` False and does not
/// count as a spare quorum member.
pub const REPLICATED_LAG: u64 = 1_000;
/// Why a node that serves alone is not part of the group.
const NOT_REPLICATED: &str = "not replicated (its configuration has no group)";
/// How long a membership call may take (the node bounds its own wait for a commit).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one node said.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Its view of the group.
    pub raft: RaftStatus,
    /// Its root and the applied index it was read at.
    pub root: Option<Root>,
}

/// One node of the memory, as asked.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Its ordinal (= Raft id).
    pub ordinal: u64,
    /// Its pod's name.
    pub name: String,
    /// Its pod's URL, when it has an IP.
    pub url: Option<String>,
    /// Its pod's peer-port URL, when it has an IP and a peer port.
    pub peer_url: Option<String>,
    /// Its answer, or why there is none.
    pub answer: Result<Answer, String>,
    /// It answered as a node without replication (its configuration has no group yet, or
    /// no longer).
    pub single: bool,
}

/// Every node's view of the group. Empty for a memory that is not replicated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// The nodes asked, by ordinal.
    pub nodes: Vec<NodeView>,
}

fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

impl Group {
    fn answers(&self) -> impl Iterator<Item = (&NodeView, &RaftStatus)> {
        self.nodes
            .iter()
            .filter_map(|n| n.answer.as_ref().ok().map(|a| (n, &a.raft)))
    }

    /// The node that leads, as it says itself (the highest term wins a stale claim).
    pub fn leader(&self) -> Option<(&NodeView, &RaftStatus)> {
        self.answers()
            .filter(|(_, s)| s.role == "leader")
            .max_by_key(|(_, s)| s.term)
    }

    /// The membership in force: the leader's, else the newest among the nodes that have one.
    pub fn membership(&self) -> Option<&RaftStatus> {
        self.leader().map(|(_, s)| s).or_else(|| {
            self.answers()
                .map(|(_, s)| s)
                .filter(|s| !s.voters.is_empty())
                .max_by_key(|s| (s.term, s.last_log_index))
        })
    }

    /// Whether the group has been initialized (a node knows a voter).
    pub fn initialized(&self) -> bool {
        self.membership().is_some()
    }

    /// Voters and learners.
    pub fn members(&self) -> BTreeSet<u64> {
        self.membership()
            .map(|m| m.voters.union(&m.learners).copied().collect())
            .unwrap_or_default()
    }

    fn node(&self, ordinal: u64) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.ordinal == ordinal)
    }

    fn answered(&self, ordinal: u64) -> Option<&Answer> {
        self.node(ordinal).and_then(|n| n.answer.as_ref().ok())
    }

    /// Entries node `ordinal` is behind the leader: from the leader's replication progress,
    /// else from what the node applied.
    pub fn lag(&self, ordinal: u64) -> Option<u64> {
        let (_, leader) = self.leader()?;
        let head = leader.last_log_index.or(leader.applied_index)?;
        if leader.id == ordinal {
            return Some(head.saturating_sub(leader.applied_index.unwrap_or(0)));
        }
        let held = leader
            .matched
            .get(&ordinal)
            .copied()
            .flatten()
            .or_else(|| self.answered(ordinal).and_then(|a| a.raft.applied_index))?;
        Some(head.saturating_sub(held))
    }

    /// Nodes whose root differs from the leader's at the same applied index.
    pub fn diverging(&self) -> Vec<u64> {
        let Some(reference) = self
            .leader()
            .and_then(|(n, _)| self.answered(n.ordinal))
            .and_then(|a| a.root.as_ref())
            .filter(|r| r.applied_index.is_some())
        else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter_map(|n| Some((n.ordinal, n.answer.as_ref().ok()?.root.as_ref()?)))
            .filter(|(_, root)| {
                root.applied_index == reference.applied_index && root.root != reference.root
            })
            .map(|(ordinal, _)| ordinal)
            .collect()
    }

    /// The voters that answer, follow the leader and are within [`REPLICATED_LAG`].
    fn healthy_voters(&self, voters: &BTreeSet<u64>) -> BTreeSet<u64> {
        let Some((_, leader)) = self.leader() else {
            return BTreeSet::new();
        };
        voters
            .iter()
            .copied()
            .filter(|v| {
                self.answered(*v)
                    .is_some_and(|a| a.raft.leader == Some(leader.id))
                    && self.lag(*v).is_some_and(|lag| lag <= REPLICATED_LAG)
            })
            .collect()
    }
}

/// How many pods the StatefulSet runs, and whether the nodes are replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// The StatefulSet's replicas.
    pub replicas: i32,
    /// Whether the node configuration has the replication section.
    pub replicated: bool,
}

/// The members the status last recorded (when no node answers now).
fn recorded_members(before: Option<&ReplicationStatus>) -> BTreeSet<u64> {
    before
        .map(|r| {
            r.voters
                .iter()
                .chain(&r.learners)
                .filter_map(|name| ordinal_of(name))
                .collect()
        })
        .unwrap_or_default()
}

/// The StatefulSet runs `spec.replicas` pods, or enough to keep every member still in the
/// group (a leaving member's pod goes once it has left); none when scaled to zero (the
/// group keeps its membership and resumes when scaled up). Replicated from two pods, or
/// while the group has a member besides node 0.
pub fn sizing(spec_replicas: i32, group: &Group, before: Option<&ReplicationStatus>) -> Sizing {
    let members = if group.initialized() {
        group.members()
    } else if group.nodes.iter().any(|n| n.single) {
        // A node serves alone: whatever status last recorded, there is no group now.
        BTreeSet::new()
    } else {
        // No node answers (scaled to zero, or all down): the membership status recorded.
        recorded_members(before)
    };
    let needed = members
        .iter()
        .max()
        .map_or(0, |m| i32::try_from(*m + 1).unwrap_or(i32::MAX));
    let replicas = if spec_replicas <= 0 {
        0
    } else {
        spec_replicas.max(needed)
    };
    Sizing {
        replicas,
        replicated: replicas >= 2 || members.iter().any(|m| *m != 0),
    }
}

/// One membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Initialize the group through node 0 with these voters.
    Init(Vec<u64>),
    /// Node `id` joins as a learner.
    AddLearner(u64),
    /// Learner `id` becomes a voter.
    Promote(u64),
    /// Leadership moves from a leaving voter to `to`.
    MoveLeader {
        /// The leaving leader.
        from: u64,
        /// The voter that stays and takes over.
        to: u64,
    },
    /// Member `id` leaves the group.
    Remove(u64),
    /// Node `id` holds data but is no member (it diverged and was removed, or was removed
    /// by a scale-down before): it restarts empty, to join again as a learner.
    Rejoin(u64),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Init(voters) => write!(f, "initialize the group with voters {voters:?}"),
            Step::AddLearner(id) => write!(f, "add node {id} as a learner"),
            Step::Promote(id) => write!(f, "promote node {id} to voter (caught up)"),
            Step::MoveLeader { from, to } => {
                write!(f, "move leadership from node {from} (leaving) to node {to}")
            }
            Step::Remove(id) => write!(f, "remove node {id} from the group"),
            Step::Rejoin(id) => write!(
                f,
                "reset node {id} to rejoin from scratch (it holds data but is no member)"
            ),
        }
    }
}

/// The membership step due for `wanted` replicas, `Ok(None)` when the group is as wanted,
/// or why the next step must wait.
///
/// # Errors
/// A step is due but cannot be taken yet (the message says why).
pub fn next_step(wanted: u64, group: &Group) -> Result<Option<Step>, String> {
    if wanted == 0 {
        return Ok(None);
    }
    if !group.initialized() {
        let first = group.answered(0);
        if wanted < 2 {
            // A group of one (node 0 replicated while a group shrank to it): initialized
            // like any other, so that it serves.
            return Ok(first.map(|_| Step::Init(vec![0])));
        }
        let first = first.ok_or("waiting for node 0 to answer before initializing the group")?;
        if first.raft.unreplicated.is_some() {
            // A single node upgraded: its data seeds the group; the others join it.
            return Ok(Some(Step::Init(vec![0])));
        }
        let silent: Vec<u64> = (0..wanted)
            .filter(|o| group.answered(*o).is_none())
            .collect();
        if !silent.is_empty() {
            return Err(format!(
                "waiting for nodes {silent:?} to answer before initializing the group"
            ));
        }
        return Ok(Some(Step::Init((0..wanted).collect())));
    }
    let Some(membership) = group.membership() else {
        return Ok(None);
    };
    if membership.joint {
        return Err("a membership change is being committed".into());
    }
    let (_, leader) = group
        .leader()
        .ok_or("the group has no leader (an election, or no quorum)")?;
    let voters = &membership.voters;
    let learners = &membership.learners;
    let members: BTreeSet<u64> = voters.union(learners).copied().collect();
    // A member whose root differs from the leader's at the same applied index diverged
    // (which must never happen): it leaves, restarts empty and joins again from the group.
    if let Some(id) = group
        .diverging()
        .into_iter()
        .find(|id| members.contains(id))
    {
        if voters.contains(&id) {
            let staying: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            let healthy = group.healthy_voters(&staying);
            if healthy.len() < majority(staying.len()) {
                return Err(format!(
                    "node {id} diverged, but removing it would leave {healthy:?} healthy of \
                     {staying:?}, fewer than a majority"
                ));
            }
        }
        return Ok(Some(Step::Remove(id)));
    }
    // Joining: new nodes as learners once they answer (a node holding data from an
    // earlier membership is reset first), then voters once caught up.
    if let Some(id) = (0..wanted).find(|o| !members.contains(o) && group.answered(*o).is_some()) {
        let holds = group
            .answered(id)
            .is_some_and(|a| a.raft.applied_index.is_some() || !a.raft.voters.is_empty());
        return Ok(Some(if holds {
            Step::Rejoin(id)
        } else {
            Step::AddLearner(id)
        }));
    }
    if let Some(id) = learners
        .iter()
        .copied()
        .find(|l| *l < wanted && group.lag(*l).is_some_and(|lag| lag <= CAUGHT_UP))
    {
        return Ok(Some(Step::Promote(id)));
    }
    // Leaving: leadership first, then learners, then voters from the highest ordinal.
    if leader.id >= wanted {
        let to = voters
            .iter()
            .copied()
            .filter(|v| *v < wanted)
            .find(|v| group.lag(*v).is_some_and(|lag| lag <= CAUGHT_UP))
            .ok_or("no staying voter is caught up to take over leadership")?;
        return Ok(Some(Step::MoveLeader {
            from: leader.id,
            to,
        }));
    }
    if let Some(id) = learners.iter().copied().rev().find(|l| *l >= wanted) {
        return Ok(Some(Step::Remove(id)));
    }
    if let Some(id) = voters.iter().copied().rev().find(|v| *v >= wanted) {
        let staying: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
        let healthy = group.healthy_voters(&staying);
        if healthy.len() < majority(staying.len()) {
            return Err(format!(
                "not removing node {id}: of the voters that would remain {staying:?} only \
                 {healthy:?} answer and are caught up, fewer than a majority"
            ));
        }
        return Ok(Some(Step::Remove(id)));
    }
    Ok(None)
}

/// Whether `memory`'s group must be asked: two replicas or more wanted, or a group shown
/// in status (one scaled down keeps its leaving members until they have left). Decided
/// from the memory alone: a single node's reconcile reads nothing more.
pub fn wanted(memory: &PhoenixMemory) -> bool {
    memory.spec.replicas >= 2
        || memory
            .status
            .as_ref()
            .is_some_and(|s| s.replication.is_some())
}

/// Asks every node of `memory` (ordinals below `asked`) for its view of the group.
pub async fn observe(ctx: &Context, memory: &PhoenixMemory, token: &str, asked: i32) -> Group {
    let name = memory.name_any();
    let namespace = memory.namespace().unwrap_or_default();
    let pods: Vec<Pod> = (0..asked.max(0))
        .filter_map(|o| ctx.caches.get::<Pod>(&namespace, &format!("{name}-{o}")))
        .filter(|pod| pod.labels().get(INSTANCE_LABEL) == Some(&name))
        .collect();
    let timeout = ctx.settings.scrape_timeout;
    let asks =
        targets(&name, asked, &pods)
            .into_iter()
            .enumerate()
            .map(|(ordinal, (pod, target))| {
                let http = ctx.http.clone();
                async move {
                    let ordinal = ordinal as u64;
                    let Ok(target) = target else {
                        let why = target.err().unwrap_or_default();
                        return NodeView {
                            ordinal,
                            name: pod,
                            url: None,
                            peer_url: None,
                            answer: Err(why),
                            single: false,
                        };
                    };
                    let client = NodeClient::new(http, target.url.clone());
                    let answer = ask(&client, token, timeout).await;
                    NodeView {
                        ordinal,
                        name: pod,
                        url: Some(target.url),
                        peer_url: target.peer_url,
                        single: answer == Err(NOT_REPLICATED.to_string()),
                        answer,
                    }
                }
            });
    Group {
        nodes: futures::future::join_all(asks).await,
    }
}

async fn ask(client: &NodeClient, token: &str, timeout: Duration) -> Result<Answer, String> {
    let raft = match client.raft_status(token, timeout).await {
        Ok(Some(raft)) => raft,
        Ok(None) => return Err(NOT_REPLICATED.into()),
        Err(error) => return Err(error.to_string()),
    };
    let root = client.local_root(timeout).await.ok();
    Ok(Answer { raft, root })
}

/// Where the group reaches node `ordinal`.
fn peer_address(
    ctx: &Context,
    memory: &PhoenixMemory,
    group: &Group,
    ordinal: u64,
) -> Option<String> {
    match ctx.settings.peer_addresses {
        PeerAddresses::ServiceDns => Some(peer_url(
            &memory.name_any(),
            &memory.namespace().unwrap_or_default(),
            ordinal,
        )),
        PeerAddresses::PodIp => group.node(ordinal).and_then(|n| n.peer_url.clone()),
    }
}

/// Takes `step`: through node 0 for the initialization, through the leader otherwise.
///
/// # Errors
/// The node refused or did not answer (the message says which and why).
pub async fn take(
    ctx: &Context,
    memory: &PhoenixMemory,
    group: &Group,
    step: &Step,
    token: &str,
) -> Result<(), String> {
    let via = match step {
        Step::Init(_) => group.node(0),
        Step::Rejoin(id) => group.node(*id),
        _ => group.leader().map(|(n, _)| n),
    }
    .and_then(|n| n.url.clone())
    .ok_or_else(|| format!("cannot {step}: the node to ask has no address"))?;
    let node = NodeClient::new(ctx.http.clone(), via);
    let result: Result<RaftStatus, ClientError> = match step {
        Step::Init(voters) => node.init_group(token, voters, MEMBERSHIP_TIMEOUT).await,
        Step::AddLearner(id) => {
            let url = peer_address(ctx, memory, group, *id)
                .ok_or_else(|| format!("cannot {step}: it has no address yet"))?;
            node.add_learner(token, *id, &url, MEMBERSHIP_TIMEOUT).await
        }
        Step::Promote(id) => node.promote(token, &[*id], MEMBERSHIP_TIMEOUT).await,
        Step::MoveLeader { to, .. } => node.move_leader(token, *to, MEMBERSHIP_TIMEOUT).await,
        Step::Remove(id) => node.remove_members(token, &[*id], MEMBERSHIP_TIMEOUT).await,
        Step::Rejoin(_) => {
            return node
                .rejoin(token, MEMBERSHIP_TIMEOUT)
                .await
                .map_err(|e| format!("failed to {step}: {e}"));
        }
    };
    result
        .map(drop)
        .map_err(|e| format!("failed to {step}: {e}"))
}

/// `status.replication` for `group` (`None` when no node is replicated).
pub fn status(group: &Group) -> Option<ReplicationStatus> {
    // No node answers as a member of a group: nothing to show.
    group.answers().next()?;
    let membership = group.membership();
    let leader = group.leader();
    let name_of = |ordinal: &u64| {
        group
            .node(*ordinal)
            .map_or_else(|| ordinal.to_string(), |n| n.name.clone())
    };
    let nodes = group
        .nodes
        .iter()
        .map(|node| match &node.answer {
            Ok(answer) => {
                let at_root = answer.root.as_ref().filter(|r| r.applied_index.is_some());
                ReplicaStatus {
                    name: node.name.clone(),
                    role: answer.raft.role.clone(),
                    applied_index: at_root
                        .and_then(|r| r.applied_index)
                        .or(answer.raft.applied_index),
                    lag: group.lag(node.ordinal),
                    root: at_root.map(|r| r.root.clone()),
                    corrupted: false,
                    unreachable: None,
                }
            }
            Err(why) => ReplicaStatus {
                name: node.name.clone(),
                role: "unknown".into(),
                unreachable: Some(why.clone()),
                ..ReplicaStatus::default()
            },
        })
        .collect();
    Some(ReplicationStatus {
        initialized: membership.is_some(),
        leader: leader.map(|(n, _)| n.name.clone()),
        term: leader
            .map(|(_, s)| s.term)
            .or_else(|| membership.map(|m| m.term))
            .unwrap_or(0),
        voters: membership
            .map(|m| m.voters.iter().map(name_of).collect())
            .unwrap_or_default(),
        learners: membership
            .map(|m| m.learners.iter().map(name_of).collect())
            .unwrap_or_default(),
        commit_index: leader.and_then(|(_, s)| s.applied_index),
        nodes,
    })
}

/// Pairs of nodes that report different roots at the same applied index.
pub fn diverged(status: &ReplicationStatus) -> Vec<(String, String, u64)> {
    let mut found = Vec::new();
    for (i, a) in status.nodes.iter().enumerate() {
        for b in &status.nodes[i + 1..] {
            if let (Some(index), Some(ra), Some(rb)) = (a.applied_index, &a.root, &b.root)
                && b.applied_index == Some(index)
                && ra != rb
            {
                found.push((a.name.clone(), b.name.clone(), index));
            }
        }
    }
    found
}

/// Why a cleanup now could cost the group its quorum, if it could: every cleaned node is
/// briefly busy, so a cleanup needs a healthy majority that survives one node's absence.
pub fn quorum_at_risk(group: &Group) -> Option<String> {
    let membership = group.membership()?;
    let voters = &membership.voters;
    if group.leader().is_none() {
        return Some("the group has no leader".into());
    }
    let healthy = group.healthy_voters(voters);
    let need = majority(voters.len());
    (healthy.len() <= need).then(|| {
        format!(
            "{} of {} voters are healthy and a majority is {need}: cleaning one would leave \
             no quorum to spare",
            healthy.len(),
            voters.len()
        )
    })
}

/// `Replicated`, `QuorumLost` and `Diverged` for a replicated memory.
pub fn conditions(memory: &PhoenixMemory, group: &Group) -> Vec<Condition> {
    let Some(status) = status(group) else {
        return Vec::new();
    };
    let voters: BTreeSet<u64> = group
        .membership()
        .map(|m| m.voters.clone())
        .unwrap_or_default();
    let answering: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|v| group.answered(*v).is_some())
        .collect();
    let lost = status.initialized && answering.len() < majority(voters.len());
    let quorum = if lost {
        condition(
            memory,
            conditions::QUORUM_LOST,
            true,
            "MajorityUnreachable",
            format!(
                "{} of {} voters answer and a majority is {}: writes are refused until more \
                 return",
                answering.len(),
                voters.len(),
                majority(voters.len())
            ),
        )
    } else {
        condition(
            memory,
            conditions::QUORUM_LOST,
            false,
            "QuorumHeld",
            format!("{} of {} voters answer", answering.len(), voters.len()),
        )
    };
    let behind: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| {
            ordinal_of(&n.name).is_some_and(|o| voters.contains(&o))
                && n.lag.is_none_or(|lag| lag > REPLICATED_LAG)
        })
        .map(|n| match (n.lag, &n.unreachable) {
            (_, Some(why)) => format!("{} ({why})", n.name),
            (Some(lag), None) => format!("{} ({lag} entries behind)", n.name),
            (None, None) => format!("{} (progress unknown)", n.name),
        })
        .collect();
    let replicated = if !status.initialized {
        condition(
            memory,
            conditions::REPLICATED,
            false,
            "NotInitialized",
            "the group is not initialized yet".into(),
        )
    } else if status.leader.is_none() {
        condition(
            memory,
            conditions::REPLICATED,
            false,
            "NoLeader",
            "no node leads (an election is under way, or there is no quorum)".into(),
        )
    } else if behind.is_empty() {
        condition(
            memory,
            conditions::REPLICATED,
            true,
            "VotersCurrent",
            format!(
                "leader {}; every voter within {REPLICATED_LAG} entries",
                status.leader.clone().unwrap_or_default()
            ),
        )
    } else {
        condition(
            memory,
            conditions::REPLICATED,
            false,
            "VotersBehind",
            format!("voters behind or silent: {}", behind.join(", ")),
        )
    };
    let pairs = diverged(&status);
    let diverged = if pairs.is_empty() {
        condition(
            memory,
            conditions::DIVERGED,
            false,
            "RootsAgree",
            "nodes at the same applied index report the same root".into(),
        )
    } else {
        let what: Vec<String> = pairs
            .iter()
            .map(|(a, b, index)| format!("{a} and {b} at index {index}"))
            .collect();
        condition(
            memory,
            conditions::DIVERGED,
            true,
            "RootsDiffer",
            format!(
                "different roots at the same applied index: {}",
                what.join("; ")
            ),
        )
    };
    vec![replicated, quorum, diverged]
}

/// The StatefulSet's replicas as cached (0 when there is none yet).
pub fn live_replicas(ctx: &Context, memory: &PhoenixMemory) -> i32 {
    ctx.caches
        .get::<StatefulSet>(&memory.namespace().unwrap_or_default(), &memory.name_any())
        .and_then(|s| s.spec)
        .and_then(|s| s.replicas)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn raft(
        id: u64,
        role: &str,
        leader: Option<u64>,
        voters: &[u64],
        learners: &[u64],
    ) -> RaftStatus {
        RaftStatus {
            id,
            role: role.into(),
            term: 2,
            leader,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            joint: false,
            last_log_index: Some(100),
            applied_index: Some(100),
            matched: BTreeMap::new(),
            unreplicated: None,
        }
    }

    fn view(ordinal: u64, raft: Option<RaftStatus>) -> NodeView {
        NodeView {
            ordinal,
            name: format!("m-{ordinal}"),
            url: Some(format!("http://127.0.0.{}:8080", ordinal + 2)),
            peer_url: Some(format!("http://127.0.0.{}:8081", ordinal + 2)),
            single: false,
            answer: raft.map_or_else(
                || Err("connection refused".into()),
                |raft| {
                    Ok(Answer {
                        root: Some(Root {
                            root: "aa".repeat(32),
                            keys: 1,
                            applied_index: raft.applied_index,
                        }),
                        raft,
                    })
                },
            ),
        }
    }

    /// A group led by `leader` with `voters` and `learners`, every member matched at
    /// `matched` (default: the head), `down` not answering, `extra` answering but not
    /// members.
    fn group(
        leader: u64,
        voters: &[u64],
        learners: &[u64],
        down: &[u64],
        extra: &[u64],
        matched: &[(u64, u64)],
    ) -> Group {
        let mut nodes = Vec::new();
        let all: BTreeSet<u64> = voters
            .iter()
            .chain(learners)
            .chain(extra)
            .copied()
            .collect();
        for o in all {
            if down.contains(&o) {
                nodes.push(view(o, None));
                continue;
            }
            let mut status = if extra.contains(&o) {
                RaftStatus {
                    applied_index: None,
                    last_log_index: None,
                    ..raft(o, "learner", None, &[], &[])
                }
            } else if o == leader {
                raft(o, "leader", Some(leader), voters, learners)
            } else if learners.contains(&o) {
                raft(o, "learner", Some(leader), voters, learners)
            } else {
                raft(o, "follower", Some(leader), voters, learners)
            };
            if o == leader {
                status.matched = voters
                    .iter()
                    .chain(learners)
                    .map(|m| {
                        let at = matched
                            .iter()
                            .find(|(id, _)| id == m)
                            .map_or(100, |(_, i)| *i);
                        (*m, Some(at))
                    })
                    .collect();
            }
            nodes.push(view(o, Some(status)));
        }
        Group { nodes }
    }

    #[test]
    fn a_new_group_is_initialized_once_every_initial_node_answers() {
        let fresh = |down: &[u64]| Group {
            nodes: (0..3)
                .map(|o| {
                    view(
                        o,
                        (!down.contains(&o)).then(|| raft(o, "learner", None, &[], &[])),
                    )
                })
                .collect(),
        };
        assert!(
            next_step(3, &fresh(&[2]))
                .expect_err("waits")
                .contains("[2]")
        );
        assert_eq!(
            next_step(3, &fresh(&[])),
            Ok(Some(Step::Init(vec![0, 1, 2])))
        );
        // Initialized: never again.
        let formed = group(0, &[0, 1, 2], &[], &[], &[], &[]);
        assert_eq!(next_step(3, &formed), Ok(None));
        // A single node upgraded seeds the group alone.
        let mut upgraded = fresh(&[]);
        if let Ok(answer) = upgraded.nodes[0].answer.as_mut() {
            answer.raft.unreplicated = Some(50);
        }
        assert_eq!(next_step(3, &upgraded), Ok(Some(Step::Init(vec![0]))));
        assert_eq!(
            next_step(1, &fresh(&[])),
            Ok(Some(Step::Init(vec![0]))),
            "node 0 replicated alone: a group of one"
        );
        let mut single = fresh(&[1, 2]);
        single.nodes[0].answer = Err(NOT_REPLICATED.into());
        single.nodes[0].single = true;
        assert_eq!(
            next_step(1, &single),
            Ok(None),
            "one node serving alone: no group"
        );
        // A node serving alone overrides the membership status last recorded.
        let recorded = ReplicationStatus {
            voters: vec!["m-0".into(), "m-1".into()],
            ..ReplicationStatus::default()
        };
        assert_eq!(
            sizing(1, &single, Some(&recorded)),
            Sizing {
                replicas: 1,
                replicated: false
            }
        );
        let silent = Group {
            nodes: vec![view(0, None)],
        };
        assert_eq!(
            sizing(0, &silent, Some(&recorded)),
            Sizing {
                replicas: 0,
                replicated: true
            },
            "scaled to zero: the recorded group is kept"
        );
    }

    #[test]
    fn scaling_up_adds_learners_and_promotes_them_once_caught_up() {
        let joining = group(0, &[0, 1, 2], &[], &[], &[3, 4], &[]);
        assert_eq!(next_step(5, &joining), Ok(Some(Step::AddLearner(3))));
        let behind = group(0, &[0, 1, 2], &[3], &[], &[4], &[(3, 10)]);
        assert_eq!(next_step(5, &behind), Ok(Some(Step::AddLearner(4))));
        let both = group(0, &[0, 1, 2], &[3, 4], &[], &[], &[(3, 10), (4, 99)]);
        assert_eq!(next_step(5, &both), Ok(Some(Step::Promote(4))));
        let done = group(0, &[0, 1, 2, 3, 4], &[], &[], &[], &[]);
        assert_eq!(next_step(5, &done), Ok(None));
        // A node back from an earlier membership (it holds data) is reset before it joins.
        let mut returning = group(0, &[0, 1, 2], &[], &[], &[3], &[]);
        if let Ok(answer) = returning.nodes[3].answer.as_mut() {
            answer.raft.applied_index = Some(40);
        }
        assert_eq!(next_step(4, &returning), Ok(Some(Step::Rejoin(3))));
        assert_eq!(
            sizing(5, &done, None),
            Sizing {
                replicas: 5,
                replicated: true
            }
        );
    }

    #[test]
    fn scaling_down_moves_leadership_then_removes_voters_before_the_pods_go() {
        let five = group(4, &[0, 1, 2, 3, 4], &[], &[], &[], &[]);
        assert_eq!(
            next_step(3, &five),
            Ok(Some(Step::MoveLeader { from: 4, to: 0 }))
        );
        // The StatefulSet keeps every member's pod meanwhile.
        assert_eq!(sizing(3, &five, None).replicas, 5);
        let led_by_1 = group(1, &[0, 1, 2, 3, 4], &[], &[], &[], &[]);
        assert_eq!(next_step(3, &led_by_1), Ok(Some(Step::Remove(4))));
        let four = group(1, &[0, 1, 2, 3], &[], &[], &[], &[]);
        assert_eq!(next_step(3, &four), Ok(Some(Step::Remove(3))));
        assert_eq!(sizing(3, &four, None).replicas, 4);
        let three = group(1, &[0, 1, 2], &[], &[], &[], &[]);
        assert_eq!(sizing(3, &three, None).replicas, 3);
        // Never below a healthy majority of the voters that stay.
        let two_down = group(1, &[0, 1, 2, 3], &[], &[0, 2], &[], &[]);
        assert!(
            next_step(3, &two_down)
                .expect_err("waits")
                .contains("majority")
        );
        // Down to one node: the group shrinks to node 0, then replication is off.
        let alone = group(0, &[0], &[], &[], &[], &[]);
        assert_eq!(
            sizing(1, &alone, None),
            Sizing {
                replicas: 1,
                replicated: false
            }
        );
        // Scaled to zero: no pod, the membership kept.
        assert_eq!(next_step(0, &three), Ok(None));
        assert_eq!(
            sizing(0, &three, None),
            Sizing {
                replicas: 0,
                replicated: true
            }
        );
    }

    #[test]
    fn quorum_and_divergence_are_reported() {
        let memory = PhoenixMemory::new(
            "m",
            serde_json::from_value(serde_json::json!({"replicas": 3})).expect("spec"),
        );
        let find = |conditions: &[Condition], t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .expect("condition")
        };
        let healthy = group(0, &[0, 1, 2], &[], &[], &[], &[]);
        let c = conditions(&memory, &healthy);
        assert_eq!(
            find(&c, "Replicated"),
            ("True".into(), "VotersCurrent".into())
        );
        assert_eq!(find(&c, "QuorumLost").0, "False");
        assert_eq!(find(&c, "Diverged").0, "False");
        assert_eq!(quorum_at_risk(&healthy), None);
        // One follower down: still a quorum, but none to spare.
        let one_down = group(0, &[0, 1, 2], &[], &[2], &[], &[]);
        assert_eq!(
            find(&conditions(&memory, &one_down), "Replicated").0,
            "False"
        );
        assert!(quorum_at_risk(&one_down).is_some());
        // Two down: the answering node cannot lead; the quorum is lost.
        let mut two_down = group(0, &[0, 1, 2], &[], &[1, 2], &[], &[]);
        if let Ok(answer) = two_down.nodes[0].answer.as_mut() {
            answer.raft.role = "candidate".into();
            answer.raft.leader = None;
        }
        let c = conditions(&memory, &two_down);
        assert_eq!(
            find(&c, "QuorumLost"),
            ("True".into(), "MajorityUnreachable".into())
        );
        assert_eq!(find(&c, "Replicated").1, "NoLeader");
        assert!(quorum_at_risk(&two_down).is_some());
        // Different roots at the same index.
        let mut split = healthy.clone();
        if let Ok(answer) = split.nodes[2].answer.as_mut()
            && let Some(root) = answer.root.as_mut()
        {
            root.root = "bb".repeat(32);
        }
        let c = conditions(&memory, &split);
        assert_eq!(find(&c, "Diverged"), ("True".into(), "RootsDiffer".into()));
        // The diverging node (not the leader: it is the reference) leaves the group.
        assert_eq!(split.diverging(), [2]);
        assert_eq!(next_step(3, &split), Ok(Some(Step::Remove(2))));
        // Roots at different indexes are not compared.
        if let Ok(answer) = split.nodes[2].answer.as_mut()
            && let Some(root) = answer.root.as_mut()
        {
            root.applied_index = Some(99);
        }
        assert_eq!(find(&conditions(&memory, &split), "Diverged").0, "False");
    }
}
