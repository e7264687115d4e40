//! The checks of the messages institutions exchange on the clearing path: pure functions that
//! return a verified value or a typed rejection with its [`Reason`]. The stages dead-letter a
//! rejection (an unauthenticated sender gets no answer); the audit and the load test call the
//! same functions.

use dcpipe_schemas::{ClearingMessage, ClearingResponse, ClearingStatus, PaymentOutcome};

use crate::pki::{ChainVerifier, Role, VerifiedIdentity};
use crate::protocol::{clearing_message_bytes, clearing_response_bytes, payment_outcome_bytes};
use crate::reason::{Reason, Rejected};

/// A clearing message authentically from the payer's institution it names, addressed here.
#[derive(Debug, Clone)]
pub struct VerifiedClearing {
    /// The payer institution's signer, verified.
    pub signer: VerifiedIdentity,
}

/// Checks a clearing message received by `institution` at `now_ms`: the payer institution's
/// certificate (role `institution-signer`, valid and not revoked now) is of the institution the
/// message names as the payer's, its signature verifies, and the message is addressed to
/// `institution`.
pub fn verify_clearing_message(
    message: &ClearingMessage,
    institution: &str,
    verifier: &ChainVerifier,
    now_ms: i64,
) -> Result<VerifiedClearing, Rejected> {
    let signer = verify_signer(
        verifier,
        &message.institution_certificate,
        now_ms,
        "payer institution",
    )?;
    if signer.institution_id() != message.payer.institution_id {
        return Err(Rejected::new(
            Reason::PartyMismatch,
            format!(
                "signed by {}, claims payer institution {}",
                signer.institution_id(),
                message.payer.institution_id
            ),
        ));
    }
    signer
        .public_key()
        .verify(
            &clearing_message_bytes(message),
            &message.institution_signature,
        )
        .map_err(|e| Rejected::new(Reason::InstitutionSignature, e.to_string()))?;
    if message.payee.institution_id != institution {
        return Err(Rejected::new(
            Reason::WrongInstitution,
            format!("addressed to {}", message.payee.institution_id),
        ));
    }
    Ok(VerifiedClearing { signer })
}

/// What an authentic clearing response asks of the payer's institution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseDecision {
    /// The payee's institution credited (pending): commit.
    Commit,
    /// It refused, for this reason: void.
    Void(Reason),
}

/// A clearing response authentically from the payee's institution it names, for this one.
#[derive(Debug, Clone)]
pub struct VerifiedResponse {
    /// What it asks for.
    pub decision: ResponseDecision,
    /// The payee institution's signer, verified.
    pub signer: VerifiedIdentity,
}

/// Checks a clearing response received by the payer's `institution` at `now_ms`: the payee
/// institution's certificate (valid and not revoked now) is of the institution the response
/// names, the response is for `institution`, and its signature verifies. A refusal whose code
/// this version does not know reads as `txn.invalid_request`.
pub fn verify_clearing_response(
    response: &ClearingResponse,
    institution: &str,
    verifier: &ChainVerifier,
    now_ms: i64,
) -> Result<VerifiedResponse, Rejected> {
    let signer = verify_signer(
        verifier,
        &response.institution_certificate,
        now_ms,
        "payee institution",
    )?;
    if signer.institution_id() != response.payee_institution_id
        || response.payer_institution_id != institution
    {
        return Err(Rejected::new(
            Reason::PartyMismatch,
            format!(
                "response from {} for {}, signed by {}",
                response.payee_institution_id,
                response.payer_institution_id,
                signer.institution_id()
            ),
        ));
    }
    signer
        .public_key()
        .verify(
            &clearing_response_bytes(response),
            &response.institution_signature,
        )
        .map_err(|e| Rejected::new(Reason::InstitutionSignature, e.to_string()))?;
    let decision = match response.status {
        ClearingStatus::Accepted => ResponseDecision::Commit,
        ClearingStatus::Rejected => ResponseDecision::Void(match response.reason_code.as_deref() {
            None => Reason::InvalidRequest,
            Some(code) => Reason::parse(code).unwrap_or_else(|| {
                // The payee's institution refused; its code is outside this version's table.
                tracing::warn!(code, payment = %response.payment_id, "rejection with an unknown reason code, recorded as txn.invalid_request");
                Reason::InvalidRequest
            }),
        }),
    };
    Ok(VerifiedResponse { decision, signer })
}

/// An outcome authentically decided by the payer's institution it names.
#[derive(Debug, Clone)]
pub struct VerifiedOutcome {
    /// The deciding institution's signer, verified.
    pub signer: VerifiedIdentity,
}

/// Checks a payment outcome at `now_ms`: the deciding institution's certificate (valid and not
/// revoked now) is of `decided_by`, which is the payer's institution, and its signature
/// verifies.
pub fn verify_outcome(
    outcome: &PaymentOutcome,
    verifier: &ChainVerifier,
    now_ms: i64,
) -> Result<VerifiedOutcome, Rejected> {
    let signer = verify_signer(
        verifier,
        &outcome.institution_certificate,
        now_ms,
        "deciding institution",
    )?;
    if signer.institution_id() != outcome.decided_by
        || outcome.decided_by != outcome.payer.institution_id
    {
        return Err(Rejected::new(
            Reason::PartyMismatch,
            format!(
                "outcome decided by {} for payer institution {}, signed by {}",
                outcome.decided_by,
                outcome.payer.institution_id,
                signer.institution_id()
            ),
        ));
    }
    signer
        .public_key()
        .verify(
            &payment_outcome_bytes(outcome),
            &outcome.institution_signature,
        )
        .map_err(|e| Rejected::new(Reason::InstitutionSignature, e.to_string()))?;
    Ok(VerifiedOutcome { signer })
}

fn verify_signer(
    verifier: &ChainVerifier,
    der: &[u8],
    now_ms: i64,
    which: &str,
) -> Result<VerifiedIdentity, Rejected> {
    verifier
        .verify(der, now_ms, Role::InstitutionSigner)
        .map_err(|e| {
            Rejected::new(
                Reason::Certificate(e.kind()),
                format!("{which} certificate: {e}"),
            )
        })
}
