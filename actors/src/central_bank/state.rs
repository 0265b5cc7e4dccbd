//! The central bank's rules.

use serde::{Deserialize, Serialize};
use specie_protocol::{AbortReason, Address, Amount, Envelope, InstitutionId, Payload, SagaId};
use specie_runtime::{Effects, StateMachine};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One institution's reserve account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    /// Equals the value of the institution's outstanding coins (invariant 2).
    pub backing: Amount,
    /// The rest: what the institution may still exchange into coins.
    pub free: Amount,
}

/// Journaled facts of the central bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CentralBankEvent {
    /// Reserves minted to an institution (free part).
    Minted {
        /// Receiving institution.
        institution: InstitutionId,
        /// How much.
        amount: Amount,
    },
    /// A request keyed by `saga` was applied or refused; the outcome is its recorded answer.
    Applied {
        /// Idempotency key.
        saga: SagaId,
        /// What the request did.
        change: ReserveChange,
        /// Its answer.
        outcome: Result<(), AbortReason>,
        /// When.
        at_ms: u64,
    },
    /// Recorded answers older than the deduplication retention are forgotten.
    DedupPruned {
        /// The keys dropped.
        sagas: Vec<SagaId>,
    },
}

/// A change of reserves requested by an institution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReserveChange {
    /// Backing moves from one institution to another.
    Move {
        /// Loses backing.
        from: InstitutionId,
        /// Gains backing.
        to: InstitutionId,
        /// How much.
        amount: Amount,
    },
    /// Free reserve of an institution becomes backing.
    Back {
        /// Whose reserve.
        institution: InstitutionId,
        /// How much.
        amount: Amount,
    },
    /// Backing of an institution becomes free reserve (coins withdrawn to accounts).
    Release {
        /// Whose reserve.
        institution: InstitutionId,
        /// How much.
        amount: Amount,
    },
}

/// Local commands (genesis).
#[derive(Debug, Clone, Copy)]
pub enum CentralBankCommand {
    /// Mint `amount` of reserve to `institution`.
    Mint {
        /// Receiving institution.
        institution: InstitutionId,
        /// How much.
        amount: Amount,
    },
}

/// What audits read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralBankSnapshot {
    /// Reserves by institution.
    pub reserves: BTreeMap<InstitutionId, Reserve>,
    /// Everything ever minted.
    pub minted: Amount,
    /// Requests (by saga) whose reserve change was applied.
    pub applied: HashSet<SagaId>,
}

/// The central bank's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CentralBank {
    reserves: BTreeMap<InstitutionId, Reserve>,
    minted: Amount,
    /// Recorded answers by idempotency key (with when they were made), so a retried request
    /// changes nothing.
    applied: HashMap<SagaId, (ReserveChange, Result<(), AbortReason>, u64)>,
    /// How long recorded answers are kept.
    dedup_retention_ms: u64,
    /// When to look for answers past their retention next (not state).
    #[serde(skip)]
    next_prune_ms: u64,
}

impl CentralBank {
    /// A central bank with no reserves, keeping recorded answers `dedup_retention_ms`.
    pub fn new(dedup_retention_ms: u64) -> CentralBank {
        CentralBank {
            dedup_retention_ms,
            ..CentralBank::default()
        }
    }

    /// Drops recorded answers older than the retention (looked for at most every eighth of
    /// the retention).
    fn prune(&mut self, now_ms: u64, out: &mut Effects<CentralBankEvent, ()>) {
        if now_ms < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = now_ms + self.dedup_retention_ms / 8;
        let horizon = now_ms.saturating_sub(self.dedup_retention_ms);
        let mut sagas: Vec<SagaId> = self
            .applied
            .iter()
            .filter(|(_, (_, _, at))| *at < horizon)
            .map(|(s, _)| *s)
            .collect();
        if !sagas.is_empty() {
            sagas.sort();
            self.record(CentralBankEvent::DedupPruned { sagas }, out);
        }
    }

    /// The rule for a reserve change: what it would answer, without changing anything.
    fn check(&self, change: ReserveChange) -> Result<(), AbortReason> {
        match change {
            ReserveChange::Move { from, to, amount } => {
                if amount.is_zero() || from == to || !self.reserves.contains_key(&to) {
                    return Err(AbortReason::InvalidAmount);
                }
                let have = self.reserves.get(&from).map_or(Amount::ZERO, |r| r.backing);
                if have < amount {
                    return Err(AbortReason::InsufficientReserve);
                }
                Ok(())
            }
            ReserveChange::Back {
                institution,
                amount,
            } => {
                if amount.is_zero() {
                    return Err(AbortReason::InvalidAmount);
                }
                let free = self
                    .reserves
                    .get(&institution)
                    .map_or(Amount::ZERO, |r| r.free);
                if free < amount {
                    return Err(AbortReason::InsufficientReserve);
                }
                Ok(())
            }
            ReserveChange::Release {
                institution,
                amount,
            } => {
                if amount.is_zero() {
                    return Err(AbortReason::InvalidAmount);
                }
                let backing = self
                    .reserves
                    .get(&institution)
                    .map_or(Amount::ZERO, |r| r.backing);
                if backing < amount {
                    return Err(AbortReason::InsufficientReserve);
                }
                Ok(())
            }
        }
    }

    fn request(
        &mut self,
        envelope: &Envelope,
        change: ReserveChange,
        now_ms: u64,
        out: &mut Effects<CentralBankEvent, ()>,
    ) {
        let saga = envelope.saga_id;
        #[cfg(feature = "planted-bugs")]
        let recorded = self
            .applied
            .get(&saga)
            .filter(|_| !crate::planted::active(crate::planted::Bug::SkipDedup));
        #[cfg(not(feature = "planted-bugs"))]
        let recorded = self.applied.get(&saga);
        let outcome = match recorded {
            Some((recorded, outcome, _)) if *recorded == change => *outcome,
            // The same key with different content: refuse and change nothing.
            Some(_) => Err(AbortReason::Conflict),
            None => {
                let outcome = self.check(change);
                self.record(
                    CentralBankEvent::Applied {
                        saga,
                        change,
                        outcome,
                        at_ms: now_ms,
                    },
                    out,
                );
                outcome
            }
        };
        out.send(Envelope {
            message_id: 0,
            saga_id: saga,
            from: Address::CentralBank,
            to: envelope.from,
            attempt: envelope.attempt,
            trace: envelope.trace.clone(),
            payload: Payload::ReserveAck(outcome),
        });
    }
}

impl StateMachine for CentralBank {
    type Event = CentralBankEvent;
    type Timer = ();
    type Command = CentralBankCommand;
    type Snapshot = CentralBankSnapshot;

    fn address(&self) -> Address {
        Address::CentralBank
    }

    fn apply(&mut self, event: &CentralBankEvent) {
        match *event {
            CentralBankEvent::Minted {
                institution,
                amount,
            } => {
                let r = self.reserves.entry(institution).or_default();
                r.free = r.free.checked_add(amount).expect("reserve overflow");
                self.minted = self.minted.checked_add(amount).expect("minted overflow");
            }
            CentralBankEvent::DedupPruned { ref sagas } => {
                for saga in sagas {
                    self.applied.remove(saga);
                }
            }
            CentralBankEvent::Applied {
                saga,
                change,
                outcome,
                at_ms,
            } => {
                if outcome.is_ok() {
                    match change {
                        ReserveChange::Move { from, to, amount } => {
                            let f = self.reserves.get_mut(&from).expect("checked");
                            f.backing = f.backing.checked_sub(amount).expect("checked");
                            let t = self.reserves.get_mut(&to).expect("checked");
                            t.backing = t.backing.checked_add(amount).expect("supply fits u64");
                        }
                        ReserveChange::Back {
                            institution,
                            amount,
                        } => {
                            let r = self.reserves.get_mut(&institution).expect("checked");
                            r.free = r.free.checked_sub(amount).expect("checked");
                            r.backing = r.backing.checked_add(amount).expect("supply fits u64");
                        }
                        ReserveChange::Release {
                            institution,
                            amount,
                        } => {
                            let r = self.reserves.get_mut(&institution).expect("checked");
                            r.backing = r.backing.checked_sub(amount).expect("checked");
                            r.free = r.free.checked_add(amount).expect("supply fits u64");
                        }
                    }
                }
                self.applied.insert(saga, (change, outcome, at_ms));
            }
        }
    }

    fn on_start(&mut self, _now_ms: u64, _out: &mut Effects<CentralBankEvent, ()>) {}

    fn on_envelope(
        &mut self,
        envelope: Envelope,
        now_ms: u64,
        out: &mut Effects<CentralBankEvent, ()>,
    ) {
        self.prune(now_ms, out);
        let Address::Institution(sender) = envelope.from else {
            metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                .increment(1);
            return;
        };
        let change = match envelope.payload {
            // Only the gaining institution (the saga's coordinator) may pull backing to itself.
            Payload::MoveBacking { from, to, amount } if to == sender => {
                ReserveChange::Move { from, to, amount }
            }
            Payload::ReserveBacking { amount } => ReserveChange::Back {
                institution: sender,
                amount,
            },
            Payload::ReleaseBacking { amount } => ReserveChange::Release {
                institution: sender,
                amount,
            },
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
                return;
            }
        };
        self.request(&envelope, change, now_ms, out);
    }

    fn on_timer(&mut self, _key: (), _now_ms: u64, _out: &mut Effects<CentralBankEvent, ()>) {}

    fn on_command(
        &mut self,
        command: CentralBankCommand,
        _now_ms: u64,
        out: &mut Effects<CentralBankEvent, ()>,
    ) {
        match command {
            // Genesis mints once per institution; a repeated genesis (after a crash) is a no-op.
            CentralBankCommand::Mint { institution, .. }
                if self.reserves.contains_key(&institution) => {}
            CentralBankCommand::Mint {
                institution,
                amount,
            } => self.record(
                CentralBankEvent::Minted {
                    institution,
                    amount,
                },
                out,
            ),
        }
    }

    fn checkpoint(&self) -> Option<Vec<u8>> {
        Some(postcard::to_stdvec(self).expect("state serializes"))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn snapshot(&self) -> CentralBankSnapshot {
        CentralBankSnapshot {
            reserves: self.reserves.clone(),
            minted: self.minted,
            applied: self
                .applied
                .iter()
                .filter(|(_, (_, outcome, _))| outcome.is_ok())
                .map(|(saga, _)| *saga)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: u32, saga: u128, payload: Payload) -> Envelope {
        Envelope {
            message_id: 0,
            saga_id: SagaId::from_u128(saga),
            from: Address::Institution(InstitutionId(from)),
            to: Address::CentralBank,
            attempt: 0,
            trace: None,
            payload,
        }
    }

    fn funded() -> CentralBank {
        let mut cb = CentralBank::new(86_400_000);
        let mut out = Effects::default();
        for i in 0..2 {
            cb.on_command(
                CentralBankCommand::Mint {
                    institution: InstitutionId(i),
                    amount: Amount(1000),
                },
                0,
                &mut out,
            );
        }
        cb
    }

    fn ack(out: &Effects<CentralBankEvent, ()>) -> Result<(), AbortReason> {
        match &out.sends.last().expect("a reply").payload {
            Payload::ReserveAck(r) => *r,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn backing_moves_once_per_saga_even_when_retried() {
        let mut cb = funded();
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(
                0,
                1,
                Payload::ReserveBacking {
                    amount: Amount(600),
                },
            ),
            0,
            &mut out,
        );
        assert_eq!(ack(&out), Ok(()));
        let mv = Payload::MoveBacking {
            from: InstitutionId(0),
            to: InstitutionId(1),
            amount: Amount(250),
        };
        for _ in 0..3 {
            let mut out = Effects::default();
            cb.on_envelope(envelope(1, 2, mv.clone()), 0, &mut out);
            assert_eq!(ack(&out), Ok(()));
        }
        let s = cb.snapshot();
        assert_eq!(
            s.reserves[&InstitutionId(0)],
            Reserve {
                backing: Amount(350),
                free: Amount(400)
            }
        );
        assert_eq!(
            s.reserves[&InstitutionId(1)],
            Reserve {
                backing: Amount(250),
                free: Amount(1000)
            }
        );
        assert_eq!(s.minted, Amount(2000));
    }

    #[test]
    fn moving_more_backing_than_exists_is_refused_and_changes_nothing() {
        let mut cb = funded();
        let mut out = Effects::default();
        let mv = Payload::MoveBacking {
            from: InstitutionId(0),
            to: InstitutionId(1),
            amount: Amount(1),
        };
        cb.on_envelope(envelope(1, 3, mv), 0, &mut out);
        assert_eq!(ack(&out), Err(AbortReason::InsufficientReserve));
        assert_eq!(cb.snapshot().reserves[&InstitutionId(0)].backing, Amount(0));
    }

    #[test]
    fn reusing_a_key_with_different_content_is_a_conflict() {
        let mut cb = funded();
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(0, 4, Payload::ReserveBacking { amount: Amount(10) }),
            0,
            &mut out,
        );
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(0, 4, Payload::ReserveBacking { amount: Amount(20) }),
            0,
            &mut out,
        );
        assert_eq!(ack(&out), Err(AbortReason::Conflict));
        assert_eq!(
            cb.snapshot().reserves[&InstitutionId(0)].backing,
            Amount(10)
        );
    }

    #[test]
    fn recorded_answers_are_pruned_after_the_retention() {
        let mut cb = funded();
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(0, 7, Payload::ReserveBacking { amount: Amount(10) }),
            1_000,
            &mut out,
        );
        assert!(cb.snapshot().applied.contains(&SagaId::from_u128(7)));
        let later = 1_000 + 86_400_000 + 1;
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(0, 8, Payload::ReserveBacking { amount: Amount(10) }),
            later,
            &mut out,
        );
        assert!(out.events.iter().any(
            |e| matches!(e, CentralBankEvent::DedupPruned { sagas } if sagas == &vec![SagaId::from_u128(7)])
        ));
        let applied = cb.snapshot().applied;
        assert!(
            !applied.contains(&SagaId::from_u128(7)) && applied.contains(&SagaId::from_u128(8))
        );
        // Reserves are not deduplication state: both changes stand.
        assert_eq!(
            cb.snapshot().reserves[&InstitutionId(0)].backing,
            Amount(20)
        );
    }

    #[test]
    fn a_release_turns_backing_into_free_reserve_once_per_saga() {
        let mut cb = funded();
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(
                0,
                1,
                Payload::ReserveBacking {
                    amount: Amount(600),
                },
            ),
            0,
            &mut out,
        );
        for _ in 0..3 {
            let mut out = Effects::default();
            cb.on_envelope(
                envelope(
                    0,
                    2,
                    Payload::ReleaseBacking {
                        amount: Amount(250),
                    },
                ),
                0,
                &mut out,
            );
            assert_eq!(ack(&out), Ok(()));
        }
        assert_eq!(
            cb.snapshot().reserves[&InstitutionId(0)],
            Reserve {
                backing: Amount(350),
                free: Amount(650)
            }
        );
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(
                0,
                3,
                Payload::ReleaseBacking {
                    amount: Amount(351),
                },
            ),
            0,
            &mut out,
        );
        assert_eq!(
            ack(&out),
            Err(AbortReason::InsufficientReserve),
            "no more than the backing"
        );
        assert_eq!(
            cb.snapshot().reserves[&InstitutionId(0)].backing,
            Amount(350)
        );
    }

    #[test]
    fn only_the_gaining_institution_may_pull_backing() {
        let mut cb = funded();
        let mut out = Effects::default();
        cb.on_envelope(
            envelope(
                0,
                5,
                Payload::ReserveBacking {
                    amount: Amount(100),
                },
            ),
            0,
            &mut out,
        );
        let mut out = Effects::default();
        let theft = Payload::MoveBacking {
            from: InstitutionId(0),
            to: InstitutionId(1),
            amount: Amount(100),
        };
        cb.on_envelope(envelope(0, 6, theft), 0, &mut out);
        assert!(out.sends.is_empty() && out.events.is_empty());
        assert_eq!(
            cb.snapshot().reserves[&InstitutionId(0)].backing,
            Amount(100)
        );
    }
}
