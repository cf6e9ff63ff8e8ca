//! Events for what a reconcile changed: a node newly corrupted, the plan, an emergency Job,
//! a condition turning True, `Degraded` turning False. Steady state publishes nothing.

use super::conditions::turned_true;
use super::context::{Context, reasons};
use super::events::Kind as EventType;
use super::status::Update;
use crate::crd::{PhoenixMemory, PhoenixMemoryStatus, conditions};
use crate::policy::{Decision, Rule};

/// Publishes the Events for the change from `before` (the status the reconcile started
/// from) to `after`.
pub async fn what_changed(
    ctx: &Context,
    memory: &PhoenixMemory,
    before: &PhoenixMemoryStatus,
    after: &Update,
    decision: &Decision,
) {
    let publish =
        |kind, reason: &'static str, note: String| ctx.events.publish(memory, kind, reason, note);
    let replicas = memory.spec.replicas;
    if replicas >= 2
        && replicas % 2 == 0
        && before.observed_generation != memory.metadata.generation
    {
        let note = format!(
            "replicas {replicas} is even: a group of {replicas} survives {} node(s) down, as \
             one of {} does; an odd count buys the same safety with one node less",
            (replicas - 1) / 2,
            replicas - 1
        );
        publish(EventType::Warning, reasons::EVEN_REPLICAS, note).await;
    }
    let newly_corrupted: Vec<&str> = after
        .nodes
        .iter()
        .filter(|n| n.corrupted)
        .filter(|n| !before.nodes.iter().any(|p| p.name == n.name && p.corrupted))
        .map(|n| n.name.as_str())
        .collect();
    if !newly_corrupted.is_empty() {
        let note = format!(
            "{} found corruption in its data: unready, serving what it can read; restore \
             its volume (see status.nodes[].staleReason)",
            newly_corrupted.join(", ")
        );
        publish(EventType::Warning, reasons::NODE_CORRUPTED, note).await;
    }
    // The first plan comes with the `Applied` Event of the new CronJob; changes get their own.
    let plan = &after.plan;
    if let Some(old_plan) = before.plan.as_ref()
        && (&old_plan.schedule, old_plan.interval_seconds)
            != (&plan.schedule, plan.interval_seconds)
    {
        let cadence = match plan.runs_every_seconds {
            Some(every) if every != plan.interval_seconds => {
                format!("every {every} s; decided {} s", plan.interval_seconds)
            }
            _ => format!("{} s", plan.interval_seconds),
        };
        let note = format!(
            "cleanup schedule {} → {} ({cadence}): {}",
            old_plan.schedule, plan.schedule, plan.reason
        );
        publish(EventType::Normal, reasons::PLAN_CHANGED, note).await;
    }
    if let Some(job) = &after.new_emergency_job
        && before.last_emergency_job.as_ref().map(|j| &j.name) != Some(&job.name)
    {
        let note = format!("created Job {}: {}", job.name, decision.reason);
        publish(EventType::Warning, reasons::EMERGENCY_CLEANUP, note).await;
    }
    let capacity = |status: Option<&crate::crd::CacheStatus>| status.map(|c| c.capacity.clone());
    if let Some(raised) = &after.cache
        && capacity(before.cache.as_ref()) != Some(raised.capacity.clone())
    {
        let note = format!(
            "cacheCapacity {} → {} (node.autoCache.max {}), one node at a time: {}",
            capacity(before.cache.as_ref()).unwrap_or_else(|| memory
                .spec
                .node
                .cache_capacity
                .clone()),
            raised.capacity,
            memory
                .spec
                .node
                .auto_cache
                .as_ref()
                .map_or("-", |a| a.max.as_str()),
            raised.reason
        );
        publish(EventType::Normal, reasons::CACHE_RAISED, note).await;
    } else if decision.rule == Rule::CachePressure
        && decision.cache.is_some_and(|c| c.raise_to.is_none())
        && before
            .last_decision
            .as_ref()
            .is_none_or(|d| d.rule != Rule::CachePressure.as_str())
    {
        publish(
            EventType::Warning,
            reasons::CACHE_RECOMMENDED,
            decision.reason.clone(),
        )
        .await;
    }
    let old = &before.conditions;
    for (type_, reason) in [
        (conditions::DEGRADED, reasons::DEGRADED),
        (conditions::METRICS_STALE, reasons::METRICS_STALE),
        (
            conditions::CLEANUP_INEFFECTIVE,
            reasons::CLEANUP_INEFFECTIVE,
        ),
        (conditions::QUORUM_LOST, reasons::QUORUM_LOST),
        (conditions::DIVERGED, reasons::DIVERGED),
    ] {
        if let Some(message) = turned_true(old, &after.conditions, type_) {
            publish(EventType::Warning, reason, message).await;
        }
    }
    let was_degraded = old
        .iter()
        .any(|c| c.type_ == conditions::DEGRADED && c.status == "True");
    if was_degraded && !decision.degraded {
        let note = format!(
            "worst ratio {} is below the recover threshold {:.2}×; now: {}",
            decision
                .worst_ratio
                .map_or_else(|| "-".to_string(), |r| format!("{r:.2}×")),
            memory.spec.cleanup.recover_threshold,
            decision.reason
        );
        publish(EventType::Normal, reasons::RECOVERED, note).await;
    }
}
