//! `phoenix-sandbox`: the whole product on one machine, without a cluster.
//!
//! It starts the in-process API server, installs the CRD and a PhoenixMemory (the built-in
//! `examples/replicated.yaml` by default: three nodes forming one Raft group;
//! `--memory examples/minimal.yaml` runs one node), runs the operator's controller, starts one real
//! `phoenix-node` process per pod the StatefulSet asks for (on 127.0.0.x, writing each pod's
//! IP and readiness into its status as a kubelet would), runs the cleanup Jobs' command when
//! the CronJob's schedule or an emergency asks for one, drives a load whose retrieve latency
//! degrades in phases, and shows a live table of each node's ratio, role, applied index and
//! root, the plan, the last decision and the Jobs. A replicated memory also goes through a
//! leader kill and a rolling cleanup, while clients write through every node and count
//! every request that failed (which must stay 0). Ctrl-C stops it and every node process.
//!
//! Run: `cargo build --release --workspace --bins && target/release/phoenix-sandbox`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::ListParams;
use phoenix_operator::crd::{PhoenixMemory, PhoenixMemoryStatus};
use phoenix_tests::sandbox::{Options, Sandbox, Seed, find_node_bin};

const REPLICATED: &str = include_str!("../../../examples/replicated.yaml");

/// Run Phoenix Memory — API server, operator, nodes, cleanup Jobs — on this machine.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A PhoenixMemory manifest to run (default: examples/replicated.yaml, built in: three
    /// nodes; examples/minimal.yaml runs one).
    #[arg(long)]
    memory: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// `live`: a table redrawn every second (one line per refresh when stdout is not a
    /// terminal); `table`: the table printed every second; `lines`: one line per second.
    #[arg(long, value_enum, default_value_t = Output::Live)]
    output: Output,
    /// Memories each node starts with.
    #[arg(long, default_value_t = 5000)]
    seed_keys: usize,
    /// Seconds of flat latency before each degradation.
    #[arg(long, default_value_t = 20)]
    calm_seconds: u64,
}

/// How the state is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Live,
    Table,
    Lines,
}

/// What the sandbox is doing, for the table.
#[derive(Debug, Default)]
struct Story {
    phase: String,
    jobs: Vec<String>,
    /// Client writes acknowledged, and requests that failed for good (reads and writes).
    written: u64,
    failed: u64,
    last_failure: Option<String>,
}

type Shared = Arc<Mutex<Story>>;

fn story(shared: &Shared) -> std::sync::MutexGuard<'_, Story> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn note_job(shared: &Shared, line: String) {
    let mut story = story(shared);
    story.jobs.push(line);
    let excess = story.jobs.len().saturating_sub(5);
    story.jobs.drain(..excess);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let manifest = match &args.memory {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?,
        None => REPLICATED.to_string(),
    };
    let node_bin = find_node_bin()?;
    let sandbox = Arc::new(Sandbox::start(Options::new(node_bin)).await?);
    let memory = sandbox.create_memory(&manifest).await?;
    let name = memory.name_any();
    let seed = Seed {
        keys: args.seed_keys,
        value_len: 200,
    };
    let shared: Shared = Arc::default();
    let tasks = vec![
        tokio::spawn(kubelet(Arc::clone(&sandbox), name.clone(), seed)),
        tokio::spawn(job_runner(
            Arc::clone(&sandbox),
            name.clone(),
            Arc::clone(&shared),
        )),
        tokio::spawn(load(
            Arc::clone(&sandbox),
            name.clone(),
            seed,
            Duration::from_secs(args.calm_seconds),
            Arc::clone(&shared),
        )),
    ];
    let output = match args.output {
        Output::Live if !std::io::stdout().is_terminal() => Output::Lines,
        other => other,
    };
    let started = Instant::now();
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = refresh.tick() => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let view = render(&sandbox, &name, &shared, started, output != Output::Lines).await;
                match output {
                    Output::Live => print!("\x1b[2J\x1b[H{view}"),
                    Output::Table | Output::Lines => println!("{view}"),
                }
            }
        }
    }
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    sandbox.stop_nodes();
    match Arc::try_unwrap(sandbox) {
        Ok(sandbox) => sandbox.shutdown().await,
        Err(_) => anyhow::bail!("a task still holds the sandbox (its node processes are stopped)"),
    }
    println!("stopped: operator, API server and every node process");
    Ok(())
}

/// The StatefulSet controller and kubelet: keeps one node process per replica.
async fn kubelet(sandbox: Arc<Sandbox>, memory: String, seed: Seed) {
    loop {
        if let Err(error) = sandbox.sync_pods_seeded(&memory, seed).await {
            tracing::debug!(%error, "pods not synced yet");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Job controller: runs each new emergency Job, and the CronJob when its schedule fires.
async fn job_runner(sandbox: Arc<Sandbox>, memory: String, shared: Shared) {
    let mut next_scheduled: Option<(String, jiff::Timestamp)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(jobs) = sandbox.emergency_jobs(&memory).await {
            for job in jobs.iter().filter(|j| {
                j.status
                    .as_ref()
                    .is_none_or(|s| s.succeeded.is_none() && s.failed.is_none())
            }) {
                run_one(&sandbox, &memory, job, &shared, "emergency").await;
            }
        }
        let Ok(Some(cronjob)) = sandbox
            .api::<CronJob>()
            .get_opt(&phoenix_operator::children::cronjob_name(&memory))
            .await
        else {
            continue;
        };
        let Some(spec) = cronjob.spec else { continue };
        let now = jiff::Timestamp::now();
        let due = match &next_scheduled {
            Some((schedule, at)) if *schedule == spec.schedule => *at <= now,
            _ => {
                next_scheduled = next_fire(&spec.schedule, spec.time_zone.as_deref(), now)
                    .map(|at| (spec.schedule.clone(), at));
                false
            }
        };
        if due {
            next_scheduled = next_fire(&spec.schedule, spec.time_zone.as_deref(), now)
                .map(|at| (spec.schedule.clone(), at));
            if spec.suspend == Some(true) {
                note_job(
                    &shared,
                    format!(
                        "{} scheduled run skipped: the CronJob is suspended",
                        clock()
                    ),
                );
                continue;
            }
            let job = Job {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!(
                        "{}-scheduled",
                        cronjob.metadata.name.unwrap_or_default()
                    )),
                    ..Default::default()
                },
                spec: spec.job_template.spec,
                ..Job::default()
            };
            run_one(&sandbox, &memory, &job, &shared, "scheduled").await;
        }
    }
}

/// When `schedule` next fires after `now`, in `time_zone`.
fn next_fire(
    schedule: &str,
    time_zone: Option<&str>,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let cron: croner::Cron = schedule.parse().ok()?;
    let zone = jiff::tz::TimeZone::get(time_zone.unwrap_or("Etc/UTC")).ok()?;
    let next = cron.find_next_occurrence(&now.to_zoned(zone), false).ok()?;
    Some(next.timestamp())
}

async fn run_one(sandbox: &Sandbox, memory: &str, job: &Job, shared: &Shared, kind: &str) {
    let started = Instant::now();
    let name = job.name_any();
    match sandbox.run_job(memory, job).await {
        Ok(run) => {
            let cleaned = run
                .stdout
                .lines()
                .filter(|l| l.contains("cleaned in"))
                .count();
            let skipped = run
                .stdout
                .lines()
                .filter(|l| l.contains(": skipped"))
                .count();
            note_job(
                shared,
                format!(
                    "{} {kind} {name}: exit {} in {:.1} s — {cleaned} cleaned, {skipped} skipped",
                    clock(),
                    run.code.map_or("signal".into(), |c| c.to_string()),
                    started.elapsed().as_secs_f64()
                ),
            );
            if kind == "emergency" {
                let _ = sandbox.finish_job(job, run.code == Some(0)).await;
            }
        }
        Err(error) => note_job(
            shared,
            format!("{} {kind} {name}: did not run: {error:#}", clock()),
        ),
    }
}

fn clock() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

/// Traffic on every node, and a latency story on the first: flat, rising, degraded, past
/// the emergency line — each step a fault a cleanup removes — then flat again.
async fn load(sandbox: Arc<Sandbox>, memory: String, seed: Seed, calm: Duration, shared: Shared) {
    let traffic = AbortOnDrop(tokio::spawn({
        let sandbox = Arc::clone(&sandbox);
        let memory = memory.clone();
        async move {
            let http = reqwest::Client::new();
            let mut rng = fastrand::Rng::new();
            loop {
                for ordinal in 0..100 {
                    let Some(url) = sandbox.node_url(&format!("{memory}-{ordinal}")) else {
                        break;
                    };
                    let key = format!("key-{:06}", rng.usize(..seed.keys.max(1)));
                    let _ = http.get(format!("{url}/v1/memories/{key}")).send().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }));
    let writers = AbortOnDrop(tokio::spawn(clients(
        Arc::clone(&sandbox),
        memory.clone(),
        Arc::clone(&shared),
    )));
    let first = format!("{memory}-0");
    let set_phase = |text: String| story(&shared).phase = text;
    loop {
        set_phase(format!(
            "flat: light traffic, no fault (for {} s)",
            calm.as_secs()
        ));
        let _ = sandbox.set_fault(&memory, &first, 1.0, true).await;
        tokio::time::sleep(calm).await;
        // The fault slows the engine's part of a retrieve; what clients are served (the
        // signal the operator decides on by default) also holds HTTP's ~100 µs, so it
        // moves by about a quarter as much: these steps make the served ratio rise,
        // cross degradationThreshold and then the emergency line.
        for (slowdown, seconds, what) in [
            (2.5, 15, "rising"),
            (8.0, 20, "degraded"),
            (80.0, 60, "past the emergency line"),
        ] {
            set_phase(format!(
                "{what}: {first}'s engine retrieves {slowdown}× slower (a fault a cleanup removes)"
            ));
            if sandbox
                .set_fault(&memory, &first, slowdown, true)
                .await
                .is_err()
            {
                break;
            }
            // Stop early when a cleanup already removed the fault.
            for _ in 0..seconds {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if sandbox
                    .fault(&memory, &first)
                    .await
                    .is_some_and(|f| f <= 1.0)
                {
                    break;
                }
            }
            if sandbox
                .fault(&memory, &first)
                .await
                .is_some_and(|f| f <= 1.0)
            {
                set_phase(format!("{first} was cleaned: latency back to its baseline"));
                tokio::time::sleep(Duration::from_secs(10)).await;
                break;
            }
        }
        if replicated(&sandbox, &memory).await {
            maintenance(&sandbox, &memory, &shared).await;
        }
        if traffic.0.is_finished() || writers.0.is_finished() {
            break;
        }
    }
}

/// Whether the memory's nodes form a group (the status shows one).
async fn replicated(sandbox: &Sandbox, memory: &str) -> bool {
    sandbox
        .api::<PhoenixMemory>()
        .get(memory)
        .await
        .ok()
        .and_then(|m| m.status)
        .is_some_and(|s| s.replication.is_some_and(|r| r.initialized))
}

/// A replicated memory's hard moments: its leader's process is killed (the kubelet
/// restarts it), then every node is cleaned in turn with a forced rebuild, the leader last
/// after leadership has moved — while the clients keep writing through every node.
async fn maintenance(sandbox: &Sandbox, memory: &str, shared: &Shared) {
    let set_phase = |text: String| story(shared).phase = text;
    let leader = sandbox
        .api::<PhoenixMemory>()
        .get(memory)
        .await
        .ok()
        .and_then(|m| m.status)
        .and_then(|s| s.replication)
        .and_then(|r| r.leader);
    if let Some(leader) = leader {
        set_phase(format!("the leader {leader}'s process is killed (SIGKILL)"));
        sandbox.kill_node(&leader);
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    set_phase("rolling cleanup: every node rebuilt in turn, followers first".into());
    let job = cronjob_run(sandbox, memory, &["--force-rebuild"]).await;
    if let Some(job) = job {
        run_one(sandbox, memory, &job, shared, "rolling").await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
}

/// One run of the CronJob's Job template, with `extra` arguments.
async fn cronjob_run(sandbox: &Sandbox, memory: &str, extra: &[&str]) -> Option<Job> {
    let cronjob = sandbox
        .api::<CronJob>()
        .get_opt(&phoenix_operator::children::cronjob_name(memory))
        .await
        .ok()??;
    let mut spec = cronjob.spec?.job_template.spec?;
    if let Some(container) = spec
        .template
        .spec
        .as_mut()
        .and_then(|p| p.containers.first_mut())
    {
        container
            .args
            .get_or_insert_with(Vec::new)
            .extend(extra.iter().map(|a| (*a).to_string()));
    }
    Some(Job {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{memory}-cleanup-now")),
            ..Default::default()
        },
        spec: Some(spec),
        ..Job::default()
    })
}

/// Clients writing and reading through every node (with the documented retry rule),
/// counting acknowledged writes and every request that failed for good.
async fn clients(sandbox: Arc<Sandbox>, memory: String, shared: Shared) {
    // The nodes' addresses are stable (a cluster's DNS names): wait until they all run.
    let nodes = loop {
        let replicas = sandbox
            .api::<PhoenixMemory>()
            .get(&memory)
            .await
            .map_or(0, |m| m.spec.replicas.max(0));
        let urls: Vec<String> = (0..replicas)
            .filter_map(|o| sandbox.node_url(&format!("{memory}-{o}")))
            .collect();
        if replicas > 0 && urls.len() == usize::try_from(replicas).unwrap_or(0) {
            break urls;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client = phoenix_node_api::MemoryClient::new(reqwest::Client::new(), nodes);
    let mut n = 0u64;
    loop {
        let key = format!("client-{n:08}");
        n += 1;
        let wrote = client.store(&key, key.as_bytes(), None).await;
        let read = match &wrote {
            Ok(_) => client
                .retrieve(&key, phoenix_node_api::Consistency::Linearizable)
                .await
                .map(|r| r.is_some()),
            Err(_) => Ok(true),
        };
        {
            let mut story = story(&shared);
            match (wrote, read) {
                (Ok(_), Ok(true)) => story.written += 1,
                (Err(error), _) | (_, Err(error)) => {
                    story.failed += 1;
                    story.last_failure = Some(format!("{} {key}: {error}", clock()));
                }
                (Ok(_), Ok(false)) => {
                    story.failed += 1;
                    story.last_failure =
                        Some(format!("{} {key}: acknowledged but not read back", clock()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Aborts the task when dropped (when the task that owns it is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn seconds_text(seconds: u64) -> String {
    match seconds {
        0 => "-".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn render(
    sandbox: &Sandbox,
    memory: &str,
    shared: &Shared,
    started: Instant,
    table: bool,
) -> String {
    let status: PhoenixMemoryStatus = sandbox
        .api::<PhoenixMemory>()
        .get(memory)
        .await
        .ok()
        .and_then(|m| m.status)
        .unwrap_or_default();
    let plan = status.plan.clone().unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    let (phase, jobs, written, failed, last_failure) = {
        let story = story(shared);
        (
            story.phase.clone(),
            story.jobs.clone(),
            story.written,
            story.failed,
            story.last_failure.clone(),
        )
    };
    let replication = status.replication.clone().unwrap_or_default();
    let replica = |name: &str| replication.nodes.iter().find(|n| n.name == name);
    if !table {
        let ratios: Vec<String> = status
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{}={}",
                    n.name,
                    n.ratio.map_or("-".into(), |r| format!("{r:.2}"))
                )
            })
            .collect();
        let (rule, outcome) = status
            .last_decision
            .as_ref()
            .map_or(("-", "-"), |d| (d.rule.as_str(), d.outcome.as_str()));
        return format!(
            "[{:>4.0}s] {} | leader {} | writes {written} failed {failed} | plan {} every {} | {rule}/{outcome}: {} | {}",
            started.elapsed().as_secs_f64(),
            ratios.join(" "),
            replication.leader.as_deref().unwrap_or("-"),
            plan.schedule,
            seconds_text(plan.runs_every_seconds.unwrap_or(plan.interval_seconds)),
            conditions.join(" "),
            phase
        );
    }
    let mut out = format!(
        "Phoenix sandbox — PhoenixMemory default/{memory} — up {:.0} s — Ctrl-C stops everything\n\n",
        started.elapsed().as_secs_f64()
    );
    if status.replication.is_some() {
        out.push_str(&format!(
            "GROUP      leader {}, term {}, voters {}, learners {}, commit index {}\n\n",
            replication.leader.as_deref().unwrap_or("none"),
            replication.term,
            replication.voters.join(" "),
            if replication.learners.is_empty() {
                "-".to_string()
            } else {
                replication.learners.join(" ")
            },
            replication
                .commit_index
                .map_or("-".into(), |i| i.to_string())
        ));
    }
    out.push_str(&format!(
        "{:<14} {:<9} {:>8} {:<10} {:>7} {:>7} {:>9} {:>10} {:>10} {:>8} {:>7}  {:<22} {}\n",
        "NODE",
        "ROLE",
        "APPLIED",
        "ROOT",
        "RATIO",
        "SERVED",
        "SERVED99",
        "RECENT",
        "BASELINE",
        "SAMPLES",
        "KEYS",
        "LAST CLEANUP",
        "NOTE"
    ));
    for node in &status.nodes {
        let us = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.2}µs", s * 1e6));
        let replica = replica(&node.name);
        out.push_str(&format!(
            "{:<14} {:<9} {:>8} {:<10} {:>7} {:>7} {:>9} {:>10} {:>10} {:>8} {:>7}  {:<22} {}\n",
            node.name,
            replica.map_or("-", |r| r.role.as_str()),
            replica
                .and_then(|r| r.applied_index)
                .map_or("-".into(), |i| i.to_string()),
            replica
                .and_then(|r| r.root.as_deref())
                .map_or("-".into(), |r| r.chars().take(8).collect::<String>()),
            node.ratio.map_or("-".into(), |r| format!("{r:.2}×")),
            node.served_ratio.map_or("-".into(), |r| format!("{r:.2}×")),
            node.served_p99_seconds
                .map_or("-".into(), |s| format!("{:.0}µs", s * 1e6)),
            us(node.recent_seconds),
            us(node.baseline_seconds),
            node.samples,
            node.keys,
            node.last_cleanup_effect
                .clone()
                .unwrap_or_else(|| "-".into()),
            node.stale_reason.clone().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "\nPLAN       {} ({}), every {} — {}\n",
        plan.schedule,
        plan.time_zone,
        seconds_text(plan.runs_every_seconds.unwrap_or(plan.interval_seconds)),
        plan.reason
    ));
    match &status.last_decision {
        Some(decision) => out.push_str(&format!(
            "DECISION   {} {}/{}: {}\n",
            decision.time.0, decision.rule, decision.outcome, decision.reason
        )),
        None => out.push_str("DECISION   -\n"),
    }
    out.push_str(&format!("CONDITIONS {}\n", conditions.join("  ")));
    for alarm in status
        .conditions
        .iter()
        .filter(|c| c.status == "True" && ["Diverged", "QuorumLost"].contains(&c.type_.as_str()))
    {
        out.push_str(&format!("  {}: {}\n", alarm.type_, alarm.message));
    }
    out.push_str(&format!("LOAD       {phase}\n"));
    out.push_str(&format!(
        "CLIENTS    {written} writes acknowledged and read back, {failed} requests failed{}\n\nJOBS\n",
        last_failure.map_or(String::new(), |f| format!(" (last: {f})"))
    ));
    if jobs.is_empty() {
        out.push_str("  none yet\n");
    }
    for job in &jobs {
        out.push_str(&format!("  {job}\n"));
    }
    out.push_str("\nEVENTS (newest last)\n");
    if let Ok(events) = sandbox.api::<Event>().list(&ListParams::default()).await {
        let mut events = events.items;
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        for event in events.iter().rev().take(6).rev() {
            out.push_str(&format!(
                "  {:<17} {}\n",
                event.reason.clone().unwrap_or_default(),
                event.note.clone().unwrap_or_default()
            ));
        }
    }
    out
}
