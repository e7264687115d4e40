//! The record-by-record checks: decode a frame with the schema its subject carries and verify
//! every signature with the functions the stages use, at the message's own time. Pure and
//! independent per record (the revocation history is rebuilt before), so the audit runs them
//! on every core; what they find is then reconciled in order ([`super::book`]). The records of
//! the vehicle flow are checked by [`super::vehicle`].

use bytes::Bytes;
use dcpipe_connectors::bus::Position;
use dcpipe_schemas::{
    ClearingMessage, ClearingResponse, ClearingStatus, CodecError, DeadLetter, Digest32,
    OfflinePayment, OutcomeStatus, PartyRef, PaymentId, PaymentOutcome, RevocationUpdate,
    SettlementInstruction, SettlementPosition, TransactionEnvelope, WalletKeySet,
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
    /// Several submissions carried by one record (each a [`Fact::Envelope`]): a wallet's key
    /// set, whose own payments the platform clears from its purse.
    Submissions(Vec<Fact>),
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

/// What the checks need besides the record.
#[derive(Debug)]
pub struct CheckContext {
    /// The verifier at each message's own time.
    pub verifier: TimedVerifier,
    /// The payer institutions' rules for envelopes (the clock bound is not applied: the
    /// envelope is judged at its own time).
    pub policy: PaymentPolicy,
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

fn refused(code: AuditCode, payment_id: Option<PaymentId>, found: String, payload: &[u8]) -> Fact {
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

fn undecodable(error: &CodecError, payload: &[u8]) -> Fact {
    refused(
        AuditCode::UndecodableNotDeadLettered,
        None,
        format!("{}: {error}", error.kind().reason_code()),
        payload,
    )
}

/// The audit code of a stage's rejection of an institution's message.
fn code_of(rejected: &Rejected) -> AuditCode {
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
        ["wallet", "offline", _] => match dcpipe_schemas::decode::<OfflinePayment>(payload) {
            Ok(payment) => offline_payment_fact(context, &payment, payload),
            Err(e) => undecodable(&e, payload),
        },
        ["wallet", "keyset", _] => match dcpipe_schemas::decode::<WalletKeySet>(payload) {
            Ok(set) => key_set_fact(context, &set, addressee(subject)),
            Err(e) => undecodable(&e, payload),
        },
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
                Ok(outcome) => match outcome_check(context, &outcome) {
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

/// An offline payment uploaded by its payee: the submission of a payment from the payer's
/// purse account, verified with the wallet module's own check at the time it was paid, and
/// named (like its clearing message and outcome) by its offline-payment digest.
fn offline_payment_fact(context: &CheckContext, payment: &OfflinePayment, frame: &[u8]) -> Fact {
    let digest = crate::protocol::offline_payment_digest(payment);
    let verdict = crate::wallet::verify_offline_payment(payment, context.verifier.chains())
        .and_then(|verified| {
            context
                .verifier
                .check_revocation(&verified.payer, payment.paid_at_ms)
                .map_err(|e| Rejected::new(Reason::Certificate(e.kind()), e.to_string()))
        });
    Fact::Envelope {
        payment_id: crate::protocol::offline_payment_id(&digest),
        terms: Terms {
            payer: crate::wallet::stages::record::purse_party(&payment.payer),
            payee: payment.payee.clone(),
            amount_fen: payment.amount_fen,
            currency: payment.currency.clone(),
        },
        envelope_digest: digest,
        submission_digest: submission_digest(frame),
        factor: digest,
        verdict,
    }
}

/// A wallet's key set: each of its own payments the submission of a purse payment, as
/// [`offline_payment_fact`] makes it. The key set is verified with the platform's own check at
/// its satellite moment; the platform's record of the wallet is not on the bus, so it is checked
/// against the record it claims (its key, last sync, and the chain its first payment continues):
/// what is verified is everything signed — certificate, signature, each payment, the chain
/// within the set, the summary. A key set refused clears nothing and carries no submission (a
/// payment cleared from it anyway is an outcome without submission).
fn key_set_fact(context: &CheckContext, set: &WalletKeySet, institution: &str) -> Fact {
    use crate::wallet::sync::{
        KeySetVerdict, PayerStanding, WalletRecord, key_fingerprint, verify_key_set,
    };
    let first: Option<OfflinePayment> = set
        .payments
        .first()
        .and_then(|frame| dcpipe_schemas::decode(frame.as_bytes()).ok());
    let claimed = WalletRecord {
        party: PartyRef {
            institution_id: set.institution_id.clone(),
            wallet_id: set.wallet_id.clone(),
        },
        key_version: set.key_version,
        key_fingerprint: key_fingerprint(&set.public_key),
        last_sync_at_ms: set.last_sync_at_ms,
        counter: first.as_ref().map_or(0, |p| p.counter.saturating_sub(1)),
        chain_head: first
            .as_ref()
            .map_or(crate::protocol::CHAIN_START, |p| p.previous_hash),
        purse_fen: 0,
        limits: crate::wallet::OFFLINE_TIER_2,
        locked_at_ms: None,
        blacklisted_at_ms: None,
        last_key_set: None,
        commands_applied_through: 0,
        blacklist_version: 0,
    };
    let verdict = verify_key_set(
        set,
        Some(&claimed),
        institution,
        context.verifier.chains(),
        &crate::wallet::SyncPolicy::default(),
        set.satellite_at_ms,
        &|_| PayerStanding::default(),
    );
    match verdict {
        KeySetVerdict::Verified(verified)
            if context
                .verifier
                .check_revocation(&verified.wallet, set.satellite_at_ms)
                .is_ok() =>
        {
            Fact::Submissions(
                set.payments
                    .iter()
                    .filter_map(|frame| {
                        let payment = dcpipe_schemas::decode(frame.as_bytes()).ok()?;
                        Some(offline_payment_fact(context, &payment, frame.as_bytes()))
                    })
                    .collect(),
            )
        }
        _ => Fact::Submissions(Vec::new()),
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
    use super::*;
    use crate::audit::trust::RevocationHistory;

    fn record(subject: &str, payload: Vec<u8>) -> AuditRecord {
        AuditRecord {
            subject: subject.to_owned(),
            position: Position {
                partition: 0,
                offset: 1,
            },
            timestamp_ms: 0,
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn an_offline_payment_is_the_submission_of_its_purse_payment_verified_as_the_wallet_does() {
        let (mut payer, payee, store, t0) =
            crate::wallet::stages::record::tests::funded_payer(10_000);
        let payer_institution = payer.party().institution_id.clone();
        let payer_id = payer.party().wallet_id.clone();
        let frame = payer
            .pay(
                &payee,
                8_000,
                crate::wallet::SatelliteFix { at_ms: t0 + 1_000 },
            )
            .expect("pays");
        let context = CheckContext {
            verifier: TimedVerifier::new(store, RevocationHistory::new()),
            policy: PaymentPolicy::default(),
        };
        let subject = crate::subjects::wallet_offline(&payer_institution);
        let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
        let digest = crate::protocol::offline_payment_digest(&payment);

        let checked = check_record(&context, &record(&subject, frame.as_bytes().to_vec()));
        let Fact::Envelope {
            payment_id,
            terms,
            envelope_digest,
            factor,
            verdict,
            ..
        } = checked.fact
        else {
            panic!("not a submission: {:?}", checked.fact);
        };
        assert_eq!(verdict.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(payment_id, crate::protocol::offline_payment_id(&digest));
        assert_eq!((envelope_digest, factor), (digest, digest));
        assert_eq!(terms.payer.wallet_id, format!("{payer_id}-purse"));
        assert_eq!(terms.payee, payee);
        assert_eq!(terms.amount_fen, 8_000);

        // The amount changed after the payer signed: refused.
        let mut inflated = payment.clone();
        inflated.amount_fen += 1;
        let frame = dcpipe_schemas::encode(&inflated).expect("encodes");
        let checked = check_record(&context, &record(&subject, frame));
        assert!(
            matches!(
                checked.fact,
                Fact::Envelope {
                    verdict: Err(_),
                    ..
                }
            ),
            "{:?}",
            checked.fact
        );
    }

    #[test]
    fn a_key_set_is_the_submission_of_each_of_its_own_payments_when_it_verifies() {
        let (mut payer, payee, store, t0) =
            crate::wallet::stages::record::tests::funded_payer(10_000);
        let institution = payer.party().institution_id.clone();
        let payer_id = payer.party().wallet_id.clone();
        let fix = |at_ms| crate::wallet::SatelliteFix { at_ms };
        let frames = [
            payer.pay(&payee, 3_000, fix(t0 + 1_000)).expect("pays"),
            payer.pay(&payee, 2_000, fix(t0 + 2_000)).expect("pays"),
        ];
        let upload = payer.key_set(fix(t0 + 3_000)).expect("key set");
        let context = CheckContext {
            verifier: TimedVerifier::new(store, RevocationHistory::new()),
            policy: PaymentPolicy::default(),
        };
        let subject = crate::subjects::wallet_keyset(&institution);

        let checked = check_record(&context, &record(&subject, upload.frame.clone()));
        let Fact::Submissions(submissions) = checked.fact else {
            panic!("not submissions: {:?}", checked.fact);
        };
        assert_eq!(submissions.len(), 2);
        for ((fact, frame), amount_fen) in submissions.iter().zip(&frames).zip([3_000, 2_000]) {
            let payment: OfflinePayment =
                dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
            let digest = crate::protocol::offline_payment_digest(&payment);
            let Fact::Envelope {
                payment_id,
                terms,
                envelope_digest,
                verdict,
                ..
            } = fact
            else {
                panic!("not a submission: {fact:?}");
            };
            assert_eq!(verdict.clone().map_err(|e| e.to_string()), Ok(()));
            assert_eq!(*payment_id, crate::protocol::offline_payment_id(&digest));
            assert_eq!(*envelope_digest, digest);
            assert_eq!(terms.payer.wallet_id, format!("{payer_id}-purse"));
            assert_eq!(terms.amount_fen, amount_fen);
        }

        // A key set whose signature does not verify clears nothing: no submission.
        let mut forged = upload.key_set.clone();
        forged.offline_payments.total_fen += 1;
        let frame = dcpipe_schemas::encode(&forged).expect("encodes");
        let checked = check_record(&context, &record(&subject, frame));
        assert!(
            matches!(&checked.fact, Fact::Submissions(s) if s.is_empty()),
            "{:?}",
            checked.fact
        );
    }
}
