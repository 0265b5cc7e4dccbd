//! `specie bench`: load-test the in-process cluster with a bench profile — a fixed open-loop
//! rate, a closed loop, or the peak finder — and report throughput, latency, CPU, memory and
//! the distance to the crypto floor, ending with the audit. The work is in `specie-bench`.

use anyhow::{Context, Result};
use clap::Args;
use specie_bench::{Options, Profile};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Arguments of `specie bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The bench profile (e.g. config/bench/pay.toml).
    #[arg(long)]
    pub profile: PathBuf,
    /// Open loop at this many operations per second (Poisson arrivals).
    #[arg(long, conflicts_with = "find_peak")]
    pub rate: Option<f64>,
    /// Find the sustainable peak: ramp, bisect, confirm at −5% and +5% three times each, then
    /// run at half the peak.
    #[arg(long)]
    pub find_peak: bool,
    /// Measured seconds of the run (of each step when finding the peak).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write the machine-readable report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report folder here: bench.json, plot.svg and .hgrm histograms.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Bench a cluster of `specie node` processes (e.g. config/cluster-3.toml) through their
    /// ingress instead of the profile's in-process cluster: the pay workload at a fixed rate.
    /// The bench starts the nodes (needs `specie certs` output in the file's TLS directory),
    /// stops them and audits their journals.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// With --cluster: drive nodes already running instead of starting them (no audit).
    #[arg(long, requires = "cluster")]
    pub attach: bool,
    /// With --cluster: where the started nodes keep their data and logs (default
    /// bench-live/PROFILE; its data is cleared at each run).
    #[arg(long, requires = "cluster")]
    pub work: Option<PathBuf>,
}

/// Runs `specie bench`; returns whether the bench passed.
pub fn run(args: &BenchArgs) -> Result<bool> {
    if let Some(cluster) = &args.cluster {
        return crate::bench_cluster::run(args, cluster);
    }
    let profile = Profile::load(&args.profile)?;
    let options = Options {
        rate_per_s: args.rate,
        find_peak: args.find_peak,
        duration_s: args.duration,
        progress: std::io::stderr().is_terminal(),
        skip_floor: false,
    };
    let report = specie_bench::run(&profile, &options)?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        let files = report
            .write_dir(dir)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        println!("  report        {}: {}", dir.display(), files.join(", "));
    }
    Ok(report.ok())
}
