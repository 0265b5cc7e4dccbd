//! Wallet update end to end on a real cluster: wallets ask their institution (the trusted
//! platform) whether they need an update, withdraw their coins to their accounts, upload their
//! offline records, apply the new parameters and take coins out again — many at once, and one
//! interrupted right after its withdraw (its upload lost, the wallet crashed) and retried. No
//! value may be lost or doubled: every account and wallet must match what the outcomes say, and
//! the audit must hold. The updated parameters then decide what two wallets agree on before a
//! proximity payment.

mod common;

use bytes::Bytes;
use specie_actors::wallet::{NegotiateCommand, UpdateCommand, WalletCommand};
use specie_actors::Cluster;
use specie_protocol::update::{UpdateMessage, WalletParams};
use specie_protocol::{AbortReason, Address, Amount, Envelope, Payload, SagaId, WalletId};
use specie_runtime::{Delivery, FaultHook, NoFaults, Notice};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const SEED: u64 = 0x5eed_0da7;
const WALLETS: u64 = 24;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);

async fn outcome(
    notices: &mut UnboundedReceiver<Notice>,
    saga: SagaId,
    source: Address,
) -> Result<(), AbortReason> {
    loop {
        let n = tokio::time::timeout(NOTICE_TIMEOUT, notices.recv())
            .await
            .unwrap_or_else(|_| panic!("no notice of {saga} from {source}"))
            .expect("notices flow");
        if n.saga_id == saga && n.source == source {
            return n.outcome.result;
        }
    }
}

async fn quiet_audit(cluster: &Cluster) {
    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the cluster goes quiet"
    );
    let report = cluster.audit().await.expect("audit");
    assert!(report.ok(), "audit: {report:#?}");
}

/// (coins held, account balance, parameters version) of a wallet.
async fn books(cluster: &Cluster, w: WalletId) -> (u64, u64, u32) {
    let s = cluster.snapshot().await.expect("snapshot");
    let wallet = &s.wallets[w.0 as usize];
    let account = common::account_balances(&s)[&w];
    (
        wallet.coins.iter().map(|c| c.value().0).sum(),
        account,
        wallet.params_version,
    )
}

/// Drops every offline upload: the update stops right after its withdraw.
struct DropUploads;

impl FaultHook for DropUploads {
    fn on_send(&self, from: Address, to: Address, bytes: Bytes, out: &mut Vec<Delivery>) {
        let upload = Envelope::decode(&bytes).is_ok_and(|e| {
            matches!(
                e.payload,
                Payload::WalletUpdate(UpdateMessage::Upload { .. })
            )
        });
        if !upload {
            NoFaults.on_send(from, to, bytes, out);
        }
    }
}

#[actix::test]
async fn updates_move_coins_to_the_account_and_back_without_losing_or_doubling_value() {
    let cluster = Cluster::start(common::config(WALLETS), SEED)
        .await
        .expect("cluster starts");
    let mut notices = cluster.notices();
    let g = cluster.config().genesis.clone();
    let latest = WalletParams::platform_initial().version;

    // Every other wallet updates at once.
    let updating: Vec<WalletId> = (0..WALLETS).step_by(2).map(WalletId).collect();
    for w in &updating {
        let saga = SagaId::from_u128(u128::from(w.0) + 1);
        cluster
            .submit(*w, WalletCommand::Update(UpdateCommand { saga }))
            .await
            .unwrap();
    }
    for w in &updating {
        let saga = SagaId::from_u128(u128::from(w.0) + 1);
        assert_eq!(
            outcome(&mut notices, saga, Address::Wallet(*w)).await,
            Ok(())
        );
    }
    quiet_audit(&cluster).await;
    for w in &updating {
        assert_eq!(
            books(&cluster, *w).await,
            (0, g.account_balance_fen, latest),
            "{w}"
        );
    }
    assert_eq!(
        books(&cluster, WalletId(1)).await,
        (g.exchange_fen, g.account_balance_fen - g.exchange_fen, 1)
    );

    // Coins out again, and a second update finds nothing to do.
    let w = updating[0];
    let saga = SagaId::from_u128(1_000);
    cluster
        .submit(
            w,
            WalletCommand::Exchange {
                saga,
                amount: Amount(25_000),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        outcome(&mut notices, saga, Address::Wallet(w)).await,
        Ok(())
    );
    let saga = SagaId::from_u128(1_001);
    cluster
        .submit(w, WalletCommand::Update(UpdateCommand { saga }))
        .await
        .unwrap();
    assert_eq!(
        outcome(&mut notices, saga, Address::Wallet(w)).await,
        Ok(())
    );
    assert_eq!(
        books(&cluster, w).await,
        (25_000, g.account_balance_fen - 25_000, latest)
    );
    quiet_audit(&cluster).await;
    common::assert_reconciled(&cluster, &["exchange", "withdraw"]).await;
    cluster.shutdown();
}

#[actix::test]
async fn an_update_interrupted_after_its_withdraw_and_retried_withdraws_exactly_once() {
    let mut config = common::config(WALLETS);
    config.limits.outcome_timeout_ms = 300;
    let cluster = Cluster::start(config, SEED + 1)
        .await
        .expect("cluster starts");
    let mut notices = cluster.notices();
    let g = cluster.config().genesis.clone();
    let w = WalletId(5);
    let saga = SagaId::from_u128(77);

    cluster
        .node()
        .network()
        .set_fault_hook(Arc::new(DropUploads));
    cluster
        .submit(w, WalletCommand::Update(UpdateCommand { saga }))
        .await
        .unwrap();
    // The withdraw goes through; the upload (and every chase of it) is lost.
    let deadline = tokio::time::Instant::now() + NOTICE_TIMEOUT;
    loop {
        let (coins, account, _) = books(&cluster, w).await;
        if coins == 0 && account == g.account_balance_fen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the withdraw never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The wallet crashes and rebuilds itself from its journal; the network heals.
    cluster.crash(Address::Wallet(w));
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.node().network().set_fault_hook(Arc::new(NoFaults));
    // The user retries the same update.
    cluster
        .submit(w, WalletCommand::Update(UpdateCommand { saga }))
        .await
        .unwrap();
    assert_eq!(
        outcome(&mut notices, saga, Address::Wallet(w)).await,
        Ok(())
    );
    quiet_audit(&cluster).await;
    assert_eq!(
        books(&cluster, w).await,
        (
            0,
            g.account_balance_fen,
            WalletParams::platform_initial().version
        )
    );
    // The backing followed: the institution's outstanding coins still equal its backing.
    let s = cluster.snapshot().await.unwrap();
    let inst = cluster.institution_of(w);
    let withdrawals = &s.institutions[inst.0 as usize].withdrawals;
    assert_eq!(withdrawals.len(), 1, "one withdraw");
    assert_eq!(withdrawals[&saga].amount.0, g.exchange_fen);
    // The withdraw retried after its reply was lost is recorded once on each side.
    common::assert_reconciled(&cluster, &["withdraw"]).await;
    cluster.shutdown();
}

#[actix::test]
async fn updated_parameters_decide_what_two_wallets_agree_on() {
    let cluster = Cluster::start(common::config(WALLETS), SEED + 2)
        .await
        .expect("cluster starts");
    let mut notices = cluster.notices();
    let (a, b) = (WalletId(2), WalletId(3));
    let negotiate = |saga: u128, amount: u64, offline: bool| {
        WalletCommand::Negotiate(NegotiateCommand {
            saga: SagaId::from_u128(saga),
            peer: b,
            amount: Amount(amount),
            offline,
            offer: None,
        })
    };
    // Shipped parameters: offline up to 500.00.
    cluster.submit(a, negotiate(1, 60_000, true)).await.unwrap();
    assert_eq!(
        outcome(&mut notices, SagaId::from_u128(1), Address::Wallet(a)).await,
        Err(AbortReason::AmountAboveMax)
    );
    // Both update to the platform's parameters (offline up to 1,000.00): now they agree.
    for (n, w) in [(10, a), (11, b)] {
        let saga = SagaId::from_u128(n);
        cluster
            .submit(w, WalletCommand::Update(UpdateCommand { saga }))
            .await
            .unwrap();
        assert_eq!(
            outcome(&mut notices, saga, Address::Wallet(w)).await,
            Ok(())
        );
    }
    cluster.submit(a, negotiate(2, 60_000, true)).await.unwrap();
    assert_eq!(
        outcome(&mut notices, SagaId::from_u128(2), Address::Wallet(a)).await,
        Ok(())
    );
    quiet_audit(&cluster).await;
    cluster.shutdown();
}
