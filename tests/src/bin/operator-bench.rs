//! `operator-bench`: the real `phoenix-operator` binary against the in-process API server,
//! converging N PhoenixMemory resources. Prints the time to converge and the operator
//! process's peak RSS; never asserts timings.
//!
//! Run: `cargo build --release --workspace --bins && target/release/operator-bench [N]`
//! (`PHOENIX_OPERATOR_BIN` runs another operator binary, to compare two builds in one run).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, PostParams};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_tests::apiserver::{ApiServer, Verb};

/// The operator's observe interval here (30 s by default; shorter keeps the run short).
const OBSERVE_SECONDS: u64 = 10;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map_or(Ok(1000), |n| n.parse())?;
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

    let server = ApiServer::start().await?;
    let client = server.client()?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &PhoenixMemory::crd())
        .await?;
    let dir = tempfile_dir()?;
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
    let mut child = Command::new(&operator)
        .args([
            "run",
            "--metrics-address",
            "127.0.0.1:0",
            "--concurrency",
            "16",
            "--observe-interval-seconds",
            &OBSERVE_SECONDS.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();

    let memories: Api<PhoenixMemory> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let memories = memories.clone();
            async move {
                let memory: PhoenixMemory = serde_json::from_value(serde_json::json!({
                    "apiVersion": "phoenix.dev/v1alpha1", "kind": "PhoenixMemory",
                    "metadata": {"name": format!("memory-{i:04}")}, "spec": {"replicas": 1},
                }))?;
                memories.create(&PostParams::default(), &memory).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let converged = loop {
        let list = memories.list(&ListParams::default()).await?;
        let done = list.items.iter().filter(|m| ready(m)).count();
        if done == count {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("only {done} of {count} converged within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sts_patches = server.requests(Verb::Patch, "statefulsets");
    let status_patches = server.requests(Verb::Patch, "phoenixmemories/status");
    let gets = server.requests(Verb::Get, "statefulsets");
    // A converged operator makes no writes on its own; what it reads over one observe
    // interval (every memory is observed once) is its steady load on the API server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.reset_counts();
    tokio::time::sleep(Duration::from_secs(OBSERVE_SECONDS)).await;
    let idle_writes = server.mutations().len();
    let idle_requests = server.request_counts();
    let rss = peak_rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "operator-bench: {count} PhoenixMemory resources, operator concurrency 16, 2-core machine"
    );
    println!("created all in {:.2} s", created.as_secs_f64());
    println!(
        "converged (every resource's children applied at its generation) in {:.2} s after the first create (target ≤ 10 s)",
        converged.as_secs_f64()
    );
    match rss {
        Some(kib) => println!(
            "operator peak RSS: {:.1} MiB (target ≤ 64 MiB)",
            kib as f64 / 1024.0
        ),
        None => println!("operator peak RSS: unavailable"),
    }
    println!(
        "writes by the converged operator over one observe interval ({OBSERVE_SECONDS} s): {idle_writes}"
    );
    let total: u64 = idle_requests.values().sum();
    let by_kind: Vec<String> = idle_requests
        .iter()
        .map(|((verb, resource), n)| format!("{n} {verb:?} {resource}"))
        .collect();
    println!(
        "requests by the converged operator over one observe interval: {total} ({:.1} per memory): {}",
        total as f64 / count as f64,
        by_kind.join(", ")
    );
    println!(
        "API requests until converged: {sts_patches} StatefulSet applies, {gets} StatefulSet reads, {status_patches} status patches"
    );
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
