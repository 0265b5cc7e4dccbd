//! Peer links: envelopes between the nodes of a cluster over long-lived gRPC streams.
//!
//! There is one `Peer.Link` stream per pair of nodes, opened (and re-opened) by the node whose
//! id sorts first, and it carries envelopes both ways: each side sends a hello frame with its
//! node id, then envelope frames. The dialing side reconnects with exponential backoff and
//! jitter whenever the stream breaks; the other side waits to be dialed again.
//!
//! **Routing.** [`Transport::start`] installs a [`RemoteRoute`] in the [`Network`]: after the
//! fault hook (so the same faults apply between processes as inside one), each delivery whose
//! address the placement puts on another node is queued for that node's link; the others are
//! delivered to local mailboxes. The receiving node hands the bytes to its own network
//! (`deliver_bytes`), whose host decodes and validates them like any delivery.
//!
//! **Back-pressure.** Each peer has a bounded queue (`queue_capacity`). When it is full, the
//! delivery parks in a spawned task until there is room (as the network does for a full
//! mailbox), so a slow or unreachable peer slows its senders instead of growing a queue.
//! Behind the queue, HTTP/2 flow control paces the stream.
//!
//! **Delivery guarantees.** Envelopes queued while a peer is unreachable are sent once the
//! link is back. What was already handed to a stream that then broke (a few frames of buffer)
//! may be lost, and a peer that restarts loses what was in its mailboxes: that is what the
//! at-least-once rules of the sagas are for — every saga step is retried from its journal
//! until answered, and receivers deduplicate, so a lost envelope delays a saga and a
//! duplicate is absorbed. The transport never retries on its own.
//!
//! **Security.** With mutual TLS, only connections presenting a `node:<id>` certificate may
//! open a link, and the hello must name the same node; the dialer checks the server's
//! certificate names the node it dialed (the node id is a SAN of every node certificate).

use super::tls::{peer_identity, Role, TlsMode};
use super::{endpoint, error_chain, TransportError};
use crate::network::{Network, RemoteRoute, Routed};
use bytes::Bytes;
use rand::Rng;
use specie_protocol::grpc::peer::{
    Peer, PeerClient, PeerEnvelope, PeerFrame, PeerFrameKind, PeerHello, PeerServer,
};
use specie_protocol::Address;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// How long the other side has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames buffered between a link's queue and its stream (lost if the stream breaks).
const STREAM_BUFFER: usize = 32;

/// Which peer (index into [`TransportSettings::peers`]) hosts an address; `None` when it
/// lives on this node.
pub type Placement = Arc<dyn Fn(Address) -> Option<usize> + Send + Sync>;

/// A peer node: its id (as in the cluster config, and in its certificate `node:<id>`) and
/// its gRPC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// The node id.
    pub id: String,
    /// `host:port` of its gRPC server.
    pub address: String,
}

impl PeerAddress {
    /// A peer `id` at `address` (`host:port`).
    pub fn new(id: impl Into<String>, address: impl Into<String>) -> PeerAddress {
        PeerAddress {
            id: id.into(),
            address: address.into(),
        }
    }
}

/// The settings of a node's transport.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// This node's id.
    pub node_id: String,
    /// The other nodes of the cluster (not this one).
    pub peers: Vec<PeerAddress>,
    /// Mutual TLS or, when the config says so explicitly, plaintext.
    pub tls: TlsMode,
    /// The first reconnect delay (default 100 ms); it doubles per failed attempt.
    pub backoff_base: Duration,
    /// The longest reconnect delay (default 5 s). Each delay is drawn in [d/2, d].
    pub backoff_cap: Duration,
    /// TCP connect timeout of a dial (default 5 s).
    pub connect_timeout: Duration,
    /// Envelopes queued per peer before senders park (default 4096).
    pub queue_capacity: usize,
    /// At shutdown, how long links may take to flush their queues (default 2 s).
    pub drain_timeout: Duration,
}

impl TransportSettings {
    /// Settings with the defaults above.
    pub fn new(node_id: impl Into<String>, peers: Vec<PeerAddress>, tls: TlsMode) -> Self {
        TransportSettings {
            node_id: node_id.into(),
            peers,
            tls,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
            drain_timeout: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        let bad = |m: String| Err(TransportError::Settings(m));
        if self.node_id.is_empty() {
            return bad("the node id is empty".into());
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.id == self.node_id {
                return bad(format!("peer {} is this node itself", peer.id));
            }
            if self.peers[..i].iter().any(|p| p.id == peer.id) {
                return bad(format!("peer {} is listed twice", peer.id));
            }
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1".into());
        }
        if self.backoff_base.is_zero() || self.backoff_cap < self.backoff_base {
            return bad(format!(
                "backoff must satisfy 0 < base ({:?}) <= cap ({:?})",
                self.backoff_base, self.backoff_cap
            ));
        }
        Ok(())
    }
}

/// One peer's link state.
struct Link {
    id: String,
    address: String,
    /// Whether this node opens the stream (its id sorts first).
    dialer: bool,
    tx: mpsc::Sender<PeerEnvelope>,
    /// The queue's receiving end, held by the stream currently serving this peer.
    queue: tokio::sync::Mutex<mpsc::Receiver<PeerEnvelope>>,
    /// Bumped by each new stream of this peer; an older stream seeing it change gives up
    /// the queue to the newer one.
    generation: watch::Sender<u64>,
    connected: AtomicBool,
    /// Senders parked because the queue was full (at most the queue's capacity again).
    parked: Arc<AtomicUsize>,
}

impl Link {
    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        metrics::gauge!("specie_peer_connected", "peer" => self.id.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }
}

struct Shared {
    node_id: String,
    network: Network,
    settings: TransportSettings,
    links: Vec<Link>,
    runtime: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    /// Live link tasks (dialers and streams), for shutdown to wait on.
    tasks: watch::Sender<usize>,
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Queues `bytes` for the peer at `index`. When the queue is full the send parks in a task
    /// until there is room — at most as many parked sends as the queue holds; beyond that (a
    /// peer down for long under load) the envelope is dropped and counted, and the sagas'
    /// retries send it again later. Parked sends give up when the transport stops.
    fn enqueue(&self, index: usize, to: Address, bytes: Bytes) {
        let link = &self.links[index];
        if self.stopping() {
            metrics::counter!("specie_envelopes_total", "direction" => "remote_dropped")
                .increment(1);
            return;
        }
        let (kind, id) = to.code();
        let frame = PeerEnvelope {
            to_kind: u32::from(kind),
            to_id: id,
            envelope: bytes,
        };
        match link.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                metrics::counter!("specie_peer_queue_full_total", "peer" => link.id.clone())
                    .increment(1);
                if link.parked.fetch_add(1, Ordering::AcqRel) >= self.settings.queue_capacity {
                    link.parked.fetch_sub(1, Ordering::AcqRel);
                    metrics::counter!("specie_envelopes_total", "direction" => "remote_dropped")
                        .increment(1);
                    return;
                }
                let (tx, parked) = (link.tx.clone(), link.parked.clone());
                let mut stop = self.stop.subscribe();
                self.runtime.spawn(async move {
                    tokio::select! {
                        _ = tx.send(frame) => {}
                        _ = stop.wait_for(|stopped| *stopped) => {}
                    }
                    parked.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!("specie_envelopes_total", "direction" => "remote_dropped")
                    .increment(1);
            }
        }
    }

    /// Counts a live task until the guard drops.
    fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.send_modify(|n| *n += 1);
        TaskGuard(self.clone())
    }
}

struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The network's route to the other nodes. Holds the transport weakly, so the network (which
/// the transport holds) does not keep it alive; once the transport is gone, envelopes for
/// other nodes are dropped (and counted), never delivered locally.
struct Route {
    placement: Placement,
    peers: usize,
    shared: Weak<Shared>,
}

impl RemoteRoute for Route {
    fn route(&self, to: Address, bytes: Bytes) -> Routed {
        match (self.placement)(to) {
            Some(index) if index < self.peers => {
                match self.shared.upgrade() {
                    Some(shared) => shared.enqueue(index, to, bytes),
                    None => {
                        metrics::counter!("specie_envelopes_total", "direction" => "remote_dropped")
                            .increment(1);
                    }
                }
                Routed::Remote
            }
            _ => Routed::Local(bytes),
        }
    }
}

/// The transport of one node: its peer links and the `Peer` service that accepts the links
/// other nodes open. Dropping it stops the links; [`Transport::shutdown`] also waits for them
/// to flush and close.
pub struct Transport {
    shared: Arc<Shared>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.shared.node_id)
            .field("connected", &self.connected_peers())
            .finish()
    }
}

impl Transport {
    /// Starts the transport of node `settings.node_id`: installs the remote route in
    /// `network` (addresses for which `placement` names a peer go over that peer's link) and
    /// starts dialing the peers whose id sorts after this node's. Serve
    /// [`Transport::peer_service`] on this node's gRPC server so the others can link to it.
    /// Must be called inside a tokio runtime (the links run on it).
    pub fn start(
        network: Network,
        settings: TransportSettings,
        placement: Placement,
    ) -> Result<Transport, TransportError> {
        settings.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let links = settings
            .peers
            .iter()
            .map(|peer| {
                let (tx, rx) = mpsc::channel(settings.queue_capacity);
                Link {
                    id: peer.id.clone(),
                    address: peer.address.clone(),
                    dialer: settings.node_id < peer.id,
                    tx,
                    queue: tokio::sync::Mutex::new(rx),
                    generation: watch::Sender::new(0),
                    connected: AtomicBool::new(false),
                    parked: Arc::new(AtomicUsize::new(0)),
                }
            })
            .collect::<Vec<_>>();
        for link in &links {
            link.set_connected(false);
        }
        let shared = Arc::new(Shared {
            node_id: settings.node_id.clone(),
            network: network.clone(),
            links,
            runtime: runtime.clone(),
            stop: watch::Sender::new(false),
            tasks: watch::Sender::new(0),
            settings,
        });
        network.set_remote(Some(Arc::new(Route {
            placement,
            peers: shared.links.len(),
            shared: Arc::downgrade(&shared),
        })));
        for (index, link) in shared.links.iter().enumerate() {
            if link.dialer {
                let guard = shared.task();
                runtime.spawn(dial_loop(shared.clone(), index, guard));
            }
        }
        Ok(Transport { shared })
    }

    /// The `Peer` gRPC service, to add to this node's tonic server.
    pub fn peer_service(&self) -> PeerServer<PeerService> {
        PeerServer::new(PeerService {
            shared: self.shared.clone(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Whether the link to peer `id` is up.
    pub fn is_connected(&self, id: &str) -> bool {
        self.shared
            .links
            .iter()
            .any(|l| l.id == id && l.connected.load(Ordering::Acquire))
    }

    /// The peers whose link is up.
    pub fn connected_peers(&self) -> Vec<String> {
        self.shared
            .links
            .iter()
            .filter(|l| l.connected.load(Ordering::Acquire))
            .map(|l| l.id.clone())
            .collect()
    }

    /// Stops the links: no more dialing, queued envelopes are flushed into the open streams
    /// (for at most `drain_timeout`), then every stream — including those other nodes opened
    /// to this one — is closed. Call it before shutting down the gRPC server: a graceful
    /// server shutdown waits for open streams. Envelopes for other nodes sent afterwards are
    /// dropped (the sagas retry them from their journals after a restart).
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let mut tasks = self.shared.tasks.subscribe();
        let grace = self.shared.settings.drain_timeout + Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, tasks.wait_for(|n| *n == 0)).await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

/// The server side of the peer links (the `Peer` gRPC service).
pub struct PeerService {
    shared: Arc<Shared>,
}

impl fmt::Debug for PeerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerService")
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

fn hello(node_id: &str) -> PeerFrame {
    PeerFrame {
        kind: Some(PeerFrameKind::Hello(PeerHello {
            node_id: node_id.to_string(),
        })),
    }
}

fn refuse(reason: &'static str, status: Status) -> Status {
    metrics::counter!("specie_peer_links_refused_total", "reason" => reason).increment(1);
    status
}

#[tonic::async_trait]
impl Peer for PeerService {
    type LinkStream = Pin<Box<dyn Stream<Item = Result<PeerFrame, Status>> + Send + 'static>>;

    async fn link(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let shared = &self.shared;
        let identity = peer_identity(&request);
        if shared.settings.tls.is_tls() {
            match &identity {
                Some(identity) if identity.role == Role::Node => {}
                other => {
                    let who = other
                        .as_ref()
                        .map_or_else(|| "no recognised identity".to_string(), |i| i.to_string());
                    return Err(refuse(
                        "not_a_node",
                        Status::permission_denied(format!(
                            "peer links are open to node certificates only; this connection presented {who}"
                        )),
                    ));
                }
            }
        }
        if shared.stopping() {
            return Err(Status::unavailable(format!(
                "node {} is shutting down",
                shared.node_id
            )));
        }
        let mut inbound = request.into_inner();
        let hello_frame = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(PeerFrame {
                kind: Some(PeerFrameKind::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            _ => {
                return Err(refuse(
                    "no_hello",
                    Status::invalid_argument("a peer link starts with a hello frame"),
                ))
            }
        };
        if let Some(identity) = &identity {
            if identity.name != hello_frame.node_id {
                return Err(refuse(
                    "hello_mismatch",
                    Status::permission_denied(format!(
                        "the certificate is {identity} but the hello says node {}",
                        hello_frame.node_id
                    )),
                ));
            }
        }
        let Some(index) = shared
            .links
            .iter()
            .position(|l| l.id == hello_frame.node_id)
        else {
            return Err(refuse(
                "unknown_node",
                Status::permission_denied(format!(
                    "node {} is not a peer of node {} in its cluster config",
                    hello_frame.node_id, shared.node_id
                )),
            ));
        };
        let (out, out_rx) = mpsc::channel(STREAM_BUFFER);
        let _ = out.try_send(hello(&shared.node_id));
        let guard = shared.task();
        let task_shared = shared.clone();
        shared.runtime.spawn(async move {
            let _guard = guard;
            let end = run_link(&task_shared, index, inbound, out).await;
            let link = &task_shared.links[index];
            if let LinkEnd::Lost(reason) = end {
                eprintln!(
                    "specie: peer link {} <- {} lost: {reason}; waiting for {} to reconnect",
                    task_shared.node_id, link.id, link.id
                );
            }
        });
        let stream: Self::LinkStream = Box::pin(ReceiverStream::new(out_rx).map(Ok));
        Ok(Response::new(stream))
    }
}

/// How a link's stream ended.
enum LinkEnd {
    /// The transport is stopping.
    Stopped,
    /// A newer stream of the same peer took over.
    Preempted,
    /// The stream broke or the peer closed it.
    Lost(String),
}

/// Serves one established stream of peer `index` until it ends: frames from the peer go to
/// local mailboxes; the peer's queue feeds the stream.
async fn run_link(
    shared: &Arc<Shared>,
    index: usize,
    inbound: Streaming<PeerFrame>,
    out: mpsc::Sender<PeerFrame>,
) -> LinkEnd {
    let link = &shared.links[index];
    let mut my_generation = 0;
    link.generation.send_modify(|g| {
        *g += 1;
        my_generation = *g;
    });
    let mut generation = link.generation.subscribe();
    let mut stop = shared.stop.subscribe();
    let mut queue = tokio::select! {
        queue = link.queue.lock() => queue,
        _ = generation.wait_for(|g| *g != my_generation) => return LinkEnd::Preempted,
        _ = stop.wait_for(|s| *s) => return LinkEnd::Stopped,
    };
    link.set_connected(true);
    let reader = read_frames(shared, inbound);
    tokio::pin!(reader);
    let end = {
        let writer = write_frames(
            &mut queue,
            out,
            shared.stop.subscribe(),
            shared.settings.drain_timeout,
        );
        tokio::select! {
            reason = &mut reader => LinkEnd::Lost(reason),
            stopped = writer => if stopped {
                LinkEnd::Stopped
            } else {
                LinkEnd::Lost("the stream was closed".into())
            },
            _ = generation.wait_for(|g| *g != my_generation) => LinkEnd::Preempted,
        }
    };
    if matches!(end, LinkEnd::Stopped) {
        // Our side is closed (the writer dropped its sender after flushing): let the peer
        // read what is in flight and close its side, for a bounded time.
        let _ = tokio::time::timeout(shared.settings.drain_timeout, &mut reader).await;
    }
    drop(queue);
    if *link.generation.borrow() == my_generation {
        link.set_connected(false);
    }
    end
}

/// Delivers the peer's envelope frames to local mailboxes until the stream ends; returns why
/// it ended.
async fn read_frames(shared: &Shared, mut inbound: Streaming<PeerFrame>) -> String {
    loop {
        match inbound.message().await {
            Ok(Some(PeerFrame {
                kind: Some(PeerFrameKind::Envelope(frame)),
            })) => {
                let to = u8::try_from(frame.to_kind)
                    .ok()
                    .and_then(|kind| Address::from_code(kind, frame.to_id));
                match to {
                    Some(to) => {
                        metrics::counter!("specie_envelopes_total", "direction" => "received_remote")
                            .increment(1);
                        shared.network.deliver_bytes(to, frame.envelope);
                    }
                    None => {
                        metrics::counter!("specie_envelopes_rejected_total", "reason" => "bad_peer_address")
                            .increment(1);
                    }
                }
            }
            Ok(Some(_)) => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "bad_peer_frame")
                    .increment(1);
            }
            Ok(None) => return "closed by the peer".into(),
            Err(status) => return format!("{}: {}", status.code(), status.message()),
        }
    }
}

/// Moves frames from the peer's queue into the stream. Takes a frame off the queue only once
/// the stream has room for it, so nothing is held in hand when the stream breaks. Returns
/// `true` when stopped (after flushing the queue for at most `drain`), `false` when the
/// stream closed.
async fn write_frames(
    queue: &mut mpsc::Receiver<PeerEnvelope>,
    out: mpsc::Sender<PeerFrame>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> bool {
    let frame = |envelope| PeerFrame {
        kind: Some(PeerFrameKind::Envelope(envelope)),
    };
    loop {
        let permit = tokio::select! {
            permit = out.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let envelope = tokio::select! {
            envelope = queue.recv() => match envelope {
                Some(envelope) => envelope,
                None => return false,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        permit.send(frame(envelope));
        metrics::counter!("specie_envelopes_total", "direction" => "sent_remote").increment(1);
    }
    let deadline = tokio::time::Instant::now() + drain;
    while let Ok(envelope) = queue.try_recv() {
        match tokio::time::timeout_at(deadline, out.send(frame(envelope))).await {
            Ok(Ok(())) => {
                metrics::counter!("specie_envelopes_total", "direction" => "sent_remote")
                    .increment(1);
            }
            _ => break,
        }
    }
    true
}

/// The delay before reconnect attempt `attempt` (0-based): `base * 2^attempt`, capped, drawn
/// uniformly in [d/2, d] so that nodes restarting together do not dial in lockstep.
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let half = full / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

/// Dials peer `index` for as long as the transport runs, re-dialing with backoff whenever the
/// stream cannot be opened or breaks.
async fn dial_loop(shared: Arc<Shared>, index: usize, _guard: TaskGuard) {
    let link = &shared.links[index];
    let settings = &shared.settings;
    let mut stop = shared.stop.subscribe();
    let mut attempt: u32 = 0;
    let mut failing = false;
    loop {
        if shared.stopping() {
            return;
        }
        match dial_once(&shared, index).await {
            Ok(stream) => {
                attempt = 0;
                failing = false;
                eprintln!(
                    "specie: peer link {} -> {} ({}) up",
                    shared.node_id, link.id, link.address
                );
                let (inbound, out) = stream;
                match run_link(&shared, index, inbound, out).await {
                    LinkEnd::Stopped => return,
                    LinkEnd::Preempted => {}
                    LinkEnd::Lost(reason) => eprintln!(
                        "specie: peer link {} -> {} lost: {reason}; reconnecting",
                        shared.node_id, link.id
                    ),
                }
            }
            Err(reason) => {
                if !failing {
                    eprintln!(
                        "specie: peer link {} -> {} ({}): {reason}; retrying with backoff",
                        shared.node_id, link.id, link.address
                    );
                    failing = true;
                }
                metrics::counter!("specie_peer_dial_failures_total", "peer" => link.id.clone())
                    .increment(1);
            }
        }
        let delay = backoff_delay(settings.backoff_base, settings.backoff_cap, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

type OpenStream = (Streaming<PeerFrame>, mpsc::Sender<PeerFrame>);

/// Connects to peer `index`, opens the link and exchanges hellos.
async fn dial_once(shared: &Arc<Shared>, index: usize) -> Result<OpenStream, String> {
    let link = &shared.links[index];
    let settings = &shared.settings;
    let mut stop = shared.stop.subscribe();
    let open = async {
        let endpoint = endpoint(
            &link.address,
            &link.id,
            &settings.tls,
            settings.connect_timeout,
        )
        .map_err(|e| e.to_string())?;
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        let (out, out_rx) = mpsc::channel(STREAM_BUFFER);
        let _ = out.try_send(hello(&shared.node_id));
        let response = PeerClient::new(channel)
            .link(ReceiverStream::new(out_rx))
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        let mut inbound = response.into_inner();
        match inbound.message().await {
            Ok(Some(PeerFrame {
                kind: Some(PeerFrameKind::Hello(hello)),
            })) if hello.node_id == link.id => Ok((inbound, out)),
            Ok(Some(PeerFrame {
                kind: Some(PeerFrameKind::Hello(hello)),
            })) => Err(format!(
                "{} answered as node {} (expected {})",
                link.address, hello.node_id, link.id
            )),
            Ok(_) => Err("the peer did not say hello".to_string()),
            Err(status) => Err(format!("{}: {}", status.code(), status.message())),
        }
    };
    tokio::select! {
        result = tokio::time::timeout(settings.connect_timeout + HELLO_TIMEOUT, open) => {
            result.unwrap_or_else(|_| Err("timed out opening the link".to_string()))
        }
        _ = stop.wait_for(|s| *s) => Err("stopping".to_string()),
    }
}
