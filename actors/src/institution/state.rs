//! The institution's rules: the coin register, accounts, the issuer's side of a payment (lock,
//! retire, unlock) and the coordinator's side (the pay saga's state machine).
//!
//! The pay saga, as coordinated here (the payee's institution B) with the coins' issuer A:
//!
//! ```text
//!   RedeemRequest ──► Locking ──LockReply ok──► Committing ──commit ack + backing ack──► Committed
//!                        │                          (decision: commit, durable; every step
//!                        │                           is retried until acknowledged)
//!                        ├──LockReply refused──────────────────────────────────────► Aborted
//!                        └──timeout──► Aborting ──unlock ack──────────────────────► Aborted
//! ```
//!
//! Before the decision a timeout aborts; after it, steps are retried with backoff until they
//! are acknowledged. Every step is keyed by the saga id: a repeated request gets the recorded
//! answer, a request reusing the id with different content gets `Conflict`.

use crate::compact::SmallSet;
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::PublicKey;
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinBody, CoinId, Envelope, InstitutionId, Payload, SagaId,
    SagaKind, SagaState, SignedAuthorization, SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

// Escrow pre-payment and the wallet update platform: child modules, so that their rules read
// the register and accounts as `check_lock` does.
#[path = "escrow.rs"]
mod escrow;
#[path = "update.rs"]
mod update;
pub use escrow::{
    AppliedSettlement, EscrowIssuerEvent, HoldState, HoldSummary, IssuerEscrows, PayoutSummary,
};
pub use update::{Platform, PlatformEvent, WithdrawState, WithdrawalSummary};
// Merge, split and offline payment: child modules too, for the same reason.
#[path = "sagas.rs"]
mod sagas;
pub use sagas::{
    merge_backing_key, settlement_saga, ClaimState, ClaimSummary, LedgerSummary, MergeEvent,
    MergeStep, MergeSummary, OfflineEvent, RedeemStep, RedemptionSummary, SagaBookSnapshot,
    SplitSummary, SyncSummary,
};

/// Settings of an institution, from the validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstitutionLimits {
    /// Abort a saga whose lock is unanswered for this long.
    pub saga_timeout_ms: u64,
    /// First retry interval.
    pub retry_interval_ms: u64,
    /// Retry backoff cap.
    pub retry_interval_max_ms: u64,
    /// Most coins one payment may spend.
    pub coin_inputs_max: usize,
    /// Denominations an exchange is split into, largest first.
    pub denominations: Vec<Amount>,
    /// How long a finished participation's recorded answer is kept for deduplication.
    pub dedup_retention_ms: u64,
}

/// A customer's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The wallet's public key; coins issued to the wallet are owned by it.
    pub key: PublicKey,
    /// Account money (not coins).
    pub balance: Amount,
}

/// A coin's state in its issuer's register, the only authority on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoinState {
    /// Spendable.
    Active,
    /// Reserved by a saga that has not decided yet.
    Locked(SagaId),
    /// Retired by a committed saga.
    Spent(SagaId),
    /// Frozen in escrow contract `id` (DESIGN.md §3.4): not spendable by its owner; retired by
    /// the escrow's settlements.
    Frozen(u64),
}

/// A register entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinRecord {
    /// The coin.
    pub coin: Coin,
    /// Its state.
    pub state: CoinState,
}

/// Where a coordinated pay saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayStep {
    /// Lock requested from the issuer, no decision yet. A timeout aborts.
    Locking,
    /// Decided commit (durable); waiting for the issuer to retire the coins and the central
    /// bank to move the backing. Retried until both acknowledge.
    Committing {
        /// The issuer acknowledged the commit.
        issuer_done: bool,
        /// The central bank acknowledged the backing move.
        backing_done: bool,
    },
    /// Decided abort after a lock may have been taken; waiting for the issuer to unlock.
    Aborting {
        /// Why.
        reason: AbortReason,
    },
    /// Terminal: committed.
    Committed,
    /// Terminal: aborted.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
}

impl PayStep {
    /// The saga's state as reported to parties: the decision counts, not the bookkeeping.
    pub fn saga_state(self) -> (SagaState, Option<AbortReason>) {
        match self {
            PayStep::Locking => (SagaState::InProgress, None),
            PayStep::Committing { .. } | PayStep::Committed => (SagaState::Committed, None),
            PayStep::Aborting { reason } | PayStep::Aborted { reason } => {
                (SagaState::Aborted, Some(reason))
            }
        }
    }

    /// Terminal: nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, PayStep::Committed | PayStep::Aborted { .. })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaySaga {
    authorization: SignedAuthorization,
    digest: [u8; 32],
    requester: Address,
    started_ms: u64,
    step: PayStep,
    /// When commit was decided (0 before): the time of the saga's transaction records.
    decided_ms: u64,
}

/// What an issuer records when it locks coins for a saga.
pub(super) struct LockFacts {
    pub(super) coin_ids: Vec<CoinId>,
    pub(super) total: Amount,
    pub(super) amount: Amount,
    pub(super) payer: WalletId,
    pub(super) payer_key: PublicKey,
    /// Who is paid (the wallet itself for a merge): for the transaction record.
    pub(super) payee: WalletId,
    /// The saga's kind of transaction record.
    pub(super) kind: RecordKind,
}

/// The issuer's record of its part in a saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Participation {
    /// Digest of the lock request; `None` for a tombstone left by an abort that came first.
    digest: Option<[u8; 32]>,
    coordinator: InstitutionId,
    state: ParticipantState,
    /// When the record was made or last changed; terminal records are pruned
    /// `dedup_retention_ms` after it.
    at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ParticipantState {
    Locked {
        coin_ids: Vec<CoinId>,
        total: Amount,
        amount: Amount,
        payer: WalletId,
        payer_key: PublicKey,
        payee: WalletId,
        kind: RecordKind,
    },
    Refused(AbortReason),
    Committed {
        total: Amount,
    },
    Aborted,
}

/// An exchange of account money into coins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeState {
    /// Account debited; waiting for the central bank to back the coins.
    Pending,
    /// Coins issued.
    Committed,
    /// Refused or aborted (the account is whole again).
    Aborted(AbortReason),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exchange {
    wallet: WalletId,
    amount: Amount,
    state: ExchangeState,
    /// When the coins were issued (0 before): the time of the exchange's transaction record.
    decided_ms: u64,
}

/// Journaled facts of an institution.
// Events live for one step and most carry coins or authorizations; boxing the large variants
// would add an allocation to every step for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstitutionEvent {
    /// A customer account was opened with a deposit.
    AccountOpened {
        /// The customer.
        wallet: WalletId,
        /// Its key.
        key: PublicKey,
        /// Initial deposit.
        deposit: Amount,
    },
    /// Issuer: coins locked for a saga.
    Locked {
        /// The saga.
        saga: SagaId,
        /// Digest of the lock request.
        digest: [u8; 32],
        /// The coordinator.
        coordinator: InstitutionId,
        /// Coins locked.
        coin_ids: Vec<CoinId>,
        /// Their sum.
        total: Amount,
        /// Amount paid.
        amount: Amount,
        /// The payer.
        payer: WalletId,
        /// The payer's key (owner of the change).
        payer_key: PublicKey,
        /// Who is paid (the wallet itself for a merge).
        payee: WalletId,
        /// The saga's kind of transaction record (a payment or a merge).
        kind: RecordKind,
        /// When.
        at_ms: u64,
    },
    /// Issuer: a lock request refused (recorded so a retry gets the same answer).
    LockRefused {
        /// The saga.
        saga: SagaId,
        /// Digest of the lock request.
        digest: [u8; 32],
        /// The coordinator.
        coordinator: InstitutionId,
        /// Why.
        reason: AbortReason,
        /// When.
        at_ms: u64,
    },
    /// Issuer: the locked coins are retired and the change (if any) issued.
    Retired {
        /// The saga.
        saga: SagaId,
        /// The change coin to the payer.
        change: Option<Coin>,
        /// When.
        at_ms: u64,
    },
    /// Issuer: the saga aborted; its coins (if any) are active again.
    Unlocked {
        /// The saga.
        saga: SagaId,
        /// The coordinator that aborted it.
        coordinator: InstitutionId,
        /// When.
        at_ms: u64,
    },
    /// Finished participations older than the deduplication retention are forgotten.
    DedupPruned {
        /// The sagas whose records are dropped.
        sagas: Vec<SagaId>,
    },
    /// Coordinator: a pay saga started.
    PayStarted {
        /// The payer's signed authorization.
        authorization: SignedAuthorization,
        /// Who asked (told the outcome).
        requester: Address,
        /// When.
        at_ms: u64,
    },
    /// Coordinator: decision commit, with the payee's new coin.
    PayCommitDecided {
        /// The saga.
        saga: SagaId,
        /// Issued to the payee.
        payee_coin: Coin,
    },
    /// Coordinator: decision abort.
    PayAbortDecided {
        /// The saga.
        saga: SagaId,
        /// Why.
        reason: AbortReason,
        /// Whether the issuer may hold a lock that must be released.
        unlock: bool,
    },
    /// Coordinator: the issuer acknowledged the decision (retired or unlocked).
    PayIssuerDone {
        /// The saga.
        saga: SagaId,
    },
    /// Coordinator: the central bank moved the backing.
    PayBackingDone {
        /// The saga.
        saga: SagaId,
    },
    /// Payer and payee at this institution: the whole saga in one step.
    PayLocal {
        /// The payer's signed authorization.
        authorization: SignedAuthorization,
        /// Who asked.
        requester: Address,
        /// When.
        at_ms: u64,
        /// The payee's coin and the payer's change, or why not.
        outcome: Result<(Coin, Option<Coin>), AbortReason>,
    },
    /// An exchange debited the account.
    ExchangeStarted {
        /// The saga.
        saga: SagaId,
        /// The customer.
        wallet: WalletId,
        /// How much.
        amount: Amount,
    },
    /// An exchange was refused before anything moved.
    ExchangeRefused {
        /// The saga.
        saga: SagaId,
        /// The customer.
        wallet: WalletId,
        /// How much was asked.
        amount: Amount,
        /// Why.
        reason: AbortReason,
    },
    /// An exchange issued its coins.
    ExchangeCommitted {
        /// The saga.
        saga: SagaId,
        /// The coins.
        coins: Vec<Coin>,
    },
    /// Wallets acknowledged these coins: no more redelivery.
    CoinsDelivered {
        /// The coins.
        coin_ids: Vec<CoinId>,
    },
    /// The central bank refused to back an exchange: the account is refunded.
    ExchangeAborted {
        /// The saga.
        saga: SagaId,
        /// Why.
        reason: AbortReason,
    },
    /// Escrow pre-payment: the issuer's and the merchant's institution's steps.
    Escrow(EscrowIssuerEvent),
    /// Wallet update: the platform's steps.
    Update(PlatformEvent),
    /// The merge saga's coordinator steps.
    Merge(MergeEvent),
    /// Split, the offline ledger, redemption and offline sync.
    Offline(OfflineEvent),
}

/// Timers of an institution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstitutionTimer {
    /// Abort the saga if it is still locking.
    LockTimeout(SagaId),
    /// Resend the saga's unacknowledged step.
    Retry {
        /// The saga.
        saga: SagaId,
        /// Retries so far (drives the backoff).
        attempt: u32,
    },
    /// Resend coins their owners have not acknowledged; journal the acknowledgements.
    Redeliver,
    /// Resend an exchange's reserve request.
    ExchangeRetry {
        /// The saga.
        saga: SagaId,
        /// Retries so far.
        attempt: u32,
    },
}

/// Local commands (genesis).
#[derive(Debug, Clone)]
pub enum InstitutionCommand {
    /// Open a customer account with a deposit.
    OpenAccount {
        /// The customer.
        wallet: WalletId,
        /// Its key.
        key: PublicKey,
        /// Initial deposit.
        deposit: Amount,
    },
    /// Publish new wallet parameters (the platform's operator); only a newer version counts.
    PublishWalletParams(specie_protocol::update::WalletParams),
}

/// A pay saga as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaySummary {
    /// Coins' issuer.
    pub payer_institution: InstitutionId,
    /// Amount paid.
    pub amount: Amount,
    /// Coins spent.
    pub coin_ids: Vec<CoinId>,
    /// Where it stands.
    pub step: PayStep,
}

/// What audits read of an institution.
#[derive(Debug, Clone)]
pub struct InstitutionSnapshot {
    /// The institution.
    pub id: InstitutionId,
    /// Accounts.
    pub accounts: HashMap<WalletId, Account>,
    /// The coin register.
    pub coins: HashMap<CoinId, CoinRecord>,
    /// Pay sagas coordinated here.
    pub pays: HashMap<SagaId, PaySummary>,
    /// Exchanges, by saga: (wallet, amount, state).
    pub exchanges: HashMap<SagaId, (WalletId, Amount, ExchangeState)>,
    /// Issued coins their owners have not acknowledged yet (still being redelivered).
    pub coins_in_delivery: usize,
    /// Escrow deposits this institution holds frozen, by contract.
    pub escrow_holds: HashMap<u64, HoldSummary>,
    /// Escrow claims this institution paid out as the merchant's institution, by claim saga.
    pub payouts: HashMap<SagaId, PayoutSummary>,
    /// Withdraws of wallet updates, by update saga.
    pub withdrawals: HashMap<SagaId, WithdrawalSummary>,
    /// The wallet parameters version the platform publishes.
    pub params_version: u32,
    /// Merges coordinated here, splits and offline ledgers kept as issuer, redemptions.
    pub sagas: SagaBookSnapshot,
}

/// An institution's state.
pub struct Institution {
    id: InstitutionId,
    keys: Arc<SoftKeyStore>,
    limits: Arc<InstitutionLimits>,
    accounts: HashMap<WalletId, Account>,
    /// The coin register. Records are boxed: a hash table keeps spare slots (half of them
    /// when 250,000 customers' coins just passed a power of two), and a spare slot of a
    /// boxed record costs 40 bytes instead of 232.
    register: HashMap<CoinId, Box<CoinRecord>>,
    /// Unspent coins by owner key: the index balance queries and coin selection use. A
    /// [`SmallSet`] per key: most owners hold a coin or two (a tree node each would be 370
    /// bytes per customer).
    holdings: HashMap<PublicKey, SmallSet<CoinId>>,
    next_nonce: u64,
    participations: HashMap<SagaId, Participation>,
    pays: HashMap<SagaId, PaySaga>,
    exchanges: HashMap<SagaId, Exchange>,
    /// Institutions of the cluster have ids `0..institutions`; a payment naming another issuer
    /// is refused before a saga starts (its lock or unlock could never be answered).
    institutions: u32,
    /// Customers by key: the wallet each issued coin is delivered to.
    wallet_of_key: HashMap<PublicKey, WalletId>,
    /// Issued coins their owners have not acknowledged yet, with when they were issued.
    undelivered: BTreeMap<CoinId, u64>,
    /// Acknowledgements received since the last redelivery tick; journaled (as
    /// `CoinsDelivered`) at the next tick. Lost in a crash, which only costs a redelivery.
    acked: HashSet<CoinId>,
    /// Escrow deposits held as issuer and claims paid as the merchant's institution.
    escrows: IssuerEscrows,
    /// Wallet parameters and withdraws (the wallet update platform).
    platform: Platform,
    /// Merges, splits, offline ledgers and redemptions (`sagas.rs`).
    sagas: sagas::SagaBook,
}

impl std::fmt::Debug for Institution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Institution")
            .field("id", &self.id)
            .field("accounts", &self.accounts.len())
            .field("coins", &self.register.len())
            .finish_non_exhaustive()
    }
}

type Out = Effects<InstitutionEvent, InstitutionTimer>;

/// Everything of an institution's state that is not derived from the rest: what a snapshot
/// holds. The owner index and the key → wallet map are rebuilt from it.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    accounts: HashMap<WalletId, Account>,
    register: HashMap<CoinId, Box<CoinRecord>>,
    next_nonce: u64,
    participations: HashMap<SagaId, Participation>,
    pays: HashMap<SagaId, PaySaga>,
    exchanges: HashMap<SagaId, Exchange>,
    undelivered: BTreeMap<CoinId, u64>,
    escrows: IssuerEscrows,
    platform: Platform,
    sagas: sagas::SagaBook,
}

/// A [`Checkpoint`] written from the live state without copying it: the same fields in the
/// same order, so it serializes to the same bytes. (An institution with a million customers
/// snapshots every few thousand steps; cloning its register each time doubled its memory
/// for the moment and cost more than the serialization.)
#[derive(Serialize)]
struct CheckpointRef<'a> {
    accounts: &'a HashMap<WalletId, Account>,
    register: &'a HashMap<CoinId, Box<CoinRecord>>,
    next_nonce: u64,
    participations: &'a HashMap<SagaId, Participation>,
    pays: &'a HashMap<SagaId, PaySaga>,
    exchanges: &'a HashMap<SagaId, Exchange>,
    undelivered: &'a BTreeMap<CoinId, u64>,
    escrows: &'a IssuerEscrows,
    platform: &'a Platform,
    sagas: &'a sagas::SagaBook,
}

/// The most coins one redelivery tick resends.
pub const REDELIVERY_BATCH_MAX: usize = 4096;
/// The most deduplication records one tick prunes.
pub const DEDUP_PRUNE_BATCH_MAX: usize = 65_536;

impl Institution {
    /// A new institution with no accounts and no coins.
    pub fn new(id: InstitutionId, keys: Arc<SoftKeyStore>, limits: Arc<InstitutionLimits>) -> Self {
        assert!(
            !limits.denominations.is_empty(),
            "validated config has denominations"
        );
        Institution {
            id,
            keys,
            limits,
            accounts: HashMap::new(),
            register: HashMap::new(),
            holdings: HashMap::new(),
            next_nonce: 0,
            participations: HashMap::new(),
            pays: HashMap::new(),
            exchanges: HashMap::new(),
            institutions: u32::MAX,
            wallet_of_key: HashMap::new(),
            undelivered: BTreeMap::new(),
            acked: HashSet::new(),
            escrows: IssuerEscrows::default(),
            platform: Platform::default(),
            sagas: sagas::SagaBook::default(),
        }
    }

    /// Tells the institution how many institutions the cluster has (ids `0..count`), so that
    /// it refuses to coordinate a payment whose coins name an issuer that does not exist.
    /// Without it every issuer id is accepted.
    pub fn with_institutions(mut self, count: u32) -> Self {
        self.institutions = count;
        self
    }

    fn envelope(&self, saga: SagaId, to: Address, attempt: u32, payload: Payload) -> Envelope {
        Envelope {
            message_id: 0,
            saga_id: saga,
            from: Address::Institution(self.id),
            to,
            attempt,
            trace: None,
            payload,
        }
    }

    /// Issues a coin (not yet registered: the event that carries it registers it). Its seal
    /// is pending: the coin is sealed, with every other coin this institution sends in the
    /// same batch, when the step's messages leave ([`StateMachine::seal`]).
    fn issue(
        &self,
        owner: PublicKey,
        denomination: Amount,
        saga: SagaId,
        nonce: u64,
        now_ms: u64,
    ) -> Coin {
        debug_assert!(!denomination.is_zero(), "coins are never issued empty");
        Coin::unsealed(CoinBody {
            issuer: self.id,
            owner,
            denomination,
            nonce,
            origin_saga: saga,
            issued_at_ms: now_ms,
        })
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.min(16);
        self.limits
            .retry_interval_ms
            .saturating_mul(factor)
            .min(self.limits.retry_interval_max_ms)
    }

    /// The available balance of a key and the coins chosen to cover `amount`: the smallest
    /// single coin that covers it, else the largest coins first, within the input limit.
    fn select_coins(&self, key: &PublicKey, amount: Amount) -> (Amount, Vec<CoinId>) {
        let mut active: Vec<(Amount, CoinId)> = self
            .holdings
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let r = &self.register[id];
                (r.state == CoinState::Active).then_some((r.coin.value(), *id))
            })
            .collect();
        let available = Amount::sum(active.iter().map(|(v, _)| *v)).expect("supply fits u64");
        if amount.is_zero() || available < amount {
            return (available, Vec::new());
        }
        active.sort_unstable_by(|a, b| b.cmp(a));
        if let Some((_, id)) = active.iter().rev().find(|(v, _)| *v >= amount) {
            return (available, vec![*id]);
        }
        let mut chosen = Vec::new();
        let mut sum = Amount::ZERO;
        for (v, id) in active.iter().take(self.limits.coin_inputs_max) {
            chosen.push(*id);
            sum = sum.checked_add(*v).expect("supply fits u64");
            if sum >= amount {
                return (available, chosen);
            }
        }
        (available, Vec::new())
    }

    /// The rule for "can these coins be locked for this authorization?": everything the issuer
    /// checks before it locks, in order. Changes nothing.
    pub fn check_lock(
        &self,
        signed: &SignedAuthorization,
        now_ms: u64,
    ) -> Result<Amount, AbortReason> {
        let a = &signed.authorization;
        if a.amount.is_zero() {
            return Err(AbortReason::InvalidAmount);
        }
        if a.coin_ids.is_empty() {
            return Err(AbortReason::InsufficientFunds);
        }
        if a.coin_ids.len() > self.limits.coin_inputs_max {
            return Err(AbortReason::TooManyCoins);
        }
        if a.payer_institution != self.id {
            return Err(AbortReason::WrongIssuer);
        }
        if now_ms > a.expires_at_ms {
            return Err(AbortReason::Expired);
        }
        let total = self.check_spendable(a.payer, &a.payer_key, &a.coin_ids, || {
            signed.verify().is_ok()
        })?;
        if total < a.amount {
            return Err(AbortReason::InsufficientFunds);
        }
        Ok(total)
    }

    /// The rule for "may the owner spend these coins now?", shared by every step that
    /// takes coins out of circulation (lock, freeze, withdraw): distinct coins, all in this
    /// register and owned by the wallet's account key, the owner's signature (`verified`,
    /// checked before anything about the coins' states is revealed), all active. Returns
    /// their sum. Changes nothing.
    pub(super) fn check_spendable(
        &self,
        wallet: WalletId,
        key: &PublicKey,
        coin_ids: &[CoinId],
        verified: impl FnOnce() -> bool,
    ) -> Result<Amount, AbortReason> {
        let mut seen = HashSet::with_capacity(coin_ids.len());
        if !coin_ids.iter().all(|id| seen.insert(id)) {
            return Err(AbortReason::DuplicateCoin);
        }
        let account = self
            .accounts
            .get(&wallet)
            .ok_or(AbortReason::UnknownWallet)?;
        if account.key != *key {
            return Err(AbortReason::CoinNotOwned);
        }
        let mut records = Vec::with_capacity(coin_ids.len());
        for id in coin_ids {
            let record = self.register.get(id).ok_or(AbortReason::CoinUnknown)?;
            if record.coin.body.owner != *key {
                return Err(AbortReason::CoinNotOwned);
            }
            records.push(record);
        }
        if !verified() {
            return Err(AbortReason::BadSignature);
        }
        for record in &records {
            match record.state {
                CoinState::Active => {}
                #[cfg(feature = "planted-bugs")]
                CoinState::Locked(_)
                    if crate::planted::active(crate::planted::Bug::SkipLockCheck) => {}
                CoinState::Locked(_) => return Err(AbortReason::CoinLocked),
                CoinState::Spent(_) => return Err(AbortReason::CoinSpent),
                // A frozen coin belongs to its escrow until the escrow settles it.
                CoinState::Frozen(_) => return Err(AbortReason::CoinLocked),
            }
        }
        Amount::sum(records.iter().map(|r| r.coin.value())).ok_or(AbortReason::InvalidAmount)
    }

    fn register_coin(&mut self, coin: &Coin) {
        self.next_nonce = self.next_nonce.max(coin.body.nonce + 1);
        self.undelivered.insert(coin.id, coin.body.issued_at_ms);
        self.holdings
            .entry(coin.body.owner)
            .or_default()
            .insert(coin.id);
        let previous = self.register.insert(
            coin.id,
            Box::new(CoinRecord {
                coin: coin.clone(),
                state: CoinState::Active,
            }),
        );
        assert!(previous.is_none(), "coin ids are unique: {}", coin.id);
    }

    fn set_state(&mut self, id: &CoinId, state: CoinState) {
        let record = self
            .register
            .get_mut(id)
            .expect("locked coins are registered");
        record.state = state;
        if let CoinState::Spent(_) = state {
            if let Some(set) = self.holdings.get_mut(&record.coin.body.owner) {
                set.remove(id);
            }
        }
    }

    fn outcome_to(
        &self,
        saga: SagaId,
        to: Address,
        result: Result<(), AbortReason>,
        spent: Vec<CoinId>,
        decided_at_ms: u64,
        out: &mut Out,
    ) {
        out.send(self.envelope(
            saga,
            to,
            0,
            Payload::SagaOutcome(SagaOutcome {
                kind: SagaKind::Pay,
                result,
                spent_coin_ids: spent,
                decided_at_ms,
            }),
        ));
    }

    /// A pay saga's transaction record, as the coordinator knows it.
    fn pay_movement(p: &PaySaga, at_ms: u64) -> Movement {
        let a = &p.authorization.authorization;
        Movement {
            saga: a.saga_id,
            kind: RecordKind::Pay,
            payer: a.payer,
            payee: a.payee,
            amount: a.amount,
            at_ms,
        }
    }

    /// Tells the payer, the requester and observers how a pay saga ended.
    fn announce(&self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        let p = &self.pays[&saga];
        let (spent, decided) = if result.is_ok() {
            (p.authorization.authorization.coin_ids.clone(), p.decided_ms)
        } else {
            (Vec::new(), 0)
        };
        let payer = Address::Wallet(p.authorization.authorization.payer);
        self.outcome_to(saga, payer, result, spent.clone(), decided, out);
        if p.requester != payer {
            self.outcome_to(saga, p.requester, result, spent.clone(), decided, out);
        }
        out.notice(Notice {
            saga_id: saga,
            source: Address::Institution(self.id),
            outcome: SagaOutcome {
                kind: SagaKind::Pay,
                result,
                spent_coin_ids: spent,
                decided_at_ms: decided,
            },
        });
    }

    // ----- coordinator: the pay saga -----

    fn on_redeem(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedAuthorization,
        now_ms: u64,
        out: &mut Out,
    ) {
        let a = &signed.authorization;
        if a.saga_id != saga {
            self.outcome_to(saga, from, Err(AbortReason::Conflict), vec![], 0, out);
            return;
        }
        if let Some(p) = self.pays.get(&saga) {
            if p.digest != signed.digest() {
                self.outcome_to(saga, from, Err(AbortReason::Conflict), vec![], 0, out);
                return;
            }
            // A duplicate: answer with the recorded outcome once there is one.
            match p.step.saga_state() {
                (SagaState::Committed, _) => {
                    let decided = p.decided_ms;
                    self.outcome_to(saga, from, Ok(()), a.coin_ids.clone(), decided, out)
                }
                (SagaState::Aborted, reason) => {
                    let reason = reason.expect("an aborted saga has a reason");
                    self.outcome_to(saga, from, Err(reason), vec![], 0, out)
                }
                (SagaState::InProgress | SagaState::Unknown, _) => {}
            }
            return;
        }
        if a.payee_institution != self.id {
            self.outcome_to(saga, from, Err(AbortReason::PayeeMismatch), vec![], 0, out);
            return;
        }
        if a.payer_institution.0 >= self.institutions {
            // No such issuer: a saga started with it could never be unlocked, so never end.
            self.outcome_to(saga, from, Err(AbortReason::WrongIssuer), vec![], 0, out);
            return;
        }
        let Some(payee) = self.accounts.get(&a.payee) else {
            self.outcome_to(saga, from, Err(AbortReason::UnknownWallet), vec![], 0, out);
            return;
        };
        if a.payer_institution == self.id {
            // Same-institution path: lock, decide and retire in one journaled step.
            let outcome = self.check_lock(&signed, now_ms).map(|total| {
                let payee_coin = self.issue(payee.key, a.amount, saga, self.next_nonce, now_ms);
                let change = total
                    .checked_sub(a.amount)
                    .expect("checked: total covers amount");
                let change_coin = (!change.is_zero())
                    .then(|| self.issue(a.payer_key, change, saga, self.next_nonce + 1, now_ms));
                (payee_coin, change_coin)
            });
            let (payer, payee_wallet) = (a.payer, a.payee);
            self.record(
                InstitutionEvent::PayLocal {
                    authorization: signed,
                    requester: from,
                    at_ms: now_ms,
                    outcome: outcome.clone(),
                },
                out,
            );
            if let Ok((payee_coin, change)) = outcome {
                // Payer and payee bank here: one record, this institution's.
                Self::pay_movement(&self.pays[&saga], now_ms).emit(self.id, out);
                out.send(self.envelope(
                    saga,
                    Address::Wallet(payee_wallet),
                    0,
                    Payload::CoinIssued(payee_coin),
                ));
                if let Some(change) = change {
                    out.send(self.envelope(
                        saga,
                        Address::Wallet(payer),
                        0,
                        Payload::CoinIssued(change),
                    ));
                }
                self.announce(saga, Ok(()), out);
            } else if let Err(reason) = outcome {
                self.announce(saga, Err(reason), out);
            }
            return;
        }
        let issuer = Address::Institution(a.payer_institution);
        self.record(
            InstitutionEvent::PayStarted {
                authorization: signed.clone(),
                requester: from,
                at_ms: now_ms,
            },
            out,
        );
        out.send(self.envelope(saga, issuer, 0, Payload::LockRequest(signed)));
        out.timer(
            self.limits.saga_timeout_ms,
            InstitutionTimer::LockTimeout(saga),
        );
        out.timer(
            self.backoff_ms(0),
            InstitutionTimer::Retry { saga, attempt: 1 },
        );
    }

    fn on_lock_reply(
        &mut self,
        from: Address,
        saga: SagaId,
        reply: Result<Amount, AbortReason>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(p) = self.pays.get(&saga) else {
            return;
        };
        let a = &p.authorization.authorization;
        if p.step != PayStep::Locking || from != Address::Institution(a.payer_institution) {
            return; // late or duplicate reply: the decision is already taken
        }
        match reply {
            Ok(total) if total >= a.amount => {
                let payee_key = self.accounts[&a.payee].key;
                let payee_coin = self.issue(payee_key, a.amount, saga, self.next_nonce, now_ms);
                let (payee, amount, issuer) = (a.payee, a.amount, a.payer_institution);
                self.record(
                    InstitutionEvent::PayCommitDecided {
                        saga,
                        payee_coin: payee_coin.clone(),
                    },
                    out,
                );
                // The coordinator's record; the issuer makes its own when it retires the coins.
                Self::pay_movement(&self.pays[&saga], now_ms).emit(self.id, out);
                out.send(self.envelope(
                    saga,
                    Address::Institution(issuer),
                    0,
                    Payload::CommitRequest {
                        decided_at_ms: now_ms,
                    },
                ));
                out.send(self.envelope(
                    saga,
                    Address::CentralBank,
                    0,
                    Payload::MoveBacking {
                        from: issuer,
                        to: self.id,
                        amount,
                    },
                ));
                out.send(self.envelope(
                    saga,
                    Address::Wallet(payee),
                    0,
                    Payload::CoinIssued(payee_coin),
                ));
                self.announce(saga, Ok(()), out);
            }
            Ok(_) => {
                // The issuer locked less than the amount: never commit on it.
                metrics::counter!("specie_protocol_violations_total", "what" => "short_lock")
                    .increment(1);
                self.abort_pay(saga, AbortReason::InsufficientFunds, true, out);
            }
            Err(reason) => self.abort_pay(saga, reason, false, out),
        }
    }

    fn abort_pay(&mut self, saga: SagaId, reason: AbortReason, unlock: bool, out: &mut Out) {
        self.record(
            InstitutionEvent::PayAbortDecided {
                saga,
                reason,
                unlock,
            },
            out,
        );
        if unlock {
            let issuer = Address::Institution(
                self.pays[&saga]
                    .authorization
                    .authorization
                    .payer_institution,
            );
            out.send(self.envelope(saga, issuer, 0, Payload::AbortRequest { reason }));
        }
        self.announce(saga, Err(reason), out);
    }

    fn on_pay_timer(&mut self, key: InstitutionTimer, out: &mut Out) {
        match key {
            InstitutionTimer::LockTimeout(saga) => {
                if self
                    .pays
                    .get(&saga)
                    .is_some_and(|p| p.step == PayStep::Locking)
                {
                    self.abort_pay(saga, AbortReason::Timeout, true, out);
                }
            }
            InstitutionTimer::Retry { saga, attempt } => {
                let Some(p) = self.pays.get(&saga) else {
                    return;
                };
                let a = &p.authorization.authorization;
                let issuer = Address::Institution(a.payer_institution);
                match p.step {
                    PayStep::Locking => {
                        out.send(self.envelope(
                            saga,
                            issuer,
                            attempt,
                            Payload::LockRequest(p.authorization.clone()),
                        ));
                    }
                    PayStep::Committing {
                        issuer_done,
                        backing_done,
                    } => {
                        if !issuer_done {
                            let commit = Payload::CommitRequest {
                                decided_at_ms: p.decided_ms,
                            };
                            out.send(self.envelope(saga, issuer, attempt, commit));
                        }
                        if !backing_done {
                            out.send(self.envelope(
                                saga,
                                Address::CentralBank,
                                attempt,
                                Payload::MoveBacking {
                                    from: a.payer_institution,
                                    to: self.id,
                                    amount: a.amount,
                                },
                            ));
                        }
                    }
                    PayStep::Aborting { reason } => {
                        out.send(self.envelope(
                            saga,
                            issuer,
                            attempt,
                            Payload::AbortRequest { reason },
                        ));
                    }
                    PayStep::Committed | PayStep::Aborted { .. } => return,
                }
                out.timer(
                    self.backoff_ms(attempt),
                    InstitutionTimer::Retry {
                        saga,
                        attempt: attempt + 1,
                    },
                );
            }
            InstitutionTimer::ExchangeRetry { .. } | InstitutionTimer::Redeliver => {
                unreachable!("routed by on_timer")
            }
        }
    }

    // ----- issuer: lock, retire, unlock -----

    fn on_lock_request(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedAuthorization,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Institution(coordinator) = from else {
            return;
        };
        let a = &signed.authorization;
        let reply = |inst: &Self, r: Result<Amount, AbortReason>, out: &mut Out| {
            out.send(inst.envelope(saga, from, 0, Payload::LockReply(r)));
        };
        if a.saga_id != saga || a.payee_institution != coordinator {
            // Only the coordinator the payer named may lock the payer's coins.
            reply(self, Err(AbortReason::PayeeMismatch), out);
            return;
        }
        let digest = signed.digest();
        let answer = self.lock_step(saga, digest, coordinator, now_ms, out, |inst| {
            inst.check_lock(&signed, now_ms).map(|total| LockFacts {
                coin_ids: a.coin_ids.clone(),
                total,
                amount: a.amount,
                payer: a.payer,
                payer_key: a.payer_key,
                payee: a.payee,
                kind: RecordKind::Pay,
            })
        });
        reply(self, answer, out);
    }

    /// The issuer's lock step, shared by payments and merges: a repeated request gets the
    /// recorded answer (a different request under the same saga id is a conflict); a new one
    /// is checked by `check` and its outcome, lock or refusal, is recorded.
    pub(super) fn lock_step(
        &mut self,
        saga: SagaId,
        digest: [u8; 32],
        coordinator: InstitutionId,
        now_ms: u64,
        out: &mut Out,
        check: impl FnOnce(&Self) -> Result<LockFacts, AbortReason>,
    ) -> Result<Amount, AbortReason> {
        if let Some(p) = self.participations.get(&saga) {
            return match (&p.digest, &p.state) {
                (None, _) | (_, ParticipantState::Aborted) => Err(AbortReason::SagaAborted),
                (Some(d), _) if *d != digest => Err(AbortReason::Conflict),
                (_, ParticipantState::Locked { total, .. })
                | (_, ParticipantState::Committed { total }) => Ok(*total),
                (_, ParticipantState::Refused(reason)) => Err(*reason),
            };
        }
        match check(self) {
            Ok(facts) => {
                let total = facts.total;
                self.record(
                    InstitutionEvent::Locked {
                        saga,
                        digest,
                        coordinator,
                        coin_ids: facts.coin_ids,
                        total,
                        amount: facts.amount,
                        payer: facts.payer,
                        payer_key: facts.payer_key,
                        payee: facts.payee,
                        kind: facts.kind,
                        at_ms: now_ms,
                    },
                    out,
                );
                Ok(total)
            }
            Err(reason) => {
                self.record(
                    InstitutionEvent::LockRefused {
                        saga,
                        digest,
                        coordinator,
                        reason,
                        at_ms: now_ms,
                    },
                    out,
                );
                Err(reason)
            }
        }
    }

    /// The coordinator's decision commit: retire the locked coins, issue the change, and make
    /// this institution's transaction record of the step (the coordinator makes its own; one
    /// that is also the issuer makes one record, as coordinator).
    fn on_commit_request(
        &mut self,
        from: Address,
        saga: SagaId,
        decided_at_ms: u64,
        now_ms: u64,
        out: &mut Out,
    ) {
        let reply = |inst: &Self, r: Result<(), AbortReason>, out: &mut Out| {
            out.send(inst.envelope(saga, from, 0, Payload::CommitReply(r)));
        };
        let Some(p) = self.participations.get(&saga) else {
            reply(self, Err(AbortReason::SagaUnknown), out);
            return;
        };
        if from != Address::Institution(p.coordinator) {
            return;
        }
        match &p.state {
            ParticipantState::Locked {
                total,
                amount,
                payer,
                payer_key,
                payee,
                kind,
                ..
            } => {
                let change_value = total
                    .checked_sub(*amount)
                    .expect("lock checked total covers amount");
                let change = (!change_value.is_zero())
                    .then(|| self.issue(*payer_key, change_value, saga, self.next_nonce, now_ms));
                let movement = (p.coordinator != self.id).then_some(Movement {
                    saga,
                    kind: *kind,
                    payer: *payer,
                    payee: *payee,
                    amount: *amount,
                    at_ms: decided_at_ms,
                });
                let payer = *payer;
                self.record(
                    InstitutionEvent::Retired {
                        saga,
                        change: change.clone(),
                        at_ms: now_ms,
                    },
                    out,
                );
                if let Some(movement) = movement {
                    movement.emit(self.id, out);
                }
                if let Some(coin) = change {
                    out.send(self.envelope(
                        saga,
                        Address::Wallet(payer),
                        0,
                        Payload::CoinIssued(coin),
                    ));
                }
                reply(self, Ok(()), out);
            }
            ParticipantState::Committed { .. } => reply(self, Ok(()), out),
            ParticipantState::Refused(_) | ParticipantState::Aborted => {
                reply(self, Err(AbortReason::SagaAborted), out)
            }
        }
    }

    fn on_abort_request(&mut self, from: Address, saga: SagaId, now_ms: u64, out: &mut Out) {
        let Address::Institution(coordinator) = from else {
            return;
        };
        match self.participations.get(&saga) {
            Some(p) if p.coordinator != coordinator => return,
            Some(Participation {
                state: ParticipantState::Committed { .. },
                ..
            }) => {
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
            Some(Participation {
                state: ParticipantState::Locked { .. },
                ..
            })
            | None => self.record(
                InstitutionEvent::Unlocked {
                    saga,
                    coordinator,
                    at_ms: now_ms,
                },
                out,
            ),
            Some(_) => {}
        }
        out.send(self.envelope(saga, from, 0, Payload::AbortReply));
    }

    // ----- exchange: account money into coins -----

    fn on_exchange_request(&mut self, from: Address, saga: SagaId, amount: Amount, out: &mut Out) {
        let Address::Wallet(wallet) = from else {
            return;
        };
        let reply = |inst: &Self, result: Result<(), AbortReason>, out: &mut Out| {
            let decided_at_ms = match (result, inst.exchanges.get(&saga)) {
                (Ok(()), Some(x)) => x.decided_ms,
                _ => 0,
            };
            let payload = Payload::ExchangeReply {
                result,
                decided_at_ms,
            };
            out.send(inst.envelope(saga, from, 0, payload));
        };
        if let Some(x) = self.exchanges.get(&saga) {
            match x.state {
                _ if x.wallet != wallet || x.amount != amount => {
                    reply(self, Err(AbortReason::Conflict), out)
                }
                ExchangeState::Pending => {}
                ExchangeState::Committed => reply(self, Ok(()), out),
                ExchangeState::Aborted(reason) => reply(self, Err(reason), out),
            }
            return;
        }
        let Some(account) = self.accounts.get(&wallet) else {
            reply(self, Err(AbortReason::UnknownWallet), out);
            return;
        };
        let refusal = if amount.is_zero() {
            Some(AbortReason::InvalidAmount)
        } else if account.balance < amount {
            Some(AbortReason::InsufficientFunds)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.record(
                InstitutionEvent::ExchangeRefused {
                    saga,
                    wallet,
                    amount,
                    reason,
                },
                out,
            );
            reply(self, Err(reason), out);
            return;
        }
        self.record(
            InstitutionEvent::ExchangeStarted {
                saga,
                wallet,
                amount,
            },
            out,
        );
        out.send(self.envelope(
            saga,
            Address::CentralBank,
            0,
            Payload::ReserveBacking { amount },
        ));
        out.timer(
            self.backoff_ms(0),
            InstitutionTimer::ExchangeRetry { saga, attempt: 1 },
        );
    }

    /// Splits an amount into coins of the configured denominations, largest first; any rest
    /// becomes one more coin.
    fn split(&self, amount: Amount) -> Vec<Amount> {
        let mut left = amount.0;
        let mut parts = Vec::new();
        for d in &self.limits.denominations {
            while left >= d.0 {
                parts.push(*d);
                left -= d.0;
            }
        }
        if left > 0 {
            parts.push(Amount(left));
        }
        parts
    }

    fn on_exchange_ack(
        &mut self,
        saga: SagaId,
        ack: Result<(), AbortReason>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(x) = self.exchanges.get(&saga) else {
            return;
        };
        if x.state != ExchangeState::Pending {
            return;
        }
        let (wallet, amount) = (x.wallet, x.amount);
        let wallet_addr = Address::Wallet(wallet);
        match ack {
            Ok(()) => {
                let key = self.accounts[&wallet].key;
                let coins: Vec<Coin> = self
                    .split(amount)
                    .into_iter()
                    .enumerate()
                    .map(|(i, value)| {
                        self.issue(key, value, saga, self.next_nonce + i as u64, now_ms)
                    })
                    .collect();
                self.record(
                    InstitutionEvent::ExchangeCommitted {
                        saga,
                        coins: coins.clone(),
                    },
                    out,
                );
                // Account money into coins: the wallet pays itself.
                Movement {
                    saga,
                    kind: RecordKind::Exchange,
                    payer: wallet,
                    payee: wallet,
                    amount,
                    at_ms: now_ms,
                }
                .emit(self.id, out);
                for coin in coins {
                    out.send(self.envelope(saga, wallet_addr, 0, Payload::CoinIssued(coin)));
                }
                let reply = Payload::ExchangeReply {
                    result: Ok(()),
                    decided_at_ms: now_ms,
                };
                out.send(self.envelope(saga, wallet_addr, 0, reply));
            }
            Err(reason) => {
                self.record(InstitutionEvent::ExchangeAborted { saga, reason }, out);
                let reply = Payload::ExchangeReply {
                    result: Err(reason),
                    decided_at_ms: 0,
                };
                out.send(self.envelope(saga, wallet_addr, 0, reply));
            }
        }
    }

    fn on_exchange_timer(&mut self, saga: SagaId, attempt: u32, out: &mut Out) {
        let Some(x) = self.exchanges.get(&saga) else {
            return;
        };
        if x.state == ExchangeState::Pending {
            let amount = x.amount;
            out.send(self.envelope(
                saga,
                Address::CentralBank,
                attempt,
                Payload::ReserveBacking { amount },
            ));
            out.timer(
                self.backoff_ms(attempt),
                InstitutionTimer::ExchangeRetry {
                    saga,
                    attempt: attempt + 1,
                },
            );
        }
    }

    /// Journals the acknowledgements received since the last tick, prunes deduplication
    /// records past their retention, and resends the coins still unacknowledged a retry
    /// interval after their issue (at most [`REDELIVERY_BATCH_MAX`] per tick).
    fn on_redeliver(&mut self, now_ms: u64, out: &mut Out) {
        if !self.acked.is_empty() {
            let mut coin_ids: Vec<CoinId> = self.acked.drain().collect();
            coin_ids.sort_unstable();
            self.record(InstitutionEvent::CoinsDelivered { coin_ids }, out);
        }
        let horizon = now_ms.saturating_sub(self.limits.dedup_retention_ms);
        let mut expired: Vec<SagaId> = self
            .participations
            .iter()
            .filter(|(_, p)| {
                p.at_ms < horizon && !matches!(p.state, ParticipantState::Locked { .. })
            })
            .map(|(saga, _)| *saga)
            .take(DEDUP_PRUNE_BATCH_MAX)
            .collect();
        if !expired.is_empty() {
            expired.sort();
            metrics::counter!("specie_dedup_pruned_total").increment(expired.len() as u64);
            self.record(InstitutionEvent::DedupPruned { sagas: expired }, out);
        }
        self.prune_sagas(now_ms, out);
        let due = now_ms.saturating_sub(self.limits.retry_interval_ms);
        let resend: Vec<CoinId> = self
            .undelivered
            .iter()
            .filter(|(_, issued)| **issued <= due)
            .take(REDELIVERY_BATCH_MAX)
            .map(|(id, _)| *id)
            .collect();
        // A full batch leaves more due: come back soon rather than after the long interval
        // (after a restart every coin whose acknowledgement was not yet recorded is due).
        let backlog = resend.len() == REDELIVERY_BATCH_MAX;
        for id in resend {
            let coin = &self.register[&id].coin;
            let Some(wallet) = self.wallet_of_key.get(&coin.body.owner) else {
                continue;
            };
            metrics::counter!("specie_coins_redelivered_total").increment(1);
            let envelope = self.envelope(
                coin.body.origin_saga,
                Address::Wallet(*wallet),
                1,
                Payload::CoinIssued(coin.clone()),
            );
            out.send(envelope);
        }
        let next = if backlog {
            self.limits.retry_interval_ms
        } else {
            self.limits.retry_interval_max_ms
        };
        out.timer(next, InstitutionTimer::Redeliver);
    }

    fn on_balance_query(&mut self, from: Address, saga: SagaId, amount: Amount, out: &mut Out) {
        let Address::Wallet(wallet) = from else {
            return;
        };
        let (available, coin_ids) = match self.accounts.get(&wallet) {
            Some(account) => self.select_coins(&account.key, amount),
            None => (Amount::ZERO, Vec::new()),
        };
        out.send(self.envelope(
            saga,
            from,
            0,
            Payload::BalanceReply {
                available,
                coin_ids,
            },
        ));
    }

    fn on_status_query(&mut self, from: Address, saga: SagaId, out: &mut Out) {
        let (state, reason, decided_at_ms) =
            self.pays
                .get(&saga)
                .map_or((SagaState::Unknown, None, 0), |p| {
                    let (state, reason) = p.step.saga_state();
                    let decided = if state == SagaState::Committed {
                        p.decided_ms
                    } else {
                        0
                    };
                    (state, reason, decided)
                });
        let reply = Payload::StatusReply {
            state,
            reason,
            decided_at_ms,
        };
        out.send(self.envelope(saga, from, 0, reply));
    }
}

impl StateMachine for Institution {
    type Event = InstitutionEvent;
    type Timer = InstitutionTimer;
    type Command = InstitutionCommand;
    type Snapshot = InstitutionSnapshot;

    fn address(&self) -> Address {
        Address::Institution(self.id)
    }

    fn apply(&mut self, event: &InstitutionEvent) {
        match event {
            InstitutionEvent::AccountOpened {
                wallet,
                key,
                deposit,
            } => {
                self.wallet_of_key.insert(*key, *wallet);
                self.accounts.insert(
                    *wallet,
                    Account {
                        key: *key,
                        balance: *deposit,
                    },
                );
            }
            InstitutionEvent::Locked {
                saga,
                digest,
                coordinator,
                coin_ids,
                total,
                amount,
                payer,
                payer_key,
                payee,
                kind,
                at_ms,
            } => {
                for id in coin_ids {
                    self.set_state(id, CoinState::Locked(*saga));
                }
                self.participations.insert(
                    *saga,
                    Participation {
                        at_ms: *at_ms,
                        digest: Some(*digest),
                        coordinator: *coordinator,
                        state: ParticipantState::Locked {
                            coin_ids: coin_ids.clone(),
                            total: *total,
                            amount: *amount,
                            payer: *payer,
                            payer_key: *payer_key,
                            payee: *payee,
                            kind: *kind,
                        },
                    },
                );
            }
            InstitutionEvent::LockRefused {
                saga,
                digest,
                coordinator,
                reason,
                at_ms,
            } => {
                self.participations.insert(
                    *saga,
                    Participation {
                        at_ms: *at_ms,
                        digest: Some(*digest),
                        coordinator: *coordinator,
                        state: ParticipantState::Refused(*reason),
                    },
                );
            }
            InstitutionEvent::Retired {
                saga,
                change,
                at_ms,
            } => {
                let p = self
                    .participations
                    .get_mut(saga)
                    .expect("retire follows lock");
                p.at_ms = *at_ms;
                let ParticipantState::Locked {
                    coin_ids, total, ..
                } = &p.state
                else {
                    panic!("retire of saga {saga} that is not locked");
                };
                let (coin_ids, total) = (coin_ids.clone(), *total);
                p.state = ParticipantState::Committed { total };
                for id in &coin_ids {
                    self.set_state(id, CoinState::Spent(*saga));
                }
                if let Some(coin) = change {
                    self.register_coin(coin);
                }
            }
            InstitutionEvent::DedupPruned { sagas } => {
                for saga in sagas {
                    self.participations.remove(saga);
                }
            }
            InstitutionEvent::Unlocked {
                saga,
                coordinator,
                at_ms,
            } => {
                let previous = self.participations.insert(
                    *saga,
                    Participation {
                        at_ms: *at_ms,
                        digest: None,
                        coordinator: *coordinator,
                        state: ParticipantState::Aborted,
                    },
                );
                if let Some(Participation {
                    digest,
                    state: ParticipantState::Locked { coin_ids, .. },
                    ..
                }) = previous
                {
                    for id in &coin_ids {
                        self.set_state(id, CoinState::Active);
                    }
                    self.participations
                        .get_mut(saga)
                        .expect("just inserted")
                        .digest = digest;
                }
            }
            InstitutionEvent::PayStarted {
                authorization,
                requester,
                at_ms,
            } => {
                self.pays.insert(
                    authorization.authorization.saga_id,
                    PaySaga {
                        digest: authorization.digest(),
                        authorization: authorization.clone(),
                        requester: *requester,
                        started_ms: *at_ms,
                        step: PayStep::Locking,
                        decided_ms: 0,
                    },
                );
            }
            InstitutionEvent::PayCommitDecided { saga, payee_coin } => {
                self.register_coin(payee_coin);
                let p = self.pays.get_mut(saga).expect("decided saga exists");
                p.step = PayStep::Committing {
                    issuer_done: false,
                    backing_done: false,
                };
                // The payee's coin is issued at the decision.
                p.decided_ms = payee_coin.body.issued_at_ms;
            }
            InstitutionEvent::PayAbortDecided {
                saga,
                reason,
                unlock,
            } => {
                self.pays.get_mut(saga).expect("decided saga exists").step = if *unlock {
                    PayStep::Aborting { reason: *reason }
                } else {
                    PayStep::Aborted { reason: *reason }
                };
            }
            InstitutionEvent::PayIssuerDone { saga } => {
                let p = self.pays.get_mut(saga).expect("acknowledged saga exists");
                p.step = match p.step {
                    PayStep::Committing { backing_done, .. } if backing_done => PayStep::Committed,
                    PayStep::Committing { .. } => PayStep::Committing {
                        issuer_done: true,
                        backing_done: false,
                    },
                    PayStep::Aborting { reason } => PayStep::Aborted { reason },
                    other => other,
                };
            }
            InstitutionEvent::PayBackingDone { saga } => {
                let p = self.pays.get_mut(saga).expect("acknowledged saga exists");
                p.step = match p.step {
                    PayStep::Committing { issuer_done, .. } if issuer_done => PayStep::Committed,
                    PayStep::Committing { .. } => PayStep::Committing {
                        issuer_done: false,
                        backing_done: true,
                    },
                    other => other,
                };
            }
            InstitutionEvent::PayLocal {
                authorization,
                requester,
                at_ms,
                outcome,
            } => {
                let saga = authorization.authorization.saga_id;
                let step = match outcome {
                    Ok((payee_coin, change)) => {
                        for id in &authorization.authorization.coin_ids {
                            self.set_state(id, CoinState::Spent(saga));
                        }
                        self.register_coin(payee_coin);
                        if let Some(change) = change {
                            self.register_coin(change);
                        }
                        PayStep::Committed
                    }
                    Err(reason) => PayStep::Aborted { reason: *reason },
                };
                self.pays.insert(
                    saga,
                    PaySaga {
                        digest: authorization.digest(),
                        authorization: authorization.clone(),
                        requester: *requester,
                        started_ms: *at_ms,
                        step,
                        decided_ms: if outcome.is_ok() { *at_ms } else { 0 },
                    },
                );
            }
            InstitutionEvent::ExchangeStarted {
                saga,
                wallet,
                amount,
            } => {
                let account = self
                    .accounts
                    .get_mut(wallet)
                    .expect("exchange checked the account");
                account.balance = account
                    .balance
                    .checked_sub(*amount)
                    .expect("exchange checked the balance");
                self.exchanges.insert(
                    *saga,
                    Exchange {
                        wallet: *wallet,
                        amount: *amount,
                        state: ExchangeState::Pending,
                        decided_ms: 0,
                    },
                );
            }
            InstitutionEvent::ExchangeRefused {
                saga,
                wallet,
                amount,
                reason,
            } => {
                self.exchanges.insert(
                    *saga,
                    Exchange {
                        wallet: *wallet,
                        amount: *amount,
                        state: ExchangeState::Aborted(*reason),
                        decided_ms: 0,
                    },
                );
            }
            InstitutionEvent::CoinsDelivered { coin_ids } => {
                for id in coin_ids {
                    self.undelivered.remove(id);
                }
            }
            InstitutionEvent::ExchangeCommitted { saga, coins } => {
                for coin in coins {
                    self.register_coin(coin);
                }
                let x = self.exchanges.get_mut(saga).expect("started");
                x.state = ExchangeState::Committed;
                // The coins are issued at the decision.
                x.decided_ms = coins.first().map_or(0, |c| c.body.issued_at_ms);
            }
            InstitutionEvent::ExchangeAborted { saga, reason } => {
                let x = self.exchanges.get_mut(saga).expect("started");
                x.state = ExchangeState::Aborted(*reason);
                let (wallet, amount) = (x.wallet, x.amount);
                let account = self
                    .accounts
                    .get_mut(&wallet)
                    .expect("exchange checked the account");
                account.balance = account.balance.checked_add(amount).expect("refund fits");
            }
            InstitutionEvent::Escrow(event) => self.apply_escrow(event),
            InstitutionEvent::Update(event) => self.apply_update(event),
            InstitutionEvent::Merge(event) => self.apply_merge(event),
            InstitutionEvent::Offline(event) => self.apply_offline(event),
        }
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Out) {
        self.wake_escrows(out);
        // Coins recovered as undelivered (their acknowledgements not recorded before the
        // stop) go out again soon, not after the long interval.
        let first = if self.undelivered.is_empty() {
            self.limits.retry_interval_max_ms
        } else {
            self.limits.retry_interval_ms
        };
        out.timer(first, InstitutionTimer::Redeliver);
        // Re-drive everything in flight from its last persisted step, in saga order so that
        // a deterministic simulation arms the same timers in the same order every time.
        let mut pays: Vec<_> = self.pays.iter().collect();
        pays.sort_unstable_by_key(|(saga, _)| **saga);
        for (saga, p) in pays {
            match p.step {
                PayStep::Locking => {
                    let left = (p.started_ms + self.limits.saga_timeout_ms).saturating_sub(now_ms);
                    out.timer(left, InstitutionTimer::LockTimeout(*saga));
                    out.timer(
                        0,
                        InstitutionTimer::Retry {
                            saga: *saga,
                            attempt: 0,
                        },
                    );
                }
                PayStep::Committing { .. } | PayStep::Aborting { .. } => {
                    out.timer(
                        0,
                        InstitutionTimer::Retry {
                            saga: *saga,
                            attempt: 0,
                        },
                    );
                }
                PayStep::Committed | PayStep::Aborted { .. } => {}
            }
        }
        let mut exchanges: Vec<_> = self.exchanges.iter().collect();
        exchanges.sort_unstable_by_key(|(saga, _)| **saga);
        for (saga, x) in exchanges {
            if x.state == ExchangeState::Pending {
                out.timer(
                    0,
                    InstitutionTimer::ExchangeRetry {
                        saga: *saga,
                        attempt: 0,
                    },
                );
            }
        }
        self.on_sagas_start(now_ms, out);
    }

    fn on_envelope(&mut self, envelope: Envelope, now_ms: u64, out: &mut Out) {
        if self.routes_to_sagas(&envelope) {
            // Merge, split and offline messages, and the shared steps of their sagas.
            return self.on_saga_envelope(envelope, now_ms, out);
        }
        let (from, saga) = (envelope.from, envelope.saga_id);
        match envelope.payload {
            Payload::BalanceQuery { amount } => self.on_balance_query(from, saga, amount, out),
            Payload::RedeemRequest(signed) => self.on_redeem(from, saga, signed, now_ms, out),
            Payload::LockRequest(signed) => self.on_lock_request(from, saga, signed, now_ms, out),
            Payload::LockReply(reply) => self.on_lock_reply(from, saga, reply, now_ms, out),
            Payload::CommitRequest { decided_at_ms } => {
                self.on_commit_request(from, saga, decided_at_ms, now_ms, out)
            }
            Payload::CommitReply(reply) => {
                // Only the issuer of the saga's coins can acknowledge their retirement.
                let committing = self.pays.get(&saga).is_some_and(|p| {
                    matches!(
                        p.step,
                        PayStep::Committing {
                            issuer_done: false,
                            ..
                        }
                    ) && from
                        == Address::Institution(p.authorization.authorization.payer_institution)
                });
                match reply {
                    Ok(()) if committing => {
                        self.record(InstitutionEvent::PayIssuerDone { saga }, out)
                    }
                    Ok(()) => {}
                    Err(reason) => {
                        metrics::counter!("specie_protocol_violations_total", "what" => "commit_refused").increment(1);
                        eprintln!(
                            "{}: issuer refused commit of saga {saga}: {reason}",
                            self.id
                        );
                    }
                }
            }
            Payload::AbortRequest { .. } => self.on_abort_request(from, saga, now_ms, out),
            Payload::AbortReply => {
                let aborting = self.pays.get(&saga).is_some_and(|p| {
                    matches!(p.step, PayStep::Aborting { .. })
                        && from
                            == Address::Institution(p.authorization.authorization.payer_institution)
                });
                if aborting {
                    self.record(InstitutionEvent::PayIssuerDone { saga }, out);
                }
            }
            Payload::ReserveAck(ack) if from == Address::CentralBank && self.is_payout(&saga) => {
                self.on_payout_backing(saga, ack, out)
            }
            Payload::ReserveAck(ack)
                if from == Address::CentralBank && self.is_withdrawal(&saga) =>
            {
                self.on_withdraw_backing(saga, ack, out)
            }
            Payload::ReserveAck(ack) if from == Address::CentralBank => {
                if let Some(p) = self.pays.get(&saga) {
                    match (ack, p.step) {
                        (
                            Ok(()),
                            PayStep::Committing {
                                backing_done: false,
                                ..
                            },
                        ) => self.record(InstitutionEvent::PayBackingDone { saga }, out),
                        (Ok(()), _) => {}
                        (Err(reason), _) => {
                            metrics::counter!("specie_protocol_violations_total", "what" => "backing_refused").increment(1);
                            eprintln!(
                                "{}: central bank refused backing move of saga {saga}: {reason}",
                                self.id
                            );
                        }
                    }
                } else {
                    self.on_exchange_ack(saga, ack, now_ms, out);
                }
            }
            Payload::StatusQuery => self.on_status_query(from, saga, out),
            Payload::CoinAck { coin_ids } => {
                for id in coin_ids {
                    if self.undelivered.contains_key(&id) {
                        self.acked.insert(id);
                    }
                }
            }
            Payload::ExchangeRequest { amount } => {
                self.on_exchange_request(from, saga, amount, out)
            }
            Payload::Escrow(message) => self.on_escrow_message(from, saga, message, now_ms, out),
            Payload::WalletUpdate(message) => {
                self.on_update_message(from, saga, message, now_ms, out)
            }
            other => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
                let _ = other;
            }
        }
    }

    fn on_timer(&mut self, key: InstitutionTimer, now_ms: u64, out: &mut Out) {
        match key {
            InstitutionTimer::Redeliver => self.on_redeliver(now_ms, out),
            InstitutionTimer::ExchangeRetry { saga, attempt } => {
                self.on_exchange_timer(saga, attempt, out)
            }
            key if self.owns_saga_timer(&key) => self.on_saga_timer(key, out),
            other => self.on_pay_timer(other, out),
        }
    }

    fn on_command(&mut self, command: InstitutionCommand, _now_ms: u64, out: &mut Out) {
        match command {
            // Genesis opens each account once; a repeated genesis (after a crash) is a no-op.
            InstitutionCommand::OpenAccount { wallet, .. }
                if self.accounts.contains_key(&wallet) => {}
            InstitutionCommand::OpenAccount {
                wallet,
                key,
                deposit,
            } => self.record(
                InstitutionEvent::AccountOpened {
                    wallet,
                    key,
                    deposit,
                },
                out,
            ),
            InstitutionCommand::PublishWalletParams(params) => self.publish_params(params, out),
        }
    }

    fn checkpoint(&self) -> Option<Vec<u8>> {
        let checkpoint = CheckpointRef {
            accounts: &self.accounts,
            register: &self.register,
            next_nonce: self.next_nonce,
            participations: &self.participations,
            pays: &self.pays,
            exchanges: &self.exchanges,
            undelivered: &self.undelivered,
            escrows: &self.escrows,
            platform: &self.platform,
            sagas: &self.sagas,
        };
        Some(postcard::to_stdvec(&checkpoint).expect("state serializes"))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let c: Checkpoint = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        self.holdings.clear();
        for (id, record) in &c.register {
            if !matches!(record.state, CoinState::Spent(_)) {
                self.holdings
                    .entry(record.coin.body.owner)
                    .or_default()
                    .insert(*id);
            }
        }
        self.wallet_of_key = c.accounts.iter().map(|(w, a)| (a.key, *w)).collect();
        self.accounts = c.accounts;
        self.register = c.register;
        self.next_nonce = c.next_nonce;
        self.participations = c.participations;
        self.pays = c.pays;
        self.exchanges = c.exchanges;
        self.undelivered = c.undelivered;
        self.escrows = c.escrows;
        self.platform = c.platform;
        self.sagas = c.sagas;
        self.on_sagas_restored();
        self.acked.clear();
        Ok(())
    }

    /// Signs every coin this institution issued that leaves in the batch with one signature
    /// over their Merkle root (each coin carries its path). Coins are journaled unsealed —
    /// the register is this institution's own record — and a redelivery after a restart is
    /// sealed again in its own batch.
    fn seal(&self, sends: &mut [Envelope]) {
        let mut coins: Vec<&mut Coin> = sends
            .iter_mut()
            .filter_map(|e| match &mut e.payload {
                Payload::CoinIssued(coin) if coin.body.issuer == self.id && !coin.is_sealed() => {
                    Some(coin)
                }
                _ => None,
            })
            .collect();
        if !coins.is_empty() {
            Coin::seal_batch(&mut coins, self.keys.as_ref());
        }
    }

    fn snapshot(&self) -> InstitutionSnapshot {
        InstitutionSnapshot {
            coins_in_delivery: self
                .undelivered
                .keys()
                .filter(|id| !self.acked.contains(id))
                .count(),
            id: self.id,
            accounts: self.accounts.clone(),
            coins: self
                .register
                .iter()
                .map(|(id, record)| (*id, CoinRecord::clone(record)))
                .collect(),
            pays: self
                .pays
                .iter()
                .map(|(saga, p)| {
                    let a = &p.authorization.authorization;
                    (
                        *saga,
                        PaySummary {
                            payer_institution: a.payer_institution,
                            amount: a.amount,
                            coin_ids: a.coin_ids.clone(),
                            step: p.step,
                        },
                    )
                })
                .collect(),
            exchanges: self
                .exchanges
                .iter()
                .map(|(saga, x)| (*saga, (x.wallet, x.amount, x.state)))
                .collect(),
            escrow_holds: self.escrows.hold_summaries(),
            payouts: self.escrows.payout_summaries(),
            withdrawals: self.platform.withdrawal_summaries(),
            params_version: self.platform.params().version,
            sagas: self.sagas_snapshot(),
        }
    }
}
