//! The chaos harness: deterministic simulation of a whole specie cluster under faults, with
//! a Jepsen-style history, checkers for the invariants of DESIGN.md §4, shrinking and
//! reports.
//!
//! Layout:
//! - [`scenario`]: scenario files (TOML), read in two steps — parse, then validate — with
//!   errors that name the line and the field.
//! - [`schedule`]: the fault schedule of a scenario expanded, for one seed, into explicit
//!   fault instances; the random streams every decision is drawn from.
//! - [`host`]: the simulator's host for the actors' pure state machines: asynchronous journal
//!   commits, messages held until durable, crashes that lose what was not.
//! - [`sim`]: the deterministic simulation — one thread, virtual time, one seed — of the
//!   cluster, the network, the faults and the workload, phase by phase.
//! - [`history`]: the history of client operations (invoke, then ok / fail / info) and its
//!   digest.
//! - [`check`]: the checkers.
//! - [`shrink`]: minimizes a failing run's fault list.
//! - [`report`]: terminal summary, JSON, and the HTML timeline.
//!
//! Actors never mention chaos: the simulator drives the same state machines the runtime
//! hosts (built by [`specie_actors::Blueprint`]) and checks them with the same audit.

pub mod check;
pub mod history;
pub mod host;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod shrink;
pub mod sim;

pub use check::Finding;
pub use history::{History, OpKind, OpType};
pub use scenario::{Scenario, ScenarioError};
pub use sim::{planted_bugs, run, RunOptions, RunResult, Violation};
