//! Escrow pre-payment end to end on a real cluster: payers freeze coins in escrow contracts for
//! merchants at their own and at other institutions; merchants claim (partial claims, claims
//! above what remains, a second claim with a used number); payers release; short escrows
//! expire while claims race their expiry; an escrow actor crashes with work in flight. Every
//! step's outcome must carry exactly its reason, each claim must resolve once, claims must
//! never sum above a cap, and once the cluster is quiet the audit (escrow invariant included)
//! must hold, with every wallet's coins and account matching what the outcomes say.

mod common;

use specie_actors::escrow::EscrowStatus;
use specie_actors::wallet::{EscrowCommand, WalletCommand};
use specie_actors::Cluster;
use specie_protocol::escrow::contract_id;
use specie_protocol::{AbortReason, Address, Amount, SagaId, SagaKind, WalletId};
use specie_runtime::Notice;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const SEED: u64 = 0x5eed_e5c0;
const WALLETS: u64 = 40;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);

/// Submits commands and waits for their notices.
struct Client<'a> {
    cluster: &'a Cluster,
    notices: UnboundedReceiver<Notice>,
    seen: HashMap<(SagaId, Address), Result<(), AbortReason>>,
    next: u128,
}

impl<'a> Client<'a> {
    fn new(cluster: &'a Cluster) -> Client<'a> {
        Client {
            cluster,
            notices: cluster.notices(),
            seen: HashMap::new(),
            next: u128::from(SEED) << 32,
        }
    }

    fn saga(&mut self) -> SagaId {
        self.next += 1;
        SagaId::from_u128(self.next)
    }

    async fn submit(&mut self, w: WalletId, command: EscrowCommand) {
        self.cluster
            .submit(w, WalletCommand::Escrow(command))
            .await
            .expect("wallet reachable");
    }

    /// Waits for the notice of `saga` from `source`.
    async fn outcome(&mut self, saga: SagaId, source: Address) -> Result<(), AbortReason> {
        loop {
            if let Some(r) = self.seen.get(&(saga, source)) {
                return *r;
            }
            let n = tokio::time::timeout(NOTICE_TIMEOUT, self.notices.recv())
                .await
                .unwrap_or_else(|_| panic!("no notice of {saga} from {source}"))
                .expect("notices flow");
            let previous = self.seen.insert((n.saga_id, n.source), n.outcome.result);
            assert!(
                previous.is_none(),
                "{} published twice for {}",
                n.source,
                n.saga_id
            );
        }
    }

    async fn deposit(
        &mut self,
        payer: WalletId,
        merchant: WalletId,
        serial: u64,
        cap: u64,
        ttl_ms: u64,
    ) -> (u64, Result<(), AbortReason>) {
        let contract = contract_id(self.cluster.institution_of(payer), serial);
        let saga = self.saga();
        let expires_at_ms = self.cluster.node().clock().now_ms() + ttl_ms;
        let command = EscrowCommand::Deposit {
            saga,
            contract,
            merchant,
            merchant_institution: self.cluster.institution_of(merchant),
            cap: Amount(cap),
            expires_at_ms,
        };
        self.submit(payer, command).await;
        (contract, self.outcome(saga, Address::Wallet(payer)).await)
    }

    async fn start_claim(
        &mut self,
        merchant: WalletId,
        contract: u64,
        claim_id: u64,
        amount: u64,
    ) -> SagaId {
        let saga = self.saga();
        let command = EscrowCommand::Claim {
            saga,
            contract,
            claim_id,
            amount: Amount(amount),
        };
        self.submit(merchant, command).await;
        saga
    }

    async fn claim(
        &mut self,
        merchant: WalletId,
        contract: u64,
        claim_id: u64,
        amount: u64,
    ) -> Result<(), AbortReason> {
        let saga = self.start_claim(merchant, contract, claim_id, amount).await;
        self.outcome(saga, Address::Wallet(merchant)).await
    }

    async fn release(&mut self, payer: WalletId, contract: u64) -> Result<(), AbortReason> {
        let saga = self.saga();
        self.submit(payer, EscrowCommand::Release { saga, contract })
            .await;
        self.outcome(saga, Address::Wallet(payer)).await
    }

    /// Waits until escrow `contract` published its closure.
    async fn closed(&mut self, contract: u64, kind: SagaKind) {
        let saga = specie_actors::escrow::closure_saga(
            contract,
            match kind {
                SagaKind::EscrowExpiry => specie_actors::escrow::Closure::Expired,
                _ => specie_actors::escrow::Closure::FullyClaimed,
            },
        );
        assert_eq!(self.outcome(saga, Address::Escrow(contract)).await, Ok(()));
    }
}

async fn quiet_audit(cluster: &Cluster) {
    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the cluster goes quiet"
    );
    let report = cluster.audit().await.expect("audit");
    assert!(report.ok(), "audit: {report:#?}");
    assert!(report.escrow.is_ok());
}

async fn coins_of(cluster: &Cluster, w: WalletId) -> u64 {
    let s = cluster.snapshot().await.expect("snapshot");
    s.wallets[w.0 as usize]
        .coins
        .iter()
        .map(|c| c.value().0)
        .sum()
}

#[actix::test]
async fn deposits_claims_releases_and_expiries_keep_the_books() {
    let cluster = Cluster::start(common::config(WALLETS), SEED)
        .await
        .expect("cluster starts");
    let mut c = Client::new(&cluster);
    let exchanged = cluster.config().genesis.exchange_fen;
    // Wallet w banks at w % 4: payer 0 and merchant 4 share institution 0, merchant 1 is at 1.
    let (payer, local, remote) = (WalletId(0), WalletId(4), WalletId(1));

    // A deposit for a merchant at another institution, claimed in part, then released.
    let (contract, deposited) = c.deposit(payer, remote, 1, 15_000, 60_000).await;
    assert_eq!(deposited, Ok(()));
    let frozen = exchanged - coins_of(&cluster, payer).await;
    assert!(
        frozen >= 15_000,
        "the frozen coins cover the cap ({frozen})"
    );
    quiet_audit(&cluster).await;
    assert_eq!(c.claim(remote, contract, 1, 5_000).await, Ok(()));
    assert_eq!(
        c.claim(remote, contract, 1, 5_000).await,
        Err(AbortReason::AlreadyClaimed),
        "a used claim number"
    );
    assert_eq!(
        c.claim(remote, contract, 2, 10_001).await,
        Err(AbortReason::CapExceeded),
        "above what remains"
    );
    assert_eq!(
        c.claim(local, contract, 3, 1).await,
        Err(AbortReason::WrongParty),
        "not the merchant"
    );
    assert_eq!(
        c.release(remote, contract).await,
        Err(AbortReason::WrongParty),
        "only the payer releases"
    );
    assert_eq!(c.claim(remote, contract, 2, 4_000).await, Ok(()));
    quiet_audit(&cluster).await;
    assert_eq!(c.release(payer, contract).await, Ok(()));
    assert_eq!(
        c.claim(remote, contract, 4, 1).await,
        Err(AbortReason::AlreadyReleased)
    );
    assert_eq!(
        c.release(payer, contract).await,
        Err(AbortReason::AlreadyReleased)
    );
    quiet_audit(&cluster).await;
    assert_eq!(
        coins_of(&cluster, payer).await,
        exchanged - 9_000,
        "paid 90.00, the rest refunded"
    );
    assert_eq!(coins_of(&cluster, remote).await, exchanged + 9_000);

    // A local merchant claims the whole cap: the escrow closes itself and refunds the rest.
    let (contract, deposited) = c.deposit(WalletId(8), local, 2, 7_000, 60_000).await;
    assert_eq!(deposited, Ok(()));
    assert_eq!(c.claim(local, contract, 1, 7_000).await, Ok(()));
    c.closed(contract, SagaKind::EscrowRelease).await;
    assert_eq!(
        c.claim(local, contract, 2, 1).await,
        Err(AbortReason::AlreadyClaimed)
    );
    quiet_audit(&cluster).await;
    assert_eq!(coins_of(&cluster, WalletId(8)).await, exchanged - 7_000);

    // Refused deposits: above the payer's coins, a contract hosted elsewhere.
    let (_, refused) = c
        .deposit(WalletId(12), remote, 3, exchanged + 1, 60_000)
        .await;
    assert_eq!(refused, Err(AbortReason::InsufficientFunds));
    let saga = c.saga();
    let elsewhere = EscrowCommand::Deposit {
        saga,
        contract: contract_id(cluster.institution_of(remote), 4),
        merchant: remote,
        merchant_institution: cluster.institution_of(remote),
        cap: Amount(100),
        expires_at_ms: cluster.node().clock().now_ms() + 60_000,
    };
    c.submit(WalletId(12), elsewhere).await;
    assert_eq!(
        c.outcome(saga, Address::Wallet(WalletId(12))).await,
        Err(AbortReason::WrongIssuer)
    );

    // An escrow that nobody releases expires, and the rest comes back.
    let (contract, deposited) = c.deposit(WalletId(16), remote, 5, 3_000, 1_000).await;
    assert_eq!(deposited, Ok(()));
    assert_eq!(c.claim(remote, contract, 1, 1_000).await, Ok(()));
    c.closed(contract, SagaKind::EscrowExpiry).await;
    assert_eq!(
        c.claim(remote, contract, 2, 1).await,
        Err(AbortReason::Expired)
    );
    quiet_audit(&cluster).await;
    assert_eq!(coins_of(&cluster, WalletId(16)).await, exchanged - 1_000);
    // Claims at the issuer and at merchants' institutions, refunds: every one on both sides.
    common::assert_reconciled(&cluster, &["exchange", "escrow_claim", "escrow_refund"]).await;
    cluster.shutdown();
}

#[actix::test]
async fn claims_racing_expiry_resolve_once_and_never_exceed_the_cap() {
    let cluster = Cluster::start(common::config(WALLETS), SEED + 1)
        .await
        .expect("cluster starts");
    let mut c = Client::new(&cluster);
    const CAP: u64 = 9_000;
    // Ten escrows expiring in 800 ms; their merchants keep claiming 1,000 (with a second
    // claim of each number) until the escrow refuses.
    let mut contracts = Vec::new();
    for i in 0..10u64 {
        let payer = WalletId(i * 2);
        let merchant = WalletId(i * 2 + 1);
        let (contract, deposited) = c.deposit(payer, merchant, 100 + i, CAP, 800).await;
        assert_eq!(deposited, Ok(()));
        contracts.push((contract, merchant));
    }
    let mut claims: Vec<(u64, SagaId, WalletId, bool)> = Vec::new();
    for round in 0..12u64 {
        for (contract, merchant) in &contracts {
            let first = c.start_claim(*merchant, *contract, round, 1_000).await;
            let again = c.start_claim(*merchant, *contract, round, 1_000).await;
            claims.push((*contract, first, *merchant, false));
            claims.push((*contract, again, *merchant, true));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut paid: HashMap<u64, u64> = HashMap::new();
    for (contract, saga, merchant, repeat) in claims {
        match c.outcome(saga, Address::Wallet(merchant)).await {
            Ok(()) => {
                assert!(!repeat, "a second claim with a used number was paid");
                *paid.entry(contract).or_default() += 1_000;
            }
            Err(AbortReason::AlreadyClaimed | AbortReason::Expired | AbortReason::CapExceeded) => {}
            Err(other) => panic!("claim {saga} of escrow {contract}: {other}"),
        }
    }
    for (contract, _) in &contracts {
        c.closed(*contract, SagaKind::EscrowExpiry).await;
    }
    quiet_audit(&cluster).await;
    let snapshot = cluster.snapshot().await.expect("snapshot");
    for (contract, _) in &contracts {
        let e = snapshot
            .escrows
            .iter()
            .find(|e| e.id == *contract)
            .expect("escrow exists");
        assert_eq!(
            e.status,
            EscrowStatus::Closed(specie_actors::escrow::Closure::Expired)
        );
        assert_eq!(
            e.claimed.0,
            paid.get(contract).copied().unwrap_or(0),
            "claims paid = claims decided"
        );
        assert!(e.claimed.0 <= CAP);
        assert_eq!(e.refunded.0, e.deposit.0 - e.claimed.0);
    }
    cluster.shutdown();
}

#[actix::test]
async fn an_escrow_crashed_with_claims_in_flight_finishes_them_once() {
    let mut config = common::config(WALLETS);
    config.limits.retry_interval_ms = 50;
    let cluster = Cluster::start(config, SEED + 2)
        .await
        .expect("cluster starts");
    let mut c = Client::new(&cluster);
    let (payer, merchant) = (WalletId(3), WalletId(6));
    let (contract, deposited) = c.deposit(payer, merchant, 9, 20_000, 60_000).await;
    assert_eq!(deposited, Ok(()));
    let mut sagas = Vec::new();
    for claim_id in 0..10 {
        sagas.push(c.start_claim(merchant, contract, claim_id, 1_500).await);
        if claim_id % 3 == 0 {
            cluster.crash(Address::Escrow(contract));
        }
    }
    for saga in sagas {
        assert_eq!(c.outcome(saga, Address::Wallet(merchant)).await, Ok(()));
    }
    assert_eq!(c.release(payer, contract).await, Ok(()));
    quiet_audit(&cluster).await;
    let exchanged = cluster.config().genesis.exchange_fen;
    assert_eq!(
        coins_of(&cluster, merchant).await,
        exchanged + 15_000,
        "each claim paid once"
    );
    assert_eq!(coins_of(&cluster, payer).await, exchanged - 15_000);
    assert!(cluster.node().escalations().is_empty());
    common::assert_reconciled(&cluster, &["escrow_claim", "escrow_refund"]).await;
    cluster.shutdown();
}
