//! The wallet's side of escrow pre-payment (DESIGN.md §3.4).
//!
//! As the **payer** it opens an escrow: it asks its institution which coins cover the cap
//! (the same balance query a payment uses), signs the escrow terms in its key store, and hands
//! them to the escrow contract; once the escrow says the deposit is frozen, the coins are no
//! longer the wallet's. It may release the escrow to get back what the merchant did not claim
//! (the refund arrives as a new coin, like any other). As the **merchant** it claims amounts
//! under its own claim numbers; each paid claim arrives as a new coin. Every request is
//! re-sent until the escrow answers; the escrow answers repeats from its records.

use super::{Out, Wallet, WalletEvent, WalletOp};
use serde::{Deserialize, Serialize};
use specie_protocol::escrow::{host_of, EscrowMessage, EscrowStep, EscrowTerms, SignedTerms};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, InstitutionId, KeyStore, Payload, SagaId,
    SagaKind, WalletId,
};
use specie_runtime::StateMachine;

/// What a user (or the workload) asks of a wallet about escrows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscrowCommand {
    /// As the payer: freeze coins worth at least `cap` in escrow `contract` for `merchant`,
    /// until `expires_at_ms`.
    Deposit {
        /// New saga id.
        saga: SagaId,
        /// The contract id; it must be hosted by this wallet's institution
        /// ([`specie_protocol::escrow::contract_id`]).
        contract: u64,
        /// The merchant.
        merchant: WalletId,
        /// The merchant's institution.
        merchant_institution: InstitutionId,
        /// The most the merchant may claim in total.
        cap: Amount,
        /// When the escrow expires (the escrow's clock, ms since the epoch).
        expires_at_ms: u64,
    },
    /// As the merchant: claim `amount` under claim number `claim_id`.
    Claim {
        /// New saga id.
        saga: SagaId,
        /// The contract.
        contract: u64,
        /// The merchant's claim number; each resolves once.
        claim_id: u64,
        /// How much.
        amount: Amount,
    },
    /// As the payer: release the escrow; what remains is refunded.
    Release {
        /// New saga id.
        saga: SagaId,
        /// The contract.
        contract: u64,
    },
}

/// An escrow operation in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowOp {
    /// Opening an escrow as the payer.
    Deposit {
        /// The contract.
        contract: u64,
        /// The merchant.
        merchant: WalletId,
        /// Its institution.
        merchant_institution: InstitutionId,
        /// The cap.
        cap: Amount,
        /// The expiry.
        expires_at_ms: u64,
        /// The signed terms, once the coins are chosen.
        signed: Option<SignedTerms>,
    },
    /// Claiming as the merchant.
    Claim {
        /// The contract.
        contract: u64,
        /// The claim number.
        claim_id: u64,
        /// How much.
        amount: Amount,
    },
    /// Releasing as the payer.
    Release {
        /// The contract.
        contract: u64,
    },
}

impl EscrowOp {
    /// The saga kind reported.
    pub fn kind(&self) -> SagaKind {
        match self {
            EscrowOp::Deposit { .. } => SagaKind::EscrowDeposit,
            EscrowOp::Claim { .. } => SagaKind::EscrowClaim,
            EscrowOp::Release { .. } => SagaKind::EscrowRelease,
        }
    }

    /// The escrow contract, whose answers are the only ones that count.
    pub fn coordinator(&self) -> Address {
        match self {
            EscrowOp::Deposit { contract, .. }
            | EscrowOp::Claim { contract, .. }
            | EscrowOp::Release { contract } => Address::Escrow(*contract),
        }
    }

    /// The coins the wallet gives up when the operation commits: a deposit's frozen coins.
    pub fn spent_coins(&self) -> Vec<CoinId> {
        match self {
            EscrowOp::Deposit {
                signed: Some(s), ..
            } => s.terms.coin_ids.clone(),
            _ => Vec::new(),
        }
    }

    fn step(&self) -> EscrowStep {
        match self {
            EscrowOp::Deposit { .. } => EscrowStep::Deposit,
            EscrowOp::Claim { .. } => EscrowStep::Claim,
            EscrowOp::Release { .. } => EscrowStep::Release,
        }
    }
}

/// Journaled facts of the wallet's escrow operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowWalletEvent {
    /// The payer chose the coins and signed the terms.
    Signed {
        /// The deposit saga.
        saga: SagaId,
        /// The signed terms.
        signed: SignedTerms,
    },
}

impl Wallet {
    fn escrow_envelope(
        &self,
        saga: SagaId,
        contract: u64,
        attempt: u32,
        message: EscrowMessage,
    ) -> Envelope {
        self.envelope(
            saga,
            Address::Escrow(contract),
            attempt,
            Payload::Escrow(message),
        )
    }

    /// Starts an escrow operation.
    pub(super) fn on_escrow_command(&mut self, command: EscrowCommand, out: &mut Out) {
        let (saga, op) = match command {
            EscrowCommand::Deposit {
                saga,
                contract,
                merchant,
                merchant_institution,
                cap,
                expires_at_ms,
            } => {
                let refusal = if cap.is_zero() {
                    Some(AbortReason::InvalidAmount)
                } else if merchant == self.id {
                    Some(AbortReason::PayeeMismatch)
                } else if host_of(contract) != self.institution {
                    // The escrow must sit beside the issuer of the coins it freezes.
                    Some(AbortReason::WrongIssuer)
                } else {
                    None
                };
                let op = EscrowOp::Deposit {
                    contract,
                    merchant,
                    merchant_institution,
                    cap,
                    expires_at_ms,
                    signed: None,
                };
                if let Some(reason) = refusal {
                    return self.refuse(saga, op.kind(), reason, out);
                }
                (saga, op)
            }
            EscrowCommand::Claim {
                saga,
                contract,
                claim_id,
                amount,
            } => (
                saga,
                EscrowOp::Claim {
                    contract,
                    claim_id,
                    amount,
                },
            ),
            EscrowCommand::Release { saga, contract } => (saga, EscrowOp::Release { contract }),
        };
        if self.ops.contains_key(&saga) || self.finished.contains_key(&saga) {
            return self.refuse(saga, op.kind(), AbortReason::Conflict, out);
        }
        let first = self.escrow_request(saga, &op, 0);
        self.record(
            WalletEvent::OpStarted {
                saga,
                op: WalletOp::Escrow(op),
            },
            out,
        );
        out.send(first);
        out.timer(
            self.limits.outcome_timeout_ms,
            super::WalletTimer { saga, attempt: 1 },
        );
    }

    /// The request an escrow operation (re)sends at its current step.
    pub(super) fn escrow_request(&self, saga: SagaId, op: &EscrowOp, attempt: u32) -> Envelope {
        match op {
            EscrowOp::Deposit {
                signed: None, cap, ..
            } => self.envelope(
                saga,
                Address::Institution(self.institution),
                attempt,
                Payload::BalanceQuery { amount: *cap },
            ),
            EscrowOp::Deposit {
                signed: Some(signed),
                contract,
                ..
            } => self.escrow_envelope(
                saga,
                *contract,
                attempt,
                EscrowMessage::Open(signed.clone()),
            ),
            EscrowOp::Claim {
                contract,
                claim_id,
                amount,
            } => self.escrow_envelope(
                saga,
                *contract,
                attempt,
                EscrowMessage::Claim {
                    claim_id: *claim_id,
                    amount: *amount,
                    merchant_institution: self.institution,
                },
            ),
            EscrowOp::Release { contract } => {
                self.escrow_envelope(saga, *contract, attempt, EscrowMessage::Release)
            }
        }
    }

    /// Whether `saga` is an escrow deposit still choosing its coins.
    pub(super) fn is_escrow_choosing(&self, saga: &SagaId) -> bool {
        matches!(
            self.ops.get(saga),
            Some(WalletOp::Escrow(EscrowOp::Deposit { signed: None, .. }))
        )
    }

    /// The institution chose the coins of a deposit (or found none): sign the terms.
    pub(super) fn on_escrow_coins(&mut self, saga: SagaId, coin_ids: Vec<CoinId>, out: &mut Out) {
        let Some(WalletOp::Escrow(EscrowOp::Deposit {
            contract,
            merchant,
            merchant_institution,
            cap,
            expires_at_ms,
            signed: None,
        })) = self.ops.get(&saga)
        else {
            return;
        };
        if coin_ids.is_empty() {
            return self.finish(saga, Err(AbortReason::InsufficientFunds), out);
        }
        let contract = *contract;
        let signed = EscrowTerms {
            contract,
            saga_id: saga,
            payer: self.id,
            payer_key: self.keys.public_key(),
            payer_institution: self.institution,
            coin_ids,
            cap: *cap,
            merchant: *merchant,
            merchant_institution: *merchant_institution,
            expires_at_ms: *expires_at_ms,
        }
        .sign(self.keys.as_ref());
        self.record(
            WalletEvent::Escrow(EscrowWalletEvent::Signed {
                saga,
                signed: signed.clone(),
            }),
            out,
        );
        out.send(self.escrow_envelope(saga, contract, 0, EscrowMessage::Open(signed)));
    }

    /// An escrow answered: the outcome of the operation it belongs to.
    pub(super) fn on_escrow_message(
        &mut self,
        from: Address,
        saga: SagaId,
        message: EscrowMessage,
        out: &mut Out,
    ) {
        let EscrowMessage::Result(r) = message else {
            metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                .increment(1);
            return;
        };
        let Some(WalletOp::Escrow(op)) = self.ops.get(&saga) else {
            // An expiry or a closure the wallet did not ask about: the refund arrives as a coin.
            return;
        };
        if op.coordinator() != from || op.step() != r.step {
            return;
        }
        if matches!(op, EscrowOp::Deposit { signed: None, .. }) {
            return; // an answer to terms this wallet has not signed yet cannot be about them
        }
        self.finish(saga, r.result, out);
    }

    /// Applies an escrow event (called from `apply`).
    pub(super) fn apply_escrow(&mut self, event: &EscrowWalletEvent) {
        match event {
            EscrowWalletEvent::Signed { saga, signed } => {
                if let Some(WalletOp::Escrow(EscrowOp::Deposit { signed: slot, .. })) =
                    self.ops.get_mut(saga)
                {
                    *slot = Some(signed.clone());
                }
            }
        }
    }
}
