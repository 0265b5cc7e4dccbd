//! The client API of a node (`proto/specie/v1/ingress.proto`): submit pay, merge, split and
//! escrow operations, query balances and saga outcomes.
//!
//! - **Idempotency.** The saga id of an operation is derived from (wallet, client key); the
//!   wallet keeps the outcome of every saga it ran, so a resubmitted key finds its saga and
//!   gets the recorded outcome back (`resubmitted: true`), and nothing starts twice.
//! - **Forwarding.** A request for a wallet that lives on another node is forwarded once to
//!   that node's ingress (marked `forwarded`, so it never travels further).
//! - **Status.** Each node keeps a durable index saga id → (wallet, kind) in its journal's
//!   meta table; a status request the node cannot answer is asked of every other node.
//! - **Readiness and draining.** Submissions are refused with `UNAVAILABLE` until
//!   [`Ingress::start_accepting`] (the node finished its part of genesis) and again after
//!   [`Ingress::stop_accepting`] (graceful shutdown); queries always answer.

use crate::member::{node_of, Member};
use crate::wallet::{EscrowCommand, SagaProgress, WalletCommand};
use dashmap::DashMap;
use specie_protocol::grpc::ingress as g;
use specie_protocol::{AbortReason, Address, Amount, CoinId, SagaId, SagaKind, WalletId};
use specie_runtime::transport::{peer_identity, PeerInfo, Role};
use specie_runtime::Notice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OnceCell};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Longest a client may ask a submission to wait for its outcome.
pub const WAIT_MS_MAX: u32 = 30_000;
/// Longest idempotency key.
pub const KEY_BYTES_MAX: usize = 128;

/// Connects to another node's ingress (the transport's TLS settings are the caller's).
pub type Connector = Arc<
    dyn Fn(usize) -> futures::future::BoxFuture<'static, Result<Channel, String>> + Send + Sync,
>;

type Waiters = Arc<DashMap<SagaId, Vec<(u64, oneshot::Sender<Result<(), AbortReason>>)>>>;

/// One call waiting for a saga's outcome; dropping it (answered, timed out, failed or
/// cancelled) removes its own registration and no other call's.
struct Waiter {
    waiters: Waiters,
    saga: SagaId,
    id: u64,
    rx: oneshot::Receiver<Result<(), AbortReason>>,
}

impl Waiter {
    /// The outcome, if it arrives within `wait`.
    async fn wait(&mut self, wait: Duration) -> Option<Result<(), AbortReason>> {
        match tokio::time::timeout(wait, &mut self.rx).await {
            Ok(Ok(result)) => Some(result),
            _ => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let empty = match self.waiters.get_mut(&self.saga) {
            Some(mut list) => {
                list.retain(|(id, _)| *id != self.id);
                list.is_empty()
            }
            None => false,
        };
        if empty {
            self.waiters
                .remove_if(&self.saga, |_, list| list.is_empty());
        }
    }
}

/// The ingress service of one node.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
}

struct Inner {
    member: Arc<Member>,
    node_ids: Vec<String>,
    connect: Connector,
    peers: Vec<OnceCell<g::ingress_client::IngressClient<Channel>>>,
    waiters: Waiters,
    next_waiter: AtomicU64,
    accepting: AtomicBool,
    in_progress: AtomicU64,
}

/// The saga id of a client operation: a digest of the wallet and the client's key.
pub fn saga_of(wallet: WalletId, key: &str) -> SagaId {
    let mut bytes = Vec::with_capacity(32 + key.len());
    bytes.extend_from_slice(b"specie-ingress-v1\0");
    bytes.extend_from_slice(&wallet.0.to_be_bytes());
    bytes.extend_from_slice(key.as_bytes());
    let digest = specie_protocol::crypto::sha256(&bytes);
    SagaId(digest[..16].try_into().expect("16 bytes"))
}

fn meta_key(saga: SagaId) -> String {
    format!("ingress:{}", hex::encode(saga.0))
}

fn state_of(result: Result<(), AbortReason>) -> (g::OperationState, String) {
    match result {
        Ok(()) => (g::OperationState::Committed, String::new()),
        Err(r) => (g::OperationState::Aborted, r.name().to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// What a submission asks a wallet to do.
struct Plan {
    wallet: WalletId,
    kind: SagaKind,
    contract: u64,
}

impl Ingress {
    /// The ingress of `member`; `node_ids` names the cluster's nodes by index and `connect`
    /// opens a channel to one of them for forwarding.
    pub fn new(member: Arc<Member>, node_ids: Vec<String>, connect: Connector) -> Ingress {
        let waiters: Waiters = Arc::new(DashMap::new());
        let w = waiters.clone();
        member.node().observe(Arc::new(move |n: &Notice| {
            if let Address::Wallet(_) = n.source {
                if let Some((_, senders)) = w.remove(&n.saga_id) {
                    for (_, s) in senders {
                        let _ = s.send(n.outcome.result);
                    }
                }
            }
        }));
        let peers = node_ids.iter().map(|_| OnceCell::new()).collect();
        Ingress {
            inner: Arc::new(Inner {
                member,
                node_ids,
                connect,
                peers,
                waiters,
                next_waiter: AtomicU64::new(0),
                accepting: AtomicBool::new(false),
                in_progress: AtomicU64::new(0),
            }),
        }
    }

    /// The tonic service to add to the node's gRPC server.
    pub fn service(&self) -> g::ingress_server::IngressServer<Ingress> {
        g::ingress_server::IngressServer::new(self.clone())
    }

    /// Takes submissions from now on.
    pub fn start_accepting(&self) {
        self.inner.accepting.store(true, Ordering::SeqCst);
    }

    /// Refuses new submissions from now on (queries still answer).
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
    }

    /// Submissions being handled right now.
    pub fn in_progress(&self) -> u64 {
        self.inner.in_progress.load(Ordering::SeqCst)
    }

    async fn peer(&self, node: usize) -> Result<g::ingress_client::IngressClient<Channel>, Status> {
        let cell = &self.inner.peers[node];
        let client = cell
            .get_or_try_init(|| async {
                (self.inner.connect)(node)
                    .await
                    .map(g::ingress_client::IngressClient::new)
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "node {} is unreachable: {e}",
                            self.inner.node_ids[node]
                        ))
                    })
            })
            .await?;
        Ok(client.clone())
    }

    fn check_wallet(&self, w: u64) -> Result<WalletId, Status> {
        let count = self.inner.member.blueprint().wallet_count();
        if w >= count {
            return Err(Status::invalid_argument(format!(
                "no wallet {w}: the cluster has wallets 0 to {}",
                count - 1
            )));
        }
        Ok(WalletId(w))
    }

    /// The node of a wallet, `None` when it is this one.
    fn remote_node(&self, w: WalletId) -> Option<usize> {
        let node = node_of(self.inner.member.placement(), Address::Wallet(w))?;
        (node != self.inner.member.index()).then_some(node)
    }

    fn this_node(&self) -> String {
        self.inner.node_ids[self.inner.member.index()].clone()
    }

    /// Registers a wait for the outcome of `saga` (before asking or submitting, so an outcome
    /// published meanwhile is not missed).
    fn register(&self, saga: SagaId) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.inner.waiters.entry(saga).or_default().push((id, tx));
        Waiter {
            waiters: self.inner.waiters.clone(),
            saga,
            id,
            rx,
        }
    }

    /// Waits for the outcome of `saga` at wallet `w` for up to `wait`; asks the wallet first,
    /// so an outcome reached before the call is found.
    async fn outcome(
        &self,
        w: WalletId,
        saga: SagaId,
        wait: Duration,
    ) -> Result<Option<SagaProgress>, Status> {
        let mut waiter = self.register(saga);
        let progress = self
            .inner
            .member
            .saga_progress(w, saga)
            .await
            .map_err(internal)?;
        if !matches!(progress, Some(SagaProgress::InFlight)) || wait.is_zero() {
            return Ok(progress);
        }
        Ok(Some(match waiter.wait(wait).await {
            Some(result) => SagaProgress::Finished(result),
            None => SagaProgress::InFlight,
        }))
    }

    fn plan(&self, op: &g::submit_request::Op, saga: SagaId) -> Result<Plan, Status> {
        use g::submit_request::Op;
        let blueprint = self.inner.member.blueprint();
        Ok(match op {
            Op::Pay(p) => Plan {
                wallet: self.check_wallet(p.from)?,
                kind: SagaKind::Pay,
                contract: 0,
            },
            Op::Merge(m) => Plan {
                wallet: self.check_wallet(m.wallet)?,
                kind: SagaKind::Merge,
                contract: 0,
            },
            Op::Split(s) => Plan {
                wallet: self.check_wallet(s.wallet)?,
                kind: SagaKind::Split,
                contract: 0,
            },
            Op::EscrowOpen(e) => {
                let payer = self.check_wallet(e.payer)?;
                let serial = u64::from_be_bytes(saga.0[..8].try_into().expect("8 bytes"));
                Plan {
                    wallet: payer,
                    kind: SagaKind::EscrowDeposit,
                    contract: specie_protocol::escrow::contract_id(
                        blueprint.institution_of(payer),
                        serial,
                    ),
                }
            }
            Op::EscrowClaim(e) => Plan {
                wallet: self.check_wallet(e.merchant)?,
                kind: SagaKind::EscrowClaim,
                contract: e.contract,
            },
            Op::EscrowRelease(e) => Plan {
                wallet: self.check_wallet(e.payer)?,
                kind: SagaKind::EscrowRelease,
                contract: e.contract,
            },
        })
    }

    /// The wallet command of an operation (reading the wallet's coins where the request
    /// leaves the choice to the node).
    async fn command(
        &self,
        op: g::submit_request::Op,
        plan: &Plan,
        saga: SagaId,
    ) -> Result<WalletCommand, Status> {
        use g::submit_request::Op;
        let member = &self.inner.member;
        let coin_id = |bytes: &[u8]| -> Result<CoinId, Status> {
            <[u8; 32]>::try_from(bytes)
                .map(CoinId)
                .map_err(|_| Status::invalid_argument("a coin id is 32 bytes"))
        };
        Ok(match op {
            Op::Pay(p) => {
                let payee = self.check_wallet(p.to)?;
                if p.amount == 0 {
                    return Err(Status::invalid_argument("amount must be positive"));
                }
                WalletCommand::Pay {
                    saga,
                    payee,
                    payee_institution: member.blueprint().institution_of(payee),
                    amount: Amount(p.amount),
                    coins: None,
                }
            }
            Op::Merge(m) => {
                let coins = if m.coin_ids.is_empty() {
                    let snapshot = member
                        .wallet_snapshot(plan.wallet)
                        .await
                        .map_err(internal)?;
                    snapshot.coins.iter().map(|c| c.id).collect()
                } else {
                    m.coin_ids
                        .iter()
                        .map(|b| coin_id(b))
                        .collect::<Result<Vec<_>, _>>()?
                };
                if coins.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "wallet {} holds no coins to merge",
                        plan.wallet
                    )));
                }
                WalletCommand::Merge { saga, coins }
            }
            Op::Split(s) => {
                let coin = if s.coin_id.is_empty() {
                    let snapshot = member
                        .wallet_snapshot(plan.wallet)
                        .await
                        .map_err(internal)?;
                    snapshot
                        .coins
                        .iter()
                        .max_by_key(|c| c.value())
                        .map(|c| c.id)
                        .ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "wallet {} holds no coin to split",
                                plan.wallet
                            ))
                        })?
                } else {
                    coin_id(&s.coin_id)?
                };
                WalletCommand::Split {
                    saga,
                    coin,
                    amount: Amount(s.amount),
                }
            }
            Op::EscrowOpen(e) => {
                let merchant = self.check_wallet(e.merchant)?;
                if e.cap == 0 || e.ttl_ms == 0 || e.ttl_ms > 86_400_000 {
                    return Err(Status::invalid_argument(
                        "cap must be positive and ttl_ms 1 to 86400000",
                    ));
                }
                let now = member.node().clock().now_ms();
                WalletCommand::Escrow(EscrowCommand::Deposit {
                    saga,
                    contract: plan.contract,
                    merchant,
                    merchant_institution: member.blueprint().institution_of(merchant),
                    cap: Amount(e.cap),
                    expires_at_ms: now + e.ttl_ms,
                })
            }
            Op::EscrowClaim(e) => WalletCommand::Escrow(EscrowCommand::Claim {
                saga,
                contract: e.contract,
                claim_id: e.claim_id,
                amount: Amount(e.amount),
            }),
            Op::EscrowRelease(e) => WalletCommand::Escrow(EscrowCommand::Release {
                saga,
                contract: e.contract,
            }),
        })
    }

    async fn submit_local(&self, req: g::SubmitRequest) -> Result<g::SubmitReply, Status> {
        let op = req
            .op
            .ok_or_else(|| Status::invalid_argument("the request names no operation"))?;
        let key = req.idempotency_key;
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "idempotency_key must be 1 to {KEY_BYTES_MAX} bytes"
            )));
        }
        let wait = Duration::from_millis(u64::from(req.wait_ms.min(WAIT_MS_MAX)));
        // The saga id depends on the initiating wallet, which the plan names.
        let probe = self.plan(&op, SagaId::NONE)?;
        let saga = saga_of(probe.wallet, &key);
        let plan = self.plan(&op, saga)?;
        if let Some(node) = self.remote_node(plan.wallet) {
            if req.forwarded {
                return Err(Status::failed_precondition(
                    "forwarded to a node that does not hold the wallet (cluster files differ?)",
                ));
            }
            let mut peer = self.peer(node).await?;
            let forwarded = g::SubmitRequest {
                idempotency_key: key,
                op: Some(op),
                wait_ms: req.wait_ms,
                forwarded: true,
            };
            metrics::counter!("specie_ingress_forwarded_total", "rpc" => "submit").increment(1);
            return peer.submit(forwarded).await.map(Response::into_inner);
        }
        let reply = |state: (g::OperationState, String), resubmitted: bool| g::SubmitReply {
            saga_id: saga.0.to_vec().into(),
            state: state.0 as i32,
            reason: state.1,
            resubmitted,
            node: self.this_node(),
            contract: plan.contract,
            kind: plan.kind.name().to_string(),
        };
        let member = &self.inner.member;
        let known = member
            .saga_progress(plan.wallet, saga)
            .await
            .map_err(internal)?;
        if known.is_some() {
            let progress = self.outcome(plan.wallet, saga, wait).await?;
            return Ok(match progress {
                Some(SagaProgress::Finished(r)) => reply(state_of(r), true),
                _ => reply((g::OperationState::Pending, String::new()), true),
            });
        }
        let command = self.command(op, &plan, saga).await?;
        // Indexed before it starts, so a status request finds it from now on.
        let mut index = Vec::with_capacity(9);
        index.extend_from_slice(&plan.wallet.0.to_be_bytes());
        index.extend_from_slice(plan.kind.name().as_bytes());
        // A durable redb transaction: off the gRPC thread, which also carries the peer links.
        let journal = member.journal().clone();
        tokio::task::spawn_blocking(move || journal.set_meta(&meta_key(saga), &index))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let mut waiter = self.register(saga);
        let started = Instant::now();
        member
            .submit(plan.wallet, command)
            .await
            .map_err(internal)?;
        let state = match waiter.wait(wait).await {
            Some(Err(AbortReason::Conflict)) => {
                // Started concurrently under the same key: report that saga's state.
                match self.outcome(plan.wallet, saga, wait).await? {
                    Some(SagaProgress::Finished(r)) => return Ok(reply(state_of(r), true)),
                    _ => return Ok(reply((g::OperationState::Pending, String::new()), true)),
                }
            }
            Some(r) => {
                metrics::histogram!("specie_saga_duration_seconds", "kind" => plan.kind.name())
                    .record(started.elapsed().as_secs_f64());
                state_of(r)
            }
            None => (g::OperationState::Pending, String::new()),
        };
        Ok(reply(state, false))
    }

    async fn balance_local(
        &self,
        req: g::WalletBalanceRequest,
    ) -> Result<g::WalletBalanceReply, Status> {
        let w = self.check_wallet(req.wallet)?;
        if let Some(node) = self.remote_node(w) {
            if req.forwarded {
                return Err(Status::failed_precondition(
                    "forwarded to a node that does not hold the wallet",
                ));
            }
            let mut peer = self.peer(node).await?;
            metrics::counter!("specie_ingress_forwarded_total", "rpc" => "balance").increment(1);
            return peer
                .balance(g::WalletBalanceRequest {
                    wallet: req.wallet,
                    forwarded: true,
                })
                .await
                .map(Response::into_inner);
        }
        let s = self
            .inner
            .member
            .wallet_snapshot(w)
            .await
            .map_err(internal)?;
        Ok(g::WalletBalanceReply {
            wallet: w.0,
            coins_total: s.coins.iter().map(|c| c.value().0).sum(),
            coins: s
                .coins
                .iter()
                .map(|c| g::CoinSummary {
                    id: c.id.0.to_vec().into(),
                    issuer: c.body.issuer.0,
                    value: c.value().0,
                })
                .collect(),
            pending: s.pending as u32,
            node: self.this_node(),
        })
    }

    async fn status_local(&self, req: g::SagaStatusRequest) -> Result<g::SagaStatusReply, Status> {
        let saga = SagaId(
            <[u8; 16]>::try_from(&req.saga_id[..])
                .map_err(|_| Status::invalid_argument("a saga id is 16 bytes"))?,
        );
        let unknown = g::SagaStatusReply {
            saga_id: req.saga_id.clone(),
            state: g::OperationState::Unknown as i32,
            reason: String::new(),
            node: self.this_node(),
            wallet: 0,
            kind: String::new(),
        };
        let member = &self.inner.member;
        let journal = member.journal().clone();
        let index = tokio::task::spawn_blocking(move || journal.meta(&meta_key(saga)))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        if let Some(index) = index {
            if index.len() >= 8 {
                let w = WalletId(u64::from_be_bytes(index[..8].try_into().expect("8 bytes")));
                let kind = String::from_utf8_lossy(&index[8..]).into_owned();
                let (state, reason) = match member.saga_progress(w, saga).await.map_err(internal)? {
                    Some(SagaProgress::Finished(r)) => state_of(r),
                    Some(SagaProgress::InFlight) => (g::OperationState::Pending, String::new()),
                    // Indexed, then the node stopped before the wallet took it.
                    None => (g::OperationState::Unknown, String::new()),
                };
                return Ok(g::SagaStatusReply {
                    state: state as i32,
                    reason,
                    wallet: w.0,
                    kind,
                    ..unknown
                });
            }
        }
        if req.forwarded {
            return Ok(unknown);
        }
        for node in 0..self.inner.node_ids.len() {
            if node == member.index() {
                continue;
            }
            let Ok(mut peer) = self.peer(node).await else {
                continue;
            };
            let asked = peer
                .status(g::SagaStatusRequest {
                    saga_id: req.saga_id.clone(),
                    forwarded: true,
                })
                .await;
            if let Ok(reply) = asked {
                let reply = reply.into_inner();
                if reply.state != g::OperationState::Unknown as i32 {
                    return Ok(reply);
                }
            }
        }
        Ok(unknown)
    }
}

/// Who is calling: with mutual TLS only clients (`client:`) and nodes (`node:`, forwarding)
/// are served; in plaintext mode (explicitly configured) anyone. Returns whether the caller
/// may forward (a node, or anyone in plaintext): a `forwarded` flag from a client is ignored.
fn caller<T>(request: &Request<T>) -> Result<bool, Status> {
    let info = request.extensions().get::<PeerInfo>();
    if !info.is_some_and(|i| i.tls) {
        return Ok(true);
    }
    match peer_identity(request).map(|id| id.role) {
        Some(Role::Node) => Ok(true),
        Some(Role::Client) => Ok(false),
        Some(Role::Admin) | None => {
            metrics::counter!("specie_ingress_refused_total", "reason" => "role").increment(1);
            Err(Status::permission_denied(
                "the ingress serves client and node certificates only",
            ))
        }
    }
}

#[tonic::async_trait]
impl g::ingress_server::Ingress for Ingress {
    async fn submit(
        &self,
        request: Request<g::SubmitRequest>,
    ) -> Result<Response<g::SubmitReply>, Status> {
        let from_node = caller(&request)?;
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "the node is not taking operations: starting (genesis) or shutting down",
            ));
        }
        // Counted down when the call ends, also when the client goes away and tonic drops it.
        struct InProgress<'a>(&'a AtomicU64);
        impl Drop for InProgress<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.in_progress.fetch_add(1, Ordering::SeqCst);
        let _guard = InProgress(&self.inner.in_progress);
        let mut request = request.into_inner();
        request.forwarded &= from_node;
        self.submit_local(request).await.map(Response::new)
    }

    async fn balance(
        &self,
        request: Request<g::WalletBalanceRequest>,
    ) -> Result<Response<g::WalletBalanceReply>, Status> {
        let from_node = caller(&request)?;
        let mut request = request.into_inner();
        request.forwarded &= from_node;
        self.balance_local(request).await.map(Response::new)
    }

    async fn status(
        &self,
        request: Request<g::SagaStatusRequest>,
    ) -> Result<Response<g::SagaStatusReply>, Status> {
        let from_node = caller(&request)?;
        let mut request = request.into_inner();
        request.forwarded &= from_node;
        self.status_local(request).await.map(Response::new)
    }
}

/// Counts every saga outcome a wallet of this node reports:
/// `specie_sagas_committed_total{kind}` and `specie_sagas_aborted_total{kind,reason}`.
pub fn count_outcomes(member: &Member) {
    member.node().observe(Arc::new(|n: &Notice| {
        if !matches!(n.source, Address::Wallet(_)) {
            return;
        }
        let kind = n.outcome.kind.name();
        match n.outcome.result {
            Ok(()) => {
                metrics::counter!("specie_sagas_committed_total", "kind" => kind).increment(1)
            }
            Err(reason) => metrics::counter!(
                "specie_sagas_aborted_total",
                "kind" => kind,
                "reason" => reason.name()
            )
            .increment(1),
        }
    }));
}
