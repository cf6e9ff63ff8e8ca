//! `phoenix-node`: the memory node's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use phoenix_node::bench::{self, BenchOptions, Scenario};
use phoenix_node::merkle::hex_hash;
use phoenix_node::store::{Store, StoreConfig};

/// A Phoenix memory node.
#[derive(Debug, Parser)]
#[command(name = "phoenix-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the storage benchmark scenarios and print their figures.
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
    },
    /// Check a data directory offline: recompute the Merkle root and the counters.
    Verify {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

fn parse_scale(text: &str) -> Result<f64, String> {
    let scale: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if scale.is_finite() && (0.0001..=10.0).contains(&scale) {
        Ok(scale)
    } else {
        Err(format!("scale must lie in 0.0001..=10, got {scale}"))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench {
            scenarios,
            scale,
            plot,
            dir,
            seed,
            no_progress,
            json,
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
            };
            let mut stdout = std::io::stdout().lock();
            let results = bench::run(&options, &mut stdout)?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&results)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data } => {
            if !data.join("CURRENT").exists() {
                anyhow::bail!("{} is not a phoenix-node data directory (no CURRENT)", data.display());
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
