//! Status: conditions with transition times, observedGeneration, replicas, the selector.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::build::selector_string;
use crate::crd::{
    CleanupPlan, Decision, EmergencyJob, NodeObservation, PhoenixMemory, PhoenixMemoryStatus,
    conditions,
};

/// `conditions` with `new` set: the transition time only changes when the status does.
fn with_condition(current: &[Condition], mut new: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| c.type_ != new.type_)
        .cloned()
        .collect();
    if let Some(old) = current.iter().find(|c| c.type_ == new.type_)
        && old.status == new.status
    {
        new.last_transition_time = old.last_transition_time.clone();
    }
    out.push(new);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// A condition; its transition time is kept from the current one when the status is unchanged
/// (see `with_condition`).
pub(super) fn condition(
    memory: &PhoenixMemory,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: memory.metadata.generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Status fields that may become absent (a merge patch must name them to clear them).
const CLEARABLE: &[&str] = &[
    "observedGeneration",
    "selector",
    "worstRatio",
    "conditions",
    "nodes",
    "plan",
    "lastDecision",
    "lastEmergencyJob",
];

/// Writes `status` unless it is what the object already has; returns whether it wrote.
async fn write(
    ctx: &Context,
    memory: &PhoenixMemory,
    namespace: &str,
    status: PhoenixMemoryStatus,
) -> Result<bool, Error> {
    if memory.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    // A merge patch leaves absent fields as they were: clear what is now unknown.
    let mut body = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    if let Some(fields) = body.as_object_mut() {
        for key in CLEARABLE {
            fields
                .entry(key.to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    let api: Api<PhoenixMemory> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(
        &memory.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": body })),
    )
    .await?;
    ctx.metrics.status_write("written");
    Ok(true)
}

/// How far a node's ratio or baseline must move (relative) to be written before the refresh.
const RATIO_MOVE: f64 = 0.10;
/// How far a node's keys, logical or disk bytes must move (relative) likewise.
const SIZE_MOVE: f64 = 0.10;

/// `status` without the figures that jitter from one scrape to the next: what is left is what
/// decisions, conditions and readers act on.
fn shape(status: &PhoenixMemoryStatus) -> PhoenixMemoryStatus {
    let mut shape = status.clone();
    shape.observed_at = None;
    shape.worst_ratio = None;
    for node in &mut shape.nodes {
        node.ratio = None;
        node.recent_seconds = None;
        node.baseline_seconds = None;
        node.samples = 0;
        node.keys = 0;
        node.logical_bytes = 0;
        node.disk_bytes = 0;
        // Stale or not counts; the reason's text may carry an age.
        node.stale_reason = node.stale_reason.as_ref().map(|_| String::new());
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
/// a reader acts on, a node's figures moved noticeably, or the figures in status are older
/// than `refresh`. Without this, every observe of live nodes wrote status, and each write
/// (a watch event) triggered the next reconcile: 45 writes in 10 s for one idle memory.
pub(super) fn worth_writing(
    old: &PhoenixMemoryStatus,
    new: &PhoenixMemoryStatus,
    now: f64,
    refresh: std::time::Duration,
) -> bool {
    if shape(old) != shape(new) {
        return true;
    }
    let size = |n: u64| Some(n as f64);
    let figures_moved = new.nodes.iter().any(|node| {
        old.nodes
            .iter()
            .find(|o| o.name == node.name)
            .is_none_or(|o| {
                moved(o.ratio, node.ratio) >= RATIO_MOVE
                    || moved(o.baseline_seconds, node.baseline_seconds) >= RATIO_MOVE
                    || moved(size(o.keys), size(node.keys)) >= SIZE_MOVE
                    || moved(size(o.logical_bytes), size(node.logical_bytes)) >= SIZE_MOVE
                    || moved(size(o.disk_bytes), size(node.disk_bytes)) >= SIZE_MOVE
            })
    });
    let age = old
        .observed_at
        .as_deref()
        .and_then(super::cleanup::parse_rfc3339)
        .map(|at| now - at);
    figures_moved || age.is_none_or(|age| age >= refresh.as_secs_f64())
}

/// What the observe → decide step puts in status.
#[derive(Clone, Debug)]
pub struct Observed {
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
}

/// `Ready` and `Progressing` from the StatefulSet once every child is applied: ready when
/// every node is (the memory serves), progressing while nodes are missing, unready or on an
/// older revision.
pub fn rollout_conditions(
    memory: &PhoenixMemory,
    statefulset: &StatefulSet,
) -> (Condition, Condition) {
    let wanted = memory.spec.replicas.max(0);
    let sts = statefulset.status.as_ref();
    let ready = sts.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = sts.and_then(|s| s.updated_replicas).unwrap_or(0);
    let revision_behind =
        sts.is_some_and(|s| s.update_revision.is_some() && s.current_revision != s.update_revision);
    let nodes = format!("every child is applied; {ready} of {wanted} nodes ready");
    let ready_condition = if wanted == 0 {
        condition(
            memory,
            conditions::READY,
            false,
            "ScaledToZero",
            "replicas is 0: no node serves".into(),
        )
    } else if ready >= wanted {
        condition(memory, conditions::READY, true, "NodesReady", nodes.clone())
    } else {
        condition(
            memory,
            conditions::READY,
            false,
            "NodesNotReady",
            nodes.clone(),
        )
    };
    let progressing = if ready < wanted || (updated < wanted && revision_behind) {
        condition(
            memory,
            conditions::PROGRESSING,
            true,
            "RollingOut",
            format!("{nodes}, {updated} on the newest revision"),
        )
    } else {
        condition(memory, conditions::PROGRESSING, false, "Complete", nodes)
    };
    (ready_condition, progressing)
}

/// Every child applied: `Ready` and `Progressing` from the nodes, replicas from the
/// StatefulSet, and what was observed (at `now`, Unix seconds) and decided. Writes only
/// what is worth a write (see `worth_writing`); returns whether it wrote.
pub async fn ready(
    ctx: &Context,
    memory: &PhoenixMemory,
    namespace: &str,
    statefulset: &StatefulSet,
    observed: Observed,
    now: f64,
) -> Result<bool, Error> {
    let current = memory.status.clone().unwrap_or_default();
    let sts_status = statefulset.status.as_ref();
    let (ready, progressing) = rollout_conditions(memory, statefulset);
    let mut conditions = with_condition(&current.conditions, ready);
    conditions = with_condition(&conditions, progressing);
    for new in observed.conditions {
        conditions = with_condition(&conditions, new);
    }
    let status = PhoenixMemoryStatus {
        observed_generation: memory.metadata.generation,
        replicas: sts_status.map_or(0, |s| s.replicas),
        ready_replicas: sts_status.and_then(|s| s.ready_replicas).unwrap_or(0),
        selector: Some(selector_string(&memory.name_any())),
        worst_ratio: observed.worst_ratio,
        conditions,
        nodes: observed.nodes,
        observed_at: Some(super::cleanup::rfc3339(now)),
        plan: Some(observed.plan),
        last_decision: Some(observed.last_decision),
        last_emergency_job: observed.last_emergency_job,
    };
    if memory
        .status
        .as_ref()
        .is_some_and(|old| !worth_writing(old, &status, now, ctx.settings.status_refresh))
    {
        ctx.metrics.status_write("deferred");
        return Ok(false);
    }
    write(ctx, memory, namespace, status).await
}

/// The spec is invalid: `Ready=False` with the problems; children are left as they were.
/// Returns whether the status changed.
pub async fn invalid(
    ctx: &Context,
    memory: &PhoenixMemory,
    namespace: &str,
    problems: &[String],
) -> Result<bool, Error> {
    not_ready(ctx, memory, namespace, "InvalidSpec", &problems.join("; ")).await
}

/// `Ready=False` with `reason` and `message` at the current generation (the rest of the
/// status kept); whether anything was written.
///
/// # Errors
/// The status write failed.
pub async fn not_ready(
    ctx: &Context,
    memory: &PhoenixMemory,
    namespace: &str,
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
    write(ctx, memory, namespace, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_every_node_serves_and_progressing_says_a_rollout_is_under_way() {
        let memory = |replicas: i32| -> PhoenixMemory {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "phoenix.dev/v1alpha1", "kind": "PhoenixMemory",
                "metadata": {"name": "mem", "namespace": "ns", "generation": 2},
                "spec": {"replicas": replicas}
            }))
            .expect("memory")
        };
        let sts = |ready: i32, updated: i32, current: &str, update: &str| -> StatefulSet {
            serde_json::from_value(serde_json::json!({"status": {
                "replicas": 3, "readyReplicas": ready, "updatedReplicas": updated,
                "currentRevision": current, "updateRevision": update
            }}))
            .expect("statefulset")
        };
        let (ready, progressing) = rollout_conditions(&memory(3), &StatefulSet::default());
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NodesNotReady")
        );
        assert_eq!(progressing.status, "True");
        let (ready, progressing) = rollout_conditions(&memory(3), &sts(3, 3, "a", "a"));
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "NodesReady")
        );
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "Complete")
        );
        // A rolling update: every node ready, one still on the old revision.
        let (ready, progressing) = rollout_conditions(&memory(3), &sts(3, 2, "a", "b"));
        assert_eq!(ready.status, "True");
        assert_eq!(progressing.reason, "RollingOut");
        let (ready, _) = rollout_conditions(&memory(0), &sts(0, 0, "a", "a"));
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ScaledToZero")
        );
    }

    fn cond(status: &str, at: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(
                k8s_openapi::jiff::Timestamp::from_second(at).expect("time"),
            ),
        }
    }

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
            observed_at: Some(super::super::cleanup::rfc3339(at as f64)),
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
    fn jittering_figures_wait_for_the_refresh_and_the_rest_is_written_at_once() {
        let refresh = std::time::Duration::from_secs(300);
        let old = observed(1000, vec![node("m-0", 1.00, 2000), node("m-1", 1.02, 2000)]);
        let worth =
            |new: &PhoenixMemoryStatus, now: i64| worth_writing(&old, new, now as f64, refresh);
        // Jitter: ratios and sizes within 10%, a new message, a later scrape.
        let mut jitter = observed(1010, vec![node("m-0", 1.08, 2100), node("m-1", 0.99, 1950)]);
        jitter.conditions[0].message = "worst ratio 1.04×".into();
        if let Some(plan) = jitter.plan.as_mut() {
            plan.reason = "worst ratio 1.04× is flat".into();
        }
        assert!(!worth(&jitter, 1010));
        // ... until the figures in status are as old as the refresh.
        assert!(worth(&jitter, 1000 + 300));
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
        cleaned.nodes[0].last_cleanup = Some("2026-11-26T18:00:00Z".into());
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
        assert!(!worth_writing(&stale_old, &stale_new, 1010.0, refresh));
        // Status from before `observedAt` existed is rewritten.
        let mut unknown_age = old.clone();
        unknown_age.observed_at = None;
        assert!(worth_writing(&unknown_age, &old, 1010.0, refresh));
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let kept = with_condition(&[cond("True", 100)], cond("True", 200));
        assert_eq!(
            kept[0].last_transition_time,
            cond("True", 100).last_transition_time
        );
        let changed = with_condition(&[cond("True", 100)], cond("False", 200));
        assert_eq!(
            changed[0].last_transition_time,
            cond("False", 200).last_transition_time
        );
    }
}
