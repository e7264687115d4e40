//! Reading a subject from a position or a time by polling, outside any group (`tail --follow`
//! holds a follower instead: [`Bus::follow_from`]).
//!
//! Each poll is a replay ([`Bus::replay`]): on JetStream an ordered ephemeral consumer, on Kafka
//! a consumer assigned to the partitions that never joins its group nor commits, on the
//! embedded bus a read of the log. Following polls again from the next sequence on JetStream
//! and the embedded bus; on Kafka, from a little before the newest record read (records already
//! read are skipped by their position), so that a record stored with a slightly earlier bus
//! time on another partition is not missed.

use std::collections::HashMap;

use dcpipe_connectors::bus::{
    Bus, BusError, BusErrorKind, BusKind, Record, ReplayFrom, ReplayRequest,
};

/// How far before the newest record read each later poll starts again.
pub const FOLLOW_OVERLAP_MS: i64 = 60 * 1000;

/// Records read per replay batch.
pub const READ_BATCH_MAX: usize = 256;

/// A reader of one subject (or, on JetStream, a pattern with `*` and `>`).
#[derive(Debug, Clone)]
pub struct SubjectReader {
    subject: String,
    from: ReplayFrom,
    until_ms: Option<i64>,
    /// Next offset to read, per partition.
    next: HashMap<u32, u64>,
    /// Bus time of the newest record read.
    newest_ms: Option<i64>,
}

impl SubjectReader {
    /// A reader of `subject` from `from` (inclusive) to `until_ms` (exclusive, bus time).
    pub fn new(subject: impl Into<String>, from: ReplayFrom, until_ms: Option<i64>) -> Self {
        SubjectReader {
            subject: subject.into(),
            from,
            until_ms,
            next: HashMap::new(),
            newest_ms: None,
        }
    }

    /// The subject read.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Every record stored since the last poll (from `from` on the first), in order per
    /// partition, at most `max` (the rest comes at the next poll). A subject that does not exist
    /// yet reads as empty.
    pub async fn poll(&mut self, bus: &dyn Bus, max: usize) -> Result<Vec<Record>, BusError> {
        // One ordered log (JetStream, embedded): go on from the next sequence. Kafka's offsets
        // are per partition, and an offset would apply to every partition: go by time there.
        let sequence = (bus.kind() != BusKind::Kafka)
            .then(|| self.next.get(&0).copied())
            .flatten();
        let from = match (self.newest_ms, sequence, self.from) {
            (None, _, from) => from,
            (Some(_), Some(next), _) => ReplayFrom::Offset(next),
            (Some(newest), None, ReplayFrom::TimeMs(start)) => {
                ReplayFrom::TimeMs((newest - FOLLOW_OVERLAP_MS).max(start))
            }
            (Some(newest), None, _) => ReplayFrom::TimeMs(newest - FOLLOW_OVERLAP_MS),
        };
        let mut replay = match bus
            .replay(ReplayRequest {
                subject: self.subject.clone(),
                from,
                until_ms: self.until_ms,
            })
            .await
        {
            Ok(replay) => replay,
            Err(e) if e.kind() == BusErrorKind::UnknownSubject => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let floor = match self.from {
            ReplayFrom::Offset(offset) => offset,
            ReplayFrom::Beginning | ReplayFrom::TimeMs(_) => 0,
        };
        let mut out = Vec::new();
        while out.len() < max {
            let records = replay
                .next_batch(READ_BATCH_MAX.min(max - out.len()))
                .await?;
            if records.is_empty() {
                break;
            }
            for record in records {
                let next = self.next.entry(record.position.partition).or_insert(floor);
                if record.position.offset < *next {
                    continue;
                }
                *next = record.position.offset + 1;
                self.newest_ms = Some(self.newest_ms.unwrap_or(i64::MIN).max(record.timestamp_ms));
                out.push(record);
            }
        }
        Ok(out)
    }
}
