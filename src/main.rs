//! `specie`: the command-line program of the specie settlement runtime.
//!
//! Layout: `main.rs` parses the command line; `run.rs` is `specie run` (start the embedded
//! cluster, drive a workload, audit); `report.rs` turns results into the terminal report and
//! the JSON file.

mod report;
mod run;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use specie_runtime::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// The embedded default cluster (a copy of `config/local.toml`).
const DEFAULT_CONFIG: &str = include_str!("../config/local.toml");

#[derive(Parser)]
#[command(name = "specie", version, about = "An actor-model settlement runtime for coin-based digital currency")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster in this process, drive a payment workload, report and audit.
    Run(run::RunArgs),
}

/// Loads the config at `path`, or the embedded default.
fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::parse(DEFAULT_CONFIG, "embedded config/local.toml")?),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => load_config(args.config.as_ref())
            .context("loading the configuration")
            .and_then(|config| run::run(config, &args)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("specie: {e:#}");
            ExitCode::from(2)
        }
    }
}
