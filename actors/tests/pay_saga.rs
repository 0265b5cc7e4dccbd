//! The pay saga end to end on a healthy network: a few thousand seeded payments between 200
//! wallets of four institutions, within and across institutions, started by the payer or
//! collected by the payee, mixed with requests that must be refused (above the balance, a
//! second spend of spent coins, an authorization forged with the wrong key). An independent
//! model built only from the requests and their outcomes must match every wallet's coins and
//! every account at the end, each refusal must carry exactly its reason, and the audit must hold
//! with no saga in flight.

mod common;

use common::{Driver, Expect};
use rand::Rng;
use specie_actors::Cluster;
use specie_protocol::AbortReason;
use std::time::Duration;

const SEED: u64 = 0x5eed_0001;
const WALLETS: u64 = 200;
const REQUESTS: usize = 3_000;
const IN_FLIGHT: usize = 64;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

#[actix::test]
async fn payments_match_the_reference_model_and_refusals_carry_their_reason() {
    let config = common::config(WALLETS);
    assert_eq!(config.cluster.institutions.len(), 4);
    let workload = config.workload.clone();
    let cluster = Cluster::start(config, SEED).await.expect("cluster starts");
    let mut d = Driver::new(&cluster, SEED).await;

    let mut issued = 0;
    while issued < REQUESTS || d.in_flight() > 0 {
        while issued < REQUESTS && d.in_flight() < IN_FLIGHT {
            let roll = d.rng.gen_range(0..100);
            let started = match roll {
                0..=2 => {
                    d.insufficient(Expect::Refuse(AbortReason::InsufficientFunds))
                        .await
                }
                3..=5 => d.double_spend(Expect::Refuse(AbortReason::CoinSpent)).await,
                6..=7 => d.forge(Expect::Refuse(AbortReason::BadSignature)).await,
                _ => {
                    d.legit(
                        workload.cross_institution_percent,
                        workload.collect_percent,
                        Expect::Commit,
                    )
                    .await
                }
            };
            match started {
                Some(_) => issued += 1,
                // No free wallet fits this draw right now: let requests finish first.
                None if d.in_flight() > 0 => break,
                None => continue,
            }
        }
        if d.in_flight() > 0 {
            d.step(NOTICE_TIMEOUT).await;
        }
    }

    assert!(
        cluster.quiesce(Duration::from_secs(10)).await,
        "the cluster goes quiet"
    );
    d.check_notices();
    let tally = d.tally();
    eprintln!("outcomes: {tally:#?}");
    assert!(
        d.violations.is_empty(),
        "{} violations: {:#?}",
        d.violations.len(),
        d.violations
    );
    assert_eq!(d.finished.len(), REQUESTS);
    for (label, reason) in [
        ("pay", "committed"),
        ("collect", "committed"),
        ("pay-insufficient", "insufficient_funds"),
        ("collect-insufficient", "insufficient_funds"),
        ("double-spend", "coin_spent"),
        ("forged", "bad_signature"),
    ] {
        let n = tally
            .get(&(label, reason.to_string()))
            .copied()
            .unwrap_or(0);
        assert!(n > 0, "the workload exercised no {label} ending {reason}");
    }

    let snapshot = cluster.snapshot().await.expect("snapshot");
    d.check_snapshot(&snapshot);
    let most_coins = snapshot
        .wallets
        .iter()
        .map(|w| w.coins.len())
        .max()
        .unwrap_or(0);
    eprintln!("most coins held by one wallet: {most_coins}");
    let report = cluster.audit().await.expect("audit");
    assert!(report.ok(), "audit: {report:#?}");
    assert_eq!(report.in_flight, 0, "sagas in flight after quiescence");
    assert_eq!(cluster.node().network().in_flight(), 0);
    assert!(cluster.node().escalations().is_empty());
    cluster.shutdown();
}
