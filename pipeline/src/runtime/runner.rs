use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, BusError, ConsumerConfig, Delivery, Outgoing};
use dcpipe_schemas::DeadLetter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Input, Stage, Verdict};
use crate::clock::system_now_ms;

/// Reason code of a message whose deliveries ran out while its stage kept failing.
pub const REASON_RETRIES_EXHAUSTED: &str = "stage.retries_exhausted";

/// How a stage consumes.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most messages handled together (one ledger transaction, one publish round).
    pub batch_max: usize,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
    /// Redelivery deadline for an unacked message.
    pub ack_wait: Duration,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: u32,
    /// Delay before a failed batch is redelivered.
    pub retry_delay: Duration,
    /// Members of the stage's consumer group run by this process: batches decided in
    /// parallel, on as many cores.
    pub concurrency: usize,
    /// After a fetch that did not fill a batch, how long to wait for more before deciding it:
    /// fewer, larger ledger transactions under load for at most this much latency.
    pub linger: Duration,
}

impl RunnerConfig {
    /// Default largest batch.
    pub const BATCH_MAX_DEFAULT: usize = 256;
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_max: Self::BATCH_MAX_DEFAULT,
            fetch_wait: Duration::from_millis(100),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_delay: Duration::from_millis(500),
            concurrency: 1,
            linger: Duration::from_millis(2),
        }
    }
}

/// Runs one stage on one bus until cancelled.
#[derive(Debug)]
pub struct StageRunner;

/// Starts `config.concurrency` members of a stage's consumer group as tasks; they stop when
/// `shutdown` is cancelled. Periodic work runs in the first member only.
pub fn spawn_stage(
    bus: Arc<dyn Bus>,
    stage: Arc<dyn Stage>,
    config: RunnerConfig,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<Result<(), BusError>>> {
    (0..config.concurrency.max(1))
        .map(|member| {
            let (bus, stage, config, shutdown) = (
                Arc::clone(&bus),
                Arc::clone(&stage),
                config.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                StageRunner::run_member(bus, stage, config, shutdown, member == 0).await
            })
        })
        .collect()
}

impl StageRunner {
    /// Consumes, decides, publishes and acks until `shutdown` is cancelled. Returns an error only
    /// when the consumer cannot be created.
    pub async fn run(
        bus: Arc<dyn Bus>,
        stage: Arc<dyn Stage>,
        config: RunnerConfig,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let members: Vec<_> = spawn_stage(bus, stage, config, shutdown)
            .into_iter()
            .collect();
        for member in members {
            member.await.map_err(|e| {
                BusError::new(
                    dcpipe_connectors::bus::BusErrorKind::Closed,
                    format!("stage member ended abnormally: {e}"),
                )
            })??;
        }
        Ok(())
    }

    /// One member of the stage's group; `ticks` says whether it also runs the periodic work.
    async fn run_member(
        bus: Arc<dyn Bus>,
        stage: Arc<dyn Stage>,
        config: RunnerConfig,
        shutdown: CancellationToken,
        ticks: bool,
    ) -> Result<(), BusError> {
        let mut consumer_config = ConsumerConfig::new(stage.subject(), stage.group());
        consumer_config.ack_wait = config.ack_wait;
        consumer_config.max_deliver = config.max_deliver;
        consumer_config.max_in_flight = config.batch_max.max(1) * 2;
        let mut consumer = bus.consumer(consumer_config).await?;
        // Periodic work is checked between fetches, never raced against one: a fetch dropped
        // half-way could lose messages a broker client has already taken (they would come back
        // only after their ack deadline).
        let tick_period = stage.tick_interval().filter(|_| ticks);
        let mut next_tick = tokio::time::Instant::now();
        let mut unpublished: Vec<Outgoing> = Vec::new();
        tracing::info!(stage = stage.name(), subject = %stage.subject(), "stage started");
        loop {
            if let Some(period) = tick_period
                && tokio::time::Instant::now() >= next_tick
            {
                next_tick = tokio::time::Instant::now() + period;
                // Outputs of a tick that could not be published are kept and published first
                // next time: a tick's effects are already in the database.
                match stage.tick().await {
                    Ok(outputs) => unpublished.extend(outputs),
                    Err(e) => {
                        tracing::warn!(stage = stage.name(), error = %e, "tick failed; retried next tick")
                    }
                }
                if !unpublished.is_empty() {
                    match publish_all(bus.as_ref(), unpublished.clone()).await {
                        Ok(()) => unpublished.clear(),
                        Err(e) => tracing::warn!(
                            stage = stage.name(),
                            error = %e,
                            pending = unpublished.len(),
                            "tick outputs not published; retried next tick"
                        ),
                    }
                }
            }
            // Only shutdown may interrupt a fetch: what was taken is then redelivered to the
            // next process after its ack deadline, which is what stopping means.
            let fetched = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                fetched = consumer.fetch(config.batch_max, config.fetch_wait) => fetched,
            };
            match fetched {
                Ok(batch) if batch.is_empty() => {}
                Ok(mut batch) => {
                    if batch.len() < config.batch_max && !config.linger.is_zero() {
                        let more = tokio::select! {
                            biased;
                            () = shutdown.cancelled() => Ok(Vec::new()),
                            more = consumer.fetch(config.batch_max - batch.len(), config.linger) => more,
                        };
                        // A failed top-up is not an error: the batch in hand is decided.
                        if let Ok(more) = more {
                            batch.extend(more);
                        }
                    }
                    process(bus.as_ref(), stage.as_ref(), &config, batch).await
                }
                Err(e) => {
                    tracing::warn!(stage = stage.name(), error = %e, "fetch failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(config.retry_delay) => {}
                    }
                }
            }
        }
        tracing::info!(stage = stage.name(), "stage stopped");
        Ok(())
    }
}

async fn process(bus: &dyn Bus, stage: &dyn Stage, config: &RunnerConfig, batch: Vec<Delivery>) {
    let started = Instant::now();
    let inputs: Vec<Input<'_>> = batch
        .iter()
        .map(|d| Input {
            subject: &d.record.subject,
            payload: &d.record.payload,
            delivery_count: d.delivery_count,
            position: d.record.position,
        })
        .collect();
    let decided = stage.handle(&inputs).await;
    let verdicts = match decided {
        Ok(verdicts) if verdicts.len() == batch.len() => verdicts,
        Ok(verdicts) => {
            tracing::error!(
                stage = stage.name(),
                inputs = batch.len(),
                verdicts = verdicts.len(),
                "stage returned the wrong number of verdicts; batch given back"
            );
            give_back(bus, stage, config, batch, "verdict count mismatch").await;
            return;
        }
        Err(e) => {
            tracing::warn!(stage = stage.name(), error = %e, "batch failed; given back for redelivery");
            give_back(bus, stage, config, batch, &e.to_string()).await;
            return;
        }
    };
    let mut outputs = Vec::new();
    let mut dead_letters = Vec::new();
    for (delivery, verdict) in batch.iter().zip(verdicts) {
        match verdict {
            Verdict::Done(out) => outputs.extend(out),
            Verdict::DeadLetter {
                reason_code,
                detail,
                outputs: out,
            } => {
                tracing::info!(stage = stage.name(), reason = %reason_code, %detail, "dead letter");
                outputs.extend(out);
                dead_letters.push((delivery, reason_code, detail));
            }
        }
    }
    // Counted once per batch: a metric's key is built and looked up on every call.
    let dead_lettered = dead_letters.len() as u64;
    metrics::counter!("dcpipe_stage_messages_total", "stage" => stage.name().to_owned(), "verdict" => "done")
        .increment(batch.len() as u64 - dead_lettered);
    if dead_lettered > 0 {
        metrics::counter!("dcpipe_stage_messages_total", "stage" => stage.name().to_owned(), "verdict" => "dead_letter")
            .increment(dead_lettered);
    }
    let published = async {
        for (delivery, reason_code, detail) in &dead_letters {
            dead_letter(bus, stage.name(), delivery, reason_code, detail).await?;
        }
        publish_all(bus, outputs).await
    }
    .await;
    match published {
        Ok(()) => {
            for delivery in batch {
                if let Err(e) = delivery.ack().await {
                    // Redelivered later; the stage answers it again idempotently.
                    tracing::warn!(stage = stage.name(), error = %e, "ack failed");
                }
            }
            metrics::histogram!("dcpipe_stage_batch_seconds", "stage" => stage.name().to_owned())
                .record(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            tracing::warn!(stage = stage.name(), error = %e, "outputs not published; batch given back");
            give_back(bus, stage, config, batch, &e.to_string()).await;
        }
    }
}

/// Naks a failed batch; a message whose deliveries are exhausted is dead-lettered and acked
/// instead, so nothing is dropped silently.
async fn give_back(
    bus: &dyn Bus,
    stage: &dyn Stage,
    config: &RunnerConfig,
    batch: Vec<Delivery>,
    why: &str,
) {
    for delivery in batch {
        if delivery.delivery_count >= config.max_deliver {
            match dead_letter(bus, stage.name(), &delivery, REASON_RETRIES_EXHAUSTED, why).await {
                Ok(()) => {
                    let _ = delivery.ack().await;
                }
                Err(e) => {
                    tracing::error!(stage = stage.name(), error = %e, "dead letter not published; left for redelivery");
                }
            }
        } else if let Err(e) = delivery.nak(config.retry_delay).await {
            tracing::warn!(stage = stage.name(), error = %e, "nak failed; redelivered after ack wait");
        }
    }
}

async fn dead_letter(
    bus: &dyn Bus,
    stage: &str,
    delivery: &Delivery,
    reason_code: &str,
    detail: &str,
) -> Result<(), BusError> {
    let record = &delivery.record;
    let mut letter = DeadLetter {
        original: record.payload.to_vec(),
        original_size_bytes: i64::try_from(record.payload.len()).unwrap_or(i64::MAX),
        subject: record.subject.clone(),
        stage: stage.to_owned(),
        reason_code: reason_code.to_owned(),
        detail: detail.to_owned(),
        delivery_count: i32::try_from(delivery.delivery_count).unwrap_or(i32::MAX),
        partition: i32::try_from(record.position.partition).unwrap_or(i32::MAX),
        offset: i64::try_from(record.position.offset).unwrap_or(i64::MAX),
        received_at_ms: system_now_ms(),
        headers: record.headers.iter().cloned().collect(),
    };
    letter.truncate_to_limits();
    let payload = dcpipe_schemas::encode(&letter).map_err(|e| {
        BusError::new(
            dcpipe_connectors::bus::BusErrorKind::Publish,
            format!("dead letter does not encode: {e}"),
        )
    })?;
    metrics::counter!("dcpipe_dead_letters_total", "stage" => stage.to_owned(), "reason" => reason_code.to_owned()).increment(1);
    bus.dead_letter(stage, reason_code, &record.subject, Bytes::from(payload))
        .await
        .map(|_| ())
}

/// Publishes outputs, retrying transient failures a bounded number of times.
async fn publish_all(bus: &dyn Bus, outputs: Vec<Outgoing>) -> Result<(), BusError> {
    /// Attempts per publish round before the batch is given back.
    const PUBLISH_ATTEMPTS_MAX: u32 = 3;
    if outputs.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match bus.publish_many(outputs.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind().is_transient() && attempt < PUBLISH_ATTEMPTS_MAX => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
