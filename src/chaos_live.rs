//! `specie chaos run SCENARIO --cluster FILE`: a chaos scenario against a live multi-process
//! cluster — real `specie node` processes, real gRPC, real disks.
//!
//! The controller starts the cluster's nodes itself (or, with `--attach`, talks to nodes that
//! are already running), drives the scenario's workload through the client API (payments
//! between wallets across institutions, and the invalid share the client API can express:
//! payments above the payer's funds), applies the scenario's fault schedule at its offsets
//! through each node's admin service (network faults, partitions, pauses, write delays as
//! rules that expire by themselves; `kill` as SIGKILL of the node process hosting the
//! target, restarted when the fault ends), heals, waits for every operation to resolve, and
//! checks the recorded history against the nodes' answers: every acknowledged commit is
//! committed, every refusal moved nothing, each wallet's balance is exactly what the
//! committed operations say, resubmitting a key returns the recorded outcome, and — after a
//! graceful SIGTERM of every node — `specie audit --cluster` passes.
//!
//! Safety: only the nodes of the given cluster file are contacted; nodes are started only when
//! every address in the file is on this machine (loopback); every rule carries a bounded
//! duration; Ctrl-C clears every rule on every node before exiting.
//!
//! The schedule is reproducible (same seed → the same faults at the same offsets, the same
//! arrivals), the interleaving is not: real threads, sockets and disks decide it.

use crate::chaos_cmd::RunArgs;
use crate::live_nodes::{self, absolute, prepare_work, tls_for, Procs};
use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use parking_lot::Mutex;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use specie_actors::ingress::saga_of;
use specie_actors::member::node_of;
use specie_chaos::history::{Entry, History, OpKind, OpType, OpValue};
use specie_chaos::scenario::{
    ActorKind, Direction as ScenarioDirection, FaultKind, Member, Selector,
};
use specie_chaos::schedule::{self, stream_rng, FaultInstance, Purpose};
use specie_chaos::sim::{Completion, NetStats, PlacedFault, RunResult};
use specie_chaos::{report, Finding, Scenario};
use specie_protocol::grpc::admin as ga;
use specie_protocol::grpc::ingress as gi;
use specie_protocol::{Address, InstitutionId, SagaId, WalletId};
use specie_runtime::admin::rule_to_proto;
use specie_runtime::live_faults::{Direction, Pattern, RuleKind, RuleSpec};
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tonic::transport::Channel;

/// How long the nodes may take to become ready (genesis) before the run gives up.
const READY_MAX: Duration = Duration::from_secs(300);
/// A killed node whose fault has no duration restarts after this long.
const RESTART_AFTER_KILL: Duration = Duration::from_millis(500);
/// How long a `reorder` rule holds the envelopes it does not reorder (the live network has no
/// base latency for a reordered envelope to skip).
const REORDER_HOLD_MS: u64 = 20;
/// Longest a single submission waits for its outcome before the client asks again.
const SUBMIT_WAIT_MAX: Duration = Duration::from_secs(5);
/// Pause between a client's attempts after an error.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the final balance check waits for coins in transit (a payee's new coin, a payer's
/// change) to arrive before it reports a mismatch.
const BALANCES_SETTLE_MAX: Duration = Duration::from_secs(10);
/// Operations queried or resubmitted at once in the final reads.
const READS_IN_FLIGHT: usize = 16;
/// The fault kinds a live cluster can take.
const LIVE_FAULTS: &str =
    "delay, loss, duplicate, reorder, corrupt, partition, pause, kill, write_delay";

/// A scenario that cannot run against the given cluster.
#[derive(Debug, Error)]
pub enum LivePlanError {
    /// A fault names an actor the cluster does not have.
    #[error("{scenario}:{line}: field `fault[{index}]` names {actor}, which the cluster {cluster} does not have: it has {institutions} institutions (inst-0 to inst-{last_institution}) and {wallets} wallets")]
    NoSuchActor {
        /// The scenario file.
        scenario: String,
        /// Line of the fault.
        line: usize,
        /// Position of the fault.
        index: usize,
        /// The actor named.
        actor: String,
        /// The cluster file.
        cluster: String,
        /// Institutions of the cluster.
        institutions: u32,
        /// The last institution's id.
        last_institution: u32,
        /// Wallets of the cluster.
        wallets: u64,
    },
    /// The scenario is shaped for another number of institutions than the cluster has: its
    /// groups (`wallets-of-inst-N`, the institutions it leaves out) would mean other actors.
    #[error("{scenario}: field `cluster.institutions` is {scenario_institutions}, but the cluster {cluster} has {institutions} institutions: shape the scenario like the cluster (set `institutions = {institutions}` and name every institution in its groups)")]
    Shape {
        /// The scenario file.
        scenario: String,
        /// Its institutions.
        scenario_institutions: u32,
        /// The cluster file.
        cluster: String,
        /// The cluster's institutions.
        institutions: u32,
    },
    /// A fault kind a live cluster cannot take.
    #[error("{scenario}:{line}: field `fault[{index}].kind` `{kind}` cannot be injected into a live cluster (live faults: {LIVE_FAULTS})")]
    Unsupported {
        /// The scenario file.
        scenario: String,
        /// Line of the fault.
        line: usize,
        /// Position of the fault.
        index: usize,
        /// The kind.
        kind: &'static str,
    },
    /// A `kill` against nodes the controller did not start.
    #[error("{scenario}:{line}: field `fault[{index}].kind` `kill` restarts node processes, which needs the controller to start them: run without --attach")]
    KillAttached {
        /// The scenario file.
        scenario: String,
        /// Line of the fault.
        line: usize,
        /// Position of the fault.
        index: usize,
    },
    /// The workload has nothing the client API can express.
    #[error("{scenario}: field `workload.mix` has no operation the client API can drive (pay, collect or insufficient)")]
    NoWorkload {
        /// The scenario file.
        scenario: String,
    },
    /// A node address off this machine without `--attach`.
    #[error("{cluster}: node {node} listens on {address}, not on this machine: start the nodes where they live and run with --attach")]
    NotLocal {
        /// The cluster file.
        cluster: String,
        /// The node.
        node: String,
        /// Its address.
        address: SocketAddr,
    },
}

// ----- the plan: the scenario mapped onto the cluster -----

/// The scenario mapped onto the live cluster, for one seed.
struct Plan {
    scenario: Scenario,
    seed: u64,
    instances: Vec<FaultInstance>,
    institutions: u32,
    wallets_live: u64,
    /// Wallets the workload uses (`0..wallets`).
    wallets: u64,
    pay_weight: u32,
    insufficient_weight: u32,
    /// Mix entries the client API cannot express.
    dropped: Vec<&'static str>,
}

impl Plan {
    fn new(
        scenario: &Scenario,
        file: &ClusterFile,
        seed: u64,
        attach: bool,
    ) -> Result<Plan, LivePlanError> {
        let institutions = file.config.cluster.institutions.len() as u32;
        let wallets_live = file.config.cluster.wallets;
        if scenario.cluster.institutions != institutions {
            return Err(LivePlanError::Shape {
                scenario: scenario.origin.clone(),
                scenario_institutions: scenario.cluster.institutions,
                cluster: file.origin.clone(),
                institutions,
            });
        }
        for (index, f) in scenario.faults.iter().enumerate() {
            let no_such = |actor: String| LivePlanError::NoSuchActor {
                scenario: scenario.origin.clone(),
                line: f.line,
                index,
                actor,
                cluster: file.origin.clone(),
                institutions,
                last_institution: institutions.saturating_sub(1),
                wallets: wallets_live,
            };
            let check = |a: Address| -> Result<(), LivePlanError> {
                match a {
                    Address::Institution(i) if i.0 >= institutions => Err(no_such(a.to_string())),
                    Address::Wallet(w) if w.0 >= wallets_live => Err(no_such(a.to_string())),
                    _ => Ok(()),
                }
            };
            match &f.kind {
                FaultKind::ClockSkew { .. } | FaultKind::FsyncError { .. } => {
                    return Err(LivePlanError::Unsupported {
                        scenario: scenario.origin.clone(),
                        line: f.line,
                        index,
                        kind: f.kind.name(),
                    })
                }
                FaultKind::Kill if attach => {
                    return Err(LivePlanError::KillAttached {
                        scenario: scenario.origin.clone(),
                        line: f.line,
                        index,
                    })
                }
                FaultKind::Partition { groups, .. } => {
                    for m in groups.iter().flatten() {
                        match m {
                            Member::Actor(a) => check(*a)?,
                            Member::WalletsOf(i) if i.0 >= institutions => {
                                return Err(no_such(m.name()))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            match &f.selector {
                Selector::Actors(actors) => {
                    for a in actors {
                        check(*a)?;
                    }
                }
                Selector::Kind {
                    kind,
                    ids: Some(ids),
                    ..
                } => {
                    for id in ids {
                        match kind {
                            ActorKind::Institution => {
                                check(Address::Institution(InstitutionId(*id as u32)))?
                            }
                            ActorKind::Wallet => check(Address::Wallet(WalletId(*id)))?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let mix = scenario.workload.mix;
        let pay_weight = mix.pay + mix.collect;
        let insufficient_weight = mix.insufficient;
        if pay_weight + insufficient_weight == 0 {
            return Err(LivePlanError::NoWorkload {
                scenario: scenario.origin.clone(),
            });
        }
        let dropped = [
            ("exchange", mix.exchange),
            ("double_spend", mix.double_spend),
            ("forged", mix.forged),
            ("conflict", mix.conflict),
        ]
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .map(|(n, _)| n)
        .collect();
        // The schedule over the live cluster's actors: selectors pick among its institutions
        // and wallets.
        let mut shaped = scenario.clone();
        shaped.cluster.institutions = institutions;
        shaped.cluster.wallets = wallets_live;
        let instances = schedule::expand(&shaped, seed);
        Ok(Plan {
            scenario: scenario.clone(),
            seed,
            instances,
            institutions,
            wallets_live,
            wallets: scenario.cluster.wallets.min(wallets_live),
            pay_weight,
            insufficient_weight,
            dropped,
        })
    }

    fn warmup(&self) -> Duration {
        Duration::from_millis(self.scenario.phases.warmup_ms)
    }
}

/// The nodes a set of targets lives on (every node for `None`).
fn nodes_of(file: &ClusterFile, targets: &Option<BTreeSet<Address>>) -> Vec<usize> {
    match targets {
        None => (0..file.nodes.len()).collect(),
        Some(t) => {
            let set: BTreeSet<usize> = t
                .iter()
                .filter_map(|a| node_of(&file.placement, *a))
                .collect();
            set.into_iter().collect()
        }
    }
}

fn pattern_of(m: &Member) -> Pattern {
    match m {
        Member::Actor(a) => Pattern::Actor(*a),
        Member::Institutions => Pattern::Institutions,
        Member::Wallets => Pattern::Wallets,
        Member::WalletsOf(i) => Pattern::WalletsOf(*i),
    }
}

/// A fault instance's targets as patterns (every wallet or institution compressed).
fn patterns_of(plan: &Plan, targets: &Option<BTreeSet<Address>>) -> Option<Vec<Pattern>> {
    let t = targets.as_ref()?;
    let wallets = t.iter().filter(|a| matches!(a, Address::Wallet(_))).count() as u64;
    let institutions = t
        .iter()
        .filter(|a| matches!(a, Address::Institution(_)))
        .count() as u32;
    let mut out = Vec::new();
    if wallets == plan.wallets_live {
        out.push(Pattern::Wallets);
    }
    if institutions == plan.institutions {
        out.push(Pattern::Institutions);
    }
    for a in t {
        match a {
            Address::Wallet(_) if wallets == plan.wallets_live => {}
            Address::Institution(_) if institutions == plan.institutions => {}
            a => out.push(Pattern::Actor(*a)),
        }
    }
    Some(out)
}

fn direction_of(d: ScenarioDirection) -> Direction {
    match d {
        ScenarioDirection::To => Direction::To,
        ScenarioDirection::From => Direction::From,
        ScenarioDirection::Both => Direction::Both,
    }
}

/// The rule a fault instance installs (`None` for `kill`, which acts on processes).
fn rule_of(plan: &Plan, f: &FaultInstance) -> Option<RuleSpec> {
    let kind = match &f.kind {
        FaultKind::Delay {
            latency_ms,
            jitter_ms,
            correlation,
        } => RuleKind::Delay {
            latency_ms: *latency_ms,
            jitter_ms: *jitter_ms,
            correlation: *correlation,
        },
        FaultKind::Loss {
            percent,
            correlation,
        } => RuleKind::Loss {
            percent: *percent,
            correlation: *correlation,
        },
        FaultKind::Duplicate { percent } => RuleKind::Duplicate { percent: *percent },
        FaultKind::Reorder { percent, gap } => RuleKind::Reorder {
            percent: *percent,
            gap: *gap,
            hold_ms: REORDER_HOLD_MS,
        },
        FaultKind::Corrupt { percent } => RuleKind::Corrupt { percent: *percent },
        FaultKind::Partition { groups, direction } => RuleKind::Partition {
            groups: groups
                .iter()
                .map(|g| g.iter().map(pattern_of).collect())
                .collect(),
            direction: direction_of(*direction),
        },
        FaultKind::Pause => RuleKind::Pause,
        FaultKind::WriteDelay { latency_ms } => RuleKind::WriteDelay {
            latency_ms: *latency_ms,
        },
        FaultKind::Kill | FaultKind::ClockSkew { .. } | FaultKind::FsyncError { .. } => {
            return None
        }
    };
    let targets = match kind {
        RuleKind::Partition { .. } | RuleKind::WriteDelay { .. } => None,
        _ => patterns_of(plan, &f.targets),
    };
    Some(RuleSpec {
        kind,
        targets,
        direction: direction_of(f.direction),
        duration: Duration::from_millis((f.end_ms - f.start_ms).max(1)),
        seed: 0,
        label: format!(
            "{} fault #{} (scenario entry {})",
            plan.scenario.name, f.id, f.spec
        ),
    })
}

/// The nodes a fault instance acts on: every node for network rules (each judges what its own
/// actors send), the targets' nodes for kills and write delays.
fn fault_nodes(file: &ClusterFile, f: &FaultInstance) -> Vec<usize> {
    match f.kind {
        FaultKind::Kill | FaultKind::WriteDelay { .. } => nodes_of(file, &f.targets),
        _ => (0..file.nodes.len()).collect(),
    }
}

/// The seed of one fault's rule on one node: the fault's own stream of the run's seed.
fn rule_seed(seed: u64, stream: u64, node: usize) -> u64 {
    stream_rng(seed, Purpose::Fault, stream).gen::<u64>()
        ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

// ----- the node processes: crate::live_nodes -----

// ----- the run's shared state -----

/// One client operation.
#[derive(Debug, Clone)]
struct LiveOp {
    id: u64,
    f: OpKind,
    payer: u64,
    payee: u64,
    amount: u64,
    key: String,
    saga: SagaId,
    invoked_ms: u64,
    /// The completion: type, time, error.
    done: Option<(OpType, u64, Option<String>)>,
    /// The final read of the saga's state.
    last: Option<gi::OperationState>,
}

impl LiveOp {
    fn describe(&self) -> String {
        format!(
            "op {} ({} saga {}, wallet-{} → wallet-{}, {} fen)",
            self.id,
            self.f.name(),
            self.saga,
            self.payer,
            self.payee,
            self.amount
        )
    }

    fn request(&self) -> gi::submit_request::Op {
        gi::submit_request::Op::Pay(gi::PayOp {
            from: self.payer,
            to: self.payee,
            amount: self.amount,
        })
    }
}

/// Metric samples of one node, summed over its process incarnations.
#[derive(Debug, Default, Clone)]
struct Scraped {
    banked: BTreeMap<String, f64>,
    latest: BTreeMap<String, f64>,
}

impl Scraped {
    fn total(&self, name: &str, label: Option<&str>) -> f64 {
        [&self.banked, &self.latest]
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .filter(|(k, _)| label.is_none_or(|l| k.contains(l)))
            .map(|(_, v)| *v)
            .sum()
    }
}

/// A rule installed on a node, for reinstallation after the node restarts.
#[derive(Debug, Clone)]
struct Installed {
    node: usize,
    spec: RuleSpec,
    ends: Instant,
}

struct Live {
    plan: Plan,
    file: ClusterFile,
    /// The cluster file the nodes and the audit use.
    cluster_path: PathBuf,
    work: PathBuf,
    /// The specie binary (resolved at the start: a rebuild during the run replaces the file).
    exe: PathBuf,
    attach: bool,
    planted: Option<String>,
    ingress: Vec<gi::IngressClient<Channel>>,
    admin: Vec<ga::AdminClient<Channel>>,
    procs: Mutex<Option<Procs>>,
    t0: Mutex<Option<Instant>>,
    history: Mutex<History>,
    ops: Mutex<Vec<LiveOp>>,
    busy: Mutex<HashSet<u64>>,
    /// What each workload wallet can spend as far as this client knows: its starting coins,
    /// less what it is paying or paid, plus what it was paid. Honest payments stay within
    /// half of it (change and incoming coins arrive a moment after an outcome), so the
    /// workload does not drain wallets into refusals; the insufficient share is planted apart.
    funds: Mutex<HashMap<u64, i64>>,
    completions: Mutex<Vec<Completion>>,
    in_flight: AtomicU64,
    skipped: AtomicU64,
    kills: AtomicU64,
    /// Set when the run stops the cluster (at the end, or on Ctrl-C): no restart after it.
    stopping: AtomicBool,
    notes: Mutex<Vec<String>>,
    installed: Mutex<Vec<Installed>>,
    scraped: Mutex<Vec<Scraped>>,
    run_tag: String,
}

impl Live {
    fn now_ms(&self) -> u64 {
        self.t0
            .lock()
            .map_or(0, |t0| t0.elapsed().as_millis() as u64)
    }

    fn note(&self, text: String) {
        eprintln!("specie chaos: {text}");
        self.notes.lock().push(text);
    }

    fn node_id(&self, node: usize) -> &str {
        &self.file.nodes[node].id
    }
}

// ----- set-up -----

/// Waits until a node takes submissions (see [`live_nodes::wait_ready`]).
async fn wait_ready(live: &Live, node: usize, bound: Duration) -> Result<()> {
    live_nodes::wait_ready(&live.ingress[node], &live.file, node, &live.procs, bound).await
}

// ----- metrics -----

fn scrape_blocking(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("specie_")) {
        if let Some((key, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(key.to_string(), v);
            }
        }
    }
    Some(out)
}

/// Scrapes a node's metrics into its latest sample (`bank`: a kill follows, so keep them).
async fn scrape(live: &Live, node: usize, bank: bool) {
    let addr = live.file.nodes[node].metrics;
    let sample = tokio::task::spawn_blocking(move || scrape_blocking(addr))
        .await
        .ok()
        .flatten();
    let mut scraped = live.scraped.lock();
    let s = &mut scraped[node];
    if let Some(sample) = sample {
        s.latest = sample;
    }
    if bank {
        for (k, v) in std::mem::take(&mut s.latest) {
            *s.banked.entry(k).or_default() += v;
        }
    }
}

// ----- faults -----

async fn install(live: &Live, node: usize, spec: &RuleSpec) -> Result<(), String> {
    let mut c = live.admin[node].clone();
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        c.install_rule(ga::InstallRuleRequest {
            rule: Some(rule_to_proto(spec)),
        }),
    )
    .await;
    match reply {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// Clears every rule on every reachable node; returns the nodes that could not be reached.
async fn heal(live: &Live) -> Vec<String> {
    let calls = (0..live.admin.len()).map(|node| async move {
        let mut c = live.admin[node].clone();
        for _ in 0..3 {
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                c.clear_rules(ga::ClearRulesRequest {
                    ids: vec![],
                    all: true,
                }),
            )
            .await;
            if matches!(r, Ok(Ok(_))) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some(live.node_id(node).to_string())
    });
    let unreachable: Vec<String> = join_all(calls).await.into_iter().flatten().collect();
    live.installed.lock().clear();
    unreachable
}

/// Applies one fault instance at its start.
async fn apply(live: &Arc<Live>, f: &FaultInstance) {
    let nodes = fault_nodes(&live.file, f);
    if f.kind == FaultKind::Kill {
        for node in nodes {
            scrape(live, node, true).await;
            let killed = {
                let mut procs = live.procs.lock();
                match procs.as_mut() {
                    Some(p) if p.is_up(node) => {
                        p.kill9(node);
                        true
                    }
                    _ => false,
                }
            };
            if !killed {
                live.note(format!(
                    "fault #{} kill: node {} was already down",
                    f.id,
                    live.node_id(node)
                ));
                continue;
            }
            live.kills.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "specie chaos: {:.1} s: SIGKILL node {} ({})",
                live.now_ms() as f64 / 1000.0,
                live.node_id(node),
                f.label()
            );
            let after = if f.end_ms > f.start_ms {
                Duration::from_millis(f.end_ms - f.start_ms)
            } else {
                RESTART_AFTER_KILL
            };
            let live = live.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                restart(&live, node).await;
            });
        }
        return;
    }
    let Some(spec) = rule_of(&live.plan, f) else {
        return;
    };
    let ends = Instant::now() + spec.duration;
    let calls = nodes.into_iter().map(|node| {
        let mut spec = spec.clone();
        spec.seed = rule_seed(live.plan.seed, f.stream, node);
        async move {
            let up = live.procs.lock().as_ref().is_none_or(|p| p.is_up(node));
            let result = if up {
                install(live, node, &spec).await
            } else {
                Err("the node is down".into())
            };
            live.installed.lock().push(Installed {
                node,
                spec: spec.clone(),
                ends,
            });
            if let Err(why) = result {
                live.note(format!(
                    "fault #{} {} not installed on node {} at {:.1} s: {why}",
                    f.id,
                    f.kind.name(),
                    live.node_id(node),
                    live.now_ms() as f64 / 1000.0
                ));
            }
        }
    });
    join_all(calls).await;
}

/// Restarts a killed node, and once its admin service answers, reinstalls the rules still in
/// force on it (its process lost them).
async fn restart(live: &Arc<Live>, node: usize) {
    {
        let mut procs = live.procs.lock();
        if live.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(p) = procs.as_mut() else { return };
        if p.is_up(node) {
            return;
        }
        if let Err(e) = p.start(node) {
            drop(procs);
            live.note(format!("restarting node {}: {e:#}", live.node_id(node)));
            return;
        }
    }
    eprintln!(
        "specie chaos: {:.1} s: restarted node {}",
        live.now_ms() as f64 / 1000.0,
        live.node_id(node)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = live.admin[node].clone();
    while Instant::now() < deadline {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            c.list_rules(ga::ListRulesRequest {}),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again: Vec<Installed> = live
        .installed
        .lock()
        .iter()
        .filter(|i| i.node == node && i.ends > Instant::now() + Duration::from_millis(20))
        .cloned()
        .collect();
    for mut i in again {
        i.spec.duration = i
            .ends
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(why) = install(live, node, &i.spec).await {
            live.note(format!(
                "reinstalling {} on restarted node {}: {why}",
                i.spec.kind.name(),
                live.node_id(node)
            ));
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the fault schedule from the start of the fault phase (`start`).
async fn schedule_faults(live: Arc<Live>, start: Instant) {
    let mut order: Vec<&FaultInstance> = live.plan.instances.iter().collect();
    order.sort_by_key(|f| (f.start_ms, f.id));
    for f in order {
        tokio::time::sleep_until((start + Duration::from_millis(f.start_ms)).into()).await;
        eprintln!(
            "specie chaos: {:.1} s: fault #{} {} for {:.1} s",
            live.now_ms() as f64 / 1000.0,
            f.id,
            f.label(),
            (f.end_ms - f.start_ms) as f64 / 1000.0
        );
        apply(&live, f).await;
    }
}

// ----- the workload -----

fn record(live: &Live, op: &LiveOp, kind: OpType, at: u64, error: Option<String>) {
    live.history.lock().push(Entry {
        index: 0,
        time_ms: at,
        process: format!("wallet-{}", op.payer),
        kind,
        f: op.f,
        op: op.id,
        saga: op.saga.to_string(),
        value: OpValue {
            payer: op.payer,
            payee: op.payee,
            amount: op.amount,
            pair: None,
        },
        error,
    });
}

/// Drives one operation to an outcome: submits its key through the nodes in turn (a node
/// that is down or cut off is skipped) until it is committed or aborted, or the client
/// timeout passes (`info`: unknown).
async fn drive(live: Arc<Live>, op: LiveOp) {
    let timeout = Duration::from_millis(live.plan.scenario.workload.client_timeout_ms);
    let deadline = Instant::now() + timeout;
    let n = live.ingress.len();
    let mut attempt = op.id as usize % n;
    let mut last = String::from("no answer");
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break (OpType::Info, Some(format!("client timeout: {last}")));
        }
        let wait = left.min(SUBMIT_WAIT_MAX);
        let mut c = live.ingress[attempt % n].clone();
        let reply = tokio::time::timeout(
            wait + Duration::from_secs(10),
            c.submit(gi::SubmitRequest {
                idempotency_key: op.key.clone(),
                op: Some(op.request()),
                wait_ms: wait.as_millis() as u32,
                forwarded: false,
            }),
        )
        .await;
        match reply {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                match gi::OperationState::try_from(r.state) {
                    Ok(gi::OperationState::Committed) => break (OpType::Ok, None),
                    Ok(gi::OperationState::Aborted) => break (OpType::Fail, Some(r.reason)),
                    _ => last = format!("pending at node {}", r.node),
                }
            }
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                break (OpType::Fail, Some(format!("refused: {}", s.message())));
            }
            Ok(Err(s)) => {
                last = format!(
                    "{}: {:?} {}",
                    live.node_id(attempt % n),
                    s.code(),
                    s.message()
                );
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                last = format!("{}: no answer", live.node_id(attempt % n));
                attempt += 1;
            }
        }
    };
    let at = live.now_ms();
    {
        let mut ops = live.ops.lock();
        let slot = &mut ops[op.id as usize];
        slot.done = Some((outcome.0, at, outcome.1.clone()));
        record(&live, slot, outcome.0, at, outcome.1);
    }
    live.completions.lock().push(Completion {
        invoked_ms: op.invoked_ms,
        time_ms: at,
        kind: outcome.0,
        f: op.f,
    });
    if op.f == OpKind::Pay {
        let mut funds = live.funds.lock();
        match outcome.0 {
            OpType::Ok => *funds.entry(op.payee).or_default() += op.amount as i64,
            OpType::Fail => *funds.entry(op.payer).or_default() += op.amount as i64,
            // Unknown: stays reserved.
            _ => {}
        }
    }
    live.busy.lock().remove(&op.payer);
    live.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// Arrivals at the scenario's rate until `until`, from the seed's workload stream.
async fn workload(live: &Arc<Live>, rng: &mut ChaCha8Rng, until: Instant) {
    let plan = &live.plan;
    let rate = plan.scenario.workload.rate_per_s;
    let mut next = Instant::now();
    loop {
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        next += Duration::from_secs_f64(-u.ln() / rate);
        if next >= until {
            tokio::time::sleep_until(until.into()).await;
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        // Draw everything the arrival needs first, so the stream stays aligned whatever the
        // cluster's state.
        let w = plan.pay_weight + plan.insufficient_weight;
        let insufficient = rng.gen_range(0..w) >= plan.pay_weight;
        let candidates: Vec<u64> = (0..16).map(|_| rng.gen_range(0..plan.wallets)).collect();
        let cross = rng.gen::<f64>() * 100.0 < plan.scenario.workload.cross_institution_percent;
        let payee_draw: u64 = rng.gen();
        let amount = rng.gen_range(1..=plan.scenario.workload.amount_max_fen);
        let picked = {
            let mut busy = live.busy.lock();
            let mut funds = live.funds.lock();
            let free = candidates.into_iter().find_map(|w| {
                if busy.contains(&w) {
                    return None;
                }
                if insufficient {
                    return Some((w, 0));
                }
                let spendable = funds.get(&w).copied().unwrap_or(0) / 2;
                (spendable >= 1).then(|| (w, amount.min(spendable as u64)))
            });
            if let Some((w, paying)) = free {
                busy.insert(w);
                *funds.entry(w).or_default() -= paying as i64;
            }
            free
        };
        let Some((payer, amount)) = picked else {
            live.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let inst = |w: u64| w % u64::from(plan.institutions);
        let others: Vec<u64> = (0..plan.wallets)
            .filter(|w| *w != payer && (inst(*w) != inst(payer)) == cross)
            .collect();
        let others = if others.is_empty() {
            (0..plan.wallets).filter(|w| *w != payer).collect()
        } else {
            others
        };
        let payee = others[(payee_draw % others.len() as u64) as usize];
        let (f, amount) = if insufficient {
            // Above everything the payer could hold: the cluster's whole deposit.
            let supply = live
                .file
                .config
                .genesis
                .account_balance_fen
                .saturating_mul(plan.wallets_live)
                .saturating_add(1);
            (OpKind::Insufficient, supply)
        } else {
            (OpKind::Pay, amount)
        };
        let at = live.now_ms();
        let op = {
            let mut ops = live.ops.lock();
            let id = ops.len() as u64;
            let key = format!("{}-{id}", live.run_tag);
            let op = LiveOp {
                id,
                f,
                payer,
                payee,
                amount,
                saga: saga_of(WalletId(payer), &key),
                key,
                invoked_ms: at,
                done: None,
                last: None,
            };
            record(live, &op, OpType::Invoke, at, None);
            ops.push(op.clone());
            op
        };
        live.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(drive(live.clone(), op));
    }
}

// ----- final reads -----

/// Reads a saga's state through any node.
async fn status(live: &Live, saga: SagaId, start: usize) -> Option<gi::OperationState> {
    let n = live.ingress.len();
    for attempt in 0..2 * n {
        let mut c = live.ingress[(start + attempt) % n].clone();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.status(gi::SagaStatusRequest {
                saga_id: saga.0.to_vec().into(),
                forwarded: false,
            }),
        )
        .await;
        if let Ok(Ok(r)) = r {
            return gi::OperationState::try_from(r.into_inner().state).ok();
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// Reads the state of every operation whose completion is not final (or every operation with
/// `all`), storing it; returns the operations still pending (or unreadable).
async fn read_states(live: &Live, all: bool) -> Vec<u64> {
    let todo: Vec<(u64, SagaId)> = live
        .ops
        .lock()
        .iter()
        .filter(|o| {
            all || !matches!(o.done, Some((OpType::Ok | OpType::Fail, _, _)))
                && !matches!(
                    o.last,
                    Some(gi::OperationState::Committed | gi::OperationState::Aborted)
                )
        })
        .map(|o| (o.id, o.saga))
        .collect();
    let mut pending = Vec::new();
    for chunk in todo.chunks(READS_IN_FLIGHT) {
        let reads = join_all(
            chunk
                .iter()
                .map(|(id, saga)| async move { (*id, status(live, *saga, *id as usize).await) }),
        )
        .await;
        let mut ops = live.ops.lock();
        for (id, state) in reads {
            ops[id as usize].last = state;
            if matches!(state, None | Some(gi::OperationState::Pending)) {
                pending.push(id);
            }
        }
    }
    pending
}

/// Waits, after healing (no new operations), until every client has its answer and every
/// unknown outcome has resolved at the cluster: the time it took, or what is unfinished.
async fn settle(live: &Live, bound: Duration) -> Result<u64, String> {
    let start = Instant::now();
    let deadline = start + bound;
    while live.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let pending = read_states(live, false).await;
        let clients = live.in_flight.load(Ordering::SeqCst);
        if pending.is_empty() && clients == 0 {
            return Ok(start.elapsed().as_millis() as u64);
        }
        if Instant::now() >= deadline {
            let ops = live.ops.lock();
            let shown: Vec<String> = pending
                .iter()
                .take(3)
                .map(|id| ops[*id as usize].describe())
                .collect();
            return Err(format!(
                "{} operations still pending and {clients} clients without an answer {} s after healing, e.g. {}",
                pending.len(),
                bound.as_secs(),
                shown.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ----- checks -----

/// Collects findings, keeping the first few facts.
#[derive(Default)]
struct Facts {
    shown: Vec<String>,
    count: usize,
}

impl Facts {
    fn add(&mut self, fact: String) {
        self.count += 1;
        if self.shown.len() < 3 {
            self.shown.push(fact);
        }
    }

    fn finding(self, ok_note: String) -> Finding {
        if self.count == 0 {
            return Finding::Ok(ok_note);
        }
        let more = self.count - self.shown.len();
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        Finding::Violated(format!("{}{tail}", self.shown.join("; ")))
    }
}

fn state_name(s: Option<gi::OperationState>) -> &'static str {
    match s {
        Some(gi::OperationState::Committed) => "committed",
        Some(gi::OperationState::Aborted) => "aborted",
        Some(gi::OperationState::Pending) => "pending",
        Some(gi::OperationState::Unknown) => "unknown to every node",
        Some(gi::OperationState::Unspecified) | None => "unreadable",
    }
}

/// Every wallet's coins now against its coins at the start plus what the committed
/// operations moved; waits (within `bound`) for coins in transit to arrive.
async fn check_balances(live: &Live, initial: &BTreeMap<u64, u64>, bound: Duration) -> Finding {
    let mut expected: BTreeMap<u64, i128> =
        initial.iter().map(|(w, v)| (*w, i128::from(*v))).collect();
    let mut moved = 0usize;
    for op in live.ops.lock().iter() {
        if op.last == Some(gi::OperationState::Committed) {
            *expected.entry(op.payer).or_default() -= i128::from(op.amount);
            *expected.entry(op.payee).or_default() += i128::from(op.amount);
            moved += 1;
        }
    }
    let deadline = Instant::now() + bound;
    loop {
        let now = balances(live, expected.keys().copied().collect()).await;
        let mut facts = Facts::default();
        for (w, want) in &expected {
            match now.get(w) {
                Some(have) if i128::from(*have) == *want => {}
                Some(have) => facts.add(format!(
                    "wallet-{w} holds {have} fen, the committed operations say {want} fen (started with {} fen)",
                    initial.get(w).copied().unwrap_or(0)
                )),
                None => facts.add(format!("wallet-{w}'s balance could not be read")),
            }
        }
        if facts.count == 0 || Instant::now() >= deadline {
            return facts.finding(format!(
                "{} wallets match their start plus {moved} committed operations; aborted and refused ones moved nothing",
                expected.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The coins each wallet holds (as the client API reports them).
async fn balances(live: &Live, wallets: Vec<u64>) -> BTreeMap<u64, u64> {
    let n = live.ingress.len();
    let mut out = BTreeMap::new();
    for chunk in wallets.chunks(READS_IN_FLIGHT) {
        let reads = join_all(chunk.iter().map(|w| async move {
            for attempt in 0..2 * n {
                let mut c = live.ingress[(*w as usize + attempt) % n].clone();
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.balance(gi::WalletBalanceRequest {
                        wallet: *w,
                        forwarded: false,
                    }),
                )
                .await;
                if let Ok(Ok(r)) = r {
                    return Some((*w, r.into_inner().coins_total));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            None
        }))
        .await;
        out.extend(reads.into_iter().flatten());
    }
    out
}

/// Resubmitting each finished operation's key returns its recorded outcome and starts
/// nothing.
async fn check_idempotency(live: &Live) -> Finding {
    let finished: Vec<LiveOp> = live
        .ops
        .lock()
        .iter()
        .filter(|o| {
            matches!(
                o.last,
                Some(gi::OperationState::Committed | gi::OperationState::Aborted)
            )
        })
        .cloned()
        .collect();
    let n = live.ingress.len();
    let mut facts = Facts::default();
    for chunk in finished.chunks(READS_IN_FLIGHT) {
        let replies = join_all(chunk.iter().map(|op| async move {
            let mut c = live.ingress[(op.id as usize + 1) % n].clone();
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.submit(gi::SubmitRequest {
                    idempotency_key: op.key.clone(),
                    op: Some(op.request()),
                    wait_ms: 0,
                    forwarded: false,
                }),
            )
            .await;
            (op, r)
        }))
        .await;
        for (op, r) in replies {
            match r {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let state = gi::OperationState::try_from(r.state).ok();
                    if !r.resubmitted || r.saga_id.as_ref() != op.saga.0 || state != op.last {
                        facts.add(format!(
                            "{} resubmitted: resubmitted={}, state {} (recorded {})",
                            op.describe(),
                            r.resubmitted,
                            state_name(state),
                            state_name(op.last)
                        ));
                    }
                }
                Ok(Err(s)) => facts.add(format!("{} resubmitted: {}", op.describe(), s.message())),
                Err(_) => facts.add(format!("{} resubmitted: no answer", op.describe())),
            }
        }
    }
    facts.finding(format!(
        "{} keys resubmitted: each returned its recorded outcome",
        finished.len()
    ))
}

/// Of the honest operations invoked in `[from, to)` that completed: the share committed, the
/// p99 latency of the committed ones, and how many.
fn probe(ops: &[LiveOp], from: u64, to: u64) -> (f64, u64, usize) {
    let window: Vec<&LiveOp> = ops
        .iter()
        .filter(|o| o.f == OpKind::Pay && o.invoked_ms >= from && o.invoked_ms < to)
        .filter(|o| o.done.is_some())
        .collect();
    let mut latencies: Vec<u64> = window
        .iter()
        .filter_map(|o| match o.done {
            Some((OpType::Ok, at, _)) => Some(at - o.invoked_ms),
            _ => None,
        })
        .collect();
    latencies.sort_unstable();
    let percent = if window.is_empty() {
        100.0
    } else {
        100.0 * latencies.len() as f64 / window.len() as f64
    };
    let p99 = if latencies.is_empty() {
        0
    } else {
        latencies[(latencies.len() * 99).div_ceil(100) - 1]
    };
    (percent, p99, window.len())
}

type Probes = Vec<(&'static str, f64, u64, usize)>;

fn steady_state(live: &Live, phases: &[(&'static str, u64, u64)]) -> (Finding, Probes) {
    let h = live.plan.scenario.steady_state;
    let ops = live.ops.lock();
    let mut probes = Vec::new();
    let mut facts = Facts::default();
    for (name, label) in [("warmup", "before the faults"), ("after", "after healing")] {
        let Some((_, from, to)) = phases.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        let (percent, p99, n) = probe(&ops, *from, *to);
        probes.push((name, percent, p99, n));
        if percent < h.committed_percent_min {
            facts.add(format!(
                "{label}: {percent:.1}% of {n} honest operations committed, the hypothesis needs {:.1}%",
                h.committed_percent_min
            ));
        }
    }
    let note = probes
        .iter()
        .map(|(n, p, l, c)| format!("{n}: {p:.1}% committed of {c}, p99 {l} ms"))
        .collect::<Vec<_>>()
        .join("; ");
    (
        facts.finding(format!(
            "{note}; the p99 bound ({} ms) is reported, not enforced, against a live cluster",
            h.p99_latency_max_ms
        )),
        probes,
    )
}

/// The history's verdicts: acknowledgements, unknown outcomes, refusals.
fn check_history(live: &Live) -> Vec<(&'static str, Finding)> {
    let ops = live.ops.lock();
    let mut lost = Facts::default();
    let mut info = Facts::default();
    let mut refusals = Facts::default();
    let (mut oks, mut fails, mut infos, mut refused) = (0, 0, 0, 0);
    let mut resolved = (0, 0, 0);
    for op in ops.iter() {
        match &op.done {
            Some((OpType::Ok, at, _)) => {
                oks += 1;
                if op.last != Some(gi::OperationState::Committed) {
                    lost.add(format!(
                        "{} was acknowledged as committed at {:.3} s but is {} now",
                        op.describe(),
                        *at as f64 / 1000.0,
                        state_name(op.last)
                    ));
                }
            }
            Some((OpType::Fail, at, why)) => {
                fails += 1;
                if op.last == Some(gi::OperationState::Committed) {
                    lost.add(format!(
                        "{} failed ({}) at {:.3} s but is committed now",
                        op.describe(),
                        why.as_deref().unwrap_or("aborted"),
                        *at as f64 / 1000.0
                    ));
                }
            }
            _ => {
                infos += 1;
                match op.last {
                    Some(gi::OperationState::Committed) => resolved.0 += 1,
                    Some(gi::OperationState::Aborted) => resolved.1 += 1,
                    Some(gi::OperationState::Unknown) => resolved.2 += 1,
                    other => info.add(format!(
                        "{} is still {} after the drain",
                        op.describe(),
                        state_name(other)
                    )),
                }
            }
        }
        if op.f.must_fail() {
            refused += 1;
            if op.last == Some(gi::OperationState::Committed)
                || matches!(op.done, Some((OpType::Ok, _, _)))
            {
                refusals.add(format!(
                    "{} must be refused (above the payer's funds) but committed",
                    op.describe()
                ));
            }
        }
    }
    vec![
        (
            "refusals",
            refusals.finding(format!(
                "{refused} payments above the payer's funds, none committed"
            )),
        ),
        (
            "no_lost_acknowledgement",
            lost.finding(format!(
                "{oks} ok and {fails} fail checked against the final reads"
            )),
        ),
        (
            "info_resolved",
            info.finding(format!(
                "{infos} info resolved: {} committed, {} aborted, {} never started",
                resolved.0, resolved.1, resolved.2
            )),
        ),
    ]
}

/// Runs `specie audit --cluster` on the stopped cluster, with the acknowledged commits.
fn audit(live: &Live) -> Result<Value> {
    let acks = live.work.join("acks.txt");
    let mut text = String::new();
    for op in live.ops.lock().iter() {
        if matches!(op.done, Some((OpType::Ok, _, _))) {
            let _ = writeln!(text, "{}", op.saga);
        }
    }
    std::fs::write(&acks, text).with_context(|| format!("writing {}", acks.display()))?;
    let json = live.work.join("audit.json");
    let _ = std::fs::remove_file(&json);
    let out = Command::new(&live.exe)
        .arg("audit")
        .arg("--cluster")
        .arg(&live.cluster_path)
        .arg("--json")
        .arg(&json)
        .arg("--acks")
        .arg(&acks)
        .stdin(Stdio::null())
        .output()
        .context("running specie audit --cluster")?;
    std::fs::write(live.work.join("audit.out"), &out.stdout).ok();
    match std::fs::read_to_string(&json) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", json.display()))
        }
        Err(_) => bail!(
            "specie audit --cluster {} wrote no report: {}",
            live.cluster_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

// ----- the experiment -----

/// What the experiment produced, for the report.
struct Outcome {
    result: RunResult,
    extra: Value,
}

async fn experiment(live: Arc<Live>) -> Result<Outcome> {
    let n = live.file.nodes.len();
    let started = Instant::now();
    let ready = join_all((0..n).map(|node| {
        let live = live.clone();
        async move { wait_ready(&live, node, READY_MAX).await }
    }))
    .await;
    for r in ready {
        r?;
    }
    let genesis_s = started.elapsed().as_secs_f64();
    let leftover = heal(&live).await;
    if !leftover.is_empty() {
        bail!(
            "the admin service of node(s) {} does not answer (is the admin certificate from this cluster's CA?)",
            leftover.join(", ")
        );
    }
    let initial = balances(&live, (0..live.plan.wallets).collect()).await;
    if initial.len() as u64 != live.plan.wallets {
        bail!("could not read the starting balance of every workload wallet");
    }
    *live.funds.lock() = initial.iter().map(|(w, v)| (*w, *v as i64)).collect();
    eprintln!(
        "specie chaos: {} nodes ready in {genesis_s:.1} s; {} wallets, {} faults scheduled",
        n,
        live.plan.wallets,
        live.plan.instances.len()
    );
    let p = live.plan.scenario.phases;
    let t0 = Instant::now();
    *live.t0.lock() = Some(t0);
    let mut rng = stream_rng(live.plan.seed, Purpose::Workload, 0);
    let mut phases: Vec<(&'static str, u64, u64)> = Vec::new();
    let ms = |t: Instant| t.duration_since(t0).as_millis() as u64;

    // Warm-up and faults: the workload runs on; the schedule starts with the fault phase.
    let faults_start = t0 + live.plan.warmup();
    let faults_end = faults_start + Duration::from_millis(p.faults_ms);
    // Aborted when this future is dropped (Ctrl-C) as well as when the phase ends.
    let scheduler = AbortOnDrop(tokio::spawn(schedule_faults(live.clone(), faults_start)));
    workload(&live, &mut rng, faults_start).await;
    phases.push(("warmup", 0, ms(faults_start)));
    workload(&live, &mut rng, faults_end).await;
    drop(scheduler);
    phases.push(("faults", ms(faults_start), ms(Instant::now())));

    // Heal: clear every rule, bring back every node still down.
    eprintln!(
        "specie chaos: {:.1} s: healing: every rule cleared, every node up; converging",
        live.now_ms() as f64 / 1000.0
    );
    let unreachable = heal(&live).await;
    let down: Vec<usize> = {
        let procs = live.procs.lock();
        (0..n)
            .filter(|i| procs.as_ref().is_some_and(|p| !p.is_up(*i)))
            .collect()
    };
    for node in down {
        restart(&live, node).await;
    }
    for node in 0..n {
        wait_ready(&live, node, READY_MAX).await?;
    }
    for id in unreachable {
        live.note(format!(
            "heal: node {id}'s rules could not be cleared (they expire by themselves)"
        ));
    }
    let converge_start = Instant::now();
    let converge = settle(&live, Duration::from_millis(p.converge_max_ms)).await;
    phases.push(("converge", ms(converge_start), ms(Instant::now())));

    // After: the steady state again.
    let after_start = Instant::now();
    workload(
        &live,
        &mut rng,
        after_start + Duration::from_millis(p.after_ms),
    )
    .await;
    phases.push(("after", ms(after_start), ms(Instant::now())));
    let drain_start = Instant::now();
    let drain = settle(&live, Duration::from_millis(p.drain_max_ms)).await;
    read_states(&live, true).await;
    phases.push(("drain", ms(drain_start), ms(Instant::now())));
    let run_ms = ms(Instant::now());

    // Checks against the running cluster.
    eprintln!(
        "specie chaos: {:.1} s: drained; final reads, balances, resubmissions",
        live.now_ms() as f64 / 1000.0
    );
    let mut invariants: Vec<(&'static str, Finding)> = Vec::new();
    let balance = check_balances(&live, &initial, BALANCES_SETTLE_MAX).await;
    let idempotency = check_idempotency(&live).await;
    for node in 0..n {
        scrape(&live, node, false).await;
    }

    // Stop the cluster gracefully and audit its data.
    if !live.attach {
        eprintln!(
            "specie chaos: {:.1} s: stopping every node (SIGTERM) and auditing its journal",
            live.now_ms() as f64 / 1000.0
        );
    }
    let mut shutdown = Facts::default();
    let mut audit_doc = Value::Null;
    let audit_findings: Vec<(&'static str, Finding)> = if live.attach {
        let why = "the nodes were attached and keep running: stop them and run `specie audit --cluster FILE`";
        ["conservation", "backing", "no_double_spend", "atomicity"]
            .into_iter()
            .map(|k| (k, Finding::Skipped(why.into())))
            .collect()
    } else {
        live.stopping.store(true, Ordering::SeqCst);
        let stopped = tokio::task::block_in_place(|| {
            let mut procs = live.procs.lock();
            procs.as_mut().map(Procs::terminate_all).unwrap_or_default()
        });
        for (id, status) in &stopped {
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => shutdown.add(format!("node {id} exited with {s} on SIGTERM")),
                Err(why) => shutdown.add(format!("node {id} {why}")),
            }
        }
        match tokio::task::block_in_place(|| audit(&live)) {
            Ok(doc) => {
                let verdict = |k: &str| -> Finding {
                    match doc["invariants"][k].as_str() {
                        Some("ok") => Finding::Ok("audit of every node's journal".into()),
                        Some(v) if v.starts_with("ok") => Finding::Ok(v.to_string()),
                        Some(v) => Finding::Violated(format!(
                            "audit: {}",
                            v.strip_prefix("violated: ").unwrap_or(v)
                        )),
                        None => Finding::Skipped("the audit did not report it".into()),
                    }
                };
                let v = ["conservation", "backing", "no_double_spend", "atomicity"]
                    .into_iter()
                    .map(|k| (k, verdict(k)))
                    .collect::<Vec<_>>();
                audit_doc = doc;
                v
            }
            Err(e) => ["conservation", "backing", "no_double_spend", "atomicity"]
                .into_iter()
                .map(|k| {
                    (
                        k,
                        Finding::Violated(format!("the audit could not run: {e:#}")),
                    )
                })
                .collect(),
        }
    };
    invariants.extend(audit_findings);
    invariants.push(("balances", balance));
    let mut history_findings = check_history(&live);
    if let Some(v) = audit_doc["invariants"]["no_lost_ack"].as_str() {
        if v != "ok" {
            let v = v.strip_prefix("violated: ").unwrap_or(v);
            if let Some((_, f)) = history_findings
                .iter_mut()
                .find(|(n, _)| *n == "no_lost_acknowledgement")
            {
                *f = match f {
                    Finding::Violated(facts) => {
                        Finding::Violated(format!("{facts}; audit at the coordinators: {v}"))
                    }
                    _ => Finding::Violated(format!("audit at the coordinators: {v}")),
                };
            }
        }
    }
    invariants.extend(history_findings);
    invariants.push((
        "termination",
        match (&converge, &drain) {
            (Ok(c), Ok(d)) => Finding::Ok(format!(
                "converge {:.1} s, drain {:.1} s",
                *c as f64 / 1000.0,
                *d as f64 / 1000.0
            )),
            (Err(why), _) => Finding::Violated(format!("converge: {why}")),
            (_, Err(why)) => Finding::Violated(format!("drain: {why}")),
        },
    ));
    invariants.push(("idempotency", idempotency));
    invariants.push((
        "shutdown",
        if live.attach {
            Finding::Skipped("attached nodes are not stopped".into())
        } else {
            shutdown.finding("every node exited 0 on SIGTERM".into())
        },
    ));
    let (steady, probes) = steady_state(&live, &phases);
    invariants.push(("steady_state", steady));
    invariants.push((
        "supervision",
        Finding::Skipped(
            "actor restarts are inside the nodes (see their specie_actor_restarts_total)".into(),
        ),
    ));

    // Counters.
    let scraped = live.scraped.lock().clone();
    let sum = |name: &str, label: Option<&str>| -> u64 {
        scraped.iter().map(|s| s.total(name, label)).sum::<f64>() as u64
    };
    let mut faults_injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    for name in FaultKind::NAMES {
        let v = sum(
            "specie_fault_rule_hits_total",
            Some(&format!("fault=\"{name}\"")),
        );
        if v > 0 {
            faults_injected.insert(name, v);
        }
    }
    let kills = live.kills.load(Ordering::Relaxed);
    if kills > 0 {
        faults_injected.insert("kill", kills);
    }
    let net = NetStats {
        sent: sum("specie_envelopes_total", Some("direction=\"sent\"")),
        delivered: sum("specie_envelopes_total", Some("direction=\"received\"")),
        rejected: sum("specie_envelopes_rejected_total", None),
        undeliverable: 0,
        corrupt_dropped_by_transport: 0,
    };
    let mut restarts = BTreeMap::new();
    if kills > 0 {
        restarts.insert("node", kills);
    }
    let ops = live.ops.lock().clone();
    let warmup_ms = live.plan.scenario.phases.warmup_ms;
    let result = RunResult {
        scenario: live.plan.scenario.name.clone(),
        origin: live.plan.scenario.origin.clone(),
        seed: live.plan.seed,
        planted: live.planted.clone(),
        history: live.history.lock().clone(),
        ops: ops.len(),
        skipped: live.skipped.load(Ordering::Relaxed),
        faults: live
            .plan
            .instances
            .iter()
            .map(|f| PlacedFault {
                fault: f.clone(),
                start_ms: warmup_ms + f.start_ms,
                end_ms: warmup_ms + f.end_ms,
            })
            .collect(),
        faults_injected,
        invariants,
        violation: None,
        phases: phases.clone(),
        completions: live.completions.lock().clone(),
        sim_ms: run_ms,
        wall_s: started.elapsed().as_secs_f64(),
        net,
        restarts,
        steady: probes,
    };
    let nodes: Vec<Value> = (0..n)
        .map(|i| {
            let starts = live.procs.lock().as_ref().map_or(0, |p| p.starts[i]);
            json!({
                "id": live.node_id(i),
                "grpc": live.file.nodes[i].grpc.to_string(),
                "starts": starts,
                "fault_rules_installed": scraped[i].total("specie_fault_rules_installed_total", None),
                "fault_rules_expired": scraped[i].total("specie_fault_rules_cleared_total", Some("why=\"expired\"")),
                "fault_rules_cleared": scraped[i].total("specie_fault_rules_cleared_total", Some("why=\"cleared\"")),
            })
        })
        .collect();
    let extra = json!({
        "genesis_seconds": genesis_s,
        "nodes": nodes,
        "audit": audit_doc,
        "notes": live.notes.lock().clone(),
    });
    Ok(Outcome { result, extra })
}

// ----- the command -----

/// The note every live report carries.
const REPRODUCIBILITY: &str = "live run: the schedule is reproducible (the same seed gives the same faults at the same offsets and the same arrivals), the interleaving is not (real processes, sockets and disks decide it); the sagas' limits are the cluster file's, not the scenario's";

fn live_command(r: &RunResult, cluster: &Path, attach: bool) -> String {
    let planted = r
        .planted
        .as_ref()
        .map(|p| format!(" --planted-bug {p}"))
        .unwrap_or_default();
    format!(
        "specie chaos run {} --cluster {} --seed {}{}{planted}",
        r.origin,
        cluster.display(),
        r.seed,
        if attach { " --attach" } else { "" }
    )
}

fn summary(r: &RunResult, extra: &Value, cluster: &Path, attach: bool, plan: &Plan) -> String {
    let mut s = String::new();
    let planted = r
        .planted
        .as_deref()
        .map(|p| format!(", planted bug {p}"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "specie chaos (live) — {}, seed {}{planted}, cluster {}",
        r.scenario,
        r.seed,
        cluster.display()
    );
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    for e in r.history.entries() {
        match e.kind {
            OpType::Ok => ok += 1,
            OpType::Fail => fail += 1,
            OpType::Info => info += 1,
            OpType::Invoke => {}
        }
    }
    let _ = writeln!(
        s,
        "  run           {:.1} s of workload, {:.1} s wall with start-up and audit (nodes ready in {:.1} s)",
        r.sim_ms as f64 / 1000.0,
        r.wall_s,
        extra["genesis_seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        s,
        "  operations    {} invoked on wallets 0..{}: {ok} ok, {fail} fail, {info} info ({} arrivals found no idle wallet with funds)",
        r.ops, plan.wallets, r.skipped
    );
    if !plan.dropped.is_empty() {
        let _ = writeln!(
            s,
            "  not driven    {} (the client API cannot express them)",
            plan.dropped.join(", ")
        );
    }
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|(n, a, b)| format!("{n} {:.1}s", (b - a) as f64 / 1000.0))
        .collect();
    let _ = writeln!(s, "  phases        {}", phases.join(", "));
    let faults: Vec<String> = r
        .faults_injected
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "  faults        {} scheduled; acted on: {}",
        r.faults.len(),
        if faults.is_empty() {
            "nothing".to_string()
        } else {
            faults.join(", ")
        }
    );
    for note in extra["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  note          {}", note.as_str().unwrap_or_default());
    }
    let _ = writeln!(s, "  invariants");
    for (name, finding) in &r.invariants {
        let _ = writeln!(s, "    {name:<24} {finding}");
    }
    let _ = writeln!(
        s,
        "  history       sha256 {} (not reproducible live)",
        r.history_digest()
    );
    if r.ok() {
        let _ = writeln!(s, "  result        ok");
    } else {
        let _ = writeln!(s, "  result        FAILED: {}", r.failed().join(", "));
        let _ = writeln!(
            s,
            "  rerun         {} (same schedule; the interleaving will differ)",
            live_command(r, cluster, attach)
        );
    }
    s
}

fn live_json(r: &RunResult, extra: &Value, cluster: &Path, attach: bool, plan: &Plan) -> Value {
    let mut doc = report::json(r);
    if let Value::Object(map) = &mut doc {
        for key in ["sim_seconds", "sim_seconds_per_wall_second", "violation"] {
            map.remove(key);
        }
        map.insert("mode".into(), json!("live"));
        map.insert("note".into(), json!(REPRODUCIBILITY));
        map.insert("cluster".into(), json!(cluster.display().to_string()));
        map.insert("attached".into(), json!(attach));
        map.insert("run_seconds".into(), json!(r.sim_ms as f64 / 1000.0));
        map.insert("replay".into(), json!(live_command(r, cluster, attach)));
        map.insert(
            "workload".into(),
            json!({
                "wallets": plan.wallets,
                "rate_per_s": plan.scenario.workload.rate_per_s,
                "driven": {"pay": plan.pay_weight, "insufficient": plan.insufficient_weight},
                "not_driven": plan.dropped,
            }),
        );
        map.insert(
            "phases".into(),
            json!(r
                .phases
                .iter()
                .map(|(n, a, b)| json!({"phase": n, "start_s": *a as f64 / 1000.0, "end_s": *b as f64 / 1000.0}))
                .collect::<Vec<_>>()),
        );
        map.insert(
            "faults".into(),
            json!(plan
                .instances
                .iter()
                .map(|f| json!({
                    "id": f.id,
                    "kind": f.kind.name(),
                    "label": f.label(),
                    "start_s": (plan.scenario.phases.warmup_ms + f.start_ms) as f64 / 1000.0,
                    "end_s": (plan.scenario.phases.warmup_ms + f.end_ms) as f64 / 1000.0,
                }))
                .collect::<Vec<_>>()),
        );
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    doc
}

/// Runs `specie chaos run SCENARIO --cluster FILE`; returns whether every check held.
pub fn run(args: &RunArgs, cluster: &Path) -> Result<bool> {
    if args.seeds.is_some() {
        bail!("--seeds sweeps the simulation; against a live cluster run one --seed at a time");
    }
    let scenario = Scenario::load(&args.scenario)?;
    let file = ClusterFile::load(cluster)?;
    let seed = args.seed.unwrap_or(1);
    let plan = Plan::new(&scenario, &file, seed, args.attach)?;
    if !args.attach {
        for node in &file.nodes {
            if !node.grpc.ip().is_loopback() || !node.metrics.ip().is_loopback() {
                let address = if node.grpc.ip().is_loopback() {
                    node.metrics
                } else {
                    node.grpc
                };
                return Err(LivePlanError::NotLocal {
                    cluster: file.origin.clone(),
                    node: node.id.clone(),
                    address,
                }
                .into());
            }
        }
    }
    let planted = match args.planted_bug.as_deref() {
        None => None,
        Some(_) if args.attach => bail!(
            "--planted-bug switches the bug on in nodes the controller starts; it cannot with --attach"
        ),
        Some("early-ack") if cfg!(feature = "planted-bugs") => Some("early-ack".to_string()),
        Some("early-ack") => bail!(
            "--planted-bug needs a build with the planted bugs compiled in: cargo run --features planted-bugs -- chaos …"
        ),
        Some(other) => bail!(
            "planted bug `{other}` lives in the simulator only; against a live cluster: early-ack"
        ),
    };
    let work = match &args.work {
        Some(w) => w.clone(),
        None => PathBuf::from("chaos-live").join(format!("{}-seed-{seed}", scenario.name)),
    };
    let work = absolute(&work)?;
    let cluster_path = if args.attach {
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        cluster.to_path_buf()
    } else {
        prepare_work(
            &work,
            &file,
            cluster,
            ".specie-chaos-live",
            "specie chaos run --cluster",
        )?
    };
    let exe = std::env::current_exe().context("finding the specie binary")?;
    let ingress_tls = tls_for(&file, "client")?;
    let admin_tls = tls_for(&file, "admin")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the controller's runtime")?;
    let outcome = rt.block_on(async {
        let mut ingress = Vec::new();
        let mut admin = Vec::new();
        for node in &file.nodes {
            let addr = node.grpc.to_string();
            ingress.push(gi::IngressClient::new(
                transport::endpoint(&addr, &node.id, &ingress_tls, Duration::from_secs(2))?
                    .connect_lazy(),
            ));
            admin.push(ga::AdminClient::new(
                transport::endpoint(&addr, &node.id, &admin_tls, Duration::from_secs(2))?
                    .connect_lazy(),
            ));
        }
        let procs = if args.attach {
            None
        } else {
            let mut procs = Procs {
                exe: exe.clone(),
                config: cluster_path.clone(),
                logs: work.join("logs"),
                planted: planted.clone(),
                ids: file.nodes.iter().map(|n| n.id.clone()).collect(),
                children: file.nodes.iter().map(|_| None).collect(),
                starts: vec![0; file.nodes.len()],
            };
            for node in 0..file.nodes.len() {
                procs.start(node)?;
            }
            eprintln!(
                "specie chaos: started {} nodes from {} (logs in {})",
                file.nodes.len(),
                cluster_path.display(),
                work.join("logs").display()
            );
            Some(procs)
        };
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let live = Arc::new(Live {
            run_tag: format!("chaos-{}-{seed}-{nonce}", scenario.name),
            scraped: Mutex::new(vec![Scraped::default(); file.nodes.len()]),
            plan,
            file: file.clone(),
            cluster_path: cluster_path.clone(),
            work: work.clone(),
            exe: exe.clone(),
            attach: args.attach,
            planted: planted.clone(),
            ingress,
            admin,
            procs: Mutex::new(procs),
            t0: Mutex::new(None),
            history: Mutex::new(History::default()),
            ops: Mutex::new(Vec::new()),
            busy: Mutex::new(HashSet::new()),
            funds: Mutex::new(HashMap::new()),
            completions: Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            kills: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            notes: Mutex::new(Vec::new()),
            installed: Mutex::new(Vec::new()),
        });
        let result = tokio::select! {
            r = experiment(live.clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted by Ctrl-C")),
        };
        if result.is_err() {
            live.stopping.store(true, Ordering::SeqCst);
            // Leave nothing broken: every rule cleared, the nodes this run started stopped.
            let unreachable = heal(&live).await;
            let stopped = tokio::task::block_in_place(|| {
                live.procs.lock().as_mut().map(Procs::terminate_all)
            });
            eprintln!(
                "specie chaos: stopping: every fault rule cleared{}{}",
                if unreachable.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (unreachable: {}; their rules expire by themselves)",
                        unreachable.join(", ")
                    )
                },
                if stopped.is_some() {
                    "; the nodes this run started are stopped"
                } else {
                    ""
                }
            );
        }
        result.map(|o| (o, live))
    });
    let (outcome, live) = outcome?;
    let Outcome { result, extra } = outcome;
    print!(
        "{}",
        summary(&result, &extra, cluster, args.attach, &live.plan)
    );
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.json {
        let doc = live_json(&result, &extra, cluster, args.attach, &live.plan);
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("{}-seed-{}-live", result.scenario, result.seed);
        let html = report::html(&result)
            .replace(
                "Time runs left to right (simulated seconds).",
                &format!("Time runs left to right (wall-clock seconds of a live run against {}). The schedule is reproducible, the interleaving is not.", cluster.display()),
            )
            .replace("specie chaos — ", "specie chaos (live) — ");
        let path = dir.join(format!("{stem}.html"));
        std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join(format!("{stem}.history.jsonl"));
        std::fs::write(&path, result.history.to_jsonl())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if std::io::stderr().is_terminal() && !result.ok() {
        eprintln!(
            "specie chaos: the nodes' logs and data are in {}",
            live.work.display()
        );
    }
    Ok(result.ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = include_str!("../config/cluster-3.toml");

    fn scenario(faults: &str) -> Scenario {
        let text = format!(
            r#"
name = "t"
[cluster]
institutions = 4
wallets = 12
[workload]
rate_per_s = 10
mix = {{ pay = 8, insufficient = 1, forged = 1 }}
[phases]
warmup = "1s"
faults = "5s"
converge_max = "30s"
after = "1s"
{faults}
"#
        );
        Scenario::parse(&text, "t.toml").expect("valid scenario")
    }

    fn cluster() -> ClusterFile {
        ClusterFile::parse(CLUSTER, "cluster-3.toml").expect("valid cluster file")
    }

    #[test]
    fn a_partition_maps_onto_every_node_and_a_kill_onto_the_targets_node() {
        let s = scenario(
            r#"
[[fault]]
kind = "partition"
start = "1s"
duration = "2s"
groups = [["inst-2", "wallets-of-inst-2"], ["central-bank", "inst-0", "inst-1"]]
[[fault]]
kind = "kill"
start = "3s"
duration = "1s"
selector = { actors = ["inst-2"] }
"#,
        );
        let file = cluster();
        let plan = Plan::new(&s, &file, 1, false).expect("fits the cluster");
        assert_eq!(plan.dropped, vec!["forged"]);
        assert_eq!(plan.wallets, 12);
        let partition = &plan.instances[0];
        assert_eq!(fault_nodes(&file, partition), vec![0, 1, 2]);
        let rule = rule_of(&plan, partition).expect("a rule");
        assert_eq!(rule.duration, Duration::from_secs(2));
        match &rule.kind {
            RuleKind::Partition { groups, .. } => {
                assert_eq!(
                    groups[0],
                    vec![
                        Pattern::Actor(Address::Institution(InstitutionId(2))),
                        Pattern::WalletsOf(InstitutionId(2)),
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // inst-2 is `east`, placed on n3.
        assert_eq!(fault_nodes(&file, &plan.instances[1]), vec![2]);
        assert!(rule_of(&plan, &plan.instances[1]).is_none());
        // The same seed schedules the same faults.
        let again = Plan::new(&s, &file, 1, false).expect("fits");
        assert_eq!(again.instances, plan.instances);
        assert_ne!(rule_seed(1, 0, 0), rule_seed(1, 0, 1));
    }

    #[test]
    fn scenarios_that_do_not_fit_the_cluster_are_refused_with_the_line() {
        let file = cluster();
        let s = scenario(
            r#"
[[fault]]
kind = "clock_skew"
start = "1s"
duration = "1s"
offset = "+1s"
selector = { actors = ["inst-0"] }
"#,
        );
        let err = Plan::new(&s, &file, 1, false)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("t.toml:") && err.contains("clock_skew"),
            "{err}"
        );
        let text = r#"
name = "big"
[cluster]
institutions = 8
wallets = 12
[workload]
rate_per_s = 10
mix = { pay = 1 }
[phases]
warmup = "1s"
faults = "5s"
converge_max = "30s"
after = "1s"
[[fault]]
kind = "partition"
start = "1s"
duration = "1s"
groups = [["inst-6"], ["inst-0"]]
"#;
        let s = Scenario::parse(text, "big.toml").expect("valid");
        let err = Plan::new(&s, &file, 1, false)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("big.toml:")
                && err.contains("cluster.institutions")
                && err.contains("4 institutions"),
            "{err}"
        );
        let kill = scenario(
            r#"
[[fault]]
kind = "kill"
start = "1s"
selector = { actors = ["inst-0"] }
"#,
        );
        let err = Plan::new(&kill, &file, 1, true)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("--attach"), "{err}");
    }
}
