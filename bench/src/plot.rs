//! A self-contained SVG of a bench: throughput over time (offered and achieved), latency over
//! time (p50, p99, max per interval, log scale), and the latency distribution of the measured
//! run (HdrHistogram's percentile plot: latency against 1/(1 − percentile), log scales).

use crate::histogram::Latency;
use crate::stats::Interval;
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 140.0;
const MARGIN_TOP: f64 = 40.0;
const GAP: f64 = 70.0;

/// One series of a panel.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

/// Axis scaling.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    Log10,
}

impl Scale {
    fn map(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log10 => v.max(1e-6).log10(),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64, scale: Scale) -> Vec<f64> {
    match scale {
        Scale::Log10 => {
            let (a, b) = (
                lo.max(1e-6).log10().floor() as i32,
                hi.max(1e-6).log10().ceil() as i32,
            );
            (a..=b).map(|e| 10f64.powi(e)).collect()
        }
        Scale::Linear => {
            let span = (hi - lo).max(1e-9);
            let raw = span / 5.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|s| span / s <= 6.0)
                .unwrap_or(mag * 10.0);
            let start = (lo / step).ceil() * step;
            (0..)
                .map(|i| start + step * f64::from(i))
                .take_while(|v| *v <= hi + 1e-9)
                .collect()
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.3}")
    }
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_scale: Scale,
    y_scale: Scale,
    series: &[Series<'_>],
) {
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = PANEL_HEIGHT;
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        top - 12.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    if all.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="13">no data</text>"#,
            MARGIN_LEFT + plot_w / 2.0 - 20.0,
            top + plot_h / 2.0
        );
        return;
    }
    let min_pos = |f: fn(&(f64, f64)) -> f64, scale: Scale| {
        all.iter()
            .map(f)
            .filter(|v| matches!(scale, Scale::Linear) || *v > 0.0)
            .fold(f64::INFINITY, f64::min)
    };
    let max_of = |f: fn(&(f64, f64)) -> f64| all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
    let (mut x_lo, mut x_hi) = (min_pos(|p| p.0, x_scale), max_of(|p| p.0));
    let (mut y_lo, mut y_hi) = (min_pos(|p| p.1, y_scale), max_of(|p| p.1));
    if matches!(y_scale, Scale::Linear) {
        y_lo = y_lo.min(0.0);
        y_hi *= 1.1;
    } else {
        y_lo = 10f64.powf(y_lo.max(1e-3).log10().floor());
        y_hi = 10f64.powf(y_hi.max(1e-3).log10().ceil());
    }
    if matches!(x_scale, Scale::Log10) {
        x_lo = x_lo.max(1.0);
        x_hi = 10f64.powf(x_hi.max(10.0).log10().ceil());
    }
    if (x_hi - x_lo).abs() < 1e-9 {
        x_hi = x_lo + 1.0;
    }
    if (y_hi - y_lo).abs() < 1e-9 {
        y_hi = y_lo + 1.0;
    }
    let (xl, xh, yl, yh) = (
        x_scale.map(x_lo),
        x_scale.map(x_hi),
        y_scale.map(y_lo),
        y_scale.map(y_hi),
    );
    let px = |x: f64| MARGIN_LEFT + (x_scale.map(x) - xl) / (xh - xl) * plot_w;
    let py = |y: f64| top + plot_h - (y_scale.map(y) - yl) / (yh - yl) * plot_h;
    for t in nice_ticks(y_lo, y_hi, y_scale) {
        if t < y_lo - 1e-9 || t > y_hi + 1e-9 {
            continue;
        }
        let y = py(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let x_ticks: Vec<f64> = match x_scale {
        Scale::Log10 => nice_ticks(x_lo, x_hi, x_scale),
        Scale::Linear => nice_ticks(x_lo, x_hi, x_scale),
    };
    for t in x_ticks {
        if t < x_lo - 1e-9 || t > x_hi + 1e-9 {
            continue;
        }
        let x = px(t);
        let label = match x_scale {
            // Percentile plot: 10 → 90%, 100 → 99%, …
            Scale::Log10 => format!("{}%", fmt_tick(100.0 * (1.0 - 1.0 / t))),
            Scale::Linear => fmt_tick(t),
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"##,
            top + plot_h,
            top + plot_h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        top + plot_h + 34.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| {
                x.is_finite() && y.is_finite() && (matches!(y_scale, Scale::Linear) || *y > 0.0)
            })
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(y.max(y_lo))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
            s.colour,
            pts.join(" ")
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = MARGIN_LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 18.0,
            s.colour,
            lx + 24.0,
            ly + 4.0,
            escape(s.name)
        );
    }
}

/// The SVG document: `title` on top, then the three panels.
pub fn render(title: &str, intervals: &[Interval], distribution: &Latency) -> String {
    let height = MARGIN_TOP + 3.0 * PANEL_HEIGHT + 3.0 * GAP + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="20" font-size="16">{}</text>"#,
        escape(title)
    );
    let mid = |i: &Interval| i.start_s + i.length_s / 2.0;
    let rate = |n: u64, i: &Interval| n as f64 / i.length_s.max(1e-9);
    let offered: Vec<(f64, f64)> = intervals
        .iter()
        .map(|i| (mid(i), rate(i.offered, i)))
        .collect();
    let achieved: Vec<(f64, f64)> = intervals
        .iter()
        .map(|i| (mid(i), rate(i.committed + i.aborted, i)))
        .collect();
    let committed: Vec<(f64, f64)> = intervals
        .iter()
        .map(|i| (mid(i), rate(i.committed, i)))
        .collect();
    let top = MARGIN_TOP + 30.0;
    panel(
        &mut svg,
        top,
        "Throughput over time",
        "time since the bench started (s)",
        "operations per second",
        Scale::Linear,
        Scale::Linear,
        &[
            Series {
                name: "offered",
                colour: "#999999",
                points: offered,
            },
            Series {
                name: "achieved",
                colour: "#1f77b4",
                points: achieved,
            },
            Series {
                name: "committed",
                colour: "#2ca02c",
                points: committed,
            },
        ],
    );
    let with_data: Vec<&Interval> = intervals.iter().filter(|i| i.latency.count() > 0).collect();
    let lat = |q: f64| -> Vec<(f64, f64)> {
        with_data
            .iter()
            .map(|i| (mid(i), i.latency.quantile_ms(q)))
            .collect()
    };
    let max: Vec<(f64, f64)> = with_data
        .iter()
        .map(|i| (mid(i), i.latency.summary().max_ms))
        .collect();
    panel(
        &mut svg,
        top + PANEL_HEIGHT + GAP,
        "Latency over time (from the intended send time)",
        "time since the bench started (s)",
        "latency (ms, log)",
        Scale::Linear,
        Scale::Log10,
        &[
            Series {
                name: "p50",
                colour: "#2ca02c",
                points: lat(0.5),
            },
            Series {
                name: "p99",
                colour: "#ff7f0e",
                points: lat(0.99),
            },
            Series {
                name: "max",
                colour: "#d62728",
                points: max,
            },
        ],
    );
    let dist: Vec<(f64, f64)> = distribution
        .distribution()
        .into_iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| (1.0 / (1.0 - q), v))
        .collect();
    panel(
        &mut svg,
        top + 2.0 * (PANEL_HEIGHT + GAP),
        "Latency distribution of the measured run",
        "percentile",
        "latency (ms, log)",
        Scale::Log10,
        Scale::Log10,
        &[Series {
            name: "latency",
            colour: "#1f77b4",
            points: dist,
        }],
    );
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_svg_is_one_document_with_three_panels_and_escaped_text() {
        let mut intervals = Vec::new();
        for i in 0..5 {
            let mut latency = Latency::new();
            latency.record(Duration::from_millis(3 + i));
            intervals.push(Interval {
                start_s: i as f64,
                length_s: 1.0,
                offered: 100,
                committed: 95,
                aborted: 5,
                latency,
                ..Interval::default()
            });
        }
        let mut dist = Latency::new();
        for ms in 1..200 {
            dist.record(Duration::from_millis(ms));
        }
        let svg = render("pay <durable> & co", &intervals, &dist);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 7);
        assert!(svg.contains("pay &lt;durable&gt; &amp; co"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn empty_data_still_renders() {
        let svg = render("empty", &[], &Latency::new());
        assert_eq!(svg.matches("no data").count(), 3);
    }
}
