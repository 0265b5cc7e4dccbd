//! The merge, split and offline-redemption sagas at an institution (DESIGN.md §3.2, §3.3):
//! their state ([`SagaBook`]), what audits read of it ([`SagaBookSnapshot`]), and the router
//! that hands them their own messages and the steps of the pay saga's vocabulary they reuse
//! (`LockReply`, `CommitRequest`, `CommitReply`, `AbortRequest`, `AbortReply`, `ReserveAck`,
//! `StatusQuery`).
//!
//! Layout: `merge.rs` is the merge coordinator and the issuer's merge lock; `offline.rs` is
//! the issuer's split, its offline ledger and claims, the redemption coordinator, and the
//! offline sync. Both are `impl Institution` blocks in child modules of `state`, so their
//! rules read and change the register with the same helpers the pay saga uses, and each
//! rule is one function: `check_merge_request`, `check_merge_lock`, `check_split`,
//! `check_claim`.

#[path = "merge.rs"]
mod merge;
#[path = "offline.rs"]
mod offline;

pub use merge::{backing_key as merge_backing_key, MergeEvent, MergeStep, MergeSummary};
pub use offline::{
    settlement_saga, ClaimState, ClaimSummary, LedgerSummary, OfflineEvent, RedeemStep,
    RedemptionSummary, SplitSummary, SyncSummary,
};

use super::{Institution, InstitutionTimer, Out};
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::PublicKey;
use specie_protocol::{
    Address, CoinId, Envelope, InstitutionId, Payload, SagaId, SagaState, WalletId,
};
use specie_runtime::StateMachine;
use std::collections::{BTreeMap, HashMap};

/// The merge, split and offline state of an institution. Everything here is journaled
/// through [`MergeEvent`] and [`OfflineEvent`] and kept in the institution's checkpoint,
/// except the derived indexes, which [`SagaBook::reindex`] rebuilds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct SagaBook {
    /// Merges coordinated here, by saga.
    merges: BTreeMap<SagaId, merge::MergeSaga>,
    /// Splits performed here as the coin's issuer, by saga.
    splits: BTreeMap<SagaId, offline::SplitRecord>,
    /// Redemptions of trust chains coordinated here (for this institution's customers).
    redemptions: BTreeMap<SagaId, offline::Redemption>,
    /// The issuer's record of each claim on one of its coins, by the claim's saga.
    claims: BTreeMap<SagaId, offline::ClaimRecord>,
    /// The issuer's offline ledger of each coin some chain was claimed against.
    ledgers: BTreeMap<CoinId, offline::Ledger>,
    /// Offline records each customer uploaded (the high-water sequence and totals).
    synced: BTreeMap<WalletId, SyncSummary>,
    /// Owners of coins issued here who bank elsewhere (split and redeemed coins of foreign
    /// wallets), so that the coins are redelivered to them until acknowledged.
    foreign_owners: BTreeMap<PublicKey, WalletId>,
    /// Offline double spends detected here as the issuer, ever.
    double_spends_detected: u64,
    /// Derived: a merge's backing-move key → (the merge, the issuer whose backing moves).
    #[serde(skip)]
    backing_keys: HashMap<SagaId, (SagaId, InstitutionId)>,
}

impl SagaBook {
    /// Rebuilds the derived indexes after a restore.
    pub(super) fn reindex(&mut self) {
        self.backing_keys.clear();
        let merges: Vec<_> = self
            .merges
            .iter()
            .map(|(s, m)| (*s, m.institution(), m.issuers()))
            .collect();
        for (saga, institution, issuers) in merges {
            self.index_backing(saga, institution, issuers);
        }
    }

    fn index_backing(
        &mut self,
        saga: SagaId,
        institution: InstitutionId,
        issuers: impl IntoIterator<Item = InstitutionId>,
    ) {
        for issuer in issuers {
            if issuer != institution {
                self.backing_keys
                    .insert(merge::backing_key(saga, issuer), (saga, issuer));
            }
        }
    }

    /// Whether a saga is coordinated here by the merge or the redemption rules.
    fn coordinates(&self, saga: &SagaId) -> bool {
        self.merges.contains_key(saga) || self.redemptions.contains_key(saga)
    }
}

/// What audits read of an institution's merge, split and offline sagas.
#[derive(Debug, Clone, Default)]
pub struct SagaBookSnapshot {
    /// Merges coordinated here.
    pub merges: HashMap<SagaId, MergeSummary>,
    /// Splits performed here as the coin's issuer.
    pub splits: HashMap<SagaId, SplitSummary>,
    /// Redemptions coordinated here.
    pub redemptions: HashMap<SagaId, RedemptionSummary>,
    /// The issuer's claims, by the claiming saga.
    pub claims: HashMap<SagaId, ClaimSummary>,
    /// The issuer's offline ledgers, by coin.
    pub ledgers: HashMap<CoinId, LedgerSummary>,
    /// Offline records uploaded by each customer.
    pub synced: HashMap<WalletId, SyncSummary>,
    /// Offline double spends detected here as the issuer.
    pub double_spends_detected: u64,
}

impl Institution {
    /// Whether an envelope belongs to the merge, split or offline sagas. Their own messages
    /// always do; a step of the shared vocabulary does when its saga is one of theirs here.
    pub(super) fn routes_to_sagas(&self, envelope: &Envelope) -> bool {
        let saga = &envelope.saga_id;
        match &envelope.payload {
            Payload::Merge(_) | Payload::Offline(_) => true,
            // Replies to a coordinator.
            Payload::LockReply(_) | Payload::CommitReply(_) | Payload::AbortReply => {
                self.sagas.coordinates(saga)
            }
            Payload::StatusQuery => {
                self.sagas.coordinates(saga) || self.sagas.splits.contains_key(saga)
            }
            // The decision on a claim reserved here (a merge's lock is a participation of the
            // pay saga's kind, and its commit and abort are handled there).
            Payload::CommitRequest { .. } | Payload::AbortRequest { .. } => {
                self.sagas.claims.contains_key(saga)
            }
            Payload::ReserveAck(_) => {
                envelope.from == Address::CentralBank && self.sagas.backing_keys.contains_key(saga)
            }
            _ => false,
        }
    }

    /// Handles an envelope [`Institution::routes_to_sagas`] claimed.
    pub(super) fn on_saga_envelope(&mut self, envelope: Envelope, now_ms: u64, out: &mut Out) {
        let (from, saga) = (envelope.from, envelope.saga_id);
        match envelope.payload {
            Payload::Merge(m) => self.on_merge_message(from, saga, m, now_ms, out),
            Payload::Offline(m) => self.on_offline_message(from, saga, m, now_ms, out),
            Payload::LockReply(reply) => self.on_merge_lock_reply(from, saga, reply, now_ms, out),
            Payload::CommitReply(reply) => {
                if self.sagas.merges.contains_key(&saga) {
                    self.on_merge_commit_reply(from, saga, reply, out);
                } else {
                    self.on_redeem_commit_reply(from, saga, reply, out);
                }
            }
            Payload::AbortReply => {
                if self.sagas.merges.contains_key(&saga) {
                    self.on_merge_abort_reply(from, saga, out);
                } else {
                    self.on_redeem_abort_reply(from, saga, out);
                }
            }
            Payload::StatusQuery => {
                // A split moves no value between wallets: it has no transaction record, and no
                // decision time to tell.
                let ((state, reason), decided) = if let Some(m) = self.sagas.merges.get(&saga) {
                    (m.step.saga_state(), m.decided_ms)
                } else if let Some(r) = self.sagas.redemptions.get(&saga) {
                    (r.step.saga_state(), r.decided_ms)
                } else {
                    (self.sagas.splits[&saga].saga_state(), 0)
                };
                let decided_at_ms = if state == SagaState::Committed {
                    decided
                } else {
                    0
                };
                let reply = Payload::StatusReply {
                    state,
                    reason,
                    decided_at_ms,
                };
                out.send(self.envelope(saga, from, 0, reply));
            }
            Payload::CommitRequest { decided_at_ms } => {
                self.on_claim_commit(from, saga, decided_at_ms, now_ms, out)
            }
            Payload::AbortRequest { .. } => self.on_claim_abort(from, saga, now_ms, out),
            Payload::ReserveAck(ack) => self.on_merge_backing_ack(saga, ack, out),
            other => unreachable!("routes_to_sagas claimed {}", other.name()),
        }
    }

    /// Whether a timer belongs to a merge or a redemption coordinated here.
    pub(super) fn owns_saga_timer(&self, key: &InstitutionTimer) -> bool {
        match key {
            InstitutionTimer::LockTimeout(saga) | InstitutionTimer::Retry { saga, .. } => {
                self.sagas.coordinates(saga)
            }
            _ => false,
        }
    }

    /// Handles a timer [`Institution::owns_saga_timer`] claimed.
    pub(super) fn on_saga_timer(&mut self, key: InstitutionTimer, out: &mut Out) {
        let saga = match key {
            InstitutionTimer::LockTimeout(saga) | InstitutionTimer::Retry { saga, .. } => saga,
            _ => unreachable!("owns_saga_timer claimed only lock timeouts and retries"),
        };
        if self.sagas.merges.contains_key(&saga) {
            self.on_merge_timer(key, out);
        } else {
            self.on_redeem_timer(key, out);
        }
    }

    /// Re-drives every merge and redemption in flight from its last persisted step (after a
    /// start or a restart), in saga order.
    pub(super) fn on_sagas_start(&mut self, now_ms: u64, out: &mut Out) {
        let timeout = self.limits.saga_timeout_ms;
        let mut arm = |saga: SagaId, started_ms: u64, deciding: bool, terminal: bool| {
            if deciding {
                let left = (started_ms + timeout).saturating_sub(now_ms);
                out.timer(left, InstitutionTimer::LockTimeout(saga));
            }
            if !terminal {
                out.timer(0, InstitutionTimer::Retry { saga, attempt: 0 });
            }
        };
        for (saga, m) in &self.sagas.merges {
            arm(
                *saga,
                m.started_ms,
                m.step.is_deciding(),
                m.step.is_terminal(),
            );
        }
        for (saga, r) in &self.sagas.redemptions {
            arm(
                *saga,
                r.started_ms,
                r.step == RedeemStep::Claiming,
                r.step.is_terminal(),
            );
        }
    }

    /// The sagas' part of the snapshot.
    pub(super) fn sagas_snapshot(&self) -> SagaBookSnapshot {
        let b = &self.sagas;
        SagaBookSnapshot {
            merges: b.merges.iter().map(|(s, m)| (*s, m.summary())).collect(),
            splits: b.splits.iter().map(|(s, x)| (*s, x.summary())).collect(),
            redemptions: b
                .redemptions
                .iter()
                .map(|(s, r)| (*s, r.summary()))
                .collect(),
            claims: b.claims.iter().map(|(s, c)| (*s, c.summary())).collect(),
            ledgers: b.ledgers.iter().map(|(id, l)| (*id, l.summary())).collect(),
            synced: b.synced.iter().map(|(w, s)| (*w, *s)).collect(),
            double_spends_detected: b.double_spends_detected,
        }
    }

    /// After a restore: rebuild the derived indexes, and remember the foreign owners of
    /// coins issued here so their coins are redelivered.
    pub(super) fn on_sagas_restored(&mut self) {
        self.sagas.reindex();
        for (key, wallet) in &self.sagas.foreign_owners {
            self.wallet_of_key.entry(*key).or_insert(*wallet);
        }
    }

    /// Records that coins owned by `key` are delivered to `wallet`, a wallet banking
    /// elsewhere (a no-op for this institution's own customers).
    fn remember_owner(&mut self, key: PublicKey, wallet: WalletId) {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.wallet_of_key.entry(key) {
            entry.insert(wallet);
            self.sagas.foreign_owners.insert(key, wallet);
        }
    }

    /// Prunes recorded answers of finished splits, claims and offline syncs older than the
    /// deduplication retention (the merge and redemption coordinators keep their records,
    /// as the pay saga's do; the offline ledgers are kept for good, since a claim made years
    /// later must still be checked against them).
    pub(super) fn prune_sagas(&mut self, now_ms: u64, out: &mut Out) {
        let horizon = now_ms.saturating_sub(self.limits.dedup_retention_ms);
        let splits: Vec<SagaId> = self
            .sagas
            .splits
            .iter()
            .filter(|(_, x)| x.at_ms < horizon)
            .map(|(s, _)| *s)
            .take(super::DEDUP_PRUNE_BATCH_MAX)
            .collect();
        let claims: Vec<SagaId> = self
            .sagas
            .claims
            .iter()
            .filter(|(_, c)| c.at_ms < horizon && c.state != ClaimState::Reserved)
            .map(|(s, _)| *s)
            .take(super::DEDUP_PRUNE_BATCH_MAX)
            .collect();
        if !splits.is_empty() || !claims.is_empty() {
            metrics::counter!("specie_dedup_pruned_total")
                .increment((splits.len() + claims.len()) as u64);
            self.record(
                super::InstitutionEvent::Offline(OfflineEvent::Pruned { splits, claims }),
                out,
            );
        }
    }
}
