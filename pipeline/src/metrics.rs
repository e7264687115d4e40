//! The help text of every metric the flows emit, so that each family a scrape shows says what
//! it counts (`# HELP`). The names are used where the events happen; this is their catalogue.

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::pki::{
    METRIC_CERTIFICATE_SIGNATURE_CHECKS, METRIC_CHAIN_CACHE_HITS, METRIC_CHAIN_CACHE_MISSES,
    METRIC_CHAIN_REJECTIONS,
};

/// Histogram: time from a payment's envelope (when it was paid) to its final decision by the
/// payer's institution, by `status` (`completed`, `rejected`).
pub const PAYMENT_DECISION_SECONDS: &str = "dcpipe_payment_decision_seconds";

/// Gauge: reservations the payer's institution's last expiry sweep found past their expiry, by
/// `institution` (at most the sweep's limit; the sweep voids them).
pub const PAYMENTS_HELD_PAST_EXPIRY: &str = "dcpipe_payments_held_past_expiry";

/// Gauge: when the expiry sweep of the payer's institution last ran to its end (Unix seconds,
/// the stage's clock), by `institution`.
pub const EXPIRY_SWEEP_TIMESTAMP_SECONDS: &str = "dcpipe_payments_expiry_sweep_timestamp_seconds";

/// Gauge: when settlement last closed its due windows (Unix seconds, the stage's clock).
pub const SETTLEMENT_CLOSER_TIMESTAMP_SECONDS: &str = "dcpipe_settlement_closer_timestamp_seconds";

/// Gauge: each institution's net position in the last settlement window closed, in fen
/// (positive: it receives), by `institution`.
pub const SETTLEMENT_NET_POSITION_FEN: &str = "dcpipe_settlement_net_position_fen";

/// Gauge: how long after its end the last settlement window closed, in seconds (the grace,
/// plus any delay of the closing itself).
pub const SETTLEMENT_CLOSE_DELAY_SECONDS: &str = "dcpipe_settlement_close_delay_seconds";

/// Registers the help text and unit of every flow metric with the installed recorder. Call it
/// once after installing the recorder; calling it again is harmless.
pub fn describe() {
    describe_histogram!(
        "dcpipe_stage_batch_seconds",
        Unit::Seconds,
        "Time for a stage member to decide, publish and settle one batch."
    );
    describe_counter!(
        "dcpipe_stage_messages_total",
        Unit::Count,
        "Messages a stage settled, by verdict (done or dead_letter)."
    );
    describe_counter!(
        "dcpipe_stage_failures_total",
        Unit::Count,
        "Stage failures, by kind (transient, item, fatal)."
    );
    describe_counter!(
        "dcpipe_dead_letters_total",
        Unit::Count,
        "Messages dead-lettered, by stage and reason code."
    );
    describe_counter!(
        "dcpipe_contradictions_total",
        Unit::Count,
        "Contradictions between institutions met (also dead-lettered), by stage and reason code."
    );
    describe_histogram!(
        PAYMENT_DECISION_SECONDS,
        Unit::Seconds,
        "Time from a payment's envelope to its final decision, by status."
    );
    describe_counter!(
        "dcpipe_payments_completed_total",
        Unit::Count,
        "Payments completed by the payer's institution."
    );
    describe_counter!(
        "dcpipe_payments_rejected_total",
        Unit::Count,
        "Payments rejected by the payer's institution, by reason code."
    );
    describe_counter!(
        "dcpipe_payments_expired_total",
        Unit::Count,
        "Reservations voided because the payee's institution did not answer in time."
    );
    describe_counter!(
        "dcpipe_payments_duplicates_total",
        Unit::Count,
        "Envelopes submitted again and answered with their first outcome."
    );
    describe_counter!(
        "dcpipe_payments_redelivered_total",
        Unit::Count,
        "Submissions the bus delivered again (an ack lost, a member stopped), answered under \
         their first answer's message id: not resubmissions."
    );
    describe_counter!(
        "dcpipe_payments_finalized_total",
        Unit::Count,
        "Final outcomes applied by the payee's institution, by result."
    );
    describe_gauge!(
        PAYMENTS_HELD_PAST_EXPIRY,
        Unit::Count,
        "Reservations the last expiry sweep found past their expiry (and voided)."
    );
    describe_gauge!(
        EXPIRY_SWEEP_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the expiry sweep last ran to its end (Unix time)."
    );
    describe_gauge!(
        SETTLEMENT_CLOSER_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When settlement last closed its due windows (Unix time)."
    );
    describe_gauge!(
        SETTLEMENT_NET_POSITION_FEN,
        "Net position of each institution in the last settlement window closed, in fen."
    );
    describe_gauge!(
        SETTLEMENT_CLOSE_DELAY_SECONDS,
        Unit::Seconds,
        "How long after its end the last settlement window closed."
    );
    describe_counter!(
        "dcpipe_settlement_clearings_total",
        Unit::Count,
        "Clearings recorded by settlement, by whether they came after their window closed."
    );
    describe_counter!(
        "dcpipe_pki_revocations_applied_total",
        Unit::Count,
        "Certificate serials added to this process's revocation set."
    );
    describe_counter!(
        "dcpipe_pki_revocation_updates_refused_total",
        Unit::Count,
        "Revocation updates refused (and dead-lettered), by reason code."
    );
    describe_counter!(
        METRIC_CHAIN_REJECTIONS,
        Unit::Count,
        "Certificate chains rejected, by reason code."
    );
    describe_counter!(
        METRIC_CERTIFICATE_SIGNATURE_CHECKS,
        Unit::Count,
        "Certificate signatures verified (chain cache misses)."
    );
    describe_counter!(
        METRIC_CHAIN_CACHE_HITS,
        Unit::Count,
        "Chain verifications answered from the cache."
    );
    describe_counter!(
        METRIC_CHAIN_CACHE_MISSES,
        Unit::Count,
        "Chain verifications that had to check signatures."
    );
}
