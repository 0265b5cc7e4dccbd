//! The bench report: the verdict, the terminal summary, the JSON document, and the report
//! folder (the JSON, one `.hgrm` per saga kind, and `plot.svg`).

use crate::bench::BenchMode;
use crate::floor::{floor_ratio, CryptoFloor};
use crate::histogram::{round3, Latency};
use crate::peak::PeakOutcome;
use crate::plot;
use crate::stats::{reasons_json, RunStats, Tally};
use serde_json::{json, Value};
use specie_actors::AuditReport;
use specie_runtime::{JournalStats, NetworkStats};
use std::io::Write;
use std::path::Path;

/// Memory the process used.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// Resident memory before the cluster started.
    pub rss_before_cluster_bytes: u64,
    /// Resident memory once genesis finished.
    pub rss_after_genesis_bytes: u64,
    /// Peak resident memory of the whole bench (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// (Resident after genesis − before the cluster) ÷ wallets.
    pub bytes_per_wallet: f64,
}

/// The run at half the sustainable peak.
#[derive(Debug, Clone)]
pub struct HalfPeak {
    /// Its offered rate.
    pub rate_per_s: f64,
    /// The p99 bound it is judged against.
    pub p99_bound_ms: f64,
    /// What it measured.
    pub stats: RunStats,
}

/// The peak finder's steps (each with its run) and result, as the JSON report's `peak`.
pub fn peak_json(o: &PeakOutcome, runs: &[RunStats], p99_bound_ms: f64) -> Value {
    json!({
        "candidate_per_s": o.candidate_per_s.map(round3),
        "sustainable_per_s": o.sustainable_per_s.map(round3),
        "p99_bound_ms": p99_bound_ms,
        "steps": o.steps.iter().zip(runs).map(|(s, r)| {
            let mut v = r.summary_json();
            v["stage"] = json!(s.stage.name());
            v["pass"] = json!(s.verdict.pass);
            v["why"] = json!(s.verdict.why);
            v
        }).collect::<Vec<_>>(),
    })
}

/// The run at half the peak, as the JSON report's `at_half_peak`.
pub fn half_peak_json(h: &HalfPeak) -> Value {
    json!({
        "rate_per_s": round3(h.rate_per_s),
        "throughput_per_s": round3(h.stats.throughput_per_s()),
        "latency_ms": h.stats.all.latency.summary().to_json(),
        "p99_ms": round3(h.stats.all.latency.quantile_ms(0.99)),
        "p99_within_bound": h.stats.all.latency.quantile_ms(0.99) <= h.p99_bound_ms,
    })
}

/// The peak finder's lines of the terminal report.
pub fn peak_text(s: &mut String, o: &PeakOutcome, runs: &[RunStats], p99_bound_ms: f64) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "  peak search   {} steps (p99 bound {} ms)",
        o.steps.len(),
        p99_bound_ms
    );
    for (step, run) in o.steps.iter().zip(runs) {
        let _ = writeln!(
            s,
            "    {:<8} offered {:>8.0}/s  achieved {:>8.0}/s  p99 {:>8.2} ms  {}",
            step.stage.name(),
            run.offered_per_s(),
            run.achieved_per_s(),
            run.all.latency.quantile_ms(0.99),
            if step.verdict.pass {
                "pass".to_string()
            } else {
                format!("fail: {}", step.verdict.why.join("; "))
            }
        );
    }
    match o.sustainable_per_s {
        Some(r) => {
            let _ = writeln!(
                s,
                "  sustainable   {r:.0}/s offered (candidate {:.0}/s)",
                o.candidate_per_s.unwrap_or(0.0)
            );
        }
        None => {
            let _ = writeln!(s, "  sustainable   none confirmed");
        }
    }
}

/// The lines of the terminal report that describe a measured run: throughput, latency, each
/// saga kind, and the aborts by reason.
pub fn run_text(s: &mut String, m: &RunStats) {
    use std::fmt::Write as _;
    let l = m.all.latency.summary();
    let _ = writeln!(
        s,
        "  throughput    {:.0} committed/s (offered {:.0}/s, achieved {:.0}/s, shed {})",
        m.throughput_per_s(),
        m.offered_per_s(),
        m.achieved_per_s(),
        m.shed
    );
    let _ = writeln!(
        s,
        "  latency       p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    for (kind, t) in &m.by_kind {
        let k = t.latency.summary();
        let _ = writeln!(
            s,
            "  {:<28}{:>8} committed {:>6} aborted  p50 {:>7.2} ms  p99 {:>7.2} ms",
            kind.name(),
            t.committed,
            t.aborted,
            k.p50_ms,
            k.p99_ms
        );
    }
    if !m.all.by_reason.is_empty() {
        let reasons: Vec<String> = m
            .all
            .by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let _ = writeln!(s, "  aborted by    {}", reasons.join(", "));
    }
}

/// The half-peak line of the terminal report.
pub fn half_peak_text(s: &mut String, h: &HalfPeak) {
    use std::fmt::Write as _;
    let p99 = h.stats.all.latency.quantile_ms(0.99);
    let _ = writeln!(
        s,
        "  half peak     {:.0}/s: p99 {:.2} ms ({} the {} ms bound)",
        h.rate_per_s,
        p99,
        if p99 <= h.p99_bound_ms {
            "within"
        } else {
            "above"
        },
        h.p99_bound_ms
    );
}

/// Everything a bench measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Profile name.
    pub profile: String,
    /// Profile description.
    pub description: String,
    /// What ran.
    pub mode: BenchMode,
    /// Whether the journal was durable.
    pub durable: bool,
    /// Seed.
    pub seed: u64,
    /// Wallets in the cluster.
    pub wallets: u64,
    /// Institutions in the cluster.
    pub institutions: usize,
    /// Arbiters (actor threads).
    pub arbiters: usize,
    /// Cores available to the process.
    pub cores: usize,
    /// The profile's p99 bound.
    pub p99_bound_ms: f64,
    /// Time to start the cluster and fund every wallet.
    pub genesis_s: f64,
    /// The measured run the headline figures come from: the run itself, or for peak finding
    /// the confirmation repeats at the sustainable peak, combined.
    pub main: RunStats,
    /// Every run, in order.
    pub runs: Vec<RunStats>,
    /// The peak finder's steps and result.
    pub peak: Option<PeakOutcome>,
    /// The run at half the sustainable peak.
    pub half_peak: Option<HalfPeak>,
    /// The crypto floor (absent only when a test skipped it).
    pub floor: Option<CryptoFloor>,
    /// Memory.
    pub memory: Memory,
    /// The audit after the last run.
    pub audit: AuditReport,
    /// Whether the network went quiet before the audit.
    pub quiescent: bool,
    /// Operations of the driver still pending at the end.
    pub left_pending: usize,
    /// Journal counters at the end.
    pub journal: JournalStats,
    /// Journal counters once genesis finished.
    pub journal_after_genesis: JournalStats,
    /// Network counters at the end.
    pub network: NetworkStats,
    /// Network counters once genesis finished.
    pub network_after_genesis: NetworkStats,
    /// Escalations (a supervisor gave up).
    pub escalations: Vec<String>,
    /// Restarts by actor kind.
    pub restarts: Vec<(&'static str, u64)>,
    /// Wall time of the whole bench.
    pub wall_s: f64,
}

impl BenchReport {
    /// Committed pay sagas per second of the headline run.
    pub fn throughput_per_s(&self) -> f64 {
        self.main.throughput_per_s()
    }

    /// `floor_ratio`, when the floor was measured.
    pub fn floor_ratio(&self) -> Option<f64> {
        self.floor
            .as_ref()
            .map(|f| floor_ratio(self.main.pay_committed_per_s(), f))
    }

    /// Every reason the bench failed; empty when it is `ok`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, check) in self.audit.invariants() {
            if !check.is_ok() {
                p.push(format!("audit: {name} {check}"));
            }
        }
        if self.audit.in_flight > 0 {
            p.push(format!(
                "audit: {} sagas still in flight",
                self.audit.in_flight
            ));
        }
        if !self.quiescent {
            p.push("the cluster did not go quiet before the audit".into());
        }
        if self.left_pending > 0 {
            p.push(format!(
                "{} operations never got an outcome",
                self.left_pending
            ));
        }
        for r in &self.runs {
            let committed = r.planted_committed();
            if !committed.is_empty() {
                p.push(format!(
                    "{}: planted invalid operations committed: {}",
                    r.label,
                    committed.join(", ")
                ));
            }
            if r.submit_errors > 0 {
                p.push(format!(
                    "{}: {} operations could not be handed to their wallet",
                    r.label, r.submit_errors
                ));
            }
        }
        for e in &self.escalations {
            p.push(format!("escalation: {e}"));
        }
        if self.mode == BenchMode::FindPeak
            && self
                .peak
                .as_ref()
                .and_then(|o| o.sustainable_per_s)
                .is_none()
        {
            p.push("the peak finder confirmed no sustainable rate".into());
        }
        if self.main.all.finished() == 0 {
            p.push("no operation finished in the measured run".into());
        }
        p
    }

    /// Whether the bench passed: the audit holds, everything finished, nothing planted
    /// committed.
    pub fn ok(&self) -> bool {
        self.problems().is_empty()
    }

    fn all_latency(&self) -> &Latency {
        &self.main.all.latency
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        let main = &self.main;
        let floor = self.floor.as_ref();
        let journal_json = |j: &JournalStats| {
            json!({
                "batches": j.batches, "entries": j.entries, "fsyncs": j.fsyncs,
                "commit_seconds": round3(j.commit_seconds),
                "entries_per_batch": round3(if j.batches > 0 { j.entries as f64 / j.batches as f64 } else { 0.0 }),
            })
        };
        let workload_journal = JournalStats {
            batches: self.journal.batches - self.journal_after_genesis.batches,
            entries: self.journal.entries - self.journal_after_genesis.entries,
            fsyncs: self.journal.fsyncs - self.journal_after_genesis.fsyncs,
            commit_seconds: self.journal.commit_seconds - self.journal_after_genesis.commit_seconds,
        };
        let sent_in_workload = self.network.sent - self.network_after_genesis.sent;
        let finished_all: u64 = self.runs.iter().map(|r| r.all.finished()).sum();
        json!({
            "ok": self.ok(),
            "profile": self.profile,
            "description": self.description,
            "mode": self.mode.name(),
            "durable": self.durable,
            "seed": self.seed,
            "cluster": {"wallets": self.wallets, "institutions": self.institutions, "arbiters": self.arbiters, "cores": self.cores},
            "genesis_s": round3(self.genesis_s),
            "run": main.label,
            "duration_s": round3(main.duration_s),
            "throughput_per_s": round3(self.throughput_per_s()),
            "offered_per_s": round3(main.offered_per_s()),
            "achieved_per_s": round3(main.achieved_per_s()),
            "committed": main.all.committed,
            "aborted": main.all.aborted,
            "aborted_by_reason": reasons_json(&main.all.by_reason),
            "shed": main.shed,
            "withdrawn": main.withdrawn,
            "pay_throughput_per_s": round3(main.pay_committed_per_s()),
            "unfinished": main.unfinished,
            "latency_ms": main.all.latency.summary().to_json(),
            "send_lag_ms": main.send_lag.summary().to_json(),
            "by_kind": main.by_kind_json(),
            "planted_refusals": main.planted_json(),
            "cpu": {"seconds": round3(main.cpu_s), "percent_of_one_core": round3(main.cpu_percent()),
                    "cores": self.cores, "us_per_committed": round3(main.cpu_us_per_committed()),
                    "machine_pressure_percent": main.cpu_pressure_percent().map(round3)},
            "peak_rss_bytes": self.memory.peak_rss_bytes,
            "rss_before_cluster_bytes": self.memory.rss_before_cluster_bytes,
            "rss_after_genesis_bytes": self.memory.rss_after_genesis_bytes,
            "bytes_per_wallet": round3(self.memory.bytes_per_wallet),
            "crypto_floor_verifies_per_s": floor.map(|f| round3(f.verifies_per_s)),
            "crypto_floor": floor.map(|f| json!({
                "threads": f.threads, "seconds": f.seconds,
                "per_thread_per_s": f.per_thread_per_s.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
                "per_thread_per_cpu_s": f.per_thread_per_cpu_s.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
            })),
            "floor_ratio": self.floor_ratio().map(|r| (r * 10_000.0).round() / 10_000.0),
            "peak": self.peak.as_ref().map(|o| peak_json(o, &self.runs, self.p99_bound_ms)),
            "at_half_peak": self.half_peak.as_ref().map(half_peak_json),
            "intervals": main.intervals.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
            "journal": journal_json(&self.journal),
            "journal_workload": journal_json(&workload_journal),
            "network": {
                "sent": self.network.sent, "delivered": self.network.delivered, "rejected": self.network.rejected,
                "dropped": self.network.dropped, "undeliverable": self.network.undeliverable,
                "envelopes_per_operation": round3(if finished_all > 0 { sent_in_workload as f64 / finished_all as f64 } else { 0.0 }),
            },
            "invariants": Value::Object(self.audit.invariants().iter().map(|(n, c)| (n.to_string(), json!(c.to_string()))).collect()),
            "audit_in_flight": self.audit.in_flight,
            "quiescent": self.quiescent,
            "restarts": Value::Object(self.restarts.iter().map(|(k, n)| (k.to_string(), json!(n))).collect()),
            "escalations": self.escalations,
            "problems": self.problems(),
            "wall_s": round3(self.wall_s),
        })
    }

    /// The terminal summary.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.main;
        let _ = writeln!(
            s,
            "specie bench — profile {}, {} ({}), {} wallets at {} institutions, {} arbiters on {} cores",
            self.profile,
            self.mode.name(),
            if self.durable { "durable: redb group commit + fsync" } else { "in memory" },
            self.wallets,
            self.institutions,
            self.arbiters,
            self.cores
        );
        let _ = writeln!(s, "  genesis       {:.2} s", self.genesis_s);
        if let Some(o) = &self.peak {
            peak_text(&mut s, o, &self.runs, self.p99_bound_ms);
        }
        let _ = writeln!(s, "  measured      {} — {:.2} s", m.label, m.duration_s);
        run_text(&mut s, m);
        if let Some(h) = &self.half_peak {
            half_peak_text(&mut s, h);
        }
        let _ = writeln!(
            s,
            "  cpu           {:.0}% of one core ({} cores), {:.0} µs of CPU per committed saga{}",
            m.cpu_percent(),
            self.cores,
            m.cpu_us_per_committed(),
            match m.cpu_pressure_percent() {
                Some(p) =>
                    format!("; some task on the machine waited for a CPU {p:.0}% of the time"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "  memory        peak RSS {:.1} MiB, {:.0} bytes per wallet",
            self.memory.peak_rss_bytes as f64 / (1 << 20) as f64,
            self.memory.bytes_per_wallet
        );
        match (&self.floor, self.floor_ratio()) {
            (Some(f), Some(r)) => {
                let _ = writeln!(
                    s,
                    "  crypto floor  {:.0} Ed25519 verifies/s on {} threads; floor_ratio {:.3}",
                    f.verifies_per_s, f.threads, r
                );
            }
            _ => {
                let _ = writeln!(s, "  crypto floor  not measured");
            }
        }
        if self.durable {
            let j = &self.journal;
            let _ = writeln!(
                s,
                "  journal       {} group commits, {:.1} entries each, {:.2} ms per commit",
                j.batches,
                if j.batches > 0 {
                    j.entries as f64 / j.batches as f64
                } else {
                    0.0
                },
                if j.batches > 0 {
                    1000.0 * j.commit_seconds / j.batches as f64
                } else {
                    0.0
                }
            );
        }
        let _ = writeln!(s, "  audit");
        for (name, check) in self.audit.invariants() {
            let _ = writeln!(s, "    {name:<16} {check}");
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "  result        ok");
        } else {
            let _ = writeln!(s, "  result        NOT ok");
            for p in problems {
                let _ = writeln!(s, "    {p}");
            }
        }
        s
    }

    /// Writes the JSON document to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON serializes");
        std::fs::write(path, text + "\n")
    }

    /// Writes the report folder: `bench.json`, `plot.svg`, and `latency-<kind>.hgrm` for
    /// every kind and for all operations together (and `half-peak-latency-all.hgrm`).
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        self.write_json(&dir.join("bench.json"))?;
        written.push("bench.json".to_string());
        let hgrm =
            |name: &str, latency: &Latency, written: &mut Vec<String>| -> std::io::Result<()> {
                let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
                latency.write_hgrm(&mut f)?;
                f.flush()?;
                written.push(name.to_string());
                Ok(())
            };
        hgrm("latency-all.hgrm", self.all_latency(), &mut written)?;
        for (kind, Tally { latency, .. }) in &self.main.by_kind {
            hgrm(
                &format!("latency-{}.hgrm", kind.name()),
                latency,
                &mut written,
            )?;
        }
        if let Some(h) = &self.half_peak {
            hgrm(
                "half-peak-latency-all.hgrm",
                &h.stats.all.latency,
                &mut written,
            )?;
        }
        let intervals: Vec<_> = self
            .runs
            .iter()
            .flat_map(|r| r.intervals.iter().cloned())
            .collect();
        let title = format!(
            "specie bench {} — {} — {:.0} committed/s, p99 {:.1} ms{}",
            self.profile,
            self.main.label,
            self.throughput_per_s(),
            self.main.all.latency.quantile_ms(0.99),
            if self.durable { ", durable" } else { "" }
        );
        std::fs::write(
            dir.join("plot.svg"),
            plot::render(&title, &intervals, self.all_latency()),
        )?;
        written.push("plot.svg".to_string());
        Ok(written)
    }
}
