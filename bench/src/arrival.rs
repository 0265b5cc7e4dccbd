//! The open loop's arrival process: a Poisson process at a fixed rate, drawn from a seed.
//!
//! Each arrival has an *intended* send time, fixed before the run by the process alone. The
//! driver sends an operation at (or as soon as it can after) its intended time, and its latency
//! is measured from the intended time, not from when it was actually sent: if the load
//! generator or the cluster stalls, the operations that should have been sent meanwhile carry
//! the stall in their latency instead of silently not existing (no coordinated omission).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

/// Intended send offsets of a Poisson process: exponentially distributed gaps with mean
/// `1 / rate`.
#[derive(Debug, Clone)]
pub struct PoissonArrivals {
    rate_per_s: f64,
    rng: ChaCha8Rng,
    /// Offset of the latest arrival from the start of the run, in seconds.
    offset_s: f64,
}

impl PoissonArrivals {
    /// Arrivals at `rate_per_s` on average, from `seed`.
    pub fn new(rate_per_s: f64, seed: u64) -> PoissonArrivals {
        // A non-positive or infinite rate would make every gap zero or infinite: a bug.
        assert!(
            rate_per_s.is_finite() && rate_per_s > 0.0,
            "arrival rate must be positive, is {rate_per_s}"
        );
        PoissonArrivals {
            rate_per_s,
            rng: ChaCha8Rng::seed_from_u64(seed),
            offset_s: 0.0,
        }
    }

    /// The next gap between arrivals: `-ln(U) / rate` for `U` uniform in (0, 1].
    pub fn next_gap_s(&mut self) -> f64 {
        let u: f64 = 1.0 - self.rng.gen::<f64>();
        -u.ln() / self.rate_per_s
    }

    /// The intended offset of the next arrival from the start of the run.
    pub fn next_offset(&mut self) -> Duration {
        self.offset_s += self.next_gap_s();
        Duration::from_secs_f64(self.offset_s)
    }
}

/// When an operation was meant to go out and when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTimes {
    /// The time the arrival process (or, in a closed loop, the finished predecessor) fixed.
    pub intended: Instant,
    /// When the driver actually handed it to the cluster.
    pub sent: Instant,
}

impl SendTimes {
    /// The operation's latency when it finished at `finished`: from the intended time.
    pub fn latency(&self, finished: Instant) -> Duration {
        finished.saturating_duration_since(self.intended)
    }

    /// How late the driver sent it.
    pub fn send_lag(&self) -> Duration {
        self.sent.saturating_duration_since(self.intended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_arrival_gaps_have_mean_one_over_the_rate() {
        let rate = 2_000.0;
        let mut arrivals = PoissonArrivals::new(rate, 7);
        let n = 200_000;
        let gaps: Vec<f64> = (0..n).map(|_| arrivals.next_gap_s()).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        // Standard error of the mean of an exponential is mean / sqrt(n) ≈ 0.22%; allow 2%.
        assert!(
            (mean * rate - 1.0).abs() < 0.02,
            "mean gap {mean} s at {rate}/s"
        );
        // An exponential's standard deviation equals its mean; a fixed-rate ticker's is 0.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.03,
            "coefficient of variation {}",
            var.sqrt() / mean
        );
        assert!(gaps.iter().all(|g| *g >= 0.0));
    }

    #[test]
    fn arrivals_in_a_window_count_rate_times_length() {
        let mut arrivals = PoissonArrivals::new(500.0, 3);
        let mut count = 0;
        while arrivals.next_offset() < Duration::from_secs(100) {
            count += 1;
        }
        // Poisson(50 000): standard deviation ≈ 224.
        assert!(
            (49_000..=51_000).contains(&count),
            "{count} arrivals in 100 s at 500/s"
        );
    }

    #[test]
    fn offsets_increase_and_the_same_seed_gives_the_same_schedule() {
        let a: Vec<Duration> = {
            let mut p = PoissonArrivals::new(1000.0, 42);
            (0..100).map(|_| p.next_offset()).collect()
        };
        let b: Vec<Duration> = {
            let mut p = PoissonArrivals::new(1000.0, 42);
            (0..100).map(|_| p.next_offset()).collect()
        };
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn latency_is_taken_from_the_intended_time_not_the_send_time() {
        let intended = Instant::now();
        // The generator stalled: sent 50 ms late; the cluster answered 10 ms after the send.
        let times = SendTimes {
            intended,
            sent: intended + Duration::from_millis(50),
        };
        let finished = times.sent + Duration::from_millis(10);
        assert_eq!(times.latency(finished), Duration::from_millis(60));
        assert_eq!(times.send_lag(), Duration::from_millis(50));
    }
}
