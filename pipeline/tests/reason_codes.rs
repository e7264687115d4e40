//! Every reason a payment can be refused, produced from a crafted input.
//!
//! Each scenario drives the payment stages directly (payer → payee → commit → finalize, chained
//! through a simulated bus) on in-memory ledgers and a manual clock, asserts the outcome (status,
//! exact reason code, deciding stage) or the dead letter, and that no money moved. It returns the
//! code it produced, so that [`every_reason_code_is_produced_by_a_scenario`] can prove that every
//! code of the table has a scenario: a new code without one fails that test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use common::{SimBus, TestNet, WalletMoney};
use dcpipe_connectors::ledger::{PaymentState, Side, WalletLimits};
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::network::TIER_4_OPENING_FEN;
use dcpipe_pipeline::payment::{
    CLOCK_SKEW_MS_MAX_DEFAULT, EXPIRY_MARGIN_MS_DEFAULT, PIN_PROOF_AGE_MS_MAX_DEFAULT,
    RESERVATION_TTL_MS_DEFAULT, commit, ledger_id_of, payer,
};
use dcpipe_pipeline::pki::{
    Algorithm, CertErrorKind, CertifiedKey, Role, SpecialCertificate, SubjectSpec,
};
use dcpipe_pipeline::protocol::{
    FactorHash, FactorInput, certificate_fingerprint, clearing_message_bytes,
    clearing_response_bytes, envelope_digest, payee_consent_bytes, payer_envelope_bytes,
    payment_outcome_bytes, pin_proof_bytes, transaction_factor,
};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::runtime::Verdict;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{
    CURRENCY, PASSWORD_FREE_LIMIT_FEN_DEFAULT, PaymentRequest, PinEntry, Terminal, Touch,
};
use dcpipe_pipeline::tier::TIER_4;
use dcpipe_schemas::{
    Channel, ClearingMessage, ClearingResponse, ClearingStatus, OutcomeStatus, PartyRef, PaymentId,
    PaymentOutcome, PinProof, TransactionEnvelope,
};

/// An amount every provisioned wallet can pay without a PIN.
const SMALL_FEN: i64 = 1_000;

/// Above the password-free limit, below the tier 4 single-payment limit and balance.
const PIN_AMOUNT_FEN: i64 = 150_000;

/// Institutions and wallets of every scenario: the payer's institution holds the first three
/// wallets, the payee's the other three.
const INSTITUTIONS: usize = 2;
const WALLETS: usize = 6;

/// A day, in ms.
const DAY_MS: i64 = 24 * 3600 * 1000;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// One scenario's world: a fresh network, the bus, a payer at the first institution, a payee at
/// the second, and every wallet's money as it was before the payment under test.
struct Case {
    net: TestNet,
    bus: SimBus,
    payer: String,
    payee: String,
    /// A second wallet of the payer's institution.
    other_payer: String,
    before: BTreeMap<String, WalletMoney>,
}

impl Case {
    async fn new() -> Self {
        let net = TestNet::provision(INSTITUTIONS, WALLETS).await;
        let ids = net.institution_ids();
        let payers = net.wallets_of(&ids[0]);
        let payee = net.wallets_of(&ids[1]).remove(0);
        let before = net.wallet_money().await;
        Case {
            payer: payers[0].clone(),
            other_payer: payers[1].clone(),
            payee,
            net,
            bus: SimBus::default(),
            before,
        }
    }

    fn payer_institution(&self) -> String {
        self.net.party(&self.payer).institution_id
    }

    fn payee_institution(&self) -> String {
        self.net.party(&self.payee).institution_id
    }

    /// An honest envelope from the payer to the payee, made now.
    fn envelope(&self, amount_fen: i64, pin: PinEntry) -> TransactionEnvelope {
        self.net.envelope(&self.payer, &self.payee, amount_fen, pin)
    }

    /// The payer's terminal, with its own certificate.
    fn payer_terminal(&self) -> Terminal<'_> {
        self.net
            .network
            .terminal(&self.payer)
            .expect("payer terminal")
    }

    /// The payee's terminal.
    fn payee_terminal(&self) -> Terminal<'_> {
        self.net
            .network
            .terminal(&self.payee)
            .expect("payee terminal")
    }

    /// The payer's keys.
    fn payer_keys(&self) -> &dcpipe_pipeline::pki::WalletKeys {
        self.net
            .network
            .pki
            .wallet(&self.payer)
            .expect("payer keys")
    }

    /// The payee's keys.
    fn payee_keys(&self) -> &dcpipe_pipeline::pki::WalletKeys {
        self.net
            .network
            .pki
            .wallet(&self.payee)
            .expect("payee keys")
    }

    /// Records every wallet's money as the baseline "nothing moved" is judged against.
    async fn mark(&mut self) {
        self.before = self.net.wallet_money().await;
    }

    /// Submits, delivers everything until the bus is empty, and returns the answer.
    async fn run(&mut self, envelope: &TransactionEnvelope) -> PaymentOutcome {
        self.bus.submit(envelope);
        self.bus.drain(&self.net).await;
        self.answer(envelope)
    }

    /// The one answer to a submission: every copy published says the same.
    fn answer(&self, envelope: &TransactionEnvelope) -> PaymentOutcome {
        // An authenticated envelope is answered under its envelope digest, one whose payer
        // could not be authenticated under the digest of its bytes.
        let submission = Submission::of_envelope(envelope);
        let copies: Vec<&PaymentOutcome> = self
            .bus
            .outcomes_of(&envelope.payment_id)
            .into_iter()
            .filter(|o| {
                o.envelope_digest == submission.envelope_digest
                    || o.envelope_digest == submission.submission_digest
            })
            .collect();
        let first = (*copies.first().expect("the submission is answered")).clone();
        for copy in &copies {
            assert_eq!(
                (copy.status, &copy.reason_code, &copy.stage),
                (first.status, &first.reason_code, &first.stage),
                "copies of one answer differ"
            );
        }
        first
    }

    /// No wallet's balance, holds or pending credits changed since the baseline; nothing is in
    /// flight; money is conserved and every ledger passes its integrity check.
    async fn assert_no_money_moved(&self) {
        assert_eq!(
            self.net.wallet_money().await,
            self.before,
            "a rejected payment moved money"
        );
        assert!(
            self.bus.dead_letters.is_empty(),
            "{:?}",
            self.bus.dead_letters
        );
        self.net.assert_settled_and_conserved().await;
    }

    /// Submits `envelope`, asserts that `stage` rejected it with `code` and that no money
    /// moved, and returns the code (the scenario's name in the coverage table).
    async fn assert_refused(
        &mut self,
        envelope: &TransactionEnvelope,
        code: &str,
        stage: &str,
    ) -> String {
        let outcome = self.run(envelope).await;
        assert_rejected(&outcome, code, stage);
        self.assert_no_money_moved().await;
        code.to_owned()
    }

    /// The state of the payer institution's record of a payment, if any.
    async fn payer_record(&self, payment_id: &PaymentId) -> Option<PaymentState> {
        self.net
            .ledger(&self.payer_institution())
            .payment(&ledger_id_of(payment_id), Side::Payer)
            .await
            .expect("payment read")
            .map(|r| r.state)
    }
}

fn assert_rejected(outcome: &PaymentOutcome, code: &str, stage: &str) {
    assert_eq!(
        (
            outcome.status,
            outcome.reason_code.as_deref(),
            outcome.stage.as_str()
        ),
        (OutcomeStatus::Rejected, Some(code), stage),
        "outcome: {} ({})",
        outcome.reason_code.as_deref().unwrap_or("-"),
        outcome.detail
    );
}

fn request(amount_fen: i64, created_at_ms: i64, pin: PinEntry) -> PaymentRequest {
    PaymentRequest {
        payment_id: PaymentId::random(),
        amount_fen,
        channel: Channel::Nfc,
        created_at_ms,
        pin,
    }
}

/// A certificate for the terminal of `wallet_id` at `institution`, of a special kind.
fn special_terminal_certificate(
    case: &Case,
    kind: SpecialCertificate,
    wallet_id: &str,
    institution: &str,
) -> CertifiedKey {
    let network = &case.net.network;
    network
        .pki
        .issue_special(
            kind,
            &SubjectSpec {
                role: Role::Terminal,
                id: wallet_id,
                institution,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            case.net.now_ms(),
            &network.revocations,
        )
        .expect("special certificate issues")
}

/// A valid certificate of `role` for `id` at `institution`, from the institution's CA.
fn issue(case: &Case, role: Role, id: &str, institution: &str) -> CertifiedKey {
    case.net
        .network
        .pki
        .issue(
            &SubjectSpec {
                role,
                id,
                institution,
                algorithm: Algorithm::EcdsaP256Sha256,
            },
            case.net.now_ms() - DAY_MS,
            case.net.now_ms() + 365 * DAY_MS,
        )
        .expect("certificate issues")
}

/// A wallet its institution never opened, holding valid certificates from that institution.
struct UnknownWallet {
    wallet: PartyRef,
    user: CertifiedKey,
    element: CertifiedKey,
}

impl UnknownWallet {
    fn at(case: &Case, institution: String) -> UnknownWallet {
        let wallet_id = format!("w-{institution}-999999");
        UnknownWallet {
            user: issue(case, Role::Terminal, &wallet_id, &institution),
            element: issue(case, Role::SecureElement, &wallet_id, &institution),
            wallet: PartyRef {
                institution_id: institution,
                wallet_id,
            },
        }
    }

    fn terminal(&self) -> Terminal<'_> {
        Terminal {
            wallet: &self.wallet,
            user: &self.user,
            secure_element: &self.element,
            password_free_limit_fen: PASSWORD_FREE_LIMIT_FEN_DEFAULT,
        }
    }
}

/// A small payment negotiated now between two terminals that check each other's certificates.
fn small_payment(case: &Case, payer: Terminal<'_>, payee: Terminal<'_>) -> TransactionEnvelope {
    Touch::connect(payer, payee, &case.net.network.verifier, case.net.now_ms())
        .expect("both certificates are valid")
        .negotiate(&request(
            SMALL_FEN,
            case.net.now_ms(),
            PinEntry::WhenRequired,
        ))
        .expect("negotiation")
}

/// An envelope the payer's terminal signs with `user` as its certificate (the payee's terminal
/// would have refused it: the touch skips that check).
fn envelope_with_payer_certificate(case: &Case, user: &CertifiedKey) -> TransactionEnvelope {
    let payer = Terminal {
        user,
        ..case.payer_terminal()
    };
    Touch::unchecked(payer, case.payee_terminal())
        .negotiate(&request(
            SMALL_FEN,
            case.net.now_ms(),
            PinEntry::WhenRequired,
        ))
        .expect("negotiation")
}

/// The transaction factor of an envelope's terms as they are now.
fn factor_of(
    envelope: &TransactionEnvelope,
    payer_algorithm: Algorithm,
) -> dcpipe_schemas::Digest32 {
    transaction_factor(
        &FactorInput::of_envelope(
            envelope,
            &certificate_fingerprint(&envelope.payer_certificate),
            &certificate_fingerprint(&envelope.payee_certificate),
        ),
        FactorHash::for_payer(payer_algorithm),
    )
}

/// Recomputes the factor from the envelope's terms, and has the payee consent and the payer
/// sign again: the envelope is then faulty only in what the test changed.
fn renegotiate(envelope: &mut TransactionEnvelope, payer: &CertifiedKey, payee: &CertifiedKey) {
    envelope.transaction_factor = factor_of(envelope, payer.key().algorithm());
    envelope.payee_signature = payee
        .key()
        .sign(&payee_consent_bytes(&envelope.transaction_factor))
        .expect("payee signs");
    sign_as_payer(envelope, payer);
}

/// The payer signs the envelope as it is now.
fn sign_as_payer(envelope: &mut TransactionEnvelope, payer: &CertifiedKey) {
    envelope.payer_signature = payer
        .key()
        .sign(&payer_envelope_bytes(envelope))
        .expect("payer signs");
}

/// A PIN proof by `element` for the envelope's factor and payer wallet, made at `verified_at_ms`.
fn pin_proof(
    element: &CertifiedKey,
    envelope: &TransactionEnvelope,
    verified_at_ms: i64,
) -> PinProof {
    PinProof {
        secure_element_certificate: element.certificate().der().to_vec(),
        verified_at_ms,
        signature: element
            .key()
            .sign(&pin_proof_bytes(
                &envelope.transaction_factor,
                &envelope.payer.wallet_id,
                verified_at_ms,
            ))
            .expect("secure element signs"),
    }
}

/// Flips one bit of the last byte (inside a signature: the structure stays well formed).
fn flip_last_byte(bytes: &mut [u8]) {
    let last = bytes.last_mut().expect("not empty");
    *last ^= 0x01;
}

/// Runs a payment up to the point where `subject` has a message waiting, and takes it off the
/// bus: the stages before it have run.
async fn interbank_until(case: &mut Case, subject: &str) -> (TransactionEnvelope, Bytes) {
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    case.bus.submit(&envelope);
    let (payer_oi, payee_oi) = (case.payer_institution(), case.payee_institution());
    for step in [
        subjects::txn_submit(&payer_oi),
        subjects::clearing_request(&payee_oi),
        subjects::clearing_response(&payer_oi),
    ] {
        if step == subject {
            break;
        }
        case.bus.deliver_subject(&case.net, &step).await;
    }
    let message = case
        .bus
        .take(subject)
        .unwrap_or_else(|| panic!("a message waits on {subject}"));
    (envelope, message.payload)
}

fn dead_letter_code(verdict: Verdict) -> (String, String) {
    match verdict {
        Verdict::DeadLetter {
            reason,
            detail,
            outputs,
        } => {
            assert!(outputs.is_empty(), "a dead letter publishes nothing else");
            (reason.as_str().to_owned(), detail)
        }
        Verdict::Done(outputs) => panic!(
            "processed, {} outputs; expected a dead letter",
            outputs.len()
        ),
        Verdict::Retry { why } => panic!("handed back ({why}); expected a dead letter"),
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

async fn special_payer_certificate_is_rejected(kind: SpecialCertificate, code: &str) -> String {
    let mut case = Case::new().await;
    let (payer, institution) = (case.payer.clone(), case.payer_institution());
    let user = special_terminal_certificate(&case, kind, &payer, &institution);
    let envelope = envelope_with_payer_certificate(&case, &user);
    let outcome = case.run(&envelope).await;
    assert_rejected(&outcome, code, payer::STAGE);
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        None,
        "an unauthenticated rejection is not recorded against the payment id"
    );
    case.assert_no_money_moved().await;
    code.to_owned()
}

async fn rejects_expired_payer_certificate() -> String {
    special_payer_certificate_is_rejected(SpecialCertificate::Expired, "cert.expired").await
}

async fn rejects_not_yet_valid_payer_certificate() -> String {
    special_payer_certificate_is_rejected(SpecialCertificate::NotYetValid, "cert.not_yet_valid")
        .await
}

async fn rejects_revoked_payer_certificate() -> String {
    special_payer_certificate_is_rejected(SpecialCertificate::Revoked, "cert.revoked").await
}

async fn rejects_payer_certificate_of_unknown_issuer() -> String {
    special_payer_certificate_is_rejected(SpecialCertificate::UnknownIssuer, "cert.unknown_issuer")
        .await
}

async fn rejects_payer_certificate_issued_for_another_role() -> String {
    special_payer_certificate_is_rejected(SpecialCertificate::WrongRole, "cert.wrong_role").await
}

async fn rejects_revoked_payee_certificate() -> String {
    let mut case = Case::new().await;
    let (payee, institution) = (case.payee.clone(), case.payee_institution());
    let user =
        special_terminal_certificate(&case, SpecialCertificate::Revoked, &payee, &institution);
    let payee_terminal = Terminal {
        user: &user,
        ..case.payee_terminal()
    };
    let envelope = Touch::unchecked(case.payer_terminal(), payee_terminal)
        .negotiate(&request(
            SMALL_FEN,
            case.net.now_ms(),
            PinEntry::WhenRequired,
        ))
        .expect("negotiation");
    case.assert_refused(&envelope, "cert.revoked", payer::STAGE)
        .await
}

async fn rejects_truncated_payer_certificate() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    let half = envelope.payer_certificate.len() / 2;
    envelope.payer_certificate.truncate(half);
    renegotiate(
        &mut envelope,
        &case.payer_keys().terminal,
        &case.payee_keys().terminal,
    );
    case.assert_refused(&envelope, "cert.malformed", payer::STAGE)
        .await
}

async fn rejects_payer_certificate_with_a_tampered_byte() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    // The last byte is inside the issuer's signature over the certificate.
    flip_last_byte(&mut envelope.payer_certificate);
    renegotiate(
        &mut envelope,
        &case.payer_keys().terminal,
        &case.payee_keys().terminal,
    );
    case.assert_refused(&envelope, "cert.signature_invalid", payer::STAGE)
        .await
}

// ---------------------------------------------------------------------------------------------
// Signatures and the transaction factor
// ---------------------------------------------------------------------------------------------

async fn rejects_tampered_payee_consent() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    flip_last_byte(&mut envelope.payee_signature);
    // The payer signs over the tampered consent: only the consent is wrong.
    sign_as_payer(&mut envelope, &case.payer_keys().terminal);
    case.assert_refused(&envelope, "sig.payee_consent_invalid", payer::STAGE)
        .await
}

async fn rejects_tampered_payer_signature() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    flip_last_byte(&mut envelope.payer_signature);
    case.assert_refused(&envelope, "sig.payer_invalid", payer::STAGE)
        .await
}

async fn rejects_amount_changed_after_signing_as_factor_mismatch() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    envelope.amount_fen = 2 * SMALL_FEN;
    // The payer's signature covers the factor, not the amount: it still verifies, so only the
    // recomputed factor can tell.
    let payer_key = case.payer_keys().terminal.key().public_key().clone();
    assert!(
        payer_key
            .verify(&payer_envelope_bytes(&envelope), &envelope.payer_signature)
            .is_ok()
    );
    case.assert_refused(&envelope, "txn.factor_mismatch", payer::STAGE)
        .await
}

// ---------------------------------------------------------------------------------------------
// Password rule and PIN proofs
// ---------------------------------------------------------------------------------------------

async fn rejects_amount_above_password_free_limit_without_pin_proof() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(PIN_AMOUNT_FEN, PinEntry::Never);
    assert!(envelope.pin_proof.is_none());
    let outcome = case.run(&envelope).await;
    assert_rejected(&outcome, "txn.pin_required", payer::STAGE);
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Rejected),
        "an authenticated rejection is recorded, so a resubmission gets the same answer"
    );
    case.assert_no_money_moved().await;
    "txn.pin_required".to_owned()
}

async fn pin_proof_is_rejected(
    case: &mut Case,
    envelope: &mut TransactionEnvelope,
    proof: PinProof,
) -> String {
    envelope.pin_proof = Some(proof);
    sign_as_payer(envelope, &case.payer_keys().terminal);
    case.assert_refused(envelope, "txn.pin_proof_invalid", payer::STAGE)
        .await
}

async fn rejects_pin_proof_with_tampered_signature() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(PIN_AMOUNT_FEN, PinEntry::WhenRequired);
    let mut proof = envelope.pin_proof.clone().expect("a proof above the limit");
    flip_last_byte(&mut proof.signature);
    pin_proof_is_rejected(&mut case, &mut envelope, proof).await
}

async fn rejects_pin_proof_from_another_wallets_secure_element() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(PIN_AMOUNT_FEN, PinEntry::Never);
    let other = case
        .net
        .network
        .pki
        .wallet(&case.other_payer)
        .expect("keys");
    let proof = pin_proof(&other.secure_element, &envelope, envelope.created_at_ms);
    pin_proof_is_rejected(&mut case, &mut envelope, proof).await
}

async fn rejects_pin_proof_made_too_long_after_the_touch() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(PIN_AMOUNT_FEN, PinEntry::Never);
    let late_ms = envelope.created_at_ms + PIN_PROOF_AGE_MS_MAX_DEFAULT + 1;
    let proof = pin_proof(&case.payer_keys().secure_element, &envelope, late_ms);
    pin_proof_is_rejected(&mut case, &mut envelope, proof).await
}

// ---------------------------------------------------------------------------------------------
// Parties, institution, currency, time
// ---------------------------------------------------------------------------------------------

async fn rejects_payer_certificate_of_another_wallet() -> String {
    let mut case = Case::new().await;
    let other = case
        .net
        .network
        .pki
        .wallet(&case.other_payer)
        .expect("keys");
    let envelope = envelope_with_payer_certificate(&case, &other.terminal);
    case.assert_refused(&envelope, "txn.party_mismatch", payer::STAGE)
        .await
}

async fn rejects_envelope_submitted_to_another_institution() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    let frame = dcpipe_schemas::encode(&envelope).expect("encodes");
    case.bus.push(
        subjects::txn_submit(&case.payee_institution()),
        Bytes::from(frame),
    );
    case.bus.drain(&case.net).await;
    let outcome = case.answer(&envelope);
    assert_rejected(&outcome, "txn.wrong_institution", payer::STAGE);
    assert_eq!(outcome.decided_by, case.payee_institution());
    case.assert_no_money_moved().await;
    "txn.wrong_institution".to_owned()
}

async fn rejects_unsupported_currency() -> String {
    let mut case = Case::new().await;
    let mut envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    envelope.currency = "USD".to_owned();
    renegotiate(
        &mut envelope,
        &case.payer_keys().terminal,
        &case.payee_keys().terminal,
    );
    case.assert_refused(&envelope, "txn.currency_unsupported", payer::STAGE)
        .await
}

async fn rejects_envelope_dated_too_far_in_the_past() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    case.net.clock.advance_ms(CLOCK_SKEW_MS_MAX_DEFAULT + 1);
    case.assert_refused(&envelope, "txn.clock_skew", payer::STAGE)
        .await
}

async fn rejects_envelope_dated_too_far_in_the_future() -> String {
    let mut case = Case::new().await;
    let now_ms = case.net.now_ms();
    case.net
        .clock
        .set_ms(now_ms + CLOCK_SKEW_MS_MAX_DEFAULT + 1);
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    case.net.clock.set_ms(now_ms);
    case.assert_refused(&envelope, "txn.clock_skew", payer::STAGE)
        .await
}

// ---------------------------------------------------------------------------------------------
// Duplicates and conflicts
// ---------------------------------------------------------------------------------------------

async fn rejects_same_payment_id_with_other_amount_as_conflict() -> String {
    let mut case = Case::new().await;
    let first = case.envelope(3_000, PinEntry::WhenRequired);
    assert_eq!(case.run(&first).await.status, OutcomeStatus::Completed);
    case.mark().await;
    let renegotiated = case.net.envelope_with_id(
        first.payment_id,
        &case.payer,
        &case.payee,
        9_000,
        PinEntry::WhenRequired,
    );
    case.assert_refused(&renegotiated, "txn.conflict", payer::STAGE)
        .await
}

async fn repeated_identical_submission_gets_the_first_outcome_and_moves_no_money() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(2_500, PinEntry::WhenRequired);
    let first = case.run(&envelope).await;
    assert_eq!(first.status, OutcomeStatus::Completed);
    case.mark().await;
    for _ in 0..2 {
        let again = case.run(&envelope).await;
        assert_eq!(
            (again.status, again.reason_code),
            (first.status, first.reason_code.clone())
        );
    }
    let submission = Submission::of_envelope(&envelope);
    assert!(case.bus.book.violations(&[submission]).is_empty());
    case.assert_no_money_moved().await;
    "COMPLETED".to_owned()
}

async fn repeated_rejected_submission_gets_the_same_rejection() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(
        TIER_4.limits.single_payment_limit_fen + 1,
        PinEntry::WhenRequired,
    );
    let first = case.run(&envelope).await;
    assert_rejected(&first, "limit.single_payment", payer::STAGE);
    let again = case.run(&envelope).await;
    assert_rejected(&again, "limit.single_payment", payer::STAGE);
    let submission = Submission::of_envelope(&envelope);
    assert!(case.bus.book.violations(&[submission]).is_empty());
    case.assert_no_money_moved().await;
    "limit.single_payment".to_owned()
}

// ---------------------------------------------------------------------------------------------
// The payer's wallet
// ---------------------------------------------------------------------------------------------

async fn rejects_payer_wallet_unknown_to_its_institution() -> String {
    let mut case = Case::new().await;
    let stranger = UnknownWallet::at(&case, case.payer_institution());
    let envelope = small_payment(&case, stranger.terminal(), case.payee_terminal());
    case.assert_refused(&envelope, "payer.unknown_wallet", payer::STAGE)
        .await
}

async fn rejects_locked_payer_wallet() -> String {
    let mut case = Case::new().await;
    case.net
        .ledger(&case.payer_institution())
        .set_locked(&case.payer, true)
        .await
        .expect("lock")
        .expect("wallet exists");
    case.assert_refused(
        &case.envelope(SMALL_FEN, PinEntry::WhenRequired),
        "payer.wallet_locked",
        payer::STAGE,
    )
    .await
}

async fn rejects_amount_above_single_payment_limit() -> String {
    let mut case = Case::new().await;
    let amount_fen = TIER_4.limits.single_payment_limit_fen + 1;
    case.assert_refused(
        &case.envelope(amount_fen, PinEntry::WhenRequired),
        "limit.single_payment",
        payer::STAGE,
    )
    .await
}

async fn set_payer_limits(case: &Case, limits: WalletLimits) {
    case.net
        .ledger(&case.payer_institution())
        .set_limits(&case.payer, limits)
        .await
        .expect("set limits")
        .expect("wallet exists");
}

async fn rejects_payment_that_takes_the_day_over_the_daily_limit() -> String {
    let mut case = Case::new().await;
    set_payer_limits(
        &case,
        WalletLimits {
            daily_limit_fen: 10_000,
            ..TIER_4.limits
        },
    )
    .await;
    let first = case
        .run(&case.envelope(6_000, PinEntry::WhenRequired))
        .await;
    assert_eq!(first.status, OutcomeStatus::Completed);
    case.mark().await;
    case.assert_refused(
        &case.envelope(6_000, PinEntry::WhenRequired),
        "limit.daily",
        payer::STAGE,
    )
    .await
}

async fn rejects_amount_above_available_balance() -> String {
    let mut case = Case::new().await;
    set_payer_limits(
        &case,
        WalletLimits {
            single_payment_limit_fen: 10 * TIER_4_OPENING_FEN,
            daily_limit_fen: 10 * TIER_4_OPENING_FEN,
            ..TIER_4.limits
        },
    )
    .await;
    let envelope = case.envelope(TIER_4_OPENING_FEN + 1, PinEntry::WhenRequired);
    case.assert_refused(&envelope, "funds.insufficient", payer::STAGE)
        .await
}

async fn rejects_amount_beyond_the_ledgers_range_as_invalid_request() -> String {
    let mut case = Case::new().await;
    // The schema accepts amounts up to ten times the most the ledger moves in one payment.
    let amount_fen = dcpipe_connectors::ledger::AMOUNT_FEN_MAX + 1;
    case.assert_refused(
        &case.envelope(amount_fen, PinEntry::WhenRequired),
        "txn.invalid_request",
        payer::STAGE,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The payee's wallet (decided by the payee's institution, voided by the payer's)
// ---------------------------------------------------------------------------------------------

async fn rejects_payee_wallet_unknown_to_its_institution() -> String {
    let mut case = Case::new().await;
    let stranger = UnknownWallet::at(&case, case.payee_institution());
    let envelope = small_payment(&case, case.payer_terminal(), stranger.terminal());
    case.assert_refused(&envelope, "payee.unknown_wallet", commit::STAGE)
        .await
}

async fn rejects_locked_payee_wallet() -> String {
    let mut case = Case::new().await;
    case.net
        .ledger(&case.payee_institution())
        .set_locked(&case.payee, true)
        .await
        .expect("lock")
        .expect("wallet exists");
    case.assert_refused(
        &case.envelope(SMALL_FEN, PinEntry::WhenRequired),
        "payee.wallet_locked",
        commit::STAGE,
    )
    .await
}

async fn rejects_payment_that_takes_payee_over_its_balance_limit() -> String {
    let mut case = Case::new().await;
    case.net
        .ledger(&case.payee_institution())
        .set_limits(
            &case.payee,
            WalletLimits {
                balance_limit_fen: TIER_4_OPENING_FEN + SMALL_FEN - 1,
                ..TIER_4.limits
            },
        )
        .await
        .expect("set limits")
        .expect("wallet exists");
    case.assert_refused(
        &case.envelope(SMALL_FEN, PinEntry::WhenRequired),
        "payee.balance_limit",
        commit::STAGE,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

async fn voids_reservation_the_payee_institution_never_answers() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    case.bus.submit(&envelope);
    case.bus
        .deliver_subject(&case.net, &subjects::txn_submit(&case.payer_institution()))
        .await;
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Reserved)
    );
    case.net.clock.advance_ms(RESERVATION_TTL_MS_DEFAULT);
    case.bus.sweep(&case.net).await;
    let outcome = case.answer(&envelope);
    assert_rejected(&outcome, "txn.timeout", commit::STAGE);
    // The clearing message still arrives, late: it is refused and changes nothing.
    case.bus.drain(&case.net).await;
    assert_rejected(&case.answer(&envelope), "txn.timeout", commit::STAGE);
    case.assert_no_money_moved().await;
    "txn.timeout".to_owned()
}

async fn refuses_clearing_message_that_arrives_too_close_to_expiry() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    case.bus.submit(&envelope);
    case.bus
        .deliver_subject(&case.net, &subjects::txn_submit(&case.payer_institution()))
        .await;
    // Still before the expiry, but inside the payee's safety margin.
    case.net
        .clock
        .advance_ms(RESERVATION_TTL_MS_DEFAULT - EXPIRY_MARGIN_MS_DEFAULT + 1);
    case.bus.drain(&case.net).await;
    let outcome = case.answer(&envelope);
    assert_rejected(&outcome, "txn.timeout", commit::STAGE);
    case.assert_no_money_moved().await;
    "txn.timeout".to_owned()
}

// ---------------------------------------------------------------------------------------------
// Dead letters: what no institution answers
// ---------------------------------------------------------------------------------------------

async fn dead_letters_undecodable_bytes_at_every_payment_stage() -> String {
    let case = Case::new().await;
    let oi = case.payer_institution();
    let mut codes = BTreeSet::new();
    for subject in [
        subjects::txn_submit(&oi),
        subjects::clearing_request(&oi),
        subjects::clearing_response(&oi),
        subjects::txn_result(&oi),
    ] {
        let verdict = case.net.handle_one(&subject, b"not a frame").await;
        let (code, _) = dead_letter_code(verdict);
        codes.insert(code);
    }
    assert_eq!(
        codes,
        BTreeSet::from(["schema.bad_magic".to_owned()]),
        "one code for one fault at every stage"
    );
    case.assert_no_money_moved().await;
    codes.into_iter().next().expect("one code")
}

async fn dead_letters_clearing_message_with_tampered_institution_signature() -> String {
    let mut case = Case::new().await;
    let subject = subjects::clearing_request(&case.payee_institution());
    let (_, payload) = interbank_until(&mut case, &subject).await;
    let mut message: ClearingMessage = dcpipe_schemas::decode(&payload).expect("decodes");
    flip_last_byte(&mut message.institution_signature);
    let forged = dcpipe_schemas::encode(&message).expect("encodes");
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &forged).await);
    assert_eq!(code, "sig.institution_invalid");
    let payee_money = case.net.wallet_money().await[&case.payee];
    assert_eq!(payee_money, case.before[&case.payee], "nothing credited");
    code
}

async fn dead_letters_clearing_message_signed_by_another_institution() -> String {
    let mut case = Case::new().await;
    let payee_oi = case.payee_institution();
    let subject = subjects::clearing_request(&payee_oi);
    let (_, payload) = interbank_until(&mut case, &subject).await;
    let mut message: ClearingMessage = dcpipe_schemas::decode(&payload).expect("decodes");
    // The payee's institution signs a message claiming to come from the payer's.
    let signer = &case
        .net
        .network
        .pki
        .institution(&payee_oi)
        .expect("keys")
        .signer;
    message.institution_certificate = signer.certificate().der().to_vec();
    message.institution_signature = signer
        .key()
        .sign(&clearing_message_bytes(&message))
        .expect("signs");
    let forged = dcpipe_schemas::encode(&message).expect("encodes");
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &forged).await);
    assert_eq!(code, "txn.party_mismatch");
    code
}

async fn dead_letters_clearing_message_addressed_to_another_institution() -> String {
    let mut case = Case::new().await;
    let subject = subjects::clearing_request(&case.payee_institution());
    let (_, payload) = interbank_until(&mut case, &subject).await;
    let elsewhere = subjects::clearing_request(&case.payer_institution());
    let (code, _) = dead_letter_code(case.net.handle_one(&elsewhere, &payload).await);
    assert_eq!(code, "txn.wrong_institution");
    code
}

async fn dead_letters_clearing_response_with_tampered_institution_signature() -> String {
    let mut case = Case::new().await;
    let subject = subjects::clearing_response(&case.payer_institution());
    let (envelope, payload) = interbank_until(&mut case, &subject).await;
    let mut response: ClearingResponse = dcpipe_schemas::decode(&payload).expect("decodes");
    flip_last_byte(&mut response.institution_signature);
    let forged = dcpipe_schemas::encode(&response).expect("encodes");
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &forged).await);
    assert_eq!(code, "sig.institution_invalid");
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Reserved),
        "a forged answer decides nothing"
    );
    code
}

async fn dead_letters_outcome_with_tampered_institution_signature() -> String {
    let mut case = Case::new().await;
    let payee_oi = case.payee_institution();
    case.bus
        .submit(&case.envelope(SMALL_FEN, PinEntry::WhenRequired));
    for subject in [
        subjects::txn_submit(&case.payer_institution()),
        subjects::clearing_request(&payee_oi),
        subjects::clearing_response(&case.payer_institution()),
    ] {
        case.bus.deliver_subject(&case.net, &subject).await;
    }
    let subject = subjects::txn_result(&payee_oi);
    let queued = case
        .bus
        .take(&subject)
        .expect("the outcome waits for the payee");
    let mut outcome: PaymentOutcome = dcpipe_schemas::decode(&queued.payload).expect("decodes");
    assert_eq!(outcome.stage, commit::STAGE);
    flip_last_byte(&mut outcome.institution_signature);
    let forged = dcpipe_schemas::encode(&outcome).expect("encodes");
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &forged).await);
    assert_eq!(code, "sig.institution_invalid");
    let payee_money = case.net.wallet_money().await[&case.payee];
    assert_eq!(
        payee_money.pending_credit_fen, SMALL_FEN,
        "the credit stays pending"
    );
    code
}

async fn dead_letters_response_for_unknown_payment() -> String {
    let case = Case::new().await;
    let payload = acceptance(&case, PaymentId::random(), SMALL_FEN);
    let subject = subjects::clearing_response(&case.payer_institution());
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &payload).await);
    assert_eq!(code, Reason::UnknownPayment.as_str());
    case.assert_no_money_moved().await;
    code
}

/// An authentic acceptance by the payee's institution of a payment of `amount_fen`, encoded.
fn acceptance(case: &Case, payment_id: PaymentId, amount_fen: i64) -> Vec<u8> {
    let signer = signer_of(case, &case.payee_institution());
    let mut response = ClearingResponse {
        payment_id,
        payer_institution_id: case.payer_institution(),
        payee_institution_id: case.payee_institution(),
        status: ClearingStatus::Accepted,
        reason_code: None,
        amount_fen,
        responded_at_ms: case.net.now_ms(),
        institution_certificate: signer.certificate().der().to_vec(),
        institution_signature: Vec::new(),
    };
    resign_response(case, &mut response)
}

// ---------------------------------------------------------------------------------------------
// Contradictions between institutions: dead-lettered under their own codes, never only counted
// ---------------------------------------------------------------------------------------------

/// The institution signer of `institution`.
fn signer_of<'a>(case: &'a Case, institution: &str) -> &'a CertifiedKey {
    &case
        .net
        .network
        .pki
        .institution(institution)
        .expect("institution keys")
        .signer
}

/// A final outcome of `envelope`'s payment as the payer's institution decides it, authentic
/// (signed by the payer's institution), encoded.
fn decided_outcome(
    case: &Case,
    envelope: &TransactionEnvelope,
    status: OutcomeStatus,
    reason: Option<Reason>,
) -> Vec<u8> {
    let payer_oi = case.payer_institution();
    let signer = signer_of(case, &payer_oi);
    let mut outcome = PaymentOutcome {
        payment_id: envelope.payment_id,
        envelope_digest: envelope_digest(envelope),
        status,
        reason_code: reason.map(|r| r.as_str().to_owned()),
        detail: "decided by the payer's institution".to_owned(),
        payer: envelope.payer.clone(),
        payee: envelope.payee.clone(),
        amount_fen: envelope.amount_fen,
        currency: CURRENCY.to_owned(),
        decided_at_ms: case.net.now_ms(),
        decided_by: payer_oi,
        stage: commit::STAGE.to_owned(),
        institution_certificate: signer.certificate().der().to_vec(),
        institution_signature: Vec::new(),
    };
    outcome.institution_signature = signer
        .key()
        .sign(&payment_outcome_bytes(&outcome))
        .expect("signs");
    dcpipe_schemas::encode(&outcome).expect("encodes")
}

/// Signs a clearing response again as the payee's institution, after a test changed it.
fn resign_response(case: &Case, response: &mut ClearingResponse) -> Vec<u8> {
    let signer = signer_of(case, &case.payee_institution());
    response.institution_signature = signer
        .key()
        .sign(&clearing_response_bytes(response))
        .expect("signs");
    dcpipe_schemas::encode(response).expect("encodes")
}

/// The payee institution's refusal, for `reason`, of the payment an authentic acceptance is for.
fn refusal_of(case: &Case, accepted: &[u8], reason: Reason) -> Vec<u8> {
    let mut refusal: ClearingResponse = dcpipe_schemas::decode(accepted).expect("decodes");
    refusal.status = ClearingStatus::Rejected;
    refusal.reason_code = Some(reason.as_str().to_owned());
    resign_response(case, &mut refusal)
}

/// The reason, detail and number of outputs of a dead letter.
fn dead_letter_with_outputs(verdict: Verdict) -> (Reason, String, usize) {
    match verdict {
        Verdict::DeadLetter {
            reason,
            detail,
            outputs,
        } => (reason, detail, outputs.len()),
        Verdict::Done(outputs) => panic!(
            "processed, {} outputs; expected a dead letter",
            outputs.len()
        ),
        Verdict::Retry { why } => panic!("handed back ({why}); expected a dead letter"),
    }
}

fn assert_done(verdict: Verdict) {
    assert!(
        matches!(verdict, Verdict::Done(_)),
        "expected no dead letter: {:?}",
        verdict.reason()
    );
}

/// The payer's institution says a payment completed that the payee's institution never saw:
/// one side moved money, the other never credited it.
async fn dead_letters_completed_outcome_the_payee_ledger_never_recorded() -> String {
    let case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    let subject = subjects::txn_result(&case.payee_institution());
    let completed = decided_outcome(&case, &envelope, OutcomeStatus::Completed, None);
    let (code, detail) = dead_letter_code(case.net.handle_one(&subject, &completed).await);
    assert_eq!(code, Reason::CompletedUnknown.as_str(), "{detail}");
    case.assert_no_money_moved().await;
    code
}

/// The payer's institution voided a payment (the payee reversed its pending credit), then says
/// it completed.
async fn dead_letters_completed_outcome_after_the_payee_reversed_the_credit() -> String {
    let mut case = Case::new().await;
    let subject = subjects::txn_result(&case.payee_institution());
    let (envelope, genuine) = interbank_until(&mut case, &subject).await;
    let voided = decided_outcome(
        &case,
        &envelope,
        OutcomeStatus::Rejected,
        Some(Reason::Timeout),
    );
    assert_done(case.net.handle_one(&subject, &voided).await);
    let (code, detail) = dead_letter_code(case.net.handle_one(&subject, &genuine).await);
    assert_eq!(code, Reason::CompletedVoided.as_str(), "{detail}");
    assert!(detail.contains("reversed"), "{detail}");
    let payee_money = case.net.wallet_money().await[&case.payee];
    assert_eq!(
        payee_money, case.before[&case.payee],
        "the payee's side stays reversed"
    );
    code
}

/// A void that arrived before its clearing message left a tombstone; a completion of the same
/// payment then contradicts it.
#[tokio::test]
async fn dead_letters_completed_outcome_meeting_a_tombstone() {
    let case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    let subject = subjects::txn_result(&case.payee_institution());
    let voided = decided_outcome(
        &case,
        &envelope,
        OutcomeStatus::Rejected,
        Some(Reason::Timeout),
    );
    assert_done(case.net.handle_one(&subject, &voided).await);
    let completed = decided_outcome(&case, &envelope, OutcomeStatus::Completed, None);
    let (code, detail) = dead_letter_code(case.net.handle_one(&subject, &completed).await);
    assert_eq!(code, Reason::CompletedVoided.as_str(), "{detail}");
    assert!(detail.contains("voided"), "{detail}");
    case.assert_no_money_moved().await;
}

/// The payer's institution completed a payment (the payee credited it), then says it voided it.
async fn dead_letters_voided_outcome_after_the_payee_credited_it() -> String {
    let mut case = Case::new().await;
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    assert_eq!(case.run(&envelope).await.status, OutcomeStatus::Completed);
    let credited = case.net.wallet_money().await[&case.payee];
    let subject = subjects::txn_result(&case.payee_institution());
    let voided = decided_outcome(
        &case,
        &envelope,
        OutcomeStatus::Rejected,
        Some(Reason::Timeout),
    );
    let (code, detail) = dead_letter_code(case.net.handle_one(&subject, &voided).await);
    assert_eq!(code, Reason::VoidedCredited.as_str(), "{detail}");
    assert_eq!(
        case.net.wallet_money().await[&case.payee],
        credited,
        "the credit stands"
    );
    code
}

/// The payee's institution refused a payment (the payer voided it), then accepts it: the first
/// decision stands and is announced again, and the answer is dead-lettered.
async fn dead_letters_acceptance_after_the_payee_institution_refused() -> String {
    let mut case = Case::new().await;
    let subject = subjects::clearing_response(&case.payer_institution());
    let (envelope, accepted) = interbank_until(&mut case, &subject).await;
    let refusal = refusal_of(&case, &accepted, Reason::PayeeWalletLocked);
    assert_done(case.net.handle_one(&subject, &refusal).await);
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Voided)
    );
    let (reason, detail, outputs) =
        dead_letter_with_outputs(case.net.handle_one(&subject, &accepted).await);
    assert_eq!(reason, Reason::DecisionChanged, "{detail}");
    assert!(outputs > 0, "the final outcome is announced again");
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Voided),
        "the first decision stands"
    );
    reason.as_str().to_owned()
}

/// The payee's institution accepted a payment (the payer committed it), then refuses it.
#[tokio::test]
async fn dead_letters_refusal_after_the_payee_institution_accepted() {
    let mut case = Case::new().await;
    let subject = subjects::clearing_response(&case.payer_institution());
    let (envelope, accepted) = interbank_until(&mut case, &subject).await;
    assert_done(case.net.handle_one(&subject, &accepted).await);
    let refusal = refusal_of(&case, &accepted, Reason::PayeeBalanceLimit);
    let (reason, detail, _) =
        dead_letter_with_outputs(case.net.handle_one(&subject, &refusal).await);
    assert_eq!(reason, Reason::DecisionChanged, "{detail}");
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Committed),
        "the first decision stands"
    );
}

/// An acceptance that arrives after the expiry sweep voided the hold tells of time passing,
/// not of a contradiction: it is answered with the final outcome.
#[tokio::test]
async fn acceptance_after_the_expiry_is_no_contradiction() {
    let mut case = Case::new().await;
    let subject = subjects::clearing_response(&case.payer_institution());
    let (envelope, accepted) = interbank_until(&mut case, &subject).await;
    case.net.clock.advance_ms(RESERVATION_TTL_MS_DEFAULT);
    case.bus.sweep(&case.net).await;
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Voided)
    );
    assert_done(case.net.handle_one(&subject, &accepted).await);
}

/// The payer's institution completed a payment for another amount than the payee's institution
/// holds pending: the credit follows the payee's record, and the disagreement is dead-lettered.
async fn dead_letters_completed_outcome_for_another_amount() -> String {
    let mut case = Case::new().await;
    let subject = subjects::txn_result(&case.payee_institution());
    let (mut envelope, _) = interbank_until(&mut case, &subject).await;
    envelope.amount_fen += 1;
    let completed = decided_outcome(&case, &envelope, OutcomeStatus::Completed, None);
    let (code, detail) = dead_letter_code(case.net.handle_one(&subject, &completed).await);
    assert_eq!(code, Reason::TermsMismatch.as_str(), "{detail}");
    code
}

/// An authentic response for another amount than the payer's institution reserved.
#[tokio::test]
async fn dead_letters_response_for_another_amount() {
    let mut case = Case::new().await;
    let subject = subjects::clearing_response(&case.payer_institution());
    let (_, accepted) = interbank_until(&mut case, &subject).await;
    let mut response: ClearingResponse = dcpipe_schemas::decode(&accepted).expect("decodes");
    response.amount_fen += 1;
    let response = resign_response(&case, &mut response);
    let (reason, detail, _) =
        dead_letter_with_outputs(case.net.handle_one(&subject, &response).await);
    assert_eq!(reason, Reason::TermsMismatch, "{detail}");
}

/// A response for a payment the payer's institution rejected (it never sent a clearing message
/// for it) is for a payment it never reserved.
#[tokio::test]
async fn dead_letters_response_for_a_payment_the_payer_rejected() {
    let mut case = Case::new().await;
    let envelope = case.envelope(PIN_AMOUNT_FEN, PinEntry::Never);
    assert_rejected(&case.run(&envelope).await, "txn.pin_required", payer::STAGE);
    let payload = acceptance(&case, envelope.payment_id, envelope.amount_fen);
    let subject = subjects::clearing_response(&case.payer_institution());
    let (code, _) = dead_letter_code(case.net.handle_one(&subject, &payload).await);
    assert_eq!(code, Reason::UnknownPayment.as_str());
    assert_eq!(
        case.payer_record(&envelope.payment_id).await,
        Some(PaymentState::Rejected)
    );
}

// ---------------------------------------------------------------------------------------------
// Answers that time and copies must not change
// ---------------------------------------------------------------------------------------------

/// A terminal that retries after the clock-skew window (a phone that lost its connection for a
/// few minutes) gets the first outcome again, not `txn.clock_skew`: a rejection before
/// authentication first looks for the payment's record.
#[tokio::test]
async fn resubmission_after_the_clock_skew_window_gets_the_first_outcome() {
    let mut case = Case::new().await;
    let envelope = case.envelope(2_500, PinEntry::WhenRequired);
    assert_eq!(case.run(&envelope).await.status, OutcomeStatus::Completed);
    case.net.clock.advance_ms(CLOCK_SKEW_MS_MAX_DEFAULT + 1);
    case.bus.submit(&envelope);
    case.bus.drain(&case.net).await;
    let submission = Submission::of_envelope(&envelope);
    assert_eq!(case.bus.book.violations(&[submission]), Vec::new());
}

/// A copy of a completed envelope with a broken payer signature cannot make the payer's
/// institution contradict the payment's outcome.
#[tokio::test]
async fn forged_copy_of_a_completed_envelope_does_not_contradict_its_outcome() {
    let mut case = Case::new().await;
    let envelope = case.envelope(2_500, PinEntry::WhenRequired);
    assert_eq!(case.run(&envelope).await.status, OutcomeStatus::Completed);
    let mut forged = envelope.clone();
    flip_last_byte(&mut forged.payer_signature);
    case.bus.submit(&forged);
    case.bus.drain(&case.net).await;
    let submission = Submission::of_envelope(&envelope);
    assert_eq!(case.bus.book.violations(&[submission]), Vec::new());
}

/// A forged copy that arrives before the genuine envelope is rejected under the digest of its
/// own bytes; the genuine payment still completes, and neither answer contradicts the other.
#[tokio::test]
async fn forged_copy_arriving_first_is_rejected_under_its_own_bytes() {
    let mut case = Case::new().await;
    let envelope = case.envelope(2_500, PinEntry::WhenRequired);
    let mut forged = envelope.clone();
    flip_last_byte(&mut forged.payer_signature);
    let forged_answer = case.run(&forged).await;
    assert_rejected(&forged_answer, "sig.payer_invalid", payer::STAGE);
    assert_eq!(
        forged_answer.envelope_digest,
        Submission::of_envelope(&forged).submission_digest
    );
    assert_eq!(case.run(&envelope).await.status, OutcomeStatus::Completed);
    let submissions = [
        Submission::of_envelope(&forged),
        Submission::of_envelope(&envelope),
    ];
    assert_eq!(case.bus.book.violations(&submissions), Vec::new());
}

/// The payer stage's clearing message takes its reservation time and expiry from the stage's
/// own clock, so a stage whose clock is behind the ledger's (a replay, a simulation) still
/// forwards it.
#[tokio::test]
async fn payer_stage_forwards_clearing_when_its_clock_is_behind_the_ledgers() {
    let case = Case::new().await;
    case.net
        .clock
        .advance_ms(-(RESERVATION_TTL_MS_DEFAULT + 1_000));
    let envelope = case.envelope(SMALL_FEN, PinEntry::WhenRequired);
    let frame = dcpipe_schemas::encode(&envelope).expect("encodes");
    let subject = subjects::txn_submit(&case.payer_institution());
    let input = dcpipe_pipeline::runtime::Input {
        subject: &subject,
        payload: &frame,
        delivery_count: 1,
        position: dcpipe_connectors::bus::Position {
            partition: 0,
            offset: 1,
        },
    };
    let handled = case.net.stage(&subject).handle(&[input]).await;
    assert!(handled.is_ok(), "{:?}", handled.err());
}

// ---------------------------------------------------------------------------------------------
// The tests, and the proof that every code has one
// ---------------------------------------------------------------------------------------------

type ScenarioFuture = Pin<Box<dyn Future<Output = String>>>;

/// One `#[tokio::test]` per scenario, and the list of them all for the coverage check.
macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let code = super::$name().await;
                assert!(!code.is_empty());
            }
        )+

        /// Every scenario, by name.
        pub(super) fn all_scenarios() -> Vec<(&'static str, ScenarioFuture)> {
            vec![$((stringify!($name), Box::pin(super::$name()) as ScenarioFuture)),+]
        }
    };
}

mod scenario {
    use super::ScenarioFuture;

    scenarios!(
        rejects_expired_payer_certificate,
        rejects_not_yet_valid_payer_certificate,
        rejects_revoked_payer_certificate,
        rejects_payer_certificate_of_unknown_issuer,
        rejects_payer_certificate_issued_for_another_role,
        rejects_revoked_payee_certificate,
        rejects_truncated_payer_certificate,
        rejects_payer_certificate_with_a_tampered_byte,
        rejects_tampered_payee_consent,
        rejects_tampered_payer_signature,
        rejects_amount_changed_after_signing_as_factor_mismatch,
        rejects_amount_above_password_free_limit_without_pin_proof,
        rejects_pin_proof_with_tampered_signature,
        rejects_pin_proof_from_another_wallets_secure_element,
        rejects_pin_proof_made_too_long_after_the_touch,
        rejects_payer_certificate_of_another_wallet,
        rejects_envelope_submitted_to_another_institution,
        rejects_unsupported_currency,
        rejects_envelope_dated_too_far_in_the_past,
        rejects_envelope_dated_too_far_in_the_future,
        rejects_same_payment_id_with_other_amount_as_conflict,
        repeated_identical_submission_gets_the_first_outcome_and_moves_no_money,
        repeated_rejected_submission_gets_the_same_rejection,
        rejects_payer_wallet_unknown_to_its_institution,
        rejects_locked_payer_wallet,
        rejects_amount_above_single_payment_limit,
        rejects_payment_that_takes_the_day_over_the_daily_limit,
        rejects_amount_above_available_balance,
        rejects_amount_beyond_the_ledgers_range_as_invalid_request,
        rejects_payee_wallet_unknown_to_its_institution,
        rejects_locked_payee_wallet,
        rejects_payment_that_takes_payee_over_its_balance_limit,
        voids_reservation_the_payee_institution_never_answers,
        refuses_clearing_message_that_arrives_too_close_to_expiry,
        dead_letters_undecodable_bytes_at_every_payment_stage,
        dead_letters_clearing_message_with_tampered_institution_signature,
        dead_letters_clearing_message_signed_by_another_institution,
        dead_letters_clearing_message_addressed_to_another_institution,
        dead_letters_clearing_response_with_tampered_institution_signature,
        dead_letters_outcome_with_tampered_institution_signature,
        dead_letters_response_for_unknown_payment,
        dead_letters_completed_outcome_the_payee_ledger_never_recorded,
        dead_letters_completed_outcome_after_the_payee_reversed_the_credit,
        dead_letters_voided_outcome_after_the_payee_credited_it,
        dead_letters_acceptance_after_the_payee_institution_refused,
        dead_letters_completed_outcome_for_another_amount,
    );
}

/// The certificate faults a terminal's certificate can realistically have. The other
/// [`CertErrorKind`]s need a CA that breaks the profile (covered by the PKI's own tests), and
/// `cert.too_large` cannot reach a stage: the schema bounds certificate fields well below it.
const TERMINAL_CERTIFICATE_FAULTS: [CertErrorKind; 7] = [
    CertErrorKind::Expired,
    CertErrorKind::NotYetValid,
    CertErrorKind::Revoked,
    CertErrorKind::UnknownIssuer,
    CertErrorKind::WrongRole,
    CertErrorKind::Malformed,
    CertErrorKind::SignatureInvalid,
];

#[tokio::test]
async fn every_reason_code_is_produced_by_a_scenario() {
    let mut produced: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for (name, scenario) in scenario::all_scenarios() {
        produced.entry(scenario.await).or_default().push(name);
    }
    // The payment flow's codes: its rejections, its dead letters and the contradictions between
    // institutions. Schema, settlement, stage and revocation codes have their own tests.
    let required = Reason::all()
        .filter(|reason| {
            let family = reason.as_str().split('.').next();
            matches!(
                family,
                Some("sig" | "txn" | "payer" | "payee" | "limit" | "funds" | "contradiction")
            )
        })
        .chain(TERMINAL_CERTIFICATE_FAULTS.map(Reason::Certificate))
        .map(|reason| reason.as_str())
        .chain(["COMPLETED"]);
    let missing: Vec<&str> = required
        .filter(|code| !produced.contains_key(*code))
        .collect();
    assert!(
        missing.is_empty(),
        "codes no scenario produces: {missing:?}; produced: {produced:?}"
    );
    assert!(
        produced.keys().any(|code| code.starts_with("schema.")),
        "no scenario produces a schema.* dead letter"
    );
}
