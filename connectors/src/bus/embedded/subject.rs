//! One subject of the embedded bus: its in-memory log, duplicate window and consumer groups.
//!
//! Everything here is synchronous and runs under the subject's lock; waiting (for messages,
//! for room) is done by the caller in `super`, woken by the subject's notifiers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::dedup::DedupWindow;
use super::group::{AckOutcome, ConsumerId, Group, MemberLimits, NakOutcome, Taken};
use crate::bus::{Headers, Outgoing, Position, Record, ReplayFrom, StartAt};

/// A message as the log keeps it.
#[derive(Debug)]
pub(super) struct StoredMessage {
    payload: Bytes,
    key: Option<Bytes>,
    msg_id: Option<Arc<str>>,
    headers: Headers,
    timestamp_ms: i64,
    size_bytes: usize,
}

impl StoredMessage {
    /// Takes the parts of `message` the log keeps (its subject is the log's).
    pub(super) fn new(message: Outgoing) -> Self {
        let size_bytes = message.payload.len()
            + message.key.as_ref().map_or(0, Bytes::len)
            + message.msg_id.as_ref().map_or(0, String::len)
            + message
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>();
        StoredMessage {
            payload: message.payload,
            key: message.key,
            msg_id: message.msg_id.map(Arc::from),
            headers: message.headers,
            timestamp_ms: 0,
            size_bytes,
        }
    }

    /// What the message counts against the subject's byte limit: payload, key, id and headers.
    pub(super) fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

/// Retention limits of one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SubjectLimits {
    pub(super) messages_max: usize,
    pub(super) bytes_max: usize,
}

/// What [`SubjectLog::append`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Appended {
    /// Stored at `seq`.
    Stored { seq: u64 },
    /// Its `msg_id` was already stored at `seq` inside the duplicate window: not stored again.
    Duplicate { seq: u64 },
}

/// A batch read by [`SubjectLog::read`].
#[derive(Debug)]
pub(super) struct ReadBatch {
    pub(super) records: Vec<Record>,
    /// Where the next read starts.
    pub(super) next_seq: u64,
    /// The range is exhausted.
    pub(super) finished: bool,
}

/// What one group's fetch got.
#[derive(Debug)]
pub(super) struct Fetched {
    /// Records with their delivery counts.
    pub(super) deliveries: Vec<(Record, u32)>,
    /// Messages settled because they had their last allowed delivery.
    pub(super) exhausted: u64,
    /// When something of this group becomes due (a delivery expires, a nak delay ends).
    pub(super) next_due: Option<Instant>,
}

/// Sizes of one subject, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedSubjectStats {
    /// Messages retained.
    pub messages: usize,
    /// Bytes retained (payloads, keys, ids and headers).
    pub bytes: usize,
    /// Sequence of the oldest retained message (equals `next_offset` when empty).
    pub first_offset: u64,
    /// Sequence the next message will get.
    pub next_offset: u64,
    /// Messages not yet settled by the slowest consumer group (0 without groups).
    pub backlog: u64,
    /// Consumer groups on the subject.
    pub groups: usize,
}

/// The state of one subject.
#[derive(Debug)]
pub(super) struct SubjectLog {
    subject: String,
    limits: SubjectLimits,
    messages: VecDeque<StoredMessage>,
    /// Sequence of `messages[0]` (equals `next_seq` when empty).
    first_seq: u64,
    next_seq: u64,
    bytes: usize,
    /// Timestamps never go backwards within a subject, so that replay by time can bisect.
    last_timestamp_ms: i64,
    dedup: DedupWindow,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    /// Publishers waiting for room; they are notified only when this is not zero.
    pub(super) waiting_publishers: usize,
    /// Fetchers waiting for messages; they are notified only when this is not zero.
    pub(super) waiting_fetchers: usize,
}

impl SubjectLog {
    /// An empty subject; its first message gets sequence 1.
    pub(super) fn new(subject: String, limits: SubjectLimits, dedup: DedupWindow) -> Self {
        SubjectLog {
            subject,
            limits,
            messages: VecDeque::new(),
            first_seq: 1,
            next_seq: 1,
            bytes: 0,
            last_timestamp_ms: 0,
            dedup,
            groups: Vec::new(),
            group_index: HashMap::new(),
            waiting_publishers: 0,
            waiting_fetchers: 0,
        }
    }

    /// Stores `message`, or answers with the earlier sequence of its `msg_id`. When the subject
    /// is at capacity and its oldest message is not settled by every group, gives the message
    /// back: the caller waits for room and tries again.
    pub(super) fn append(
        &mut self,
        mut message: StoredMessage,
        now: Instant,
        now_ms: i64,
    ) -> Result<Appended, StoredMessage> {
        self.dedup.expire(now);
        if let Some(id) = &message.msg_id
            && let Some(seq) = self.dedup.lookup(id, now)
        {
            return Ok(Appended::Duplicate { seq });
        }
        if !self.make_room(message.size_bytes) {
            return Err(message);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_timestamp_ms = self.last_timestamp_ms.max(now_ms);
        message.timestamp_ms = self.last_timestamp_ms;
        self.bytes += message.size_bytes;
        if let Some(id) = &message.msg_id {
            self.dedup.remember(Arc::clone(id), seq, now);
        }
        self.messages.push_back(message);
        Ok(Appended::Stored { seq })
    }

    /// Drops settled messages from the front until one of `size_bytes` fits; false when the
    /// oldest message still blocks (unsettled by a group).
    fn make_room(&mut self, size_bytes: usize) -> bool {
        let fits = |log: &Self| {
            log.messages.len() < log.limits.messages_max
                && log.bytes + size_bytes <= log.limits.bytes_max
        };
        if fits(self) {
            return true;
        }
        // Without groups nobody waits for anything: the log keeps the newest messages.
        let floor = self.min_floor().unwrap_or(u64::MAX);
        while !fits(self) && self.first_seq < floor {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= oldest.size_bytes;
            self.first_seq += 1;
        }
        fits(self)
    }

    /// The lowest floor over all groups, `None` without groups.
    fn min_floor(&self) -> Option<u64> {
        self.groups.iter().map(Group::floor).min()
    }

    /// The group named `name`, created at `start` if missing; `None` when the subject already
    /// has `groups_max` groups.
    pub(super) fn group(&mut self, name: &str, start: StartAt, groups_max: usize) -> Option<usize> {
        if let Some(&index) = self.group_index.get(name) {
            return Some(index);
        }
        if self.groups.len() >= groups_max {
            return None;
        }
        let cursor = match start {
            StartAt::Earliest => self.first_seq,
            StartAt::Latest => self.next_seq,
        };
        self.groups.push(Group::new(cursor));
        let index = self.groups.len() - 1;
        self.group_index.insert(name.to_owned(), index);
        Some(index)
    }

    /// Adds member `consumer` to group `group`.
    pub(super) fn join(&mut self, group: usize, consumer: ConsumerId, max_in_flight: usize) {
        if let Some(group) = self.groups.get_mut(group) {
            group.join(consumer, max_in_flight);
        }
    }

    /// Removes member `consumer` from group `group`.
    pub(super) fn leave(&mut self, group: usize, consumer: ConsumerId) {
        if let Some(group) = self.groups.get_mut(group) {
            group.leave(consumer);
        }
    }

    /// Up to `max` deliveries for member `consumer` of `group`.
    pub(super) fn fetch(
        &mut self,
        group: usize,
        consumer: ConsumerId,
        limits: &MemberLimits,
        max: usize,
        now: Instant,
    ) -> Fetched {
        let end_seq = self.next_seq;
        let Some(state) = self.groups.get_mut(group) else {
            return Fetched {
                deliveries: Vec::new(),
                exhausted: 0,
                next_due: None,
            };
        };
        let mut exhausted = state.expire(now);
        let Taken {
            grants,
            exhausted: exhausted_on_take,
        } = state.take(consumer, limits, max, end_seq, now);
        exhausted += exhausted_on_take;
        let next_due = state.next_due();
        let deliveries = grants
            .into_iter()
            .filter_map(|grant| {
                self.record(grant.seq)
                    .map(|record| (record, grant.delivery_count))
            })
            .collect();
        Fetched {
            deliveries,
            exhausted,
            next_due,
        }
    }

    /// Settles `seq` for `group`.
    pub(super) fn ack(&mut self, group: usize, seq: u64) -> AckOutcome {
        match self.groups.get_mut(group) {
            Some(state) => state.ack(seq),
            None => AckOutcome {
                settled: false,
                freed_full_member: false,
            },
        }
    }

    /// Gives `seq` back to `group` for redelivery after `delay`.
    pub(super) fn nak(
        &mut self,
        group: usize,
        seq: u64,
        delivery_count: u32,
        delay: std::time::Duration,
        now: Instant,
    ) -> NakOutcome {
        match self.groups.get_mut(group) {
            Some(state) => state.nak(seq, delivery_count, delay, now),
            None => NakOutcome::Stale,
        }
    }

    /// Messages not yet settled by the slowest group (0 without groups).
    pub(super) fn backlog(&self) -> u64 {
        self.min_floor()
            .map_or(0, |floor| self.next_seq.saturating_sub(floor))
    }

    /// The sequence a replay from `from` starts at.
    pub(super) fn replay_start(&self, from: ReplayFrom) -> u64 {
        match from {
            ReplayFrom::Beginning => self.first_seq,
            ReplayFrom::Offset(offset) => offset.max(self.first_seq),
            ReplayFrom::TimeMs(time_ms) => {
                let skipped = self.messages.partition_point(|m| m.timestamp_ms < time_ms);
                self.first_seq + skipped as u64
            }
        }
    }

    /// The sequence the next message will get: where a replay that began now ends.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Up to `max` records from `from_seq`, below `end_seq` and before `until_ms`. Messages
    /// trimmed since the replay began are skipped, as a broker's retention would.
    pub(super) fn read(
        &self,
        from_seq: u64,
        end_seq: u64,
        until_ms: Option<i64>,
        max: usize,
    ) -> ReadBatch {
        let mut seq = from_seq.max(self.first_seq);
        let end_seq = end_seq.min(self.next_seq);
        let mut records = Vec::new();
        let mut finished = seq >= end_seq;
        while records.len() < max && seq < end_seq {
            let Some(message) = self.message(seq) else {
                break;
            };
            if until_ms.is_some_and(|until| message.timestamp_ms >= until) {
                finished = true;
                break;
            }
            records.push(self.to_record(seq, message));
            seq += 1;
        }
        ReadBatch {
            records,
            next_seq: seq,
            finished: finished || seq >= end_seq,
        }
    }

    /// Current sizes.
    pub(super) fn stats(&self) -> EmbeddedSubjectStats {
        EmbeddedSubjectStats {
            messages: self.messages.len(),
            bytes: self.bytes,
            first_offset: self.first_seq,
            next_offset: self.next_seq,
            backlog: self.backlog(),
            groups: self.groups.len(),
        }
    }

    fn message(&self, seq: u64) -> Option<&StoredMessage> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.messages.get(index)
    }

    fn record(&self, seq: u64) -> Option<Record> {
        self.message(seq)
            .map(|message| self.to_record(seq, message))
    }

    fn to_record(&self, seq: u64, message: &StoredMessage) -> Record {
        Record {
            subject: self.subject.clone(),
            payload: message.payload.clone(),
            key: message.key.clone(),
            msg_id: message.msg_id.as_deref().map(str::to_owned),
            headers: message.headers.clone(),
            position: Position {
                partition: 0,
                offset: seq,
            },
            timestamp_ms: message.timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GROUPS_MAX: usize = 8;

    fn log_with_limits(messages_max: usize, bytes_max: usize) -> SubjectLog {
        SubjectLog::new(
            "orders.created".to_owned(),
            SubjectLimits {
                messages_max,
                bytes_max,
            },
            DedupWindow::new(Duration::from_secs(120), 1000),
        )
    }

    fn message(payload: &'static str) -> StoredMessage {
        StoredMessage::new(Outgoing::new("orders.created", payload))
    }

    fn member() -> MemberLimits {
        MemberLimits {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_in_flight: 100,
        }
    }

    fn append_all(log: &mut SubjectLog, payloads: &[&'static str], now: Instant) {
        for payload in payloads {
            assert!(
                matches!(
                    log.append(message(payload), now, 0),
                    Ok(Appended::Stored { .. })
                ),
                "append {payload}"
            );
        }
    }

    fn payloads(records: &[Record]) -> Vec<&[u8]> {
        records.iter().map(|r| r.payload.as_ref()).collect()
    }

    #[test]
    fn without_groups_the_oldest_message_is_discarded_at_the_message_limit() {
        let mut log = log_with_limits(2, 1 << 20);
        append_all(&mut log, &["a", "b", "c"], Instant::now());
        let stats = log.stats();
        assert_eq!(
            (stats.messages, stats.first_offset, stats.next_offset),
            (2, 2, 4)
        );
        assert_eq!(
            payloads(&log.read(1, 4, None, 10).records),
            vec![b"b", b"c"]
        );
    }

    #[test]
    fn without_groups_the_oldest_messages_are_discarded_at_the_byte_limit() {
        let mut log = log_with_limits(100, 10);
        append_all(&mut log, &["aaaa", "bbbb", "cccccc"], Instant::now());
        let stats = log.stats();
        assert_eq!((stats.messages, stats.bytes), (2, 10));
        assert_eq!(
            payloads(&log.read(1, 4, None, 10).records),
            vec![&b"bbbb"[..], b"cccccc"]
        );
    }

    #[test]
    fn a_message_unsettled_by_a_group_is_not_trimmed() {
        let mut log = log_with_limits(2, 1 << 20);
        let now = Instant::now();
        log.group("billing", StartAt::Earliest, GROUPS_MAX)
            .expect("group");
        append_all(&mut log, &["a", "b"], now);
        assert!(log.append(message("c"), now, 0).is_err());
        assert_eq!(log.stats().messages, 2);
    }

    #[test]
    fn messages_settled_by_every_group_are_trimmed_to_make_room() {
        let mut log = log_with_limits(2, 1 << 20);
        let now = Instant::now();
        let group = log
            .group("billing", StartAt::Earliest, GROUPS_MAX)
            .expect("group");
        log.join(group, 1, 100);
        append_all(&mut log, &["a", "b"], now);
        let fetched = log.fetch(group, 1, &member(), 1, now);
        assert_eq!(fetched.deliveries.len(), 1);
        assert!(log.ack(group, 1).settled);
        append_all(&mut log, &["c"], now);
        assert_eq!(
            payloads(&log.read(1, 4, None, 10).records),
            vec![b"b", b"c"]
        );
    }

    #[test]
    fn the_slowest_group_holds_the_trim() {
        let mut log = log_with_limits(2, 1 << 20);
        let now = Instant::now();
        let fast = log
            .group("fast", StartAt::Earliest, GROUPS_MAX)
            .expect("group");
        let slow = log
            .group("slow", StartAt::Earliest, GROUPS_MAX)
            .expect("group");
        log.join(fast, 1, 100);
        log.join(slow, 2, 100);
        append_all(&mut log, &["a", "b"], now);
        log.fetch(fast, 1, &member(), 2, now);
        log.ack(fast, 1);
        log.ack(fast, 2);
        assert!(log.append(message("c"), now, 0).is_err());
        assert_eq!(log.backlog(), 2);
    }

    #[test]
    fn a_group_starting_latest_does_not_hold_older_messages() {
        let mut log = log_with_limits(2, 1 << 20);
        let now = Instant::now();
        append_all(&mut log, &["a", "b"], now);
        log.group("late", StartAt::Latest, GROUPS_MAX)
            .expect("group");
        append_all(&mut log, &["c"], now);
        assert_eq!(log.stats().first_offset, 2);
        assert_eq!(log.backlog(), 1);
    }

    #[test]
    fn a_duplicate_msg_id_is_answered_with_the_first_sequence() {
        let mut log = log_with_limits(100, 1 << 20);
        let now = Instant::now();
        let first = Outgoing::new("orders.created", "a").with_msg_id("p-1");
        let again = Outgoing::new("orders.created", "a").with_msg_id("p-1");
        assert_eq!(
            log.append(StoredMessage::new(first), now, 0).ok(),
            Some(Appended::Stored { seq: 1 })
        );
        assert_eq!(
            log.append(StoredMessage::new(again), now, 0).ok(),
            Some(Appended::Duplicate { seq: 1 })
        );
        assert_eq!(log.stats().messages, 1);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut log = log_with_limits(100, 1 << 20);
        let now = Instant::now();
        for now_ms in [1_000, 900, 1_100] {
            assert!(log.append(message("x"), now, now_ms).is_ok());
        }
        let stamps: Vec<i64> = log
            .read(1, 4, None, 10)
            .records
            .iter()
            .map(|r| r.timestamp_ms)
            .collect();
        assert_eq!(stamps, vec![1_000, 1_000, 1_100]);
    }

    #[test]
    fn replay_by_time_starts_at_the_first_message_at_or_after_it() {
        let mut log = log_with_limits(100, 1 << 20);
        let now = Instant::now();
        for now_ms in [1_000, 2_000, 2_000, 3_000] {
            assert!(log.append(message("x"), now, now_ms).is_ok());
        }
        assert_eq!(log.replay_start(ReplayFrom::TimeMs(2_000)), 2);
        assert_eq!(log.replay_start(ReplayFrom::TimeMs(2_001)), 4);
        assert_eq!(log.replay_start(ReplayFrom::TimeMs(9_000)), 5);
    }

    #[test]
    fn read_stops_before_until_ms() {
        let mut log = log_with_limits(100, 1 << 20);
        let now = Instant::now();
        for now_ms in [1_000, 2_000, 3_000] {
            assert!(log.append(message("x"), now, now_ms).is_ok());
        }
        let batch = log.read(1, 4, Some(3_000), 10);
        assert_eq!(batch.records.len(), 2);
        assert!(batch.finished);
    }

    #[test]
    fn the_group_limit_is_enforced() {
        let mut log = log_with_limits(100, 1 << 20);
        assert!(log.group("a", StartAt::Earliest, 1).is_some());
        assert!(log.group("a", StartAt::Earliest, 1).is_some());
        assert!(log.group("b", StartAt::Earliest, 1).is_none());
    }
}
