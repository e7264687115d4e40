//! Intended send times of an open-loop load.
//!
//! Payment `i` of a step at `rate` payments per second is due at `i / rate` seconds after the
//! step starts, whatever happened to the payments before it. Latency is measured from that
//! intended time, so a producer or a bus that stalls shows up in the figures as the delay it
//! caused instead of silently lowering the offered rate (no coordinated omission).

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A fixed-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSchedule {
    rate_per_s: u32,
}

impl OpenSchedule {
    /// A schedule of `rate_per_s` payments per second; `None` for a rate of zero.
    pub fn new(rate_per_s: u32) -> Option<Self> {
        (rate_per_s > 0).then_some(OpenSchedule { rate_per_s })
    }

    /// The rate.
    pub fn rate_per_s(&self) -> u32 {
        self.rate_per_s
    }

    /// When payment `index` (from 0) is due, after the start.
    pub fn intended_offset(&self, index: u64) -> Duration {
        let nanos = u128::from(index) * NANOS_PER_SEC / u128::from(self.rate_per_s);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many payments are due at or before `elapsed` after the start.
    pub fn due_at(&self, elapsed: Duration) -> u64 {
        let due = elapsed.as_nanos() * u128::from(self.rate_per_s) / NANOS_PER_SEC + 1;
        u64::try_from(due).unwrap_or(u64::MAX)
    }

    /// How many payments are due strictly before `length`: the size of a step that long.
    pub fn count_within(&self, length: Duration) -> u64 {
        let scaled = length.as_nanos() * u128::from(self.rate_per_s);
        let count = scaled.div_ceil(NANOS_PER_SEC);
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = OpenSchedule::new(4).expect("rate");
        let offsets: Vec<u128> = (0..5).map(|i| s.intended_offset(i).as_millis()).collect();
        assert_eq!(offsets, vec![0, 250, 500, 750, 1000]);
    }

    #[test]
    fn a_stall_does_not_move_later_intended_times() {
        let s = OpenSchedule::new(1000).expect("rate");
        // However late payment 10 was sent, payment 11 is still due 11 ms after the start.
        assert_eq!(s.intended_offset(11), Duration::from_millis(11));
    }

    #[test]
    fn due_count_includes_the_payment_due_exactly_now() {
        let s = OpenSchedule::new(10).expect("rate");
        assert_eq!(s.due_at(Duration::ZERO), 1);
        assert_eq!(s.due_at(Duration::from_millis(99)), 1);
        assert_eq!(s.due_at(Duration::from_millis(100)), 2);
        assert_eq!(s.due_at(Duration::from_millis(1000)), 11);
    }

    #[test]
    fn count_within_is_rate_times_length() {
        let s = OpenSchedule::new(300).expect("rate");
        assert_eq!(s.count_within(Duration::from_secs(10)), 3000);
        assert_eq!(s.count_within(Duration::from_millis(1)), 1);
        assert_eq!(s.count_within(Duration::ZERO), 0);
    }

    #[test]
    fn zero_rate_has_no_schedule() {
        assert!(OpenSchedule::new(0).is_none());
    }
}
