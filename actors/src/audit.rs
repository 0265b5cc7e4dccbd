//! The audit: invariants 1–4 of DESIGN.md §4, checked over a cluster snapshot.
//!
//! - conservation: customers' value (accounts, every unspent coin, exchanges in flight) equals
//!   what the workload deposited; the central bank's reserves equal what it minted; and every
//!   wallet holds exactly the coins the registers say it owns.
//! - backing: per institution, the value of its outstanding coins equals its backing reserve.
//! - no_double_spend: every spent coin was spent by one committed saga that names it; no coin
//!   is an input of two committed sagas; no wallet holds a spent coin.
//! - atomicity: a committed payment's inputs equal its outputs (payee coin + change) and its
//!   payee coin equals the amount; an aborted saga spent, locked and issued nothing; an
//!   exchange issued exactly its amount or nothing; an escrow settlement's inputs equal its
//!   outputs, a withdraw retired exactly what it credited.
//! - merge, split and offline payment (`audit_sagas.rs`): decided merges are projected like
//!   payments; what the issuers' offline ledgers still owe to unredeemed chains counts in
//!   conservation and backing; merges, splits and offline settlements consume coins like
//!   payments; their outputs equal their inputs.
//! - escrow (invariant 8): claims within the cap and the cap within the deposit; every frozen
//!   coin belongs to an open escrow through its issuer's hold; a closed escrow froze nothing
//!   and refunded exactly what was not claimed (`crate::escrow::audit`). Frozen coins count
//!   in conservation and backing like any unspent coin, but no wallet holds them.
//!
//! A snapshot taken between steps (the journal of a node killed mid-saga) is judged by the
//! state its recorded decisions lead to: a saga decided commit whose issuer has not retired
//! the inputs yet counts them as spent and its change as issued; a backing move or an
//! exchange's reserve the central bank has not applied yet counts as applied. Whether every
//! wallet holds exactly its registered coins is checked only at quiescent points, since a
//! coin may be on its way to its owner. The report counts the sagas still in flight.

use crate::cluster::ClusterSnapshot;
use crate::institution::{CoinState, ExchangeState, PayStep};
use specie_protocol::{Amount, CoinId, InstitutionId, SagaId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

// Merge, split and offline payment's part of the invariants.
#[path = "audit_sagas.rs"]
mod sagas;

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Holds.
    Ok,
    /// Violated, with the facts (the first few findings).
    Violated(String),
}

impl Check {
    /// Whether it holds.
    pub fn is_ok(&self) -> bool {
        matches!(self, Check::Ok)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ok => f.write_str("ok"),
            Check::Violated(facts) => write!(f, "violated: {facts}"),
        }
    }
}

/// The audit's verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Invariant 1.
    pub conservation: Check,
    /// Invariant 2.
    pub backing: Check,
    /// Invariant 3.
    pub no_double_spend: Check,
    /// Invariant 4.
    pub atomicity: Check,
    /// Invariant 8: escrows.
    pub escrow: Check,
    /// Sagas not yet terminal, and coins not yet acknowledged by their owners, when the
    /// snapshot was taken.
    pub in_flight: usize,
}

impl AuditReport {
    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.invariants().iter().all(|(_, c)| c.is_ok())
    }

    /// The verdicts by name, in report order.
    pub fn invariants(&self) -> [(&'static str, &Check); 5] {
        [
            ("conservation", &self.conservation),
            ("backing", &self.backing),
            ("no_double_spend", &self.no_double_spend),
            ("atomicity", &self.atomicity),
            ("escrow", &self.escrow),
        ]
    }
}

/// Collects findings, keeping the first few facts and the count.
#[derive(Default)]
struct Findings {
    facts: Vec<String>,
    count: usize,
}

/// How many findings an invariant's verdict spells out.
const FINDINGS_SHOWN_MAX: usize = 5;

impl Findings {
    fn add(&mut self, fact: String) {
        self.count += 1;
        if self.facts.len() < FINDINGS_SHOWN_MAX {
            self.facts.push(fact);
        }
    }

    fn verdict(self) -> Check {
        if self.count == 0 {
            Check::Ok
        } else {
            let more = self.count - self.facts.len();
            let tail = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            Check::Violated(format!("{}{tail}", self.facts.join("; ")))
        }
    }
}

/// Checks invariants 1–4 over a snapshot. `quiescent`: no envelope was in flight when it
/// was taken (enables the wallet-holdings check).
pub fn audit(s: &ClusterSnapshot, quiescent: bool) -> AuditReport {
    // A coin still being redelivered may not have reached its owner yet: wallets' views are
    // judged only when every issued coin has been acknowledged.
    let quiescent = quiescent && s.institutions.iter().all(|i| i.coins_in_delivery == 0);
    // Indexes over every register.
    let mut coins: HashMap<CoinId, (InstitutionId, Amount, CoinState)> = HashMap::new();
    let mut outputs: HashMap<SagaId, Vec<(CoinId, Amount)>> = HashMap::new();
    for inst in &s.institutions {
        for (id, r) in &inst.coins {
            coins.insert(*id, (inst.id, r.coin.value(), r.state));
            outputs
                .entry(r.coin.body.origin_saga)
                .or_default()
                .push((*id, r.coin.value()));
        }
    }
    let sum = |it: &mut dyn Iterator<Item = Amount>| it.fold(0u128, |acc, a| acc + u128::from(a.0));

    // Project decided-but-unfinished steps (see the module doc).
    let mut projected_change: BTreeMap<InstitutionId, u128> = BTreeMap::new();
    let mut backing_shift: BTreeMap<InstitutionId, i128> = BTreeMap::new();
    for inst in &s.institutions {
        for (saga, p) in &inst.pays {
            let PayStep::Committing {
                issuer_done,
                backing_done,
            } = p.step
            else {
                continue;
            };
            if !issuer_done {
                let mut locked = 0u128;
                for id in &p.coin_ids {
                    if let Some(entry) = coins.get_mut(id) {
                        if entry.2 == CoinState::Locked(*saga) {
                            locked += u128::from(entry.1 .0);
                            entry.2 = CoinState::Spent(*saga);
                        }
                    }
                }
                if locked > 0 {
                    *projected_change.entry(p.payer_institution).or_default() +=
                        locked - u128::from(p.amount.0);
                }
            }
            if !backing_done && !s.central_bank.applied.contains(saga) {
                *backing_shift.entry(p.payer_institution).or_default() -= i128::from(p.amount.0);
                *backing_shift.entry(inst.id).or_default() += i128::from(p.amount.0);
            }
        }
        for (saga, (_, amount, state)) in &inst.exchanges {
            if *state == ExchangeState::Pending && s.central_bank.applied.contains(saga) {
                // Reserve already backs coins the institution is about to issue.
                *backing_shift.entry(inst.id).or_default() -= i128::from(amount.0);
            }
        }
    }
    let change_total: u128 = projected_change.values().sum();
    let extra = crate::escrow::audit::check(s);
    let sagas = sagas::check(s, &mut coins, &outputs, quiescent);
    for (inst, shift) in &sagas.backing_shift {
        *backing_shift.entry(*inst).or_default() += shift;
    }
    for (inst, shift) in &extra.backing_shift {
        *backing_shift.entry(*inst).or_default() += shift;
    }

    // 1. Conservation.
    let mut conservation = Findings::default();
    let accounts = sum(&mut s
        .institutions
        .iter()
        .flat_map(|i| i.accounts.values().map(|a| a.balance)));
    let unspent = sum(&mut coins
        .values()
        .filter(|(_, _, st)| !matches!(st, CoinState::Spent(_)))
        .map(|(_, v, _)| *v));
    let exchanging = sum(&mut s
        .institutions
        .iter()
        .flat_map(|i| i.exchanges.values())
        .filter(|(_, _, st)| *st == ExchangeState::Pending)
        .map(|(_, amount, _)| *amount));
    let customers = accounts + unspent + change_total + exchanging + extra.due + sagas.offline_due;
    if customers != u128::from(s.deposited.0) {
        conservation.add(format!(
            "customers hold {customers} fen (accounts {accounts} + coins {unspent} + change due {change_total} + exchanging {exchanging} + escrow claims due {} + offline in flight {}), deposited {}",
            extra.due, sagas.offline_due, s.deposited.0
        ));
    }
    for fact in &sagas.conservation {
        conservation.add(fact.clone());
    }
    let reserves = sum(&mut s.central_bank.reserves.values().map(|r| r.backing))
        + sum(&mut s.central_bank.reserves.values().map(|r| r.free));
    if reserves != u128::from(s.central_bank.minted.0) {
        conservation.add(format!(
            "central bank reserves {reserves} fen, minted {}",
            s.central_bank.minted.0
        ));
    }
    // Every wallet holds exactly the unspent coins its key owns in its institution's register.
    let mut owned: HashMap<_, HashSet<CoinId>> = HashMap::new();
    for inst in &s.institutions {
        for (id, r) in &inst.coins {
            // A frozen coin is its escrow's, not its owner's wallet's (the escrow check covers it).
            if !matches!(r.state, CoinState::Spent(_) | CoinState::Frozen(_)) {
                owned.entry(r.coin.body.owner).or_default().insert(*id);
            }
        }
    }
    for w in s.wallets.iter().filter(|_| quiescent) {
        let held: HashSet<CoinId> = w.coins.iter().map(|c| c.id).collect();
        let registered = owned.remove(&w.key).unwrap_or_default();
        // Coins the wallet split offline stay active at their issuer until a chain is redeemed.
        let registered: HashSet<CoinId> = match sagas.spent_offline.get(&w.id) {
            Some(offline) => registered.difference(offline).copied().collect(),
            None => registered,
        };
        if held != registered {
            let missing = registered.difference(&held).count();
            let extra = held.difference(&registered).count();
            conservation.add(format!(
                "{} holds {} coins, registers say {}: {missing} not held, {extra} not registered",
                w.id,
                held.len(),
                registered.len()
            ));
        }
    }
    for (key, ids) in owned.into_iter().filter(|_| quiescent) {
        conservation.add(format!(
            "{} unspent coins owned by {key:?}, which no wallet holds",
            ids.len()
        ));
    }

    // 2. Backing.
    let mut backing = Findings::default();
    let mut outstanding: BTreeMap<InstitutionId, u128> = BTreeMap::new();
    for inst in &s.institutions {
        outstanding.insert(inst.id, 0);
    }
    for (issuer, value, state) in coins.values() {
        if !matches!(state, CoinState::Spent(_)) {
            *outstanding.entry(*issuer).or_default() += u128::from(value.0);
        }
    }
    for (inst, change) in &projected_change {
        *outstanding.entry(*inst).or_default() += change;
    }
    for (inst, due) in &sagas.outstanding_due {
        *outstanding.entry(*inst).or_default() += due;
    }
    for (inst, due) in &extra.outstanding_due {
        *outstanding.entry(*inst).or_default() += due;
    }
    for (inst, value) in &outstanding {
        let reserve = s
            .central_bank
            .reserves
            .get(inst)
            .map_or(0, |r| i128::from(r.backing.0));
        let reserve = reserve + backing_shift.get(inst).copied().unwrap_or(0);
        if i128::try_from(*value).unwrap_or(i128::MAX) != reserve {
            backing.add(format!(
                "{inst} has {value} fen of coins outstanding, backing reserve {reserve}"
            ));
        }
    }

    // Pay sagas by id, from their coordinators.
    let mut pays = HashMap::new();
    for inst in &s.institutions {
        for (saga, p) in &inst.pays {
            pays.insert(*saga, p);
        }
    }
    let in_flight = pays.values().filter(|p| !p.step.is_terminal()).count()
        + s.institutions
            .iter()
            .flat_map(|i| i.exchanges.values())
            .filter(|(_, _, st)| *st == ExchangeState::Pending)
            .count()
        + s.institutions
            .iter()
            .map(|i| i.coins_in_delivery)
            .sum::<usize>()
        + extra.in_flight
        + sagas.in_flight;
    let committed = |step: PayStep| matches!(step, PayStep::Committing { .. } | PayStep::Committed);

    // 3. No double spend.
    let mut double = Findings::default();
    for (id, (_, _, state)) in &coins {
        if let CoinState::Spent(saga) = state {
            match pays.get(saga) {
                Some(p) if committed(p.step) && p.coin_ids.contains(id) => {}
                Some(p) => double.add(format!(
                    "coin {id} spent by saga {saga}, which is {:?} and does not commit it",
                    p.step
                )),
                // Retired by an escrow settlement or a withdraw that names it.
                None if extra.spenders.get(saga).is_some_and(|ids| ids.contains(id)) => {}
                // Retired by a merge, a split or an offline settlement that names it.
                None if sagas.spenders.get(saga).is_some_and(|ids| ids.contains(id)) => {}
                None => double.add(format!(
                    "coin {id} spent by saga {saga}, which no coordinator knows"
                )),
            }
        }
    }
    let mut consumer: HashMap<CoinId, SagaId> = HashMap::new();
    for (saga, p) in &pays {
        if committed(p.step) {
            for id in &p.coin_ids {
                if let Some(other) = consumer.insert(*id, *saga) {
                    double.add(format!(
                        "coin {id} consumed by committed sagas {other} and {saga}"
                    ));
                }
            }
        }
    }
    for (saga, ids) in extra.spenders.iter().chain(&sagas.spenders) {
        for id in ids {
            if let Some(other) = consumer.insert(*id, *saga) {
                double.add(format!(
                    "coin {id} consumed by committed sagas {other} and {saga}"
                ));
            }
        }
    }
    // A wallet's view lags its register while outcomes are on their way.
    for w in s.wallets.iter().filter(|_| quiescent) {
        for c in &w.coins {
            if let Some((_, _, CoinState::Spent(saga))) = coins.get(&c.id) {
                double.add(format!(
                    "{} still holds coin {} spent by saga {saga}",
                    w.id, c.id
                ));
            }
        }
    }

    // 4. Atomicity.
    let mut atomicity = Findings::default();
    for (saga, p) in &pays {
        let outs = outputs.get(saga).map(Vec::as_slice).unwrap_or(&[]);
        let out_value = sum(&mut outs.iter().map(|(_, v)| *v));
        match p.step {
            PayStep::Committed => {
                let mut in_value = 0u128;
                for id in &p.coin_ids {
                    match coins.get(id) {
                        Some((_, v, CoinState::Spent(by))) if by == saga => {
                            in_value += u128::from(v.0)
                        }
                        Some((_, _, state)) => {
                            atomicity.add(format!("committed saga {saga}: input {id} is {state:?}"))
                        }
                        None => atomicity.add(format!(
                            "committed saga {saga}: input {id} is not registered"
                        )),
                    }
                }
                if in_value != out_value {
                    atomicity.add(format!(
                        "committed saga {saga}: inputs {in_value} fen, outputs {out_value} fen"
                    ));
                }
                if !outs.iter().any(|(_, v)| *v == p.amount) {
                    atomicity.add(format!(
                        "committed saga {saga}: no output of the amount {}",
                        p.amount.0
                    ));
                }
            }
            PayStep::Aborted { .. } => {
                if !outs.is_empty() {
                    atomicity.add(format!("aborted saga {saga} issued {} coins", outs.len()));
                }
                for id in &p.coin_ids {
                    if let Some((_, _, state @ (CoinState::Locked(by) | CoinState::Spent(by)))) =
                        coins.get(id)
                    {
                        if by == saga {
                            atomicity.add(format!("aborted saga {saga} left coin {id} {state:?}"));
                        }
                    }
                }
            }
            PayStep::Locking | PayStep::Committing { .. } | PayStep::Aborting { .. } => {}
        }
    }
    for inst in &s.institutions {
        for (saga, (wallet, amount, state)) in &inst.exchanges {
            let out_value = sum(&mut outputs.get(saga).into_iter().flatten().map(|(_, v)| *v));
            let expected = match state {
                ExchangeState::Committed => u128::from(amount.0),
                ExchangeState::Aborted(_) | ExchangeState::Pending => 0,
            };
            if out_value != expected {
                atomicity.add(format!(
                    "exchange {saga} of {wallet} ({state:?}, {} fen) issued {out_value} fen of coins",
                    amount.0
                ));
            }
        }
    }

    for fact in sagas.atomicity {
        atomicity.add(fact);
    }
    for fact in extra.atomicity {
        atomicity.add(fact);
    }
    let mut escrow = Findings::default();
    for fact in extra.escrow {
        escrow.add(fact);
    }
    AuditReport {
        conservation: conservation.verdict(),
        backing: backing.verdict(),
        no_double_spend: double.verdict(),
        atomicity: atomicity.verdict(),
        escrow: escrow.verdict(),
        in_flight,
    }
}
