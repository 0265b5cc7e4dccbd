//! Reconciliation split over the nodes of a cluster, in one process: two nodes sharing one
//! network, the platform's reconciler and feed on one, an institution's on the other. The
//! institution's node forwards the platform-side records made there; forwards go through the
//! network's fault hook like every envelope (a lost forward is reported as `extra` records, a
//! copy is ignored), and a batch only one side had records in is compared against an empty one.

use parking_lot::Mutex;
use specie_actors::reconciler::{
    Feed, FeedSettings, FeedSummary, LocalReconcilers, Movement, ReconcilerLimits,
};
use specie_protocol::reconcile::{InconsistencyKind, RecordId, RecordKind, TransactionRecord};
use specie_protocol::{Address, Amount, Envelope, InstitutionId, Payload, SagaId, WalletId};
use specie_runtime::{
    Clock, Delivery, FaultHook, LedgerRecord, MemoryJournal, Network, Node, NodeSettings,
    RestartStrategy, SupervisionSettings, SystemClock,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest the test waits for batches to be reconciled.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

fn limits() -> ReconcilerLimits {
    ReconcilerLimits {
        retry_interval_ms: 5,
        retry_interval_max_ms: 40,
        ..ReconcilerLimits::default()
    }
}

fn node_on(network: Network) -> Node {
    Node::start(
        network,
        Arc::new(MemoryJournal::new()),
        Arc::new(SystemClock),
        NodeSettings {
            arbiters: 2,
            mailbox_capacity: 64,
            supervision: SupervisionSettings {
                strategy: RestartStrategy::OneForOne,
                restart_intensity_max: 5,
                restart_window_ms: 10_000,
                restart_backoff_ms: 1,
                restart_backoff_max_ms: 50,
            },
            snapshot_entries_min: u64::MAX,
        },
    )
}

/// A record of saga `n` decided at `at_ms`, as both sides would make it.
fn step_record(n: u128, at_ms: u64) -> TransactionRecord {
    Movement {
        saga: SagaId::from_u128(n),
        kind: RecordKind::Pay,
        payer: WalletId(1),
        payee: WalletId(2),
        amount: Amount(100 + n as u64),
        at_ms,
    }
    .record(InstitutionId(0))
}

fn ledger(records: &[TransactionRecord]) -> Vec<LedgerRecord> {
    records
        .iter()
        .map(|r| LedgerRecord {
            institution: InstitutionId(0),
            record: r.clone(),
        })
        .collect()
}

/// Drops the first ledger forward and delivers the second twice; everything else passes.
#[derive(Default)]
struct LoseThenRepeatForwards {
    forwards: Mutex<u64>,
}

impl FaultHook for LoseThenRepeatForwards {
    fn on_send(&self, _from: Address, _to: Address, bytes: bytes::Bytes, out: &mut Vec<Delivery>) {
        let forward =
            Envelope::decode(&bytes).is_ok_and(|e| matches!(e.payload, Payload::LedgerForward(_)));
        let n = if forward {
            let mut n = self.forwards.lock();
            *n += 1;
            *n
        } else {
            0
        };
        let copies = match n {
            1 => 0,
            2 => 2,
            _ => 1,
        };
        for _ in 0..copies {
            out.push(Delivery {
                after: Duration::ZERO,
                bytes: bytes.clone(),
            });
        }
    }
}

async fn reconciled(feed: &Feed, batches: u64) -> FeedSummary {
    let deadline = Instant::now() + RECONCILE_TIMEOUT;
    loop {
        let s = feed.summary();
        if s.reconciled >= batches {
            return s;
        }
        assert!(Instant::now() < deadline, "not reconciled in time: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two nodes of one cluster in one process: the platform's reconciler on one, institution 0's
/// on the other, each with its feed, sharing one network. Platform-side records made on the
/// institution's node are forwarded to the platform's; the first forward is lost, the second
/// delivered twice; and the platform's node has records of a batch the institution never saw.
#[actix::test]
async fn split_sides_forward_platform_records_and_compare_batches_only_one_side_saw() {
    let network = Network::new();
    let hook = Arc::new(LoseThenRepeatForwards::default());
    network.set_fault_hook(hook.clone());
    let (platform_node, institution_node) = (node_on(network.clone()), node_on(network));
    let settings = FeedSettings {
        batch_interval_ms: 200,
        close_after_ms: 600,
    };
    let i0 = InstitutionId(0);
    let platform_feed = Feed::start(
        &platform_node,
        Arc::new(LocalReconcilers::start_on(
            &platform_node,
            true,
            [],
            limits(),
        )),
        settings,
    )
    .await;
    let institution_feed = Feed::start(
        &institution_node,
        Arc::new(LocalReconcilers::start_on(
            &institution_node,
            false,
            [i0],
            limits(),
        )),
        settings,
    )
    .await;
    let base = (SystemClock.now_ms() / 200 + 2) * 200;
    let batch = |n: u128, at: u64, count: u128| -> Vec<TransactionRecord> {
        (n..n + count)
            .map(|k| step_record(k, at + k as u64 % 50))
            .collect()
    };
    let (lost, kept, unseen) = (
        batch(0, base, 10),
        batch(100, base + 200, 8),
        batch(200, base + 400, 5),
    );
    let institution = Address::Institution(i0);
    let wallet = Address::Wallet(WalletId(1));
    // Batch `base`: both sides made on the institution's node; the platform's copies leave in
    // the first forward, which is lost.
    institution_feed.ingest(institution, &ledger(&lost));
    institution_feed.ingest(wallet, &ledger(&lost));
    while *hook.forwards.lock() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next batch: the same, in the second forward, which arrives twice.
    institution_feed.ingest(institution, &ledger(&kept));
    institution_feed.ingest(wallet, &ledger(&kept));
    // A third batch only the platform's node has records of (a wallet living there).
    platform_feed.ingest(wallet, &ledger(&unseen));

    let p = reconciled(&platform_feed, 3).await;
    let i = reconciled(&institution_feed, 3).await;
    let found = |s: &FeedSummary| -> BTreeMap<RecordId, InconsistencyKind> {
        s.findings.iter().map(|f| (f.record_id, f.kind)).collect()
    };
    let mut expected = BTreeMap::new();
    for r in &lost {
        expected.insert(r.id, InconsistencyKind::Extra);
    }
    for r in &unseen {
        expected.insert(r.id, InconsistencyKind::Missing);
    }
    assert_eq!(found(&p), expected, "{p:#?}");
    assert_eq!(found(&i), expected, "{i:#?}");
    assert_eq!((p.agreed, p.inconsistent), (1, 2));
    assert_eq!((i.agreed, i.inconsistent), (1, 2));
    // The institution's node reports the facts of what only it has; every side was loaded
    // where it lives, and the copy of the second forward was ignored as a copy.
    assert!(i.findings.iter().all(|f| f.saga.is_some()));
    assert_eq!((p.institution.records, p.platform.records), (0, 8 + 5));
    assert_eq!((i.institution.records, i.platform.records), (10 + 8, 0));
    assert_eq!(i.forwarded_records, 18);
    assert_eq!((p.forwards_received, p.duplicate_forwards), (1, 1));
    assert_eq!((p.unfinished, i.unfinished, p.late_records), (0, 0, 0));
    platform_feed.stop();
    institution_feed.stop();
    platform_node.shutdown();
    institution_node.shutdown();
}
