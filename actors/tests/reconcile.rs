//! Reconciliation through the real runtime: the platform's and an institution's reconcilers
//! as supervised hosts on a node, every message encoded and carried by the network, faults
//! injected by the network's fault hook, crashes recovered from the journal.

use parking_lot::Mutex;
use specie_actors::reconciler::sample::{plant, records};
use specie_actors::reconciler::{
    verify_anchored, verify_blocks, Batch, BatchKey, BatchStatus, ChainError, Feed, FeedSettings,
    LocalReconcilers, Movement, ReconcilerLimits,
};
use specie_protocol::reconcile::{
    BatchId, Digest, InconsistencyKind, RecordId, RecordKind, TransactionRecord,
};
use specie_protocol::{Address, Amount, Envelope, InstitutionId, SagaId, WalletId};
use specie_runtime::{
    Clock, Delivery, FaultHook, LedgerRecord, MemoryJournal, Network, Node, NodeSettings,
    RestartStrategy, SupervisionSettings, SystemClock,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest a test waits for a batch to be reconciled.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

const KEY: BatchKey = BatchKey {
    institution: InstitutionId(0),
    batch_id: BatchId(1),
};

fn limits() -> ReconcilerLimits {
    ReconcilerLimits {
        retry_interval_ms: 5,
        retry_interval_max_ms: 40,
        ..ReconcilerLimits::default()
    }
}

fn start(hook: Option<Arc<dyn FaultHook>>) -> (Node, LocalReconcilers) {
    let network = Network::new();
    if let Some(hook) = hook {
        network.set_fault_hook(hook);
    }
    let node = Node::start(
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
            // The reconciler takes no snapshots: its journal is replayed in full.
            snapshot_entries_min: u64::MAX,
        },
    );
    let reconcilers = LocalReconcilers::start(&node, [InstitutionId(0)], limits());
    (node, reconcilers)
}

async fn reconcile(
    reconcilers: &LocalReconcilers,
    platform: Vec<TransactionRecord>,
    institution: Vec<TransactionRecord>,
) -> (BatchStatus, BatchStatus) {
    reconcilers
        .load_platform(Batch::new(KEY, platform).unwrap())
        .await
        .unwrap();
    reconcilers
        .load_institution(Batch::new(KEY, institution).unwrap())
        .await
        .unwrap();
    reconcilers.wait(KEY, RECONCILE_TIMEOUT).await.unwrap()
}

fn found(status: &BatchStatus) -> BTreeMap<RecordId, InconsistencyKind> {
    status
        .findings
        .iter()
        .map(|f| (f.record_id, f.kind))
        .collect()
}

#[actix::test]
async fn honest_sides_agree_with_one_comparison_through_the_network() {
    let (node, reconcilers) = start(None);
    let rs = records(1, 3000);
    let (p, i) = reconcile(&reconcilers, rs.clone(), rs).await;
    let report = i.report.clone().unwrap();
    assert!(report.agreed());
    assert_eq!(report.hashes_compared(), 1);
    assert_eq!(p.report, Some(report));
    // Post, ack, report, report ack.
    assert_eq!(node.network().stats().sent, 4);
    node.shutdown();
}

#[actix::test]
async fn planted_differences_of_every_kind_are_found_and_reported_to_both_sides() {
    let (node, reconcilers) = start(None);
    let rs = records(2, 20_000);
    let planted = plant(&rs, 30, 2);
    let (p, i) = reconcile(&reconcilers, rs.clone(), planted.records.clone()).await;
    assert_eq!(found(&p), planted.planted);
    assert_eq!(found(&i), planted.planted);
    // Far fewer hashes compared than records.
    assert!(p.counts.hashes_compared() < 2_000, "{:?}", p.counts);
    // The institution holds both versions of every altered record.
    for f in i
        .findings
        .iter()
        .filter(|f| f.kind == InconsistencyKind::Altered)
    {
        let (ours, theirs) = (
            f.platform.as_ref().unwrap(),
            f.institution.as_ref().unwrap(),
        );
        assert_eq!(ours.id, theirs.id);
        assert_ne!(ours, theirs);
    }
    node.shutdown();
}

#[actix::test]
async fn an_altered_chain_block_is_detected_with_its_height() {
    let (node, reconcilers) = start(None);
    let rs = records(3, 500);
    let (_, i) = reconcile(&reconcilers, rs.clone(), rs).await;
    let chain = reconcilers.platform_snapshot().await.unwrap().chain;
    assert_eq!(chain.len(), 2);
    // The platform loaded first: its block is at height 0, the institution's post at 1.
    let anchor = i.posted.unwrap();
    assert_eq!(anchor.height, 1);
    assert_eq!(
        verify_anchored(&chain, anchor.height, anchor.block_hash),
        Ok(())
    );

    // The institution's post rewritten in place.
    let mut forged = chain.clone();
    forged[1].batch_hash = Digest([0xab; 32]);
    assert_eq!(
        verify_blocks(&forged),
        Err(ChainError::Altered { height: 1 })
    );
    // The platform's block rewritten and re-hashed: its successor's link gives it away.
    let mut forged = chain.clone();
    forged[0].record_count += 1;
    forged[0].hash = forged[0].compute_hash();
    assert_eq!(
        verify_blocks(&forged),
        Err(ChainError::Relinked { height: 0 })
    );
    // The last block rewritten and re-hashed: only the poster's anchor gives it away.
    let mut forged = chain;
    forged[1].batch_hash = Digest([0xcd; 32]);
    forged[1].hash = forged[1].compute_hash();
    assert_eq!(verify_blocks(&forged), Ok(()));
    assert_eq!(
        verify_anchored(&forged, anchor.height, anchor.block_hash),
        Err(ChainError::AnchorMismatch { height: 1 })
    );
    node.shutdown();
}

/// Per message kind, drops the first, third, … of every three envelopes and delivers the
/// second twice (the copy a little later): a fixed pattern, so a failure replays, and one that
/// hits every kind of message however the kinds interleave.
struct DropAndDuplicate {
    seen: Mutex<BTreeMap<&'static str, u64>>,
    dropped: Mutex<BTreeSet<&'static str>>,
    duplicated: Mutex<BTreeSet<&'static str>>,
}

impl DropAndDuplicate {
    fn new() -> DropAndDuplicate {
        DropAndDuplicate {
            seen: Mutex::new(BTreeMap::new()),
            dropped: Mutex::new(BTreeSet::new()),
            duplicated: Mutex::new(BTreeSet::new()),
        }
    }
}

impl FaultHook for DropAndDuplicate {
    fn on_send(&self, _from: Address, _to: Address, bytes: bytes::Bytes, out: &mut Vec<Delivery>) {
        let name = Envelope::decode(&bytes)
            .map(|e| e.payload.name())
            .unwrap_or("undecodable");
        let n = {
            let mut seen = self.seen.lock();
            let n = seen.entry(name).or_insert(0);
            *n += 1;
            *n
        };
        match n % 3 {
            1 => {
                self.dropped.lock().insert(name);
            }
            2 => {
                self.duplicated.lock().insert(name);
                out.push(Delivery {
                    after: Duration::ZERO,
                    bytes: bytes.clone(),
                });
                out.push(Delivery {
                    after: Duration::from_millis(3),
                    bytes,
                });
            }
            _ => out.push(Delivery {
                after: Duration::ZERO,
                bytes,
            }),
        }
    }
}

#[actix::test]
async fn dropped_and_duplicated_messages_still_reach_the_same_result() {
    let rs = records(4, 10_000);
    let planted = plant(&rs, 9, 4);

    let (node, reconcilers) = start(None);
    let (clean, _) = reconcile(&reconcilers, rs.clone(), planted.records.clone()).await;
    node.shutdown();

    let hook = Arc::new(DropAndDuplicate::new());
    let (node, reconcilers) = start(Some(hook.clone()));
    let (p, i) = reconcile(&reconcilers, rs, planted.records).await;
    assert_eq!(found(&p), planted.planted);
    assert_eq!(found(&i), planted.planted);
    assert_eq!(
        p.counts, clean.counts,
        "the same comparisons, however often asked"
    );
    assert_eq!(p.report, clean.report);
    assert_eq!(
        reconcilers.platform_snapshot().await.unwrap().chain.len(),
        2
    );
    // The faults did hit the reconciliation messages.
    let stats = node.network().stats();
    assert!(stats.dropped > 0 && stats.delivered > stats.sent - stats.dropped);
    for kind in [
        "batch_hash_post",
        "shard_hashes_request",
        "record_hashes_reply",
        "reconcile_report",
    ] {
        let hit = hook.dropped.lock().contains(kind) || hook.duplicated.lock().contains(kind);
        assert!(hit, "{kind} was neither dropped nor duplicated");
    }
    node.shutdown();
}

#[actix::test]
async fn a_crashed_platform_recovers_its_chain_and_batch_from_the_journal() {
    let (node, reconcilers) = start(None);
    let rs = records(5, 2000);
    let planted = plant(&rs, 4, 5);
    reconcilers
        .load_platform(Batch::new(KEY, rs).unwrap())
        .await
        .unwrap();
    reconcilers.crash(None);
    reconcilers
        .load_institution(Batch::new(KEY, planted.records).unwrap())
        .await
        .unwrap();
    let (p, i) = reconcilers.wait(KEY, RECONCILE_TIMEOUT).await.unwrap();
    assert_eq!(found(&p), planted.planted);
    assert_eq!(found(&i), planted.planted);
    let chain = reconcilers.platform_snapshot().await.unwrap().chain;
    assert_eq!(
        chain.len(),
        2,
        "the platform's block survived the crash, and only once"
    );
    assert_eq!(verify_blocks(&chain), Ok(()));
    assert_eq!(node.restarts(), vec![("reconciler", 1)]);
    node.shutdown();
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

#[actix::test]
async fn the_feed_reconciles_each_batch_and_finds_exactly_what_one_side_lost_or_altered() {
    let (node, reconcilers) = start(None);
    let settings = FeedSettings {
        batch_interval_ms: 1_000,
        close_after_ms: 3_000,
    };
    let feed = Feed::new(&node, Arc::new(reconcilers), settings).await;
    // Two batches of institution 0, a little in the future (the feed started now): batch `b`
    // and batch `b + 1`, 40 records each.
    let base = (SystemClock.now_ms() / 1_000 + 2) * 1_000;
    let first: Vec<_> = (0..40).map(|n| step_record(n, base + n as u64)).collect();
    let second: Vec<_> = (40..80)
        .map(|n| step_record(n, base + 1_000 + n as u64))
        .collect();
    let institution = Address::Institution(InstitutionId(0));
    let platform = Address::Wallet(WalletId(1));
    // The second batch: both sides honest (the platform's copies in two steps, one repeated).
    feed.ingest(institution, &ledger(&second));
    feed.ingest(platform, &ledger(&second[..20]));
    feed.ingest(platform, &ledger(&second[10..]));
    // The first: the platform never learns of record 3, the institution forgot record 7, and
    // the platform's copy of record 11 says another amount.
    let mut tampered = first.clone();
    tampered[11].amount = Amount(1);
    let (lost, forgot, altered) = (first[3].id, first[7].id, first[11].id);
    let theirs: Vec<_> = tampered.into_iter().filter(|r| r.id != lost).collect();
    let ours: Vec<_> = first.iter().filter(|r| r.id != forgot).cloned().collect();
    feed.ingest(institution, &ledger(&ours));
    feed.ingest(platform, &ledger(&theirs));

    let summary = feed.flush(RECONCILE_TIMEOUT).await;
    assert_eq!(summary.batches, 2);
    assert_eq!((summary.agreed, summary.inconsistent), (1, 1));
    assert_eq!(summary.unfinished, 0);
    assert_eq!(summary.institution.records, 79);
    assert_eq!(summary.platform.records, 79);
    assert_eq!(summary.duplicate_records, 10);
    let found: BTreeMap<RecordId, (InconsistencyKind, Option<SagaId>)> = summary
        .findings
        .iter()
        .map(|f| (f.record_id, (f.kind, f.saga)))
        .collect();
    let saga = |i: usize| Some(first[i].saga_id);
    assert_eq!(
        found,
        BTreeMap::from([
            (lost, (InconsistencyKind::Extra, saga(3))),
            (forgot, (InconsistencyKind::Missing, saga(7))),
            (altered, (InconsistencyKind::Altered, saga(11))),
        ])
    );
    assert_eq!(summary.findings_total(), 3);
    // The honest batch cost one comparison; the other drilled down to its records only.
    assert_eq!(summary.levels.batch.compared, 2);
    assert_eq!(summary.levels.batch.unequal, 1);
    assert!(summary.levels.record.compared < 20, "{:?}", summary.levels);
    assert!(!summary.ok());

    // Records for a batch already reconciled are late; records decided before the feed
    // started are stale; neither is reconciled.
    feed.ingest(platform, &ledger(&first[..1]));
    feed.ingest(platform, &ledger(&[step_record(99, 1)]));
    let after = feed.flush(RECONCILE_TIMEOUT).await;
    assert_eq!((after.late_records, after.stale_records), (1, 1));
    assert_eq!(after.batches, 2);
    node.shutdown();
}
