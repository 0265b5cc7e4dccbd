//! `specie chaos run | replay | shrink`: deterministic chaos experiments (see the
//! `specie-chaos` crate); `specie chaos run SCENARIO --cluster FILE` runs a scenario against a
//! live multi-process cluster instead (see `chaos_live.rs`).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use specie_chaos::report;
use specie_chaos::shrink::{shrink, ShrinkLimits};
use specie_chaos::{planted_bugs, run as simulate, RunOptions, RunResult, Scenario};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// `specie chaos` subcommands.
#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Run a scenario for one seed or a sweep of seeds; exit 1 on a violation.
    Run(RunArgs),
    /// Rerun one seed exactly (same seed and build ⇒ same history).
    Replay(ReplayArgs),
    /// Expand a failing seed's schedule into explicit faults, minimize it while the failure
    /// persists, and write the minimal scenario.
    Shrink(ShrinkArgs),
}

/// Arguments of `specie chaos run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The scenario file (see config/chaos/).
    pub scenario: PathBuf,
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// A range of seeds, `A..B` (both included, like `A..=B`).
    #[arg(long)]
    pub seeds: Option<String>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML timeline per run (and the history as JSON lines) into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Switch on a deliberately wrong behaviour (builds with `--features planted-bugs`).
    #[arg(long)]
    pub planted_bug: Option<String>,
    /// Run against a live multi-process cluster described by this cluster file (e.g.
    /// `config/cluster-3.toml`): its nodes are started (or attached to), faults go through
    /// their admin service, kills are SIGKILLs of node processes.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// With --cluster: talk to nodes that are already running instead of starting them.
    #[arg(long, requires = "cluster")]
    pub attach: bool,
    /// With --cluster: the directory for the nodes' data, logs, the acknowledgement log and
    /// the audit (default `chaos-live/NAME-seed-N`; its data is cleared at each run).
    #[arg(long, requires = "cluster")]
    pub work: Option<PathBuf>,
}

/// Arguments of `specie chaos replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The seed.
    #[arg(long)]
    pub seed: u64,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML timeline and the history into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The planted bug of the run being replayed.
    #[arg(long)]
    pub planted_bug: Option<String>,
}

/// Arguments of `specie chaos shrink`.
#[derive(Args, Debug)]
pub struct ShrinkArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The failing seed.
    #[arg(long)]
    pub seed: u64,
    /// Where to write the minimal scenario (default: SCENARIO-shrunk-seed-N.toml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The planted bug of the failing run.
    #[arg(long)]
    pub planted_bug: Option<String>,
    /// Most candidate runs.
    #[arg(long, default_value_t = 400)]
    pub runs_max: usize,
}

fn planted(name: Option<&str>) -> Result<Option<&'static str>> {
    let Some(name) = name else { return Ok(None) };
    let known = planted_bugs();
    if known.is_empty() {
        bail!("--planted-bug needs a build with the planted bugs compiled in: cargo run --features planted-bugs -- chaos …");
    }
    known
        .into_iter()
        .find(|k| *k == name)
        .map(Some)
        .ok_or_else(|| {
            anyhow!(
                "unknown planted bug `{name}`; one of {}",
                planted_bugs().join(", ")
            )
        })
}

fn load(path: &Path) -> Result<Scenario> {
    Ok(Scenario::load(path)?)
}

/// Parses `A..B` or `A..=B`; both include B (`1..20` is twenty seeds).
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let bad = || anyhow!("--seeds must be A..B (e.g. 1..20, both ends included), got `{text}`");
    let (a, b) = text
        .split_once("..=")
        .or_else(|| text.split_once(".."))
        .ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = b.checked_add(1).ok_or_else(bad)?;
    if end <= a {
        bail!("--seeds `{text}` is empty");
    }
    if end - a > 100_000 {
        bail!("--seeds `{text}` has more than 100000 seeds");
    }
    Ok((a..end).collect())
}

fn write_report(dir: &Path, r: &RunResult) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!("{}-seed-{}", r.scenario, r.seed);
    let html = dir.join(format!("{stem}.html"));
    std::fs::write(&html, report::html(r))
        .with_context(|| format!("writing {}", html.display()))?;
    let history = dir.join(format!("{stem}.history.jsonl"));
    std::fs::write(&history, r.history.to_jsonl())
        .with_context(|| format!("writing {}", history.display()))?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs `specie chaos …`; returns whether everything held.
pub fn run(command: &ChaosCommand) -> Result<bool> {
    match command {
        ChaosCommand::Run(args) => run_cmd(args),
        ChaosCommand::Replay(args) => {
            let scenario = load(&args.scenario)?;
            let options = RunOptions {
                seed: args.seed,
                planted: planted(args.planted_bug.as_deref())?,
            };
            let r = simulate(&scenario, &options);
            print!("{}", report::summary(&r));
            if let Some(path) = &args.json {
                write_json(path, &report::json(&r))?;
            }
            if let Some(dir) = &args.report {
                write_report(dir, &r)?;
            }
            Ok(r.ok())
        }
        ChaosCommand::Shrink(args) => shrink_cmd(args),
    }
}

fn run_cmd(args: &RunArgs) -> Result<bool> {
    if let Some(cluster) = &args.cluster {
        return crate::chaos_live::run(args, cluster);
    }
    let scenario = load(&args.scenario)?;
    let planted = planted(args.planted_bug.as_deref())?;
    let seeds = match (&args.seeds, args.seed) {
        (Some(range), _) => parse_seeds(range)?,
        (None, seed) => vec![seed.unwrap_or(1)],
    };
    let progress = std::io::stderr().is_terminal() && seeds.len() > 1;
    let mut results = Vec::with_capacity(seeds.len());
    for (i, seed) in seeds.iter().enumerate() {
        if progress {
            eprint!("\r\x1b[2K[{}/{}] seed {seed}…", i + 1, seeds.len());
        }
        let r = simulate(
            &scenario,
            &RunOptions {
                seed: *seed,
                planted,
            },
        );
        if let Some(dir) = &args.report {
            write_report(dir, &r)?;
        }
        if seeds.len() == 1 || !r.ok() {
            if progress {
                eprint!("\r\x1b[2K");
            }
            print!("{}", report::summary(&r));
            let _ = std::io::stdout().flush();
        }
        results.push(r);
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    if seeds.len() > 1 {
        let passed = results.iter().filter(|r| r.ok()).count();
        let sim: f64 = results.iter().map(|r| r.sim_ms as f64 / 1000.0).sum();
        let wall: f64 = results.iter().map(|r| r.wall_s).sum();
        let ops: usize = results.iter().map(|r| r.ops).sum();
        println!(
            "specie chaos — {}: {passed} of {} seeds passed ({}..={}), {ops} operations, {:.0} simulated s in {:.1} s wall ({:.0} simulated s per wall s)",
            scenario.name,
            results.len(),
            seeds[0],
            seeds[seeds.len() - 1],
            sim,
            wall,
            sim / wall.max(1e-9)
        );
        for r in results.iter().filter(|r| !r.ok()) {
            println!(
                "  seed {:<6} FAILED {}: replay with  {}",
                r.seed,
                r.failed().join(", "),
                report::replay_command(r)
            );
        }
    }
    if let Some(path) = &args.json {
        let doc = if results.len() == 1 {
            report::json(&results[0])
        } else {
            report::sweep_json(&results)
        };
        write_json(path, &doc)?;
    }
    Ok(results.iter().all(RunResult::ok))
}

fn shrink_cmd(args: &ShrinkArgs) -> Result<bool> {
    let scenario = load(&args.scenario)?;
    let options = RunOptions {
        seed: args.seed,
        planted: planted(args.planted_bug.as_deref())?,
    };
    let limits = ShrinkLimits {
        runs_max: args.runs_max,
        ..ShrinkLimits::default()
    };
    let s = shrink(&scenario, &options, limits);
    if s.original.ok() {
        println!(
            "specie chaos shrink — {} with seed {} passes: nothing to shrink",
            scenario.name, args.seed
        );
        return Ok(true);
    }
    println!(
        "specie chaos shrink — {}, seed {}: failed {}",
        scenario.name,
        args.seed,
        s.original.failed().join(", ")
    );
    let Some(minimal) = &s.scenario else {
        bail!("the explicit schedule did not reproduce the failure");
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .scenario
            .file_stem()
            .map_or("scenario".into(), |s| s.to_string_lossy().to_string());
        args.scenario
            .with_file_name(format!("{stem}-shrunk-seed-{}.toml", args.seed))
    });
    let header = format!(
        "# Minimal scenario written by `specie chaos shrink` from {} with seed {}{}.\n# It fails the same way; replay it with:\n#   specie chaos replay {} --seed {}{}\n\n",
        scenario.origin,
        args.seed,
        options.planted.map(|p| format!(" (planted bug {p})")).unwrap_or_default(),
        out.display(),
        args.seed,
        options.planted.map(|p| format!(" --planted-bug {p}")).unwrap_or_default(),
    );
    std::fs::write(&out, header + &minimal.to_toml())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "  faults        {} → {} after {} runs{}",
        s.faults_before,
        minimal.faults.len(),
        s.runs,
        if s.truncated {
            " (stopped at the run limit)"
        } else {
            ""
        }
    );
    for f in &minimal.faults {
        println!(
            "    {} at {:.3} s for {:.3} s",
            f.kind.name(),
            f.start_ms as f64 / 1000.0,
            f.duration_ms as f64 / 1000.0
        );
    }
    if let Some(r) = &s.minimal {
        println!("  still fails    {}", r.failed().join(", "));
        if let Some(v) = &r.violation {
            println!(
                "  violation     {} at {:.3} s ({}): {}",
                v.invariant,
                v.at_ms as f64 / 1000.0,
                v.phase,
                v.facts
            );
        }
    }
    println!("  wrote         {}", out.display());
    println!(
        "  replay        specie chaos replay {} --seed {}{}",
        out.display(),
        args.seed,
        options
            .planted
            .map(|p| format!(" --planted-bug {p}"))
            .unwrap_or_default()
    );
    // The run failed: shrinking it is a success of the tool, not of the system.
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_include_both_ends() {
        assert_eq!(parse_seeds("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("5..5").unwrap(), vec![5]);
        assert!(parse_seeds("5..4").is_err());
        assert!(parse_seeds("x").is_err());
    }
}
