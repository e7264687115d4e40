//! A recorded run, audited clean, then tampered with step by step: after each tamper the audit
//! finds exactly the discrepancies of the tampers so far, each with its code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, Outgoing, Record, ReplayFrom};
use dcpipe_connectors::ledger::{Ledger, LedgerUrl};
use dcpipe_pipeline::audit::{self, AuditCode, AuditOptions, AuditReport, LedgerReconciler};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::ops::follow::SubjectReader;
use dcpipe_pipeline::pki::CertifiedKey;
use dcpipe_pipeline::protocol::{payment_outcome_bytes, settlement_instruction_bytes};
use dcpipe_pipeline::revocation::revocation_update;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
use dcpipe_schemas::{
    Channel, InstructionId, OutcomeStatus, PaymentId, PaymentOutcome, SettlementInstruction,
    SettlementPosition, TransactionEnvelope,
};

use crate::harness::{Backend, Running};

/// How long the run may take to answer and settle.
const DEADLINE: Duration = Duration::from_secs(60);

fn envelope(running: &Running, payer: &str, payee: &str, amount_fen: i64) -> TransactionEnvelope {
    let network = &running.network;
    Touch::connect(
        network.terminal(payer).expect("payer terminal"),
        network.terminal(payee).expect("payee terminal"),
        &network.verifier,
        system_now_ms(),
    )
    .expect("terminals verify each other")
    .negotiate(&PaymentRequest {
        payment_id: PaymentId::random(),
        amount_fen,
        channel: Channel::Nfc,
        created_at_ms: system_now_ms(),
        pin: PinEntry::WhenRequired,
    })
    .expect("negotiation")
}

async fn publish(bus: &dyn Bus, subject: &str, payload: Vec<u8>) {
    bus.publish(Outgoing::new(subject, Bytes::from(payload)))
        .await
        .expect("published");
}

async fn read_all(bus: &dyn Bus, subject: &str) -> Vec<Record> {
    SubjectReader::new(subject, ReplayFrom::Beginning, None)
        .poll(bus, usize::MAX)
        .await
        .expect("read")
}

/// Clearings counted by the instructions on the bus.
async fn clearings_settled(bus: &dyn Bus) -> i64 {
    read_all(bus, subjects::SETTLEMENT_INSTRUCTION)
        .await
        .iter()
        .filter_map(|r| dcpipe_schemas::decode::<SettlementInstruction>(&r.payload).ok())
        .map(|i| i.positions.iter().map(|p| p.clearing_count).sum::<i64>() / 2)
        .sum()
}

fn signer_of<'a>(running: &'a Running, institution: &str) -> &'a CertifiedKey {
    &running
        .network
        .pki
        .institutions()
        .find(|(id, _)| *id == institution)
        .expect("institution keys")
        .1
        .signer
}

fn sign_outcome(outcome: &mut PaymentOutcome, key: &CertifiedKey) {
    outcome.institution_signature = key
        .key()
        .sign(&payment_outcome_bytes(outcome))
        .expect("signs");
}

fn signed_instruction(running: &Running, window_id: i64, rows: &[(&str, i64, i64)]) -> Vec<u8> {
    let now_ms = system_now_ms();
    let positions = rows
        .iter()
        .map(|(oi, debit_fen, credit_fen)| SettlementPosition {
            window_id,
            window_start_at_ms: now_ms - 1_000,
            window_end_at_ms: now_ms,
            institution_id: (*oi).to_owned(),
            net_fen: credit_fen - debit_fen,
            debit_fen: *debit_fen,
            credit_fen: *credit_fen,
            clearing_count: 1,
        })
        .collect();
    let signer = running.network.pki.settlement_signer();
    let mut instruction = SettlementInstruction {
        instruction_id: InstructionId::random(),
        window_id,
        window_start_at_ms: now_ms - 1_000,
        window_end_at_ms: now_ms,
        positions,
        late_clearing_count: 0,
        late_amount_fen: 0,
        issued_at_ms: now_ms,
        issuer_certificate: signer.certificate().der().to_vec(),
        signature: Vec::new(),
    };
    instruction.signature = signer
        .key()
        .sign(&settlement_instruction_bytes(&instruction))
        .expect("signs");
    dcpipe_schemas::encode(&instruction).expect("encodes")
}

/// The reconciler of the run's institutions' ledgers.
pub(crate) fn reconciler(running: &Running) -> LedgerReconciler {
    let ledgers: BTreeMap<String, Arc<dyn Ledger>> = running
        .network
        .institutions
        .iter()
        .map(|(id, i)| (id.clone(), Arc::clone(&i.ledger)))
        .collect();
    LedgerReconciler::new(ledgers)
}

async fn audit_of(running: &Running, ledgers: &LedgerReconciler) -> AuditReport {
    audit_record(running.bus.as_ref(), &running.network, Some(ledgers)).await
}

/// Audits the whole record of a stopped run (with the ledgers when given), as `dcpipe audit`
/// does.
pub(crate) async fn audit_record(
    bus: &dyn Bus,
    network: &Network,
    ledgers: Option<&LedgerReconciler>,
) -> AuditReport {
    let institutions: Vec<String> = network.institutions.keys().cloned().collect();
    let mut options = AuditOptions::new(institutions, system_now_ms() + 1);
    // The stages are stopped: nothing at the end of the range is still in flight.
    options.edge_ms = 0;
    audit::run(
        bus,
        Arc::clone(network.pki.trust_store()),
        ledgers,
        &options,
        |_| {},
    )
    .await
    .expect("the audit runs")
}

/// Asserts the report holds exactly `expected` discrepancies by code.
pub(crate) fn assert_found(report: &AuditReport, expected: &BTreeMap<AuditCode, u64>, step: &str) {
    let found: BTreeMap<String, u64> = report.discrepancies_by_code.clone();
    let wanted: BTreeMap<String, u64> = expected
        .iter()
        .map(|(code, n)| (code.as_str().to_owned(), *n))
        .collect();
    assert_eq!(found, wanted, "after {step}: {:#?}", report.discrepancies);
}

pub(crate) async fn a_clean_record_reconciles_and_each_tamper_is_found_with_its_code(
    backend: &mut Backend,
) {
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    backend.ledger = LedgerUrl::SqliteDir(ledger_dir.path().to_owned());
    let mut running = Running::start(backend, 3, 24).await;
    let wallets: Vec<_> = running
        .network
        .wallets
        .iter()
        .map(|w| w.party.clone())
        .collect();

    // The record: interbank and in-house payments, and one forged envelope.
    let mut submissions = Vec::new();
    let mut interbank = 0;
    for i in 0..12 {
        // Even ones between institutions, odd ones in-house.
        let payer = &wallets[i];
        let payee = wallets
            .iter()
            .rev()
            .find(|w| {
                (w.institution_id != payer.institution_id) == (i % 2 == 0)
                    && w.wallet_id != payer.wallet_id
            })
            .expect("a payee");
        let env = envelope(
            &running,
            &payer.wallet_id,
            &payee.wallet_id,
            1_000 + 37 * i as i64,
        );
        if payer.institution_id != payee.institution_id {
            interbank += 1;
        }
        let frame = dcpipe_schemas::encode(&env).expect("encodes");
        publish(
            running.bus.as_ref(),
            &subjects::txn_submit(&payer.institution_id),
            frame.clone(),
        )
        .await;
        submissions.push(Submission::of(&env, &frame));
    }
    let mut forged = envelope(&running, &wallets[0].wallet_id, &wallets[1].wallet_id, 500);
    forged.amount_fen = 50_000;
    let frame = dcpipe_schemas::encode(&forged).expect("encodes");
    publish(
        running.bus.as_ref(),
        &subjects::txn_submit(&wallets[0].institution_id),
        frame.clone(),
    )
    .await;
    submissions.push(Submission::of(&forged, &frame));
    assert!(
        running
            .collector
            .wait_until(DEADLINE, |book| book.answers_all(&submissions))
            .await,
        "every submission answered"
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while clearings_settled(running.bus.as_ref()).await < interbank {
        assert!(tokio::time::Instant::now() < deadline, "settlement in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop_stages().await;
    let ledgers = reconciler(&running);

    // Clean: every payment judged, no discrepancy.
    let report = audit_of(&running, &ledgers).await;
    let mut expected: BTreeMap<AuditCode, u64> = BTreeMap::new();
    assert_found(&report, &expected, "the clean run");
    assert_eq!(report.counts.payments_judged, 13, "{report:#?}");
    assert_eq!(report.counts.payments_completed, 12);
    assert_eq!(report.counts.payments_partial, 0);
    assert!(report.counts.windows_checked >= 1);
    assert_eq!(report.counts.ledger_payments_checked, 13);
    // Every wallet opened in the range: each balance is its opening plus the record's payments.
    assert_eq!(
        report.counts.wallets_checked,
        running.network.wallets.len() as u64,
        "{report:#?}"
    );
    assert_eq!(report.counts.wallets_partial, 0);

    let bus = running.bus.as_ref();
    let settled: Vec<PaymentOutcome> = read_all(bus, subjects::SETTLEMENT_CLEARING)
        .await
        .iter()
        .map(|r| dcpipe_schemas::decode::<PaymentOutcome>(&r.payload).expect("decodes"))
        .collect();

    // A wallet balance changed behind dcpipe's back (the payment records untouched, so that
    // no stored total betrays it): the record does not explain it. Then put back.
    let payee = &settled[0].payee;
    let db = ledger_dir
        .path()
        .join(format!("{}.db", payee.institution_id));
    let move_balance = |fen: i64| {
        let connection = rusqlite::Connection::open(&db).expect("ledger file");
        let rows = connection
            .execute(
                "UPDATE wallets SET balance_fen = balance_fen + ?2 WHERE wallet_id = ?1",
                rusqlite::params![payee.wallet_id, fen],
            )
            .expect("update");
        assert_eq!(rows, 1, "the payee's wallet");
    };
    move_balance(5_000);
    let report = audit_of(&running, &ledgers).await;
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.code, d.location.subject.clone()))
        .collect();
    assert_eq!(
        found,
        [(
            AuditCode::WalletBalanceMismatch,
            format!("ledger {} wallet {}", payee.institution_id, payee.wallet_id)
        )],
        "{:#?}",
        report.discrepancies
    );
    move_balance(-5_000);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "the balance put back",
    );

    assert!(
        settled.len() >= 4,
        "enough interbank payments to tamper with"
    );
    let result_subject = |o: &PaymentOutcome| subjects::txn_result(&o.payer.institution_id);
    let other_institution = |oi: &str| {
        running
            .network
            .institutions
            .keys()
            .find(|id| *id != oi)
            .expect("another institution")
            .clone()
    };

    // A forged outcome: signed by a key that is not the deciding institution's.
    let mut forged = settled[0].clone();
    forged.detail = "forged".into();
    let key = signer_of(&running, &other_institution(&forged.decided_by));
    sign_outcome(&mut forged, key);
    publish(
        bus,
        &result_subject(&forged),
        dcpipe_schemas::encode(&forged).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::SignatureInvalid, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a forged outcome",
    );

    // An outcome for a payment never submitted, authentically signed.
    let mut invented = settled[0].clone();
    invented.payment_id = PaymentId::random();
    invented.status = OutcomeStatus::Rejected;
    invented.reason_code = Some("funds.insufficient".into());
    let key = signer_of(&running, &invented.decided_by);
    sign_outcome(&mut invented, key);
    publish(
        bus,
        &result_subject(&invented),
        dcpipe_schemas::encode(&invented).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::OutcomeWithoutSubmission, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "an invented payment",
    );

    // A COMPLETED outcome whose amount differs from its envelope's.
    let mut inflated = settled[1].clone();
    inflated.amount_fen += 100;
    let key = signer_of(&running, &inflated.decided_by);
    sign_outcome(&mut inflated, key);
    publish(
        bus,
        &result_subject(&inflated),
        dcpipe_schemas::encode(&inflated).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::OutcomeMismatch, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "an inflated outcome",
    );

    // A second, different final outcome for a completed payment.
    let mut reversed = settled[2].clone();
    reversed.status = OutcomeStatus::Rejected;
    reversed.reason_code = Some("funds.insufficient".into());
    let key = signer_of(&running, &reversed.decided_by);
    sign_outcome(&mut reversed, key);
    publish(
        bus,
        &result_subject(&reversed),
        dcpipe_schemas::encode(&reversed).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::OutcomeContradiction, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a second outcome",
    );

    // An instruction whose positions match no clearing.
    let (a, b) = (
        &settled[0].payer.institution_id,
        &settled[0].payee.institution_id,
    );
    let invented_window = signed_instruction(&running, 1 << 40, &[(a, 700, 0), (b, 0, 700)]);
    publish(bus, subjects::SETTLEMENT_INSTRUCTION, invented_window).await;
    expected.insert(AuditCode::SettlementMismatch, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "an invented window",
    );

    // A settled clearing sent again and counted in a second window.
    let again = &settled[3];
    let clearing_records = read_all(bus, subjects::SETTLEMENT_CLEARING).await;
    let original = clearing_records
        .iter()
        .find(|r| {
            dcpipe_schemas::decode::<PaymentOutcome>(&r.payload)
                .is_ok_and(|o| o.payment_id == again.payment_id)
        })
        .expect("its clearing");
    publish(
        bus,
        subjects::SETTLEMENT_CLEARING,
        original.payload.to_vec(),
    )
    .await;
    let twice = signed_instruction(
        &running,
        (1 << 40) + 1,
        &[
            (&again.payer.institution_id, again.amount_fen, 0),
            (&again.payee.institution_id, 0, again.amount_fen),
        ],
    );
    publish(bus, subjects::SETTLEMENT_INSTRUCTION, twice).await;
    expected.insert(AuditCode::ClearingInTwoWindows, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a clearing in two windows",
    );

    // An institution signer revoked now: what it signed before still verifies (the whole
    // record above), what it signs after does not.
    let revoked_oi = settled[0].decided_by.clone();
    let keys = running
        .network
        .pki
        .institutions()
        .find(|(id, _)| *id == revoked_oi)
        .expect("keys")
        .1;
    let revoked_at_ms = system_now_ms();
    let update = revocation_update(
        &keys.ca,
        &[keys.signer.certificate()],
        "keyCompromise",
        1,
        revoked_at_ms,
    )
    .expect("update");
    publish(
        bus,
        subjects::PKI_REVOCATION,
        dcpipe_schemas::encode(&update).expect("encodes"),
    )
    .await;
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a revocation after the record",
    );
    let mut late = settled[0].clone();
    late.decided_at_ms = revoked_at_ms + 1;
    sign_outcome(&mut late, &keys.signer);
    publish(
        bus,
        &result_subject(&late),
        dcpipe_schemas::encode(&late).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::CertificateRevoked, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a message after revocation",
    );

    // A ledger row changed behind dcpipe's back.
    let changed = &settled[1];
    let db = ledger_dir
        .path()
        .join(format!("{}.db", changed.payee.institution_id));
    let connection = rusqlite::Connection::open(&db).expect("ledger file");
    let rows = connection
        .execute(
            "UPDATE payments SET amount_fen = amount_fen + 1 WHERE payment_id = ?1 AND side = 'payee'",
            [changed.payment_id.as_bytes().to_vec()],
        )
        .expect("update");
    assert_eq!(rows, 1, "the payee's record of the payment");
    drop(connection);
    let report = audit_of(&running, &ledgers).await;
    assert!(
        report.count_of(AuditCode::LedgerMismatch) >= 1
            && report
                .discrepancies
                .iter()
                .any(|d| d.code == AuditCode::LedgerMismatch
                    && d.payment_id == Some(changed.payment_id.to_string())),
        "{:#?}",
        report.discrepancies
    );
    running.stop().await;
}
