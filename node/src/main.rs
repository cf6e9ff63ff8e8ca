//! `phoenix-node`: the memory node's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
#[cfg(feature = "bench")]
use phoenix_node::bench::{self, BenchOptions, Scenario};
use phoenix_node::config::{DurabilityMode, LogFormat, NodeConfig};
use phoenix_node::merkle::hex_hash;
use phoenix_node::store::{Store, StoreConfig};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Phoenix memory node.
#[derive(Debug, Parser)]
#[command(name = "phoenix-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one memory node over HTTP until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Clean the nodes of one memory, one at a time (what the cleanup CronJob runs).
    Cleanup(phoenix_node::cleanup_job::CleanupArgs),
    /// Run the storage benchmark scenarios and print their figures.
    #[cfg(feature = "bench")]
    Bench {
        /// Scenarios to run (default: all, in order).
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<Scenario>,
        /// Multiply every key and operation count (1.0 = the documented sizes).
        #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
        scale: f64,
        /// Write one SVG plot per scenario into this directory.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Directory for the benchmark databases (default: the system temp directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seed of the operation sequences.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Hide the progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run the HTTP scenarios (sustained mix with an empty route, durable stores) on a
        /// node served in-process on loopback.
        #[arg(long)]
        http: bool,
        /// With `--http`: compare with Redis instead — a `redis-server` from the `PATH` (or
        /// `PHOENIX_REDIS_SERVER`) started on loopback with AOF everysec, both driven by the
        /// same clients; says so when none is installed.
        #[arg(long, requires = "http")]
        peers: bool,
        /// Run the replication scenarios instead: three node processes of this binary on
        /// loopback beside a single node (and etcd, when installed), same clients.
        #[arg(long, conflicts_with = "http")]
        replicated: bool,
        /// With `--replicated`: only these scenarios (repeatable).
        #[arg(long = "only", requires = "replicated", value_parser = ["reads", "durable", "sustained", "recovery"])]
        only: Vec<String>,
        /// Client threads of the HTTP and replication scenarios.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Run every scenario in this process. By default each scenario runs in a child
        /// process of its own, so its peak RSS is not inflated by memory the previous
        /// scenario's allocator kept.
        #[arg(long)]
        in_process: bool,
    },
    /// Check a data directory offline: recompute the Merkle root and the counters.
    Verify {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

#[cfg(feature = "bench")]
/// Runs each scenario in a child `phoenix-node bench --in-process --scenario X`, whose
/// output goes straight to ours; returns the children's results as one JSON array.
fn bench_in_children(options: &BenchOptions) -> anyhow::Result<serde_json::Value> {
    use clap::ValueEnum;
    let exe = std::env::current_exe().context("failed to find this program's path")?;
    let scratch = tempfile::tempdir_in(&options.dir).context("failed to create a scratch dir")?;
    let mut results = Vec::new();
    for scenario in &options.scenarios {
        let name = scenario
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .context("scenario without a name")?;
        let json = scratch.path().join(format!("{name}.json"));
        let mut command = std::process::Command::new(&exe);
        command
            .args(["bench", "--in-process", "--scenario", &name])
            .arg("--scale")
            .arg(options.scale.to_string())
            .arg("--seed")
            .arg(options.seed.to_string())
            .arg("--dir")
            .arg(&options.dir)
            .arg("--json")
            .arg(&json);
        if let Some(plot) = &options.plot_dir {
            command.arg("--plot").arg(plot);
        }
        if !options.progress {
            command.arg("--no-progress");
        }
        let status = command
            .status()
            .context("failed to start a benchmark child")?;
        anyhow::ensure!(status.success(), "scenario {name} failed ({status})");
        let text =
            std::fs::read(&json).with_context(|| format!("scenario {name} wrote no results"))?;
        let value: serde_json::Value = serde_json::from_slice(&text)?;
        results.extend(value.as_array().cloned().unwrap_or_default());
    }
    Ok(serde_json::Value::Array(results))
}

/// Flags of `serve`; each overrides the configuration file.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The configuration file (YAML; the operator mounts it from a ConfigMap).
    #[arg(long, env = "PHOENIX_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "PHOENIX_NODE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory.
    #[arg(long, env = "PHOENIX_NODE_DATA")]
    data: Option<PathBuf>,
    /// File holding the admin bearer token.
    #[arg(long, env = "PHOENIX_NODE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Durable before acknowledged (group commit), overriding `durability.mode`.
    #[arg(long)]
    sync: bool,
    /// Accept fault injection on `PUT /v1/admin/faults` (tests and the sandbox only).
    #[arg(long, env = "PHOENIX_NODE_FAULT_INJECTION")]
    fault_injection: bool,
    /// Log format.
    #[arg(long, env = "PHOENIX_NODE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(data) = &self.data {
            config.data_dir = data.clone();
        }
        if let Some(file) = &self.admin_token_file {
            config.admin_token_file = Some(file.clone());
        }
        if self.sync {
            config.durability.mode = DurabilityMode::Sync;
        }
        if self.fault_injection {
            config.fault_injection = true;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(feature = "bench")]
fn parse_scale(text: &str) -> Result<f64, String> {
    let scale: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if scale.is_finite() && (0.0001..=10.0).contains(&scale) {
        Ok(scale)
    } else {
        Err(format!("scale must lie in 0.0001..=10, got {scale}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its configuration first: its log format decides how logging starts.
    let serve_config = match &cli.command {
        Command::Serve(args) => match args.config() {
            Ok(config) => Some(config),
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    init_logging(
        serve_config
            .as_ref()
            .map_or(LogFormat::Human, |c| c.log_format),
    );
    match run(cli, serve_config) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error
                .downcast_ref::<phoenix_node::service::CannotStart>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli, serve_config: Option<NodeConfig>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(_) => {
            let config = serve_config.context("serve without a configuration")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            let served = runtime.block_on(phoenix_node::service::serve(config));
            // A final flush that hung is abandoned: do not wait for its thread.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup(args) => Ok(phoenix_node::cleanup_job::run(&args)),
        #[cfg(feature = "bench")]
        Command::Bench {
            scenarios,
            scale,
            plot,
            dir,
            seed,
            no_progress,
            json,
            in_process,
            http,
            peers,
            replicated,
            only,
            concurrency,
        } => {
            let options = BenchOptions {
                dir: dir.unwrap_or_else(std::env::temp_dir),
                scale,
                scenarios: if scenarios.is_empty() {
                    Scenario::ALL.to_vec()
                } else {
                    scenarios
                },
                plot_dir: plot,
                progress: !no_progress,
                seed,
                http_concurrency: http.then_some(usize::from(concurrency)),
                http_peers: peers,
                replicated_concurrency: replicated.then_some(usize::from(concurrency)),
                replicated_only: only,
            };
            let results = if options.scenarios.len() > 1 && !in_process && !http && !replicated {
                bench_in_children(&options)?
            } else {
                let mut stdout = std::io::stdout().lock();
                serde_json::to_value(bench::run(&options, &mut stdout)?)?
            };
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&results)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data } => {
            if !data.join("CURRENT").exists() {
                anyhow::bail!(
                    "{} is not a phoenix-node data directory (no CURRENT)",
                    data.display()
                );
            }
            let store = Store::open(StoreConfig::new(&data))
                .with_context(|| format!("failed to open {}", data.display()))?;
            let report = store.verify()?;
            println!(
                "keys: {}\nstored root:   {}\ncomputed root: {}\ncounters match: {}",
                report.keys,
                hex_hash::to_hex(&report.stored_root),
                hex_hash::to_hex(&report.computed_root),
                report.counters_match
            );
            if report.ok() {
                println!("ok");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("MISMATCH");
                Ok(ExitCode::from(2))
            }
        }
    }
}
