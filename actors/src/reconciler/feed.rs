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
//! for the coordinator's retried commit, a wallet's for the outcome), and then the sides this
//! node hosts are loaded — an empty side too, so a batch only one side knows is still compared.
//! A record that arrives for a batch already closed is counted as late (its batch was
//! reconciled without it and reported it). Records decided before the feed started (steps
//! re-driven after a process restart, whose other copy the previous process published) are
//! counted as stale, not reconciled. [`Feed::flush`] closes every open batch at once and waits
//! for the results.
//!
//! # On a node of a cluster
//!
//! A feed loads only the sides its node hosts: the institution side of the institutions whose
//! reconcilers run here, the platform side if the platform's reconciler does. Institution-side
//! records are made by the institution itself, so they are always local. Platform-side records
//! are made wherever the wallet or escrow contract lives: a node without the platform's
//! reconciler forwards them to the one with it (the [`Forwarder`] and the ledger inbox of
//! [`crate::reconciler::forward`]), whose feed takes them like its own. After loading, the feed
//! tells its reconcilers which batches are closed ([`ReconcilerCommand::CloseBelow`]), so a
//! batch only one side had records in is compared against an empty batch on the other side:
//! the platform loads an empty side for an institution's post of a closed batch it holds
//! nothing of, and asks an institution that has not posted a closed batch for its post, which
//! that institution answers with an empty batch if it never had a record in it.
//!
//! Results are collected from the reconcilers whose reports this node reads: the platform's
//! (every institution's batches) where it runs, else the local institutions' (their own).
//!
//! [`ReconcilerCommand::CloseBelow`]: crate::reconciler::ReconcilerCommand::CloseBelow

use crate::reconciler::forward::{Forwarder, InboxStats, LedgerInbox};
use crate::reconciler::hash::{Batch, BatchKey};
use crate::reconciler::local::LocalReconcilers;
use crate::reconciler::state::{BatchStatus, LevelCounts};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use specie_protocol::reconcile::{
    BatchId, InconsistencyKind, RecordId, RecordKind, TransactionRecord,
};
use specie_protocol::{Address, InstitutionId, SagaId};
use specie_runtime::{Clock, LedgerRecord, Node};
use std::collections::{BTreeMap, BTreeSet};
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

impl FeedSettings {
    /// Every batch below this id is closed at `now_ms`.
    fn closed_below(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.close_after_ms) / self.batch_interval_ms
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
    /// The record's saga and kind, from whichever side has it (unknown at a platform whose
    /// institution's reconciler runs on another node, for a record only the institution has).
    pub saga: Option<SagaId>,
    /// The step the record is about.
    pub record_kind: Option<RecordKind>,
}

/// The open batches a node keeps across a graceful restart.
#[derive(Serialize, Deserialize)]
struct OpenBatches {
    batches: Vec<(BatchKey, Vec<TransactionRecord>, Vec<TransactionRecord>)>,
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
    /// Batches loaded into the reconcilers (on at least one side).
    pub batches: u64,
    /// Batches reconciled to the end, as read from the reconcilers whose results this node
    /// collects: agreed or inconsistent.
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
    /// Records of open batches an earlier process of this node kept and this one took back.
    pub restored_records: u64,
    /// A record id produced twice by one side with the same content (ignored).
    pub duplicate_records: u64,
    /// A record id produced twice by one side with different content (the first kept).
    pub conflicting_records: u64,
    /// Records still waiting in open batches.
    pub open_records: u64,
    /// Platform-side records handed to the forwarder (a node without the platform).
    pub forwarded_records: u64,
    /// Forwards the ledger inbox took (the platform's node).
    pub forwards_received: u64,
    /// Copies of forwards the ledger inbox ignored.
    pub duplicate_forwards: u64,
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

    /// One line for a log: batches, findings, records.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} batches reconciled ({} agreed, {} inconsistent), {} findings, {} hashes compared; records {} institution / {} platform",
            self.reconciled,
            self.agreed,
            self.inconsistent,
            self.findings_total(),
            self.hashes_compared(),
            self.institution.records,
            self.platform.records,
        );
        if self.forwarded_records > 0 {
            line += &format!(", {} forwarded", self.forwarded_records);
        }
        if self.forwards_received > 0 || self.duplicate_forwards > 0 {
            line += &format!(
                ", {} forwards received ({} copies ignored)",
                self.forwards_received, self.duplicate_forwards
            );
        }
        if self.late_records > 0 {
            line += &format!(", {} late", self.late_records);
        }
        line += &format!(
            "; {} batches in progress, {} records in open batches",
            self.unfinished, self.open_records
        );
        line
    }
}

/// The feed's state, shared by the ledger sink, the ticker and the flush.
struct State {
    settings: FeedSettings,
    started_ms: u64,
    /// The platform's reconciler runs here: platform-side records are loaded here.
    hosts_platform: bool,
    /// Institutions whose reconcilers run here: their institution-side records are loaded.
    institutions: BTreeSet<InstitutionId>,
    buckets: BTreeMap<BatchKey, Bucket>,
    /// Every batch below this id is closed.
    closed_below: u64,
    /// Batches at or above `closed_below` closed early (by a flush).
    closed: BTreeSet<BatchKey>,
    /// Loaded, result not collected yet.
    pending: BTreeSet<BatchKey>,
    /// Per reconciler whose results are collected (`None`: the platform's), how many of its
    /// finished batches were read.
    cursors: BTreeMap<Option<InstitutionId>, u64>,
    summary: FeedSummary,
}

impl State {
    /// Takes the records of one durable step of `side`; returns the platform-side records to
    /// forward (this node has no platform reconciler). Records forwarded by another node were
    /// checked for staleness there (`local` is false): they count here while their batch is
    /// open, even if decided before this feed started (while this node was down).
    fn ingest(&mut self, side: Side, records: &[LedgerRecord], local: bool) -> Vec<LedgerRecord> {
        let mut forward = Vec::new();
        for r in records {
            if local && r.record.at_ms < self.started_ms {
                self.summary.stale_records += 1;
                continue;
            }
            match side {
                Side::Platform if !self.hosts_platform => {
                    forward.push(r.clone());
                    continue;
                }
                Side::Institution if !self.institutions.contains(&r.institution) => {
                    // Institutions record their own steps only, so this cannot happen.
                    metrics::counter!("specie_reconcile_foreign_records_total").increment(1);
                    continue;
                }
                _ => {}
            }
            let key = BatchKey {
                institution: r.institution,
                batch_id: BatchId(r.record.at_ms / self.settings.batch_interval_ms),
            };
            if key.batch_id.0 < self.closed_below || self.closed.contains(&key) {
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
        self.summary.forwarded_records += forward.len() as u64;
        forward
    }

    /// Takes the buckets due at `now_ms` (all of them with `all`), marking them closed.
    fn take_due(&mut self, now_ms: u64, all: bool) -> Vec<(BatchKey, Bucket)> {
        let below = self.settings.closed_below(now_ms).max(self.closed_below);
        let due: Vec<BatchKey> = self
            .buckets
            .keys()
            .filter(|k| all || k.batch_id.0 < below)
            .copied()
            .collect();
        self.closed_below = below;
        let taken = due
            .into_iter()
            .map(|k| {
                if k.batch_id.0 >= below {
                    self.closed.insert(k);
                }
                (k, self.buckets.remove(&k).expect("listed above"))
            })
            .collect();
        self.closed.retain(|k| k.batch_id.0 >= below);
        taken
    }

    fn open_records(&self) -> u64 {
        self.buckets
            .values()
            .map(|b| (b.institution.len() + b.platform.len()) as u64)
            .sum()
    }

    /// The reconcilers whose finished batches this node reports.
    fn result_sources(&self) -> Vec<Option<InstitutionId>> {
        if self.hosts_platform {
            vec![None]
        } else {
            self.institutions.iter().map(|i| Some(*i)).collect()
        }
    }
}

/// Continuous reconciliation on a node (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    state: Arc<Mutex<State>>,
    reconcilers: Arc<LocalReconcilers>,
    clock: Arc<dyn Clock>,
    stopped: Arc<AtomicBool>,
    /// A node without the platform's reconciler: sends platform-side records to the inbox.
    forwarder: Option<Forwarder>,
    /// The node with the platform's reconciler: the ledger inbox's counters, once started.
    inbox: Arc<Mutex<Option<Arc<InboxStats>>>>,
    /// Held while collecting results (the ticker and a flush may both collect): each finished
    /// batch is read once.
    collecting: Arc<tokio::sync::Mutex<()>>,
    /// Held from taking due batches until they are loaded and the reconcilers are told what is
    /// closed: a batch is never announced closed before its records were loaded.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("settings", &self.state.lock().settings)
            .field("reconcilers", &self.reconcilers)
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
        let forwarder =
            (!reconcilers.hosts_platform()).then(|| Forwarder::new(node.network().clone()));
        let state = State {
            settings,
            started_ms: node.clock().now_ms(),
            hosts_platform: reconcilers.hosts_platform(),
            institutions: reconcilers.institutions().into_iter().collect(),
            buckets: BTreeMap::new(),
            closed_below: 0,
            closed: BTreeSet::new(),
            pending: BTreeSet::new(),
            cursors: BTreeMap::new(),
            summary: FeedSummary::default(),
        };
        Feed {
            state: Arc::new(Mutex::new(state)),
            reconcilers,
            clock: node.clock().clone(),
            stopped: Arc::new(AtomicBool::new(false)),
            forwarder,
            inbox: Arc::new(Mutex::new(None)),
            collecting: Arc::new(tokio::sync::Mutex::new(())),
            loading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Learns what the reconcilers already hold (an earlier run's, recovered from the
    /// journal): results finished before are not counted again, and the last batch they know
    /// may reach past this feed's start (a run that ended just before, whose final flush closed
    /// its open batch early): whatever was decided before its end is stale, records taken
    /// meanwhile included.
    async fn learn_known(&self) {
        let mut sources: Vec<Option<InstitutionId>> = Vec::new();
        if self.reconcilers.hosts_platform() {
            sources.push(None);
        }
        sources.extend(self.reconcilers.institutions().into_iter().map(Some));
        let mut known = Vec::new();
        for source in sources {
            if let Ok(progress) = self.reconcilers.progress(source).await {
                known.push((source, progress));
            }
        }
        let mut st = self.state.lock();
        let interval = st.settings.batch_interval_ms;
        let known_end = known
            .iter()
            .filter_map(|(_, (latest, _))| *latest)
            .map(|b| b.0.saturating_add(1).saturating_mul(interval))
            .max();
        st.started_ms = st.started_ms.max(known_end.unwrap_or(0));
        for source in st.result_sources() {
            let finished = known
                .iter()
                .find(|(s, _)| *s == source)
                .map_or(0, |(_, (_, finished))| *finished);
            st.cursors.insert(source, finished);
        }
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
    }

    /// Starts a feed: listens to `node`'s ledger sink (from now on: records of steps decided
    /// before are stale) and, on the current actix arbiter, closes and reconciles due batches
    /// until [`Feed::stop`]. Where the platform's reconciler runs, it also takes the platform-side
    /// records other nodes forward (the ledger inbox); elsewhere it forwards this node's.
    /// Must run inside an actix system.
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
        if feed.reconcilers.hosts_platform() {
            let sink = feed.clone();
            let stats = LedgerInbox::start(
                node.network(),
                Arc::new(move |records: &[LedgerRecord]| sink.ingest_forwarded(records)),
            );
            *feed.inbox.lock() = Some(stats);
        }
        if let Some(forwarder) = &feed.forwarder {
            forwarder.start();
        }
        feed.learn_known().await;
        let ticker = feed.clone();
        let tick = Duration::from_millis((settings.batch_interval_ms / 4).clamp(10, 250));
        actix::spawn(async move {
            while !ticker.stopped.load(Ordering::Acquire) {
                tokio::time::sleep(tick).await;
                ticker.close_due(false).await;
                ticker.collect().await;
            }
        });
        feed
    }

    /// Takes the records of one durable step of `source` (the node's ledger sink calls it).
    pub fn ingest(&self, source: Address, records: &[LedgerRecord]) {
        let forward = self.state.lock().ingest(Side::of(source), records, true);
        if !forward.is_empty() {
            if let Some(forwarder) = &self.forwarder {
                forwarder.push(&forward);
            }
        }
    }

    /// Takes platform-side records another node forwarded (the ledger inbox calls it).
    pub fn ingest_forwarded(&self, records: &[LedgerRecord]) {
        self.state.lock().ingest(Side::Platform, records, false);
    }

    /// The records of the batches still open, as bytes to keep across a restart (a node
    /// stopping gracefully stores them in its journal's meta table; see
    /// [`Feed::restore_open`]). Call it after [`Feed::stop`].
    pub fn open_batches(&self) -> Vec<u8> {
        let st = self.state.lock();
        let open = OpenBatches {
            batches: st
                .buckets
                .iter()
                .map(|(key, b)| {
                    (
                        *key,
                        b.institution.values().cloned().collect(),
                        b.platform.values().cloned().collect(),
                    )
                })
                .collect(),
        };
        postcard::to_stdvec(&open).expect("records serialize")
    }

    /// Takes back the open batches an earlier process of this node kept (from
    /// [`Feed::open_batches`]), so that a restart does not reconcile them without the records
    /// taken before it. Batches closed meanwhile are skipped. Returns how many records came
    /// back; undecodable bytes are an error and change nothing.
    pub fn restore_open(&self, bytes: &[u8]) -> Result<u64, String> {
        let open: OpenBatches = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let mut st = self.state.lock();
        let mut restored = 0;
        for (key, institution, platform) in open.batches {
            if key.batch_id.0 < st.closed_below || st.closed.contains(&key) {
                continue;
            }
            let bucket = st.buckets.entry(key).or_default();
            for r in institution {
                restored += u64::from(bucket.institution.insert(r.id, r).is_none());
            }
            for r in platform {
                restored += u64::from(bucket.platform.insert(r.id, r).is_none());
            }
        }
        st.summary.restored_records += restored;
        Ok(restored)
    }

    /// Stops the ticker and sends what the forwarder holds (a flush still works).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(forwarder) = &self.forwarder {
            forwarder.stop();
        }
    }

    /// Closes the batches due now (every open one with `all`), loads them, and tells the
    /// reconcilers which batches are closed.
    async fn close_due(&self, all: bool) {
        let _loading = self.loading.lock().await;
        let now = self.clock.now_ms();
        let due = self.state.lock().take_due(now, all);
        self.load(due).await;
    }

    /// Loads closed batches into the reconcilers of the sides this node hosts, then tells
    /// the reconcilers which batches are closed.
    async fn load(&self, batches: Vec<(BatchKey, Bucket)>) {
        let (hosts_platform, below) = {
            let st = self.state.lock();
            (st.hosts_platform, st.closed_below)
        };
        for (key, bucket) in batches {
            let hosts_institution = self.reconcilers.hosts_institution(key.institution);
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
            let mut loaded = Ok(());
            if hosts_institution {
                loaded = self.reconcilers.load_institution(institution).await;
            }
            if hosts_platform && loaded.is_ok() {
                loaded = self.reconcilers.load_platform(platform).await;
            }
            let mut st = self.state.lock();
            match loaded {
                Ok(()) => {
                    st.summary.batches += 1;
                    st.pending.insert(key);
                }
                Err(e) => eprintln!("specie: reconciliation of {key} not loaded: {e}"),
            }
        }
        if let Err(e) = self.reconcilers.close_below(BatchId(below)).await {
            eprintln!("specie: reconciliation: {e}");
        }
    }

    /// Collects the results of the batches the reconcilers finished since the last look.
    async fn collect(&self) {
        let _collecting = self.collecting.lock().await;
        let sources = self.state.lock().result_sources();
        for source in sources {
            let cursor = self.state.lock().cursors.get(&source).copied().unwrap_or(0);
            let Ok(finished) = self.reconcilers.finished_since(source, cursor).await else {
                continue;
            };
            if finished.missed > 0 {
                eprintln!(
                    "specie: reconciliation: {} results finished and forgotten before they were read",
                    finished.missed
                );
            }
            for status in finished.statuses {
                let findings = self.findings_of(source, &status).await;
                self.record(&status, findings);
            }
            self.state.lock().cursors.insert(source, finished.cursor);
        }
    }

    /// The inconsistent records of a finished batch, with the facts this node knows.
    async fn findings_of(
        &self,
        source: Option<InstitutionId>,
        status: &BatchStatus,
    ) -> Vec<FoundRecord> {
        let key = status.key;
        let mut findings: Vec<FoundRecord> = status
            .findings
            .iter()
            .map(|f| {
                let known = f.platform.as_ref().or(f.institution.as_ref());
                FoundRecord {
                    institution: key.institution,
                    batch_id: key.batch_id,
                    record_id: f.record_id,
                    kind: f.kind,
                    saga: known.map(|r| r.saga_id),
                    record_kind: known.map(|r| r.kind),
                }
            })
            .collect();
        let unknown = findings.iter().any(|f| f.saga.is_none());
        if source.is_none() && unknown && self.reconcilers.hosts_institution(key.institution) {
            // Only the institution has these records: its reconciler holds its version.
            if let Ok(Some(theirs)) = self.reconcilers.status(Some(key.institution), key).await {
                for f in findings.iter_mut().filter(|f| f.saga.is_none()) {
                    let record = theirs
                        .findings
                        .iter()
                        .find(|i| i.record_id == f.record_id)
                        .and_then(|i| i.institution.as_ref());
                    f.saga = record.map(|r| r.saga_id);
                    f.record_kind = record.map(|r| r.kind);
                }
            }
        }
        findings
    }

    fn record(&self, status: &BatchStatus, findings: Vec<FoundRecord>) {
        let agreed = status.report.as_ref().is_some_and(|r| r.agreed());
        let mut st = self.state.lock();
        st.pending.remove(&status.key);
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

    /// Closes every open batch now, reconciles it, and waits (at most `timeout`) until every
    /// loaded batch has its result. Returns the summary; batches still unreconciled are
    /// counted as unfinished.
    pub async fn flush(&self, timeout: Duration) -> FeedSummary {
        let deadline = Instant::now() + timeout;
        self.close_due(true).await;
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
        drop(st);
        if let Some(inbox) = self.inbox.lock().as_ref() {
            let counts = inbox.counts();
            summary.forwards_received = counts.forwards;
            summary.duplicate_forwards = counts.duplicates;
        }
        summary
    }

    /// The settings.
    pub fn settings(&self) -> FeedSettings {
        self.state.lock().settings
    }

    /// The reconcilers it feeds.
    pub fn reconcilers(&self) -> &Arc<LocalReconcilers> {
        &self.reconcilers
    }
}
