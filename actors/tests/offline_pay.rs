//! Offline payment with trust chains end to end (DESIGN.md §3.3), on a cluster of 16 wallets
//! at four institutions: a payer splits a coin and hands the payee its trust chain with no
//! network; the payee redeems it through its own institution at the coin's issuer, which
//! pays it with a new coin; the payer syncs (uploads its records, redeems its remainder).
//! Two offline spends of one coin: exactly one is honoured, the other is detected,
//! attributed to the signing wallet and creates no value. The offline limit bounds what a
//! wallet pays before it syncs. Through all of it, and under duplicated and reordered
//! delivery and crashes, the audit holds and the customers' value never changes.

mod sagas_support;

use sagas_support::{
    assert_reconciled, coins_of, customers_value, quiet_audit, start, DuplicateAndReorder,
};
use specie_actors::wallet::{OfflineCommand, WalletCommand};
use specie_actors::Cluster;
use specie_protocol::offline::TrustChain;
use specie_protocol::{AbortReason, Address, Amount, InstitutionId, SagaId, WalletId};
use std::sync::Arc;

const SEED: u64 = 0x000f_f11e;
const WALLETS: u64 = 16;

fn saga(n: u128) -> SagaId {
    SagaId::from_u128(0x0ff1_1e00 << 32 | n)
}

async fn redeem(cluster: &Cluster, wallet: WalletId, id: SagaId, chain: &TrustChain) {
    let command = WalletCommand::Offline(OfflineCommand::Redeem {
        saga: id,
        chain: chain.id(),
    });
    cluster
        .submit(wallet, command)
        .await
        .expect("wallet reachable");
}

async fn sync(cluster: &Cluster, wallet: WalletId, id: SagaId) {
    cluster
        .submit(
            wallet,
            WalletCommand::Offline(OfflineCommand::Sync { saga: id }),
        )
        .await
        .expect("wallet reachable");
}

#[actix::test]
async fn an_offline_payment_is_handed_over_without_network_and_redeemed_at_the_coins_issuer() {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    let (payer, payee) = (WalletId(0), WalletId(1));
    assert_ne!(cluster.institution_of(payer), cluster.institution_of(payee));
    let deposited = customers_value(&cluster.snapshot().await.unwrap());
    let sent_before = cluster.node().network().stats().sent;

    let chain = cluster
        .offline_pay(saga(1), payer, payee, Amount(1_234))
        .await
        .unwrap()
        .expect("paid offline");
    assert_eq!(
        cluster.node().network().stats().sent,
        sent_before,
        "the hand-over used no network"
    );
    assert_eq!(
        (chain.value(), chain.holder(), chain.coin.body.issuer),
        (Amount(1_234), Some(payee), InstitutionId(0))
    );
    let s = cluster.snapshot().await.unwrap();
    assert_eq!(
        s.wallets[payee.0 as usize].offline.chains,
        vec![chain.clone()]
    );
    assert!(
        s.wallets[payer.0 as usize].offline.outbox.is_empty(),
        "handed over"
    );
    assert_eq!(s.wallets[payer.0 as usize].offline.unsynced, Amount(1_234));
    assert_eq!(customers_value(&s), deposited);
    // Value in flight offline: the audit counts it.
    quiet_audit(&cluster).await;

    redeem(&cluster, payee, saga(2), &chain).await;
    assert_eq!(notices.of_wallet(saga(2), payee).await, Ok(()));
    sync(&cluster, payer, saga(3)).await;
    assert_eq!(notices.of_wallet(saga(3), payer).await, Ok(()));
    quiet_audit(&cluster).await;

    let s = cluster.snapshot().await.unwrap();
    let got: Vec<_> = s.wallets[payee.0 as usize]
        .coins
        .iter()
        .filter(|c| c.body.issuer == InstitutionId(0))
        .collect();
    assert_eq!(
        got.len(),
        1,
        "the payee holds a coin of the payer's institution"
    );
    assert_eq!(got[0].value(), Amount(1_234));
    assert_eq!(coins_of(&s, payer), 60_000 - 1_234);
    assert_eq!(coins_of(&s, payee), 60_000 + 1_234);
    let p = &s.wallets[payer.0 as usize].offline;
    assert_eq!((p.unsynced, p.chains.len()), (Amount::ZERO, 0));
    let issuer = &s.institutions[0].sagas;
    assert_eq!(
        issuer.synced[&payer].paid,
        Amount(1_234),
        "the payer's records are on record"
    );
    let ledger = &issuer.ledgers[&chain.coin.id];
    assert_eq!(
        (ledger.paid, ledger.outstanding),
        (chain.coin.value(), Amount::ZERO)
    );
    assert_eq!(customers_value(&s), deposited);
    cluster.shutdown();
}

#[actix::test]
async fn two_offline_spends_of_one_coin_exactly_one_is_honoured_the_other_detected_and_attributed()
{
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    let (cheat, first, second) = (WalletId(4), WalletId(5), WalletId(6));
    let issuer = cluster.institution_of(cheat);
    let deposited = cluster.blueprint().deposited();

    let honest = cluster
        .offline_pay(saga(10), cheat, first, Amount(5_000))
        .await
        .unwrap()
        .expect("paid");
    let coin = honest.coin.clone();
    // The cheat signs the whole coin away a second time.
    let double = cluster
        .offline_double_spend(saga(11), cheat, second, coin.value(), coin.id)
        .await
        .unwrap()
        .expect("signed again");
    assert_eq!(double.coin.id, coin.id);
    // Offline, the second payee cannot tell: it took a chain whose signatures all verify.
    quiet_audit(&cluster).await;

    // Both payees redeem at once. A claim that finds the other one undecided is asked to
    // wait (`coin_locked`): its wallet keeps the chain and asks again.
    redeem(&cluster, first, saga(12), &honest).await;
    redeem(&cluster, second, saga(13), &double).await;
    let mut results = [
        (saga(12), notices.of_wallet(saga(12), first).await),
        (saga(13), notices.of_wallet(saga(13), second).await),
    ];
    for (i, (wallet, chain)) in [(first, &honest), (second, &double)]
        .into_iter()
        .enumerate()
    {
        let mut retry = 0;
        while results[i].1 == Err(AbortReason::CoinLocked) {
            retry += 1;
            assert!(retry < 50, "{wallet} is asked to wait forever");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let id = saga(1_000 * (i as u128 + 1) + retry);
            redeem(&cluster, wallet, id, chain).await;
            results[i] = (id, notices.of_wallet(id, wallet).await);
        }
    }
    let honoured = results.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(honoured, 1, "exactly one spend is honoured: {results:?}");
    assert!(
        results
            .iter()
            .any(|(_, r)| *r == Err(AbortReason::OfflineDoubleSpend)),
        "{results:?}"
    );
    let (loser, loser_saga) = if results[0].1.is_ok() {
        (second, results[1].0)
    } else {
        (first, results[0].0)
    };

    // The cheat syncs: its remainder is honoured only if the smaller spend won.
    sync(&cluster, cheat, saga(14)).await;
    assert_eq!(notices.of_wallet(saga(14), cheat).await, Ok(()));
    quiet_audit(&cluster).await;

    let s = cluster.snapshot().await.unwrap();
    let l = &s.wallets[loser.0 as usize].offline;
    assert_eq!(l.double_spends_detected, 1);
    let report = l.double_spend_reports.last().expect("the attribution");
    assert_eq!(
        (report.signer, report.signer_key, report.coin_id),
        (cheat, cluster.wallet_key(cheat), coin.id)
    );
    let at_issuer = &s.institutions[issuer.0 as usize].sagas;
    assert!(at_issuer.double_spends_detected >= 1);
    let r = &s.institutions[cluster.institution_of(loser).0 as usize]
        .sagas
        .redemptions[&loser_saga];
    assert_eq!(r.double_spend.as_ref().map(|d| d.signer), Some(cheat));
    // Never more than the coin: the ledger paid exactly its value, and nothing was created.
    let ledger = &at_issuer.ledgers[&coin.id];
    assert_eq!(
        (ledger.paid, ledger.outstanding),
        (coin.value(), Amount::ZERO)
    );
    assert_eq!(
        customers_value(&s),
        u128::from(deposited.0),
        "the wallets' own view adds up too"
    );
    cluster.shutdown();
}

#[actix::test]
async fn the_offline_limit_refuses_payments_beyond_it_until_the_wallet_syncs() {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    let (payer, payee) = (WalletId(8), WalletId(9));
    let limit = cluster.wallet_snapshot(payer).await.unwrap().offline.limit;
    assert_eq!(limit, Amount(cluster.config().limits.offline_limit_fen));
    let mut paid = 0;
    let mut n = 20;
    loop {
        n += 1;
        match cluster
            .offline_pay(saga(n), payer, payee, Amount(20_000))
            .await
            .unwrap()
        {
            Ok(_) => paid += 20_000,
            Err(reason) => {
                assert_eq!(reason, AbortReason::OfflineLimit);
                break;
            }
        }
    }
    assert!(
        paid <= limit.0 && paid + 20_000 > limit.0,
        "paid {paid} offline with a limit of {}",
        limit.0
    );
    sync(&cluster, payer, saga(40)).await;
    assert_eq!(notices.of_wallet(saga(40), payer).await, Ok(()));
    assert_eq!(
        cluster
            .wallet_snapshot(payer)
            .await
            .unwrap()
            .offline
            .unsynced,
        Amount::ZERO
    );
    let after = cluster
        .offline_pay(saga(41), payer, payee, Amount(10_000))
        .await
        .unwrap();
    assert!(after.is_ok(), "the sync freed the limit: {after:?}");
    quiet_audit(&cluster).await;
    cluster.shutdown();
}

/// Wallet `i`'s payee in the fault test: one of wallets 8..16, at another institution.
fn payee_of(i: u64) -> WalletId {
    WalletId(8 + (i + 1) % 8)
}

#[actix::test]
async fn offline_payments_survive_duplicated_and_reordered_delivery_and_crashes() {
    let (cluster, mut notices) = start(WALLETS, SEED).await;
    cluster
        .node()
        .network()
        .set_fault_hook(Arc::new(DuplicateAndReorder::new(SEED)));
    let deposited = cluster.blueprint().deposited();
    let mut redemptions = Vec::new();
    for i in 0..8u64 {
        let (payer, payee) = (WalletId(i), payee_of(i));
        assert_ne!(cluster.institution_of(payer), cluster.institution_of(payee));
        let chain = cluster
            .offline_pay(
                saga(100 + u128::from(i)),
                payer,
                payee,
                Amount(100 + i * 77),
            )
            .await
            .unwrap()
            .expect("paid");
        if i == 3 {
            // The payee crashes holding the chain; its journal keeps it.
            cluster.crash(Address::Wallet(payee));
        }
        redeem(&cluster, payee, saga(200 + u128::from(i)), &chain).await;
        if i == 5 {
            // The coin's issuer crashes mid-redemption; retries finish it.
            cluster.crash(Address::Institution(chain.coin.body.issuer));
        }
        sync(&cluster, payer, saga(300 + u128::from(i))).await;
        redemptions.push((payee, saga(200 + u128::from(i))));
        redemptions.push((payer, saga(300 + u128::from(i))));
    }
    for (wallet, id) in redemptions {
        assert_eq!(notices.of_wallet(id, wallet).await, Ok(()), "{wallet} {id}");
    }
    cluster
        .node()
        .network()
        .set_fault_hook(Arc::new(specie_runtime::NoFaults));
    quiet_audit(&cluster).await;
    let s = cluster.snapshot().await.unwrap();
    assert_eq!(customers_value(&s), u128::from(deposited.0));
    for i in 0..8u64 {
        assert_eq!(
            coins_of(&s, payee_of(i)),
            60_000 + 100 + i * 77,
            "payee of {i}"
        );
        assert_eq!(
            coins_of(&s, WalletId(i)),
            60_000 - 100 - i * 77,
            "payer {i}"
        );
    }
    assert!(cluster.node().escalations().is_empty());
    assert_reconciled(&cluster, &["exchange", "offline_redeem"]).await;
    cluster.shutdown();
}
