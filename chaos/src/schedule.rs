//! The fault schedule: a scenario's faults expanded, for one seed, into an explicit list of
//! fault instances — repeats unrolled, selectors resolved to actors, swarm choices made.
//!
//! Every random choice here comes from streams of the run's seed that belong to the fault
//! (its `stream` number), not to the order of the list: removing one fault leaves the
//! decisions of the others unchanged, which is what lets `shrink` remove faults one by one.

use crate::scenario::{ActorKind, Direction, FaultKind, FaultSpec, Mode, Scenario, Selector};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_protocol::{Address, InstitutionId, WalletId};
use std::collections::BTreeSet;

/// Purposes of the random streams derived from a seed.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// Workload: which operation, which wallets, amounts, saga ids.
    Workload = 1,
    /// The healthy network's latency jitter.
    Network = 2,
    /// Schedule expansion: selectors and swarm choices of one fault.
    Schedule = 3,
    /// A fault's own decisions while it is active (drop this envelope or not, …).
    Fault = 4,
}

/// A random stream of `seed` for `purpose` and `stream`: one seed drives everything, each
/// concern on its own stream.
pub fn stream_rng(seed: u64, purpose: Purpose, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 56) ^ stream);
    rng
}

/// One fault as it happens in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultInstance {
    /// Position in the expanded list.
    pub id: usize,
    /// The scenario entry it comes from.
    pub spec: usize,
    /// Its random stream.
    pub stream: u64,
    /// What it does.
    pub kind: FaultKind,
    /// Start, from the start of the fault phase.
    pub start_ms: u64,
    /// End, from the start of the fault phase (never past the phase's end).
    pub end_ms: u64,
    /// Direction (network faults).
    pub direction: Direction,
    /// The actors it hits; `None` for every actor.
    pub targets: Option<BTreeSet<Address>>,
}

impl FaultInstance {
    /// A short description for reports: `loss 20% (inst-0, inst-1)`.
    pub fn label(&self) -> String {
        let what = match &self.kind {
            FaultKind::Delay {
                latency_ms,
                jitter_ms,
                ..
            } => format!("delay {latency_ms}±{jitter_ms} ms"),
            FaultKind::Loss { percent, .. } => format!("loss {percent:.0}%"),
            FaultKind::Duplicate { percent } => format!("duplicate {percent:.0}%"),
            FaultKind::Reorder { percent, .. } => format!("reorder {percent:.0}%"),
            FaultKind::Corrupt { percent } => format!("corrupt {percent:.0}%"),
            FaultKind::Partition { groups, direction } => format!(
                "partition {} ({direction:?})",
                groups
                    .iter()
                    .map(|g| g.iter().map(|m| m.name()).collect::<Vec<_>>().join("+"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
            FaultKind::Kill => "kill".to_string(),
            FaultKind::Pause => "pause".to_string(),
            FaultKind::ClockSkew { offset_ms } => format!("clock_skew {offset_ms:+} ms"),
            FaultKind::FsyncError { percent } => format!("fsync_error {percent:.0}%"),
            FaultKind::WriteDelay { latency_ms } => format!("write_delay {latency_ms} ms"),
        };
        match &self.targets {
            None => what,
            Some(t) if t.len() <= 3 => format!(
                "{what} ({})",
                t.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(t) => format!("{what} ({} actors)", t.len()),
        }
    }

    /// Whether it hits actor `a`.
    pub fn targets(&self, a: Address) -> bool {
        self.targets.as_ref().is_none_or(|t| t.contains(&a))
    }

    /// Whether a network fault applies to an envelope from `from` to `to`.
    pub fn matches(&self, from: Address, to: Address) -> bool {
        match &self.targets {
            None => true,
            Some(t) => match self.direction {
                Direction::To => t.contains(&to),
                Direction::From => t.contains(&from),
                Direction::Both => t.contains(&to) || t.contains(&from),
            },
        }
    }
}

/// Every actor of a scenario's cluster, in address order.
pub fn actors(scenario: &Scenario) -> Vec<Address> {
    let mut v = vec![Address::CentralBank];
    v.extend((0..scenario.cluster.institutions).map(|i| Address::Institution(InstitutionId(i))));
    v.extend((0..scenario.cluster.wallets).map(|w| Address::Wallet(WalletId(w))));
    v
}

fn resolve(
    selector: &Selector,
    all: &[Address],
    rng: &mut ChaCha8Rng,
) -> Option<BTreeSet<Address>> {
    let (kind, ids, mode) = match selector {
        Selector::Everyone => return None,
        Selector::Actors(a) => return Some(a.iter().copied().collect()),
        Selector::Kind { kind, ids, mode } => (kind, ids, mode),
    };
    let mut candidates: Vec<Address> = all
        .iter()
        .copied()
        .filter(|a| match (kind, a) {
            (ActorKind::Any, _) => true,
            (ActorKind::CentralBank, Address::CentralBank) => true,
            (ActorKind::Institution, Address::Institution(i)) => {
                ids.as_ref().is_none_or(|ids| ids.contains(&u64::from(i.0)))
            }
            (ActorKind::Wallet, Address::Wallet(w)) => {
                ids.as_ref().is_none_or(|ids| ids.contains(&w.0))
            }
            _ => false,
        })
        .collect();
    let n = candidates.len();
    let take = match mode {
        Mode::All => n,
        Mode::One => 1.min(n),
        Mode::Fixed(k) => (*k as usize).min(n),
        Mode::Percent(p) => (((n as f64) * p / 100.0).round() as usize).clamp(1.min(n), n),
    };
    candidates.shuffle(rng);
    candidates.truncate(take);
    Some(candidates.into_iter().collect())
}

/// The stream of occurrence `k` of a fault whose stream is `stream`: the fault's own for the
/// first, derived ones for repeats.
fn occurrence_stream(stream: u64, k: u64) -> u64 {
    if k == 0 {
        stream
    } else {
        stream ^ (k << 32) ^ 0x5bd1_e995
    }
}

/// Expands the schedule of `scenario` for `seed`.
pub fn expand(scenario: &Scenario, seed: u64) -> Vec<FaultInstance> {
    let all = actors(scenario);
    let phase_ms = scenario.phases.faults_ms;
    let mut out = Vec::new();
    for (spec_index, spec) in scenario.faults.iter().enumerate() {
        let mut k = 0u64;
        loop {
            let start_ms = match spec.repeat {
                None if k > 0 => break,
                None => spec.start_ms,
                Some(r) => {
                    if r.times.is_some_and(|t| k >= u64::from(t)) {
                        break;
                    }
                    spec.start_ms + k * r.every_ms
                }
            };
            if start_ms >= phase_ms {
                break;
            }
            let stream = occurrence_stream(spec.stream, k);
            k += 1;
            let mut rng = stream_rng(seed, Purpose::Schedule, stream);
            let targets = resolve(&spec.selector, &all, &mut rng);
            let mut kind = spec.kind.clone();
            if scenario.swarm {
                // Swarm testing: each seed leaves out some faults and runs the others at a
                // fraction of their probability, so a sweep explores many fault mixes.
                if rng.gen_bool(0.2) {
                    continue;
                }
                if let Some(p) = kind.percent() {
                    let scaled = p * rng.gen_range(0.25..=1.0);
                    kind = kind.with_percent((scaled * 100.0).round() / 100.0);
                }
            }
            out.push(FaultInstance {
                id: out.len(),
                spec: spec_index,
                stream,
                kind,
                start_ms,
                end_ms: (start_ms + spec.duration_ms).min(phase_ms),
                direction: spec.direction,
                targets,
            });
        }
    }
    out
}

/// The scenario with `instances` as its explicit fault list: no repeats, no random selector,
/// no swarm; each fault keeps its random stream, so the run replays the same decisions.
pub fn explicit(scenario: &Scenario, instances: &[FaultInstance]) -> Scenario {
    let mut s = scenario.clone();
    s.swarm = false;
    s.faults = instances
        .iter()
        .map(|f| FaultSpec {
            kind: f.kind.clone(),
            start_ms: f.start_ms,
            duration_ms: f.end_ms - f.start_ms,
            repeat: None,
            selector: match &f.targets {
                None => Selector::Everyone,
                Some(t) => Selector::Actors(t.iter().copied().collect()),
            },
            direction: f.direction,
            stream: f.stream,
            line: 0,
        })
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[cluster]
institutions = 3
wallets = 9
[workload]
rate_per_s = 10
mix = { pay = 1 }
[phases]
warmup = "1s"
faults = "10s"
converge_max = "30s"
after = "1s"
[[fault]]
kind = "kill"
start = "1s"
repeat = { every = "3s" }
selector = { actor_kind = "institution", mode = "one" }
[[fault]]
kind = "loss"
start = "2s"
duration = "1s"
percent = 30
"#;

    #[test]
    fn repeats_unroll_within_the_phase_and_selectors_pick_actors() {
        let s = Scenario::parse(TEXT, "t.toml").expect("valid");
        let faults = expand(&s, 7);
        let kills: Vec<_> = faults
            .iter()
            .filter(|f| f.kind == FaultKind::Kill)
            .collect();
        assert_eq!(
            kills.iter().map(|f| f.start_ms).collect::<Vec<_>>(),
            vec![1000, 4000, 7000]
        );
        for k in &kills {
            let t = k.targets.as_ref().expect("selected");
            assert_eq!(t.len(), 1);
            assert!(matches!(t.iter().next(), Some(Address::Institution(_))));
        }
        assert_eq!(expand(&s, 7), faults, "the same seed expands the same way");
    }

    #[test]
    fn an_explicit_schedule_expands_to_itself() {
        let s = Scenario::parse(TEXT, "t.toml").expect("valid");
        let faults = expand(&s, 3);
        let e = explicit(&s, &faults);
        let again = expand(&Scenario::parse(&e.to_toml(), "e.toml").expect("valid"), 3);
        let strip = |v: &[FaultInstance]| {
            v.iter()
                .map(|f| {
                    (
                        f.stream,
                        f.kind.clone(),
                        f.start_ms,
                        f.end_ms,
                        f.targets.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again), strip(&faults));
    }
}
