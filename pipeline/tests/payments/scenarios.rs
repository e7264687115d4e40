//! Payment scenarios, each run on every backend.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{ConsumerConfig, Outgoing, dead_letter_subject};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::payment::payer;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch};
use dcpipe_schemas::{
    Channel, DeadLetter, OutcomeStatus, PaymentId, SettlementInstruction, TransactionEnvelope,
};

use crate::harness::{Backend, Running};

/// How long a scenario waits for the pipeline before failing.
const DEADLINE: Duration = Duration::from_secs(60);

#[macro_export]
macro_rules! payment_suite {
    ($backend:expr) => {
        $crate::payment_suite!(@each $backend;
            interbank_payments_complete_conserve_money_and_settle,
            repeated_submission_gets_the_first_outcome_and_moves_no_money,
            conflicting_resubmission_is_rejected_as_conflict,
            forged_payer_signature_is_rejected_and_moves_no_money,
            undecodable_submission_is_dead_lettered_with_its_bytes,
        );
    };
    (@each $backend:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let backend = $backend;
                $crate::scenarios::$scenario(&backend).await;
            }
        )+
    };
}

/// Polls `condition` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn envelope(
    running: &Running,
    payer: &str,
    payee: &str,
    amount_fen: i64,
    pin: PinEntry,
) -> TransactionEnvelope {
    let network = &running.network;
    let touch = Touch::connect(
        network.terminal(payer).expect("payer terminal"),
        network.terminal(payee).expect("payee terminal"),
        &network.verifier,
        system_now_ms(),
    )
    .expect("terminals verify each other");
    touch
        .negotiate(&PaymentRequest {
            payment_id: PaymentId::random(),
            amount_fen,
            channel: Channel::Nfc,
            created_at_ms: system_now_ms(),
            pin,
        })
        .expect("negotiation")
}

async fn submit(running: &Running, envelope: &TransactionEnvelope) -> Submission {
    let frame = dcpipe_schemas::encode(envelope).expect("envelope encodes");
    running
        .bus
        .publish(
            Outgoing::new(
                subjects::txn_submit(&envelope.payer.institution_id),
                frame.clone(),
            )
            .with_key(envelope.payer.wallet_id.clone().into_bytes()),
        )
        .await
        .expect("published");
    Submission::of(envelope, &frame)
}

/// Wallets of two different institutions: (payer, payee) pairs.
fn interbank_pairs(running: &Running, count: usize) -> Vec<(String, String)> {
    let wallets = &running.network.wallets;
    let mut pairs = Vec::new();
    for i in 0..wallets.len() {
        for j in 0..wallets.len() {
            if pairs.len() == count {
                return pairs;
            }
            let (a, b) = (
                &wallets[i].party,
                &wallets[(i + j + 1) % wallets.len()].party,
            );
            if a.institution_id != b.institution_id && pairs.iter().all(|(p, _)| p != &a.wallet_id)
            {
                pairs.push((a.wallet_id.clone(), b.wallet_id.clone()));
            }
        }
    }
    pairs
}

async fn wait_for_answers(running: &Running, submissions: &[Submission]) {
    assert!(
        running
            .collector
            .wait_until(DEADLINE, |book| book.answers_all(submissions))
            .await,
        "not every submission was answered in time"
    );
}

async fn wait_until_settled(running: &Running) {
    eventually("no money is in flight", || async {
        running
            .network
            .money()
            .await
            .map(|m| m.held_fen == 0 && m.pending_credit_fen == 0)
            .unwrap_or(false)
    })
    .await;
    let money = running.network.money().await.expect("money report");
    assert!(
        money.is_settled_and_conserved(),
        "money not conserved: {money:?}"
    );
}

pub(crate) async fn interbank_payments_complete_conserve_money_and_settle(backend: &Backend) {
    let running = Running::start(backend, 3, 24).await;
    let mut submissions = Vec::new();
    for (i, (payer, payee)) in interbank_pairs(&running, 12).iter().enumerate() {
        let amount_fen = 1_000 + i64::try_from(i).expect("small") * 137;
        submissions.push(
            submit(
                &running,
                &envelope(&running, payer, payee, amount_fen, PinEntry::WhenRequired),
            )
            .await,
        );
    }
    wait_for_answers(&running, &submissions).await;
    let completed = running.collector.with_book(|book| {
        assert!(
            book.violations(&submissions).is_empty(),
            "{:?}",
            book.violations(&submissions)
        );
        submissions
            .iter()
            .filter(|s| book.answer(s).expect("answered").status == OutcomeStatus::Completed)
            .count()
    });
    assert_eq!(
        completed,
        submissions.len(),
        "every funded payment completes"
    );
    wait_until_settled(&running).await;

    // Settlement nets exactly what completed between institutions.
    let expected = running
        .collector
        .with_book(|book| book.expected_net_positions(&submissions));
    let mut consumer = running
        .bus
        .consumer(ConsumerConfig::new(
            subjects::SETTLEMENT_INSTRUCTION,
            "test-settlement",
        ))
        .await
        .expect("consumer");
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    let mut clearings = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while clearings < completed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "settlement incomplete: {net:?}"
        );
        for delivery in consumer
            .fetch(64, Duration::from_millis(200))
            .await
            .expect("fetch")
        {
            let instruction: SettlementInstruction =
                dcpipe_schemas::decode(&delivery.record.payload).expect("instruction decodes");
            assert_eq!(
                instruction.positions.iter().map(|p| p.net_fen).sum::<i64>(),
                0
            );
            for position in &instruction.positions {
                *net.entry(position.institution_id.clone()).or_insert(0) += position.net_fen;
            }
            clearings += usize::try_from(
                instruction
                    .positions
                    .iter()
                    .map(|p| p.clearing_count)
                    .sum::<i64>()
                    / 2,
            )
            .expect("count");
            delivery.ack().await.expect("ack");
        }
    }
    net.retain(|_, v| *v != 0);
    let mut expected = expected;
    expected.retain(|_, v| *v != 0);
    assert_eq!(net, expected);
    running.stop().await;
}

pub(crate) async fn repeated_submission_gets_the_first_outcome_and_moves_no_money(
    backend: &Backend,
) {
    let running = Running::start(backend, 2, 8).await;
    let (payer, payee) = interbank_pairs(&running, 1).remove(0);
    let envelope = envelope(&running, &payer, &payee, 2_500, PinEntry::WhenRequired);
    let first = submit(&running, &envelope).await;
    wait_for_answers(&running, &[first]).await;
    wait_until_settled(&running).await;
    let before = running.network.money().await.expect("money");
    for _ in 0..3 {
        assert_eq!(submit(&running, &envelope).await, first);
    }
    assert!(
        running
            .collector
            .wait_until(DEADLINE, |book| book
                .answer(&first)
                .is_some_and(|a| a.copies >= 4))
            .await,
        "each resubmission is answered"
    );
    running.collector.with_book(|book| {
        let answer = book.answer(&first).expect("answered");
        assert_eq!(answer.status, OutcomeStatus::Completed);
        assert!(book.violations(&[first]).is_empty());
    });
    wait_until_settled(&running).await;
    let after = running.network.money().await.expect("money");
    assert_eq!(
        before.by_institution, after.by_institution,
        "resubmissions moved money"
    );
    let payer_wallet = running.network.institutions[&envelope.payer.institution_id]
        .ledger
        .wallet(&payer)
        .await
        .expect("wallet")
        .expect("exists");
    let opening = running
        .network
        .wallets
        .iter()
        .find(|w| w.party.wallet_id == payer)
        .expect("wallet info")
        .opening_fen;
    assert_eq!(
        payer_wallet.account.balance_fen,
        opening - 2_500,
        "debited once"
    );
    running.stop().await;
}

pub(crate) async fn conflicting_resubmission_is_rejected_as_conflict(backend: &Backend) {
    let running = Running::start(backend, 2, 8).await;
    let (payer, payee) = interbank_pairs(&running, 1).remove(0);
    let original = envelope(&running, &payer, &payee, 3_000, PinEntry::WhenRequired);
    let first = submit(&running, &original).await;
    wait_for_answers(&running, &[first]).await;
    // The same payment id, renegotiated for another amount.
    let mut other = envelope(&running, &payer, &payee, 9_000, PinEntry::WhenRequired);
    let touch = Touch::connect(
        running.network.terminal(&payer).expect("payer"),
        running.network.terminal(&payee).expect("payee"),
        &running.network.verifier,
        system_now_ms(),
    )
    .expect("touch");
    other = touch
        .negotiate(&PaymentRequest {
            payment_id: original.payment_id,
            amount_fen: other.amount_fen,
            channel: Channel::Nfc,
            created_at_ms: system_now_ms(),
            pin: PinEntry::WhenRequired,
        })
        .expect("negotiation");
    let second = submit(&running, &other).await;
    wait_for_answers(&running, &[first, second]).await;
    running.collector.with_book(|book| {
        assert_eq!(
            book.answer(&first).expect("first").status,
            OutcomeStatus::Completed
        );
        let conflict = book.answer(&second).expect("second");
        assert_eq!(conflict.status, OutcomeStatus::Rejected);
        assert_eq!(conflict.reason_code.as_deref(), Some("txn.conflict"));
        assert!(book.violations(&[first, second]).is_empty());
    });
    wait_until_settled(&running).await;
    running.stop().await;
}

pub(crate) async fn forged_payer_signature_is_rejected_and_moves_no_money(backend: &Backend) {
    let running = Running::start(backend, 2, 8).await;
    let (payer, payee) = interbank_pairs(&running, 1).remove(0);
    let mut forged = envelope(&running, &payer, &payee, 4_000, PinEntry::WhenRequired);
    forged.payer_signature[10] ^= 0x40;
    let submission = submit(&running, &forged).await;
    wait_for_answers(&running, &[submission]).await;
    running.collector.with_book(|book| {
        let answer = book.answer(&submission).expect("answered");
        assert_eq!(answer.status, OutcomeStatus::Rejected);
        assert_eq!(answer.reason_code.as_deref(), Some("sig.payer_invalid"));
        assert_eq!(answer.stage, payer::STAGE);
    });
    let money = running.network.money().await.expect("money");
    assert!(money.is_settled_and_conserved(), "{money:?}");
    running.stop().await;
}

pub(crate) async fn undecodable_submission_is_dead_lettered_with_its_bytes(backend: &Backend) {
    let running = Running::start(backend, 2, 4).await;
    let institution = running
        .network
        .institutions
        .keys()
        .next()
        .expect("one")
        .clone();
    let garbage = Bytes::from_static(b"\x00\x00\x00\x00\x01not an envelope");
    running
        .bus
        .publish(Outgoing::new(
            subjects::txn_submit(&institution),
            garbage.clone(),
        ))
        .await
        .expect("published");
    let mut consumer = running
        .bus
        .consumer(ConsumerConfig::new(
            dead_letter_subject(payer::STAGE),
            "test-dead-letters",
        ))
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let letter = loop {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        let batch = consumer
            .fetch(8, Duration::from_millis(200))
            .await
            .expect("fetch");
        if let Some(delivery) = batch.into_iter().next() {
            break dcpipe_schemas::decode::<DeadLetter>(&delivery.record.payload)
                .expect("dead letter decodes");
        }
    };
    assert_eq!(letter.original, garbage.to_vec());
    assert_eq!(letter.stage, payer::STAGE);
    assert_eq!(letter.subject, subjects::txn_submit(&institution));
    assert!(
        letter.reason_code.starts_with("schema."),
        "{}",
        letter.reason_code
    );
    running.stop().await;
}
