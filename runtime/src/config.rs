//! Configuration, read in two steps: parse the TOML into raw values, then validate them into
//! checked settings. Every error names the file, the field and what is wrong.

use crate::redb_journal::JournalSettings;
use crate::supervision::{RestartStrategy, SupervisionSettings};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use thiserror::Error;

/// A configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {why}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        why: String,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{file}: {why}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (it names the line, column and field).
        why: String,
    },
    /// A value is out of its allowed range.
    #[error("{file}: field `{field}` {why}")]
    Invalid {
        /// The file.
        file: String,
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Raw `[cluster]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    institutions: Vec<String>,
    wallets: u64,
}

/// Raw `[genesis]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenesis {
    account_balance_fen: u64,
    exchange_fen: u64,
    coin_denominations_fen: Vec<u64>,
}

/// Raw `[runtime]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    arbiters: usize,
    mailbox_capacity: usize,
}

/// Raw `[limits]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    saga_timeout_ms: u64,
    retry_interval_ms: u64,
    retry_interval_max_ms: u64,
    authorization_ttl_ms: u64,
    coin_inputs_max: usize,
    outcome_timeout_ms: u64,
    dedup_retention_ms: u64,
    /// Optional so that the config of a data directory made before offline payments still
    /// loads (with the default).
    #[serde(default = "default_offline_limit_fen")]
    offline_limit_fen: u64,
    #[serde(default = "default_wallet_selects_coins")]
    wallet_selects_coins: bool,
}

/// `limits.wallet_selects_coins` when a config does not name it: on.
fn default_wallet_selects_coins() -> bool {
    true
}

/// `limits.offline_limit_fen` when a config does not name it: 500.00.
fn default_offline_limit_fen() -> u64 {
    50_000
}

/// Raw `[workload]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    in_flight_max: usize,
    amount_max_fen: u64,
    cross_institution_percent: u32,
    collect_percent: u32,
    insufficient_percent: u32,
    double_spend_percent: u32,
    forged_percent: u32,
    /// Optional so that the config of a data directory made before the mixed workload still
    /// loads; absent, it is [`WorkloadMix::DEFAULT`].
    #[serde(default)]
    mix: Option<RawMix>,
}

/// Raw `[workload.mix]` table: every kind must be named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    pay: u32,
    merge: u32,
    split: u32,
    offline_pay: u32,
    escrow: u32,
    wallet_update: u32,
}

/// Raw `[journal]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    batch_entries_max: usize,
    batch_wait_us: u64,
    queue_capacity: usize,
    snapshot_entries_min: u64,
}

/// Raw `[supervision]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervision {
    strategy: String,
    restart_intensity_max: u32,
    restart_window_ms: u64,
    restart_backoff_ms: u64,
    restart_backoff_max_ms: u64,
}

/// Raw `[reconcile]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    batch_interval_ms: u64,
    close_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: RawCluster,
    genesis: RawGenesis,
    runtime: RawRuntime,
    limits: RawLimits,
    journal: RawJournal,
    supervision: RawSupervision,
    workload: RawWorkload,
    /// Optional so that the config of a data directory made before continuous reconciliation
    /// still loads; absent, it is [`ReconcileConfig::DEFAULT`].
    #[serde(default)]
    reconcile: Option<RawReconcile>,
}

/// The cluster's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Institution names; institution `i` has id `i`.
    pub institutions: Vec<String>,
    /// Number of wallets, spread round-robin over the institutions.
    pub wallets: u64,
}

/// How the cluster is funded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisConfig {
    /// Each wallet's initial account deposit.
    pub account_balance_fen: u64,
    /// How much of it each wallet exchanges into coins at start.
    pub exchange_fen: u64,
    /// Denominations an exchange is split into, largest first.
    pub coin_denominations_fen: Vec<u64>,
}

/// Threads and mailboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Arbiters (threads) that host actors.
    pub arbiters: usize,
    /// Capacity of every actor's mailbox.
    pub mailbox_capacity: usize,
}

/// Timeouts, retries and per-request bounds of the sagas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// A coordinator aborts a saga whose participant has not answered a step before the
    /// commit decision within this time.
    pub saga_timeout_ms: u64,
    /// First retry interval of an unacknowledged step after the decision.
    pub retry_interval_ms: u64,
    /// Cap of the exponential retry backoff.
    pub retry_interval_max_ms: u64,
    /// How long a payer's authorization stays valid.
    pub authorization_ttl_ms: u64,
    /// The most coins a payment may spend.
    pub coin_inputs_max: usize,
    /// How long a wallet waits for an outcome before asking the coordinator.
    pub outcome_timeout_ms: u64,
    /// How long a finished step's recorded answer is kept for deduplication. Longer than any
    /// retry window: a retry of a step whose record was pruned would be answered afresh.
    pub dedup_retention_ms: u64,
    /// The most a wallet may pay offline before it syncs (uploads its offline records):
    /// bounds the value an offline double spend can put at risk.
    pub offline_limit_fen: u64,
    /// Whether a paying wallet chooses the coins itself when those it holds cover the amount
    /// (one round trip fewer), asking its institution only when they do not; off: it always
    /// asks its institution which coins cover the amount.
    pub wallet_selects_coins: bool,
}

/// The `specie run` workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Operations in flight at once (closed loop).
    pub in_flight_max: usize,
    /// Largest payment amount.
    pub amount_max_fen: u64,
    /// Share of payments across institutions.
    pub cross_institution_percent: u32,
    /// Share of payments started by the payee (a merchant's collect request).
    pub collect_percent: u32,
    /// Share of payments above the payer's balance (must be refused).
    pub insufficient_percent: u32,
    /// Share of payments re-spending a coin already spent (must be refused).
    pub double_spend_percent: u32,
    /// Share of forged authorizations (must be refused).
    pub forged_percent: u32,
    /// `[workload.mix]`: what `specie run --workload mixed` drives.
    pub mix: WorkloadMix,
}

/// The share of each kind of operation in `specie run --workload mixed`, in percent; the
/// shares sum to 100. (`--workload pay` drives payments only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadMix {
    /// Payments (the pay saga, with its planted refusals).
    pub pay: u32,
    /// Merges of coins of several issuers.
    pub merge: u32,
    /// Online splits of a coin at its issuer.
    pub split: u32,
    /// Offline payments with trust chains (each after a proximity negotiation).
    pub offline_pay: u32,
    /// Escrow lives: deposit, claims (some that must be refused), release or expiry.
    pub escrow: u32,
    /// Wallet updates (withdraw, sync, new parameters, coins out again).
    pub wallet_update: u32,
}

impl WorkloadMix {
    /// The mix when the config names none.
    pub const DEFAULT: WorkloadMix = WorkloadMix {
        pay: 40,
        merge: 10,
        split: 10,
        offline_pay: 15,
        escrow: 15,
        wallet_update: 10,
    };

    /// The kinds and their shares, in report order.
    pub fn shares(&self) -> [(&'static str, u32); 6] {
        [
            ("pay", self.pay),
            ("merge", self.merge),
            ("split", self.split),
            ("offline_pay", self.offline_pay),
            ("escrow", self.escrow),
            ("wallet_update", self.wallet_update),
        ]
    }
}

/// Continuous reconciliation in `specie run` (`[reconcile]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Width of a reconciliation batch in decision time: a transaction record decided at `t`
    /// belongs to batch `t / batch_interval_ms` of its institution.
    pub batch_interval_ms: u64,
    /// A batch is closed and reconciled this long after its end: long enough for both sides'
    /// records of its steps to arrive (outcome delivery, retried commits, a wallet asking for
    /// an outcome after `limits.outcome_timeout_ms`).
    pub close_after_ms: u64,
}

impl ReconcileConfig {
    /// The settings when the config names none: 1 s batches, closed 5 s after their end.
    pub const DEFAULT: ReconcileConfig = ReconcileConfig {
        batch_interval_ms: 1_000,
        close_after_ms: 5_000,
    };
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[journal]`: group commit of the durable journal.
    pub journal: JournalSettings,
    /// `[supervision]`: restart strategy and intensity.
    pub supervision: SupervisionSettings,
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// `[genesis]`.
    pub genesis: GenesisConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[workload]`.
    pub workload: WorkloadConfig,
    /// `[reconcile]`.
    pub reconcile: ReconcileConfig,
}

/// Most institutions a cluster may have.
pub const INSTITUTIONS_MAX: usize = 1024;
/// Most wallets a cluster may have.
pub const WALLETS_MAX: u64 = 10_000_000;
/// Most arbiters a node may run.
pub const ARBITERS_MAX: usize = 256;
/// Most entries in one group commit.
pub const JOURNAL_BATCH_ENTRIES_MAX: usize = 1 << 20;
/// Longest a group commit may wait for more entries.
pub const JOURNAL_BATCH_WAIT_US_MAX: u64 = 1_000_000;
/// Largest `limits.offline_limit_fen` (100,000.00): offline exposure stays bounded.
pub const OFFLINE_LIMIT_FEN_MAX: u64 = 10_000_000;
/// Smallest mailbox capacity (actix's default).
pub const MAILBOX_CAPACITY_MIN: usize = 16;
/// Widest reconciliation batch, and longest wait before closing one: one hour.
pub const RECONCILE_INTERVAL_MS_MAX: u64 = 3_600_000;

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            file: file.clone(),
            why: e.to_string(),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: origin.to_string(),
            why: e.to_string().trim_end().to_string(),
        })?;
        validate(raw, origin)
    }
}

fn validate(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
    let invalid = |field: &'static str, why: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        why,
    };
    let c = &raw.cluster;
    if c.institutions.is_empty() || c.institutions.len() > INSTITUTIONS_MAX {
        return Err(invalid(
            "cluster.institutions",
            format!(
                "must list 1 to {INSTITUTIONS_MAX} names, has {}",
                c.institutions.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for name in &c.institutions {
        if name.trim().is_empty() || !seen.insert(name) {
            return Err(invalid(
                "cluster.institutions",
                format!("names must be non-empty and distinct, `{name}` is not"),
            ));
        }
    }
    if c.wallets < 2 || c.wallets > WALLETS_MAX {
        return Err(invalid(
            "cluster.wallets",
            format!("must be 2 to {WALLETS_MAX}, is {}", c.wallets),
        ));
    }
    let g = &raw.genesis;
    if g.account_balance_fen == 0 {
        return Err(invalid(
            "genesis.account_balance_fen",
            "must be positive".into(),
        ));
    }
    if g.exchange_fen > g.account_balance_fen {
        return Err(invalid(
            "genesis.exchange_fen",
            format!(
                "({}) cannot exceed genesis.account_balance_fen ({})",
                g.exchange_fen, g.account_balance_fen
            ),
        ));
    }
    // The total money supply must fit in u64 with room to spare.
    if g.account_balance_fen
        .checked_mul(c.wallets)
        .is_none_or(|total| total > u64::MAX / 4)
    {
        return Err(invalid(
            "genesis.account_balance_fen",
            "times cluster.wallets overflows the money supply".into(),
        ));
    }
    let d = &g.coin_denominations_fen;
    if d.is_empty() || d.contains(&0) || d.windows(2).any(|w| w[0] <= w[1]) {
        return Err(invalid(
            "genesis.coin_denominations_fen",
            "must be positive and strictly decreasing".into(),
        ));
    }
    let r = &raw.runtime;
    if r.arbiters == 0 || r.arbiters > ARBITERS_MAX {
        return Err(invalid(
            "runtime.arbiters",
            format!("must be 1 to {ARBITERS_MAX}, is {}", r.arbiters),
        ));
    }
    if r.mailbox_capacity < MAILBOX_CAPACITY_MIN {
        return Err(invalid(
            "runtime.mailbox_capacity",
            format!(
                "must be at least {MAILBOX_CAPACITY_MIN}, is {}",
                r.mailbox_capacity
            ),
        ));
    }
    let l = &raw.limits;
    for (field, v) in [
        ("limits.saga_timeout_ms", l.saga_timeout_ms),
        ("limits.retry_interval_ms", l.retry_interval_ms),
        ("limits.authorization_ttl_ms", l.authorization_ttl_ms),
        ("limits.outcome_timeout_ms", l.outcome_timeout_ms),
    ] {
        if v == 0 {
            return Err(invalid(field, "must be positive".into()));
        }
    }
    if l.retry_interval_max_ms < l.retry_interval_ms {
        return Err(invalid(
            "limits.retry_interval_max_ms",
            format!(
                "({}) cannot be below limits.retry_interval_ms ({})",
                l.retry_interval_max_ms, l.retry_interval_ms
            ),
        ));
    }
    if l.authorization_ttl_ms <= l.saga_timeout_ms {
        return Err(invalid(
            "limits.authorization_ttl_ms",
            "must exceed limits.saga_timeout_ms, or every slow lock would find it expired".into(),
        ));
    }
    // Retries stop at the authorization's expiry plus the lock timeout; records must outlive
    // them with room to spare.
    let retry_window_ms = l.authorization_ttl_ms + l.saga_timeout_ms + l.retry_interval_max_ms;
    if l.dedup_retention_ms < 2 * retry_window_ms {
        return Err(invalid(
            "limits.dedup_retention_ms",
            format!(
                "({}) must be at least twice the retry window (authorization_ttl_ms + saga_timeout_ms + retry_interval_max_ms = {retry_window_ms})",
                l.dedup_retention_ms
            ),
        ));
    }
    if l.offline_limit_fen == 0 || l.offline_limit_fen > OFFLINE_LIMIT_FEN_MAX {
        return Err(invalid(
            "limits.offline_limit_fen",
            format!(
                "must be 1 to {OFFLINE_LIMIT_FEN_MAX}, is {}",
                l.offline_limit_fen
            ),
        ));
    }
    let max = specie_protocol::pay::AUTHORIZATION_COINS_MAX;
    if l.coin_inputs_max == 0 || l.coin_inputs_max > max {
        return Err(invalid(
            "limits.coin_inputs_max",
            format!("must be 1 to {max}, is {}", l.coin_inputs_max),
        ));
    }
    let j = &raw.journal;
    if j.batch_entries_max == 0 || j.batch_entries_max > JOURNAL_BATCH_ENTRIES_MAX {
        return Err(invalid(
            "journal.batch_entries_max",
            format!(
                "must be 1 to {JOURNAL_BATCH_ENTRIES_MAX}, is {}",
                j.batch_entries_max
            ),
        ));
    }
    if j.batch_wait_us > JOURNAL_BATCH_WAIT_US_MAX {
        return Err(invalid(
            "journal.batch_wait_us",
            format!(
                "must be at most {JOURNAL_BATCH_WAIT_US_MAX}, is {}",
                j.batch_wait_us
            ),
        ));
    }
    if j.queue_capacity == 0 {
        return Err(invalid("journal.queue_capacity", "must be positive".into()));
    }
    if j.snapshot_entries_min == 0 {
        return Err(invalid(
            "journal.snapshot_entries_min",
            "must be positive".into(),
        ));
    }
    let v = &raw.supervision;
    let strategy = match v.strategy.as_str() {
        "one_for_one" => RestartStrategy::OneForOne,
        "one_for_all" => RestartStrategy::OneForAll,
        other => {
            return Err(invalid(
                "supervision.strategy",
                format!("must be \"one_for_one\" or \"one_for_all\", is \"{other}\""),
            ))
        }
    };
    if v.restart_intensity_max == 0 {
        return Err(invalid(
            "supervision.restart_intensity_max",
            "must be positive".into(),
        ));
    }
    if v.restart_window_ms == 0 {
        return Err(invalid(
            "supervision.restart_window_ms",
            "must be positive".into(),
        ));
    }
    if v.restart_backoff_max_ms < v.restart_backoff_ms {
        return Err(invalid(
            "supervision.restart_backoff_max_ms",
            format!(
                "({}) cannot be below supervision.restart_backoff_ms ({})",
                v.restart_backoff_max_ms, v.restart_backoff_ms
            ),
        ));
    }
    let w = &raw.workload;
    if w.in_flight_max == 0 {
        return Err(invalid("workload.in_flight_max", "must be positive".into()));
    }
    if w.amount_max_fen == 0 {
        return Err(invalid(
            "workload.amount_max_fen",
            "must be positive".into(),
        ));
    }
    for (field, v) in [
        (
            "workload.cross_institution_percent",
            w.cross_institution_percent,
        ),
        ("workload.collect_percent", w.collect_percent),
    ] {
        if v > 100 {
            return Err(invalid(field, format!("is a percentage, got {v}")));
        }
    }
    let invalid_share = w.insufficient_percent + w.double_spend_percent + w.forged_percent;
    if invalid_share > 100 {
        return Err(invalid(
            "workload.insufficient_percent",
            format!("plus double_spend_percent and forged_percent must be at most 100, is {invalid_share}"),
        ));
    }
    let mix = match &w.mix {
        None => WorkloadMix::DEFAULT,
        Some(m) => WorkloadMix {
            pay: m.pay,
            merge: m.merge,
            split: m.split,
            offline_pay: m.offline_pay,
            escrow: m.escrow,
            wallet_update: m.wallet_update,
        },
    };
    let reconcile = match &raw.reconcile {
        None => ReconcileConfig::DEFAULT,
        Some(r) => ReconcileConfig {
            batch_interval_ms: r.batch_interval_ms,
            close_after_ms: r.close_after_ms,
        },
    };
    if reconcile.batch_interval_ms == 0 || reconcile.batch_interval_ms > RECONCILE_INTERVAL_MS_MAX {
        return Err(invalid(
            "reconcile.batch_interval_ms",
            format!(
                "must be 1 to {RECONCILE_INTERVAL_MS_MAX}, is {}",
                reconcile.batch_interval_ms
            ),
        ));
    }
    if reconcile.close_after_ms > RECONCILE_INTERVAL_MS_MAX {
        return Err(invalid(
            "reconcile.close_after_ms",
            format!(
                "must be at most {RECONCILE_INTERVAL_MS_MAX}, is {}",
                reconcile.close_after_ms
            ),
        ));
    }
    let mix_total: u64 = mix.shares().iter().map(|(_, v)| u64::from(*v)).sum();
    if mix_total != 100 {
        let shares: Vec<String> = mix
            .shares()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        return Err(invalid(
            "workload.mix",
            format!(
                "percentages must sum to 100, sum to {mix_total} ({})",
                shares.join(", ")
            ),
        ));
    }
    Ok(Config {
        journal: JournalSettings {
            batch_entries_max: j.batch_entries_max,
            batch_wait_us: j.batch_wait_us,
            queue_capacity: j.queue_capacity,
            snapshot_entries_min: j.snapshot_entries_min,
        },
        supervision: SupervisionSettings {
            strategy,
            restart_intensity_max: v.restart_intensity_max,
            restart_window_ms: v.restart_window_ms,
            restart_backoff_ms: v.restart_backoff_ms,
            restart_backoff_max_ms: v.restart_backoff_max_ms,
        },
        cluster: ClusterConfig {
            institutions: raw.cluster.institutions,
            wallets: raw.cluster.wallets,
        },
        genesis: GenesisConfig {
            account_balance_fen: raw.genesis.account_balance_fen,
            exchange_fen: raw.genesis.exchange_fen,
            coin_denominations_fen: raw.genesis.coin_denominations_fen,
        },
        runtime: RuntimeConfig {
            arbiters: raw.runtime.arbiters,
            mailbox_capacity: raw.runtime.mailbox_capacity,
        },
        limits: LimitsConfig {
            saga_timeout_ms: l.saga_timeout_ms,
            retry_interval_ms: l.retry_interval_ms,
            retry_interval_max_ms: l.retry_interval_max_ms,
            authorization_ttl_ms: l.authorization_ttl_ms,
            coin_inputs_max: l.coin_inputs_max,
            outcome_timeout_ms: l.outcome_timeout_ms,
            dedup_retention_ms: l.dedup_retention_ms,
            offline_limit_fen: l.offline_limit_fen,
            wallet_selects_coins: l.wallet_selects_coins,
        },
        workload: WorkloadConfig {
            in_flight_max: w.in_flight_max,
            amount_max_fen: w.amount_max_fen,
            cross_institution_percent: w.cross_institution_percent,
            collect_percent: w.collect_percent,
            insufficient_percent: w.insufficient_percent,
            double_spend_percent: w.double_spend_percent,
            forged_percent: w.forged_percent,
            mix,
        },
        reconcile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = include_str!("../../config/local.toml");

    #[test]
    fn the_shipped_default_is_valid() {
        let c = Config::parse(LOCAL, "local.toml").expect("valid");
        assert_eq!(c.cluster.institutions.len(), 4);
        assert_eq!(c.cluster.wallets, 10_000);
    }

    #[test]
    fn the_workload_mix_must_name_every_kind_and_sum_to_100() {
        let c = Config::parse(LOCAL, "local.toml").expect("valid");
        assert_eq!(
            c.workload.mix.shares().iter().map(|(_, v)| v).sum::<u32>(),
            100
        );
        let start = LOCAL
            .find("[workload.mix]")
            .expect("the default names its mix");
        let (head, tail) = LOCAL.split_at(start);
        let tail = tail.replacen("pay = ", "pay = 1", 1);
        let err = Config::parse(&format!("{head}{tail}"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workload.mix") && err.contains("sum to 100"),
            "{err}"
        );
        let without_escrow: String = tail
            .lines()
            .filter(|l| !l.starts_with("escrow"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = Config::parse(&format!("{head}{without_escrow}"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("escrow"), "{err}");
        let absent = &LOCAL[..start];
        assert_eq!(
            Config::parse(absent, "x.toml").expect("valid").workload.mix,
            WorkloadMix::DEFAULT
        );
    }

    #[test]
    fn a_bad_value_names_the_file_and_field() {
        let text = LOCAL.replace("arbiters = 2", "arbiters = 0");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml: field `runtime.arbiters`"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_a_parse_error_naming_it() {
        let text = LOCAL.replace("[runtime]", "[runtime]\narbitres = 3");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("arbitres"), "{err}");
        assert!(err.starts_with("x.toml:"), "{err}");
    }

    #[test]
    fn exchange_above_the_deposit_is_refused() {
        let text = LOCAL.replace("exchange_fen = 60000", "exchange_fen = 6000000");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("genesis.exchange_fen"), "{err}");
    }

    #[test]
    fn an_unknown_restart_strategy_is_refused() {
        let text = LOCAL.replace("strategy = \"one_for_one\"", "strategy = \"one_for_some\"");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("supervision.strategy") && err.contains("one_for_some"),
            "{err}"
        );
    }

    #[test]
    fn the_offline_limit_is_validated_and_defaults_when_absent() {
        let c = Config::parse(LOCAL, "local.toml").expect("valid");
        assert!(c.limits.offline_limit_fen > 0);
        let zero = LOCAL.replace(
            &format!("offline_limit_fen = {}", c.limits.offline_limit_fen),
            "offline_limit_fen = 0",
        );
        let err = Config::parse(&zero, "x.toml").unwrap_err().to_string();
        assert!(err.contains("limits.offline_limit_fen"), "{err}");
        let absent = LOCAL.replace(
            &format!("offline_limit_fen = {}", c.limits.offline_limit_fen),
            "",
        );
        assert_eq!(
            Config::parse(&absent, "x.toml")
                .expect("valid")
                .limits
                .offline_limit_fen,
            50_000
        );
    }

    #[test]
    fn wallet_coin_selection_is_read_and_defaults_to_on() {
        let c = Config::parse(LOCAL, "local.toml").expect("valid");
        assert!(c.limits.wallet_selects_coins);
        let off = LOCAL.replace(
            "wallet_selects_coins = true",
            "wallet_selects_coins = false",
        );
        assert!(
            !Config::parse(&off, "x.toml")
                .expect("valid")
                .limits
                .wallet_selects_coins
        );
        let absent = LOCAL.replace("wallet_selects_coins = true", "");
        assert!(
            Config::parse(&absent, "x.toml")
                .expect("valid")
                .limits
                .wallet_selects_coins
        );
        let wrong = LOCAL.replace("wallet_selects_coins = true", "wallet_selects_coins = 1");
        let err = Config::parse(&wrong, "x.toml").unwrap_err().to_string();
        assert!(err.contains("wallet_selects_coins"), "{err}");
    }

    #[test]
    fn the_reconcile_table_is_validated_and_defaults_when_absent() {
        let c = Config::parse(LOCAL, "local.toml").expect("valid");
        assert_eq!(c.reconcile.batch_interval_ms, 1_000);
        let start = LOCAL.find("[reconcile]").expect("the default names it");
        let end = LOCAL[start..]
            .find("\n[")
            .map_or(LOCAL.len(), |i| start + i + 1);
        let without = format!("{}{}", &LOCAL[..start], &LOCAL[end..]);
        let c = Config::parse(&without, "old.toml").expect("absent is fine");
        assert_eq!(c.reconcile, ReconcileConfig::DEFAULT);
        let zero = LOCAL.replace("batch_interval_ms = 1000", "batch_interval_ms = 0");
        let err = Config::parse(&zero, "z.toml").unwrap_err().to_string();
        assert!(
            err.contains("z.toml: field `reconcile.batch_interval_ms` must be 1 to"),
            "{err}"
        );
        let long = LOCAL.replace("close_after_ms = 5000", "close_after_ms = 9999999");
        let err = Config::parse(&long, "l.toml").unwrap_err().to_string();
        assert!(err.contains("`reconcile.close_after_ms`"), "{err}");
        let unknown = LOCAL.replace("close_after_ms = 5000", "close_after_ms = 5000\nshards = 4");
        assert!(Config::parse(&unknown, "u.toml").is_err());
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let err = Config::load(Path::new("/nonexistent/specie.toml")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("/nonexistent/specie.toml: cannot read"));
    }
}
