//! Continuous reconciliation on a node: the [`Feed`] collects the transaction records both
//! sides produce, batches them by (institution, time), loads every closed batch into the
//! institution's and the platform's reconcilers, and collects the results.
//!
//! ```text
//!   institution steps ──records──┐                 ┌─► institution reconciler ─┐ batch hash,
//!                                ├─► node ledger ──┤   (institution side)       │ drill-down,
//!   wallets, escrows ──records───┘   sink → Feed   └─► platform reconciler ─────┘ report
//!                                  buckets by (institution, at_ms / batch_interval_ms)
//! ```
//!
//! A record's side is the kind of actor that produced it: an institution's own record is the
//! institution side, a wallet's or an escrow contract's copy is the platform's. Its batch is
//! `(institution, at_ms / batch_interval_ms)`: both sides stamp a record with the same decision
//! time, so both copies land in the same batch. A batch is closed once the clock passes its end
//! plus `close_after_ms` (time for the slower side's copy to arrive: an issuer's record waits
//! for the coordinator's retried commit, a wallet's for the outcome), and then both sides are
//! loaded — an empty side too, so a batch only one side knows is still compared. A record that
//! arrives for a batch already closed is counted as late (its batch was reconciled without it
//! and reported it). Records decided before the feed started (steps re-driven after a process
//! restart, whose other copy the previous process published) are counted as stale, not
//! reconciled. [`Feed::flush`] closes every open batch at once and waits for the results.

use crate::reconciler::hash::{Batch, BatchKey};
use crate::reconciler::local::LocalReconcilers;
use crate::reconciler::state::{LevelCounts, Progress};
use parking_lot::Mutex;
use specie_protocol::reconcile::{
    BatchId, InconsistencyKind, RecordId, RecordKind, TransactionRecord,
};
use specie_protocol::{Address, InstitutionId, SagaId};
use specie_runtime::{Clock, LedgerRecord, Node};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most inconsistent records a [`FeedSummary`] lists (all are counted).
pub const FINDINGS_LISTED_MAX: usize = 100;

/// Settings of continuous reconciliation (the config's `[reconcile]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSettings {
    /// Width of a batch in decision time: a record decided at `t` is in batch
    /// `t / batch_interval_ms` of its institution.
    pub batch_interval_ms: u64,
    /// A batch is closed and reconciled this long after its end.
    pub close_after_ms: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            batch_interval_ms: 1_000,
            close_after_ms: 5_000,
        }
    }
}

/// Which side of reconciliation a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The institution's own record of its step.
    Institution,
    /// The reconciliation platform's copy (made by a wallet or an escrow contract).
    Platform,
}

impl Side {
    /// The side of a record produced by `source`.
    pub fn of(source: Address) -> Side {
        match source {
            Address::Institution(_) => Side::Institution,
            _ => Side::Platform,
        }
    }

    /// The snake_case name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Side::Institution => "institution",
            Side::Platform => "platform",
        }
    }
}

/// One inconsistent record a batch's reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRecord {
    /// The institution reconciled.
    pub institution: InstitutionId,
    /// Its batch.
    pub batch_id: BatchId,
    /// The record.
    pub record_id: RecordId,
    /// How it differs, from the institution's point of view: `missing` (only the platform
    /// has it), `extra` (only the institution has it), `altered` (both, different).
    pub kind: InconsistencyKind,
    /// The record's saga and kind, from whichever side has it.
    pub saga: Option<SagaId>,
    /// The step the record is about.
    pub record_kind: Option<RecordKind>,
}

/// Records of one side of one batch, unique by id.
#[derive(Debug, Default)]
struct Bucket {
    institution: BTreeMap<RecordId, TransactionRecord>,
    platform: BTreeMap<RecordId, TransactionRecord>,
}

impl Bucket {
    fn side(&mut self, side: Side) -> &mut BTreeMap<RecordId, TransactionRecord> {
        match side {
            Side::Institution => &mut self.institution,
            Side::Platform => &mut self.platform,
        }
    }
}

/// Per side: records and their amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideTotals {
    /// Records loaded.
    pub records: u64,
    /// Their amounts' sum (fen).
    pub amount: u64,
}

impl SideTotals {
    fn add(&mut self, r: &TransactionRecord) {
        self.records += 1;
        self.amount = self.amount.saturating_add(r.amount.0);
    }
}

/// What continuous reconciliation did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedSummary {
    /// Batches loaded into the reconcilers.
    pub batches: u64,
    /// Of those, reconciled to the end: agreed or inconsistent.
    pub reconciled: u64,
    /// Batches whose hashes agreed at once.
    pub agreed: u64,
    /// Batches with at least one inconsistent record.
    pub inconsistent: u64,
    /// Loaded but not reconciled yet (at a flush: not within its timeout).
    pub unfinished: u64,
    /// Records loaded on the institution side.
    pub institution: SideTotals,
    /// Records loaded on the platform side.
    pub platform: SideTotals,
    /// Per record kind: (institution side, platform side) records loaded.
    pub records_by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Hashes compared, per level, over every reconciled batch.
    pub levels: LevelCounts,
    /// Inconsistent records found, by kind (`missing`, `extra`, `altered`).
    pub findings_by_kind: BTreeMap<&'static str, u64>,
    /// The first [`FINDINGS_LISTED_MAX`] inconsistent records, in the order found.
    pub findings: Vec<FoundRecord>,
    /// Records that arrived for a batch already closed.
    pub late_records: u64,
    /// Records decided before the feed started (not reconciled).
    pub stale_records: u64,
    /// A record id produced twice by one side with the same content (ignored).
    pub duplicate_records: u64,
    /// A record id produced twice by one side with different content (the first kept).
    pub conflicting_records: u64,
    /// Records still waiting in open batches.
    pub open_records: u64,
}

impl FeedSummary {
    /// Every inconsistent record found.
    pub fn findings_total(&self) -> u64 {
        self.findings_by_kind.values().sum()
    }

    /// Hashes compared at every level.
    pub fn hashes_compared(&self) -> u64 {
        self.levels.hashes_compared()
    }

    /// Every batch reconciled with both sides agreeing, none left unfinished, and no record
    /// late or contradicting itself.
    pub fn ok(&self) -> bool {
        self.findings_total() == 0
            && self.inconsistent == 0
            && self.unfinished == 0
            && self.late_records == 0
            && self.conflicting_records == 0
    }
}

/// The feed's state, shared by the ledger sink, the ticker and the flush.
struct State {
    settings: FeedSettings,
    started_ms: u64,
    buckets: BTreeMap<BatchKey, Bucket>,
    /// Batches loaded (this run's and, with a durable journal, earlier runs').
    closed: HashSet<BatchKey>,
    /// Loaded, result not collected yet.
    pending: BTreeSet<BatchKey>,
    summary: FeedSummary,
}

impl State {
    fn ingest(&mut self, source: Address, records: &[LedgerRecord]) {
        let side = Side::of(source);
        for r in records {
            if r.record.at_ms < self.started_ms {
                self.summary.stale_records += 1;
                continue;
            }
            let key = BatchKey {
                institution: r.institution,
                batch_id: BatchId(r.record.at_ms / self.settings.batch_interval_ms),
            };
            if self.closed.contains(&key) {
                self.summary.late_records += 1;
                metrics::counter!("specie_reconcile_late_records_total").increment(1);
                continue;
            }
            let bucket = self.buckets.entry(key).or_default().side(side);
            match bucket.get(&r.record.id) {
                None => {
                    bucket.insert(r.record.id, r.record.clone());
                }
                Some(kept) if *kept == r.record => self.summary.duplicate_records += 1,
                Some(_) => self.summary.conflicting_records += 1,
            }
        }
    }

    /// Takes the buckets due at `now_ms` (all of them with `all`), marking them closed.
    fn take_due(&mut self, now_ms: u64, all: bool) -> Vec<(BatchKey, Bucket)> {
        let FeedSettings {
            batch_interval_ms,
            close_after_ms,
        } = self.settings;
        let due: Vec<BatchKey> = self
            .buckets
            .keys()
            .filter(|k| {
                let end = k
                    .batch_id
                    .0
                    .saturating_add(1)
                    .saturating_mul(batch_interval_ms);
                all || end.saturating_add(close_after_ms) <= now_ms
            })
            .copied()
            .collect();
        due.into_iter()
            .map(|k| {
                self.closed.insert(k);
                (k, self.buckets.remove(&k).expect("listed above"))
            })
            .collect()
    }

    fn open_records(&self) -> u64 {
        self.buckets
            .values()
            .map(|b| (b.institution.len() + b.platform.len()) as u64)
            .sum()
    }
}

/// Continuous reconciliation on a node (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    state: Arc<Mutex<State>>,
    reconcilers: Arc<LocalReconcilers>,
    clock: Arc<dyn Clock>,
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("settings", &self.state.lock().settings)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// A feed into `reconcilers` on `node`'s clock, not yet listening. Batches the reconcilers
    /// already know (from an earlier run's journal) count as closed.
    pub async fn new(
        node: &Node,
        reconcilers: Arc<LocalReconcilers>,
        settings: FeedSettings,
    ) -> Feed {
        let feed = Feed::unaware(node, reconcilers, settings);
        feed.learn_known().await;
        feed
    }

    /// A feed that starts now and knows no batch yet.
    fn unaware(node: &Node, reconcilers: Arc<LocalReconcilers>, settings: FeedSettings) -> Feed {
        assert!(settings.batch_interval_ms > 0, "batches need a width");
        let state = State {
            settings,
            started_ms: node.clock().now_ms(),
            buckets: BTreeMap::new(),
            closed: HashSet::new(),
            pending: BTreeSet::new(),
            summary: FeedSummary::default(),
        };
        Feed {
            state: Arc::new(Mutex::new(state)),
            reconcilers,
            clock: node.clock().clone(),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the batches the reconcilers already hold (an earlier run's, recovered from the
    /// journal) as closed. The last of them may reach past this feed's start (a run that ended
    /// just before, whose final flush closed its open batch early): whatever was decided
    /// before its end is stale, records taken meanwhile included.
    async fn learn_known(&self) {
        let Ok(snapshot) = self.reconcilers.platform_snapshot().await else {
            return;
        };
        let mut st = self.state.lock();
        let interval = st.settings.batch_interval_ms;
        let known_end = snapshot
            .batches
            .iter()
            .map(|b| b.key.batch_id.0.saturating_add(1).saturating_mul(interval))
            .max();
        st.started_ms = st.started_ms.max(known_end.unwrap_or(0));
        let started = st.started_ms;
        let mut stale = 0;
        st.buckets.retain(|_, bucket| {
            for side in [&mut bucket.institution, &mut bucket.platform] {
                let before = side.len();
                side.retain(|_, r| r.at_ms >= started);
                stale += (before - side.len()) as u64;
            }
            !(bucket.institution.is_empty() && bucket.platform.is_empty())
        });
        st.summary.stale_records += stale;
        st.closed.extend(snapshot.batches.iter().map(|b| b.key));
    }

    /// Starts a feed: listens to `node`'s ledger sink (from now on: records of steps decided
    /// before are stale) and, on the current actix arbiter, closes and reconciles due batches
    /// until [`Feed::stop`]. Must run inside an actix system.
    pub async fn start(
        node: &Node,
        reconcilers: Arc<LocalReconcilers>,
        settings: FeedSettings,
    ) -> Feed {
        let feed = Feed::unaware(node, reconcilers, settings);
        // Listen before anything else: actors already run, and a record decided after the start
        // but published before the sink was in place would be lost to one side.
        let sink = feed.clone();
        node.observe_ledger(Arc::new(move |source, records| {
            sink.ingest(source, records)
        }));
        feed.learn_known().await;
        let ticker = feed.clone();
        let tick = Duration::from_millis((settings.batch_interval_ms / 4).clamp(10, 250));
        actix::spawn(async move {
            while !ticker.stopped.load(Ordering::Acquire) {
                tokio::time::sleep(tick).await;
                let now = ticker.clock.now_ms();
                let due = ticker.state.lock().take_due(now, false);
                ticker.load(due).await;
                ticker.collect().await;
            }
        });
        feed
    }

    /// Takes the records of one durable step of `source` (the node's ledger sink calls it).
    pub fn ingest(&self, source: Address, records: &[LedgerRecord]) {
        self.state.lock().ingest(source, records);
    }

    /// Stops the ticker (a flush still works).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Loads closed batches into both sides' reconcilers.
    async fn load(&self, batches: Vec<(BatchKey, Bucket)>) {
        for (key, bucket) in batches {
            {
                let mut st = self.state.lock();
                let s = &mut st.summary;
                for (side, records) in [
                    (Side::Institution, &bucket.institution),
                    (Side::Platform, &bucket.platform),
                ] {
                    for r in records.values() {
                        match side {
                            Side::Institution => s.institution.add(r),
                            Side::Platform => s.platform.add(r),
                        }
                        let by_kind = s.records_by_kind.entry(r.kind.name()).or_default();
                        match side {
                            Side::Institution => by_kind.0 += 1,
                            Side::Platform => by_kind.1 += 1,
                        }
                    }
                    metrics::counter!("specie_reconcile_records_total", "side" => side.name())
                        .increment(records.len() as u64);
                }
            }
            let institution = Batch::new(key, bucket.institution.into_values());
            let platform = Batch::new(key, bucket.platform.into_values());
            let (institution, platform) = match (institution, platform) {
                (Ok(i), Ok(p)) => (i, p),
                (Err(e), _) | (_, Err(e)) => {
                    // Unique ids by construction; only an oversized batch gets here.
                    eprintln!("specie: reconciliation of {key} skipped: {e}");
                    continue;
                }
            };
            let loaded = match self.reconcilers.load_institution(institution).await {
                Ok(()) => self.reconcilers.load_platform(platform).await,
                Err(e) => Err(e),
            };
            let mut st = self.state.lock();
            match loaded {
                Ok(()) => {
                    st.summary.batches += 1;
                    st.pending.insert(key);
                }
                Err(e) => eprintln!("specie: reconciliation of {key} not loaded: {e}"),
            }
        }
    }

    /// Collects the results of loaded batches the platform finished reconciling.
    async fn collect(&self) {
        if self.state.lock().pending.is_empty() {
            return;
        }
        let Ok(snapshot) = self.reconcilers.platform_snapshot().await else {
            return;
        };
        for status in snapshot.batches {
            if status.progress != Progress::Done {
                continue;
            }
            // Whoever takes the key out of `pending` records the result, once.
            if !self.state.lock().pending.remove(&status.key) {
                continue;
            }
            let key = status.key;
            let mut findings: Vec<FoundRecord> = status
                .findings
                .iter()
                .map(|f| FoundRecord {
                    institution: key.institution,
                    batch_id: key.batch_id,
                    record_id: f.record_id,
                    kind: f.kind,
                    saga: f.platform.as_ref().map(|r| r.saga_id),
                    record_kind: f.platform.as_ref().map(|r| r.kind),
                })
                .collect();
            if findings.iter().any(|f| f.saga.is_none()) {
                // Only the institution has these records: its reconciler holds its version.
                if let Ok(s) = self.reconcilers.institution_snapshot(key.institution).await {
                    if let Some(b) = s.batch(key) {
                        for f in findings.iter_mut().filter(|f| f.saga.is_none()) {
                            let theirs = b
                                .findings
                                .iter()
                                .find(|i| i.record_id == f.record_id)
                                .and_then(|i| i.institution.as_ref());
                            f.saga = theirs.map(|r| r.saga_id);
                            f.record_kind = theirs.map(|r| r.kind);
                        }
                    }
                }
            }
            let agreed = status.report.as_ref().is_some_and(|r| r.agreed());
            let mut st = self.state.lock();
            let s = &mut st.summary;
            s.reconciled += 1;
            let result = if agreed { "agreed" } else { "inconsistent" };
            metrics::counter!("specie_reconcile_batches_total", "result" => result).increment(1);
            if agreed {
                s.agreed += 1;
            } else {
                s.inconsistent += 1;
            }
            for (level, count) in [
                (&mut s.levels.batch, status.counts.batch),
                (&mut s.levels.shard, status.counts.shard),
                (&mut s.levels.record, status.counts.record),
            ] {
                level.compared += count.compared;
                level.unequal += count.unequal;
            }
            for f in findings {
                metrics::counter!("specie_reconcile_findings_total", "kind" => f.kind.name())
                    .increment(1);
                *s.findings_by_kind.entry(f.kind.name()).or_default() += 1;
                if s.findings.len() < FINDINGS_LISTED_MAX {
                    s.findings.push(f);
                }
            }
        }
    }

    /// Closes every open batch now, reconciles it, and waits (at most `timeout`) until every
    /// loaded batch has its result. Returns the summary; batches still unreconciled are
    /// counted as unfinished.
    pub async fn flush(&self, timeout: Duration) -> FeedSummary {
        let deadline = Instant::now() + timeout;
        let now = self.clock.now_ms();
        let all = self.state.lock().take_due(now, true);
        self.load(all).await;
        loop {
            self.collect().await;
            if self.state.lock().pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.summary()
    }

    /// What the feed did so far.
    pub fn summary(&self) -> FeedSummary {
        let st = self.state.lock();
        let mut summary = st.summary.clone();
        summary.unfinished = st.pending.len() as u64;
        summary.open_records = st.open_records();
        summary
    }

    /// The settings.
    pub fn settings(&self) -> FeedSettings {
        self.state.lock().settings
    }
}
