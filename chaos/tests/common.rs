//! Shared helpers of the chaos tests.
#![allow(dead_code)]

use specie_chaos::{run, RunOptions, RunResult, Scenario};
use std::path::PathBuf;

/// A shipped scenario from `config/chaos/`.
pub fn shipped(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/chaos")
        .join(format!("{name}.toml"));
    let mut s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // Name it as a user would on the command line, for replay commands in failures.
    s.origin = format!("config/chaos/{name}.toml");
    s
}

/// The same scenario with a lighter workload, to keep debug-build test runs to a few
/// seconds; the fault schedule and the phases are unchanged.
pub fn light(mut s: Scenario) -> Scenario {
    s.workload.rate_per_s = s.workload.rate_per_s.min(12.0);
    s
}

/// Runs one seed.
pub fn run_seed(s: &Scenario, seed: u64, planted: Option<&'static str>) -> RunResult {
    run(s, &RunOptions { seed, planted })
}

/// A failure message with everything needed to reproduce it.
pub fn explain(r: &RunResult) -> String {
    specie_chaos::report::summary(r)
}
