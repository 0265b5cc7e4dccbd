//! A cluster on one node: keys, actors, genesis funding, and a handle for clients.

use crate::audit::{audit, AuditReport};
use crate::central_bank::{CentralBank, CentralBankCommand, CentralBankSnapshot};
use crate::institution::{Institution, InstitutionCommand, InstitutionLimits, InstitutionSnapshot};
use crate::wallet::{Wallet, WalletCommand, WalletLimits, WalletSnapshot};
use actix::prelude::*;
use futures::future::join_all;
use specie_protocol::crypto::{sha256, PublicKey};
use specie_protocol::{Address, Amount, Envelope, InstitutionId, KeyStore, SagaId, SagaKind, SoftKeyStore, WalletId};
use specie_runtime::config::Config;
use specie_runtime::{Crash, Host, Inspect, Journal, MemoryJournal, Network, Node, NodeSettings, Notice, Submit, SystemClock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

/// Assembling or driving a cluster failed.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// An actor's mailbox is gone (the actor stopped for good).
    #[error("{actor} is unreachable: {why}")]
    Unreachable {
        /// The actor.
        actor: Address,
        /// The mailbox error.
        why: String,
    },
    /// Genesis funding did not complete.
    #[error("genesis failed: {0}")]
    Genesis(String),
}

/// Everything an audit reads, taken actor by actor.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    /// The central bank.
    pub central_bank: CentralBankSnapshot,
    /// Every institution.
    pub institutions: Vec<InstitutionSnapshot>,
    /// Every wallet.
    pub wallets: Vec<WalletSnapshot>,
    /// Value the workload put in (genesis deposits).
    pub deposited: Amount,
}

/// Derives a key seed for an actor from the cluster seed, so that the same seed gives the
/// same keys (and a restarted actor gets its key back without journaling secrets).
fn key_seed(cluster_seed: u64, role: &str, id: u64) -> [u8; 32] {
    let mut input = b"specie/v1/key-seed".to_vec();
    input.extend_from_slice(&cluster_seed.to_be_bytes());
    input.extend_from_slice(role.as_bytes());
    input.extend_from_slice(&id.to_be_bytes());
    sha256(&input)
}

/// A running cluster on this node.
pub struct Cluster {
    node: Node,
    config: Config,
    central_bank: Addr<Host<CentralBank>>,
    institutions: Vec<Addr<Host<Institution>>>,
    wallets: Vec<Addr<Host<Wallet>>>,
    wallet_keys: Vec<PublicKey>,
    deposited: Amount,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("institutions", &self.institutions.len())
            .field("wallets", &self.wallets.len())
            .finish_non_exhaustive()
    }
}

fn unreachable(actor: Address) -> impl Fn(MailboxError) -> ClusterError {
    move |e| ClusterError::Unreachable {
        actor,
        why: e.to_string(),
    }
}

impl Cluster {
    /// Starts the actors of `config` on a new node with an in-memory journal, and funds every
    /// wallet: the central bank mints reserves, each wallet gets an account with its deposit
    /// and exchanges part of it into coins. Must run inside an actix system.
    pub async fn start(config: Config, seed: u64) -> Result<Cluster, ClusterError> {
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let node = Node::start(
            Network::new(),
            journal,
            Arc::new(SystemClock),
            NodeSettings {
                arbiters: config.runtime.arbiters,
                mailbox_capacity: config.runtime.mailbox_capacity,
                supervision: config.supervision,
            },
        );
        let n_inst = config.cluster.institutions.len();
        let limits = &config.limits;
        let inst_limits = Arc::new(InstitutionLimits {
            saga_timeout_ms: limits.saga_timeout_ms,
            retry_interval_ms: limits.retry_interval_ms,
            retry_interval_max_ms: limits.retry_interval_max_ms,
            coin_inputs_max: limits.coin_inputs_max,
            denominations: config.genesis.coin_denominations_fen.iter().map(|d| Amount(*d)).collect(),
        });
        let wallet_limits = Arc::new(WalletLimits {
            authorization_ttl_ms: limits.authorization_ttl_ms,
            outcome_timeout_ms: limits.outcome_timeout_ms,
            saga_timeout_ms: limits.saga_timeout_ms,
        });
        let institution_keys: Vec<Arc<SoftKeyStore>> = (0..n_inst)
            .map(|i| Arc::new(SoftKeyStore::from_seed(key_seed(seed, "institution", i as u64))))
            .collect();
        let issuers: Arc<HashMap<InstitutionId, PublicKey>> = Arc::new(
            institution_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (InstitutionId(i as u32), k.public_key()))
                .collect(),
        );

        let central_bank = node.spawn(0, None, CentralBank::new);
        let institutions: Vec<_> = institution_keys
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let (keys, limits) = (keys.clone(), inst_limits.clone());
                node.spawn(i, Some(i as u64), move || Institution::new(InstitutionId(i as u32), keys.clone(), limits.clone()))
            })
            .collect();
        let mut wallets = Vec::with_capacity(config.cluster.wallets as usize);
        let mut wallet_keys = Vec::with_capacity(config.cluster.wallets as usize);
        for w in 0..config.cluster.wallets {
            let keys = Arc::new(SoftKeyStore::from_seed(key_seed(seed, "wallet", w)));
            wallet_keys.push(keys.public_key());
            let institution = InstitutionId((w % n_inst as u64) as u32);
            let (issuers, limits) = (issuers.clone(), wallet_limits.clone());
            wallets.push(node.spawn(w as usize, None, move || {
                Wallet::new(WalletId(w), institution, keys.clone(), issuers.clone(), limits.clone())
            }));
        }
        let deposit = Amount(config.genesis.account_balance_fen);
        let deposited = Amount(deposit.0 * config.cluster.wallets);
        let cluster = Cluster {
            node,
            config,
            central_bank,
            institutions,
            wallets,
            wallet_keys,
            deposited,
        };
        cluster.genesis(seed).await?;
        Ok(cluster)
    }

    async fn genesis(&self, seed: u64) -> Result<(), ClusterError> {
        let n_inst = self.institutions.len() as u64;
        let wallets = self.wallets.len() as u64;
        let deposit = Amount(self.config.genesis.account_balance_fen);
        for i in 0..self.institutions.len() {
            let customers = wallets / n_inst + u64::from((i as u64) < wallets % n_inst);
            let amount = Amount(deposit.0 * customers);
            self.central_bank
                .send(Submit(CentralBankCommand::Mint {
                    institution: InstitutionId(i as u32),
                    amount,
                }))
                .await
                .map_err(unreachable(Address::CentralBank))?;
        }
        for w in 0..wallets {
            let i = self.institution_of(WalletId(w));
            self.institutions[i.0 as usize]
                .send(Submit(InstitutionCommand::OpenAccount {
                    wallet: WalletId(w),
                    key: self.wallet_keys[w as usize],
                    deposit,
                }))
                .await
                .map_err(unreachable(Address::Institution(i)))?;
        }
        let exchange = Amount(self.config.genesis.exchange_fen);
        if exchange.is_zero() {
            return Ok(());
        }
        let mut notices = self.notices();
        let mut pending = HashMap::new();
        for w in 0..wallets {
            let saga = SagaId::from_u128(u128::from(seed) << 64 | u128::from(w) | 1 << 63);
            pending.insert(saga, WalletId(w));
            self.submit(WalletId(w), WalletCommand::Exchange { saga, amount: exchange }).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60 + wallets / 100);
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let notice = tokio::time::timeout(left, notices.recv())
                .await
                .map_err(|_| ClusterError::Genesis(format!("{} exchanges unfinished", pending.len())))?
                .ok_or_else(|| ClusterError::Genesis("notice channel closed".into()))?;
            if notice.outcome.kind != SagaKind::Exchange {
                continue;
            }
            if let Some(wallet) = pending.remove(&notice.saga_id) {
                if let Err(reason) = notice.outcome.result {
                    return Err(ClusterError::Genesis(format!("exchange of {wallet} refused: {reason}")));
                }
            }
        }
        Ok(())
    }

    /// The node the cluster runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The validated config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of wallets.
    pub fn wallet_count(&self) -> u64 {
        self.wallets.len() as u64
    }

    /// Number of institutions.
    pub fn institution_count(&self) -> usize {
        self.institutions.len()
    }

    /// The institution a wallet banks with (round-robin placement).
    pub fn institution_of(&self, wallet: WalletId) -> InstitutionId {
        InstitutionId((wallet.0 % self.institutions.len() as u64) as u32)
    }

    /// A wallet's public key.
    pub fn wallet_key(&self, wallet: WalletId) -> PublicKey {
        self.wallet_keys[wallet.0 as usize]
    }

    /// A new stream of every saga outcome published from now on.
    pub fn notices(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.node.observe(Arc::new(move |n: &Notice| {
            let _ = tx.send(n.clone());
        }));
        rx
    }

    /// Hands a command to a wallet (waits while its mailbox is full).
    pub async fn submit(&self, wallet: WalletId, command: WalletCommand) -> Result<(), ClusterError> {
        self.wallets[wallet.0 as usize]
            .send(Submit(command))
            .await
            .map_err(unreachable(Address::Wallet(wallet)))
    }

    /// Sends an envelope into the network as a client outside the cluster would.
    pub fn inject(&self, envelope: Envelope) {
        self.node.network().send(envelope);
    }

    /// Crashes an actor; its supervisor restarts it from the journal.
    pub fn crash(&self, actor: Address) {
        match actor {
            Address::CentralBank => self.central_bank.do_send(Crash::default()),
            Address::Institution(i) => self.institutions[i.0 as usize].do_send(Crash::default()),
            Address::Wallet(w) => self.wallets[w.0 as usize].do_send(Crash::default()),
            Address::External(_) | Address::Reconciler(_) => {}
        }
    }

    /// Waits until no envelope is in flight for a few consecutive looks, or the timeout.
    /// Returns whether the cluster went quiet.
    pub async fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut quiet_looks = 0;
        while Instant::now() < deadline {
            if self.node.network().in_flight() == 0 {
                quiet_looks += 1;
                if quiet_looks >= 5 {
                    return true;
                }
            } else {
                quiet_looks = 0;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Takes a snapshot of every actor.
    pub async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        let central_bank = self
            .central_bank
            .send(Inspect::default())
            .await
            .map_err(unreachable(Address::CentralBank))?;
        let mut institutions = Vec::with_capacity(self.institutions.len());
        for (i, addr) in self.institutions.iter().enumerate() {
            institutions.push(
                addr.send(Inspect::default())
                    .await
                    .map_err(unreachable(Address::Institution(InstitutionId(i as u32))))?,
            );
        }
        let mut wallets = Vec::with_capacity(self.wallets.len());
        for chunk in self.wallets.chunks(1024) {
            for result in join_all(chunk.iter().map(|a| a.send(Inspect::default()))).await {
                let id = WalletId(wallets.len() as u64);
                wallets.push(result.map_err(unreachable(Address::Wallet(id)))?);
            }
        }
        Ok(ClusterSnapshot {
            central_bank,
            institutions,
            wallets,
            deposited: self.deposited,
        })
    }

    /// Snapshots the cluster and checks the invariants.
    pub async fn audit(&self) -> Result<AuditReport, ClusterError> {
        Ok(audit(&self.snapshot().await?))
    }

    /// Stops the node's arbiters.
    pub fn shutdown(&self) {
        self.node.shutdown();
    }
}
