//! Observe → decide → act for one memory's cleanup.
//!
//! - **observe**: list the memory's pods, scrape each ready one's `/metrics` at its pod IP
//!   and `http` container port; a missing, unready or silent node is a stale observation;
//! - **history**: what was decided before, read back from status (the cadence in force,
//!   `Degraded`, the last emergency Job, cleanups in a row that did not help);
//! - **decide**: the pure [`crate::schedule::decide`];
//! - **act**: the caller builds the CronJob with the decided cadence; this module creates
//!   the emergency Job (deterministic name, an existing one adopted) and works out the
//!   status, conditions and Events of the decision.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::status::condition;
use super::{Context, Error};
use crate::build::{self, Inputs, NODE_PORT};
use crate::crd::{
    CleanupMode, CleanupPlan, Decision as DecisionRecord, EmergencyJob, NodeObservation,
    PhoenixMemory, PhoenixMemoryStatus, conditions,
};
use crate::schedule::{self, Decision, History, INEFFECTIVE_LIMIT, Observation, PolicySpec};
use crate::validate::ValidSpec;

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 3339 of a Unix time (UTC, whole seconds).
pub fn rfc3339(unix: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The Unix time of an RFC 3339 timestamp.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second() as f64)
}

/// The policy's view of a validated spec.
pub fn policy_spec(valid: &ValidSpec) -> PolicySpec {
    let cleanup = &valid.spec.cleanup;
    PolicySpec {
        degradation: cleanup.degradation_threshold,
        recover: cleanup.recover_threshold,
        emergency: cleanup.emergency_threshold,
        min_interval: valid.min_interval,
        max_interval: valid.max_interval,
        dry_run: jobs_off(valid).is_some(),
    }
}

/// Why no cleanup Job may run (the CronJob is suspended and no emergency Job is made), if so.
pub fn jobs_off(valid: &ValidSpec) -> Option<&'static str> {
    let cleanup = &valid.spec.cleanup;
    if !cleanup.enabled {
        Some("Disabled")
    } else if cleanup.mode == CleanupMode::DryRun {
        Some("DryRun")
    } else if cleanup.suspend {
        Some("Suspended")
    } else {
        None
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn http_port(pod: &Pod) -> i32 {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("http"))
        })
        .map_or(NODE_PORT, |p| p.container_port)
}

/// A node to scrape: its URL, and whether its pod is ready. An unready pod with an IP is
/// scraped too, so that a node that is unready because it found corruption says so; its
/// figures never reach the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `http://IP:PORT`.
    pub url: String,
    /// The pod's Ready condition.
    pub ready: bool,
}

/// Where to scrape each expected node (`name-0` … `name-{replicas-1}`), or why not.
pub fn targets(memory: &str, replicas: i32, pods: &[Pod]) -> Vec<(String, Result<Target, String>)> {
    (0..replicas.max(0))
        .map(|ordinal| {
            let node = format!("{memory}-{ordinal}");
            let target = match pods.iter().find(|p| p.name_any() == node) {
                None => Err("no ready pod".to_string()),
                Some(pod) => match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                    None if !pod_ready(pod) => Err("pod not ready".to_string()),
                    None => Err("pod has no IP".to_string()),
                    Some(ip) => Ok(Target {
                        url: if ip.contains(':') {
                            format!("http://[{ip}]:{}", http_port(pod))
                        } else {
                            format!("http://{ip}:{}", http_port(pod))
                        },
                        ready: pod_ready(pod),
                    }),
                },
            };
            (node, target)
        })
        .collect()
}

/// A memory's last observation, with what it was taken for.
#[derive(Clone, Debug)]
pub struct Observed {
    at: std::time::Instant,
    generation: Option<i64>,
    ready_replicas: i32,
    observations: Vec<Observation>,
}

/// The memory's observations, scraped at most about once per `interval`: a reconcile that
/// comes sooner (woken by its own status write or a child's change) for the same generation
/// and ready replicas reuses the last ones. Without this, each status write woke a
/// reconcile that scraped figures which had moved again, and wrote again.
///
/// # Errors
/// Listing the pods failed.
pub async fn observe_at_most_every(
    ctx: &Context,
    namespace: &str,
    memory: &PhoenixMemory,
    (ready_replicas, present_replicas): (i32, i32),
    interval: Duration,
) -> Result<Vec<Observation>, Error> {
    let key = format!("{namespace}/{}", memory.name_any());
    let generation = memory.metadata.generation;
    // Three quarters: a requeue after `interval` must find the last observation old enough.
    let reuse_within = interval.mul_f64(0.75);
    let cached = ctx
        .observed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .filter(|last| {
            last.at.elapsed() < reuse_within
                && last.generation == generation
                && last.ready_replicas == ready_replicas
        })
        .map(|last| last.observations.clone());
    if let Some(observations) = cached {
        return Ok(observations);
    }
    let observations = observe(ctx, namespace, memory, (ready_replicas, present_replicas)).await?;
    ctx.observed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            key,
            Observed {
                at: std::time::Instant::now(),
                generation,
                ready_replicas,
                observations: observations.clone(),
            },
        );
    Ok(observations)
}

/// Scrapes every expected node of `memory`.
///
/// # Errors
/// Listing the pods failed.
pub async fn observe(
    ctx: &Context,
    namespace: &str,
    memory: &PhoenixMemory,
    (ready_replicas, present_replicas): (i32, i32),
) -> Result<Vec<Observation>, Error> {
    let replicas = memory.spec.replicas;
    if replicas <= 0 {
        return Ok(Vec::new());
    }
    let name = memory.name_any();
    // No pod yet (a new memory): nothing to scrape, no list to make. Unready pods are
    // listed and scraped too: a node that found corruption is unready and must say why.
    let listed = if ready_replicas > 0 || present_replicas > 0 {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        pods.list(&ListParams::default().labels(&build::selector_string(&name)))
            .await?
            .items
    } else {
        Vec::new()
    };
    let mut observations = Vec::new();
    let mut scrape = Vec::new();
    let mut unready = std::collections::BTreeSet::new();
    for (node, target) in targets(&name, replicas, &listed) {
        match target {
            Ok(target) => {
                if !target.ready {
                    unready.insert(node.clone());
                }
                scrape.push((node, target.url));
            }
            Err(reason) => observations.push(Observation::Stale { node, reason }),
        }
    }
    let scraped = crate::observe::scrape_all(
        &ctx.http,
        &scrape,
        ctx.settings.scrape_timeout,
        &ctx.settings.freshness,
    )
    .await;
    observations.extend(scraped.into_iter().map(|observation| match observation {
        Observation::Fresh(report) if unready.contains(&report.node) => Observation::Stale {
            node: report.node,
            reason: "pod not ready".into(),
        },
        Observation::Stale { node, reason } if unready.contains(&node) => Observation::Stale {
            reason: format!("pod not ready: {reason}"),
            node,
        },
        other => other,
    }));
    observations.sort_by(|a, b| node_of(a).cmp(node_of(b)));
    for observation in &observations {
        ctx.metrics.scraped(match observation {
            Observation::Fresh(_) => "fresh",
            Observation::Stale { .. } => "stale",
        });
    }
    Ok(observations)
}

fn node_of(observation: &Observation) -> &str {
    match observation {
        Observation::Fresh(r) => &r.node,
        Observation::Stale { node, .. } => node,
    }
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Status entries for the observations, counting cleanups that did not help: a node's count
/// goes up by one for each new cleanup (a new `lastCleanup` time) that did not lower its
/// ratio, and back to zero after one that did.
pub fn node_statuses(
    observations: &[Observation],
    previous: &[NodeObservation],
    recover: f64,
) -> Vec<NodeObservation> {
    observations
        .iter()
        .map(|observation| {
            let before = previous.iter().find(|p| p.name == node_of(observation));
            let carried = |name: &str| NodeObservation {
                name: name.to_string(),
                last_cleanup: before.and_then(|b| b.last_cleanup.clone()),
                last_cleanup_effect: before.and_then(|b| b.last_cleanup_effect.clone()),
                ineffective_cleanups: before.map_or(0, |b| b.ineffective_cleanups),
                ..NodeObservation::default()
            };
            match observation {
                Observation::Stale { node, reason } => NodeObservation {
                    stale_reason: Some(reason.clone()),
                    corrupted: reason.contains(crate::observe::CORRUPTED),
                    ..carried(node)
                },
                Observation::Fresh(report) => {
                    let mut out = NodeObservation {
                        ratio: Some(round(report.ratio, 2)),
                        recent_seconds: report.recent_seconds,
                        baseline_seconds: report.baseline_seconds,
                        samples: report.samples,
                        keys: report.keys,
                        logical_bytes: report.logical_bytes,
                        disk_bytes: report.disk_bytes,
                        ..carried(&report.node)
                    };
                    if let Some(cleanup) = report.last_cleanup {
                        // A node reports the ratio after a cleanup once it has settled, so
                        // a cleanup is judged when its effect first appears.
                        let at = rfc3339(cleanup.at_unix);
                        let effect = match (cleanup.ratio_before, cleanup.ratio_after) {
                            (Some(b), Some(a)) => Some(format!("{b:.2}→{a:.2}")),
                            _ => None,
                        };
                        let unjudged = out.last_cleanup.as_deref() != Some(at.as_str())
                            || out.last_cleanup_effect.is_none();
                        if unjudged && effect.is_some() {
                            out.ineffective_cleanups = match cleanup.helped(recover) {
                                Some(true) => 0,
                                Some(false) => out.ineffective_cleanups.saturating_add(1),
                                None => out.ineffective_cleanups,
                            };
                        }
                        out.last_cleanup = Some(at);
                        out.last_cleanup_effect = effect;
                    }
                    out
                }
            }
        })
        .collect()
}

/// What was decided before, from status.
pub fn history(status: &PhoenixMemoryStatus, nodes: &[NodeObservation], now: f64) -> History {
    History {
        interval: status
            .plan
            .as_ref()
            .map(|p| Duration::from_secs(p.interval_seconds)),
        degraded: status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::DEGRADED && c.status == "True"),
        seconds_since_emergency: status
            .last_emergency_job
            .as_ref()
            .and_then(|j| parse_rfc3339(&j.time))
            .map(|at| (now - at).max(0.0)),
        ineffective_cleanups: nodes
            .iter()
            .map(|n| n.ineffective_cleanups)
            .max()
            .unwrap_or(0),
    }
}

/// The newest of `jobs` (a memory's emergency Jobs) created less than `min_interval` before
/// `now`, if any.
pub fn recent_emergency(jobs: &[Job], now: f64, min_interval: Duration) -> Option<EmergencyJob> {
    jobs.iter()
        .filter_map(|job| {
            let created = job.metadata.creation_timestamp.as_ref()?.0;
            Some((created, job.name_any()))
        })
        .filter(|(created, _)| now - (created.as_second() as f64) < min_interval.as_secs_f64())
        .max_by_key(|(created, _)| *created)
        .map(|(created, name)| EmergencyJob {
            name,
            time: created.to_string(),
        })
}

/// Creates the emergency Job for this time slot, or adopts the one a previous attempt made:
/// the slot's own (a 409), or any of the memory's emergency Jobs created within
/// `minInterval` — status may have missed it (a status write that failed after the create)
/// and the slot may have turned since.
///
/// # Errors
/// The API server refused.
pub async fn emergency_job(
    ctx: &Context,
    inputs: &Inputs<'_>,
    cronjob: &CronJob,
    now: f64,
) -> Result<EmergencyJob, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &inputs.namespace());
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        inputs.name(),
        build::EMERGENCY_COMPONENT
    );
    let existing = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    if let Some(recent) = recent_emergency(&existing, now, inputs.valid.min_interval) {
        return Ok(recent);
    }
    let slot = (now as u64) / inputs.valid.min_interval.as_secs().max(1);
    let name = build::emergency_job_name(&inputs.name(), slot);
    let job = build::build_emergency_job(
        inputs,
        cronjob,
        name.clone(),
        inputs.valid.spec.cleanup.degradation_threshold,
    );
    let created = match jobs.create(&PostParams::default(), &job).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.code == 409 => jobs.get(&name).await?,
        Err(error) => return Err(error.into()),
    };
    let time = created
        .metadata
        .creation_timestamp
        .map_or_else(|| rfc3339(now), |t| t.0.to_string());
    ctx.metrics.emergency_job();
    Ok(EmergencyJob { name, time })
}

/// How the decision changed the cadence.
pub fn outcome(decision: &Decision, history: &History, max: Duration) -> &'static str {
    let before = history.interval.unwrap_or(max);
    if decision.emergency_job {
        "emergency-job"
    } else if decision.rule == "stale" {
        "keep"
    } else if decision.interval < before {
        "tighten"
    } else if decision.interval > before {
        "relax"
    } else {
        "keep"
    }
}

/// The decision record for status: the stored one is kept (with its time) while the rule,
/// the cadence and the stale nodes stay the same and nothing new was done, so a steady
/// state does not rewrite status and `tighten`/`relax` stay visible until the next change.
pub fn record(
    decision: &Decision,
    outcome: &str,
    observations: &[Observation],
    previous: Option<&DecisionRecord>,
    now: f64,
) -> DecisionRecord {
    let fresh = observations
        .iter()
        .filter(|o| matches!(o, Observation::Fresh(_)))
        .count();
    let new = DecisionRecord {
        time: rfc3339(now),
        rule: decision.rule.into(),
        outcome: outcome.into(),
        reason: decision.reason.clone(),
        worst_ratio: decision.worst_ratio.map(|r| round(r, 2)),
        data_age_seconds: decision.data_age_seconds.map(|a| round(a, 1)),
        interval_seconds: decision.interval.as_secs(),
        fresh_nodes: u32::try_from(fresh).unwrap_or(u32::MAX),
        stale_nodes: u32::try_from(observations.len() - fresh).unwrap_or(u32::MAX),
    };
    match previous {
        Some(old)
            if old.rule == new.rule
                && old.interval_seconds == new.interval_seconds
                && old.stale_nodes == new.stale_nodes
                && (new.outcome == "keep" || new.outcome == old.outcome)
                && new.outcome != "emergency-job" =>
        {
            old.clone()
        }
        _ => new,
    }
}

/// Whether the maintenance windows allow no schedule that keeps the decided cadence.
fn windows_stretch(valid: &ValidSpec, decision: &Decision) -> bool {
    build::computed_step(valid, decision.interval).is_some_and(|step| {
        build::plan_schedule(step, 0, &valid.spec.cleanup.windows, decision.interval)
            .windows_stretch
    })
}

/// The cleanup plan in force.
pub fn plan(valid: &ValidSpec, cronjob: &CronJob, decision: &Decision, now: f64) -> CleanupPlan {
    let spec = cronjob.spec.as_ref();
    let mut reason = decision.reason.clone();
    if valid.spec.cleanup.schedule.is_some() {
        reason = format!("fixed schedule from spec.cleanup.schedule (the policy says: {reason})");
    }
    if let Some(off) = jobs_off(valid) {
        reason = format!("{off}: the CronJob is suspended (the policy says: {reason})");
    }
    CleanupPlan {
        schedule: spec.map(|s| s.schedule.clone()).unwrap_or_default(),
        time_zone: spec.and_then(|s| s.time_zone.clone()).unwrap_or_default(),
        interval_seconds: decision.interval.as_secs(),
        runs_every_seconds: build::computed_step(valid, decision.interval).map(|step| {
            build::plan_schedule(step, 0, &valid.spec.cleanup.windows, decision.interval)
                .longest_gap
                .as_secs()
        }),
        predicted_breach: decision
            .predicted_breach_seconds
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(|s| rfc3339(now + s)),
        reason,
    }
}

/// The conditions the decision sets: `Degraded`, `MetricsStale`, `CleanupScheduled`,
/// `CleanupIneffective`.
pub fn decision_conditions(
    memory: &PhoenixMemory,
    valid: &ValidSpec,
    observations: &[Observation],
    decision: &Decision,
    history: &History,
    plan: &CleanupPlan,
) -> Vec<Condition> {
    let stale = schedule::stale_nodes(observations);
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
            "RatioAboveThreshold",
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
    let scheduled = match jobs_off(valid) {
        Some(off) => condition(
            memory,
            conditions::CLEANUP_SCHEDULED,
            false,
            off,
            format!("{off}: the CronJob is suspended"),
        ),
        None => match plan.runs_every_seconds {
            Some(longest)
                if longest > decision.interval.as_secs() && windows_stretch(valid, decision) =>
            {
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
mod tests {
    use super::*;
    use crate::schedule::{LastCleanup, NodeReport};

    fn job(name: &str, created: i64) -> Job {
        Job {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
                )),
                ..Default::default()
            },
            ..Job::default()
        }
    }

    #[test]
    fn an_emergency_job_within_min_interval_is_adopted_whatever_its_slot() {
        let min = Duration::from_secs(900);
        let jobs = [
            job("mem-emergency-1", 1_000),
            job("mem-emergency-2", 1_800),
            job("mem-emergency-0", 100),
        ];
        // 2,000: the Job of 1,800 is 200 s old (another slot than now's, 2): adopted.
        let adopted = recent_emergency(&jobs, 2_000.0, min).expect("recent");
        assert_eq!(adopted.name, "mem-emergency-2");
        assert_eq!(adopted.time, rfc3339(1_800.0));
        // 2,700: the newest is exactly minInterval old: a new Job may run.
        assert_eq!(recent_emergency(&jobs, 2_700.0, min), None);
        assert_eq!(recent_emergency(&[], 2_000.0, min), None);
    }

    fn fresh(node: &str, ratio: f64, cleanup: Option<(f64, f64, f64)>) -> Observation {
        Observation::Fresh(NodeReport {
            node: node.into(),
            ratio,
            last_cleanup: cleanup.map(|(at, before, after)| LastCleanup {
                at_unix: at,
                ratio_before: Some(before),
                ratio_after: Some(after),
            }),
            ..NodeReport::default()
        })
    }

    #[test]
    fn each_new_cleanup_that_did_not_help_is_counted_once() {
        let first = node_statuses(&[fresh("m-0", 6.0, Some((100.0, 6.0, 5.9)))], &[], 1.5);
        assert_eq!(first[0].ineffective_cleanups, 1);
        assert_eq!(first[0].last_cleanup_effect.as_deref(), Some("6.00→5.90"));
        // The same cleanup seen again is not counted again.
        let again = node_statuses(&[fresh("m-0", 6.0, Some((100.0, 6.0, 5.9)))], &first, 1.5);
        assert_eq!(again[0].ineffective_cleanups, 1);
        let second = node_statuses(&[fresh("m-0", 6.0, Some((200.0, 6.0, 6.1)))], &again, 1.5);
        assert_eq!(second[0].ineffective_cleanups, 2);
        // A stale scrape keeps the count and shows no ratio.
        let stale = node_statuses(
            &[Observation::Stale {
                node: "m-0".into(),
                reason: "unreachable".into(),
            }],
            &second,
            1.5,
        );
        assert_eq!((stale[0].ineffective_cleanups, stale[0].ratio), (2, None));
        // A cleanup whose effect is not in yet (the node is settling) is judged when it is.
        let settling = node_statuses(
            &[Observation::Fresh(NodeReport {
                node: "m-0".into(),
                ratio: 6.0,
                last_cleanup: Some(LastCleanup {
                    at_unix: 300.0,
                    ratio_before: Some(6.0),
                    ratio_after: None,
                }),
                ..NodeReport::default()
            })],
            &stale,
            1.5,
        );
        assert_eq!(
            (
                settling[0].ineffective_cleanups,
                &settling[0].last_cleanup_effect
            ),
            (2, &None)
        );
        let helped = node_statuses(
            &[fresh("m-0", 1.1, Some((300.0, 6.0, 1.1)))],
            &settling,
            1.5,
        );
        assert_eq!(helped[0].ineffective_cleanups, 0);
        let history = history(&PhoenixMemoryStatus::default(), &second, 0.0);
        assert_eq!(history.ineffective_cleanups, 2);
    }

    #[test]
    fn missing_and_ip_less_pods_are_not_scraped_and_unready_ones_are_marked() {
        let pod = |name: &str, ready: bool, ip: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "node", "ports": [{"name": "http", "containerPort": 9999}]}]},
                "status": {
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
                }
            }))
            .expect("pod")
        };
        let pods = [
            pod("m-0", true, Some("127.0.0.2")),
            pod("m-1", false, Some("127.0.0.3")),
            pod("m-2", true, None),
            pod("m-9", true, Some("127.0.0.9")),
        ];
        let targets = targets("m", 4, &pods);
        let target = |url: &str, ready| {
            Ok(Target {
                url: url.into(),
                ready,
            })
        };
        assert_eq!(targets[0].1, target("http://127.0.0.2:9999", true));
        // Scraped so that it can say why it is unready; never decided on.
        assert_eq!(targets[1].1, target("http://127.0.0.3:9999", false));
        assert_eq!(targets[2].1, Err("pod has no IP".into()));
        assert_eq!(targets[3].1, Err("no ready pod".into()));
        assert_eq!(targets.len(), 4, "m-9 is not one of the 4 replicas");
    }

    #[test]
    fn a_steady_decision_keeps_its_record_and_a_change_replaces_it() {
        let decision = Decision {
            interval: Duration::from_secs(900),
            emergency_job: false,
            degraded: true,
            predicted_breach_seconds: None,
            rule: "degraded",
            reason: "m-0 at 2.5×".into(),
            worst_ratio: Some(2.5),
            data_age_seconds: Some(1.0),
        };
        let obs = [fresh("m-0", 2.5, None)];
        let first = record(&decision, "tighten", &obs, None, 1000.0);
        let later = record(&decision, "tighten", &obs, Some(&first), 2000.0);
        assert_eq!(later, first);
        let kept = record(&decision, "keep", &obs, Some(&first), 2500.0);
        assert_eq!(
            kept.outcome, "tighten",
            "a later keep does not hide the change"
        );
        let flat = Decision {
            rule: "flat",
            interval: Duration::from_secs(86_400),
            ..decision.clone()
        };
        let relaxed = record(&flat, "relax", &obs, Some(&first), 3000.0);
        assert_ne!(relaxed.time, first.time);
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:16:40Z"), Some(1000.0));
    }
}
