//! Replays on JetStream: an ordered consumer (ephemeral, no acks, recreated by the client if it
//! misses a message) filtered on the subject and started by sequence or time.
//!
//! The range ends where the stream ended when the replay began (its last sequence then), at
//! `until_ms`, or when the consumer reports nothing pending for the subject, whichever comes
//! first, so that a replay of a busy subject terminates.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::stream;
use async_trait::async_trait;
use futures::StreamExt;

use super::wire;
use crate::bus::{BusError, BusErrorKind, Record, ReplayFrom, ReplayRequest, ReplayStream};

/// Longest wait for the next message of a range that is known not to be over.
const REPLAY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A replay of one subject.
pub(super) struct NatsReplay {
    subject: String,
    /// `None` once the range is exhausted.
    messages: Option<Ordered>,
    last_sequence: u64,
    until_ms: Option<i64>,
}

impl NatsReplay {
    /// Opens the range of `request` on `stream`.
    pub(super) async fn start(
        mut stream: stream::Stream,
        request: ReplayRequest,
    ) -> Result<Self, BusError> {
        let replay_error = |what: &str, e: &dyn std::fmt::Display| {
            BusError::new(
                BusErrorKind::Replay,
                format!("replay of {}: {what}: {e}", request.subject),
            )
        };
        let state = stream
            .info()
            .await
            .map_err(|e| replay_error("stream info", &e))?
            .state
            .clone();
        let mut replay = NatsReplay {
            subject: request.subject.clone(),
            messages: None,
            last_sequence: state.last_sequence,
            until_ms: request.until_ms,
        };
        let deliver_policy = match request.from {
            ReplayFrom::Beginning => DeliverPolicy::All,
            ReplayFrom::Offset(sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: sequence.max(1),
            },
            ReplayFrom::TimeMs(ms) => DeliverPolicy::ByStartTime {
                start_time: wire::datetime_of_ms(ms)?,
            },
        };
        let past_the_end = matches!(request.from, ReplayFrom::Offset(s) if s > state.last_sequence);
        let empty_window = matches!(
            (request.from, request.until_ms),
            (ReplayFrom::TimeMs(from), Some(until)) if until <= from
        );
        if state.messages == 0 || past_the_end || empty_window {
            return Ok(replay);
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: request.subject.clone(),
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| replay_error("creating the replay consumer", &e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(replay);
        }
        replay.messages = Some(
            consumer
                .messages()
                .await
                .map_err(|e| replay_error("reading", &e))?,
        );
        Ok(replay)
    }
}

#[async_trait]
impl ReplayStream for NatsReplay {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut records = Vec::new();
        while records.len() < max {
            let Some(messages) = self.messages.as_mut() else {
                break;
            };
            // Wait for the first record of a batch; then take only what has already arrived.
            let wait = if records.is_empty() {
                REPLAY_READ_TIMEOUT
            } else {
                Duration::ZERO
            };
            let next = match tokio::time::timeout(wait, messages.next()).await {
                Ok(next) => next,
                Err(_) if records.is_empty() => {
                    return Err(BusError::new(
                        BusErrorKind::Timeout,
                        format!(
                            "replay of {} received nothing for {REPLAY_READ_TIMEOUT:?}",
                            self.subject
                        ),
                    ));
                }
                Err(_) => break,
            };
            let message = match next {
                None => {
                    self.messages = None;
                    break;
                }
                Some(Err(e)) => {
                    return Err(BusError::with_source(
                        BusErrorKind::Replay,
                        format!("replay of {}", self.subject),
                        e,
                    ));
                }
                Some(Ok(message)) => message,
            };
            let (sequence, pending, published) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending, info.published),
                Err(e) => {
                    return Err(BusError::new(
                        BusErrorKind::Replay,
                        format!("replay of {}: unparsable message info: {e}", self.subject),
                    ));
                }
            };
            let timestamp_ms = wire::timestamp_ms(&published);
            if sequence > self.last_sequence
                || self.until_ms.is_some_and(|until| timestamp_ms >= until)
            {
                self.messages = None;
                break;
            }
            records.push(wire::record(
                message.subject.as_str(),
                message.payload.clone(),
                message.headers.as_ref(),
                sequence,
                timestamp_ms,
            ));
            if pending == 0 || sequence == self.last_sequence {
                self.messages = None;
            }
        }
        Ok(records)
    }
}
