//! Crash at every step of the pay saga, right before and right after the step's journal write.
//!
//! For each actor kind and each journaled step it takes in a payment — the coordinator's saga
//! start, decisions and acknowledgements, the issuer's lock and retirement, the central bank's
//! backing move, the wallets' signature, outcome and coin receipt — a journal fault hook
//! crashes the actor the first few times it is about to write that step (nothing written) or
//! has just written it (nothing of the step sent). The supervisor restarts the actor from its
//! journal. Then: every payment reaches a terminal outcome, every outcome a wallet reported as
//! committed is committed at its coordinator (nothing acknowledged is lost), double spends never
//! commit, every wallet's coins and account match a reference model built from the outcomes,
//! and the audit holds with no saga in flight.

mod common;

use bytes::Bytes;
use common::{Driver, Expect};
use rand::Rng;
use specie_actors::central_bank::CentralBankEvent;
use specie_actors::institution::{InstitutionEvent, PayStep};
use specie_actors::wallet::WalletEvent;
use specie_actors::Cluster;
use specie_protocol::Address;
use specie_runtime::{step_events, AppendFault, JournalFaultHook};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_0005;
const WALLETS: u64 = 24;
const REQUESTS: usize = 60;
const IN_FLIGHT: usize = 8;
/// Crashes per case: enough to hit several sagas, well within the restart intensity.
const CRASHES_MAX: u32 = 3;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);

/// The variant name of an event, from its `Debug` form.
fn variant(debug: String) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The names of the events in a journal entry (one step) of `actor`.
fn event_names(actor: Address, entry: &Bytes) -> Vec<String> {
    fn names<E: serde::de::DeserializeOwned + std::fmt::Debug>(entry: &[u8]) -> Vec<String> {
        step_events::<E>(entry)
            .filter_map(Result::ok)
            .map(|e| variant(format!("{e:?}")))
            .collect()
    }
    match actor {
        Address::Institution(_) => names::<InstitutionEvent>(entry),
        Address::Wallet(_) => names::<WalletEvent>(entry),
        Address::CentralBank => names::<CentralBankEvent>(entry),
        _ => Vec::new(),
    }
}

/// Crashes actors of one kind around their journal write of one event, a few times.
struct StepCrash {
    kind: fn(Address) -> bool,
    event: &'static str,
    fault: AppendFault,
    fired: AtomicU32,
}

impl JournalFaultHook for StepCrash {
    fn on_append(&self, actor: Address, entries: &[Bytes]) -> AppendFault {
        if !(self.kind)(actor) || self.fired.load(Ordering::SeqCst) >= CRASHES_MAX {
            return AppendFault::None;
        }
        if entries
            .iter()
            .any(|e| event_names(actor, e).iter().any(|n| n == self.event))
        {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return self.fault;
        }
        AppendFault::None
    }
}

fn is_institution(a: Address) -> bool {
    matches!(a, Address::Institution(_))
}

fn is_wallet(a: Address) -> bool {
    matches!(a, Address::Wallet(_))
}

fn is_central_bank(a: Address) -> bool {
    a == Address::CentralBank
}

/// Runs a payment workload with one crash rule armed and checks everything; returns how many
/// crashes the rule caused.
async fn run_case(kind: fn(Address) -> bool, event: &'static str, fault: AppendFault) -> u32 {
    let case = format!("{event} {fault:?}");
    let mut config = common::config(WALLETS);
    config.cluster.institutions.truncate(2);
    // Chase lost outcomes and retry steps quickly, so that recovery fits in a short test.
    config.limits.outcome_timeout_ms = 300;
    // A wallet that selects its coins signs in the step that starts the payment, where a
    // crash before it is the `OpStarted` case; `Signed` is a step of its own when the
    // institution selects them.
    config.limits.wallet_selects_coins = event != "Signed";
    config.limits.retry_interval_ms = 50;
    config.limits.retry_interval_max_ms = 300;
    let cluster = Cluster::start(config, SEED).await.expect("cluster starts");
    let hook = Arc::new(StepCrash {
        kind,
        event,
        fault,
        fired: AtomicU32::new(0),
    });
    cluster.node().set_journal_fault_hook(hook.clone());
    let mut d = Driver::new(&cluster, SEED).await;

    let mut issued = 0;
    while issued < REQUESTS || d.in_flight() > 0 {
        while issued < REQUESTS && d.in_flight() < IN_FLIGHT {
            let started = if d.rng.gen_range(0..100) < 25 {
                // Must never commit; which check fires first may change with a crash.
                d.double_spend(Expect::Abort).await
            } else {
                // Cross and same institution, payer- and payee-initiated. A crash may delay a
                // step past the lock timeout, so an abort is allowed; the model follows it.
                d.legit(60, 25, Expect::Any).await
            };
            match started {
                Some(_) => issued += 1,
                None if d.in_flight() > 0 => break,
                None => continue,
            }
        }
        if d.in_flight() > 0 {
            d.step(NOTICE_TIMEOUT).await;
        }
    }

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
    assert!(d.violations.is_empty(), "{case}: {:#?}", d.violations);
    assert_eq!(
        d.finished.len(),
        REQUESTS,
        "{case}: every payment reached its outcome"
    );
    assert!(report.ok(), "{case}: audit {report:#?}");
    assert_eq!(
        report.in_flight, 0,
        "{case}: sagas in flight after quiescence"
    );

    // Nothing acknowledged is lost: every payment a wallet reported committed is committed at
    // its coordinator.
    let snapshot = cluster.snapshot().await.expect("snapshot");
    for (saga, f) in &d.finished {
        if f.result.is_ok() {
            let step = snapshot.institutions[f.op.coordinator.0 as usize]
                .pays
                .get(saga)
                .map(|p| p.step);
            assert_eq!(
                step,
                Some(PayStep::Committed),
                "{case}: acknowledged saga {saga}"
            );
        }
    }
    d.check_snapshot(&snapshot);
    assert!(cluster.node().escalations().is_empty(), "{case}: escalated");
    let fired = hook.fired.load(Ordering::SeqCst);
    cluster.shutdown();
    fired
}

/// Runs every case of one actor kind, before and after the write, and checks that each rule
/// really crashed something.
async fn crash_each_step(kind: fn(Address) -> bool, events: &[&'static str]) {
    for event in events {
        for fault in [AppendFault::CrashBefore, AppendFault::CrashAfter] {
            let fired = run_case(kind, event, fault).await;
            assert!(
                fired > 0,
                "{event} {fault:?}: the step never happened, so nothing was tested"
            );
        }
    }
}

#[actix::test]
async fn institutions_survive_a_crash_around_every_pay_step() {
    crash_each_step(
        is_institution,
        &[
            "PayStarted",
            "Locked",
            "LockRefused",
            "PayCommitDecided",
            "PayAbortDecided",
            "Retired",
            "PayIssuerDone",
            "PayBackingDone",
            "PayLocal",
        ],
    )
    .await;
}

#[actix::test]
async fn the_central_bank_survives_a_crash_around_every_backing_move() {
    crash_each_step(is_central_bank, &["Applied"]).await;
}

#[actix::test]
async fn wallets_survive_a_crash_around_every_pay_step() {
    // A crash before `OpStarted` loses the client's command before it was accepted (no
    // acknowledgement is owed), so only the crash after it is a recovery case.
    let fired = run_case(is_wallet, "OpStarted", AppendFault::CrashAfter).await;
    assert!(fired > 0);
    crash_each_step(is_wallet, &["Signed", "OpFinished", "CoinReceived"]).await;
}
