//! Replays on Kafka: a consumer outside any group, assigned every partition of the topic at its
//! start offset, reading up to the high watermarks captured when the replay began.
//!
//! A start time becomes an offset per partition through the broker's offset-for-time lookup.
//! Brokers may answer with an earlier offset than the exact one (tansu answers 0 when no
//! record matches), so records are also filtered by timestamp: the range is exact whatever
//! the broker answers. Records come in order within a partition; partitions interleave.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::client::{ClosedOnThread, TracingContext, ungrouped_reader};
use super::wire;
use crate::bus::{
    BusError, BusErrorKind, KafkaOptions, Record, ReplayFrom, ReplayRequest, ReplayStream,
};

/// Time allowed to each metadata, watermark or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after which the read positions are checked against the watermarks (a range can
/// end on offsets that hold no record, e.g. transaction markers).
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// Longest time without progress before a replay fails.
const REPLAY_READ_TIMEOUT: Duration = Duration::from_secs(30);

type ReplayConsumer = StreamConsumer<TracingContext>;

/// A replay of one topic.
pub(super) struct KafkaReplay {
    subject: String,
    consumer: ClosedOnThread<Arc<ReplayConsumer>>,
    /// Partitions still being read, with the offset where their range ends (exclusive).
    ends: HashMap<i32, i64>,
    /// The partitions of `ends`, for [`ReplayStream::open_partitions`].
    open: Vec<u32>,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl KafkaReplay {
    /// Looks up the range of every partition and assigns the consumer to it.
    pub(super) async fn start(
        servers: &[String],
        options: &KafkaOptions,
        request: ReplayRequest,
    ) -> Result<Self, BusError> {
        let consumer: ReplayConsumer = ungrouped_reader(servers, options, "replay")?;
        let consumer = Arc::new(consumer);
        // The planner's reference ends with the planning task, before this function goes on:
        // the last one is always `ClosedOnThread`'s.
        let planner = Arc::clone(&consumer);
        let consumer = ClosedOnThread::new(consumer);
        let subject = request.subject.clone();
        let from = request.from;
        let ends = tokio::task::spawn_blocking(move || assign_range(&planner, &subject, from))
            .await
            .map_err(|e| {
                BusError::with_source(BusErrorKind::Closed, "replay planning task", e)
            })??;
        let mut open: Vec<u32> = ends.keys().filter_map(|p| u32::try_from(*p).ok()).collect();
        open.sort_unstable();
        Ok(KafkaReplay {
            subject: request.subject,
            consumer,
            ends,
            open,
            from_ms: match request.from {
                ReplayFrom::TimeMs(ms) => Some(ms),
                ReplayFrom::Beginning | ReplayFrom::Offset(_) => None,
            },
            until_ms: request.until_ms,
        })
    }

    /// Whether a record of the range belongs to the requested time window.
    fn in_window(&self, timestamp_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| timestamp_ms >= from)
            && self.until_ms.is_none_or(|until| timestamp_ms < until)
    }

    /// Marks partitions whose read position reached their end as done.
    fn finish_caught_up(&mut self, consumer: &ReplayConsumer) -> Result<(), BusError> {
        let positions = consumer
            .position()
            .map_err(|e| replay_error(&self.subject, "reading positions", e))?;
        for element in positions.elements() {
            if let (Offset::Offset(position), Some(end)) =
                (element.offset(), self.ends.get(&element.partition()))
                && position >= *end
            {
                self.finish(element.partition());
            }
        }
        Ok(())
    }

    /// `partition` is read to the end of its range.
    fn finish(&mut self, partition: i32) {
        self.ends.remove(&partition);
        self.open.retain(|p| i32::try_from(*p) != Ok(partition));
    }
}

fn replay_error(
    subject: &str,
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    BusError::with_source(
        BusErrorKind::Replay,
        format!("replay of {subject}: {what}"),
        error,
    )
}

/// Finds each partition's range `[start, high watermark)` and assigns the non-empty ones.
/// Blocks on the network.
fn assign_range(
    consumer: &ReplayConsumer,
    topic: &str,
    from: ReplayFrom,
) -> Result<HashMap<i32, i64>, BusError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|e| replay_error(topic, "metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut bounds = HashMap::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, LOOKUP_TIMEOUT)
            .map_err(|e| replay_error(topic, "watermarks", e))?;
        if high > low {
            bounds.insert(*partition, (low, high));
        }
    }
    let starts: HashMap<i32, i64> = match from {
        ReplayFrom::Beginning => bounds.iter().map(|(p, (low, _))| (*p, *low)).collect(),
        ReplayFrom::Offset(offset) => {
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            bounds
                .iter()
                .map(|(p, (low, _))| (*p, offset.max(*low)))
                .collect()
        }
        ReplayFrom::TimeMs(ms) => offsets_for_time(consumer, topic, &bounds, ms)?,
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for (partition, start) in starts {
        let Some((_, high)) = bounds.get(&partition) else {
            continue;
        };
        if start < *high {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|e| replay_error(topic, "assignment", e))?;
            ends.insert(partition, *high);
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| replay_error(topic, "assign", e))?;
    Ok(ends)
}

/// The first offset at or after `ms` in each partition of `bounds`, as the broker answers it
/// (possibly earlier than exact; never before the low watermark).
fn offsets_for_time(
    consumer: &ReplayConsumer,
    topic: &str,
    bounds: &HashMap<i32, (i64, i64)>,
    ms: i64,
) -> Result<HashMap<i32, i64>, BusError> {
    // A topic without records has nothing to look up, and librdkafka refuses an empty query
    // (`InvalidArgument`).
    if bounds.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = TopicPartitionList::new();
    for partition in bounds.keys() {
        query
            .add_partition_offset(topic, *partition, Offset::Offset(ms))
            .map_err(|e| replay_error(topic, "time query", e))?;
    }
    let answer = consumer
        .offsets_for_times(query, LOOKUP_TIMEOUT)
        .map_err(|e| replay_error(topic, "offsets for time", e))?;
    let mut starts = HashMap::new();
    for element in answer.elements() {
        let Some((low, high)) = bounds.get(&element.partition()) else {
            continue;
        };
        let start = match element.offset() {
            Offset::Offset(offset) => offset.max(*low),
            // No record at or after the time: the partition's range is empty.
            Offset::End => *high,
            _ => *low,
        };
        starts.insert(element.partition(), start);
    }
    Ok(starts)
}

#[async_trait]
impl ReplayStream for KafkaReplay {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut records = Vec::new();
        let Some(consumer) = self.consumer.get().cloned() else {
            return Err(BusError::new(BusErrorKind::Closed, "replay closed"));
        };
        let mut last_progress = Instant::now();
        while records.len() < max && !self.ends.is_empty() {
            let wait = if records.is_empty() {
                IDLE_CHECK
            } else {
                Duration::ZERO
            };
            let received = match tokio::time::timeout(wait, consumer.recv()).await {
                Ok(received) => received,
                Err(_) if !records.is_empty() => break,
                Err(_) => {
                    self.finish_caught_up(&consumer)?;
                    if last_progress.elapsed() >= REPLAY_READ_TIMEOUT {
                        return Err(BusError::new(
                            BusErrorKind::Timeout,
                            format!(
                                "replay of {} made no progress for {REPLAY_READ_TIMEOUT:?}",
                                self.subject
                            ),
                        ));
                    }
                    continue;
                }
            };
            let message = received.map_err(|e| replay_error(&self.subject, "reading", e))?;
            last_progress = Instant::now();
            let record = wire::record(&message);
            let partition = message.partition();
            let offset = message.offset();
            drop(message);
            let Some(end) = self.ends.get(&partition).copied() else {
                continue;
            };
            if offset + 1 >= end {
                self.finish(partition);
            }
            if offset < end && self.in_window(record.timestamp_ms) {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn open_partitions(&self) -> Option<&[u32]> {
        Some(&self.open)
    }
}
