//! [`Host`]: the thin actix shell that runs any [`StateMachine`] under a supervisor.
//!
//! A step goes: decode the delivered bytes (rejecting what does not decode or is not
//! addressed here), let the state machine handle the input, journal the events it recorded,
//! and only then send its envelopes, arm its timers and publish its notices. A crash (the
//! actor stopping, e.g. because the journal refused a write) makes the supervisor restart the
//! host: it throws its in-memory state away and replays the journal.

use crate::journal::JournalError;
use crate::machine::{Effects, StateMachine};
use crate::network::Deliver;
use crate::node::Node;
use actix::prelude::*;
use bytes::Bytes;
use specie_protocol::{Address, Envelope};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

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
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Builds a fresh state machine (before any journal replay).
pub type Factory<S> = Arc<dyn Fn() -> S + Send + Sync>;

/// The name of an actor's kind, for metrics and reports.
pub fn actor_kind(address: Address) -> &'static str {
    match address {
        Address::CentralBank => "central_bank",
        Address::Institution(_) => "institution",
        Address::Wallet(_) => "wallet",
        Address::External(_) => "external",
    }
}

/// Rebuilds a state machine from its journal.
pub fn recover<S: StateMachine>(node: &Node, factory: &Factory<S>) -> Result<S, JournalError> {
    let mut state = factory();
    let address = state.address();
    for (index, bytes) in node.journal().load(address)?.iter().enumerate() {
        let event: S::Event =
            postcard::from_bytes(bytes).map_err(|e| JournalError::Corrupt {
                actor: address,
                index,
                why: e.to_string(),
            })?;
        state.apply(&event);
    }
    Ok(state)
}

/// Runs one state machine as a supervised actix actor.
pub struct Host<S: StateMachine> {
    node: Node,
    factory: Factory<S>,
    state: S,
    address: Address,
}

impl<S: StateMachine> Host<S> {
    /// Builds the host, recovering the state from the journal.
    pub fn new(node: Node, factory: Factory<S>) -> Result<Host<S>, JournalError> {
        let state = recover(&node, &factory)?;
        let address = state.address();
        Ok(Host {
            node,
            factory,
            state,
            address,
        })
    }

    fn perform(&mut self, out: Effects<S::Event, S::Timer>, ctx: &mut Context<Self>) {
        if !out.events.is_empty() {
            let entries = out
                .events
                .iter()
                .map(|e| Bytes::from(postcard::to_stdvec(e).expect("events always serialize")))
                .collect();
            if let Err(e) = self.node.journal().append(self.address, entries) {
                // Nothing of this step may leave the actor: crash, and let the restart
                // rebuild the state from what the journal does hold.
                eprintln!("{}: {e}; restarting", self.address);
                ctx.stop();
                return;
            }
        }
        let network = self.node.network();
        for envelope in out.sends {
            network.send(envelope);
        }
        for (delay_ms, key) in out.timers {
            ctx.run_later(Duration::from_millis(delay_ms), move |host, ctx| {
                let mut out = Effects::default();
                let now = host.node.clock().now_ms();
                host.state.on_timer(key, now, &mut out);
                host.perform(out, ctx);
            });
        }
        for notice in out.notices {
            self.node.publish(&notice);
        }
    }
}

impl<S: StateMachine> Actor for Host<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.node.mailbox_capacity());
        self.node
            .network()
            .register(self.address, ctx.address().recipient());
        let mut out = Effects::default();
        let now = self.node.clock().now_ms();
        self.state.on_start(now, &mut out);
        self.perform(out, ctx);
    }
}

impl<S: StateMachine> Supervised for Host<S> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let kind = actor_kind(self.address);
        metrics::counter!("specie_actor_restarts_total", "actor_kind" => kind).increment(1);
        self.node.record_restart(kind);
        match recover(&self.node, &self.factory) {
            Ok(state) => self.state = state,
            Err(e) => self.node.escalate(format!(
                "{} cannot recover from its journal: {e}",
                self.address
            )),
        }
    }
}

impl<S: StateMachine> Handler<Deliver> for Host<S> {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let network = self.node.network().clone();
        let envelope = match Envelope::decode(&msg.0) {
            Ok(envelope) => envelope,
            Err(_) => {
                network.handled(Some("decode"));
                return;
            }
        };
        if envelope.to != self.address {
            network.handled(Some("misaddressed"));
            return;
        }
        let mut out = Effects::default();
        let now = self.node.clock().now_ms();
        self.state.on_envelope(envelope, now, &mut out);
        self.perform(out, ctx);
        // Counted after the step's own sends, so the network never looks idle in between.
        network.handled(None);
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

impl<S: StateMachine> Handler<Crash> for Host<S> {
    type Result = ();

    fn handle(&mut self, _msg: Crash, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
