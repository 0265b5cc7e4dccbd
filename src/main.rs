//! `specie`: the command-line program of the specie settlement runtime.
//!
//! Layout: `main.rs` parses the command line; `run.rs` is `specie run` (start the embedded
//! cluster, drive a workload, audit); `report.rs` turns results into the terminal report and
//! the JSON file.

mod audit_cmd;
mod bench_cluster;
mod bench_cmd;
mod certs;
mod chaos_cmd;
mod chaos_live;
mod client;
mod live_nodes;
mod node_cmd;
mod reconcile;
mod report;
mod run;
mod workload_sagas;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use specie_runtime::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// The embedded default cluster (a copy of `config/local.toml`).
const DEFAULT_CONFIG: &str = include_str!("../config/local.toml");

#[derive(Parser)]
#[command(
    name = "specie",
    version,
    about = "An actor-model settlement runtime for coin-based digital currency"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster in this process, drive a payment workload, report and audit.
    Run(run::RunArgs),
    /// Check the invariants of a node's data directory from its journal, read-only.
    Audit(audit_cmd::AuditArgs),
    /// Reconcile a batch of transaction records over the hash chain (`--demo`).
    Reconcile(reconcile::ReconcileArgs),
    /// Load-test the cluster with a bench profile: fixed rate, closed loop or peak finding.
    Bench(bench_cmd::BenchArgs),
    /// Deterministic chaos experiments: run a scenario over seeds, replay one, shrink a failure.
    #[command(subcommand)]
    Chaos(chaos_cmd::ChaosCommand),
    /// Run one node of a multi-process cluster (`--config config/cluster-3.toml --id n1`).
    Node(node_cmd::NodeArgs),
    /// Talk to a multi-process cluster: pay, merge, split, escrow, status, balance.
    Client(client::ClientArgs),
    /// Generate a development CA and node, client and admin certificates (mutual TLS).
    Certs(certs::CertsArgs),
}

/// A config as given: its text, where it came from, and whether the user named it.
pub struct ConfigSource {
    /// The TOML text.
    pub text: String,
    /// The file name (or "embedded config/local.toml"), for error messages.
    pub origin: String,
    /// Whether `--config` named it.
    pub given: bool,
}

impl ConfigSource {
    /// Reads the config at `path`, or takes the embedded default.
    fn read(path: Option<&PathBuf>) -> Result<ConfigSource> {
        match path {
            Some(path) => Ok(ConfigSource {
                text: std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?,
                origin: path.display().to_string(),
                given: true,
            }),
            None => Ok(ConfigSource {
                text: DEFAULT_CONFIG.to_string(),
                origin: "embedded config/local.toml".to_string(),
                given: false,
            }),
        }
    }

    /// Parses and validates it.
    pub fn parse(&self) -> Result<Config> {
        Ok(Config::parse(&self.text, &self.origin)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => ConfigSource::read(args.config.as_ref())
            .context("loading the configuration")
            .and_then(|source| run::run(source, &args)),
        Command::Audit(args) => audit_cmd::run(&args),
        Command::Reconcile(args) => reconcile::run(&args),
        Command::Bench(args) => bench_cmd::run(&args),
        Command::Chaos(command) => chaos_cmd::run(&command),
        Command::Node(args) => node_cmd::run(args).map(|()| true),
        Command::Certs(args) => certs::run(&args),
        Command::Client(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client's runtime")
            .and_then(|rt| rt.block_on(client::run(args))),
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
