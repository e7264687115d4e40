//! The bus on NATS JetStream.
//!
//! Layout on the server: one stream per subject family (the first token of a subject, see
//! [`subject_family`]), named after it upper-cased, holding `family.>` in FILE storage with
//! limits retention ([`STREAM_MAX_AGE`], [`STREAM_MAX_BYTES`]) and a dedup window of
//! [`DUPLICATE_WINDOW`]. When storage runs out, the server refuses new messages rather than
//! dropping old ones that may not have been consumed yet: for payments, a refused publish is
//! visible and retried, a dropped message is a silent loss.
//!
//! Every message carries `Nats-Msg-Id`: the caller's `msg_id`, or a generated one. Either way a
//! publish whose acknowledgement was lost can be retried without storing the message twice,
//! which is why this bus retries timed-out publishes by itself.
//!
//! Publishes are pipelined: a batch is sent whole, then its acknowledgements are awaited
//! together. When the connection drops meanwhile, the acknowledgements still awaited cannot
//! come (a restarted server forgot the requests), so they are not waited for: the messages
//! concerned are sent again, together, as soon as the client has reconnected ([`Link`]).
//!
//! A consumer group is one durable pull consumer per (group, subject), shared by its members;
//! see [`consumer`]. Acks and naks are sent without awaiting the server's confirmation. A
//! replay is an ordered consumer outside any group; see [`replay`].
//!
//! Secrets in [`NatsOptions`] go to the client library only and are never logged.

mod bench;
mod consumer;
mod follow;
mod replay;
mod wire;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishAckFuture,
    PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{
    self, ErrorCode, consumer::AckPolicy, consumer::DeliverPolicy, stream,
};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, HeaderMap, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::ReplayFrom;
use super::metrics::SubjectMetrics;
use super::{
    Bus, BusError, BusErrorKind, BusKind, Consumer, ConsumerConfig, Follow, NatsOptions, Outgoing,
    PAYLOAD_BYTES_MAX, Position, PublishReceipt, ReplayRequest, ReplayStream, StartAt,
    SubjectLayout, SubjectSpec, subject_family, validate_subject, validate_subject_pattern,
};

pub(crate) use consumer::check_config as check_consumer_config;
pub(crate) use wire::check_portable_headers;

/// A second publish with the same `msg_id` within this window is not stored again.
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// Messages older than this are removed from a stream (limits retention), consumed or not.
pub(crate) const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Size cap of a stream: none (-1). A cap is reserved from the server's storage when the
/// stream is created, and a stream at its cap refuses every publish whatever its age: an
/// arbitrary default cap stops the payment flow after so many payments. Streams are bounded
/// instead by [`STREAM_MAX_AGE`] and, together, by the server's JetStream storage limit
/// (`max_file_store`), beyond which the server refuses new messages.
pub(crate) const STREAM_MAX_BYTES: i64 = -1;
/// Most replicas JetStream keeps of a stream.
const STREAM_REPLICAS_MAX: usize = 5;
/// Time allowed to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to a request (JetStream API).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to a JetStream API request (stream and consumer management).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the server has to acknowledge one attempt of a publish before it is sent again (same
/// `Nats-Msg-Id`, so a copy the server did store is a duplicate, not a second message). Short,
/// because an acknowledgement that does not come in this time is almost always one that will
/// never come: its stream's leader died with the request, and in a cluster the publish must
/// reach the leader elected after it. A server acknowledges within milliseconds otherwise,
/// even at its ceiling (docs/BENCHMARKS.md); a retry it did not need costs a duplicate it drops.
const PUBLISH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long publishes that failed in a way worth retrying (a timeout, a lost connection, a
/// stream still recovering after a restart) are retried, from their first failure, always with
/// the same `Nats-Msg-Id`.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause before a retry that follows an error rather than a reconnection; doubled for each
/// further attempt up to [`PUBLISH_RETRY_BACKOFF_MAX`].
const PUBLISH_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Longest pause between two retries.
const PUBLISH_RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Publishes sent and awaiting their acknowledgement, all callers together.
const PUBLISH_INFLIGHT_MAX: usize = 4096;
/// Longest pause between two reconnection attempts: a server that restarts is used again
/// within this of answering (an attempt on a server that is down is refused at once, so they
/// cost little).
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(250);

/// A bus on NATS JetStream. Cheap to share behind an `Arc`; one connection, multiplexed.
pub struct NatsBus {
    client: Client,
    jetstream: jetstream::Context,
    /// Streams created or checked by this bus (names).
    streams: Mutex<HashSet<String>>,
    /// Streams this bus has found on the server (names), created by it or by someone else
    /// (`dcpipe bus init`): one of them missing later is a server restarting or a cluster
    /// electing its leader, to wait for, not a subject nobody provisioned.
    found: Mutex<HashSet<String>>,
    /// Gates pipelined publishes so that no caller waits for ack permits held by another.
    inflight: Arc<Semaphore>,
    metrics: Mutex<HashMap<String, SubjectMetrics>>,
    /// Replicas and retention of the streams this bus creates.
    limits: StreamLimits,
    /// The connection's losses, as the client reports them.
    link: watch::Receiver<Link>,
}

/// What the bus knows of its connection, from the client's events: how many times it was lost.
/// A request sent before a loss gets no answer (the server that had it may have restarted and
/// forgotten it), so whoever awaits one watches this and stops waiting when it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Link {
    /// Times the connection was lost since the bus connected.
    pub(super) losses: u64,
    /// Times the connection was (re-)established.
    pub(super) connects: u64,
}

/// Completes when the connection has been lost since `link` read `losses` (never if the bus is
/// gone).
pub(super) async fn lost_since(link: &mut watch::Receiver<Link>, losses: u64) {
    if link.wait_for(|l| l.losses != losses).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why one message of a publish round is not stored yet.
enum Unsent {
    /// The connection dropped before its acknowledgement came.
    ConnectionLost,
    /// The client or the server said so.
    Failed(PublishError),
}

/// Replicas and retention of the streams a bus creates, from [`NatsOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamLimits {
    replicas: usize,
    max_age: Duration,
}

impl StreamLimits {
    fn of(options: &NatsOptions) -> Result<StreamLimits, BusError> {
        let replicas = options.stream_replicas.max(1);
        if replicas > STREAM_REPLICAS_MAX {
            return Err(BusError::new(
                BusErrorKind::Config,
                format!(
                    "NATS stream replicas {replicas}: JetStream allows 1 to {STREAM_REPLICAS_MAX}"
                ),
            ));
        }
        let max_age = options.stream_max_age.unwrap_or(STREAM_MAX_AGE);
        if max_age < DUPLICATE_WINDOW {
            return Err(BusError::new(
                BusErrorKind::Config,
                format!(
                    "NATS stream max age {max_age:?} is shorter than the duplicate window {DUPLICATE_WINDOW:?}"
                ),
            ));
        }
        Ok(StreamLimits { replicas, max_age })
    }
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the first reachable server of `servers` (`host:port`), with the TLS and
    /// credentials of `options`.
    pub async fn connect(servers: &[String], options: &NatsOptions) -> Result<Self, BusError> {
        let limits = StreamLimits::of(options)?;
        let addresses = servers
            .iter()
            .map(|server| {
                let scheme = if options.tls_required { "tls" } else { "nats" };
                format!("{scheme}://{server}")
                    .parse::<ServerAddr>()
                    .map_err(|e| {
                        BusError::with_source(
                            BusErrorKind::Config,
                            format!("NATS server {server:?}"),
                            e,
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(BusError::new(BusErrorKind::Config, "no NATS server given"));
        }
        let (link_events, link) = watch::channel(Link::default());
        let link_events = Arc::new(link_events);
        let client = connect_options(options)
            .await?
            .event_callback(move |event| {
                let link_events = Arc::clone(&link_events);
                async move {
                    match event {
                        Event::Disconnected => link_events.send_modify(|l| l.losses += 1),
                        Event::Connected => link_events.send_modify(|l| l.connects += 1),
                        _ => {}
                    }
                }
            })
            .connect(addresses)
            .await
            .map_err(|e| {
                let kind = match e.kind() {
                    ConnectErrorKind::ServerParse | ConnectErrorKind::Tls => BusErrorKind::Config,
                    _ => BusErrorKind::Connect,
                };
                BusError::with_source(kind, "connecting to NATS", e)
            })?;
        // The client keeps the ack permit of a publish nobody awaits any more (one abandoned
        // when the connection dropped) until its ack timeout: room for a few abandoned windows
        // beside the one in use, which [`NatsBus::inflight`] bounds.
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .ack_timeout(PUBLISH_ATTEMPT_TIMEOUT)
            .max_ack_inflight(PUBLISH_INFLIGHT_MAX * 4)
            .build(client.clone());
        tracing::info!(servers = ?servers, "connected to NATS");
        Ok(NatsBus {
            client,
            jetstream,
            streams: Mutex::new(HashSet::new()),
            found: Mutex::new(HashSet::new()),
            inflight: Arc::new(Semaphore::new(PUBLISH_INFLIGHT_MAX)),
            metrics: Mutex::new(HashMap::new()),
            limits,
            link,
        })
    }

    fn metrics(&self, subject: &str) -> SubjectMetrics {
        let mut cache = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(subject.to_owned())
            .or_insert_with(|| SubjectMetrics::new(BusKind::Nats, subject))
            .clone()
    }

    fn stream_known(&self, stream: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(stream)
    }

    /// Whether the stream was on the server when this bus created, checked or looked it up.
    fn stream_found(&self, stream: &str) -> bool {
        self.stream_known(stream)
            || self
                .found
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(stream)
    }

    /// Checks a message and turns it into what goes on the wire.
    fn prepare(&self, message: Outgoing) -> Result<Prepared, BusError> {
        validate_subject(&message.subject)?;
        if message.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(BusError::new(
                BusErrorKind::MessageTooLarge,
                format!(
                    "payload of {} bytes exceeds {PAYLOAD_BYTES_MAX}",
                    message.payload.len()
                ),
            ));
        }
        if let Some(msg_id) = &message.msg_id {
            wire::check_msg_id(msg_id)?;
        }
        let nats_msg_id = message
            .msg_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let headers = wire::encode_headers(&message, &nats_msg_id)?;
        Ok(Prepared {
            stream: wire::stream_name(subject_family(&message.subject)),
            subject: message.subject,
            payload: message.payload,
            headers,
        })
    }

    async fn send(&self, message: &Prepared) -> Result<PublishAckFuture, PublishError> {
        self.jetstream
            .send_publish(
                message.subject.clone(),
                PublishMessage::build()
                    .payload(message.payload.clone())
                    .headers(message.headers.clone()),
            )
            .await
    }

    /// Publishes `messages`, pipelined, and returns their receipts in order. Messages whose
    /// publish failed in a way worth retrying are sent again together, after a short pause or,
    /// when the connection dropped, as soon as it is back; the same `Nats-Msg-Id` makes a retry
    /// of a message the server did store a duplicate, never a second copy.
    async fn publish_prepared(
        &self,
        messages: &[Prepared],
    ) -> Result<Vec<PublishReceipt>, BusError> {
        let mut acks: Vec<Option<PublishAck>> = messages.iter().map(|_| None).collect();
        let mut retried = vec![false; messages.len()];
        let mut todo: Vec<usize> = (0..messages.len()).collect();
        let mut first_failure: Option<Instant> = None;
        let mut backoff = PUBLISH_RETRY_BACKOFF;
        loop {
            let unsent = self.publish_round(messages, &todo, &mut acks).await?;
            if unsent.is_empty() {
                break;
            }
            let deadline = *first_failure.get_or_insert_with(Instant::now) + PUBLISH_RETRY_FOR;
            todo.clear();
            let mut connection_lost = false;
            let mut last_error = None;
            for (index, unsent) in unsent {
                match unsent {
                    Unsent::ConnectionLost => connection_lost = true,
                    Unsent::Failed(error) if self.retryable(&messages[index], &error) => {
                        last_error = Some((index, error));
                    }
                    Unsent::Failed(error) => {
                        return Err(self.publish_error(&messages[index], error));
                    }
                }
                retried[index] = true;
                todo.push(index);
            }
            let give_up = |last_error: Option<(usize, PublishError)>| match last_error {
                Some((index, error)) => self.publish_error(&messages[index], error),
                None => BusError::new(
                    BusErrorKind::Connect,
                    format!(
                        "NATS connection lost while publishing to {}; not back within {PUBLISH_RETRY_FOR:?}",
                        messages[todo[0]].subject
                    ),
                ),
            };
            if Instant::now() >= deadline {
                return Err(give_up(last_error));
            }
            tracing::debug!(
                messages = todo.len(),
                connection_lost,
                error = ?last_error.as_ref().map(|(_, e)| e.to_string()),
                "retrying publishes"
            );
            if connection_lost || self.disconnected().is_some() {
                if !self.wait_connected(deadline).await {
                    return Err(give_up(last_error));
                }
            } else {
                tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                backoff = backoff.saturating_mul(2).min(PUBLISH_RETRY_BACKOFF_MAX);
            }
        }
        Ok(messages
            .iter()
            .zip(acks)
            .zip(retried)
            .map(|((message, ack), retried)| {
                let ack = ack.unwrap_or_default();
                self.receipt(message, &ack, retried)
            })
            .collect())
    }

    /// Sends the messages at `todo`, then awaits their acknowledgements together, storing
    /// each in `acks`; returns those not stored and why. Stops waiting as soon as the
    /// connection drops: what was not acknowledged by then is [`Unsent::ConnectionLost`].
    async fn publish_round(
        &self,
        messages: &[Prepared],
        todo: &[usize],
        acks: &mut [Option<PublishAck>],
    ) -> Result<Vec<(usize, Unsent)>, BusError> {
        let mut unsent = Vec::new();
        // A chunk takes all its permits at once, so concurrent callers never deadlock each
        // other on half-acquired windows.
        for chunk in todo.chunks(PUBLISH_INFLIGHT_MAX / 4) {
            let _permits = self.acquire(chunk.len()).await?;
            let mut link = self.link.clone();
            let losses = link.borrow_and_update().losses;
            let mut waiting = HashSet::with_capacity(chunk.len());
            let mut pending = FuturesUnordered::new();
            for &index in chunk {
                match self.send(&messages[index]).await {
                    Ok(ack) => {
                        waiting.insert(index);
                        pending.push(async move {
                            let ack = tokio::time::timeout(PUBLISH_ATTEMPT_TIMEOUT, ack)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(PublishError::new(PublishErrorKind::TimedOut))
                                });
                            (index, ack)
                        });
                    }
                    Err(error) => unsent.push((index, Unsent::Failed(error))),
                }
            }
            loop {
                tokio::select! {
                    next = pending.next() => match next {
                        Some((index, result)) => {
                            waiting.remove(&index);
                            match result {
                                Ok(ack) => acks[index] = Some(ack),
                                Err(error) => unsent.push((index, Unsent::Failed(error))),
                            }
                        }
                        None => break,
                    },
                    () = lost_since(&mut link, losses) => {
                        unsent.extend(waiting.drain().map(|index| (index, Unsent::ConnectionLost)));
                        break;
                    }
                }
            }
        }
        Ok(unsent)
    }

    /// Waits until the client is connected, or `deadline`; whether it is.
    async fn wait_connected(&self, deadline: Instant) -> bool {
        let mut link = self.link.clone();
        loop {
            let _ = link.borrow_and_update();
            if self.disconnected().is_none() {
                return true;
            }
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.disconnected().is_none(),
            }
        }
    }

    fn retryable(&self, message: &Prepared, error: &PublishError) -> bool {
        match error.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => true,
            // A stream found before is missing only while a server restarts or a cluster
            // elects its leader.
            PublishErrorKind::StreamNotFound => self.stream_found(&message.stream),
            _ => false,
        }
    }

    fn publish_error(&self, message: &Prepared, error: PublishError) -> BusError {
        let subject = &message.subject;
        let kind = match error.kind() {
            PublishErrorKind::MaxPayloadExceeded => BusErrorKind::MessageTooLarge,
            PublishErrorKind::TimedOut => BusErrorKind::Timeout,
            PublishErrorKind::StreamNotFound if !self.stream_found(&message.stream) => {
                BusErrorKind::UnknownSubject
            }
            _ => BusErrorKind::Publish,
        };
        BusError::with_source(kind, format!("publishing to {subject}"), error)
    }

    fn receipt(&self, message: &Prepared, ack: &PublishAck, retried: bool) -> PublishReceipt {
        // After a retry the first attempt may be the copy the server kept, so "duplicate"
        // would blame this very call: only a first attempt reports it.
        let duplicate = ack.duplicate && !retried;
        let metrics = self.metrics(&message.subject);
        if duplicate {
            metrics.duplicates.increment(1);
        } else if !ack.duplicate {
            metrics.published.increment(1);
        }
        PublishReceipt {
            position: Position {
                partition: 0,
                offset: ack.sequence,
            },
            duplicate,
        }
    }

    async fn acquire(&self, permits: usize) -> Result<tokio::sync::SemaphorePermit<'_>, BusError> {
        let permits = u32::try_from(permits).unwrap_or(u32::MAX);
        self.inflight
            .acquire_many(permits)
            .await
            .map_err(|_| BusError::new(BusErrorKind::Closed, "NATS bus closed"))
    }
}

/// A checked message ready to send.
struct Prepared {
    stream: String,
    subject: String,
    payload: Bytes,
    headers: HeaderMap,
}

/// The client options for `options`; secrets go to the client only.
async fn connect_options(options: &NatsOptions) -> Result<ConnectOptions, BusError> {
    let mut connect = ConnectOptions::new()
        .name("dcpipe")
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay);
    if let Some(creds) = &options.creds_file {
        connect = connect.credentials_file(creds).await.map_err(|e| {
            BusError::with_source(
                BusErrorKind::Config,
                format!("NATS credentials file {}", creds.display()),
                e,
            )
        })?;
    }
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        (None, None) => {}
        _ => {
            return Err(BusError::new(
                BusErrorKind::Config,
                "NATS user and password go together",
            ));
        }
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if options.tls_required {
        connect = connect.require_tls(true);
    }
    if let Some(ca) = &options.tls_ca_file {
        connect = connect.add_root_certificates(ca.clone());
    }
    match (&options.tls_cert_file, &options.tls_key_file) {
        (Some(cert), Some(key)) => {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(BusError::new(
                BusErrorKind::Config,
                "NATS client certificate and key go together",
            ));
        }
    }
    Ok(connect)
}

/// Reconnection pause: quick at first (a restarting server is back within a second or two),
/// then at most [`RECONNECT_DELAY_MAX`].
fn reconnect_delay(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
    Duration::from_millis(25u64 << exponent).min(RECONNECT_DELAY_MAX)
}

/// The configuration of the stream holding `family.>`.
fn stream_config(family: &str, limits: StreamLimits) -> stream::Config {
    stream::Config {
        name: wire::stream_name(family),
        subjects: vec![format!("{family}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_age: limits.max_age,
        max_bytes: STREAM_MAX_BYTES,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: limits.replicas,
        ..Default::default()
    }
}

/// The layout a stream configuration gives `family.>`.
fn layout_of(family: &str, config: &stream::Config) -> SubjectLayout {
    let wanted = format!("{family}.>");
    SubjectLayout {
        holder: config.name.clone(),
        holds_subject: config.subjects.contains(&wanted),
        partitions: 1,
        replicas: u32::try_from(config.num_replicas.max(1)).unwrap_or(u32::MAX),
        max_age: Some(config.max_age),
        storage: Some(
            match config.storage {
                stream::StorageType::File => "file",
                stream::StorageType::Memory => "memory",
            }
            .to_owned(),
        ),
        duplicate_window: Some(config.duplicate_window),
    }
}

/// Maps a failure to look up a stream.
fn get_stream_error(name: &str, subject: &str, error: GetStreamError) -> BusError {
    let kind = match error.kind() {
        GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            return BusError::new(
                BusErrorKind::UnknownSubject,
                format!(
                    "no stream {name} for {subject}: provision the bus first (dcpipe bus init)"
                ),
            );
        }
        GetStreamErrorKind::Request => BusErrorKind::Connect,
        _ => BusErrorKind::Topology,
    };
    BusError::with_source(kind, format!("looking up stream {name}"), error)
}

/// Maps a failure to create a stream.
fn create_stream_error(name: &str, error: CreateStreamError) -> BusError {
    let kind = match error.kind() {
        CreateStreamErrorKind::TimedOut => BusErrorKind::Timeout,
        CreateStreamErrorKind::JetStreamUnavailable => BusErrorKind::Connect,
        _ => BusErrorKind::Topology,
    };
    BusError::with_source(kind, format!("creating stream {name}"), error)
}

/// Maps a failure to create a consumer.
fn create_consumer_error(what: String, error: ConsumerError) -> BusError {
    let kind = match error.kind() {
        ConsumerErrorKind::TimedOut => BusErrorKind::Timeout,
        ConsumerErrorKind::Request => BusErrorKind::Connect,
        _ => BusErrorKind::Topology,
    };
    BusError::with_source(kind, what, error)
}

impl NatsBus {
    /// The stream holding `subject`, or [`BusErrorKind::UnknownSubject`].
    async fn stream_of(&self, subject: &str) -> Result<stream::Stream, BusError> {
        let name = wire::stream_name(subject_family(subject));
        let stream = self
            .jetstream
            .get_stream(&name)
            .await
            .map_err(|e| get_stream_error(&name, subject, e))?;
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name);
        Ok(stream)
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> BusKind {
        BusKind::Nats
    }

    fn disconnected(&self) -> Option<String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!("NATS connection {state}")),
        }
    }

    async fn ensure_subject(&self, spec: &SubjectSpec) -> Result<(), BusError> {
        validate_subject(&spec.subject)?;
        let family = subject_family(&spec.subject);
        let config = stream_config(family, self.limits);
        let name = config.name.clone();
        if self.stream_known(&name) {
            return Ok(());
        }
        let stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| create_stream_error(&name, e))?;
        let wanted = format!("{family}.>");
        let existing = &stream.cached_info().config;
        if !existing.subjects.contains(&wanted) {
            return Err(BusError::new(
                BusErrorKind::Topology,
                format!("stream {name} exists but does not hold {wanted}"),
            ));
        }
        if existing.num_replicas.max(1) != self.limits.replicas
            || existing.max_age != self.limits.max_age
        {
            // Changing a live stream is an operator's decision (`nats stream edit`), not a
            // side effect of starting a worker.
            tracing::warn!(
                stream = %name,
                replicas = existing.num_replicas,
                max_age = ?existing.max_age,
                configured_replicas = self.limits.replicas,
                configured_max_age = ?self.limits.max_age,
                "stream exists with other replicas or retention than configured; left as it is"
            );
        }
        tracing::debug!(stream = %name, "stream ready");
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name);
        Ok(())
    }

    fn planned_layout(&self, spec: &SubjectSpec) -> SubjectLayout {
        let family = subject_family(&spec.subject);
        layout_of(family, &stream_config(family, self.limits))
    }

    async fn describe_subject(&self, subject: &str) -> Result<Option<SubjectLayout>, BusError> {
        validate_subject(subject)?;
        let family = subject_family(subject);
        match self.stream_of(subject).await {
            Ok(stream) => Ok(Some(layout_of(family, &stream.cached_info().config))),
            Err(e) if e.kind() == BusErrorKind::UnknownSubject => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn publish(&self, message: Outgoing) -> Result<PublishReceipt, BusError> {
        let message = self.prepare(message)?;
        let mut receipts = self
            .publish_prepared(std::slice::from_ref(&message))
            .await?;
        receipts
            .pop()
            .ok_or_else(|| BusError::new(BusErrorKind::Publish, "no receipt for a publish"))
    }

    async fn publish_many(&self, messages: Vec<Outgoing>) -> Result<Vec<PublishReceipt>, BusError> {
        let prepared = messages
            .into_iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish_prepared(&prepared).await
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        validate_subject(&config.subject)?;
        consumer::check_config(&config)?;
        let stream = self.stream_of(&config.subject).await?;
        let durable = wire::durable_name(&config.group, &config.subject);
        let pull = jetstream::consumer::pull::Config {
            durable_name: Some(durable.clone()),
            deliver_policy: match config.start {
                StartAt::Earliest => DeliverPolicy::All,
                StartAt::Latest => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: i64::from(config.max_deliver),
            filter_subject: config.subject.clone(),
            max_ack_pending: consumer::max_ack_pending(config.max_in_flight),
            ..Default::default()
        };
        let pull_consumer = stream.create_consumer(pull).await.map_err(|e| {
            create_consumer_error(
                format!("creating consumer {durable} on {}", config.subject),
                e,
            )
        })?;
        let metrics = self.metrics(&config.subject);
        let consumer = consumer::NatsConsumer::start(
            self.client.clone(),
            self.jetstream.clone(),
            pull_consumer,
            config,
            metrics,
        )
        .await?;
        Ok(Box::new(consumer))
    }

    async fn replay(&self, request: ReplayRequest) -> Result<Box<dyn ReplayStream>, BusError> {
        // The filter of the replay's ordered consumer may be a pattern within the family's
        // stream.
        validate_subject_pattern(&request.subject)?;
        let stream = self.stream_of(&request.subject).await?;
        Ok(Box::new(replay::NatsReplay::start(stream, request).await?))
    }

    async fn follow_from(
        &self,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Box<dyn Follow>, BusError> {
        validate_subject_pattern(subject)?;
        let stream = self.stream_of(subject).await?;
        Ok(Box::new(
            follow::NatsFollow::start(stream, subject, from).await?,
        ))
    }

    async fn broker_bench(
        &self,
        plan: &super::bench::BenchPlan,
    ) -> Result<Option<super::bench::BenchRun>, BusError> {
        bench::run(self, plan).await.map(Some)
    }

    async fn delete_subject(&self, subject: &str) -> Result<bool, BusError> {
        validate_subject(subject)?;
        let name = stream_config(subject_family(subject), self.limits).name;
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
        let e = match self.jetstream.delete_stream(&name).await {
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        if let async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(js) = e.kind()
            && js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        {
            return Ok(false);
        }
        Err(BusError::with_source(
            BusErrorKind::Topology,
            format!("deleting stream {name}"),
            e,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(25));
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(100), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn stream_refuses_new_messages_when_full() {
        let limits = StreamLimits::of(&NatsOptions::default()).expect("defaults");
        let config = stream_config("txn", limits);
        assert_eq!(config.name, "TXN");
        assert_eq!(config.subjects, vec!["txn.>".to_string()]);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(config.num_replicas, 1);
        assert_eq!(config.max_age, STREAM_MAX_AGE);
    }

    #[test]
    fn stream_limits_come_from_the_options() {
        let options = NatsOptions {
            stream_replicas: 3,
            stream_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            ..Default::default()
        };
        let config = stream_config("clearing", StreamLimits::of(&options).expect("valid"));
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn impossible_stream_limits_are_config_errors() {
        for options in [
            NatsOptions {
                stream_replicas: 6,
                ..Default::default()
            },
            NatsOptions {
                stream_max_age: Some(DUPLICATE_WINDOW - Duration::from_secs(1)),
                ..Default::default()
            },
        ] {
            let err = StreamLimits::of(&options).unwrap_err();
            assert_eq!(err.kind(), BusErrorKind::Config, "{err}");
        }
    }

    #[tokio::test]
    async fn user_without_password_is_a_config_error() {
        let options = NatsOptions {
            user: Some("alice".into()),
            ..Default::default()
        };
        let err = connect_options(&options).await.unwrap_err();
        assert_eq!(err.kind(), BusErrorKind::Config);
    }
}
