//! Verification of a submitted envelope by the payer's institution (flow 1, step 4): pure, no
//! database, no bus. The ledger checks (duplicates, limits, balance) come after.

use dcpipe_schemas::{Digest32, PartyRef, TransactionEnvelope};

use super::PaymentPolicy;
use crate::pki::{ChainVerifier, Role, VerifiedIdentity};
use crate::protocol::{
    FactorHash, FactorInput, envelope_digest, payee_consent_bytes, payer_envelope_bytes,
    pin_proof_bytes, transaction_factor,
};
use crate::reason::{Reason, Rejected};
use crate::terminal::CURRENCY;

/// An envelope whose certificates and signatures all check out.
#[derive(Debug, Clone)]
pub struct VerifiedEnvelope {
    /// The envelope digest (what the payer signed, hashed): names the submitted content.
    pub digest: Digest32,
    /// The payer's terminal certificate, verified.
    pub payer: VerifiedIdentity,
    /// Whether a valid PIN proof from the payer's secure element is attached.
    pub pin_verified: bool,
}

/// Why an envelope failed, and whether its payer was authenticated: a failure before the
/// payer's signature verified is not recorded against the payment id, so a forger cannot
/// squat on a genuine payment's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRejection {
    /// The reason and detail.
    pub rejected: Rejected,
    /// True once the payer's signature verified.
    pub authenticated: bool,
}

fn unauthenticated(reason: Reason, detail: impl Into<String>) -> EnvelopeRejection {
    EnvelopeRejection {
        rejected: Rejected::new(reason, detail),
        authenticated: false,
    }
}

fn authenticated(reason: Reason, detail: impl Into<String>) -> EnvelopeRejection {
    EnvelopeRejection {
        rejected: Rejected::new(reason, detail),
        authenticated: true,
    }
}

/// Checks an envelope submitted to `institution` at `now_ms`: who it is addressed to, the
/// currency, the clock, both certificate chains (validity at the envelope's time, revocation
/// now), that each certificate is the wallet it claims, the transaction factor recomputed, the
/// payee's consent, the payer's signature, and the PIN proof if any. The password rule needs the
/// wallet's limit and is applied with the ledger.
pub fn verify_envelope(
    envelope: &TransactionEnvelope,
    institution: &str,
    verifier: &ChainVerifier,
    policy: &PaymentPolicy,
    now_ms: i64,
) -> Result<VerifiedEnvelope, EnvelopeRejection> {
    if envelope.payer.institution_id != institution {
        return Err(unauthenticated(
            Reason::WrongInstitution,
            format!(
                "payer wallet is held by {}, not {institution}",
                envelope.payer.institution_id
            ),
        ));
    }
    if envelope.currency != CURRENCY {
        return Err(unauthenticated(
            Reason::CurrencyUnsupported,
            format!("currency {} is not cleared here", envelope.currency),
        ));
    }
    let skew_ms = envelope
        .created_at_ms
        .saturating_sub(now_ms)
        .saturating_abs();
    if skew_ms > policy.clock_skew_ms_max {
        return Err(unauthenticated(
            Reason::ClockSkew,
            format!(
                "envelope time is {skew_ms} ms from the institution's clock (at most {})",
                policy.clock_skew_ms_max
            ),
        ));
    }

    let payer = verify_terminal(
        verifier,
        &envelope.payer_certificate,
        &envelope.payer,
        envelope.created_at_ms,
        "payer",
    )?;
    let payee = verify_terminal(
        verifier,
        &envelope.payee_certificate,
        &envelope.payee,
        envelope.created_at_ms,
        "payee",
    )?;

    let factor = transaction_factor(
        &FactorInput::of_envelope(envelope, payer.fingerprint(), payee.fingerprint()),
        FactorHash::for_payer(payer.algorithm()),
    );
    if factor != envelope.transaction_factor {
        return Err(unauthenticated(
            Reason::FactorMismatch,
            "the transaction factor does not match the envelope's terms",
        ));
    }
    payee
        .public_key()
        .verify(&payee_consent_bytes(&factor), &envelope.payee_signature)
        .map_err(|e| unauthenticated(Reason::PayeeConsentSignature, e.to_string()))?;
    payer
        .public_key()
        .verify(&payer_envelope_bytes(envelope), &envelope.payer_signature)
        .map_err(|e| unauthenticated(Reason::PayerSignature, e.to_string()))?;

    let pin_verified = match &envelope.pin_proof {
        None => false,
        Some(proof) => {
            let invalid = |detail: String| authenticated(Reason::PinProofInvalid, detail);
            let element = verifier
                .verify(
                    &proof.secure_element_certificate,
                    envelope.created_at_ms,
                    Role::SecureElement,
                )
                .map_err(|e| invalid(format!("secure element certificate: {e}")))?;
            if element.id() != envelope.payer.wallet_id
                || element.institution_id() != envelope.payer.institution_id
            {
                return Err(invalid(
                    "the secure element is not the payer wallet's".to_owned(),
                ));
            }
            let age_ms = proof
                .verified_at_ms
                .saturating_sub(envelope.created_at_ms)
                .saturating_abs();
            if age_ms > policy.pin_proof_age_ms_max {
                return Err(invalid(format!(
                    "PIN verified {age_ms} ms from the touch (at most {})",
                    policy.pin_proof_age_ms_max
                )));
            }
            element
                .public_key()
                .verify(
                    &pin_proof_bytes(&factor, &envelope.payer.wallet_id, proof.verified_at_ms),
                    &proof.signature,
                )
                .map_err(|e| invalid(format!("PIN proof signature: {e}")))?;
            true
        }
    };

    Ok(VerifiedEnvelope {
        digest: envelope_digest(envelope),
        payer,
        pin_verified,
    })
}

/// Verifies a terminal certificate's chain (valid at the envelope's time, not revoked now) and
/// that it is the wallet the envelope names.
fn verify_terminal(
    verifier: &ChainVerifier,
    der: &[u8],
    party: &PartyRef,
    created_at_ms: i64,
    which: &str,
) -> Result<VerifiedIdentity, EnvelopeRejection> {
    let identity = verifier
        .verify(der, created_at_ms, Role::Terminal)
        .map_err(|e| {
            unauthenticated(
                Reason::Certificate(e.kind()),
                format!("{which} certificate: {e}"),
            )
        })?;
    if identity.id() != party.wallet_id || identity.institution_id() != party.institution_id {
        return Err(unauthenticated(
            Reason::PartyMismatch,
            format!(
                "{which} certificate is {}/{}, the envelope names {}/{}",
                identity.institution_id(),
                identity.id(),
                party.institution_id,
                party.wallet_id
            ),
        ));
    }
    Ok(identity)
}
