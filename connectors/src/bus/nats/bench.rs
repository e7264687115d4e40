//! The broker's ceiling on JetStream, measured as `nats bench` does: one publisher sending
//! asynchronously with up to [`ACKS_IN_FLIGHT`] acknowledgements outstanding, and per subject
//! a pull consumer reading batches of [`FETCH_BATCH`] and acking each message without awaiting
//! a confirmation.

use std::sync::Arc;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{NatsBus, create_consumer_error};
use crate::bus::bench::{ACKS_IN_FLIGHT, BenchPlan, BenchRun, DRAIN_MAX, FETCH_BATCH, Tally};
use crate::bus::{Bus as _, BusError, BusErrorKind, SubjectSpec};

/// Aborts the consumers when the benchmark ends, whichever way.
struct Consumers(Vec<JoinHandle<()>>);

impl Drop for Consumers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn bench_error(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::with_source(
        BusErrorKind::Publish,
        format!("broker ceiling: {what}"),
        error,
    )
}

pub(super) async fn run(bus: &NatsBus, plan: &BenchPlan) -> Result<BenchRun, BusError> {
    let tally = Arc::new(Tally::new());
    let mut consumers = Consumers(Vec::new());
    for kind in &plan.kinds {
        bus.ensure_subject(&SubjectSpec::new(kind.subject.clone()))
            .await?;
        let stream = bus.stream_of(&kind.subject).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                filter_subject: kind.subject.clone(),
                max_ack_pending: i64::try_from(FETCH_BATCH * 10).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| create_consumer_error(format!("consumer of {}", kind.subject), e))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(FETCH_BATCH)
            .messages()
            .await
            .map_err(|e| bench_error("consuming", e))?;
        let tally = Arc::clone(&tally);
        consumers.0.push(tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let Ok(message) = message else { continue };
                // A plain ack: published, not confirmed.
                if message.ack().await.is_ok() {
                    tally.add(1);
                }
            }
        }));
    }
    let payloads: Vec<Bytes> = plan
        .kinds
        .iter()
        .map(|k| Bytes::from(vec![0x5a; k.bytes.max(1)]))
        .collect();

    // One message per subject first, out of the measurement: the consumers are then pulling.
    for (kind, payload) in plan.kinds.iter().zip(&payloads) {
        bus.jetstream
            .publish(kind.subject.clone(), payload.clone())
            .await
            .map_err(|e| bench_error("probe", e))?
            .await
            .map_err(|e| bench_error("probe", e))?;
    }
    let probes = plan.kinds.len() as u64;
    if !tally.wait(probes, Instant::now() + DRAIN_MAX).await {
        return Err(BusError::new(
            BusErrorKind::Timeout,
            format!(
                "broker ceiling: the consumers did not receive a first message within {DRAIN_MAX:?}"
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
        for k in plan.kinds_of(unit) {
            let mut message = PublishMessage::build().payload(payloads[k].clone());
            if let Some(id) = plan.msg_id(k, unit) {
                message = message.message_id(id);
            }
            let ack = bus
                .jetstream
                .send_publish(plan.kinds[k].subject.clone(), message)
                .await
                .map_err(|e| bench_error("publishing", e))?;
            pending.push(ack.into_future());
            published += 1;
            while pending.len() >= ACKS_IN_FLIGHT {
                if let Some(ack) = pending.next().await {
                    ack.map_err(|e| bench_error("publish acknowledgement", e))?;
                }
            }
        }
        unit += 1;
    }
    while let Some(ack) = pending.next().await {
        ack.map_err(|e| bench_error("publish acknowledgement", e))?;
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
            "async-nats: async publishes, {ACKS_IN_FLIGHT} acks outstanding; pull consumers, batches of {FETCH_BATCH}, plain acks"
        ),
    })
}
