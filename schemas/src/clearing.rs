//! Between institutions: the payer institution's clearing message and the payee institution's
//! response.

use serde::{Deserialize, Serialize};

use crate::{
    Digest32, PartyRef, PaymentId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
};

/// A verified payment forwarded by the payer's institution to the payee's, signed by the payer's
/// institution (schema id 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearingMessage {
    /// Id of the payment being cleared.
    pub payment_id: PaymentId,
    /// The paying wallet.
    pub payer: PartyRef,
    /// The receiving wallet.
    pub payee: PartyRef,
    /// Amount in fen; strictly positive.
    pub amount_fen: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The transaction factor, copied from the envelope.
    pub transaction_factor: Digest32,
    /// The envelope digest: SHA-256 of what the payer signed (docs/PROTOCOL.md §5).
    pub envelope_digest: Digest32,
    /// When the payer's institution reserved the funds (Unix epoch milliseconds).
    pub reserved_at_ms: i64,
    /// When the reservation lapses without an answer; after `reserved_at_ms`.
    pub expires_at_ms: i64,
    /// DER certificate of the payer's institution.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_certificate: Vec<u8>,
    /// The payer institution's signature over the signing input `dcpipe/v1/clearing-message`
    /// (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
}

impl Sealed for ClearingMessage {}

impl Message for ClearingMessage {
    const NAME: &'static str = "ClearingMessage";
    const SCHEMA_ID: u32 = 2;

    fn validate(&self) -> Result<(), CodecError> {
        self.payer.check("payer")?;
        self.payee.check("payee")?;
        check::amount_positive("amount_fen", self.amount_fen)?;
        check::currency("currency", &self.currency)?;
        check::non_negative("reserved_at_ms", self.reserved_at_ms)?;
        check::after(
            "expires_at_ms",
            self.expires_at_ms,
            "reserved_at_ms",
            self.reserved_at_ms,
        )?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)
    }
}

/// The payee institution's decision on a clearing message (Avro enum `ClearingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClearingStatus {
    /// The payee's institution credited the payee.
    Accepted,
    /// It did not; the response carries a reason code.
    Rejected,
}

/// The payee institution's answer to a clearing message (schema id 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearingResponse {
    /// Id of the payment being answered.
    pub payment_id: PaymentId,
    /// The payer's operating institution.
    pub payer_institution_id: String,
    /// The payee's operating institution, author of the response.
    pub payee_institution_id: String,
    /// Whether the payment was completed.
    pub status: ClearingStatus,
    /// Stable reason code; present exactly when `status` is `Rejected`.
    pub reason_code: Option<String>,
    /// Amount in fen, echoed from the clearing message.
    pub amount_fen: i64,
    /// When the payee's institution decided (Unix epoch milliseconds).
    pub responded_at_ms: i64,
    /// DER certificate of the payee's institution.
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_certificate: Vec<u8>,
    /// The payee institution's signature over the signing input `dcpipe/v1/clearing-response`
    /// (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub institution_signature: Vec<u8>,
}

impl Sealed for ClearingResponse {}

impl Message for ClearingResponse {
    const NAME: &'static str = "ClearingResponse";
    const SCHEMA_ID: u32 = 3;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("payer_institution_id", &self.payer_institution_id)?;
        check::id("payee_institution_id", &self.payee_institution_id)?;
        check::reason_for_status(
            self.status == ClearingStatus::Rejected,
            self.reason_code.as_deref(),
        )?;
        check::amount_positive("amount_fen", self.amount_fen)?;
        check::non_negative("responded_at_ms", self.responded_at_ms)?;
        check::certificate("institution_certificate", &self.institution_certificate)?;
        check::signature("institution_signature", &self.institution_signature)
    }
}
