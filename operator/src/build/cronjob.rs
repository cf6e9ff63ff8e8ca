//! The cleanup CronJob: `phoenix-node cleanup` against the memory's nodes, with the safety
//! settings of the design. Until the observe → schedule policy lands, its cadence is
//! `maxInterval` (or the fixed `schedule`).

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Inputs, NODE_PORT, TOKEN_DIR, TOKEN_KEY, child_meta, cronjob_name, headless_name, labels,
    restricted_container, restricted_pod, token_mount, token_volume,
};
use crate::crd::CleanupMode;

/// The minute of the hour a memory's cleanups start at: spread by a hash of
/// namespace/name so many memories do not all clean at :00.
pub fn spread_minute(namespace: &str, name: &str) -> u32 {
    let hash = blake3::hash(format!("{namespace}/{name}").as_bytes());
    let bytes = hash.as_bytes();
    u32::from(u16::from_le_bytes([bytes[0], bytes[1]])) % 60
}

/// A five-field cron schedule that runs about every `interval`, at `minute` past the hour.
pub fn schedule_for(interval: Duration, minute: u32) -> String {
    let minutes = (interval.as_secs() / 60).max(1);
    if minutes < 60 {
        // Every N minutes, N a divisor of 60 so runs are evenly spaced.
        let step = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30]
            .into_iter()
            .rev()
            .find(|d| *d <= minutes)
            .unwrap_or(1);
        let offset = minute % step as u32;
        return format!("{offset}-59/{step} * * * *");
    }
    let hours = minutes / 60;
    if hours < 24 {
        let step = [1, 2, 3, 4, 6, 8, 12]
            .into_iter()
            .rev()
            .find(|d| *d <= hours)
            .unwrap_or(1);
        return format!("{minute} */{step} * * *");
    }
    let days = (hours / 24).min(28);
    if days <= 1 {
        format!("{minute} 3 * * *")
    } else {
        format!("{minute} 3 */{days} * *")
    }
}

/// The CronJob.
pub fn build_cronjob(inputs: &Inputs<'_>) -> CronJob {
    let spec = &inputs.valid.spec;
    let name = inputs.name();
    let namespace = inputs.namespace();
    let schedule = spec.cleanup.schedule.clone().unwrap_or_else(|| {
        schedule_for(inputs.valid.max_interval, spread_minute(&namespace, &name))
    });
    // DryRun decides and records; it creates no Jobs, so its CronJob stays suspended too.
    let suspend =
        !spec.cleanup.enabled || spec.cleanup.suspend || spec.cleanup.mode == CleanupMode::DryRun;
    let args = vec![
        "cleanup".to_string(),
        "--statefulset".into(),
        name.clone(),
        "--headless-service".into(),
        format!("{}.{namespace}.svc", headless_name(&name)),
        "--replicas".into(),
        spec.replicas.to_string(),
        "--port".into(),
        NODE_PORT.to_string(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/{TOKEN_KEY}"),
        "--threshold".into(),
        spec.cleanup.degradation_threshold.to_string(),
    ];
    CronJob {
        metadata: child_meta(inputs, cronjob_name(&name), "cleanup"),
        spec: Some(CronJobSpec {
            schedule,
            time_zone: Some(spec.cleanup.time_zone.clone()),
            suspend: Some(suspend),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(300),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, "cleanup")),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(1),
                    active_deadline_seconds: Some(3600),
                    ttl_seconds_after_finished: Some(86_400),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels(&name, "cleanup")),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("Never".into()),
                            automount_service_account_token: Some(false),
                            security_context: Some(restricted_pod()),
                            containers: vec![Container {
                                name: "cleanup".into(),
                                image: Some(inputs.image()),
                                args: Some(args),
                                security_context: Some(restricted_container()),
                                volume_mounts: Some(vec![token_mount()]),
                                ..Container::default()
                            }],
                            volumes: Some(vec![token_volume(&name)]),
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
            },
        }),
        ..CronJob::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn schedules_cover_minutes_hours_and_days() {
        assert_eq!(
            schedule_for(Duration::from_secs(15 * 60), 7),
            "7-59/15 * * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(7 * 60), 7),
            "1-59/6 * * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(6 * 3600), 42),
            "42 */6 * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(5 * 3600), 42),
            "42 */4 * * *"
        );
        assert_eq!(schedule_for(Duration::from_secs(86_400), 5), "5 3 * * *");
        assert_eq!(
            schedule_for(Duration::from_secs(3 * 86_400), 5),
            "5 3 */3 * *"
        );
        for minute in 0..60 {
            for secs in [60, 600, 3600, 7200, 86_400, 864_000] {
                assert_eq!(
                    schedule_for(Duration::from_secs(secs), minute)
                        .split_whitespace()
                        .count(),
                    5
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn every_schedule_parses_as_cron(seconds in 60u64..10_000_000, minute in 0u32..60) {
            let schedule = schedule_for(Duration::from_secs(seconds), minute);
            let parsed: Result<croner::Cron, _> = schedule.parse();
            proptest::prop_assert!(parsed.is_ok(), "{schedule}: {parsed:?}");
        }
    }

    #[test]
    fn minutes_spread_across_the_hour() {
        let minutes: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| spread_minute("ns", &format!("memory-{i}")))
            .collect();
        assert!(
            minutes.len() > 40,
            "only {} distinct minutes",
            minutes.len()
        );
        assert_eq!(spread_minute("a", "b"), spread_minute("a", "b"));
    }

    #[test]
    fn the_cronjob_has_the_safety_settings_and_runs_the_cleanup_job() {
        let memory = memory(serde_json::json!({"replicas": 3, "cleanup": {"maxInterval": "6h"}}));
        let cronjob = with_inputs(&memory, build_cronjob);
        let spec = cronjob.spec.expect("spec");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.starting_deadline_seconds, Some(300));
        assert_eq!(spec.suspend, Some(false));
        assert_eq!(spec.time_zone.as_deref(), Some("Etc/UTC"));
        assert!(spec.schedule.ends_with(" */6 * * *"), "{}", spec.schedule);
        let job = spec.job_template.spec.expect("job");
        assert_eq!(job.ttl_seconds_after_finished, Some(86_400));
        assert_eq!(job.active_deadline_seconds, Some(3600));
        let args = job.template.spec.expect("pod").containers[0]
            .args
            .clone()
            .expect("args");
        assert_eq!(args[0], "cleanup");
        assert!(args.contains(&"mem-nodes.ns.svc".to_string()));
        assert!(args.windows(2).any(|w| w[0] == "--replicas" && w[1] == "3"));
    }

    #[test]
    fn disabled_suspended_and_dry_run_suspend_the_cronjob() {
        for cleanup in [
            serde_json::json!({"enabled": false}),
            serde_json::json!({"suspend": true}),
            serde_json::json!({"mode": "DryRun"}),
        ] {
            let memory = memory(serde_json::json!({"cleanup": cleanup}));
            let spec = with_inputs(&memory, build_cronjob).spec.expect("spec");
            assert_eq!(spec.suspend, Some(true), "{cleanup}");
        }
        let memory = memory(serde_json::json!({"cleanup": {"schedule": "0 4 * * 0"}}));
        assert_eq!(
            with_inputs(&memory, build_cronjob)
                .spec
                .expect("spec")
                .schedule,
            "0 4 * * 0"
        );
    }
}
