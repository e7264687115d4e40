//! `tail`: a subject read from a position or a time, once or following it, decoded and
//! filtered by payment id.

use std::time::Duration;

use dcpipe_connectors::bus::{Bus, Record, ReplayFrom};
use tokio_util::sync::CancellationToken;

use super::OpsError;
use super::follow::{READ_BATCH_MAX, SubjectReader};
use super::records::Decoded;

/// How often a followed subject is read again.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Where a read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUntil {
    /// The end of the subject (or, following, never).
    End,
    /// Before this position: the stream sequence (JetStream, embedded) or the offset in every
    /// partition (Kafka), exclusive.
    Offset(u64),
    /// Before this bus time (ms since the epoch), exclusive.
    TimeMs(i64),
}

/// What to read.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// The subject (on JetStream a pattern may be given).
    pub subject: String,
    /// Where to start.
    pub from: ReplayFrom,
    /// Where to stop.
    pub until: ReadUntil,
    /// Keep reading new records until cancelled.
    pub follow: bool,
    /// Only records about this payment (its own `payment_id`, or its original's).
    pub payment_id: Option<[u8; 16]>,
    /// Stop after this many records shown.
    pub limit: Option<u64>,
}

/// Reads as `options` say and hands every record kept to `show`; returns how many were shown.
/// Returns when the range is read (without `follow`), when `limit` is reached or when `stop` is
/// cancelled.
pub async fn tail(
    bus: &dyn Bus,
    options: &TailOptions,
    stop: &CancellationToken,
    mut show: impl FnMut(&Record, &Decoded),
) -> Result<u64, OpsError> {
    let until_ms = match options.until {
        ReadUntil::TimeMs(ms) => Some(ms),
        ReadUntil::End | ReadUntil::Offset(_) => None,
    };
    let mut reader = SubjectReader::new(options.subject.clone(), options.from, until_ms);
    let mut shown = 0u64;
    loop {
        let records = tokio::select! {
            () = stop.cancelled() => return Ok(shown),
            records = reader.poll(bus, READ_BATCH_MAX) => records?,
        };
        let exhausted = records.is_empty();
        for record in records {
            if let ReadUntil::Offset(end) = options.until
                && record.position.offset >= end
            {
                continue;
            }
            let decoded = Decoded::of(&record.payload);
            if options
                .payment_id
                .is_some_and(|id| decoded.payment_id() != Some(id))
            {
                continue;
            }
            show(&record, &decoded);
            shown += 1;
            if options.limit.is_some_and(|limit| shown >= limit) {
                return Ok(shown);
            }
        }
        if exhausted {
            if !options.follow {
                return Ok(shown);
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(shown),
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }
}
