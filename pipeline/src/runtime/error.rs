//! What a stage's failure means for its batch: the three kinds the runner acts on, and how the
//! ledger's, the bus's and the codec's errors map onto them.

use std::fmt;

use dcpipe_connectors::bus::{BusError, BusErrorKind};
use dcpipe_connectors::ledger::{LedgerError, LedgerErrorKind};
use dcpipe_schemas::CodecError;

use crate::error::Error;
use crate::reason::Reason;

/// What the runner does with a batch whose stage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StageErrorKind {
    /// Something that may pass: the bus or the database unavailable, a deadlock retried out.
    /// The batch is given back with an exponential backoff and decided again; a message whose
    /// deliveries run out is dead-lettered with `stage.retries_exhausted`.
    Transient,
    /// One item of the batch cannot be processed, and the stage could not tell which (an
    /// output that does not encode, a ledger constraint one request violates). The runner
    /// splits the batch until the item is alone and dead-letters it with this reason; the other
    /// items complete normally.
    Item(Reason),
    /// An invariant breach or a misconfiguration: retrying cannot help. The member stops taking
    /// work, gives its batch back for other members and processes, reports itself fatal (the
    /// process is no longer ready) and logs the error once.
    Fatal,
}

impl fmt::Display for StageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageErrorKind::Transient => f.write_str("transient"),
            StageErrorKind::Item(reason) => write!(f, "item ({reason})"),
            StageErrorKind::Fatal => f.write_str("fatal"),
        }
    }
}

impl StageErrorKind {
    /// A short stable label for metrics: `transient`, `item` or `fatal`.
    pub fn label(self) -> &'static str {
        match self {
            StageErrorKind::Transient => "transient",
            StageErrorKind::Item(_) => "item",
            StageErrorKind::Fatal => "fatal",
        }
    }
}

/// A stage failed to decide a batch (or to run its periodic work); see [`StageErrorKind`].
pub type StageError = Error<StageErrorKind>;

impl StageError {
    /// A failure that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Error::new(StageErrorKind::Transient, message)
    }

    /// One item of the batch cannot be processed, for `reason`.
    pub fn item(reason: Reason, message: impl Into<String>) -> Self {
        Error::new(StageErrorKind::Item(reason), message)
    }

    /// An invariant breach or a misconfiguration.
    pub fn fatal(message: impl Into<String>) -> Self {
        Error::new(StageErrorKind::Fatal, message)
    }
}

/// The stage kind of a ledger failure.
pub fn ledger_failure_kind(kind: LedgerErrorKind) -> StageErrorKind {
    match kind {
        LedgerErrorKind::Connect | LedgerErrorKind::Busy => StageErrorKind::Transient,
        // An unclassified database failure (I/O, a full disk, a server-side error): retried with
        // backoff; dead-lettered as `stage.retries_exhausted` if it outlives the deliveries.
        LedgerErrorKind::Database => StageErrorKind::Transient,
        // Input no ledger accepts. A batch above `BATCH_ITEMS_MAX` cannot reach the ledger
        // (`RunnerConfig::validate` refuses it at start, and splitting a batch only makes it
        // smaller), so this is one request the stage's checks let through.
        LedgerErrorKind::InvalidInput => StageErrorKind::Item(Reason::StageLedgerRefused),
        LedgerErrorKind::Integrity | LedgerErrorKind::Config => StageErrorKind::Fatal,
        // A kind this version does not know: stop and let an operator look rather than retry.
        _ => StageErrorKind::Fatal,
    }
}

/// The stage kind of a bus failure (publishing outputs, consuming, settling deliveries).
pub fn bus_failure_kind(kind: BusErrorKind) -> StageErrorKind {
    match kind {
        BusErrorKind::Connect
        | BusErrorKind::Publish
        | BusErrorKind::Consume
        | BusErrorKind::Ack
        | BusErrorKind::Replay
        | BusErrorKind::Timeout => StageErrorKind::Transient,
        // One message's output the bus will never take.
        BusErrorKind::MessageTooLarge
        | BusErrorKind::InvalidSubject
        | BusErrorKind::InvalidHeader => StageErrorKind::Item(Reason::StageOutputRefused),
        // The deployment is wrong (options, subjects never created) or the bus was shut down.
        BusErrorKind::Config
        | BusErrorKind::UnknownSubject
        | BusErrorKind::Topology
        | BusErrorKind::Closed => StageErrorKind::Fatal,
        _ => StageErrorKind::Fatal,
    }
}

impl From<LedgerError> for StageError {
    fn from(error: LedgerError) -> Self {
        Error::with_source(ledger_failure_kind(error.kind()), "ledger", error)
    }
}

impl From<BusError> for StageError {
    fn from(error: BusError) -> Self {
        Error::with_source(bus_failure_kind(error.kind()), "bus", error)
    }
}

impl From<CodecError> for StageError {
    /// An output that does not encode: its input is dead-lettered under the codec's code.
    fn from(error: CodecError) -> Self {
        let reason = Reason::Schema(error.kind());
        Error::with_source(
            StageErrorKind::Item(reason),
            "output does not encode",
            error,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_kinds_map_to_what_a_runner_can_do() {
        let cases = [
            (LedgerErrorKind::Connect, StageErrorKind::Transient),
            (LedgerErrorKind::Busy, StageErrorKind::Transient),
            (LedgerErrorKind::Database, StageErrorKind::Transient),
            (
                LedgerErrorKind::InvalidInput,
                StageErrorKind::Item(Reason::StageLedgerRefused),
            ),
            (LedgerErrorKind::Integrity, StageErrorKind::Fatal),
            (LedgerErrorKind::Config, StageErrorKind::Fatal),
        ];
        for (ledger, stage) in cases {
            let error = StageError::from(LedgerError::new(ledger, "x"));
            assert_eq!(error.kind(), stage, "{ledger:?}");
            assert_eq!(
                error.source_as::<LedgerError>().map(LedgerError::kind),
                Some(ledger)
            );
        }
    }

    #[test]
    fn bus_kinds_map_to_what_a_runner_can_do() {
        use BusErrorKind as B;
        for kind in [
            B::Connect,
            B::Publish,
            B::Consume,
            B::Ack,
            B::Replay,
            B::Timeout,
        ] {
            assert_eq!(
                bus_failure_kind(kind),
                StageErrorKind::Transient,
                "{kind:?}"
            );
        }
        for kind in [B::MessageTooLarge, B::InvalidSubject, B::InvalidHeader] {
            assert_eq!(
                bus_failure_kind(kind),
                StageErrorKind::Item(Reason::StageOutputRefused),
                "{kind:?}"
            );
        }
        for kind in [B::Config, B::UnknownSubject, B::Topology, B::Closed] {
            assert_eq!(bus_failure_kind(kind), StageErrorKind::Fatal, "{kind:?}");
        }
    }

    #[test]
    fn kind_displays_its_reason() {
        let error = StageError::item(Reason::StageLedgerRefused, "wallet id too long");
        assert_eq!(
            error.to_string(),
            "item (stage.ledger_refused): wallet id too long"
        );
        assert_eq!(error.kind().label(), "item");
    }
}
