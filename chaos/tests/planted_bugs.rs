//! The checkers can fail: every planted bug is caught by a seed sweep of a shipped scenario,
//! and shrinking reduces a planted failure to a handful of faults.
//!
//! Run with `cargo test -p specie-chaos --features planted-bugs`. The planted-bug switch is
//! process-wide, so these tests take turns.
#![cfg(feature = "planted-bugs")]

mod common;

use common::{explain, light, run_seed, shipped};
use specie_chaos::shrink::{shrink, ShrinkLimits};
use specie_chaos::{RunOptions, RunResult};
use std::sync::Mutex;
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Sweeps seeds 1..=5 and returns the first failing run.
fn caught(scenario: &str, bug: &'static str) -> RunResult {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = light(shipped(scenario));
    for seed in 1..=5 {
        let r = run_seed(&s, seed, Some(bug));
        if !r.ok() {
            assert!(r.violation.is_some() || !r.failed().is_empty());
            let replay = specie_chaos::report::replay_command(&r);
            assert!(
                replay.contains(&format!("--seed {seed}")) && replay.contains(bug),
                "{replay}"
            );
            return r;
        }
    }
    panic!("planted bug {bug} escaped a sweep of {scenario} over seeds 1..=5");
}

#[test]
fn skip_dedup_is_caught_by_the_lossy_duplicating_network() {
    let r = caught("lossy-duplicating-network", "skip-dedup");
    let failed = r.failed();
    assert!(
        failed.contains(&"backing") || failed.contains(&"conservation"),
        "{}",
        explain(&r)
    );
}

#[test]
fn skip_lock_check_is_caught_by_partition_heal() {
    let r = caught("partition-heal", "skip-lock-check");
    let failed = r.failed();
    assert!(
        failed
            .iter()
            .any(|f| ["no_double_spend", "conservation", "atomicity", "backing"].contains(f)),
        "{}",
        explain(&r)
    );
}

#[test]
fn early_ack_is_caught_by_the_crash_restart_storm() {
    let r = caught("crash-restart-storm", "early-ack");
    assert!(!r.ok(), "{}", explain(&r));
}

#[test]
fn the_same_seed_replays_the_same_planted_failure() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = light(shipped("lossy-duplicating-network"));
    let a = run_seed(&s, 1, Some("skip-dedup"));
    let b = run_seed(&s, 1, Some("skip-dedup"));
    assert!(!a.ok());
    assert_eq!(a.history_digest(), b.history_digest());
    assert_eq!(a.violation, b.violation);
}

#[test]
fn a_planted_failure_shrinks_to_a_handful_of_faults() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = light(shipped("lossy-duplicating-network"));
    let limits = ShrinkLimits {
        runs_max: 80,
        wall_max: Duration::from_secs(120),
    };
    let out = shrink(
        &s,
        &RunOptions {
            seed: 1,
            planted: Some("skip-dedup"),
        },
        limits,
    );
    assert!(!out.original.ok());
    let minimal = out.scenario.expect("a minimal scenario");
    assert!(
        out.faults_before >= 6,
        "the original schedule has {} faults",
        out.faults_before
    );
    assert!(
        minimal.faults.len() <= 3,
        "shrunk to {} faults: {:?}",
        minimal.faults.len(),
        minimal.faults
    );
    // The minimal scenario, written and read back, still fails with the same seed.
    let text = minimal.to_toml();
    let again = specie_chaos::Scenario::parse(&text, "minimal.toml")
        .expect("the written scenario is valid");
    let r = run_seed(&again, 1, Some("skip-dedup"));
    assert!(!r.ok(), "the minimal scenario passes:\n{text}");
}
