//! The simulator's host: what `specie_runtime::Host` does for a state machine, in virtual
//! time and without actix.
//!
//! A step runs the state machine, appends its events to the actor's journal, and holds what
//! the step sends and announces until the journal commit that covers it is durable. The
//! commit is asynchronous: it completes `commit latency` later (a healthy disk's group commit,
//! plus any `write_delay` fault), or fails (`fsync_error`), which crashes the actor. A crash
//! loses what was not durable — events and held messages alike — and a restart rebuilds the
//! state by replaying the durable journal, as the runtime's supervised host does.

use bytes::Bytes;
use specie_actors::central_bank::{CentralBank, CentralBankCommand};
use specie_actors::institution::{Institution, InstitutionCommand, InstitutionTimer};
use specie_actors::wallet::{Wallet, WalletCommand, WalletTimer};
use specie_protocol::Envelope;
use specie_runtime::{Effects, Notice, StateMachine};
use std::collections::VecDeque;

/// A timer of any actor kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyTimer {
    /// The central bank's (it arms none today).
    Bank,
    /// An institution's.
    Inst(InstitutionTimer),
    /// A wallet's.
    Wallet(WalletTimer),
}

/// An input for any actor. It lives for one step (queued commands are boxed), so the size
/// of an envelope inline does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// A delivered envelope.
    Envelope(Envelope),
    /// A timer fired.
    Timer(AnyTimer),
    /// Started or restarted (re-arm work in flight).
    Start,
    /// A central bank command.
    Bank(CentralBankCommand),
    /// An institution command.
    Inst(InstitutionCommand),
    /// A wallet command.
    Wallet(WalletCommand),
}

/// A step's messages and notices, held until the journal makes the step durable.
#[derive(Debug)]
pub struct Held {
    /// The journal sequence number that must be durable first.
    pub seq: u64,
    /// Envelopes to send.
    pub sends: Vec<Envelope>,
    /// Outcomes to publish.
    pub notices: Vec<Notice>,
}

/// What the world must do after a step.
#[derive(Debug, Default)]
pub struct Absorbed {
    /// Timers to arm: (delay ms, key).
    pub timers: Vec<(u64, AnyTimer)>,
    /// Held steps that may leave now, in order.
    pub release: Vec<Held>,
    /// A journal commit to complete: (virtual time, sequence number).
    pub commit: Option<(u64, u64)>,
}

/// A state machine the simulator can host: its timers convert to and from [`AnyTimer`].
pub trait SimMachine: StateMachine {
    /// Wraps a timer.
    fn wrap(t: Self::Timer) -> AnyTimer;
    /// Unwraps a timer of this kind.
    fn unwrap(t: AnyTimer) -> Option<Self::Timer>;
}

impl SimMachine for CentralBank {
    fn wrap(_t: ()) -> AnyTimer {
        AnyTimer::Bank
    }
    fn unwrap(t: AnyTimer) -> Option<()> {
        matches!(t, AnyTimer::Bank).then_some(())
    }
}

impl SimMachine for Institution {
    fn wrap(t: InstitutionTimer) -> AnyTimer {
        AnyTimer::Inst(t)
    }
    fn unwrap(t: AnyTimer) -> Option<InstitutionTimer> {
        match t {
            AnyTimer::Inst(t) => Some(t),
            _ => None,
        }
    }
}

impl SimMachine for Wallet {
    fn wrap(t: WalletTimer) -> AnyTimer {
        AnyTimer::Wallet(t)
    }
    fn unwrap(t: AnyTimer) -> Option<WalletTimer> {
        match t {
            AnyTimer::Wallet(t) => Some(t),
            _ => None,
        }
    }
}

/// Inputs of one state machine type (lives for one step, like [`Input`]).
#[allow(clippy::large_enum_variant)]
pub enum In<S: StateMachine> {
    /// An envelope.
    Envelope(Envelope),
    /// A timer.
    Timer(S::Timer),
    /// A command.
    Command(S::Command),
    /// Start or restart.
    Start,
}

/// One state machine with its journal and outbox.
pub struct Hosted<S: StateMachine> {
    factory: Box<dyn Fn() -> S>,
    /// The state (after a crash: rebuilt from the durable journal).
    pub state: S,
    durable: Vec<Bytes>,
    /// Appended, not yet durable: (sequence number, entry).
    pending: Vec<(u64, Bytes)>,
    next_seq: u64,
    durable_seq: u64,
    last_commit_at: u64,
    outbox: VecDeque<Held>,
}

impl<S: SimMachine> Hosted<S> {
    /// A fresh actor.
    pub fn new(factory: Box<dyn Fn() -> S>) -> Hosted<S> {
        Hosted {
            state: factory(),
            factory,
            durable: Vec::new(),
            pending: Vec::new(),
            next_seq: 1,
            durable_seq: 0,
            last_commit_at: 0,
            outbox: VecDeque::new(),
        }
    }

    /// Runs one step and takes its effects in: journal appends, held messages, timers.
    /// `clock_ms` is the actor's clock (skew included), `now` the simulation's time.
    pub fn step(
        &mut self,
        input: In<S>,
        clock_ms: u64,
        now: u64,
        commit_delay_ms: u64,
        early_ack: bool,
    ) -> Absorbed {
        let mut out = Effects::default();
        match input {
            In::Envelope(e) => self.state.on_envelope(e, clock_ms, &mut out),
            In::Timer(t) => self.state.on_timer(t, clock_ms, &mut out),
            In::Command(c) => self.state.on_command(c, clock_ms, &mut out),
            In::Start => self.state.on_start(clock_ms, &mut out),
        }
        let mut result = Absorbed {
            timers: out
                .timers
                .into_iter()
                .map(|(d, t)| (d, S::wrap(t)))
                .collect(),
            ..Absorbed::default()
        };
        if !out.events.is_empty() {
            let seq = self.next_seq;
            self.next_seq += 1;
            // One entry per step, as the runtime's host writes it.
            self.pending
                .push((seq, specie_runtime::step_entry(&out.events)));
            let at = self.last_commit_at.max(now + commit_delay_ms);
            self.last_commit_at = at;
            result.commit = Some((at, seq));
        }
        // The step's transaction records (`out.records`) are dropped: the simulator checks the
        // money invariants, not reconciliation.
        if out.sends.is_empty() && out.notices.is_empty() {
            return result;
        }
        let mut held = Held {
            seq: self.next_seq - 1,
            sends: out.sends,
            notices: out.notices,
        };
        #[cfg(feature = "planted-bugs")]
        if early_ack {
            // Planted bug `early-ack`: the step's messages leave before its journal commit.
            self.state.seal(&mut held.sends);
            result.release.push(held);
            return result;
        }
        let _ = early_ack;
        if self.outbox.is_empty() && held.seq <= self.durable_seq {
            self.state.seal(&mut held.sends);
            result.release.push(held);
        } else {
            self.outbox.push_back(held);
        }
        result
    }

    /// Completes the commit of everything up to `seq`; returns the held steps that may leave.
    pub fn commit(&mut self, seq: u64) -> Vec<Held> {
        let split = self.pending.partition_point(|(s, _)| *s <= seq);
        self.durable
            .extend(self.pending.drain(..split).map(|(_, e)| e));
        self.durable_seq = self.durable_seq.max(seq);
        let mut release = Vec::new();
        while self
            .outbox
            .front()
            .is_some_and(|h| h.seq <= self.durable_seq)
        {
            release.push(self.outbox.pop_front().expect("front exists"));
        }
        // The steps one commit made durable leave together, sealed as one batch (like the
        // runtime's host): their envelopes travel with the first.
        if let Some((first, rest)) = release.split_first_mut() {
            for held in rest {
                first.sends.append(&mut held.sends);
            }
            self.state.seal(&mut first.sends);
        }
        release
    }

    /// A crash: what was not durable is lost, and the state is rebuilt from the journal.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.outbox.clear();
        self.durable_seq = self.next_seq - 1;
        self.last_commit_at = 0;
        let mut state = (self.factory)();
        for (index, bytes) in self.durable.iter().enumerate() {
            for event in specie_runtime::step_events::<S::Event>(bytes) {
                let event = event.unwrap_or_else(|e| {
                    panic!(
                        "journal entry {index} of {} is unreadable: {e}",
                        state.address()
                    )
                });
                state.apply(&event);
            }
        }
        self.state = state;
    }

    /// Nothing waits for the journal.
    pub fn settled(&self) -> bool {
        self.pending.is_empty() && self.outbox.is_empty()
    }

    /// Entries in the durable journal.
    pub fn journal_len(&self) -> usize {
        self.durable.len()
    }
}

/// Any hosted actor.
pub enum Actor {
    /// The central bank.
    Bank(Box<Hosted<CentralBank>>),
    /// An institution.
    Inst(Box<Hosted<Institution>>),
    /// A wallet.
    Wallet(Box<Hosted<Wallet>>),
}

impl Actor {
    /// Runs one step; an input of another actor kind (a stale timer) does nothing.
    pub fn step(
        &mut self,
        input: Input,
        clock_ms: u64,
        now: u64,
        delay: u64,
        early: bool,
    ) -> Absorbed {
        fn go<S: SimMachine>(
            h: &mut Hosted<S>,
            input: Option<In<S>>,
            clock_ms: u64,
            now: u64,
            delay: u64,
            early: bool,
        ) -> Absorbed {
            match input {
                Some(i) => h.step(i, clock_ms, now, delay, early),
                None => Absorbed::default(),
            }
        }
        match self {
            Actor::Bank(h) => {
                let i = match input {
                    Input::Envelope(e) => Some(In::Envelope(e)),
                    Input::Timer(t) => CentralBank::unwrap(t).map(In::Timer),
                    Input::Start => Some(In::Start),
                    Input::Bank(c) => Some(In::Command(c)),
                    Input::Inst(_) | Input::Wallet(_) => None,
                };
                go(h, i, clock_ms, now, delay, early)
            }
            Actor::Inst(h) => {
                let i = match input {
                    Input::Envelope(e) => Some(In::Envelope(e)),
                    Input::Timer(t) => Institution::unwrap(t).map(In::Timer),
                    Input::Start => Some(In::Start),
                    Input::Inst(c) => Some(In::Command(c)),
                    Input::Bank(_) | Input::Wallet(_) => None,
                };
                go(h, i, clock_ms, now, delay, early)
            }
            Actor::Wallet(h) => {
                let i = match input {
                    Input::Envelope(e) => Some(In::Envelope(e)),
                    Input::Timer(t) => Wallet::unwrap(t).map(In::Timer),
                    Input::Start => Some(In::Start),
                    Input::Wallet(c) => Some(In::Command(c)),
                    Input::Bank(_) | Input::Inst(_) => None,
                };
                go(h, i, clock_ms, now, delay, early)
            }
        }
    }

    /// Completes a journal commit.
    pub fn commit(&mut self, seq: u64) -> Vec<Held> {
        match self {
            Actor::Bank(h) => h.commit(seq),
            Actor::Inst(h) => h.commit(seq),
            Actor::Wallet(h) => h.commit(seq),
        }
    }

    /// Crashes the actor.
    pub fn crash(&mut self) {
        match self {
            Actor::Bank(h) => h.crash(),
            Actor::Inst(h) => h.crash(),
            Actor::Wallet(h) => h.crash(),
        }
    }

    /// Nothing waits for the journal.
    pub fn settled(&self) -> bool {
        match self {
            Actor::Bank(h) => h.settled(),
            Actor::Inst(h) => h.settled(),
            Actor::Wallet(h) => h.settled(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::{Amount, InstitutionId};

    fn bank() -> Hosted<CentralBank> {
        Hosted::new(Box::new(|| CentralBank::new(86_400_000)))
    }

    fn mint(i: u32) -> In<CentralBank> {
        In::Command(CentralBankCommand::Mint {
            institution: InstitutionId(i),
            amount: Amount(100),
        })
    }

    #[test]
    fn a_crash_loses_what_was_not_durable_and_keeps_what_was() {
        let mut h = bank();
        let a = h.step(mint(0), 0, 0, 5, false);
        assert_eq!(a.commit, Some((5, 1)));
        h.commit(1);
        let b = h.step(mint(1), 10, 10, 5, false);
        assert_eq!(b.commit, Some((15, 2)));
        assert_eq!(h.state.snapshot().minted, Amount(200));
        h.crash();
        assert_eq!(
            h.state.snapshot().minted,
            Amount(100),
            "the second mint was never durable"
        );
        assert_eq!(h.journal_len(), 1);
        assert!(h.settled());
    }
}
