//! The payee's institution applies the payer institution's final decision: a pending credit
//! becomes money in the payee's wallet, or is reversed. A void that arrives before its
//! clearing message leaves a tombstone, so the late clearing message is refused.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::ledger::{Finalization, FinalizeResult};
use dcpipe_schemas::{OutcomeStatus, PaymentOutcome};

use super::{Institution, ledger_id};
use crate::pki::Role;
use crate::protocol::payment_outcome_bytes;
use crate::reason::RejectReason;
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "finalize";

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
    let identity = inst
        .verifier
        .verify(
            &outcome.institution_certificate,
            now_ms,
            Role::InstitutionSigner,
        )
        .map_err(|e| {
            Verdict::dead_letter(
                RejectReason::Certificate(e.kind()).code(),
                format!("deciding institution certificate: {e}"),
            )
        })?;
    if identity.institution_id() != outcome.decided_by
        || outcome.decided_by != outcome.payer.institution_id
    {
        return Err(Verdict::dead_letter(
            RejectReason::PartyMismatch.code(),
            format!(
                "outcome decided by {} for payer institution {}, signed by {}",
                outcome.decided_by,
                outcome.payer.institution_id,
                identity.institution_id()
            ),
        ));
    }
    identity
        .public_key()
        .verify(
            &payment_outcome_bytes(&outcome),
            &outcome.institution_signature,
        )
        .map_err(|e| {
            Verdict::dead_letter(RejectReason::InstitutionSignature.code(), e.to_string())
        })?;
    let finalization = match outcome.status {
        OutcomeStatus::Completed => Finalization::Completed,
        OutcomeStatus::Rejected => Finalization::Voided {
            reason_code: outcome
                .reason_code
                .clone()
                .unwrap_or_else(|| RejectReason::InvalidRequest.code().to_owned()),
        },
    };
    Ok(Applies::Finalize(Box::new(outcome), finalization))
}

#[async_trait]
impl Stage for FinalizeStage {
    fn name(&self) -> &str {
        STAGE
    }

    fn subject(&self) -> String {
        subjects::txn_result(&self.institution.id)
    }

    fn group(&self) -> String {
        format!("{}-{STAGE}", self.institution.id)
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
        let results = if finalizations.is_empty() {
            Vec::new()
        } else {
            inst.ledger.finalize(&finalizations).await?
        };
        for result in &results {
            let kind = match result {
                FinalizeResult::Credited(_) => "credited",
                FinalizeResult::Reversed(_) => "reversed",
                FinalizeResult::Tombstoned(_) => "tombstoned",
                FinalizeResult::AlreadyFinal(_) => "repeat",
                FinalizeResult::NotFound => "not_found",
            };
            metrics::counter!("dcpipe_payments_finalized_total", "institution" => inst.id.clone(), "result" => kind).increment(1);
        }
        Ok(read
            .into_iter()
            .map(|r| match r {
                Err(verdict) => verdict,
                Ok(_) => Verdict::Done(Vec::new()),
            })
            .collect())
    }
}
