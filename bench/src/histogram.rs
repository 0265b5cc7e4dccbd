//! Latency histograms: hdrhistogram from 1 µs to 60 s at 3 significant figures, their
//! summaries in milliseconds, and the `.hgrm` percentile-distribution text that HdrHistogram's
//! plotter and other tools read, for comparing runs later.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::{self, Write};
use std::time::Duration;

/// Smallest latency recorded, in µs; shorter ones count as this.
pub const LATENCY_US_MIN: u64 = 1;
/// Largest latency recorded, in µs (60 s); longer ones count as this and are flagged.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant figures kept.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    /// Latencies above [`LATENCY_US_MAX`] (recorded as the maximum).
    clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    /// `{"p50","p90","p99","p999","max"}` in milliseconds (and the count and mean).
    pub fn to_json(&self) -> Value {
        json!({
            "p50": round3(self.p50_ms),
            "p90": round3(self.p90_ms),
            "p99": round3(self.p99_ms),
            "p999": round3(self.p999_ms),
            "max": round3(self.max_ms),
            "mean": round3(self.mean_ms),
            "count": self.count,
        })
    }
}

/// Rounds to three decimals for reports.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(LATENCY_US_MIN, LATENCY_US_MAX, SIGNIFICANT_FIGURES)
                .expect("valid histogram bounds"),
            clamped: 0,
        }
    }

    /// Records one latency, clamped into the histogram's range.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if us > LATENCY_US_MAX {
            self.clamped += 1;
        }
        let us = us.clamp(LATENCY_US_MIN, LATENCY_US_MAX);
        self.hist
            .record(us)
            .expect("clamped into the histogram's range");
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.hist
            .add(&other.hist)
            .expect("histograms of the same bounds add");
        self.clamped += other.clamped;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Values that were longer than the histogram's range.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The value at quantile `q` (0 to 1), in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        us_to_ms(self.hist.value_at_quantile(q))
    }

    /// The percentiles reports show.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: us_to_ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        }
    }

    /// Points of the percentile distribution: (percentile 0–1, value in ms), as plotted.
    pub fn distribution(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        self.hist
            .iter_quantiles(5)
            .map(|v| (v.quantile_iterated_to(), us_to_ms(v.value_iterated_to())))
            .collect()
    }

    /// Writes the percentile distribution in HdrHistogram's `.hgrm` text format, values in
    /// milliseconds (5 ticks per half distance, as HdrHistogram's own output).
    pub fn write_hgrm(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        if !self.hist.is_empty() {
            for v in self.hist.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let value = us_to_ms(v.value_iterated_to());
                if q < 1.0 {
                    writeln!(
                        out,
                        "{value:>12.3} {q:>14.12} {:>10} {:>14.2}",
                        total_at(&self.hist, v.value_iterated_to()),
                        1.0 / (1.0 - q)
                    )?;
                } else {
                    writeln!(out, "{value:>12.3} {q:>14.12} {:>10}", self.hist.len())?;
                }
            }
        }
        let (mean, stdev, max) = if self.hist.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (
                self.hist.mean() / 1000.0,
                self.hist.stdev() / 1000.0,
                us_to_ms(self.hist.max()),
            )
        };
        writeln!(
            out,
            "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
        )?;
        writeln!(
            out,
            "#[Max     = {max:>12.3}, Total count    = {:>12}]",
            self.hist.len()
        )?;
        // 3 significant figures need 2048 sub-buckets (the next power of two above 2 × 10³).
        writeln!(
            out,
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
            self.hist.buckets(),
            2048
        )?;
        Ok(())
    }
}

/// Values recorded at or below `value` (the `.hgrm` TotalCount column).
fn total_at(hist: &Histogram<u64>, value: u64) -> u64 {
    hist.count_between(0, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds_within_three_significant_figures() {
        let mut h = Latency::new();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p90_ms - 900.0).abs() <= 0.9, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_and_counted() {
        let mut h = Latency::new();
        h.record(Duration::from_nanos(10));
        h.record(Duration::from_secs(120));
        assert_eq!(h.count(), 2);
        assert_eq!(h.clamped(), 1);
        assert!((h.summary().max_ms - 60_000.0).abs() < 60.0);
        assert!(h.summary().p50_ms <= 0.002);
    }

    #[test]
    fn merging_adds_counts_and_keeps_extremes() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_millis(2));
        b.record(Duration::from_millis(40));
        b.record(Duration::from_millis(41));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!((a.summary().max_ms - 41.0).abs() < 0.05);
        assert!((a.summary().p50_ms - 40.0).abs() < 0.05);
    }

    #[test]
    fn an_empty_histogram_summarizes_to_zeros_and_still_writes_a_footer() {
        let h = Latency::new();
        assert_eq!(h.summary(), LatencySummary::default());
        let mut text = Vec::new();
        h.write_hgrm(&mut text).expect("writes to memory");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("Total count    =            0"), "{text}");
    }

    #[test]
    fn hgrm_text_has_the_header_rising_percentiles_and_the_footer() {
        let mut h = Latency::new();
        for us in [100u64, 200, 300, 5_000, 12_000] {
            h.record(Duration::from_micros(us));
        }
        let mut text = Vec::new();
        h.write_hgrm(&mut text).expect("writes to memory");
        let text = String::from_utf8(text).expect("utf-8");
        let mut lines = text.lines();
        assert!(lines.next().expect("header").contains("1/(1-Percentile)"));
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Percentile"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().expect("value"),
                    f[1].parse().expect("percentile"),
                    f[2].parse().expect("count"),
                )
            })
            .collect();
        assert!(rows.len() >= 5, "{text}");
        assert!(rows
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0 && w[0].2 <= w[1].2));
        let last = rows.last().expect("rows");
        assert_eq!(last.2, 5);
        assert!((last.0 - 12.0).abs() < 0.02, "max 12 ms, got {}", last.0);
        assert!(text.contains("#[Max     =       12.0"), "{text}");
    }
}
