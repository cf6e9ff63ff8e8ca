//! Replicated memories end to end: the operator's real controller against the in-process
//! API server, real `phoenix-node` processes as the pods (one Raft group per memory), and
//! clients that count every acknowledged write and every failed request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::support::{event_reasons, manifest, status_of, wait_status};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::{Patch, PatchParams};
use phoenix_node_api::{Consistency, MemoryClient, NodeClient};
use phoenix_operator::crd::{PhoenixMemory, PhoenixMemoryStatus, ReplicationStatus};
use phoenix_tests::sandbox::{Options, Sandbox, Seed, find_node_bin};
use serde_json::json;

fn options() -> Options {
    Options::new(find_node_bin().expect("the phoenix-node binary (cargo build -p phoenix-node)"))
}

/// Plays kubelet and StatefulSet controller for `name` until `check` holds on its status,
/// or panics after `seconds` with the last status. `each` sees every status polled.
async fn converge<F, G>(
    sandbox: &Sandbox,
    name: &str,
    what: &str,
    seconds: u64,
    mut check: F,
    mut each: G,
) -> PhoenixMemoryStatus
where
    F: FnMut(&PhoenixMemoryStatus) -> bool,
    G: FnMut(&PhoenixMemoryStatus, Option<&StatefulSet>),
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let _ = sandbox.sync_pods(name).await;
        if let Ok(memory) = sandbox.api::<PhoenixMemory>().get(name).await {
            let status = memory.status.unwrap_or_default();
            let sts = sandbox
                .api::<StatefulSet>()
                .get_opt(name)
                .await
                .ok()
                .flatten();
            each(&status, sts.as_ref());
            if check(&status) {
                return status;
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out waiting for {what}; last status:\n{}",
        serde_yaml::to_string(&last).unwrap_or_default()
    );
}

fn replication(status: &PhoenixMemoryStatus) -> ReplicationStatus {
    status.replication.clone().unwrap_or_default()
}

fn is(status: &PhoenixMemoryStatus, type_: &str, value: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value)
}

/// A group of `voters` voters, no learner, a leader, every voter current.
fn settled(status: &PhoenixMemoryStatus, voters: usize) -> bool {
    let r = replication(status);
    r.voters.len() == voters
        && r.learners.is_empty()
        && r.leader.is_some()
        && is(status, "Replicated", "True")
}

/// A sandbox running memory `name` of three replicas, once its group is settled.
async fn group_of_three(name: &str) -> (Sandbox, PhoenixMemoryStatus) {
    let sandbox = Sandbox::start(options()).await.expect("sandbox");
    sandbox
        .create_memory(&manifest(name, 3))
        .await
        .expect("memory");
    let formed = converge(
        &sandbox,
        name,
        "a group of three",
        60,
        |s| settled(s, 3),
        |_, _| {},
    )
    .await;
    (sandbox, formed)
}

async fn event_notes(sandbox: &Sandbox, reason: &str) -> Vec<String> {
    event_reasons(sandbox)
        .await
        .into_iter()
        .filter(|(r, _)| r == reason)
        .map(|(_, note)| note)
        .collect()
}

async fn scale(sandbox: &Sandbox, name: &str, replicas: i32) {
    sandbox
        .api::<PhoenixMemory>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scale");
}

/// Node URLs of `name`'s running pods `0..count`.
fn urls(sandbox: &Sandbox, name: &str, count: u64) -> Vec<String> {
    (0..count)
        .filter_map(|o| sandbox.node_url(&format!("{name}-{o}")))
        .collect()
}

/// Writers storing `w-{writer}-{n}` through `nodes` until stopped; every acknowledged key
/// is kept, every request that failed for good is counted.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(nodes: &[String], writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|writer| {
                let client = MemoryClient::new(reqwest::Client::new(), nodes.to_vec())
                    .give_up_after(Duration::from_secs(20));
                let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w-{writer}-{n}");
                        n += 1;
                        match client.store(&key, key.as_bytes(), None).await {
                            Ok(_) => acknowledged.push(key),
                            Err(error) => {
                                eprintln!("{key}: {error}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    acknowledged
                })
            })
            .collect();
        Load {
            stop,
            failed,
            tasks,
        }
    }

    /// Stops the writers: the acknowledged keys and the number of failed requests.
    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut keys = Vec::new();
        for task in self.tasks {
            keys.extend(task.await.expect("writer"));
        }
        (keys, self.failed.load(Ordering::Relaxed))
    }
}

/// Every key in `keys` is readable (linearizably) through `nodes`, and once the nodes have
/// applied the same index their roots are equal.
async fn nothing_lost_and_roots_equal(nodes: &[String], keys: &[String]) {
    let client = MemoryClient::new(reqwest::Client::new(), nodes.to_vec());
    let mut lost = Vec::new();
    for key in keys {
        match client.retrieve(key, Consistency::Linearizable).await {
            Ok(Some(read)) if read.value == key.as_bytes() => {}
            other => lost.push(format!("{key}: {other:?}")),
        }
    }
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut roots = BTreeSet::new();
        let mut indexes = BTreeSet::new();
        for url in nodes {
            let root = NodeClient::new(http.clone(), url.clone())
                .local_root(Duration::from_secs(2))
                .await
                .expect("root");
            roots.insert(root.root);
            indexes.insert(root.applied_index);
        }
        if indexes.len() == 1 {
            assert_eq!(roots.len(), 1, "equal indexes {indexes:?}, roots {roots:?}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never reached the same index: {indexes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_bootstrapped_once_scales_3_5_3_under_writes_and_survives_its_leader() {
    // Bootstrapped once, one leader, roots equal.
    let (sandbox, formed) = group_of_three("mem").await;
    let r = replication(&formed);
    println!("formed: leader {:?}, term {}", r.leader, r.term);
    let inits = event_notes(&sandbox, "Membership").await;
    assert_eq!(
        inits.iter().filter(|n| n.starts_with("initialize")).count(),
        1,
        "initialized exactly once: {inits:?}"
    );
    let three = urls(&sandbox, "mem", 3);
    nothing_lost_and_roots_equal(&three, &[]).await;

    // 3 → 5 → 3 under writes: learners promoted, voters removed before the pods go.
    let load = Load::start(&three, 3);
    scale(&sandbox, "mem", 5).await;
    let five = converge(
        &sandbox,
        "mem",
        "five voters",
        90,
        |s| settled(s, 5),
        |_, _| {},
    )
    .await;
    println!("scaled up: voters {:?}", replication(&five).voters);
    scale(&sandbox, "mem", 3).await;
    // Each poll reads the StatefulSet, then the membership from a node: a member at or past
    // the StatefulSet's size then was one already when it shrank.
    let token = sandbox.token("mem").expect("token");
    let http = reqwest::Client::new();
    let mut shrank_too_early = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let back = loop {
        let _ = sandbox.sync_pods("mem").await;
        let kept = sandbox
            .api::<StatefulSet>()
            .get("mem")
            .await
            .ok()
            .and_then(|s| s.spec)
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        if let Some(url) = sandbox.node_url("mem-0")
            && let Ok(Some(raft)) = NodeClient::new(http.clone(), url)
                .raft_status(&token, Duration::from_secs(2))
                .await
            && let Some(beyond) = raft
                .voters
                .iter()
                .chain(&raft.learners)
                .find(|m| i64::try_from(**m).unwrap_or(i64::MAX) >= i64::from(kept))
        {
            shrank_too_early.push((kept, *beyond));
        }
        let status = status_of(&sandbox, "mem").await;
        if settled(&status, 3) && status.replicas == 3 && sandbox.node_url("mem-3").is_none() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no return to three voters and three pods: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        shrank_too_early.is_empty(),
        "the StatefulSet shrank below a member (replicas, member): {shrank_too_early:?}"
    );
    assert_eq!(replication(&back).voters, ["mem-0", "mem-1", "mem-2"]);
    let (keys, failed) = load.finish().await;
    println!(
        "3 → 5 → 3: {} writes acknowledged, {failed} failed requests",
        keys.len()
    );
    assert!(!keys.is_empty());
    assert_eq!(failed, 0, "no client request failed");
    nothing_lost_and_roots_equal(&three, &keys).await;
    let notes = event_notes(&sandbox, "Membership").await;
    for expected in [
        "add node 3",
        "promote node 4",
        "remove node 4",
        "remove node 3",
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(expected)),
            "no `{expected}` Event in {notes:?}"
        );
    }

    // The leader's process dies: another node leads, Replicated recovers.
    let old_leader = replication(&back).leader.expect("a leader");
    assert!(sandbox.kill_node(&old_leader));
    let failover = wait_status(&sandbox, "mem", "a new leader", 60, |s| {
        replication(s).leader.is_some_and(|l| l != old_leader)
    })
    .await;
    println!(
        "leader {old_leader} killed; now {:?}",
        replication(&failover).leader
    );
    // The stand-in kubelet restarts the pod (same address, same volume): all current.
    converge(
        &sandbox,
        "mem",
        "Replicated again",
        60,
        |s| settled(s, 3),
        |_, _| {},
    )
    .await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_no_cleanup_runs_writes_are_refused_and_it_recovers() {
    let (sandbox, formed) = group_of_three("q").await;
    assert!(is(&formed, "CleanupScheduled", "True"), "{formed:?}");
    let leader = replication(&formed).leader.expect("leader");
    let followers: Vec<String> = (0..3)
        .map(|o| format!("q-{o}"))
        .filter(|p| *p != leader)
        .collect();

    // Two of three down (processes killed; the pods still say Ready).
    for pod in &followers {
        assert!(sandbox.kill_node(pod));
    }
    let lost = wait_status(&sandbox, "q", "QuorumLost", 30, |s| {
        is(s, "QuorumLost", "True")
    })
    .await;
    assert!(
        lost.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "QuorumLost"),
        "a memory that refuses writes is not Ready: {:?}",
        lost.conditions
    );
    let cleanup = lost
        .conditions
        .iter()
        .find(|c| c.type_ == "CleanupScheduled")
        .expect("CleanupScheduled");
    assert_eq!(
        (cleanup.status.as_str(), cleanup.reason.as_str()),
        ("False", "QuorumAtRisk")
    );
    let cronjob = sandbox
        .api::<CronJob>()
        .get("q-cleanup")
        .await
        .expect("cronjob");
    assert_eq!(cronjob.spec.and_then(|s| s.suspend), Some(true));
    assert!(sandbox.emergency_jobs("q").await.expect("jobs").is_empty());
    assert!(
        !event_notes(&sandbox, "QuorumLost").await.is_empty(),
        "a Warning Event"
    );
    let text = sandbox.metrics.render();
    assert!(
        text.contains(
            "phoenix_operator_replication_condition{condition=\"QuorumLost\",name=\"q\",namespace=\"default\"} 1"
        ),
        "the alert's series: {text}"
    );
    // Writes are refused with a clear error (after the node's write wait).
    let survivor = sandbox.node_url(&leader).expect("survivor");
    let answer = reqwest::Client::new()
        .put(format!("{survivor}/v1/memories/during-the-outage"))
        .body("x")
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("an answer");
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    println!("a write without a quorum: {status} {text}");
    assert_eq!(status.as_u16(), 503, "{text}");
    assert!(text.contains("quorum") || text.contains("leader"), "{text}");

    // They return: the quorum and the schedule come back.
    let recovered = converge(
        &sandbox,
        "q",
        "recovery",
        60,
        |s| {
            settled(s, 3)
                && is(s, "QuorumLost", "False")
                && is(s, "CleanupScheduled", "True")
                && is(s, "Ready", "True")
        },
        |_, _| {},
    )
    .await;
    println!(
        "recovered: leader {:?}, term {}",
        replication(&recovered).leader,
        replication(&recovered).term
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_cleanup_of_a_degraded_follower_fails_no_request_and_spares_the_leader() {
    let sandbox = Sandbox::start(options()).await.expect("sandbox");
    sandbox
        .create_memory(&manifest("e", 3))
        .await
        .expect("memory");
    // Each node seeded alike (the probe needs data): node 0's copy seeds the group (a single
    // node upgraded), the others join from its snapshot.
    let seed = Seed {
        keys: 2000,
        value_len: 100,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut started = 0;
    while started < 3 {
        match sandbox.sync_pods_seeded("e", seed).await {
            Ok(new) => started += new.len(),
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let formed = converge(
        &sandbox,
        "e",
        "a group of three with fresh ratios",
        60,
        |s| settled(s, 3) && s.nodes.iter().filter(|n| n.ratio.is_some()).count() == 3,
        |_, _| {},
    )
    .await;
    let leader = replication(&formed).leader.expect("leader");
    let follower = (0..3)
        .map(|o| format!("e-{o}"))
        .find(|p| *p != leader)
        .expect("a follower");
    // The upgraded node's data is on every node.
    let nodes = urls(&sandbox, "e", 3);
    let seeded: Vec<String> = (0..2000)
        .step_by(97)
        .map(|i| format!("key-{i:06}"))
        .collect();
    let client = MemoryClient::new(reqwest::Client::new(), nodes.clone());
    for key in &seeded {
        let read = client
            .retrieve(key, Consistency::Local)
            .await
            .expect("read");
        assert!(read.is_some(), "{key} was not replicated");
    }

    // The follower degrades past the emergency line: one emergency Job.
    sandbox
        .set_fault("e", &follower, 12.0, true)
        .await
        .expect("fault");
    let emergency = converge(
        &sandbox,
        "e",
        "an emergency Job",
        30,
        |s| s.last_emergency_job.is_some(),
        |_, _| {},
    )
    .await;
    let jobs = sandbox.emergency_jobs("e").await.expect("jobs");
    assert_eq!(jobs.len(), 1, "{emergency:?}");

    // Run it under load through every node.
    let load = Load::start(&nodes, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = sandbox.run_job("e", &jobs[0]).await.expect("run the job");
    let (keys, failed) = load.finish().await;
    println!("{}", run.stdout);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        !run.stdout.contains("leadership moved"),
        "the leader is not touched: {}",
        run.stdout
    );
    println!(
        "emergency cleanup of {follower} under load: {} writes acknowledged, {failed} failed",
        keys.len()
    );
    assert_eq!(failed, 0, "no client request failed");
    let after = converge(
        &sandbox,
        "e",
        "the follower cleaned, the leader not",
        30,
        |s| {
            s.nodes
                .iter()
                .any(|n| n.name == follower && n.last_cleanup.is_some())
        },
        |_, _| {},
    )
    .await;
    let leader_node = after
        .nodes
        .iter()
        .find(|n| n.name == leader)
        .expect("leader node");
    assert!(leader_node.last_cleanup.is_none(), "{leader_node:?}");
    assert_eq!(replication(&after).leader.as_deref(), Some(leader.as_str()));
    nothing_lost_and_roots_equal(&nodes, &keys).await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_replica_is_shown_removed_reset_and_rebuilt_from_the_group() {
    let (sandbox, formed) = group_of_three("d").await;
    let leader = replication(&formed).leader.expect("leader");
    let victim = (0..3)
        .map(|o| format!("d-{o}"))
        .find(|p| *p != leader)
        .expect("a follower");
    let nodes = urls(&sandbox, "d", 3);
    let client = MemoryClient::new(reqwest::Client::new(), nodes.clone());
    let keys: Vec<String> = (0..50).map(|i| format!("before-{i}")).collect();
    for key in &keys {
        client
            .store(key, key.as_bytes(), None)
            .await
            .expect("store");
    }
    // The fault hook writes a memory into the follower's store alone, outside the log.
    let url = sandbox.node_url(&victim).expect("victim");
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/admin/faults/diverge"))
        .bearer_auth(sandbox.token("d").expect("token"))
        .body(json!({"key": "outside-the-log"}).to_string())
        .send()
        .await
        .expect("diverge");
    assert_eq!(answer.status().as_u16(), 204);
    let diverged = wait_status(&sandbox, "d", "Diverged", 30, |s| is(s, "Diverged", "True")).await;
    let message = diverged
        .conditions
        .iter()
        .find(|c| c.type_ == "Diverged")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    println!("Diverged: {message}");
    assert!(message.contains(&victim), "{message}");
    // Repaired: removed, reset (the node exits and the kubelet restarts it empty), added
    // as a learner, sent the group's data, promoted.
    let repaired = converge(
        &sandbox,
        "d",
        "the diverged node rebuilt",
        90,
        |s| settled(s, 3) && is(s, "Diverged", "False"),
        |_, _| {},
    )
    .await;
    assert!(
        !event_notes(&sandbox, "Diverged").await.is_empty(),
        "a Warning Event"
    );
    let ordinal = victim.rsplit('-').next().expect("ordinal");
    let notes = event_notes(&sandbox, "Membership").await;
    for expected in [
        format!("remove node {ordinal}"),
        format!("reset node {ordinal}"),
        format!("add node {ordinal}"),
        format!("promote node {ordinal}"),
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(&expected)),
            "no `{expected}` Event in {notes:?}"
        );
    }
    println!("repaired: voters {:?}", replication(&repaired).voters);
    nothing_lost_and_roots_equal(&nodes, &keys).await;
    let stray = MemoryClient::new(reqwest::Client::new(), vec![url])
        .retrieve("outside-the-log", Consistency::Local)
        .await
        .expect("read");
    assert!(
        stray.is_none(),
        "the memory written outside the log is gone"
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_scaled_to_three_keeps_its_memories_and_back_to_one_serves_alone() {
    let sandbox = Sandbox::start(options()).await.expect("sandbox");
    sandbox
        .create_memory(&manifest("u", 1))
        .await
        .expect("memory");
    converge(
        &sandbox,
        "u",
        "one node serving",
        60,
        |s| is(s, "Ready", "True"),
        |_, _| {},
    )
    .await;
    let one = urls(&sandbox, "u", 1);
    let client = MemoryClient::new(reqwest::Client::new(), one.clone());
    let alone: Vec<String> = (0..50).map(|i| format!("alone-{i}")).collect();
    for key in &alone {
        client
            .store(key, key.as_bytes(), None)
            .await
            .expect("store");
    }

    // 1 → 3: node 0 restarts with the group's configuration and seeds it with its
    // memories; the others join from its snapshot.
    scale(&sandbox, "u", 3).await;
    let three = converge(
        &sandbox,
        "u",
        "a group of three",
        90,
        |s| settled(s, 3),
        |_, _| {},
    )
    .await;
    assert!(
        three
            .conditions
            .iter()
            .all(|c| c.type_ != "QuorumLost" || c.status == "False")
    );
    let nodes = urls(&sandbox, "u", 3);
    for url in &nodes {
        let local = MemoryClient::new(reqwest::Client::new(), vec![url.clone()]);
        for key in &alone {
            let read = local.retrieve(key, Consistency::Local).await.expect("read");
            assert!(read.is_some(), "{key} missing on {url}");
        }
    }
    let together: Vec<String> = (0..20).map(|i| format!("together-{i}")).collect();
    for key in &together {
        client
            .store(key, key.as_bytes(), None)
            .await
            .expect("store");
    }
    let mut everything: Vec<String> = alone.iter().chain(&together).cloned().collect();
    nothing_lost_and_roots_equal(&nodes, &everything).await;

    // 3 → 1: the others leave the group, then node 0 serves alone with everything.
    scale(&sandbox, "u", 1).await;
    let single = converge(
        &sandbox,
        "u",
        "one node again",
        90,
        |s| {
            s.replicas == 1
                && s.replication.is_none()
                && s.conditions.iter().all(|c| c.type_ != "Replicated")
                && sandbox.node_url("u-1").is_none()
                && is(s, "Ready", "True")
        },
        |_, _| {},
    )
    .await;
    println!(
        "back to one node: conditions {:?}",
        single
            .conditions
            .iter()
            .map(|c| &c.type_)
            .collect::<Vec<_>>()
    );
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for key in &after {
        client
            .store(key, key.as_bytes(), None)
            .await
            .expect("store");
    }
    everything.extend(after);
    let local = MemoryClient::new(reqwest::Client::new(), one);
    for key in &everything {
        let read = local.retrieve(key, Consistency::Local).await.expect("read");
        assert!(read.is_some(), "{key} missing on the single node");
    }
    sandbox.shutdown().await;
}
