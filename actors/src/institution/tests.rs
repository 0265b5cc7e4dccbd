//! Unit tests of the institution's state machine, driven by hand without a runtime.
//!
//! Two institutions play the pay saga: `A` keeps the payer's account and issued its coins
//! (the issuer), `B` keeps the payee's account and coordinates. Envelopes between them are
//! handed over explicitly, so each test controls what is delivered, lost or late. Every test
//! asserts on what a user would see: the reply, the coins' states in the register, account
//! balances and the coins issued to wallets — and, for requests that must change nothing, that
//! no event was journaled.

use super::{
    CoinState, ExchangeState, Institution, InstitutionCommand, InstitutionEvent, InstitutionLimits,
    InstitutionSnapshot, InstitutionTimer, PayStep,
};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, Envelope, InstitutionId, KeyStore, Payload,
    PaymentAuthorization, PublicKey, SagaId, SagaKind, SagaState, SignedAuthorization,
    SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, StateMachine};
use std::sync::Arc;

type Out = Effects<InstitutionEvent, InstitutionTimer>;

/// The payer's institution: keeps the payer's account and issued the payer's coins.
const A: InstitutionId = InstitutionId(1);
/// The payee's institution: coordinates cross-institution payments.
const B: InstitutionId = InstitutionId(2);
/// Pays; account at `A`.
const PAYER: WalletId = WalletId(11);
/// Another customer of `A`: the payee of same-institution payments.
const NEIGHBOUR: WalletId = WalletId(13);
/// Receives; account at `B`.
const PAYEE: WalletId = WalletId(21);

const NOW_MS: u64 = 1_000;
const AUTHORIZATION_TTL_MS: u64 = 10_000;
const SAGA_TIMEOUT_MS: u64 = 5_000;
const RETRY_INTERVAL_MS: u64 = 100;
const RETRY_INTERVAL_MAX_MS: u64 = 800;
const DEPOSIT: Amount = Amount(100_000);
/// What the payer exchanges in the fixture: one coin of each denomination plus a rest of 100.
const EXCHANGED: Amount = Amount(6_300);

fn limits() -> InstitutionLimits {
    InstitutionLimits {
        saga_timeout_ms: SAGA_TIMEOUT_MS,
        retry_interval_ms: RETRY_INTERVAL_MS,
        retry_interval_max_ms: RETRY_INTERVAL_MAX_MS,
        coin_inputs_max: 4,
        denominations: vec![Amount(5_000), Amount(1_000), Amount(200)],
        dedup_retention_ms: DEDUP_RETENTION_MS,
    }
}

/// Recorded answers of finished participations are kept this long.
const DEDUP_RETENTION_MS: u64 = 60_000;

fn saga(n: u128) -> SagaId {
    SagaId::from_u128(n)
}

fn institution_keys(id: InstitutionId) -> SoftKeyStore {
    SoftKeyStore::from_seed([u8::try_from(id.0).expect("small test id"); 32])
}

fn wallet_keys(id: WalletId) -> SoftKeyStore {
    SoftKeyStore::from_seed([u8::try_from(id.0).expect("small test id"); 32])
}

fn key_of(id: WalletId) -> PublicKey {
    wallet_keys(id).public_key()
}

/// A key that owns nothing: the forger.
fn mallory() -> SoftKeyStore {
    SoftKeyStore::from_seed([99; 32])
}

/// An institution and its journal: every event a step produced is kept, as the host keeps
/// them, so recovery can be tested by replaying them.
struct Node {
    inst: Institution,
    journal: Vec<InstitutionEvent>,
}

impl Node {
    fn new(id: InstitutionId, limits: InstitutionLimits) -> Node {
        Node {
            inst: Institution::new(id, Arc::new(institution_keys(id)), Arc::new(limits)),
            journal: Vec::new(),
        }
    }

    fn keep(&mut self, mut out: Out) -> Out {
        // The host seals the coins of a step's messages as they leave.
        self.inst.seal(&mut out.sends);
        self.journal.extend(out.events.iter().cloned());
        out
    }

    fn deliver(&mut self, from: Address, saga: SagaId, payload: Payload, now_ms: u64) -> Out {
        let envelope = Envelope {
            message_id: 0,
            saga_id: saga,
            from,
            to: self.inst.address(),
            attempt: 0,
            trace: None,
            payload,
        };
        self.deliver_envelope(envelope, now_ms)
    }

    fn deliver_envelope(&mut self, envelope: Envelope, now_ms: u64) -> Out {
        assert_eq!(
            envelope.to,
            self.inst.address(),
            "routed to the right institution"
        );
        let mut out = Out::default();
        self.inst.on_envelope(envelope, now_ms, &mut out);
        self.keep(out)
    }

    fn fire(&mut self, timer: InstitutionTimer, now_ms: u64) -> Out {
        let mut out = Out::default();
        self.inst.on_timer(timer, now_ms, &mut out);
        self.keep(out)
    }

    fn open(&mut self, wallet: WalletId, deposit: Amount) {
        let mut out = Out::default();
        let command = InstitutionCommand::OpenAccount {
            wallet,
            key: key_of(wallet),
            deposit,
        };
        self.inst.on_command(command, 0, &mut out);
        self.keep(out);
    }

    /// Runs a whole exchange (request, central bank's ack) and returns the coins issued.
    fn exchange(&mut self, wallet: WalletId, id: SagaId, amount: Amount) -> Vec<Coin> {
        let out = self.deliver(
            Address::Wallet(wallet),
            id,
            Payload::ExchangeRequest { amount },
            NOW_MS,
        );
        assert_eq!(
            payloads_to(&out, Address::CentralBank),
            vec![&Payload::ReserveBacking { amount }]
        );
        let out = self.deliver(
            Address::CentralBank,
            id,
            Payload::ReserveAck(Ok(())),
            NOW_MS,
        );
        issued(&out)
            .into_iter()
            .map(|(to, coin)| {
                assert_eq!(to, Address::Wallet(wallet));
                coin
            })
            .collect()
    }

    fn state_of(&self, coin: &Coin) -> CoinState {
        self.inst.snapshot().coins[&coin.id].state
    }

    fn balance(&self, wallet: WalletId) -> Amount {
        self.inst.snapshot().accounts[&wallet].balance
    }

    fn step(&self, id: SagaId) -> PayStep {
        self.inst.snapshot().pays[&id].step
    }

    /// What a balance query of `wallet` for `amount` answers: (available, coins selected).
    fn balance_reply(&mut self, wallet: WalletId, amount: Amount) -> (Amount, Vec<CoinId>) {
        let out = self.deliver(
            Address::Wallet(wallet),
            SagaId::NONE,
            Payload::BalanceQuery { amount },
            NOW_MS,
        );
        assert!(out.events.is_empty(), "a balance query journals nothing");
        match &only_send(&out).payload {
            Payload::BalanceReply {
                available,
                coin_ids,
            } => (*available, coin_ids.clone()),
            other => panic!("expected a balance reply, got {other:?}"),
        }
    }

    /// The issuer's answer to a lock request from coordinator `B`.
    fn lock(
        &mut self,
        signed: &SignedAuthorization,
        now_ms: u64,
    ) -> (Result<Amount, AbortReason>, Out) {
        let id = signed.authorization.saga_id;
        let out = self.deliver(
            Address::Institution(B),
            id,
            Payload::LockRequest(signed.clone()),
            now_ms,
        );
        (lock_reply(&out), out)
    }
}

/// The payer's institution with the payer's and the neighbour's accounts, and the payer's
/// coins from an exchange of [`EXCHANGED`]: 5000, 1000, 200 and 100.
fn issuer() -> (Node, Vec<Coin>) {
    let mut a = Node::new(A, limits());
    a.open(PAYER, DEPOSIT);
    a.open(NEIGHBOUR, DEPOSIT);
    let coins = a.exchange(PAYER, saga(1_000), EXCHANGED);
    (a, coins)
}

/// The payee's institution with the payee's account.
fn coordinator() -> Node {
    let mut b = Node::new(B, limits());
    b.open(PAYEE, DEPOSIT);
    b
}

/// The payer's authorization (unsigned) to pay `amount` from `coins` to the payee at `B`.
fn authorization(id: SagaId, coins: &[&Coin], amount: Amount) -> PaymentAuthorization {
    PaymentAuthorization {
        saga_id: id,
        payer: PAYER,
        payer_key: key_of(PAYER),
        payer_institution: A,
        coin_ids: coins.iter().map(|c| c.id).collect(),
        amount,
        payee: PAYEE,
        payee_institution: B,
        expires_at_ms: NOW_MS + AUTHORIZATION_TTL_MS,
    }
}

/// The same, signed by the payer.
fn authorize(id: SagaId, coins: &[&Coin], amount: Amount) -> SignedAuthorization {
    authorization(id, coins, amount).sign(&wallet_keys(PAYER))
}

fn only_send(out: &Out) -> &Envelope {
    assert_eq!(out.sends.len(), 1, "exactly one envelope: {:?}", out.sends);
    &out.sends[0]
}

fn payloads_to(out: &Out, to: Address) -> Vec<&Payload> {
    out.sends
        .iter()
        .filter(|e| e.to == to)
        .map(|e| &e.payload)
        .collect()
}

fn lock_reply(out: &Out) -> Result<Amount, AbortReason> {
    match &only_send(out).payload {
        Payload::LockReply(r) => *r,
        other => panic!("expected a lock reply, got {other:?}"),
    }
}

fn commit_reply(out: &Out) -> Result<(), AbortReason> {
    match &only_send(out).payload {
        Payload::CommitReply(r) => *r,
        other => panic!("expected a commit reply, got {other:?}"),
    }
}

fn issued(out: &Out) -> Vec<(Address, Coin)> {
    out.sends
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::CoinIssued(c) => Some((e.to, c.clone())),
            _ => None,
        })
        .collect()
}

fn outcomes(out: &Out) -> Vec<(Address, SagaOutcome)> {
    out.sends
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::SagaOutcome(o) => Some((e.to, o.clone())),
            _ => None,
        })
        .collect()
}

fn committed(spent: &[&Coin]) -> SagaOutcome {
    SagaOutcome {
        kind: SagaKind::Pay,
        result: Ok(()),
        spent_coin_ids: spent.iter().map(|c| c.id).collect(),
        decided_at_ms: NOW_MS,
    }
}

fn aborted(reason: AbortReason) -> SagaOutcome {
    SagaOutcome {
        kind: SagaKind::Pay,
        result: Err(reason),
        spent_coin_ids: Vec::new(),
        decided_at_ms: 0,
    }
}

/// Asserts a coin was issued by `issuer` to `owner` for `value`, with a valid signature.
fn assert_coin(coin: &Coin, issuer: InstitutionId, owner: WalletId, value: Amount) {
    assert_eq!(coin.body.issuer, issuer);
    assert_eq!(coin.body.owner, key_of(owner));
    assert_eq!(coin.value(), value);
    assert_eq!(coin.verify(&institution_keys(issuer).public_key()), Ok(()));
}

/// Asserts the coins' states in the register.
fn assert_states(node: &Node, coins: &[&Coin], state: CoinState) {
    for coin in coins {
        assert_eq!(node.state_of(coin), state, "coin of {}", coin.value());
    }
}

/// The only event is the refusal of the lock with `reason`: the coins are untouched.
fn assert_refused(out: &Out, reason: AbortReason) {
    assert_eq!(lock_reply(out), Err(reason));
    assert!(
        matches!(
            out.events.as_slice(),
            [InstitutionEvent::LockRefused { reason: r, .. }] if *r == reason
        ),
        "{:?}",
        out.events
    );
}

// ----- exchange -----

#[test]
fn exchange_debits_the_account_and_issues_coins_by_denomination_once_backed() {
    let mut a = Node::new(A, limits());
    a.open(PAYER, DEPOSIT);
    let id = saga(1);

    let out = a.deliver(
        Address::Wallet(PAYER),
        id,
        Payload::ExchangeRequest { amount: EXCHANGED },
        NOW_MS,
    );
    assert_eq!(
        payloads_to(&out, Address::CentralBank),
        vec![&Payload::ReserveBacking { amount: EXCHANGED }]
    );
    assert!(
        issued(&out).is_empty(),
        "no coin before the central bank backs it"
    );
    assert_eq!(a.balance(PAYER), Amount(DEPOSIT.0 - EXCHANGED.0));
    assert_eq!(
        a.inst.snapshot().exchanges[&id],
        (PAYER, EXCHANGED, ExchangeState::Pending)
    );

    let out = a.deliver(
        Address::CentralBank,
        id,
        Payload::ReserveAck(Ok(())),
        NOW_MS,
    );
    let coins: Vec<Coin> = issued(&out).into_iter().map(|(_, c)| c).collect();
    let values: Vec<u64> = coins.iter().map(|c| c.value().0).collect();
    assert_eq!(
        values,
        vec![5_000, 1_000, 200, 100],
        "largest first, the rest in one coin"
    );
    assert_eq!(Amount::sum(coins.iter().map(Coin::value)), Some(EXCHANGED));
    for coin in &coins {
        assert_coin(coin, A, PAYER, coin.value());
        assert_eq!(a.state_of(coin), CoinState::Active);
    }
    assert_eq!(
        payloads_to(&out, Address::Wallet(PAYER)).last(),
        Some(&&Payload::ExchangeReply {
            result: Ok(()),
            decided_at_ms: NOW_MS
        })
    );
    assert_eq!(
        a.inst.snapshot().exchanges[&id],
        (PAYER, EXCHANGED, ExchangeState::Committed)
    );
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, EXCHANGED);

    // A retried request gets the recorded answer and issues nothing more.
    let out = a.deliver(
        Address::Wallet(PAYER),
        id,
        Payload::ExchangeRequest { amount: EXCHANGED },
        NOW_MS,
    );
    assert!(out.events.is_empty());
    assert_eq!(
        only_send(&out).payload,
        Payload::ExchangeReply {
            result: Ok(()),
            decided_at_ms: NOW_MS
        }
    );
    assert_eq!(a.inst.snapshot().coins.len(), 4);
    assert_eq!(a.balance(PAYER), Amount(DEPOSIT.0 - EXCHANGED.0));
}

#[test]
fn exchange_above_the_account_balance_or_of_zero_is_refused_and_moves_nothing() {
    let mut a = Node::new(A, limits());
    a.open(PAYER, DEPOSIT);

    for (n, amount, reason) in [
        (1, Amount(DEPOSIT.0 + 1), AbortReason::InsufficientFunds),
        (2, Amount::ZERO, AbortReason::InvalidAmount),
    ] {
        let out = a.deliver(
            Address::Wallet(PAYER),
            saga(n),
            Payload::ExchangeRequest { amount },
            NOW_MS,
        );
        assert_eq!(
            only_send(&out).payload,
            Payload::ExchangeReply {
                result: Err(reason),
                decided_at_ms: 0
            }
        );
        assert_eq!(
            a.inst.snapshot().exchanges[&saga(n)],
            (PAYER, amount, ExchangeState::Aborted(reason))
        );
    }
    assert_eq!(a.balance(PAYER), DEPOSIT);
    assert!(a.inst.snapshot().coins.is_empty());

    // A wallet without an account is refused without a trace.
    let out = a.deliver(
        Address::Wallet(PAYEE),
        saga(3),
        Payload::ExchangeRequest { amount: Amount(1) },
        NOW_MS,
    );
    assert!(out.events.is_empty());
    assert_eq!(
        only_send(&out).payload,
        Payload::ExchangeReply {
            result: Err(AbortReason::UnknownWallet),
            decided_at_ms: 0
        }
    );
}

#[test]
fn exchange_the_central_bank_refuses_refunds_the_account() {
    let mut a = Node::new(A, limits());
    a.open(PAYER, DEPOSIT);
    let id = saga(1);
    a.deliver(
        Address::Wallet(PAYER),
        id,
        Payload::ExchangeRequest { amount: EXCHANGED },
        NOW_MS,
    );
    let refusal = Err(AbortReason::InsufficientReserve);
    let out = a.deliver(
        Address::CentralBank,
        id,
        Payload::ReserveAck(refusal),
        NOW_MS,
    );
    assert_eq!(
        only_send(&out).payload,
        Payload::ExchangeReply {
            result: refusal,
            decided_at_ms: 0
        }
    );
    assert_eq!(a.balance(PAYER), DEPOSIT);
    assert!(a.inst.snapshot().coins.is_empty());

    // An ack that does not come from the central bank is ignored.
    let out = a.deliver(
        Address::Institution(B),
        saga(2),
        Payload::ReserveAck(Ok(())),
        NOW_MS,
    );
    assert!(out.events.is_empty() && out.sends.is_empty());
}

// ----- issuer: balance and lock rules -----

#[test]
fn balance_query_selects_covering_coins_or_none_above_the_available_balance() {
    let (mut a, coins) = issuer();
    let ids = |cs: &[&Coin]| cs.iter().map(|c| c.id).collect::<Vec<_>>();
    // The smallest single coin that covers the amount.
    assert_eq!(
        a.balance_reply(PAYER, Amount(1_000)),
        (EXCHANGED, ids(&[&coins[1]]))
    );
    assert_eq!(
        a.balance_reply(PAYER, Amount(1_100)),
        (EXCHANGED, ids(&[&coins[0]]))
    );
    // Else the largest coins first.
    assert_eq!(
        a.balance_reply(PAYER, EXCHANGED),
        (
            EXCHANGED,
            ids(&[&coins[0], &coins[1], &coins[2], &coins[3]])
        )
    );
    // Above the available balance: no coins, and the balance that is available.
    assert_eq!(
        a.balance_reply(PAYER, Amount(EXCHANGED.0 + 1)),
        (EXCHANGED, vec![])
    );
    // A wallet with no coins (or no account) has nothing available.
    assert_eq!(
        a.balance_reply(NEIGHBOUR, Amount(1)),
        (Amount::ZERO, vec![])
    );
    assert_eq!(a.balance_reply(PAYEE, Amount(1)), (Amount::ZERO, vec![]));
}

#[test]
fn lock_of_a_zero_amount_is_an_invalid_amount() {
    let (mut a, coins) = issuer();
    let (_, out) = a.lock(&authorize(saga(1), &[&coins[0]], Amount::ZERO), NOW_MS);
    assert_refused(&out, AbortReason::InvalidAmount);
    assert_states(&a, &[&coins[0]], CoinState::Active);
}

/// The register can only hold coins worth more than `u64::MAX` in total if the money supply
/// exceeds it, which the config forbids (`account_balance_fen × wallets ≤ u64::MAX / 4`). The
/// state machine alone does not enforce that bound, so this test builds such a register by
/// hand with two huge deposits, and checks that the issuer's checked sum refuses the lock
/// rather than wrapping.
#[test]
fn lock_of_coins_summing_past_u64_is_an_invalid_amount() {
    let half = Amount(1 << 63);
    let mut a = Node::new(
        A,
        InstitutionLimits {
            denominations: vec![half],
            ..limits()
        },
    );
    a.open(PAYER, Amount(u64::MAX));
    a.open(NEIGHBOUR, Amount(u64::MAX));
    let first = a.exchange(PAYER, saga(1), half).remove(0);
    let theirs = a.exchange(NEIGHBOUR, saga(2), half).remove(0);
    // The neighbour pays its coin to the payer (local path): the payer now owns 2^64 fen.
    let gift = PaymentAuthorization {
        saga_id: saga(3),
        payer: NEIGHBOUR,
        payer_key: key_of(NEIGHBOUR),
        payer_institution: A,
        coin_ids: vec![theirs.id],
        amount: half,
        payee: PAYER,
        payee_institution: A,
        expires_at_ms: NOW_MS + AUTHORIZATION_TTL_MS,
    }
    .sign(&wallet_keys(NEIGHBOUR));
    let out = a.deliver(
        Address::Wallet(PAYER),
        saga(3),
        Payload::RedeemRequest(gift),
        NOW_MS,
    );
    let second = issued(&out).remove(0).1;
    assert_coin(&second, A, PAYER, half);

    let (_, out) = a.lock(&authorize(saga(4), &[&first, &second], Amount(1)), NOW_MS);
    assert_refused(&out, AbortReason::InvalidAmount);
    assert_states(&a, &[&first, &second], CoinState::Active);
}

#[test]
fn lock_above_the_coins_value_is_insufficient_funds() {
    let (mut a, coins) = issuer();
    let (_, out) = a.lock(
        &authorize(saga(1), &[&coins[1], &coins[2]], Amount(1_201)),
        NOW_MS,
    );
    assert_refused(&out, AbortReason::InsufficientFunds);
    assert_states(&a, &[&coins[1], &coins[2]], CoinState::Active);

    // No coins at all cover nothing either.
    let (_, out) = a.lock(&authorize(saga(2), &[], Amount(1)), NOW_MS);
    assert_refused(&out, AbortReason::InsufficientFunds);
}

#[test]
fn lock_of_a_coin_owned_by_another_wallet_is_refused() {
    let (mut a, coins) = issuer();
    let theirs = a.exchange(NEIGHBOUR, saga(2), Amount(1_000)).remove(0);
    let (_, out) = a.lock(
        &authorize(saga(1), &[&coins[0], &theirs], Amount(5_500)),
        NOW_MS,
    );
    assert_refused(&out, AbortReason::CoinNotOwned);
    assert_states(&a, &[&coins[0], &theirs], CoinState::Active);
}

#[test]
fn lock_of_a_coin_locked_by_another_saga_is_refused() {
    let (mut a, coins) = issuer();
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(5_000)));
    let (_, out) = a.lock(
        &authorize(saga(2), &[&coins[1], &coins[0]], Amount(100)),
        NOW_MS,
    );
    assert_refused(&out, AbortReason::CoinLocked);
    assert_states(&a, &[&coins[0]], CoinState::Locked(saga(1)));
    assert_states(&a, &[&coins[1]], CoinState::Active);
}

#[test]
fn lock_of_a_spent_coin_is_refused() {
    let (mut a, coins) = issuer();
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(5_000)));
    assert_eq!(
        commit_reply(&a.deliver(
            Address::Institution(B),
            saga(1),
            Payload::CommitRequest {
                decided_at_ms: NOW_MS,
            },
            NOW_MS
        )),
        Ok(())
    );
    let (_, out) = a.lock(&authorize(saga(2), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_refused(&out, AbortReason::CoinSpent);
    assert_states(&a, &[&coins[0]], CoinState::Spent(saga(1)));
}

#[test]
fn finished_participations_are_pruned_after_the_retention_and_locked_ones_never() {
    let (mut a, coins) = issuer();
    // Saga 1 committed (finished), saga 2 refused (finished), saga 3 still locked.
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(5_000)));
    a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    let (_, out) = a.lock(&authorize(saga(2), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_refused(&out, AbortReason::CoinSpent);
    let (reply, _) = a.lock(&authorize(saga(3), &[&coins[1]], Amount(1_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(1_000)));

    // Within the retention nothing is pruned, and a retry gets the recorded answer.
    let out = a.fire(InstitutionTimer::Redeliver, NOW_MS + DEDUP_RETENTION_MS - 1);
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, InstitutionEvent::DedupPruned { .. })));
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(
        reply,
        Ok(Amount(5_000)),
        "recorded answer of a committed lock"
    );

    // After it, the finished records go; the lock in flight stays.
    let out = a.fire(InstitutionTimer::Redeliver, NOW_MS + DEDUP_RETENTION_MS + 1);
    let pruned: Vec<SagaId> = out
        .events
        .iter()
        .find_map(|e| match e {
            InstitutionEvent::DedupPruned { sagas } => Some(sagas.clone()),
            _ => None,
        })
        .expect("a prune event");
    assert_eq!(pruned, vec![saga(1), saga(2)]);
    assert_states(&a, &[&coins[1]], CoinState::Locked(saga(3)));
    // The register is not deduplication state: the spent coin stays spent.
    assert_states(&a, &[&coins[0]], CoinState::Spent(saga(1)));
}

#[test]
fn forged_or_tampered_authorization_is_a_bad_signature() {
    let (mut a, coins) = issuer();
    // Names the payer's key (the coins' owner) but is signed by another key.
    let forged = authorization(saga(1), &[&coins[0]], Amount(5_000)).sign(&mallory());
    let (_, out) = a.lock(&forged, NOW_MS);
    assert_refused(&out, AbortReason::BadSignature);

    // Signed by the payer, then altered on the way (a larger amount).
    let mut tampered = authorize(saga(2), &[&coins[0]], Amount(100));
    tampered.authorization.amount = Amount(5_000);
    let (_, out) = a.lock(&tampered, NOW_MS);
    assert_refused(&out, AbortReason::BadSignature);

    assert_states(&a, &[&coins[0]], CoinState::Active);
}

#[test]
fn authorization_signed_by_a_key_that_does_not_own_the_coins_is_refused() {
    let (mut a, coins) = issuer();
    // Correctly signed, but by a key that is neither the payer's account key nor the owner.
    let mut wrong = authorization(saga(1), &[&coins[0]], Amount(5_000));
    wrong.payer_key = mallory().public_key();
    let (_, out) = a.lock(&wrong.sign(&mallory()), NOW_MS);
    assert_refused(&out, AbortReason::CoinNotOwned);

    // The neighbour's own key, claiming the payer's coins under its own account.
    let mut wrong = authorization(saga(2), &[&coins[0]], Amount(5_000));
    wrong.payer = NEIGHBOUR;
    wrong.payer_key = key_of(NEIGHBOUR);
    let (_, out) = a.lock(&wrong.sign(&wallet_keys(NEIGHBOUR)), NOW_MS);
    assert_refused(&out, AbortReason::CoinNotOwned);

    assert_states(&a, &[&coins[0]], CoinState::Active);
}

#[test]
fn expired_authorization_is_refused() {
    let (mut a, coins) = issuer();
    let signed = authorize(saga(1), &[&coins[0]], Amount(5_000));
    let expiry = signed.authorization.expires_at_ms;
    let (_, out) = a.lock(&signed, expiry + 1);
    assert_refused(&out, AbortReason::Expired);
    assert_states(&a, &[&coins[0]], CoinState::Active);

    // Up to its expiry instant the authorization is good.
    let (reply, _) = a.lock(&authorize(saga(2), &[&coins[0]], Amount(5_000)), expiry);
    assert_eq!(reply, Ok(Amount(5_000)));
}

#[test]
fn duplicate_lock_request_gets_the_same_reply_and_changes_nothing() {
    let (mut a, coins) = issuer();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    let (first, out) = a.lock(&signed, NOW_MS);
    assert_eq!(first, Ok(Amount(6_000)));
    assert_eq!(out.events.len(), 1);
    let journal = a.journal.len();

    let (again, out) = a.lock(&signed, NOW_MS + 1);
    assert_eq!(again, first);
    assert!(out.events.is_empty() && out.timers.is_empty() && out.notices.is_empty());
    assert_eq!(a.journal.len(), journal);
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Locked(saga(1)));

    // A refused lock, asked again, gets the same refusal without a second record — even
    // though the reason (the coin is locked) would by now be different had it been checked.
    let refused = authorize(saga(2), &[&coins[0]], Amount(5_000));
    let (_, out) = a.lock(&refused, NOW_MS);
    assert_refused(&out, AbortReason::CoinLocked);
    let (reply, out) = a.lock(&refused, NOW_MS);
    assert_eq!(reply, Err(AbortReason::CoinLocked));
    assert!(out.events.is_empty());
}

#[test]
fn lock_request_reusing_a_saga_id_with_different_content_is_a_conflict() {
    let (mut a, coins) = issuer();
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(5_000)));
    let before = a.inst.snapshot();

    let (reply, out) = a.lock(&authorize(saga(1), &[&coins[1]], Amount(1_000)), NOW_MS);
    assert_eq!(reply, Err(AbortReason::Conflict));
    assert!(out.events.is_empty());
    assert_states(&a, &[&coins[0]], CoinState::Locked(saga(1)));
    assert_states(&a, &[&coins[1]], CoinState::Active);
    assert_eq!(a.inst.snapshot().coins, before.coins);

    // The original request still gets its own answer.
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Ok(Amount(5_000)));
}

#[test]
fn only_the_coordinator_the_payer_named_may_lock_commit_or_abort() {
    let (mut a, coins) = issuer();
    let signed = authorize(saga(1), &[&coins[0]], Amount(5_000));
    let stranger = Address::Institution(InstitutionId(3));
    let out = a.deliver(
        stranger,
        saga(1),
        Payload::LockRequest(signed.clone()),
        NOW_MS,
    );
    assert_eq!(lock_reply(&out), Err(AbortReason::PayeeMismatch));
    assert!(out.events.is_empty());

    assert_eq!(a.lock(&signed, NOW_MS).0, Ok(Amount(5_000)));
    for payload in [
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        Payload::AbortRequest {
            reason: AbortReason::Timeout,
        },
    ] {
        let out = a.deliver(stranger, saga(1), payload, NOW_MS);
        assert!(out.events.is_empty() && out.sends.is_empty());
    }
    assert_states(&a, &[&coins[0]], CoinState::Locked(saga(1)));
}

// ----- issuer: retire and unlock -----

#[test]
fn abort_after_lock_makes_the_coins_active_again() {
    let (mut a, coins) = issuer();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    assert_eq!(a.lock(&signed, NOW_MS).0, Ok(Amount(6_000)));
    assert_eq!(
        a.balance_reply(PAYER, Amount(1)).0,
        Amount(300),
        "locked coins are not available"
    );

    let reason = AbortReason::Timeout;
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::AbortRequest { reason },
        NOW_MS,
    );
    assert_eq!(only_send(&out).payload, Payload::AbortReply);
    assert_eq!(out.events.len(), 1);
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Active);
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, EXCHANGED);

    // A retried abort is acknowledged again and changes nothing.
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::AbortRequest { reason },
        NOW_MS,
    );
    assert_eq!(only_send(&out).payload, Payload::AbortReply);
    assert!(out.events.is_empty());

    // The aborted saga cannot lock again (a late duplicate of its lock request).
    let (reply, out) = a.lock(&signed, NOW_MS);
    assert_eq!(reply, Err(AbortReason::SagaAborted));
    assert!(out.events.is_empty());
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Active);
}

#[test]
fn abort_that_overtakes_its_lock_request_prevents_the_lock() {
    let (mut a, coins) = issuer();
    let reason = AbortReason::Timeout;
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::AbortRequest { reason },
        NOW_MS,
    );
    assert_eq!(only_send(&out).payload, Payload::AbortReply);
    let (reply, _) = a.lock(&authorize(saga(1), &[&coins[0]], Amount(5_000)), NOW_MS);
    assert_eq!(reply, Err(AbortReason::SagaAborted));
    assert_states(&a, &[&coins[0]], CoinState::Active);
}

#[test]
fn commit_after_abort_is_refused() {
    let (mut a, coins) = issuer();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    assert_eq!(a.lock(&signed, NOW_MS).0, Ok(Amount(6_000)));
    let reason = AbortReason::Timeout;
    a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::AbortRequest { reason },
        NOW_MS,
    );

    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Err(AbortReason::SagaAborted));
    assert!(out.events.is_empty());
    assert!(
        issued(&out).is_empty(),
        "no change coin for an aborted saga"
    );
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Active);

    // A commit for a refused lock is refused too, and one for an unknown saga.
    let short = authorize(saga(2), &[&coins[0]], Amount(6_000));
    assert_eq!(
        a.lock(&short, NOW_MS).0,
        Err(AbortReason::InsufficientFunds)
    );
    let out = a.deliver(
        Address::Institution(B),
        saga(2),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Err(AbortReason::SagaAborted));
    let out = a.deliver(
        Address::Institution(B),
        saga(3),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Err(AbortReason::SagaUnknown));
    assert!(out.events.is_empty());
}

#[test]
fn commit_retires_the_coins_and_issues_the_change_to_the_payer() {
    let (mut a, coins) = issuer();
    let (reply, _) = a.lock(
        &authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500)),
        NOW_MS,
    );
    assert_eq!(reply, Ok(Amount(6_000)));

    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(
        payloads_to(&out, Address::Institution(B)),
        vec![&Payload::CommitReply(Ok(()))]
    );
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Spent(saga(1)));
    let change = issued(&out);
    assert_eq!(change.len(), 1);
    assert_eq!(change[0].0, Address::Wallet(PAYER));
    assert_coin(&change[0].1, A, PAYER, Amount(500));
    assert_eq!(a.state_of(&change[0].1), CoinState::Active);
    // What the payer has left: the 200 and 100 coins and the change.
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, Amount(800));

    // A retried commit is acknowledged and issues no second change coin.
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Ok(()));
    assert!(out.events.is_empty());
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, Amount(800));

    // An abort after the commit is refused: the coins stay spent.
    let reason = AbortReason::Timeout;
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::AbortRequest { reason },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Err(AbortReason::AlreadyCommitted));
    assert!(out.events.is_empty());
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Spent(saga(1)));
}

#[test]
fn commit_of_exactly_the_amount_issues_no_change() {
    let (mut a, coins) = issuer();
    let exact = authorize(saga(1), &[&coins[1]], Amount(1_000));
    assert_eq!(a.lock(&exact, NOW_MS).0, Ok(Amount(1_000)));
    let out = a.deliver(
        Address::Institution(B),
        saga(1),
        Payload::CommitRequest {
            decided_at_ms: NOW_MS,
        },
        NOW_MS,
    );
    assert_eq!(commit_reply(&out), Ok(()));
    assert!(issued(&out).is_empty());
    assert_states(&a, &[&coins[1]], CoinState::Spent(saga(1)));
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, Amount(5_300));
}

// ----- coordinator: the pay saga -----

/// Starts a cross-institution payment at `B`: the payee hands over the payer's
/// authorization. Returns the lock request `B` sends to `A`.
fn redeem(b: &mut Node, signed: &SignedAuthorization) -> (Envelope, Out) {
    let id = signed.authorization.saga_id;
    let out = b.deliver(
        Address::Wallet(PAYEE),
        id,
        Payload::RedeemRequest(signed.clone()),
        NOW_MS,
    );
    (only_send(&out).clone(), out)
}

/// Runs a payment of 5500 from the payer's 5000 and 1000 coins up to `B`'s commit decision.
/// Returns the lock and decision steps' effects at `B`.
fn decide_commit(a: &mut Node, b: &mut Node, coins: &[Coin]) -> Out {
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    let (lock, _) = redeem(b, &signed);
    let out = a.deliver_envelope(lock, NOW_MS);
    b.deliver_envelope(only_send(&out).clone(), NOW_MS)
}

#[test]
fn redeem_request_asks_the_issuer_to_lock() {
    let (_, coins) = issuer();
    let mut b = coordinator();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    let (lock, out) = redeem(&mut b, &signed);

    assert_eq!(lock.to, Address::Institution(A));
    assert_eq!(lock.payload, Payload::LockRequest(signed.clone()));
    assert_eq!(
        out.timers,
        vec![
            (SAGA_TIMEOUT_MS, InstitutionTimer::LockTimeout(saga(1))),
            (
                RETRY_INTERVAL_MS,
                InstitutionTimer::Retry {
                    saga: saga(1),
                    attempt: 1
                }
            ),
        ]
    );
    let summary = &b.inst.snapshot().pays[&saga(1)];
    assert_eq!(summary.step, PayStep::Locking);
    assert_eq!(summary.amount, Amount(5_500));
    assert_eq!(summary.payer_institution, A);
    assert_eq!(summary.coin_ids, vec![coins[0].id, coins[1].id]);

    let out = b.deliver(
        Address::Wallet(PAYER),
        saga(1),
        Payload::StatusQuery,
        NOW_MS,
    );
    assert_eq!(
        only_send(&out).payload,
        Payload::StatusReply {
            state: SagaState::InProgress,
            reason: None,
            decided_at_ms: 0
        }
    );
    // A retry before the decision resends the lock request.
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS,
    );
    assert_eq!(only_send(&out).payload, Payload::LockRequest(signed));
    assert_eq!(only_send(&out).attempt, 1);
}

#[test]
fn lock_granted_decides_commit_moves_backing_and_issues_the_payee_coin() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    let out = decide_commit(&mut a, &mut b, &coins);

    assert_eq!(
        payloads_to(&out, Address::Institution(A)),
        vec![&Payload::CommitRequest {
            decided_at_ms: NOW_MS
        }]
    );
    assert_eq!(
        payloads_to(&out, Address::CentralBank),
        vec![&Payload::MoveBacking {
            from: A,
            to: B,
            amount: Amount(5_500)
        }]
    );
    let payee_coins = issued(&out);
    assert_eq!(payee_coins.len(), 1);
    assert_eq!(payee_coins[0].0, Address::Wallet(PAYEE));
    assert_coin(&payee_coins[0].1, B, PAYEE, Amount(5_500));
    assert_eq!(b.state_of(&payee_coins[0].1), CoinState::Active);
    let outcome = committed(&[&coins[0], &coins[1]]);
    assert_eq!(
        outcomes(&out),
        vec![
            (Address::Wallet(PAYER), outcome.clone()),
            (Address::Wallet(PAYEE), outcome.clone())
        ]
    );
    assert_eq!(out.notices.len(), 1);
    assert_eq!(out.notices[0].outcome, outcome);
    assert_eq!(
        b.step(saga(1)),
        PayStep::Committing {
            issuer_done: false,
            backing_done: false
        }
    );
    // The decision counts: parties asking are told it committed.
    let out = b.deliver(
        Address::Wallet(PAYER),
        saga(1),
        Payload::StatusQuery,
        NOW_MS,
    );
    assert_eq!(
        only_send(&out).payload,
        Payload::StatusReply {
            state: SagaState::Committed,
            reason: None,
            decided_at_ms: NOW_MS
        }
    );
    // A late lock timeout changes nothing after the decision.
    let out = b.fire(
        InstitutionTimer::LockTimeout(saga(1)),
        NOW_MS + SAGA_TIMEOUT_MS,
    );
    assert!(out.events.is_empty() && out.sends.is_empty());
}

#[test]
fn lock_refused_aborts_with_the_issuers_reason() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    let signed = authorize(saga(1), &[&coins[1]], Amount(1_500));
    let (lock, _) = redeem(&mut b, &signed);
    let reply = a.deliver_envelope(lock, NOW_MS);
    assert_eq!(lock_reply(&reply), Err(AbortReason::InsufficientFunds));

    let out = b.deliver_envelope(only_send(&reply).clone(), NOW_MS);
    let outcome = aborted(AbortReason::InsufficientFunds);
    assert_eq!(
        outcomes(&out),
        vec![
            (Address::Wallet(PAYER), outcome.clone()),
            (Address::Wallet(PAYEE), outcome)
        ]
    );
    assert_eq!(
        out.sends.len(),
        2,
        "no unlock, no coin, no backing: {:?}",
        out.sends
    );
    assert_eq!(
        b.step(saga(1)),
        PayStep::Aborted {
            reason: AbortReason::InsufficientFunds
        }
    );
    assert!(b.inst.snapshot().coins.is_empty());
    assert_states(&a, &[&coins[1]], CoinState::Active);

    // Retries stop at a terminal step.
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS,
    );
    assert!(out.sends.is_empty() && out.timers.is_empty());
}

#[test]
fn lock_reply_from_another_institution_is_ignored() {
    let (_, coins) = issuer();
    let mut b = coordinator();
    redeem(&mut b, &authorize(saga(1), &[&coins[0]], Amount(5_000)));
    let impostor = Address::Institution(InstitutionId(3));
    let out = b.deliver(
        impostor,
        saga(1),
        Payload::LockReply(Ok(Amount(5_000))),
        NOW_MS,
    );
    assert!(out.events.is_empty() && out.sends.is_empty());
    assert_eq!(b.step(saga(1)), PayStep::Locking);
}

#[test]
fn lock_timeout_before_the_decision_aborts_and_unlocks() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    let (lock, _) = redeem(&mut b, &signed);
    // The issuer locks, but its reply is lost.
    let lost = a.deliver_envelope(lock, NOW_MS);
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Locked(saga(1)));

    let out = b.fire(
        InstitutionTimer::LockTimeout(saga(1)),
        NOW_MS + SAGA_TIMEOUT_MS,
    );
    let reason = AbortReason::Timeout;
    assert_eq!(
        payloads_to(&out, Address::Institution(A)),
        vec![&Payload::AbortRequest { reason }]
    );
    let outcome = aborted(reason);
    assert_eq!(
        outcomes(&out),
        vec![
            (Address::Wallet(PAYER), outcome.clone()),
            (Address::Wallet(PAYEE), outcome)
        ]
    );
    assert_eq!(b.step(saga(1)), PayStep::Aborting { reason });
    let status = b.deliver(
        Address::Wallet(PAYER),
        saga(1),
        Payload::StatusQuery,
        NOW_MS,
    );
    assert_eq!(
        only_send(&status).payload,
        Payload::StatusReply {
            state: SagaState::Aborted,
            reason: Some(reason),
            decided_at_ms: 0
        }
    );

    // The lost lock reply turns up late: the decision stands, nothing is issued.
    let late = b.deliver_envelope(only_send(&lost).clone(), NOW_MS + SAGA_TIMEOUT_MS);
    assert!(late.events.is_empty() && late.sends.is_empty());

    // The issuer unlocks and acknowledges; the saga is aborted for good.
    let abort = payloads_to(&out, Address::Institution(A))[0].clone();
    let ack = a.deliver(
        Address::Institution(B),
        saga(1),
        abort,
        NOW_MS + SAGA_TIMEOUT_MS,
    );
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Active);
    b.deliver_envelope(only_send(&ack).clone(), NOW_MS + SAGA_TIMEOUT_MS);
    assert_eq!(b.step(saga(1)), PayStep::Aborted { reason });
    assert!(
        b.inst.snapshot().coins.is_empty(),
        "no payee coin for an aborted saga"
    );
}

#[test]
fn retry_after_the_decision_resends_until_acknowledged() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    decide_commit(&mut a, &mut b, &coins);
    let move_backing = Payload::MoveBacking {
        from: A,
        to: B,
        amount: Amount(5_500),
    };

    // Nothing acknowledged yet: both steps are resent, and the next retry backs off.
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS,
    );
    assert_eq!(
        payloads_to(&out, Address::Institution(A)),
        vec![&Payload::CommitRequest {
            decided_at_ms: NOW_MS
        }]
    );
    assert_eq!(payloads_to(&out, Address::CentralBank), vec![&move_backing]);
    assert!(out.sends.iter().all(|e| e.attempt == 1));
    assert_eq!(
        out.timers,
        vec![(
            2 * RETRY_INTERVAL_MS,
            InstitutionTimer::Retry {
                saga: saga(1),
                attempt: 2
            }
        )]
    );
    assert!(
        out.events.is_empty() && out.notices.is_empty(),
        "a retry decides nothing new"
    );

    // The issuer retires the coins (the resent commit is the one that arrives).
    let commit = out
        .sends
        .iter()
        .find(|e| e.to == Address::Institution(A))
        .unwrap()
        .clone();
    let reply = a.deliver_envelope(commit, NOW_MS);
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Spent(saga(1)));
    let commit_reply = reply
        .sends
        .iter()
        .find(|e| e.to == Address::Institution(B))
        .unwrap()
        .clone();
    b.deliver_envelope(commit_reply.clone(), NOW_MS);
    assert_eq!(
        b.step(saga(1)),
        PayStep::Committing {
            issuer_done: true,
            backing_done: false
        }
    );
    // A duplicate acknowledgement is not journaled twice.
    assert!(b.deliver_envelope(commit_reply, NOW_MS).events.is_empty());

    // Only the backing move is left to resend; the backoff is capped.
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 5,
        },
        NOW_MS,
    );
    assert_eq!(out.sends.len(), 1);
    assert_eq!(out.sends[0].to, Address::CentralBank);
    assert_eq!(out.sends[0].payload, move_backing);
    assert_eq!(
        out.timers,
        vec![(
            RETRY_INTERVAL_MAX_MS,
            InstitutionTimer::Retry {
                saga: saga(1),
                attempt: 6
            }
        )]
    );

    // The central bank acknowledges: committed, and retries stop.
    b.deliver(
        Address::CentralBank,
        saga(1),
        Payload::ReserveAck(Ok(())),
        NOW_MS,
    );
    assert_eq!(b.step(saga(1)), PayStep::Committed);
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 6,
        },
        NOW_MS,
    );
    assert!(out.sends.is_empty() && out.timers.is_empty() && out.events.is_empty());
}

#[test]
fn backing_acknowledged_before_the_issuer_still_waits_for_the_issuer() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    decide_commit(&mut a, &mut b, &coins);
    b.deliver(
        Address::CentralBank,
        saga(1),
        Payload::ReserveAck(Ok(())),
        NOW_MS,
    );
    assert_eq!(
        b.step(saga(1)),
        PayStep::Committing {
            issuer_done: false,
            backing_done: true
        }
    );
    let out = b.fire(
        InstitutionTimer::Retry {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS,
    );
    assert_eq!(out.sends.len(), 1);
    assert_eq!(
        out.sends[0].payload,
        Payload::CommitRequest {
            decided_at_ms: NOW_MS
        }
    );
    b.deliver(
        Address::Institution(A),
        saga(1),
        Payload::CommitReply(Ok(())),
        NOW_MS,
    );
    assert_eq!(b.step(saga(1)), PayStep::Committed);
}

#[test]
fn same_institution_payment_commits_in_one_step_with_payee_coin_and_change() {
    let (mut a, coins) = issuer();
    let mut local = authorization(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    local.payee = NEIGHBOUR;
    local.payee_institution = A;
    let signed = local.sign(&wallet_keys(PAYER));

    let out = a.deliver(
        Address::Wallet(NEIGHBOUR),
        saga(1),
        Payload::RedeemRequest(signed.clone()),
        NOW_MS,
    );
    assert_eq!(out.events.len(), 1, "one journaled step: {:?}", out.events);
    assert!(out.timers.is_empty());
    assert!(
        out.sends.iter().all(|e| matches!(e.to, Address::Wallet(_))),
        "no lock request, no backing move: {:?}",
        out.sends
    );
    assert_states(&a, &[&coins[0], &coins[1]], CoinState::Spent(saga(1)));
    let coins_out = issued(&out);
    assert_eq!(coins_out.len(), 2);
    assert_eq!(coins_out[0].0, Address::Wallet(NEIGHBOUR));
    assert_coin(&coins_out[0].1, A, NEIGHBOUR, Amount(5_500));
    assert_eq!(coins_out[1].0, Address::Wallet(PAYER));
    assert_coin(&coins_out[1].1, A, PAYER, Amount(500));
    assert_ne!(coins_out[0].1.id, coins_out[1].1.id);
    let outcome = committed(&[&coins[0], &coins[1]]);
    assert_eq!(
        outcomes(&out),
        vec![
            (Address::Wallet(PAYER), outcome.clone()),
            (Address::Wallet(NEIGHBOUR), outcome)
        ]
    );
    assert_eq!(a.step(saga(1)), PayStep::Committed);
    assert_eq!(a.balance_reply(NEIGHBOUR, Amount(1)).0, Amount(5_500));
    assert_eq!(a.balance_reply(PAYER, Amount(1)).0, Amount(800));

    // Spending the same coins again locally is refused and recorded as aborted.
    let mut again = authorization(saga(2), &[&coins[0]], Amount(100));
    again.payee = NEIGHBOUR;
    again.payee_institution = A;
    let out = a.deliver(
        Address::Wallet(NEIGHBOUR),
        saga(2),
        Payload::RedeemRequest(again.sign(&wallet_keys(PAYER))),
        NOW_MS,
    );
    assert!(issued(&out).is_empty());
    assert_eq!(
        outcomes(&out)[0],
        (Address::Wallet(PAYER), aborted(AbortReason::CoinSpent))
    );
    assert_eq!(
        a.step(saga(2)),
        PayStep::Aborted {
            reason: AbortReason::CoinSpent
        }
    );
    assert_eq!(a.balance_reply(NEIGHBOUR, Amount(1)).0, Amount(5_500));
}

#[test]
fn duplicate_redeem_request_returns_the_recorded_outcome() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    let signed = authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500));
    let redeem_again = |b: &mut Node| {
        b.deliver(
            Address::Wallet(PAYEE),
            saga(1),
            Payload::RedeemRequest(signed.clone()),
            NOW_MS,
        )
    };

    let (lock, _) = redeem(&mut b, &signed);
    // In progress: no second lock request, no answer yet.
    let out = redeem_again(&mut b);
    assert!(out.events.is_empty() && out.sends.is_empty() && out.timers.is_empty());

    let reply = a.deliver_envelope(lock, NOW_MS);
    b.deliver_envelope(only_send(&reply).clone(), NOW_MS);
    let coins_at_b = b.inst.snapshot().coins.len();
    // Decided: the recorded outcome to the asker, nothing issued twice.
    let out = redeem_again(&mut b);
    assert!(out.events.is_empty());
    assert_eq!(
        outcomes(&out),
        vec![(Address::Wallet(PAYEE), committed(&[&coins[0], &coins[1]]))]
    );
    assert_eq!(out.sends.len(), 1);
    assert_eq!(b.inst.snapshot().coins.len(), coins_at_b);

    // An aborted saga answers with its reason.
    let refused = authorize(saga(2), &[&coins[2]], Amount(5_000));
    let (lock, _) = redeem(&mut b, &refused);
    let reply = a.deliver_envelope(lock, NOW_MS);
    b.deliver_envelope(only_send(&reply).clone(), NOW_MS);
    let out = b.deliver(
        Address::Wallet(PAYEE),
        saga(2),
        Payload::RedeemRequest(refused),
        NOW_MS,
    );
    assert!(out.events.is_empty());
    assert_eq!(
        outcomes(&out),
        vec![(
            Address::Wallet(PAYEE),
            aborted(AbortReason::InsufficientFunds)
        )]
    );
}

#[test]
fn conflicting_redeem_request_is_refused_and_changes_nothing() {
    let (_, coins) = issuer();
    let mut b = coordinator();
    redeem(
        &mut b,
        &authorize(saga(1), &[&coins[0], &coins[1]], Amount(5_500)),
    );
    let before = b.inst.snapshot().pays;

    // The same saga id, another amount.
    let other = authorize(saga(1), &[&coins[0], &coins[1]], Amount(100));
    let out = b.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        Payload::RedeemRequest(other),
        NOW_MS,
    );
    assert!(out.events.is_empty() && out.timers.is_empty());
    assert_eq!(
        outcomes(&out),
        vec![(Address::Wallet(PAYEE), aborted(AbortReason::Conflict))]
    );
    assert_eq!(
        out.sends.len(),
        1,
        "no lock request for the conflicting content"
    );
    assert_eq!(b.inst.snapshot().pays, before);

    // An envelope whose saga id is not the authorization's.
    let signed = authorize(saga(2), &[&coins[2]], Amount(200));
    let out = b.deliver(
        Address::Wallet(PAYEE),
        saga(3),
        Payload::RedeemRequest(signed),
        NOW_MS,
    );
    assert!(out.events.is_empty());
    assert_eq!(
        outcomes(&out),
        vec![(Address::Wallet(PAYEE), aborted(AbortReason::Conflict))]
    );
    assert_eq!(b.inst.snapshot().pays, before);
}

#[test]
fn redeem_request_for_another_institution_or_unknown_payee_is_refused() {
    let (_, coins) = issuer();
    let mut b = coordinator();
    let mut elsewhere = authorization(saga(1), &[&coins[0]], Amount(100));
    elsewhere.payee_institution = InstitutionId(3);
    let mut stranger = authorization(saga(2), &[&coins[0]], Amount(100));
    stranger.payee = WalletId(99);
    for (signed, reason) in [
        (elsewhere, AbortReason::PayeeMismatch),
        (stranger, AbortReason::UnknownWallet),
    ] {
        let id = signed.saga_id;
        let payload = Payload::RedeemRequest(signed.sign(&wallet_keys(PAYER)));
        let out = b.deliver(Address::Wallet(PAYEE), id, payload, NOW_MS);
        assert!(out.events.is_empty());
        assert_eq!(
            outcomes(&out),
            vec![(Address::Wallet(PAYEE), aborted(reason))]
        );
    }
    assert!(b.inst.snapshot().pays.is_empty());
}

// ----- recovery -----

fn assert_same_state(recovered: &InstitutionSnapshot, original: &InstitutionSnapshot) {
    assert_eq!(recovered.id, original.id);
    assert_eq!(recovered.accounts, original.accounts);
    assert_eq!(recovered.coins, original.coins);
    assert_eq!(recovered.pays, original.pays);
    assert_eq!(recovered.exchanges, original.exchanges);
}

fn recover(node: &Node) -> Node {
    let id = node.inst.snapshot().id;
    let mut fresh = Node::new(id, limits());
    for event in &node.journal {
        fresh.inst.apply(event);
    }
    fresh.journal = node.journal.clone();
    fresh
}

#[test]
fn replaying_the_journal_rebuilds_the_same_state() {
    let (mut a, coins) = issuer();
    let mut b = coordinator();
    // A committed cross-institution payment, fully acknowledged.
    let decided = decide_commit(&mut a, &mut b, &coins);
    let commit = decided
        .sends
        .iter()
        .find(|e| e.to == Address::Institution(A))
        .unwrap()
        .clone();
    let reply = a.deliver_envelope(commit, NOW_MS);
    let commit_reply = reply
        .sends
        .iter()
        .find(|e| e.to == Address::Institution(B))
        .unwrap();
    b.deliver_envelope(commit_reply.clone(), NOW_MS);
    b.deliver(
        Address::CentralBank,
        saga(1),
        Payload::ReserveAck(Ok(())),
        NOW_MS,
    );
    assert_eq!(b.step(saga(1)), PayStep::Committed);
    // A refused lock, a payment aborted by timeout after its lock, a local payment, a
    // refused exchange, and a payment committed but not yet acknowledged.
    let change = issued(&reply).remove(0).1;
    let (lock, _) = redeem(&mut b, &authorize(saga(2), &[&coins[2]], Amount(5_000)));
    let reply = a.deliver_envelope(lock, NOW_MS);
    b.deliver_envelope(only_send(&reply).clone(), NOW_MS);
    let (lock, _) = redeem(&mut b, &authorize(saga(3), &[&coins[2]], Amount(150)));
    a.deliver_envelope(lock, NOW_MS);
    let abort = b.fire(
        InstitutionTimer::LockTimeout(saga(3)),
        NOW_MS + SAGA_TIMEOUT_MS,
    );
    a.deliver_envelope(
        abort
            .sends
            .iter()
            .find(|e| e.to == Address::Institution(A))
            .unwrap()
            .clone(),
        NOW_MS,
    );
    let mut local = authorization(saga(4), &[&change], Amount(300));
    local.payee = NEIGHBOUR;
    local.payee_institution = A;
    a.deliver(
        Address::Wallet(NEIGHBOUR),
        saga(4),
        Payload::RedeemRequest(local.sign(&wallet_keys(PAYER))),
        NOW_MS,
    );
    a.deliver(
        Address::Wallet(NEIGHBOUR),
        saga(5),
        Payload::ExchangeRequest {
            amount: Amount(DEPOSIT.0 + 1),
        },
        NOW_MS,
    );
    let (lock, _) = redeem(&mut b, &authorize(saga(6), &[&coins[3]], Amount(100)));
    let reply = a.deliver_envelope(lock, NOW_MS);
    b.deliver_envelope(only_send(&reply).clone(), NOW_MS);

    for node in [&mut a, &mut b] {
        let mut recovered = recover(node);
        assert_same_state(&recovered.inst.snapshot(), &node.inst.snapshot());
        // The holdings index is rebuilt too: the same balances and coin choices.
        for wallet in [PAYER, NEIGHBOUR, PAYEE] {
            for amount in [Amount(1), Amount(700), Amount(6_000)] {
                assert_eq!(
                    recovered.balance_reply(wallet, amount),
                    node.balance_reply(wallet, amount)
                );
            }
        }
        // And the serial numbers: the next coins issued are the same ones, never a reuse.
        let wallet = if node.inst.snapshot().id == A {
            NEIGHBOUR
        } else {
            PAYEE
        };
        let next = node.exchange(wallet, saga(7), Amount(1_200));
        assert_eq!(recovered.exchange(wallet, saga(7), Amount(1_200)), next);
    }

    // Work in flight is re-driven after recovery: saga 3 waits for the unlock's ack (lost),
    // saga 6 for the retirement's and the backing move's.
    let mut recovered = recover(&b);
    let mut out = Out::default();
    recovered.inst.on_start(NOW_MS, &mut out);
    recovered.inst.seal(&mut out.sends);
    // Two sagas to re-drive, and the redelivery of unacknowledged coins — soon, since the
    // payee's coin of saga 6 is recovered as undelivered.
    assert_eq!(out.timers.len(), 3, "{:?}", out.timers);
    assert!(
        recovered.inst.snapshot().coins_in_delivery > 0,
        "a coin awaits its acknowledgement"
    );
    assert!(out
        .timers
        .contains(&(limits().retry_interval_ms, InstitutionTimer::Redeliver)));
    for id in [saga(3), saga(6)] {
        assert!(out.timers.contains(&(
            0,
            InstitutionTimer::Retry {
                saga: id,
                attempt: 0
            }
        )));
    }
    let resent = recovered.fire(
        InstitutionTimer::Retry {
            saga: saga(3),
            attempt: 0,
        },
        NOW_MS,
    );
    assert_eq!(
        payloads_to(&resent, Address::Institution(A)),
        vec![&Payload::AbortRequest {
            reason: AbortReason::Timeout
        }]
    );
}
