//! The crypto floor: how many Ed25519 verifications per second this machine does with
//! `ring`, on as many threads as the process has cores, measured in the same process as the
//! run. Every pay saga must verify at least one signature (the payer's authorization), so
//! `floor_ratio = pay sagas per second ÷ verifications per second` is the distance to the
//! physical limit, comparable across machines.

use specie_protocol::crypto::verify;
use specie_protocol::{KeyStore, SoftKeyStore};
use std::time::{Duration, Instant};

/// Verifications between clock reads (keeps the clock out of the measurement).
const VERIFIES_PER_CHECK: u64 = 64;

/// The measured floor.
///
/// On a machine shared with other work, a verifier thread may be preempted; its rate per
/// second of its own CPU time is what the core can do, its rate per wall second is what it got.
/// The floor is the CPU-time rate summed over the threads (one per core), so other load on the
/// machine lowers the bench's throughput but not the floor, and `floor_ratio` errs low.
#[derive(Debug, Clone, PartialEq)]
pub struct CryptoFloor {
    /// Threads that verified at once.
    pub threads: usize,
    /// How long each verified (wall time).
    pub seconds: f64,
    /// Verifications per second of CPU time, summed over the threads: the floor.
    pub verifies_per_s: f64,
    /// Verifications per wall second of each thread.
    pub per_thread_per_s: Vec<f64>,
    /// Verifications per CPU second of each thread (absent where `/proc` is not readable).
    pub per_thread_per_cpu_s: Vec<f64>,
}

/// CPU seconds of the calling thread (`/proc/thread-self/stat`).
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    crate::sys::parse_stat_cpu_seconds(&stat)
}

/// Verifies a payment-sized message's signature on `threads` threads for `duration` and
/// returns the rate.
pub fn measure(threads: usize, duration: Duration) -> CryptoFloor {
    // At least one thread, or there is nothing to measure.
    assert!(threads > 0, "the floor needs a thread");
    let keys = SoftKeyStore::from_seed([0x5a; 32]);
    // About the size of a payment authorization's signing bytes.
    let message = [0xa5u8; 200];
    let signature = keys.sign(&message);
    let public = keys.public_key();
    let per_thread: Vec<(u64, f64, Option<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let cpu_started = thread_cpu_seconds();
                    let started = Instant::now();
                    let mut count = 0u64;
                    loop {
                        for _ in 0..VERIFIES_PER_CHECK {
                            // A floor measured on failing verifications would be meaningless.
                            assert!(
                                verify(&public, &message, &signature).is_ok(),
                                "the floor's signature verifies"
                            );
                        }
                        count += VERIFIES_PER_CHECK;
                        let elapsed = started.elapsed();
                        if elapsed >= duration {
                            let cpu = match (cpu_started, thread_cpu_seconds()) {
                                // Ticks are 10 ms: below a tenth of the run the figure is noise.
                                (Some(a), Some(b)) if b - a >= duration.as_secs_f64() / 10.0 => {
                                    Some(b - a)
                                }
                                _ => None,
                            };
                            return (count, elapsed.as_secs_f64(), cpu);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a verifier thread"))
            .collect()
    });
    let per_thread_per_s: Vec<f64> = per_thread.iter().map(|(n, s, _)| *n as f64 / s).collect();
    let per_thread_per_cpu_s: Vec<f64> = per_thread
        .iter()
        .filter_map(|(n, _, cpu)| cpu.map(|c| *n as f64 / c))
        .collect();
    // Without a CPU time for every thread, the wall-clock rate is all there is.
    let verifies_per_s = if per_thread_per_cpu_s.len() == threads {
        per_thread_per_cpu_s.iter().sum()
    } else {
        per_thread_per_s.iter().sum()
    };
    CryptoFloor {
        threads,
        seconds: duration.as_secs_f64(),
        verifies_per_s,
        per_thread_per_s,
        per_thread_per_cpu_s,
    }
}

/// Pay sagas per second ÷ verifications per second (0 when the floor is unknown).
pub fn floor_ratio(pay_sagas_per_s: f64, floor: &CryptoFloor) -> f64 {
    if floor.verifies_per_s > 0.0 {
        pay_sagas_per_s / floor.verifies_per_s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_counts_verifications_on_every_thread() {
        let floor = measure(2, Duration::from_millis(50));
        assert_eq!(floor.threads, 2);
        assert_eq!(floor.per_thread_per_s.len(), 2);
        assert!(floor.per_thread_per_s.iter().all(|r| *r > 0.0));
        assert!(floor.verifies_per_s > 0.0, "{floor:?}");
        assert!((floor_ratio(floor.verifies_per_s / 4.0, &floor) - 0.25).abs() < 1e-9);
    }
}
