//! The payer's institution receives envelopes (flow 1, step 4): verifies them, applies the
//! password rule, reserves the amount and forwards a clearing message to the payee's
//! institution, signed by the payer's institution.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{self, PaymentRecord, RejectionResult};
use dcpipe_schemas::{ClearingMessage, Digest32, TransactionEnvelope};

use super::{
    Audience, EnvelopeRejection, Institution, VerifiedEnvelope, ledger_digest, ledger_id,
    verify_envelope,
};
use crate::clearing::PaymentIntent;
use crate::clearing::payer::{
    Arrival, answer_reservation, conflict, record_rejections, rejection, repeat, reserve,
    short_answer,
};
use crate::protocol::{envelope_digest, submission_digest};
use crate::reason::{Reason, Rejected};
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
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
        let intents: Vec<Option<PaymentIntent>> = steps
            .iter()
            .map(|step| match step {
                Step::Decided(_) => None,
                Step::Unauthenticated(envelope, digest, _)
                | Step::Rejected(envelope, digest, _) => {
                    Some(PaymentIntent::of_envelope(envelope, *digest))
                }
                Step::Verified(envelope, verified) => {
                    Some(PaymentIntent::of_envelope(envelope, verified.digest))
                }
            })
            .collect();

        // One ledger transaction for the recorded rejections, one for the reservations.
        let rejections: Vec<(&PaymentIntent, &Rejected)> = steps
            .iter()
            .zip(&intents)
            .filter_map(|(step, intent)| match (step, intent) {
                (Step::Rejected(_, _, rejected), Some(intent)) => Some((intent, rejected)),
                _ => None,
            })
            .collect();
        let reservations: Vec<&PaymentIntent> = steps
            .iter()
            .zip(&intents)
            .filter_map(|(step, intent)| match (step, intent) {
                (Step::Verified(..), Some(intent)) => Some(intent),
                _ => None,
            })
            .collect();
        let mut recorded = record_rejections(inst, &rejections, now_ms)
            .await?
            .into_iter();
        let mut reserved = reserve(inst, &reservations, now_ms).await?.into_iter();

        let mut verdicts = Vec::with_capacity(steps.len());
        for ((step, intent), input) in steps.into_iter().zip(&intents).zip(batch) {
            let arrival = Arrival::of(input);
            let verdict = match (step, intent) {
                (Step::Decided(verdict), _) => verdict,
                (Step::Unauthenticated(envelope, digest, rejected), Some(intent)) => {
                    Verdict::Done(match known_payment(inst, &envelope).await? {
                        // A copy of a payment already decided, rejected now only because time
                        // passed (clock, expiry, revocation) or its bytes were broken: the
                        // first answer stands.
                        Some(record) => repeat(inst, intent, &record, arrival, STAGE)?,
                        // Only the submitter's institution hears of it: nobody vouched for
                        // the payee named inside.
                        None => rejection(
                            inst,
                            intent,
                            digest,
                            &rejected,
                            now_ms,
                            Audience::PayerOnly,
                            STAGE,
                        )?,
                    })
                }
                (Step::Rejected(_, digest, rejected), Some(intent)) => {
                    let result = recorded
                        .next()
                        .ok_or_else(|| short_answer("record_rejections"))?;
                    Verdict::Done(match result {
                        RejectionResult::Recorded(_) => rejection(
                            inst,
                            intent,
                            digest,
                            &rejected,
                            now_ms,
                            Audience::Everyone,
                            STAGE,
                        )?,
                        RejectionResult::Duplicate(record) => {
                            repeat(inst, intent, &record, arrival, STAGE)?
                        }
                        RejectionResult::Conflict(_) => {
                            conflict(inst, intent, digest, now_ms, STAGE)?
                        }
                    })
                }
                (Step::Verified(..), Some(intent)) => {
                    let result = reserved.next().ok_or_else(|| short_answer("reserve"))?;
                    Verdict::Done(answer_reservation(
                        inst, intent, &result, arrival, now_ms, STAGE,
                    )?)
                }
                (_, None) => return Err(StageError::fatal("an envelope step without its intent")),
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
/// it (its signature covers `clearing_message_bytes`): the envelope's
/// [`PaymentIntent::unsigned_clearing`].
pub fn unsigned_clearing(
    envelope: &TransactionEnvelope,
    envelope_digest: Digest32,
    reserved_at_ms: i64,
    expires_at_ms: i64,
    institution_certificate: Vec<u8>,
) -> ClearingMessage {
    PaymentIntent::of_envelope(envelope, envelope_digest).unsigned_clearing(
        envelope_digest,
        reserved_at_ms,
        expires_at_ms,
        institution_certificate,
    )
}
