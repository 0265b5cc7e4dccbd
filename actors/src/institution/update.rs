//! The institution as its wallets' trusted platform (DESIGN.md §3.5): it publishes versioned
//! wallet parameters, tells a wallet whether it needs an update, takes its coins back into its
//! account (withdraw: coins retired, account credited, backing released to free reserve at the
//! central bank), takes its offline records, and hands out the update instruction.
//!
//! [`Institution::check_withdraw`] is the rule for a withdraw. A withdraw is keyed by the
//! update's saga id: a repeat gets the recorded answer, another withdraw under the same id is a
//! conflict. The wallet drives retries; the institution answers a withdraw once the central
//! bank has released the backing, resending the release on every repeat until then.

use super::{CoinState, Institution, InstitutionEvent, Out};
use crate::reconciler::Movement;
use serde::{Deserialize, Serialize};
use specie_protocol::reconcile::RecordKind;
use specie_protocol::update::{SignedWithdraw, UpdateMessage, WalletParams, WITHDRAW_COINS_MAX};
use specie_protocol::{AbortReason, Address, Amount, CoinId, Payload, SagaId, WalletId};
use specie_runtime::StateMachine;
use std::collections::HashMap;

/// Where a withdraw stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WithdrawState {
    /// Refused; nothing changed.
    Refused(AbortReason),
    /// Coins retired and account credited; `backed` once the central bank released the
    /// backing.
    Done {
        /// The central bank released the backing.
        backed: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Withdrawal {
    wallet: WalletId,
    digest: [u8; 32],
    coin_ids: Vec<CoinId>,
    amount: Amount,
    state: WithdrawState,
    /// When the coins were retired (0 when refused): the time of the withdraw's record.
    at_ms: u64,
}

/// The platform's state: the parameters it publishes and the withdraws it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    params: WalletParams,
    withdrawals: HashMap<SagaId, Withdrawal>,
    /// Offline records uploaded by wallets, by update saga (a repeated upload counts once).
    uploads: HashMap<SagaId, u32>,
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            params: WalletParams::platform_initial(),
            withdrawals: HashMap::new(),
            uploads: HashMap::new(),
        }
    }
}

/// Journaled facts of the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlatformEvent {
    /// New wallet parameters were published.
    ParamsPublished {
        /// The parameters.
        params: WalletParams,
    },
    /// A withdraw retired the coins and credited the account.
    Withdrawn {
        /// The update saga.
        saga: SagaId,
        /// The wallet.
        wallet: WalletId,
        /// Digest of the request.
        digest: [u8; 32],
        /// The coins retired.
        coin_ids: Vec<CoinId>,
        /// Credited.
        amount: Amount,
        /// When.
        at_ms: u64,
    },
    /// A withdraw was refused (recorded so a repeat gets the same answer).
    WithdrawRefused {
        /// The update saga.
        saga: SagaId,
        /// The wallet.
        wallet: WalletId,
        /// Digest of the request.
        digest: [u8; 32],
        /// Why.
        reason: AbortReason,
    },
    /// The central bank released a withdraw's backing.
    WithdrawBacked {
        /// The update saga.
        saga: SagaId,
    },
    /// A wallet uploaded its offline records.
    OfflineUploaded {
        /// The update saga.
        saga: SagaId,
        /// How many.
        records: u32,
    },
}

/// A withdraw as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawalSummary {
    /// The wallet.
    pub wallet: WalletId,
    /// The coins retired (empty when refused).
    pub coin_ids: Vec<CoinId>,
    /// Credited to the account.
    pub amount: Amount,
    /// Where it stands.
    pub state: WithdrawState,
}

impl Platform {
    /// The parameters published now.
    pub fn params(&self) -> &WalletParams {
        &self.params
    }

    /// The withdraws, for snapshots.
    pub fn withdrawal_summaries(&self) -> HashMap<SagaId, WithdrawalSummary> {
        self.withdrawals
            .iter()
            .map(|(saga, w)| {
                (
                    *saga,
                    WithdrawalSummary {
                        wallet: w.wallet,
                        coin_ids: w.coin_ids.clone(),
                        amount: w.amount,
                        state: w.state,
                    },
                )
            })
            .collect()
    }

    /// Offline records uploaded so far.
    pub fn records_uploaded(&self) -> u64 {
        self.uploads.values().map(|n| u64::from(*n)).sum()
    }
}

impl Institution {
    fn update_send(&self, saga: SagaId, to: Address, message: UpdateMessage, out: &mut Out) {
        out.send(self.envelope(saga, to, 0, Payload::WalletUpdate(message)));
    }

    /// The rule for "may these coins be withdrawn to this account?": everything checked before
    /// the coins are retired, in order. Changes nothing; the answer is the amount to credit.
    pub fn check_withdraw(
        &self,
        from: Address,
        signed: &SignedWithdraw,
    ) -> Result<Amount, AbortReason> {
        let a = &signed.authorization;
        if from != Address::Wallet(a.wallet) {
            return Err(AbortReason::WrongParty);
        }
        if a.institution != self.id {
            return Err(AbortReason::WrongIssuer);
        }
        if a.coin_ids.is_empty() || a.amount.is_zero() {
            return Err(AbortReason::InvalidAmount);
        }
        if a.coin_ids.len() > WITHDRAW_COINS_MAX {
            return Err(AbortReason::TooManyCoins);
        }
        let total = self.check_spendable(a.wallet, &a.wallet_key, &a.coin_ids, || {
            signed.verify().is_ok()
        })?;
        if total != a.amount {
            return Err(AbortReason::InvalidAmount);
        }
        Ok(total)
    }

    /// Routes a wallet update message addressed to this institution.
    pub(super) fn on_update_message(
        &mut self,
        from: Address,
        saga: SagaId,
        message: UpdateMessage,
        now_ms: u64,
        out: &mut Out,
    ) {
        let Address::Wallet(wallet) = from else {
            metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                .increment(1);
            return;
        };
        match message {
            UpdateMessage::Check { params_version } => {
                let latest = self.platform.params.version;
                let reply = UpdateMessage::CheckReply {
                    needed: params_version < latest,
                    latest_version: latest,
                };
                self.update_send(saga, from, reply, out);
            }
            UpdateMessage::Withdraw(signed) => self.on_withdraw(from, saga, signed, now_ms, out),
            UpdateMessage::Upload { records } => {
                // Hook: the records are taken and counted here; redeeming offline transfer
                // records is the offline payment saga's work.
                let count = u32::try_from(records.len()).expect("uploads are bounded");
                if !self.platform.uploads.contains_key(&saga) {
                    self.record(
                        InstitutionEvent::Update(PlatformEvent::OfflineUploaded {
                            saga,
                            records: count,
                        }),
                        out,
                    );
                }
                let accepted = self.platform.uploads[&saga];
                self.update_send(saga, from, UpdateMessage::UploadReply { accepted }, out);
            }
            UpdateMessage::Request { .. } => {
                let Some(account) = self.accounts.get(&wallet) else {
                    metrics::counter!("specie_envelopes_rejected_total", "reason" => "unknown_wallet").increment(1);
                    return;
                };
                let reply = UpdateMessage::Instruction {
                    account_balance: account.balance,
                    params: self.platform.params.clone(),
                };
                self.update_send(saga, from, reply, out);
            }
            _ => {
                metrics::counter!("specie_envelopes_rejected_total", "reason" => "unexpected")
                    .increment(1);
            }
        }
    }

    fn on_withdraw(
        &mut self,
        from: Address,
        saga: SagaId,
        signed: SignedWithdraw,
        now_ms: u64,
        out: &mut Out,
    ) {
        let refused = |reason| UpdateMessage::WithdrawReply {
            result: Err(reason),
            decided_at_ms: 0,
        };
        let digest = signed.digest();
        if let Some(w) = self.platform.withdrawals.get(&saga) {
            match w.state {
                _ if w.digest != digest => {
                    self.update_send(saga, from, refused(AbortReason::Conflict), out)
                }
                WithdrawState::Refused(reason) => {
                    self.update_send(saga, from, refused(reason), out)
                }
                WithdrawState::Done { backed: true } => {
                    let reply = UpdateMessage::WithdrawReply {
                        result: Ok(w.amount),
                        decided_at_ms: w.at_ms,
                    };
                    self.update_send(saga, from, reply, out)
                }
                WithdrawState::Done { backed: false } => self.release_backing(saga, w.amount, out),
            }
            return;
        }
        let a = &signed.authorization;
        if signed.authorization.saga_id != saga {
            self.update_send(saga, from, refused(AbortReason::Conflict), out);
            return;
        }
        match self.check_withdraw(from, &signed) {
            Ok(amount) => {
                self.record(
                    InstitutionEvent::Update(PlatformEvent::Withdrawn {
                        saga,
                        wallet: a.wallet,
                        digest,
                        coin_ids: a.coin_ids.clone(),
                        amount,
                        at_ms: now_ms,
                    }),
                    out,
                );
                // Coins back into the wallet's own account.
                Movement {
                    saga,
                    kind: RecordKind::Withdraw,
                    payer: a.wallet,
                    payee: a.wallet,
                    amount,
                    at_ms: now_ms,
                }
                .emit(self.id, out);
                self.release_backing(saga, amount, out);
            }
            Err(reason) => {
                if reason == AbortReason::WrongParty {
                    // Not the wallet's request: answer, but record nothing under its saga.
                    self.update_send(saga, from, refused(reason), out);
                    return;
                }
                self.record(
                    InstitutionEvent::Update(PlatformEvent::WithdrawRefused {
                        saga,
                        wallet: a.wallet,
                        digest,
                        reason,
                    }),
                    out,
                );
                self.update_send(saga, from, refused(reason), out);
            }
        }
    }

    fn release_backing(&self, saga: SagaId, amount: Amount, out: &mut Out) {
        out.send(self.envelope(
            saga,
            Address::CentralBank,
            0,
            Payload::ReleaseBacking { amount },
        ));
    }

    /// Whether a central bank answer for `saga` is about a withdraw made here.
    pub(super) fn is_withdrawal(&self, saga: &SagaId) -> bool {
        self.platform.withdrawals.contains_key(saga)
    }

    /// The central bank released (or refused to release) a withdraw's backing.
    pub(super) fn on_withdraw_backing(
        &mut self,
        saga: SagaId,
        ack: Result<(), AbortReason>,
        out: &mut Out,
    ) {
        let Some(w) = self.platform.withdrawals.get(&saga) else {
            return;
        };
        match (ack, w.state) {
            (Ok(()), WithdrawState::Done { backed: false }) => {
                let (wallet, amount, at_ms) = (w.wallet, w.amount, w.at_ms);
                self.record(
                    InstitutionEvent::Update(PlatformEvent::WithdrawBacked { saga }),
                    out,
                );
                let reply = UpdateMessage::WithdrawReply {
                    result: Ok(amount),
                    decided_at_ms: at_ms,
                };
                self.update_send(saga, Address::Wallet(wallet), reply, out);
            }
            (Ok(()), _) => {}
            (Err(reason), _) => {
                metrics::counter!("specie_protocol_violations_total", "what" => "backing_refused")
                    .increment(1);
                eprintln!(
                    "{}: central bank refused backing release of withdraw {saga}: {reason}",
                    self.id
                );
            }
        }
    }

    /// Publishes new wallet parameters (a local command of the platform's operator). Only a
    /// newer version replaces the current one.
    pub(super) fn publish_params(&mut self, params: WalletParams, out: &mut Out) {
        if params.version > self.platform.params.version {
            self.record(
                InstitutionEvent::Update(PlatformEvent::ParamsPublished { params }),
                out,
            );
        }
    }

    /// Applies a platform event (called from `apply`).
    pub(super) fn apply_update(&mut self, event: &PlatformEvent) {
        match event {
            PlatformEvent::ParamsPublished { params } => self.platform.params = params.clone(),
            PlatformEvent::Withdrawn {
                saga,
                wallet,
                digest,
                coin_ids,
                amount,
                at_ms,
            } => {
                for id in coin_ids {
                    self.set_state(id, CoinState::Spent(*saga));
                    self.undelivered.remove(id);
                }
                let account = self
                    .accounts
                    .get_mut(wallet)
                    .expect("withdraw checked the account");
                account.balance = account
                    .balance
                    .checked_add(*amount)
                    .expect("supply fits u64");
                self.platform.withdrawals.insert(
                    *saga,
                    Withdrawal {
                        wallet: *wallet,
                        digest: *digest,
                        coin_ids: coin_ids.clone(),
                        amount: *amount,
                        state: WithdrawState::Done { backed: false },
                        at_ms: *at_ms,
                    },
                );
            }
            PlatformEvent::WithdrawRefused {
                saga,
                wallet,
                digest,
                reason,
            } => {
                self.platform.withdrawals.insert(
                    *saga,
                    Withdrawal {
                        wallet: *wallet,
                        digest: *digest,
                        coin_ids: Vec::new(),
                        amount: Amount::ZERO,
                        state: WithdrawState::Refused(*reason),
                        at_ms: 0,
                    },
                );
            }
            PlatformEvent::WithdrawBacked { saga } => {
                if let Some(w) = self.platform.withdrawals.get_mut(saga) {
                    w.state = WithdrawState::Done { backed: true };
                }
            }
            PlatformEvent::OfflineUploaded { saga, records } => {
                self.platform.uploads.insert(*saga, *records);
            }
        }
    }
}
