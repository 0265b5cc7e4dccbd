//! Peak finding, as a state machine the bench feeds with verdicts of open-loop runs.
//!
//! 1. **Ramp**: offer `start_rate`, then `growth` times more each step, until a step fails —
//!    it completes less than `achieved_percent_min` of what it was offered, its p99 crosses
//!    the profile's bound, it sheds arrivals, or operations never finish. (If the very first
//!    step fails, the ramp walks down instead until one passes.)
//! 2. **Refine**: bisect between the last passing and the first failing rate,
//!    `refine_steps` times. The highest passing rate is the candidate peak `P`.
//! 3. **Confirm**: run `confirm_repeats` times at `P × (1 − margin)` and at
//!    `P × (1 + margin)`. A level holds when at least `confirm_passes_min` of its repeats
//!    passed (a majority by default); the sustainable peak is the highest level that held. If
//!    neither did, lower levels (`1 − 2·margin`, …) are tried, at most [`EXTRA_LEVELS_MAX`].

use crate::profile::PeakSpec;
use crate::stats::RunStats;
use std::collections::VecDeque;

/// Confirmation levels below `1 − margin` tried when neither first level held.
pub const EXTRA_LEVELS_MAX: u32 = 3;

/// Whether one run kept up.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// It kept up.
    pub pass: bool,
    /// Why not, when it did not.
    pub why: Vec<String>,
}

/// Judges a run against the peak finder's criteria.
pub fn judge(stats: &RunStats, spec: &PeakSpec, p99_bound_ms: f64) -> Verdict {
    let mut why = Vec::new();
    let offered = stats.offered_per_s();
    let achieved = stats.achieved_per_s();
    if achieved < offered * spec.achieved_percent_min / 100.0 {
        why.push(format!(
            "achieved {achieved:.0}/s < {:.0}% of offered {offered:.0}/s",
            spec.achieved_percent_min
        ));
    }
    let p99 = stats.all.latency.quantile_ms(0.99);
    if p99 > p99_bound_ms {
        why.push(format!("p99 {p99:.1} ms > bound {p99_bound_ms} ms"));
    }
    // Merges withdrawn because their wallet held fewer than two coins are the workload's
    // doing, not the cluster's.
    let shed = stats.shed - stats.withdrawn;
    if shed > 0 {
        why.push(format!("{shed} arrivals shed"));
    }
    if stats.unfinished > 0 {
        why.push(format!("{} operations unfinished", stats.unfinished));
    }
    Verdict {
        pass: why.is_empty(),
        why,
    }
}

/// Which stage a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The ramp.
    Ramp,
    /// Bisection.
    Refine,
    /// Confirmation repeats.
    Confirm,
}

impl Stage {
    /// The stage's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ramp => "ramp",
            Stage::Refine => "refine",
            Stage::Confirm => "confirm",
        }
    }
}

/// One step taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its stage.
    pub stage: Stage,
    /// The offered rate.
    pub rate_per_s: f64,
    /// The verdict.
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
enum State {
    Ramp {
        rate: f64,
        down: bool,
    },
    Refine {
        lo: f64,
        hi: f64,
        left: u32,
    },
    Confirm {
        peak: f64,
        queue: VecDeque<f64>,
        extra: u32,
    },
    Done,
}

/// The search.
#[derive(Debug, Clone)]
pub struct PeakSearch {
    spec: PeakSpec,
    state: State,
    steps: Vec<Step>,
    last_pass: Option<f64>,
    first_fail: Option<f64>,
    candidate: Option<f64>,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakOutcome {
    /// The highest rate that passed the ramp and refinement.
    pub candidate_per_s: Option<f64>,
    /// The highest rate at which every confirmation repeat passed.
    pub sustainable_per_s: Option<f64>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl PeakSearch {
    /// A search with `spec`.
    pub fn new(spec: PeakSpec) -> PeakSearch {
        let rate = spec.start_rate_per_s;
        PeakSearch {
            spec,
            state: State::Ramp { rate, down: false },
            steps: Vec::new(),
            last_pass: None,
            first_fail: None,
            candidate: None,
        }
    }

    /// The next rate to run and its stage; `None` when the search is over.
    pub fn next(&self) -> Option<(Stage, f64)> {
        match &self.state {
            State::Ramp { rate, .. } => Some((Stage::Ramp, *rate)),
            State::Refine { lo, hi, .. } => Some((Stage::Refine, (lo + hi) / 2.0)),
            State::Confirm { queue, .. } => queue.front().map(|r| (Stage::Confirm, *r)),
            State::Done => None,
        }
    }

    fn search_steps(&self) -> u32 {
        self.steps
            .iter()
            .filter(|s| s.stage != Stage::Confirm)
            .count() as u32
    }

    fn start_confirm(&mut self, peak: f64) {
        self.candidate = Some(peak);
        let m = self.spec.confirm_margin_percent / 100.0;
        let n = self.spec.confirm_repeats as usize;
        let mut queue = VecDeque::new();
        queue.extend(std::iter::repeat_n(peak * (1.0 - m), n));
        queue.extend(std::iter::repeat_n(peak * (1.0 + m), n));
        self.state = State::Confirm {
            peak,
            queue,
            extra: 0,
        };
    }

    fn after_search(&mut self) {
        match (self.last_pass, self.first_fail) {
            (Some(lo), Some(hi))
                if self.spec.refine_steps > 0 && self.search_steps() < self.spec.steps_max =>
            {
                self.state = State::Refine {
                    lo,
                    hi,
                    left: self.spec.refine_steps,
                };
            }
            (Some(lo), _) => self.start_confirm(lo),
            (None, _) => self.state = State::Done,
        }
    }

    /// Feeds the verdict of the run at the rate [`PeakSearch::next`] gave.
    pub fn observe(&mut self, verdict: Verdict) {
        let (stage, rate) = self.next().expect("observe follows next");
        let pass = verdict.pass;
        self.steps.push(Step {
            stage,
            rate_per_s: rate,
            verdict,
        });
        let budget_left = self.search_steps() < self.spec.steps_max;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Ramp { rate, down } => {
                if pass {
                    self.last_pass = Some(self.last_pass.map_or(rate, |p: f64| p.max(rate)));
                    if down {
                        // Walking down found a rate that holds; the one above it failed.
                        self.after_search();
                    } else if budget_left {
                        self.state = State::Ramp {
                            rate: rate * self.spec.growth,
                            down: false,
                        };
                    } else {
                        self.after_search();
                    }
                } else {
                    self.first_fail = Some(self.first_fail.map_or(rate, |f: f64| f.min(rate)));
                    if self.last_pass.is_none() && budget_left {
                        self.state = State::Ramp {
                            rate: rate / self.spec.growth,
                            down: true,
                        };
                    } else {
                        self.after_search();
                    }
                }
            }
            State::Refine { lo, hi, left } => {
                let mid = (lo + hi) / 2.0;
                let (lo, hi) = if pass {
                    self.last_pass = Some(mid);
                    (mid, hi)
                } else {
                    (lo, mid)
                };
                if left > 1 && budget_left {
                    self.state = State::Refine {
                        lo,
                        hi,
                        left: left - 1,
                    };
                } else {
                    self.start_confirm(lo);
                }
            }
            State::Confirm {
                peak,
                mut queue,
                extra,
            } => {
                queue.pop_front();
                if queue.is_empty() {
                    if self.sustainable().is_none() && extra < EXTRA_LEVELS_MAX {
                        let m = self.spec.confirm_margin_percent / 100.0;
                        let level = peak * (1.0 - m * f64::from(extra + 2));
                        if level > 0.0 {
                            queue.extend(std::iter::repeat_n(
                                level,
                                self.spec.confirm_repeats as usize,
                            ));
                            self.state = State::Confirm {
                                peak,
                                queue,
                                extra: extra + 1,
                            };
                            return;
                        }
                    }
                    self.state = State::Done;
                } else {
                    self.state = State::Confirm { peak, queue, extra };
                }
            }
            State::Done => {}
        }
    }

    /// The highest confirmation level that held (`confirm_passes_min` of its repeats passed).
    pub fn sustainable(&self) -> Option<f64> {
        let mut by_rate: Vec<(f64, u32)> = Vec::new();
        for s in self.steps.iter().filter(|s| s.stage == Stage::Confirm) {
            let pass = u32::from(s.verdict.pass);
            match by_rate
                .iter_mut()
                .find(|(r, _)| (*r - s.rate_per_s).abs() < 1e-9)
            {
                Some((_, passes)) => *passes += pass,
                None => by_rate.push((s.rate_per_s, pass)),
            }
        }
        by_rate
            .iter()
            .filter(|(_, passes)| *passes >= self.spec.confirm_passes_min)
            .map(|(r, _)| *r)
            .reduce(f64::max)
    }

    /// What the search found so far.
    pub fn outcome(&self) -> PeakOutcome {
        PeakOutcome {
            candidate_per_s: self.candidate,
            sustainable_per_s: self.sustainable(),
            steps: self.steps.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PeakSpec {
        PeakSpec {
            start_rate_per_s: 1000.0,
            growth: 2.0,
            step_s: 1.0,
            refine_steps: 2,
            confirm_repeats: 3,
            confirm_passes_min: 3,
            confirm_margin_percent: 5.0,
            achieved_percent_min: 95.0,
            steps_max: 20,
        }
    }

    /// Runs the search against a cluster that keeps up below `capacity`.
    fn search(capacity: f64) -> PeakOutcome {
        let mut s = PeakSearch::new(spec());
        let mut guard = 0;
        while let Some((_, rate)) = s.next() {
            s.observe(Verdict {
                pass: rate <= capacity,
                why: vec![],
            });
            guard += 1;
            assert!(guard < 100, "the search ends");
        }
        s.outcome()
    }

    #[test]
    fn ramps_refines_and_confirms_below_the_capacity() {
        let out = search(5000.0);
        let rates: Vec<(Stage, f64)> = out.steps.iter().map(|s| (s.stage, s.rate_per_s)).collect();
        assert_eq!(
            &rates[..4],
            &[
                (Stage::Ramp, 1000.0),
                (Stage::Ramp, 2000.0),
                (Stage::Ramp, 4000.0),
                (Stage::Ramp, 8000.0)
            ]
        );
        // Bisection between 4000 and 8000: 6000 fails, 5000 passes.
        assert_eq!(
            &rates[4..6],
            &[(Stage::Refine, 6000.0), (Stage::Refine, 5000.0)]
        );
        assert_eq!(out.candidate_per_s, Some(5000.0));
        let confirm: Vec<f64> = out
            .steps
            .iter()
            .filter(|s| s.stage == Stage::Confirm)
            .map(|s| s.rate_per_s)
            .collect();
        assert_eq!(confirm.len(), 6, "three repeats at −5% and three at +5%");
        assert!((confirm[0] - 4750.0).abs() < 1e-6 && (confirm[5] - 5250.0).abs() < 1e-6);
        assert_eq!(out.sustainable_per_s, Some(4750.0), "+5% fails, −5% holds");
    }

    #[test]
    fn a_level_holds_with_a_majority_of_passing_repeats() {
        let mut spec = spec();
        spec.confirm_passes_min = 2;
        let mut s = PeakSearch::new(spec);
        let mut nth_confirm = 0;
        while let Some((stage, rate)) = s.next() {
            let pass = if stage == Stage::Confirm {
                nth_confirm += 1;
                // −5%: pass, fail, pass (held); +5%: fail, pass, fail (did not hold).
                matches!(nth_confirm, 1 | 3 | 5)
            } else {
                rate <= 1000.0
            };
            s.observe(Verdict { pass, why: vec![] });
        }
        assert_eq!(s.outcome().sustainable_per_s, Some(950.0));
    }

    #[test]
    fn a_failing_start_walks_down() {
        let out = search(300.0);
        let ramp: Vec<f64> = out
            .steps
            .iter()
            .filter(|s| s.stage == Stage::Ramp)
            .map(|s| s.rate_per_s)
            .collect();
        assert_eq!(ramp, vec![1000.0, 500.0, 250.0]);
        let sustainable = out.sustainable_per_s.expect("found");
        assert!(sustainable <= 300.0 && sustainable > 200.0, "{sustainable}");
    }

    #[test]
    fn lower_levels_are_tried_when_neither_confirmation_holds_and_the_search_ends() {
        let mut s = PeakSearch::new(spec());
        let mut confirms = 0;
        while let Some((stage, rate)) = s.next() {
            // Passes the search at 1000 but never a confirmation.
            let pass = stage != Stage::Confirm && rate <= 1000.0;
            confirms += usize::from(stage == Stage::Confirm);
            s.observe(Verdict { pass, why: vec![] });
        }
        assert_eq!(confirms, 6 + 3 * EXTRA_LEVELS_MAX as usize);
        assert_eq!(s.outcome().sustainable_per_s, None);
    }
}
