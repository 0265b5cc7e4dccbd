//! The wallet's step of proximity payment negotiation (DESIGN.md §3.6), used before an offline
//! (or any proximity) payment.
//!
//! The initiator sends its capabilities (those of its current parameters, or an explicit set
//! standing for another kind of terminal) with the amount; the peer answers with its own
//! capabilities and its verdict, both computed by [`specie_protocol::negotiate()`]. The
//! initiator computes the verdict again from the two sets — the rule is symmetric, so honest
//! sides agree — and keeps the agreed features for the payment that follows
//! ([`Wallet::agreed_with`]). A refusal is a clear reason (`no_common_version`,
//! `no_common_scheme`, `amount_above_max`, `offline_unsupported`) before any money moves.

use super::{Out, Wallet, WalletEvent, WalletOp, WalletTimer};
use serde::{Deserialize, Serialize};
use specie_protocol::negotiate::{negotiate, AgreedFeatures, Capabilities, NegotiationMessage};
use specie_protocol::{
    AbortReason, Address, Amount, Envelope, Payload, SagaId, SagaKind, WalletId,
};
use specie_runtime::StateMachine;

/// The most peers whose agreed features a wallet keeps (the oldest is forgotten first).
pub const AGREEMENTS_MAX: usize = 64;

/// Ask the wallet to negotiate a proximity payment with a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateCommand {
    /// New saga id.
    pub saga: SagaId,
    /// The other wallet.
    pub peer: WalletId,
    /// The payment's amount (zero: not known yet).
    pub amount: Amount,
    /// Whether the payment is to be offline.
    pub offline: bool,
    /// Offer these capabilities instead of the wallet's own (a terminal of another kind).
    pub offer: Option<Capabilities>,
}

/// A negotiation in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiateOp {
    /// The other wallet.
    pub peer: WalletId,
    /// The amount.
    pub amount: Amount,
    /// Offline or not.
    pub offline: bool,
    /// The capabilities offered.
    pub offer: Capabilities,
}

/// Journaled facts of negotiations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NegotiationEvent {
    /// The two wallets agreed on these features.
    Agreed {
        /// The other wallet.
        peer: WalletId,
        /// The features.
        features: AgreedFeatures,
    },
}

impl Wallet {
    fn negotiation_envelope(
        &self,
        saga: SagaId,
        peer: WalletId,
        attempt: u32,
        message: NegotiationMessage,
    ) -> Envelope {
        self.envelope(
            saga,
            Address::Wallet(peer),
            attempt,
            Payload::Negotiation(message),
        )
    }

    /// What this wallet can do now (from its parameters).
    pub fn capabilities(&self) -> &Capabilities {
        &self.params.capabilities
    }

    /// The features last agreed with `peer`, if any.
    pub fn agreed_with(&self, peer: WalletId) -> Option<AgreedFeatures> {
        self.agreements
            .iter()
            .rev()
            .find(|(p, _)| *p == peer)
            .map(|(_, f)| *f)
    }

    /// Starts a negotiation.
    pub(super) fn on_negotiate_command(&mut self, command: NegotiateCommand, out: &mut Out) {
        let NegotiateCommand {
            saga,
            peer,
            amount,
            offline,
            offer,
        } = command;
        if self.ops.contains_key(&saga) || self.finished.contains_key(&saga) {
            return self.refuse(saga, SagaKind::Negotiation, AbortReason::Conflict, out);
        }
        if peer == self.id {
            return self.refuse(saga, SagaKind::Negotiation, AbortReason::PayeeMismatch, out);
        }
        let op = NegotiateOp {
            peer,
            amount,
            offline,
            offer: offer.unwrap_or_else(|| self.params.capabilities.clone()),
        };
        let first = self.negotiation_request(saga, &op, 0);
        self.record(
            WalletEvent::OpStarted {
                saga,
                op: WalletOp::Negotiate(op),
            },
            out,
        );
        out.send(first);
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer { saga, attempt: 1 },
        );
    }

    /// The offer a negotiation (re)sends.
    pub(super) fn negotiation_request(
        &self,
        saga: SagaId,
        op: &NegotiateOp,
        attempt: u32,
    ) -> Envelope {
        let offer = NegotiationMessage::Offer {
            capabilities: op.offer.clone(),
            amount: op.amount,
            offline: op.offline,
        };
        self.negotiation_envelope(saga, op.peer, attempt, offer)
    }

    /// A negotiation message from another wallet.
    pub(super) fn on_negotiation(
        &mut self,
        from: Address,
        saga: SagaId,
        message: NegotiationMessage,
        out: &mut Out,
    ) {
        let Address::Wallet(peer) = from else { return };
        match message {
            NegotiationMessage::Offer {
                capabilities,
                amount,
                offline,
            } => {
                // The peer's side: a pure answer from the current parameters, nothing recorded
                // (a repeated offer gets the same answer).
                let verdict = negotiate(&self.params.capabilities, &capabilities, amount, offline)
                    .map_err(|e| e.reason());
                let answer = NegotiationMessage::Answer {
                    capabilities: self.params.capabilities.clone(),
                    verdict,
                };
                out.send(self.negotiation_envelope(saga, peer, 0, answer));
            }
            NegotiationMessage::Answer {
                capabilities,
                verdict,
            } => {
                let Some(WalletOp::Negotiate(op)) = self.ops.get(&saga) else {
                    return;
                };
                if op.peer != peer {
                    return;
                }
                let ours = negotiate(&op.offer, &capabilities, op.amount, op.offline)
                    .map_err(|e| e.reason());
                let result = match (ours, verdict) {
                    (Ok(features), Ok(theirs)) if features == theirs => Ok(features),
                    (Err(reason), Err(_)) => Err(reason),
                    // The two verdicts differ: the peer does not follow the rule; pay nothing.
                    _ => {
                        metrics::counter!("specie_protocol_violations_total", "what" => "negotiation_mismatch").increment(1);
                        Err(AbortReason::Conflict)
                    }
                };
                match result {
                    Ok(features) => {
                        self.record(
                            WalletEvent::Negotiation(NegotiationEvent::Agreed { peer, features }),
                            out,
                        );
                        self.finish(saga, Ok(()), out);
                    }
                    Err(reason) => self.finish(saga, Err(reason), out),
                }
            }
        }
    }

    /// Applies a negotiation event (called from `apply`).
    pub(super) fn apply_negotiation(&mut self, event: &NegotiationEvent) {
        match event {
            NegotiationEvent::Agreed { peer, features } => {
                self.agreements.retain(|(p, _)| p != peer);
                if self.agreements.len() == AGREEMENTS_MAX {
                    self.agreements.pop_front();
                }
                self.agreements.push_back((*peer, *features));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::update::testkit::Router;
    use super::super::WalletCommand;
    use super::NegotiateCommand;
    use specie_protocol::negotiate::{Capabilities, SignatureScheme};
    use specie_protocol::update::WalletParams;
    use specie_protocol::{AbortReason, Amount, SagaId, WalletId};

    const A: WalletId = WalletId(1);
    const B: WalletId = WalletId(2);

    fn negotiate(
        r: &mut Router,
        n: u128,
        amount: u64,
        offline: bool,
        offer: Option<Capabilities>,
    ) -> Vec<Result<(), AbortReason>> {
        let saga = SagaId::from_u128(n);
        let command = NegotiateCommand {
            saga,
            peer: B,
            amount: Amount(amount),
            offline,
            offer,
        };
        r.command(A, WalletCommand::Negotiate(command));
        r.outcomes(saga)
    }

    #[test]
    fn two_wallets_agree_on_the_features_both_support() {
        let mut r = Router::new(2, &[1, 2]);
        assert_eq!(negotiate(&mut r, 1, 30_000, true, None), vec![Ok(())]);
        let agreed = r.wallets[&A].agreed_with(B).expect("kept for the payment");
        assert_eq!(agreed.protocol_version, 1);
        assert_eq!(agreed.signature_scheme, SignatureScheme::Ed25519);
        assert_eq!(
            agreed.offline_limit,
            WalletParams::shipped().capabilities.offline_limit
        );
        assert!(
            r.wallets[&B].agreed_with(A).is_none(),
            "the peer answers without recording"
        );
    }

    #[test]
    fn every_refusal_is_clear_and_nothing_is_agreed() {
        let mut r = Router::new(2, &[1, 2]);
        let shipped = WalletParams::shipped().capabilities;
        let newer = Capabilities {
            protocol_versions: vec![3],
            ..shipped.clone()
        };
        assert_eq!(
            negotiate(&mut r, 1, 100, false, Some(newer)),
            vec![Err(AbortReason::NoCommonVersion)]
        );
        let foreign = Capabilities {
            signature_schemes: vec![SignatureScheme::Sm2],
            ..shipped.clone()
        };
        assert_eq!(
            negotiate(&mut r, 2, 100, false, Some(foreign)),
            vec![Err(AbortReason::NoCommonScheme)]
        );
        let above = shipped.max_amount.0 + 1;
        assert_eq!(
            negotiate(&mut r, 3, above, false, None),
            vec![Err(AbortReason::AmountAboveMax)]
        );
        let offline_limit = shipped
            .offline_limit
            .expect("shipped wallets pay offline")
            .0;
        assert_eq!(
            negotiate(&mut r, 4, offline_limit + 1, true, None),
            vec![Err(AbortReason::AmountAboveMax)]
        );
        let online_only = Capabilities {
            offline_limit: None,
            ..shipped
        };
        assert_eq!(
            negotiate(&mut r, 5, 100, true, Some(online_only)),
            vec![Err(AbortReason::OfflineUnsupported)]
        );
        assert!(r.wallets[&A].agreed_with(B).is_none());
        // Negotiating with itself is refused before anything is sent.
        let saga = SagaId::from_u128(6);
        r.command(
            A,
            WalletCommand::Negotiate(NegotiateCommand {
                saga,
                peer: A,
                amount: Amount(1),
                offline: false,
                offer: None,
            }),
        );
        assert_eq!(r.outcomes(saga), vec![Err(AbortReason::PayeeMismatch)]);
    }

    #[test]
    fn a_lost_offer_is_sent_again_and_answered_the_same() {
        let mut r = Router::new(2, &[1, 2]);
        let mut lost = false;
        r.drop = Box::new(move |e| {
            if e.to == specie_protocol::Address::Wallet(B) && !lost {
                lost = true;
                return true;
            }
            false
        });
        assert!(negotiate(&mut r, 1, 100, false, None).is_empty());
        r.advance(super::super::update::testkit::OUTCOME_TIMEOUT_MS);
        assert_eq!(r.outcomes(SagaId::from_u128(1)), vec![Ok(())]);
    }
}
