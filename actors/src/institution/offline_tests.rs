//! Unit tests of split and offline redemption at the institutions, driven by hand
//! (`sagas_fixture`).
//!
//! `W1` banks at `A` and holds one coin of 5000 issued by `A`; `W2` and `W3` bank at `B`,
//! `W4` at `A`. Offline payments are signed by the wallets' keys exactly as a wallet signs
//! them; redemptions go through each claimant's own institution. Tests assert on outcomes,
//! the coins paid, the coin's register state and ledger, the attribution of double spends,
//! and run the audit (whose conservation counts the offline value still owed to chains).

use super::sagas_fixture::*;
use super::{settlement_saga, ClaimState, CoinState, InstitutionTimer, RedeemStep};
use specie_protocol::offline::{
    ChainId, OfflineMessage, SignedTransfer, SplitAuthorization, TrustChain,
};
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, Envelope, InstitutionId, Payload, SagaId, SagaKind,
    WalletId,
};

const A: InstitutionId = InstitutionId(0);
const B: InstitutionId = InstitutionId(1);
const W1: WalletId = WalletId(1);
const W2: WalletId = WalletId(2);
const W3: WalletId = WalletId(3);
const W4: WalletId = WalletId(4);
const VALUE: Amount = Amount(5_000);

/// The world, and `W1`'s coin of 5000.
fn setup() -> (World, Coin) {
    let mut world = World::new(2);
    world.open(W1, A);
    world.open(W4, A);
    world.open(W2, B);
    world.open(W3, B);
    let coins = world.exchange(W1, A, saga(900), VALUE);
    assert_eq!(coins.len(), 1);
    world.notices.clear();
    world.timers.clear();
    (world, coins[0].clone())
}

fn home(wallet: WalletId) -> InstitutionId {
    if wallet == W1 || wallet == W4 {
        A
    } else {
        B
    }
}

/// `wallet` asks its institution to redeem `chain` under `id`.
fn redeem(world: &mut World, wallet: WalletId, id: SagaId, chain: &TrustChain) {
    let request = Payload::Offline(OfflineMessage::RedeemRequest(chain.clone()));
    world.send(
        Address::Wallet(wallet),
        Address::Institution(home(wallet)),
        id,
        request,
    );
}

/// The only outcome `wallet` got for `id`.
fn outcome(world: &World, wallet: WalletId, id: SagaId) -> Result<(), AbortReason> {
    let outcomes = world.outcomes_to(Address::Wallet(wallet), id);
    assert_eq!(outcomes.len(), 1, "one outcome for {wallet}: {outcomes:?}");
    outcomes[0].result
}

fn coin_state(world: &World, coin: &Coin) -> CoinState {
    world.snapshot_of(coin.body.issuer).coins[&coin.id].state
}

/// Coins paid to `wallet` under `id`.
fn paid(world: &World, wallet: WalletId, id: SagaId) -> Vec<Coin> {
    world
        .coins_to(wallet)
        .into_iter()
        .filter(|c| c.body.origin_saga == id)
        .collect()
}

fn double_spend_reports(
    world: &World,
    wallet: WalletId,
    id: SagaId,
) -> Vec<specie_protocol::offline::DoubleSpend> {
    world
        .inbox
        .iter()
        .filter(|e| e.to == Address::Wallet(wallet) && e.saga_id == id)
        .filter_map(|e| match &e.payload {
            Payload::Offline(OfflineMessage::DoubleSpendReport(d)) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

// ----- split -----

#[test]
fn split_retires_the_coin_and_issues_two_that_sum_to_it() {
    let (mut world, coin) = setup();
    let id = saga(1);
    world.send(
        Address::Wallet(W1),
        Address::Institution(A),
        id,
        split_payload(id, W1, &coin, Amount(2_000)),
    );
    world.run();
    assert_eq!(outcome(&world, W1, id), Ok(()));
    assert_eq!(
        world.outcomes_to(Address::Wallet(W1), id)[0].kind,
        SagaKind::Split
    );
    let mut values: Vec<u64> = paid(&world, W1, id).iter().map(|c| c.value().0).collect();
    values.sort_unstable();
    assert_eq!(values, vec![2_000, 3_000]);
    assert!(paid(&world, W1, id)
        .iter()
        .all(|c| c.body.owner == key_of(W1) && c.body.issuer == A));
    assert_eq!(coin_state(&world, &coin), CoinState::Spent(id));
    assert_eq!(world.snapshot_of(A).sagas.splits[&id].result, Ok(()));
    world.assert_audit();
}

/// Builds a split request for a coin.
type SplitRequestOf<'a> = Box<dyn Fn(&Coin) -> Payload + 'a>;

#[test]
fn every_split_refusal_carries_its_reason_and_changes_nothing() {
    let signed =
        |coin: &Coin, amount: Amount, by: WalletId, tweak: &dyn Fn(&mut SplitAuthorization)| {
            let mut a = SplitAuthorization {
                saga_id: saga(2),
                wallet: W1,
                wallet_key: key_of(W1),
                coin_id: coin.id,
                issuer: coin.body.issuer,
                amount,
                expires_at_ms: NOW_MS + TTL_MS,
            };
            tweak(&mut a);
            a.sign(&wallet_keys(by))
        };
    let cases: Vec<(&str, InstitutionId, SplitRequestOf<'_>, AbortReason)> = vec![
        (
            "a zero part",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(0),
                    W1,
                    &|_| {},
                )))
            }),
            AbortReason::InvalidAmount,
        ),
        (
            "a part worth the whole coin",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(c, VALUE, W1, &|_| {})))
            }),
            AbortReason::InvalidAmount,
        ),
        (
            "another wallet's coin",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(10),
                    W4,
                    &|a| {
                        a.wallet = W4;
                        a.wallet_key = key_of(W4);
                    },
                )))
            }),
            AbortReason::CoinNotOwned,
        ),
        (
            "a coin of another issuer",
            B,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(10),
                    W1,
                    &|a| a.issuer = B,
                )))
            }),
            AbortReason::CoinUnknown,
        ),
        (
            "the wrong issuer named",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(10),
                    W1,
                    &|a| a.issuer = B,
                )))
            }),
            AbortReason::WrongIssuer,
        ),
        (
            "an unknown coin",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(10),
                    W1,
                    &|a| a.coin_id = CoinId([9; 32]),
                )))
            }),
            AbortReason::CoinUnknown,
        ),
        (
            "an expired request",
            A,
            Box::new(|c| {
                Payload::Offline(OfflineMessage::SplitRequest(signed(
                    c,
                    Amount(10),
                    W1,
                    &|a| a.expires_at_ms = 0,
                )))
            }),
            AbortReason::Expired,
        ),
        (
            "a tampered amount",
            A,
            Box::new(|c| {
                let mut s = signed(c, Amount(10), W1, &|_| {});
                s.authorization.amount = Amount(11);
                Payload::Offline(OfflineMessage::SplitRequest(s))
            }),
            AbortReason::BadSignature,
        ),
    ];
    for (what, to, request, reason) in cases {
        let (mut world, coin) = setup();
        for _ in 0..2 {
            world.send(
                Address::Wallet(W1),
                Address::Institution(to),
                saga(2),
                request(&coin),
            );
            world.run();
        }
        let results: Vec<_> = world
            .outcomes_to(Address::Wallet(W1), saga(2))
            .into_iter()
            .map(|o| o.result)
            .collect();
        assert_eq!(results, vec![Err(reason); 2], "{what}");
        assert!(world.coins_to(W1).is_empty(), "{what}");
        assert_eq!(coin_state(&world, &coin), CoinState::Active, "{what}");
        world.assert_audit();
    }
}

#[test]
fn a_repeated_split_returns_the_recorded_outcome_and_a_spent_coin_cannot_be_split_again() {
    let (mut world, coin) = setup();
    let id = saga(3);
    for _ in 0..2 {
        world.send(
            Address::Wallet(W1),
            Address::Institution(A),
            id,
            split_payload(id, W1, &coin, Amount(1_000)),
        );
        world.run();
    }
    assert_eq!(paid(&world, W1, id).len(), 2, "the coins are issued once");
    let results: Vec<_> = world
        .outcomes_to(Address::Wallet(W1), id)
        .into_iter()
        .map(|o| o.result)
        .collect();
    assert_eq!(results, vec![Ok(()), Ok(())]);
    // The same saga id with another amount: a conflict. Another saga: the coin is spent.
    world.send(
        Address::Wallet(W1),
        Address::Institution(A),
        id,
        split_payload(id, W1, &coin, Amount(1_500)),
    );
    world.send(
        Address::Wallet(W1),
        Address::Institution(A),
        saga(4),
        split_payload(saga(4), W1, &coin, Amount(1_500)),
    );
    world.run();
    assert_eq!(
        world.outcomes_to(Address::Wallet(W1), id)[2].result,
        Err(AbortReason::Conflict)
    );
    assert_eq!(outcome(&world, W1, saga(4)), Err(AbortReason::CoinSpent));
    assert_eq!(paid(&world, W1, id).len(), 2);
    world.assert_audit();
}

// ----- offline redemption -----

/// `W1` pays `W2` 1200 of its coin offline: (the payee's chain, `W1`'s remainder).
fn paid_offline(coin: &Coin) -> (TrustChain, TrustChain) {
    let (paid, rest) = pay_offline(&TrustChain::of_coin(coin.clone()), W1, W2, Amount(1_200), 1);
    (paid, rest.expect("3800 left"))
}

#[test]
fn a_chain_is_redeemed_at_the_coins_issuer_and_the_ledger_owes_the_rest_to_the_other_chain() {
    let (mut world, coin) = setup();
    let (to_w2, rest) = paid_offline(&coin);
    let r1 = saga(10);
    redeem(&mut world, W2, r1, &to_w2);
    world.run();
    assert_eq!(outcome(&world, W2, r1), Ok(()));
    assert_eq!(
        world.outcomes_to(Address::Wallet(W2), r1)[0].kind,
        SagaKind::OfflineRedeem
    );
    // The claimant is paid with a new coin of the coin's issuer: no backing moves.
    let got = paid(&world, W2, r1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].body.issuer, got[0].body.owner, got[0].value()),
        (A, key_of(W2), Amount(1_200))
    );
    assert_eq!(
        coin_state(&world, &coin),
        CoinState::Spent(settlement_saga(coin.id))
    );
    let ledger = &world.snapshot_of(A).sagas.ledgers[&coin.id];
    assert_eq!(
        (ledger.paid, ledger.outstanding),
        (Amount(1_200), Amount(3_800))
    );
    assert_eq!(
        world.snapshot_of(B).sagas.redemptions[&r1].step,
        RedeemStep::Committed
    );
    assert_eq!(
        world.snapshot_of(A).sagas.claims[&r1].state,
        ClaimState::Committed
    );
    // Conservation counts the 3800 the ledger still owes to W1's remainder chain.
    world.assert_audit();

    // W1 redeems its remainder at its own institution, the issuer: one local step.
    let r2 = saga(11);
    redeem(&mut world, W1, r2, &rest);
    world.run();
    assert_eq!(outcome(&world, W1, r2), Ok(()));
    assert_eq!(paid(&world, W1, r2)[0].value(), Amount(3_800));
    let ledger = &world.snapshot_of(A).sagas.ledgers[&coin.id];
    assert_eq!((ledger.paid, ledger.outstanding), (VALUE, Amount::ZERO));
    world.assert_audit();
}

#[test]
fn two_offline_spends_of_one_coin_one_is_honoured_the_other_detected_and_attributed() {
    let (mut world, coin) = setup();
    let root = TrustChain::of_coin(coin.clone());
    let (to_w2, rest_1) = pay_offline(&root, W1, W2, Amount(3_000), 1);
    // W1 spends the same coin again, offline, to W3.
    let (to_w3, rest_2) = pay_offline(&root, W1, W3, Amount(3_000), 3);
    let before = world.audit();
    assert!(before.ok());

    redeem(&mut world, W2, saga(20), &to_w2);
    world.run();
    redeem(&mut world, W3, saga(21), &to_w3);
    world.run();
    assert_eq!(outcome(&world, W2, saga(20)), Ok(()));
    assert_eq!(
        outcome(&world, W3, saga(21)),
        Err(AbortReason::OfflineDoubleSpend)
    );
    assert!(
        paid(&world, W3, saga(21)).is_empty(),
        "a double spend never creates value"
    );
    let reports = double_spend_reports(&world, W3, saga(21));
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].signer, reports[0].signer_key, reports[0].coin_id),
        (W1, key_of(W1), coin.id)
    );
    assert_eq!(reports[0].sequence, 3, "the second spend's record");
    assert_eq!(world.snapshot_of(A).sagas.double_spends_detected, 1);
    let r = &world.snapshot_of(B).sagas.redemptions[&saga(21)];
    assert_eq!(
        r.step,
        RedeemStep::Aborted {
            reason: AbortReason::OfflineDoubleSpend
        }
    );
    assert_eq!(r.double_spend.as_ref().map(|d| d.signer), Some(W1));
    world.assert_audit();

    // W1's first remainder (2000) fits what is left; the second (2000) does not.
    redeem(&mut world, W1, saga(22), &rest_1.unwrap());
    redeem(&mut world, W1, saga(23), &rest_2.unwrap());
    world.run();
    assert_eq!(outcome(&world, W1, saga(22)), Ok(()));
    assert_eq!(
        outcome(&world, W1, saga(23)),
        Err(AbortReason::OfflineDoubleSpend)
    );
    let ledger = &world.snapshot_of(A).sagas.ledgers[&coin.id];
    assert_eq!(
        (ledger.paid, ledger.outstanding),
        (VALUE, Amount::ZERO),
        "exactly the coin's value was paid"
    );
    assert_eq!(world.snapshot_of(A).sagas.double_spends_detected, 2);
    world.assert_audit();
}

#[test]
fn a_coin_spent_online_and_also_offline_is_a_double_spend_by_its_owner() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    world.send(
        Address::Wallet(W1),
        Address::Institution(A),
        saga(30),
        split_payload(saga(30), W1, &coin, Amount(100)),
    );
    world.run();
    redeem(&mut world, W2, saga(31), &to_w2);
    world.run();
    assert_eq!(
        outcome(&world, W2, saga(31)),
        Err(AbortReason::OfflineDoubleSpend)
    );
    assert_eq!(double_spend_reports(&world, W2, saga(31))[0].signer, W1);
    assert!(paid(&world, W2, saga(31)).is_empty());
    world.assert_audit();
}

#[test]
fn a_chain_paid_onward_is_redeemed_by_each_holder_and_redeeming_the_parent_too_is_a_double_spend() {
    let (mut world, coin) = setup();
    let (to_w2, rest) = pay_offline(&TrustChain::of_coin(coin.clone()), W1, W2, Amount(3_000), 1);
    // W2 pays 1000 of it onward to W3, keeping 2000.
    let (to_w3, w2_rest) = pay_offline(&to_w2, W2, W3, Amount(1_000), 1);
    assert_eq!(to_w3.transfers.len(), 2);
    redeem(&mut world, W3, saga(40), &to_w3);
    redeem(&mut world, W2, saga(41), &w2_rest.unwrap());
    redeem(&mut world, W1, saga(42), &rest.unwrap());
    world.run();
    for (w, id, value) in [
        (W3, saga(40), 1_000),
        (W2, saga(41), 2_000),
        (W1, saga(42), 2_000),
    ] {
        assert_eq!(outcome(&world, w, id), Ok(()), "{w}");
        assert_eq!(paid(&world, w, id)[0].value(), Amount(value));
    }
    // W2 passed its chain on and now redeems it as well.
    redeem(&mut world, W2, saga(43), &to_w2);
    world.run();
    assert_eq!(
        outcome(&world, W2, saga(43)),
        Err(AbortReason::OfflineDoubleSpend)
    );
    assert_eq!(double_spend_reports(&world, W2, saga(43))[0].signer, W2);
    let ledger = &world.snapshot_of(A).sagas.ledgers[&coin.id];
    assert_eq!((ledger.paid, ledger.outstanding), (VALUE, Amount::ZERO));
    world.assert_audit();
}

#[test]
fn a_chain_redeemed_again_gets_the_recorded_answer_or_coin_spent_and_creates_nothing() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    for _ in 0..2 {
        redeem(&mut world, W2, saga(50), &to_w2);
        world.run();
    }
    let results: Vec<_> = world
        .outcomes_to(Address::Wallet(W2), saga(50))
        .into_iter()
        .map(|o| o.result)
        .collect();
    assert_eq!(results, vec![Ok(()), Ok(())]);
    redeem(&mut world, W2, saga(51), &to_w2);
    world.run();
    assert_eq!(
        outcome(&world, W2, saga(51)),
        Err(AbortReason::CoinSpent),
        "a replay is not a double spend"
    );
    assert!(double_spend_reports(&world, W2, saga(51)).is_empty());
    assert_eq!(world.coins_to(W2).len(), 1);
    world.assert_audit();
}

#[test]
fn every_claim_refusal_carries_its_reason_and_pays_nothing() {
    let (_, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    let mut tampered = to_w2.clone();
    tampered.transfers[0].record.amount = Amount(4_000);
    let mut stranger_coin = coin.clone();
    stranger_coin.id = CoinId([7; 32]);
    let unknown = TrustChain {
        coin: stranger_coin,
        transfers: to_w2.transfers.clone(),
    };
    let mut wrong_issuer = to_w2.clone();
    wrong_issuer.coin.body.issuer = InstitutionId(7);
    let cases = [
        ("a tampered amount", W2, tampered, AbortReason::BadSignature),
        (
            "another wallet's chain",
            W3,
            to_w2.clone(),
            AbortReason::CoinNotOwned,
        ),
        (
            "a bare coin",
            W1,
            TrustChain::of_coin(coin.clone()),
            AbortReason::EmptyRequest,
        ),
        (
            "a coin its issuer never issued",
            W2,
            unknown,
            AbortReason::CoinUnknown,
        ),
        (
            "an issuer that does not exist",
            W2,
            wrong_issuer,
            AbortReason::WrongIssuer,
        ),
    ];
    for (what, wallet, chain, reason) in cases {
        let (mut world, coin) = setup();
        redeem(&mut world, wallet, saga(60), &chain);
        world.run();
        assert_eq!(outcome(&world, wallet, saga(60)), Err(reason), "{what}");
        assert!(world.coins_to(wallet).is_empty(), "{what}");
        assert_eq!(coin_state(&world, &coin), CoinState::Active, "{what}");
        world.assert_audit();
    }
}

#[test]
fn a_claim_overlapping_one_not_yet_decided_is_asked_to_wait_not_blamed() {
    let (mut world, coin) = setup();
    let root = TrustChain::of_coin(coin.clone());
    let (to_w2, _) = pay_offline(&root, W1, W2, Amount(3_000), 1);
    let (to_w3, _) = pay_offline(&root, W1, W3, Amount(3_000), 3);
    redeem(&mut world, W2, saga(70), &to_w2);
    // Deliver W2's request and its claim at A; hold A's reply back.
    while !world.snapshot_of(A).sagas.claims.contains_key(&saga(70)) {
        let e = world.queue.pop_front().unwrap();
        world.deliver(e);
    }
    let held: Vec<Envelope> = world.queue.drain(..).collect();
    assert_eq!(
        coin_state(&world, &coin),
        CoinState::Locked(settlement_saga(coin.id))
    );
    redeem(&mut world, W3, saga(71), &to_w3);
    world.run();
    assert_eq!(outcome(&world, W3, saga(71)), Err(AbortReason::CoinLocked));
    assert!(double_spend_reports(&world, W3, saga(71)).is_empty());
    for e in held {
        world.deliver(e);
    }
    world.run();
    assert_eq!(outcome(&world, W2, saga(70)), Ok(()));
    // Now the overlap is decided: the retry is a double spend.
    redeem(&mut world, W3, saga(72), &to_w3);
    world.run();
    assert_eq!(
        outcome(&world, W3, saga(72)),
        Err(AbortReason::OfflineDoubleSpend)
    );
    world.assert_audit();
}

#[test]
fn a_lost_claim_times_out_before_the_decision_and_the_late_claim_is_refused() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    redeem(&mut world, W2, saga(80), &to_w2);
    let request = world.queue.pop_front().unwrap();
    world.deliver(request);
    let claim = world.queue.pop_front().expect("the claim to A");
    assert!(matches!(
        claim.payload,
        Payload::Offline(OfflineMessage::Claim { .. })
    ));
    world.fire(B, InstitutionTimer::LockTimeout(saga(80)));
    world.run();
    assert_eq!(outcome(&world, W2, saga(80)), Err(AbortReason::Timeout));
    assert_eq!(
        world.snapshot_of(B).sagas.redemptions[&saga(80)].step,
        RedeemStep::Aborted {
            reason: AbortReason::Timeout
        }
    );
    // The claim arrives after the abort: refused, nothing reserved.
    world.deliver(claim);
    let reply = world.queue.back().unwrap().payload.clone();
    assert!(matches!(
        reply,
        Payload::Offline(OfflineMessage::ClaimReply {
            result: Err(AbortReason::SagaAborted),
            ..
        })
    ));
    world.run();
    assert_eq!(coin_state(&world, &coin), CoinState::Active);
    world.assert_audit();
    // The chain is still good: a new redemption pays it.
    redeem(&mut world, W2, saga(81), &to_w2);
    world.run();
    assert_eq!(outcome(&world, W2, saga(81)), Ok(()));
    world.assert_audit();
}

#[test]
fn a_lost_claim_reply_times_out_and_the_reserved_claim_is_released() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    let before = world.money();
    redeem(&mut world, W2, saga(82), &to_w2);
    while !world.snapshot_of(A).sagas.claims.contains_key(&saga(82)) {
        let e = world.queue.pop_front().unwrap();
        world.deliver(e);
    }
    world.queue.clear(); // A's reply is lost
    assert_eq!(
        coin_state(&world, &coin),
        CoinState::Locked(settlement_saga(coin.id))
    );
    world.assert_audit();
    world.fire(B, InstitutionTimer::LockTimeout(saga(82)));
    world.run();
    assert_eq!(outcome(&world, W2, saga(82)), Err(AbortReason::Timeout));
    assert_eq!(
        world.snapshot_of(A).sagas.claims[&saga(82)].state,
        ClaimState::Released
    );
    assert!(
        world.snapshot_of(A).sagas.ledgers.is_empty(),
        "nothing was paid: the ledger is gone"
    );
    assert_eq!(world.money(), before, "the coin is active again");
    assert_eq!(
        world.snapshot_of(B).sagas.redemptions[&saga(82)].step,
        RedeemStep::Aborted {
            reason: AbortReason::Timeout
        }
    );
    world.assert_audit();
}

#[test]
fn after_the_decision_a_lost_commit_is_retried_and_a_timeout_changes_nothing() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    redeem(&mut world, W2, saga(83), &to_w2);
    while world
        .snapshot_of(B)
        .sagas
        .redemptions
        .get(&saga(83))
        .is_none_or(|r| r.step != RedeemStep::Committing)
    {
        let e = world.queue.pop_front().unwrap();
        world.deliver(e);
    }
    assert_eq!(
        world.drop_where(|e| matches!(e.payload, Payload::CommitRequest { .. })),
        1
    );
    world.run();
    assert_eq!(
        outcome(&world, W2, saga(83)),
        Ok(()),
        "the wallet hears the decision"
    );
    assert!(paid(&world, W2, saga(83)).is_empty(), "not paid yet");
    world.assert_audit();
    world.fire(B, InstitutionTimer::LockTimeout(saga(83)));
    world.run();
    assert_eq!(
        world.snapshot_of(B).sagas.redemptions[&saga(83)].step,
        RedeemStep::Committing
    );
    world.retry(B, saga(83), 1);
    world.run();
    assert_eq!(
        world.snapshot_of(B).sagas.redemptions[&saga(83)].step,
        RedeemStep::Committed
    );
    assert_eq!(paid(&world, W2, saga(83)).len(), 1);
    world.assert_audit();
}

/// A cross-institution redemption and the payer's local one, delivered by `deliver`.
fn redeemed_with(deliver: impl Fn(&mut World)) -> World {
    let (mut world, coin) = setup();
    let (to_w2, rest) = paid_offline(&coin);
    redeem(&mut world, W2, saga(90), &to_w2);
    redeem(&mut world, W1, saga(91), &rest);
    deliver(&mut world);
    world
}

#[test]
fn duplicated_or_reordered_delivery_of_every_step_ends_as_single_delivery() {
    let single = redeemed_with(World::run);
    let doubled = redeemed_with(World::run_duplicated);
    assert_eq!(doubled.money(), single.money());
    let mut coins: Vec<CoinId> = doubled.coins_to(W2).iter().map(|c| c.id).collect();
    coins.dedup();
    assert_eq!(coins.len(), 1, "paid once");
    doubled.assert_audit();
    for seed in 0..16 {
        let shuffled = redeemed_with(|w| w.run_shuffled(seed));
        assert_eq!(shuffled.money(), single.money(), "seed {seed}");
        shuffled.assert_audit();
    }
}

#[test]
fn a_redemption_in_flight_survives_a_restart_from_the_journal_and_from_a_checkpoint() {
    for from_checkpoint in [false, true] {
        let (mut world, coin) = setup();
        let (to_w2, _) = paid_offline(&coin);
        redeem(&mut world, W2, saga(92), &to_w2);
        let request = world.queue.pop_front().unwrap();
        world.deliver(request);
        world.queue.clear(); // the claim is lost in the crash
        world.timers.clear();
        world.restart_all(2, from_checkpoint);
        assert!(world.timers.contains(&(
            B,
            InstitutionTimer::Retry {
                saga: saga(92),
                attempt: 0
            }
        )));
        world.retry(B, saga(92), 0);
        world.run();
        assert_eq!(
            world.snapshot_of(B).sagas.redemptions[&saga(92)].step,
            RedeemStep::Committed
        );
        assert_eq!(paid(&world, W2, saga(92)).len(), 1);
        let ledger = &world.snapshot_of(A).sagas.ledgers[&coin.id];
        assert_eq!(ledger.paid, Amount(1_200), "checkpoint: {from_checkpoint}");
        world.assert_audit();
    }
}

#[test]
fn coins_paid_to_a_wallet_of_another_institution_are_redelivered_until_acknowledged() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    redeem(&mut world, W2, saga(93), &to_w2);
    world.run();
    let got = paid(&world, W2, saga(93));
    world.inbox.clear();
    world.fire(A, InstitutionTimer::Redeliver);
    assert!(
        world.coins_to(W2).iter().any(|c| c.id == got[0].id),
        "A resends it to W2, who banks at B"
    );
    // W2 splits the coin at A, its issuer: the parts are delivered to W2 too.
    world.inbox.clear();
    world.send(
        Address::Wallet(W2),
        Address::Institution(A),
        saga(94),
        split_payload(saga(94), W2, &got[0], Amount(200)),
    );
    world.run();
    assert_eq!(paid(&world, W2, saga(94)).len(), 2);
    world.assert_audit();
}

#[test]
fn an_offline_sync_records_the_wallets_own_transfers_once() {
    let (mut world, coin) = setup();
    let (to_w2, rest) = paid_offline(&coin);
    let mine: Vec<SignedTransfer> = [&to_w2, &rest]
        .iter()
        .map(|c| c.transfers[0].clone())
        .collect();
    let (foreign, _) = pay_offline(&to_w2, W2, W3, Amount(10), 9);
    let mut upload = mine.clone();
    upload.push(foreign.transfers[1].clone()); // signed by W2: not W1's record
    for _ in 0..2 {
        let sync = Payload::Offline(OfflineMessage::Sync {
            transfers: upload.clone(),
        });
        world.send(Address::Wallet(W1), Address::Institution(A), saga(95), sync);
        world.run();
    }
    let acks: Vec<_> = world
        .inbox
        .iter()
        .filter_map(|e| match e.payload {
            Payload::Offline(OfflineMessage::SyncAck { sequence }) => Some(sequence),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![2, 2]);
    let synced = world.snapshot_of(A).sagas.synced[&W1];
    assert_eq!(
        (synced.sequence, synced.records, synced.paid),
        (2, 2, Amount(1_200))
    );
    world.assert_audit();
}

#[test]
fn the_chain_ids_of_a_split_differ_and_name_their_chains() {
    let (_, coin) = setup();
    let (a, b) = paid_offline(&coin);
    assert_ne!(a.id(), b.id());
    assert_ne!(a.id(), ChainId(coin.id.0));
}

#[test]
fn the_status_of_a_split_or_a_redemption_is_its_recorded_decision() {
    let (mut world, coin) = setup();
    let (to_w2, _) = paid_offline(&coin);
    world.send(
        Address::Wallet(W1),
        Address::Institution(A),
        saga(96),
        split_payload(saga(96), W1, &coin, Amount(1)),
    );
    redeem(&mut world, W2, saga(97), &to_w2);
    world.run();
    let status = |world: &mut World, at: InstitutionId, id: SagaId| {
        world.inbox.clear();
        world.send(
            Address::Wallet(W1),
            Address::Institution(at),
            id,
            Payload::StatusQuery,
        );
        world.run();
        world.inbox.iter().find_map(|e| match e.payload {
            Payload::StatusReply { state, reason, .. } => Some((state, reason)),
            _ => None,
        })
    };
    use specie_protocol::SagaState;
    assert_eq!(
        status(&mut world, A, saga(96)),
        Some((SagaState::Committed, None))
    );
    // The split spent the coin the chain names: the redemption was refused.
    assert_eq!(
        status(&mut world, B, saga(97)),
        Some((SagaState::Aborted, Some(AbortReason::OfflineDoubleSpend)))
    );
    assert_eq!(
        status(&mut world, A, saga(98)),
        Some((SagaState::Unknown, None))
    );
}
