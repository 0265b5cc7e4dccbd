//! The merge saga (DESIGN.md §3.2), as coordinated by the wallet's own institution A with the
//! issuers of the coins (A itself among them when some coins are its own):
//!
//! ```text
//!   MergeRequest ──► Locking ──every issuer locked──► Committing ──every issuer retired,
//!                      │        (decision: commit; the   │         every backing moved──► Committed
//!                      │         merged coin is issued)  └ retried until acknowledged
//!                      ├──an issuer refused──► Aborting ──every other issuer unlocked──► Aborted
//!                      └──timeout───────────► Aborting
//! ```
//!
//! Each issuer locks its share of the coins with the pay saga's participation (the issuer's
//! `Locked` / `Retired` / `Unlocked` events), checked by [`Institution::check_merge_lock`]
//! against the wallet's signed [`SignedMergeAuthorization`]; the decision follows as the pay
//! saga's `CommitRequest` or `AbortRequest`. On commit A issues one coin of exactly the sum,
//! and the central bank moves each other issuer's share of backing to A, one `MoveBacking`
//! per issuer under a key derived from the saga and the issuer ([`backing_key`]), so each
//! move is idempotent on its own. All or nothing: a refusal or a timeout before the decision
//! releases every lock.

use super::super::{CoinState, Institution, InstitutionEvent, InstitutionTimer, LockFacts, Out};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::sha256;
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::merge::{MergeMessage, SignedMergeAuthorization};
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, InstitutionId, Payload, SagaId, SagaKind, SagaState,
};
use specie_runtime::{Notice, StateMachine};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The central bank's idempotency key for moving `issuer`'s share of a merge's backing: one
/// key per (merge, issuer), so that the moves of one merge never answer for each other.
pub fn backing_key(saga: SagaId, issuer: InstitutionId) -> SagaId {
    let mut input = b"specie/v1/merge-backing".to_vec();
    input.extend_from_slice(&saga.0);
    input.extend_from_slice(&issuer.0.to_be_bytes());
    let digest = sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    SagaId(id)
}

/// Where a merge stands at its coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeStep {
    /// Locks requested from the issuers, no decision yet. A timeout aborts.
    Locking,
    /// Decided commit (durable): the merged coin is issued; waiting for every issuer to
    /// retire its coins and the central bank to move every other issuer's backing.
    Committing {
        /// The merged coin.
        coin: CoinId,
        /// Issuers that acknowledged the commit.
        issuers_done: BTreeSet<InstitutionId>,
        /// Issuers whose backing move the central bank acknowledged.
        backing_done: BTreeSet<InstitutionId>,
    },
    /// Decided abort; waiting for the issuers that may hold a lock to release it.
    Aborting {
        /// Why.
        reason: AbortReason,
        /// Issuers asked to unlock.
        release: BTreeSet<InstitutionId>,
        /// Those that acknowledged.
        released: BTreeSet<InstitutionId>,
    },
    /// Terminal: committed.
    Committed {
        /// The merged coin.
        coin: CoinId,
    },
    /// Terminal: aborted (refused up front, refused by an issuer, or timed out).
    Aborted {
        /// Why.
        reason: AbortReason,
    },
}

impl MergeStep {
    /// The saga's state as reported to parties: the decision counts, not the bookkeeping.
    pub fn saga_state(&self) -> (SagaState, Option<AbortReason>) {
        match self {
            MergeStep::Locking => (SagaState::InProgress, None),
            MergeStep::Committing { .. } | MergeStep::Committed { .. } => {
                (SagaState::Committed, None)
            }
            MergeStep::Aborting { reason, .. } | MergeStep::Aborted { reason } => {
                (SagaState::Aborted, Some(*reason))
            }
        }
    }

    /// Terminal: nothing left to do.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            MergeStep::Committed { .. } | MergeStep::Aborted { .. }
        )
    }

    /// Before the decision: a timeout still aborts.
    pub fn is_deciding(&self) -> bool {
        *self == MergeStep::Locking
    }
}

/// A merge coordinated here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in super::super) struct MergeSaga {
    authorization: SignedMergeAuthorization,
    digest: [u8; 32],
    requester: Address,
    pub(in super::super) started_ms: u64,
    /// Each issuer's locked total, as it answered.
    locked: BTreeMap<InstitutionId, Amount>,
    pub(in super::super) step: MergeStep,
    /// When commit was decided (0 before): the time of the merge's transaction records.
    pub(in super::super) decided_ms: u64,
}

impl MergeSaga {
    pub(in super::super) fn institution(&self) -> InstitutionId {
        self.authorization.authorization.institution
    }

    pub(in super::super) fn issuers(&self) -> BTreeSet<InstitutionId> {
        self.authorization.authorization.issuers()
    }

    pub(in super::super) fn summary(&self) -> MergeSummary {
        let a = &self.authorization.authorization;
        MergeSummary {
            wallet: a.wallet,
            coins: a.coins.iter().map(|c| (c.id, c.issuer)).collect(),
            total: a.total,
            locked: self.locked.clone(),
            step: self.step.clone(),
        }
    }
}

/// A merge as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    /// The merging wallet.
    pub wallet: specie_protocol::WalletId,
    /// The coins merged, with their issuers.
    pub coins: Vec<(CoinId, InstitutionId)>,
    /// The sum the wallet signed for: the merged coin's value.
    pub total: Amount,
    /// Each issuer's locked total.
    pub locked: BTreeMap<InstitutionId, Amount>,
    /// Where it stands.
    pub step: MergeStep,
}

/// Journaled facts of the merge saga's coordinator (the issuers journal the pay saga's
/// `Locked`, `LockRefused`, `Retired` and `Unlocked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeEvent {
    /// A merge started: locks are being requested.
    Started {
        /// The wallet's signed request.
        authorization: SignedMergeAuthorization,
        /// Who asked (told the outcome).
        requester: Address,
        /// When.
        at_ms: u64,
    },
    /// A merge refused before any lock (recorded, so a repeated request gets the same answer).
    Refused {
        /// The wallet's signed request.
        authorization: SignedMergeAuthorization,
        /// Who asked.
        requester: Address,
        /// When.
        at_ms: u64,
        /// Why.
        reason: AbortReason,
    },
    /// An issuer locked its coins of the merge.
    Locked {
        /// The merge.
        saga: SagaId,
        /// The issuer.
        issuer: InstitutionId,
        /// The sum of its coins.
        total: Amount,
    },
    /// Decision commit, with the merged coin.
    CommitDecided {
        /// The merge.
        saga: SagaId,
        /// The merged coin, issued to the wallet.
        coin: Coin,
    },
    /// Decision abort.
    AbortDecided {
        /// The merge.
        saga: SagaId,
        /// Why.
        reason: AbortReason,
        /// Issuers that may hold a lock and are asked to release it.
        release: BTreeSet<InstitutionId>,
    },
    /// An issuer acknowledged the decision (retired or unlocked its coins).
    IssuerDone {
        /// The merge.
        saga: SagaId,
        /// The issuer.
        issuer: InstitutionId,
    },
    /// The central bank moved an issuer's share of the backing here.
    BackingDone {
        /// The merge.
        saga: SagaId,
        /// The issuer whose backing moved.
        issuer: InstitutionId,
    },
}

impl Institution {
    pub(super) fn on_merge_message(
        &mut self,
        from: Address,
        saga: SagaId,
        m: MergeMessage,
        now_ms: u64,
        out: &mut Out,
    ) {
        match m {
            MergeMessage::Request(signed) => self.on_merge_request(from, saga, signed, now_ms, out),
            MergeMessage::LockRequest(signed) => {
                self.on_merge_lock_request(from, saga, signed, now_ms, out)
            }
        }
    }

    /// The coordinator's rule for a merge request: everything A checks before it asks any
    /// issuer to lock. Changes nothing. (Ownership and the coins' states are the issuers'.)
    pub fn check_merge_request(
        &self,
        signed: &SignedMergeAuthorization,
        now_ms: u64,
    ) -> Result<(), AbortReason> {
        let a = &signed.authorization;
        if a.institution != self.id {
            return Err(AbortReason::PayeeMismatch);
        }
        if a.coins.is_empty() {
            return Err(AbortReason::EmptyRequest);
        }
        if a.coins.len() > self.limits.coin_inputs_max {
            return Err(AbortReason::TooManyCoins);
        }
        let mut seen = HashSet::with_capacity(a.coins.len());
        if !a.coins.iter().all(|c| seen.insert(c.id)) {
            return Err(AbortReason::DuplicateCoin);
        }
        if a.coins.iter().any(|c| c.issuer.0 >= self.institutions) {
            // No such issuer: its lock could never be answered nor released.
            return Err(AbortReason::WrongIssuer);
        }
        let account = self
            .accounts
            .get(&a.wallet)
            .ok_or(AbortReason::UnknownWallet)?;
        if account.key != a.wallet_key {
            return Err(AbortReason::CoinNotOwned);
        }
        if a.total.is_zero() {
            return Err(AbortReason::InvalidAmount);
        }
        if now_ms > a.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        signed.verify().map_err(|_| AbortReason::BadSignature)?;
        Ok(())
    }

    /// The issuer's rule for locking its coins of a merge: everything it checks before it
    /// locks, in order; the total of its coins on success. Changes nothing.
    pub fn check_merge_lock(
        &self,
        signed: &SignedMergeAuthorization,
        coordinator: InstitutionId,
        now_ms: u64,
    ) -> Result<(Vec<CoinId>, Amount), AbortReason> {
        let a = &signed.authorization;
        if a.institution != coordinator {
            // Only the institution the wallet named may merge its coins.
            return Err(AbortReason::PayeeMismatch);
        }
        if a.coins.is_empty() {
            return Err(AbortReason::EmptyRequest);
        }
        if a.coins.len() > self.limits.coin_inputs_max {
            return Err(AbortReason::TooManyCoins);
        }
        let mut seen = HashSet::with_capacity(a.coins.len());
        if !a.coins.iter().all(|c| seen.insert(c.id)) {
            return Err(AbortReason::DuplicateCoin);
        }
        if now_ms > a.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        let mine = a.coins_of(self.id);
        if mine.is_empty() {
            return Err(AbortReason::WrongIssuer);
        }
        let mut records = Vec::with_capacity(mine.len());
        for id in &mine {
            let record = self.register.get(id).ok_or(AbortReason::CoinUnknown)?;
            if record.coin.body.owner != a.wallet_key {
                return Err(AbortReason::CoinNotOwned);
            }
            records.push(record);
        }
        // Only the owner's signature may reveal anything about the coins' states.
        signed.verify().map_err(|_| AbortReason::BadSignature)?;
        for record in &records {
            match record.state {
                CoinState::Active => {}
                CoinState::Spent(_) => return Err(AbortReason::CoinSpent),
                // Locked by another saga (or held in any other state): not free to merge.
                _ => return Err(AbortReason::CoinLocked),
            }
        }
        let total = Amount::sum(records.iter().map(|r| r.coin.value()))
            .ok_or(AbortReason::InvalidAmount)?;
        Ok((mine, total))
    }

    fn merge_outcome(
        &self,
        saga: SagaId,
        to: Address,
        result: Result<(), AbortReason>,
        spent: Vec<CoinId>,
        out: &mut Out,
    ) {
        let decided_at_ms = match (result, self.sagas.merges.get(&saga)) {
            (Ok(()), Some(m)) => m.decided_ms,
            _ => 0,
        };
        out.send(self.envelope(
            saga,
            to,
            0,
            Payload::SagaOutcome(SagaOutcome {
                kind: SagaKind::Merge,
                result,
                spent_coin_ids: spent,
                decided_at_ms,
            }),
        ));
    }

    /// Tells the wallet, the requester and observers how a merge ended.
    fn announce_merge(&self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        let m = &self.sagas.merges[&saga];
        let a = &m.authorization.authorization;
        let spent: Vec<CoinId> = if result.is_ok() {
            a.coins.iter().map(|c| c.id).collect()
        } else {
            Vec::new()
        };
        let wallet = Address::Wallet(a.wallet);
        self.merge_outcome(saga, wallet, result, spent.clone(), out);
        if m.requester != wallet {
            self.merge_outcome(saga, m.requester, result, spent.clone(), out);
        }
        out.notice(Notice {
            saga_id: saga,
            source: Address::Institution(self.id),
            outcome: SagaOutcome {
                kind: SagaKind::Merge,
                result,
                spent_coin_ids: spent,
                decided_at_ms: if result.is_ok() { m.decided_ms } else { 0 },
            },
        });
    }

    fn on_merge_request(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedMergeAuthorization,
        now_ms: u64,
        out: &mut Out,
    ) {
        if signed.authorization.saga_id != saga {
            self.merge_outcome(saga, from, Err(AbortReason::Conflict), vec![], out);
            return;
        }
        if let Some(m) = self.sagas.merges.get(&saga) {
            if m.digest != signed.digest() {
                self.merge_outcome(saga, from, Err(AbortReason::Conflict), vec![], out);
                return;
            }
            // A duplicate: answer with the recorded outcome once there is one.
            match m.step.saga_state() {
                (SagaState::Committed, _) => {
                    let spent = signed.authorization.coins.iter().map(|c| c.id).collect();
                    self.merge_outcome(saga, from, Ok(()), spent, out)
                }
                (SagaState::Aborted, reason) => {
                    let reason = reason.expect("an aborted saga has a reason");
                    self.merge_outcome(saga, from, Err(reason), vec![], out)
                }
                (SagaState::InProgress | SagaState::Unknown, _) => {}
            }
            return;
        }
        if let Err(reason) = self.check_merge_request(&signed, now_ms) {
            self.record(
                InstitutionEvent::Merge(MergeEvent::Refused {
                    authorization: signed,
                    requester: from,
                    at_ms: now_ms,
                    reason,
                }),
                out,
            );
            self.announce_merge(saga, Err(reason), out);
            return;
        }
        let issuers = signed.authorization.issuers();
        self.record(
            InstitutionEvent::Merge(MergeEvent::Started {
                authorization: signed.clone(),
                requester: from,
                at_ms: now_ms,
            }),
            out,
        );
        for issuer in issuers {
            let lock = Payload::Merge(MergeMessage::LockRequest(signed.clone()));
            out.send(self.envelope(saga, Address::Institution(issuer), 0, lock));
        }
        out.timer(
            self.limits.saga_timeout_ms,
            InstitutionTimer::LockTimeout(saga),
        );
        out.timer(
            self.backoff_ms(0),
            InstitutionTimer::Retry { saga, attempt: 1 },
        );
    }

    pub(super) fn on_merge_lock_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        reply: Result<Amount, AbortReason>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(m) = self.sagas.merges.get(&saga) else {
            // A redemption's coordinator hears `OfflineMessage::ClaimReply`, never a lock reply.
            return;
        };
        let Address::Institution(issuer) = from else {
            return;
        };
        if m.step != MergeStep::Locking
            || !m.issuers().contains(&issuer)
            || m.locked.contains_key(&issuer)
        {
            return; // late or duplicate reply, or not an issuer of this merge
        }
        match reply {
            Ok(total) => {
                self.record(
                    InstitutionEvent::Merge(MergeEvent::Locked {
                        saga,
                        issuer,
                        total,
                    }),
                    out,
                );
                let m = &self.sagas.merges[&saga];
                if m.locked.len() == m.issuers().len() {
                    self.decide_merge(saga, now_ms, out);
                }
            }
            Err(reason) => {
                // The refusing issuer holds nothing; every other one may.
                let release = m.issuers().into_iter().filter(|i| *i != issuer).collect();
                self.abort_merge(saga, reason, release, out);
            }
        }
    }

    /// Every issuer locked: commit if the locks add up to what the wallet signed for.
    fn decide_merge(&mut self, saga: SagaId, now_ms: u64, out: &mut Out) {
        let m = &self.sagas.merges[&saga];
        let a = &m.authorization.authorization;
        let sum = Amount::sum(m.locked.values().copied());
        if sum != Some(a.total) {
            // The wallet's total does not match its coins: never issue a coin of another sum.
            self.abort_merge(saga, AbortReason::InvalidAmount, m.issuers(), out);
            return;
        }
        let (wallet, key) = (a.wallet, a.wallet_key);
        let coin = self.issue(key, a.total, saga, self.next_nonce, now_ms);
        self.record(
            InstitutionEvent::Merge(MergeEvent::CommitDecided {
                saga,
                coin: coin.clone(),
            }),
            out,
        );
        // The coordinator's record covers the whole merged sum (its own coins included); every
        // other issuer makes its own record of its share when it retires its coins.
        let total = self.sagas.merges[&saga].authorization.authorization.total;
        Movement {
            saga,
            kind: RecordKind::Merge,
            payer: wallet,
            payee: wallet,
            amount: total,
            at_ms: now_ms,
        }
        .emit(self.id, out);
        self.send_merge_commit(saga, 0, out);
        out.send(self.envelope(saga, Address::Wallet(wallet), 0, Payload::CoinIssued(coin)));
        self.announce_merge(saga, Ok(()), out);
    }

    /// Sends the decision commit to every issuer, and every backing move, not yet
    /// acknowledged.
    fn send_merge_commit(&self, saga: SagaId, attempt: u32, out: &mut Out) {
        let m = &self.sagas.merges[&saga];
        let MergeStep::Committing {
            issuers_done,
            backing_done,
            ..
        } = &m.step
        else {
            return;
        };
        for issuer in m.issuers() {
            if !issuers_done.contains(&issuer) {
                out.send(self.envelope(
                    saga,
                    Address::Institution(issuer),
                    attempt,
                    Payload::CommitRequest {
                        decided_at_ms: m.decided_ms,
                    },
                ));
            }
            if issuer != self.id && !backing_done.contains(&issuer) {
                let amount = m.locked[&issuer];
                out.send(self.envelope(
                    backing_key(saga, issuer),
                    Address::CentralBank,
                    attempt,
                    Payload::MoveBacking {
                        from: issuer,
                        to: self.id,
                        amount,
                    },
                ));
            }
        }
    }

    fn abort_merge(
        &mut self,
        saga: SagaId,
        reason: AbortReason,
        release: BTreeSet<InstitutionId>,
        out: &mut Out,
    ) {
        self.record(
            InstitutionEvent::Merge(MergeEvent::AbortDecided {
                saga,
                reason,
                release: release.clone(),
            }),
            out,
        );
        for issuer in release {
            out.send(self.envelope(
                saga,
                Address::Institution(issuer),
                0,
                Payload::AbortRequest { reason },
            ));
        }
        self.announce_merge(saga, Err(reason), out);
    }

    pub(super) fn on_merge_commit_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        reply: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let Address::Institution(issuer) = from else {
            return;
        };
        let m = &self.sagas.merges[&saga];
        let waiting = matches!(&m.step, MergeStep::Committing { issuers_done, .. }
            if m.issuers().contains(&issuer) && !issuers_done.contains(&issuer));
        match reply {
            Ok(()) if waiting => self.record(
                InstitutionEvent::Merge(MergeEvent::IssuerDone { saga, issuer }),
                out,
            ),
            Ok(()) => {}
            Err(reason) => {
                metrics::counter!("specie_protocol_violations_total", "what" => "merge_commit_refused").increment(1);
                eprintln!(
                    "{}: {issuer} refused the commit of merge {saga}: {reason}",
                    self.id
                );
            }
        }
    }

    pub(super) fn on_merge_abort_reply(&mut self, from: Address, saga: SagaId, out: &mut Out) {
        let Address::Institution(issuer) = from else {
            return;
        };
        let waiting = matches!(&self.sagas.merges[&saga].step, MergeStep::Aborting { release, released, .. }
            if release.contains(&issuer) && !released.contains(&issuer));
        if waiting {
            self.record(
                InstitutionEvent::Merge(MergeEvent::IssuerDone { saga, issuer }),
                out,
            );
        }
    }

    pub(super) fn on_merge_backing_ack(
        &mut self,
        key: SagaId,
        ack: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let (saga, issuer) = self.sagas.backing_keys[&key];
        let waiting = matches!(&self.sagas.merges[&saga].step, MergeStep::Committing { backing_done, .. }
            if !backing_done.contains(&issuer));
        match ack {
            Ok(()) if waiting => self.record(
                InstitutionEvent::Merge(MergeEvent::BackingDone { saga, issuer }),
                out,
            ),
            Ok(()) => {}
            Err(reason) => {
                metrics::counter!("specie_protocol_violations_total", "what" => "merge_backing_refused").increment(1);
                eprintln!("{}: central bank refused the backing move of merge {saga} from {issuer}: {reason}", self.id);
            }
        }
    }

    pub(super) fn on_merge_timer(&mut self, key: InstitutionTimer, out: &mut Out) {
        match key {
            InstitutionTimer::LockTimeout(saga) => {
                let m = &self.sagas.merges[&saga];
                if m.step == MergeStep::Locking {
                    // Any issuer may have locked with its reply lost: release them all.
                    self.abort_merge(saga, AbortReason::Timeout, m.issuers(), out);
                }
            }
            InstitutionTimer::Retry { saga, attempt } => {
                let m = &self.sagas.merges[&saga];
                match &m.step {
                    MergeStep::Locking => {
                        for issuer in m
                            .issuers()
                            .into_iter()
                            .filter(|i| !m.locked.contains_key(i))
                        {
                            let lock =
                                Payload::Merge(MergeMessage::LockRequest(m.authorization.clone()));
                            out.send(self.envelope(
                                saga,
                                Address::Institution(issuer),
                                attempt,
                                lock,
                            ));
                        }
                    }
                    MergeStep::Committing { .. } => self.send_merge_commit(saga, attempt, out),
                    MergeStep::Aborting {
                        reason,
                        release,
                        released,
                    } => {
                        for issuer in release.difference(released) {
                            let abort = Payload::AbortRequest { reason: *reason };
                            out.send(self.envelope(
                                saga,
                                Address::Institution(*issuer),
                                attempt,
                                abort,
                            ));
                        }
                    }
                    MergeStep::Committed { .. } | MergeStep::Aborted { .. } => return,
                }
                out.timer(
                    self.backoff_ms(attempt),
                    InstitutionTimer::Retry {
                        saga,
                        attempt: attempt + 1,
                    },
                );
            }
            _ => unreachable!("routed by on_saga_timer"),
        }
    }

    // ----- issuer: lock its coins of a merge -----

    fn on_merge_lock_request(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedMergeAuthorization,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Institution(coordinator) = from else {
            return;
        };
        let reply = |inst: &Self, r: Result<Amount, AbortReason>, out: &mut Out| {
            out.send(inst.envelope(saga, from, 0, Payload::LockReply(r)));
        };
        if signed.authorization.saga_id != saga {
            reply(self, Err(AbortReason::PayeeMismatch), out);
            return;
        }
        let digest = signed.digest();
        let answer = self.lock_step(saga, digest, coordinator, now_ms, out, |inst| {
            // A merge's lock is a payment's lock of the whole total: on commit the issuer
            // retires the coins and, the amount being the total, issues no change.
            let a = &signed.authorization;
            inst.check_merge_lock(&signed, coordinator, now_ms)
                .map(|(coin_ids, total)| LockFacts {
                    coin_ids,
                    total,
                    amount: total,
                    payer: a.wallet,
                    payer_key: a.wallet_key,
                    payee: a.wallet,
                    kind: RecordKind::Merge,
                })
        });
        reply(self, answer, out);
    }

    /// Applies a merge event.
    pub(in super::super) fn apply_merge(&mut self, event: &MergeEvent) {
        match event {
            MergeEvent::Started {
                authorization,
                requester,
                at_ms,
            } => {
                let saga = authorization.authorization.saga_id;
                let (institution, issuers) = (
                    authorization.authorization.institution,
                    authorization.authorization.issuers(),
                );
                self.sagas.merges.insert(
                    saga,
                    MergeSaga {
                        digest: authorization.digest(),
                        authorization: authorization.clone(),
                        requester: *requester,
                        started_ms: *at_ms,
                        locked: BTreeMap::new(),
                        step: MergeStep::Locking,
                        decided_ms: 0,
                    },
                );
                self.sagas.index_backing(saga, institution, issuers);
            }
            MergeEvent::Refused {
                authorization,
                requester,
                at_ms,
                reason,
            } => {
                self.sagas.merges.insert(
                    authorization.authorization.saga_id,
                    MergeSaga {
                        digest: authorization.digest(),
                        authorization: authorization.clone(),
                        requester: *requester,
                        started_ms: *at_ms,
                        locked: BTreeMap::new(),
                        step: MergeStep::Aborted { reason: *reason },
                        decided_ms: 0,
                    },
                );
            }
            MergeEvent::Locked {
                saga,
                issuer,
                total,
            } => {
                let m = self
                    .sagas
                    .merges
                    .get_mut(saga)
                    .expect("locked merge exists");
                m.locked.insert(*issuer, *total);
            }
            MergeEvent::CommitDecided { saga, coin } => {
                self.register_coin(coin);
                let m = self
                    .sagas
                    .merges
                    .get_mut(saga)
                    .expect("decided merge exists");
                m.step = MergeStep::Committing {
                    coin: coin.id,
                    issuers_done: BTreeSet::new(),
                    backing_done: BTreeSet::new(),
                };
                // The merged coin is issued at the decision.
                m.decided_ms = coin.body.issued_at_ms;
            }
            MergeEvent::AbortDecided {
                saga,
                reason,
                release,
            } => {
                let m = self
                    .sagas
                    .merges
                    .get_mut(saga)
                    .expect("decided merge exists");
                m.step = if release.is_empty() {
                    MergeStep::Aborted { reason: *reason }
                } else {
                    MergeStep::Aborting {
                        reason: *reason,
                        release: release.clone(),
                        released: BTreeSet::new(),
                    }
                };
            }
            MergeEvent::IssuerDone { saga, issuer } => {
                let m = self
                    .sagas
                    .merges
                    .get_mut(saga)
                    .expect("acknowledged merge exists");
                let mut unlocked = None;
                match &mut m.step {
                    MergeStep::Committing { issuers_done, .. } => {
                        issuers_done.insert(*issuer);
                    }
                    MergeStep::Aborting {
                        reason,
                        release,
                        released,
                    } => {
                        released.insert(*issuer);
                        if released == release {
                            unlocked = Some(*reason);
                        }
                    }
                    _ => {}
                }
                if let Some(reason) = unlocked {
                    m.step = MergeStep::Aborted { reason };
                }
                m.finish_commit(self.id);
            }
            MergeEvent::BackingDone { saga, issuer } => {
                let m = self
                    .sagas
                    .merges
                    .get_mut(saga)
                    .expect("acknowledged merge exists");
                if let MergeStep::Committing { backing_done, .. } = &mut m.step {
                    backing_done.insert(*issuer);
                }
                m.finish_commit(self.id);
            }
        }
    }
}

impl MergeSaga {
    /// A committing merge is committed once every issuer retired its coins and every other
    /// issuer's backing moved to the coordinator.
    fn finish_commit(&mut self, coordinator: InstitutionId) {
        let issuers = self.issuers();
        if let MergeStep::Committing {
            coin,
            issuers_done,
            backing_done,
        } = &self.step
        {
            let moved = issuers
                .iter()
                .filter(|i| **i != coordinator)
                .all(|i| backing_done.contains(i));
            if *issuers_done == issuers && moved {
                self.step = MergeStep::Committed { coin: *coin };
            }
        }
    }
}
