//! A hand-driven world for the merge, split and offline tests: real institutions and a real
//! central bank, with every envelope between them held in a queue the test controls —
//! delivered in order, duplicated, reordered or dropped — and timers fired by hand. Envelopes
//! to wallets are collected, so a test sees the outcomes and coins a wallet would get. The
//! audit runs over the world's snapshot (without wallets: the holdings check is the wallet
//! and cluster tests' business).

use super::{
    Institution, InstitutionCommand, InstitutionEvent, InstitutionLimits, InstitutionSnapshot,
    InstitutionTimer,
};
use crate::audit::{audit, AuditReport};
use crate::central_bank::{CentralBank, CentralBankCommand};
use crate::cluster::ClusterSnapshot;
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::merge::{CoinRef, MergeAuthorization, MergeMessage, SignedMergeAuthorization};
use specie_protocol::offline::{OfflineMessage, SplitAuthorization, TrustChain};
use specie_protocol::{
    Address, Amount, Coin, CoinId, Envelope, InstitutionId, KeyStore, Payload, PublicKey, SagaId,
    SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub const NOW_MS: u64 = 1_000;
pub const TTL_MS: u64 = 10_000;
pub const SAGA_TIMEOUT_MS: u64 = 5_000;
pub const DEPOSIT: Amount = Amount(100_000);

pub fn limits() -> InstitutionLimits {
    InstitutionLimits {
        saga_timeout_ms: SAGA_TIMEOUT_MS,
        retry_interval_ms: 100,
        retry_interval_max_ms: 800,
        coin_inputs_max: 8,
        denominations: vec![Amount(5_000), Amount(1_000), Amount(200)],
        dedup_retention_ms: 60_000,
    }
}

pub fn saga(n: u128) -> SagaId {
    SagaId::from_u128(n)
}

pub fn institution_keys(id: InstitutionId) -> SoftKeyStore {
    SoftKeyStore::from_seed([100 + u8::try_from(id.0).expect("small id"); 32])
}

pub fn wallet_keys(id: WalletId) -> SoftKeyStore {
    SoftKeyStore::from_seed([u8::try_from(id.0).expect("small id"); 32])
}

pub fn key_of(id: WalletId) -> PublicKey {
    wallet_keys(id).public_key()
}

/// An institution and its journal.
pub struct Node {
    pub inst: Institution,
    pub journal: Vec<InstitutionEvent>,
}

/// Institutions `0..n`, the central bank, and what travels between them.
pub struct World {
    pub nodes: BTreeMap<InstitutionId, Node>,
    pub bank: CentralBank,
    /// Envelopes in flight between institutions and the central bank.
    pub queue: VecDeque<Envelope>,
    /// Envelopes delivered to wallets (or external clients).
    pub inbox: Vec<Envelope>,
    /// Timers armed, in order: (institution, key).
    pub timers: Vec<(InstitutionId, InstitutionTimer)>,
    pub notices: Vec<Notice>,
    pub deposited: Amount,
    minted: BTreeMap<InstitutionId, Amount>,
    funded: bool,
}

impl World {
    pub fn new(institutions: u32) -> World {
        let mut nodes = BTreeMap::new();
        for i in 0..institutions {
            let id = InstitutionId(i);
            let inst = Institution::new(id, Arc::new(institution_keys(id)), Arc::new(limits()))
                .with_institutions(institutions);
            nodes.insert(
                id,
                Node {
                    inst,
                    journal: Vec::new(),
                },
            );
        }
        World {
            nodes,
            bank: CentralBank::new(60_000),
            queue: VecDeque::new(),
            inbox: Vec::new(),
            timers: Vec::new(),
            notices: Vec::new(),
            deposited: Amount::ZERO,
            minted: BTreeMap::new(),
            funded: false,
        }
    }

    pub fn node(&self, id: InstitutionId) -> &Institution {
        &self.nodes[&id].inst
    }

    pub fn snapshot_of(&self, id: InstitutionId) -> InstitutionSnapshot {
        self.node(id).snapshot()
    }

    fn absorb(&mut self, at: InstitutionId, mut out: Effects<InstitutionEvent, InstitutionTimer>) {
        // The host seals the coins of a step's messages as they leave.
        self.nodes[&at].inst.seal(&mut out.sends);
        self.nodes
            .get_mut(&at)
            .expect("known")
            .journal
            .extend(out.events);
        for e in out.sends {
            match e.to {
                Address::Institution(_) | Address::CentralBank => self.queue.push_back(e),
                _ => self.inbox.push(e),
            }
        }
        self.timers
            .extend(out.timers.into_iter().map(|(_, t)| (at, t)));
        self.notices.extend(out.notices);
    }

    /// Opens `wallet`'s account at `at` (minting its deposit to the institution).
    pub fn open(&mut self, wallet: WalletId, at: InstitutionId) {
        let mut out = Effects::default();
        let command = InstitutionCommand::OpenAccount {
            wallet,
            key: key_of(wallet),
            deposit: DEPOSIT,
        };
        self.nodes
            .get_mut(&at)
            .expect("known")
            .inst
            .on_command(command, 0, &mut out);
        self.absorb(at, out);
        assert!(!self.funded, "open every account before the first exchange");
        let minted = self.minted.entry(at).or_default();
        *minted = minted.checked_add(DEPOSIT).expect("fits");
        self.deposited = self.deposited.checked_add(DEPOSIT).expect("fits");
    }

    /// The central bank mints every institution its customers' deposits (once).
    fn fund(&mut self) {
        if std::mem::replace(&mut self.funded, true) {
            return;
        }
        let mut out = Effects::default();
        for (inst, amount) in &self.minted {
            let mint = CentralBankCommand::Mint {
                institution: *inst,
                amount: *amount,
            };
            self.bank.on_command(mint, 0, &mut out);
        }
    }

    /// Exchanges `amount` of `wallet`'s account at `at` into coins (of the fixture's
    /// denominations) and returns them.
    pub fn exchange(
        &mut self,
        wallet: WalletId,
        at: InstitutionId,
        id: SagaId,
        amount: Amount,
    ) -> Vec<Coin> {
        self.fund();
        self.send(
            Address::Wallet(wallet),
            Address::Institution(at),
            id,
            Payload::ExchangeRequest { amount },
        );
        self.run();
        let coins = self.coins_to(wallet);
        self.inbox.clear();
        coins
    }

    /// Puts an envelope on the wire (from a wallet or an external client).
    pub fn send(&mut self, from: Address, to: Address, saga: SagaId, payload: Payload) {
        self.queue.push_back(Envelope {
            message_id: 0,
            saga_id: saga,
            from,
            to,
            attempt: 0,
            trace: None,
            payload,
        });
    }

    /// Delivers one envelope.
    pub fn deliver(&mut self, e: Envelope) {
        let mut out = Effects::default();
        match e.to {
            Address::Institution(id) => {
                self.nodes
                    .get_mut(&id)
                    .expect("known")
                    .inst
                    .on_envelope(e, NOW_MS, &mut out);
                self.absorb(id, out);
            }
            Address::CentralBank => {
                let mut bank_out = Effects::default();
                self.bank.on_envelope(e, NOW_MS, &mut bank_out);
                for reply in bank_out.sends {
                    self.queue.push_back(reply);
                }
            }
            _ => self.inbox.push(e),
        }
    }

    /// Delivers everything in flight, in order, until nothing is left.
    pub fn run(&mut self) {
        let mut steps = 0;
        while let Some(e) = self.queue.pop_front() {
            self.deliver(e);
            steps += 1;
            assert!(steps < 10_000, "the world does not go quiet");
        }
    }

    /// Delivers everything in flight twice (each envelope followed by its duplicate).
    pub fn run_duplicated(&mut self) {
        let mut steps = 0;
        while let Some(e) = self.queue.pop_front() {
            self.deliver(e.clone());
            self.deliver(e);
            steps += 1;
            assert!(steps < 10_000, "the world does not go quiet");
        }
    }

    /// Delivers everything in flight in a shuffled order (seeded).
    pub fn run_shuffled(&mut self, seed: u64) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut steps = 0;
        while !self.queue.is_empty() {
            let mut batch: Vec<Envelope> = self.queue.drain(..).collect();
            batch.shuffle(&mut rng);
            for e in batch {
                self.deliver(e);
                steps += 1;
            }
            assert!(steps < 10_000, "the world does not go quiet");
        }
    }

    /// Drops the envelopes in flight that match.
    pub fn drop_where(&mut self, f: impl Fn(&Envelope) -> bool) -> usize {
        let before = self.queue.len();
        self.queue.retain(|e| !f(e));
        before - self.queue.len()
    }

    /// Fires a timer at an institution (the test chooses when) and returns whether it sent
    /// anything.
    pub fn fire(&mut self, at: InstitutionId, timer: InstitutionTimer) {
        let mut out = Effects::default();
        self.nodes.get_mut(&at).expect("known").inst.on_timer(
            timer,
            NOW_MS + 10 * SAGA_TIMEOUT_MS,
            &mut out,
        );
        self.absorb(at, out);
    }

    /// Fires one retry of `saga`'s unacknowledged steps at `at`.
    pub fn retry(&mut self, at: InstitutionId, saga: SagaId, attempt: u32) {
        self.fire(at, InstitutionTimer::Retry { saga, attempt });
    }

    /// The outcomes delivered to `to` for `saga`.
    pub fn outcomes_to(&self, to: Address, saga: SagaId) -> Vec<SagaOutcome> {
        self.inbox
            .iter()
            .filter(|e| e.to == to && e.saga_id == saga)
            .filter_map(|e| match &e.payload {
                Payload::SagaOutcome(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }

    /// Coins delivered to `wallet`.
    pub fn coins_to(&self, wallet: WalletId) -> Vec<Coin> {
        self.inbox
            .iter()
            .filter(|e| e.to == Address::Wallet(wallet))
            .filter_map(|e| match &e.payload {
                Payload::CoinIssued(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Crashes and restarts every institution: rebuilt by replaying its journal, or restored
    /// from the checkpoint it would have written; then its `on_start` re-drives what was in
    /// flight.
    pub fn restart_all(&mut self, institutions: u32, from_checkpoint: bool) {
        let ids: Vec<InstitutionId> = self.nodes.keys().copied().collect();
        for id in ids {
            let mut fresh =
                Institution::new(id, Arc::new(institution_keys(id)), Arc::new(limits()))
                    .with_institutions(institutions);
            if from_checkpoint {
                let bytes = self.nodes[&id]
                    .inst
                    .checkpoint()
                    .expect("institutions take snapshots");
                fresh.restore(&bytes).expect("own checkpoint restores");
            } else {
                for e in &self.nodes[&id].journal {
                    fresh.apply(e);
                }
            }
            self.nodes.get_mut(&id).expect("known").inst = fresh;
            let mut out = Effects::default();
            self.nodes
                .get_mut(&id)
                .expect("known")
                .inst
                .on_start(NOW_MS, &mut out);
            self.absorb(id, out);
        }
    }

    /// The audit over the world (quiescent only when nothing is in flight; no wallets).
    pub fn audit(&self) -> AuditReport {
        let snapshot = ClusterSnapshot {
            central_bank: self.bank.snapshot(),
            institutions: self.nodes.values().map(|n| n.inst.snapshot()).collect(),
            wallets: Vec::new(),
            escrows: Vec::new(),
            deposited: self.deposited,
        };
        audit(&snapshot, false)
    }

    pub fn assert_audit(&self) {
        let report = self.audit();
        assert!(report.ok(), "audit: {report:#?}");
    }

    /// A comparable digest of the world's money: every coin's state and each reserve.
    pub fn money(&self) -> (BTreeMap<CoinId, String>, String) {
        let mut coins = BTreeMap::new();
        for n in self.nodes.values() {
            for (id, r) in n.inst.snapshot().coins {
                coins.insert(id, format!("{:?} {:?}", r.state, r.coin.value()));
            }
        }
        (coins, format!("{:?}", self.bank.snapshot().reserves))
    }
}

/// The wallet's signed merge request.
pub fn merge_request(
    id: SagaId,
    wallet: WalletId,
    institution: InstitutionId,
    coins: &[&Coin],
    total: Amount,
) -> SignedMergeAuthorization {
    MergeAuthorization {
        saga_id: id,
        wallet,
        wallet_key: key_of(wallet),
        institution,
        coins: coins
            .iter()
            .map(|c| CoinRef {
                id: c.id,
                issuer: c.body.issuer,
            })
            .collect(),
        total,
        expires_at_ms: NOW_MS + TTL_MS,
    }
    .sign(&wallet_keys(wallet))
}

pub fn merge_payload(signed: SignedMergeAuthorization) -> Payload {
    Payload::Merge(MergeMessage::Request(signed))
}

/// The owner's signed split request.
pub fn split_payload(id: SagaId, wallet: WalletId, coin: &Coin, amount: Amount) -> Payload {
    let signed = SplitAuthorization {
        saga_id: id,
        wallet,
        wallet_key: key_of(wallet),
        coin_id: coin.id,
        issuer: coin.body.issuer,
        amount,
        expires_at_ms: NOW_MS + TTL_MS,
    }
    .sign(&wallet_keys(wallet));
    Payload::Offline(OfflineMessage::SplitRequest(signed))
}

/// `holder` pays `amount` of `chain` to `payee` offline; returns (paid, remainder).
pub fn pay_offline(
    chain: &TrustChain,
    holder: WalletId,
    payee: WalletId,
    amount: Amount,
    sequence: u64,
) -> (TrustChain, Option<TrustChain>) {
    chain.split(
        &wallet_keys(holder),
        holder,
        (payee, key_of(payee)),
        Amount(amount.0),
        sequence,
    )
}
