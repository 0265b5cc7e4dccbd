//! Time, behind a trait, so that a simulation can substitute virtual time.

use std::time::{SystemTime, UNIX_EPOCH};

/// The source of "now" for every state machine.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("system clock before 1970");
        u64::try_from(since.as_millis()).expect("time fits in u64 ms")
    }
}
