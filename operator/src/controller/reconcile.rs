//! The reconcile driver: one named step after another (see the module list in
//! [`super`]), the error policy's backoff, and how a child the API server refuses for good
//! is reported.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{Timestamp, Unit};
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::apply::{self, Applied};
use super::context::{Context, Error, reasons};
use super::decision::{self, Decided};
use super::events::Kind as EventType;
use super::state::Key;
use super::{conditions, emergency, explain, nodes, status};
use crate::children::{self, Inputs};
use crate::crd::{EmergencyJob, PhoenixMemory};
use crate::plan::{self, Schedule};
use crate::validate::{self, ValidSpec};

/// How often a memory whose child the API server refused is tried again: a calm, fixed pace
/// (the same after an operator restart), not a backoff that starts over at half a second.
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);

/// One reconcile: validate → apply the serving children → observe → decide → plan → act
/// (CronJob, emergency Job) → status → Events.
async fn reconcile_once(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = Key::from_obj(&*memory);
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let Some(valid) = validated(&ctx, &memory).await? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now());
    let before = memory.status.clone().unwrap_or_default();
    let mut applied = apply::serving(&ctx, &key, &memory, &valid).await?;
    let observations = nodes::observe(&ctx, &key, &memory, &applied.statefulset).await?;
    let decided = decision::decide(&valid, &before, &observations, now);
    let interval = decided.decision.interval;
    let schedule = plan::schedule(&valid, &namespace, &memory.name_any(), interval);
    let emergency = act(
        &ctx,
        &key,
        &memory,
        &valid,
        &mut applied,
        &schedule,
        &decided,
        now,
    )
    .await?;
    let plan = plan::cleanup_plan(&schedule, &decided.decision, now);
    let conditions =
        conditions::decision_conditions(&memory, &valid, &observations, &decided, &schedule, &plan);
    let update = status::Update {
        worst_ratio: decided
            .decision
            .worst_ratio
            .map(|r| (r * 100.0).round() / 100.0),
        nodes: decided.nodes.clone(),
        plan,
        last_decision: decided.record.clone(),
        last_emergency_job: emergency.clone().or(before.last_emergency_job.clone()),
        conditions,
    };
    status::ready(
        &ctx,
        &memory,
        &namespace,
        &applied.statefulset,
        update.clone(),
        now,
    )
    .await?;
    explain::what_changed(
        &ctx,
        &memory,
        &before,
        &update,
        emergency.as_ref(),
        &decided.decision,
    )
    .await;
    Ok(Action::requeue(
        ctx.settings.resync.min(ctx.settings.observe_interval),
    ))
}

/// Validate: the checked spec, or `None` after reporting `InvalidSpec` (children are left
/// as they are).
async fn validated(ctx: &Context, memory: &PhoenixMemory) -> Result<Option<ValidSpec>, Error> {
    match validate::validate_named(&memory.name_any(), &memory.spec) {
        Ok(valid) => Ok(Some(valid)),
        Err(problems) => {
            let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
            if status::invalid(ctx, memory, &namespace, &problems).await? {
                let note = problems.join("; ");
                ctx.events
                    .publish(memory, EventType::Warning, reasons::INVALID_SPEC, note)
                    .await;
            }
            Ok(None)
        }
    }
}

/// Act: the CronJob on the planned schedule, the `Applied` Event for what was written, and
/// the emergency Job when the policy asks for one (returned).
#[allow(clippy::too_many_arguments)]
async fn act(
    ctx: &Context,
    key: &Key,
    memory: &PhoenixMemory,
    valid: &ValidSpec,
    applied: &mut Applied,
    schedule: &Schedule,
    decided: &Decided,
    now: Timestamp,
) -> Result<Option<EmergencyJob>, Error> {
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    ctx.metrics.decided(decided.decision.rule);
    ctx.metrics.cadence(
        &namespace,
        &memory.name_any(),
        decided.decision.interval.as_secs_f64(),
    );
    let token = applied.token.clone();
    let inputs = Inputs {
        memory,
        valid,
        default_image: &ctx.settings.default_image,
        admin_token: &token,
    };
    let cronjob = children::build_cronjob(&inputs, schedule);
    apply::cronjob(ctx, key, memory, applied, &cronjob).await?;
    if !applied.written.is_empty() {
        let note = format!("applied {}", applied.written.join(", "));
        ctx.events
            .publish(memory, EventType::Normal, reasons::APPLIED, note)
            .await;
    }
    if !decided.decision.emergency_job {
        return Ok(None);
    }
    Ok(Some(emergency::create(ctx, &inputs, &cronjob, now).await?))
}

/// [`reconcile`], timed and counted; success resets the object's backoff.
///
/// # Errors
/// As [`reconcile`].
pub async fn measured(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.health.started();
    let result = reconcile(Arc::clone(&memory), Arc::clone(&ctx)).await;
    ctx.metrics.health.finished();
    ctx.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    if result.is_ok() {
        ctx.memories
            .with(&Key::from_obj(&*memory), |state| state.failures = 0);
    }
    result
}

/// One reconcile (see `reconcile_once`); a child the API server refuses for good becomes
/// `Ready=False`, reason `ChildRejected`, with the server's message and a Warning Event, and
/// is tried again every [`REJECTED_RETRY`].
///
/// # Errors
/// API and build errors; the error policy retries with backoff.
pub async fn reconcile(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    match reconcile_once(Arc::clone(&memory), Arc::clone(&ctx)).await {
        Err(rejected @ Error::Rejected { .. }) => {
            let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
            let message = rejected.to_string();
            tracing::warn!(memory = %memory.name_any(), %message, "child rejected");
            ctx.metrics.child_rejected();
            if status::not_ready(&ctx, &memory, &namespace, reasons::CHILD_REJECTED, &message)
                .await?
            {
                ctx.events
                    .publish(
                        &memory,
                        EventType::Warning,
                        reasons::CHILD_REJECTED,
                        message,
                    )
                    .await;
            }
            Ok(Action::requeue(REJECTED_RETRY))
        }
        other => other,
    }
}

/// Retries a failed reconcile with exponential backoff per object: 0.5 s, 1 s, 2 s, … up to
/// 5 minutes, with jitter so many objects do not retry in step.
pub fn error_policy(memory: Arc<PhoenixMemory>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.memories.with(&Key::from_obj(&*memory), |state| {
        state.failures = state.failures.saturating_add(1);
        state.failures
    });
    let delay = backoff(attempt);
    tracing::warn!(memory = %memory.name_any(), category = error.category(), attempt, ?delay, %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The delay before retry `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 500u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(10))
        .min(300_000);
    Duration::from_millis(base_ms + fastrand::u64(0..=base_ms / 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let base = (500u64 << (attempt - 1).min(10)).min(300_000);
            let delay = backoff(attempt).as_millis() as u64;
            assert!(
                delay >= base && delay <= base + base / 4,
                "attempt {attempt}: {delay} ms"
            );
        }
        assert!(backoff(30) <= Duration::from_millis(375_000));
    }
}
