//! Time on an offline wallet: a satellite time source beside a drifting device clock.
//!
//! A hard wallet that cannot reach the platform still needs the time: to stamp its payments,
//! and to know how long it has been offline (offline duration = satellite moment − last
//! synchronization moment). Its own clock cannot be trusted for that — a quartz oscillator
//! drifts by tens of parts per million, more when it is cold or its battery is low, and a clock
//! can jump — so the wallet takes the moment from a satellite receiver (GNSS/BeiDou), which
//! gives true time within a small error when it has a fix.
//!
//! Both are simulated here, deterministically, in the spirit of TigerBeetle's simulated clocks:
//! [`DeviceClock`] reads true time through a [`Drift`] (a fixed offset, a linear drift in ppm, a
//! periodic wander and steps), and [`SatelliteSource`] answers true time within
//! `error_ms_max`, or nothing during its outages. Everything is a pure function of the true
//! time and a seed, so a test or a load run replays exactly.

use crate::pki::sha256;

/// Parts per million.
const PPM: i64 = 1_000_000;

/// How a device clock departs from true time, all in integer milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drift {
    /// Constant offset from true time when the clock was last set, in ms.
    pub offset_ms: i64,
    /// Linear drift: how many ms the clock gains (positive) or loses per million ms of true
    /// time.
    pub ppm: i64,
    /// A periodic wander (temperature through the day): a triangle wave of this amplitude, in
    /// ms, and this period; no wander when either is 0.
    pub periodic_amplitude_ms: i64,
    /// Period of the wander, in ms.
    pub periodic_period_ms: i64,
    /// Steps: at each true moment (ms since the clock was set) the clock jumps by that many ms
    /// (a battery swap, a bad manual setting).
    pub steps: Vec<(i64, i64)>,
}

impl Drift {
    /// No drift: the clock shows true time.
    pub fn none() -> Self {
        Drift::default()
    }

    /// A linear drift of `ppm`.
    pub fn linear(ppm: i64) -> Self {
        Drift {
            ppm,
            ..Drift::default()
        }
    }

    /// The clock's error after `elapsed_ms` of true time since it was set.
    pub fn error_ms(&self, elapsed_ms: i64) -> i64 {
        let linear = i64::try_from(i128::from(elapsed_ms) * i128::from(self.ppm) / i128::from(PPM))
            .unwrap_or(if self.ppm >= 0 { i64::MAX } else { i64::MIN });
        let periodic = if self.periodic_amplitude_ms > 0 && self.periodic_period_ms > 0 {
            triangle(
                elapsed_ms,
                self.periodic_period_ms,
                self.periodic_amplitude_ms,
            )
        } else {
            0
        };
        let steps: i64 = self
            .steps
            .iter()
            .filter(|(at_ms, _)| elapsed_ms >= *at_ms)
            .map(|(_, jump_ms)| *jump_ms)
            .sum();
        self.offset_ms
            .saturating_add(linear)
            .saturating_add(periodic)
            .saturating_add(steps)
    }
}

/// A triangle wave of `amplitude` and `period` at `t`: 0 at t = 0, +amplitude at a quarter
/// period, −amplitude at three quarters.
fn triangle(t: i64, period: i64, amplitude: i64) -> i64 {
    let phase = t.rem_euclid(period);
    let quarter = period / 4;
    if quarter == 0 {
        return 0;
    }
    let value = if phase < quarter {
        phase
    } else if phase < 3 * quarter {
        2 * quarter - phase
    } else {
        phase - 4 * quarter
    };
    value.saturating_mul(amplitude) / quarter
}

/// A device's own clock: true time seen through its drift, since it was last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClock {
    drift: Drift,
    /// True moment the clock was last set.
    set_at_true_ms: i64,
    /// What it was set to then.
    set_to_ms: i64,
}

impl DeviceClock {
    /// A clock set to `set_to_ms` at the true moment `set_at_true_ms`, drifting by `drift`
    /// from then on.
    pub fn new(drift: Drift, set_at_true_ms: i64, set_to_ms: i64) -> Self {
        DeviceClock {
            drift,
            set_at_true_ms,
            set_to_ms,
        }
    }

    /// What the clock shows at the true moment `true_ms`.
    pub fn reading_ms(&self, true_ms: i64) -> i64 {
        let elapsed_ms = true_ms.saturating_sub(self.set_at_true_ms);
        self.set_to_ms
            .saturating_add(elapsed_ms)
            .saturating_add(self.drift.error_ms(elapsed_ms))
    }

    /// Sets the clock to `platform_ms` at the true moment `true_ms` (the CLOCK_RESYNC action of
    /// a sync result). Its drift goes on from there, offset included only by the new setting.
    pub fn resync(&mut self, true_ms: i64, platform_ms: i64) {
        self.set_at_true_ms = true_ms;
        self.set_to_ms = platform_ms;
        self.drift.offset_ms = 0;
        self.drift.steps.clear();
    }

    /// The clock's drift.
    pub fn drift(&self) -> &Drift {
        &self.drift
    }
}

/// A moment read from the satellite source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SatelliteFix {
    /// The moment, Unix epoch ms: true time within the source's error.
    pub at_ms: i64,
}

/// A simulated satellite time source (GNSS/BeiDou): true time within `error_ms_max`, except
/// during outages (indoors, underground, jammed), when it has no fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SatelliteSource {
    seed: u64,
    /// Largest |fix − true time|, in ms.
    pub error_ms_max: i64,
    /// True-time intervals `[start, end)` without a fix.
    pub outages: Vec<(i64, i64)>,
    /// Besides the outages, one fix in this many has no signal (0: never).
    pub unavailable_one_in: u64,
}

/// Error of a typical timing fix: GNSS time is good to well under a microsecond, but a wallet
/// reads it through a receiver and a bus; a few ms is realistic and harmless.
pub const SATELLITE_ERROR_MS_DEFAULT: i64 = 5;

impl SatelliteSource {
    /// A source always in view, within [`SATELLITE_ERROR_MS_DEFAULT`] of true time.
    pub fn new(seed: u64) -> Self {
        SatelliteSource {
            seed,
            error_ms_max: SATELLITE_ERROR_MS_DEFAULT,
            outages: Vec::new(),
            unavailable_one_in: 0,
        }
    }

    /// A fix at the true moment `true_ms`, or `None` without signal. Deterministic: the same
    /// seed and moment give the same answer.
    pub fn fix(&self, true_ms: i64) -> Option<SatelliteFix> {
        if self
            .outages
            .iter()
            .any(|(start, end)| (*start..*end).contains(&true_ms))
        {
            return None;
        }
        let noise = self.noise(true_ms);
        if self.unavailable_one_in > 0 && noise.is_multiple_of(self.unavailable_one_in) {
            return None;
        }
        let span = u64::try_from(2 * self.error_ms_max + 1).unwrap_or(1);
        let error_ms = i64::try_from(noise % span).unwrap_or(0) - self.error_ms_max;
        Some(SatelliteFix {
            at_ms: true_ms.saturating_add(error_ms),
        })
    }

    fn noise(&self, true_ms: i64) -> u64 {
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&self.seed.to_be_bytes());
        input[8..].copy_from_slice(&true_ms.to_be_bytes());
        let hash = sha256(&input);
        let mut word = [0u8; 8];
        word.copy_from_slice(&hash[..8]);
        u64::from_be_bytes(word)
    }
}

/// Offline duration: the satellite moment minus the last synchronization moment, never negative.
pub fn offline_duration_ms(last_sync_at_ms: i64, satellite_at_ms: i64) -> i64 {
    satellite_at_ms.saturating_sub(last_sync_at_ms).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;
    const T0_MS: i64 = 1_764_000_000_000;

    #[test]
    fn linear_drift_gains_ppm_of_the_elapsed_time() {
        let clock = DeviceClock::new(Drift::linear(100), T0_MS, T0_MS);
        // 100 ppm over 10 days: 86.4 s ahead.
        assert_eq!(
            clock.reading_ms(T0_MS + 10 * DAY_MS),
            T0_MS + 10 * DAY_MS + 86_400
        );
        let slow = DeviceClock::new(Drift::linear(-100), T0_MS, T0_MS);
        assert_eq!(
            slow.reading_ms(T0_MS + 10 * DAY_MS),
            T0_MS + 10 * DAY_MS - 86_400
        );
    }

    #[test]
    fn periodic_wander_returns_to_zero_every_period() {
        let drift = Drift {
            periodic_amplitude_ms: 2_000,
            periodic_period_ms: DAY_MS,
            ..Drift::default()
        };
        assert_eq!(drift.error_ms(0), 0);
        assert_eq!(drift.error_ms(DAY_MS / 4), 2_000);
        assert_eq!(drift.error_ms(DAY_MS / 2), 0);
        assert_eq!(drift.error_ms(3 * DAY_MS / 4), -2_000);
        assert_eq!(drift.error_ms(DAY_MS), 0);
    }

    #[test]
    fn steps_jump_from_their_moment_on() {
        let drift = Drift {
            steps: vec![(DAY_MS, -3_600_000)],
            ..Drift::default()
        };
        assert_eq!(drift.error_ms(DAY_MS - 1), 0);
        assert_eq!(drift.error_ms(DAY_MS), -3_600_000);
    }

    #[test]
    fn resync_sets_the_clock_and_keeps_its_rate() {
        let mut clock = DeviceClock::new(
            Drift {
                offset_ms: 5_000,
                ppm: 50,
                ..Drift::default()
            },
            T0_MS,
            T0_MS,
        );
        assert_ne!(clock.reading_ms(T0_MS + DAY_MS), T0_MS + DAY_MS);
        clock.resync(T0_MS + DAY_MS, T0_MS + DAY_MS);
        assert_eq!(clock.reading_ms(T0_MS + DAY_MS), T0_MS + DAY_MS);
        assert_eq!(
            clock.reading_ms(T0_MS + 2 * DAY_MS),
            T0_MS + 2 * DAY_MS + 4_320
        );
    }

    #[test]
    fn satellite_fixes_are_within_the_error_and_deterministic() {
        let source = SatelliteSource::new(7);
        for k in 0..1_000 {
            let true_ms = T0_MS + k * 997;
            let fix = source.fix(true_ms).expect("in view");
            assert!((fix.at_ms - true_ms).abs() <= SATELLITE_ERROR_MS_DEFAULT);
            assert_eq!(source.fix(true_ms), Some(fix));
        }
    }

    #[test]
    fn satellite_has_no_fix_during_an_outage_or_when_unlucky() {
        let source = SatelliteSource {
            outages: vec![(T0_MS, T0_MS + 60_000)],
            unavailable_one_in: 10,
            ..SatelliteSource::new(3)
        };
        assert_eq!(source.fix(T0_MS + 30_000), None);
        let missing = (0..10_000)
            .filter(|k| source.fix(T0_MS + 60_000 + k * 1_000).is_none())
            .count();
        assert!((700..1_300).contains(&missing), "{missing} of 10,000");
    }

    /// The point of the satellite source: after a month offline, a drifting device clock (here a
    /// cold, ageing oscillator at −150 ppm that also lost an hour on a battery swap) judges the
    /// offline duration wrong by more than an hour — on the safe side of a 30-day preset it
    /// would keep paying offline past it — while the satellite moment is within a few ms.
    #[test]
    fn a_drifting_device_clock_misjudges_the_offline_duration_and_the_satellite_does_not() {
        let last_sync_ms = T0_MS;
        let preset_ms = 30 * DAY_MS;
        let device = DeviceClock::new(
            Drift {
                ppm: -150,
                periodic_amplitude_ms: 1_500,
                periodic_period_ms: DAY_MS,
                steps: vec![(12 * DAY_MS, -3_600_000)],
                ..Drift::default()
            },
            last_sync_ms,
            last_sync_ms,
        );
        let satellite = SatelliteSource::new(11);
        let true_now_ms = last_sync_ms + preset_ms + 30 * 60_000; // 30 min past the preset
        let by_device = offline_duration_ms(last_sync_ms, device.reading_ms(true_now_ms));
        let by_satellite = offline_duration_ms(
            last_sync_ms,
            satellite.fix(true_now_ms).expect("in view").at_ms,
        );
        let truth = true_now_ms - last_sync_ms;
        assert!(truth > preset_ms);
        assert!(
            (by_device - truth).abs() > 3_600_000,
            "device off by {} ms",
            by_device - truth
        );
        assert!(
            by_device <= preset_ms,
            "the device believes it is within the preset"
        );
        assert!((by_satellite - truth).abs() <= SATELLITE_ERROR_MS_DEFAULT);
        assert!(
            by_satellite > preset_ms,
            "the satellite moment says it is past it"
        );
    }
}
