//! Throughput of the broker buses against their test servers (nats-server, tansu) on this
//! machine: publishes one at a time (a round trip each), pipelined publishes, and deliveries
//! consumed and acked by one group member. Prints messages per second.
//!
//! Run with `cargo bench -p dcpipe-connectors --bench broker_bus`. Each server runs on the same
//! machine as the benchmark, so the figures compare the buses and catch regressions; they are
//! not a capacity plan for a cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcpipe_connectors::bus::{
    Bus, ConsumerConfig, KafkaBus, KafkaOptions, NatsBus, NatsOptions, Outgoing, SubjectSpec,
};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};

/// Messages published one at a time.
const SINGLE_MESSAGES: usize = 2_000;
/// Messages published pipelined, then consumed and acked (each ack awaited in turn).
const PIPELINED_MESSAGES: usize = 20_000;
/// Messages per `publish_many` call.
const PIPELINE_BATCH: usize = 500;
/// About the size of a signed payment envelope.
const PAYLOAD_BYTES: usize = 512;
const FETCH_MAX: usize = 256;
const FETCH_WAIT: Duration = Duration::from_secs(10);

fn message(subject: &str, payload: &Bytes, i: usize) -> Outgoing {
    Outgoing::new(subject, payload.clone())
        .with_key(format!("wallet-{}", i % 1000))
        .with_msg_id(format!("{subject}/payment-{i}"))
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

/// A new subject of `bus`.
async fn fresh_subject(bus: &dyn Bus) -> String {
    let subject = format!("bench{}.payments", uuid::Uuid::new_v4().simple());
    bus.ensure_subject(&SubjectSpec::new(&subject))
        .await
        .expect("ensure subject");
    subject
}

async fn measure(name: &str, bus: Arc<dyn Bus>) {
    let payload = Bytes::from(vec![7u8; PAYLOAD_BYTES]);

    let subject = fresh_subject(bus.as_ref()).await;
    let started = Instant::now();
    for i in 0..SINGLE_MESSAGES {
        bus.publish(message(&subject, &payload, i))
            .await
            .expect("publish");
    }
    let single = rate(SINGLE_MESSAGES, started.elapsed());

    // A subject of its own: how records were batched when written changes what a fetch costs
    // on some brokers, so the consume rate is measured on records written by publish_many.
    let subject = fresh_subject(bus.as_ref()).await;
    let started = Instant::now();
    let mut next = 0;
    while next < PIPELINED_MESSAGES {
        let end = (next + PIPELINE_BATCH).min(PIPELINED_MESSAGES);
        let batch = (next..end)
            .map(|i| message(&subject, &payload, i))
            .collect();
        let receipts = bus.publish_many(batch).await.expect("publish_many");
        assert_eq!(receipts.len(), end - next);
        next = end;
    }
    let pipelined = rate(PIPELINED_MESSAGES, started.elapsed());

    let mut consumer = bus
        .consumer(ConsumerConfig::new(&subject, "bench"))
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut done = 0;
    while done < PIPELINED_MESSAGES {
        let batch = consumer.fetch(FETCH_MAX, FETCH_WAIT).await.expect("fetch");
        assert!(!batch.is_empty(), "fetch timed out after {done} messages");
        done += batch.len();
        for delivery in batch {
            delivery.ack().await.expect("ack");
        }
    }
    let consumed = rate(PIPELINED_MESSAGES, started.elapsed());
    assert_eq!(done, PIPELINED_MESSAGES);
    println!(
        "{name}: publish one at a time {single:.0} msg/s, publish_many {pipelined:.0} msg/s, \
         consume and ack one at a time {consumed:.0} msg/s ({PAYLOAD_BYTES}-byte payloads)"
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let nats = NatsServer::start().await.expect("nats-server");
        let bus = NatsBus::connect(&[nats.address()], &NatsOptions::default())
            .await
            .expect("connect to nats-server");
        measure("nats", Arc::new(bus)).await;

        let tansu = TansuServer::start().await.expect("tansu");
        let bus = KafkaBus::connect(&[tansu.address()], &KafkaOptions::default())
            .await
            .expect("connect to tansu");
        measure("kafka (tansu, sqlite)", Arc::new(bus)).await;
    });
}
