//! `specie run --workload mixed`: every saga together, in the proportions of the config's
//! `[workload.mix]`, each with requests that must be refused.
//!
//! The pay share goes to the pay driver of `run.rs` (with its planted refusals). The rest is
//! driven here:
//!
//! - **escrow**: a life per contract — the payer deposits (coins frozen for a merchant, with a
//!   cap), the merchant claims, and the contract ends either by the payer's release or by
//!   expiry. Two lives in three are released: they plant a claim above what remains
//!   (`cap_exceeded`), a second claim with a used claim number (`already_claimed`) and a claim
//!   after the release (`already_released`). One in three expires (a short expiry): its claim
//!   may race the expiry, and a claim after the expiry must be refused (`expired`). Each step
//!   is an `escrow` operation in the report.
//! - **wallet_update**: the wallet updates (coins withdrawn to the account, offline records
//!   uploaded, new parameters applied), then exchanges coins out again (an `exchange`).
//! - **offline_pay**: a proximity negotiation between payer and payee first (counted in
//!   `negotiation`); one in five offers an incompatible terminal or an amount above the limit
//!   and must be refused. When the negotiation agrees, the offline payment follows.
//! - **merge**, **split**, **offline_pay** (the payment itself): the merge, split and offline
//!   payment sagas, driven by `src/workload_sagas.rs` through `sagas_hook` below.
//!
//! Wallets taking part in any operation are held busy (the pay driver's busy set) until the
//! operation ends and their coin balance in the workload's model has been read back from the
//! wallet, so the pay driver never bets on a balance an escrow or an update changed.

use super::Driver;
use anyhow::Result;
use clap::ValueEnum;
use rand::Rng;
use specie_actors::escrow::{closure_saga, Closure};
use specie_actors::wallet::{EscrowCommand, NegotiateCommand, UpdateCommand, WalletCommand};
use specie_protocol::escrow::contract_id;
use specie_protocol::negotiate::Capabilities;
use specie_protocol::update::WalletParams;
use specie_protocol::{AbortReason, Address, Amount, SagaId, SagaKind, WalletId};
use specie_runtime::Notice;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// What `specie run` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Payments only (payer- and payee-initiated, with planted refusals).
    Pay,
    /// Every saga, in the proportions of the config's `[workload.mix]`.
    Mixed,
}

impl Workload {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pay => "pay",
            Workload::Mixed => "mixed",
        }
    }
}

/// The kinds a mixed run reports, whether or not each finished an operation.
pub const MIXED_KINDS: [&str; 6] = [
    "pay",
    "merge",
    "split",
    "offline_pay",
    "escrow",
    "wallet_update",
];

/// A released escrow stays open this long (it is released long before).
const ESCROW_TTL_MS: u64 = 60_000;
/// An escrow left to expire expires this soon.
const ESCROW_SHORT_TTL_MS: u64 = 1_500;
/// Escrow lives in flight at once, at most (each holds two wallets busy for its life).
const ESCROW_LIVES_MAX: usize = 64;
/// Wallet updates in flight at once, at most.
const UPDATES_MAX: usize = 32;
/// One negotiation in this many is planted to be refused.
const NEGOTIATION_PLANT_EVERY: u32 = 5;

/// One step of an escrow's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An honest claim of about a third of what remains.
    Claim,
    /// Planted: more than remains.
    OverCap,
    /// Planted: a new request reusing the number of a paid claim.
    DuplicateId,
    /// The payer releases.
    Release,
    /// Wait for the escrow's expiry (its closure notice).
    AwaitExpiry,
    /// Planted: a claim after the escrow closed.
    AfterClose,
}

struct Life {
    payer: WalletId,
    merchant: WalletId,
    cap: u64,
    claimed: u64,
    paid_claims: Vec<u64>,
    next_claim_id: u64,
    steps: VecDeque<Step>,
    expired: bool,
    /// How it ends: released, or expired.
    ending: Closure,
}

/// What a mixed operation is, for settling it.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A step of escrow life `contract` (`Deposit` is the first).
    Escrow {
        contract: u64,
        step: Option<Step>,
        amount: u64,
        claim_id: u64,
    },
    /// The escrow's expiry notice.
    Expiry { contract: u64 },
    /// A wallet update.
    Update {
        wallet: WalletId,
        version_before: u32,
    },
    /// The exchange after an update.
    Exchange { wallet: WalletId },
    /// A proximity negotiation before an offline payment.
    Negotiate {
        payer: WalletId,
        payee: WalletId,
        amount: u64,
        planted: Option<AbortReason>,
    },
}

struct Pending {
    started: Instant,
    reporter: Address,
    op: Op,
}

/// The mixed state of a driver (present in a mixed run).
fn mixed<'m>(d: &'m mut Driver<'_>) -> &'m mut Mixed {
    d.mixed.as_mut().expect("a mixed run")
}

/// The mixed workload's state, beside the pay driver's.
pub struct Mixed {
    pending: HashMap<SagaId, Pending>,
    lives: HashMap<u64, Life>,
    /// Wallets whose operation ended: read their coins back, then free them.
    to_refresh: Vec<WalletId>,
    /// Commands decided while settling a notice, handed to their wallets at the next flush.
    outbox: Vec<(WalletId, WalletCommand)>,
    updates: usize,
    next_contract: u64,
    negotiations: u32,
    agreed: u64,
    refused: u64,
    /// No new operations (the run is draining).
    stopped: bool,
    /// Merges, splits and offline payments (`src/workload_sagas.rs`).
    sagas: crate::workload_sagas::SagaWorkload,
    /// Agreed negotiations whose offline payment starts at the next flush: (payer, payee,
    /// agreed amount). Both wallets stay held.
    agreed_offline: Vec<(WalletId, WalletId, u64)>,
    /// Updated wallets that take coins out again at the next flush (held busy), with the
    /// parameters version they ran before.
    exchanges_due: Vec<(WalletId, u32)>,
}

impl Mixed {
    /// The state of a mixed run, or `None` for a pay run.
    pub fn new(workload: Workload, seed: u64) -> Option<Mixed> {
        (workload == Workload::Mixed).then(|| Mixed {
            pending: HashMap::new(),
            lives: HashMap::new(),
            to_refresh: Vec::new(),
            outbox: Vec::new(),
            updates: 0,
            // Contract serials differ between runs of one data directory.
            next_contract: seed.wrapping_mul(0x9e37_79b9) << 20,
            negotiations: 0,
            agreed: 0,
            refused: 0,
            stopped: false,
            sagas: Default::default(),
            agreed_offline: Vec::new(),
            exchanges_due: Vec::new(),
        })
    }

    /// Operations in flight. A live escrow always has a step (or its expiry) pending; a
    /// wallet waiting to be read back counts until it is free.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
            + self.to_refresh.len()
            + self.sagas.in_flight()
            + self.agreed_offline.len()
            + self.exchanges_due.len()
    }
}

/// The merge, split and offline payment sagas (the other half of issue 3), driven by
/// `src/workload_sagas.rs` with this driver's random source, busy wallets, balance model and
/// report.
mod sagas_hook {
    use super::Driver;
    use crate::workload_sagas::{Ctx, OfflineBounds};
    use anyhow::Result;
    use specie_protocol::WalletId;
    use specie_runtime::Notice;

    /// Starts a merge or a split.
    pub(super) async fn start(d: &mut Driver<'_>, kind: &'static str) -> Result<Option<bool>> {
        let sagas = &mut d.mixed.as_mut().expect("a mixed run").sagas;
        let ctx = Ctx {
            cluster: d.cluster,
            rng: &mut d.rng,
            busy: &mut d.busy,
            balance: &mut d.balance,
            report: &mut d.report,
        };
        let started = match kind {
            "merge" => sagas.start_merge(ctx).await?,
            _ => sagas.start_split(ctx).await?,
        };
        Ok(Some(started))
    }

    /// Starts the offline payments of the negotiations that agreed.
    pub(super) async fn offline(d: &mut Driver<'_>) -> Result<()> {
        let bounds = OfflineBounds {
            offline_limit_fen: d.config.limits.offline_limit_fen,
            amount_max_fen: d.config.workload.amount_max_fen,
        };
        let mixed = d.mixed.as_mut().expect("a mixed run");
        mixed.sagas.flush(d.cluster).await?;
        let agreed: Vec<(WalletId, WalletId, u64)> = std::mem::take(&mut mixed.agreed_offline);
        for (payer, payee, amount) in agreed {
            let ctx = Ctx {
                cluster: d.cluster,
                rng: &mut d.rng,
                busy: &mut d.busy,
                balance: &mut d.balance,
                report: &mut d.report,
            };
            mixed
                .sagas
                .start_offline_pay(ctx, payer, payee, amount, bounds)
                .await?;
        }
        Ok(())
    }

    /// Settles a merge, split or offline operation; false when the notice is not one.
    pub(super) fn settle(d: &mut Driver<'_>, notice: &Notice) -> bool {
        let Some(mixed) = d.mixed.as_mut() else {
            return false;
        };
        let ctx = Ctx {
            cluster: d.cluster,
            rng: &mut d.rng,
            busy: &mut d.busy,
            balance: &mut d.balance,
            report: &mut d.report,
        };
        mixed.sagas.settle(notice, ctx)
    }
}

/// Rolls the kind of the next operation and starts it. `Ok(None)`: a payment (the caller's);
/// `Ok(Some(false))`: nothing could start now.
pub(super) async fn start_one(d: &mut Driver<'_>) -> Result<Option<bool>> {
    let Some(mixed) = &d.mixed else {
        return Ok(None);
    };
    if mixed.stopped {
        return Ok(Some(false));
    }
    let mix = d.config.workload.mix;
    let mut roll = d.rng.gen_range(0..100);
    let mut kind = "pay";
    for (k, share) in mix.shares() {
        if roll < share {
            kind = k;
            break;
        }
        roll -= share;
    }
    match kind {
        "escrow" => start_escrow(d).await.map(Some),
        "wallet_update" => start_update(d).await.map(Some),
        "offline_pay" => start_negotiation(d).await.map(Some),
        "merge" | "split" => sagas_hook::start(d, kind).await,
        _ => Ok(None),
    }
}

/// Stops starting operations (the run drains what is in flight).
pub(super) fn stop(d: &mut Driver<'_>) {
    if let Some(m) = &mut d.mixed {
        m.stopped = true;
    }
}

fn pick_pair(d: &mut Driver<'_>, min_balance: u64, cross: bool) -> Option<(WalletId, WalletId)> {
    let n = d.cluster.wallet_count();
    let payer = (0..16)
        .map(|_| WalletId(d.rng.gen_range(0..n)))
        .find(|w| !d.busy.contains(w) && d.balance[w.0 as usize] >= min_balance)?;
    let inst = d.cluster.institution_of(payer);
    let other = (0..32).map(|_| WalletId(d.rng.gen_range(0..n))).find(|w| {
        *w != payer && !d.busy.contains(w) && (d.cluster.institution_of(*w) != inst) == cross
    })?;
    Some((payer, other))
}

fn track(d: &mut Driver<'_>, saga: SagaId, reporter: Address, op: Op) {
    mixed(d).pending.insert(
        saga,
        Pending {
            started: Instant::now(),
            reporter,
            op,
        },
    );
}

// ----- escrow -----

async fn start_escrow(d: &mut Driver<'_>) -> Result<bool> {
    if mixed(d).lives.len() >= ESCROW_LIVES_MAX {
        return Ok(false);
    }
    let cross = d.rng.gen_range(0..100) < d.config.workload.cross_institution_percent;
    let Some((payer, merchant)) = pick_pair(d, 3_000, cross) else {
        return Ok(false);
    };
    let cap = d.rng.gen_range(
        1_000
            ..=d.balance[payer.0 as usize]
                .min(d.config.workload.amount_max_fen)
                .max(1_000),
    );
    let ending = if d.rng.gen_range(0..3) == 0 {
        Closure::Expired
    } else {
        Closure::Released
    };
    let (ttl, steps) = match ending {
        Closure::Expired => (
            ESCROW_SHORT_TTL_MS,
            vec![Step::Claim, Step::AwaitExpiry, Step::AfterClose],
        ),
        _ => (
            ESCROW_TTL_MS,
            vec![
                Step::Claim,
                Step::OverCap,
                Step::DuplicateId,
                Step::Claim,
                Step::Release,
                Step::AfterClose,
            ],
        ),
    };
    let m = mixed(d);
    m.next_contract += 1;
    let serial = m.next_contract;
    let contract = contract_id(d.cluster.institution_of(payer), serial);
    let saga = d.saga();
    d.busy.insert(payer);
    d.busy.insert(merchant);
    mixed(d).lives.insert(
        contract,
        Life {
            payer,
            merchant,
            cap,
            claimed: 0,
            paid_claims: Vec::new(),
            next_claim_id: 1,
            steps: steps.into(),
            expired: false,
            ending,
        },
    );
    if ending == Closure::Expired {
        // The closure may come before the life gets to wait for it: listen from the start.
        let expiry = closure_saga(contract, Closure::Expired);
        track(
            d,
            expiry,
            Address::Escrow(contract),
            Op::Expiry { contract },
        );
    }
    track(
        d,
        saga,
        Address::Wallet(payer),
        Op::Escrow {
            contract,
            step: None,
            amount: cap,
            claim_id: 0,
        },
    );
    let command = EscrowCommand::Deposit {
        saga,
        contract,
        merchant,
        merchant_institution: d.cluster.institution_of(merchant),
        cap: Amount(cap),
        expires_at_ms: d.cluster.node().clock().now_ms() + ttl,
    };
    d.cluster
        .submit(payer, WalletCommand::Escrow(command))
        .await?;
    Ok(true)
}

/// Starts the next step of a life, or ends it. Called while settling a notice, so the
/// command waits in the outbox for the next flush.
fn next_step(d: &mut Driver<'_>, contract: u64) {
    let Some(life) = d.mixed.as_mut().and_then(|m| m.lives.get_mut(&contract)) else {
        return;
    };
    let Some(step) = life.steps.pop_front() else {
        let life = mixed(d).lives.remove(&contract).expect("present");
        mixed(d).to_refresh.extend([life.payer, life.merchant]);
        return;
    };
    let (payer, merchant) = (life.payer, life.merchant);
    let remaining = life.cap - life.claimed;
    let (amount, claim_id) = match step {
        Step::Claim if remaining <= 1 => return next_step(d, contract),
        // At most half of what remains: a claim of the whole cap would close the escrow itself.
        Step::Claim => {
            life.next_claim_id += 1;
            (
                d.rng.gen_range(1..=(remaining / 2).max(1)),
                life.next_claim_id,
            )
        }
        Step::OverCap => {
            life.next_claim_id += 1;
            (remaining + d.rng.gen_range(1..=1_000), life.next_claim_id)
        }
        Step::DuplicateId => match life.paid_claims.first() {
            Some(id) => (1, *id),
            None => return next_step(d, contract),
        },
        Step::AfterClose => {
            life.next_claim_id += 1;
            (1, life.next_claim_id)
        }
        Step::Release => (0, 0),
        Step::AwaitExpiry => {
            if !life.expired {
                // The expiry's notice (listened for since the deposit) continues the life.
                life.steps.push_front(Step::AwaitExpiry);
                return;
            }
            return next_step(d, contract);
        }
    };
    let saga = d.saga();
    let (wallet, command) = match step {
        Step::Release => (payer, EscrowCommand::Release { saga, contract }),
        _ => (
            merchant,
            EscrowCommand::Claim {
                saga,
                contract,
                claim_id,
                amount: Amount(amount),
            },
        ),
    };
    track(
        d,
        saga,
        Address::Wallet(wallet),
        Op::Escrow {
            contract,
            step: Some(step),
            amount,
            claim_id,
        },
    );
    mixed(d)
        .outbox
        .push((wallet, WalletCommand::Escrow(command)));
}

fn planted(
    d: &mut Driver<'_>,
    name: &'static str,
    saga: SagaId,
    expected: AbortReason,
    result: Result<(), AbortReason>,
) {
    let p = d.report.planted.entry(name).or_default();
    p.planted += 1;
    if result == Err(expected) {
        p.refused_as_expected += 1;
    } else {
        p.other
            .push(format!("saga {saga}: {:?}", result.map_err(|r| r.name())));
    }
}

fn settle_escrow(d: &mut Driver<'_>, saga: SagaId, p: Pending, result: Result<(), AbortReason>) {
    let Op::Escrow {
        contract,
        step,
        amount,
        claim_id,
    } = p.op
    else {
        unreachable!("escrow ops only")
    };
    d.report.record("escrow", result, p.started.elapsed());
    match step {
        None => {
            // The deposit: refused (the payer's coins do not cover the cap), the life ends.
            if result.is_err() {
                if let Some(life) = mixed(d).lives.get_mut(&contract) {
                    life.steps.clear();
                }
                // An expiry that will never come.
                mixed(d)
                    .pending
                    .remove(&closure_saga(contract, Closure::Expired));
            }
        }
        Some(Step::Claim) => {
            if result.is_ok() {
                if let Some(life) = mixed(d).lives.get_mut(&contract) {
                    life.claimed += amount;
                    life.paid_claims.push(claim_id);
                }
            }
        }
        Some(Step::OverCap) => planted(
            d,
            "escrow_claim_above_cap",
            saga,
            AbortReason::CapExceeded,
            result,
        ),
        Some(Step::DuplicateId) => planted(
            d,
            "escrow_claim_id_reused",
            saga,
            AbortReason::AlreadyClaimed,
            result,
        ),
        Some(Step::AfterClose) => {
            let expected = match mixed(d).lives.get(&contract).map(|l| l.ending) {
                Some(Closure::Expired) => AbortReason::Expired,
                _ => AbortReason::AlreadyReleased,
            };
            planted(d, "escrow_claim_after_close", saga, expected, result)
        }
        Some(Step::Release | Step::AwaitExpiry) => {}
    }
    next_step(d, contract);
}

// ----- wallet update -----

async fn start_update(d: &mut Driver<'_>) -> Result<bool> {
    if mixed(d).updates >= UPDATES_MAX {
        return Ok(false);
    }
    let n = d.cluster.wallet_count();
    let Some(wallet) = (0..16)
        .map(|_| WalletId(d.rng.gen_range(0..n)))
        .find(|w| !d.busy.contains(w))
    else {
        return Ok(false);
    };
    let saga = d.saga();
    d.busy.insert(wallet);
    mixed(d).updates += 1;
    let version_before = d.cluster.wallet_snapshot(wallet).await?.params_version;
    track(
        d,
        saga,
        Address::Wallet(wallet),
        Op::Update {
            wallet,
            version_before,
        },
    );
    d.cluster
        .submit(wallet, WalletCommand::Update(UpdateCommand { saga }))
        .await?;
    Ok(true)
}

fn settle_update(d: &mut Driver<'_>, p: Pending, result: Result<(), AbortReason>) {
    match p.op {
        Op::Update {
            wallet,
            version_before,
        } => {
            d.report
                .record("wallet_update", result, p.started.elapsed());
            if result.is_ok() {
                // Coins out again, once the flush has read the account the update reported.
                mixed(d).exchanges_due.push((wallet, version_before));
            } else {
                mixed(d).updates -= 1;
                mixed(d).to_refresh.push(wallet);
            }
        }
        Op::Exchange { wallet } => {
            d.report.record("exchange", result, p.started.elapsed());
            mixed(d).updates -= 1;
            mixed(d).to_refresh.push(wallet);
        }
        _ => unreachable!("update ops only"),
    }
}

// ----- proximity negotiation (before an offline payment) -----

async fn start_negotiation(d: &mut Driver<'_>) -> Result<bool> {
    let cross = d.rng.gen_range(0..100) < d.config.workload.cross_institution_percent;
    let Some((payer, payee)) = pick_pair(d, 1, cross) else {
        return Ok(false);
    };
    let shipped = WalletParams::shipped().capabilities;
    let offline_limit = shipped.offline_limit.map_or(1, |l| l.0);
    let m = mixed(d);
    m.negotiations += 1;
    let plant = m.negotiations % NEGOTIATION_PLANT_EVERY == 0;
    let mut amount = d
        .rng
        .gen_range(1..=offline_limit.min(d.balance[payer.0 as usize]).max(1));
    let (offer, planted): (Option<Capabilities>, Option<AbortReason>) =
        match (plant, d.rng.gen_range(0..2)) {
            (false, _) => (None, None),
            // A terminal that speaks only a future protocol version.
            (true, 0) => (
                Some(Capabilities {
                    protocol_versions: vec![99],
                    ..shipped
                }),
                Some(AbortReason::NoCommonVersion),
            ),
            // More than any wallet accepts.
            (true, _) => {
                amount = shipped
                    .max_amount
                    .0
                    .max(WalletParams::platform_initial().capabilities.max_amount.0)
                    + 1;
                (None, Some(AbortReason::AmountAboveMax))
            }
        };
    let saga = d.saga();
    d.busy.insert(payer);
    d.busy.insert(payee);
    track(
        d,
        saga,
        Address::Wallet(payer),
        Op::Negotiate {
            payer,
            payee,
            amount,
            planted,
        },
    );
    let command = NegotiateCommand {
        saga,
        peer: payee,
        amount: Amount(amount),
        offline: true,
        offer,
    };
    d.cluster
        .submit(payer, WalletCommand::Negotiate(command))
        .await?;
    Ok(true)
}

fn settle_negotiation(
    d: &mut Driver<'_>,
    saga: SagaId,
    p: Pending,
    result: Result<(), AbortReason>,
) {
    let Op::Negotiate {
        payer,
        payee,
        amount,
        planted: plant,
    } = p.op
    else {
        unreachable!("negotiations only")
    };
    let m = mixed(d);
    match result {
        Ok(()) => m.agreed += 1,
        Err(_) => m.refused += 1,
    }
    if let Some(expected) = plant {
        planted(d, "negotiation_incompatible", saga, expected, result);
    }
    // An agreed negotiation is where the offline payment starts (at the next flush; the
    // wallets stay held until it ends).
    if result.is_ok() && plant.is_none() && !mixed(d).stopped {
        mixed(d).agreed_offline.push((payer, payee, amount));
        return;
    }
    d.busy.remove(&payer);
    d.busy.remove(&payee);
}

/// Takes a notice into account if it settles a mixed operation; false when it is the pay
/// driver's.
pub(super) fn settle(d: &mut Driver<'_>, notice: &Notice) -> bool {
    if sagas_hook::settle(d, notice) {
        return true;
    }
    let Some(m) = &mut d.mixed else { return false };
    let Some(p) = m.pending.get(&notice.saga_id) else {
        return false;
    };
    if p.reporter != notice.source {
        return true; // another party's notice of a mixed operation
    }
    let p = m.pending.remove(&notice.saga_id).expect("present");
    let result = notice.outcome.result;
    match (p.op, notice.outcome.kind) {
        (Op::Expiry { contract }, SagaKind::EscrowExpiry) => {
            let waiting = m.lives.get_mut(&contract).is_some_and(|life| {
                life.expired = true;
                life.steps.front() == Some(&Step::AwaitExpiry)
            });
            if waiting {
                next_step(d, contract);
            }
        }
        (Op::Escrow { .. }, _) => settle_escrow(d, notice.saga_id, p, result),
        (Op::Update { .. } | Op::Exchange { .. }, _) => settle_update(d, p, result),
        (Op::Negotiate { .. }, _) => settle_negotiation(d, notice.saga_id, p, result),
        (op, kind) => eprintln!("specie run: unexpected {kind:?} notice for {op:?}"),
    }
    true
}

/// Hands the decided commands to their wallets, then reads back the coins of wallets whose
/// operations ended and frees them. Called by the run loop every round.
pub(super) async fn flush(d: &mut Driver<'_>) -> Result<()> {
    let Some(m) = &mut d.mixed else { return Ok(()) };
    let commands = std::mem::take(&mut m.outbox);
    for (wallet, command) in commands {
        d.cluster.submit(wallet, command).await?;
    }
    sagas_hook::offline(d).await?;
    exchange_after_updates(d).await?;
    refresh(d).await
}

/// Updated wallets exchange coins out again: as much as the genesis gave them in coins, within
/// the account balance the update's instruction reported. A wallet that was up to date (its
/// version did not change) withdrew nothing and takes nothing out.
async fn exchange_after_updates(d: &mut Driver<'_>) -> Result<()> {
    let due = std::mem::take(&mut mixed(d).exchanges_due);
    for (wallet, version_before) in due {
        let snapshot = d.cluster.wallet_snapshot(wallet).await?;
        let applied = snapshot.params_version != version_before;
        let account = snapshot
            .account_balance
            .filter(|_| applied)
            .unwrap_or(Amount::ZERO);
        let amount = account.0.min(d.config.genesis.exchange_fen);
        if amount == 0 {
            mixed(d).updates -= 1;
            mixed(d).to_refresh.push(wallet);
            continue;
        }
        let saga = d.saga();
        track(d, saga, Address::Wallet(wallet), Op::Exchange { wallet });
        d.cluster
            .submit(
                wallet,
                WalletCommand::Exchange {
                    saga,
                    amount: Amount(amount),
                },
            )
            .await?;
    }
    Ok(())
}

/// Reads back the coins of wallets whose operations ended, then frees them.
async fn refresh(d: &mut Driver<'_>) -> Result<()> {
    let Some(m) = &mut d.mixed else { return Ok(()) };
    let wallets = std::mem::take(&mut m.to_refresh);
    for w in wallets {
        let snapshot = d.cluster.wallet_snapshot(w).await?;
        d.balance[w.0 as usize] = snapshot.coins.iter().map(|c| c.value().0).sum();
        d.busy.remove(&w);
    }
    Ok(())
}

/// Fills in what a mixed run adds to the report, from the final state of the cluster.
pub(super) async fn conclude(d: &Driver<'_>, report: &mut crate::report::RunReport) -> Result<()> {
    let Some(m) = &d.mixed else { return Ok(()) };
    report.workload = Workload::Mixed.name();
    report.negotiation = Some((m.agreed, m.refused));
    let snapshot = d.cluster.snapshot().await?;
    report.offline_double_spends_detected = Some(
        snapshot
            .institutions
            .iter()
            .map(|i| i.sagas.double_spends_detected)
            .sum(),
    );
    Ok(())
}
