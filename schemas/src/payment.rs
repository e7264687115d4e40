//! Flow 1: a payment between two terminals, and its final outcome.

use serde::{Deserialize, Serialize};

use crate::{
    Digest32, Nonce, PartyRef, PaymentId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::DETAIL_BYTES_MAX,
};

/// How two terminals met to exchange certificates and nonces (Avro enum `Channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    /// Near-field touch.
    Nfc,
    /// Bluetooth, within a few metres.
    Bluetooth,
    /// Over the network; identity was verified earlier, so distance does not matter.
    Remote,
}

/// Proof that the payer's secure element verified the PIN during the same touch
/// (Avro record `PinProof`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinProof {
    /// DER certificate of the payer's secure element.
    #[serde(with = "apache_avro::serde::bytes")]
    pub secure_element_certificate: Vec<u8>,
    /// When the secure element verified the PIN (Unix epoch milliseconds).
    pub verified_at_ms: i64,
    /// The secure element's signature over the signing input `dcpipe/v1/pin-proof`: the
    /// transaction factor, the payer's wallet id and `verified_at_ms` (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

/// A payment between two terminals, signed by both, as the payer's terminal publishes it to its
/// own institution (schema id 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEnvelope {
    /// Client-chosen payment id; the same id with different content is a conflict.
    pub payment_id: PaymentId,
    /// The paying wallet.
    pub payer: PartyRef,
    /// The receiving wallet.
    pub payee: PartyRef,
    /// Amount in fen; strictly positive.
    pub amount_fen: i64,
    /// ISO 4217 currency code, e.g. `CNY`.
    pub currency: String,
    /// When the payer's terminal created the envelope (Unix epoch milliseconds).
    pub created_at_ms: i64,
    /// How the terminals met.
    pub channel: Channel,
    /// The payer terminal's contribution to the transaction factor.
    pub payer_nonce: Nonce,
    /// The payee terminal's contribution to the transaction factor.
    pub payee_nonce: Nonce,
    /// DER certificate of the payer's terminal.
    #[serde(with = "apache_avro::serde::bytes")]
    pub payer_certificate: Vec<u8>,
    /// DER certificate of the payee's terminal.
    #[serde(with = "apache_avro::serde::bytes")]
    pub payee_certificate: Vec<u8>,
    /// SHA-256 or SM3 (by the payer certificate's algorithm) of the signing input
    /// `dcpipe/v1/transaction-factor`: the payment id, both parties, amount, currency, time,
    /// channel, both nonces and both certificate fingerprints (docs/PROTOCOL.md §4).
    pub transaction_factor: Digest32,
    /// The payee's signature over the signing input `dcpipe/v1/payee-consent` (the transaction
    /// factor): its consent.
    #[serde(with = "apache_avro::serde::bytes")]
    pub payee_signature: Vec<u8>,
    /// PIN-verification proof; required above the wallet's password-free limit.
    pub pin_proof: Option<PinProof>,
    /// The payer's signature over the signing input `dcpipe/v1/payer-envelope`: the factor,
    /// the payee's signature and the PIN proof (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub payer_signature: Vec<u8>,
}

impl Sealed for TransactionEnvelope {}

impl Message for TransactionEnvelope {
    const NAME: &'static str = "TransactionEnvelope";
    const SCHEMA_ID: u32 = 1;

    fn validate(&self) -> Result<(), CodecError> {
        self.payer.check("payer")?;
        self.payee.check("payee")?;
        check::amount_positive("amount_fen", self.amount_fen)?;
        check::currency("currency", &self.currency)?;
        check::non_negative("created_at_ms", self.created_at_ms)?;
        check::certificate("payer_certificate", &self.payer_certificate)?;
        check::certificate("payee_certificate", &self.payee_certificate)?;
        check::signature("payee_signature", &self.payee_signature)?;
        if let Some(proof) = &self.pin_proof {
            check::certificate(
                "secure_element_certificate",
                &proof.secure_element_certificate,
            )
            .and_then(|()| check::non_negative("verified_at_ms", proof.verified_at_ms))
            .and_then(|()| check::signature("signature", &proof.signature))
            .map_err(|e| e.within("pin_proof"))?;
        }
        check::signature("payer_signature", &self.payer_signature)
    }
}

/// The outcome of a payment (Avro enum `OutcomeStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    /// The payment cleared.
    Completed,
    /// The payment did not clear and never will under this id.
    Rejected,
}

/// The final outcome of a payment, sent to both institutions, their terminals and settlement
/// (schema id 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOutcome {
    /// Id of the payment.
    pub payment_id: PaymentId,
    /// The envelope digest of the envelope this outcome answers, or its submission digest when
    /// it was refused before its payer was authenticated (docs/PROTOCOL.md §5).
    pub envelope_digest: Digest32,
    /// The outcome.
    pub status: OutcomeStatus,
    /// Stable reason code; present exactly when `status` is `Rejected`.
    pub reason_code: Option<String>,
    /// Human-readable explanation (at most [`DETAIL_BYTES_MAX`] bytes); never holds secrets.
    pub detail: String,
    /// The paying wallet.
    pub payer: PartyRef,
    /// The receiving wallet.
    pub payee: PartyRef,
    /// Amount in fen; strictly positive.
    pub amount_fen: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// When the outcome was decided (Unix epoch milliseconds).
    pub decided_at_ms: i64,
    /// Id of the operating institution that decided.
    pub decided_by: String,
    /// Pipeline stage that decided: `payer` or `commit`.
    pub stage: String,
    /// DER certificate of the deciding institution.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_certificate: Vec<u8>,
    /// The deciding institution's signature over the signing input `dcpipe/v1/payment-outcome`
    /// (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
}

impl Sealed for PaymentOutcome {}

impl Message for PaymentOutcome {
    const NAME: &'static str = "PaymentOutcome";
    const SCHEMA_ID: u32 = 4;

    fn validate(&self) -> Result<(), CodecError> {
        check::reason_for_status(
            self.status == OutcomeStatus::Rejected,
            self.reason_code.as_deref(),
        )?;
        check::text("detail", &self.detail, DETAIL_BYTES_MAX)?;
        self.payer.check("payer")?;
        self.payee.check("payee")?;
        check::amount_positive("amount_fen", self.amount_fen)?;
        check::currency("currency", &self.currency)?;
        check::non_negative("decided_at_ms", self.decided_at_ms)?;
        check::id("decided_by", &self.decided_by)?;
        check::id("stage", &self.stage)?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)
    }
}
