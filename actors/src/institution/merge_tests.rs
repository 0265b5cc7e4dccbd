//! Unit tests of the merge saga at the institutions, driven by hand (`sagas_fixture`).
//!
//! Wallet `W` banks at `A`, which coordinates its merges; it holds coins issued by `A`, `B`
//! and `C` (it keeps accounts at all three here, the simplest way to hold coins of several
//! issuers in a unit test; the cluster tests get them through offline payments). Every test
//! asserts on what users see — the outcome, the merged coin, the coins' states at their
//! issuers, the reserves at the central bank — and runs the audit.

use super::sagas_fixture::*;
use super::{CoinState, InstitutionTimer, MergeStep};
use specie_protocol::merge::{CoinRef, MergeAuthorization, SignedMergeAuthorization};
use specie_protocol::{
    AbortReason, Address, Amount, Coin, CoinId, InstitutionId, Payload, SagaKind, WalletId,
};
use specie_runtime::StateMachine;

const A: InstitutionId = InstitutionId(0);
const B: InstitutionId = InstitutionId(1);
const C: InstitutionId = InstitutionId(2);
/// Merges; banks at `A`, holds coins of `A`, `B` and `C`.
const W: WalletId = WalletId(1);
/// Another customer of `B`.
const OTHER: WalletId = WalletId(2);

struct Setup {
    world: World,
    /// `W`'s coins of `A`: 1000, 200.
    a: Vec<Coin>,
    /// `W`'s coins of `B`: 5000, 1000.
    b: Vec<Coin>,
    /// `W`'s coin of `C`: 200.
    c: Vec<Coin>,
    /// `OTHER`'s coin of `B`: 1000.
    other: Vec<Coin>,
}

fn setup() -> Setup {
    let mut world = World::new(3);
    world.open(W, A);
    world.open(W, B);
    world.open(W, C);
    world.open(OTHER, B);
    let a = world.exchange(W, A, saga(900), Amount(1_200));
    let b = world.exchange(W, B, saga(901), Amount(6_000));
    let c = world.exchange(W, C, saga(902), Amount(200));
    let other = world.exchange(OTHER, B, saga(903), Amount(1_000));
    assert_eq!((a.len(), b.len(), c.len(), other.len()), (2, 2, 1, 1));
    world.notices.clear();
    world.timers.clear();
    Setup {
        world,
        a,
        b,
        c,
        other,
    }
}

fn state(world: &World, coin: &Coin) -> CoinState {
    world.snapshot_of(coin.body.issuer).coins[&coin.id].state
}

fn step(world: &World, id: specie_protocol::SagaId) -> MergeStep {
    world.snapshot_of(A).sagas.merges[&id].step.clone()
}

fn decided(world: &World, id: specie_protocol::SagaId) -> bool {
    world
        .snapshot_of(A)
        .sagas
        .merges
        .get(&id)
        .is_some_and(|m| matches!(m.step, MergeStep::Committing { .. }))
}

fn backing(world: &World, inst: InstitutionId) -> Amount {
    world.bank.snapshot().reserves[&inst].backing
}

/// The only outcome `W` got for `id`.
fn outcome(world: &World, id: specie_protocol::SagaId) -> Result<(), AbortReason> {
    let outcomes = world.outcomes_to(Address::Wallet(W), id);
    assert_eq!(outcomes.len(), 1, "one outcome: {outcomes:?}");
    assert_eq!(outcomes[0].kind, SagaKind::Merge);
    outcomes[0].result
}

#[test]
fn merge_of_coins_of_three_issuers_issues_one_coin_of_the_sum_and_moves_backing() {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    let inputs = [&a[0], &b[0], &c[0]];
    let total = Amount(1_000 + 5_000 + 200);
    let before = (backing(&world, A), backing(&world, B), backing(&world, C));
    let id = saga(1);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(id, W, A, &inputs, total)),
    );
    world.run();

    assert_eq!(outcome(&world, id), Ok(()));
    let merged = world.coins_to(W);
    assert_eq!(merged.len(), 1, "exactly one merged coin");
    let coin = &merged[0];
    assert_eq!(
        (coin.body.issuer, coin.body.owner, coin.value()),
        (A, key_of(W), total)
    );
    assert_eq!(coin.body.origin_saga, id);
    for input in inputs {
        assert_eq!(
            state(&world, input),
            CoinState::Spent(id),
            "input of {}",
            input.body.issuer
        );
    }
    // Untouched coins stay active.
    assert_eq!(state(&world, &a[1]), CoinState::Active);
    assert_eq!(state(&world, &b[1]), CoinState::Active);
    assert!(matches!(step(&world, id), MergeStep::Committed { coin: c } if c == coin.id));
    // B's and C's shares of backing moved to A; A's own coin's backing stays.
    assert_eq!(
        backing(&world, A),
        before.0.checked_add(Amount(5_200)).unwrap()
    );
    assert_eq!(
        backing(&world, B),
        before.1.checked_sub(Amount(5_000)).unwrap()
    );
    assert_eq!(
        backing(&world, C),
        before.2.checked_sub(Amount(200)).unwrap()
    );
    assert!(world.notices.iter().any(|n| n.saga_id == id
        && n.source == Address::Institution(A)
        && n.outcome.result.is_ok()));
    world.assert_audit();
}

#[test]
fn merge_of_the_institutions_own_coins_moves_no_backing() {
    let Setup { mut world, a, .. } = setup();
    let before = world.bank.snapshot().reserves;
    let id = saga(2);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(id, W, A, &[&a[0], &a[1]], Amount(1_200))),
    );
    world.run();
    assert_eq!(outcome(&world, id), Ok(()));
    assert_eq!(world.coins_to(W)[0].value(), Amount(1_200));
    assert_eq!(world.bank.snapshot().reserves, before);
    world.assert_audit();
}

/// Merge requests `A` must refuse before asking any issuer, with the reason.
fn coordinator_refusals(
    a: &[Coin],
    b: &[Coin],
) -> Vec<(&'static str, SignedMergeAuthorization, AbortReason)> {
    let signed = |auth: MergeAuthorization, by: WalletId| auth.sign(&wallet_keys(by));
    let auth = |coins: &[&Coin], total: Amount| MergeAuthorization {
        saga_id: saga(10),
        wallet: W,
        wallet_key: key_of(W),
        institution: A,
        coins: coins
            .iter()
            .map(|c| CoinRef {
                id: c.id,
                issuer: c.body.issuer,
            })
            .collect(),
        total,
        expires_at_ms: NOW_MS + TTL_MS,
    };
    let fakes: Vec<Coin> = (0..9u8)
        .map(|n| Coin {
            id: CoinId([n; 32]),
            ..a[0].clone()
        })
        .collect();
    let mut cases = vec![
        (
            "empty",
            signed(auth(&[], Amount(0)), W),
            AbortReason::EmptyRequest,
        ),
        (
            "the same coin twice",
            signed(auth(&[&a[0], &a[0]], Amount(2_000)), W),
            AbortReason::DuplicateCoin,
        ),
        (
            "too many coins",
            signed(auth(&fakes.iter().collect::<Vec<_>>(), Amount(9)), W),
            AbortReason::TooManyCoins,
        ),
        (
            "a zero total",
            signed(auth(&[&a[0]], Amount(0)), W),
            AbortReason::InvalidAmount,
        ),
    ];
    let mut unknown_issuer = auth(&[&a[0]], Amount(1_000));
    unknown_issuer.coins[0].issuer = InstitutionId(7);
    cases.push((
        "an issuer that does not exist",
        signed(unknown_issuer, W),
        AbortReason::WrongIssuer,
    ));
    let mut stranger = auth(&[&a[0]], Amount(1_000));
    stranger.wallet = WalletId(9);
    stranger.wallet_key = key_of(WalletId(9));
    cases.push((
        "a wallet without an account",
        signed(stranger, WalletId(9)),
        AbortReason::UnknownWallet,
    ));
    let mut thief = auth(&[&a[0]], Amount(1_000));
    thief.wallet_key = key_of(OTHER);
    cases.push((
        "another key than the account's",
        signed(thief, OTHER),
        AbortReason::CoinNotOwned,
    ));
    let mut elsewhere = auth(&[&b[0]], Amount(5_000));
    elsewhere.institution = B;
    cases.push((
        "another merging institution",
        signed(elsewhere, W),
        AbortReason::PayeeMismatch,
    ));
    let mut late = auth(&[&a[0]], Amount(1_000));
    late.expires_at_ms = NOW_MS - 1;
    cases.push(("an expired request", signed(late, W), AbortReason::Expired));
    let mut forged = signed(auth(&[&a[0]], Amount(1_000)), W);
    forged.authorization.total = Amount(100_000);
    cases.push(("a tampered total", forged, AbortReason::BadSignature));
    cases
}

#[test]
fn requests_the_coordinator_refuses_lock_nothing_and_are_answered_the_same_way_again() {
    let count = {
        let Setup { a, b, .. } = setup();
        coordinator_refusals(&a, &b).len()
    };
    for i in 0..count {
        // The fixture is deterministic: every setup has the same coins.
        let Setup {
            mut world, a, b, ..
        } = setup();
        let (what, request, reason) = coordinator_refusals(&a, &b).swap_remove(i);
        let id = request.authorization.saga_id;
        for _ in 0..2 {
            world.send(
                Address::Wallet(W),
                Address::Institution(A),
                id,
                merge_payload(request.clone()),
            );
            world.run();
        }
        let outcomes = world.outcomes_to(Address::Wallet(W), id);
        assert_eq!(outcomes.len(), 2, "{what}: both requests answered");
        assert!(
            outcomes.iter().all(|o| o.result == Err(reason)),
            "{what}: {outcomes:?}"
        );
        assert!(world.coins_to(W).is_empty(), "{what}: nothing issued");
        assert_eq!(
            state(&world, &a[0]),
            CoinState::Active,
            "{what}: nothing locked"
        );
        assert_eq!(
            state(&world, &b[0]),
            CoinState::Active,
            "{what}: nothing locked"
        );
        assert_eq!(step(&world, id), MergeStep::Aborted { reason }, "{what}");
        world.assert_audit();
    }
}

/// Runs a merge whose lock one issuer refuses; returns the world after it went quiet.
fn refused_by_an_issuer(
    mut world: World,
    inputs: &[&Coin],
    total: Amount,
    reason: AbortReason,
) -> World {
    let id = saga(20);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(id, W, A, inputs, total)),
    );
    world.run();
    assert_eq!(outcome(&world, id), Err(reason));
    assert!(world.coins_to(W).is_empty(), "nothing issued");
    assert_eq!(step(&world, id), MergeStep::Aborted { reason });
    world
}

#[test]
fn a_coin_that_is_not_the_wallets_aborts_the_merge_and_releases_every_other_lock() {
    let Setup {
        world,
        a,
        b,
        c,
        other,
    } = setup();
    let before = world.money();
    let world = refused_by_an_issuer(
        world,
        &[&a[0], &b[0], &c[0], &other[0]],
        Amount(7_200),
        AbortReason::CoinNotOwned,
    );
    // Every coin is active again and no reserve moved.
    assert_eq!(world.money(), before);
    world.assert_audit();
}

#[test]
fn a_spent_coin_or_an_unknown_coin_aborts_the_merge() {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    // Spend b[1] first (a split at its issuer retires it).
    world.send(
        Address::Wallet(W),
        Address::Institution(B),
        saga(19),
        split_payload(saga(19), W, &b[1], Amount(400)),
    );
    world.run();
    assert_eq!(state(&world, &b[1]), CoinState::Spent(saga(19)));
    world.inbox.clear();
    let world = refused_by_an_issuer(
        world,
        &[&a[0], &b[1], &c[0]],
        Amount(2_200),
        AbortReason::CoinSpent,
    );
    assert_eq!(state(&world, &a[0]), CoinState::Active);
    assert_eq!(state(&world, &c[0]), CoinState::Active);
    world.assert_audit();

    let Setup { world, a, .. } = setup();
    let ghost = Coin {
        id: CoinId([42; 32]),
        ..a[1].clone()
    };
    let world = refused_by_an_issuer(
        world,
        &[&a[0], &ghost],
        Amount(1_200),
        AbortReason::CoinUnknown,
    );
    assert_eq!(state(&world, &a[0]), CoinState::Active);
    world.assert_audit();
}

#[test]
fn a_coin_locked_by_another_merge_is_refused_until_that_merge_ends() {
    let Setup {
        mut world, a, b, ..
    } = setup();
    let first = saga(30);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        first,
        merge_payload(merge_request(first, W, A, &[&b[0]], Amount(5_000))),
    );
    // Deliver the request and the lock, hold the lock reply back.
    let request = world.queue.pop_front().unwrap();
    world.deliver(request);
    let lock = world.queue.pop_front().unwrap();
    world.deliver(lock);
    let held_reply = world.queue.pop_front().unwrap();
    assert!(matches!(held_reply.payload, Payload::LockReply(Ok(_))));
    assert_eq!(state(&world, &b[0]), CoinState::Locked(first));

    let second = saga(31);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        second,
        merge_payload(merge_request(second, W, A, &[&a[0], &b[0]], Amount(6_000))),
    );
    world.run();
    assert_eq!(outcome(&world, second), Err(AbortReason::CoinLocked));
    assert_eq!(
        state(&world, &a[0]),
        CoinState::Active,
        "the second merge released its lock"
    );
    assert_eq!(
        state(&world, &b[0]),
        CoinState::Locked(first),
        "the first merge keeps its lock"
    );

    world.deliver(held_reply);
    world.run();
    assert_eq!(outcome(&world, first), Ok(()));
    assert_eq!(state(&world, &b[0]), CoinState::Spent(first));
    world.assert_audit();
}

#[test]
fn a_total_that_does_not_match_the_coins_aborts_after_every_lock_and_releases_them() {
    let Setup { world, a, b, .. } = setup();
    let before = world.money();
    let world = refused_by_an_issuer(
        world,
        &[&a[0], &b[0]],
        Amount(6_001),
        AbortReason::InvalidAmount,
    );
    assert_eq!(world.money(), before);
    world.assert_audit();
}

#[test]
fn a_request_reusing_the_saga_id_with_other_coins_is_a_conflict() {
    let Setup {
        mut world, a, b, ..
    } = setup();
    let id = saga(40);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(id, W, A, &[&a[0], &b[0]], Amount(6_000))),
    );
    world.run();
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(id, W, A, &[&a[1]], Amount(200))),
    );
    world.run();
    let results: Vec<_> = world
        .outcomes_to(Address::Wallet(W), id)
        .into_iter()
        .map(|o| o.result)
        .collect();
    assert_eq!(results, vec![Ok(()), Err(AbortReason::Conflict)]);
    assert_eq!(state(&world, &a[1]), CoinState::Active);
    assert_eq!(world.coins_to(W).len(), 1);
    world.assert_audit();
}

/// The happy merge of `setup`, delivered by `deliver`; returns the world.
fn merged_with(deliver: impl FnOnce(&mut World)) -> World {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    let id = saga(50);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(
            id,
            W,
            A,
            &[&a[0], &a[1], &b[0], &c[0]],
            Amount(6_400),
        )),
    );
    deliver(&mut world);
    world
}

#[test]
fn duplicated_delivery_of_every_step_ends_as_single_delivery() {
    let single = merged_with(World::run);
    let doubled = merged_with(World::run_duplicated);
    assert_eq!(doubled.money(), single.money());
    assert_eq!(step(&doubled, saga(50)), step(&single, saga(50)));
    // One merged coin, however often it was announced.
    let mut ids: Vec<CoinId> = doubled.coins_to(W).iter().map(|c| c.id).collect();
    ids.dedup();
    assert_eq!(
        ids,
        single.coins_to(W).iter().map(|c| c.id).collect::<Vec<_>>()
    );
    assert!(doubled
        .outcomes_to(Address::Wallet(W), saga(50))
        .iter()
        .all(|o| o.result.is_ok()));
    doubled.assert_audit();
}

#[test]
fn reordered_delivery_of_every_step_ends_as_single_delivery() {
    let single = merged_with(World::run);
    for seed in 0..16 {
        let shuffled = merged_with(|w| w.run_shuffled(seed));
        assert_eq!(shuffled.money(), single.money(), "seed {seed}");
        assert_eq!(
            step(&shuffled, saga(50)),
            step(&single, saga(50)),
            "seed {seed}"
        );
        shuffled.assert_audit();
    }
}

#[test]
fn a_refused_merge_delivered_out_of_order_still_releases_every_lock() {
    for seed in 0..16 {
        let Setup {
            mut world,
            a,
            b,
            other,
            ..
        } = setup();
        let before = world.money();
        let id = saga(60);
        world.send(
            Address::Wallet(W),
            Address::Institution(A),
            id,
            merge_payload(merge_request(
                id,
                W,
                A,
                &[&a[0], &b[0], &other[0]],
                Amount(7_000),
            )),
        );
        world.run_shuffled(seed);
        assert_eq!(
            outcome(&world, id),
            Err(AbortReason::CoinNotOwned),
            "seed {seed}"
        );
        assert_eq!(world.money(), before, "seed {seed}");
        world.assert_audit();
    }
}

#[test]
fn a_lost_lock_reply_times_out_before_the_decision_and_every_lock_is_released() {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    let before = world.money();
    let id = saga(70);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(
            id,
            W,
            A,
            &[&a[0], &b[0], &c[0]],
            Amount(6_200),
        )),
    );
    let request = world.queue.pop_front().unwrap();
    world.deliver(request);
    let locks: Vec<_> = world.queue.drain(..).collect();
    for lock in locks {
        world.deliver(lock);
    }
    // C's reply is lost; A hears B's and its own.
    let lost = world.drop_where(|e| e.from == Address::Institution(C));
    assert_eq!(lost, 1);
    world.run();
    assert_eq!(step(&world, id), MergeStep::Locking);
    assert_eq!(
        state(&world, &c[0]),
        CoinState::Locked(id),
        "C locked, but A never heard"
    );
    world.assert_audit();

    world.fire(A, InstitutionTimer::LockTimeout(id));
    world.run();
    assert_eq!(outcome(&world, id), Err(AbortReason::Timeout));
    assert_eq!(
        step(&world, id),
        MergeStep::Aborted {
            reason: AbortReason::Timeout
        }
    );
    assert_eq!(world.money(), before, "every lock released, nothing moved");
    // C's late reply changes nothing.
    world.send(
        Address::Institution(C),
        Address::Institution(A),
        id,
        Payload::LockReply(Ok(Amount(200))),
    );
    world.run();
    assert_eq!(
        step(&world, id),
        MergeStep::Aborted {
            reason: AbortReason::Timeout
        }
    );
    world.assert_audit();
}

#[test]
fn a_lost_lock_request_times_out_and_the_late_request_is_refused() {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    let before = world.money();
    let id = saga(71);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(
            id,
            W,
            A,
            &[&a[0], &b[0], &c[0]],
            Amount(6_200),
        )),
    );
    let request = world.queue.pop_front().unwrap();
    world.deliver(request);
    let late_lock = world
        .queue
        .iter()
        .position(|e| e.to == Address::Institution(C))
        .unwrap();
    let late_lock = world.queue.remove(late_lock).unwrap();
    world.run();
    world.fire(A, InstitutionTimer::LockTimeout(id));
    world.run();
    assert_eq!(outcome(&world, id), Err(AbortReason::Timeout));
    assert_eq!(world.money(), before);
    // The lock request arrives after the abort: C refuses it and locks nothing.
    world.deliver(late_lock);
    let reply = world.queue.back().expect("C answers").payload.clone();
    assert_eq!(reply, Payload::LockReply(Err(AbortReason::SagaAborted)));
    world.run();
    assert_eq!(state(&world, &c[0]), CoinState::Active);
    world.assert_audit();
}

#[test]
fn after_the_decision_lost_steps_are_retried_until_acknowledged_and_a_timeout_changes_nothing() {
    let Setup {
        mut world, a, b, c, ..
    } = setup();
    let id = saga(80);
    world.send(
        Address::Wallet(W),
        Address::Institution(A),
        id,
        merge_payload(merge_request(
            id,
            W,
            A,
            &[&a[0], &b[0], &c[0]],
            Amount(6_200),
        )),
    );
    // Deliver until the decision, then lose B's commit and B's backing move.
    while !decided(&world, id) {
        let e = world.queue.pop_front().expect("the merge decides");
        world.deliver(e);
    }
    let lost = world.drop_where(|e| {
        e.to == Address::Institution(B)
            || matches!(e.payload, Payload::MoveBacking { from, .. } if from == B)
    });
    assert_eq!(lost, 2);
    world.run();
    assert!(matches!(step(&world, id), MergeStep::Committing { .. }));
    assert_eq!(
        outcome(&world, id),
        Ok(()),
        "the wallet hears the decision at once"
    );
    assert_eq!(state(&world, &b[0]), CoinState::Locked(id));
    // Mid-way, the audit counts B's coin as spent and its backing as moved.
    world.assert_audit();

    world.fire(A, InstitutionTimer::LockTimeout(id));
    world.run();
    assert!(
        matches!(step(&world, id), MergeStep::Committing { .. }),
        "no abort after the decision"
    );

    world.retry(A, id, 1);
    world.run();
    assert!(matches!(step(&world, id), MergeStep::Committed { .. }));
    assert_eq!(state(&world, &b[0]), CoinState::Spent(id));
    assert_eq!(world.coins_to(W).len(), 1);
    world.assert_audit();
}

#[test]
fn a_merge_in_flight_survives_a_restart_from_the_journal_and_from_a_checkpoint() {
    for from_checkpoint in [false, true] {
        let Setup {
            mut world, a, b, c, ..
        } = setup();
        let id = saga(90);
        world.send(
            Address::Wallet(W),
            Address::Institution(A),
            id,
            merge_payload(merge_request(
                id,
                W,
                A,
                &[&a[0], &b[0], &c[0]],
                Amount(6_200),
            )),
        );
        while !decided(&world, id) {
            let e = world.queue.pop_front().expect("the merge decides");
            world.deliver(e);
        }
        // Everything after the decision is lost in the crash.
        world.queue.clear();
        world.timers.clear();
        world.restart_all(3, from_checkpoint);
        assert!(
            world.timers.contains(&(
                A,
                InstitutionTimer::Retry {
                    saga: id,
                    attempt: 0
                }
            )),
            "the merge is re-driven"
        );
        world.retry(A, id, 0);
        world.run();
        assert!(
            matches!(step(&world, id), MergeStep::Committed { .. }),
            "checkpoint: {from_checkpoint}"
        );
        for input in [&a[0], &b[0], &c[0]] {
            assert_eq!(state(&world, input), CoinState::Spent(id));
        }
        world.assert_audit();
    }
}
