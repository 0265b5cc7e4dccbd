//! Unit tests of escrow pre-payment, driven by hand without a runtime.
//!
//! A small router runs the real state machines — the escrow contracts, the issuer `A` (which
//! hosts them and keeps the payer's and a local merchant's accounts), the merchant's
//! institution `B` and the central bank — and hands envelopes over in order, or dropped,
//! duplicated or reordered as a test asks. Wallets are the test itself: it signs the escrow
//! terms with the payer's key and reads what the escrow answers. After every step the real
//! audit (with the escrow invariant) runs over a snapshot of all of them.

use super::{Closure, Escrow, EscrowEvent, EscrowLimits, EscrowStatus, EscrowTimer};
use crate::audit::{audit, AuditReport};
use crate::central_bank::{CentralBank, CentralBankCommand};
use crate::cluster::ClusterSnapshot;
use crate::institution::{
    CoinState, HoldState, Institution, InstitutionCommand, InstitutionLimits,
};
use specie_protocol::escrow::{
    contract_id, EscrowMessage, EscrowResult, EscrowStep, EscrowTerms, SignedTerms,
};
use specie_protocol::{
    AbortReason, Address, Amount, Coin, Envelope, InstitutionId, KeyStore, Payload, PublicKey,
    SagaId, SoftKeyStore, WalletId,
};
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Issues the payer's coins and hosts the escrows.
const A: InstitutionId = InstitutionId(0);
/// The remote merchant's institution.
const B: InstitutionId = InstitutionId(1);
const PAYER: WalletId = WalletId(10);
/// A merchant banking at the issuer.
const LOCAL: WalletId = WalletId(12);
/// Another customer of `A`.
const OTHER: WalletId = WalletId(14);
/// A merchant banking at `B`.
const REMOTE: WalletId = WalletId(21);

const NOW: u64 = 1_000;
const TTL: u64 = 10_000;
const SAGA_TIMEOUT_MS: u64 = 2_000;
const RETRY_MS: u64 = 100;
const DEPOSIT: u64 = 100_000;

fn saga(n: u128) -> SagaId {
    SagaId::from_u128(n)
}

fn wallet_keys(w: WalletId) -> SoftKeyStore {
    SoftKeyStore::from_seed([u8::try_from(w.0).expect("small id"); 32])
}

fn key_of(w: WalletId) -> PublicKey {
    wallet_keys(w).public_key()
}

fn inst_limits() -> InstitutionLimits {
    InstitutionLimits {
        saga_timeout_ms: SAGA_TIMEOUT_MS,
        retry_interval_ms: RETRY_MS,
        retry_interval_max_ms: 800,
        coin_inputs_max: 8,
        denominations: vec![Amount(5_000), Amount(1_000), Amount(200)],
        dedup_retention_ms: 600_000,
    }
}

fn escrow_limits() -> Arc<EscrowLimits> {
    Arc::new(EscrowLimits {
        saga_timeout_ms: SAGA_TIMEOUT_MS,
        retry_interval_ms: RETRY_MS,
        retry_interval_max_ms: 800,
    })
}

/// What happens to each envelope on its way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
}

/// The router and everything it runs.
struct Sim {
    now: u64,
    cb: CentralBank,
    insts: Vec<Institution>,
    escrows: BTreeMap<u64, Escrow>,
    /// Every escrow's journal, as its host keeps it.
    journals: HashMap<u64, Vec<EscrowEvent>>,
    queue: VecDeque<Envelope>,
    /// What reached wallets.
    inbox: Vec<Envelope>,
    notices: Vec<Notice>,
    /// Armed escrow timers: (due, escrow, timer).
    timers: Vec<(u64, u64, EscrowTimer)>,
    /// Decides each envelope's fate (all delivered by default).
    fault: Box<dyn FnMut(&Envelope) -> Fate>,
    /// Deliver the newest envelope first.
    lifo: bool,
    deposited: u64,
    next_saga: u128,
}

impl Sim {
    /// Two institutions with accounts for every wallet, reserves to match, and the payer's
    /// coins from an exchange of 63.00: 50.00, 10.00, 2.00 and 1.00.
    fn new() -> (Sim, Vec<Coin>) {
        let insts = [A, B]
            .iter()
            .map(|id| {
                Institution::new(
                    *id,
                    Arc::new(SoftKeyStore::from_seed([100 + id.0 as u8; 32])),
                    Arc::new(inst_limits()),
                )
                .with_institutions(2)
            })
            .collect();
        let mut sim = Sim {
            now: NOW,
            cb: CentralBank::new(600_000),
            insts,
            escrows: BTreeMap::new(),
            journals: HashMap::new(),
            queue: VecDeque::new(),
            inbox: Vec::new(),
            notices: Vec::new(),
            timers: Vec::new(),
            fault: Box::new(|_| Fate::Deliver),
            lifo: false,
            deposited: 0,
            next_saga: 1_000,
        };
        for (inst, wallets) in [(A, vec![PAYER, LOCAL, OTHER]), (B, vec![REMOTE])] {
            let mut out = Effects::default();
            let mint = Amount(DEPOSIT * wallets.len() as u64);
            sim.cb.on_command(
                CentralBankCommand::Mint {
                    institution: inst,
                    amount: mint,
                },
                NOW,
                &mut out,
            );
            for w in wallets {
                let mut out = Effects::default();
                let open = InstitutionCommand::OpenAccount {
                    wallet: w,
                    key: key_of(w),
                    deposit: Amount(DEPOSIT),
                };
                sim.insts[inst.0 as usize].on_command(open, NOW, &mut out);
                sim.deposited += DEPOSIT;
            }
        }
        let coins = sim.exchange(PAYER, Amount(6_300));
        (sim, coins)
    }

    fn saga(&mut self) -> SagaId {
        self.next_saga += 1;
        saga(self.next_saga)
    }

    fn exchange(&mut self, w: WalletId, amount: Amount) -> Vec<Coin> {
        let id = self.saga();
        let from = self.inbox.len();
        self.send(
            Address::Wallet(w),
            Address::Institution(A),
            id,
            Payload::ExchangeRequest { amount },
        );
        self.run();
        let coins: Vec<Coin> = self.inbox[from..]
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::CoinIssued(c) if e.to == Address::Wallet(w) => Some(c.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            Amount::sum(coins.iter().map(Coin::value)),
            Some(amount),
            "the exchange issued its amount"
        );
        coins
    }

    fn send(&mut self, from: Address, to: Address, saga: SagaId, payload: Payload) {
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

    fn escrow_mut(&mut self, id: u64) -> &mut Escrow {
        if !self.escrows.contains_key(&id) {
            let mut e = Escrow::new(id, escrow_limits());
            let mut out = Effects::default();
            e.on_start(self.now, &mut out);
            self.escrows.insert(id, e);
            self.absorb_escrow(id, out);
        }
        self.escrows.get_mut(&id).expect("just made")
    }

    fn absorb_escrow(&mut self, id: u64, out: Effects<EscrowEvent, EscrowTimer>) {
        self.journals.entry(id).or_default().extend(out.events);
        self.queue.extend(out.sends);
        self.notices.extend(out.notices);
        for (delay, t) in out.timers {
            self.timers.push((self.now + delay, id, t));
        }
    }

    fn deliver(&mut self, env: Envelope) {
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
            Address::Escrow(id) => {
                let mut out = Effects::default();
                self.escrow_mut(id).on_envelope(env, now, &mut out);
                self.absorb_escrow(id, out);
            }
            Address::Wallet(_) => self.inbox.push(env),
            other => panic!("nothing lives at {other}"),
        }
    }

    /// Delivers until nothing is in flight.
    fn run(&mut self) {
        let mut steps = 0;
        while let Some(env) = if self.lifo {
            self.queue.pop_back()
        } else {
            self.queue.pop_front()
        } {
            steps += 1;
            assert!(steps < 10_000, "the router does not go quiet");
            match (self.fault)(&env) {
                Fate::Deliver => self.deliver(env),
                Fate::Drop => {}
                Fate::Duplicate => {
                    self.deliver(env.clone());
                    self.deliver(env);
                }
            }
        }
    }

    /// Moves the clock and fires the escrow timers that are due (in due order), delivering
    /// after each.
    fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        loop {
            self.timers.sort_by_key(|(due, id, _)| (*due, *id));
            let Some(pos) = self.timers.iter().position(|(due, _, _)| *due <= until) else {
                break;
            };
            let (due, id, timer) = self.timers.remove(pos);
            self.now = self.now.max(due);
            let mut out = Effects::default();
            let now = self.now;
            self.escrow_mut(id).on_timer(timer, now, &mut out);
            self.absorb_escrow(id, out);
            self.run();
        }
        self.now = until;
    }

    /// Crashes escrow `id` and rebuilds it from its journal, as its host would.
    fn restart(&mut self, id: u64) {
        let mut e = Escrow::new(id, escrow_limits());
        for event in &self.journals[&id] {
            e.apply(event);
        }
        self.timers.retain(|(_, t, _)| *t != id);
        let mut out = Effects::default();
        e.on_start(self.now, &mut out);
        self.escrows.insert(id, e);
        self.absorb_escrow(id, out);
    }

    fn terms(
        &self,
        contract: u64,
        deposit: SagaId,
        coins: &[&Coin],
        cap: u64,
        merchant: WalletId,
    ) -> SignedTerms {
        EscrowTerms {
            contract,
            saga_id: deposit,
            payer: PAYER,
            payer_key: key_of(PAYER),
            payer_institution: A,
            coin_ids: coins.iter().map(|c| c.id).collect(),
            cap: Amount(cap),
            merchant,
            merchant_institution: if merchant == REMOTE { B } else { A },
            expires_at_ms: NOW + TTL,
        }
        .sign(&wallet_keys(PAYER))
    }

    /// The payer opens the escrow; returns the escrow's answer.
    fn open(&mut self, signed: &SignedTerms) -> Option<EscrowResult> {
        let (contract, id) = (signed.terms.contract, signed.terms.saga_id);
        let payload = Payload::Escrow(EscrowMessage::Open(signed.clone()));
        self.send(
            Address::Wallet(PAYER),
            Address::Escrow(contract),
            id,
            payload,
        );
        self.run();
        self.answer(id)
    }

    fn claim(
        &mut self,
        from: WalletId,
        contract: u64,
        id: SagaId,
        claim_id: u64,
        amount: u64,
    ) -> Option<EscrowResult> {
        let merchant_institution = if from == REMOTE { B } else { A };
        let payload = Payload::Escrow(EscrowMessage::Claim {
            claim_id,
            amount: Amount(amount),
            merchant_institution,
        });
        self.send(
            Address::Wallet(from),
            Address::Escrow(contract),
            id,
            payload,
        );
        self.run();
        self.answer(id)
    }

    fn release(&mut self, from: WalletId, contract: u64, id: SagaId) -> Option<EscrowResult> {
        self.send(
            Address::Wallet(from),
            Address::Escrow(contract),
            id,
            Payload::Escrow(EscrowMessage::Release),
        );
        self.run();
        self.answer(id)
    }

    /// The latest answer an escrow sent under `id`.
    fn answer(&self, id: SagaId) -> Option<EscrowResult> {
        self.inbox.iter().rev().find_map(|e| match &e.payload {
            Payload::Escrow(EscrowMessage::Result(r)) if e.saga_id == id => Some(*r),
            _ => None,
        })
    }

    fn answers(&self, id: SagaId) -> usize {
        self.inbox
            .iter()
            .filter(|e| {
                e.saga_id == id && matches!(e.payload, Payload::Escrow(EscrowMessage::Result(_)))
            })
            .count()
    }

    /// Coins issued to `w` so far.
    fn coins_to(&self, w: WalletId) -> Vec<Coin> {
        let mut coins: Vec<Coin> = self
            .inbox
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::CoinIssued(c) if e.to == Address::Wallet(w) => Some(c.clone()),
                _ => None,
            })
            .collect();
        coins.dedup_by_key(|c| c.id);
        coins
    }

    fn state_of(&self, coin: &Coin) -> CoinState {
        self.insts[coin.body.issuer.0 as usize].snapshot().coins[&coin.id].state
    }

    fn status(&self, contract: u64) -> EscrowStatus {
        self.escrows[&contract].status()
    }

    fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            central_bank: self.cb.snapshot(),
            institutions: self.insts.iter().map(|i| i.snapshot()).collect(),
            wallets: Vec::new(),
            escrows: self.escrows.values().map(|e| e.snapshot()).collect(),
            deposited: Amount(self.deposited),
        }
    }

    fn audit(&self) -> AuditReport {
        audit(&self.snapshot(), false)
    }

    /// Every invariant holds.
    #[track_caller]
    fn assert_audit(&self) {
        let report = self.audit();
        assert!(report.ok(), "audit: {report:#?}");
    }
}

fn ok(step: EscrowStep, amount: u64, remaining: u64) -> Option<EscrowResult> {
    Some(EscrowResult {
        step,
        result: Ok(()),
        amount: Amount(amount),
        remaining: Amount(remaining),
    })
}

fn refused(step: EscrowStep, reason: AbortReason, remaining: u64) -> Option<EscrowResult> {
    Some(EscrowResult {
        step,
        result: Err(reason),
        amount: Amount::ZERO,
        remaining: Amount(remaining),
    })
}

/// The payer's coins by value.
fn coin(coins: &[Coin], value: u64) -> &Coin {
    coins
        .iter()
        .find(|c| c.value() == Amount(value))
        .expect("the fixture has a coin of that value")
}

/// A sim with escrow `contract` open: the payer's 50.00 coin frozen with a cap of `cap` for
/// `merchant`.
fn opened(cap: u64, merchant: WalletId) -> (Sim, Vec<Coin>, u64) {
    let (mut sim, coins) = Sim::new();
    let contract = contract_id(A, 7);
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 5_000)], cap, merchant);
    assert_eq!(sim.open(&signed), ok(EscrowStep::Deposit, 5_000, cap));
    assert_eq!(
        sim.state_of(coin(&coins, 5_000)),
        CoinState::Frozen(contract)
    );
    sim.assert_audit();
    (sim, coins, contract)
}

#[test]
fn a_deposit_freezes_the_coins_and_claims_pay_the_merchant_then_release_refunds_the_rest() {
    let (mut sim, coins, contract) = opened(4_000, REMOTE);
    let frozen = coin(&coins, 5_000).clone();
    let reserve_before = sim.cb.snapshot().reserves;

    // A partial claim: paid by the merchant's institution, the rest re-frozen as one coin.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 1, 1_500),
        ok(EscrowStep::Claim, 1_500, 2_500)
    );
    assert_eq!(
        sim.state_of(&frozen),
        CoinState::Spent(saga(2)),
        "the frozen coin is retired"
    );
    let paid = sim.coins_to(REMOTE);
    assert_eq!(paid.len(), 1);
    assert_eq!((paid[0].body.issuer, paid[0].value()), (B, Amount(1_500)));
    let holds = sim.insts[0].snapshot().escrow_holds;
    let hold = &holds[&contract];
    assert_eq!(hold.frozen.len(), 1);
    let remainder = &sim.insts[0].snapshot().coins[&hold.frozen[0]];
    assert_eq!(
        (remainder.coin.value(), remainder.state),
        (Amount(3_500), CoinState::Frozen(contract))
    );
    assert_eq!(
        remainder.coin.body.owner,
        key_of(PAYER),
        "still the payer's money"
    );
    let reserves = sim.cb.snapshot().reserves;
    assert_eq!(
        reserves[&A].backing.0,
        reserve_before[&A].backing.0 - 1_500,
        "backing moved A → B"
    );
    assert_eq!(reserves[&B].backing.0, reserve_before[&B].backing.0 + 1_500);
    sim.assert_audit();

    // A second claim, then the payer's release refunds what the merchant did not claim.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(3), 2, 500),
        ok(EscrowStep::Claim, 500, 2_000)
    );
    sim.assert_audit();
    assert_eq!(
        sim.release(PAYER, contract, saga(4)),
        ok(EscrowStep::Release, 3_000, 2_000)
    );
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Closed(Closure::Released)
    );
    let refund: Vec<Coin> = sim
        .coins_to(PAYER)
        .into_iter()
        .filter(|c| c.body.origin_saga == saga(4))
        .collect();
    assert_eq!(refund.len(), 1);
    assert_eq!(
        (refund[0].value(), sim.state_of(&refund[0])),
        (Amount(3_000), CoinState::Active)
    );
    let snapshot = sim.escrows[&contract].snapshot();
    assert_eq!(
        (snapshot.deposit, snapshot.claimed, snapshot.refunded),
        (Amount(5_000), Amount(2_000), Amount(3_000))
    );
    assert!(!snapshot.in_flight);
    assert_eq!(sim.notices.len(), 1, "the closure is published once");
    sim.assert_audit();
}

#[test]
fn a_local_merchant_is_paid_by_the_issuer_itself() {
    let (mut sim, _, contract) = opened(5_000, LOCAL);
    let backing = sim.cb.snapshot().reserves[&A].backing;
    assert_eq!(
        sim.claim(LOCAL, contract, saga(2), 1, 5_000),
        ok(EscrowStep::Claim, 5_000, 0)
    );
    let paid = sim.coins_to(LOCAL);
    assert_eq!(
        (paid.len(), paid[0].body.issuer, paid[0].value()),
        (1, A, Amount(5_000))
    );
    assert_eq!(
        sim.cb.snapshot().reserves[&A].backing,
        backing,
        "no backing moves within an institution"
    );
    // The whole deposit claimed: closed, nothing to refund, nothing frozen.
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Closed(Closure::FullyClaimed)
    );
    assert!(sim.insts[0].snapshot().escrow_holds[&contract]
        .frozen
        .is_empty());
    sim.assert_audit();
}

#[test]
fn claims_summing_above_the_cap_are_refused_and_the_cap_closes_the_escrow() {
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 1, 2_500),
        ok(EscrowStep::Claim, 2_500, 1_500)
    );
    assert_eq!(
        sim.claim(REMOTE, contract, saga(3), 2, 1_501),
        refused(EscrowStep::Claim, AbortReason::CapExceeded, 1_500)
    );
    sim.assert_audit();
    assert_eq!(
        sim.claim(REMOTE, contract, saga(4), 3, 1_500),
        ok(EscrowStep::Claim, 1_500, 0)
    );
    // The cap is reached: the rest of the deposit (5,000 - 4,000) goes back to the payer.
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Closed(Closure::FullyClaimed)
    );
    let e = sim.escrows[&contract].snapshot();
    assert_eq!((e.claimed, e.refunded), (Amount(4_000), Amount(1_000)));
    assert_eq!(
        sim.answer(super::closure_saga(contract, Closure::FullyClaimed)),
        ok(EscrowStep::Release, 1_000, 0)
    );
    assert_eq!(
        sim.claim(REMOTE, contract, saga(5), 4, 1),
        refused(EscrowStep::Claim, AbortReason::AlreadyClaimed, 0)
    );
    assert_eq!(
        sim.release(PAYER, contract, saga(6)),
        refused(EscrowStep::Release, AbortReason::AlreadyClaimed, 0)
    );
    sim.assert_audit();
}

#[test]
fn two_claims_with_the_same_id_resolve_once_and_a_repeat_gets_the_recorded_answer() {
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 42, 1_000),
        ok(EscrowStep::Claim, 1_000, 3_000)
    );
    // Another request with the same claim number: refused, nothing paid twice.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(3), 42, 1_000),
        refused(EscrowStep::Claim, AbortReason::AlreadyClaimed, 3_000)
    );
    // The same request again (a retry): the recorded answer, nothing paid twice.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 42, 1_000),
        ok(EscrowStep::Claim, 1_000, 3_000)
    );
    // The same request id with other content: a conflict.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 42, 999),
        refused(EscrowStep::Claim, AbortReason::Conflict, 3_000)
    );
    assert_eq!(sim.coins_to(REMOTE).len(), 1, "one coin paid");
    assert_eq!(sim.escrows[&contract].snapshot().claimed, Amount(1_000));
    sim.assert_audit();
}

#[test]
fn every_refusal_of_the_verification_contract_has_its_reason() {
    let (mut sim, coins) = Sim::new();
    let contract = contract_id(A, 9);
    // Before any deposit.
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 1, 10),
        refused(EscrowStep::Claim, AbortReason::EscrowNotOpen, 0)
    );
    assert_eq!(
        sim.release(PAYER, contract, saga(3)),
        refused(EscrowStep::Release, AbortReason::EscrowNotOpen, 0)
    );
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 5_000)], 3_000, REMOTE);
    assert!(sim.open(&signed).unwrap().result.is_ok());
    let mut n = 10;
    let mut claim = |sim: &mut Sim, from: WalletId, claim_id: u64, amount: u64| {
        n += 1;
        sim.claim(from, contract, saga(n), claim_id, amount)
            .unwrap()
            .result
    };
    assert_eq!(
        claim(&mut sim, OTHER, 1, 10),
        Err(AbortReason::WrongParty),
        "not the merchant"
    );
    assert_eq!(
        claim(&mut sim, PAYER, 1, 10),
        Err(AbortReason::WrongParty),
        "the payer cannot claim"
    );
    assert_eq!(
        claim(&mut sim, REMOTE, 1, 0),
        Err(AbortReason::InvalidAmount)
    );
    assert_eq!(
        claim(&mut sim, REMOTE, 1, 3_001),
        Err(AbortReason::CapExceeded)
    );
    // The merchant naming another institution than the terms do.
    let wrong = Payload::Escrow(EscrowMessage::Claim {
        claim_id: 1,
        amount: Amount(10),
        merchant_institution: A,
    });
    sim.send(
        Address::Wallet(REMOTE),
        Address::Escrow(contract),
        saga(50),
        wrong,
    );
    sim.run();
    assert_eq!(
        sim.answer(saga(50)).unwrap().result,
        Err(AbortReason::PayeeMismatch)
    );
    assert_eq!(claim(&mut sim, REMOTE, 1, 10), Ok(()));
    assert_eq!(
        claim(&mut sim, REMOTE, 1, 10),
        Err(AbortReason::AlreadyClaimed)
    );
    // Release: only the payer.
    assert_eq!(
        sim.release(REMOTE, contract, saga(60)).unwrap().result,
        Err(AbortReason::WrongParty)
    );
    assert_eq!(
        sim.release(PAYER, contract, saga(61)).unwrap().result,
        Ok(())
    );
    assert_eq!(
        claim(&mut sim, REMOTE, 2, 10),
        Err(AbortReason::AlreadyReleased)
    );
    assert_eq!(
        sim.release(PAYER, contract, saga(62)).unwrap().result,
        Err(AbortReason::AlreadyReleased)
    );
    // Nothing the refusals touched moved any value.
    let e = sim.escrows[&contract].snapshot();
    assert_eq!((e.claimed, e.refunded), (Amount(10), Amount(4_990)));
    sim.assert_audit();
}

#[test]
fn a_deposit_the_issuer_refuses_never_opens_and_freezes_nothing() {
    let (mut sim, coins) = Sim::new();
    let big = coin(&coins, 5_000);
    // Cap above the coins' value.
    let contract = contract_id(A, 1);
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 1_000)], 1_001, REMOTE);
    assert_eq!(
        sim.open(&signed),
        refused(EscrowStep::Deposit, AbortReason::InsufficientFunds, 1_001)
    );
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Refused {
            reason: AbortReason::InsufficientFunds
        }
    );
    // Signed by someone else.
    let contract = contract_id(A, 2);
    let mut forged = sim.terms(contract, saga(2), &[big], 100, REMOTE);
    forged.signature = EscrowTerms {
        ..forged.terms.clone()
    }
    .sign(&wallet_keys(OTHER))
    .signature;
    assert_eq!(
        sim.open(&forged).unwrap().result,
        Err(AbortReason::BadSignature)
    );
    // Coins already frozen by another escrow.
    let contract = contract_id(A, 3);
    assert!(sim
        .open(&sim.terms(contract, saga(3), &[big], 100, REMOTE))
        .unwrap()
        .result
        .is_ok());
    let contract = contract_id(A, 4);
    assert_eq!(
        sim.open(&sim.terms(contract, saga(4), &[big], 100, REMOTE))
            .unwrap()
            .result,
        Err(AbortReason::CoinLocked)
    );
    // Refused at the escrow itself, before anything starts: expired terms, the payer as merchant.
    let contract = contract_id(A, 5);
    let mut late = sim
        .terms(contract, saga(5), &[coin(&coins, 200)], 100, REMOTE)
        .terms;
    late.expires_at_ms = NOW;
    assert_eq!(
        sim.open(&late.sign(&wallet_keys(PAYER))).unwrap().result,
        Err(AbortReason::Expired)
    );
    let mut selfish = sim
        .terms(contract, saga(6), &[coin(&coins, 200)], 100, REMOTE)
        .terms;
    selfish.merchant = PAYER;
    assert_eq!(
        sim.open(&selfish.sign(&wallet_keys(PAYER))).unwrap().result,
        Err(AbortReason::PayeeMismatch)
    );
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Empty,
        "a refusal before the start leaves the contract empty"
    );
    // Another deposit for an open contract is a conflict.
    let other = sim.terms(
        contract_id(A, 3),
        saga(7),
        &[coin(&coins, 200)],
        100,
        REMOTE,
    );
    assert_eq!(sim.open(&other).unwrap().result, Err(AbortReason::Conflict));
    for c in &coins {
        if c.id != big.id {
            assert_eq!(sim.state_of(c), CoinState::Active, "coin of {}", c.value());
        }
    }
    sim.assert_audit();
}

#[test]
fn expiry_refunds_what_remains_and_refuses_later_claims() {
    let (mut sim, _, contract) = opened(4_000, LOCAL);
    assert!(sim
        .claim(LOCAL, contract, saga(2), 1, 1_000)
        .unwrap()
        .result
        .is_ok());
    sim.advance(TTL);
    assert_eq!(sim.status(contract), EscrowStatus::Closed(Closure::Expired));
    let expiry = super::closure_saga(contract, Closure::Expired);
    assert_eq!(
        sim.answer(expiry),
        ok(EscrowStep::Expiry, 4_000, 3_000),
        "the payer is told"
    );
    assert_eq!(
        sim.notices.iter().filter(|n| n.saga_id == expiry).count(),
        1
    );
    assert_eq!(
        sim.claim(LOCAL, contract, saga(3), 2, 10).unwrap().result,
        Err(AbortReason::Expired)
    );
    assert_eq!(
        sim.release(PAYER, contract, saga(4)).unwrap().result,
        Err(AbortReason::Expired)
    );
    let e = sim.escrows[&contract].snapshot();
    assert_eq!((e.claimed, e.refunded), (Amount(1_000), Amount(4_000)));
    sim.assert_audit();
}

#[test]
fn a_claim_racing_expiry_is_decided_by_the_clock_not_by_the_timer() {
    // At the expiry instant, before the timer fires: refused, and the escrow expires at once.
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    sim.now = NOW + TTL;
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 1, 100).unwrap().result,
        Err(AbortReason::Expired)
    );
    assert_eq!(sim.status(contract), EscrowStatus::Closed(Closure::Expired));
    sim.advance(1_000); // the late timer changes nothing
    assert_eq!(sim.escrows[&contract].snapshot().refunded, Amount(5_000));
    assert_eq!(sim.notices.len(), 1);
    sim.assert_audit();

    // A claim decided a moment before the expiry settles after it: paid, and only the rest is
    // refunded.
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    sim.now = NOW + TTL - 1;
    sim.fault = Box::new(|e| {
        if matches!(e.payload, Payload::Escrow(EscrowMessage::Settle { .. })) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(
        sim.claim(REMOTE, contract, saga(2), 1, 100),
        None,
        "decided, not settled yet"
    );
    sim.fault = Box::new(|_| Fate::Deliver);
    sim.advance(2_000);
    assert_eq!(sim.answer(saga(2)), ok(EscrowStep::Claim, 100, 3_900));
    assert_eq!(sim.status(contract), EscrowStatus::Closed(Closure::Expired));
    let e = sim.escrows[&contract].snapshot();
    assert_eq!((e.claimed, e.refunded), (Amount(100), Amount(4_900)));
    sim.assert_audit();
}

#[test]
fn an_unanswered_freeze_times_out_and_a_late_freeze_is_refused() {
    let (mut sim, coins) = Sim::new();
    let contract = contract_id(A, 1);
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 5_000)], 1_000, REMOTE);
    // The issuer hears nothing of the escrow for a while.
    sim.fault = Box::new(|e| {
        if e.to == Address::Institution(A) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(sim.open(&signed), None);
    sim.advance(SAGA_TIMEOUT_MS);
    assert_eq!(
        sim.answer(saga(1)),
        refused(EscrowStep::Deposit, AbortReason::Timeout, 1_000)
    );
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Unfreezing {
            reason: AbortReason::Timeout
        }
    );
    // The network heals: the unfreeze lands first, and leaves a tombstone; the late freeze
    // (a retry) is refused.
    sim.fault = Box::new(|_| Fate::Deliver);
    sim.advance(1_000);
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Refused {
            reason: AbortReason::Timeout
        }
    );
    sim.send(
        Address::Escrow(contract),
        Address::Institution(A),
        saga(1),
        Payload::Escrow(EscrowMessage::Freeze(signed)),
    );
    sim.run();
    assert_eq!(sim.state_of(coin(&coins, 5_000)), CoinState::Active);
    assert_eq!(
        sim.insts[0]
            .snapshot()
            .escrow_holds
            .get(&contract)
            .map(|h| h.state),
        None,
        "a tombstone is no hold"
    );
    sim.assert_audit();
}

#[test]
fn a_freeze_taken_before_the_timeout_is_released_by_the_unfreeze() {
    let (mut sim, coins) = Sim::new();
    let contract = contract_id(A, 1);
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 5_000)], 1_000, REMOTE);
    // The issuer freezes, but its answer is lost.
    sim.fault = Box::new(|e| {
        if e.to == Address::Escrow(contract_id(A, 1)) && e.from == Address::Institution(A) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(sim.open(&signed), None);
    assert_eq!(
        sim.state_of(coin(&coins, 5_000)),
        CoinState::Frozen(contract)
    );
    sim.advance(SAGA_TIMEOUT_MS); // retries' answers are lost too; then the timeout
    sim.fault = Box::new(|_| Fate::Deliver);
    sim.advance(1_000);
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Refused {
            reason: AbortReason::Timeout
        }
    );
    assert_eq!(
        sim.state_of(coin(&coins, 5_000)),
        CoinState::Active,
        "unfrozen"
    );
    assert_eq!(
        sim.insts[0].snapshot().escrow_holds[&contract].state,
        HoldState::Unfrozen
    );
    sim.assert_audit();
}

#[test]
fn lost_settlements_and_payouts_are_retried_until_acknowledged() {
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    let mut lost = 0;
    sim.fault = Box::new(move |e| {
        let step = matches!(
            e.payload,
            Payload::Escrow(
                EscrowMessage::Settle { .. }
                    | EscrowMessage::Payout { .. }
                    | EscrowMessage::SettleReply { .. }
            )
        );
        if step && lost < 4 {
            lost += 1;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(sim.claim(REMOTE, contract, saga(2), 1, 700), None);
    assert!(sim.escrows[&contract].snapshot().in_flight);
    sim.advance(5_000);
    assert_eq!(sim.answer(saga(2)), ok(EscrowStep::Claim, 700, 3_300));
    assert_eq!(sim.coins_to(REMOTE).len(), 1, "paid once");
    assert!(!sim.escrows[&contract].snapshot().in_flight);
    sim.assert_audit();
}

/// What a user sees at the end of an escrow's life: (deposit, claimed, refunded), the status,
/// the coins paid to the merchant and the answer to a second claim with a used number.
type Ending = (
    Vec<(Amount, Amount, Amount)>,
    EscrowStatus,
    Vec<u64>,
    Option<EscrowResult>,
);

/// Runs the same escrow life with every envelope delivered as `fate` and `lifo` say.
fn life(fate: Fate, lifo: bool) -> Ending {
    let (mut sim, coins) = Sim::new();
    sim.fault = Box::new(move |_| fate);
    sim.lifo = lifo;
    let contract = contract_id(A, 7);
    let signed = sim.terms(contract, saga(1), &[coin(&coins, 5_000)], 4_000, REMOTE);
    sim.open(&signed);
    for (n, amount) in [(2u128, 1_000u64), (3, 2_000), (4, 1_500)] {
        sim.claim(REMOTE, contract, saga(n), n as u64, amount);
    }
    sim.claim(REMOTE, contract, saga(5), 2, 10); // a second claim with a used number
    sim.release(PAYER, contract, saga(6));
    sim.advance(5_000);
    sim.assert_audit();
    let e = sim.escrows[&contract].snapshot();
    let paid: Vec<u64> = sim.coins_to(REMOTE).iter().map(|c| c.value().0).collect();
    (
        vec![(e.deposit, e.claimed, e.refunded)],
        e.status,
        paid,
        sim.answer(saga(5)),
    )
}

#[test]
fn duplicate_and_reordered_delivery_end_in_the_same_state_as_single_delivery() {
    let single = life(Fate::Deliver, false);
    assert_eq!(
        single.0,
        vec![(Amount(5_000), Amount(3_000), Amount(2_000))]
    );
    assert_eq!(single.1, EscrowStatus::Closed(Closure::Released));
    assert_eq!(single.3.unwrap().result, Err(AbortReason::AlreadyClaimed));
    assert_eq!(
        life(Fate::Duplicate, false),
        single,
        "every envelope delivered twice"
    );
    let reordered = life(Fate::Deliver, true);
    assert_eq!(
        (reordered.0, reordered.1),
        (single.0.clone(), single.1),
        "newest envelope first"
    );
    let both = life(Fate::Duplicate, true);
    assert_eq!((both.0, both.1), (single.0, single.1));
}

#[test]
fn an_escrow_rebuilt_from_its_journal_finishes_what_it_decided() {
    let (mut sim, _, contract) = opened(4_000, REMOTE);
    sim.fault = Box::new(|e| {
        if matches!(
            e.payload,
            Payload::Escrow(EscrowMessage::Settle { .. } | EscrowMessage::Payout { .. })
        ) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(sim.claim(REMOTE, contract, saga(2), 1, 900), None);
    assert_eq!(sim.release(PAYER, contract, saga(3)), None);
    // Crash: the decisions are in the journal, the messages were lost.
    sim.restart(contract);
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Closing(Closure::Released)
    );
    sim.fault = Box::new(|_| Fate::Deliver);
    sim.advance(1_000);
    assert_eq!(sim.answer(saga(2)), ok(EscrowStep::Claim, 900, 3_100));
    assert_eq!(sim.answer(saga(3)), ok(EscrowStep::Release, 4_100, 3_100));
    assert_eq!(
        sim.status(contract),
        EscrowStatus::Closed(Closure::Released)
    );
    // The checkpoint carries the same state.
    let bytes = sim.escrows[&contract]
        .checkpoint()
        .expect("escrows take snapshots");
    let mut restored = Escrow::new(contract, escrow_limits());
    restored.restore(&bytes).unwrap();
    assert_eq!(restored.snapshot(), sim.escrows[&contract].snapshot());
    assert_eq!(sim.answers(saga(2)), 1);
    sim.assert_audit();
}

#[test]
fn the_audit_catches_a_claim_above_the_cap_and_a_frozen_coin_nobody_holds() {
    let (sim, _, contract) = opened(4_000, REMOTE);
    let mut s = sim.snapshot();
    let e = s.escrows.iter_mut().find(|e| e.id == contract).unwrap();
    e.claimed = Amount(4_001);
    let report = audit(&s, false);
    assert!(
        report.escrow.to_string().contains("above the cap"),
        "{report:?}"
    );
    let mut s = sim.snapshot();
    s.escrows.clear();
    let report = audit(&s, false);
    assert!(
        report.escrow.to_string().contains("does not exist"),
        "{report:?}"
    );
}
