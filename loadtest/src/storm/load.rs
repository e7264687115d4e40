//! The reconnection storm (`dcpipe loadtest --offline-wallets N`): N offline wallets come back
//! after an outage within `N / rate` seconds, each publishing its key set with the 0 to 20
//! offline payments it made; the run measures what the wallet stages did with them and holds
//! the run to the flow's invariants.
//!
//! 1. Provision the network, open the storm's wallets at their institutions chunk after chunk
//!    (account, offline record, funded purse: [`Storm::open`]).
//! 2. Measure the ceiling: the wallet stages' signature work on a sample of the same mix
//!    ([`StormWork`]), and what making a wallet costs this process.
//! 3. Make the storm's wallets (certificates, payments, key sets signed at the satellite moment
//!    each wallet is to reconnect) on all cores before the storm, chunk after chunk to a file
//!    ([`super::spill`]), so that the storm measures the platform alone and memory stays
//!    bounded whatever N; then offer the key sets open-loop from the planned start, wallet `i`
//!    due at `i / rate`, read back a bounded step ahead of the sender.
//! 4. Observe answers on `wallet.result.<oi>` (reconnection → sync result latency) and
//!    outcomes on `txn.result.<oi>` (offline payments cleared).
//! 5. Drain, then check: each key set answered once and accepted, each offline payment
//!    completed, each purse what its wallet holds (no payment cleared twice), no loss booked,
//!    money conserved with the purses.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, Consumer, ConsumerConfig, Outgoing, StartAt};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::network::{MoneyReport, Network};
use dcpipe_pipeline::subjects;
use dcpipe_schemas::{
    Message, OutcomeStatus, PaymentId, PaymentOutcome, SyncStatus, WalletSyncResult,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::ceiling::{StormCeiling, StormWork};
use super::generate::{Chunk, PURSE_FEN, Storm};
use super::spill::{ChunkReader, ChunkWriter};
use crate::ceiling;
use crate::config::LoadConfig;
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::{Measurement, Percentiles, Series, SeriesPoint, per_second_f64};
use crate::report::MoneyCheck;
use crate::rss::{RssSampler, load_average, process_cpu_seconds};
use crate::run::{
    create_subjects, join_all, ledger_error, open_bus, progress_bar, provision,
    remove_after_failure, remove_namespace, spawn_stages,
};
use crate::schedule::OpenSchedule;

/// Chunks read back from disk ahead of the sender, at most.
pub const CHUNKS_AHEAD: usize = 2;
/// The planned start leaves this multiple of the time making the wallets should take…
const PREPARE_MARGIN: f64 = 1.3;
/// … and this much more, ms.
const PREPARE_SLACK_MS: i64 = 3_000;
/// How late after the planned start the storm may still begin, ms: well inside the platform's
/// tolerance for a satellite moment (`SATELLITE_SKEW_MS_MAX_DEFAULT`, 2 minutes).
const PREPARE_LATE_MS_MAX: i64 = 20_000;
/// Most key sets published in one round.
const PUBLISH_BATCH_MAX: usize = 256;
/// Deliveries the observers fetch at once.
const OBSERVER_FETCH_MAX: usize = 512;
/// Longest the observers wait for a fetch.
const OBSERVER_FETCH_WAIT: Duration = Duration::from_millis(20);
/// Failures listed in a report, at most (the count says how many there were).
const FAILURES_LISTED_MAX: usize = 20;
/// Seed of the ceiling's sample, apart from the storm's.
const CEILING_SEED_OFFSET: u64 = 0x5708;

/// What a reconnection storm reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StormReport {
    /// The bus URL (no credentials).
    pub bus: String,
    /// `sqlite` or `postgres`.
    pub ledger: String,
    /// Institutions.
    pub institutions: usize,
    /// Seed of the wallets and their payments.
    pub seed: u64,
    /// Offline wallets reconnecting.
    pub offline_wallets: usize,
    /// Key sets offered per second.
    pub rate: u32,
    /// The storm's length (`offline_wallets / rate`), seconds.
    pub duration_s: f64,
    /// Trimmed at the start, seconds.
    pub warmup_s: f64,
    /// Trimmed at the end, seconds.
    pub cooldown_s: f64,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Cores the run used.
    pub cores: usize,
    /// The crypto ceiling of the storm's mix.
    pub ceiling: StormCeiling,
    /// Key sets per second offered in the measured window.
    pub offered_rate: f64,
    /// Key sets per second answered in the window.
    pub key_sets_per_s: f64,
    /// Offline payments per second completed in the window.
    pub payments_cleared_per_s: f64,
    /// Key sets answered per second over the crypto ceiling.
    pub ratio_to_ceiling: f64,
    /// Seconds spent making the storm's wallets and key sets before it (not in its window).
    pub prepared_s: f64,
    /// Reconnection (the key set's intended send time) to its sync result observed, ms.
    pub reconnect_latency_ms: Percentiles,
    /// Reconnection to the offline payment's outcome observed, ms.
    pub clearing_latency_ms: Percentiles,
    /// Key sets published.
    pub key_sets_sent: u64,
    /// Key sets answered (first answers).
    pub key_sets_answered: u64,
    /// Answers beyond the first for one key set.
    pub key_sets_answered_again: u64,
    /// Answers by status or reason code.
    pub answers: BTreeMap<String, u64>,
    /// Offline payments made in the key sets sent.
    pub payments_made: u64,
    /// Of which between two institutions.
    pub payments_interbank: u64,
    /// Of which the payee's wallet took too (uploaded by both sides).
    pub payments_received: u64,
    /// Offline payments completed.
    pub payments_completed: u64,
    /// Offline payments refused, by reason code.
    pub payments_refused: BTreeMap<String, u64>,
    /// Wallets whose purse on the platform is what the wallet holds.
    pub purses_reconciled: u64,
    /// From the end of the storm until every answer and outcome was in, ms (`None`: not in
    /// time).
    pub drained_ms: Option<u64>,
    /// The money check (the storm's openings included).
    pub money: MoneyCheck,
    /// Money in the offline purse accounts at the end, fen.
    pub purses_fen: i64,
    /// The loss accounts at the end, fen (0: no double spending).
    pub loss_fen: i64,
    /// Largest resident memory while the storm ran, MiB.
    pub rss_mb_max: f64,
    /// CPU this process used while the storm ran, in cores.
    pub cpu_cores_used: f64,
    /// The machine's one-minute load average when the storm started and when it ended.
    pub load_average: (f64, f64),
    /// Every check passed.
    pub valid: bool,
    /// Why not, when not valid.
    pub invalid_reasons: Vec<String>,
    /// Key sets offered and answered, and reconnection latency, per second.
    pub series: Vec<SeriesPoint>,
    /// The command that produced this report.
    pub command_line: String,
    /// When the storm started, ms since the epoch.
    pub started_at_ms: i64,
    /// dcpipe's version.
    pub version: String,
}

impl StormReport {
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
            "offline wallets {} reconnecting at {} key sets/s ({:.1} s) · bus {} · ledger {} · {} institutions · {} cores",
            self.offline_wallets,
            self.rate,
            self.duration_s,
            self.bus,
            self.ledger,
            self.institutions,
            self.cores
        );
        let _ = writeln!(out, "{:<28}{:>12}{:>14}", "", "key sets/s", "payments/s");
        let _ = writeln!(out, "{:<28}{:>12.0}", "offered", self.offered_rate);
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}{:>14.0}",
            "answered / cleared", self.key_sets_per_s, self.payments_cleared_per_s
        );
        let c = &self.ceiling;
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}{:>14.0}   ratio {:.2}  ({:.0}/core × {}, {:.1} payments per key set)",
            "crypto ceiling",
            c.key_sets_per_s,
            c.payments_per_s,
            self.ratio_to_ceiling,
            c.per_core,
            c.cores,
            c.payments_per_key_set
        );
        let _ = writeln!(
            out,
            "wallets and key sets made before the storm in {:.1} s ({:.0}/s per core), kept on disk",
            self.prepared_s, c.producer_per_core
        );
        for (what, l) in [
            ("reconnection → sync result", &self.reconnect_latency_ms),
            ("reconnection → cleared", &self.clearing_latency_ms),
        ] {
            let _ = writeln!(
                out,
                "{what:<28}ms p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            );
        }
        let _ = writeln!(
            out,
            "key sets sent {}  answered {} (again {})  · payments made {} ({} interbank, {} uploaded by both)  completed {}  · drained {}",
            self.key_sets_sent,
            self.key_sets_answered,
            self.key_sets_answered_again,
            self.payments_made,
            self.payments_interbank,
            self.payments_received,
            self.payments_completed,
            self.drained_ms
                .map_or_else(|| "not".to_owned(), |ms| format!("in {ms} ms"))
        );
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "answers: {} · purses reconciled {}/{} · loss {} fen · purses {} fen",
            answers.join(", "),
            self.purses_reconciled,
            self.offline_wallets,
            self.loss_fen,
            self.purses_fen
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
    key_sets: Measurement,
    clearing: Measurement,
    series: Series,
    /// Answers per wallet (at most 255 counted).
    answers_per_wallet: Vec<u8>,
    answers: BTreeMap<String, u64>,
    answered: u64,
    answered_again: u64,
    /// Payments sent and not yet completed or refused: when their key set was due.
    awaited: HashMap<PaymentId, Duration>,
    completed: u64,
    refused: BTreeMap<String, u64>,
    failures: Vec<String>,
    failure_count: usize,
}

impl Observed {
    fn fail(&mut self, failure: String) {
        self.failure_count += 1;
        if self.failures.len() < FAILURES_LISTED_MAX {
            self.failures.push(failure);
        }
    }

    fn on_answer(
        &mut self,
        result: &WalletSyncResult,
        storm: &Storm,
        schedule: OpenSchedule,
        at: Duration,
    ) {
        let what = result
            .reason_code
            .clone()
            .unwrap_or_else(|| format!("{:?}", result.status).to_uppercase());
        *self.answers.entry(what).or_insert(0) += 1;
        let Some(index) = storm.index_of(&result.wallet_id) else {
            self.fail(format!(
                "an answer to an unknown wallet {}",
                result.wallet_id
            ));
            return;
        };
        let count = self.answers_per_wallet[index].saturating_add(1);
        self.answers_per_wallet[index] = count;
        if count > 1 {
            self.answered_again += 1;
            self.fail(format!("{}: answered {count} times", result.wallet_id));
            return;
        }
        self.answered += 1;
        let intended = schedule.intended_offset(index as u64);
        self.key_sets.on_answered(intended, at, 1);
        self.series.on_answered(at, at.saturating_sub(intended), 1);
        if result.status != SyncStatus::Accepted {
            self.fail(format!(
                "{}: key set {:?} {:?}",
                result.wallet_id, result.status, result.reason_code
            ));
        }
    }

    fn on_outcome(&mut self, outcome: &PaymentOutcome, at: Duration) {
        let Some(intended) = self.awaited.remove(&outcome.payment_id) else {
            return;
        };
        if outcome.status == OutcomeStatus::Completed {
            self.completed += 1;
            self.clearing.on_answered(intended, at, 1);
        } else {
            let what = outcome
                .reason_code
                .clone()
                .unwrap_or_else(|| format!("{:?}", outcome.status).to_uppercase());
            *self.refused.entry(what.clone()).or_insert(0) += 1;
            self.fail(format!(
                "offline payment {} refused: {what}",
                outcome.payment_id
            ));
        }
    }
}

/// Runs a reconnection storm of `config.offline_wallets` wallets at `config.rate` key sets per
/// second; `stop` (Ctrl-C) ends it early, the report then marked interrupted.
pub async fn run_storm(
    config: &LoadConfig,
    stop: &CancellationToken,
) -> Result<StormReport, LoadTestError> {
    config.check()?;
    if config.offline_wallets == 0 {
        return Err(LoadTestError::config(
            "a reconnection storm needs offline wallets",
        ));
    }
    let schedule = OpenSchedule::new(config.rate)
        .ok_or_else(|| LoadTestError::config("a storm needs a rate"))?;
    let rss = RssSampler::start();
    let bar = progress_bar(config);
    let run_id = format!("{:08x}", rand::random::<u32>());

    bar.set_message("provisioning the network");
    let (network, _ledger_dir) = provision(config, false).await?;
    let (bus, namespace) = open_bus(config, &run_id).await?;
    let outcome: Result<StormReport, LoadTestError> = async {
        create_subjects(config, &network, bus.as_ref()).await?;
        let storm = Storm::new(&network, config.seed, config.offline_wallets, system_now_ms());
        bar.set_message("opening the offline wallets");
        bar.set_length(storm.chunks() as u64);
        storm.open(&network, |chunk| bar.set_position(chunk as u64 + 1)).await?;
        let mut issued_fen = 0;
        for institution in network.institutions.values() {
            issued_fen += institution
                .ledger
                .issued_total_fen()
                .await
                .map_err(ledger_error)?;
        }

        bar.set_message("measuring the crypto ceiling");
        let work = StormWork::prepare(&network, config.seed ^ CEILING_SEED_OFFSET, system_now_ms())?;
        let (cores, ceiling_duration) = (config.cores, config.ceiling_duration);
        let storm_ceiling = tokio::task::spawn_blocking(move || work.measure(cores, ceiling_duration))
            .await
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Crypto, e.to_string()))??;

        let shutdown = CancellationToken::new();
        let _stop_on_return = shutdown.clone().drop_guard();
        let stage_handles = spawn_stages(config, &network, &bus, &shutdown)?;
        let length = config.storm_length();
        let (window_start, window_end) = config.storm_window();
        let observed = Arc::new(Mutex::new(Observed {
            key_sets: Measurement::new(window_start, window_end),
            clearing: Measurement::new(window_start, window_end),
            series: Series::default(),
            answers_per_wallet: vec![0; storm.wallets()],
            answers: BTreeMap::new(),
            answered: 0,
            answered_again: 0,
            awaited: HashMap::new(),
            completed: 0,
            refused: BTreeMap::new(),
            failures: Vec::new(),
            failure_count: 0,
        }));
        let started = Arc::new(Mutex::new(Instant::now()));
        let now = {
            let started = Arc::clone(&started);
            move || started.lock().map_or(Duration::ZERO, |s| s.elapsed())
        };
        let mut observers = Vec::new();
        for institution in network.institutions.keys() {
            let answers = bus
                .consumer(observer_config(subjects::wallet_result(institution), &run_id))
                .await
                .map_err(observer_error)?;
            let (o, storm) = (Arc::clone(&observed), storm.clone());
            observers.push(spawn_observer(
                answers,
                shutdown.clone(),
                now.clone(),
                move |result: WalletSyncResult, at| {
                    if let Ok(mut o) = o.lock() {
                        o.on_answer(&result, &storm, schedule, at);
                    }
                },
            ));
            let outcomes = bus
                .consumer(observer_config(subjects::txn_result(institution), &run_id))
                .await
                .map_err(observer_error)?;
            let o = Arc::clone(&observed);
            observers.push(spawn_observer(
                outcomes,
                shutdown.clone(),
                now.clone(),
                move |outcome: PaymentOutcome, at| {
                    if let Ok(mut o) = o.lock() {
                        o.on_outcome(&outcome, at);
                    }
                },
            ));
        }

        // The key sets, made before the storm on the run's cores and kept on disk, each signed
        // at the moment its wallet is to reconnect; then read back a bounded step ahead of the
        // sender.
        bar.set_message("making the storm's wallets");
        bar.set_length(storm.chunks() as u64);
        bar.set_position(0);
        let estimate = storm.wallets() as f64
            / (storm_ceiling.producer_per_core * cores.max(1) as f64).max(1.0);
        let start_at_ms = system_now_ms()
            + (estimate * PREPARE_MARGIN * 1_000.0) as i64
            + PREPARE_SLACK_MS;
        let prepare_started = Instant::now();
        let reader = {
            let (network, storm, bar) = (Arc::clone(&network), storm.clone(), bar.clone());
            tokio::task::spawn_blocking(move || {
                prepare(&network, &storm, cores, |i| {
                    start_at_ms + schedule.intended_offset(i as u64).as_millis() as i64
                }, |made| bar.set_position(made as u64))
            })
            .await
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))??
        };
        let prepared_s = prepare_started.elapsed().as_secs_f64();
        let late_ms = system_now_ms() - start_at_ms;
        if late_ms > PREPARE_LATE_MS_MAX {
            return Err(LoadTestError::new(
                LoadTestErrorKind::Generate,
                format!(
                    "making the storm's wallets took {prepared_s:.1} s, {late_ms} ms past the start planned from the {estimate:.1} s measured: their satellite moments would be stale"
                ),
            ));
        }
        bar.set_message("waiting for the planned start");
        tokio::time::sleep(Duration::from_millis(u64::try_from(-late_ms).unwrap_or(0))).await;
        let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel::<Result<Chunk, LoadTestError>>(CHUNKS_AHEAD);
        let generator = {
            let shutdown = shutdown.clone();
            let mut reader = reader;
            tokio::task::spawn_blocking(move || {
                while !shutdown.is_cancelled() {
                    let read = match reader.next_chunk() {
                        Ok(Some(chunk)) => Ok(chunk),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                    let failed = read.is_err();
                    if chunks_tx.blocking_send(read).is_err() || failed {
                        break;
                    }
                }
            })
        };

        // The storm.
        rss.reset();
        let cpu_start = process_cpu_seconds();
        let load_start = load_average().unwrap_or(0.0);
        let started_at_ms = system_now_ms();
        if let Ok(mut s) = started.lock() {
            *s = Instant::now();
        }
        bar.set_length(length.as_secs().max(1));
        bar.set_position(0);
        bar.set_message("reconnecting");
        let mut purses_after = vec![PURSE_FEN; storm.wallets()];
        let mut totals = Totals::default();
        let sending = async {
            while let Some(chunk) = chunks_rx.recv().await {
                let chunk = chunk?;
                send_chunk(&bus, chunk, schedule, &observed, &now, &mut purses_after, &mut totals).await?;
                bar.set_position(now().as_secs());
            }
            Ok::<(), LoadTestError>(())
        };
        tokio::select! {
            sent = sending => sent?,
            () = stop.cancelled() => {}
        }
        drop(chunks_rx);
        let _ = generator.await;
        let interrupted = stop.is_cancelled();
        let load_length = now();
        let cpu_cores_used = match (cpu_start, process_cpu_seconds()) {
            (Some(start), Some(end)) => per_second_f64(end - start, load_length),
            _ => 0.0,
        };
        let load_end = load_average().unwrap_or(0.0);

        // Drain: every key set answered, every payment's outcome in.
        bar.set_message("waiting for the last answers and outcomes");
        let drain_started = Instant::now();
        let drain_deadline = drain_started
            + if interrupted {
                crate::run::INTERRUPTED_DRAIN_MAX
            } else {
                config.drain_timeout
            };
        let mut drained_ms = None;
        while Instant::now() < drain_deadline {
            let done = observed
                .lock()
                .map(|o| o.answered + o.answered_again >= totals.key_sets && o.awaited.is_empty())
                .unwrap_or(false);
            if done {
                drained_ms =
                    Some(u64::try_from(drain_started.elapsed().as_millis()).unwrap_or(u64::MAX));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Purses: what each platform records is what its wallet holds.
        bar.set_message("reconciling the purses");
        let mut purses_reconciled = 0u64;
        let mut purse_failures = Vec::new();
        let sent_wallets = usize::try_from(totals.key_sets).unwrap_or(usize::MAX);
        for (index, expected) in purses_after.iter().enumerate().take(sent_wallets) {
            let wallet_id = storm.wallet_id(index);
            let record = network.institutions[storm.institution(index)]
                .ledger
                .offline()
                .offline_wallet(&wallet_id)
                .await
                .map_err(ledger_error)?;
            match record {
                Some(r) if r.purse_fen == *expected => purses_reconciled += 1,
                other => purse_failures.push(format!(
                    "{wallet_id}: purse {} on the platform, {expected} in the wallet",
                    other.map_or(-1, |r| r.purse_fen)
                )),
            }
        }

        bar.set_message("waiting for money to settle");
        let money = settled(&network, issued_fen, config.drain_timeout).await?;
        let rss_mb_max = rss.max_mib();
        shutdown.cancel();
        join_all(stage_handles).await;
        join_all(observers).await;
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
                "interrupted after {:.1} s of the storm: a partial run",
                load_length.as_secs_f64()
            ));
        }
        if drained_ms.is_none() {
            invalid_reasons.push(format!(
                "{} of {} key sets unanswered, {} of {} offline payments without an outcome {:?} after the storm",
                totals.key_sets.saturating_sub(o.answered),
                totals.key_sets,
                o.awaited.len(),
                totals.payments,
                config.drain_timeout
            ));
        }
        invalid_reasons.extend(o.failures.iter().cloned());
        if o.failure_count > o.failures.len() {
            invalid_reasons.push(format!("… {} failures in all", o.failure_count));
        }
        if !purse_failures.is_empty() {
            invalid_reasons.push(format!("{} purses not reconciled", purse_failures.len()));
            invalid_reasons.extend(purse_failures.into_iter().take(FAILURES_LISTED_MAX));
        }
        let money_check = MoneyCheck::of(&money);
        invalid_reasons.extend(money_check.failure());
        if money.loss_fen != 0 {
            invalid_reasons.push(format!(
                "{} fen booked to the loss accounts: a payment taken as double spending",
                money.loss_fen
            ));
        }
        let key_sets_per_s = o.key_sets.achieved_rate();
        Ok(StormReport {
            bus: config.bus.to_string(),
            ledger: config.ledger.kind().to_owned(),
            institutions: network.institutions.len(),
            seed: config.seed,
            offline_wallets: config.offline_wallets,
            rate: config.rate,
            duration_s: length.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            cooldown_s: config.cooldown.as_secs_f64(),
            measured_s: o.key_sets.length().as_secs_f64(),
            cores: storm_ceiling.cores,
            ratio_to_ceiling: ceiling::ratio(key_sets_per_s, storm_ceiling.key_sets_per_s),
            prepared_s,
            ceiling: storm_ceiling,
            offered_rate: o.key_sets.offered_rate(),
            key_sets_per_s,
            payments_cleared_per_s: o.clearing.achieved_rate(),
            reconnect_latency_ms: o.key_sets.percentiles(),
            clearing_latency_ms: o.clearing.percentiles(),
            key_sets_sent: totals.key_sets,
            key_sets_answered: o.answered,
            key_sets_answered_again: o.answered_again,
            answers: o.answers.clone(),
            payments_made: totals.payments,
            payments_interbank: totals.interbank,
            payments_received: totals.received,
            payments_completed: o.completed,
            payments_refused: o.refused.clone(),
            purses_reconciled,
            drained_ms,
            money: money_check,
            purses_fen: money.purses_fen,
            loss_fen: money.loss_fen,
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

/// What the sender sent.
#[derive(Debug, Default)]
struct Totals {
    key_sets: u64,
    payments: u64,
    interbank: u64,
    received: u64,
}

/// Publishes a chunk's key sets at their intended times (late ones at once, never skipped),
/// their payments awaited from then on.
async fn send_chunk(
    bus: &Arc<dyn Bus>,
    chunk: Chunk,
    schedule: OpenSchedule,
    observed: &Mutex<Observed>,
    now: &impl Fn() -> Duration,
    purses_after: &mut [i64],
    totals: &mut Totals,
) -> Result<(), LoadTestError> {
    totals.interbank += chunk.interbank as u64;
    totals.received += chunk.received as u64;
    let reconnections = chunk.reconnections;
    let mut next = 0;
    while next < reconnections.len() {
        let elapsed = now();
        let due = reconnections[next..]
            .partition_point(|r| schedule.intended_offset(r.index as u64) <= elapsed)
            + next;
        if due == next {
            let wait = schedule
                .intended_offset(reconnections[next].index as u64)
                .saturating_sub(elapsed);
            tokio::time::sleep(wait).await;
            continue;
        }
        let end = due.min(next + PUBLISH_BATCH_MAX);
        let round = &reconnections[next..end];
        if let Ok(mut o) = observed.lock() {
            for r in round {
                let intended = schedule.intended_offset(r.index as u64);
                o.key_sets.on_submitted(intended, 1);
                o.series.on_submitted(intended, 1);
                for payment in &r.payments {
                    o.awaited.insert(*payment, intended);
                }
            }
        }
        for r in round {
            purses_after[r.index] = r.purse_after_fen;
            totals.payments += r.payments.len() as u64;
        }
        totals.key_sets += round.len() as u64;
        bus.publish_many(
            round
                .iter()
                .map(|r| {
                    Outgoing::new(r.subject.clone(), r.frame.clone())
                        .with_key(r.wallet_id.as_bytes().to_vec())
                })
                .collect(),
        )
        .await
        .map_err(|e| LoadTestError::bus("publishing key sets", e))?;
        next = end;
    }
    Ok(())
}

/// Waits until money is conserved, the storm's openings included, with nothing in flight, or
/// `timeout` passes (the last reading is returned).
async fn settled(
    network: &Network,
    issued_fen: i64,
    timeout: Duration,
) -> Result<MoneyReport, LoadTestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut money = network.money().await.map_err(ledger_error)?;
        money.opening_fen = issued_fen;
        if money.is_settled_and_conserved() || Instant::now() >= deadline {
            return Ok(money);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn observer_error(e: dcpipe_connectors::bus::BusError) -> LoadTestError {
    LoadTestError::bus("observing answers", e)
}

fn observer_config(subject: String, run_id: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(subject, format!("loadtest-{run_id}-storm-observer"));
    config.start = StartAt::Earliest;
    config.max_in_flight = OBSERVER_FETCH_MAX * 2;
    config
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

/// Makes every chunk of `storm` on `threads` threads, wallet `i`'s key set signed at
/// `reconnects_at_ms(i)`, and writes them in order to a file; `on_chunk` is told how many are
/// written. Returns the file's reader.
///
/// Thread `t` makes chunks `t`, `t + threads`, … and hands each over a channel of one place,
/// taken in turn: at most two chunks per thread are in memory, whatever N.
fn prepare(
    network: &Network,
    storm: &Storm,
    threads: usize,
    reconnects_at_ms: impl Fn(usize) -> i64 + Sync,
    on_chunk: impl Fn(usize),
) -> Result<ChunkReader, LoadTestError> {
    let threads = threads.clamp(1, storm.chunks().max(1));
    std::thread::scope(|scope| {
        let made: Vec<_> = (0..threads)
            .map(|t| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, LoadTestError>>(1);
                let reconnects_at_ms = &reconnects_at_ms;
                scope.spawn(move || {
                    for chunk in (t..storm.chunks()).step_by(threads) {
                        let made = storm.chunk_at(network, chunk, reconnects_at_ms);
                        let failed = made.is_err();
                        // A closed channel: the writer stopped on an error.
                        if tx.send(made).is_err() || failed {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        let mut writer = ChunkWriter::new()?;
        for chunk in 0..storm.chunks() {
            let ready = made[chunk % threads].recv().map_err(|_| {
                LoadTestError::new(
                    LoadTestErrorKind::Generate,
                    format!("chunk {chunk} of the storm was not made"),
                )
            })??;
            writer.write(&ready)?;
            on_chunk(writer.chunks());
        }
        writer.into_reader()
    })
}
