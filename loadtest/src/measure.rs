//! Latency and throughput figures: HDR histograms over the measured window, and per-second
//! series for the plot.
//!
//! A payment belongs to the measured window by its *intended* send time: the warm-up (queues
//! filling, caches cold) and the cool-down (the last payments racing the end) are trimmed from
//! every figure. Throughput counts answers *observed* inside the window.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly, in µs (an hour); longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the run's latency histogram (0.1% precision).
pub const LATENCY_SIGFIG: u8 = 3;
/// Significant digits of each second's histogram (1%: small enough to keep one per second).
pub const SECOND_SIGFIG: u8 = 2;
/// Seconds the per-second series holds at most (a day and an hour of draining).
pub const SERIES_SECONDS_MAX: usize = 25 * 3600;

/// A latency histogram in µs; the bounds are constants, checked by a unit test.
fn latency_histogram<T: hdrhistogram::Counter>(sigfig: u8) -> Histogram<T> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig)
        .expect("constant histogram bounds are valid")
}

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Payments measured.
    pub samples: u64,
}

impl Percentiles {
    /// The percentiles of a histogram of µs.
    pub fn of<T: hdrhistogram::Counter>(histogram: &Histogram<T>) -> Self {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            samples: histogram.len(),
        }
    }

    /// Whether p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max.
    pub fn is_ordered(&self) -> bool {
        self.p50 <= self.p90
            && self.p90 <= self.p99
            && self.p99 <= self.p999
            && self.p999 <= self.max
    }
}

/// The figures of one measured window (a whole run, or one ramp step).
#[derive(Debug, Clone)]
pub struct Measurement {
    start: Duration,
    end: Duration,
    latency_us: Histogram<u64>,
    offered: u64,
    answered: u64,
}

impl Measurement {
    /// Counts payments intended, and answers observed, in `[start, end)` after the load began.
    pub fn new(start: Duration, end: Duration) -> Self {
        Measurement {
            start,
            end: end.max(start),
            latency_us: latency_histogram(LATENCY_SIGFIG),
            offered: 0,
            answered: 0,
        }
    }

    fn contains(&self, at: Duration) -> bool {
        at >= self.start && at < self.end
    }

    /// Length of the window.
    pub fn length(&self) -> Duration {
        self.end - self.start
    }

    /// `submissions` submissions intended at `intended`.
    pub fn on_submitted(&mut self, intended: Duration, submissions: u64) {
        if self.contains(intended) {
            self.offered += submissions;
        }
    }

    /// The answer to `submissions` submissions, the first intended at `intended`, observed at
    /// `observed`. The latency of the first is recorded when it was intended in the window.
    pub fn on_answered(&mut self, intended: Duration, observed: Duration, submissions: u64) {
        if self.contains(intended) {
            let us = observed.saturating_sub(intended).as_micros();
            let us = u64::try_from(us)
                .unwrap_or(LATENCY_US_MAX)
                .clamp(1, LATENCY_US_MAX);
            self.latency_us.saturating_record(us);
        }
        if self.contains(observed) {
            self.answered += submissions;
        }
    }

    /// Answers to `submissions` repeated submissions observed at `observed`: counted for
    /// throughput, not for latency (their payment's first answer was).
    pub fn on_repeat_answered(&mut self, observed: Duration, submissions: u64) {
        if self.contains(observed) {
            self.answered += submissions;
        }
    }

    /// Records a payment still unanswered at `now` as if answered now: its latency is at least
    /// that, so a judgement made before it is answered is not flattered by its absence.
    pub fn on_unanswered(&mut self, intended: Duration, now: Duration) {
        if self.contains(intended) {
            let us = u64::try_from(now.saturating_sub(intended).as_micros())
                .unwrap_or(LATENCY_US_MAX)
                .clamp(1, LATENCY_US_MAX);
            self.latency_us.saturating_record(us);
        }
    }

    /// Latency percentiles of the payments intended in the window.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.latency_us)
    }

    /// Submissions intended in the window.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Submissions answered in the window.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Submissions intended per second of the window.
    pub fn offered_rate(&self) -> f64 {
        per_second(self.offered, self.length())
    }

    /// Answers observed per second of the window.
    pub fn achieved_rate(&self) -> f64 {
        per_second(self.answered, self.length())
    }
}

/// `count` per second over `length` (0 for an empty length).
pub fn per_second(count: u64, length: Duration) -> f64 {
    let secs = length.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// `amount` per second over `length` (0 for an empty length).
pub fn per_second_f64(amount: f64, length: Duration) -> f64 {
    let secs = length.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

/// One second of the run, for the plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Seconds since the load began (the start of this second).
    pub t_s: u32,
    /// Submissions intended in this second.
    pub offered: u64,
    /// Answers observed in this second.
    pub answered: u64,
    /// Median latency of the answers observed in this second, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct Second {
    offered: u64,
    answered: u64,
    latency_us: Option<Histogram<u32>>,
}

/// Throughput and latency per second over the whole run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    seconds: Vec<Second>,
}

impl Series {
    fn second(&mut self, at: Duration) -> Option<&mut Second> {
        let index = usize::try_from(at.as_secs()).ok()?;
        if index >= SERIES_SECONDS_MAX {
            return None;
        }
        if self.seconds.len() <= index {
            self.seconds.resize_with(index + 1, Second::default);
        }
        self.seconds.get_mut(index)
    }

    /// `submissions` submissions intended at `intended`.
    pub fn on_submitted(&mut self, intended: Duration, submissions: u64) {
        if let Some(second) = self.second(intended) {
            second.offered += submissions;
        }
    }

    /// An answer to `submissions` submissions observed at `observed`, `latency` after the first
    /// was intended.
    pub fn on_answered(&mut self, observed: Duration, latency: Duration, submissions: u64) {
        if let Some(second) = self.second(observed) {
            second.answered += submissions;
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(LATENCY_US_MAX)
                .clamp(1, LATENCY_US_MAX);
            second
                .latency_us
                .get_or_insert_with(|| latency_histogram(SECOND_SIGFIG))
                .saturating_record(us);
        }
    }

    /// Answers to `submissions` repeated submissions observed at `observed` (no latency).
    pub fn on_repeat_answered(&mut self, observed: Duration, submissions: u64) {
        if let Some(second) = self.second(observed) {
            second.answered += submissions;
        }
    }

    /// One point per second, from the first to the last second with any activity.
    pub fn points(&self) -> Vec<SeriesPoint> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, second)| {
                let p = second
                    .latency_us
                    .as_ref()
                    .map(Percentiles::of)
                    .unwrap_or_default();
                SeriesPoint {
                    t_s: u32::try_from(t).unwrap_or(u32::MAX),
                    offered: second.offered,
                    answered: second.answered,
                    p50_ms: p.p50,
                    p99_ms: p.p99,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn histogram_bounds_are_valid() {
        let h: Histogram<u64> = latency_histogram(LATENCY_SIGFIG);
        let s: Histogram<u32> = latency_histogram(SECOND_SIGFIG);
        assert_eq!(h.high(), LATENCY_US_MAX);
        assert_eq!(s.high(), LATENCY_US_MAX);
    }

    #[test]
    fn warmup_and_cooldown_answers_are_trimmed_from_latency() {
        let mut m = Measurement::new(ms(1000), ms(9000));
        m.on_answered(ms(500), ms(900), 1); // warm-up: 400 ms
        m.on_answered(ms(2000), ms(2010), 1); // measured: 10 ms
        m.on_answered(ms(9500), ms(9800), 1); // cool-down: 300 ms
        let p = m.percentiles();
        assert_eq!(p.samples, 1);
        assert!((p.max - 10.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn latency_is_measured_from_the_intended_time() {
        let mut m = Measurement::new(ms(0), ms(10_000));
        // Sent 300 ms late because the producer stalled, answered 5 ms after sending.
        m.on_answered(ms(1000), ms(1305), 1);
        assert!((m.percentiles().p50 - 305.0).abs() < 0.5);
    }

    #[test]
    fn throughput_counts_answers_observed_in_the_window() {
        let mut m = Measurement::new(ms(1000), ms(3000));
        for i in 0..100 {
            m.on_submitted(ms(1000 + i * 20), 1);
        }
        m.on_answered(ms(500), ms(1500), 1); // intended in warm-up, observed in window
        m.on_answered(ms(2900), ms(3100), 1); // observed after the window
        assert_eq!(m.offered(), 100);
        assert_eq!(m.answered(), 1);
        assert!((m.offered_rate() - 50.0).abs() < 1e-9);
        assert!((m.achieved_rate() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_are_ordered() {
        let mut m = Measurement::new(ms(0), ms(100_000));
        for i in 0..10_000u64 {
            m.on_answered(ms(i), ms(i + 1 + i % 97), 1);
        }
        let p = m.percentiles();
        assert!(p.is_ordered(), "{p:?}");
        assert_eq!(p.samples, 10_000);
        assert!((p.max - 97.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn unanswered_payments_count_as_at_least_their_age() {
        let mut m = Measurement::new(ms(0), ms(10_000));
        for i in 0..98 {
            m.on_answered(ms(i), ms(i + 2), 1);
        }
        m.on_unanswered(ms(100), ms(5100));
        m.on_unanswered(ms(101), ms(5100));
        assert!(m.percentiles().p99 >= 4999.0, "{:?}", m.percentiles());
    }

    #[test]
    fn series_buckets_by_second() {
        let mut s = Series::default();
        s.on_submitted(ms(100), 1);
        s.on_submitted(ms(1100), 2);
        s.on_answered(ms(1200), ms(20), 1);
        s.on_answered(ms(1300), ms(40), 2);
        let points = s.points();
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].offered, points[0].answered), (1, 0));
        assert_eq!((points[1].offered, points[1].answered), (2, 3));
        assert!(points[1].p50_ms <= points[1].p99_ms);
        assert!((points[1].p99_ms - 40.0).abs() < 1.0, "{:?}", points[1]);
    }

    #[test]
    fn series_ignores_seconds_beyond_its_bound() {
        let mut s = Series::default();
        let far = Duration::from_secs(SERIES_SECONDS_MAX as u64 + 5);
        s.on_submitted(far, 1);
        assert!(s.points().is_empty());
    }
}
