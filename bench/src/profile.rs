//! Bench profiles (`config/bench/NAME.toml`), read in two steps: parse the TOML into raw
//! values, then validate them into a [`Profile`]. Every error names the file and the field.
//!
//! A profile has four tables:
//! - `[bench]`: the run itself — loop mode, offered rate or operations in flight, duration,
//!   durability, the p99 bound the peak finder holds the cluster to;
//! - `[workload]`: what is offered — the saga mix, cross-institution and collect shares, hot
//!   wallets (contention) and the invalid share (double spends, insufficient funds, forged);
//! - `[peak]`: how `--find-peak` ramps, refines and confirms;
//! - `[cluster_config]`: overrides of the cluster config, table by table, with the fields of
//!   `config/local.toml` (e.g. `[cluster_config.cluster] wallets = 1000000`). The overrides
//!   are merged into the base config (`bench.base_config`, or the embedded
//!   `config/local.toml`), and the result is validated like any cluster config.

use serde::Deserialize;
use specie_runtime::config::Config;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The embedded default cluster config (a copy of `config/local.toml`).
pub const DEFAULT_CLUSTER_CONFIG: &str = include_str!("../../config/local.toml");

/// Most operations one open-loop run may have outstanding before arrivals are shed.
pub const OUTSTANDING_MAX_LIMIT: usize = 1_000_000;
/// Highest offered rate a profile or `--rate` may ask for, per second.
pub const RATE_PER_S_MAX: f64 = 10_000_000.0;
/// Longest one measured run may last.
pub const DURATION_S_MAX: f64 = 24.0 * 3600.0;
/// Most steps the peak finder may take in its ramp and refinement.
pub const PEAK_STEPS_LIMIT: u32 = 64;

/// A profile could not be used.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{file}: cannot read: {why}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        why: String,
    },
    /// Not valid TOML, or not the shape of a profile.
    #[error("{file}: {why}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message.
        why: String,
    },
    /// A value is out of its range.
    #[error("{file}: field `{field}` {why}")]
    Invalid {
        /// The file.
        file: String,
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The merged cluster config is not valid.
    #[error("{file}: cluster_config: {why}")]
    Cluster {
        /// The file.
        file: String,
        /// The config error.
        why: String,
    },
}

/// How operations are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopMode {
    /// Arrivals at a fixed Poisson rate, whatever the cluster does; latency counts from
    /// each operation's intended send time.
    Open,
    /// A fixed number of operations in flight; a new one starts when one finishes.
    Closed,
}

impl LoopMode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            LoopMode::Open => "open",
            LoopMode::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    bench: RawBench,
    #[serde(default)]
    workload: RawWorkload,
    #[serde(default)]
    peak: RawPeak,
    #[serde(default)]
    cluster_config: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBench {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    base_config: Option<PathBuf>,
    #[serde(default = "default_true")]
    durable: bool,
    #[serde(default = "default_seed")]
    seed: u64,
    mode: LoopMode,
    #[serde(default = "default_rate")]
    rate_per_s: f64,
    #[serde(default = "default_in_flight")]
    in_flight_max: usize,
    #[serde(default = "default_outstanding")]
    outstanding_max: usize,
    duration_s: f64,
    #[serde(default)]
    warmup_s: f64,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    #[serde(default = "default_p99")]
    p99_bound_ms: f64,
    #[serde(default = "default_drain")]
    drain_timeout_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default = "default_hundred")]
    pay_percent: u32,
    #[serde(default)]
    merge_percent: u32,
    #[serde(default = "default_cross")]
    cross_institution_percent: u32,
    #[serde(default)]
    collect_percent: u32,
    #[serde(default = "default_amount")]
    amount_max_fen: u64,
    #[serde(default)]
    hot_wallets: u64,
    #[serde(default)]
    hot_percent: u32,
    #[serde(default)]
    insufficient_percent: u32,
    #[serde(default)]
    double_spend_percent: u32,
    #[serde(default)]
    forged_percent: u32,
}

impl Default for RawWorkload {
    fn default() -> Self {
        toml::from_str("").expect("every workload field has a default")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeak {
    #[serde(default = "default_start_rate")]
    start_rate_per_s: f64,
    #[serde(default = "default_growth")]
    growth: f64,
    #[serde(default = "default_step_s")]
    step_s: f64,
    #[serde(default = "default_refine")]
    refine_steps: u32,
    #[serde(default = "default_repeats")]
    confirm_repeats: u32,
    #[serde(default = "default_passes")]
    confirm_passes_min: u32,
    #[serde(default = "default_margin")]
    confirm_margin_percent: f64,
    #[serde(default = "default_achieved")]
    achieved_percent_min: f64,
    #[serde(default = "default_steps_max")]
    steps_max: u32,
}

impl Default for RawPeak {
    fn default() -> Self {
        toml::from_str("").expect("every peak field has a default")
    }
}

fn default_true() -> bool {
    true
}
fn default_seed() -> u64 {
    1
}
fn default_rate() -> f64 {
    1000.0
}
fn default_in_flight() -> usize {
    256
}
fn default_outstanding() -> usize {
    100_000
}
fn default_interval() -> u64 {
    1000
}
fn default_p99() -> f64 {
    25.0
}
fn default_drain() -> f64 {
    60.0
}
fn default_hundred() -> u32 {
    100
}
fn default_cross() -> u32 {
    75
}
fn default_amount() -> u64 {
    20_000
}
fn default_start_rate() -> f64 {
    500.0
}
fn default_growth() -> f64 {
    1.5
}
fn default_step_s() -> f64 {
    5.0
}
fn default_refine() -> u32 {
    2
}
fn default_repeats() -> u32 {
    3
}
fn default_passes() -> u32 {
    2
}
fn default_margin() -> f64 {
    5.0
}
fn default_achieved() -> f64 {
    95.0
}
fn default_steps_max() -> u32 {
    24
}

/// The workload a profile offers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Share of operations that are payments (the rest are merges).
    pub pay_percent: u32,
    /// Share of operations that are merges. Must be 0 until the merge saga exists.
    pub merge_percent: u32,
    /// Payments whose payee banks at another institution.
    pub cross_institution_percent: u32,
    /// Payments started by the payee (a merchant's collect request).
    pub collect_percent: u32,
    /// Amounts are drawn from 1 to this (and the payer's balance).
    pub amount_max_fen: u64,
    /// Size of the hot set: the wallets that contended payments come from and go to.
    pub hot_wallets: u64,
    /// Share of payments between hot wallets (contention).
    pub hot_percent: u32,
    /// Planted payments above the payer's balance (must be refused `insufficient_funds`).
    pub insufficient_percent: u32,
    /// Planted second spends of spent coins (must be refused `coin_spent`).
    pub double_spend_percent: u32,
    /// Planted authorizations signed with the wrong key (must be refused `bad_signature`).
    pub forged_percent: u32,
}

/// How `--find-peak` searches.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakSpec {
    /// The ramp's first offered rate.
    pub start_rate_per_s: f64,
    /// Each ramp step offers this many times the previous one.
    pub growth: f64,
    /// How long each step runs.
    pub step_s: f64,
    /// Bisection steps between the last passing and the first failing rate.
    pub refine_steps: u32,
    /// Runs at −margin and +margin of the peak.
    pub confirm_repeats: u32,
    /// Repeats at a level that must pass for the level to hold (a majority by default: one
    /// run spoiled by another process's burst on a shared machine does not sink a level).
    pub confirm_passes_min: u32,
    /// The confirmation margin, in percent of the peak.
    pub confirm_margin_percent: f64,
    /// A step passes only if it completes at least this share of what was offered.
    pub achieved_percent_min: f64,
    /// Most ramp and refinement steps.
    pub steps_max: u32,
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's name (reports and the JSON `profile` key).
    pub name: String,
    /// What it measures, in a sentence.
    pub description: String,
    /// Where it was read from.
    pub origin: String,
    /// Whether the cluster journals to disk (redb group commits with fsync).
    pub durable: bool,
    /// Seed of the keys and of every random choice of the workload.
    pub seed: u64,
    /// Default loop mode (`--rate` forces open, `--find-peak` ramps open-loop runs).
    pub mode: LoopMode,
    /// Default offered rate of an open-loop run.
    pub rate_per_s: f64,
    /// Operations in flight in a closed-loop run.
    pub in_flight_max: usize,
    /// Open loop: arrivals beyond this many outstanding operations are shed (and counted).
    pub outstanding_max: usize,
    /// Measured time of one run.
    pub duration_s: f64,
    /// Time at the start of a run whose operations are not measured.
    pub warmup_s: f64,
    /// Length of a report interval.
    pub interval_ms: u64,
    /// The p99 latency the peak finder holds the cluster to.
    pub p99_bound_ms: f64,
    /// How long to wait, after a run, for its operations to finish.
    pub drain_timeout_s: f64,
    /// The workload.
    pub workload: WorkloadSpec,
    /// The peak finder.
    pub peak: PeakSpec,
    /// The cluster config: base merged with the profile's overrides, as TOML text.
    pub cluster_config_text: String,
    /// The same, validated.
    pub cluster_config: Config,
}

impl Profile {
    /// Reads, parses and validates a profile file; `bench.base_config` is resolved relative
    /// to the profile's folder.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Io {
            file: file.clone(),
            why: e.to_string(),
        })?;
        Profile::parse(&text, &file, path.parent())
    }

    /// Parses and validates profile text; `origin` names it in errors, `dir` is where a
    /// relative `bench.base_config` is looked for.
    pub fn parse(text: &str, origin: &str, dir: Option<&Path>) -> Result<Profile, ProfileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            file: origin.to_string(),
            why: e.to_string().trim_end().to_string(),
        })?;
        let base = match &raw.bench.base_config {
            None => DEFAULT_CLUSTER_CONFIG.to_string(),
            Some(p) => {
                let p = match dir {
                    Some(d) if p.is_relative() => d.join(p),
                    _ => p.clone(),
                };
                std::fs::read_to_string(&p).map_err(|e| ProfileError::Io {
                    file: p.display().to_string(),
                    why: e.to_string(),
                })?
            }
        };
        validate(raw, origin, &base)
    }
}

/// Merges `overrides` into `base`, table by table; values in `overrides` win.
fn merge(base: &mut toml::Table, overrides: &toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn validate(raw: RawFile, file: &str, base: &str) -> Result<Profile, ProfileError> {
    let invalid = |field: &'static str, why: String| ProfileError::Invalid {
        file: file.to_string(),
        field,
        why,
    };
    let b = &raw.bench;
    if b.name.trim().is_empty() {
        return Err(invalid("bench.name", "must not be empty".into()));
    }
    let positive = |field: &'static str, v: f64, max: f64| {
        if v.is_finite() && v > 0.0 && v <= max {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("must be above 0 and at most {max}, is {v}"),
            ))
        }
    };
    positive("bench.rate_per_s", b.rate_per_s, RATE_PER_S_MAX)?;
    positive("bench.duration_s", b.duration_s, DURATION_S_MAX)?;
    positive("bench.p99_bound_ms", b.p99_bound_ms, 60_000.0)?;
    positive("bench.drain_timeout_s", b.drain_timeout_s, 3600.0)?;
    if !(b.warmup_s.is_finite() && b.warmup_s >= 0.0 && b.warmup_s < b.duration_s) {
        return Err(invalid(
            "bench.warmup_s",
            format!(
                "must be at least 0 and below bench.duration_s, is {}",
                b.warmup_s
            ),
        ));
    }
    if b.in_flight_max == 0 || b.in_flight_max > OUTSTANDING_MAX_LIMIT {
        return Err(invalid(
            "bench.in_flight_max",
            format!(
                "must be 1 to {OUTSTANDING_MAX_LIMIT}, is {}",
                b.in_flight_max
            ),
        ));
    }
    if b.outstanding_max == 0 || b.outstanding_max > OUTSTANDING_MAX_LIMIT {
        return Err(invalid(
            "bench.outstanding_max",
            format!(
                "must be 1 to {OUTSTANDING_MAX_LIMIT}, is {}",
                b.outstanding_max
            ),
        ));
    }
    if !(10..=3_600_000).contains(&b.interval_ms) {
        return Err(invalid(
            "bench.interval_ms",
            format!("must be 10 to 3600000, is {}", b.interval_ms),
        ));
    }
    let w = &raw.workload;
    for (field, v) in [
        ("workload.pay_percent", w.pay_percent),
        ("workload.merge_percent", w.merge_percent),
        (
            "workload.cross_institution_percent",
            w.cross_institution_percent,
        ),
        ("workload.collect_percent", w.collect_percent),
        ("workload.hot_percent", w.hot_percent),
    ] {
        if v > 100 {
            return Err(invalid(
                field,
                format!("is a percentage, at most 100, is {v}"),
            ));
        }
    }
    if w.pay_percent + w.merge_percent != 100 {
        return Err(invalid(
            "workload.pay_percent",
            format!(
                "plus workload.merge_percent must be 100, is {}",
                w.pay_percent + w.merge_percent
            ),
        ));
    }
    let planted = w.insufficient_percent + w.double_spend_percent + w.forged_percent;
    if planted > 50 {
        return Err(invalid(
            "workload.insufficient_percent",
            format!(
                "plus double_spend_percent and forged_percent must be at most 50, is {planted}"
            ),
        ));
    }
    if w.amount_max_fen == 0 {
        return Err(invalid(
            "workload.amount_max_fen",
            "must be positive".into(),
        ));
    }
    if w.hot_percent > 0 && w.hot_wallets < 2 {
        return Err(invalid(
            "workload.hot_wallets",
            format!(
                "must be at least 2 when workload.hot_percent is set, is {}",
                w.hot_wallets
            ),
        ));
    }
    let p = &raw.peak;
    positive("peak.start_rate_per_s", p.start_rate_per_s, RATE_PER_S_MAX)?;
    positive("peak.step_s", p.step_s, DURATION_S_MAX)?;
    if !(p.growth.is_finite() && p.growth > 1.0 && p.growth <= 10.0) {
        return Err(invalid(
            "peak.growth",
            format!("must be above 1 and at most 10, is {}", p.growth),
        ));
    }
    if p.confirm_repeats == 0 || p.confirm_repeats > 10 {
        return Err(invalid(
            "peak.confirm_repeats",
            format!("must be 1 to 10, is {}", p.confirm_repeats),
        ));
    }
    if p.confirm_passes_min == 0 || p.confirm_passes_min > p.confirm_repeats {
        return Err(invalid(
            "peak.confirm_passes_min",
            format!(
                "must be 1 to peak.confirm_repeats ({}), is {}",
                p.confirm_repeats, p.confirm_passes_min
            ),
        ));
    }
    if !(p.confirm_margin_percent > 0.0 && p.confirm_margin_percent < 50.0) {
        return Err(invalid(
            "peak.confirm_margin_percent",
            format!(
                "must be above 0 and below 50, is {}",
                p.confirm_margin_percent
            ),
        ));
    }
    if !(p.achieved_percent_min > 0.0 && p.achieved_percent_min <= 100.0) {
        return Err(invalid(
            "peak.achieved_percent_min",
            format!(
                "must be above 0 and at most 100, is {}",
                p.achieved_percent_min
            ),
        ));
    }
    if p.steps_max == 0 || p.steps_max > PEAK_STEPS_LIMIT || p.refine_steps > p.steps_max {
        return Err(invalid(
            "peak.steps_max",
            format!(
                "must be 1 to {PEAK_STEPS_LIMIT} and at least peak.refine_steps ({}), is {}",
                p.refine_steps, p.steps_max
            ),
        ));
    }
    let mut table: toml::Table = toml::from_str(base).map_err(|e| ProfileError::Cluster {
        file: file.to_string(),
        why: format!("base config: {e}"),
    })?;
    merge(&mut table, &raw.cluster_config);
    let cluster_config_text = toml::to_string(&table).expect("a TOML table serializes");
    let cluster_config = Config::parse(
        &cluster_config_text,
        &format!("{file} (merged cluster config)"),
    )
    .map_err(|e| ProfileError::Cluster {
        file: file.to_string(),
        why: e.to_string(),
    })?;
    if w.hot_wallets > cluster_config.cluster.wallets {
        return Err(invalid(
            "workload.hot_wallets",
            format!(
                "({}) exceeds the cluster's wallets ({})",
                w.hot_wallets, cluster_config.cluster.wallets
            ),
        ));
    }
    Ok(Profile {
        name: b.name.clone(),
        description: b.description.clone(),
        origin: file.to_string(),
        durable: b.durable,
        seed: b.seed,
        mode: b.mode,
        rate_per_s: b.rate_per_s,
        in_flight_max: b.in_flight_max,
        outstanding_max: b.outstanding_max,
        duration_s: b.duration_s,
        warmup_s: b.warmup_s,
        interval_ms: b.interval_ms,
        p99_bound_ms: b.p99_bound_ms,
        drain_timeout_s: b.drain_timeout_s,
        workload: WorkloadSpec {
            pay_percent: w.pay_percent,
            merge_percent: w.merge_percent,
            cross_institution_percent: w.cross_institution_percent,
            collect_percent: w.collect_percent,
            amount_max_fen: w.amount_max_fen,
            hot_wallets: w.hot_wallets,
            hot_percent: w.hot_percent,
            insufficient_percent: w.insufficient_percent,
            double_spend_percent: w.double_spend_percent,
            forged_percent: w.forged_percent,
        },
        peak: PeakSpec {
            start_rate_per_s: p.start_rate_per_s,
            growth: p.growth,
            step_s: p.step_s,
            refine_steps: p.refine_steps,
            confirm_repeats: p.confirm_repeats,
            confirm_passes_min: p.confirm_passes_min,
            confirm_margin_percent: p.confirm_margin_percent,
            achieved_percent_min: p.achieved_percent_min,
            steps_max: p.steps_max,
        },
        cluster_config_text,
        cluster_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[bench]\nname = \"t\"\nmode = \"open\"\nduration_s = 2\n";

    #[test]
    fn a_minimal_profile_takes_the_defaults_and_the_embedded_cluster() {
        let p = Profile::parse(MINIMAL, "t.toml", None).expect("valid");
        assert_eq!(p.name, "t");
        assert!(p.durable);
        assert_eq!(p.workload.pay_percent, 100);
        assert_eq!(p.cluster_config.cluster.wallets, 10_000);
        assert_eq!(p.peak.confirm_repeats, 3);
    }

    #[test]
    fn cluster_overrides_replace_single_fields_and_keep_the_rest() {
        let text = format!("{MINIMAL}[cluster_config.cluster]\nwallets = 500\n[cluster_config.runtime]\narbiters = 1\n");
        let p = Profile::parse(&text, "t.toml", None).expect("valid");
        assert_eq!(p.cluster_config.cluster.wallets, 500);
        assert_eq!(p.cluster_config.runtime.arbiters, 1);
        assert_eq!(
            p.cluster_config.cluster.institutions.len(),
            4,
            "kept from the base"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let text = format!("{MINIMAL}[workload]\nhot_percent = 10\nhot_wallets = 1\n");
        let e = Profile::parse(&text, "hot.toml", None).expect_err("one hot wallet cannot contend");
        assert!(
            e.to_string()
                .starts_with("hot.toml: field `workload.hot_wallets`"),
            "{e}"
        );
        let e = Profile::parse(
            &format!("{MINIMAL}[cluster_config.cluster]\nwallets = 1\n"),
            "c.toml",
            None,
        )
        .expect_err("too few wallets");
        assert!(e.to_string().contains("cluster.wallets"), "{e}");
        let e = Profile::parse(&format!("{MINIMAL}[workload]\nbogus = 1\n"), "u.toml", None)
            .expect_err("unknown");
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
