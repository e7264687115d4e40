//! Behaviours of the embedded bus the conformance suite does not reach: its limits, its
//! duplicate window in time, and waiting publishers. Time-dependent tests run on tokio's paused
//! clock, which advances only when every task waits, so nothing here sleeps.

use bytes::Bytes;

use super::*;
use crate::bus::{ReplayFrom, StartAt};

const SUBJECT: &str = "orders.created";
/// Long enough for anything that is going to happen on a paused clock to have happened.
const QUIET: Duration = Duration::from_secs(5);

fn bus_with(config: EmbeddedConfig) -> EmbeddedBus {
    EmbeddedBus::new(config)
}

fn small_bus(subject_messages_max: usize) -> EmbeddedBus {
    bus_with(EmbeddedConfig {
        subject_messages_max,
        ..EmbeddedConfig::default()
    })
}

fn message(payload: &'static str) -> Outgoing {
    Outgoing::new(SUBJECT, payload)
}

fn group(name: &str) -> ConsumerConfig {
    ConsumerConfig::new(SUBJECT, name)
}

async fn publish_all(bus: &EmbeddedBus, payloads: &[&'static str]) {
    for payload in payloads {
        let receipt = bus.publish(message(payload)).await.expect("publish");
        assert!(!receipt.duplicate);
    }
}

async fn replay_all(bus: &EmbeddedBus) -> Vec<Record> {
    let mut replay = bus
        .replay(ReplayRequest {
            subject: SUBJECT.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    let mut records = Vec::new();
    loop {
        let batch = replay.next_batch(100).await.expect("next batch");
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

fn stats(bus: &EmbeddedBus) -> EmbeddedSubjectStats {
    bus.subject_stats(SUBJECT).expect("subject exists")
}

#[tokio::test(start_paused = true)]
async fn a_msg_id_is_stored_again_once_the_duplicate_window_has_passed() {
    let window = Duration::from_secs(10);
    let bus = bus_with(EmbeddedConfig {
        duplicate_window: window,
        ..EmbeddedConfig::default()
    });
    let first = bus
        .publish(message("a").with_msg_id("p-1"))
        .await
        .expect("publish");
    tokio::time::advance(window - Duration::from_millis(1)).await;
    let inside = bus
        .publish(message("a").with_msg_id("p-1"))
        .await
        .expect("publish");
    tokio::time::advance(Duration::from_millis(1)).await;
    let after = bus
        .publish(message("a").with_msg_id("p-1"))
        .await
        .expect("publish");
    assert!(inside.duplicate);
    assert_eq!(inside.position, first.position);
    assert!(!after.duplicate);
    assert_eq!(after.position.offset, first.position.offset + 1);
}

#[tokio::test]
async fn the_duplicate_window_forgets_the_oldest_id_beyond_its_entry_limit() {
    let bus = bus_with(EmbeddedConfig {
        dedup_entries_max: 2,
        ..EmbeddedConfig::default()
    });
    for id in ["p-1", "p-2", "p-3"] {
        bus.publish(message("a").with_msg_id(id))
            .await
            .expect("publish");
    }
    let oldest = bus
        .publish(message("a").with_msg_id("p-1"))
        .await
        .expect("publish");
    let newest = bus
        .publish(message("a").with_msg_id("p-3"))
        .await
        .expect("publish");
    assert!(!oldest.duplicate);
    assert!(newest.duplicate);
}

#[tokio::test]
async fn without_groups_the_subject_keeps_its_newest_messages() {
    let bus = small_bus(3);
    publish_all(&bus, &["a", "b", "c", "d", "e"]).await;
    let kept: Vec<Bytes> = replay_all(&bus)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(kept, vec!["c", "d", "e"]);
    assert_eq!(stats(&bus).first_offset, 3);
}

#[tokio::test]
async fn acked_messages_are_trimmed_once_the_subject_is_full() {
    let bus = small_bus(3);
    let mut consumer = bus.consumer(group("billing")).await.expect("consumer");
    publish_all(&bus, &["a", "b", "c"]).await;
    for delivery in consumer.fetch(2, QUIET).await.expect("fetch") {
        delivery.ack().await.expect("ack");
    }
    publish_all(&bus, &["d", "e"]).await;
    let stats = stats(&bus);
    assert_eq!(
        (stats.messages, stats.first_offset, stats.backlog),
        (3, 3, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_publisher_waits_at_capacity_until_an_ack_makes_room() {
    let bus = small_bus(2);
    let mut consumer = bus.consumer(group("billing")).await.expect("consumer");
    publish_all(&bus, &["a", "b"]).await;
    let mut publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(message("c")).await })
    };
    assert!(
        tokio::time::timeout(QUIET, &mut publisher).await.is_err(),
        "publish must wait while the oldest message is unacked"
    );
    assert_eq!(stats(&bus).messages, 2);

    let first = consumer.fetch(1, QUIET).await.expect("fetch");
    assert_eq!(first.len(), 1);
    for delivery in first {
        delivery.ack().await.expect("ack");
    }
    let receipt = tokio::time::timeout(QUIET, publisher)
        .await
        .expect("publish completes after the ack")
        .expect("task")
        .expect("publish");
    assert_eq!(receipt.position.offset, 3);
    let stats = stats(&bus);
    assert_eq!((stats.messages, stats.first_offset), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_never_gets_room_fails_with_timeout() {
    let bus = bus_with(EmbeddedConfig {
        subject_messages_max: 1,
        publish_wait_max: Duration::from_secs(2),
        ..EmbeddedConfig::default()
    });
    let _consumer = bus.consumer(group("billing")).await.expect("consumer");
    publish_all(&bus, &["a"]).await;
    let error = bus
        .publish(message("b"))
        .await
        .expect_err("subject is full");
    assert_eq!(error.kind(), BusErrorKind::Timeout);
    assert!(error.kind().is_transient());
    assert_eq!(stats(&bus).messages, 1);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_message_makes_room_for_a_waiting_publisher() {
    let bus = small_bus(1);
    let mut consumer = bus
        .consumer(ConsumerConfig {
            max_deliver: 1,
            ..group("billing")
        })
        .await
        .expect("consumer");
    publish_all(&bus, &["a"]).await;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(message("b")).await })
    };
    let delivery = consumer
        .fetch(1, QUIET)
        .await
        .expect("fetch")
        .pop()
        .expect("one");
    delivery.nak(Duration::ZERO).await.expect("nak");
    let receipt = tokio::time::timeout(QUIET, publisher)
        .await
        .expect("publish completes")
        .expect("task")
        .expect("publish");
    assert_eq!(receipt.position.offset, 2);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_with_nothing_to_deliver_returns_empty_at_its_timeout() {
    let bus = small_bus(10);
    let mut consumer = bus.consumer(group("billing")).await.expect("consumer");
    let started = Instant::now();
    let fetched = consumer
        .fetch(10, Duration::from_secs(3))
        .await
        .expect("fetch");
    assert!(fetched.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3_010),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_group_starting_latest_skips_earlier_messages() {
    let bus = small_bus(10);
    publish_all(&bus, &["old"]).await;
    let mut consumer = bus
        .consumer(ConsumerConfig {
            start: StartAt::Latest,
            ..group("billing")
        })
        .await
        .expect("consumer");
    publish_all(&bus, &["new"]).await;
    let fetched = consumer.fetch(10, QUIET).await.expect("fetch");
    let payloads: Vec<&Bytes> = fetched.iter().map(|d| &d.record.payload).collect();
    assert_eq!(payloads, vec!["new"]);
}

#[tokio::test]
async fn a_replay_ends_where_the_subject_ended_when_it_began() {
    let bus = small_bus(10);
    publish_all(&bus, &["a", "b"]).await;
    let mut replay = bus
        .replay(ReplayRequest {
            subject: SUBJECT.to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .expect("replay");
    publish_all(&bus, &["c"]).await;
    assert_eq!(replay.next_batch(10).await.expect("batch").len(), 2);
    assert!(replay.next_batch(10).await.expect("batch").is_empty());
}

#[tokio::test]
async fn replaying_an_unknown_subject_is_an_unknown_subject_error() {
    let bus = small_bus(10);
    let error = bus
        .replay(ReplayRequest {
            subject: "never.used".to_owned(),
            from: ReplayFrom::Beginning,
            until_ms: None,
        })
        .await
        .err()
        .expect("unknown subject");
    assert_eq!(error.kind(), BusErrorKind::UnknownSubject);
}

#[tokio::test]
async fn rejects_a_payload_over_the_bus_limit() {
    let bus = small_bus(10);
    let payload = Bytes::from(vec![0u8; PAYLOAD_BYTES_MAX + 1]);
    let error = bus
        .publish(Outgoing::new(SUBJECT, payload))
        .await
        .expect_err("too large");
    assert_eq!(error.kind(), BusErrorKind::MessageTooLarge);
}

#[tokio::test]
async fn rejects_a_message_over_the_subject_byte_limit() {
    let bus = bus_with(EmbeddedConfig {
        subject_bytes_max: 8,
        ..EmbeddedConfig::default()
    });
    let error = bus
        .publish(message("small").with_header("trace", "too-long"))
        .await
        .expect_err("too large");
    assert_eq!(error.kind(), BusErrorKind::MessageTooLarge);
}

#[tokio::test]
async fn rejects_a_header_a_broker_could_not_carry() {
    let bus = small_bus(10);
    let error = bus
        .publish(message("a").with_header("trace", "line\r\nbreak"))
        .await
        .expect_err("invalid header");
    assert_eq!(error.kind(), BusErrorKind::InvalidHeader);
    assert!(bus.subject_stats(SUBJECT).is_none_or(|s| s.messages == 0));
}

#[tokio::test]
async fn rejects_an_invalid_subject() {
    let bus = small_bus(10);
    let error = bus
        .publish(Outgoing::new("orders", "a"))
        .await
        .expect_err("invalid");
    assert_eq!(error.kind(), BusErrorKind::InvalidSubject);
}

#[tokio::test]
async fn rejects_consumer_configs_no_bus_could_honour() {
    let bus = small_bus(10);
    let invalid = [
        group(""),
        ConsumerConfig {
            max_in_flight: 0,
            ..group("billing")
        },
        ConsumerConfig {
            max_deliver: 0,
            ..group("billing")
        },
        ConsumerConfig {
            ack_wait: Duration::ZERO,
            ..group("billing")
        },
    ];
    for config in invalid {
        let error = bus.consumer(config.clone()).await.err().expect("invalid");
        assert_eq!(error.kind(), BusErrorKind::Config, "{config:?}");
    }
}

#[tokio::test]
async fn refuses_subjects_beyond_its_limit() {
    let bus = bus_with(EmbeddedConfig {
        subjects_max: 1,
        ..EmbeddedConfig::default()
    });
    bus.ensure_subject(&SubjectSpec::new("orders.a"))
        .await
        .expect("first subject");
    let error = bus
        .ensure_subject(&SubjectSpec::new("orders.b"))
        .await
        .expect_err("second subject");
    assert_eq!(error.kind(), BusErrorKind::Topology);
}

#[tokio::test]
async fn refuses_groups_beyond_its_limit() {
    let bus = bus_with(EmbeddedConfig {
        groups_per_subject_max: 1,
        ..EmbeddedConfig::default()
    });
    let _first = bus.consumer(group("billing")).await.expect("first group");
    let _same = bus.consumer(group("billing")).await.expect("same group");
    let error = bus
        .consumer(group("audit"))
        .await
        .err()
        .expect("second group");
    assert_eq!(error.kind(), BusErrorKind::Topology);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_consumer_deliveries_go_to_the_next_member_after_ack_wait() {
    let bus = small_bus(10);
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(1),
        ..group("billing")
    };
    let mut first = bus.consumer(config.clone()).await.expect("consumer");
    publish_all(&bus, &["a"]).await;
    let held = first.fetch(1, QUIET).await.expect("fetch");
    assert_eq!(held.len(), 1);
    drop(first);
    let mut second = bus.consumer(config).await.expect("consumer");
    let again = second.fetch(1, QUIET).await.expect("fetch");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2);
    assert_eq!(again[0].record.position, held[0].record.position);
}
