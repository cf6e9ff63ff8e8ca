//! Conditions: how each is worked out (`Ready` and `Progressing` from the StatefulSet; the
//! decision's `Degraded`, `MetricsStale`, `CleanupScheduled`, `CleanupIneffective`), how a
//! new one replaces the old (the transition time moves only with the status), and which
//! turned True since the last status (for Events).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::decision::Decided;
use crate::crd::{CleanupPlan, PhoenixMemory, conditions};
use crate::plan::Schedule;
use crate::policy::{self, INEFFECTIVE_LIMIT, Observation};
use crate::validate::ValidSpec;

/// `conditions` with `new` set: the transition time only changes when the status does.
pub fn with_condition(current: &[Condition], mut new: Condition) -> Vec<Condition> {
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
pub fn condition(
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

/// The conditions the decision sets: `Degraded`, `MetricsStale`, `CleanupScheduled`,
/// `CleanupIneffective`.
pub fn decision_conditions(
    memory: &PhoenixMemory,
    valid: &ValidSpec,
    observations: &[Observation],
    decided: &Decided,
    schedule: &Schedule,
    plan: &CleanupPlan,
) -> Vec<Condition> {
    let (decision, history) = (&decided.decision, &decided.history);
    let stale = policy::stale_nodes(observations);
    let metrics_stale = if observations.is_empty() {
        condition(
            memory,
            conditions::METRICS_STALE,
            false,
            "NoNodes",
            "the memory has no nodes to observe".into(),
        )
    } else if stale.is_empty() {
        condition(
            memory,
            conditions::METRICS_STALE,
            false,
            "Fresh",
            format!("{} nodes reported fresh metrics", observations.len()),
        )
    } else {
        condition(
            memory,
            conditions::METRICS_STALE,
            true,
            "NodesNotReporting",
            format!(
                "{}; the schedule is kept and no Job is created",
                stale.join("; ")
            ),
        )
    };
    let degraded = if decision.degraded {
        condition(
            memory,
            conditions::DEGRADED,
            true,
            if decision.rule == policy::Rule::CachePressure {
                "CachePressure"
            } else {
                "RatioAboveThreshold"
            },
            decision.reason.clone(),
        )
    } else if decision.rule == policy::Rule::Floor {
        condition(
            memory,
            conditions::DEGRADED,
            false,
            "UnderLatencyFloor",
            decision.reason.clone(),
        )
    } else {
        condition(
            memory,
            conditions::DEGRADED,
            false,
            "WithinThreshold",
            decision.worst_ratio.map_or_else(
                || "no fresh data".to_string(),
                |r| {
                    format!(
                        "worst ratio {r:.2}× (degraded at {:.2}×)",
                        valid.spec.cleanup.degradation_threshold
                    )
                },
            ),
        )
    };
    let scheduled = match schedule.jobs_off {
        Some(off) => condition(
            memory,
            conditions::CLEANUP_SCHEDULED,
            false,
            off.as_str(),
            format!("{}: the CronJob is suspended", off.as_str()),
        ),
        None => match plan.runs_every_seconds {
            Some(longest) if longest > decision.interval.as_secs() && schedule.windows_stretch => {
                condition(
                    memory,
                    conditions::CLEANUP_SCHEDULED,
                    true,
                    "WindowsStretchInterval",
                    format!(
                        "{} ({}): no schedule inside the maintenance windows keeps runs within \
                         {} s; they are up to {longest} s apart: {}",
                        plan.schedule,
                        plan.time_zone,
                        decision.interval.as_secs(),
                        plan.reason
                    ),
                )
            }
            _ => condition(
                memory,
                conditions::CLEANUP_SCHEDULED,
                true,
                "Scheduled",
                format!("{} ({}): {}", plan.schedule, plan.time_zone, plan.reason),
            ),
        },
    };
    let ineffective = if history.ineffective_cleanups >= INEFFECTIVE_LIMIT {
        condition(
            memory,
            conditions::CLEANUP_INEFFECTIVE,
            true,
            "CleanupDidNotHelp",
            decision.reason.clone(),
        )
    } else {
        condition(
            memory,
            conditions::CLEANUP_INEFFECTIVE,
            false,
            "CleanupsEffective",
            format!(
                "{} cleanups in a row did not help (backs off at {INEFFECTIVE_LIMIT})",
                history.ineffective_cleanups
            ),
        )
    };
    vec![degraded, metrics_stale, scheduled, ineffective]
}

/// The message of condition `type_` when it turned from False to True between `before`
/// and `after`. A condition set for the first time is not a change: a new memory whose
/// pods have not started yet gets `MetricsStale=True` without a Warning Event.
pub fn turned_true(before: &[Condition], after: &[Condition], type_: &str) -> Option<String> {
    let was_false = before
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False");
    after
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .filter(|_| was_false)
        .map(|c| c.message.clone())
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// A `Ready` condition with `status` since `at` (Unix seconds).
    pub(crate) fn cond(status: &str, at: i64) -> Condition {
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
