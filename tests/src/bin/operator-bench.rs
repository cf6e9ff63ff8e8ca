//! `operator-bench`: the real `phoenix-operator` binary against the in-process API server.
//! For each count of PhoenixMemory resources (a fresh server and operator each): the time to
//! converge, the operator's peak RSS, its requests per memory per minute once converged, and
//! its requests during a controller storm (every StatefulSet's and PodDisruptionBudget's
//! status changing every second, as the real controllers do while pods come and go), and
//! until converged the CPU time per memory of the operator and of this process (the API
//! server) and the operator's reconciles per memory (its `/metrics`); then the teardown:
//! every memory deleted (their children go by the server's garbage collection), its time,
//! the operator's requests in it (a child it recreated would be a write) and its RSS after.
//! Prints figures; never asserts timings (a child left after the teardown is an error).
//!
//! Run: `cargo build --release --workspace --bins && target/release/operator-bench
//! [--storm-seconds S] [--kube-qps Q] [--observe-interval-seconds I] [--runs R] [N ...]`
//! (default: 1000; `--runs R` measures each count R times, each with a fresh server and
//! operator, in R rounds of every count, and scales by the run of median convergence time
//! — a 1,000-memory run lasts ~1.5 s, and one run's noise on a shared VM moved the
//! 10,000/1,000 ratio by ±15%;
//! `--kube-qps 0` lifts the operator's client-side rate limit; the observe interval
//! defaults to 10 s, a third of the operator's default, so that one interval of steady
//! state is short to wait for — its observations of converged memories then also run
//! during a long convergence; `PHOENIX_OPERATOR_BIN` runs another operator binary,
//! to compare two builds in one run).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResourceExt, ResourceExt};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_tests::apiserver::{ApiServer, Verb};

/// The operator's observe interval here (30 s by default; shorter keeps the run short).
const OBSERVE_SECONDS: u64 = 10;

/// A memory figure of process `pid` from `/proc` (`VmHWM`: peak, `VmRSS`: now), KiB.
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat` (fields
/// 14 and 15, in `USER_HZ` ticks: 100 a second on every architecture Linux runs here).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// Converged: every child applied at the resource's generation. There are no pods here,
/// so `Ready` (every node serves) stays False with reason `NodesNotReady`.
fn ready(memory: &PhoenixMemory) -> bool {
    memory.status.as_ref().is_some_and(|s| {
        s.observed_generation == memory.metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == "Ready" && (c.reason == "NodesReady" || c.reason == "NodesNotReady")
            })
    })
}

/// The bench's options.
struct Options {
    counts: Vec<usize>,
    storm_seconds: u64,
    kube_qps: Option<String>,
    observe_seconds: u64,
    runs: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        counts: Vec::new(),
        storm_seconds: 60,
        kube_qps: None,
        observe_seconds: OBSERVE_SECONDS,
        runs: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--storm-seconds" => {
                options.storm_seconds = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--storm-seconds needs a value"))?
                    .parse()?;
            }
            "--observe-interval-seconds" => {
                options.observe_seconds = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--observe-interval-seconds needs a value"))?
                    .parse()?;
                anyhow::ensure!(
                    (1..=3600).contains(&options.observe_seconds),
                    "--observe-interval-seconds must be 1 to 3600"
                );
            }
            "--runs" => {
                options.runs = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a value"))?
                    .parse()?;
                anyhow::ensure!((1..=9).contains(&options.runs), "--runs must be 1 to 9");
            }
            "--kube-qps" => {
                options.kube_qps = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--kube-qps needs a value"))?,
                );
            }
            count => options.counts.push(count.parse()?),
        }
    }
    if options.counts.is_empty() {
        options.counts.push(1000);
    }
    Ok(options)
}

/// What one count measured.
struct Figures {
    count: usize,
    converged: Duration,
    rss_kib: Option<u64>,
    rss_now_kib: Option<u64>,
    /// The bench's own creates, from the first to the last answer.
    created: Duration,
    /// CPU seconds from the first create until converged: the operator's process, and this
    /// one (the in-process API server with the bench's creates and its watch).
    operator_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// The operator's reconciles until converged (from its metrics).
    reconciles: Option<f64>,
    until_converged: BTreeMap<(Verb, String), u64>,
    steady: BTreeMap<(Verb, String), u64>,
    storm_changes: u64,
    storm: BTreeMap<(Verb, String), u64>,
    storm_seconds: u64,
    /// Deleting every memory (32 at a time), from the first to the last answer.
    teardown: Duration,
    /// The operator's requests from the first delete until 2 s after the last.
    teardown_requests: BTreeMap<(Verb, String), u64>,
    /// The operator's RSS 2 s after the teardown.
    rss_after_teardown_kib: Option<u64>,
}

fn sum(counts: &BTreeMap<(Verb, String), u64>, write: Option<bool>) -> u64 {
    counts
        .iter()
        .filter(|((verb, _), _)| write.is_none_or(|w| verb.is_mutating() == w))
        .map(|(_, n)| n)
        .sum()
}

fn describe(counts: &BTreeMap<(Verb, String), u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|((verb, resource), n)| format!("{n} {verb:?} {resource}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let operator = std::env::var_os("PHOENIX_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(|d| d.join("phoenix-operator"))
        })
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("phoenix-operator is not built next to this program: run `cargo build --release --workspace --bins`"))?;
    println!(
        "operator-bench: operator concurrency 16, observe interval {} s, rate limit {}, 2-core machine",
        options.observe_seconds,
        options.kube_qps.as_deref().map_or(
            "the operator's default (--kube-qps 200, --kube-burst 400)".to_string(),
            |q| { format!("--kube-qps {q}") }
        )
    );
    // Round by round (every count once a round), so that a slow spell of the shared machine
    // falls on every count, not on all the runs of one.
    let mut by_count: Vec<Vec<Figures>> = options.counts.iter().map(|_| Vec::new()).collect();
    for _ in 0..options.runs {
        for (&count, runs) in options.counts.iter().zip(&mut by_count) {
            let figures = run(&operator, count, &options).await?;
            print(&figures, options.observe_seconds);
            runs.push(figures);
        }
    }
    let mut all = Vec::new();
    for (&count, mut runs) in options.counts.iter().zip(by_count) {
        runs.sort_by_key(|f| f.converged);
        if runs.len() > 1 {
            let times: Vec<String> = runs
                .iter()
                .map(|f| format!("{:.2}", f.converged.as_secs_f64()))
                .collect();
            println!(
                "\n{count} memories, {} runs: converged in {} s; the median run ({} s) stands for {count} below",
                runs.len(),
                times.join(", "),
                times[runs.len() / 2],
            );
        }
        all.push(runs.swap_remove(runs.len() / 2));
    }
    if all.len() > 1 {
        let first = &all[0];
        println!("\nscaling against {} memories:", first.count);
        for f in &all[1..] {
            println!(
                "  {:>6} memories: {:.1}× the memories, {:.2}× the convergence time ({:.2} s vs {:.2} s), {:.2}× the peak RSS",
                f.count,
                f.count as f64 / first.count as f64,
                f.converged.as_secs_f64() / first.converged.as_secs_f64(),
                f.converged.as_secs_f64(),
                first.converged.as_secs_f64(),
                f.rss_kib.unwrap_or(0) as f64 / first.rss_kib.unwrap_or(1).max(1) as f64,
            );
            if let (Some(a), Some(b), Some(c), Some(d)) = (
                f.operator_cpu,
                first.operator_cpu,
                f.server_cpu,
                first.server_cpu,
            ) {
                println!(
                    "  {:>6} memories: CPU per memory {:.2}× the operator's ({:.0} vs {:.0} µs), {:.2}× the API server's and bench's ({:.0} vs {:.0} µs)",
                    f.count,
                    (a / f.count as f64) / (b / first.count as f64),
                    a * 1e6 / f.count as f64,
                    b * 1e6 / first.count as f64,
                    (c / f.count as f64) / (d / first.count as f64),
                    c * 1e6 / f.count as f64,
                    d * 1e6 / first.count as f64,
                );
            }
        }
    }
    Ok(())
}

/// A watch error while waiting (the watcher retries by itself).
fn tracing_free_warning(error: &kube::runtime::watcher::Error) {
    eprintln!("watch of the memories: {error} (retrying)");
}

fn print(f: &Figures, observe_seconds: u64) {
    println!("\n== {} PhoenixMemory resources", f.count);
    println!(
        "converged (every resource's children applied at its generation) in {:.2} s after the first create (target at 1,000: ≤ 10 s)",
        f.converged.as_secs_f64()
    );
    println!(
        "the bench's creates took {:.2} s; CPU until converged: operator {}, API server and bench {}",
        f.created.as_secs_f64(),
        cpu_figure(f.operator_cpu, f.count),
        cpu_figure(f.server_cpu, f.count),
    );
    match f.reconciles {
        Some(n) => println!(
            "operator reconciles until converged: {n:.0} ({:.2} per memory)",
            n / f.count as f64
        ),
        None => println!("operator reconciles until converged: unavailable (no metrics)"),
    }
    match f.rss_kib {
        Some(kib) => println!(
            "operator peak RSS: {:.1} MiB (targets: ≤ 64 MiB at 1,000, ≤ 150 MiB at 10,000)",
            kib as f64 / 1024.0
        ),
        None => println!("operator peak RSS: unavailable"),
    }
    if let Some(kib) = f.rss_now_kib {
        println!(
            "operator RSS at the end (converged, after the storm): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    println!(
        "requests until converged: {} ({:.1} per memory; {} writes): {}",
        sum(&f.until_converged, None),
        sum(&f.until_converged, None) as f64 / f.count as f64,
        sum(&f.until_converged, Some(true)),
        describe(&f.until_converged)
    );
    let per_minute = 60.0 / observe_seconds as f64;
    println!(
        "converged, over one observe interval ({observe_seconds} s): {} requests, {} writes — {:.3} requests per memory per minute: {}",
        sum(&f.steady, None),
        sum(&f.steady, Some(true)),
        sum(&f.steady, None) as f64 * per_minute / f.count as f64,
        describe(&f.steady)
    );
    println!(
        "storm ({} status changes of StatefulSets and PodDisruptionBudgets over {} s, {:.0} a second): the operator made {} requests ({} writes): {}",
        f.storm_changes,
        f.storm_seconds,
        f.storm_changes as f64 / f.storm_seconds.max(1) as f64,
        sum(&f.storm, None),
        sum(&f.storm, Some(true)),
        describe(&f.storm)
    );
    println!(
        "teardown (every memory deleted, 32 at a time; children by garbage collection): {:.2} s ({:.0} µs a memory); the operator made {} requests ({} writes) until 2 s after: {}; its RSS then {}",
        f.teardown.as_secs_f64(),
        f.teardown.as_secs_f64() * 1e6 / f.count as f64,
        sum(&f.teardown_requests, None),
        sum(&f.teardown_requests, Some(true)),
        describe(&f.teardown_requests),
        f.rss_after_teardown_kib
            .map_or("unavailable".into(), |kib| format!(
                "{:.1} MiB",
                kib as f64 / 1024.0
            )),
    );
}

/// CPU seconds in all and per memory.
fn cpu_figure(seconds: Option<f64>, count: usize) -> String {
    seconds.map_or("unavailable".into(), |s| {
        format!("{s:.2} s ({:.0} µs a memory)", s * 1e6 / count as f64)
    })
}

/// Starts the operator against `server` with its own kubeconfig.
fn start_operator(
    operator: &std::path::Path,
    server: &ApiServer,
    options: &Options,
    metrics: std::net::SocketAddr,
) -> anyhow::Result<Child> {
    let dir = std::env::temp_dir().join(format!("operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: local\n  user: {{}}\ncontexts:\n- name: local\n  context: {{cluster: local, user: local, namespace: default}}\n\
             current-context: local\n",
            server.url()
        ),
    )?;
    let mut args = vec![
        "run".to_string(),
        "--metrics-address".into(),
        metrics.to_string(),
        "--concurrency".into(),
        "16".into(),
        "--observe-interval-seconds".into(),
        options.observe_seconds.to_string(),
    ];
    if let Some(qps) = &options.kube_qps {
        args.extend(["--kube-qps".to_string(), qps.clone()]);
    }
    Ok(Command::new(operator)
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib_now(pid: u32) -> Option<u64> {
    rss_kib(pid, "VmRSS:")
}

async fn run(
    operator: &std::path::Path,
    count: usize,
    options: &Options,
) -> anyhow::Result<Figures> {
    let server = ApiServer::start().await?;
    let client = server.client()?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &PhoenixMemory::crd())
        .await?;
    // A free port for the operator's metrics (its reconcile count is a figure here).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = start_operator(operator, &server, options, metrics)?;
    let pid = child.id();
    let result = measure(&server, count, options, Operator { pid, metrics }).await;
    let rss_kib = rss_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let mut figures = result?;
    figures.rss_kib = rss_kib;
    Ok(figures)
}

/// Runs `action` for every memory's index, 32 at a time; any error is the run's.
async fn for_each_memory<F, Fut>(count: usize, action: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(0..count)
        .map(action)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The server's request counts but the bench's own: `verb` on `resources`.
fn requests_but(
    server: &ApiServer,
    verb: Verb,
    resources: &[&str],
) -> BTreeMap<(Verb, String), u64> {
    server
        .request_counts()
        .into_iter()
        .filter(|((v, resource), _)| !(*v == verb && resources.contains(&resource.as_str())))
        .collect()
}

/// The operator process under measurement.
#[derive(Clone, Copy)]
struct Operator {
    pid: u32,
    metrics: std::net::SocketAddr,
}

/// The operator's reconciles so far (`phoenix_operator_reconciles_total`, every result).
async fn reconciles(metrics: std::net::SocketAddr) -> Option<f64> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counts: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("phoenix_operator_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

async fn measure(
    server: &ApiServer,
    count: usize,
    options: &Options,
    operator: Operator,
) -> anyhow::Result<Figures> {
    let operator_pid = operator.pid;
    let client = server.client()?;
    let memories: Api<PhoenixMemory> = Api::default_namespaced(client.clone());
    let cpu_at_start = (cpu_seconds(operator_pid), cpu_seconds(std::process::id()));
    let started = Instant::now();
    for_each_memory(count, |i| {
        let memories = memories.clone();
        async move {
            let memory: PhoenixMemory = serde_json::from_value(serde_json::json!({
                "apiVersion": "phoenix.dev/v1alpha1", "kind": "PhoenixMemory",
                "metadata": {"name": format!("memory-{i:05}")}, "spec": {"replicas": 1},
            }))?;
            memories.create(&PostParams::default(), &memory).await?;
            anyhow::Ok(())
        }
    })
    .await?;
    let created = started.elapsed();
    // Watched, not polled: listing every memory again and again would load the server (and
    // the two cores the operator shares with it) more than the operator does.
    let deadline = Duration::from_secs(60 + count as u64 / 20);
    let mut converged_names = std::collections::HashSet::new();
    let mut changes = watcher(memories.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_event = Instant::now();
    let converged = loop {
        if converged_names.len() == count {
            break started.elapsed();
        }
        if started.elapsed() > deadline {
            anyhow::bail!(
                "only {} of {count} converged in time",
                converged_names.len()
            );
        }
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(memory)) => {
                    last_event = Instant::now();
                    if ready(&memory) {
                        converged_names.insert(memory.name_any());
                    } else {
                        converged_names.remove(&memory.name_any());
                    }
                }
                Some(Err(error)) => tracing_free_warning(&error),
                None => anyhow::bail!("the watch of the memories ended"),
            },
            _ = tick.tick() => {
                eprintln!(
                    "  {:.0} s: {} of {count} converged",
                    started.elapsed().as_secs_f64(),
                    converged_names.len()
                );
                // A watch that went quiet may have missed events: count from a list.
                if last_event.elapsed() > Duration::from_secs(10) {
                    eprintln!("  no watch event for 10 s: counting from a list");
                    converged_names = memories
                        .list(&ListParams::default())
                        .await?
                        .items
                        .iter()
                        .filter(|m| ready(m))
                        .map(ResourceExt::name_any)
                        .collect();
                    last_event = Instant::now();
                }
            }
        }
    };
    let operator_cpu = cpu_seconds(operator_pid)
        .zip(cpu_at_start.0)
        .map(|(now, start)| now - start);
    let server_cpu = cpu_seconds(std::process::id())
        .zip(cpu_at_start.1)
        .map(|(now, start)| now - start);
    let reconciles_until_converged = reconciles(operator.metrics).await;
    drop(changes);
    // The bench's own creates are not the operator's (its polls are among the lists of
    // phoenixmemories).
    let until_converged = requests_but(
        server,
        Verb::Create,
        &["phoenixmemories", "customresourcedefinitions"],
    );
    // Converged: what the operator does on its own over one observe interval (every memory
    // is observed once) is its steady load on the API server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.reset_counts();
    tokio::time::sleep(Duration::from_secs(options.observe_seconds)).await;
    let steady = server.request_counts();

    // The storm: every second, every StatefulSet's and PDB's status changes.
    server.reset_counts();
    let statefulsets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let storm_started = Instant::now();
    let mut changes = 0u64;
    let mut round = 0i64;
    while storm_started.elapsed() < Duration::from_secs(options.storm_seconds) {
        let tick = Instant::now();
        round += 1;
        let results = futures::stream::iter(0..count)
            .map(|i| {
                let (statefulsets, pdbs) = (statefulsets.clone(), pdbs.clone());
                async move {
                    let name = format!("memory-{i:05}");
                    let params = PatchParams::default();
                    let sts_status = Patch::Merge(serde_json::json!({"status": {
                        "replicas": 0, "observedGeneration": round, "collisionCount": 0
                    }}));
                    let pdb_status = Patch::Merge(serde_json::json!({"status": {
                        "observedGeneration": round, "currentHealthy": 0,
                        "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 1
                    }}));
                    let sts = statefulsets.patch_status(&name, &params, &sts_status);
                    let pdb = pdbs.patch_status(&name, &params, &pdb_status);
                    let (a, b) = futures::join!(sts, pdb);
                    u64::from(a.is_ok()) + u64::from(b.is_ok())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<u64>>()
            .await;
        changes += results.iter().sum::<u64>();
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let storm_seconds = storm_started.elapsed().as_secs().max(1);
    // The storm's own patches are the bench's, not the operator's.
    let storm = requests_but(
        server,
        Verb::Patch,
        &["statefulsets/status", "poddisruptionbudgets/status"],
    );
    let rss_now_kib = rss_kib_now(operator_pid);

    // The teardown: every memory deleted; their children go with them.
    server.reset_counts();
    let teardown_started = Instant::now();
    for_each_memory(count, |i| {
        let memories = memories.clone();
        async move {
            memories
                .delete(&format!("memory-{i:05}"), &DeleteParams::default())
                .await?;
            anyhow::Ok(())
        }
    })
    .await?;
    let teardown = teardown_started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let teardown_requests = requests_but(server, Verb::Delete, &["phoenixmemories"]);
    let rss_after_teardown_kib = rss_kib_now(operator_pid);
    let left = (
        memories.list(&ListParams::default()).await?.items.len(),
        statefulsets.list(&ListParams::default()).await?.items.len(),
        pdbs.list(&ListParams::default()).await?.items.len(),
    );
    if left != (0, 0, 0) {
        anyhow::bail!(
            "after deleting every memory, {} memories, {} StatefulSets and {} PodDisruptionBudgets are left",
            left.0,
            left.1,
            left.2
        );
    }
    Ok(Figures {
        count,
        converged,
        rss_kib: None,
        created,
        operator_cpu,
        server_cpu,
        reconciles: reconciles_until_converged,
        until_converged,
        steady,
        storm_changes: changes,
        storm,
        storm_seconds,
        teardown,
        teardown_requests,
        rss_after_teardown_kib,
        rss_now_kib,
    })
}
