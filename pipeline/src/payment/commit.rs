//! The payer's institution decides (flow 1, step 5, its side): on the payee institution's
//! answer it commits or voids the reservation, and voids every reservation whose expiry passed
//! without an answer. Its decision is final; both institutions and their terminals are told,
//! and completed interbank payments go to settlement.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::{DECIDED_LIST_MAX, PaymentRecord, PaymentState, Side, Transition};
use dcpipe_schemas::{ClearingResponse, Digest32, OutcomeStatus, PartyRef};

use super::{
    Audience, Institution, OutcomeFacts, ledger_id, outcome_messages, outcome_reason, schema_id,
};
use crate::clearing::verify::{ResponseDecision as Decision, verify_clearing_response};
use crate::reason::Reason;
use crate::registry::{Build, Flow, StageDescriptor};
use crate::runtime::{Input, Stage, StageError, Verdict};
use crate::subjects;

/// Name of this stage.
pub const STAGE: &str = "commit";

inventory::submit! {
    StageDescriptor {
        name: STAGE,
        summary: "the payer institution's decisions: commit or void, expiry sweep, outcomes",
        flow: Flow::Payment,
        consumes: subjects::clearing_response,
        // Outcomes to both institutions, completed interbank payments to settlement.
        publishes: |_, institutions| {
            institutions
                .iter()
                .map(|oi| subjects::txn_result(oi))
                .chain([subjects::SETTLEMENT_CLEARING.to_owned()])
                .collect()
        },
        build: Build::Institution(|institution| Arc::new(CommitStage::new(institution))),
    }
}

/// Reservations voided per sweep at most; the rest wait for the next tick.
pub const EXPIRY_SWEEP_MAX: usize = 1024;

/// How far back decisions are announced again when the stage starts.
pub const REANNOUNCE_MS: i64 = 5 * 60 * 1000;

/// How often reservations are checked for expiry.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The payer institution's decisions.
#[derive(Debug)]
pub struct CommitStage {
    institution: Arc<Institution>,
    /// Whether the decisions of the recent past were announced again since this start.
    reannounced: AtomicBool,
}

impl CommitStage {
    /// The stage for `institution`.
    pub fn new(institution: Arc<Institution>) -> Self {
        CommitStage {
            institution,
            reannounced: AtomicBool::new(false),
        }
    }

    /// At start, announces again every decision of the last [`REANNOUNCE_MS`]: a previous
    /// process may have decided (an expiry sweep) and stopped before publishing. Repeats are
    /// dropped by the bus (same message ids) and are no-ops downstream.
    async fn reannounce_recent(&self) -> Result<Vec<Outgoing>, StageError> {
        let inst = &self.institution;
        let since_ms = inst.clock.now_ms() - REANNOUNCE_MS;
        let mut outputs = Vec::new();
        for record in inst
            .ledger
            .decided_since(since_ms, DECIDED_LIST_MAX)
            .await?
        {
            crate::wallet::stages::give_back_voided(inst, &record).await?;
            outputs.extend(final_outcome(inst, &record)?);
        }
        Ok(outputs)
    }

    /// Voids every reservation whose expiry has passed and returns the outcomes to publish.
    pub async fn sweep_expired(&self) -> Result<Vec<Outgoing>, StageError> {
        let inst = &self.institution;
        let now_ms = inst.clock.now_ms();
        let expired = inst
            .ledger
            .expired_reservations(now_ms, EXPIRY_SWEEP_MAX)
            .await?;
        // What an operator alerts on: reservations found past their expiry, and when the
        // sweep last ran to its end (a sweep that stops leaves money held).
        let held = metrics::gauge!(crate::metrics::PAYMENTS_HELD_PAST_EXPIRY, "institution" => inst.id.clone());
        held.set(expired.len() as f64);
        if expired.is_empty() {
            mark_sweep(inst, now_ms);
            return Ok(Vec::new());
        }
        let voids: Vec<_> = expired
            .iter()
            .map(|record| (record.payment_id, Reason::Timeout.as_str().to_owned()))
            .collect();
        let transitions = inst.ledger.void(&voids).await?;
        let mut outputs = Vec::new();
        for transition in transitions {
            if let Transition::Applied(record) = transition {
                crate::wallet::stages::give_back_voided(inst, &record).await?;
                metrics::counter!("dcpipe_payments_expired_total", "institution" => inst.id.clone()).increment(1);
                outputs.extend(final_outcome(inst, &record)?);
            }
        }
        mark_sweep(inst, now_ms);
        Ok(outputs)
    }
}

/// Records that the expiry sweep of `inst` ran to its end at `now_ms`.
fn mark_sweep(inst: &Institution, now_ms: i64) {
    metrics::gauge!(crate::metrics::EXPIRY_SWEEP_TIMESTAMP_SECONDS, "institution" => inst.id.clone())
        .set(now_ms as f64 / 1000.0);
}

fn authenticate(
    inst: &Institution,
    response: &ClearingResponse,
    now_ms: i64,
) -> Result<Decision, Verdict> {
    verify_clearing_response(response, &inst.id, &inst.verifier, now_ms)
        .map(|verified| verified.decision)
        .map_err(|rejected| Verdict::dead_letter(rejected.reason, rejected.detail))
}

#[async_trait]
impl Stage for CommitStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn owner(&self) -> &str {
        &self.institution.id
    }

    fn subject(&self) -> String {
        subjects::clearing_response(&self.institution.id)
    }

    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError> {
        let inst = &self.institution;
        let now_ms = inst.clock.now_ms();
        let decided: Vec<Result<(ClearingResponse, Decision), Verdict>> = batch
            .iter()
            .map(|input| {
                let response = dcpipe_schemas::decode::<ClearingResponse>(input.payload)
                    .map_err(|e| Verdict::undecodable(&e))?;
                let decision = authenticate(inst, &response, now_ms)?;
                Ok((response, decision))
            })
            .collect();
        let commits: Vec<_> = decided
            .iter()
            .filter_map(|d| match d {
                Ok((response, Decision::Commit)) => Some(ledger_id(&response.payment_id)),
                _ => None,
            })
            .collect();
        let voids: Vec<_> = decided
            .iter()
            .filter_map(|d| match d {
                Ok((response, Decision::Void(reason))) => {
                    Some((ledger_id(&response.payment_id), reason.as_str().to_owned()))
                }
                _ => None,
            })
            .collect();
        let mut committed = if commits.is_empty() {
            Vec::new()
        } else {
            inst.ledger.commit(&commits).await?
        }
        .into_iter();
        let mut voided = if voids.is_empty() {
            Vec::new()
        } else {
            inst.ledger.void(&voids).await?
        }
        .into_iter();
        let mut verdicts = Vec::with_capacity(batch.len());
        for item in decided {
            let (response, decision) = match item {
                Err(verdict) => {
                    verdicts.push(verdict);
                    continue;
                }
                Ok(decided) => decided,
            };
            let transition = match decision {
                Decision::Commit => committed.next(),
                Decision::Void(_) => voided.next(),
            }
            .ok_or_else(|| StageError::fatal("ledger returned fewer transitions than requests"))?;
            verdicts.push(match transition {
                Transition::NotFound => Verdict::dead_letter(
                    Reason::UnknownPayment,
                    "no reservation under this payment id",
                ),
                // A repeat (or an answer after the expiry voided it) repeats the final outcome;
                // a contradiction repeats it too (the first decision stands), dead-lettered.
                Transition::Applied(record) | Transition::AlreadyFinal(record) => {
                    crate::wallet::stages::give_back_voided(inst, &record).await?;
                    let outputs = final_outcome(inst, &record)?;
                    match contradiction(&response, decision, &record) {
                        None => Verdict::Done(outputs),
                        Some((reason, detail)) => Verdict::DeadLetter {
                            reason,
                            detail,
                            outputs,
                        },
                    }
                }
            });
        }
        Ok(verdicts)
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(EXPIRY_SWEEP_INTERVAL)
    }

    async fn tick(&self) -> Result<Vec<Outgoing>, StageError> {
        let mut outputs = Vec::new();
        if !self.reannounced.load(Ordering::Acquire) {
            outputs = self.reannounce_recent().await?;
            self.reannounced.store(true, Ordering::Release);
        }
        outputs.extend(self.sweep_expired().await?);
        Ok(outputs)
    }
}

/// What an authenticated response contradicts in this institution's record of the payment, if
/// anything: the payee's institution answered for other terms, answered both ways, or answered
/// for a payment this institution rejected and never sent.
///
/// A decision met by the other one because the reservation expired first is no contradiction:
/// an acceptance that arrives after the expiry sweep voided the hold, or a payee that refuses a
/// redelivered clearing message as too late after it accepted the first, tell of time passing.
fn contradiction(
    response: &ClearingResponse,
    decision: Decision,
    record: &PaymentRecord,
) -> Option<(Reason, String)> {
    if record.state == PaymentState::Rejected {
        return Some((
            Reason::UnknownPayment,
            "a response for a payment this institution rejected and never forwarded".to_owned(),
        ));
    }
    if response.amount_fen != record.amount_fen {
        return Some((
            Reason::TermsMismatch,
            format!(
                "response for {} fen; {} fen were reserved",
                response.amount_fen, record.amount_fen
            ),
        ));
    }
    let voided_for = record
        .reason_code
        .as_deref()
        .and_then(Reason::of_payer_record);
    match (decision, record.state) {
        (Decision::Commit, PaymentState::Voided) if voided_for != Some(Reason::Timeout) => Some((
            Reason::DecisionChanged,
            format!(
                "accepted after the payee's institution refused it ({}); it stays voided",
                voided_for.unwrap_or(Reason::InvalidRequest)
            ),
        )),
        (Decision::Void(reason), PaymentState::Committed) if reason != Reason::Timeout => Some((
            Reason::DecisionChanged,
            format!(
                "refused ({reason}) after the payee's institution accepted it; it stays committed"
            ),
        )),
        _ => None,
    }
}

/// The outcome of a decided payer-side record, to both institutions and settlement.
pub(crate) fn final_outcome(
    inst: &Institution,
    record: &PaymentRecord,
) -> Result<Vec<Outgoing>, StageError> {
    debug_assert_eq!(record.side, Side::Payer);
    let (status, reason) = match record.state {
        PaymentState::Committed => {
            metrics::counter!("dcpipe_payments_completed_total", "institution" => inst.id.clone())
                .increment(1);
            (OutcomeStatus::Completed, None)
        }
        PaymentState::Voided => (
            OutcomeStatus::Rejected,
            Some(outcome_reason(record.reason_code.as_deref())),
        ),
        // Not decided here (reserved, or rejected by the payer stage): nothing to tell.
        _ => return Ok(Vec::new()),
    };
    let Some(counterparty) = record.counterparty.clone() else {
        return Ok(Vec::new());
    };
    let status_label = if status == OutcomeStatus::Completed {
        "completed"
    } else {
        "rejected"
    };
    // Envelope time to decision; a clock behind the envelope's counts as 0.
    let decision_ms = record.updated_ms.saturating_sub(record.paid_at_ms).max(0);
    metrics::histogram!(crate::metrics::PAYMENT_DECISION_SECONDS, "status" => status_label)
        .record(decision_ms as f64 / 1000.0);
    outcome_messages(
        inst,
        OutcomeFacts {
            payment_id: schema_id(&record.payment_id),
            envelope_digest: Digest32::from_bytes(record.digest.map(|d| d.0).unwrap_or([0; 32])),
            status,
            reason,
            detail: if status == OutcomeStatus::Completed {
                "cleared"
            } else {
                "voided by the payer's institution"
            },
            payer: PartyRef {
                institution_id: inst.id.clone(),
                wallet_id: record.wallet_id.clone().unwrap_or_default(),
            },
            payee: PartyRef {
                institution_id: counterparty.institution_id,
                wallet_id: counterparty.wallet_id,
            },
            amount_fen: record.amount_fen,
            decided_at_ms: record.updated_ms,
            stage: STAGE,
        },
        Audience::Everyone,
    )
}
