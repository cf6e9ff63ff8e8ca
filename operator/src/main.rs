//! `phoenix-operator`: the operator's command line.

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
