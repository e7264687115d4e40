//! The offline-wallet flow recorded and audited: clean (payments in and between institutions, a
//! wallet syncing twice, a double spender paid by the loss account and refused, a wallet rotating
//! its key, a wallet locked while offline whose later payment is refused at its sync), then tampered with step by step —
//! a forged sync result, a forged remote command, a second command under one number, an earlier
//! key set accepted again, a purse account and the loss account edited in the ledger — each
//! found with its code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, Outgoing, Record, ReplayFrom};
use dcpipe_connectors::ledger::LedgerUrl;
use dcpipe_connectors::ledger::offline::{OfflineOpening, PurseFunding, purse_wallet_id};
use dcpipe_pipeline::audit::{AuditCode, AuditReport, LedgerReconciler};
use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::ops::follow::SubjectReader;
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_digest, offline_payment_id};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::remote::{issue_command, order_key_rotation};
use dcpipe_pipeline::wallet::stages::record::terms_of;
use dcpipe_pipeline::wallet::{
    Command, HardWallet, OFFLINE_TIER_4, SatelliteFix, WalletProvisioning, certify_rotated_key,
    copied_key, key_fingerprint, sign_command, sign_sync_result,
};
use dcpipe_schemas::{
    CommandId, ControlCommand, OfflinePayment, OutcomeStatus, PartyRef, RemoteControlCommand,
    SyncStatus, WalletAction, WalletKeySet, WalletSyncResult,
};

use crate::harness::{Backend, Running};
use crate::scenarios::{assert_found, audit_record, reconciler};

/// How long the run may take to answer and settle.
const DEADLINE: Duration = Duration::from_secs(90);
/// What each wallet moves into its purse before going offline.
const PURSE_FEN: i64 = 50_000;
const OI_A: &str = "oi01";
const OI_B: &str = "oi02";

fn fix(at_ms: i64) -> SatelliteFix {
    SatelliteFix { at_ms }
}

fn party(running: &Running, institution: &str, n: usize) -> PartyRef {
    running
        .network
        .wallets
        .iter()
        .filter(|w| w.party.institution_id == institution)
        .nth(n)
        .map(|w| w.party.clone())
        .expect("wallet")
}

/// The `n`th wallet of `institution`, opened for offline use at `t0` with a funded purse.
async fn offline_wallet(running: &Running, institution: &str, n: usize, t0: i64) -> HardWallet {
    let party = party(running, institution, n);
    let pki = &running.network.pki;
    let keys = pki.wallet(&party.wallet_id).expect("wallet keys");
    let spki = keys
        .wallet
        .certificate()
        .public_key()
        .to_spki_der()
        .expect("spki");
    let offline = running.network.institutions[institution].ledger.offline();
    offline
        .open_offline(&[OfflineOpening {
            wallet_id: party.wallet_id.clone(),
            key_version: 1,
            key_fingerprint: key_fingerprint(&spki),
            last_sync_at_ms: t0,
            limits: terms_of(&OFFLINE_TIER_4),
        }])
        .await
        .expect("open offline");
    let mut funding_id = [0u8; 16];
    let len = party.wallet_id.len().min(16);
    funding_id[..len].copy_from_slice(&party.wallet_id.as_bytes()[..len]);
    offline
        .fund_purses(&[PurseFunding {
            funding_id,
            wallet_id: party.wallet_id.clone(),
            amount_fen: PURSE_FEN,
        }])
        .await
        .expect("fund");
    let mut anchors = vec![pki.root().certificate().der().to_vec()];
    anchors.extend(
        pki.institutions()
            .map(|(_, keys)| keys.ca.certificate().der().to_vec()),
    );
    let mut wallet = HardWallet::provision(WalletProvisioning {
        party,
        tier: 4,
        key: copied_key(&keys.wallet).expect("copy"),
        key_version: 1,
        limits: OFFLINE_TIER_4,
        trust_anchors: anchors,
        last_sync_at_ms: t0,
        counter: 0,
        chain_head: CHAIN_START,
        purse_fen: 0,
    })
    .expect("provisioned");
    wallet.fund_purse(PURSE_FEN).expect("purse");
    wallet
}

async fn publish(bus: &dyn Bus, subject: String, key: &str, payload: Vec<u8>) {
    bus.publish(Outgoing::new(subject, Bytes::from(payload)).with_key(key.as_bytes().to_vec()))
        .await
        .expect("published");
}

async fn read_all(bus: &dyn Bus, subject: &str) -> Vec<Record> {
    SubjectReader::new(subject, ReplayFrom::Beginning, None)
        .poll(bus, usize::MAX)
        .await
        .expect("read")
}

/// The wallet reconnects now: publishes its key set and waits for the answer naming it, read
/// from the record.
async fn sync(running: &Running, wallet: &mut HardWallet) -> WalletSyncResult {
    let upload = wallet.key_set(fix(system_now_ms())).expect("key set");
    let party = wallet.party().clone();
    let subject = subjects::wallet_result(&party.institution_id);
    let before = read_all(running.bus.as_ref(), &subject).await.len();
    publish(
        running.bus.as_ref(),
        subjects::wallet_keyset(&party.institution_id),
        &party.wallet_id,
        upload.frame.clone(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = read_all(running.bus.as_ref(), &subject)
            .await
            .into_iter()
            .skip(before)
            .filter_map(|r| dcpipe_schemas::decode::<WalletSyncResult>(&r.payload).ok())
            .find(|r| r.wallet_id == party.wallet_id && r.key_set_digest == Some(upload.digest));
        if let Some(result) = found {
            wallet
                .apply_sync_result(&result, &running.network.verifier)
                .expect("the wallet takes its answer");
            return result;
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `payer` pays `payee` offline at `at_ms`; the payee takes it.
fn pay(payer: &mut HardWallet, payee: &mut HardWallet, amount_fen: i64, at_ms: i64) -> Submission {
    let frame = payer
        .pay(payee.party(), amount_fen, fix(at_ms))
        .expect("the payer pays");
    payee
        .receive(frame.as_bytes(), fix(at_ms), PAID_AT_SKEW_MS_MAX_DEFAULT)
        .expect("the payee takes it");
    let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
    let digest = offline_payment_digest(&payment);
    Submission {
        payment_id: offline_payment_id(&digest),
        envelope_digest: digest,
        submission_digest: digest,
    }
}

async fn audit_of(running: &Running, ledgers: &LedgerReconciler) -> AuditReport {
    audit_record(running.bus.as_ref(), &running.network, Some(ledgers)).await
}

pub(crate) async fn a_clean_wallet_record_reconciles_and_each_wallet_tamper_is_found(
    backend: &mut Backend,
) {
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    backend.ledger = LedgerUrl::SqliteDir(ledger_dir.path().to_owned());
    let mut running = Running::start(backend, 2, 8).await;
    let t0 = system_now_ms() - HOUR_MS;
    let mut a0 = offline_wallet(&running, OI_A, 0, t0).await;
    let mut a1 = offline_wallet(&running, OI_A, 1, t0).await;
    let mut b0 = offline_wallet(&running, OI_B, 0, t0).await;
    let mut a2 = offline_wallet(&running, OI_A, 2, t0).await;
    let mut a3 = offline_wallet(&running, OI_A, 3, t0).await;
    let mut b1 = offline_wallet(&running, OI_B, 1, t0).await;

    // Offline payments in and between institutions; each wallet reconnects.
    let at = t0 + 10 * 60_000;
    let mut completed = vec![
        pay(&mut a0, &mut b0, 1_000, at),
        pay(&mut a0, &mut a1, 2_000, at + 1_000),
        pay(&mut b0, &mut a0, 500, at + 2_000),
    ];
    for wallet in [&mut b0, &mut a0, &mut a1] {
        let answer = sync(&running, wallet).await;
        assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    }
    // A double spender: its purse spent twice under one counter; both payees are paid, the
    // loss account pays what the purse cannot, and its own key set is refused afterwards.
    completed.push(pay(&mut a2, &mut b1, 30_000, at));
    a2.rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    completed.push(pay(&mut a2, &mut a3, 30_000, at + 60_000));
    for wallet in [&mut b1, &mut a3] {
        let answer = sync(&running, wallet).await;
        assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    }
    // A wallet ordered to rotate its key: told at its next answer, it pays with its old key,
    // takes a new one certified by its institution's CA, pays with it, and its key set under
    // key version 2 carries both payments.
    let a3_id = a3.party().wallet_id.clone();
    let offline_a = running.network.institutions[OI_A].ledger.offline();
    order_key_rotation(offline_a, &a3_id, system_now_ms())
        .await
        .expect("ordered")
        .expect("an offline wallet");
    let answer = sync(&running, &mut a3).await;
    assert!(
        answer.actions.contains(&WalletAction::KeyRotation),
        "{answer:?}"
    );
    completed.push(pay(&mut a3, &mut b1, 1_000, system_now_ms()));
    let request = a3.request_key_rotation().expect("a new key");
    let now = system_now_ms();
    let certificate = certify_rotated_key(
        &running.network.pki.institution(OI_A).expect("CA").ca,
        &request,
        now - HOUR_MS,
        now + 30 * 24 * HOUR_MS,
    )
    .expect("certified");
    a3.complete_key_rotation(certificate.der(), now)
        .expect("the wallet takes its certificate");
    completed.push(pay(&mut a3, &mut b1, 500, system_now_ms()));
    let answer = sync(&running, &mut a3).await;
    assert_eq!(
        (answer.status, answer.key_version),
        (SyncStatus::Accepted, 2),
        "{answer:?}"
    );
    // The payer pays again and reconnects again: its first key set is now an earlier one.
    completed.push(pay(&mut a0, &mut b0, 700, system_now_ms()));
    let answer = sync(&running, &mut a0).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    // A wallet locked by its institution while offline: what it paid since is refused at its
    // sync (no outcome), and the lock follows its answer.
    let inst = Arc::clone(&running.network.institutions[OI_A]);
    let a1_id = a1.party().wallet_id.clone();
    issue_command(
        &inst,
        &a1_id,
        CommandId::random(),
        &Command::Lock,
        system_now_ms(),
    )
    .await
    .expect("issued")
    .expect("an offline wallet");
    pay(&mut a1, &mut b0, 300, system_now_ms());
    let answer = sync(&running, &mut a1).await;
    assert_eq!(answer.status, SyncStatus::Accepted, "{answer:?}");
    assert_eq!(answer.refused.len(), 1, "{answer:?}");
    assert!(
        running
            .collector
            .wait_until(DEADLINE, |book| {
                completed.iter().all(|s| {
                    book.answer(s)
                        .is_some_and(|a| a.status == OutcomeStatus::Completed)
                })
            })
            .await,
        "every offline payment completes"
    );
    // The double spender reconnects: refused, its payments cleared already.
    let upload = a2.key_set(fix(system_now_ms())).expect("key set");
    publish(
        running.bus.as_ref(),
        subjects::wallet_keyset(OI_A),
        &a2.party().wallet_id.clone(),
        upload.frame.clone(),
    )
    .await;
    // Its answer, found by what it answers: on Kafka a key set delivered again is answered
    // again, and partitions are read one after another, so the newest record is not the last.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let refusal = loop {
        let results = read_all(running.bus.as_ref(), &subjects::wallet_result(OI_A)).await;
        let found = results.iter().find_map(|record| {
            dcpipe_schemas::decode::<WalletSyncResult>(&record.payload)
                .ok()
                .filter(|r| {
                    r.wallet_id == a2.party().wallet_id && r.key_set_digest == Some(upload.digest)
                })
        });
        if let Some(result) = found {
            break result;
        }
        assert!(tokio::time::Instant::now() < deadline, "the refusal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refusal.status, SyncStatus::Rejected, "{refusal:?}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let money = running.network.money().await.expect("money");
        if money.held_fen == 0 && money.pending_credit_fen == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "money in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commands_subject = subjects::wallet_command(OI_A);
    while read_all(running.bus.as_ref(), &commands_subject)
        .await
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "the lock follows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settlement of the interbank payments.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let settled: i64 = read_all(running.bus.as_ref(), subjects::SETTLEMENT_INSTRUCTION)
            .await
            .iter()
            .filter_map(|r| {
                dcpipe_schemas::decode::<dcpipe_schemas::SettlementInstruction>(&r.payload).ok()
            })
            .map(|i| i.positions.iter().map(|p| p.clearing_count).sum::<i64>() / 2)
            .sum();
        // a0 → b0 twice, b0 → a0 once, a2 → b1 once, a3 → b1 twice.
        if settled >= 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "settlement in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop_stages().await;
    // The purse paid 50,000 of the double spender's 60,000, the loss account the rest.
    let totals = running.network.institutions[OI_A]
        .ledger
        .offline()
        .offline_totals()
        .await
        .expect("totals");
    assert_eq!(totals.loss_account_fen, -10_000);
    let ledgers = reconciler(&running);

    // Clean: every key set answered once, every purse what its funding and payments make it.
    let report = audit_of(&running, &ledgers).await;
    let mut expected: BTreeMap<AuditCode, u64> = BTreeMap::new();
    assert_found(&report, &expected, "the clean run");
    assert_eq!(report.counts.payments_completed, 8, "{report:#?}");
    assert_eq!(report.counts.purses_checked, 6, "{report:#?}");
    assert_eq!(report.counts.purses_partial, 0);

    let bus = running.bus.as_ref();
    let results: Vec<(Record, WalletSyncResult)> = read_all(bus, &subjects::wallet_result(OI_A))
        .await
        .into_iter()
        .map(|r| {
            let result = dcpipe_schemas::decode(&r.payload).expect("decodes");
            (r, result)
        })
        .collect();
    let a0_id = a0.party().wallet_id.clone();
    let (first_answer_record, first_answer) = results
        .iter()
        .find(|(_, r)| r.wallet_id == a0_id)
        .expect("a0's first answer");

    // A sync result signed by another institution's signer.
    let mut forged = first_answer.clone();
    forged.purse_fen += 10_000;
    let other = running
        .network
        .pki
        .institutions()
        .find(|(id, _)| *id == OI_B)
        .expect("keys")
        .1;
    let forged = sign_sync_result(forged, &other.signer).expect("signs");
    publish(
        bus,
        subjects::wallet_result(OI_A),
        &a0_id,
        dcpipe_schemas::encode(&forged).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::SignatureInvalid, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a forged sync result",
    );

    // A remote command changed after its institution signed it: the lock made an unlock.
    let command: RemoteControlCommand = dcpipe_schemas::decode(
        &read_all(bus, &commands_subject)
            .await
            .first()
            .expect("the lock")
            .payload,
    )
    .expect("decodes");
    let mut unlock = command.clone();
    unlock.command = ControlCommand::Unlock;
    publish(
        bus,
        commands_subject.clone(),
        &a1_id,
        dcpipe_schemas::encode(&unlock).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::SignatureInvalid, 2);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a forged remote command",
    );

    // An authentic command numbered like the lock under another id: one of the two would never
    // be applied.
    let signer = &running
        .network
        .pki
        .institutions()
        .find(|(id, _)| *id == OI_A)
        .expect("keys")
        .1
        .signer;
    let second = sign_command(
        CommandId::random(),
        a1.party(),
        command.sequence,
        &Command::Unlock,
        system_now_ms(),
        signer,
    )
    .expect("signs");
    publish(
        bus,
        commands_subject.clone(),
        &a1_id,
        dcpipe_schemas::encode(&second).expect("encodes"),
    )
    .await;
    expected.insert(AuditCode::WalletCommandConflict, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a second command under one number",
    );

    // The payer's first key set published again, and its first answer with it: the platform
    // accepting a replay of an earlier synchronization.
    let first_key_set = read_all(bus, &subjects::wallet_keyset(OI_A))
        .await
        .into_iter()
        .find(|r| {
            dcpipe_schemas::decode::<WalletKeySet>(&r.payload).is_ok_and(|k| k.wallet_id == a0_id)
        })
        .expect("a0's first key set");
    publish(
        bus,
        subjects::wallet_keyset(OI_A),
        &a0_id,
        first_key_set.payload.to_vec(),
    )
    .await;
    publish(
        bus,
        subjects::wallet_result(OI_A),
        &a0_id,
        first_answer_record.payload.to_vec(),
    )
    .await;
    expected.insert(AuditCode::WalletKeysetReplayed, 1);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "a replayed key set accepted",
    );

    // A purse account changed behind dcpipe's back, then put back; then the loss account.
    let db = ledger_dir.path().join(format!("{OI_A}.db"));
    let purse = purse_wallet_id(&a0_id);
    let edit = |sql: &str, fen: i64| {
        let connection = rusqlite::Connection::open(&db).expect("ledger file");
        let rows = connection
            .execute(sql, rusqlite::params![fen, purse])
            .expect("update");
        assert_eq!(rows, 1, "{sql}");
    };
    let purse_sql = "UPDATE wallets SET balance_fen = balance_fen + ?1 WHERE wallet_id = ?2";
    edit(purse_sql, 1_000);
    let report = audit_of(&running, &ledgers).await;
    assert_eq!(
        report.count_of(AuditCode::WalletPurseMismatch),
        1,
        "{:#?}",
        report.discrepancies
    );
    assert!(
        report.discrepancies.iter().any(|d| {
            d.code == AuditCode::WalletPurseMismatch
                && d.location.subject == format!("ledger {OI_A} purse {purse}")
        }),
        "{:#?}",
        report.discrepancies
    );
    edit(purse_sql, -1_000);
    assert_found(
        &audit_of(&running, &ledgers).await,
        &expected,
        "the purse put back",
    );
    let loss_sql = "UPDATE offline_loss SET balance_fen = balance_fen - ?1 WHERE ?2 IS NOT NULL";
    edit(loss_sql, 400);
    let report = audit_of(&running, &ledgers).await;
    assert_eq!(
        report.count_of(AuditCode::WalletLossMismatch),
        1,
        "{:#?}",
        report.discrepancies
    );
    running.stop().await;
}
