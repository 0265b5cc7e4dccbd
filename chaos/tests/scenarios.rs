//! Every shipped scenario passes on a fixed set of seeds (with a lighter workload, so that a
//! debug build takes a few seconds per scenario). A failure prints the seed, the facts and
//! the replay command.

mod common;

use common::{explain, light, run_seed, shipped};

fn passes(name: &str, seeds: &[u64]) {
    let s = light(shipped(name));
    for &seed in seeds {
        let r = run_seed(&s, seed, None);
        assert!(r.ok(), "{name} failed with seed {seed}:\n{}", explain(&r));
        assert!(r.ops > 100, "{name}: only {} operations", r.ops);
        assert!(r
            .invariants
            .iter()
            .any(|(n, f)| *n == "termination" && matches!(f, specie_chaos::Finding::Ok(_))));
        if !s.faults.is_empty() {
            assert!(
                !r.faults_injected.is_empty(),
                "{name}: no fault acted with seed {seed}"
            );
        }
    }
}

#[test]
fn partition_heal_passes() {
    passes("partition-heal", &[1, 2]);
}

#[test]
fn lossy_duplicating_network_passes() {
    passes("lossy-duplicating-network", &[1, 2]);
}

#[test]
fn crash_restart_storm_passes() {
    passes("crash-restart-storm", &[1, 2]);
}

#[test]
fn clock_skew_escrow_passes() {
    passes("clock-skew-escrow", &[1, 2]);
}

#[test]
fn everything_passes() {
    passes("everything", &[1, 2]);
}

#[test]
fn every_shipped_scenario_round_trips_through_its_explicit_schedule() {
    for name in [
        "partition-heal",
        "lossy-duplicating-network",
        "crash-restart-storm",
        "clock-skew-escrow",
        "everything",
    ] {
        let s = shipped(name);
        let faults = specie_chaos::schedule::expand(&s, 3);
        let explicit = specie_chaos::schedule::explicit(&s, &faults);
        let again = specie_chaos::Scenario::parse(&explicit.to_toml(), "explicit.toml")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            specie_chaos::schedule::expand(&again, 3).len(),
            faults.len(),
            "{name}"
        );
    }
}
