//! The bytes every signature covers, and the transaction factor.
//!
//! Nothing here is Avro: signatures cover a small, explicit encoding ([`SigningInput`]) that
//! another implementation can reproduce from `docs/PROTOCOL.md` alone, and that does not change
//! when a schema gains a field. Each signed message has its own domain-separation tag, so a
//! signature made for one purpose never verifies for another. Each input is described once, as
//! data, in [`layout`]: the builders follow it, and the documents are checked against it.

mod encoding;
mod factor;
pub mod layout;
mod signed;
mod wallet;

pub use encoding::{SigningInput, TAG_BYTES_MAX};
pub use factor::{FactorHash, FactorInput, transaction_factor};
pub use layout::{Encoding, Field, Output, SIGNING_LAYOUTS, SigningLayout};
pub use signed::{
    TAG_CLEARING_MESSAGE, TAG_CLEARING_RESPONSE, TAG_PAYEE_CONSENT, TAG_PAYER_ENVELOPE,
    TAG_PAYMENT_OUTCOME, TAG_PIN_PROOF, TAG_REVOCATION_UPDATE, TAG_SETTLEMENT_INSTRUCTION,
    certificate_fingerprint, clearing_message_bytes, clearing_response_bytes, envelope_digest,
    payee_consent_bytes, payer_envelope_bytes, payment_outcome_bytes, pin_proof_bytes,
    revocation_update_bytes, settlement_instruction_bytes, submission_digest,
};
pub use wallet::{
    CHAIN_START, TAG_OFFLINE_PAYMENT, TAG_REMOTE_CONTROL_COMMAND, TAG_WALLET_KEY_SET,
    TAG_WALLET_SYNC_RESULT, anchors_digest, key_set_digest, offline_payment_bytes,
    offline_payment_digest, offline_payment_id, received_digests, remote_control_command_bytes,
    wallet_key_set_bytes, wallet_sync_result_bytes,
};
