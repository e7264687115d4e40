//! Following a topic on Kafka: one consumer outside any group (a group id librdkafka needs for
//! `assign`, never joined nor committed to), assigned every partition of the topic from its
//! beginning (or from an offset or a time, looked up per partition), reading for as long as the follower lives. Partitions added to the topic later
//! are not followed: the follower must be started again to see them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::client::{ClosedOnThread, TracingContext, ungrouped_reader};
use super::wire;
use crate::bus::{BusError, BusErrorKind, Follow, KafkaOptions, Record, ReplayFrom};

/// Time allowed to the metadata lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

type FollowConsumer = StreamConsumer<TracingContext>;

/// A topic followed from its beginning or a given position.
pub(super) struct KafkaFollow {
    subject: String,
    consumer: ClosedOnThread<Arc<FollowConsumer>>,
}

fn follow_error(
    subject: &str,
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    BusError::with_source(
        BusErrorKind::Consume,
        format!("following {subject}: {what}"),
        error,
    )
}

impl KafkaFollow {
    /// Assigns every partition of `subject` from `from`.
    pub(super) async fn start(
        servers: &[String],
        options: &KafkaOptions,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Self, BusError> {
        let consumer: FollowConsumer = ungrouped_reader(servers, options, "follow")?;
        let consumer = Arc::new(consumer);
        let assigner = Arc::clone(&consumer);
        let consumer = ClosedOnThread::new(consumer);
        let topic = subject.to_owned();
        tokio::task::spawn_blocking(move || assign_all(&assigner, &topic, from))
            .await
            .map_err(|e| {
                BusError::with_source(BusErrorKind::Closed, "follow assignment task", e)
            })??;
        Ok(KafkaFollow {
            subject: subject.to_owned(),
            consumer,
        })
    }
}

/// Assigns every partition of `topic` from `from`. Blocks on the network.
fn assign_all(consumer: &FollowConsumer, topic: &str, from: ReplayFrom) -> Result<(), BusError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|e| follow_error(topic, "metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(BusError::new(
            BusErrorKind::UnknownSubject,
            format!("following {topic}: the topic has no partitions"),
        ));
    }
    let starts: Vec<(i32, Offset)> = match from {
        ReplayFrom::Beginning => partitions.iter().map(|p| (*p, Offset::Beginning)).collect(),
        // An offset past the end would be out of range, and the reset would go back to the
        // beginning: start at the end then, and before the beginning at the beginning.
        ReplayFrom::Offset(offset) => {
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            let mut starts = Vec::with_capacity(partitions.len());
            for partition in &partitions {
                let (low, high) = consumer
                    .fetch_watermarks(topic, *partition, LOOKUP_TIMEOUT)
                    .map_err(|e| follow_error(topic, "watermarks", e))?;
                starts.push((*partition, Offset::Offset(offset.clamp(low, high.max(low)))));
            }
            starts
        }
        ReplayFrom::TimeMs(ms) => {
            let mut query = TopicPartitionList::new();
            for partition in &partitions {
                query
                    .add_partition_offset(topic, *partition, Offset::Offset(ms))
                    .map_err(|e| follow_error(topic, "time query", e))?;
            }
            let answer = consumer
                .offsets_for_times(query, LOOKUP_TIMEOUT)
                .map_err(|e| follow_error(topic, "offsets for time", e))?;
            answer
                .elements()
                .iter()
                .map(|element| {
                    let start = match element.offset() {
                        Offset::Offset(offset) => Offset::Offset(offset),
                        // No record at or after the time yet: what comes next.
                        Offset::End => Offset::End,
                        _ => Offset::Beginning,
                    };
                    (element.partition(), start)
                })
                .collect()
        }
    };
    let mut assignment = TopicPartitionList::new();
    for (partition, start) in starts {
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(|e| follow_error(topic, "assignment", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| follow_error(topic, "assign", e))
}

#[async_trait]
impl Follow for KafkaFollow {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let Some(consumer) = self.consumer.get().cloned() else {
            return Err(BusError::new(BusErrorKind::Closed, "follower closed"));
        };
        let mut records = Vec::new();
        while records.len() < max.max(1) {
            let wait = if records.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            let Ok(received) = tokio::time::timeout(wait, consumer.recv()).await else {
                break;
            };
            let message = received.map_err(|e| follow_error(&self.subject, "reading", e))?;
            records.push(wire::record(&message));
        }
        Ok(records)
    }
}
