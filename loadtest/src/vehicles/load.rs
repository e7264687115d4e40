//! The load test of the vehicle flow (`dcpipe loadtest --vehicles N`): synthetic vehicles
//! replay trips through a synthetic city, a report every report interval each, signed in
//! batches, offered open-loop at the intended times; the run measures what the vehicle stages
//! did with them and holds the run to the fleet's checks.
//!
//! 1. Provision the network with its session stores, start every stage, register the city and
//!    the vehicles' pre-authorizations ([`Fleet::prepare`]), sign every batch ahead.
//! 2. Measure the ceilings: the matching stage's pure work on the run's own batches
//!    ([`VehicleWork`]) and the bus alone with batches of their real size.
//! 3. Offer the batches: vehicle after vehicle, round after round, batch `i` due when the
//!    last of its reports is due at `vehicles / report interval` reports per second.
//! 4. Observe: session events on `vehicle.session.<oi>` (matching latency: the intended time
//!    of the batch that caused an event to the event), outcomes on `txn.result.<oi>` (charge
//!    latency: a toll pass or parking exit observed to its charge's outcome), and the session
//!    stores' progress (reports applied: verified, matched, sessions updated).
//! 5. Drain, then check the fleet ([`Fleet::finish`]: every charge its trips must cause made
//!    once with its amount, no decoy charged, none above its pre-authorization) and money.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, Consumer, ConsumerConfig, StartAt};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::subjects;
use dcpipe_schemas::{
    Message, PaymentId, PaymentOutcome, ServiceKind, SessionEventKind, VehicleSessionEvent,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, FleetConfig, FleetReport, SignedBatch};
use crate::ceiling::{self, BusCeiling, MessageKind, VehicleCeiling, VehicleWork};
use crate::config::LoadConfig;
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::{Measurement, Percentiles, Series, SeriesPoint, per_second_f64};
use crate::report::MoneyCheck;
use crate::rss::{RssSampler, load_average, process_cpu_seconds};
use crate::run::{
    create_subjects, join_all, measure_bus_ceiling, open_bus, progress_bar, provision,
    remove_after_failure, remove_namespace, spawn_stages, wait_settled,
};
use crate::schedule::OpenSchedule;

/// Most batches published in one round.
pub const PUBLISH_BATCH_MAX: usize = 256;
/// Vehicles whose batches the vehicle ceiling cycles through.
pub const CEILING_SAMPLE_VEHICLES: usize = 64;
/// How often the session stores are read for the reports applied.
const APPLIED_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Deliveries the observers fetch at once.
const OBSERVER_FETCH_MAX: usize = 512;
/// Longest the observers wait for a fetch.
const OBSERVER_FETCH_WAIT: Duration = Duration::from_millis(20);
/// How long the fleet's checks may wait for the pipeline after the load drained.
const FINISH_DEADLINE: Duration = Duration::from_secs(120);
/// Seed of the city and the trips unless the configuration's seed says otherwise.
const FLEET_SEED_OFFSET: u64 = 0x7e1e;

/// What a vehicle load reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleReport {
    /// The bus URL (no credentials).
    pub bus: String,
    /// `sqlite` or `postgres`.
    pub ledger: String,
    /// Institutions.
    pub institutions: usize,
    /// Wallets.
    pub wallets: usize,
    /// Seed of the city and the trips.
    pub seed: u64,
    /// Vehicles driven.
    pub vehicles: usize,
    /// Interval between two reports of a vehicle, ms.
    pub report_interval_ms: f64,
    /// Reports per signed batch.
    pub telemetry_batch: usize,
    /// Entities in the city.
    pub entities: usize,
    /// Load offered for, seconds.
    pub duration_s: f64,
    /// Trimmed at the start, seconds.
    pub warmup_s: f64,
    /// Trimmed at the end, seconds.
    pub cooldown_s: f64,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Cores the run used.
    pub cores: usize,
    /// Reports per second the matching stage's pure work allows (all cores).
    pub ceiling: f64,
    /// Details of that ceiling.
    pub vehicle_ceiling: VehicleCeiling,
    /// Reports per second the bus carries in batches of this size, with no processing.
    pub bus_ceiling: f64,
    /// Details of the bus ceiling (its "payments" are batches here).
    pub bus_limit: BusCeiling,
    /// Reports per second offered in the measured window.
    pub offered_rate: f64,
    /// Reports per second applied (verified, matched, sessions updated) in the window.
    pub achieved_rate: f64,
    /// Achieved over the matching ceiling.
    pub ratio_to_ceiling: f64,
    /// Achieved over the bus ceiling.
    pub ratio_to_bus_ceiling: f64,
    /// Intended send time of the batch holding the reports that caused a session event, to
    /// the event observed on `vehicle.session.<oi>`, ms.
    pub matching_latency_ms: Percentiles,
    /// A toll pass or parking exit observed, to its charge's outcome observed, ms.
    pub charge_latency_ms: Percentiles,
    /// Reports published.
    pub reports_sent: u64,
    /// Reports applied by the end.
    pub reports_applied: u64,
    /// From the end of the load until every report was applied, ms (`None`: not in time).
    pub drained_ms: Option<u64>,
    /// Session events observed, by event.
    pub session_events: BTreeMap<String, u64>,
    /// Charges' outcomes observed, by status or reason code.
    pub charge_outcomes: BTreeMap<String, u64>,
    /// What the fleet's checks found.
    pub fleet: FleetSummary,
    /// The money check.
    pub money: MoneyCheck,
    /// Largest resident memory while the load ran, MiB.
    pub rss_mb_max: f64,
    /// CPU this process used while the load ran, in cores.
    pub cpu_cores_used: f64,
    /// The machine's one-minute load average when the load started and when it ended.
    pub load_average: (f64, f64),
    /// Every check passed.
    pub valid: bool,
    /// Why not, when not valid.
    pub invalid_reasons: Vec<String>,
    /// Reports offered and applied, and matching latency, per second.
    pub series: Vec<SeriesPoint>,
    /// The command that produced this report.
    pub command_line: String,
    /// When the load started, ms since the epoch.
    pub started_at_ms: i64,
    /// dcpipe's version.
    pub version: String,
}

/// The fleet's checks, summed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct FleetSummary {
    /// Charges the fixes sent must cause.
    pub expected: usize,
    /// Charges made.
    pub charged: usize,
    /// Charges completed.
    pub completed: usize,
    /// Entities driven past without entering.
    pub decoys: usize,
    /// Sum of the charges, fen.
    pub charged_fen: i64,
    /// Every check that failed (missing, unexpected, decoy charged, not completed, above the
    /// pre-authorization).
    pub failures: Vec<String>,
}

impl From<&FleetReport> for FleetSummary {
    fn from(report: &FleetReport) -> Self {
        FleetSummary {
            expected: report.expected,
            charged: report.charged,
            completed: report.completed,
            decoys: report.decoys,
            charged_fen: report.charged_fen,
            failures: report.failures(),
        }
    }
}

impl VehicleReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, LoadTestError> {
        crate::report::to_json(self)
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadTestError> {
        crate::report::write_json(self, path)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "vehicles {} · a report every {:.0} ms, {} per batch · bus {} · ledger {} · {} institutions · {} entities · {} cores",
            self.vehicles,
            self.report_interval_ms,
            self.telemetry_batch,
            self.bus,
            self.ledger,
            self.institutions,
            self.entities,
            self.cores
        );
        let _ = writeln!(out, "{:<28}{:>12}", "", "reports/s");
        let _ = writeln!(out, "{:<28}{:>12.0}", "offered", self.offered_rate);
        let _ = writeln!(out, "{:<28}{:>12.0}", "applied", self.achieved_rate);
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}   ratio {:.2}  ({:.0}/core × {}, {:.2} signature checks per report)",
            "matching ceiling",
            self.ceiling,
            self.ratio_to_ceiling,
            self.vehicle_ceiling.per_core,
            self.vehicle_ceiling.cores,
            self.vehicle_ceiling.verify_per_report
        );
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}   ratio {:.2}  ({:.0} batches/s)",
            "bus ceiling", self.bus_ceiling, self.ratio_to_bus_ceiling, self.bus_limit.message_rate
        );
        for (what, l) in [
            ("report → session event", &self.matching_latency_ms),
            ("session end → outcome", &self.charge_latency_ms),
        ] {
            let _ = writeln!(
                out,
                "{what:<28}ms p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            );
        }
        let _ = writeln!(
            out,
            "reports sent {}  applied {}  drained {} after the load",
            self.reports_sent,
            self.reports_applied,
            self.drained_ms
                .map_or_else(|| "not".to_owned(), |ms| format!("{ms} ms"))
        );
        let events: Vec<String> = self
            .session_events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "session events: {}", events.join(", "));
        let _ = writeln!(
            out,
            "charges: expected {}  made {}  completed {}  {} fen  · decoys {}",
            self.fleet.expected,
            self.fleet.charged,
            self.fleet.completed,
            self.fleet.charged_fen,
            self.fleet.decoys
        );
        let _ = writeln!(
            out,
            "memory MiB max {:.0} · cpu {:.2} cores busy while loaded · load average {:.2} → {:.2}",
            self.rss_mb_max, self.cpu_cores_used, self.load_average.0, self.load_average.1
        );
        if self.valid {
            let _ = writeln!(out, "valid");
        } else {
            let _ = writeln!(out, "INVALID:");
            for reason in &self.invalid_reasons {
                let _ = writeln!(out, "  {reason}");
            }
        }
        out
    }
}

/// What the observers share with the sender.
#[derive(Debug)]
struct Observed {
    /// Reports offered and applied.
    telemetry: Measurement,
    /// Batch intended → session event.
    matching: Measurement,
    /// Pass or exit observed → outcome.
    charges: Measurement,
    series: Series,
    /// Charges waited for: payment id → when their session's end was observed.
    awaiting_outcome: HashMap<PaymentId, Duration>,
    session_events: BTreeMap<String, u64>,
    charge_outcomes: BTreeMap<String, u64>,
    reports_applied: u64,
}

/// One batch of the load and when it is due.
struct Scheduled {
    batch: SignedBatch,
    intended: Duration,
}

/// The batches of every vehicle in the order they are offered — round after round, vehicle
/// after vehicle — each due when the last of its reports is due at `report_rate` reports per
/// second.
fn schedule(
    signed: Vec<Vec<SignedBatch>>,
    report_rate: u32,
) -> Result<Vec<Scheduled>, LoadTestError> {
    let schedule =
        OpenSchedule::new(report_rate).ok_or_else(|| LoadTestError::config("report rate 0"))?;
    let rounds = signed.iter().map(Vec::len).max().unwrap_or(0);
    let mut queues: Vec<std::vec::IntoIter<SignedBatch>> =
        signed.into_iter().map(Vec::into_iter).collect();
    let mut scheduled = Vec::new();
    let mut reports = 0u64;
    for _ in 0..rounds {
        for queue in &mut queues {
            if let Some(batch) = queue.next() {
                reports += batch.reports as u64;
                scheduled.push(Scheduled {
                    intended: schedule.intended_offset(reports.saturating_sub(1)),
                    batch,
                });
            }
        }
    }
    Ok(scheduled)
}

fn observer_error(error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::bus("observing", error)
}

/// Runs the vehicle load `config` describes (`config.vehicles` > 0) and returns its report.
/// The report says whether the run was valid; an `Err` means it could not run at all.
pub async fn run_vehicles(
    config: &LoadConfig,
    stop: &CancellationToken,
) -> Result<VehicleReport, LoadTestError> {
    config.check()?;
    if config.vehicles == 0 {
        return Err(LoadTestError::config("a vehicle load needs vehicles"));
    }
    let rss = RssSampler::start();
    let bar = progress_bar(config);
    let run_id = format!("{:08x}", rand::random::<u32>());
    bar.set_message("provisioning the network");
    let (network, _ledger_dir) = provision(config, true).await?;
    let (bus, namespace) = open_bus(config, &run_id).await?;
    let outcome = async {
        let partitions = create_subjects(config, &network, bus.as_ref()).await?;
        let shutdown = CancellationToken::new();
        let _stop_on_return = shutdown.clone().drop_guard();
        let stage_handles = spawn_stages(config, &network, &bus, &shutdown)?;

        bar.set_message("registering the city and the vehicles");
        let length = config.duration;
        let interval = config.report_interval;
        let fixes_max = usize::try_from(length.as_nanos().div_ceil(interval.as_nanos().max(1)))
            .unwrap_or(usize::MAX);
        let fleet_config = FleetConfig {
            seed: config.seed ^ FLEET_SEED_OFFSET,
            vehicles: config.vehicles,
        };
        let fleet = Fleet::prepare(
            &network,
            &bus,
            &fleet_config,
            Some(fixes_max.max(1)),
            network_now_ms(&network),
            config.drain_timeout.max(FINISH_DEADLINE) + length,
        )
        .await?;
        let signed = fleet.sign_telemetry(config.telemetry_batch)?;

        bar.set_message("measuring the ceilings");
        let work = VehicleWork::prepare(
            &network,
            signed
                .iter()
                .take(CEILING_SAMPLE_VEHICLES)
                .map(|batches| batches.iter().map(|b| b.frame.as_ref()).collect()),
        )?;
        let (cores, ceiling_duration) = (config.cores, config.ceiling_duration);
        let vehicle_ceiling =
            tokio::task::spawn_blocking(move || work.measure(cores, ceiling_duration))
                .await
                .map_err(|e| LoadTestError::new(LoadTestErrorKind::Crypto, e.to_string()))??;
        let frames: Vec<&SignedBatch> = signed.iter().flatten().collect();
        let mean_bytes = frames.iter().map(|b| b.frame.len()).sum::<usize>() / frames.len().max(1);
        let mean_reports =
            frames.iter().map(|b| b.reports).sum::<usize>() as f64 / frames.len().max(1) as f64;
        let kinds = [MessageKind {
            name: "vehicle.telemetry",
            bytes: mean_bytes,
            per_payment: 1.0,
        }];
        let bus_limit = measure_bus_ceiling(config, &bus, &kinds, &run_id, partitions).await?;
        let bus_ceiling = bus_limit.payments_per_s * mean_reports;

        // The schedule, and the batch each session event comes from.
        let report_rate = (config.report_rate().round() as u32).max(1);
        let scheduled = schedule(signed, report_rate)?;
        let intended_of: Arc<HashMap<(String, i64), Duration>> = Arc::new(
            scheduled
                .iter()
                .map(|s| {
                    (
                        (s.batch.vehicle_id.clone(), s.batch.first_sequence),
                        s.intended,
                    )
                })
                .collect(),
        );
        let (window_start, window_end) = config.measured_window();
        let observed = Arc::new(Mutex::new(Observed {
            telemetry: Measurement::new(window_start, window_end),
            matching: Measurement::new(window_start, window_end),
            charges: Measurement::new(window_start, window_end),
            series: Series::default(),
            awaiting_outcome: HashMap::new(),
            session_events: BTreeMap::new(),
            charge_outcomes: BTreeMap::new(),
            reports_applied: 0,
        }));

        // The observers, on a clock started just before the load.
        let started = Arc::new(Mutex::new(Instant::now()));
        let now = {
            let started = Arc::clone(&started);
            move || started.lock().map_or(Duration::ZERO, |s| s.elapsed())
        };
        let mut observers = Vec::new();
        for institution in network.institutions.keys() {
            let events = bus
                .consumer(observer_config(
                    subjects::vehicle_session(institution),
                    &run_id,
                ))
                .await
                .map_err(observer_error)?;
            let (observer, intended_of) = (Arc::clone(&observed), Arc::clone(&intended_of));
            observers.push(spawn_observer(
                events,
                shutdown.clone(),
                now.clone(),
                move |event: VehicleSessionEvent, at| {
                    if let Ok(mut o) = observer.lock() {
                        o.on_session_event(&event, &intended_of, at);
                    }
                },
            ));
            let outcomes = bus
                .consumer(observer_config(subjects::txn_result(institution), &run_id))
                .await
                .map_err(observer_error)?;
            let observer = Arc::clone(&observed);
            observers.push(spawn_observer(
                outcomes,
                shutdown.clone(),
                now.clone(),
                move |outcome: PaymentOutcome, at| {
                    if let Ok(mut o) = observer.lock() {
                        o.on_outcome(&outcome, at);
                    }
                },
            ));
        }
        let vehicle_ids = fleet.vehicle_ids();
        let poller = {
            let (network, observed, shutdown, now) = (
                Arc::clone(&network),
                Arc::clone(&observed),
                shutdown.clone(),
                now.clone(),
            );
            let vehicle_ids = vehicle_ids.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(APPLIED_POLL_INTERVAL) => {}
                    }
                    if let Ok(applied) = reports_applied(&network, &vehicle_ids).await {
                        let at = now();
                        if let Ok(mut o) = observed.lock() {
                            let new = applied.saturating_sub(o.reports_applied);
                            o.reports_applied = applied;
                            o.telemetry.on_repeat_answered(at, new);
                            o.series.on_repeat_answered(at, new);
                        }
                    }
                }
            })
        };

        // The load.
        rss.reset();
        let cpu_start = process_cpu_seconds();
        let load_start = load_average().unwrap_or(0.0);
        let started_at_ms = network_now_ms(&network);
        if let Ok(mut s) = started.lock() {
            *s = Instant::now();
        }
        bar.set_length(length.as_secs());
        bar.set_message("driving");
        let telemetry_started = tokio::time::Instant::now();
        let sending = send(&bus, &scheduled, &observed, &now);
        let sent = tokio::select! {
            sent = sending => sent?,
            () = stop.cancelled() => 0,
        };
        let interrupted = stop.is_cancelled();
        let load_length = now();
        let cpu_cores_used = match (cpu_start, process_cpu_seconds()) {
            (Some(start), Some(end)) => per_second_f64(end - start, load_length),
            _ => 0.0,
        };
        let load_end = load_average().unwrap_or(0.0);

        // Drain: every report sent applied.
        bar.set_message("waiting for the last reports to be applied");
        let drain_started = Instant::now();
        let drain_deadline = drain_started + config.drain_timeout;
        let mut drained_ms = None;
        let mut applied = 0;
        while Instant::now() < drain_deadline {
            applied = reports_applied(&network, &vehicle_ids)
                .await
                .map_err(crate::run::ledger_error)?;
            if applied >= sent {
                drained_ms =
                    Some(u64::try_from(drain_started.elapsed().as_millis()).unwrap_or(u64::MAX));
                break;
            }
            tokio::time::sleep(APPLIED_POLL_INTERVAL / 5).await;
        }

        // The fleet's checks (stations report the metered sessions; charges decided).
        bar.set_message("checking the charges");
        let fleet_report = if interrupted {
            None
        } else {
            Some(
                fleet
                    .finish(&network, &bus, telemetry_started, network_now_ms(&network))
                    .await?,
            )
        };
        bar.set_message("waiting for money to settle");
        let money = wait_settled(&network, config.drain_timeout).await?;
        let rss_mb_max = rss.max_mib();
        shutdown.cancel();
        join_all(stage_handles).await;
        join_all(observers).await;
        let _ = poller.await;
        bar.finish_and_clear();
        let _ = rss.stop();
        remove_namespace(namespace.as_ref(), config.keep).await?;

        // Judge and report.
        let o = observed
            .lock()
            .map_err(|_| LoadTestError::config("an observer panicked"))?;
        let mut invalid_reasons = Vec::new();
        if interrupted {
            invalid_reasons.push(format!(
                "interrupted after {:.1} s of load: a partial run",
                load_length.as_secs_f64()
            ));
        }
        if drained_ms.is_none() {
            invalid_reasons.push(format!(
                "{} of {sent} reports not applied {:?} after the load",
                sent.saturating_sub(applied),
                config.drain_timeout
            ));
        }
        let fleet = fleet_report
            .as_ref()
            .map(FleetSummary::from)
            .unwrap_or_default();
        invalid_reasons.extend(fleet.failures.iter().cloned());
        let money = MoneyCheck::of(&money);
        invalid_reasons.extend(money.failure());
        let achieved_rate = o.telemetry.achieved_rate();
        Ok(VehicleReport {
            bus: config.bus.to_string(),
            ledger: config.ledger.kind().to_owned(),
            institutions: network.institutions.len(),
            wallets: network.wallets.len(),
            seed: fleet_config.seed,
            vehicles: config.vehicles,
            report_interval_ms: config.report_interval.as_secs_f64() * 1e3,
            telemetry_batch: config.telemetry_batch,
            entities: fleet_report.as_ref().map_or(0, |f| f.entities),
            duration_s: length.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            cooldown_s: config.cooldown.as_secs_f64(),
            measured_s: o.telemetry.length().as_secs_f64(),
            cores: vehicle_ceiling.cores,
            ceiling: vehicle_ceiling.reports_per_s,
            ratio_to_ceiling: ceiling::ratio(achieved_rate, vehicle_ceiling.reports_per_s),
            vehicle_ceiling,
            bus_ceiling,
            ratio_to_bus_ceiling: ceiling::ratio(achieved_rate, bus_ceiling),
            bus_limit,
            offered_rate: o.telemetry.offered_rate(),
            achieved_rate,
            matching_latency_ms: o.matching.percentiles(),
            charge_latency_ms: o.charges.percentiles(),
            reports_sent: sent,
            reports_applied: applied,
            drained_ms,
            session_events: o.session_events.clone(),
            charge_outcomes: o.charge_outcomes.clone(),
            fleet,
            money,
            rss_mb_max,
            cpu_cores_used,
            load_average: (load_start, load_end),
            valid: invalid_reasons.is_empty(),
            invalid_reasons,
            series: o.series.points(),
            command_line: config.command_line.clone(),
            started_at_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
    .await;
    remove_after_failure(&outcome, namespace.as_ref(), config.keep).await;
    outcome
}

impl Observed {
    fn on_session_event(
        &mut self,
        event: &VehicleSessionEvent,
        intended_of: &HashMap<(String, i64), Duration>,
        at: Duration,
    ) {
        let word = match event.event {
            SessionEventKind::Enter => "enter",
            SessionEventKind::Exit => "exit",
            SessionEventKind::Cross => "cross",
        };
        *self.session_events.entry(word.to_owned()).or_insert(0) += 1;
        if let Some(intended) =
            intended_of.get(&(event.vehicle_id.clone(), event.batch_first_sequence))
        {
            self.matching.on_answered(*intended, at, 1);
            self.series.on_answered(at, at.saturating_sub(*intended), 0);
        }
        // Tolls and parking are charged when the session ends; charging and fuel wait for the
        // station, which reports after the load.
        let charged_at_end = matches!(event.service_kind, ServiceKind::Toll | ServiceKind::Parking);
        if event.event != SessionEventKind::Enter && charged_at_end {
            self.awaiting_outcome.insert(event.payment_id, at);
        }
    }

    fn on_outcome(&mut self, outcome: &PaymentOutcome, at: Duration) {
        if let Some(ended) = self.awaiting_outcome.remove(&outcome.payment_id) {
            self.charges.on_answered(ended, at, 1);
            let what = outcome
                .reason_code
                .clone()
                .unwrap_or_else(|| format!("{:?}", outcome.status).to_uppercase());
            *self.charge_outcomes.entry(what).or_insert(0) += 1;
        }
    }
}

/// Consumes `consumer`'s messages of type `M` until `shutdown`, handing each to `on_message`
/// with the moment it was fetched (a message that does not decode as `M` is skipped).
fn spawn_observer<M: Message + 'static>(
    mut consumer: Box<dyn Consumer>,
    shutdown: CancellationToken,
    now: impl Fn() -> Duration + Send + 'static,
    mut on_message: impl FnMut(M, Duration) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break,
                batch = consumer.fetch(OBSERVER_FETCH_MAX, OBSERVER_FETCH_WAIT) => batch,
            };
            let Ok(batch) = batch else { continue };
            let at = now();
            for delivery in batch {
                if let Ok(message) = dcpipe_schemas::decode::<M>(&delivery.record.payload) {
                    on_message(message, at);
                }
                let _ = delivery.ack().await;
            }
        }
    })
}

fn observer_config(subject: String, run_id: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(subject, format!("loadtest-{run_id}-vehicle-observer"));
    config.start = StartAt::Earliest;
    config.max_in_flight = OBSERVER_FETCH_MAX * 2;
    config
}

/// The network's time (its institutions' clock: the system's, or one pinned to a moment):
/// the trips are laid out, and their stations report, in the time the stages judge by.
fn network_now_ms(network: &Network) -> i64 {
    network
        .institutions
        .values()
        .next()
        .map_or_else(system_now_ms, |institution| institution.clock.now_ms())
}

/// Reports applied so far: the sum of every vehicle's next sequence in the session stores.
async fn reports_applied(
    network: &Network,
    vehicle_ids: &BTreeMap<String, Vec<String>>,
) -> Result<u64, dcpipe_connectors::ledger::LedgerError> {
    let mut applied = 0u64;
    for (institution, ids) in vehicle_ids {
        let Some(vehicles) = network.vehicles.get(institution) else {
            continue;
        };
        for record in vehicles.store.vehicles(ids).await?.into_iter().flatten() {
            applied += u64::try_from(record.next_sequence).unwrap_or(0);
        }
    }
    Ok(applied)
}

/// Publishes every batch at its intended time (late ones at once, never skipped) and returns
/// the reports sent.
async fn send(
    bus: &Arc<dyn Bus>,
    scheduled: &[Scheduled],
    observed: &Mutex<Observed>,
    now: &impl Fn() -> Duration,
) -> Result<u64, LoadTestError> {
    let mut sent = 0u64;
    let mut index = 0;
    while index < scheduled.len() {
        let elapsed = now();
        let due = scheduled[index..].partition_point(|s| s.intended <= elapsed) + index;
        if due == index {
            let wait = scheduled[index].intended.saturating_sub(elapsed);
            tokio::time::sleep(wait).await;
            continue;
        }
        let end = due.min(index + PUBLISH_BATCH_MAX);
        let round = &scheduled[index..end];
        if let Ok(mut o) = observed.lock() {
            for s in round {
                let reports = s.batch.reports as u64;
                o.telemetry.on_submitted(s.intended, reports);
                o.series.on_submitted(s.intended, reports);
            }
        }
        bus.publish_many(round.iter().map(|s| s.batch.outgoing()).collect())
            .await
            .map_err(|e| LoadTestError::bus("publishing telemetry", e))?;
        sent += round.iter().map(|s| s.batch.reports as u64).sum::<u64>();
        index = end;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(vehicle: &str, first_sequence: i64, reports: usize) -> SignedBatch {
        SignedBatch {
            subject: "vehicle.telemetry.oi01".to_owned(),
            vehicle_id: vehicle.to_owned(),
            frame: Bytes::new(),
            reports,
            first_sequence,
        }
    }

    #[test]
    fn batches_are_offered_round_by_round_when_their_last_report_is_due() {
        // Two vehicles, batches of 10 reports, 20 reports/s in all: a batch every half second,
        // each vehicle's every second.
        let signed = vec![
            vec![batch("A", 0, 10), batch("A", 10, 10)],
            vec![batch("B", 0, 10), batch("B", 10, 10), batch("B", 20, 5)],
        ];
        let scheduled = schedule(signed, 20).expect("a rate");
        let order: Vec<(&str, i64, u128)> = scheduled
            .iter()
            .map(|s| {
                (
                    s.batch.vehicle_id.as_str(),
                    s.batch.first_sequence,
                    s.intended.as_millis(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("A", 0, 450),
                ("B", 0, 950),
                ("A", 10, 1_450),
                ("B", 10, 1_950),
                ("B", 20, 2_200),
            ]
        );
    }
}
