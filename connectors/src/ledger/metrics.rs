//! Metric names every ledger emits, so that one dashboard reads the same series whichever
//! database holds the ledger.
//!
//! Metrics go through the `metrics` facade (the binary installs the Prometheus recorder). They
//! are recorded once per batch, not per item, so they cost nothing measurable on the hot path.

use std::time::Duration;

use ::metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use super::error::LedgerError;

/// Counter: batches run, by backend, operation and outcome (`ok` or the error's code).
pub const BATCHES_TOTAL: &str = "dcpipe_ledger_batches_total";
/// Counter: items in batches that committed, by backend and operation.
pub const ITEMS_TOTAL: &str = "dcpipe_ledger_items_total";
/// Histogram: time to run one batch, retries included, by backend and operation.
pub const BATCH_SECONDS: &str = "dcpipe_ledger_batch_seconds";
/// Counter: transactions run again after a deadlock, serialization failure or racing insert.
pub const RETRIES_TOTAL: &str = "dcpipe_ledger_retries_total";

/// Counter: transactions that committed ledger batches together (group commit), by backend.
pub const COMMITS_TOTAL: &str = "dcpipe_ledger_commits_total";
/// Histogram: ledger batches per committed transaction, by backend.
pub const REQUESTS_PER_COMMIT: &str = "dcpipe_ledger_requests_per_commit";

/// Label: which database (`sqlite`, `postgres`).
pub const LABEL_BACKEND: &str = "backend";
/// Label: which operation (`reserve`, `commit`, …).
pub const LABEL_OP: &str = "op";
/// Label: `ok`, or the error's stable code.
pub const LABEL_OUTCOME: &str = "outcome";

/// Registers the help text and unit of every ledger metric with the installed recorder. Call
/// it once after installing the recorder; calling it again is harmless.
pub fn describe() {
    describe_counter!(
        BATCHES_TOTAL,
        Unit::Count,
        "Ledger batches run, by outcome."
    );
    describe_counter!(
        ITEMS_TOTAL,
        Unit::Count,
        "Items of committed ledger batches."
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time to run one ledger batch, retries included."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Ledger transactions retried after a conflict with a concurrent one."
    );
    describe_counter!(
        COMMITS_TOTAL,
        Unit::Count,
        "Transactions that committed ledger batches together."
    );
    describe_histogram!(
        REQUESTS_PER_COMMIT,
        Unit::Count,
        "Ledger batches committed per transaction."
    );
}

/// Records one batch of `items` items of `op` on `backend` that took `elapsed`.
pub(crate) fn record_batch<T>(
    backend: &'static str,
    op: &'static str,
    items: usize,
    elapsed: Duration,
    result: &Result<T, LedgerError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.reason_code(),
    };
    counter!(BATCHES_TOTAL, LABEL_BACKEND => backend, LABEL_OP => op, LABEL_OUTCOME => outcome)
        .increment(1);
    if result.is_ok() {
        counter!(ITEMS_TOTAL, LABEL_BACKEND => backend, LABEL_OP => op).increment(items as u64);
    }
    histogram!(BATCH_SECONDS, LABEL_BACKEND => backend, LABEL_OP => op)
        .record(elapsed.as_secs_f64());
}

/// Records one retried transaction on `backend`.
pub(crate) fn record_retry(backend: &'static str) {
    counter!(RETRIES_TOTAL, LABEL_BACKEND => backend).increment(1);
}

/// Records one transaction on `backend` that committed `requests` batches together.
pub(crate) fn record_commit(backend: &'static str, requests: usize) {
    counter!(COMMITS_TOTAL, LABEL_BACKEND => backend).increment(1);
    histogram!(REQUESTS_PER_COMMIT, LABEL_BACKEND => backend).record(requests as f64);
}
