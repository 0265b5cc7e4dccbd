//! The journal: each actor's events, in order, so that a restarted actor can rebuild its state.
//!
//! A host appends a step's events and gets a sequence number back; nothing the step sends or
//! announces leaves the actor before the journal says that sequence number is durable. The
//! in-memory journal is durable at once (it survives actor crashes, not process exits); the
//! [`crate::redb_journal::RedbJournal`] makes entries durable in group commits.
//!
//! Journal faults (the chaos harness's `fsync_error`, crash-before and crash-after a write)
//! enter through a [`JournalFaultHook`] installed on the node.

use bytes::Bytes;
use dashmap::DashMap;
use specie_protocol::Address;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// A journal operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JournalError {
    /// The journal refused or failed a write.
    #[error("journal write for {actor} failed: {why}")]
    Write {
        /// The actor whose entries were being written.
        actor: Address,
        /// What went wrong.
        why: String,
    },
    /// An entry could not be read back.
    #[error("journal entry {index} of {actor} is unreadable: {why}")]
    Corrupt {
        /// The actor whose entries were being read.
        actor: Address,
        /// Position of the entry.
        index: usize,
        /// What went wrong.
        why: String,
    },
    /// The journal file cannot be used.
    #[error("{file}: {why}")]
    Open {
        /// The file.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// The journal stopped (a failed group commit); nothing more becomes durable.
    #[error("the journal stopped: {0}")]
    Stopped(String),
}

/// Counters a journal keeps for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JournalStats {
    /// Group commits (write transactions); for the in-memory journal, append calls.
    pub batches: u64,
    /// Entries appended.
    pub entries: u64,
    /// fsyncs performed (zero for the in-memory journal).
    pub fsyncs: u64,
    /// Time spent committing, in seconds.
    pub commit_seconds: f64,
}

/// A future that resolves when a sequence number is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

/// Per-actor append-only event logs.
pub trait Journal: Send + Sync {
    /// Appends a step's entries, all or none, and returns the sequence number that becomes
    /// durable with them.
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<u64, JournalError>;
    /// Whether everything up to `seq` is durable.
    fn is_durable(&self, seq: u64) -> bool;
    /// Resolves when everything up to `seq` is durable, or with an error if it never will be.
    fn wait_durable(&self, seq: u64) -> Durable;
    /// Every entry of the actor not covered by its snapshot, oldest first.
    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError>;
    /// Writes a snapshot of the actor's state that covers its entries up to `covers_seq`
    /// (its latest append), and drops those entries — after every earlier append, in order,
    /// atomically. Returns the sequence number that makes it durable.
    fn snapshot(
        &self,
        actor: Address,
        checkpoint: Bytes,
        covers_seq: u64,
    ) -> Result<u64, JournalError>;
    /// The actor's latest snapshot, if any.
    fn load_snapshot(&self, actor: Address) -> Result<Option<Bytes>, JournalError>;
    /// Every actor that has entries.
    fn actors(&self) -> Result<Vec<Address>, JournalError>;
    /// Counters for reports.
    fn stats(&self) -> JournalStats;
}

/// What a journal fault hook decides for one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendFault {
    /// Write normally.
    None,
    /// The write fails; the actor crashes before anything is written.
    CrashBefore,
    /// The write succeeds; the actor crashes right after, before it sends anything.
    CrashAfter,
}

/// Decides, per append, whether the actor crashes around its journal write.
pub trait JournalFaultHook: Send + Sync {
    /// Called before each append with the entries about to be written.
    fn on_append(&self, actor: Address, entries: &[Bytes]) -> AppendFault;
}

/// No journal faults.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournalFaults;

impl JournalFaultHook for NoJournalFaults {
    fn on_append(&self, _actor: Address, _entries: &[Bytes]) -> AppendFault {
        AppendFault::None
    }
}

/// A journal in process memory: it survives actor crashes, not process exits.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    /// Per actor: entries with their sequence numbers.
    logs: DashMap<Address, Vec<(u64, Bytes)>>,
    snapshots: DashMap<Address, Bytes>,
    seq: AtomicU64,
    entries: AtomicU64,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> MemoryJournal {
        MemoryJournal::default()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<u64, JournalError> {
        self.entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.logs
            .entry(actor)
            .or_default()
            .extend(entries.into_iter().map(|e| (seq, e)));
        Ok(seq)
    }

    fn snapshot(
        &self,
        actor: Address,
        checkpoint: Bytes,
        covers_seq: u64,
    ) -> Result<u64, JournalError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.snapshots.insert(actor, checkpoint);
        if let Some(mut log) = self.logs.get_mut(&actor) {
            log.retain(|(s, _)| *s > covers_seq);
        }
        Ok(seq)
    }

    fn load_snapshot(&self, actor: Address) -> Result<Option<Bytes>, JournalError> {
        Ok(self.snapshots.get(&actor).map(|s| s.value().clone()))
    }

    fn is_durable(&self, _seq: u64) -> bool {
        true
    }

    fn wait_durable(&self, _seq: u64) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError> {
        Ok(self
            .logs
            .get(&actor)
            .map(|log| log.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default())
    }

    fn actors(&self) -> Result<Vec<Address>, JournalError> {
        let mut v: Vec<Address> = self.logs.iter().map(|e| *e.key()).collect();
        v.extend(self.snapshots.iter().map(|e| *e.key()));
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            batches: self.seq.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            fsyncs: 0,
            commit_seconds: 0.0,
        }
    }
}
