//! The plan: a decided cadence and the spec in, the CronJob's schedule out — the pure step
//! between the policy ([`crate::policy`]) and the builders. The CronJob builder and status
//! both read the one [`Schedule`], so the cron string is worked out once per reconcile.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{CleanupMode, CleanupPlan};
use crate::cron::{self, CronStep};
use crate::policy::Decision;
use crate::validate::ValidSpec;

/// Why no cleanup Job may run (the CronJob is suspended, no emergency Job is made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobsOff {
    /// `cleanup.enabled: false`.
    Disabled,
    /// `cleanup.mode: DryRun`: decisions are recorded, no Job runs.
    DryRun,
    /// `cleanup.suspend: true`.
    Suspended,
    /// A replicated memory's group has no quorum member to spare: cleaning a node now
    /// could stop its writes (see `controller::replication`).
    QuorumAtRisk,
}

impl JobsOff {
    /// The word in status and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            JobsOff::Disabled => "Disabled",
            JobsOff::DryRun => "DryRun",
            JobsOff::Suspended => "Suspended",
            JobsOff::QuorumAtRisk => "QuorumAtRisk",
        }
    }
}

/// Why no cleanup Job may run, if so.
pub fn jobs_off(valid: &ValidSpec) -> Option<JobsOff> {
    let cleanup = &valid.spec.cleanup;
    if !cleanup.enabled {
        Some(JobsOff::Disabled)
    } else if cleanup.mode == CleanupMode::DryRun {
        Some(JobsOff::DryRun)
    } else if cleanup.suspend {
        Some(JobsOff::Suspended)
    } else {
        None
    }
}

/// The cleanup schedule for one cadence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The five-field cron schedule.
    pub cron: String,
    /// Its IANA time zone.
    pub time_zone: String,
    /// The cadence decided.
    pub interval: Duration,
    /// The step the schedule repeats at; `None` when `cleanup.schedule` fixes it.
    pub step: Option<CronStep>,
    /// The longest time between two runs of a computed schedule (over a repeating week).
    pub runs_every: Option<Duration>,
    /// No schedule inside the maintenance windows keeps runs within the cadence.
    pub windows_stretch: bool,
    /// Why the CronJob is suspended, if it is.
    pub jobs_off: Option<JobsOff>,
}

/// The schedule of memory `namespace/name` for cadence `interval`: computed (at a minute
/// spread by a hash of the name, inside the windows) unless `cleanup.schedule` fixes it.
pub fn schedule(valid: &ValidSpec, namespace: &str, name: &str, interval: Duration) -> Schedule {
    let cleanup = &valid.spec.cleanup;
    let base = Schedule {
        cron: String::new(),
        time_zone: cleanup.time_zone.clone(),
        interval,
        step: None,
        runs_every: None,
        windows_stretch: false,
        jobs_off: jobs_off(valid),
    };
    match &cleanup.schedule {
        Some(fixed) => Schedule {
            cron: fixed.clone(),
            ..base
        },
        None => {
            let step = cron::cron_step(interval, valid.min_interval);
            let planned = cron::plan_schedule(
                step,
                cron::spread_minute(namespace, name),
                &cleanup.windows,
                interval,
            );
            Schedule {
                cron: planned.schedule,
                step: Some(step),
                runs_every: Some(planned.longest_gap),
                windows_stretch: planned.windows_stretch,
                ..base
            }
        }
    }
}

/// `status.plan`: the schedule in force and why.
pub fn cleanup_plan(schedule: &Schedule, decision: &Decision, now: Timestamp) -> CleanupPlan {
    let mut reason = decision.reason.clone();
    if schedule.step.is_none() {
        reason = format!("fixed schedule from spec.cleanup.schedule (the policy says: {reason})");
    }
    if let Some(off) = schedule.jobs_off {
        reason = format!(
            "{}: the CronJob is suspended (the policy says: {reason})",
            off.as_str()
        );
    }
    CleanupPlan {
        schedule: schedule.cron.clone(),
        time_zone: schedule.time_zone.clone(),
        interval_seconds: schedule.interval.as_secs(),
        runs_every_seconds: schedule.runs_every.map(|d| d.as_secs()),
        predicted_breach: decision
            .predicted_breach_seconds
            .filter(|s| *s > 0.0 && s.is_finite())
            .and_then(|s| SignedDuration::try_from_secs_f64(s).ok())
            .and_then(|ahead| now.checked_add(ahead).ok())
            .map(|at| Time(at.round(k8s_openapi::jiff::Unit::Second).unwrap_or(at))),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PhoenixMemorySpec;

    fn valid(spec: serde_json::Value) -> ValidSpec {
        let spec: PhoenixMemorySpec = serde_json::from_value(spec).expect("spec");
        crate::validate::validate(&spec).expect("valid")
    }

    #[test]
    fn a_computed_schedule_says_its_step_and_longest_gap_and_a_fixed_one_does_not() {
        let computed = schedule(
            &valid(serde_json::json!({"cleanup": {"maxInterval": "6h"}})),
            "ns",
            "mem",
            Duration::from_secs(6 * 3600),
        );
        assert!(computed.cron.ends_with(" */6 * * *"), "{}", computed.cron);
        assert_eq!(computed.step, Some(CronStep::Hours(6)));
        assert_eq!(computed.runs_every, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(computed.jobs_off, None);
        let fixed = schedule(
            &valid(serde_json::json!({"cleanup": {"schedule": "0 4 * * 0", "suspend": true}})),
            "ns",
            "mem",
            Duration::from_secs(3600),
        );
        assert_eq!(
            (fixed.cron.as_str(), fixed.step, fixed.runs_every),
            ("0 4 * * 0", None, None)
        );
        assert_eq!(fixed.jobs_off, Some(JobsOff::Suspended));
        let decision = Decision {
            interval: Duration::from_secs(3600),
            emergency_job: false,
            degraded: false,
            predicted_breach_seconds: Some(90.0),
            rule: crate::policy::Rule::Rising,
            reason: "rising".into(),
            worst_ratio: Some(1.4),
            data_age_seconds: Some(1.0),
            cause: None,
            cache: None,
        };
        let now = Timestamp::from_second(1_000).expect("time");
        let plan = cleanup_plan(&fixed, &decision, now);
        assert!(plan.reason.starts_with("Suspended: "), "{}", plan.reason);
        assert!(plan.reason.contains("fixed schedule"), "{}", plan.reason);
        assert_eq!(
            plan.predicted_breach,
            Some(Time(Timestamp::from_second(1_090).expect("time")))
        );
    }
}
