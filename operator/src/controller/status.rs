//! Status: what a reconcile writes (conditions, observedGeneration, replicas, the selector,
//! what was observed and decided), only when worth a write, by server-side apply.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::conditions::{condition, rollout_conditions, with_condition};
use super::context::{Context, Error, FIELD_MANAGER};
use super::decision::Decided;
use crate::children::selector_string;
use crate::crd::{
    CacheStatus, CleanupPlan, Decision, EmergencyJob, NodeObservation, PhoenixMemory,
    PhoenixMemoryStatus, ReplicationStatus, conditions,
};

/// Writes `status` unless it is what the object already has; returns whether it wrote.
/// Server-side apply of the status subresource under the operator's field manager: a field
/// the operator stops setting (a worst ratio no longer known, a node scaled away) is
/// removed by the API server, with no list of fields to clear by hand.
async fn write(
    ctx: &Context,
    memory: &PhoenixMemory,
    status: PhoenixMemoryStatus,
) -> Result<bool, Error> {
    if memory.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PhoenixMemory> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": PhoenixMemory::api_version(&()),
        "kind": PhoenixMemory::kind(&()),
        "status": status,
    });
    api.patch_status(
        &memory.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    ctx.metrics.status_write("written");
    Ok(true)
}

/// How far a node's ratio or baseline must move (relative) to be written.
const RATIO_MOVE: f64 = 0.10;
/// How far a node's served p99 must move (relative) to be written: a tail over a few
/// seconds of traffic jitters far more than a median.
const TAIL_MOVE: f64 = 0.5;
/// How far a node's keys, logical or disk bytes must move (relative) likewise.
const SIZE_MOVE: f64 = 0.10;

/// `status` without the figures that jitter from one scrape to the next: what is left is what
/// decisions, conditions and readers act on.
fn shape(status: &PhoenixMemoryStatus) -> PhoenixMemoryStatus {
    let mut shape = status.clone();
    shape.observed_at = None;
    shape.worst_ratio = None;
    shape.served_latency = None;
    for node in &mut shape.nodes {
        node.ratio = None;
        node.served_ratio = None;
        node.served_p50_seconds = None;
        node.served_p99_seconds = None;
        node.recent_seconds = None;
        node.baseline_seconds = None;
        node.samples = 0;
        node.keys = 0;
        node.logical_bytes = 0;
        node.disk_bytes = 0;
        // Stale or not counts; the reason's text may carry an age.
        node.stale_reason = node.stale_reason.as_ref().map(|_| String::new());
    }
    // Indexes and lags move with every write; roles, leader, members and conditions count.
    if let Some(replication) = shape.replication.as_mut() {
        replication.commit_index = None;
        for node in &mut replication.nodes {
            node.applied_index = None;
            node.lag = None;
            node.root = None;
            node.unreachable = node.unreachable.as_ref().map(|_| String::new());
        }
    }
    if let Some(plan) = shape.plan.as_mut() {
        plan.predicted_breach = None;
        plan.reason.clear();
    }
    for condition in &mut shape.conditions {
        condition.message.clear();
    }
    shape
}

/// Relative change from `old` to `new`; a value appearing or disappearing is a full change.
fn moved(old: Option<f64>, new: Option<f64>) -> f64 {
    match (old, new) {
        (Some(old), Some(new)) if old == new => 0.0,
        (Some(old), Some(new)) => (new - old).abs() / old.abs().max(f64::MIN_POSITIVE),
        (None, None) => 0.0,
        _ => 1.0,
    }
}

/// Whether `new` is worth a write over `old`: it changes something a decision, a condition or
/// a reader acts on, or a node's figures moved noticeably. Never only because time passed:
/// no heartbeat writes (each is fanned out to every watcher; at 10,000 memories a 5-minute
/// refresh was ~33 writes a second). How old the figures in status are is the metric
/// `phoenix_operator_observation_age_seconds`, and `observedAt` the time they were taken.
/// Without this, every observe of live nodes wrote status, and each write (a watch event)
/// triggered the next reconcile: 45 writes in 10 s for one idle memory.
pub fn worth_writing(old: &PhoenixMemoryStatus, new: &PhoenixMemoryStatus) -> bool {
    if shape(old) != shape(new) || (old.observed_at.is_none() && new.observed_at.is_some()) {
        return true;
    }
    let size = |n: u64| Some(n as f64);
    // A node's figures moved noticeably.
    new.nodes.iter().any(|node| {
        old.nodes
            .iter()
            .find(|o| o.name == node.name)
            .is_none_or(|o| {
                moved(o.ratio, node.ratio) >= RATIO_MOVE
                    || moved(o.baseline_seconds, node.baseline_seconds) >= RATIO_MOVE
                    || moved(o.served_ratio, node.served_ratio) >= RATIO_MOVE
                    || moved(o.served_p99_seconds, node.served_p99_seconds) >= TAIL_MOVE
                    || moved(size(o.keys), size(node.keys)) >= SIZE_MOVE
                    || moved(size(o.logical_bytes), size(node.logical_bytes)) >= SIZE_MOVE
                    || moved(size(o.disk_bytes), size(node.disk_bytes)) >= SIZE_MOVE
            })
    })
}

/// What observing, deciding and acting put in status.
#[derive(Clone, Debug)]
pub struct Update {
    /// The worst fresh ratio, when known.
    pub worst_ratio: Option<f64>,
    /// Per-node observations.
    pub nodes: Vec<NodeObservation>,
    /// The plan in force.
    pub plan: CleanupPlan,
    /// The decision record.
    pub last_decision: Decision,
    /// The last emergency Job.
    pub last_emergency_job: Option<EmergencyJob>,
    /// `Degraded`, `MetricsStale`, `CleanupScheduled`, `CleanupIneffective`.
    pub conditions: Vec<Condition>,
    /// The emergency Job made by this reconcile, if one was.
    pub new_emergency_job: Option<EmergencyJob>,
    /// A replicated memory's group (`None`: one node; its replication conditions go).
    pub replication: Option<ReplicationStatus>,
    /// The worst node's served latency, for the `Served` column.
    pub served_latency: Option<String>,
    /// The cache the operator set with `node.autoCache`.
    pub cache: Option<CacheStatus>,
}

/// `p99 0.39 ms, 1.38×` for the node serving the slowest p99 (the ratio when it has one).
pub fn served_latency(nodes: &[NodeObservation]) -> Option<String> {
    let worst = nodes
        .iter()
        .filter(|n| n.served_p99_seconds.is_some())
        .max_by(|a, b| {
            a.served_p99_seconds
                .unwrap_or_default()
                .total_cmp(&b.served_p99_seconds.unwrap_or_default())
        })?;
    let p99 = crate::policy::millis(std::time::Duration::from_secs_f64(
        worst.served_p99_seconds.unwrap_or_default().max(0.0),
    ));
    Some(match worst.served_ratio {
        Some(ratio) => format!("p99 {p99}, {ratio:.2}×"),
        None => format!("p99 {p99}"),
    })
}

impl Update {
    /// The update for what was `decided`, planned and done, over the status `before`.
    pub fn new(
        before: &PhoenixMemoryStatus,
        decided: &Decided,
        plan: CleanupPlan,
        conditions: Vec<Condition>,
        emergency: Option<EmergencyJob>,
    ) -> Update {
        Update {
            worst_ratio: decided
                .decision
                .worst_ratio
                .map(|r| (r * 100.0).round() / 100.0),
            nodes: decided.nodes.clone(),
            plan,
            last_decision: decided.record.clone(),
            last_emergency_job: emergency.clone().or(before.last_emergency_job.clone()),
            conditions,
            new_emergency_job: emergency,
            replication: None,
            served_latency: served_latency(&decided.nodes),
            cache: before.cache.clone(),
        }
    }
}

/// Every child applied: `Ready` and `Progressing` from the nodes, replicas from the
/// StatefulSet, and what was observed (at `observed_at`) and decided. Writes only what is
/// worth a write (see `worth_writing`); returns whether it wrote.
pub async fn ready(
    ctx: &Context,
    memory: &PhoenixMemory,
    statefulset: &StatefulSet,
    observed: Update,
    observed_at: Timestamp,
) -> Result<bool, Error> {
    let current = memory.status.clone().unwrap_or_default();
    let sts_status = statefulset.status.as_ref();
    let (mut ready, progressing) = rollout_conditions(memory, statefulset);
    // `Ready` means the memory serves: a group without a quorum refuses every write.
    if let Some(lost) = observed
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::QUORUM_LOST && c.status == "True")
    {
        ready = condition(
            memory,
            conditions::READY,
            false,
            "QuorumLost",
            lost.message.clone(),
        );
    }
    let mut conditions = with_condition(&current.conditions, ready);
    conditions = with_condition(&conditions, progressing);
    for new in observed.conditions {
        conditions = with_condition(&conditions, new);
    }
    if observed.replication.is_none() {
        conditions.retain(|c| !crate::crd::conditions::REPLICATION.contains(&c.type_.as_str()));
    }
    let status = PhoenixMemoryStatus {
        observed_generation: memory.metadata.generation,
        replicas: sts_status.map_or(0, |s| s.replicas),
        ready_replicas: sts_status.and_then(|s| s.ready_replicas).unwrap_or(0),
        selector: Some(selector_string(&memory.name_any())),
        worst_ratio: observed.worst_ratio,
        conditions,
        nodes: observed.nodes,
        observed_at: Some(Time(observed_at)),
        plan: Some(observed.plan),
        last_decision: Some(observed.last_decision),
        last_emergency_job: observed.last_emergency_job,
        replication: observed.replication,
        served_latency: observed.served_latency,
        cache: observed.cache,
    };
    if memory
        .status
        .as_ref()
        .is_some_and(|old| !worth_writing(old, &status))
    {
        ctx.metrics.status_write("deferred");
        return Ok(false);
    }
    write(ctx, memory, status).await
}

/// The spec is invalid: `Ready=False` with the problems; children are left as they were.
/// Returns whether the status changed.
pub async fn invalid(
    ctx: &Context,
    memory: &PhoenixMemory,
    problems: &[String],
) -> Result<bool, Error> {
    not_ready(ctx, memory, "InvalidSpec", &problems.join("; ")).await
}

/// `Ready=False` with `reason` and `message` at the current generation (the rest of the
/// status kept); whether anything was written.
///
/// # Errors
/// The status write failed.
pub async fn not_ready(
    ctx: &Context,
    memory: &PhoenixMemory,
    reason: &str,
    message: &str,
) -> Result<bool, Error> {
    let current = memory.status.clone().unwrap_or_default();
    let status = PhoenixMemoryStatus {
        observed_generation: memory.metadata.generation,
        conditions: with_condition(
            &current.conditions,
            condition(memory, conditions::READY, false, reason, message.into()),
        ),
        ..current
    };
    write(ctx, memory, status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::tests::cond;

    fn node(name: &str, ratio: f64, keys: u64) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            ratio: Some(ratio),
            recent_seconds: Some(ratio * 1e-6),
            baseline_seconds: Some(1e-6),
            samples: 1000,
            keys,
            logical_bytes: keys * 100,
            disk_bytes: keys * 150,
            ..NodeObservation::default()
        }
    }

    fn observed(at: i64, nodes: Vec<NodeObservation>) -> PhoenixMemoryStatus {
        PhoenixMemoryStatus {
            worst_ratio: nodes.iter().filter_map(|n| n.ratio).reduce(f64::max),
            nodes,
            observed_at: Some(Time(Timestamp::from_second(at).expect("time"))),
            conditions: vec![cond("True", 100)],
            plan: Some(CleanupPlan {
                schedule: "5 3 * * *".into(),
                interval_seconds: 86_400,
                reason: "worst ratio 1.00× is flat".into(),
                ..CleanupPlan::default()
            }),
            ..PhoenixMemoryStatus::default()
        }
    }

    #[test]
    fn jitter_is_never_written_and_the_rest_is_written_at_once() {
        let old = observed(1000, vec![node("m-0", 1.00, 2000), node("m-1", 1.02, 2000)]);
        let at = |s: i64| Timestamp::from_second(s).expect("time");
        let worth = |new: &PhoenixMemoryStatus, _now: i64| worth_writing(&old, new);
        // Jitter: ratios and sizes within 10%, a new message, a later scrape.
        let mut jitter = observed(1010, vec![node("m-0", 1.08, 2100), node("m-1", 0.99, 1950)]);
        jitter.conditions[0].message = "worst ratio 1.04×".into();
        if let Some(plan) = jitter.plan.as_mut() {
            plan.reason = "worst ratio 1.04× is flat".into();
        }
        assert!(!worth(&jitter, 1010));
        // ... however old the figures in status are: no heartbeat writes (their age is a
        // metric).
        let mut much_later = jitter.clone();
        much_later.observed_at = Some(Time(at(1000 + 86_400)));
        assert!(!worth(&much_later, 1000 + 86_400));
        // A ratio, a baseline or a size that moves by 10%: at once.
        let ratio = observed(1010, vec![node("m-0", 1.11, 2000), node("m-1", 1.02, 2000)]);
        assert!(worth(&ratio, 1010));
        let mut baseline = old.clone();
        baseline.nodes[1].baseline_seconds = Some(1.2e-6);
        assert!(worth(&baseline, 1010));
        let keys = observed(1010, vec![node("m-0", 1.00, 2200), node("m-1", 1.02, 2000)]);
        assert!(worth(&keys, 1010));
        // What decisions and readers act on: at once.
        let mut condition = old.clone();
        condition.conditions[0].status = "False".into();
        assert!(worth(&condition, 1010));
        let mut plan = old.clone();
        if let Some(plan) = plan.plan.as_mut() {
            plan.interval_seconds = 60;
        }
        assert!(worth(&plan, 1010));
        let mut cleaned = old.clone();
        cleaned.nodes[0].last_cleanup = Some(Time(at(1_764_180_000)));
        assert!(worth(&cleaned, 1010));
        let mut stale = old.clone();
        stale.nodes[0].stale_reason = Some("unreachable".into());
        assert!(worth(&stale, 1010));
        let fewer = observed(1010, vec![node("m-0", 1.00, 2000)]);
        assert!(worth(&fewer, 1010));
        // A stale node whose reason only changes its figures is jitter too.
        let mut stale_old = old.clone();
        stale_old.nodes[0].stale_reason = Some("probe 31 s old".into());
        let mut stale_new = stale_old.clone();
        stale_new.nodes[0].stale_reason = Some("probe 32 s old".into());
        assert!(!worth_writing(&stale_old, &stale_new));
        // Status from before `observedAt` existed is rewritten.
        let mut unknown_age = old.clone();
        unknown_age.observed_at = None;
        assert!(worth_writing(&unknown_age, &old));
    }
}
