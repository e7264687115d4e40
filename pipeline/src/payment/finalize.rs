//! The payee's institution applies the payer institution's final decision: a pending credit
//! becomes money in the payee's wallet, or is reversed. A void that arrives before its
//! clearing message leaves a tombstone, so the late clearing message is refused.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{Finalization, FinalizeResult, PaymentRecord, PaymentState};
use dcpipe_schemas::{OutcomeStatus, PaymentOutcome};

use super::{Institution, ledger_digest, ledger_id};
use crate::clearing::verify::verify_outcome;
use crate::reason::Reason;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "finalize";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the payee institution's finalization: credit or reverse on the final outcome",
        flow: Flow::Payment,
        consumes: subjects::txn_result,
        publishes: |_, _| Vec::new(),
        build: Build::Institution(|institution| Arc::new(FinalizeStage::new(institution))),
    }
}

/// The payee institution's application of final outcomes.
#[derive(Debug, Clone)]
pub struct FinalizeStage {
    institution: Arc<Institution>,
}

impl FinalizeStage {
    /// The stage for `institution`.
    pub fn new(institution: Arc<Institution>) -> Self {
        FinalizeStage { institution }
    }
}

/// What an outcome means for this institution's ledger.
enum Applies {
    /// Not a decision about a credit held here: nothing to do.
    Nothing,
    /// Finalize this payment.
    Finalize(Box<PaymentOutcome>, Finalization),
}

fn read(inst: &Institution, outcome: PaymentOutcome, now_ms: i64) -> Result<Applies, Verdict> {
    // Only the payer institution's decision after clearing concerns a credit held here;
    // rejections before clearing (and answers to resubmissions) never reached this ledger.
    if outcome.payee.institution_id != inst.id || outcome.stage != super::commit::STAGE {
        return Ok(Applies::Nothing);
    }
    verify_outcome(&outcome, &inst.verifier, now_ms)
        .map_err(|rejected| Verdict::dead_letter(rejected.reason, rejected.detail))?;
    let finalization = match outcome.status {
        OutcomeStatus::Completed => Finalization::Completed,
        OutcomeStatus::Rejected => Finalization::Voided {
            reason_code: outcome
                .reason_code
                .as_deref()
                .and_then(Reason::parse)
                .unwrap_or(Reason::InvalidRequest)
                .as_str()
                .to_owned(),
        },
    };
    Ok(Applies::Finalize(Box::new(outcome), finalization))
}

#[async_trait]
impl Stage for FinalizeStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.institution.id
    }

    fn subject(&self) -> String {
        subjects::txn_result(&self.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let inst = &self.institution;
        let now_ms = inst.clock.now_ms();
        let read: Vec<Result<Applies, Verdict>> = batch
            .iter()
            .map(|input| {
                let outcome = dcpipe_schemas::decode::<PaymentOutcome>(input.payload)
                    .map_err(|e| Verdict::undecodable(&e))?;
                read(inst, outcome, now_ms)
            })
            .collect();
        let finalizations: Vec<_> = read
            .iter()
            .filter_map(|r| match r {
                Ok(Applies::Finalize(outcome, finalization)) => {
                    Some((ledger_id(&outcome.payment_id), finalization.clone()))
                }
                _ => None,
            })
            .collect();
        let mut results = if finalizations.is_empty() {
            Vec::new()
        } else {
            inst.ledger.finalize(&finalizations).await?
        }
        .into_iter();
        let mut verdicts = Vec::with_capacity(batch.len());
        for item in read {
            verdicts.push(match item {
                Err(verdict) => verdict,
                Ok(Applies::Nothing) => Verdict::Done(Vec::new()),
                Ok(Applies::Finalize(outcome, _)) => {
                    let result = results.next().ok_or_else(|| {
                        StageError::fatal("ledger returned fewer finalizations than requests")
                    })?;
                    count(inst, &result);
                    match contradiction(&outcome, &result) {
                        None => Verdict::Done(Vec::new()),
                        Some((reason, detail)) => Verdict::dead_letter(reason, detail),
                    }
                }
            });
        }
        Ok(verdicts)
    }
}

fn count(inst: &Institution, result: &FinalizeResult) {
    let kind = match result {
        FinalizeResult::Credited(_) => "credited",
        FinalizeResult::Reversed(_) => "reversed",
        FinalizeResult::Tombstoned(_) => "tombstoned",
        FinalizeResult::AlreadyFinal(_) => "repeat",
        FinalizeResult::NotFound => "not_found",
    };
    metrics::counter!("dcpipe_payments_finalized_total", "institution" => inst.id.clone(), "result" => kind).increment(1);
}

/// What the payer institution's final decision contradicts in this ledger, if anything: one
/// side moved money the other did not, or they disagree about the terms of the money moved.
fn contradiction(outcome: &PaymentOutcome, result: &FinalizeResult) -> Option<(Reason, String)> {
    let state = |record: &PaymentRecord| {
        format!(
            "the payee's record is {}{}",
            record.state.as_str(),
            record
                .reason_code
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    };
    match (outcome.status, result) {
        (OutcomeStatus::Completed, FinalizeResult::NotFound) => Some((
            Reason::CompletedUnknown,
            "completed by the payer's institution; the payee's ledger has no record of it"
                .to_owned(),
        )),
        (OutcomeStatus::Completed, FinalizeResult::Credited(record))
        | (OutcomeStatus::Completed, FinalizeResult::AlreadyFinal(record))
            if record.state == PaymentState::Credited =>
        {
            terms_mismatch(outcome, record)
        }
        (
            OutcomeStatus::Completed,
            FinalizeResult::AlreadyFinal(record)
            | FinalizeResult::Reversed(record)
            | FinalizeResult::Tombstoned(record),
        ) => Some((
            Reason::CompletedVoided,
            format!("completed by the payer's institution; {}", state(record)),
        )),
        (OutcomeStatus::Rejected, FinalizeResult::AlreadyFinal(record))
            if record.state == PaymentState::Credited =>
        {
            Some((
                Reason::VoidedCredited,
                format!("voided by the payer's institution; {}", state(record)),
            ))
        }
        _ => None,
    }
}

/// Whether the credited record is for other terms than the outcome says.
fn terms_mismatch(outcome: &PaymentOutcome, record: &PaymentRecord) -> Option<(Reason, String)> {
    let digest = Some(ledger_digest(&outcome.envelope_digest));
    (record.amount_fen != outcome.amount_fen || record.digest != digest).then(|| {
        (
            Reason::TermsMismatch,
            format!(
                "completed for {} fen; the payee credited {} fen{}",
                outcome.amount_fen,
                record.amount_fen,
                if record.digest == digest {
                    ""
                } else {
                    " of another envelope"
                }
            ),
        )
    })
}
