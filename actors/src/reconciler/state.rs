//! The reconciler's rules, for both roles.
//!
//! An institution's reconciler holds the institution's batches: it posts each batch hash to
//! the platform (retried until acknowledged), answers the platform's questions about its
//! hashes, and keeps the report it is sent. The platform's reconciler holds the platform's
//! batches and the hash chain, and drives one session per batch:
//!
//! ```text
//!   Waiting ──both hashes on the chain, equal──────────────────────────────► Reporting ─ack─► Done
//!      │
//!      └──unequal──► Shards{level 0} ─► … ─► Shards{level D-1} ─► Records ─► Reporting ─ack─► Done
//!                    (children of the unequal nodes only)        (record hashes of the
//!                                                                 unequal shards only)
//! ```
//!
//! Every phase sends all its requests at once, and a timer resends the ones still pending
//! (with backoff) until they are answered; a timer armed in an earlier phase finds the
//! session's step moved on and dies. Every reply is checked against what the institution
//! committed to before — a node's children must hash to the node's hash, which for the root
//! is the batch hash on the chain — so a stale, duplicated or garbled reply changes nothing,
//! and a reply for nodes no longer pending is ignored. Posts are idempotent by batch id (the
//! chain holds one post per poster and batch), as are reports (the first one is kept; every
//! copy is acknowledged).
//!
//! # A batch only one side saw
//!
//! On a node, the feed tells its reconcilers which intervals are closed there
//! ([`ReconcilerCommand::CloseBelow`]: every batch below this id has had its records loaded,
//! if it had any). A batch that one side holds and the other never had a record in is then
//! still compared, against an empty batch:
//! - an institution's post for a batch the platform holds nothing of, once that batch is
//!   closed at the platform, makes the platform load an empty batch of its own;
//! - the platform, holding its side of a closed batch the institution has not posted, asks
//!   the institution for its post ([`Payload::BatchHashRequest`], retried with backoff); an
//!   institution that has the batch posts it again, one that has not and has closed the
//!   batch too posts an empty batch. One that has not closed it yet says nothing (the
//!   platform asks again), so a batch is never posted empty before its records were loaded.
//!
//! # Bounded memory
//!
//! A batch's records and hashes (about 240 KB per side, whatever its size) are needed only
//! until its reconciliation is over. Once the report is acknowledged on both sides — the
//! platform has the institution's acknowledgement of the report, the institution has the
//! report and the acknowledgement of its post — the batch is *finished*: its records, hashes
//! and session are dropped, and only a compact [`BatchStatus`] (counts, report, findings, the
//! institution's block) is kept. The last [`ReconcilerLimits::retained_batches`] finished
//! statuses are kept; older ones are forgotten (only the highest forgotten batch id per
//! institution is remembered, to ignore late copies of their messages), and the platform drops
//! the chain's oldest blocks once every batch they belong to is forgotten — the chain keeps
//! the hash its first kept block links to, so it still verifies and grows. Live batches are
//! never dropped. All of this happens while applying events, so replaying the journal, or
//! restoring a checkpoint ([`StateMachine::checkpoint`]), rebuilds the same state.

use crate::reconciler::chain::{Block, HashChain, Poster};
use crate::reconciler::hash::{
    children_match, compare_records, shard_of, shard_records_match, Batch, BatchHashes, BatchKey,
    SHARD_FANOUT, SHARD_TREE_DEPTH,
};
use serde::{Deserialize, Serialize};
use specie_protocol::reconcile::{
    BatchHashAck, BatchHashPost, BatchId, Digest, Inconsistency, InconsistencyKind, LevelCount,
    ReconcileReport, RecordHashesReply, RecordHashesRequest, RecordId, ShardHashesReply,
    ShardHashesRequest, ShardNode, ShardRecords, TransactionRecord, REPORT_INCONSISTENCIES_MAX,
};
use specie_protocol::{Address, Envelope, InstitutionId, Payload, SagaId, RECONCILIATION_PLATFORM};
use specie_runtime::{Effects, StateMachine};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Shard-tree nodes asked about in one request. With a fanout of 16 a reply carries at most
/// 4096 hashes (128 KiB).
pub const SHARD_NODES_PER_REQUEST_MAX: usize = 256;
/// Shards whose record hashes are asked for in one request.
pub const SHARDS_PER_RECORD_REQUEST_MAX: usize = 64;
/// Record hashes an institution puts in one reply (a larger shard goes alone).
pub const RECORD_HASHES_PER_REPLY_MAX: usize = 8192;

/// Finished batches whose compact status a reconciler keeps by default.
pub const RETAINED_BATCHES_DEFAULT: usize = 4096;

/// Fewest old chain blocks the platform drops at once (dropping shifts the blocks kept).
pub(crate) const CHAIN_DROP_MIN: usize = 64;

/// The retry and retention settings of a reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilerLimits {
    /// First retry of an unanswered post, request or report.
    pub retry_interval_ms: u64,
    /// Backoff cap. Retries go on at this interval until answered: reconciliation never
    /// gives up on a batch, it only slows down.
    pub retry_interval_max_ms: u64,
    /// Finished batches whose compact status is kept (at least 1); older ones are forgotten.
    pub retained_batches: usize,
}

impl Default for ReconcilerLimits {
    fn default() -> Self {
        ReconcilerLimits {
            retry_interval_ms: 100,
            retry_interval_max_ms: 5_000,
            retained_batches: RETAINED_BATCHES_DEFAULT,
        }
    }
}

/// Which side a reconciler is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The reconciliation platform: keeps the hash chain and drives the drill-down.
    Platform,
    /// An institution to be reconciled.
    Institution(InstitutionId),
}

impl Role {
    /// The reconciler's address.
    pub fn address(self) -> Address {
        match self {
            Role::Platform => Poster::Platform.address(),
            Role::Institution(i) => Poster::Institution(i).address(),
        }
    }
}

/// Local commands.
#[derive(Debug, Clone)]
pub enum ReconcilerCommand {
    /// Reconcile this batch. An institution's reconciler takes its own institution's batches
    /// and posts their hashes; the platform's takes its records of any institution's batch.
    /// A batch id already loaded with the same records changes nothing; with other records it
    /// is refused (a batch, once posted, is immutable).
    LoadBatch(Batch),
    /// Every batch with an id below this one is closed on this node: its records, if it had
    /// any, were loaded before this command. Lets the two sides compare a batch only one of
    /// them saw (see the module documentation). Not journaled: the feed repeats it.
    CloseBelow(BatchId),
}

/// Timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilerTimer {
    /// Institution: repost a batch hash not yet acknowledged.
    Post {
        /// The batch.
        batch_id: BatchId,
        /// Retries so far.
        attempt: u32,
    },
    /// Platform: ask the institution again for its post of a batch it has not posted.
    Ask {
        /// The batch.
        key: BatchKey,
        /// Asks so far.
        attempt: u32,
    },
    /// Platform: resend what the session's current phase still waits for.
    Drill {
        /// The batch.
        key: BatchKey,
        /// The session's step when armed; a timer of an earlier step is void.
        step: u32,
        /// Retries so far.
        attempt: u32,
    },
}

/// Where a platform session stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// One side's batch hash is not on the chain yet.
    Waiting,
    /// Asking for the children of unequal nodes of the shard tree at `level`.
    Shards {
        /// The level of the nodes asked about.
        level: u32,
        /// Nodes not answered yet, with the institution's hash of each.
        pending: BTreeMap<u32, Digest>,
        /// Unequal children found so far (nodes of `level + 1`), with the institution's hash.
        unequal: BTreeMap<u32, Digest>,
    },
    /// Asking for the record hashes of the unequal shards.
    Records {
        /// Shards not answered yet, with the institution's shard hash.
        pending: BTreeMap<u32, Digest>,
    },
    /// The result is known; the report is resent until acknowledged.
    Reporting,
    /// The institution acknowledged the report.
    Done,
}

/// Journaled facts of a reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcilerEvent {
    /// This side's records of a batch.
    BatchLoaded(Batch),
    /// Platform: a block appended to the chain.
    BlockAppended(Block),
    /// Platform: the two batch hashes compared.
    BatchCompared {
        /// The batch.
        key: BatchKey,
        /// Whether they were equal.
        equal: bool,
    },
    /// Platform: a session moved to a new phase.
    PhaseEntered {
        /// The batch.
        key: BatchKey,
        /// The new phase.
        phase: Phase,
    },
    /// Platform: children of shard-tree nodes compared.
    NodesCompared {
        /// The batch.
        key: BatchKey,
        /// The nodes answered.
        nodes: Vec<u32>,
        /// Their unequal children, with the institution's hashes.
        unequal: Vec<(u32, Digest)>,
        /// Hashes compared.
        compared: u64,
    },
    /// Platform: record hashes of shards compared.
    ShardsCompared {
        /// The batch.
        key: BatchKey,
        /// The shards answered.
        shards: Vec<u32>,
        /// The inconsistent records in them.
        inconsistencies: Vec<Inconsistency>,
        /// Record ids examined.
        compared: u64,
    },
    /// Institution: the platform acknowledged a post.
    PostAcknowledged(BatchHashAck),
    /// Institution: the platform's report arrived.
    ReportReceived(ReconcileReport),
}

/// Hashes compared per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LevelCounts {
    /// Batch hashes (1 per batch).
    pub batch: LevelCount,
    /// Shard-tree nodes, down to the shard hashes.
    pub shard: LevelCount,
    /// Record hashes inside unequal shards.
    pub record: LevelCount,
}

impl LevelCounts {
    /// All levels together.
    pub fn hashes_compared(&self) -> u64 {
        self.batch.compared + self.shard.compared + self.record.compared
    }
}

/// How far a batch has got, as seen by this reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Institution: the batch hash is posted but not acknowledged.
    Posting,
    /// Institution: posted, no report yet. Platform: the other side has not posted.
    Waiting,
    /// Platform: comparing the shard tree at this level.
    Shards {
        /// The level whose children are compared.
        level: u32,
    },
    /// Platform: comparing record hashes of unequal shards.
    Records,
    /// Platform: the report is sent, not yet acknowledged.
    Reporting,
    /// Finished: the report was acknowledged (platform) or received (institution).
    Done,
}

/// One inconsistent record with every fact this side knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The record.
    pub record_id: RecordId,
    /// How it differs (from the institution's point of view).
    pub kind: InconsistencyKind,
    /// Its shard.
    pub shard: u32,
    /// The platform's version.
    pub platform: Option<TransactionRecord>,
    /// The institution's version (known at the institution; at the platform only its hash).
    pub institution: Option<TransactionRecord>,
}

/// What a report reads of one batch. For a finished batch, this compact status is all the
/// reconciler keeps of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStatus {
    /// The batch.
    pub key: BatchKey,
    /// Records this side holds (0 when the platform only saw the institution's post).
    pub record_count: u64,
    /// This side's batch hash (none when this side has not loaded the batch).
    pub batch_hash: Option<Digest>,
    /// How far it got.
    pub progress: Progress,
    /// Hashes compared per level (platform; at the institution, as reported).
    pub counts: LevelCounts,
    /// The report: decided (platform) or received (institution).
    pub report: Option<ReconcileReport>,
    /// Every inconsistent record found (platform) or reported (institution), by record id.
    pub findings: Vec<Finding>,
    /// The block holding the institution's post: at the institution once acknowledged, at
    /// the platform once the batch is finished.
    pub posted: Option<BatchHashAck>,
}

/// What reports and tests read of a reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerSnapshot {
    /// Whose.
    pub role: Role,
    /// Platform: the blocks of the hash chain it keeps (empty at institutions), from height 0
    /// unless older blocks were dropped.
    pub chain: Vec<Block>,
    /// The hash the first block of `chain` links to: zeros while the chain is whole.
    pub chain_start_prev: Digest,
    /// Every batch this side holds (in progress) or keeps the status of (finished), by key.
    pub batches: Vec<BatchStatus>,
}

impl ReconcilerSnapshot {
    /// The status of one batch.
    pub fn batch(&self, key: BatchKey) -> Option<&BatchStatus> {
        self.batches.iter().find(|b| b.key == key)
    }

    /// Verifies the blocks of `chain` (from wherever they start).
    pub fn verify_chain(&self) -> Result<(), crate::reconciler::chain::ChainError> {
        let start = self.chain.first().map_or(0, |b| b.height);
        crate::reconciler::chain::verify_from(&self.chain, start, self.chain_start_prev)
    }
}

/// Finished batches' statuses, as a feed collects them: those finished after a cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedBatches {
    /// The statuses, in the order the batches finished.
    pub statuses: Vec<BatchStatus>,
    /// The cursor to ask with next time: how many batches this reconciler has finished.
    pub cursor: u64,
    /// Finished after the cursor asked with but already forgotten (the asker fell behind).
    pub missed: u64,
}

/// How much a reconciler holds, for tests and memory accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Batches in progress whose records and hashes are held.
    pub live_batches: usize,
    /// Records held in them.
    pub live_records: u64,
    /// Finished batches' compact statuses kept.
    pub finished: usize,
    /// Chain blocks kept.
    pub chain_blocks: usize,
    /// Batches finished so far (kept or forgotten).
    pub finished_total: u64,
}

/// One side's batch with its hashes (derived, not journaled).
#[derive(Debug, Clone)]
struct Side {
    batch: Batch,
    hashes: BatchHashes,
}

/// The platform's session of one batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    phase: Phase,
    /// Incremented at every phase change; void timers of earlier phases.
    step: u32,
    counts: LevelCounts,
    inconsistencies: BTreeMap<RecordId, Inconsistency>,
}

impl Session {
    fn new() -> Session {
        Session {
            phase: Phase::Waiting,
            step: 0,
            counts: LevelCounts::default(),
            inconsistencies: BTreeMap::new(),
        }
    }

    fn report(&self, batch_id: BatchId) -> ReconcileReport {
        ReconcileReport {
            batch_id,
            inconsistent_total: self.inconsistencies.len() as u64,
            inconsistencies: self
                .inconsistencies
                .values()
                .take(REPORT_INCONSISTENCIES_MAX)
                .cloned()
                .collect(),
            batch: self.counts.batch,
            shard: self.counts.shard,
            record: self.counts.record,
        }
    }

    fn progress(&self) -> Progress {
        match self.phase {
            Phase::Waiting => Progress::Waiting,
            Phase::Shards { level, .. } => Progress::Shards { level },
            Phase::Records { .. } => Progress::Records,
            Phase::Reporting => Progress::Reporting,
            Phase::Done => Progress::Done,
        }
    }
}

/// The institution's view of one posted batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Post {
    ack: Option<BatchHashAck>,
    report: Option<ReconcileReport>,
}

type Out = Effects<ReconcilerEvent, ReconcilerTimer>;

/// A reconciler: an institution's or the platform's.
#[derive(Debug)]
pub struct Reconciler {
    role: Role,
    limits: ReconcilerLimits,
    /// This side's batches with their hashes.
    sides: BTreeMap<BatchKey, Side>,
    /// Platform: the hash chain.
    chain: HashChain,
    /// Platform: one session per batch with at least one post.
    sessions: BTreeMap<BatchKey, Session>,
    /// Institution: posts and the reports received.
    posts: BTreeMap<BatchId, Post>,
    /// Finished batches' compact statuses, with the number of the finish.
    finished: BTreeMap<BatchKey, (u64, BatchStatus)>,
    /// Finished batches in the order they finished: (number, key).
    finished_order: VecDeque<(u64, BatchKey)>,
    /// Batches finished so far.
    finished_total: u64,
    /// Per institution, the highest batch id whose finished status was forgotten.
    forgotten: BTreeMap<InstitutionId, BatchId>,
    /// Not journaled: batches below this id are closed on this node (the feed says so).
    closed_below: BatchId,
    /// Not journaled: platform, batches whose post is being asked for (an ask timer runs).
    asking: BTreeSet<BatchKey>,
}

/// The journaled part of a reconciler's state, as a checkpoint holds it. Hashes are derived
/// again from the batches on restore.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    batches: Vec<Batch>,
    chain_start: u64,
    chain_start_prev: Digest,
    chain: Vec<Block>,
    sessions: Vec<(BatchKey, Session)>,
    posts: Vec<(BatchId, Post)>,
    finished: Vec<(u64, BatchStatus)>,
    finished_total: u64,
    forgotten: Vec<(InstitutionId, BatchId)>,
}

/// The saga id reconciliation messages of a batch carry: not a saga, but it gives every
/// message of one batch's reconciliation the same trace id.
pub fn trace_id(key: BatchKey) -> SagaId {
    const TAG: u128 = 0x5245_434e; // "RECN"
    SagaId::from_u128(TAG << 96 | u128::from(key.institution.0) << 64 | u128::from(key.batch_id.0))
}

fn reject(reason: &'static str) {
    metrics::counter!("specie_reconcile_rejected_total", "reason" => reason).increment(1);
}

impl Reconciler {
    /// A reconciler with no batches.
    pub fn new(role: Role, limits: ReconcilerLimits) -> Reconciler {
        assert!(
            limits.retry_interval_ms > 0,
            "a zero retry interval would spin"
        );
        assert!(limits.retry_interval_max_ms >= limits.retry_interval_ms);
        assert!(
            limits.retained_batches > 0,
            "a finished batch's status must be kept at least until it is read"
        );
        Reconciler {
            role,
            limits,
            sides: BTreeMap::new(),
            chain: HashChain::new(),
            sessions: BTreeMap::new(),
            posts: BTreeMap::new(),
            finished: BTreeMap::new(),
            finished_order: VecDeque::new(),
            finished_total: 0,
            forgotten: BTreeMap::new(),
            closed_below: BatchId(0),
            asking: BTreeSet::new(),
        }
    }

    /// The statuses of the batches finished after `cursor` (0 for all kept), and the cursor
    /// to ask with next.
    pub fn finished_since(&self, cursor: u64) -> FinishedBatches {
        let first = self.finished_order.partition_point(|(n, _)| *n <= cursor);
        let oldest_kept = self
            .finished_order
            .front()
            .map_or(self.finished_total + 1, |(n, _)| *n);
        FinishedBatches {
            statuses: self
                .finished_order
                .iter()
                .skip(first)
                .map(|(_, key)| self.finished[key].1.clone())
                .collect(),
            cursor: self.finished_total,
            missed: oldest_kept.saturating_sub(cursor + 1),
        }
    }

    /// The status of one batch, in progress or finished (kept).
    pub fn status_of(&self, key: BatchKey) -> Option<BatchStatus> {
        if let Some((_, status)) = self.finished.get(&key) {
            return Some(status.clone());
        }
        let live = match self.role {
            Role::Platform => self.sessions.contains_key(&key),
            Role::Institution(_) => self.sides.contains_key(&key),
        };
        live.then(|| self.status(key))
    }

    /// The highest batch id this reconciler knows of (in progress, finished or forgotten).
    pub fn latest_batch(&self) -> Option<BatchId> {
        let live = self.sides.keys().chain(self.sessions.keys());
        live.chain(self.finished.keys())
            .map(|k| k.batch_id)
            .chain(self.forgotten.values().copied())
            .max()
    }

    /// How much this reconciler holds.
    pub fn retained(&self) -> Retained {
        Retained {
            live_batches: self.sides.len(),
            live_records: self.sides.values().map(|s| s.hashes.record_count()).sum(),
            finished: self.finished.len(),
            chain_blocks: self.chain.len(),
            finished_total: self.finished_total,
        }
    }

    /// Whether `key` is live here: records held (institution) or a session (platform).
    fn is_live(&self, key: BatchKey) -> bool {
        self.sides.contains_key(&key) || self.sessions.contains_key(&key)
    }

    /// Whether `key` finished here long ago and was forgotten.
    fn is_forgotten(&self, key: BatchKey) -> bool {
        !self.is_live(key)
            && !self.finished.contains_key(&key)
            && self
                .forgotten
                .get(&key.institution)
                .is_some_and(|b| key.batch_id <= *b)
    }

    /// A finished batch: keep its compact status, drop its records, hashes and session, and
    /// forget the oldest statuses beyond the limit (with the chain blocks only they needed).
    fn finish(&mut self, key: BatchKey) {
        let mut status = self.status(key);
        if self.role == Role::Platform {
            status.posted = self
                .chain
                .find(Poster::Institution(key.institution), key)
                .map(|b| BatchHashAck {
                    batch_id: key.batch_id,
                    height: b.height,
                    block_hash: b.hash,
                    batch_hash: b.batch_hash,
                });
        }
        self.sides.remove(&key);
        self.sessions.remove(&key);
        if let Role::Institution(_) = self.role {
            self.posts.remove(&key.batch_id);
        }
        self.asking.remove(&key);
        self.finished_total += 1;
        let n = self.finished_total;
        self.finished.insert(key, (n, status));
        self.finished_order.push_back((n, key));
        let mut evicted = false;
        while self.finished.len() > self.limits.retained_batches {
            let Some((_, old)) = self.finished_order.pop_front() else {
                break;
            };
            self.finished.remove(&old);
            let mark = self
                .forgotten
                .entry(old.institution)
                .or_insert(old.batch_id);
            *mark = (*mark).max(old.batch_id);
            evicted = true;
        }
        if evicted && self.role == Role::Platform {
            let (sessions, finished) = (&self.sessions, &self.finished);
            let n = self.chain.droppable_prefix(|b| {
                !sessions.contains_key(&b.key()) && !finished.contains_key(&b.key())
            });
            if n >= CHAIN_DROP_MIN || n == self.chain.len() {
                self.chain.drop_front(n);
            }
        }
    }

    /// Institution: a batch whose post is acknowledged and whose report arrived is finished.
    fn finish_post(&mut self, batch_id: BatchId) {
        let Role::Institution(me) = self.role else {
            return;
        };
        let key = BatchKey {
            institution: me,
            batch_id,
        };
        let done = self
            .posts
            .get(&batch_id)
            .is_some_and(|p| p.ack.is_some() && p.report.is_some());
        if done && self.sides.contains_key(&key) {
            self.finish(key);
        }
    }

    /// An empty batch: this side never had a record in `key`, which is closed here.
    fn load_empty(&mut self, key: BatchKey, out: &mut Out) {
        metrics::counter!("specie_reconcile_empty_batches_total").increment(1);
        let batch = Batch::new(key, std::iter::empty()).expect("an empty batch is valid");
        self.load(batch, out);
    }

    /// Platform: starts asking the institution for its post of `key` unless already asking.
    fn start_asking(&mut self, key: BatchKey, out: &mut Out) {
        if self.asking.insert(key) {
            out.timer(self.backoff_ms(2), ReconcilerTimer::Ask { key, attempt: 0 });
        }
    }

    /// Platform: whether `key` waits for the institution's post while holding its own side.
    fn awaits_post(&self, key: BatchKey) -> bool {
        self.sessions
            .get(&key)
            .is_some_and(|s| s.phase == Phase::Waiting)
            && self.sides.contains_key(&key)
            && self
                .chain
                .find(Poster::Institution(key.institution), key)
                .is_none()
    }

    fn close_below(&mut self, below: BatchId, out: &mut Out) {
        if below <= self.closed_below {
            return;
        }
        self.closed_below = below;
        if self.role != Role::Platform {
            return;
        }
        // Posted by the institution, nothing here, and now closed: compare with an empty batch.
        let empty: Vec<BatchKey> = self
            .sessions
            .keys()
            .filter(|k| k.batch_id < below && !self.sides.contains_key(k))
            .copied()
            .collect();
        for key in empty {
            self.load_empty(key, out);
        }
        // Held here, closed, not posted by the institution: ask for its post.
        let ask: Vec<BatchKey> = self
            .sessions
            .keys()
            .filter(|k| k.batch_id < below && self.awaits_post(**k))
            .copied()
            .collect();
        for key in ask {
            self.start_asking(key, out);
        }
    }

    /// The platform's reconciler.
    pub fn platform(limits: ReconcilerLimits) -> Reconciler {
        Reconciler::new(Role::Platform, limits)
    }

    /// An institution's reconciler.
    pub fn institution(institution: InstitutionId, limits: ReconcilerLimits) -> Reconciler {
        Reconciler::new(Role::Institution(institution), limits)
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        self.limits
            .retry_interval_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.limits.retry_interval_max_ms)
    }

    fn envelope(&self, to: Address, key: BatchKey, attempt: u32, payload: Payload) -> Envelope {
        Envelope {
            message_id: 0,
            saga_id: trace_id(key),
            from: self.role.address(),
            to,
            attempt,
            trace: None,
            payload,
        }
    }

    fn load(&mut self, batch: Batch, out: &mut Out) {
        let key = batch.key();
        if let Role::Institution(me) = self.role {
            if key.institution != me {
                reject("foreign_batch");
                return;
            }
        }
        if let Some(side) = self.sides.get(&key) {
            if side.batch != batch {
                reject("batch_conflict");
            }
            return;
        }
        if self.finished.contains_key(&key) || self.is_forgotten(key) {
            reject("batch_finished");
            return;
        }
        self.record(ReconcilerEvent::BatchLoaded(batch), out);
        let hashes = &self.sides[&key].hashes;
        let (root, count) = (hashes.root(), hashes.record_count());
        match self.role {
            Role::Institution(_) => {
                self.send_post(key, 0, out);
                out.timer(
                    self.backoff_ms(0),
                    ReconcilerTimer::Post {
                        batch_id: key.batch_id,
                        attempt: 1,
                    },
                );
            }
            Role::Platform => {
                let block = self.chain.next_block(Poster::Platform, key, root, count);
                self.record(ReconcilerEvent::BlockAppended(block), out);
                self.advance(key, out);
                if key.batch_id < self.closed_below && self.awaits_post(key) {
                    self.start_asking(key, out);
                }
            }
        }
    }

    // ---- institution side ----

    fn send_post(&self, key: BatchKey, attempt: u32, out: &mut Out) {
        let hashes = &self.sides[&key].hashes;
        let post = BatchHashPost {
            batch_id: key.batch_id,
            batch_hash: hashes.root(),
            record_count: hashes.record_count(),
        };
        out.send(self.envelope(
            Role::Platform.address(),
            key,
            attempt,
            Payload::BatchHashPost(post),
        ));
    }

    fn on_institution_envelope(&mut self, me: InstitutionId, envelope: Envelope, out: &mut Out) {
        if envelope.from != Role::Platform.address() {
            reject("unexpected_sender");
            return;
        }
        let attempt = envelope.attempt;
        let key = |batch_id| BatchKey {
            institution: me,
            batch_id,
        };
        match envelope.payload {
            Payload::BatchHashAck(ack) => {
                let known = self.sides.contains_key(&key(ack.batch_id));
                let acked = self
                    .posts
                    .get(&ack.batch_id)
                    .is_some_and(|p| p.ack.is_some());
                if known && !acked {
                    self.record(ReconcilerEvent::PostAcknowledged(ack), out);
                }
            }
            Payload::ShardHashesRequest(request) => {
                let key = key(request.batch_id);
                let Some(side) = self.sides.get(&key) else {
                    reject("unknown_batch");
                    return;
                };
                let nodes = request
                    .nodes
                    .iter()
                    .filter_map(|&node| {
                        let children = side.hashes.children(request.level, node)?;
                        Some(ShardNode {
                            node,
                            children: children.to_vec(),
                        })
                    })
                    .collect();
                let reply = ShardHashesReply {
                    batch_id: request.batch_id,
                    level: request.level,
                    nodes,
                };
                out.send(self.envelope(
                    envelope.from,
                    key,
                    attempt,
                    Payload::ShardHashesReply(reply),
                ));
            }
            Payload::RecordHashesRequest(request) => {
                let key = key(request.batch_id);
                let Some(side) = self.sides.get(&key) else {
                    reject("unknown_batch");
                    return;
                };
                let mut reply = Vec::new();
                let mut hashes = 0;
                for &shard in &request.shards {
                    let Some(records) = side.hashes.shard(shard) else {
                        continue;
                    };
                    if !reply.is_empty() && hashes + records.len() > RECORD_HASHES_PER_REPLY_MAX {
                        let shards = std::mem::take(&mut reply);
                        let payload = Payload::RecordHashesReply(RecordHashesReply {
                            batch_id: request.batch_id,
                            shards,
                        });
                        out.send(self.envelope(envelope.from, key, attempt, payload));
                        hashes = 0;
                    }
                    hashes += records.len();
                    reply.push(ShardRecords {
                        shard,
                        records: records.to_vec(),
                    });
                }
                let payload = Payload::RecordHashesReply(RecordHashesReply {
                    batch_id: request.batch_id,
                    shards: reply,
                });
                out.send(self.envelope(envelope.from, key, attempt, payload));
            }
            Payload::BatchHashRequest { batch_id } => {
                let key = key(batch_id);
                if self.sides.contains_key(&key) {
                    self.send_post(key, attempt, out);
                } else if self.finished.contains_key(&key) || self.is_forgotten(key) {
                    reject("batch_finished");
                } else if batch_id < self.closed_below {
                    // Not a record of ours in it, and closed here: our side is empty.
                    self.load_empty(key, out);
                } else {
                    // Not closed here yet: its records may still come. The platform asks again.
                    reject("batch_open");
                }
            }
            Payload::ReconcileReport(report) => {
                let batch_id = report.batch_id;
                let known = self.sides.contains_key(&key(batch_id));
                let reported = self
                    .posts
                    .get(&batch_id)
                    .is_some_and(|p| p.report.is_some());
                if known && !reported {
                    self.record(ReconcilerEvent::ReportReceived(report), out);
                }
                // Every copy is acknowledged, so the platform stops resending.
                out.send(self.envelope(
                    envelope.from,
                    key(batch_id),
                    attempt,
                    Payload::ReconcileReportAck { batch_id },
                ));
            }
            _ => reject("unexpected_payload"),
        }
    }

    // ---- platform side ----

    fn on_platform_envelope(&mut self, envelope: Envelope, out: &mut Out) {
        let institution = match envelope.from {
            Address::Reconciler(id) if id != RECONCILIATION_PLATFORM => InstitutionId(
                u32::try_from(id).expect("the protocol admits only u32 institution ids"),
            ),
            _ => {
                reject("unexpected_sender");
                return;
            }
        };
        let key = |batch_id| BatchKey {
            institution,
            batch_id,
        };
        match envelope.payload {
            Payload::BatchHashPost(post) => {
                let key = key(post.batch_id);
                let poster = Poster::Institution(institution);
                if let Some((_, done)) = self.finished.get(&key) {
                    // A copy of the post of a finished batch: the answer it had.
                    if let Some(ack) = done.posted.clone() {
                        out.send(self.envelope(
                            envelope.from,
                            key,
                            envelope.attempt,
                            Payload::BatchHashAck(ack),
                        ));
                    }
                    return;
                }
                if self.is_forgotten(key) {
                    reject("batch_finished");
                    return;
                }
                if self.chain.find(poster, key).is_none() {
                    let block =
                        self.chain
                            .next_block(poster, key, post.batch_hash, post.record_count);
                    self.record(ReconcilerEvent::BlockAppended(block), out);
                }
                let block = self.chain.find(poster, key).expect("posted above");
                let ack = BatchHashAck {
                    batch_id: post.batch_id,
                    height: block.height,
                    block_hash: block.hash,
                    batch_hash: block.batch_hash,
                };
                out.send(self.envelope(
                    envelope.from,
                    key,
                    envelope.attempt,
                    Payload::BatchHashAck(ack),
                ));
                if !self.sides.contains_key(&key) && key.batch_id < self.closed_below {
                    // Closed here without a record of ours: compare with an empty batch.
                    self.load_empty(key, out);
                } else {
                    self.advance(key, out);
                }
            }
            Payload::ShardHashesReply(reply) => {
                self.on_shard_hashes(key(reply.batch_id), reply, out)
            }
            Payload::RecordHashesReply(reply) => {
                self.on_record_hashes(key(reply.batch_id), reply, out)
            }
            Payload::ReconcileReportAck { batch_id } => {
                let key = key(batch_id);
                if self
                    .sessions
                    .get(&key)
                    .is_some_and(|s| s.phase == Phase::Reporting)
                {
                    self.record(
                        ReconcilerEvent::PhaseEntered {
                            key,
                            phase: Phase::Done,
                        },
                        out,
                    );
                }
            }
            _ => reject("unexpected_payload"),
        }
    }

    fn on_shard_hashes(&mut self, key: BatchKey, reply: ShardHashesReply, out: &mut Out) {
        let Some(Phase::Shards { level, pending, .. }) = self.sessions.get(&key).map(|s| &s.phase)
        else {
            reject("stale_reply");
            return;
        };
        if reply.level != *level {
            reject("stale_reply");
            return;
        }
        let level = *level;
        let ours = &self.sides[&key].hashes;
        let mut nodes = Vec::new();
        let mut unequal = Vec::new();
        let mut compared = 0;
        for n in &reply.nodes {
            let Some(&theirs) = pending.get(&n.node) else {
                continue;
            };
            if nodes.contains(&n.node) {
                continue;
            }
            // The children must be the ones the institution committed to in its parent hash.
            if !children_match(level, n.node, &n.children, theirs) {
                reject("reply_does_not_match_commitment");
                continue;
            }
            let our_children = ours
                .children(level, n.node)
                .expect("pending nodes are in the tree");
            for (i, (a, b)) in our_children.iter().zip(&n.children).enumerate() {
                compared += 1;
                if a != b {
                    unequal.push((n.node * SHARD_FANOUT + i as u32, *b));
                }
            }
            nodes.push(n.node);
        }
        if nodes.is_empty() {
            return;
        }
        metrics::counter!("specie_reconcile_hashes_compared_total", "level" => "shard")
            .increment(compared);
        self.record(
            ReconcilerEvent::NodesCompared {
                key,
                nodes,
                unequal,
                compared,
            },
            out,
        );
        self.advance(key, out);
    }

    fn on_record_hashes(&mut self, key: BatchKey, reply: RecordHashesReply, out: &mut Out) {
        let Some(Phase::Records { pending }) = self.sessions.get(&key).map(|s| &s.phase) else {
            reject("stale_reply");
            return;
        };
        let side = &self.sides[&key];
        let mut shards = Vec::new();
        let mut inconsistencies = Vec::new();
        let mut compared = 0;
        for s in &reply.shards {
            let Some(&theirs) = pending.get(&s.shard) else {
                continue;
            };
            if shards.contains(&s.shard) {
                continue;
            }
            if !shard_records_match(s.shard, &s.records, theirs) {
                reject("reply_does_not_match_commitment");
                continue;
            }
            let ours = side
                .hashes
                .shard(s.shard)
                .expect("pending shards are in the tree");
            let (differences, examined) = compare_records(ours, &s.records);
            compared += examined;
            for d in differences {
                let kind = match (d.ours, d.theirs) {
                    (Some(_), None) => InconsistencyKind::Missing,
                    (None, Some(_)) => InconsistencyKind::Extra,
                    _ => InconsistencyKind::Altered,
                };
                inconsistencies.push(Inconsistency {
                    record_id: d.record_id,
                    kind,
                    shard: shard_of(d.record_id),
                    platform_hash: d.ours,
                    institution_hash: d.theirs,
                    platform_record: side.batch.get(d.record_id).cloned(),
                });
            }
            shards.push(s.shard);
        }
        if shards.is_empty() {
            return;
        }
        metrics::counter!("specie_reconcile_hashes_compared_total", "level" => "record")
            .increment(compared);
        for i in &inconsistencies {
            metrics::counter!("specie_reconcile_inconsistent_records_total", "kind" => i.kind.name())
                .increment(1);
        }
        self.record(
            ReconcilerEvent::ShardsCompared {
                key,
                shards,
                inconsistencies,
                compared,
            },
            out,
        );
        self.advance(key, out);
    }

    /// Moves a session on as far as what it holds allows.
    fn advance(&mut self, key: BatchKey, out: &mut Out) {
        loop {
            let Some(session) = self.sessions.get(&key) else {
                return;
            };
            let next = match &session.phase {
                Phase::Waiting => {
                    let ours = self.chain.find(Poster::Platform, key);
                    let theirs = self.chain.find(Poster::Institution(key.institution), key);
                    let (Some(ours), Some(theirs)) = (ours, theirs) else {
                        return;
                    };
                    let equal = ours.batch_hash == theirs.batch_hash;
                    let their_root = theirs.batch_hash;
                    metrics::counter!("specie_reconcile_hashes_compared_total", "level" => "batch")
                        .increment(1);
                    self.record(ReconcilerEvent::BatchCompared { key, equal }, out);
                    if equal {
                        Phase::Reporting
                    } else {
                        Phase::Shards {
                            level: 0,
                            pending: BTreeMap::from([(0, their_root)]),
                            unequal: BTreeMap::new(),
                        }
                    }
                }
                Phase::Shards {
                    level,
                    pending,
                    unequal,
                } if pending.is_empty() => {
                    // A node whose hash differs has at least one differing child (the children
                    // were checked against the node's hash), so `unequal` is not empty.
                    debug_assert!(!unequal.is_empty(), "an unequal node with equal children");
                    if level + 1 == SHARD_TREE_DEPTH {
                        Phase::Records {
                            pending: unequal.clone(),
                        }
                    } else {
                        Phase::Shards {
                            level: level + 1,
                            pending: unequal.clone(),
                            unequal: BTreeMap::new(),
                        }
                    }
                }
                Phase::Records { pending } if pending.is_empty() => Phase::Reporting,
                _ => return,
            };
            self.record(ReconcilerEvent::PhaseEntered { key, phase: next }, out);
            self.send_phase(key, 0, out);
            let step = self.sessions[&key].step;
            out.timer(
                self.backoff_ms(0),
                ReconcilerTimer::Drill {
                    key,
                    step,
                    attempt: 1,
                },
            );
        }
    }

    /// Sends everything the session's phase still waits for.
    fn send_phase(&self, key: BatchKey, attempt: u32, out: &mut Out) {
        let to = Poster::Institution(key.institution).address();
        let session = &self.sessions[&key];
        let batch_id = key.batch_id;
        match &session.phase {
            Phase::Shards { level, pending, .. } => {
                let nodes: Vec<u32> = pending.keys().copied().collect();
                for chunk in nodes.chunks(SHARD_NODES_PER_REQUEST_MAX) {
                    let request = ShardHashesRequest {
                        batch_id,
                        level: *level,
                        nodes: chunk.to_vec(),
                    };
                    out.send(self.envelope(to, key, attempt, Payload::ShardHashesRequest(request)));
                }
            }
            Phase::Records { pending } => {
                let shards: Vec<u32> = pending.keys().copied().collect();
                for chunk in shards.chunks(SHARDS_PER_RECORD_REQUEST_MAX) {
                    let request = RecordHashesRequest {
                        batch_id,
                        shards: chunk.to_vec(),
                    };
                    out.send(self.envelope(
                        to,
                        key,
                        attempt,
                        Payload::RecordHashesRequest(request),
                    ));
                }
            }
            Phase::Reporting => {
                let report = session.report(batch_id);
                out.send(self.envelope(to, key, attempt, Payload::ReconcileReport(report)));
            }
            Phase::Waiting | Phase::Done => {}
        }
    }

    fn status(&self, key: BatchKey) -> BatchStatus {
        let side = self.sides.get(&key);
        let mut status = BatchStatus {
            key,
            record_count: side.map_or(0, |s| s.hashes.record_count()),
            batch_hash: side.map(|s| s.hashes.root()),
            progress: Progress::Waiting,
            counts: LevelCounts::default(),
            report: None,
            findings: Vec::new(),
            posted: None,
        };
        match self.role {
            Role::Platform => {
                let session = &self.sessions[&key];
                status.progress = session.progress();
                status.counts = session.counts;
                if matches!(session.phase, Phase::Reporting | Phase::Done) {
                    status.report = Some(session.report(key.batch_id));
                }
                status.findings = session
                    .inconsistencies
                    .values()
                    .map(|i| Finding {
                        record_id: i.record_id,
                        kind: i.kind,
                        shard: i.shard,
                        platform: i.platform_record.clone(),
                        institution: None,
                    })
                    .collect();
            }
            Role::Institution(_) => {
                let post = self.posts.get(&key.batch_id).cloned().unwrap_or_default();
                status.progress = match (&post.ack, &post.report) {
                    (_, Some(_)) => Progress::Done,
                    (Some(_), None) => Progress::Waiting,
                    (None, None) => Progress::Posting,
                };
                if let Some(report) = &post.report {
                    status.counts = LevelCounts {
                        batch: report.batch,
                        shard: report.shard,
                        record: report.record,
                    };
                    status.findings = report
                        .inconsistencies
                        .iter()
                        .map(|i| Finding {
                            record_id: i.record_id,
                            kind: i.kind,
                            shard: i.shard,
                            platform: i.platform_record.clone(),
                            institution: side.and_then(|s| s.batch.get(i.record_id)).cloned(),
                        })
                        .collect();
                }
                status.report = post.report;
                status.posted = post.ack;
            }
        }
        status
    }
}

impl StateMachine for Reconciler {
    type Event = ReconcilerEvent;
    type Timer = ReconcilerTimer;
    type Command = ReconcilerCommand;
    type Snapshot = ReconcilerSnapshot;

    fn address(&self) -> Address {
        self.role.address()
    }

    fn apply(&mut self, event: &ReconcilerEvent) {
        match event {
            ReconcilerEvent::BatchLoaded(batch) => {
                let hashes = BatchHashes::of(batch);
                self.sides.insert(
                    batch.key(),
                    Side {
                        batch: batch.clone(),
                        hashes,
                    },
                );
            }
            ReconcilerEvent::BlockAppended(block) => {
                self.sessions
                    .entry(block.key())
                    .or_insert_with(Session::new);
                self.chain.push(block.clone());
            }
            ReconcilerEvent::BatchCompared { key, equal } => {
                let session = self.sessions.get_mut(key).expect("compared after a post");
                session.counts.batch = LevelCount {
                    compared: 1,
                    unequal: u64::from(!equal),
                };
            }
            ReconcilerEvent::PhaseEntered { key, phase } => {
                let session = self
                    .sessions
                    .get_mut(key)
                    .expect("a phase of a known session");
                session.phase = phase.clone();
                session.step += 1;
                if *phase == Phase::Done {
                    self.finish(*key);
                }
            }
            ReconcilerEvent::NodesCompared {
                key,
                nodes,
                unequal,
                compared,
            } => {
                let session = self
                    .sessions
                    .get_mut(key)
                    .expect("nodes of a known session");
                let Phase::Shards {
                    pending,
                    unequal: found,
                    ..
                } = &mut session.phase
                else {
                    unreachable!("nodes are compared only while comparing shards");
                };
                for node in nodes {
                    pending.remove(node);
                }
                found.extend(unequal.iter().copied());
                session.counts.shard.compared += compared;
                session.counts.shard.unequal += unequal.len() as u64;
            }
            ReconcilerEvent::ShardsCompared {
                key,
                shards,
                inconsistencies,
                compared,
            } => {
                let session = self
                    .sessions
                    .get_mut(key)
                    .expect("shards of a known session");
                let Phase::Records { pending } = &mut session.phase else {
                    unreachable!("records are compared only while comparing records");
                };
                for shard in shards {
                    pending.remove(shard);
                }
                for i in inconsistencies {
                    session.inconsistencies.insert(i.record_id, i.clone());
                }
                session.counts.record.compared += compared;
                session.counts.record.unequal += inconsistencies.len() as u64;
            }
            ReconcilerEvent::PostAcknowledged(ack) => {
                self.posts.entry(ack.batch_id).or_default().ack = Some(ack.clone());
                self.finish_post(ack.batch_id);
            }
            ReconcilerEvent::ReportReceived(report) => {
                self.posts.entry(report.batch_id).or_default().report = Some(report.clone());
                self.finish_post(report.batch_id);
            }
        }
    }

    fn on_start(&mut self, _now_ms: u64, out: &mut Out) {
        // Re-arm the retries of work in flight; the timers of before a restart are gone.
        match self.role {
            Role::Institution(me) => {
                for key in self.sides.keys().filter(|k| k.institution == me) {
                    if self
                        .posts
                        .get(&key.batch_id)
                        .is_none_or(|p| p.ack.is_none())
                    {
                        out.timer(
                            0,
                            ReconcilerTimer::Post {
                                batch_id: key.batch_id,
                                attempt: 0,
                            },
                        );
                    }
                }
            }
            Role::Platform => {
                for (key, session) in &self.sessions {
                    if !matches!(session.phase, Phase::Waiting | Phase::Done) {
                        out.timer(
                            0,
                            ReconcilerTimer::Drill {
                                key: *key,
                                step: session.step,
                                attempt: 0,
                            },
                        );
                    }
                }
            }
        }
    }

    fn on_envelope(&mut self, envelope: Envelope, _now_ms: u64, out: &mut Out) {
        match self.role {
            Role::Platform => self.on_platform_envelope(envelope, out),
            Role::Institution(me) => self.on_institution_envelope(me, envelope, out),
        }
    }

    fn on_timer(&mut self, key: ReconcilerTimer, _now_ms: u64, out: &mut Out) {
        match key {
            ReconcilerTimer::Post { batch_id, attempt } => {
                let Role::Institution(me) = self.role else {
                    return;
                };
                let key = BatchKey {
                    institution: me,
                    batch_id,
                };
                let acked = self.posts.get(&batch_id).is_some_and(|p| p.ack.is_some());
                if acked || !self.sides.contains_key(&key) {
                    return;
                }
                metrics::counter!("specie_reconcile_retries_total", "step" => "post").increment(1);
                self.send_post(key, attempt, out);
                out.timer(
                    self.backoff_ms(attempt),
                    ReconcilerTimer::Post {
                        batch_id,
                        attempt: attempt + 1,
                    },
                );
            }
            ReconcilerTimer::Ask { key, attempt } => {
                if !self.awaits_post(key) {
                    self.asking.remove(&key);
                    return;
                }
                metrics::counter!("specie_reconcile_retries_total", "step" => "ask").increment(1);
                let to = Poster::Institution(key.institution).address();
                let ask = Payload::BatchHashRequest {
                    batch_id: key.batch_id,
                };
                out.send(self.envelope(to, key, attempt, ask));
                out.timer(
                    self.backoff_ms(attempt.saturating_add(2)),
                    ReconcilerTimer::Ask {
                        key,
                        attempt: attempt + 1,
                    },
                );
            }
            ReconcilerTimer::Drill { key, step, attempt } => {
                let Some(session) = self.sessions.get(&key) else {
                    return;
                };
                if session.step != step || matches!(session.phase, Phase::Waiting | Phase::Done) {
                    return;
                }
                metrics::counter!("specie_reconcile_retries_total", "step" => "drill").increment(1);
                self.send_phase(key, attempt, out);
                out.timer(
                    self.backoff_ms(attempt),
                    ReconcilerTimer::Drill {
                        key,
                        step,
                        attempt: attempt + 1,
                    },
                );
            }
        }
    }

    fn on_command(&mut self, command: ReconcilerCommand, _now_ms: u64, out: &mut Out) {
        match command {
            ReconcilerCommand::LoadBatch(batch) => self.load(batch, out),
            ReconcilerCommand::CloseBelow(below) => self.close_below(below, out),
        }
    }

    fn snapshot(&self) -> ReconcilerSnapshot {
        let live: BTreeSet<BatchKey> = match self.role {
            Role::Platform => self.sessions.keys().copied().collect(),
            Role::Institution(_) => self.sides.keys().copied().collect(),
        };
        let mut keys: BTreeSet<BatchKey> = self.finished.keys().copied().collect();
        keys.extend(live);
        ReconcilerSnapshot {
            role: self.role,
            chain: self.chain.blocks().to_vec(),
            chain_start_prev: self.chain.start_prev(),
            batches: keys.into_iter().filter_map(|k| self.status_of(k)).collect(),
        }
    }

    fn checkpoint(&self) -> Option<Vec<u8>> {
        let checkpoint = Checkpoint {
            batches: self.sides.values().map(|s| s.batch.clone()).collect(),
            chain_start: self.chain.start(),
            chain_start_prev: self.chain.start_prev(),
            chain: self.chain.blocks().to_vec(),
            sessions: self.sessions.iter().map(|(k, s)| (*k, s.clone())).collect(),
            posts: self.posts.iter().map(|(b, p)| (*b, p.clone())).collect(),
            finished: self
                .finished_order
                .iter()
                .map(|(n, k)| (*n, self.finished[k].1.clone()))
                .collect(),
            finished_total: self.finished_total,
            forgotten: self.forgotten.iter().map(|(i, b)| (*i, *b)).collect(),
        };
        Some(postcard::to_stdvec(&checkpoint).expect("a checkpoint serializes"))
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), String> {
        let c: Checkpoint = postcard::from_bytes(checkpoint).map_err(|e| e.to_string())?;
        let chain = HashChain::from_parts(c.chain_start, c.chain_start_prev, c.chain)
            .map_err(|e| format!("the checkpoint's chain: {e}"))?;
        let mut restored = Reconciler::new(self.role, self.limits);
        restored.chain = chain;
        for batch in c.batches {
            let hashes = BatchHashes::of(&batch);
            restored.sides.insert(batch.key(), Side { batch, hashes });
        }
        restored.sessions = c.sessions.into_iter().collect();
        restored.posts = c.posts.into_iter().collect();
        for (n, status) in c.finished {
            restored.finished_order.push_back((n, status.key));
            restored.finished.insert(status.key, (n, status));
        }
        restored.finished_total = c.finished_total;
        restored.forgotten = c.forgotten.into_iter().collect();
        *self = restored;
        Ok(())
    }
}
