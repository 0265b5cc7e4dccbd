//! The deterministic simulation: the whole cluster in one thread, in virtual time, driven by
//! one seed.
//!
//! Everything that happens is an item in one priority queue ordered by (virtual time,
//! insertion number): deliveries, timers, journal commits, restarts, workload arrivals,
//! client timeouts, fault starts and the periodic tick that audits. Every random choice —
//! which operation, which wallets, amounts, saga ids, each envelope's latency, each fault's
//! decisions — is drawn from streams of the run's seed (see [`crate::schedule::stream_rng`]).
//! No wall clock, no thread, no hash-map iteration order reaches a decision, so the same
//! seed and build give the same history byte for byte.
//!
//! The experiment runs in phases: genesis (funding, no faults), warm-up (workload, steady
//! state measured), faults (workload under the schedule), converge (healed, no new
//! operations: every saga must end within the bound), after (workload, steady state measured
//! again), drain (no new operations, the cluster goes quiet), then the final reads.

use crate::check::{self, Finding};
use crate::history::{Entry, History, OpKind, OpType, OpValue};
use crate::host::{Absorbed, Actor, AnyTimer, Held, Hosted, Input};
use crate::scenario::{FaultKind, Scenario};
use crate::schedule::{expand, stream_rng, FaultInstance, Purpose};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::audit::{audit, AuditReport};
use specie_actors::central_bank::CentralBankCommand;
use specie_actors::institution::{
    CoinState, ExchangeState, InstitutionCommand, InstitutionSnapshot, PayStep,
};
use specie_actors::wallet::WalletCommand;
use specie_actors::{Blueprint, ClusterSnapshot};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, InstitutionId, KeyStore, Payload,
    PaymentAuthorization, SagaId, SoftKeyStore, WalletId,
};
use specie_runtime::config::Config;
use specie_runtime::live_faults::FaultDice;
use specie_runtime::supervision::{RestartVerdict, Supervision};
use specie_runtime::{Notice, RestartStrategy, StateMachine, SupervisionSettings};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// Virtual wall-clock time of the simulation's start (actors read epoch milliseconds).
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// How often the simulation looks whether the cluster went quiet.
const TICK_MS: u64 = 100;
/// Longest genesis may take before the run is declared broken.
const GENESIS_MAX_MS: u64 = 120_000;
/// Spent coins remembered for planting double spends.
const SPENT_MEMORY_MAX: usize = 256;
/// The client address forged requests come from.
pub const FORGER: Address = Address::External(666);
/// Tries to find an idle wallet for one operation.
const PICK_TRIES_MAX: usize = 16;

/// A planted bug, by name (active only in builds with the `planted-bugs` feature).
pub type PlantedName = &'static str;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// A planted bug to switch on (feature `planted-bugs`).
    pub planted: Option<PlantedName>,
}

/// A finding that stopped the run, with the facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: String,
    /// Simulated time, ms since the start.
    pub at_ms: u64,
    /// The phase it happened in.
    pub phase: &'static str,
    /// The facts: coins, sagas, steps.
    pub facts: String,
}

/// One completed operation, for the timeline.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// When the operation was invoked.
    pub invoked_ms: u64,
    /// When it completed.
    pub time_ms: u64,
    /// ok / fail / info.
    pub kind: OpType,
    /// The operation.
    pub f: OpKind,
}

/// A fault instance placed on the run's clock.
#[derive(Debug, Clone)]
pub struct PlacedFault {
    /// The instance.
    pub fault: FaultInstance,
    /// Absolute start, ms since the run's start.
    pub start_ms: u64,
    /// Absolute end.
    pub end_ms: u64,
}

/// Network counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    /// Envelopes sent.
    pub sent: u64,
    /// Deliveries handled by a receiver.
    pub delivered: u64,
    /// Deliveries the receiver rejected (undecodable or misaddressed).
    pub rejected: u64,
    /// Deliveries to an actor that was down, or to no actor.
    pub undeliverable: u64,
    /// Corrupted envelopes that still decoded into a different valid envelope: the
    /// transport's integrity check (not modelled byte by byte) drops them.
    pub corrupt_dropped_by_transport: u64,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Scenario file.
    pub origin: String,
    /// The seed.
    pub seed: u64,
    /// The planted bug, if any.
    pub planted: Option<String>,
    /// The history.
    pub history: History,
    /// Operations invoked.
    pub ops: usize,
    /// Arrivals that found no suitable wallet.
    pub skipped: u64,
    /// The faults, on the run's clock.
    pub faults: Vec<PlacedFault>,
    /// How often each fault acted.
    pub faults_injected: BTreeMap<&'static str, u64>,
    /// Verdicts by invariant, in report order.
    pub invariants: Vec<(&'static str, Finding)>,
    /// The first violation (the run stopped there).
    pub violation: Option<Violation>,
    /// Phases: (name, start, end) in ms.
    pub phases: Vec<(&'static str, u64, u64)>,
    /// Completed operations.
    pub completions: Vec<Completion>,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Network counters.
    pub net: NetStats,
    /// Restarts by actor kind.
    pub restarts: BTreeMap<&'static str, u64>,
    /// Steady-state probes: (phase, committed percent, p99 latency ms, operations).
    pub steady: Vec<(&'static str, f64, u64, usize)>,
}

impl RunResult {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violation.is_none() && self.invariants.iter().all(|(_, f)| f.is_ok())
    }

    /// SHA-256 of the serialized history, hex.
    pub fn history_digest(&self) -> String {
        self.history.digest()
    }

    /// Simulated seconds per wall second.
    pub fn speed(&self) -> f64 {
        (self.sim_ms as f64 / 1000.0) / self.wall_s.max(1e-9)
    }

    /// The invariants that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.invariants
            .iter()
            .filter(|(_, f)| !f.is_ok())
            .map(|(n, _)| *n)
            .collect()
    }
}

#[derive(Debug)]
enum Item {
    Deliver {
        to: usize,
        bytes: Bytes,
    },
    Timer {
        actor: usize,
        incarnation: u64,
        key: AnyTimer,
    },
    Commit {
        actor: usize,
        incarnation: u64,
        seq: u64,
    },
    Restart {
        actor: usize,
        incarnation: u64,
    },
    Command {
        actor: usize,
        input: Box<Input>,
    },
    Kill {
        fault: usize,
    },
    Begin {
        fault: usize,
    },
    Arrival,
    ClientTimeout {
        op: usize,
    },
    Tick,
}

impl Item {
    fn is_actor_work(&self) -> bool {
        matches!(
            self,
            Item::Deliver { .. }
                | Item::Commit { .. }
                | Item::Restart { .. }
                | Item::Command { .. }
        )
    }
}

struct Queued {
    at: u64,
    seq: u64,
    item: Item,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest item goes first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot {
    address: Address,
    actor: Actor,
    up: bool,
    incarnation: u64,
}

/// A fault on the run's clock, with the state of its own decisions.
struct Active {
    placed: PlacedFault,
    /// Its random decisions, made as a live node makes them.
    dice: FaultDice,
}

impl Active {
    fn live(&self, now: u64) -> bool {
        self.placed.start_ms <= now && now < self.placed.end_ms
    }
}

/// An operation of the workload.
#[derive(Debug, Clone)]
pub struct Op {
    /// Number.
    pub id: u64,
    /// Kind.
    pub f: OpKind,
    /// Saga.
    pub saga: SagaId,
    /// Client.
    pub process: String,
    /// Arguments.
    pub value: OpValue,
    /// Whose notice completes it.
    pub reporter: Address,
    /// The institution that coordinates its saga (reads the final outcome).
    pub coordinator: InstitutionId,
    /// When invoked.
    pub invoked_ms: u64,
    /// Completion: (type, time, error).
    pub done: Option<(OpType, u64, Option<String>)>,
    /// Wallets kept busy.
    busy: Vec<u64>,
}

/// The outcome of a saga as its coordinator reports it at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalRead {
    /// Committed.
    Committed,
    /// Aborted.
    Aborted(AbortReason),
    /// Started, not terminal.
    InProgress,
    /// The coordinator never started it.
    Unknown,
}

/// An outcome announced by an actor: (source, result).
type Announcement = (Address, Result<(), AbortReason>);

#[derive(Default)]
struct Driver {
    ops: Vec<Op>,
    open: BTreeMap<SagaId, usize>,
    busy: BTreeMap<u64, u32>,
    spent: VecDeque<(WalletId, Vec<CoinId>)>,
    history: History,
    /// Outcomes reported after the client gave up (`info`), by operation.
    late: BTreeMap<usize, Vec<Result<(), AbortReason>>>,
    /// Every notice by saga.
    notices: BTreeMap<SagaId, Vec<Announcement>>,
    genesis_pending: BTreeSet<SagaId>,
    active: bool,
    skipped: u64,
    completions: Vec<Completion>,
}

struct World<'a> {
    scenario: &'a Scenario,
    blueprint: Blueprint,
    seed: u64,
    now: u64,
    queue: BinaryHeap<Queued>,
    next_item: u64,
    actor_work: u64,
    slots: Vec<Slot>,
    faults: Vec<Active>,
    net_rng: ChaCha8Rng,
    work_rng: ChaCha8Rng,
    next_message_id: u64,
    supervision: Supervision,
    base: Instant,
    driver: Driver,
    net: NetStats,
    injected: BTreeMap<&'static str, u64>,
    restarts: Vec<(u64, Address)>,
    escalations: Vec<String>,
    violation: Option<Violation>,
    phase: &'static str,
    next_audit_ms: u64,
    audits: Vec<(&'static str, u64, AuditReport)>,
    early_ack: bool,
    duplicates: u64,
}

fn index_of(scenario: &Scenario, a: Address) -> Option<usize> {
    let k = scenario.cluster.institutions as usize;
    match a {
        Address::CentralBank => Some(0),
        Address::Institution(i) if (i.0 as usize) < k => Some(1 + i.0 as usize),
        Address::Wallet(w) if w.0 < scenario.cluster.wallets => Some(1 + k + w.0 as usize),
        _ => None,
    }
}

/// The runtime config the actors are built from: the embedded default with the scenario's
/// cluster and limits.
pub fn runtime_config(s: &Scenario) -> Config {
    let mut config = Config::parse(
        include_str!("../../config/local.toml"),
        "embedded config/local.toml",
    )
    .expect("the embedded default config is valid");
    config.cluster.institutions = (0..s.cluster.institutions)
        .map(|i| format!("inst-{i}"))
        .collect();
    config.cluster.wallets = s.cluster.wallets;
    config.genesis.account_balance_fen = s.cluster.account_balance_fen;
    config.genesis.exchange_fen = s.cluster.exchange_fen;
    config.genesis.coin_denominations_fen = s.cluster.coin_denominations_fen.clone();
    let l = &s.limits;
    config.limits.saga_timeout_ms = l.saga_timeout_ms;
    config.limits.retry_interval_ms = l.retry_interval_ms;
    config.limits.retry_interval_max_ms = l.retry_interval_max_ms;
    config.limits.authorization_ttl_ms = l.authorization_ttl_ms;
    config.limits.outcome_timeout_ms = l.outcome_timeout_ms;
    config.limits.coin_inputs_max = l.coin_inputs_max;
    config.supervision = SupervisionSettings {
        strategy: RestartStrategy::OneForOne,
        restart_intensity_max: s.supervision.restart_intensity_max,
        restart_window_ms: s.supervision.restart_window_ms,
        restart_backoff_ms: s.supervision.restart_backoff_ms,
        restart_backoff_max_ms: s.supervision.restart_backoff_max_ms,
    };
    config
}

/// Switches the planted bug on for the duration of a run, and off again after.
struct PlantedGuard;

impl PlantedGuard {
    fn set(name: Option<PlantedName>) -> PlantedGuard {
        #[cfg(feature = "planted-bugs")]
        specie_actors::planted::set(name.and_then(specie_actors::planted::Bug::from_name));
        #[cfg(not(feature = "planted-bugs"))]
        let _ = name;
        PlantedGuard
    }
}

impl Drop for PlantedGuard {
    fn drop(&mut self) {
        #[cfg(feature = "planted-bugs")]
        specie_actors::planted::set(None);
    }
}

/// The names of the planted bugs this build can switch on (empty without the feature).
pub fn planted_bugs() -> Vec<&'static str> {
    #[cfg(feature = "planted-bugs")]
    return specie_actors::planted::Bug::ALL
        .iter()
        .map(|b| b.name())
        .collect();
    #[cfg(not(feature = "planted-bugs"))]
    Vec::new()
}

/// Runs `scenario` with `options`.
pub fn run(scenario: &Scenario, options: &RunOptions) -> RunResult {
    let started = Instant::now();
    let _guard = PlantedGuard::set(options.planted);
    #[cfg(feature = "planted-bugs")]
    let early_ack = options
        .planted
        .and_then(specie_actors::planted::Bug::from_name)
        == Some(specie_actors::planted::Bug::EarlyAck);
    #[cfg(not(feature = "planted-bugs"))]
    let early_ack = false;
    let seed = options.seed;
    let config = runtime_config(scenario);
    let blueprint = Blueprint::new(&config, seed);
    let mut slots = Vec::new();
    slots.push(Slot {
        address: Address::CentralBank,
        actor: Actor::Bank(Box::new(Hosted::new(Box::new(blueprint.central_bank())))),
        up: true,
        incarnation: 0,
    });
    for i in 0..scenario.cluster.institutions as usize {
        slots.push(Slot {
            address: Address::Institution(InstitutionId(i as u32)),
            actor: Actor::Inst(Box::new(Hosted::new(Box::new(blueprint.institution(i))))),
            up: true,
            incarnation: 0,
        });
    }
    for w in 0..scenario.cluster.wallets {
        let id = WalletId(w);
        slots.push(Slot {
            address: Address::Wallet(id),
            actor: Actor::Wallet(Box::new(Hosted::new(Box::new(
                blueprint.wallet(id, blueprint.wallet_keys(id)),
            )))),
            up: true,
            incarnation: 0,
        });
    }
    let mut world = World {
        scenario,
        blueprint,
        seed,
        now: 0,
        queue: BinaryHeap::new(),
        next_item: 0,
        actor_work: 0,
        slots,
        faults: Vec::new(),
        net_rng: stream_rng(seed, Purpose::Network, 0),
        work_rng: stream_rng(seed, Purpose::Workload, 0),
        next_message_id: 1,
        supervision: Supervision::new(config.supervision),
        base: Instant::now(),
        driver: Driver::default(),
        net: NetStats::default(),
        injected: BTreeMap::new(),
        restarts: Vec::new(),
        escalations: Vec::new(),
        violation: None,
        phase: "genesis",
        next_audit_ms: u64::MAX,
        audits: Vec::new(),
        early_ack,
        duplicates: 0,
    };
    let mut phases = Vec::new();
    let termination = world.experiment(&mut phases);
    world.finish(options, phases, termination, started)
}

impl World<'_> {
    fn push(&mut self, at: u64, item: Item) {
        if item.is_actor_work() {
            self.actor_work += 1;
        }
        let seq = self.next_item;
        self.next_item += 1;
        self.queue.push(Queued { at, seq, item });
    }

    fn count(&mut self, fault: &'static str) {
        *self.injected.entry(fault).or_default() += 1;
    }

    fn violate(&mut self, invariant: &str, facts: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                invariant: invariant.to_string(),
                at_ms: self.now,
                phase: self.phase,
                facts,
            });
        }
    }

    fn stopped(&self) -> bool {
        self.violation.is_some() || !self.escalations.is_empty()
    }

    /// Processes items up to `deadline`; returns early (true) when `done` holds at a tick.
    fn run_until(&mut self, deadline: u64, done: &dyn Fn(&World<'_>) -> bool) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            match self.queue.peek() {
                Some(top) if top.at <= deadline => {}
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
            let q = self.queue.pop().expect("peeked");
            if q.item.is_actor_work() {
                self.actor_work -= 1;
            }
            self.now = q.at;
            let tick = matches!(q.item, Item::Tick);
            self.process(q.item);
            if tick && done(self) {
                return true;
            }
        }
    }

    fn experiment(
        &mut self,
        phases: &mut Vec<(&'static str, u64, u64)>,
    ) -> Vec<(&'static str, Result<u64, String>)> {
        let s = self.scenario;
        let mut termination = Vec::new();
        self.push(0, Item::Tick);
        // Every actor starts (and arms its periodic timers), as a host does when it starts.
        for actor in 0..self.slots.len() {
            self.push(
                0,
                Item::Command {
                    actor,
                    input: Box::new(Input::Start),
                },
            );
        }
        // Genesis: mint, open accounts, exchange part of each deposit into coins.
        for i in 0..s.cluster.institutions {
            let amount = self.blueprint.genesis_mint(i as usize);
            self.push(
                0,
                Item::Command {
                    actor: 0,
                    input: Box::new(Input::Bank(CentralBankCommand::Mint {
                        institution: InstitutionId(i),
                        amount,
                    })),
                },
            );
        }
        for w in 0..s.cluster.wallets {
            let id = WalletId(w);
            let inst = self.blueprint.institution_of(id);
            let key = self.blueprint.wallet_keys(id).public_key();
            self.push(
                0,
                Item::Command {
                    actor: 1 + inst.0 as usize,
                    input: Box::new(Input::Inst(InstitutionCommand::OpenAccount {
                        wallet: id,
                        key,
                        deposit: Amount(s.cluster.account_balance_fen),
                    })),
                },
            );
        }
        if s.cluster.exchange_fen > 0 {
            for w in 0..s.cluster.wallets {
                let saga = SagaId::from_u128(u128::from(self.seed) << 64 | u128::from(w) | 1 << 63);
                self.driver.genesis_pending.insert(saga);
                let actor = index_of(s, Address::Wallet(WalletId(w))).expect("wallet exists");
                self.push(
                    1,
                    Item::Command {
                        actor,
                        input: Box::new(Input::Wallet(WalletCommand::Exchange {
                            saga,
                            amount: Amount(s.cluster.exchange_fen),
                        })),
                    },
                );
            }
        }
        let quiet = self.run_until(GENESIS_MAX_MS, &|w| {
            w.driver.genesis_pending.is_empty() && w.quiescent()
        });
        phases.push(("genesis", 0, self.now));
        if !quiet {
            self.violate(
                "termination",
                format!("genesis did not finish within {} s", GENESIS_MAX_MS / 1000),
            );
            return termination;
        }
        self.audit_now(true);
        if self.stopped() {
            return termination;
        }
        self.next_audit_ms = self.now + s.audit_interval_ms;

        // Warm-up: the steady state before the faults.
        let t0 = self.now;
        self.phase = "warmup";
        self.driver.active = true;
        self.schedule_arrival();
        self.run_until(t0 + s.phases.warmup_ms, &|_| false);
        phases.push(("warmup", t0, self.now));
        if self.stopped() {
            return termination;
        }

        // Faults.
        let f0 = self.now;
        self.phase = "faults";
        for inst in expand(s, self.seed) {
            let rng = stream_rng(self.seed, Purpose::Fault, inst.stream);
            let placed = PlacedFault {
                start_ms: f0 + inst.start_ms,
                end_ms: f0 + inst.end_ms.max(inst.start_ms + 1),
                fault: inst,
            };
            let fault = self.faults.len();
            match placed.fault.kind {
                FaultKind::Kill => self.push(placed.start_ms, Item::Kill { fault }),
                FaultKind::Pause | FaultKind::ClockSkew { .. } => {
                    self.push(placed.start_ms, Item::Begin { fault })
                }
                _ => {}
            }
            self.faults.push(Active {
                placed,
                dice: FaultDice::new(rng, 0.0),
            });
        }
        self.run_until(f0 + s.phases.faults_ms, &|_| false);
        phases.push(("faults", f0, self.now));
        if self.stopped() {
            return termination;
        }

        // Heal, then converge: no new operations; every saga must end within the bound.
        let heal = self.now;
        self.phase = "converge";
        self.driver.active = false;
        let quiet = self.run_until(heal + s.phases.converge_max_ms, &|w| w.quiescent());
        phases.push(("converge", heal, self.now));
        if self.stopped() {
            return termination;
        }
        termination.push((
            "converge",
            if quiet {
                Ok(self.now - heal)
            } else {
                Err(self.unfinished())
            },
        ));
        if quiet {
            self.audit_now(true);
        }
        if self.stopped() {
            return termination;
        }

        // After: the steady state again.
        let a0 = self.now;
        self.phase = "after";
        self.driver.active = true;
        self.schedule_arrival();
        self.run_until(a0 + s.phases.after_ms, &|_| false);
        phases.push(("after", a0, self.now));
        if self.stopped() {
            return termination;
        }

        // Drain, then the final reads.
        let d0 = self.now;
        self.phase = "drain";
        self.driver.active = false;
        let quiet = self.run_until(d0 + s.phases.drain_max_ms, &|w| w.quiescent());
        phases.push(("drain", d0, self.now));
        if self.stopped() {
            return termination;
        }
        termination.push((
            "drain",
            if quiet {
                Ok(self.now - d0)
            } else {
                Err(self.unfinished())
            },
        ));
        self.audit_now(quiet);
        termination
    }

    fn schedule_arrival(&mut self) {
        let rate = self.scenario.workload.rate_per_s;
        let u: f64 = self.work_rng.gen_range(f64::EPSILON..1.0);
        let gap_ms = (-u.ln() / rate * 1000.0).round() as u64;
        self.push(self.now + gap_ms, Item::Arrival);
    }

    fn paused_until(&self, actor: Address) -> Option<u64> {
        self.faults
            .iter()
            .filter(|f| {
                matches!(f.placed.fault.kind, FaultKind::Pause)
                    && f.live(self.now)
                    && f.placed.fault.targets(actor)
            })
            .map(|f| f.placed.end_ms)
            .max()
    }

    fn clock_of(&self, actor: Address) -> u64 {
        let skew: i64 = self
            .faults
            .iter()
            .filter(|f| f.live(self.now) && f.placed.fault.targets(actor))
            .map(|f| match f.placed.fault.kind {
                FaultKind::ClockSkew { offset_ms } => offset_ms,
                _ => 0,
            })
            .sum();
        (EPOCH_MS + self.now).saturating_add_signed(skew)
    }

    fn commit_delay(&mut self, actor: Address) -> u64 {
        let extra: u64 = self
            .faults
            .iter()
            .filter(|f| f.live(self.now) && f.placed.fault.targets(actor))
            .map(|f| match f.placed.fault.kind {
                FaultKind::WriteDelay { latency_ms } => latency_ms,
                _ => 0,
            })
            .sum();
        if extra > 0 {
            self.count("write_delay");
        }
        self.scenario.journal_commit_ms + extra
    }

    fn process(&mut self, item: Item) {
        match item {
            Item::Tick => {
                if self.now >= self.next_audit_ms {
                    self.next_audit_ms = self.now + self.scenario.audit_interval_ms;
                    self.audit_now(false);
                }
                self.push(self.now + TICK_MS, Item::Tick);
            }
            Item::Arrival => {
                if self.driver.active {
                    self.start_op();
                    self.schedule_arrival();
                }
            }
            Item::ClientTimeout { op } => self.client_timeout(op),
            Item::Begin { fault } => {
                // Pauses and clock offsets act on their actors for their whole duration:
                // counted once per actor when they begin.
                let f = &self.faults[fault].placed.fault;
                let (name, n) = (
                    f.kind.name(),
                    f.targets.as_ref().map_or(self.slots.len(), |t| t.len()),
                );
                *self.injected.entry(name).or_default() += n as u64;
            }
            Item::Kill { fault } => {
                let f = &self.faults[fault].placed;
                let (end, targets) = (f.end_ms, f.fault.targets.clone().unwrap_or_default());
                for a in targets {
                    if let Some(i) = index_of(self.scenario, a) {
                        if self.slots[i].up {
                            self.count("kill");
                            self.crash(i, end);
                        }
                    }
                }
            }
            item @ (Item::Deliver { .. }
            | Item::Timer { .. }
            | Item::Commit { .. }
            | Item::Restart { .. }
            | Item::Command { .. }) => self.actor_item(item),
        }
    }

    fn actor_item(&mut self, item: Item) {
        let actor = match &item {
            Item::Deliver { to, .. } => *to,
            Item::Timer { actor, .. }
            | Item::Commit { actor, .. }
            | Item::Restart { actor, .. }
            | Item::Command { actor, .. } => *actor,
            _ => unreachable!("actor items only"),
        };
        let address = self.slots[actor].address;
        let incarnation = self.slots[actor].incarnation;
        let stale = match &item {
            Item::Timer { incarnation: i, .. }
            | Item::Commit { incarnation: i, .. }
            | Item::Restart { incarnation: i, .. } => *i != incarnation,
            _ => false,
        };
        if stale {
            return;
        }
        if let Some(until) = self.paused_until(address) {
            // A paused actor handles nothing; its mail, timers and disk wait.
            self.push(until, item);
            return;
        }
        match item {
            Item::Restart { .. } => {
                self.slots[actor].up = true;
                self.step(actor, Input::Start);
            }
            _ if !self.slots[actor].up => match item {
                Item::Deliver { .. } => self.net.undeliverable += 1,
                // A client's request waits for the supervisor to bring the actor back.
                Item::Command { .. } => self.push(self.now + 10, item),
                _ => {}
            },
            Item::Deliver { bytes, .. } => {
                let envelope = match Envelope::decode(&bytes) {
                    Ok(e) if e.to == address => e,
                    _ => {
                        self.net.rejected += 1;
                        return;
                    }
                };
                self.net.delivered += 1;
                self.step(actor, Input::Envelope(envelope));
            }
            Item::Timer { key, .. } => self.step(actor, Input::Timer(key)),
            Item::Command { input, .. } => self.step(actor, *input),
            Item::Commit { seq, .. } => {
                let mut fail = false;
                for f in self.faults.iter_mut() {
                    if let FaultKind::FsyncError { percent } = f.placed.fault.kind {
                        if f.live(self.now)
                            && f.placed.fault.targets(address)
                            && f.dice.chance(percent)
                        {
                            fail = true;
                        }
                    }
                }
                if fail {
                    // The group commit failed: nothing of it is durable; the actor crashes.
                    self.count("fsync_error");
                    self.crash(actor, 0);
                    return;
                }
                let release = self.slots[actor].actor.commit(seq);
                self.release(release);
            }
            _ => unreachable!("actor items only"),
        }
    }

    fn step(&mut self, actor: usize, input: Input) {
        let address = self.slots[actor].address;
        let clock = self.clock_of(address);
        let delay = self.commit_delay(address);
        let (now, early) = (self.now, self.early_ack);
        let absorbed = self.slots[actor]
            .actor
            .step(input, clock, now, delay, early);
        self.absorb(actor, absorbed);
    }

    fn absorb(&mut self, actor: usize, a: Absorbed) {
        let incarnation = self.slots[actor].incarnation;
        for (delay, key) in a.timers {
            self.push(
                self.now + delay,
                Item::Timer {
                    actor,
                    incarnation,
                    key,
                },
            );
        }
        if let Some((at, seq)) = a.commit {
            self.push(
                at,
                Item::Commit {
                    actor,
                    incarnation,
                    seq,
                },
            );
        }
        self.release(a.release);
    }

    fn release(&mut self, held: Vec<Held>) {
        for h in held {
            for e in h.sends {
                self.send(e);
            }
            for n in h.notices {
                self.on_notice(n);
            }
        }
    }

    fn crash(&mut self, actor: usize, hold_until: u64) {
        let slot = &mut self.slots[actor];
        slot.actor.crash();
        slot.up = false;
        slot.incarnation += 1;
        let (address, incarnation) = (slot.address, slot.incarnation);
        self.restarts.push((self.now, address));
        match self
            .supervision
            .on_restart(address, self.base + Duration::from_millis(self.now))
        {
            RestartVerdict::Restart(backoff) => {
                let at = (self.now + backoff.as_millis() as u64).max(hold_until);
                self.push(at, Item::Restart { actor, incarnation });
            }
            RestartVerdict::Escalate(why) => self.escalations.push(why),
        }
    }

    /// Puts an envelope on the simulated wire, through the active network faults.
    fn send(&mut self, mut envelope: Envelope) {
        envelope.message_id = self.next_message_id;
        self.next_message_id += 1;
        self.net.sent += 1;
        let (from, to) = (envelope.from, envelope.to);
        let Some(to_index) = index_of(self.scenario, to) else {
            self.net.undeliverable += 1;
            return;
        };
        let bytes = envelope.encode();
        let now = self.now;
        let institutions = self.scenario.cluster.institutions;
        // Partitions.
        for f in &self.faults {
            if let FaultKind::Partition { groups, direction } = &f.placed.fault.kind {
                if !f.live(now) {
                    continue;
                }
                let group_of = |a: Address| {
                    groups
                        .iter()
                        .position(|g| g.iter().any(|m| m.contains(a, institutions)))
                };
                let (Some(gf), Some(gt)) = (group_of(from), group_of(to)) else {
                    continue;
                };
                let blocked = gf != gt
                    && match direction {
                        crate::scenario::Direction::Both => true,
                        crate::scenario::Direction::To => gf == 0,
                        crate::scenario::Direction::From => gt == 0,
                    };
                if blocked {
                    self.count("partition");
                    return;
                }
            }
        }
        // Loss, then duplication.
        let mut copies = 1;
        let mut lost = false;
        for f in self.faults.iter_mut() {
            if !f.live(now) || !f.placed.fault.matches(from, to) {
                continue;
            }
            match f.placed.fault.kind {
                FaultKind::Loss {
                    percent,
                    correlation,
                } => lost |= f.dice.decide(percent, correlation),
                FaultKind::Duplicate { percent } if f.dice.chance(percent) => copies = 2,
                _ => {}
            }
        }
        if lost {
            self.count("loss");
            return;
        }
        if copies == 2 {
            self.count("duplicate");
            self.duplicates += 1;
        }
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            let mut corrupted = false;
            let base = self.scenario.network.latency_ms;
            let jitter = self.scenario.network.jitter_ms;
            let mut delay = if jitter > 0 {
                self.net_rng.gen_range(base - jitter..=base + jitter)
            } else {
                base
            };
            let mut delayed = false;
            let mut reordered = false;
            for f in self.faults.iter_mut() {
                if !f.live(now) || !f.placed.fault.matches(from, to) {
                    continue;
                }
                match f.placed.fault.kind {
                    FaultKind::Corrupt { percent } if f.dice.chance(percent) && !b.is_empty() => {
                        let bit = f.dice.rng.gen_range(0..b.len() * 8);
                        b[bit / 8] ^= 1 << (bit % 8);
                        corrupted = true;
                    }
                    FaultKind::Delay {
                        latency_ms,
                        jitter_ms,
                        correlation,
                    } => {
                        let j = if jitter_ms > 0 {
                            let v = f.dice.draw(correlation) / 100.0;
                            (v * 2.0 - 1.0) * jitter_ms as f64
                        } else {
                            0.0
                        };
                        delay = (delay as f64 + latency_ms as f64 + j).max(0.0).round() as u64;
                        delayed = true;
                    }
                    FaultKind::Reorder { percent, gap } => {
                        f.dice.since_reorder += 1;
                        if f.dice.since_reorder >= gap && f.dice.chance(percent) {
                            f.dice.since_reorder = 0;
                            reordered = true;
                        }
                    }
                    _ => {}
                }
            }
            if delayed {
                self.count("delay");
            }
            if reordered {
                // Overtakes everything sent before it that is still on the wire.
                self.count("reorder");
                delay = 0;
            }
            if corrupted {
                self.count("corrupt");
                if matches!(Envelope::decode(&b), Ok(e) if e != envelope) {
                    // A flip that still decodes into another valid envelope: the envelope
                    // has no checksum of its own, so the transport's integrity check is what
                    // stops it.
                    self.net.corrupt_dropped_by_transport += 1;
                    continue;
                }
            }
            self.push(
                now + delay,
                Item::Deliver {
                    to: to_index,
                    bytes: Bytes::from(b),
                },
            );
        }
    }

    // ----- the workload -----

    fn wallet_count(&self) -> u64 {
        self.scenario.cluster.wallets
    }

    fn wallet(&self, w: WalletId) -> Option<&Hosted<specie_actors::wallet::Wallet>> {
        match &self.slots[index_of(self.scenario, Address::Wallet(w))?].actor {
            Actor::Wallet(h) => Some(h),
            _ => None,
        }
    }

    fn available(&self, w: WalletId) -> bool {
        let i = index_of(self.scenario, Address::Wallet(w)).expect("wallet exists");
        self.slots[i].up && !self.driver.busy.contains_key(&w.0)
    }

    fn pick_idle(&mut self, with_coins: bool) -> Option<WalletId> {
        for _ in 0..PICK_TRIES_MAX {
            let w = WalletId(self.work_rng.gen_range(0..self.wallet_count()));
            if self.available(w)
                && (!with_coins || self.wallet(w).is_some_and(|h| !h.state.balance().is_zero()))
            {
                return Some(w);
            }
        }
        None
    }

    fn pick_payee(&mut self, payer: WalletId, cross: Option<bool>) -> WalletId {
        let cross = cross.unwrap_or_else(|| {
            self.work_rng.gen::<f64>() * 100.0 < self.scenario.workload.cross_institution_percent
        });
        let single = self.scenario.cluster.institutions == 1;
        loop {
            let c = WalletId(self.work_rng.gen_range(0..self.wallet_count()));
            let same = self.blueprint.institution_of(c) == self.blueprint.institution_of(payer);
            if c != payer && (same != cross || single) {
                return c;
            }
        }
    }

    fn saga(&mut self) -> SagaId {
        SagaId::from_u128(self.work_rng.gen())
    }

    #[allow(clippy::too_many_arguments)]
    fn invoke(
        &mut self,
        f: OpKind,
        saga: SagaId,
        process: String,
        value: OpValue,
        reporter: Address,
        coordinator: InstitutionId,
        busy: Vec<u64>,
    ) -> usize {
        let id = self.driver.ops.len();
        self.driver.history.push(Entry {
            index: 0,
            time_ms: self.now,
            process: process.clone(),
            kind: OpType::Invoke,
            f,
            op: id as u64,
            saga: saga.to_string(),
            value: value.clone(),
            error: None,
        });
        for w in &busy {
            *self.driver.busy.entry(*w).or_default() += 1;
        }
        self.driver.ops.push(Op {
            id: id as u64,
            f,
            saga,
            process,
            value,
            reporter,
            coordinator,
            invoked_ms: self.now,
            done: None,
            busy,
        });
        self.driver.open.insert(saga, id);
        let timeout = self.now + self.scenario.workload.client_timeout_ms;
        self.push(timeout, Item::ClientTimeout { op: id });
        id
    }

    fn submit(&mut self, wallet: WalletId, command: WalletCommand) {
        let actor = index_of(self.scenario, Address::Wallet(wallet)).expect("wallet exists");
        self.push(
            self.now,
            Item::Command {
                actor,
                input: Box::new(Input::Wallet(command)),
            },
        );
    }

    fn start_op(&mut self) {
        let mix = self.scenario.workload.mix;
        let mut roll = self.work_rng.gen_range(0..mix.total());
        let mut pick = OpKind::Pay;
        for (kind, weight) in [
            (OpKind::Pay, mix.pay),
            (OpKind::Collect, mix.collect),
            (OpKind::Exchange, mix.exchange),
            (OpKind::Insufficient, mix.insufficient),
            (OpKind::DoubleSpend, mix.double_spend),
            (OpKind::Forged, mix.forged),
            (OpKind::Conflict, mix.conflict),
        ] {
            if roll < weight {
                pick = kind;
                break;
            }
            roll -= weight;
        }
        if !self.start(pick) {
            self.driver.skipped += 1;
        }
    }

    fn start(&mut self, f: OpKind) -> bool {
        let amount_max = self.scenario.workload.amount_max_fen;
        match f {
            OpKind::Pay | OpKind::Collect | OpKind::Insufficient => {
                let Some(payer) = self.pick_idle(f != OpKind::Insufficient) else {
                    return false;
                };
                let payee = self.pick_payee(payer, None);
                let balance = self.wallet(payer).map_or(0, |h| h.state.balance().0);
                let amount = if f == OpKind::Insufficient {
                    balance + 10 * amount_max + 1
                } else {
                    self.work_rng.gen_range(1..=balance.min(amount_max))
                };
                let saga = self.saga();
                let coordinator = self.blueprint.institution_of(payee);
                let value = OpValue {
                    payer: payer.0,
                    payee: payee.0,
                    amount,
                    pair: None,
                };
                if f == OpKind::Collect {
                    if !self.available(payee) {
                        return false;
                    }
                    self.invoke(
                        f,
                        saga,
                        payee.to_string(),
                        value,
                        Address::Wallet(payee),
                        coordinator,
                        vec![payer.0, payee.0],
                    );
                    self.submit(
                        payee,
                        WalletCommand::Collect {
                            saga,
                            payer,
                            amount: Amount(amount),
                        },
                    );
                } else {
                    self.invoke(
                        f,
                        saga,
                        payer.to_string(),
                        value,
                        Address::Wallet(payer),
                        coordinator,
                        vec![payer.0],
                    );
                    self.submit(
                        payer,
                        WalletCommand::Pay {
                            saga,
                            payee,
                            payee_institution: coordinator,
                            amount: Amount(amount),
                            coins: None,
                        },
                    );
                }
                true
            }
            OpKind::Exchange => {
                let Some(w) = self.pick_idle(false) else {
                    return false;
                };
                let amount = self.work_rng.gen_range(1..=amount_max);
                let saga = self.saga();
                let value = OpValue {
                    payer: w.0,
                    payee: w.0,
                    amount,
                    pair: None,
                };
                let coordinator = self.blueprint.institution_of(w);
                self.invoke(
                    f,
                    saga,
                    w.to_string(),
                    value,
                    Address::Wallet(w),
                    coordinator,
                    vec![w.0],
                );
                self.submit(
                    w,
                    WalletCommand::Exchange {
                        saga,
                        amount: Amount(amount),
                    },
                );
                true
            }
            OpKind::DoubleSpend => {
                let Some(index) = self
                    .driver
                    .spent
                    .iter()
                    .position(|(w, _)| self.available(*w))
                else {
                    return false;
                };
                let (spender, coins) = self.driver.spent.remove(index).expect("index in range");
                let payee = self.pick_payee(spender, None);
                let saga = self.saga();
                let coordinator = self.blueprint.institution_of(payee);
                let value = OpValue {
                    payer: spender.0,
                    payee: payee.0,
                    amount: 1,
                    pair: None,
                };
                self.invoke(
                    f,
                    saga,
                    spender.to_string(),
                    value,
                    Address::Wallet(spender),
                    coordinator,
                    vec![spender.0],
                );
                self.submit(
                    spender,
                    WalletCommand::Pay {
                        saga,
                        payee,
                        payee_institution: coordinator,
                        amount: Amount(1),
                        coins: Some(coins),
                    },
                );
                true
            }
            OpKind::Forged => {
                // A thief names a victim's key and coins but can only sign with its own key.
                let Some((victim, coins)) = self.driver.spent.front().cloned() else {
                    return false;
                };
                let payee = self.pick_payee(victim, None);
                let coordinator = self.blueprint.institution_of(payee);
                let thief = SoftKeyStore::from_seed(self.work_rng.gen());
                let saga = self.saga();
                let signed = PaymentAuthorization {
                    saga_id: saga,
                    payer: victim,
                    payer_key: self.blueprint.wallet_keys(victim).public_key(),
                    payer_institution: self.blueprint.institution_of(victim),
                    coin_ids: coins,
                    amount: Amount(1),
                    payee,
                    payee_institution: coordinator,
                    expires_at_ms: u64::MAX,
                }
                .sign(&thief);
                let value = OpValue {
                    payer: victim.0,
                    payee: payee.0,
                    amount: 1,
                    pair: None,
                };
                self.invoke(
                    f,
                    saga,
                    "forger".into(),
                    value,
                    Address::Institution(coordinator),
                    coordinator,
                    vec![],
                );
                self.send(Envelope {
                    message_id: 0,
                    saga_id: saga,
                    from: FORGER,
                    to: Address::Institution(coordinator),
                    attempt: 0,
                    trace: None,
                    payload: Payload::RedeemRequest(signed),
                });
                true
            }
            OpKind::Conflict => {
                // Two payments of the same coin at once, coordinated by two other
                // institutions: the issuer may lock it for one of them only.
                let Some(payer) = self.pick_idle(true) else {
                    return false;
                };
                let Some(coin) = self.wallet(payer).and_then(|h| {
                    h.state
                        .snapshot()
                        .coins
                        .into_iter()
                        .max_by_key(|c| (c.value(), c.id))
                }) else {
                    return false;
                };
                let home = self.blueprint.institution_of(payer);
                let first = self.pick_payee(payer, Some(true));
                let second = self.pick_payee(payer, Some(true));
                if first == second || self.blueprint.institution_of(first) == home {
                    return false;
                }
                let sagas = [self.saga(), self.saga()];
                let base = self.driver.ops.len() as u64;
                for (k, payee) in [first, second].into_iter().enumerate() {
                    let amount = self.work_rng.gen_range(1..=coin.value().0);
                    let coordinator = self.blueprint.institution_of(payee);
                    let value = OpValue {
                        payer: payer.0,
                        payee: payee.0,
                        amount,
                        pair: Some(base + 1 - k as u64),
                    };
                    self.invoke(
                        f,
                        sagas[k],
                        payer.to_string(),
                        value,
                        Address::Wallet(payer),
                        coordinator,
                        vec![payer.0],
                    );
                    self.submit(
                        payer,
                        WalletCommand::Pay {
                            saga: sagas[k],
                            payee,
                            payee_institution: coordinator,
                            amount: Amount(amount),
                            coins: Some(vec![coin.id]),
                        },
                    );
                }
                true
            }
        }
    }

    fn complete(&mut self, op: usize, kind: OpType, error: Option<String>) {
        let o = &mut self.driver.ops[op];
        o.done = Some((kind, self.now, error.clone()));
        let (f, id, saga, process, value, invoked) = (
            o.f,
            o.id,
            o.saga,
            o.process.clone(),
            o.value.clone(),
            o.invoked_ms,
        );
        for w in std::mem::take(&mut o.busy) {
            if let Some(n) = self.driver.busy.get_mut(&w) {
                *n -= 1;
                if *n == 0 {
                    self.driver.busy.remove(&w);
                }
            }
        }
        self.driver.open.remove(&saga);
        self.driver.history.push(Entry {
            index: 0,
            time_ms: self.now,
            process,
            kind,
            f,
            op: id,
            saga: saga.to_string(),
            value,
            error,
        });
        self.driver.completions.push(Completion {
            invoked_ms: invoked,
            time_ms: self.now,
            kind,
            f,
        });
    }

    fn client_timeout(&mut self, op: usize) {
        if self.driver.ops[op].done.is_none() {
            self.complete(op, OpType::Info, Some("timeout".into()));
        }
    }

    fn on_notice(&mut self, n: Notice) {
        let result = n.outcome.result;
        // Idempotency: each actor announces a saga's outcome once, and every announcement of
        // a saga agrees.
        let seen = self.driver.notices.entry(n.saga_id).or_default();
        let twice = seen.iter().any(|(source, _)| *source == n.source);
        let disagree = seen.iter().find(|(_, r)| *r != result).copied();
        seen.push((n.source, result));
        if twice {
            self.violate(
                "idempotency",
                format!(
                    "{} announced the outcome of saga {} twice",
                    n.source, n.saga_id
                ),
            );
        }
        if let Some((other, r)) = disagree {
            self.violate(
                "idempotency",
                format!(
                    "saga {}: {other} announced {}, {} announced {}",
                    n.saga_id,
                    check::result_name(r),
                    n.source,
                    check::result_name(result)
                ),
            );
        }
        self.driver.genesis_pending.remove(&n.saga_id);
        if let Some(&op) = self.driver.open.get(&n.saga_id) {
            if self.driver.ops[op].reporter == n.source {
                match result {
                    Ok(()) => {
                        let o = &self.driver.ops[op];
                        if matches!(o.f, OpKind::Pay | OpKind::Conflict)
                            && !n.outcome.spent_coin_ids.is_empty()
                        {
                            if self.driver.spent.len() == SPENT_MEMORY_MAX {
                                self.driver.spent.pop_front();
                            }
                            self.driver.spent.push_back((
                                WalletId(o.value.payer),
                                n.outcome.spent_coin_ids.clone(),
                            ));
                        }
                        self.complete(op, OpType::Ok, None);
                    }
                    Err(reason) => self.complete(op, OpType::Fail, Some(reason.name().to_string())),
                }
            }
            return;
        }
        if let Some(op) = self
            .driver
            .ops
            .iter()
            .position(|o| o.saga == n.saga_id && o.reporter == n.source)
        {
            self.driver.late.entry(op).or_default().push(result);
        }
    }

    // ----- reads -----

    fn institution(&self, i: usize) -> &Hosted<specie_actors::institution::Institution> {
        match &self.slots[1 + i].actor {
            Actor::Inst(h) => h,
            _ => unreachable!("slots 1..=k are institutions"),
        }
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let central_bank = match &self.slots[0].actor {
            Actor::Bank(h) => h.state.snapshot(),
            _ => unreachable!("slot 0 is the central bank"),
        };
        let k = self.scenario.cluster.institutions as usize;
        let institutions = (0..k)
            .map(|i| self.institution(i).state.snapshot())
            .collect();
        let wallets = self.slots[1 + k..]
            .iter()
            .map(|s| match &s.actor {
                Actor::Wallet(h) => h.state.snapshot(),
                _ => unreachable!("the rest are wallets"),
            })
            .collect();
        ClusterSnapshot {
            central_bank,
            institutions,
            wallets,
            // The simulated workload opens no escrow contracts (yet).
            escrows: Vec::new(),
            deposited: self.blueprint.deposited(),
        }
    }

    /// No envelope, commit or restart pending; every saga terminal; every coin with its owner.
    fn quiescent(&self) -> bool {
        if self.actor_work > 0 || self.slots.iter().any(|s| !s.up || !s.actor.settled()) {
            return false;
        }
        let snap = self.snapshot();
        if snap.wallets.iter().any(|w| w.pending > 0) {
            return false;
        }
        let mut owned: BTreeMap<specie_protocol::PublicKey, usize> = BTreeMap::new();
        for inst in &snap.institutions {
            if inst.pays.values().any(|p| !p.step.is_terminal())
                || inst
                    .exchanges
                    .values()
                    .any(|(_, _, st)| *st == ExchangeState::Pending)
            {
                return false;
            }
            for r in inst.coins.values() {
                if !matches!(r.state, CoinState::Spent(_)) {
                    *owned.entry(r.coin.body.owner).or_default() += 1;
                }
            }
        }
        snap.wallets
            .iter()
            .all(|w| owned.get(&w.key).copied().unwrap_or(0) == w.coins.len())
    }

    /// What is still unfinished, for a termination finding.
    fn unfinished(&self) -> String {
        let snap = self.snapshot();
        let mut facts = Vec::new();
        for inst in &snap.institutions {
            let mut pays: Vec<_> = inst
                .pays
                .iter()
                .filter(|(_, p)| !p.step.is_terminal())
                .collect();
            pays.sort_by_key(|(s, _)| **s);
            for (saga, p) in pays.iter().take(3) {
                facts.push(format!(
                    "saga {saga} at coordinator {} is {:?}",
                    inst.id, p.step
                ));
            }
        }
        for w in snap.wallets.iter().filter(|w| w.pending > 0).take(3) {
            facts.push(format!("{} has {} operations in flight", w.id, w.pending));
        }
        let down: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !s.up)
            .map(|s| s.address.to_string())
            .collect();
        if !down.is_empty() {
            facts.push(format!("down: {}", down.join(", ")));
        }
        if facts.is_empty() && self.actor_work > 0 {
            facts.push(format!(
                "{} envelopes, commits or restarts still pending",
                self.actor_work
            ));
        }
        if facts.is_empty() {
            let mut owned: BTreeMap<specie_protocol::PublicKey, usize> = BTreeMap::new();
            for inst in &snap.institutions {
                for r in inst
                    .coins
                    .values()
                    .filter(|r| !matches!(r.state, CoinState::Spent(_)))
                {
                    *owned.entry(r.coin.body.owner).or_default() += 1;
                }
            }
            for w in snap
                .wallets
                .iter()
                .filter(|w| owned.get(&w.key).copied().unwrap_or(0) != w.coins.len())
                .take(3)
            {
                facts.push(format!(
                    "{} holds {} coins, the registers say it owns {} (coins still on their way)",
                    w.id,
                    w.coins.len(),
                    owned.get(&w.key).copied().unwrap_or(0)
                ));
            }
        }
        facts.join("; ")
    }

    fn audit_now(&mut self, quiescent: bool) {
        let report = audit(&self.snapshot(), quiescent);
        if !report.ok() {
            let (name, check) = report
                .invariants()
                .into_iter()
                .find(|(_, c)| !c.is_ok())
                .map(|(n, c)| (n, c.to_string()))
                .expect("a failed audit names an invariant");
            let label = if quiescent {
                "quiescent audit"
            } else {
                "audit by recorded decisions"
            };
            self.violate(name, format!("{label}: {check}"));
        }
        self.audits.push((self.phase, self.now, report));
    }

    fn final_read(&self, snaps: &[InstitutionSnapshot], op: &Op) -> FinalRead {
        let inst = &snaps[op.coordinator.0 as usize];
        if op.f == OpKind::Exchange {
            return match inst.exchanges.get(&op.saga) {
                None => FinalRead::Unknown,
                Some((_, _, ExchangeState::Committed)) => FinalRead::Committed,
                Some((_, _, ExchangeState::Aborted(r))) => FinalRead::Aborted(*r),
                Some((_, _, ExchangeState::Pending)) => FinalRead::InProgress,
            };
        }
        match inst.pays.get(&op.saga).map(|p| p.step) {
            None => FinalRead::Unknown,
            Some(PayStep::Committed) => FinalRead::Committed,
            Some(PayStep::Aborted { reason }) => FinalRead::Aborted(reason),
            Some(_) => FinalRead::InProgress,
        }
    }

    fn finish(
        mut self,
        options: &RunOptions,
        phases: Vec<(&'static str, u64, u64)>,
        termination: Vec<(&'static str, Result<u64, String>)>,
        started: Instant,
    ) -> RunResult {
        // The client gives up on whatever is still open.
        let open: Vec<usize> = self.driver.open.values().copied().collect();
        for op in open {
            self.complete(
                op,
                OpType::Info,
                Some("no outcome by the end of the run".into()),
            );
        }
        let snaps: Vec<InstitutionSnapshot> = (0..self.scenario.cluster.institutions as usize)
            .map(|i| self.institution(i).state.snapshot())
            .collect();
        let reads: Vec<FinalRead> = self
            .driver
            .ops
            .iter()
            .map(|op| self.final_read(&snaps, op))
            .collect();
        let mut restarts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (_, a) in &self.restarts {
            *restarts
                .entry(specie_runtime::host::actor_kind(*a))
                .or_default() += 1;
        }
        let stopped = self.violation.is_some() || !self.escalations.is_empty();
        let input = check::Input {
            scenario: self.scenario,
            ops: &self.driver.ops,
            reads: &reads,
            late: &self.driver.late,
            audits: &self.audits,
            termination: &termination,
            restarts: &self.restarts,
            escalations: &self.escalations,
            duplicates: self.duplicates,
            phases: &phases,
            violation: self.violation.as_ref(),
            stopped,
        };
        let (invariants, steady) = check::check_all(&input);
        let faults = self.faults.iter().map(|f| f.placed.clone()).collect();
        RunResult {
            scenario: self.scenario.name.clone(),
            origin: self.scenario.origin.clone(),
            seed: options.seed,
            planted: options.planted.map(str::to_string),
            ops: self.driver.ops.len(),
            skipped: self.driver.skipped,
            history: self.driver.history,
            faults,
            faults_injected: self.injected,
            invariants,
            violation: self.violation,
            phases,
            completions: self.driver.completions,
            sim_ms: self.now,
            wall_s: started.elapsed().as_secs_f64(),
            net: self.net,
            restarts,
            steady,
        }
    }
}

/// A fresh RNG for callers that need one outside a run (tests).
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
