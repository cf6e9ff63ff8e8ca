//! `phoenix-operator`: the operator's command line.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Phoenix Memory operator.
#[derive(Debug, Parser)]
#[command(name = "phoenix-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the PhoenixMemory CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
    /// Print the RBAC rules the operator needs (the chart's roles are checked against them).
    Rbac,
    /// Run the controller against the cluster of the current kubeconfig or service account.
    Run {
        /// Watch only this namespace (all namespaces by default).
        #[arg(long, env = "PHOENIX_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Node image used when a spec names none.
        #[arg(long, env = "PHOENIX_DEFAULT_IMAGE", default_value = DEFAULT_IMAGE)]
        default_image: String,
        /// Reconciles running at once.
        #[arg(long, default_value_t = 8)]
        concurrency: u16,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Elect a leader on a Lease so that only one replica reconciles.
        #[arg(long, env = "PHOENIX_LEADER_ELECTION")]
        leader_election: bool,
        /// Namespace of the leader-election Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "phoenix-operator-leader")]
        lease_name: String,
        /// This replica's identity in the election.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds a lease stays valid after its last renewal.
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// Seconds between observations of each memory's nodes.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        observe_interval_seconds: u64,
        /// Seconds a node scrape may take before the node counts as stale.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        scrape_timeout_seconds: u64,
        /// API requests a second at most (a token bucket; 0: no limit).
        #[arg(long, env = "PHOENIX_KUBE_QPS", default_value_t = 200)]
        kube_qps: u32,
        /// API requests in a burst above `--kube-qps` (at least `--kube-qps`).
        #[arg(long, env = "PHOENIX_KUBE_BURST", default_value_t = 400)]
        kube_burst: u32,
        /// Address of the operator's /metrics, /healthz and /readyz.
        #[arg(long, env = "PHOENIX_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
        metrics_address: std::net::SocketAddr,
    },
    /// Print, offline, every object the operator would apply for the PhoenixMemory in FILE.
    Plan {
        /// A PhoenixMemory manifest (YAML).
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Node image used when the spec names none.
        #[arg(long, env = "PHOENIX_DEFAULT_IMAGE", default_value = DEFAULT_IMAGE)]
        default_image: String,
    },
}

/// The node image when neither the spec nor `--default-image` names one.
const DEFAULT_IMAGE: &str = concat!("phoenix-memory:", env!("CARGO_PKG_VERSION"));

fn run(
    settings: phoenix_operator::controller::Settings,
    metrics_address: std::net::SocketAddr,
    throttle: Option<phoenix_operator::throttle::Throttle>,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = kube::Config::infer().await?;
        let client = match throttle {
            Some(throttle) => kube::client::ClientBuilder::try_from(config)?
                .with_layer(&throttle)
                .build(),
            None => kube::Client::try_from(config)?,
        };
        let metrics = Arc::new(phoenix_operator::metrics::Metrics::new()?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let http = tokio::spawn(phoenix_operator::http::serve(
            metrics_address,
            Arc::clone(&metrics),
            stopped(stop_rx.clone()),
        ));
        tracing::info!(%metrics_address, "serving /metrics, /healthz, /readyz");
        phoenix_operator::controller::run(client, settings, metrics, stopped(stop_rx)).await?;
        http.await??;
        Ok(())
    })
}

fn plan(file: &std::path::Path, default_image: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use kube::ResourceExt;
    use phoenix_operator::children::{
        Inputs, Tokens, build_all, build_cronjob, build_emergency_job, emergency_job_name,
    };
    use phoenix_operator::crd::PhoenixMemory;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("failed to read {}", file.display()))?;
    let mut memory: PhoenixMemory = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a PhoenixMemory", file.display()))?;
    if memory.metadata.namespace.is_none() {
        memory.metadata.namespace = Some("default".into());
    }
    memory.metadata.uid = Some("<assigned by the API server>".into());
    let valid = phoenix_operator::validate::validate_named(&memory.name_any(), &memory.spec)
        .map_err(|problems| anyhow::anyhow!("invalid spec:\n  {}", problems.join("\n  ")))?;
    let tokens = Tokens {
        admin: "<generated once at the first reconcile>".into(),
        peer: "<generated once at the first reconcile>".into(),
    };
    let inputs = Inputs::new(&memory, &valid, default_image, &tokens);
    let children = build_all(&inputs)?;
    // Before any observation the plan is maxInterval.
    let schedule = phoenix_operator::plan::schedule(
        &valid,
        &memory.namespace().unwrap_or_default(),
        &memory.name_any(),
        valid.max_interval,
    );
    let cronjob = build_cronjob(&inputs, &schedule);
    // What an emergency would create (only when the policy decides one).
    let emergency = build_emergency_job(
        &inputs,
        &cronjob,
        emergency_job_name(&memory.metadata.name.clone().unwrap_or_default(), 0),
        valid.spec.cleanup.degradation_threshold,
    );
    let documents = [
        serde_yaml::to_string(&children.configmap)?,
        serde_yaml::to_string(&children.secret)?,
        serde_yaml::to_string(&children.headless_service)?,
        serde_yaml::to_string(&children.client_service)?,
        serde_yaml::to_string(&children.statefulset)?,
        serde_yaml::to_string(&children.pdb)?,
        serde_yaml::to_string(&children.network_policy)?,
        serde_yaml::to_string(&cronjob)?,
        serde_yaml::to_string(&emergency)?,
    ];
    Ok(documents.join("---\n"))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Rbac => match phoenix_operator::rbac::rules_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            namespace,
            default_image,
            concurrency,
            json_logs,
            leader_election,
            lease_namespace,
            lease_name,
            identity,
            lease_seconds,
            observe_interval_seconds,
            scrape_timeout_seconds,
            kube_qps,
            kube_burst,
            metrics_address,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            if json_logs {
                builder.json().init();
            } else {
                builder.init();
            }
            let leader_election =
                leader_election.then(|| phoenix_operator::controller::LeaderElection {
                    namespace: lease_namespace,
                    lease_name,
                    identity: identity
                        .unwrap_or_else(|| format!("phoenix-operator-{:08x}", fastrand::u32(..))),
                    lease_seconds: lease_seconds.max(2),
                    renew_margin_seconds: (lease_seconds / 3).max(1),
                });
            let settings = phoenix_operator::controller::Settings {
                default_image,
                namespace,
                concurrency,
                leader_election,
                observe_interval: std::time::Duration::from_secs(observe_interval_seconds),
                scrape_timeout: std::time::Duration::from_secs(scrape_timeout_seconds),
                ..Default::default()
            };
            let throttle = phoenix_operator::throttle::Throttle::new(kube_qps, kube_burst);
            match run(settings, metrics_address, throttle) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plan {
            file,
            default_image,
        } => match plan(&file, &default_image) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Crd => match phoenix_operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: failed to render the CRD: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
