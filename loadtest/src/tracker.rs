//! Which submission got which answer, and when.
//!
//! Every submission is registered with its intended send time before it is published. The
//! tracker consumes the outcomes of every institution in a consumer group of its own, records
//! each in an [`OutcomeBook`] (the invariants every run is held to) and, when the payer
//! institution's copy of a payment's outcome is first observed, records the latency from the
//! intended send time. Repeated submissions of a payment are answered by the same outcome: they
//! are counted as answered when a later copy of it arrives, and not measured again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dcpipe_connectors::bus::{Bus, ConsumerConfig, StartAt};
use dcpipe_pipeline::invariants::{OutcomeBook, Submission, Violation};
use dcpipe_pipeline::subjects;
use dcpipe_schemas::{Digest32, OutcomeStatus, PaymentId, PaymentOutcome};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::LoadTestError;
use crate::measure::{LATENCY_US_MAX, Measurement, Percentiles, Series};

/// Outcomes fetched at once by the tracker.
pub const TRACKER_FETCH_MAX: usize = 1024;
/// Unacked outcomes the tracker holds per institution at most.
pub const TRACKER_IN_FLIGHT_MAX: usize = 4096;
/// How long one fetch of the tracker waits.
const TRACKER_FETCH_WAIT: Duration = Duration::from_millis(50);

type AnswerKey = (PaymentId, Digest32);

#[derive(Debug, Clone)]
struct Entry {
    submission: Submission,
    /// Intended send time of the first submission.
    intended: Duration,
    /// Submissions of this content.
    submissions: u32,
    /// Submissions not yet answered.
    waiting: u32,
    /// When the payer institution's copy of its outcome was first observed.
    answered_at: Option<Duration>,
}

/// What the tracker has seen so far.
#[derive(Debug)]
pub struct TrackerState {
    book: OutcomeBook,
    entries: HashMap<AnswerKey, Entry>,
    /// Submission digest → envelope-digest key: unauthenticated rejections are answered under
    /// the digest of the submitted bytes.
    by_frame: HashMap<AnswerKey, AnswerKey>,
    submitted: u64,
    answered: u64,
    measurement: Measurement,
    series: Series,
    live_latency_us: Histogram<u64>,
}

/// Counts at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// Submissions published.
    pub submitted: u64,
    /// Distinct submissions (payment id and content).
    pub distinct: u64,
    /// Submissions answered.
    pub answered: u64,
    /// Submissions by answer: `COMPLETED`, a rejection's reason code, or `UNANSWERED`.
    pub counts_by_outcome: BTreeMap<String, u64>,
    /// Broken invariants (contradictory answers, unanswered submissions, double completions).
    pub violations: Vec<Violation>,
}

impl TrackerState {
    /// An empty tracker measuring `measurement`'s window.
    pub fn new(measurement: Measurement) -> Self {
        TrackerState {
            book: OutcomeBook::default(),
            entries: HashMap::new(),
            by_frame: HashMap::new(),
            submitted: 0,
            answered: 0,
            measurement,
            series: Series::default(),
            live_latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// Registers a submission intended at `intended`.
    pub fn submit(&mut self, submission: Submission, intended: Duration) {
        self.submitted += 1;
        self.measurement.on_submitted(intended, 1);
        self.series.on_submitted(intended, 1);
        let key = (submission.payment_id, submission.envelope_digest);
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.submissions += 1;
                entry.waiting += 1;
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        submission,
                        intended,
                        submissions: 1,
                        waiting: 1,
                        answered_at: None,
                    },
                );
                self.by_frame
                    .insert((submission.payment_id, submission.submission_digest), key);
            }
        }
    }

    /// Records an outcome observed at `now`; `payer_copy` when it was consumed from the payer
    /// institution's subject. Returns how many submissions it answered. Outcomes of payments
    /// this run did not submit (an earlier run's, on a broker that keeps them) are ignored.
    pub fn observe(&mut self, outcome: &PaymentOutcome, payer_copy: bool, now: Duration) -> u32 {
        let named = (outcome.payment_id, outcome.envelope_digest);
        let key = if self.entries.contains_key(&named) {
            named
        } else if let Some(key) = self.by_frame.get(&named) {
            *key
        } else {
            return 0;
        };
        self.book.record(outcome);
        if !payer_copy {
            return 0;
        }
        let Some(entry) = self.entries.get_mut(&key) else {
            return 0;
        };
        let released = entry.waiting;
        if released == 0 {
            return 0;
        }
        entry.waiting = 0;
        self.answered += u64::from(released);
        match entry.answered_at {
            None => {
                entry.answered_at = Some(now);
                let latency = now.saturating_sub(entry.intended);
                self.measurement
                    .on_answered(entry.intended, now, u64::from(released));
                self.series.on_answered(now, latency, u64::from(released));
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(LATENCY_US_MAX)
                    .clamp(1, LATENCY_US_MAX);
                self.live_latency_us.saturating_record(us);
            }
            Some(_) => {
                self.measurement
                    .on_repeat_answered(now, u64::from(released));
                self.series.on_repeat_answered(now, u64::from(released));
            }
        }
        released
    }

    /// Submissions registered.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Submissions answered.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Submissions not answered yet.
    pub fn unanswered(&self) -> u64 {
        self.submitted - self.answered
    }

    /// p99 of every answer so far (warm-up included), ms: for the progress bar.
    pub fn live_p99_ms(&self) -> f64 {
        Percentiles::of(&self.live_latency_us).p99
    }

    /// The current measurement.
    pub fn measurement(&self) -> &Measurement {
        &self.measurement
    }

    /// Starts a new measured window (the next ramp step); returns the previous one.
    pub fn replace_measurement(&mut self, next: Measurement) -> Measurement {
        std::mem::replace(&mut self.measurement, next)
    }

    /// Records every payment still unanswered at `now` in the current measurement with its age
    /// as latency (a step judged before all its answers arrived is not flattered).
    pub fn censor_unanswered(&mut self, now: Duration) {
        for entry in self.entries.values().filter(|e| e.answered_at.is_none()) {
            self.measurement.on_unanswered(entry.intended, now);
        }
    }

    /// The per-second series.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// Counts by outcome and the broken invariants, judged on every distinct submission.
    pub fn tally(&self) -> Tally {
        let mut counts_by_outcome: BTreeMap<String, u64> = BTreeMap::new();
        let mut distinct = Vec::with_capacity(self.entries.len());
        for entry in self.entries.values() {
            distinct.push(entry.submission);
            let answered = u64::from(entry.submissions - entry.waiting);
            if answered > 0 {
                let key = match self.book.answer(&entry.submission) {
                    Some(answer) => match answer.status {
                        OutcomeStatus::Completed => "COMPLETED".to_owned(),
                        OutcomeStatus::Rejected => answer
                            .reason_code
                            .clone()
                            .unwrap_or_else(|| "REJECTED".to_owned()),
                    },
                    None => "UNRECORDED".to_owned(),
                };
                *counts_by_outcome.entry(key).or_insert(0) += answered;
            }
            if entry.waiting > 0 {
                *counts_by_outcome
                    .entry("UNANSWERED".to_owned())
                    .or_insert(0) += u64::from(entry.waiting);
            }
        }
        distinct.sort();
        Tally {
            submitted: self.submitted,
            distinct: distinct.len() as u64,
            answered: self.answered,
            counts_by_outcome,
            violations: self.book.violations(&distinct),
        }
    }
}

/// The tracker shared by the producers, its consumers and the progress display.
#[derive(Debug, Clone)]
pub struct OutcomeTracker {
    state: Arc<Mutex<TrackerState>>,
    changed: Arc<Notify>,
    base: Instant,
    /// Nanoseconds from `base` to the start of the load (moved by [`OutcomeTracker::restart_clock`]).
    load_start_ns: Arc<AtomicU64>,
    /// Closed mode: a permit per payment allowed in flight, given back when answered.
    permits: Option<Arc<Semaphore>>,
}

impl OutcomeTracker {
    /// A tracker whose clock starts at `started` (the start of the load), measuring
    /// `measurement`'s window, giving answered submissions' permits back to `permits`.
    pub fn new(
        started: Instant,
        measurement: Measurement,
        permits: Option<Arc<Semaphore>>,
    ) -> Self {
        OutcomeTracker {
            state: Arc::new(Mutex::new(TrackerState::new(measurement))),
            changed: Arc::new(Notify::new()),
            base: started,
            load_start_ns: Arc::new(AtomicU64::new(0)),
            permits,
        }
    }

    /// Time since the start of the load.
    pub fn now(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_nanos(
            self.load_start_ns.load(Ordering::Relaxed),
        ))
    }

    /// The instant the load started.
    pub fn started(&self) -> Instant {
        self.base + Duration::from_nanos(self.load_start_ns.load(Ordering::Relaxed))
    }

    /// Starts the load's clock again now, with a fresh `measurement` and series: what came
    /// before (the readiness probe) stays in the counts and the invariants, not in the figures.
    pub fn restart_clock(&self, measurement: Measurement) {
        let mut state = self.lock();
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.load_start_ns.store(ns, Ordering::Relaxed);
        state.measurement = measurement;
        state.series = Series::default();
    }

    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut TrackerState) -> R) -> R {
        f(&mut self.lock())
    }

    /// Registers submissions intended at the given times (before publishing them).
    pub fn submit_all(&self, submissions: impl IntoIterator<Item = (Submission, Duration)>) {
        let mut state = self.lock();
        for (submission, intended) in submissions {
            state.submit(submission, intended);
        }
    }

    /// Waits until every registered submission is answered, or `timeout` passes; returns
    /// whether all were.
    pub async fn wait_all_answered(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.lock().unanswered() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().unanswered() == 0;
            }
        }
    }

    /// Starts consuming `txn.result.<oi>` of every institution in `institutions` in consumer
    /// group `group`.
    pub async fn spawn_consumers(
        &self,
        bus: &Arc<dyn Bus>,
        institutions: impl IntoIterator<Item = String>,
        group: &str,
        shutdown: &CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, LoadTestError> {
        let mut handles = Vec::new();
        for institution in institutions {
            let mut config = ConsumerConfig::new(subjects::txn_result(&institution), group);
            config.start = StartAt::Earliest;
            config.max_in_flight = TRACKER_IN_FLIGHT_MAX;
            let mut consumer = bus
                .consumer(config)
                .await
                .map_err(|e| LoadTestError::bus("joining the outcome subjects", e))?;
            let (tracker, shutdown) = (self.clone(), shutdown.clone());
            handles.push(tokio::spawn(async move {
                loop {
                    let batch = tokio::select! {
                        () = shutdown.cancelled() => break,
                        batch = consumer.fetch(TRACKER_FETCH_MAX, TRACKER_FETCH_WAIT) => batch,
                    };
                    let batch = match batch {
                        Ok(batch) => batch,
                        Err(e) => {
                            tracing::warn!(error = %e, "outcome fetch failed");
                            continue;
                        }
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    let now = tracker.now();
                    let mut released = 0usize;
                    {
                        let mut state = tracker.lock();
                        for delivery in &batch {
                            match dcpipe_schemas::decode::<PaymentOutcome>(&delivery.record.payload)
                            {
                                Ok(outcome) => {
                                    let payer_copy = outcome.payer.institution_id == institution;
                                    released += state.observe(&outcome, payer_copy, now) as usize;
                                }
                                Err(e) => tracing::warn!(error = %e, "undecodable outcome"),
                            }
                        }
                    }
                    if let Some(permits) = &tracker.permits
                        && released > 0
                    {
                        permits.add_permits(released);
                    }
                    tracker.changed.notify_waiters();
                    for delivery in batch {
                        let _ = delivery.ack().await;
                    }
                }
            }));
        }
        Ok(handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcpipe_schemas::PartyRef;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn submission(n: u8) -> Submission {
        Submission {
            payment_id: PaymentId::from_bytes([n; 16]),
            envelope_digest: Digest32::from_bytes([n; 32]),
            submission_digest: Digest32::from_bytes([n ^ 0xff; 32]),
        }
    }

    fn outcome(s: &Submission, digest: Digest32, reason: Option<&str>) -> PaymentOutcome {
        PaymentOutcome {
            payment_id: s.payment_id,
            envelope_digest: digest,
            status: if reason.is_none() {
                OutcomeStatus::Completed
            } else {
                OutcomeStatus::Rejected
            },
            reason_code: reason.map(str::to_owned),
            detail: String::new(),
            payer: PartyRef {
                institution_id: "oi01".into(),
                wallet_id: "w1".into(),
            },
            payee: PartyRef {
                institution_id: "oi02".into(),
                wallet_id: "w2".into(),
            },
            amount_fen: 100,
            currency: "CNY".into(),
            decided_at_ms: 0,
            decided_by: "oi01".into(),
            stage: "commit".into(),
            institution_certificate: Vec::new(),
            institution_signature: Vec::new(),
        }
    }

    fn state() -> TrackerState {
        TrackerState::new(Measurement::new(ms(0), ms(60_000)))
    }

    #[test]
    fn latency_runs_from_the_intended_time_to_the_payer_copy() {
        let mut t = state();
        let s = submission(1);
        t.submit(s, ms(100));
        assert_eq!(
            t.observe(&outcome(&s, s.envelope_digest, None), false, ms(120)),
            0
        );
        assert_eq!(
            t.observe(&outcome(&s, s.envelope_digest, None), true, ms(150)),
            1
        );
        let p = t.measurement().percentiles();
        assert_eq!(p.samples, 1);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn unauthenticated_rejections_are_matched_by_the_submitted_bytes() {
        let mut t = state();
        let s = submission(2);
        t.submit(s, ms(0));
        let answer = outcome(&s, s.submission_digest, Some("sig.payer_invalid"));
        assert_eq!(t.observe(&answer, true, ms(10)), 1);
        let tally = t.tally();
        assert_eq!(tally.counts_by_outcome.get("sig.payer_invalid"), Some(&1));
        assert!(tally.violations.is_empty(), "{:?}", tally.violations);
    }

    #[test]
    fn a_repeated_submission_is_answered_by_a_later_copy_without_a_second_latency() {
        let mut t = state();
        let s = submission(3);
        t.submit(s, ms(0));
        t.observe(&outcome(&s, s.envelope_digest, None), true, ms(10));
        t.submit(s, ms(500));
        assert_eq!(t.unanswered(), 1);
        assert_eq!(
            t.observe(&outcome(&s, s.envelope_digest, None), true, ms(520)),
            1
        );
        assert_eq!(t.unanswered(), 0);
        assert_eq!(t.measurement().percentiles().samples, 1);
        let tally = t.tally();
        assert_eq!((tally.submitted, tally.distinct, tally.answered), (2, 1, 2));
        assert_eq!(tally.counts_by_outcome.get("COMPLETED"), Some(&2));
    }

    #[test]
    fn outcomes_of_other_runs_are_ignored() {
        let mut t = state();
        let foreign = submission(9);
        assert_eq!(
            t.observe(
                &outcome(&foreign, foreign.envelope_digest, None),
                true,
                ms(5)
            ),
            0
        );
        assert!(t.tally().counts_by_outcome.is_empty());
    }

    #[test]
    fn an_unanswered_submission_is_a_violation_and_counted() {
        let mut t = state();
        let (a, b) = (submission(4), submission(5));
        t.submit(a, ms(0));
        t.submit(b, ms(1));
        t.observe(&outcome(&a, a.envelope_digest, None), true, ms(9));
        let tally = t.tally();
        assert_eq!(tally.violations, vec![Violation::Unanswered(b)]);
        assert_eq!(tally.counts_by_outcome.get("UNANSWERED"), Some(&1));
        let total: u64 = tally.counts_by_outcome.values().sum();
        assert_eq!(total, tally.submitted);
    }

    #[test]
    fn contradictory_answers_are_violations() {
        let mut t = state();
        let s = submission(6);
        t.submit(s, ms(0));
        t.observe(&outcome(&s, s.envelope_digest, None), true, ms(9));
        t.observe(
            &outcome(&s, s.envelope_digest, Some("txn.insufficient_funds")),
            false,
            ms(12),
        );
        assert!(matches!(
            t.tally().violations.as_slice(),
            [Violation::Contradiction { .. }]
        ));
    }

    #[test]
    fn censoring_records_unanswered_payments_at_their_age() {
        let mut t = state();
        let s = submission(7);
        t.submit(s, ms(1000));
        t.censor_unanswered(ms(3000));
        assert!((t.measurement().percentiles().max - 2000.0).abs() < 2.0);
    }
}
