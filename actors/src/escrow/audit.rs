//! What the audit (`crate::audit`) needs to know about escrows and wallet-update withdraws,
//! and the escrow invariant (DESIGN.md §4.8) itself.
//!
//! - **escrow**: every escrow's claims stay within its cap, and its cap within its deposit;
//!   every frozen coin in a register belongs to an escrow that is open or closing, and is one
//!   of the coins its issuer holds for it; the issuer's hold adds up (what it paid out, what
//!   it refunded and what is still frozen equal the deposit); the issuer never paid more than
//!   the escrow decided; a closed escrow froze nothing any more and refunded exactly what the
//!   merchant did not claim.
//! - **atomicity** of settlements and withdraws: a settlement's retired coins equal its
//!   outputs (the re-frozen remainder plus the merchant's coin, or the refund), and the
//!   merchant's coin is the claimed amount; a withdraw retired exactly the amount credited.
//! - Projections for snapshots taken between steps: a claim settled at the issuer whose
//!   merchant's institution has not issued the coin yet counts that coin as due (customers'
//!   value and that institution's outstanding coins); a payout's backing move and a withdraw's
//!   backing release the central bank has not applied yet count as applied.
//! - The coins escrow settlements and withdraws spent, by saga, so that the double-spend check
//!   knows who spent them.

use crate::cluster::ClusterSnapshot;
use crate::escrow::EscrowStatus;
use crate::institution::{CoinState, HoldState, WithdrawState};
use specie_protocol::escrow::{host_of, Settlement};
use specie_protocol::{Address, Amount, CoinId, InstitutionId, SagaId};
use std::collections::{BTreeMap, HashMap};

/// What the escrow and withdraw part of the audit found and projects.
#[derive(Debug, Default)]
pub(crate) struct EscrowAudit {
    /// Coins escrow settlements and withdraws retired, by the saga that retired them.
    pub spenders: HashMap<SagaId, Vec<CoinId>>,
    /// Customers' value decided and on its way: claims' coins not issued yet.
    pub due: u128,
    /// Coin value due per institution (claims' coins its merchants will get).
    pub outstanding_due: BTreeMap<InstitutionId, u128>,
    /// Backing moves and releases decided but not applied at the central bank.
    pub backing_shift: BTreeMap<InstitutionId, i128>,
    /// Escrows, payouts and withdraws with a step decided and not yet acknowledged.
    pub in_flight: usize,
    /// Escrow invariant findings.
    pub escrow: Vec<String>,
    /// Atomicity findings of settlements and withdraws.
    pub atomicity: Vec<String>,
}

/// Checks escrows and withdraws over a snapshot.
pub(crate) fn check(s: &ClusterSnapshot) -> EscrowAudit {
    let mut a = EscrowAudit::default();
    let mut coins: HashMap<CoinId, (InstitutionId, Amount, CoinState)> = HashMap::new();
    let mut outputs: HashMap<SagaId, Vec<(InstitutionId, CoinId, Amount)>> = HashMap::new();
    for inst in &s.institutions {
        for (id, r) in &inst.coins {
            coins.insert(*id, (inst.id, r.coin.value(), r.state));
            outputs.entry(r.coin.body.origin_saga).or_default().push((
                inst.id,
                *id,
                r.coin.value(),
            ));
        }
    }
    let value = |ids: &[CoinId]| -> u128 {
        ids.iter()
            .filter_map(|id| coins.get(id))
            .map(|(_, v, _)| u128::from(v.0))
            .sum()
    };
    let institution = |id: InstitutionId| s.institutions.iter().find(|i| i.id == id);
    let escrows: HashMap<u64, _> = s.escrows.iter().map(|e| (e.id, e)).collect();

    // Every frozen coin belongs to an escrow that still holds value, through its issuer's hold.
    for (id, (issuer, _, state)) in &coins {
        let CoinState::Frozen(escrow) = state else {
            continue;
        };
        let held = institution(*issuer)
            .and_then(|i| i.escrow_holds.get(escrow))
            .is_some_and(|h| h.state == HoldState::Frozen && h.frozen.contains(id));
        if !held {
            a.escrow.push(format!(
                "coin {id} is frozen for {}, whose issuer does not hold it",
                Address::Escrow(*escrow)
            ));
        }
        match escrows.get(escrow).map(|e| e.status) {
            Some(EscrowStatus::Open | EscrowStatus::Closing(_) | EscrowStatus::Freezing) => {}
            // An abandoned deposit's coins are frozen until the issuer hears the unfreeze.
            Some(EscrowStatus::Unfreezing { .. }) => {}
            Some(status) => a.escrow.push(format!(
                "coin {id} is frozen for {}, which is {status:?}",
                Address::Escrow(*escrow)
            )),
            None => a.escrow.push(format!(
                "coin {id} is frozen for {}, which does not exist",
                Address::Escrow(*escrow)
            )),
        }
    }

    for inst in &s.institutions {
        for (escrow, h) in &inst.escrow_holds {
            let name = Address::Escrow(*escrow);
            if host_of(*escrow) != inst.id {
                a.escrow.push(format!(
                    "{} holds escrow {escrow}, hosted by {}",
                    inst.id,
                    host_of(*escrow)
                ));
            }
            for id in &h.frozen {
                if coins.get(id).map(|c| c.2) != Some(CoinState::Frozen(*escrow)) {
                    a.escrow
                        .push(format!("{name}: held coin {id} is not frozen for it"));
                }
            }
            let frozen = value(&h.frozen);
            let accounted = u128::from(h.claimed.0) + u128::from(h.refunded.0) + frozen;
            if h.state == HoldState::Frozen && accounted != u128::from(h.deposit.0) {
                a.escrow.push(format!(
                    "{name}: paid {} + refunded {} + frozen {frozen} != deposit {}",
                    h.claimed.0, h.refunded.0, h.deposit.0
                ));
            }
            let e = escrows.get(escrow);
            match (h.state, e) {
                // An escrow that settled everything may not be running (after a restart, only
                // escrows still holding frozen coins are woken); its hold alone must add up.
                (HoldState::Frozen, None) if h.frozen.is_empty() => {}
                (HoldState::Frozen, None) => a.escrow.push(format!(
                    "{name}: {} holds coins frozen for it, and it does not exist",
                    inst.id
                )),
                (HoldState::Frozen, Some(e)) => {
                    let opened = matches!(
                        e.status,
                        EscrowStatus::Open | EscrowStatus::Closing(_) | EscrowStatus::Closed(_)
                    );
                    if opened && e.deposit != h.deposit {
                        a.escrow.push(format!(
                            "{name}: deposit {} at the escrow, {} at the issuer",
                            e.deposit.0, h.deposit.0
                        ));
                    }
                    if h.claimed > e.claimed {
                        a.escrow.push(format!(
                            "{name}: issuer paid {} of {} decided",
                            h.claimed.0, e.claimed.0
                        ));
                    }
                    if let EscrowStatus::Closed(how) = e.status {
                        if frozen != 0 || h.claimed != e.claimed || h.refunded != e.refunded {
                            a.escrow.push(format!(
                                "{name} closed ({how:?}) with {frozen} still frozen, paid {} of {}, refunded {} of {}",
                                h.claimed.0, e.claimed.0, h.refunded.0, e.refunded.0
                            ));
                        }
                    }
                }
                (HoldState::Refused(_) | HoldState::Unfrozen, Some(e))
                    if matches!(
                        e.status,
                        EscrowStatus::Open | EscrowStatus::Closing(_) | EscrowStatus::Closed(_)
                    ) =>
                {
                    a.escrow.push(format!(
                        "{name} is {:?}, yet its issuer holds nothing ({:?})",
                        e.status, h.state
                    ));
                }
                _ => {}
            }
            // Each settlement: inputs = outputs, coin by coin.
            for (i, applied) in h.applied.iter().enumerate() {
                let saga = applied.saga;
                a.spenders.insert(saga, applied.retired.clone());
                let mut inputs = 0u128;
                for id in &applied.retired {
                    match coins.get(id) {
                        Some((_, v, CoinState::Spent(by))) if *by == saga => {
                            inputs += u128::from(v.0)
                        }
                        other => a.atomicity.push(format!(
                            "{name} settlement {}: input {id} is {other:?}",
                            i + 1
                        )),
                    }
                }
                let outs = outputs.get(&saga).map(Vec::as_slice).unwrap_or(&[]);
                let out_value: u128 = outs.iter().map(|(_, _, v)| u128::from(v.0)).sum();
                let mut due = 0u128;
                if let Settlement::Claim {
                    amount,
                    merchant_institution,
                    ..
                } = applied.settlement
                {
                    let paid = outs
                        .iter()
                        .any(|(at, _, v)| *at == merchant_institution && *v == amount);
                    let payout = (merchant_institution != inst.id)
                        .then(|| {
                            institution(merchant_institution).and_then(|m| m.payouts.get(&saga))
                        })
                        .flatten();
                    if merchant_institution != inst.id && payout.is_none() {
                        // Settled at the issuer; the merchant's coin is on its way.
                        due = u128::from(amount.0);
                        a.due += due;
                        *a.outstanding_due.entry(merchant_institution).or_default() += due;
                    } else if !paid {
                        a.atomicity.push(format!(
                            "{name} claim {saga}: no coin of {} to the merchant",
                            amount.0
                        ));
                    }
                    if merchant_institution != inst.id && !s.central_bank.applied.contains(&saga) {
                        *a.backing_shift.entry(inst.id).or_default() -= i128::from(amount.0);
                        *a.backing_shift.entry(merchant_institution).or_default() +=
                            i128::from(amount.0);
                    }
                }
                if inputs != out_value + due {
                    a.atomicity.push(format!(
                        "{name} settlement {} ({saga}): inputs {inputs} fen, outputs {out_value} fen + due {due}",
                        i + 1
                    ));
                }
            }
        }
        for (saga, p) in &inst.payouts {
            if !p.backed {
                a.in_flight += 1;
            }
            let settled = institution(p.from)
                .and_then(|i| i.escrow_holds.get(&p.escrow))
                .is_some_and(|h| h.applied.iter().any(|x| x.saga == *saga));
            if !settled {
                a.atomicity.push(format!(
                    "{} paid out claim {saga} of {}, which its issuer never settled",
                    inst.id,
                    Address::Escrow(p.escrow)
                ));
            }
        }
        for (saga, w) in &inst.withdrawals {
            let WithdrawState::Done { backed } = w.state else {
                continue;
            };
            a.spenders.insert(*saga, w.coin_ids.clone());
            let mut retired = 0u128;
            for id in &w.coin_ids {
                match coins.get(id) {
                    Some((_, v, CoinState::Spent(by))) if by == saga => retired += u128::from(v.0),
                    other => a
                        .atomicity
                        .push(format!("withdraw {saga}: coin {id} is {other:?}")),
                }
            }
            if retired != u128::from(w.amount.0) {
                a.atomicity.push(format!(
                    "withdraw {saga} of {}: retired {retired} fen, credited {}",
                    w.wallet, w.amount.0
                ));
            }
            if !backed {
                a.in_flight += 1;
            }
            if !s.central_bank.applied.contains(saga) {
                *a.backing_shift.entry(inst.id).or_default() -= i128::from(w.amount.0);
            }
        }
    }

    for e in &s.escrows {
        if e.in_flight {
            a.in_flight += 1;
        }
        if e.claimed > e.cap {
            a.escrow.push(format!(
                "{}: claimed {} above the cap {}",
                Address::Escrow(e.id),
                e.claimed.0,
                e.cap.0
            ));
        }
        let opened = matches!(
            e.status,
            EscrowStatus::Open | EscrowStatus::Closing(_) | EscrowStatus::Closed(_)
        );
        if opened && (e.cap > e.deposit || e.claimed > e.deposit) {
            a.escrow.push(format!(
                "{}: cap {} / claimed {} above the deposit {}",
                Address::Escrow(e.id),
                e.cap.0,
                e.claimed.0,
                e.deposit.0
            ));
        }
        if let EscrowStatus::Closed(how) = e.status {
            let left = e.deposit.checked_sub(e.claimed).unwrap_or(Amount::ZERO);
            if e.refunded != left {
                a.escrow.push(format!(
                    "{} closed ({how:?}): refunded {} of {} left",
                    Address::Escrow(e.id),
                    e.refunded.0,
                    left.0
                ));
            }
        }
        if opened
            && !s
                .institutions
                .iter()
                .any(|i| i.escrow_holds.contains_key(&e.id))
        {
            a.escrow.push(format!(
                "{} is {:?}, and no issuer holds its deposit",
                Address::Escrow(e.id),
                e.status
            ));
        }
    }
    a
}
