//! Continuous reconciliation in a running cluster: every committed payment (and genesis
//! exchange) is recorded by each institution it touched and, independently, by the paying
//! wallet; the feed batches both sides' records and the reconcilers compare them. An honest
//! run agrees batch by batch with one hash comparison each, and both sides hold exactly the
//! records the committed sagas call for; a record altered on the wire is found, alone, with
//! its kind.

mod common;

use common::{Driver, Expect};
use parking_lot::Mutex;
use specie_actors::reconciler::{record_id, FeedSummary, SideTotals};
use specie_actors::{Cluster, ClusterSnapshot};
use specie_protocol::reconcile::{InconsistencyKind, RecordKind};
use specie_protocol::{Address, Envelope, InstitutionId, Payload, SagaId};
use specie_runtime::config::Config;
use specie_runtime::{Delivery, FaultHook};
use std::sync::Arc;
use std::time::Duration;

const WALLETS: u64 = 120;
const PAYMENTS: usize = 600;
const IN_FLIGHT: usize = 32;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Narrow batches, so that a short run spans several.
const BATCH_INTERVAL_MS: u64 = 200;

fn config() -> Config {
    let mut config = common::config(WALLETS);
    config.reconcile.batch_interval_ms = BATCH_INTERVAL_MS;
    config.reconcile.close_after_ms = 1_000;
    config
}

/// Drives `PAYMENTS` honest payments (within and across institutions, some collected by the
/// payee) to the end, and waits until the cluster is quiet.
async fn pay(cluster: &Cluster, seed: u64) {
    let workload = cluster.config().workload.clone();
    let mut d = Driver::new(cluster, seed).await;
    let mut issued = 0;
    while issued < PAYMENTS || d.in_flight() > 0 {
        while issued < PAYMENTS && d.in_flight() < IN_FLIGHT {
            let started = d
                .legit(
                    workload.cross_institution_percent,
                    workload.collect_percent,
                    Expect::Commit,
                )
                .await;
            match started {
                Some(_) => issued += 1,
                None => break,
            }
        }
        if d.in_flight() > 0 {
            d.step(NOTICE_TIMEOUT).await;
        }
    }
    assert!(d.violations.is_empty(), "{:#?}", d.violations);
    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the cluster goes quiet"
    );
}

/// The records the committed sagas call for, read from the institutions' own saga books: a
/// payment is recorded at its coordinator and, when the coins' issuer is another
/// institution, there too; an exchange at its institution.
fn expected(s: &ClusterSnapshot) -> SideTotals {
    let mut t = SideTotals::default();
    for inst in &s.institutions {
        for p in inst.pays.values() {
            if p.step.saga_state().0 != specie_protocol::SagaState::Committed {
                continue;
            }
            let touched = if p.payer_institution == inst.id { 1 } else { 2 };
            t.records += touched;
            t.amount += touched * p.amount.0;
        }
        for (_, amount, state) in inst.exchanges.values() {
            if *state == specie_actors::institution::ExchangeState::Committed {
                t.records += 1;
                t.amount += amount.0;
            }
        }
    }
    t
}

fn assert_every_batch_agreed(r: &FeedSummary) {
    assert!(r.batches > 1, "several batches: {r:#?}");
    assert_eq!(r.reconciled, r.batches, "{r:#?}");
    assert_eq!(r.agreed, r.batches, "{r:#?}");
    assert_eq!(r.findings_total(), 0, "{r:#?}");
    // One batch-hash comparison per batch, nothing below it.
    assert_eq!(r.levels.batch.compared, r.batches);
    assert_eq!(r.hashes_compared(), r.batches);
    assert_eq!(
        (r.late_records, r.conflicting_records, r.open_records),
        (0, 0, 0)
    );
    assert!(r.ok());
}

#[actix::test]
async fn honest_payments_reconcile_every_batch_and_both_sides_hold_every_committed_step() {
    let cluster = Cluster::start(config(), 0x5eed_8001)
        .await
        .expect("cluster starts");
    pay(&cluster, 0x5eed_8001).await;
    let r = cluster.flush_reconciliation(FLUSH_TIMEOUT).await;
    assert_every_batch_agreed(&r);

    let snapshot = cluster.snapshot().await.expect("snapshot");
    let want = expected(&snapshot);
    assert!(want.records > PAYMENTS as u64 + WALLETS, "{want:?}");
    assert_eq!(r.institution, want, "the institutions' records");
    assert_eq!(r.platform, want, "the platform's records");
    let kinds: Vec<_> = r.records_by_kind.keys().copied().collect();
    assert_eq!(kinds, ["exchange", "pay"]);
    cluster.shutdown();
}

/// Adds 1 ms to the decision time the first suitable `CommitRequest` carries to an issuer (one
/// that stays in its batch), so that the issuer's record of that payment differs from the
/// platform's in its time alone.
struct AlterCommitTime {
    altered: Mutex<Option<(SagaId, InstitutionId)>>,
}

impl FaultHook for AlterCommitTime {
    fn on_send(&self, _from: Address, to: Address, bytes: bytes::Bytes, out: &mut Vec<Delivery>) {
        let mut bytes = bytes;
        if let (Ok(mut e), Address::Institution(issuer)) = (Envelope::decode(&bytes), to) {
            let mut altered = self.altered.lock();
            if let Payload::CommitRequest { decided_at_ms } = &mut e.payload {
                if altered.is_none() && *decided_at_ms % BATCH_INTERVAL_MS < BATCH_INTERVAL_MS - 1 {
                    *decided_at_ms += 1;
                    *altered = Some((e.saga_id, issuer));
                    bytes = e.encode();
                }
            }
        }
        out.push(Delivery {
            after: Duration::ZERO,
            bytes,
        });
    }
}

#[actix::test]
async fn a_record_altered_on_the_wire_is_the_one_finding_and_its_kind_is_altered() {
    let cluster = Cluster::start(config(), 0x5eed_8002)
        .await
        .expect("cluster starts");
    let hook = Arc::new(AlterCommitTime {
        altered: Mutex::new(None),
    });
    cluster.node().network().set_fault_hook(hook.clone());
    pay(&cluster, 0x5eed_8002).await;
    let r = cluster.flush_reconciliation(FLUSH_TIMEOUT).await;

    let (saga, issuer) = hook
        .altered
        .lock()
        .expect("a cross-institution payment ran");
    assert_eq!(r.findings_total(), 1, "{r:#?}");
    let f = &r.findings[0];
    assert_eq!(f.kind, InconsistencyKind::Altered);
    assert_eq!(f.institution, issuer);
    assert_eq!(f.record_id, record_id(saga, RecordKind::Pay, issuer));
    assert_eq!((f.saga, f.record_kind), (Some(saga), Some(RecordKind::Pay)));
    assert_eq!(r.inconsistent, 1);
    assert_eq!(r.agreed, r.batches - 1);
    assert_eq!(r.unfinished, 0);
    assert!(!r.ok());
    // Both sides still hold a record of every committed step.
    assert_eq!(r.institution.records, r.platform.records);
    // Money is unaffected: the audit holds.
    let audit = cluster.audit().await.expect("audit");
    assert!(audit.ok(), "{audit:?}");
    cluster.shutdown();
}
