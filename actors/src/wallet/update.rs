//! The wallet's side of the wallet update saga (DESIGN.md §3.5).
//!
//! ```text
//!   Checking ──not needed──────────────────────────────────────────────► committed (nothing to do)
//!      │ needed
//!      ▼
//!   Withdrawing ──WithdrawReply ok──► Uploading ──UploadReply──► Requesting ──Instruction──► committed
//!   (coins signed over; skipped          (offline records          (apply the account data
//!    when the wallet holds none)          not yet synced)            and the new parameters)
//! ```
//!
//! Each step is journaled before its request leaves, and each request is re-sent (by the
//! chase timer, after a restart, or when the user retries the update with the same saga id)
//! until the institution answers; the institution answers repeats from its records. So an
//! update interrupted after the withdraw resumes at the upload: the coins are in the account
//! exactly once, and none is lost or doubled. After the update the wallet can exchange account
//! money into coins again (`WalletCommand::Exchange`).

use super::{Out, Wallet, WalletEvent, WalletOp, WalletTimer};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::reconcile::RecordKind;
use specie_protocol::update::{
    SignedWithdraw, UpdateMessage, WalletParams, WithdrawAuthorization, WITHDRAW_COINS_MAX,
};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, KeyStore, Payload, SagaId, SagaKind,
};
use specie_runtime::{Notice, StateMachine};
use std::sync::Arc;

/// Ask the wallet to update itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateCommand {
    /// The update's saga id. Giving the id of an update in flight re-sends its current step
    /// (a retry); giving the id of a finished one reports its recorded outcome again.
    pub saga: SagaId,
}

/// Where an update stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateStep {
    /// Asking the platform whether an update is needed.
    Checking,
    /// Withdrawing these coins to the account.
    Withdrawing {
        /// The signed withdraw.
        signed: SignedWithdraw,
    },
    /// Uploading the offline records not yet synced.
    Uploading,
    /// Asking for the update instruction.
    Requesting,
}

/// An update in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOp {
    /// The current step.
    pub step: UpdateStep,
    /// The platform's version, once known.
    pub latest: u32,
    /// Credited to the account by this update's withdraw.
    pub withdrawn: Amount,
}

/// Journaled facts of the wallet's updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateEvent {
    /// The platform has a newer version; the withdraw is signed (`None`: no coins to withdraw,
    /// straight to the upload).
    Checked {
        /// The update saga.
        saga: SagaId,
        /// The platform's version.
        latest: u32,
        /// The signed withdraw.
        withdraw: Option<SignedWithdraw>,
    },
    /// The institution retired the coins and credited the account.
    Withdrawn {
        /// The update saga.
        saga: SagaId,
        /// The coins (no longer the wallet's).
        coin_ids: Vec<CoinId>,
        /// Credited.
        amount: Amount,
        /// When.
        at_ms: u64,
    },
    /// The offline records were uploaded.
    Uploaded {
        /// The update saga.
        saga: SagaId,
        /// How many.
        records: u32,
    },
    /// The update instruction was applied.
    Applied {
        /// The update saga.
        saga: SagaId,
        /// The new parameters.
        params: WalletParams,
        /// The account balance the platform reported.
        account_balance: Amount,
    },
}

impl Wallet {
    fn update_envelope(&self, saga: SagaId, attempt: u32, message: UpdateMessage) -> Envelope {
        self.envelope(
            saga,
            Address::Institution(self.institution),
            attempt,
            Payload::WalletUpdate(message),
        )
    }

    /// The parameters the wallet runs with.
    pub fn params(&self) -> &WalletParams {
        &self.params
    }

    /// Offline transfer records not yet synced with the platform (at most one message's
    /// worth), encoded: the update uploads them so the platform holds them before the wallet
    /// changes. Redeeming the chains they belong to stays the offline sync's work.
    fn offline_records_unsynced(&self) -> Vec<Vec<u8>> {
        self.offline_records_encoded()
    }

    /// Starts (or retries) an update.
    pub(super) fn on_update_command(&mut self, command: UpdateCommand, out: &mut Out) {
        let saga = command.saga;
        if let Some(WalletOp::Update(op)) = self.ops.get(&saga) {
            // A retry of the update in flight: re-send its current step now.
            out.send(self.update_request(saga, op, 0));
            return;
        }
        if self.ops.contains_key(&saga) {
            return self.refuse(saga, SagaKind::WalletUpdate, AbortReason::Conflict, out);
        }
        if let Some((result, _)) = self.finished.get(&saga) {
            // A retry of a finished update: its recorded outcome.
            out.notice(Notice {
                saga_id: saga,
                source: Address::Wallet(self.id),
                outcome: SagaOutcome {
                    kind: SagaKind::WalletUpdate,
                    result: *result,
                    spent_coin_ids: Vec::new(),
                    decided_at_ms: 0,
                },
            });
            return;
        }
        if !self.ops.is_empty() {
            // Withdrawing coins that another operation is spending would fail half-way.
            return self.refuse(saga, SagaKind::WalletUpdate, AbortReason::Busy, out);
        }
        let op = UpdateOp {
            step: UpdateStep::Checking,
            latest: 0,
            withdrawn: Amount::ZERO,
        };
        let first = self.update_request(saga, &op, 0);
        self.record(
            WalletEvent::OpStarted {
                saga,
                op: WalletOp::Update(op),
            },
            out,
        );
        out.send(first);
        out.timer(
            self.limits.outcome_timeout_ms,
            WalletTimer { saga, attempt: 1 },
        );
    }

    /// The request an update (re)sends at its current step.
    pub(super) fn update_request(&self, saga: SagaId, op: &UpdateOp, attempt: u32) -> Envelope {
        let message = match &op.step {
            UpdateStep::Checking => UpdateMessage::Check {
                params_version: self.params.version,
            },
            UpdateStep::Withdrawing { signed } => UpdateMessage::Withdraw(signed.clone()),
            UpdateStep::Uploading => UpdateMessage::Upload {
                records: self.offline_records_unsynced(),
            },
            UpdateStep::Requesting => UpdateMessage::Request {
                params_version: self.params.version,
            },
        };
        self.update_envelope(saga, attempt, message)
    }

    /// The withdraw of every coin of this wallet's institution it holds (the largest first, at
    /// most [`WITHDRAW_COINS_MAX`]), signed in the key store; `None` when it holds none.
    fn sign_withdraw(&self, saga: SagaId) -> Option<SignedWithdraw> {
        let mut coins: Vec<(Amount, CoinId)> = self
            .coins
            .values()
            .filter(|c| c.body.issuer == self.institution)
            .map(|c| (c.value(), c.id))
            .collect();
        if coins.is_empty() {
            return None;
        }
        coins.sort_unstable_by(|a, b| b.cmp(a));
        coins.truncate(WITHDRAW_COINS_MAX);
        let amount = Amount::sum(coins.iter().map(|(v, _)| *v)).expect("supply fits u64");
        let authorization = WithdrawAuthorization {
            saga_id: saga,
            wallet: self.id,
            wallet_key: self.keys.public_key(),
            institution: self.institution,
            coin_ids: coins.into_iter().map(|(_, id)| id).collect(),
            amount,
        };
        Some(authorization.sign(self.keys.as_ref()))
    }

    /// The institution answered a step of an update.
    pub(super) fn on_update_message(
        &mut self,
        from: Address,
        saga: SagaId,
        message: UpdateMessage,
        now_ms: u64,
        out: &mut Out,
    ) {
        if from != Address::Institution(self.institution) {
            return;
        }
        let Some(WalletOp::Update(op)) = self.ops.get(&saga) else {
            return; // late or duplicate
        };
        match (&op.step, message) {
            (UpdateStep::Checking, UpdateMessage::CheckReply { needed: false, .. }) => {
                self.finish(saga, Ok(()), out)
            }
            (
                UpdateStep::Checking,
                UpdateMessage::CheckReply {
                    needed: true,
                    latest_version,
                },
            ) => {
                let withdraw = self.sign_withdraw(saga);
                self.record(
                    WalletEvent::Update(UpdateEvent::Checked {
                        saga,
                        latest: latest_version,
                        withdraw,
                    }),
                    out,
                );
                self.send_update_step(saga, out);
            }
            (
                UpdateStep::Withdrawing { signed },
                UpdateMessage::WithdrawReply {
                    result: Ok(amount),
                    decided_at_ms,
                },
            ) => {
                let coin_ids = signed.authorization.coin_ids.clone();
                // The platform's copy of the withdraw's record: the value of the coins this
                // wallet signed over (its own knowledge), into its own account.
                let value = coin_ids
                    .iter()
                    .filter_map(|id| self.coins.get(id).map(|c| c.value().0))
                    .sum();
                Movement {
                    saga,
                    kind: RecordKind::Withdraw,
                    payer: self.id,
                    payee: self.id,
                    amount: Amount(value),
                    at_ms: decided_at_ms,
                }
                .emit(self.institution, out);
                self.record(
                    WalletEvent::Update(UpdateEvent::Withdrawn {
                        saga,
                        coin_ids,
                        amount,
                        at_ms: now_ms,
                    }),
                    out,
                );
                self.send_update_step(saga, out);
            }
            (
                UpdateStep::Withdrawing { .. },
                UpdateMessage::WithdrawReply {
                    result: Err(reason),
                    ..
                },
            ) => self.finish(saga, Err(reason), out),
            (UpdateStep::Uploading, UpdateMessage::UploadReply { accepted }) => {
                self.record(
                    WalletEvent::Update(UpdateEvent::Uploaded {
                        saga,
                        records: accepted,
                    }),
                    out,
                );
                self.send_update_step(saga, out);
            }
            (
                UpdateStep::Requesting,
                UpdateMessage::Instruction {
                    account_balance,
                    params,
                },
            ) => {
                self.record(
                    WalletEvent::Update(UpdateEvent::Applied {
                        saga,
                        params,
                        account_balance,
                    }),
                    out,
                );
                self.finish(saga, Ok(()), out);
            }
            _ => {} // an answer to an earlier step, repeated
        }
    }

    fn send_update_step(&self, saga: SagaId, out: &mut Out) {
        if let Some(WalletOp::Update(op)) = self.ops.get(&saga) {
            out.send(self.update_request(saga, op, 0));
        }
    }

    /// Applies an update event (called from `apply`).
    pub(super) fn apply_update(&mut self, event: &UpdateEvent) {
        let saga = match event {
            UpdateEvent::Checked { saga, .. }
            | UpdateEvent::Withdrawn { saga, .. }
            | UpdateEvent::Uploaded { saga, .. }
            | UpdateEvent::Applied { saga, .. } => *saga,
        };
        match event {
            UpdateEvent::Withdrawn {
                coin_ids, at_ms, ..
            } => {
                for id in coin_ids {
                    self.coins.remove(id);
                    self.spent.insert(*id, *at_ms);
                }
            }
            UpdateEvent::Applied {
                params,
                account_balance,
                ..
            } => {
                self.params = Arc::new(params.clone());
                self.account_balance = Some(*account_balance);
            }
            UpdateEvent::Checked { .. } | UpdateEvent::Uploaded { .. } => {}
        }
        let Some(WalletOp::Update(op)) = self.ops.get_mut(&saga) else {
            return;
        };
        match event {
            UpdateEvent::Checked {
                latest, withdraw, ..
            } => {
                op.latest = *latest;
                op.step = match withdraw {
                    Some(signed) => UpdateStep::Withdrawing {
                        signed: signed.clone(),
                    },
                    None => UpdateStep::Uploading,
                };
            }
            UpdateEvent::Withdrawn { amount, .. } => {
                op.withdrawn = *amount;
                op.step = UpdateStep::Uploading;
            }
            UpdateEvent::Uploaded { .. } => op.step = UpdateStep::Requesting,
            UpdateEvent::Applied { .. } => {}
        }
    }
}

/// A router over wallets, their institutions and the central bank, shared by the unit tests of
/// the update and negotiation steps. Every envelope is handed over in order (or dropped as a
/// test asks); each wallet's journal is kept, so that a test can crash one and rebuild it.
#[cfg(test)]
pub(super) mod testkit {
    use super::super::{Wallet, WalletCommand, WalletEvent, WalletLimits, WalletTimer};
    use crate::audit::{audit, AuditReport};
    use crate::central_bank::{CentralBank, CentralBankCommand};
    use crate::cluster::ClusterSnapshot;
    use crate::institution::{Institution, InstitutionCommand, InstitutionLimits};
    use specie_protocol::{
        Address, Amount, Envelope, InstitutionId, KeyStore, PublicKey, SagaId, SoftKeyStore,
        WalletId,
    };
    use specie_runtime::{Effects, Notice, StateMachine};
    use std::collections::{BTreeMap, HashMap, VecDeque};
    use std::sync::Arc;

    pub const NOW: u64 = 1_000;
    pub const OUTCOME_TIMEOUT_MS: u64 = 2_000;
    pub const DEPOSIT: u64 = 100_000;

    pub fn wallet_keys(w: WalletId) -> SoftKeyStore {
        SoftKeyStore::from_seed([u8::try_from(w.0).expect("small id"); 32])
    }

    fn institution_keys(i: InstitutionId) -> SoftKeyStore {
        SoftKeyStore::from_seed([200 + u8::try_from(i.0).expect("small id"); 32])
    }

    pub struct Router {
        pub now: u64,
        pub cb: CentralBank,
        pub insts: Vec<Institution>,
        pub wallets: BTreeMap<WalletId, Wallet>,
        pub journals: HashMap<WalletId, Vec<WalletEvent>>,
        pub queue: VecDeque<Envelope>,
        pub notices: Vec<Notice>,
        pub timers: Vec<(u64, WalletId, WalletTimer)>,
        pub drop: Box<dyn FnMut(&Envelope) -> bool>,
        deposited: u64,
    }

    impl Router {
        /// `institutions` institutions; wallet `w` banks at `w % institutions`, with an account.
        pub fn new(institutions: u32, wallets: &[u64]) -> Router {
            let mut r = Router {
                now: NOW,
                cb: CentralBank::new(600_000),
                insts: Vec::new(),
                wallets: BTreeMap::new(),
                journals: HashMap::new(),
                queue: VecDeque::new(),
                notices: Vec::new(),
                timers: Vec::new(),
                drop: Box::new(|_| false),
                deposited: 0,
            };
            for i in 0..institutions {
                let limits = InstitutionLimits {
                    saga_timeout_ms: 2_000,
                    retry_interval_ms: 100,
                    retry_interval_max_ms: 800,
                    coin_inputs_max: 8,
                    denominations: vec![Amount(5_000), Amount(1_000), Amount(200)],
                    dedup_retention_ms: 600_000,
                };
                let id = InstitutionId(i);
                r.insts.push(
                    Institution::new(id, Arc::new(institution_keys(id)), Arc::new(limits))
                        .with_institutions(institutions),
                );
            }
            // The central bank mints each institution its customers' deposits, once.
            for i in 0..institutions {
                let customers = wallets
                    .iter()
                    .filter(|w| *w % u64::from(institutions) == u64::from(i))
                    .count() as u64;
                let mint = CentralBankCommand::Mint {
                    institution: InstitutionId(i),
                    amount: Amount(DEPOSIT * customers),
                };
                r.cb.on_command(mint, NOW, &mut Effects::default());
            }
            for w in wallets {
                let (id, inst) = (
                    WalletId(*w),
                    InstitutionId((*w % u64::from(institutions)) as u32),
                );
                let open = InstitutionCommand::OpenAccount {
                    wallet: id,
                    key: wallet_keys(id).public_key(),
                    deposit: Amount(DEPOSIT),
                };
                r.insts[inst.0 as usize].on_command(open, NOW, &mut Effects::default());
                r.deposited += DEPOSIT;
                r.wallets.insert(id, Self::wallet(id, inst, institutions));
                r.journals.insert(id, Vec::new());
            }
            r
        }

        fn wallet(id: WalletId, inst: InstitutionId, institutions: u32) -> Wallet {
            let issuers: HashMap<InstitutionId, PublicKey> = (0..institutions)
                .map(|i| {
                    (
                        InstitutionId(i),
                        institution_keys(InstitutionId(i)).public_key(),
                    )
                })
                .collect();
            let limits = WalletLimits {
                authorization_ttl_ms: 10_000,
                outcome_timeout_ms: OUTCOME_TIMEOUT_MS,
                saga_timeout_ms: 2_000,
                dedup_retention_ms: 600_000,
            };
            Wallet::new(
                id,
                inst,
                Arc::new(wallet_keys(id)),
                Arc::new(issuers),
                Arc::new(limits),
            )
        }

        fn absorb(&mut self, w: WalletId, out: Effects<WalletEvent, WalletTimer>) {
            self.journals
                .get_mut(&w)
                .expect("known wallet")
                .extend(out.events);
            self.queue.extend(out.sends);
            self.notices.extend(out.notices);
            for (delay, t) in out.timers {
                self.timers.push((self.now + delay, w, t));
            }
        }

        pub fn command(&mut self, w: WalletId, command: WalletCommand) {
            let mut out = Effects::default();
            let now = self.now;
            self.wallets
                .get_mut(&w)
                .expect("known wallet")
                .on_command(command, now, &mut out);
            self.absorb(w, out);
            self.run();
        }

        pub fn run(&mut self) {
            let mut steps = 0;
            while let Some(env) = self.queue.pop_front() {
                steps += 1;
                assert!(steps < 100_000, "the router does not go quiet");
                if (self.drop)(&env) {
                    continue;
                }
                let now = self.now;
                match env.to {
                    Address::CentralBank => {
                        let mut out = Effects::default();
                        self.cb.on_envelope(env, now, &mut out);
                        self.queue.extend(out.sends);
                    }
                    Address::Institution(i) => {
                        let mut out = Effects::default();
                        self.insts[i.0 as usize].on_envelope(env, now, &mut out);
                        self.insts[i.0 as usize].seal(&mut out.sends);
                        self.queue.extend(out.sends);
                    }
                    Address::Wallet(w) => {
                        let mut out = Effects::default();
                        self.wallets
                            .get_mut(&w)
                            .expect("known wallet")
                            .on_envelope(env, now, &mut out);
                        self.absorb(w, out);
                    }
                    other => panic!("nothing lives at {other}"),
                }
            }
        }

        /// Moves the clock, firing due wallet timers.
        pub fn advance(&mut self, ms: u64) {
            let until = self.now + ms;
            loop {
                self.timers.sort_by_key(|(due, w, _)| (*due, *w));
                let Some(pos) = self.timers.iter().position(|(due, _, _)| *due <= until) else {
                    break;
                };
                let (due, w, timer) = self.timers.remove(pos);
                self.now = self.now.max(due);
                let mut out = Effects::default();
                let now = self.now;
                self.wallets
                    .get_mut(&w)
                    .expect("known wallet")
                    .on_timer(timer, now, &mut out);
                self.absorb(w, out);
                self.run();
            }
            self.now = until;
        }

        /// Crashes wallet `w` (losing whatever is in flight) and rebuilds it from its journal.
        pub fn restart(&mut self, w: WalletId, institutions: u32) {
            let inst = self.wallets[&w].institution;
            let mut wallet = Self::wallet(w, inst, institutions);
            for event in &self.journals[&w] {
                wallet.apply(event);
            }
            self.timers.retain(|(_, t, _)| *t != w);
            self.queue.retain(|e| e.to != Address::Wallet(w));
            let mut out = Effects::default();
            wallet.on_start(self.now, &mut out);
            self.wallets.insert(w, wallet);
            self.absorb(w, out);
        }

        /// The outcome notices of saga `id`.
        pub fn outcomes(&self, id: SagaId) -> Vec<Result<(), specie_protocol::AbortReason>> {
            self.notices
                .iter()
                .filter(|n| n.saga_id == id)
                .map(|n| n.outcome.result)
                .collect()
        }

        pub fn coins(&self, w: WalletId) -> u64 {
            self.wallets[&w].balance().0
        }

        pub fn account(&self, w: WalletId) -> u64 {
            let inst = self.wallets[&w].institution;
            self.insts[inst.0 as usize].snapshot().accounts[&w]
                .balance
                .0
        }

        pub fn audit(&self) -> AuditReport {
            let snapshot = ClusterSnapshot {
                central_bank: self.cb.snapshot(),
                institutions: self.insts.iter().map(|i| i.snapshot()).collect(),
                wallets: self.wallets.values().map(|w| w.snapshot()).collect(),
                escrows: Vec::new(),
                deposited: Amount(self.deposited),
            };
            audit(&snapshot, self.queue.is_empty())
        }

        #[track_caller]
        pub fn assert_audit(&self) {
            let report = self.audit();
            assert!(report.ok(), "audit: {report:#?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{WalletCommand, WalletOp};
    use super::testkit::{Router, DEPOSIT, OUTCOME_TIMEOUT_MS};
    use super::{UpdateCommand, UpdateStep};
    use crate::institution::InstitutionCommand;
    use specie_protocol::update::{UpdateMessage, WalletParams};
    use specie_protocol::{AbortReason, Address, Amount, Payload, SagaId, WalletId};
    use specie_runtime::{Effects, StateMachine};

    const W: WalletId = WalletId(4);

    fn saga(n: u128) -> SagaId {
        SagaId::from_u128(n)
    }

    /// One institution, wallet `W` with 63.00 of coins out of its 1,000.00 deposit.
    fn funded() -> Router {
        let mut r = Router::new(1, &[4, 5]);
        r.command(
            W,
            WalletCommand::Exchange {
                saga: saga(1),
                amount: Amount(6_300),
            },
        );
        assert_eq!(r.coins(W), 6_300);
        r.assert_audit();
        r
    }

    fn update(r: &mut Router, id: SagaId) {
        r.command(W, WalletCommand::Update(UpdateCommand { saga: id }));
    }

    #[test]
    fn an_update_withdraws_the_coins_applies_the_new_parameters_and_coins_can_be_taken_out_again() {
        let mut r = funded();
        let backing =
            r.cb.snapshot()
                .reserves
                .values()
                .map(|x| x.backing.0)
                .sum::<u64>();
        assert_eq!(backing, 6_300);
        update(&mut r, saga(2));
        assert_eq!(r.outcomes(saga(2)), vec![Ok(())]);
        assert_eq!(r.coins(W), 0, "the coins went to the account");
        assert_eq!(r.account(W), DEPOSIT, "exactly once");
        assert_eq!(
            r.wallets[&W].params().version,
            WalletParams::platform_initial().version
        );
        assert_eq!(r.wallets[&W].snapshot().params_version, 2);
        assert_eq!(
            r.cb.snapshot()
                .reserves
                .values()
                .map(|x| x.backing.0)
                .sum::<u64>(),
            0,
            "backing released"
        );
        r.assert_audit();
        // Coins again, as before the update.
        r.command(
            W,
            WalletCommand::Exchange {
                saga: saga(3),
                amount: Amount(2_000),
            },
        );
        assert_eq!((r.coins(W), r.account(W)), (2_000, DEPOSIT - 2_000));
        r.assert_audit();
        // Up to date: an update changes nothing.
        update(&mut r, saga(4));
        assert_eq!(r.outcomes(saga(4)), vec![Ok(())]);
        assert_eq!((r.coins(W), r.account(W)), (2_000, DEPOSIT - 2_000));
        // A newer version published: needed again.
        let mut params = WalletParams::platform_initial();
        params.version = 3;
        r.insts[0].on_command(
            InstitutionCommand::PublishWalletParams(params),
            r.now,
            &mut Effects::default(),
        );
        update(&mut r, saga(5));
        assert_eq!(
            (r.coins(W), r.account(W), r.wallets[&W].params().version),
            (0, DEPOSIT, 3)
        );
        r.assert_audit();
    }

    #[test]
    fn an_update_interrupted_after_the_withdraw_and_retried_loses_and_doubles_nothing() {
        let mut r = funded();
        // The wallet crashes right after the withdraw is journaled: the upload never leaves.
        r.drop = Box::new(|e| {
            matches!(
                e.payload,
                Payload::WalletUpdate(UpdateMessage::Upload { .. })
            )
        });
        update(&mut r, saga(2));
        assert!(matches!(
            &r.wallets[&W].ops[&saga(2)],
            WalletOp::Update(op) if op.step == UpdateStep::Uploading && op.withdrawn == Amount(6_300)
        ));
        assert_eq!((r.coins(W), r.account(W)), (0, DEPOSIT));
        r.restart(W, 1);
        r.drop = Box::new(|_| false);
        // Retried by the user with the same saga id: resumes at the upload.
        update(&mut r, saga(2));
        assert_eq!(r.outcomes(saga(2)), vec![Ok(())]);
        assert_eq!(
            (r.coins(W), r.account(W)),
            (0, DEPOSIT),
            "withdrawn exactly once"
        );
        r.assert_audit();
        // Retried once more after it finished: the recorded outcome, nothing moves.
        update(&mut r, saga(2));
        assert_eq!(r.outcomes(saga(2)), vec![Ok(()), Ok(())]);
        assert_eq!(r.account(W), DEPOSIT);
        r.assert_audit();
    }

    #[test]
    fn a_lost_withdraw_reply_is_answered_again_from_the_record() {
        let mut r = funded();
        let mut lost = false;
        r.drop = Box::new(move |e| {
            let reply = matches!(
                e.payload,
                Payload::WalletUpdate(UpdateMessage::WithdrawReply { .. })
            );
            if reply && !lost {
                lost = true;
                return true;
            }
            false
        });
        update(&mut r, saga(2));
        assert!(r.outcomes(saga(2)).is_empty());
        assert_eq!(r.account(W), DEPOSIT, "the institution withdrew");
        assert_eq!(r.coins(W), 6_300, "the wallet does not know yet");
        r.advance(OUTCOME_TIMEOUT_MS); // the chase re-sends the same signed withdraw
        assert_eq!(r.outcomes(saga(2)), vec![Ok(())]);
        assert_eq!((r.coins(W), r.account(W)), (0, DEPOSIT));
        r.assert_audit();
    }

    #[test]
    fn an_update_is_refused_while_another_operation_is_in_flight() {
        let mut r = funded();
        // A payment whose answer never comes keeps the wallet busy.
        r.drop = Box::new(|e| e.to == Address::Wallet(WalletId(5)));
        r.command(
            W,
            WalletCommand::Pay {
                saga: saga(7),
                payee: WalletId(5),
                payee_institution: specie_protocol::InstitutionId(0),
                amount: Amount(100),
                coins: None,
            },
        );
        update(&mut r, saga(8));
        assert_eq!(r.outcomes(saga(8)), vec![Err(AbortReason::Busy)]);
        assert_eq!(r.account(W), DEPOSIT - 6_300);
    }

    #[test]
    fn a_withdraw_of_coins_not_the_wallets_is_refused_and_changes_nothing() {
        let mut r = funded();
        let other = WalletId(5);
        r.command(
            other,
            WalletCommand::Exchange {
                saga: saga(9),
                amount: Amount(1_000),
            },
        );
        let coin = r.wallets[&other].snapshot().coins[0].clone();
        let forged = specie_protocol::update::WithdrawAuthorization {
            saga_id: saga(10),
            wallet: W,
            wallet_key: super::testkit::wallet_keys(W).public_key(),
            institution: specie_protocol::InstitutionId(0),
            coin_ids: vec![coin.id],
            amount: coin.value(),
        }
        .sign(&super::testkit::wallet_keys(W));
        let env = specie_protocol::Envelope {
            message_id: 0,
            saga_id: saga(10),
            from: Address::Wallet(W),
            to: Address::Institution(specie_protocol::InstitutionId(0)),
            attempt: 0,
            trace: None,
            payload: Payload::WalletUpdate(UpdateMessage::Withdraw(forged)),
        };
        let mut out = Effects::default();
        r.insts[0].on_envelope(env, r.now, &mut out);
        assert!(matches!(
            out.sends[0].payload,
            Payload::WalletUpdate(UpdateMessage::WithdrawReply {
                result: Err(AbortReason::CoinNotOwned),
                ..
            })
        ));
        assert_eq!(r.account(W), DEPOSIT - 6_300);
        r.assert_audit();
    }

    use specie_protocol::KeyStore;
}
