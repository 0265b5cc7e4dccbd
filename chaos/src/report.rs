//! Reports: the terminal summary, the JSON document, and a self-contained HTML page with an
//! SVG timeline of the faults against the operations' outcomes and latency.

use crate::history::OpType;
use crate::sim::RunResult;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// The command that replays a run exactly.
pub fn replay_command(r: &RunResult) -> String {
    let planted = r
        .planted
        .as_ref()
        .map(|p| format!(" --planted-bug {p}"))
        .unwrap_or_default();
    format!(
        "specie chaos replay {} --seed {}{planted}",
        r.origin, r.seed
    )
}

fn outcome_counts(r: &RunResult) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for e in r.history.entries() {
        match e.kind {
            OpType::Ok => c.0 += 1,
            OpType::Fail => c.1 += 1,
            OpType::Info => c.2 += 1,
            OpType::Invoke => {}
        }
    }
    c
}

/// The terminal summary of one run.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let planted = r
        .planted
        .as_deref()
        .map(|p| format!(", planted bug {p}"))
        .unwrap_or_default();
    let _ = writeln!(s, "specie chaos — {}, seed {}{planted}", r.scenario, r.seed);
    let (ok, fail, info) = outcome_counts(r);
    let _ = writeln!(
        s,
        "  run           {:.1} s simulated in {:.2} s wall ({:.0} simulated s per wall s)",
        r.sim_ms as f64 / 1000.0,
        r.wall_s,
        r.speed()
    );
    let _ = writeln!(s, "  operations    {} invoked: {ok} ok, {fail} fail, {info} info ({} arrivals found no idle wallet)", r.ops, r.skipped);
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
        "  faults        {} scheduled; injected: {}",
        r.faults.len(),
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        }
    );
    let n = &r.net;
    let _ = writeln!(
        s,
        "  network       {} sent, {} delivered, {} rejected, {} undeliverable, {} corrupted-but-valid dropped by the transport",
        n.sent, n.delivered, n.rejected, n.undeliverable, n.corrupt_dropped_by_transport
    );
    if !r.restarts.is_empty() {
        let restarts: Vec<String> = r.restarts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "  restarts      {}", restarts.join(", "));
    }
    let _ = writeln!(s, "  invariants");
    for (name, finding) in &r.invariants {
        let _ = writeln!(s, "    {name:<24} {finding}");
    }
    let _ = writeln!(s, "  history       sha256 {}", r.history_digest());
    if let Some(v) = &r.violation {
        let _ = writeln!(
            s,
            "  VIOLATION     {} at {:.3} s ({}): {}",
            v.invariant,
            v.at_ms as f64 / 1000.0,
            v.phase,
            v.facts
        );
    }
    if r.ok() {
        let _ = writeln!(s, "  result        ok");
    } else {
        let _ = writeln!(s, "  result        FAILED: {}", r.failed().join(", "));
        let _ = writeln!(s, "  replay        {}", replay_command(r));
    }
    s
}

/// The JSON document of one run.
pub fn json(r: &RunResult) -> Value {
    let (ok, fail, info) = outcome_counts(r);
    let invariants: serde_json::Map<String, Value> = r
        .invariants
        .iter()
        .map(|(n, f)| (n.to_string(), Value::String(f.to_string())))
        .collect();
    json!({
        "ok": r.ok(),
        "scenario": r.scenario,
        "seed": r.seed,
        "planted_bug": r.planted,
        "history_digest": r.history_digest(),
        "ops": r.ops,
        "outcomes": {"ok": ok, "fail": fail, "info": info},
        "faults_injected": r.faults_injected,
        "faults_scheduled": r.faults.len(),
        "sim_seconds": r.sim_ms as f64 / 1000.0,
        "wall_seconds": r.wall_s,
        "sim_seconds_per_wall_second": r.speed(),
        "invariants": invariants,
        "violation": r.violation.as_ref().map(|v| json!({
            "invariant": v.invariant, "at_s": v.at_ms as f64 / 1000.0, "phase": v.phase, "facts": v.facts,
        })),
        "restarts": r.restarts,
        "network": {
            "sent": r.net.sent, "delivered": r.net.delivered, "rejected": r.net.rejected,
            "undeliverable": r.net.undeliverable, "corrupt_dropped_by_transport": r.net.corrupt_dropped_by_transport,
        },
        "steady_state": r.steady.iter().map(|(n, p, l, c)| json!({"phase": n, "committed_percent": p, "p99_latency_ms": l, "operations": c})).collect::<Vec<_>>(),
        "replay": replay_command(r),
    })
}

/// The JSON document of a sweep over seeds.
pub fn sweep_json(results: &[RunResult]) -> Value {
    let failures: Vec<Value> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            json!({
                "seed": r.seed,
                "failed": r.failed(),
                "violation": r.violation.as_ref().map(|v| format!("{} at {:.3} s ({}): {}", v.invariant, v.at_ms as f64 / 1000.0, v.phase, v.facts)),
                "history_digest": r.history_digest(),
                "replay": replay_command(r),
            })
        })
        .collect();
    let sim: f64 = results.iter().map(|r| r.sim_ms as f64 / 1000.0).sum();
    let wall: f64 = results.iter().map(|r| r.wall_s).sum();
    let mut injected = std::collections::BTreeMap::<&str, u64>::new();
    for r in results {
        for (k, v) in &r.faults_injected {
            *injected.entry(k).or_default() += v;
        }
    }
    json!({
        "ok": failures.is_empty(),
        "scenario": results.first().map(|r| r.scenario.clone()),
        "seeds": results.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "runs": results.len(),
        "passed": results.iter().filter(|r| r.ok()).count(),
        "ops": results.iter().map(|r| r.ops).sum::<usize>(),
        "faults_injected": injected,
        "sim_seconds_per_wall_second": sim / wall.max(1e-9),
        "failures": failures,
        "results": results.iter().map(|r| json!({"seed": r.seed, "ok": r.ok(), "history_digest": r.history_digest(), "ops": r.ops})).collect::<Vec<_>>(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fault_color(kind: &str) -> &'static str {
    match kind {
        "delay" => "#8e7cc3",
        "loss" => "#e06666",
        "duplicate" => "#f6b26b",
        "reorder" => "#ffd966",
        "corrupt" => "#c27ba0",
        "partition" => "#cc0000",
        "kill" => "#000000",
        "pause" => "#666666",
        "clock_skew" => "#3d85c6",
        "fsync_error" => "#a61c00",
        "write_delay" => "#76a5af",
        _ => "#999999",
    }
}

/// A self-contained HTML page: the summary, and an SVG timeline of the phases, each fault
/// and every completed operation (time against latency, coloured by outcome), with the
/// violation marked.
pub fn html(r: &RunResult) -> String {
    const W: f64 = 1200.0;
    const LEFT: f64 = 230.0;
    const RIGHT: f64 = 20.0;
    const LANE: f64 = 14.0;
    const PLOT_H: f64 = 260.0;
    const RATE_H: f64 = 80.0;
    let span = r.sim_ms.max(1) as f64;
    let x = |ms: u64| LEFT + (W - LEFT - RIGHT) * (ms as f64 / span);
    let lanes = r.faults.len().min(60);
    let faults_top = 40.0;
    let plot_top = faults_top + LANE * lanes as f64 + 30.0;
    let rate_top = plot_top + PLOT_H + 30.0;
    let height = rate_top + RATE_H + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    // Phases.
    let phase_colors = [
        "#eeeeee", "#e8f4e8", "#fde9e7", "#e7eefd", "#e8f4e8", "#eeeeee",
    ];
    for (i, (name, a, b)) in r.phases.iter().enumerate() {
        let (xa, xb) = (x(*a), x(*b));
        let _ = write!(
            svg,
            r#"<rect x="{xa:.1}" y="10" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="24">{name}</text>"#,
            (xb - xa).max(1.0),
            height - 40.0,
            phase_colors[i % phase_colors.len()],
            xa + 3.0
        );
    }
    // Time axis.
    let step_s = ((r.sim_ms as f64 / 1000.0) / 12.0).ceil().max(1.0) as u64;
    let mut t = 0;
    while t * 1000 <= r.sim_ms {
        let xt = x(t * 1000);
        let _ = write!(
            svg,
            r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="30" y2="{:.1}" stroke="#cccccc" stroke-width="0.5"/><text x="{xt:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"##,
            height - 30.0,
            height - 16.0
        );
        t += step_s;
    }
    // Fault lanes.
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}" font-weight="bold">faults</text>"#,
        faults_top - 4.0
    );
    for (i, f) in r.faults.iter().take(lanes).enumerate() {
        let y = faults_top + LANE * i as f64;
        let kind = f.fault.kind.name();
        let (xa, xb) = (x(f.start_ms), x(f.end_ms));
        let label = esc(&f.fault.label());
        let _ = write!(
            svg,
            r#"<text x="4" y="{:.1}">{}</text><rect x="{xa:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{label}: {:.3}–{:.3} s</title></rect>"#,
            y + 10.0,
            if label.len() > 36 {
                format!(
                    "{}…",
                    &label[..label.char_indices().nth(34).map_or(label.len(), |(i, _)| i)]
                )
            } else {
                label.clone()
            },
            y + 2.0,
            (xb - xa).max(3.0),
            LANE - 4.0,
            fault_color(kind),
            f.start_ms as f64 / 1000.0,
            f.end_ms as f64 / 1000.0
        );
    }
    if r.faults.len() > lanes {
        let _ = write!(
            svg,
            r#"<text x="4" y="{:.1}">… and {} more faults</text>"#,
            faults_top + LANE * lanes as f64 + 10.0,
            r.faults.len() - lanes
        );
    }
    // Outcomes: completion time against latency (log scale).
    let max_latency = r
        .completions
        .iter()
        .map(|c| c.time_ms - c.invoked_ms)
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let ly = |ms: u64| {
        let v = ((ms.max(1)) as f64).ln() / max_latency.ln();
        plot_top + PLOT_H - PLOT_H * v.clamp(0.0, 1.0)
    };
    let _ = write!(
        svg,
        r##"<text x="4" y="{:.1}" font-weight="bold">operations</text><text x="4" y="{:.1}">latency (log scale)</text><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999999"/>"##,
        plot_top + 12.0,
        plot_top + 26.0,
        W - RIGHT,
        plot_top + PLOT_H,
        plot_top + PLOT_H
    );
    for tick in [1u64, 10, 100, 1000, 10_000, 100_000] {
        if (tick as f64) <= max_latency * 1.01 {
            let y = ly(tick);
            let label = if tick >= 1000 {
                format!("{} s", tick / 1000)
            } else {
                format!("{tick} ms")
            };
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0
            );
        }
    }
    for c in &r.completions {
        let (color, shape) = match c.kind {
            OpType::Ok => ("#38761d", "c"),
            OpType::Fail => ("#e69138", "c"),
            _ => ("#444444", "s"),
        };
        let (cx, cy) = (x(c.time_ms), ly(c.time_ms - c.invoked_ms));
        let title = format!(
            "{} {:?} after {} ms",
            c.f.name(),
            c.kind,
            c.time_ms - c.invoked_ms
        );
        if shape == "c" {
            let _ = write!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{color}" fill-opacity="0.6"><title>{title}</title></circle>"#
            );
        } else {
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="5" height="5" fill="{color}"><title>{title}</title></rect>"#,
                cx - 2.5,
                cy - 2.5
            );
        }
    }
    // Committed and failed operations per second.
    let seconds = (r.sim_ms / 1000 + 1) as usize;
    let mut ok = vec![0u32; seconds];
    let mut failed = vec![0u32; seconds];
    for c in &r.completions {
        let s = (c.time_ms / 1000) as usize;
        match c.kind {
            OpType::Ok => ok[s] += 1,
            _ => failed[s] += 1,
        }
    }
    let peak = ok
        .iter()
        .zip(&failed)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}" font-weight="bold">per second</text><text x="4" y="{:.1}">committed / not (peak {peak})</text>"#,
        rate_top + 12.0,
        rate_top + 26.0
    );
    for s in 0..seconds {
        let (xa, xb) = (x(s as u64 * 1000), x((s as u64 + 1) * 1000));
        let w = (xb - xa - 1.0).max(1.0);
        let ho = RATE_H * ok[s] as f64 / peak;
        let hf = RATE_H * failed[s] as f64 / peak;
        let _ = write!(
            svg,
            r##"<rect x="{xa:.1}" y="{:.1}" width="{w:.1}" height="{ho:.1}" fill="#38761d"><title>{}s: {} committed, {} not</title></rect><rect x="{xa:.1}" y="{:.1}" width="{w:.1}" height="{hf:.1}" fill="#e69138"/>"##,
            rate_top + RATE_H - ho,
            s,
            ok[s],
            failed[s],
            rate_top + RATE_H - ho - hf
        );
    }
    if let Some(v) = &r.violation {
        let xv = x(v.at_ms);
        let _ = write!(
            svg,
            r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="10" y2="{:.1}" stroke="#ff0000" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#ff0000" font-weight="bold">{} violated</text>"##,
            height - 30.0,
            xv + 4.0,
            plot_top - 8.0,
            esc(&v.invariant)
        );
    }
    svg.push_str("</svg>");

    let mut rows = String::new();
    for (name, finding) in &r.invariants {
        let class = if finding.is_ok() { "ok" } else { "bad" };
        let _ = write!(
            rows,
            r#"<tr><td>{name}</td><td class="{class}">{}</td></tr>"#,
            esc(&finding.to_string())
        );
    }
    let legend = crate::scenario::FaultKind::NAMES
        .iter()
        .filter(|k| r.faults.iter().any(|f| f.fault.kind.name() == **k))
        .map(|k| format!(r#"<span style="background:{};color:#fff;padding:1px 5px;margin-right:4px">{k}</span>"#, fault_color(k)))
        .collect::<String>();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>specie chaos — {name}, seed {seed}</title>
<style>body{{font-family:sans-serif;margin:20px}} pre{{background:#f6f6f6;padding:10px;overflow-x:auto}}
td{{padding:2px 10px;vertical-align:top}} .ok{{color:#38761d}} .bad{{color:#cc0000;font-weight:bold}}</style></head>
<body><h1>specie chaos — {name}, seed {seed}: {verdict}</h1>
<p>Time runs left to right (simulated seconds). Shaded bands are the phases; each fault is a bar in its
own lane; each dot is an operation at the moment it completed, placed by its latency:
<span class="ok">green = ok (committed)</span>, <span style="color:#e69138">orange = fail (refused or aborted)</span>,
dark squares = info (outcome unknown to the client). The bars at the bottom count outcomes per second.
A red line marks the violation that stopped the run.</p>
<p>{legend}</p>
{svg}
<h2>Invariants</h2><table>{rows}</table>
<h2>Summary</h2><pre>{summary}</pre>
</body></html>
"#,
        name = esc(&r.scenario),
        seed = r.seed,
        verdict = if r.ok() { "ok" } else { "FAILED" },
        summary = esc(&summary(r)),
    )
}
