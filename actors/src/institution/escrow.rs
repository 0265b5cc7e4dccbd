//! The institution's side of escrow pre-payment (DESIGN.md §3.4).
//!
//! As the **issuer** of a deposit's coins (and host of the escrow contract) it freezes the
//! coins for the escrow ([`Institution::check_freeze`] is the rule), applies the escrow's
//! settlements one after another in sequence — a claim retires the frozen coins, re-freezes
//! what remains as one new coin and, when the merchant banks here, issues the merchant's coin;
//! a refund retires the frozen coins and issues their value to the payer as a new coin — and
//! unfreezes a deposit abandoned before it opened.
//!
//! As the **merchant's institution** (when it is not the issuer) it issues a claim's coin to
//! the merchant and pulls the backing from the issuer at the central bank, answering the
//! escrow once both are done.
//!
//! Every step is keyed (freeze and unfreeze by the escrow, settlements by their sequence
//! number, payouts by the claim's saga id) and answered from its record when repeated; the
//! escrow drives all retries, so nothing here needs a timer.

use super::{CoinState, Institution, InstitutionEvent, Out};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::PublicKey;
use specie_protocol::escrow::{host_of, EscrowMessage, Settlement, SignedTerms};
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, InstitutionId, Payload, SagaId, WalletId,
};
use specie_runtime::StateMachine;
use std::collections::HashMap;

/// Where the issuer's hold of an escrow's deposit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    /// The deposit's coins (or what remains of them) are frozen for the escrow.
    Frozen,
    /// The freeze was refused; nothing is frozen.
    Refused(AbortReason),
    /// The escrow abandoned the deposit before it opened; the coins are active again.
    Unfrozen,
}

/// One settlement as the issuer applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSettlement {
    /// The step's saga (a claim's, a release's or the expiry's).
    pub saga: SagaId,
    /// What it did.
    pub settlement: Settlement,
    /// The frozen coins it retired.
    pub retired: Vec<CoinId>,
}

/// The issuer's record of one escrow's deposit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hold {
    /// The deposit saga.
    saga: SagaId,
    /// Digest of the freeze request; `None` for a tombstone left by an unfreeze that came
    /// before any freeze.
    digest: Option<[u8; 32]>,
    payer: WalletId,
    payer_key: PublicKey,
    state: HoldState,
    /// The coins frozen now.
    frozen: Vec<CoinId>,
    /// Value frozen at the deposit.
    deposit: Amount,
    /// Settlements applied, in sequence (settlement `seq` is at `seq - 1`).
    applied: Vec<AppliedSettlement>,
    /// Paid out by claims so far.
    claimed: Amount,
    /// Refunded to the payer so far.
    refunded: Amount,
}

/// The merchant's institution's record of a claim it pays out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Payout {
    escrow: u64,
    from: InstitutionId,
    merchant: WalletId,
    amount: Amount,
    coin: CoinId,
    /// The central bank moved the backing from `from`.
    backed: bool,
}

/// Everything an institution keeps about escrows: the holds it keeps as issuer, the payouts it
/// makes as a merchant's institution.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IssuerEscrows {
    holds: HashMap<u64, Hold>,
    payouts: HashMap<SagaId, Payout>,
}

/// Journaled facts of the institution's escrow roles.
// A settlement carries the coins it issues; events are built once, journaled and applied, so
// boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowIssuerEvent {
    /// The deposit's coins are frozen for the escrow.
    Frozen {
        /// The escrow contract.
        escrow: u64,
        /// The deposit saga.
        saga: SagaId,
        /// Digest of the freeze request.
        digest: [u8; 32],
        /// The coins.
        coin_ids: Vec<CoinId>,
        /// Their sum.
        total: Amount,
        /// The payer.
        payer: WalletId,
        /// The payer's key (owner of the frozen coins and of the refund).
        payer_key: PublicKey,
    },
    /// A freeze was refused (recorded so a repeat gets the same answer).
    FreezeRefused {
        /// The escrow contract.
        escrow: u64,
        /// The deposit saga.
        saga: SagaId,
        /// Digest of the freeze request.
        digest: [u8; 32],
        /// The payer.
        payer: WalletId,
        /// The payer's key.
        payer_key: PublicKey,
        /// Why.
        reason: AbortReason,
    },
    /// The escrow abandoned its deposit before it opened: the coins (if any) are active again.
    Unfrozen {
        /// The escrow contract.
        escrow: u64,
        /// The deposit saga (the envelope's).
        saga: SagaId,
    },
    /// A settlement was applied: the frozen coins retired, and the new coins registered.
    Settled {
        /// The escrow contract.
        escrow: u64,
        /// Its sequence number.
        seq: u32,
        /// The step's saga.
        saga: SagaId,
        /// What it did.
        settlement: Settlement,
        /// What remains frozen, as one new coin (claims).
        remainder: Option<Coin>,
        /// The merchant's coin (claims, when the merchant banks here) or the payer's refund.
        issued: Option<Coin>,
    },
    /// As the merchant's institution: the claim's coin was issued to the merchant.
    PayoutIssued {
        /// The claim's saga.
        saga: SagaId,
        /// The escrow contract.
        escrow: u64,
        /// The issuer whose backing moves here.
        from: InstitutionId,
        /// The merchant.
        merchant: WalletId,
        /// The coin.
        coin: Coin,
    },
    /// The central bank moved a payout's backing.
    PayoutBacked {
        /// The claim's saga.
        saga: SagaId,
    },
}

/// A hold as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSummary {
    /// The deposit saga.
    pub saga: SagaId,
    /// Where it stands.
    pub state: HoldState,
    /// Coins frozen now.
    pub frozen: Vec<CoinId>,
    /// Value frozen at the deposit.
    pub deposit: Amount,
    /// Settlements applied, in sequence.
    pub applied: Vec<AppliedSettlement>,
    /// Paid out by claims.
    pub claimed: Amount,
    /// Refunded.
    pub refunded: Amount,
}

/// A payout as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutSummary {
    /// The escrow contract.
    pub escrow: u64,
    /// The issuer whose backing moves here.
    pub from: InstitutionId,
    /// Paid.
    pub amount: Amount,
    /// The merchant's coin.
    pub coin: CoinId,
    /// The backing moved.
    pub backed: bool,
}

impl IssuerEscrows {
    /// The holds, for snapshots.
    pub fn hold_summaries(&self) -> HashMap<u64, HoldSummary> {
        self.holds
            .iter()
            .filter(|(_, h)| h.digest.is_some())
            .map(|(id, h)| {
                (
                    *id,
                    HoldSummary {
                        saga: h.saga,
                        state: h.state,
                        frozen: h.frozen.clone(),
                        deposit: h.deposit,
                        applied: h.applied.clone(),
                        claimed: h.claimed,
                        refunded: h.refunded,
                    },
                )
            })
            .collect()
    }

    /// The payouts, for snapshots.
    pub fn payout_summaries(&self) -> HashMap<SagaId, PayoutSummary> {
        self.payouts
            .iter()
            .map(|(saga, p)| {
                (
                    *saga,
                    PayoutSummary {
                        escrow: p.escrow,
                        from: p.from,
                        amount: p.amount,
                        coin: p.coin,
                        backed: p.backed,
                    },
                )
            })
            .collect()
    }
}

impl Institution {
    fn escrow_send(&self, saga: SagaId, to: Address, message: EscrowMessage, out: &mut Out) {
        out.send(self.envelope(saga, to, 0, Payload::Escrow(message)));
    }

    /// The rule for "can these coins be frozen for this escrow?": everything the issuer checks
    /// before it freezes, in order. Changes nothing.
    pub fn check_freeze(&self, signed: &SignedTerms, now_ms: u64) -> Result<Amount, AbortReason> {
        let t = &signed.terms;
        if t.cap.is_zero() {
            return Err(AbortReason::InvalidAmount);
        }
        if t.coin_ids.is_empty() {
            return Err(AbortReason::InsufficientFunds);
        }
        if t.coin_ids.len() > self.limits.coin_inputs_max {
            return Err(AbortReason::TooManyCoins);
        }
        if t.payer_institution != self.id || host_of(t.contract) != self.id {
            return Err(AbortReason::WrongIssuer);
        }
        if t.merchant_institution.0 >= self.institutions {
            return Err(AbortReason::WrongIssuer);
        }
        if t.merchant == t.payer {
            return Err(AbortReason::PayeeMismatch);
        }
        if now_ms > t.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        let total = self.check_spendable(t.payer, &t.payer_key, &t.coin_ids, || {
            signed.verify().is_ok()
        })?;
        if total < t.cap {
            return Err(AbortReason::InsufficientFunds);
        }
        Ok(total)
    }

    /// Routes an escrow message addressed to this institution.
    pub(super) fn on_escrow_message(
        &mut self,
        from: Address,
        saga: SagaId,
        message: EscrowMessage,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Escrow(escrow) = from else {
            metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                .increment(1);
            return;
        };
        match message {
            EscrowMessage::Freeze(signed) => self.on_freeze(escrow, saga, signed, now_ms, out),
            EscrowMessage::Unfreeze { .. } => self.on_unfreeze(escrow, saga, out),
            EscrowMessage::Settle {
                seq,
                settlement,
                decided_at_ms,
            } => self.on_settle(escrow, saga, seq, settlement, decided_at_ms, now_ms, out),
            EscrowMessage::Payout {
                amount,
                merchant,
                from,
                decided_at_ms,
                payer,
            } => {
                let record = Movement {
                    saga,
                    kind: RecordKind::EscrowClaim,
                    payer,
                    payee: merchant,
                    amount,
                    at_ms: decided_at_ms,
                };
                self.on_payout(escrow, saga, amount, merchant, from, record, now_ms, out)
            }
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    fn on_freeze(
        &mut self,
        escrow: u64,
        saga: SagaId,
        signed: SignedTerms,
        now_ms: u64,
        out: &mut Out,
    ) {
        let to = Address::Escrow(escrow);
        let t = &signed.terms;
        if t.contract != escrow || t.saga_id != saga {
            // Only the escrow the payer named may freeze the payer's coins.
            self.escrow_send(
                saga,
                to,
                EscrowMessage::FreezeReply(Err(AbortReason::WrongParty)),
                out,
            );
            return;
        }
        let digest = signed.digest();
        if let Some(h) = self.escrows.holds.get(&escrow) {
            let answer = match (h.digest, h.state) {
                (None, _) | (_, HoldState::Unfrozen) => Err(AbortReason::SagaAborted),
                (Some(d), _) if d != digest => Err(AbortReason::Conflict),
                (_, HoldState::Frozen) => Ok(h.deposit),
                (_, HoldState::Refused(reason)) => Err(reason),
            };
            self.escrow_send(saga, to, EscrowMessage::FreezeReply(answer), out);
            return;
        }
        let event = match self.check_freeze(&signed, now_ms) {
            Ok(total) => EscrowIssuerEvent::Frozen {
                escrow,
                saga,
                digest,
                coin_ids: t.coin_ids.clone(),
                total,
                payer: t.payer,
                payer_key: t.payer_key,
            },
            Err(reason) => EscrowIssuerEvent::FreezeRefused {
                escrow,
                saga,
                digest,
                payer: t.payer,
                payer_key: t.payer_key,
                reason,
            },
        };
        let answer = match &event {
            EscrowIssuerEvent::Frozen { total, .. } => Ok(*total),
            EscrowIssuerEvent::FreezeRefused { reason, .. } => Err(*reason),
            _ => unreachable!("built above"),
        };
        self.record(InstitutionEvent::Escrow(event), out);
        self.escrow_send(saga, to, EscrowMessage::FreezeReply(answer), out);
    }

    fn on_unfreeze(&mut self, escrow: u64, saga: SagaId, out: &mut Out) {
        match self.escrows.holds.get(&escrow) {
            Some(h) if h.state == HoldState::Frozen && !h.applied.is_empty() => {
                // An escrow never abandons a deposit it opened; refuse loudly.
                metrics::counter!("specie_protocol_violations_total", "what" => "unfreeze_after_settlement").increment(1);
                return;
            }
            Some(h) if h.state == HoldState::Frozen => self.record(
                InstitutionEvent::Escrow(EscrowIssuerEvent::Unfrozen { escrow, saga }),
                out,
            ),
            Some(_) => {}
            // No freeze yet: leave a tombstone so a late freeze is refused.
            None => self.record(
                InstitutionEvent::Escrow(EscrowIssuerEvent::Unfrozen { escrow, saga }),
                out,
            ),
        }
        self.escrow_send(
            saga,
            Address::Escrow(escrow),
            EscrowMessage::UnfreezeReply,
            out,
        );
    }

    /// Applies settlement `seq` in its turn, and makes this institution's transaction record
    /// of it: a claim paid out of the escrow, or the refund of what remained.
    #[allow(clippy::too_many_arguments)] // one per field of the settle request
    fn on_settle(
        &mut self,
        escrow: u64,
        saga: SagaId,
        seq: u32,
        settlement: Settlement,
        decided_at_ms: u64,
        now_ms: u64,
        out: &mut Out,
    ) {
        let to = Address::Escrow(escrow);
        let reply = |inst: &Self, result: Result<(), AbortReason>, out: &mut Out| {
            inst.escrow_send(saga, to, EscrowMessage::SettleReply { seq, result }, out);
        };
        let Some(h) = self
            .escrows
            .holds
            .get(&escrow)
            .filter(|h| h.state == HoldState::Frozen)
        else {
            reply(self, Err(AbortReason::EscrowNotOpen), out);
            return;
        };
        let applied = h.applied.len();
        if seq == 0 || seq as usize <= applied {
            // A repeat: the recorded answer, or a conflict if the content differs.
            let recorded = seq.checked_sub(1).and_then(|i| h.applied.get(i as usize));
            let same = recorded.is_some_and(|r| r.saga == saga && r.settlement == settlement);
            reply(
                self,
                if same {
                    Ok(())
                } else {
                    Err(AbortReason::Conflict)
                },
                out,
            );
            return;
        }
        if seq as usize != applied + 1 {
            return; // ahead of its turn: the escrow sends settlements in order and will resend
        }
        let frozen = Amount::sum(h.frozen.iter().map(|id| self.register[id].coin.value()))
            .expect("supply fits u64");
        let (payer, payer_key) = (h.payer, h.payer_key);
        let nonce = self.next_nonce;
        let movement = match settlement {
            Settlement::Claim {
                amount, merchant, ..
            } => Movement {
                saga,
                kind: RecordKind::EscrowClaim,
                payer,
                payee: merchant,
                amount,
                at_ms: decided_at_ms,
            },
            Settlement::Refund => Movement {
                saga,
                kind: RecordKind::EscrowRefund,
                payer,
                payee: payer,
                amount: frozen,
                at_ms: decided_at_ms,
            },
        };
        let (remainder, issued) = match settlement {
            Settlement::Claim {
                amount,
                merchant,
                merchant_institution,
            } => {
                if amount.is_zero() || amount > frozen {
                    // The escrow never settles more than remains; refuse loudly.
                    metrics::counter!("specie_protocol_violations_total", "what" => "settle_above_frozen").increment(1);
                    reply(self, Err(AbortReason::CapExceeded), out);
                    return;
                }
                let rest = frozen.checked_sub(amount).expect("checked above");
                let remainder =
                    (!rest.is_zero()).then(|| self.issue(payer_key, rest, saga, nonce, now_ms));
                let issued = if merchant_institution == self.id {
                    let Some(account) = self.accounts.get(&merchant) else {
                        metrics::counter!("specie_protocol_violations_total", "what" => "settle_unknown_merchant").increment(1);
                        reply(self, Err(AbortReason::UnknownWallet), out);
                        return;
                    };
                    Some(self.issue(account.key, amount, saga, nonce + 1, now_ms))
                } else {
                    None
                };
                (remainder, issued)
            }
            Settlement::Refund => (
                None,
                (!frozen.is_zero()).then(|| self.issue(payer_key, frozen, saga, nonce, now_ms)),
            ),
        };
        self.record(
            InstitutionEvent::Escrow(EscrowIssuerEvent::Settled {
                escrow,
                seq,
                saga,
                settlement,
                remainder,
                issued: issued.clone(),
            }),
            out,
        );
        // A refund of nothing moves nothing: no record.
        if !movement.amount.is_zero() {
            movement.emit(self.id, out);
        }
        if let Some(coin) = issued {
            let owner = match settlement {
                Settlement::Claim { merchant, .. } => merchant,
                Settlement::Refund => payer,
            };
            out.send(self.envelope(saga, Address::Wallet(owner), 0, Payload::CoinIssued(coin)));
        }
        reply(self, Ok(()), out);
    }

    #[allow(clippy::too_many_arguments)] // one per field of the payout request
    fn on_payout(
        &mut self,
        escrow: u64,
        saga: SagaId,
        amount: Amount,
        merchant: WalletId,
        from: InstitutionId,
        record: Movement,
        now_ms: u64,
        out: &mut Out,
    ) {
        let to = Address::Escrow(escrow);
        if let Some(p) = self.escrows.payouts.get(&saga) {
            if p.escrow != escrow || p.from != from || p.merchant != merchant || p.amount != amount
            {
                self.escrow_send(
                    saga,
                    to,
                    EscrowMessage::PayoutReply(Err(AbortReason::Conflict)),
                    out,
                );
            } else if p.backed {
                self.escrow_send(saga, to, EscrowMessage::PayoutReply(Ok(())), out);
            } else {
                self.pull_payout_backing(saga, from, amount, out);
            }
            return;
        }
        // Only an escrow hosted at the paying issuer may pay out of that issuer's backing.
        let refusal = if host_of(escrow) != from || from == self.id || from.0 >= self.institutions {
            Some(AbortReason::WrongIssuer)
        } else if amount.is_zero() {
            Some(AbortReason::InvalidAmount)
        } else {
            None
        };
        let account = self.accounts.get(&merchant);
        let (Some(account), None) = (account, refusal) else {
            let reason = refusal.unwrap_or(AbortReason::UnknownWallet);
            metrics::counter!("specie_protocol_violations_total", "what" => "payout_refused")
                .increment(1);
            self.escrow_send(saga, to, EscrowMessage::PayoutReply(Err(reason)), out);
            return;
        };
        let coin = self.issue(account.key, amount, saga, self.next_nonce, now_ms);
        self.record(
            InstitutionEvent::Escrow(EscrowIssuerEvent::PayoutIssued {
                saga,
                escrow,
                from,
                merchant,
                coin: coin.clone(),
            }),
            out,
        );
        // The merchant's institution's record of the claim (the issuer makes its own when it
        // applies the settlement).
        record.emit(self.id, out);
        out.send(self.envelope(
            saga,
            Address::Wallet(merchant),
            0,
            Payload::CoinIssued(coin),
        ));
        self.pull_payout_backing(saga, from, amount, out);
    }

    fn pull_payout_backing(
        &self,
        saga: SagaId,
        from: InstitutionId,
        amount: Amount,
        out: &mut Out,
    ) {
        out.send(self.envelope(
            saga,
            Address::CentralBank,
            0,
            Payload::MoveBacking {
                from,
                to: self.id,
                amount,
            },
        ));
    }

    /// Whether a central bank answer for `saga` is about a payout made here.
    pub(super) fn is_payout(&self, saga: &SagaId) -> bool {
        self.escrows.payouts.contains_key(saga)
    }

    /// The central bank moved (or refused to move) a payout's backing.
    pub(super) fn on_payout_backing(
        &mut self,
        saga: SagaId,
        ack: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let Some(p) = self.escrows.payouts.get(&saga) else {
            return;
        };
        match ack {
            Ok(()) if !p.backed => {
                let escrow = p.escrow;
                self.record(
                    InstitutionEvent::Escrow(EscrowIssuerEvent::PayoutBacked { saga }),
                    out,
                );
                self.escrow_send(
                    saga,
                    Address::Escrow(escrow),
                    EscrowMessage::PayoutReply(Ok(())),
                    out,
                );
            }
            Ok(()) => {}
            Err(reason) => {
                metrics::counter!("specie_protocol_violations_total", "what" => "backing_refused")
                    .increment(1);
                eprintln!(
                    "{}: central bank refused backing move of payout {saga}: {reason}",
                    self.id
                );
            }
        }
    }

    /// Wakes the escrows that hold frozen coins here, so that after a process restart their
    /// actors start again (from their journals) and re-arm their expiry.
    pub(super) fn wake_escrows(&self, out: &mut Out) {
        let mut open: Vec<u64> = self
            .escrows
            .holds
            .iter()
            .filter(|(_, h)| h.state == HoldState::Frozen && !h.frozen.is_empty())
            .map(|(id, _)| *id)
            .collect();
        open.sort_unstable();
        for escrow in open {
            out.send(self.envelope(
                SagaId::NONE,
                Address::Escrow(escrow),
                0,
                Payload::StatusQuery,
            ));
        }
    }

    /// Applies an escrow event (called from `apply`).
    pub(super) fn apply_escrow(&mut self, event: &EscrowIssuerEvent) {
        match event {
            EscrowIssuerEvent::Frozen {
                escrow,
                saga,
                digest,
                coin_ids,
                total,
                payer,
                payer_key,
            } => {
                for id in coin_ids {
                    self.set_state(id, CoinState::Frozen(*escrow));
                    // A frozen coin is the escrow's, not the wallet's: no more redelivery.
                    self.undelivered.remove(id);
                }
                self.escrows.holds.insert(
                    *escrow,
                    Hold {
                        saga: *saga,
                        digest: Some(*digest),
                        payer: *payer,
                        payer_key: *payer_key,
                        state: HoldState::Frozen,
                        frozen: coin_ids.clone(),
                        deposit: *total,
                        applied: Vec::new(),
                        claimed: Amount::ZERO,
                        refunded: Amount::ZERO,
                    },
                );
            }
            EscrowIssuerEvent::FreezeRefused {
                escrow,
                saga,
                digest,
                payer,
                payer_key,
                reason,
            } => {
                self.escrows.holds.insert(
                    *escrow,
                    Hold {
                        saga: *saga,
                        digest: Some(*digest),
                        payer: *payer,
                        payer_key: *payer_key,
                        state: HoldState::Refused(*reason),
                        frozen: Vec::new(),
                        deposit: Amount::ZERO,
                        applied: Vec::new(),
                        claimed: Amount::ZERO,
                        refunded: Amount::ZERO,
                    },
                );
            }
            EscrowIssuerEvent::Unfrozen { escrow, saga } => {
                match self.escrows.holds.get_mut(escrow) {
                    Some(h) => {
                        let coins = std::mem::take(&mut h.frozen);
                        h.state = HoldState::Unfrozen;
                        h.deposit = Amount::ZERO;
                        for id in &coins {
                            self.set_state(id, CoinState::Active);
                        }
                    }
                    None => {
                        self.escrows.holds.insert(
                            *escrow,
                            Hold {
                                saga: *saga,
                                digest: None,
                                payer: WalletId(0),
                                payer_key: PublicKey([0; 32]),
                                state: HoldState::Unfrozen,
                                frozen: Vec::new(),
                                deposit: Amount::ZERO,
                                applied: Vec::new(),
                                claimed: Amount::ZERO,
                                refunded: Amount::ZERO,
                            },
                        );
                    }
                }
            }
            EscrowIssuerEvent::Settled {
                escrow,
                seq,
                saga,
                settlement,
                remainder,
                issued,
            } => {
                let h = self
                    .escrows
                    .holds
                    .get_mut(escrow)
                    .expect("settled escrows are held");
                assert_eq!(
                    *seq as usize,
                    h.applied.len() + 1,
                    "settlements apply in sequence"
                );
                let retired = std::mem::take(&mut h.frozen);
                match settlement {
                    Settlement::Claim { amount, .. } => {
                        h.claimed = h
                            .claimed
                            .checked_add(*amount)
                            .expect("claims fit the deposit");
                    }
                    Settlement::Refund => {
                        let refund = issued.as_ref().map_or(Amount::ZERO, Coin::value);
                        h.refunded = h
                            .refunded
                            .checked_add(refund)
                            .expect("refunds fit the deposit");
                    }
                }
                h.frozen = remainder.iter().map(|c| c.id).collect();
                h.applied.push(AppliedSettlement {
                    saga: *saga,
                    settlement: *settlement,
                    retired: retired.clone(),
                });
                for id in &retired {
                    self.set_state(id, CoinState::Spent(*saga));
                }
                if let Some(coin) = remainder {
                    self.register_coin(coin);
                    self.set_state(&coin.id, CoinState::Frozen(*escrow));
                    self.undelivered.remove(&coin.id);
                }
                if let Some(coin) = issued {
                    self.register_coin(coin);
                }
            }
            EscrowIssuerEvent::PayoutIssued {
                saga,
                escrow,
                from,
                merchant,
                coin,
            } => {
                self.register_coin(coin);
                self.escrows.payouts.insert(
                    *saga,
                    Payout {
                        escrow: *escrow,
                        from: *from,
                        merchant: *merchant,
                        amount: coin.value(),
                        coin: coin.id,
                        backed: false,
                    },
                );
            }
            EscrowIssuerEvent::PayoutBacked { saga } => {
                if let Some(p) = self.escrows.payouts.get_mut(saga) {
                    p.backed = true;
                }
            }
        }
    }
}
