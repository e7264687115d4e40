//! `tail`: a subject read from a position or a time, once or following it, decoded and
//! filtered by payment id.

use std::time::Duration;

use dcpipe_connectors::bus::{Bus, BusErrorKind, Follow, Record, ReplayFrom};
use tokio_util::sync::CancellationToken;

use super::OpsError;
use super::follow::{READ_BATCH_MAX, SubjectReader};
use super::records::Decoded;

/// How often following looks again for a subject that does not exist yet.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Longest wait of one read of a followed subject (the follower is kept between reads).
pub const FOLLOW_WAIT: Duration = Duration::from_millis(500);

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
/// cancelled. Following holds one follower ([`Bus::follow_from`]) for as long as it runs, never
/// one reader per look.
pub async fn tail(
    bus: &dyn Bus,
    options: &TailOptions,
    stop: &CancellationToken,
    mut show: impl FnMut(&Record, &Decoded),
) -> Result<u64, OpsError> {
    let mut shown = 0u64;
    if options.follow {
        let Some(mut follow) = start_following(bus, options, stop).await? else {
            return Ok(shown);
        };
        loop {
            let records = tokio::select! {
                () = stop.cancelled() => return Ok(shown),
                records = follow.next_batch(READ_BATCH_MAX, FOLLOW_WAIT) => records?,
            };
            if keep(options, records, &mut shown, &mut show) {
                return Ok(shown);
            }
        }
    }
    let until_ms = match options.until {
        ReadUntil::TimeMs(ms) => Some(ms),
        ReadUntil::End | ReadUntil::Offset(_) => None,
    };
    let mut reader = SubjectReader::new(options.subject.clone(), options.from, until_ms);
    loop {
        let records = tokio::select! {
            () = stop.cancelled() => return Ok(shown),
            records = reader.poll(bus, READ_BATCH_MAX) => records?,
        };
        if records.is_empty() || keep(options, records, &mut shown, &mut show) {
            return Ok(shown);
        }
    }
}

/// The follower of the subject from `options.from`; while the subject does not exist, looks
/// again every [`FOLLOW_INTERVAL`]. `None` when `stop` is cancelled first.
async fn start_following(
    bus: &dyn Bus,
    options: &TailOptions,
    stop: &CancellationToken,
) -> Result<Option<Box<dyn Follow>>, OpsError> {
    loop {
        let started = tokio::select! {
            () = stop.cancelled() => return Ok(None),
            started = bus.follow_from(&options.subject, options.from) => started,
        };
        match started {
            Ok(follow) => return Ok(Some(follow)),
            Err(e) if e.kind() == BusErrorKind::UnknownSubject => {}
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}

/// Hands the records of `records` that `options` keep to `show`, counting them in `shown`;
/// true once `limit` is reached.
fn keep(
    options: &TailOptions,
    records: Vec<Record>,
    shown: &mut u64,
    show: &mut impl FnMut(&Record, &Decoded),
) -> bool {
    for record in records {
        let past_the_end = match options.until {
            ReadUntil::End => false,
            ReadUntil::Offset(end) => record.position.offset >= end,
            ReadUntil::TimeMs(end) => record.timestamp_ms >= end,
        };
        if past_the_end {
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
        *shown += 1;
        if options.limit.is_some_and(|limit| *shown >= limit) {
            return true;
        }
    }
    false
}
