//! Revocation: certificates a certificate authority has revoked, published as signed updates.

use serde::{Deserialize, Serialize};

use crate::{
    Digest32, RevocationUpdateId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{REVOKED_PER_UPDATE_MAX, SERIAL_BYTES_MAX},
};

/// Longest CRLReason name (`privilegeWithdrawn`, `aACompromise`, ... are under 24).
const REASON_CHARS_MAX: usize = 32;

/// One revoked certificate (Avro record `RevokedCertificate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    /// Certificate serial number: the content octets of its DER INTEGER exactly as in the
    /// certificate (with a leading zero byte when the certificate has one), 1 to
    /// [`SERIAL_BYTES_MAX`] bytes.
    #[serde(with = "apache_avro::serde::bytes")]
    pub serial: Vec<u8>,
    /// When the revocation took effect (Unix epoch milliseconds).
    pub revoked_at_ms: i64,
    /// RFC 5280 CRLReason name, e.g. `keyCompromise`.
    pub reason: String,
}

impl RevokedCertificate {
    fn check(&self) -> Result<(), CodecError> {
        if self.serial.is_empty() || self.serial.len() > SERIAL_BYTES_MAX {
            return Err(CodecError::invalid_field(
                "serial",
                format_args!(
                    "{} bytes, expected 1 to {SERIAL_BYTES_MAX}",
                    self.serial.len()
                ),
            ));
        }
        check::non_negative("revoked_at_ms", self.revoked_at_ms)?;
        let well_formed = !self.reason.is_empty()
            && self.reason.len() <= REASON_CHARS_MAX
            && self.reason.bytes().all(|b| b.is_ascii_alphabetic());
        if !well_formed {
            return Err(CodecError::invalid_field(
                "reason",
                format_args!("expected a CRLReason name of 1 to {REASON_CHARS_MAX} letters"),
            ));
        }
        Ok(())
    }
}

/// Certificates a certificate authority has revoked since its previous update (schema id 14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationUpdate {
    /// Id of this update.
    pub update_id: RevocationUpdateId,
    /// Per-issuer update counter: 1 for an issuer's first update, then one more per update, so
    /// an audit sees a missed one. Verifiers apply every authentic update whatever its sequence.
    pub sequence: i64,
    /// SHA-256 of the DER of the issuing CA certificate.
    pub issuer_fingerprint: Digest32,
    /// Revoked certificates, at most [`REVOKED_PER_UPDATE_MAX`].
    pub revoked: Vec<RevokedCertificate>,
    /// When the update was issued (Unix epoch milliseconds).
    pub issued_at_ms: i64,
    /// DER certificate of the issuing CA.
    #[serde(with = "apache_avro::serde::bytes")]
    pub issuer_certificate: Vec<u8>,
    /// The CA's signature over the signing input `dcpipe/v1/revocation-update`
    /// (docs/PROTOCOL.md §5).
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for RevocationUpdate {}

impl Message for RevocationUpdate {
    const NAME: &'static str = "RevocationUpdate";
    const SCHEMA_ID: u32 = 14;

    fn validate(&self) -> Result<(), CodecError> {
        check::non_negative("sequence", self.sequence)?;
        check::count("revoked", self.revoked.len(), 0, REVOKED_PER_UPDATE_MAX)?;
        for (index, revoked) in self.revoked.iter().enumerate() {
            revoked
                .check()
                .map_err(|e| e.within(format_args!("revoked[{index}]")))?;
        }
        check::non_negative("issued_at_ms", self.issued_at_ms)?;
        check::certificate("issuer_certificate", &self.issuer_certificate)?;
        check::signature("signature", &self.signature)
    }
}
