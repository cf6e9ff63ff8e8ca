//! Replication figures a scrape shows: role, term, leader, commit and applied index,
//! per-follower lag on the leader, snapshots, forwarded requests and log group commit.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::{RaftMetrics, ServerState};

use phoenix_node_api::metrics::names;

/// A counter that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters the replication parts bump.
#[derive(Debug, Default)]
pub struct Counters {
    /// Snapshots streamed to a follower.
    pub snapshots_sent: Counter,
    /// Snapshots installed here (checked against their Merkle root first).
    pub snapshots_installed: Counter,
    /// Snapshots refused because their data did not match their root.
    pub snapshots_refused: Counter,
    /// Requests this node forwarded to the leader.
    pub forwarded: Counter,
    /// Linearizable read indexes served under the leader's lease (no quorum round).
    pub lease_reads: Counter,
    /// Log flushes (fsyncs).
    pub log_flushes: Counter,
    /// Appends made durable by those flushes (appends per flush = group commit batching).
    pub log_flushed_appends: Counter,
    /// The highest committed index this node has learnt (+1; 0: none).
    pub committed: AtomicU64,
}

fn gauge(text: &mut String, name: &str, help: &str, value: f64) {
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
    );
}

fn counter(text: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
    );
}

/// The exposition text of the replication series.
pub fn render(metrics: &RaftMetrics<u64, openraft::BasicNode>, counters: &Counters) -> String {
    let mut text = String::new();
    let role = match metrics.state {
        ServerState::Learner => 0.0,
        ServerState::Follower => 1.0,
        ServerState::Candidate => 2.0,
        ServerState::Leader => 3.0,
        ServerState::Shutdown => -1.0,
    };
    gauge(
        &mut text,
        names::RAFT_ROLE,
        "Raft role: 0 learner, 1 follower, 2 candidate, 3 leader, -1 shut down.",
        role,
    );
    gauge(
        &mut text,
        names::RAFT_TERM,
        "Current Raft term.",
        metrics.current_term as f64,
    );
    if let Some(leader) = metrics.current_leader {
        gauge(
            &mut text,
            names::RAFT_LEADER_ID,
            "Id of the leader this node knows (absent when none).",
            leader as f64,
        );
    }
    let voter = metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == metrics.id);
    gauge(
        &mut text,
        names::RAFT_VOTER,
        "1 when this node is a voter of the group's membership.",
        f64::from(u8::from(voter)),
    );
    if let Some(committed) = counters.committed.load(Ordering::Relaxed).checked_sub(1) {
        gauge(
            &mut text,
            names::RAFT_COMMIT_INDEX,
            "Highest log index known committed.",
            committed as f64,
        );
    }
    if let Some(applied) = metrics.last_applied {
        gauge(
            &mut text,
            names::RAFT_APPLIED_INDEX,
            "Highest log index applied to the store.",
            applied.index as f64,
        );
    }
    if let Some(last) = metrics.last_log_index {
        gauge(
            &mut text,
            names::RAFT_LAST_LOG_INDEX,
            "Highest log index held.",
            last as f64,
        );
    }
    if let Some(replication) = &metrics.replication {
        let last = metrics.last_log_index.unwrap_or(0);
        let name = names::RAFT_FOLLOWER_LAG;
        let _ = write!(
            text,
            "# HELP {name} Entries a member is behind the leader's log (leader only).\n# TYPE {name} gauge\n"
        );
        for (peer, matched) in replication {
            let lag = last.saturating_sub(matched.map_or(0, |m| m.index));
            let _ = writeln!(text, "{name}{{peer=\"{peer}\"}} {lag}");
        }
    }
    counter(
        &mut text,
        names::RAFT_SNAPSHOTS_SENT,
        "Snapshots streamed to followers.",
        counters.snapshots_sent.get(),
    );
    counter(
        &mut text,
        names::RAFT_SNAPSHOTS_INSTALLED,
        "Snapshots installed (root checked first).",
        counters.snapshots_installed.get(),
    );
    counter(
        &mut text,
        names::RAFT_SNAPSHOTS_REFUSED,
        "Snapshots refused: data not matching their Merkle root.",
        counters.snapshots_refused.get(),
    );
    counter(
        &mut text,
        names::RAFT_FORWARDED,
        "Requests forwarded to the leader.",
        counters.forwarded.get(),
    );
    counter(
        &mut text,
        names::RAFT_LEASE_READS,
        "Linearizable read indexes the leader served under its lease (no quorum round).",
        counters.lease_reads.get(),
    );
    counter(
        &mut text,
        names::RAFT_LOG_FLUSHES,
        "Raft log flushes (fsyncs).",
        counters.log_flushes.get(),
    );
    counter(
        &mut text,
        names::RAFT_LOG_FLUSHED_APPENDS,
        "Log appends made durable by those flushes.",
        counters.log_flushed_appends.get(),
    );
    text
}
