//! [`Host`]: the thin actix shell that runs any [`StateMachine`] under a supervisor.
//!
//! A step goes: decode the delivered bytes (rejecting what does not decode or is not
//! addressed here), let the state machine handle the input, append the events it recorded to
//! the journal, arm its timers, and hold its envelopes, notices and transaction records in an
//! outbox until the journal says the step is durable — so nothing a step announces can be
//! forgotten by a crash.
//! Steps without events wait behind the actor's earlier steps, whose state they may reveal.
//!
//! A crash (the actor stopping: a journal fault, a failed write, an injected [`Crash`]) makes
//! the supervisor restart the host: it sleeps the backoff the node's supervision gives it (or
//! escalates), waits until its earlier appends are durable, rebuilds the state by replaying
//! its journal, and releases what its outbox held from durable steps. (A process crash loses
//! the outbox; at-least-once retries recover the messages in it.)

use crate::journal::{AppendFault, JournalError};
use crate::machine::{Effects, LedgerRecord, Notice, StateMachine};
use crate::network::Deliver;
use crate::node::Node;
use crate::supervision::RestartVerdict;
use crate::telemetry::{self, StepSpan};
use actix::prelude::*;
use bytes::Bytes;
use specie_protocol::{Address, Envelope};
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A local command for the hosted state machine.
#[derive(Debug)]
pub struct Submit<C>(pub C);

impl<C: 'static> Message for Submit<C> {
    type Result = ();
}

/// Asks a host for a snapshot of its state machine.
#[derive(Debug)]
pub struct Inspect<T>(PhantomData<T>);

impl<T> Default for Inspect<T> {
    fn default() -> Self {
        Inspect(PhantomData)
    }
}

impl<T: 'static> Message for Inspect<T> {
    type Result = T;
}

/// Crashes the actor: it stops and its supervisor restarts it from the journal. The fault
/// injector's way to kill an actor; nothing in the actor sees it coming.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Crash {
    /// Part of a `one_for_all` group restart (which is not propagated again).
    pub group: bool,
}

/// Builds a fresh state machine (before any journal replay).
pub type Factory<S> = Arc<dyn Fn() -> S + Send + Sync>;

/// The name of an actor's kind, for metrics and reports.
pub fn actor_kind(address: Address) -> &'static str {
    match address {
        Address::CentralBank => "central_bank",
        Address::Institution(_) => "institution",
        Address::Wallet(_) => "wallet",
        Address::External(_) => "external",
        Address::Reconciler(_) => "reconciler",
        Address::Escrow(_) => "escrow",
    }
}

/// Rebuilds a state machine from its journal: its latest snapshot, then the entries after it.
pub fn recover<S: StateMachine>(
    journal: &dyn crate::Journal,
    factory: &Factory<S>,
) -> Result<S, JournalError> {
    recover_counting(journal, factory).map(|(state, _)| state)
}

/// When a host takes a snapshot: once `snapshot_entries_min` entries were appended since the
/// last one, and not before those entries weigh as many bytes as the last snapshot did. A
/// state that grows — an institution's register and dedup records grow with every saga — is
/// then snapshotted proportionally less often, so snapshots cost at most about as much as
/// the journal writes they replace; with a fixed cadence each snapshot is costlier than the
/// last, and the work per saga climbs as the run goes on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SnapshotPace {
    entries: u64,
    bytes: u64,
    last_snapshot_bytes: u64,
}

impl SnapshotPace {
    fn appended(&mut self, entries: u64, bytes: u64) {
        self.entries += entries;
        self.bytes += bytes;
    }

    fn due(&self, entries_min: u64) -> bool {
        self.entries >= entries_min && self.bytes >= self.last_snapshot_bytes
    }

    fn snapshotted(&mut self, bytes: u64) {
        *self = SnapshotPace {
            last_snapshot_bytes: bytes,
            ..SnapshotPace::default()
        };
    }
}

/// [`recover`], also returning what was replayed after the snapshot, for the snapshot pace.
fn recover_counting<S: StateMachine>(
    journal: &dyn crate::Journal,
    factory: &Factory<S>,
) -> Result<(S, SnapshotPace), JournalError> {
    let mut state = factory();
    let address = state.address();
    let mut pace = SnapshotPace::default();
    if let Some(checkpoint) = journal.load_snapshot(address)? {
        pace.snapshotted(checkpoint.len() as u64);
        state
            .restore(&checkpoint)
            .map_err(|why| JournalError::Corrupt {
                actor: address,
                index: 0,
                why: format!("snapshot: {why}"),
            })?;
    }
    let entries = journal.load(address)?;
    for (index, bytes) in entries.iter().enumerate() {
        for event in step_events::<S::Event>(bytes) {
            let event = event.map_err(|why| JournalError::Corrupt {
                actor: address,
                index,
                why,
            })?;
            state.apply(&event);
        }
        pace.appended(1, bytes.len() as u64);
    }
    Ok((state, pace))
}

/// One journal entry for a step: its events' postcard encodings, one after the other (a
/// step's events are written, and made durable, together; one entry instead of one per event
/// costs the journal a fraction of the inserts).
pub fn step_entry<E: serde::Serialize>(events: &[E]) -> Bytes {
    let mut bytes = Vec::with_capacity(64 * events.len());
    for event in events {
        bytes = postcard::to_extend(event, bytes).expect("events always serialize");
    }
    Bytes::from(bytes)
}

/// The events of a step's journal entry, in order (an entry written before steps were
/// grouped holds one event, and reads the same way). An entry that does not decode to whole
/// events yields one error and ends.
pub fn step_events<E: serde::de::DeserializeOwned>(
    entry: &[u8],
) -> impl Iterator<Item = Result<E, String>> + '_ {
    let mut rest = Some(entry);
    std::iter::from_fn(move || {
        let bytes = rest.filter(|r| !r.is_empty())?;
        match postcard::take_from_bytes::<E>(bytes) {
            Ok((event, left)) => {
                rest = Some(left);
                Some(Ok(event))
            }
            Err(e) => {
                rest = None;
                Some(Err(e.to_string()))
            }
        }
    })
}

/// What a step sends, held until the step is durable.
struct Held {
    seq: u64,
    sends: Vec<Envelope>,
    notices: Vec<Notice>,
    records: Vec<LedgerRecord>,
}

/// Runs one state machine as a supervised actix actor.
pub struct Host<S: StateMachine> {
    node: Node,
    factory: Factory<S>,
    state: S,
    address: Address,
    group: Option<u64>,
    /// Sequence number of this actor's latest append.
    last_seq: u64,
    /// Effects of steps that are not durable yet, in step order.
    outbox: VecDeque<Held>,
    /// Set by `restarting`: the backoff to sleep before recovering.
    restart: Option<Duration>,
    /// The current crash is part of a group restart.
    group_crash: bool,
    /// What was appended since the last snapshot (or the start of the journal): decides the
    /// next one.
    snapshot_pace: SnapshotPace,
    /// Armed timers by (deadline, arming order). One actix timer per host, at the earliest
    /// deadline, instead of one per timer: actix polls every future an actor has spawned each
    /// time the actor wakes, so a coordinator with thousands of sagas in flight (each with a
    /// timeout and a retry timer) would pay for all of them on every message.
    timers: BTreeMap<(Instant, u64), S::Timer>,
    /// Arming order, to keep timers with equal deadlines in the order they were armed.
    timer_seq: u64,
    /// The one actix timer armed, and its deadline.
    timer_armed: Option<(Instant, SpawnHandle)>,
    /// Whether a future waiting for the outbox's front step to become durable is spawned (at
    /// most one at a time, for the same reason as the timers).
    durable_waiter: bool,
}

impl<S: StateMachine> Host<S> {
    /// Builds the host, recovering the state from the journal.
    pub fn new(
        node: Node,
        factory: Factory<S>,
        group: Option<u64>,
    ) -> Result<Host<S>, JournalError> {
        let (state, snapshot_pace) = recover_counting(node.journal().as_ref(), &factory)?;
        let address = state.address();
        Ok(Host {
            snapshot_pace,
            node,
            factory,
            state,
            address,
            group,
            last_seq: 0,
            outbox: VecDeque::new(),
            restart: None,
            group_crash: false,
            timers: BTreeMap::new(),
            timer_seq: 0,
            timer_armed: None,
            durable_waiter: false,
        })
    }

    fn perform(&mut self, out: Effects<S::Event, S::Timer>, ctx: &mut Context<Self>) {
        if !out.events.is_empty() {
            let entries = vec![step_entry(&out.events)];
            let fault = self.node.journal_fault(self.address, &entries);
            let injected = match fault {
                AppendFault::None => None,
                AppendFault::CrashBefore => Some("journal_crash_before"),
                AppendFault::CrashAfter => Some("journal_crash_after"),
            };
            if let Some(fault) = injected {
                metrics::counter!("specie_faults_injected_total", "fault" => fault).increment(1);
            }
            if fault == AppendFault::CrashBefore {
                ctx.stop();
                return;
            }
            let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
            match self.node.journal().append(self.address, entries) {
                Ok(seq) => {
                    self.last_seq = seq;
                    self.snapshot_pace.appended(1, bytes);
                }
                Err(e) => {
                    // Nothing of this step may leave the actor: crash, and let the restart
                    // rebuild the state from what the journal does hold.
                    eprintln!("{}: {e}; restarting", self.address);
                    ctx.stop();
                    return;
                }
            }
            if fault == AppendFault::CrashAfter {
                // The step's envelopes die with the actor (retries recover them); its notices
                // (the client's acknowledgements) and transaction records are facts of the
                // step, held by the runtime and published once it is durable, after the
                // restart.
                if !out.notices.is_empty() || !out.records.is_empty() {
                    self.outbox.push_back(Held {
                        seq: self.last_seq,
                        sends: Vec::new(),
                        notices: out.notices,
                        records: out.records,
                    });
                }
                ctx.stop();
                return;
            }
            if self.snapshot_pace.due(self.node.snapshot_entries_min()) {
                self.take_snapshot();
            }
        }
        if !out.timers.is_empty() {
            let now = Instant::now();
            for (delay_ms, key) in out.timers {
                self.timer_seq += 1;
                self.timers
                    .insert((now + Duration::from_millis(delay_ms), self.timer_seq), key);
            }
            self.arm_timer(ctx);
        }
        if out.sends.is_empty() && out.notices.is_empty() && out.records.is_empty() {
            return;
        }
        let held = Held {
            seq: self.last_seq,
            sends: out.sends,
            notices: out.notices,
            records: out.records,
        };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::early_ack() {
            // Planted bug `early-ack`: the step's messages and notices leave before its
            // journal entries are durable.
            self.release(held);
            return;
        }
        if self.outbox.is_empty() && self.node.journal().is_durable(held.seq) {
            self.release(held);
            return;
        }
        self.outbox.push_back(held);
        self.wait_for_outbox(ctx);
    }

    /// Makes sure the outbox's front step is being waited for: one waiter at a time, for the
    /// front (the earliest step, which must be released first); when it resolves, everything
    /// durable by then is released and the next front is waited for.
    fn wait_for_outbox(&mut self, ctx: &mut Context<Self>) {
        if self.durable_waiter {
            return;
        }
        let Some(front) = self.outbox.front() else {
            return;
        };
        self.durable_waiter = true;
        let durable = self.node.journal().wait_durable(front.seq);
        ctx.spawn(durable.into_actor(self).map(|result, host, ctx| {
            host.durable_waiter = false;
            match result {
                Ok(()) => {
                    host.flush();
                    host.wait_for_outbox(ctx);
                }
                Err(e) => host.node.escalate(format!("{}: {e}", host.address)),
            }
        }));
    }

    /// Arms the host's one actix timer for the earliest deadline, unless it already is.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(&(deadline, _)) = self.timers.keys().next() else {
            return;
        };
        if let Some((armed, handle)) = self.timer_armed {
            if armed <= deadline {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = deadline.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |host, ctx| {
            host.timer_armed = None;
            host.fire_timers(ctx);
        });
        self.timer_armed = Some((deadline, handle));
    }

    /// Fires every timer that is due, in deadline order, then re-arms for the next one.
    fn fire_timers(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            let mut out = Effects::default();
            let now_ms = self.node.clock().now_ms();
            self.state.on_timer(key, now_ms, &mut out);
            self.perform(out, ctx);
            if ctx.state() != ActorState::Running {
                // The step crashed the actor: its timers die with it (the restart re-arms them).
                return;
            }
        }
        if self.timers.is_empty() {
            // An emptied map keeps its root node (≈ 500 bytes): a million idle wallets would
            // hold half a gigabyte of them.
            self.timers = BTreeMap::new();
        }
        self.arm_timer(ctx);
    }

    /// Replaces the entries so far with a snapshot of the state, when the machine takes
    /// snapshots. A failure only postpones compaction: the entries stay.
    fn take_snapshot(&mut self) {
        let Some(checkpoint) = self.state.checkpoint() else {
            return;
        };
        let size = checkpoint.len() as u64;
        match self
            .node
            .journal()
            .snapshot(self.address, Bytes::from(checkpoint), self.last_seq)
        {
            Ok(seq) => {
                self.last_seq = seq;
                self.snapshot_pace.snapshotted(size);
                metrics::counter!("specie_journal_snapshots_total").increment(1);
            }
            Err(e) => eprintln!(
                "{}: snapshot failed, keeping the entries: {e}",
                self.address
            ),
        }
    }

    /// Releases, in order, every held step that is durable, their envelopes sealed as one
    /// batch.
    fn flush(&mut self) {
        let mut released = Vec::new();
        while let Some(front) = self.outbox.front() {
            if !self.node.journal().is_durable(front.seq) {
                break;
            }
            released.push(self.outbox.pop_front().expect("front exists"));
        }
        if let [held] = &mut released[..] {
            self.state.seal(&mut held.sends);
        } else if released.iter().any(|h| !h.sends.is_empty()) {
            let mut sends: Vec<Envelope> = released
                .iter_mut()
                .flat_map(|h| std::mem::take(&mut h.sends))
                .collect();
            self.state.seal(&mut sends);
            let network = self.node.network();
            for envelope in sends {
                network.send(envelope);
            }
        }
        for held in released {
            self.publish(held);
        }
    }

    /// Seals and sends a step's envelopes, then publishes its notices and records.
    fn release(&self, mut held: Held) {
        self.state.seal(&mut held.sends);
        self.publish(held);
    }

    /// Sends what `held` still holds and publishes its notices and records.
    fn publish(&self, held: Held) {
        let network = self.node.network();
        for envelope in held.sends {
            network.send(envelope);
        }
        for notice in held.notices {
            self.node.publish(&notice);
        }
        if !held.records.is_empty() {
            self.node.publish_records(self.address, &held.records);
        }
    }

    fn start_machine(&mut self, ctx: &mut Context<Self>) {
        let mut out = Effects::default();
        let now = self.node.clock().now_ms();
        self.state.on_start(now, &mut out);
        self.perform(out, ctx);
    }
}

impl<S: StateMachine> Actor for Host<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A restart drops every future of the old context: the timers (the state machine
        // re-arms what it still needs in `on_start`) and the durable waiter.
        self.timers.clear();
        self.timer_armed = None;
        self.durable_waiter = false;
        ctx.set_mailbox_capacity(self.node.mailbox_capacity());
        self.node
            .network()
            .register(self.address, ctx.address().recipient());
        let Some(backoff) = self.restart.take() else {
            self.start_machine(ctx);
            return;
        };
        // Handle no message before the state is rebuilt: sleep the backoff, wait until every
        // earlier append is durable (or replay would miss it), then replay the journal.
        let durable = self.node.journal().wait_durable(self.last_seq);
        let recovery = async move {
            tokio::time::sleep(backoff).await;
            durable.await
        };
        ctx.wait(recovery.into_actor(self).map(|result, host, ctx| {
            let recovered =
                result.and_then(|()| recover_counting(host.node.journal().as_ref(), &host.factory));
            match recovered {
                Ok((state, pace)) => {
                    host.state = state;
                    host.snapshot_pace = pace;
                    // Every held step is durable now (recovery waited for the last append).
                    host.flush();
                    host.wait_for_outbox(ctx);
                    host.start_machine(ctx);
                }
                Err(e) => host.node.escalate(format!(
                    "{} cannot recover from its journal: {e}",
                    host.address
                )),
            }
        }));
    }
}

impl<S: StateMachine> Supervised for Host<S> {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        let kind = actor_kind(self.address);
        metrics::counter!("specie_actor_restarts_total", "actor_kind" => kind).increment(1);
        self.node.record_restart(kind);
        // The outbox survives the crash, like a durable outbox: what it holds is released
        // once its steps are durable, after recovery. A reply lost here would be recovered by
        // retries, but a notice (a client's acknowledgement) would never be published again.
        match self
            .node
            .supervision()
            .on_restart(self.address, Instant::now())
        {
            RestartVerdict::Restart(backoff) => self.restart = Some(backoff),
            RestartVerdict::Escalate(why) => {
                self.restart = Some(Duration::MAX / 4);
                self.node.escalate(why);
            }
        }
        if let Some(group) = self.group {
            if !std::mem::take(&mut self.group_crash) {
                self.node.restart_group(group, &ctx.address().recipient());
            }
        }
    }
}

impl<S: StateMachine> Handler<Deliver> for Host<S> {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let network = self.node.network().clone();
        let envelope = match msg.into_envelope() {
            Ok(envelope) => envelope,
            Err(_) => {
                network.handled(self.address, Some("decode"));
                return;
            }
        };
        if envelope.to != self.address {
            network.handled(self.address, Some("misaddressed"));
            return;
        }
        let mut out = Effects::default();
        let now = self.node.clock().now_ms();
        // A span for a step of a sampled saga (nothing when tracing is off); the step's sends
        // carry it as their parent.
        let span = StepSpan::start(&envelope, self.address);
        let saga = envelope.saga_id;
        self.state.on_envelope(envelope, now, &mut out);
        telemetry::stamp_sends(span.as_ref(), saga, &mut out.sends);
        self.perform(out, ctx);
        if let Some(span) = span {
            span.end();
        }
        // Counted after the step's own sends, so the network never looks idle in between.
        network.handled(self.address, None);
    }
}

impl<S: StateMachine> Handler<Submit<S::Command>> for Host<S> {
    type Result = ();

    fn handle(&mut self, msg: Submit<S::Command>, ctx: &mut Context<Self>) {
        let mut out = Effects::default();
        let now = self.node.clock().now_ms();
        self.state.on_command(msg.0, now, &mut out);
        self.perform(out, ctx);
    }
}

impl<S: StateMachine> Handler<Inspect<S::Snapshot>> for Host<S> {
    type Result = MessageResult<Inspect<S::Snapshot>>;

    fn handle(&mut self, _msg: Inspect<S::Snapshot>, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.snapshot())
    }
}

/// Runs a read-only function on a host's state machine and returns what it computes: a
/// query that needs less than a whole snapshot (a saga's state, a balance).
pub struct Query<S, R>(pub Box<dyn FnOnce(&S) -> R + Send>);

impl<S: 'static, R: 'static> Message for Query<S, R> {
    type Result = R;
}

impl<S: StateMachine, R: 'static> Handler<Query<S, R>> for Host<S> {
    type Result = MessageResult<Query<S, R>>;

    fn handle(&mut self, msg: Query<S, R>, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((msg.0)(&self.state))
    }
}

impl<S: StateMachine> Handler<Crash> for Host<S> {
    type Result = ();

    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) {
        if !msg.group {
            metrics::counter!("specie_faults_injected_total", "fault" => "crash").increment(1);
        }
        self.group_crash = msg.group;
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{step_entry, step_events, SnapshotPace};

    #[test]
    fn a_snapshot_waits_for_its_entries_and_for_as_many_bytes_as_the_last_one() {
        let mut pace = SnapshotPace::default();
        pace.appended(99, 5_000);
        assert!(!pace.due(100), "too few entries");
        pace.appended(1, 50);
        assert!(pace.due(100), "the first snapshot needs only the entries");
        pace.snapshotted(1_000_000);
        pace.appended(150, 400_000);
        assert!(
            !pace.due(100),
            "a large state waits for as many bytes of entries"
        );
        pace.appended(10, 600_000);
        assert!(pace.due(100));
        pace.snapshotted(10);
        pace.appended(50, 1_000);
        assert!(!pace.due(100), "a small state waits for the entries");
    }

    #[test]
    fn a_step_entry_reads_back_as_its_events_in_order() {
        let events = vec![
            (1u32, "lock".to_string()),
            (2, String::new()),
            (3, "x".repeat(300)),
        ];
        let entry = step_entry(&events);
        let back: Vec<(u32, String)> = step_events(&entry).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, events);
        // An entry of one event — as written before steps were grouped — reads the same way.
        let single = postcard::to_stdvec(&events[0]).unwrap();
        let back: Vec<(u32, String)> = step_events(&single).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, events[..1]);
        // A truncated entry is an error, not fewer events.
        let cut = &entry[..entry.len() - 5];
        let read: Vec<Result<(u32, String), String>> = step_events(cut).collect();
        assert!(read.last().is_some_and(Result::is_err), "{read:?}");
        assert_eq!(step_events::<(u32, String)>(&[]).count(), 0);
    }
}
