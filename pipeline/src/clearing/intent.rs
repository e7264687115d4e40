//! An intent to pay: what every flow hands to the clearing path once it has checked what
//! authorizes the payment.

use dcpipe_connectors::ledger::{self, ReserveRequest};
use dcpipe_schemas::{ClearingMessage, Digest32, PartyRef, PaymentId, TransactionEnvelope};

use super::{ledger_digest, ledger_id};
use crate::reason::Rejected;

/// What kind of authorization makes a payment valid. The clearing message does not carry it:
/// the payee's institution trusts the payer institution's signature, not the authorization,
/// which only the payer's institution can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthorizationKind {
    /// A two-terminal envelope (flow 1): the payee's consent over the transaction factor and
    /// the payer's signature over the envelope.
    Envelope,
    /// A vehicle's charge for a session (flow 3), under a pre-authorization its wallet signed.
    VehicleCharge,
    /// An offline payment (flow 2) the payer's wallet signed, cleared from its purse account.
    OfflinePayment,
}

/// What makes a payment valid, as the clearing path carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization {
    /// Its kind.
    pub kind: AuthorizationKind,
    /// Names the payment's content: the same payment id with another digest is a conflict.
    /// Ledger records and outcomes carry it (the schema's `envelope_digest`).
    pub digest: Digest32,
    /// What binds the payment to the payer's consent, carried in the clearing message's
    /// `transaction_factor`: the factor both terminals signed, or the digest of the
    /// pre-authorization a charge is made under.
    pub binding: Digest32,
}

/// A payment from one wallet to another, authorized and ready to clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    /// The payment id: chosen by the payer's terminal, or derived (a vehicle's session).
    pub payment_id: PaymentId,
    /// The paying wallet.
    pub payer: PartyRef,
    /// The wallet paid.
    pub payee: PartyRef,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// The currency (CNY).
    pub currency: String,
    /// When it was paid (signed by the payer's side): decides the business day of the daily
    /// limit.
    pub paid_at_ms: i64,
    /// What makes it valid.
    pub authorization: Authorization,
}

impl PaymentIntent {
    /// The intent of a flow-1 envelope, its content named by `digest` (the envelope digest, or
    /// the submission digest when the payer could not be authenticated).
    pub fn of_envelope(envelope: &TransactionEnvelope, digest: Digest32) -> Self {
        PaymentIntent {
            payment_id: envelope.payment_id,
            payer: envelope.payer.clone(),
            payee: envelope.payee.clone(),
            amount_fen: envelope.amount_fen,
            currency: envelope.currency.clone(),
            paid_at_ms: envelope.created_at_ms,
            authorization: Authorization {
                kind: AuthorizationKind::Envelope,
                digest,
                binding: envelope.transaction_factor,
            },
        }
    }

    /// The reservation it asks of the payer's ledger at `now_ms`, held for `ttl_ms`.
    pub fn reserve_request(&self, now_ms: i64, ttl_ms: i64) -> ReserveRequest {
        ReserveRequest {
            payment_id: ledger_id(&self.payment_id),
            digest: ledger_digest(&self.authorization.digest),
            payer_wallet: self.payer.wallet_id.clone(),
            payee: ledger::Party {
                institution_id: self.payee.institution_id.clone(),
                wallet_id: self.payee.wallet_id.clone(),
            },
            amount_fen: self.amount_fen,
            paid_at_ms: self.paid_at_ms,
            expires_at_ms: now_ms + ttl_ms,
        }
    }

    /// The record of its rejection before any money was held.
    pub fn rejection_record(&self, rejected: &Rejected, now_ms: i64) -> ledger::Rejection {
        ledger::Rejection {
            payment_id: ledger_id(&self.payment_id),
            digest: ledger_digest(&self.authorization.digest),
            payer_wallet: self.payer.wallet_id.clone(),
            amount_fen: self.amount_fen,
            reason_code: rejected.reason.as_str().to_owned(),
            at_ms: now_ms,
        }
    }

    /// The clearing message that asks the payee's institution to credit it, reserved from
    /// `reserved_at_ms` until `expires_at_ms`, before the payer's institution signs it (its
    /// signature covers `clearing_message_bytes`). `digest` names the content reserved (the
    /// ledger record's).
    pub fn unsigned_clearing(
        &self,
        digest: Digest32,
        reserved_at_ms: i64,
        expires_at_ms: i64,
        institution_certificate: Vec<u8>,
    ) -> ClearingMessage {
        ClearingMessage {
            payment_id: self.payment_id,
            payer: self.payer.clone(),
            payee: self.payee.clone(),
            amount_fen: self.amount_fen,
            currency: self.currency.clone(),
            transaction_factor: self.authorization.binding,
            envelope_digest: digest,
            reserved_at_ms,
            expires_at_ms,
            institution_certificate,
            institution_signature: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use dcpipe_schemas::Digest32;

    use super::*;

    fn intent() -> PaymentIntent {
        PaymentIntent {
            payment_id: PaymentId::from_bytes([7; 16]),
            payer: PartyRef {
                institution_id: "oi01".to_owned(),
                wallet_id: "w1".to_owned(),
            },
            payee: PartyRef {
                institution_id: "oi02".to_owned(),
                wallet_id: "w2".to_owned(),
            },
            amount_fen: 1_234,
            currency: "CNY".to_owned(),
            paid_at_ms: 1_000,
            authorization: Authorization {
                kind: AuthorizationKind::VehicleCharge,
                digest: Digest32::from_bytes([1; 32]),
                binding: Digest32::from_bytes([2; 32]),
            },
        }
    }

    #[test]
    fn the_reservation_holds_the_amount_from_the_payer_until_the_ttl() {
        let request = intent().reserve_request(5_000, 30_000);
        assert_eq!(request.payment_id.0, [7; 16]);
        assert_eq!(request.digest.0, [1; 32]);
        assert_eq!(request.payer_wallet, "w1");
        assert_eq!(request.payee.institution_id, "oi02");
        assert_eq!(request.payee.wallet_id, "w2");
        assert_eq!(request.amount_fen, 1_234);
        assert_eq!(request.paid_at_ms, 1_000);
        assert_eq!(request.expires_at_ms, 35_000);
    }

    #[test]
    fn the_clearing_message_carries_the_binding_as_its_factor() {
        let message =
            intent().unsigned_clearing(Digest32::from_bytes([1; 32]), 5_000, 35_000, vec![9]);
        assert_eq!(message.transaction_factor, Digest32::from_bytes([2; 32]));
        assert_eq!(message.envelope_digest, Digest32::from_bytes([1; 32]));
        assert_eq!(
            (message.reserved_at_ms, message.expires_at_ms),
            (5_000, 35_000)
        );
        assert_eq!(message.amount_fen, 1_234);
        assert!(message.institution_signature.is_empty());
    }
}
