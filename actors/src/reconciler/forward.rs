//! Platform-side records across nodes: the [`Forwarder`] on a node without the platform's
//! reconciler, and the [`LedgerInbox`] on the node with it.
//!
//! Wallets and escrow contracts, which make the platform's copies of transaction records, live
//! on every node of a cluster; the platform's reconciler lives on one (the central bank's).
//! Every other node's forwarder collects the platform-side records its actors publish and,
//! every [`FORWARD_INTERVAL`], sends them as [`LedgerForward`] envelopes (at most
//! [`LEDGER_FORWARD_RECORDS_MAX`] records each) through the network — the fault hook and the
//! gRPC transport, like every envelope — to `Address::External(LEDGER_INBOX)`, which the
//! placement routes to the central bank's node. There the inbox hands them to the feed as
//! platform-side records.
//!
//! Forwards are not retried. A duplicated forward is recognised by its (origin, sequence) and
//! ignored; a lost one leaves the platform without those records, and their batches are
//! reconciled without them: each lost record is reported as `extra` (the institution has it,
//! the platform does not) — the correct outcome of reconciling what the platform was told.

use parking_lot::Mutex;
use specie_protocol::reconcile::{
    ForwardedRecord, LedgerForward, LEDGER_FORWARD_RECORDS_MAX, LEDGER_INBOX,
};
use specie_protocol::{Address, Envelope, Payload, SagaId};
use specie_runtime::{Deliver, LedgerRecord, Network};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a forwarder sends what it collected.
pub const FORWARD_INTERVAL: Duration = Duration::from_millis(100);

/// Most records a forwarder holds while they cannot leave; more are dropped (and counted),
/// and reconciliation reports them as `extra`.
pub const FORWARD_QUEUE_MAX: usize = 1 << 20;

/// The ledger inbox's address (on the central bank's node; forwards are also sent from it).
pub const INBOX: Address = Address::External(LEDGER_INBOX);

/// Sequences remembered per origin: a copy older than this many forwards counts as a
/// duplicate too.
const DEDUP_WINDOW: u64 = 4096;
/// Origins remembered (the least recently heard is forgotten first).
const DEDUP_ORIGINS_MAX: usize = 64;

/// What a forwarder did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Records handed over.
    pub records: u64,
    /// Forwards sent.
    pub forwards: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
}

struct ForwarderInner {
    network: Network,
    origin: u64,
    queue: Mutex<Vec<ForwardedRecord>>,
    sequence: AtomicU64,
    records: AtomicU64,
    forwards: AtomicU64,
    dropped: AtomicU64,
    stopped: AtomicBool,
}

/// Collects the platform-side records of a node without the platform's reconciler and sends
/// them to the ledger inbox (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<ForwarderInner>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("origin", &self.inner.origin)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder sending through `network`, with a random origin.
    pub fn new(network: Network) -> Forwarder {
        Forwarder::with_origin(network, rand::random::<u64>().max(1))
    }

    /// A forwarder with a given origin (nonzero; tests).
    pub fn with_origin(network: Network, origin: u64) -> Forwarder {
        assert!(origin != 0, "origin 0 is not a valid forward origin");
        Forwarder {
            inner: Arc::new(ForwarderInner {
                network,
                origin,
                queue: Mutex::new(Vec::new()),
                sequence: AtomicU64::new(0),
                records: AtomicU64::new(0),
                forwards: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Queues records to forward (dropping, and counting, what does not fit).
    pub fn push(&self, records: &[LedgerRecord]) {
        let mut queue = self.inner.queue.lock();
        let room = FORWARD_QUEUE_MAX.saturating_sub(queue.len());
        let taken = records.len().min(room);
        queue.extend(records[..taken].iter().map(|r| ForwardedRecord {
            institution: r.institution,
            record: r.record.clone(),
        }));
        drop(queue);
        let lost = (records.len() - taken) as u64;
        if lost > 0 {
            self.inner.dropped.fetch_add(lost, Ordering::Relaxed);
            metrics::counter!("specie_reconcile_forward_dropped_total").increment(lost);
        }
    }

    /// Sends everything queued now, in canonical forwards of at most
    /// [`LEDGER_FORWARD_RECORDS_MAX`] records.
    pub fn flush(&self) {
        let mut records = std::mem::take(&mut *self.inner.queue.lock());
        if records.is_empty() {
            return;
        }
        records.sort_by_key(|r| (r.institution, r.record.id));
        // One record id twice (a step published twice): the forward names each once.
        records.dedup_by_key(|r| (r.institution, r.record.id));
        for chunk in records.chunks(LEDGER_FORWARD_RECORDS_MAX) {
            let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1;
            let forward = LedgerForward {
                origin: self.inner.origin,
                sequence,
                records: chunk.to_vec(),
            };
            self.inner.network.send(Envelope {
                message_id: 0,
                saga_id: SagaId::NONE,
                from: INBOX,
                to: INBOX,
                attempt: 0,
                trace: None,
                payload: Payload::LedgerForward(forward),
            });
            let n = chunk.len() as u64;
            self.inner.records.fetch_add(n, Ordering::Relaxed);
            self.inner.forwards.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("specie_reconcile_forwarded_records_total", "direction" => "sent")
                .increment(n);
        }
    }

    /// Sends what was collected every [`FORWARD_INTERVAL`] until [`Forwarder::stop`], on the
    /// current actix arbiter (must run inside an actix system).
    pub fn start(&self) {
        let me = self.clone();
        actix::spawn(async move {
            while !me.inner.stopped.load(Ordering::Acquire) {
                tokio::time::sleep(FORWARD_INTERVAL).await;
                me.flush();
            }
        });
    }

    /// Stops the periodic sending and sends what is left.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.flush();
    }

    /// What it did so far.
    pub fn stats(&self) -> ForwarderStats {
        ForwarderStats {
            records: self.inner.records.load(Ordering::Relaxed),
            forwards: self.inner.forwards.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Which forwards an inbox has taken: per origin, the sequences of the last 4096 forwards (of
/// the 64 origins heard from most recently).
#[derive(Debug, Default)]
pub struct ForwardDedup {
    origins: HashMap<u64, Window>,
    heard: u64,
}

#[derive(Debug, Default)]
struct Window {
    max: u64,
    seen: BTreeSet<u64>,
    heard: u64,
}

impl ForwardDedup {
    /// Whether (origin, sequence) is new: `false` for a copy of a forward taken before (or
    /// one too old to tell, which can only be a late copy).
    pub fn first_time(&mut self, origin: u64, sequence: u64) -> bool {
        self.heard += 1;
        if !self.origins.contains_key(&origin) && self.origins.len() >= DEDUP_ORIGINS_MAX {
            if let Some(stalest) = self
                .origins
                .iter()
                .min_by_key(|(_, w)| w.heard)
                .map(|(o, _)| *o)
            {
                self.origins.remove(&stalest);
            }
        }
        let w = self.origins.entry(origin).or_default();
        w.heard = self.heard;
        let floor = w.max.saturating_sub(DEDUP_WINDOW);
        if sequence <= floor || !w.seen.insert(sequence) {
            return false;
        }
        if sequence > w.max {
            w.max = sequence;
            let floor = w.max.saturating_sub(DEDUP_WINDOW);
            while w.seen.first().is_some_and(|s| *s <= floor) {
                w.seen.pop_first();
            }
        }
        true
    }
}

/// What an inbox did so far.
#[derive(Debug, Default)]
pub struct InboxStats {
    forwards: AtomicU64,
    duplicates: AtomicU64,
    records: AtomicU64,
    rejected: AtomicU64,
}

/// A copy of an inbox's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCounts {
    /// Forwards taken.
    pub forwards: u64,
    /// Copies of forwards already taken, ignored.
    pub duplicates: u64,
    /// Records handed to the sink.
    pub records: u64,
    /// Envelopes refused (undecodable, misaddressed, not a forward).
    pub rejected: u64,
}

impl InboxStats {
    /// The counters now.
    pub fn counts(&self) -> InboxCounts {
        InboxCounts {
            forwards: self.forwards.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Where an inbox hands the records of each new forward.
pub type InboxSink = Arc<dyn Fn(&[LedgerRecord]) + Send + Sync>;

/// The ledger inbox: a mailbox at [`INBOX`] that takes forwards, ignores copies, and hands
/// the records to its sink.
pub struct LedgerInbox {
    network: Network,
    dedup: ForwardDedup,
    sink: InboxSink,
    stats: Arc<InboxStats>,
}

impl LedgerInbox {
    /// Starts an inbox on the current actix arbiter and registers it at [`INBOX`] in
    /// `network`. Returns its counters.
    pub fn start(network: &Network, sink: InboxSink) -> Arc<InboxStats> {
        let stats = Arc::new(InboxStats::default());
        let inbox = LedgerInbox {
            network: network.clone(),
            dedup: ForwardDedup::default(),
            sink,
            stats: stats.clone(),
        };
        let addr = actix::Actor::start(inbox);
        network.register(INBOX, addr.recipient());
        stats
    }

    fn take(&mut self, delivered: Deliver) -> Option<&'static str> {
        let envelope = match delivered.into_envelope() {
            Ok(e) => e,
            Err(_) => return Some("decode"),
        };
        if envelope.to != INBOX {
            return Some("misaddressed");
        }
        let Payload::LedgerForward(forward) = envelope.payload else {
            return Some("unexpected_payload");
        };
        if !self.dedup.first_time(forward.origin, forward.sequence) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("specie_reconcile_duplicate_forwards_total").increment(1);
            return None;
        }
        let records: Vec<LedgerRecord> = forward
            .records
            .into_iter()
            .map(|r| LedgerRecord {
                institution: r.institution,
                record: r.record,
            })
            .collect();
        let n = records.len() as u64;
        self.stats.forwards.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("specie_reconcile_forwarded_records_total", "direction" => "received")
            .increment(n);
        (self.sink)(&records);
        None
    }
}

impl actix::Actor for LedgerInbox {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Deliver> for LedgerInbox {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut actix::Context<Self>) {
        let rejected = self.take(msg);
        if rejected.is_some() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        self.network.handled(INBOX, rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::reconcile::{RecordId, RecordKind, TransactionRecord};
    use specie_protocol::{Amount, InstitutionId, WalletId};
    use specie_runtime::{Delivery, FaultHook};

    fn record(institution: u32, id: u64) -> LedgerRecord {
        LedgerRecord {
            institution: InstitutionId(institution),
            record: TransactionRecord {
                id: RecordId(id),
                saga_id: SagaId::from_u128(u128::from(id) + 1),
                kind: RecordKind::Pay,
                payer: WalletId(1),
                payee: WalletId(2),
                amount: Amount(100 + id),
                at_ms: 1_000 + id,
            },
        }
    }

    #[test]
    fn a_copy_of_a_forward_is_recognised_however_late() {
        let mut d = ForwardDedup::default();
        assert!(d.first_time(7, 1));
        assert!(d.first_time(7, 3));
        assert!(!d.first_time(7, 1));
        assert!(d.first_time(7, 2), "out of order is not a copy");
        assert!(!d.first_time(7, 2));
        assert!(d.first_time(8, 1), "another origin counts on its own");
        for s in 4..DEDUP_WINDOW + 10 {
            assert!(d.first_time(7, s));
        }
        assert!(!d.first_time(7, 5), "older than the window: a late copy");
        // Many origins: the stalest is forgotten, the others still known.
        for o in 100..100 + DEDUP_ORIGINS_MAX as u64 {
            assert!(d.first_time(o, 1));
        }
        assert!(d.origins.len() <= DEDUP_ORIGINS_MAX);
        assert!(!d.first_time(100 + DEDUP_ORIGINS_MAX as u64 - 1, 1));
    }

    /// Delivers every envelope twice.
    struct Twice;

    impl FaultHook for Twice {
        fn on_send(
            &self,
            _from: Address,
            _to: Address,
            bytes: bytes::Bytes,
            out: &mut Vec<Delivery>,
        ) {
            for _ in 0..2 {
                out.push(Delivery {
                    after: Duration::ZERO,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    #[actix::test]
    async fn forwarded_records_arrive_once_in_canonical_forwards_and_copies_are_ignored() {
        let network = Network::new();
        network.set_fault_hook(Arc::new(Twice));
        let got: Arc<Mutex<Vec<LedgerRecord>>> = Arc::default();
        let sink: InboxSink = {
            let got = got.clone();
            Arc::new(move |records: &[LedgerRecord]| got.lock().extend_from_slice(records))
        };
        let stats = LedgerInbox::start(&network, sink);
        let forwarder = Forwarder::with_origin(network.clone(), 42);
        // More than one forward holds, out of order, one record published twice.
        let mut records: Vec<LedgerRecord> = (0..LEDGER_FORWARD_RECORDS_MAX as u64 + 10)
            .rev()
            .map(|id| record((id % 3) as u32, id))
            .collect();
        records.push(record(1, 7));
        forwarder.push(&records);
        forwarder.flush();
        forwarder.flush(); // nothing left: sends nothing
        assert_eq!(
            forwarder.stats(),
            ForwarderStats {
                records: LEDGER_FORWARD_RECORDS_MAX as u64 + 10,
                forwards: 2,
                dropped: 0
            }
        );
        // Each envelope went out as bytes through the fault hook, twice.
        for _ in 0..1000 {
            if network.in_flight() == 0 && stats.counts().forwards + stats.counts().duplicates == 4
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counts = stats.counts();
        assert_eq!(
            counts,
            InboxCounts {
                forwards: 2,
                duplicates: 2,
                records: LEDGER_FORWARD_RECORDS_MAX as u64 + 10,
                rejected: 0
            }
        );
        let got = std::mem::take(&mut *got.lock());
        let ids: BTreeSet<(InstitutionId, RecordId)> =
            got.iter().map(|r| (r.institution, r.record.id)).collect();
        assert_eq!(ids.len(), got.len(), "every record once");
        let sent: BTreeSet<(InstitutionId, RecordId)> = records
            .iter()
            .map(|r| (r.institution, r.record.id))
            .collect();
        assert_eq!(ids, sent);
        // Something that is not a forward is refused and counted.
        network.send(Envelope {
            message_id: 0,
            saga_id: SagaId::NONE,
            from: INBOX,
            to: INBOX,
            attempt: 0,
            trace: None,
            payload: Payload::StatusQuery,
        });
        for _ in 0..1000 {
            if stats.counts().rejected == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats.counts().rejected, 2);
    }
}
