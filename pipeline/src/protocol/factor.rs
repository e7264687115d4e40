//! The transaction factor: what both terminals agree on before any money moves.
//!
//! Each terminal contributes a fresh 32-byte nonce; the factor is a hash over a domain tag, the
//! payment's identity and terms, both nonces and both certificate fingerprints. The payee signs
//! the factor (its consent), and the payer's signature covers it, so neither side can change
//! the amount, the parties or the time after the touch.

use dcpipe_schemas::{Channel, Digest32, Nonce, PartyRef, PaymentId, TransactionEnvelope};

use super::SigningInput;
use super::layout::TRANSACTION_FACTOR;
use crate::pki::{Algorithm, sha256, sm3};

/// Which hash makes the factor: the payer certificate's family, so an SM2 payer stays within
/// the national algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorHash {
    /// SHA-256, for ECDSA P-256 payers.
    Sha256,
    /// SM3, for SM2 payers.
    Sm3,
}

impl FactorHash {
    /// The hash that goes with a payer certificate's algorithm.
    pub fn for_payer(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::EcdsaP256Sha256 => FactorHash::Sha256,
            Algorithm::Sm2Sm3 => FactorHash::Sm3,
        }
    }

    fn digest(self, bytes: &[u8]) -> [u8; 32] {
        match self {
            FactorHash::Sha256 => sha256(bytes),
            FactorHash::Sm3 => sm3(bytes),
        }
    }
}

/// Everything the transaction factor covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorInput<'a> {
    /// The payment's id, chosen by the payer's terminal.
    pub payment_id: &'a PaymentId,
    /// The paying wallet.
    pub payer: &'a PartyRef,
    /// The receiving wallet.
    pub payee: &'a PartyRef,
    /// Amount in fen.
    pub amount_fen: i64,
    /// ISO 4217 currency code.
    pub currency: &'a str,
    /// Time of the touch (ms since the epoch), as the payer's terminal read it.
    pub created_at_ms: i64,
    /// How the terminals met.
    pub channel: Channel,
    /// The payer terminal's nonce.
    pub payer_nonce: &'a Nonce,
    /// The payee terminal's nonce.
    pub payee_nonce: &'a Nonce,
    /// SHA-256 of the payer certificate's DER.
    pub payer_certificate_fingerprint: &'a [u8; 32],
    /// SHA-256 of the payee certificate's DER.
    pub payee_certificate_fingerprint: &'a [u8; 32],
}

impl<'a> FactorInput<'a> {
    /// The terms an envelope carries, with the fingerprints of the certificates it names
    /// (computed by the caller, who usually has them from verifying the chains).
    pub fn of_envelope(
        envelope: &'a TransactionEnvelope,
        payer_certificate_fingerprint: &'a [u8; 32],
        payee_certificate_fingerprint: &'a [u8; 32],
    ) -> Self {
        FactorInput {
            payment_id: &envelope.payment_id,
            payer: &envelope.payer,
            payee: &envelope.payee,
            amount_fen: envelope.amount_fen,
            currency: &envelope.currency,
            created_at_ms: envelope.created_at_ms,
            channel: envelope.channel,
            payer_nonce: &envelope.payer_nonce,
            payee_nonce: &envelope.payee_nonce,
            payer_certificate_fingerprint,
            payee_certificate_fingerprint,
        }
    }

    /// The exact bytes that are hashed (docs/PROTOCOL.md, "Transaction factor").
    pub fn signing_input(&self) -> SigningInput {
        let mut input = SigningInput::of(&TRANSACTION_FACTOR);
        input
            .fixed(self.payment_id.as_bytes())
            .string(&self.payer.institution_id)
            .string(&self.payer.wallet_id)
            .string(&self.payee.institution_id)
            .string(&self.payee.wallet_id)
            .i64(self.amount_fen)
            .string(self.currency)
            .i64(self.created_at_ms)
            .string(channel_symbol(self.channel))
            .fixed(self.payer_nonce.as_bytes())
            .fixed(self.payee_nonce.as_bytes())
            .fixed(self.payer_certificate_fingerprint)
            .fixed(self.payee_certificate_fingerprint);
        input
    }
}

/// Computes the transaction factor.
pub fn transaction_factor(input: &FactorInput<'_>, hash: FactorHash) -> Digest32 {
    Digest32::from_bytes(hash.digest(input.signing_input().as_bytes()))
}

/// The Avro symbol of a channel.
fn channel_symbol(channel: Channel) -> &'static str {
    match channel {
        Channel::Nfc => "NFC",
        Channel::Bluetooth => "BLUETOOTH",
        Channel::Remote => "REMOTE",
    }
}
