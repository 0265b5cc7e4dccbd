//! The checkers: every invariant of DESIGN.md §4 that this build's sagas can break, judged
//! over the whole run — the audits taken during it, the history, and the final reads of the
//! coordinators.
//!
//! - conservation, backing, no_double_spend, atomicity: the audit (`specie_actors::audit`)
//!   at every quiescent point and, by recorded decisions, every `audit_interval` during the
//!   run; plus, from the history, no two payments of one coin both committed.
//! - refusals: requests that must be refused (insufficient funds, a spent coin, a forged
//!   signature) never commit.
//! - no_lost_acknowledgement: every `ok` is committed at its coordinator in the final state,
//!   and every `fail` is not.
//! - info_resolved: every `info` resolves, by the final reads, to exactly one outcome, and
//!   agrees with any outcome announced after the client gave up.
//! - termination: after healing, every saga ends within `phases.converge_max`.
//! - idempotency: every actor announces a saga's outcome once and all announcements agree,
//!   while duplicate deliveries are injected (the audit catches any effect applied twice).
//! - supervision: no actor restarted more often than the intensity allows without escalating.
//! - steady_state: the hypothesis's probes, before the faults and after healing.
//! - escrow: not applicable until the escrow saga exists.

use crate::history::{OpKind, OpType};
use crate::scenario::Scenario;
use crate::sim::{FinalRead, Op, Violation};
use specie_actors::audit::AuditReport;
use specie_protocol::{AbortReason, Address};
use std::collections::BTreeMap;
use std::fmt;

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Holds (with a note on what was checked, possibly empty).
    Ok(String),
    /// Violated, with the facts.
    Violated(String),
    /// Not checked (with why).
    Skipped(String),
}

impl Finding {
    /// Holds or was not checked.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Finding::Violated(_))
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Ok(note) if note.is_empty() => f.write_str("ok"),
            Finding::Ok(note) => write!(f, "ok ({note})"),
            Finding::Violated(facts) => write!(f, "violated: {facts}"),
            Finding::Skipped(why) => write!(f, "not checked: {why}"),
        }
    }
}

/// A saga result for messages.
pub fn result_name(r: Result<(), AbortReason>) -> String {
    match r {
        Ok(()) => "committed".into(),
        Err(reason) => format!("aborted ({})", reason.name()),
    }
}

/// What the checkers read.
pub struct Input<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// Every operation with its completion.
    pub ops: &'a [Op],
    /// The final read of each operation's saga at its coordinator.
    pub reads: &'a [FinalRead],
    /// Outcomes announced after the client gave up, by operation.
    pub late: &'a BTreeMap<usize, Vec<Result<(), AbortReason>>>,
    /// Audits: (phase, time, report).
    pub audits: &'a [(&'static str, u64, AuditReport)],
    /// Convergence of the heal and drain phases: time taken, or what was unfinished.
    pub termination: &'a [(&'static str, Result<u64, String>)],
    /// Every restart: (time, actor).
    pub restarts: &'a [(u64, Address)],
    /// Escalations.
    pub escalations: &'a [String],
    /// Duplicate deliveries injected.
    pub duplicates: u64,
    /// Phases: (name, start, end).
    pub phases: &'a [(&'static str, u64, u64)],
    /// The violation that stopped the run.
    pub violation: Option<&'a Violation>,
    /// The run stopped early.
    pub stopped: bool,
}

fn describe(op: &Op) -> String {
    let v = &op.value;
    match op.f {
        OpKind::Exchange => format!(
            "op {} (exchange saga {}, wallet-{}, {} fen)",
            op.id, op.saga, v.payer, v.amount
        ),
        f => format!(
            "op {} ({} saga {}, wallet-{} → wallet-{}, {} fen, coordinator {})",
            op.id,
            f.name(),
            op.saga,
            v.payer,
            v.payee,
            v.amount,
            op.coordinator
        ),
    }
}

/// Collects findings, keeping the first few facts.
#[derive(Default)]
struct Facts {
    shown: Vec<String>,
    count: usize,
}

const FACTS_SHOWN_MAX: usize = 3;

impl Facts {
    fn add(&mut self, fact: String) {
        self.count += 1;
        if self.shown.len() < FACTS_SHOWN_MAX {
            self.shown.push(fact);
        }
    }

    fn finding(self, ok_note: String) -> Finding {
        if self.count == 0 {
            return Finding::Ok(ok_note);
        }
        let more = self.count - self.shown.len();
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        Finding::Violated(format!("{}{tail}", self.shown.join("; ")))
    }
}

fn audit_finding(input: &Input<'_>, name: &str, history: Facts) -> Finding {
    let mut facts = history;
    for (phase, at, report) in input.audits {
        if let Some((_, specie_actors::Check::Violated(check))) = report
            .invariants()
            .into_iter()
            .find(|(n, c)| *n == name && !c.is_ok())
        {
            facts.add(format!(
                "at {:.3} s ({phase}): {check}",
                *at as f64 / 1000.0
            ));
            break;
        }
    }
    let quiescent = input.audits.len();
    facts.finding(format!("{quiescent} audits"))
}

/// Verdicts by invariant, in report order.
pub type Verdicts = Vec<(&'static str, Finding)>;

/// Steady-state probes: (phase, committed percent, p99 latency ms, operations).
pub type Probes = Vec<(&'static str, f64, u64, usize)>;

/// Every verdict, in report order, and the steady-state probes.
pub fn check_all(input: &Input<'_>) -> (Verdicts, Probes) {
    let mut out: Vec<(&'static str, Finding)> = Vec::new();
    let ops = input.ops;

    // No double spend, from the history: a coin in two committed payments, or a spent coin
    // spent again.
    let mut double = Facts::default();
    for op in ops.iter().filter(|o| o.f == OpKind::Conflict) {
        let Some(pair) = op.value.pair else { continue };
        if op.id < pair {
            let other = &ops[pair as usize];
            let ok = |o: &Op| matches!(o.done, Some((OpType::Ok, _, _)));
            if ok(op) && ok(other) {
                double.add(format!(
                    "{} and {} spend the same coin and both committed",
                    describe(op),
                    describe(other)
                ));
            }
        }
    }
    out.push((
        "conservation",
        audit_finding(input, "conservation", Facts::default()),
    ));
    out.push(("backing", audit_finding(input, "backing", Facts::default())));
    out.push((
        "no_double_spend",
        audit_finding(input, "no_double_spend", double),
    ));
    out.push((
        "atomicity",
        audit_finding(input, "atomicity", Facts::default()),
    ));

    let mut refusals = Facts::default();
    let mut refused = 0;
    for op in ops.iter().filter(|o| o.f.must_fail()) {
        match (&op.done, input.reads[op.id as usize]) {
            (Some((OpType::Ok, at, _)), _) => refusals.add(format!(
                "{} committed at {:.3} s; it must be refused",
                describe(op),
                *at as f64 / 1000.0
            )),
            (_, FinalRead::Committed) => refusals.add(format!(
                "{} is committed at its coordinator; it must be refused",
                describe(op)
            )),
            _ => refused += 1,
        }
    }
    out.push((
        "refusals",
        refusals.finding(format!("{refused} planted requests refused")),
    ));

    if input.stopped {
        let why = match input.violation {
            Some(v) => format!("the run stopped at the first violation ({})", v.invariant),
            None => "the run stopped: the node escalated".to_string(),
        };
        for name in ["no_lost_acknowledgement", "info_resolved", "termination"] {
            out.push((name, Finding::Skipped(why.clone())));
        }
    } else {
        let mut lost = Facts::default();
        let (mut oks, mut fails) = (0, 0);
        for op in ops {
            let read = input.reads[op.id as usize];
            match &op.done {
                Some((OpType::Ok, at, _)) => {
                    oks += 1;
                    if read != FinalRead::Committed {
                        lost.add(format!(
                            "{} was acknowledged committed at {:.3} s, but its coordinator's final state is {read:?}",
                            describe(op),
                            *at as f64 / 1000.0
                        ));
                    }
                }
                Some((OpType::Fail, at, error)) => {
                    fails += 1;
                    if read == FinalRead::Committed {
                        lost.add(format!(
                            "{} was reported failed ({}) at {:.3} s, but its coordinator committed it",
                            describe(op),
                            error.as_deref().unwrap_or("?"),
                            *at as f64 / 1000.0
                        ));
                    }
                }
                _ => {}
            }
        }
        out.push((
            "no_lost_acknowledgement",
            lost.finding(format!(
                "{oks} ok and {fails} fail checked against the final reads"
            )),
        ));

        let mut info = Facts::default();
        let (mut infos, mut committed) = (0, 0);
        for op in ops
            .iter()
            .filter(|o| matches!(o.done, Some((OpType::Info, _, _))))
        {
            infos += 1;
            let read = input.reads[op.id as usize];
            match read {
                FinalRead::InProgress => info.add(format!(
                    "{} is still in progress at its coordinator",
                    describe(op)
                )),
                FinalRead::Committed => committed += 1,
                FinalRead::Aborted(_) | FinalRead::Unknown => {}
            }
            let late = input
                .late
                .get(&(op.id as usize))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if let Some(first) = late.first() {
                if late.iter().any(|r| r != first) {
                    info.add(format!(
                        "{} was announced both ways after the client gave up",
                        describe(op)
                    ));
                }
                if first.is_ok() != (read == FinalRead::Committed) {
                    info.add(format!(
                        "{} was announced {} late, but its coordinator's final state is {read:?}",
                        describe(op),
                        result_name(*first)
                    ));
                }
            }
        }
        out.push((
            "info_resolved",
            info.finding(format!(
                "{infos} info resolved: {committed} committed, {} did not",
                infos - committed
            )),
        ));

        let mut term = Facts::default();
        let mut took = Vec::new();
        for (phase, r) in input.termination {
            match r {
                Ok(ms) => took.push(format!("{phase} {:.1} s", *ms as f64 / 1000.0)),
                Err(facts) => term.add(format!(
                    "not every saga ended within the bound after {phase}: {facts}"
                )),
            }
        }
        out.push(("termination", term.finding(took.join(", "))));
    }

    out.push((
        "idempotency",
        match input.violation.filter(|v| v.invariant == "idempotency") {
            Some(v) => Finding::Violated(format!(
                "at {:.3} s ({}): {}",
                v.at_ms as f64 / 1000.0,
                v.phase,
                v.facts
            )),
            None => Finding::Ok(format!(
                "{} duplicate deliveries injected",
                input.duplicates
            )),
        },
    ));

    out.push(("supervision", supervision(input)));

    let (finding, steady) = steady_state(input);
    out.push(("steady_state", finding));
    out.push((
        "escrow",
        Finding::Skipped("no escrow saga in this build".into()),
    ));

    // Any other invariant named by the violation that stopped the run.
    if let Some(v) = input.violation {
        if !out.iter().any(|(n, _)| *n == v.invariant) {
            out.push(("termination", Finding::Violated(v.facts.clone())));
        } else if let Some((_, f)) = out.iter_mut().find(|(n, _)| *n == v.invariant) {
            if f.is_ok() {
                *f = Finding::Violated(format!(
                    "at {:.3} s ({}): {}",
                    v.at_ms as f64 / 1000.0,
                    v.phase,
                    v.facts
                ));
            }
        }
    }
    (out, steady)
}

fn supervision(input: &Input<'_>) -> Finding {
    let s = input.scenario.supervision;
    if let Some(why) = input.escalations.first() {
        return Finding::Violated(format!("escalated, the node stopped: {why}"));
    }
    let mut by_actor: BTreeMap<Address, Vec<u64>> = BTreeMap::new();
    for (at, a) in input.restarts {
        by_actor.entry(*a).or_default().push(*at);
    }
    let mut facts = Facts::default();
    let mut most = 0;
    for (a, times) in &by_actor {
        for (i, t) in times.iter().enumerate() {
            let within = times[..=i]
                .iter()
                .filter(|u| t - **u <= s.restart_window_ms)
                .count();
            most = most.max(within);
            if within as u32 > s.restart_intensity_max {
                facts.add(format!(
                    "{a} restarted {within} times within {} ms (intensity {}) at {:.3} s without escalating",
                    s.restart_window_ms,
                    s.restart_intensity_max,
                    *t as f64 / 1000.0
                ));
                break;
            }
        }
    }
    facts.finding(format!(
        "{} restarts, at most {most} of one actor within {} ms (intensity {})",
        input.restarts.len(),
        s.restart_window_ms,
        s.restart_intensity_max
    ))
}

/// Probes over the operations invoked in a phase: (committed percent, p99 latency, count).
fn probe(ops: &[Op], from: u64, to: u64) -> (f64, u64, usize) {
    let window: Vec<&Op> = ops
        .iter()
        .filter(|o| o.f.honest() && o.invoked_ms >= from && o.invoked_ms < to && o.done.is_some())
        .collect();
    let mut latencies: Vec<u64> = window
        .iter()
        .filter_map(|o| match o.done {
            Some((OpType::Ok, at, _)) => Some(at - o.invoked_ms),
            _ => None,
        })
        .collect();
    latencies.sort_unstable();
    let committed = latencies.len();
    let percent = if window.is_empty() {
        100.0
    } else {
        100.0 * committed as f64 / window.len() as f64
    };
    let p99 = if latencies.is_empty() {
        0
    } else {
        latencies[(latencies.len() * 99).div_ceil(100) - 1]
    };
    (percent, p99, window.len())
}

fn steady_state(input: &Input<'_>) -> (Finding, Probes) {
    let h = input.scenario.steady_state;
    let mut probes = Vec::new();
    let mut facts = Facts::default();
    for (name, label) in [("warmup", "before the faults"), ("after", "after healing")] {
        let Some((_, from, to)) = input.phases.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        let (percent, p99, n) = probe(input.ops, *from, *to);
        probes.push((name, percent, p99, n));
        if percent < h.committed_percent_min {
            facts.add(format!("{label}: {percent:.1}% of {n} honest operations committed, the hypothesis needs {:.1}%", h.committed_percent_min));
        }
        if p99 > h.p99_latency_max_ms {
            facts.add(format!(
                "{label}: p99 latency {p99} ms, the hypothesis allows {} ms",
                h.p99_latency_max_ms
            ));
        }
    }
    if probes.is_empty() {
        return (
            Finding::Skipped("the run stopped before the warm-up ended".into()),
            probes,
        );
    }
    let note = probes
        .iter()
        .map(|(n, p, l, c)| format!("{n}: {p:.1}% committed of {c}, p99 {l} ms"))
        .collect::<Vec<_>>()
        .join("; ");
    (facts.finding(note), probes)
}
