use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dcpipe_connectors::bus::{Outgoing, Position};
use dcpipe_connectors::ledger::LedgerError;
use dcpipe_schemas::{CodecError, Message};

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
    /// Can never be processed: publish a dead letter with the original bytes and this stable
    /// reason, publish the outputs (possibly none), then ack.
    DeadLetter {
        /// Stable reason code (e.g. `schema.bad_magic`, `sig.institution_invalid`).
        reason_code: String,
        /// Human-readable detail (no secrets).
        detail: String,
        /// Messages to publish anyway.
        outputs: Vec<Outgoing>,
    },
}

impl Verdict {
    /// A dead letter with no outputs.
    pub fn dead_letter(reason_code: impl Into<String>, detail: impl Into<String>) -> Self {
        Verdict::DeadLetter {
            reason_code: reason_code.into(),
            detail: detail.into(),
            outputs: Vec::new(),
        }
    }

    /// The dead letter for an input that does not decode.
    pub fn undecodable(error: &CodecError) -> Self {
        Verdict::dead_letter(error.reason_code(), error.to_string())
    }
}

/// A failure that may pass (a database or bus unavailable): the batch is given back for
/// redelivery, and dead-lettered once its deliveries are exhausted.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// Signing or encoding an output failed.
    #[error("output: {0}")]
    Output(String),
}

/// A stage of the pipeline: the logic between consuming and publishing.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Stable name, used for the consumer group, dead letters and metrics (e.g. `payer`).
    fn name(&self) -> &str;

    /// The subject this stage consumes.
    fn subject(&self) -> String;

    /// The consumer group; stage instances in any number of processes share it.
    fn group(&self) -> String;

    /// Decides one batch, returning one verdict per input, in order.
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

/// Encodes `message` for `subject`, with its dedup id and ordering key.
pub fn outgoing<M: Message>(
    subject: String,
    message: &M,
    msg_id: String,
    key: &[u8],
) -> Result<Outgoing, StageError> {
    let payload = dcpipe_schemas::encode(message)
        .map_err(|e| StageError::Output(format!("{} does not encode: {e}", M::NAME)))?;
    Ok(Outgoing {
        subject,
        payload: Bytes::from(payload),
        key: Some(Bytes::copy_from_slice(key)),
        msg_id: Some(msg_id),
        headers: Vec::new(),
    })
}
