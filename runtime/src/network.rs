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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes handed to a host's mailbox.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Bytes);

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
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    handled: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    undeliverable: AtomicU64,
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
                next_message_id: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        }
    }

    /// Installs the fault hook (the chaos harness plugs in here).
    pub fn set_fault_hook(&self, hook: Arc<dyn FaultHook>) {
        *self.inner.fault.write() = hook;
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
        if envelope.trace.is_none() && envelope.saga_id != SagaId::NONE {
            envelope.trace = Some(TraceContext {
                traceparent: traceparent(envelope.saga_id, envelope.message_id),
                tracestate: String::new(),
            });
        }
        self.inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("specie_envelopes_total", "direction" => "sent").increment(1);
        let bytes = envelope.encode();
        let mut deliveries = Vec::with_capacity(1);
        let hook = self.inner.fault.read().clone();
        hook.on_send(envelope.from, envelope.to, bytes, &mut deliveries);
        if deliveries.is_empty() {
            self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        for delivery in deliveries {
            if delivery.after.is_zero() {
                self.deliver_bytes(envelope.to, delivery.bytes);
            } else {
                let network = self.clone();
                let to = envelope.to;
                // Counted as in flight from now, so quiescence waits for delayed deliveries.
                network
                    .inner
                    .counters
                    .delivered
                    .fetch_add(1, Ordering::Relaxed);
                actix::spawn(async move {
                    tokio::time::sleep(delivery.after).await;
                    network
                        .inner
                        .counters
                        .delivered
                        .fetch_sub(1, Ordering::Relaxed);
                    network.deliver_bytes(to, delivery.bytes);
                });
            }
        }
    }

    /// Puts raw bytes into the mailbox of `to`. The receiving host decodes and validates them.
    /// Used by [`Network::send`] and by tests that feed malformed input.
    pub fn deliver_bytes(&self, to: Address, bytes: Bytes) {
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
        match mailbox.try_send(Deliver(bytes)) {
            Ok(()) => {}
            Err(SendError::Full(message)) => {
                // The mailbox is at its bound: park this delivery until there is room instead
                // of growing the mailbox past its capacity.
                metrics::counter!("specie_mailbox_full_total").increment(1);
                let network = self.clone();
                actix::spawn(async move {
                    if mailbox.send(message).await.is_err() {
                        network.undeliverable();
                    }
                });
            }
            Err(SendError::Closed(_)) => self.undeliverable(),
        }
    }

    fn undeliverable(&self) {
        let c = &self.inner.counters;
        c.undeliverable.fetch_add(1, Ordering::Relaxed);
        // The delivery will never be handled: keep the in-flight count honest.
        c.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Called by a host when it has finished with one delivery.
    pub fn handled(&self, rejected: Option<&'static str>) {
        let c = &self.inner.counters;
        c.handled.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c_shaped_and_carries_the_saga_as_trace_id() {
        let tp = traceparent(SagaId::from_u128(0xabc), 7);
        assert_eq!(
            tp,
            "00-00000000000000000000000000000abc-0000000000000007-01"
        );
    }
}
