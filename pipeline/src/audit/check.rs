//! The record-by-record checks: decode a frame with the schema its subject carries and verify
//! every signature with the functions the stages use, at the message's own time. Pure and
//! independent per record (the revocation history is rebuilt before), so the audit runs them
//! on every core; what they find is then reconciled in order ([`super::book`]). The records of
//! the vehicle flow are checked by [`super::vehicle`].

use bytes::Bytes;
use dcpipe_connectors::bus::Position;
use dcpipe_schemas::{
    ClearingMessage, ClearingResponse, ClearingStatus, CodecError, DeadLetter, Digest32,
    OutcomeStatus, PartyRef, PaymentId, PaymentOutcome, RevocationUpdate, SettlementInstruction,
    SettlementPosition, TransactionEnvelope,
};

use super::code::AuditCode;
use super::trust::TimedVerifier;
use crate::clearing::verify::{verify_clearing_message, verify_clearing_response, verify_outcome};
use crate::payment::PaymentPolicy;
use crate::payment::verify_envelope;
use crate::pki::{CertErrorKind, Role, VerifiedIdentity, sha256};
use crate::protocol::{settlement_instruction_bytes, submission_digest};
use crate::reason::{Reason, Rejected};
use crate::revocation::verify_update;

/// A stored record as the audit reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The subject it was stored on.
    pub subject: String,
    /// Where: stream sequence, or partition and offset.
    pub position: Position,
    /// The bus time it was stored at (ms since the epoch).
    pub timestamp_ms: i64,
    /// The frame as stored.
    pub payload: Bytes,
}

impl AuditRecord {
    /// The record of a bus record.
    pub fn of(record: &dcpipe_connectors::bus::Record) -> Self {
        AuditRecord {
            subject: record.subject.clone(),
            position: record.position,
            timestamp_ms: record.timestamp_ms,
            payload: record.payload.clone(),
        }
    }
}

/// Who pays whom, how much: what every message of a payment repeats and must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The paying wallet.
    pub payer: PartyRef,
    /// The wallet paid.
    pub payee: PartyRef,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// The currency.
    pub currency: String,
}

impl Terms {
    /// `payer → payee amount currency`, for reports.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} → {}/{} {} fen {}",
            self.payer.institution_id,
            self.payer.wallet_id,
            self.payee.institution_id,
            self.payee.wallet_id,
            self.amount_fen,
            self.currency
        )
    }

    /// Whether payer and payee are held by different institutions.
    pub fn is_interbank(&self) -> bool {
        self.payer.institution_id != self.payee.institution_id
    }
}

/// A payment outcome as the audit keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeFact {
    /// The payment.
    pub payment_id: PaymentId,
    /// The digest it answers (envelope digest, submission digest or charge digest).
    pub digest: Digest32,
    /// Completed or rejected.
    pub status: OutcomeStatus,
    /// The reason of a rejection.
    pub reason_code: Option<String>,
    /// Its terms.
    pub terms: Terms,
    /// The stage that decided.
    pub stage: String,
    /// When it was decided.
    pub decided_at_ms: i64,
}

impl OutcomeFact {
    fn of(outcome: &PaymentOutcome) -> Self {
        OutcomeFact {
            payment_id: outcome.payment_id,
            digest: outcome.envelope_digest,
            status: outcome.status,
            reason_code: outcome.reason_code.clone(),
            terms: Terms {
                payer: outcome.payer.clone(),
                payee: outcome.payee.clone(),
                amount_fen: outcome.amount_fen,
                currency: outcome.currency.clone(),
            },
            stage: outcome.stage.clone(),
            decided_at_ms: outcome.decided_at_ms,
        }
    }

    /// `COMPLETED` or `REJECTED <reason>`.
    pub fn describe_status(&self) -> String {
        match self.status {
            OutcomeStatus::Completed => "COMPLETED".to_owned(),
            OutcomeStatus::Rejected => {
                format!("REJECTED {}", self.reason_code.as_deref().unwrap_or("-"))
            }
        }
    }
}

/// What one record says, once decoded and verified.
#[derive(Debug, Clone)]
pub enum Fact {
    /// A payer terminal's submission.
    Envelope {
        /// The payment.
        payment_id: PaymentId,
        /// Its terms.
        terms: Terms,
        /// The envelope digest.
        envelope_digest: Digest32,
        /// The submission digest (of the frame's bytes).
        submission_digest: Digest32,
        /// The transaction factor both terminals signed.
        factor: Digest32,
        /// Whether everything signed verifies at the envelope's time (else why not).
        verdict: Result<(), Rejected>,
    },
    /// A clearing message, authentic.
    Clearing {
        /// The payment.
        payment_id: PaymentId,
        /// Its terms.
        terms: Terms,
        /// The digest naming the content.
        digest: Digest32,
        /// The factor or pre-authorization digest binding it to the payer's consent.
        binding: Digest32,
    },
    /// A clearing response, authentic.
    Response {
        /// The payment.
        payment_id: PaymentId,
        /// Accepted (credited, pending) or refused.
        accepted: bool,
        /// The amount it answers for.
        amount_fen: i64,
    },
    /// An outcome on `txn.result.<oi>`, authentic.
    Outcome(OutcomeFact),
    /// An outcome on `settlement.clearing`, authentic.
    SettlementClearing(OutcomeFact),
    /// A settlement instruction, authentic.
    Instruction(SettlementInstruction),
    /// An institution's published position (unsigned: checked against its instruction).
    Position(SettlementPosition),
    /// A revocation update, authentic (already applied to the history).
    Revocation,
    /// A record of the vehicle flow ([`super::vehicle`]).
    Vehicle(super::vehicle::VehicleFact),
    /// A dead letter: the original's subject, position and bytes' digest.
    DeadLetter {
        /// Where the original was consumed from.
        subject: String,
        /// Its position.
        position: Position,
        /// SHA-256 of its bytes.
        original_sha256: [u8; 32],
    },
    /// A record of the offline-wallet flow ([`super::wallet`]).
    Wallet(super::wallet::WalletFact),
    /// A message no flow audits (a pre-authorization whose wallet signature does not verify:
    /// the vehicle stage's to refuse, it authorizes nothing).
    Unaudited,
    /// A record that failed its checks: a discrepancy unless a stage dead-lettered it.
    Refused {
        /// What is wrong.
        code: AuditCode,
        /// The payment it names, if it decoded.
        payment_id: Option<PaymentId>,
        /// What the check found.
        found: String,
        /// SHA-256 of its bytes, to match a dead letter's original.
        payload_sha256: [u8; 32],
    },
}

/// A record with what its checks found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The record (without its payload).
    pub subject: String,
    /// Its position.
    pub position: Position,
    /// Its bus time.
    pub timestamp_ms: i64,
    /// What it says.
    pub fact: Fact,
}

/// Outcome frames remembered as verified (their SHA-256), at most. One outcome is published
/// byte for byte on the payer institution's subject, the payee's and settlement's, all at
/// once, so its copies are read close together.
pub const VERIFIED_OUTCOMES_KEPT: usize = 65_536;

/// What the checks need besides the record.
#[derive(Debug)]
pub struct CheckContext {
    /// The verifier at each message's own time.
    pub verifier: TimedVerifier,
    /// The payer institutions' rules for envelopes (the clock bound is not applied: the
    /// envelope is judged at its own time).
    pub policy: PaymentPolicy,
    /// Outcome frames whose signature and chain verified, by the SHA-256 of their bytes. An
    /// outcome's verdict depends on its bytes alone (its signer's chain is judged at the
    /// decision time it carries, against the revocation history rebuilt before the range is
    /// read), so a copy of a verified frame is verified: its signature is not checked again.
    verified_outcomes: quick_cache::sync::Cache<[u8; 32], ()>,
}

impl CheckContext {
    /// Checks with `verifier` and the default payment policy.
    pub fn new(verifier: TimedVerifier) -> Self {
        CheckContext {
            verifier,
            policy: PaymentPolicy::default(),
            verified_outcomes: quick_cache::sync::Cache::new(VERIFIED_OUTCOMES_KEPT),
        }
    }

    /// Forgets the outcome frames verified so far, so that what is checked next is verified
    /// as if for the first time (the ceiling's passes).
    pub fn forget_verified(&self) {
        self.verified_outcomes.clear();
    }
}

/// The institution a subject is addressed to: its last token.
fn addressee(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

/// Decodes and verifies one record.
pub fn check_record(context: &CheckContext, record: &AuditRecord) -> Checked {
    let fact = fact_of(context, record);
    Checked {
        subject: record.subject.clone(),
        position: record.position,
        timestamp_ms: record.timestamp_ms,
        fact,
    }
}

pub(super) fn refused(
    code: AuditCode,
    payment_id: Option<PaymentId>,
    found: String,
    payload: &[u8],
) -> Fact {
    Fact::Refused {
        code,
        payment_id,
        found,
        payload_sha256: sha256(payload),
    }
}

/// A record of a subject no flow reads: audited only as a frame that decodes.
fn undecodable_subject(payload: &[u8]) -> Fact {
    match dcpipe_schemas::decode_any(payload) {
        Ok(_) => Fact::Unaudited,
        Err(e) => undecodable(&e, payload),
    }
}

pub(super) fn undecodable(error: &CodecError, payload: &[u8]) -> Fact {
    refused(
        AuditCode::UndecodableNotDeadLettered,
        None,
        format!("{}: {error}", error.kind().reason_code()),
        payload,
    )
}

/// The audit code of a stage's rejection of an institution's message.
pub(super) fn code_of(rejected: &Rejected) -> AuditCode {
    match rejected.reason {
        Reason::Certificate(CertErrorKind::Revoked) => AuditCode::CertificateRevoked,
        Reason::Certificate(_) => AuditCode::CertificateInvalid,
        _ => AuditCode::SignatureInvalid,
    }
}

fn fact_of(context: &CheckContext, record: &AuditRecord) -> Fact {
    let subject = record.subject.as_str();
    let payload = &record.payload[..];
    let family: Vec<&str> = subject.splitn(3, '.').collect();
    match family.as_slice() {
        ["txn", "submit", _] => match dcpipe_schemas::decode::<TransactionEnvelope>(payload) {
            Ok(envelope) => envelope_fact(context, &envelope, addressee(subject), payload),
            Err(e) => undecodable(&e, payload),
        },
        ["wallet", ..] => super::wallet::fact_of(context, record),
        ["clearing", "request", _] => match dcpipe_schemas::decode::<ClearingMessage>(payload) {
            Ok(message) => clearing_fact(context, &message, addressee(subject), payload),
            Err(e) => undecodable(&e, payload),
        },
        ["clearing", "response", _] => match dcpipe_schemas::decode::<ClearingResponse>(payload) {
            Ok(response) => response_fact(context, &response, addressee(subject), payload),
            Err(e) => undecodable(&e, payload),
        },
        ["txn", "result", _] | ["settlement", "clearing"] => {
            match dcpipe_schemas::decode::<PaymentOutcome>(payload) {
                Ok(outcome) => match outcome_check_once(context, &outcome, payload) {
                    Ok(()) if family[0] == "settlement" => {
                        Fact::SettlementClearing(OutcomeFact::of(&outcome))
                    }
                    Ok(()) => Fact::Outcome(OutcomeFact::of(&outcome)),
                    Err(r) => refused(
                        code_of(&r),
                        Some(outcome.payment_id),
                        r.to_string(),
                        payload,
                    ),
                },
                Err(e) => undecodable(&e, payload),
            }
        }
        ["settlement", "instruction"] => {
            match dcpipe_schemas::decode::<SettlementInstruction>(payload) {
                Ok(instruction) => match instruction_check(context, &instruction) {
                    Ok(()) => Fact::Instruction(instruction),
                    Err(r) => refused(code_of(&r), None, r.to_string(), payload),
                },
                Err(e) => undecodable(&e, payload),
            }
        }
        ["settlement", "position", _] => {
            match dcpipe_schemas::decode::<SettlementPosition>(payload) {
                Ok(position) => Fact::Position(position),
                Err(e) => undecodable(&e, payload),
            }
        }
        ["pki", "revocation"] => match dcpipe_schemas::decode::<RevocationUpdate>(payload) {
            Ok(update) => match verify_update(context.verifier.chains().trust_store(), &update) {
                Ok(_) => Fact::Revocation,
                Err((reason, detail)) => refused(
                    AuditCode::SignatureInvalid,
                    None,
                    format!("{reason}: {detail}"),
                    payload,
                ),
            },
            Err(e) => undecodable(&e, payload),
        },
        ["vehicle", ..] => {
            super::vehicle::fact_of(context, record).unwrap_or_else(|| undecodable_subject(payload))
        }
        ["deadletter", ..] => match dcpipe_schemas::decode::<DeadLetter>(payload) {
            Ok(dead) => Fact::DeadLetter {
                subject: dead.subject.clone(),
                position: Position {
                    partition: u32::try_from(dead.partition).unwrap_or(u32::MAX),
                    offset: u64::try_from(dead.offset).unwrap_or(u64::MAX),
                },
                original_sha256: sha256(&dead.original),
            },
            Err(e) => undecodable(&e, payload),
        },
        _ => undecodable_subject(payload),
    }
}

fn envelope_fact(
    context: &CheckContext,
    envelope: &TransactionEnvelope,
    institution: &str,
    frame: &[u8],
) -> Fact {
    let at_ms = envelope.created_at_ms;
    let verdict = verify_envelope(
        envelope,
        institution,
        context.verifier.chains(),
        &context.policy,
        at_ms,
    )
    .map_err(|e| e.rejected)
    .and_then(|verified| {
        // The stages checked revocation when they read it; the audit as of the envelope's time.
        let revoked =
            |e: crate::pki::CertError| Rejected::new(Reason::Certificate(e.kind()), e.to_string());
        context
            .verifier
            .check_revocation(&verified.payer, at_ms)
            .map_err(revoked)?;
        let payee = context
            .verifier
            .chains()
            .verify(&envelope.payee_certificate, at_ms, Role::Terminal)
            .map_err(revoked)?;
        context
            .verifier
            .check_revocation(&payee, at_ms)
            .map_err(revoked)?;
        if let Some(proof) = &envelope.pin_proof {
            context
                .verifier
                .verify(
                    &proof.secure_element_certificate,
                    at_ms,
                    Role::SecureElement,
                )
                .map_err(revoked)?;
        }
        Ok(())
    });
    Fact::Envelope {
        payment_id: envelope.payment_id,
        terms: Terms {
            payer: envelope.payer.clone(),
            payee: envelope.payee.clone(),
            amount_fen: envelope.amount_fen,
            currency: envelope.currency.clone(),
        },
        envelope_digest: crate::protocol::envelope_digest(envelope),
        submission_digest: submission_digest(frame),
        factor: envelope.transaction_factor,
        verdict,
    }
}

fn with_revocation(
    context: &CheckContext,
    signer: &VerifiedIdentity,
    at_ms: i64,
) -> Result<(), Rejected> {
    context
        .verifier
        .check_revocation(signer, at_ms)
        .map_err(|e| Rejected::new(Reason::Certificate(e.kind()), e.to_string()))
}

fn clearing_fact(
    context: &CheckContext,
    message: &ClearingMessage,
    institution: &str,
    payload: &[u8],
) -> Fact {
    let at_ms = message.reserved_at_ms;
    match verify_clearing_message(message, institution, context.verifier.chains(), at_ms)
        .and_then(|v| with_revocation(context, &v.signer, at_ms))
    {
        Ok(()) => Fact::Clearing {
            payment_id: message.payment_id,
            terms: Terms {
                payer: message.payer.clone(),
                payee: message.payee.clone(),
                amount_fen: message.amount_fen,
                currency: message.currency.clone(),
            },
            digest: message.envelope_digest,
            binding: message.transaction_factor,
        },
        Err(r) => refused(
            code_of(&r),
            Some(message.payment_id),
            r.to_string(),
            payload,
        ),
    }
}

fn response_fact(
    context: &CheckContext,
    response: &ClearingResponse,
    institution: &str,
    payload: &[u8],
) -> Fact {
    let at_ms = response.responded_at_ms;
    match verify_clearing_response(response, institution, context.verifier.chains(), at_ms)
        .and_then(|v| with_revocation(context, &v.signer, at_ms))
    {
        Ok(()) => Fact::Response {
            payment_id: response.payment_id,
            accepted: response.status == ClearingStatus::Accepted,
            amount_fen: response.amount_fen,
        },
        Err(r) => refused(
            code_of(&r),
            Some(response.payment_id),
            r.to_string(),
            payload,
        ),
    }
}

/// [`outcome_check`], skipped for a copy of a frame that verified.
fn outcome_check_once(
    context: &CheckContext,
    outcome: &PaymentOutcome,
    frame: &[u8],
) -> Result<(), Rejected> {
    let key = sha256(frame);
    if context.verified_outcomes.get(&key).is_some() {
        return Ok(());
    }
    outcome_check(context, outcome)?;
    context.verified_outcomes.insert(key, ());
    Ok(())
}

fn outcome_check(context: &CheckContext, outcome: &PaymentOutcome) -> Result<(), Rejected> {
    let at_ms = outcome.decided_at_ms;
    let verified = verify_outcome(outcome, context.verifier.chains(), at_ms)?;
    with_revocation(context, &verified.signer, at_ms)
}

fn instruction_check(
    context: &CheckContext,
    instruction: &SettlementInstruction,
) -> Result<(), Rejected> {
    let at_ms = instruction.issued_at_ms;
    let signer = context
        .verifier
        .verify(
            &instruction.issuer_certificate,
            at_ms,
            Role::SettlementSigner,
        )
        .map_err(|e| Rejected::new(Reason::Certificate(e.kind()), e.to_string()))?;
    signer
        .public_key()
        .verify(
            &settlement_instruction_bytes(instruction),
            &instruction.signature,
        )
        .map_err(|e| Rejected::new(Reason::InstitutionSignature, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::RevocationHistory;
    use crate::audit::book::tests::party;
    use crate::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory};
    use crate::protocol::payment_outcome_bytes;

    const T0_MS: i64 = 1_800_000_000_000;

    /// A completed interbank outcome signed by oi01's signer, as the bus carries it.
    fn outcome_frame(pki: &PkiDirectory, amount_fen: i64) -> Bytes {
        let signer = &pki.institution("oi01").expect("oi01").signer;
        let mut outcome = PaymentOutcome {
            payment_id: PaymentId::from_bytes([9; 16]),
            envelope_digest: dcpipe_schemas::Digest32::from_bytes([1; 32]),
            status: OutcomeStatus::Completed,
            reason_code: None,
            detail: String::new(),
            payer: party("oi01", "w-oi01-000001"),
            payee: party("oi02", "w-oi02-000001"),
            amount_fen,
            currency: "CNY".into(),
            decided_at_ms: T0_MS,
            decided_by: "oi01".into(),
            stage: "commit".into(),
            institution_certificate: signer.certificate().der().to_vec(),
            institution_signature: Vec::new(),
        };
        outcome.institution_signature = signer
            .key()
            .sign(&payment_outcome_bytes(&outcome))
            .expect("signed");
        Bytes::from(dcpipe_schemas::encode(&outcome).expect("encoded"))
    }

    fn record(subject: &str, offset: u64, payload: Bytes) -> AuditRecord {
        AuditRecord {
            subject: subject.into(),
            position: Position {
                partition: 0,
                offset,
            },
            timestamp_ms: T0_MS,
            payload,
        }
    }

    #[test]
    fn a_copy_of_a_verified_outcome_is_not_verified_again_and_a_changed_copy_is() {
        let pki = PkiDirectory::generate(&DemoPkiOptions::new(
            2,
            2,
            AlgorithmChoice::P256,
            T0_MS - 1_000,
        ))
        .expect("demo PKI");
        let context = CheckContext::new(TimedVerifier::new(
            Arc::clone(pki.trust_store()),
            RevocationHistory::new(),
        ));
        let frame = outcome_frame(&pki, 700);
        for (offset, subject) in ["txn.result.oi01", "txn.result.oi02", "settlement.clearing"]
            .into_iter()
            .enumerate()
        {
            let checked = check_record(&context, &record(subject, offset as u64, frame.clone()));
            assert!(
                matches!(checked.fact, Fact::Outcome(_) | Fact::SettlementClearing(_)),
                "{subject}: {:?}",
                checked.fact
            );
        }
        // The three copies verified once: one frame remembered.
        assert_eq!(context.verified_outcomes.len(), 1);

        // A copy with one byte of its signature changed is its own frame, verified, refused.
        let mut tampered = frame.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let checked = check_record(&context, &record("txn.result.oi02", 3, tampered.into()));
        assert!(
            matches!(checked.fact, Fact::Refused { .. }),
            "{:?}",
            checked.fact
        );
        // So is another outcome signed by the same key; forgotten, all is verified again.
        let other = outcome_frame(&pki, 701);
        assert!(matches!(
            check_record(&context, &record("txn.result.oi01", 4, other)).fact,
            Fact::Outcome(_)
        ));
        assert_eq!(context.verified_outcomes.len(), 2);
        context.forget_verified();
        assert_eq!(context.verified_outcomes.len(), 0);
    }
}
