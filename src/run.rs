//! `specie run`: the main job. Starts the cluster of a config in this process, drives a pay
//! workload (payer- and payee-initiated, within and across institutions, with requests that
//! must be refused), shows progress, and ends with the report and the audit.

use crate::report::RunReport;
use crate::ConfigSource;
use anyhow::Context;
use anyhow::{anyhow, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specie_actors::wallet::WalletCommand;
use specie_actors::{Cluster, DataDir, Storage};
use specie_protocol::{
    AbortReason, Address, Amount, CoinId, Envelope, Payload, PaymentAuthorization, SagaId,
    SoftKeyStore, WalletId,
};
use specie_runtime::config::Config;
use specie_runtime::Notice;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// `--workload mixed`: every saga together (a child module, so that it shares this driver's
// model of the balances and its busy wallets).
#[path = "workload_mixed.rs"]
mod workload_mixed;
pub use workload_mixed::Workload;

/// Arguments of `specie run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Cluster config (default: the embedded config/local.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long to drive the workload, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seed of every random choice (keys, workload); default 1, or the data directory's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the machine-readable report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the cluster in this directory (durable journal with group commits); run again
    /// with the same directory to continue from the recovered state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Append the saga id of every operation acknowledged as committed to this file, as it
    /// is acknowledged (for `specie audit --acks`).
    #[arg(long)]
    pub ack_log: Option<PathBuf>,
    /// What to drive: `pay` (payments only) or `mixed` (every saga, in the proportions of the
    /// config's `[workload.mix]`).
    #[arg(long, value_enum, default_value_t = Workload::Pay)]
    pub workload: Workload,
}

/// How long to wait, after the workload stops, for operations still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final reconciliation of every open batch may take.
const RECONCILE_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Spent coins remembered for planting double spends.
const SPENT_MEMORY_MAX: usize = 1024;
/// The client address forged requests come from.
const FORGER: Address = Address::External(666);

/// What the driver expects of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Honest,
    Insufficient,
    DoubleSpend,
    Forged,
}

impl Class {
    fn expected_refusal(self) -> Option<AbortReason> {
        match self {
            Class::Honest => None,
            Class::Insufficient => Some(AbortReason::InsufficientFunds),
            Class::DoubleSpend => Some(AbortReason::CoinSpent),
            Class::Forged => Some(AbortReason::BadSignature),
        }
    }
}

struct Pending {
    started: Instant,
    class: Class,
    /// Whose notice settles the operation.
    reporter: Address,
    payer: WalletId,
    payee: WalletId,
    amount: Amount,
    /// Wallets marked busy by this operation.
    busy: Vec<WalletId>,
}

/// The workload's own model of the coin balances, from requests and outcomes alone.
struct Driver<'a> {
    cluster: &'a Cluster,
    config: &'a Config,
    rng: ChaCha8Rng,
    balance: Vec<u64>,
    busy: HashSet<WalletId>,
    pending: HashMap<SagaId, Pending>,
    /// Recently spent coins: (the wallet that spent them, the coins).
    spent: VecDeque<(WalletId, Vec<CoinId>)>,
    /// Where acknowledged commits are logged as they happen.
    ack_log: Option<std::fs::File>,
    report: RunReport,
    /// The rest of a mixed workload (`None` for payments only).
    mixed: Option<workload_mixed::Mixed>,
}

impl<'a> Driver<'a> {
    fn saga(&mut self) -> SagaId {
        SagaId::from_u128(self.rng.gen())
    }

    fn pick_idle(&mut self) -> Option<WalletId> {
        let n = self.cluster.wallet_count();
        (0..16)
            .map(|_| WalletId(self.rng.gen_range(0..n)))
            .find(|w| !self.busy.contains(w))
    }

    fn pick_payee(&mut self, payer: WalletId) -> WalletId {
        let n = self.cluster.wallet_count();
        let k = self.cluster.institution_count() as u64;
        let cross = self.rng.gen_range(0..100) < self.config.workload.cross_institution_percent;
        loop {
            let candidate = WalletId(self.rng.gen_range(0..n));
            let same = self.cluster.institution_of(candidate) == self.cluster.institution_of(payer);
            if candidate != payer && (same != cross || k == 1) {
                return candidate;
            }
        }
    }

    fn track(&mut self, saga: SagaId, p: Pending) {
        for w in &p.busy {
            self.busy.insert(*w);
        }
        self.pending.insert(saga, p);
    }

    /// Operations in flight, the mixed workload's included.
    fn in_flight(&self) -> usize {
        self.pending.len() + self.mixed.as_ref().map_or(0, |m| m.in_flight())
    }

    /// Starts one operation; returns false when no idle wallet was found this time.
    async fn start_one(&mut self) -> Result<bool> {
        if let Some(started) = workload_mixed::start_one(self).await? {
            return Ok(started);
        }
        let Some(payer) = self.pick_idle() else {
            return Ok(false);
        };
        let w = &self.config.workload;
        let roll = self.rng.gen_range(0..100);
        let class = if roll < w.insufficient_percent {
            Class::Insufficient
        } else if roll < w.insufficient_percent + w.double_spend_percent {
            Class::DoubleSpend
        } else if roll < w.insufficient_percent + w.double_spend_percent + w.forged_percent {
            Class::Forged
        } else {
            Class::Honest
        };
        let saga = self.saga();
        let now = Instant::now();
        match class {
            Class::Honest => {
                let have = self.balance[payer.0 as usize];
                if have == 0 {
                    return Ok(false);
                }
                let payee = self.pick_payee(payer);
                let amount = Amount(self.rng.gen_range(1..=have.min(w.amount_max_fen)));
                let collect = self.rng.gen_range(0..100) < w.collect_percent;
                if collect && self.busy.contains(&payee) {
                    return Ok(false);
                }
                let (reporter, busy) = if collect {
                    (Address::Wallet(payee), vec![payer, payee])
                } else {
                    (Address::Wallet(payer), vec![payer])
                };
                self.track(
                    saga,
                    Pending {
                        started: now,
                        class,
                        reporter,
                        payer,
                        payee,
                        amount,
                        busy,
                    },
                );
                let command = if collect {
                    (
                        payee,
                        WalletCommand::Collect {
                            saga,
                            payer,
                            amount,
                        },
                    )
                } else {
                    let payee_institution = self.cluster.institution_of(payee);
                    (
                        payer,
                        WalletCommand::Pay {
                            saga,
                            payee,
                            payee_institution,
                            amount,
                            coins: None,
                        },
                    )
                };
                self.cluster.submit(command.0, command.1).await?;
            }
            Class::Insufficient => {
                let payee = self.pick_payee(payer);
                // Far above anything the payer can hold, even with payments arriving meanwhile.
                let amount = Amount(self.balance[payer.0 as usize] + 10 * w.amount_max_fen + 1);
                self.track(
                    saga,
                    Pending {
                        started: now,
                        class,
                        reporter: Address::Wallet(payer),
                        payer,
                        payee,
                        amount,
                        busy: vec![payer],
                    },
                );
                let payee_institution = self.cluster.institution_of(payee);
                self.cluster
                    .submit(
                        payer,
                        WalletCommand::Pay {
                            saga,
                            payee,
                            payee_institution,
                            amount,
                            coins: None,
                        },
                    )
                    .await?;
            }
            Class::DoubleSpend => {
                let Some(index) = self.spent.iter().position(|(w, _)| !self.busy.contains(w))
                else {
                    return Ok(false);
                };
                let (spender, coins) = self.spent.remove(index).expect("index in range");
                let payee = self.pick_payee(spender);
                let amount = Amount(1);
                self.track(
                    saga,
                    Pending {
                        started: now,
                        class,
                        reporter: Address::Wallet(spender),
                        payer: spender,
                        payee,
                        amount,
                        busy: vec![spender],
                    },
                );
                let payee_institution = self.cluster.institution_of(payee);
                self.cluster
                    .submit(
                        spender,
                        WalletCommand::Pay {
                            saga,
                            payee,
                            payee_institution,
                            amount,
                            coins: Some(coins),
                        },
                    )
                    .await?;
            }
            Class::Forged => {
                // A thief names a victim's key and coins but can only sign with its own key.
                let Some((victim, coins)) = self.spent.front().cloned() else {
                    return Ok(false);
                };
                let payee = self.pick_payee(victim);
                let payee_institution = self.cluster.institution_of(payee);
                let thief = SoftKeyStore::from_seed(self.rng.gen());
                let amount = Amount(1);
                let signed = PaymentAuthorization {
                    saga_id: saga,
                    payer: victim,
                    payer_key: self.cluster.wallet_key(victim),
                    payer_institution: self.cluster.institution_of(victim),
                    coin_ids: coins,
                    amount,
                    payee,
                    payee_institution,
                    expires_at_ms: u64::MAX,
                }
                .sign(&thief);
                let reporter = Address::Institution(payee_institution);
                self.track(
                    saga,
                    Pending {
                        started: now,
                        class,
                        reporter,
                        payer: victim,
                        payee,
                        amount,
                        busy: vec![],
                    },
                );
                self.cluster.inject(Envelope {
                    message_id: 0,
                    saga_id: saga,
                    from: FORGER,
                    to: Address::Institution(payee_institution),
                    attempt: 0,
                    trace: None,
                    payload: Payload::RedeemRequest(signed),
                });
            }
        }
        Ok(true)
    }

    fn settle(&mut self, notice: Notice) {
        if workload_mixed::settle(self, &notice) {
            return;
        }
        let Some(p) = self.pending.get(&notice.saga_id) else {
            return;
        };
        if p.reporter != notice.source {
            return;
        }
        let p = self.pending.remove(&notice.saga_id).expect("present");
        for w in &p.busy {
            self.busy.remove(w);
        }
        let latency = p.started.elapsed();
        let result = notice.outcome.result;
        self.report.record("pay", result, latency);
        if let Some(expected) = p.class.expected_refusal() {
            let planted = self
                .report
                .planted
                .entry(planted_name(p.class))
                .or_default();
            planted.planted += 1;
            if result == Err(expected) {
                planted.refused_as_expected += 1;
            } else {
                planted.other.push(format!(
                    "saga {}: {:?}",
                    notice.saga_id,
                    result.map_err(|r| r.name())
                ));
            }
        }
        if result.is_ok() {
            if let Some(log) = &mut self.ack_log {
                // One write per line, straight to the kernel: what is logged survives a kill.
                // The line is formatted first: `writeln!` on a file makes a write per piece, and
                // a kill between them would leave a torn line that the next run's first line
                // continues.
                let line = format!("{} committed\n", notice.saga_id);
                if let Err(e) = log.write_all(line.as_bytes()) {
                    self.report.ack_log_errors.push(e.to_string());
                }
            }
            let (payer, payee) = (p.payer.0 as usize, p.payee.0 as usize);
            self.balance[payer] =
                self.balance[payer]
                    .checked_sub(p.amount.0)
                    .unwrap_or_else(|| {
                        self.report.model_mismatches += 1;
                        0
                    });
            self.balance[payee] += p.amount.0;
            if !notice.outcome.spent_coin_ids.is_empty() {
                if self.spent.len() == SPENT_MEMORY_MAX {
                    self.spent.pop_front();
                }
                self.spent
                    .push_back((p.payer, notice.outcome.spent_coin_ids));
            }
        }
    }
}

fn planted_name(class: Class) -> &'static str {
    match class {
        Class::Honest => "honest",
        Class::Insufficient => "insufficient_funds",
        Class::DoubleSpend => "double_spend",
        Class::Forged => "forged_authorization",
    }
}

/// Runs `specie run`; returns whether everything held.
pub fn run(source: ConfigSource, args: &RunArgs) -> Result<bool> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(anyhow!(
            "--duration must be a positive number of seconds, got {}",
            args.duration
        ));
    }
    let (config, seed, storage) = match &args.data_dir {
        Some(path) => {
            let dir = DataDir::open_or_create(
                path,
                &source.text,
                &source.origin,
                source.given,
                args.seed,
            )?;
            (
                dir.config.clone(),
                dir.seed,
                Storage::Durable(Box::new(dir)),
            )
        }
        None => (source.parse()?, args.seed.unwrap_or(1), Storage::Memory),
    };
    let ack_log = match &args.ack_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let system = actix::System::new();
    let report = system.block_on(drive(config, seed, storage, ack_log, args))?;
    report.print(std::io::stdout().is_terminal());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(report.ok())
}

async fn drive(
    config: Config,
    seed: u64,
    storage: Storage,
    ack_log: Option<std::fs::File>,
    args: &RunArgs,
) -> Result<RunReport> {
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    if progress {
        eprint!(
            "starting {} wallets at {} institutions…",
            config.cluster.wallets,
            config.cluster.institutions.len()
        );
    }
    let durable = matches!(storage, Storage::Durable(_));
    let cluster = Cluster::start_with(config.clone(), seed, storage).await?;
    let run_number = cluster.next_run()?;
    let genesis_s = started.elapsed().as_secs_f64();
    // The workload's model starts from the coins the wallets hold (recovered ones included).
    let balance = cluster
        .snapshot()
        .await?
        .wallets
        .iter()
        .map(|w| w.coins.iter().map(|c| c.value().0).sum())
        .collect();
    let mut notices = cluster.notices();
    let mut driver = Driver {
        cluster: &cluster,
        config: &config,
        // A later run on the same data directory draws other saga ids.
        rng: ChaCha8Rng::seed_from_u64(seed ^ run_number.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        balance,
        busy: HashSet::new(),
        pending: HashMap::new(),
        spent: VecDeque::new(),
        ack_log,
        report: RunReport::new(seed, &config),
        mixed: workload_mixed::Mixed::new(args.workload, seed ^ run_number),
    };
    if driver.mixed.is_some() {
        driver.report.declare_kinds(&workload_mixed::MIXED_KINDS);
    }
    driver.report.genesis_s = genesis_s;
    driver.report.durable = durable;
    driver.report.run_number = run_number;
    let duration = Duration::from_secs_f64(args.duration);
    let t0 = Instant::now();
    let mut last_progress = Instant::now();
    while t0.elapsed() < duration {
        workload_mixed::flush(&mut driver).await?;
        while driver.in_flight() < config.workload.in_flight_max {
            if !driver.start_one().await? {
                break;
            }
        }
        // Settle whatever has finished; wait briefly when nothing has.
        match tokio::time::timeout(Duration::from_millis(5), notices.recv()).await {
            Ok(Some(notice)) => {
                driver.settle(notice);
                while let Ok(notice) = notices.try_recv() {
                    driver.settle(notice);
                }
            }
            Ok(None) => return Err(anyhow!("the notice channel closed")),
            Err(_) => {}
        }
        if progress && last_progress.elapsed() > Duration::from_millis(250) {
            last_progress = Instant::now();
            let r = &driver.report;
            let elapsed = t0.elapsed().as_secs_f64();
            eprint!(
                "\r\x1b[2K[{elapsed:5.1}s/{:.0}s] committed {}  aborted {}  in flight {}  {:.0}/s",
                args.duration,
                r.committed(),
                r.aborted(),
                driver.in_flight(),
                r.committed() as f64 / elapsed
            );
        }
    }
    let workload_s = t0.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    workload_mixed::stop(&mut driver);
    while driver.in_flight() > 0 && Instant::now() < drain_deadline {
        workload_mixed::flush(&mut driver).await?;
        if let Ok(Some(notice)) =
            tokio::time::timeout(Duration::from_millis(50), notices.recv()).await
        {
            driver.settle(notice);
        }
    }
    // Operations recovered from a data directory (in flight when an earlier run was killed)
    // are not the driver's: their wallets settle them by asking the coordinator after
    // `limits.outcome_timeout_ms`. Wait for them too, or the audit would judge wallets that
    // have not heard their outcome yet.
    while durable && Instant::now() < drain_deadline {
        let snapshot = cluster.snapshot().await?;
        if snapshot.wallets.iter().all(|w| w.pending == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    let mut quiet = cluster.quiesce(Duration::from_secs(30)).await;
    let mut audit = cluster.audit().await?;
    // Work recovered from a data directory — coins whose acknowledgement was not recorded
    // before the last stop — is redelivered by timers, between which the network can look
    // idle: give it until the drain deadline before judging.
    while durable && audit.in_flight > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        quiet = cluster.quiesce(Duration::from_secs(30)).await;
        audit = cluster.audit().await?;
    }
    // After the audit, which wants a quiet network: reconciling exchanges messages too. Every
    // committed step's records are published by now (the cluster is quiet), so every batch
    // can be closed.
    let reconciliation = cluster.flush_reconciliation(RECONCILE_FLUSH_TIMEOUT).await;
    let unfinished = driver.in_flight();
    let mut report = std::mem::replace(&mut driver.report, RunReport::new(seed, &config));
    workload_mixed::conclude(&driver, &mut report).await?;
    report.duration_s = workload_s;
    report.unfinished = unfinished;
    report.quiescent = quiet;
    report.network = cluster.node().network().stats();
    report.journal = cluster.node().journal().stats();
    report.wall_s = t0.elapsed().as_secs_f64() + genesis_s;
    report.restarts = cluster.node().restarts();
    report.audit = Some(audit);
    report.reconciliation = Some((cluster.reconciliation().settings(), reconciliation));
    cluster.shutdown();
    Ok(report)
}
