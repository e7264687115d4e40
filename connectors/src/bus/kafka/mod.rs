//! The bus on Kafka (any broker speaking the Kafka protocol; tested on tansu).
//!
//! - **Topics**: a subject is a topic of the same name, created explicitly by
//!   [`Bus::ensure_subject`] with the partitions of its [`SubjectSpec`] (no broker-side
//!   auto-creation is assumed). Publishing to a topic that does not exist fails with
//!   [`BusErrorKind::UnknownSubject`] at once instead of waiting for metadata.
//! - **Publishing**: an idempotent producer (`enable.idempotence`, `acks=all`), so that its own
//!   retries never store a record twice and records with the same key keep their order. The
//!   key is the record key (partitioned like Java clients: `murmur2_random`); the message id
//!   travels in the `dcpipe-msg-id` header. Kafka does not drop a second publish with the same
//!   id: later stages dedup by that header or by business id.
//! - **Consumers**: a consumer group per [`ConsumerConfig::group`], with per-message acks built
//!   on offset commits; see [`consumer`].
//! - **Replay**: a consumer outside any group reading assigned partitions; see [`replay`].
//!
//! [`KafkaOptions::properties`] go to every client after dcpipe's own settings (TLS, SASL).
//! Properties named `dcpipe.*` are dcpipe's: `dcpipe.topic.replication.factor` (default 1).

mod bench;
mod client;
mod consumer;
mod follow;
mod replay;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use self::client::{
    BROKER_STATS_INTERVAL_MS, BrokerReach, TracingContext, WatchedContext, check_properties,
    client_config, topic_replication,
};
use super::ReplayFrom;
use super::metrics::SubjectMetrics;
use super::nats::{check_consumer_config, check_portable_headers};
use super::{
    Bus, BusError, BusErrorKind, BusKind, Consumer, ConsumerConfig, Follow, KafkaOptions, Outgoing,
    PAYLOAD_BYTES_MAX, PublishReceipt, ReplayRequest, ReplayStream, SubjectLayout, SubjectSpec,
    validate_subject,
};

/// Time a record may wait in the producer (queue and retries included) before its publish
/// fails with [`BusErrorKind::Timeout`]; covers a broker restart.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to a metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to an admin operation (topic creation).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the producer waits to fill a batch (`linger.ms`): short, because a worker often
/// publishes one message and waits for it; `publish_many` batches anyway.
const PRODUCER_LINGER_MS: u32 = 1;
/// Pause when the producer queue is full and none of our own publishes is pending.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);
/// Largest partition count `ensure_subject` accepts.
const PARTITIONS_MAX: u32 = 1024;

/// A bus on Kafka. Cheap to share behind an `Arc`: one producer and one admin client.
pub struct KafkaBus {
    servers: Vec<String>,
    options: KafkaOptions,
    producer: FutureProducer<WatchedContext>,
    /// Whether a broker is up, from the producer's statistics.
    reach: Arc<BrokerReach>,
    admin: AdminClient<TracingContext>,
    replication: i32,
    /// Topics created or seen in metadata by this bus.
    topics: Mutex<HashSet<String>>,
    metrics: Mutex<HashMap<String, SubjectMetrics>>,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `options` redacts secrets in its own Debug.
        f.debug_struct("KafkaBus")
            .field("servers", &self.servers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Creates the producer and admin clients for the bootstrap `servers` (`host:port`) and
    /// checks that a broker answers.
    pub async fn connect(servers: &[String], options: &KafkaOptions) -> Result<Self, BusError> {
        if servers.is_empty() {
            return Err(BusError::new(BusErrorKind::Config, "no Kafka server given"));
        }
        check_properties(options)?;
        let replication = topic_replication(options)?;
        let reach = Arc::new(BrokerReach::default());
        let producer: FutureProducer<WatchedContext> = client_config(
            servers,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("partitioner", "murmur2_random".into()),
                ("linger.ms", PRODUCER_LINGER_MS.to_string()),
                (
                    "message.timeout.ms",
                    PUBLISH_TIMEOUT.as_millis().to_string(),
                ),
                ("message.max.bytes", (2 * PAYLOAD_BYTES_MAX).to_string()),
                (
                    "statistics.interval.ms",
                    BROKER_STATS_INTERVAL_MS.to_string(),
                ),
            ],
            options,
        )
        .create_with_context(WatchedContext {
            reach: Arc::clone(&reach),
        })
        .map_err(|e| BusError::with_source(BusErrorKind::Config, "Kafka producer settings", e))?;
        let admin: AdminClient<TracingContext> = client_config(servers, &[], options)
            .create_with_context(TracingContext)
            .map_err(|e| BusError::with_source(BusErrorKind::Config, "Kafka admin settings", e))?;
        let bus = KafkaBus {
            servers: servers.to_vec(),
            options: options.clone(),
            producer,
            reach,
            admin,
            replication,
            topics: Mutex::new(HashSet::new()),
            metrics: Mutex::new(HashMap::new()),
        };
        bus.fetch_topic(None).await?;
        tracing::info!(servers = ?servers, "connected to Kafka");
        Ok(bus)
    }

    fn metrics(&self, subject: &str) -> SubjectMetrics {
        let mut cache = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(subject.to_owned())
            .or_insert_with(|| SubjectMetrics::new(BusKind::Kafka, subject))
            .clone()
    }

    fn topic_known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    fn remember_topic(&self, topic: &str) {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned());
    }

    /// Asks the brokers for the metadata of `topic` (of the cluster when `None`); returns the
    /// topic's partition count, 0 when it does not exist.
    async fn fetch_topic(&self, topic: Option<&str>) -> Result<usize, BusError> {
        let producer = self.producer.clone();
        let topic = topic.map(str::to_owned);
        tokio::task::spawn_blocking(move || topic_partitions(producer.client(), topic.as_deref()))
            .await
            .map_err(|e| BusError::with_source(BusErrorKind::Closed, "metadata task", e))?
    }

    /// Fails with [`BusErrorKind::UnknownSubject`] unless the topic exists.
    async fn require_topic(&self, topic: &str) -> Result<(), BusError> {
        if self.topic_known(topic) {
            return Ok(());
        }
        if self.fetch_topic(Some(topic)).await? == 0 {
            return Err(BusError::new(
                BusErrorKind::UnknownSubject,
                format!("no topic {topic}: provision the bus first (dcpipe bus init)"),
            ));
        }
        self.remember_topic(topic);
        Ok(())
    }

    /// Checks a message before anything is sent.
    fn check(message: &Outgoing) -> Result<(), BusError> {
        validate_subject(&message.subject)?;
        check_portable_headers(&message.headers)?;
        if message.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(BusError::new(
                BusErrorKind::MessageTooLarge,
                format!(
                    "payload of {} bytes exceeds {PAYLOAD_BYTES_MAX}",
                    message.payload.len()
                ),
            ));
        }
        if message.msg_id.as_deref().is_some_and(str::is_empty) {
            return Err(BusError::new(
                BusErrorKind::InvalidHeader,
                "msg_id must not be empty",
            ));
        }
        Ok(())
    }

    /// Hands `message` to the producer, waiting for room in its queue by awaiting the oldest
    /// of `pending` (whose result goes to `done`) when it is full.
    async fn enqueue(
        &self,
        message: &Outgoing,
        pending: &mut VecDeque<(usize, DeliveryFuture)>,
        done: &mut [Option<Result<OwnedDeliveryResult, BusError>>],
    ) -> Result<DeliveryFuture, BusError> {
        let headers = wire::encode_headers(message);
        loop {
            let mut record = FutureRecord::to(&message.subject)
                .payload(message.payload.as_ref())
                .headers(headers.clone());
            if let Some(key) = &message.key {
                record = record.key(key.as_ref());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.pop_front() {
                        Some((index, delivery)) => done[index] = Some(settle(delivery).await),
                        None => tokio::time::sleep(QUEUE_FULL_BACKOFF).await,
                    }
                }
                Err((error, _)) => return Err(publish_error(&message.subject, error)),
            }
        }
    }

    fn receipt(
        &self,
        subject: &str,
        result: OwnedDeliveryResult,
    ) -> Result<PublishReceipt, BusError> {
        match result {
            Ok(delivery) => {
                self.metrics(subject).published.increment(1);
                Ok(PublishReceipt {
                    position: wire::position(delivery.partition, delivery.offset),
                    duplicate: false,
                })
            }
            Err((error, _)) => Err(publish_error(subject, error)),
        }
    }
}

/// Waits for the broker's answer to one record.
async fn settle(delivery: DeliveryFuture) -> Result<OwnedDeliveryResult, BusError> {
    delivery
        .await
        .map_err(|_| BusError::new(BusErrorKind::Closed, "Kafka producer closed"))
}

/// Maps a failed publish.
fn publish_error(subject: &str, error: KafkaError) -> BusError {
    let kind = match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            BusErrorKind::MessageTooLarge
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            BusErrorKind::UnknownSubject
        }
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
            BusErrorKind::Timeout
        }
        _ => BusErrorKind::Publish,
    };
    BusError::with_source(kind, format!("publishing to {subject}"), error)
}

/// The partitions and replication factor of `topic`, `None` when it does not exist. Blocks:
/// run it on a blocking thread.
fn topic_shape<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Option<(u32, u32)>, BusError> {
    let metadata = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| BusError::with_source(BusErrorKind::Connect, "Kafka metadata", e))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let partitions = u32::try_from(t.partitions().len()).unwrap_or(u32::MAX);
            let replicas = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .max()
                .unwrap_or(0);
            (partitions, u32::try_from(replicas).unwrap_or(u32::MAX))
        }))
}

/// The partition count of `topic` (0 when it does not exist), or the number of topics of the
/// cluster when `None`. Blocks: run it on a blocking thread.
fn topic_partitions<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: Option<&str>,
) -> Result<usize, BusError> {
    let metadata = client
        .fetch_metadata(topic, METADATA_TIMEOUT)
        .map_err(|e| BusError::with_source(BusErrorKind::Connect, "Kafka metadata", e))?;
    let Some(topic) = topic else {
        return Ok(metadata.topics().len());
    };
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len()))
}

#[async_trait]
impl Bus for KafkaBus {
    fn kind(&self) -> BusKind {
        BusKind::Kafka
    }

    fn disconnected(&self) -> Option<String> {
        self.reach.down()
    }

    async fn ensure_subject(&self, spec: &SubjectSpec) -> Result<(), BusError> {
        validate_subject(&spec.subject)?;
        if spec.partitions == 0 || spec.partitions > PARTITIONS_MAX {
            return Err(BusError::new(
                BusErrorKind::Config,
                format!(
                    "{}: partitions {} must be within 1..={PARTITIONS_MAX}",
                    spec.subject, spec.partitions
                ),
            ));
        }
        if self.topic_known(&spec.subject) {
            return Ok(());
        }
        let partitions = i32::try_from(spec.partitions).unwrap_or(i32::MAX);
        let topic = NewTopic::new(
            &spec.subject,
            partitions,
            TopicReplication::Fixed(self.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| {
                BusError::with_source(
                    BusErrorKind::Topology,
                    format!("creating topic {}", spec.subject),
                    e,
                )
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::new(
                        BusErrorKind::Topology,
                        format!("creating topic {name}: {code}"),
                    ));
                }
            }
        }
        let found = self.fetch_topic(Some(&spec.subject)).await?;
        if found == 0 {
            return Err(BusError::new(
                BusErrorKind::Topology,
                format!(
                    "topic {} missing from metadata after creation",
                    spec.subject
                ),
            ));
        }
        if found != spec.partitions as usize {
            tracing::warn!(
                topic = %spec.subject,
                partitions = found,
                wanted = spec.partitions,
                "topic exists with another partition count; kept as it is"
            );
        }
        self.remember_topic(&spec.subject);
        Ok(())
    }

    fn planned_layout(&self, spec: &SubjectSpec) -> SubjectLayout {
        SubjectLayout {
            holder: spec.subject.clone(),
            holds_subject: true,
            partitions: spec.partitions,
            // -1 asks for the broker's default, which the brokers do not tell clients: the
            // replicas found are then taken as planned.
            replicas: u32::try_from(self.replication).unwrap_or(0),
            max_age: None,
            storage: None,
            duplicate_window: None,
        }
    }

    async fn describe_subject(&self, subject: &str) -> Result<Option<SubjectLayout>, BusError> {
        validate_subject(subject)?;
        let producer = self.producer.clone();
        let topic = subject.to_owned();
        let shape = tokio::task::spawn_blocking(move || topic_shape(producer.client(), &topic))
            .await
            .map_err(|e| BusError::with_source(BusErrorKind::Closed, "metadata task", e))??;
        Ok(shape.map(|(partitions, replicas)| SubjectLayout {
            holder: subject.to_owned(),
            holds_subject: true,
            partitions,
            replicas: if self.replication < 1 { 0 } else { replicas },
            max_age: None,
            storage: None,
            duplicate_window: None,
        }))
    }

    async fn publish(&self, message: Outgoing) -> Result<PublishReceipt, BusError> {
        Self::check(&message)?;
        self.require_topic(&message.subject).await?;
        let mut pending = VecDeque::new();
        let delivery = self.enqueue(&message, &mut pending, &mut []).await?;
        let result = settle(delivery).await?;
        self.receipt(&message.subject, result)
    }

    async fn publish_many(&self, messages: Vec<Outgoing>) -> Result<Vec<PublishReceipt>, BusError> {
        for message in &messages {
            Self::check(message)?;
        }
        let mut topics: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            self.require_topic(topic).await?;
        }
        // Enqueued in order (records with the same key keep it), awaited together.
        let mut done: Vec<Option<Result<OwnedDeliveryResult, BusError>>> =
            (0..messages.len()).map(|_| None).collect();
        let mut pending = VecDeque::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let delivery = self.enqueue(message, &mut pending, &mut done).await?;
            pending.push_back((index, delivery));
        }
        let (indexes, deliveries): (Vec<usize>, Vec<DeliveryFuture>) = pending.into_iter().unzip();
        let results = futures::future::join_all(deliveries.into_iter().map(settle)).await;
        for (index, result) in indexes.into_iter().zip(results) {
            done[index] = Some(result);
        }
        messages
            .iter()
            .zip(done)
            .map(|(message, result)| match result {
                Some(result) => self.receipt(&message.subject, result?),
                None => Err(BusError::new(
                    BusErrorKind::Publish,
                    "publish lost its answer",
                )),
            })
            .collect()
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        validate_subject(&config.subject)?;
        check_consumer_config(&config)?;
        self.require_topic(&config.subject).await?;
        let metrics = self.metrics(&config.subject);
        let consumer =
            consumer::KafkaConsumer::start(&self.servers, &self.options, config, metrics).await?;
        Ok(Box::new(consumer))
    }

    async fn replay(&self, request: ReplayRequest) -> Result<Box<dyn ReplayStream>, BusError> {
        validate_subject(&request.subject)?;
        self.require_topic(&request.subject).await?;
        let replay = replay::KafkaReplay::start(&self.servers, &self.options, request).await?;
        Ok(Box::new(replay))
    }

    async fn follow_from(
        &self,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Box<dyn Follow>, BusError> {
        validate_subject(subject)?;
        self.require_topic(subject).await?;
        let follow =
            follow::KafkaFollow::start(&self.servers, &self.options, subject, from).await?;
        Ok(Box::new(follow))
    }

    async fn broker_bench(
        &self,
        plan: &super::bench::BenchPlan,
    ) -> Result<Option<super::bench::BenchRun>, BusError> {
        bench::run(self, plan).await.map(Some)
    }

    async fn delete_subject(&self, subject: &str) -> Result<bool, BusError> {
        validate_subject(subject)?;
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(subject);
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .delete_topics(&[subject], &options)
            .await
            .map_err(|e| {
                BusError::with_source(
                    BusErrorKind::Topology,
                    format!("deleting topic {subject}"),
                    e,
                )
            })?;
        let mut deleted = false;
        for result in results {
            match result {
                Ok(_) => deleted = true,
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(BusError::new(
                        BusErrorKind::Topology,
                        format!("deleting topic {name}: {code}"),
                    ));
                }
            }
        }
        Ok(deleted)
    }
}
