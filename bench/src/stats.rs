//! What one measured run collects: outcomes by kind and reason, latencies, planted refusals,
//! and the same per report interval.

use crate::histogram::{round3, Latency};
use crate::profile::LoopMode;
use crate::workload::{Class, Kind};
use serde_json::{json, Map, Value};
use specie_protocol::AbortReason;
use std::collections::BTreeMap;

/// Outcomes and latencies of a set of operations.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Committed.
    pub committed: u64,
    /// Aborted (refused), for any reason.
    pub aborted: u64,
    /// Aborted, by reason.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Latency from the intended send time to the outcome.
    pub latency: Latency,
}

impl Tally {
    /// Records one outcome.
    pub fn record(&mut self, result: Result<(), AbortReason>, latency: std::time::Duration) {
        match result {
            Ok(()) => self.committed += 1,
            Err(reason) => {
                self.aborted += 1;
                *self.by_reason.entry(reason.name()).or_default() += 1;
            }
        }
        self.latency.record(latency);
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Tally) {
        self.committed += other.committed;
        self.aborted += other.aborted;
        for (reason, n) in &other.by_reason {
            *self.by_reason.entry(reason).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }

    /// Operations finished.
    pub fn finished(&self) -> u64 {
        self.committed + self.aborted
    }

    /// `{"committed","aborted","aborted_by_reason","latency_ms"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "committed": self.committed,
            "aborted": self.aborted,
            "aborted_by_reason": reasons_json(&self.by_reason),
            "latency_ms": self.latency.summary().to_json(),
        })
    }
}

/// Reasons as a JSON object.
pub fn reasons_json(reasons: &BTreeMap<&'static str, u64>) -> Value {
    Value::Object(
        reasons
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Planted operations of one class and how they were answered.
#[derive(Debug, Clone, Default)]
pub struct Planted {
    /// Sent.
    pub planted: u64,
    /// Refused with the expected reason.
    pub refused_as_expected: u64,
    /// Refused for another reason (e.g. `busy`, `timeout`): reported, not a failure.
    pub refused_otherwise: BTreeMap<&'static str, u64>,
    /// Committed: a failure (and the audit should see it too). Saga ids.
    pub committed: Vec<String>,
}

impl Planted {
    /// Adds another record of the same class.
    pub fn merge(&mut self, other: &Planted) {
        self.planted += other.planted;
        self.refused_as_expected += other.refused_as_expected;
        for (r, n) in &other.refused_otherwise {
            *self.refused_otherwise.entry(r).or_default() += n;
        }
        self.committed.extend(other.committed.iter().cloned());
    }
}

/// The name of a planted class in reports.
pub fn class_name(class: Class) -> &'static str {
    match class {
        Class::Honest => "honest",
        Class::Insufficient => "insufficient_funds",
        Class::DoubleSpend => "double_spend",
        Class::Forged => "forged_authorization",
    }
}

/// One report interval of a run.
#[derive(Debug, Clone, Default)]
pub struct Interval {
    /// Start, in seconds since the bench started.
    pub start_s: f64,
    /// Length in seconds.
    pub length_s: f64,
    /// Arrivals whose intended time fell in the interval (open loop), or operations started.
    pub offered: u64,
    /// Arrivals shed: no idle wallet, or too many outstanding.
    pub shed: u64,
    /// Operations that finished in the interval.
    pub committed: u64,
    /// Refused in the interval.
    pub aborted: u64,
    /// Latencies of the operations that finished in the interval.
    pub latency: Latency,
    /// CPU seconds the process used in the interval.
    pub cpu_s: f64,
    /// Resident memory at the end of the interval.
    pub rss_bytes: u64,
}

impl Interval {
    /// As JSON, rates per second.
    pub fn to_json(&self) -> Value {
        let len = self.length_s.max(1e-9);
        let s = self.latency.summary();
        json!({
            "t_s": round3(self.start_s),
            "length_s": round3(self.length_s),
            "offered_per_s": round3(self.offered as f64 / len),
            "achieved_per_s": round3((self.committed + self.aborted) as f64 / len),
            "committed_per_s": round3(self.committed as f64 / len),
            "committed": self.committed,
            "aborted": self.aborted,
            "shed": self.shed,
            "latency_ms": {"p50": round3(s.p50_ms), "p90": round3(s.p90_ms), "p99": round3(s.p99_ms), "max": round3(s.max_ms)},
            "cpu_percent": round3(100.0 * self.cpu_s / len),
            "rss_bytes": self.rss_bytes,
        })
    }
}

/// Everything one measured run (a fixed rate, a closed loop, or one step of the peak
/// finder) collected.
#[derive(Debug, Clone)]
pub struct RunStats {
    /// What the run was ("rate 2000/s", "closed 256", "ramp 3", …).
    pub label: String,
    /// Open or closed loop.
    pub mode: LoopMode,
    /// Offered rate (open loop).
    pub rate_per_s: Option<f64>,
    /// Operations in flight (closed loop).
    pub in_flight: Option<usize>,
    /// Start of the measured window, in seconds since the bench started.
    pub started_s: f64,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Operations offered in the window (arrivals, or starts in a closed loop).
    pub offered: u64,
    /// Offered but not sent: no idle wallet, or the outstanding bound.
    pub shed: u64,
    /// Measured operations finished inside the window.
    pub finished_in_window: u64,
    /// Measured operations committed inside the window.
    pub committed_in_window: u64,
    /// Of those, pay sagas.
    pub pay_committed_in_window: u64,
    /// Planned but withdrawn before sending (a merge of a wallet with fewer than two coins);
    /// counted in `shed` too.
    pub withdrawn: u64,
    /// Every measured operation (intended inside the window), wherever it finished.
    pub all: Tally,
    /// The same by kind.
    pub by_kind: BTreeMap<Kind, Tally>,
    /// Planted operations by class.
    pub planted: BTreeMap<Class, Planted>,
    /// How late the driver sent operations after their intended time.
    pub send_lag: Latency,
    /// Report intervals.
    pub intervals: Vec<Interval>,
    /// Measured operations with no outcome when the drain gave up.
    pub unfinished: u64,
    /// Failures handing operations to the cluster.
    pub submit_errors: u64,
    /// CPU seconds the process used in the window.
    pub cpu_s: f64,
    /// Seconds in the window during which some task on the machine waited for a CPU
    /// (`/proc/pressure/cpu`); absent where the kernel does not report pressure.
    pub cpu_pressure_s: Option<f64>,
}

impl RunStats {
    /// An empty record.
    pub fn new(label: String, mode: LoopMode) -> RunStats {
        RunStats {
            label,
            mode,
            rate_per_s: None,
            in_flight: None,
            started_s: 0.0,
            duration_s: 0.0,
            offered: 0,
            shed: 0,
            finished_in_window: 0,
            committed_in_window: 0,
            pay_committed_in_window: 0,
            withdrawn: 0,
            all: Tally::default(),
            by_kind: BTreeMap::new(),
            planted: BTreeMap::new(),
            send_lag: Latency::new(),
            intervals: Vec::new(),
            unfinished: 0,
            submit_errors: 0,
            cpu_s: 0.0,
            cpu_pressure_s: None,
        }
    }

    /// Offered operations per second.
    pub fn offered_per_s(&self) -> f64 {
        self.offered as f64 / self.duration_s.max(1e-9)
    }

    /// Operations finished (committed or refused) per second, inside the window.
    pub fn achieved_per_s(&self) -> f64 {
        self.finished_in_window as f64 / self.duration_s.max(1e-9)
    }

    /// Operations committed per second, inside the window.
    pub fn throughput_per_s(&self) -> f64 {
        self.committed_in_window as f64 / self.duration_s.max(1e-9)
    }

    /// Pay sagas committed per second, inside the window.
    pub fn pay_committed_per_s(&self) -> f64 {
        self.pay_committed_in_window as f64 / self.duration_s.max(1e-9)
    }

    /// CPU use in the window, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.duration_s.max(1e-9)
    }

    /// Share of the window, in percent, during which some task on the machine waited for a
    /// CPU: above a few percent, the machine was shared and figures are lower than it can do.
    pub fn cpu_pressure_percent(&self) -> Option<f64> {
        self.cpu_pressure_s
            .map(|p| 100.0 * p / self.duration_s.max(1e-9))
    }

    /// CPU time the whole process spent per committed operation, in µs: what a saga costs,
    /// whatever else the machine was doing (throughput on a shared machine is not).
    pub fn cpu_us_per_committed(&self) -> f64 {
        if self.committed_in_window == 0 {
            return 0.0;
        }
        1e6 * self.cpu_s / self.committed_in_window as f64
    }

    /// Planted operations that committed (each one a failure).
    pub fn planted_committed(&self) -> Vec<String> {
        self.planted
            .values()
            .flat_map(|p| p.committed.iter().cloned())
            .collect()
    }

    /// Combines repeats of the same run into one record (rates are over the summed windows).
    pub fn combine(label: String, runs: &[&RunStats]) -> RunStats {
        let mut out = RunStats::new(label, runs.first().map_or(LoopMode::Open, |r| r.mode));
        out.rate_per_s = runs.first().and_then(|r| r.rate_per_s);
        out.in_flight = runs.first().and_then(|r| r.in_flight);
        out.started_s = runs.first().map_or(0.0, |r| r.started_s);
        for r in runs {
            out.duration_s += r.duration_s;
            out.offered += r.offered;
            out.shed += r.shed;
            out.finished_in_window += r.finished_in_window;
            out.committed_in_window += r.committed_in_window;
            out.pay_committed_in_window += r.pay_committed_in_window;
            out.withdrawn += r.withdrawn;
            out.all.merge(&r.all);
            for (k, t) in &r.by_kind {
                out.by_kind.entry(*k).or_default().merge(t);
            }
            for (c, p) in &r.planted {
                out.planted.entry(*c).or_default().merge(p);
            }
            out.send_lag.merge(&r.send_lag);
            out.intervals.extend(r.intervals.iter().cloned());
            out.unfinished += r.unfinished;
            out.submit_errors += r.submit_errors;
            out.cpu_s += r.cpu_s;
            out.cpu_pressure_s = match (out.cpu_pressure_s, r.cpu_pressure_s) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        out
    }

    /// `by_kind` as JSON.
    pub fn by_kind_json(&self) -> Value {
        Value::Object(
            self.by_kind
                .iter()
                .map(|(k, t)| (k.name().to_string(), t.to_json()))
                .collect(),
        )
    }

    /// Planted refusals as JSON.
    pub fn planted_json(&self) -> Value {
        Value::Object(
            self.planted
                .iter()
                .map(|(c, p)| {
                    (
                        class_name(*c).to_string(),
                        json!({
                            "planted": p.planted,
                            "refused_as_expected": p.refused_as_expected,
                            "refused_otherwise": reasons_json(&p.refused_otherwise),
                            "committed": p.committed,
                        }),
                    )
                })
                .collect(),
        )
    }

    /// A short summary of the run (one element of `steps` in peak finding).
    pub fn summary_json(&self) -> Value {
        json!({
            "label": self.label,
            "mode": self.mode.name(),
            "rate_per_s": self.rate_per_s.map(round3),
            "in_flight": self.in_flight,
            "duration_s": round3(self.duration_s),
            "offered_per_s": round3(self.offered_per_s()),
            "achieved_per_s": round3(self.achieved_per_s()),
            "throughput_per_s": round3(self.throughput_per_s()),
            "committed": self.all.committed,
            "aborted": self.all.aborted,
            "shed": self.shed,
            "unfinished": self.unfinished,
            "latency_ms": self.all.latency.summary().to_json(),
            "send_lag_ms_p99": round3(self.send_lag.quantile_ms(0.99)),
            "cpu_percent": round3(self.cpu_percent()),
            "cpu_us_per_committed": round3(self.cpu_us_per_committed()),
            "cpu_pressure_percent": self.cpu_pressure_percent().map(round3),
        })
    }
}
