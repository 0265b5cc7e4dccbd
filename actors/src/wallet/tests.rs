//! Unit tests of the wallet's state machine, driven by hand without a runtime.
//!
//! The payer's wallet gets its coins from a real exchange at its institution `A`, and asks
//! that institution which coins cover a payment, so the coins, the selection and the
//! signature checks are the real ones. The payee (a merchant) keeps its account at `B`.
//! Tests assert on what the wallet's user sees: the envelopes it sends (and their signed
//! content), the coins it holds and the outcome notices it publishes.

use super::{OfflineSettings, Wallet, WalletCommand, WalletEvent, WalletLimits, WalletTimer};
use crate::central_bank::{CentralBank, CentralBankCommand};
use crate::institution::{
    CoinState, Institution, InstitutionCommand, InstitutionEvent, InstitutionLimits,
    InstitutionTimer,
};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinBody, CoinId, Envelope, InstitutionId, KeyStore,
    Payload, PublicKey, SagaId, SagaKind, SagaState, SignedAuthorization, SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

type Out = Effects<WalletEvent, WalletTimer>;
type InstitutionOut = Effects<InstitutionEvent, InstitutionTimer>;

/// The payer's institution, issuer of its coins.
const A: InstitutionId = InstitutionId(1);
/// The payee's (merchant's) institution, the coordinator.
const B: InstitutionId = InstitutionId(2);
/// Pays; account at `A`.
const PAYER: WalletId = WalletId(11);
/// Receives, or collects as a merchant; account at `B`.
const PAYEE: WalletId = WalletId(21);

const NOW_MS: u64 = 1_000;
const AUTHORIZATION_TTL_MS: u64 = 10_000;
const OUTCOME_TIMEOUT_MS: u64 = 2_000;
const SAGA_TIMEOUT_MS: u64 = 5_000;
const DEPOSIT: Amount = Amount(100_000);
/// What the payer exchanges: coins of 5000, 1000, 200 and 100.
const EXCHANGED: Amount = Amount(6_300);

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

fn institution_limits() -> InstitutionLimits {
    InstitutionLimits {
        saga_timeout_ms: SAGA_TIMEOUT_MS,
        retry_interval_ms: 100,
        retry_interval_max_ms: 800,
        coin_inputs_max: 4,
        denominations: vec![Amount(5_000), Amount(1_000), Amount(200)],
        dedup_retention_ms: 86_400_000,
    }
}

fn institution(id: InstitutionId, customer: WalletId) -> Institution {
    let mut inst = Institution::new(
        id,
        Arc::new(institution_keys(id)),
        Arc::new(institution_limits()),
    );
    let open = InstitutionCommand::OpenAccount {
        wallet: customer,
        key: key_of(customer),
        deposit: DEPOSIT,
    };
    inst.on_command(open, 0, &mut InstitutionOut::default());
    inst
}

fn envelope(from: Address, to: Address, saga: SagaId, payload: Payload) -> Envelope {
    Envelope {
        message_id: 0,
        saga_id: saga,
        from,
        to,
        attempt: 0,
        trace: None,
        payload,
    }
}

/// Hands an envelope to an institution and returns what it did.
fn at_institution(inst: &mut Institution, envelope: Envelope) -> InstitutionOut {
    assert_eq!(envelope.to, inst.address());
    let mut out = InstitutionOut::default();
    inst.on_envelope(envelope, NOW_MS, &mut out);
    inst.seal(&mut out.sends);
    out
}

/// A wallet and its journal (every step's events, as the host keeps them).
struct Node {
    wallet: Wallet,
    journal: Vec<WalletEvent>,
}

impl Node {
    fn new(id: WalletId, institution: InstitutionId) -> Node {
        let issuers: HashMap<InstitutionId, PublicKey> = [A, B]
            .into_iter()
            .map(|i| (i, institution_keys(i).public_key()))
            .collect();
        let limits = WalletLimits {
            authorization_ttl_ms: AUTHORIZATION_TTL_MS,
            outcome_timeout_ms: OUTCOME_TIMEOUT_MS,
            saga_timeout_ms: SAGA_TIMEOUT_MS,
            dedup_retention_ms: 86_400_000,
        };
        Node {
            wallet: Wallet::new(
                id,
                institution,
                Arc::new(wallet_keys(id)),
                Arc::new(issuers),
                Arc::new(limits),
            ),
            journal: Vec::new(),
        }
    }

    fn keep(&mut self, out: Out) -> Out {
        self.journal.extend(out.events.iter().cloned());
        out
    }

    fn deliver_envelope(&mut self, envelope: Envelope, now_ms: u64) -> Out {
        assert_eq!(
            envelope.to,
            self.wallet.address(),
            "routed to the right wallet"
        );
        let mut out = Out::default();
        self.wallet.on_envelope(envelope, now_ms, &mut out);
        self.keep(out)
    }

    fn deliver(&mut self, from: Address, saga: SagaId, payload: Payload, now_ms: u64) -> Out {
        let to = self.wallet.address();
        self.deliver_envelope(envelope(from, to, saga, payload), now_ms)
    }

    fn command(&mut self, command: WalletCommand, now_ms: u64) -> Out {
        let mut out = Out::default();
        self.wallet.on_command(command, now_ms, &mut out);
        self.keep(out)
    }

    fn fire(&mut self, timer: WalletTimer, now_ms: u64) -> Out {
        let mut out = Out::default();
        self.wallet.on_timer(timer, now_ms, &mut out);
        self.keep(out)
    }

    fn coin_ids(&self) -> Vec<CoinId> {
        let mut ids: Vec<CoinId> = self.wallet.snapshot().coins.iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    fn pending(&self) -> usize {
        self.wallet.snapshot().pending
    }
}

/// The payer's institution and wallet after an exchange of [`EXCHANGED`]: the coins are in
/// `A`'s register and in the wallet.
fn payer_with_coins() -> (Institution, Node, Vec<Coin>) {
    let mut a = institution(A, PAYER);
    let mut payer = Node::new(PAYER, A);
    let id = saga(1_000);
    let request = envelope(
        Address::Wallet(PAYER),
        Address::Institution(A),
        id,
        Payload::ExchangeRequest { amount: EXCHANGED },
    );
    at_institution(&mut a, request);
    let ack = envelope(
        Address::CentralBank,
        Address::Institution(A),
        id,
        Payload::ReserveAck(Ok(())),
    );
    let mut coins = Vec::new();
    for e in at_institution(&mut a, ack).sends {
        if let Payload::CoinIssued(coin) = e.payload.clone() {
            coins.push(coin.clone());
            let out = payer.deliver_envelope(e, NOW_MS);
            assert_eq!(out.events.len(), 1, "a genuine coin is taken");
            assert_only_acknowledged(
                &Out {
                    events: vec![],
                    ..out
                },
                A,
                coin.id,
            );
        }
    }
    assert_eq!(coins.len(), 4);
    assert_eq!(payer.wallet.balance(), EXCHANGED);
    (a, payer, coins)
}

fn pay_command(id: SagaId, amount: Amount) -> WalletCommand {
    WalletCommand::Pay {
        saga: id,
        payee: PAYEE,
        payee_institution: B,
        amount,
        coins: None,
    }
}

fn only_send(out: &Out) -> &Envelope {
    assert_eq!(out.sends.len(), 1, "exactly one envelope: {:?}", out.sends);
    &out.sends[0]
}

/// The signed authorization of the one payment request sent.
fn payment_request(out: &Out) -> SignedAuthorization {
    let e = only_send(out);
    assert_eq!(e.to, Address::Wallet(PAYEE));
    match &e.payload {
        Payload::PaymentRequest(signed) => signed.clone(),
        other => panic!("expected a payment request, got {other:?}"),
    }
}

/// Runs a payment from the command to the signed request: the balance query is answered by
/// the real institution.
fn pay_until_signed(a: &mut Institution, payer: &mut Node, id: SagaId, amount: Amount) -> Out {
    let out = payer.command(pay_command(id, amount), NOW_MS);
    let reply = at_institution(a, only_send(&out).clone());
    assert_eq!(reply.sends.len(), 1);
    payer.deliver_envelope(reply.sends[0].clone(), NOW_MS)
}

fn notice_of(out: &Out) -> &Notice {
    assert_eq!(
        out.notices.len(),
        1,
        "exactly one notice: {:?}",
        out.notices
    );
    &out.notices[0]
}

fn committed(spent: Vec<CoinId>) -> SagaOutcome {
    SagaOutcome {
        kind: SagaKind::Pay,
        result: Ok(()),
        spent_coin_ids: spent,
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

/// A repeated coin changes nothing but is acknowledged to its issuer, so that the issuer stops
/// resending it.
fn assert_only_acknowledged(out: &Out, issuer: InstitutionId, coin: CoinId) {
    assert!(
        out.events.is_empty() && out.timers.is_empty() && out.notices.is_empty(),
        "{out:?}"
    );
    let e = only_send(out);
    assert_eq!(e.to, Address::Institution(issuer));
    assert_eq!(
        e.payload,
        Payload::CoinAck {
            coin_ids: vec![coin]
        }
    );
}

/// Nothing happened: no event, no envelope, no timer, no notice.
fn assert_nothing(out: &Out) {
    assert!(
        out.events.is_empty()
            && out.sends.is_empty()
            && out.timers.is_empty()
            && out.notices.is_empty(),
        "{out:?}"
    );
}

// ----- payer -----

#[test]
fn pay_asks_the_own_institution_which_coins_cover_the_amount() {
    let (_, mut payer, _) = payer_with_coins();
    let out = payer.command(pay_command(saga(1), Amount(5_500)), NOW_MS);
    let e = only_send(&out);
    assert_eq!(e.to, Address::Institution(A));
    assert_eq!(e.saga_id, saga(1));
    assert_eq!(
        e.payload,
        Payload::BalanceQuery {
            amount: Amount(5_500)
        }
    );
    assert_eq!(
        out.timers,
        vec![(
            OUTCOME_TIMEOUT_MS,
            WalletTimer {
                saga: saga(1),
                attempt: 1
            }
        )]
    );
    assert!(out.notices.is_empty());
    assert_eq!(payer.pending(), 1);
    assert_eq!(
        payer.wallet.balance(),
        EXCHANGED,
        "nothing is spent before the outcome"
    );
}

#[test]
fn balance_reply_with_coins_sends_a_signed_payment_request_to_the_payee() {
    let (mut a, mut payer, coins) = payer_with_coins();
    let out = pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let signed = payment_request(&out);
    assert_eq!(only_send(&out).saga_id, saga(1));

    // The signature is the payer's, over exactly what it agreed to.
    assert_eq!(signed.verify(), Ok(()));
    let auth = &signed.authorization;
    assert_eq!(auth.saga_id, saga(1));
    assert_eq!(auth.payer, PAYER);
    assert_eq!(auth.payer_key, key_of(PAYER));
    assert_eq!(auth.payer_institution, A);
    assert_eq!(
        auth.coin_ids,
        vec![coins[0].id, coins[1].id],
        "5000 + 1000 cover 5500"
    );
    assert_eq!(auth.amount, Amount(5_500));
    assert_eq!(auth.payee, PAYEE);
    assert_eq!(auth.payee_institution, B);
    assert_eq!(auth.expires_at_ms, NOW_MS + AUTHORIZATION_TTL_MS);
    assert!(out.notices.is_empty());
    assert_eq!(payer.pending(), 1);

    // The issuer accepts it when the coordinator asks for the lock.
    let lock = envelope(
        Address::Institution(B),
        Address::Institution(A),
        saga(1),
        Payload::LockRequest(signed),
    );
    let reply = at_institution(&mut a, lock);
    assert_eq!(
        reply.sends[0].payload,
        Payload::LockReply(Ok(Amount(6_000)))
    );

    // A late duplicate of the balance reply does not sign a second time.
    let again = payer.deliver(
        Address::Institution(A),
        saga(1),
        Payload::BalanceReply {
            available: EXCHANGED,
            coin_ids: vec![coins[2].id],
        },
        NOW_MS,
    );
    assert_nothing(&again);
}

#[test]
fn a_stale_selection_is_replaced_by_the_wallets_own_choice_of_free_coins() {
    let (_, mut payer, coins) = payer_with_coins();
    // Payment 1 spends coin 0 (chosen by the wallet), and is still in flight.
    let first = payer.command(
        WalletCommand::Pay {
            saga: saga(1),
            payee: PAYEE,
            payee_institution: B,
            amount: coins[0].value(),
            coins: Some(vec![coins[0].id]),
        },
        NOW_MS,
    );
    assert_eq!(
        payment_request(&first).authorization.coin_ids,
        vec![coins[0].id]
    );
    // A coin of another issuer (an offline payment redeemed there, say): a payment locks its
    // coins at the payer's institution, so the wallet never picks it itself.
    let foreign = Coin::issue(
        CoinBody {
            issuer: B,
            owner: key_of(PAYER),
            denomination: Amount(700),
            nonce: 78,
            origin_saga: saga(6),
            issued_at_ms: NOW_MS,
        },
        &institution_keys(B),
    );
    let taken = payer.deliver(
        Address::Institution(B),
        saga(6),
        Payload::CoinIssued(foreign.clone()),
        NOW_MS,
    );
    assert_eq!(taken.events.len(), 1, "a genuine coin of B is taken");
    // Payment 2's selection, made by the institution before payment 1 took coin 0, names it
    // and a coin the wallet does not hold (retired by a split, say): paying with them would
    // fail at the issuer although the wallet can pay.
    let amount = Amount(500);
    payer.command(pay_command(saga(2), amount), NOW_MS);
    let out = payer.deliver(
        Address::Institution(A),
        saga(2),
        Payload::BalanceReply {
            available: EXCHANGED,
            coin_ids: vec![coins[0].id, CoinId([9; 32])],
        },
        NOW_MS,
    );
    let chosen = payment_request(&out).authorization.coin_ids;
    assert!(!chosen.is_empty());
    assert!(!chosen.contains(&foreign.id), "never another issuer's coin");
    let held: Vec<CoinId> = coins[1..].iter().map(|c| c.id).collect();
    assert!(
        chosen.iter().all(|id| held.contains(id)),
        "only free, held coins: {chosen:?}"
    );
    let sum: u64 = coins
        .iter()
        .filter(|c| chosen.contains(&c.id))
        .map(|c| c.value().0)
        .sum();
    assert!(sum >= amount.0);
}

#[test]
fn empty_balance_reply_aborts_with_insufficient_funds() {
    let (mut a, mut payer, _) = payer_with_coins();
    let amount = Amount(EXCHANGED.0 + 1);
    let out = pay_until_signed(&mut a, &mut payer, saga(1), amount);
    assert!(
        out.sends.is_empty(),
        "nothing is signed or sent: {:?}",
        out.sends
    );
    let notice = notice_of(&out);
    assert_eq!(notice.saga_id, saga(1));
    assert_eq!(notice.source, Address::Wallet(PAYER));
    assert_eq!(notice.outcome, aborted(AbortReason::InsufficientFunds));
    assert_eq!(payer.pending(), 0);
    assert_eq!(payer.wallet.balance(), EXCHANGED);
}

#[test]
fn committed_outcome_removes_the_spent_coins() {
    let (mut a, mut payer, coins) = payer_with_coins();
    let signed = payment_request(&pay_until_signed(
        &mut a,
        &mut payer,
        saga(1),
        Amount(5_500),
    ));
    let outcome = committed(signed.authorization.coin_ids.clone());

    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(outcome.clone()),
        NOW_MS + 7,
    );
    // The wallet's notice does not repeat the decision time; its transaction records carry it.
    assert_eq!(
        notice_of(&out).outcome,
        SagaOutcome {
            decided_at_ms: 0,
            ..outcome.clone()
        }
    );
    // The platform's copies of the payment's records, one per institution it touched, at the
    // coordinator's decision time: B coordinated, A retired the coins.
    let movement = crate::reconciler::Movement {
        saga: saga(1),
        kind: specie_protocol::reconcile::RecordKind::Pay,
        payer: PAYER,
        payee: PAYEE,
        amount: Amount(5_500),
        at_ms: NOW_MS,
    };
    let records: Vec<_> = out
        .records
        .iter()
        .map(|r| (r.institution, r.record.clone()))
        .collect();
    assert_eq!(
        records,
        vec![(B, movement.record(B)), (A, movement.record(A))]
    );
    let mut left = vec![coins[2].id, coins[3].id];
    left.sort();
    assert_eq!(payer.coin_ids(), left);
    assert_eq!(payer.wallet.balance(), Amount(300));
    assert_eq!(payer.pending(), 0);

    // The change coin from the issuer is taken.
    let change = Coin::issue(
        CoinBody {
            issuer: A,
            owner: key_of(PAYER),
            denomination: Amount(500),
            nonce: 100,
            origin_saga: saga(1),
            issued_at_ms: NOW_MS,
        },
        &institution_keys(A),
    );
    payer.deliver(
        Address::Institution(A),
        saga(1),
        Payload::CoinIssued(change),
        NOW_MS,
    );
    assert_eq!(payer.wallet.balance(), Amount(800));

    // A duplicate outcome changes nothing.
    let again = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(outcome),
        NOW_MS,
    );
    assert_nothing(&again);
    assert_eq!(payer.wallet.balance(), Amount(800));
}

#[test]
fn aborted_outcome_keeps_the_coins() {
    let (mut a, mut payer, _) = payer_with_coins();
    pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let outcome = aborted(AbortReason::CoinLocked);
    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(outcome.clone()),
        NOW_MS,
    );
    assert_eq!(notice_of(&out).outcome, outcome);
    assert_eq!(payer.wallet.balance(), EXCHANGED);
    assert_eq!(payer.pending(), 0);
}

#[test]
fn pay_with_chosen_coins_signs_at_once() {
    let (_, mut payer, coins) = payer_with_coins();
    let command = WalletCommand::Pay {
        saga: saga(1),
        payee: PAYEE,
        payee_institution: B,
        amount: Amount(1_100),
        coins: Some(vec![coins[1].id, coins[3].id]),
    };
    let out = payer.command(command, NOW_MS);
    let signed = payment_request(&out);
    assert_eq!(signed.verify(), Ok(()));
    assert_eq!(
        signed.authorization.coin_ids,
        vec![coins[1].id, coins[3].id]
    );
    assert_eq!(signed.authorization.amount, Amount(1_100));
}

#[test]
fn a_wallet_that_selects_its_coins_pays_at_once_and_asks_only_when_they_do_not_cover() {
    let (mut a, payer, coins) = payer_with_coins();
    let Node { wallet, journal } = payer;
    let mut payer = Node {
        wallet: wallet.with_offline_settings(OfflineSettings {
            select_own_coins: true,
            ..OfflineSettings::default()
        }),
        journal,
    };
    // 5,000 + 1,000 + 200 + 100: the smallest single coin covering 900 is the 1,000.
    let signed = payment_request(&payer.command(pay_command(saga(1), Amount(900)), NOW_MS));
    assert_eq!(signed.verify(), Ok(()));
    let thousand = coins
        .iter()
        .find(|c| c.value() == Amount(1_000))
        .expect("held");
    assert_eq!(signed.authorization.coin_ids, vec![thousand.id]);
    // The 1,000 is in flight, and the free coins do not cover 5,500: the wallet asks its
    // institution instead of paying with too little.
    let out = payer.command(pay_command(saga(2), Amount(5_500)), NOW_MS);
    let query = only_send(&out).clone();
    assert_eq!(query.to, Address::Institution(A));
    assert!(matches!(query.payload, Payload::BalanceQuery { amount } if amount == Amount(5_500)));
    // The institution still counts the 1,000 (its lock has not reached A) and selects it; the
    // wallet sees the selection is stale and, with too little free, ends the payment.
    let reply = at_institution(&mut a, query);
    assert_eq!(reply.sends.len(), 1, "one balance reply");
    let out = payer.deliver_envelope(reply.sends[0].clone(), NOW_MS);
    assert!(out.sends.is_empty(), "{:?}", out.sends);
    assert_eq!(
        notice_of(&out).outcome,
        aborted(AbortReason::InsufficientFunds)
    );
    assert_eq!(payer.pending(), 1, "the first payment is still in flight");
}

// ----- coins received -----

#[test]
fn coin_with_a_forged_issuer_signature_or_for_another_owner_is_rejected() {
    let (_, mut payer, _) = payer_with_coins();
    let body = |issuer: InstitutionId, owner: PublicKey| CoinBody {
        issuer,
        owner,
        denomination: Amount(1_000_000),
        nonce: 77,
        origin_saga: saga(5),
        issued_at_ms: NOW_MS,
    };
    let mallory = SoftKeyStore::from_seed([99; 32]);
    // Claims to come from A, signed by someone else.
    let forged = Coin::issue(body(A, key_of(PAYER)), &mallory);
    // Genuinely issued by A, but to another wallet.
    let not_mine = Coin::issue(body(A, key_of(PAYEE)), &institution_keys(A));
    // From an institution the wallet does not know.
    let unknown = Coin::issue(body(InstitutionId(9), key_of(PAYER)), &mallory);
    // Genuine, then inflated on the way (the id no longer matches the body).
    let mut inflated = Coin::issue(
        CoinBody {
            denomination: Amount(1),
            ..body(A, key_of(PAYER))
        },
        &institution_keys(A),
    );
    inflated.body.denomination = Amount(1_000_000);

    for coin in [forged, not_mine, unknown, inflated] {
        let out = payer.deliver(
            Address::Institution(A),
            saga(5),
            Payload::CoinIssued(coin),
            NOW_MS,
        );
        assert_nothing(&out);
    }
    assert_eq!(payer.wallet.balance(), EXCHANGED);
    assert_eq!(payer.wallet.snapshot().coins.len(), 4);
}

#[test]
fn duplicate_coin_issued_adds_the_coin_once() {
    let (_, mut payer, coins) = payer_with_coins();
    let out = payer.deliver(
        Address::Institution(A),
        saga(1_000),
        Payload::CoinIssued(coins[0].clone()),
        NOW_MS,
    );
    assert_only_acknowledged(&out, A, coins[0].id);
    assert_eq!(payer.wallet.balance(), EXCHANGED);
    assert_eq!(payer.wallet.snapshot().coins.len(), 4);
}

/// A `CoinIssued` delivered twice, the second time after the coin was spent (or one that
/// arrives after the outcome spending the coin), must not bring the spent coin back: the
/// wallet would hold a coin its issuer's register says is spent.
#[test]
fn coin_issued_again_after_it_was_spent_is_not_taken_back() {
    let (mut a, mut payer, coins) = payer_with_coins();
    let signed = payment_request(&pay_until_signed(
        &mut a,
        &mut payer,
        saga(1),
        Amount(5_500),
    ));
    payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(committed(signed.authorization.coin_ids.clone())),
        NOW_MS,
    );
    assert_eq!(payer.wallet.balance(), Amount(300));

    let late = payer.deliver(
        Address::Institution(A),
        saga(1_000),
        Payload::CoinIssued(coins[0].clone()),
        NOW_MS,
    );
    assert_only_acknowledged(&late, A, coins[0].id);
    assert_eq!(payer.wallet.balance(), Amount(300));
    assert!(!payer.coin_ids().contains(&coins[0].id));
}

// ----- collect (the merchant asks) -----

fn collect_command(id: SagaId, amount: Amount) -> WalletCommand {
    WalletCommand::Collect {
        saga: id,
        payer: PAYER,
        amount,
    }
}

fn collect_request(amount: Amount) -> Payload {
    Payload::CollectRequest {
        amount,
        payee: PAYEE,
        payee_institution: B,
        expires_at_ms: NOW_MS + AUTHORIZATION_TTL_MS,
    }
}

#[test]
fn merchant_collect_sends_a_collect_request_to_the_payer() {
    let mut merchant = Node::new(PAYEE, B);
    let out = merchant.command(collect_command(saga(1), Amount(700)), NOW_MS);
    let e = only_send(&out);
    assert_eq!(e.to, Address::Wallet(PAYER));
    assert_eq!(e.saga_id, saga(1));
    assert_eq!(e.payload, collect_request(Amount(700)));
    assert_eq!(
        out.timers,
        vec![(
            OUTCOME_TIMEOUT_MS,
            WalletTimer {
                saga: saga(1),
                attempt: 1
            }
        )]
    );
    assert_eq!(merchant.pending(), 1);

    // Waiting, the merchant asks its own institution (the coordinator) where the saga stands.
    let out = merchant.fire(
        WalletTimer {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS + OUTCOME_TIMEOUT_MS,
    );
    assert_eq!(only_send(&out).to, Address::Institution(B));
    assert_eq!(only_send(&out).payload, Payload::StatusQuery);
    // The coordinator never heard of it: the collect request is sent again.
    let out = merchant.deliver(
        Address::Institution(B),
        saga(1),
        Payload::StatusReply {
            state: SagaState::Unknown,
            reason: None,
            decided_at_ms: 0,
        },
        NOW_MS + OUTCOME_TIMEOUT_MS,
    );
    assert_eq!(only_send(&out).to, Address::Wallet(PAYER));
    assert_eq!(only_send(&out).payload, collect_request(Amount(700)));
    assert!(out.events.is_empty());
}

#[test]
fn payer_answers_a_collect_request_with_a_signed_payment() {
    let (mut a, mut payer, coins) = payer_with_coins();
    let out = payer.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        collect_request(Amount(700)),
        NOW_MS,
    );
    let e = only_send(&out);
    assert_eq!(e.to, Address::Institution(A));
    assert_eq!(
        e.payload,
        Payload::BalanceQuery {
            amount: Amount(700)
        }
    );

    let reply = at_institution(&mut a, e.clone());
    let out = payer.deliver_envelope(reply.sends[0].clone(), NOW_MS);
    let signed = payment_request(&out);
    assert_eq!(signed.verify(), Ok(()));
    assert_eq!(signed.authorization.amount, Amount(700));
    assert_eq!(signed.authorization.payee, PAYEE);
    assert_eq!(signed.authorization.payee_institution, B);
    assert_eq!(
        signed.authorization.coin_ids,
        vec![coins[1].id],
        "the smallest coin covering 700"
    );

    // A repeated collect request while answering is not answered twice.
    let again = payer.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        collect_request(Amount(700)),
        NOW_MS,
    );
    assert_nothing(&again);

    // The payer did not start this payment: the merchant reports it, not the payer — but
    // the payer's coins are still spent when it commits.
    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(committed(vec![coins[1].id])),
        NOW_MS,
    );
    assert!(out.notices.is_empty());
    assert!(!payer.coin_ids().contains(&coins[1].id));
    assert_eq!(payer.wallet.balance(), Amount(5_300));
}

#[test]
fn payer_without_enough_coins_declines_the_collect_request() {
    let (mut a, mut payer, _) = payer_with_coins();
    let amount = Amount(EXCHANGED.0 + 1);
    let out = payer.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        collect_request(amount),
        NOW_MS,
    );
    let reply = at_institution(&mut a, only_send(&out).clone());
    let out = payer.deliver_envelope(reply.sends[0].clone(), NOW_MS);
    let e = only_send(&out);
    assert_eq!(e.to, Address::Wallet(PAYEE));
    assert_eq!(
        e.payload,
        Payload::PaymentDeclined {
            reason: AbortReason::InsufficientFunds
        }
    );
    assert!(out.notices.is_empty(), "the merchant reports a collect");

    // The merchant's collect ends with the payer's reason.
    let mut merchant = Node::new(PAYEE, B);
    merchant.command(collect_command(saga(1), amount), NOW_MS);
    let out = merchant.deliver_envelope(e.clone(), NOW_MS);
    assert_eq!(
        notice_of(&out).outcome,
        aborted(AbortReason::InsufficientFunds)
    );
    assert_eq!(merchant.pending(), 0);

    // Asked again, the payer repeats its refusal.
    let out = payer.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        collect_request(amount),
        NOW_MS,
    );
    assert!(out.events.is_empty());
    assert_eq!(
        only_send(&out).payload,
        Payload::PaymentDeclined {
            reason: AbortReason::InsufficientFunds
        }
    );
}

#[test]
fn collect_request_of_zero_or_naming_someone_else_is_declined() {
    let (_, mut payer, _) = payer_with_coins();
    for (id, from, payload, reason) in [
        (
            saga(1),
            Address::Wallet(PAYEE),
            collect_request(Amount::ZERO),
            AbortReason::InvalidAmount,
        ),
        // Sent by another wallet than the payee it names.
        (
            saga(2),
            Address::Wallet(WalletId(33)),
            collect_request(Amount(100)),
            AbortReason::PayeeMismatch,
        ),
        // Asking the payer to pay itself.
        (
            saga(3),
            Address::Wallet(PAYER),
            Payload::CollectRequest {
                amount: Amount(100),
                payee: PAYER,
                payee_institution: A,
                expires_at_ms: NOW_MS + AUTHORIZATION_TTL_MS,
            },
            AbortReason::PayeeMismatch,
        ),
    ] {
        let out = payer.deliver(from, id, payload, NOW_MS);
        assert!(out.events.is_empty() && out.notices.is_empty());
        let e = only_send(&out);
        assert_eq!(e.to, from);
        assert_eq!(e.payload, Payload::PaymentDeclined { reason });
    }
    assert_eq!(payer.pending(), 0);
}

#[test]
fn payee_forwards_a_matching_payment_to_its_institution() {
    let (mut a, mut payer, _) = payer_with_coins();
    let mut merchant = Node::new(PAYEE, B);
    merchant.command(collect_command(saga(1), Amount(700)), NOW_MS);
    let out = payer.deliver(
        Address::Wallet(PAYEE),
        saga(1),
        collect_request(Amount(700)),
        NOW_MS,
    );
    let reply = at_institution(&mut a, only_send(&out).clone());
    let out = payer.deliver_envelope(reply.sends[0].clone(), NOW_MS);
    let request = only_send(&out).clone();
    let signed = payment_request(&out);

    let out = merchant.deliver_envelope(request, NOW_MS);
    let e = only_send(&out);
    assert_eq!(e.to, Address::Institution(B));
    assert_eq!(e.payload, Payload::RedeemRequest(signed));
    assert!(out.events.is_empty());

    // The coordinator's outcome ends the merchant's collect.
    let out = merchant.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(committed(vec![])),
        NOW_MS,
    );
    assert_eq!(notice_of(&out).outcome.result, Ok(()));
    assert_eq!(merchant.pending(), 0);
}

#[test]
fn payee_receiving_a_payment_it_did_not_start_forwards_it_too() {
    let (mut a, mut payer, _) = payer_with_coins();
    let out = pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let signed = payment_request(&out);
    let mut payee = Node::new(PAYEE, B);
    let out = payee.deliver_envelope(only_send(&out).clone(), NOW_MS);
    assert_eq!(only_send(&out).to, Address::Institution(B));
    assert_eq!(only_send(&out).payload, Payload::RedeemRequest(signed));
}

#[test]
fn mismatched_payment_request_is_declined_as_payee_mismatch() {
    let (mut a, mut payer, _) = payer_with_coins();
    let mut merchant = Node::new(PAYEE, B);
    merchant.command(collect_command(saga(1), Amount(700)), NOW_MS);
    // The payer pays less than the merchant asked for, under the collect's saga id.
    let out = pay_until_signed(&mut a, &mut payer, saga(1), Amount(500));
    let out = merchant.deliver_envelope(only_send(&out).clone(), NOW_MS);
    let e = only_send(&out);
    assert_eq!(e.to, Address::Wallet(PAYER));
    assert_eq!(
        e.payload,
        Payload::PaymentDeclined {
            reason: AbortReason::PayeeMismatch
        }
    );
    assert!(out.events.is_empty());
    assert_eq!(
        merchant.pending(),
        1,
        "the collect still waits for the right payment"
    );

    // A payment naming another payee, or relayed by someone else than its payer.
    let out = pay_until_signed(&mut a, &mut payer, saga(2), Amount(200));
    let mut request = only_send(&out).clone();
    let mut other = Node::new(WalletId(33), B);
    request.to = other.wallet.address();
    let out = other.deliver_envelope(request.clone(), NOW_MS);
    assert_eq!(
        only_send(&out).payload,
        Payload::PaymentDeclined {
            reason: AbortReason::PayeeMismatch
        }
    );
    request.to = Address::Wallet(PAYEE);
    request.from = Address::Wallet(WalletId(33));
    let mut payee = Node::new(PAYEE, B);
    let out = payee.deliver_envelope(request, NOW_MS);
    assert_eq!(only_send(&out).to, Address::Wallet(WalletId(33)));
    assert_eq!(
        only_send(&out).payload,
        Payload::PaymentDeclined {
            reason: AbortReason::PayeeMismatch
        }
    );

    // The payer whose payment was declined ends it with the payee's reason, coins kept.
    let out = payer.deliver(
        Address::Wallet(PAYEE),
        saga(2),
        Payload::PaymentDeclined {
            reason: AbortReason::PayeeMismatch,
        },
        NOW_MS,
    );
    assert_eq!(notice_of(&out).outcome, aborted(AbortReason::PayeeMismatch));
    assert_eq!(payer.wallet.balance(), EXCHANGED);
}

// ----- refusals before anything starts -----

#[test]
fn zero_amount_paying_oneself_and_reused_saga_ids_are_refused() {
    let (_, mut payer, _) = payer_with_coins();
    let refusals = [
        (
            pay_command(saga(1), Amount::ZERO),
            AbortReason::InvalidAmount,
        ),
        (
            WalletCommand::Pay {
                saga: saga(2),
                payee: PAYER,
                payee_institution: A,
                amount: Amount(100),
                coins: None,
            },
            AbortReason::PayeeMismatch,
        ),
        (
            WalletCommand::Collect {
                saga: saga(3),
                payer: PAYER,
                amount: Amount(100),
            },
            AbortReason::PayeeMismatch,
        ),
        (
            WalletCommand::Collect {
                saga: saga(4),
                payer: PAYEE,
                amount: Amount::ZERO,
            },
            AbortReason::InvalidAmount,
        ),
    ];
    for (command, reason) in refusals {
        let out = payer.command(command, NOW_MS);
        assert!(out.events.is_empty() && out.sends.is_empty() && out.timers.is_empty());
        assert_eq!(notice_of(&out).outcome.result, Err(reason));
    }
    assert_eq!(payer.pending(), 0);

    // A saga id already in use (in flight, or finished) is a conflict.
    payer.command(pay_command(saga(5), Amount(100)), NOW_MS);
    let out = payer.command(pay_command(saga(5), Amount(200)), NOW_MS);
    assert!(out.events.is_empty() && out.sends.is_empty());
    assert_eq!(notice_of(&out).outcome.result, Err(AbortReason::Conflict));
    payer.command(pay_command(saga(6), Amount(100)), NOW_MS);
    let outcome = Payload::SagaOutcome(aborted(AbortReason::Timeout));
    payer.deliver(Address::Institution(B), saga(6), outcome, NOW_MS);
    let out = payer.command(pay_command(saga(6), Amount(100)), NOW_MS);
    assert!(out.events.is_empty() && out.sends.is_empty());
    assert_eq!(notice_of(&out).outcome.result, Err(AbortReason::Conflict));
    assert_eq!(payer.pending(), 1, "only saga 5 is in flight");
    assert_eq!(payer.wallet.balance(), EXCHANGED);
}

// ----- waiting for the outcome -----

#[test]
fn timer_before_signing_asks_the_institution_again() {
    let (_, mut payer, _) = payer_with_coins();
    payer.command(pay_command(saga(1), Amount(700)), NOW_MS);
    let out = payer.fire(
        WalletTimer {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS + OUTCOME_TIMEOUT_MS,
    );
    let e = only_send(&out);
    assert_eq!(e.to, Address::Institution(A));
    assert_eq!(
        e.payload,
        Payload::BalanceQuery {
            amount: Amount(700)
        }
    );
    assert_eq!(e.attempt, 1);
}

#[test]
fn timer_after_signing_asks_the_coordinator_for_the_status() {
    let (mut a, mut payer, _) = payer_with_coins();
    pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let out = payer.fire(
        WalletTimer {
            saga: saga(1),
            attempt: 1,
        },
        NOW_MS + OUTCOME_TIMEOUT_MS,
    );
    let e = only_send(&out);
    assert_eq!(
        e.to,
        Address::Institution(B),
        "the payee's institution coordinates"
    );
    assert_eq!(e.payload, Payload::StatusQuery);
    assert_eq!(e.attempt, 1);
    assert_eq!(
        out.timers,
        vec![(
            OUTCOME_TIMEOUT_MS,
            WalletTimer {
                saga: saga(1),
                attempt: 2
            }
        )]
    );
    assert!(out.events.is_empty());

    // The coordinator says it committed: the payment ends, coins spent.
    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::StatusReply {
            state: SagaState::Committed,
            reason: None,
            decided_at_ms: NOW_MS,
        },
        NOW_MS + OUTCOME_TIMEOUT_MS,
    );
    assert_eq!(notice_of(&out).outcome.result, Ok(()));
    assert_eq!(payer.wallet.balance(), Amount(300));

    // A timer for a finished payment does nothing.
    let out = payer.fire(
        WalletTimer {
            saga: saga(1),
            attempt: 2,
        },
        NOW_MS + 2 * OUTCOME_TIMEOUT_MS,
    );
    assert_nothing(&out);
}

#[test]
fn unknown_status_resends_the_payment_until_the_authorization_can_no_longer_lock() {
    let (mut a, mut payer, _) = payer_with_coins();
    let out = pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let signed = payment_request(&out);
    let deadline_ms = signed.authorization.expires_at_ms + SAGA_TIMEOUT_MS;
    let unknown = Payload::StatusReply {
        state: SagaState::Unknown,
        reason: None,
        decided_at_ms: 0,
    };

    // Before the deadline the request may just have been lost: hand it over again.
    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        unknown.clone(),
        deadline_ms,
    );
    let e = only_send(&out);
    assert_eq!(e.to, Address::Wallet(PAYEE));
    assert_eq!(e.payload, Payload::PaymentRequest(signed));
    assert!(out.events.is_empty() && out.notices.is_empty());
    assert_eq!(payer.pending(), 1);

    // After it, no issuer can lock the coins any more: the payment aborts as expired.
    let out = payer.deliver(Address::Institution(B), saga(1), unknown, deadline_ms + 1);
    assert!(out.sends.is_empty());
    assert_eq!(notice_of(&out).outcome, aborted(AbortReason::Expired));
    assert_eq!(payer.pending(), 0);
    assert_eq!(
        payer.wallet.balance(),
        EXCHANGED,
        "an aborted payment spends nothing"
    );
}

#[test]
fn aborted_status_ends_the_payment_with_the_reason() {
    let (mut a, mut payer, _) = payer_with_coins();
    pay_until_signed(&mut a, &mut payer, saga(1), Amount(5_500));
    let out = payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::StatusReply {
            state: SagaState::Aborted,
            reason: Some(AbortReason::Timeout),
            decided_at_ms: 0,
        },
        NOW_MS,
    );
    assert_eq!(notice_of(&out).outcome, aborted(AbortReason::Timeout));
    assert_eq!(payer.wallet.balance(), EXCHANGED);
}

// ----- recovery -----

#[test]
fn replaying_the_journal_rebuilds_the_coins_and_the_work_in_flight() {
    let (mut a, mut payer, coins) = payer_with_coins();
    let signed = payment_request(&pay_until_signed(&mut a, &mut payer, saga(1), Amount(700)));
    payer.deliver(
        Address::Institution(B),
        saga(1),
        Payload::SagaOutcome(committed(signed.authorization.coin_ids.clone())),
        NOW_MS,
    );
    pay_until_signed(&mut a, &mut payer, saga(2), Amount(5_000));

    let mut recovered = Node::new(PAYER, A);
    for event in &payer.journal {
        recovered.wallet.apply(event);
    }
    assert_eq!(recovered.coin_ids(), payer.coin_ids());
    assert_eq!(recovered.wallet.balance(), Amount(5_300));
    assert_eq!(recovered.pending(), 1);
    let mut out = Out::default();
    recovered.wallet.on_start(NOW_MS, &mut out);
    assert_eq!(
        out.timers,
        vec![(
            OUTCOME_TIMEOUT_MS,
            WalletTimer {
                saga: saga(2),
                attempt: 1
            }
        )]
    );
    // The spent coin stays spent after recovery, even if its coin message comes again.
    let late = recovered.deliver(
        Address::Institution(A),
        saga(1_000),
        Payload::CoinIssued(coins[1].clone()),
        NOW_MS,
    );
    assert_only_acknowledged(&late, A, coins[1].id);
    // The payment in flight still ends as the coordinator says.
    let out = recovered.deliver(
        Address::Institution(B),
        saga(2),
        Payload::SagaOutcome(committed(vec![coins[0].id])),
        NOW_MS,
    );
    assert_eq!(notice_of(&out).outcome.result, Ok(()));
    assert_eq!(recovered.wallet.balance(), Amount(300));
}

// ----- the wallets and institutions together -----

/// Every actor of a small cluster as a pure state machine, with a queue of envelopes in
/// flight delivered in order (no faults, timers never fire).
struct World {
    wallets: HashMap<WalletId, Wallet>,
    institutions: HashMap<InstitutionId, Institution>,
    central_bank: CentralBank,
    queue: VecDeque<Envelope>,
    notices: Vec<Notice>,
}

impl World {
    fn new() -> World {
        let mut central_bank = CentralBank::new(86_400_000);
        for institution in [A, B] {
            let mint = CentralBankCommand::Mint {
                institution,
                amount: Amount(1_000_000),
            };
            central_bank.on_command(mint, 0, &mut Effects::default());
        }
        World {
            wallets: [(PAYER, Node::new(PAYER, A)), (PAYEE, Node::new(PAYEE, B))]
                .into_iter()
                .map(|(id, n)| (id, n.wallet))
                .collect(),
            institutions: [(A, institution(A, PAYER)), (B, institution(B, PAYEE))]
                .into_iter()
                .collect(),
            central_bank,
            queue: VecDeque::new(),
            notices: Vec::new(),
        }
    }

    fn absorb<E, T>(&mut self, out: Effects<E, T>) {
        self.queue.extend(out.sends);
        self.notices.extend(out.notices);
    }

    fn command(&mut self, wallet: WalletId, command: WalletCommand) {
        let mut out = Out::default();
        self.wallets
            .get_mut(&wallet)
            .expect("a wallet of the world")
            .on_command(command, NOW_MS, &mut out);
        self.absorb(out);
        self.run();
    }

    /// Delivers until nothing is in flight. The bound catches a message loop.
    fn run(&mut self) {
        for _ in 0..1_000 {
            let Some(e) = self.queue.pop_front() else {
                return;
            };
            match e.to {
                Address::Wallet(w) => {
                    let mut out = Out::default();
                    self.wallets
                        .get_mut(&w)
                        .expect("known wallet")
                        .on_envelope(e, NOW_MS, &mut out);
                    self.absorb(out);
                }
                Address::Institution(i) => {
                    let mut out = InstitutionOut::default();
                    let inst = self.institutions.get_mut(&i).expect("known institution");
                    inst.on_envelope(e, NOW_MS, &mut out);
                    inst.seal(&mut out.sends);
                    self.absorb(out);
                }
                Address::CentralBank => {
                    let mut out = Effects::default();
                    self.central_bank.on_envelope(e, NOW_MS, &mut out);
                    self.absorb(out);
                }
                other => panic!("no actor at {other} in this world"),
            }
        }
        panic!("still busy after 1000 deliveries");
    }

    fn outcome_at(&self, wallet: WalletId, id: SagaId) -> Result<(), AbortReason> {
        let notices: Vec<&Notice> = self
            .notices
            .iter()
            .filter(|n| n.saga_id == id && n.source == Address::Wallet(wallet))
            .collect();
        assert_eq!(notices.len(), 1, "one outcome per saga at {wallet}");
        notices[0].outcome.result
    }

    /// Each wallet holds exactly the unspent coins its key owns in the registers, and each
    /// institution's backing reserve equals its outstanding coins.
    fn assert_consistent(&self) {
        for (id, wallet) in &self.wallets {
            let key = wallet.snapshot().key;
            let mut held: Vec<CoinId> = wallet.snapshot().coins.iter().map(|c| c.id).collect();
            let mut registered: Vec<CoinId> = self
                .institutions
                .values()
                .flat_map(|i| i.snapshot().coins.into_values())
                .filter(|r| r.coin.body.owner == key && !matches!(r.state, CoinState::Spent(_)))
                .map(|r| r.coin.id)
                .collect();
            held.sort();
            registered.sort();
            assert_eq!(held, registered, "coins of {id}");
        }
        let reserves = self.central_bank.snapshot().reserves;
        for (id, inst) in &self.institutions {
            let outstanding = Amount::sum(
                inst.snapshot()
                    .coins
                    .values()
                    .filter(|r| !matches!(r.state, CoinState::Spent(_)))
                    .map(|r| r.coin.value()),
            )
            .expect("fits");
            assert_eq!(reserves[id].backing, outstanding, "backing of {id}");
        }
    }
}

#[test]
fn exchange_then_payment_and_collect_between_two_institutions_settle_end_to_end() {
    let mut world = World::new();
    world.command(
        PAYER,
        WalletCommand::Exchange {
            saga: saga(1),
            amount: EXCHANGED,
        },
    );
    assert_eq!(world.outcome_at(PAYER, saga(1)), Ok(()));
    assert_eq!(world.wallets[&PAYER].balance(), EXCHANGED);
    world.assert_consistent();

    world.command(PAYER, pay_command(saga(2), Amount(5_500)));
    assert_eq!(world.outcome_at(PAYER, saga(2)), Ok(()));
    assert_eq!(world.wallets[&PAYER].balance(), Amount(800));
    assert_eq!(world.wallets[&PAYEE].balance(), Amount(5_500));
    world.assert_consistent();

    world.command(PAYEE, collect_command(saga(3), Amount(700)));
    assert_eq!(world.outcome_at(PAYEE, saga(3)), Ok(()));
    assert_eq!(world.wallets[&PAYER].balance(), Amount(100));
    assert_eq!(world.wallets[&PAYEE].balance(), Amount(6_200));
    world.assert_consistent();

    // More than is left: refused, nothing moves.
    world.command(PAYER, pay_command(saga(4), Amount(101)));
    assert_eq!(
        world.outcome_at(PAYER, saga(4)),
        Err(AbortReason::InsufficientFunds)
    );
    assert_eq!(world.wallets[&PAYER].balance(), Amount(100));
    world.assert_consistent();
}
