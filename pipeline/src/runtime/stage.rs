use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_schemas::{CodecError, Message};

use super::StageError;
use crate::reason::Reason;

/// One consumed message, as a stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Subject it was consumed from.
    pub subject: &'a str,
    /// The payload, as published.
    pub payload: &'a [u8],
    /// 1 on the first delivery.
    pub delivery_count: u32,
    /// Where it is stored on the bus: tells a resubmission from a redelivery.
    pub position: Position,
}

/// What a stage decided for one input.
#[derive(Debug)]
pub enum Verdict {
    /// Processed: publish these messages (possibly none), then ack.
    Done(Vec<Outgoing>),
    /// Can never be processed as it is: publish a dead letter with the original bytes and this
    /// stable reason, publish the outputs (possibly none), then ack.
    DeadLetter {
        /// Stable reason (e.g. `schema.bad_magic`, `contradiction.completed_unknown`).
        reason: Reason,
        /// Human-readable detail (no secrets).
        detail: String,
        /// Messages to publish anyway (e.g. the final outcome announced again).
        outputs: Vec<Outgoing>,
    },
    /// Not yet: handed back and delivered again after the runner's backoff, while the rest of
    /// the batch completes (e.g. a vehicle's telemetry after a gap, waiting for the missing
    /// reports). Dead-lettered `stage.retries_exhausted` when its deliveries run out.
    Retry {
        /// Why it waits (no secrets).
        why: String,
    },
}

impl Verdict {
    /// A dead letter with no outputs.
    pub fn dead_letter(reason: Reason, detail: impl Into<String>) -> Self {
        Verdict::DeadLetter {
            reason,
            detail: detail.into(),
            outputs: Vec::new(),
        }
    }

    /// The dead letter for an input that does not decode.
    pub fn undecodable(error: &CodecError) -> Self {
        Verdict::dead_letter(Reason::Schema(error.kind()), error.to_string())
    }

    /// The reason, if this is a dead letter.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Verdict::Done(_) | Verdict::Retry { .. } => None,
            Verdict::DeadLetter { reason, .. } => Some(*reason),
        }
    }
}

/// A stage of the pipeline: the logic between consuming and publishing.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Stable name, used for the consumer group, dead letters and metrics (e.g. `payer`).
    fn name(&self) -> &'static str;

    /// Whose stage this instance is: an institution id, or the central bank.
    fn owner(&self) -> &str;

    /// The subject this stage consumes.
    fn subject(&self) -> String;

    /// The consumer group; stage instances in any number of processes share it.
    fn group(&self) -> String {
        format!("{}-{}", self.owner(), self.name())
    }

    /// Decides one batch, returning one verdict per input, in order.
    ///
    /// An error says what the whole batch cannot do (see [`super::StageErrorKind`]): the runner
    /// retries it, splits it to isolate one item, or stops the member.
    async fn handle(&self, batch: &[Input<'_>]) -> Result<Vec<Verdict>, StageError>;

    /// Periodic work (expiry sweeps, closing settlement windows), if any.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Runs the periodic work; returns messages to publish.
    async fn tick(&self) -> Result<Vec<Outgoing>, StageError> {
        Ok(Vec::new())
    }
}

/// Encodes `message` for `subject`, with its dedup id and ordering key. A message that does not
/// encode is an item failure: its input is dead-lettered under the codec's code.
pub fn outgoing<M: Message>(
    subject: String,
    message: &M,
    msg_id: String,
    key: &[u8],
) -> Result<Outgoing, StageError> {
    let payload = dcpipe_schemas::encode(message)?;
    Ok(Outgoing {
        subject,
        payload: Bytes::from(payload),
        key: Some(Bytes::copy_from_slice(key)),
        msg_id: Some(msg_id),
        headers: Vec::new(),
    })
}
