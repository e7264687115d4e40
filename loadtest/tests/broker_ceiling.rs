//! The broker ceiling of the load test's report on each broker: measured with messages of a
//! payment's real sizes and proportions, positive, and its figures consistent with one
//! another. Nothing here compares it with the bus-layer ceiling: the machine may be busy.

use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::{Bus, KafkaBus, KafkaOptions, NatsBus, NatsOptions};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};
use dcpipe_loadtest::ceiling::{self, MessageSizes};

async fn assert_broker_ceiling_is_measured(bus: Arc<dyn Bus>) {
    let sizes = MessageSizes {
        envelope: 1400,
        clearing_message: 1900,
        clearing_response: 900,
        outcome: 2100,
    };
    let kinds = ceiling::payment_messages(&sizes, 0.8);
    let run_id = format!("{:016x}", rand::random::<u64>());
    let broker = ceiling::measure_broker(&bus, &kinds, &run_id, 1, Duration::from_millis(500))
        .await
        .expect("broker ceiling")
        .expect("a broker has a ceiling");
    assert!(broker.payments_per_s > 0.0, "{broker:?}");
    assert!(
        (broker.messages_per_payment - 5.6).abs() < 1e-9,
        "{broker:?}"
    );
    assert!(
        (broker.payments_per_s * broker.messages_per_payment - broker.message_rate).abs()
            < 1e-6 * broker.message_rate,
        "{broker:?}"
    );
    assert!(
        (broker.message_rate * broker.seconds - broker.published as f64).abs() < 1.0,
        "{broker:?}"
    );
    assert!(broker.publish_rate >= broker.message_rate, "{broker:?}");
    assert!(broker.published > 0, "{broker:?}");
    assert!(
        broker.published as f64 <= ceiling::BROKER_CEILING_PAYMENTS_MAX as f64 * 5.6 + 1.0,
        "{broker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_ceiling_is_measured_on_nats() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
        .await
        .expect("connect");
    assert_broker_ceiling_is_measured(Arc::new(bus)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_ceiling_is_measured_on_kafka() {
    let server = TansuServer::start().await.expect("tansu");
    let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
        .await
        .expect("connect");
    assert_broker_ceiling_is_measured(Arc::new(bus)).await;
}
