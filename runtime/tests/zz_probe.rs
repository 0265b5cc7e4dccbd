//! probe
use specie_runtime::{Journal, JournalSettings, RedbJournal};
use specie_protocol::{Address, WalletId};
#[test]
fn probe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let s = JournalSettings { batch_entries_max: 100, batch_wait_us: 100, queue_capacity: 100, snapshot_entries_min: 100 };
    let j = RedbJournal::open(&path, b"a", s).unwrap();
    let mut last = 0;
    for i in 0..2000u64 { last = j.append(Address::Wallet(WalletId(i % 50)), vec![bytes::Bytes::from(vec![7u8; 100])]).unwrap(); }
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(j.wait_durable(last)).unwrap();
    let copy = dir.path().join("c.redb");
    std::fs::copy(&path, &copy).unwrap();
    drop(j);
    let full = std::fs::read(&path).unwrap();
    let unclean = std::fs::read(&copy).unwrap();
    eprintln!("len {}", full.len());
    for (name, base) in [("clean", &full), ("unclean", &unclean)] {
    for frac in [0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95] {
        let mut b = base.clone();
        let at = (b.len() as f64 * frac) as usize;
        for x in &mut b[at..at + 64] { *x ^= 0x5A; }
        let scratch = dir.path().join("s.redb");
        std::fs::write(&scratch, &b).unwrap();
        let r = redb::Builder::new().set_check_integrity_on_open(true).open(&scratch);
        eprintln!("{name} frac {frac}: {:?}", r.as_ref().err());
    }
    }
}
