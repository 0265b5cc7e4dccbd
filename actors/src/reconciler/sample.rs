//! Sample batches and planted differences, for `specie reconcile --demo` and the tests.
//!
//! Everything is drawn from a seeded generator: the same seed gives the same records and the
//! same plants.

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_protocol::reconcile::{InconsistencyKind, RecordId, RecordKind, TransactionRecord};
use specie_protocol::{Amount, SagaId, WalletId};
use std::collections::BTreeMap;

/// Wallets the sample records move value between.
const SAMPLE_WALLETS: u64 = 10_000;
/// Largest sample amount, in fen.
const SAMPLE_AMOUNT_MAX_FEN: u64 = 1_000_000;
/// The sample records' commit times start here (2024-01-01, ms since the epoch).
const SAMPLE_EPOCH_MS: u64 = 1_704_067_200_000;

/// A random record with the given id.
pub fn record(rng: &mut impl Rng, id: RecordId) -> TransactionRecord {
    TransactionRecord {
        id,
        saga_id: SagaId::from_u128(rng.gen()),
        kind: RecordKind::ALL[rng.gen_range(0..RecordKind::ALL.len())],
        payer: WalletId(rng.gen_range(0..SAMPLE_WALLETS)),
        payee: WalletId(rng.gen_range(0..SAMPLE_WALLETS)),
        amount: Amount(rng.gen_range(1..=SAMPLE_AMOUNT_MAX_FEN)),
        at_ms: SAMPLE_EPOCH_MS + id.0.wrapping_mul(7) % 86_400_000,
    }
}

/// `count` random records with ids `1..=count`.
pub fn records(seed: u64, count: usize) -> Vec<TransactionRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (1..=count as u64)
        .map(|id| record(&mut rng, RecordId(id)))
        .collect()
}

/// One side's records with differences planted, and what was planted.
#[derive(Debug, Clone)]
pub struct Planted {
    /// The records with the differences in them.
    pub records: Vec<TransactionRecord>,
    /// Each planted record and how it differs from the original records (named as the
    /// reconciler reports them: a record removed here is `Missing`, one added is `Extra`).
    pub planted: BTreeMap<RecordId, InconsistencyKind>,
}

/// Copies `records` and plants `count` differences of mixed kinds (missing, extra, altered in
/// turn) in the copy. Missing and altered records are distinct records drawn at random; extra
/// records get fresh ids above every existing one. When no record is left to remove or alter,
/// the difference planted is an extra record.
pub fn plant(records: &[TransactionRecord], count: usize, seed: u64) -> Planted {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x706c_616e_7465_6421);
    let kinds = [
        InconsistencyKind::Missing,
        InconsistencyKind::Extra,
        InconsistencyKind::Altered,
    ];
    let touching = (0..count)
        .filter(|i| kinds[i % 3] != InconsistencyKind::Extra)
        .count()
        .min(records.len());
    let mut victims = index::sample(&mut rng, records.len(), touching).into_vec();
    let mut next_id = records.iter().map(|r| r.id.0).max().unwrap_or(0) + 1;
    let mut copy: BTreeMap<RecordId, TransactionRecord> =
        records.iter().map(|r| (r.id, r.clone())).collect();
    let mut planted = BTreeMap::new();
    for i in 0..count {
        let kind = kinds[i % 3];
        let victim = match kind {
            InconsistencyKind::Extra => None,
            _ => victims.pop(),
        };
        match (kind, victim) {
            (InconsistencyKind::Missing, Some(v)) => {
                let id = records[v].id;
                copy.remove(&id);
                planted.insert(id, InconsistencyKind::Missing);
            }
            (InconsistencyKind::Altered, Some(v)) => {
                let id = records[v].id;
                let r = copy.get_mut(&id).expect("victims are distinct");
                match rng.gen_range(0..4) {
                    0 => r.amount = Amount(r.amount.0 ^ 1),
                    1 => r.payee = WalletId(r.payee.0 ^ 1),
                    2 => r.at_ms ^= 1,
                    _ => r.saga_id = SagaId::from_u128(rng.gen()),
                }
                planted.insert(id, InconsistencyKind::Altered);
            }
            _ => {
                let id = RecordId(next_id);
                next_id += 1;
                copy.insert(id, record(&mut rng, id));
                planted.insert(id, InconsistencyKind::Extra);
            }
        }
    }
    Planted {
        records: copy.into_values().collect(),
        planted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plants_exactly_the_kinds_asked_for_in_turn() {
        let original = records(3, 100);
        let p = plant(&original, 7, 3);
        assert_eq!(p.planted.len(), 7);
        let count = |k| p.planted.values().filter(|v| **v == k).count();
        assert_eq!(count(InconsistencyKind::Missing), 3);
        assert_eq!(count(InconsistencyKind::Extra), 2);
        assert_eq!(count(InconsistencyKind::Altered), 2);
        assert_eq!(p.records.len(), 100 - 3 + 2);
        let by_id: BTreeMap<_, _> = original.iter().map(|r| (r.id, r)).collect();
        for r in &p.records {
            match (by_id.get(&r.id), p.planted.get(&r.id)) {
                (Some(o), None) => assert_eq!(*o, r),
                (Some(o), Some(InconsistencyKind::Altered)) => assert_ne!(*o, r),
                (None, Some(InconsistencyKind::Extra)) => {}
                other => panic!("unexpected {other:?} for {}", r.id),
            }
        }
    }

    #[test]
    fn with_nothing_to_remove_or_alter_it_adds() {
        let p = plant(&[], 4, 1);
        assert!(p.planted.values().all(|k| *k == InconsistencyKind::Extra));
        assert_eq!(p.records.len(), 4);
    }
}
