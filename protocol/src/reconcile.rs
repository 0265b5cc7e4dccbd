//! Reconciliation's vocabulary: transaction records, the messages of the batch → shard →
//! record drill-down, and the report of inconsistent records.
//!
//! Every type is built from its protobuf twin with `TryFrom`, so a wrong-length hash, an
//! unknown kind, an over-long list or a report whose facts contradict its kind is rejected
//! here with a [`ProtocolError`]. How the hashes are computed (canonical bytes, shards, the
//! shard tree) is the reconciler's business (`specie_actors::reconciler::hash`); the protocol
//! only carries them.

use crate::error::{fixed, required, ProtocolError};
use crate::ids::{Amount, InstitutionId, SagaId, WalletId};
use crate::pb;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most shard-tree nodes or shards one request or reply may name. A reconciler splits
/// longer lists over several messages.
pub const SHARDS_PER_MESSAGE_MAX: usize = 65_536;

/// The most hashes one message may carry (32 MiB of hashes). Bounds the decoding work of one
/// envelope.
pub const HASHES_PER_MESSAGE_MAX: usize = 1 << 20;

/// The most inconsistent records one report lists; `inconsistent_total` counts them all.
pub const REPORT_INCONSISTENCIES_MAX: usize = 4096;

/// A SHA-256 digest: a record, shard, shard-tree node, batch or chain block hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

fn digest(field: &'static str, bytes: &[u8]) -> Result<Digest, ProtocolError> {
    fixed(field, bytes).map(Digest)
}

fn digest_to_pb(d: &Digest) -> Bytes {
    Bytes::copy_from_slice(&d.0)
}

fn too_many(field: &'static str, count: usize, max: usize) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        why: format!("{count} entries, at most {max} allowed"),
    }
}

/// A transaction record's identifier, unique within its batch. It decides the record's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId(pub u64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record-{}", self.0)
    }
}

/// A reconciliation batch's identifier, chosen by the institution; `(institution, batch)`
/// names a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId(pub u64);

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch-{}", self.0)
    }
}

/// Which value-moving step a transaction record is about (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKind {
    /// A payment (redemption) between wallets.
    Pay,
    /// Account money exchanged into coins.
    Exchange,
    /// Coins withdrawn back to an account.
    Withdraw,
    /// Coins of several issuers merged into one.
    Merge,
    /// An offline trust chain redeemed at the issuer.
    OfflineRedeem,
    /// A merchant's claim paid out of an escrow.
    EscrowClaim,
    /// What remained of an escrow returned to the payer.
    EscrowRefund,
}

impl RecordKind {
    /// Every kind, in a stable order.
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Pay,
        RecordKind::Exchange,
        RecordKind::Withdraw,
        RecordKind::Merge,
        RecordKind::OfflineRedeem,
        RecordKind::EscrowClaim,
        RecordKind::EscrowRefund,
    ];

    /// The snake_case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Pay => "pay",
            RecordKind::Exchange => "exchange",
            RecordKind::Withdraw => "withdraw",
            RecordKind::Merge => "merge",
            RecordKind::OfflineRedeem => "offline_redeem",
            RecordKind::EscrowClaim => "escrow_claim",
            RecordKind::EscrowRefund => "escrow_refund",
        }
    }

    /// A stable code, for canonical bytes (the protobuf enum number).
    pub fn code(self) -> u32 {
        let k = match self {
            RecordKind::Pay => pb::RecordKind::Pay,
            RecordKind::Exchange => pb::RecordKind::Exchange,
            RecordKind::Withdraw => pb::RecordKind::Withdraw,
            RecordKind::Merge => pb::RecordKind::Merge,
            RecordKind::OfflineRedeem => pb::RecordKind::OfflineRedeem,
            RecordKind::EscrowClaim => pb::RecordKind::EscrowClaim,
            RecordKind::EscrowRefund => pb::RecordKind::EscrowRefund,
        };
        k as u32
    }

    fn from_pb(v: i32) -> Result<RecordKind, ProtocolError> {
        match pb::RecordKind::try_from(v) {
            Ok(pb::RecordKind::Pay) => Ok(RecordKind::Pay),
            Ok(pb::RecordKind::Exchange) => Ok(RecordKind::Exchange),
            Ok(pb::RecordKind::Withdraw) => Ok(RecordKind::Withdraw),
            Ok(pb::RecordKind::Merge) => Ok(RecordKind::Merge),
            Ok(pb::RecordKind::OfflineRedeem) => Ok(RecordKind::OfflineRedeem),
            Ok(pb::RecordKind::EscrowClaim) => Ok(RecordKind::EscrowClaim),
            Ok(pb::RecordKind::EscrowRefund) => Ok(RecordKind::EscrowRefund),
            Ok(pb::RecordKind::Unspecified) | Err(_) => Err(ProtocolError::Invalid {
                field: "transaction_record.kind",
                why: format!("unknown record kind {v}"),
            }),
        }
    }
}

/// One transaction record, as the institution and the platform each keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRecord {
    /// Unique within its batch.
    pub id: RecordId,
    /// The saga whose step moved the value.
    pub saga_id: SagaId,
    /// Which step.
    pub kind: RecordKind,
    /// The wallet whose value left.
    pub payer: WalletId,
    /// The wallet whose value arrived.
    pub payee: WalletId,
    /// How much.
    pub amount: Amount,
    /// When the step committed (ms since the epoch).
    pub at_ms: u64,
}

impl TryFrom<pb::TransactionRecord> for TransactionRecord {
    type Error = ProtocolError;

    fn try_from(p: pb::TransactionRecord) -> Result<Self, ProtocolError> {
        Ok(TransactionRecord {
            id: RecordId(p.record_id),
            saga_id: SagaId(fixed("transaction_record.saga_id", &p.saga_id)?),
            kind: RecordKind::from_pb(p.kind)?,
            payer: WalletId(p.payer),
            payee: WalletId(p.payee),
            amount: Amount(p.amount),
            at_ms: p.at_ms,
        })
    }
}

impl From<&TransactionRecord> for pb::TransactionRecord {
    fn from(r: &TransactionRecord) -> Self {
        pb::TransactionRecord {
            record_id: r.id.0,
            saga_id: Bytes::copy_from_slice(&r.saga_id.0),
            kind: r.kind.code() as i32,
            payer: r.payer.0,
            payee: r.payee.0,
            amount: r.amount.0,
            at_ms: r.at_ms,
        }
    }
}

/// Institution → platform: append my batch hash to the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHashPost {
    /// The batch.
    pub batch_id: BatchId,
    /// The root of the batch's shard tree.
    pub batch_hash: Digest,
    /// How many records the batch holds.
    pub record_count: u64,
}

impl TryFrom<pb::BatchHashPost> for BatchHashPost {
    type Error = ProtocolError;

    fn try_from(p: pb::BatchHashPost) -> Result<Self, ProtocolError> {
        Ok(BatchHashPost {
            batch_id: BatchId(p.batch_id),
            batch_hash: digest("batch_hash_post.batch_hash", &p.batch_hash)?,
            record_count: p.record_count,
        })
    }
}

impl From<&BatchHashPost> for pb::BatchHashPost {
    fn from(m: &BatchHashPost) -> Self {
        pb::BatchHashPost {
            batch_id: m.batch_id.0,
            batch_hash: digest_to_pb(&m.batch_hash),
            record_count: m.record_count,
        }
    }
}

/// Platform → institution: the block that holds the institution's post of this batch. The
/// first post of a batch wins; a later one with another hash gets this same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHashAck {
    /// The batch.
    pub batch_id: BatchId,
    /// The block's height in the chain.
    pub height: u64,
    /// The block's hash: with the height, an anchor to verify the chain against.
    pub block_hash: Digest,
    /// The batch hash the chain holds for the institution.
    pub batch_hash: Digest,
}

impl TryFrom<pb::BatchHashAck> for BatchHashAck {
    type Error = ProtocolError;

    fn try_from(p: pb::BatchHashAck) -> Result<Self, ProtocolError> {
        Ok(BatchHashAck {
            batch_id: BatchId(p.batch_id),
            height: p.height,
            block_hash: digest("batch_hash_ack.block_hash", &p.block_hash)?,
            batch_hash: digest("batch_hash_ack.batch_hash", &p.batch_hash)?,
        })
    }
}

impl From<&BatchHashAck> for pb::BatchHashAck {
    fn from(m: &BatchHashAck) -> Self {
        pb::BatchHashAck {
            batch_id: m.batch_id.0,
            height: m.height,
            block_hash: digest_to_pb(&m.block_hash),
            batch_hash: digest_to_pb(&m.batch_hash),
        }
    }
}

/// Platform → institution: the hashes of the children of these nodes of the shard tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHashesRequest {
    /// The batch.
    pub batch_id: BatchId,
    /// The level of `nodes` (0 is the root, whose hash is the batch hash).
    pub level: u32,
    /// Node indices within the level.
    pub nodes: Vec<u32>,
}

impl TryFrom<pb::ShardHashesRequest> for ShardHashesRequest {
    type Error = ProtocolError;

    fn try_from(p: pb::ShardHashesRequest) -> Result<Self, ProtocolError> {
        if p.nodes.len() > SHARDS_PER_MESSAGE_MAX {
            return Err(too_many(
                "shard_hashes_request.nodes",
                p.nodes.len(),
                SHARDS_PER_MESSAGE_MAX,
            ));
        }
        Ok(ShardHashesRequest {
            batch_id: BatchId(p.batch_id),
            level: p.level,
            nodes: p.nodes,
        })
    }
}

impl From<&ShardHashesRequest> for pb::ShardHashesRequest {
    fn from(m: &ShardHashesRequest) -> Self {
        pb::ShardHashesRequest {
            batch_id: m.batch_id.0,
            level: m.level,
            nodes: m.nodes.clone(),
        }
    }
}

/// The children of one node of the shard tree, in order. At the last level they are the
/// shard hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardNode {
    /// The node's index within its level.
    pub node: u32,
    /// Its children's hashes.
    pub children: Vec<Digest>,
}

/// Institution → platform: the answer to a [`ShardHashesRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHashesReply {
    /// The batch.
    pub batch_id: BatchId,
    /// The level of the nodes.
    pub level: u32,
    /// The nodes asked for, with their children.
    pub nodes: Vec<ShardNode>,
}

impl TryFrom<pb::ShardHashesReply> for ShardHashesReply {
    type Error = ProtocolError;

    fn try_from(p: pb::ShardHashesReply) -> Result<Self, ProtocolError> {
        if p.nodes.len() > SHARDS_PER_MESSAGE_MAX {
            return Err(too_many(
                "shard_hashes_reply.nodes",
                p.nodes.len(),
                SHARDS_PER_MESSAGE_MAX,
            ));
        }
        let hashes: usize = p.nodes.iter().map(|n| n.children.len()).sum();
        if hashes > HASHES_PER_MESSAGE_MAX {
            return Err(too_many(
                "shard_hashes_reply.nodes[].children",
                hashes,
                HASHES_PER_MESSAGE_MAX,
            ));
        }
        let nodes = p
            .nodes
            .into_iter()
            .map(|n| {
                let children = n
                    .children
                    .iter()
                    .map(|c| digest("shard_hashes_reply.nodes[].children[]", c))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ShardNode {
                    node: n.node,
                    children,
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        Ok(ShardHashesReply {
            batch_id: BatchId(p.batch_id),
            level: p.level,
            nodes,
        })
    }
}

impl From<&ShardHashesReply> for pb::ShardHashesReply {
    fn from(m: &ShardHashesReply) -> Self {
        pb::ShardHashesReply {
            batch_id: m.batch_id.0,
            level: m.level,
            nodes: m
                .nodes
                .iter()
                .map(|n| pb::ShardNode {
                    node: n.node,
                    children: n.children.iter().map(digest_to_pb).collect(),
                })
                .collect(),
        }
    }
}

/// Platform → institution: the record hashes of these shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHashesRequest {
    /// The batch.
    pub batch_id: BatchId,
    /// The shards.
    pub shards: Vec<u32>,
}

impl TryFrom<pb::RecordHashesRequest> for RecordHashesRequest {
    type Error = ProtocolError;

    fn try_from(p: pb::RecordHashesRequest) -> Result<Self, ProtocolError> {
        if p.shards.len() > SHARDS_PER_MESSAGE_MAX {
            return Err(too_many(
                "record_hashes_request.shards",
                p.shards.len(),
                SHARDS_PER_MESSAGE_MAX,
            ));
        }
        Ok(RecordHashesRequest {
            batch_id: BatchId(p.batch_id),
            shards: p.shards,
        })
    }
}

impl From<&RecordHashesRequest> for pb::RecordHashesRequest {
    fn from(m: &RecordHashesRequest) -> Self {
        pb::RecordHashesRequest {
            batch_id: m.batch_id.0,
            shards: m.shards.clone(),
        }
    }
}

/// A record's id and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHash {
    /// The record.
    pub record_id: RecordId,
    /// SHA-256 of its canonical bytes.
    pub hash: Digest,
}

/// Every record hash of one shard, by record id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecords {
    /// The shard.
    pub shard: u32,
    /// Its records, ordered by record id.
    pub records: Vec<RecordHash>,
}

/// Institution → platform: (part of) the answer to a [`RecordHashesRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHashesReply {
    /// The batch.
    pub batch_id: BatchId,
    /// Whole shards; one request may be answered by several replies.
    pub shards: Vec<ShardRecords>,
}

impl TryFrom<pb::RecordHashesReply> for RecordHashesReply {
    type Error = ProtocolError;

    fn try_from(p: pb::RecordHashesReply) -> Result<Self, ProtocolError> {
        if p.shards.len() > SHARDS_PER_MESSAGE_MAX {
            return Err(too_many(
                "record_hashes_reply.shards",
                p.shards.len(),
                SHARDS_PER_MESSAGE_MAX,
            ));
        }
        let hashes: usize = p.shards.iter().map(|s| s.records.len()).sum();
        if hashes > HASHES_PER_MESSAGE_MAX {
            return Err(too_many(
                "record_hashes_reply.shards[].records",
                hashes,
                HASHES_PER_MESSAGE_MAX,
            ));
        }
        let shards = p
            .shards
            .into_iter()
            .map(|s| {
                let records = s
                    .records
                    .iter()
                    .map(|r| {
                        Ok(RecordHash {
                            record_id: RecordId(r.record_id),
                            hash: digest("record_hashes_reply.shards[].records[].hash", &r.hash)?,
                        })
                    })
                    .collect::<Result<Vec<_>, ProtocolError>>()?;
                if records.windows(2).any(|w| w[0].record_id >= w[1].record_id) {
                    return Err(ProtocolError::Invalid {
                        field: "record_hashes_reply.shards[].records",
                        why: format!("shard {}: record ids not strictly increasing", s.shard),
                    });
                }
                Ok(ShardRecords {
                    shard: s.shard,
                    records,
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        Ok(RecordHashesReply {
            batch_id: BatchId(p.batch_id),
            shards,
        })
    }
}

impl From<&RecordHashesReply> for pb::RecordHashesReply {
    fn from(m: &RecordHashesReply) -> Self {
        pb::RecordHashesReply {
            batch_id: m.batch_id.0,
            shards: m
                .shards
                .iter()
                .map(|s| pb::ShardRecords {
                    shard: s.shard,
                    records: s
                        .records
                        .iter()
                        .map(|r| pb::RecordHash {
                            record_id: r.record_id.0,
                            hash: digest_to_pb(&r.hash),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// How a record differs, from the institution's point of view against the platform's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InconsistencyKind {
    /// The platform has the record; the institution does not.
    Missing,
    /// The institution has the record; the platform does not.
    Extra,
    /// Both have the record, with different hashes.
    Altered,
}

impl InconsistencyKind {
    /// The snake_case name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            InconsistencyKind::Missing => "missing",
            InconsistencyKind::Extra => "extra",
            InconsistencyKind::Altered => "altered",
        }
    }
}

impl fmt::Display for InconsistencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One inconsistent record and the facts about it.
///
/// Invariant (checked on decode): `platform_hash` and `platform_record` are present unless
/// the kind is `Extra`, `institution_hash` is present unless it is `Missing`, an `Altered`
/// record's two hashes differ, and the platform's record has `record_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inconsistency {
    /// The record.
    pub record_id: RecordId,
    /// How it differs.
    pub kind: InconsistencyKind,
    /// The shard it falls in.
    pub shard: u32,
    /// Its hash at the platform.
    pub platform_hash: Option<Digest>,
    /// Its hash at the institution.
    pub institution_hash: Option<Digest>,
    /// The platform's version of the record (the institution holds its own).
    pub platform_record: Option<TransactionRecord>,
}

impl TryFrom<pb::Inconsistency> for Inconsistency {
    type Error = ProtocolError;

    fn try_from(p: pb::Inconsistency) -> Result<Self, ProtocolError> {
        let kind = match pb::InconsistencyKind::try_from(p.kind) {
            Ok(pb::InconsistencyKind::Missing) => InconsistencyKind::Missing,
            Ok(pb::InconsistencyKind::Extra) => InconsistencyKind::Extra,
            Ok(pb::InconsistencyKind::Altered) => InconsistencyKind::Altered,
            Ok(pb::InconsistencyKind::Unspecified) | Err(_) => {
                return Err(ProtocolError::Invalid {
                    field: "inconsistency.kind",
                    why: format!("unknown inconsistency kind {}", p.kind),
                })
            }
        };
        let optional = |field: &'static str, bytes: &Bytes, present: bool| {
            if present {
                digest(field, bytes).map(Some)
            } else if bytes.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::Invalid {
                    field,
                    why: format!("must be empty for a record that is {}", kind.name()),
                })
            }
        };
        let platform_hash = optional(
            "inconsistency.platform_hash",
            &p.platform_hash,
            kind != InconsistencyKind::Extra,
        )?;
        let institution_hash = optional(
            "inconsistency.institution_hash",
            &p.institution_hash,
            kind != InconsistencyKind::Missing,
        )?;
        if kind == InconsistencyKind::Altered && platform_hash == institution_hash {
            return Err(ProtocolError::Invalid {
                field: "inconsistency.institution_hash",
                why: "an altered record's hashes must differ".into(),
            });
        }
        let platform_record = match (kind, p.platform_record) {
            (InconsistencyKind::Extra, None) => None,
            (InconsistencyKind::Extra, Some(_)) => {
                return Err(ProtocolError::Invalid {
                    field: "inconsistency.platform_record",
                    why: "the platform has no version of an extra record".into(),
                })
            }
            (_, record) => {
                let record: TransactionRecord =
                    required("inconsistency.platform_record", record)?.try_into()?;
                if record.id.0 != p.record_id {
                    return Err(ProtocolError::Invalid {
                        field: "inconsistency.platform_record",
                        why: format!("is {}, not record-{}", record.id, p.record_id),
                    });
                }
                Some(record)
            }
        };
        Ok(Inconsistency {
            record_id: RecordId(p.record_id),
            kind,
            shard: p.shard,
            platform_hash,
            institution_hash,
            platform_record,
        })
    }
}

impl From<&Inconsistency> for pb::Inconsistency {
    fn from(m: &Inconsistency) -> Self {
        let kind = match m.kind {
            InconsistencyKind::Missing => pb::InconsistencyKind::Missing,
            InconsistencyKind::Extra => pb::InconsistencyKind::Extra,
            InconsistencyKind::Altered => pb::InconsistencyKind::Altered,
        };
        pb::Inconsistency {
            record_id: m.record_id.0,
            kind: kind as i32,
            shard: m.shard,
            platform_hash: m
                .platform_hash
                .as_ref()
                .map(digest_to_pb)
                .unwrap_or_default(),
            institution_hash: m
                .institution_hash
                .as_ref()
                .map(digest_to_pb)
                .unwrap_or_default(),
            platform_record: m.platform_record.as_ref().map(Into::into),
        }
    }
}

/// Hashes compared at one level of the drill-down, and how many of them differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LevelCount {
    /// Hash pairs compared (a record present on one side only counts as one).
    pub compared: u64,
    /// Of those, how many differed.
    pub unequal: u64,
}

impl LevelCount {
    fn from_pb(p: Option<pb::LevelCount>) -> LevelCount {
        let p = p.unwrap_or_default();
        LevelCount {
            compared: p.compared,
            unequal: p.unequal,
        }
    }

    fn to_pb(self) -> pb::LevelCount {
        pb::LevelCount {
            compared: self.compared,
            unequal: self.unequal,
        }
    }
}

/// Platform → institution: the result of reconciling a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// The batch.
    pub batch_id: BatchId,
    /// Every inconsistent record found.
    pub inconsistent_total: u64,
    /// The first [`REPORT_INCONSISTENCIES_MAX`] of them, by record id.
    pub inconsistencies: Vec<Inconsistency>,
    /// The batch-hash comparison.
    pub batch: LevelCount,
    /// Shard-tree comparisons (interior nodes and shard hashes).
    pub shard: LevelCount,
    /// Record-hash comparisons inside the unequal shards.
    pub record: LevelCount,
}

impl ReconcileReport {
    /// Both sides hold the same records.
    pub fn agreed(&self) -> bool {
        self.batch.unequal == 0 && self.inconsistent_total == 0
    }

    /// Hashes compared at every level together.
    pub fn hashes_compared(&self) -> u64 {
        self.batch.compared + self.shard.compared + self.record.compared
    }
}

impl TryFrom<pb::ReconcileReport> for ReconcileReport {
    type Error = ProtocolError;

    fn try_from(p: pb::ReconcileReport) -> Result<Self, ProtocolError> {
        let listed = p.inconsistencies.len();
        if listed > REPORT_INCONSISTENCIES_MAX {
            return Err(too_many(
                "reconcile_report.inconsistencies",
                listed,
                REPORT_INCONSISTENCIES_MAX,
            ));
        }
        if listed as u64 > p.inconsistent_total
            || (listed < REPORT_INCONSISTENCIES_MAX && listed as u64 != p.inconsistent_total)
        {
            return Err(ProtocolError::Invalid {
                field: "reconcile_report.inconsistent_total",
                why: format!("{} with {listed} listed", p.inconsistent_total),
            });
        }
        let inconsistencies = p
            .inconsistencies
            .into_iter()
            .map(Inconsistency::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if inconsistencies
            .windows(2)
            .any(|w| w[0].record_id >= w[1].record_id)
        {
            return Err(ProtocolError::Invalid {
                field: "reconcile_report.inconsistencies",
                why: "record ids not strictly increasing".into(),
            });
        }
        Ok(ReconcileReport {
            batch_id: BatchId(p.batch_id),
            inconsistent_total: p.inconsistent_total,
            inconsistencies,
            batch: LevelCount::from_pb(p.batch),
            shard: LevelCount::from_pb(p.shard),
            record: LevelCount::from_pb(p.record),
        })
    }
}

impl From<&ReconcileReport> for pb::ReconcileReport {
    fn from(m: &ReconcileReport) -> Self {
        pb::ReconcileReport {
            batch_id: m.batch_id.0,
            inconsistent_total: m.inconsistent_total,
            inconsistencies: m.inconsistencies.iter().map(Into::into).collect(),
            batch: Some(m.batch.to_pb()),
            shard: Some(m.shard.to_pb()),
            record: Some(m.record.to_pb()),
        }
    }
}

/// The most records one [`LedgerForward`] carries; a forwarder with more sends several.
pub const LEDGER_FORWARD_RECORDS_MAX: usize = 4096;

/// The id of the ledger inbox: `Address::External(LEDGER_INBOX)`, the mailbox on the platform's
/// node (the central bank's) that takes the platform-side records other nodes forward. ("LEDGRINB")
pub const LEDGER_INBOX: u64 = 0x4c45_4447_5249_4e42;

/// One platform-side transaction record and the institution whose batch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedRecord {
    /// The institution whose batch the record is in.
    pub institution: InstitutionId,
    /// The record.
    pub record: TransactionRecord,
}

/// A node without the platform's reconciler → the ledger inbox on the node that has it: the
/// platform-side records made on the sending node, batched.
///
/// Canonical form (checked on decode): a nonzero `origin`, a `sequence` from 1, and 1 to
/// [`LEDGER_FORWARD_RECORDS_MAX`] records strictly increasing by (institution, record id), so
/// one forward names each record once and has one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerForward {
    /// The sending forwarder, random per process start.
    pub origin: u64,
    /// From 1 per origin: a copy of an (origin, sequence) already taken is a duplicate.
    pub sequence: u64,
    /// The records, by (institution, record id).
    pub records: Vec<ForwardedRecord>,
}

impl TryFrom<pb::LedgerForward> for LedgerForward {
    type Error = ProtocolError;

    fn try_from(p: pb::LedgerForward) -> Result<Self, ProtocolError> {
        let invalid = |field: &'static str, why: String| ProtocolError::Invalid { field, why };
        if p.origin == 0 {
            return Err(invalid("ledger_forward.origin", "must not be 0".into()));
        }
        if p.sequence == 0 {
            return Err(invalid("ledger_forward.sequence", "starts at 1".into()));
        }
        if p.records.is_empty() {
            return Err(invalid(
                "ledger_forward.records",
                "a forward carries at least one record".into(),
            ));
        }
        if p.records.len() > LEDGER_FORWARD_RECORDS_MAX {
            return Err(too_many(
                "ledger_forward.records",
                p.records.len(),
                LEDGER_FORWARD_RECORDS_MAX,
            ));
        }
        let records = p
            .records
            .into_iter()
            .map(|r| {
                Ok(ForwardedRecord {
                    institution: InstitutionId(r.institution),
                    record: required("ledger_forward.records[].record", r.record)?.try_into()?,
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        if records
            .windows(2)
            .any(|w| (w[0].institution, w[0].record.id) >= (w[1].institution, w[1].record.id))
        {
            return Err(invalid(
                "ledger_forward.records",
                "not strictly increasing by (institution, record_id)".into(),
            ));
        }
        Ok(LedgerForward {
            origin: p.origin,
            sequence: p.sequence,
            records,
        })
    }
}

impl From<&LedgerForward> for pb::LedgerForward {
    fn from(m: &LedgerForward) -> Self {
        pb::LedgerForward {
            origin: m.origin,
            sequence: m.sequence,
            records: m
                .records
                .iter()
                .map(|r| pb::ForwardedRecord {
                    institution: r.institution.0,
                    record: Some((&r.record).into()),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> TransactionRecord {
        TransactionRecord {
            id: RecordId(id),
            saga_id: SagaId::from_u128(9),
            kind: RecordKind::Pay,
            payer: WalletId(1),
            payee: WalletId(2),
            amount: Amount(500),
            at_ms: 7,
        }
    }

    fn altered(id: u64) -> pb::Inconsistency {
        (&Inconsistency {
            record_id: RecordId(id),
            kind: InconsistencyKind::Altered,
            shard: 3,
            platform_hash: Some(Digest([1; 32])),
            institution_hash: Some(Digest([2; 32])),
            platform_record: Some(record(id)),
        })
            .into()
    }

    #[test]
    fn an_inconsistency_whose_facts_contradict_its_kind_is_rejected() {
        let mut p = altered(4);
        p.institution_hash = p.platform_hash.clone();
        assert!(matches!(
            Inconsistency::try_from(p),
            Err(ProtocolError::Invalid {
                field: "inconsistency.institution_hash",
                ..
            })
        ));
        let mut p = altered(4);
        p.kind = pb::InconsistencyKind::Missing as i32;
        assert!(matches!(
            Inconsistency::try_from(p),
            Err(ProtocolError::Invalid {
                field: "inconsistency.institution_hash",
                ..
            })
        ));
        let mut p = altered(4);
        p.kind = pb::InconsistencyKind::Extra as i32;
        p.platform_hash = Bytes::new();
        assert!(matches!(
            Inconsistency::try_from(p),
            Err(ProtocolError::Invalid {
                field: "inconsistency.platform_record",
                ..
            })
        ));
        let mut p = altered(4);
        p.platform_record = Some((&record(5)).into());
        assert!(matches!(
            Inconsistency::try_from(p),
            Err(ProtocolError::Invalid {
                field: "inconsistency.platform_record",
                ..
            })
        ));
        let mut p = altered(4);
        p.platform_hash = Bytes::from_static(&[1, 2]);
        assert_eq!(
            Inconsistency::try_from(p),
            Err(ProtocolError::BadLength {
                field: "inconsistency.platform_hash",
                expected: 32,
                actual: 2
            })
        );
    }

    #[test]
    fn a_report_must_list_what_it_counts_in_record_order() {
        let report = |total: u64, ids: &[u64]| pb::ReconcileReport {
            batch_id: 1,
            inconsistent_total: total,
            inconsistencies: ids.iter().map(|i| altered(*i)).collect(),
            batch: None,
            shard: None,
            record: None,
        };
        assert!(ReconcileReport::try_from(report(2, &[1, 2])).is_ok());
        assert!(ReconcileReport::try_from(report(3, &[1, 2])).is_err());
        assert!(ReconcileReport::try_from(report(2, &[2, 1])).is_err());
        assert!(ReconcileReport::try_from(report(2, &[2, 2])).is_err());
    }

    #[test]
    fn record_hashes_out_of_order_are_rejected() {
        let rh = |id: u64| pb::RecordHash {
            record_id: id,
            hash: Bytes::copy_from_slice(&[0; 32]),
        };
        let p = pb::RecordHashesReply {
            batch_id: 1,
            shards: vec![pb::ShardRecords {
                shard: 0,
                records: vec![rh(5), rh(3)],
            }],
        };
        assert!(RecordHashesReply::try_from(p).is_err());
    }

    fn forward(ids: &[(u32, u64)]) -> pb::LedgerForward {
        (&LedgerForward {
            origin: 7,
            sequence: 1,
            records: ids
                .iter()
                .map(|&(i, id)| ForwardedRecord {
                    institution: InstitutionId(i),
                    record: record(id),
                })
                .collect(),
        })
            .into()
    }

    #[test]
    fn a_ledger_forward_round_trips_in_canonical_order() {
        let p = forward(&[(0, 5), (0, 9), (2, 1)]);
        let m = LedgerForward::try_from(p.clone()).unwrap();
        assert_eq!(m.records.len(), 3);
        assert_eq!(pb::LedgerForward::from(&m), p);
    }

    #[test]
    fn a_ledger_forward_out_of_canonical_form_is_rejected() {
        let field = |p: pb::LedgerForward| match LedgerForward::try_from(p) {
            Err(ProtocolError::Invalid { field, .. }) => field,
            other => panic!("accepted or another error: {other:?}"),
        };
        // Out of order, or one record twice.
        assert_eq!(field(forward(&[(0, 9), (0, 5)])), "ledger_forward.records");
        assert_eq!(field(forward(&[(1, 5), (0, 9)])), "ledger_forward.records");
        assert_eq!(field(forward(&[(0, 5), (0, 5)])), "ledger_forward.records");
        // Nothing to forward, or more than one forward may carry.
        assert_eq!(field(forward(&[])), "ledger_forward.records");
        let many: Vec<(u32, u64)> = (0..=LEDGER_FORWARD_RECORDS_MAX as u64)
            .map(|id| (0, id))
            .collect();
        assert_eq!(field(forward(&many)), "ledger_forward.records");
        // No origin, no sequence.
        let mut p = forward(&[(0, 1)]);
        p.origin = 0;
        assert_eq!(field(p), "ledger_forward.origin");
        let mut p = forward(&[(0, 1)]);
        p.sequence = 0;
        assert_eq!(field(p), "ledger_forward.sequence");
        // A record missing or malformed.
        let mut p = forward(&[(0, 1)]);
        p.records[0].record = None;
        assert!(LedgerForward::try_from(p).is_err());
        let mut p = forward(&[(0, 1)]);
        if let Some(r) = p.records[0].record.as_mut() {
            r.saga_id = Bytes::from_static(&[1]);
        }
        assert!(matches!(
            LedgerForward::try_from(p),
            Err(ProtocolError::BadLength {
                field: "transaction_record.saga_id",
                ..
            })
        ));
    }

    #[test]
    fn an_unknown_record_kind_is_rejected() {
        let mut p: pb::TransactionRecord = (&record(1)).into();
        p.kind = 99;
        assert!(TransactionRecord::try_from(p.clone()).is_err());
        p.kind = 0;
        assert!(TransactionRecord::try_from(p).is_err());
    }
}
