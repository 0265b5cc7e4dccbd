//! `specie reconcile --demo`: reconciliation end to end in one process. Starts a node with the
//! platform's reconciler and one institution's, builds a batch of sample records, plants
//! differences of mixed kinds in the institution's copy, reconciles through the network, and
//! reports what was found, how many hashes it took, and whether the hash chain verifies.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use specie_actors::reconciler::sample::{plant, records};
use specie_actors::reconciler::{
    verify_anchored, Batch, BatchKey, BatchStatus, Finding, LocalReconcilers, ReconcilerLimits,
    BATCH_RECORDS_MAX, SHARD_COUNT, SHARD_FANOUT, SHARD_TREE_DEPTH,
};
use specie_protocol::reconcile::{
    BatchId, InconsistencyKind, LevelCount, RecordId, TransactionRecord,
};
use specie_protocol::InstitutionId;
use specie_runtime::{
    MemoryJournal, Network, Node, NodeSettings, RestartStrategy, SupervisionSettings, SystemClock,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `specie reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Run the self-contained demo: one batch, reconciled between an institution and the
    /// platform in this process.
    #[arg(long)]
    pub demo: bool,
    /// Records in the batch.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Differences to plant in the institution's copy (missing, extra, altered in turn).
    #[arg(long, default_value_t = 5)]
    pub plant: usize,
    /// Seed of the records and of the plants.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the machine-readable result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The institution of the demo.
const DEMO_INSTITUTION: InstitutionId = InstitutionId(0);
/// Longest the demo waits for the batch to be reconciled.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);
/// Findings listed on the terminal; the JSON lists them all.
const FINDINGS_SHOWN_MAX: usize = 20;

/// What one demo run measured.
struct Outcome {
    platform: BatchStatus,
    institution: BatchStatus,
    planted: BTreeMap<RecordId, InconsistencyKind>,
    chain_blocks: usize,
    chain: Result<(), String>,
    load_ms: f64,
    reconcile_ms: f64,
    messages: u64,
}

/// Runs `specie reconcile`; returns whether exactly the planted records were found.
pub fn run(args: &ReconcileArgs) -> Result<bool> {
    if !args.demo {
        bail!(
            "only `specie reconcile --demo` is available; continuous reconciliation inside \
             `specie run` is not wired in yet"
        );
    }
    if args.records.saturating_add(args.plant) > BATCH_RECORDS_MAX {
        bail!("--records plus --plant must be at most {BATCH_RECORDS_MAX} (the batch size limit)");
    }
    let system = actix::System::new();
    let outcome = system.block_on(demo(args))?;
    let ok = print(args, &outcome);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&to_json(args, &outcome, ok)).expect("serializes");
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

async fn demo(args: &ReconcileArgs) -> Result<Outcome> {
    let node = Node::start(
        Network::new(),
        Arc::new(MemoryJournal::new()),
        Arc::new(SystemClock),
        NodeSettings {
            arbiters: 2,
            mailbox_capacity: 64,
            supervision: SupervisionSettings {
                strategy: RestartStrategy::OneForOne,
                restart_intensity_max: 3,
                restart_window_ms: 10_000,
                restart_backoff_ms: 10,
                restart_backoff_max_ms: 1_000,
            },
            snapshot_entries_min: u64::MAX,
        },
    );
    let limits = ReconcilerLimits {
        retry_interval_ms: 200,
        retry_interval_max_ms: 2_000,
        ..ReconcilerLimits::default()
    };
    let reconcilers = LocalReconcilers::start(&node, [DEMO_INSTITUTION], limits);
    let key = BatchKey {
        institution: DEMO_INSTITUTION,
        batch_id: BatchId(1),
    };
    let platform_records: Vec<TransactionRecord> = records(args.seed, args.records);
    let planted = plant(&platform_records, args.plant, args.seed);

    let started = Instant::now();
    reconcilers
        .load_platform(Batch::new(key, platform_records)?)
        .await?;
    reconcilers
        .load_institution(Batch::new(key, planted.records)?)
        .await?;
    let loaded = Instant::now();
    let (platform, institution) = reconcilers.wait(key, DEMO_TIMEOUT).await?;
    let done = Instant::now();

    let chain = reconcilers.platform_snapshot().await?.chain;
    let anchor = institution
        .posted
        .clone()
        .context("the institution's post was never acknowledged")?;
    let verified =
        verify_anchored(&chain, anchor.height, anchor.block_hash).map_err(|e| e.to_string());
    let messages = node.network().stats().sent;
    node.shutdown();
    Ok(Outcome {
        platform,
        institution,
        planted: planted.planted,
        chain_blocks: chain.len(),
        chain: verified,
        load_ms: (loaded - started).as_secs_f64() * 1e3,
        reconcile_ms: (done - loaded).as_secs_f64() * 1e3,
        messages,
    })
}

fn found(status: &BatchStatus) -> BTreeMap<RecordId, InconsistencyKind> {
    status
        .findings
        .iter()
        .map(|f| (f.record_id, f.kind))
        .collect()
}

/// What went wrong, if anything: planted records not found, records found that were not
/// planted (or found with another kind), the institution told something else, the chain.
fn problems(o: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let platform = found(&o.platform);
    for (id, kind) in &o.planted {
        match platform.get(id) {
            None => out.push(format!("planted {kind} {id} not found")),
            Some(k) if k != kind => out.push(format!("planted {kind} {id} found as {k}")),
            Some(_) => {}
        }
    }
    for (id, kind) in &platform {
        if !o.planted.contains_key(id) {
            out.push(format!(
                "{id} reported {kind} but nothing was planted there"
            ));
        }
    }
    let report = o.institution.report.as_ref();
    if report != o.platform.report.as_ref() {
        out.push("the institution holds another report than the platform sent".into());
    }
    if let Err(e) = &o.chain {
        out.push(format!("hash chain: {e}"));
    }
    out
}

fn level_json(c: LevelCount) -> Value {
    json!({"compared": c.compared, "unequal": c.unequal})
}

fn to_json(args: &ReconcileArgs, o: &Outcome, ok: bool) -> Value {
    let c = o.platform.counts;
    let by_kind = |m: &BTreeMap<RecordId, InconsistencyKind>| {
        let mut counts = BTreeMap::new();
        for k in m.values() {
            *counts.entry(k.name()).or_insert(0u64) += 1;
        }
        counts
    };
    let found: Vec<Value> = o
        .platform
        .findings
        .iter()
        .map(|f| {
            json!({
                "record_id": f.record_id.0,
                "kind": f.kind.name(),
                "shard": f.shard,
                "planted": o.planted.get(&f.record_id) == Some(&f.kind),
            })
        })
        .collect();
    json!({
        "ok": ok,
        "seed": args.seed,
        "records": args.records,
        "planted": o.planted.len(),
        "planted_by_kind": by_kind(&o.planted),
        "found": found,
        "found_by_kind": by_kind(&self::found(&o.platform)),
        "problems": problems(o),
        "hashes_compared": c.hashes_compared(),
        "levels": {
            "batch": level_json(c.batch),
            "shard": level_json(c.shard),
            "record": level_json(c.record),
        },
        "shard_tree": {"shards": SHARD_COUNT, "fanout": SHARD_FANOUT, "depth": SHARD_TREE_DEPTH},
        "chain": {
            "blocks": o.chain_blocks,
            "verified": o.chain.is_ok(),
            "institution_block": o.institution.posted.as_ref().map(|a| json!({
                "height": a.height,
                "hash": a.block_hash.to_string(),
            })),
        },
        "messages": o.messages,
        "load_ms": round(o.load_ms),
        "reconcile_ms": round(o.reconcile_ms),
    })
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The facts of a finding in one line: what differs, or the one side's record.
fn facts(f: &Finding) -> String {
    let describe = |r: &TransactionRecord| {
        format!(
            "{} {} {} → {} at {}",
            r.kind.name(),
            r.amount,
            r.payer,
            r.payee,
            r.at_ms
        )
    };
    match (&f.platform, &f.institution) {
        (Some(p), Some(i)) => {
            let mut diffs = Vec::new();
            if p.saga_id != i.saga_id {
                diffs.push(format!("saga {} → {}", p.saga_id, i.saga_id));
            }
            if p.kind != i.kind {
                diffs.push(format!("kind {} → {}", p.kind.name(), i.kind.name()));
            }
            if p.payer != i.payer {
                diffs.push(format!("payer {} → {}", p.payer, i.payer));
            }
            if p.payee != i.payee {
                diffs.push(format!("payee {} → {}", p.payee, i.payee));
            }
            if p.amount != i.amount {
                diffs.push(format!("amount {} → {}", p.amount, i.amount));
            }
            if p.at_ms != i.at_ms {
                diffs.push(format!("at_ms {} → {}", p.at_ms, i.at_ms));
            }
            format!("platform → institution: {}", diffs.join(", "))
        }
        (Some(p), None) => format!("only at the platform: {}", describe(p)),
        (None, Some(i)) => format!("only at the institution: {}", describe(i)),
        (None, None) => String::new(),
    }
}

/// Prints the summary; returns whether the result is ok.
fn print(args: &ReconcileArgs, o: &Outcome) -> bool {
    let c = o.platform.counts;
    println!(
        "specie reconcile — demo, seed {}: {} records, {} differences planted at {}",
        args.seed,
        args.records,
        o.planted.len(),
        DEMO_INSTITUTION
    );
    println!(
        "  loaded        both sides hashed their records in {:.1} ms",
        o.load_ms
    );
    println!(
        "  chain         {} blocks (the platform's post and the institution's), {}",
        o.chain_blocks,
        match &o.chain {
            Ok(()) => "verified".to_string(),
            Err(e) => format!("NOT verified: {e}"),
        }
    );
    println!(
        "  batch         {} hash compared, {} unequal",
        c.batch.compared, c.batch.unequal
    );
    println!(
        "  shard         {} hashes compared, {} unequal (tree of {SHARD_COUNT} shards, fanout {SHARD_FANOUT}, depth {SHARD_TREE_DEPTH})",
        c.shard.compared, c.shard.unequal
    );
    println!(
        "  record        {} hashes compared, {} inconsistent",
        c.record.compared, c.record.unequal
    );
    let share = if args.records == 0 {
        0.0
    } else {
        100.0 * c.hashes_compared() as f64 / args.records as f64
    };
    println!(
        "  hashes        {} compared for {} records ({share:.2}%), {} messages, {:.1} ms",
        c.hashes_compared(),
        args.records,
        o.messages,
        o.reconcile_ms
    );
    for (n, f) in o.institution.findings.iter().enumerate() {
        if n == FINDINGS_SHOWN_MAX {
            println!(
                "                … and {} more (all in --json)",
                o.platform.findings.len() - n
            );
            break;
        }
        let label = if n == 0 { "found" } else { "" };
        println!(
            "  {label:<13} {:<14} {:<8} shard {:<5} {}",
            f.record_id.to_string(),
            f.kind.name(),
            f.shard,
            facts(f)
        );
    }
    let problems = problems(o);
    if problems.is_empty() {
        println!(
            "  result        ok: exactly the {} planted records found, reported to both sides",
            o.planted.len()
        );
    } else {
        println!("  result        NOT ok");
        for p in &problems {
            println!("                {p}");
        }
    }
    problems.is_empty()
}
