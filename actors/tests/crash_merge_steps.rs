//! Crash at every step of the merge saga, right before and right after the step's journal
//! write (the pay saga's steps are in `crash_steps.rs`).
//!
//! Wallets of institution 0 first come to hold coins of three institutions (paid offline by
//! wallets of institutions 1 and 2, then redeemed), with no fault armed. Then a journal fault
//! hook crashes the merging institution at one merge step — start, an issuer's lock recorded,
//! the commit decision, an issuer's acknowledgement, a backing move acknowledged — or an issuer
//! at its lock or retirement of the merge's coins, the first few times it writes that step:
//! before the write (nothing written) or after it (nothing of the step sent). The supervisor
//! restarts the actor from its journal. Then every merge reaches its outcome; a committed merge
//! leaves its wallet one coin of exactly the sum with every input spent; an aborted one leaves
//! the wallet its coins; customers' value is unchanged; and the audit holds with nothing in
//! flight.

mod sagas_support;

use bytes::Bytes;
use sagas_support::{config, customers_value, quiet_audit, start_with};
use specie_actors::institution::{CoinState, InstitutionEvent};
use specie_actors::wallet::{OfflineCommand, WalletCommand};
use specie_protocol::{Address, Amount, InstitutionId, SagaId, WalletId};
use specie_runtime::{step_events, AppendFault, JournalFaultHook};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SEED: u64 = 0x5eed_0006;
/// Four institutions, four wallets each; wallets 0, 4, 8 and 12 bank at institution 0.
const WALLETS: u64 = 16;
const MERGERS: [u64; 3] = [0, 4, 8];
/// Crashes per case: enough to hit several merges, well within the restart intensity.
const CRASHES_MAX: u32 = 2;

fn saga(case: u128, n: u128) -> SagaId {
    SagaId::from_u128(0x6e_7e << 96 | case << 32 | n)
}

/// The names of the institution events in a journal entry (one step), with the inner step
/// for merges: `Merge::Started`.
fn event_names(entry: &Bytes) -> Vec<String> {
    step_events::<InstitutionEvent>(entry)
        .filter_map(Result::ok)
        .map(|event| {
            let debug = format!("{event:?}");
            let mut words = debug
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .filter(|w| !w.is_empty());
            let first = words.next().unwrap_or_default().to_string();
            match first.as_str() {
                "Merge" | "Offline" => format!("{first}::{}", words.next().unwrap_or_default()),
                _ => first,
            }
        })
        .collect()
}

/// Crashes one institution around its journal write of one step, a few times.
struct StepCrash {
    institution: InstitutionId,
    event: &'static str,
    fault: AppendFault,
    fired: AtomicU32,
}

impl JournalFaultHook for StepCrash {
    fn on_append(&self, actor: Address, entries: &[Bytes]) -> AppendFault {
        if actor != Address::Institution(self.institution)
            || self.fired.load(Ordering::SeqCst) >= CRASHES_MAX
        {
            return AppendFault::None;
        }
        if entries
            .iter()
            .any(|e| event_names(e).iter().any(|n| n == self.event))
        {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return self.fault;
        }
        AppendFault::None
    }
}

/// One case: fund the mergers with foreign coins, arm the crash, merge, check.
async fn run_case(case: u128, institution: InstitutionId, event: &'static str, fault: AppendFault) {
    let name = format!("{event} at {institution} {fault:?}");
    let mut config = config(WALLETS);
    // Retry, redeliver and chase outcomes quickly, so that recovery fits in a short test.
    config.limits.outcome_timeout_ms = 300;
    config.limits.retry_interval_ms = 50;
    config.limits.retry_interval_max_ms = 300;
    let (cluster, mut notices) = start_with(config, SEED).await;
    // Foreign coins for every merger: paid offline by a wallet of institution 1 and one of 2.
    for (m, merger) in MERGERS.iter().enumerate() {
        let me = WalletId(*merger);
        for (k, payer) in [WalletId(*merger + 1), WalletId(*merger + 2)]
            .into_iter()
            .enumerate()
        {
            let n = (m * 10 + k) as u128;
            let chain = cluster
                .offline_pay(saga(case, n), payer, me, Amount(200 + 100 * k as u64))
                .await
                .expect("wallets reachable")
                .expect("paid offline");
            let redeem = OfflineCommand::Redeem {
                saga: saga(case, 100 + n),
                chain: chain.id(),
            };
            cluster
                .submit(me, WalletCommand::Offline(redeem))
                .await
                .unwrap();
            assert_eq!(
                notices.of_wallet(saga(case, 100 + n), me).await,
                Ok(()),
                "{name}: redeem"
            );
        }
    }
    quiet_audit(&cluster).await;
    let before = cluster.snapshot().await.unwrap();
    let value_before = customers_value(&before);

    let hook = Arc::new(StepCrash {
        institution,
        event,
        fault,
        fired: AtomicU32::new(0),
    });
    cluster.node().set_journal_fault_hook(hook.clone());
    for (m, merger) in MERGERS.iter().enumerate() {
        let me = WalletId(*merger);
        let coins = before.wallets[me.0 as usize]
            .coins
            .iter()
            .map(|c| c.id)
            .collect();
        cluster
            .submit(
                me,
                WalletCommand::Merge {
                    saga: saga(case, 200 + m as u128),
                    coins,
                },
            )
            .await
            .unwrap();
    }
    let mut outcomes = Vec::new();
    for (m, merger) in MERGERS.iter().enumerate() {
        let id = saga(case, 200 + m as u128);
        outcomes.push((
            WalletId(*merger),
            id,
            notices.of_wallet(id, WalletId(*merger)).await,
        ));
    }
    quiet_audit(&cluster).await;
    assert!(
        hook.fired.load(Ordering::SeqCst) > 0,
        "{name}: the step never happened, so nothing was tested"
    );

    let after = cluster.snapshot().await.unwrap();
    assert_eq!(
        customers_value(&after),
        value_before,
        "{name}: customers' value"
    );
    for (me, id, outcome) in outcomes {
        let inputs = &before.wallets[me.0 as usize].coins;
        let held = &after.wallets[me.0 as usize].coins;
        let sum: u64 = inputs.iter().map(|c| c.value().0).sum();
        match outcome {
            Ok(()) => {
                assert_eq!(held.len(), 1, "{name}: {me} holds one merged coin");
                assert_eq!(
                    (held[0].value(), held[0].body.origin_saga),
                    (Amount(sum), id),
                    "{name}"
                );
                for c in inputs {
                    let state = after.institutions[c.body.issuer.0 as usize].coins[&c.id].state;
                    assert_eq!(state, CoinState::Spent(id), "{name}: input of {me}");
                }
            }
            Err(_) => {
                let mut held: Vec<_> = held.iter().map(|c| c.id).collect();
                let mut had: Vec<_> = inputs.iter().map(|c| c.id).collect();
                held.sort();
                had.sort();
                assert_eq!(held, had, "{name}: an aborted merge leaves {me} its coins");
            }
        }
    }
    assert!(cluster.node().escalations().is_empty(), "{name}: escalated");
    cluster.shutdown();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[actix::test]
async fn merges_survive_a_crash_around_every_step() {
    let home = InstitutionId(0);
    let issuer = InstitutionId(1);
    let cases: [(InstitutionId, &'static str); 7] = [
        (home, "Merge::Started"),
        (home, "Merge::Locked"),
        (home, "Merge::CommitDecided"),
        (home, "Merge::IssuerDone"),
        (home, "Merge::BackingDone"),
        (issuer, "Locked"),
        (issuer, "Retired"),
    ];
    let mut case = 0;
    for (institution, event) in cases {
        for fault in [AppendFault::CrashBefore, AppendFault::CrashAfter] {
            case += 1;
            run_case(case, institution, event, fault).await;
        }
    }
}
