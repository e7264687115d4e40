//! The bytes each signed message's signature covers (docs/PROTOCOL.md, "What each signature
//! covers"). Certificates enter as their SHA-256 fingerprints; the signature field itself is
//! never part of its own input.

use dcpipe_schemas::{
    ClearingMessage, ClearingResponse, ClearingStatus, Digest32, OutcomeStatus, PartyRef,
    PaymentOutcome, RevocationUpdate, SettlementInstruction, TransactionEnvelope,
};

use super::SigningInput;
use super::layout::{
    CLEARING_MESSAGE, CLEARING_RESPONSE, PAYEE_CONSENT, PAYER_ENVELOPE, PAYMENT_OUTCOME, PIN_PROOF,
    REVOCATION_UPDATE, SETTLEMENT_INSTRUCTION,
};
use crate::pki::sha256;

/// Domain tag of the payee's consent signature (over the transaction factor).
pub const TAG_PAYEE_CONSENT: &str = PAYEE_CONSENT.tag;
/// Domain tag of the secure element's PIN-verification proof.
pub const TAG_PIN_PROOF: &str = PIN_PROOF.tag;
/// Domain tag of the payer's signature over the envelope.
pub const TAG_PAYER_ENVELOPE: &str = PAYER_ENVELOPE.tag;
/// Domain tag of the payer institution's signature over a clearing message.
pub const TAG_CLEARING_MESSAGE: &str = CLEARING_MESSAGE.tag;
/// Domain tag of the payee institution's signature over a clearing response.
pub const TAG_CLEARING_RESPONSE: &str = CLEARING_RESPONSE.tag;
/// Domain tag of the deciding institution's signature over a payment outcome.
pub const TAG_PAYMENT_OUTCOME: &str = PAYMENT_OUTCOME.tag;
/// Domain tag of the central bank's signature over a settlement instruction.
pub const TAG_SETTLEMENT_INSTRUCTION: &str = SETTLEMENT_INSTRUCTION.tag;
/// Domain tag of a CA's signature over a revocation update.
pub const TAG_REVOCATION_UPDATE: &str = REVOCATION_UPDATE.tag;

/// SHA-256 of a certificate's DER: how certificates enter every signed input.
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    sha256(der)
}

fn party(input: &mut SigningInput, party: &PartyRef) {
    input.string(&party.institution_id).string(&party.wallet_id);
}

/// What the payee's terminal signs to consent: the factor.
pub fn payee_consent_bytes(transaction_factor: &Digest32) -> Vec<u8> {
    let mut input = SigningInput::of(&PAYEE_CONSENT);
    input.fixed(transaction_factor.as_bytes());
    input.into_bytes()
}

/// What the payer's secure element signs when the PIN was verified during the touch.
pub fn pin_proof_bytes(
    transaction_factor: &Digest32,
    payer_wallet_id: &str,
    verified_at_ms: i64,
) -> Vec<u8> {
    let mut input = SigningInput::of(&PIN_PROOF);
    input
        .fixed(transaction_factor.as_bytes())
        .string(payer_wallet_id)
        .i64(verified_at_ms);
    input.into_bytes()
}

/// What the payer signs: the factor (which binds the payment's terms, both nonces and both
/// certificates), the payee's consent, and the PIN proof if any.
pub fn payer_envelope_bytes(envelope: &TransactionEnvelope) -> Vec<u8> {
    let mut input = SigningInput::of(&PAYER_ENVELOPE);
    input
        .fixed(envelope.transaction_factor.as_bytes())
        .bytes(&envelope.payee_signature)
        .present(envelope.pin_proof.is_some());
    if let Some(proof) = &envelope.pin_proof {
        input
            .fixed(&certificate_fingerprint(&proof.secure_element_certificate))
            .i64(proof.verified_at_ms)
            .bytes(&proof.signature);
    }
    input.into_bytes()
}

/// The envelope digest: SHA-256 of what the payer signed. It names the submitted content, so a
/// resubmission of the same envelope has the same digest and any other content under the same
/// payment id has another.
pub fn envelope_digest(envelope: &TransactionEnvelope) -> Digest32 {
    Digest32::from_bytes(sha256(&payer_envelope_bytes(envelope)))
}

/// The submission digest: SHA-256 of the exact frame submitted. It names a submission whose
/// payer could not be authenticated (a broken signature, an untrusted certificate…): nobody
/// vouched for its content, so its answer is tied to its bytes and never to the envelope
/// digest of a genuine payment it may copy.
pub fn submission_digest(frame: &[u8]) -> Digest32 {
    Digest32::from_bytes(sha256(frame))
}

/// What the payer's institution signs on a clearing message.
pub fn clearing_message_bytes(message: &ClearingMessage) -> Vec<u8> {
    let mut input = SigningInput::of(&CLEARING_MESSAGE);
    input.fixed(message.payment_id.as_bytes());
    party(&mut input, &message.payer);
    party(&mut input, &message.payee);
    input
        .i64(message.amount_fen)
        .string(&message.currency)
        .fixed(message.transaction_factor.as_bytes())
        .fixed(message.envelope_digest.as_bytes())
        .i64(message.reserved_at_ms)
        .i64(message.expires_at_ms)
        .fixed(&certificate_fingerprint(&message.institution_certificate));
    input.into_bytes()
}

/// What the payee's institution signs on a clearing response.
pub fn clearing_response_bytes(response: &ClearingResponse) -> Vec<u8> {
    let mut input = SigningInput::of(&CLEARING_RESPONSE);
    input
        .fixed(response.payment_id.as_bytes())
        .string(&response.payer_institution_id)
        .string(&response.payee_institution_id)
        .string(match response.status {
            ClearingStatus::Accepted => "ACCEPTED",
            ClearingStatus::Rejected => "REJECTED",
        })
        .optional_string(response.reason_code.as_deref())
        .i64(response.amount_fen)
        .i64(response.responded_at_ms)
        .fixed(&certificate_fingerprint(&response.institution_certificate));
    input.into_bytes()
}

/// What the deciding institution signs on a payment outcome.
pub fn payment_outcome_bytes(outcome: &PaymentOutcome) -> Vec<u8> {
    let mut input = SigningInput::of(&PAYMENT_OUTCOME);
    input
        .fixed(outcome.payment_id.as_bytes())
        .fixed(outcome.envelope_digest.as_bytes())
        .string(match outcome.status {
            OutcomeStatus::Completed => "COMPLETED",
            OutcomeStatus::Rejected => "REJECTED",
        })
        .optional_string(outcome.reason_code.as_deref())
        .string(&outcome.detail);
    party(&mut input, &outcome.payer);
    party(&mut input, &outcome.payee);
    input
        .i64(outcome.amount_fen)
        .string(&outcome.currency)
        .i64(outcome.decided_at_ms)
        .string(&outcome.decided_by)
        .string(&outcome.stage)
        .fixed(&certificate_fingerprint(&outcome.institution_certificate));
    input.into_bytes()
}

/// What the central bank signs on a settlement instruction.
pub fn settlement_instruction_bytes(instruction: &SettlementInstruction) -> Vec<u8> {
    let mut input = SigningInput::of(&SETTLEMENT_INSTRUCTION);
    input
        .fixed(instruction.instruction_id.as_bytes())
        .i64(instruction.window_id)
        .i64(instruction.window_start_at_ms)
        .i64(instruction.window_end_at_ms)
        .count(instruction.positions.len());
    for position in &instruction.positions {
        input
            .string(&position.institution_id)
            .i64(position.net_fen)
            .i64(position.debit_fen)
            .i64(position.credit_fen)
            .i64(position.clearing_count);
    }
    input
        .i64(instruction.late_clearing_count)
        .i64(instruction.late_amount_fen)
        .i64(instruction.issued_at_ms)
        .fixed(&certificate_fingerprint(&instruction.issuer_certificate));
    input.into_bytes()
}

/// What a CA signs on a revocation update.
pub fn revocation_update_bytes(update: &RevocationUpdate) -> Vec<u8> {
    let mut input = SigningInput::of(&REVOCATION_UPDATE);
    input
        .fixed(update.update_id.as_bytes())
        .i64(update.sequence)
        .fixed(update.issuer_fingerprint.as_bytes())
        .count(update.revoked.len());
    for revoked in &update.revoked {
        input
            .bytes(&revoked.serial)
            .i64(revoked.revoked_at_ms)
            .string(&revoked.reason);
    }
    input
        .i64(update.issued_at_ms)
        .fixed(&certificate_fingerprint(&update.issuer_certificate));
    input.into_bytes()
}
