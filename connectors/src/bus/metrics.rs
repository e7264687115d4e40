//! Metric names and handles every bus emits, so that one dashboard reads the same series
//! whichever bus carries the flow.
//!
//! Metrics go through the `metrics` facade: the binary installs the Prometheus recorder at
//! start-up, before any bus is created, because [`SubjectMetrics`] registers its handles once
//! (per subject) and increments them on the hot path without looking names up again.

use ::metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

use super::BusKind;

/// Counter: messages stored by the bus (duplicates dropped by `msg_id` are not counted).
pub const PUBLISHED_TOTAL: &str = "dcpipe_bus_published_total";
/// Counter: publishes the bus recognised as duplicates of an earlier `msg_id` and did not store.
pub const DUPLICATES_TOTAL: &str = "dcpipe_bus_duplicates_total";
/// Counter: deliveries handed to consumers, first deliveries and redeliveries alike.
pub const DELIVERED_TOTAL: &str = "dcpipe_bus_delivered_total";
/// Counter: deliveries with a delivery count above 1 (also counted in [`DELIVERED_TOTAL`]).
pub const REDELIVERED_TOTAL: &str = "dcpipe_bus_redelivered_total";
/// Counter: deliveries acknowledged by consumers.
pub const ACKED_TOTAL: &str = "dcpipe_bus_acked_total";
/// Counter: deliveries given back for redelivery by consumers.
pub const NAKED_TOTAL: &str = "dcpipe_bus_naked_total";
/// Counter: messages a group stopped redelivering because they reached `max_deliver`.
pub const EXHAUSTED_TOTAL: &str = "dcpipe_bus_exhausted_total";
/// Counter: publishes that had to wait for room because the subject was at capacity.
pub const PUBLISH_WAITS_TOTAL: &str = "dcpipe_bus_publish_waits_total";
/// Gauge: messages of the subject not yet settled by its slowest consumer group.
pub const BACKLOG: &str = "dcpipe_bus_backlog";

/// Label: which bus (`embedded`, `nats`, `kafka`; see [`BusKind`]'s `Display`).
pub const LABEL_BUS: &str = "bus";
/// Label: the subject (NATS subject or Kafka topic).
pub const LABEL_SUBJECT: &str = "subject";

/// Registers the help text and unit of every bus metric with the installed recorder. Call it
/// once after installing the recorder; calling it again is harmless.
pub fn describe() {
    describe_counter!(
        PUBLISHED_TOTAL,
        Unit::Count,
        "Messages stored by the bus (duplicates excluded)."
    );
    describe_counter!(
        DUPLICATES_TOTAL,
        Unit::Count,
        "Publishes dropped as duplicates of an earlier msg_id."
    );
    describe_counter!(
        DELIVERED_TOTAL,
        Unit::Count,
        "Deliveries handed to consumers, redeliveries included."
    );
    describe_counter!(
        REDELIVERED_TOTAL,
        Unit::Count,
        "Deliveries with a delivery count above 1."
    );
    describe_counter!(ACKED_TOTAL, Unit::Count, "Deliveries acknowledged.");
    describe_counter!(
        NAKED_TOTAL,
        Unit::Count,
        "Deliveries given back for redelivery."
    );
    describe_counter!(
        EXHAUSTED_TOTAL,
        Unit::Count,
        "Messages no longer redelivered because they reached max_deliver."
    );
    describe_counter!(
        PUBLISH_WAITS_TOTAL,
        Unit::Count,
        "Publishes that waited for room in a subject at capacity."
    );
    describe_gauge!(
        BACKLOG,
        Unit::Count,
        "Messages not yet settled by the slowest consumer group of the subject."
    );
}

/// The handles of one subject on one bus, registered once and cheap to increment.
#[derive(Debug, Clone)]
pub struct SubjectMetrics {
    /// [`PUBLISHED_TOTAL`].
    pub published: Counter,
    /// [`DUPLICATES_TOTAL`].
    pub duplicates: Counter,
    /// [`DELIVERED_TOTAL`].
    pub delivered: Counter,
    /// [`REDELIVERED_TOTAL`].
    pub redelivered: Counter,
    /// [`ACKED_TOTAL`].
    pub acked: Counter,
    /// [`NAKED_TOTAL`].
    pub naked: Counter,
    /// [`EXHAUSTED_TOTAL`].
    pub exhausted: Counter,
    /// [`PUBLISH_WAITS_TOTAL`].
    pub publish_waits: Counter,
    /// [`BACKLOG`].
    pub backlog: Gauge,
}

impl SubjectMetrics {
    /// Registers the handles of `subject` on `bus` with the installed recorder (no-op handles
    /// when none is installed).
    pub fn new(bus: BusKind, subject: &str) -> Self {
        let bus = bus.to_string();
        let subject = subject.to_owned();
        macro_rules! labelled {
            ($kind:ident, $name:expr) => {
                $kind!($name, LABEL_BUS => bus.clone(), LABEL_SUBJECT => subject.clone())
            };
        }
        SubjectMetrics {
            published: labelled!(counter, PUBLISHED_TOTAL),
            duplicates: labelled!(counter, DUPLICATES_TOTAL),
            delivered: labelled!(counter, DELIVERED_TOTAL),
            redelivered: labelled!(counter, REDELIVERED_TOTAL),
            acked: labelled!(counter, ACKED_TOTAL),
            naked: labelled!(counter, NAKED_TOTAL),
            exhausted: labelled!(counter, EXHAUSTED_TOTAL),
            publish_waits: labelled!(counter, PUBLISH_WAITS_TOTAL),
            backlog: labelled!(gauge, BACKLOG),
        }
    }

    /// Counts one delivery: in [`DELIVERED_TOTAL`], and in [`REDELIVERED_TOTAL`] when it is
    /// not the first.
    pub fn record_delivery(&self, delivery_count: u32) {
        self.delivered.increment(1);
        if delivery_count > 1 {
            self.redelivered.increment(1);
        }
    }

    /// Sets the backlog gauge to `messages`.
    pub fn set_backlog(&self, messages: u64) {
        // A backlog beyond 2^53 messages cannot happen; the cast is exact below that.
        self.backlog.set(messages as f64);
    }
}
