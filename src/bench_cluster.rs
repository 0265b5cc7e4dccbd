//! `specie bench --cluster FILE`: the pay workload of a bench profile against a cluster of
//! `specie node` processes, through their gRPC ingress (mutual TLS).
//!
//! The bench starts the nodes itself (a fresh data directory each, in its work directory, see
//! [`crate::live_nodes`]) or, with `--attach`, drives nodes already running. Payments arrive
//! as a Poisson open loop at a fixed rate; each is submitted, with its own idempotency key, to
//! the node its payer wallet lives on (no forwarding hop), and its latency runs from its
//! intended send time to the answer. The bookkeeping (measured window, intervals, outcomes by
//! kind and reason) is the in-process bench's [`Tracker`]. At the end the bench stops the
//! nodes it started with SIGTERM (each must exit 0) and audits every node's journal as
//! `specie audit --cluster` does; a violation fails the bench. Attached nodes are not audited.
//! Peak finding is not available against a node cluster.

use crate::bench_cmd::BenchArgs;
use crate::live_nodes::{self, absolute, prepare_work, tls_for, Procs};
use anyhow::{bail, Context, Result};
use futures::future::join_all;
use parking_lot::Mutex;
use serde_json::{json, Value};
use specie_actors::member::offline_cluster_snapshot;
use specie_actors::{audit, Blueprint};
use specie_bench::arrival::PoissonArrivals;
use specie_bench::driver::{RunSpec, Tracker};
use specie_bench::floor::{self, floor_ratio, CryptoFloor};
use specie_bench::histogram::round3;
use specie_bench::peak::{judge, PeakOutcome, PeakSearch, Stage};
use specie_bench::profile::{LoopMode, Profile, DURATION_S_MAX, RATE_PER_S_MAX};
use specie_bench::report::{
    half_peak_json, half_peak_text, peak_json, peak_text, run_text, HalfPeak,
};
use specie_bench::stats::{reasons_json, RunStats};
use specie_bench::workload::{Planned, Workload};
use specie_bench::{plot, sys};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::grpc::ingress as gi;
use specie_protocol::{AbortReason, SagaKind};
use specie_runtime::topology::ClusterFile;
use specie_runtime::transport;
use specie_runtime::Notice;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long the nodes may take to become ready (genesis).
const READY_MAX: Duration = Duration::from_secs(300);
/// How long one submission waits for the outcome before the node answers `pending`.
const SUBMIT_WAIT_MS: u32 = 10_000;
/// Longest an operation is asked about (resubmitted under its key) before it counts as
/// unanswered.
const OPERATION_MAX: Duration = Duration::from_secs(30);
/// Pause before asking again about a pending operation or after an unavailable node.
const ASK_AGAIN: Duration = Duration::from_millis(100);
/// The work directory's marker file.
const WORK_MARKER: &str = ".specie-bench-live";

/// The abort reason named `name` (as the ingress spells it); an unknown name (a newer node)
/// counts as `saga_aborted`.
pub fn reason_of(name: &str) -> AbortReason {
    AbortReason::ALL
        .iter()
        .copied()
        .find(|r| r.name() == name)
        .unwrap_or(AbortReason::SagaAborted)
}

/// The profile's workload as the ingress can drive it: honest payments only (no collect
/// requests, merges or planted invalid requests), the hot set clamped to the cluster.
pub fn ingress_workload(
    spec: &specie_bench::profile::WorkloadSpec,
    wallets: u64,
) -> specie_bench::profile::WorkloadSpec {
    let mut w = spec.clone();
    w.pay_percent = 100;
    w.merge_percent = 0;
    w.collect_percent = 0;
    w.insufficient_percent = 0;
    w.double_spend_percent = 0;
    w.forged_percent = 0;
    w.hot_wallets = w.hot_wallets.min(wallets);
    if w.hot_wallets == 0 {
        w.hot_percent = 0;
    }
    w
}

/// `VmRSS` or `VmHWM` (`key`) of process `pid`, in bytes.
fn proc_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    sys::parse_status_kib(&text, key).map(|k| k * 1024)
}

/// The sum of `key` over the started nodes; `None` when any is missing.
fn nodes_kib(procs: &Mutex<Option<Procs>>, key: &str) -> Option<u64> {
    let pids = procs.lock().as_ref()?.pids();
    pids.into_iter()
        .map(|p| p.and_then(|pid| proc_kib(pid, key)))
        .sum()
}

/// One operation's answer.
struct Done {
    planned: Planned,
    at: Instant,
    answer: Result<Result<(), AbortReason>, String>,
}

/// Submits a payment to its payer's node and asks again (same key) until it has an outcome.
async fn submit(
    mut client: gi::IngressClient<Channel>,
    key: String,
    pay: gi::PayOp,
) -> Result<Result<(), AbortReason>, String> {
    let deadline = Instant::now() + OPERATION_MAX;
    loop {
        let reply = client
            .submit(gi::SubmitRequest {
                idempotency_key: key.clone(),
                op: Some(gi::submit_request::Op::Pay(pay)),
                wait_ms: SUBMIT_WAIT_MS,
                forwarded: false,
            })
            .await;
        let why = match reply {
            Ok(r) => {
                let r = r.into_inner();
                match r.state() {
                    gi::OperationState::Committed => return Ok(Ok(())),
                    gi::OperationState::Aborted => return Ok(Err(reason_of(&r.reason))),
                    other => format!("still {}", other.as_str_name()),
                }
            }
            Err(s) if s.code() == tonic::Code::Unavailable => s.message().to_string(),
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "no outcome within {} s: {why}",
                OPERATION_MAX.as_secs()
            ));
        }
        tokio::time::sleep(ASK_AGAIN).await;
    }
}

/// What the peak finder drove against the cluster.
struct Searched {
    outcome: PeakOutcome,
    /// One run per step, in step order.
    runs: Vec<RunStats>,
    /// The run at half the sustainable peak.
    half: Option<HalfPeak>,
    sent_by_node: Vec<u64>,
    errors: Vec<String>,
}

impl Searched {
    /// The headline run: the confirmation repeats at the sustainable peak, combined.
    fn main(&self) -> Driven {
        let sustainable = self.outcome.sustainable_per_s;
        let confirm: Vec<&RunStats> = self
            .runs
            .iter()
            .zip(&self.outcome.steps)
            .filter(|(_, s)| s.stage == Stage::Confirm && Some(s.rate_per_s) == sustainable)
            .map(|(r, _)| r)
            .collect();
        let label = match sustainable {
            Some(r) => format!("sustainable peak {r:.0}/s ({} repeats)", confirm.len()),
            None => "no sustainable rate confirmed".into(),
        };
        Driven {
            stats: RunStats::combine(label, &confirm),
            sent_by_node: self.sent_by_node.clone(),
            errors: self.errors.clone(),
        }
    }
}

/// How long the cluster is left alone between the peak finder's steps, so that an overloaded
/// step's retries and redeliveries do not count against the next one.
const STEP_SETTLE: Duration = Duration::from_secs(2);

/// The peak finder against a node cluster: the same search as in process (ramp, refine,
/// confirm at −5% and +5%, repeats), each step an open-loop run through the ingress, then a
/// run at half the sustainable peak.
async fn find_peak(
    ingress: &[gi::IngressClient<Channel>],
    file: &ClusterFile,
    tracker: &mut Tracker,
    base: &RunSpec,
    profile: &Profile,
    run_tag: &str,
) -> Searched {
    let mut search = PeakSearch::new(profile.peak.clone());
    let mut runs = Vec::new();
    let mut sent_by_node = vec![0u64; file.nodes.len()];
    let mut errors = Vec::new();
    let mut take = |d: Driven, runs: &mut Vec<RunStats>| {
        for (total, sent) in sent_by_node.iter_mut().zip(&d.sent_by_node) {
            *total += sent;
        }
        errors.extend(d.errors);
        runs.push(d.stats);
    };
    let mut n = 0u64;
    while let Some((stage, rate)) = search.next() {
        n += 1;
        let spec = RunSpec {
            label: format!("{} {rate:.0}/s", stage.name()),
            rate_per_s: rate,
            warmup: Duration::ZERO,
            seed: profile.seed.wrapping_add(n),
            ..base.clone()
        };
        eprintln!("specie bench: step {n}: {}", spec.label);
        let d = drive(ingress, file, tracker, &spec, &format!("{run_tag}-{n}")).await;
        search.observe(judge(&d.stats, &profile.peak, profile.p99_bound_ms));
        take(d, &mut runs);
        tokio::time::sleep(STEP_SETTLE).await;
    }
    let outcome = search.outcome();
    let half = match outcome.sustainable_per_s {
        Some(rate) => {
            let spec = RunSpec {
                label: format!("half peak {:.0}/s", rate / 2.0),
                rate_per_s: rate / 2.0,
                warmup: Duration::ZERO,
                seed: profile.seed.wrapping_add(10_000),
                ..base.clone()
            };
            eprintln!("specie bench: {}", spec.label);
            let d = drive(ingress, file, tracker, &spec, &format!("{run_tag}-half")).await;
            let stats = d.stats.clone();
            let mut spare = Vec::new();
            take(d, &mut spare);
            Some(HalfPeak {
                rate_per_s: rate / 2.0,
                p99_bound_ms: profile.p99_bound_ms,
                stats,
            })
        }
        None => None,
    };
    Searched {
        outcome,
        runs,
        half,
        sent_by_node,
        errors,
    }
}

/// What the driven run produced.
struct Driven {
    stats: RunStats,
    sent_by_node: Vec<u64>,
    errors: Vec<String>,
}

/// The open loop: Poisson arrivals at `spec.rate_per_s`, each paid through its payer's node.
async fn drive(
    ingress: &[gi::IngressClient<Channel>],
    file: &ClusterFile,
    tracker: &mut Tracker,
    spec: &RunSpec,
    run_tag: &str,
) -> Driven {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut arrivals = PoissonArrivals::new(spec.rate_per_s, spec.seed);
    let start = Instant::now();
    tracker.begin_run(spec, start);
    let end = start + spec.warmup + spec.duration;
    let mut next = start + arrivals.next_offset();
    let mut in_flight = 0usize;
    let mut sent = 0u64;
    let mut sent_by_node = vec![0u64; file.nodes.len()];
    let mut errors = Vec::new();
    let settle = |tracker: &mut Tracker, done: Done, errors: &mut Vec<String>| match done.answer {
        Ok(result) => {
            tracker.settle(
                Notice {
                    saga_id: done.planned.saga,
                    source: done.planned.reporter,
                    outcome: SagaOutcome {
                        kind: SagaKind::Pay,
                        result,
                        spent_coin_ids: Vec::new(),
                        decided_at_ms: 0,
                    },
                },
                done.at,
            );
        }
        Err(e) => errors.push(format!(
            "wallet-{} → wallet-{}: {e}",
            done.planned.payer.0, done.planned.payee.0
        )),
    };
    while next < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                let now = Instant::now();
                tracker.roll(now);
                while next <= now && next < end {
                    if let Some(p) = tracker.offer_planned(next, now, spec.outstanding_max) {
                        let node = file.placement.wallet_node(p.payer.0);
                        sent_by_node[node] += 1;
                        sent += 1;
                        in_flight += 1;
                        let client = ingress[node].clone();
                        let key = format!("{run_tag}-{sent}");
                        let pay = gi::PayOp { from: p.payer.0, to: p.payee.0, amount: p.amount.0 };
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let answer = submit(client, key, pay).await;
                            let _ = tx.send(Done { planned: p, at: Instant::now(), answer });
                        });
                    }
                    next = start + arrivals.next_offset();
                }
            }
            Some(done) = rx.recv() => {
                in_flight -= 1;
                tracker.roll(done.at);
                settle(tracker, done, &mut errors);
            }
        }
    }
    // The measured window is over; wait for what is still out.
    let now = Instant::now().max(end);
    tracker.roll(now);
    tracker.end_window();
    let drain_until = Instant::now() + spec.drain_timeout.max(OPERATION_MAX);
    while in_flight > 0 {
        match tokio::time::timeout_at(drain_until.into(), rx.recv()).await {
            Ok(Some(done)) => {
                in_flight -= 1;
                settle(tracker, done, &mut errors);
            }
            _ => break,
        }
    }
    tracker.abandon();
    let mut stats = tracker.take_stats();
    stats.submit_errors = errors.len() as u64;
    Driven {
        stats,
        sent_by_node,
        errors,
    }
}

/// The audit of every node's journal, as `specie audit --cluster` runs it.
struct Audited {
    ok: bool,
    in_flight: usize,
    invariants: Vec<(String, String)>,
}

fn audit_cluster(cluster: &Path) -> Result<Audited> {
    let file = ClusterFile::load(cluster)?;
    let snapshot = offline_cluster_snapshot(&file)
        .with_context(|| format!("reading the journals of {}", cluster.display()))?;
    let report = audit(&snapshot, false);
    Ok(Audited {
        ok: report.ok(),
        in_flight: report.in_flight,
        invariants: report
            .invariants()
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect(),
    })
}

/// Runs `specie bench --cluster FILE`; returns whether the bench passed.
pub fn run(args: &BenchArgs, cluster: &Path) -> Result<bool> {
    let profile = Profile::load(&args.profile)?;
    if profile.mode == LoopMode::Closed && args.rate.is_none() && !args.find_peak {
        bail!(
            "{}: a closed loop (mode = \"closed\") does not run against a node cluster; give --rate R or --find-peak",
            profile.origin
        );
    }
    let rate = args.rate.unwrap_or(profile.rate_per_s);
    if !(rate.is_finite() && rate > 0.0 && rate <= RATE_PER_S_MAX) {
        bail!("--rate must be a positive number of operations per second, got {rate}");
    }
    let duration_s = args.duration.unwrap_or(if args.find_peak {
        profile.peak.step_s
    } else {
        profile.duration_s
    });
    if !(duration_s.is_finite() && duration_s > 0.0 && duration_s <= DURATION_S_MAX) {
        bail!("--duration must be a positive number of seconds, got {duration_s}");
    }
    let file = ClusterFile::load(cluster)?;
    if !args.attach {
        if let Some(node) = file
            .nodes
            .iter()
            .find(|n| !n.grpc.ip().is_loopback() || !n.metrics.ip().is_loopback())
        {
            bail!(
                "{}: node {} is not on this machine; the bench starts nodes on 127.0.0.1 only (use --attach for nodes running elsewhere)",
                file.origin,
                node.id
            );
        }
    }
    let bench_start = Instant::now();
    let cores = sys::cores();
    let floor = floor::measure(cores, specie_bench::bench::FLOOR_DURATION);
    let work = absolute(
        &args
            .work
            .clone()
            .unwrap_or_else(|| PathBuf::from("bench-live").join(&profile.name)),
    )?;
    let cluster_path = if args.attach {
        cluster.to_path_buf()
    } else {
        prepare_work(&work, &file, cluster, WORK_MARKER, "specie bench --cluster")?
    };
    let exe = std::env::current_exe().context("finding the specie binary")?;
    let tls = tls_for(&file, "client")?;
    let wallets = file.config.cluster.wallets;
    let blueprint = Blueprint::new(&file.config, profile.seed);
    let workload = Workload::new(
        ingress_workload(&profile.workload, wallets),
        blueprint,
        file.config.genesis.exchange_fen,
        profile.seed,
    );
    let spec = RunSpec {
        label: format!("rate {rate:.0}/s"),
        mode: LoopMode::Open,
        rate_per_s: rate,
        in_flight: profile.in_flight_max,
        outstanding_max: profile.outstanding_max,
        warmup: Duration::from_secs_f64(profile.warmup_s),
        duration: Duration::from_secs_f64(duration_s),
        interval: Duration::from_millis(profile.interval_ms),
        drain_timeout: Duration::from_secs_f64(profile.drain_timeout_s),
        seed: profile.seed,
    };
    let procs: Mutex<Option<Procs>> = Mutex::new(None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the bench's runtime")?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let run_tag = format!("bench-{}-{nonce}", profile.name);
    let driven = rt.block_on(async {
        let mut ingress = Vec::new();
        for node in &file.nodes {
            ingress.push(gi::IngressClient::new(
                transport::endpoint(
                    &node.grpc.to_string(),
                    &node.id,
                    &tls,
                    Duration::from_secs(2),
                )?
                .connect_lazy(),
            ));
        }
        if !args.attach {
            let mut p = Procs {
                exe: exe.clone(),
                config: cluster_path.clone(),
                logs: work.join("logs"),
                planted: None,
                ids: file.nodes.iter().map(|n| n.id.clone()).collect(),
                children: file.nodes.iter().map(|_| None).collect(),
                starts: vec![0; file.nodes.len()],
            };
            for node in 0..file.nodes.len() {
                p.start(node)?;
            }
            eprintln!(
                "specie bench: started {} nodes from {} (logs in {})",
                file.nodes.len(),
                cluster_path.display(),
                work.join("logs").display()
            );
            *procs.lock() = Some(p);
        }
        let genesis = Instant::now();
        let ready =
            join_all((0..file.nodes.len()).map(|node| {
                live_nodes::wait_ready(&ingress[node], &file, node, &procs, READY_MAX)
            }))
            .await;
        for r in ready {
            r?;
        }
        let genesis_s = genesis.elapsed().as_secs_f64();
        let rss_ready = nodes_kib(&procs, "VmRSS");
        let mut tracker = Tracker::new(workload, bench_start);
        let searched = if args.find_peak {
            Some(find_peak(&ingress, &file, &mut tracker, &spec, &profile, &run_tag).await)
        } else {
            None
        };
        let driven = match &searched {
            Some(s) => s.main(),
            None => drive(&ingress, &file, &mut tracker, &spec, &run_tag).await,
        };
        let peak_rss = nodes_kib(&procs, "VmHWM");
        anyhow::Ok((driven, searched, genesis_s, rss_ready, peak_rss))
    });
    let mut problems = Vec::new();
    // Stop the nodes this bench started, whatever happened.
    let shutdown = procs.lock().as_mut().map(Procs::terminate_all);
    let (driven, searched, genesis_s, rss_ready, peak_rss) = driven?;
    if let Some(s) = &searched {
        if s.outcome.sustainable_per_s.is_none() {
            problems.push("the peak finder confirmed no sustainable rate".into());
        }
    }
    let mut shutdown_json = serde_json::Map::new();
    for (id, status) in shutdown.iter().flatten() {
        let text = match status {
            Ok(s) if s.success() => "exit 0".to_string(),
            Ok(s) => {
                problems.push(format!("node {id} did not exit 0 on SIGTERM: {s}"));
                s.to_string()
            }
            Err(e) => {
                problems.push(format!("node {id}: {e}"));
                e.clone()
            }
        };
        shutdown_json.insert(id.clone(), json!(text));
    }
    let audited = if args.attach {
        None
    } else {
        Some(audit_cluster(&cluster_path)?)
    };
    if let Some(a) = &audited {
        for (name, verdict) in &a.invariants {
            if verdict != "ok" {
                problems.push(format!("audit: {name} {verdict}"));
            }
        }
        if !a.ok && problems.iter().all(|p| !p.starts_with("audit:")) {
            problems.push("audit: failed".into());
        }
    }
    let Driven {
        stats: main,
        sent_by_node,
        errors,
    } = driven;
    if main.unfinished > 0 {
        problems.push(format!(
            "{} operations never got an outcome",
            main.unfinished
        ));
    }
    if !errors.is_empty() {
        problems.push(format!(
            "{} submissions failed, e.g. {}",
            errors.len(),
            errors[0]
        ));
    }
    if main.all.finished() == 0 {
        problems.push("no operation finished in the measured run".into());
    }
    let ok = problems.is_empty();
    let report = ClusterReport {
        profile: &profile,
        cluster,
        work: &work,
        attach: args.attach,
        nodes: file.nodes.len(),
        wallets,
        institutions: file.config.cluster.institutions.len(),
        cores,
        genesis_s,
        main: &main,
        sent_by_node: file
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .zip(sent_by_node)
            .collect(),
        floor: &floor,
        peak_rss_bytes: peak_rss,
        rss_ready_bytes: rss_ready,
        shutdown: Value::Object(shutdown_json),
        audited: audited.as_ref(),
        searched: searched.as_ref(),
        p99_bound_ms: profile.p99_bound_ms,
        problems: &problems,
        ok,
        wall_s: bench_start.elapsed().as_secs_f64(),
    };
    print!("{}", report.text());
    let _ = std::io::stdout().flush();
    let doc = report.to_json();
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        let files = report
            .write_dir(dir, &text)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        println!("  report        {}: {}", dir.display(), files.join(", "));
    }
    Ok(ok)
}

/// Everything the cluster bench measured, for its text, JSON and folder.
struct ClusterReport<'a> {
    profile: &'a Profile,
    cluster: &'a Path,
    work: &'a Path,
    attach: bool,
    nodes: usize,
    wallets: u64,
    institutions: usize,
    cores: usize,
    genesis_s: f64,
    main: &'a RunStats,
    sent_by_node: Vec<(String, u64)>,
    floor: &'a CryptoFloor,
    peak_rss_bytes: Option<u64>,
    rss_ready_bytes: Option<u64>,
    shutdown: Value,
    audited: Option<&'a Audited>,
    searched: Option<&'a Searched>,
    p99_bound_ms: f64,
    problems: &'a [String],
    ok: bool,
    wall_s: f64,
}

impl ClusterReport<'_> {
    fn floor_ratio(&self) -> f64 {
        floor_ratio(self.main.pay_committed_per_s(), self.floor)
    }

    fn bytes_per_wallet(&self) -> Option<f64> {
        self.rss_ready_bytes
            .map(|b| b as f64 / self.wallets.max(1) as f64)
    }

    fn to_json(&self) -> Value {
        let m = self.main;
        let audit = match self.audited {
            None => json!("not run: --attach (the nodes are not this bench's to stop)"),
            Some(a) => {
                let invariants: serde_json::Map<String, Value> = a
                    .invariants
                    .iter()
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                json!({"ok": a.ok, "in_flight": a.in_flight, "invariants": invariants})
            }
        };
        let sent_by_node: serde_json::Map<String, Value> = self
            .sent_by_node
            .iter()
            .map(|(n, c)| (n.clone(), json!(c)))
            .collect();
        let intervals: Vec<Value> = m.intervals.iter().map(|i| i.to_json()).collect();
        let mut doc = json!({
            "ok": self.ok,
            "profile": self.profile.name,
            "description": self.profile.description,
            "mode": if self.searched.is_some() { "find_peak" } else { "open_loop" },
            "cluster": self.cluster.display().to_string(),
            "nodes": self.nodes,
            "attach": self.attach,
            "work_dir": (!self.attach).then(|| self.work.display().to_string()),
            "durable": true,
            "seed": self.profile.seed,
            "wallets": self.wallets,
            "institutions": self.institutions,
            "cores": self.cores,
            "genesis_s": (!self.attach).then(|| round3(self.genesis_s)),
            "run": m.label,
            "rate_per_s": m.rate_per_s.map(round3),
            "duration_s": round3(m.duration_s),
            "throughput_per_s": round3(m.throughput_per_s()),
            "offered_per_s": round3(m.offered_per_s()),
            "achieved_per_s": round3(m.achieved_per_s()),
            "committed": m.all.committed,
            "aborted": m.all.aborted,
            "aborted_by_reason": reasons_json(&m.all.by_reason),
            "shed": m.shed,
            "unfinished": m.unfinished,
            "submit_errors": m.submit_errors,
            "latency_ms": m.all.latency.summary().to_json(),
            "send_lag_ms": m.send_lag.summary().to_json(),
            "by_kind": m.by_kind_json(),
            "sent_by_node": sent_by_node,
            "client_cpu_percent": round3(m.cpu_percent()),
            "peak_rss_bytes": self.peak_rss_bytes,
            "rss_after_genesis_bytes": self.rss_ready_bytes,
            "bytes_per_wallet": self.bytes_per_wallet().map(round3),
            "crypto_floor_verifies_per_s": round3(self.floor.verifies_per_s),
            "floor_ratio": (self.floor_ratio() * 10_000.0).round() / 10_000.0,
            "intervals": intervals,
            "shutdown": self.shutdown,
            "audit": audit,
            "problems": self.problems,
            "wall_s": round3(self.wall_s),
        });
        doc["peak"] =
            json!(self
                .searched
                .map(|s| peak_json(&s.outcome, &s.runs, self.p99_bound_ms)));
        doc["at_half_peak"] = json!(self
            .searched
            .and_then(|s| s.half.as_ref())
            .map(half_peak_json));
        doc
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let m = self.main;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "specie bench — profile {}, open loop against cluster {} ({} nodes{}), {} wallets at {} institutions",
            self.profile.name,
            self.cluster.display(),
            self.nodes,
            if self.attach { ", attached" } else { ", started by the bench" },
            self.wallets,
            self.institutions
        );
        if !self.attach {
            let _ = writeln!(s, "  genesis       {:.2} s (nodes ready)", self.genesis_s);
        }
        if let Some(searched) = self.searched {
            peak_text(&mut s, &searched.outcome, &searched.runs, self.p99_bound_ms);
        }
        let _ = writeln!(
            s,
            "  measured      {} — {:.2} s, each payment sent to its payer's node",
            m.label, m.duration_s
        );
        run_text(&mut s, m);
        if let Some(h) = self.searched.and_then(|s| s.half.as_ref()) {
            half_peak_text(&mut s, h);
        }
        match self.peak_rss_bytes {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "  memory        peak RSS of the nodes {:.1} MiB{}",
                    b as f64 / (1024.0 * 1024.0),
                    self.bytes_per_wallet()
                        .map(|w| format!(", {w:.0} bytes per wallet after genesis"))
                        .unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(s, "  memory        not measured (attached nodes)");
            }
        }
        let _ = writeln!(
            s,
            "  crypto floor  {:.0} Ed25519 verifies/s on {} threads; floor_ratio {:.3}",
            self.floor.verifies_per_s,
            self.floor.threads,
            self.floor_ratio()
        );
        match self.audited {
            None => {
                let _ = writeln!(
                    s,
                    "  audit         not run: --attach (the nodes keep running; stop them and run `specie audit --cluster FILE`)"
                );
            }
            Some(a) => {
                let _ = writeln!(
                    s,
                    "  audit         {} (every node's journal, after SIGTERM; {} sagas in flight)",
                    if a.ok { "ok" } else { "FAILED" },
                    a.in_flight
                );
            }
        }
        for p in self.problems {
            let _ = writeln!(s, "  problem       {p}");
        }
        let _ = writeln!(
            s,
            "  result        {} ({:.1} s wall)",
            if self.ok { "ok" } else { "FAILED" },
            self.wall_s
        );
        s
    }

    /// The report folder: `bench.json`, `latency-*.hgrm`, `plot.svg`.
    fn write_dir(&self, dir: &Path, json_text: &str) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut written = vec!["bench.json".to_string()];
        std::fs::write(dir.join("bench.json"), json_text)?;
        let mut hgrm = |name: String, latency: &specie_bench::histogram::Latency| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(&name))?);
            latency.write_hgrm(&mut f)?;
            f.flush()?;
            written.push(name);
            std::io::Result::Ok(())
        };
        hgrm("latency-all.hgrm".into(), &self.main.all.latency)?;
        for (kind, t) in &self.main.by_kind {
            hgrm(format!("latency-{}.hgrm", kind.name()), &t.latency)?;
        }
        let title = format!(
            "specie bench {} — cluster {} ({} nodes) — {:.0} committed/s, p99 {:.1} ms, durable",
            self.profile.name,
            self.cluster.display(),
            self.nodes,
            self.main.throughput_per_s(),
            self.main.all.latency.quantile_ms(0.99)
        );
        std::fs::write(
            dir.join("plot.svg"),
            plot::render(&title, &self.main.intervals, &self.main.all.latency),
        )?;
        written.push("plot.svg".to_string());
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_read_back_by_name_and_unknown_ones_count_as_saga_aborted() {
        for r in AbortReason::ALL {
            assert_eq!(reason_of(r.name()), r);
        }
        assert_eq!(reason_of("from_the_future"), AbortReason::SagaAborted);
    }

    #[test]
    fn the_ingress_workload_is_honest_payments_with_the_hot_set_inside_the_cluster() {
        let text = "[bench]\nname = \"t\"\nmode = \"open\"\nduration_s = 1\n[workload]\ncollect_percent = 20\ninsufficient_percent = 2\nforged_percent = 1\nhot_wallets = 16\nhot_percent = 30\n[cluster_config.cluster]\nwallets = 40\n";
        let profile = Profile::parse(text, "t.toml", None).expect("valid profile");
        let w = ingress_workload(&profile.workload, 10);
        assert_eq!(w.pay_percent, 100);
        assert_eq!(w.merge_percent, 0);
        assert_eq!(w.collect_percent, 0);
        assert_eq!(
            (
                w.insufficient_percent,
                w.double_spend_percent,
                w.forged_percent
            ),
            (0, 0, 0)
        );
        assert_eq!(w.hot_wallets, 10);
        assert_eq!(w.hot_percent, 30);
        assert_eq!(
            w.cross_institution_percent,
            profile.workload.cross_institution_percent
        );
    }
}
