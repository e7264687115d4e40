//! The broker's own ceiling (`Bus::broker_bench`) on each bus: measured, and consistent —
//! every message of the plan published, consumed, and stored once on the broker. How fast is
//! for the load test's report, not for a test.

use std::sync::Arc;
use std::time::Duration;

use dcpipe_connectors::bus::bench::{BenchKind, BenchPlan, sends};
use dcpipe_connectors::bus::{
    Bus, BusUrl, KafkaBus, KafkaOptions, NatsBus, NatsOptions, ReplayFrom, ReplayRequest,
};
use dcpipe_connectors::testkit::{NatsServer, TansuServer};

const UNITS: u64 = 400;

fn plan() -> BenchPlan {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let kind = |k: usize, bytes, per_unit, with_msg_id| BenchKind {
        subject: format!("bench{run}.k{k}"),
        bytes,
        per_unit,
        with_msg_id,
    };
    BenchPlan {
        kinds: vec![kind(0, 1200, 1.0, false), kind(1, 900, 0.8, true)],
        units_max: UNITS,
        duration: Duration::from_secs(20),
        partitions: 2,
    }
}

/// Records stored in `subject`.
async fn stored(bus: &dyn Bus, subject: &str) -> usize {
    let mut replay = bus
        .replay(ReplayRequest {
            subject: subject.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    let mut n = 0;
    loop {
        let batch = replay.next_batch(1000).await.expect("replay batch");
        if batch.is_empty() {
            return n;
        }
        n += batch.len();
    }
}

async fn assert_bench_is_consistent(bus: &dyn Bus) {
    let plan = plan();
    let run = bus
        .broker_bench(&plan)
        .await
        .expect("broker bench")
        .expect("a broker bus measures its broker");
    let per_kind: Vec<usize> = plan
        .kinds
        .iter()
        .map(|kind| (0..UNITS).filter(|u| sends(*u, kind.per_unit)).count())
        .collect();
    assert_eq!(per_kind, vec![400, 320]);
    assert_eq!(run.published, 720, "{run:?}");
    assert_eq!(run.consumed, run.published, "{run:?}");
    assert!(run.seconds > 0.0 && run.publish_seconds > 0.0, "{run:?}");
    assert!(run.publish_seconds <= run.seconds, "{run:?}");
    assert!(run.acks_in_flight > 1 && run.fetch_batch > 1, "{run:?}");
    // One probe per subject, then the plan's messages, each stored once.
    for (kind, expected) in plan.kinds.iter().zip(per_kind) {
        assert_eq!(
            stored(bus, &kind.subject).await,
            expected + 1,
            "{}",
            kind.subject
        );
    }
}

#[tokio::test]
async fn nats_broker_bench_publishes_and_consumes_every_message_once() {
    let server = NatsServer::start().await.expect("nats-server");
    let bus = NatsBus::connect(&[server.address()], &NatsOptions::default())
        .await
        .expect("connect");
    assert_bench_is_consistent(&bus).await;
}

#[tokio::test]
async fn kafka_broker_bench_publishes_and_consumes_every_message_once() {
    let server = TansuServer::start().await.expect("tansu");
    let bus = KafkaBus::connect(&[server.address()], &KafkaOptions::default())
        .await
        .expect("connect");
    assert_bench_is_consistent(&bus).await;
}

#[tokio::test]
async fn the_embedded_bus_has_no_broker_to_measure() {
    let bus: Arc<dyn Bus> = dcpipe_connectors::bus::connect(&BusUrl::Embedded, &Default::default())
        .await
        .expect("embedded");
    assert!(bus.broker_bench(&plan()).await.expect("bench").is_none());
}
