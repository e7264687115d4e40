//! Offline-wallet scenarios, each run on every backend.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Consumer, ConsumerConfig, Outgoing, Position, dead_letter_subject};
use dcpipe_connectors::ledger::offline::{OfflineOpening, PurseFunding};
use dcpipe_connectors::ledger::{Ledger, OfflineLedger};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::network::MoneyReport;
use dcpipe_pipeline::pki::{CertificateTemplate, CertifiedKey, PrivateKey, Role};
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_digest, offline_payment_id};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::runtime::{Input, Stage, Verdict};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::remote::{issue_command, order_key_rotation};
use dcpipe_pipeline::wallet::stages::record::terms_of;
use dcpipe_pipeline::wallet::stages::{blacklist, clearing, sync};
use dcpipe_pipeline::wallet::{
    Command, CommandApplied, HardWallet, OFFLINE_TIER_4, OfflineNetwork, SatelliteFix, SyncPolicy,
    WalletProvisioning, certify_rotated_key, copied_key, key_fingerprint, key_set_input,
};
use dcpipe_schemas::{
    CommandId, DeadLetter, Digest32, OfflineLimits, OfflinePayment, OutcomeStatus, PartyRef,
    PaymentId, RemoteControlCommand, SyncStatus, WalletAction, WalletSyncResult,
};

use crate::harness::{Backend, Running};

/// How long a scenario waits for the pipeline before failing.
const DEADLINE: Duration = Duration::from_secs(90);
/// What each wallet moves into its purse before going offline.
const PURSE_FEN: i64 = 50_000;
const OI_A: &str = "oi01";
const OI_B: &str = "oi02";

fn fix(at_ms: i64) -> SatelliteFix {
    SatelliteFix { at_ms }
}

/// A network of two institutions, 8 wallets, every stage running, and a reader of the sync
/// results of each institution.
struct World {
    running: Running,
    results: Vec<Box<dyn Consumer>>,
    answers: VecDeque<WalletSyncResult>,
    anchors: Vec<Vec<u8>>,
    /// When the wallets went offline (their last sync): an hour ago.
    t0: i64,
}

impl World {
    async fn start(backend: &Backend) -> Self {
        let running = Running::start(backend, 2, 8).await;
        let mut results = Vec::new();
        for oi in [OI_A, OI_B] {
            results.push(
                running
                    .bus
                    .consumer(ConsumerConfig::new(
                        subjects::wallet_result(oi),
                        "test-wallet-results",
                    ))
                    .await
                    .expect("results consumer"),
            );
        }
        let pki = &running.network.pki;
        let mut anchors = vec![pki.root().certificate().der().to_vec()];
        anchors.extend(
            pki.institutions()
                .map(|(_, keys)| keys.ca.certificate().der().to_vec()),
        );
        World {
            running,
            results,
            answers: VecDeque::new(),
            anchors,
            t0: system_now_ms() - HOUR_MS,
        }
    }

    fn ledger(&self, institution: &str) -> &Arc<dyn Ledger> {
        &self.running.network.institutions[institution].ledger
    }

    fn offline(&self, institution: &str) -> &dyn OfflineLedger {
        self.ledger(institution).offline()
    }

    /// The `n`th wallet of `institution`.
    fn party(&self, institution: &str, n: usize) -> PartyRef {
        self.running
            .network
            .wallets
            .iter()
            .filter(|w| w.party.institution_id == institution)
            .nth(n)
            .map(|w| w.party.clone())
            .expect("wallet")
    }

    /// The `n`th wallet of `institution`, opened for offline use an hour ago with a purse of
    /// [`PURSE_FEN`] funded from its balance.
    async fn offline_wallet(&self, institution: &str, n: usize) -> HardWallet {
        let party = self.party(institution, n);
        let keys = self
            .running
            .network
            .pki
            .wallet(&party.wallet_id)
            .expect("wallet keys");
        let spki = keys
            .wallet
            .certificate()
            .public_key()
            .to_spki_der()
            .expect("spki");
        let offline = self.offline(institution);
        offline
            .open_offline(&[OfflineOpening {
                wallet_id: party.wallet_id.clone(),
                key_version: 1,
                key_fingerprint: key_fingerprint(&spki),
                last_sync_at_ms: self.t0,
                limits: terms_of(&OFFLINE_TIER_4),
            }])
            .await
            .expect("open offline");
        let mut funding_id = [0u8; 16];
        funding_id[..party.wallet_id.len().min(16)]
            .copy_from_slice(&party.wallet_id.as_bytes()[..party.wallet_id.len().min(16)]);
        offline
            .fund_purses(&[PurseFunding {
                funding_id,
                wallet_id: party.wallet_id.clone(),
                amount_fen: PURSE_FEN,
            }])
            .await
            .expect("fund");
        let mut wallet = HardWallet::provision(WalletProvisioning {
            party,
            tier: 4,
            key: copied_key(&keys.wallet).expect("copy"),
            key_version: 1,
            limits: OFFLINE_TIER_4,
            trust_anchors: self.anchors.clone(),
            last_sync_at_ms: self.t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .expect("provisioned");
        wallet.fund_purse(PURSE_FEN).expect("purse");
        wallet
    }

    /// Wallets 0 and 1 of [`OI_A`] and wallet 0 of [`OI_B`] offline, with their online
    /// balances after funding.
    async fn three_wallets(&self) -> ([HardWallet; 3], [i64; 3]) {
        let wallets = [
            self.offline_wallet(OI_A, 0).await,
            self.offline_wallet(OI_A, 1).await,
            self.offline_wallet(OI_B, 0).await,
        ];
        let before = [
            self.balance(wallets[0].party()).await,
            self.balance(wallets[1].party()).await,
            self.balance(wallets[2].party()).await,
        ];
        (wallets, before)
    }

    async fn publish(&self, subject: String, key: &str, frame: Vec<u8>) {
        self.running
            .bus
            .publish(Outgoing::new(subject, Bytes::from(frame)).with_key(key.as_bytes().to_vec()))
            .await
            .expect("published");
    }

    /// The next answer naming `digest` for `wallet_id`, in the order they were published.
    async fn answer(&mut self, wallet_id: &str, digest: Digest32) -> WalletSyncResult {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let found = self
                .answers
                .iter()
                .position(|r| r.wallet_id == wallet_id && r.key_set_digest == Some(digest));
            if let Some(index) = found {
                return self.answers.remove(index).expect("answer");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer for {wallet_id}"
            );
            for consumer in &mut self.results {
                for delivery in consumer
                    .fetch(16, Duration::from_millis(50))
                    .await
                    .expect("fetch")
                {
                    let result: WalletSyncResult =
                        dcpipe_schemas::decode(&delivery.record.payload).expect("result decodes");
                    self.answers.push_back(result);
                    delivery.ack().await.expect("ack");
                }
            }
        }
    }

    /// Publishes a key set's frame for `wallet_id` of `institution` and waits for the next
    /// answer naming `digest`.
    async fn answered(
        &mut self,
        institution: &str,
        wallet_id: &str,
        frame: Vec<u8>,
        digest: Digest32,
    ) -> WalletSyncResult {
        self.publish(subjects::wallet_keyset(institution), wallet_id, frame)
            .await;
        self.answer(wallet_id, digest).await
    }

    /// The wallet reconnects now: publishes its key set, waits for the answer and applies it.
    async fn sync(&mut self, wallet: &mut HardWallet) -> WalletSyncResult {
        let upload = wallet.key_set(fix(system_now_ms())).expect("key set");
        let party = wallet.party().clone();
        let result = self
            .answered(
                &party.institution_id,
                &party.wallet_id,
                upload.frame.clone(),
                upload.digest,
            )
            .await;
        wallet
            .apply_sync_result(&result, &self.running.network.verifier)
            .expect("the wallet takes its answer");
        result
    }

    /// Waits until every payment completed once and no money is in flight, and returns the
    /// money then.
    async fn cleared(&self, payments: &[(PaymentId, Digest32)]) -> MoneyReport {
        let submissions: Vec<Submission> = payments
            .iter()
            .map(|(payment_id, digest)| Submission {
                payment_id: *payment_id,
                envelope_digest: *digest,
                submission_digest: *digest,
            })
            .collect();
        let completed = self
            .running
            .collector
            .wait_until(DEADLINE, |book| {
                submissions.iter().all(|s| {
                    book.answer(s)
                        .is_some_and(|a| a.status == OutcomeStatus::Completed)
                })
            })
            .await;
        assert!(completed, "every offline payment completes");
        self.running
            .collector
            .with_book(|book| assert!(book.violations(&submissions).is_empty()));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let money = self.running.network.money().await.expect("money");
            if money.held_fen == 0 && money.pending_credit_fen == 0 {
                assert!(money.is_settled_and_conserved(), "{money:?}");
                return money;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "money still in flight: {money:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until each payment has its final outcome, of the status given (a rejection of a
    /// voided payment: `payee.wallet_locked`), and no money is in flight.
    async fn settled(&self, expected: &[(PaymentId, Digest32, OutcomeStatus)]) -> MoneyReport {
        let submissions: Vec<(Submission, OutcomeStatus)> = expected
            .iter()
            .map(|(payment_id, digest, status)| {
                (
                    Submission {
                        payment_id: *payment_id,
                        envelope_digest: *digest,
                        submission_digest: *digest,
                    },
                    *status,
                )
            })
            .collect();
        let reached = self
            .running
            .collector
            .wait_until(DEADLINE, |book| {
                submissions.iter().all(|(s, status)| {
                    book.answer(s).is_some_and(|a| {
                        a.status == *status
                            && (a.status == OutcomeStatus::Completed
                                || a.reason_code.as_deref()
                                    == Some(Reason::PayeeWalletLocked.as_str()))
                    })
                })
            })
            .await;
        assert!(reached, "every payment reaches the outcome the model says");
        let only: Vec<Submission> = submissions.iter().map(|(s, _)| *s).collect();
        self.running
            .collector
            .with_book(|book| assert!(book.violations(&only).is_empty()));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let money = self.running.network.money().await.expect("money");
            if money.held_fen == 0 && money.pending_credit_fen == 0 {
                assert!(money.is_settled_and_conserved(), "{money:?}");
                return money;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "money still in flight: {money:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn balance(&self, party: &PartyRef) -> i64 {
        self.ledger(&party.institution_id)
            .wallet(&party.wallet_id)
            .await
            .expect("read")
            .expect("wallet")
            .account
            .balance_fen
    }

    async fn dead_letter(&self, stage: &str) -> DeadLetter {
        let mut consumer = self
            .running
            .bus
            .consumer(ConsumerConfig::new(
                dead_letter_subject(stage),
                "test-dead-letters",
            ))
            .await
            .expect("consumer");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no dead letter");
            let batch = consumer
                .fetch(8, Duration::from_millis(200))
                .await
                .expect("fetch");
            if let Some(delivery) = batch.into_iter().next() {
                let letter = dcpipe_schemas::decode::<DeadLetter>(&delivery.record.payload)
                    .expect("dead letter decodes");
                delivery.ack().await.expect("ack");
                return letter;
            }
        }
    }
}

/// `payer` pays `payee` offline at `at_ms`; the payee takes it. Returns the payment's id and
/// digest.
fn pay(
    payer: &mut HardWallet,
    payee: &mut HardWallet,
    amount_fen: i64,
    at_ms: i64,
) -> (PaymentId, Digest32, Vec<u8>) {
    let frame = payer
        .pay(payee.party(), amount_fen, fix(at_ms))
        .expect("the payer pays");
    payee
        .receive(frame.as_bytes(), fix(at_ms), PAID_AT_SKEW_MS_MAX_DEFAULT)
        .expect("the payee takes it");
    let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
    let digest = offline_payment_digest(&payment);
    (
        offline_payment_id(&digest),
        digest,
        frame.as_bytes().to_vec(),
    )
}

pub(crate) async fn offline_payments_clear_once_whoever_uploads_first(backend: &Backend) {
    let mut world = World::start(backend).await;
    let ([mut a0, mut a1, mut b0], before) = world.three_wallets().await;
    let at = world.t0 + 10 * 60_000;
    let (p1, d1, frame1) = pay(&mut a0, &mut b0, 1_000, at);
    let (p2, d2, _) = pay(&mut a0, &mut a1, 2_000, at + 1_000);
    let (p3, d3, _) = pay(&mut b0, &mut a0, 500, at + 2_000);
    // The payee of p1 uploads first; its key set also carries its own p3.
    let b0_answer = world.sync(&mut b0).await;
    assert_eq!(b0_answer.status, SyncStatus::Accepted, "{b0_answer:?}");
    assert_eq!(b0_answer.purse_fen, PURSE_FEN - 500);
    // The payer uploads p1 again with p2, and its received p3.
    let a0_answer = world.sync(&mut a0).await;
    assert_eq!(a0_answer.status, SyncStatus::Accepted, "{a0_answer:?}");
    assert_eq!(a0_answer.purse_fen, PURSE_FEN - 3_000);
    assert_eq!(a0.purse_fen(), PURSE_FEN - 3_000);
    let a1_answer = world.sync(&mut a1).await;
    assert_eq!(a1_answer.status, SyncStatus::Accepted, "{a1_answer:?}");
    // The payee's wallet uploads p1 again, three times.
    for _ in 0..3 {
        world
            .publish(subjects::wallet_offline(OI_A), "upload", frame1.clone())
            .await;
    }
    let money = world.cleared(&[(p1, d1), (p2, d2), (p3, d3)]).await;
    assert_eq!(money.loss_fen, 0);
    assert_eq!(world.balance(a0.party()).await, before[0] + 500);
    assert_eq!(world.balance(a1.party()).await, before[1] + 2_000);
    assert_eq!(world.balance(b0.party()).await, before[2] + 1_000);
    let a_totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(a_totals.cleared_fen, 3_000, "p1 and p2 cleared once each");
    assert_eq!(
        (a_totals.purses_fen, a_totals.purse_accounts_fen),
        (2 * PURSE_FEN - 3_000, 2 * PURSE_FEN - 3_000)
    );
    let b_totals = world.offline(OI_B).offline_totals().await.expect("totals");
    assert_eq!(b_totals.cleared_fen, 500);
    world.running.collector.with_book(|book| {
        for (payment_id, digest) in [(p1, d1), (p2, d2), (p3, d3)] {
            let answer = book
                .answer(&Submission {
                    payment_id,
                    envelope_digest: digest,
                    submission_digest: digest,
                })
                .expect("answered");
            assert_eq!(answer.status, OutcomeStatus::Completed);
        }
    });
    world.running.stop().await;
}

pub(crate) async fn a_double_spender_is_caught_locked_and_blacklisted(backend: &Backend) {
    let mut world = World::start(backend).await;
    let mut a0 = world.offline_wallet(OI_A, 0).await;
    let mut a1 = world.offline_wallet(OI_A, 1).await;
    let mut b0 = world.offline_wallet(OI_B, 0).await;
    let at = world.t0 + 10 * 60_000;
    let (p1, d1, _) = pay(&mut a0, &mut b0, 30_000, at);
    // A tampered secure element spends the purse again under the same counter.
    a0.rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    let (p2, d2, _) = pay(&mut a0, &mut a1, 30_000, at + 60_000);
    assert_eq!(world.sync(&mut b0).await.status, SyncStatus::Accepted);
    assert_eq!(world.sync(&mut a1).await.status, SyncStatus::Accepted);
    let money = world.cleared(&[(p1, d1), (p2, d2)]).await;
    // Both payees credited in full; the purse pays 50,000, the loss account the other 10,000.
    assert_eq!(money.loss_fen, -10_000);
    let a_totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(a_totals.loss_account_fen, -10_000);
    assert_eq!(a_totals.from_loss_fen, 10_000);
    let wallet_id = a0.party().wallet_id.clone();
    let record = world
        .offline(OI_A)
        .offline_wallet(&wallet_id)
        .await
        .expect("read")
        .expect("record");
    assert!(record.locked_at_ms.is_some() && record.blacklisted_at_ms.is_some());
    assert_eq!(record.purse_fen, 0);
    assert!(
        world
            .offline(OI_A)
            .blacklist()
            .await
            .expect("blacklist")
            .contains(&wallet_id)
    );
    let online = world
        .ledger(OI_A)
        .wallet(&wallet_id)
        .await
        .expect("read")
        .expect("wallet");
    assert!(online.account.locked, "its online payments are refused too");
    // Its own key set is refused now.
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Rejected);
    assert_eq!(
        answer.reason_code.as_deref(),
        Some(Reason::WalletBlacklisted.as_str())
    );
    // An honest wallet of the same institution learns of it at its next sync.
    let (_, _, _) = pay(&mut a1, &mut b0, 100, system_now_ms());
    let a1_answer = world.sync(&mut a1).await;
    assert!(a1_answer.actions.contains(&WalletAction::BlacklistUpdate));
    assert!(a1.blacklist().contains(&wallet_id));
    // The other institution follows the entry its institution published, and its wallets
    // learn of it too.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !world
        .offline(OI_B)
        .blacklist()
        .await
        .expect("blacklist")
        .contains(&wallet_id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{OI_B} never lists the double spender"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let b0_answer = world.sync(&mut b0).await;
    assert_eq!(b0_answer.status, SyncStatus::Accepted, "{b0_answer:?}");
    assert!(b0_answer.actions.contains(&WalletAction::BlacklistUpdate));
    assert!(b0.blacklist().contains(&wallet_id));
    // An entry for a wallet of one institution signed by another is dead-lettered, and
    // nobody lists the wallet.
    let honest = a1.party().clone();
    let forged = dcpipe_pipeline::wallet::sign_command(
        blacklist::entry_command_id(&honest.wallet_id),
        &honest,
        1,
        &Command::Blacklist(vec![honest.wallet_id.clone()]),
        system_now_ms(),
        &world.running.network.institutions[OI_B].signer,
    )
    .expect("signs");
    world
        .publish(
            subjects::wallet_blacklist(OI_B),
            &honest.wallet_id,
            dcpipe_schemas::encode(&forged).expect("encodes"),
        )
        .await;
    let letter = world.dead_letter(blacklist::STAGE).await;
    assert_eq!(letter.reason_code, Reason::RemoteWrongIssuer.as_str());
    for oi in [OI_A, OI_B] {
        let listed = world.offline(oi).blacklist().await.expect("blacklist");
        assert_eq!(listed, vec![wallet_id.clone()], "{oi}");
    }
    world.running.stop().await;
}

pub(crate) async fn forged_and_replayed_key_sets_are_refused_with_their_codes(backend: &Backend) {
    let mut world = World::start(backend).await;
    let mut a0 = world.offline_wallet(OI_A, 0).await;
    let mut a1 = world.offline_wallet(OI_A, 1).await;
    let at = world.t0 + 10 * 60_000;
    pay(&mut a0, &mut a1, 1_000, at);
    // Signed with another wallet's key: refused, and nothing recorded.
    let upload = a0.key_set(fix(system_now_ms())).expect("key set");
    let mut forged = upload.key_set.clone();
    forged.signature = a1.key().key().sign(&key_set_input(&forged)).expect("signs");
    let refused = world
        .answered(
            OI_A,
            &forged.wallet_id,
            dcpipe_schemas::encode(&forged).expect("encodes"),
            upload.digest,
        )
        .await;
    assert_eq!(refused.status, SyncStatus::Rejected);
    assert_eq!(
        refused.reason_code.as_deref(),
        Some(Reason::WalletSignature.as_str())
    );
    // The genuine key set is accepted.
    let first = world.sync(&mut a0).await;
    assert_eq!(first.status, SyncStatus::Accepted, "{first:?}");
    // Delivered again: the same answer.
    let again = world
        .answered(OI_A, &forged.wallet_id, upload.frame.clone(), upload.digest)
        .await;
    assert_eq!(again, first);
    // After a newer sync, the first key set is a replay.
    pay(&mut a0, &mut a1, 500, system_now_ms());
    assert_eq!(world.sync(&mut a0).await.status, SyncStatus::Accepted);
    let replayed = world
        .answered(OI_A, &forged.wallet_id, upload.frame.clone(), upload.digest)
        .await;
    assert_eq!(replayed.status, SyncStatus::Rejected);
    assert_eq!(
        replayed.reason_code.as_deref(),
        Some(Reason::WalletKeySetReplayed.as_str())
    );
    let totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(totals.cleared_fen, 1_500, "each payment cleared once");
    world.running.stop().await;
}

pub(crate) async fn key_sets_nobody_here_can_answer_are_dead_lettered(backend: &Backend) {
    let world = World::start(backend).await;
    let mut b0 = world.offline_wallet(OI_B, 0).await;
    // A key set of a wallet of oi02 sent to oi01.
    let upload = b0.key_set(fix(system_now_ms())).expect("key set");
    world
        .publish(
            subjects::wallet_keyset(OI_A),
            &b0.party().wallet_id,
            upload.frame.clone(),
        )
        .await;
    let letter = world.dead_letter(sync::STAGE).await;
    assert_eq!(letter.original, upload.frame);
    assert_eq!(letter.reason_code, Reason::WalletWrongInstitution.as_str());
    // Bytes that are no offline payment, uploaded for clearing.
    world
        .publish(
            subjects::wallet_offline(OI_A),
            "junk",
            b"not a payment".to_vec(),
        )
        .await;
    let letter = world.dead_letter(clearing::STAGE).await;
    assert_eq!(letter.original, b"not a payment".to_vec());
    assert!(
        letter.reason_code.starts_with("schema."),
        "{}",
        letter.reason_code
    );
    world.running.stop().await;
}

/// A deterministic pseudo-random sequence (64-bit LCG): the same seed, the same scenario.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// Every wallet of the network goes offline, pays the others at random (seeded), the double
/// spender among them, which rewinds its secure element and spends its purse again; they all
/// reconnect. The same key sets go to the stages and to the reference model (`OfflineNetwork`),
/// in the same order, each once the clearing path finished what the one before cleared: the
/// answers, what cleared and what was voided (payments to the double spender once it is caught
/// and locked), what each payee was credited, the purses, the loss accounts and the fraud
/// verdicts agree.
pub(crate) async fn a_seeded_scenario_ends_as_the_reference_model_says(backend: &Backend) {
    let mut world = World::start(backend).await;
    let parties: Vec<PartyRef> = [OI_A, OI_B]
        .iter()
        .flat_map(|oi| (0..4).map(|n| world.party(oi, n)))
        .collect();
    let mut wallets = Vec::new();
    for party in &parties {
        wallets.push(
            world
                .offline_wallet(&party.institution_id, {
                    parties
                        .iter()
                        .filter(|p| p.institution_id == party.institution_id)
                        .position(|p| p == party)
                        .expect("index")
                })
                .await,
        );
    }
    let network = &world.running.network;
    let signers = network.institutions.iter().map(|(id, inst)| {
        (
            id.clone(),
            Arc::new(copied_key(&inst.signer).expect("copy signer")),
        )
    });
    let mut model = OfflineNetwork::new(
        Arc::clone(&network.verifier),
        world.anchors.clone(),
        signers,
        SyncPolicy::default(),
    );
    let mut before = Vec::new();
    for (party, wallet) in parties.iter().zip(&wallets) {
        let spki = wallet
            .key()
            .certificate()
            .public_key()
            .to_spki_der()
            .expect("spki");
        model.open_wallet(party, 1, &spki, world.t0, OFFLINE_TIER_4);
        assert!(model.fund_purse(party, PURSE_FEN));
        before.push(world.balance(party).await);
    }
    // A seed whose order of reconnection has payments to the double spender both before and
    // after it is caught (asserted below): with most seeds every one comes before.
    let mut rng = Lcg(0x5eed_0018);
    let mut made: Vec<(PaymentId, Digest32)> = Vec::new();
    let mut at = world.t0 + 60_000;
    let count = wallets.len();
    // Wallet 0 is the future double spender: it pays first, then wallet 1 and, from its rewound
    // purse, wallet 5 (below). The wallets it pays do not pay it: the key set of such a wallet
    // would both reveal the fraud (a payment of wallet 0 uploaded by its payee, cleared at
    // wallet 0's institution) and pay wallet 0, which the fraud locks, and whether the lock or
    // the credit comes first is a race between two stages that no model can know. The others
    // pay it: once it is caught, their payments to it are voided.
    let mut paid_by_spender = vec![false; count];
    paid_by_spender[1] = true;
    paid_by_spender[5] = true;
    for payer in 0..count {
        for _ in 0..rng.below(5) {
            let mut payee = usize::try_from(rng.below(count as u64)).unwrap_or(0);
            if payee == payer || (payee == 0 && paid_by_spender[payer]) {
                payee = if payer + 1 < count { payer + 1 } else { 1 };
            }
            if payer == 0 {
                paid_by_spender[payee] = true;
            }
            at += 1_000 + i64::try_from(rng.below(30_000)).unwrap_or(0);
            let amount = 1 + i64::try_from(rng.below(5_000)).unwrap_or(0);
            let (payer_wallet, payee_wallet) = pair(&mut wallets, payer, payee);
            let (id, digest, _) = pay(payer_wallet, payee_wallet, amount, at);
            made.push((id, digest));
        }
    }
    // Wallet 0 pays 10,000 more, rewinds, and spends its whole purse again to wallet 5 (the
    // other institution): its counters from 1 used twice, 5,000 fen at least beyond the purse.
    {
        let (payer_wallet, payee_wallet) = pair(&mut wallets, 0, 1);
        at += 60_000;
        made.push({
            let (id, digest, _) = pay(payer_wallet, payee_wallet, 10_000, at);
            (id, digest)
        });
    }
    wallets[0].rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    {
        let (payer_wallet, payee_wallet) = pair(&mut wallets, 0, 5);
        at += 60_000;
        let (id, digest, _) = pay(payer_wallet, payee_wallet, 45_000, at);
        made.push((id, digest));
    }
    // Everyone but the double spender reconnects, in a seeded order; then, once every payment
    // cleared, the double spender.
    let mut order: Vec<usize> = (1..count).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0));
    }
    for index in order {
        let now = system_now_ms();
        let upload = wallets[index].key_set(fix(now)).expect("key set");
        let expected = model
            .sync(&parties[index].institution_id, &upload.key_set, now)
            .expect("model answers");
        let answer = world.sync(&mut wallets[index]).await;
        assert_eq!(
            answer.status, expected.result.status,
            "{}",
            parties[index].wallet_id
        );
        assert_eq!(answer.reason_code, expected.result.reason_code);
        assert_eq!(answer.purse_fen, expected.result.purse_fen);
        // The clearing path finishes what the model cleared so far, as the model decided.
        world.settled(&model_outcomes(&model, &made)).await;
    }
    let outcomes = model_outcomes(&model, &made);
    assert_eq!(
        outcomes.len(),
        made.len(),
        "the model cleared every payment made"
    );
    assert!(
        outcomes
            .iter()
            .any(|(_, _, status)| *status == OutcomeStatus::Rejected),
        "some payment to the double spender comes after it was caught, and is voided"
    );
    assert!(
        outcomes.iter().any(|(id, _, status)| {
            *status == OutcomeStatus::Completed && model.cleared()[id].payee == parties[0]
        }),
        "some payment to the double spender comes before it was caught, and is credited"
    );
    world.settled(&outcomes).await;
    let now = system_now_ms();
    let upload = wallets[0].key_set(fix(now)).expect("key set");
    let expected = model
        .sync(&parties[0].institution_id, &upload.key_set, now)
        .expect("model answers");
    let answer = world.sync(&mut wallets[0]).await;
    assert_eq!(answer.status, expected.result.status);
    assert_eq!(answer.reason_code, expected.result.reason_code);
    assert_eq!(
        answer.reason_code.as_deref(),
        Some(Reason::WalletBlacklisted.as_str())
    );
    // What cleared, and how.
    let cleared: Vec<PaymentId> = model.cleared().keys().copied().collect();
    let mut made_ids: Vec<PaymentId> = made.iter().map(|(id, _)| *id).collect();
    made_ids.sort();
    assert_eq!(cleared, made_ids, "the model cleared every payment made");
    for id in &made_ids {
        let payer = &model.cleared()[id].payer;
        let stored = world
            .offline(&payer.institution_id)
            .offline_clearing(&dcpipe_connectors::ledger::PaymentId(*id.as_bytes()))
            .await
            .expect("read")
            .expect("cleared by the stages");
        let modelled = &model.cleared()[id];
        assert_eq!(stored.amount_fen, modelled.amount_fen);
        assert_eq!(
            (stored.from_purse_fen, stored.from_loss_fen),
            (
                modelled.decision.from_purse_fen,
                modelled.decision.from_loss_fen
            )
        );
    }
    for (index, party) in parties.iter().enumerate() {
        assert_eq!(
            world.balance(party).await - before[index],
            model.credited(party),
            "credited to {}",
            party.wallet_id
        );
        let record = world
            .offline(&party.institution_id)
            .offline_wallet(&party.wallet_id)
            .await
            .expect("read")
            .expect("record");
        let modelled = model.record(party).expect("modelled");
        assert_eq!(record.purse_fen, modelled.purse_fen, "{}", party.wallet_id);
        assert_eq!(
            record.blacklisted_at_ms.is_some(),
            modelled.blacklisted_at_ms.is_some()
        );
        assert_eq!(
            record.locked_at_ms.is_some(),
            modelled.locked_at_ms.is_some()
        );
    }
    for oi in [OI_A, OI_B] {
        let totals = world.offline(oi).offline_totals().await.expect("totals");
        assert_eq!(totals.loss_account_fen, model.loss_account_fen(oi), "{oi}");
        let cleared_fen: i64 = model
            .cleared()
            .values()
            .filter(|c| c.payer.institution_id == oi && !c.voided)
            .map(|c| c.amount_fen)
            .sum();
        assert_eq!(totals.cleared_fen, cleared_fen, "{oi}");
    }
    assert!(model.totals().conserved());
    assert!(
        model.loss_account_fen(OI_A) <= -5_000,
        "the excess is a loss"
    );
    assert!(model.blacklist().contains(&parties[0].wallet_id));
    world.running.stop().await;
}

/// The outcome the model expects of each payment of `made` it cleared so far: completed, or
/// rejected when the clearing path voids it.
fn model_outcomes(
    model: &OfflineNetwork,
    made: &[(PaymentId, Digest32)],
) -> Vec<(PaymentId, Digest32, OutcomeStatus)> {
    made.iter()
        .filter_map(|(id, digest)| {
            model.cleared().get(id).map(|c| {
                let status = if c.voided {
                    OutcomeStatus::Rejected
                } else {
                    OutcomeStatus::Completed
                };
                (*id, *digest, status)
            })
        })
        .collect()
}

/// Two distinct wallets of `wallets`, mutably.
fn pair(wallets: &mut [HardWallet], a: usize, b: usize) -> (&mut HardWallet, &mut HardWallet) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = wallets.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = wallets.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// The remote commands published for `wallet_id` on `institution`'s command subject, until
/// `count` arrived.
async fn commands(
    world: &World,
    consumer: &mut Box<dyn Consumer>,
    wallet_id: &str,
    count: usize,
) -> Vec<RemoteControlCommand> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut found = Vec::new();
    while found.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} commands for {wallet_id}",
            found.len()
        );
        for delivery in consumer
            .fetch(16, Duration::from_millis(50))
            .await
            .expect("fetch")
        {
            let command: RemoteControlCommand =
                dcpipe_schemas::decode(&delivery.record.payload).expect("command decodes");
            if command.wallet_id == wallet_id {
                found.push(command);
            }
            delivery.ack().await.expect("ack");
        }
    }
    let _ = world;
    found
}

pub(crate) async fn a_command_issued_while_offline_is_applied_once_after_reconnection(
    backend: &Backend,
) {
    let mut world = World::start(backend).await;
    let mut a0 = world.offline_wallet(OI_A, 0).await;
    let wallet_id = a0.party().wallet_id.clone();
    let inst = Arc::clone(&world.running.network.institutions[OI_A]);
    let mut consumer = world
        .running
        .bus
        .consumer(ConsumerConfig::new(
            subjects::wallet_command(OI_A),
            "test-wallet-commands",
        ))
        .await
        .expect("commands consumer");
    // While the wallet is offline: new limits, then a lock.
    let limits = OfflineLimits {
        purse_limit_fen: 80_000,
        ..OFFLINE_TIER_4
    };
    let lock_id = CommandId::random();
    let now = system_now_ms();
    let change = issue_command(
        &inst,
        &wallet_id,
        CommandId::random(),
        &Command::OfflineLimits(limits),
        now,
    )
    .await
    .expect("issued")
    .expect("an offline wallet");
    let lock = issue_command(&inst, &wallet_id, lock_id, &Command::Lock, now)
        .await
        .expect("issued")
        .expect("an offline wallet");
    assert_eq!((change.sequence, lock.sequence), (1, 2));
    // Issued again under its id: the same command, nothing new.
    let again = issue_command(&inst, &wallet_id, lock_id, &Command::Lock, now)
        .await
        .expect("issued")
        .expect("an offline wallet");
    assert_eq!(again, lock);
    // The lock binds at once: the wallet's online payments are refused.
    let online = world
        .ledger(OI_A)
        .wallet(&wallet_id)
        .await
        .expect("read")
        .expect("wallet");
    assert!(online.account.locked);
    // The wallet reconnects: told to lock, and the two commands follow its answer, in order.
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted);
    assert!(answer.actions.contains(&WalletAction::Lock));
    assert_eq!(answer.pending_commands, 2);
    let delivered = commands(&world, &mut consumer, &wallet_id, 2).await;
    assert_eq!(
        delivered.iter().map(|c| c.sequence).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let verifier = Arc::clone(&world.running.network.verifier);
    for command in &delivered {
        assert!(matches!(
            a0.apply_command(command, &verifier).expect("applies"),
            CommandApplied::Applied(_)
        ));
    }
    // Delivered again: applied once.
    assert_eq!(
        a0.apply_command(&delivered[0], &verifier)
            .expect("recognized"),
        CommandApplied::AlreadyApplied
    );
    assert!(a0.is_locked());
    assert_eq!(a0.limits().purse_limit_fen, 80_000);
    // Unlocked while offline again: only the new command follows the next answer.
    let unlock = issue_command(
        &inst,
        &wallet_id,
        CommandId::random(),
        &Command::Unlock,
        system_now_ms(),
    )
    .await
    .expect("issued")
    .expect("an offline wallet");
    assert_eq!(unlock.sequence, 3);
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.pending_commands, 1);
    assert_eq!(
        answer.offline_limits.map(|l| l.purse_limit_fen),
        Some(80_000)
    );
    let delivered = commands(&world, &mut consumer, &wallet_id, 1).await;
    assert_eq!(delivered[0].sequence, 3);
    a0.apply_command(&delivered[0], &verifier).expect("applies");
    assert!(!a0.is_locked());
    let online = world
        .ledger(OI_A)
        .wallet(&wallet_id)
        .await
        .expect("read")
        .expect("wallet");
    assert!(!online.account.locked);
    world.running.stop().await;
}

/// A payment whose payee's institution refuses the credit (the payee's wallet is locked) is
/// voided on the clearing path; what it took from the payer's purse comes back to the purse
/// record, which agrees with the purse account again, and the payer's wallet learns it at its
/// next synchronization.
pub(crate) async fn a_payment_refused_by_its_payee_gives_its_purse_back(backend: &Backend) {
    let mut world = World::start(backend).await;
    let ([mut a0, mut a1, mut b0], before) = world.three_wallets().await;
    let at = world.t0 + 10 * 60_000;
    let (p1, d1, _) = pay(&mut a0, &mut b0, 7_000, at);
    let (p2, d2, _) = pay(&mut a0, &mut a1, 2_000, at + 1_000);
    world
        .ledger(OI_B)
        .set_locked(&b0.party().wallet_id, true)
        .await
        .expect("lock")
        .expect("wallet");
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.purse_fen, PURSE_FEN - 9_000, "both cleared at first");
    let submission = |payment_id, digest| Submission {
        payment_id,
        envelope_digest: digest,
        submission_digest: digest,
    };
    let refused = submission(p1, d1);
    let decided = world
        .running
        .collector
        .wait_until(DEADLINE, |book| {
            book.answer(&refused)
                .is_some_and(|a| a.status == OutcomeStatus::Rejected)
        })
        .await;
    assert!(decided, "the payment to the locked wallet is refused");
    world.running.collector.with_book(|book| {
        let answer = book.answer(&refused).expect("answered");
        assert_eq!(
            answer.reason_code.as_deref(),
            Some(Reason::PayeeWalletLocked.as_str())
        );
    });
    let money = world.cleared(&[(p2, d2)]).await;
    assert_eq!(money.loss_fen, 0);
    // The void gives the purse back: record and account agree, only p2 counts as cleared.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let record = loop {
        let record = world
            .offline(OI_A)
            .offline_wallet(&a0.party().wallet_id)
            .await
            .expect("read")
            .expect("record");
        if record.purse_fen == PURSE_FEN - 2_000 {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purse is not given back: {}",
            record.purse_fen
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(record.locked_at_ms.is_none() && record.blacklisted_at_ms.is_none());
    let totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(
        totals.cleared_fen, 2_000,
        "the voided payment is not cleared"
    );
    assert_eq!(
        (totals.purses_fen, totals.purse_accounts_fen),
        (2 * PURSE_FEN - 2_000, 2 * PURSE_FEN - 2_000)
    );
    assert_eq!(world.balance(a0.party()).await, before[0]);
    assert_eq!(world.balance(a1.party()).await, before[1] + 2_000);
    assert_eq!(world.balance(b0.party()).await, before[2]);
    // Uploaded again by its payee: recognized, nothing moves twice.
    let b0_answer = world.sync(&mut b0).await;
    assert_eq!(b0_answer.status, SyncStatus::Accepted, "{b0_answer:?}");
    let money = world.cleared(&[(p2, d2)]).await;
    assert_eq!(money.loss_fen, 0);
    let again = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(again, totals);
    // The payer's wallet learns its purse at its next synchronization.
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.purse_fen, PURSE_FEN - 2_000);
    assert_eq!(a0.purse_fen(), PURSE_FEN - 2_000);
    world.running.stop().await;
}

/// Writes `party`'s record as its institution's stage does when it finds fraud (locked,
/// blacklisted, listed on the blacklist) without publishing anything: a worker that died
/// between its ledger write and its publish.
async fn blacklisted_without_publishing(world: &World, party: &PartyRef) {
    use dcpipe_connectors::ledger::offline::{OfflineCommit, OfflineUpdate};
    use dcpipe_pipeline::wallet::stages::record::{mark_fraud, stored_record, wallet_record};
    let offline = world.offline(&party.institution_id);
    let read = offline
        .offline_wallet(&party.wallet_id)
        .await
        .expect("read")
        .expect("record");
    let mut record = wallet_record(&party.institution_id, &read);
    mark_fraud(&mut record, system_now_ms());
    let committed = offline
        .commit_offline(&[OfflineUpdate {
            record: stored_record(&record, &read, None),
            clearings: Vec::new(),
        }])
        .await
        .expect("write");
    assert!(
        matches!(committed, OfflineCommit::Committed),
        "{committed:?}"
    );
}

/// Waits until `institution`'s blacklist is `expected`.
async fn blacklist_becomes(world: &World, institution: &str, expected: &[String]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let listed = world.offline(institution).blacklist().await.expect("read");
        if listed == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{institution} lists {listed:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn a_blacklist_entry_written_but_not_published_is_published_once(
    backend: &Backend,
) {
    let world = World::start(backend).await;
    let first = world.offline_wallet(OI_A, 0).await.party().clone();
    let second = world.offline_wallet(OI_A, 1).await.party().clone();
    blacklisted_without_publishing(&world, &first).await;
    // The institution's blacklist stage finds the entry nobody published and publishes it.
    blacklist_becomes(&world, OI_B, std::slice::from_ref(&first.wallet_id)).await;
    // A restart: the new stage publishes it again, under the same message ids.
    let inst = Arc::clone(&world.running.network.institutions[OI_A]);
    let restarted = blacklist::BlacklistStage::new(Arc::clone(&inst));
    let again = restarted.unpublished_entries().await.expect("entries");
    let expected_id = format!(
        "{}/{}",
        subjects::wallet_blacklist(OI_B),
        blacklist::entry_command_id(&first.wallet_id)
    );
    let ids: Vec<Option<&str>> = again.iter().map(|o| o.msg_id.as_deref()).collect();
    assert_eq!(ids, [Some(expected_id.as_str())]);
    world
        .running
        .bus
        .publish_many(again)
        .await
        .expect("publish");
    // It looks at each wallet once: the next write is the only entry of its next tick.
    blacklisted_without_publishing(&world, &second).await;
    let next = restarted.unpublished_entries().await.expect("entries");
    let entries: Vec<RemoteControlCommand> = next
        .iter()
        .map(|o| dcpipe_schemas::decode(&o.payload).expect("an entry"))
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].wallet_id, second.wallet_id);
    assert!(
        restarted
            .unpublished_entries()
            .await
            .expect("entries")
            .is_empty()
    );
    // The other institution lists each wallet once, in the order they were found.
    blacklist_becomes(
        &world,
        OI_B,
        &[first.wallet_id.clone(), second.wallet_id.clone()],
    )
    .await;
    world.running.stop().await;
}

/// The institution orders a wallet to rotate its key. Its next answer asks for a new key; the
/// wallet makes one, its institution's CA certifies it, and its next key set carries the raised
/// key version and the new key, which the platform records. The payments signed with the old
/// key before the rotation clear, uploaded by their payee or in the key set under the new key.
/// A key set under the old version, and one under a raised version whose key another
/// institution's CA certified, are refused with their codes and change nothing.
pub(crate) async fn a_wallet_ordered_to_rotate_its_key_rotates_and_its_old_payments_clear(
    backend: &Backend,
) {
    let mut world = World::start(backend).await;
    let ([mut a0, mut a1, mut b0], before) = world.three_wallets().await;
    let wallet_id = a0.party().wallet_id.clone();
    let at = world.t0 + 10 * 60_000;
    // Paid with the old key before any order.
    let (p1, d1, _) = pay(&mut a0, &mut b0, 3_000, at);
    // The order stands from its first moment: ordering again changes nothing.
    let ordered_at = system_now_ms();
    let ordered = order_key_rotation(world.offline(OI_A), &wallet_id, ordered_at)
        .await
        .expect("ordered");
    assert_eq!(ordered, Some(ordered_at));
    let again = order_key_rotation(world.offline(OI_A), &wallet_id, ordered_at + 5)
        .await
        .expect("ordered");
    assert_eq!(again, Some(ordered_at));
    let stranger = order_key_rotation(world.offline(OI_A), "no-such-wallet", ordered_at)
        .await
        .expect("answered");
    assert_eq!(stranger, None);
    // The next answer asks for a new key.
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.key_version, 1);
    assert!(answer.actions.contains(&WalletAction::KeyRotation));
    assert!(a0.rotation_due());
    // Until the new key is certified, the wallet pays with its old key.
    let (p2, d2, _) = pay(&mut a0, &mut a1, 2_000, system_now_ms());
    let old_key = copied_key(a0.key()).expect("copy");
    let request = a0.request_key_rotation().expect("a new key");
    assert_eq!(request.key_version, 2);
    let now = system_now_ms();
    let certificate = certify_rotated_key(
        &world.running.network.pki.institution(OI_A).expect("CA").ca,
        &request,
        now - HOUR_MS,
        now + 30 * 24 * HOUR_MS,
    )
    .expect("certified by the institution's CA");
    a0.complete_key_rotation(certificate.der(), now)
        .expect("the wallet takes its certificate");
    assert_eq!(a0.key_version(), 2);
    assert!(!a0.rotation_due());
    // Paid with the new key.
    let (p3, d3, _) = pay(&mut a0, &mut b0, 1_000, system_now_ms());
    // The payee of the old key's last payment uploads it first.
    assert_eq!(world.sync(&mut a1).await.status, SyncStatus::Accepted);
    // The key set under the new key carries both payments.
    let answer = world.sync(&mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.key_version, 2);
    assert!(!answer.actions.contains(&WalletAction::KeyRotation));
    let new_spki = request.public_key.to_spki_der().expect("spki");
    let record = world
        .offline(OI_A)
        .offline_wallet(&wallet_id)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(record.key_version, 2);
    assert_eq!(record.key_fingerprint, key_fingerprint(&new_spki));
    assert_eq!(record.rotation_ordered_at_ms, None, "the order is done");
    assert_eq!(record.counter, 3);
    assert_eq!(world.sync(&mut b0).await.status, SyncStatus::Accepted);
    world.cleared(&[(p1, d1), (p2, d2), (p3, d3)]).await;
    assert_eq!(world.balance(a1.party()).await - before[1], 2_000);
    assert_eq!(world.balance(b0.party()).await - before[2], 4_000);
    let totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(totals.cleared_fen, 6_000, "each payment cleared once");
    let settled = world
        .offline(OI_A)
        .offline_wallet(&wallet_id)
        .await
        .expect("read")
        .expect("record");
    // Key sets the platform refuses: they are made by wallets at a0's state holding another key.
    let holding = |key: CertifiedKey, key_version: i32| {
        HardWallet::provision(WalletProvisioning {
            party: a0.party().clone(),
            tier: 4,
            key,
            key_version,
            limits: OFFLINE_TIER_4,
            trust_anchors: world.anchors.clone(),
            last_sync_at_ms: a0.last_sync_at_ms(),
            counter: a0.counter(),
            chain_head: a0.chain_head(),
            purse_fen: a0.purse_fen(),
        })
        .expect("provisioned")
    };
    // The old key under the old version.
    let mut stale = holding(old_key, 1);
    // A raised version for a key another institution's CA certified in the wallet's name.
    let rogue_key = PrivateKey::generate(a0.key().certificate().algorithm()).expect("key");
    let rogue_certificate = world
        .running
        .network
        .pki
        .institution(OI_B)
        .expect("CA")
        .ca
        .issue(
            &CertificateTemplate::for_role(
                Role::Wallet,
                &wallet_id,
                OI_A,
                now - HOUR_MS,
                now + 30 * 24 * HOUR_MS,
            ),
            rogue_key.public_key(),
        )
        .expect("issued");
    let mut rogue = holding(
        CertifiedKey::new(rogue_certificate, rogue_key).expect("pair"),
        3,
    );
    for (wallet, reason) in [
        (&mut stale, Reason::WalletKeyVersionLowered),
        (&mut rogue, Reason::WalletRotationUncertified),
    ] {
        let upload = wallet.key_set(fix(system_now_ms())).expect("key set");
        let refused = world
            .answered(OI_A, &wallet_id, upload.frame.clone(), upload.digest)
            .await;
        assert_eq!(refused.status, SyncStatus::Rejected);
        assert_eq!(refused.reason_code.as_deref(), Some(reason.as_str()));
        assert_eq!(refused.key_version, 2);
    }
    let unchanged = world
        .offline(OI_A)
        .offline_wallet(&wallet_id)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(unchanged, settled);
    world.running.stop().await;
}

/// `stage` handles `frames` as one batch, as the runner hands it; the
/// verdicts come back in order.
async fn handled(stage: &dyn Stage, frames: &[Vec<u8>]) -> Vec<Verdict> {
    let subject = stage.subject();
    let inputs: Vec<Input<'_>> = frames
        .iter()
        .enumerate()
        .map(|(i, payload)| Input {
            subject: &subject,
            payload,
            delivery_count: 1,
            position: Position {
                partition: 0,
                offset: 1_000_000 + u64::try_from(i).expect("small"),
            },
        })
        .collect();
    let verdicts = stage.handle(&inputs).await.expect("the batch is decided");
    assert_eq!(verdicts.len(), frames.len(), "one verdict per input");
    verdicts
}

/// The outputs of a verdict, and the sync results among them.
fn outputs_of(verdict: &Verdict) -> (&[Outgoing], Vec<WalletSyncResult>) {
    let Verdict::Done(outputs) = verdict else {
        panic!("decided, not {verdict:?}");
    };
    let results = outputs
        .iter()
        .filter(|o| o.subject.starts_with("wallet.result."))
        .map(|o| dcpipe_schemas::decode(&o.payload).expect("result decodes"))
        .collect();
    (outputs, results)
}

pub(crate) async fn key_sets_and_uploads_of_one_batch_are_decided_together(backend: &Backend) {
    let world = World::start(backend).await;
    let ([mut a0, mut a1, mut b0], before) = world.three_wallets().await;
    let mut a2 = world.offline_wallet(OI_A, 2).await;
    let a2_before = world.balance(a2.party()).await;
    let at = world.t0 + 10 * 60_000;
    let (p1, d1, _) = pay(&mut a0, &mut a1, 1_000, at);
    let (p2, d2, _) = pay(&mut a1, &mut a2, 2_000, at + 1_000);
    let (p3, d3, frame3) = pay(&mut a2, &mut b0, 3_000, at + 2_000);
    let (p4, d4, frame4) = pay(&mut b0, &mut a0, 400, at + 3_000);
    let now = fix(system_now_ms());
    let sets: Vec<_> = [&mut a0, &mut a1, &mut a2]
        .into_iter()
        .map(|w| w.key_set(now).expect("key set"))
        .collect();
    let inst_a = Arc::clone(&world.running.network.institutions[OI_A]);
    let sync_a = sync::WalletSyncStage::new(Arc::clone(&inst_a));

    // Three wallets of one institution and a frame that is no key set, in one batch.
    let mut frames: Vec<Vec<u8>> = sets.iter().map(|s| s.frame.clone()).collect();
    frames.push(b"not a key set".to_vec());
    let verdicts = handled(&sync_a, &frames).await;
    let mut to_publish = Vec::new();
    let mut answers = Vec::new();
    for (verdict, set) in verdicts.iter().zip(&sets) {
        let (outputs, results) = outputs_of(verdict);
        assert_eq!(results.len(), 1, "one answer per key set");
        assert_eq!(results[0].status, SyncStatus::Accepted, "{:?}", results[0]);
        assert_eq!(results[0].key_set_digest, Some(set.digest));
        to_publish.extend(outputs.iter().cloned());
        answers.push(results[0].clone());
    }
    assert_eq!(
        answers.iter().map(|r| r.purse_fen).collect::<Vec<_>>(),
        vec![PURSE_FEN - 1_000, PURSE_FEN - 2_000, PURSE_FEN - 3_000],
        "each purse as one key set at a time would leave it"
    );
    assert!(
        matches!(&verdicts[3], Verdict::DeadLetter { reason, .. } if reason.as_str().starts_with("schema.")),
        "{:?}",
        verdicts[3]
    );

    // The same batch again (a redelivery): the same answers, nothing written twice.
    let again = handled(&sync_a, &frames[..3]).await;
    for (verdict, answer) in again.iter().zip(&answers) {
        assert_eq!(outputs_of(verdict).1, vec![answer.clone()]);
    }

    // The payer's institution takes uploads of one batch together: a payment its payer
    // already uploaded, the same again, and one of a payer held elsewhere.
    let clearing_a = clearing::OfflineClearingStage::new(Arc::clone(&inst_a));
    let uploads = handled(
        &clearing_a,
        &[frame3.clone(), frame3.clone(), frame4.clone()],
    )
    .await;
    assert!(
        matches!(&uploads[0], Verdict::Done(outputs) if !outputs.is_empty()),
        "the first copy takes the clearing path: {:?}",
        uploads[0]
    );
    assert!(
        matches!(&uploads[1], Verdict::Done(outputs) if outputs.is_empty()),
        "the second copy of the batch adds nothing: {:?}",
        uploads[1]
    );
    assert!(
        matches!(&uploads[2], Verdict::DeadLetter { reason, .. } if *reason == Reason::WalletWrongInstitution),
        "{:?}",
        uploads[2]
    );
    for verdict in &uploads[..2] {
        to_publish.extend(outputs_of(verdict).0.iter().cloned());
    }

    // What the batches decided, published, clears like everything else; b0 uploads p4.
    for output in to_publish {
        world.running.bus.publish(output).await.expect("published");
    }
    let mut world = world;
    let b0_answer = world.sync(&mut b0).await;
    assert_eq!(b0_answer.status, SyncStatus::Accepted, "{b0_answer:?}");
    let money = world
        .cleared(&[(p1, d1), (p2, d2), (p3, d3), (p4, d4)])
        .await;
    assert_eq!(money.loss_fen, 0);
    assert_eq!(world.balance(a0.party()).await, before[0] + 400);
    assert_eq!(world.balance(a1.party()).await, before[1] + 1_000);
    assert_eq!(world.balance(a2.party()).await, a2_before + 2_000);
    assert_eq!(world.balance(b0.party()).await, before[2] + 3_000);
    let a_totals = world.offline(OI_A).offline_totals().await.expect("totals");
    assert_eq!(
        a_totals.cleared_fen, 6_000,
        "p1, p2 and p3 cleared once each"
    );

    // Uploaded again once decided: its outcome went to both institutions when it completed,
    // the uploader's answer is its sync result; nothing more is sent.
    let late = handled(&clearing_a, &[frame3]).await;
    assert!(
        matches!(&late[0], Verdict::Done(outputs) if outputs.is_empty()),
        "{:?}",
        late[0]
    );
    world.running.stop().await;
}
