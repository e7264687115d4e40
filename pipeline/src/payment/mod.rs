//! Flow 1 at the institutions: a payment between two terminals, cleared between their
//! operating institutions.
//!
//! ```text
//! terminal ──txn.submit.<payer>──▶ payer ──clearing.request.<payee>──▶ payee
//!                                   ▲                                    │
//!                      clearing.response.<payer> ◀───────────────────────┘
//!                                   │
//!                                 commit ──txn.result.<payer|payee>──▶ terminals, finalize
//!                                   └────settlement.clearing──▶ settlement
//! ```
//!
//! - [`payer::PayerStage`] verifies the envelope, reserves the amount and sends a clearing
//!   message signed by the payer's institution;
//! - [`payee::PayeeStage`] verifies the institution's signature and records a pending credit;
//! - [`commit::CommitStage`] commits or voids the reservation on the payee's answer (or when it
//!   expires) and tells both sides: the payer institution's decision is final;
//! - [`finalize::FinalizeStage`] turns the payee's pending credit into money, or reverses it.
//!
//! Each stage is idempotent: the ledger keeps one record per payment id and side, and a
//! repeated message is answered from that record.

pub mod commit;
pub mod finalize;
pub mod payee;
pub mod payer;
mod policy;
mod verify;

pub use policy::{
    CLOCK_SKEW_MS_MAX_DEFAULT, EXPIRY_MARGIN_MS_DEFAULT, PIN_PROOF_AGE_MS_MAX_DEFAULT,
    PaymentPolicy, RESERVATION_TTL_MS_DEFAULT,
};
pub use verify::{EnvelopeRejection, VerifiedEnvelope, verify_envelope};

pub(crate) use crate::clearing::{
    Audience, OutcomeFacts, ledger_digest, ledger_id, outcome_messages, outcome_reason, schema_id,
};
pub use crate::clearing::{Institution, ledger_id_of};
