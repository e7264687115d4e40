//! Competing consumers on JetStream: the members of a group share one durable pull consumer.
//!
//! Each member keeps one inbox subscription for its whole life and sends pull requests to it,
//! one at a time, for no more messages than it has room for (`max_in_flight` minus what it
//! holds and has buffered). Because the inbox outlives every request, a message the server
//! sends after `fetch` returned is buffered for the next call rather than lost until its ack
//! deadline. A request expires after [`PULL_EXPIRES`]. The server sends a heartbeat every
//! [`PULL_HEARTBEAT`] while an open request has nothing to deliver, so a request nobody holds
//! any more (the consumer's leader died with it, or a restarted server forgot it) is given up
//! after [`PULL_SILENCE_MAX`] without a word, or as soon as the client reconnects. While the
//! consumer has no leader at all (a cluster electing one), the server answers a request with
//! "no responders" at once; the next is sent after [`NO_LEADER_PAUSE`].
//!
//! Acks and naks wait for the server's confirmation, so an `Ok` means the server recorded it —
//! except for a delivery made before the connection was lost: a restarted server may have
//! forgotten it and would never answer, so its ack is sent without waiting (a lost one only
//! means a redelivery, which every stage answers idempotently). A confirmation awaited when the
//! connection drops is not awaited further. The acks of a batch, settled concurrently, are thus
//! pipelined, their confirmations awaited together, and none waits on a restart.
//!
//! The member also sets the subject's backlog gauge (messages of the group not yet delivered
//! or not yet acked, from the consumer's info), at most once per [`BACKLOG_INTERVAL`].
//! The server counts deliveries, honours `ack_wait` and `max_deliver`, and delays naks. A
//! delivery dropped without ack or nak, and a message buffered by a member that is dropped, is
//! naked at once: the group gets it again now rather than after `ack_wait`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, StatusCode, Subject, Subscriber};
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::wire;
use crate::bus::metrics::SubjectMetrics;
use crate::bus::{Acker, BusError, BusErrorKind, Consumer, ConsumerConfig, Delivery};

/// How long the server keeps one pull request open.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Time past [`PULL_EXPIRES`] after which a request the server never closed is given up.
const PULL_GRACE: Duration = Duration::from_secs(1);
/// Heartbeat the server sends while an open request has nothing to deliver.
const PULL_HEARTBEAT: Duration = Duration::from_millis(400);
/// Time without a message, a heartbeat or a status after which an open request is given up:
/// two heartbeats and a half, so that one late heartbeat does not open a second request.
const PULL_SILENCE_MAX: Duration = Duration::from_millis(1_000);
/// Pause before the next pull request after the server said no member could take it (the
/// consumer has no leader: a cluster is electing one).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
/// Largest `max_in_flight` accepted: bounds a member's buffer.
pub(super) const MAX_IN_FLIGHT_LIMIT: usize = 65_536;
/// Members a group is sized for: the server-side `max_ack_pending` of the shared consumer is
/// this many times a member's `max_in_flight`, so that it never starves a member that is
/// within its own limit.
const GROUP_MEMBERS_MAX: usize = 64;
/// Shortest interval between two readings of the consumer's backlog.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);

/// Rejects consumer limits the broker buses cannot honour (shared with the Kafka bus).
pub(crate) fn check_config(config: &ConsumerConfig) -> Result<(), BusError> {
    let problem = if config.group.is_empty() {
        Some("group must not be empty".to_string())
    } else if config.max_in_flight == 0 || config.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        Some(format!(
            "max_in_flight {} must be within 1..={MAX_IN_FLIGHT_LIMIT}",
            config.max_in_flight
        ))
    } else if config.max_deliver == 0 {
        Some("max_deliver must be at least 1".to_string())
    } else if config.ack_wait < Duration::from_millis(1) {
        Some("ack_wait must be at least 1 ms".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(BusError::new(
            BusErrorKind::Config,
            format!("consumer of {}: {problem}", config.subject),
        )),
        None => Ok(()),
    }
}

/// `max_ack_pending` of the durable consumer shared by a group.
pub(super) fn max_ack_pending(max_in_flight: usize) -> i64 {
    i64::try_from(max_in_flight.saturating_mul(GROUP_MEMBERS_MAX)).unwrap_or(i64::MAX)
}

/// Deliveries a member holds, shared with its ackers.
#[derive(Debug, Default)]
struct Flight {
    held: AtomicUsize,
    freed: Notify,
}

/// One place in [`Flight`]; given back when the delivery is acked, naked or dropped.
#[derive(Debug)]
struct Slot(Arc<Flight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// The pull request currently open.
#[derive(Debug)]
struct PullRequest {
    remaining: usize,
    /// When the server has closed it for sure (its expiry and a grace period).
    expired_at: Instant,
    /// When it is given up if the server says nothing more (no message, heartbeat or status).
    silent_at: Instant,
    connects: u64,
}

impl PullRequest {
    fn give_up_at(&self) -> Instant {
        self.expired_at.min(self.silent_at)
    }
}

/// What woke a waiting `fetch`.
enum Event {
    Message(async_nats::Message),
    RoomFreed,
    Deadline,
}

/// A member of a consumer group on JetStream.
pub(super) struct NatsConsumer {
    client: Client,
    context: jetstream::Context,
    consumer: PullConsumer,
    inbox: Subject,
    subscriber: Subscriber,
    config: ConsumerConfig,
    flight: Arc<Flight>,
    buffer: VecDeque<async_nats::Message>,
    request: Option<PullRequest>,
    /// No pull request is sent before this (the consumer had no leader).
    paused_until: Option<Instant>,
    metrics: SubjectMetrics,
    /// When the backlog is next read.
    backlog_due: Instant,
}

impl NatsConsumer {
    /// Subscribes the member's inbox.
    pub(super) async fn start(
        client: Client,
        context: jetstream::Context,
        consumer: PullConsumer,
        config: ConsumerConfig,
        metrics: SubjectMetrics,
    ) -> Result<Self, BusError> {
        let inbox = Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await.map_err(|e| {
            BusError::with_source(BusErrorKind::Connect, "subscribing the consumer inbox", e)
        })?;
        Ok(NatsConsumer {
            client,
            context,
            consumer,
            inbox,
            subscriber,
            config,
            flight: Arc::new(Flight::default()),
            buffer: VecDeque::new(),
            request: None,
            paused_until: None,
            metrics,
            backlog_due: Instant::now(),
        })
    }

    /// Reads the consumer's backlog into the gauge in the background, at most once per
    /// [`BACKLOG_INTERVAL`]: a fetch never waits for it.
    fn refresh_backlog(&mut self) {
        let now = Instant::now();
        if now < self.backlog_due {
            return;
        }
        self.backlog_due = now + BACKLOG_INTERVAL;
        let consumer = self.consumer.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match consumer.get_info().await {
                Ok(info) => {
                    let unacked = u64::try_from(info.num_ack_pending).unwrap_or(0);
                    metrics.set_backlog(info.num_pending.saturating_add(unacked));
                }
                Err(error) => tracing::debug!(%error, "consumer info not read"),
            }
        });
    }

    fn held(&self) -> usize {
        self.flight.held.load(Ordering::Acquire)
    }

    /// Whether a buffered message can be handed out now.
    fn can_hand_out(&self) -> bool {
        !self.buffer.is_empty() && self.held() < self.config.max_in_flight
    }

    /// Moves buffered messages to `out` while the caller wants more and there is room.
    fn hand_out(&mut self, max: usize, out: &mut Vec<Delivery>) {
        while out.len() < max && self.held() < self.config.max_in_flight {
            let Some(message) = self.buffer.pop_front() else {
                break;
            };
            if let Some(delivery) = self.delivery(message) {
                out.push(delivery);
            }
        }
    }

    /// Takes in what the inbox holds already, without waiting: what the server said while
    /// this member was busy counts before its silence is judged.
    fn take_received(&mut self) -> Result<(), BusError> {
        while let Some(next) = self.subscriber.next().now_or_never() {
            match next {
                Some(message) => self.on_message(message)?,
                None => {
                    return Err(BusError::new(
                        BusErrorKind::Closed,
                        "NATS connection closed",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Forgets the open request once the server cannot be holding it any more.
    fn drop_lost_request(&mut self) {
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        if let Some(request) = &self.request
            && (Instant::now() >= request.give_up_at() || request.connects != connects)
        {
            self.request = None;
        }
    }

    /// Opens a pull request for up to `wanted` messages if none is open and there is room.
    async fn request_more(&mut self, wanted: usize) -> Result<(), BusError> {
        if self.request.is_some() {
            return Ok(());
        }
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return Ok(());
            }
            self.paused_until = None;
        }
        let room = self
            .config
            .max_in_flight
            .saturating_sub(self.held() + self.buffer.len());
        let batch = wanted.min(room);
        if batch == 0 {
            return Ok(());
        }
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        let pull = BatchConfig {
            batch,
            expires: Some(PULL_EXPIRES),
            idle_heartbeat: PULL_HEARTBEAT,
            ..Default::default()
        };
        self.consumer
            .request_batch(pull, self.inbox.clone())
            .await
            .map_err(|e| {
                BusError::with_source(
                    BusErrorKind::Consume,
                    format!("pull request on {}", self.config.subject),
                    e,
                )
            })?;
        let now = Instant::now();
        self.request = Some(PullRequest {
            remaining: batch,
            expired_at: now + PULL_EXPIRES + PULL_GRACE,
            silent_at: now + PULL_SILENCE_MAX,
            connects,
        });
        Ok(())
    }

    /// Waits for the next message, for room to be freed, or for `until`.
    async fn next_event(&mut self, until: Instant) -> Result<Event, BusError> {
        let flight = Arc::clone(&self.flight);
        tokio::select! {
            biased;
            message = self.subscriber.next() => match message {
                Some(message) => Ok(Event::Message(message)),
                None => Err(BusError::new(BusErrorKind::Closed, "NATS connection closed")),
            },
            () = flight.freed.notified() => Ok(Event::RoomFreed),
            () = tokio::time::sleep_until(until) => Ok(Event::Deadline),
        }
    }

    /// Buffers a message or interprets a status of the pull request.
    fn on_message(&mut self, message: async_nats::Message) -> Result<(), BusError> {
        if let Some(request) = &mut self.request {
            request.silent_at = Instant::now() + PULL_SILENCE_MAX;
        }
        match message.status {
            None | Some(StatusCode::OK) => {
                if let Some(request) = &mut self.request {
                    request.remaining = request.remaining.saturating_sub(1);
                    if request.remaining == 0 {
                        self.request = None;
                    }
                }
                self.buffer.push_back(message);
            }
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(StatusCode::NO_RESPONDERS) => {
                tracing::debug!(subject = %self.config.subject, "no consumer leader; pulling again shortly");
                self.request = None;
                self.paused_until = Some(Instant::now() + NO_LEADER_PAUSE);
            }
            Some(StatusCode::REQUEST_TERMINATED)
                if message
                    .description
                    .as_deref()
                    .is_some_and(|d| d.to_ascii_lowercase().contains("consumer deleted")) =>
            {
                return Err(BusError::new(
                    BusErrorKind::Consume,
                    format!("consumer of {} was deleted", self.config.subject),
                ));
            }
            Some(status) => {
                // 408 (expired), 404 (nothing), 409 (limits, leadership change): the request
                // is over; the next round opens another.
                tracing::trace!(%status, description = ?message.description, "pull request ended");
                self.request = None;
            }
        }
        Ok(())
    }

    /// Turns a stored message into a delivery holding one place in the flight.
    fn delivery(&self, message: async_nats::Message) -> Option<Delivery> {
        let Some(reply) = message.reply.clone() else {
            tracing::warn!(subject = %message.subject, "message without ack subject ignored");
            return None;
        };
        let message = jetstream::Message {
            message,
            context: self.context.clone(),
        };
        let (sequence, delivered, published) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered, info.published),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "unparsable ack subject");
                return None;
            }
        };
        let delivery_count = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let record = wire::record(
            message.subject.as_str(),
            message.payload.clone(),
            message.headers.as_ref(),
            sequence,
            wire::timestamp_ms(&published),
        );
        self.flight.held.fetch_add(1, Ordering::AcqRel);
        self.metrics.record_delivery(delivery_count);
        let acker = NatsAcker {
            client: self.client.clone(),
            reply,
            metrics: self.metrics.clone(),
            last_delivery: delivery_count >= self.config.max_deliver,
            settled: false,
            _slot: Slot(Arc::clone(&self.flight)),
        };
        Some(Delivery::new(record, delivery_count, Box::new(acker)))
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    /// Cancel-safe: every wait happens before anything is handed out, so a fetch dropped while
    /// it waits leaves the messages it received in the buffer for the next call (a delivery
    /// dropped unacked would only come back after `ack_wait`).
    async fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.refresh_backlog();
        self.take_received()?;
        while !self.can_hand_out() {
            self.drop_lost_request();
            self.request_more(max.saturating_sub(self.buffer.len()))
                .await?;
            let until = match (&self.request, self.paused_until) {
                (Some(request), _) => deadline.min(request.give_up_at()),
                (None, Some(paused)) => deadline.min(paused),
                (None, None) => deadline,
            };
            match self.next_event(until).await? {
                Event::Message(message) => self.on_message(message)?,
                Event::RoomFreed => {}
                Event::Deadline if Instant::now() >= deadline => break,
                Event::Deadline => {}
            }
        }
        // What else has arrived already comes along, without waiting for more.
        self.take_received()?;
        self.hand_out(max, &mut out);
        Ok(out)
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        // Messages received but never handed out go back to the group at once rather than
        // after their ack deadline.
        let replies: Vec<Subject> = self
            .buffer
            .drain(..)
            .filter_map(|message| message.reply)
            .collect();
        give_back(&self.client, replies);
    }
}

/// Naks deliveries that nobody will settle, without waiting for the answers (a lost nak only
/// means redelivery after `ack_wait`). Needs a Tokio runtime; without one the server
/// redelivers after `ack_wait` anyway.
fn give_back(client: &Client, replies: Vec<Subject>) {
    if replies.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = client.clone();
    runtime.spawn(async move {
        for reply in replies {
            if let Err(error) = client.publish(reply, AckKind::Nak(None).into()).await {
                tracing::debug!(%error, "giving back a delivery failed; redelivered after ack_wait");
            }
        }
    });
}

/// Settles one JetStream delivery and gives its place back. Dropped unsettled (its holder
/// gave up on it, or was cancelled), it gives the message back at once.
///
/// Acks and naks are sent, not confirmed: the server takes them in order on the connection,
/// before the member's next pull request, so waiting for each confirmation bought nothing but
/// a message back per delivery and a round trip per batch (a stage's throughput on NATS
/// doubled without it). An ack the server never took (the connection or the consumer's leader
/// was lost) means a redelivery after `ack_wait`, which every stage answers idempotently.
struct NatsAcker {
    client: Client,
    reply: Subject,
    metrics: SubjectMetrics,
    /// This was delivery number `max_deliver`: a nak ends the message's redeliveries.
    last_delivery: bool,
    /// An ack or nak was sent (whatever its outcome): nothing to give back on drop.
    settled: bool,
    _slot: Slot,
}

impl NatsAcker {
    async fn settle(&mut self, kind: AckKind, what: &str) -> Result<(), BusError> {
        self.settled = true;
        self.client
            .publish(self.reply.clone(), kind.into())
            .await
            .map_err(|e| BusError::with_source(BusErrorKind::Ack, format!("{what} not sent"), e))
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.metrics.naked.increment(1);
            give_back(&self.client, vec![self.reply.clone()]);
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle(AckKind::Ack, "ack").await?;
        self.metrics.acked.increment(1);
        Ok(())
    }

    async fn nak(mut self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        self.settle(kind, "nak").await?;
        self.metrics.naked.increment(1);
        if self.last_delivery {
            self.metrics.exhausted.increment(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumerConfig {
        ConsumerConfig::new("txn.submit", "payer")
    }

    #[test]
    fn rejects_zero_max_in_flight() {
        let config = ConsumerConfig {
            max_in_flight: 0,
            ..config()
        };
        assert_eq!(
            check_config(&config).unwrap_err().kind(),
            BusErrorKind::Config
        );
    }

    #[test]
    fn rejects_zero_max_deliver() {
        let config = ConsumerConfig {
            max_deliver: 0,
            ..config()
        };
        assert_eq!(
            check_config(&config).unwrap_err().kind(),
            BusErrorKind::Config
        );
    }

    #[test]
    fn accepts_default_limits() {
        assert!(check_config(&config()).is_ok());
    }

    #[test]
    fn group_ack_pending_covers_every_member() {
        assert_eq!(max_ack_pending(10), 640);
        assert_eq!(max_ack_pending(usize::MAX), i64::MAX);
    }

    #[test]
    fn dropped_slot_frees_its_place() {
        let flight = Arc::new(Flight::default());
        flight.held.store(1, Ordering::Release);
        drop(Slot(Arc::clone(&flight)));
        assert_eq!(flight.held.load(Ordering::Acquire), 0);
    }
}
