//! Behaviours of the broker buses beyond the shared conformance suite: what a subject that was
//! never ensured does, and how a Kafka group resumes from its commits after a member goes away.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, BusErrorKind, Consumer, ConsumerConfig, Delivery, KafkaBus, KafkaOptions, NatsBus,
    NatsOptions, Outgoing, SubjectSpec,
};
use dcpipe_connectors::testkit::{NatsServer, TansuServer, fetch_until};
use tokio::time::Instant;

/// How long a test waits for what must happen.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a test watches for what must not happen.
const QUIET: Duration = Duration::from_secs(1);

fn unique_subject(name: &str) -> String {
    format!("t{}.{name}", uuid::Uuid::new_v4().simple())
}

async fn nats_bus(server: &NatsServer) -> Arc<dyn Bus> {
    nats_bus_with(server, &NatsOptions::default()).await
}

async fn nats_bus_with(server: &NatsServer, options: &NatsOptions) -> Arc<dyn Bus> {
    let bus = NatsBus::connect(&[server.address()], options)
        .await
        .expect("connect to nats-server");
    Arc::new(bus)
}

async fn kafka_bus(server: &TansuServer) -> Arc<dyn Bus> {
    let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
        .await
        .expect("connect to tansu");
    Arc::new(bus)
}

async fn publish_numbered(bus: &dyn Bus, subject: &str, count: usize) {
    let messages = (0..count)
        .map(|i| Outgoing::new(subject, format!("payment-{i:04}")))
        .collect();
    let receipts = bus.publish_many(messages).await.expect("publish");
    assert_eq!(receipts.len(), count);
}

async fn collect(consumer: &mut dyn Consumer, n: usize) -> Vec<Delivery> {
    fetch_until(consumer, n, Instant::now() + DEADLINE).await
}

fn payloads(deliveries: &[Delivery]) -> Vec<String> {
    let mut payloads: Vec<String> = deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.record.payload).into_owned())
        .collect();
    payloads.sort();
    payloads
}

async fn assert_publish_to_unknown_subject_fails(bus: &dyn Bus) {
    let started = Instant::now();
    let error = bus
        .publish(Outgoing::new(unique_subject("never"), "x"))
        .await
        .expect_err("publish to a subject never ensured");
    assert_eq!(error.kind(), BusErrorKind::UnknownSubject, "{error}");
    assert!(!error.kind().is_transient());
    assert!(
        started.elapsed() < DEADLINE / 2,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publish_to_a_subject_never_ensured_fails_with_unknown_subject() {
    let server = NatsServer::start().await.expect("nats-server");
    assert_publish_to_unknown_subject_fails(nats_bus(&server).await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_to_a_subject_never_ensured_fails_with_unknown_subject() {
    let server = TansuServer::start().await.expect("tansu");
    assert_publish_to_unknown_subject_fails(kafka_bus(&server).await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_rejects_a_header_the_broker_would_interpret() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus = nats_bus(&server).await;
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject))
        .await
        .expect("ensure");
    let message = Outgoing::new(&subject, "x").with_header("Nats-Expected-Stream", "OTHER");
    let error = bus.publish(message).await.expect_err("reserved header");
    assert_eq!(error.kind(), BusErrorKind::InvalidHeader, "{error}");
}

/// Streams are created with the configured retention and replicas; the server reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_streams_take_the_configured_retention() {
    let server = NatsServer::start().await.expect("nats-server");
    let week = Duration::from_secs(7 * 24 * 3600);
    let options = NatsOptions {
        stream_max_age: Some(week),
        stream_replicas: 1,
        ..NatsOptions::default()
    };
    let bus = nats_bus_with(&server, &options).await;
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject))
        .await
        .expect("ensure");
    let client = async_nats::connect(server.url()).await.expect("client");
    let family = subject.split('.').next().expect("family");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(family.to_uppercase())
        .await
        .expect("the stream exists");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.max_age, week);
    assert_eq!(info.config.num_replicas, 1);
}

/// A single server cannot hold three replicas: the stream is refused with a typed error that
/// names it, not created with fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_replicas_a_single_server_cannot_hold_are_refused() {
    let server = NatsServer::start().await.expect("nats-server");
    let options = NatsOptions {
        stream_replicas: 3,
        ..NatsOptions::default()
    };
    let bus = nats_bus_with(&server, &options).await;
    let subject = unique_subject("orders");
    let error = bus
        .ensure_subject(&SubjectSpec::new(&subject))
        .await
        .expect_err("three replicas on one server");
    assert_eq!(error.kind(), BusErrorKind::Topology, "{error}");
    let family = subject.split('.').next().expect("family");
    assert!(
        error.to_string().contains(&family.to_uppercase()),
        "the error names the stream: {error}"
    );
}

/// A member that acked the first records and went away without acking the rest: the next
/// member of the group starts after the acked ones, and the records it gets again count as
/// first deliveries (Kafka stores offsets, not delivery counts). While the group rebalances
/// (the first member leaves as the next joins) a record may reach the next member twice:
/// at least once, never lost, never one that was acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_next_member_resumes_after_the_acked_records_with_count_one() {
    const MESSAGES: usize = 10;
    const ACKED: usize = 4;
    let server = TansuServer::start().await.expect("tansu");
    let bus = kafka_bus(&server).await;
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(1))
        .await
        .expect("ensure");
    publish_numbered(bus.as_ref(), &subject, MESSAGES).await;

    let mut first = bus
        .consumer(ConsumerConfig::new(&subject, "resume"))
        .await
        .expect("first member");
    let mut deliveries = collect(first.as_mut(), MESSAGES).await;
    assert_eq!(deliveries.len(), MESSAGES);
    let unacked = deliveries.split_off(ACKED);
    for delivery in deliveries {
        delivery.ack().await.expect("ack");
    }
    let expected: BTreeSet<String> = payloads(&unacked).into_iter().collect();
    drop(unacked);
    drop(first);

    let mut next = bus
        .consumer(ConsumerConfig::new(&subject, "resume"))
        .await
        .expect("next member");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while seen != expected && Instant::now() < deadline {
        let batch = collect(next.as_mut(), 1).await;
        assert!(batch.iter().all(|d| d.delivery_count == 1));
        seen.extend(payloads(&batch));
        for delivery in batch {
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(seen, expected);
    let extra = next.fetch(MESSAGES, QUIET).await.expect("fetch");
    assert!(extra.is_empty(), "delivered again: {}", extra.len());
}

/// Once every record is acked and the member has left, a new member gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acked_records_are_not_delivered_to_a_later_member() {
    const MESSAGES: usize = 20;
    let server = TansuServer::start().await.expect("tansu");
    let bus = kafka_bus(&server).await;
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(2))
        .await
        .expect("ensure");
    publish_numbered(bus.as_ref(), &subject, MESSAGES).await;

    let mut first = bus
        .consumer(ConsumerConfig::new(&subject, "done"))
        .await
        .expect("first member");
    let deliveries = collect(first.as_mut(), MESSAGES).await;
    assert_eq!(deliveries.len(), MESSAGES);
    for delivery in deliveries {
        delivery.ack().await.expect("ack");
    }
    drop(first);

    let mut later = bus
        .consumer(ConsumerConfig::new(&subject, "done"))
        .await
        .expect("later member");
    let again = later.fetch(MESSAGES, QUIET).await.expect("fetch");
    assert!(
        again.is_empty(),
        "acked records delivered again: {}",
        again.len()
    );
}

/// A fetch dropped while it waits (a caller racing it against a timer) must leave what it
/// received for the next fetch: a delivery dropped unacked would only come back after
/// `ack_wait`, as a second delivery.
async fn assert_cancelled_fetches_lose_nothing(bus: &dyn Bus) {
    const CANCELLED_FETCHES: usize = 50;
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(1))
        .await
        .expect("ensure");
    let mut consumer = bus
        .consumer(ConsumerConfig::new(&subject, "impatient"))
        .await
        .expect("consumer");
    publish_numbered(bus, &subject, 3).await;
    let mut deliveries = Vec::new();
    for _ in 0..CANCELLED_FETCHES {
        // Dropped at whatever point it reached within 1 ms, unless it finished by then.
        let fetch = consumer.fetch(10, Duration::from_secs(5));
        if let Ok(finished) = tokio::time::timeout(Duration::from_millis(1), fetch).await {
            deliveries.extend(finished.expect("fetch"));
        }
    }
    let missing = 3usize.saturating_sub(deliveries.len());
    deliveries.extend(collect(consumer.as_mut(), missing).await);
    assert_eq!(
        payloads(&deliveries),
        vec!["payment-0000", "payment-0001", "payment-0002"]
    );
    assert!(deliveries.iter().all(|d| d.delivery_count == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cancelled_fetches_lose_nothing() {
    let server = NatsServer::start().await.expect("nats-server");
    assert_cancelled_fetches_lose_nothing(nats_bus(&server).await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cancelled_fetches_lose_nothing() {
    let server = TansuServer::start().await.expect("tansu");
    assert_cancelled_fetches_lose_nothing(kafka_bus(&server).await.as_ref()).await;
}

/// A delivery dropped without ack or nak (its holder gave up or was cancelled) comes back at
/// once as the next delivery, not after `ack_wait`.
async fn assert_dropped_delivery_comes_back_at_once(bus: &dyn Bus) {
    let subject = unique_subject("orders");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(1))
        .await
        .expect("ensure");
    let config = ConsumerConfig {
        ack_wait: DEADLINE * 2,
        ..ConsumerConfig::new(&subject, "careless")
    };
    let mut consumer = bus.consumer(config).await.expect("consumer");
    publish_numbered(bus, &subject, 1).await;
    let first = collect(consumer.as_mut(), 1).await;
    assert_eq!(first.len(), 1);
    drop(first);

    let again = collect(consumer.as_mut(), 1).await;
    assert_eq!(payloads(&again), vec!["payment-0000"]);
    assert_eq!(again[0].delivery_count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_dropped_delivery_comes_back_at_once() {
    let server = NatsServer::start().await.expect("nats-server");
    assert_dropped_delivery_comes_back_at_once(nats_bus(&server).await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dropped_delivery_comes_back_at_once() {
    let server = TansuServer::start().await.expect("tansu");
    assert_dropped_delivery_comes_back_at_once(kafka_bus(&server).await.as_ref()).await;
}
