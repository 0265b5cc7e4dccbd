//! The load driver: offers operations to a running cluster in an open or a closed loop and
//! collects what comes back.
//!
//! It runs on the actix system's own thread, beside the node's arbiters. Each operation is
//! handed to its wallet by a task of its own, so a full mailbox delays that operation (and its
//! latency shows it) without holding back the arrivals behind it. Outcomes arrive as the
//! node's notices; an operation is settled by the notice of the actor that reports it (the
//! payer for a payment, the payee for a collect request, the coordinating institution for a
//! forged request).
//!
//! [`Tracker`] is the bookkeeping without the runtime — pending operations, the measured
//! window, intervals, outcomes — so its rules are unit-tested with explicit times.

use crate::arrival::{PoissonArrivals, SendTimes};
use crate::profile::LoopMode;
use crate::progress::Progress;
use crate::stats::{Interval, RunStats};
use crate::sys;
use crate::workload::{Action, Class, Planned, Workload, MERGE_COINS_MAX};
use specie_actors::wallet::WalletCommand;
use specie_actors::Cluster;
use specie_protocol::SagaId;
use specie_runtime::Notice;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long the closed loop waits for an outcome before it looks for an idle wallet again.
const CLOSED_LOOP_POLL: Duration = Duration::from_millis(5);

/// One run to drive.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Shown in reports.
    pub label: String,
    /// Open or closed loop.
    pub mode: LoopMode,
    /// Open loop: offered rate.
    pub rate_per_s: f64,
    /// Closed loop: operations in flight.
    pub in_flight: usize,
    /// Open loop: arrivals beyond this many outstanding operations are shed.
    pub outstanding_max: usize,
    /// Unmeasured time at the start.
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Report interval.
    pub interval: Duration,
    /// How long to wait for the run's operations after it.
    pub drain_timeout: Duration,
    /// Seed of the arrival process.
    pub seed: u64,
}

/// An operation sent and not yet settled.
#[derive(Debug)]
struct Pending {
    planned: Planned,
    times: SendTimes,
    /// Intended inside the measured window of the current run.
    measured: bool,
}

/// Pending operations, the current run's window and intervals, and its statistics.
pub struct Tracker {
    /// The workload generator and its model of the wallets.
    pub workload: Workload,
    pending: HashMap<SagaId, Pending>,
    bench_start: Instant,
    stats: RunStats,
    measure_from: Instant,
    measure_until: Instant,
    interval: Duration,
    current: Interval,
    current_end: Instant,
    cpu_at_interval_start: Option<f64>,
    cpu_at_window_start: Option<f64>,
    pressure_at_window_start: Option<u64>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// A tracker for a bench that started at `bench_start`.
    pub fn new(workload: Workload, bench_start: Instant) -> Tracker {
        Tracker {
            workload,
            pending: HashMap::new(),
            bench_start,
            stats: RunStats::new(String::new(), LoopMode::Open),
            measure_from: bench_start,
            measure_until: bench_start,
            interval: Duration::from_secs(1),
            current: Interval::default(),
            current_end: bench_start,
            cpu_at_interval_start: None,
            cpu_at_window_start: None,
            pressure_at_window_start: None,
        }
    }

    /// Starts recording a run whose measured window is `[measure_from, measure_until)`.
    pub fn begin_run(&mut self, spec: &RunSpec, start: Instant) {
        let mut stats = RunStats::new(spec.label.clone(), spec.mode);
        match spec.mode {
            LoopMode::Open => stats.rate_per_s = Some(spec.rate_per_s),
            LoopMode::Closed => stats.in_flight = Some(spec.in_flight),
        }
        self.measure_from = start + spec.warmup;
        self.measure_until = self.measure_from + spec.duration;
        stats.started_s = (self.measure_from - self.bench_start).as_secs_f64();
        stats.duration_s = spec.duration.as_secs_f64();
        self.stats = stats;
        self.interval = spec.interval;
        self.current = Interval {
            start_s: (start - self.bench_start).as_secs_f64(),
            ..Interval::default()
        };
        self.current_end = start + spec.interval;
        self.cpu_at_interval_start = sys::cpu_seconds();
        self.cpu_at_window_start = if spec.warmup.is_zero() {
            sys::cpu_seconds()
        } else {
            None
        };
        self.pressure_at_window_start = if spec.warmup.is_zero() {
            sys::cpu_pressure_total_us()
        } else {
            None
        };
    }

    /// Closes the intervals that ended by `now`.
    pub fn roll(&mut self, now: Instant) {
        if self.cpu_at_window_start.is_none() && now >= self.measure_from {
            self.cpu_at_window_start = sys::cpu_seconds();
            self.pressure_at_window_start = sys::cpu_pressure_total_us();
        }
        while now >= self.current_end && self.current_end <= self.measure_until {
            self.close_interval(self.current_end);
        }
    }

    fn close_interval(&mut self, end: Instant) {
        let cpu = sys::cpu_seconds();
        let mut closed = std::mem::take(&mut self.current);
        closed.length_s = (end - self.bench_start).as_secs_f64() - closed.start_s;
        closed.cpu_s = match (cpu, self.cpu_at_interval_start) {
            (Some(now), Some(then)) => now - then,
            _ => 0.0,
        };
        closed.rss_bytes = sys::rss_bytes().unwrap_or(0);
        if closed.length_s > 1e-6 {
            self.stats.intervals.push(closed);
        }
        self.cpu_at_interval_start = cpu;
        self.current = Interval {
            start_s: (end - self.bench_start).as_secs_f64(),
            ..Interval::default()
        };
        self.current_end = end + self.interval;
    }

    /// Ends the measured window: closes the last (partial) interval and the CPU account.
    pub fn end_window(&mut self) {
        let end = self.measure_until;
        if self.current_end > end {
            self.close_interval(end);
        }
        if let (Some(now), Some(then)) = (sys::cpu_seconds(), self.cpu_at_window_start) {
            self.stats.cpu_s = now - then;
        }
        if let (Some(now), Some(then)) =
            (sys::cpu_pressure_total_us(), self.pressure_at_window_start)
        {
            self.stats.cpu_pressure_s = Some(now.saturating_sub(then) as f64 / 1e6);
        }
    }

    /// Operations sent and not settled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Measured operations sent and not settled.
    pub fn pending_measured(&self) -> usize {
        self.pending.values().filter(|p| p.measured).count()
    }

    /// An arrival (or a closed-loop start) intended at `intended`: counts it as offered and
    /// plans it; returns the action to send, or `None` when it was shed.
    pub fn offer(
        &mut self,
        intended: Instant,
        now: Instant,
        outstanding_max: usize,
    ) -> Option<Action> {
        self.offer_planned(intended, now, outstanding_max)
            .map(|p| p.action)
    }

    /// [`Tracker::offer`], returning the whole plan (a driver that sends operations through a
    /// node's ingress needs the payer, payee and amount rather than the in-process action).
    pub fn offer_planned(
        &mut self,
        intended: Instant,
        now: Instant,
        outstanding_max: usize,
    ) -> Option<Planned> {
        let measured = intended >= self.measure_from && intended < self.measure_until;
        if measured {
            self.stats.offered += 1;
        }
        self.current.offered += 1;
        let planned = if self.pending.len() >= outstanding_max {
            None
        } else {
            self.workload.plan().ok()
        };
        let Some(planned) = planned else {
            if measured {
                self.stats.shed += 1;
            }
            self.current.shed += 1;
            return None;
        };
        self.workload.begin(&planned);
        let times = SendTimes {
            intended,
            sent: now,
        };
        if measured {
            self.stats.send_lag.record(times.send_lag());
        }
        let previous = self.pending.insert(
            planned.saga,
            Pending {
                planned: planned.clone(),
                times,
                measured,
            },
        );
        // Saga ids are 128 random bits: a collision is a bug in the generator.
        assert!(previous.is_none(), "saga id reused by the generator");
        Some(planned)
    }

    /// Settles the operation a notice reports, if it is one of ours and the notice comes from
    /// its reporter. Returns whether it settled one.
    pub fn settle(&mut self, notice: Notice, now: Instant) -> bool {
        let Some(p) = self.pending.get(&notice.saga_id) else {
            return false;
        };
        if p.planned.reporter != notice.source {
            return false;
        }
        let p = self.pending.remove(&notice.saga_id).expect("present");
        let latency = p.times.latency(now);
        let result = notice.outcome.result;
        self.workload
            .settle(&p.planned, result, notice.outcome.spent_coin_ids);
        match result {
            Ok(()) => self.current.committed += 1,
            Err(_) => self.current.aborted += 1,
        }
        self.current.latency.record(latency);
        if !p.measured {
            return true;
        }
        let s = &mut self.stats;
        s.all.record(result, latency);
        s.by_kind
            .entry(p.planned.kind)
            .or_default()
            .record(result, latency);
        if now < self.measure_until {
            s.finished_in_window += 1;
            if result.is_ok() {
                s.committed_in_window += 1;
                if p.planned.kind.is_pay() {
                    s.pay_committed_in_window += 1;
                }
            }
        }
        if let Some(expected) = p.planned.class.expected_refusal() {
            let planted = s.planted.entry(p.planned.class).or_default();
            planted.planted += 1;
            match result {
                Err(r) if r == expected => planted.refused_as_expected += 1,
                Err(r) => *planted.refused_otherwise.entry(r.name()).or_default() += 1,
                Ok(()) => planted.committed.push(notice.saga_id.to_string()),
            }
        }
        true
    }

    /// Takes back an operation that was planned but could not be sent (a merge whose wallet
    /// holds fewer than two coins): it counts as shed.
    pub fn withdraw(&mut self, saga: SagaId) {
        let Some(p) = self.pending.remove(&saga) else {
            return;
        };
        self.workload.settle(
            &p.planned,
            Err(specie_protocol::AbortReason::SagaAborted),
            Vec::new(),
        );
        if p.measured {
            self.stats.shed += 1;
            self.stats.withdrawn += 1;
        }
        self.current.shed += 1;
    }

    /// Gives up on the measured operations still pending (after the drain timed out): counts
    /// them as unfinished and stops measuring them. Their wallets stay busy until they settle.
    pub fn abandon(&mut self) {
        let mut n = 0;
        for p in self.pending.values_mut().filter(|p| p.measured) {
            p.measured = false;
            n += 1;
        }
        self.stats.unfinished += n;
    }

    /// The run's statistics so far.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// Takes the finished run's statistics.
    pub fn take_stats(&mut self) -> RunStats {
        std::mem::replace(
            &mut self.stats,
            RunStats::new(String::new(), LoopMode::Open),
        )
    }

    /// Whether planted operations are among the pending ones (for tests and reports).
    pub fn pending_planted(&self) -> usize {
        self.pending
            .values()
            .filter(|p| p.planned.class != Class::Honest)
            .count()
    }
}

/// Drives a cluster.
pub struct Driver {
    cluster: Rc<Cluster>,
    notices: UnboundedReceiver<Notice>,
    tracker: Tracker,
    submit_errors: Rc<Cell<u64>>,
    /// Merges whose wallet turned out to hold fewer than two coins, to withdraw.
    withdrawn: Rc<RefCell<Vec<SagaId>>>,
    progress: Progress,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver of `cluster` offering `workload`; it subscribes to the cluster's notices now.
    pub fn new(
        cluster: Rc<Cluster>,
        workload: Workload,
        bench_start: Instant,
        progress: Progress,
    ) -> Driver {
        let notices = cluster.notices();
        Driver {
            cluster,
            notices,
            tracker: Tracker::new(workload, bench_start),
            submit_errors: Rc::new(Cell::new(0)),
            withdrawn: Rc::new(RefCell::new(Vec::new())),
            progress,
        }
    }

    /// The progress display (to announce stages).
    pub fn progress(&mut self) -> &mut Progress {
        &mut self.progress
    }

    fn send(&self, action: Action) {
        match action {
            Action::Submit(wallet, command) => {
                let (cluster, errors) = (self.cluster.clone(), self.submit_errors.clone());
                actix::spawn(async move {
                    if cluster.submit(wallet, command).await.is_err() {
                        errors.set(errors.get() + 1);
                    }
                });
            }
            Action::Inject(envelope) => self.cluster.inject(envelope),
            Action::Merge(wallet, saga) => {
                let (cluster, errors) = (self.cluster.clone(), self.submit_errors.clone());
                let withdrawn = self.withdrawn.clone();
                actix::spawn(async move {
                    let coins = match cluster.wallet_snapshot(wallet).await {
                        Ok(snapshot) => snapshot.coins,
                        Err(_) => {
                            errors.set(errors.get() + 1);
                            return;
                        }
                    };
                    if coins.len() < 2 {
                        withdrawn.borrow_mut().push(saga);
                        return;
                    }
                    let home = cluster.institution_of(wallet);
                    let mut coins = coins;
                    // Coins of other issuers first, then the smallest: merging consolidates them.
                    coins.sort_by_key(|c| (c.body.issuer == home, c.value(), c.id));
                    let coins = coins.iter().take(MERGE_COINS_MAX).map(|c| c.id).collect();
                    if cluster
                        .submit(wallet, WalletCommand::Merge { saga, coins })
                        .await
                        .is_err()
                    {
                        errors.set(errors.get() + 1);
                    }
                });
            }
        }
    }

    fn withdraw_unsent(&mut self) {
        let withdrawn: Vec<SagaId> = self.withdrawn.borrow_mut().drain(..).collect();
        for saga in withdrawn {
            self.tracker.withdraw(saga);
        }
    }

    fn settle_ready(&mut self, first: Notice) {
        self.tracker.settle(first, Instant::now());
        while let Ok(notice) = self.notices.try_recv() {
            self.tracker.settle(notice, Instant::now());
        }
    }

    /// Drives one run and returns what it measured.
    pub async fn run(&mut self, spec: &RunSpec) -> RunStats {
        let errors_before = self.submit_errors.get();
        let start = Instant::now();
        self.tracker.begin_run(spec, start);
        let end = start + spec.warmup + spec.duration;
        let mut arrivals = PoissonArrivals::new(spec.rate_per_s.max(1e-3), spec.seed);
        let mut next = start + arrivals.next_offset();
        let mut last_progress = start;
        loop {
            self.withdraw_unsent();
            let now = Instant::now();
            self.tracker.roll(now);
            if now >= end {
                break;
            }
            match spec.mode {
                LoopMode::Open => {
                    while next <= now {
                        if let Some(action) = self.tracker.offer(next, now, spec.outstanding_max) {
                            self.send(action);
                        }
                        next = start + arrivals.next_offset();
                    }
                }
                LoopMode::Closed => {
                    while self.tracker.pending() < spec.in_flight {
                        match self.tracker.offer(now, now, spec.in_flight) {
                            Some(action) => self.send(action),
                            None => break,
                        }
                    }
                }
            }
            if now.duration_since(last_progress) >= crate::progress::REFRESH {
                last_progress = now;
                let fraction = (now - start).as_secs_f64() / (end - start).as_secs_f64();
                self.progress.update(
                    fraction,
                    &self.tracker.stats,
                    self.tracker.pending(),
                    now - start,
                );
            }
            let wake = match spec.mode {
                LoopMode::Open => next,
                LoopMode::Closed => now + CLOSED_LOOP_POLL,
            }
            .min(end)
            .min(now + crate::progress::REFRESH);
            tokio::select! {
                biased;
                notice = self.notices.recv() => match notice {
                    Some(n) => self.settle_ready(n),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        self.tracker.end_window();
        // Drain: wait for what this run started.
        let deadline = Instant::now() + spec.drain_timeout;
        while self.tracker.pending_measured() > 0 {
            self.withdraw_unsent();
            if self.tracker.pending_measured() == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.tracker.abandon();
                break;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(100)), self.notices.recv())
                .await
            {
                Ok(Some(n)) => self.settle_ready(n),
                Ok(None) => {
                    self.tracker.abandon();
                    break;
                }
                Err(_) => {}
            }
        }
        self.progress.clear();
        let mut stats = self.tracker.take_stats();
        stats.submit_errors = self.submit_errors.get() - errors_before;
        stats
    }

    /// Waits for every operation still pending (from any run), up to `timeout`; returns how
    /// many are left.
    pub async fn drain_all(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.tracker.pending() > 0 && Instant::now() < deadline {
            self.withdraw_unsent();
            if let Ok(Some(n)) =
                tokio::time::timeout(Duration::from_millis(50), self.notices.recv()).await
            {
                self.settle_ready(n);
            }
        }
        self.tracker.pending()
    }

    /// The cluster.
    pub fn cluster(&self) -> &Rc<Cluster> {
        &self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use specie_actors::Blueprint;
    use specie_protocol::envelope::SagaOutcome;
    use specie_protocol::{AbortReason, SagaKind};

    fn tracker() -> (Tracker, Instant) {
        let text = "[bench]\nname = \"t\"\nmode = \"open\"\nduration_s = 1\n[cluster_config.cluster]\nwallets = 100\n";
        let p = Profile::parse(text, "t.toml", None).expect("valid");
        let workload = Workload::new(p.workload, Blueprint::new(&p.cluster_config, 1), 60_000, 1);
        let start = Instant::now();
        let mut t = Tracker::new(workload, start);
        let spec = RunSpec {
            label: "test".into(),
            mode: LoopMode::Open,
            rate_per_s: 100.0,
            in_flight: 1,
            outstanding_max: 1000,
            warmup: Duration::from_millis(100),
            duration: Duration::from_secs(1),
            interval: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(1),
            seed: 1,
        };
        t.begin_run(&spec, start);
        (t, start)
    }

    fn saga_of(action: &Action) -> SagaId {
        match action {
            Action::Submit(_, specie_actors::wallet::WalletCommand::Pay { saga, .. }) => *saga,
            Action::Submit(_, specie_actors::wallet::WalletCommand::Collect { saga, .. }) => *saga,
            other => panic!("unexpected action {other:?}"),
        }
    }

    fn notice(
        saga: SagaId,
        source: specie_protocol::Address,
        result: Result<(), AbortReason>,
    ) -> Notice {
        Notice {
            saga_id: saga,
            source,
            outcome: SagaOutcome {
                kind: SagaKind::Pay,
                result,
                spent_coin_ids: vec![],
                decided_at_ms: 0,
            },
        }
    }

    #[test]
    fn latency_counts_from_the_intended_time_even_when_sent_late() {
        let (mut t, start) = tracker();
        let intended = start + Duration::from_millis(200);
        let sent = intended + Duration::from_millis(30);
        let action = t.offer(intended, sent, 1000).expect("planned");
        let saga = saga_of(&action);
        let reporter = t.pending[&saga].planned.reporter;
        assert!(t.settle(
            notice(saga, reporter, Ok(())),
            sent + Duration::from_millis(5)
        ));
        let s = t.stats();
        assert_eq!(
            (s.offered, s.all.committed, s.finished_in_window),
            (1, 1, 1)
        );
        let p50 = s.all.latency.summary().p50_ms;
        assert!(
            (p50 - 35.0).abs() < 0.1,
            "35 ms from the intended time, got {p50}"
        );
        assert!((s.send_lag.summary().max_ms - 30.0).abs() < 0.1);
    }

    #[test]
    fn warmup_arrivals_are_not_measured_and_other_reporters_do_not_settle() {
        let (mut t, start) = tracker();
        let action = t.offer(
            start + Duration::from_millis(10),
            start + Duration::from_millis(10),
            1000,
        );
        let saga = saga_of(&action.expect("planned"));
        let reporter = t.pending[&saga].planned.reporter;
        let stranger = specie_protocol::Address::External(1);
        assert!(!t.settle(
            notice(saga, stranger, Ok(())),
            start + Duration::from_millis(20)
        ));
        assert_eq!(
            t.pending(),
            1,
            "only the reporter's notice settles an operation"
        );
        assert!(t.settle(
            notice(saga, reporter, Err(AbortReason::Timeout)),
            start + Duration::from_millis(20)
        ));
        assert_eq!(
            t.stats().offered,
            0,
            "a warm-up arrival is not offered in the window"
        );
        assert_eq!(t.stats().all.finished(), 0);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn the_outstanding_bound_sheds_arrivals_and_abandon_counts_the_unfinished() {
        let (mut t, start) = tracker();
        let at = start + Duration::from_millis(200);
        assert!(t.offer(at, at, 2).is_some());
        assert!(t.offer(at, at, 2).is_some());
        assert!(
            t.offer(at, at, 2).is_none(),
            "third arrival beyond the bound of 2"
        );
        assert_eq!((t.stats().offered, t.stats().shed), (3, 1));
        t.abandon();
        assert_eq!(t.stats().unfinished, 2);
        assert_eq!(t.pending_measured(), 0);
    }
}
