//! Deliberately wrong behaviours for the chaos harness to catch (cargo feature
//! `planted-bugs`, off by default; never in a production build).
//!
//! The chaos checkers must be able to fail. Each planted bug is a tiny, fenced deviation from
//! a rule, switched on at run time by `specie chaos run --planted-bug NAME`. At most one is
//! active at a time; the switch is process-wide, so tests that plant bugs run one at a time.

use std::sync::atomic::{AtomicU8, Ordering};

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The central bank applies a duplicate reserve request again instead of answering with
    /// the recorded outcome (a duplicate delivery applied twice).
    SkipDedup = 1,
    /// The issuer locks a coin that another saga holds locked.
    SkipLockCheck = 2,
    /// A step's messages leave before its journal entries are durable (the simulator's host
    /// reads this switch).
    EarlyAck = 3,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 3] = [Bug::SkipDedup, Bug::SkipLockCheck, Bug::EarlyAck];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipDedup => "skip-dedup",
            Bug::SkipLockCheck => "skip-lock-check",
            Bug::EarlyAck => "early-ack",
        }
    }

    /// The bug of a command-line name.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Activates `bug` (or none) for the whole process.
pub fn set(bug: Option<Bug>) {
    ACTIVE.store(bug.map_or(0, |b| b as u8), Ordering::SeqCst);
}

/// Whether `bug` is active.
pub fn active(bug: Bug) -> bool {
    ACTIVE.load(Ordering::Relaxed) == bug as u8
}
