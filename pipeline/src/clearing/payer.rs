//! The payer institution's side of the clearing path, for any kind of payment: reserve the
//! intents of a batch in one ledger transaction, then answer each: a clearing message signed by
//! the institution, the first answer again for a repeat, or a rejection.

use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::{
    PaymentRecord, PaymentState, RejectionResult, ReserveRequest, ReserveResult,
};
use dcpipe_schemas::{Digest32, OutcomeStatus};

use super::{Audience, Institution, OutcomeFacts, PaymentIntent, outcome_messages, outcome_reason};
use crate::protocol::clearing_message_bytes;
use crate::reason::{Reason, Rejected};
use crate::runtime::{Input, StageError, outgoing};
use crate::subjects;

/// The stage that decides commits and voids: outcomes of decided payments name it.
const DECIDING_STAGE: &str = crate::payment::commit::STAGE;

/// What the payer's institution answers to one reservation result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationAnswer {
    /// Held now: send the clearing message.
    Clear,
    /// Seen before with the same content: the first answer again, moving no money (the
    /// clearing message again while it is undecided).
    Repeat,
    /// The payment id was used before for other content: refused, to the payer's institution
    /// only, so the first payment's outcome stands.
    Conflict,
    /// The ledger refused it (limits, funds, the wallet): a rejection to both institutions.
    Reject(Rejected),
}

/// The answer to a reservation result: a pure function of the ledger's answer.
pub fn decide_reservation(result: &ReserveResult) -> ReservationAnswer {
    match result {
        ReserveResult::Reserved(_) => ReservationAnswer::Clear,
        ReserveResult::Duplicate(_) => ReservationAnswer::Repeat,
        ReserveResult::Conflict(_) => ReservationAnswer::Conflict,
        ReserveResult::Refused(refusal) => ReservationAnswer::Reject(Rejected::new(
            Reason::from_payer_refusal(refusal),
            format!("{refusal:?}"),
        )),
    }
}

/// The ledger broke its contract of one result per request: an invariant breach.
pub fn short_answer(call: &str) -> StageError {
    StageError::fatal(format!(
        "ledger {call} returned fewer results than requests"
    ))
}

/// Reserves every intent in one ledger transaction at `now_ms`; one result per intent, in
/// order.
pub async fn reserve(
    inst: &Institution,
    intents: &[&PaymentIntent],
    now_ms: i64,
) -> Result<Vec<ReserveResult>, StageError> {
    if intents.is_empty() {
        return Ok(Vec::new());
    }
    let requests: Vec<ReserveRequest> = intents
        .iter()
        .map(|intent| intent.reserve_request(now_ms, inst.policy.reservation_ttl_ms))
        .collect();
    let results = inst.ledger.reserve(&requests).await?;
    if results.len() != requests.len() {
        return Err(short_answer("reserve"));
    }
    Ok(results)
}

/// Records the rejections of intents refused before the ledger, in one transaction.
pub async fn record_rejections(
    inst: &Institution,
    rejected: &[(&PaymentIntent, &Rejected)],
    now_ms: i64,
) -> Result<Vec<RejectionResult>, StageError> {
    if rejected.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<_> = rejected
        .iter()
        .map(|(intent, rejected)| intent.rejection_record(rejected, now_ms))
        .collect();
    let results = inst.ledger.record_rejections(&records).await?;
    if results.len() != records.len() {
        return Err(short_answer("record_rejections"));
    }
    Ok(results)
}

/// The messages answering one reservation result of `intent`, which arrived as `arrival` says
/// (a bus position is a first delivery); `stage` names the stage that rejects.
pub fn answer_reservation(
    inst: &Institution,
    intent: &PaymentIntent,
    result: &ReserveResult,
    arrival: impl Into<Arrival>,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    match (decide_reservation(result), result) {
        (ReservationAnswer::Clear, ReserveResult::Reserved(record)) => {
            clearing(inst, intent, record)
        }
        (ReservationAnswer::Repeat, ReserveResult::Duplicate(record)) => {
            repeat(inst, intent, record, arrival.into(), stage)
        }
        (ReservationAnswer::Reject(rejected), _) => rejection(
            inst,
            intent,
            intent.authorization.digest,
            &rejected,
            now_ms,
            Audience::Everyone,
            stage,
        ),
        _ => conflict(inst, intent, intent.authorization.digest, now_ms, stage),
    }
}

/// The clearing message for a reservation, signed by the payer's institution.
pub fn clearing(
    inst: &Institution,
    intent: &PaymentIntent,
    record: &PaymentRecord,
) -> Result<Vec<Outgoing>, StageError> {
    let payee_institution = &intent.payee.institution_id;
    if !inst.knows(payee_institution) {
        // Reserved for an institution nobody knows: the expiry sweep voids it as a timeout.
        tracing::warn!(payee = %payee_institution, "clearing for an unknown institution not sent");
        return Ok(Vec::new());
    }
    let mut message = intent.unsigned_clearing(
        record
            .digest
            .map(|d| Digest32::from_bytes(d.0))
            .unwrap_or(intent.authorization.digest),
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

/// A rejection outcome for an intent, its content named by `digest`.
pub fn rejection(
    inst: &Institution,
    intent: &PaymentIntent,
    digest: Digest32,
    rejected: &Rejected,
    now_ms: i64,
    audience: Audience,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    metrics::counter!("dcpipe_payments_rejected_total", "institution" => inst.id.clone(), "reason" => rejected.reason.as_str()).increment(1);
    outcome_messages(
        inst,
        OutcomeFacts {
            payment_id: intent.payment_id,
            envelope_digest: digest,
            status: OutcomeStatus::Rejected,
            reason: Some(rejected.reason),
            detail: &rejected.detail,
            payer: intent.payer.clone(),
            payee: intent.payee.clone(),
            amount_fen: intent.amount_fen,
            decided_at_ms: now_ms,
            stage,
        },
        audience,
    )
}

/// The answer to a resubmission with other content under a known payment id.
pub fn conflict(
    inst: &Institution,
    intent: &PaymentIntent,
    digest: Digest32,
    now_ms: i64,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    rejection(
        inst,
        intent,
        digest,
        &Rejected::new(
            Reason::Conflict,
            "payment id already used for other content",
        ),
        now_ms,
        Audience::PayerOnly,
        stage,
    )
}

/// How a copy of a payment the ledger already knows reached the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A message stored at this bus position, delivered for the first time: the terminal
    /// submitted again and waits for an answer.
    Submitted(Position),
    /// A stored message delivered again (its ack was lost in a broker restart, or the member
    /// holding it stopped): no new submission, so nobody waits for a new answer.
    Redelivered,
    /// An offline payment uploaded again (by its other party, in a later key set, or in a key
    /// set delivered again): the uploading wallet's answer is its WalletSyncResult, and the
    /// outcome of a decided payment went to both institutions when it was decided, so only an
    /// undecided payment is answered again, with its clearing message.
    Uploaded,
}

impl Arrival {
    /// How `input` arrived, from its delivery count.
    pub fn of(input: &Input<'_>) -> Self {
        if input.delivery_count > 1 {
            Arrival::Redelivered
        } else {
            Arrival::Submitted(input.position)
        }
    }
}

impl From<Position> for Arrival {
    fn from(position: Position) -> Self {
        Arrival::Submitted(position)
    }
}

/// The answer to an identical copy: the first answer again, moving no money. While the
/// payment is undecided, the clearing message is sent again (the bus drops the copy by its id).
/// A resubmission is answered as a new message for the terminal that retried; a redelivery
/// under the first answer's message id, which the bus's duplicate window drops, and it is not
/// counted as a resubmission; an offline payment uploaded again, once decided, not at all
/// ([`Arrival::Uploaded`]).
pub fn repeat(
    inst: &Institution,
    intent: &PaymentIntent,
    record: &PaymentRecord,
    arrival: Arrival,
    stage: &str,
) -> Result<Vec<Outgoing>, StageError> {
    let audience = match arrival {
        Arrival::Submitted(position) => {
            metrics::counter!("dcpipe_payments_duplicates_total", "institution" => inst.id.clone())
                .increment(1);
            Audience::Resubmission(position)
        }
        Arrival::Redelivered => {
            metrics::counter!("dcpipe_payments_redelivered_total", "institution" => inst.id.clone())
                .increment(1);
            Audience::PayerOnly
        }
        Arrival::Uploaded if record.state == PaymentState::Reserved => {
            return clearing(inst, intent, record);
        }
        Arrival::Uploaded => return Ok(Vec::new()),
    };
    let digest = record
        .digest
        .map(|d| Digest32::from_bytes(d.0))
        .unwrap_or(intent.authorization.digest);
    let (status, stage) = match record.state {
        PaymentState::Reserved => return clearing(inst, intent, record),
        PaymentState::Committed => (OutcomeStatus::Completed, DECIDING_STAGE),
        PaymentState::Voided => (OutcomeStatus::Rejected, DECIDING_STAGE),
        _ => (OutcomeStatus::Rejected, stage),
    };
    let reason =
        (status == OutcomeStatus::Rejected).then(|| outcome_reason(record.reason_code.as_deref()));
    outcome_messages(
        inst,
        OutcomeFacts {
            payment_id: intent.payment_id,
            envelope_digest: digest,
            status,
            reason,
            detail: "repeated submission: the first outcome",
            payer: intent.payer.clone(),
            payee: intent.payee.clone(),
            amount_fen: intent.amount_fen,
            decided_at_ms: record.updated_ms,
            stage,
        },
        audience,
    )
}

#[cfg(test)]
mod tests {
    use dcpipe_connectors::ledger::LedgerRefusal;

    use super::*;

    #[test]
    fn each_ledger_answer_has_its_reply() {
        assert_eq!(
            decide_reservation(&ReserveResult::Refused(LedgerRefusal::InsufficientFunds {
                available_fen: 3
            }))
            .clone(),
            ReservationAnswer::Reject(Rejected::new(
                Reason::InsufficientFunds,
                "InsufficientFunds { available_fen: 3 }"
            ))
        );
        assert_eq!(
            decide_reservation(&ReserveResult::Refused(LedgerRefusal::DailyLimit {
                limit_fen: 1,
                spent_fen: 1
            })),
            ReservationAnswer::Reject(Rejected::new(
                Reason::DailyLimit,
                "DailyLimit { limit_fen: 1, spent_fen: 1 }"
            ))
        );
    }
}
