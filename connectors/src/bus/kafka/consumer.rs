//! Competing consumers on Kafka, with the per-message acks of the bus interface.
//!
//! Kafka keeps one committed offset per partition and group, not per-message acks. Each member
//! therefore tracks the records it received per partition and commits, for each partition, the
//! lowest offset not yet settled (acked, or given up after `max_deliver`): everything below
//! a commit is processed. Commits go out every [`COMMIT_INTERVAL`], before partitions are taken
//! away in a rebalance, and when the member is dropped. An ack is recorded in memory at once
//! and committed within that interval: a crash in between means redelivery, not loss.
//!
//! Redelivery is local: a nak, a delivery not acked within `ack_wait`, or one dropped without
//! ack or nak makes the member hand the record out again from memory with `delivery_count`
//! incremented, up to `max_deliver`.
//! After a crash, Kafka hands the uncommitted records to a member again and their count
//! starts again at 1: the count is per member life, not stored in Kafka.
//!
//! A background task polls the group continuously, so that rebalances complete while the
//! application is busy. Records arrive on one queue per partition, split from the group's
//! queue: while the member tracks `max_in_flight` unsettled records the task stops reading
//! them, librdkafka stops fetching once its per-partition prefetch is full, and memory stays
//! bounded without discarding what was fetched (pausing partitions would drop the prefetch and
//! fetch it again).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, Statistics, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::{ClosedOnThread, TracingContext, client_config};
use super::wire;
use crate::bus::metrics::SubjectMetrics;
use crate::bus::{
    Acker, BusError, BusErrorKind, Consumer, ConsumerConfig, Delivery, KafkaOptions, Record,
    StartAt,
};

/// How often the backlog gauge is updated, ms.
const BACKLOG_INTERVAL_MS: u32 = 1000;
/// How often settled records are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// A commit without an answer for this long no longer holds the next one back.
const COMMIT_ANSWER_MAX: Duration = Duration::from_secs(30);
/// Time allowed to join the group and receive a first assignment.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to the metadata lookup of a new member.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to leave the group when a member is dropped.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two checks of the assignment while leaving.
const LEAVE_POLL: Duration = Duration::from_millis(50);
/// Pause after a consumer error before polling again.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes librdkafka may prefetch per partition (`queued.max.messages.kbytes`).
const PREFETCH_KBYTES_MAX: usize = 4 * 1024;
/// Records librdkafka prefetches per partition (`queued.min.messages`), at most.
const PREFETCH_MESSAGES_MAX: usize = 10_000;
/// Longest time a broker may hold a fetch that finds nothing new (`fetch.wait.max.ms`). Some
/// brokers (tansu) hold every fetch this long, so it bounds the latency of each fetch.
pub(super) const FETCH_WAIT_MAX_MS: u32 = 100;
/// Pause of librdkafka's fetcher once a partition's prefetch is full (`fetch.queue.backoff.ms`);
/// its default (1 s) would stall a member for that long each time it catches up.
const FETCH_QUEUE_BACKOFF_MS: u32 = 10;

/// Where a tracked record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Waiting to be handed out.
    Ready,
    /// Handed out; redelivered if not settled by `deadline`.
    Held { deadline: Instant },
    /// Naked; handed out again at `due`.
    Waiting { due: Instant },
    /// Acked, or given up after `max_deliver`: may be committed.
    Done,
}

#[derive(Debug)]
struct Slot {
    record: Record,
    delivery_count: u32,
    state: SlotState,
}

/// The records of one assigned partition.
#[derive(Debug)]
struct Partition {
    /// Changes when the partition is assigned anew, so that acks of an earlier assignment are
    /// recognised as stale.
    epoch: u64,
    slots: BTreeMap<i64, Slot>,
    /// One past the highest offset received; -1 before the first record.
    next_offset: i64,
    /// The offset last committed by this member; -1 when none.
    committed: i64,
}

impl Partition {
    fn new(epoch: u64) -> Self {
        Partition {
            epoch,
            slots: BTreeMap::new(),
            next_offset: -1,
            committed: -1,
        }
    }

    /// The offset to commit: the lowest not settled, else one past the last received.
    fn commit_point(&self) -> i64 {
        self.slots
            .iter()
            .find(|(_, slot)| slot.state != SlotState::Done)
            .map_or(self.next_offset, |(offset, _)| *offset)
    }

    fn unsettled(&self) -> usize {
        self.slots
            .values()
            .filter(|slot| slot.state != SlotState::Done)
            .count()
    }
}

/// Everything the poller, `fetch` and the ackers share, under one lock.
#[derive(Debug, Default)]
struct State {
    partitions: HashMap<i32, Partition>,
    /// Records to hand out, in order: (partition, offset, epoch).
    ready: VecDeque<(i32, i64, u64)>,
    /// Records tracked and not settled (ready, held or waiting).
    unsettled: usize,
    /// Partitions taken away by an eager rebalance, kept until the next assignment says
    /// whether they come back.
    revoked: HashSet<i32>,
    assigned: bool,
    /// When the commit awaiting its answer was sent.
    commit_in_flight: Option<Instant>,
    next_epoch: u64,
}

#[derive(Debug)]
struct Shared {
    config: ConsumerConfig,
    metrics: SubjectMetrics,
    state: Mutex<State>,
    /// Handed-out deliveries not yet acked, naked or dropped.
    held: AtomicUsize,
    /// Wakes `fetch`: records arrived, room was freed, a nak changed the schedule.
    wake_fetch: Notify,
    /// Wakes the poller: room was freed, something can be committed, or it must stop.
    wake_poller: Notify,
    /// The first assignment arrived.
    assigned: Notify,
    stopping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a record received from Kafka.
    fn on_record(&self, record: Record) {
        let partition = i32::try_from(record.position.partition).unwrap_or(i32::MAX);
        let offset = i64::try_from(record.position.offset).unwrap_or(i64::MAX);
        {
            let mut state = self.lock();
            let state = &mut *state;
            let Some(tracked) = state.partitions.get_mut(&partition) else {
                // A late record of a partition taken away: its next owner reads it.
                return;
            };
            if tracked.slots.contains_key(&offset)
                || (tracked.committed >= 0 && offset < tracked.committed)
            {
                // Fetched again after a rebalance: already tracked or settled.
                return;
            }
            tracked.slots.insert(
                offset,
                Slot {
                    record,
                    delivery_count: 0,
                    state: SlotState::Ready,
                },
            );
            tracked.next_offset = tracked.next_offset.max(offset + 1);
            state.ready.push_back((partition, offset, tracked.epoch));
            state.unsettled += 1;
        }
        self.wake_fetch.notify_one();
    }

    /// Moves expired and due records back to the ready queue (or gives them up after
    /// `max_deliver`); returns when the next one falls due.
    fn promote(&self, state: &mut State, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut exhausted = 0usize;
        let max_deliver = self.config.max_deliver;
        for (partition, tracked) in &mut state.partitions {
            for (offset, slot) in &mut tracked.slots {
                let at = match slot.state {
                    SlotState::Held { deadline } => deadline,
                    SlotState::Waiting { due } => due,
                    SlotState::Ready | SlotState::Done => continue,
                };
                if at > now {
                    next = Some(next.map_or(at, |n| n.min(at)));
                } else if slot.delivery_count >= max_deliver {
                    slot.state = SlotState::Done;
                    exhausted += 1;
                } else {
                    slot.state = SlotState::Ready;
                    state.ready.push_back((*partition, *offset, tracked.epoch));
                }
            }
        }
        if exhausted > 0 {
            state.unsettled -= exhausted;
            self.metrics.exhausted.increment(exhausted as u64);
            self.wake_poller.notify_one();
        }
        next
    }

    /// Hands out ready records while the caller wants more and the member has room.
    fn hand_out(self: &Arc<Self>, state: &mut State, max: usize, out: &mut Vec<Delivery>) {
        let now = Instant::now();
        while out.len() < max && self.held.load(Ordering::Acquire) < self.config.max_in_flight {
            let Some((partition, offset, epoch)) = state.ready.pop_front() else {
                break;
            };
            let Some(tracked) = state.partitions.get_mut(&partition) else {
                continue;
            };
            if tracked.epoch != epoch {
                continue;
            }
            let Some(slot) = tracked.slots.get_mut(&offset) else {
                continue;
            };
            if slot.state != SlotState::Ready {
                continue;
            }
            slot.delivery_count += 1;
            slot.state = SlotState::Held {
                deadline: now + self.config.ack_wait,
            };
            self.held.fetch_add(1, Ordering::AcqRel);
            self.metrics.record_delivery(slot.delivery_count);
            let acker = KafkaAcker {
                shared: Arc::clone(self),
                partition,
                offset,
                epoch,
                delivery_count: slot.delivery_count,
                settled: false,
                _held: Held(Arc::clone(self)),
            };
            out.push(Delivery::new(
                slot.record.clone(),
                slot.delivery_count,
                Box::new(acker),
            ));
        }
    }

    /// Settles a delivery: `Done` on ack; on nak, waiting for `delay` or done after
    /// `max_deliver`. Stale settlements (a newer delivery is out, or the partition moved) are
    /// ignored, except that any ack of the record counts.
    fn settle(
        &self,
        partition: i32,
        offset: i64,
        epoch: u64,
        delivery_count: u32,
        nak: Option<Duration>,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(tracked) = state.partitions.get_mut(&partition) else {
            return;
        };
        if tracked.epoch != epoch {
            return;
        }
        let Some(slot) = tracked.slots.get_mut(&offset) else {
            return;
        };
        match (nak, slot.state) {
            (_, SlotState::Done) => {}
            (None, _) => {
                slot.state = SlotState::Done;
                state.unsettled -= 1;
            }
            (Some(_), _) if slot.delivery_count != delivery_count => {}
            (Some(_), _) if slot.delivery_count >= self.config.max_deliver => {
                slot.state = SlotState::Done;
                state.unsettled -= 1;
                self.metrics.exhausted.increment(1);
            }
            (Some(delay), _) => {
                slot.state = SlotState::Waiting {
                    due: Instant::now() + delay,
                };
            }
        }
    }

    /// The offsets to commit for `only` (all partitions when `None`), marked as committed.
    fn take_commits(&self, topic: &str, only: Option<&HashSet<i32>>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut state = self.lock();
        for (partition, tracked) in &mut state.partitions {
            if only.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            let point = tracked.commit_point();
            if point > tracked.committed {
                if list
                    .add_partition_offset(topic, *partition, Offset::Offset(point))
                    .is_ok()
                {
                    tracked.committed = point;
                }
                // Settled records below the commit are no longer needed.
                tracked.slots = tracked.slots.split_off(&point);
            }
        }
        list
    }

    /// After a failed commit: commit those partitions again at the next round.
    fn commit_failed(&self, offsets: &TopicPartitionList) {
        let mut state = self.lock();
        state.commit_in_flight = None;
        for element in offsets.elements() {
            if let Some(tracked) = state.partitions.get_mut(&element.partition()) {
                tracked.committed = -1;
            }
        }
    }

    /// Applies a new assignment: keeps partitions that stay, drops the others.
    fn assign(&self, added: &TopicPartitionList, protocol: RebalanceProtocol) {
        let mut state = self.lock();
        let state = &mut *state;
        let added: HashSet<i32> = added.elements().iter().map(|e| e.partition()).collect();
        if !matches!(protocol, RebalanceProtocol::Cooperative) {
            // Eager: the assignment is complete; partitions revoked and not given back go.
            let gone: Vec<i32> = state
                .revoked
                .iter()
                .filter(|p| !added.contains(p))
                .copied()
                .collect();
            forget(state, &gone);
            state.revoked.clear();
        }
        for partition in added {
            if !state.partitions.contains_key(&partition) {
                state.next_epoch += 1;
                let epoch = state.next_epoch;
                state.partitions.insert(partition, Partition::new(epoch));
            }
        }
        state.assigned = true;
    }

    /// Takes partitions away (cooperative) or marks them until the next assignment (eager).
    fn revoke(&self, revoked: &TopicPartitionList, protocol: RebalanceProtocol) {
        let mut state = self.lock();
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        if matches!(protocol, RebalanceProtocol::Cooperative) {
            forget(&mut state, &partitions);
        } else {
            state.revoked.extend(partitions);
        }
    }
}

/// Drops the tracking of `partitions`; their next owner reads the uncommitted records again.
fn forget(state: &mut State, partitions: &[i32]) {
    for partition in partitions {
        if let Some(tracked) = state.partitions.remove(partition) {
            state.unsettled -= tracked.unsettled();
        }
    }
}

/// One handed-out delivery counted against `max_in_flight`; released when settled or dropped.
#[derive(Debug)]
struct Held(Arc<Shared>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.wake_fetch.notify_one();
    }
}

/// Settles one delivery. Dropped unsettled (its holder gave up on it, or was cancelled), it
/// gives the record back at once, as a nak without delay.
struct KafkaAcker {
    shared: Arc<Shared>,
    partition: i32,
    offset: i64,
    epoch: u64,
    delivery_count: u32,
    settled: bool,
    _held: Held,
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(
                self.partition,
                self.offset,
                self.epoch,
                self.delivery_count,
                Some(Duration::ZERO),
            );
            self.shared.metrics.naked.increment(1);
            self.shared.wake_poller.notify_one();
        }
    }
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        self.shared.settle(
            self.partition,
            self.offset,
            self.epoch,
            self.delivery_count,
            None,
        );
        self.shared.metrics.acked.increment(1);
        self.shared.wake_poller.notify_one();
        Ok(())
    }

    async fn nak(mut self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.settled = true;
        self.shared.settle(
            self.partition,
            self.offset,
            self.epoch,
            self.delivery_count,
            Some(delay),
        );
        self.shared.metrics.naked.increment(1);
        self.shared.wake_poller.notify_one();
        Ok(())
    }
}

/// The consumer context: rebalances update the tracking, commits that fail are redone, logs go
/// to `tracing`.
struct GroupContext {
    shared: Arc<Shared>,
    topic: String,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    /// The backlog gauge: the consumer lag (high watermark − committed offset) of the
    /// partitions this member holds, from librdkafka's statistics (every
    /// [`BACKLOG_INTERVAL_MS`]). Each process exports its own members' share; summed by
    /// subject, the group's backlog.
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let lag: i64 = topic
                .partitions
                .iter()
                .filter(|(id, _)| **id >= 0)
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            self.shared
                .metrics
                .set_backlog(u64::try_from(lag).unwrap_or(0));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        TracingContext.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // Commit what is settled before another member starts from the committed offsets.
            // Sent ahead of the rejoin on the coordinator connection; not awaited, because a
            // synchronous commit would block this thread for as long as the broker is away.
            let partitions: HashSet<i32> =
                revoked.elements().iter().map(|e| e.partition()).collect();
            let commits = self.shared.take_commits(&self.topic, Some(&partitions));
            if commits.count() > 0
                && let Err(error) = consumer.commit(&commits, CommitMode::Async)
            {
                tracing::warn!(topic = %self.topic, %error, "commit before revocation failed");
            }
            self.shared.revoke(revoked, consumer.rebalance_protocol());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                self.shared.assign(assigned, consumer.rebalance_protocol());
                tracing::debug!(
                    topic = %self.topic,
                    group = %self.shared.config.group,
                    partitions = assigned.count(),
                    "partitions assigned"
                );
                self.shared.assigned.notify_waiters();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.topic, %error, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.shared.lock().commit_in_flight = None;
        if let Err(error) = result {
            tracing::warn!(topic = %self.topic, %error, "offset commit failed; retried");
            self.shared.commit_failed(offsets);
            self.shared.wake_poller.notify_one();
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;
type PartitionQueue = StreamPartitionQueue<GroupContext>;

/// A member of a consumer group on Kafka.
pub(super) struct KafkaConsumer {
    shared: Arc<Shared>,
}

impl KafkaConsumer {
    /// Joins the group and waits for the member's first assignment, so that what is published
    /// afterwards is read by the group as it now stands.
    pub(super) async fn start(
        servers: &[String],
        options: &KafkaOptions,
        config: ConsumerConfig,
        metrics: SubjectMetrics,
    ) -> Result<Self, BusError> {
        let topic = config.subject.clone();
        let shared = Arc::new(Shared {
            config,
            metrics,
            state: Mutex::new(State::default()),
            held: AtomicUsize::new(0),
            wake_fetch: Notify::new(),
            wake_poller: Notify::new(),
            assigned: Notify::new(),
            stopping: AtomicBool::new(false),
        });
        let reset = match shared.config.start {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        };
        let prefetch_messages = shared.config.max_in_flight.clamp(1, PREFETCH_MESSAGES_MAX);
        let consumer: GroupConsumer = client_config(
            servers,
            &[
                ("group.id", shared.config.group.clone()),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", reset.into()),
                ("queued.min.messages", prefetch_messages.to_string()),
                (
                    "queued.max.messages.kbytes",
                    PREFETCH_KBYTES_MAX.to_string(),
                ),
                ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string()),
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string()),
                ("statistics.interval.ms", BACKLOG_INTERVAL_MS.to_string()),
            ],
            options,
        )
        .create_with_context(GroupContext {
            shared: Arc::clone(&shared),
            topic: topic.clone(),
        })
        .map_err(|e| BusError::with_source(BusErrorKind::Config, "Kafka consumer settings", e))?;
        consumer.subscribe(&[topic.as_str()]).map_err(|e| {
            BusError::with_source(BusErrorKind::Consume, format!("subscribing to {topic}"), e)
        })?;
        let consumer = ClosedOnThread::new(Arc::new(consumer));
        let queues = match consumer.get() {
            Some(consumer) => split_partition_queues(consumer, &topic).await?,
            None => Vec::new(),
        };
        let client = ClosedOnThread::new(Client { queues, consumer });
        tokio::spawn(poll(client, Arc::clone(&shared), topic.clone()));
        // Dropped on every early return, which stops the poller.
        let member = KafkaConsumer { shared };
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let assigned = member.shared.assigned.notified();
            tokio::pin!(assigned);
            assigned.as_mut().enable();
            if member.shared.lock().assigned {
                break;
            }
            if tokio::time::timeout_at(deadline, assigned).await.is_err() {
                return Err(BusError::new(
                    BusErrorKind::Timeout,
                    format!(
                        "group {} got no assignment of {topic} within {JOIN_TIMEOUT:?}",
                        member.shared.config.group
                    ),
                ));
            }
        }
        Ok(member)
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake_poller.notify_one();
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        loop {
            let woken = self.shared.wake_fetch.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = Instant::now();
            let next_due = {
                let mut state = self.shared.lock();
                let next_due = self.shared.promote(&mut state, now);
                self.shared.hand_out(&mut state, max, &mut out);
                next_due
            };
            if !out.is_empty() || now >= deadline {
                break;
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            // Woken early by new records, freed room or a nak; otherwise at `until`.
            let _ = tokio::time::timeout_at(until, woken).await;
        }
        Ok(out)
    }
}

/// One record queue per partition of `topic`, split from the group's queue before it joins.
/// A split survives rebalances; a partition added to the topic later is read through the
/// group's queue instead, without the flow control.
async fn split_partition_queues(
    consumer: &Arc<GroupConsumer>,
    topic: &str,
) -> Result<Vec<PartitionQueue>, BusError> {
    let lookup = Arc::clone(consumer);
    let owned_topic = topic.to_owned();
    let partitions = tokio::task::spawn_blocking(move || {
        lookup
            .fetch_metadata(Some(&owned_topic), METADATA_TIMEOUT)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == owned_topic)
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect::<Vec<i32>>()
            })
    })
    .await
    .map_err(|e| BusError::with_source(BusErrorKind::Closed, "metadata task", e))?
    .map_err(|e| BusError::with_source(BusErrorKind::Connect, format!("metadata of {topic}"), e))?;
    let queues: Vec<PartitionQueue> = partitions
        .iter()
        .filter_map(|partition| consumer.split_partition_queue(topic, *partition))
        .collect();
    if queues.len() != partitions.len() {
        return Err(BusError::new(
            BusErrorKind::Consume,
            format!("could not split the partition queues of {topic}"),
        ));
    }
    Ok(queues)
}

/// The member's background task: polls the group (serving rebalances), reads records while
/// the member has room, and commits.
async fn poll(client: ClosedOnThread<Client>, shared: Arc<Shared>, topic: String) {
    let Some(Client { queues, consumer }) = client.get() else {
        return;
    };
    let Some(consumer) = consumer.get() else {
        return;
    };
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !shared.stopping.load(Ordering::Acquire) {
        let room = shared.lock().unsettled < shared.config.max_in_flight;
        let mut records = futures::stream::select_all(queues.iter().map(|queue| queue.stream()));
        tokio::select! {
            // Serves rebalances and errors; records only of partitions that have no queue.
            received = consumer.recv() => match received {
                Ok(message) => {
                    let record = wire::record(&message);
                    drop(message);
                    shared.on_record(record);
                }
                Err(error) => {
                    tracing::warn!(%topic, %error, "consumer error");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            Some(received) = records.next(), if room => match received {
                Ok(message) => {
                    let record = wire::record(&message);
                    drop(message);
                    shared.on_record(record);
                }
                Err(error) => {
                    tracing::warn!(%topic, %error, "partition error");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            () = shared.wake_poller.notified() => {}
            _ = commit_tick.tick() => commit_settled(consumer, &shared, &topic),
        }
    }
    leave_group(consumer, queues, &shared, &topic).await;
}

/// Commits what was settled since the last commit, unless the previous commit is still waiting
/// for its answer: one commit in flight at a time, so that a slow broker is not buried under
/// commits (each ack moves the commit point; committing on every ack would send thousands).
fn commit_settled(consumer: &GroupConsumer, shared: &Shared, topic: &str) {
    {
        let state = shared.lock();
        if let Some(since) = state.commit_in_flight
            && since.elapsed() < COMMIT_ANSWER_MAX
        {
            return;
        }
    }
    let commits = shared.take_commits(topic, None);
    if commits.count() == 0 {
        return;
    }
    shared.lock().commit_in_flight = Some(Instant::now());
    if let Err(error) = consumer.commit(&commits, CommitMode::Async) {
        tracing::warn!(%topic, %error, "offset commit not sent; retried");
        shared.commit_failed(&commits);
    }
}

/// The group's partition queues and consumer, dropped in that order (the queues hold the
/// consumer too) on a thread of their own: see [`ClosedOnThread`].
struct Client {
    queues: Vec<PartitionQueue>,
    consumer: ClosedOnThread<Arc<GroupConsumer>>,
}

/// Commits what is settled and leaves the group, serving every queue meanwhile so that
/// librdkafka can stop the partitions (records read now were never handed out: the next
/// member gets them).
async fn leave_group(
    consumer: &GroupConsumer,
    queues: &[PartitionQueue],
    shared: &Shared,
    topic: &str,
) {
    let commits = shared.take_commits(topic, None);
    if commits.count() > 0
        && let Err(error) = consumer.commit(&commits, CommitMode::Async)
    {
        tracing::warn!(%topic, %error, "final offset commit not sent");
    }
    consumer.unsubscribe();
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    while consumer.assignment().map_or(0, |a| a.count()) > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(%topic, "partitions still assigned after {LEAVE_TIMEOUT:?}; closing");
            break;
        }
        let mut records = futures::stream::select_all(queues.iter().map(|queue| queue.stream()));
        tokio::select! {
            _ = consumer.recv() => {}
            _ = records.next() => {}
            () = tokio::time::sleep(LEAVE_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(offset: u64) -> Record {
        Record {
            subject: "txn.submit".into(),
            payload: Bytes::from_static(b"p"),
            key: None,
            msg_id: None,
            headers: Vec::new(),
            position: crate::bus::Position {
                partition: 0,
                offset,
            },
            timestamp_ms: 0,
        }
    }

    fn partition_with(states: &[(i64, SlotState)]) -> Partition {
        let mut partition = Partition::new(1);
        for (offset, state) in states {
            partition.slots.insert(
                *offset,
                Slot {
                    record: record(*offset as u64),
                    delivery_count: 1,
                    state: *state,
                },
            );
            partition.next_offset = partition.next_offset.max(offset + 1);
        }
        partition
    }

    #[test]
    fn commit_point_stops_at_the_first_unsettled_offset() {
        let held = SlotState::Held {
            deadline: Instant::now(),
        };
        let partition = partition_with(&[(5, SlotState::Done), (6, held), (7, SlotState::Done)]);
        assert_eq!(partition.commit_point(), 6);
    }

    #[test]
    fn commit_point_is_past_the_last_record_when_all_are_settled() {
        let partition = partition_with(&[(5, SlotState::Done), (6, SlotState::Done)]);
        assert_eq!(partition.commit_point(), 7);
    }

    #[test]
    fn empty_partition_commits_nothing() {
        let partition = Partition::new(1);
        assert_eq!(partition.commit_point(), -1);
        assert!(partition.commit_point() <= partition.committed);
    }
}
