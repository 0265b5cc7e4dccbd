//! The durable journal on disk: group commits from many threads, reload in order after a
//! reopen, and the refusals that protect a file — another node's, another format version's, a
//! corrupt or truncated one — each an error naming the file and the problem, with the file's
//! bytes untouched. The read-only opening used by the offline audit never writes, even to a
//! file that was not closed cleanly.

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_protocol::{Address, InstitutionId, WalletId};
use specie_runtime::redb_journal::FORMAT_VERSION;
use specie_runtime::{Journal, JournalError, JournalSettings, RedbJournal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Appending threads in the group-commit test.
const THREADS: u64 = 8;
/// Appends per thread in the group-commit test.
const APPENDS_PER_THREAD: u64 = 150;

fn settings() -> JournalSettings {
    JournalSettings {
        batch_entries_max: 4096,
        // Long enough that queued appends from other threads join the batch.
        batch_wait_us: 2_000,
        queue_capacity: 8192,
        snapshot_entries_min: 1_000_000,
    }
}

/// The bytes of entry `i` of thread `t`: unique, so reordering or loss shows.
fn entry(t: u64, i: u64) -> Bytes {
    Bytes::from(format!("thread {t} entry {i}"))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// A journal file in a fresh temporary directory, with a few entries of two actors, closed.
fn written_journal(identity: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let journal = RedbJournal::open(&path, identity, settings()).expect("create journal");
    let mut last = 0;
    for i in 0..50u64 {
        last = journal
            .append(Address::Wallet(WalletId(1)), vec![entry(1, i)])
            .expect("append");
        last = last.max(
            journal
                .append(Address::CentralBank, vec![entry(0, i), entry(0, i + 1000)])
                .expect("append"),
        );
    }
    block_on(journal.wait_durable(last)).expect("durable");
    journal.close();
    drop(journal);
    (dir, path)
}

/// The error's message, for a `Result` that must be an `Open` error.
fn open_error<T: std::fmt::Debug>(result: Result<T, JournalError>) -> String {
    match result {
        Err(e @ JournalError::Open { .. }) => e.to_string(),
        other => panic!("expected an Open error, got {other:?}"),
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

#[test]
fn appends_from_many_threads_are_group_committed_and_reload_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let journal =
        Arc::new(RedbJournal::open(&path, b"node-a", settings()).expect("create journal"));

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                (0..APPENDS_PER_THREAD)
                    .map(|i| {
                        journal
                            .append(Address::Wallet(WalletId(t)), vec![entry(t, i)])
                            .expect("append")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let seqs: Vec<Vec<u64>> = threads
        .into_iter()
        .map(|h| h.join().expect("appender"))
        .collect();

    // Sequence numbers are handed out once each, 1..=N, increasing within each thread.
    let total = THREADS * APPENDS_PER_THREAD;
    let mut all: Vec<u64> = seqs.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    for per_thread in &seqs {
        assert!(
            per_thread.windows(2).all(|w| w[0] < w[1]),
            "a thread's appends are numbered in order"
        );
    }

    block_on(journal.wait_durable(total)).expect("everything becomes durable");
    for seq in [1, total / 2, total] {
        assert!(
            journal.is_durable(seq),
            "sequence {seq} is durable after wait_durable({total})"
        );
    }
    let stats = journal.stats();
    assert_eq!(stats.entries, total, "every entry is counted once");
    assert!(
        stats.batches < total,
        "appends queued together share a group commit: {} batches for {total} appends",
        stats.batches
    );
    assert_eq!(stats.fsyncs, stats.batches, "one fsync per group commit");

    journal.set_meta("seed", b"42").expect("set meta");
    journal.close();
    assert!(
        matches!(
            journal.append(Address::CentralBank, vec![entry(9, 9)]),
            Err(JournalError::Stopped(_))
        ),
        "a closed journal refuses appends"
    );
    drop(journal);

    // Reopened: every actor's entries, in the order they were appended, and the meta value.
    let journal = RedbJournal::open(&path, b"node-a", settings()).expect("reopen journal");
    let expected_actors: Vec<Address> =
        (0..THREADS).map(|t| Address::Wallet(WalletId(t))).collect();
    assert_eq!(journal.actors().expect("actors"), expected_actors);
    for t in 0..THREADS {
        let loaded = journal.load(Address::Wallet(WalletId(t))).expect("load");
        let expected: Vec<Bytes> = (0..APPENDS_PER_THREAD).map(|i| entry(t, i)).collect();
        assert_eq!(
            loaded, expected,
            "entries of wallet {t} reload in append order"
        );
    }
    assert_eq!(journal.meta("seed").expect("meta"), Some(b"42".to_vec()));
    assert!(
        journal.is_durable(total),
        "what was durable before the reopen still is"
    );

    // Numbering continues after the reopen, so new entries sort after the old ones.
    let seq = journal
        .append(
            Address::Wallet(WalletId(0)),
            vec![entry(0, APPENDS_PER_THREAD)],
        )
        .expect("append after reopen");
    assert_eq!(
        seq,
        total + 1,
        "sequence numbers continue from the file's last one"
    );
    let other = Address::Institution(InstitutionId(3));
    let seq = journal
        .append(other, vec![entry(100, 0), entry(100, 1)])
        .expect("append");
    block_on(journal.wait_durable(seq)).expect("durable");
    journal.close();
    drop(journal);

    let journal = RedbJournal::open(&path, b"node-a", settings()).expect("reopen again");
    let loaded = journal.load(Address::Wallet(WalletId(0))).expect("load");
    assert_eq!(loaded.len() as u64, APPENDS_PER_THREAD + 1);
    assert_eq!(
        loaded.last(),
        Some(&entry(0, APPENDS_PER_THREAD)),
        "the new entry comes last"
    );
    assert_eq!(
        journal.load(other).expect("load"),
        vec![entry(100, 0), entry(100, 1)]
    );
    let actors = journal.actors().expect("actors");
    assert_eq!(actors.len() as u64, THREADS + 1);
    assert!(actors.contains(&other));
    assert!(
        journal.load(Address::CentralBank).expect("load").is_empty(),
        "an actor without entries has none"
    );
}

#[test]
fn another_nodes_file_is_refused_by_name_and_left_untouched() {
    let (_dir, path) = written_journal(b"node-a");
    let before = read(&path);
    let message = open_error(RedbJournal::open(&path, b"node-b", settings()));
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains("node-a") && message.contains("node-b"),
        "names both identities: {message}"
    );
    assert_eq!(read(&path), before, "the file is unchanged");

    // Its owner still opens it, with everything in place.
    let journal = RedbJournal::open(&path, b"node-a", settings()).expect("owner reopens");
    assert_eq!(
        journal
            .load(Address::Wallet(WalletId(1)))
            .expect("load")
            .len(),
        50
    );
}

#[test]
fn another_format_version_is_refused_naming_both_versions_and_left_untouched() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let (_dir, path) = written_journal(b"node-a");
    {
        let db = redb::Database::open(&path).expect("open with redb");
        let txn = db.begin_write().expect("write txn");
        {
            let mut meta = txn.open_table(META).expect("meta table");
            meta.insert("format_version", &99u32.to_be_bytes()[..])
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let before = read(&path);

    let message = open_error(RedbJournal::open(&path, b"node-a", settings()));
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains("version 99"),
        "names the file's version: {message}"
    );
    assert!(
        message.contains(&format!("version {FORMAT_VERSION}")),
        "names this build's version: {message}"
    );
    assert_eq!(read(&path), before, "open left the file unchanged");

    let message = open_error(RedbJournal::open_read_only(&path));
    assert!(
        message.contains("version 99"),
        "read-only open refuses it too: {message}"
    );
    assert_eq!(
        read(&path),
        before,
        "read-only open left the file unchanged"
    );
}

#[test]
fn a_file_of_random_bytes_is_refused_as_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let mut bytes = vec![0u8; 64 * 1024];
    ChaCha8Rng::seed_from_u64(4).fill_bytes(&mut bytes);
    std::fs::write(&path, &bytes).expect("write random file");

    let message = open_error(RedbJournal::open(&path, b"node-a", settings()));
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains("corrupt") || message.contains("truncated"),
        "says what is wrong: {message}"
    );
    assert_eq!(read(&path), bytes, "open left the file unchanged");

    let message = open_error(RedbJournal::open_read_only(&path));
    assert!(
        message.contains("corrupt") || message.contains("truncated"),
        "says what is wrong: {message}"
    );
    assert_eq!(read(&path), bytes, "read-only open left the file unchanged");
}

#[test]
fn a_journal_with_bytes_overwritten_in_the_middle_is_refused_and_left_untouched() {
    let (_dir, path) = written_journal(b"node-a");
    let mut bytes = read(&path);
    // Flip every byte of the middle half: pages in use lie there, whatever the layout.
    let (from, to) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for b in &mut bytes[from..to] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("corrupt the file");

    let message = open_error(RedbJournal::open(&path, b"node-a", settings()));
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(message.contains("corrupt"), "says what is wrong: {message}");
    assert_eq!(read(&path), bytes, "open left the file unchanged");

    let message = open_error(RedbJournal::open_read_only(&path));
    assert!(message.contains("corrupt"), "read-only: {message}");
    assert_eq!(read(&path), bytes, "read-only open left the file unchanged");
}

#[test]
fn a_truncated_journal_is_refused_and_left_untouched() {
    let (_dir, path) = written_journal(b"node-a");
    let full = read(&path);
    // Cut inside the header region, and cut the file in half.
    for keep in [300, full.len() / 2] {
        std::fs::write(&path, &full[..keep]).expect("truncate");
        let message = open_error(RedbJournal::open(&path, b"node-a", settings()));
        assert!(
            message.contains(&path.display().to_string()),
            "names the file: {message}"
        );
        assert!(
            message.contains("corrupt") || message.contains("truncated"),
            "kept {keep} of {} bytes; says what is wrong: {message}",
            full.len()
        );
        assert_eq!(
            read(&path),
            &full[..keep],
            "open left the truncated file unchanged"
        );

        let message = open_error(RedbJournal::open_read_only(&path));
        assert!(
            message.contains("corrupt") || message.contains("truncated"),
            "read-only: {message}"
        );
        assert_eq!(
            read(&path),
            &full[..keep],
            "read-only open left the truncated file unchanged"
        );
    }
}

#[test]
fn a_missing_file_is_an_error_for_the_read_only_opening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let message = open_error(RedbJournal::open_read_only(&path));
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(!path.exists(), "the read-only opening creates nothing");
}

#[test]
fn read_only_opening_never_writes_even_to_a_file_left_unclean() {
    // A clean file.
    let (dir, path) = written_journal(b"node-a");
    let before = read(&path);
    {
        let journal = RedbJournal::open_read_only(&path).expect("read-only open");
        assert_eq!(
            journal.actors().expect("actors"),
            vec![Address::CentralBank, Address::Wallet(WalletId(1))]
        );
        assert_eq!(journal.load(Address::CentralBank).expect("load").len(), 100);
        assert!(
            journal
                .append(Address::CentralBank, vec![entry(0, 0)])
                .is_err(),
            "read-only refuses appends"
        );
    }
    assert_eq!(read(&path), before, "a clean file is unchanged");

    // A file left unclean: a copy of the journal taken while it is still open, as a kill -9
    // would leave it after the last group commit.
    let unclean = dir.path().join("unclean.redb");
    let journal = RedbJournal::open(&path, b"node-a", settings()).expect("reopen");
    let seq = journal
        .append(Address::Wallet(WalletId(2)), vec![entry(2, 0), entry(2, 1)])
        .expect("append");
    block_on(journal.wait_durable(seq)).expect("durable");
    std::fs::copy(&path, &unclean).expect("copy the open file");
    journal.close();
    drop(journal);

    let unclean_before = read(&unclean);
    {
        let reader =
            RedbJournal::open_read_only(&unclean).expect("read-only open of an unclean file");
        assert_eq!(
            reader.load(Address::Wallet(WalletId(2))).expect("load"),
            vec![entry(2, 0), entry(2, 1)],
            "the last durable group commit is there"
        );
        assert_eq!(
            reader
                .load(Address::Wallet(WalletId(1)))
                .expect("load")
                .len(),
            50
        );
    }
    assert_eq!(
        read(&unclean),
        unclean_before,
        "read-only open left the unclean file unchanged"
    );

    // Opening it for writing recovers it and keeps everything.
    let journal = RedbJournal::open(&unclean, b"node-a", settings()).expect("recovering open");
    assert_eq!(
        journal
            .load(Address::Wallet(WalletId(2)))
            .expect("load")
            .len(),
        2
    );
    assert_eq!(journal.load(Address::CentralBank).expect("load").len(), 100);
}

/// An actor's entries of one group commit are stored as one record; a snapshot in between cuts
/// the record, so what the snapshot covers goes and what came after it stays, after a reopen
/// too.
#[test]
fn entries_grouped_in_one_commit_reload_one_by_one_and_a_snapshot_between_them_cuts_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let held = JournalSettings {
        // Everything appended within half a second shares one commit.
        batch_wait_us: 500_000,
        ..settings()
    };
    let wallet = Address::Wallet(WalletId(3));
    let other = Address::Wallet(WalletId(4));
    {
        let journal = RedbJournal::open(&path, b"node", held).expect("create journal");
        journal.append(wallet, vec![entry(0, 0)]).expect("append");
        journal.append(other, vec![entry(9, 0)]).expect("append");
        let covered = journal
            .append(wallet, vec![entry(0, 1), entry(0, 2)])
            .expect("append");
        journal
            .snapshot(wallet, Bytes::from_static(b"state after entry 2"), covered)
            .expect("snapshot");
        journal.append(wallet, vec![entry(0, 3)]).expect("append");
        let last = journal.append(wallet, vec![entry(0, 4)]).expect("append");
        journal.append(other, vec![entry(9, 1)]).expect("append");
        block_on(journal.wait_durable(last + 1)).expect("durable");
        assert_eq!(journal.stats().batches, 1, "one group commit");
        assert_eq!(
            journal.load(wallet).expect("load"),
            vec![entry(0, 3), entry(0, 4)]
        );
        journal.close();
    }
    let journal = RedbJournal::open(&path, b"node", settings()).expect("reopen");
    assert_eq!(
        journal.load(wallet).expect("load"),
        vec![entry(0, 3), entry(0, 4)],
        "the covered entries went with the snapshot, the later ones stayed"
    );
    assert_eq!(
        journal.load_snapshot(wallet).expect("snapshot"),
        Some(Bytes::from_static(b"state after entry 2"))
    );
    assert_eq!(
        journal.load(other).expect("load"),
        vec![entry(9, 0), entry(9, 1)]
    );
}
