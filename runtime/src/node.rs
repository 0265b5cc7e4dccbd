//! [`Node`]: one process's runtime — its network, journal, clock, arbiters and observers.

use crate::clock::Clock;
use crate::host::{Factory, Host};
use crate::journal::Journal;
use crate::machine::{Notice, StateMachine};
use crate::network::Network;
use actix::prelude::*;
use dashmap::DashMap;
use parking_lot::RwLock;
use std::sync::Arc;

/// Something that wants to hear about saga outcomes.
pub type Observer = Arc<dyn Fn(&Notice) + Send + Sync>;

struct Inner {
    network: Network,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    arbiters: Vec<ArbiterHandle>,
    mailbox_capacity: usize,
    observers: RwLock<Vec<Observer>>,
    restarts: DashMap<&'static str, u64>,
    escalations: RwLock<Vec<String>>,
}

/// A handle on the runtime of one process. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("arbiters", &self.inner.arbiters.len())
            .field("network", &self.inner.network)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node with `arbiter_count` arbiters (threads). Must run inside an actix system.
    pub fn start(
        network: Network,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        arbiter_count: usize,
        mailbox_capacity: usize,
    ) -> Node {
        assert!(arbiter_count > 0, "a node needs at least one arbiter");
        assert!(mailbox_capacity > 0, "mailboxes need room for one message");
        let arbiters = (0..arbiter_count)
            .map(|_| Arbiter::new().handle())
            .collect();
        Node {
            inner: Arc::new(Inner {
                network,
                journal,
                clock,
                arbiters,
                mailbox_capacity,
                observers: RwLock::new(Vec::new()),
                restarts: DashMap::new(),
                escalations: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Starts a state machine under a supervisor on arbiter `placement % arbiters`.
    pub fn spawn<S, F>(&self, placement: usize, factory: F) -> Addr<Host<S>>
    where
        S: StateMachine,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let factory: Factory<S> = Arc::new(factory);
        let arbiter = &self.inner.arbiters[placement % self.inner.arbiters.len()];
        let node = self.clone();
        Supervisor::start_in_arbiter(arbiter, move |_ctx| {
            Host::new(node.clone(), factory).unwrap_or_else(|e| {
                node.escalate(format!("an actor cannot recover from its journal: {e}"));
                panic!("unrecoverable journal: {e}");
            })
        })
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Mailbox capacity of every host.
    pub fn mailbox_capacity(&self) -> usize {
        self.inner.mailbox_capacity
    }

    /// Adds an observer of saga outcomes.
    pub fn observe(&self, observer: Observer) {
        self.inner.observers.write().push(observer);
    }

    /// Hands a notice to every observer.
    pub fn publish(&self, notice: &Notice) {
        for observer in self.inner.observers.read().iter() {
            observer(notice);
        }
    }

    /// Counts a restart of an actor of `kind`.
    pub fn record_restart(&self, kind: &'static str) {
        *self.inner.restarts.entry(kind).or_insert(0) += 1;
    }

    /// Restarts so far, by actor kind.
    pub fn restarts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .inner
            .restarts
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect();
        v.sort();
        v
    }

    /// Something a supervisor cannot fix: record it and stop the actor system with an error.
    pub fn escalate(&self, why: String) {
        eprintln!("escalation: {why}; stopping the node");
        self.inner.escalations.write().push(why);
        if let Some(system) = System::try_current() {
            system.stop_with_code(70);
        }
    }

    /// Escalations so far.
    pub fn escalations(&self) -> Vec<String> {
        self.inner.escalations.read().clone()
    }

    /// Stops the node's arbiters.
    pub fn shutdown(&self) {
        for arbiter in &self.inner.arbiters {
            arbiter.stop();
        }
    }
}
