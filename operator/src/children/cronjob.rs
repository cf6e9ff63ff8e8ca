//! The cleanup CronJob: `phoenix-node cleanup` against every node of the memory, with the
//! safety settings of the design, on the planned schedule ([`crate::plan`]). Emergency Jobs
//! are made from its template and clean only the degraded nodes.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Inputs, NODE_PORT, TOKEN_DIR, TOKEN_KEY, child_meta, cronjob_name, headless_name, labels,
    restricted_container, restricted_pod, token_mount, token_volume,
};
use crate::plan::Schedule;

/// The CronJob, on `schedule` (suspended when no Job may run: disabled, suspended, or
/// DryRun, which decides and records but creates no Jobs).
pub fn build_cronjob(inputs: &Inputs<'_>, schedule: &Schedule) -> CronJob {
    let name = inputs.name();
    let namespace = inputs.namespace();
    let args = vec![
        "cleanup".to_string(),
        "--statefulset".into(),
        name.clone(),
        "--headless-service".into(),
        format!("{}.{namespace}.svc", headless_name(&name)),
        "--replicas".into(),
        inputs.replicas.max(0).to_string(),
        "--port".into(),
        NODE_PORT.to_string(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/{TOKEN_KEY}"),
    ];
    CronJob {
        metadata: child_meta(inputs, cronjob_name(&name), "cleanup"),
        spec: Some(CronJobSpec {
            schedule: schedule.cron.clone(),
            time_zone: Some(schedule.time_zone.clone()),
            suspend: Some(schedule.jobs_off.is_some()),
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
                            labels: Some(super::job_pod_labels(&name, "cleanup")),
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
                            volumes: Some(vec![token_volume(&name, true)]),
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

/// Label value of the `app.kubernetes.io/component` of emergency Jobs.
pub const EMERGENCY_COMPONENT: &str = "cleanup-emergency";

/// The name of the emergency Job for `memory` in time slot `slot` (the Unix time divided by
/// `minInterval`): deterministic, so a retried reconcile finds the Job it created instead of
/// making a second one. At most 63 characters (Job names become pod labels).
pub fn emergency_job_name(memory: &str, slot: u64) -> String {
    let suffix = format!("-emergency-{slot}");
    let keep = 63usize.saturating_sub(suffix.len());
    let mut prefix: String = memory.chars().take(keep).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

/// An emergency Job: the CronJob's Job template run now, cleaning only the nodes at or
/// above `threshold` (the degradation threshold), owned by the memory.
pub fn build_emergency_job(
    inputs: &Inputs<'_>,
    cronjob: &CronJob,
    name: String,
    threshold: f64,
) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    if let Some(container) = spec
        .template
        .spec
        .as_mut()
        .and_then(|p| p.containers.first_mut())
    {
        let args = container.args.get_or_insert_with(Vec::new);
        args.push("--threshold".into());
        args.push(threshold.to_string());
    }
    spec.template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(
            "app.kubernetes.io/component".into(),
            EMERGENCY_COMPONENT.into(),
        );
    Job {
        metadata: child_meta(inputs, name, EMERGENCY_COMPONENT),
        spec: Some(spec),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn an_emergency_job_is_the_cronjobs_template_for_degraded_nodes_only() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let job = with_inputs(&memory, |inputs| {
            let cronjob = build_cronjob(inputs, &schedule_of(inputs));
            build_emergency_job(inputs, &cronjob, emergency_job_name("mem", 7), 2.0)
        });
        assert_eq!(job.metadata.name.as_deref(), Some("mem-emergency-7"));
        assert_eq!(
            job.metadata.owner_references.expect("owned")[0].kind,
            "PhoenixMemory"
        );
        let spec = job.spec.expect("spec");
        let args = spec.template.spec.expect("pod").containers[0]
            .args
            .clone()
            .expect("args");
        assert!(args.ends_with(&["--threshold".to_string(), "2".to_string()]));
        assert_eq!(spec.backoff_limit, Some(1));
        let long = emergency_job_name(&"m".repeat(80), 29_000_000);
        assert!(
            long.len() <= 63 && long.ends_with("-emergency-29000000"),
            "{long}"
        );
    }

    #[test]
    fn the_cronjob_has_the_safety_settings_and_runs_the_cleanup_job() {
        let memory = memory(serde_json::json!({"replicas": 3, "cleanup": {"maxInterval": "6h"}}));
        let cronjob = with_inputs(&memory, |i| build_cronjob(i, &schedule_of(i)));
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
        assert!(
            !args.contains(&"--threshold".to_string()),
            "scheduled runs clean every node"
        );
    }

    #[test]
    fn disabled_suspended_and_dry_run_suspend_the_cronjob() {
        for cleanup in [
            serde_json::json!({"enabled": false}),
            serde_json::json!({"suspend": true}),
            serde_json::json!({"mode": "DryRun"}),
        ] {
            let memory = memory(serde_json::json!({"cleanup": cleanup}));
            let spec = with_inputs(&memory, |i| build_cronjob(i, &schedule_of(i)))
                .spec
                .expect("spec");
            assert_eq!(spec.suspend, Some(true), "{cleanup}");
        }
        let memory = memory(serde_json::json!({"cleanup": {"schedule": "0 4 * * 0"}}));
        assert_eq!(
            with_inputs(&memory, |i| build_cronjob(i, &schedule_of(i)))
                .spec
                .expect("spec")
                .schedule,
            "0 4 * * 0"
        );
    }
}
