//! The invariants every run is held to: each submission gets one answer, each payment at most
//! one completion, and money is conserved. The demo, the tests and the load test all judge
//! their runs with these checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, BusError, ConsumerConfig, StartAt};
use dcpipe_schemas::{Digest32, OutcomeStatus, PaymentId, PaymentOutcome, TransactionEnvelope};

use crate::protocol::{envelope_digest, submission_digest};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::subjects;

/// A submission: a payment id with the digests that can name its answer — the envelope digest
/// (what the payer signed) for an authenticated envelope, the submission digest (the frame's
/// bytes) for one whose payer could not be authenticated (see docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Submission {
    /// The payment id.
    pub payment_id: PaymentId,
    /// The envelope digest.
    pub envelope_digest: Digest32,
    /// The submission digest.
    pub submission_digest: Digest32,
}

impl Submission {
    /// The submission of `envelope` as the frame `frame`.
    pub fn of(envelope: &TransactionEnvelope, frame: &[u8]) -> Self {
        Submission {
            payment_id: envelope.payment_id,
            envelope_digest: envelope_digest(envelope),
            submission_digest: submission_digest(frame),
        }
    }

    /// The submission of `envelope`, encoded as the codec encodes it.
    pub fn of_envelope(envelope: &TransactionEnvelope) -> Self {
        let frame = dcpipe_schemas::encode(envelope).unwrap_or_default();
        Submission::of(envelope, &frame)
    }
}

/// The key outcomes are recorded under.
type AnswerKey = (PaymentId, Digest32);

/// The answer recorded for a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Completed or rejected.
    pub status: OutcomeStatus,
    /// The reason code of a rejection.
    pub reason_code: Option<String>,
    /// The stage that decided.
    pub stage: String,
    /// Amount in fen.
    pub amount_fen: i64,
    /// Payer institution.
    pub payer_institution: String,
    /// Payee institution.
    pub payee_institution: String,
    /// How many times this answer was received (repeats are allowed, contradictions are not).
    pub copies: u32,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// One submission received two different answers.
    Contradiction {
        /// The payment id and digest the answers carry.
        submission: AnswerKey,
        /// The first answer.
        first: String,
        /// The other.
        other: String,
    },
    /// A submission never received an answer.
    Unanswered(Submission),
    /// A payment completed under two different contents.
    CompletedTwice(PaymentId),
}

/// Every outcome received, by submission.
#[derive(Debug, Default)]
pub struct OutcomeBook {
    answers: HashMap<AnswerKey, Answer>,
    violations: Vec<Violation>,
}

fn describe(status: OutcomeStatus, reason: Option<&str>) -> String {
    match (status, reason) {
        (OutcomeStatus::Completed, _) => "COMPLETED".to_owned(),
        (OutcomeStatus::Rejected, reason) => format!("REJECTED {}", reason.unwrap_or("-")),
    }
}

impl OutcomeBook {
    /// Records an outcome; a different answer to an answered submission is a violation.
    pub fn record(&mut self, outcome: &PaymentOutcome) {
        let key = (outcome.payment_id, outcome.envelope_digest);
        match self.answers.get_mut(&key) {
            Some(answer) => {
                if answer.status != outcome.status || answer.reason_code != outcome.reason_code {
                    self.violations.push(Violation::Contradiction {
                        submission: key,
                        first: describe(answer.status, answer.reason_code.as_deref()),
                        other: describe(outcome.status, outcome.reason_code.as_deref()),
                    });
                } else {
                    answer.copies += 1;
                }
            }
            None => {
                self.answers.insert(
                    key,
                    Answer {
                        status: outcome.status,
                        reason_code: outcome.reason_code.clone(),
                        stage: outcome.stage.clone(),
                        amount_fen: outcome.amount_fen,
                        payer_institution: outcome.payer.institution_id.clone(),
                        payee_institution: outcome.payee.institution_id.clone(),
                        copies: 1,
                    },
                );
            }
        }
    }

    /// The answer to a submission, if any: the one naming its bytes, else the one naming its
    /// content.
    pub fn answer(&self, submission: &Submission) -> Option<&Answer> {
        self.answer_key(submission)
            .and_then(|key| self.answers.get(&key))
    }

    /// The key the answer to a submission is recorded under, if it was answered.
    fn answer_key(&self, submission: &Submission) -> Option<AnswerKey> {
        [submission.submission_digest, submission.envelope_digest]
            .into_iter()
            .map(|digest| (submission.payment_id, digest))
            .find(|key| self.answers.contains_key(key))
    }

    /// How many of `submissions` have an answer.
    pub fn answers_all_count(&self, submissions: &[Submission]) -> usize {
        submissions
            .iter()
            .filter(|s| self.answer(s).is_some())
            .count()
    }

    /// Whether every one of `submissions` has an answer.
    pub fn answers_all(&self, submissions: &[Submission]) -> bool {
        submissions.iter().all(|s| self.answer(s).is_some())
    }

    /// Distinct submissions answered.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether nothing was answered yet.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Every answer, by payment id and the digest it carries.
    pub fn answers(&self) -> impl Iterator<Item = (&AnswerKey, &Answer)> {
        self.answers.iter()
    }

    /// Answers counted by outcome: `COMPLETED`, or the rejection's reason code.
    pub fn counts_by_outcome(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for answer in self.answers.values() {
            let key = match answer.status {
                OutcomeStatus::Completed => "COMPLETED".to_owned(),
                OutcomeStatus::Rejected => answer
                    .reason_code
                    .clone()
                    .unwrap_or_else(|| "REJECTED".to_owned()),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// Every broken invariant, given what was submitted: contradictions seen so far, each
    /// submission unanswered, and each submitted payment completed under two contents. Answers
    /// to payments not in `submitted` (an earlier run on the same bus) are not judged.
    pub fn violations(&self, submitted: &[Submission]) -> Vec<Violation> {
        let mut violations = self.violations.clone();
        violations.extend(
            submitted
                .iter()
                .filter(|s| self.answer(s).is_none())
                .map(|s| Violation::Unanswered(*s)),
        );
        let mut completed: HashMap<PaymentId, u32> = HashMap::new();
        let payments: std::collections::HashSet<PaymentId> =
            submitted.iter().map(|s| s.payment_id).collect();
        for ((payment_id, _), answer) in &self.answers {
            if answer.status == OutcomeStatus::Completed && payments.contains(payment_id) {
                *completed.entry(*payment_id).or_insert(0) += 1;
            }
        }
        let mut twice: Vec<PaymentId> = completed
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        twice.sort();
        violations.extend(twice.into_iter().map(Violation::CompletedTwice));
        violations
    }

    /// Net interbank positions implied by the completed submissions among `submitted`: what
    /// settlement must find.
    pub fn expected_net_positions(&self, submitted: &[Submission]) -> BTreeMap<String, i64> {
        let mut net = BTreeMap::new();
        // Each answer once, however many submissions it answers.
        let keys: std::collections::HashSet<AnswerKey> = submitted
            .iter()
            .filter_map(|s| self.answer_key(s))
            .collect();
        for answer in keys.iter().filter_map(|key| self.answers.get(key)) {
            if answer.status == OutcomeStatus::Completed
                && answer.payer_institution != answer.payee_institution
            {
                *net.entry(answer.payer_institution.clone()).or_insert(0) -= answer.amount_fen;
                *net.entry(answer.payee_institution.clone()).or_insert(0) += answer.amount_fen;
            }
        }
        net
    }
}

/// Consumes the outcomes of some institutions into an [`OutcomeBook`], and lets callers wait
/// for a condition on it with a deadline.
#[derive(Debug, Clone)]
pub struct OutcomeCollector {
    book: Arc<Mutex<OutcomeBook>>,
    changed: Arc<Notify>,
}

impl OutcomeCollector {
    /// Starts consuming `txn.result.<oi>` of every institution in `institutions`, in consumer
    /// group `group` (its own, so the institutions' stages still get every outcome).
    pub async fn spawn(
        bus: Arc<dyn Bus>,
        institutions: impl IntoIterator<Item = String>,
        group: &str,
        shutdown: CancellationToken,
    ) -> Result<(Self, Vec<JoinHandle<()>>), BusError> {
        let collector = OutcomeCollector {
            book: Arc::new(Mutex::new(OutcomeBook::default())),
            changed: Arc::new(Notify::new()),
        };
        let mut handles = Vec::new();
        for institution in institutions {
            let mut config = ConsumerConfig::new(subjects::txn_result(&institution), group);
            config.start = StartAt::Earliest;
            config.max_in_flight = 4096;
            let mut consumer = bus.consumer(config).await?;
            let collector = collector.clone();
            let shutdown = shutdown.clone();
            handles.push(tokio::spawn(async move {
                loop {
                    let batch = tokio::select! {
                        () = shutdown.cancelled() => break,
                        batch = consumer.fetch(1024, Duration::from_millis(100)) => batch,
                    };
                    let Ok(batch) = batch else { continue };
                    if batch.is_empty() {
                        continue;
                    }
                    {
                        let mut book = collector.lock();
                        for delivery in &batch {
                            if let Ok(outcome) =
                                dcpipe_schemas::decode::<PaymentOutcome>(&delivery.record.payload)
                            {
                                book.record(&outcome);
                            }
                        }
                    }
                    collector.changed.notify_waiters();
                    for delivery in batch {
                        let _ = delivery.ack().await;
                    }
                }
            }));
        }
        Ok((collector, handles))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutcomeBook> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the book.
    pub fn with_book<R>(&self, f: impl FnOnce(&OutcomeBook) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `condition` holds on the book, or the deadline passes; returns whether it
    /// held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&OutcomeBook) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if condition(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.lock());
            }
        }
    }
}
