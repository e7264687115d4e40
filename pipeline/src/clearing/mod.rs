//! The clearing path every kind of payment takes between two operating institutions, whatever
//! authorized it: a terminal's envelope (flow 1) or a vehicle's pre-authorized charge (flow 3).
//!
//! ```text
//!  flow's own checks ──▶ PaymentIntent ──▶ reserve at the payer's institution
//!                                              │ clearing message (signed by it)
//!                                              ▼
//!                                         payee's institution: pending credit, response
//!                                              │
//!                     payer's institution: commit or void ──▶ outcome to both, settlement
//! ```
//!
//! A flow verifies what authorizes its payment (the envelope's signatures and factor, the
//! vehicle's pre-authorization and session) and hands a [`PaymentIntent`] to this core: payer,
//! payee, amount, the payment id, and the [`Authorization`] that makes it valid with its digest.
//! From there every payment takes the same steps, built here once:
//! - [`intent`]: the intent, the reservation it asks of the payer's ledger and the clearing
//!   message it becomes;
//! - [`payer`]: what the payer's institution answers to each reservation result (pure
//!   [`payer::decide_reservation`], then the signed messages);
//! - [`verify`]: the public checks of the messages between institutions (clearing message,
//!   response, outcome), returning a verified value or a typed rejection with its
//!   [`Reason`], so stages, the audit and the load test share them;
//! - the outcome every decision is announced with ([`outcome_messages`]).
//!
//! The stages that consume the institutions' messages (`payee`, `commit`, `finalize`) live in
//! [`crate::payment`] under their historical names; they know nothing of the flow that made the
//! payment.

pub mod intent;
pub mod payer;
pub mod verify;

pub use intent::{Authorization, AuthorizationKind, PaymentIntent};

use std::collections::BTreeSet;
use std::sync::Arc;

use dcpipe_connectors::bus::Outgoing;
use dcpipe_connectors::ledger::{self, Ledger};
use dcpipe_schemas::{Digest32, OutcomeStatus, PartyRef, PaymentId, PaymentOutcome};

use crate::clock::Clock;
use crate::payment::PaymentPolicy;
use crate::pki::{CertifiedKey, ChainVerifier};
use crate::protocol::payment_outcome_bytes;
use crate::reason::Reason;
use crate::runtime::{StageError, outgoing};
use crate::subjects;
use crate::terminal::CURRENCY;

/// One operating institution's back-end: its id, its signing key, its view of the PKI, its
/// ledger, its policy and its clock. Shared by all of its stages.
#[derive(Debug)]
pub struct Institution {
    /// The institution's id, e.g. `oi01`.
    pub id: String,
    /// The institution signer (signs clearing messages, responses and outcomes).
    pub signer: CertifiedKey,
    /// Chain verification against the central bank's root, with its cache and revocations.
    pub verifier: Arc<ChainVerifier>,
    /// The institution's own ledger.
    pub ledger: Arc<dyn Ledger>,
    /// Time and expiry limits.
    pub policy: PaymentPolicy,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Institutions known to the trust store: outputs go only to their subjects, so a crafted
    /// message cannot make a stage publish to arbitrary subjects.
    pub known_institutions: BTreeSet<String>,
}

impl Institution {
    /// An institution's back-end; the known institutions are read from the verifier's trust
    /// store.
    pub fn new(
        id: impl Into<String>,
        signer: CertifiedKey,
        verifier: Arc<ChainVerifier>,
        ledger: Arc<dyn Ledger>,
        policy: PaymentPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let known_institutions = verifier
            .trust_store()
            .institution_ids()
            .map(str::to_owned)
            .collect();
        Institution {
            id: id.into(),
            signer,
            verifier,
            ledger,
            policy,
            clock,
            known_institutions,
        }
    }

    /// Whether `institution` is one the trust store knows.
    pub fn knows(&self, institution: &str) -> bool {
        self.known_institutions.contains(institution)
    }

    /// Signs a message's signing input with the institution signer.
    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, StageError> {
        self.signer
            .key()
            .sign(input)
            .map_err(|e| StageError::fatal(format!("the institution signer cannot sign: {e}")))
    }

    /// The institution signer's certificate, DER.
    pub(crate) fn certificate(&self) -> Vec<u8> {
        self.signer.certificate().der().to_vec()
    }
}

/// What a payment outcome says.
#[derive(Debug, Clone)]
pub(crate) struct OutcomeFacts<'a> {
    pub payment_id: PaymentId,
    pub envelope_digest: Digest32,
    pub status: OutcomeStatus,
    pub reason: Option<Reason>,
    pub detail: &'a str,
    pub payer: PartyRef,
    pub payee: PartyRef,
    pub amount_fen: i64,
    pub decided_at_ms: i64,
    pub stage: &'a str,
}

/// Where an outcome goes: the payer's institution always; the payee's when it is a known,
/// different institution; settlement when it completed between two institutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Only the payer's institution: the answer to a conflicting submission.
    PayerOnly,
    /// Only the payer's institution, as a new message: the answer to a resubmission stored at
    /// this bus position (a redelivery of the same resubmission is dropped by its id).
    Resubmission(dcpipe_connectors::bus::Position),
    /// Both institutions, and settlement if completed across institutions.
    Everyone,
}

/// Builds, signs and addresses a payment outcome.
pub(crate) fn outcome_messages(
    institution: &Institution,
    facts: OutcomeFacts<'_>,
    audience: Audience,
) -> Result<Vec<Outgoing>, StageError> {
    let mut outcome = PaymentOutcome {
        payment_id: facts.payment_id,
        envelope_digest: facts.envelope_digest,
        status: facts.status,
        reason_code: facts.reason.map(|r| r.as_str().to_owned()),
        detail: facts.detail.to_owned(),
        payer: facts.payer,
        payee: facts.payee,
        amount_fen: facts.amount_fen,
        currency: CURRENCY.to_owned(),
        decided_at_ms: facts.decided_at_ms,
        decided_by: institution.id.clone(),
        stage: facts.stage.to_owned(),
        institution_certificate: institution.certificate(),
        institution_signature: Vec::new(),
    };
    outcome.institution_signature = institution.sign(&payment_outcome_bytes(&outcome))?;
    let mut recipients: Vec<String> = Vec::with_capacity(3);
    if institution.knows(&outcome.payer.institution_id) {
        recipients.push(subjects::txn_result(&outcome.payer.institution_id));
    }
    if audience == Audience::Everyone {
        let payee_institution = &outcome.payee.institution_id;
        if payee_institution != &outcome.payer.institution_id
            && institution.knows(payee_institution)
        {
            recipients.push(subjects::txn_result(payee_institution));
            if outcome.status == OutcomeStatus::Completed {
                recipients.push(subjects::SETTLEMENT_CLEARING.to_owned());
            }
        }
    }
    let mut digest_prefix = hex::encode(&outcome.envelope_digest.as_bytes()[..8]);
    if let Audience::Resubmission(position) = audience {
        digest_prefix.push_str(&format!("/r{}-{}", position.partition, position.offset));
    }
    recipients
        .into_iter()
        .map(|subject| {
            let msg_id = format!("{subject}/{}/{digest_prefix}", outcome.payment_id);
            outgoing(subject, &outcome, msg_id, outcome.payment_id.as_bytes())
        })
        .collect()
}

/// The ledger's payment id for a schema payment id.
pub fn ledger_id_of(payment_id: &PaymentId) -> ledger::PaymentId {
    ledger_id(payment_id)
}

/// The ledger's payment id for a schema payment id.
pub(crate) fn ledger_id(payment_id: &PaymentId) -> ledger::PaymentId {
    ledger::PaymentId(*payment_id.as_bytes())
}

/// The schema payment id for a ledger payment id.
pub(crate) fn schema_id(payment_id: &ledger::PaymentId) -> PaymentId {
    PaymentId::from_bytes(payment_id.0)
}

/// The ledger's digest for a schema digest.
pub(crate) fn ledger_digest(digest: &Digest32) -> ledger::Digest {
    ledger::Digest(*digest.as_bytes())
}

/// The outcome reason for the reason stored in a payer-side ledger record: refusals the ledger
/// recorded itself carry its `ledger.*` codes, mapped to the protocol's payer-side reasons. A
/// record without a reason, or with one this version does not know, reads as
/// `txn.invalid_request`.
pub(crate) fn outcome_reason(stored: Option<&str>) -> Reason {
    stored
        .and_then(Reason::of_payer_record)
        .unwrap_or(Reason::InvalidRequest)
}
