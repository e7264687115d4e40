//! The payee's institution receives clearing messages (flow 1, step 5): verifies the payer
//! institution's signature, records a pending credit on the payee's wallet and answers.
//!
//! The credit stays pending, not spendable, until the payer's institution tells its final
//! decision ([`super::finalize`]): the payer's institution coordinates, so money is never
//! credited on one side and released on the other.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::{self, CreditRequest, CreditResult, PaymentRecord, PaymentState};
use dcpipe_schemas::{ClearingMessage, ClearingResponse, ClearingStatus};

use super::{Institution, ledger_digest, ledger_id};
use crate::clearing::verify::verify_clearing_message;
use crate::protocol::clearing_response_bytes;
use crate::reason::Reason;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict, outgoing};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "payee";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the payee institution's intake of clearing messages: pending credit, answer",
        flow: Flow::Payment,
        consumes: subjects::clearing_request,
        publishes: |_, institutions| institutions.iter().map(|oi| subjects::clearing_response(oi)).collect(),
        build: Build::Institution(|institution| Arc::new(PayeeStage::new(institution))),
    }
}

/// The payee institution's intake of clearing messages.
#[derive(Debug, Clone)]
pub struct PayeeStage {
    institution: Arc<Institution>,
}

impl PayeeStage {
    /// The stage for `institution`.
    pub fn new(institution: Arc<Institution>) -> Self {
        PayeeStage { institution }
    }
}

/// Checks a clearing message addressed to `inst` ([`verify_clearing_message`]), then that
/// the reservation will not lapse before the answer.
fn check(inst: &Institution, message: &ClearingMessage, now_ms: i64) -> Check {
    if let Err(rejected) = verify_clearing_message(message, &inst.id, &inst.verifier, now_ms) {
        return Check::Forged(rejected.reason, rejected.detail);
    }
    if now_ms > message.expires_at_ms - inst.policy.expiry_margin_ms {
        return Check::Reject(Reason::Timeout);
    }
    Check::Credit
}

enum Check {
    /// Not authentic or not ours: dead-letter, no answer.
    Forged(Reason, String),
    /// Authentic but refused.
    Reject(Reason),
    /// Authentic: record the pending credit.
    Credit,
}

#[async_trait]
impl Stage for PayeeStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.institution.id
    }

    fn subject(&self) -> String {
        subjects::clearing_request(&self.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let inst = &self.institution;
        let now_ms = inst.clock.now_ms();
        let mut decoded: Vec<Result<(ClearingMessage, Check), Verdict>> = batch
            .iter()
            .map(
                |input| match dcpipe_schemas::decode::<ClearingMessage>(input.payload) {
                    Err(e) => Err(Verdict::undecodable(&e)),
                    Ok(message) => {
                        let check = check(inst, &message, now_ms);
                        Ok((message, check))
                    }
                },
            )
            .collect();
        let credits: Vec<CreditRequest> = decoded
            .iter()
            .filter_map(|item| match item {
                Ok((message, Check::Credit)) => Some(CreditRequest {
                    payment_id: ledger_id(&message.payment_id),
                    digest: ledger_digest(&message.envelope_digest),
                    payee_wallet: message.payee.wallet_id.clone(),
                    payer: ledger::Party {
                        institution_id: message.payer.institution_id.clone(),
                        wallet_id: message.payer.wallet_id.clone(),
                    },
                    amount_fen: message.amount_fen,
                    at_ms: now_ms,
                }),
                _ => None,
            })
            .collect();
        let mut results = if credits.is_empty() {
            Vec::new()
        } else {
            inst.ledger.credit_pending(&credits).await?
        }
        .into_iter();

        let mut verdicts = Vec::with_capacity(batch.len());
        for item in decoded.drain(..) {
            let verdict = match item {
                Err(verdict) => verdict,
                Ok((_, Check::Forged(reason, detail))) => Verdict::dead_letter(reason, detail),
                Ok((message, Check::Reject(reason))) => {
                    Verdict::Done(respond(inst, &message, Some(reason), now_ms)?)
                }
                Ok((message, Check::Credit)) => {
                    let result = results.next().ok_or_else(|| {
                        StageError::fatal("ledger returned fewer credit results than requests")
                    })?;
                    let reason = match &result {
                        CreditResult::Pending(_) => None,
                        CreditResult::Duplicate(record) => repeated_reason(record),
                        CreditResult::Conflict(_) => Some(Reason::Conflict),
                        CreditResult::Refused(refusal) => Some(Reason::from_payee_refusal(refusal)),
                        CreditResult::AlreadyVoided(_) => Some(Reason::Timeout),
                    };
                    Verdict::Done(respond(inst, &message, reason, now_ms)?)
                }
            };
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}

/// The first answer to a clearing message seen before.
fn repeated_reason(record: &PaymentRecord) -> Option<Reason> {
    match record.state {
        PaymentState::PendingCredit | PaymentState::Credited => None,
        // The payee ledger records its refusals under its own `ledger.*` codes.
        PaymentState::Rejected => Some(
            record
                .reason_code
                .as_deref()
                .and_then(Reason::of_payee_record)
                .unwrap_or(Reason::InvalidRequest),
        ),
        _ => Some(Reason::Timeout),
    }
}

/// The signed clearing response to the payer's institution.
fn respond(
    inst: &Institution,
    message: &ClearingMessage,
    reason: Option<Reason>,
    now_ms: i64,
) -> Result<Vec<Outgoing>, StageError> {
    let payer_institution = &message.payer.institution_id;
    if !inst.knows(payer_institution) {
        return Ok(Vec::new());
    }
    let mut response = ClearingResponse {
        payment_id: message.payment_id,
        payer_institution_id: payer_institution.clone(),
        payee_institution_id: inst.id.clone(),
        status: if reason.is_none() {
            ClearingStatus::Accepted
        } else {
            ClearingStatus::Rejected
        },
        reason_code: reason.map(|r| r.as_str().to_owned()),
        amount_fen: message.amount_fen,
        responded_at_ms: now_ms,
        institution_certificate: inst.certificate(),
        institution_signature: Vec::new(),
    };
    response.institution_signature = inst.sign(&clearing_response_bytes(&response))?;
    let subject = subjects::clearing_response(payer_institution);
    let msg_id = format!("{subject}/{}", response.payment_id);
    Ok(vec![outgoing(
        subject,
        &response,
        msg_id,
        response.payment_id.as_bytes(),
    )?])
}
