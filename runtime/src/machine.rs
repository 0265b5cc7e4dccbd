//! The contract between business rules and the runtime.
//!
//! An actor's rules are a [`StateMachine`]: it takes one input (an envelope, a timer, a local
//! command) and the current time, changes its state only through events it records, and
//! returns [`Effects`]: events to journal, envelopes to send, timers to arm, notices for
//! observers and transaction records for reconciliation. It performs no I/O, so it can be unit-tested without a runtime and driven by a
//! deterministic simulator.

use serde::{de::DeserializeOwned, Serialize};
use specie_protocol::envelope::SagaOutcome;
use specie_protocol::reconcile::TransactionRecord;
use specie_protocol::{Address, Envelope, InstitutionId, SagaId};

/// A saga reached a terminal state at some actor; published to the node's observers (the
/// workload driver, reports, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The saga.
    pub saga_id: SagaId,
    /// The actor that observed the outcome.
    pub source: Address,
    /// The outcome.
    pub outcome: SagaOutcome,
}

/// A transaction record a step produced, for reconciliation: a committed step that moved
/// value, as the actor that produced it knows it. Published to the node's ledger sinks
/// (tagged with the producing actor's address) once the step is durable, like a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    /// The institution whose reconciliation batch the record belongs to.
    pub institution: InstitutionId,
    /// The record.
    pub record: TransactionRecord,
}

/// What one step of a state machine asks the runtime to do, in this order: journal the
/// events, then send the envelopes, arm the timers and publish the notices and records.
#[derive(Debug)]
pub struct Effects<E, T> {
    /// Events already applied to the state; the host journals them before anything leaves.
    pub events: Vec<E>,
    /// Envelopes to send (message ids are stamped by the network).
    pub sends: Vec<Envelope>,
    /// Timers to arm: (delay in ms, key).
    pub timers: Vec<(u64, T)>,
    /// Outcomes to publish.
    pub notices: Vec<Notice>,
    /// Transaction records to publish (empty for most steps: no allocation then).
    pub records: Vec<LedgerRecord>,
}

impl<E, T> Default for Effects<E, T> {
    fn default() -> Self {
        Effects {
            events: Vec::new(),
            sends: Vec::new(),
            timers: Vec::new(),
            notices: Vec::new(),
            records: Vec::new(),
        }
    }
}

impl<E, T> Effects<E, T> {
    /// Queues an envelope.
    pub fn send(&mut self, envelope: Envelope) {
        self.sends.push(envelope);
    }

    /// Arms a timer that fires after `delay_ms`.
    pub fn timer(&mut self, delay_ms: u64, key: T) {
        self.timers.push((delay_ms, key));
    }

    /// Publishes a saga outcome.
    pub fn notice(&mut self, notice: Notice) {
        self.notices.push(notice);
    }

    /// Publishes a transaction record of `institution`'s reconciliation batch.
    pub fn ledger(&mut self, institution: InstitutionId, record: TransactionRecord) {
        self.records.push(LedgerRecord {
            institution,
            record,
        });
    }
}

/// An actor's business rules as a pure state machine.
pub trait StateMachine: Sized + Unpin + 'static {
    /// A journaled fact. Replaying every event of an actor through [`StateMachine::apply`]
    /// rebuilds its state.
    type Event: Serialize + DeserializeOwned + Send + 'static;
    /// The key of a timer this machine arms.
    type Timer: Send + 'static;
    /// A local command (from the process that hosts the actor, not from the network).
    type Command: Send + 'static;
    /// What an audit or a report reads of the state.
    type Snapshot: Send + 'static;

    /// The actor's address.
    fn address(&self) -> Address;

    /// Applies one event. The only place where state changes.
    fn apply(&mut self, event: &Self::Event);

    /// Called when the actor starts and after every restart, with the recovered state:
    /// re-arm timers for work in flight.
    fn on_start(&mut self, now_ms: u64, out: &mut Effects<Self::Event, Self::Timer>);

    /// Handles an envelope addressed to this actor.
    fn on_envelope(
        &mut self,
        envelope: Envelope,
        now_ms: u64,
        out: &mut Effects<Self::Event, Self::Timer>,
    );

    /// Handles a timer armed earlier.
    fn on_timer(
        &mut self,
        key: Self::Timer,
        now_ms: u64,
        out: &mut Effects<Self::Event, Self::Timer>,
    );

    /// Handles a local command.
    fn on_command(
        &mut self,
        command: Self::Command,
        now_ms: u64,
        out: &mut Effects<Self::Event, Self::Timer>,
    );

    /// A copy of what audits and reports need.
    fn snapshot(&self) -> Self::Snapshot;

    /// Called with the envelopes of every step released together — the steps one journal
    /// commit made durable — just before they leave: the place for work that is cheaper done
    /// once per batch than once per step (an institution signs all the coins it issued in
    /// the batch with one signature). The default leaves them as they are.
    fn seal(&self, sends: &mut [Envelope]) {
        let _ = sends;
    }

    /// The whole state as bytes, for a snapshot that replaces the journal entries it covers;
    /// `None` (the default) when the machine does not take snapshots.
    fn checkpoint(&self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces the state with a snapshot taken by [`StateMachine::checkpoint`].
    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), String> {
        let _ = checkpoint;
        Err("this actor does not take snapshots".into())
    }

    /// Applies an event and queues it for the journal: the one way a step changes state.
    fn record(&mut self, event: Self::Event, out: &mut Effects<Self::Event, Self::Timer>) {
        self.apply(&event);
        out.events.push(event);
    }
}
