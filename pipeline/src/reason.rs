//! Why a payment was rejected: one stable code per reason, the table of docs/PROTOCOL.md.
//!
//! Codes are part of the contract: terminals, auditors and dashboards match on them. A code is
//! never renamed or reused; new reasons get new codes.

use std::fmt;

use dcpipe_connectors::ledger::LedgerRefusal;

use crate::pki::CertErrorKind;

/// A reason a payment (or a submission of it) is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A certificate (payer's, payee's, secure element's or an institution's) failed its chain
    /// check; the outcome's detail names which.
    Certificate(CertErrorKind),
    /// The payee's consent signature over the transaction factor does not verify.
    PayeeConsentSignature,
    /// The payer's signature over the envelope does not verify.
    PayerSignature,
    /// An institution's signature on a clearing message, response or outcome does not verify.
    InstitutionSignature,
    /// The transaction factor recomputed from the envelope differs from the one signed.
    FactorMismatch,
    /// The amount is above the payer's password-free limit and there is no PIN proof.
    PinRequired,
    /// A PIN proof is present but not valid (certificate, signature, wallet or time).
    PinProofInvalid,
    /// A certificate's subject is not the wallet or institution the message names.
    PartyMismatch,
    /// The envelope was sent to an institution that does not hold the payer's wallet.
    WrongInstitution,
    /// The currency is not one this system clears.
    CurrencyUnsupported,
    /// The envelope's time is too far from the institution's clock.
    ClockSkew,
    /// The same payment id was submitted before with other content.
    Conflict,
    /// The payee's institution did not answer before the reservation expired.
    Timeout,
    /// The payer's wallet is not held by this institution.
    PayerUnknownWallet,
    /// The payer's wallet is locked.
    PayerWalletLocked,
    /// Above the payer wallet's single-payment limit.
    SinglePaymentLimit,
    /// Above the payer wallet's daily limit.
    DailyLimit,
    /// The payer's available balance is too small.
    InsufficientFunds,
    /// The payee's wallet is not held by the payee's institution.
    PayeeUnknownWallet,
    /// The payee's wallet is locked.
    PayeeWalletLocked,
    /// Crediting would take the payee over its wallet's balance limit.
    PayeeBalanceLimit,
    /// The request is malformed in a way the schema cannot express (an id or amount out of the
    /// ledger's range).
    InvalidRequest,
}

impl RejectReason {
    /// Every reason except the certificate ones (those follow [`CertErrorKind`]).
    pub const NON_CERTIFICATE: [RejectReason; 21] = [
        RejectReason::PayeeConsentSignature,
        RejectReason::PayerSignature,
        RejectReason::InstitutionSignature,
        RejectReason::FactorMismatch,
        RejectReason::PinRequired,
        RejectReason::PinProofInvalid,
        RejectReason::PartyMismatch,
        RejectReason::WrongInstitution,
        RejectReason::CurrencyUnsupported,
        RejectReason::ClockSkew,
        RejectReason::Conflict,
        RejectReason::Timeout,
        RejectReason::PayerUnknownWallet,
        RejectReason::PayerWalletLocked,
        RejectReason::SinglePaymentLimit,
        RejectReason::DailyLimit,
        RejectReason::InsufficientFunds,
        RejectReason::PayeeUnknownWallet,
        RejectReason::PayeeWalletLocked,
        RejectReason::PayeeBalanceLimit,
        RejectReason::InvalidRequest,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Certificate(kind) => kind.reason_code(),
            RejectReason::PayeeConsentSignature => "sig.payee_consent_invalid",
            RejectReason::PayerSignature => "sig.payer_invalid",
            RejectReason::InstitutionSignature => "sig.institution_invalid",
            RejectReason::FactorMismatch => "txn.factor_mismatch",
            RejectReason::PinRequired => "txn.pin_required",
            RejectReason::PinProofInvalid => "txn.pin_proof_invalid",
            RejectReason::PartyMismatch => "txn.party_mismatch",
            RejectReason::WrongInstitution => "txn.wrong_institution",
            RejectReason::CurrencyUnsupported => "txn.currency_unsupported",
            RejectReason::ClockSkew => "txn.clock_skew",
            RejectReason::Conflict => "txn.conflict",
            RejectReason::Timeout => "txn.timeout",
            RejectReason::PayerUnknownWallet => "payer.unknown_wallet",
            RejectReason::PayerWalletLocked => "payer.wallet_locked",
            RejectReason::SinglePaymentLimit => "limit.single_payment",
            RejectReason::DailyLimit => "limit.daily",
            RejectReason::InsufficientFunds => "funds.insufficient",
            RejectReason::PayeeUnknownWallet => "payee.unknown_wallet",
            RejectReason::PayeeWalletLocked => "payee.wallet_locked",
            RejectReason::PayeeBalanceLimit => "payee.balance_limit",
            RejectReason::InvalidRequest => "txn.invalid_request",
        }
    }

    /// The reason for a refusal by the payer's ledger.
    pub fn from_payer_refusal(refusal: &LedgerRefusal) -> Self {
        match refusal {
            LedgerRefusal::UnknownWallet => RejectReason::PayerUnknownWallet,
            LedgerRefusal::WalletLocked => RejectReason::PayerWalletLocked,
            LedgerRefusal::SinglePaymentLimit { .. } => RejectReason::SinglePaymentLimit,
            LedgerRefusal::DailyLimit { .. } => RejectReason::DailyLimit,
            LedgerRefusal::InsufficientFunds { .. } => RejectReason::InsufficientFunds,
            LedgerRefusal::BalanceLimit { .. } => RejectReason::PayeeBalanceLimit,
            LedgerRefusal::MalformedRequest | LedgerRefusal::InvalidAmount => {
                RejectReason::InvalidRequest
            }
        }
    }

    /// The reason for a refusal by the payee's ledger.
    pub fn from_payee_refusal(refusal: &LedgerRefusal) -> Self {
        match refusal {
            LedgerRefusal::UnknownWallet => RejectReason::PayeeUnknownWallet,
            LedgerRefusal::WalletLocked => RejectReason::PayeeWalletLocked,
            LedgerRefusal::BalanceLimit { .. } => RejectReason::PayeeBalanceLimit,
            other => RejectReason::from_payer_refusal(other),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejection with its reason and a human-readable detail (not stable; no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The reason.
    pub reason: RejectReason,
    /// What exactly failed.
    pub detail: String,
}

impl Rejected {
    /// A rejection.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejected {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_and_dotted() {
        let mut seen = HashSet::new();
        for reason in RejectReason::NON_CERTIFICATE {
            let code = reason.code();
            assert!(code.contains('.') && code.is_ascii(), "{code}");
            assert!(seen.insert(code), "duplicate code {code}");
        }
        assert!(!seen.contains(RejectReason::Certificate(CertErrorKind::Expired).code()));
    }
}
