//! One function per settlement behaviour; `ledger_suite!` runs each on every backend.

use dcpipe_connectors::ledger::{
    ClearingOutcome, ClearingRecord, ClosedWindow, LedgerErrorKind, SettlementConfig,
};

use crate::fixtures::pid;
use crate::harness::Backend;

/// Windows of one second keep the arithmetic readable: window k is [k s, k+1 s).
const CONFIG: SettlementConfig = SettlementConfig { window_ms: 1_000 };

fn clearing(
    n: u64,
    payer: &str,
    payee: &str,
    amount_fen: i64,
    decided_at_ms: i64,
) -> ClearingRecord {
    ClearingRecord {
        payment_id: pid(n),
        payer_institution: payer.into(),
        payee_institution: payee.into(),
        amount_fen,
        decided_at_ms,
    }
}

/// (institution, debit, credit, net, count) of each position, by institution.
fn positions(window: &ClosedWindow) -> Vec<(&str, i64, i64, i64, u64)> {
    window
        .positions
        .iter()
        .map(|p| {
            (
                p.institution_id.as_str(),
                p.debit_fen,
                p.credit_fen,
                p.net_fen,
                p.clearing_count,
            )
        })
        .collect()
}

fn net_sum(window: &ClosedWindow) -> i64 {
    window.positions.iter().map(|p| p.net_fen).sum()
}

pub(crate) async fn positions_sum_to_zero(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    let outcomes = store
        .record_clearings(
            &[
                clearing(1, "oi-a", "oi-b", 500, 5_100),
                clearing(2, "oi-b", "oi-c", 200, 5_200),
                clearing(3, "oi-c", "oi-a", 50, 5_999),
                clearing(4, "oi-a", "oi-a", 70, 5_500),
            ],
            6_000,
        )
        .await
        .expect("record");
    assert!(outcomes.iter().all(|o| *o
        == ClearingOutcome::Recorded {
            window_id: 5,
            late: false
        }));
    let closed = store.close_due_windows(6_000, 0).await.expect("close");
    assert_eq!(closed.len(), 1);
    let window = &closed[0];
    assert_eq!(
        (window.window_id, window.start_ms, window.end_ms),
        (5, 5_000, 6_000)
    );
    assert_eq!(window.clearing_count, 4);
    assert_eq!(
        positions(window),
        vec![
            ("oi-a", 570, 120, -450, 3),
            ("oi-b", 200, 500, 300, 2),
            ("oi-c", 50, 200, 150, 2),
        ]
    );
    assert_eq!(net_sum(window), 0);
}

pub(crate) async fn late_clearing_goes_to_first_open_window_and_is_counted(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    store
        .record_clearings(&[clearing(1, "oi-a", "oi-b", 500, 2_500)], 2_600)
        .await
        .expect("record");
    // Now 4.5 s with 0.5 s grace: windows 0 to 3 are due and close.
    let closed = store.close_due_windows(4_500, 500).await.expect("close");
    assert_eq!(
        closed.iter().map(|w| w.window_id).collect::<Vec<_>>(),
        vec![2]
    );
    let outcomes = store
        .record_clearings(
            &[
                clearing(2, "oi-b", "oi-a", 300, 2_900),
                clearing(3, "oi-a", "oi-b", 40, 4_200),
            ],
            4_600,
        )
        .await
        .expect("record");
    assert_eq!(
        outcomes,
        vec![
            ClearingOutcome::Recorded {
                window_id: 4,
                late: true
            },
            ClearingOutcome::Recorded {
                window_id: 4,
                late: false
            },
        ]
    );
    let closed = store.close_due_windows(5_000, 0).await.expect("close");
    assert_eq!(closed.len(), 1);
    let window = &closed[0];
    assert_eq!(window.window_id, 4);
    assert_eq!((window.late_count, window.late_amount_fen), (1, 300));
    assert_eq!(window.clearing_count, 2);
    assert_eq!(
        positions(window),
        vec![("oi-a", 40, 300, 260, 2), ("oi-b", 300, 40, -260, 2)]
    );
    // The closed window 2 did not change.
    let report = store
        .window_report(2)
        .await
        .expect("report")
        .expect("closed");
    assert_eq!(
        positions(&report),
        vec![("oi-a", 500, 0, -500, 1), ("oi-b", 0, 500, 500, 1)]
    );
    assert_eq!(report.late_count, 0);
}

pub(crate) async fn recording_a_clearing_again_is_a_no_op(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    let first = clearing(1, "oi-a", "oi-b", 500, 1_500);
    store
        .record_clearings(std::slice::from_ref(&first), 1_600)
        .await
        .expect("record");
    let again = store
        .record_clearings(&[first.clone(), first], 1_700)
        .await
        .expect("record again");
    assert_eq!(
        again,
        vec![
            ClearingOutcome::Duplicate { window_id: 1 },
            ClearingOutcome::Duplicate { window_id: 1 }
        ]
    );
    let closed = store.close_due_windows(2_000, 0).await.expect("close");
    assert_eq!(closed[0].clearing_count, 1);
    assert_eq!(
        positions(&closed[0]),
        vec![("oi-a", 500, 0, -500, 1), ("oi-b", 0, 500, 500, 1)]
    );
}

pub(crate) async fn clearing_with_other_content_is_a_conflict(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    store
        .record_clearings(&[clearing(1, "oi-a", "oi-b", 500, 1_500)], 1_600)
        .await
        .expect("record");
    let outcome = store
        .record_clearings(&[clearing(1, "oi-a", "oi-b", 501, 1_500)], 1_700)
        .await
        .expect("record");
    assert_eq!(outcome, vec![ClearingOutcome::Conflict { window_id: 1 }]);
    let closed = store.close_due_windows(2_000, 0).await.expect("close");
    assert_eq!(closed[0].positions[0].debit_fen, 500);
}

pub(crate) async fn malformed_clearing_is_refused(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    let outcomes = store
        .record_clearings(
            &[
                clearing(1, "oi-a", "oi-b", 0, 1_500),
                clearing(2, "", "oi-b", 10, 1_500),
            ],
            1_600,
        )
        .await
        .expect("record");
    assert_eq!(
        outcomes,
        vec![
            ClearingOutcome::Refused {
                reason_code: "settlement.invalid_amount"
            },
            ClearingOutcome::Refused {
                reason_code: "settlement.malformed_clearing"
            },
        ]
    );
    assert!(
        store
            .close_due_windows(2_000, 0)
            .await
            .expect("close")
            .is_empty()
    );
}

pub(crate) async fn windows_close_once_and_stay_readable(backend: &dyn Backend) {
    let store = backend.settlement(CONFIG).await;
    store
        .record_clearings(
            &[
                clearing(1, "oi-a", "oi-b", 500, 1_500),
                clearing(2, "oi-b", "oi-a", 100, 3_500),
            ],
            3_600,
        )
        .await
        .expect("record");
    let closed = store.close_due_windows(4_000, 0).await.expect("close");
    assert_eq!(
        closed.iter().map(|w| w.window_id).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(
        store
            .close_due_windows(4_000, 0)
            .await
            .expect("close")
            .is_empty()
    );
    assert!(
        store
            .close_due_windows(4_999, 0)
            .await
            .expect("close")
            .is_empty()
    );
    // A second handle (another central bank worker) sees the same closed windows.
    let other = backend.settlement(CONFIG).await;
    assert!(
        other
            .close_due_windows(4_500, 0)
            .await
            .expect("close")
            .is_empty()
    );
    for window in &closed {
        let report = other
            .window_report(window.window_id)
            .await
            .expect("report")
            .expect("closed");
        assert_eq!(&report, window);
        assert_eq!(net_sum(&report), 0);
    }
}

pub(crate) async fn open_window_has_no_report_and_empty_closed_window_has_empty_report(
    backend: &dyn Backend,
) {
    let store = backend.settlement(CONFIG).await;
    store
        .record_clearings(&[clearing(1, "oi-a", "oi-b", 500, 5_500)], 5_600)
        .await
        .expect("record");
    assert_eq!(store.window_report(5).await.expect("report"), None);
    store.close_due_windows(5_000, 0).await.expect("close");
    let empty = store
        .window_report(4)
        .await
        .expect("report")
        .expect("closed");
    assert_eq!(
        (empty.window_id, empty.start_ms, empty.end_ms),
        (4, 4_000, 5_000)
    );
    assert!(empty.positions.is_empty());
    assert_eq!(empty.clearing_count, 0);
    assert_eq!(store.window_report(5).await.expect("report"), None);
}

pub(crate) async fn reopening_with_another_window_length_is_refused(backend: &dyn Backend) {
    let _store = backend.settlement(CONFIG).await;
    let err = backend
        .try_settlement(SettlementConfig { window_ms: 2_000 })
        .await
        .expect_err("other window length");
    assert_eq!(err.kind(), LedgerErrorKind::Config);
}
