//! The cleanup CronJob: `phoenix-node cleanup` against every node of the memory, with the
//! safety settings of the design, on the cadence the policy decided (or the fixed
//! `schedule`), inside the maintenance windows. Emergency Jobs are made from its template
//! and clean only the degraded nodes.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Inputs, NODE_PORT, TOKEN_DIR, TOKEN_KEY, child_meta, cronjob_name, headless_name, labels,
    restricted_container, restricted_pod, token_mount, token_volume,
};
use crate::crd::{CleanupMode, MaintenanceWindow, Weekday};

/// The minute of the hour a memory's cleanups start at: spread by a hash of
/// namespace/name so many memories do not all clean at :00.
pub fn spread_minute(namespace: &str, name: &str) -> u32 {
    let hash = blake3::hash(format!("{namespace}/{name}").as_bytes());
    let bytes = hash.as_bytes();
    u32::from(u16::from_le_bytes([bytes[0], bytes[1]])) % 60
}

/// Hours (0–23) and cron days of the week (0 = Sunday) the windows open; `None` days means
/// every day. No windows: every hour of every day.
fn window_hours_and_days(windows: &[MaintenanceWindow]) -> (Vec<u32>, Option<Vec<u32>>) {
    if windows.is_empty() {
        return ((0..24).collect(), None);
    }
    let mut hours = std::collections::BTreeSet::new();
    let mut days = std::collections::BTreeSet::new();
    let mut every_day = false;
    for window in windows {
        let (start, end) = (u32::from(window.start_hour), u32::from(window.end_hour));
        // A window from 22 to 2 wraps past midnight.
        let mut hour = start % 24;
        loop {
            hours.insert(hour);
            if hour == end % 24 {
                break;
            }
            hour = (hour + 1) % 24;
        }
        if window.days.is_empty() {
            every_day = true;
        }
        days.extend(window.days.iter().map(|d| match d {
            Weekday::Sun => 0,
            Weekday::Mon => 1,
            Weekday::Tue => 2,
            Weekday::Wed => 3,
            Weekday::Thu => 4,
            Weekday::Fri => 5,
            Weekday::Sat => 6,
        }));
    }
    let days = (!every_day && days.len() < 7).then(|| days.into_iter().collect());
    (hours.into_iter().collect(), days)
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A five-field cron schedule that runs about every `interval`, at `minute` past the hour,
/// only inside `windows` (their hours and days; with several windows, the union of both).
/// The interval is rounded down to a step cron can express evenly (a divisor of 60 minutes
/// or 24 hours, or whole days).
pub fn schedule_for(interval: Duration, minute: u32, windows: &[MaintenanceWindow]) -> String {
    let minute = minute % 60;
    let (hours, days) = window_hours_and_days(windows);
    let all_hours = hours.len() == 24;
    let dow = days.as_deref().map_or_else(|| "*".to_string(), list);
    let minutes = (interval.as_secs() / 60).max(1);
    if minutes < 60 {
        // Every N minutes, N a divisor of 60 so runs are evenly spaced.
        let step = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30]
            .into_iter()
            .rev()
            .find(|d| *d <= minutes)
            .unwrap_or(1);
        let offset = minute % step as u32;
        let hour_field = if all_hours { "*".into() } else { list(&hours) };
        return format!("{offset}-59/{step} {hour_field} * * {dow}");
    }
    let whole_hours = minutes / 60;
    if whole_hours < 24 {
        let step = [1, 2, 3, 4, 6, 8, 12]
            .into_iter()
            .rev()
            .find(|d| *d <= whole_hours)
            .unwrap_or(1);
        if all_hours {
            return format!("{minute} */{step} * * {dow}");
        }
        let picked: Vec<u32> = hours.iter().copied().step_by(step as usize).collect();
        return format!("{minute} {} * * {dow}", list(&picked));
    }
    // Daily or rarer: once, at the first window hour (03:00 without windows).
    let hour = if all_hours { 3 } else { hours[0] };
    let every_days = (whole_hours / 24).clamp(1, 28);
    match days {
        // Day-of-month and day-of-week together mean "either" in cron: pick weekdays only,
        // about one run per `every_days` among the window's days.
        Some(days) => {
            let per_week = (7 / every_days).max(1) as usize;
            let stride = days.len().div_ceil(per_week).max(1);
            let picked: Vec<u32> = days.iter().copied().step_by(stride).collect();
            format!("{minute} {hour} * * {}", list(&picked))
        }
        None if every_days <= 1 => format!("{minute} {hour} * * *"),
        None => format!("{minute} {hour} */{every_days} * *"),
    }
}

/// The CronJob.
pub fn build_cronjob(inputs: &Inputs<'_>) -> CronJob {
    let spec = &inputs.valid.spec;
    let name = inputs.name();
    let namespace = inputs.namespace();
    let schedule = spec.cleanup.schedule.clone().unwrap_or_else(|| {
        schedule_for(
            inputs.cleanup_interval,
            spread_minute(&namespace, &name),
            &spec.cleanup.windows,
        )
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
    fn schedules_cover_minutes_hours_and_days() {
        assert_eq!(
            schedule_for(Duration::from_secs(15 * 60), 7, &[]),
            "7-59/15 * * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(7 * 60), 7, &[]),
            "1-59/6 * * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(6 * 3600), 42, &[]),
            "42 */6 * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(5 * 3600), 42, &[]),
            "42 */4 * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(86_400), 5, &[]),
            "5 3 * * *"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(3 * 86_400), 5, &[]),
            "5 3 */3 * *"
        );
        for minute in 0..60 {
            for secs in [60, 600, 3600, 7200, 86_400, 864_000] {
                assert_eq!(
                    schedule_for(Duration::from_secs(secs), minute, &[])
                        .split_whitespace()
                        .count(),
                    5
                );
            }
        }
    }

    fn window(days: &[Weekday], start_hour: u8, end_hour: u8) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.to_vec(),
            start_hour,
            end_hour,
        }
    }

    #[test]
    fn windows_restrict_hours_and_days() {
        let nights = [window(&[Weekday::Mon, Weekday::Tue], 22, 1)];
        assert_eq!(
            schedule_for(Duration::from_secs(900), 7, &nights),
            "7-59/15 0,1,22,23 * * 1,2"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(2 * 3600), 7, &nights),
            "7 0,22 * * 1,2"
        );
        assert_eq!(
            schedule_for(Duration::from_secs(86_400), 7, &nights),
            "7 0 * * 1,2"
        );
        let weekdays = [window(
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            2,
            4,
        )];
        // Every two days among Mon–Fri: Mon, Wed, Fri.
        assert_eq!(
            schedule_for(Duration::from_secs(2 * 86_400), 30, &weekdays),
            "30 2 * * 1,3,5"
        );
        // A window without days is every day; hours from several windows are merged.
        let any_day = [window(&[], 1, 2), window(&[Weekday::Sun], 5, 5)];
        assert_eq!(
            schedule_for(Duration::from_secs(3600), 0, &any_day),
            "0 1,2,5 * * *"
        );
    }

    fn arb_windows() -> impl proptest::strategy::Strategy<Value = Vec<MaintenanceWindow>> {
        use proptest::prelude::*;
        let day = prop_oneof![
            Just(Weekday::Mon),
            Just(Weekday::Tue),
            Just(Weekday::Wed),
            Just(Weekday::Thu),
            Just(Weekday::Fri),
            Just(Weekday::Sat),
            Just(Weekday::Sun),
        ];
        proptest::collection::vec(
            (proptest::collection::vec(day, 0..4), 0u8..24, 0u8..24).prop_map(
                |(days, start_hour, end_hour)| MaintenanceWindow {
                    days,
                    start_hour,
                    end_hour,
                },
            ),
            0..3,
        )
    }

    proptest::proptest! {
        #[test]
        fn every_schedule_parses_as_cron(seconds in 60u64..10_000_000, minute in 0u32..60, windows in arb_windows()) {
            let schedule = schedule_for(Duration::from_secs(seconds), minute, &windows);
            let parsed: Result<croner::Cron, _> = schedule.parse();
            proptest::prop_assert!(parsed.is_ok(), "{schedule}: {parsed:?}");
            proptest::prop_assert_eq!(schedule.split_whitespace().count(), 5);
        }

        #[test]
        fn scheduled_runs_fall_inside_the_windows(seconds in 60u64..1_000_000, minute in 0u32..60, windows in arb_windows()) {
            let schedule = schedule_for(Duration::from_secs(seconds), minute, &windows);
            let (hours, days) = window_hours_and_days(&windows);
            let fields: Vec<&str> = schedule.split_whitespace().collect();
            if fields[1] != "*" && !fields[1].starts_with("*/") {
                for hour in fields[1].split(',') {
                    let hour: u32 = hour.parse().expect("hour");
                    proptest::prop_assert!(hours.contains(&hour), "{schedule}: hour {hour}");
                }
            } else {
                proptest::prop_assert_eq!(hours.len(), 24);
            }
            match days {
                Some(days) => for day in fields[4].split(',') {
                    let day: u32 = day.parse().expect("day");
                    proptest::prop_assert!(days.contains(&day), "{schedule}: day {day}");
                },
                None => proptest::prop_assert_eq!(fields[4], "*"),
            }
        }
    }

    #[test]
    fn an_emergency_job_is_the_cronjobs_template_for_degraded_nodes_only() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let job = with_inputs(&memory, |inputs| {
            let cronjob = build_cronjob(inputs);
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
