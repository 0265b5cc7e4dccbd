//! The specie runtime: where actors live and how envelopes travel between them.
//!
//! Layout:
//! - [`machine`]: the [`StateMachine`] trait every actor implements (message in, effects out)
//!   and [`Effects`], the list of things a step asks the runtime to do.
//! - [`host`]: [`Host`], the one actix actor that runs any state machine under a supervisor:
//!   it journals a step's events before it sends the step's messages, arms timers, and on a
//!   crash throws its memory away and rebuilds the state from the journal.
//! - [`network`]: the single place where envelopes cross between actors, as encoded bytes,
//!   with the directory of local mailboxes and the fault hook.
//! - [`journal`]: the [`Journal`] trait, its in-memory implementation and the journal fault
//!   hook; [`redb_journal`]: the durable journal (one redb file per node, group commits).
//! - [`supervision`]: restart strategy, intensity, backoff and escalation.
//! - [`clock`]: the [`Clock`] trait and the system clock.
//! - [`config`]: configuration types, loaded in two steps (parse, then validate).
//! - [`topology`]: the cluster file of a multi-process cluster (nodes, placement, TLS).
//! - [`transport`]: the gRPC transport between the processes of a cluster: mutual TLS, the
//!   peer links (the network's remote route), client channels and the development PKI.
//! - [`telemetry`]: Prometheus metrics and OpenTelemetry traces (one trace per saga) of a
//!   node, and their flush at shutdown.
//! - [`node`]: [`Node`], the handle that bundles one process's network, journal, clock and
//!   observers, and starts hosts on arbiters.
//! - [`live_faults`]: live fault rules of a running node (the chaos vocabulary, each rule
//!   expiring by itself), its network's fault hook; [`admin`]: the admin gRPC service that
//!   installs, clears and lists them (admin certificates only).

pub mod admin;
pub mod clock;
pub mod config;
pub mod host;
pub mod journal;
pub mod live_faults;
pub mod machine;
pub mod network;
pub mod node;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod redb_journal;
pub mod supervision;
pub mod telemetry;
pub mod topology;
pub mod transport;

pub use clock::{Clock, SystemClock};
pub use host::{step_entry, step_events, Crash, Host, Inspect, Query, Submit};
pub use journal::{
    AppendFault, Journal, JournalError, JournalFaultHook, JournalStats, MemoryJournal,
};
pub use machine::{Effects, LedgerRecord, Notice, StateMachine};
pub use network::{
    Deliver, Delivery, FaultHook, Network, NetworkStats, NoFaults, RemoteRoute, Routed,
};
pub use node::{LedgerSink, Node, NodeSettings};
pub use redb_journal::{JournalSettings, ReadJournal, RedbJournal};
pub use supervision::{RestartStrategy, SupervisionSettings};
