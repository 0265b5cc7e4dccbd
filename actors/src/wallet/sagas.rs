//! The wallet's side of merge, split and offline payment (DESIGN.md §3.2, §3.3): its state
//! ([`WalletSagas`]), journaled events ([`SagaWalletEvent`]), commands ([`OfflineCommand`]
//! besides `WalletCommand::Merge` and `WalletCommand::Split`), and the router that hands it
//! envelopes and timers before the pay saga's handlers see them.
//!
//! - **Merge**: the wallet signs one authorization over the coins (with their issuers) and
//!   their total, and sends it to its own institution, which coordinates; the merged coin
//!   arrives from its institution, the inputs are gone once the merge commits.
//! - **Split**: the wallet signs a split of one coin and sends it to the coin's issuer.
//! - **Offline** (`offline.rs`): pay without the network by splitting a coin or a received
//!   chain and signing the transfers in the key store; receive a chain; redeem chains at the
//!   wallet's institution; sync (upload the records signed offline, which frees the offline
//!   limit, and redeem every chain held).

#[path = "offline.rs"]
mod offline;

pub use offline::{OfflineCommand, OfflineSnapshot, OfflineSource, CHAINS_HELD_MAX};

use super::update::{UpdateOp, UpdateStep};
use super::{Out, Wallet, WalletEvent, WalletOp, WalletTimer};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::merge::{
    CoinRef, MergeAuthorization, MergeMessage, SignedMergeAuthorization, MERGE_COINS_MAX,
};
use specie_protocol::offline::{
    ChainId, DoubleSpend, OfflineMessage, SignedSplitAuthorization, SignedTransfer,
    SplitAuthorization, TrustChain,
};
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, Envelope, KeyStore, Payload, SagaId, SagaKind,
    SagaState,
};
use specie_runtime::{Notice, StateMachine};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::LazyLock;

/// The most double-spend reports a wallet keeps (the oldest are dropped; the count stays).
pub const DOUBLE_SPEND_REPORTS_MAX: usize = 64;

/// Settings of the wallet's offline payments and local coin selection (not state: they come
/// from the config, like [`super::WalletLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineSettings {
    /// `limits.offline_limit_fen`: the most the wallet may pay offline before it syncs (its
    /// parameters' own offline limit applies too, whichever is lower).
    pub offline_limit: Amount,
    /// `limits.coin_inputs_max`: the most coins a payment the wallet selects itself spends.
    pub coin_inputs_max: usize,
    /// `limits.wallet_selects_coins`: pay at once with held coins that cover the amount
    /// instead of asking the institution which coins do.
    pub select_own_coins: bool,
}

impl Default for OfflineSettings {
    /// Offline payments off, until the blueprint sets the configured limit.
    fn default() -> Self {
        OfflineSettings {
            offline_limit: Amount::ZERO,
            coin_inputs_max: specie_protocol::pay::AUTHORIZATION_COINS_MAX,
            select_own_coins: false,
        }
    }
}

/// A merge, split, redemption or sync in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaOp {
    /// Merging coins at the wallet's institution.
    Merge {
        /// The signed request.
        signed: SignedMergeAuthorization,
    },
    /// Splitting a coin at its issuer.
    Split {
        /// The signed request.
        signed: SignedSplitAuthorization,
    },
    /// Redeeming a chain at the wallet's institution.
    Redeem {
        /// The chain.
        chain: ChainId,
        /// The sync that started it, if any.
        sync: Option<SagaId>,
    },
    /// Syncing: uploading offline records and redeeming the chains held.
    Sync {
        /// The highest sequence uploaded.
        uploaded_to: u64,
        /// The institution acknowledged the upload.
        upload_done: bool,
        /// Redemptions this sync started that have not ended.
        redemptions: BTreeSet<SagaId>,
    },
}

impl SagaOp {
    fn kind(&self) -> SagaKind {
        match self {
            SagaOp::Merge { .. } => SagaKind::Merge,
            SagaOp::Split { .. } => SagaKind::Split,
            SagaOp::Redeem { .. } => SagaKind::OfflineRedeem,
            SagaOp::Sync { .. } => SagaKind::OfflineSync,
        }
    }

    /// The coins the operation may spend.
    fn coins(&self) -> Vec<CoinId> {
        match self {
            SagaOp::Merge { signed } => signed.authorization.coins.iter().map(|c| c.id).collect(),
            SagaOp::Split { signed } => vec![signed.authorization.coin_id],
            SagaOp::Redeem { .. } | SagaOp::Sync { .. } => Vec::new(),
        }
    }
}

/// A trust chain the wallet holds (received, or its own remainder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(in super::super) struct HeldChain {
    chain: TrustChain,
    /// The redemption under way, if any.
    redeeming: Option<SagaId>,
}

/// The wallet's merge, split and offline state: its [`SagaBook`], allocated only once the
/// wallet starts one of those operations or takes a chain (most wallets never do, and inline
/// the book was 184 bytes of every wallet's actor), and the settings from the config.
///
/// Reads of an unallocated book see an empty one; the first write allocates it. It
/// serializes as its book, so snapshots keep their bytes.
#[derive(Debug, Clone, Default)]
pub(super) struct WalletSagas {
    book: Option<Box<SagaBook>>,
    /// From the config, not journaled (set again by the factory before any replay).
    settings: OfflineSettings,
}

/// What an unallocated [`WalletSagas`] reads as.
static EMPTY_BOOK: LazyLock<SagaBook> = LazyLock::new(SagaBook::default);

impl std::ops::Deref for WalletSagas {
    type Target = SagaBook;

    fn deref(&self) -> &SagaBook {
        self.book.as_deref().unwrap_or(&EMPTY_BOOK)
    }
}

impl std::ops::DerefMut for WalletSagas {
    fn deref_mut(&mut self) -> &mut SagaBook {
        self.book.get_or_insert_with(Box::default)
    }
}

impl Serialize for WalletSagas {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SagaBook::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for WalletSagas {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(WalletSagas {
            book: Some(Box::new(SagaBook::deserialize(deserializer)?)),
            settings: OfflineSettings::default(),
        })
    }
}

/// The journaled part of the wallet's merge, split and offline state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SagaBook {
    ops: BTreeMap<SagaId, SagaOp>,
    /// Chains held, not redeemed yet.
    chains: BTreeMap<ChainId, HeldChain>,
    /// Chains signed for a payee and not yet handed over.
    outbox: BTreeMap<SagaId, TrustChain>,
    /// Coins this wallet split offline, with when: no longer its to spend, though their
    /// issuer still shows them active until a chain is redeemed.
    spent_offline: BTreeMap<CoinId, (Coin, u64)>,
    /// Transfers signed offline and not yet acknowledged by the institution.
    unsynced: Vec<SignedTransfer>,
    /// The last offline sequence number used.
    sequence: u64,
    /// Redemptions of this wallet refused as offline double spends.
    double_spends_detected: u64,
    /// The latest double-spend reports, with the redemption they refused.
    reports: VecDeque<(SagaId, DoubleSpend)>,
}

impl SagaBook {
    /// Whether the wallet split this coin offline (a late delivery must not bring it back).
    pub(super) fn spent_offline(&self, coin: &CoinId) -> bool {
        self.spent_offline.contains_key(coin)
    }
}

/// Journaled facts of the wallet's merge, split and offline payments.
// Events live for one step; an offline payment's carries both chains it signed, and boxing
// them would add allocations to the step for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaWalletEvent {
    /// An operation started.
    OpStarted {
        /// Its saga.
        saga: SagaId,
        /// What.
        op: SagaOp,
    },
    /// An operation ended.
    OpFinished {
        /// Its saga.
        saga: SagaId,
        /// Outcome.
        result: Result<(), AbortReason>,
        /// Coins it spent (a committed merge or split).
        spent: Vec<CoinId>,
        /// A redemption's chain is worthless (redeemed, or refused for good).
        drop_chain: bool,
        /// When.
        at_ms: u64,
    },
    /// The payer signed an offline payment.
    OfflineSigned {
        /// Its saga.
        saga: SagaId,
        /// What it split.
        source: OfflineSource,
        /// The payee's chain.
        paid: TrustChain,
        /// The payer's remainder, if anything is left.
        remainder: Option<TrustChain>,
        /// When.
        at_ms: u64,
    },
    /// The payee took the chain: it leaves the payer's outbox.
    HandedOver {
        /// The offline payment.
        saga: SagaId,
    },
    /// The payee received a chain.
    ChainReceived {
        /// The offline payment.
        saga: SagaId,
        /// The chain.
        chain: TrustChain,
        /// When.
        at_ms: u64,
    },
    /// The institution has the offline records up to `sequence`.
    Synced {
        /// The sync.
        saga: SagaId,
        /// The highest sequence on record.
        sequence: u64,
    },
    /// The institution reported who double-spent a chain this wallet redeemed.
    DoubleSpendReported {
        /// The redemption.
        saga: SagaId,
        /// The attribution.
        report: DoubleSpend,
    },
    /// Coins split offline longer ago than the deduplication retention are forgotten.
    Pruned {
        /// The coins.
        coins: Vec<CoinId>,
    },
}

/// A derived saga id: `domain` over `saga` and `salt`, for sub-operations whose ids must be
/// the same when a step is replayed.
fn derived_saga(domain: &[u8], saga: SagaId, salt: &[u8]) -> SagaId {
    let mut input = domain.to_vec();
    input.extend_from_slice(&saga.0);
    input.extend_from_slice(salt);
    let digest = specie_protocol::crypto::sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    SagaId(id)
}

impl Wallet {
    /// Sets the offline limit and the local coin selection bound (from the config).
    pub fn with_offline_settings(mut self, settings: OfflineSettings) -> Wallet {
        self.sagas.settings = settings;
        self
    }

    /// Whether an envelope belongs to merge, split or offline payment here.
    pub(super) fn routes_to_sagas(&self, envelope: &Envelope) -> bool {
        match envelope.payload {
            Payload::Merge(_) | Payload::Offline(_) => true,
            Payload::SagaOutcome(_) | Payload::StatusReply { .. } => {
                self.sagas.ops.contains_key(&envelope.saga_id)
            }
            _ => false,
        }
    }

    /// Handles an envelope [`Wallet::routes_to_sagas`] claimed.
    pub(super) fn on_saga_envelope(&mut self, envelope: Envelope, now_ms: u64, out: &mut Out) {
        let (from, saga) = (envelope.from, envelope.saga_id);
        let from_coordinator = self.saga_coordinator(saga) == Some(from);
        match envelope.payload {
            Payload::SagaOutcome(outcome) if from_coordinator => {
                self.on_saga_outcome(saga, outcome, out)
            }
            Payload::StatusReply {
                state,
                reason,
                decided_at_ms,
            } if from_coordinator => {
                self.on_saga_status(saga, state, reason, decided_at_ms, now_ms, out)
            }
            Payload::Offline(OfflineMessage::SyncAck { sequence }) if from_coordinator => {
                self.on_sync_ack(saga, sequence, out)
            }
            Payload::Offline(OfflineMessage::DoubleSpendReport(report)) if from_coordinator => self
                .record(
                    WalletEvent::Sagas(SagaWalletEvent::DoubleSpendReported { saga, report }),
                    out,
                ),
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    /// The actor whose outcome counts for an operation: the coin's issuer for a split, the
    /// wallet's institution for everything else.
    fn saga_coordinator(&self, saga: SagaId) -> Option<Address> {
        Some(match self.sagas.ops.get(&saga)? {
            SagaOp::Split { signed } => Address::Institution(signed.authorization.issuer),
            SagaOp::Merge { .. } | SagaOp::Redeem { .. } | SagaOp::Sync { .. } => {
                Address::Institution(self.institution)
            }
        })
    }

    /// Whether a saga id is taken by any operation, running or finished.
    fn saga_taken(&self, saga: &SagaId) -> bool {
        self.ops.contains_key(saga)
            || self.finished.contains_key(saga)
            || self.sagas.ops.contains_key(saga)
    }

    /// Coins an operation in flight may spend: they are not offered to another.
    fn coins_in_flight(&self) -> HashSet<CoinId> {
        let mut coins: HashSet<CoinId> = self.sagas.ops.values().flat_map(SagaOp::coins).collect();
        for op in self.ops.values() {
            match op {
                WalletOp::Pay { chosen, signed, .. } => {
                    coins.extend(chosen.iter().flatten().copied());
                    coins.extend(
                        signed
                            .iter()
                            .flat_map(|s| s.authorization.coin_ids.iter().copied()),
                    );
                }
                // Coins being frozen in an escrow, or withdrawn by an update.
                WalletOp::Escrow(op) => coins.extend(op.spent_coins()),
                WalletOp::Update(UpdateOp {
                    step: UpdateStep::Withdrawing { signed },
                    ..
                }) => coins.extend(signed.authorization.coin_ids.iter().copied()),
                _ => {}
            }
        }
        coins
    }

    /// Whether an operation that may spend this wallet's coins is in flight (so that the
    /// coins it spends are not known yet, or are promised).
    fn spending_in_flight(&self) -> bool {
        let merging = self
            .sagas
            .ops
            .values()
            .any(|op| matches!(op, SagaOp::Merge { .. } | SagaOp::Split { .. }));
        merging
            || self.ops.values().any(|op| {
                !matches!(
                    op,
                    WalletOp::Collect { .. } | WalletOp::Exchange { .. } | WalletOp::Negotiate(_)
                )
            })
    }

    /// Coins for a payment chosen by the wallet itself, or `None` when the institution is to
    /// be asked. While coins it split offline are still active at their issuer the wallet
    /// always chooses (the institution might select one of them, and paying with it would
    /// spend it twice), even an empty selection; otherwise, with `select_own_coins`, it
    /// chooses when its free coins cover the amount.
    pub(super) fn wallet_selection(&self, amount: Amount) -> Option<Vec<CoinId>> {
        if !self.sagas.spent_offline.is_empty() {
            return Some(self.own_selection(amount));
        }
        if !self.sagas.settings.select_own_coins {
            return None;
        }
        let own = self.own_selection(amount);
        (!own.is_empty()).then_some(own)
    }

    /// Whether a selection names a coin this wallet does not hold, or one another of its
    /// operations is using: the institution selected it before a merge, split or escrow of
    /// the wallet took it (or before its delivery reached the wallet), and paying with it
    /// would fail at the issuer although the wallet can pay.
    pub(super) fn selection_is_stale(&self, coin_ids: &[CoinId]) -> bool {
        let busy = self.coins_in_flight();
        coin_ids
            .iter()
            .any(|id| !self.coins.contains_key(id) || busy.contains(id))
    }

    /// Coins covering `amount` chosen by the wallet from the coins it holds and no other
    /// operation uses (empty when they do not cover it). Only coins its own institution
    /// issued: a payment locks its coins at the payer's institution, so coins of other issuers
    /// must be merged first.
    pub(super) fn own_selection(&self, amount: Amount) -> Vec<CoinId> {
        let busy = self.coins_in_flight();
        let mut free: Vec<(Amount, CoinId)> = self
            .coins
            .values()
            .filter(|c| c.body.issuer == self.institution && !busy.contains(&c.id))
            .map(|c| (c.value(), c.id))
            .collect();
        // The same rule as the institution's: the smallest single coin that covers the
        // amount, else the largest coins first within the input limit.
        free.sort_unstable_by(|a, b| b.cmp(a));
        if let Some((_, id)) = free.iter().rev().find(|(v, _)| *v >= amount) {
            return vec![*id];
        }
        let mut chosen = Vec::new();
        let mut sum = Amount::ZERO;
        for (v, id) in free.iter().take(self.sagas.settings.coin_inputs_max) {
            chosen.push(*id);
            sum = sum.checked_add(*v).expect("supply fits u64");
            if sum >= amount {
                return chosen;
            }
        }
        Vec::new()
    }

    /// An institution's coin selection (`BalanceReply`) naming a coin this wallet split
    /// offline — its issuer still shows it active until a chain of it is redeemed — becomes
    /// no selection: the operation that asked is refused for insufficient funds instead of
    /// spending the coin twice. Every other envelope passes unchanged.
    pub(in super::super) fn without_coins_spent_offline(&self, mut envelope: Envelope) -> Envelope {
        if let Payload::BalanceReply { coin_ids, .. } = &mut envelope.payload {
            if coin_ids
                .iter()
                .any(|id| self.sagas.spent_offline.contains_key(id))
            {
                metrics::counter!("specie_offline_spent_coins_unselected_total").increment(1);
                coin_ids.clear();
            }
        }
        envelope
    }

    // ----- merge -----

    /// `WalletCommand::Merge`: merge these coins into one coin of the wallet's institution.
    pub(super) fn on_merge_command(
        &mut self,
        saga: SagaId,
        coins: Vec<CoinId>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let refuse = |w: &Self, reason, out: &mut Out| w.refuse(saga, SagaKind::Merge, reason, out);
        if self.saga_taken(&saga) {
            return refuse(self, AbortReason::Conflict, out);
        }
        if coins.is_empty() {
            return refuse(self, AbortReason::EmptyRequest, out);
        }
        let mut seen = HashSet::with_capacity(coins.len());
        if !coins.iter().all(|c| seen.insert(*c)) {
            return refuse(self, AbortReason::DuplicateCoin, out);
        }
        if coins.len() > MERGE_COINS_MAX {
            return refuse(self, AbortReason::TooManyCoins, out);
        }
        let Some(held) = coins
            .iter()
            .map(|id| self.coins.get(id))
            .collect::<Option<Vec<&Coin>>>()
        else {
            return refuse(self, AbortReason::CoinNotOwned, out);
        };
        let busy = self.coins_in_flight();
        if coins.iter().any(|c| busy.contains(c)) {
            return refuse(self, AbortReason::CoinLocked, out);
        }
        let total = Amount::sum(held.iter().map(|c| c.value())).expect("supply fits u64");
        let signed = MergeAuthorization {
            saga_id: saga,
            wallet: self.id,
            wallet_key: self.keys.public_key(),
            institution: self.institution,
            coins: held
                .iter()
                .map(|c| CoinRef {
                    id: c.id,
                    issuer: c.body.issuer,
                })
                .collect(),
            total,
            expires_at_ms: now_ms + self.limits.authorization_ttl_ms,
        }
        .sign(self.keys.as_ref());
        let request = Payload::Merge(MergeMessage::Request(signed.clone()));
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OpStarted {
                saga,
                op: SagaOp::Merge { signed },
            }),
            out,
        );
        out.send(self.envelope(saga, Address::Institution(self.institution), 0, request));
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer { saga, attempt: 1 },
        );
    }

    // ----- split -----

    /// `WalletCommand::Split`: split a coin at its issuer into `amount` and the rest.
    pub(super) fn on_split_command(
        &mut self,
        saga: SagaId,
        coin: CoinId,
        amount: Amount,
        now_ms: u64,
        out: &mut Out,
    ) {
        let refuse = |w: &Self, reason, out: &mut Out| w.refuse(saga, SagaKind::Split, reason, out);
        if self.saga_taken(&saga) {
            return refuse(self, AbortReason::Conflict, out);
        }
        let Some(held) = self.coins.get(&coin) else {
            return refuse(self, AbortReason::CoinNotOwned, out);
        };
        if amount.is_zero() || amount >= held.value() {
            return refuse(self, AbortReason::InvalidAmount, out);
        }
        if self.coins_in_flight().contains(&coin) {
            return refuse(self, AbortReason::CoinLocked, out);
        }
        let issuer = held.body.issuer;
        let signed = SplitAuthorization {
            saga_id: saga,
            wallet: self.id,
            wallet_key: self.keys.public_key(),
            coin_id: coin,
            issuer,
            amount,
            expires_at_ms: now_ms + self.limits.authorization_ttl_ms,
        }
        .sign(self.keys.as_ref());
        let request = Payload::Offline(OfflineMessage::SplitRequest(signed.clone()));
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OpStarted {
                saga,
                op: SagaOp::Split { signed },
            }),
            out,
        );
        out.send(self.envelope(saga, Address::Institution(issuer), 0, request));
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer { saga, attempt: 1 },
        );
    }

    // ----- outcomes, status, timers -----

    fn on_saga_outcome(&mut self, saga: SagaId, outcome: SagaOutcome, out: &mut Out) {
        if outcome.kind != self.sagas.ops[&saga].kind() {
            return;
        }
        if outcome.result.is_ok() {
            self.ledger_saga_committed(saga, outcome.decided_at_ms, out);
        }
        self.finish_saga(saga, outcome.result, out);
    }

    /// The reconciliation platform's copy of the transaction records of a merge or redemption
    /// its coordinator committed at `decided_at_ms`, from the wallet's own knowledge (called
    /// before the operation finishes). A merge is recorded at the wallet's institution (the
    /// merged sum) and at every other issuer of its coins (the value of that issuer's coins,
    /// as the wallet held them); a redemption at the wallet's institution and at the coin's
    /// issuer when it is another. A split moves no value between wallets: no record.
    fn ledger_saga_committed(&self, saga: SagaId, decided_at_ms: u64, out: &mut Out) {
        match self.sagas.ops.get(&saga) {
            Some(SagaOp::Merge { signed }) => {
                let a = &signed.authorization;
                let merge = |amount| Movement {
                    saga,
                    kind: RecordKind::Merge,
                    payer: self.id,
                    payee: self.id,
                    amount,
                    at_ms: decided_at_ms,
                };
                merge(a.total).emit(a.institution, out);
                for issuer in a.issuers() {
                    if issuer == a.institution {
                        continue;
                    }
                    let share = a
                        .coins_of(issuer)
                        .iter()
                        .filter_map(|id| self.coins.get(id).map(|c| c.value().0))
                        .sum();
                    merge(Amount(share)).emit(issuer, out);
                }
            }
            Some(SagaOp::Redeem { chain, .. }) => {
                let Some(held) = self.sagas.chains.get(chain) else {
                    return;
                };
                let movement = Movement::redemption(saga, &held.chain, self.id, decided_at_ms);
                movement.emit(self.institution, out);
                let issuer = held.chain.coin.body.issuer;
                if issuer != self.institution {
                    movement.emit(issuer, out);
                }
            }
            _ => {}
        }
    }

    /// Ends an operation with its coordinator's verdict, and publishes it.
    fn finish_saga(&mut self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        let Some(op) = self.sagas.ops.get(&saga) else {
            return;
        };
        let kind = op.kind();
        let spent = if result.is_ok() {
            op.coins()
        } else {
            Vec::new()
        };
        let parent = match op {
            SagaOp::Redeem { sync, .. } => *sync,
            _ => None,
        };
        if matches!(op, SagaOp::Sync { .. }) && result.is_ok() {
            // Done only when its upload is acknowledged and its redemptions ended.
            let SagaOp::Sync {
                upload_done,
                redemptions,
                ..
            } = op
            else {
                unreachable!()
            };
            if !*upload_done || !redemptions.is_empty() {
                return;
            }
        }
        // A chain refused for a reason that will not change is worthless: drop it.
        let retryable = matches!(
            result,
            Err(AbortReason::Timeout
                | AbortReason::CoinLocked
                | AbortReason::SagaAborted
                | AbortReason::Conflict
                | AbortReason::Busy)
        );
        let drop_chain = matches!(op, SagaOp::Redeem { .. }) && !retryable;
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OpFinished {
                saga,
                result,
                spent: spent.clone(),
                drop_chain,
                at_ms: self.now_ms,
            }),
            out,
        );
        out.notice(Notice {
            saga_id: saga,
            source: Address::Wallet(self.id),
            outcome: SagaOutcome {
                kind,
                result,
                spent_coin_ids: spent,
                decided_at_ms: 0,
            },
        });
        if let Some(parent) = parent {
            // The sync that started this redemption may be done now.
            self.finish_saga(parent, Ok(()), out);
        }
    }

    fn on_saga_status(
        &mut self,
        saga: SagaId,
        state: SagaState,
        reason: Option<AbortReason>,
        decided_at_ms: u64,
        now_ms: u64,
        out: &mut Out,
    ) {
        match state {
            SagaState::Committed => {
                self.ledger_saga_committed(saga, decided_at_ms, out);
                self.finish_saga(saga, Ok(()), out)
            }
            SagaState::Aborted => {
                self.finish_saga(saga, Err(reason.unwrap_or(AbortReason::SagaAborted)), out)
            }
            SagaState::InProgress => {}
            SagaState::Unknown => {
                // The request may have been lost on the way: hand it over again while it can
                // still start; after its expiry (plus the lock timeout) it never can.
                let expires_at_ms = match &self.sagas.ops[&saga] {
                    SagaOp::Merge { signed } => Some(signed.authorization.expires_at_ms),
                    SagaOp::Split { signed } => Some(signed.authorization.expires_at_ms),
                    SagaOp::Redeem { .. } | SagaOp::Sync { .. } => None,
                };
                match expires_at_ms {
                    Some(at) if now_ms > at + self.limits.saga_timeout_ms => {
                        self.finish_saga(saga, Err(AbortReason::Expired), out)
                    }
                    _ => {
                        if let Some(request) = self.saga_request(saga, 1) {
                            out.send(request);
                        }
                    }
                }
            }
        }
    }

    /// The request that starts (or repeats) an operation's step at its coordinator.
    fn saga_request(&self, saga: SagaId, attempt: u32) -> Option<Envelope> {
        let to = self.saga_coordinator(saga)?;
        let payload = match &self.sagas.ops[&saga] {
            SagaOp::Merge { signed } => Payload::Merge(MergeMessage::Request(signed.clone())),
            SagaOp::Split { signed } => {
                Payload::Offline(OfflineMessage::SplitRequest(signed.clone()))
            }
            SagaOp::Redeem { chain, .. } => {
                let chain = self.sagas.chains.get(chain)?.chain.clone();
                Payload::Offline(OfflineMessage::RedeemRequest(chain))
            }
            SagaOp::Sync {
                upload_done: false, ..
            } => Payload::Offline(OfflineMessage::Sync {
                transfers: self.upload_batch(),
            }),
            SagaOp::Sync { .. } => return None,
        };
        Some(self.envelope(saga, to, attempt, payload))
    }

    /// Whether a timer belongs to a merge, split or offline operation.
    pub(super) fn owns_saga_timer(&self, key: &WalletTimer) -> bool {
        self.sagas.ops.contains_key(&key.saga)
    }

    /// Chases an operation whose outcome is slow: a sync repeats its upload (idempotent);
    /// the others ask their coordinator where the saga stands.
    pub(super) fn on_saga_timer(&mut self, key: WalletTimer, out: &mut Out) {
        let WalletTimer { saga, attempt } = key;
        let Some(to) = self.saga_coordinator(saga) else {
            return;
        };
        match &self.sagas.ops[&saga] {
            SagaOp::Sync {
                upload_done: true, ..
            } => {}
            SagaOp::Sync { .. } => {
                if let Some(request) = self.saga_request(saga, attempt) {
                    out.send(request);
                }
            }
            _ => out.send(self.envelope(saga, to, attempt, Payload::StatusQuery)),
        }
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer {
                saga,
                attempt: attempt + 1,
            },
        );
    }

    /// Re-arms the timers of every operation in flight (after a start or a restart).
    pub(super) fn on_sagas_start(&mut self, out: &mut Out) {
        for saga in self.sagas.ops.keys() {
            out.timer(
                self.limits.outcome_timeout_ms,
                WalletTimer {
                    saga: *saga,
                    attempt: 1,
                },
            );
        }
    }

    /// Operations in flight.
    pub(super) fn sagas_pending(&self) -> usize {
        self.sagas.ops.len()
    }

    /// Applies a merge, split or offline event.
    pub(super) fn apply_sagas(&mut self, event: &SagaWalletEvent) {
        match event {
            SagaWalletEvent::OpStarted { saga, op } => {
                if let SagaOp::Redeem { chain, sync } = op {
                    if let Some(held) = self.sagas.chains.get_mut(chain) {
                        held.redeeming = Some(*saga);
                    }
                    if let Some(SagaOp::Sync { redemptions, .. }) =
                        sync.and_then(|s| self.sagas.ops.get_mut(&s))
                    {
                        redemptions.insert(*saga);
                    }
                }
                self.sagas.ops.insert(*saga, op.clone());
            }
            SagaWalletEvent::OpFinished {
                saga,
                result,
                spent,
                drop_chain,
                at_ms,
            } => {
                let op = self.sagas.ops.remove(saga);
                self.finished.insert(*saga, (*result, *at_ms));
                for id in spent {
                    self.coins.remove(id);
                    self.spent.insert(*id, *at_ms);
                }
                if let Some(SagaOp::Redeem { chain, sync }) = op {
                    if result.is_ok() || *drop_chain {
                        self.sagas.chains.remove(&chain);
                    } else if let Some(held) = self.sagas.chains.get_mut(&chain) {
                        held.redeeming = None;
                    }
                    if *result == Err(AbortReason::OfflineDoubleSpend) {
                        self.sagas.double_spends_detected += 1;
                    }
                    if let Some(SagaOp::Sync { redemptions, .. }) =
                        sync.and_then(|s| self.sagas.ops.get_mut(&s))
                    {
                        redemptions.remove(saga);
                    }
                }
            }
            SagaWalletEvent::DoubleSpendReported { saga, report } => {
                if self.sagas.reports.len() == DOUBLE_SPEND_REPORTS_MAX {
                    self.sagas.reports.pop_front();
                }
                self.sagas.reports.push_back((*saga, report.clone()));
            }
            other => self.apply_offline(other),
        }
    }

    /// The saga state's part of the checkpoint.
    pub(super) fn sagas_checkpoint(&self) -> &WalletSagas {
        &self.sagas
    }

    /// Restores the saga state from a checkpoint, keeping the configured settings.
    pub(super) fn restore_sagas(&mut self, mut sagas: WalletSagas) {
        sagas.settings = self.sagas.settings;
        self.sagas = sagas;
    }
}
