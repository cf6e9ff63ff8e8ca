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
use super::{conditions, emergency, explain, nodes, replication, status};
use crate::children::{self, Inputs};
use crate::crd::{
    CacheStatus, EmergencyJob, PhoenixMemory, PhoenixMemoryStatus, conditions as crd_conditions,
};
use crate::plan::{self, JobsOff, Schedule};
use crate::validate::{self, ValidSpec};

/// How often a memory whose child the API server refused is tried again: a calm, fixed pace
/// (the same after an operator restart), not a backoff that starts over at half a second.
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);

/// One reconcile: validate → the group (replicated memories) → apply the serving children
/// → the membership step → observe → decide → plan → act (CronJob, emergency Job) →
/// status → Events.
async fn reconcile_once(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(valid) = validated(&ctx, &memory).await? else {
        return Ok(Action::await_change());
    };
    let it = Reconciling::new(&ctx, &memory, &valid)?;
    let group = group_of(&it).await?;
    let before_replication = it.before.replication.as_ref();
    let sizing = replication::sizing(valid.spec.replicas, &group, before_replication);
    let mut applied = apply::serving(&ctx, &it.key, &memory, &valid, sizing).await?;
    let membership_pending = membership(&it, &group, &applied).await;
    let observed = nodes::observe(&ctx, &it.key, &memory, &applied.statefulset).await;
    let observations = &observed.observations;
    let decided = decision::decide(&valid, &it.before, observations, it.now);
    let interval = decided.decision.interval;
    let mut schedule = it.schedule(interval);
    let at_risk = replication::quorum_at_risk(&group);
    if at_risk.is_some() && schedule.jobs_off.is_none() {
        schedule.jobs_off = Some(JobsOff::QuorumAtRisk);
    }
    let emergency = act(&it, &mut applied, &schedule, &decided, sizing).await?;
    let plan = plan::cleanup_plan(&schedule, &decided.decision, it.now);
    let mut conditions =
        conditions::decision_conditions(&memory, &valid, observations, &decided, &schedule, &plan);
    if let Some(why) = &at_risk
        && schedule.jobs_off == Some(JobsOff::QuorumAtRisk)
    {
        conditions.retain(|c| c.type_ != crd_conditions::CLEANUP_SCHEDULED);
        conditions.push(conditions::condition(
            &memory,
            crd_conditions::CLEANUP_SCHEDULED,
            false,
            JobsOff::QuorumAtRisk.as_str(),
            format!("{why}: the CronJob is suspended and no emergency Job is made"),
        ));
    }
    let replicated = replication::conditions(&memory, &group);
    let held: Vec<(&str, bool)> = replicated
        .iter()
        .map(|c| (c.type_.as_str(), c.status == "True"))
        .collect();
    ctx.metrics
        .replication_conditions(&it.namespace, &it.name, &held);
    conditions.extend(replicated);
    let mut update = status::Update::new(&it.before, &decided, plan, conditions, emergency);
    update.replication = replication::status(&group).map(|mut replication| {
        for node in &mut replication.nodes {
            node.corrupted = decided
                .nodes
                .iter()
                .any(|n| n.name == node.name && n.corrupted);
        }
        replication
    });
    if valid.auto_cache_max_bytes.is_none() {
        update.cache = None;
    }
    let raised = decided.decision.cache.and_then(|advice| advice.raise_to);
    if let Some(to) = raised {
        // The next reconcile applies it: the ConfigMap and the memory with it, and the
        // StatefulSet's rolling update restarts one node at a time.
        update.cache = Some(CacheStatus {
            capacity: crate::policy::quantity(to),
            raised_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(it.now),
            reason: decided.decision.reason.clone(),
        });
    }
    let statefulset = &applied.statefulset;
    status::ready(&ctx, &memory, statefulset, update.clone(), observed.taken).await?;
    explain::what_changed(&ctx, &memory, &it.before, &update, &decided.decision).await;
    let mut next = if nodes::nothing_to_observe(&observed, statefulset) {
        ctx.settings.resync
    } else {
        ctx.settings.resync.min(ctx.settings.observe_interval)
    };
    if membership_pending || raised.is_some() {
        next = next.min(MEMBERSHIP_RETRY);
    }
    Ok(Action::requeue(next))
}

/// How soon a memory whose group is still changing is reconciled again.
const MEMBERSHIP_RETRY: Duration = Duration::from_secs(2);

/// A replicated memory's group as its nodes report it (empty for a single node: nothing
/// is asked).
async fn group_of(it: &Reconciling<'_>) -> Result<replication::Group, Error> {
    let (ctx, memory) = (it.ctx, it.memory);
    if !replication::wanted(memory) {
        return Ok(replication::Group::default());
    }
    // The admin token the last check of the children kept, else the Secret's.
    let kept = ctx.memories.with(&it.key, |state| {
        state.checked.as_ref().map(|c| c.tokens.admin.clone())
    });
    let token = match kept {
        Some(token) => token,
        None => apply::tokens(ctx, &it.namespace, &it.name).await?.admin,
    };
    let asked = memory
        .spec
        .replicas
        .max(replication::live_replicas(ctx, memory));
    Ok(replication::observe(ctx, memory, &token, asked).await)
}

/// Takes the membership step due, if any (with an Event); returns whether the group is
/// still changing (or waiting to), so the memory is reconciled again soon.
async fn membership(it: &Reconciling<'_>, group: &replication::Group, applied: &Applied) -> bool {
    if group.nodes.is_empty() {
        return false;
    }
    let (ctx, memory) = (it.ctx, it.memory);
    let wanted = u64::try_from(it.valid.spec.replicas.max(0)).unwrap_or(0);
    match replication::next_step(wanted, group) {
        Ok(None) => false,
        Ok(Some(step)) => {
            match replication::take(ctx, memory, group, &step, &applied.tokens.admin).await {
                Ok(()) => {
                    tracing::info!(memory = %it.name, %step, "membership changed");
                    ctx.metrics.membership_step("done");
                    let note = format!("{step}");
                    ctx.events
                        .publish(memory, EventType::Normal, reasons::MEMBERSHIP, note)
                        .await;
                }
                Err(message) => {
                    tracing::warn!(memory = %it.name, %message, "membership change failed");
                    ctx.metrics.membership_step("failed");
                    ctx.events
                        .publish(
                            memory,
                            EventType::Warning,
                            reasons::MEMBERSHIP_BLOCKED,
                            message,
                        )
                        .await;
                }
            }
            true
        }
        Err(waiting) => {
            tracing::debug!(memory = %it.name, %waiting, "membership change waits");
            true
        }
    }
}

/// The memory a reconcile works on, with what every step reads.
struct Reconciling<'a> {
    ctx: &'a Context,
    memory: &'a PhoenixMemory,
    valid: &'a ValidSpec,
    key: Key,
    namespace: String,
    name: String,
    /// The time of this reconcile, whole seconds (as status shows it).
    now: Timestamp,
    /// The status it started from.
    before: PhoenixMemoryStatus,
}

impl<'a> Reconciling<'a> {
    /// The schedule for `interval`, planned once per generation and cadence (the calendar
    /// maths is most of a steady reconcile's work otherwise).
    fn schedule(&self, interval: Duration) -> Schedule {
        let generation = self.memory.metadata.generation;
        let known = self.ctx.memories.with(&self.key, |state| {
            state
                .schedule
                .as_ref()
                .filter(|(g, i, _)| *g == generation && *i == interval)
                .map(|(_, _, schedule)| schedule.clone())
        });
        known.unwrap_or_else(|| {
            let schedule = plan::schedule(self.valid, &self.namespace, &self.name, interval);
            let kept = (generation, interval, schedule.clone());
            self.ctx
                .memories
                .with(&self.key, |state| state.schedule = Some(kept));
            schedule
        })
    }

    fn new(
        ctx: &'a Context,
        memory: &'a PhoenixMemory,
        valid: &'a ValidSpec,
    ) -> Result<Reconciling<'a>, Error> {
        let now = Timestamp::now();
        Ok(Reconciling {
            ctx,
            memory,
            valid,
            key: Key::from_obj(memory),
            namespace: memory.namespace().ok_or(Error::NoNamespace)?,
            name: memory.name_any(),
            now: now.round(Unit::Second).unwrap_or(now),
            before: memory.status.clone().unwrap_or_default(),
        })
    }
}

/// Validate: the checked spec, or `None` after reporting `InvalidSpec` (children are left
/// as they are).
async fn validated(ctx: &Context, memory: &PhoenixMemory) -> Result<Option<ValidSpec>, Error> {
    match validate::validate_named(&memory.name_any(), &memory.spec) {
        Ok(valid) => {
            let raised = memory
                .status
                .as_ref()
                .and_then(|s| s.cache.as_ref())
                .map(|c| c.capacity.as_str());
            Ok(Some(valid.with_raised_cache(raised)))
        }
        Err(problems) => {
            if status::invalid(ctx, memory, &problems).await? {
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
async fn act(
    it: &Reconciling<'_>,
    applied: &mut Applied,
    schedule: &Schedule,
    decided: &Decided,
    sizing: replication::Sizing,
) -> Result<Option<EmergencyJob>, Error> {
    let (ctx, memory) = (it.ctx, it.memory);
    let interval = decided.decision.interval.as_secs_f64();
    ctx.metrics.decided(decided.decision.rule);
    ctx.metrics.cadence(&it.namespace, &it.name, interval);
    let tokens = applied.tokens.clone();
    let inputs = Inputs::new(memory, it.valid, &ctx.settings.default_image, &tokens)
        .sized(sizing.replicas, sizing.replicated);
    let cronjob = children::build_cronjob(&inputs, schedule);
    apply::cronjob(ctx, &it.key, memory, applied, &cronjob).await?;
    if !applied.written.is_empty() {
        let note = format!("applied {}", applied.written.join(", "));
        ctx.events
            .publish(memory, EventType::Normal, reasons::APPLIED, note)
            .await;
    }
    // No cleanup while the group has no quorum member to spare.
    if !decided.decision.emergency_job || schedule.jobs_off == Some(JobsOff::QuorumAtRisk) {
        return Ok(None);
    }
    Ok(Some(
        emergency::create(ctx, &inputs, &cronjob, it.now).await?,
    ))
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
            let message = rejected.to_string();
            tracing::warn!(memory = %memory.name_any(), %message, "child rejected");
            ctx.metrics.child_rejected();
            if status::not_ready(&ctx, &memory, reasons::CHILD_REJECTED, &message).await? {
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
