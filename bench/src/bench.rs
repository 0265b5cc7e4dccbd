//! One bench, start to end: measure the crypto floor, start the cluster (durable or in
//! memory), run what was asked (a fixed rate, a closed loop, or the peak finder and a run at
//! half the peak), audit the cluster, and assemble the [`BenchReport`].

use crate::driver::{Driver, RunSpec};
use crate::floor::{self, CryptoFloor};
use crate::peak::{judge, PeakSearch, Stage};
use crate::profile::{LoopMode, Profile};
use crate::progress::Progress;
use crate::report::{BenchReport, HalfPeak, Memory};
use crate::stats::RunStats;
use crate::sys;
use crate::workload::Workload;
use specie_actors::{Cluster, ClusterError, DataDir, Storage};
use std::rc::Rc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long the floor measures, each time.
pub const FLOOR_DURATION: Duration = Duration::from_secs(1);
/// How long to wait for the cluster to go quiet before the audit.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The bench could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The cluster failed to start or stopped answering.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The data directory for a durable run could not be made.
    #[error("cannot make a data directory for the durable journal: {0}")]
    DataDir(String),
    /// The options do not make sense.
    #[error("{0}")]
    Usage(String),
}

/// What the command line asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Open loop at this rate (overrides the profile's mode).
    pub rate_per_s: Option<f64>,
    /// Run the peak finder.
    pub find_peak: bool,
    /// Measured seconds of each run (a peak-finder step included).
    pub duration_s: Option<f64>,
    /// Draw the progress bar.
    pub progress: bool,
    /// Skip the crypto floor (tests only: the floor takes two seconds).
    pub skip_floor: bool,
}

/// What a bench ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// One open-loop run at a fixed rate.
    Rate,
    /// One closed-loop run.
    Closed,
    /// Peak finding.
    FindPeak,
}

impl BenchMode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Rate => "open_loop",
            BenchMode::Closed => "closed_loop",
            BenchMode::FindPeak => "find_peak",
        }
    }
}

/// Runs a bench of `profile`. Starts its own actix system; call it from a plain thread.
pub fn run(profile: &Profile, options: &Options) -> Result<BenchReport, BenchError> {
    if options.find_peak && options.rate_per_s.is_some() {
        return Err(BenchError::Usage(
            "--rate and --find-peak exclude each other".into(),
        ));
    }
    if let Some(r) = options.rate_per_s {
        if !(r.is_finite() && r > 0.0 && r <= crate::profile::RATE_PER_S_MAX) {
            return Err(BenchError::Usage(format!(
                "--rate must be a positive number of operations per second, got {r}"
            )));
        }
    }
    if let Some(d) = options.duration_s {
        if !(d.is_finite() && d > 0.0 && d <= crate::profile::DURATION_S_MAX) {
            return Err(BenchError::Usage(format!(
                "--duration must be a positive number of seconds, got {d}"
            )));
        }
    }
    let system = actix::System::new();
    system.block_on(run_async(profile, options))
}

async fn run_async(profile: &Profile, options: &Options) -> Result<BenchReport, BenchError> {
    let bench_start = Instant::now();
    let mut progress = Progress::new(options.progress);
    let cores = sys::cores();
    let rss_before = sys::rss_bytes().unwrap_or(0);
    progress.stage("measuring the crypto floor");
    let floor_before = (!options.skip_floor).then(|| floor::measure(cores, FLOOR_DURATION));

    let config = profile.cluster_config.clone();
    let data_dir = if profile.durable {
        Some(
            tempfile::Builder::new()
                .prefix("specie-bench-")
                .tempdir()
                .map_err(|e| BenchError::DataDir(e.to_string()))?,
        )
    } else {
        None
    };
    let storage = match &data_dir {
        Some(dir) => {
            let node = dir.path().join("node");
            let dir = DataDir::open_or_create(
                &node,
                &profile.cluster_config_text,
                &profile.origin,
                true,
                Some(profile.seed),
            )
            .map_err(|e| BenchError::DataDir(e.to_string()))?;
            Storage::Durable(Box::new(dir))
        }
        None => Storage::Memory,
    };
    progress.stage(format!(
        "genesis: {} wallets at {} institutions",
        config.cluster.wallets,
        config.cluster.institutions.len()
    ));
    let genesis_started = Instant::now();
    let cluster = Rc::new(Cluster::start_with(config.clone(), profile.seed, storage).await?);
    let genesis_s = genesis_started.elapsed().as_secs_f64();
    let rss_after_genesis = sys::rss_bytes().unwrap_or(0);
    let journal_after_genesis = cluster.node().journal().stats();
    let network_after_genesis = cluster.node().network().stats();

    let workload = Workload::new(
        profile.workload.clone(),
        cluster.blueprint().clone(),
        config.genesis.exchange_fen,
        profile.seed,
    );
    let mut driver = Driver::new(cluster.clone(), workload, bench_start, progress);
    let duration = Duration::from_secs_f64(options.duration_s.unwrap_or(profile.duration_s));
    let base = RunSpec {
        label: String::new(),
        mode: profile.mode,
        rate_per_s: profile.rate_per_s,
        in_flight: profile.in_flight_max,
        outstanding_max: profile.outstanding_max,
        warmup: Duration::from_secs_f64(profile.warmup_s),
        duration,
        interval: Duration::from_millis(profile.interval_ms),
        drain_timeout: Duration::from_secs_f64(profile.drain_timeout_s),
        seed: profile.seed,
    };
    let mut runs: Vec<RunStats> = Vec::new();
    let mut peak = None;
    let mut half_peak = None;
    let mode;
    let main = if options.find_peak {
        mode = BenchMode::FindPeak;
        let step = Duration::from_secs_f64(options.duration_s.unwrap_or(profile.peak.step_s));
        let mut search = PeakSearch::new(profile.peak.clone());
        let mut n = 0u64;
        while let Some((stage, rate)) = search.next() {
            n += 1;
            let label = format!("{} {rate:.0}/s", stage.name());
            driver.progress().stage(format!("step {n}: {label}"));
            let spec = RunSpec {
                label,
                mode: LoopMode::Open,
                rate_per_s: rate,
                duration: step,
                warmup: Duration::ZERO,
                seed: profile.seed.wrapping_add(n),
                ..base.clone()
            };
            let stats = driver.run(&spec).await;
            search.observe(judge(&stats, &profile.peak, profile.p99_bound_ms));
            runs.push(stats);
            // Each step starts from a settled cluster: an overloaded step leaves retries and
            // redeliveries behind, which would otherwise count against the next one.
            driver.progress().stage("settling");
            cluster.quiesce(QUIESCE_TIMEOUT).await;
        }
        let outcome = search.outcome();
        let sustainable = outcome.sustainable_per_s;
        let confirm: Vec<&RunStats> = runs
            .iter()
            .zip(&outcome.steps)
            .filter(|(_, s)| s.stage == Stage::Confirm && Some(s.rate_per_s) == sustainable)
            .map(|(r, _)| r)
            .collect();
        let main = RunStats::combine(
            match sustainable {
                Some(r) => format!("sustainable peak {r:.0}/s ({} repeats)", confirm.len()),
                None => "no sustainable rate confirmed".into(),
            },
            &confirm,
        );
        if let Some(rate) = sustainable {
            cluster.quiesce(QUIESCE_TIMEOUT).await;
            let label = format!("half peak {:.0}/s", rate / 2.0);
            driver.progress().stage(label.clone());
            let spec = RunSpec {
                label,
                mode: LoopMode::Open,
                rate_per_s: rate / 2.0,
                duration: step,
                warmup: Duration::ZERO,
                seed: profile.seed.wrapping_add(10_000),
                ..base.clone()
            };
            let stats = driver.run(&spec).await;
            half_peak = Some(HalfPeak {
                rate_per_s: rate / 2.0,
                p99_bound_ms: profile.p99_bound_ms,
                stats: stats.clone(),
            });
            runs.push(stats);
        }
        peak = Some(outcome);
        main
    } else {
        let spec = match (options.rate_per_s, profile.mode) {
            (Some(rate), _) => {
                mode = BenchMode::Rate;
                RunSpec {
                    label: format!("open loop {rate:.0}/s"),
                    mode: LoopMode::Open,
                    rate_per_s: rate,
                    ..base.clone()
                }
            }
            (None, LoopMode::Open) => {
                mode = BenchMode::Rate;
                RunSpec {
                    label: format!("open loop {:.0}/s", profile.rate_per_s),
                    ..base.clone()
                }
            }
            (None, LoopMode::Closed) => {
                mode = BenchMode::Closed;
                RunSpec {
                    label: format!("closed loop, {} in flight", profile.in_flight_max),
                    ..base.clone()
                }
            }
        };
        driver.progress().stage(spec.label.clone());
        let stats = driver.run(&spec).await;
        runs.push(stats.clone());
        stats
    };

    driver.progress().stage("draining and auditing");
    let left = driver.drain_all(base.drain_timeout).await;
    let quiescent = cluster.quiesce(QUIESCE_TIMEOUT).await;
    let audit = cluster.audit().await?;
    driver.progress().clear();
    let journal = cluster.node().journal().stats();
    let network = cluster.node().network().stats();
    let escalations = cluster.node().escalations();
    let restarts = cluster.node().restarts();
    let peak_rss = sys::peak_rss_bytes().unwrap_or(0);
    cluster.shutdown();
    drop(driver);
    let floor_after = (!options.skip_floor).then(|| floor::measure(cores, FLOOR_DURATION));
    // The better of the two measurements: the machine's capability, so the ratio errs low.
    let floor = match (floor_before, floor_after) {
        (Some(a), Some(b)) => Some(if a.verifies_per_s >= b.verifies_per_s {
            a
        } else {
            b
        }),
        _ => None::<CryptoFloor>,
    };
    let wallets = config.cluster.wallets;
    Ok(BenchReport {
        profile: profile.name.clone(),
        description: profile.description.clone(),
        mode,
        durable: profile.durable,
        seed: profile.seed,
        wallets,
        institutions: config.cluster.institutions.len(),
        arbiters: config.runtime.arbiters,
        cores,
        p99_bound_ms: profile.p99_bound_ms,
        genesis_s,
        main,
        runs,
        peak,
        half_peak,
        floor,
        memory: Memory {
            rss_before_cluster_bytes: rss_before,
            rss_after_genesis_bytes: rss_after_genesis,
            peak_rss_bytes: peak_rss,
            bytes_per_wallet: rss_after_genesis.saturating_sub(rss_before) as f64 / wallets as f64,
        },
        audit,
        quiescent,
        left_pending: left,
        journal,
        journal_after_genesis,
        network,
        network_after_genesis,
        escalations,
        restarts,
        wall_s: bench_start.elapsed().as_secs_f64(),
    })
}
