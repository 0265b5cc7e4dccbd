//! The merge saga end to end (DESIGN.md §3.2), on a cluster of 16 wallets at four
//! institutions. A wallet comes to hold coins of other institutions the way it does in
//! use — it is paid offline and redeems the chains, and the coins' issuers pay it — then
//! merges everything into one coin of its own institution: exactly the sum, the inputs spent
//! at every issuer, each issuer's backing moved to the merging institution. Refusals carry
//! their reason (the wallet's own checks, and the issuers' for a request naming coins that
//! are not the wallet's); merges under duplicated and reordered delivery and a crash of the
//! coordinator end as they would on a healthy network, and the audit holds throughout.

mod sagas_support;

use sagas_support::{
    assert_reconciled, coins_of, customers_value, quiet_audit, start, DuplicateAndReorder,
};
use specie_actors::wallet::{OfflineCommand, WalletCommand};
use specie_protocol::merge::{CoinRef, MergeAuthorization, MergeMessage};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, InstitutionId, Payload, SagaId, WalletId,
};
use std::sync::Arc;
use std::time::Duration;

const SEED: u64 = 0x3e49e;
const WALLETS: u64 = 16;

fn saga(n: u128) -> SagaId {
    SagaId::from_u128(0x3e49e << 64 | n)
}

async fn merge(cluster: &specie_actors::Cluster, wallet: WalletId, id: SagaId, coins: Vec<CoinId>) {
    cluster
        .submit(wallet, WalletCommand::Merge { saga: id, coins })
        .await
        .expect("wallet reachable");
}

#[actix::test]
async fn coins_of_three_issuers_obtained_offline_merge_into_one_coin_of_the_sum() {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    let me = WalletId(0);
    let home = cluster.institution_of(me);
    // Wallets of institutions 1 and 2 pay `me` offline; `me` redeems the chains.
    for (n, payer, amount) in [(1u128, WalletId(1), 300u64), (2, WalletId(2), 500)] {
        let chain = cluster
            .offline_pay(saga(n), payer, me, Amount(amount))
            .await
            .unwrap()
            .expect("paid offline");
        let redeem = OfflineCommand::Redeem {
            saga: saga(10 + n),
            chain: chain.id(),
        };
        cluster
            .submit(me, WalletCommand::Offline(redeem))
            .await
            .unwrap();
        assert_eq!(notices.of_wallet(saga(10 + n), me).await, Ok(()));
    }
    assert!(cluster.quiesce(Duration::from_secs(10)).await);
    let before = cluster.snapshot().await.unwrap();
    let coins = &before.wallets[me.0 as usize].coins;
    let issuers: std::collections::BTreeSet<InstitutionId> =
        coins.iter().map(|c| c.body.issuer).collect();
    assert_eq!(issuers.len(), 3, "coins of three institutions: {issuers:?}");
    let total: u64 = coins.iter().map(|c| c.value().0).sum();
    assert_eq!(total, 60_800);
    let reserves = before.central_bank.reserves.clone();

    merge(&cluster, me, saga(20), coins.iter().map(|c| c.id).collect()).await;
    assert_eq!(notices.of_wallet(saga(20), me).await, Ok(()));
    quiet_audit(&cluster).await;

    let after = cluster.snapshot().await.unwrap();
    let held = &after.wallets[me.0 as usize].coins;
    assert_eq!(held.len(), 1, "one coin");
    assert_eq!(
        (
            held[0].value(),
            held[0].body.issuer,
            held[0].body.origin_saga
        ),
        (Amount(total), home, saga(20))
    );
    for c in coins {
        let state = after.institutions[c.body.issuer.0 as usize].coins[&c.id].state;
        assert_eq!(
            state,
            specie_actors::institution::CoinState::Spent(saga(20))
        );
    }
    let backing =
        |s: &std::collections::BTreeMap<InstitutionId, specie_actors::central_bank::Reserve>,
         i: u32| s[&InstitutionId(i)].backing.0;
    let moved = after.central_bank.reserves.clone();
    assert_eq!(backing(&moved, 1), backing(&reserves, 1) - 300);
    assert_eq!(backing(&moved, 2), backing(&reserves, 2) - 500);
    assert_eq!(backing(&moved, 0), backing(&reserves, 0) + 800);
    assert_eq!(customers_value(&after), customers_value(&before));
    // Each issuer and the merging institution recorded the merge, as did the wallet.
    assert_reconciled(&cluster, &["exchange", "offline_redeem", "merge"]).await;
    cluster.shutdown();
}

#[actix::test]
async fn merges_the_wallet_refuses_and_a_request_for_coins_not_the_wallets_change_nothing() {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    let (me, other) = (WalletId(4), WalletId(5));
    let mine: Vec<CoinId> = cluster
        .wallet_snapshot(me)
        .await
        .unwrap()
        .coins
        .iter()
        .map(|c| c.id)
        .collect();
    let theirs = cluster.wallet_snapshot(other).await.unwrap().coins.clone();
    let before = cluster.snapshot().await.unwrap();

    for (n, coins, reason) in [
        (30u128, vec![], AbortReason::EmptyRequest),
        (31, vec![mine[0], mine[0]], AbortReason::DuplicateCoin),
        (32, vec![mine[0], theirs[0].id], AbortReason::CoinNotOwned),
    ] {
        merge(&cluster, me, saga(n), coins).await;
        assert_eq!(notices.of_wallet(saga(n), me).await, Err(reason));
    }

    // A client that bypasses the wallet's checks: `me` signs a merge of `other`'s coins. The
    // coins' issuer refuses it, and the merging institution reports why.
    let home = cluster.institution_of(me);
    let id = saga(33);
    let signed = MergeAuthorization {
        saga_id: id,
        wallet: me,
        wallet_key: cluster.wallet_key(me),
        institution: home,
        coins: theirs
            .iter()
            .map(|c| CoinRef {
                id: c.id,
                issuer: c.body.issuer,
            })
            .collect(),
        total: Amount(theirs.iter().map(|c| c.value().0).sum()),
        expires_at_ms: u64::MAX,
    }
    .sign(cluster.blueprint().wallet_keys(me).as_ref());
    cluster.inject(Envelope {
        message_id: 0,
        saga_id: id,
        from: Address::External(7),
        to: Address::Institution(home),
        attempt: 0,
        trace: None,
        payload: Payload::Merge(MergeMessage::Request(signed)),
    });
    assert_eq!(
        notices.outcome(id, Address::Institution(home)).await,
        Err(AbortReason::CoinNotOwned)
    );
    quiet_audit(&cluster).await;
    let after = cluster.snapshot().await.unwrap();
    assert_eq!(coins_of(&after, me), coins_of(&before, me));
    assert_eq!(
        after.wallets[other.0 as usize].coins,
        before.wallets[other.0 as usize].coins
    );
    cluster.shutdown();
}

#[actix::test]
async fn merges_under_duplicated_and_reordered_delivery_and_a_coordinator_crash_end_as_on_a_healthy_network(
) {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    cluster
        .node()
        .network()
        .set_fault_hook(Arc::new(DuplicateAndReorder::new(SEED)));
    let deposited = cluster.blueprint().deposited();
    for w in 0..WALLETS {
        let coins: Vec<CoinId> = cluster
            .wallet_snapshot(WalletId(w))
            .await
            .unwrap()
            .coins
            .iter()
            .take(2)
            .map(|c| c.id)
            .collect();
        merge(&cluster, WalletId(w), saga(100 + u128::from(w)), coins).await;
        if w == 3 {
            cluster.crash(Address::Institution(cluster.institution_of(WalletId(w))));
        }
    }
    for w in 0..WALLETS {
        assert_eq!(
            notices
                .of_wallet(saga(100 + u128::from(w)), WalletId(w))
                .await,
            Ok(()),
            "wallet {w}"
        );
    }
    cluster
        .node()
        .network()
        .set_fault_hook(Arc::new(specie_runtime::NoFaults));
    quiet_audit(&cluster).await;
    let s = cluster.snapshot().await.unwrap();
    for w in &s.wallets {
        let mut values: Vec<u64> = w.coins.iter().map(|c| c.value().0).collect();
        values.sort_unstable();
        assert_eq!(values, vec![20_000, 40_000], "{}", w.id);
    }
    assert_eq!(customers_value(&s), u128::from(deposited.0));
    // Duplicated and reordered steps and the crash recorded every committed step once.
    assert_reconciled(&cluster, &["exchange", "merge"]).await;
    cluster.shutdown();
}
