//! Terminals: the two devices of a payment (flow 1, steps 1 and 2).
//!
//! Two terminals meet over NFC, Bluetooth or a remote channel, exchange user certificates and
//! each verifies the other's chain to the root ([`Touch::connect`]). Only then do they negotiate
//! the transaction factor ([`Touch::negotiate`]): each contributes a fresh nonce, the payee signs
//! the factor (its consent), the payer's secure element adds a PIN-verification proof when the
//! amount is above the payer's password-free limit (in the same touch: no second tap), and the
//! payer signs the envelope. Identity verification and the transaction are separate steps, so
//! the envelope can be published later and from anywhere.
//!
//! The demo, the tests and the load test drive terminals through this module, so the bytes they
//! publish are exactly what a real terminal would.

use dcpipe_schemas::{Channel, Nonce, PartyRef, PaymentId, PinProof, TransactionEnvelope};
use ring::rand::{SecureRandom, SystemRandom};

use crate::pki::{CertError, CertifiedKey, ChainVerifier, KeyError, Role};
use crate::protocol::{
    FactorHash, FactorInput, payee_consent_bytes, payer_envelope_bytes, pin_proof_bytes,
    transaction_factor,
};

/// The currency every dcpipe payment is in.
pub const CURRENCY: &str = "CNY";

/// Password-free limit of a wallet unless configured otherwise: 1,000 CNY.
pub const PASSWORD_FREE_LIMIT_FEN_DEFAULT: i64 = 100_000;

/// Why a touch failed on the terminals, before anything was published.
#[derive(Debug, thiserror::Error)]
pub enum TouchError {
    /// The payer's terminal rejected the payee's certificate.
    #[error("payee certificate rejected by the payer's terminal: {0}")]
    PayeeCertificate(#[source] CertError),
    /// The payee's terminal rejected the payer's certificate.
    #[error("payer certificate rejected by the payee's terminal: {0}")]
    PayerCertificate(#[source] CertError),
    /// A key could not sign.
    #[error("signing failed: {0}")]
    Signing(#[from] KeyError),
    /// The system random source failed.
    #[error("no randomness available for a nonce")]
    Randomness,
}

/// One terminal: the wallet it pays from or into, its user certificate and key, and the wallet's
/// secure element.
#[derive(Debug, Clone, Copy)]
pub struct Terminal<'k> {
    /// The wallet behind the terminal.
    pub wallet: &'k PartyRef,
    /// The user certificate and its key.
    pub user: &'k CertifiedKey,
    /// The secure element's certificate and key (signs PIN-verification proofs).
    pub secure_element: &'k CertifiedKey,
    /// Above this amount the payer's PIN is verified during the touch.
    pub password_free_limit_fen: i64,
}

/// Whether the payer's secure element adds a PIN-verification proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinEntry {
    /// When the amount is above the payer's password-free limit, as a real terminal does.
    #[default]
    WhenRequired,
    /// Always (the user chose to enter the PIN).
    Always,
    /// Never: a terminal that skips the rule, for testing the back-end's check.
    Never,
}

/// What the payer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// Id chosen by the payer's terminal; resubmissions reuse it. Best made with
    /// [`PaymentId::time_ordered`], so that ledgers append it to their indexes.
    pub payment_id: PaymentId,
    /// Amount in fen.
    pub amount_fen: i64,
    /// How the terminals met.
    pub channel: Channel,
    /// The payer terminal's clock at the touch (ms since the epoch).
    pub created_at_ms: i64,
    /// PIN entry.
    pub pin: PinEntry,
}

/// Two terminals that have verified each other's certificates.
#[derive(Debug)]
pub struct Touch<'k> {
    payer: Terminal<'k>,
    payee: Terminal<'k>,
}

impl<'k> Touch<'k> {
    /// Step 1: the terminals exchange user certificates and each verifies the other's chain to
    /// the root at `now_ms` (validity, revocation, role).
    pub fn connect(
        payer: Terminal<'k>,
        payee: Terminal<'k>,
        verifier: &ChainVerifier,
        now_ms: i64,
    ) -> Result<Self, TouchError> {
        verifier
            .verify(payee.user.certificate().der(), now_ms, Role::Terminal)
            .map_err(TouchError::PayeeCertificate)?;
        verifier
            .verify(payer.user.certificate().der(), now_ms, Role::Terminal)
            .map_err(TouchError::PayerCertificate)?;
        Ok(Touch { payer, payee })
    }

    /// Skips step 1, for producing envelopes the back-end must reject (a revoked or expired
    /// certificate that an honest terminal would have refused).
    pub fn unchecked(payer: Terminal<'k>, payee: Terminal<'k>) -> Self {
        Touch { payer, payee }
    }

    /// Step 2: negotiates the transaction factor and returns the payer's signed envelope, ready
    /// to publish to the payer's institution.
    pub fn negotiate(&self, request: &PaymentRequest) -> Result<TransactionEnvelope, TouchError> {
        let payer_nonce = fresh_nonce()?;
        let payee_nonce = fresh_nonce()?;
        let payer_certificate = self.payer.user.certificate();
        let payee_certificate = self.payee.user.certificate();
        let factor_input = FactorInput {
            payment_id: &request.payment_id,
            payer: self.payer.wallet,
            payee: self.payee.wallet,
            amount_fen: request.amount_fen,
            currency: CURRENCY,
            created_at_ms: request.created_at_ms,
            channel: request.channel,
            payer_nonce: &payer_nonce,
            payee_nonce: &payee_nonce,
            payer_certificate_fingerprint: payer_certificate.fingerprint(),
            payee_certificate_fingerprint: payee_certificate.fingerprint(),
        };
        let factor = transaction_factor(
            &factor_input,
            FactorHash::for_payer(payer_certificate.algorithm()),
        );
        let payee_signature = self.payee.user.key().sign(&payee_consent_bytes(&factor))?;
        let needs_pin = request.amount_fen > self.payer.password_free_limit_fen;
        let pin_proof = match (request.pin, needs_pin) {
            (PinEntry::Always, _) | (PinEntry::WhenRequired, true) => {
                let verified_at_ms = request.created_at_ms;
                let signature = self.payer.secure_element.key().sign(&pin_proof_bytes(
                    &factor,
                    &self.payer.wallet.wallet_id,
                    verified_at_ms,
                ))?;
                Some(PinProof {
                    secure_element_certificate: self
                        .payer
                        .secure_element
                        .certificate()
                        .der()
                        .to_vec(),
                    verified_at_ms,
                    signature,
                })
            }
            (PinEntry::Never, _) | (PinEntry::WhenRequired, false) => None,
        };
        let mut envelope = TransactionEnvelope {
            payment_id: request.payment_id,
            payer: self.payer.wallet.clone(),
            payee: self.payee.wallet.clone(),
            amount_fen: request.amount_fen,
            currency: CURRENCY.to_owned(),
            created_at_ms: request.created_at_ms,
            channel: request.channel,
            payer_nonce,
            payee_nonce,
            payer_certificate: payer_certificate.der().to_vec(),
            payee_certificate: payee_certificate.der().to_vec(),
            transaction_factor: factor,
            payee_signature,
            pin_proof,
            payer_signature: Vec::new(),
        };
        envelope.payer_signature = self
            .payer
            .user
            .key()
            .sign(&payer_envelope_bytes(&envelope))?;
        Ok(envelope)
    }
}

/// A fresh 32-byte nonce from the system's secure random source.
pub fn fresh_nonce() -> Result<Nonce, TouchError> {
    static RNG: std::sync::LazyLock<SystemRandom> = std::sync::LazyLock::new(SystemRandom::new);
    let mut bytes = [0u8; 32];
    RNG.fill(&mut bytes).map_err(|_| TouchError::Randomness)?;
    Ok(Nonce::from_bytes(bytes))
}
