//! The audit's part for merge, split and offline payment: what their sagas add to the
//! invariants of DESIGN.md §4, computed over the same snapshot and handed back to the audit.
//!
//! - Projection (a snapshot between steps): a merge decided commit whose issuer has not
//!   retired its coins yet counts them as spent (the merged coin is already issued); an
//!   issuer's share of backing the central bank has not moved yet counts as moved.
//! - Conservation: the offline value in flight — what the issuers' offline ledgers still owe
//!   to chains not redeemed yet, once their coin is spent — counts as customers' value, and
//!   as its issuer's outstanding coins for backing. A coin its owner split offline is not in
//!   the owner's wallet any more, though its issuer still shows it active until a chain is
//!   redeemed: the holdings check does not expect it there. At quiescent points the chains
//!   the wallets hold (deduplicated: a chain being handed over is in two wallets) must cover
//!   what each coin still owes to chains, or value was lost.
//! - No double spend: a merge consumes its coins, a split its coin, an offline settlement its
//!   coin; none of them may consume a coin another committed saga consumed.
//! - Atomicity: a committed merge issued one coin of exactly the sum of its inputs, a split
//!   two coins summing to its input, a redemption one coin of its chain's value; an offline
//!   ledger paid no more than its coin and exactly its committed claims; an aborted saga
//!   issued nothing and holds nothing.

use crate::cluster::ClusterSnapshot;
use crate::institution::{merge_backing_key, settlement_saga, CoinState, MergeStep, RedeemStep};
use specie_protocol::offline::ChainId;
use specie_protocol::{Amount, CoinId, InstitutionId, SagaId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What merge, split and offline payment add to the audit.
#[derive(Debug, Default)]
pub(super) struct SagasAudit {
    /// Backing the central bank has not moved yet for decided merges, by institution.
    pub backing_shift: BTreeMap<InstitutionId, i128>,
    /// Offline value in flight: owed by the issuers' ledgers to chains not redeemed yet.
    pub offline_due: u128,
    /// The same, by issuer (it is part of each issuer's outstanding coins).
    pub outstanding_due: BTreeMap<InstitutionId, u128>,
    /// Merges and redemptions not terminal yet.
    pub in_flight: usize,
    /// Coins consumed by committed merges, splits and offline settlements, by saga.
    pub spenders: HashMap<SagaId, Vec<CoinId>>,
    /// Coins each wallet split offline (their registers may still show them active).
    pub spent_offline: HashMap<specie_protocol::WalletId, HashSet<CoinId>>,
    /// Conservation findings.
    pub conservation: Vec<String>,
    /// Atomicity findings.
    pub atomicity: Vec<String>,
}

type Coins = HashMap<CoinId, (InstitutionId, Amount, CoinState)>;
type Outputs = HashMap<SagaId, Vec<(CoinId, Amount)>>;

fn total(outs: &[(CoinId, Amount)]) -> u128 {
    outs.iter().map(|(_, v)| u128::from(v.0)).sum()
}

/// Checks the merge, split and offline sagas; projects decided merges into `coins`.
pub(super) fn check(
    s: &ClusterSnapshot,
    coins: &mut Coins,
    outputs: &Outputs,
    quiescent: bool,
) -> SagasAudit {
    let mut a = SagasAudit::default();
    let none: &[(CoinId, Amount)] = &[];

    // Merges, at their coordinators.
    for inst in &s.institutions {
        for (saga, m) in &inst.sagas.merges {
            if !m.step.is_terminal() {
                a.in_flight += 1;
            }
            let outs = outputs.get(saga).map_or(none, Vec::as_slice);
            match &m.step {
                MergeStep::Committing {
                    issuers_done,
                    backing_done,
                    ..
                } => {
                    for (id, issuer) in &m.coins {
                        if issuers_done.contains(issuer) {
                            continue;
                        }
                        if let Some(entry) = coins.get_mut(id) {
                            if entry.2 == CoinState::Locked(*saga) {
                                entry.2 = CoinState::Spent(*saga);
                            }
                        }
                    }
                    for (issuer, locked) in &m.locked {
                        let moved = backing_done.contains(issuer)
                            || s.central_bank
                                .applied
                                .contains(&merge_backing_key(*saga, *issuer));
                        if *issuer != inst.id && !moved {
                            *a.backing_shift.entry(*issuer).or_default() -= i128::from(locked.0);
                            *a.backing_shift.entry(inst.id).or_default() += i128::from(locked.0);
                        }
                    }
                }
                MergeStep::Aborted { .. } => {
                    if !outs.is_empty() {
                        a.atomicity
                            .push(format!("aborted merge {saga} issued {} coins", outs.len()));
                    }
                    for (id, _) in &m.coins {
                        if let Some((
                            _,
                            _,
                            state @ (CoinState::Locked(by) | CoinState::Spent(by)),
                        )) = coins.get(id)
                        {
                            if by == saga {
                                a.atomicity
                                    .push(format!("aborted merge {saga} left coin {id} {state:?}"));
                            }
                        }
                    }
                }
                MergeStep::Locking | MergeStep::Aborting { .. } | MergeStep::Committed { .. } => {}
            }
            if matches!(
                m.step,
                MergeStep::Committing { .. } | MergeStep::Committed { .. }
            ) {
                a.spenders
                    .insert(*saga, m.coins.iter().map(|(id, _)| *id).collect());
                if outs.len() != 1 || total(outs) != u128::from(m.total.0) {
                    a.atomicity.push(format!(
                        "committed merge {saga} of {} fen issued {} coins worth {} fen",
                        m.total.0,
                        outs.len(),
                        total(outs)
                    ));
                }
                let locked: u128 = m.locked.values().map(|v| u128::from(v.0)).sum();
                if locked != u128::from(m.total.0) {
                    a.atomicity.push(format!(
                        "committed merge {saga}: issuers locked {locked} fen of {}",
                        m.total.0
                    ));
                }
            }
            if let MergeStep::Committed { .. } = m.step {
                let mut inputs = 0u128;
                for (id, _) in &m.coins {
                    match coins.get(id) {
                        Some((_, v, CoinState::Spent(by))) if by == saga => {
                            inputs += u128::from(v.0)
                        }
                        Some((_, _, state)) => a
                            .atomicity
                            .push(format!("committed merge {saga}: input {id} is {state:?}")),
                        None => a.atomicity.push(format!(
                            "committed merge {saga}: input {id} is not registered"
                        )),
                    }
                }
                if inputs != total(outs) {
                    a.atomicity.push(format!(
                        "committed merge {saga}: inputs {inputs} fen, output {} fen",
                        total(outs)
                    ));
                }
            }
        }
    }

    // Splits, at the coins' issuers.
    for inst in &s.institutions {
        for (saga, x) in &inst.sagas.splits {
            let outs = outputs.get(saga).map_or(none, Vec::as_slice);
            match x.result {
                Ok(()) => {
                    a.spenders.insert(*saga, vec![x.coin]);
                    match coins.get(&x.coin) {
                        Some((_, v, CoinState::Spent(by))) if by == saga => {
                            if outs.len() != 2 || total(outs) != u128::from(v.0) {
                                a.atomicity.push(format!(
                                    "split {saga} of a {} fen coin issued {} coins worth {} fen",
                                    v.0,
                                    outs.len(),
                                    total(outs)
                                ));
                            }
                        }
                        other => a
                            .atomicity
                            .push(format!("split {saga}: its coin {} is {other:?}", x.coin)),
                    }
                }
                Err(_) if !outs.is_empty() => a
                    .atomicity
                    .push(format!("refused split {saga} issued {} coins", outs.len())),
                Err(_) => {}
            }
        }
    }

    // Redemptions, at their coordinators (the claimant's coin is issued by the coin's issuer,
    // under the redemption's saga).
    for inst in &s.institutions {
        for (saga, r) in &inst.sagas.redemptions {
            if !r.step.is_terminal() {
                a.in_flight += 1;
            }
            let outs = outputs.get(saga).map_or(none, Vec::as_slice);
            match r.step {
                RedeemStep::Committed
                    if outs.len() != 1 || total(outs) != u128::from(r.amount.0) =>
                {
                    a.atomicity.push(format!(
                        "committed redemption {saga} of {} fen issued {} coins worth {} fen",
                        r.amount.0,
                        outs.len(),
                        total(outs)
                    ));
                }
                RedeemStep::Aborted { .. } if !outs.is_empty() => {
                    a.atomicity.push(format!(
                        "aborted redemption {saga} issued {} coins",
                        outs.len()
                    ));
                }
                _ => {}
            }
        }
    }

    // Offline ledgers, at the coins' issuers.
    let mut owed: HashMap<CoinId, u128> = HashMap::new();
    for inst in &s.institutions {
        for (coin, l) in &inst.sagas.ledgers {
            if l.paid > l.value {
                a.atomicity.push(format!(
                    "offline ledger of coin {coin} paid {} fen of a {} fen coin",
                    l.paid.0, l.value.0
                ));
            }
            let committed: u128 = l
                .claims
                .iter()
                .filter(|c| c.2)
                .map(|c| u128::from(c.1 .0))
                .sum();
            if committed != u128::from(l.paid.0) {
                a.atomicity.push(format!(
                    "offline ledger of coin {coin}: claims {committed} fen committed, {} paid",
                    l.paid.0
                ));
            }
            for (claim, amount, _) in l.claims.iter().filter(|c| c.2) {
                let outs = outputs.get(claim).map_or(none, Vec::as_slice);
                if outs.len() != 1 || total(outs) != u128::from(amount.0) {
                    a.atomicity.push(format!(
                        "offline claim {claim} of {} fen was paid {} fen",
                        amount.0,
                        total(outs)
                    ));
                }
            }
            if !l.paid.is_zero() {
                a.spenders.insert(settlement_saga(*coin), vec![*coin]);
                let due = u128::from(l.outstanding.0);
                a.offline_due += due;
                *a.outstanding_due.entry(inst.id).or_default() += due;
                owed.insert(*coin, due);
            }
        }
    }

    // Wallets: coins split offline, and the chains they hold.
    let mut held: HashMap<ChainId, (CoinId, Amount)> = HashMap::new();
    for w in &s.wallets {
        a.spent_offline
            .insert(w.id, w.offline.spent_offline.iter().copied().collect());
        for chain in w
            .offline
            .chains
            .iter()
            .chain(w.offline.outbox.iter().map(|(_, c)| c))
        {
            held.insert(chain.id(), (chain.coin.id, chain.value()));
        }
    }
    if quiescent {
        // A coin split offline and not claimed yet owes its whole value to its chains.
        for ids in a.spent_offline.values() {
            for id in ids {
                if let Some((_, v, CoinState::Active)) = coins.get(id) {
                    owed.insert(*id, u128::from(v.0));
                }
            }
        }
        let mut covered: HashMap<CoinId, u128> = HashMap::new();
        for (coin, value) in held.values() {
            *covered.entry(*coin).or_default() += u128::from(value.0);
        }
        for (coin, due) in &owed {
            let have = covered.get(coin).copied().unwrap_or(0);
            if have < *due {
                a.conservation.push(format!("coin {coin} owes {due} fen to offline chains, but the wallets hold chains of it worth {have} fen"));
            }
        }
    }
    a
}
