//! The embedded bus: an in-process bus with the same semantics as the brokers, for the demo,
//! the load test and fast tests.
//!
//! Each subject is an in-memory log (sequences from 1, bus timestamps in ms) behind one short
//! mutex, with a duplicate window by `msg_id` and consumer groups that track a cursor, the
//! deliveries their members hold and the messages waiting for redelivery. Nothing polls:
//! fetchers and publishers wait on the subject's notifiers, with deadlines.
//!
//! Memory is bounded per subject ([`EmbeddedConfig`]): once a subject reaches its message or
//! byte limit, its oldest messages are dropped if every group has settled them (with no group
//! at all, simply the oldest: it is a limits-retention log). If the oldest message is still
//! unsettled, `publish` waits for room, up to [`EmbeddedConfig::publish_wait_max`]: the
//! backpressure that keeps a fast producer from outrunning a slow stage.

mod dedup;
mod group;
mod subject;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::dedup::DedupWindow;
use self::group::{ConsumerId, MemberLimits, NakOutcome, TIMER_MAX};
pub use self::subject::EmbeddedSubjectStats;
use self::subject::{Appended, StoredMessage, SubjectLimits, SubjectLog};
use super::metrics::SubjectMetrics;
use super::nats::{check_consumer_config, check_portable_headers};
use super::{
    Acker, Bus, BusError, BusErrorKind, BusKind, Consumer, ConsumerConfig, Delivery, Follow,
    Outgoing, PAYLOAD_BYTES_MAX, Position, PublishReceipt, Record, ReplayFrom, ReplayRequest,
    ReplayStream, SubjectLayout, SubjectSpec, validate_subject,
};

/// Limits of the embedded bus. Every field has a named default; limits of 0 are raised to 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Messages one subject retains at most.
    pub subject_messages_max: usize,
    /// Bytes (payloads, keys, ids, headers) one subject retains at most. A single message larger
    /// than this is refused with [`BusErrorKind::MessageTooLarge`].
    pub subject_bytes_max: usize,
    /// How long a `msg_id` is remembered for dedup.
    pub duplicate_window: Duration,
    /// `msg_id`s one subject remembers at most; the oldest is forgotten first, so at high rates
    /// the effective window is shorter than [`EmbeddedConfig::duplicate_window`].
    pub dedup_entries_max: usize,
    /// How long a publish waits for room in a subject at capacity before failing with
    /// [`BusErrorKind::Timeout`].
    pub publish_wait_max: Duration,
    /// Subjects the bus holds at most.
    pub subjects_max: usize,
    /// Consumer groups one subject holds at most.
    pub groups_per_subject_max: usize,
}

impl EmbeddedConfig {
    /// Default message limit per subject: the whole history of a demo of about 100,000
    /// payments fits, so that audits can replay it.
    pub const SUBJECT_MESSAGES_MAX: usize = 500_000;
    /// Default byte limit per subject (256 MiB).
    pub const SUBJECT_BYTES_MAX: usize = 256 * 1024 * 1024;
    /// Default duplicate window, as JetStream's.
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    /// Default number of remembered `msg_id`s per subject.
    pub const DEDUP_ENTRIES_MAX: usize = 100_000;
    /// Default wait for room before a publish fails.
    pub const PUBLISH_WAIT_MAX: Duration = Duration::from_secs(30);
    /// Default number of subjects.
    pub const SUBJECTS_MAX: usize = 10_000;
    /// Default number of consumer groups per subject.
    pub const GROUPS_PER_SUBJECT_MAX: usize = 64;

    /// The same limits with every count at least 1.
    fn sanitized(mut self) -> Self {
        self.subject_messages_max = self.subject_messages_max.max(1);
        self.subject_bytes_max = self.subject_bytes_max.max(1);
        self.subjects_max = self.subjects_max.max(1);
        self.groups_per_subject_max = self.groups_per_subject_max.max(1);
        self
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            subject_messages_max: Self::SUBJECT_MESSAGES_MAX,
            subject_bytes_max: Self::SUBJECT_BYTES_MAX,
            duplicate_window: Self::DUPLICATE_WINDOW,
            dedup_entries_max: Self::DEDUP_ENTRIES_MAX,
            publish_wait_max: Self::PUBLISH_WAIT_MAX,
            subjects_max: Self::SUBJECTS_MAX,
            groups_per_subject_max: Self::GROUPS_PER_SUBJECT_MAX,
        }
    }
}

/// The in-process bus. Cloning gives another handle on the same bus: everything that talks over
/// it must share one.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: EmbeddedConfig,
    subjects: RwLock<HashMap<String, Arc<SubjectHandle>>>,
    next_consumer_id: AtomicU64,
}

/// One subject: its state under a mutex and who to wake when it changes.
#[derive(Debug)]
struct SubjectHandle {
    log: Mutex<SubjectLog>,
    /// Woken when messages arrive or become redeliverable, or a full member gets room.
    fetchers: Notify,
    /// Woken when messages are settled, which may make room.
    publishers: Notify,
    metrics: SubjectMetrics,
}

impl SubjectHandle {
    /// The state. Nothing under the lock panics on input; should a bug panic there, the other
    /// users carry on with the state as it is rather than all panicking in turn.
    fn lock(&self) -> MutexGuard<'_, SubjectLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ack(&self, group: usize, seq: u64) {
        let mut log = self.lock();
        let outcome = log.ack(group, seq);
        let wake_fetchers = outcome.freed_full_member && log.waiting_fetchers > 0;
        let wake_publishers = outcome.settled && log.waiting_publishers > 0;
        let backlog = log.backlog();
        drop(log);
        self.metrics.acked.increment(1);
        self.metrics.set_backlog(backlog);
        if wake_fetchers {
            self.fetchers.notify_waiters();
        }
        if wake_publishers {
            self.publishers.notify_waiters();
        }
    }

    fn nak(&self, group: usize, seq: u64, delivery_count: u32, delay: Duration) {
        let mut log = self.lock();
        let outcome = log.nak(group, seq, delivery_count, delay, Instant::now());
        // Any change may shorten a waiting fetcher's wait (a new timer, a ready message, room).
        let wake_fetchers = outcome != NakOutcome::Stale && log.waiting_fetchers > 0;
        let exhausted = matches!(outcome, NakOutcome::Exhausted { .. });
        let wake_publishers = exhausted && log.waiting_publishers > 0;
        let backlog = log.backlog();
        drop(log);
        self.metrics.naked.increment(1);
        if exhausted {
            self.metrics.exhausted.increment(1);
            self.metrics.set_backlog(backlog);
        }
        if wake_fetchers {
            self.fetchers.notify_waiters();
        }
        if wake_publishers {
            self.publishers.notify_waiters();
        }
    }
}

/// Who is registered as waiting on a subject.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    Fetcher,
    Publisher,
}

/// Keeps a subject's waiter count right even when the waiting future is dropped: registered
/// under the lock by the caller, unregistered here.
struct Waiting<'a> {
    handle: &'a SubjectHandle,
    waiter: Waiter,
}

impl<'a> Waiting<'a> {
    /// Registers a waiter; `log` is the caller's guard on `handle`.
    fn register(handle: &'a SubjectHandle, log: &mut SubjectLog, waiter: Waiter) -> Self {
        match waiter {
            Waiter::Fetcher => log.waiting_fetchers += 1,
            Waiter::Publisher => log.waiting_publishers += 1,
        }
        Waiting { handle, waiter }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut log = self.handle.lock();
        match self.waiter {
            Waiter::Fetcher => log.waiting_fetchers = log.waiting_fetchers.saturating_sub(1),
            Waiter::Publisher => {
                log.waiting_publishers = log.waiting_publishers.saturating_sub(1);
            }
        }
    }
}

impl EmbeddedBus {
    /// Most deliveries one `fetch` returns, whatever `max` asks for.
    pub const FETCH_BATCH_MAX: usize = 4096;
    /// Most records one replay `next_batch` returns, whatever `max` asks for.
    pub const REPLAY_BATCH_MAX: usize = 4096;

    /// A new, empty bus.
    pub fn new(config: EmbeddedConfig) -> Self {
        EmbeddedBus {
            shared: Arc::new(Shared {
                config: config.sanitized(),
                subjects: RwLock::new(HashMap::new()),
                next_consumer_id: AtomicU64::new(1),
            }),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.shared.config
    }

    /// Sizes of `subject`, `None` if it was never used.
    pub fn subject_stats(&self, subject: &str) -> Option<EmbeddedSubjectStats> {
        self.existing(subject).map(|handle| handle.lock().stats())
    }

    fn existing(&self, subject: &str) -> Option<Arc<SubjectHandle>> {
        self.shared
            .subjects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            .cloned()
    }

    /// The subject's handle, created on first use (the embedded bus needs no topology step).
    fn subject(&self, subject: &str) -> Result<Arc<SubjectHandle>, BusError> {
        if let Some(handle) = self.existing(subject) {
            return Ok(handle);
        }
        validate_subject(subject)?;
        let config = &self.shared.config;
        let mut subjects = self
            .shared
            .subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = subjects.get(subject) {
            return Ok(Arc::clone(handle));
        }
        if subjects.len() >= config.subjects_max {
            return Err(BusError::new(
                BusErrorKind::Topology,
                format!(
                    "embedded bus holds its maximum of {} subjects; cannot add {subject:?}",
                    config.subjects_max
                ),
            ));
        }
        let handle = Arc::new(SubjectHandle {
            log: Mutex::new(SubjectLog::new(
                subject.to_owned(),
                SubjectLimits {
                    messages_max: config.subject_messages_max,
                    bytes_max: config.subject_bytes_max,
                },
                DedupWindow::new(config.duplicate_window, config.dedup_entries_max),
            )),
            fetchers: Notify::new(),
            publishers: Notify::new(),
            metrics: SubjectMetrics::new(BusKind::Embedded, subject),
        });
        subjects.insert(subject.to_owned(), Arc::clone(&handle));
        Ok(handle)
    }
}

/// `now + duration`, or `TIMER_MAX` from now for durations too long to schedule.
fn deadline_after(duration: Duration) -> Instant {
    Instant::now() + duration.min(TIMER_MAX)
}

/// Wall-clock time in ms since the epoch (0 if the clock is before the epoch).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[async_trait]
impl Bus for EmbeddedBus {
    fn kind(&self) -> BusKind {
        BusKind::Embedded
    }

    async fn ensure_subject(&self, spec: &SubjectSpec) -> Result<(), BusError> {
        // One ordered log per subject: the partition count is a Kafka notion.
        self.subject(&spec.subject).map(|_| ())
    }

    fn planned_layout(&self, spec: &SubjectSpec) -> SubjectLayout {
        SubjectLayout {
            holder: spec.subject.clone(),
            holds_subject: true,
            partitions: 1,
            replicas: 1,
            max_age: None,
            storage: None,
            duplicate_window: Some(self.shared.config.duplicate_window),
        }
    }

    async fn describe_subject(&self, subject: &str) -> Result<Option<SubjectLayout>, BusError> {
        validate_subject(subject)?;
        Ok(self
            .existing(subject)
            .map(|_| self.planned_layout(&SubjectSpec::new(subject))))
    }

    async fn publish(&self, message: Outgoing) -> Result<PublishReceipt, BusError> {
        check_portable_headers(&message.headers)?;
        if message.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(BusError::new(
                BusErrorKind::MessageTooLarge,
                format!(
                    "payload of {} bytes on {:?} exceeds {PAYLOAD_BYTES_MAX}",
                    message.payload.len(),
                    message.subject
                ),
            ));
        }
        let handle = self.subject(&message.subject)?;
        let subject = message.subject.clone();
        let mut pending = StoredMessage::new(message);
        let bytes_max = self.shared.config.subject_bytes_max;
        if pending.size_bytes() > bytes_max {
            return Err(BusError::new(
                BusErrorKind::MessageTooLarge,
                format!(
                    "message of {} bytes on {subject:?} exceeds the subject limit of {bytes_max}",
                    pending.size_bytes()
                ),
            ));
        }
        let wait_max = self.shared.config.publish_wait_max;
        let deadline = deadline_after(wait_max);
        let mut waited = false;
        loop {
            // Created before looking, so that a settle in between still wakes this publisher.
            let room = handle.publishers.notified();
            let waiting = {
                let mut log = handle.lock();
                match log.append(pending, Instant::now(), now_ms()) {
                    Ok(appended) => {
                        let wake_fetchers = log.waiting_fetchers > 0;
                        let backlog = log.backlog();
                        drop(log);
                        if wake_fetchers {
                            handle.fetchers.notify_waiters();
                        }
                        return Ok(receipt(&handle.metrics, appended, backlog));
                    }
                    Err(back) => {
                        pending = back;
                        if Instant::now() >= deadline {
                            let stats = log.stats();
                            return Err(BusError::new(
                                BusErrorKind::Timeout,
                                format!(
                                    "subject {subject:?} is at capacity ({} messages, {} bytes) \
                                     and its oldest message is still unsettled after {wait_max:?}",
                                    stats.messages, stats.bytes
                                ),
                            ));
                        }
                        Waiting::register(&handle, &mut log, Waiter::Publisher)
                    }
                }
            };
            if !waited {
                waited = true;
                handle.metrics.publish_waits.increment(1);
            }
            // Timing out is not an error yet: the next round reports it if still full.
            let _ = tokio::time::timeout_at(deadline, room).await;
            drop(waiting);
        }
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        // The same rules as the broker buses, so that a worker behaves the same on every bus.
        check_consumer_config(&config)?;
        let handle = self.subject(&config.subject)?;
        let id = self.shared.next_consumer_id.fetch_add(1, Ordering::Relaxed);
        let groups_max = self.shared.config.groups_per_subject_max;
        let group = {
            let mut log = handle.lock();
            let group = log
                .group(&config.group, config.start, groups_max)
                .ok_or_else(|| {
                    BusError::new(
                        BusErrorKind::Topology,
                        format!(
                            "subject {:?} holds its maximum of {groups_max} consumer groups; \
                             cannot add {:?}",
                            config.subject, config.group
                        ),
                    )
                })?;
            log.join(group, id, config.max_in_flight);
            group
        };
        Ok(Box::new(EmbeddedConsumer {
            handle,
            group,
            id,
            limits: MemberLimits {
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_in_flight: config.max_in_flight,
            },
        }))
    }

    async fn replay(&self, request: ReplayRequest) -> Result<Box<dyn ReplayStream>, BusError> {
        validate_subject(&request.subject)?;
        let handle = self.existing(&request.subject).ok_or_else(|| {
            BusError::new(
                BusErrorKind::UnknownSubject,
                format!("subject {:?} was never published to", request.subject),
            )
        })?;
        let (next_seq, end_seq) = {
            let log = handle.lock();
            (log.replay_start(request.from), log.next_seq())
        };
        Ok(Box::new(EmbeddedReplay {
            handle,
            next_seq,
            end_seq,
            until_ms: request.until_ms,
            finished: false,
        }))
    }

    async fn delete_subject(&self, subject: &str) -> Result<bool, BusError> {
        validate_subject(subject)?;
        Ok(self
            .shared
            .subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(subject)
            .is_some())
    }

    async fn follow_from(
        &self,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Box<dyn Follow>, BusError> {
        let handle = self.subject(subject)?;
        let next_seq = handle.lock().replay_start(from);
        Ok(Box::new(EmbeddedFollow { handle, next_seq }))
    }
}

/// Counts a publish and builds its receipt.
fn receipt(metrics: &SubjectMetrics, appended: Appended, backlog: u64) -> PublishReceipt {
    let (seq, duplicate) = match appended {
        Appended::Stored { seq } => {
            metrics.published.increment(1);
            metrics.set_backlog(backlog);
            (seq, false)
        }
        Appended::Duplicate { seq } => {
            metrics.duplicates.increment(1);
            (seq, true)
        }
    };
    PublishReceipt {
        position: Position {
            partition: 0,
            offset: seq,
        },
        duplicate,
    }
}

/// A member of a consumer group on the embedded bus.
#[derive(Debug)]
struct EmbeddedConsumer {
    handle: Arc<SubjectHandle>,
    group: usize,
    id: ConsumerId,
    limits: MemberLimits,
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError> {
        let max = max.min(EmbeddedBus::FETCH_BATCH_MAX);
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_after(timeout);
        loop {
            // Created before looking, so that a publish in between still wakes this fetcher.
            let arrival = self.handle.fetchers.notified();
            let (waiting, wake_at) = {
                let mut log = self.handle.lock();
                let now = Instant::now();
                let fetched = log.fetch(self.group, self.id, &self.limits, max, now);
                let wake_publishers = fetched.exhausted > 0 && log.waiting_publishers > 0;
                if fetched.exhausted > 0 {
                    let backlog = log.backlog();
                    self.handle.metrics.exhausted.increment(fetched.exhausted);
                    self.handle.metrics.set_backlog(backlog);
                }
                if !fetched.deliveries.is_empty() || now >= deadline {
                    drop(log);
                    if wake_publishers {
                        self.handle.publishers.notify_waiters();
                    }
                    return Ok(self.deliveries(fetched.deliveries));
                }
                let waiting = Waiting::register(&self.handle, &mut log, Waiter::Fetcher);
                drop(log);
                if wake_publishers {
                    self.handle.publishers.notify_waiters();
                }
                let wake_at = fetched.next_due.map_or(deadline, |due| due.min(deadline));
                (waiting, wake_at)
            };
            let _ = tokio::time::timeout_at(wake_at, arrival).await;
            drop(waiting);
        }
    }
}

impl EmbeddedConsumer {
    fn deliveries(&self, fetched: Vec<(Record, u32)>) -> Vec<Delivery> {
        fetched
            .into_iter()
            .map(|(record, delivery_count)| {
                self.handle.metrics.record_delivery(delivery_count);
                let acker = EmbeddedAcker {
                    handle: Arc::clone(&self.handle),
                    group: self.group,
                    seq: record.position.offset,
                    delivery_count,
                };
                Delivery::new(record, delivery_count, Box::new(acker))
            })
            .collect()
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.handle.lock().leave(self.group, self.id);
    }
}

/// Settles one delivery of the embedded bus.
#[derive(Debug)]
struct EmbeddedAcker {
    handle: Arc<SubjectHandle>,
    group: usize,
    seq: u64,
    delivery_count: u32,
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.handle.ack(self.group, self.seq);
        Ok(())
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.handle
            .nak(self.group, self.seq, self.delivery_count, delay);
        Ok(())
    }
}

/// A replay of one subject of the embedded bus.
#[derive(Debug)]
struct EmbeddedReplay {
    handle: Arc<SubjectHandle>,
    next_seq: u64,
    /// The subject's end when the replay began.
    end_seq: u64,
    until_ms: Option<i64>,
    finished: bool,
}

#[async_trait]
impl ReplayStream for EmbeddedReplay {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        if self.finished {
            return Ok(Vec::new());
        }
        // `max` of 0 would read as "exhausted": read at least one record.
        let max = max.clamp(1, EmbeddedBus::REPLAY_BATCH_MAX);
        let batch = self
            .handle
            .lock()
            .read(self.next_seq, self.end_seq, self.until_ms, max);
        self.next_seq = batch.next_seq;
        self.finished = batch.finished;
        Ok(batch.records)
    }
}

/// How often an embedded follower that found nothing looks again: the log is in this process,
/// so a look costs a lock.
const FOLLOW_LOOK_INTERVAL: Duration = Duration::from_millis(10);

/// A follower of one subject of the embedded bus: reads the subject's log from its position.
#[derive(Debug)]
struct EmbeddedFollow {
    handle: Arc<SubjectHandle>,
    next_seq: u64,
}

#[async_trait]
impl Follow for EmbeddedFollow {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let max = max.clamp(1, EmbeddedBus::REPLAY_BATCH_MAX);
        let deadline = Instant::now() + wait;
        loop {
            let batch = {
                let log = self.handle.lock();
                log.read(self.next_seq, log.next_seq(), None, max)
            };
            self.next_seq = batch.next_seq;
            if !batch.records.is_empty() || Instant::now() >= deadline {
                return Ok(batch.records);
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + FOLLOW_LOOK_INTERVAL)).await;
        }
    }
}

#[cfg(test)]
mod tests;
