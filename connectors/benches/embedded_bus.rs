//! Throughput of the embedded bus, which carries the demo and the load test: messages published,
//! delivered and acked per second, one after the other and with publisher and consumers running
//! at once on a bounded subject (publishers then wait for acks: the backpressure path).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dcpipe_connectors::bus::{Bus, ConsumerConfig, EmbeddedBus, EmbeddedConfig, Outgoing};
use tokio::runtime::Runtime;

const SUBJECT: &str = "txn.submit.oi01";
/// Messages per measured iteration.
const MESSAGES: usize = 20_000;
/// About the size of a signed payment envelope.
const PAYLOAD_BYTES: usize = 512;
const FETCH_MAX: usize = 256;
const FETCH_WAIT: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn message(payload: &Bytes, i: usize) -> Outgoing {
    Outgoing::new(SUBJECT, payload.clone())
        .with_key(format!("wallet-{}", i % 1000))
        .with_msg_id(format!("payment-{i}"))
}

/// Consumes and acks `messages` deliveries with one member of `group`.
async fn consume_and_ack(bus: Arc<EmbeddedBus>, group: &str, messages: usize) {
    let mut consumer = bus
        .consumer(ConsumerConfig::new(SUBJECT, group))
        .await
        .expect("consumer");
    let mut done = 0;
    while done < messages {
        let batch = consumer
            .fetch(FETCH_MAX.min(messages - done), FETCH_WAIT)
            .await
            .expect("fetch");
        assert!(!batch.is_empty(), "fetch timed out after {done} messages");
        done += batch.len();
        for delivery in batch {
            delivery.ack().await.expect("ack");
        }
    }
}

fn publish_then_consume(c: &mut Criterion) {
    let runtime = runtime();
    let payload = Bytes::from(vec![7u8; PAYLOAD_BYTES]);
    let mut group = c.benchmark_group("embedded_bus");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.sample_size(10);
    group.bench_function("publish_then_consume_and_ack", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let bus = Arc::new(EmbeddedBus::new(EmbeddedConfig::default()));
                for i in 0..MESSAGES {
                    bus.publish(message(&payload, i)).await.expect("publish");
                }
                consume_and_ack(bus, "bench", MESSAGES).await;
            });
        });
    });
    group.bench_function("concurrent_bounded_publish_and_two_consumers", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let bus = Arc::new(EmbeddedBus::new(EmbeddedConfig {
                    subject_messages_max: 4096,
                    ..EmbeddedConfig::default()
                }));
                bus.consumer(ConsumerConfig::new(SUBJECT, "bench"))
                    .await
                    .expect("group exists before publishing");
                let members = [
                    tokio::spawn(consume_and_ack(Arc::clone(&bus), "bench", MESSAGES / 2)),
                    tokio::spawn(consume_and_ack(Arc::clone(&bus), "bench", MESSAGES / 2)),
                ];
                let publisher = {
                    let bus = Arc::clone(&bus);
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        for i in 0..MESSAGES {
                            bus.publish(message(&payload, i)).await.expect("publish");
                        }
                    })
                };
                publisher.await.expect("publisher");
                for member in members {
                    member.await.expect("member");
                }
            });
        });
    });
    group.finish();
}

criterion_group!(benches, publish_then_consume);
criterion_main!(benches);
