//! Offline payments: checking one, as the payee's wallet does offline and the platform does at
//! synchronization. Pure: no database, no bus; cheap to call in a loop (the chain cache of the
//! verifier keeps each payer certificate's chain checked once).

use dcpipe_schemas::{Digest32, OfflinePayment, PaymentId};

use crate::pki::{ChainVerifier, Role, VerifiedIdentity};
use crate::protocol::{offline_payment_bytes, offline_payment_id};
use crate::reason::{Reason, Rejected};
use crate::terminal::CURRENCY;

/// An offline payment whose payer certificate and signature check out.
#[derive(Debug, Clone)]
pub struct VerifiedOfflinePayment {
    /// The payment.
    pub payment: OfflinePayment,
    /// Its offline-payment digest: its identity and its link in the payer's chain.
    pub digest: Digest32,
    /// Its payment id, derived from the digest.
    pub payment_id: PaymentId,
    /// The payer's wallet certificate, verified.
    pub payer: VerifiedIdentity,
}

/// Checks an offline payment: the currency, the payer's wallet certificate (chain to the root,
/// role `wallet`, valid at `paid_at_ms`, not revoked now), that the certificate is the payer the
/// payment names, and the payer's signature.
pub fn verify_offline_payment(
    payment: &OfflinePayment,
    verifier: &ChainVerifier,
) -> Result<VerifiedOfflinePayment, Rejected> {
    if payment.currency != CURRENCY {
        return Err(Rejected::new(
            Reason::OfflineCurrency,
            format!("currency {} is not cleared here", payment.currency),
        ));
    }
    let payer = verifier
        .verify(&payment.payer_certificate, payment.paid_at_ms, Role::Wallet)
        .map_err(|e| {
            Rejected::new(
                Reason::Certificate(e.kind()),
                format!("payer certificate: {e}"),
            )
        })?;
    if payer.id() != payment.payer.wallet_id
        || payer.institution_id() != payment.payer.institution_id
    {
        return Err(Rejected::new(
            Reason::OfflinePartyMismatch,
            format!(
                "payer certificate is {}/{}, the payment names {}/{}",
                payer.institution_id(),
                payer.id(),
                payment.payer.institution_id,
                payment.payer.wallet_id
            ),
        ));
    }
    let input = offline_payment_bytes(payment);
    payer
        .public_key()
        .verify(&input, &payment.signature)
        .map_err(|e| Rejected::new(Reason::OfflineSignature, e.to_string()))?;
    let digest = Digest32::from_bytes(crate::pki::sha256(&input));
    Ok(VerifiedOfflinePayment {
        payment_id: offline_payment_id(&digest),
        digest,
        payment: payment.clone(),
        payer,
    })
}

/// Decodes a framed offline payment and checks it ([`verify_offline_payment`]).
pub fn verify_offline_payment_frame(
    frame: &[u8],
    verifier: &ChainVerifier,
) -> Result<VerifiedOfflinePayment, Rejected> {
    let payment: OfflinePayment = dcpipe_schemas::decode(frame)
        .map_err(|e| Rejected::new(Reason::Schema(e.kind()), e.to_string()))?;
    verify_offline_payment(&payment, verifier)
}
