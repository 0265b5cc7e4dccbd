//! The journal: each actor's events, in order, so that a restarted actor can rebuild its state.
//!
//! A host appends a step's events before it sends the step's messages; nothing a step
//! announces to another actor can be forgotten by a crash.

use bytes::Bytes;
use dashmap::DashMap;
use specie_protocol::Address;
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
}

/// Counters a journal keeps for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Append calls (each is one atomic batch of one actor's step).
    pub batches: u64,
    /// Entries appended.
    pub entries: u64,
}

/// Per-actor append-only event logs.
pub trait Journal: Send + Sync {
    /// Appends a step's entries atomically: all of them or none.
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<(), JournalError>;
    /// Every entry of the actor, oldest first.
    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError>;
    /// Counters for reports.
    fn stats(&self) -> JournalStats;
}

/// A journal in process memory: it survives actor crashes, not process exits.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    logs: DashMap<Address, Vec<Bytes>>,
    batches: AtomicU64,
    entries: AtomicU64,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> MemoryJournal {
        MemoryJournal::default()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<(), JournalError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.logs.entry(actor).or_default().extend(entries);
        Ok(())
    }

    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError> {
        Ok(self
            .logs
            .get(&actor)
            .map(|log| log.value().clone())
            .unwrap_or_default())
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            batches: self.batches.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
        }
    }
}
