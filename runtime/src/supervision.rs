//! Supervision like OTP: a restart strategy, a restart intensity with exponential backoff, and
//! escalation when the intensity is exceeded.
//!
//! Each actor runs under actix's `Supervisor`, which restarts it when it stops. The host asks
//! [`Supervision::on_restart`] first: within the intensity it gets a backoff to sleep before
//! it rebuilds its state from the journal; beyond it the node escalates — it stops with a clear
//! message instead of restarting in a loop. Under `one_for_all`, the restart of one member of
//! a group restarts the whole group.

use dashmap::DashMap;
use parking_lot::Mutex;
use specie_protocol::Address;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the siblings of a crashed actor are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartStrategy {
    /// Only the crashed actor restarts.
    OneForOne,
    /// Every actor of the crashed actor's group restarts with it.
    OneForAll,
}

/// Supervision settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisionSettings {
    /// Restart strategy.
    pub strategy: RestartStrategy,
    /// Most restarts of one actor within `restart_window_ms` before escalation.
    pub restart_intensity_max: u32,
    /// The intensity window.
    pub restart_window_ms: u64,
    /// Backoff before the first restart in a window; doubles with each further restart.
    pub restart_backoff_ms: u64,
    /// Backoff cap.
    pub restart_backoff_max_ms: u64,
}

/// What the supervisor decides about a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartVerdict {
    /// Restart after this backoff.
    Restart(Duration),
    /// Too many restarts: escalate with this message.
    Escalate(String),
}

/// Restart bookkeeping of one node.
#[derive(Debug)]
pub struct Supervision {
    settings: SupervisionSettings,
    recent: DashMap<Address, Mutex<VecDeque<Instant>>>,
}

impl Supervision {
    /// Bookkeeping under `settings`.
    pub fn new(settings: SupervisionSettings) -> Supervision {
        Supervision {
            settings,
            recent: DashMap::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> SupervisionSettings {
        self.settings
    }

    /// Records a restart of `actor` at `now` and decides what happens.
    pub fn on_restart(&self, actor: Address, now: Instant) -> RestartVerdict {
        let window = Duration::from_millis(self.settings.restart_window_ms);
        let entry = self.recent.entry(actor).or_default();
        let mut recent = entry.lock();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            recent.pop_front();
        }
        recent.push_back(now);
        let count = recent.len() as u32;
        if count > self.settings.restart_intensity_max {
            return RestartVerdict::Escalate(format!(
                "{actor} restarted {count} times within {} ms (intensity {}); escalating",
                self.settings.restart_window_ms, self.settings.restart_intensity_max
            ));
        }
        let factor = 1u64 << (count - 1).min(20);
        let backoff = self
            .settings
            .restart_backoff_ms
            .saturating_mul(factor)
            .min(self.settings.restart_backoff_max_ms);
        RestartVerdict::Restart(Duration::from_millis(backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::WalletId;

    fn settings() -> SupervisionSettings {
        SupervisionSettings {
            strategy: RestartStrategy::OneForOne,
            restart_intensity_max: 3,
            restart_window_ms: 1000,
            restart_backoff_ms: 10,
            restart_backoff_max_ms: 25,
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_then_intensity_escalates() {
        let s = Supervision::new(settings());
        let a = Address::Wallet(WalletId(1));
        let t = Instant::now();
        assert_eq!(
            s.on_restart(a, t),
            RestartVerdict::Restart(Duration::from_millis(10))
        );
        assert_eq!(
            s.on_restart(a, t),
            RestartVerdict::Restart(Duration::from_millis(20))
        );
        assert_eq!(
            s.on_restart(a, t),
            RestartVerdict::Restart(Duration::from_millis(25))
        );
        assert!(matches!(s.on_restart(a, t), RestartVerdict::Escalate(m) if m.contains("4 times")));
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let s = Supervision::new(settings());
        let a = Address::Wallet(WalletId(1));
        let t = Instant::now();
        for _ in 0..3 {
            s.on_restart(a, t);
        }
        let later = t + Duration::from_millis(1500);
        assert_eq!(
            s.on_restart(a, later),
            RestartVerdict::Restart(Duration::from_millis(10))
        );
    }

    #[test]
    fn actors_are_counted_separately() {
        let s = Supervision::new(settings());
        let t = Instant::now();
        for _ in 0..3 {
            s.on_restart(Address::Wallet(WalletId(1)), t);
        }
        assert_eq!(
            s.on_restart(Address::Wallet(WalletId(2)), t),
            RestartVerdict::Restart(Duration::from_millis(10))
        );
    }
}
