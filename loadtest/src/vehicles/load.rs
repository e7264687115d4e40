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
use crate::config::{LoadConfig, Mode, RampConfig};
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::{Measurement, Percentiles, Series, SeriesPoint, per_second_f64};
use crate::ramp::{StepResult, highest_sustainable, judge};
use crate::report::{MoneyCheck, RampReport};
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
    /// `open` or `ramp`.
    pub mode: String,
    /// With `--mode ramp`: each step of reports per second, the highest sustainable one and
    /// the step at a share of it (the figures above are that step's, or else the last one's).
    pub ramp: Option<RampReport>,
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
        if let Some(ramp) = &self.ramp {
            for (step, what) in ramp
                .steps
                .iter()
                .map(|s| (s, ""))
                .chain(ramp.confirm.iter().map(|s| (s, " (confirm)")))
            {
                let _ = writeln!(
                    out,
                    "step {:>6}/s{what}: offered {:.0} applied {:.0}  p99 {:.1} ms  backlog {} of {}  {}",
                    step.rate,
                    step.offered_rate,
                    step.achieved_rate,
                    step.latency_ms.p99,
                    step.backlog_at_end,
                    step.submitted,
                    if step.sustainable {
                        "sustainable".to_owned()
                    } else {
                        format!("not sustainable: {}", step.reasons.join("; "))
                    }
                );
            }
            let _ = writeln!(
                out,
                "highest sustainable: {}",
                ramp.highest_sustainable_rate
                    .map_or_else(|| "none".to_owned(), |r| format!("{r} reports/s"))
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

/// The batches of every vehicle in the order they are offered: round after round, vehicle
/// after vehicle (each vehicle's in order).
fn offer_order(signed: Vec<Vec<SignedBatch>>) -> Vec<SignedBatch> {
    let rounds = signed.iter().map(Vec::len).max().unwrap_or(0);
    let mut queues: Vec<std::vec::IntoIter<SignedBatch>> =
        signed.into_iter().map(Vec::into_iter).collect();
    let mut order = Vec::new();
    for _ in 0..rounds {
        for queue in &mut queues {
            order.extend(queue.next());
        }
    }
    order
}

/// `batches` offered from `start` on at `report_rate` reports per second: each due when the
/// last of its reports is due.
fn schedule_from(
    batches: impl IntoIterator<Item = SignedBatch>,
    report_rate: u32,
    start: Duration,
) -> Result<Vec<Scheduled>, LoadTestError> {
    let schedule =
        OpenSchedule::new(report_rate).ok_or_else(|| LoadTestError::config("report rate 0"))?;
    let mut reports = 0u64;
    Ok(batches
        .into_iter()
        .map(|batch| {
            reports += batch.reports as u64;
            Scheduled {
                intended: start + schedule.intended_offset(reports.saturating_sub(1)),
                batch,
            }
        })
        .collect())
}

/// The batches of every vehicle in the order they are offered, each due when the last of its
/// reports is due at `report_rate` reports per second.
fn schedule(
    signed: Vec<Vec<SignedBatch>>,
    report_rate: u32,
) -> Result<Vec<Scheduled>, LoadTestError> {
    schedule_from(offer_order(signed), report_rate, Duration::ZERO)
}

/// Reports a ramp of `ramp` may offer at most: every step at its rate for its length, then
/// the confirming step at its share of the last.
fn ramp_reports(ramp: &RampConfig) -> u64 {
    let seconds = ramp.step_duration.as_secs_f64();
    let rates = ramp.rates();
    let steps: f64 = rates.iter().map(|r| f64::from(*r) * seconds).sum();
    let confirm = rates.last().map_or(0.0, |r| {
        f64::from(*r) * ramp.confirm_share.clamp(0.0, 1.0) * seconds
    });
    (steps + confirm).ceil() as u64
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
        let ramp_mode = config.mode == Mode::Ramp;
        // Each vehicle's share of what the load may offer (a ramp: its every step), a batch
        // more for the rounding.
        let fixes_max = if ramp_mode {
            usize::try_from(ramp_reports(&config.ramp).div_ceil(config.vehicles as u64))
                .unwrap_or(usize::MAX)
                .saturating_add(config.telemetry_batch)
        } else {
            usize::try_from(length.as_nanos().div_ceil(interval.as_nanos().max(1)))
                .unwrap_or(usize::MAX)
        };
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
        // A ramp schedules each step's batches when the step starts.
        let report_rate = (config.report_rate().round() as u32).max(1);
        let (scheduled, ramp_order) = if ramp_mode {
            (Vec::new(), offer_order(signed))
        } else {
            (schedule(signed, report_rate)?, Vec::new())
        };
        let intended_of: Arc<IntendedOf> = Arc::new(Mutex::new(HashMap::new()));
        remember_intended(&intended_of, &scheduled);
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
                    let intended = intended_of.lock().ok().and_then(|map| {
                        map.get(&(event.vehicle_id.clone(), event.batch_first_sequence))
                            .copied()
                    });
                    if let Ok(mut o) = observer.lock() {
                        o.on_session_event(&event, intended, at);
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
        let offering = async {
            if ramp_mode {
                let ramp = Ramp {
                    config,
                    bus: &bus,
                    network: &network,
                    vehicle_ids: &vehicle_ids,
                    observed: &observed,
                    intended_of: &intended_of,
                };
                ramp.run(ramp_order, &now)
                    .await
                    .map(|(sent, report)| (sent, Some(report)))
            } else {
                send(&bus, &scheduled, &observed, &now)
                    .await
                    .map(|sent| (sent, None))
            }
        };
        let (sent, ramp) = tokio::select! {
            offered = offering => offered?,
            () = stop.cancelled() => (0, None),
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
        // A ramp reports the step at a share of its highest sustainable rate, or else its
        // last step.
        let figures = ramp
            .as_ref()
            .and_then(|r| r.confirm.as_ref().or(r.steps.last()))
            .map(|step| (step.offered_rate, step.achieved_rate, step.latency_ms));
        let (offered_rate, achieved_rate, matching_latency_ms) = figures.unwrap_or_else(|| {
            (
                o.telemetry.offered_rate(),
                o.telemetry.achieved_rate(),
                o.matching.percentiles(),
            )
        });
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
            offered_rate,
            achieved_rate,
            matching_latency_ms,
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
            mode: config.mode.as_str().to_owned(),
            ramp,
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
        intended: Option<Duration>,
        at: Duration,
    ) {
        let word = match event.event {
            SessionEventKind::Enter => "enter",
            SessionEventKind::Exit => "exit",
            SessionEventKind::Cross => "cross",
        };
        *self.session_events.entry(word.to_owned()).or_insert(0) += 1;
        if let Some(intended) = intended {
            self.matching.on_answered(intended, at, 1);
            self.series.on_answered(at, at.saturating_sub(intended), 0);
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

/// Per batch (its vehicle and first sequence), when it was intended to be sent.
type IntendedOf = Mutex<HashMap<(String, i64), Duration>>;

fn remember_intended(intended_of: &IntendedOf, scheduled: &[Scheduled]) {
    if let Ok(mut map) = intended_of.lock() {
        for s in scheduled {
            map.insert(
                (s.batch.vehicle_id.clone(), s.batch.first_sequence),
                s.intended,
            );
        }
    }
}

/// A ramp of reports per second (`--mode ramp`): open-loop steps of rising rate, each judged
/// by [`judge`] like the payment ramp's (the share of the offered reports applied, p99 from
/// report to session event, reports not applied when the step's sending ended), until one is
/// not sustainable or the trips have no more reports; then a step at a share of the highest
/// sustainable rate; then, unmeasured, the reports the trips planned for steps not run.
struct Ramp<'a> {
    config: &'a LoadConfig,
    bus: &'a Arc<dyn Bus>,
    network: &'a Network,
    vehicle_ids: &'a BTreeMap<String, Vec<String>>,
    observed: &'a Mutex<Observed>,
    intended_of: &'a IntendedOf,
}

impl Ramp<'_> {
    /// Offers `order`'s batches step by step; returns the reports sent and the steps.
    async fn run(
        &self,
        order: Vec<SignedBatch>,
        now: &impl Fn() -> Duration,
    ) -> Result<(u64, RampReport), LoadTestError> {
        let mut rest = order.into_iter();
        let mut sent = 0u64;
        let mut steps = Vec::new();
        for rate in self.config.ramp.rates() {
            let Some(step) = self.step(rate, &mut rest, &mut sent, now).await? else {
                break;
            };
            let sustainable = step.sustainable;
            steps.push(step);
            if !sustainable {
                break;
            }
        }
        let highest = highest_sustainable(&steps);
        let confirm = match highest {
            Some(rate) if self.config.ramp.confirm_share > 0.0 => {
                let rate =
                    ((f64::from(rate) * self.config.ramp.confirm_share).round() as u32).max(1);
                self.step(rate, &mut rest, &mut sent, now).await?
            }
            _ => None,
        };
        // The trips' remaining reports, unmeasured, at the confirmed rate (or the last step's):
        // the fleet's checks hold the run to every trip as planned.
        let remainder: Vec<SignedBatch> = rest.collect();
        let rate = confirm.as_ref().or(steps.last()).map(|s| s.rate);
        if let (false, Some(rate)) = (remainder.is_empty(), rate) {
            let scheduled = schedule_from(remainder, rate, now())?;
            remember_intended(self.intended_of, &scheduled);
            sent += send(self.bus, &scheduled, self.observed, now).await?;
        }
        Ok((
            sent,
            RampReport {
                steps,
                highest_sustainable_rate: highest,
                confirm,
            },
        ))
    }

    /// One step at `rate` reports per second for the step's length, from the next batches of
    /// `rest`; `None` when none is left. Waits for the step's reports to be applied (at most
    /// the step's length, 5 s at least, within the drain timeout) and judges it.
    async fn step(
        &self,
        rate: u32,
        rest: &mut impl Iterator<Item = SignedBatch>,
        sent: &mut u64,
        now: &impl Fn() -> Duration,
    ) -> Result<Option<StepResult>, LoadTestError> {
        let length = self.config.ramp.step_duration;
        let wanted = (f64::from(rate) * length.as_secs_f64()).round() as u64;
        let mut batches = Vec::new();
        let mut reports = 0u64;
        while reports < wanted {
            let Some(batch) = rest.next() else { break };
            reports += batch.reports as u64;
            batches.push(batch);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        let start = now();
        // The first fifth of a step (at most a second) lets queues adjust to the new rate.
        let settle = (length / 5).min(Duration::from_secs(1));
        let scheduled = schedule_from(batches, rate, start)?;
        remember_intended(self.intended_of, &scheduled);
        if let Ok(mut o) = self.observed.lock() {
            o.telemetry = Measurement::new(start + settle, start + length);
            o.matching = Measurement::new(start + settle, start + length);
        }
        // Reports applied, read from the session stores as the step's window opens and closes.
        let window = async {
            let mut applied = [0u64; 2];
            for (i, at) in [start + settle, start + length].into_iter().enumerate() {
                tokio::time::sleep(at.saturating_sub(now())).await;
                applied[i] = reports_applied(self.network, self.vehicle_ids)
                    .await
                    .map_err(crate::run::ledger_error)?;
            }
            Ok::<_, LoadTestError>(applied)
        };
        let (submitted, window) =
            tokio::join!(send(self.bus, &scheduled, self.observed, now), window);
        let (submitted, [applied_from, applied_until]) = (submitted?, window?);
        *sent += submitted;
        let applied = reports_applied(self.network, self.vehicle_ids)
            .await
            .map_err(crate::run::ledger_error)?;
        let backlog_at_end = sent.saturating_sub(applied);
        let drain = length
            .max(Duration::from_secs(5))
            .min(self.config.drain_timeout);
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline {
            let applied = reports_applied(self.network, self.vehicle_ids)
                .await
                .map_err(crate::run::ledger_error)?;
            if applied >= *sent {
                break;
            }
            tokio::time::sleep(APPLIED_POLL_INTERVAL / 5).await;
        }
        let (offered_rate, latency) = self
            .observed
            .lock()
            .map(|o| (o.telemetry.offered_rate(), o.matching.percentiles()))
            .map_err(|_| LoadTestError::config("an observer panicked"))?;
        let achieved_rate = per_second_f64(
            applied_until.saturating_sub(applied_from) as f64,
            length.saturating_sub(settle),
        );
        let (sustainable, reasons) = judge(
            &self.config.ramp.criterion,
            offered_rate,
            achieved_rate,
            &latency,
            submitted,
            backlog_at_end,
        );
        Ok(Some(StepResult {
            rate,
            offered_rate,
            achieved_rate,
            latency_ms: latency,
            submitted,
            backlog_at_end,
            sustainable,
            reasons,
        }))
    }
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
