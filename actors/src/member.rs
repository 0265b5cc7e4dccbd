//! One node's share of a multi-process cluster: the actors the placement puts on this node,
//! its durable journal, and its part of genesis. Envelopes to actors on other nodes leave
//! through the network's remote route (the gRPC transport), installed before the member
//! starts; the actors never know where their peers live.

use crate::blueprint::Blueprint;
use crate::central_bank::{CentralBank, CentralBankCommand};
use crate::cluster::ClusterError;
use crate::data_dir::DataDir;
use crate::escrow::Escrow;
use crate::institution::{Institution, InstitutionCommand};
use crate::reconciler::{Feed, FeedSettings, LocalReconcilers, ReconcilerLimits};
use crate::wallet::{SagaProgress, Wallet, WalletCommand, WalletSnapshot};
use actix::prelude::*;
use specie_protocol::{
    AbortReason, Address, Amount, InstitutionId, KeyStore, SagaId, SagaKind, WalletId,
    RECONCILIATION_PLATFORM,
};
use specie_runtime::network::Spawner;
use specie_runtime::topology::Placement;
use specie_runtime::{
    Host, Inspect, Journal, Network, Node, NodeSettings, Notice, Query, RedbJournal, Submit,
    SystemClock,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The node an actor lives on (`None` for addresses outside the cluster, such as clients).
pub fn node_of(placement: &Placement, address: Address) -> Option<usize> {
    let institution = |i: u64| placement.institutions.get(i as usize).copied();
    match address {
        Address::CentralBank => Some(placement.central_bank),
        Address::Institution(i) => institution(u64::from(i.0)),
        Address::Wallet(w) => Some(placement.wallet_node(w.0)),
        Address::Escrow(id) => institution(u64::from(specie_protocol::escrow::host_of(id).0)),
        Address::Reconciler(RECONCILIATION_PLATFORM) => Some(placement.central_bank),
        Address::Reconciler(i) => institution(i),
        // The ledger inbox takes platform-side records for the platform's reconciler.
        Address::External(specie_protocol::reconcile::LEDGER_INBOX) => Some(placement.central_bank),
        Address::External(_) => None,
    }
}

/// Journal meta key: this node's part of genesis completed.
const META_GENESIS_DONE: &str = "genesis_done";

/// The journal identity of node `id`: a journal written by another node is refused.
pub fn journal_identity(id: &str) -> Vec<u8> {
    format!("specie-node:{id}").into_bytes()
}

/// This node's actors.
pub struct Member {
    node: Node,
    blueprint: Blueprint,
    placement: Placement,
    me: usize,
    journal: Arc<RedbJournal>,
    central_bank: Option<Addr<Host<CentralBank>>>,
    institutions: BTreeMap<InstitutionId, Addr<Host<Institution>>>,
    wallets: HashMap<WalletId, Addr<Host<Wallet>>>,
    /// The reconcilers placed here: the platform's with the central bank, each institution's
    /// with it.
    reconcilers: Arc<LocalReconcilers>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("me", &self.me)
            .field("central_bank", &self.central_bank.is_some())
            .field(
                "institutions",
                &self.institutions.keys().collect::<Vec<_>>(),
            )
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

impl Member {
    /// Starts the actors `placement` puts on node `me`, recovering them from the journal in
    /// `dir`. `network` must already route other nodes' addresses to them. Must run inside an
    /// actix system.
    pub fn start(
        network: Network,
        dir: &DataDir,
        node_id: &str,
        placement: Placement,
        me: usize,
    ) -> Result<Member, ClusterError> {
        let config = dir.config.clone();
        let journal = Arc::new(RedbJournal::open(
            &dir.journal_path(),
            &journal_identity(node_id),
            config.journal,
        )?);
        check_placement(&journal, dir, &placement, me)?;
        let node = Node::start(
            network,
            journal.clone() as Arc<dyn Journal>,
            Arc::new(SystemClock),
            NodeSettings {
                arbiters: config.runtime.arbiters,
                mailbox_capacity: config.runtime.mailbox_capacity,
                supervision: config.supervision,
                snapshot_entries_min: config.journal.snapshot_entries_min,
            },
        );
        let blueprint = Blueprint::new(&config, dir.seed);
        node.network()
            .set_spawner(Some(escrow_spawner(&node, &blueprint, &placement, me)));
        let central_bank =
            (placement.central_bank == me).then(|| node.spawn(0, None, blueprint.central_bank()));
        let institutions: BTreeMap<InstitutionId, Addr<Host<Institution>>> = (0..blueprint
            .institution_count())
            .filter(|i| placement.institutions[*i] == me)
            .map(|i| {
                let addr = node.spawn(i, Some(i as u64), blueprint.institution(i));
                (InstitutionId(i as u32), addr)
            })
            .collect();
        let reconcilers = Arc::new(LocalReconcilers::start_on(
            &node,
            placement.central_bank == me,
            institutions.keys().copied(),
            ReconcilerLimits {
                retry_interval_ms: config.limits.retry_interval_ms,
                retry_interval_max_ms: config.limits.retry_interval_max_ms,
                ..ReconcilerLimits::default()
            },
        ));
        let mut wallets = HashMap::new();
        for w in 0..blueprint.wallet_count() {
            if placement.wallet_node(w) != me {
                continue;
            }
            let id = WalletId(w);
            let keys = blueprint.wallet_keys(id);
            wallets.insert(id, node.spawn(w as usize, None, blueprint.wallet(id, keys)));
        }
        Ok(Member {
            node,
            blueprint,
            placement,
            me,
            journal,
            central_bank,
            institutions,
            wallets,
            reconcilers,
        })
    }

    /// Starts continuous reconciliation on this node (before genesis, whose exchanges are the
    /// first steps to reconcile): the feed loads the sides this node hosts into its
    /// reconcilers; platform-side records go to the platform's node (forwarded from the other
    /// nodes, taken by the ledger inbox on the central bank's). Must run inside an actix
    /// system.
    pub async fn start_reconciliation(&self) -> Result<Feed, ClusterError> {
        let r = self.blueprint.config().reconcile;
        let feed = Feed::start(
            &self.node,
            self.reconcilers.clone(),
            FeedSettings {
                batch_interval_ms: r.batch_interval_ms,
                close_after_ms: r.close_after_ms,
            },
        )
        .await;
        // The open batches the previous process kept when it stopped gracefully.
        if let Some(bytes) = self.journal.meta(META_OPEN_BATCHES)? {
            if !bytes.is_empty() {
                if let Err(e) = feed.restore_open(&bytes) {
                    eprintln!("specie: the open reconciliation batches kept in the journal cannot be read ({e}); reconciling without them");
                }
                self.journal.set_meta(META_OPEN_BATCHES, &[])?;
            }
        }
        Ok(feed)
    }

    /// Keeps the records of the reconciliation batches still open in the journal, for the
    /// next start of this node (graceful shutdown, after [`Feed::stop`]).
    pub fn keep_open_batches(&self, feed: &Feed) -> Result<(), ClusterError> {
        self.journal
            .set_meta(META_OPEN_BATCHES, &feed.open_batches())?;
        Ok(())
    }

    /// The reconcilers placed on this node.
    pub fn reconcilers(&self) -> &Arc<LocalReconcilers> {
        &self.reconcilers
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The blueprint the actors were built from.
    pub fn blueprint(&self) -> &Blueprint {
        &self.blueprint
    }

    /// Where actors live.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// This node's index.
    pub fn index(&self) -> usize {
        self.me
    }

    /// The durable journal (its meta table keeps the ingress's saga index).
    pub fn journal(&self) -> &Arc<RedbJournal> {
        &self.journal
    }

    /// Whether wallet `w` lives here.
    pub fn is_local_wallet(&self, w: WalletId) -> bool {
        self.wallets.contains_key(&w)
    }

    /// Number of wallets on this node.
    pub fn local_wallets(&self) -> usize {
        self.wallets.len()
    }

    /// A new stream of every saga outcome published on this node from now on.
    pub fn notices(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        // The node keeps its observers for its life: once the receiver is gone (genesis
        // done), this one costs a check, not a clone of every notice.
        self.node.observe(Arc::new(move |n: &Notice| {
            if !tx.is_closed() {
                let _ = tx.send(n.clone());
            }
        }));
        rx
    }

    fn wallet(&self, w: WalletId) -> Result<&Addr<Host<Wallet>>, ClusterError> {
        self.wallets.get(&w).ok_or(ClusterError::Unreachable {
            actor: Address::Wallet(w),
            why: "the wallet does not live on this node".into(),
        })
    }

    /// Hands a command to a local wallet (waits while its mailbox is full).
    pub async fn submit(&self, w: WalletId, command: WalletCommand) -> Result<(), ClusterError> {
        self.wallet(w)?
            .send(Submit(command))
            .await
            .map_err(unreachable(Address::Wallet(w)))
    }

    /// What a local wallet knows of one of its sagas.
    pub async fn saga_progress(
        &self,
        w: WalletId,
        saga: SagaId,
    ) -> Result<Option<SagaProgress>, ClusterError> {
        self.wallet(w)?
            .send(Query::<Wallet, _>(Box::new(move |wallet: &Wallet| {
                wallet.saga_progress(saga)
            })))
            .await
            .map_err(unreachable(Address::Wallet(w)))
    }

    /// A local wallet's snapshot (its coins).
    pub async fn wallet_snapshot(&self, w: WalletId) -> Result<WalletSnapshot, ClusterError> {
        self.wallet(w)?
            .send(Inspect::default())
            .await
            .map_err(unreachable(Address::Wallet(w)))
    }

    /// Runs this node's part of genesis unless it completed before: the central bank mints
    /// reserves, institutions open their customers' accounts, and local wallets exchange part
    /// of their deposit into coins. Institutions and the central bank may live on nodes that
    /// start later, so an exchange refused for that reason is retried until `timeout`.
    pub async fn genesis(&self, timeout: Duration) -> Result<(), ClusterError> {
        if self.journal.meta(META_GENESIS_DONE)?.is_some() {
            return Ok(());
        }
        if let Some(cb) = &self.central_bank {
            for i in 0..self.blueprint.institution_count() {
                cb.send(Submit(CentralBankCommand::Mint {
                    institution: InstitutionId(i as u32),
                    amount: self.blueprint.genesis_mint(i),
                }))
                .await
                .map_err(unreachable(Address::CentralBank))?;
            }
        }
        let deposit = Amount(self.blueprint.config().genesis.account_balance_fen);
        for w in 0..self.blueprint.wallet_count() {
            let id = WalletId(w);
            let i = self.blueprint.institution_of(id);
            if let Some(inst) = self.institutions.get(&i) {
                inst.send(Submit(InstitutionCommand::OpenAccount {
                    wallet: id,
                    key: self.blueprint.wallet_keys(id).public_key(),
                    deposit,
                }))
                .await
                .map_err(unreachable(Address::Institution(i)))?;
            }
        }
        self.exchange_local_wallets(timeout).await?;
        self.journal.set_meta(META_GENESIS_DONE, &[1])?;
        Ok(())
    }

    async fn exchange_local_wallets(&self, timeout: Duration) -> Result<(), ClusterError> {
        let exchange = Amount(self.blueprint.config().genesis.exchange_fen);
        if exchange.is_zero() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut notices = self.notices();
        // Wallets still to fund, with the attempt number (part of the saga id, so a retry is
        // a new saga and an attempt of an earlier, interrupted genesis is not mistaken for it).
        let mut todo: BTreeMap<WalletId, u64> = BTreeMap::new();
        for &w in self.wallets.keys() {
            let s = self.wallet_snapshot(w).await?;
            let held: u64 = s.coins.iter().map(|c| c.value().0).sum();
            if held == 0 && s.pending == 0 {
                todo.insert(w, 0);
            }
        }
        let seed = self.blueprint.seed();
        let saga_of = |w: WalletId, attempt: u64| {
            SagaId::from_u128(
                u128::from(seed) << 64 | u128::from(attempt) << 40 | u128::from(w.0) | 1 << 63,
            )
        };
        while !todo.is_empty() {
            let mut pending: HashMap<SagaId, WalletId> = HashMap::new();
            for (&w, &attempt) in &todo {
                let saga = saga_of(w, attempt);
                pending.insert(saga, w);
                self.submit(
                    w,
                    WalletCommand::Exchange {
                        saga,
                        amount: exchange,
                    },
                )
                .await?;
            }
            while !pending.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let notice = tokio::time::timeout(left, notices.recv())
                    .await
                    .map_err(|_| {
                        ClusterError::Genesis(format!(
                            "{} exchanges of node {} unfinished (are the other nodes up?)",
                            todo.len(),
                            self.me
                        ))
                    })?
                    .ok_or_else(|| ClusterError::Genesis("notice channel closed".into()))?;
                if notice.outcome.kind != SagaKind::Exchange {
                    continue;
                }
                let Some(w) = pending.remove(&notice.saga_id) else {
                    continue;
                };
                match notice.outcome.result {
                    Ok(()) => {
                        todo.remove(&w);
                    }
                    Err(AbortReason::Conflict) => {
                        // An attempt of an interrupted genesis: try the next saga id.
                        *todo.get_mut(&w).expect("pending wallets are to do") += 1;
                    }
                    Err(
                        AbortReason::UnknownWallet
                        | AbortReason::InsufficientReserve
                        | AbortReason::Timeout
                        | AbortReason::Busy,
                    ) => *todo.get_mut(&w).expect("pending wallets are to do") += 1,
                    Err(reason) => {
                        return Err(ClusterError::Genesis(format!(
                            "exchange of {w} refused: {reason}"
                        )))
                    }
                }
            }
            if !todo.is_empty() {
                if Instant::now() >= deadline {
                    return Err(ClusterError::Genesis(format!(
                        "{} exchanges of node {} refused until the deadline",
                        todo.len(),
                        self.me
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Waits until no envelope is in flight on this node for a few looks, or the timeout.
    pub async fn quiesce(&self, timeout: Duration) -> bool {
        self.node.quiesce(timeout).await
    }

    /// Stops the actors and closes the journal (everything journaled is durable).
    pub fn shutdown(&self) {
        self.node.network().set_spawner(None);
        self.node.shutdown();
        self.journal.close();
    }
}

/// Journal meta key: the records of open reconciliation batches, kept across a graceful
/// restart.
const META_OPEN_BATCHES: &str = "reconcile_open_batches";

/// Journal meta key: the placement the node's actors were created under.
const META_PLACEMENT: &str = "placement";

/// Refuses a data directory whose actors were placed differently: an institution (or the
/// central bank) moved to another node in the cluster file would start empty there while its
/// state stays in this directory. The first start records the placement.
fn check_placement(
    journal: &RedbJournal,
    dir: &DataDir,
    placement: &Placement,
    me: usize,
) -> Result<(), ClusterError> {
    let here = format!(
        "node {me} of {}; central bank on node {}; institutions on nodes {:?}",
        placement.nodes, placement.central_bank, placement.institutions
    );
    match journal.meta(META_PLACEMENT)? {
        None => journal.set_meta(META_PLACEMENT, here.as_bytes())?,
        Some(stored) if stored == here.as_bytes() => {}
        Some(stored) => {
            return Err(ClusterError::DataDir(
                crate::data_dir::DataDirError::Invalid {
                    file: dir.journal_path().display().to_string(),
                    why: format!(
                    "was written with another placement ({}) than the cluster file's ({here}); \
                     moving actors between nodes is not supported",
                    String::from_utf8_lossy(&stored)
                ),
                },
            ))
        }
    }
    Ok(())
}

/// Starts escrow contracts hosted by this node's institutions on their first message.
fn escrow_spawner(node: &Node, blueprint: &Blueprint, placement: &Placement, me: usize) -> Spawner {
    let (node, blueprint) = (node.clone(), blueprint.clone());
    let placement = placement.clone();
    Arc::new(move |address| {
        let Address::Escrow(id) = address else {
            return None;
        };
        let host = specie_protocol::escrow::host_of(id).0 as usize;
        if placement.institutions.get(host) != Some(&me) {
            return None;
        }
        let addr: Addr<Host<Escrow>> = node.spawn(host, Some(host as u64), blueprint.escrow(id));
        Some(addr.recipient())
    })
}

/// Rebuilds every actor of a multi-process cluster from the journals of its nodes' data
/// directories, each actor from the node the placement puts it on, read-only (the nodes must
/// be stopped, or the copy may be a little behind), and takes the snapshot an audit needs.
pub fn offline_cluster_snapshot(
    file: &specie_runtime::topology::ClusterFile,
) -> Result<crate::ClusterSnapshot, ClusterError> {
    use specie_runtime::host::{recover, Factory};
    use specie_runtime::StateMachine;

    let mut journals = Vec::with_capacity(file.nodes.len());
    let mut first: Option<DataDir> = None;
    for spec in &file.nodes {
        let dir = DataDir::open(&spec.data_dir)?;
        if let Some(f) = &first {
            if f.seed != dir.seed || f.config != dir.config {
                return Err(ClusterError::Genesis(format!(
                    "{} was created with another config or seed than {}",
                    spec.data_dir.display(),
                    f.path.display()
                )));
            }
        }
        journals.push(specie_runtime::RedbJournal::open_read_only(
            &dir.journal_path(),
        )?);
        first.get_or_insert(dir);
    }
    let dir =
        first.ok_or_else(|| ClusterError::Genesis("the cluster file lists no node".into()))?;
    let placement = &file.placement;
    let blueprint = Blueprint::new(&dir.config, dir.seed);
    let central_bank: Factory<_> = Arc::new(blueprint.central_bank());
    let central_bank = recover(&journals[placement.central_bank], &central_bank)?.snapshot();
    let mut institutions = Vec::with_capacity(blueprint.institution_count());
    for i in 0..blueprint.institution_count() {
        let factory: Factory<_> = Arc::new(blueprint.institution(i));
        institutions.push(recover(&journals[placement.institutions[i]], &factory)?.snapshot());
    }
    let mut wallets = Vec::with_capacity(blueprint.wallet_count() as usize);
    for w in 0..blueprint.wallet_count() {
        let id = WalletId(w);
        let factory: Factory<_> = Arc::new(blueprint.wallet(id, blueprint.wallet_keys(id)));
        wallets.push(recover(&journals[placement.wallet_node(w)], &factory)?.snapshot());
    }
    let mut escrow_ids: Vec<u64> = institutions
        .iter()
        .flat_map(|i| i.escrow_holds.keys().copied())
        .collect();
    escrow_ids.sort_unstable();
    let mut escrows = Vec::with_capacity(escrow_ids.len());
    for id in escrow_ids {
        let node = node_of(placement, Address::Escrow(id)).unwrap_or(placement.central_bank);
        let factory: Factory<_> = Arc::new(blueprint.escrow(id));
        escrows.push(recover(&journals[node], &factory)?.snapshot());
    }
    Ok(crate::ClusterSnapshot {
        central_bank,
        institutions,
        wallets,
        escrows,
        deposited: blueprint.deposited(),
    })
}
