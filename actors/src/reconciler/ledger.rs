//! Transaction records of committed steps, as the actors produce them (DESIGN.md §3.7).
//!
//! Every committed saga step that moves value produces a record at each institution it
//! touches (the institution side, emitted by the institution in the step that commits it) and,
//! independently, the platform's copy of the same record (emitted by the wallet or escrow
//! contract that learns the committed outcome, from its own knowledge). Both sides build the
//! record from a [`Movement`]: the same saga, kind, payer, payee, amount and time give the
//! same bytes, and [`record_id`] the same id, so an honest run's batches hash equal.
//!
//! The time is the *decision* time of the step, which both sides hold: the deciding actor's
//! clock when it decided, carried to the other parties in the decision messages
//! (`SagaOutcome`, `StatusReply`, `CommitRequest`, `ExchangeReply`, `WithdrawReply`, the
//! escrow's `Settle` and `Payout`, each with `decided_at_ms`).

use specie_protocol::crypto::sha256;
use specie_protocol::offline::TrustChain;
use specie_protocol::reconcile::{RecordId, RecordKind, TransactionRecord};
use specie_protocol::{Amount, InstitutionId, SagaId, WalletId};
use specie_runtime::Effects;

const RECORD_ID_DOMAIN: &[u8] = b"specie/v1/reconcile/record-id";

/// The id of the record of `saga`'s step of `kind` at `institution`: the first 8 bytes of a
/// SHA-256 over the three, so that both sides compute it alone and one saga's records at two
/// institutions never share an id.
pub fn record_id(saga: SagaId, kind: RecordKind, institution: InstitutionId) -> RecordId {
    let mut input = Vec::with_capacity(RECORD_ID_DOMAIN.len() + 16 + 8);
    input.extend_from_slice(RECORD_ID_DOMAIN);
    input.extend_from_slice(&saga.0);
    input.extend_from_slice(&kind.code().to_be_bytes());
    input.extend_from_slice(&institution.0.to_be_bytes());
    let digest = sha256(&input);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    RecordId(u64::from_be_bytes(id))
}

/// A committed step that moved value: what its transaction records say, wherever they are
/// made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movement {
    /// The saga.
    pub saga: SagaId,
    /// Which step.
    pub kind: RecordKind,
    /// The wallet whose value left.
    pub payer: WalletId,
    /// The wallet whose value arrived.
    pub payee: WalletId,
    /// How much.
    pub amount: Amount,
    /// When the step was decided (the deciding actor's clock).
    pub at_ms: u64,
}

impl Movement {
    /// The record of this step in `institution`'s batch.
    pub fn record(&self, institution: InstitutionId) -> TransactionRecord {
        TransactionRecord {
            id: record_id(self.saga, self.kind, institution),
            saga_id: self.saga,
            kind: self.kind,
            payer: self.payer,
            payee: self.payee,
            amount: self.amount,
            at_ms: self.at_ms,
        }
    }

    /// Publishes the record of this step in `institution`'s batch with the step's effects.
    pub fn emit<E, T>(&self, institution: InstitutionId, out: &mut Effects<E, T>) {
        out.ledger(institution, self.record(institution));
    }
}

impl Movement {
    /// The redemption of an offline trust chain by its holder `claimant`: the chain's value,
    /// from the signer of its last transfer (the wallet that paid offline) to the claimant.
    pub fn redemption(saga: SagaId, chain: &TrustChain, claimant: WalletId, at_ms: u64) -> Self {
        Movement {
            saga,
            kind: RecordKind::OfflineRedeem,
            payer: chain.transfers.last().map_or(claimant, |t| t.record.from),
            payee: claimant,
            amount: chain.value(),
            at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_differ_by_saga_kind_and_institution() {
        let (s, k, i) = (SagaId::from_u128(7), RecordKind::Pay, InstitutionId(1));
        let id = record_id(s, k, i);
        assert_eq!(id, record_id(s, k, i));
        assert_ne!(id, record_id(SagaId::from_u128(8), k, i));
        assert_ne!(id, record_id(s, RecordKind::Merge, i));
        assert_ne!(id, record_id(s, k, InstitutionId(2)));
    }
}
