//! Batches of transaction records and their three levels of hashes: record, shard (the
//! leaves of a fixed shard tree) and batch (the tree's root).
//!
//! Everything here is part of the protocol: both sides must compute the same bytes, so the
//! canonical encoding, the shard function and the tree shape are fixed, written out by hand,
//! and never depend on what `prost` or `serde` emit.

use serde::{Deserialize, Serialize};
use specie_protocol::canonical::Canon;
use specie_protocol::crypto::sha256;
use specie_protocol::reconcile::{BatchId, Digest, RecordHash, RecordId, TransactionRecord};
use specie_protocol::InstitutionId;
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// Children per node of the shard tree.
pub const SHARD_FANOUT: u32 = 16;
/// Levels of the shard tree below the root: the root is level 0, the shards are the nodes of
/// level `SHARD_TREE_DEPTH`.
pub const SHARD_TREE_DEPTH: u32 = 3;
/// Shards per batch: every batch, whatever its size, is split into this many.
pub const SHARD_COUNT: u32 = SHARD_FANOUT.pow(SHARD_TREE_DEPTH);
/// The most records one batch may hold. Bounds the memory of a batch, the size of its
/// journal entry, and (with the protocol's `HASHES_PER_MESSAGE_MAX`) guarantees that any
/// one shard's record hashes fit in one reply.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;

const _: () = assert!(BATCH_RECORDS_MAX <= specie_protocol::reconcile::HASHES_PER_MESSAGE_MAX);

const RECORD_DOMAIN: &str = "specie/v1/reconcile/record";
const SHARD_DOMAIN: &str = "specie/v1/reconcile/shard";
const NODE_DOMAIN: &str = "specie/v1/reconcile/node";

/// Names a batch: the institution it reconciles and the institution's batch id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchKey {
    /// The institution reconciled.
    pub institution: InstitutionId,
    /// The institution's batch id.
    pub batch_id: BatchId,
}

impl fmt::Display for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.institution, self.batch_id)
    }
}

/// Reconciliation could not proceed: a batch could not be built, or a reconciler could not
/// be reached or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReconcileError {
    /// Two records of the batch share an id.
    #[error("{batch}: {record} appears twice")]
    DuplicateRecord {
        /// The batch.
        batch: BatchKey,
        /// The repeated id.
        record: RecordId,
    },
    /// The batch holds more records than a batch may.
    #[error("{batch}: {count} records, at most {max} allowed")]
    TooManyRecords {
        /// The batch.
        batch: BatchKey,
        /// Records offered.
        count: usize,
        /// [`BATCH_RECORDS_MAX`].
        max: usize,
    },
    /// No reconciler runs for the institution.
    #[error("no reconciler runs for {institution}")]
    NoReconciler {
        /// The institution.
        institution: InstitutionId,
    },
    /// The platform's reconciler does not run on this node.
    #[error("the platform's reconciler does not run on this node")]
    NoPlatform,
    /// A reconciler's mailbox is gone (it stopped for good).
    #[error("{actor} is unreachable: {why}")]
    Unreachable {
        /// The reconciler.
        actor: specie_protocol::Address,
        /// The mailbox error.
        why: String,
    },
    /// A batch was not reconciled in time.
    #[error(
        "{batch} not reconciled in time (platform: {platform:?}, institution: {institution:?})"
    )]
    Timeout {
        /// The batch.
        batch: BatchKey,
        /// How far the platform got (none: it has not heard of the batch).
        platform: Option<crate::reconciler::Progress>,
        /// How far the institution got.
        institution: Option<crate::reconciler::Progress>,
    },
}

/// The canonical bytes of a record: what its hash covers.
pub fn record_bytes(r: &TransactionRecord) -> Vec<u8> {
    let mut c = Canon::new(RECORD_DOMAIN);
    c.u64(r.id.0)
        .fixed(&r.saga_id.0)
        .u32(r.kind.code())
        .u64(r.payer.0)
        .u64(r.payee.0)
        .u64(r.amount.0)
        .u64(r.at_ms);
    c.finish()
}

/// SHA-256 of the record's canonical bytes.
pub fn record_hash(r: &TransactionRecord) -> Digest {
    Digest(sha256(&record_bytes(r)))
}

/// The shard a record falls in: the SplitMix64 finalizer of its id, modulo [`SHARD_COUNT`].
/// Mixing first spreads sequential and strided ids evenly over the shards.
pub fn shard_of(id: RecordId) -> u32 {
    let mut z = id.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The remainder is below SHARD_COUNT, a u32.
    (z % u64::from(SHARD_COUNT)) as u32
}

/// A shard's hash: over its index and its record hashes sorted by value, so it does not
/// depend on the order in which either side happens to keep its records.
pub fn shard_hash(shard: u32, record_hashes: impl IntoIterator<Item = Digest>) -> Digest {
    let mut hashes: Vec<Digest> = record_hashes.into_iter().collect();
    hashes.sort_unstable();
    let mut c = Canon::new(SHARD_DOMAIN);
    c.u32(shard)
        .u32(u32::try_from(hashes.len()).expect("a shard holds at most BATCH_RECORDS_MAX records"));
    for h in &hashes {
        c.fixed(&h.0);
    }
    Digest(sha256(&c.finish()))
}

/// The hash of node `node` of level `level` of the shard tree, over its children in order.
pub fn node_hash(level: u32, node: u32, children: &[Digest]) -> Digest {
    let mut c = Canon::new(NODE_DOMAIN);
    c.u32(level).u32(node);
    for h in children {
        c.fixed(&h.0);
    }
    Digest(sha256(&c.finish()))
}

/// How many nodes level `level` of the shard tree has.
pub fn level_width(level: u32) -> u32 {
    assert!(
        level <= SHARD_TREE_DEPTH,
        "the shard tree has no level {level}"
    );
    SHARD_FANOUT.pow(level)
}

/// Whether `children` are the children of a node whose hash is `parent`.
pub fn children_match(level: u32, node: u32, children: &[Digest], parent: Digest) -> bool {
    level < SHARD_TREE_DEPTH
        && node < level_width(level)
        && children.len() == SHARD_FANOUT as usize
        && node_hash(level, node, children) == parent
}

/// Whether `records` are the records of shard `shard` whose hash is `expected`.
pub fn shard_records_match(shard: u32, records: &[RecordHash], expected: Digest) -> bool {
    shard < SHARD_COUNT
        && records.iter().all(|r| shard_of(r.record_id) == shard)
        && shard_hash(shard, records.iter().map(|r| r.hash)) == expected
}

/// One side's records of a batch. Record ids are unique (checked when built).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    key: BatchKey,
    records: BTreeMap<RecordId, TransactionRecord>,
}

impl Batch {
    /// Builds a batch, refusing repeated record ids and oversized batches.
    pub fn new(
        key: BatchKey,
        records: impl IntoIterator<Item = TransactionRecord>,
    ) -> Result<Batch, ReconcileError> {
        let mut map = BTreeMap::new();
        for record in records {
            let id = record.id;
            if map.insert(id, record).is_some() {
                return Err(ReconcileError::DuplicateRecord {
                    batch: key,
                    record: id,
                });
            }
            if map.len() > BATCH_RECORDS_MAX {
                return Err(ReconcileError::TooManyRecords {
                    batch: key,
                    count: map.len(),
                    max: BATCH_RECORDS_MAX,
                });
            }
        }
        Ok(Batch { key, records: map })
    }

    /// Which batch.
    pub fn key(&self) -> BatchKey {
        self.key
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A record by id.
    pub fn get(&self, id: RecordId) -> Option<&TransactionRecord> {
        self.records.get(&id)
    }

    /// The records, by id.
    pub fn records(&self) -> impl Iterator<Item = &TransactionRecord> {
        self.records.values()
    }
}

/// Every hash of one side's batch: the record hashes grouped by shard, and the shard tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHashes {
    /// Per shard, its record hashes by record id.
    shards: Vec<Vec<RecordHash>>,
    /// `tree[level][node]`; `tree[0]` is the root, `tree[SHARD_TREE_DEPTH]` the shard hashes.
    tree: Vec<Vec<Digest>>,
    record_count: u64,
}

impl BatchHashes {
    /// Hashes a batch: every record once, every shard and tree node once.
    pub fn of(batch: &Batch) -> BatchHashes {
        let mut shards = vec![Vec::new(); SHARD_COUNT as usize];
        // Records come in id order, so every shard's list is sorted by id.
        for record in batch.records() {
            shards[shard_of(record.id) as usize].push(RecordHash {
                record_id: record.id,
                hash: record_hash(record),
            });
        }
        let leaves: Vec<Digest> = shards
            .iter()
            .enumerate()
            .map(|(s, records)| shard_hash(s as u32, records.iter().map(|r| r.hash)))
            .collect();
        let mut tree = vec![leaves];
        for level in (0..SHARD_TREE_DEPTH).rev() {
            let below = tree.last().expect("the leaves are there");
            let nodes = below
                .chunks(SHARD_FANOUT as usize)
                .enumerate()
                .map(|(n, children)| node_hash(level, n as u32, children))
                .collect();
            tree.push(nodes);
        }
        tree.reverse();
        debug_assert_eq!(tree[0].len(), 1, "one root");
        BatchHashes {
            shards,
            tree,
            record_count: batch.len() as u64,
        }
    }

    /// The batch hash: the root of the shard tree.
    pub fn root(&self) -> Digest {
        self.tree[0][0]
    }

    /// How many records were hashed.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// The hash of a node, if the tree has it.
    pub fn node(&self, level: u32, node: u32) -> Option<Digest> {
        self.tree.get(level as usize)?.get(node as usize).copied()
    }

    /// The children of a node above the shards, in order.
    pub fn children(&self, level: u32, node: u32) -> Option<&[Digest]> {
        if level >= SHARD_TREE_DEPTH || node >= level_width(level) {
            return None;
        }
        let fanout = SHARD_FANOUT as usize;
        let first = node as usize * fanout;
        Some(&self.tree[level as usize + 1][first..first + fanout])
    }

    /// The record hashes of a shard, by record id.
    pub fn shard(&self, shard: u32) -> Option<&[RecordHash]> {
        self.shards.get(shard as usize).map(Vec::as_slice)
    }
}

/// A record whose hashes differ between the two sides, as found by [`compare_records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordDifference {
    /// The record.
    pub record_id: RecordId,
    /// Its hash on our side, if we have it.
    pub ours: Option<Digest>,
    /// Its hash on their side, if they have it.
    pub theirs: Option<Digest>,
}

/// Compares two sides' record hashes of one shard (each sorted by record id) with a merge
/// join. Returns the differences and how many record ids were examined: every id of either
/// side counts once.
pub fn compare_records(ours: &[RecordHash], theirs: &[RecordHash]) -> (Vec<RecordDifference>, u64) {
    let (mut i, mut j) = (0, 0);
    let mut differences = Vec::new();
    let mut compared = 0;
    while i < ours.len() || j < theirs.len() {
        compared += 1;
        let (a, b) = (ours.get(i), theirs.get(j));
        let difference = match (a, b) {
            (Some(a), Some(b)) if a.record_id == b.record_id => {
                i += 1;
                j += 1;
                (a.hash != b.hash).then_some(RecordDifference {
                    record_id: a.record_id,
                    ours: Some(a.hash),
                    theirs: Some(b.hash),
                })
            }
            (Some(a), Some(b)) if a.record_id < b.record_id => {
                i += 1;
                Some(RecordDifference {
                    record_id: a.record_id,
                    ours: Some(a.hash),
                    theirs: None,
                })
            }
            (Some(a), None) => {
                i += 1;
                Some(RecordDifference {
                    record_id: a.record_id,
                    ours: Some(a.hash),
                    theirs: None,
                })
            }
            (_, Some(b)) => {
                j += 1;
                Some(RecordDifference {
                    record_id: b.record_id,
                    ours: None,
                    theirs: Some(b.hash),
                })
            }
            (None, None) => unreachable!("the loop condition"),
        };
        differences.extend(difference);
    }
    (differences, compared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::reconcile::RecordKind;
    use specie_protocol::{Amount, SagaId, WalletId};

    fn record(id: u64, amount: u64) -> TransactionRecord {
        TransactionRecord {
            id: RecordId(id),
            saga_id: SagaId::from_u128(u128::from(id)),
            kind: RecordKind::Pay,
            payer: WalletId(1),
            payee: WalletId(2),
            amount: Amount(amount),
            at_ms: 1000 + id,
        }
    }

    fn key() -> BatchKey {
        BatchKey {
            institution: InstitutionId(0),
            batch_id: BatchId(1),
        }
    }

    #[test]
    fn every_field_of_a_record_is_covered_by_its_hash() {
        let base = record(7, 500);
        let variants = [
            TransactionRecord {
                id: RecordId(8),
                ..base.clone()
            },
            TransactionRecord {
                saga_id: SagaId::from_u128(99),
                ..base.clone()
            },
            TransactionRecord {
                kind: RecordKind::Merge,
                ..base.clone()
            },
            TransactionRecord {
                payer: WalletId(9),
                ..base.clone()
            },
            TransactionRecord {
                payee: WalletId(9),
                ..base.clone()
            },
            TransactionRecord {
                amount: Amount(501),
                ..base.clone()
            },
            TransactionRecord {
                at_ms: 1,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(record_hash(&v), record_hash(&base), "{v:?}");
        }
    }

    #[test]
    fn the_batch_hash_ignores_the_order_records_were_given_in() {
        let a = Batch::new(key(), (0..100).map(|i| record(i, i * 3))).unwrap();
        let b = Batch::new(key(), (0..100).rev().map(|i| record(i, i * 3))).unwrap();
        assert_eq!(BatchHashes::of(&a).root(), BatchHashes::of(&b).root());
        let c = Batch::new(
            key(),
            (0..100).map(|i| record(i, i * 3 + u64::from(i == 42))),
        )
        .unwrap();
        assert_ne!(BatchHashes::of(&a).root(), BatchHashes::of(&c).root());
    }

    #[test]
    fn a_batch_refuses_a_repeated_record_id() {
        let err = Batch::new(key(), [record(1, 5), record(2, 5), record(1, 6)]).unwrap_err();
        assert_eq!(
            err,
            ReconcileError::DuplicateRecord {
                batch: key(),
                record: RecordId(1)
            }
        );
    }

    #[test]
    fn the_tree_links_every_level_and_verifies_its_own_children() {
        let batch = Batch::new(key(), (0..1000).map(|i| record(i, 1))).unwrap();
        let h = BatchHashes::of(&batch);
        for level in 0..SHARD_TREE_DEPTH {
            for node in 0..level_width(level) {
                let children = h.children(level, node).unwrap();
                assert!(children_match(
                    level,
                    node,
                    children,
                    h.node(level, node).unwrap()
                ));
            }
        }
        let shards: usize = (0..SHARD_COUNT).map(|s| h.shard(s).unwrap().len()).sum();
        assert_eq!(shards, 1000);
        for s in 0..SHARD_COUNT {
            let leaf = h.node(SHARD_TREE_DEPTH, s).unwrap();
            assert!(shard_records_match(s, h.shard(s).unwrap(), leaf));
        }
        // A wrong parent, a child list of the wrong length, a node outside the tree.
        let children = h.children(1, 3).unwrap();
        assert!(!children_match(1, 3, children, h.node(1, 4).unwrap()));
        assert!(!children_match(1, 3, &children[1..], h.node(1, 3).unwrap()));
        assert!(h.children(SHARD_TREE_DEPTH, 0).is_none());
        assert!(h.children(1, SHARD_FANOUT).is_none());
    }

    #[test]
    fn sequential_ids_spread_evenly_over_the_shards() {
        let mut counts = vec![0u32; SHARD_COUNT as usize];
        let records = u64::from(SHARD_COUNT) * 64;
        for id in 0..records {
            counts[shard_of(RecordId(id)) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *min >= 30 && *max <= 110,
            "shard sizes {min}..{max} around a mean of 64"
        );
    }

    #[test]
    fn the_merge_join_classifies_and_counts_every_id_once() {
        let rh = |id: u64, h: u8| RecordHash {
            record_id: RecordId(id),
            hash: Digest([h; 32]),
        };
        let ours = [rh(1, 1), rh(2, 2), rh(4, 4), rh(6, 6)];
        let theirs = [rh(2, 2), rh(3, 3), rh(4, 9), rh(7, 7)];
        let (diffs, compared) = compare_records(&ours, &theirs);
        assert_eq!(compared, 6, "ids 1, 2, 3, 4, 6, 7");
        let summary: Vec<_> = diffs
            .iter()
            .map(|d| (d.record_id.0, d.ours.is_some(), d.theirs.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, true, false),
                (3, false, true),
                (4, true, true),
                (6, true, false),
                (7, false, true)
            ]
        );
    }
}
