//! The emergency cleanup Job: one per `minInterval` slot, with a deterministic name so a
//! retried reconcile finds the Job it made instead of making a second one.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::context::{Context, Error};
use crate::children::{self, Inputs};
use crate::crd::EmergencyJob;

/// The newest of `jobs` (a memory's emergency Jobs) created less than `min_interval` before
/// `now`, if any.
pub fn recent_emergency(
    jobs: &[Job],
    now: Timestamp,
    min_interval: Duration,
) -> Option<EmergencyJob> {
    let min_interval = SignedDuration::try_from(min_interval).unwrap_or(SignedDuration::MAX);
    jobs.iter()
        .filter_map(|job| {
            let created = job.metadata.creation_timestamp.as_ref()?.0;
            Some((created, job.name_any()))
        })
        .filter(|(created, _)| now.duration_since(*created) < min_interval)
        .max_by_key(|(created, _)| *created)
        .map(|(created, name)| EmergencyJob {
            name,
            time: Time(created),
        })
}

/// Creates the emergency Job for this time slot, or adopts the one a previous attempt made:
/// the slot's own (a 409), or any of the memory's emergency Jobs created within
/// `minInterval` — status may have missed it (a status write that failed after the create)
/// and the slot may have turned since.
///
/// # Errors
/// The API server refused.
pub async fn create(
    ctx: &Context,
    inputs: &Inputs<'_>,
    cronjob: &CronJob,
    now: Timestamp,
) -> Result<EmergencyJob, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &inputs.namespace());
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        inputs.name(),
        children::EMERGENCY_COMPONENT
    );
    let existing = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    if let Some(recent) = recent_emergency(&existing, now, inputs.valid.min_interval) {
        return Ok(recent);
    }
    let slot = now.as_second().max(0).unsigned_abs() / inputs.valid.min_interval.as_secs().max(1);
    let name = children::emergency_job_name(&inputs.name(), slot);
    let job = children::build_emergency_job(
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
    let time = created.metadata.creation_timestamp.unwrap_or(Time(now));
    ctx.metrics.emergency_job();
    Ok(EmergencyJob { name, time })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let at = |s: i64| Timestamp::from_second(s).expect("time");
        let adopted = recent_emergency(&jobs, at(2_000), min).expect("recent");
        assert_eq!(adopted.name, "mem-emergency-2");
        assert_eq!(adopted.time, Time(at(1_800)));
        // 2,700: the newest is exactly minInterval old: a new Job may run.
        assert_eq!(recent_emergency(&jobs, at(2_700), min), None);
        assert_eq!(recent_emergency(&[], at(2_000), min), None);
    }
}
