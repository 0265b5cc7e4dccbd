//! Shrinking: the seed's fault schedule expanded into an explicit list, then minimized while
//! the failure persists — whole faults removed (delta debugging, ddmin), then each survivor
//! made shorter and, for a probabilistic fault, rarer — and returned as a scenario that
//! replays the failure with the same seed.
//!
//! Each fault keeps its own random stream (see [`crate::schedule`]), so removing one leaves
//! the others' decisions as they were; the workload still reacts to the changed run, which is
//! why every candidate is run again rather than predicted.

use crate::scenario::Scenario;
use crate::schedule::{expand, explicit, FaultInstance};
use crate::sim::{run, RunOptions, RunResult};
use std::time::{Duration, Instant};

/// Bounds of one shrink.
#[derive(Debug, Clone, Copy)]
pub struct ShrinkLimits {
    /// Most candidate runs.
    pub runs_max: usize,
    /// Most wall time.
    pub wall_max: Duration,
}

impl Default for ShrinkLimits {
    fn default() -> Self {
        ShrinkLimits {
            runs_max: 400,
            wall_max: Duration::from_secs(300),
        }
    }
}

/// What a shrink found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The failing run of the original scenario.
    pub original: RunResult,
    /// Fault instances in the original run.
    pub faults_before: usize,
    /// The minimal scenario (explicit faults), or `None` when the seed did not fail.
    pub scenario: Option<Scenario>,
    /// Its failing run.
    pub minimal: Option<RunResult>,
    /// Candidate runs made.
    pub runs: usize,
    /// Whether a limit stopped the search before it was done.
    pub truncated: bool,
}

struct Search<'a> {
    base: &'a Scenario,
    options: &'a RunOptions,
    target: Vec<&'static str>,
    runs: usize,
    limits: ShrinkLimits,
    started: Instant,
    best: Option<RunResult>,
}

impl Search<'_> {
    fn exhausted(&self) -> bool {
        self.runs >= self.limits.runs_max || self.started.elapsed() >= self.limits.wall_max
    }

    /// Whether the schedule still fails the same way (one of the invariants that failed
    /// originally fails again).
    fn fails(&mut self, faults: &[FaultInstance]) -> bool {
        if self.exhausted() {
            return false;
        }
        self.runs += 1;
        let r = run(&explicit(self.base, faults), self.options);
        let same = r.failed().iter().any(|n| self.target.contains(n));
        if same {
            self.best = Some(r);
        }
        same
    }
}

/// Shrinks the failure of `scenario` at `options.seed`.
pub fn shrink(scenario: &Scenario, options: &RunOptions, limits: ShrinkLimits) -> Shrunk {
    let original = run(scenario, options);
    let faults = expand(scenario, options.seed);
    let faults_before = faults.len();
    if original.ok() {
        return Shrunk {
            original,
            faults_before,
            scenario: None,
            minimal: None,
            runs: 1,
            truncated: false,
        };
    }
    let mut search = Search {
        base: scenario,
        options,
        target: original.failed(),
        runs: 0,
        limits,
        started: Instant::now(),
        best: None,
    };
    // The explicit schedule must fail like the original (it is the same run).
    let mut current = faults;
    if !search.fails(&current) {
        return Shrunk {
            original,
            faults_before,
            scenario: Some(explicit(scenario, &current)),
            minimal: None,
            runs: search.runs,
            truncated: true,
        };
    }
    // ddmin over whole faults.
    let mut n = 2usize;
    while current.len() >= 2 && !search.exhausted() {
        let chunk = current.len().div_ceil(n);
        let mut reduced = false;
        for start in (0..current.len()).step_by(chunk) {
            let complement: Vec<FaultInstance> = current
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < start || *i >= start + chunk)
                .map(|(_, f)| f.clone())
                .collect();
            if search.fails(&complement) {
                current = complement;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (n * 2).min(current.len());
        }
    }
    if current.len() == 1 && search.fails(&[]) {
        current.clear();
    }
    // Each survivor: shorter, then rarer.
    for i in 0..current.len() {
        loop {
            let f = &current[i];
            let span = f.end_ms - f.start_ms;
            if span <= 100 || search.exhausted() {
                break;
            }
            let mut candidate = current.clone();
            candidate[i].end_ms = f.start_ms + span / 2;
            if search.fails(&candidate) {
                current = candidate;
            } else {
                break;
            }
        }
        while let Some(p) = current[i].kind.percent() {
            if p <= 1.0 || search.exhausted() {
                break;
            }
            let mut candidate = current.clone();
            candidate[i].kind = current[i].kind.with_percent((p / 2.0).floor().max(1.0));
            if search.fails(&candidate) {
                current = candidate;
            } else {
                break;
            }
        }
    }
    let truncated = search.exhausted();
    let mut minimal = explicit(scenario, &current);
    minimal.name = format!("{}-shrunk-seed-{}", scenario.name, options.seed);
    minimal.description = format!(
        "shrunk from {} with seed {}{}: {} of {} faults remain; replay with --seed {}",
        scenario.origin,
        options.seed,
        options
            .planted
            .map(|p| format!(" and planted bug {p}"))
            .unwrap_or_default(),
        current.len(),
        faults_before,
        options.seed
    );
    Shrunk {
        original,
        faults_before,
        scenario: Some(minimal),
        minimal: search.best,
        runs: search.runs,
        truncated,
    }
}
