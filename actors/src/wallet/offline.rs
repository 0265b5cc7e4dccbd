//! Offline payment at the wallet (DESIGN.md §3.3): pay without the network, receive a trust
//! chain, redeem chains, and sync.
//!
//! The payer pays from one coin or one chain it holds (the smallest that covers the amount):
//! it splits it into the paid part and the remainder, signs both transfers inside its key
//! store, keeps the remainder chain, and puts the payee's chain in its outbox. The hand-over
//! itself (the patents' NFC step) is local: the node takes the chain out of the outbox and
//! gives it to the payee ([`crate::Cluster::offline_pay`]). What a wallet may pay offline
//! before it syncs is bounded by its offline limit (`limits.offline_limit_fen`, and its
//! parameters' own limit when lower); a sync uploads the signed records to the wallet's
//! institution, which frees the limit, and redeems every chain the wallet holds.
//!
//! A coin split offline stays active at its issuer until a chain of it is redeemed, so the
//! wallet remembers it: it never spends it again, and while it remembers one it selects the
//! coins of its online payments itself rather than let its institution pick that coin.

use super::super::{Out, Wallet, WalletEvent};
use super::{derived_saga, HeldChain, SagaOp, SagaWalletEvent};
use serde::{Deserialize, Serialize};
use specie_protocol::crypto::PublicKey;
use specie_protocol::offline::{
    ChainId, DoubleSpend, OfflineMessage, SignedTransfer, TrustChain, SYNC_TRANSFERS_MAX,
    TRANSFERS_MAX,
};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, KeyStore, Payload, SagaId, SagaKind, WalletId,
};
use specie_runtime::{Notice, StateMachine};
use std::collections::BTreeSet;

/// The most trust chains a wallet holds at once (received and remainders); a payee at the
/// bound refuses more until it syncs.
pub const CHAINS_HELD_MAX: usize = 256;

/// Offline commands: what a user (or the node, for the hand-over) asks of the wallet.
#[derive(Debug, Clone)]
pub enum OfflineCommand {
    /// Pay `amount` to `payee` offline: sign the transfer, put the chain in the outbox.
    Pay {
        /// New saga id (names the payment and its hand-over).
        saga: SagaId,
        /// Receiving wallet.
        payee: WalletId,
        /// Its key (learnt over the proximity connection).
        payee_key: PublicKey,
        /// Amount.
        amount: Amount,
        /// Planted misbehaviour: sign the transfer out of this coin although the wallet
        /// already split it offline (an offline double spend its issuer must catch).
        reuse: Option<CoinId>,
    },
    /// The payee took the chain of payment `saga`: drop it from the outbox.
    HandedOver {
        /// The offline payment.
        saga: SagaId,
    },
    /// Take a chain handed over by a payer.
    Receive {
        /// The offline payment.
        saga: SagaId,
        /// The chain.
        chain: TrustChain,
    },
    /// Redeem one chain held at the wallet's institution.
    Redeem {
        /// New saga id.
        saga: SagaId,
        /// The chain.
        chain: ChainId,
    },
    /// Upload the offline records not yet synced and redeem every chain held.
    Sync {
        /// New saga id.
        saga: SagaId,
    },
}

/// What an offline payment was split out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfflineSource {
    /// A coin the wallet held.
    Coin(CoinId),
    /// A chain the wallet held.
    Chain(ChainId),
    /// A coin the wallet had already split offline (planted double spend).
    Reused(CoinId),
}

/// What audits and reports read of a wallet's offline state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflineSnapshot {
    /// The offline limit in force (the config's, or the parameters' when lower).
    pub limit: Amount,
    /// Paid offline to other wallets since the last acknowledged sync.
    pub unsynced: Amount,
    /// The last offline sequence number used.
    pub sequence: u64,
    /// Chains held, not redeemed yet (received ones and the wallet's remainders).
    pub chains: Vec<TrustChain>,
    /// Chains signed for payees and not yet handed over, by offline payment.
    pub outbox: Vec<(SagaId, TrustChain)>,
    /// Coins split offline, which the wallet no longer holds though their issuer may still
    /// show them active.
    pub spent_offline: Vec<CoinId>,
    /// This wallet's redemptions refused as offline double spends.
    pub double_spends_detected: u64,
    /// The latest attributions of those double spends.
    pub double_spend_reports: Vec<DoubleSpend>,
    /// Merges, splits, redemptions and syncs in flight.
    pub pending: usize,
}

impl Wallet {
    /// The offline limit in force: the configured one, or the wallet parameters' when lower;
    /// `None` when the parameters do not support offline payments.
    fn offline_limit(&self) -> Option<Amount> {
        let params = self.params.capabilities.offline_limit?;
        Some(params.min(self.sagas.settings.offline_limit))
    }

    /// Paid offline to other wallets and not yet on record at the institution.
    fn offline_unsynced(&self) -> Amount {
        let me = self.keys.public_key();
        Amount::sum(
            self.sagas
                .unsynced
                .iter()
                .filter(|t| t.record.to_key != me)
                .map(|t| t.record.amount),
        )
        .expect("bounded by the offline limit")
    }

    /// The offline records to upload next, in sequence order (at most a message's worth).
    pub(super) fn upload_batch(&self) -> Vec<SignedTransfer> {
        self.sagas
            .unsynced
            .iter()
            .take(SYNC_TRANSFERS_MAX)
            .cloned()
            .collect()
    }

    /// The offline records not yet synced, encoded (for an upload that carries them opaquely,
    /// such as the wallet update's).
    pub(in super::super) fn offline_records_encoded(&self) -> Vec<Vec<u8>> {
        self.upload_batch()
            .iter()
            .map(SignedTransfer::to_bytes)
            .collect()
    }

    /// The institution took the first `accepted` records of [`Wallet::offline_records_encoded`]
    /// (an upload other than a sync's, such as the wallet update's): they are synced, which
    /// frees the offline limit they used.
    #[allow(dead_code)] // for the wallet update's upload reply
    pub(in super::super) fn offline_records_uploaded(&mut self, accepted: usize, out: &mut Out) {
        let batch = accepted
            .min(SYNC_TRANSFERS_MAX)
            .min(self.sagas.unsynced.len());
        let Some(last) = batch.checked_sub(1).map(|i| &self.sagas.unsynced[i]) else {
            return;
        };
        let sequence = last.record.sequence;
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::Synced {
                saga: SagaId::NONE,
                sequence,
            }),
            out,
        );
    }

    /// `WalletCommand::Offline`.
    pub(in super::super) fn on_offline_command(
        &mut self,
        command: OfflineCommand,
        now_ms: u64,
        out: &mut Out,
    ) {
        self.prune_offline(now_ms, out);
        match command {
            OfflineCommand::Pay {
                saga,
                payee,
                payee_key,
                amount,
                reuse,
            } => self.offline_pay(saga, (payee, payee_key), amount, reuse, now_ms, out),
            OfflineCommand::HandedOver { saga } => {
                if self.sagas.outbox.contains_key(&saga) {
                    self.record(
                        WalletEvent::Sagas(SagaWalletEvent::HandedOver { saga }),
                        out,
                    );
                }
            }
            OfflineCommand::Receive { saga, chain } => {
                self.receive_offline(saga, chain, now_ms, out)
            }
            OfflineCommand::Redeem { saga, chain } => {
                if self.saga_taken(&saga) {
                    return self.refuse(saga, SagaKind::OfflineRedeem, AbortReason::Conflict, out);
                }
                match self.sagas.chains.get(&chain) {
                    None => {
                        self.refuse(saga, SagaKind::OfflineRedeem, AbortReason::CoinUnknown, out)
                    }
                    Some(held) if held.redeeming.is_some() => {
                        self.refuse(saga, SagaKind::OfflineRedeem, AbortReason::Busy, out)
                    }
                    Some(_) => self.start_redeem(saga, chain, None, out),
                }
            }
            OfflineCommand::Sync { saga } => self.start_sync(saga, out),
        }
    }

    fn offline_notice(&self, saga: SagaId, result: Result<(), AbortReason>, out: &mut Out) {
        out.notice(Notice {
            saga_id: saga,
            source: Address::Wallet(self.id),
            outcome: specie_protocol::envelope::SagaOutcome {
                kind: SagaKind::OfflinePay,
                result,
                spent_coin_ids: Vec::new(),
                decided_at_ms: 0,
            },
        });
    }

    /// The payer's rule for an offline payment: what it pays from, or why it cannot pay.
    fn offline_source(
        &self,
        amount: Amount,
        reuse: Option<CoinId>,
    ) -> Result<(OfflineSource, TrustChain), AbortReason> {
        if let Some(coin) = reuse {
            let (coin, _) = self
                .sagas
                .spent_offline
                .get(&coin)
                .ok_or(AbortReason::CoinNotOwned)?;
            if coin.value() < amount {
                return Err(AbortReason::InsufficientFunds);
            }
            return Ok((
                OfflineSource::Reused(coin.id),
                TrustChain::of_coin(coin.clone()),
            ));
        }
        let busy = self.coins_in_flight();
        let coin = self
            .coins
            .values()
            .filter(|c| c.value() >= amount && !busy.contains(&c.id))
            .min_by_key(|c| (c.value(), c.id))
            .map(|c| {
                (
                    c.value(),
                    OfflineSource::Coin(c.id),
                    TrustChain::of_coin(c.clone()),
                )
            });
        let chain = self
            .sagas
            .chains
            .iter()
            .filter(|(_, h)| {
                h.redeeming.is_none()
                    && h.chain.value() >= amount
                    && h.chain.transfers.len() < TRANSFERS_MAX
            })
            .min_by_key(|(id, h)| (h.chain.value(), **id))
            .map(|(id, h)| (h.chain.value(), OfflineSource::Chain(*id), h.chain.clone()));
        match (coin, chain) {
            (Some(c), Some(h)) => Ok(if h.0 < c.0 { (h.1, h.2) } else { (c.1, c.2) }),
            (Some(c), None) => Ok((c.1, c.2)),
            (None, Some(h)) => Ok((h.1, h.2)),
            (None, None) => Err(AbortReason::InsufficientFunds),
        }
    }

    fn offline_pay(
        &mut self,
        saga: SagaId,
        payee: (WalletId, PublicKey),
        amount: Amount,
        reuse: Option<CoinId>,
        now_ms: u64,
        out: &mut Out,
    ) {
        let refuse = |w: &Self, reason, out: &mut Out| w.offline_notice(saga, Err(reason), out);
        if self.saga_taken(&saga) {
            return refuse(self, AbortReason::Conflict, out);
        }
        if amount.is_zero() {
            return refuse(self, AbortReason::InvalidAmount, out);
        }
        if payee.0 == self.id || payee.1 == self.keys.public_key() {
            return refuse(self, AbortReason::PayeeMismatch, out);
        }
        let Some(limit) = self.offline_limit() else {
            return refuse(self, AbortReason::OfflineUnsupported, out);
        };
        if self
            .offline_unsynced()
            .checked_add(amount)
            .is_none_or(|total| total > limit)
        {
            return refuse(self, AbortReason::OfflineLimit, out);
        }
        if self.spending_in_flight() {
            // An online payment may be about to spend the coin this one would split.
            return refuse(self, AbortReason::Busy, out);
        }
        let (source, from) = match self.offline_source(amount, reuse) {
            Ok(found) => found,
            Err(reason) => return refuse(self, reason, out),
        };
        let (paid, remainder) = from.split(
            self.keys.as_ref(),
            self.id,
            payee,
            amount,
            self.sagas.sequence + 1,
        );
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OfflineSigned {
                saga,
                source,
                paid,
                remainder,
                at_ms: now_ms,
            }),
            out,
        );
        self.offline_notice(saga, Ok(()), out);
    }

    fn receive_offline(&mut self, saga: SagaId, chain: TrustChain, now_ms: u64, out: &mut Out) {
        if self
            .finished
            .get(&saga)
            .is_some_and(|(result, _)| result.is_ok())
            && !self.sagas.ops.contains_key(&saga)
        {
            // A repeated hand-over (the chain may even be redeemed by now).
            return self.offline_notice(saga, Ok(()), out);
        }
        if self.saga_taken(&saga) {
            return self.offline_notice(saga, Err(AbortReason::Conflict), out);
        }
        let checked = if chain.transfers.is_empty() {
            Err(AbortReason::EmptyRequest)
        } else if chain.holder() != Some(self.id) || chain.holder_key() != self.keys.public_key() {
            Err(AbortReason::PayeeMismatch)
        } else if self.sagas.chains.len() >= CHAINS_HELD_MAX {
            Err(AbortReason::Busy)
        } else {
            // What the payee can check offline: the coin's issuer signature and every
            // transfer's. A double spend only its issuer can see.
            match self.issuers.get(&chain.coin.body.issuer) {
                Some(key) => chain.verify(key),
                None => Err(AbortReason::WrongIssuer),
            }
        };
        if let Err(reason) = checked {
            metrics::counter!("specie_offline_chains_refused_total").increment(1);
            return self.offline_notice(saga, Err(reason), out);
        }
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::ChainReceived {
                saga,
                chain,
                at_ms: now_ms,
            }),
            out,
        );
        self.offline_notice(saga, Ok(()), out);
    }

    fn start_redeem(&mut self, saga: SagaId, chain: ChainId, sync: Option<SagaId>, out: &mut Out) {
        let held = self.sagas.chains[&chain].chain.clone();
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OpStarted {
                saga,
                op: SagaOp::Redeem { chain, sync },
            }),
            out,
        );
        let request = Payload::Offline(OfflineMessage::RedeemRequest(held));
        out.send(self.envelope(saga, Address::Institution(self.institution), 0, request));
        out.timer(
            self.limits.outcome_timeout_ms,
            super::super::WalletTimer { saga, attempt: 1 },
        );
    }

    fn start_sync(&mut self, saga: SagaId, out: &mut Out) {
        if self.saga_taken(&saga) {
            return self.refuse(saga, SagaKind::OfflineSync, AbortReason::Conflict, out);
        }
        let batch = self.upload_batch();
        let uploaded_to = batch.iter().map(|t| t.record.sequence).max().unwrap_or(0);
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::OpStarted {
                saga,
                op: SagaOp::Sync {
                    uploaded_to,
                    upload_done: batch.is_empty(),
                    redemptions: BTreeSet::new(),
                },
            }),
            out,
        );
        if !batch.is_empty() {
            let sync = Payload::Offline(OfflineMessage::Sync { transfers: batch });
            out.send(self.envelope(saga, Address::Institution(self.institution), 0, sync));
        }
        let idle: Vec<ChainId> = self
            .sagas
            .chains
            .iter()
            .filter(|(_, h)| h.redeeming.is_none())
            .map(|(id, _)| *id)
            .collect();
        for chain in idle {
            let redemption = derived_saga(b"specie/v1/offline-sync-redeem", saga, &chain.0);
            if !self.saga_taken(&redemption) {
                self.start_redeem(redemption, chain, Some(saga), out);
            }
        }
        out.timer(
            self.limits.outcome_timeout_ms,
            super::super::WalletTimer { saga, attempt: 1 },
        );
        // Nothing to upload and nothing to redeem: done at once.
        self.finish_saga(saga, Ok(()), out);
    }

    pub(super) fn on_sync_ack(&mut self, saga: SagaId, sequence: u64, out: &mut Out) {
        if !matches!(
            self.sagas.ops.get(&saga),
            Some(SagaOp::Sync {
                upload_done: false,
                ..
            })
        ) {
            return;
        }
        self.record(
            WalletEvent::Sagas(SagaWalletEvent::Synced { saga, sequence }),
            out,
        );
        let more = matches!(
            self.sagas.ops.get(&saga),
            Some(SagaOp::Sync {
                upload_done: false,
                ..
            })
        );
        if more {
            // More records than one message carries: upload the next batch.
            if let Some(request) = self.saga_request(saga, 0) {
                out.send(request);
            }
        } else {
            self.finish_saga(saga, Ok(()), out);
        }
    }

    /// Forgets coins split offline longer ago than the deduplication retention: by then
    /// every chain of them is redeemed or worthless.
    fn prune_offline(&mut self, now_ms: u64, out: &mut Out) {
        let horizon = now_ms.saturating_sub(self.limits.dedup_retention_ms);
        let coins: Vec<CoinId> = self
            .sagas
            .spent_offline
            .iter()
            .filter(|(_, (_, at))| *at < horizon)
            .map(|(id, _)| *id)
            .collect();
        if !coins.is_empty() {
            self.record(WalletEvent::Sagas(SagaWalletEvent::Pruned { coins }), out);
        }
    }

    /// Applies the offline events (`apply_sagas` applies the others).
    pub(super) fn apply_offline(&mut self, event: &SagaWalletEvent) {
        match event {
            SagaWalletEvent::OfflineSigned {
                saga,
                source,
                paid,
                remainder,
                at_ms,
            } => {
                match source {
                    OfflineSource::Coin(id) => {
                        let coin = self
                            .coins
                            .remove(id)
                            .expect("the payer held the coin it split");
                        self.sagas.spent_offline.insert(*id, (coin, *at_ms));
                    }
                    OfflineSource::Chain(id) => {
                        self.sagas.chains.remove(id);
                    }
                    OfflineSource::Reused(_) => {}
                }
                let mut sequence = self.sagas.sequence;
                for chain in std::iter::once(paid).chain(remainder) {
                    let t = chain
                        .transfers
                        .last()
                        .expect("a split adds a transfer")
                        .clone();
                    sequence = sequence.max(t.record.sequence);
                    self.sagas.unsynced.push(t);
                }
                self.sagas.sequence = sequence;
                self.sagas.outbox.insert(*saga, paid.clone());
                if let Some(rest) = remainder {
                    self.sagas.chains.insert(
                        rest.id(),
                        HeldChain {
                            chain: rest.clone(),
                            redeeming: None,
                        },
                    );
                }
                self.finished.insert(*saga, (Ok(()), *at_ms));
            }
            SagaWalletEvent::HandedOver { saga } => {
                self.sagas.outbox.remove(saga);
            }
            SagaWalletEvent::ChainReceived { saga, chain, at_ms } => {
                self.sagas.chains.insert(
                    chain.id(),
                    HeldChain {
                        chain: chain.clone(),
                        redeeming: None,
                    },
                );
                self.finished.insert(*saga, (Ok(()), *at_ms));
            }
            SagaWalletEvent::Synced { saga, sequence } => {
                // One borrow of the book, so that its fields are borrowed apart.
                let book = &mut *self.sagas;
                book.unsynced.retain(|t| t.record.sequence > *sequence);
                if let Some(SagaOp::Sync {
                    uploaded_to,
                    upload_done,
                    ..
                }) = book.ops.get_mut(saga)
                {
                    if *sequence >= *uploaded_to {
                        // Whatever remains unsynced (records beyond one message) goes next.
                        match book
                            .unsynced
                            .iter()
                            .take(SYNC_TRANSFERS_MAX)
                            .map(|t| t.record.sequence)
                            .max()
                        {
                            Some(next) => *uploaded_to = next,
                            None => *upload_done = true,
                        }
                    }
                }
            }
            SagaWalletEvent::Pruned { coins } => {
                for id in coins {
                    self.sagas.spent_offline.remove(id);
                }
            }
            SagaWalletEvent::OpStarted { .. }
            | SagaWalletEvent::OpFinished { .. }
            | SagaWalletEvent::DoubleSpendReported { .. } => {
                unreachable!("applied by apply_sagas")
            }
        }
    }

    /// The offline part of the snapshot.
    pub(in super::super) fn offline_snapshot(&self) -> OfflineSnapshot {
        let s = &self.sagas;
        OfflineSnapshot {
            limit: self.offline_limit().unwrap_or(Amount::ZERO),
            unsynced: self.offline_unsynced(),
            sequence: s.sequence,
            chains: s.chains.values().map(|h| h.chain.clone()).collect(),
            outbox: s
                .outbox
                .iter()
                .map(|(saga, c)| (*saga, c.clone()))
                .collect(),
            spent_offline: s.spent_offline.keys().copied().collect(),
            double_spends_detected: s.double_spends_detected,
            double_spend_reports: s.reports.iter().map(|(_, d)| d.clone()).collect(),
            pending: s.ops.len(),
        }
    }
}
