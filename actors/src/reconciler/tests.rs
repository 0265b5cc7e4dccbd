//! The reconciler driven without a runtime: the platform and institutions as plain state
//! machines, a wire that carries encoded envelopes (and can drop, duplicate and reorder
//! them), and virtual time for the retry timers.

use super::sample::{plant, records};
use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_protocol::reconcile::{BatchId, InconsistencyKind, RecordId, TransactionRecord};
use specie_protocol::{Address, Envelope, InstitutionId, RECONCILIATION_PLATFORM};
use specie_runtime::{Effects, StateMachine};
use std::collections::{BTreeMap, VecDeque};

/// Steps after which a simulation that has not gone quiet is a bug.
const SIM_STEPS_MAX: usize = 200_000;

/// What the wire does to each envelope: how many copies arrive (0 drops it).
type Fault = Box<dyn FnMut(&Envelope, &mut ChaCha8Rng) -> usize>;

struct Sim {
    machines: BTreeMap<Address, Reconciler>,
    /// Every machine's events, to check that replaying them rebuilds the state.
    journals: BTreeMap<Address, Vec<ReconcilerEvent>>,
    wire: VecDeque<Vec<u8>>,
    timers: Vec<(u64, Address, ReconcilerTimer)>,
    now_ms: u64,
    rng: ChaCha8Rng,
    fault: Fault,
    /// Shuffle deliveries instead of delivering in order.
    reorder: bool,
    sent: u64,
}

fn limits() -> ReconcilerLimits {
    ReconcilerLimits {
        retry_interval_ms: 10,
        retry_interval_max_ms: 80,
        ..ReconcilerLimits::default()
    }
}

fn platform() -> Address {
    Address::Reconciler(RECONCILIATION_PLATFORM)
}

fn key(institution: u32, batch: u64) -> BatchKey {
    BatchKey {
        institution: InstitutionId(institution),
        batch_id: BatchId(batch),
    }
}

impl Sim {
    fn new(institutions: u32, seed: u64) -> Sim {
        let mut machines = BTreeMap::new();
        machines.insert(platform(), Reconciler::platform(limits()));
        for i in 0..institutions {
            let r = Reconciler::institution(InstitutionId(i), limits());
            machines.insert(r.address(), r);
        }
        let mut sim = Sim {
            journals: machines.keys().map(|a| (*a, Vec::new())).collect(),
            machines,
            wire: VecDeque::new(),
            timers: Vec::new(),
            now_ms: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            fault: Box::new(|_, _| 1),
            reorder: false,
            sent: 0,
        };
        let addresses: Vec<Address> = sim.machines.keys().copied().collect();
        for a in addresses {
            let mut out = Effects::default();
            let now = sim.now_ms;
            sim.machines.get_mut(&a).unwrap().on_start(now, &mut out);
            sim.perform(a, out);
        }
        sim
    }

    fn perform(&mut self, at: Address, out: Effects<ReconcilerEvent, ReconcilerTimer>) {
        self.journals.get_mut(&at).unwrap().extend(out.events);
        for envelope in out.sends {
            self.sent += 1;
            let copies = (self.fault)(&envelope, &mut self.rng);
            let bytes = envelope.encode().to_vec();
            for _ in 0..copies {
                self.wire.push_back(bytes.clone());
            }
        }
        for (delay, timer) in out.timers {
            self.timers.push((self.now_ms + delay, at, timer));
        }
    }

    fn load(&mut self, at: Address, batch: Batch) {
        let mut out = Effects::default();
        let now = self.now_ms;
        self.machines.get_mut(&at).unwrap().on_command(
            ReconcilerCommand::LoadBatch(batch),
            now,
            &mut out,
        );
        self.perform(at, out);
    }

    /// Delivers and fires timers until nothing is left to do.
    fn run(&mut self) {
        for _ in 0..SIM_STEPS_MAX {
            let next = if self.reorder && !self.wire.is_empty() {
                let i = self.rng.gen_range(0..self.wire.len());
                self.wire.remove(i)
            } else {
                self.wire.pop_front()
            };
            let mut out = Effects::default();
            let now = self.now_ms;
            let at = if let Some(bytes) = next {
                let envelope = Envelope::decode(&bytes).expect("the wire does not corrupt");
                let at = envelope.to;
                self.machines
                    .get_mut(&at)
                    .unwrap()
                    .on_envelope(envelope, now, &mut out);
                at
            } else if !self.timers.is_empty() {
                let i = (0..self.timers.len())
                    .min_by_key(|i| self.timers[*i].0)
                    .unwrap();
                let (due, at, timer) = self.timers.swap_remove(i);
                self.now_ms = self.now_ms.max(due);
                let now = self.now_ms;
                self.machines
                    .get_mut(&at)
                    .unwrap()
                    .on_timer(timer, now, &mut out);
                at
            } else {
                return;
            };
            self.perform(at, out);
        }
        panic!("the simulation did not go quiet in {SIM_STEPS_MAX} steps");
    }

    fn snapshot(&self, at: Address) -> ReconcilerSnapshot {
        self.machines[&at].snapshot()
    }

    /// Rebuilds a machine from its journal, as a restart would.
    fn replayed(&self, at: Address) -> Reconciler {
        let mut r = match at {
            Address::Reconciler(RECONCILIATION_PLATFORM) => Reconciler::platform(limits()),
            Address::Reconciler(i) => Reconciler::institution(InstitutionId(i as u32), limits()),
            other => panic!("not a reconciler: {other}"),
        };
        for e in &self.journals[&at] {
            r.apply(e);
        }
        r
    }
}

/// Loads `platform_records` at the platform and `institution_records` at institution 0 as
/// batch 1, reconciles, and returns the platform's and the institution's status.
fn reconcile(
    sim: &mut Sim,
    platform_records: Vec<TransactionRecord>,
    institution_records: Vec<TransactionRecord>,
) -> (BatchStatus, BatchStatus) {
    let k = key(0, 1);
    sim.load(platform(), Batch::new(k, platform_records).unwrap());
    sim.load(
        Address::Reconciler(0),
        Batch::new(k, institution_records).unwrap(),
    );
    sim.run();
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    let i = sim
        .snapshot(Address::Reconciler(0))
        .batch(k)
        .unwrap()
        .clone();
    assert_eq!(p.progress, Progress::Done, "platform: {p:?}");
    assert_eq!(i.progress, Progress::Done, "institution: {i:?}");
    (p, i)
}

fn found(status: &BatchStatus) -> BTreeMap<RecordId, InconsistencyKind> {
    status
        .findings
        .iter()
        .map(|f| (f.record_id, f.kind))
        .collect()
}

#[test]
fn honest_sides_agree_with_one_comparison_per_batch() {
    let mut sim = Sim::new(1, 1);
    let rs = records(1, 2000);
    let (p, i) = reconcile(&mut sim, rs.clone(), rs);
    let report = p.report.clone().unwrap();
    assert!(report.agreed());
    assert_eq!(report.hashes_compared(), 1);
    assert_eq!(p.counts.shard.compared + p.counts.record.compared, 0);
    assert_eq!(i.report, Some(report));
    // Post, ack, report, report ack: no drill-down at all.
    assert_eq!(sim.sent, 4);
    // Both posts are on the chain, which verifies.
    let chain = sim.snapshot(platform()).chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].batch_hash, chain[1].batch_hash);
    let anchor = i.posted.unwrap();
    assert_eq!(
        verify_anchored(&chain, anchor.height, anchor.block_hash),
        Ok(())
    );
}

#[test]
fn each_kind_of_difference_is_found_exactly() {
    let rs = records(2, 500);
    for kind in [
        InconsistencyKind::Missing,
        InconsistencyKind::Extra,
        InconsistencyKind::Altered,
    ] {
        let mut theirs = rs.clone();
        let target = match kind {
            InconsistencyKind::Missing => theirs.remove(100).id,
            InconsistencyKind::Extra => {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let extra = sample::record(&mut rng, RecordId(10_000));
                theirs.push(extra);
                RecordId(10_000)
            }
            InconsistencyKind::Altered => {
                theirs[250].amount.0 += 1;
                theirs[250].id
            }
        };
        let mut sim = Sim::new(1, 2);
        let (p, i) = reconcile(&mut sim, rs.clone(), theirs.clone());
        assert_eq!(found(&p), BTreeMap::from([(target, kind)]), "{kind}");
        assert_eq!(found(&i), found(&p), "both sides are told");
        // The facts: each side's version of the record, as known at the institution.
        let f = &i.findings[0];
        let original = rs.iter().find(|r| r.id == target);
        let changed = theirs.iter().find(|r| r.id == target);
        assert_eq!(f.platform.as_ref(), original);
        assert_eq!(f.institution.as_ref(), changed);
        assert_eq!(f.shard, shard_of(target));
        // One batch, at most F per tree level, the records of one shard.
        let c = p.counts;
        assert_eq!(c.batch.compared, 1);
        assert_eq!(c.shard.compared, u64::from(SHARD_FANOUT * SHARD_TREE_DEPTH));
        assert_eq!(c.shard.unequal, u64::from(SHARD_TREE_DEPTH));
        assert!(c.record.compared <= 8, "{c:?}");
        assert_eq!(c.record.unequal, 1);
    }
}

#[test]
fn many_differences_in_one_shard_are_all_found() {
    let rs = records(3, 40_000);
    let mut sizes = BTreeMap::<u32, usize>::new();
    for r in &rs {
        *sizes.entry(shard_of(r.id)).or_default() += 1;
    }
    let shard = *sizes.iter().max_by_key(|(_, n)| **n).unwrap().0;
    let same_shard: Vec<RecordId> = rs
        .iter()
        .map(|r| r.id)
        .filter(|id| shard_of(*id) == shard)
        .collect();
    assert!(
        same_shard.len() >= 6,
        "40000 records put several in each shard"
    );
    let mut theirs: BTreeMap<RecordId, TransactionRecord> =
        rs.iter().map(|r| (r.id, r.clone())).collect();
    let mut planted = BTreeMap::new();
    for (n, id) in same_shard.iter().take(6).enumerate() {
        if n % 2 == 0 {
            theirs.remove(id);
            planted.insert(*id, InconsistencyKind::Missing);
        } else {
            theirs.get_mut(id).unwrap().payee.0 += 1;
            planted.insert(*id, InconsistencyKind::Altered);
        }
    }
    let mut sim = Sim::new(1, 3);
    let (p, i) = reconcile(&mut sim, rs, theirs.into_values().collect());
    assert_eq!(found(&p), planted);
    assert_eq!(found(&i), planted);
    assert_eq!(
        p.counts.shard.unequal,
        u64::from(SHARD_TREE_DEPTH),
        "one path down the tree"
    );
    assert_eq!(p.counts.record.unequal, 6);
}

#[test]
fn differences_across_many_shards_are_all_found() {
    let rs = records(4, 3000);
    let planted = plant(&rs, 60, 4);
    let mut sim = Sim::new(1, 4);
    let (p, i) = reconcile(&mut sim, rs, planted.records);
    assert_eq!(found(&p), planted.planted);
    assert_eq!(found(&i), planted.planted);
    let shards: std::collections::BTreeSet<u32> = p.findings.iter().map(|f| f.shard).collect();
    assert!(shards.len() > 40, "spread over {} shards", shards.len());
}

#[test]
fn a_batch_that_differs_everywhere_reports_a_bounded_list_and_the_total() {
    let rs = records(5, REPORT_LIST_PROBE);
    let mut sim = Sim::new(1, 5);
    let (p, i) = reconcile(&mut sim, rs, Vec::new());
    assert_eq!(
        p.findings.len(),
        REPORT_LIST_PROBE,
        "the platform keeps every finding"
    );
    assert!(p
        .findings
        .iter()
        .all(|f| f.kind == InconsistencyKind::Missing));
    let report = i.report.unwrap();
    assert_eq!(report.inconsistent_total, REPORT_LIST_PROBE as u64);
    assert_eq!(
        report.inconsistencies.len(),
        specie_protocol::reconcile::REPORT_INCONSISTENCIES_MAX
    );
}

/// More records than a report lists.
const REPORT_LIST_PROBE: usize = specie_protocol::reconcile::REPORT_INCONSISTENCIES_MAX + 100;

#[test]
fn dropped_duplicated_and_reordered_messages_reach_the_same_result() {
    let rs = records(6, 5000);
    let planted = plant(&rs, 12, 6);
    let mut clean = Sim::new(1, 6);
    let (expected, _) = reconcile(&mut clean, rs.clone(), planted.records.clone());
    for seed in 0..8 {
        let mut sim = Sim::new(1, seed);
        sim.reorder = true;
        // A third of the envelopes lost, a third delivered twice.
        sim.fault = Box::new(|_, rng| rng.gen_range(0..3));
        let (p, i) = reconcile(&mut sim, rs.clone(), planted.records.clone());
        assert_eq!(found(&p), planted.planted, "seed {seed}");
        assert_eq!(found(&i), planted.planted, "seed {seed}");
        assert_eq!(
            p.counts, expected.counts,
            "seed {seed}: the same comparisons"
        );
        assert_eq!(p.report, expected.report, "seed {seed}");
        assert_eq!(
            sim.snapshot(platform()).chain.len(),
            2,
            "one block per post, however often sent"
        );
    }
}

#[test]
fn replaying_the_journal_rebuilds_every_reconciler() {
    let rs = records(7, 1000);
    let planted = plant(&rs, 9, 7);
    let mut sim = Sim::new(1, 7);
    reconcile(&mut sim, rs, planted.records);
    for at in [platform(), Address::Reconciler(0)] {
        assert_eq!(sim.replayed(at).snapshot(), sim.snapshot(at), "{at}");
    }
}

#[test]
fn a_platform_restarted_mid_drill_down_finishes_the_work() {
    let rs = records(8, 2000);
    let planted = plant(&rs, 5, 8);
    let k = key(0, 1);
    let mut sim = Sim::new(1, 8);
    // Everything the platform sends is lost until the restart.
    sim.fault = Box::new(|e, _| usize::from(e.from != platform()));
    sim.load(platform(), Batch::new(k, rs).unwrap());
    sim.load(
        Address::Reconciler(0),
        Batch::new(k, planted.records).unwrap(),
    );
    sim.run_until(|s| {
        matches!(
            s.snapshot(platform()).batch(k).unwrap().progress,
            Progress::Shards { .. }
        )
    });
    // Restart: memory and timers gone, state rebuilt from the journal.
    let restarted = sim.replayed(platform());
    sim.machines.insert(platform(), restarted);
    sim.timers.retain(|(_, at, _)| *at != platform());
    sim.fault = Box::new(|_, _| 1);
    let mut out = Effects::default();
    sim.machines
        .get_mut(&platform())
        .unwrap()
        .on_start(0, &mut out);
    sim.perform(platform(), out);
    sim.run();
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    assert_eq!(p.progress, Progress::Done);
    assert_eq!(found(&p), planted.planted);
}

impl Sim {
    /// Runs until `done` holds (checked after every step).
    fn run_until(&mut self, done: impl Fn(&Sim) -> bool) {
        for _ in 0..SIM_STEPS_MAX {
            if done(self) {
                return;
            }
            let next = self.wire.pop_front();
            let mut out = Effects::default();
            let at = if let Some(bytes) = next {
                let envelope = Envelope::decode(&bytes).unwrap();
                let at = envelope.to;
                self.machines
                    .get_mut(&at)
                    .unwrap()
                    .on_envelope(envelope, self.now_ms, &mut out);
                at
            } else if let Some(i) = (0..self.timers.len()).min_by_key(|i| self.timers[*i].0) {
                let (due, at, timer) = self.timers.swap_remove(i);
                self.now_ms = self.now_ms.max(due);
                self.machines
                    .get_mut(&at)
                    .unwrap()
                    .on_timer(timer, self.now_ms, &mut out);
                at
            } else {
                panic!("went quiet before the condition held");
            };
            self.perform(at, out);
        }
        panic!("the condition did not hold in {SIM_STEPS_MAX} steps");
    }
}

#[test]
fn a_batch_id_reused_with_other_records_is_refused() {
    let rs = records(9, 100);
    let k = key(0, 1);
    let mut sim = Sim::new(1, 9);
    sim.load(Address::Reconciler(0), Batch::new(k, rs.clone()).unwrap());
    let journal = sim.journals[&Address::Reconciler(0)].len();
    sim.load(
        Address::Reconciler(0),
        Batch::new(k, rs[1..].to_vec()).unwrap(),
    );
    sim.load(Address::Reconciler(0), Batch::new(k, rs.clone()).unwrap());
    assert_eq!(
        sim.journals[&Address::Reconciler(0)].len(),
        journal,
        "nothing recorded"
    );
    // An institution's reconciler refuses another institution's batch.
    sim.load(Address::Reconciler(0), Batch::new(key(1, 1), rs).unwrap());
    assert_eq!(sim.journals[&Address::Reconciler(0)].len(), journal);
}

#[test]
fn several_institutions_and_batches_are_reconciled_independently() {
    let mut sim = Sim::new(3, 10);
    let mut expected = BTreeMap::new();
    for inst in 0..3u32 {
        for batch in 0..2u64 {
            let k = key(inst, batch);
            let rs = records(u64::from(inst) * 10 + batch, 300);
            let planted = plant(&rs, (inst as usize) * 2 + batch as usize, batch);
            sim.load(platform(), Batch::new(k, rs).unwrap());
            sim.load(
                Address::Reconciler(u64::from(inst)),
                Batch::new(k, planted.records).unwrap(),
            );
            expected.insert(k, planted.planted);
        }
    }
    sim.run();
    let platform_view = sim.snapshot(platform());
    assert_eq!(platform_view.chain.len(), 12);
    assert_eq!(verify_blocks(&platform_view.chain), Ok(()));
    for (k, planted) in expected {
        let p = platform_view.batch(k).unwrap();
        assert_eq!(found(p), planted, "{k}");
        let i = sim.snapshot(Address::Reconciler(u64::from(k.institution.0)));
        assert_eq!(found(i.batch(k).unwrap()), planted, "{k}");
        assert_eq!(p.report.as_ref().unwrap().agreed(), planted.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_batches_with_random_plants_find_exactly_the_plants(
        ids in proptest::collection::btree_set(any::<u64>().prop_map(|i| i >> 1), 0..400),
        plants in 0usize..25,
        seed in any::<u64>(),
        lossy in any::<bool>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rs: Vec<TransactionRecord> =
            ids.iter().map(|id| sample::record(&mut rng, RecordId(*id))).collect();
        let planted = plant(&rs, plants, seed);
        let mut sim = Sim::new(1, seed);
        if lossy {
            sim.reorder = true;
            sim.fault = Box::new(|_, rng| rng.gen_range(0..3));
        }
        let (p, i) = reconcile(&mut sim, rs, planted.records);
        prop_assert_eq!(found(&p), planted.planted.clone());
        prop_assert_eq!(found(&i), planted.planted.clone());
        prop_assert_eq!(p.report.unwrap().agreed(), planted.planted.is_empty());
        // Comparisons grow with the differences: at most F per tree level per difference.
        let k = planted.planted.len() as u64;
        let fanout = u64::from(SHARD_FANOUT);
        prop_assert!(p.counts.shard.compared <= fanout * (1 + k * u64::from(SHARD_TREE_DEPTH - 1)));
    }
}

impl Sim {
    fn command(&mut self, at: Address, command: ReconcilerCommand) {
        let mut out = Effects::default();
        let now = self.now_ms;
        self.machines
            .get_mut(&at)
            .unwrap()
            .on_command(command, now, &mut out);
        self.perform(at, out);
    }

    /// Tells every reconciler that batches below `below` are closed.
    fn close_below(&mut self, below: u64) {
        let addresses: Vec<Address> = self.machines.keys().copied().collect();
        for at in addresses {
            self.command(at, ReconcilerCommand::CloseBelow(BatchId(below)));
        }
    }
}

fn found_kinds(status: &BatchStatus) -> BTreeMap<InconsistencyKind, usize> {
    let mut kinds = BTreeMap::new();
    for f in &status.findings {
        *kinds.entry(f.kind).or_default() += 1;
    }
    kinds
}

#[test]
fn a_batch_only_the_platform_saw_is_compared_with_an_empty_one_once_closed_on_both_sides() {
    let mut sim = Sim::new(1, 11);
    let k = key(0, 3);
    let rs = records(11, 40);
    sim.load(platform(), Batch::new(k, rs).unwrap());
    // Closed at the platform only: it asks, the institution has not closed the batch and says
    // nothing (its records may still come), so nothing is posted empty.
    sim.command(platform(), ReconcilerCommand::CloseBelow(BatchId(4)));
    sim.run_until(|s| s.sent >= 3);
    assert_eq!(
        sim.snapshot(Address::Reconciler(0)).batches.len(),
        0,
        "nothing posted before the batch closed at the institution"
    );
    assert_eq!(sim.snapshot(platform()).chain.len(), 1);
    // Closed at the institution too: the next ask is answered with an empty batch.
    sim.command(
        Address::Reconciler(0),
        ReconcilerCommand::CloseBelow(BatchId(4)),
    );
    sim.run();
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    let i = sim
        .snapshot(Address::Reconciler(0))
        .batch(k)
        .unwrap()
        .clone();
    assert_eq!((p.progress, i.progress), (Progress::Done, Progress::Done));
    assert_eq!(i.record_count, 0);
    assert_eq!(
        found_kinds(&p),
        BTreeMap::from([(InconsistencyKind::Missing, 40)])
    );
    assert_eq!(found(&i), found(&p));
}

#[test]
fn a_batch_only_the_institution_saw_is_compared_once_closed_at_the_platform() {
    let mut sim = Sim::new(1, 12);
    let k = key(0, 5);
    sim.load(
        Address::Reconciler(0),
        Batch::new(k, records(12, 25)).unwrap(),
    );
    sim.run();
    // Posted and acknowledged, waiting: the platform has not closed batch 5 yet.
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    assert_eq!(p.progress, Progress::Waiting);
    assert_eq!(p.batch_hash, None);
    sim.close_below(6);
    sim.run();
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    assert_eq!(p.progress, Progress::Done);
    assert_eq!(p.record_count, 0);
    assert_eq!(
        found_kinds(&p),
        BTreeMap::from([(InconsistencyKind::Extra, 25)])
    );
    let i = sim
        .snapshot(Address::Reconciler(0))
        .batch(k)
        .unwrap()
        .clone();
    assert_eq!(found(&i), found(&p));
    // A closed batch the platform learns of only now is compared at once.
    let k2 = key(0, 1);
    sim.load(
        Address::Reconciler(0),
        Batch::new(k2, records(13, 5)).unwrap(),
    );
    sim.run();
    let p = sim.snapshot(platform()).batch(k2).unwrap().clone();
    assert_eq!(
        found_kinds(&p),
        BTreeMap::from([(InconsistencyKind::Extra, 5)])
    );
}

#[test]
fn honest_batches_loaded_on_both_sides_need_no_ask_and_no_empty_batch() {
    let mut sim = Sim::new(2, 14);
    for inst in 0..2u32 {
        for b in 0..3u64 {
            let rs = records(u64::from(inst) * 100 + b, 30);
            sim.load(platform(), Batch::new(key(inst, b), rs.clone()).unwrap());
            sim.load(
                Address::Reconciler(u64::from(inst)),
                Batch::new(key(inst, b), rs).unwrap(),
            );
        }
    }
    sim.close_below(3);
    sim.run();
    // Post, ack, report, report ack per batch: no ask, no drill-down.
    assert_eq!(sim.sent, 6 * 4);
    let view = sim.snapshot(platform());
    assert_eq!(view.batches.len(), 6);
    assert!(view
        .batches
        .iter()
        .all(|b| b.report.as_ref().unwrap().agreed()));
}

/// Per batch, the inconsistent records and their kinds.
type FindingsByBatch = BTreeMap<BatchKey, BTreeMap<RecordId, InconsistencyKind>>;

/// Reconciles `batches` batches of institution 0 (every seventh with plants) in rounds,
/// reading finished results after each round as a feed does; returns (key, findings) read.
fn reconcile_many(sim: &mut Sim, batches: u64) -> (FindingsByBatch, FindingsByBatch) {
    let mut expected = BTreeMap::new();
    let mut read = BTreeMap::new();
    let mut cursor = 0;
    for round in 0..batches / 4 {
        for b in round * 4..round * 4 + 4 {
            let k = key(0, b);
            let rs = records(b, 60);
            let planted = plant(&rs, usize::from(b % 7 == 0) * 2, b);
            sim.load(platform(), Batch::new(k, rs).unwrap());
            sim.load(
                Address::Reconciler(0),
                Batch::new(k, planted.records).unwrap(),
            );
            expected.insert(k, planted.planted);
        }
        sim.run();
        let finished = sim.machines[&platform()].finished_since(cursor);
        assert_eq!(finished.missed, 0);
        cursor = finished.cursor;
        for status in finished.statuses {
            assert_eq!(status.progress, Progress::Done);
            read.insert(status.key, found(&status));
        }
    }
    (expected, read)
}

#[test]
fn finished_batches_are_pruned_to_a_bounded_compact_status_and_every_result_is_still_read() {
    const RETAINED: usize = 8;
    let limits = ReconcilerLimits {
        retained_batches: RETAINED,
        ..limits()
    };
    let mut sim = Sim::new(1, 15);
    sim.machines
        .insert(platform(), Reconciler::platform(limits));
    sim.machines.insert(
        Address::Reconciler(0),
        Reconciler::institution(InstitutionId(0), limits),
    );
    let (expected, read) = reconcile_many(&mut sim, 200);
    assert_eq!(
        read, expected,
        "every batch's result read, with its findings"
    );
    for at in [platform(), Address::Reconciler(0)] {
        let r = sim.machines[&at].retained();
        assert_eq!(r.live_batches, 0, "{at}: no records or hashes kept");
        assert_eq!(r.live_records, 0);
        assert_eq!(r.finished, RETAINED, "{at}");
        assert_eq!(r.finished_total, 200);
    }
    let p = sim.machines[&platform()].retained();
    assert!(
        p.chain_blocks <= 2 * RETAINED + super::state::CHAIN_DROP_MIN,
        "chain kept bounded: {p:?}"
    );
    // What is kept still verifies, and is what replaying the journal or restoring a
    // checkpoint rebuilds.
    let view = sim.snapshot(platform());
    assert_eq!(view.verify_chain(), Ok(()));
    assert_eq!(view.batches.len(), RETAINED);
    assert!(view.chain[0].height > 0, "old blocks dropped");
    for at in [platform(), Address::Reconciler(0)] {
        let live = &sim.machines[&at];
        let mut replayed = match at {
            a if a == platform() => Reconciler::platform(limits),
            _ => Reconciler::institution(InstitutionId(0), limits),
        };
        for e in &sim.journals[&at] {
            replayed.apply(e);
        }
        assert_eq!(replayed.snapshot(), live.snapshot(), "{at}: replayed");
        let mut restored = match at {
            a if a == platform() => Reconciler::platform(limits),
            _ => Reconciler::institution(InstitutionId(0), limits),
        };
        restored
            .restore(&live.checkpoint().expect("reconcilers take checkpoints"))
            .unwrap();
        assert_eq!(restored.snapshot(), live.snapshot(), "{at}: restored");
        assert_eq!(restored.retained(), live.retained());
    }
    // Late copies of the messages of a forgotten batch change nothing.
    let chain = sim.snapshot(platform()).chain.len();
    let old = key(0, 0);
    let post = Envelope {
        message_id: 1,
        saga_id: trace_id(old),
        from: Address::Reconciler(0),
        to: platform(),
        attempt: 9,
        trace: None,
        payload: specie_protocol::Payload::BatchHashPost(
            specie_protocol::reconcile::BatchHashPost {
                batch_id: old.batch_id,
                batch_hash: specie_protocol::reconcile::Digest([7; 32]),
                record_count: 60,
            },
        ),
    };
    sim.wire.push_back(post.encode().to_vec());
    let ask = Envelope {
        from: platform(),
        to: Address::Reconciler(0),
        payload: specie_protocol::Payload::BatchHashRequest {
            batch_id: old.batch_id,
        },
        ..post
    };
    sim.wire.push_back(ask.encode().to_vec());
    sim.close_below(1_000);
    sim.run();
    assert_eq!(sim.snapshot(platform()).chain.len(), chain);
    assert_eq!(sim.machines[&platform()].retained().live_batches, 0);
    assert_eq!(
        sim.machines[&Address::Reconciler(0)]
            .retained()
            .live_batches,
        0
    );
}

#[test]
fn a_platform_restored_from_a_checkpoint_mid_drill_down_finishes_the_work() {
    let rs = records(16, 3000);
    let planted = plant(&rs, 6, 16);
    let k = key(0, 1);
    let mut sim = Sim::new(1, 16);
    sim.fault = Box::new(|e, _| usize::from(e.from != platform()));
    sim.load(platform(), Batch::new(k, rs).unwrap());
    sim.load(
        Address::Reconciler(0),
        Batch::new(k, planted.records).unwrap(),
    );
    sim.run_until(|s| {
        matches!(
            s.snapshot(platform()).batch(k).unwrap().progress,
            Progress::Shards { .. }
        )
    });
    let checkpoint = sim.machines[&platform()].checkpoint().unwrap();
    let mut restored = Reconciler::platform(limits());
    restored.restore(&checkpoint).unwrap();
    assert_eq!(restored.snapshot(), sim.snapshot(platform()));
    sim.machines.insert(platform(), restored);
    sim.timers.retain(|(_, at, _)| *at != platform());
    sim.fault = Box::new(|_, _| 1);
    let mut out = Effects::default();
    sim.machines
        .get_mut(&platform())
        .unwrap()
        .on_start(0, &mut out);
    sim.perform(platform(), out);
    sim.run();
    let p = sim.snapshot(platform()).batch(k).unwrap().clone();
    assert_eq!(p.progress, Progress::Done);
    assert_eq!(found(&p), planted.planted);
    // A damaged checkpoint is refused, not half-restored.
    let mut bad = checkpoint.clone();
    bad.truncate(bad.len() / 2);
    assert!(Reconciler::platform(limits()).restore(&bad).is_err());
}
