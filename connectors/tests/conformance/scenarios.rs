//! The behaviours every bus must show, each written once over a [`Harness`].
//!
//! Every scenario works on its own subject family (`t<random>.<name>`) so that scenarios never
//! see each other's messages on a shared broker, and waits for what must happen with a
//! deadline ([`DEADLINE`]) and for what must not happen for a short watch ([`QUIET`]); nothing
//! sleeps to synchronize.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dcpipe_connectors::bus::{
    Bus, BusErrorKind, Consumer, ConsumerConfig, Delivery, Follow, Outgoing, PAYLOAD_BYTES_MAX,
    PublishReceipt, Record, ReplayFrom, ReplayRequest, SubjectSpec, dead_letter_subject, header,
    layout_drift,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::harness::Harness;

/// How long a scenario waits for what must happen (a Kafka group join alone can take seconds).
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a scenario watches for what must not happen.
const QUIET: Duration = Duration::from_secs(1);
/// Longest single fetch wait inside a deadline.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// What scenarios ask a fetch for: more than any scenario expects, so that a bus handing out
/// too much is caught by the counts.
const FETCH_MAX: usize = 256;
/// Records per replay batch.
const REPLAY_BATCH: usize = 100;
/// Pause between publish retries while a broker restarts (pacing, not synchronization).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Building blocks of the scenarios

fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

/// A subject in a family no other scenario uses: `t<random hex>.<name>`.
fn unique_subject(name: &str) -> String {
    format!("t{:016x}.{name}", random_u64())
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per instance: enough to keep test families apart.
    RandomState::new().hash_one(SystemTime::now())
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch");
    i64::try_from(since_epoch.as_millis()).expect("ms fit in i64")
}

/// A client and a new subject with `partitions` (1 where a scenario needs one global order).
async fn fresh_subject(
    harness: &mut impl Harness,
    name: &str,
    partitions: u32,
) -> (Arc<dyn Bus>, String) {
    let bus = harness.bus().await;
    let subject = unique_subject(name);
    ensure(bus.as_ref(), &subject, partitions).await;
    (bus, subject)
}

async fn ensure(bus: &dyn Bus, subject: &str, partitions: u32) {
    bus.ensure_subject(&SubjectSpec::new(subject).with_partitions(partitions))
        .await
        .unwrap_or_else(|e| panic!("ensure {subject}: {e}"));
}

/// The `i`th message of a scenario: payload `<label>-<i>`, id `<subject>/<label>-<i>`.
fn numbered(subject: &str, label: &str, i: usize) -> Outgoing {
    Outgoing::new(subject, format!("{label}-{i:04}"))
        .with_msg_id(format!("{subject}/{label}-{i:04}"))
}

async fn publish(bus: &dyn Bus, message: Outgoing) -> PublishReceipt {
    let subject = message.subject.clone();
    bus.publish(message)
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"))
}

async fn publish_numbered(
    bus: &dyn Bus,
    subject: &str,
    label: &str,
    range: Range<usize>,
) -> Vec<PublishReceipt> {
    let mut receipts = Vec::with_capacity(range.len());
    for i in range {
        receipts.push(publish(bus, numbered(subject, label, i)).await);
    }
    receipts
}

async fn join(bus: &dyn Bus, config: ConsumerConfig) -> Box<dyn Consumer> {
    let what = format!("{}/{}", config.subject, config.group);
    bus.consumer(config)
        .await
        .unwrap_or_else(|e| panic!("consumer {what}: {e}"))
}

/// Fetches until `n` deliveries arrived or `deadline` passed, without acking them. Every fetch
/// asks for [`FETCH_MAX`], so a bus that hands out more than it should shows in the count.
async fn collect_until(consumer: &mut dyn Consumer, n: usize, deadline: Instant) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    while deliveries.len() < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let batch = consumer
            .fetch(FETCH_MAX, (deadline - now).min(FETCH_WAIT))
            .await
            .unwrap_or_else(|e| panic!("fetch: {e}"));
        deliveries.extend(batch);
    }
    deliveries
}

/// What a consumer receives within [`QUIET`]: nothing, when the bus behaves.
async fn quiet_fetch(consumer: &mut dyn Consumer) -> Vec<Delivery> {
    consumer
        .fetch(FETCH_MAX, QUIET)
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"))
}

async fn ack_all(deliveries: Vec<Delivery>) -> Vec<Record> {
    let mut records = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        records.push(delivery.record.clone());
        delivery.ack().await.unwrap_or_else(|e| panic!("ack: {e}"));
    }
    records
}

/// Consumes and acks until `n` records arrived or the deadline passed.
async fn consume_and_ack(consumer: &mut dyn Consumer, n: usize) -> Vec<Record> {
    let deadline = deadline();
    let mut records = Vec::new();
    while records.len() < n && Instant::now() < deadline {
        let batch = collect_until(consumer, n - records.len(), deadline).await;
        records.extend(ack_all(batch).await);
    }
    records
}

/// Exactly one delivery within the deadline.
async fn next_one(consumer: &mut dyn Consumer) -> Delivery {
    let mut got = collect_until(consumer, 1, deadline()).await;
    assert_eq!(got.len(), 1, "expected exactly one delivery");
    got.remove(0)
}

async fn replay(
    bus: &dyn Bus,
    subject: &str,
    from: ReplayFrom,
    until_ms: Option<i64>,
) -> Vec<Record> {
    let request = ReplayRequest {
        subject: subject.to_owned(),
        from,
        until_ms,
    };
    let mut stream = bus
        .replay(request)
        .await
        .unwrap_or_else(|e| panic!("replay {subject}: {e}"));
    let deadline = deadline();
    let mut records = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "replay of {subject} did not end");
        let batch = stream
            .next_batch(REPLAY_BATCH)
            .await
            .unwrap_or_else(|e| panic!("replay {subject}: {e}"));
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn labelled(label: &str, range: Range<usize>) -> Vec<String> {
    range.map(|i| format!("{label}-{i:04}")).collect()
}

fn header_value<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Waits until the wall clock reaches `time_ms`, so that what is published next is stamped at or
/// after it (often exactly at it, which exercises the range boundaries). Waits on the clock
/// itself, for at most a few ms.
async fn wait_for_clock_to_reach(time_ms: i64) {
    let deadline = deadline();
    while now_ms() < time_ms {
        assert!(Instant::now() < deadline, "clock does not advance");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// Payload, key, headers, msg_id and subject come back as published, at the receipt's position.
pub(crate) async fn round_trip(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let sent = Outgoing::new(
        &subject,
        Bytes::from_static(b"\x00\x00\x00\x00\x2a\xffpayment"),
    )
    .with_key("wallet-0007")
    .with_msg_id(format!("{subject}/payment-1"))
    .with_header("trace-id", "4bf92f3577b34da6")
    .with_header("tenant", "oi01");
    let before_ms = now_ms();
    let receipt = publish(bus.as_ref(), sent.clone()).await;
    let after_ms = now_ms();
    let mut consumer = join(bus.as_ref(), ConsumerConfig::new(&subject, "reader")).await;

    let delivery = next_one(consumer.as_mut()).await;
    let record = &delivery.record;
    assert_eq!(record.subject, sent.subject);
    assert_eq!(record.payload, sent.payload);
    assert_eq!(record.key, sent.key);
    assert_eq!(record.msg_id, sent.msg_id);
    assert_eq!(record.headers, sent.headers);
    assert_eq!(record.position, receipt.position);
    assert_eq!(delivery.delivery_count, 1);
    // The broker's clock, not ours: allow for a second of difference.
    assert!(
        (before_ms - 1_000..=after_ms + 1_000).contains(&record.timestamp_ms),
        "timestamp {} outside [{before_ms}, {after_ms}]",
        record.timestamp_ms
    );
    assert!(!receipt.duplicate);
}

/// Two members of one group share the messages: each is processed exactly once when all are
/// acked, and both members get some.
pub(crate) async fn competing_consumers_split_the_load(harness: &mut impl Harness) {
    const MESSAGES: usize = 200;
    const BATCH: usize = 10;
    let (bus, subject) = fresh_subject(harness, "orders", SubjectSpec::PARTITIONS_DEFAULT).await;
    let mut members = [
        join(bus.as_ref(), ConsumerConfig::new(&subject, "split")).await,
        join(bus.as_ref(), ConsumerConfig::new(&subject, "split")).await,
    ];
    for i in 0..MESSAGES {
        // Distinct keys spread the messages over every partition on Kafka.
        let message = numbered(&subject, "payment", i).with_key(format!("wallet-{i}"));
        publish(bus.as_ref(), message).await;
    }

    let mut times_seen: HashMap<Bytes, usize> = HashMap::new();
    let mut per_member = [0usize; 2];
    let deadline = deadline();
    // Members take turns, each acking its batch before the other fetches.
    while times_seen.len() < MESSAGES && Instant::now() < deadline {
        for (member, count) in members.iter_mut().zip(per_member.iter_mut()) {
            let batch = member
                .fetch(BATCH, FETCH_WAIT)
                .await
                .unwrap_or_else(|e| panic!("fetch: {e}"));
            *count += batch.len();
            for record in ack_all(batch).await {
                *times_seen.entry(record.payload).or_default() += 1;
            }
        }
    }
    for member in &mut members {
        assert!(
            quiet_fetch(member.as_mut()).await.is_empty(),
            "acked message came back"
        );
    }

    let repeated: Vec<_> = times_seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "processed more than once: {repeated:?}"
    );
    assert_eq!(times_seen.len(), MESSAGES, "messages processed");
    assert!(per_member.iter().all(|n| *n > 0), "split {per_member:?}");
}

/// A delivery not acked within `ack_wait` comes back, counted as the second delivery.
pub(crate) async fn unacked_message_is_redelivered_after_ack_wait(harness: &mut impl Harness) {
    const ACK_WAIT: Duration = Duration::from_secs(1);
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let config = ConsumerConfig {
        ack_wait: ACK_WAIT,
        ..ConsumerConfig::new(&subject, "forgetful")
    };
    let mut consumer = join(bus.as_ref(), config).await;
    publish_numbered(bus.as_ref(), &subject, "payment", 0..1).await;

    let first = next_one(consumer.as_mut()).await;
    let first_at = Instant::now();
    let second = next_one(consumer.as_mut()).await;

    assert!(
        first_at.elapsed() >= ACK_WAIT - Duration::from_millis(100),
        "redelivered after {:?}, before ack_wait",
        first_at.elapsed()
    );
    assert_eq!(first.delivery_count, 1);
    assert_eq!(second.delivery_count, 2);
    assert_eq!(second.record.position, first.record.position);
    assert_eq!(second.record.payload, first.record.payload);
    second.ack().await.expect("ack");
}

/// A nak gives the message back: it is delivered again, counted as the second delivery.
pub(crate) async fn nak_gives_redelivery(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let mut consumer = join(bus.as_ref(), ConsumerConfig::new(&subject, "picky")).await;
    publish_numbered(bus.as_ref(), &subject, "payment", 0..1).await;

    let first = next_one(consumer.as_mut()).await;
    let position = first.record.position;
    first.nak(Duration::from_millis(200)).await.expect("nak");
    let second = next_one(consumer.as_mut()).await;

    assert_eq!(second.delivery_count, 2);
    assert_eq!(second.record.position, position);
    assert_eq!(
        payloads(std::slice::from_ref(&second.record)),
        labelled("payment", 0..1)
    );
    second.ack().await.expect("ack");
}

/// After `max_deliver` deliveries a message is not delivered again.
pub(crate) async fn max_deliver_is_honoured(harness: &mut impl Harness) {
    const MAX_DELIVER: u32 = 3;
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let config = ConsumerConfig {
        max_deliver: MAX_DELIVER,
        ..ConsumerConfig::new(&subject, "stubborn")
    };
    let mut consumer = join(bus.as_ref(), config).await;
    publish_numbered(bus.as_ref(), &subject, "payment", 0..1).await;

    let mut counts = Vec::new();
    for _ in 0..MAX_DELIVER {
        let delivery = next_one(consumer.as_mut()).await;
        counts.push(delivery.delivery_count);
        delivery.nak(Duration::ZERO).await.expect("nak");
    }

    assert_eq!(counts, (1..=MAX_DELIVER).collect::<Vec<_>>());
    let after = quiet_fetch(consumer.as_mut()).await;
    assert!(after.is_empty(), "delivered beyond max_deliver: {after:?}");
}

// ---------------------------------------------------------------------------------------------
// Dedup and order

/// A second publish with the same `msg_id` is not stored where the bus dedups; on Kafka, N
/// publishes give exactly N records and both copies carry the id for later stages to dedup.
pub(crate) async fn duplicate_msg_id_is_dropped(harness: &mut impl Harness) {
    const MESSAGES: usize = 5;
    const REPEATED: usize = 2;
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let receipts = publish_numbered(bus.as_ref(), &subject, "payment", 0..MESSAGES).await;
    let again = publish(bus.as_ref(), numbered(&subject, "payment", REPEATED)).await;

    let records = replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None).await;
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let id = record
            .msg_id
            .clone()
            .expect("every record carries its msg_id");
        *copies.entry(id).or_default() += 1;
    }
    let repeated_id = numbered(&subject, "payment", REPEATED)
        .msg_id
        .expect("numbered messages have ids");

    assert_eq!(copies.len(), MESSAGES, "distinct ids stored: {copies:?}");
    if harness.dedups_by_msg_id() {
        assert!(
            again.duplicate,
            "second publish not recognised as a duplicate"
        );
        assert_eq!(again.position, receipts[REPEATED].position);
        assert_eq!(records.len(), MESSAGES);
    } else {
        assert_eq!(
            records.len(),
            MESSAGES + 1,
            "no retry duplicates beyond the resubmission"
        );
        assert_eq!(copies[&repeated_id], 2);
    }
}

/// Messages with the same key arrive in publish order, keys interleaved.
pub(crate) async fn order_per_key_is_kept(harness: &mut impl Harness) {
    const KEYS: usize = 5;
    const PER_KEY: usize = 20;
    let (bus, subject) = fresh_subject(harness, "orders", SubjectSpec::PARTITIONS_DEFAULT).await;
    let mut consumer = join(bus.as_ref(), ConsumerConfig::new(&subject, "ordered")).await;
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let message =
                Outgoing::new(&subject, format!("{seq}")).with_key(format!("wallet-{key}"));
            publish(bus.as_ref(), message).await;
        }
    }

    let records = consume_and_ack(consumer.as_mut(), KEYS * PER_KEY).await;
    let mut by_key: BTreeMap<Bytes, Vec<usize>> = BTreeMap::new();
    for record in &records {
        let seq = String::from_utf8_lossy(&record.payload)
            .parse()
            .expect("payload is a sequence number");
        by_key
            .entry(record.key.clone().expect("keyed"))
            .or_default()
            .push(seq);
    }

    assert_eq!(records.len(), KEYS * PER_KEY);
    assert_eq!(by_key.len(), KEYS);
    for (key, seqs) in &by_key {
        assert_eq!(
            seqs,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "order of key {key:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Replay

/// Batch A, then a time T strictly after A's timestamps, then batch B, on one partition.
struct TwoBatches {
    bus: Arc<dyn Bus>,
    subject: String,
    split_ms: i64,
    a: Vec<String>,
    b: Vec<String>,
    b_receipts: Vec<PublishReceipt>,
}

const BATCH_LEN: usize = 5;

async fn two_batches_split_by_time(harness: &mut impl Harness) -> TwoBatches {
    let (bus, subject) = fresh_subject(harness, "audit", 1).await;
    publish_numbered(bus.as_ref(), &subject, "a", 0..BATCH_LEN).await;
    let stored_a = replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None).await;
    assert_eq!(stored_a.len(), BATCH_LEN);
    let split_ms = 1 + stored_a
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .expect("batch A is stored");
    wait_for_clock_to_reach(split_ms).await;
    let b_receipts = publish_numbered(bus.as_ref(), &subject, "b", 0..BATCH_LEN).await;
    TwoBatches {
        bus,
        subject,
        split_ms,
        a: labelled("a", 0..BATCH_LEN),
        b: labelled("b", 0..BATCH_LEN),
        b_receipts,
    }
}

/// A subject created but never published to replays as empty, whatever the start: from the
/// beginning, from a position, from a time.
pub(crate) async fn replay_of_a_subject_without_records_is_empty(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "audit", 2).await;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    for from in [
        ReplayFrom::Beginning,
        ReplayFrom::Offset(5),
        ReplayFrom::TimeMs(now_ms - 60_000),
    ] {
        let records = replay(bus.as_ref(), &subject, from, None).await;
        assert!(records.is_empty(), "{from:?}: {records:?}");
    }
}

/// A replay from time T returns exactly the messages stamped at or after T, in order.
pub(crate) async fn replay_from_time_returns_exactly_the_messages_at_or_after_it(
    harness: &mut impl Harness,
) {
    let run = two_batches_split_by_time(harness).await;
    let records = replay(
        run.bus.as_ref(),
        &run.subject,
        ReplayFrom::TimeMs(run.split_ms),
        None,
    )
    .await;
    assert_eq!(payloads(&records), run.b);
    assert!(records.iter().all(|r| r.timestamp_ms >= run.split_ms));
}

/// A replay until time T stops before the first message stamped at or after T.
pub(crate) async fn replay_until_time_stops_before_it(harness: &mut impl Harness) {
    let run = two_batches_split_by_time(harness).await;
    let records = replay(
        run.bus.as_ref(),
        &run.subject,
        ReplayFrom::Beginning,
        Some(run.split_ms),
    )
    .await;
    assert_eq!(payloads(&records), run.a);
}

/// A replay from a position starts exactly there; from the beginning it returns everything;
/// both in publish order and with the positions of the publish receipts.
pub(crate) async fn replay_from_offset_or_beginning_returns_the_range_in_order(
    harness: &mut impl Harness,
) {
    let run = two_batches_split_by_time(harness).await;
    let first_b = run.b_receipts[0].position.offset;
    let from_offset = replay(
        run.bus.as_ref(),
        &run.subject,
        ReplayFrom::Offset(first_b),
        None,
    )
    .await;
    let everything = replay(run.bus.as_ref(), &run.subject, ReplayFrom::Beginning, None).await;

    assert_eq!(payloads(&from_offset), run.b);
    let positions: Vec<_> = from_offset.iter().map(|r| r.position).collect();
    let published: Vec<_> = run.b_receipts.iter().map(|r| r.position).collect();
    assert_eq!(positions, published);
    let mut all = run.a.clone();
    all.extend(run.b.iter().cloned());
    assert_eq!(payloads(&everything), all);
}

/// Reads `follow` until it has `count` records.
async fn follow_until(follow: &mut dyn Follow, count: usize) -> Vec<Record> {
    let until = deadline();
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < until,
            "{} of {count} followed",
            records.len()
        );
        records.extend(
            follow
                .next_batch(count - records.len(), Duration::from_millis(200))
                .await
                .expect("follow"),
        );
    }
    records
}

/// A follower reads what the subject holds, from its beginning and in order per partition, then
/// each record published after it started; two followers each read everything.
pub(crate) async fn follow_reads_every_record_then_new_ones(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "revocations", 1).await;
    publish_numbered(bus.as_ref(), &subject, "before", 0..3).await;
    let mut first = bus.follow(&subject).await.expect("follow");
    let mut second = harness.bus().await.follow(&subject).await.expect("follow");
    assert_eq!(
        payloads(&follow_until(first.as_mut(), 3).await),
        labelled("before", 0..3)
    );
    let published = publish_numbered(bus.as_ref(), &subject, "after", 0..2).await;
    let after = follow_until(first.as_mut(), 2).await;
    assert_eq!(payloads(&after), labelled("after", 0..2));
    let positions: Vec<_> = after.iter().map(|r| r.position).collect();
    let receipts: Vec<_> = published.iter().map(|r| r.position).collect();
    assert_eq!(positions, receipts);
    // Nothing more, and nothing twice.
    assert!(
        first
            .next_batch(16, Duration::from_millis(300))
            .await
            .expect("follow")
            .is_empty()
    );
    let mut everything = labelled("before", 0..3);
    everything.extend(labelled("after", 0..2));
    assert_eq!(
        payloads(&follow_until(second.as_mut(), 5).await),
        everything
    );
}

/// A follower started at a position or a time reads from exactly there (what is before it
/// never), then each record published after it started.
pub(crate) async fn follow_from_a_position_or_a_time_starts_there(harness: &mut impl Harness) {
    let run = two_batches_split_by_time(harness).await;
    let first_b = run.b_receipts[0].position.offset;
    let mut by_offset = run
        .bus
        .follow_from(&run.subject, ReplayFrom::Offset(first_b))
        .await
        .expect("follow from an offset");
    let mut by_time = run
        .bus
        .follow_from(&run.subject, ReplayFrom::TimeMs(run.split_ms))
        .await
        .expect("follow from a time");
    for follow in [&mut by_offset, &mut by_time] {
        let records = follow_until(follow.as_mut(), run.b.len()).await;
        assert_eq!(payloads(&records), run.b);
        let positions: Vec<_> = records.iter().map(|r| r.position).collect();
        let receipts: Vec<_> = run.b_receipts.iter().map(|r| r.position).collect();
        assert_eq!(positions, receipts);
    }
    let published = publish_numbered(run.bus.as_ref(), &run.subject, "later", 0..2).await;
    for follow in [&mut by_offset, &mut by_time] {
        let records = follow_until(follow.as_mut(), 2).await;
        assert_eq!(payloads(&records), labelled("later", 0..2));
        let positions: Vec<_> = records.iter().map(|r| r.position).collect();
        let receipts: Vec<_> = published.iter().map(|r| r.position).collect();
        assert_eq!(positions, receipts);
        assert!(
            follow
                .next_batch(16, Duration::from_millis(300))
                .await
                .expect("follow")
                .is_empty(),
            "nothing more, and nothing twice"
        );
    }
}

/// A subject deleted is gone with what it held: a second deletion finds nothing, and the
/// subject ensured again is empty.
pub(crate) async fn delete_subject_removes_it_with_its_records(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "scratch", 1).await;
    publish_numbered(bus.as_ref(), &subject, "gone", 0..3).await;
    assert!(bus.delete_subject(&subject).await.expect("delete"));
    assert!(!bus.delete_subject(&subject).await.expect("delete again"));
    ensure(bus.as_ref(), &subject, 1).await;
    assert!(
        replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None)
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Backpressure and failures

/// A consumer that does not ack never holds more than `max_in_flight` deliveries, and gets more
/// only as its acks free room. Where the bus bounds subjects (embedded), a publisher also waits
/// while the subject is at capacity instead of growing memory.
pub(crate) async fn slow_consumer_applies_backpressure(harness: &mut impl Harness) {
    const MAX_IN_FLIGHT: usize = 5;
    const FREED: usize = 2;
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let config = ConsumerConfig {
        max_in_flight: MAX_IN_FLIGHT,
        ..ConsumerConfig::new(&subject, "slow")
    };
    let mut consumer = join(bus.as_ref(), config).await;
    publish_numbered(bus.as_ref(), &subject, "payment", 0..4 * MAX_IN_FLIGHT).await;

    let mut held = collect_until(consumer.as_mut(), MAX_IN_FLIGHT, deadline()).await;
    assert_eq!(held.len(), MAX_IN_FLIGHT, "held at the limit");
    assert!(
        quiet_fetch(consumer.as_mut()).await.is_empty(),
        "fetched beyond max_in_flight"
    );

    ack_all(held.drain(..FREED).collect()).await;
    let refill = collect_until(consumer.as_mut(), FREED, deadline()).await;
    assert_eq!(refill.len(), FREED, "refilled by the acks");
    assert!(
        quiet_fetch(consumer.as_mut()).await.is_empty(),
        "fetched beyond max_in_flight"
    );

    if let Some(bounded) = harness.capacity_bounded_bus(MAX_IN_FLIGHT).await {
        publisher_waits_at_capacity(bounded, MAX_IN_FLIGHT).await;
    }
}

async fn publisher_waits_at_capacity(bus: Arc<dyn Bus>, capacity: usize) {
    let subject = unique_subject("orders");
    ensure(bus.as_ref(), &subject, 1).await;
    let mut consumer = join(bus.as_ref(), ConsumerConfig::new(&subject, "slow")).await;
    publish_numbered(bus.as_ref(), &subject, "payment", 0..capacity).await;

    let mut blocked = {
        let bus = Arc::clone(&bus);
        let message = numbered(&subject, "payment", capacity);
        tokio::spawn(async move { bus.publish(message).await })
    };
    let early = tokio::time::timeout(QUIET, &mut blocked).await;
    assert!(
        early.is_err(),
        "publish into a full subject returned {early:?}"
    );

    ack_all(collect_until(consumer.as_mut(), 1, deadline()).await).await;
    let receipt = tokio::time::timeout(DEADLINE, blocked)
        .await
        .expect("publish completes once an ack makes room")
        .expect("publisher task")
        .expect("publish");
    assert!(!receipt.duplicate);
}

/// Publishes with retries on transient errors until the deadline; the receipt of the publish
/// that was finally confirmed.
async fn publish_with_retry(bus: &dyn Bus, message: Outgoing, deadline: Instant) -> PublishReceipt {
    loop {
        match bus.publish(message.clone()).await {
            Ok(receipt) => return receipt,
            Err(e) if e.kind().is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => panic!("publish to {}: {e}", message.subject),
        }
    }
}

/// Every message whose publish returned Ok is delivered, though the broker restarted while
/// messages were being published.
pub(crate) async fn broker_restart_loses_nothing_acknowledged(harness: &mut impl Harness) {
    const MESSAGES: usize = 200;
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let (progress_tx, mut progress) = watch::channel(0usize);
    let publisher = {
        let subject = subject.clone();
        tokio::spawn(async move {
            let deadline = deadline() + DEADLINE;
            let mut confirmed = HashSet::new();
            for i in 0..MESSAGES {
                let message = numbered(&subject, "payment", i);
                publish_with_retry(bus.as_ref(), message.clone(), deadline).await;
                confirmed.insert(message.payload);
                // The receiver lives as long as the scenario: ignore it being gone.
                let _ = progress_tx.send(i + 1);
            }
            confirmed
        })
    };
    tokio::time::timeout(DEADLINE, progress.wait_for(|sent| *sent >= MESSAGES / 2))
        .await
        .expect("half the messages published")
        .expect("publisher alive");
    harness.restart().await;
    let confirmed = tokio::time::timeout(DEADLINE * 2, publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher task");

    let bus = harness.bus().await;
    let mut consumer = join(bus.as_ref(), ConsumerConfig::new(&subject, "survivor")).await;
    let mut seen = HashSet::new();
    let deadline = deadline();
    while !confirmed.is_subset(&seen) && Instant::now() < deadline {
        let batch = collect_until(consumer.as_mut(), 1, deadline).await;
        seen.extend(ack_all(batch).await.into_iter().map(|r| r.payload));
    }
    let missing: Vec<_> = confirmed.difference(&seen).collect();
    assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
    assert_eq!(confirmed.len(), MESSAGES);
    let published: HashSet<Bytes> = (0..MESSAGES)
        .map(|i| numbered(&subject, "payment", i).payload)
        .collect();
    assert!(
        seen.is_subset(&published),
        "delivered something never published"
    );
}

/// A dead letter lands on `deadletter.<stage>` with its original bytes, stage, reason and
/// original subject.
pub(crate) async fn dead_letter_carries_stage_and_reason(harness: &mut impl Harness) {
    let bus = harness.bus().await;
    let stage = format!("t{:016x}", random_u64());
    let subject = dead_letter_subject(&stage);
    ensure(bus.as_ref(), &subject, 1).await;
    let original = Bytes::from_static(b"\x00\x00\x00\x00\x07\xff\xfeoriginal envelope");

    let receipt = bus
        .dead_letter(&stage, "cert.expired", "txn.submit.oi01", original.clone())
        .await
        .expect("dead letter");

    let records = replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.payload, original);
    assert_eq!(record.position, receipt.position);
    assert_eq!(
        header_value(record, header::DEAD_LETTER_STAGE),
        Some(stage.as_str())
    );
    assert_eq!(
        header_value(record, header::DEAD_LETTER_REASON),
        Some("cert.expired")
    );
    assert_eq!(
        header_value(record, header::DEAD_LETTER_SUBJECT),
        Some("txn.submit.oi01")
    );
}

// ---------------------------------------------------------------------------------------------
// Provisioning

/// A subject nothing holds is described as absent; once ensured (twice: idempotent) it is
/// described as the bus planned it, partitions included, and describing changes nothing.
pub(crate) async fn describe_reports_what_ensure_created(harness: &mut impl Harness) {
    let bus = harness.bus().await;
    let subject = unique_subject("orders");
    let spec = SubjectSpec::new(&subject).with_partitions(3);
    assert_eq!(
        bus.describe_subject(&subject).await.expect("describe"),
        None,
        "nothing holds a new subject"
    );
    assert_eq!(
        bus.describe_subject(&subject).await.expect("describe"),
        None,
        "describing does not create"
    );
    let planned = bus.planned_layout(&spec);
    for _ in 0..2 {
        bus.ensure_subject(&spec).await.expect("ensure");
        let found = bus
            .describe_subject(&subject)
            .await
            .expect("describe")
            .expect("held once ensured");
        assert!(found.holds_subject);
        assert_eq!(found.holder, planned.holder);
        assert_eq!(layout_drift(&planned, &found), Vec::<String>::new());
    }
    // A second client sees the same layout: it is read from the broker, not remembered.
    let other = harness.bus().await;
    let seen = other
        .describe_subject(&subject)
        .await
        .expect("describe")
        .expect("held");
    assert_eq!(layout_drift(&planned, &seen), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// A payload above `PAYLOAD_BYTES_MAX` fails with `MessageTooLarge` and stores nothing.
pub(crate) async fn payload_over_the_limit_is_rejected(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let oversized = Outgoing::new(&subject, vec![0u8; PAYLOAD_BYTES_MAX + 1]);

    let error = bus.publish(oversized).await.expect_err("oversized payload");

    assert_eq!(error.kind(), BusErrorKind::MessageTooLarge, "{error}");
    publish_numbered(bus.as_ref(), &subject, "payment", 0..1).await;
    let stored = replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None).await;
    assert_eq!(payloads(&stored), labelled("payment", 0..1));
}

/// A header value with a line break, which NATS cannot carry, fails with `InvalidHeader` on
/// every bus, so that a worker tested on one bus does not fail on another.
pub(crate) async fn header_no_bus_can_carry_is_rejected(harness: &mut impl Harness) {
    let (bus, subject) = fresh_subject(harness, "orders", 1).await;
    let message = Outgoing::new(&subject, "payment").with_header("trace-id", "4bf9\r\nx-evil: 1");

    let error = bus.publish(message).await.expect_err("header with CR LF");

    assert_eq!(error.kind(), BusErrorKind::InvalidHeader, "{error}");
    publish_numbered(bus.as_ref(), &subject, "payment", 0..1).await;
    let stored = replay(bus.as_ref(), &subject, ReplayFrom::Beginning, None).await;
    assert_eq!(payloads(&stored), labelled("payment", 0..1));
}
