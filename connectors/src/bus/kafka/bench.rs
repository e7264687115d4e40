//! The broker's ceiling on Kafka, with librdkafka at its best: an idempotent producer with
//! `acks=all` that lingers to fill large batches, with up to [`ACKS_IN_FLIGHT`] records
//! awaiting their delivery report, and one consumer of its own group reading every subject and
//! committing its offsets in the background (`enable.auto.commit`), never record by record.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::KafkaBus;
use super::client::{TracingContext, client_config};
use crate::bus::bench::{ACKS_IN_FLIGHT, BenchPlan, BenchRun, DRAIN_MAX, FETCH_BATCH, Tally};
use crate::bus::{Bus as _, BusError, BusErrorKind, SubjectSpec, header};

/// How long the producer waits to fill a batch.
const LINGER_MS: u32 = 5;

fn bench_error(what: &str, error: KafkaError) -> BusError {
    BusError::with_source(
        BusErrorKind::Publish,
        format!("broker ceiling: {what}"),
        error,
    )
}

/// Aborts the consumer when the benchmark ends, whichever way.
struct ConsumerTask(JoinHandle<()>);

impl Drop for ConsumerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn run(bus: &KafkaBus, plan: &BenchPlan) -> Result<BenchRun, BusError> {
    for kind in &plan.kinds {
        bus.ensure_subject(
            &SubjectSpec::new(kind.subject.clone()).with_partitions(plan.partitions),
        )
        .await?;
    }
    let producer: FutureProducer<TracingContext> = client_config(
        &bus.servers,
        &[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("linger.ms", LINGER_MS.to_string()),
            ("batch.num.messages", "10000".into()),
            ("batch.size", "1048576".into()),
            (
                "queue.buffering.max.messages",
                (4 * ACKS_IN_FLIGHT).to_string(),
            ),
        ],
        &bus.options,
    )
    .create_with_context(TracingContext)
    .map_err(|e| bench_error("producer settings", e))?;
    let consumer: StreamConsumer<TracingContext> = client_config(
        &bus.servers,
        &[
            ("group.id", format!("dcpipe-bench-{}", uuid::Uuid::new_v4())),
            ("enable.auto.commit", "true".into()),
            ("auto.commit.interval.ms", "1000".into()),
            ("auto.offset.reset", "earliest".into()),
            ("fetch.wait.max.ms", "10".into()),
        ],
        &bus.options,
    )
    .create_with_context(TracingContext)
    .map_err(|e| bench_error("consumer settings", e))?;
    let topics: Vec<&str> = plan.kinds.iter().map(|k| k.subject.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| bench_error("subscribing", e))?;
    let tally = Arc::new(Tally::new());
    let counting = Arc::clone(&tally);
    let _consumer = ConsumerTask(tokio::spawn(async move {
        let mut records = consumer.stream();
        while let Some(record) = records.next().await {
            if record.is_ok() {
                counting.add(1);
            }
        }
    }));
    let payloads: Vec<Bytes> = plan
        .kinds
        .iter()
        .map(|k| Bytes::from(vec![0x5a; k.bytes.max(1)]))
        .collect();

    // One record per topic first, out of the measurement: the group has joined by then.
    let mut probes = Vec::new();
    for (kind, payload) in plan.kinds.iter().zip(&payloads) {
        let record = FutureRecord::<(), [u8]>::to(&kind.subject).payload(payload.as_ref());
        probes.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| bench_error("probe", e))?,
        );
    }
    for probe in probes {
        delivered(probe.await)?;
    }
    if !tally
        .wait(plan.kinds.len() as u64, Instant::now() + DRAIN_MAX)
        .await
    {
        return Err(BusError::new(
            BusErrorKind::Timeout,
            format!(
                "broker ceiling: the consumer did not receive a first record within {DRAIN_MAX:?}"
            ),
        ));
    }
    tally.reset();

    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut pending = FuturesUnordered::new();
    let mut published = 0u64;
    let mut unit = 0u64;
    while unit < plan.units_max && Instant::now() < deadline {
        let key = unit.to_be_bytes();
        for k in plan.kinds_of(unit) {
            let kind = &plan.kinds[k];
            let msg_id = plan.msg_id(k, unit);
            loop {
                let mut record = FutureRecord::to(&kind.subject)
                    .payload(payloads[k].as_ref())
                    .key(&key[..]);
                if let Some(id) = &msg_id {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: header::MSG_ID,
                        value: Some(id.as_bytes()),
                    }));
                }
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        match pending.next().await {
                            Some(result) => delivered(result)?,
                            None => tokio::task::yield_now().await,
                        }
                    }
                    Err((e, _)) => return Err(bench_error("publishing", e)),
                }
            }
            published += 1;
            while pending.len() >= ACKS_IN_FLIGHT {
                if let Some(result) = pending.next().await {
                    delivered(result)?;
                }
            }
        }
        unit += 1;
    }
    while let Some(result) = pending.next().await {
        delivered(result)?;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    tally.wait(published, Instant::now() + DRAIN_MAX).await;
    let seconds = started.elapsed().as_secs_f64();
    Ok(BenchRun {
        published,
        consumed: tally.consumed().min(published),
        seconds,
        publish_seconds,
        acks_in_flight: ACKS_IN_FLIGHT,
        fetch_batch: FETCH_BATCH,
        method: format!(
            "librdkafka: idempotent producer, acks=all, linger.ms={LINGER_MS}, {ACKS_IN_FLIGHT} records awaiting their report; one consumer, offsets auto-committed"
        ),
    })
}

/// The delivery report of one record, as a bus result.
fn delivered(
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), BusError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(bench_error("publish acknowledgement", e)),
        Err(_) => Err(BusError::new(
            BusErrorKind::Closed,
            "broker ceiling: producer closed",
        )),
    }
}
