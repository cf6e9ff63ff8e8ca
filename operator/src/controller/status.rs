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
    Ok(true)
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

/// Every child applied: `Ready=True`, replicas from the StatefulSet, and what was observed
/// and decided. Returns whether it wrote.
pub async fn ready(
    ctx: &Context,
    memory: &PhoenixMemory,
    namespace: &str,
    statefulset: &StatefulSet,
    observed: Observed,
) -> Result<bool, Error> {
    let current = memory.status.clone().unwrap_or_default();
    let sts_status = statefulset.status.as_ref();
    let mut conditions = with_condition(
        &current.conditions,
        condition(
            memory,
            conditions::READY,
            true,
            "Reconciled",
            "every child is applied".into(),
        ),
    );
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
        plan: Some(observed.plan),
        last_decision: Some(observed.last_decision),
        last_emergency_job: observed.last_emergency_job,
    };
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
    let current = memory.status.clone().unwrap_or_default();
    let status = PhoenixMemoryStatus {
        observed_generation: memory.metadata.generation,
        conditions: with_condition(
            &current.conditions,
            condition(
                memory,
                conditions::READY,
                false,
                "InvalidSpec",
                problems.join("; "),
            ),
        ),
        ..current
    };
    write(ctx, memory, namespace, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
