//! The escrow contract's rules: the deposit contract (freeze the payer's coins at their issuer
//! for a merchant, with a cap and an expiry), the verification contract
//! ([`Escrow::verify_claim`]: amount within what remains, right merchant, not expired, claim id
//! not seen before), payouts, and the refund of what remains on release or expiry.
//!
//! ```text
//!   Open ──► Freezing ──FreezeReply ok──► Open ──claims──► Open ──cap reached──► Closing ──► Closed
//!               │                           │                    release / expiry ──┘   (fully claimed,
//!               ├──FreezeReply refused──► Refused                                      released, expired)
//!               └──timeout──► Unfreezing ──UnfreezeReply──► Refused
//! ```
//!
//! A claim is decided here, when it passes the verification contract: its amount leaves what
//! remains at once (so concurrent claims can never sum above the cap), and the decision is
//! durable before anything is sent. Decided claims and the final refund become *settlements*
//! that the issuer applies one after another, in sequence: each retires the frozen coins and
//! re-freezes what remains as one new coin (choice documented in the README: the frozen value
//! is always exactly the coins in state `Frozen(escrow)` at the issuer, so the register alone
//! shows what an escrow holds). A claim for a merchant at another institution is then paid out
//! by that institution, which also pulls the backing from the issuer.
//!
//! Before the deposit is frozen a timeout abandons it (and unfreezes whatever the issuer may
//! have frozen); after a decision every step is retried until acknowledged. Every request is
//! keyed by its saga id: a repeat gets the recorded answer, another request under the same id
//! is a conflict. Each claim resolves exactly once, and a claim, release or expiry after the
//! escrow closed is refused with why it closed (`already_claimed`, `already_released`,
//! `expired`).

use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::sha256;
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::escrow::{
    host_of, EscrowMessage, EscrowResult, EscrowStep, Settlement, SignedTerms,
};
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Envelope, InstitutionId, Payload, SagaId, SagaKind, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of an escrow, from the validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowLimits {
    /// Abandon a deposit whose freeze is unanswered for this long.
    pub saga_timeout_ms: u64,
    /// First retry interval of an unacknowledged step.
    pub retry_interval_ms: u64,
    /// Retry backoff cap.
    pub retry_interval_max_ms: u64,
}

/// The longest an escrow may stay open: 30 days. Bounds how long coins can be frozen.
pub const ESCROW_TTL_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
/// The most requests (claims and releases, refused ones included) one contract records.
/// Beyond it new requests are refused `busy`; repeats still get their recorded answers.
pub const ESCROW_REQUESTS_MAX: usize = 4096;

/// How an escrow closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Closure {
    /// The merchant claimed the whole cap (any rest of the deposit is refunded).
    FullyClaimed,
    /// The payer released it.
    Released,
    /// It expired.
    Expired,
}

impl Closure {
    /// The refusal of a claim or release that comes after this closure.
    pub fn refusal(self) -> AbortReason {
        match self {
            Closure::FullyClaimed => AbortReason::AlreadyClaimed,
            Closure::Released => AbortReason::AlreadyReleased,
            Closure::Expired => AbortReason::Expired,
        }
    }
}

/// Where an escrow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowStatus {
    /// No deposit yet.
    Empty,
    /// The issuer was asked to freeze the deposit; no decision yet. A timeout abandons it.
    Freezing,
    /// Abandoned before it opened; waiting for the issuer to release any freeze.
    Unfreezing {
        /// Why it was abandoned.
        reason: AbortReason,
    },
    /// Terminal: the deposit never opened.
    Refused {
        /// Why.
        reason: AbortReason,
    },
    /// The deposit is frozen: claims are verified and paid.
    Open,
    /// Closed to new claims; decided settlements and payouts still running.
    Closing(Closure),
    /// Terminal.
    Closed(Closure),
}

impl EscrowStatus {
    /// Terminal: nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EscrowStatus::Empty | EscrowStatus::Refused { .. } | EscrowStatus::Closed(_)
        )
    }
}

/// Whether a claim's payout (by the merchant's institution) is needed and done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayoutState {
    /// The merchant banks at the issuer: the settlement paid it.
    NotNeeded,
    /// Waiting for the settlement, then for the merchant's institution.
    Pending,
    /// The merchant's institution issued the coin and moved the backing.
    Done,
}

/// A decided claim or refund, in settlement order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    /// The step's saga: the claim's request, the release's request, or the closure's own.
    pub saga: SagaId,
    /// What the issuer does.
    pub settlement: Settlement,
    /// Payout by the merchant's institution.
    pub payout: PayoutState,
    /// When the escrow decided it: the time of its transaction records.
    pub decided_ms: u64,
}

/// What a recorded request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// A merchant's claim.
    Claim {
        /// The merchant's claim number.
        claim_id: u64,
        /// How much.
        amount: Amount,
        /// The merchant's institution as the claim named it.
        merchant_institution: InstitutionId,
    },
    /// The payer's release.
    Release,
}

/// A claim or release as recorded, with its answer once it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Request {
    from: Address,
    kind: RequestKind,
    /// The settlement that completes it (accepted requests).
    seq: Option<u32>,
    /// The answer, once there is one.
    answer: Option<Result<(), AbortReason>>,
}

/// The contract, once a deposit was offered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contract {
    signed: SignedTerms,
    digest: [u8; 32],
    opened_ms: u64,
    /// Value frozen (zero until the issuer froze it).
    deposit: Amount,
    /// Decided claims' total.
    claimed: Amount,
    /// Refunded (once the refund is settled).
    refunded: Amount,
    /// The closure's refund saga, once closing.
    close_saga: Option<SagaId>,
}

/// Journaled facts of an escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowEvent {
    /// The payer offered a deposit; the issuer is asked to freeze it.
    Opened {
        /// The payer's signed terms.
        signed: SignedTerms,
        /// When.
        at_ms: u64,
    },
    /// The issuer froze the deposit: the escrow is open.
    Frozen {
        /// Value frozen.
        deposit: Amount,
    },
    /// The deposit failed before it opened; `unfreeze` when the issuer may hold a freeze.
    DepositFailed {
        /// Why.
        reason: AbortReason,
        /// Whether to ask the issuer to release a freeze.
        unfreeze: bool,
    },
    /// The issuer released the abandoned deposit.
    Unfrozen,
    /// A claim passed the verification contract: decided, and queued for settlement.
    ClaimDecided {
        /// The claim's request saga.
        saga: SagaId,
        /// Who asked (the merchant).
        from: Address,
        /// The merchant's claim number.
        claim_id: u64,
        /// How much.
        amount: Amount,
        /// When.
        at_ms: u64,
    },
    /// A claim or release was refused (recorded so a repeat gets the same answer).
    Refused {
        /// The request saga.
        saga: SagaId,
        /// Who asked.
        from: Address,
        /// What.
        kind: RequestKind,
        /// Why.
        reason: AbortReason,
    },
    /// The escrow closed to claims; what remains is to be refunded under `saga`.
    CloseDecided {
        /// How.
        how: Closure,
        /// The refund's saga (a release's request saga, or the closure's own).
        saga: SagaId,
        /// The payer's release request, when released.
        from: Option<Address>,
        /// When.
        at_ms: u64,
    },
    /// The issuer applied settlement `seq`.
    Settled {
        /// The settlement.
        seq: u32,
    },
    /// The merchant's institution paid out the claim of `saga`.
    PaidOut {
        /// The claim's saga.
        saga: SagaId,
    },
    /// Closing, and every settlement and payout is done: the escrow is closed.
    Closed,
}

/// Timers of an escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscrowTimer {
    /// Abandon the deposit if it is still freezing.
    FreezeTimeout,
    /// Resend every unacknowledged step.
    Retry {
        /// Retries so far (drives the backoff).
        attempt: u32,
    },
    /// The escrow's expiry instant (re-armed if it fires early).
    Expiry,
}

/// What audits and reports read of an escrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowSnapshot {
    /// The contract id.
    pub id: u64,
    /// The deposit saga, when a deposit was offered.
    pub deposit_saga: Option<SagaId>,
    /// Where it stands.
    pub status: EscrowStatus,
    /// The payer.
    pub payer: Option<WalletId>,
    /// The merchant.
    pub merchant: Option<WalletId>,
    /// The cap on claims.
    pub cap: Amount,
    /// Value frozen at the deposit.
    pub deposit: Amount,
    /// Claims decided.
    pub claimed: Amount,
    /// Refunded.
    pub refunded: Amount,
    /// Settlements in sequence, with whether the issuer applied each.
    pub settlements: Vec<(SettlementRecord, bool)>,
    /// Steps decided but not yet acknowledged (freeze, unfreeze, settlements, payouts).
    pub in_flight: bool,
}

/// An escrow contract's state.
pub struct Escrow {
    id: u64,
    institution: InstitutionId,
    limits: Arc<EscrowLimits>,
    status: EscrowStatus,
    contract: Option<Contract>,
    /// Every request by its saga id.
    requests: HashMap<SagaId, Request>,
    /// Accepted claims by claim number.
    claim_ids: HashMap<u64, SagaId>,
    /// Decided settlements; settlement `seq` is at `seq - 1`.
    settlements: Vec<SettlementRecord>,
    /// Settlements the issuer acknowledged (a prefix of `settlements`).
    settled: u32,
    /// A retry loop is armed (not state: re-armed by `on_start`).
    retry_armed: bool,
}

impl std::fmt::Debug for Escrow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escrow")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

type Out = Effects<EscrowEvent, EscrowTimer>;

/// The saga under which a closure that no request asked for (expiry, cap reached) refunds.
pub fn closure_saga(contract: u64, how: Closure) -> SagaId {
    let mut input = b"specie/v1/escrow-closure".to_vec();
    input.extend_from_slice(&contract.to_be_bytes());
    input.push(match how {
        Closure::FullyClaimed => 1,
        Closure::Released => 2,
        Closure::Expired => 3,
    });
    let digest = sha256(&input);
    SagaId(digest[..16].try_into().expect("16 bytes"))
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    status: EscrowStatus,
    contract: Option<Contract>,
    requests: HashMap<SagaId, Request>,
    claim_ids: HashMap<u64, SagaId>,
    settlements: Vec<SettlementRecord>,
    settled: u32,
}

impl Escrow {
    /// The escrow contract `id`, hosted by the institution its id names.
    pub fn new(id: u64, limits: Arc<EscrowLimits>) -> Escrow {
        Escrow {
            id,
            institution: host_of(id),
            limits,
            status: EscrowStatus::Empty,
            contract: None,
            requests: HashMap::new(),
            claim_ids: HashMap::new(),
            settlements: Vec::new(),
            settled: 0,
            retry_armed: false,
        }
    }

    /// Where the escrow stands.
    pub fn status(&self) -> EscrowStatus {
        self.status
    }

    fn envelope(
        &self,
        saga: SagaId,
        to: Address,
        attempt: u32,
        message: EscrowMessage,
    ) -> Envelope {
        Envelope {
            message_id: 0,
            saga_id: saga,
            from: Address::Escrow(self.id),
            to,
            attempt,
            trace: None,
            payload: Payload::Escrow(message),
        }
    }

    fn issuer(&self) -> Address {
        Address::Institution(self.institution)
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.min(16);
        self.limits
            .retry_interval_ms
            .saturating_mul(factor)
            .min(self.limits.retry_interval_max_ms)
    }

    /// What the merchant may still claim.
    pub fn remaining(&self) -> Amount {
        self.contract.as_ref().map_or(Amount::ZERO, |c| {
            c.signed
                .terms
                .cap
                .checked_sub(c.claimed)
                .expect("claims never exceed the cap")
        })
    }

    fn result(
        &self,
        saga: SagaId,
        to: Address,
        step: EscrowStep,
        result: Result<(), AbortReason>,
        amount: Amount,
        out: &mut Out,
    ) {
        let message = EscrowMessage::Result(EscrowResult {
            step,
            result,
            amount,
            remaining: self.remaining(),
        });
        out.send(self.envelope(saga, to, 0, message));
    }

    fn arm_retry(&mut self, out: &mut Out) {
        if !self.retry_armed && self.outstanding() {
            self.retry_armed = true;
            out.timer(self.backoff_ms(0), EscrowTimer::Retry { attempt: 1 });
        }
    }

    /// Whether every decided settlement is acknowledged (none is on its way to the issuer).
    fn idle(&self) -> bool {
        self.settled as usize == self.settlements.len()
    }

    /// Whether any decided step waits for an acknowledgement.
    fn outstanding(&self) -> bool {
        matches!(
            self.status,
            EscrowStatus::Freezing | EscrowStatus::Unfreezing { .. }
        ) || (self.settled as usize) < self.settlements.len()
            || self
                .settlements
                .iter()
                .any(|s| s.payout == PayoutState::Pending)
    }

    // ----- the deposit contract -----

    fn on_open(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedTerms,
        now_ms: u64,
        out: &mut Out,
    ) {
        let reply = |e: &Self, r: Result<(), AbortReason>, amount: Amount, out: &mut Out| {
            e.result(saga, from, EscrowStep::Deposit, r, amount, out);
        };
        if let Some(c) = &self.contract {
            if c.digest != signed.digest() {
                return reply(self, Err(AbortReason::Conflict), Amount::ZERO, out);
            }
            // A repeat: the recorded outcome, once there is one.
            match self.status {
                EscrowStatus::Refused { reason } => reply(self, Err(reason), Amount::ZERO, out),
                EscrowStatus::Open | EscrowStatus::Closing(_) | EscrowStatus::Closed(_) => {
                    reply(self, Ok(()), c.deposit, out)
                }
                EscrowStatus::Empty | EscrowStatus::Freezing | EscrowStatus::Unfreezing { .. } => {}
            }
            return;
        }
        let t = &signed.terms;
        let refusal =
            if t.contract != self.id || t.saga_id != saga || from != Address::Wallet(t.payer) {
                Some(AbortReason::WrongParty)
            } else if t.payer_institution != self.institution {
                Some(AbortReason::WrongIssuer)
            } else if t.cap.is_zero() {
                Some(AbortReason::InvalidAmount)
            } else if t.merchant == t.payer {
                Some(AbortReason::PayeeMismatch)
            } else if now_ms >= t.expires_at_ms || t.expires_at_ms - now_ms > ESCROW_TTL_MAX_MS {
                Some(AbortReason::Expired)
            } else {
                None
            };
        if let Some(reason) = refusal {
            // Refused before anything started: the contract stays empty for a valid deposit.
            return reply(self, Err(reason), Amount::ZERO, out);
        }
        self.record(
            EscrowEvent::Opened {
                signed: signed.clone(),
                at_ms: now_ms,
            },
            out,
        );
        out.send(self.envelope(saga, self.issuer(), 0, EscrowMessage::Freeze(signed)));
        out.timer(self.limits.saga_timeout_ms, EscrowTimer::FreezeTimeout);
        self.arm_retry(out);
    }

    fn deposit_saga(&self) -> SagaId {
        self.contract
            .as_ref()
            .map_or(SagaId::NONE, |c| c.signed.terms.saga_id)
    }

    /// The payer's wallet (a claim's payout names it for the transaction record).
    fn payer_wallet(&self) -> WalletId {
        self.contract
            .as_ref()
            .map_or(WalletId(0), |c| c.signed.terms.payer)
    }

    fn payer(&self) -> Address {
        self.contract.as_ref().map_or(Address::External(0), |c| {
            Address::Wallet(c.signed.terms.payer)
        })
    }

    fn on_freeze_reply(&mut self, reply: Result<Amount, AbortReason>, now_ms: u64, out: &mut Out) {
        if self.status != EscrowStatus::Freezing {
            return; // late or duplicate: the decision is taken
        }
        let c = self
            .contract
            .as_ref()
            .expect("freezing escrows have a contract");
        let (saga, payer, cap, expires_at_ms) = (
            c.signed.terms.saga_id,
            self.payer(),
            c.signed.terms.cap,
            c.signed.terms.expires_at_ms,
        );
        match reply {
            Ok(deposit) if deposit >= cap => {
                self.record(EscrowEvent::Frozen { deposit }, out);
                out.timer(expires_at_ms.saturating_sub(now_ms), EscrowTimer::Expiry);
                self.result(saga, payer, EscrowStep::Deposit, Ok(()), deposit, out);
            }
            Ok(_) => {
                // The issuer froze less than the cap: never open on it.
                metrics::counter!("specie_protocol_violations_total", "what" => "short_freeze")
                    .increment(1);
                self.fail_deposit(AbortReason::InsufficientFunds, true, out);
            }
            Err(reason) => self.fail_deposit(reason, false, out),
        }
    }

    fn fail_deposit(&mut self, reason: AbortReason, unfreeze: bool, out: &mut Out) {
        let (saga, payer) = (self.deposit_saga(), self.payer());
        self.record(EscrowEvent::DepositFailed { reason, unfreeze }, out);
        if unfreeze {
            out.send(self.envelope(saga, self.issuer(), 0, EscrowMessage::Unfreeze { reason }));
            self.arm_retry(out);
        }
        self.result(
            saga,
            payer,
            EscrowStep::Deposit,
            Err(reason),
            Amount::ZERO,
            out,
        );
    }

    // ----- the verification contract -----

    /// The rule for "may this claim be paid?": everything the verification contract checks, in
    /// order. Changes nothing.
    pub fn verify_claim(
        &self,
        from: Address,
        claim_id: u64,
        amount: Amount,
        merchant_institution: InstitutionId,
        now_ms: u64,
    ) -> Result<(), AbortReason> {
        let Some(c) = &self.contract else {
            return Err(AbortReason::EscrowNotOpen);
        };
        match self.status {
            EscrowStatus::Open => {}
            EscrowStatus::Closing(how) | EscrowStatus::Closed(how) => return Err(how.refusal()),
            EscrowStatus::Empty
            | EscrowStatus::Freezing
            | EscrowStatus::Unfreezing { .. }
            | EscrowStatus::Refused { .. } => return Err(AbortReason::EscrowNotOpen),
        }
        let t = &c.signed.terms;
        if from != Address::Wallet(t.merchant) {
            return Err(AbortReason::WrongParty);
        }
        if merchant_institution != t.merchant_institution {
            return Err(AbortReason::PayeeMismatch);
        }
        if amount.is_zero() {
            return Err(AbortReason::InvalidAmount);
        }
        if now_ms >= t.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        if self.claim_ids.contains_key(&claim_id) {
            return Err(AbortReason::AlreadyClaimed);
        }
        if amount > self.remaining() {
            return Err(AbortReason::CapExceeded);
        }
        Ok(())
    }

    /// A repeat of a recorded request: its answer, or a conflict when the content differs.
    /// `None` when the request is new.
    fn repeat(
        &self,
        saga: SagaId,
        from: Address,
        kind: RequestKind,
    ) -> Option<Option<Result<(), AbortReason>>> {
        let r = self.requests.get(&saga)?;
        Some(if r.from != from || r.kind != kind {
            Some(Err(AbortReason::Conflict))
        } else {
            r.answer
        })
    }

    fn on_claim(
        &mut self,
        from: Address,
        saga: SagaId,
        kind: RequestKind,
        now_ms: u64,
        out: &mut Out,
    ) {
        let RequestKind::Claim {
            claim_id,
            amount,
            merchant_institution,
        } = kind
        else {
            unreachable!("on_claim takes a claim")
        };
        if let Some(answer) = self.repeat(saga, from, kind) {
            if let Some(result) = answer {
                let paid = if result.is_ok() { amount } else { Amount::ZERO };
                self.result(saga, from, EscrowStep::Claim, result, paid, out);
            }
            return;
        }
        if self.requests.len() >= ESCROW_REQUESTS_MAX {
            return self.result(
                saga,
                from,
                EscrowStep::Claim,
                Err(AbortReason::Busy),
                Amount::ZERO,
                out,
            );
        }
        let idle = self.idle();
        self.expire_if_due(now_ms, out);
        match self.verify_claim(from, claim_id, amount, merchant_institution, now_ms) {
            Ok(()) => {
                self.record(
                    EscrowEvent::ClaimDecided {
                        saga,
                        from,
                        claim_id,
                        amount,
                        at_ms: now_ms,
                    },
                    out,
                );
                self.ledger_decided(out);
                if self.remaining().is_zero() {
                    self.close(Closure::FullyClaimed, None, now_ms, out);
                }
            }
            Err(reason) => {
                self.record(
                    EscrowEvent::Refused {
                        saga,
                        from,
                        kind,
                        reason,
                    },
                    out,
                );
                self.result(
                    saga,
                    from,
                    EscrowStep::Claim,
                    Err(reason),
                    Amount::ZERO,
                    out,
                );
            }
        }
        self.drive(idle, out);
    }

    /// A request at or after the expiry instant expires the escrow first, even when its timer
    /// has not fired yet: the clock decides, not the timer's punctuality.
    fn expire_if_due(&mut self, now_ms: u64, out: &mut Out) {
        let due = self
            .contract
            .as_ref()
            .is_some_and(|c| now_ms >= c.signed.terms.expires_at_ms);
        if self.status == EscrowStatus::Open && due {
            self.close(Closure::Expired, None, now_ms, out);
        }
    }

    /// After a step that may have queued settlements: sends the first one if none was on its
    /// way (`idle` before the step), and keeps the retry loop armed.
    fn drive(&mut self, idle: bool, out: &mut Out) {
        if idle {
            self.send_next_settlement(0, out);
        }
        self.arm_retry(out);
    }

    fn on_release(&mut self, from: Address, saga: SagaId, now_ms: u64, out: &mut Out) {
        let kind = RequestKind::Release;
        if let Some(answer) = self.repeat(saga, from, kind) {
            if let Some(result) = answer {
                let refunded = self.contract.as_ref().map_or(Amount::ZERO, |c| c.refunded);
                let amount = if result.is_ok() {
                    refunded
                } else {
                    Amount::ZERO
                };
                self.result(saga, from, EscrowStep::Release, result, amount, out);
            }
            return;
        }
        if self.requests.len() >= ESCROW_REQUESTS_MAX {
            return self.result(
                saga,
                from,
                EscrowStep::Release,
                Err(AbortReason::Busy),
                Amount::ZERO,
                out,
            );
        }
        let idle = self.idle();
        self.expire_if_due(now_ms, out);
        let refusal = match (&self.contract, self.status) {
            (None, _) => Some(AbortReason::EscrowNotOpen),
            (Some(c), _) if from != Address::Wallet(c.signed.terms.payer) => {
                Some(AbortReason::WrongParty)
            }
            (_, EscrowStatus::Open) => None,
            (_, EscrowStatus::Closing(how) | EscrowStatus::Closed(how)) => Some(how.refusal()),
            (_, _) => Some(AbortReason::EscrowNotOpen),
        };
        match refusal {
            None => self.close(Closure::Released, Some((saga, from)), now_ms, out),
            Some(reason) => {
                self.record(
                    EscrowEvent::Refused {
                        saga,
                        from,
                        kind,
                        reason,
                    },
                    out,
                );
                self.result(
                    saga,
                    from,
                    EscrowStep::Release,
                    Err(reason),
                    Amount::ZERO,
                    out,
                );
            }
        }
        self.drive(idle, out);
    }

    /// Closes the escrow to claims and queues the refund of what remains.
    fn close(
        &mut self,
        how: Closure,
        request: Option<(SagaId, Address)>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let saga = request.map_or_else(|| closure_saga(self.id, how), |(saga, _)| saga);
        let settlements = self.settlements.len();
        self.record(
            EscrowEvent::CloseDecided {
                how,
                saga,
                from: request.map(|(_, from)| from),
                at_ms: now_ms,
            },
            out,
        );
        if self.settlements.len() > settlements {
            self.ledger_decided(out);
        }
        // Nothing left to refund (the whole deposit claimed): closed at once when settled.
        self.finish_closing(out);
    }

    /// The platform's copy of the transaction records of the settlement just decided (the
    /// last one queued), from the contract's own knowledge: a claim is recorded at the issuer
    /// of the frozen coins and, when the merchant banks elsewhere, at the merchant's
    /// institution too; a refund of what remained at the issuer.
    fn ledger_decided(&self, out: &mut Out) {
        let (Some(s), Some(c)) = (self.settlements.last(), &self.contract) else {
            return;
        };
        let payer = c.signed.terms.payer;
        match s.settlement {
            Settlement::Claim {
                amount,
                merchant,
                merchant_institution,
            } => {
                let movement = Movement {
                    saga: s.saga,
                    kind: RecordKind::EscrowClaim,
                    payer,
                    payee: merchant,
                    amount,
                    at_ms: s.decided_ms,
                };
                movement.emit(self.institution, out);
                if merchant_institution != self.institution {
                    movement.emit(merchant_institution, out);
                }
            }
            Settlement::Refund => {
                let left = c
                    .deposit
                    .checked_sub(c.claimed)
                    .expect("claims never exceed the deposit");
                Movement {
                    saga: s.saga,
                    kind: RecordKind::EscrowRefund,
                    payer,
                    payee: payer,
                    amount: left,
                    at_ms: s.decided_ms,
                }
                .emit(self.institution, out);
            }
        }
    }

    /// Sends the first settlement the issuer has not acknowledged, if any.
    fn send_next_settlement(&self, attempt: u32, out: &mut Out) {
        if let Some(s) = self.settlements.get(self.settled as usize) {
            let seq = self.settled + 1;
            let message = EscrowMessage::Settle {
                seq,
                settlement: s.settlement,
                decided_at_ms: s.decided_ms,
            };
            out.send(self.envelope(s.saga, self.issuer(), attempt, message));
        }
    }

    fn on_settle_reply(&mut self, seq: u32, result: Result<(), AbortReason>, out: &mut Out) {
        if seq != self.settled + 1 || seq as usize > self.settlements.len() {
            return; // late or duplicate
        }
        if let Err(reason) = result {
            // A decided settlement cannot be refused; keep retrying and say so.
            metrics::counter!("specie_protocol_violations_total", "what" => "settlement_refused")
                .increment(1);
            eprintln!(
                "escrow {}: issuer refused settlement {seq}: {reason}",
                self.id
            );
            return;
        }
        self.record(EscrowEvent::Settled { seq }, out);
        let s = self.settlements[seq as usize - 1].clone();
        match s.settlement {
            Settlement::Claim {
                amount,
                merchant,
                merchant_institution,
            } if s.payout == PayoutState::Pending => {
                let payout = EscrowMessage::Payout {
                    amount,
                    merchant,
                    from: self.institution,
                    decided_at_ms: s.decided_ms,
                    payer: self.payer_wallet(),
                };
                out.send(self.envelope(
                    s.saga,
                    Address::Institution(merchant_institution),
                    0,
                    payout,
                ));
            }
            _ => self.complete(s.saga, out),
        }
        self.send_next_settlement(0, out);
        self.finish_closing(out);
        self.arm_retry(out);
    }

    fn on_payout_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        result: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let Some(s) = self.settlements.iter().find(|s| s.saga == saga) else {
            return;
        };
        let Settlement::Claim {
            merchant_institution,
            ..
        } = s.settlement
        else {
            return;
        };
        if s.payout != PayoutState::Pending || from != Address::Institution(merchant_institution) {
            return;
        }
        if let Err(reason) = result {
            metrics::counter!("specie_protocol_violations_total", "what" => "payout_refused")
                .increment(1);
            eprintln!(
                "escrow {}: {from} refused the payout of claim {saga}: {reason}",
                self.id
            );
            return;
        }
        self.record(EscrowEvent::PaidOut { saga }, out);
        self.complete(saga, out);
        self.finish_closing(out);
    }

    /// A claim or refund is fully done: answer whoever asked.
    fn complete(&mut self, saga: SagaId, out: &mut Out) {
        if let Some(r) = self.requests.get(&saga) {
            let (from, kind) = (r.from, r.kind);
            match kind {
                RequestKind::Claim { amount, .. } => {
                    self.result(saga, from, EscrowStep::Claim, Ok(()), amount, out)
                }
                RequestKind::Release => {
                    let refunded = self.contract.as_ref().map_or(Amount::ZERO, |c| c.refunded);
                    self.result(saga, from, EscrowStep::Release, Ok(()), refunded, out)
                }
            }
        }
    }

    /// When closing and nothing is outstanding any more: closed. Tells the payer and the
    /// observers, whatever the closure.
    fn finish_closing(&mut self, out: &mut Out) {
        let EscrowStatus::Closing(how) = self.status else {
            return;
        };
        if self.outstanding() {
            return;
        }
        self.record(EscrowEvent::Closed, out);
        let c = self
            .contract
            .as_ref()
            .expect("closing escrows have a contract");
        let saga = c.close_saga.expect("closing escrows have a close saga");
        let refunded = c.refunded;
        let payer = self.payer();
        let (step, kind) = match how {
            Closure::Expired => (EscrowStep::Expiry, SagaKind::EscrowExpiry),
            Closure::Released | Closure::FullyClaimed => {
                (EscrowStep::Release, SagaKind::EscrowRelease)
            }
        };
        if how != Closure::Released {
            // The payer did not ask: tell it what came back.
            self.result(saga, payer, step, Ok(()), refunded, out);
        }
        out.notice(Notice {
            saga_id: saga,
            source: Address::Escrow(self.id),
            outcome: SagaOutcome {
                kind,
                result: Ok(()),
                spent_coin_ids: Vec::new(),
                decided_at_ms: 0,
            },
        });
    }

    fn on_retry(&mut self, attempt: u32, out: &mut Out) {
        self.retry_armed = false;
        if !self.outstanding() {
            return;
        }
        let saga = self.deposit_saga();
        match self.status {
            EscrowStatus::Freezing => {
                let signed = self.contract.as_ref().expect("freezing").signed.clone();
                out.send(self.envelope(
                    saga,
                    self.issuer(),
                    attempt,
                    EscrowMessage::Freeze(signed),
                ));
            }
            EscrowStatus::Unfreezing { reason } => {
                out.send(self.envelope(
                    saga,
                    self.issuer(),
                    attempt,
                    EscrowMessage::Unfreeze { reason },
                ));
            }
            _ => {}
        }
        self.send_next_settlement(attempt, out);
        for s in self.settlements[..self.settled as usize]
            .iter()
            .filter(|s| s.payout == PayoutState::Pending)
        {
            let Settlement::Claim {
                amount,
                merchant,
                merchant_institution,
            } = s.settlement
            else {
                continue;
            };
            let payout = EscrowMessage::Payout {
                amount,
                merchant,
                from: self.institution,
                decided_at_ms: s.decided_ms,
                payer: self.payer_wallet(),
            };
            out.send(self.envelope(
                s.saga,
                Address::Institution(merchant_institution),
                attempt,
                payout,
            ));
        }
        self.retry_armed = true;
        out.timer(
            self.backoff_ms(attempt),
            EscrowTimer::Retry {
                attempt: attempt + 1,
            },
        );
    }

    fn on_expiry(&mut self, now_ms: u64, out: &mut Out) {
        if self.status != EscrowStatus::Open {
            return;
        }
        let expires_at_ms = self
            .contract
            .as_ref()
            .expect("open escrows have a contract")
            .signed
            .terms
            .expires_at_ms;
        if now_ms < expires_at_ms {
            out.timer(expires_at_ms - now_ms, EscrowTimer::Expiry);
            return;
        }
        let idle = self.idle();
        self.close(Closure::Expired, None, now_ms, out);
        self.drive(idle, out);
    }
}

impl StateMachine for Escrow {
    type Event = EscrowEvent;
    type Timer = EscrowTimer;
    type Command = ();
    type Snapshot = EscrowSnapshot;

    fn address(&self) -> Address {
        Address::Escrow(self.id)
    }

    fn apply(&mut self, event: &EscrowEvent) {
        match event {
            EscrowEvent::Opened { signed, at_ms } => {
                self.contract = Some(Contract {
                    digest: signed.digest(),
                    signed: signed.clone(),
                    opened_ms: *at_ms,
                    deposit: Amount::ZERO,
                    claimed: Amount::ZERO,
                    refunded: Amount::ZERO,
                    close_saga: None,
                });
                self.status = EscrowStatus::Freezing;
            }
            EscrowEvent::Frozen { deposit } => {
                self.contract.as_mut().expect("frozen after opened").deposit = *deposit;
                self.status = EscrowStatus::Open;
            }
            EscrowEvent::DepositFailed { reason, unfreeze } => {
                self.status = if *unfreeze {
                    EscrowStatus::Unfreezing { reason: *reason }
                } else {
                    EscrowStatus::Refused { reason: *reason }
                };
            }
            EscrowEvent::Unfrozen => {
                if let EscrowStatus::Unfreezing { reason } = self.status {
                    self.status = EscrowStatus::Refused { reason };
                }
            }
            EscrowEvent::ClaimDecided {
                saga,
                from,
                claim_id,
                amount,
                at_ms,
            } => {
                let c = self.contract.as_mut().expect("claims follow a deposit");
                let t = &c.signed.terms;
                // Invariant: decided claims never sum above the cap (verify_claim checked it).
                c.claimed = c.claimed.checked_add(*amount).expect("claims fit the cap");
                assert!(
                    c.claimed <= t.cap,
                    "escrow {}: claims {} above the cap {}",
                    self.id,
                    c.claimed,
                    t.cap
                );
                let (merchant, merchant_institution) = (t.merchant, t.merchant_institution);
                self.claim_ids.insert(*claim_id, *saga);
                self.settlements.push(SettlementRecord {
                    saga: *saga,
                    settlement: Settlement::Claim {
                        amount: *amount,
                        merchant,
                        merchant_institution,
                    },
                    payout: if merchant_institution == self.institution {
                        PayoutState::NotNeeded
                    } else {
                        PayoutState::Pending
                    },
                    decided_ms: *at_ms,
                });
                self.requests.insert(
                    *saga,
                    Request {
                        from: *from,
                        kind: RequestKind::Claim {
                            claim_id: *claim_id,
                            amount: *amount,
                            merchant_institution,
                        },
                        seq: Some(
                            u32::try_from(self.settlements.len()).expect("settlements bounded"),
                        ),
                        answer: None,
                    },
                );
            }
            EscrowEvent::Refused {
                saga,
                from,
                kind,
                reason,
            } => {
                self.requests.insert(
                    *saga,
                    Request {
                        from: *from,
                        kind: *kind,
                        seq: None,
                        answer: Some(Err(*reason)),
                    },
                );
            }
            EscrowEvent::CloseDecided {
                how,
                saga,
                from,
                at_ms,
            } => {
                let c = self.contract.as_mut().expect("closing follows a deposit");
                c.close_saga = Some(*saga);
                // What remains frozen once the decided claims are settled.
                let left = c
                    .deposit
                    .checked_sub(c.claimed)
                    .expect("claims never exceed the deposit");
                if !left.is_zero() {
                    self.settlements.push(SettlementRecord {
                        saga: *saga,
                        settlement: Settlement::Refund,
                        payout: PayoutState::NotNeeded,
                        decided_ms: *at_ms,
                    });
                }
                if let Some(from) = from {
                    self.requests.insert(
                        *saga,
                        Request {
                            from: *from,
                            kind: RequestKind::Release,
                            seq: (!left.is_zero())
                                .then(|| u32::try_from(self.settlements.len()).expect("bounded")),
                            answer: None,
                        },
                    );
                }
                self.status = EscrowStatus::Closing(*how);
            }
            EscrowEvent::Settled { seq } => {
                assert_eq!(
                    *seq,
                    self.settled + 1,
                    "settlements are acknowledged in sequence"
                );
                self.settled = *seq;
                let s = &self.settlements[*seq as usize - 1];
                let saga = s.saga;
                match s.settlement {
                    Settlement::Refund => {
                        let c = self.contract.as_mut().expect("refunds follow a deposit");
                        c.refunded = c
                            .deposit
                            .checked_sub(c.claimed)
                            .expect("claims never exceed the deposit");
                        if let Some(r) = self.requests.get_mut(&saga) {
                            r.answer = Some(Ok(()));
                        }
                    }
                    Settlement::Claim { .. } if s.payout == PayoutState::NotNeeded => {
                        if let Some(r) = self.requests.get_mut(&saga) {
                            r.answer = Some(Ok(()));
                        }
                    }
                    Settlement::Claim { .. } => {}
                }
            }
            EscrowEvent::PaidOut { saga } => {
                if let Some(s) = self.settlements.iter_mut().find(|s| s.saga == *saga) {
                    s.payout = PayoutState::Done;
                }
                if let Some(r) = self.requests.get_mut(saga) {
                    r.answer = Some(Ok(()));
                }
            }
            EscrowEvent::Closed => {
                if let EscrowStatus::Closing(how) = self.status {
                    self.status = EscrowStatus::Closed(how);
                }
            }
        }
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Out) {
        self.retry_armed = false;
        match (self.status, &self.contract) {
            (EscrowStatus::Freezing, Some(c)) => {
                let left = (c.opened_ms + self.limits.saga_timeout_ms).saturating_sub(now_ms);
                out.timer(left, EscrowTimer::FreezeTimeout);
            }
            (EscrowStatus::Open, Some(c)) => {
                out.timer(
                    c.signed.terms.expires_at_ms.saturating_sub(now_ms),
                    EscrowTimer::Expiry,
                );
            }
            _ => {}
        }
        if self.outstanding() {
            self.retry_armed = true;
            out.timer(0, EscrowTimer::Retry { attempt: 0 });
        }
    }

    fn on_envelope(&mut self, envelope: Envelope, now_ms: u64, out: &mut Out) {
        let (from, saga) = (envelope.from, envelope.saga_id);
        let Payload::Escrow(message) = envelope.payload else {
            // A wake-up (after a restart its host was started by this delivery) or a stray.
            return;
        };
        let issuer = from == self.issuer();
        match message {
            EscrowMessage::Open(signed) => self.on_open(from, saga, signed, now_ms, out),
            EscrowMessage::FreezeReply(reply) if issuer && saga == self.deposit_saga() => {
                self.on_freeze_reply(reply, now_ms, out)
            }
            EscrowMessage::UnfreezeReply if issuer => {
                if matches!(self.status, EscrowStatus::Unfreezing { .. }) {
                    self.record(EscrowEvent::Unfrozen, out);
                }
            }
            EscrowMessage::Claim {
                claim_id,
                amount,
                merchant_institution,
            } => {
                let kind = RequestKind::Claim {
                    claim_id,
                    amount,
                    merchant_institution,
                };
                self.on_claim(from, saga, kind, now_ms, out)
            }
            EscrowMessage::Release => self.on_release(from, saga, now_ms, out),
            EscrowMessage::SettleReply { seq, result } if issuer => {
                self.on_settle_reply(seq, result, out)
            }
            EscrowMessage::PayoutReply(result) => self.on_payout_reply(from, saga, result, out),
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    fn on_timer(&mut self, key: EscrowTimer, now_ms: u64, out: &mut Out) {
        match key {
            EscrowTimer::FreezeTimeout => {
                if self.status == EscrowStatus::Freezing {
                    self.fail_deposit(AbortReason::Timeout, true, out);
                }
            }
            EscrowTimer::Retry { attempt } => self.on_retry(attempt, out),
            EscrowTimer::Expiry => self.on_expiry(now_ms, out),
        }
    }

    fn on_command(&mut self, _command: (), _now_ms: u64, _out: &mut Out) {}

    fn checkpoint(&self) -> Option<Vec<u8>> {
        let c = Checkpoint {
            status: self.status,
            contract: self.contract.clone(),
            requests: self.requests.clone(),
            claim_ids: self.claim_ids.clone(),
            settlements: self.settlements.clone(),
            settled: self.settled,
        };
        Some(postcard::to_stdvec(&c).expect("state serializes"))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let c: Checkpoint = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        self.status = c.status;
        self.contract = c.contract;
        self.requests = c.requests;
        self.claim_ids = c.claim_ids;
        self.settlements = c.settlements;
        self.settled = c.settled;
        Ok(())
    }

    fn snapshot(&self) -> EscrowSnapshot {
        let t = self.contract.as_ref().map(|c| &c.signed.terms);
        EscrowSnapshot {
            id: self.id,
            deposit_saga: t.map(|t| t.saga_id),
            status: self.status,
            payer: t.map(|t| t.payer),
            merchant: t.map(|t| t.merchant),
            cap: t.map_or(Amount::ZERO, |t| t.cap),
            deposit: self.contract.as_ref().map_or(Amount::ZERO, |c| c.deposit),
            claimed: self.contract.as_ref().map_or(Amount::ZERO, |c| c.claimed),
            refunded: self.contract.as_ref().map_or(Amount::ZERO, |c| c.refunded),
            settlements: self
                .settlements
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), (i as u32) < self.settled))
                .collect(),
            in_flight: self.outstanding(),
        }
    }
}
