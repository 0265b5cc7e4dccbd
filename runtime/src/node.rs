//! [`Node`]: one process's runtime — its network, journal, clock, arbiters, supervision and
//! observers.

use crate::clock::Clock;
use crate::host::{Crash, Factory, Host};
use crate::journal::{AppendFault, Journal, JournalFaultHook, NoJournalFaults};
use crate::machine::{LedgerRecord, Notice, StateMachine};
use crate::network::Network;
use crate::supervision::{RestartStrategy, Supervision, SupervisionSettings};
use actix::prelude::*;
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::RwLock;
use specie_protocol::Address;
use std::sync::Arc;

/// Something that wants to hear about saga outcomes.
pub type Observer = Arc<dyn Fn(&Notice) + Send + Sync>;

/// Something that collects the transaction records steps produce (reconciliation's feed):
/// called with the producing actor's address and the records of one durable step.
pub type LedgerSink = Arc<dyn Fn(Address, &[LedgerRecord]) + Send + Sync>;

/// Settings of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeSettings {
    /// Arbiters (threads) hosting actors.
    pub arbiters: usize,
    /// Capacity of every host's mailbox.
    pub mailbox_capacity: usize,
    /// Restart strategy and intensity.
    pub supervision: SupervisionSettings,
    /// An actor with this many journal entries since its last snapshot takes a new one.
    pub snapshot_entries_min: u64,
}

struct Inner {
    network: Network,
    journal: Arc<dyn Journal>,
    journal_faults: RwLock<Arc<dyn JournalFaultHook>>,
    clock: Arc<dyn Clock>,
    arbiters: Vec<ArbiterHandle>,
    settings: NodeSettings,
    supervision: Supervision,
    groups: DashMap<u64, Vec<Recipient<Crash>>>,
    observers: RwLock<Vec<Observer>>,
    ledger_sinks: RwLock<Vec<LedgerSink>>,
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
    /// Starts a node. Must run inside an actix system.
    pub fn start(
        network: Network,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        settings: NodeSettings,
    ) -> Node {
        assert!(settings.arbiters > 0, "a node needs at least one arbiter");
        assert!(
            settings.mailbox_capacity > 0,
            "mailboxes need room for one message"
        );
        let arbiters = (0..settings.arbiters)
            .map(|_| Arbiter::new().handle())
            .collect();
        Node {
            inner: Arc::new(Inner {
                network,
                journal,
                journal_faults: RwLock::new(Arc::new(NoJournalFaults)),
                clock,
                arbiters,
                settings,
                supervision: Supervision::new(settings.supervision),
                groups: DashMap::new(),
                observers: RwLock::new(Vec::new()),
                ledger_sinks: RwLock::new(Vec::new()),
                restarts: DashMap::new(),
                escalations: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Starts a state machine under a supervisor on arbiter `placement % arbiters`, as a
    /// member of supervision group `group` when given.
    pub fn spawn<S, F>(&self, placement: usize, group: Option<u64>, factory: F) -> Addr<Host<S>>
    where
        S: StateMachine,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let factory: Factory<S> = Arc::new(factory);
        let arbiter = &self.inner.arbiters[placement % self.inner.arbiters.len()];
        let node = self.clone();
        let addr = Supervisor::start_in_arbiter(arbiter, move |_ctx| {
            Host::new(node.clone(), factory, group).unwrap_or_else(|e| {
                node.escalate(format!("an actor cannot recover from its journal: {e}"));
                panic!("unrecoverable journal: {e}");
            })
        });
        if let Some(g) = group {
            self.inner
                .groups
                .entry(g)
                .or_default()
                .push(addr.clone().recipient());
        }
        addr
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// Installs the journal fault hook (the chaos harness plugs in here).
    pub fn set_journal_fault_hook(&self, hook: Arc<dyn JournalFaultHook>) {
        *self.inner.journal_faults.write() = hook;
    }

    /// Asks the journal fault hook about an append.
    pub fn journal_fault(&self, actor: Address, entries: &[Bytes]) -> AppendFault {
        self.inner.journal_faults.read().on_append(actor, entries)
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Mailbox capacity of every host.
    pub fn mailbox_capacity(&self) -> usize {
        self.inner.settings.mailbox_capacity
    }

    /// Journal entries after which an actor takes a snapshot.
    pub fn snapshot_entries_min(&self) -> u64 {
        self.inner.settings.snapshot_entries_min
    }

    /// Restart bookkeeping.
    pub fn supervision(&self) -> &Supervision {
        &self.inner.supervision
    }

    /// Under `one_for_all`, restarts every other member of `group`.
    pub fn restart_group(&self, group: u64, except: &Recipient<Crash>) {
        if self.inner.settings.supervision.strategy != RestartStrategy::OneForAll {
            return;
        }
        if let Some(members) = self.inner.groups.get(&group) {
            for member in members.iter().filter(|r| *r != except) {
                member.do_send(Crash { group: true });
            }
        }
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

    /// Adds a sink of transaction records.
    pub fn observe_ledger(&self, sink: LedgerSink) {
        self.inner.ledger_sinks.write().push(sink);
    }

    /// Hands the records of one durable step of `source` to every ledger sink (none: they
    /// are dropped).
    pub fn publish_records(&self, source: Address, records: &[LedgerRecord]) {
        for sink in self.inner.ledger_sinks.read().iter() {
            sink(source, records);
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
        eprintln!("specie: escalation: {why}; stopping the node");
        metrics::counter!("specie_escalations_total").increment(1);
        self.inner.escalations.write().push(why);
        if let Some(system) = System::try_current() {
            system.stop_with_code(70);
        }
    }

    /// Escalations so far.
    pub fn escalations(&self) -> Vec<String> {
        self.inner.escalations.read().clone()
    }

    /// Waits until no envelope is in flight on this node for a few consecutive looks (10 ms
    /// apart), or `timeout`. Returns whether the node went quiet.
    pub async fn quiesce(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut quiet_looks = 0;
        while std::time::Instant::now() < deadline {
            if self.network().in_flight() == 0 {
                quiet_looks += 1;
                if quiet_looks >= 5 {
                    return true;
                }
            } else {
                quiet_looks = 0;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops the node's arbiters.
    pub fn shutdown(&self) {
        for arbiter in &self.inner.arbiters {
            arbiter.stop();
        }
    }
}
