//! Flow 2: a payment made offline between two hard wallets.

use serde::{Deserialize, Serialize};

use crate::{
    Digest32, PartyRef, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
};

/// A payment made offline from one hard wallet to another (schema id 25): signed by the payer's
/// wallet key, handed to the payee over NFC or Bluetooth, uploaded to the platform by either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflinePayment {
    /// The paying wallet.
    pub payer: PartyRef,
    /// The wallet paid.
    pub payee: PartyRef,
    /// Amount in fen.
    pub amount_fen: i64,
    /// ISO 4217 currency code; CNY.
    pub currency: String,
    /// The payer wallet's offline payment counter: 1 for its first offline payment, then one
    /// more for each; never reused.
    pub counter: i64,
    /// Offline-payment digest of the payer's previous offline payment; all zero for counter 1.
    pub previous_hash: Digest32,
    /// When it was paid, from the payer's satellite time source (Unix epoch milliseconds).
    pub paid_at_ms: i64,
    /// DER certificate of the payer's wallet key.
    #[serde(with = "apache_avro::serde::bytes")]
    pub payer_certificate: Vec<u8>,
    /// The payer wallet's signature over the offline-payment signing input.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for OfflinePayment {}

impl Message for OfflinePayment {
    const NAME: &'static str = "OfflinePayment";
    const SCHEMA_ID: u32 = 25;

    fn validate(&self) -> Result<(), CodecError> {
        self.payer.check("payer")?;
        self.payee.check("payee")?;
        check::amount_positive("amount_fen", self.amount_fen)?;
        check::currency("currency", &self.currency)?;
        check::range("counter", self.counter, 1, i64::MAX)?;
        check::non_negative("paid_at_ms", self.paid_at_ms)?;
        check::certificate("payer_certificate", &self.payer_certificate)?;
        check::signature("signature", &self.signature)
    }
}
