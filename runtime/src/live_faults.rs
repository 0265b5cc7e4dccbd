//! Live fault rules: the chaos vocabulary (delay, loss, duplicate, reorder, corrupt,
//! partition, pause, write delay) injected into a running node, through its network's fault
//! hook and its journal.
//!
//! A rule is installed (by the admin service, see [`crate::admin`]) with a duration; the node
//! clears it by itself when the duration ends, so a controller that vanished never leaves a
//! cluster broken. Rules are expressed over addresses — actors and groups of actors named as
//! in scenario files (`inst-0`, `wallets-of-inst-0`, `central-bank`) — so a partition between
//! two groups, installed on every node, cuts the same envelopes the simulator's does: each
//! node judges the envelopes its own actors send, wherever the receiver lives.
//!
//! Each rule draws its random decisions from its own stream, seeded by the controller: the
//! same seed decides the same way for the same sequence of envelopes (the sequence itself is
//! up to the live cluster's interleaving).
//!
//! Every install, clear and expiry is logged to stderr and counted:
//! `specie_fault_rules_installed_total{fault}`, `specie_fault_rules_cleared_total{why}`
//! (`cleared` on request, `expired` by the node), the gauge `specie_fault_rules_active`, and
//! what the rules did to envelopes in `specie_fault_rule_hits_total{fault}`.

use crate::network::{Delivery, FaultHook};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_protocol::{Address, Envelope, InstitutionId, WalletId};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;

/// The longest a rule may last: a node never keeps a fault longer than this.
pub const RULE_DURATION_MAX: Duration = Duration::from_secs(600);
/// The most rules a node holds at once.
pub const RULES_MAX: usize = 256;
/// The longest latency a delay, reorder hold or write delay may add.
pub const LATENCY_MAX_MS: u64 = 60_000;

/// A rule could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LiveFaultError {
    /// A field of the rule is out of range or names something that does not exist.
    #[error("fault rule field `{field}` {why}")]
    Invalid {
        /// The field (`duration_ms`, `targets`, `loss.percent`, …).
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The node holds [`RULES_MAX`] rules already.
    #[error("{0} fault rules are in force already, the most a node holds; clear some first")]
    TooMany(usize),
    /// A write delay needs the node's journal, which is not attached.
    #[error("this node has no journal attached to delay (write_delay)")]
    NoJournal,
}

fn invalid(field: &'static str, why: impl Into<String>) -> LiveFaultError {
    LiveFaultError::Invalid {
        field,
        why: why.into(),
    }
}

/// A set of actors, named as in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// One actor: `central-bank`, `inst-0`, `wallet-3`.
    Actor(Address),
    /// Every institution: `institutions`.
    Institutions,
    /// Every wallet: `wallets`.
    Wallets,
    /// The customers of one institution: `wallets-of-inst-1`.
    WalletsOf(InstitutionId),
}

impl Pattern {
    /// Parses a scenario-file name (`central-bank`, `inst-N`, `wallet-N`, `institutions`,
    /// `wallets`, `wallets-of-inst-N`).
    pub fn parse(name: &str) -> Option<Pattern> {
        match name {
            "central-bank" => return Some(Pattern::Actor(Address::CentralBank)),
            "institutions" => return Some(Pattern::Institutions),
            "wallets" => return Some(Pattern::Wallets),
            _ => {}
        }
        if let Some(n) = name.strip_prefix("wallets-of-inst-") {
            return n.parse().ok().map(|i| Pattern::WalletsOf(InstitutionId(i)));
        }
        if let Some(n) = name.strip_prefix("inst-") {
            return n
                .parse()
                .ok()
                .map(|i| Pattern::Actor(Address::Institution(InstitutionId(i))));
        }
        if let Some(n) = name.strip_prefix("wallet-") {
            return n
                .parse()
                .ok()
                .map(|w| Pattern::Actor(Address::Wallet(WalletId(w))));
        }
        None
    }

    /// The name in scenario files (what [`Pattern::parse`] reads).
    pub fn name(&self) -> String {
        match self {
            Pattern::Actor(a) => a.to_string(),
            Pattern::Institutions => "institutions".into(),
            Pattern::Wallets => "wallets".into(),
            Pattern::WalletsOf(i) => format!("wallets-of-{i}"),
        }
    }

    /// Whether `a` belongs, in a cluster whose wallets bank round-robin at `institutions`
    /// institutions (wallet `w` at institution `w % institutions`).
    pub fn contains(&self, a: Address, institutions: u32) -> bool {
        match (self, a) {
            (Pattern::Actor(m), a) => *m == a,
            (Pattern::Institutions, Address::Institution(_)) => true,
            (Pattern::Wallets, Address::Wallet(_)) => true,
            (Pattern::WalletsOf(i), Address::Wallet(w)) => {
                institutions > 0 && w.0 % u64::from(institutions) == u64::from(i.0)
            }
            _ => false,
        }
    }

    /// Why it names nothing in a cluster of `institutions` institutions, if it does not.
    fn check(&self, institutions: u32) -> Result<(), String> {
        match self {
            Pattern::Actor(Address::Institution(i)) | Pattern::WalletsOf(i)
                if i.0 >= institutions =>
            {
                Err(format!(
                    "name {i}, which does not exist: this cluster has {institutions} institutions (inst-0 to inst-{})",
                    institutions.saturating_sub(1)
                ))
            }
            Pattern::Actor(Address::External(_) | Address::Escrow(_) | Address::Reconciler(_)) => {
                Err(format!("name {}, which a fault rule cannot target", self.name()))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Which envelopes a network rule applies to, relative to its targets (Chaos Mesh terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Sent to a target (partition: from group 0 to the others).
    To,
    /// Sent by a target (partition: from the others to group 0).
    From,
    /// Either.
    #[default]
    Both,
}

impl Direction {
    /// `to`, `from` or `both`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::To => "to",
            Direction::From => "from",
            Direction::Both => "both",
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Extra latency `latency ± jitter`, successive jitter draws correlated by `correlation`
    /// percent (tc-netem `delay`).
    Delay {
        /// Added latency.
        latency_ms: u64,
        /// Uniform jitter around it.
        jitter_ms: u64,
        /// Correlation of successive jitter draws, percent.
        correlation: f64,
    },
    /// Envelopes dropped with `percent` probability (tc-netem `loss`).
    Loss {
        /// Probability, percent.
        percent: f64,
        /// Correlation with the previous decision, percent (bursts).
        correlation: f64,
    },
    /// Envelopes delivered twice.
    Duplicate {
        /// Probability, percent.
        percent: f64,
    },
    /// Envelopes held `hold_ms`, except `percent` of them (at most one per `gap`), which go at
    /// once and overtake the held ones.
    Reorder {
        /// Probability, percent.
        percent: f64,
        /// At most one reordered envelope per this many.
        gap: u32,
        /// How long the others are held.
        hold_ms: u64,
    },
    /// A bit flipped in `percent` of the envelopes (receivers reject them; a flip that still
    /// decodes into another valid envelope is dropped, as the transport's integrity check
    /// would).
    Corrupt {
        /// Probability, percent.
        percent: f64,
    },
    /// Envelopes between groups dropped: every direction (`Both`), only from group 0 to the
    /// others (`To`), only from the others to group 0 (`From`).
    Partition {
        /// The groups (at least two).
        groups: Vec<Vec<Pattern>>,
        /// Which way.
        direction: Direction,
    },
    /// Envelopes to and from the targets are held until the rule's scheduled end.
    Pause,
    /// This node's journal commits take `latency_ms` longer.
    WriteDelay {
        /// Added commit latency.
        latency_ms: u64,
    },
}

impl RuleKind {
    /// The fault's name, as in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Delay { .. } => "delay",
            RuleKind::Loss { .. } => "loss",
            RuleKind::Duplicate { .. } => "duplicate",
            RuleKind::Reorder { .. } => "reorder",
            RuleKind::Corrupt { .. } => "corrupt",
            RuleKind::Partition { .. } => "partition",
            RuleKind::Pause => "pause",
            RuleKind::WriteDelay { .. } => "write_delay",
        }
    }
}

/// A rule as installed: what it does, to which envelopes, for how long, with which seed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// What it does.
    pub kind: RuleKind,
    /// The actors a network rule or pause applies to; `None`: every envelope. Partitions
    /// name their groups instead, and write delays act on the journal.
    pub targets: Option<Vec<Pattern>>,
    /// Which envelopes of the targets (network rules).
    pub direction: Direction,
    /// How long it lasts before the node clears it.
    pub duration: Duration,
    /// Seed of its random decisions.
    pub seed: u64,
    /// Free text naming it in logs and listings.
    pub label: String,
}

fn check_percent(field: &'static str, v: f64) -> Result<(), LiveFaultError> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("is a percentage from 0 to 100, is {v}"),
        ))
    }
}

fn check_latency(field: &'static str, ms: u64) -> Result<(), LiveFaultError> {
    if ms <= LATENCY_MAX_MS {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be at most {LATENCY_MAX_MS} ms, is {ms} ms"),
        ))
    }
}

impl RuleSpec {
    /// Checks every field, for a cluster of `institutions` institutions.
    pub fn validate(&self, institutions: u32) -> Result<(), LiveFaultError> {
        if self.duration.is_zero() || self.duration > RULE_DURATION_MAX {
            return Err(invalid(
                "duration_ms",
                format!(
                    "must be 1 to {} ms (every rule ends by itself), is {} ms",
                    RULE_DURATION_MAX.as_millis(),
                    self.duration.as_millis()
                ),
            ));
        }
        if let Some(targets) = &self.targets {
            if targets.is_empty() {
                return Err(invalid(
                    "targets",
                    "is empty; leave it out to mean every envelope",
                ));
            }
            for t in targets {
                t.check(institutions)
                    .map_err(|why| invalid("targets", why))?;
            }
        }
        match &self.kind {
            RuleKind::Delay {
                latency_ms,
                jitter_ms,
                correlation,
            } => {
                check_latency("delay.latency_ms", *latency_ms)?;
                check_latency("delay.jitter_ms", *jitter_ms)?;
                check_percent("delay.correlation", *correlation)?;
            }
            RuleKind::Loss {
                percent,
                correlation,
            } => {
                check_percent("loss.percent", *percent)?;
                check_percent("loss.correlation", *correlation)?;
            }
            RuleKind::Duplicate { percent } => check_percent("duplicate.percent", *percent)?,
            RuleKind::Corrupt { percent } => check_percent("corrupt.percent", *percent)?,
            RuleKind::Reorder {
                percent,
                gap,
                hold_ms,
            } => {
                check_percent("reorder.percent", *percent)?;
                if *gap == 0 {
                    return Err(invalid("reorder.gap", "must be at least 1"));
                }
                check_latency("reorder.hold_ms", *hold_ms)?;
            }
            RuleKind::Partition { groups, .. } => {
                if groups.len() < 2 {
                    return Err(invalid(
                        "partition.groups",
                        format!("needs at least two groups, has {}", groups.len()),
                    ));
                }
                for g in groups {
                    if g.is_empty() {
                        return Err(invalid("partition.groups", "a group cannot be empty"));
                    }
                    for m in g {
                        m.check(institutions)
                            .map_err(|why| invalid("partition.groups", why))?;
                    }
                }
            }
            RuleKind::Pause => {
                if self.targets.is_none() {
                    return Err(invalid(
                        "targets",
                        "is required for a pause (which actors?)",
                    ));
                }
            }
            RuleKind::WriteDelay { latency_ms } => {
                check_latency("write_delay.latency_ms", *latency_ms)?
            }
        }
        Ok(())
    }

    /// What it does, for people: `loss 20% (to inst-0) for 3000 ms`.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            RuleKind::Delay {
                latency_ms,
                jitter_ms,
                ..
            } => format!("delay {latency_ms}±{jitter_ms} ms"),
            RuleKind::Loss { percent, .. } => format!("loss {percent}%"),
            RuleKind::Duplicate { percent } => format!("duplicate {percent}%"),
            RuleKind::Reorder {
                percent, hold_ms, ..
            } => format!("reorder {percent}% (others held {hold_ms} ms)"),
            RuleKind::Corrupt { percent } => format!("corrupt {percent}%"),
            RuleKind::Partition { groups, direction } => format!(
                "partition {} ({})",
                groups
                    .iter()
                    .map(|g| g.iter().map(Pattern::name).collect::<Vec<_>>().join("+"))
                    .collect::<Vec<_>>()
                    .join(" | "),
                direction.name()
            ),
            RuleKind::Pause => "pause".into(),
            RuleKind::WriteDelay { latency_ms } => format!("write_delay {latency_ms} ms"),
        };
        let whom = match (&self.kind, &self.targets) {
            (RuleKind::Partition { .. } | RuleKind::WriteDelay { .. }, _) => String::new(),
            (_, None) => " (every envelope)".into(),
            (RuleKind::Pause, Some(t)) => format!(" ({})", names(t)),
            (_, Some(t)) => format!(" ({} {})", self.direction.name(), names(t)),
        };
        format!("{what}{whom} for {} ms", self.duration.as_millis())
    }

    /// Whether a network rule applies to an envelope from `from` to `to`.
    fn matches(&self, from: Address, to: Address, institutions: u32) -> bool {
        let Some(targets) = &self.targets else {
            return true;
        };
        let hit = |a: Address| targets.iter().any(|t| t.contains(a, institutions));
        match self.direction {
            Direction::To => hit(to),
            Direction::From => hit(from),
            Direction::Both => hit(to) || hit(from),
        }
    }
}

fn names(t: &[Pattern]) -> String {
    if t.len() <= 4 {
        t.iter().map(Pattern::name).collect::<Vec<_>>().join(", ")
    } else {
        format!("{} actors", t.len())
    }
}

/// A rule in force, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo {
    /// Its id on this node.
    pub id: u64,
    /// The rule.
    pub spec: RuleSpec,
    /// Time left before the node clears it.
    pub remaining: Duration,
    /// Envelopes (or commits) it acted on so far.
    pub injected: u64,
}

/// The random state of one fault: its seeded stream and what correlated draws remember. The
/// simulator (`specie-chaos`) and live nodes both decide with it, so a fault with the same
/// seed decides the same way in both.
#[derive(Debug, Clone)]
pub struct FaultDice {
    /// The fault's own random stream.
    pub rng: ChaCha8Rng,
    last_decision: bool,
    last_draw: f64,
    /// Envelopes since the last one reordered (`reorder`'s gap).
    pub since_reorder: u32,
}

impl FaultDice {
    /// Dice over `rng`; `first_draw` is what the first correlated draw leans towards.
    pub fn new(rng: ChaCha8Rng, first_draw: f64) -> FaultDice {
        FaultDice {
            rng,
            last_decision: false,
            last_draw: first_draw,
            since_reorder: 0,
        }
    }

    /// A decision with `percent` probability, repeating the previous one with `correlation`
    /// percent probability (bursts), so that the long-run rate stays `percent`.
    pub fn decide(&mut self, percent: f64, correlation: f64) -> bool {
        let fresh = self.rng.gen::<f64>() * 100.0 < percent;
        let repeat = correlation > 0.0 && self.rng.gen::<f64>() * 100.0 < correlation;
        let d = if repeat { self.last_decision } else { fresh };
        self.last_decision = d;
        d
    }

    /// A draw in [0, 100) correlated with the previous one by `correlation` percent.
    pub fn draw(&mut self, correlation: f64) -> f64 {
        let fresh: f64 = self.rng.gen::<f64>() * 100.0;
        let c = correlation / 100.0;
        let v = c * self.last_draw + (1.0 - c) * fresh;
        self.last_draw = v;
        v
    }

    /// An uncorrelated decision with `percent` probability.
    pub fn chance(&mut self, percent: f64) -> bool {
        self.rng.gen::<f64>() * 100.0 < percent
    }
}

struct Active {
    id: u64,
    spec: RuleSpec,
    expires: Instant,
    state: Mutex<FaultDice>,
    injected: AtomicU64,
}

impl Active {
    fn hit(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("specie_fault_rule_hits_total", "fault" => self.spec.kind.name())
            .increment(1);
    }
}

/// Where a write delay goes: the node's journal (see `RedbJournal::set_commit_delay`).
pub type JournalDelaySink = Arc<dyn Fn(Duration) + Send + Sync>;

/// Why a rule ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Cleared,
    Expired,
}

impl Why {
    fn name(self) -> &'static str {
        match self {
            Why::Cleared => "cleared",
            Why::Expired => "expired",
        }
    }
}

/// The live fault rules of one node: its network's fault hook, and its journal's delay.
pub struct LiveFaults {
    node: String,
    institutions: u32,
    rules: RwLock<Vec<Arc<Active>>>,
    /// Rules in force (the hook's fast path when zero).
    count: AtomicUsize,
    next_id: AtomicU64,
    journal: RwLock<Option<JournalDelaySink>>,
    changed: Notify,
}

impl fmt::Debug for LiveFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveFaults")
            .field("node", &self.node)
            .field("rules", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl LiveFaults {
    /// No rules yet, for node `node` of a cluster with `institutions` institutions (wallets
    /// bank round-robin, as the cluster's blueprint places them).
    pub fn new(node: impl Into<String>, institutions: u32) -> LiveFaults {
        metrics::gauge!("specie_fault_rules_active").set(0.0);
        LiveFaults {
            node: node.into(),
            institutions,
            rules: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            journal: RwLock::new(None),
            changed: Notify::new(),
        }
    }

    /// The node these rules belong to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Attaches the node's journal, for write delays.
    pub fn attach_journal(&self, sink: JournalDelaySink) {
        *self.journal.write() = Some(sink);
    }

    /// Installs a rule (`by` names who asked, for the log); returns its id.
    pub fn install(&self, spec: RuleSpec, by: &str) -> Result<u64, LiveFaultError> {
        spec.validate(self.institutions)?;
        if matches!(spec.kind, RuleKind::WriteDelay { .. }) && self.journal.read().is_none() {
            return Err(LiveFaultError::NoJournal);
        }
        let id = {
            let mut rules = self.rules.write();
            if rules.len() >= RULES_MAX {
                return Err(LiveFaultError::TooMany(rules.len()));
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "specie node {}: fault rule {id} installed by {by}: {}{}",
                self.node,
                spec.describe(),
                label(&spec)
            );
            metrics::counter!("specie_fault_rules_installed_total", "fault" => spec.kind.name())
                .increment(1);
            rules.push(Arc::new(Active {
                id,
                expires: Instant::now() + spec.duration,
                state: Mutex::new(FaultDice::new(ChaCha8Rng::seed_from_u64(spec.seed), 50.0)),
                spec,
                injected: AtomicU64::new(0),
            }));
            self.count.store(rules.len(), Ordering::Release);
            id
        };
        self.after_change();
        Ok(id)
    }

    /// Clears the rules named (or every rule with `None`); returns how many were cleared.
    pub fn clear(&self, ids: Option<&[u64]>, by: &str) -> usize {
        let removed = self.remove(|r| ids.is_none_or(|ids| ids.contains(&r.id)));
        for r in &removed {
            self.log_end(r, Why::Cleared, by);
        }
        if !removed.is_empty() {
            self.after_change();
        }
        removed.len()
    }

    /// Clears every rule whose time is up; returns how many.
    pub fn expire_due(&self) -> usize {
        let now = Instant::now();
        let removed = self.remove(|r| r.expires <= now);
        for r in &removed {
            self.log_end(r, Why::Expired, "the node");
        }
        if !removed.is_empty() {
            self.after_change();
        }
        removed.len()
    }

    /// The rules in force, oldest first.
    pub fn list(&self) -> Vec<RuleInfo> {
        let now = Instant::now();
        self.rules
            .read()
            .iter()
            .map(|r| RuleInfo {
                id: r.id,
                spec: r.spec.clone(),
                remaining: r.expires.saturating_duration_since(now),
                injected: r.injected.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Clears rules as they expire, for as long as the process runs (spawn it on the node's
    /// tokio runtime). Expired rules stop acting at once in any case; this task is what logs,
    /// counts and forgets them.
    pub async fn expire_forever(self: Arc<Self>) {
        loop {
            let next = self.rules.read().iter().map(|r| r.expires).min();
            let sleep = next.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.changed.notified() => {}
            }
            self.expire_due();
        }
    }

    fn remove(&self, pick: impl Fn(&Active) -> bool) -> Vec<Arc<Active>> {
        let mut rules = self.rules.write();
        let (gone, kept): (Vec<_>, Vec<_>) = rules.drain(..).partition(|r| pick(r));
        *rules = kept;
        self.count.store(rules.len(), Ordering::Release);
        gone
    }

    fn log_end(&self, r: &Active, why: Why, by: &str) {
        eprintln!(
            "specie node {}: fault rule {} {} by {by} after {} hits: {}{}",
            self.node,
            r.id,
            why.name(),
            r.injected.load(Ordering::Relaxed),
            r.spec.describe(),
            label(&r.spec)
        );
        metrics::counter!("specie_fault_rules_cleared_total", "why" => why.name()).increment(1);
    }

    /// Updates the gauge and the journal delay, and wakes the expiry task.
    fn after_change(&self) {
        let rules = self.rules.read();
        metrics::gauge!("specie_fault_rules_active").set(rules.len() as f64);
        let delay = rules
            .iter()
            .filter_map(|r| match r.spec.kind {
                RuleKind::WriteDelay { latency_ms } => Some(latency_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        drop(rules);
        if let Some(sink) = self.journal.read().clone() {
            sink(Duration::from_millis(delay));
        }
        self.changed.notify_one();
    }

    /// The latest end of a pause covering `from` or `to`, if any.
    fn paused_until(
        &self,
        rules: &[Arc<Active>],
        from: Address,
        to: Address,
        now: Instant,
    ) -> Option<Instant> {
        rules
            .iter()
            .filter(|r| r.expires > now && r.spec.kind == RuleKind::Pause)
            .filter(|r| {
                r.spec.targets.as_ref().is_some_and(|t| {
                    t.iter().any(|p| {
                        p.contains(from, self.institutions) || p.contains(to, self.institutions)
                    })
                })
            })
            .inspect(|r| r.hit())
            .map(|r| r.expires)
            .max()
    }
}

fn label(spec: &RuleSpec) -> String {
    if spec.label.is_empty() {
        String::new()
    } else {
        format!(" [{}]", spec.label)
    }
}

fn group_of(groups: &[Vec<Pattern>], a: Address, institutions: u32) -> Option<usize> {
    groups
        .iter()
        .position(|g| g.iter().any(|m| m.contains(a, institutions)))
}

impl FaultHook for LiveFaults {
    fn on_send(&self, from: Address, to: Address, bytes: Bytes, out: &mut Vec<Delivery>) {
        if self.count.load(Ordering::Acquire) == 0 {
            out.push(Delivery {
                after: Duration::ZERO,
                bytes,
            });
            return;
        }
        let rules = self.rules.read().clone();
        let now = Instant::now();
        let live = |r: &&Arc<Active>| r.expires > now;
        let n = self.institutions;
        // Partitions.
        for r in rules.iter().filter(live) {
            if let RuleKind::Partition { groups, direction } = &r.spec.kind {
                let (Some(gf), Some(gt)) = (group_of(groups, from, n), group_of(groups, to, n))
                else {
                    continue;
                };
                let blocked = gf != gt
                    && match direction {
                        Direction::Both => true,
                        Direction::To => gf == 0,
                        Direction::From => gt == 0,
                    };
                if blocked {
                    r.hit();
                    return;
                }
            }
        }
        // Loss, then duplication.
        let mut copies = 1;
        for r in rules.iter().filter(live) {
            if !r.spec.matches(from, to, n) {
                continue;
            }
            match r.spec.kind {
                RuleKind::Loss {
                    percent,
                    correlation,
                } if r.state.lock().decide(percent, correlation) => {
                    r.hit();
                    return;
                }
                RuleKind::Duplicate { percent } if r.state.lock().chance(percent) => {
                    r.hit();
                    copies = 2;
                }
                _ => {}
            }
        }
        let paused = self.paused_until(&rules, from, to, now);
        for _ in 0..copies {
            let mut delay = Duration::ZERO;
            let mut held = Duration::ZERO;
            let mut reordered = false;
            let mut corrupted = false;
            let mut b = bytes.clone();
            for r in rules.iter().filter(live) {
                if !r.spec.matches(from, to, n) {
                    continue;
                }
                match r.spec.kind {
                    RuleKind::Delay {
                        latency_ms,
                        jitter_ms,
                        correlation,
                    } => {
                        let jitter = if jitter_ms > 0 {
                            let v = r.state.lock().draw(correlation) / 100.0;
                            (v * 2.0 - 1.0) * jitter_ms as f64
                        } else {
                            0.0
                        };
                        let ms = (latency_ms as f64 + jitter).max(0.0);
                        delay += Duration::from_micros((ms * 1000.0).round() as u64);
                        r.hit();
                    }
                    RuleKind::Reorder {
                        percent,
                        gap,
                        hold_ms,
                    } => {
                        let mut s = r.state.lock();
                        s.since_reorder += 1;
                        if s.since_reorder >= gap && s.chance(percent) {
                            s.since_reorder = 0;
                            reordered = true;
                            r.hit();
                        } else {
                            held = held.max(Duration::from_millis(hold_ms));
                        }
                    }
                    RuleKind::Corrupt { percent } => {
                        let mut s = r.state.lock();
                        if !b.is_empty() && s.chance(percent) {
                            let bit = s.rng.gen_range(0..b.len() * 8);
                            let mut flipped = b.to_vec();
                            flipped[bit / 8] ^= 1 << (bit % 8);
                            b = Bytes::from(flipped);
                            corrupted = true;
                            r.hit();
                        }
                    }
                    _ => {}
                }
            }
            if corrupted && Envelope::decode(&b).is_ok() {
                // Still a valid envelope after the flip: the transport's integrity check
                // (TLS) would never let it through; drop it.
                continue;
            }
            // A reordered envelope skips the hold and overtakes the held ones.
            let mut after = if reordered { delay } else { delay + held };
            if let Some(until) = paused {
                after = after.max(until.saturating_duration_since(now));
            }
            out.push(Delivery { after, bytes: b });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: RuleKind, targets: Option<Vec<Pattern>>) -> RuleSpec {
        RuleSpec {
            kind,
            targets,
            direction: Direction::Both,
            duration: Duration::from_secs(5),
            seed: 7,
            label: String::new(),
        }
    }

    fn inst(i: u32) -> Address {
        Address::Institution(InstitutionId(i))
    }

    fn wallet(w: u64) -> Address {
        Address::Wallet(WalletId(w))
    }

    fn send(f: &LiveFaults, from: Address, to: Address) -> Vec<Delivery> {
        let mut out = Vec::new();
        f.on_send(from, to, Bytes::from_static(b"envelope"), &mut out);
        out
    }

    #[test]
    fn names_parse_back_and_wallets_of_an_institution_are_round_robin() {
        for name in [
            "central-bank",
            "inst-2",
            "wallet-17",
            "institutions",
            "wallets",
            "wallets-of-inst-1",
        ] {
            assert_eq!(Pattern::parse(name).expect(name).name(), name);
        }
        assert_eq!(Pattern::parse("inst-x"), None);
        let p = Pattern::WalletsOf(InstitutionId(1));
        assert!(p.contains(wallet(5), 4));
        assert!(!p.contains(wallet(6), 4));
        assert!(!p.contains(inst(1), 4));
    }

    #[test]
    fn a_partition_cuts_between_groups_in_its_direction_only() {
        let f = LiveFaults::new("n1", 4);
        let groups = vec![
            vec![
                Pattern::Actor(inst(0)),
                Pattern::WalletsOf(InstitutionId(0)),
            ],
            vec![
                Pattern::Actor(Address::CentralBank),
                Pattern::Actor(inst(1)),
            ],
        ];
        f.install(
            spec(
                RuleKind::Partition {
                    groups,
                    direction: Direction::To,
                },
                None,
            ),
            "test",
        )
        .expect("valid");
        // From group 0 to the others: cut.
        assert!(send(&f, wallet(4), inst(1)).is_empty());
        assert!(send(&f, inst(0), Address::CentralBank).is_empty());
        // The other way, within a group, and outside the groups: delivered.
        assert_eq!(send(&f, inst(1), inst(0)).len(), 1);
        assert_eq!(send(&f, wallet(4), inst(0)).len(), 1);
        assert_eq!(send(&f, inst(2), inst(1)).len(), 1);
        assert_eq!(f.clear(None, "test"), 1);
        assert_eq!(send(&f, inst(0), inst(1)).len(), 1);
    }

    #[test]
    fn the_same_seed_decides_the_same_way() {
        let decisions = |seed: u64| {
            let f = LiveFaults::new("n1", 4);
            let mut s = spec(
                RuleKind::Loss {
                    percent: 50.0,
                    correlation: 0.0,
                },
                Some(vec![Pattern::Institutions]),
            );
            s.seed = seed;
            f.install(s, "test").expect("valid");
            (0..64)
                .map(|_| send(&f, wallet(1), inst(1)).len())
                .collect::<Vec<_>>()
        };
        assert_eq!(decisions(3), decisions(3));
        assert_ne!(decisions(3), decisions(4));
        let lost = decisions(3).iter().filter(|n| **n == 0).count();
        assert!((10..54).contains(&lost), "{lost} of 64 lost at 50%");
    }

    #[test]
    fn rules_expire_on_their_own_and_bad_rules_are_refused() {
        let f = LiveFaults::new("n1", 3);
        let mut s = spec(
            RuleKind::Delay {
                latency_ms: 30,
                jitter_ms: 0,
                correlation: 0.0,
            },
            None,
        );
        s.duration = Duration::from_millis(1);
        f.install(s, "test").expect("valid");
        std::thread::sleep(Duration::from_millis(5));
        // Expired: no longer acts, even before the node forgets it.
        assert_eq!(send(&f, inst(0), inst(1))[0].after, Duration::ZERO);
        assert_eq!(f.expire_due(), 1);
        assert!(f.list().is_empty());

        let bad = spec(
            RuleKind::Loss {
                percent: 20.0,
                correlation: 0.0,
            },
            Some(vec![Pattern::Actor(inst(3))]),
        );
        let err = f.install(bad, "test").expect_err("inst-3 does not exist");
        assert!(err.to_string().contains("inst-3"), "{err}");
        let mut long = spec(RuleKind::Pause, Some(vec![Pattern::Wallets]));
        long.duration = RULE_DURATION_MAX + Duration::from_secs(1);
        assert!(f.install(long, "test").is_err());
        assert!(matches!(
            f.install(spec(RuleKind::WriteDelay { latency_ms: 5 }, None), "test"),
            Err(LiveFaultError::NoJournal)
        ));
    }

    #[test]
    fn a_pause_holds_envelopes_to_and_from_its_targets_until_it_ends() {
        let f = LiveFaults::new("n1", 4);
        f.install(
            spec(RuleKind::Pause, Some(vec![Pattern::Actor(inst(2))])),
            "test",
        )
        .expect("valid");
        for (from, to) in [(inst(2), inst(1)), (wallet(3), inst(2))] {
            let d = send(&f, from, to);
            assert_eq!(d.len(), 1);
            assert!(d[0].after > Duration::from_secs(4), "{:?}", d[0].after);
        }
        assert_eq!(send(&f, inst(1), inst(0))[0].after, Duration::ZERO);
    }
}
