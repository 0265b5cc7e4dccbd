//! Crash and restart under load: while seeded payments are in flight, institutions, the central
//! bank and wallets taking part in payments are crashed again and again (within the
//! supervisor's restart intensity); each restarts from its in-memory journal. Every request
//! must still reach its terminal notice, refusals that no crash can change must keep their
//! reason, nothing forged or double-spent may commit, and once the cluster is quiet the audit
//! must hold with no saga in flight and every wallet's coins and account must match a reference
//! model built from the outcomes alone.

mod common;

use common::{Driver, Expect};
use rand::Rng;
use specie_actors::Cluster;
use specie_protocol::{AbortReason, Address, InstitutionId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_0003;
const WALLETS: u64 = 120;
const REQUESTS: usize = 1_500;
const IN_FLIGHT: usize = 48;
/// A crash after every this many notices.
const CRASH_EVERY: usize = 12;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);

/// Crashes actors, never more often than half the supervisor's restart intensity allows (the
/// test is about recovery, not about escalation).
struct Crasher {
    recent: HashMap<Address, Vec<Instant>>,
    window: Duration,
    budget: usize,
    crashes: HashMap<&'static str, usize>,
}

impl Crasher {
    fn crash(&mut self, cluster: &Cluster, actor: Address) -> bool {
        let now = Instant::now();
        let window = self.window;
        let recent = self.recent.entry(actor).or_default();
        recent.retain(|t| now.duration_since(*t) < window);
        if recent.len() >= self.budget {
            return false;
        }
        recent.push(now);
        cluster.crash(actor);
        let kind = match actor {
            Address::CentralBank => "central_bank",
            Address::Institution(_) => "institution",
            _ => "wallet",
        };
        *self.crashes.entry(kind).or_default() += 1;
        true
    }
}

#[actix::test]
async fn every_request_ends_and_the_ledgers_hold_across_crashes() {
    let mut config = common::config(WALLETS);
    // Chase lost outcomes and retry steps quickly, so that recovery fits in a short test.
    config.limits.outcome_timeout_ms = 500;
    config.limits.retry_interval_ms = 50;
    config.limits.retry_interval_max_ms = 400;
    let supervision = config.supervision;
    let workload = config.workload.clone();
    let cluster = Cluster::start(config, SEED).await.expect("cluster starts");
    let mut d = Driver::new(&cluster, SEED).await;
    let mut crasher = Crasher {
        recent: HashMap::new(),
        window: Duration::from_millis(supervision.restart_window_ms),
        budget: (supervision.restart_intensity_max as usize / 2).max(1),
        crashes: HashMap::new(),
    };
    let institutions = cluster.institution_count() as u32;

    let mut issued = 0;
    let mut notices = 0;
    while issued < REQUESTS || d.in_flight() > 0 {
        while issued < REQUESTS && d.in_flight() < IN_FLIGHT {
            let roll = d.rng.gen_range(0..100);
            let started = match roll {
                0..=2 => {
                    d.insufficient(Expect::Refuse(AbortReason::InsufficientFunds))
                        .await
                }
                // A crash may delay the issuer past the lock timeout: any abort will do, but
                // never a commit.
                3..=5 => d.double_spend(Expect::Abort).await,
                6..=7 => d.forge(Expect::Abort).await,
                _ => {
                    d.legit(
                        workload.cross_institution_percent,
                        workload.collect_percent,
                        Expect::Any,
                    )
                    .await
                }
            };
            match started {
                Some(_) => issued += 1,
                None if d.in_flight() > 0 => break,
                None => continue,
            }
        }
        if d.in_flight() == 0 {
            continue;
        }
        d.step(NOTICE_TIMEOUT).await;
        notices += 1;
        if notices % CRASH_EVERY != 0 || issued >= REQUESTS {
            continue;
        }
        // Crash something involved in the payments in flight.
        let pending = d.pending();
        let roll = d.rng.gen_range(0..100);
        let (_, op) = &pending[d.rng.gen_range(0..pending.len())];
        match roll {
            0..=14 => {
                crasher.crash(&cluster, Address::CentralBank);
            }
            15..=29 => {
                let i = InstitutionId(d.rng.gen_range(0..institutions));
                crasher.crash(&cluster, Address::Institution(i));
            }
            30..=44 => {
                // The coordinator and the issuer of one payment at once.
                crasher.crash(&cluster, Address::Institution(op.coordinator));
                crasher.crash(
                    &cluster,
                    Address::Institution(cluster.institution_of(op.payer)),
                );
            }
            45..=69 => {
                crasher.crash(&cluster, Address::Wallet(op.payer));
            }
            _ => {
                crasher.crash(&cluster, Address::Wallet(op.payee));
            }
        }
    }
    eprintln!("crashes: {:?}", crasher.crashes);
    eprintln!("restarts: {:?}", cluster.node().restarts());

    // Quiet, and every saga terminal (steps after a commit decision may still be retrying).
    let deadline = Instant::now() + Duration::from_secs(15);
    let report = loop {
        let quiet = cluster.quiesce(Duration::from_secs(10)).await;
        let report = cluster.audit().await.expect("audit");
        if quiet && report.in_flight == 0 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    d.check_notices();
    let tally = d.tally();
    eprintln!("outcomes: {tally:#?}");
    assert!(
        d.violations.is_empty(),
        "{} violations: {:#?}",
        d.violations.len(),
        d.violations
    );
    assert_eq!(
        d.finished.len(),
        REQUESTS,
        "every request reached its notice"
    );
    assert!(report.ok(), "audit: {report:#?}");
    assert_eq!(report.in_flight, 0, "sagas in flight after quiescence");

    let snapshot = cluster.snapshot().await.expect("snapshot");
    d.check_snapshot(&snapshot);
    assert_eq!(cluster.node().network().in_flight(), 0);
    assert!(
        cluster.node().escalations().is_empty(),
        "{:?}",
        cluster.node().escalations()
    );

    // The faults were real: every kind of actor restarted, and payments still committed.
    let restarts: HashMap<_, _> = cluster.node().restarts().into_iter().collect();
    for kind in ["central_bank", "institution", "wallet"] {
        assert!(
            restarts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} restarted: {restarts:?}"
        );
    }
    let committed: usize = tally
        .iter()
        .filter(|((_, o), _)| o == "committed")
        .map(|(_, n)| n)
        .sum();
    assert!(
        committed > REQUESTS / 2,
        "only {committed} of {REQUESTS} requests committed"
    );
    cluster.shutdown();
}
