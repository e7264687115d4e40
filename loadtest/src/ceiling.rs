//! The two limits the pipeline is measured against, measured by the same binary on the same
//! machine just before the load.
//!
//! - The **crypto ceiling**: payments per second that the signature and chain work of the
//!   payment flow alone allows, on all the cores the run uses. Per completed payment the stages
//!   do (see `dcpipe_pipeline::payment`): the payer institution verifies the envelope
//!   ([`verify_envelope`]: both terminal chains from the cache, the factor, the payee's consent,
//!   the payer's signature and, above the password-free limit, the secure element's chain and
//!   PIN proof) and signs the clearing message; the payee institution verifies it (chain from
//!   the cache and signature) and signs its response; the payer institution verifies the
//!   response and signs the outcome; the payee institution's finalize stage verifies the
//!   outcome, and for an interbank payment the central bank's settlement verifies it again. The
//!   loop below does exactly these calls on real envelopes of the run's mix.
//! - The **bus ceiling**: publish-and-consume of messages of the real sizes through the same
//!   bus with no processing, in payments per second: the message rate divided by the messages
//!   one payment needs (submit, clearing request, clearing response, the outcome to the payer's
//!   institution, and for an interbank payment its copy to the payee's and to settlement). It
//!   goes through dcpipe's bus layer as the stages do (batches published and awaited, every
//!   ack confirmed), so it measures that layer as much as the broker.
//! - The **broker ceiling** ([`measure_broker`]): the same messages published and consumed
//!   with the broker's own client used at its best (thousands of publish acknowledgements
//!   outstanding, large fetch batches, acks not awaited; see `dcpipe_connectors::bus::bench`):
//!   what the broker itself carries. None on the embedded bus.
//! - For a vehicle load, the **vehicle ceiling** ([`VehicleWork`]): telemetry reports per
//!   second that the matching stage's pure work on the run's own signed batches allows, and
//!   the bus ceiling in batches of their real size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcpipe_connectors::bus::bench::{BenchKind, BenchPlan, sends};
use dcpipe_connectors::bus::{Bus, ConsumerConfig, Outgoing, StartAt, SubjectSpec};
use dcpipe_connectors::session::VehicleRecord;
use dcpipe_pipeline::clearing::PaymentIntent;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::payment::{Institution, verify_envelope};
use dcpipe_pipeline::pki::{ChainVerifier, Role};
use dcpipe_pipeline::protocol::{
    clearing_message_bytes, clearing_response_bytes, envelope_digest, payment_outcome_bytes,
};
use dcpipe_pipeline::vehicle::backend::VehicleInstitution;
use dcpipe_pipeline::vehicle::matching::{TelemetryDecision, decide_telemetry};
use dcpipe_pipeline::vehicle::telemetry::verify_telemetry_batch;
use dcpipe_schemas::{
    ClearingResponse, ClearingStatus, Digest32, OutcomeStatus, PaymentOutcome, TransactionEnvelope,
    VehicleTelemetryBatch,
};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::payments::{PaymentGenerator, PaymentMix};

/// Envelopes the crypto loop cycles through: enough for the mix's shares to show.
pub const CRYPTO_SAMPLE_PAYMENTS: usize = 500;
/// Messages of one kind the bus ceiling publishes at most on the embedded bus (bounds its
/// memory; it carries about a million messages a second, so this is still a tenth of a second).
pub const BUS_CEILING_MESSAGES_PER_KIND_MAX: u64 = 60_000;
/// The same on a broker, where they stay stored on `loadtest.*` subjects after the run (about
/// 80 MB per run with real sizes; purge the `LOADTEST` stream or topics now and then).
pub const BUS_CEILING_BROKER_MESSAGES_PER_KIND_MAX: u64 = 20_000;
/// Payments' worth of messages in one publish round of the bus ceiling.
const BUS_CEILING_BATCH_PAYMENTS: u64 = 64;
/// Concurrent publishers of the bus ceiling (the pipeline has one per stage).
const BUS_CEILING_PUBLISHERS: usize = 2;
/// Deliveries fetched at once by the bus ceiling's consumers (the stage runner's batch).
const BUS_CEILING_FETCH_MAX: usize = 256;
/// How long the bus ceiling waits for its consumers to catch up after publishing.
const BUS_CEILING_DRAIN_MAX: Duration = Duration::from_secs(60);

/// Signature operations per payment, as counted in the crypto loop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct CryptoOpsPerPayment {
    /// Signatures made.
    pub sign: f64,
    /// Signatures verified.
    pub verify: f64,
    /// Certificate chains checked (served by the verifier's cache after the first).
    pub chain: f64,
}

/// The crypto ceiling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CryptoCeiling {
    /// Payments per second on all cores.
    pub payments_per_s: f64,
    /// Payments per second per core.
    pub per_core: f64,
    /// Threads it was measured on (the cores the run uses).
    pub cores: usize,
    /// What one payment costs.
    pub ops_per_payment: CryptoOpsPerPayment,
    /// Payments done during the measurement.
    pub payments: u64,
    /// Length of the measurement, seconds.
    pub seconds: f64,
}

/// Signature operations counted by a crypto loop.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OpCounts {
    payments: u64,
    sign: u64,
    verify: u64,
    chain: u64,
}

/// One payment's signature work, prepared.
#[derive(Debug)]
struct PaymentWork {
    envelope: TransactionEnvelope,
    clearing: ClearingPathWork,
}

/// The clearing path's signature work for one payment, whatever authorized it (an envelope,
/// a vehicle charge, an offline payment): the payer's institution signs the clearing message
/// and the payee's verifies it (chain from the cache and signature); the payee's institution
/// signs its response and the payer's commit stage verifies it; the commit stage signs the
/// outcome, the payee's finalize stage verifies it, and for an interbank payment the central
/// bank's settlement verifies it again.
#[derive(Debug)]
pub struct ClearingPathWork {
    payer: Arc<Institution>,
    payee: Arc<Institution>,
    interbank: bool,
    at_ms: i64,
    clearing_input: Vec<u8>,
    response_input: Vec<u8>,
    outcome_input: Vec<u8>,
    /// Encoded sizes of the clearing message, the response and the outcome.
    sizes: [usize; 3],
}

impl ClearingPathWork {
    /// The messages the clearing path makes for `intent` (authorized content named by
    /// `digest`) between `network`'s institutions, signed once to know their sizes.
    pub(crate) fn prepare(
        network: &Network,
        intent: &PaymentIntent,
        digest: Digest32,
        now_ms: i64,
    ) -> Result<Self, LoadTestError> {
        let institution =
            |id: &str| {
                network.institutions.get(id).cloned().ok_or_else(|| {
                    crypto_error("sample payment", format!("unknown institution {id}"))
                })
            };
        let payer = institution(&intent.payer.institution_id)?;
        let payee = institution(&intent.payee.institution_id)?;
        let mut clearing = intent.unsigned_clearing(
            digest,
            now_ms,
            now_ms + payer.policy.reservation_ttl_ms,
            payer.signer.certificate().der().to_vec(),
        );
        let clearing_input = clearing_message_bytes(&clearing);
        clearing.institution_signature = sign(&payer, &clearing_input)?;
        let mut response = ClearingResponse {
            payment_id: intent.payment_id,
            payer_institution_id: payer.id.clone(),
            payee_institution_id: payee.id.clone(),
            status: ClearingStatus::Accepted,
            reason_code: None,
            amount_fen: intent.amount_fen,
            responded_at_ms: now_ms,
            institution_certificate: payee.signer.certificate().der().to_vec(),
            institution_signature: Vec::new(),
        };
        let response_input = clearing_response_bytes(&response);
        response.institution_signature = sign(&payee, &response_input)?;
        let mut outcome = PaymentOutcome {
            payment_id: intent.payment_id,
            envelope_digest: digest,
            status: OutcomeStatus::Completed,
            reason_code: None,
            detail: "cleared".to_owned(),
            payer: intent.payer.clone(),
            payee: intent.payee.clone(),
            amount_fen: intent.amount_fen,
            currency: intent.currency.clone(),
            decided_at_ms: now_ms,
            decided_by: payer.id.clone(),
            stage: dcpipe_pipeline::payment::commit::STAGE.to_owned(),
            institution_certificate: payer.signer.certificate().der().to_vec(),
            institution_signature: Vec::new(),
        };
        let outcome_input = payment_outcome_bytes(&outcome);
        outcome.institution_signature = sign(&payer, &outcome_input)?;
        Ok(ClearingPathWork {
            interbank: payer.id != payee.id,
            payer,
            payee,
            at_ms: now_ms,
            sizes: [
                encoded_len(&clearing)?,
                encoded_len(&response)?,
                encoded_len(&outcome)?,
            ],
            clearing_input,
            response_input,
            outcome_input,
        })
    }

    /// Does the work once with `verifier`, adding its operations to `counts`.
    pub(crate) fn run(
        &self,
        verifier: &ChainVerifier,
        counts: &mut OpCounts,
    ) -> Result<(), LoadTestError> {
        let verify = |signer: &Institution, input: &[u8], signature: &[u8]| {
            verify_institution(verifier, signer, self.at_ms, input, signature)
        };
        // Payer stage signs the clearing message; the payee's stage verifies it.
        let clearing_signature = sign(&self.payer, &self.clearing_input)?;
        verify(&self.payer, &self.clearing_input, &clearing_signature)?;
        // Payee stage signs its response; the payer's commit stage verifies it.
        let response_signature = sign(&self.payee, &self.response_input)?;
        verify(&self.payee, &self.response_input, &response_signature)?;
        // Commit stage signs the outcome; the payee's finalize stage verifies it, and
        // settlement too when the payment is interbank.
        let outcome_signature = sign(&self.payer, &self.outcome_input)?;
        verify(&self.payer, &self.outcome_input, &outcome_signature)?;
        counts.sign += 3;
        counts.verify += 3;
        counts.chain += 3;
        if self.interbank {
            verify(&self.payer, &self.outcome_input, &outcome_signature)?;
            counts.verify += 1;
            counts.chain += 1;
        }
        Ok(())
    }
}

/// The sizes of the messages of one payment, from real encoded messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct MessageSizes {
    /// A transaction envelope frame (mean over the sample).
    pub envelope: usize,
    /// A clearing message frame.
    pub clearing_message: usize,
    /// A clearing response frame.
    pub clearing_response: usize,
    /// A payment outcome frame.
    pub outcome: usize,
}

/// The signature work of real payments of the run's mix, ready to measure.
#[derive(Debug)]
pub struct CryptoWork {
    items: Vec<PaymentWork>,
    verifier: Arc<ChainVerifier>,
    sizes: MessageSizes,
}

pub(crate) fn crypto_error(what: &str, error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(LoadTestErrorKind::Crypto, format!("{what}: {error}"))
}

fn encoded_len<M: dcpipe_schemas::Message>(message: &M) -> Result<usize, LoadTestError> {
    dcpipe_schemas::encode(message)
        .map(|frame| frame.len())
        .map_err(|e| crypto_error("encoding a sample message", e))
}

impl CryptoWork {
    /// Prepares [`CRYPTO_SAMPLE_PAYMENTS`] honest payments of `mix` (its bad shares left out:
    /// the ceiling is that of payments that complete) between `network`'s wallets.
    pub fn prepare(network: &Network, mix: &PaymentMix, seed: u64) -> Result<Self, LoadTestError> {
        let honest = PaymentMix {
            duplicate_share: 0.0,
            conflict_share: 0.0,
            forged_share: 0.0,
            ..mix.clone()
        };
        let mut generator = PaymentGenerator::new(network, honest, seed);
        let now_ms = dcpipe_pipeline::clock::system_now_ms();
        let mut items = Vec::with_capacity(CRYPTO_SAMPLE_PAYMENTS);
        let mut sizes = [0usize; 4];
        for _ in 0..CRYPTO_SAMPLE_PAYMENTS {
            let generated = generator
                .next(now_ms)
                .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))?;
            let envelope = generated.envelope;
            let digest = envelope_digest(&envelope);
            let clearing = ClearingPathWork::prepare(
                network,
                &PaymentIntent::of_envelope(&envelope, digest),
                digest,
                now_ms,
            )?;
            sizes[0] += generated.frame.len();
            for (total, size) in sizes[1..].iter_mut().zip(clearing.sizes) {
                *total += size;
            }
            items.push(PaymentWork { envelope, clearing });
        }
        let n = items.len().max(1);
        Ok(CryptoWork {
            items,
            verifier: Arc::clone(&network.verifier),
            sizes: MessageSizes {
                envelope: sizes[0] / n,
                clearing_message: sizes[1] / n,
                clearing_response: sizes[2] / n,
                outcome: sizes[3] / n,
            },
        })
    }

    /// Mean sizes of the sample's messages.
    pub fn sizes(&self) -> MessageSizes {
        self.sizes
    }

    /// Share of the sample's payments between two institutions.
    pub fn interbank_share(&self) -> f64 {
        let interbank = self.items.iter().filter(|i| i.clearing.interbank).count();
        interbank as f64 / self.items.len().max(1) as f64
    }

    /// The signature and chain work the stages do for one completed payment.
    fn one_payment(&self, item: &PaymentWork, counts: &mut OpCounts) -> Result<(), LoadTestError> {
        let envelope = &item.envelope;
        let payer = &item.clearing.payer;
        // Payer stage: the envelope.
        let verified = verify_envelope(
            envelope,
            &payer.id,
            &self.verifier,
            &payer.policy,
            envelope.created_at_ms,
        )
        .map_err(|e| crypto_error("sample envelope", e.rejected.reason.as_str()))?;
        counts.chain += 2;
        counts.verify += 2;
        if verified.pin_verified {
            counts.chain += 1;
            counts.verify += 1;
        }
        item.clearing.run(&self.verifier, counts)?;
        counts.payments += 1;
        Ok(())
    }

    /// Runs the work on `threads` threads for `duration` and returns the ceiling.
    pub fn measure(
        &self,
        threads: usize,
        duration: Duration,
    ) -> Result<CryptoCeiling, LoadTestError> {
        let threads = threads.max(1);
        let (results, elapsed) = on_threads(threads, duration, |t, deadline| {
            let mut counts = OpCounts::default();
            let mut i = t * self.items.len() / threads;
            while Instant::now() < deadline {
                let item = &self.items[i % self.items.len()];
                self.one_payment(item, &mut counts)?;
                i += 1;
            }
            Ok(counts)
        })?;
        let mut total = OpCounts::default();
        for counts in results {
            total.payments += counts.payments;
            total.sign += counts.sign;
            total.verify += counts.verify;
            total.chain += counts.chain;
        }
        Ok(crypto_ceiling_from(total, threads, elapsed))
    }
}

/// Runs `work(thread index, deadline)` on `threads` threads until `duration` has passed and
/// returns what each thread counted and the seconds it took.
pub(crate) fn on_threads<C: Send>(
    threads: usize,
    duration: Duration,
    work: impl Fn(usize, Instant) -> Result<C, LoadTestError> + Sync,
) -> Result<(Vec<C>, f64), LoadTestError> {
    let started = Instant::now();
    let deadline = started + duration;
    let work = &work;
    let results: Vec<Result<C, LoadTestError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || work(t, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(crypto_error("ceiling", "a measuring thread panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    Ok((results.into_iter().collect::<Result<_, _>>()?, seconds))
}

/// Envelopes per second one core of the synthetic terminals signs and encodes (two
/// signatures each, three with a PIN proof): their work shares the cores when the producers run
/// in the same process as the pipeline.
pub fn measure_producer(
    network: &Network,
    mix: &PaymentMix,
    seed: u64,
    duration: Duration,
) -> Result<f64, LoadTestError> {
    let mut generator = PaymentGenerator::new(network, mix.clone(), seed);
    let started = Instant::now();
    let mut produced = 0u64;
    while started.elapsed() < duration {
        generator
            .next(dcpipe_pipeline::clock::system_now_ms())
            .map_err(|e| LoadTestError::new(LoadTestErrorKind::Generate, e.to_string()))?;
        produced += 1;
    }
    Ok(produced as f64 / started.elapsed().as_secs_f64())
}

/// Payments per second `cores` cores allow when each payment costs both the pipeline's
/// signature work (`crypto_per_core` per core) and the producer's (`producer_per_core`).
pub fn shared_ceiling(crypto_per_core: f64, producer_per_core: f64, cores: usize) -> f64 {
    if crypto_per_core <= 0.0 || producer_per_core <= 0.0 {
        return 0.0;
    }
    cores as f64 / (1.0 / crypto_per_core + 1.0 / producer_per_core)
}

/// An institution's signature checked as the stages check it: its certificate's chain (from
/// the cache) at `at_ms`, then the signature.
fn verify_institution(
    verifier: &ChainVerifier,
    signer: &Institution,
    at_ms: i64,
    input: &[u8],
    signature: &[u8],
) -> Result<(), LoadTestError> {
    let identity = verifier
        .verify(
            signer.signer.certificate().der(),
            at_ms,
            Role::InstitutionSigner,
        )
        .map_err(|e| crypto_error("institution certificate", e))?;
    identity
        .public_key()
        .verify(input, signature)
        .map_err(|e| crypto_error("institution signature", e))
}

fn sign(institution: &Institution, input: &[u8]) -> Result<Vec<u8>, LoadTestError> {
    institution
        .signer
        .key()
        .sign(input)
        .map_err(|e| crypto_error("institution signature", e))
}

fn crypto_ceiling_from(total: OpCounts, threads: usize, seconds: f64) -> CryptoCeiling {
    let payments = total.payments.max(1) as f64;
    let rate = if seconds > 0.0 {
        total.payments as f64 / seconds
    } else {
        0.0
    };
    CryptoCeiling {
        payments_per_s: rate,
        per_core: rate / threads.max(1) as f64,
        cores: threads,
        ops_per_payment: CryptoOpsPerPayment {
            sign: total.sign as f64 / payments,
            verify: total.verify as f64 / payments,
            chain: total.chain as f64 / payments,
        },
        payments: total.payments,
        seconds,
    }
}

/// One kind of message a payment sends over the bus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageKind {
    /// What it is, e.g. `clearing.request`.
    pub name: &'static str,
    /// Its encoded size.
    pub bytes: usize,
    /// How many a payment sends, on average.
    pub per_payment: f64,
}

/// The messages one payment puts on the bus, per the payment stages: every payment is
/// submitted, cleared and answered to its payer's institution; an interbank one also tells the
/// payee's institution and settlement.
pub fn payment_messages(sizes: &MessageSizes, interbank_share: f64) -> Vec<MessageKind> {
    let s = interbank_share.clamp(0.0, 1.0);
    vec![
        MessageKind {
            name: "txn.submit",
            bytes: sizes.envelope,
            per_payment: 1.0,
        },
        MessageKind {
            name: "clearing.request",
            bytes: sizes.clearing_message,
            per_payment: 1.0,
        },
        MessageKind {
            name: "clearing.response",
            bytes: sizes.clearing_response,
            per_payment: 1.0,
        },
        MessageKind {
            name: "txn.result.payer",
            bytes: sizes.outcome,
            per_payment: 1.0,
        },
        MessageKind {
            name: "txn.result.payee",
            bytes: sizes.outcome,
            per_payment: s,
        },
        MessageKind {
            name: "settlement.clearing",
            bytes: sizes.outcome,
            per_payment: s,
        },
    ]
}

/// Messages per payment of a list of kinds.
pub fn messages_per_payment(kinds: &[MessageKind]) -> f64 {
    kinds.iter().map(|k| k.per_payment).sum()
}

/// Payments per second a message rate allows.
pub fn payments_per_s(message_rate: f64, messages_per_payment: f64) -> f64 {
    if messages_per_payment > 0.0 {
        message_rate / messages_per_payment
    } else {
        0.0
    }
}

/// Achieved over ceiling; 0 when the ceiling is unknown.
pub fn ratio(achieved: f64, ceiling: f64) -> f64 {
    if ceiling > 0.0 {
        achieved / ceiling
    } else {
        0.0
    }
}

/// The bus ceiling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusCeiling {
    /// Payments per second the bus carries with no processing.
    pub payments_per_s: f64,
    /// Messages published and consumed per second.
    pub message_rate: f64,
    /// Messages one payment needs.
    pub messages_per_payment: f64,
    /// The kinds and sizes measured.
    pub messages: Vec<MessageKind>,
    /// Messages published (and consumed).
    pub published: u64,
    /// From the first publish to the last consume, seconds.
    pub seconds: f64,
}

/// Publishes messages of `kinds` (sizes and proportions of real payments) to subjects of
/// their own for `duration`, while one consumer group per subject consumes and acks them, and
/// measures the rate at which they went through. `run_id` keeps the subjects of one run apart.
pub async fn measure_bus(
    bus: &Arc<dyn Bus>,
    kinds: &[MessageKind],
    run_id: &str,
    partitions: u32,
    duration: Duration,
) -> Result<BusCeiling, LoadTestError> {
    let messages_per_kind_max = match bus.kind() {
        dcpipe_connectors::bus::BusKind::Embedded => BUS_CEILING_MESSAGES_PER_KIND_MAX,
        _ => BUS_CEILING_BROKER_MESSAGES_PER_KIND_MAX,
    };
    let subjects: Vec<String> = (0..kinds.len())
        .map(|i| format!("loadtest.ceiling-{run_id}.k{i}"))
        .collect();
    for subject in &subjects {
        bus.ensure_subject(&SubjectSpec::new(subject.clone()).with_partitions(partitions))
            .await
            .map_err(|e| LoadTestError::bus("creating the ceiling subjects", e))?;
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let progressed = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for subject in &subjects {
        let mut config = ConsumerConfig::new(subject.clone(), format!("loadtest-{run_id}-ceiling"));
        config.start = StartAt::Earliest;
        config.max_in_flight = BUS_CEILING_FETCH_MAX * 2;
        let mut consumer = bus
            .consumer(config)
            .await
            .map_err(|e| LoadTestError::bus("joining the ceiling subjects", e))?;
        let (consumed, progressed, stop) =
            (Arc::clone(&consumed), Arc::clone(&progressed), stop.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    () = stop.cancelled() => break,
                    batch = consumer.fetch(BUS_CEILING_FETCH_MAX, Duration::from_millis(50)) => batch,
                };
                let Ok(batch) = batch else { continue };
                let n = batch.len() as u64;
                for delivery in batch {
                    let _ = delivery.ack().await;
                }
                if n > 0 {
                    consumed.fetch_add(n, Ordering::Relaxed);
                    progressed.notify_waiters();
                }
            }
        }));
    }

    let payloads: Vec<Bytes> = kinds
        .iter()
        .map(|k| Bytes::from(vec![0x5a; k.bytes.max(1)]))
        .collect();
    // One message per subject first, timed out of the measurement: consumer groups that join
    // slowly (Kafka's rebalance) would otherwise count as a slow bus.
    let probes: Vec<Outgoing> = subjects
        .iter()
        .zip(&payloads)
        .map(|(subject, payload)| Outgoing::new(subject.clone(), payload.clone()))
        .collect();
    let probe_count = probes.len() as u64;
    bus.publish_many(probes)
        .await
        .map_err(|e| LoadTestError::bus("publishing the ceiling probes", e))?;
    let probe_deadline = tokio::time::Instant::now() + BUS_CEILING_DRAIN_MAX;
    loop {
        let notified = progressed.notified();
        if consumed.load(Ordering::Relaxed) >= probe_count {
            break;
        }
        if tokio::time::timeout_at(probe_deadline, notified)
            .await
            .is_err()
        {
            stop.cancel();
            return Err(LoadTestError::bus(
                "bus ceiling",
                format!(
                    "the consumers did not receive their first message within {BUS_CEILING_DRAIN_MAX:?}"
                ),
            ));
        }
    }
    consumed.fetch_sub(probe_count, Ordering::Relaxed);
    let next_payment = Arc::new(AtomicU64::new(0));
    let payments_max = kinds
        .iter()
        .map(|k| {
            if k.per_payment > 0.0 {
                (messages_per_kind_max as f64 / k.per_payment) as u64
            } else {
                u64::MAX
            }
        })
        .min()
        .unwrap_or(0);
    let started = Instant::now();
    let deadline = started + duration;
    let mut publishers = Vec::new();
    for _ in 0..BUS_CEILING_PUBLISHERS {
        let (bus, next_payment, payloads, subjects) = (
            Arc::clone(bus),
            Arc::clone(&next_payment),
            payloads.clone(),
            subjects.clone(),
        );
        let kinds = kinds.to_vec();
        publishers.push(tokio::spawn(async move {
            let mut published = 0u64;
            while Instant::now() < deadline {
                let first = next_payment.fetch_add(BUS_CEILING_BATCH_PAYMENTS, Ordering::Relaxed);
                if first >= payments_max {
                    break;
                }
                let mut batch = Vec::new();
                for index in first..(first + BUS_CEILING_BATCH_PAYMENTS).min(payments_max) {
                    for (k, kind) in kinds.iter().enumerate() {
                        if sends(index, kind.per_payment) {
                            let mut message =
                                Outgoing::new(subjects[k].clone(), payloads[k].clone())
                                    .with_key(index.to_be_bytes().to_vec());
                            if k > 0 {
                                // The stages' outputs carry dedup ids; terminals' submissions do not.
                                message = message.with_msg_id(format!("{}/{index}", subjects[k]));
                            }
                            batch.push(message);
                        }
                    }
                }
                published += batch.len() as u64;
                bus.publish_many(batch).await?;
            }
            Ok::<u64, dcpipe_connectors::bus::BusError>(published)
        }));
    }
    let mut published = 0;
    for publisher in publishers {
        published += publisher
            .await
            .map_err(|e| LoadTestError::bus("bus ceiling publisher", e))?
            .map_err(|e| LoadTestError::bus("publishing for the bus ceiling", e))?;
    }
    let drain_deadline = tokio::time::Instant::now() + BUS_CEILING_DRAIN_MAX;
    loop {
        let notified = progressed.notified();
        if consumed.load(Ordering::Relaxed) >= published {
            break;
        }
        if tokio::time::timeout_at(drain_deadline, notified)
            .await
            .is_err()
        {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for consumer in consumers {
        let _ = consumer.await;
    }
    let consumed = consumed.load(Ordering::Relaxed).min(published);
    if consumed < published {
        return Err(LoadTestError::bus(
            "bus ceiling",
            format!(
                "only {consumed} of {published} messages were consumed within {BUS_CEILING_DRAIN_MAX:?}"
            ),
        ));
    }
    let message_rate = if seconds > 0.0 {
        consumed as f64 / seconds
    } else {
        0.0
    };
    let per_payment = messages_per_payment(kinds);
    Ok(BusCeiling {
        payments_per_s: payments_per_s(message_rate, per_payment),
        message_rate,
        messages_per_payment: per_payment,
        messages: kinds.to_vec(),
        published,
        seconds,
    })
}

/// Payments per broker ceiling publishes at most (bounds what stays stored on the broker).
pub const BROKER_CEILING_PAYMENTS_MAX: u64 = 40_000;

/// The broker's own ceiling: the messages of a payment carried by the broker's client used at
/// its best.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerCeiling {
    /// Payments per second the broker carries with no processing.
    pub payments_per_s: f64,
    /// Messages published and consumed per second.
    pub message_rate: f64,
    /// Messages per second published (acknowledged by the broker), consumers running.
    pub publish_rate: f64,
    /// Messages one payment needs.
    pub messages_per_payment: f64,
    /// Messages published (and consumed).
    pub published: u64,
    /// From the first publish to the last consume, seconds.
    pub seconds: f64,
    /// Publishes awaiting their acknowledgement at once, at most.
    pub acks_in_flight: usize,
    /// Messages a consumer asks for at once.
    pub fetch_batch: usize,
    /// How the client was driven.
    pub method: String,
}

/// The broker ceiling for messages of `kinds` on `bus` (subjects `loadtest.broker-<run_id>.k<i>`),
/// publishing for about `duration`; `None` on a bus without a broker.
pub async fn measure_broker(
    bus: &Arc<dyn Bus>,
    kinds: &[MessageKind],
    run_id: &str,
    partitions: u32,
    duration: Duration,
) -> Result<Option<BrokerCeiling>, LoadTestError> {
    let plan = BenchPlan {
        kinds: kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| BenchKind {
                subject: format!("loadtest.broker-{run_id}.k{i}"),
                bytes: kind.bytes,
                per_unit: kind.per_payment,
                // The stages' outputs carry dedup ids; terminals' submissions do not.
                with_msg_id: i > 0,
            })
            .collect(),
        units_max: BROKER_CEILING_PAYMENTS_MAX,
        duration,
        partitions,
    };
    let Some(run) = bus
        .broker_bench(&plan)
        .await
        .map_err(|e| LoadTestError::bus("broker ceiling", e))?
    else {
        return Ok(None);
    };
    if run.consumed < run.published {
        return Err(LoadTestError::bus(
            "broker ceiling",
            format!(
                "only {} of {} messages were consumed in time",
                run.consumed, run.published
            ),
        ));
    }
    let rate = |seconds: f64| {
        if seconds > 0.0 {
            run.published as f64 / seconds
        } else {
            0.0
        }
    };
    let per_payment = messages_per_payment(kinds);
    let message_rate = rate(run.seconds);
    Ok(Some(BrokerCeiling {
        payments_per_s: payments_per_s(message_rate, per_payment),
        message_rate,
        publish_rate: rate(run.publish_seconds),
        messages_per_payment: per_payment,
        published: run.published,
        seconds: run.seconds,
        acks_in_flight: run.acks_in_flight,
        fetch_batch: run.fetch_batch,
        method: run.method,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> MessageSizes {
        MessageSizes {
            envelope: 1200,
            clearing_message: 900,
            clearing_response: 700,
            outcome: 800,
        }
    }

    #[test]
    fn an_interbank_payment_needs_six_messages_an_internal_one_four() {
        assert!((messages_per_payment(&payment_messages(&sizes(), 1.0)) - 6.0).abs() < 1e-9);
        assert!((messages_per_payment(&payment_messages(&sizes(), 0.0)) - 4.0).abs() < 1e-9);
        assert!((messages_per_payment(&payment_messages(&sizes(), 0.8)) - 5.6).abs() < 1e-9);
    }

    #[test]
    fn bus_ceiling_divides_message_rate_by_messages_per_payment() {
        assert!((payments_per_s(56_000.0, 5.6) - 10_000.0).abs() < 1e-6);
        assert_eq!(payments_per_s(56_000.0, 0.0), 0.0);
    }

    #[test]
    fn ratio_to_an_unknown_ceiling_is_zero() {
        assert!((ratio(700.0, 1000.0) - 0.7).abs() < 1e-12);
        assert_eq!(ratio(700.0, 0.0), 0.0);
    }

    #[test]
    fn shared_ceiling_adds_the_costs_per_payment() {
        // 250 µs of pipeline work and 50 µs of producer work: 300 µs per payment per core.
        let c = shared_ceiling(4000.0, 20_000.0, 2);
        assert!((c - 2.0 / 0.0003).abs() < 1e-6, "{c}");
        assert_eq!(shared_ceiling(0.0, 20_000.0, 2), 0.0);
    }

    #[test]
    fn crypto_ceiling_is_total_rate_and_per_core_its_share() {
        let total = OpCounts {
            payments: 4000,
            sign: 12_000,
            verify: 23_000,
            chain: 27_000,
        };
        let c = crypto_ceiling_from(total, 2, 2.0);
        assert!((c.payments_per_s - 2000.0).abs() < 1e-9);
        assert!((c.per_core - 1000.0).abs() < 1e-9);
        assert_eq!(c.cores, 2);
        assert!((c.ops_per_payment.sign - 3.0).abs() < 1e-9);
        assert!((c.ops_per_payment.verify - 5.75).abs() < 1e-9);
    }
}

/// The vehicle flow's ceiling: telemetry reports per second that the matching stage's pure
/// work alone allows (no bus, no session store), on all the cores the run uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleCeiling {
    /// Reports per second on all cores.
    pub reports_per_s: f64,
    /// Reports per second per core.
    pub per_core: f64,
    /// Threads it was measured on.
    pub cores: usize,
    /// Signature checks per report (one per batch).
    pub verify_per_report: f64,
    /// Reports done during the measurement.
    pub reports: u64,
    /// Length of the measurement, seconds.
    pub seconds: f64,
}

/// The matching stage's work on real signed batches of the run's vehicles, ready to measure:
/// per batch what `vehicle-matching` does between reading the vehicle's record and committing
/// — [`verify_telemetry_batch`] (institution, times, certificate chain from the cache, the
/// signature) and [`decide_telemetry`] (the chain check, the session machine against the
/// registry in force, fees and charges) — each vehicle's batches in order, its record kept in
/// memory instead of the session store.
pub struct VehicleWork {
    /// Per vehicle, its decoded batches in order.
    vehicles: Vec<Vec<VehicleTelemetryBatch>>,
    institutions: Vec<Arc<VehicleInstitution>>,
}

impl std::fmt::Debug for VehicleWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VehicleWork")
            .field("vehicles", &self.vehicles.len())
            .finish_non_exhaustive()
    }
}

impl VehicleWork {
    /// The work of `frames` (per vehicle, its telemetry frames in order) at the institutions
    /// of `network` holding the vehicles' wallets.
    pub fn prepare<'f>(
        network: &Network,
        frames: impl IntoIterator<Item = Vec<&'f [u8]>>,
    ) -> Result<Self, LoadTestError> {
        let mut vehicles = Vec::new();
        let mut institutions = Vec::new();
        for frames in frames {
            let batches: Vec<VehicleTelemetryBatch> = frames
                .into_iter()
                .map(dcpipe_schemas::decode)
                .collect::<Result<_, _>>()
                .map_err(|e| crypto_error("a sample telemetry batch", e))?;
            let Some(first) = batches.first() else {
                continue;
            };
            let institution = network
                .vehicles
                .get(&first.wallet.institution_id)
                .ok_or_else(|| {
                    crypto_error("a sample vehicle", "its institution runs no vehicles")
                })?;
            institutions.push(Arc::clone(institution));
            vehicles.push(batches);
        }
        if vehicles.is_empty() {
            return Err(crypto_error("vehicle ceiling", "no sample batches"));
        }
        Ok(VehicleWork {
            vehicles,
            institutions,
        })
    }

    /// One vehicle's batches, verified and decided in order; the reports done.
    fn one_vehicle(&self, v: usize, now_ms: i64) -> Result<u64, LoadTestError> {
        let vehicles = &self.institutions[v];
        let inst = &vehicles.institution;
        let mut record: Option<VehicleRecord> = None;
        let mut reports = 0u64;
        for batch in &self.vehicles[v] {
            let verified = verify_telemetry_batch(
                batch,
                &inst.id,
                &inst.verifier,
                &vehicles.policy.telemetry,
                now_ms,
            )
            .map_err(|e| crypto_error("sample telemetry", e.reason.as_str()))?;
            let decision = decide_telemetry(
                record.as_ref(),
                batch,
                &verified,
                &vehicles.registry.read(),
                &vehicles.policy.sessions,
                &[],
                false,
            )
            .map_err(|e| crypto_error("sample telemetry", e))?;
            let TelemetryDecision::Apply { update, .. } = decision else {
                return Err(crypto_error(
                    "sample telemetry",
                    "a batch not applied in order",
                ));
            };
            record = Some(VehicleRecord {
                vehicle_id: update.vehicle_id,
                version: record.as_ref().map_or(1, |r| r.version + 1),
                next_sequence: update.next_sequence,
                last_batch_digest: update.batch_digest,
                state: update.state,
                updated_ms: now_ms,
            });
            reports += batch.reports.len() as u64;
        }
        Ok(reports)
    }

    /// Runs the work on `threads` threads for `duration` and returns the ceiling.
    pub fn measure(
        &self,
        threads: usize,
        duration: Duration,
    ) -> Result<VehicleCeiling, LoadTestError> {
        let threads = threads.max(1);
        // The time the stages judge by: their institution's clock.
        let now_ms = self
            .institutions
            .first()
            .map_or_else(dcpipe_pipeline::clock::system_now_ms, |vehicles| {
                vehicles.institution.clock.now_ms()
            });
        let (results, seconds) = on_threads(threads, duration, |t, deadline| {
            let (mut reports, mut batches) = (0u64, 0u64);
            let mut v = t * self.vehicles.len() / threads;
            while Instant::now() < deadline {
                let index = v % self.vehicles.len();
                reports += self.one_vehicle(index, now_ms)?;
                batches += self.vehicles[index].len() as u64;
                v += 1;
            }
            Ok((reports, batches))
        })?;
        let (reports, batches) = results
            .into_iter()
            .fold((0u64, 0u64), |(r, b), (r1, b1)| (r + r1, b + b1));
        let rate = if seconds > 0.0 {
            reports as f64 / seconds
        } else {
            0.0
        };
        Ok(VehicleCeiling {
            reports_per_s: rate,
            per_core: rate / threads as f64,
            cores: threads,
            verify_per_report: batches as f64 / reports.max(1) as f64,
            reports,
            seconds,
        })
    }
}
