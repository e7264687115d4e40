//! One function per ledger behaviour; `ledger_suite!` runs each on every backend.

use std::collections::HashMap;
use std::sync::Arc;

use dcpipe_connectors::ledger::{
    BATCH_ITEMS_MAX, CreditResult, DECIDED_LIST_MAX, Finalization, FinalizeResult, ID_LEN_MAX,
    Ledger, LedgerErrorKind, LedgerRefusal, MS_PER_DAY, OpenResult, PaymentId, PaymentRecord,
    PaymentState, PendingTotals, Rejection, RejectionResult, ReserveResult, Side, Transition,
    WalletLimits, WalletOpening,
};

use crate::fixtures::{
    DAY_START_MS, HOLD_MS, Lcg, NOON_MS, PAYEE_OI, PAYER_OI, TIER4, UNLIMITED, account, clock_past,
    credit, digest, open, pid, reserve, reserve_at, wall_ms,
};
use crate::harness::Backend;

/// A payer ledger with wallet `a1` holding `balance_fen` (tier-4 limits).
async fn payer_with(backend: &dyn Backend, balance_fen: i64) -> Arc<dyn Ledger> {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", balance_fen, TIER4)]).await;
    ledger
}

/// A payee ledger with wallet `b1` holding `balance_fen` (tier-4 limits).
async fn payee_with(backend: &dyn Backend, balance_fen: i64) -> Arc<dyn Ledger> {
    let ledger = backend.ledger(PAYEE_OI).await;
    open(ledger.as_ref(), &[("b1", balance_fen, TIER4)]).await;
    ledger
}

async fn reserve_one(
    ledger: &dyn Ledger,
    request: dcpipe_connectors::ledger::ReserveRequest,
) -> ReserveResult {
    let mut results = ledger.reserve(&[request]).await.expect("reserve");
    assert_eq!(results.len(), 1);
    results.remove(0)
}

fn reserved(result: ReserveResult) -> PaymentRecord {
    match result {
        ReserveResult::Reserved(record) => record,
        other => panic!("expected Reserved, got {other:?}"),
    }
}

/// Balance, held, available and pending credit of a wallet.
async fn money(ledger: &dyn Ledger, wallet_id: &str) -> (i64, i64, i64, i64) {
    let w = ledger
        .wallet(wallet_id)
        .await
        .expect("read wallet")
        .unwrap_or_else(|| panic!("wallet {wallet_id} missing"));
    (
        w.account.balance_fen,
        w.held_fen,
        w.available_fen,
        w.pending_credit_fen,
    )
}

async fn payer_record(ledger: &dyn Ledger, n: u64) -> PaymentRecord {
    ledger
        .payment(&pid(n), Side::Payer)
        .await
        .expect("read payment")
        .unwrap_or_else(|| panic!("payment {n} missing"))
}

/// The new records of transitions that must all have applied.
fn applied(results: Vec<Transition>) -> Vec<PaymentRecord> {
    results
        .into_iter()
        .map(|result| match result {
            Transition::Applied(record) => record,
            other => panic!("expected Applied, got {other:?}"),
        })
        .collect()
}

fn ids(records: &[PaymentRecord]) -> Vec<PaymentId> {
    records.iter().map(|r| r.payment_id).collect()
}

pub(crate) async fn open_wallets_is_idempotent(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let again = ledger
        .open_wallets(&[
            account(PAYER_OI, "a1", 50_000),
            account(PAYER_OI, "a2", 7),
            account(PAYER_OI, "a2", 7),
        ])
        .await
        .expect("open again");
    assert_eq!(
        again,
        vec![
            OpenResult::AlreadyOpen,
            OpenResult::Created,
            OpenResult::AlreadyOpen
        ]
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 50_007);
    assert_eq!(ledger.issued_total_fen().await.expect("issued"), 50_007);
    assert_eq!(ledger.wallet_count().await.expect("count"), 2);
}

/// Opening a wallet again on other terms (balance, tier or limits) is refused and changes
/// nothing: money is issued once per wallet, on the terms of its first opening.
pub(crate) async fn open_wallets_refuses_other_terms(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let mut other_tier = account(PAYER_OI, "a1", 50_000);
    other_tier.tier = 2;
    let mut other_limit = account(PAYER_OI, "a1", 50_000);
    other_limit.limits.password_free_limit_fen += 1;
    let results = ledger
        .open_wallets(&[
            account(PAYER_OI, "a1", 999_999),
            other_tier,
            other_limit,
            account(PAYER_OI, "a3", 1),
        ])
        .await
        .expect("open");
    assert_eq!(
        results,
        vec![
            OpenResult::Conflict,
            OpenResult::Conflict,
            OpenResult::Conflict,
            OpenResult::Created
        ]
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
    assert_eq!(ledger.issued_total_fen().await.expect("issued"), 50_001);
}

/// Payments move money between wallets; they issue none: what was issued stays what the
/// balances and the money in flight add up to.
pub(crate) async fn payments_issue_no_money(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let empty = backend.ledger(PAYEE_OI).await;
    assert_eq!(empty.issued_total_fen().await.expect("issued"), 0);
    assert_eq!(empty.wallet_count().await.expect("count"), 0);
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 1_000)).await);
    let held = ledger.pending_totals().await.expect("pending").held_fen;
    assert_eq!(held, 1_000);
    assert_eq!(ledger.issued_total_fen().await.expect("issued"), 50_000);
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 50_000);
}

pub(crate) async fn open_wallets_refuses_another_institutions_wallet(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    let err = ledger
        .open_wallets(&[account(PAYEE_OI, "b1", 100)])
        .await
        .expect_err("foreign wallet");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    assert_eq!(ledger.wallet("b1").await.expect("read"), None);
}

pub(crate) async fn wallets_answers_each_requested_id_in_order(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    let pin_free = WalletLimits {
        password_free_limit_fen: 3_000,
        ..TIER4
    };
    open(
        ledger.as_ref(),
        &[("a1", 50_000, TIER4), ("a2", 7_000, pin_free)],
    )
    .await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    ledger
        .credit_pending(&[credit(2, "a2", 500)])
        .await
        .expect("credit");
    let requested: Vec<String> = ["a2", "ghost", "a1", "a2", "", &"w".repeat(ID_LEN_MAX + 1)]
        .map(str::to_owned)
        .to_vec();
    let answers = ledger.wallets(&requested).await.expect("wallets");
    assert_eq!(answers.len(), requested.len());
    let a1 = ledger.wallet("a1").await.expect("read a1");
    let a2 = ledger.wallet("a2").await.expect("read a2");
    assert_eq!(answers, vec![a2.clone(), None, a1.clone(), a2, None, None]);
    let a1 = a1.expect("a1 exists");
    assert_eq!((a1.held_fen, a1.available_fen), (12_000, 38_000));
    let a2 = answers[0].as_ref().expect("a2 exists");
    assert_eq!(a2.account.limits.password_free_limit_fen, 3_000);
    assert_eq!(a2.pending_credit_fen, 500);
}

pub(crate) async fn wallets_of_no_ids_is_empty(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    assert_eq!(ledger.wallets(&[]).await.expect("wallets"), Vec::new());
}

pub(crate) async fn wallets_refuses_more_ids_than_a_batch(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let full = vec!["a1".to_owned(); BATCH_ITEMS_MAX];
    let answers = ledger.wallets(&full).await.expect("full batch");
    assert_eq!(answers.len(), BATCH_ITEMS_MAX);
    assert!(
        answers
            .iter()
            .all(|w| w.as_ref().is_some_and(|w| w.account.balance_fen == 50_000))
    );
    let over = vec!["a1".to_owned(); BATCH_ITEMS_MAX + 1];
    let err = ledger.wallets(&over).await.expect_err("too many ids");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
}

pub(crate) async fn reserve_holds_amount_in_balance_but_not_available(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let record = reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    assert_eq!(record.state, PaymentState::Reserved);
    assert_eq!(record.side, Side::Payer);
    assert_eq!(record.amount_fen, 12_000);
    assert_eq!(record.digest, Some(digest(1, 1)));
    assert_eq!(record.wallet_id.as_deref(), Some("a1"));
    assert_eq!(record.expires_at_ms, Some(NOON_MS + HOLD_MS));
    assert_eq!(
        money(ledger.as_ref(), "a1").await,
        (50_000, 12_000, 38_000, 0)
    );
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 50_000);
    assert_eq!(
        ledger.pending_totals().await.expect("pending"),
        PendingTotals {
            held_fen: 12_000,
            pending_credit_fen: 0
        }
    );
    assert_eq!(payer_record(ledger.as_ref(), 1).await, record);
}

pub(crate) async fn reserve_duplicate_returns_first_record_and_moves_nothing(
    backend: &dyn Backend,
) {
    let ledger = payer_with(backend, 50_000).await;
    let first = reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    let again = reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await;
    assert_eq!(again, ReserveResult::Duplicate(first));
    assert_eq!(
        money(ledger.as_ref(), "a1").await,
        (50_000, 12_000, 38_000, 0)
    );
}

pub(crate) async fn reserve_with_other_digest_is_a_conflict(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let first = reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    let mut altered = reserve(1, "a1", 13_000);
    altered.digest = digest(1, 2);
    let result = reserve_one(ledger.as_ref(), altered).await;
    assert_eq!(result, ReserveResult::Conflict(first));
    assert_eq!(
        money(ledger.as_ref(), "a1").await,
        (50_000, 12_000, 38_000, 0)
    );
}

pub(crate) async fn reserve_refuses_unknown_wallet_and_remembers_it(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let result = reserve_one(ledger.as_ref(), reserve(1, "ghost", 100)).await;
    assert_eq!(result, ReserveResult::Refused(LedgerRefusal::UnknownWallet));
    let record = payer_record(ledger.as_ref(), 1).await;
    assert_eq!(record.state, PaymentState::Rejected);
    assert_eq!(record.reason_code.as_deref(), Some("ledger.unknown_wallet"));
    // Opening the wallet later does not change the first answer.
    open(ledger.as_ref(), &[("ghost", 1_000, TIER4)]).await;
    let again = reserve_one(ledger.as_ref(), reserve(1, "ghost", 100)).await;
    assert_eq!(again, ReserveResult::Duplicate(record));
    assert_eq!(money(ledger.as_ref(), "ghost").await, (1_000, 0, 1_000, 0));
}

pub(crate) async fn reserve_refuses_locked_wallet(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    ledger.set_locked("a1", true).await.expect("lock");
    let result = reserve_one(ledger.as_ref(), reserve(1, "a1", 100)).await;
    assert_eq!(result, ReserveResult::Refused(LedgerRefusal::WalletLocked));
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
}

pub(crate) async fn reserve_refuses_amount_over_single_payment_limit(backend: &dyn Backend) {
    let ledger = payer_with(backend, 900_000).await;
    let at_limit = reserve_one(ledger.as_ref(), reserve(1, "a1", 200_000)).await;
    assert!(
        matches!(at_limit, ReserveResult::Reserved(_)),
        "{at_limit:?}"
    );
    let over = reserve_one(ledger.as_ref(), reserve(2, "a1", 200_001)).await;
    assert_eq!(
        over,
        ReserveResult::Refused(LedgerRefusal::SinglePaymentLimit { limit_fen: 200_000 })
    );
    assert_eq!(
        payer_record(ledger.as_ref(), 2)
            .await
            .reason_code
            .as_deref(),
        Some("ledger.single_payment_limit")
    );
}

pub(crate) async fn reserve_refuses_amount_over_daily_limit(backend: &dyn Backend) {
    let ledger = payer_with(backend, 900_000).await;
    for n in 1..=2 {
        reserved(reserve_one(ledger.as_ref(), reserve(n, "a1", 200_000)).await);
    }
    let over = reserve_one(ledger.as_ref(), reserve(3, "a1", 100_001)).await;
    assert_eq!(
        over,
        ReserveResult::Refused(LedgerRefusal::DailyLimit {
            limit_fen: 500_000,
            spent_fen: 400_000
        })
    );
    // Committed payments count too; exactly the limit is allowed.
    ledger.commit(&[pid(1)]).await.expect("commit");
    let exact = reserve_one(ledger.as_ref(), reserve(4, "a1", 100_000)).await;
    assert!(matches!(exact, ReserveResult::Reserved(_)), "{exact:?}");
}

pub(crate) async fn daily_limit_resets_at_midnight_china_time(backend: &dyn Backend) {
    let ledger = payer_with(backend, 1_000_000).await;
    let last_ms_of_day = DAY_START_MS + MS_PER_DAY - 1;
    for n in 1..=2 {
        reserved(
            reserve_one(
                ledger.as_ref(),
                reserve_at(n, "a1", 200_000, last_ms_of_day),
            )
            .await,
        );
    }
    let same_day = reserve_one(
        ledger.as_ref(),
        reserve_at(3, "a1", 200_000, last_ms_of_day),
    )
    .await;
    assert!(
        matches!(
            same_day,
            ReserveResult::Refused(LedgerRefusal::DailyLimit {
                spent_fen: 400_000,
                ..
            })
        ),
        "{same_day:?}"
    );
    // One ms later it is 00:00 in UTC+8 (16:00 UTC): a new business day.
    let next_day = reserve_one(
        ledger.as_ref(),
        reserve_at(4, "a1", 200_000, last_ms_of_day + 1),
    )
    .await;
    assert!(
        matches!(next_day, ReserveResult::Reserved(_)),
        "{next_day:?}"
    );
    // The first ms of the scenario day is that day too, the ms before it the day before.
    let previous_day = reserve_one(
        ledger.as_ref(),
        reserve_at(5, "a1", 200_000, DAY_START_MS - 1),
    )
    .await;
    assert!(
        matches!(previous_day, ReserveResult::Reserved(_)),
        "{previous_day:?}"
    );
    let day_start = reserve_one(ledger.as_ref(), reserve_at(6, "a1", 1, DAY_START_MS)).await;
    assert!(
        matches!(day_start, ReserveResult::Reserved(_)),
        "{day_start:?}"
    );
    ledger.verify_integrity().await.expect("integrity");
}

pub(crate) async fn reserve_refuses_amount_over_available_funds(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 30_000)).await);
    let over = reserve_one(ledger.as_ref(), reserve(2, "a1", 20_001)).await;
    assert_eq!(
        over,
        ReserveResult::Refused(LedgerRefusal::InsufficientFunds {
            available_fen: 20_000
        })
    );
    let exact = reserve_one(ledger.as_ref(), reserve(3, "a1", 20_000)).await;
    assert!(matches!(exact, ReserveResult::Reserved(_)), "{exact:?}");
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 50_000, 0, 0));
}

pub(crate) async fn reserve_refuses_non_positive_amount(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let results = ledger
        .reserve(&[reserve(1, "a1", 0), reserve(2, "a1", -500)])
        .await
        .expect("reserve");
    assert_eq!(
        results,
        vec![
            ReserveResult::Refused(LedgerRefusal::InvalidAmount),
            ReserveResult::Refused(LedgerRefusal::InvalidAmount)
        ]
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
}

pub(crate) async fn reserve_refuses_oversized_wallet_id(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let long_id = "w".repeat(ID_LEN_MAX + 1);
    let results = ledger
        .reserve(&[reserve(1, &long_id, 100), reserve(2, "a1", 100)])
        .await
        .expect("reserve");
    assert_eq!(
        results[0],
        ReserveResult::Refused(LedgerRefusal::MalformedRequest)
    );
    assert!(
        matches!(results[1], ReserveResult::Reserved(_)),
        "{:?}",
        results[1]
    );
    let stored = payer_record(ledger.as_ref(), 1).await;
    assert_eq!(stored.wallet_id.map(|w| w.len()), Some(ID_LEN_MAX));
}

pub(crate) async fn items_of_one_batch_share_the_wallet(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let results = ledger
        .reserve(&[
            reserve(1, "a1", 30_000),
            reserve(2, "a1", 30_000),
            reserve(1, "a1", 30_000),
            reserve(3, "a1", 20_000),
        ])
        .await
        .expect("reserve");
    assert!(matches!(results[0], ReserveResult::Reserved(_)));
    assert_eq!(
        results[1],
        ReserveResult::Refused(LedgerRefusal::InsufficientFunds {
            available_fen: 20_000
        })
    );
    assert!(matches!(results[2], ReserveResult::Duplicate(_)));
    assert!(matches!(results[3], ReserveResult::Reserved(_)));
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 50_000, 0, 0));
}

pub(crate) async fn commit_takes_amount_out_of_balance(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    let results = ledger.commit(&[pid(1)]).await.expect("commit");
    let Transition::Applied(record) = &results[0] else {
        panic!("expected Applied, got {results:?}");
    };
    assert_eq!(record.state, PaymentState::Committed);
    assert_eq!(money(ledger.as_ref(), "a1").await, (38_000, 0, 38_000, 0));
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 38_000);
}

pub(crate) async fn commit_twice_is_already_final(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    ledger.commit(&[pid(1)]).await.expect("commit");
    let again = ledger
        .commit(&[pid(1), pid(1)])
        .await
        .expect("commit again");
    for result in &again {
        assert!(
            matches!(result, Transition::AlreadyFinal(r) if r.state == PaymentState::Committed),
            "{result:?}"
        );
    }
    assert_eq!(money(ledger.as_ref(), "a1").await, (38_000, 0, 38_000, 0));
}

pub(crate) async fn void_releases_hold_and_daily_total(backend: &dyn Backend) {
    let ledger = payer_with(backend, 900_000).await;
    for n in 1..=2 {
        reserved(reserve_one(ledger.as_ref(), reserve(n, "a1", 200_000)).await);
    }
    let results = ledger
        .void(&[(pid(1), "payment.expired".into())])
        .await
        .expect("void");
    let Transition::Applied(record) = &results[0] else {
        panic!("expected Applied, got {results:?}");
    };
    assert_eq!(record.state, PaymentState::Voided);
    assert_eq!(record.reason_code.as_deref(), Some("payment.expired"));
    assert_eq!(
        money(ledger.as_ref(), "a1").await,
        (900_000, 200_000, 700_000, 0)
    );
    // The voided amount no longer counts against the day: 200,000 + 300,000 fits 500,000.
    let fits = ledger
        .reserve(&[reserve(3, "a1", 200_000), reserve(4, "a1", 100_000)])
        .await
        .expect("reserve");
    assert!(
        fits.iter().all(|r| matches!(r, ReserveResult::Reserved(_))),
        "{fits:?}"
    );
    ledger.verify_integrity().await.expect("integrity");
}

pub(crate) async fn commit_after_void_is_already_final_voided(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    ledger
        .void(&[(pid(1), "payment.rejected_by_payee".into())])
        .await
        .expect("void");
    let results = ledger.commit(&[pid(1)]).await.expect("commit");
    assert!(
        matches!(&results[0], Transition::AlreadyFinal(r) if r.state == PaymentState::Voided),
        "{results:?}"
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
}

pub(crate) async fn void_after_commit_is_already_final_committed(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 12_000)).await);
    ledger.commit(&[pid(1)]).await.expect("commit");
    let results = ledger
        .void(&[(pid(1), "payment.expired".into())])
        .await
        .expect("void");
    assert!(
        matches!(&results[0], Transition::AlreadyFinal(r) if r.state == PaymentState::Committed),
        "{results:?}"
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (38_000, 0, 38_000, 0));
}

pub(crate) async fn commit_and_void_of_unknown_payment_are_not_found(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    assert_eq!(
        ledger.commit(&[pid(9)]).await.expect("commit"),
        vec![Transition::NotFound]
    );
    assert_eq!(
        ledger
            .void(&[(pid(9), "payment.expired".into())])
            .await
            .expect("void"),
        vec![Transition::NotFound]
    );
    assert_eq!(ledger.state_counts().await.expect("counts").total(), 0);
}

fn rejection(n: u64, version: u8) -> Rejection {
    Rejection {
        payment_id: pid(n),
        digest: digest(n, version),
        payer_wallet: "a1".into(),
        amount_fen: 5_000,
        reason_code: "signature.invalid".into(),
        at_ms: NOON_MS,
    }
}

pub(crate) async fn rejections_are_recorded_once(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let results = ledger
        .record_rejections(&[rejection(1, 1), rejection(1, 1), rejection(1, 2)])
        .await
        .expect("record");
    let RejectionResult::Recorded(record) = &results[0] else {
        panic!("expected Recorded, got {results:?}");
    };
    assert_eq!(record.state, PaymentState::Rejected);
    assert_eq!(record.reason_code.as_deref(), Some("signature.invalid"));
    assert_eq!(results[1], RejectionResult::Duplicate(record.clone()));
    assert_eq!(results[2], RejectionResult::Conflict(record.clone()));
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
    assert_eq!(
        ledger
            .state_counts()
            .await
            .expect("counts")
            .get(Side::Payer, PaymentState::Rejected),
        1
    );
}

pub(crate) async fn reserve_after_recorded_rejection_is_duplicate(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    ledger
        .record_rejections(&[rejection(1, 1)])
        .await
        .expect("record");
    let result = reserve_one(ledger.as_ref(), reserve(1, "a1", 5_000)).await;
    assert!(
        matches!(&result, ReserveResult::Duplicate(r) if r.state == PaymentState::Rejected),
        "{result:?}"
    );
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
}

pub(crate) async fn expired_reservations_lists_only_due_holds_earliest_first(
    backend: &dyn Backend,
) {
    let ledger = payer_with(backend, 50_000).await;
    // Paid at noon + 3s, + 1s, + 2s, + 10s: expiring in that order plus HOLD_MS.
    for (n, offset_ms) in [(1, 3_000), (2, 1_000), (3, 2_000), (4, 10_000)] {
        reserved(
            reserve_one(
                ledger.as_ref(),
                reserve_at(n, "a1", 100, NOON_MS + offset_ms),
            )
            .await,
        );
    }
    ledger.commit(&[pid(3)]).await.expect("commit");
    let now_ms = NOON_MS + HOLD_MS + 5_000;
    let due: Vec<PaymentId> = ledger
        .expired_reservations(now_ms, 10)
        .await
        .expect("list")
        .iter()
        .map(|r| r.payment_id)
        .collect();
    assert_eq!(due, vec![pid(2), pid(1)]);
    let first: Vec<PaymentId> = ledger
        .expired_reservations(now_ms, 1)
        .await
        .expect("list")
        .iter()
        .map(|r| r.payment_id)
        .collect();
    assert_eq!(first, vec![pid(2)]);
    // An expiry exactly at now is due.
    let at_expiry = ledger
        .expired_reservations(NOON_MS + 1_000 + HOLD_MS, 10)
        .await
        .expect("list");
    assert_eq!(at_expiry.len(), 1);
}

pub(crate) async fn commit_and_void_stamp_the_decision_time(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let held = ledger
        .reserve(&[reserve(1, "a1", 100), reserve(2, "a1", 100)])
        .await
        .expect("reserve");
    let held: Vec<PaymentRecord> = held.into_iter().map(reserved).collect();
    clock_past(held[1].updated_ms).await;
    let before_ms = wall_ms();
    let committed = applied(ledger.commit(&[pid(1)]).await.expect("commit"));
    let voided = applied(
        ledger
            .void(&[(pid(2), "payment.expired".into())])
            .await
            .expect("void"),
    );
    let after_ms = wall_ms();
    for (first, decided) in held.iter().zip([&committed[0], &voided[0]]) {
        let stored = ledger
            .payment(&decided.payment_id, Side::Payer)
            .await
            .expect("read payment");
        let stored = stored.expect("decided payment kept");
        assert_eq!(&stored, decided);
        assert!(
            (before_ms..=after_ms).contains(&stored.updated_ms),
            "{} not in {before_ms}..={after_ms}",
            stored.updated_ms
        );
        assert!(stored.updated_ms > first.updated_ms);
        assert_eq!(stored.created_ms, first.created_ms);
    }
}

/// Payer payments 1 to 6 decided at three moments, each later than the one before: 3
/// committed; then 1 voided; then 5 and 2 committed in one batch (one stamp). 4 stays
/// reserved, 6 is refused. Returns the decisions in the order `decided_since` owes them.
async fn decide_at_three_moments(ledger: &dyn Ledger) -> Vec<PaymentRecord> {
    let mut requests: Vec<_> = (1..=5).map(|n| reserve(n, "a1", 1_000)).collect();
    requests.push(reserve(6, "a1", 0));
    ledger.reserve(&requests).await.expect("reserve");
    let mut decided = applied(ledger.commit(&[pid(3)]).await.expect("commit 3"));
    clock_past(decided[0].updated_ms).await;
    decided.extend(applied(
        ledger
            .void(&[(pid(1), "payment.expired".into())])
            .await
            .expect("void 1"),
    ));
    clock_past(decided[1].updated_ms).await;
    let mut last = applied(ledger.commit(&[pid(5), pid(2)]).await.expect("commit 5, 2"));
    last.reverse();
    decided.extend(last);
    decided
}

pub(crate) async fn decided_since_lists_payer_decisions_oldest_update_first(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let decided = decide_at_three_moments(ledger.as_ref()).await;
    assert_eq!(ids(&decided), vec![pid(3), pid(1), pid(2), pid(5)]);
    assert_eq!(decided[2].updated_ms, decided[3].updated_ms);
    let listed = ledger
        .decided_since(decided[0].updated_ms, DECIDED_LIST_MAX)
        .await
        .expect("list");
    assert_eq!(listed, decided);
    assert_eq!(listed[1].state, PaymentState::Voided);
    assert_eq!(listed[1].reason_code.as_deref(), Some("payment.expired"));
}

pub(crate) async fn decided_since_starts_at_the_given_update_time(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let decided = decide_at_three_moments(ledger.as_ref()).await;
    let since = |since_ms: i64| {
        let ledger = Arc::clone(&ledger);
        async move {
            ids(&ledger
                .decided_since(since_ms, DECIDED_LIST_MAX)
                .await
                .expect("list"))
        }
    };
    let void_ms = decided[1].updated_ms;
    assert_eq!(since(void_ms).await, vec![pid(1), pid(2), pid(5)]);
    assert_eq!(since(void_ms + 1).await, vec![pid(2), pid(5)]);
    assert_eq!(
        since(decided[3].updated_ms + 1).await,
        Vec::<PaymentId>::new()
    );
    assert_eq!(since(i64::MIN).await, ids(&decided));
}

pub(crate) async fn decided_since_honours_the_limit(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let decided = decide_at_three_moments(ledger.as_ref()).await;
    for (limit, expected) in [(0, 0), (1, 1), (3, 3), (4, 4), (usize::MAX, 4)] {
        let listed = ledger.decided_since(0, limit).await.expect("list");
        assert_eq!(listed, decided[..expected], "limit {limit}");
    }
}

pub(crate) async fn decided_since_excludes_open_rejected_and_payee_records(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", 50_000, TIER4), ("b1", 0, TIER4)]).await;
    // Payer side: 1 stays reserved, 2 is refused by the ledger, 3 rejected before it, 4 is
    // committed.
    ledger
        .reserve(&[
            reserve(1, "a1", 1_000),
            reserve(2, "a1", 0),
            reserve(4, "a1", 1_000),
        ])
        .await
        .expect("reserve");
    ledger
        .record_rejections(&[rejection(3, 1)])
        .await
        .expect("reject");
    let committed = applied(ledger.commit(&[pid(4)]).await.expect("commit"));
    // Payee side of the same ledger, in every state, one of them (4) the payment just
    // committed: credited, reversed, tombstoned (voided), pending.
    ledger
        .credit_pending(&[
            credit(4, "b1", 1_000),
            credit(11, "b1", 1_000),
            credit(13, "b1", 1_000),
        ])
        .await
        .expect("credit");
    let voided = Finalization::Voided {
        reason_code: "payment.expired".into(),
    };
    ledger
        .finalize(&[
            (pid(4), Finalization::Completed),
            (pid(11), voided.clone()),
            (pid(12), voided),
        ])
        .await
        .expect("finalize");
    let counts = ledger.state_counts().await.expect("counts");
    assert_eq!(counts.get(Side::Payee, PaymentState::Voided), 1);
    assert_eq!(counts.total(), 8);
    let listed = ledger
        .decided_since(i64::MIN, DECIDED_LIST_MAX)
        .await
        .expect("list");
    assert_eq!(listed, committed);
}

pub(crate) async fn credit_pending_is_outside_balance(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    let results = ledger
        .credit_pending(&[credit(1, "b1", 4_000)])
        .await
        .expect("credit");
    let CreditResult::Pending(record) = &results[0] else {
        panic!("expected Pending, got {results:?}");
    };
    assert_eq!(record.side, Side::Payee);
    assert_eq!(record.state, PaymentState::PendingCredit);
    assert_eq!(
        record
            .counterparty
            .as_ref()
            .map(|p| p.institution_id.as_str()),
        Some(PAYER_OI)
    );
    assert_eq!(
        money(ledger.as_ref(), "b1").await,
        (10_000, 0, 10_000, 4_000)
    );
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 10_000);
    assert_eq!(
        ledger
            .pending_totals()
            .await
            .expect("pending")
            .pending_credit_fen,
        4_000
    );
}

pub(crate) async fn credit_duplicate_and_conflict_move_nothing(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    let mut altered = credit(1, "b1", 9_000);
    altered.digest = digest(1, 2);
    let results = ledger
        .credit_pending(&[credit(1, "b1", 4_000), credit(1, "b1", 4_000), altered])
        .await
        .expect("credit");
    let CreditResult::Pending(record) = &results[0] else {
        panic!("expected Pending, got {results:?}");
    };
    assert_eq!(results[1], CreditResult::Duplicate(record.clone()));
    assert_eq!(results[2], CreditResult::Conflict(record.clone()));
    assert_eq!(
        money(ledger.as_ref(), "b1").await,
        (10_000, 0, 10_000, 4_000)
    );
}

pub(crate) async fn credit_refuses_unknown_and_locked_wallet(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    ledger.set_locked("b1", true).await.expect("lock");
    let results = ledger
        .credit_pending(&[credit(1, "ghost", 100), credit(2, "b1", 100)])
        .await
        .expect("credit");
    assert_eq!(
        results,
        vec![
            CreditResult::Refused(LedgerRefusal::UnknownWallet),
            CreditResult::Refused(LedgerRefusal::WalletLocked)
        ]
    );
    let stored = ledger
        .payment(&pid(2), Side::Payee)
        .await
        .expect("read")
        .expect("recorded refusal");
    assert_eq!(stored.state, PaymentState::Rejected);
    assert_eq!(stored.reason_code.as_deref(), Some("ledger.wallet_locked"));
    assert_eq!(money(ledger.as_ref(), "b1").await, (10_000, 0, 10_000, 0));
}

pub(crate) async fn credit_refuses_over_balance_limit_counting_pending_credits(
    backend: &dyn Backend,
) {
    // Limit 1,000,000: balance 600,000 + pending 300,000 leaves room for exactly 100,000.
    let ledger = payee_with(backend, 600_000).await;
    let results = ledger
        .credit_pending(&[
            credit(1, "b1", 150_000),
            credit(2, "b1", 150_000),
            credit(3, "b1", 100_001),
            credit(4, "b1", 100_000),
        ])
        .await
        .expect("credit");
    assert!(matches!(results[0], CreditResult::Pending(_)));
    assert!(matches!(results[1], CreditResult::Pending(_)));
    assert_eq!(
        results[2],
        CreditResult::Refused(LedgerRefusal::BalanceLimit {
            limit_fen: 1_000_000
        })
    );
    assert!(
        matches!(results[3], CreditResult::Pending(_)),
        "{:?}",
        results[3]
    );
    assert_eq!(
        money(ledger.as_ref(), "b1").await,
        (600_000, 0, 600_000, 400_000)
    );
}

pub(crate) async fn finalize_completed_credits_payee_once(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    ledger
        .credit_pending(&[credit(1, "b1", 4_000)])
        .await
        .expect("credit");
    let results = ledger
        .finalize(&[
            (pid(1), Finalization::Completed),
            (pid(1), Finalization::Completed),
        ])
        .await
        .expect("finalize");
    let FinalizeResult::Credited(record) = &results[0] else {
        panic!("expected Credited, got {results:?}");
    };
    assert_eq!(record.state, PaymentState::Credited);
    assert_eq!(results[1], FinalizeResult::AlreadyFinal(record.clone()));
    assert_eq!(money(ledger.as_ref(), "b1").await, (14_000, 0, 14_000, 0));
    // A void arriving after completion changes nothing.
    let late_void = ledger
        .finalize(&[(
            pid(1),
            Finalization::Voided {
                reason_code: "payment.expired".into(),
            },
        )])
        .await
        .expect("finalize");
    assert_eq!(
        late_void,
        vec![FinalizeResult::AlreadyFinal(record.clone())]
    );
    assert_eq!(money(ledger.as_ref(), "b1").await, (14_000, 0, 14_000, 0));
}

pub(crate) async fn finalize_voided_reverses_pending_credit(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    ledger
        .credit_pending(&[credit(1, "b1", 4_000)])
        .await
        .expect("credit");
    let results = ledger
        .finalize(&[(
            pid(1),
            Finalization::Voided {
                reason_code: "payment.expired".into(),
            },
        )])
        .await
        .expect("finalize");
    let FinalizeResult::Reversed(record) = &results[0] else {
        panic!("expected Reversed, got {results:?}");
    };
    assert_eq!(record.state, PaymentState::Reversed);
    assert_eq!(record.reason_code.as_deref(), Some("payment.expired"));
    assert_eq!(money(ledger.as_ref(), "b1").await, (10_000, 0, 10_000, 0));
}

pub(crate) async fn void_before_clearing_leaves_tombstone_that_refuses_it(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    let results = ledger
        .finalize(&[(
            pid(1),
            Finalization::Voided {
                reason_code: "payment.expired".into(),
            },
        )])
        .await
        .expect("finalize");
    let FinalizeResult::Tombstoned(tombstone) = &results[0] else {
        panic!("expected Tombstoned, got {results:?}");
    };
    assert_eq!(tombstone.state, PaymentState::Voided);
    assert_eq!(tombstone.digest, None);
    let late = ledger
        .credit_pending(&[credit(1, "b1", 4_000)])
        .await
        .expect("credit");
    let CreditResult::AlreadyVoided(record) = &late[0] else {
        panic!("expected AlreadyVoided, got {late:?}");
    };
    assert_eq!(record.state, PaymentState::Voided);
    assert_eq!(record.digest, Some(digest(1, 1)));
    assert_eq!(record.reason_code.as_deref(), Some("payment.expired"));
    assert_eq!(money(ledger.as_ref(), "b1").await, (10_000, 0, 10_000, 0));
    let again = ledger
        .credit_pending(&[credit(1, "b1", 4_000)])
        .await
        .expect("credit");
    assert_eq!(again, vec![CreditResult::AlreadyVoided(record.clone())]);
    let void_again = ledger
        .finalize(&[(
            pid(1),
            Finalization::Voided {
                reason_code: "payment.expired".into(),
            },
        )])
        .await
        .expect("finalize");
    assert_eq!(
        void_again,
        vec![FinalizeResult::AlreadyFinal(record.clone())]
    );
}

pub(crate) async fn completion_of_unknown_payment_is_not_found(backend: &dyn Backend) {
    let ledger = payee_with(backend, 10_000).await;
    let results = ledger
        .finalize(&[(pid(1), Finalization::Completed)])
        .await
        .expect("finalize");
    assert_eq!(results, vec![FinalizeResult::NotFound]);
    assert_eq!(
        ledger.payment(&pid(1), Side::Payee).await.expect("read"),
        None
    );
}

pub(crate) async fn reapplied_batches_move_no_money(backend: &dyn Backend) {
    let payer = payer_with(backend, 100_000).await;
    let payee = payee_with(backend, 0).await;
    let reserves = [
        reserve(1, "a1", 10_000),
        reserve(2, "a1", 20_000),
        reserve(3, "a1", 30_000),
    ];
    let credits = [
        credit(1, "b1", 10_000),
        credit(2, "b1", 20_000),
        credit(3, "b1", 30_000),
    ];
    let voided = Finalization::Voided {
        reason_code: "payment.rejected".into(),
    };
    for round in 0..3 {
        payer.reserve(&reserves).await.expect("reserve");
        payee.credit_pending(&credits).await.expect("credit");
        payer.commit(&[pid(1), pid(2)]).await.expect("commit");
        payer
            .void(&[(pid(3), "payment.rejected".into())])
            .await
            .expect("void");
        payee
            .finalize(&[
                (pid(1), Finalization::Completed),
                (pid(2), Finalization::Completed),
                (pid(3), voided.clone()),
            ])
            .await
            .expect("finalize");
        assert_eq!(
            money(payer.as_ref(), "a1").await,
            (70_000, 0, 70_000, 0),
            "round {round}"
        );
        assert_eq!(
            money(payee.as_ref(), "b1").await,
            (30_000, 0, 30_000, 0),
            "round {round}"
        );
    }
    let counts = payee.state_counts().await.expect("counts");
    assert_eq!(counts.get(Side::Payee, PaymentState::Credited), 2);
    assert_eq!(counts.get(Side::Payee, PaymentState::Reversed), 1);
    payer.verify_integrity().await.expect("payer integrity");
    payee.verify_integrity().await.expect("payee integrity");
}

pub(crate) async fn oversized_batch_is_refused_whole(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let requests: Vec<_> = (0..=BATCH_ITEMS_MAX as u64)
        .map(|n| reserve(n, "a1", 1))
        .collect();
    let err = ledger.reserve(&requests).await.expect_err("too large");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
    assert_eq!(ledger.state_counts().await.expect("counts").total(), 0);
    assert_eq!(money(ledger.as_ref(), "a1").await, (50_000, 0, 50_000, 0));
}

pub(crate) async fn payer_and_payee_at_one_institution_keep_both_sides(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", 50_000, TIER4), ("a2", 0, TIER4)]).await;
    reserved(reserve_one(ledger.as_ref(), reserve(1, "a1", 5_000)).await);
    let mut incoming = credit(1, "a2", 5_000);
    incoming.payer.institution_id = PAYER_OI.into();
    let credited = ledger.credit_pending(&[incoming]).await.expect("credit");
    assert!(
        matches!(credited[0], CreditResult::Pending(_)),
        "{credited:?}"
    );
    ledger.commit(&[pid(1)]).await.expect("commit");
    ledger
        .finalize(&[(pid(1), Finalization::Completed)])
        .await
        .expect("finalize");
    assert_eq!(
        payer_record(ledger.as_ref(), 1).await.state,
        PaymentState::Committed
    );
    let payee_side = ledger
        .payment(&pid(1), Side::Payee)
        .await
        .expect("read")
        .expect("payee record");
    assert_eq!(payee_side.state, PaymentState::Credited);
    assert_eq!(money(ledger.as_ref(), "a1").await, (45_000, 0, 45_000, 0));
    assert_eq!(money(ledger.as_ref(), "a2").await, (5_000, 0, 5_000, 0));
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 50_000);
}

pub(crate) async fn state_counts_count_by_side_and_state(backend: &dyn Backend) {
    let ledger = backend.ledger(PAYER_OI).await;
    open(ledger.as_ref(), &[("a1", 50_000, TIER4), ("a2", 0, TIER4)]).await;
    ledger
        .reserve(&[
            reserve(1, "a1", 1_000),
            reserve(2, "a1", 1_000),
            reserve(3, "a1", 0),
        ])
        .await
        .expect("reserve");
    ledger.commit(&[pid(1)]).await.expect("commit");
    ledger
        .credit_pending(&[credit(7, "a2", 10)])
        .await
        .expect("credit");
    let counts = ledger.state_counts().await.expect("counts");
    assert_eq!(counts.get(Side::Payer, PaymentState::Committed), 1);
    assert_eq!(counts.get(Side::Payer, PaymentState::Reserved), 1);
    assert_eq!(counts.get(Side::Payer, PaymentState::Rejected), 1);
    assert_eq!(counts.get(Side::Payee, PaymentState::PendingCredit), 1);
    assert_eq!(counts.total(), 4);
}

pub(crate) async fn set_locked_and_set_limits_update_the_wallet(backend: &dyn Backend) {
    let ledger = payer_with(backend, 50_000).await;
    let locked = ledger
        .set_locked("a1", true)
        .await
        .expect("lock")
        .expect("wallet");
    assert!(locked.account.locked);
    let limits = WalletLimits {
        single_payment_limit_fen: 100,
        ..TIER4
    };
    let changed = ledger
        .set_limits("a1", limits)
        .await
        .expect("limits")
        .expect("wallet");
    assert_eq!(changed.account.limits, limits);
    let unlocked = ledger
        .set_locked("a1", false)
        .await
        .expect("unlock")
        .expect("wallet");
    assert!(!unlocked.account.locked);
    let over = reserve_one(ledger.as_ref(), reserve(1, "a1", 101)).await;
    assert_eq!(
        over,
        ReserveResult::Refused(LedgerRefusal::SinglePaymentLimit { limit_fen: 100 })
    );
    assert_eq!(ledger.set_locked("ghost", true).await.expect("lock"), None);
    assert_eq!(
        ledger.set_limits("ghost", TIER4).await.expect("limits"),
        None
    );
    let negative = WalletLimits {
        daily_limit_fen: -1,
        ..TIER4
    };
    let err = ledger
        .set_limits("a1", negative)
        .await
        .expect_err("negative");
    assert_eq!(err.kind(), LedgerErrorKind::InvalidInput);
}

pub(crate) async fn ledger_keeps_its_rows_when_reopened(backend: &dyn Backend) {
    let first = payer_with(backend, 50_000).await;
    let record = reserved(reserve_one(first.as_ref(), reserve(1, "a1", 12_000)).await);
    drop(first);
    let reopened = backend.ledger(PAYER_OI).await;
    assert_eq!(payer_record(reopened.as_ref(), 1).await, record);
    assert_eq!(
        money(reopened.as_ref(), "a1").await,
        (50_000, 12_000, 38_000, 0)
    );
    let again = reserve_one(reopened.as_ref(), reserve(1, "a1", 12_000)).await;
    assert_eq!(again, ReserveResult::Duplicate(record));
}

/// Wallets shared by the concurrent workers, and their opening balance.
const SHARED_WALLETS: [&str; 4] = ["w0", "w1", "w2", "w3"];
const SHARED_BALANCE_FEN: i64 = 200_000;
const WORKERS: u64 = 4;
const BATCHES_PER_WORKER: u64 = 12;
const BATCH_ITEMS: u64 = 32;

/// What one worker did: committed amounts per wallet, and its result counts.
#[derive(Debug, Default)]
struct WorkerTally {
    committed_fen: HashMap<String, i64>,
    reserved: u64,
    refused: u64,
}

pub(crate) async fn concurrent_batches_conserve_money_and_never_overdraw(backend: &dyn Backend) {
    let setup = backend.ledger(PAYER_OI).await;
    let wallets: Vec<_> = SHARED_WALLETS
        .iter()
        .map(|w| (*w, SHARED_BALANCE_FEN, UNLIMITED))
        .collect();
    open(setup.as_ref(), &wallets).await;
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        // Each worker has its own handle (its own connection), as separate processes would.
        let ledger = backend.ledger(PAYER_OI).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(worker + 1);
            let mut tally = WorkerTally::default();
            for batch in 0..BATCHES_PER_WORKER {
                let requests: Vec<_> = (0..BATCH_ITEMS)
                    .map(|i| {
                        let n = (worker << 32) | (batch << 16) | i;
                        let wallet = SHARED_WALLETS[rng.below(4) as usize];
                        reserve(n, wallet, 1 + rng.below(20_000) as i64)
                    })
                    .collect();
                let results = ledger.reserve(&requests).await.expect("reserve");
                let mut to_commit = Vec::new();
                let mut to_void = Vec::new();
                for (request, result) in requests.iter().zip(&results) {
                    match result {
                        ReserveResult::Reserved(_) => {
                            tally.reserved += 1;
                            if rng.below(2) == 0 {
                                to_commit.push(request.clone());
                            } else {
                                to_void.push((request.payment_id, "payment.rejected".to_owned()));
                            }
                        }
                        ReserveResult::Refused(LedgerRefusal::InsufficientFunds { .. }) => {
                            tally.refused += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                let ids: Vec<PaymentId> = to_commit.iter().map(|r| r.payment_id).collect();
                let committed = ledger.commit(&ids).await.expect("commit");
                for (request, result) in to_commit.iter().zip(&committed) {
                    assert!(matches!(result, Transition::Applied(_)), "{result:?}");
                    *tally
                        .committed_fen
                        .entry(request.payer_wallet.clone())
                        .or_default() += request.amount_fen;
                }
                let voided = ledger.void(&to_void).await.expect("void");
                assert!(voided.iter().all(|r| matches!(r, Transition::Applied(_))));
            }
            tally
        }));
    }
    let mut committed_fen: HashMap<String, i64> = HashMap::new();
    let (mut reserved_count, mut refused_count) = (0, 0);
    for task in tasks {
        let tally = task.await.expect("worker");
        reserved_count += tally.reserved;
        refused_count += tally.refused;
        for (wallet, amount) in tally.committed_fen {
            *committed_fen.entry(wallet).or_default() += amount;
        }
    }
    assert_eq!(
        reserved_count + refused_count,
        WORKERS * BATCHES_PER_WORKER * BATCH_ITEMS
    );
    let mut total_committed_fen = 0;
    for wallet in SHARED_WALLETS {
        let spent = committed_fen.get(wallet).copied().unwrap_or(0);
        total_committed_fen += spent;
        let (balance, held, available, _) = money(setup.as_ref(), wallet).await;
        assert_eq!(balance, SHARED_BALANCE_FEN - spent, "wallet {wallet}");
        assert_eq!(held, 0, "wallet {wallet}");
        assert!(available >= 0, "wallet {wallet} overdrawn: {available}");
    }
    assert_eq!(
        setup.total_balance_fen().await.expect("total"),
        SHARED_BALANCE_FEN * SHARED_WALLETS.len() as i64 - total_committed_fen
    );
    assert!(
        refused_count > 0,
        "the scenario should exhaust some wallets"
    );
    let counts = setup.state_counts().await.expect("counts");
    assert_eq!(
        counts.get(Side::Payer, PaymentState::Committed)
            + counts.get(Side::Payer, PaymentState::Voided),
        reserved_count
    );
    setup.verify_integrity().await.expect("integrity");
}

/// The audit's view of the wallets: each with its opening, its balance, its money in flight and
/// how many payments moved it, paged by wallet id.
pub(crate) async fn wallet_openings_page_balances_against_openings_and_moving_payments(
    backend: &dyn Backend,
) {
    let payer = payer_with(backend, 50_000).await;
    open(payer.as_ref(), &[("a2", 7, TIER4), ("a3", 0, TIER4)]).await;
    let payee = payee_with(backend, 100).await;
    reserved(reserve_one(payer.as_ref(), reserve(1, "a1", 1_000)).await);
    applied(payer.commit(&[pid(1)]).await.expect("commit"));
    reserved(reserve_one(payer.as_ref(), reserve(2, "a1", 300)).await);
    payee
        .credit_pending(&[credit(1, "b1", 1_000)])
        .await
        .expect("credit");
    payee
        .finalize(&[(pid(1), Finalization::Completed)])
        .await
        .expect("finalize");
    payee
        .credit_pending(&[credit(2, "b1", 300)])
        .await
        .expect("credit");

    let first = payer.wallet_openings(None, 2).await.expect("openings");
    let ids: Vec<&str> = first.iter().map(|w| w.wallet_id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    let a1 = &first[0];
    assert_eq!(
        (
            a1.opening_fen,
            a1.balance_fen,
            a1.held_fen,
            a1.pending_credit_fen
        ),
        (50_000, 49_000, 300, 0)
    );
    assert_eq!(a1.moving_payments, 1, "{a1:?}");
    assert!(!a1.offline);
    assert!(a1.opened_ms > 0);
    let rest = payer
        .wallet_openings(Some("a2"), 1_000)
        .await
        .expect("next page");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].wallet_id, "a3");
    assert!(
        payer
            .wallet_openings(Some("a3"), 1_000)
            .await
            .expect("past the end")
            .is_empty()
    );
    let b1: Vec<WalletOpening> = payee.wallet_openings(None, 10).await.expect("payee");
    assert_eq!(b1.len(), 1);
    assert_eq!(
        (
            b1[0].opening_fen,
            b1[0].balance_fen,
            b1[0].pending_credit_fen
        ),
        (100, 1_100, 300)
    );
    assert_eq!(b1[0].moving_payments, 1);
}
