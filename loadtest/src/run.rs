//! One load test, from provisioning to the report.
//!
//! 1. Provision the network (PKI, ledgers, wallets) and create its subjects on the bus.
//! 2. Measure the crypto ceiling and the bus ceiling (nothing else runs meanwhile).
//! 3. Start every stage, the outcome tracker and a producer thread that signs envelopes a
//!    little ahead of their send times (its cost stays in the process, as a terminal's would
//!    not: see docs/BENCHMARKS.md).
//! 4. Offer the load (open, ramp or closed), then wait for the last answers and for the money
//!    to settle, and judge the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, BusUrl, NamespacedBus, Outgoing, connect};
use dcpipe_connectors::ledger::LedgerUrl;
use dcpipe_pipeline::clock::{Clock, ShiftedClock, SystemClock, system_now_ms};
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::network::{MoneyReport, Network, NetworkConfig};
use dcpipe_pipeline::pki::PkiDirectory;
use dcpipe_pipeline::runtime::RunnerConfig;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
use dcpipe_schemas::{Channel, PaymentId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::ceiling::{self, CryptoWork};
use crate::config::{LedgerChoice, LoadConfig, Mode};
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::Measurement;
use crate::payments::{Generated, PaymentGenerator, PaymentMix};
use crate::ramp::{StepResult, highest_sustainable, judge};
use crate::report::{MixReport, MoneyCheck, RampReport, Report};
use crate::rss::{RssSampler, current_rss_kib, load_average, process_cpu_seconds};
use crate::schedule::OpenSchedule;
use crate::tracker::OutcomeTracker;

/// Most submissions published in one round.
pub const PUBLISH_BATCH_MAX: usize = 256;
/// Most envelopes signed ahead of their send time.
pub const PREPARED_MAX: usize = 4096;
/// Violations described in the report at most.
pub const VIOLATION_EXAMPLES_MAX: usize = 10;
/// How often the progress bar is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Seed offset of the crypto ceiling's sample payments (kept apart from the load's).
const CEILING_SEED_OFFSET: u64 = 0x5eed;
/// Amount of each readiness probe payment: 1 CNY.
const PROBE_AMOUNT_FEN: i64 = 100;
/// Settlement grace of the load test's central bank, ms.
const SETTLEMENT_GRACE_MS: i64 = 500;

pub(crate) fn provision_error(error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Provision, error.to_string())
}

pub(crate) fn ledger_error(error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Ledger, error.to_string())
}

/// Runs the load test `config` describes and returns its report. The report says whether the
/// run was valid; an `Err` means it could not run at all.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadTestError> {
    run_until(config, &CancellationToken::new()).await
}

/// How long an interrupted run waits for the answers to what it sent, at most.
pub const INTERRUPTED_DRAIN_MAX: Duration = Duration::from_secs(5);

/// [`run`], stopped early when `stop` is cancelled (Ctrl-C): sending stops, the answers to
/// what was sent are awaited for at most [`INTERRUPTED_DRAIN_MAX`], and the report covers the
/// run so far, marked invalid as interrupted.
pub async fn run_until(
    config: &LoadConfig,
    stop: &CancellationToken,
) -> Result<Report, LoadTestError> {
    config.check()?;
    if config.vehicles > 0 {
        return Err(LoadTestError::config(
            "a vehicle load is run by vehicles::run_vehicles",
        ));
    }
    let rss = RssSampler::start();
    let bar = progress_bar(config);
    let run_id = format!("{:08x}", rand::random::<u32>());

    bar.set_message("provisioning the network");
    let (network, _ledger_dir) = provision(config, false).await?;
    let (bus, namespace) = open_bus(config, &run_id).await?;
    // Whatever fails from here on, the run's namespace is removed all the same (unless kept);
    // the stages started inside stop as it returns.
    let outcome: Result<Report, LoadTestError> = async {
        let partitions = create_subjects(config, &network, bus.as_ref()).await?;

        bar.set_message("measuring the crypto ceiling");
        let producer_per_core = ceiling::measure_producer(
            &network,
            &config.mix,
            config.seed ^ CEILING_SEED_OFFSET,
            config.ceiling_duration / 4,
        )?;
        let work = CryptoWork::prepare(&network, &config.mix, config.seed ^ CEILING_SEED_OFFSET)?;
        let kinds = ceiling::payment_messages(&work.sizes(), work.interbank_share());
        let (cores, ceiling_duration) = (config.cores, config.ceiling_duration);
        let crypto = tokio::task::spawn_blocking(move || work.measure(cores, ceiling_duration))
            .await
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Crypto, e.to_string()))??;

        bar.set_message("measuring the bus ceiling");
        let bus_limit = measure_bus_ceiling(config, &bus, &kinds, &run_id, partitions).await?;
        bar.set_message("measuring the broker ceiling");
        let broker_limit =
            ceiling::measure_broker(&bus, &kinds, &run_id, partitions, config.ceiling_duration)
                .await?;

        // The stages, the tracker and the producer.
        let shutdown = CancellationToken::new();
        // Whatever way this function returns, the stages and consumers it started stop.
        let _stop_on_return = shutdown.clone().drop_guard();
        let stage_handles = if config.external_workers {
            Vec::new()
        } else {
            spawn_stages(config, &network, &bus, &shutdown)?
        };
        let permits =
            (config.mode == Mode::Closed).then(|| Arc::new(Semaphore::new(config.concurrency)));
        let (window_start, window_end) = config.measured_window();
        let tracker = OutcomeTracker::new(
            Instant::now(),
            Measurement::new(window_start, window_end),
            permits.clone(),
        );
        let consumer_handles = tracker
            .spawn_consumers(
                &bus,
                network.institutions.keys().cloned(),
                &format!("loadtest-{run_id}-observer"),
                &shutdown,
            )
            .await?;
        bar.set_message("waiting for every stage to answer");
        probe_readiness(&network, &bus, &tracker, config.drain_timeout).await?;
        tracker.restart_clock(Measurement::new(window_start, window_end));
        let prepared = match config.mode {
            Mode::Closed => config.concurrency,
            Mode::Open => usize::try_from(config.rate / 10).unwrap_or(PREPARED_MAX),
            Mode::Ramp => usize::try_from(config.ramp.max_rate / 10).unwrap_or(PREPARED_MAX),
        }
        .clamp(16, PREPARED_MAX);
        let (tx, mut rx) = mpsc::channel(prepared);
        let producer = spawn_producer(Arc::clone(&network), config.mix.clone(), config.seed, tx)?;
        let rss_mb_start = current_rss_kib().map_or(0.0, |k| k as f64 / 1024.0);
        rss.reset();
        let cpu_start = process_cpu_seconds();
        let load_start = load_average().unwrap_or(0.0);
        let started_at_ms = system_now_ms();
        let ticker = spawn_progress(bar.clone(), tracker.clone(), shutdown.clone());

        let sending = async {
            match config.mode {
                Mode::Open => {
                    bar.set_length(config.duration.as_secs());
                    send_open(
                        &bus,
                        &tracker,
                        &mut rx,
                        config.rate,
                        Duration::ZERO,
                        config.duration,
                    )
                    .await
                    .map(|()| None)
                }
                Mode::Closed => {
                    bar.set_length(config.duration.as_secs());
                    let permits = permits
                        .clone()
                        .ok_or_else(|| LoadTestError::config("closed mode without permits"))?;
                    send_closed(&bus, &tracker, &mut rx, &permits, config.duration)
                        .await
                        .map(|()| None)
                }
                Mode::Ramp => {
                    let steps = config.ramp.rates().len() as u64 + 1;
                    bar.set_length(steps * config.ramp.step_duration.as_secs());
                    run_ramp(config, &bus, &tracker, &mut rx).await.map(Some)
                }
            }
        };
        // Dropping the sender half-way is what stopping means: nothing more is published.
        let offered = tokio::select! {
            offered = sending => offered,
            () = stop.cancelled() => Ok(None),
        };
        let interrupted = stop.is_cancelled();
        let drain_timeout = if interrupted {
            config.drain_timeout.min(INTERRUPTED_DRAIN_MAX)
        } else {
            config.drain_timeout
        };
        drop(rx);
        let producer_result = producer.join().unwrap_or_else(|_| {
            Err(LoadTestError::new(
                LoadTestErrorKind::Generate,
                "the producer thread panicked",
            ))
        });
        let ramp = match offered {
            Ok(ramp) => ramp,
            Err(e) => {
                producer_result?;
                return Err(e);
            }
        };
        let load_length = tracker.now();
        let cpu_cores_used = match (cpu_start, process_cpu_seconds()) {
            (Some(start), Some(end)) => crate::measure::per_second_f64(end - start, load_length),
            _ => 0.0,
        };
        let load_end = load_average().unwrap_or(0.0);

        bar.set_message("waiting for the last answers");
        let all_answered = tracker.wait_all_answered(drain_timeout).await;
        bar.set_message("waiting for money to settle");
        let money = wait_settled(&network, drain_timeout).await?;
        let rss_mb_max = rss.max_mib();
        shutdown.cancel();
        join_all(stage_handles).await;
        join_all(consumer_handles).await;
        let _ = ticker.await;
        bar.finish_and_clear();
        let _ = rss.stop();
        remove_namespace(namespace.as_ref(), config.keep).await?;

        // Judge and report.
        let tally = tracker.with_state(|s| s.tally());
        let measurement = tracker.with_state(|s| s.measurement().clone());
        let series = tracker.with_state(|s| s.series().points());
        let mut invalid_reasons = Vec::new();
        if interrupted {
            invalid_reasons.push(format!(
                "interrupted after {:.1} s of load: a partial run",
                load_length.as_secs_f64()
            ));
        }
        if !all_answered {
            invalid_reasons.push(format!(
                "{} submissions unanswered {:?} after the load",
                tally.submitted - tally.answered,
                drain_timeout
            ));
        }
        if !tally.violations.is_empty() {
            invalid_reasons.push(format!("{} broken invariants", tally.violations.len()));
        }
        let counted: u64 = tally.counts_by_outcome.values().sum();
        if counted != tally.submitted {
            invalid_reasons.push(format!(
                "outcome counts add up to {counted}, not the {} submissions",
                tally.submitted
            ));
        }
        let money = MoneyCheck::of(&money);
        invalid_reasons.extend(money.failure());
        let (figures, measured_s, duration_s) = match &ramp {
            Some(ramp) => {
                let step = ramp
                    .highest_sustainable_rate
                    .and_then(|rate| ramp.steps.iter().find(|s| s.rate == rate))
                    .or(ramp.steps.first());
                let figures = step.map(|s| (s.offered_rate, s.achieved_rate, s.latency_ms));
                (
                    figures.unwrap_or_default(),
                    config.ramp.step_duration.as_secs_f64(),
                    load_length.as_secs_f64(),
                )
            }
            None => (
                (
                    measurement.offered_rate(),
                    measurement.achieved_rate(),
                    measurement.percentiles(),
                ),
                measurement.length().as_secs_f64(),
                config.duration.as_secs_f64(),
            ),
        };
        let (offered_rate, achieved_rate, latency_ms) = figures;
        let broker_ceiling = broker_limit.as_ref().map_or(0.0, |b| b.payments_per_s);
        let lower_ceiling = if broker_ceiling > 0.0 {
            crypto.payments_per_s.min(broker_ceiling)
        } else {
            crypto.payments_per_s
        };
        let mix = &config.mix;
        Ok(Report {
            mode: config.mode.as_str().to_owned(),
            bus: config.bus.to_string(),
            ledger: config.ledger.kind().to_owned(),
            institutions: network.institutions.len(),
            wallets: network.wallets.len(),
            seed: config.seed,
            mix: MixReport {
                algorithm: config.algorithm.as_str().to_owned(),
                interbank_share: mix.interbank_share,
                hot_share: mix.hot_share,
                hot_wallets: mix.hot_wallets,
                large_share: mix.large_share,
                bad_share: mix.forged_share,
                duplicate_share: mix.duplicate_share,
                conflict_share: mix.conflict_share,
            },
            concurrency: (config.mode == Mode::Closed).then_some(config.concurrency),
            duration_s,
            warmup_s: if ramp.is_some() {
                0.0
            } else {
                config.warmup.as_secs_f64()
            },
            cooldown_s: if ramp.is_some() {
                0.0
            } else {
                config.cooldown.as_secs_f64()
            },
            measured_s,
            cores: crypto.cores,
            crypto_per_core: crypto.per_core,
            crypto_ceiling: crypto.payments_per_s,
            producer_per_core,
            crypto_ceiling_with_producer: ceiling::shared_ceiling(
                crypto.per_core,
                producer_per_core,
                crypto.cores,
            ),
            bus_ceiling: bus_limit.payments_per_s,
            broker_ceiling,
            ratio_to_crypto_ceiling: ceiling::ratio(achieved_rate, crypto.payments_per_s),
            ratio_to_bus_ceiling: ceiling::ratio(achieved_rate, bus_limit.payments_per_s),
            ratio_to_broker_ceiling: ceiling::ratio(achieved_rate, broker_ceiling),
            ratio_to_lower_ceiling: ceiling::ratio(achieved_rate, lower_ceiling),
            crypto,
            bus_limit,
            broker_limit,
            offered_rate,
            achieved_rate,
            latency_ms,
            rss_mb_max,
            rss_mb_start,
            cpu_cores_used,
            load_average: (load_start, load_end),
            submitted: tally.submitted,
            distinct: tally.distinct,
            answered: tally.answered,
            counts_by_outcome: tally.counts_by_outcome,
            violations: tally.violations.len(),
            violation_examples: tally
                .violations
                .iter()
                .take(VIOLATION_EXAMPLES_MAX)
                .map(|v| format!("{v:?}"))
                .collect(),
            money,
            valid: invalid_reasons.is_empty(),
            invalid_reasons,
            ramp,
            series,
            command_line: config.command_line.clone(),
            started_at_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
    .await;
    remove_after_failure(&outcome, namespace.as_ref(), config.keep).await;
    outcome
}

/// Where the ledgers live: the configured URL, or SQLite files in a new temporary directory
/// (returned, to be kept as long as the run).
pub(crate) fn ledger_url(
    config: &LoadConfig,
) -> Result<(LedgerUrl, Option<tempfile::TempDir>), LoadTestError> {
    match &config.ledger {
        LedgerChoice::Url(url) => Ok((url.clone(), None)),
        LedgerChoice::Temporary => {
            let dir = tempfile::Builder::new()
                .prefix("dcpipe-loadtest-")
                .tempdir()
                .map_err(|e| provision_error(format!("temporary ledger directory: {e}")))?;
            Ok((LedgerUrl::SqliteDir(dir.path().to_path_buf()), Some(dir)))
        }
    }
}

/// The run's network: PKI, ledgers, wallets; with `vehicles`, the session stores too, under
/// the fleet's policy. The temporary ledger directory, if any, lives as long as the result.
pub(crate) async fn provision(
    config: &LoadConfig,
    vehicles: bool,
) -> Result<(Arc<Network>, Option<tempfile::TempDir>), LoadTestError> {
    let (ledger_url, ledger_dir) = ledger_url(config)?;
    let mut network_config = NetworkConfig::in_memory(config.institutions, config.wallets);
    network_config.algorithm = config.algorithm;
    network_config.ledger = ledger_url;
    network_config.settlement_grace_ms = SETTLEMENT_GRACE_MS;
    let clock: Arc<dyn Clock> = match config.start_at_ms {
        None => Arc::new(SystemClock),
        Some(at_ms) => Arc::new(ShiftedClock::starting_at(at_ms)),
    };
    let network = match &config.pki_dir {
        None => Network::provision(&network_config, clock).await,
        Some(dir) => {
            let pki = PkiDirectory::load(dir).map_err(provision_error)?;
            Network::from_pki(Arc::new(pki), &network_config, clock).await
        }
    };
    let mut network = network.map_err(provision_error)?;
    if vehicles {
        network
            .enable_vehicles(
                &network_config.ledger,
                &network_config.ledger_options,
                crate::vehicles::fleet_policy(),
            )
            .await
            .map_err(provision_error)?;
    }
    Ok((Arc::new(network), ledger_dir))
}

/// Creates the run's subjects, with the configured partitions on Kafka (one elsewhere), and
/// returns the partitions per subject.
pub(crate) async fn create_subjects(
    config: &LoadConfig,
    network: &Network,
    bus: &dyn Bus,
) -> Result<u32, LoadTestError> {
    let partitions = match config.bus {
        BusUrl::Kafka(_) => config.partitions.max(1),
        _ => 1,
    };
    network
        .ensure_subjects(bus, partitions)
        .await
        .map_err(|e| LoadTestError::bus("creating the subjects", e))?;
    Ok(partitions)
}

/// The bus the run uses. On a broker, the run lives in a namespace of its own (subjects,
/// streams or topics and consumer groups), removed at its end, so that it never joins a
/// deployment's groups nor touches its subjects; except with external workers, whose subjects
/// it is meant to drive.
pub(crate) async fn open_bus(
    config: &LoadConfig,
    run_id: &str,
) -> Result<(Arc<dyn Bus>, Option<Arc<NamespacedBus>>), LoadTestError> {
    let broker = connect(&config.bus, &config.bus_options)
        .await
        .map_err(|e| LoadTestError::bus("connecting", e))?;
    let namespace = match (&config.bus, config.external_workers) {
        (BusUrl::Embedded, _) | (_, true) => None,
        _ => Some(Arc::new(
            NamespacedBus::new(Arc::clone(&broker), format!("loadtest-{run_id}"))
                .map_err(|e| LoadTestError::bus("namespace", e))?,
        )),
    };
    let bus: Arc<dyn Bus> = match &namespace {
        Some(namespace) => Arc::clone(namespace) as Arc<dyn Bus>,
        None => broker,
    };
    Ok((bus, namespace))
}

/// The bus ceiling of messages of `kinds` on the run's bus. The embedded bus keeps what it
/// carries in this process: there the ceiling's messages go through a bus of their own, with
/// the same limits, dropped once measured.
pub(crate) async fn measure_bus_ceiling(
    config: &LoadConfig,
    bus: &Arc<dyn Bus>,
    kinds: &[ceiling::MessageKind],
    run_id: &str,
    partitions: u32,
) -> Result<ceiling::BusCeiling, LoadTestError> {
    let ceiling_bus = match config.bus {
        BusUrl::Embedded => connect(&BusUrl::Embedded, &config.bus_options)
            .await
            .map_err(|e| LoadTestError::bus("connecting", e))?,
        _ => Arc::clone(bus),
    };
    ceiling::measure_bus(
        &ceiling_bus,
        kinds,
        run_id,
        partitions,
        config.ceiling_duration,
    )
    .await
}

/// Starts every stage of `network` in this process, with the run's runner settings, until
/// `shutdown`.
pub(crate) fn spawn_stages(
    config: &LoadConfig,
    network: &Network,
    bus: &Arc<dyn Bus>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<dcpipe_pipeline::runtime::MemberResult>>, LoadTestError> {
    let runner = RunnerConfig {
        fetch_wait: Duration::from_millis(20),
        ack_wait: config.ack_wait,
        retry_delay: Duration::from_millis(200),
        concurrency: config.stage_concurrency,
        batch_max: config.batch_max,
        ..RunnerConfig::default()
    };
    network
        .spawn(bus, &runner, shutdown)
        .map_err(|e| LoadTestError::new(LoadTestErrorKind::Config, e.to_string()))
}

/// Waits for the tasks the run started (they stop with its shutdown token).
pub(crate) async fn join_all<T>(handles: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// Removes the run's namespace at its end, unless it is to be kept.
pub(crate) async fn remove_namespace(
    namespace: Option<&Arc<NamespacedBus>>,
    keep: bool,
) -> Result<(), LoadTestError> {
    match namespace {
        Some(namespace) if !keep => namespace
            .remove_created()
            .await
            .map(|_| ())
            .map_err(|e| LoadTestError::bus("removing the run's streams or topics", e)),
        _ => Ok(()),
    }
}

/// After a run that failed (`outcome`), removes its namespace unless it is to be kept.
pub(crate) async fn remove_after_failure<T>(
    outcome: &Result<T, LoadTestError>,
    namespace: Option<&Arc<NamespacedBus>>,
    keep: bool,
) {
    if let Err(e) = outcome
        && let Some(namespace) = namespace.filter(|_| !keep)
    {
        match namespace.remove_created().await {
            Ok(removed) => {
                tracing::warn!(
                    "load test failed ({e}): removed the run's {removed} streams or topics"
                );
            }
            Err(removal) => tracing::error!(
                "load test failed ({e}), and removing the run's streams or topics failed too: {removal}"
            ),
        }
    }
}

pub(crate) fn progress_bar(config: &LoadConfig) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s  {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Refreshes the bar with the rate, the answers and the p99 so far.
fn spawn_progress(
    bar: ProgressBar,
    tracker: OutcomeTracker,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
        let mut last = (Duration::ZERO, 0u64);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let now = tracker.now();
            let (submitted, answered, p99) =
                tracker.with_state(|s| (s.submitted(), s.answered(), s.live_p99_ms()));
            let rate = crate::measure::per_second(answered - last.1, now.saturating_sub(last.0));
            last = (now, answered);
            bar.set_position(now.as_secs());
            bar.set_message(format!(
                "submitted {submitted}  answered {answered} ({rate:.0}/s)  in flight {}  p99 {p99:.1} ms",
                submitted - answered
            ));
        }
    })
}

/// Signs envelopes on a thread of its own, a little ahead of their send times.
fn spawn_producer(
    network: Arc<Network>,
    mix: PaymentMix,
    seed: u64,
    tx: mpsc::Sender<Generated>,
) -> Result<std::thread::JoinHandle<Result<u64, LoadTestError>>, LoadTestError> {
    std::thread::Builder::new()
        .name("loadtest-producer".into())
        .spawn(move || {
            let mut generator = PaymentGenerator::new(&network, mix, seed);
            let mut produced = 0u64;
            loop {
                let generated = generator
                    .next(system_now_ms())
                    .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))?;
                if tx.blocking_send(generated).is_err() {
                    return Ok(produced);
                }
                produced += 1;
            }
        })
        .map_err(|e| {
            LoadTestError::new(LoadTestErrorKind::Generate, format!("producer thread: {e}"))
        })
}

fn producer_stopped() -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Generate, "the producer stopped")
}

/// Offers `rate` payments per second for `length`, starting `step_start` after the load began;
/// each payment is registered with its intended time before it is published.
async fn send_open(
    bus: &Arc<dyn Bus>,
    tracker: &OutcomeTracker,
    rx: &mut mpsc::Receiver<Generated>,
    rate: u32,
    step_start: Duration,
    length: Duration,
) -> Result<(), LoadTestError> {
    let schedule = OpenSchedule::new(rate).ok_or_else(|| LoadTestError::config("rate 0"))?;
    let total = schedule.count_within(length);
    let mut index = 0u64;
    while index < total {
        let elapsed = tracker.now().saturating_sub(step_start);
        let due = schedule.due_at(elapsed).min(total);
        if index >= due {
            let at = tracker.started() + step_start + schedule.intended_offset(index);
            tokio::time::sleep_until(at.into()).await;
            continue;
        }
        let n = (due - index).min(PUBLISH_BATCH_MAX as u64);
        let mut batch = Vec::with_capacity(n as usize);
        let mut submissions = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let generated = rx.recv().await.ok_or_else(producer_stopped)?;
            submissions.push((
                generated.submission,
                step_start + schedule.intended_offset(index),
            ));
            batch.push(generated.outgoing());
            index += 1;
        }
        tracker.submit_all(submissions);
        bus.publish_many(batch)
            .await
            .map_err(|e| LoadTestError::bus("publishing payments", e))?;
    }
    Ok(())
}

/// Keeps `permits` payments in flight for `length`: a new one as soon as one is answered.
async fn send_closed(
    bus: &Arc<dyn Bus>,
    tracker: &OutcomeTracker,
    rx: &mut mpsc::Receiver<Generated>,
    permits: &Arc<Semaphore>,
    length: Duration,
) -> Result<(), LoadTestError> {
    let end = tokio::time::Instant::from_std(tracker.started() + length);
    loop {
        let first = match tokio::time::timeout_at(end, permits.acquire()).await {
            Err(_) => break,
            Ok(permit) => permit.map_err(|_| LoadTestError::config("permits closed"))?,
        };
        first.forget();
        let mut n = 1;
        while n < PUBLISH_BATCH_MAX {
            match permits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(n);
        let mut submissions = Vec::with_capacity(n);
        for _ in 0..n {
            let generated = rx.recv().await.ok_or_else(producer_stopped)?;
            submissions.push((generated.submission, tracker.now()));
            batch.push(generated.outgoing());
        }
        tracker.submit_all(submissions);
        bus.publish_many(batch)
            .await
            .map_err(|e| LoadTestError::bus("publishing payments", e))?;
    }
    Ok(())
}

/// Runs one open-loop step at `rate` for `length`, waits for its answers and judges it.
async fn run_step(
    config: &LoadConfig,
    bus: &Arc<dyn Bus>,
    tracker: &OutcomeTracker,
    rx: &mut mpsc::Receiver<Generated>,
    rate: u32,
) -> Result<StepResult, LoadTestError> {
    let length = config.ramp.step_duration;
    let step_start = tracker.now();
    // The first fifth of a step (at most a second) lets queues adjust to the new rate.
    let settle = (length / 5).min(Duration::from_secs(1));
    let submitted_before = tracker.with_state(|s| {
        s.replace_measurement(Measurement::new(step_start + settle, step_start + length));
        s.submitted()
    });
    send_open(bus, tracker, rx, rate, step_start, length).await?;
    let (submitted, backlog_at_end) =
        tracker.with_state(|s| (s.submitted() - submitted_before, s.unanswered()));
    let drain = length.max(Duration::from_secs(5)).min(config.drain_timeout);
    if !tracker.wait_all_answered(drain).await {
        let now = tracker.now();
        tracker.with_state(|s| s.censor_unanswered(now));
    }
    let measurement = tracker.with_state(|s| s.measurement().clone());
    let latency = measurement.percentiles();
    let (sustainable, reasons) = judge(
        &config.ramp.criterion,
        measurement.offered_rate(),
        measurement.achieved_rate(),
        &latency,
        submitted,
        backlog_at_end,
    );
    Ok(StepResult {
        rate,
        offered_rate: measurement.offered_rate(),
        achieved_rate: measurement.achieved_rate(),
        latency_ms: latency,
        submitted,
        backlog_at_end,
        sustainable,
        reasons,
    })
}

/// Steps up until a step is not sustainable, then confirms at a share of the highest
/// sustainable rate.
async fn run_ramp(
    config: &LoadConfig,
    bus: &Arc<dyn Bus>,
    tracker: &OutcomeTracker,
    rx: &mut mpsc::Receiver<Generated>,
) -> Result<RampReport, LoadTestError> {
    let mut steps = Vec::new();
    for rate in config.ramp.rates() {
        let step = run_step(config, bus, tracker, rx, rate).await?;
        let sustainable = step.sustainable;
        steps.push(step);
        if !sustainable {
            break;
        }
    }
    let highest = highest_sustainable(&steps);
    let confirm = match highest {
        Some(rate) if config.ramp.confirm_share > 0.0 => {
            let confirm_rate =
                ((f64::from(rate) * config.ramp.confirm_share).round() as u32).max(1);
            Some(run_step(config, bus, tracker, rx, confirm_rate).await?)
        }
        _ => None,
    };
    Ok(RampReport {
        steps,
        highest_sustainable_rate: highest,
        confirm,
    })
}

/// Sends one payment from each institution to the next and waits for every answer, so that
/// the load starts once every stage has joined its consumer group (a Kafka group takes seconds
/// to settle) instead of counting that time as latency.
async fn probe_readiness(
    network: &Network,
    bus: &Arc<dyn Bus>,
    tracker: &OutcomeTracker,
    timeout: Duration,
) -> Result<(), LoadTestError> {
    let ids: Vec<&String> = network.institutions.keys().collect();
    let last_wallet_of = |institution: &str| {
        network
            .wallets
            .iter()
            .rev()
            .find(|w| w.party.institution_id == institution)
            .map(|w| w.party.wallet_id.as_str())
    };
    let mut messages = Vec::new();
    let mut submissions = Vec::new();
    let now_ms = system_now_ms();
    for (k, payer_institution) in ids.iter().enumerate() {
        let payee_institution = ids[(k + 1) % ids.len()];
        let payer = last_wallet_of(payer_institution);
        let payee = if payee_institution == *payer_institution {
            network
                .wallets
                .iter()
                .map(|w| w.party.wallet_id.as_str())
                .find(|id| Some(*id) != payer)
        } else {
            last_wallet_of(payee_institution)
        };
        let (Some(payer), Some(payee)) = (
            payer.and_then(|id| network.terminal(id)),
            payee.and_then(|id| network.terminal(id)),
        ) else {
            return Err(LoadTestError::config("an institution without wallets"));
        };
        let envelope = Touch::unchecked(payer, payee)
            .negotiate(&PaymentRequest {
                payment_id: PaymentId::time_ordered(),
                amount_fen: PROBE_AMOUNT_FEN,
                channel: Channel::Nfc,
                created_at_ms: now_ms,
                pin: PinEntry::WhenRequired,
            })
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))?;
        let frame = dcpipe_schemas::encode(&envelope)
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))?;
        submissions.push((Submission::of(&envelope, &frame), tracker.now()));
        messages.push(
            Outgoing::new(subjects::txn_submit(&envelope.payer.institution_id), frame)
                .with_key(envelope.payer.wallet_id.clone().into_bytes()),
        );
    }
    tracker.submit_all(submissions);
    bus.publish_many(messages)
        .await
        .map_err(|e| LoadTestError::bus("publishing the readiness probe", e))?;
    if tracker.wait_all_answered(timeout).await {
        Ok(())
    } else {
        Err(LoadTestError::bus(
            "readiness probe",
            format!("the pipeline did not answer within {timeout:?}"),
        ))
    }
}

/// Waits until money is conserved with nothing held or pending, or `timeout` passes (then the
/// last reading is returned, whatever it says).
///
/// `Network::money` reads each ledger's balances and pending totals one query after the other
/// while the stages still run: a payee institution finalizing a credit between the two reads
/// shows that credit in neither, as if money were lost. The payer's final outcome can be
/// observed before the payee applies it, so a reading is trusted only once it balances (a
/// real loss keeps failing until the deadline).
pub(crate) async fn wait_settled(
    network: &Network,
    timeout: Duration,
) -> Result<MoneyReport, LoadTestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let money = network.money().await.map_err(ledger_error)?;
        if money.is_settled_and_conserved() || Instant::now() >= deadline {
            return Ok(money);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
