//! Observe → schedule end to end: the operator's real controller against the in-process API
//! server, with real `phoenix-node` processes on 127.0.0.x as the pods.
//!
//! Degradation is driven with the node's fault-injection hook (`PUT /v1/admin/faults`, on
//! only with `--fault-injection`): every retrieve, the probe's included, takes N times as
//! long. A fault marked `clearedByCleanup` stands for what a cleanup repairs; one that is
//! not stands for what it cannot. A hot set really larger than `cacheCapacity` is driven
//! with the original report's cycle test (real stores and retrieves of 4 KiB values).

use std::time::Duration;

use super::support::{event_reasons, manifest, status_of, wait_status};
use k8s_openapi::api::batch::v1::CronJob;
use kube::ResourceExt;
use phoenix_operator::crd::PhoenixMemoryStatus;
use phoenix_tests::sandbox::{Options, Sandbox, Seed, find_node_bin};

fn options() -> Options {
    Options::new(find_node_bin().expect("the phoenix-node binary (cargo build -p phoenix-node)"))
}

async fn sandbox() -> Sandbox {
    Sandbox::start(options()).await.expect("sandbox")
}

fn condition(status: &PhoenixMemoryStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is(status: &PhoenixMemoryStatus, type_: &str, value: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.0 == value)
}

fn interval(status: &PhoenixMemoryStatus) -> u64 {
    status.plan.as_ref().map_or(0, |p| p.interval_seconds)
}

async fn start_pods(sandbox: &Sandbox, memory: &str, replicas: usize, seed: Seed) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut started = 0;
    while started < replicas {
        match sandbox.sync_pods_seeded(memory, seed).await {
            Ok(new) => started += new.len(),
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "pods of {memory}: {error:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `manifest("mem", 3)`: a group of three nodes holding the same 2,000 keys (each seeded
/// alike; node 0's copy seeds the group, the others join from its snapshot), once all
/// report and the plan is flat.
async fn three_flat_nodes(sandbox: &Sandbox) -> PhoenixMemoryStatus {
    sandbox
        .create_memory(&manifest("mem", 3))
        .await
        .expect("memory");
    let seed = Seed {
        keys: 2000,
        value_len: 100,
    };
    start_pods(sandbox, "mem", 3, seed).await;
    wait_status(sandbox, "mem", "fresh flat observations", 30, |s| {
        s.nodes.len() == 3
            && is(s, "Replicated", "True")
            && s.nodes.iter().all(|n| n.ratio.is_some())
            && is(s, "MetricsStale", "False")
            && s.last_decision.as_ref().is_some_and(|d| d.rule == "flat")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_tightens_the_schedule_an_emergency_job_cleans_and_it_relaxes() {
    let sandbox = sandbox().await;

    // Flat: every node fresh, cleanup every maxInterval.
    let flat = three_flat_nodes(&sandbox).await;
    assert_eq!(interval(&flat), 86_400);
    println!(
        "idle seeded nodes after settling: ratios {:?}",
        flat.nodes.iter().map(|n| n.ratio).collect::<Vec<_>>()
    );
    let flat_schedule = flat.plan.clone().expect("plan").schedule;

    // mem-0 degrades (3×): Degraded, and the schedule tightens to minInterval.
    sandbox
        .set_fault("mem", "mem-0", 3.0, true)
        .await
        .expect("fault");
    let degraded = wait_status(&sandbox, "mem", "Degraded", 30, |s| {
        is(s, "Degraded", "True") && interval(s) == 60
    })
    .await;
    let schedule = degraded.plan.clone().expect("plan").schedule;
    assert_ne!(schedule, flat_schedule);
    assert!(schedule.contains("* * * *"), "every minute: {schedule}");
    let cronjob = sandbox
        .api::<CronJob>()
        .get("mem-cleanup")
        .await
        .expect("cronjob");
    assert_eq!(cronjob.spec.expect("spec").schedule, schedule);
    assert!(
        sandbox
            .emergency_jobs("mem")
            .await
            .expect("jobs")
            .is_empty(),
        "3× is below the emergency line"
    );

    // Past the emergency line (12×): one emergency Job, and not two.
    sandbox
        .set_fault("mem", "mem-0", 12.0, true)
        .await
        .expect("fault");
    let emergency = wait_status(&sandbox, "mem", "an emergency Job", 30, |s| {
        s.last_emergency_job.is_some()
    })
    .await;
    let record = emergency.last_decision.clone().expect("decision");
    println!(
        "decision record:\n{}",
        serde_yaml::to_string(&record).unwrap_or_default()
    );
    // The Job's decision, or a later one that keeps the plan (rate-limited: no second Job).
    assert_eq!(record.rule, "emergency");
    assert!(
        record.outcome == "emergency-job" || record.outcome == "keep",
        "{record:?}"
    );
    // Several more reconciles (observe interval 1 s) must not make a second Job.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let jobs = sandbox.emergency_jobs("mem").await.expect("jobs");
    assert_eq!(jobs.len(), 1, "exactly one emergency Job");
    let job = &jobs[0];
    assert_eq!(
        Some(job.name_any()),
        emergency.last_emergency_job.map(|j| j.name)
    );

    // Running that Job's command against the nodes cleans mem-0 (the degraded one only).
    let before = status_of(&sandbox, "mem").await;
    let ratio_before = before.nodes[0].ratio.expect("ratio");
    let run = sandbox.run_job("mem", job).await.expect("run the job");
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("skipped"),
        "mem-1 and mem-2 are below the threshold: {}",
        run.stdout
    );
    sandbox.finish_job(job, true).await.expect("finish");

    // The ratio drops, Degraded clears and the schedule relaxes to maxInterval.
    let relaxed = wait_status(&sandbox, "mem", "the schedule to relax", 30, |s| {
        is(s, "Degraded", "False") && interval(s) == 86_400
    })
    .await;
    let ratio_after = relaxed.nodes[0].ratio.expect("ratio");
    println!("mem-0 ratio {ratio_before:.2} before the emergency cleanup, {ratio_after:.2} after");
    assert!(
        ratio_after < 1.5 && ratio_after < ratio_before / 3.0,
        "{ratio_before} → {ratio_after}"
    );
    assert!(relaxed.nodes[0].last_cleanup.is_some());
    assert_eq!(relaxed.nodes[0].ineffective_cleanups, 0);
    assert_eq!(relaxed.plan.clone().expect("plan").schedule, flat_schedule);
    println!(
        "decision record:\n{}",
        serde_yaml::to_string(&relaxed.last_decision).unwrap_or_default()
    );

    // mem-1's metrics endpoint goes away: MetricsStale names it, the plan stays, no Job.
    sandbox
        .set_fault("mem", "mem-0", 12.0, true)
        .await
        .expect("fault");
    assert!(sandbox.kill_node("mem-1"));
    let stale = wait_status(&sandbox, "mem", "MetricsStale", 30, |s| {
        is(s, "MetricsStale", "True")
    })
    .await;
    let (_, reason, message) = condition(&stale, "MetricsStale").expect("condition");
    assert_eq!(reason, "NodesNotReporting");
    assert!(message.contains("mem-1"), "{message}");
    assert!(
        stale.nodes[1].ratio.is_none(),
        "stale data is not shown as a value"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = wait_status(&sandbox, "mem", "still stale", 5, |s| {
        is(s, "MetricsStale", "True")
    })
    .await;
    assert_eq!(interval(&still), 86_400, "the plan is kept on stale data");
    assert_eq!(
        still.last_decision.as_ref().map(|d| d.rule.as_str()),
        Some("stale")
    );
    assert_eq!(
        sandbox.emergency_jobs("mem").await.expect("jobs").len(),
        1,
        "mem-0 is past the emergency line again, but stale data creates no Job"
    );

    let events = event_reasons(&sandbox).await;
    let plan_changes: Vec<&String> = events
        .iter()
        .filter(|(r, _)| r == "PlanChanged")
        .map(|(_, note)| note)
        .collect();
    assert!(
        plan_changes.iter().any(|n| n.contains("→ 0-59/1"))
            && plan_changes
                .iter()
                .any(|n| n.contains(&format!("→ {flat_schedule}"))),
        "a PlanChanged Event for the tightening and one for the relaxing, each with its own note: {plan_changes:?}"
    );
    let reasons: Vec<String> = events.into_iter().map(|(r, _)| r).collect();
    for expected in [
        "PlanChanged",
        "Degraded",
        "EmergencyCleanup",
        "Recovered",
        "MetricsStale",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "no {expected} Event in {reasons:?}"
        );
    }
    let text = sandbox.metrics.render();
    assert!(
        text.contains("phoenix_operator_emergency_jobs_total 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "phoenix_operator_cleanup_interval_seconds{name=\"mem\",namespace=\"default\"} 86400"
        ),
        "{text}"
    );
    sandbox.shutdown().await;
}

const HOT: &str = r#"
apiVersion: phoenix.dev/v1alpha1
kind: PhoenixMemory
metadata:
  name: hot
  namespace: default
spec:
  replicas: 1
  node:
    cacheCapacity: 64Mi
  cleanup:
    degradationThreshold: 2.0
    recoverThreshold: 1.5
    emergencyThreshold: 50.0
    minInterval: 1m
    maxInterval: 12h
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanups_that_do_not_help_back_off_with_the_cause() {
    let sandbox = sandbox().await;
    sandbox.create_memory(HOT).await.expect("memory");
    // 3,000 × 1 KiB: well inside the 64 MiB cache, so nothing the node reports names the
    // cause (a hot set beyond the cache is answered with cache, not cleanups: see
    // `a_hot_set_beyond_a_small_cache_…`).
    let seed = Seed {
        keys: 3000,
        value_len: 1024,
    };
    start_pods(&sandbox, "hot", 1, seed).await;
    wait_status(&sandbox, "hot", "a fresh observation", 30, |s| {
        s.nodes.first().is_some_and(|n| n.ratio.is_some())
    })
    .await;
    // A slowdown no cleanup removes.
    sandbox
        .set_fault("hot", "hot-0", 4.0, false)
        .await
        .expect("fault");
    wait_status(&sandbox, "hot", "Degraded", 30, |s| {
        is(s, "Degraded", "True") && interval(s) == 60
    })
    .await;

    // Three scheduled runs of the CronJob's command, each seen by the operator.
    for round in 1..=3u32 {
        let run = sandbox.run_cronjob("hot").await.expect("run");
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        let status = wait_status(&sandbox, "hot", "the cleanup to be counted", 30, |s| {
            s.nodes
                .first()
                .is_some_and(|n| n.ineffective_cleanups == round)
        })
        .await;
        println!(
            "cleanup {round}: {}",
            status.nodes[0]
                .last_cleanup_effect
                .clone()
                .unwrap_or_default()
        );
    }
    let backed_off = wait_status(&sandbox, "hot", "CleanupIneffective", 30, |s| {
        is(s, "CleanupIneffective", "True")
    })
    .await;
    let (_, reason, message) = condition(&backed_off, "CleanupIneffective").expect("condition");
    assert_eq!(reason, "CleanupDidNotHelp");
    assert!(message.contains("cleanup does not address"), "{message}");
    assert_eq!(
        interval(&backed_off),
        12 * 3600,
        "backed off to maxInterval"
    );
    let record = backed_off.last_decision.clone().expect("decision");
    println!(
        "decision record:\n{}",
        serde_yaml::to_string(&record).unwrap_or_default()
    );
    assert_eq!(record.rule, "ineffective");
    assert!(
        event_reasons(&sandbox)
            .await
            .iter()
            .any(|(r, note)| r == "CleanupIneffective" && note.contains("cleanup does not address")),
        "a CleanupIneffective Event naming the cause"
    );
    assert!(
        sandbox
            .emergency_jobs("hot")
            .await
            .expect("jobs")
            .is_empty()
    );
    sandbox.shutdown().await;
}

/// Steady nodes do not make the operator rewrite status at every observe: figures that
/// merely jitter are not written (their age is a metric); a real move is written at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_nodes_do_not_rewrite_status_at_every_observe() {
    let sandbox = Sandbox::start(options()).await.expect("sandbox");
    let flat = three_flat_nodes(&sandbox).await;
    sandbox.server.reset_counts();
    // Ten observes (one a second) of idle, settled nodes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes = sandbox.server.requests(
        phoenix_tests::apiserver::Verb::Patch,
        "phoenixmemories/status",
    );
    let ratios = |s: &PhoenixMemoryStatus| s.nodes.iter().map(|n| n.ratio).collect::<Vec<_>>();
    println!(
        "status writes over 10 observes of steady nodes: {writes}; ratios in status {:?}",
        ratios(&flat)
    );
    // Before: 45 writes in these 10 s (each write woke a reconcile that scraped again). Now
    // at most one per observe, and only when a ratio moved by 10% or more (idle nodes on two
    // shared cores do move that much at times: that is the probe, not the operator).
    assert!(
        writes <= 10,
        "{writes} status writes in 10 s of steady nodes"
    );

    // mem-0 slows by 2×: deferring jitter must not hide a real move (which change is
    // written at once and which waits is the unit test's, in `status::tests`).
    sandbox
        .set_fault("mem", "mem-0", 2.0, true)
        .await
        .expect("fault");
    let moved = wait_status(&sandbox, "mem", "mem-0's higher ratio", 20, |s| {
        s.nodes
            .iter()
            .find(|n| n.name == "mem-0")
            .and_then(|n| n.ratio)
            .is_some_and(|r| r >= 1.5)
    })
    .await;
    println!(
        "after a 2× fault on mem-0: ratios in status {:?}",
        ratios(&moved)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_finds_corruption_turns_unready_and_the_memory_shows_it() {
    let sandbox = sandbox().await;
    three_flat_nodes(&sandbox).await;
    // A bad disk under mem-1: the node's scrub finds the damaged record.
    sandbox
        .corrupt("mem", "mem-1", "key-000042")
        .await
        .expect("damage a record");
    // The kubelet's part: mem-1's readiness probe fails, its pod turns unready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        sandbox.probe_readiness("mem").await.expect("probe");
        let pod = sandbox
            .api::<k8s_openapi::api::core::v1::Pod>()
            .get("mem-1")
            .await
            .expect("pod");
        let unready = pod
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
        if unready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mem-1 never turned unready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = wait_status(&sandbox, "mem", "mem-1 shown corrupted", 30, |s| {
        s.nodes.iter().any(|n| n.name == "mem-1" && n.corrupted)
    })
    .await;
    let node = status
        .nodes
        .iter()
        .find(|n| n.name == "mem-1")
        .expect("mem-1");
    assert!(
        node.stale_reason
            .as_deref()
            .is_some_and(|r| r.contains("corruption detected")),
        "{node:?}"
    );
    assert!(
        status
            .nodes
            .iter()
            .any(|n| n.name == "mem-0" && !n.corrupted),
        "mem-0 is fine"
    );
    let replica = status
        .replication
        .as_ref()
        .and_then(|r| r.nodes.iter().find(|n| n.name == "mem-1"))
        .expect("mem-1 in status.replication");
    assert!(replica.corrupted, "{replica:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = event_reasons(&sandbox).await;
        if let Some((_, note)) = events.iter().find(|(r, _)| r == "NodeCorrupted") {
            assert!(note.contains("mem-1"), "{note}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NodeCorrupted Event: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reads of intact keys still work on the damaged node.
    assert!(sandbox.node_url("mem-1").is_some());
}
