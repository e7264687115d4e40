//! Time, injected so that stages are deterministic under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time in ms since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// The system clock's reading, in ms since the Unix epoch.
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set_ms(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The system clock shifted by a fixed amount: it reads a chosen moment when made and runs at
/// the system's pace from there (a run pinned to a moment of the day, at any hour it runs).
#[derive(Debug, Clone, Copy)]
pub struct ShiftedClock {
    offset_ms: i64,
}

impl ShiftedClock {
    /// A clock reading `now_ms` now.
    pub fn starting_at(now_ms: i64) -> Self {
        ShiftedClock {
            offset_ms: now_ms.saturating_sub(system_now_ms()),
        }
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> i64 {
        system_now_ms().saturating_add(self.offset_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_clock_starts_at_its_moment_and_runs() {
        // 2026-12-06T05:46:00Z.
        let moment_ms = 1_796_535_960_000;
        let clock = ShiftedClock::starting_at(moment_ms);
        let first = clock.now_ms();
        assert!((moment_ms..moment_ms + 60_000).contains(&first), "{first}");
        let system = system_now_ms();
        let second = clock.now_ms();
        assert!(second >= first);
        assert!((second - (system + (moment_ms - system_now_ms()))).abs() < 60_000);
    }
}
