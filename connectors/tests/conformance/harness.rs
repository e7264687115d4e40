//! What a backend gives the scenarios, and the macro that runs every scenario on it.

use std::sync::Arc;

use async_trait::async_trait;
use dcpipe_connectors::bus::Bus;

/// One bus under test, with its server if it has one.
#[async_trait]
pub(crate) trait Harness: Send {
    /// A connected client; may be a new client on each call.
    async fn bus(&mut self) -> Arc<dyn Bus>;

    /// Stops and starts the broker, keeping its storage. The embedded bus has no broker: there
    /// it changes nothing, and the scenario still proves that nothing acknowledged is lost when
    /// the consumers are recreated.
    async fn restart(&mut self);

    /// Whether a second publish with the same `msg_id` inside the duplicate window is dropped
    /// (JetStream, embedded) rather than stored again (Kafka).
    fn dedups_by_msg_id(&self) -> bool;

    /// A client whose subjects hold at most `messages_max` messages and make publishers wait
    /// beyond that, on buses with publisher backpressure (embedded); `None` on the others.
    async fn capacity_bounded_bus(&mut self, messages_max: usize) -> Option<Arc<dyn Bus>> {
        let _ = messages_max;
        None
    }
}

/// Expands to one test per scenario, each on a harness made by `$make` (an expression that may
/// `.await`): `conformance_suite!(NatsHarness::start().await);`.
macro_rules! conformance_suite {
    ($make:expr) => {
        conformance_suite!(@each $make;
            round_trip,
            competing_consumers_split_the_load,
            unacked_message_is_redelivered_after_ack_wait,
            nak_gives_redelivery,
            duplicate_msg_id_is_dropped,
            replay_from_time_returns_exactly_the_messages_at_or_after_it,
            replay_until_time_stops_before_it,
            replay_of_a_subject_without_records_is_empty,
            replay_from_offset_or_beginning_returns_the_range_in_order,
            follow_reads_every_record_then_new_ones,
            follow_from_a_position_or_a_time_starts_there,
            delete_subject_removes_it_with_its_records,
            order_per_key_is_kept,
            slow_consumer_applies_backpressure,
            broker_restart_loses_nothing_acknowledged,
            max_deliver_is_honoured,
            dead_letter_carries_stage_and_reason,
            payload_over_the_limit_is_rejected,
            header_no_bus_can_carry_is_rejected,
            describe_reports_what_ensure_created,
        );
    };
    (@each $make:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let mut harness = $make;
                crate::scenarios::$scenario(&mut harness).await;
            }
        )+
    };
}
