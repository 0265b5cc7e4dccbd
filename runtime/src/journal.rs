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
///
/// It holds every entry of every actor until the actor's snapshot covers it, so its layout is
/// what a node with a million actors pays per actor: each actor's entries are packed into one
/// buffer ([`PackedLog`]) rather than kept as one `Bytes` (and its allocation) per entry, and
/// snapshots are copied into allocations of their exact size.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    /// Per actor: entries not covered by its snapshot, with their sequence numbers.
    logs: DashMap<Address, PackedLog>,
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

/// Logs up to this size grow to fit each append exactly (most actors write a few entries
/// between snapshots: a million of them must not carry a doubling's slack each); larger ones
/// grow by half their size, so appends stay amortized constant time.
const PACKED_EXACT_GROWTH_BYTES_MAX: usize = 4096;

/// One actor's entries, oldest first, in one buffer: for each entry its sequence number and
/// its length as LEB128 varints, then its bytes.
#[derive(Debug, Default)]
struct PackedLog {
    buf: Vec<u8>,
}

impl PackedLog {
    fn push(&mut self, seq: u64, entry: &[u8]) {
        let mut header = [0u8; 20];
        let mut n = put_varint(&mut header, seq);
        n += put_varint(&mut header[n..], entry.len() as u64);
        let needed = n + entry.len();
        if self.buf.capacity() - self.buf.len() < needed {
            let extra = if self.buf.len() < PACKED_EXACT_GROWTH_BYTES_MAX {
                needed
            } else {
                needed.max(self.buf.len() / 2)
            };
            self.buf.reserve_exact(extra);
        }
        self.buf.extend_from_slice(&header[..n]);
        self.buf.extend_from_slice(entry);
    }

    /// The entries with their sequence numbers, oldest first.
    fn iter(&self) -> PackedIter<'_> {
        PackedIter { rest: &self.buf }
    }

    /// Drops the entries a snapshot covering `covers_seq` replaces, and gives back the room
    /// they took.
    fn drop_covered(&mut self, covers_seq: u64) {
        let mut kept = PackedLog::default();
        for (seq, entry) in self.iter() {
            if seq > covers_seq {
                kept.push(seq, entry);
            }
        }
        kept.buf.shrink_to_fit();
        *self = kept;
    }
}

/// Iterates a [`PackedLog`].
struct PackedIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PackedIter<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        if self.rest.is_empty() {
            return None;
        }
        // The buffer is only ever written by `PackedLog::push`: a truncated or malformed
        // frame is a bug, not bad input.
        let (seq, n) = get_varint(self.rest).expect("packed log frames are well formed");
        let (len, m) = get_varint(&self.rest[n..]).expect("packed log frames are well formed");
        let start = n + m;
        let end = start + usize::try_from(len).expect("entry lengths fit usize");
        assert!(end <= self.rest.len(), "packed log entry within its buffer");
        let entry = &self.rest[start..end];
        self.rest = &self.rest[end..];
        Some((seq, entry))
    }
}

/// Writes `value` as a LEB128 varint at the start of `out`; returns the bytes written.
fn put_varint(out: &mut [u8], mut value: u64) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads a LEB128 varint from the start of `bytes`: the value and the bytes it took.
fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

impl Journal for MemoryJournal {
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<u64, JournalError> {
        self.entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut log = self.logs.entry(actor).or_default();
        for entry in &entries {
            log.push(seq, entry);
        }
        Ok(seq)
    }

    fn snapshot(
        &self,
        actor: Address,
        checkpoint: Bytes,
        covers_seq: u64,
    ) -> Result<u64, JournalError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // A copy of the exact size: the checkpoint may sit in a larger serialization buffer,
        // and it is kept until the next snapshot.
        self.snapshots
            .insert(actor, Bytes::copy_from_slice(&checkpoint));
        if let Some(mut log) = self.logs.get_mut(&actor) {
            log.drop_covered(covers_seq);
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
            .map(|log| log.iter().map(|(_, e)| Bytes::copy_from_slice(e)).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::WalletId;

    fn entries(texts: &[&str]) -> Vec<Bytes> {
        texts.iter().map(|t| Bytes::from(t.to_string())).collect()
    }

    #[test]
    fn memory_journal_loads_what_was_appended_in_order() {
        let journal = MemoryJournal::new();
        let (a, b) = (Address::Wallet(WalletId(1)), Address::Wallet(WalletId(2)));
        journal.append(a, entries(&["one", ""])).unwrap();
        journal.append(b, entries(&["other"])).unwrap();
        let long = "x".repeat(300);
        journal.append(a, entries(&[&long, "three"])).unwrap();
        assert_eq!(
            journal.load(a).unwrap(),
            entries(&["one", "", &long, "three"])
        );
        assert_eq!(journal.load(b).unwrap(), entries(&["other"]));
        assert!(journal.load(Address::CentralBank).unwrap().is_empty());
        assert_eq!(journal.actors().unwrap(), vec![a, b]);
        assert_eq!(journal.stats().entries, 5);
    }

    #[test]
    fn memory_journal_snapshot_drops_only_the_entries_it_covers() {
        let journal = MemoryJournal::new();
        let a = Address::Wallet(WalletId(1));
        journal.append(a, entries(&["one", "two"])).unwrap();
        let covered = journal.append(a, entries(&["three"])).unwrap();
        let seq = journal
            .snapshot(a, Bytes::from_static(b"state"), covered)
            .unwrap();
        assert!(seq > covered);
        journal.append(a, entries(&["four"])).unwrap();
        assert_eq!(journal.load(a).unwrap(), entries(&["four"]));
        assert_eq!(
            journal.load_snapshot(a).unwrap(),
            Some(Bytes::from_static(b"state"))
        );
        assert_eq!(journal.actors().unwrap(), vec![a]);
    }

    #[test]
    fn packed_log_frames_round_trip_large_sequence_numbers_and_entries() {
        let mut log = PackedLog::default();
        let big = vec![7u8; 70_000];
        log.push(u64::MAX, b"max");
        log.push(1 << 35, &big);
        log.push(0, b"");
        let read: Vec<(u64, Vec<u8>)> = log.iter().map(|(s, e)| (s, e.to_vec())).collect();
        assert_eq!(
            read,
            vec![(u64::MAX, b"max".to_vec()), (1 << 35, big), (0, Vec::new())]
        );
        log.drop_covered(1 << 35);
        let kept: Vec<u64> = log.iter().map(|(s, _)| s).collect();
        assert_eq!(kept, vec![u64::MAX]);
    }
}
