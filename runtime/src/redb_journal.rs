//! The durable journal: one `redb` database file per node, written in group commits.
//!
//! Appends from every actor of the node go through one bounded queue to a writer thread,
//! which takes up to `batch_entries_max` entries (waiting at most `batch_wait_us` for more
//! once it has one), writes them in one write transaction and commits it with an fsync. Only
//! then does it publish the batch's last sequence number as durable, and only then do the
//! hosts release what the steps in that batch sent. Sequence numbers are handed out in queue
//! order, so "durable up to N" covers every append numbered N or less.
//!
//! On-disk format (version [`FORMAT_VERSION`]): table `entries` maps
//! `actor kind (1 byte) ‖ actor id (8 bytes BE) ‖ sequence (8 bytes BE) ‖ index (4 bytes BE)`
//! to the entry bytes, so one actor's entries are a contiguous, ordered range — except that an
//! actor's several entries of one group commit are stored as one group record (index
//! `u32::MAX`, each entry framed by a 4-byte big-endian length), one insert instead of many;
//! table `meta`
//! holds the format version, the identity of the node that owns the file, the last sequence
//! number, and whatever the cluster layer stores (config, seed); table `snapshots` maps an
//! actor's 9-byte prefix to its latest snapshot, written in the same transaction that deletes
//! the entries it covers. A file of another format
//! version or another node, a corrupt or truncated file: each is an error naming the file and
//! the problem, and such a file is never written to.

use crate::journal::{Durable, Journal, JournalError, JournalStats};
use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use specie_protocol::Address;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshots");
const META_VERSION: &str = "format_version";
const META_IDENTITY: &str = "identity";
const META_LAST_SEQ: &str = "last_seq";

/// Group-commit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// Most entries in one group commit.
    pub batch_entries_max: usize,
    /// Once a batch has an entry, how long to wait for more before committing.
    pub batch_wait_us: u64,
    /// Appends queued for the writer before appenders block (back-pressure).
    pub queue_capacity: usize,
    /// An actor with this many entries since its last snapshot takes a new one, which
    /// replaces (compacts) them.
    pub snapshot_entries_min: u64,
}

struct Item {
    seq: u64,
    actor: Address,
    entries: Vec<Bytes>,
    /// A snapshot and the sequence number up to which it covers the actor's entries.
    snapshot: Option<(Bytes, u64)>,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    entries: AtomicU64,
    commit_ns: AtomicU64,
}

/// The durable journal of one node.
pub struct RedbJournal {
    path: PathBuf,
    /// The database; taken (and so closed cleanly) by [`RedbJournal::close`].
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    /// Next sequence number and the queue, under one lock so numbers enter the queue in order.
    queue: Mutex<(u64, Option<SyncSender<Item>>)>,
    durable: watch::Receiver<u64>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Added to every group commit, in microseconds (a live `write_delay` fault).
    commit_delay_us: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The 9-byte key prefix of an actor's entries.
fn actor_prefix(actor: Address) -> [u8; 9] {
    let (kind, id) = actor.code();
    let mut key = [0u8; 9];
    key[0] = kind;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn actor_from_prefix(key: &[u8]) -> Option<Address> {
    let id = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    Address::from_code(key[0], id)
}

fn entry_key(actor: Address, seq: u64, index: u32) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[..9].copy_from_slice(&actor_prefix(actor));
    key[9..17].copy_from_slice(&seq.to_be_bytes());
    key[17..].copy_from_slice(&index.to_be_bytes());
    key
}

fn open_error(path: &Path, why: impl std::fmt::Display) -> JournalError {
    JournalError::Open {
        file: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Reads and checks the meta table of an opened database.
fn check_meta(
    db: &impl ReadableDatabase,
    path: &Path,
    identity: Option<&[u8]>,
) -> Result<Option<u64>, JournalError> {
    let txn = db.begin_read().map_err(|e| open_error(path, e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(open_error(path, "not a specie journal (no meta table)"))
        }
        Err(e) => return Err(open_error(path, e)),
    };
    let version = meta
        .get(META_VERSION)
        .map_err(|e| open_error(path, e))?
        .ok_or_else(|| open_error(path, "not a specie journal (no format version)"))?;
    let version = u32::from_be_bytes(
        version
            .value()
            .try_into()
            .map_err(|_| open_error(path, "format version field is corrupt"))?,
    );
    if version != FORMAT_VERSION {
        return Err(open_error(
            path,
            format!("written in journal format version {version}; this build reads version {FORMAT_VERSION}"),
        ));
    }
    if let Some(expected) = identity {
        let found = meta.get(META_IDENTITY).map_err(|e| open_error(path, e))?;
        let found = found
            .as_ref()
            .map(|g| g.value().to_vec())
            .unwrap_or_default();
        if found != expected {
            return Err(open_error(
                path,
                format!(
                    "belongs to node `{}`, not to `{}`",
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(expected)
                ),
            ));
        }
    }
    let last = meta.get(META_LAST_SEQ).map_err(|e| open_error(path, e))?;
    Ok(last.and_then(|g| g.value().try_into().ok().map(u64::from_be_bytes)))
}

/// Opens a scratch copy of an existing file with redb's integrity check: the checksum of every
/// page is verified, and a file a crash left unclean is recovered (in the copy). A plain open
/// trusts a cleanly closed file, so a page overwritten since (a disk fault, another program)
/// would be a panic inside redb or silently wrong entries instead of this error. The file
/// itself is never written.
fn verified_copy(path: &Path) -> Result<(tempfile::NamedTempFile, Database), JournalError> {
    let scratch = tempfile::NamedTempFile::new().map_err(|e| open_error(path, e))?;
    std::fs::copy(path, scratch.path()).map_err(|e| open_error(path, e))?;
    let db = redb::Builder::new()
        .set_check_integrity_on_open(true)
        .open(scratch.path())
        .map_err(|e| open_error(path, format!("corrupt or truncated: {e}")))?;
    Ok((scratch, db))
}

/// Checks an existing file without ever writing to it, on a verified scratch copy.
fn check_existing(path: &Path, identity: Option<&[u8]>) -> Result<(), JournalError> {
    let (_scratch, db) = verified_copy(path)?;
    check_meta(&db, path, identity).map(|_| ())
}

impl RedbJournal {
    /// Opens (or creates) the journal file of the node named by `identity`.
    pub fn open(
        path: &Path,
        identity: &[u8],
        settings: JournalSettings,
    ) -> Result<RedbJournal, JournalError> {
        assert!(
            settings.batch_entries_max > 0 && settings.queue_capacity > 0,
            "validated settings"
        );
        let existed = path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
        if existed {
            check_existing(path, Some(identity))?;
        }
        let db = Database::create(path).map_err(|e| open_error(path, e))?;
        let last_seq = if existed {
            let last = check_meta(&db, path, Some(identity))?.unwrap_or(0);
            // Files written before snapshots existed lack their (empty) table.
            let txn = db.begin_write().map_err(|e| open_error(path, e))?;
            txn.open_table(SNAPSHOTS).map_err(|e| open_error(path, e))?;
            txn.commit().map_err(|e| open_error(path, e))?;
            last
        } else {
            let txn = db.begin_write().map_err(|e| open_error(path, e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| open_error(path, e))?;
                let init: [(&str, &[u8]); 3] = [
                    (META_VERSION, &FORMAT_VERSION.to_be_bytes()),
                    (META_IDENTITY, identity),
                    (META_LAST_SEQ, &0u64.to_be_bytes()),
                ];
                for (k, v) in init {
                    meta.insert(k, v).map_err(|e| open_error(path, e))?;
                }
                txn.open_table(ENTRIES).map_err(|e| open_error(path, e))?;
                txn.open_table(SNAPSHOTS).map_err(|e| open_error(path, e))?;
            }
            txn.commit().map_err(|e| open_error(path, e))?;
            0
        };
        let db = Arc::new(db);
        let (tx, rx) = sync_channel(settings.queue_capacity);
        let (durable_tx, durable_rx) = watch::channel(last_seq);
        let counters = Arc::new(Counters::default());
        let commit_delay_us = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, counters, file) = (db.clone(), counters.clone(), path.to_path_buf());
            let delay = commit_delay_us.clone();
            std::thread::Builder::new()
                .name("specie-journal".into())
                .spawn(move || write_loop(&db, &file, rx, durable_tx, &counters, settings, &delay))
                .map_err(|e| open_error(path, e))?
        };
        Ok(RedbJournal {
            path: path.to_path_buf(),
            db: parking_lot::RwLock::new(Some(db)),
            queue: Mutex::new((last_seq + 1, Some(tx))),
            durable: durable_rx,
            counters,
            writer: Mutex::new(Some(writer)),
            commit_delay_us,
        })
    }

    /// Makes every group commit from now on take `delay` longer (zero: back to normal): a
    /// slow disk, injected by a live `write_delay` fault rule. Nothing becomes durable, and so
    /// nothing a step announces leaves its actor, until the delayed commit is done.
    pub fn set_commit_delay(&self, delay: Duration) {
        self.commit_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Opens a journal file for reading only. The file itself is never written: its pages are
    /// verified on a scratch copy, and when it needs crash recovery the recovered copy is read
    /// instead.
    pub fn open_read_only(path: &Path) -> Result<ReadJournal, JournalError> {
        if !path.exists() {
            return Err(open_error(path, "no such file"));
        }
        let (scratch, repaired) = verified_copy(path)?;
        check_meta(&repaired, path, None)?;
        // Read the file itself when it was closed cleanly (its pages are verified now), else
        // the recovered copy.
        match ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(ReadJournal {
                path: path.to_path_buf(),
                db: ReadDb::ReadOnly(db),
                _scratch: None,
            }),
            Err(redb::DatabaseError::RepairAborted) => Ok(ReadJournal {
                path: path.to_path_buf(),
                db: ReadDb::Repaired(repaired),
                _scratch: Some(scratch),
            }),
            Err(e) => Err(open_error(path, format!("corrupt or truncated: {e}"))),
        }
    }

    /// Reads a value of the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        read_meta(self.db()?.as_ref(), &self.path, key)
    }

    /// Writes a value of the meta table (its own durable transaction).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let err = |e: &dyn std::fmt::Display| open_error(&self.path, e);
        let txn = self.db()?.begin_write().map_err(|e| err(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            meta.insert(key, value).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    /// Flushes what is queued and stops the writer. Later appends fail.
    pub fn close(&self) {
        self.queue.lock().1 = None;
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        // The writer is gone; dropping the last handle closes the file cleanly, so that the
        // next open needs no crash recovery.
        self.db.write().take();
    }

    fn db(&self) -> Result<Arc<Database>, JournalError> {
        self.db
            .read()
            .clone()
            .ok_or_else(|| JournalError::Stopped(format!("{} is closed", self.path.display())))
    }
}

impl Drop for RedbJournal {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_meta(
    db: &impl ReadableDatabase,
    path: &Path,
    key: &str,
) -> Result<Option<Vec<u8>>, JournalError> {
    let txn = db.begin_read().map_err(|e| open_error(path, e))?;
    let meta = txn.open_table(META).map_err(|e| open_error(path, e))?;
    let value = meta.get(key).map_err(|e| open_error(path, e))?;
    Ok(value.map(|g| g.value().to_vec()))
}

fn load_actor(
    db: &impl ReadableDatabase,
    path: &Path,
    actor: Address,
) -> Result<Vec<Bytes>, JournalError> {
    let txn = db.begin_read().map_err(|e| open_error(path, e))?;
    let table = txn.open_table(ENTRIES).map_err(|e| open_error(path, e))?;
    let prefix = actor_prefix(actor);
    let mut end = [0xffu8; 21];
    end[..9].copy_from_slice(&prefix);
    let mut start = [0u8; 21];
    start[..9].copy_from_slice(&prefix);
    let mut out = Vec::new();
    for item in table
        .range(&start[..]..=&end[..])
        .map_err(|e| open_error(path, e))?
    {
        let (key, value) = item.map_err(|e| open_error(path, e))?;
        if key.value().ends_with(&GROUP_INDEX.to_be_bytes()) {
            unframe(value.value(), &mut out).map_err(|why| {
                open_error(path, format!("corrupt group record of {actor}: {why}"))
            })?;
        } else {
            out.push(Bytes::copy_from_slice(value.value()));
        }
    }
    Ok(out)
}

/// The index in the key of a group record: several entries of one actor from one commit.
const GROUP_INDEX: u32 = u32::MAX;

/// Entries framed into one group record: each as a 4-byte big-endian length and its bytes.
fn frame(entries: &[&Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 4).sum());
    for entry in entries {
        let len = u32::try_from(entry.len()).expect("an entry is far below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    out
}

/// The entries of a group record, appended to `out` in order.
fn unframe(mut record: &[u8], out: &mut Vec<Bytes>) -> Result<(), String> {
    while !record.is_empty() {
        let Some((len, rest)) = record.split_first_chunk::<4>() else {
            return Err("a length cut short".into());
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("an entry of {len} bytes with {} left", rest.len()));
        }
        out.push(Bytes::copy_from_slice(&rest[..len]));
        record = &rest[len..];
    }
    Ok(())
}

fn load_snapshot(
    db: &impl ReadableDatabase,
    path: &Path,
    actor: Address,
) -> Result<Option<Bytes>, JournalError> {
    let txn = db.begin_read().map_err(|e| open_error(path, e))?;
    let table = txn.open_table(SNAPSHOTS).map_err(|e| open_error(path, e))?;
    let prefix = actor_prefix(actor);
    let value = table.get(&prefix[..]).map_err(|e| open_error(path, e))?;
    Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
}

fn list_actors(db: &impl ReadableDatabase, path: &Path) -> Result<Vec<Address>, JournalError> {
    let txn = db.begin_read().map_err(|e| open_error(path, e))?;
    let table = txn.open_table(ENTRIES).map_err(|e| open_error(path, e))?;
    let mut actors = Vec::new();
    let mut cursor = [0u8; 21];
    loop {
        let mut range = table
            .range(&cursor[..]..)
            .map_err(|e| open_error(path, e))?;
        let Some(item) = range.next() else { break };
        let (key, _) = item.map_err(|e| open_error(path, e))?;
        let key = key.value();
        let actor = actor_from_prefix(key).ok_or_else(|| open_error(path, "corrupt entry key"))?;
        actors.push(actor);
        // Skip to the first key after this actor's range.
        let mut next = [0xffu8; 21];
        next[..9].copy_from_slice(&key[..9]);
        cursor = next;
        // Increment the 21-byte key by one to step past the actor's last possible key.
        if let Some(pos) = cursor.iter().rposition(|b| *b != 0xff) {
            cursor[pos] += 1;
            for b in &mut cursor[pos + 1..] {
                *b = 0;
            }
        } else {
            break;
        }
    }
    // Actors whose every entry a snapshot covers.
    let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| open_error(path, e))?;
    for item in snapshots.iter().map_err(|e| open_error(path, e))? {
        let (key, _) = item.map_err(|e| open_error(path, e))?;
        let actor = actor_from_prefix(key.value())
            .ok_or_else(|| open_error(path, "corrupt snapshot key"))?;
        actors.push(actor);
    }
    actors.sort();
    actors.dedup();
    Ok(actors)
}

fn write_loop(
    db: &Database,
    path: &Path,
    rx: Receiver<Item>,
    durable: watch::Sender<u64>,
    counters: &Counters,
    settings: JournalSettings,
    commit_delay_us: &AtomicU64,
) {
    let wait = Duration::from_micros(settings.batch_wait_us);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut count = batch[0].entries.len();
        let deadline = Instant::now() + wait;
        while count < settings.batch_entries_max {
            // Take what is already queued; wait for more only until the deadline.
            match rx.try_recv() {
                Ok(item) => {
                    count += item.entries.len();
                    batch.push(item);
                }
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(item) => {
                            count += item.entries.len();
                            batch.push(item);
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        let last = batch.last().expect("non-empty batch").seq;
        let delay = commit_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            metrics::counter!("specie_fault_rule_hits_total", "fault" => "write_delay")
                .increment(1);
            std::thread::sleep(Duration::from_micros(delay));
        }
        let started = Instant::now();
        let result = (|| -> Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|e| e.to_string())?;
                // One record per actor per commit: an actor's single entry as it is, several
                // framed into one group record under the first one's sequence number (one
                // B-tree insert instead of one each), cut where a snapshot of the actor comes
                // in between. Records go in in key order (actor, then sequence): neighbouring
                // inserts land in the same B-tree pages. Snapshots follow, in queue order; the
                // result is the same as applying the items one by one, because a snapshot
                // only deletes its actor's records up to the sequence number it covers, and
                // covers every entry the actor appended before it.
                let mut groups: Vec<(Address, u64, Vec<&Bytes>)> = Vec::with_capacity(batch.len());
                let mut open: HashMap<Address, usize> = HashMap::new();
                for item in &batch {
                    if item.snapshot.is_some() {
                        open.remove(&item.actor);
                    }
                    if item.entries.is_empty() {
                        continue;
                    }
                    let at = *open.entry(item.actor).or_insert_with(|| {
                        groups.push((item.actor, item.seq, Vec::new()));
                        groups.len() - 1
                    });
                    groups[at].2.extend(item.entries.iter());
                }
                let mut records: Vec<([u8; 21], Vec<u8>)> = groups
                    .into_iter()
                    .map(|(actor, seq, entries)| match entries[..] {
                        [single] => (entry_key(actor, seq, 0), single.to_vec()),
                        _ => (entry_key(actor, seq, GROUP_INDEX), frame(&entries)),
                    })
                    .collect();
                records.sort_unstable_by_key(|(key, _)| *key);
                for (key, record) in &records {
                    table
                        .insert(&key[..], record.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                for item in &batch {
                    if let Some((checkpoint, covers)) = &item.snapshot {
                        let prefix = actor_prefix(item.actor);
                        snapshots
                            .insert(&prefix[..], checkpoint.as_ref())
                            .map_err(|e| e.to_string())?;
                        let start = entry_key(item.actor, 0, 0);
                        let end = entry_key(item.actor, *covers, u32::MAX);
                        table
                            .retain_in(&start[..]..=&end[..], |_, _| false)
                            .map_err(|e| e.to_string())?;
                    }
                }
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                meta.insert(META_LAST_SEQ, &last.to_be_bytes()[..])
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        let elapsed = started.elapsed();
        match result {
            Ok(()) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters.entries.fetch_add(count as u64, Ordering::Relaxed);
                counters
                    .commit_ns
                    .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
                metrics::histogram!("specie_journal_fsync_seconds").record(elapsed.as_secs_f64());
                durable.send_replace(last);
            }
            Err(why) => {
                // Nothing after this point can become durable: stop, and let waiters see it.
                eprintln!(
                    "{}: group commit failed: {why}; the journal stops",
                    path.display()
                );
                return;
            }
        }
    }
}

impl Journal for RedbJournal {
    fn append(&self, actor: Address, entries: Vec<Bytes>) -> Result<u64, JournalError> {
        let mut queue = self.queue.lock();
        let seq = queue.0;
        let sender = queue
            .1
            .as_ref()
            .ok_or_else(|| JournalError::Stopped("journal closed".into()))?;
        sender
            .send(Item {
                seq,
                actor,
                entries,
                snapshot: None,
            })
            .map_err(|_| {
                JournalError::Stopped(format!("{}: writer stopped", self.path.display()))
            })?;
        queue.0 += 1;
        Ok(seq)
    }

    fn snapshot(
        &self,
        actor: Address,
        checkpoint: Bytes,
        covers_seq: u64,
    ) -> Result<u64, JournalError> {
        let mut queue = self.queue.lock();
        let seq = queue.0;
        let sender = queue
            .1
            .as_ref()
            .ok_or_else(|| JournalError::Stopped("journal closed".into()))?;
        sender
            .send(Item {
                seq,
                actor,
                entries: Vec::new(),
                snapshot: Some((checkpoint, covers_seq)),
            })
            .map_err(|_| {
                JournalError::Stopped(format!("{}: writer stopped", self.path.display()))
            })?;
        queue.0 += 1;
        Ok(seq)
    }

    fn load_snapshot(&self, actor: Address) -> Result<Option<Bytes>, JournalError> {
        load_snapshot(self.db()?.as_ref(), &self.path, actor)
    }

    fn is_durable(&self, seq: u64) -> bool {
        *self.durable.borrow() >= seq
    }

    fn wait_durable(&self, seq: u64) -> Durable {
        let mut rx = self.durable.clone();
        let path = self.path.display().to_string();
        Box::pin(async move {
            rx.wait_for(|d| *d >= seq)
                .await
                .map(|_| ())
                .map_err(|_| JournalError::Stopped(format!("{path}: group commit failed")))
        })
    }

    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError> {
        load_actor(self.db()?.as_ref(), &self.path, actor)
    }

    fn actors(&self) -> Result<Vec<Address>, JournalError> {
        list_actors(self.db()?.as_ref(), &self.path)
    }

    fn stats(&self) -> JournalStats {
        let batches = self.counters.batches.load(Ordering::Relaxed);
        JournalStats {
            batches,
            entries: self.counters.entries.load(Ordering::Relaxed),
            fsyncs: batches,
            commit_seconds: self.counters.commit_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

enum ReadDb {
    ReadOnly(ReadOnlyDatabase),
    Repaired(Database),
}

/// A journal opened for reading (the offline audit).
pub struct ReadJournal {
    path: PathBuf,
    db: ReadDb,
    _scratch: Option<tempfile::NamedTempFile>,
}

impl std::fmt::Debug for ReadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReadJournal {
    /// Reads a value of the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        match &self.db {
            ReadDb::ReadOnly(db) => read_meta(db, &self.path, key),
            ReadDb::Repaired(db) => read_meta(db, &self.path, key),
        }
    }
}

impl Journal for ReadJournal {
    fn append(&self, actor: Address, _entries: Vec<Bytes>) -> Result<u64, JournalError> {
        Err(JournalError::Write {
            actor,
            why: format!("{} is open read-only", self.path.display()),
        })
    }

    fn is_durable(&self, _seq: u64) -> bool {
        true
    }

    fn wait_durable(&self, _seq: u64) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn load(&self, actor: Address) -> Result<Vec<Bytes>, JournalError> {
        match &self.db {
            ReadDb::ReadOnly(db) => load_actor(db, &self.path, actor),
            ReadDb::Repaired(db) => load_actor(db, &self.path, actor),
        }
    }

    fn snapshot(
        &self,
        actor: Address,
        _checkpoint: Bytes,
        _covers_seq: u64,
    ) -> Result<u64, JournalError> {
        Err(JournalError::Write {
            actor,
            why: format!("{} is open read-only", self.path.display()),
        })
    }

    fn load_snapshot(&self, actor: Address) -> Result<Option<Bytes>, JournalError> {
        match &self.db {
            ReadDb::ReadOnly(db) => load_snapshot(db, &self.path, actor),
            ReadDb::Repaired(db) => load_snapshot(db, &self.path, actor),
        }
    }

    fn actors(&self) -> Result<Vec<Address>, JournalError> {
        match &self.db {
            ReadDb::ReadOnly(db) => list_actors(db, &self.path),
            ReadDb::Repaired(db) => list_actors(db, &self.path),
        }
    }

    fn stats(&self) -> JournalStats {
        JournalStats::default()
    }
}
