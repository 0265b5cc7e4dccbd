//! The wallet's rules.
//!
//! Payer side of the pay saga: ask the institution whether the amount is within the available
//! balance and which coins cover it, sign the authorization in the key store, hand the payment
//! request to the payee's wallet, and wait for the coordinator's outcome (asking for the
//! saga's status when it is slow to come). Payee side: forward the payment to its own
//! institution, which coordinates, and take the new coin. A merchant starts with a collect
//! request and the payer answers with the payment.

use crate::compact::SmallMap;
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::PublicKey;
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::reconcile::RecordKind;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, Envelope, InstitutionId, KeyStore, Payload,
    PaymentAuthorization, SagaId, SagaKind, SagaState, SignedAuthorization, SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};

// Escrow pre-payment, wallet update and proximity negotiation: child modules, so that their
// steps use the wallet's coins, operations and key store as the pay saga's do.
#[path = "escrow.rs"]
mod escrow;
#[path = "negotiate.rs"]
mod negotiate;
#[path = "update.rs"]
mod update;
pub use escrow::{EscrowCommand, EscrowOp, EscrowWalletEvent};
pub use negotiate::{NegotiateCommand, NegotiateOp, NegotiationEvent, AGREEMENTS_MAX};
pub use update::{UpdateCommand, UpdateEvent, UpdateOp, UpdateStep};
// Merge, split and offline payment: child modules too, for the same reason.
#[path = "sagas.rs"]
mod sagas;
pub use sagas::{
    OfflineCommand, OfflineSettings, OfflineSnapshot, OfflineSource, SagaOp, SagaWalletEvent,
    CHAINS_HELD_MAX, DOUBLE_SPEND_REPORTS_MAX,
};

/// Settings of a wallet, from the validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletLimits {
    /// How long a signed authorization stays valid.
    pub authorization_ttl_ms: u64,
    /// Wait this long for an outcome before asking again.
    pub outcome_timeout_ms: u64,
    /// The coordinators' lock timeout: after an authorization expired plus this, a saga the
    /// coordinator has never heard of can no longer commit.
    pub saga_timeout_ms: u64,
    /// How long records of finished operations and spent coins are kept for deduplication.
    pub dedup_retention_ms: u64,
}

/// An operation the wallet has in flight.
// Most operations in flight are payments, which carry the signed authorization anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletOp {
    /// Paying (on its own initiative, or answering a merchant's collect request).
    Pay {
        /// Receiving wallet.
        payee: WalletId,
        /// Its institution (the coordinator).
        payee_institution: InstitutionId,
        /// Amount.
        amount: Amount,
        /// True when this wallet started the payment (it reports the outcome).
        initiator: bool,
        /// Coins to spend, when the client chose them; else the institution selects.
        chosen: Option<Vec<CoinId>>,
        /// The signed authorization, once signed.
        signed: Option<SignedAuthorization>,
        /// A merchant's collect request caps the authorization's expiry.
        expires_by_ms: Option<u64>,
    },
    /// Collecting as a merchant.
    Collect {
        /// Paying wallet.
        payer: WalletId,
        /// Amount.
        amount: Amount,
        /// The payer's authorization must expire by then.
        expires_at_ms: u64,
    },
    /// Exchanging account money into coins.
    Exchange {
        /// Amount.
        amount: Amount,
    },
    /// An escrow deposit, claim or release.
    Escrow(EscrowOp),
    /// Updating the wallet.
    Update(UpdateOp),
    /// Negotiating a proximity payment.
    Negotiate(NegotiateOp),
}

impl WalletOp {
    fn kind(&self) -> SagaKind {
        match self {
            WalletOp::Pay { .. } | WalletOp::Collect { .. } => SagaKind::Pay,
            WalletOp::Exchange { .. } => SagaKind::Exchange,
            WalletOp::Escrow(op) => op.kind(),
            WalletOp::Update(_) => SagaKind::WalletUpdate,
            WalletOp::Negotiate(_) => SagaKind::Negotiation,
        }
    }

    fn reports(&self) -> bool {
        match self {
            WalletOp::Pay { initiator, .. } => *initiator,
            WalletOp::Collect { .. } | WalletOp::Exchange { .. } => true,
            WalletOp::Escrow(_) | WalletOp::Update(_) | WalletOp::Negotiate(_) => true,
        }
    }
}

/// Journaled facts of a wallet.
// Events live for one step and most carry coins, chains or authorizations; boxing the large
// variants would add an allocation to every step for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletEvent {
    /// An operation started.
    OpStarted {
        /// Its saga.
        saga: SagaId,
        /// What.
        op: WalletOp,
    },
    /// The payer signed the authorization.
    Signed {
        /// The signed authorization.
        signed: SignedAuthorization,
    },
    /// An operation ended; on a committed payment its coins are gone.
    OpFinished {
        /// Its saga.
        saga: SagaId,
        /// Outcome.
        result: Result<(), AbortReason>,
        /// Coins spent (committed payments).
        spent: Vec<CoinId>,
        /// When.
        at_ms: u64,
    },
    /// Records of operations finished longer ago than the deduplication retention are
    /// forgotten.
    DedupPruned {
        /// Finished operations dropped.
        sagas: Vec<SagaId>,
        /// Spent coins dropped.
        coins: Vec<CoinId>,
    },
    /// A valid coin arrived.
    CoinReceived {
        /// The coin.
        coin: Coin,
    },
    /// A step of an escrow operation.
    Escrow(EscrowWalletEvent),
    /// A step of an update.
    Update(UpdateEvent),
    /// A negotiation's result.
    Negotiation(NegotiationEvent),
    /// A step of a merge, split or offline payment.
    Sagas(SagaWalletEvent),
}

/// The terms of a merchant's collect request.
#[derive(Debug, Clone, Copy)]
struct CollectTerms {
    amount: Amount,
    payee: WalletId,
    payee_institution: InstitutionId,
    expires_at_ms: u64,
}

/// Local commands: what a user (or the workload) asks of the wallet.
#[derive(Debug, Clone)]
pub enum WalletCommand {
    /// Pay `amount` to `payee`.
    Pay {
        /// New saga id.
        saga: SagaId,
        /// Receiving wallet.
        payee: WalletId,
        /// Its institution.
        payee_institution: InstitutionId,
        /// Amount.
        amount: Amount,
        /// Spend exactly these coins instead of asking the institution to select.
        coins: Option<Vec<CoinId>>,
    },
    /// As a merchant, ask `payer` to pay `amount`.
    Collect {
        /// New saga id.
        saga: SagaId,
        /// Paying wallet.
        payer: WalletId,
        /// Amount.
        amount: Amount,
    },
    /// Exchange account money into coins.
    Exchange {
        /// New saga id.
        saga: SagaId,
        /// Amount.
        amount: Amount,
    },
    /// Open, claim from or release an escrow.
    Escrow(EscrowCommand),
    /// Update the wallet (withdraw, sync, apply new parameters).
    Update(UpdateCommand),
    /// Negotiate a proximity payment with another wallet.
    Negotiate(NegotiateCommand),
    /// Merge these coins into one coin of the wallet's institution.
    Merge {
        /// New saga id.
        saga: SagaId,
        /// The coins (held by the wallet, distinct, at least one).
        coins: Vec<CoinId>,
    },
    /// Split a coin at its issuer into `amount` and the rest.
    Split {
        /// New saga id.
        saga: SagaId,
        /// The coin.
        coin: CoinId,
        /// Value of the first part (`0 < amount < coin value`).
        amount: Amount,
    },
    /// Pay offline, take a chain, redeem chains, sync.
    Offline(OfflineCommand),
}

/// Timers of a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletTimer {
    /// The operation waited on.
    pub saga: SagaId,
    /// How many times it has been chased.
    pub attempt: u32,
}

/// What audits read.
#[derive(Debug, Clone)]
pub struct WalletSnapshot {
    /// The wallet.
    pub id: WalletId,
    /// Its institution.
    pub institution: InstitutionId,
    /// Its public key.
    pub key: PublicKey,
    /// Coins held.
    pub coins: Vec<Coin>,
    /// Operations in flight.
    pub pending: usize,
    /// The wallet parameters version it runs.
    pub params_version: u32,
    /// The account balance its institution reported at its last update (`None` before any).
    pub account_balance: Option<Amount>,
    /// Offline payments: limit, chains held, double spends detected.
    pub offline: OfflineSnapshot,
}

/// The parameters every wallet ships with, shared rather than copied into each of a million
/// wallets (two small vectors and 80 bytes each).
static SHIPPED_PARAMS: LazyLock<Arc<specie_protocol::update::WalletParams>> =
    LazyLock::new(|| Arc::new(specie_protocol::update::WalletParams::shipped()));

/// A wallet's state.
pub struct Wallet {
    id: WalletId,
    institution: InstitutionId,
    keys: Arc<SoftKeyStore>,
    issuers: Arc<HashMap<InstitutionId, PublicKey>>,
    limits: Arc<WalletLimits>,
    /// Coins held. This and the two dedup maps below are [`SmallMap`]s: most wallets hold a
    /// coin or two, and a million wallets must not pay a tree node or hash table each.
    coins: SmallMap<CoinId, Coin>,
    /// Operations in flight (emptied maps give their table back: see `apply`).
    ops: HashMap<SagaId, WalletOp>,
    /// Outcomes of finished operations, so a repeated request is recognised.
    finished: SmallMap<SagaId, (Result<(), AbortReason>, u64)>,
    /// Coins spent by committed payments. A coin id is never reissued, so a `CoinIssued` for
    /// one of them is a duplicate delivered late, or one that arrived after the outcome that
    /// spent the coin: it must not bring the spent coin back into the wallet.
    spent: SmallMap<CoinId, u64>,
    /// The time of the step being handled (not state: set at every input).
    now_ms: u64,
    /// When to look for records past their retention next (not state).
    next_prune_ms: u64,
    /// The parameters it runs with (versioned by its institution, applied by updates).
    /// Shared: every wallet starts with the same shipped parameters ([`SHIPPED_PARAMS`]).
    params: Arc<specie_protocol::update::WalletParams>,
    /// The account balance its institution last reported (wallet update).
    account_balance: Option<Amount>,
    /// Features agreed with peers, oldest first (at most [`AGREEMENTS_MAX`]).
    agreements: VecDeque<(WalletId, specie_protocol::negotiate::AgreedFeatures)>,
    /// Merges, splits and offline payments (`sagas.rs`).
    sagas: sagas::WalletSagas,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("id", &self.id)
            .field("coins", &self.coins.len())
            .finish_non_exhaustive()
    }
}

type Out = Effects<WalletEvent, WalletTimer>;

impl Wallet {
    /// A wallet with no coins.
    pub fn new(
        id: WalletId,
        institution: InstitutionId,
        keys: Arc<SoftKeyStore>,
        issuers: Arc<HashMap<InstitutionId, PublicKey>>,
        limits: Arc<WalletLimits>,
    ) -> Wallet {
        Wallet {
            id,
            institution,
            keys,
            issuers,
            limits,
            coins: SmallMap::new(),
            ops: HashMap::new(),
            finished: SmallMap::new(),
            spent: SmallMap::new(),
            now_ms: 0,
            next_prune_ms: 0,
            params: SHIPPED_PARAMS.clone(),
            account_balance: None,
            agreements: VecDeque::new(),
            sagas: sagas::WalletSagas::default(),
        }
    }

    /// The value of the coins held.
    pub fn balance(&self) -> Amount {
        Amount::sum(self.coins.values().map(Coin::value)).expect("supply fits u64")
    }

    fn envelope(&self, saga: SagaId, to: Address, attempt: u32, payload: Payload) -> Envelope {
        Envelope {
            message_id: 0,
            saga_id: saga,
            from: Address::Wallet(self.id),
            to,
            attempt,
            trace: None,
            payload,
        }
    }

    fn finish(&mut self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        let Some(op) = self.ops.get(&saga) else {
            return;
        };
        let spent = match (op, result) {
            (
                WalletOp::Pay {
                    signed: Some(s), ..
                },
                Ok(()),
            ) => s.authorization.coin_ids.clone(),
            (WalletOp::Escrow(op), Ok(())) => op.spent_coins(),
            _ => Vec::new(),
        };
        let (kind, reports) = (op.kind(), op.reports());
        self.record(
            WalletEvent::OpFinished {
                saga,
                result,
                spent: spent.clone(),
                at_ms: self.now_ms,
            },
            out,
        );
        if reports {
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
        }
    }

    /// The reconciliation platform's copy of the transaction records of an operation its
    /// coordinator committed at `decided_at_ms`, from the wallet's own knowledge (called
    /// before the operation finishes, once per operation). A payment is recorded by its payer
    /// (who signed what it pays), at the payee's institution, which coordinated, and at the
    /// payer's, which retired the coins, when they differ; an exchange at the wallet's own.
    fn ledger_committed(&self, saga: SagaId, decided_at_ms: u64, out: &mut Out) {
        match self.ops.get(&saga) {
            Some(WalletOp::Pay {
                signed: Some(signed),
                ..
            }) => {
                let a = &signed.authorization;
                let movement = Movement {
                    saga,
                    kind: RecordKind::Pay,
                    payer: a.payer,
                    payee: a.payee,
                    amount: a.amount,
                    at_ms: decided_at_ms,
                };
                movement.emit(a.payee_institution, out);
                if a.payer_institution != a.payee_institution {
                    movement.emit(a.payer_institution, out);
                }
            }
            Some(WalletOp::Exchange { amount }) => Movement {
                saga,
                kind: RecordKind::Exchange,
                payer: self.id,
                payee: self.id,
                amount: *amount,
                at_ms: decided_at_ms,
            }
            .emit(self.institution, out),
            _ => {}
        }
    }

    /// Refuses a command before anything starts.
    fn refuse(&self, saga: SagaId, kind: SagaKind, reason: AbortReason, out: &mut Out) {
        out.notice(Notice {
            saga_id: saga,
            source: Address::Wallet(self.id),
            outcome: SagaOutcome {
                kind,
                result: Err(reason),
                spent_coin_ids: Vec::new(),
                decided_at_ms: 0,
            },
        });
    }

    fn start_pay(&mut self, saga: SagaId, op: WalletOp, now_ms: u64, out: &mut Out) {
        let WalletOp::Pay { amount, chosen, .. } = &op else {
            unreachable!("start_pay takes a payment")
        };
        let (amount, chosen) = (*amount, chosen.clone());
        self.record(WalletEvent::OpStarted { saga, op }, out);
        // The wallet pays at once with coins it holds when they cover the amount (one round
        // trip fewer); it asks its institution only when they do not — the institution's
        // register may know coins whose delivery has not reached the wallet yet.
        match chosen.or_else(|| self.wallet_selection(amount)) {
            Some(coin_ids) => self.sign_and_send(saga, coin_ids, now_ms, out),
            None => out.send(self.envelope(
                saga,
                Address::Institution(self.institution),
                0,
                Payload::BalanceQuery { amount },
            )),
        }
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer { saga, attempt: 1 },
        );
    }

    fn sign_and_send(&mut self, saga: SagaId, coin_ids: Vec<CoinId>, now_ms: u64, out: &mut Out) {
        let Some(WalletOp::Pay {
            payee,
            payee_institution,
            amount,
            expires_by_ms,
            ..
        }) = self.ops.get(&saga)
        else {
            return;
        };
        let own_expiry = now_ms + self.limits.authorization_ttl_ms;
        let signed = PaymentAuthorization {
            saga_id: saga,
            payer: self.id,
            payer_key: self.keys.public_key(),
            payer_institution: self.institution,
            coin_ids,
            amount: *amount,
            payee: *payee,
            payee_institution: *payee_institution,
            expires_at_ms: expires_by_ms.map_or(own_expiry, |cap| cap.min(own_expiry)),
        }
        .sign(self.keys.as_ref());
        let payee = *payee;
        self.record(
            WalletEvent::Signed {
                signed: signed.clone(),
            },
            out,
        );
        out.send(self.envelope(
            saga,
            Address::Wallet(payee),
            0,
            Payload::PaymentRequest(signed),
        ));
    }

    fn decline(&self, saga: SagaId, to: Address, reason: AbortReason, out: &mut Out) {
        out.send(self.envelope(saga, to, 0, Payload::PaymentDeclined { reason }));
    }

    fn on_balance_reply(
        &mut self,
        saga: SagaId,
        mut coin_ids: Vec<CoinId>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(WalletOp::Pay {
            signed: None,
            chosen: None,
            initiator,
            payee,
            amount,
            ..
        }) = self.ops.get(&saga)
        else {
            return; // late or duplicate reply
        };
        if !coin_ids.is_empty() && self.selection_is_stale(&coin_ids) {
            metrics::counter!("specie_stale_selections_replaced_total").increment(1);
            coin_ids = self.own_selection(*amount);
        }
        if coin_ids.is_empty() {
            if !initiator {
                self.decline(
                    saga,
                    Address::Wallet(*payee),
                    AbortReason::InsufficientFunds,
                    out,
                );
            }
            self.finish(saga, Err(AbortReason::InsufficientFunds), out);
        } else {
            self.sign_and_send(saga, coin_ids, now_ms, out);
        }
    }

    fn on_collect_request(
        &mut self,
        from: Address,
        saga: SagaId,
        terms: CollectTerms,
        now_ms: u64,
        out: &mut Out,
    ) {
        let CollectTerms {
            amount,
            payee,
            payee_institution,
            expires_at_ms,
        } = terms;
        if self.ops.contains_key(&saga) {
            return; // duplicate: already answering
        }
        if let Some((result, _)) = self.finished.get(&saga) {
            if let Err(reason) = result {
                self.decline(saga, from, *reason, out);
            }
            return;
        }
        if from != Address::Wallet(payee) || payee == self.id {
            self.decline(saga, from, AbortReason::PayeeMismatch, out);
            return;
        }
        if amount.is_zero() {
            self.decline(saga, from, AbortReason::InvalidAmount, out);
            return;
        }
        if now_ms >= expires_at_ms {
            self.decline(saga, from, AbortReason::Expired, out);
            return;
        }
        let op = WalletOp::Pay {
            payee,
            payee_institution,
            amount,
            initiator: false,
            chosen: None,
            signed: None,
            expires_by_ms: Some(expires_at_ms),
        };
        self.start_pay(saga, op, now_ms, out);
    }

    fn on_payment_request(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedAuthorization,
        out: &mut Out,
    ) {
        let a = &signed.authorization;
        let mut fits = a.saga_id == saga
            && a.payee == self.id
            && a.payee_institution == self.institution
            && from == Address::Wallet(a.payer);
        if let Some(op) = self.ops.get(&saga) {
            fits &= matches!(op, WalletOp::Collect { payer, amount, expires_at_ms }
                if *payer == a.payer && *amount == a.amount && a.expires_at_ms <= *expires_at_ms);
        }
        if !fits {
            self.decline(saga, from, AbortReason::PayeeMismatch, out);
            return;
        }
        out.send(self.envelope(
            saga,
            Address::Institution(self.institution),
            0,
            Payload::RedeemRequest(signed),
        ));
    }

    /// Drops records of operations finished, and of coins spent, longer ago than the
    /// deduplication retention (looked for at most every eighth of the retention).
    fn prune(&mut self, now_ms: u64, out: &mut Out) {
        if now_ms < self.next_prune_ms {
            return;
        }
        let retention = self.limits.dedup_retention_ms;
        self.next_prune_ms = now_ms + retention / 8;
        let horizon = now_ms.saturating_sub(retention);
        let mut sagas: Vec<SagaId> = self
            .finished
            .iter()
            .filter(|(_, (_, at))| *at < horizon)
            .map(|(s, _)| *s)
            .collect();
        let mut coins: Vec<CoinId> = self
            .spent
            .iter()
            .filter(|(_, at)| **at < horizon)
            .map(|(c, _)| *c)
            .collect();
        if sagas.is_empty() && coins.is_empty() {
            return;
        }
        sagas.sort();
        coins.sort();
        self.record(WalletEvent::DedupPruned { sagas, coins }, out);
    }

    /// The coordinator of an operation in flight: the only actor whose outcome counts.
    fn coordinator(&self, saga: SagaId) -> Option<Address> {
        Some(match self.ops.get(&saga)? {
            WalletOp::Pay {
                payee_institution, ..
            } => Address::Institution(*payee_institution),
            WalletOp::Collect { .. } | WalletOp::Exchange { .. } => {
                Address::Institution(self.institution)
            }
            WalletOp::Escrow(op) => op.coordinator(),
            WalletOp::Update(_) => Address::Institution(self.institution),
            WalletOp::Negotiate(op) => Address::Wallet(op.peer),
        })
    }

    fn on_coin(&mut self, from: Address, coin: Coin, out: &mut Out) {
        // A redelivery of a coin already held, byte for byte, was verified when it first
        // came: skip the signature check (the costliest step of a delivery).
        let held = self.coins.get(&coin.id) == Some(&coin);
        let genuine = held
            || self
                .issuers
                .get(&coin.body.issuer)
                .is_some_and(|key| coin.verify(key).is_ok());
        // A coin comes from its issuer, or from the wallet's own institution (which may
        // deliver coins of other issuers).
        let sender_ok = from == Address::Institution(coin.body.issuer)
            || from == Address::Institution(self.institution);
        if !genuine || coin.body.owner != self.keys.public_key() || !sender_ok {
            metrics::counter!("specie_coins_rejected_total").increment(1);
            return;
        }
        // Acknowledge every genuine delivery, repeated ones too: the issuer resends until it
        // hears back.
        out.send(self.envelope(
            coin.body.origin_saga,
            from,
            0,
            Payload::CoinAck {
                coin_ids: vec![coin.id],
            },
        ));
        if self.coins.contains_key(&coin.id)
            || self.spent.contains_key(&coin.id)
            || self.sagas.spent_offline(&coin.id)
        {
            return; // duplicate delivery, or a coin already spent
        }
        self.record(WalletEvent::CoinReceived { coin }, out);
    }

    fn on_status_reply(
        &mut self,
        saga: SagaId,
        state: SagaState,
        reason: Option<AbortReason>,
        decided_at_ms: u64,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Some(op) = self.ops.get(&saga) else {
            return;
        };
        match state {
            SagaState::Committed => {
                self.ledger_committed(saga, decided_at_ms, out);
                self.finish(saga, Ok(()), out)
            }
            SagaState::Aborted => {
                self.finish(saga, Err(reason.unwrap_or(AbortReason::SagaAborted)), out)
            }
            SagaState::InProgress => {}
            SagaState::Unknown => match op {
                WalletOp::Pay {
                    signed: Some(signed),
                    payee,
                    ..
                } => {
                    let deadline = signed.authorization.expires_at_ms + self.limits.saga_timeout_ms;
                    if now_ms > deadline {
                        // Expired at the issuer, and the coordinator never started it: no lock
                        // can be taken any more, so the payment can only abort.
                        self.finish(saga, Err(AbortReason::Expired), out);
                    } else {
                        // The request may have been lost on the way: hand it over again.
                        let resend = Payload::PaymentRequest(signed.clone());
                        out.send(self.envelope(saga, Address::Wallet(*payee), 1, resend));
                    }
                }
                WalletOp::Collect { expires_at_ms, .. }
                    if now_ms > expires_at_ms + self.limits.saga_timeout_ms =>
                {
                    // No authorization for this collect can lock any more, and the coordinator
                    // never started it: it can only abort.
                    self.finish(saga, Err(AbortReason::Expired), out);
                }
                WalletOp::Collect {
                    payer,
                    amount,
                    expires_at_ms,
                } => {
                    let request = Payload::CollectRequest {
                        amount: *amount,
                        payee: self.id,
                        payee_institution: self.institution,
                        expires_at_ms: *expires_at_ms,
                    };
                    out.send(self.envelope(saga, Address::Wallet(*payer), 1, request));
                }
                _ => {}
            },
        }
    }
}

/// What a wallet knows of one of its sagas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaProgress {
    /// Started and not finished.
    InFlight,
    /// Finished: committed, or aborted with the reason.
    Finished(Result<(), AbortReason>),
}

impl Wallet {
    /// What the wallet knows of `saga` (`None`: it never ran it, or its record was pruned).
    pub fn saga_progress(&self, saga: SagaId) -> Option<SagaProgress> {
        if self.ops.contains_key(&saga) {
            return Some(SagaProgress::InFlight);
        }
        self.finished
            .get(&saga)
            .map(|(result, _)| SagaProgress::Finished(*result))
    }
}

impl StateMachine for Wallet {
    type Event = WalletEvent;
    type Timer = WalletTimer;
    type Command = WalletCommand;
    type Snapshot = WalletSnapshot;

    fn address(&self) -> Address {
        Address::Wallet(self.id)
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::OpStarted { saga, op } => {
                self.ops.insert(*saga, op.clone());
            }
            WalletEvent::Signed { signed } => {
                if let Some(WalletOp::Pay { signed: slot, .. }) =
                    self.ops.get_mut(&signed.authorization.saga_id)
                {
                    *slot = Some(signed.clone());
                }
            }
            WalletEvent::OpFinished {
                saga,
                result,
                spent,
                at_ms,
            } => {
                self.ops.remove(saga);
                if self.ops.is_empty() {
                    // A wallet is idle most of the time: give back the table (four buckets of
                    // a large enum) rather than keep it for the next operation.
                    self.ops.shrink_to_fit();
                }
                self.finished.insert(*saga, (*result, *at_ms));
                for id in spent {
                    self.coins.remove(id);
                    self.spent.insert(*id, *at_ms);
                }
            }
            WalletEvent::DedupPruned { sagas, coins } => {
                for saga in sagas {
                    self.finished.remove(saga);
                }
                for id in coins {
                    self.spent.remove(id);
                }
            }
            WalletEvent::CoinReceived { coin } => {
                self.coins.insert(coin.id, coin.clone());
            }
            WalletEvent::Escrow(event) => self.apply_escrow(event),
            WalletEvent::Update(event) => self.apply_update(event),
            WalletEvent::Negotiation(event) => self.apply_negotiation(event),
            WalletEvent::Sagas(event) => self.apply_sagas(event),
        }
    }

    fn on_start(&mut self, _now_ms: u64, out: &mut Out) {
        // In saga order, so that a deterministic simulation arms the same timers every time.
        let mut sagas: Vec<SagaId> = self.ops.keys().copied().collect();
        sagas.sort_unstable();
        for saga in sagas {
            out.timer(
                self.limits.outcome_timeout_ms,
                WalletTimer { saga, attempt: 1 },
            );
        }
        self.on_sagas_start(out);
    }

    fn on_envelope(&mut self, envelope: Envelope, now_ms: u64, out: &mut Out) {
        self.now_ms = now_ms;
        if self.routes_to_sagas(&envelope) {
            // Merge, split and offline messages, and the outcomes of their sagas.
            return self.on_saga_envelope(envelope, now_ms, out);
        }
        // Never spend online a coin already split offline, whoever selected it.
        let envelope = self.without_coins_spent_offline(envelope);
        let (from, saga) = (envelope.from, envelope.saga_id);
        match envelope.payload {
            Payload::BalanceReply { coin_ids, .. } if self.is_escrow_choosing(&saga) => {
                self.on_escrow_coins(saga, coin_ids, out)
            }
            Payload::BalanceReply { coin_ids, .. } => {
                self.on_balance_reply(saga, coin_ids, now_ms, out)
            }
            Payload::Escrow(message) => self.on_escrow_message(from, saga, message, out),
            Payload::WalletUpdate(message) => {
                self.on_update_message(from, saga, message, now_ms, out)
            }
            Payload::Negotiation(message) => self.on_negotiation(from, saga, message, out),
            Payload::CollectRequest {
                amount,
                payee,
                payee_institution,
                expires_at_ms,
            } => {
                let terms = CollectTerms {
                    amount,
                    payee,
                    payee_institution,
                    expires_at_ms,
                };
                self.on_collect_request(from, saga, terms, now_ms, out)
            }
            Payload::PaymentRequest(signed) => self.on_payment_request(from, saga, signed, out),
            Payload::PaymentDeclined { reason } => {
                let declined_by_peer = match self.ops.get(&saga) {
                    Some(WalletOp::Pay { payee, .. }) => from == Address::Wallet(*payee),
                    Some(WalletOp::Collect { payer, .. }) => from == Address::Wallet(*payer),
                    _ => false,
                };
                if declined_by_peer {
                    self.finish(saga, Err(reason), out);
                }
            }
            Payload::CoinIssued(coin) => self.on_coin(from, coin, out),
            // Outcomes count only from the saga's coordinator.
            Payload::SagaOutcome(outcome) => {
                let from_coordinator = self.coordinator(saga) == Some(from);
                if from_coordinator
                    && matches!(
                        self.ops.get(&saga),
                        Some(WalletOp::Pay { .. } | WalletOp::Collect { .. })
                    )
                {
                    if outcome.result.is_ok() {
                        self.ledger_committed(saga, outcome.decided_at_ms, out);
                    }
                    self.finish(saga, outcome.result, out);
                }
            }
            Payload::StatusReply {
                state,
                reason,
                decided_at_ms,
            } => {
                if self.coordinator(saga) == Some(from) {
                    self.on_status_reply(saga, state, reason, decided_at_ms, now_ms, out);
                }
            }
            Payload::ExchangeReply {
                result,
                decided_at_ms,
            } => {
                let from_coordinator = self.coordinator(saga) == Some(from);
                if from_coordinator
                    && matches!(self.ops.get(&saga), Some(WalletOp::Exchange { .. }))
                {
                    if result.is_ok() {
                        self.ledger_committed(saga, decided_at_ms, out);
                    }
                    self.finish(saga, result, out);
                }
            }
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    fn on_timer(&mut self, key: WalletTimer, now_ms: u64, out: &mut Out) {
        self.now_ms = now_ms;
        if self.owns_saga_timer(&key) {
            return self.on_saga_timer(key, out);
        }
        let WalletTimer { saga, attempt } = key;
        let Some(op) = self.ops.get(&saga) else {
            return;
        };
        let own = Address::Institution(self.institution);
        let chase = match op {
            WalletOp::Pay {
                signed: None,
                amount,
                ..
            } => self.envelope(
                saga,
                own,
                attempt,
                Payload::BalanceQuery { amount: *amount },
            ),
            WalletOp::Pay {
                payee_institution, ..
            } => self.envelope(
                saga,
                Address::Institution(*payee_institution),
                attempt,
                Payload::StatusQuery,
            ),
            WalletOp::Collect { .. } => self.envelope(saga, own, attempt, Payload::StatusQuery),
            WalletOp::Exchange { amount } => self.envelope(
                saga,
                own,
                attempt,
                Payload::ExchangeRequest { amount: *amount },
            ),
            WalletOp::Escrow(op) => self.escrow_request(saga, op, attempt),
            WalletOp::Update(op) => self.update_request(saga, op, attempt),
            WalletOp::Negotiate(op) => self.negotiation_request(saga, op, attempt),
        };
        out.send(chase);
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer {
                saga,
                attempt: attempt + 1,
            },
        );
    }

    fn on_command(&mut self, command: WalletCommand, now_ms: u64, out: &mut Out) {
        self.now_ms = now_ms;
        self.prune(now_ms, out);
        match command {
            WalletCommand::Pay {
                saga,
                payee,
                payee_institution,
                amount,
                coins,
            } => {
                if self.ops.contains_key(&saga) || self.finished.contains_key(&saga) {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::Conflict, out);
                }
                if amount.is_zero() {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::InvalidAmount, out);
                }
                if payee == self.id {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::PayeeMismatch, out);
                }
                let op = WalletOp::Pay {
                    payee,
                    payee_institution,
                    amount,
                    initiator: true,
                    chosen: coins,
                    signed: None,
                    expires_by_ms: None,
                };
                self.start_pay(saga, op, now_ms, out);
            }
            WalletCommand::Collect {
                saga,
                payer,
                amount,
            } => {
                if self.ops.contains_key(&saga) || self.finished.contains_key(&saga) {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::Conflict, out);
                }
                if amount.is_zero() {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::InvalidAmount, out);
                }
                if payer == self.id {
                    return self.refuse(saga, SagaKind::Pay, AbortReason::PayeeMismatch, out);
                }
                let expires_at_ms = now_ms + self.limits.authorization_ttl_ms;
                self.record(
                    WalletEvent::OpStarted {
                        saga,
                        op: WalletOp::Collect {
                            payer,
                            amount,
                            expires_at_ms,
                        },
                    },
                    out,
                );
                let request = Payload::CollectRequest {
                    amount,
                    payee: self.id,
                    payee_institution: self.institution,
                    expires_at_ms,
                };
                out.send(self.envelope(saga, Address::Wallet(payer), 0, request));
                out.timer(
                    self.limits.outcome_timeout_ms,
                    WalletTimer { saga, attempt: 1 },
                );
            }
            WalletCommand::Exchange { saga, amount } => {
                if self.ops.contains_key(&saga) || self.finished.contains_key(&saga) {
                    return self.refuse(saga, SagaKind::Exchange, AbortReason::Conflict, out);
                }
                self.record(
                    WalletEvent::OpStarted {
                        saga,
                        op: WalletOp::Exchange { amount },
                    },
                    out,
                );
                out.send(self.envelope(
                    saga,
                    Address::Institution(self.institution),
                    0,
                    Payload::ExchangeRequest { amount },
                ));
                out.timer(
                    self.limits.outcome_timeout_ms,
                    WalletTimer { saga, attempt: 1 },
                );
            }
            WalletCommand::Escrow(command) => self.on_escrow_command(command, out),
            WalletCommand::Update(command) => self.on_update_command(command, out),
            WalletCommand::Negotiate(command) => self.on_negotiate_command(command, out),
            WalletCommand::Merge { saga, coins } => self.on_merge_command(saga, coins, now_ms, out),
            WalletCommand::Split { saga, coin, amount } => {
                self.on_split_command(saga, coin, amount, now_ms, out)
            }
            WalletCommand::Offline(command) => self.on_offline_command(command, now_ms, out),
        }
    }

    fn checkpoint(&self) -> Option<Vec<u8>> {
        let profile = (
            self.params.as_ref(),
            &self.account_balance,
            &self.agreements,
        );
        let checkpoint = (
            &self.coins,
            &self.ops,
            &self.finished,
            &self.spent,
            profile,
            self.sagas_checkpoint(),
        );
        Some(postcard::to_stdvec(&checkpoint).expect("state serializes"))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let (profile, sagas, params);
        (
            self.coins,
            self.ops,
            self.finished,
            self.spent,
            profile,
            sagas,
        ) = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        (params, self.account_balance, self.agreements) = profile;
        self.params = Arc::new(params);
        self.restore_sagas(sagas);
        Ok(())
    }

    fn snapshot(&self) -> WalletSnapshot {
        WalletSnapshot {
            id: self.id,
            institution: self.institution,
            key: self.keys.public_key(),
            coins: self.coins.values().cloned().collect(),
            pending: self.ops.len() + self.sagas_pending(),
            params_version: self.params.version,
            account_balance: self.account_balance,
            offline: self.offline_snapshot(),
        }
    }
}
