//! Reconciliation (DESIGN.md §3.7): an institution and the reconciliation platform each
//! hash their transaction records of a batch, post the batch hash to an append-only hash
//! chain, and, when the hashes differ, drill down to the inconsistent records while comparing
//! as few hashes as possible.
//!
//! Layout:
//! - [`hash`]: [`Batch`] (one side's records, unique by id), canonical record bytes, the
//!   shard function and the [`BatchHashes`] of a batch: record → shard → batch.
//! - [`chain`]: the [`HashChain`] of [`Block`]s and its verification, which names the height
//!   of an altered block.
//! - [`state`]: the [`Reconciler`] state machine, for both roles: an institution's (posts,
//!   answers questions about its hashes, receives the report) and the platform's (keeps the
//!   chain, drives the drill-down, reports).
//! - [`LocalReconcilers`]: the platform's and institutions' reconcilers started as supervised
//!   hosts on a node, with calls to load batches, wait for results and take snapshots.
//! - [`ledger`]: the transaction records actors produce for committed steps ([`Movement`],
//!   [`record_id`]), on the institution side and, independently, on the platform's.
//! - [`Feed`]: continuous reconciliation on a node: collects both sides' records from the
//!   node's ledger sink into per-(institution, batch) buckets, loads each closed batch into
//!   the reconcilers and collects the results.
//! - [`forward`]: platform-side records across nodes of a cluster: the [`Forwarder`] on
//!   nodes without the platform's reconciler, the [`LedgerInbox`] on the node with it.
//! - [`sample`]: seeded sample records and planted differences (the demo and the tests).
//!
//! # The three levels, and why the middle one is a tree
//!
//! A batch is split into a fixed [`SHARD_COUNT`] = 4096 shards by record id. A record's hash
//! is SHA-256 over its canonical bytes; a shard's hash covers its record hashes sorted by
//! value; the batch hash is the root of a Merkle tree of fanout [`SHARD_FANOUT`] = 16 and
//! depth [`SHARD_TREE_DEPTH`] = 3 whose leaves are the shard hashes. These are the three
//! levels of the issue (batch, shard, record); the tree only decides how the shard level is
//! compared.
//!
//! With a flat list (batch hash over all shard hashes), a mismatch costs `1 + S + K·N/S`
//! comparisons for `S` shards, `K` differences and `N` records: every shard hash is
//! compared whatever `K` is, and making shards small (to keep `K·N/S` down) makes `S`
//! large. The tree compares only the children of unequal nodes, at most `K·F` per level, so
//! the shard level costs at most `F·(1 + K·(D-1))` for `D` levels of fanout `F`, and `S` can be
//! large enough that the record level stays small: `1 + F·(1 + K·(D-1)) + K·N/S`. For
//! 100,000 records with 5 differences that is about 300 hashes (293 measured by
//! `specie reconcile --demo`) against about 4,200 for a flat list of the same 4096 shards or
//! about 1,400 for the best flat list (`S ≈ √(K·N)`, which would also have to be tuned to the
//! batch size). The price is `D` request/reply round trips for the shard level instead of
//! one, each carrying all the nodes of its level at once (never one node per message).
//! Every reply is verifiable: a node's children must hash to the node's hash the institution
//! committed to, the root being the batch hash on the chain.
//!
//! Records are fed in with [`ReconcilerCommand::LoadBatch`]. Integrating into a cluster:
//! run one institution-side reconciler per institution (`Address::Reconciler(i)`) and one
//! platform reconciler (`Address::Reconciler(RECONCILIATION_PLATFORM)`) as hosts — all on one
//! node (`specie run`), or each where the placement puts it (`specie node`:
//! [`LocalReconcilers::start_on`]) — and let a [`Feed`] load each batch into the sides its node
//! hosts; it reads the results as batches finish ([`Reconciler::finished_since`]). A finished
//! batch is pruned to a compact [`BatchStatus`] (see the `state` module documentation).

pub mod chain;
mod feed;
pub mod forward;
pub mod hash;
pub mod ledger;
mod local;
pub mod sample;
mod state;
#[cfg(test)]
mod tests;

pub use chain::{
    verify_anchored, verify_blocks, verify_from, Block, ChainError, HashChain, Poster,
};
pub use feed::{
    Feed, FeedSettings, FeedSummary, FoundRecord, Side, SideTotals, FINDINGS_LISTED_MAX,
};
pub use forward::{Forwarder, LedgerInbox};
pub use hash::{
    record_hash, shard_of, Batch, BatchHashes, BatchKey, ReconcileError, BATCH_RECORDS_MAX,
    SHARD_COUNT, SHARD_FANOUT, SHARD_TREE_DEPTH,
};
pub use ledger::{record_id, Movement};
pub use local::LocalReconcilers;
pub use state::{
    trace_id, BatchStatus, Finding, FinishedBatches, LevelCounts, Phase, Progress, Reconciler,
    ReconcilerCommand, ReconcilerEvent, ReconcilerLimits, ReconcilerSnapshot, ReconcilerTimer,
    Retained, Role, RECORD_HASHES_PER_REPLY_MAX, RETAINED_BATCHES_DEFAULT,
    SHARDS_PER_RECORD_REQUEST_MAX, SHARD_NODES_PER_REQUEST_MAX,
};
