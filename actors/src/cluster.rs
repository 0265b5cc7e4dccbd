//! A cluster on one node: keys, actors, genesis funding, and a handle for clients.

use crate::audit::{audit, AuditReport};
use crate::blueprint::Blueprint;
use crate::central_bank::{CentralBank, CentralBankCommand, CentralBankSnapshot};
use crate::data_dir::{DataDir, DataDirError, NODE_IDENTITY};
use crate::escrow::{Escrow, EscrowSnapshot};
use crate::institution::{Institution, InstitutionCommand, InstitutionSnapshot};
use crate::reconciler::{Feed, FeedSettings, FeedSummary, LocalReconcilers, ReconcilerLimits};
use crate::wallet::{Wallet, WalletCommand, WalletSnapshot};
use actix::prelude::*;
use futures::future::join_all;
use specie_protocol::crypto::PublicKey;
use specie_protocol::{
    AbortReason, Address, Amount, Envelope, InstitutionId, KeyStore, SagaId, SagaKind, WalletId,
};
use specie_runtime::config::Config;
use specie_runtime::network::Spawner;
use specie_runtime::{
    Crash, Host, Inspect, Journal, JournalError, MemoryJournal, Network, Node, NodeSettings,
    Notice, RedbJournal, Submit, SystemClock,
};
use std::collections::{BTreeMap, HashMap};
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
    /// The journal cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
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
    /// Every escrow contract started so far, by id.
    pub escrows: Vec<EscrowSnapshot>,
    /// Value the workload put in (genesis deposits).
    pub deposited: Amount,
}

/// A running cluster on this node.
pub struct Cluster {
    node: Node,
    blueprint: Blueprint,
    durable: Option<Arc<RedbJournal>>,
    central_bank: Addr<Host<CentralBank>>,
    institutions: Vec<Addr<Host<Institution>>>,
    wallets: Vec<Addr<Host<Wallet>>>,
    wallet_keys: Vec<PublicKey>,
    /// Escrow contracts, started on their first message by the network's spawner.
    escrows: EscrowRegistry,
    /// Waiters for wallets' offline steps (`cluster_offline.rs`).
    handover: offline::Handover,
    /// Continuous reconciliation: the reconcilers and the feed of records into them.
    feed: Feed,
}

// Offline payment's hand-over between wallets, a child module so it reaches their mailboxes.
#[path = "cluster_offline.rs"]
mod offline;
pub use offline::HANDOVER_STEP_TIMEOUT;

/// Where a cluster keeps its journal.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In process memory: survives actor crashes, not the process.
    Memory,
    /// The durable journal of a data directory.
    Durable(Box<DataDir>),
}

/// Journal meta key: genesis funding completed.
const META_GENESIS_DONE: &str = "genesis_done";

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("institutions", &self.institutions.len())
            .field("wallets", &self.wallets.len())
            .finish_non_exhaustive()
    }
}

/// Escrow contracts started on this node, by id (ordered, so snapshots are too).
type EscrowRegistry = Arc<parking_lot::Mutex<BTreeMap<u64, Addr<Host<Escrow>>>>>;

/// Starts escrow contract actors on their first message: beside their hosting institution (same
/// arbiter and supervision group), recovering from the journal when they lived before. Other
/// addresses, and contracts naming an institution that does not exist, get no actor.
fn escrow_spawner(node: &Node, blueprint: &Blueprint, registry: &EscrowRegistry) -> Spawner {
    let (node, blueprint, registry) = (node.clone(), blueprint.clone(), registry.clone());
    Arc::new(move |address| {
        let Address::Escrow(id) = address else {
            return None;
        };
        let host = specie_protocol::escrow::host_of(id).0 as usize;
        if host >= blueprint.institution_count() {
            return None;
        }
        let addr = node.spawn(host, Some(host as u64), blueprint.escrow(id));
        registry.lock().insert(id, addr.clone());
        Some(addr.recipient())
    })
}

fn unreachable(actor: Address) -> impl Fn(MailboxError) -> ClusterError {
    move |e| ClusterError::Unreachable {
        actor,
        why: e.to_string(),
    }
}

impl Cluster {
    /// Starts the actors of `config` on a new node with an in-memory journal and funds every
    /// wallet: the central bank mints reserves, each wallet gets an account with its deposit
    /// and exchanges part of it into coins. Must run inside an actix system.
    pub async fn start(config: Config, seed: u64) -> Result<Cluster, ClusterError> {
        Cluster::start_with(config, seed, Storage::Memory).await
    }

    /// Starts a cluster on the given storage. With a data directory, the actors recover their
    /// state from its journal and genesis runs only once in the directory's life.
    pub async fn start_with(
        config: Config,
        seed: u64,
        storage: Storage,
    ) -> Result<Cluster, ClusterError> {
        let (journal, durable): (Arc<dyn Journal>, Option<Arc<RedbJournal>>) = match &storage {
            Storage::Memory => (Arc::new(MemoryJournal::new()), None),
            Storage::Durable(dir) => {
                let journal = Arc::new(RedbJournal::open(
                    &dir.journal_path(),
                    NODE_IDENTITY,
                    config.journal,
                )?);
                (journal.clone(), Some(journal))
            }
        };
        let node = Node::start(
            Network::new(),
            journal,
            Arc::new(SystemClock),
            NodeSettings {
                arbiters: config.runtime.arbiters,
                mailbox_capacity: config.runtime.mailbox_capacity,
                supervision: config.supervision,
                snapshot_entries_min: config.journal.snapshot_entries_min,
            },
        );
        let blueprint = Blueprint::new(&config, seed);
        let escrows = EscrowRegistry::default();
        // Before any actor starts: institutions wake their open escrows when they start.
        node.network()
            .set_spawner(Some(escrow_spawner(&node, &blueprint, &escrows)));
        let central_bank = node.spawn(0, None, blueprint.central_bank());
        let institutions: Vec<_> = (0..blueprint.institution_count())
            .map(|i| node.spawn(i, Some(i as u64), blueprint.institution(i)))
            .collect();
        let mut wallets = Vec::with_capacity(config.cluster.wallets as usize);
        let mut wallet_keys = Vec::with_capacity(config.cluster.wallets as usize);
        for w in 0..config.cluster.wallets {
            let keys = blueprint.wallet_keys(WalletId(w));
            wallet_keys.push(keys.public_key());
            wallets.push(node.spawn(w as usize, None, blueprint.wallet(WalletId(w), keys)));
        }
        let handover = offline::Handover::install(&node);
        // Before genesis, whose exchanges are the first committed steps to reconcile. The
        // reconcilers recover from the journal like every actor.
        let reconcilers = LocalReconcilers::start(
            &node,
            (0..blueprint.institution_count()).map(|i| InstitutionId(i as u32)),
            ReconcilerLimits {
                retry_interval_ms: config.limits.retry_interval_ms,
                retry_interval_max_ms: config.limits.retry_interval_max_ms,
                ..ReconcilerLimits::default()
            },
        );
        let feed = Feed::start(
            &node,
            Arc::new(reconcilers),
            FeedSettings {
                batch_interval_ms: config.reconcile.batch_interval_ms,
                close_after_ms: config.reconcile.close_after_ms,
            },
        )
        .await;
        let cluster = Cluster {
            node,
            blueprint,
            durable,
            central_bank,
            institutions,
            wallets,
            wallet_keys,
            escrows,
            handover,
            feed,
        };
        let genesis_done = match &cluster.durable {
            Some(j) => j.meta(META_GENESIS_DONE)?.is_some(),
            None => false,
        };
        if !genesis_done {
            cluster.genesis(seed).await?;
            if let Some(j) = &cluster.durable {
                j.set_meta(META_GENESIS_DONE, &[1])?;
            }
        }
        Ok(cluster)
    }

    /// Funds the cluster. Idempotent, so that a genesis interrupted by a crash can run again:
    /// mints and accounts are made once, and exchanges have saga ids fixed by the seed.
    async fn genesis(&self, seed: u64) -> Result<(), ClusterError> {
        for i in 0..self.institutions.len() {
            self.central_bank
                .send(Submit(CentralBankCommand::Mint {
                    institution: InstitutionId(i as u32),
                    amount: self.blueprint.genesis_mint(i),
                }))
                .await
                .map_err(unreachable(Address::CentralBank))?;
        }
        let deposit = Amount(self.config().genesis.account_balance_fen);
        let wallets = self.wallets.len() as u64;
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
        let exchange = Amount(self.config().genesis.exchange_fen);
        if exchange.is_zero() {
            return Ok(());
        }
        let mut notices = self.notices();
        let mut pending = HashMap::new();
        for w in 0..wallets {
            let saga = SagaId::from_u128(u128::from(seed) << 64 | u128::from(w) | 1 << 63);
            pending.insert(saga, WalletId(w));
            self.submit(
                WalletId(w),
                WalletCommand::Exchange {
                    saga,
                    amount: exchange,
                },
            )
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60 + wallets / 100);
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let notice = tokio::time::timeout(left, notices.recv())
                .await
                .map_err(|_| {
                    ClusterError::Genesis(format!("{} exchanges unfinished", pending.len()))
                })?
                .ok_or_else(|| ClusterError::Genesis("notice channel closed".into()))?;
            if notice.outcome.kind != SagaKind::Exchange {
                continue;
            }
            if let Some(wallet) = pending.remove(&notice.saga_id) {
                match notice.outcome.result {
                    // Conflict: the exchange was started by an earlier, interrupted genesis;
                    // it finishes on its own.
                    Ok(()) | Err(AbortReason::Conflict) => {}
                    Err(reason) => {
                        return Err(ClusterError::Genesis(format!(
                            "exchange of {wallet} refused: {reason}"
                        )))
                    }
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
        self.blueprint.config()
    }

    /// The blueprint the actors were built from.
    pub fn blueprint(&self) -> &Blueprint {
        &self.blueprint
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
        self.blueprint.institution_of(wallet)
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
    pub async fn submit(
        &self,
        wallet: WalletId,
        command: WalletCommand,
    ) -> Result<(), ClusterError> {
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
            Address::Escrow(id) => {
                if let Some(escrow) = self.escrows.lock().get(&id) {
                    escrow.do_send(Crash::default());
                }
            }
            Address::External(_) | Address::Reconciler(_) => {}
        }
    }

    /// Waits until no envelope is in flight for a few consecutive looks, or the timeout.
    /// Returns whether the cluster went quiet.
    pub async fn quiesce(&self, timeout: Duration) -> bool {
        self.node.quiesce(timeout).await
    }

    /// Continuous reconciliation: the feed of both sides' transaction records into the
    /// reconcilers.
    pub fn reconciliation(&self) -> &Feed {
        &self.feed
    }

    /// Closes every open reconciliation batch, reconciles it, and waits (at most `timeout`)
    /// for every result. Call once the cluster is quiet, or records still on their way are
    /// reconciled late.
    pub async fn flush_reconciliation(&self, timeout: Duration) -> FeedSummary {
        self.feed.flush(timeout).await
    }

    /// Escrow contracts started so far.
    pub fn escrow_count(&self) -> usize {
        self.escrows.lock().len()
    }

    async fn escrow_snapshots(&self) -> Result<Vec<EscrowSnapshot>, ClusterError> {
        let escrows: Vec<(u64, Addr<Host<Escrow>>)> = self
            .escrows
            .lock()
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let mut snapshots = Vec::with_capacity(escrows.len());
        for chunk in escrows.chunks(1024) {
            for (result, (id, _)) in join_all(chunk.iter().map(|(_, a)| a.send(Inspect::default())))
                .await
                .into_iter()
                .zip(chunk)
            {
                snapshots.push(result.map_err(unreachable(Address::Escrow(*id)))?);
            }
        }
        Ok(snapshots)
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
            escrows: self.escrow_snapshots().await?,
            deposited: self.blueprint.deposited(),
        })
    }

    /// Snapshots the cluster and checks the invariants (all of them when no envelope is in
    /// flight; see [`crate::audit`]).
    pub async fn audit(&self) -> Result<AuditReport, ClusterError> {
        let quiet_before = self.node.network().in_flight() == 0;
        let snapshot = self.snapshot().await?;
        let quiescent = quiet_before && self.node.network().in_flight() == 0;
        Ok(audit(&snapshot, quiescent))
    }

    /// Stops the node's arbiters and flushes the durable journal.
    pub fn shutdown(&self) {
        // The spawner holds the node: drop it, and start no escrow from now on.
        self.node.network().set_spawner(None);
        self.feed.stop();
        self.node.shutdown();
        if let Some(j) = &self.durable {
            j.close();
        }
    }

    /// Counts a run in the durable journal's meta and returns its number (1 for the first).
    pub fn next_run(&self) -> Result<u64, ClusterError> {
        let Some(j) = &self.durable else { return Ok(1) };
        let runs = j
            .meta("runs")?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        j.set_meta("runs", &runs.to_be_bytes())?;
        Ok(runs)
    }
}
