//! The report of `specie run`: the terminal summary and the JSON file.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use specie_actors::reconciler::{FeedSettings, FeedSummary};
use specie_actors::AuditReport;
use specie_protocol::AbortReason;
use specie_runtime::config::Config;
use specie_runtime::journal::JournalStats;
use specie_runtime::NetworkStats;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Latencies are recorded in microseconds, from 1 µs to 60 s, at 3 significant figures.
const LATENCY_US_MAX: u64 = 60_000_000;

/// Outcomes and latencies of one saga kind.
pub struct KindStats {
    committed: u64,
    aborted: u64,
    latency_us: Histogram<u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            committed: 0,
            aborted: 0,
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
        }
    }
}

/// Requests the workload planted that must be refused.
#[derive(Default)]
pub struct Planted {
    /// How many were sent.
    pub planted: u64,
    /// How many were refused with the expected reason.
    pub refused_as_expected: u64,
    /// The others, with their outcomes.
    pub other: Vec<String>,
}

/// Everything `specie run` reports.
pub struct RunReport {
    seed: u64,
    institutions: usize,
    wallets: u64,
    pub genesis_s: f64,
    pub duration_s: f64,
    by_kind: BTreeMap<&'static str, KindStats>,
    all: KindStats,
    aborted_by_reason: BTreeMap<&'static str, u64>,
    pub planted: BTreeMap<&'static str, Planted>,
    /// Committed payments the workload's model could not afford (must stay zero).
    pub model_mismatches: u64,
    /// Operations with no outcome when the run ended.
    pub unfinished: usize,
    pub quiescent: bool,
    pub network: NetworkStats,
    pub journal: JournalStats,
    pub restarts: Vec<(&'static str, u64)>,
    pub audit: Option<AuditReport>,
    /// Whether the journal was durable (a data directory).
    pub durable: bool,
    /// Which run of the data directory this was (1 without one).
    pub run_number: u64,
    /// Wall time from start to the end of the drain, for per-second journal figures.
    pub wall_s: f64,
    /// Failures writing the acknowledgement log.
    pub ack_log_errors: Vec<String>,
    /// `--workload`: "pay" or "mixed".
    pub workload: &'static str,
    /// Proximity negotiations (mixed workload): (agreed, refused).
    pub negotiation: Option<(u64, u64)>,
    /// Offline double spends the issuers detected (mixed workload).
    pub offline_double_spends_detected: Option<u64>,
    /// Continuous reconciliation: its settings and what it did, flushed at the end of the run.
    pub reconciliation: Option<(FeedSettings, FeedSummary)>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

impl RunReport {
    /// An empty report for a run of `config` with `seed`.
    pub fn new(seed: u64, config: &Config) -> RunReport {
        RunReport {
            seed,
            institutions: config.cluster.institutions.len(),
            wallets: config.cluster.wallets,
            genesis_s: 0.0,
            duration_s: 0.0,
            by_kind: BTreeMap::new(),
            all: KindStats::new(),
            aborted_by_reason: BTreeMap::new(),
            planted: BTreeMap::new(),
            model_mismatches: 0,
            unfinished: 0,
            quiescent: false,
            network: NetworkStats::default(),
            journal: JournalStats::default(),
            restarts: Vec::new(),
            audit: None,
            durable: false,
            run_number: 1,
            wall_s: 0.0,
            ack_log_errors: Vec::new(),
            workload: "pay",
            negotiation: None,
            offline_double_spends_detected: None,
            reconciliation: None,
        }
    }

    /// Lists these kinds in `by_kind` even when none of them finished (a mixed run reports
    /// every kind it drives).
    pub fn declare_kinds(&mut self, kinds: &[&'static str]) {
        for kind in kinds {
            self.by_kind.entry(kind).or_insert_with(KindStats::new);
        }
    }

    /// Records one finished operation.
    pub fn record(
        &mut self,
        kind: &'static str,
        result: Result<(), AbortReason>,
        latency: Duration,
    ) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_US_MAX);
        let stats = self.by_kind.entry(kind).or_insert_with(KindStats::new);
        for s in [stats, &mut self.all] {
            match result {
                Ok(()) => s.committed += 1,
                Err(_) => s.aborted += 1,
            }
            s.latency_us.record(us).expect("clamped into range");
        }
        if let Err(reason) = result {
            *self.aborted_by_reason.entry(reason.name()).or_default() += 1;
        }
    }

    /// Sagas committed.
    pub fn committed(&self) -> u64 {
        self.all.committed
    }

    /// Sagas aborted.
    pub fn aborted(&self) -> u64 {
        self.all.aborted
    }

    fn planted_ok(&self) -> bool {
        self.planted
            .values()
            .all(|p| p.refused_as_expected == p.planted)
    }

    fn reconciliation_ok(&self) -> bool {
        self.reconciliation.as_ref().is_none_or(|(_, s)| s.ok())
    }

    /// Whether the run is clean: every invariant holds, every planted request was refused for
    /// the right reason, every operation finished, the cluster went quiet, and every
    /// reconciliation batch agreed.
    pub fn ok(&self) -> bool {
        let audit_ok = self
            .audit
            .as_ref()
            .is_some_and(|a| a.ok() && a.in_flight == 0);
        audit_ok
            && self.planted_ok()
            && self.unfinished == 0
            && self.quiescent
            && self.model_mismatches == 0
            && self.ack_log_errors.is_empty()
            && self.reconciliation_ok()
    }

    fn throughput(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.all.committed as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// The JSON document of `--json`.
    pub fn to_json(&self) -> Value {
        let by_kind: Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    json!({"committed": s.committed, "aborted": s.aborted, "latency_ms": latency_json(&s.latency_us)}),
                )
            })
            .collect();
        let invariants: Map<String, Value> = self
            .audit
            .iter()
            .flat_map(|a| a.invariants())
            .map(|(name, check)| (name.to_string(), Value::String(check.to_string())))
            .collect();
        let planted: Map<String, Value> = self
            .planted
            .iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    json!({"planted": p.planted, "refused_as_expected": p.refused_as_expected, "other": p.other}),
                )
            })
            .collect();
        let restarts: Map<String, Value> = self
            .restarts
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        json!({
            "ok": self.ok(),
            "seed": self.seed,
            "institutions": self.institutions,
            "wallets": self.wallets,
            "genesis_s": self.genesis_s,
            "duration_s": self.duration_s,
            "committed": self.all.committed,
            "aborted": self.all.aborted,
            "throughput_per_s": self.throughput(),
            "latency_ms": latency_json(&self.all.latency_us),
            "aborted_by_reason": self.aborted_by_reason,
            "by_kind": by_kind,
            "planted_refusals": planted,
            "workload": self.workload,
            "negotiation": self.negotiation.map(|(agreed, refused)| json!({"agreed": agreed, "refused": refused})),
            "offline_double_spends_detected": self.offline_double_spends_detected,
            "invariants": invariants,
            "in_flight": self.audit.as_ref().map_or(0, |a| a.in_flight),
            "unfinished": self.unfinished,
            "quiescent": self.quiescent,
            "network": {
                "sent": self.network.sent,
                "delivered": self.network.delivered,
                "rejected": self.network.rejected,
                "dropped": self.network.dropped,
                "undeliverable": self.network.undeliverable,
            },
            "durable": self.durable,
            "run": self.run_number,
            "journal": {
                "batches": self.journal.batches,
                "entries": self.journal.entries,
                "entries_per_batch": self.entries_per_batch(),
                "fsyncs": self.journal.fsyncs,
                "fsyncs_per_s": self.fsyncs_per_s(),
                "commit_seconds": self.journal.commit_seconds,
            },
            "restarts": restarts,
            "reconciliation": self.reconciliation.as_ref().map(|(settings, s)| reconciliation_json(settings, s)),
        })
    }

    fn entries_per_batch(&self) -> f64 {
        if self.journal.batches > 0 {
            self.journal.entries as f64 / self.journal.batches as f64
        } else {
            0.0
        }
    }

    fn fsyncs_per_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.journal.fsyncs as f64 / self.wall_s
        } else {
            0.0
        }
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("report serializes");
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// Prints the terminal summary (colours only on a terminal).
    pub fn print(&self, color: bool) {
        let paint = |ok: bool, text: &str| match (color, ok) {
            (false, _) => text.to_string(),
            (true, true) => format!("\x1b[32m{text}\x1b[0m"),
            (true, false) => format!("\x1b[31m{text}\x1b[0m"),
        };
        let h = &self.all.latency_us;
        let workload = if self.workload == "pay" {
            String::new()
        } else {
            format!(", {} workload", self.workload)
        };
        println!(
            "specie run — seed {}, {} institutions, {} wallets{workload}",
            self.seed, self.institutions, self.wallets
        );
        println!(
            "  genesis       {:.2} s (accounts opened, coins exchanged)",
            self.genesis_s
        );
        println!(
            "  sagas         {} committed, {} aborted in {:.2} s — {:.0} committed/s",
            self.all.committed,
            self.all.aborted,
            self.duration_s,
            self.throughput()
        );
        println!(
            "  latency       p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
        for (kind, s) in &self.by_kind {
            println!(
                "  {kind:<13} {} committed, {} aborted, p99 {:.2} ms",
                s.committed,
                s.aborted,
                ms(s.latency_us.value_at_quantile(0.99))
            );
        }
        if !self.aborted_by_reason.is_empty() {
            let reasons: Vec<String> = self
                .aborted_by_reason
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            println!("  aborted by    {}", reasons.join(", "));
        }
        if let Some((agreed, refused)) = self.negotiation {
            println!("  negotiation   {agreed} agreed, {refused} refused");
        }
        if let Some(n) = self.offline_double_spends_detected {
            println!("  offline       {n} double spends detected and attributed");
        }
        for (name, p) in &self.planted {
            let ok = p.refused_as_expected == p.planted;
            println!(
                "  planted       {name}: {} sent, {} refused as expected {}",
                p.planted,
                p.refused_as_expected,
                paint(ok, if ok { "ok" } else { "MISSED" })
            );
            for other in p.other.iter().take(3) {
                println!("                  {other}");
            }
        }
        println!(
            "  network       {} envelopes sent, {} rejected, {} undeliverable",
            self.network.sent, self.network.rejected, self.network.undeliverable
        );
        if self.durable {
            println!(
                "  journal       {} group commits, {:.1} entries per commit, {:.0} fsyncs/s (durable, run {})",
                self.journal.batches,
                self.entries_per_batch(),
                self.fsyncs_per_s(),
                self.run_number
            );
        } else {
            println!(
                "  journal       {} appends, {:.2} entries each (in memory)",
                self.journal.batches,
                self.entries_per_batch()
            );
        }
        for e in &self.ack_log_errors {
            println!("  {}", paint(false, &format!("ack log       {e}")));
        }
        if !self.restarts.is_empty() {
            let r: Vec<String> = self
                .restarts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("  restarts      {}", r.join(", "));
        }
        if self.unfinished > 0 || !self.quiescent {
            println!(
                "  {}",
                paint(
                    false,
                    &format!(
                        "unfinished    {} operations; quiescent: {}",
                        self.unfinished, self.quiescent
                    )
                )
            );
        }
        if self.model_mismatches > 0 {
            println!(
                "  {}",
                paint(
                    false,
                    &format!(
                        "model         {} payments beyond the payer's means",
                        self.model_mismatches
                    )
                )
            );
        }
        if let Some((_, r)) = &self.reconciliation {
            println!(
                "  reconcile     {} batches: {} agreed, {} inconsistent{} — {} hashes compared",
                r.batches,
                r.agreed,
                r.inconsistent,
                if r.unfinished > 0 {
                    format!(", {} unfinished", r.unfinished)
                } else {
                    String::new()
                },
                r.hashes_compared()
            );
            println!(
                "                records {} institution / {} platform ({:.2} / {:.2})",
                r.institution.records,
                r.platform.records,
                r.institution.amount as f64 / 100.0,
                r.platform.amount as f64 / 100.0
            );
            let findings = r.findings_total();
            let kinds: Vec<String> = r
                .findings_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let line = if findings == 0 {
                "findings      none".to_string()
            } else {
                format!("findings      {findings}: {}", kinds.join(", "))
            };
            println!("  {}", paint(findings == 0, &line));
            for f in r.findings.iter().take(5) {
                println!(
                    "                {} {} at {} batch {} ({})",
                    f.kind.name(),
                    f.record_id,
                    f.institution,
                    f.batch_id.0,
                    f.record_kind.map_or("?", |k| k.name())
                );
            }
            let oddities = [
                ("late", r.late_records),
                ("conflicting", r.conflicting_records),
                ("duplicate", r.duplicate_records),
                ("stale", r.stale_records),
            ];
            let odd: Vec<String> = oddities
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !odd.is_empty() {
                println!("                records {}", odd.join(", "));
            }
        }
        if let Some(a) = &self.audit {
            println!("  audit");
            for (name, check) in a.invariants() {
                println!(
                    "    {name:<16} {}",
                    paint(check.is_ok(), &check.to_string())
                );
            }
            if a.in_flight > 0 {
                println!(
                    "    {}",
                    paint(false, &format!("{} sagas still in flight", a.in_flight))
                );
            }
        }
        println!(
            "  result        {}",
            paint(self.ok(), if self.ok() { "ok" } else { "FAILED" })
        );
    }
}

/// The `reconciliation` section of the JSON report.
fn reconciliation_json(settings: &FeedSettings, r: &FeedSummary) -> Value {
    let level = |l: specie_protocol::reconcile::LevelCount| json!({"compared": l.compared, "unequal": l.unequal});
    let by_kind: Map<String, Value> = r
        .records_by_kind
        .iter()
        .map(|(k, (i, p))| (k.to_string(), json!({"institution": i, "platform": p})))
        .collect();
    let findings: Vec<Value> = r
        .findings
        .iter()
        .map(|f| {
            json!({
                "institution": f.institution.0,
                "batch_id": f.batch_id.0,
                "record_id": f.record_id.0,
                "kind": f.kind.name(),
                "saga": f.saga.map(|s| s.to_string()),
                "record_kind": f.record_kind.map(|k| k.name()),
            })
        })
        .collect();
    json!({
        "ok": r.ok(),
        "batch_interval_ms": settings.batch_interval_ms,
        "close_after_ms": settings.close_after_ms,
        "batches": r.batches,
        "reconciled": r.reconciled,
        "agreed": r.agreed,
        "inconsistent": r.inconsistent,
        "unfinished": r.unfinished,
        "records": {"institution": r.institution.records, "platform": r.platform.records},
        "amount_fen": {"institution": r.institution.amount, "platform": r.platform.amount},
        "records_by_kind": by_kind,
        "hashes_compared": r.hashes_compared(),
        "levels": {
            "batch": level(r.levels.batch),
            "shard": level(r.levels.shard),
            "record": level(r.levels.record),
        },
        "findings_total": r.findings_total(),
        "findings_by_kind": r.findings_by_kind,
        "findings": findings,
        "late_records": r.late_records,
        "stale_records": r.stale_records,
        "duplicate_records": r.duplicate_records,
        "conflicting_records": r.conflicting_records,
        "open_records": r.open_records,
    })
}
