//! One bus interface, three buses.
//!
//! Workers see only [`Bus`], [`Consumer`] and [`Delivery`]. A bus is chosen by URL
//! (see [`BusUrl`]): `embedded`, `nats://host:port`, `kafka://host:port[,host:port…]`.
//!
//! Semantics every implementation honours (the conformance suite in
//! `connectors/tests/conformance/` proves them on each bus):
//! - **at least once**: a delivery that is not acked within `ack_wait` is delivered again,
//!   up to `max_deliver` times; [`Delivery::nak`] asks for redelivery after a delay;
//! - **competing consumers**: consumers created with the same `group` on the same subject
//!   share its messages; each message goes to one of them at a time;
//! - **dedup**: a message published twice with the same `msg_id` inside the duplicate window
//!   is stored once where the bus can do it (JetStream, embedded). Kafka's idempotent producer
//!   only removes its own retry duplicates; later stages stay idempotent by business id;
//! - **order per key**: messages with the same key are delivered in publish order;
//! - **replay**: a subject can be read again from a position or from a time, without a group;
//! - **bounded memory**: a consumer holds at most `max_in_flight` unacked deliveries; the
//!   embedded bus makes publishers wait when a subject's backlog reaches its capacity.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub mod bench;
mod embedded;
mod error;
#[cfg(feature = "kafka")]
mod kafka;
pub mod metrics;
mod namespace;
mod nats;
mod url;

use std::sync::Arc;

pub use embedded::{EmbeddedBus, EmbeddedConfig, EmbeddedSubjectStats};
pub use error::{BusError, BusErrorKind};
#[cfg(feature = "kafka")]
pub use kafka::KafkaBus;
pub use namespace::NamespacedBus;
pub use nats::NatsBus;
pub use url::{BusUrl, KafkaOptions, NatsOptions};

/// Everything needed to reach a bus besides its URL.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// TLS and credentials for NATS.
    pub nats: NatsOptions,
    /// librdkafka properties for Kafka (TLS, SASL…).
    pub kafka: KafkaOptions,
    /// Limits of the embedded bus.
    pub embedded: EmbeddedConfig,
}

/// Connects to the bus named by `url`. For [`BusUrl::Embedded`] this creates a new in-process
/// bus: everything that should talk over it must share the returned handle.
pub async fn connect(url: &BusUrl, options: &BusOptions) -> Result<Arc<dyn Bus>, BusError> {
    Ok(match url {
        BusUrl::Embedded => Arc::new(EmbeddedBus::new(options.embedded.clone())),
        BusUrl::Nats(servers) => Arc::new(NatsBus::connect(servers, &options.nats).await?),
        #[cfg(feature = "kafka")]
        BusUrl::Kafka(servers) => Arc::new(KafkaBus::connect(servers, &options.kafka).await?),
        #[cfg(not(feature = "kafka"))]
        BusUrl::Kafka(_) => {
            return Err(BusError::new(
                BusErrorKind::Config,
                "this build of dcpipe has no Kafka bus (the connectors' `kafka` feature is off)",
            ));
        }
    })
}

/// Header names dcpipe sets on every message it publishes.
pub mod header {
    /// The message id used for dedup (also sent as `Nats-Msg-Id` on JetStream).
    pub const MSG_ID: &str = "dcpipe-msg-id";
    /// On a dead letter: the stage that gave up on the message.
    pub const DEAD_LETTER_STAGE: &str = "dcpipe-dead-letter-stage";
    /// On a dead letter: the stable reason code.
    pub const DEAD_LETTER_REASON: &str = "dcpipe-dead-letter-reason";
    /// On a dead letter: the subject the original message was consumed from.
    pub const DEAD_LETTER_SUBJECT: &str = "dcpipe-dead-letter-subject";
}

/// Ordered list of message headers (name, value). Names are case-sensitive.
pub type Headers = Vec<(String, String)>;

/// Largest payload any bus accepts, in bytes. Larger publishes fail with
/// [`BusErrorKind::MessageTooLarge`] before reaching the broker.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

/// Which implementation is behind a [`Bus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusKind {
    /// In-process bus: the default for the demo and fast tests.
    Embedded,
    /// NATS JetStream.
    Nats,
    /// Kafka protocol.
    Kafka,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Embedded => "embedded",
            BusKind::Nats => "nats",
            BusKind::Kafka => "kafka",
        })
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject (NATS) or topic (Kafka): the same name on every bus, e.g. `txn.submit.oi01`.
    pub subject: String,
    /// The encoded message (Confluent-framed Avro for everything dcpipe publishes).
    pub payload: Bytes,
    /// Ordering and partitioning key: messages with the same key keep their order.
    pub key: Option<Bytes>,
    /// Dedup id: a second publish with the same id inside the duplicate window is dropped
    /// where the bus supports it.
    pub msg_id: Option<String>,
    /// Extra headers.
    pub headers: Headers,
}

impl Outgoing {
    /// A message with only a subject and a payload.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Outgoing {
            subject: subject.into(),
            payload: payload.into(),
            key: None,
            msg_id: None,
            headers: Vec::new(),
        }
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the dedup id.
    pub fn with_msg_id(mut self, msg_id: impl Into<String>) -> Self {
        self.msg_id = Some(msg_id.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the bus answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Where the message was stored.
    pub position: Position,
    /// True when the bus recognised the `msg_id` as a duplicate and did not store it again.
    pub duplicate: bool,
}

/// Where a message sits in a subject: the stream sequence (JetStream, embedded; partition 0)
/// or the partition and offset (Kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Kafka partition; 0 on the other buses.
    pub partition: u32,
    /// JetStream stream sequence (starts at 1), embedded sequence (starts at 1), or Kafka offset
    /// (starts at 0).
    pub offset: u64,
}

/// Stream or topic layout for one subject: created by [`Bus::ensure_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSpec {
    /// The subject, e.g. `txn.submit.oi01`.
    pub subject: String,
    /// Kafka partitions (the other buses keep one ordered log per subject).
    pub partitions: u32,
}

impl SubjectSpec {
    /// A subject with [`SubjectSpec::PARTITIONS_DEFAULT`] partitions.
    pub fn new(subject: impl Into<String>) -> Self {
        SubjectSpec {
            subject: subject.into(),
            partitions: Self::PARTITIONS_DEFAULT,
        }
    }

    /// Partitions of a Kafka topic unless configured otherwise.
    pub const PARTITIONS_DEFAULT: u32 = 4;

    /// Sets the partition count.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }
}

/// How a subject is stored on a bus: what [`Bus::describe_subject`] reads back and
/// [`Bus::planned_layout`] would create. Provisioning compares the two ([`layout_drift`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectLayout {
    /// What holds the subject: the JetStream stream (`TXN`), the Kafka topic, the embedded
    /// subject.
    pub holder: String,
    /// Whether the holder takes the subject (a JetStream stream whose subjects do not include
    /// `family.>` exists but does not).
    pub holds_subject: bool,
    /// Kafka partitions; 1 on the other buses.
    pub partitions: u32,
    /// Copies kept by the brokers (JetStream replicas, Kafka replication factor); 1 embedded.
    pub replicas: u32,
    /// How long messages are kept; `None` where the bus does not say (Kafka topics keep the
    /// broker's retention, the embedded bus keeps a bounded count).
    pub max_age: Option<Duration>,
    /// Storage (`file` or `memory` on JetStream); `None` where it is not a choice.
    pub storage: Option<String>,
    /// JetStream's duplicate window; `None` on the other buses.
    pub duplicate_window: Option<Duration>,
}

/// How `found` differs from `planned`, one readable line per difference (`replicas 1,
/// configured 3`); empty when they match. Fields the bus does not report (`None` in `found`)
/// are not compared.
pub fn layout_drift(planned: &SubjectLayout, found: &SubjectLayout) -> Vec<String> {
    let mut drift = Vec::new();
    if !found.holds_subject {
        drift.push(format!("{} does not hold the subject", found.holder));
    }
    if found.holder != planned.holder {
        drift.push(format!(
            "held by {}, configured {}",
            found.holder, planned.holder
        ));
    }
    if found.partitions != planned.partitions {
        drift.push(format!(
            "partitions {}, configured {}",
            found.partitions, planned.partitions
        ));
    }
    if found.replicas != planned.replicas {
        drift.push(format!(
            "replicas {}, configured {}",
            found.replicas, planned.replicas
        ));
    }
    if let Some(age) = found.max_age
        && Some(age) != planned.max_age
    {
        drift.push(format!(
            "max age {}, configured {}",
            describe_duration(Some(age)),
            describe_duration(planned.max_age)
        ));
    }
    if let Some(storage) = &found.storage
        && Some(storage) != planned.storage.as_ref()
    {
        drift.push(format!(
            "storage {storage}, configured {}",
            planned.storage.as_deref().unwrap_or("unset")
        ));
    }
    if let Some(window) = found.duplicate_window
        && Some(window) != planned.duplicate_window
    {
        drift.push(format!(
            "duplicate window {}, configured {}",
            describe_duration(Some(window)),
            describe_duration(planned.duplicate_window)
        ));
    }
    drift
}

/// A duration as an operator writes it: `30d`, `72h`, `2m`, `90s`, `1500ms`; `unlimited` for
/// none or zero.
pub fn describe_duration(duration: Option<Duration>) -> String {
    let Some(duration) = duration.filter(|d| !d.is_zero()) else {
        return "unlimited".to_owned();
    };
    if duration.subsec_millis() != 0 || duration.as_secs() == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let seconds = duration.as_secs();
    for (unit, per) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds % per == 0 {
            return format!("{}{unit}", seconds / per);
        }
    }
    format!("{seconds}s")
}

/// Where a new consumer group starts when it has no stored position yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// From the first retained message.
    #[default]
    Earliest,
    /// Only messages published after the group was created.
    Latest,
}

/// A member of a competing consumer group on one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The subject to consume.
    pub subject: String,
    /// Group name: members of the same group share the messages (JetStream durable name,
    /// Kafka `group.id`).
    pub group: String,
    /// A delivery not acked within this time is delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one message at most; after that the bus stops redelivering it and the
    /// caller is expected to dead-letter it (see [`Delivery::delivery_count`]).
    pub max_deliver: u32,
    /// Unacked deliveries this consumer may hold at once; `fetch` waits for acks beyond it.
    pub max_in_flight: usize,
    /// Where a new group starts.
    pub start: StartAt,
}

impl ConsumerConfig {
    /// Default ack deadline.
    pub const ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);
    /// Default delivery limit.
    pub const MAX_DELIVER_DEFAULT: u32 = 5;
    /// Default in-flight limit.
    pub const MAX_IN_FLIGHT_DEFAULT: usize = 1024;

    /// A group member with the default limits, starting at the earliest message.
    pub fn new(subject: impl Into<String>, group: impl Into<String>) -> Self {
        ConsumerConfig {
            subject: subject.into(),
            group: group.into(),
            ack_wait: Self::ACK_WAIT_DEFAULT,
            max_deliver: Self::MAX_DELIVER_DEFAULT,
            max_in_flight: Self::MAX_IN_FLIGHT_DEFAULT,
            start: StartAt::Earliest,
        }
    }
}

/// Where a replay begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first retained message.
    Beginning,
    /// A stream sequence (JetStream, embedded) or an offset applied to every partition (Kafka).
    Offset(u64),
    /// The first message whose bus timestamp is at or after this time (ms since the epoch).
    TimeMs(i64),
}

/// A replay of one subject over a range, outside any consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The subject to read. On JetStream it may be a pattern (see [`validate_subject_pattern`]):
    /// the subjects of one family that match it, in stream order.
    pub subject: String,
    /// Start of the range (inclusive).
    pub from: ReplayFrom,
    /// End of the range by time (exclusive, ms since the epoch); `None` reads up to the end of
    /// the subject as it was when the replay began.
    pub until_ms: Option<i64>,
}

/// A stored message read back by a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Subject it was published on.
    pub subject: String,
    /// The payload as published.
    pub payload: Bytes,
    /// Ordering key, if any.
    pub key: Option<Bytes>,
    /// Dedup id, if any.
    pub msg_id: Option<String>,
    /// Headers as published (without bus-internal ones).
    pub headers: Headers,
    /// Where it is stored.
    pub position: Position,
    /// When the bus stored it (ms since the epoch).
    pub timestamp_ms: i64,
}

/// A message handed to a consumer; ack it when its effects are durable.
pub struct Delivery {
    /// The stored message.
    pub record: Record,
    /// 1 on the first delivery, then 2, 3… up to `max_deliver`.
    pub delivery_count: u32,
    acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.record.subject)
            .field("position", &self.record.position)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Builds a delivery; for bus implementations.
    pub fn new(record: Record, delivery_count: u32, acker: Box<dyn Acker>) -> Self {
        Delivery {
            record,
            delivery_count,
            acker,
        }
    }

    /// Confirms the message was processed: it is not delivered to this group again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Gives the message back for redelivery after `delay`.
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.acker.nak(delay).await
    }
}

/// How a bus implementation settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// See [`Delivery::ack`].
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// See [`Delivery::nak`].
    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BusError>;
}

/// A member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `timeout` for up to `max` deliveries; returns fewer, possibly none, when the
    /// time is up. Never returns more unacked deliveries than `max_in_flight` allows in total.
    async fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError>;
}

/// Reads a replay range in order (per partition on Kafka).
#[async_trait]
pub trait ReplayStream: Send {
    /// Up to `max` next records; an empty vector means the range is exhausted.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError>;

    /// The partitions whose part of the range is not read to its end yet, when the stream
    /// knows them (records come in order within a partition, but partitions interleave as
    /// the broker answers: a reader merging by time waits for each of these to show its next
    /// record). `None` when the stream does not say (a subject of one partition). Asked before
    /// each record a merge takes, so it is a view, not a new list.
    fn open_partitions(&self) -> Option<&[u32]> {
        None
    }
}

/// A subject followed from its beginning (or a given position), outside any group: every record
/// stored, then each new one as it is stored, for as long as the follower lives ([`Bus::follow`],
/// [`Bus::follow_from`]).
#[async_trait]
pub trait Follow: Send {
    /// The records stored since the last call, at most `max` (at least 1); waits up to `wait`
    /// for the first, and is empty when none came. An error leaves the follower unusable:
    /// follow again (records already read come again; their positions tell them apart).
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError>;
}

/// What workers need from a message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Which implementation this is.
    fn kind(&self) -> BusKind;

    /// Why the bus cannot be reached now, if the client knows it cannot (its connection is
    /// down and reconnecting); `None` when connected or when the client cannot tell. For
    /// readiness: a fetch that only waits does not say.
    fn disconnected(&self) -> Option<String> {
        None
    }

    /// Creates the stream (JetStream) or topic (Kafka) that holds `spec.subject`, if missing.
    /// Idempotent. Publishing to a subject that was never ensured is an error on Kafka.
    async fn ensure_subject(&self, spec: &SubjectSpec) -> Result<(), BusError>;

    /// What [`Bus::ensure_subject`] would create for `spec` with this bus's configuration.
    fn planned_layout(&self, spec: &SubjectSpec) -> SubjectLayout;

    /// How `subject` is stored now, read from the broker; `None` when nothing holds it yet.
    /// Changes nothing.
    async fn describe_subject(&self, subject: &str) -> Result<Option<SubjectLayout>, BusError>;

    /// Publishes one message and waits until the bus has stored it.
    async fn publish(&self, message: Outgoing) -> Result<PublishReceipt, BusError>;

    /// Publishes several messages, pipelined, and waits until all are stored. The receipts are
    /// in the order of `messages`. The default publishes one after another.
    async fn publish_many(&self, messages: Vec<Outgoing>) -> Result<Vec<PublishReceipt>, BusError> {
        let mut receipts = Vec::with_capacity(messages.len());
        for message in messages {
            receipts.push(self.publish(message).await?);
        }
        Ok(receipts)
    }

    /// Joins (or creates) a consumer group on a subject.
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError>;

    /// Reads a subject again over a range, outside any group.
    async fn replay(&self, request: ReplayRequest) -> Result<Box<dyn ReplayStream>, BusError>;

    /// Follows `subject` from its beginning, outside any group, with one long-lived reader:
    /// an ordered consumer on JetStream, an assignment without a group commit on Kafka, a
    /// reader of the subject's log on the embedded bus. For what every process must read in
    /// full (revocations), without leaving anything behind on the broker.
    async fn follow(&self, subject: &str) -> Result<Box<dyn Follow>, BusError> {
        self.follow_from(subject, ReplayFrom::Beginning).await
    }

    /// Follows `subject` as [`Bus::follow`] does, starting at `from` (inclusive) instead of the
    /// beginning: a stream sequence (JetStream, embedded) or an offset in every partition
    /// (Kafka), or a bus time. On JetStream `subject` may be a pattern (see
    /// [`validate_subject_pattern`]).
    async fn follow_from(
        &self,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Box<dyn Follow>, BusError>;

    /// Removes what holds `subject`, with everything stored in it: on JetStream the stream of
    /// its family (every subject and consumer in it), on Kafka the topic, on the embedded bus
    /// the subject. False when there was nothing to remove. For runs that clean up after
    /// themselves in a namespace of their own ([`NamespacedBus`]); never for a deployment's
    /// subjects.
    async fn delete_subject(&self, subject: &str) -> Result<bool, BusError>;

    /// Measures the broker itself on `plan` with its client library used at its best
    /// ([`bench`]), creating the plan's subjects if needed; `None` for a bus without a broker
    /// (the embedded bus).
    async fn broker_bench(
        &self,
        plan: &bench::BenchPlan,
    ) -> Result<Option<bench::BenchRun>, BusError> {
        let _ = plan;
        Ok(None)
    }

    /// Publishes the original bytes of a message a stage gave up on to `deadletter.<stage>`.
    /// `payload` is normally an encoded dead-letter record; the headers carry the stage and the
    /// reason so that an operator can filter without decoding.
    async fn dead_letter(
        &self,
        stage: &str,
        reason_code: &str,
        original_subject: &str,
        payload: Bytes,
    ) -> Result<PublishReceipt, BusError> {
        // The dead-letter subject is provisioned with the others (`dcpipe bus init`); a worker
        // checks at start that it exists.
        let subject = dead_letter_subject(stage);
        let message = Outgoing::new(subject, payload)
            .with_header(header::DEAD_LETTER_STAGE, stage)
            .with_header(header::DEAD_LETTER_REASON, reason_code)
            .with_header(header::DEAD_LETTER_SUBJECT, original_subject);
        self.publish(message).await
    }
}

/// The dead-letter subject of a stage.
pub fn dead_letter_subject(stage: &str) -> String {
    format!("deadletter.{stage}")
}

/// The family of a subject: its first token (`txn.submit.oi01` → `txn`). JetStream keeps one
/// stream per family (stream name = family upper-cased, subjects `family.>`).
pub fn subject_family(subject: &str) -> &str {
    subject.split('.').next().unwrap_or(subject)
}

/// Checks that a subject is usable on every bus: 1 to 249 characters of `[a-zA-Z0-9._-]`,
/// at least two dot-separated tokens, no empty token.
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    let ok_chars = subject
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty()
        || subject.len() > 249
        || !ok_chars
        || tokens.len() < 2
        || tokens.iter().any(|t| t.is_empty())
    {
        return Err(BusError::new(
            BusErrorKind::InvalidSubject,
            format!("invalid subject {subject:?}: use 2+ dot-separated tokens of [a-zA-Z0-9_-]"),
        ));
    }
    Ok(())
}

/// Whether `subject` holds a wildcard token (`*` or `>`).
pub fn is_subject_pattern(subject: &str) -> bool {
    subject.split('.').any(|t| t == "*" || t == ">")
}

/// Checks a subject pattern as JetStream reads it: a valid subject in which any token but the
/// first (the family, which names the stream) may be `*` (one token) and the last may be `>`
/// (one or more tokens), e.g. `txn.result.*` or `deadletter.>`.
pub fn validate_subject_pattern(pattern: &str) -> Result<(), BusError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let last = tokens.len().saturating_sub(1);
    let concrete: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match *t {
            "*" if i > 0 => "x".to_owned(),
            ">" if i > 0 && i == last => "x".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    validate_subject(&concrete.join(".")).map_err(|_| {
        BusError::new(
            BusErrorKind::InvalidSubject,
            format!(
                "invalid subject pattern {pattern:?}: 2+ dot-separated tokens of [a-zA-Z0-9_-], \
                 `*` for any one token but the first, `>` for the rest as the last token"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_wildcards_after_the_family() {
        assert!(validate_subject_pattern("txn.result.*").is_ok());
        assert!(validate_subject_pattern("deadletter.>").is_ok());
        assert!(validate_subject_pattern("txn.*.oi01").is_ok());
        assert!(validate_subject_pattern("txn.result.oi01").is_ok());
        assert!(validate_subject_pattern("*.result.oi01").is_err());
        assert!(validate_subject_pattern("txn.>.oi01").is_err());
        assert!(validate_subject_pattern(">").is_err());
        assert!(validate_subject_pattern("txn.re*").is_err());
        assert!(is_subject_pattern("txn.*"));
        assert!(!is_subject_pattern("txn.result"));
    }

    #[test]
    fn family_is_first_token() {
        assert_eq!(subject_family("txn.submit.oi01"), "txn");
        assert_eq!(subject_family("deadletter.payer"), "deadletter");
    }

    fn layout() -> SubjectLayout {
        SubjectLayout {
            holder: "TXN".into(),
            holds_subject: true,
            partitions: 1,
            replicas: 3,
            max_age: Some(Duration::from_secs(30 * 86_400)),
            storage: Some("file".into()),
            duplicate_window: Some(Duration::from_secs(120)),
        }
    }

    #[test]
    fn matching_layouts_have_no_drift() {
        assert!(layout_drift(&layout(), &layout()).is_empty());
    }

    #[test]
    fn drift_names_each_difference_with_both_values() {
        let found = SubjectLayout {
            replicas: 1,
            max_age: Some(Duration::from_secs(72 * 3_600)),
            storage: Some("memory".into()),
            ..layout()
        };
        assert_eq!(
            layout_drift(&layout(), &found),
            vec![
                "replicas 1, configured 3".to_string(),
                "max age 3d, configured 30d".to_string(),
                "storage memory, configured file".to_string(),
            ]
        );
        let foreign = SubjectLayout {
            holds_subject: false,
            ..layout()
        };
        assert_eq!(
            layout_drift(&layout(), &foreign),
            vec!["TXN does not hold the subject".to_string()]
        );
    }

    #[test]
    fn what_a_bus_does_not_report_is_not_drift() {
        let found = SubjectLayout {
            max_age: None,
            storage: None,
            duplicate_window: None,
            ..layout()
        };
        assert!(layout_drift(&layout(), &found).is_empty());
    }

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(describe_duration(None), "unlimited");
        assert_eq!(describe_duration(Some(Duration::ZERO)), "unlimited");
        assert_eq!(
            describe_duration(Some(Duration::from_secs(30 * 86_400))),
            "30d"
        );
        assert_eq!(describe_duration(Some(Duration::from_secs(7_200))), "2h");
        assert_eq!(describe_duration(Some(Duration::from_secs(90))), "90s");
        assert_eq!(
            describe_duration(Some(Duration::from_millis(1_500))),
            "1500ms"
        );
    }

    #[test]
    fn subjects_are_validated() {
        assert!(validate_subject("txn.submit.oi01").is_ok());
        assert!(validate_subject("txn").is_err());
        assert!(validate_subject("txn..x").is_err());
        assert!(validate_subject("txn.*").is_err());
        assert!(validate_subject("txn.>").is_err());
        assert!(validate_subject("txn sub.x").is_err());
    }
}
