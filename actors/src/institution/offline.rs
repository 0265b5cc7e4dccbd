//! Split and offline payment at an institution (DESIGN.md §3.3).
//!
//! - **Split** (the coin's issuer): one coin into two that sum to it, in one journaled step,
//!   checked by [`Institution::check_split`] against the owner's signed authorization.
//! - **Offline ledger** (the coin's issuer): a coin paid offline becomes a tree of signed
//!   transfers (see `specie_protocol::offline`). The issuer keeps, per coin, every claim made
//!   against it and checks each new claim with [`Institution::check_claim`]: every signature
//!   of the chain, and that under no node of the tree the transfers (and direct redemptions)
//!   sum to more than the node holds. A claim that would is an offline double spend,
//!   attributed to the signer of the transfer that overspends; it is refused and never
//!   creates value. The first claim locks the coin under its settlement saga
//!   ([`settlement_saga`]); the first committed claim spends it, and the ledger then owes the
//!   rest (`value - paid`) to the chains not yet redeemed: the "offline value in flight" the
//!   audit counts. A redeemed claim is paid with a new coin of the issuer, so no backing
//!   moves; the claimant can merge it into a coin of its own institution later.
//! - **Redemption** (the claimant's institution B coordinates, with the coin's issuer A):
//!
//! ```text
//!   OfflineRedeemRequest ──► Claiming ──claim reserved──► Committing ──issuer paid──► Committed
//!                              │        (decision: commit; retried until acknowledged)
//!                              ├──claim refused (double spend, bad chain…)─────────► Aborted
//!                              └──timeout──► Aborting ──claim released─────────────► Aborted
//! ```
//!
//!   When A is B the whole redemption is one journaled step.
//! - **Offline sync**: a wallet uploads the transfers it signed offline; its institution keeps
//!   the high-water sequence and acknowledges, which frees the wallet's offline limit.

use super::super::{CoinState, Institution, InstitutionEvent, InstitutionTimer, Out};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::{sha256, PublicKey};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::offline::{
    ChainId, DoubleSpend, OfflineMessage, SignedSplitAuthorization, SignedTransfer, TrustChain,
};
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, InstitutionId, KeyStore, Payload, SagaId, SagaKind,
    SagaState, WalletId,
};
use specie_runtime::{Notice, StateMachine};
use std::collections::{BTreeMap, HashMap};

/// The saga under which a coin redeemed offline is locked (first claim reserved) and then
/// spent (first claim paid) in its issuer's register.
pub fn settlement_saga(coin: CoinId) -> SagaId {
    let mut input = b"specie/v1/offline-settlement".to_vec();
    input.extend_from_slice(&coin.0);
    let digest = sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    SagaId(id)
}

/// The digest a claim is deduplicated by: the chain and who claims it.
fn claim_digest(chain: ChainId, claimant: WalletId) -> [u8; 32] {
    let mut input = chain.0.to_vec();
    input.extend_from_slice(&claimant.0.to_be_bytes());
    sha256(&input)
}

// ----- split -----

/// A split performed here, as its issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in super::super) struct SplitRecord {
    digest: [u8; 32],
    wallet: WalletId,
    coin: CoinId,
    outputs: Vec<CoinId>,
    result: Result<(), AbortReason>,
    pub(in super::super) at_ms: u64,
}

impl SplitRecord {
    pub(in super::super) fn saga_state(&self) -> (SagaState, Option<AbortReason>) {
        match self.result {
            Ok(()) => (SagaState::Committed, None),
            Err(reason) => (SagaState::Aborted, Some(reason)),
        }
    }

    pub(in super::super) fn summary(&self) -> SplitSummary {
        SplitSummary {
            wallet: self.wallet,
            coin: self.coin,
            outputs: self.outputs.clone(),
            result: self.result,
        }
    }
}

/// A split as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    /// The owning wallet.
    pub wallet: WalletId,
    /// The coin split.
    pub coin: CoinId,
    /// The two new coins (none when refused).
    pub outputs: Vec<CoinId>,
    /// Committed, or refused with the reason.
    pub result: Result<(), AbortReason>,
}

// ----- the issuer's offline ledger -----

/// One transfer of a claimed chain, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hop {
    parent: [u8; 32],
    node: [u8; 32],
    amount: Amount,
    signer: WalletId,
    signer_key: PublicKey,
    sequence: u64,
    receiver: WalletId,
    receiver_key: PublicKey,
}

impl Hop {
    fn of(chain: &TrustChain) -> Vec<Hop> {
        chain
            .transfers
            .iter()
            .map(|t| {
                let r = &t.record;
                Hop {
                    parent: r.parent,
                    node: t.digest(),
                    amount: r.amount,
                    signer: r.from,
                    signer_key: r.from_key,
                    sequence: r.sequence,
                    receiver: r.to,
                    receiver_key: r.to_key,
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LedgerClaim {
    hops: Vec<Hop>,
    committed: bool,
}

impl LedgerClaim {
    fn leaf(&self) -> &Hop {
        self.hops.last().expect("a claimed chain has a transfer")
    }
}

/// What a node of a coin's transfer tree gives away: a transfer to a child, or its own
/// direct redemption (which consumes all it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outflow {
    Transfer([u8; 32]),
    Redeemed,
}

/// The issuer's ledger of one coin claimed offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in super::super) struct Ledger {
    value: Amount,
    /// Sum of the committed claims.
    paid: Amount,
    /// Every reserved or committed claim, by its saga.
    claims: BTreeMap<SagaId, LedgerClaim>,
}

type Refusal = (AbortReason, Option<DoubleSpend>);

impl Ledger {
    /// Checks a new claim (its hops) against the claims already made; its value on success.
    fn check(&self, coin: CoinId, hops: &[Hop]) -> Result<Amount, Refusal> {
        let leaf = hops.last().expect("checked: the chain has a transfer");
        if let Some(c) = self.claims.values().find(|c| c.leaf().node == leaf.node) {
            // This very chain (or one ending in the same transfer) is already claimed.
            let reason = if c.committed {
                AbortReason::CoinSpent
            } else {
                AbortReason::CoinLocked
            };
            return Err((reason, None));
        }
        // What each node gives away, counting committed claims only, and all claims.
        let mut committed: HashMap<[u8; 32], BTreeMap<Outflow, Amount>> = HashMap::new();
        let mut all: HashMap<[u8; 32], BTreeMap<Outflow, Amount>> = HashMap::new();
        for c in self.claims.values() {
            for h in &c.hops {
                all.entry(h.parent)
                    .or_default()
                    .insert(Outflow::Transfer(h.node), h.amount);
                if c.committed {
                    committed
                        .entry(h.parent)
                        .or_default()
                        .insert(Outflow::Transfer(h.node), h.amount);
                }
            }
            let l = c.leaf();
            all.entry(l.node)
                .or_default()
                .insert(Outflow::Redeemed, l.amount);
            if c.committed {
                committed
                    .entry(l.node)
                    .or_default()
                    .insert(Outflow::Redeemed, l.amount);
            }
        }
        let used = |m: &HashMap<[u8; 32], BTreeMap<Outflow, Amount>>, node: &[u8; 32]| -> u128 {
            m.get(node)
                .map_or(0, |o| o.values().map(|a| u128::from(a.0)).sum())
        };
        let double_spend = |h: &Hop| DoubleSpend {
            coin_id: coin,
            signer: h.signer,
            signer_key: h.signer_key,
            sequence: h.sequence,
        };
        let mut held = self.value;
        for h in hops {
            let known = all
                .get(&h.parent)
                .is_some_and(|o| o.contains_key(&Outflow::Transfer(h.node)));
            if !known {
                // The first transfer no earlier claim made: it must fit in what its parent
                // still holds. Everything below it is new too, and the chain's own check
                // already bounds each transfer by its parent.
                let cap = u128::from(held.0);
                let amount = u128::from(h.amount.0);
                if used(&committed, &h.parent) + amount > cap {
                    return Err((AbortReason::OfflineDoubleSpend, Some(double_spend(h))));
                }
                if used(&all, &h.parent) + amount > cap {
                    // Only a claim still undecided makes it too much: ask again later.
                    return Err((AbortReason::CoinLocked, None));
                }
                return Ok(leaf.amount);
            }
            held = h.amount;
        }
        // Every transfer of the chain is part of earlier claims: its holder passed the leaf
        // on and now redeems it too.
        if used(&committed, &leaf.node) > 0 {
            let onward = self
                .claims
                .values()
                .filter(|c| c.committed)
                .flat_map(|c| c.hops.iter())
                .find(|h| h.parent == leaf.node)
                .map_or(leaf.sequence, |h| h.sequence);
            return Err((
                AbortReason::OfflineDoubleSpend,
                Some(DoubleSpend {
                    coin_id: coin,
                    signer: leaf.receiver,
                    signer_key: leaf.receiver_key,
                    sequence: onward,
                }),
            ));
        }
        Err((AbortReason::CoinLocked, None))
    }

    /// The value the ledger still owes to chains not redeemed yet, once the coin is spent
    /// (before the first payment the coin itself still counts).
    fn outstanding(&self) -> Amount {
        if self.paid.is_zero() {
            Amount::ZERO
        } else {
            self.value
                .checked_sub(self.paid)
                .expect("claims never exceed the coin")
        }
    }

    pub(in super::super) fn summary(&self) -> LedgerSummary {
        LedgerSummary {
            value: self.value,
            paid: self.paid,
            outstanding: self.outstanding(),
            claims: self
                .claims
                .iter()
                .map(|(s, c)| (*s, c.leaf().amount, c.committed))
                .collect(),
        }
    }
}

/// An offline ledger as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSummary {
    /// The coin's value.
    pub value: Amount,
    /// Paid to committed claims.
    pub paid: Amount,
    /// Owed to chains not redeemed yet, once the coin is spent (`value - paid`; zero while
    /// no claim has been paid, as the coin itself is then still outstanding).
    pub outstanding: Amount,
    /// Every reserved or committed claim: (saga, amount, committed).
    pub claims: Vec<(SagaId, Amount, bool)>,
}

/// Where the issuer's record of a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimState {
    /// Reserved in the ledger; waiting for the coordinator's decision.
    Reserved,
    /// Paid: the claimant's coin is issued.
    Committed,
    /// Refused when claimed.
    Refused(AbortReason),
    /// Released by the coordinator's abort.
    Released,
}

/// The issuer's record of a claim, by the claiming saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in super::super) struct ClaimRecord {
    digest: [u8; 32],
    coordinator: InstitutionId,
    coin: CoinId,
    claimant: WalletId,
    claimant_key: PublicKey,
    amount: Amount,
    /// The wallet that paid the chain offline (its last transfer's signer): the payer of the
    /// claim's transaction record.
    payer: WalletId,
    pub(in super::super) state: ClaimState,
    double_spend: Option<DoubleSpend>,
    issued: Option<CoinId>,
    pub(in super::super) at_ms: u64,
}

impl ClaimRecord {
    pub(in super::super) fn summary(&self) -> ClaimSummary {
        ClaimSummary {
            coordinator: self.coordinator,
            coin: self.coin,
            claimant: self.claimant,
            amount: self.amount,
            state: self.state,
            double_spend: self.double_spend.clone(),
            issued: self.issued,
        }
    }
}

/// A claim as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSummary {
    /// The coordinating institution.
    pub coordinator: InstitutionId,
    /// The claimed chain's coin.
    pub coin: CoinId,
    /// The chain's holder.
    pub claimant: WalletId,
    /// The chain's value.
    pub amount: Amount,
    /// Where it stands.
    pub state: ClaimState,
    /// The offline double spend that refused it, with who made it.
    pub double_spend: Option<DoubleSpend>,
    /// The coin paid to the claimant.
    pub issued: Option<CoinId>,
}

// ----- the redemption coordinator -----

/// Where a redemption stands at its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedeemStep {
    /// Claim sent to the issuer, no decision yet. A timeout aborts.
    Claiming,
    /// Decided commit (durable); waiting for the issuer to pay the claimant.
    Committing,
    /// Decided abort after a claim may have been reserved; waiting for its release.
    Aborting {
        /// Why.
        reason: AbortReason,
    },
    /// Terminal: committed (the issuer issued the claimant's coin).
    Committed,
    /// Terminal: aborted.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
}

impl RedeemStep {
    /// The saga's state as reported to parties.
    pub fn saga_state(self) -> (SagaState, Option<AbortReason>) {
        match self {
            RedeemStep::Claiming => (SagaState::InProgress, None),
            RedeemStep::Committing | RedeemStep::Committed => (SagaState::Committed, None),
            RedeemStep::Aborting { reason } | RedeemStep::Aborted { reason } => {
                (SagaState::Aborted, Some(reason))
            }
        }
    }

    /// Terminal: nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, RedeemStep::Committed | RedeemStep::Aborted { .. })
    }
}

/// A redemption coordinated here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in super::super) struct Redemption {
    chain: TrustChain,
    digest: [u8; 32],
    claimant: WalletId,
    requester: Address,
    pub(in super::super) started_ms: u64,
    pub(in super::super) step: RedeemStep,
    double_spend: Option<DoubleSpend>,
    /// When commit was decided (0 before): the time of the redemption's transaction records.
    pub(in super::super) decided_ms: u64,
}

impl Redemption {
    fn issuer(&self) -> InstitutionId {
        self.chain.coin.body.issuer
    }

    pub(in super::super) fn summary(&self) -> RedemptionSummary {
        RedemptionSummary {
            issuer: self.issuer(),
            claimant: self.claimant,
            coin: self.chain.coin.id,
            chain: self.chain.id(),
            amount: self.chain.value(),
            step: self.step,
            double_spend: self.double_spend.clone(),
        }
    }
}

/// A redemption as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedemptionSummary {
    /// The coin's issuer.
    pub issuer: InstitutionId,
    /// The chain's holder, who is paid.
    pub claimant: WalletId,
    /// The chain's coin.
    pub coin: CoinId,
    /// The chain.
    pub chain: ChainId,
    /// The chain's value.
    pub amount: Amount,
    /// Where it stands.
    pub step: RedeemStep,
    /// The offline double spend that refused it.
    pub double_spend: Option<DoubleSpend>,
}

/// Offline records a customer uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// The highest sequence number on record.
    pub sequence: u64,
    /// Records received.
    pub records: u64,
    /// Sum of the amounts they paid to other wallets.
    pub paid: Amount,
}

/// Journaled facts of split, the offline ledger, redemption and sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfflineEvent {
    /// Issuer: a coin split into two.
    SplitDone {
        /// The saga.
        saga: SagaId,
        /// Digest of the request.
        digest: [u8; 32],
        /// The owner.
        wallet: WalletId,
        /// The coin split.
        coin: CoinId,
        /// The two new coins.
        outputs: Vec<Coin>,
        /// When.
        at_ms: u64,
    },
    /// Issuer: a split refused.
    SplitRefused {
        /// The saga.
        saga: SagaId,
        /// Digest of the request.
        digest: [u8; 32],
        /// The wallet named.
        wallet: WalletId,
        /// The coin named.
        coin: CoinId,
        /// Why.
        reason: AbortReason,
        /// When.
        at_ms: u64,
    },
    /// Coordinator: a redemption started; the claim goes to the issuer.
    RedeemStarted {
        /// The saga.
        saga: SagaId,
        /// The chain.
        chain: TrustChain,
        /// Its holder.
        claimant: WalletId,
        /// Who asked.
        requester: Address,
        /// When.
        at_ms: u64,
    },
    /// Coordinator: a redemption refused before any claim.
    RedeemRefused {
        /// The saga.
        saga: SagaId,
        /// The chain.
        chain: TrustChain,
        /// Its holder.
        claimant: WalletId,
        /// Who asked.
        requester: Address,
        /// When.
        at_ms: u64,
        /// Why.
        reason: AbortReason,
    },
    /// Coordinator: decision commit.
    RedeemCommitDecided {
        /// The saga.
        saga: SagaId,
        /// When.
        at_ms: u64,
    },
    /// Coordinator: decision abort.
    RedeemAbortDecided {
        /// The saga.
        saga: SagaId,
        /// Why.
        reason: AbortReason,
        /// Whether the issuer may hold a reserved claim that must be released.
        release: bool,
        /// The double spend that refused the claim.
        double_spend: Option<DoubleSpend>,
    },
    /// Coordinator: the issuer acknowledged the decision.
    RedeemIssuerDone {
        /// The saga.
        saga: SagaId,
    },
    /// Coordinator and issuer at once: a chain of one of this institution's coins redeemed
    /// for one of its customers, in one step.
    RedeemedLocal {
        /// The saga.
        saga: SagaId,
        /// The chain.
        chain: TrustChain,
        /// Its holder.
        claimant: WalletId,
        /// Who asked.
        requester: Address,
        /// When.
        at_ms: u64,
        /// The claimant's new coin, or the refusal.
        outcome: Result<Coin, (AbortReason, Option<DoubleSpend>)>,
    },
    /// Issuer: a claim reserved in the coin's ledger.
    ClaimReserved {
        /// The claiming saga.
        saga: SagaId,
        /// The coordinator.
        coordinator: InstitutionId,
        /// The chain.
        chain: TrustChain,
        /// Its holder.
        claimant: WalletId,
        /// When.
        at_ms: u64,
    },
    /// Issuer: a claim refused (recorded, so a retry gets the same answer).
    ClaimRefused {
        /// The claiming saga.
        saga: SagaId,
        /// The coordinator.
        coordinator: InstitutionId,
        /// The chain.
        chain: TrustChain,
        /// Its holder.
        claimant: WalletId,
        /// Why.
        reason: AbortReason,
        /// Who double-spent, when that is why.
        double_spend: Option<DoubleSpend>,
        /// When.
        at_ms: u64,
    },
    /// Issuer: a reserved claim paid with a new coin to the claimant.
    ClaimCommitted {
        /// The claiming saga.
        saga: SagaId,
        /// The claimant's coin.
        coin: Coin,
        /// When.
        at_ms: u64,
    },
    /// Issuer: a reserved claim released by the coordinator's abort.
    ClaimReleased {
        /// The claiming saga.
        saga: SagaId,
        /// When.
        at_ms: u64,
    },
    /// A customer's offline records are on record up to `sequence`.
    Synced {
        /// The customer.
        wallet: WalletId,
        /// The highest sequence now on record.
        sequence: u64,
        /// New records.
        records: u64,
        /// What they paid to other wallets.
        paid: Amount,
    },
    /// Finished split and claim records past the deduplication retention are forgotten.
    Pruned {
        /// Splits dropped.
        splits: Vec<SagaId>,
        /// Claims dropped.
        claims: Vec<SagaId>,
    },
}

impl Institution {
    pub(super) fn on_offline_message(
        &mut self,
        from: Address,
        saga: SagaId,
        m: OfflineMessage,
        now_ms: u64,
        out: &mut Out,
    ) {
        match m {
            OfflineMessage::SplitRequest(signed) => {
                self.on_split_request(from, saga, signed, now_ms, out)
            }
            OfflineMessage::RedeemRequest(chain) => {
                self.on_redeem_request(from, saga, chain, now_ms, out)
            }
            OfflineMessage::Claim { chain, claimant } => {
                self.on_claim(from, saga, chain, claimant, now_ms, out)
            }
            OfflineMessage::ClaimReply {
                result,
                double_spend,
            } => self.on_claim_reply(from, saga, result, double_spend, now_ms, out),
            OfflineMessage::Sync { transfers } => self.on_offline_sync(from, saga, transfers, out),
            OfflineMessage::DoubleSpendReport(_) | OfflineMessage::SyncAck { .. } => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    fn offline_outcome(
        &self,
        saga: SagaId,
        kind: SagaKind,
        to: Address,
        result: Result<(), AbortReason>,
        spent: Vec<CoinId>,
        out: &mut Out,
    ) {
        out.send(self.envelope(
            saga,
            to,
            0,
            Payload::SagaOutcome(SagaOutcome {
                kind,
                result,
                spent_coin_ids: spent,
                decided_at_ms: self.offline_decided_ms(saga, kind, result),
            }),
        ));
    }

    /// When a committed redemption was decided (0 for anything else: a split moves no value
    /// between wallets and has no transaction record).
    fn offline_decided_ms(
        &self,
        saga: SagaId,
        kind: SagaKind,
        result: Result<(), AbortReason>,
    ) -> u64 {
        match (kind, result, self.sagas.redemptions.get(&saga)) {
            (SagaKind::OfflineRedeem, Ok(()), Some(r)) => r.decided_ms,
            _ => 0,
        }
    }

    fn offline_notice(
        &self,
        saga: SagaId,
        kind: SagaKind,
        result: Result<(), AbortReason>,
        spent: Vec<CoinId>,
        out: &mut Out,
    ) {
        out.notice(Notice {
            saga_id: saga,
            source: Address::Institution(self.id),
            outcome: SagaOutcome {
                kind,
                result,
                spent_coin_ids: spent,
                decided_at_ms: self.offline_decided_ms(saga, kind, result),
            },
        });
    }

    // ----- split (issuer) -----

    /// The issuer's rule for a split: everything it checks before it retires the coin and
    /// issues the two parts, in order. Changes nothing.
    pub fn check_split(
        &self,
        signed: &SignedSplitAuthorization,
        now_ms: u64,
    ) -> Result<Amount, AbortReason> {
        let a = &signed.authorization;
        if a.issuer != self.id {
            return Err(AbortReason::WrongIssuer);
        }
        if now_ms > a.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        let record = self
            .register
            .get(&a.coin_id)
            .ok_or(AbortReason::CoinUnknown)?;
        if record.coin.body.owner != a.wallet_key {
            return Err(AbortReason::CoinNotOwned);
        }
        let value = record.coin.value();
        if a.amount.is_zero() || a.amount >= value {
            return Err(AbortReason::InvalidAmount);
        }
        signed.verify().map_err(|_| AbortReason::BadSignature)?;
        match record.state {
            CoinState::Active => {}
            CoinState::Spent(_) => return Err(AbortReason::CoinSpent),
            _ => return Err(AbortReason::CoinLocked),
        }
        Ok(value)
    }

    fn on_split_request(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedSplitAuthorization,
        now_ms: u64,
        out: &mut Out,
    ) {
        let a = &signed.authorization;
        let wallet = Address::Wallet(a.wallet);
        if a.saga_id != saga {
            self.offline_outcome(
                saga,
                SagaKind::Split,
                from,
                Err(AbortReason::Conflict),
                vec![],
                out,
            );
            return;
        }
        let digest = signed.digest();
        if let Some(x) = self.sagas.splits.get(&saga) {
            let result = if x.digest == digest {
                x.result
            } else {
                Err(AbortReason::Conflict)
            };
            let spent = if result.is_ok() { vec![x.coin] } else { vec![] };
            self.offline_outcome(saga, SagaKind::Split, from, result, spent, out);
            return;
        }
        let (wallet_id, key, coin, amount) = (a.wallet, a.wallet_key, a.coin_id, a.amount);
        match self.check_split(&signed, now_ms) {
            Ok(value) => {
                let rest = value
                    .checked_sub(amount)
                    .expect("checked: amount below value");
                let outputs = vec![
                    self.issue(key, amount, saga, self.next_nonce, now_ms),
                    self.issue(key, rest, saga, self.next_nonce + 1, now_ms),
                ];
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::SplitDone {
                        saga,
                        digest,
                        wallet: wallet_id,
                        coin,
                        outputs: outputs.clone(),
                        at_ms: now_ms,
                    }),
                    out,
                );
                for c in outputs {
                    out.send(self.envelope(saga, wallet, 0, Payload::CoinIssued(c)));
                }
                self.offline_outcome(saga, SagaKind::Split, wallet, Ok(()), vec![coin], out);
                if from != wallet {
                    self.offline_outcome(saga, SagaKind::Split, from, Ok(()), vec![coin], out);
                }
                self.offline_notice(saga, SagaKind::Split, Ok(()), vec![coin], out);
            }
            Err(reason) => {
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::SplitRefused {
                        saga,
                        digest,
                        wallet: wallet_id,
                        coin,
                        reason,
                        at_ms: now_ms,
                    }),
                    out,
                );
                self.offline_outcome(saga, SagaKind::Split, wallet, Err(reason), vec![], out);
                if from != wallet {
                    self.offline_outcome(saga, SagaKind::Split, from, Err(reason), vec![], out);
                }
                self.offline_notice(saga, SagaKind::Split, Err(reason), vec![], out);
            }
        }
    }

    // ----- the offline ledger (issuer) -----

    /// The issuer's rule for a claim on one of its coins: the chain's coin and every
    /// signature, the coin's state, and the coin's ledger of earlier claims. The claim's
    /// value on success; on refusal the reason and, for an offline double spend, who made it.
    /// Changes nothing.
    pub fn check_claim(
        &self,
        chain: &TrustChain,
    ) -> Result<Amount, (AbortReason, Option<DoubleSpend>)> {
        let refuse = |reason| Err((reason, None));
        let Some(first) = chain.transfers.first() else {
            return refuse(AbortReason::EmptyRequest);
        };
        if chain.coin.body.issuer != self.id {
            return refuse(AbortReason::WrongIssuer);
        }
        let Some(record) = self.register.get(&chain.coin.id) else {
            return refuse(AbortReason::CoinUnknown);
        };
        if let Err(reason) = chain.verify(&self.keys.public_key()) {
            return refuse(reason);
        }
        let settlement = settlement_saga(chain.coin.id);
        match record.state {
            CoinState::Active => return Ok(chain.value()),
            CoinState::Locked(s) | CoinState::Spent(s) if s == settlement => {}
            CoinState::Spent(_) => {
                // The owner spent the coin online and signed it away offline as well.
                let r = &first.record;
                return Err((
                    AbortReason::OfflineDoubleSpend,
                    Some(DoubleSpend {
                        coin_id: chain.coin.id,
                        signer: r.from,
                        signer_key: r.from_key,
                        sequence: r.sequence,
                    }),
                ));
            }
            // Locked by an online saga that has not decided yet: ask again later.
            _ => return refuse(AbortReason::CoinLocked),
        }
        let ledger = self
            .sagas
            .ledgers
            .get(&chain.coin.id)
            .expect("a coin under settlement has a ledger");
        ledger.check(chain.coin.id, &Hop::of(chain))
    }

    fn on_claim(
        &mut self,
        from: Address,
        saga: SagaId,
        chain: TrustChain,
        claimant: WalletId,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Institution(coordinator) = from else {
            return;
        };
        let reply = |inst: &Self,
                     result: Result<Amount, AbortReason>,
                     double_spend: Option<DoubleSpend>,
                     out: &mut Out| {
            let m = OfflineMessage::ClaimReply {
                result,
                double_spend,
            };
            out.send(inst.envelope(saga, from, 0, Payload::Offline(m)));
        };
        if self.participations.contains_key(&saga) {
            // An abort overtook this claim (it left a tombstone), or the saga id is a payment's.
            reply(self, Err(AbortReason::SagaAborted), None, out);
            return;
        }
        let digest = claim_digest(chain.id(), claimant);
        if let Some(c) = self.sagas.claims.get(&saga) {
            let (result, ds) = match c.state {
                _ if c.digest != digest || c.coordinator != coordinator => {
                    (Err(AbortReason::Conflict), None)
                }
                ClaimState::Reserved | ClaimState::Committed => (Ok(c.amount), None),
                ClaimState::Refused(reason) => (Err(reason), c.double_spend.clone()),
                ClaimState::Released => (Err(AbortReason::SagaAborted), None),
            };
            reply(self, result, ds, out);
            return;
        }
        let checked = if chain.holder() == Some(claimant) {
            self.check_claim(&chain)
        } else {
            // Only the chain's last holder may claim it.
            Err((AbortReason::CoinNotOwned, None))
        };
        match checked {
            Ok(amount) => {
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::ClaimReserved {
                        saga,
                        coordinator,
                        chain,
                        claimant,
                        at_ms: now_ms,
                    }),
                    out,
                );
                reply(self, Ok(amount), None, out);
            }
            Err((reason, double_spend)) => {
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::ClaimRefused {
                        saga,
                        coordinator,
                        chain,
                        claimant,
                        reason,
                        double_spend: double_spend.clone(),
                        at_ms: now_ms,
                    }),
                    out,
                );
                reply(self, Err(reason), double_spend, out);
            }
        }
    }

    /// The coordinator's decision commit: pay the claimant with a new coin of this issuer.
    pub(super) fn on_claim_commit(
        &mut self,
        from: Address,
        saga: SagaId,
        decided_at_ms: u64,
        now_ms: u64,
        out: &mut Out,
    ) {
        let c = &self.sagas.claims[&saga];
        if from != Address::Institution(c.coordinator) {
            return;
        }
        let reply = |inst: &Self, r: Result<(), AbortReason>, out: &mut Out| {
            out.send(inst.envelope(saga, from, 0, Payload::CommitReply(r)));
        };
        match c.state {
            ClaimState::Reserved => {
                let (claimant, key, amount) = (c.claimant, c.claimant_key, c.amount);
                // The issuer's record of the redemption (the coordinator makes its own).
                let movement = Movement {
                    saga,
                    kind: specie_protocol::reconcile::RecordKind::OfflineRedeem,
                    payer: c.payer,
                    payee: claimant,
                    amount,
                    at_ms: decided_at_ms,
                };
                let coin = self.issue(key, amount, saga, self.next_nonce, now_ms);
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::ClaimCommitted {
                        saga,
                        coin: coin.clone(),
                        at_ms: now_ms,
                    }),
                    out,
                );
                movement.emit(self.id, out);
                out.send(self.envelope(
                    saga,
                    Address::Wallet(claimant),
                    0,
                    Payload::CoinIssued(coin),
                ));
                reply(self, Ok(()), out);
            }
            ClaimState::Committed => reply(self, Ok(()), out),
            ClaimState::Refused(_) | ClaimState::Released => {
                reply(self, Err(AbortReason::SagaAborted), out)
            }
        }
    }

    /// The coordinator's decision abort: release a reserved claim.
    pub(super) fn on_claim_abort(
        &mut self,
        from: Address,
        saga: SagaId,
        now_ms: u64,
        out: &mut Out,
    ) {
        let c = &self.sagas.claims[&saga];
        if from != Address::Institution(c.coordinator) {
            return;
        }
        match c.state {
            ClaimState::Reserved => {
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::ClaimReleased {
                        saga,
                        at_ms: now_ms,
                    }),
                    out,
                );
            }
            ClaimState::Committed => {
                // A coordinator never aborts after deciding commit; refuse loudly.
                metrics::counter!("specie_protocol_violations_total", "what" => "abort_after_commit").increment(1);
                out.send(self.envelope(
                    saga,
                    from,
                    0,
                    Payload::CommitReply(Err(AbortReason::AlreadyCommitted)),
                ));
                return;
            }
            ClaimState::Refused(_) | ClaimState::Released => {}
        }
        out.send(self.envelope(saga, from, 0, Payload::AbortReply));
    }

    // ----- redemption (coordinator) -----

    /// The coordinator's rule for a redemption request from a customer: the issuer the claim
    /// goes to on success. Changes nothing (the chain itself is the issuer's to check).
    pub fn check_redeem_request(
        &self,
        claimant: WalletId,
        chain: &TrustChain,
    ) -> Result<InstitutionId, AbortReason> {
        let account = self
            .accounts
            .get(&claimant)
            .ok_or(AbortReason::UnknownWallet)?;
        if chain.transfers.is_empty() {
            return Err(AbortReason::EmptyRequest);
        }
        if chain.holder_key() != account.key || chain.holder() != Some(claimant) {
            return Err(AbortReason::CoinNotOwned);
        }
        let issuer = chain.coin.body.issuer;
        if issuer.0 >= self.institutions {
            return Err(AbortReason::WrongIssuer);
        }
        Ok(issuer)
    }

    /// Tells the claimant (and requester) how a redemption ended, with the attribution of a
    /// double spend, and publishes it.
    fn announce_redemption(&self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        let r = &self.sagas.redemptions[&saga];
        let claimant = Address::Wallet(r.claimant);
        if let Some(ds) = &r.double_spend {
            let report = Payload::Offline(OfflineMessage::DoubleSpendReport(ds.clone()));
            out.send(self.envelope(saga, claimant, 0, report));
        }
        for to in [claimant, r.requester] {
            self.offline_outcome(saga, SagaKind::OfflineRedeem, to, result, vec![], out);
            if r.requester == claimant {
                break;
            }
        }
        self.offline_notice(saga, SagaKind::OfflineRedeem, result, vec![], out);
    }

    fn on_redeem_request(
        &mut self,
        from: Address,
        saga: SagaId,
        chain: TrustChain,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Wallet(claimant) = from else {
            // Only a customer redeems its own chains.
            self.offline_outcome(
                saga,
                SagaKind::OfflineRedeem,
                from,
                Err(AbortReason::UnknownWallet),
                vec![],
                out,
            );
            return;
        };
        let digest = claim_digest(chain.id(), claimant);
        if let Some(r) = self.sagas.redemptions.get(&saga) {
            if r.digest != digest {
                self.offline_outcome(
                    saga,
                    SagaKind::OfflineRedeem,
                    from,
                    Err(AbortReason::Conflict),
                    vec![],
                    out,
                );
                return;
            }
            match r.step.saga_state() {
                (SagaState::Committed, _) => {
                    self.offline_outcome(saga, SagaKind::OfflineRedeem, from, Ok(()), vec![], out)
                }
                (SagaState::Aborted, reason) => {
                    let reason = reason.expect("an aborted saga has a reason");
                    self.offline_outcome(
                        saga,
                        SagaKind::OfflineRedeem,
                        from,
                        Err(reason),
                        vec![],
                        out,
                    )
                }
                (SagaState::InProgress | SagaState::Unknown, _) => {}
            }
            return;
        }
        let issuer = match self.check_redeem_request(claimant, &chain) {
            Ok(issuer) => issuer,
            Err(reason) => {
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::RedeemRefused {
                        saga,
                        chain,
                        claimant,
                        requester: from,
                        at_ms: now_ms,
                        reason,
                    }),
                    out,
                );
                self.announce_redemption(saga, Err(reason), out);
                return;
            }
        };
        if issuer == self.id {
            // The coin is this institution's: claim, decide and pay in one journaled step.
            let outcome = if self.participations.contains_key(&saga)
                || self.sagas.claims.contains_key(&saga)
            {
                Err((AbortReason::Conflict, None))
            } else {
                self.check_claim(&chain).map(|amount| {
                    let key = chain.holder_key();
                    self.issue(key, amount, saga, self.next_nonce, now_ms)
                })
            };
            self.record(
                InstitutionEvent::Offline(OfflineEvent::RedeemedLocal {
                    saga,
                    chain,
                    claimant,
                    requester: from,
                    at_ms: now_ms,
                    outcome: outcome.clone(),
                }),
                out,
            );
            match outcome {
                Ok(coin) => {
                    // Coordinator and issuer in one: one record, this institution's.
                    let chain = &self.sagas.redemptions[&saga].chain;
                    Movement::redemption(saga, chain, claimant, now_ms).emit(self.id, out);
                    out.send(self.envelope(
                        saga,
                        Address::Wallet(claimant),
                        0,
                        Payload::CoinIssued(coin),
                    ));
                    self.announce_redemption(saga, Ok(()), out);
                }
                Err((reason, _)) => self.announce_redemption(saga, Err(reason), out),
            }
            return;
        }
        self.record(
            InstitutionEvent::Offline(OfflineEvent::RedeemStarted {
                saga,
                chain: chain.clone(),
                claimant,
                requester: from,
                at_ms: now_ms,
            }),
            out,
        );
        let claim = Payload::Offline(OfflineMessage::Claim { chain, claimant });
        out.send(self.envelope(saga, Address::Institution(issuer), 0, claim));
        out.timer(
            self.limits.saga_timeout_ms,
            InstitutionTimer::LockTimeout(saga),
        );
        out.timer(
            self.backoff_ms(0),
            InstitutionTimer::Retry { saga, attempt: 1 },
        );
    }

    fn on_claim_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        result: Result<Amount, AbortReason>,
        double_spend: Option<DoubleSpend>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(r) = self.sagas.redemptions.get(&saga) else {
            return;
        };
        if r.step != RedeemStep::Claiming || from != Address::Institution(r.issuer()) {
            return; // late or duplicate reply: the decision is already taken
        }
        match result {
            Ok(amount) if amount == r.chain.value() => {
                let issuer = r.issuer();
                let movement = Movement::redemption(saga, &r.chain, r.claimant, now_ms);
                self.record(
                    InstitutionEvent::Offline(OfflineEvent::RedeemCommitDecided {
                        saga,
                        at_ms: now_ms,
                    }),
                    out,
                );
                // The coordinator's record; the issuer makes its own when it pays the claim.
                movement.emit(self.id, out);
                out.send(self.envelope(
                    saga,
                    Address::Institution(issuer),
                    0,
                    Payload::CommitRequest {
                        decided_at_ms: now_ms,
                    },
                ));
                self.announce_redemption(saga, Ok(()), out);
            }
            Ok(_) => {
                // The issuer reserved another value than the chain's: never commit on it.
                metrics::counter!("specie_protocol_violations_total", "what" => "short_claim")
                    .increment(1);
                self.abort_redemption(saga, AbortReason::InvalidAmount, true, None, out);
            }
            Err(reason) => {
                let double_spend =
                    double_spend.filter(|_| reason == AbortReason::OfflineDoubleSpend);
                self.abort_redemption(saga, reason, false, double_spend, out);
            }
        }
    }

    fn abort_redemption(
        &mut self,
        saga: SagaId,
        reason: AbortReason,
        release: bool,
        double_spend: Option<DoubleSpend>,
        out: &mut Out,
    ) {
        self.record(
            InstitutionEvent::Offline(OfflineEvent::RedeemAbortDecided {
                saga,
                reason,
                release,
                double_spend,
            }),
            out,
        );
        if release {
            let issuer = self.sagas.redemptions[&saga].issuer();
            out.send(self.envelope(
                saga,
                Address::Institution(issuer),
                0,
                Payload::AbortRequest { reason },
            ));
        }
        self.announce_redemption(saga, Err(reason), out);
    }

    pub(super) fn on_redeem_commit_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        reply: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let r = &self.sagas.redemptions[&saga];
        let waiting = r.step == RedeemStep::Committing && from == Address::Institution(r.issuer());
        match reply {
            Ok(()) if waiting => self.record(
                InstitutionEvent::Offline(OfflineEvent::RedeemIssuerDone { saga }),
                out,
            ),
            Ok(()) => {}
            Err(reason) => {
                metrics::counter!("specie_protocol_violations_total", "what" => "claim_commit_refused").increment(1);
                eprintln!(
                    "{}: issuer refused to pay the claim of saga {saga}: {reason}",
                    self.id
                );
            }
        }
    }

    pub(super) fn on_redeem_abort_reply(&mut self, from: Address, saga: SagaId, out: &mut Out) {
        let r = &self.sagas.redemptions[&saga];
        if matches!(r.step, RedeemStep::Aborting { .. }) && from == Address::Institution(r.issuer())
        {
            self.record(
                InstitutionEvent::Offline(OfflineEvent::RedeemIssuerDone { saga }),
                out,
            );
        }
    }

    pub(super) fn on_redeem_timer(&mut self, key: InstitutionTimer, out: &mut Out) {
        match key {
            InstitutionTimer::LockTimeout(saga) => {
                if self.sagas.redemptions[&saga].step == RedeemStep::Claiming {
                    self.abort_redemption(saga, AbortReason::Timeout, true, None, out);
                }
            }
            InstitutionTimer::Retry { saga, attempt } => {
                let r = &self.sagas.redemptions[&saga];
                let issuer = Address::Institution(r.issuer());
                let payload = match r.step {
                    RedeemStep::Claiming => Payload::Offline(OfflineMessage::Claim {
                        chain: r.chain.clone(),
                        claimant: r.claimant,
                    }),
                    RedeemStep::Committing => Payload::CommitRequest {
                        decided_at_ms: r.decided_ms,
                    },
                    RedeemStep::Aborting { reason } => Payload::AbortRequest { reason },
                    RedeemStep::Committed | RedeemStep::Aborted { .. } => return,
                };
                out.send(self.envelope(saga, issuer, attempt, payload));
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

    // ----- offline sync -----

    fn on_offline_sync(
        &mut self,
        from: Address,
        saga: SagaId,
        transfers: Vec<SignedTransfer>,
        out: &mut Out,
    ) {
        let Address::Wallet(wallet) = from else {
            return;
        };
        let Some(account) = self.accounts.get(&wallet) else {
            metrics::counter!("specie_envelopes_rejected_total", "reason" => "unknown_wallet")
                .increment(1);
            return;
        };
        let key = account.key;
        let known = self.sagas.synced.get(&wallet).copied().unwrap_or_default();
        // Only the wallet's own, genuine records count; anything else is not evidence.
        let fresh: Vec<&SignedTransfer> = transfers
            .iter()
            .filter(|t| {
                t.record.sequence > known.sequence && t.record.from_key == key && t.verify().is_ok()
            })
            .collect();
        if let Some(sequence) = fresh.iter().map(|t| t.record.sequence).max() {
            let paid = Amount::sum(
                fresh
                    .iter()
                    .filter(|t| t.record.to_key != key)
                    .map(|t| t.record.amount),
            )
            .unwrap_or(Amount(u64::MAX));
            self.record(
                InstitutionEvent::Offline(OfflineEvent::Synced {
                    wallet,
                    sequence,
                    records: fresh.len() as u64,
                    paid,
                }),
                out,
            );
        }
        let sequence = self.sagas.synced.get(&wallet).map_or(0, |s| s.sequence);
        out.send(self.envelope(
            saga,
            from,
            0,
            Payload::Offline(OfflineMessage::SyncAck { sequence }),
        ));
    }

    // ----- events -----

    /// Opens the ledger of a coin at its first claim: the coin is locked under its
    /// settlement saga.
    fn open_ledger(&mut self, coin: CoinId) {
        if self.sagas.ledgers.contains_key(&coin) {
            return;
        }
        let value = self.register[&coin].coin.value();
        self.set_state(&coin, CoinState::Locked(settlement_saga(coin)));
        self.sagas.ledgers.insert(
            coin,
            Ledger {
                value,
                paid: Amount::ZERO,
                claims: BTreeMap::new(),
            },
        );
    }

    /// Pays a claim in the ledger: the coin is spent under its settlement saga, and the
    /// claimant's coin registered.
    fn pay_claim(&mut self, saga: SagaId, coin: &Coin, chain_coin: CoinId) {
        let ledger = self
            .sagas
            .ledgers
            .get_mut(&chain_coin)
            .expect("a paid claim has a ledger");
        let claim = ledger
            .claims
            .get_mut(&saga)
            .expect("a paid claim was reserved");
        assert!(!claim.committed, "a claim is paid once");
        // Invariant: a claim's payment is its leaf's amount, and the ledger never pays more
        // than the coin holds.
        assert_eq!(
            claim.leaf().amount,
            coin.value(),
            "the claimant's coin is the claim's value"
        );
        claim.committed = true;
        ledger.paid = ledger.paid.checked_add(coin.value()).expect("paid fits");
        assert!(
            ledger.paid <= ledger.value,
            "an offline ledger never pays more than its coin"
        );
        self.set_state(&chain_coin, CoinState::Spent(settlement_saga(chain_coin)));
        self.register_coin(coin);
        self.remember_owner(coin.body.owner, self.sagas.claims[&saga].claimant);
    }

    fn claim_record(
        coordinator: InstitutionId,
        chain: &TrustChain,
        claimant: WalletId,
        state: ClaimState,
        at_ms: u64,
    ) -> ClaimRecord {
        ClaimRecord {
            digest: claim_digest(chain.id(), claimant),
            coordinator,
            coin: chain.coin.id,
            claimant,
            claimant_key: chain.holder_key(),
            amount: chain.value(),
            payer: chain.transfers.last().map_or(claimant, |t| t.record.from),
            state,
            double_spend: None,
            issued: None,
            at_ms,
        }
    }

    fn redemption(
        chain: &TrustChain,
        claimant: WalletId,
        requester: Address,
        at_ms: u64,
        step: RedeemStep,
    ) -> Redemption {
        Redemption {
            digest: claim_digest(chain.id(), claimant),
            chain: chain.clone(),
            claimant,
            requester,
            started_ms: at_ms,
            step,
            double_spend: None,
            decided_ms: 0,
        }
    }

    /// Applies an offline event.
    pub(in super::super) fn apply_offline(&mut self, event: &OfflineEvent) {
        match event {
            OfflineEvent::SplitDone {
                saga,
                digest,
                wallet,
                coin,
                outputs,
                at_ms,
            } => {
                self.set_state(coin, CoinState::Spent(*saga));
                for c in outputs {
                    self.register_coin(c);
                    self.remember_owner(c.body.owner, *wallet);
                }
                self.sagas.splits.insert(
                    *saga,
                    SplitRecord {
                        digest: *digest,
                        wallet: *wallet,
                        coin: *coin,
                        outputs: outputs.iter().map(|c| c.id).collect(),
                        result: Ok(()),
                        at_ms: *at_ms,
                    },
                );
            }
            OfflineEvent::SplitRefused {
                saga,
                digest,
                wallet,
                coin,
                reason,
                at_ms,
            } => {
                self.sagas.splits.insert(
                    *saga,
                    SplitRecord {
                        digest: *digest,
                        wallet: *wallet,
                        coin: *coin,
                        outputs: Vec::new(),
                        result: Err(*reason),
                        at_ms: *at_ms,
                    },
                );
            }
            OfflineEvent::RedeemStarted {
                saga,
                chain,
                claimant,
                requester,
                at_ms,
            } => {
                let r =
                    Self::redemption(chain, *claimant, *requester, *at_ms, RedeemStep::Claiming);
                self.sagas.redemptions.insert(*saga, r);
            }
            OfflineEvent::RedeemRefused {
                saga,
                chain,
                claimant,
                requester,
                at_ms,
                reason,
            } => {
                let r = Self::redemption(
                    chain,
                    *claimant,
                    *requester,
                    *at_ms,
                    RedeemStep::Aborted { reason: *reason },
                );
                self.sagas.redemptions.insert(*saga, r);
            }
            OfflineEvent::RedeemCommitDecided { saga, at_ms } => {
                let r = self
                    .sagas
                    .redemptions
                    .get_mut(saga)
                    .expect("decided redemption exists");
                r.step = RedeemStep::Committing;
                r.decided_ms = *at_ms;
            }
            OfflineEvent::RedeemAbortDecided {
                saga,
                reason,
                release,
                double_spend,
            } => {
                let r = self
                    .sagas
                    .redemptions
                    .get_mut(saga)
                    .expect("decided redemption exists");
                r.step = if *release {
                    RedeemStep::Aborting { reason: *reason }
                } else {
                    RedeemStep::Aborted { reason: *reason }
                };
                r.double_spend = double_spend.clone();
            }
            OfflineEvent::RedeemIssuerDone { saga } => {
                let r = self
                    .sagas
                    .redemptions
                    .get_mut(saga)
                    .expect("acknowledged redemption exists");
                r.step = match r.step {
                    RedeemStep::Committing => RedeemStep::Committed,
                    RedeemStep::Aborting { reason } => RedeemStep::Aborted { reason },
                    other => other,
                };
            }
            OfflineEvent::RedeemedLocal {
                saga,
                chain,
                claimant,
                requester,
                at_ms,
                outcome,
            } => {
                let mut record =
                    Self::claim_record(self.id, chain, *claimant, ClaimState::Committed, *at_ms);
                let step = match outcome {
                    Ok(coin) => {
                        record.issued = Some(coin.id);
                        self.sagas.claims.insert(*saga, record);
                        self.open_ledger(chain.coin.id);
                        let ledger = self
                            .sagas
                            .ledgers
                            .get_mut(&chain.coin.id)
                            .expect("just opened");
                        ledger.claims.insert(
                            *saga,
                            LedgerClaim {
                                hops: Hop::of(chain),
                                committed: false,
                            },
                        );
                        self.pay_claim(*saga, coin, chain.coin.id);
                        RedeemStep::Committed
                    }
                    Err((reason, double_spend)) => {
                        // A conflicting saga id names another record: leave that one alone.
                        if *reason != AbortReason::Conflict {
                            record.state = ClaimState::Refused(*reason);
                            record.double_spend = double_spend.clone();
                            self.sagas.claims.insert(*saga, record);
                        }
                        if double_spend.is_some() {
                            self.sagas.double_spends_detected += 1;
                        }
                        RedeemStep::Aborted { reason: *reason }
                    }
                };
                let mut r = Self::redemption(chain, *claimant, *requester, *at_ms, step);
                match outcome {
                    Ok(_) => r.decided_ms = *at_ms,
                    Err((_, ds)) => r.double_spend = ds.clone(),
                }
                self.sagas.redemptions.insert(*saga, r);
            }
            OfflineEvent::ClaimReserved {
                saga,
                coordinator,
                chain,
                claimant,
                at_ms,
            } => {
                let record = Self::claim_record(
                    *coordinator,
                    chain,
                    *claimant,
                    ClaimState::Reserved,
                    *at_ms,
                );
                self.sagas.claims.insert(*saga, record);
                self.open_ledger(chain.coin.id);
                let ledger = self
                    .sagas
                    .ledgers
                    .get_mut(&chain.coin.id)
                    .expect("just opened");
                ledger.claims.insert(
                    *saga,
                    LedgerClaim {
                        hops: Hop::of(chain),
                        committed: false,
                    },
                );
            }
            OfflineEvent::ClaimRefused {
                saga,
                coordinator,
                chain,
                claimant,
                reason,
                double_spend,
                at_ms,
            } => {
                let mut record = Self::claim_record(
                    *coordinator,
                    chain,
                    *claimant,
                    ClaimState::Refused(*reason),
                    *at_ms,
                );
                record.double_spend = double_spend.clone();
                self.sagas.claims.insert(*saga, record);
                if double_spend.is_some() {
                    self.sagas.double_spends_detected += 1;
                }
            }
            OfflineEvent::ClaimCommitted { saga, coin, at_ms } => {
                let c = self
                    .sagas
                    .claims
                    .get_mut(saga)
                    .expect("committed claim was reserved");
                c.state = ClaimState::Committed;
                c.issued = Some(coin.id);
                c.at_ms = *at_ms;
                let chain_coin = c.coin;
                self.pay_claim(*saga, coin, chain_coin);
            }
            OfflineEvent::ClaimReleased { saga, at_ms } => {
                let c = self
                    .sagas
                    .claims
                    .get_mut(saga)
                    .expect("released claim was reserved");
                c.state = ClaimState::Released;
                c.at_ms = *at_ms;
                let coin = c.coin;
                let ledger = self
                    .sagas
                    .ledgers
                    .get_mut(&coin)
                    .expect("a reserved claim has a ledger");
                ledger.claims.remove(saga);
                if ledger.claims.is_empty() && ledger.paid.is_zero() {
                    // Nothing was ever paid: the coin is free again.
                    self.sagas.ledgers.remove(&coin);
                    self.set_state(&coin, CoinState::Active);
                }
            }
            OfflineEvent::Synced {
                wallet,
                sequence,
                records,
                paid,
            } => {
                let s = self.sagas.synced.entry(*wallet).or_default();
                s.sequence = s.sequence.max(*sequence);
                s.records += records;
                s.paid = s.paid.checked_add(*paid).unwrap_or(Amount(u64::MAX));
            }
            OfflineEvent::Pruned { splits, claims } => {
                for saga in splits {
                    self.sagas.splits.remove(saga);
                }
                for saga in claims {
                    self.sagas.claims.remove(saga);
                }
            }
        }
    }
}
