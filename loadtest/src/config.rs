//! What a load test runs: bus, ledger, traffic shape, mode and its limits.
//!
//! Every limit is a named constant and [`LoadConfig::check`] refuses a configuration outside
//! them before anything is provisioned, so a typo cannot start an hour-long run.

use std::str::FromStr;
use std::time::Duration;

use dcpipe_connectors::bus::{BusOptions, BusUrl};
use dcpipe_connectors::ledger::LedgerUrl;
use dcpipe_pipeline::pki::AlgorithmChoice;

use crate::error::LoadTestError;
use crate::payments::PaymentMix;

/// Highest offered rate accepted, payments per second.
pub const RATE_MAX: u32 = 1_000_000;
/// Longest run accepted (a day): bounds the per-second series and the bookkeeping.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Most payments in flight in closed mode.
pub const CONCURRENCY_MAX: usize = 100_000;
/// Most ramp steps.
pub const RAMP_STEPS_MAX: usize = 200;
/// Stages' redelivery deadline unless configured otherwise.
pub const ACK_WAIT_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest and longest redelivery deadline accepted.
pub const ACK_WAIT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Most members of one stage's group in the process.
pub const STAGE_CONCURRENCY_MAX: usize = 64;
/// Largest stage batch accepted.
pub const BATCH_MAX_LIMIT: usize = 4096;
/// Longest the ceilings are measured for, each.
pub const CEILING_DURATION_MAX: Duration = Duration::from_secs(60);
/// Most synthetic vehicles of a vehicle load.
pub const VEHICLES_MAX: usize = 100_000;
/// Shortest and longest interval between two reports of one vehicle.
pub const REPORT_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
/// Reports a vehicle signs together unless configured otherwise.
pub const TELEMETRY_BATCH_DEFAULT: usize = 10;
/// Most offline wallets of a reconnection storm.
pub const OFFLINE_WALLETS_MAX: usize = 1_000_000;
/// The storm's size the benchmarks describe when they give none (`--offline-wallets` always
/// takes a number: the option parser has no value-less form for it).
pub const OFFLINE_WALLETS_DEFAULT: usize = 100_000;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Open loop: payments at fixed intended times, whatever the answers do.
    Open,
    /// Open-loop steps of increasing rate until one is not sustainable.
    Ramp,
    /// Closed loop: a fixed number of payments in flight, a new one when one is answered.
    Closed,
}

impl Mode {
    /// `open`, `ramp` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Ramp => "ramp",
            Mode::Closed => "closed",
        }
    }
}

impl FromStr for Mode {
    type Err = LoadTestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Mode::Open),
            "ramp" => Ok(Mode::Ramp),
            "closed" => Ok(Mode::Closed),
            other => Err(LoadTestError::config(format!(
                "mode {other:?}: expected open, ramp or closed"
            ))),
        }
    }
}

/// When a ramp step counts as sustainable.
#[derive(Debug, Clone, PartialEq)]
pub struct SustainCriterion {
    /// Achieved rate at least this share of the offered rate (0.95: 95%).
    pub achieved_ratio_min: f64,
    /// p99 latency of the step at most this, in ms.
    pub p99_ms_max: f64,
    /// Payments still unanswered at the step's end at most this share of the payments the step
    /// offered: more means a backlog that keeps growing.
    pub backlog_ratio_max: f64,
}

impl Default for SustainCriterion {
    fn default() -> Self {
        SustainCriterion {
            achieved_ratio_min: 0.95,
            p99_ms_max: 200.0,
            backlog_ratio_max: 0.05,
        }
    }
}

/// The steps of a ramp.
#[derive(Debug, Clone, PartialEq)]
pub struct RampConfig {
    /// Rate of the first step, payments per second.
    pub start_rate: u32,
    /// Added at each step.
    pub step_rate: u32,
    /// How long each step offers its rate.
    pub step_duration: Duration,
    /// The ramp stops after the step at this rate even if it was sustainable.
    pub max_rate: u32,
    /// When a step is sustainable.
    pub criterion: SustainCriterion,
    /// After the ramp, offer this share of the highest sustainable rate for one step (0.8: the
    /// latency target's operating point); 0 skips it.
    pub confirm_share: f64,
}

impl Default for RampConfig {
    fn default() -> Self {
        RampConfig {
            start_rate: 200,
            step_rate: 200,
            step_duration: Duration::from_secs(10),
            max_rate: 100_000,
            criterion: SustainCriterion::default(),
            confirm_share: 0.8,
        }
    }
}

impl RampConfig {
    /// The offered rate of every step, in order, at most [`RAMP_STEPS_MAX`].
    pub fn rates(&self) -> Vec<u32> {
        let mut rates = Vec::new();
        let mut rate = self.start_rate;
        while rate <= self.max_rate && rates.len() < RAMP_STEPS_MAX {
            rates.push(rate);
            match rate.checked_add(self.step_rate) {
                Some(next) if self.step_rate > 0 => rate = next,
                _ => break,
            }
        }
        rates
    }
}

/// Where the ledgers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerChoice {
    /// SQLite files in a new temporary directory, removed at the end.
    Temporary,
    /// A given ledger URL (`sqlite://DIR`, `postgres://…`).
    Url(LedgerUrl),
}

impl LedgerChoice {
    /// `sqlite` or `postgres`, for the report.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerChoice::Temporary => "sqlite",
            LedgerChoice::Url(LedgerUrl::Postgres(_)) => "postgres",
            LedgerChoice::Url(_) => "sqlite",
        }
    }
}

/// Everything a load test needs.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The bus the network runs on.
    pub bus: BusUrl,
    /// Credentials, TLS and embedded-bus limits.
    pub bus_options: BusOptions,
    /// Partitions of each Kafka topic (1 on the other buses).
    pub partitions: u32,
    /// The ledgers.
    pub ledger: LedgerChoice,
    /// How the load is offered.
    pub mode: Mode,
    /// Offered rate of open mode, payments per second.
    pub rate: u32,
    /// How long load is offered (open and closed mode).
    pub duration: Duration,
    /// Trimmed from the figures at the start.
    pub warmup: Duration,
    /// Trimmed from the figures at the end.
    pub cooldown: Duration,
    /// Payments in flight in closed mode.
    pub concurrency: usize,
    /// The ramp's steps.
    pub ramp: RampConfig,
    /// Operating institutions.
    pub institutions: usize,
    /// Wallets, all institutions together.
    pub wallets: usize,
    /// Certificate algorithms.
    pub algorithm: AlgorithmChoice,
    /// Seed of the synthetic traffic.
    pub seed: u64,
    /// Shape of the traffic, including bad, duplicate and conflicting submissions.
    pub mix: PaymentMix,
    /// Cores the run uses: the crypto ceiling is measured on this many threads.
    pub cores: usize,
    /// How long each ceiling is measured.
    pub ceiling_duration: Duration,
    /// How long the end of the run waits for the last answers and for money to settle.
    pub drain_timeout: Duration,
    /// A PKI directory written by `dcpipe pki init` to use instead of a new one (the one the
    /// external workers load); its institutions and wallets replace `institutions`/`wallets`.
    pub pki_dir: Option<std::path::PathBuf>,
    /// The stages run in other processes (`dcpipe worker`, same PKI, ledgers and bus): this
    /// process only produces, observes and measures.
    pub external_workers: bool,
    /// Members of each stage's consumer group in this process.
    pub stage_concurrency: usize,
    /// Most messages a stage decides together.
    pub batch_max: usize,
    /// A stage's delivery not acknowledged within this time is delivered again.
    pub ack_wait: Duration,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// On a broker, keep the run's streams or topics (in its namespace) at the end, for an
    /// audit of the run; by default they are removed.
    pub keep: bool,
    /// Synthetic vehicles driven instead of payments (0: payments). Each replays a trip
    /// through a synthetic city, a report every `report_interval`, signed in batches of
    /// `telemetry_batch` reports: `vehicles / report_interval` reports per second in all.
    pub vehicles: usize,
    /// Interval between two reports of one vehicle (a vehicle load).
    pub report_interval: Duration,
    /// Reports a vehicle signs and publishes together (a vehicle load).
    pub telemetry_batch: usize,
    /// Offline wallets reconnecting in a storm instead of payments (0: payments): each
    /// publishes its key set with 0 to 20 offline payments, `rate` key sets per second.
    pub offline_wallets: usize,
    /// The command line, recorded in the report.
    pub command_line: String,
    /// When set, the network's clock reads this moment (ms since the epoch) when the network
    /// is provisioned and runs from there: a run pinned to a moment of the day whatever the
    /// hour it runs at. The system clock otherwise.
    pub start_at_ms: Option<i64>,
}

impl LoadConfig {
    /// A short open-loop run on the embedded bus with temporary SQLite ledgers.
    pub fn embedded(rate: u32, duration: Duration) -> Self {
        LoadConfig {
            bus: BusUrl::Embedded,
            bus_options: BusOptions::default(),
            partitions: 1,
            ledger: LedgerChoice::Temporary,
            mode: Mode::Open,
            rate,
            duration,
            warmup: Duration::ZERO,
            cooldown: Duration::ZERO,
            concurrency: 256,
            ramp: RampConfig::default(),
            institutions: 4,
            wallets: 1000,
            algorithm: AlgorithmChoice::P256,
            seed: 1,
            mix: PaymentMix::default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ceiling_duration: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(60),
            pki_dir: None,
            external_workers: false,
            stage_concurrency: 1,
            batch_max: dcpipe_pipeline::runtime::RunnerConfig::BATCH_MAX_DEFAULT,
            ack_wait: ACK_WAIT_DEFAULT,
            progress: false,
            keep: false,
            vehicles: 0,
            report_interval: Duration::from_secs(1),
            telemetry_batch: TELEMETRY_BATCH_DEFAULT,
            offline_wallets: 0,
            command_line: String::new(),
            start_at_ms: None,
        }
    }

    /// Reports per second a vehicle load offers: one per vehicle per report interval.
    pub fn report_rate(&self) -> f64 {
        let interval_s = self.report_interval.as_secs_f64();
        if interval_s > 0.0 {
            self.vehicles as f64 / interval_s
        } else {
            0.0
        }
    }

    /// Refuses settings outside the named limits or inconsistent with each other.
    pub fn check(&self) -> Result<(), LoadTestError> {
        let fail = |m: String| Err(LoadTestError::config(m));
        if self.institutions == 0 {
            return fail("at least one institution is needed".into());
        }
        if self.wallets < 2 {
            return fail("at least two wallets are needed".into());
        }
        if self.cores == 0 {
            return fail("cores must be at least 1".into());
        }
        if self.external_workers && self.bus == BusUrl::Embedded {
            return fail(
                "external workers need a broker: the embedded bus lives in one process".into(),
            );
        }
        if self.external_workers
            && (self.pki_dir.is_none() || self.ledger == LedgerChoice::Temporary)
        {
            return fail("external workers need the PKI directory and the ledgers they use".into());
        }
        if self.stage_concurrency == 0 || self.stage_concurrency > STAGE_CONCURRENCY_MAX {
            return fail(format!(
                "stage concurrency must be 1 to {STAGE_CONCURRENCY_MAX}"
            ));
        }
        if self.ack_wait < ACK_WAIT_RANGE.0 || self.ack_wait > ACK_WAIT_RANGE.1 {
            return fail(format!(
                "ack wait must be {:?} to {:?}",
                ACK_WAIT_RANGE.0, ACK_WAIT_RANGE.1
            ));
        }
        if self.batch_max == 0 || self.batch_max > BATCH_MAX_LIMIT {
            return fail(format!("batch size must be 1 to {BATCH_MAX_LIMIT}"));
        }
        if self.vehicles > 0 {
            if self.vehicles > VEHICLES_MAX {
                return fail(format!("vehicles must be at most {VEHICLES_MAX}"));
            }
            if self.mode == Mode::Closed {
                return fail(
                    "a vehicle load is offered open-loop (--mode open or --mode ramp)".into(),
                );
            }
            if self.external_workers {
                return fail("a vehicle load runs its stages in this process".into());
            }
            if self.report_interval < REPORT_INTERVAL_RANGE.0
                || self.report_interval > REPORT_INTERVAL_RANGE.1
            {
                return fail(format!(
                    "report interval must be {:?} to {:?}",
                    REPORT_INTERVAL_RANGE.0, REPORT_INTERVAL_RANGE.1
                ));
            }
            if self.telemetry_batch == 0
                || self.telemetry_batch > dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX
            {
                return fail(format!(
                    "telemetry batch must be 1 to {} reports",
                    dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX
                ));
            }
            if self.report_rate() < 1.0 || self.report_rate() > f64::from(RATE_MAX) {
                return fail(format!(
                    "vehicles / report interval must be 1 to {RATE_MAX} reports/s"
                ));
            }
        }
        if self.offline_wallets > 0 {
            if self.vehicles > 0 {
                return fail("a load drives vehicles or offline wallets, not both".into());
            }
            if self.offline_wallets > OFFLINE_WALLETS_MAX {
                return fail(format!(
                    "offline wallets must be at most {OFFLINE_WALLETS_MAX}"
                ));
            }
            if self.mode != Mode::Open {
                return fail("a reconnection storm is offered open-loop only (--mode open)".into());
            }
            if self.external_workers {
                return fail("a reconnection storm runs its stages in this process".into());
            }
            if self.rate == 0 || self.rate > RATE_MAX {
                return fail(format!("rate must be 1 to {RATE_MAX} key sets/s"));
            }
            let (start, end) = self.storm_window();
            if end <= start {
                return fail(format!(
                    "warm-up ({:?}) plus cool-down ({:?}) leave nothing of the {:?} storm",
                    self.warmup,
                    self.cooldown,
                    self.storm_length()
                ));
            }
            if self.ceiling_duration.is_zero() || self.ceiling_duration > CEILING_DURATION_MAX {
                return fail(format!(
                    "ceiling duration must be positive and at most {CEILING_DURATION_MAX:?}"
                ));
            }
            return Ok(());
        }
        match self.mode {
            Mode::Open if self.rate == 0 || self.rate > RATE_MAX => {
                return fail(format!("rate must be 1 to {RATE_MAX} payments/s"));
            }
            Mode::Closed if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX => {
                return fail(format!("concurrency must be 1 to {CONCURRENCY_MAX}"));
            }
            Mode::Ramp => {
                let rates = self.ramp.rates();
                if rates.is_empty() || self.ramp.start_rate == 0 {
                    return fail("the ramp has no step: start rate must be 1 to max rate".into());
                }
                if self.ramp.max_rate > RATE_MAX {
                    return fail(format!("ramp max rate above {RATE_MAX}"));
                }
                if self.ramp.step_duration.is_zero() || self.ramp.step_duration > DURATION_MAX {
                    return fail("ramp step duration must be positive and at most a day".into());
                }
                if !(0.0..=1.0).contains(&self.ramp.confirm_share) {
                    return fail("ramp confirm share must be within 0..=1".into());
                }
                let c = &self.ramp.criterion;
                if !(c.achieved_ratio_min > 0.0 && c.achieved_ratio_min <= 1.0)
                    || c.p99_ms_max <= 0.0
                    || !(0.0..=1.0).contains(&c.backlog_ratio_max)
                {
                    return fail("ramp criterion out of range".into());
                }
            }
            _ => {}
        }
        if self.mode != Mode::Ramp {
            if self.duration.is_zero() || self.duration > DURATION_MAX {
                return fail("duration must be positive and at most a day".into());
            }
            if self.warmup + self.cooldown >= self.duration {
                return fail(format!(
                    "warm-up ({:?}) plus cool-down ({:?}) leave nothing of the {:?} run",
                    self.warmup, self.cooldown, self.duration
                ));
            }
        }
        if self.ceiling_duration.is_zero() || self.ceiling_duration > CEILING_DURATION_MAX {
            return fail(format!(
                "ceiling duration must be positive and at most {CEILING_DURATION_MAX:?}"
            ));
        }
        let m = &self.mix;
        let shares = [
            m.hot_share,
            m.interbank_share,
            m.large_share,
            m.duplicate_share,
            m.conflict_share,
            m.forged_share,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return fail("every share must be within 0..=1".into());
        }
        if m.duplicate_share + m.conflict_share + m.forged_share > 1.0 {
            return fail("bad, duplicate and conflict shares add up to more than 1".into());
        }
        Ok(())
    }

    /// How long a reconnection storm offers its key sets: `offline_wallets / rate`.
    pub fn storm_length(&self) -> Duration {
        crate::schedule::OpenSchedule::new(self.rate).map_or(Duration::ZERO, |schedule| {
            schedule.intended_offset(self.offline_wallets as u64)
        })
    }

    /// The measured part of a reconnection storm: its length without the warm-up and the
    /// cool-down.
    pub fn storm_window(&self) -> (Duration, Duration) {
        (
            self.warmup,
            self.storm_length()
                .saturating_sub(self.cooldown)
                .max(self.warmup),
        )
    }

    /// The measured part of an open or closed run: from the end of the warm-up to the start of
    /// the cool-down, as offsets from the start of the load.
    pub fn measured_window(&self) -> (Duration, Duration) {
        (
            self.warmup,
            self.duration.saturating_sub(self.cooldown).max(self.warmup),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoadConfig {
        LoadConfig::embedded(100, Duration::from_secs(10))
    }

    #[test]
    fn accepts_the_default_embedded_config() {
        assert!(config().check().is_ok());
    }

    #[test]
    fn rejects_warmup_and_cooldown_covering_the_run() {
        let mut c = config();
        c.warmup = Duration::from_secs(6);
        c.cooldown = Duration::from_secs(4);
        let err = c.check().expect_err("nothing left to measure");
        assert_eq!(err.reason_code(), "loadtest.config");
    }

    #[test]
    fn rejects_external_workers_on_the_embedded_bus() {
        let mut c = config();
        c.external_workers = true;
        c.pki_dir = Some("pki".into());
        c.ledger = LedgerChoice::Url(LedgerUrl::SqliteMemory);
        assert!(c.check().is_err());
    }

    #[test]
    fn rejects_bad_shares_adding_up_above_one() {
        let mut c = config();
        c.mix.duplicate_share = 0.6;
        c.mix.forged_share = 0.5;
        assert!(c.check().is_err());
    }

    #[test]
    fn rejects_rate_above_the_limit() {
        let mut c = config();
        c.rate = RATE_MAX + 1;
        assert!(c.check().is_err());
    }

    #[test]
    fn a_vehicle_load_offers_one_report_per_vehicle_per_interval() {
        let mut c = config();
        c.vehicles = 2000;
        c.report_interval = Duration::from_millis(100);
        assert!(c.check().is_ok());
        assert!((c.report_rate() - 20_000.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_a_closed_vehicle_load_and_oversized_telemetry_batches() {
        let mut c = config();
        c.vehicles = 10;
        c.mode = Mode::Ramp;
        assert!(c.check().is_ok());
        c.mode = Mode::Closed;
        assert!(c.check().is_err());
        let mut c = config();
        c.vehicles = 10;
        c.telemetry_batch = dcpipe_schemas::TELEMETRY_REPORTS_PER_BATCH_MAX + 1;
        assert!(c.check().is_err());
    }

    #[test]
    fn ramp_rates_step_up_to_the_max() {
        let ramp = RampConfig {
            start_rate: 100,
            step_rate: 150,
            max_rate: 500,
            ..RampConfig::default()
        };
        assert_eq!(ramp.rates(), vec![100, 250, 400]);
    }

    #[test]
    fn ramp_rates_are_bounded_by_the_step_limit() {
        let ramp = RampConfig {
            start_rate: 1,
            step_rate: 1,
            max_rate: RATE_MAX,
            ..RampConfig::default()
        };
        assert_eq!(ramp.rates().len(), RAMP_STEPS_MAX);
    }

    #[test]
    fn parses_the_three_modes_and_rejects_others() {
        assert_eq!("open".parse::<Mode>().ok(), Some(Mode::Open));
        assert_eq!("ramp".parse::<Mode>().ok(), Some(Mode::Ramp));
        assert_eq!("closed".parse::<Mode>().ok(), Some(Mode::Closed));
        assert!("fast".parse::<Mode>().is_err());
    }

    #[test]
    fn measured_window_trims_warmup_and_cooldown() {
        let mut c = config();
        c.warmup = Duration::from_secs(2);
        c.cooldown = Duration::from_secs(1);
        assert_eq!(
            c.measured_window(),
            (Duration::from_secs(2), Duration::from_secs(9))
        );
    }

    #[test]
    fn a_storm_lasts_its_wallets_over_the_rate_and_is_checked() {
        let mut c = config();
        c.offline_wallets = 1_000;
        c.rate = 250;
        c.warmup = Duration::from_secs(1);
        c.cooldown = Duration::from_secs(1);
        assert_eq!(c.storm_length(), Duration::from_secs(4));
        assert_eq!(
            c.storm_window(),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
        assert!(c.check().is_ok());
        c.vehicles = 10;
        assert!(c.check().is_err());
        c.vehicles = 0;
        c.mode = Mode::Closed;
        assert!(c.check().is_err());
        c.mode = Mode::Open;
        c.warmup = Duration::from_secs(3);
        assert!(c.check().is_err(), "nothing left to measure");
        c.warmup = Duration::ZERO;
        c.offline_wallets = OFFLINE_WALLETS_MAX + 1;
        assert!(c.check().is_err());
    }
}
