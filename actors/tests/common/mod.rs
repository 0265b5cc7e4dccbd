//! Shared by the integration tests: a small cluster from `config/local.toml`, and a seeded
//! workload driver that keeps an independent reference model of every wallet's coin balance,
//! computed only from the requests it makes and the outcomes the cluster reports.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::wallet::WalletCommand;
use specie_actors::{Cluster, ClusterSnapshot};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, InstitutionId, Payload, PaymentAuthorization,
    SagaId, SagaKind, SoftKeyStore, WalletId,
};
use specie_runtime::config::Config;
use specie_runtime::Notice;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// The embedded default config with `wallets` wallets.
pub fn config(wallets: u64) -> Config {
    let text = include_str!("../../../config/local.toml");
    let mut config = Config::parse(text, "config/local.toml").expect("the default config is valid");
    config.cluster.wallets = wallets;
    config
}

/// Sum of coin values a snapshot shows per wallet.
pub fn coin_balances(s: &ClusterSnapshot) -> Vec<u64> {
    s.wallets
        .iter()
        .map(|w| w.coins.iter().map(|c| c.value().0).sum())
        .collect()
}

/// Account balance per wallet, from its institution's snapshot.
pub fn account_balances(s: &ClusterSnapshot) -> BTreeMap<WalletId, u64> {
    s.institutions
        .iter()
        .flat_map(|i| i.accounts.iter().map(|(w, a)| (*w, a.balance.0)))
        .collect()
}

/// What the driver expects of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Must commit.
    Commit,
    /// Must abort with exactly this reason.
    Refuse(AbortReason),
    /// Must abort, for any reason (faults may change which check fires first).
    Abort,
    /// Either (faults may abort a legitimate payment).
    Any,
}

/// A request the driver made.
#[derive(Debug, Clone)]
pub struct Op {
    /// What kind of request, for messages and counts.
    pub label: &'static str,
    /// Paying wallet (whose coins move).
    pub payer: WalletId,
    /// Receiving wallet.
    pub payee: WalletId,
    /// Amount.
    pub amount: Amount,
    /// The actor whose notice ends the request: the initiating wallet, or the coordinator for
    /// requests injected from outside.
    pub reporter: Address,
    /// The payee's institution, which coordinates.
    pub coordinator: InstitutionId,
    /// What must happen.
    pub expect: Expect,
    /// Whether payer and payee are held busy while it runs.
    pub holds_wallets: bool,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The request.
    pub op: Op,
    /// The reporter's outcome.
    pub result: Result<(), AbortReason>,
}

/// One notice: who published it, the outcome and the coins it says were spent.
type Reported<By> = (By, Result<(), AbortReason>, Vec<CoinId>);

/// Drives payments through a cluster and keeps the reference model.
pub struct Driver<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    notices: UnboundedReceiver<Notice>,
    /// The workload's random source.
    pub rng: ChaCha8Rng,
    busy: Vec<bool>,
    /// Model: coin value each wallet holds.
    pub balances: Vec<u64>,
    /// Model: account balance each wallet has.
    pub accounts: Vec<u64>,
    pending: HashMap<SagaId, Op>,
    /// Requests that reached their notice, by saga.
    pub finished: HashMap<SagaId, Finished>,
    /// Notices of initiating wallets, by saga.
    wallet_notices: HashMap<SagaId, Vec<Reported<WalletId>>>,
    /// Notices of coordinators, by saga.
    coordinator_notices: HashMap<SagaId, Vec<Reported<InstitutionId>>>,
    /// Coins spent by committed payments, with their payer, not yet replayed.
    spent_pool: Vec<(WalletId, Vec<CoinId>)>,
    pooled: std::collections::HashSet<SagaId>,
    next_saga: u128,
    next_external: u64,
    /// Everything that went against expectations, as it happened.
    pub violations: Vec<String>,
}

impl<'a> Driver<'a> {
    /// A driver over a freshly started cluster: the model starts from the genesis config, and
    /// is checked against a first snapshot.
    pub async fn new(cluster: &'a Cluster, seed: u64) -> Driver<'a> {
        let n = cluster.wallet_count() as usize;
        let g = &cluster.config().genesis;
        let driver = Driver {
            cluster,
            notices: cluster.notices(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            busy: vec![false; n],
            balances: vec![g.exchange_fen; n],
            accounts: vec![g.account_balance_fen - g.exchange_fen; n],
            pending: HashMap::new(),
            finished: HashMap::new(),
            wallet_notices: HashMap::new(),
            coordinator_notices: HashMap::new(),
            spent_pool: Vec::new(),
            pooled: Default::default(),
            next_saga: u128::from(seed) << 64 | 0x5a5a << 32,
            next_external: 1,
            violations: Vec::new(),
        };
        let snapshot = cluster.snapshot().await.expect("snapshot");
        assert_eq!(coin_balances(&snapshot), driver.balances, "genesis coins");
        driver.check_accounts(&snapshot);
        driver
    }

    fn saga(&mut self) -> SagaId {
        self.next_saga += 1;
        SagaId::from_u128(self.next_saga)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sagas still waiting for their notice.
    pub fn pending(&self) -> Vec<(SagaId, Op)> {
        self.pending.iter().map(|(s, o)| (*s, o.clone())).collect()
    }

    /// A wallet no request in flight involves, drawn at random among those that pass `ok`.
    pub fn free_wallet(&mut self, ok: impl Fn(WalletId, u64) -> bool) -> Option<WalletId> {
        let n = self.busy.len() as u64;
        for _ in 0..64 {
            let w = WalletId(self.rng.gen_range(0..n));
            if !self.busy[w.0 as usize] && ok(w, self.balances[w.0 as usize]) {
                return Some(w);
            }
        }
        None
    }

    /// A free payee for `payer`, at another institution when `cross`, else at the same.
    pub fn free_payee(&mut self, payer: WalletId, cross: bool) -> Option<WalletId> {
        let inst = self.cluster.institution_of(payer);
        let cluster = self.cluster;
        self.free_wallet(|w, _| w != payer && (cluster.institution_of(w) != inst) == cross)
    }

    fn hold(&mut self, op: &Op) {
        if op.holds_wallets {
            for w in [op.payer, op.payee] {
                assert!(!self.busy[w.0 as usize], "{w} is already busy");
                self.busy[w.0 as usize] = true;
            }
        }
    }

    /// The payer pays `amount` to the payee (spending `coins` when given).
    pub async fn pay(
        &mut self,
        label: &'static str,
        payer: WalletId,
        payee: WalletId,
        amount: Amount,
        coins: Option<Vec<CoinId>>,
        expect: Expect,
    ) -> SagaId {
        let saga = self.saga();
        let payee_institution = self.cluster.institution_of(payee);
        let op = Op {
            label,
            payer,
            payee,
            amount,
            reporter: Address::Wallet(payer),
            coordinator: payee_institution,
            expect,
            holds_wallets: true,
        };
        self.hold(&op);
        self.pending.insert(saga, op);
        let command = WalletCommand::Pay {
            saga,
            payee,
            payee_institution,
            amount,
            coins,
        };
        self.cluster
            .submit(payer, command)
            .await
            .expect("payer reachable");
        saga
    }

    /// The payee, as a merchant, collects `amount` from the payer.
    pub async fn collect(
        &mut self,
        label: &'static str,
        payee: WalletId,
        payer: WalletId,
        amount: Amount,
        expect: Expect,
    ) -> SagaId {
        let saga = self.saga();
        let op = Op {
            label,
            payer,
            payee,
            amount,
            reporter: Address::Wallet(payee),
            coordinator: self.cluster.institution_of(payee),
            expect,
            holds_wallets: true,
        };
        self.hold(&op);
        self.pending.insert(saga, op);
        let command = WalletCommand::Collect {
            saga,
            payer,
            amount,
        };
        self.cluster
            .submit(payee, command)
            .await
            .expect("payee reachable");
        saga
    }

    /// A legitimate payment between two free wallets, within or across institutions, started
    /// by the payer or collected by the payee. Its amount is within a third of the payer's
    /// balance, so that the payer's 16 largest coins (the input limit) cover it unless the
    /// payer holds more than 48 coins (the most seen is about 26).
    pub async fn legit(
        &mut self,
        cross_percent: u32,
        collect_percent: u32,
        expect: Expect,
    ) -> Option<SagaId> {
        let payer = self.free_wallet(|_, balance| balance >= 3)?;
        let cross = self.rng.gen_range(0..100) < cross_percent;
        let payee = self.free_payee(payer, cross)?;
        let top = (self.balances[payer.0 as usize] / 3)
            .min(self.cluster.config().workload.amount_max_fen);
        let amount = Amount(self.rng.gen_range(1..=top));
        Some(if self.rng.gen_range(0..100) < collect_percent {
            self.collect("collect", payee, payer, amount, expect).await
        } else {
            self.pay("pay", payer, payee, amount, None, expect).await
        })
    }

    /// A payment (or collect request) for more than the payer holds.
    pub async fn insufficient(&mut self, expect: Expect) -> Option<SagaId> {
        let payer = self.free_wallet(|_, _| true)?;
        let cross = self.rng.gen_bool(0.5);
        let payee = self.free_payee(payer, cross)?;
        let amount = Amount(self.balances[payer.0 as usize] + self.rng.gen_range(1..=5_000));
        Some(if self.rng.gen_bool(0.3) {
            self.collect("collect-insufficient", payee, payer, amount, expect)
                .await
        } else {
            self.pay("pay-insufficient", payer, payee, amount, None, expect)
                .await
        })
    }

    /// A second spend, by their payer, of coins an earlier committed payment spent.
    pub async fn double_spend(&mut self, expect: Expect) -> Option<SagaId> {
        let at =
            (0..self.spent_pool.len()).find(|i| !self.busy[self.spent_pool[*i].0 .0 as usize])?;
        let payer = self.spent_pool[at].0;
        let cross = self.rng.gen_bool(0.5);
        let payee = self.free_payee(payer, cross)?;
        let (_, coins) = self.spent_pool.swap_remove(at);
        let amount = Amount(self.rng.gen_range(1..=1_000));
        Some(
            self.pay("double-spend", payer, payee, amount, Some(coins), expect)
                .await,
        )
    }

    /// A redeem request injected from outside the cluster, naming a victim wallet's key and
    /// coins (as a snapshot shows them) but signed with another key.
    pub async fn forge(&mut self, expect: Expect) -> Option<SagaId> {
        let snapshot = self.cluster.snapshot().await.expect("snapshot");
        let victim = self.free_wallet(|w, _| !snapshot.wallets[w.0 as usize].coins.is_empty())?;
        let cross = self.rng.gen_bool(0.5);
        let payee = self.free_payee(victim, cross)?;
        let mut coins = snapshot.wallets[victim.0 as usize].coins.clone();
        coins.shuffle(&mut self.rng);
        coins.truncate(self.rng.gen_range(1..=coins.len().min(4)));
        let total: u64 = coins.iter().map(|c| c.value().0).sum();
        let amount = Amount(self.rng.gen_range(1..=total));
        let saga = self.saga();
        let forger = SoftKeyStore::from_seed(self.rng.gen());
        let now = self.cluster.node().clock().now_ms();
        let signed = PaymentAuthorization {
            saga_id: saga,
            payer: victim,
            payer_key: self.cluster.wallet_key(victim),
            payer_institution: self.cluster.institution_of(victim),
            coin_ids: coins.iter().map(|c| c.id).collect(),
            amount,
            payee,
            payee_institution: self.cluster.institution_of(payee),
            expires_at_ms: now + 60_000,
        }
        .sign(&forger);
        let op = Op {
            label: "forged",
            payer: victim,
            payee,
            amount,
            reporter: Address::Institution(self.cluster.institution_of(payee)),
            coordinator: self.cluster.institution_of(payee),
            expect,
            holds_wallets: false,
        };
        self.pending.insert(saga, op);
        self.next_external += 1;
        self.cluster.inject(Envelope {
            message_id: 0,
            saga_id: saga,
            from: Address::External(self.next_external),
            to: Address::Institution(self.cluster.institution_of(payee)),
            attempt: 0,
            trace: None,
            payload: Payload::RedeemRequest(signed),
        });
        Some(saga)
    }

    /// Waits for the next notice and takes it into account. Panics (listing what is still
    /// pending) when none comes within `timeout`.
    pub async fn step(&mut self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.notices.recv()).await {
            Ok(Some(notice)) => self.on_notice(notice),
            Ok(None) => panic!("the notice channel closed"),
            Err(_) => {
                let mut stuck: Vec<String> = self
                    .pending
                    .iter()
                    .take(10)
                    .map(|(s, o)| format!("{s}: {o:?}"))
                    .collect();
                stuck.sort();
                panic!(
                    "no notice for {timeout:?}; {} requests pending, e.g.\n{}\nviolations so far: {:#?}",
                    self.pending.len(),
                    stuck.join("\n"),
                    self.violations
                );
            }
        }
    }

    /// Takes every notice already published into account, without waiting.
    pub fn drain(&mut self) {
        while let Ok(notice) = self.notices.try_recv() {
            self.on_notice(notice);
        }
    }

    /// Waits until every request has its notice.
    pub async fn finish_all(&mut self, per_notice: Duration) {
        while !self.pending.is_empty() {
            self.step(per_notice).await;
        }
    }

    fn violation(&mut self, fact: String) {
        eprintln!("violation: {fact}");
        self.violations.push(fact);
    }

    fn on_notice(&mut self, n: Notice) {
        let saga = n.saga_id;
        if n.outcome.kind != SagaKind::Pay {
            return self.violation(format!(
                "{saga}: notice of a {:?} saga from {}",
                n.outcome.kind, n.source
            ));
        }
        let result = n.outcome.result;
        let spent = n.outcome.spent_coin_ids.clone();
        if result.is_err() && !spent.is_empty() {
            self.violation(format!(
                "{saga}: aborted, yet {} reports spent coins",
                n.source
            ));
        }
        let known = self.pending.contains_key(&saga) || self.finished.contains_key(&saga);
        if !known {
            return self.violation(format!(
                "{saga}: notice from {} for a saga nobody started: {result:?}",
                n.source
            ));
        }
        match n.source {
            Address::Wallet(w) => {
                let reporter = self
                    .pending
                    .get(&saga)
                    .or(self.finished.get(&saga).map(|f| &f.op))
                    .map(|o| o.reporter);
                if reporter != Some(Address::Wallet(w)) {
                    self.violation(format!(
                        "{saga}: {w} reports {result:?}, but it did not start the request"
                    ));
                }
                let entry = self.wallet_notices.entry(saga).or_default();
                entry.push((w, result, spent.clone()));
                if entry.len() > 1 {
                    let first = entry[0].clone();
                    if first.1 != result || first.0 != w {
                        self.violation(format!(
                            "{saga}: {w} reports {result:?} after {} reported {:?}",
                            first.0, first.1
                        ));
                    }
                }
            }
            Address::Institution(i) => {
                let entry = self.coordinator_notices.entry(saga).or_default();
                entry.push((i, result, spent.clone()));
                let count = entry.len();
                if count > 1 {
                    self.violation(format!("{saga}: {count} coordinator notices"));
                }
                let op = self
                    .pending
                    .get(&saga)
                    .or(self.finished.get(&saga).map(|f| &f.op));
                if let Some(op) = op {
                    if op.coordinator != i {
                        let c = op.coordinator;
                        self.violation(format!("{saga}: outcome from {i}, the coordinator is {c}"));
                    }
                }
            }
            other => return self.violation(format!("{saga}: notice from {other}")),
        }
        if let Some(op) = self.pending.get(&saga) {
            if op.reporter == n.source {
                let op = self.pending.remove(&saga).expect("pending");
                self.complete(saga, op, result);
            }
        }
        if let Some(f) = self.finished.get(&saga) {
            if f.result.is_ok() && !spent.is_empty() && self.pooled.insert(saga) {
                self.spent_pool.push((f.op.payer, spent));
            }
        }
    }

    fn complete(&mut self, saga: SagaId, op: Op, result: Result<(), AbortReason>) {
        let fits = match op.expect {
            Expect::Commit => result.is_ok(),
            Expect::Refuse(reason) => result == Err(reason),
            Expect::Abort => result.is_err(),
            Expect::Any => true,
        };
        if !fits {
            self.violation(format!(
                "{saga}: {} expected {:?}, got {result:?}: {op:?}",
                op.label, op.expect
            ));
        }
        if result.is_ok() {
            let (payer, payee) = (op.payer.0 as usize, op.payee.0 as usize);
            match self.balances[payer].checked_sub(op.amount.0) {
                Some(left) => self.balances[payer] = left,
                None => self.violation(format!(
                    "{saga}: {} committed {} fen, the model gives the payer only {}",
                    op.label, op.amount.0, self.balances[payer]
                )),
            }
            self.balances[payee] += op.amount.0;
            // The coordinator's notice (with the spent coins) may have come first.
            if let Some((_, _, spent)) = self.coordinator_notices.get(&saga).and_then(|v| v.first())
            {
                if !spent.is_empty() && self.pooled.insert(saga) {
                    self.spent_pool.push((op.payer, spent.clone()));
                }
            }
        }
        if op.holds_wallets {
            self.busy[op.payer.0 as usize] = false;
            self.busy[op.payee.0 as usize] = false;
        }
        self.finished.insert(saga, Finished { op, result });
    }

    /// After quiescence: the notices of every saga agree with each other and with what the
    /// coordinator decided; every commit was decided by the coordinator.
    pub fn check_notices(&mut self) {
        self.drain();
        let mut facts = Vec::new();
        for (saga, f) in &self.finished {
            let coordinator = self.coordinator_notices.get(saga).and_then(|v| v.first());
            match coordinator {
                Some((_, result, spent)) => {
                    if *result != f.result {
                        facts.push(format!(
                            "{saga}: {} reported {:?}, coordinator {result:?}",
                            f.op.label, f.result
                        ));
                    }
                    if let Some((_, _, wallet_spent)) =
                        self.wallet_notices.get(saga).and_then(|v| v.first())
                    {
                        if !wallet_spent.is_empty() && wallet_spent != spent {
                            facts.push(format!(
                                "{saga}: wallet and coordinator disagree on the spent coins"
                            ));
                        }
                    }
                }
                None if f.result.is_ok() => facts.push(format!(
                    "{saga}: {} committed without a coordinator notice",
                    f.op.label
                )),
                None => {}
            }
        }
        for fact in facts {
            self.violation(fact);
        }
    }

    /// Finished requests by label and outcome.
    pub fn tally(&self) -> BTreeMap<(&'static str, String), usize> {
        let mut t = BTreeMap::new();
        for f in self.finished.values() {
            let outcome = match f.result {
                Ok(()) => "committed".to_string(),
                Err(r) => r.name().to_string(),
            };
            *t.entry((f.op.label, outcome)).or_default() += 1;
        }
        t
    }

    fn check_accounts(&self, s: &ClusterSnapshot) {
        let accounts = account_balances(s);
        assert_eq!(
            accounts.len(),
            self.accounts.len(),
            "one account per wallet"
        );
        for (w, balance) in accounts {
            assert_eq!(balance, self.accounts[w.0 as usize], "account of {w}");
        }
    }

    /// Compares a quiescent snapshot with the model: every wallet's coins, every account,
    /// nothing pending in any wallet.
    pub fn check_snapshot(&self, s: &ClusterSnapshot) {
        let held = coin_balances(s);
        let wrong: Vec<String> = held
            .iter()
            .zip(&self.balances)
            .enumerate()
            .filter(|(_, (h, m))| h != m)
            .map(|(w, (h, m))| format!("wallet-{w}: holds {h}, model {m}"))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} wallets differ from the model: {wrong:#?}",
            wrong.len()
        );
        self.check_accounts(s);
        let busy: Vec<_> = s
            .wallets
            .iter()
            .filter(|w| w.pending > 0)
            .map(|w| w.id)
            .collect();
        assert!(
            busy.is_empty(),
            "wallets with operations still pending: {busy:?}"
        );
    }
}

/// Closes every open reconciliation batch and asserts continuous reconciliation agreed on all
/// of them — no finding, nothing unfinished or late — with both sides holding records of each
/// of `kinds`. Call once, at the end of a test: later records of a closed batch are late.
pub async fn assert_reconciled(cluster: &specie_actors::Cluster, kinds: &[&str]) {
    let r = cluster.flush_reconciliation(Duration::from_secs(30)).await;
    assert!(r.ok(), "reconciliation: {r:#?}");
    assert_eq!(r.agreed, r.batches, "{r:#?}");
    assert_eq!(r.institution, r.platform, "{r:#?}");
    for kind in kinds {
        let (institution, platform) = r.records_by_kind.get(kind).copied().unwrap_or_default();
        assert!(
            institution > 0 && institution == platform,
            "{kind}: {institution} institution records, {platform} platform records"
        );
    }
}
