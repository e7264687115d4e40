//! One payment made as a pair of terminals would make it, published, and its outcome awaited.
//!
//! The payer's and the payee's terminals are read from their wallets' key files (a wallet
//! directory as `dcpipe pki init` writes it: `terminal.crt.pem`, `terminal.key.pem`,
//! `secure-element.crt.pem`, `secure-element.key.pem`). Each terminal verifies the other's
//! certificate chain against the trust anchors, they negotiate the transaction factor, and the
//! payer's envelope is published on `txn.submit.<payer oi>` with the message id
//! `txn.submit.<payer oi>/<payment id>/<n>` (docs/PROTOCOL.md §1, "Submitting a payment"). The
//! outcome is read on `txn.result.<payer oi>` by replay (no consumer group), matched by payment
//! id and by envelope or submission digest, and its institution signature verified.

use std::path::Path;
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, Outgoing, PublishReceipt, ReplayFrom};
use dcpipe_schemas::{Channel, PartyRef, PaymentId, PaymentOutcome, TransactionEnvelope};
use tokio::time::Instant;

use super::follow::SubjectReader;
use super::{OpsError, OpsErrorKind};
use crate::invariants::Submission;
use crate::pki::{CertifiedKey, ChainVerifier, Role, read_certificate_pem, read_private_key_pem};
use crate::protocol::payment_outcome_bytes;
use crate::subjects;
use crate::terminal::{PaymentRequest, PinEntry, Terminal, Touch};

/// How long before the publish the outcome's bus time may be (another clock: the broker's).
pub const OUTCOME_CLOCK_LEEWAY_MS: i64 = 10_000;

/// How often the outcome subject is read while waiting.
pub const OUTCOME_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A terminal and its wallet's secure element, from the wallet's key files.
#[derive(Debug)]
pub struct WalletTerminal {
    /// The wallet, as its terminal certificate names it.
    pub party: PartyRef,
    /// The terminal's user certificate and key.
    pub terminal: CertifiedKey,
    /// The secure element's certificate and key (signs PIN proofs).
    pub secure_element: CertifiedKey,
}

impl WalletTerminal {
    /// Reads a wallet directory.
    pub fn load(dir: &Path) -> Result<Self, OpsError> {
        let read = |role: Role| -> Result<CertifiedKey, OpsError> {
            let stem = role.as_str();
            let certificate_path = dir.join(format!("{stem}.crt.pem"));
            let key_path = dir.join(format!("{stem}.key.pem"));
            let keys_error = |e: &dyn std::fmt::Display| {
                OpsError::new(OpsErrorKind::Keys, format!("{}: {e}", dir.display()))
            };
            let certificate =
                read_certificate_pem(&certificate_path).map_err(|e| keys_error(&e))?;
            if certificate.role() != Some(role) {
                return Err(OpsError::new(
                    OpsErrorKind::Keys,
                    format!(
                        "{} holds a {} certificate, not a {role} one",
                        certificate_path.display(),
                        certificate.role_name()
                    ),
                ));
            }
            let key = read_private_key_pem(&key_path).map_err(|e| keys_error(&e))?;
            CertifiedKey::new(certificate, key).map_err(|e| keys_error(&e))
        };
        let terminal = read(Role::Terminal)?;
        let secure_element = read(Role::SecureElement)?;
        let party = PartyRef {
            institution_id: terminal.certificate().institution().to_owned(),
            wallet_id: terminal.certificate().id().to_owned(),
        };
        if secure_element.certificate().id() != party.wallet_id
            || secure_element.certificate().institution() != party.institution_id
        {
            return Err(OpsError::new(
                OpsErrorKind::Keys,
                format!(
                    "{}: the secure element belongs to another wallet",
                    dir.display()
                ),
            ));
        }
        Ok(WalletTerminal {
            party,
            terminal,
            secure_element,
        })
    }

    /// The terminal, with the wallet's password-free limit.
    pub fn terminal(&self, password_free_limit_fen: i64) -> Terminal<'_> {
        Terminal {
            wallet: &self.party,
            user: &self.terminal,
            secure_element: &self.secure_element,
            password_free_limit_fen,
        }
    }
}

/// What to pay.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Amount in fen.
    pub amount_fen: i64,
    /// How the terminals met.
    pub channel: Channel,
    /// The payment id; a resubmission reuses it.
    pub payment_id: PaymentId,
    /// Which submission of this payment this is, from 1 (the `n` of the message id).
    pub submission: u32,
    /// The payer terminal's clock at the touch.
    pub created_at_ms: i64,
    /// Above this amount the payer's secure element adds a PIN proof.
    pub password_free_limit_fen: i64,
    /// Longest wait for the outcome.
    pub timeout: Duration,
}

/// What happened to a submission.
#[derive(Debug)]
pub struct SubmitReport {
    /// The envelope published.
    pub envelope: TransactionEnvelope,
    /// Its payment id and digests.
    pub submission: Submission,
    /// The subject it was published on.
    pub subject: String,
    /// The message id it was published with.
    pub msg_id: String,
    /// What the bus answered.
    pub receipt: PublishReceipt,
    /// The outcome, if one came in time, with whether its institution signature verified.
    pub outcome: Option<(PaymentOutcome, bool)>,
}

/// The message id of submission `n` of a payment (docs/PROTOCOL.md §1).
pub fn submission_msg_id(payer_institution: &str, payment_id: &PaymentId, n: u32) -> String {
    format!(
        "{}/{}/{n}",
        subjects::txn_submit(payer_institution),
        payment_id.to_uuid().hyphenated()
    )
}

/// Makes the payment, publishes it and waits up to `options.timeout` for its outcome.
pub async fn submit(
    bus: &dyn Bus,
    verifier: &ChainVerifier,
    payer: &WalletTerminal,
    payee: &WalletTerminal,
    options: &SubmitOptions,
) -> Result<SubmitReport, OpsError> {
    let touch = Touch::connect(
        payer.terminal(options.password_free_limit_fen),
        payee.terminal(options.password_free_limit_fen),
        verifier,
        options.created_at_ms,
    )
    .map_err(|e| OpsError::new(OpsErrorKind::Touch, e.to_string()))?;
    let envelope = touch
        .negotiate(&PaymentRequest {
            payment_id: options.payment_id,
            amount_fen: options.amount_fen,
            channel: options.channel,
            created_at_ms: options.created_at_ms,
            pin: PinEntry::WhenRequired,
        })
        .map_err(|e| OpsError::new(OpsErrorKind::Touch, e.to_string()))?;
    let frame = dcpipe_schemas::encode(&envelope)
        .map_err(|e| OpsError::new(OpsErrorKind::Input, e.to_string()))?;
    let submission = Submission::of(&envelope, &frame);
    let institution = &envelope.payer.institution_id;
    let subject = subjects::txn_submit(institution);
    let msg_id = submission_msg_id(institution, &envelope.payment_id, options.submission);
    // Read from before the publish: the outcome cannot be stored earlier than that, whatever
    // the broker's clock says within the leeway.
    let mut results = SubjectReader::new(
        subjects::txn_result(institution),
        ReplayFrom::TimeMs(crate::clock::system_now_ms() - OUTCOME_CLOCK_LEEWAY_MS),
        None,
    );
    let receipt = bus
        .publish(
            Outgoing::new(subject.clone(), frame)
                .with_key(envelope.payer.wallet_id.clone().into_bytes())
                .with_msg_id(msg_id.clone()),
        )
        .await?;
    let deadline = Instant::now() + options.timeout;
    let outcome = loop {
        let mut found = None;
        for record in results.poll(bus, usize::MAX).await? {
            let Ok(outcome) = dcpipe_schemas::decode::<PaymentOutcome>(&record.payload) else {
                continue;
            };
            if outcome.payment_id == submission.payment_id
                && (outcome.envelope_digest == submission.envelope_digest
                    || outcome.envelope_digest == submission.submission_digest)
            {
                found = Some(outcome);
                break;
            }
        }
        if let Some(outcome) = found {
            let verified = outcome_verifies(verifier, &outcome);
            break Some((outcome, verified));
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(OUTCOME_POLL_INTERVAL.min(deadline - Instant::now())).await;
    };
    Ok(SubmitReport {
        envelope,
        submission,
        subject,
        msg_id,
        receipt,
        outcome,
    })
}

/// Whether an outcome is signed by a signer of the institution it names as deciding.
pub fn outcome_verifies(verifier: &ChainVerifier, outcome: &PaymentOutcome) -> bool {
    verifier
        .verify(
            &outcome.institution_certificate,
            outcome.decided_at_ms,
            Role::InstitutionSigner,
        )
        .is_ok_and(|signer| {
            signer.institution_id() == outcome.decided_by
                && signer
                    .public_key()
                    .verify(
                        &payment_outcome_bytes(outcome),
                        &outcome.institution_signature,
                    )
                    .is_ok()
        })
}
