//! The network: the single place where envelopes cross between actors.
//!
//! Every envelope is encoded to bytes on send and decoded by the receiving host, so a corrupt
//! or truncated message is a real case (rejected and counted, nothing changes) and the fault
//! hook sees exactly what a wire would carry. The hook decides, per envelope, what is
//! delivered, when, and how many times; the default delivers everything at once.

use actix::prelude::*;
use bytes::Bytes;
use dashmap::DashMap;
use opentelemetry::trace::{SpanId, TraceId};
use parking_lot::RwLock;
use specie_protocol::{Address, Envelope, SagaId, TraceContext};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a host's mailbox receives: an envelope's bytes — or, between actors of one process
/// on a network without faults, the envelope itself, which then costs no encoding and no
/// decoding (faults act on bytes, and a remote route forwards bytes, so either takes the
/// bytes path).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum Deliver {
    /// Bytes to decode and validate.
    Bytes(Bytes),
    /// An envelope built by an actor of this process.
    Envelope(Box<Envelope>),
}

impl Deliver {
    /// The envelope delivered (decoded and validated when it came as bytes).
    pub fn into_envelope(self) -> Result<Envelope, specie_protocol::ProtocolError> {
        match self {
            Deliver::Bytes(bytes) => Envelope::decode(&bytes),
            Deliver::Envelope(envelope) => Ok(*envelope),
        }
    }
}

/// One delivery decided by the fault hook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Delay before the bytes reach the receiver's mailbox.
    pub after: Duration,
    /// The bytes delivered (the hook may corrupt them).
    pub bytes: Bytes,
}

/// Decides the fate of each envelope on the wire: deliver, drop, delay, duplicate, corrupt.
/// Faults enter the system here and nowhere else.
pub trait FaultHook: Send + Sync {
    /// Pushes zero or more deliveries of `bytes` (zero drops the envelope).
    fn on_send(&self, from: Address, to: Address, bytes: Bytes, out: &mut Vec<Delivery>);

    /// Whether this hook delivers everything once, at once, unchanged — so the network may
    /// skip handing it bytes at all.
    fn passes_everything(&self) -> bool {
        false
    }
}

/// The fault hook of a healthy network: everything delivered once, immediately.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultHook for NoFaults {
    fn on_send(&self, _from: Address, _to: Address, bytes: Bytes, out: &mut Vec<Delivery>) {
        out.push(Delivery {
            after: Duration::ZERO,
            bytes,
        });
    }

    fn passes_everything(&self) -> bool {
        true
    }
}

/// Where a delivery goes when its address may live in another process: see
/// [`Network::set_remote`].
#[derive(Debug)]
pub enum Routed {
    /// The address lives on another node; the route took the bytes.
    Remote,
    /// The address lives here: the bytes, handed back for local delivery.
    Local(Bytes),
}

/// The route to the other processes of a cluster (the transport's peer links). Consulted for
/// every delivery, after the fault hook.
pub trait RemoteRoute: Send + Sync {
    /// Takes the bytes for `to` when it lives on another node, or hands them back.
    fn route(&self, to: Address, bytes: Bytes) -> Routed;
}

/// Counters of what crossed the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Envelopes sent by actors.
    pub sent: u64,
    /// Deliveries placed into a mailbox (duplicates count twice).
    pub delivered: u64,
    /// Deliveries a receiver fully handled (decoded and processed, or rejected).
    pub handled: u64,
    /// Deliveries a receiver rejected (undecodable, misaddressed).
    pub rejected: u64,
    /// Envelopes the fault hook dropped (sends with no delivery).
    pub dropped: u64,
    /// Deliveries to an address with no live mailbox.
    pub undeliverable: u64,
    /// Deliveries handed to the remote route (addresses on other nodes).
    pub remote: u64,
}

/// The actor kinds, as metrics name them ([`crate::host::actor_kind`]), in the order of the
/// network's per-kind counters.
pub const ACTOR_KINDS: [&str; 6] = [
    "central_bank",
    "institution",
    "wallet",
    "external",
    "reconciler",
    "escrow",
];

/// The position of an address's kind in [`ACTOR_KINDS`].
fn kind_index(address: Address) -> usize {
    match address {
        Address::CentralBank => 0,
        Address::Institution(_) => 1,
        Address::Wallet(_) => 2,
        Address::External(_) => 3,
        Address::Reconciler(_) => 4,
        Address::Escrow(_) => 5,
    }
}

/// Counts what a fault hook did to one send (`specie_faults_injected_total{fault}`): extra
/// deliveries are duplicates, delayed ones delays, and a delivery whose bytes are not the
/// buffer that was sent (`sent`, its address and length) a corruption.
fn count_faults(deliveries: &[Delivery], sent: (*const u8, usize)) {
    if deliveries.len() > 1 {
        metrics::counter!("specie_faults_injected_total", "fault" => "duplicate")
            .increment(deliveries.len() as u64 - 1);
    }
    for delivery in deliveries {
        if !delivery.after.is_zero() {
            metrics::counter!("specie_faults_injected_total", "fault" => "delay").increment(1);
        }
        if (delivery.bytes.as_ptr(), delivery.bytes.len()) != sent {
            metrics::counter!("specie_faults_injected_total", "fault" => "corrupt").increment(1);
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    handled: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    undeliverable: AtomicU64,
    remote: AtomicU64,
    /// Deliveries placed in mailboxes minus those handled, by [`kind_index`] of the receiver.
    mailbox_depth: [AtomicI64; ACTOR_KINDS.len()],
}

/// Starts the actor of an address that has no mailbox yet and returns its mailbox, or `None`
/// when no actor should live there. Actors created on demand (escrow contracts) start on their
/// first delivery this way, and after a process restart they recover from the journal the same
/// way.
pub type Spawner = Arc<dyn Fn(Address) -> Option<Recipient<Deliver>> + Send + Sync>;

struct Inner {
    directory: DashMap<Address, Recipient<Deliver>>,
    /// Starts actors on demand; `None` until a cluster installs one.
    spawner: RwLock<Option<Spawner>>,
    fault: RwLock<Arc<dyn FaultHook>>,
    remote: RwLock<Option<Arc<dyn RemoteRoute>>>,
    next_message_id: AtomicU64,
    counters: Counters,
}

/// A handle on the network of one process. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("actors", &self.inner.directory.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The W3C `traceparent` for an envelope of a saga: the saga id is the trace id (both are 16
/// bytes), the message id the span id.
fn traceparent(saga: SagaId, message_id: u64) -> String {
    format!(
        "00-{}-{}-01",
        TraceId::from_bytes(saga.0),
        SpanId::from_bytes(message_id.to_be_bytes())
    )
}

impl Network {
    /// A network with no actors and no faults.
    pub fn new() -> Network {
        Network {
            inner: Arc::new(Inner {
                directory: DashMap::new(),
                spawner: RwLock::new(None),
                fault: RwLock::new(Arc::new(NoFaults)),
                remote: RwLock::new(None),
                next_message_id: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        }
    }

    /// Installs the fault hook (the chaos harness plugs in here).
    pub fn set_fault_hook(&self, hook: Arc<dyn FaultHook>) {
        *self.inner.fault.write() = hook;
    }

    /// Installs (or, with `None`, removes) the route to other nodes. With a route, every
    /// delivery the fault hook decides goes to the route first, and only the addresses it
    /// hands back are delivered to local mailboxes. Remote deliveries are not counted as in
    /// flight here (the receiving node counts them).
    pub fn set_remote(&self, route: Option<Arc<dyn RemoteRoute>>) {
        *self.inner.remote.write() = route;
    }

    /// Delivers to a local mailbox, or through the remote route when `to` lives elsewhere.
    fn dispatch(&self, to: Address, bytes: Bytes) {
        let route = self.inner.remote.read().clone();
        let bytes = match route {
            None => bytes,
            Some(route) => match route.route(to, bytes) {
                Routed::Remote => {
                    self.inner.counters.remote.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Routed::Local(bytes) => bytes,
            },
        };
        self.deliver_bytes(to, bytes);
    }

    /// Installs (or, with `None`, removes) the spawner of on-demand actors. Remove it before
    /// dropping a node: the spawner usually holds the node.
    pub fn set_spawner(&self, spawner: Option<Spawner>) {
        *self.inner.spawner.write() = spawner;
    }

    /// The mailbox of `to`, starting its actor through the spawner when it has none yet. The
    /// directory entry is taken before the spawner runs, so concurrent deliveries start one
    /// actor, not two.
    fn mailbox(&self, to: Address) -> Option<Recipient<Deliver>> {
        if let Some(mailbox) = self.inner.directory.get(&to) {
            return Some(mailbox.value().clone());
        }
        let spawner = self.inner.spawner.read().clone()?;
        match self.inner.directory.entry(to) {
            dashmap::mapref::entry::Entry::Occupied(e) => Some(e.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let mailbox = spawner(to)?;
                v.insert(mailbox.clone());
                Some(mailbox)
            }
        }
    }

    /// Binds an address to a local mailbox.
    pub fn register(&self, address: Address, mailbox: Recipient<Deliver>) {
        self.inner.directory.insert(address, mailbox);
    }

    /// Whether an address has a local mailbox.
    pub fn is_registered(&self, address: Address) -> bool {
        self.inner.directory.contains_key(&address)
    }

    /// Sends an envelope: stamps its message id and trace context, encodes it, and hands the
    /// bytes to the fault hook for delivery.
    pub fn send(&self, mut envelope: Envelope) {
        envelope.message_id = self.inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let hook = self.inner.fault.read().clone();
        let in_process = hook.passes_everything() && self.inner.remote.read().is_none();
        // The receiver of an in-process delivery traces nothing when this process does not.
        let traced = !in_process || crate::telemetry::tracing_enabled();
        if traced && envelope.trace.is_none() && envelope.saga_id != SagaId::NONE {
            envelope.trace = Some(TraceContext {
                traceparent: traceparent(envelope.saga_id, envelope.message_id),
                tracestate: String::new(),
            });
        }
        self.inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("specie_envelopes_total", "direction" => "sent").increment(1);
        if in_process {
            // Every actor is in this process and nothing is injected: hand the envelope over.
            let to = envelope.to;
            self.deliver(to, Deliver::Envelope(Box::new(envelope)));
            return;
        }
        let bytes = envelope.encode();
        let sent = (bytes.as_ptr(), bytes.len());
        let mut deliveries = Vec::with_capacity(1);
        hook.on_send(envelope.from, envelope.to, bytes, &mut deliveries);
        if deliveries.is_empty() {
            self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("specie_faults_injected_total", "fault" => "drop").increment(1);
        } else {
            count_faults(&deliveries, sent);
        }
        for delivery in deliveries {
            if delivery.after.is_zero() {
                self.dispatch(envelope.to, delivery.bytes);
            } else {
                let network = self.clone();
                let to = envelope.to;
                // Counted as in flight from now, so quiescence waits for delayed deliveries.
                network
                    .inner
                    .counters
                    .delivered
                    .fetch_add(1, Ordering::Relaxed);
                // tokio::spawn, not actix::spawn: senders may be plain tokio tasks (gRPC).
                tokio::spawn(async move {
                    tokio::time::sleep(delivery.after).await;
                    network
                        .inner
                        .counters
                        .delivered
                        .fetch_sub(1, Ordering::Relaxed);
                    network.dispatch(to, delivery.bytes);
                });
            }
        }
    }

    /// Puts raw bytes into the mailbox of `to`. The receiving host decodes and validates them.
    /// Used by [`Network::send`], by the transport for envelopes from other nodes, and by
    /// tests that feed malformed input. Callable from actix actors and plain tokio tasks.
    pub fn deliver_bytes(&self, to: Address, bytes: Bytes) {
        self.deliver(to, Deliver::Bytes(bytes));
    }

    fn deliver(&self, to: Address, message: Deliver) {
        let Some(mailbox) = self.mailbox(to) else {
            self.inner
                .counters
                .undeliverable
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.inner
            .counters
            .delivered
            .fetch_add(1, Ordering::Relaxed);
        self.inner.counters.mailbox_depth[kind_index(to)].fetch_add(1, Ordering::Relaxed);
        match mailbox.try_send(message) {
            Ok(()) => {}
            Err(SendError::Full(message)) => {
                // The mailbox is at its bound: park this delivery until there is room instead
                // of growing the mailbox past its capacity.
                metrics::counter!("specie_mailbox_full_total").increment(1);
                let network = self.clone();
                tokio::spawn(async move {
                    if mailbox.send(message).await.is_err() {
                        network.undeliverable(to);
                    }
                });
            }
            Err(SendError::Closed(_)) => self.undeliverable(to),
        }
    }

    fn undeliverable(&self, to: Address) {
        let c = &self.inner.counters;
        c.undeliverable.fetch_add(1, Ordering::Relaxed);
        // The delivery will never be handled: keep the in-flight count honest.
        c.handled.fetch_add(1, Ordering::Relaxed);
        c.mailbox_depth[kind_index(to)].fetch_sub(1, Ordering::Relaxed);
    }

    /// Called by the host of `at` when it has finished with one delivery.
    pub fn handled(&self, at: Address, rejected: Option<&'static str>) {
        let c = &self.inner.counters;
        c.handled.fetch_add(1, Ordering::Relaxed);
        c.mailbox_depth[kind_index(at)].fetch_sub(1, Ordering::Relaxed);
        if let Some(reason) = rejected {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("specie_envelopes_rejected_total", "reason" => reason).increment(1);
        } else {
            metrics::counter!("specie_envelopes_total", "direction" => "received").increment(1);
        }
    }

    /// Deliveries placed in mailboxes (or waiting out a delay) and not yet handled.
    pub fn in_flight(&self) -> u64 {
        let c = &self.inner.counters;
        let delivered = c.delivered.load(Ordering::Acquire);
        let handled = c.handled.load(Ordering::Acquire);
        delivered.saturating_sub(handled)
    }

    /// Deliveries placed in the mailboxes of actors of each kind and not yet handled (the
    /// `specie_mailbox_depth{actor_kind}` gauges).
    pub fn mailbox_depths(&self) -> [(&'static str, u64); ACTOR_KINDS.len()] {
        let depth = &self.inner.counters.mailbox_depth;
        std::array::from_fn(|i| {
            let d = depth[i].load(Ordering::Relaxed);
            (ACTOR_KINDS[i], u64::try_from(d).unwrap_or(0))
        })
    }

    /// A copy of the counters.
    pub fn stats(&self) -> NetworkStats {
        let c = &self.inner.counters;
        NetworkStats {
            sent: c.sent.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            handled: c.handled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            undeliverable: c.undeliverable.load(Ordering::Relaxed),
            remote: c.remote.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_kinds_are_named_as_the_host_names_them() {
        use specie_protocol::{InstitutionId, WalletId};
        for address in [
            Address::CentralBank,
            Address::Institution(InstitutionId(1)),
            Address::Wallet(WalletId(2)),
            Address::External(3),
            Address::Reconciler(4),
            Address::Escrow(5),
        ] {
            assert_eq!(
                ACTOR_KINDS[kind_index(address)],
                crate::host::actor_kind(address)
            );
        }
    }

    #[test]
    fn traceparent_is_w3c_shaped_and_carries_the_saga_as_trace_id() {
        let tp = traceparent(SagaId::from_u128(0xabc), 7);
        assert_eq!(
            tp,
            "00-00000000000000000000000000000abc-0000000000000007-01"
        );
    }
}
