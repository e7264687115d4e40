//! The offline side of the ledger (flow 2): purses funded from online balances, the platform's
//! records written at the version read, offline payments cleared once with the loss account
//! taking what a purse cannot cover, remote commands and the blacklist; money conserved
//! throughout (`Σ balances + in flight + loss account = issued`).

use std::sync::Arc;

use dcpipe_connectors::ledger::offline::{
    FundingRefusal, FundingResult, OfflineClearing, OfflineCommit, OfflineOpenResult,
    OfflineOpening, OfflineRecord, OfflineTerms, OfflineUpdate, PurseFunding, QueueResult,
    QueuedCommand, VoidedReturn, purse_wallet_id,
};
use dcpipe_connectors::ledger::{
    Ledger, LedgerErrorKind, OfflineLedger, PaymentId, ReserveResult, Transition,
};

use crate::fixtures::{PAYER_OI, TIER4, open, pid, reserve};
use crate::harness::Backend;

const TERMS: OfflineTerms = OfflineTerms {
    purse_limit_fen: 100_000,
    single_payment_limit_fen: 50_000,
    cumulative_limit_fen: 100_000,
    payments_per_sync_max: 20,
    offline_duration_ms_max: 86_400_000,
};

fn opening(wallet_id: &str) -> OfflineOpening {
    OfflineOpening {
        wallet_id: wallet_id.to_owned(),
        key_version: 1,
        key_fingerprint: [7; 32],
        last_sync_at_ms: 1_000,
        limits: TERMS,
    }
}

/// A payer ledger with `a1` (50,000 fen online) opened for offline use.
async fn offline_payer(backend: &dyn Backend) -> Arc<dyn Ledger> {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", 50_000, TIER4)]).await;
    let opened = ledger
        .offline()
        .open_offline(&[opening("a1")])
        .await
        .expect("open offline");
    assert_eq!(opened, vec![OfflineOpenResult::Opened]);
    ledger
}

fn funding(n: u8, wallet_id: &str, amount_fen: i64) -> PurseFunding {
    PurseFunding {
        funding_id: [n; 16],
        wallet_id: wallet_id.to_owned(),
        amount_fen,
    }
}

async fn fund(offline: &dyn OfflineLedger, funding: PurseFunding) -> FundingResult {
    let mut results = offline.fund_purses(&[funding]).await.expect("fund");
    assert_eq!(results.len(), 1);
    results.remove(0)
}

async fn record(offline: &dyn OfflineLedger, wallet_id: &str) -> OfflineRecord {
    offline
        .offline_wallet(wallet_id)
        .await
        .expect("read record")
        .unwrap_or_else(|| panic!("no record of {wallet_id}"))
}

fn clearing(n: u64, counter: i64, amount_fen: i64, from_loss_fen: i64) -> OfflineClearing {
    OfflineClearing {
        payment_id: pid(n),
        digest: [u8::try_from(n).unwrap_or(0); 32],
        payer_wallet_id: "a1".to_owned(),
        counter,
        payee_institution_id: "oi-payee".to_owned(),
        payee_wallet_id: "b1".to_owned(),
        amount_fen,
        from_purse_fen: amount_fen - from_loss_fen,
        from_loss_fen,
        evidence: (from_loss_fen > 0).then(|| "offline.beyond_purse".to_owned()),
        paid_at_ms: 2_000,
        frame: vec![1, 2, 3],
    }
}

/// Balance of a wallet row.
async fn balance(ledger: &dyn Ledger, wallet_id: &str) -> i64 {
    ledger
        .wallet(wallet_id)
        .await
        .expect("read wallet")
        .map_or(0, |w| w.account.balance_fen)
}

/// Σ balances + held money in flight + loss account = issued.
async fn assert_conserved(ledger: &dyn Ledger) {
    let totals = ledger.offline().offline_totals().await.expect("totals");
    let balances = ledger.total_balance_fen().await.expect("balances");
    let issued = ledger.issued_total_fen().await.expect("issued");
    assert_eq!(balances + totals.loss_account_fen, issued, "{totals:?}");
    assert!(totals.loss_account_fen <= 0);
    ledger.verify_integrity().await.expect("integrity");
}

pub(crate) async fn offline_opening_makes_an_empty_purse_account_once(backend: &dyn Backend) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    let mut rotated = opening("a1");
    rotated.key_version = 2;
    let again = offline
        .open_offline(&[opening("a1"), rotated, opening("ghost")])
        .await
        .expect("open again");
    assert_eq!(
        again,
        vec![
            OfflineOpenResult::AlreadyOpen,
            OfflineOpenResult::Conflict,
            OfflineOpenResult::UnknownWallet
        ]
    );
    let stored = record(offline, "a1").await;
    assert_eq!(
        (
            stored.version,
            stored.purse_fen,
            stored.counter,
            stored.chain_head
        ),
        (1, 0, 0, [0; 32])
    );
    assert_eq!(stored.limits, TERMS);
    assert_eq!(balance(ledger.as_ref(), &purse_wallet_id("a1")).await, 0);
    assert_eq!(offline.offline_wallet("ghost").await.expect("read"), None);
    assert_conserved(ledger.as_ref()).await;
    let err = ledger
        .open_wallets(&[crate::fixtures::account(PAYER_OI, "x-purse", 1)])
        .await
        .expect_err("a purse account's name");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
}

pub(crate) async fn funding_moves_online_money_into_the_purse_once(backend: &dyn Backend) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    assert_eq!(
        fund(offline, funding(1, "a1", 30_000)).await,
        FundingResult::Funded { purse_fen: 30_000 }
    );
    assert_eq!(
        fund(offline, funding(1, "a1", 30_000)).await,
        FundingResult::Duplicate
    );
    assert_eq!(
        fund(offline, funding(1, "a1", 31_000)).await,
        FundingResult::Refused(FundingRefusal::Conflict)
    );
    assert_eq!(
        fund(offline, funding(2, "a1", 30_000)).await,
        FundingResult::Refused(FundingRefusal::InsufficientFunds)
    );
    assert_eq!(
        fund(offline, funding(3, "a1", 0)).await,
        FundingResult::Refused(FundingRefusal::InvalidAmount)
    );
    assert_eq!(
        fund(offline, funding(4, "ghost", 10)).await,
        FundingResult::Refused(FundingRefusal::UnknownWallet)
    );
    assert_eq!(balance(ledger.as_ref(), "a1").await, 20_000);
    assert_eq!(
        balance(ledger.as_ref(), &purse_wallet_id("a1")).await,
        30_000
    );
    let stored = record(offline, "a1").await;
    assert_eq!(
        (stored.purse_fen, stored.funded_fen, stored.version),
        (30_000, 30_000, 2)
    );
    let totals = offline.offline_totals().await.expect("totals");
    assert_eq!(
        (
            totals.funded_fen,
            totals.purses_fen,
            totals.purse_accounts_fen
        ),
        (30_000, 30_000, 30_000)
    );
    assert_eq!(ledger.issued_total_fen().await.expect("issued"), 50_000);
    assert_conserved(ledger.as_ref()).await;
}

pub(crate) async fn funding_never_passes_the_purse_limit(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", 500_000, TIER4)]).await;
    let offline = ledger.offline();
    offline
        .open_offline(&[opening("a1")])
        .await
        .expect("open offline");
    assert_eq!(
        fund(offline, funding(1, "a1", 100_000)).await,
        FundingResult::Funded { purse_fen: 100_000 }
    );
    assert_eq!(
        fund(offline, funding(2, "a1", 1)).await,
        FundingResult::Refused(FundingRefusal::OverPurseLimit)
    );
    assert_eq!(balance(ledger.as_ref(), "a1").await, 400_000);
}

pub(crate) async fn a_cleared_payment_is_recorded_once_and_the_excess_is_a_loss(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    fund(offline, funding(1, "a1", 10_000)).await;
    let read = record(offline, "a1").await;
    // Two payments under counter 1 (a double spend), 6,000 each: the purse pays 10,000 and
    // the loss account 2,000.
    let mut after = read.clone();
    after.purse_fen = 0;
    after.counter = 1;
    let update = OfflineUpdate {
        record: after,
        clearings: vec![clearing(1, 1, 6_000, 0), clearing(2, 1, 6_000, 2_000)],
    };
    assert_eq!(
        offline
            .commit_offline(std::slice::from_ref(&update))
            .await
            .expect("commit"),
        OfflineCommit::Committed
    );
    let totals = offline.offline_totals().await.expect("totals");
    assert_eq!(totals.loss_account_fen, -2_000);
    assert_eq!((totals.cleared_fen, totals.from_loss_fen), (12_000, 2_000));
    assert_eq!(
        balance(ledger.as_ref(), &purse_wallet_id("a1")).await,
        12_000
    );
    let cleared = offline
        .offline_cleared("a1", &[1, 5])
        .await
        .expect("cleared");
    assert_eq!(
        cleared.iter().map(|c| c.payment_id).collect::<Vec<_>>(),
        vec![pid(1), pid(2)]
    );
    assert_eq!(
        offline.offline_clearing(&pid(2)).await.expect("read"),
        Some(clearing(2, 1, 6_000, 2_000))
    );
    // The same write again is stale (the version moved): nothing moves twice.
    assert_eq!(
        offline
            .commit_offline(&[update])
            .await
            .expect("commit again"),
        OfflineCommit::Stale("a1".to_owned())
    );
    assert_eq!(
        offline
            .offline_totals()
            .await
            .expect("totals")
            .loss_account_fen,
        -2_000
    );
    assert_conserved(ledger.as_ref()).await;
}

pub(crate) async fn a_payment_cleared_before_moves_nothing_and_another_digest_is_refused(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    fund(offline, funding(1, "a1", 10_000)).await;
    let mut after = record(offline, "a1").await;
    after.purse_fen = 7_000;
    let first = OfflineUpdate {
        record: after.clone(),
        clearings: vec![clearing(1, 1, 3_000, 0)],
    };
    offline.commit_offline(&[first]).await.expect("commit");
    // Read again, the same payment in a later write: recognized, the purse is not taken twice.
    let mut again = record(offline, "a1").await;
    again.last_sync_at_ms = 9_000;
    let repeat = OfflineUpdate {
        record: again.clone(),
        clearings: vec![clearing(1, 1, 3_000, 0)],
    };
    assert_eq!(
        offline.commit_offline(&[repeat]).await.expect("repeat"),
        OfflineCommit::Committed
    );
    assert_eq!(record(offline, "a1").await.purse_fen, 7_000);
    let mut forged = clearing(1, 1, 3_000, 0);
    forged.digest = [9; 32];
    let read = record(offline, "a1").await;
    let err = offline
        .commit_offline(&[OfflineUpdate {
            record: read,
            clearings: vec![forged],
        }])
        .await
        .expect_err("other digest");
    assert_eq!(err.kind(), LedgerErrorKind::Integrity);
    // A write whose purse does not lose what its clearings take is refused whole.
    let mut wrong = record(offline, "a1").await;
    wrong.purse_fen = 7_000;
    let err = offline
        .commit_offline(&[OfflineUpdate {
            record: wrong,
            clearings: vec![clearing(3, 2, 1_000, 0)],
        }])
        .await
        .expect_err("purse not reduced");
    assert_eq!(err.kind(), LedgerErrorKind::Integrity);
    assert_eq!(offline.offline_clearing(&pid(3)).await.expect("read"), None);
    assert_conserved(ledger.as_ref()).await;
}

pub(crate) async fn a_cleared_payment_takes_the_clearing_path_from_the_purse_account(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    fund(offline, funding(1, "a1", 10_000)).await;
    let mut after = record(offline, "a1").await;
    after.purse_fen = 6_000;
    offline
        .commit_offline(&[OfflineUpdate {
            record: after,
            clearings: vec![clearing(1, 1, 4_000, 0)],
        }])
        .await
        .expect("commit");
    let purse = purse_wallet_id("a1");
    let reserved = ledger
        .reserve(&[reserve(1, &purse, 4_000)])
        .await
        .expect("reserve");
    assert!(
        matches!(reserved[0], ReserveResult::Reserved(_)),
        "{reserved:?}"
    );
    let committed = ledger.commit(&[pid(1)]).await.expect("commit");
    assert!(
        matches!(committed[0], Transition::Applied(_)),
        "{committed:?}"
    );
    assert_eq!(balance(ledger.as_ref(), &purse).await, 6_000);
    let totals = offline.offline_totals().await.expect("totals");
    assert_eq!(
        (totals.purses_fen, totals.purse_accounts_fen),
        (6_000, 6_000)
    );
    // 50,000 issued: 40,000 online, 6,000 in the purse, 4,000 left to the payee's institution.
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 46_000);
    ledger.verify_integrity().await.expect("integrity");
}

pub(crate) async fn a_stale_write_of_several_wallets_writes_none(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    open(
        ledger.as_ref(),
        &[("a1", 50_000, TIER4), ("a2", 50_000, TIER4)],
    )
    .await;
    let offline = ledger.offline();
    offline
        .open_offline(&[opening("a1"), opening("a2")])
        .await
        .expect("open offline");
    let mut a1 = record(offline, "a1").await;
    let mut a2 = record(offline, "a2").await;
    fund(offline, funding(1, "a2", 1_000)).await;
    a1.last_sync_at_ms = 5_000;
    a2.last_sync_at_ms = 5_000;
    let result = offline
        .commit_offline(&[
            OfflineUpdate {
                record: a1,
                clearings: Vec::new(),
            },
            OfflineUpdate {
                record: a2,
                clearings: Vec::new(),
            },
        ])
        .await
        .expect("commit");
    assert_eq!(result, OfflineCommit::Stale("a2".to_owned()));
    assert_eq!(record(offline, "a1").await.last_sync_at_ms, 1_000);
    assert_eq!(record(offline, "a1").await.version, 1);
}

pub(crate) async fn a_lock_in_the_record_locks_the_online_wallet_and_blacklisting_lists_it(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    let mut locked = record(offline, "a1").await;
    locked.locked_at_ms = Some(3_000);
    locked.blacklisted_at_ms = Some(3_000);
    offline
        .commit_offline(&[OfflineUpdate {
            record: locked,
            clearings: Vec::new(),
        }])
        .await
        .expect("lock");
    let online = ledger.wallet("a1").await.expect("read").expect("a1");
    assert!(online.account.locked);
    assert_eq!(
        fund(offline, funding(1, "a1", 10)).await,
        FundingResult::Refused(FundingRefusal::WalletLocked)
    );
    assert_eq!(
        offline.blacklist().await.expect("list"),
        vec!["a1".to_owned()]
    );
    let version = offline
        .blacklist_add(&["other-oi-wallet".to_owned(), "a1".to_owned()], 4_000)
        .await
        .expect("add");
    assert_eq!(version, 2);
    assert_eq!(
        offline.blacklist().await.expect("list"),
        vec!["a1".to_owned(), "other-oi-wallet".to_owned()]
    );
    let mut unlocked = record(offline, "a1").await;
    unlocked.locked_at_ms = None;
    offline
        .commit_offline(&[OfflineUpdate {
            record: unlocked,
            clearings: Vec::new(),
        }])
        .await
        .expect("unlock");
    let online = ledger.wallet("a1").await.expect("read").expect("a1");
    assert!(!online.account.locked);
}

pub(crate) async fn an_order_to_rotate_the_key_is_written_read_and_ended_with_the_record(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    let opened = record(offline, "a1").await;
    assert_eq!(opened.rotation_ordered_at_ms, None, "no order at opening");
    let mut ordered = opened.clone();
    ordered.rotation_ordered_at_ms = Some(2_000);
    let written = offline
        .commit_offline(&[OfflineUpdate {
            record: ordered.clone(),
            clearings: Vec::new(),
        }])
        .await
        .expect("order");
    assert_eq!(written, OfflineCommit::Committed);
    let read = record(offline, "a1").await;
    assert_eq!(read.rotation_ordered_at_ms, Some(2_000));
    assert_eq!(read.version, opened.version + 1);
    // The key set under the new key ends the order, with the raised key version.
    let mut rotated = read.clone();
    rotated.key_version = 2;
    rotated.key_fingerprint = [9; 32];
    rotated.rotation_ordered_at_ms = None;
    offline
        .commit_offline(&[OfflineUpdate {
            record: rotated,
            clearings: Vec::new(),
        }])
        .await
        .expect("rotate");
    let read = record(offline, "a1").await;
    assert_eq!(
        (
            read.key_version,
            read.key_fingerprint,
            read.rotation_ordered_at_ms
        ),
        (2, [9; 32], None)
    );
}

fn command(n: u8, sequence: i64) -> QueuedCommand {
    QueuedCommand {
        command_id: [n; 16],
        wallet_id: "a1".to_owned(),
        sequence,
        kind: "LOCK".to_owned(),
        frame: vec![n; 8],
        issued_at_ms: 1_000 + i64::from(n),
    }
}

pub(crate) async fn commands_queue_once_in_sequence(backend: &dyn Backend) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    assert_eq!(offline.last_command_sequence("a1").await.expect("last"), 0);
    for (n, sequence) in [(1, 1), (2, 2), (3, 3)] {
        assert_eq!(
            offline
                .queue_command(&command(n, sequence))
                .await
                .expect("queue"),
            QueueResult::Queued
        );
    }
    assert_eq!(
        offline.queue_command(&command(2, 2)).await.expect("again"),
        QueueResult::Duplicate
    );
    assert_eq!(
        offline.queue_command(&command(9, 3)).await.expect("taken"),
        QueueResult::SequenceTaken
    );
    let mut foreign = command(8, 1);
    foreign.wallet_id = "ghost".to_owned();
    assert_eq!(
        offline.queue_command(&foreign).await.expect("ghost"),
        QueueResult::UnknownWallet
    );
    assert_eq!(offline.last_command_sequence("a1").await.expect("last"), 3);
    let after_one = offline.commands_after("a1", 1, 10).await.expect("after");
    assert_eq!(after_one, vec![command(2, 2), command(3, 3)]);
    assert_eq!(
        offline.commands_after("a1", 0, 1).await.expect("limited"),
        vec![command(1, 1)]
    );
}

/// Unused ids stay unused: a write that names a payment of another payer is refused.
pub(crate) async fn a_write_cannot_clear_another_payers_payment(backend: &dyn Backend) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    let read = record(offline, "a1").await;
    let mut foreign = clearing(1, 1, 100, 100);
    foreign.payer_wallet_id = "a2".to_owned();
    let err = offline
        .commit_offline(&[OfflineUpdate {
            record: read,
            clearings: vec![foreign],
        }])
        .await
        .expect_err("foreign");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    assert_eq!(
        offline
            .offline_clearing(&PaymentId([0; 16]))
            .await
            .expect("read"),
        None
    );
}

pub(crate) async fn a_voided_offline_payment_gives_its_purse_and_loss_back_once(
    backend: &dyn Backend,
) {
    let ledger = offline_payer(backend).await;
    let offline = ledger.offline();
    fund(offline, funding(1, "a1", 10_000)).await;
    // Two payments under counter 1: 6,000 from the purse, then 4,000 from the purse and
    // 2,000 from the loss account.
    let mut after = record(offline, "a1").await;
    after.purse_fen = 0;
    after.counter = 1;
    offline
        .commit_offline(&[OfflineUpdate {
            record: after,
            clearings: vec![clearing(1, 1, 6_000, 0), clearing(2, 1, 6_000, 2_000)],
        }])
        .await
        .expect("commit");
    let purse = purse_wallet_id("a1");
    ledger
        .reserve(&[reserve(1, &purse, 6_000), reserve(2, &purse, 6_000)])
        .await
        .expect("reserve");
    // Not voided yet (nor an offline payment): nothing moves.
    assert_eq!(
        offline.return_voided(&pid(2)).await.expect("return"),
        VoidedReturn::NotVoided
    );
    assert_eq!(
        offline.return_voided(&pid(9)).await.expect("return"),
        VoidedReturn::NotOffline
    );
    // The second is voided (its payee refused it): its 4,000 back to the purse record, its
    // 2,000 back to the loss account, once.
    let voided = ledger
        .void(&[(pid(2), "payee.wallet_locked".to_owned())])
        .await
        .expect("void");
    assert!(matches!(voided[0], Transition::Applied(_)), "{voided:?}");
    let version = record(offline, "a1").await.version;
    assert_eq!(
        offline.return_voided(&pid(2)).await.expect("return"),
        VoidedReturn::Returned { purse_fen: 4_000 }
    );
    assert_eq!(
        offline.return_voided(&pid(2)).await.expect("again"),
        VoidedReturn::AlreadyReturned
    );
    let stored = record(offline, "a1").await;
    assert_eq!((stored.purse_fen, stored.version), (4_000, version + 1));
    let totals = offline.offline_totals().await.expect("totals");
    assert_eq!(totals.loss_account_fen, 0);
    assert_eq!((totals.cleared_fen, totals.from_loss_fen), (6_000, 0));
    // The purse account holds the purse and the payment still in flight.
    assert_eq!(balance(ledger.as_ref(), &purse).await, 4_000 + 6_000);
    ledger.commit(&[pid(1)]).await.expect("commit");
    let totals = offline.offline_totals().await.expect("totals");
    assert_eq!(
        (totals.purses_fen, totals.purse_accounts_fen),
        (4_000, 4_000)
    );
    // Still recorded under its counter: uploaded again, it is recognized.
    assert_eq!(
        offline.offline_clearing(&pid(2)).await.expect("read"),
        Some(clearing(2, 1, 6_000, 2_000))
    );
    ledger.verify_integrity().await.expect("integrity");
}
