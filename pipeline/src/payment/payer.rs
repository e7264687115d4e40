//! The payer's institution receives envelopes (flow 1, step 4): verifies them, applies the
//! password rule, reserves the amount and forwards a clearing message to the payee's
//! institution, signed by the payer's institution.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::{
    self, PaymentRecord, PaymentState, RejectionResult, ReserveRequest, ReserveResult,
};
use dcpipe_schemas::{ClearingMessage, Digest32, OutcomeStatus, TransactionEnvelope};

use super::{
    Audience, EnvelopeRejection, Institution, OutcomeFacts, VerifiedEnvelope, ledger_digest,
    ledger_id, outcome_messages, outcome_reason, verify_envelope,
};
use crate::protocol::{clearing_message_bytes, envelope_digest, submission_digest};
use crate::reason::{Reason, Rejected};
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict, outgoing};
use crate::subjects;

/// Name of this stage (consumer group suffix, dead-letter subject, outcome stage).
pub const STAGE: &str = "payer";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the payer institution's intake of envelopes: verify, reserve, forward",
        flow: Flow::Payment,
        consumes: subjects::txn_submit,
        // Clearing messages to the payee's institution; rejections to both institutions.
        publishes: |_, institutions| {
            institutions
                .iter()
                .flat_map(|oi| [subjects::clearing_request(oi), subjects::txn_result(oi)])
                .collect()
        },
        build: Build::Institution(|institution| Arc::new(PayerStage::new(institution))),
    }
}

/// The payer institution's intake of envelopes.
#[derive(Debug, Clone)]
pub struct PayerStage {
    institution: Arc<Institution>,
}

impl PayerStage {
    /// The stage for `institution`.
    pub fn new(institution: Arc<Institution>) -> Self {
        PayerStage { institution }
    }
}

/// Where one envelope of a batch stands.
enum Step {
    /// Decided without the ledger.
    Decided(Verdict),
    /// Rejected before the payer was authenticated: answered, not recorded.
    Unauthenticated(Box<TransactionEnvelope>, Digest32, Rejected),
    /// Rejected after authentication: recorded against the payment id.
    Rejected(Box<TransactionEnvelope>, Digest32, Rejected),
    /// Verified: to be reserved.
    Verified(Box<TransactionEnvelope>, VerifiedEnvelope),
}

#[async_trait]
impl Stage for PayerStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.institution.id
    }

    fn subject(&self) -> String {
        subjects::txn_submit(&self.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let inst = &self.institution;
        let now_ms = inst.clock.now_ms();
        let steps: Vec<Step> = batch
            .iter()
            .map(
                |input| match dcpipe_schemas::decode::<TransactionEnvelope>(input.payload) {
                    Err(e) => Step::Decided(Verdict::undecodable(&e)),
                    Ok(envelope) => {
                        match verify_envelope(
                            &envelope,
                            &inst.id,
                            &inst.verifier,
                            &inst.policy,
                            now_ms,
                        ) {
                            Ok(verified) => Step::Verified(Box::new(envelope), verified),
                            Err(EnvelopeRejection {
                                rejected,
                                authenticated,
                            }) => {
                                if authenticated {
                                    let digest = envelope_digest(&envelope);
                                    Step::Rejected(Box::new(envelope), digest, rejected)
                                } else {
                                    let digest = submission_digest(input.payload);
                                    Step::Unauthenticated(Box::new(envelope), digest, rejected)
                                }
                            }
                        }
                    }
                },
            )
            .collect();

        let steps = apply_password_rule(inst, steps).await?;

        // One ledger transaction for the recorded rejections, one for the reservations.
        let rejections: Vec<ledger::Rejection> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Rejected(envelope, digest, rejected) => Some(ledger::Rejection {
                    payment_id: ledger_id(&envelope.payment_id),
                    digest: ledger_digest(digest),
                    payer_wallet: envelope.payer.wallet_id.clone(),
                    amount_fen: envelope.amount_fen,
                    reason_code: rejected.reason.as_str().to_owned(),
                    at_ms: now_ms,
                }),
                _ => None,
            })
            .collect();
        let reservations: Vec<ReserveRequest> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Verified(envelope, verified) => Some(ReserveRequest {
                    payment_id: ledger_id(&envelope.payment_id),
                    digest: ledger_digest(&verified.digest),
                    payer_wallet: envelope.payer.wallet_id.clone(),
                    payee: ledger::Party {
                        institution_id: envelope.payee.institution_id.clone(),
                        wallet_id: envelope.payee.wallet_id.clone(),
                    },
                    amount_fen: envelope.amount_fen,
                    paid_at_ms: envelope.created_at_ms,
                    expires_at_ms: now_ms + inst.policy.reservation_ttl_ms,
                }),
                _ => None,
            })
            .collect();
        let mut recorded = if rejections.is_empty() {
            Vec::new()
        } else {
            inst.ledger.record_rejections(&rejections).await?
        }
        .into_iter();
        let mut reserved = if reservations.is_empty() {
            Vec::new()
        } else {
            inst.ledger.reserve(&reservations).await?
        }
        .into_iter();

        let mut verdicts = Vec::with_capacity(steps.len());
        for (step, input) in steps.into_iter().zip(batch) {
            let position = input.position;
            let verdict = match step {
                Step::Decided(verdict) => verdict,
                Step::Unauthenticated(envelope, digest, rejected) => {
                    Verdict::Done(match known_payment(inst, &envelope).await? {
                        // A copy of a payment already decided, rejected now only because time
                        // passed (clock, expiry, revocation) or its bytes were broken: the
                        // first answer stands.
                        Some(record) => repeat(inst, &envelope, &record, position)?,
                        // Only the submitter's institution hears of it: nobody vouched for
                        // the payee named inside.
                        None => rejection(
                            inst,
                            &envelope,
                            digest,
                            &rejected,
                            now_ms,
                            Audience::PayerOnly,
                        )?,
                    })
                }
                Step::Rejected(envelope, digest, rejected) => {
                    let result = recorded
                        .next()
                        .ok_or_else(|| short_answer("record_rejections"))?;
                    Verdict::Done(match result {
                        RejectionResult::Recorded(_) => rejection(
                            inst,
                            &envelope,
                            digest,
                            &rejected,
                            now_ms,
                            Audience::Everyone,
                        )?,
                        RejectionResult::Duplicate(record) => {
                            repeat(inst, &envelope, &record, position)?
                        }
                        RejectionResult::Conflict(_) => conflict(inst, &envelope, digest, now_ms)?,
                    })
                }
                Step::Verified(envelope, verified) => {
                    let result = reserved.next().ok_or_else(|| short_answer("reserve"))?;
                    Verdict::Done(match result {
                        ReserveResult::Reserved(record) => clearing(inst, &envelope, &record)?,
                        ReserveResult::Duplicate(record) => {
                            repeat(inst, &envelope, &record, position)?
                        }
                        ReserveResult::Conflict(_) => {
                            conflict(inst, &envelope, verified.digest, now_ms)?
                        }
                        ReserveResult::Refused(refusal) => rejection(
                            inst,
                            &envelope,
                            verified.digest,
                            &Rejected::new(
                                Reason::from_payer_refusal(&refusal),
                                format!("{refusal:?}"),
                            ),
                            now_ms,
                            Audience::Everyone,
                        )?,
                    })
                }
            };
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}

/// The payer record of an envelope's payment, if one exists for this very content.
async fn known_payment(
    inst: &Institution,
    envelope: &TransactionEnvelope,
) -> Result<Option<PaymentRecord>, StageError> {
    let record = inst
        .ledger
        .payment(&ledger_id(&envelope.payment_id), ledger::Side::Payer)
        .await?;
    let digest = ledger_digest(&envelope_digest(envelope));
    Ok(record.filter(|r| r.digest == Some(digest)))
}

/// The ledger broke its contract of one result per request: an invariant breach.
fn short_answer(call: &str) -> StageError {
    StageError::fatal(format!(
        "ledger {call} returned fewer results than requests"
    ))
}

/// Above the payer wallet's password-free limit, a verified PIN proof is required.
async fn apply_password_rule(
    inst: &Institution,
    steps: Vec<Step>,
) -> Result<Vec<Step>, StageError> {
    let mut wanted: Vec<String> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Verified(envelope, verified) if !verified.pin_verified => {
                Some(envelope.payer.wallet_id.clone())
            }
            _ => None,
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    let limits: HashMap<String, Option<i64>> = if wanted.is_empty() {
        HashMap::new()
    } else {
        let wallets = inst.ledger.wallets(&wanted).await?;
        wanted
            .into_iter()
            .zip(wallets)
            .map(|(id, wallet)| (id, wallet.map(|w| w.account.limits.password_free_limit_fen)))
            .collect()
    };
    Ok(steps
        .into_iter()
        .map(|step| match step {
            Step::Verified(envelope, verified) if !verified.pin_verified => {
                // An unknown wallet is refused by the reservation with its own reason.
                match limits.get(&envelope.payer.wallet_id) {
                    Some(Some(limit_fen)) if envelope.amount_fen > *limit_fen => {
                        let rejected = Rejected::new(
                            Reason::PinRequired,
                            format!(
                                "{} fen is above the password-free limit of {limit_fen} fen",
                                envelope.amount_fen
                            ),
                        );
                        Step::Rejected(envelope, verified.digest, rejected)
                    }
                    _ => Step::Verified(envelope, verified),
                }
            }
            other => other,
        })
        .collect())
}

/// The clearing message that asks the payee's institution to credit an envelope's payment,
/// reserved from `reserved_at_ms` until `expires_at_ms`, before the payer's institution signs
/// it (its signature covers `clearing_message_bytes`).
pub fn unsigned_clearing(
    envelope: &TransactionEnvelope,
    envelope_digest: Digest32,
    reserved_at_ms: i64,
    expires_at_ms: i64,
    institution_certificate: Vec<u8>,
) -> ClearingMessage {
    ClearingMessage {
        payment_id: envelope.payment_id,
        payer: envelope.payer.clone(),
        payee: envelope.payee.clone(),
        amount_fen: envelope.amount_fen,
        currency: envelope.currency.clone(),
        transaction_factor: envelope.transaction_factor,
        envelope_digest,
        reserved_at_ms,
        expires_at_ms,
        institution_certificate,
        institution_signature: Vec::new(),
    }
}

/// The clearing message for a reservation, signed by the payer's institution.
fn clearing(
    inst: &Institution,
    envelope: &TransactionEnvelope,
    record: &PaymentRecord,
) -> Result<Vec<Outgoing>, StageError> {
    let payee_institution = &envelope.payee.institution_id;
    if !inst.knows(payee_institution) {
        // Reserved for an institution nobody knows: the expiry sweep voids it as a timeout.
        tracing::warn!(payee = %payee_institution, "clearing for an unknown institution not sent");
        return Ok(Vec::new());
    }
    let mut message = unsigned_clearing(
        envelope,
        record
            .digest
            .map(|d| Digest32::from_bytes(d.0))
            .unwrap_or_else(|| envelope_digest(envelope)),
        // Both from the stage's clock (the expiry it chose), not the ledger's stamps.
        record
            .expires_at_ms
            .map_or(record.created_ms, |at| at - inst.policy.reservation_ttl_ms),
        record.expires_at_ms.unwrap_or(record.created_ms),
        inst.certificate(),
    );
    message.institution_signature = inst.sign(&clearing_message_bytes(&message))?;
    let subject = subjects::clearing_request(payee_institution);
    let msg_id = format!("{subject}/{}", message.payment_id);
    Ok(vec![outgoing(
        subject,
        &message,
        msg_id,
        message.payment_id.as_bytes(),
    )?])
}

/// A rejection outcome for an envelope.
fn rejection(
    inst: &Institution,
    envelope: &TransactionEnvelope,
    digest: Digest32,
    rejected: &Rejected,
    now_ms: i64,
    audience: Audience,
) -> Result<Vec<Outgoing>, StageError> {
    metrics::counter!("dcpipe_payments_rejected_total", "institution" => inst.id.clone(), "reason" => rejected.reason.as_str()).increment(1);
    outcome_messages(
        inst,
        OutcomeFacts {
            payment_id: envelope.payment_id,
            envelope_digest: digest,
            status: OutcomeStatus::Rejected,
            reason: Some(rejected.reason),
            detail: &rejected.detail,
            payer: envelope.payer.clone(),
            payee: envelope.payee.clone(),
            amount_fen: envelope.amount_fen,
            decided_at_ms: now_ms,
            stage: STAGE,
        },
        audience,
    )
}

/// The answer to a resubmission with other content under a known payment id.
fn conflict(
    inst: &Institution,
    envelope: &TransactionEnvelope,
    digest: Digest32,
    now_ms: i64,
) -> Result<Vec<Outgoing>, StageError> {
    rejection(
        inst,
        envelope,
        digest,
        &Rejected::new(
            Reason::Conflict,
            "payment id already used for other content",
        ),
        now_ms,
        Audience::PayerOnly,
    )
}

/// The answer to an identical resubmission: the first answer again, moving no money. While the
/// payment is undecided, the clearing message is sent again (the bus drops the copy by its id).
fn repeat(
    inst: &Institution,
    envelope: &TransactionEnvelope,
    record: &PaymentRecord,
    position: Position,
) -> Result<Vec<Outgoing>, StageError> {
    metrics::counter!("dcpipe_payments_duplicates_total", "institution" => inst.id.clone())
        .increment(1);
    let digest = record
        .digest
        .map(|d| Digest32::from_bytes(d.0))
        .unwrap_or_else(|| envelope_digest(envelope));
    let (status, stage) = match record.state {
        PaymentState::Reserved => return clearing(inst, envelope, record),
        PaymentState::Committed => (OutcomeStatus::Completed, super::commit::STAGE),
        PaymentState::Voided => (OutcomeStatus::Rejected, super::commit::STAGE),
        _ => (OutcomeStatus::Rejected, STAGE),
    };
    let reason =
        (status == OutcomeStatus::Rejected).then(|| outcome_reason(record.reason_code.as_deref()));
    outcome_messages(
        inst,
        OutcomeFacts {
            payment_id: envelope.payment_id,
            envelope_digest: digest,
            status,
            reason,
            detail: "repeated submission: the first outcome",
            payer: envelope.payer.clone(),
            payee: envelope.payee.clone(),
            amount_fen: envelope.amount_fen,
            decided_at_ms: record.updated_ms,
            stage,
        },
        Audience::Resubmission(position),
    )
}
