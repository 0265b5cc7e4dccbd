//! Shared by the merge and offline integration tests: a small cluster from the embedded
//! config, a notice stream that waits for one saga's outcome at one actor, and a network
//! fault hook that duplicates and reorders envelopes.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::{Cluster, ClusterSnapshot};
use specie_protocol::{AbortReason, Address, SagaId, WalletId};
use specie_runtime::config::Config;
use specie_runtime::{Delivery, FaultHook, Notice};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a test waits for one outcome.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(20);

/// The embedded default config with `wallets` wallets.
pub fn config(wallets: u64) -> Config {
    let text = include_str!("../../../config/local.toml");
    let mut config = Config::parse(text, "config/local.toml").expect("the default config is valid");
    config.cluster.wallets = wallets;
    config
}

/// Starts a cluster of `wallets` wallets and subscribes to its notices.
pub async fn start(wallets: u64, seed: u64) -> (Cluster, Notices) {
    start_with(config(wallets), seed).await
}

/// Starts a cluster of `config` and subscribes to its notices.
pub async fn start_with(config: Config, seed: u64) -> (Cluster, Notices) {
    let cluster = Cluster::start(config, seed).await.expect("cluster starts");
    let notices = Notices {
        rx: cluster.notices(),
        seen: Vec::new(),
    };
    (cluster, notices)
}

/// The node's notices, kept so that a test can wait for any of them in any order.
pub struct Notices {
    rx: UnboundedReceiver<Notice>,
    seen: Vec<Notice>,
}

impl Notices {
    /// Waits for `source`'s outcome of `saga`.
    pub async fn outcome(&mut self, saga: SagaId, source: Address) -> Result<(), AbortReason> {
        let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
        loop {
            if let Some(n) = self
                .seen
                .iter()
                .find(|n| n.saga_id == saga && n.source == source)
            {
                return n.outcome.result;
            }
            let n = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no outcome of {saga} from {source} within {OUTCOME_WAIT:?}")
                })
                .expect("notice channel open");
            self.seen.push(n);
        }
    }

    /// Waits for `wallet`'s own outcome of `saga`.
    pub async fn of_wallet(&mut self, saga: SagaId, wallet: WalletId) -> Result<(), AbortReason> {
        self.outcome(saga, Address::Wallet(wallet)).await
    }
}

/// Customers' value as the wallets see it: coins held plus the chains held or in an outbox
/// (deduplicated), plus every account.
pub fn customers_value(s: &ClusterSnapshot) -> u128 {
    let mut chains = std::collections::HashMap::new();
    let mut coins = 0u128;
    for w in &s.wallets {
        coins += w
            .coins
            .iter()
            .map(|c| u128::from(c.value().0))
            .sum::<u128>();
        for c in w
            .offline
            .chains
            .iter()
            .chain(w.offline.outbox.iter().map(|(_, c)| c))
        {
            chains.insert(c.id(), u128::from(c.value().0));
        }
    }
    let accounts: u128 = s
        .institutions
        .iter()
        .flat_map(|i| i.accounts.values())
        .map(|a| u128::from(a.balance.0))
        .sum();
    coins + chains.values().sum::<u128>() + accounts
}

/// Waits until the cluster is quiet and nothing is in flight — no saga unfinished, no coin
/// unacknowledged (after a crash, acknowledgements not yet journaled are redelivered on the
/// next tick) — then checks the audit.
pub async fn quiet_audit(cluster: &Cluster) {
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    loop {
        assert!(
            cluster.quiesce(Duration::from_secs(10)).await,
            "the cluster goes quiet"
        );
        let report = cluster.audit().await.expect("audit");
        assert!(report.ok(), "audit: {report:#?}");
        if report.in_flight == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let s = cluster.snapshot().await.expect("snapshot");
            let unfinished: usize = s
                .institutions
                .iter()
                .map(|i| {
                    i.sagas
                        .merges
                        .values()
                        .filter(|m| !m.step.is_terminal())
                        .count()
                        + i.sagas
                            .redemptions
                            .values()
                            .filter(|r| !r.step.is_terminal())
                            .count()
                })
                .sum();
            let undelivered: usize = s.institutions.iter().map(|i| i.coins_in_delivery).sum();
            panic!("{} in flight: {unfinished} merges or redemptions unfinished, {undelivered} coins unacknowledged", report.in_flight);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Coin value a wallet holds.
pub fn coins_of(s: &ClusterSnapshot, wallet: WalletId) -> u64 {
    s.wallets[wallet.0 as usize]
        .coins
        .iter()
        .map(|c| c.value().0)
        .sum()
}

/// A network that duplicates some envelopes and delays others, so that steps arrive twice
/// and out of order. Seeded; drops nothing.
pub struct DuplicateAndReorder {
    rng: Mutex<ChaCha8Rng>,
}

impl DuplicateAndReorder {
    /// A hook drawing from `seed`.
    pub fn new(seed: u64) -> DuplicateAndReorder {
        DuplicateAndReorder {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }
}

impl FaultHook for DuplicateAndReorder {
    fn on_send(&self, _from: Address, _to: Address, bytes: bytes::Bytes, out: &mut Vec<Delivery>) {
        let mut rng = self.rng.lock();
        let copies = if rng.gen_bool(0.3) { 2 } else { 1 };
        for _ in 0..copies {
            out.push(Delivery {
                after: Duration::from_millis(rng.gen_range(0..15)),
                bytes: bytes.clone(),
            });
        }
    }
}

/// Closes every open reconciliation batch and asserts continuous reconciliation agreed on all
/// of them — no finding, nothing unfinished or late — with both sides holding records of each
/// of `kinds`. Call once, at the end of a test: later records of a closed batch are late.
pub async fn assert_reconciled(cluster: &specie_actors::Cluster, kinds: &[&str]) {
    let r = cluster.flush_reconciliation(Duration::from_secs(30)).await;
    assert!(r.ok(), "reconciliation: {r:#?}");
    assert_eq!(r.agreed, r.batches, "{r:#?}");
    assert_eq!(r.institution, r.platform, "{r:#?}");
    for kind in kinds {
        let (institution, platform) = r.records_by_kind.get(kind).copied().unwrap_or_default();
        assert!(
            institution > 0 && institution == platform,
            "{kind}: {institution} institution records, {platform} platform records"
        );
    }
}
