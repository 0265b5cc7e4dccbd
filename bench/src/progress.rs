//! The progress bar on a terminal: one line on stderr, redrawn a few times a second. When
//! stderr is not a terminal (piped, CI) it prints nothing at all.

use crate::stats::RunStats;
use std::io::Write;
use std::time::Duration;

/// How often the line is redrawn.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Width of the bar, in characters.
const BAR_WIDTH: usize = 24;

/// The progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    enabled: bool,
    stage: String,
}

impl Progress {
    /// A display that draws only when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            stage: String::new(),
        }
    }

    /// Whether it draws.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Names what is running now ("genesis", "ramp 3/…", "confirm −5% 2/3").
    pub fn stage(&mut self, stage: impl Into<String>) {
        self.stage = stage.into();
        if self.enabled {
            eprint!("\r\x1b[2K{}…", self.stage);
            let _ = std::io::stderr().flush();
        }
    }

    /// Redraws the line for a run `fraction` done.
    pub fn update(&mut self, fraction: f64, stats: &RunStats, in_flight: usize, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let line = render(&self.stage, fraction, stats, in_flight, elapsed);
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    }

    /// Erases the line.
    pub fn clear(&mut self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// The progress line (without terminal control codes).
pub fn render(
    stage: &str,
    fraction: f64,
    stats: &RunStats,
    in_flight: usize,
    elapsed: Duration,
) -> String {
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(BAR_WIDTH - filled);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let offered = stats.offered as f64 / secs;
    let done = stats.all.finished() as f64 / secs;
    format!(
        "{stage} [{bar}] {:3.0}%  offered {offered:.0}/s  done {done:.0}/s  committed {}  aborted {}  in flight {in_flight}  p99 {:.1} ms",
        fraction * 100.0,
        stats.all.committed,
        stats.all.aborted,
        stats.all.latency.quantile_ms(0.99),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::LoopMode;

    #[test]
    fn the_line_shows_the_bar_and_the_rates() {
        let stats = RunStats::new("x".into(), LoopMode::Open);
        let line = render("rate 100/s", 0.5, &stats, 3, Duration::from_secs(1));
        assert!(
            line.starts_with("rate 100/s [############............]  50%"),
            "{line}"
        );
        assert!(line.contains("in flight 3"));
    }
}
