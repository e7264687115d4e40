//! Following a subject on JetStream: one ordered consumer (ephemeral, no acks, flow-controlled,
//! recreated by the client after a gap or a reconnect) filtered on the subject, from the start
//! of the stream (or a given sequence or time), for as long as the follower lives. The server removes it once the follower
//! is gone (inactivity threshold), so a process holds one consumer per subject it follows,
//! never one per read.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::stream;
use async_trait::async_trait;
use futures::StreamExt;

use super::wire;
use crate::bus::{BusError, BusErrorKind, Follow, Record, ReplayFrom};

/// A subject followed from its beginning or a given position.
pub(super) struct NatsFollow {
    subject: String,
    messages: Ordered,
}

impl NatsFollow {
    /// Starts the ordered consumer on `stream`.
    pub(super) async fn start(
        stream: stream::Stream,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Self, BusError> {
        let follow_error = |what: &str, e: &dyn std::fmt::Display| {
            BusError::new(
                BusErrorKind::Consume,
                format!("following {subject}: {what}: {e}"),
            )
        };
        let deliver_policy = match from {
            ReplayFrom::Beginning => DeliverPolicy::All,
            ReplayFrom::Offset(sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: sequence.max(1),
            },
            ReplayFrom::TimeMs(ms) => DeliverPolicy::ByStartTime {
                start_time: wire::datetime_of_ms(ms)?,
            },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| follow_error("creating the ordered consumer", &e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| follow_error("reading", &e))?;
        Ok(NatsFollow {
            subject: subject.to_owned(),
            messages,
        })
    }
}

#[async_trait]
impl Follow for NatsFollow {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let mut records = Vec::new();
        while records.len() < max.max(1) {
            // Wait for the first record; then take only what has already arrived.
            let wait = if records.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            let Ok(next) = tokio::time::timeout(wait, self.messages.next()).await else {
                break;
            };
            let message = match next {
                None => {
                    return Err(BusError::new(
                        BusErrorKind::Closed,
                        format!("following {}: the consumer ended", self.subject),
                    ));
                }
                Some(Err(e)) => {
                    return Err(BusError::with_source(
                        BusErrorKind::Consume,
                        format!("following {}", self.subject),
                        e,
                    ));
                }
                Some(Ok(message)) => message,
            };
            let info = message.info().map_err(|e| {
                BusError::new(
                    BusErrorKind::Consume,
                    format!("following {}: unparsable message info: {e}", self.subject),
                )
            })?;
            let (sequence, published) = (info.stream_sequence, info.published);
            records.push(wire::record(
                message.subject.as_str(),
                message.payload.clone(),
                message.headers.as_ref(),
                sequence,
                wire::timestamp_ms(&published),
            ));
        }
        Ok(records)
    }
}
