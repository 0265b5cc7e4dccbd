//! Same seed and build ⇒ the same history, byte for byte; another seed ⇒ another history.

mod common;

use common::{light, run_seed, shipped};

#[test]
fn the_same_seed_gives_the_same_history_byte_for_byte() {
    let s = light(shipped("everything"));
    let a = run_seed(&s, 7, None);
    let b = run_seed(&s, 7, None);
    assert!(a.ops > 50, "the workload ran: {} operations", a.ops);
    assert_eq!(a.history.to_jsonl(), b.history.to_jsonl());
    assert_eq!(a.history_digest(), b.history_digest());
    assert_eq!(a.faults_injected, b.faults_injected);
    assert_eq!(a.sim_ms, b.sim_ms);
}

#[test]
fn different_seeds_give_different_histories() {
    let s = light(shipped("partition-heal"));
    let a = run_seed(&s, 1, None);
    let b = run_seed(&s, 2, None);
    assert_ne!(a.history_digest(), b.history_digest());
    assert!(
        a.ok() && b.ok(),
        "{}\n{}",
        common::explain(&a),
        common::explain(&b)
    );
}
