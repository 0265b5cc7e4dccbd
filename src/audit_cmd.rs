//! `specie audit --data-dir DIR` (or `--cluster FILE` for every node of a multi-process
//! cluster): opens a node's journal read-only, rebuilds every actor, and
//! checks the invariants that can be checked from it — and, given the acknowledgements a
//! client received, that none of them was lost.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use specie_actors::data_dir::offline_snapshot;
use specie_actors::institution::{ExchangeState, PayStep};
use specie_actors::member::offline_cluster_snapshot;
use specie_actors::{audit, DataDir};
use specie_protocol::SagaId;
use specie_runtime::topology::ClusterFile;
use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Arguments of `specie audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The node's data directory.
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    pub data_dir: Option<PathBuf>,
    /// A multi-process cluster's file: audit the whole cluster from every node's data
    /// directory (each actor read from the node it lives on). Stop the nodes first.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Write the machine-readable result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A file of acknowledged commits, one saga id (hex) per line, as `specie run --ack-log`
    /// writes them: each must be committed in the journal.
    #[arg(long)]
    pub acks: Option<PathBuf>,
}

/// Reads the saga ids of an acknowledgement log. A torn last line (the writer was killed
/// mid-write) is ignored; any other malformed line is an error.
fn read_acks(path: &Path) -> Result<Vec<SagaId>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let word = line.split_whitespace().next().unwrap_or("");
        let parsed = hex::decode(word)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok());
        match parsed {
            Some(bytes) => out.push(SagaId(bytes)),
            None if n + 1 == lines.len() && !complete => {}
            None => anyhow::bail!("{}:{}: not a saga id: {line:?}", path.display(), n + 1),
        }
    }
    Ok(out)
}

/// Runs `specie audit`; returns whether everything held.
pub fn run(args: &AuditArgs) -> Result<bool> {
    let (snapshot, source) = match (&args.data_dir, &args.cluster) {
        (Some(path), _) => {
            let dir = DataDir::open(path)?;
            (
                offline_snapshot(&dir)?,
                dir.journal_path().display().to_string(),
            )
        }
        (None, Some(path)) => {
            let file = ClusterFile::load(path)?;
            let snapshot = offline_cluster_snapshot(&file)?;
            (
                snapshot,
                format!("cluster {} ({} nodes)", path.display(), file.nodes.len()),
            )
        }
        (None, None) => anyhow::bail!("give --data-dir DIR or --cluster FILE"),
    };
    let report = audit(&snapshot, false);
    let mut committed = 0usize;
    let mut committed_sagas = HashSet::new();
    for inst in &snapshot.institutions {
        for (saga, p) in &inst.pays {
            if matches!(p.step, PayStep::Committing { .. } | PayStep::Committed) {
                committed += 1;
                committed_sagas.insert(*saga);
            }
        }
        committed += inst
            .exchanges
            .values()
            .filter(|(_, _, st)| *st == ExchangeState::Committed)
            .count();
    }
    let mut invariants: Map<String, Value> = report
        .invariants()
        .iter()
        .map(|(name, check)| (name.to_string(), Value::String(check.to_string())))
        .collect();
    let mut ok = report.ok();
    let mut acknowledged = Value::Null;
    if let Some(path) = &args.acks {
        let acks = read_acks(path)?;
        let missing: Vec<String> = acks
            .iter()
            .filter(|s| !committed_sagas.contains(s))
            .map(|s| s.to_string())
            .collect();
        let verdict = if missing.is_empty() {
            "ok".to_string()
        } else {
            ok = false;
            format!(
                "violated: {} acknowledged commits not committed in the journal, e.g. {}",
                missing.len(),
                missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        invariants.insert("no_lost_ack".into(), Value::String(verdict));
        acknowledged = json!({"checked": acks.len(), "missing": missing.len()});
    }
    let color = std::io::stdout().is_terminal();
    let paint = |good: bool, text: &str| match (color, good) {
        (false, _) => text.to_string(),
        (true, true) => format!("\x1b[32m{text}\x1b[0m"),
        (true, false) => format!("\x1b[31m{text}\x1b[0m"),
    };
    println!("specie audit — {source}");
    println!("  committed     {committed} sagas");
    println!(
        "  in flight     {} sagas (judged by their recorded decisions)",
        report.in_flight
    );
    for (name, verdict) in &invariants {
        let text = verdict.as_str().unwrap_or_default();
        println!("  {name:<16} {}", paint(text == "ok", text));
    }
    println!(
        "  result        {}",
        paint(ok, if ok { "ok" } else { "FAILED" })
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "ok": ok,
            "committed": committed,
            "in_flight": report.in_flight,
            "invariants": invariants,
            "acknowledged": acknowledged,
        });
        let text = serde_json::to_string_pretty(&doc).expect("serializes");
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}
