//! Scenario files: read in two steps, parse then validate, with errors that name the line and
//! the field.
//!
//! A scenario describes the cluster (small: a simulation is about interleavings, not volume),
//! the healthy network and journal, the sagas' limits, the workload mix and rate, the phases
//! of the experiment (warm-up, faults, heal-then-converge, after, drain), the steady-state
//! hypothesis and the fault schedule. Every fault probability defaults to zero; a fault that
//! names no selector applies to every actor.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use specie_protocol::{Address, InstitutionId, WalletId};
use std::fmt;
use std::path::Path;
use thiserror::Error;

/// A scenario could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: cannot read: {why}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        why: String,
    },
    /// Not valid TOML, or not the shape of a scenario (unknown or missing field, wrong type).
    #[error("{file}:{line}:{column}: {why}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message (it names the field).
        why: String,
    },
    /// A value is out of its allowed range or contradicts another.
    #[error("{file}:{line}: field `{field}` {why}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the field (or of its table when the field is missing).
        line: usize,
        /// Dotted path of the field, with array indices (`fault[2].percent`).
        field: String,
        /// What is wrong.
        why: String,
    },
}

/// A duration in milliseconds, written `"250ms"`, `"2s"`, `"1.5s"`, `"1m"` or as an integer
/// number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawDuration(u64);

/// A signed duration (`"+1500ms"`, `"-2s"`), for clock offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawOffset(i64);

fn parse_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (number, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = number.trim().parse().ok()?;
    v.is_finite().then_some(v * unit)
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"250ms\", \"2s\" or \"1m\" (or whole milliseconds)",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(RawDuration)
                    .map_err(|_| E::custom(format!("a duration cannot be negative, is {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                match parse_ms(v) {
                    Some(ms) if ms >= 0.0 => Ok(RawDuration(ms.round() as u64)),
                    _ => Err(E::custom(format!(
                        "`{v}` is not a duration such as \"250ms\", \"2s\" or \"1m\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawOffset;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a signed duration such as \"+1500ms\" or \"-2s\" (or milliseconds)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawOffset, E> {
                Ok(RawOffset(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOffset, E> {
                let t = v.trim();
                let (sign, rest) = match t.strip_prefix('-') {
                    Some(r) => (-1.0, r),
                    None => (1.0, t.strip_prefix('+').unwrap_or(t)),
                };
                parse_ms(rest)
                    .filter(|ms| *ms >= 0.0)
                    .map(|ms| RawOffset((sign * ms).round() as i64))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "`{v}` is not a signed duration such as \"+1500ms\""
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    cluster: RawCluster,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    supervision: RawSupervision,
    workload: RawWorkload,
    phases: RawPhases,
    #[serde(default)]
    steady_state: RawSteadyState,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    fault: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    institutions: u32,
    wallets: u64,
    account_balance_fen: Option<u64>,
    exchange_fen: Option<u64>,
    coin_denominations_fen: Option<Vec<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    latency: Option<RawDuration>,
    jitter: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    commit_latency: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    saga_timeout: Option<RawDuration>,
    retry_interval: Option<RawDuration>,
    retry_interval_max: Option<RawDuration>,
    authorization_ttl: Option<RawDuration>,
    outcome_timeout: Option<RawDuration>,
    coin_inputs_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervision {
    restart_intensity_max: Option<u32>,
    restart_window: Option<RawDuration>,
    restart_backoff: Option<RawDuration>,
    restart_backoff_max: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    rate_per_s: f64,
    amount_max_fen: Option<u64>,
    client_timeout: Option<RawDuration>,
    cross_institution_percent: Option<f64>,
    #[serde(default)]
    mix: RawMix,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    pay: Option<u32>,
    collect: Option<u32>,
    exchange: Option<u32>,
    insufficient: Option<u32>,
    double_spend: Option<u32>,
    forged: Option<u32>,
    conflict: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhases {
    warmup: RawDuration,
    faults: RawDuration,
    converge_max: RawDuration,
    after: RawDuration,
    drain_max: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteadyState {
    committed_percent_min: Option<f64>,
    p99_latency_max: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    swarm: Option<bool>,
    audit_interval: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepeat {
    every: RawDuration,
    times: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    actor_kind: Option<String>,
    ids: Option<Vec<u64>>,
    actors: Option<Vec<String>>,
    mode: Option<String>,
    value: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    start: RawDuration,
    duration: Option<RawDuration>,
    repeat: Option<RawRepeat>,
    selector: Option<RawSelector>,
    direction: Option<String>,
    latency: Option<RawDuration>,
    jitter: Option<RawDuration>,
    correlation: Option<f64>,
    percent: Option<f64>,
    gap: Option<u32>,
    groups: Option<Vec<Vec<String>>>,
    offset: Option<RawOffset>,
    stream: Option<u64>,
}

/// The cluster of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterShape {
    /// Institutions (ids `0..institutions`).
    pub institutions: u32,
    /// Wallets, spread round-robin over the institutions.
    pub wallets: u64,
    /// Each wallet's genesis deposit.
    pub account_balance_fen: u64,
    /// How much of it each wallet exchanges into coins at genesis.
    pub exchange_fen: u64,
    /// Coin denominations, largest first.
    pub coin_denominations_fen: Vec<u64>,
}

/// The healthy network: every envelope takes `latency_ms ± jitter_ms` (drawn from the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkBase {
    /// One-way latency.
    pub latency_ms: u64,
    /// Uniform jitter around it.
    pub jitter_ms: u64,
}

/// The sagas' timeouts and bounds (the runtime config's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Coordinator's lock timeout.
    pub saga_timeout_ms: u64,
    /// First retry interval after the decision.
    pub retry_interval_ms: u64,
    /// Retry backoff cap (also the redelivery tick).
    pub retry_interval_max_ms: u64,
    /// Validity of a payer's authorization.
    pub authorization_ttl_ms: u64,
    /// A wallet chases an outcome after this long.
    pub outcome_timeout_ms: u64,
    /// Most coins one payment spends.
    pub coin_inputs_max: usize,
}

/// Supervision of every simulated actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// More restarts of one actor than this within the window escalate.
    pub restart_intensity_max: u32,
    /// The intensity window.
    pub restart_window_ms: u64,
    /// First restart backoff (doubles per restart in the window).
    pub restart_backoff_ms: u64,
    /// Backoff cap.
    pub restart_backoff_max_ms: u64,
}

/// Relative weights of the operations the workload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mix {
    /// Payer-initiated payments.
    pub pay: u32,
    /// Payee-initiated payments (a merchant's collect request).
    pub collect: u32,
    /// Exchanges of account money into coins.
    pub exchange: u32,
    /// Payments far above the payer's balance (must be refused).
    pub insufficient: u32,
    /// Re-spends of coins already spent (must be refused).
    pub double_spend: u32,
    /// Authorizations signed with the wrong key (must be refused).
    pub forged: u32,
    /// Two concurrent payments spending the same coin (at most one may commit).
    pub conflict: u32,
}

impl Mix {
    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.pay
            + self.collect
            + self.exchange
            + self.insufficient
            + self.double_spend
            + self.forged
            + self.conflict
    }
}

/// The workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Operations started per simulated second (open loop, exponential inter-arrival).
    pub rate_per_s: f64,
    /// Largest honest payment.
    pub amount_max_fen: u64,
    /// A client that heard nothing this long records the operation as `info` (unknown).
    pub client_timeout_ms: u64,
    /// Share of payments whose payee banks at another institution.
    pub cross_institution_percent: f64,
    /// The operation mix.
    pub mix: Mix,
}

/// The experiment's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Workload without faults; the steady state is measured before the faults.
    pub warmup_ms: u64,
    /// Workload with the fault schedule (fault start times count from here).
    pub faults_ms: u64,
    /// After healing, no new operations: every saga must end within this bound.
    pub converge_max_ms: u64,
    /// Workload without faults again; the steady state is measured after healing.
    pub after_ms: u64,
    /// No new operations; the cluster must go quiet within this bound before the final reads.
    pub drain_max_ms: u64,
}

/// The steady-state hypothesis: probes with tolerances, checked over the warm-up (before the
/// faults; the experiment is aborted if it does not hold) and over the after phase (a
/// deviation is a finding). The audit's invariants are always part of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SteadyState {
    /// Of the honest operations that completed in the window, at least this share committed.
    pub committed_percent_min: f64,
    /// The 99th percentile latency of committed operations in the window is at most this.
    pub p99_latency_max_ms: u64,
}

/// Direction of a network fault relative to its selected actors (Chaos Mesh terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Envelopes sent to the selected actors (partition: from group 0 to the others).
    To,
    /// Envelopes sent by the selected actors (partition: from the others to group 0).
    From,
    /// Both.
    Both,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::To => "to",
            Direction::From => "from",
            Direction::Both => "both",
        }
    }
}

/// A member of a partition group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// One actor (`central-bank`, `inst-0`, `wallet-3`).
    Actor(Address),
    /// Every institution (`institutions`).
    Institutions,
    /// Every wallet (`wallets`).
    Wallets,
    /// The wallets of one institution (`wallets-of-inst-1`).
    WalletsOf(InstitutionId),
}

impl Member {
    fn parse(s: &str) -> Option<Member> {
        match s {
            "central-bank" => return Some(Member::Actor(Address::CentralBank)),
            "institutions" => return Some(Member::Institutions),
            "wallets" => return Some(Member::Wallets),
            _ => {}
        }
        if let Some(n) = s.strip_prefix("wallets-of-inst-") {
            return n.parse().ok().map(|i| Member::WalletsOf(InstitutionId(i)));
        }
        if let Some(n) = s.strip_prefix("inst-") {
            return n
                .parse()
                .ok()
                .map(|i| Member::Actor(Address::Institution(InstitutionId(i))));
        }
        if let Some(n) = s.strip_prefix("wallet-") {
            return n
                .parse()
                .ok()
                .map(|w| Member::Actor(Address::Wallet(WalletId(w))));
        }
        None
    }

    /// The name in a scenario file.
    pub fn name(&self) -> String {
        match self {
            Member::Actor(a) => a.to_string(),
            Member::Institutions => "institutions".into(),
            Member::Wallets => "wallets".into(),
            Member::WalletsOf(i) => format!("wallets-of-{i}"),
        }
    }

    /// Whether `a` belongs, in a cluster whose wallets bank round-robin at `institutions`.
    pub fn contains(&self, a: Address, institutions: u32) -> bool {
        match (self, a) {
            (Member::Actor(m), a) => *m == a,
            (Member::Institutions, Address::Institution(_)) => true,
            (Member::Wallets, Address::Wallet(_)) => true,
            (Member::WalletsOf(i), Address::Wallet(w)) => {
                w.0 % u64::from(institutions) == u64::from(i.0)
            }
            _ => false,
        }
    }
}

/// Kinds of actor a selector picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// Every actor.
    Any,
    /// The central bank.
    CentralBank,
    /// Institutions.
    Institution,
    /// Wallets.
    Wallet,
}

impl ActorKind {
    fn name(self) -> &'static str {
        match self {
            ActorKind::Any => "any",
            ActorKind::CentralBank => "central_bank",
            ActorKind::Institution => "institution",
            ActorKind::Wallet => "wallet",
        }
    }
}

/// How many of the candidates a selector picks (Chaos Mesh `mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One at random.
    One,
    /// All of them.
    All,
    /// This many at random.
    Fixed(u64),
    /// This share at random (at least one).
    Percent(f64),
}

/// Which actors a fault hits: candidates (a kind, optionally narrowed to ids, or explicit
/// actors) and how many of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every actor (no selector given).
    Everyone,
    /// Candidates of a kind.
    Kind {
        /// The kind.
        kind: ActorKind,
        /// Only these ids of it.
        ids: Option<Vec<u64>>,
        /// How many of them.
        mode: Mode,
    },
    /// Exactly these actors (what `shrink` writes).
    Actors(Vec<Address>),
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Extra latency on matching envelopes: `latency ± jitter`, the jitter correlated with the
    /// previous one by `correlation` percent (tc-netem `delay`).
    Delay {
        /// Added latency.
        latency_ms: u64,
        /// Uniform jitter.
        jitter_ms: u64,
        /// Correlation of successive jitter draws, percent.
        correlation: f64,
    },
    /// Matching envelopes dropped with `percent` probability (tc-netem `loss`).
    Loss {
        /// Probability, percent.
        percent: f64,
        /// Correlation with the previous decision, percent (bursts).
        correlation: f64,
    },
    /// Matching envelopes delivered twice (tc-netem `duplicate`).
    Duplicate {
        /// Probability, percent.
        percent: f64,
    },
    /// Matching envelopes overtake those sent before them (tc-netem `reorder`): `percent` of
    /// them, at most one in every `gap`, skip the network latency.
    Reorder {
        /// Probability, percent.
        percent: f64,
        /// At most one reordered envelope per this many.
        gap: u32,
    },
    /// Matching envelopes get a bit flipped (tc-netem `corrupt`).
    Corrupt {
        /// Probability, percent.
        percent: f64,
    },
    /// Envelopes between groups are dropped (`both`), or only from group 0 to the others
    /// (`to`), or only from the others to group 0 (`from`). Actors in no group are unaffected.
    Partition {
        /// The groups.
        groups: Vec<Vec<Member>>,
        /// Which way.
        direction: Direction,
    },
    /// The selected actors crash at the start; each restarts from its journal after its
    /// supervisor's backoff, or at the end of `duration` if that is later (an outage).
    Kill,
    /// The selected actors handle nothing for `duration`; their mail and timers wait.
    Pause,
    /// The selected actors' clocks read `offset` away from true time.
    ClockSkew {
        /// The offset.
        offset_ms: i64,
    },
    /// Journal commits of the selected actors fail with `percent` probability; the actor
    /// crashes and loses what was not durable.
    FsyncError {
        /// Probability, percent.
        percent: f64,
    },
    /// Journal commits of the selected actors take `latency` longer.
    WriteDelay {
        /// Added commit latency.
        latency_ms: u64,
    },
}

impl FaultKind {
    /// The fault's name in scenario files and reports.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Delay { .. } => "delay",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Duplicate { .. } => "duplicate",
            FaultKind::Reorder { .. } => "reorder",
            FaultKind::Corrupt { .. } => "corrupt",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::ClockSkew { .. } => "clock_skew",
            FaultKind::FsyncError { .. } => "fsync_error",
            FaultKind::WriteDelay { .. } => "write_delay",
        }
    }

    /// Every fault name, in report order.
    pub const NAMES: [&'static str; 11] = [
        "delay",
        "loss",
        "duplicate",
        "reorder",
        "corrupt",
        "partition",
        "kill",
        "pause",
        "clock_skew",
        "fsync_error",
        "write_delay",
    ];

    /// Whether it acts on envelopes (and takes a `direction`).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            FaultKind::Delay { .. }
                | FaultKind::Loss { .. }
                | FaultKind::Duplicate { .. }
                | FaultKind::Reorder { .. }
                | FaultKind::Corrupt { .. }
        )
    }

    /// The probability parameter, when it has one.
    pub fn percent(&self) -> Option<f64> {
        match self {
            FaultKind::Loss { percent, .. }
            | FaultKind::Duplicate { percent }
            | FaultKind::Reorder { percent, .. }
            | FaultKind::Corrupt { percent }
            | FaultKind::FsyncError { percent } => Some(*percent),
            _ => None,
        }
    }

    /// The same fault with its probability replaced.
    pub fn with_percent(&self, p: f64) -> FaultKind {
        let mut k = self.clone();
        match &mut k {
            FaultKind::Loss { percent, .. }
            | FaultKind::Duplicate { percent }
            | FaultKind::Reorder { percent, .. }
            | FaultKind::Corrupt { percent }
            | FaultKind::FsyncError { percent } => *percent = p,
            _ => {}
        }
        k
    }
}

/// Repetition of a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// Start again this long after the previous start.
    pub every_ms: u64,
    /// Occurrences in all (`None`: until the fault phase ends).
    pub times: Option<u32>,
}

/// One entry of the fault schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// What it does.
    pub kind: FaultKind,
    /// When it starts, from the start of the fault phase.
    pub start_ms: u64,
    /// How long it lasts (clamped to the end of the fault phase).
    pub duration_ms: u64,
    /// Repetition.
    pub repeat: Option<Repeat>,
    /// Which actors.
    pub selector: Selector,
    /// Direction for network faults.
    pub direction: Direction,
    /// The random stream of the fault's own decisions: by default its position in the file;
    /// `shrink` writes it so that a minimal scenario replays the same decisions.
    pub stream: u64,
    /// Line in the scenario file (0 when built in code).
    pub line: usize,
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Where it came from (for messages and replay commands).
    pub origin: String,
    /// Name.
    pub name: String,
    /// What it tests.
    pub description: String,
    /// The cluster.
    pub cluster: ClusterShape,
    /// The healthy network.
    pub network: NetworkBase,
    /// Journal commit latency of a healthy disk.
    pub journal_commit_ms: u64,
    /// The sagas' limits.
    pub limits: Limits,
    /// Supervision.
    pub supervision: Supervision,
    /// The workload.
    pub workload: Workload,
    /// The phases.
    pub phases: Phases,
    /// The steady-state hypothesis.
    pub steady_state: SteadyState,
    /// Swarm testing: each seed drops some faults and scales the probabilities of the rest.
    pub swarm: bool,
    /// How often the audit runs during the experiment (non-quiescent, by recorded decisions).
    pub audit_interval_ms: u64,
    /// The fault schedule.
    pub faults: Vec<FaultSpec>,
}

/// Most wallets a simulated cluster may have: simulation explores interleavings, not volume.
pub const WALLETS_MAX: u64 = 10_000;
/// Most institutions.
pub const INSTITUTIONS_MAX: u32 = 64;
/// Most faults in a schedule (after expanding repeats).
pub const FAULT_INSTANCES_MAX: usize = 10_000;
/// Longest phase.
pub const PHASE_MS_MAX: u64 = 3_600_000;
/// Highest workload rate.
pub const RATE_PER_S_MAX: f64 = 10_000.0;

/// One step of a field path.
#[derive(Debug, Clone)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A field path for messages and for finding the line.
#[derive(Debug, Clone, Default)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn key(&self, k: &'static str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k));
        p
    }

    fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Finds the line of a field: the deepest part of the path present in the file.
fn locate(text: &str, path: &FieldPath) -> usize {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return 1;
    };
    let mut best = 1;
    let mut item: &toml_edit::Item = doc.as_item();
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => {
                let Some(table) = item.as_table_like() else {
                    break;
                };
                let Some((key, value)) = table.get_key_value(k) else {
                    break;
                };
                if let Some(span) = key.span() {
                    best = line_of(text, span.start).0;
                }
                value
            }
            Seg::Index(i) => match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    let Some(t) = a.get(*i) else { break };
                    if let Some(span) = t.span() {
                        best = line_of(text, span.start).0;
                    }
                    // Arrays of tables are top-level here (`[[fault]]`): the rest of the
                    // path is inside this table.
                    return locate_in_table(text, t, path, best);
                }
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                    let Some(v) = a.get(*i) else { break };
                    if let Some(span) = v.span() {
                        best = line_of(text, span.start).0;
                    }
                    break;
                }
                _ => break,
            },
        };
        item = next;
    }
    best
}

/// Continues [`locate`] inside the table of an array of tables (path `[key, index, ...]`).
fn locate_in_table(
    text: &str,
    table: &toml_edit::Table,
    path: &FieldPath,
    mut best: usize,
) -> usize {
    let mut current: Option<&dyn toml_edit::TableLike> = Some(table);
    for seg in path.0.iter().skip(2) {
        let Seg::Key(k) = seg else {
            break;
        };
        let Some(t) = current else { break };
        let Some((key, value)) = t.get_key_value(k) else {
            break;
        };
        if let Some(span) = key.span() {
            best = line_of(text, span.start).0;
        }
        current = value.as_table_like();
    }
    best
}

/// Validation context: the file, its text, and a way to build errors.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &FieldPath, why: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            line: locate(self.text, path),
            field: path.to_string(),
            why: why.into(),
        }
    }
}

fn percent(ctx: &Ctx<'_>, path: &FieldPath, v: Option<f64>) -> Result<f64, ScenarioError> {
    let v = v.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&v) || !v.is_finite() {
        return Err(ctx.err(path, format!("is a percentage from 0 to 100, is {v}")));
    }
    Ok(v)
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
            file: file.clone(),
            why: e.to_string(),
        })?;
        Scenario::parse(&text, &file)
    }

    /// Parses and validates scenario text; `origin` names it in errors and replay commands.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_of(text, s.start));
            ScenarioError::Parse {
                file: origin.to_string(),
                line,
                column,
                why: e.message().trim_end().to_string(),
            }
        })?;
        validate(raw, &Ctx { file: origin, text })
    }

    /// The scenario as TOML (what `shrink` writes); parsing it gives this scenario back.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let q = |v: &str| toml_quote(v);
        s.push_str(&format!("name = {}\n", q(&self.name)));
        s.push_str(&format!("description = {}\n\n", q(&self.description)));
        let c = &self.cluster;
        s.push_str("[cluster]\n");
        s.push_str(&format!(
            "institutions = {}\nwallets = {}\n",
            c.institutions, c.wallets
        ));
        s.push_str(&format!(
            "account_balance_fen = {}\nexchange_fen = {}\ncoin_denominations_fen = {:?}\n\n",
            c.account_balance_fen, c.exchange_fen, c.coin_denominations_fen
        ));
        s.push_str(&format!(
            "[network]\nlatency = \"{}ms\"\njitter = \"{}ms\"\n\n",
            self.network.latency_ms, self.network.jitter_ms
        ));
        s.push_str(&format!(
            "[journal]\ncommit_latency = \"{}ms\"\n\n",
            self.journal_commit_ms
        ));
        let l = &self.limits;
        s.push_str(&format!(
            "[limits]\nsaga_timeout = \"{}ms\"\nretry_interval = \"{}ms\"\nretry_interval_max = \"{}ms\"\nauthorization_ttl = \"{}ms\"\noutcome_timeout = \"{}ms\"\ncoin_inputs_max = {}\n\n",
            l.saga_timeout_ms, l.retry_interval_ms, l.retry_interval_max_ms, l.authorization_ttl_ms, l.outcome_timeout_ms, l.coin_inputs_max
        ));
        let v = &self.supervision;
        s.push_str(&format!(
            "[supervision]\nrestart_intensity_max = {}\nrestart_window = \"{}ms\"\nrestart_backoff = \"{}ms\"\nrestart_backoff_max = \"{}ms\"\n\n",
            v.restart_intensity_max, v.restart_window_ms, v.restart_backoff_ms, v.restart_backoff_max_ms
        ));
        let w = &self.workload;
        let m = &w.mix;
        s.push_str(&format!(
            "[workload]\nrate_per_s = {:?}\namount_max_fen = {}\nclient_timeout = \"{}ms\"\ncross_institution_percent = {:?}\nmix = {{ pay = {}, collect = {}, exchange = {}, insufficient = {}, double_spend = {}, forged = {}, conflict = {} }}\n\n",
            w.rate_per_s, w.amount_max_fen, w.client_timeout_ms, w.cross_institution_percent,
            m.pay, m.collect, m.exchange, m.insufficient, m.double_spend, m.forged, m.conflict
        ));
        let p = &self.phases;
        s.push_str(&format!(
            "[phases]\nwarmup = \"{}ms\"\nfaults = \"{}ms\"\nconverge_max = \"{}ms\"\nafter = \"{}ms\"\ndrain_max = \"{}ms\"\n\n",
            p.warmup_ms, p.faults_ms, p.converge_max_ms, p.after_ms, p.drain_max_ms
        ));
        s.push_str(&format!(
            "[steady_state]\ncommitted_percent_min = {:?}\np99_latency_max = \"{}ms\"\n\n",
            self.steady_state.committed_percent_min, self.steady_state.p99_latency_max_ms
        ));
        s.push_str(&format!(
            "[schedule]\nswarm = {}\naudit_interval = \"{}ms\"\n",
            self.swarm, self.audit_interval_ms
        ));
        for f in &self.faults {
            s.push('\n');
            s.push_str(&fault_toml(f));
        }
        s
    }
}

fn toml_quote(v: &str) -> String {
    let mut out = String::from("\"");
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fault_toml(f: &FaultSpec) -> String {
    let mut s = String::from("[[fault]]\n");
    s.push_str(&format!("kind = \"{}\"\n", f.kind.name()));
    s.push_str(&format!("start = \"{}ms\"\n", f.start_ms));
    s.push_str(&format!("duration = \"{}ms\"\n", f.duration_ms));
    if let Some(r) = f.repeat {
        match r.times {
            Some(t) => s.push_str(&format!(
                "repeat = {{ every = \"{}ms\", times = {t} }}\n",
                r.every_ms
            )),
            None => s.push_str(&format!("repeat = {{ every = \"{}ms\" }}\n", r.every_ms)),
        }
    }
    match &f.kind {
        FaultKind::Delay {
            latency_ms,
            jitter_ms,
            correlation,
        } => s.push_str(&format!(
            "latency = \"{latency_ms}ms\"\njitter = \"{jitter_ms}ms\"\ncorrelation = {correlation:?}\n"
        )),
        FaultKind::Loss { percent, correlation } => {
            s.push_str(&format!("percent = {percent:?}\ncorrelation = {correlation:?}\n"))
        }
        FaultKind::Duplicate { percent } | FaultKind::Corrupt { percent } | FaultKind::FsyncError { percent } => {
            s.push_str(&format!("percent = {percent:?}\n"))
        }
        FaultKind::Reorder { percent, gap } => s.push_str(&format!("percent = {percent:?}\ngap = {gap}\n")),
        FaultKind::Partition { groups, direction } => {
            let groups: Vec<String> = groups
                .iter()
                .map(|g| format!("[{}]", g.iter().map(|m| toml_quote(&m.name())).collect::<Vec<_>>().join(", ")))
                .collect();
            s.push_str(&format!("groups = [{}]\ndirection = \"{}\"\n", groups.join(", "), direction.name()));
        }
        FaultKind::Kill | FaultKind::Pause => {}
        FaultKind::ClockSkew { offset_ms } => s.push_str(&format!("offset = \"{offset_ms:+}ms\"\n")),
        FaultKind::WriteDelay { latency_ms } => s.push_str(&format!("latency = \"{latency_ms}ms\"\n")),
    }
    if f.kind.is_network() && f.direction != Direction::Both {
        s.push_str(&format!("direction = \"{}\"\n", f.direction.name()));
    }
    match &f.selector {
        Selector::Everyone => {}
        Selector::Actors(actors) => s.push_str(&format!(
            "selector = {{ actors = [{}] }}\n",
            actors
                .iter()
                .map(|a| toml_quote(&a.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Selector::Kind { kind, ids, mode } => {
            let mut parts = vec![format!("actor_kind = \"{}\"", kind.name())];
            if let Some(ids) = ids {
                parts.push(format!("ids = {ids:?}"));
            }
            let (mode, value) = match mode {
                Mode::One => ("one", None),
                Mode::All => ("all", None),
                Mode::Fixed(n) => ("fixed", Some(format!("{n}"))),
                Mode::Percent(p) => ("percent", Some(format!("{p:?}"))),
            };
            parts.push(format!("mode = \"{mode}\""));
            if let Some(v) = value {
                parts.push(format!("value = {v}"));
            }
            s.push_str(&format!("selector = {{ {} }}\n", parts.join(", ")));
        }
    }
    s.push_str(&format!("stream = {}\n", f.stream));
    s
}

fn validate(raw: RawScenario, ctx: &Ctx<'_>) -> Result<Scenario, ScenarioError> {
    let root = FieldPath::default();
    let c = &raw.cluster;
    let cp = root.key("cluster");
    if c.institutions == 0 || c.institutions > INSTITUTIONS_MAX {
        return Err(ctx.err(
            &cp.key("institutions"),
            format!("must be 1 to {INSTITUTIONS_MAX}, is {}", c.institutions),
        ));
    }
    if c.wallets < 2 || c.wallets > WALLETS_MAX {
        return Err(ctx.err(
            &cp.key("wallets"),
            format!("must be 2 to {WALLETS_MAX}, is {}", c.wallets),
        ));
    }
    let account_balance_fen = c.account_balance_fen.unwrap_or(100_000);
    let exchange_fen = c.exchange_fen.unwrap_or(60_000);
    if account_balance_fen == 0 || account_balance_fen > u64::MAX / 4 / c.wallets {
        return Err(ctx.err(
            &cp.key("account_balance_fen"),
            format!("must be positive and fit the money supply, is {account_balance_fen}"),
        ));
    }
    if exchange_fen > account_balance_fen {
        return Err(ctx.err(
            &cp.key("exchange_fen"),
            format!("({exchange_fen}) cannot exceed cluster.account_balance_fen ({account_balance_fen})"),
        ));
    }
    let coin_denominations_fen = c
        .coin_denominations_fen
        .clone()
        .unwrap_or_else(|| vec![20_000, 10_000, 5_000, 2_000, 1_000, 500, 100]);
    if coin_denominations_fen.is_empty()
        || coin_denominations_fen.contains(&0)
        || coin_denominations_fen.windows(2).any(|w| w[0] <= w[1])
    {
        return Err(ctx.err(
            &cp.key("coin_denominations_fen"),
            "must be positive and strictly decreasing",
        ));
    }

    let np = root.key("network");
    let network = NetworkBase {
        latency_ms: raw.network.latency.map_or(2, |d| d.0),
        jitter_ms: raw.network.jitter.map_or(1, |d| d.0),
    };
    if network.jitter_ms > network.latency_ms {
        return Err(ctx.err(
            &np.key("jitter"),
            format!(
                "({} ms) cannot exceed network.latency ({} ms)",
                network.jitter_ms, network.latency_ms
            ),
        ));
    }
    let journal_commit_ms = raw.journal.commit_latency.map_or(1, |d| d.0);
    if journal_commit_ms > 60_000 {
        return Err(ctx.err(
            &root.key("journal").key("commit_latency"),
            "must be at most 60 s",
        ));
    }

    let lp = root.key("limits");
    let l = &raw.limits;
    let limits = Limits {
        saga_timeout_ms: l.saga_timeout.map_or(2_000, |d| d.0),
        retry_interval_ms: l.retry_interval.map_or(200, |d| d.0),
        retry_interval_max_ms: l.retry_interval_max.map_or(2_000, |d| d.0),
        authorization_ttl_ms: l.authorization_ttl.map_or(10_000, |d| d.0),
        outcome_timeout_ms: l.outcome_timeout.map_or(3_000, |d| d.0),
        coin_inputs_max: l.coin_inputs_max.unwrap_or(16),
    };
    for (key, v) in [
        ("saga_timeout", limits.saga_timeout_ms),
        ("retry_interval", limits.retry_interval_ms),
        ("authorization_ttl", limits.authorization_ttl_ms),
        ("outcome_timeout", limits.outcome_timeout_ms),
    ] {
        if v == 0 {
            return Err(ctx.err(&lp.key(key), "must be positive"));
        }
    }
    if limits.retry_interval_max_ms < limits.retry_interval_ms {
        return Err(ctx.err(
            &lp.key("retry_interval_max"),
            "cannot be below limits.retry_interval",
        ));
    }
    if limits.authorization_ttl_ms <= limits.saga_timeout_ms {
        return Err(ctx.err(
            &lp.key("authorization_ttl"),
            "must exceed limits.saga_timeout",
        ));
    }
    let inputs_max = specie_protocol::pay::AUTHORIZATION_COINS_MAX;
    if limits.coin_inputs_max == 0 || limits.coin_inputs_max > inputs_max {
        return Err(ctx.err(
            &lp.key("coin_inputs_max"),
            format!("must be 1 to {inputs_max}, is {}", limits.coin_inputs_max),
        ));
    }

    let sp = root.key("supervision");
    let v = &raw.supervision;
    let supervision = Supervision {
        restart_intensity_max: v.restart_intensity_max.unwrap_or(10),
        restart_window_ms: v.restart_window.map_or(5_000, |d| d.0),
        restart_backoff_ms: v.restart_backoff.map_or(10, |d| d.0),
        restart_backoff_max_ms: v.restart_backoff_max.map_or(1_000, |d| d.0),
    };
    if supervision.restart_intensity_max == 0 {
        return Err(ctx.err(&sp.key("restart_intensity_max"), "must be positive"));
    }
    if supervision.restart_window_ms == 0 {
        return Err(ctx.err(&sp.key("restart_window"), "must be positive"));
    }
    if supervision.restart_backoff_max_ms < supervision.restart_backoff_ms {
        return Err(ctx.err(
            &sp.key("restart_backoff_max"),
            "cannot be below supervision.restart_backoff",
        ));
    }

    let wp = root.key("workload");
    let w = &raw.workload;
    if !(w.rate_per_s > 0.0 && w.rate_per_s <= RATE_PER_S_MAX) {
        return Err(ctx.err(
            &wp.key("rate_per_s"),
            format!(
                "must be above 0 and at most {RATE_PER_S_MAX}, is {}",
                w.rate_per_s
            ),
        ));
    }
    let m = &w.mix;
    let mix = Mix {
        pay: m.pay.unwrap_or(0),
        collect: m.collect.unwrap_or(0),
        exchange: m.exchange.unwrap_or(0),
        insufficient: m.insufficient.unwrap_or(0),
        double_spend: m.double_spend.unwrap_or(0),
        forged: m.forged.unwrap_or(0),
        conflict: m.conflict.unwrap_or(0),
    };
    if mix.total() == 0 {
        return Err(ctx.err(&wp.key("mix"), "needs at least one positive weight (pay, collect, exchange, insufficient, double_spend, forged, conflict)"));
    }
    if mix.conflict > 0 && c.institutions < 2 {
        return Err(ctx.err(
            &wp.key("mix").key("conflict"),
            "needs at least 2 institutions (the conflicting payments are coordinated elsewhere)",
        ));
    }
    let workload = Workload {
        rate_per_s: w.rate_per_s,
        amount_max_fen: w.amount_max_fen.unwrap_or(20_000),
        client_timeout_ms: w.client_timeout.map_or(15_000, |d| d.0),
        cross_institution_percent: percent(
            ctx,
            &wp.key("cross_institution_percent"),
            Some(w.cross_institution_percent.unwrap_or(75.0)),
        )?,
        mix,
    };
    if workload.amount_max_fen == 0 {
        return Err(ctx.err(&wp.key("amount_max_fen"), "must be positive"));
    }
    if workload.client_timeout_ms == 0 {
        return Err(ctx.err(&wp.key("client_timeout"), "must be positive"));
    }

    let pp = root.key("phases");
    let p = &raw.phases;
    // Once the faults stop, a payment whose request was lost can take until its
    // authorization expires, plus the lock timeout, plus a chase, to end: the bound must
    // leave room for that.
    let settle_ms =
        limits.authorization_ttl_ms + limits.saga_timeout_ms + 2 * limits.outcome_timeout_ms;
    let phases = Phases {
        warmup_ms: p.warmup.0,
        faults_ms: p.faults.0,
        converge_max_ms: p.converge_max.0,
        after_ms: p.after.0,
        drain_max_ms: p.drain_max.map_or(p.converge_max.0, |d| d.0),
    };
    for (key, v) in [
        ("warmup", phases.warmup_ms),
        ("faults", phases.faults_ms),
        ("converge_max", phases.converge_max_ms),
        ("after", phases.after_ms),
        ("drain_max", phases.drain_max_ms),
    ] {
        if v > PHASE_MS_MAX {
            return Err(ctx.err(
                &pp.key(key),
                format!("must be at most {} s", PHASE_MS_MAX / 1000),
            ));
        }
    }
    if phases.faults_ms == 0 {
        return Err(ctx.err(&pp.key("faults"), "must be positive"));
    }
    for (key, v) in [
        ("converge_max", phases.converge_max_ms),
        ("drain_max", phases.drain_max_ms),
    ] {
        if v < settle_ms {
            return Err(ctx.err(
                &pp.key(key),
                format!(
                    "({v} ms) must be at least authorization_ttl + saga_timeout + 2 × outcome_timeout = {settle_ms} ms, the longest a healthy saga may take to end"
                ),
            ));
        }
    }

    let hp = root.key("steady_state");
    let steady_state = SteadyState {
        committed_percent_min: percent(
            ctx,
            &hp.key("committed_percent_min"),
            raw.steady_state.committed_percent_min,
        )?,
        p99_latency_max_ms: raw.steady_state.p99_latency_max.map_or(60_000, |d| d.0),
    };
    let audit_interval_ms = raw.schedule.audit_interval.map_or(1_000, |d| d.0);
    if audit_interval_ms == 0 {
        return Err(ctx.err(
            &root.key("schedule").key("audit_interval"),
            "must be positive",
        ));
    }

    let mut faults = Vec::with_capacity(raw.fault.len());
    let mut instances = 0usize;
    for (i, f) in raw.fault.iter().enumerate() {
        let fp = root.key("fault").index(i);
        let spec = validate_fault(f, i, &fp, ctx, c.institutions, c.wallets, &phases)?;
        instances += spec.repeat.map_or(1, |r| {
            let fit = (phases.faults_ms.saturating_sub(spec.start_ms)) / r.every_ms.max(1) + 1;
            r.times.map_or(fit, |t| u64::from(t).min(fit)) as usize
        });
        if instances > FAULT_INSTANCES_MAX {
            return Err(ctx.err(
                &fp.key("repeat"),
                format!("the schedule expands to more than {FAULT_INSTANCES_MAX} faults"),
            ));
        }
        faults.push(spec);
    }

    Ok(Scenario {
        origin: ctx.file.to_string(),
        name: raw.name.unwrap_or_else(|| ctx.file.to_string()),
        description: raw.description.unwrap_or_default(),
        cluster: ClusterShape {
            institutions: c.institutions,
            wallets: c.wallets,
            account_balance_fen,
            exchange_fen,
            coin_denominations_fen,
        },
        network,
        journal_commit_ms,
        limits,
        supervision,
        workload,
        phases,
        steady_state,
        swarm: raw.schedule.swarm.unwrap_or(false),
        audit_interval_ms,
        faults,
    })
}

fn validate_fault(
    f: &RawFault,
    index: usize,
    fp: &FieldPath,
    ctx: &Ctx<'_>,
    institutions: u32,
    wallets: u64,
    phases: &Phases,
) -> Result<FaultSpec, ScenarioError> {
    let has = |name: &'static str| -> bool {
        match name {
            "latency" => f.latency.is_some(),
            "jitter" => f.jitter.is_some(),
            "correlation" => f.correlation.is_some(),
            "percent" => f.percent.is_some(),
            "gap" => f.gap.is_some(),
            "groups" => f.groups.is_some(),
            "offset" => f.offset.is_some(),
            "direction" => f.direction.is_some(),
            "selector" => f.selector.is_some(),
            _ => false,
        }
    };
    let allowed: &[&'static str] = match f.kind.as_str() {
        "delay" => &["latency", "jitter", "correlation", "direction", "selector"],
        "loss" => &["percent", "correlation", "direction", "selector"],
        "duplicate" | "corrupt" => &["percent", "direction", "selector"],
        "reorder" => &["percent", "gap", "direction", "selector"],
        "partition" => &["groups", "direction"],
        "kill" | "pause" => &["selector"],
        "clock_skew" => &["offset", "selector"],
        "fsync_error" => &["percent", "selector"],
        "write_delay" => &["latency", "selector"],
        other => {
            return Err(ctx.err(
                &fp.key("kind"),
                format!(
                    "`{other}` is not a fault; one of {}",
                    FaultKind::NAMES.join(", ")
                ),
            ))
        }
    };
    for name in [
        "latency",
        "jitter",
        "correlation",
        "percent",
        "gap",
        "groups",
        "offset",
        "direction",
        "selector",
    ] {
        if has(name) && !allowed.contains(&name) {
            let key: &'static str = name;
            return Err(ctx.err(
                &fp.key(key),
                format!("does not apply to a `{}` fault", f.kind),
            ));
        }
    }
    let corr = |v: Option<f64>| percent(ctx, &fp.key("correlation"), v);
    let pct = |v: Option<f64>| percent(ctx, &fp.key("percent"), v);
    let direction = match f.direction.as_deref() {
        None | Some("both") => Direction::Both,
        Some("to") => Direction::To,
        Some("from") => Direction::From,
        Some(other) => {
            return Err(ctx.err(
                &fp.key("direction"),
                format!("must be \"to\", \"from\" or \"both\", is \"{other}\""),
            ))
        }
    };
    let kind = match f.kind.as_str() {
        "delay" => {
            let Some(latency) = f.latency else {
                return Err(ctx.err(&fp.key("latency"), "is required for a `delay` fault"));
            };
            let jitter_ms = f.jitter.map_or(0, |d| d.0);
            FaultKind::Delay {
                latency_ms: latency.0,
                jitter_ms,
                correlation: corr(f.correlation)?,
            }
        }
        "loss" => FaultKind::Loss {
            percent: pct(f.percent)?,
            correlation: corr(f.correlation)?,
        },
        "duplicate" => FaultKind::Duplicate {
            percent: pct(f.percent)?,
        },
        "corrupt" => FaultKind::Corrupt {
            percent: pct(f.percent)?,
        },
        "reorder" => {
            let gap = f.gap.unwrap_or(1);
            if gap == 0 {
                return Err(ctx.err(&fp.key("gap"), "must be at least 1"));
            }
            FaultKind::Reorder {
                percent: pct(f.percent)?,
                gap,
            }
        }
        "partition" => {
            let Some(raw_groups) = &f.groups else {
                return Err(ctx.err(
                    &fp.key("groups"),
                    "is required for a `partition` fault: at least two lists of actors",
                ));
            };
            if raw_groups.len() < 2 {
                return Err(ctx.err(
                    &fp.key("groups"),
                    format!("needs at least two groups, has {}", raw_groups.len()),
                ));
            }
            let mut groups = Vec::new();
            for g in raw_groups {
                let mut members = Vec::new();
                for name in g {
                    let member = Member::parse(name).ok_or_else(|| {
                        ctx.err(
                            &fp.key("groups"),
                            format!("`{name}` is not an actor: use central-bank, inst-N, wallet-N, institutions, wallets or wallets-of-inst-N"),
                        )
                    })?;
                    check_member(&member, institutions, wallets)
                        .map_err(|why| ctx.err(&fp.key("groups"), why))?;
                    members.push(member);
                }
                if members.is_empty() {
                    return Err(ctx.err(&fp.key("groups"), "a group cannot be empty"));
                }
                groups.push(members);
            }
            FaultKind::Partition { groups, direction }
        }
        "kill" => FaultKind::Kill,
        "pause" => FaultKind::Pause,
        "clock_skew" => {
            let Some(offset) = f.offset else {
                return Err(ctx.err(&fp.key("offset"), "is required for a `clock_skew` fault"));
            };
            FaultKind::ClockSkew {
                offset_ms: offset.0,
            }
        }
        "fsync_error" => FaultKind::FsyncError {
            percent: pct(f.percent)?,
        },
        "write_delay" => {
            let Some(latency) = f.latency else {
                return Err(ctx.err(&fp.key("latency"), "is required for a `write_delay` fault"));
            };
            FaultKind::WriteDelay {
                latency_ms: latency.0,
            }
        }
        _ => unreachable!("checked above"),
    };
    let duration_ms = f.duration.map_or(0, |d| d.0);
    let needs_duration = !matches!(kind, FaultKind::Kill);
    if needs_duration && duration_ms == 0 {
        return Err(ctx.err(
            &fp.key("duration"),
            format!("is required (and positive) for a `{}` fault", f.kind),
        ));
    }
    if f.start.0 >= phases.faults_ms {
        return Err(ctx.err(
            &fp.key("start"),
            format!(
                "({} ms) must fall inside the fault phase (phases.faults = {} ms)",
                f.start.0, phases.faults_ms
            ),
        ));
    }
    let repeat = match &f.repeat {
        None => None,
        Some(r) => {
            if r.every.0 == 0 {
                return Err(ctx.err(&fp.key("repeat").key("every"), "must be positive"));
            }
            if r.times == Some(0) {
                return Err(ctx.err(&fp.key("repeat").key("times"), "must be at least 1"));
            }
            Some(Repeat {
                every_ms: r.every.0,
                times: r.times,
            })
        }
    };
    let selector = match &f.selector {
        None => Selector::Everyone,
        Some(s) => validate_selector(s, &fp.key("selector"), ctx, institutions, wallets)?,
    };
    if matches!(kind, FaultKind::Kill | FaultKind::Pause) && selector == Selector::Everyone {
        return Err(ctx.err(
            &fp.key("selector"),
            format!("is required for a `{}` fault (which actors?)", f.kind),
        ));
    }
    Ok(FaultSpec {
        kind,
        start_ms: f.start.0,
        duration_ms,
        repeat,
        selector,
        direction,
        stream: f.stream.unwrap_or(index as u64),
        line: locate(ctx.text, &fp.key("kind")),
    })
}

fn check_member(m: &Member, institutions: u32, wallets: u64) -> Result<(), String> {
    match m {
        Member::Actor(Address::Institution(i)) | Member::WalletsOf(i) if i.0 >= institutions => {
            Err(format!(
                "{i} does not exist: the cluster has {institutions} institutions"
            ))
        }
        Member::Actor(Address::Wallet(w)) if w.0 >= wallets => Err(format!(
            "{w} does not exist: the cluster has {wallets} wallets"
        )),
        _ => Ok(()),
    }
}

fn validate_selector(
    s: &RawSelector,
    sp: &FieldPath,
    ctx: &Ctx<'_>,
    institutions: u32,
    wallets: u64,
) -> Result<Selector, ScenarioError> {
    if let Some(actors) = &s.actors {
        if s.actor_kind.is_some() || s.ids.is_some() || s.mode.is_some() || s.value.is_some() {
            return Err(ctx.err(
                &sp.key("actors"),
                "names exact actors: leave out actor_kind, ids, mode and value",
            ));
        }
        let mut out = Vec::new();
        for name in actors {
            match Member::parse(name) {
                Some(m @ Member::Actor(a)) => {
                    check_member(&m, institutions, wallets)
                        .map_err(|why| ctx.err(&sp.key("actors"), why))?;
                    out.push(a);
                }
                _ => {
                    return Err(ctx.err(
                        &sp.key("actors"),
                        format!("`{name}` is not one actor (central-bank, inst-N, wallet-N)"),
                    ))
                }
            }
        }
        if out.is_empty() {
            return Err(ctx.err(&sp.key("actors"), "cannot be empty"));
        }
        return Ok(Selector::Actors(out));
    }
    let kind = match s.actor_kind.as_deref() {
        None | Some("any") => ActorKind::Any,
        Some("central_bank") => ActorKind::CentralBank,
        Some("institution") => ActorKind::Institution,
        Some("wallet") => ActorKind::Wallet,
        Some(other) => {
            return Err(ctx.err(
                &sp.key("actor_kind"),
                format!(
                "must be \"institution\", \"wallet\", \"central_bank\" or \"any\", is \"{other}\""
            ),
            ))
        }
    };
    if let Some(ids) = &s.ids {
        let count = match kind {
            ActorKind::Institution => u64::from(institutions),
            ActorKind::Wallet => wallets,
            _ => {
                return Err(ctx.err(
                    &sp.key("ids"),
                    "needs actor_kind \"institution\" or \"wallet\"",
                ))
            }
        };
        if let Some(bad) = ids.iter().find(|id| **id >= count) {
            return Err(ctx.err(
                &sp.key("ids"),
                format!(
                    "id {bad} does not exist: there are {count} {}s",
                    kind.name()
                ),
            ));
        }
        if ids.is_empty() {
            return Err(ctx.err(&sp.key("ids"), "cannot be empty"));
        }
    }
    let mode = match s.mode.as_deref() {
        None | Some("all") => Mode::All,
        Some("one") => Mode::One,
        Some("fixed") => {
            let v = s.value.unwrap_or(0.0);
            if v < 1.0 || v.fract() != 0.0 {
                return Err(ctx.err(
                    &sp.key("value"),
                    format!("mode \"fixed\" needs a whole number of actors of at least 1, is {v}"),
                ));
            }
            Mode::Fixed(v as u64)
        }
        Some("percent") => {
            let v = s.value.unwrap_or(0.0);
            if !(v > 0.0 && v <= 100.0) {
                return Err(ctx.err(
                    &sp.key("value"),
                    format!("mode \"percent\" needs a percentage above 0 and at most 100, is {v}"),
                ));
            }
            Mode::Percent(v)
        }
        Some(other) => {
            return Err(ctx.err(
                &sp.key("mode"),
                format!("must be \"one\", \"all\", \"fixed\" or \"percent\", is \"{other}\""),
            ))
        }
    };
    if s.value.is_some() && matches!(mode, Mode::One | Mode::All) {
        return Err(ctx.err(
            &sp.key("value"),
            "applies only to mode \"fixed\" or \"percent\"",
        ));
    }
    Ok(Selector::Kind {
        kind,
        ids: s.ids.clone(),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[cluster]
institutions = 2
wallets = 4

[workload]
rate_per_s = 10
mix = { pay = 1 }

[phases]
warmup = "1s"
faults = "5s"
converge_max = "30s"
after = "1s"

[[fault]]
kind = "loss"
start = "1s"
duration = "2s"
percent = 10
"#;

    #[test]
    fn durations_read_as_milliseconds() {
        assert_eq!(parse_ms("250ms"), Some(250.0));
        assert_eq!(parse_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_ms("2m"), Some(120_000.0));
        assert_eq!(parse_ms("soon"), None);
    }

    #[test]
    fn a_minimal_scenario_takes_the_defaults_and_round_trips() {
        let s = Scenario::parse(MINIMAL, "m.toml").expect("valid");
        assert_eq!(s.faults.len(), 1);
        assert_eq!(
            s.faults[0].kind,
            FaultKind::Loss {
                percent: 10.0,
                correlation: 0.0
            }
        );
        assert_eq!(s.faults[0].line, 17);
        assert_eq!(s.limits.saga_timeout_ms, 2_000);
        let again = Scenario::parse(&s.to_toml(), "m.toml").expect("rendered scenario is valid");
        let strip = |v: &[FaultSpec]| {
            v.iter()
                .map(|f| FaultSpec {
                    line: 0,
                    ..f.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again.faults), strip(&s.faults));
        assert_eq!(again.workload, s.workload);
        assert_eq!(again.phases, s.phases);
    }

    #[test]
    fn a_probability_out_of_range_names_its_line_and_field() {
        let text = MINIMAL.replace("percent = 10", "percent = 120");
        let err = Scenario::parse(&text, "m.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:20: field `fault[0].percent` is a percentage from 0 to 100, is 120"
        );
    }
}
