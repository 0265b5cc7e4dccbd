//! Workload generation: what the next operation is, who pays whom and how much, from a seed.
//!
//! The generator keeps its own model of every wallet's coin balance, built from requests and
//! outcomes alone, so that honest payments stay within what the payer holds. A wallet with an
//! operation in flight is *busy* and is not picked as a payer again until the outcome arrives
//! (a wallet runs one payment at a time), except in the hot set: payments between hot
//! wallets are offered regardless, so they contend for the same wallets and coins, and the
//! refusals that follow (`busy`, `coin_locked`, `insufficient_funds`) are what contention
//! costs.
//!
//! Planted invalid operations must be refused, each for its own reason: a payment above the
//! payer's balance (`insufficient_funds`), a second spend of coins already spent
//! (`coin_spent`), and an authorization forged with another key (`bad_signature`).

use crate::profile::WorkloadSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::wallet::WalletCommand;
use specie_actors::Blueprint;
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, InstitutionId, KeyStore, Payload,
    PaymentAuthorization, SagaId, SoftKeyStore, WalletId,
};
use std::collections::VecDeque;

/// Spent coins remembered for planting double spends.
pub const SPENT_MEMORY_MAX: usize = 4096;
/// Random picks tried before an arrival finds no idle wallet and is shed.
pub const PICK_TRIES_MAX: usize = 32;
/// The client address forged requests come from.
pub const FORGER: Address = Address::External(0xbe7c);

/// What the generator expects of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Should commit (or, under contention, may be refused).
    Honest,
    /// Planted: above the payer's balance.
    Insufficient,
    /// Planted: a second spend of spent coins.
    DoubleSpend,
    /// Planted: signed with a key that owns nothing.
    Forged,
}

impl Class {
    /// The refusal a planted operation must get; `None` for honest ones.
    pub fn expected_refusal(self) -> Option<AbortReason> {
        match self {
            Class::Honest => None,
            Class::Insufficient => Some(AbortReason::InsufficientFunds),
            Class::DoubleSpend => Some(AbortReason::CoinSpent),
            Class::Forged => Some(AbortReason::BadSignature),
        }
    }
}

/// The saga kinds the bench offers and reports, one word each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Payer-initiated payment to another institution's customer.
    PayCross,
    /// Payer-initiated payment within one institution (the local path).
    PayLocal,
    /// Payee-initiated payment (a merchant's collect request).
    Collect,
    /// A payment between hot wallets (contention).
    PayHot,
    /// A wallet merges two to four of its coins (foreign ones first) into one coin of its
    /// own institution.
    Merge,
    /// Planted: insufficient funds.
    InvalidInsufficient,
    /// Planted: double spend.
    InvalidDoubleSpend,
    /// Planted: forged authorization.
    InvalidForged,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 8] = [
        Kind::PayCross,
        Kind::PayLocal,
        Kind::Collect,
        Kind::PayHot,
        Kind::Merge,
        Kind::InvalidInsufficient,
        Kind::InvalidDoubleSpend,
        Kind::InvalidForged,
    ];

    /// The kind's name in reports and `.hgrm` file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PayCross => "pay_cross",
            Kind::PayLocal => "pay_local",
            Kind::Collect => "collect",
            Kind::PayHot => "pay_hot",
            Kind::Merge => "merge",
            Kind::InvalidInsufficient => "invalid_insufficient_funds",
            Kind::InvalidDoubleSpend => "invalid_double_spend",
            Kind::InvalidForged => "invalid_forged",
        }
    }

    /// Whether it is a pay saga (whose authorization is the one signature every saga must
    /// verify: the crypto floor's unit).
    pub fn is_pay(self) -> bool {
        self != Kind::Merge
    }
}

/// How an operation enters the cluster.
#[derive(Debug, Clone)]
pub enum Action {
    /// A command to a wallet.
    Submit(WalletId, WalletCommand),
    /// An envelope sent into the network as an outside client would.
    Inject(Envelope),
    /// A merge: the wallet's coins are looked up when it is sent, and the merge is withdrawn
    /// if the wallet holds fewer than two.
    Merge(WalletId, SagaId),
}

/// The most coins one merge takes.
pub const MERGE_COINS_MAX: usize = 4;

/// One operation the generator decided on.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its saga id.
    pub saga: SagaId,
    /// What it is.
    pub kind: Kind,
    /// What is expected of it.
    pub class: Class,
    /// Whose outcome notice settles it.
    pub reporter: Address,
    /// The paying wallet.
    pub payer: WalletId,
    /// The receiving wallet.
    pub payee: WalletId,
    /// The amount.
    pub amount: Amount,
    /// Wallets marked busy until it settles.
    pub busy: Vec<WalletId>,
    /// How to send it.
    pub action: Action,
}

/// Why no operation could be planned for an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOp {
    /// Every wallet tried was busy or empty.
    NoIdleWallet,
}

/// The generator and its model of the wallets.
pub struct Workload {
    spec: WorkloadSpec,
    blueprint: Blueprint,
    wallets: u64,
    institutions: u32,
    rng: ChaCha8Rng,
    /// Coin value each wallet holds, as the generator believes.
    balance: Vec<u64>,
    /// Value promised by honest operations in flight, per payer.
    reserved: Vec<u64>,
    /// Operations in flight that involve each wallet.
    busy: Vec<u16>,
    /// The hot set: wallets `0..hot_wallets` (spread over every institution by placement).
    hot_wallets: u64,
    /// Recently spent coins: (the wallet that spent them, the coins).
    spent: VecDeque<(WalletId, Vec<CoinId>)>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("wallets", &self.wallets)
            .field("spent_remembered", &self.spent.len())
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// A generator for the cluster of `blueprint`, whose wallets each start with `initial_fen`
    /// in coins (what genesis exchanged).
    pub fn new(spec: WorkloadSpec, blueprint: Blueprint, initial_fen: u64, seed: u64) -> Workload {
        let wallets = blueprint.wallet_count();
        let institutions = blueprint.institution_count() as u32;
        // The hot set must fit in the cluster (checked when the profile is validated).
        assert!(
            spec.hot_wallets <= wallets,
            "hot set larger than the cluster"
        );
        Workload {
            hot_wallets: spec.hot_wallets,
            spec,
            blueprint,
            wallets,
            institutions,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_b34c),
            balance: vec![initial_fen; wallets as usize],
            reserved: vec![0; wallets as usize],
            busy: vec![0; wallets as usize],
            spent: VecDeque::new(),
        }
    }

    fn saga(&mut self) -> SagaId {
        SagaId::from_u128(self.rng.gen())
    }

    fn is_busy(&self, w: WalletId) -> bool {
        self.busy[w.0 as usize] > 0
    }

    fn institution_of(&self, w: WalletId) -> InstitutionId {
        self.blueprint.institution_of(w)
    }

    fn available(&self, w: WalletId) -> u64 {
        self.balance[w.0 as usize].saturating_sub(self.reserved[w.0 as usize])
    }

    /// An idle wallet outside the hot set with something to spend.
    fn pick_payer(&mut self) -> Option<WalletId> {
        for _ in 0..PICK_TRIES_MAX {
            let w = WalletId(
                self.rng
                    .gen_range(self.hot_wallets..self.wallets.max(self.hot_wallets + 1)),
            );
            if w.0 < self.wallets && !self.is_busy(w) && self.available(w) > 0 {
                return Some(w);
            }
        }
        None
    }

    fn pick_payee(&mut self, payer: WalletId, cross: bool) -> WalletId {
        let same = self.institution_of(payer);
        for _ in 0..PICK_TRIES_MAX * 4 {
            let candidate = WalletId(self.rng.gen_range(0..self.wallets));
            let local = self.institution_of(candidate) == same;
            if candidate != payer && (local != cross || self.institutions == 1) {
                return candidate;
            }
        }
        // A tiny cluster: any other wallet will do.
        WalletId((payer.0 + 1) % self.wallets)
    }

    fn roll(&mut self) -> u32 {
        self.rng.gen_range(0..100)
    }

    /// Decides the next operation, or why there is none.
    pub fn plan(&mut self) -> Result<Planned, NoOp> {
        if self.spec.merge_percent > 0 && self.roll() < self.spec.merge_percent {
            return self.plan_merge().ok_or(NoOp::NoIdleWallet);
        }
        let roll = self.roll();
        let s = &self.spec;
        let (a, b, c) = (
            s.insufficient_percent,
            s.double_spend_percent,
            s.forged_percent,
        );
        let planted = if roll < a {
            self.plan_insufficient()
        } else if roll < a + b {
            self.plan_double_spend()
        } else if roll < a + b + c {
            self.plan_forged()
        } else {
            None
        };
        if let Some(p) = planted {
            return Ok(p);
        }
        if self.hot_wallets >= 2 && self.roll() < self.spec.hot_percent {
            if let Some(p) = self.plan_hot() {
                return Ok(p);
            }
        }
        self.plan_honest().ok_or(NoOp::NoIdleWallet)
    }

    fn plan_honest(&mut self) -> Option<Planned> {
        let payer = self.pick_payer()?;
        let cross = self.roll() < self.spec.cross_institution_percent;
        let payee = self.pick_payee(payer, cross);
        let amount = Amount(
            self.rng
                .gen_range(1..=self.available(payer).min(self.spec.amount_max_fen)),
        );
        let collect = self.roll() < self.spec.collect_percent && !self.is_busy(payee);
        let saga = self.saga();
        if collect {
            return Some(Planned {
                saga,
                kind: Kind::Collect,
                class: Class::Honest,
                reporter: Address::Wallet(payee),
                payer,
                payee,
                amount,
                busy: vec![payer, payee],
                action: Action::Submit(
                    payee,
                    WalletCommand::Collect {
                        saga,
                        payer,
                        amount,
                    },
                ),
            });
        }
        let payee_institution = self.institution_of(payee);
        let kind = if payee_institution == self.institution_of(payer) {
            Kind::PayLocal
        } else {
            Kind::PayCross
        };
        Some(Planned {
            saga,
            kind,
            class: Class::Honest,
            reporter: Address::Wallet(payer),
            payer,
            payee,
            amount,
            busy: vec![payer],
            action: Action::Submit(
                payer,
                WalletCommand::Pay {
                    saga,
                    payee,
                    payee_institution,
                    amount,
                    coins: None,
                },
            ),
        })
    }

    fn plan_merge(&mut self) -> Option<Planned> {
        let wallet = self.pick_payer()?;
        let saga = self.saga();
        Some(Planned {
            saga,
            kind: Kind::Merge,
            class: Class::Honest,
            reporter: Address::Wallet(wallet),
            payer: wallet,
            payee: wallet,
            // A merge moves no value between wallets.
            amount: Amount(0),
            busy: vec![wallet],
            action: Action::Merge(wallet, saga),
        })
    }

    /// A payment from one hot wallet to another, busy or not: value circulates inside the hot
    /// set, and concurrent payments contend for its wallets and coins.
    fn plan_hot(&mut self) -> Option<Planned> {
        let payer = WalletId(self.rng.gen_range(0..self.hot_wallets));
        let mut payee = WalletId(self.rng.gen_range(0..self.hot_wallets - 1));
        if payee.0 >= payer.0 {
            payee.0 += 1;
        }
        let available = self.available(payer);
        if available == 0 {
            return None;
        }
        let amount = Amount(
            self.rng
                .gen_range(1..=available.min(self.spec.amount_max_fen)),
        );
        let saga = self.saga();
        let payee_institution = self.institution_of(payee);
        Some(Planned {
            saga,
            kind: Kind::PayHot,
            class: Class::Honest,
            reporter: Address::Wallet(payer),
            payer,
            payee,
            amount,
            busy: vec![payer],
            action: Action::Submit(
                payer,
                WalletCommand::Pay {
                    saga,
                    payee,
                    payee_institution,
                    amount,
                    coins: None,
                },
            ),
        })
    }

    fn plan_insufficient(&mut self) -> Option<Planned> {
        let payer = self.pick_payer()?;
        let cross = self.roll() < self.spec.cross_institution_percent;
        let payee = self.pick_payee(payer, cross);
        // Far above anything the payer can hold, even with payments arriving meanwhile.
        let amount = Amount(self.balance[payer.0 as usize] + 10 * self.spec.amount_max_fen + 1);
        let saga = self.saga();
        let payee_institution = self.institution_of(payee);
        Some(Planned {
            saga,
            kind: Kind::InvalidInsufficient,
            class: Class::Insufficient,
            reporter: Address::Wallet(payer),
            payer,
            payee,
            amount,
            busy: vec![payer],
            action: Action::Submit(
                payer,
                WalletCommand::Pay {
                    saga,
                    payee,
                    payee_institution,
                    amount,
                    coins: None,
                },
            ),
        })
    }

    fn plan_double_spend(&mut self) -> Option<Planned> {
        let index = self.spent.iter().position(|(w, _)| !self.is_busy(*w))?;
        let (spender, coins) = self.spent.remove(index).expect("index in range");
        let payee = self.pick_payee(spender, true);
        let saga = self.saga();
        let payee_institution = self.institution_of(payee);
        Some(Planned {
            saga,
            kind: Kind::InvalidDoubleSpend,
            class: Class::DoubleSpend,
            reporter: Address::Wallet(spender),
            payer: spender,
            payee,
            amount: Amount(1),
            busy: vec![spender],
            action: Action::Submit(
                spender,
                WalletCommand::Pay {
                    saga,
                    payee,
                    payee_institution,
                    amount: Amount(1),
                    coins: Some(coins),
                },
            ),
        })
    }

    /// A thief names a victim's key and spent coins but can only sign with its own key.
    fn plan_forged(&mut self) -> Option<Planned> {
        let (victim, coins) = self.spent.front().cloned()?;
        let payee = self.pick_payee(victim, true);
        let payee_institution = self.institution_of(payee);
        let thief = SoftKeyStore::from_seed(self.rng.gen());
        let saga = self.saga();
        let signed = PaymentAuthorization {
            saga_id: saga,
            payer: victim,
            payer_key: self.blueprint.wallet_keys(victim).public_key(),
            payer_institution: self.institution_of(victim),
            coin_ids: coins,
            amount: Amount(1),
            payee,
            payee_institution,
            expires_at_ms: u64::MAX,
        }
        .sign(&thief);
        Some(Planned {
            saga,
            kind: Kind::InvalidForged,
            class: Class::Forged,
            reporter: Address::Institution(payee_institution),
            payer: victim,
            payee,
            amount: Amount(1),
            busy: vec![],
            action: Action::Inject(Envelope {
                message_id: 0,
                saga_id: saga,
                from: FORGER,
                to: Address::Institution(payee_institution),
                attempt: 0,
                trace: None,
                payload: Payload::RedeemRequest(signed),
            }),
        })
    }

    /// Marks the operation's wallets busy and reserves an honest payment's amount. Called
    /// once the operation is sent.
    pub fn begin(&mut self, p: &Planned) {
        for w in &p.busy {
            self.busy[w.0 as usize] += 1;
        }
        if p.class == Class::Honest {
            self.reserved[p.payer.0 as usize] += p.amount.0;
        }
    }

    /// Settles an operation begun earlier with its outcome.
    pub fn settle(
        &mut self,
        p: &Planned,
        result: Result<(), AbortReason>,
        spent_coin_ids: Vec<CoinId>,
    ) {
        for w in &p.busy {
            let b = &mut self.busy[w.0 as usize];
            // Every busy mark was set by `begin` of this operation.
            assert!(*b > 0, "busy count of {} underflows", w);
            *b -= 1;
        }
        if p.class == Class::Honest {
            let r = &mut self.reserved[p.payer.0 as usize];
            *r = r.checked_sub(p.amount.0).expect("reserved by begin");
        }
        if result.is_err() {
            return;
        }
        let (payer, payee) = (p.payer.0 as usize, p.payee.0 as usize);
        self.balance[payer] = self.balance[payer].saturating_sub(p.amount.0);
        self.balance[payee] += p.amount.0;
        if !spent_coin_ids.is_empty() {
            if self.spent.len() == SPENT_MEMORY_MAX {
                self.spent.pop_front();
            }
            self.spent.push_back((p.payer, spent_coin_ids));
        }
    }

    /// The total value the model believes the wallets hold in coins.
    pub fn total_fen(&self) -> u64 {
        self.balance.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn workload(extra: &str) -> Workload {
        let text = format!(
            "[bench]\nname = \"t\"\nmode = \"open\"\nduration_s = 1\n{extra}\n[cluster_config.cluster]\nwallets = 40\n"
        );
        let p = Profile::parse(&text, "t.toml", None).expect("valid profile");
        let blueprint = Blueprint::new(&p.cluster_config, 1);
        Workload::new(p.workload, blueprint, 60_000, 9)
    }

    #[test]
    fn honest_payments_stay_within_the_payers_balance_and_respect_the_cross_share() {
        let mut w = workload("[workload]\ncross_institution_percent = 100");
        for _ in 0..200 {
            let p = w.plan().expect("idle wallets exist");
            assert!(p.amount.0 >= 1 && p.amount.0 <= 20_000);
            assert_eq!(p.kind, Kind::PayCross);
            assert_ne!(w.institution_of(p.payer), w.institution_of(p.payee));
            w.begin(&p);
            w.settle(&p, Ok(()), vec![]);
        }
        assert_eq!(
            w.total_fen(),
            40 * 60_000,
            "payments move value, never create it"
        );
    }

    #[test]
    fn a_busy_payer_is_not_picked_until_its_outcome_arrives() {
        let mut w = workload("");
        let mut planned = Vec::new();
        // Random picks can miss the last idle wallets: stop only after many misses in a row.
        let mut misses = 0;
        while misses < 200 {
            match w.plan() {
                Ok(p) => {
                    w.begin(&p);
                    planned.push(p);
                    misses = 0;
                }
                Err(NoOp::NoIdleWallet) => misses += 1,
            }
            assert!(
                planned.len() <= 40,
                "more operations in flight than wallets"
            );
        }
        assert_eq!(planned.len(), 40, "every wallet pays once");
        let payers: std::collections::HashSet<_> = planned.iter().map(|p| p.payer).collect();
        assert_eq!(
            payers.len(),
            planned.len(),
            "each in-flight payment has its own payer"
        );
        let first = planned.remove(0);
        w.settle(&first, Err(AbortReason::Timeout), vec![]);
        // One idle wallet among 40: some of these random picks find it.
        let again = (0..50)
            .filter_map(|_| w.plan().ok())
            .next()
            .expect("a settled payer is idle again");
        assert_eq!(again.payer, first.payer);
    }

    #[test]
    fn planted_operations_carry_the_refusal_they_must_get() {
        let mut w = workload(
            "[workload]\ninsufficient_percent = 15\ndouble_spend_percent = 15\nforged_percent = 15",
        );
        // Seed spent coins so double spends and forgeries can be planted.
        let seed = w.plan().expect("plan");
        w.begin(&seed);
        w.settle(&seed, Ok(()), vec![CoinId([7; 32])]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let Ok(p) = w.plan() else { continue };
            if p.class == Class::Insufficient {
                assert!(
                    p.amount.0 > 60_000 + 20_000,
                    "above any balance the payer can hold"
                );
            }
            seen.insert(p.class);
            w.begin(&p);
            let result = p.class.expected_refusal().map_or(Ok(()), Err);
            // Committed payments spend coins that later plants can name.
            let spent = if result.is_ok() {
                vec![CoinId([seen.len() as u8; 32])]
            } else {
                vec![]
            };
            w.settle(&p, result, spent);
        }
        assert!(
            seen.contains(&Class::Insufficient) && seen.contains(&Class::Forged),
            "{seen:?}"
        );
    }

    #[test]
    fn hot_payments_stay_inside_the_hot_set_even_when_its_wallets_are_busy() {
        let mut w = workload("[workload]\nhot_wallets = 3\nhot_percent = 100");
        let mut hot = 0;
        for _ in 0..50 {
            let p = w.plan().expect("plan");
            if p.kind == Kind::PayHot {
                hot += 1;
                assert!(p.payer.0 < 3 && p.payee.0 < 3 && p.payer != p.payee);
            }
            w.begin(&p); // never settled: the hot wallets stay busy
        }
        assert!(hot >= 10, "{hot} hot payments");
    }
}
