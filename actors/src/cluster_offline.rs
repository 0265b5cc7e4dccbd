//! Offline payment on a node: the hand-over of a trust chain from the payer's wallet to the
//! payee's (the patents' NFC step), which uses no network at all — the node takes the chain
//! out of one wallet and gives it to the other as local commands.
//!
//! Each side's step is waited for through its notice, which the host publishes only once the
//! step is durable: the payer's journal holds the transfer it signed before the payee gets
//! the chain, and the payee's holds the chain before the payer lets go of it. A hand-over
//! interrupted in between leaves the chain in the payer's outbox, still counted as offline
//! value in flight, and [`Cluster::offline_handover`] finishes it.

use super::{unreachable, Cluster, ClusterError};
use crate::wallet::{OfflineCommand, WalletCommand, WalletSnapshot};
use parking_lot::Mutex;
use specie_protocol::offline::TrustChain;
use specie_protocol::{AbortReason, Address, Amount, CoinId, SagaId, SagaKind, WalletId};
use specie_runtime::{Inspect, Node, Notice};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the node waits for a wallet's offline step before it gives up on the hand-over.
pub const HANDOVER_STEP_TIMEOUT: Duration = Duration::from_secs(10);

type Waiters = Arc<Mutex<HashMap<(SagaId, Address), oneshot::Sender<Result<(), AbortReason>>>>>;

/// The waiters for wallets' offline steps, fed by an observer of the node's notices.
#[derive(Default)]
pub(super) struct Handover {
    waiters: Waiters,
}

impl Handover {
    /// Installs the observer on `node`.
    pub(super) fn install(node: &Node) -> Handover {
        let waiters = Waiters::default();
        let feed = waiters.clone();
        node.observe(Arc::new(move |n: &Notice| {
            if n.outcome.kind != SagaKind::OfflinePay {
                return;
            }
            if let Some(tx) = feed.lock().remove(&(n.saga_id, n.source)) {
                let _ = tx.send(n.outcome.result);
            }
        }));
        Handover { waiters }
    }

    fn expect(&self, saga: SagaId, wallet: WalletId) -> oneshot::Receiver<Result<(), AbortReason>> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .insert((saga, Address::Wallet(wallet)), tx);
        rx
    }
}

impl Cluster {
    /// A snapshot of one wallet.
    pub async fn wallet_snapshot(&self, wallet: WalletId) -> Result<WalletSnapshot, ClusterError> {
        self.wallets[wallet.0 as usize]
            .send(Inspect::default())
            .await
            .map_err(unreachable(Address::Wallet(wallet)))
    }

    /// Submits an offline step to a wallet and waits for its durable notice.
    async fn offline_step(
        &self,
        saga: SagaId,
        wallet: WalletId,
        command: OfflineCommand,
    ) -> Result<Result<(), AbortReason>, ClusterError> {
        let answer = self.handover.expect(saga, wallet);
        self.submit(wallet, WalletCommand::Offline(command)).await?;
        let waited = tokio::time::timeout(HANDOVER_STEP_TIMEOUT, answer).await;
        match waited {
            Ok(Ok(result)) => Ok(result),
            _ => {
                self.handover
                    .waiters
                    .lock()
                    .remove(&(saga, Address::Wallet(wallet)));
                Err(ClusterError::Unreachable {
                    actor: Address::Wallet(wallet),
                    why: format!(
                        "no answer to offline payment {saga} within {HANDOVER_STEP_TIMEOUT:?}"
                    ),
                })
            }
        }
    }

    /// Pays `amount` from `payer` to `payee` offline: the payer splits a coin (or a chain) it
    /// holds and signs the transfers in its key store, then the chain is handed to the payee
    /// with no network involved. Returns the chain the payee now holds, or the refusal —
    /// the payer's (`offline_limit`, `insufficient_funds`, `busy`, …) or the payee's.
    pub async fn offline_pay(
        &self,
        saga: SagaId,
        payer: WalletId,
        payee: WalletId,
        amount: Amount,
    ) -> Result<Result<TrustChain, AbortReason>, ClusterError> {
        self.offline_transfer(saga, payer, payee, amount, None)
            .await
    }

    /// Planted misbehaviour for workloads and tests: `payer` signs an offline transfer out of
    /// `coin` although it already split that coin offline — an offline double spend that the
    /// coin's issuer must refuse when the chain is redeemed.
    pub async fn offline_double_spend(
        &self,
        saga: SagaId,
        payer: WalletId,
        payee: WalletId,
        amount: Amount,
        coin: CoinId,
    ) -> Result<Result<TrustChain, AbortReason>, ClusterError> {
        self.offline_transfer(saga, payer, payee, amount, Some(coin))
            .await
    }

    async fn offline_transfer(
        &self,
        saga: SagaId,
        payer: WalletId,
        payee: WalletId,
        amount: Amount,
        reuse: Option<CoinId>,
    ) -> Result<Result<TrustChain, AbortReason>, ClusterError> {
        let pay = OfflineCommand::Pay {
            saga,
            payee,
            payee_key: self.wallet_key(payee),
            amount,
            reuse,
        };
        if let Err(reason) = self.offline_step(saga, payer, pay).await? {
            return Ok(Err(reason));
        }
        self.offline_handover(saga, payer, payee).await
    }

    /// Hands the chain of offline payment `saga` from the payer's outbox to the payee, and
    /// lets the payer drop it once the payee holds it. Idempotent: a chain already handed
    /// over is handed over again harmlessly.
    pub async fn offline_handover(
        &self,
        saga: SagaId,
        payer: WalletId,
        payee: WalletId,
    ) -> Result<Result<TrustChain, AbortReason>, ClusterError> {
        let snapshot = self.wallet_snapshot(payer).await?;
        let Some((_, chain)) = snapshot
            .offline
            .outbox
            .into_iter()
            .find(|(s, _)| *s == saga)
        else {
            return Ok(Err(AbortReason::SagaUnknown));
        };
        let receive = OfflineCommand::Receive {
            saga,
            chain: chain.clone(),
        };
        if let Err(reason) = self.offline_step(saga, payee, receive).await? {
            return Ok(Err(reason));
        }
        self.submit(
            payer,
            WalletCommand::Offline(OfflineCommand::HandedOver { saga }),
        )
        .await?;
        Ok(Ok(chain))
    }
}
