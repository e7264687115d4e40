//! How a stage consumes, and the limits its settings are checked against before anything
//! starts.

use std::fmt;
use std::time::Duration;

use dcpipe_connectors::ledger::BATCH_ITEMS_MAX;

use crate::error::Error;

/// How a stage consumes.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most messages handled together (one ledger transaction, one publish round); at most
    /// [`BATCH_ITEMS_MAX`], what a ledger takes in one transaction.
    pub batch_max: usize,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
    /// Redelivery deadline for an unacked message.
    pub ack_wait: Duration,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: u32,
    /// Delay before a batch that failed transiently is redelivered the first time; it doubles
    /// with each further delivery, up to `retry_delay_max`.
    pub retry_delay: Duration,
    /// Longest delay before a redelivery.
    pub retry_delay_max: Duration,
    /// Members of the stage's consumer group run by this process: batches decided in
    /// parallel, on as many cores.
    pub concurrency: usize,
    /// After a fetch that did not fill a batch, how long to wait for more before deciding it:
    /// fewer, larger ledger transactions under load for at most this much latency.
    pub linger: Duration,
}

impl RunnerConfig {
    /// Default largest batch.
    pub const BATCH_MAX_DEFAULT: usize = 256;
    /// Most members of one stage's group in one process.
    pub const CONCURRENCY_MAX: usize = 256;
    /// Most deliveries of one message the runner may ask of a bus.
    pub const MAX_DELIVER_MAX: u32 = 100;
    /// Default first redelivery delay.
    pub const RETRY_DELAY_DEFAULT: Duration = Duration::from_millis(500);
    /// Default cap of the redelivery delay.
    pub const RETRY_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(10);

    /// Checks every setting against its named limit; the error's kind names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigErrorKind as K;
        if !(1..=BATCH_ITEMS_MAX).contains(&self.batch_max) {
            return Err(Error::new(
                K::BatchMax,
                format!(
                    "a batch of {} messages is outside 1..={BATCH_ITEMS_MAX}: a ledger takes at \
                     most BATCH_ITEMS_MAX = {BATCH_ITEMS_MAX} items in one transaction",
                    self.batch_max
                ),
            ));
        }
        if !(1..=Self::CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(Error::new(
                K::Concurrency,
                format!(
                    "{} members is outside 1..={} (CONCURRENCY_MAX)",
                    self.concurrency,
                    Self::CONCURRENCY_MAX
                ),
            ));
        }
        if !(1..=Self::MAX_DELIVER_MAX).contains(&self.max_deliver) {
            return Err(Error::new(
                K::MaxDeliver,
                format!(
                    "{} deliveries is outside 1..={} (MAX_DELIVER_MAX)",
                    self.max_deliver,
                    Self::MAX_DELIVER_MAX
                ),
            ));
        }
        if self.ack_wait.is_zero() {
            return Err(Error::new(K::AckWait, "the ack wait must be above zero"));
        }
        if self.fetch_wait.is_zero() || self.fetch_wait >= self.ack_wait {
            return Err(Error::new(
                K::FetchWait,
                format!(
                    "a fetch wait of {:?} must be above zero and below the ack wait of {:?}",
                    self.fetch_wait, self.ack_wait
                ),
            ));
        }
        if self.linger >= self.ack_wait {
            return Err(Error::new(
                K::Linger,
                format!(
                    "a linger of {:?} must be below the ack wait of {:?}",
                    self.linger, self.ack_wait
                ),
            ));
        }
        if self.retry_delay.is_zero() || self.retry_delay_max < self.retry_delay {
            return Err(Error::new(
                K::RetryDelay,
                format!(
                    "retry delays of {:?} up to {:?}: the first must be above zero and the cap \
                     at least as long",
                    self.retry_delay, self.retry_delay_max
                ),
            ));
        }
        Ok(())
    }

    /// How long to wait before the `attempt`-th retry (1 for the first): `retry_delay` doubled
    /// for each attempt after the first, capped at `retry_delay_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.retry_delay
            .saturating_mul(1u32 << doublings)
            .min(self.retry_delay_max)
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_max: Self::BATCH_MAX_DEFAULT,
            fetch_wait: Duration::from_millis(100),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_delay: Self::RETRY_DELAY_DEFAULT,
            retry_delay_max: Self::RETRY_DELAY_MAX_DEFAULT,
            concurrency: 1,
            linger: Duration::from_millis(2),
        }
    }
}

/// Which setting of a [`RunnerConfig`] is outside its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// `batch_max`.
    BatchMax,
    /// `concurrency`.
    Concurrency,
    /// `max_deliver`.
    MaxDeliver,
    /// `ack_wait`.
    AckWait,
    /// `fetch_wait`.
    FetchWait,
    /// `linger`.
    Linger,
    /// `retry_delay` or `retry_delay_max`.
    RetryDelay,
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigErrorKind::BatchMax => "batch_max",
            ConfigErrorKind::Concurrency => "concurrency",
            ConfigErrorKind::MaxDeliver => "max_deliver",
            ConfigErrorKind::AckWait => "ack_wait",
            ConfigErrorKind::FetchWait => "fetch_wait",
            ConfigErrorKind::Linger => "linger",
            ConfigErrorKind::RetryDelay => "retry_delay",
        })
    }
}

/// A runner setting outside its limits.
pub type ConfigError = Error<ConfigErrorKind>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        RunnerConfig::default().validate().expect("valid");
    }

    #[test]
    fn batch_above_the_ledger_limit_is_refused_naming_it() {
        let config = RunnerConfig {
            batch_max: BATCH_ITEMS_MAX + 1,
            ..RunnerConfig::default()
        };
        let error = config.validate().expect_err("too large");
        assert_eq!(error.kind(), ConfigErrorKind::BatchMax);
        assert!(error.to_string().contains("BATCH_ITEMS_MAX"), "{error}");
        let at_limit = RunnerConfig {
            batch_max: BATCH_ITEMS_MAX,
            ..RunnerConfig::default()
        };
        at_limit.validate().expect("the limit itself is allowed");
    }

    #[test]
    fn each_setting_outside_its_limit_is_named() {
        let base = RunnerConfig::default();
        let cases = [
            (
                RunnerConfig {
                    batch_max: 0,
                    ..base.clone()
                },
                ConfigErrorKind::BatchMax,
            ),
            (
                RunnerConfig {
                    concurrency: 0,
                    ..base.clone()
                },
                ConfigErrorKind::Concurrency,
            ),
            (
                RunnerConfig {
                    max_deliver: 0,
                    ..base.clone()
                },
                ConfigErrorKind::MaxDeliver,
            ),
            (
                RunnerConfig {
                    ack_wait: Duration::ZERO,
                    ..base.clone()
                },
                ConfigErrorKind::AckWait,
            ),
            (
                RunnerConfig {
                    fetch_wait: Duration::ZERO,
                    ..base.clone()
                },
                ConfigErrorKind::FetchWait,
            ),
            (
                RunnerConfig {
                    linger: base.ack_wait,
                    ..base.clone()
                },
                ConfigErrorKind::Linger,
            ),
            (
                RunnerConfig {
                    retry_delay_max: Duration::from_millis(1),
                    ..base.clone()
                },
                ConfigErrorKind::RetryDelay,
            ),
        ];
        for (config, kind) in cases {
            assert_eq!(config.validate().map_err(|e| e.kind()), Err(kind));
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = RunnerConfig {
            retry_delay: Duration::from_millis(100),
            retry_delay_max: Duration::from_millis(1_000),
            ..RunnerConfig::default()
        };
        let delays: Vec<u128> = (1..=6).map(|a| config.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(config.backoff(0).as_millis(), 100);
        assert_eq!(config.backoff(u32::MAX), config.retry_delay_max);
    }
}
