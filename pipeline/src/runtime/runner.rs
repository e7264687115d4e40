use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcpipe_connectors::bus::{Bus, BusError, BusErrorKind, ConsumerConfig, Delivery, Outgoing};
use dcpipe_schemas::DeadLetter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::health::{Component, Health, MemberId, MemberState, Reachability};
use super::{ConfigError, Input, RunnerConfig, Stage, StageError, StageErrorKind, Verdict};
use crate::clock::system_now_ms;
use crate::reason::Reason;

/// Runs one stage on one bus until cancelled.
#[derive(Debug)]
pub struct StageRunner;

/// What ended a member.
pub type MemberResult = Result<(), StageError>;

/// Starts `config.concurrency` members of a stage's consumer group as tasks, after checking
/// the configuration; they stop when `shutdown` is cancelled, or alone on a fatal failure (each
/// then returns it). Periodic work runs in the first member only. Each member reports to
/// `health`.
pub fn spawn_stage(
    bus: Arc<dyn Bus>,
    stage: Arc<dyn Stage>,
    config: &RunnerConfig,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<MemberResult>>, ConfigError> {
    config.validate()?;
    Ok((0..config.concurrency)
        .map(|index| {
            let member = Member {
                id: MemberId {
                    stage: stage.name(),
                    owner: stage.owner().to_owned(),
                    index,
                },
                bus: Arc::clone(&bus),
                stage: Arc::clone(&stage),
                config: config.clone(),
                health: Arc::clone(health),
                shutdown: shutdown.clone(),
            };
            member
                .health
                .member(&member.id, MemberState::Detached("starting".to_owned()));
            tokio::spawn(member.run())
        })
        .collect())
}

impl StageRunner {
    /// Runs the members of a stage until `shutdown` is cancelled or every member has stopped.
    /// Returns the first fatal failure of a member, once every member has ended.
    pub async fn run(
        bus: Arc<dyn Bus>,
        stage: Arc<dyn Stage>,
        config: &RunnerConfig,
        health: &Arc<Health>,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        let members = spawn_stage(bus, stage, config, health, shutdown)
            .map_err(|e| StageError::fatal(format!("configuration: {e}")))?;
        let mut first_failure = None;
        for member in members {
            let ended = member.await.unwrap_or_else(|e| {
                Err(StageError::fatal(format!("member ended abnormally: {e}")))
            });
            if let Err(e) = ended {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// One member of a stage's consumer group.
struct Member {
    id: MemberId,
    bus: Arc<dyn Bus>,
    stage: Arc<dyn Stage>,
    config: RunnerConfig,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

/// What becomes of one delivery of a batch.
enum Fate {
    /// The stage decided it.
    Decided(Verdict),
    /// A transient failure: redelivered after a backoff.
    Retry(Arc<str>),
    /// A fatal failure this member met: given back at once, for another member.
    GiveBack(Arc<str>),
}

/// The fates of a batch, one per delivery, and the fatal failure met if any.
struct Decided {
    fates: Vec<Fate>,
    fatal: Option<StageError>,
}

impl Member {
    async fn run(self) -> MemberResult {
        let ended = self.work().await;
        match &ended {
            Ok(()) => self
                .health
                .member(&self.id, MemberState::Detached("stopped".to_owned())),
            Err(e) => {
                self.health
                    .member(&self.id, MemberState::Fatal(e.to_string()));
                tracing::error!(stage = self.id.stage, owner = %self.id.owner, member = self.id.index, error = %e, "stage member stopped on a fatal failure; its work is left to the other members");
            }
        }
        ended
    }

    /// Attaches, then consumes, decides, publishes and acks until shutdown or a fatal failure.
    async fn work(&self) -> MemberResult {
        let Some(mut consumer) = self.attach().await? else {
            return Ok(());
        };
        let stage = self.stage.as_ref();
        // Periodic work is checked between fetches, never raced against one: a fetch dropped
        // half-way could lose messages a broker client has already taken (they would come back
        // only after their ack deadline).
        let tick_period = stage.tick_interval().filter(|_| self.id.index == 0);
        let mut next_tick = tokio::time::Instant::now();
        let mut unpublished: Vec<Outgoing> = Vec::new();
        let mut fetch_failures = 0;
        tracing::info!(stage = stage.name(), owner = stage.owner(), subject = %stage.subject(), member = self.id.index, "stage started");
        loop {
            if let Some(period) = tick_period
                && tokio::time::Instant::now() >= next_tick
            {
                next_tick = tokio::time::Instant::now() + period;
                self.tick(&mut unpublished).await?;
            }
            // Only shutdown may interrupt a fetch: what was taken is then redelivered to the
            // next process after its ack deadline, which is what stopping means.
            let fetched = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                fetched = consumer.fetch(self.config.batch_max, self.config.fetch_wait) => fetched,
            };
            match fetched {
                Ok(batch) => {
                    if fetch_failures > 0 {
                        fetch_failures = 0;
                        self.health.member(&self.id, MemberState::Attached);
                    }
                    // A fetch on a client that is reconnecting may only wait, not fail.
                    let reach = match self.bus.disconnected() {
                        None => Reachability::Reachable,
                        Some(why) => Reachability::Unreachable(why),
                    };
                    self.health.reach(Component::Bus, reach);
                    if batch.is_empty() {
                        continue;
                    }
                    let batch = self.top_up(consumer.as_mut(), batch).await;
                    self.process(batch).await?;
                }
                Err(e) => {
                    let e = StageError::from(e);
                    if e.kind() == StageErrorKind::Fatal {
                        return Err(e);
                    }
                    fetch_failures += 1;
                    let why = e.to_string();
                    tracing::warn!(stage = stage.name(), error = %e, "fetch failed");
                    self.health
                        .reach(Component::Bus, Reachability::Unreachable(why.clone()));
                    self.health.member(&self.id, MemberState::Detached(why));
                    if !self.pause(self.config.backoff(fetch_failures)).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(
            stage = stage.name(),
            owner = stage.owner(),
            member = self.id.index,
            "stage stopped"
        );
        Ok(())
    }

    /// Joins the stage's consumer group, retrying with backoff while the bus is unreachable.
    /// `None` when shutdown came first.
    async fn attach(
        &self,
    ) -> Result<Option<Box<dyn dcpipe_connectors::bus::Consumer>>, StageError> {
        let mut consumer_config = ConsumerConfig::new(self.stage.subject(), self.stage.group());
        consumer_config.ack_wait = self.config.ack_wait;
        consumer_config.max_deliver = self.config.max_deliver;
        consumer_config.max_in_flight = self.config.batch_max * 2;
        let mut attempt = 0;
        loop {
            match self.bus.consumer(consumer_config.clone()).await {
                Ok(consumer) => {
                    self.health.member(&self.id, MemberState::Attached);
                    self.health.reach(Component::Bus, Reachability::Reachable);
                    return Ok(Some(consumer));
                }
                Err(e) => {
                    let e = StageError::from(e);
                    if e.kind() != StageErrorKind::Transient {
                        return Err(e);
                    }
                    attempt += 1;
                    let why = e.to_string();
                    tracing::warn!(stage = self.id.stage, error = %e, "cannot join the consumer group; retried");
                    self.health
                        .reach(Component::Bus, Reachability::Unreachable(why.clone()));
                    self.health.member(&self.id, MemberState::Detached(why));
                    if !self.pause(self.config.backoff(attempt)).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Waits `delay`; false when shutdown came first.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// After a fetch that did not fill a batch, waits up to `linger` for more.
    async fn top_up(
        &self,
        consumer: &mut dyn dcpipe_connectors::bus::Consumer,
        mut batch: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let config = &self.config;
        if batch.len() < config.batch_max && !config.linger.is_zero() {
            let more = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Ok(Vec::new()),
                more = consumer.fetch(config.batch_max - batch.len(), config.linger) => more,
            };
            // A failed top-up is not an error: the batch in hand is decided.
            if let Ok(more) = more {
                batch.extend(more);
            }
        }
        batch
    }

    /// Runs the periodic work and publishes its outputs. Outputs that could not be published
    /// are kept and published first next time: a tick's effects are already in the database.
    async fn tick(&self, unpublished: &mut Vec<Outgoing>) -> MemberResult {
        let stage = self.stage.as_ref();
        match stage.tick().await {
            Ok(outputs) => unpublished.extend(outputs),
            Err(e) => {
                self.count_failure(e.kind());
                match e.kind() {
                    StageErrorKind::Fatal => return Err(e),
                    StageErrorKind::Transient => {
                        tracing::warn!(stage = stage.name(), error = %e, "tick failed; retried next tick");
                    }
                    // No input to dead-letter: the record behind it is announced again when
                    // the stage restarts, and an operator has to look.
                    _ => {
                        tracing::error!(stage = stage.name(), error = %e, "tick output refused; retried next tick");
                    }
                }
            }
        }
        if !unpublished.is_empty() {
            if let Err(e) = publish_all(self.bus.as_ref(), unpublished.clone()).await {
                let e = StageError::from(e);
                if e.kind() == StageErrorKind::Fatal {
                    return Err(e);
                }
                tracing::warn!(stage = stage.name(), error = %e, pending = unpublished.len(), "tick outputs not published; retried next tick");
            } else {
                unpublished.clear();
            }
        }
        Ok(())
    }

    /// Decides a batch, publishes what was decided, then acks, naks or dead-letters each
    /// delivery. Returns the fatal failure met, if any, after giving the batch back.
    async fn process(&self, batch: Vec<Delivery>) -> MemberResult {
        let started = Instant::now();
        let Decided { fates, mut fatal } = {
            let inputs: Vec<Input<'_>> = batch
                .iter()
                .map(|d| Input {
                    subject: &d.record.subject,
                    payload: &d.record.payload,
                    delivery_count: d.delivery_count,
                    position: d.record.position,
                })
                .collect();
            self.decide(&inputs).await
        };
        let mut settled: Vec<(Delivery, Fate)> = batch.into_iter().zip(fates).collect();
        self.count_verdicts(&settled);
        match self.publish_decided(&settled).await {
            Ok(()) => {}
            Err(e) => match e.kind() {
                StageErrorKind::Item(_) => {
                    // One delivery's outputs are refused: publish delivery by delivery.
                    settled = self.publish_each(settled, &mut fatal).await;
                }
                StageErrorKind::Fatal => {
                    let why: Arc<str> = Arc::from(e.to_string());
                    settled = settled
                        .into_iter()
                        .map(|(d, _)| (d, Fate::GiveBack(Arc::clone(&why))))
                        .collect();
                    fatal.get_or_insert(e);
                }
                _ => {
                    tracing::warn!(stage = self.id.stage, error = %e, "outputs not published; batch given back");
                    let why: Arc<str> = Arc::from(e.to_string());
                    settled = settled
                        .into_iter()
                        .map(|(d, fate)| match fate {
                            Fate::Decided(_) => (d, Fate::Retry(Arc::clone(&why))),
                            other => (d, other),
                        })
                        .collect();
                }
            },
        }
        // Settled together: after a broker restart the confirmations of a whole batch are
        // waited for once, not one after the other.
        futures::future::join_all(
            settled
                .into_iter()
                .map(|(delivery, fate)| self.settle(delivery, fate)),
        )
        .await;
        metrics::histogram!("dcpipe_stage_batch_seconds", "stage" => self.id.stage)
            .record(started.elapsed().as_secs_f64());
        fatal.map_or(Ok(()), Err)
    }

    /// Hands the batch to the stage. On an item failure the failing part is split in halves
    /// until the failing items are alone, each dead-lettered with the failure's reason; the
    /// rest is decided normally. A part that fails transiently is retried later; after a fatal
    /// failure nothing more is handed to the stage.
    async fn decide(&self, inputs: &[Input<'_>]) -> Decided {
        let stage = self.stage.as_ref();
        let mut fates: Vec<Option<Fate>> = inputs.iter().map(|_| None).collect();
        let mut fatal: Option<StageError> = None;
        // Parts still to decide, the next on top: a part's first half before its second.
        let mut parts: Vec<Range<usize>> = Vec::new();
        parts.push(0..inputs.len());
        while let Some(part) = parts.pop() {
            if fatal.is_some() {
                mark(
                    &mut fates,
                    part,
                    Fate::GiveBack,
                    "not decided: the member stopped",
                );
                continue;
            }
            let failure = match stage.handle(&inputs[part.clone()]).await {
                Ok(verdicts) if verdicts.len() == part.len() => {
                    self.health.reach(
                        Component::Ledger(self.id.owner.clone()),
                        Reachability::Reachable,
                    );
                    for (slot, verdict) in fates[part].iter_mut().zip(verdicts) {
                        *slot = Some(match verdict {
                            Verdict::Retry { why } => Fate::Retry(Arc::from(why)),
                            verdict => Fate::Decided(verdict),
                        });
                    }
                    continue;
                }
                Ok(verdicts) => StageError::fatal(format!(
                    "the stage returned {} verdicts for {} inputs",
                    verdicts.len(),
                    part.len()
                )),
                Err(e) => e,
            };
            self.count_failure(failure.kind());
            match failure.kind() {
                StageErrorKind::Item(reason) if part.len() == 1 => {
                    fates[part.start] = Some(Fate::Decided(Verdict::dead_letter(
                        reason,
                        failure.to_string(),
                    )));
                }
                StageErrorKind::Item(_) => {
                    let middle = part.start + part.len() / 2;
                    parts.push(middle..part.end);
                    parts.push(part.start..middle);
                }
                StageErrorKind::Transient => {
                    tracing::warn!(stage = stage.name(), error = %failure, inputs = part.len(), "batch failed; given back for redelivery");
                    if let Some(ledger) =
                        failure.source_as::<dcpipe_connectors::ledger::LedgerError>()
                    {
                        self.health.reach(
                            Component::Ledger(self.id.owner.clone()),
                            Reachability::Unreachable(ledger.to_string()),
                        );
                    }
                    let why = failure.to_string();
                    mark(&mut fates, part, Fate::Retry, &why);
                }
                // Fatal, or a kind this version does not know: nothing more is decided here.
                _ => {
                    let why = failure.to_string();
                    mark(&mut fates, part, Fate::GiveBack, &why);
                    fatal = Some(failure);
                }
            }
        }
        Decided {
            fates: fates
                .into_iter()
                .map(|fate| fate.unwrap_or_else(|| Fate::GiveBack(Arc::from("not decided"))))
                .collect(),
            fatal,
        }
    }

    /// Publishes the dead letters, then the outputs, of every decided delivery.
    async fn publish_decided(&self, settled: &[(Delivery, Fate)]) -> Result<(), StageError> {
        let mut outputs = Vec::new();
        for (delivery, fate) in settled {
            match fate {
                Fate::Decided(Verdict::Done(out)) => outputs.extend(out.iter().cloned()),
                Fate::Decided(Verdict::DeadLetter {
                    reason,
                    detail,
                    outputs: out,
                }) => {
                    self.dead_letter(delivery, *reason, detail).await?;
                    outputs.extend(out.iter().cloned());
                }
                Fate::Decided(Verdict::Retry { .. }) | Fate::Retry(_) | Fate::GiveBack(_) => {}
            }
        }
        publish_all(self.bus.as_ref(), outputs)
            .await
            .map_err(StageError::from)
    }

    /// Publishes delivery by delivery after a whole batch's outputs were refused: a delivery
    /// whose own outputs are refused is dead-lettered; the others are published.
    async fn publish_each(
        &self,
        settled: Vec<(Delivery, Fate)>,
        fatal: &mut Option<StageError>,
    ) -> Vec<(Delivery, Fate)> {
        let mut result = Vec::with_capacity(settled.len());
        for (delivery, fate) in settled {
            let fate = match fate {
                Fate::Decided(verdict) if fatal.is_none() => {
                    self.publish_one(&delivery, verdict, fatal).await
                }
                Fate::Decided(_) => Fate::GiveBack(Arc::from("not published: the member stopped")),
                other => other,
            };
            result.push((delivery, fate));
        }
        result
    }

    /// Publishes one delivery's dead letter and outputs; what becomes of the delivery.
    async fn publish_one(
        &self,
        delivery: &Delivery,
        verdict: Verdict,
        fatal: &mut Option<StageError>,
    ) -> Fate {
        if let Verdict::Retry { why } = verdict {
            return Fate::Retry(Arc::from(why));
        }
        // Once published, the delivery is only to be acked.
        let published = Fate::Decided(Verdict::Done(Vec::new()));
        let outcome = async {
            let outputs = match verdict {
                Verdict::Done(outputs) => outputs,
                Verdict::Retry { .. } => Vec::new(),
                Verdict::DeadLetter {
                    reason,
                    detail,
                    outputs,
                } => {
                    self.dead_letter(delivery, reason, &detail).await?;
                    outputs
                }
            };
            publish_all(self.bus.as_ref(), outputs)
                .await
                .map_err(StageError::from)
        }
        .await;
        let Err(e) = outcome else {
            return published;
        };
        let why: Arc<str> = Arc::from(e.to_string());
        match e.kind() {
            StageErrorKind::Item(reason) => match self.dead_letter(delivery, reason, &why).await {
                Ok(()) => published,
                Err(e) => Fate::Retry(Arc::from(e.to_string())),
            },
            StageErrorKind::Transient => Fate::Retry(why),
            _ => {
                fatal.get_or_insert(e);
                Fate::GiveBack(why)
            }
        }
    }

    /// Acks a decided delivery; naks or dead-letters one that failed.
    async fn settle(&self, delivery: Delivery, fate: Fate) {
        let stage = self.id.stage;
        let max_deliver = self.config.max_deliver;
        let (last_resort, why, delay) = match fate {
            Fate::Decided(_) => {
                if let Err(e) = delivery.ack().await {
                    // Redelivered later; the stage answers it again idempotently.
                    tracing::warn!(stage, error = %e, "ack failed");
                }
                return;
            }
            Fate::Retry(why) => (
                Reason::StageRetriesExhausted,
                why,
                self.config.backoff(delivery.delivery_count),
            ),
            Fate::GiveBack(why) => (Reason::StageFatal, why, Duration::ZERO),
        };
        if delivery.delivery_count >= max_deliver {
            // The bus will not deliver it again: dead-lettered, so nothing is dropped silently.
            match self.dead_letter(&delivery, last_resort, &why).await {
                Ok(()) => {
                    if let Err(e) = delivery.ack().await {
                        tracing::warn!(stage, error = %e, "ack failed");
                    }
                }
                Err(e) => {
                    tracing::error!(stage, error = %e, "dead letter not published; left for redelivery");
                }
            }
        } else if let Err(e) = delivery.nak(delay).await {
            tracing::warn!(stage, error = %e, "nak failed; redelivered after the ack wait");
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: Reason,
        detail: &str,
    ) -> Result<(), StageError> {
        let stage = self.id.stage;
        if reason.is_contradiction() {
            tracing::error!(stage, owner = %self.id.owner, %reason, %detail, "contradiction between institutions; dead-lettered");
            metrics::counter!("dcpipe_contradictions_total", "stage" => stage, "reason" => reason.as_str()).increment(1);
        } else {
            tracing::info!(stage, %reason, %detail, "dead letter");
        }
        let record = &delivery.record;
        let mut letter = DeadLetter {
            original: record.payload.to_vec(),
            original_size_bytes: i64::try_from(record.payload.len()).unwrap_or(i64::MAX),
            subject: record.subject.clone(),
            stage: stage.to_owned(),
            reason_code: reason.as_str().to_owned(),
            detail: detail.to_owned(),
            delivery_count: i32::try_from(delivery.delivery_count).unwrap_or(i32::MAX),
            partition: i32::try_from(record.position.partition).unwrap_or(i32::MAX),
            offset: i64::try_from(record.position.offset).unwrap_or(i64::MAX),
            received_at_ms: system_now_ms(),
            headers: record.headers.iter().cloned().collect(),
        };
        letter.truncate_to_limits();
        let payload = dcpipe_schemas::encode(&letter).map_err(|e| {
            StageError::from(BusError::new(
                BusErrorKind::Publish,
                format!("dead letter does not encode: {e}"),
            ))
        })?;
        metrics::counter!("dcpipe_dead_letters_total", "stage" => stage, "reason" => reason.as_str()).increment(1);
        self.bus
            .dead_letter(
                stage,
                reason.as_str(),
                &record.subject,
                Bytes::from(payload),
            )
            .await
            .map(|_| ())
            .map_err(StageError::from)
    }

    /// Counts a batch's verdicts once (a metric's key is built and looked up on every call).
    fn count_verdicts(&self, settled: &[(Delivery, Fate)]) {
        let (mut done, mut dead) = (0u64, 0u64);
        for (_, fate) in settled {
            match fate {
                Fate::Decided(Verdict::Done(_)) => done += 1,
                Fate::Decided(Verdict::DeadLetter { .. }) => dead += 1,
                Fate::Decided(Verdict::Retry { .. }) | Fate::Retry(_) | Fate::GiveBack(_) => {}
            }
        }
        let stage = self.id.stage;
        if done > 0 {
            metrics::counter!("dcpipe_stage_messages_total", "stage" => stage, "verdict" => "done")
                .increment(done);
        }
        if dead > 0 {
            metrics::counter!("dcpipe_stage_messages_total", "stage" => stage, "verdict" => "dead_letter")
                .increment(dead);
        }
    }

    fn count_failure(&self, kind: StageErrorKind) {
        metrics::counter!("dcpipe_stage_failures_total", "stage" => self.id.stage, "kind" => kind.label())
            .increment(1);
    }
}

/// Sets the fate of every input of `part` that has none yet.
fn mark(
    fates: &mut [Option<Fate>],
    part: Range<usize>,
    fate: impl Fn(Arc<str>) -> Fate,
    why: &str,
) {
    let why: Arc<str> = Arc::from(why);
    for slot in &mut fates[part] {
        if slot.is_none() {
            *slot = Some(fate(Arc::clone(&why)));
        }
    }
}

/// Publishes outputs, retrying transient failures a bounded number of times.
async fn publish_all(bus: &dyn Bus, outputs: Vec<Outgoing>) -> Result<(), BusError> {
    /// Attempts per publish round before the batch is given back.
    const PUBLISH_ATTEMPTS_MAX: u32 = 3;
    /// Pause before the second attempt; the third waits twice as long.
    const PUBLISH_RETRY_DELAY: Duration = Duration::from_millis(50);
    if outputs.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match bus.publish_many(outputs.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind().is_transient() && attempt < PUBLISH_ATTEMPTS_MAX => {
                tokio::time::sleep(PUBLISH_RETRY_DELAY * attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
}
