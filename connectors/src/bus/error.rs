use std::error::Error as StdError;
use std::fmt;

/// What went wrong on a bus, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// The bus URL or its options are wrong.
    Config,
    /// Could not reach or authenticate to the broker.
    Connect,
    /// A subject name that not every bus accepts.
    InvalidSubject,
    /// The subject has no stream or topic (call `ensure_subject` first).
    UnknownSubject,
    /// Creating a stream or topic failed.
    Topology,
    /// The broker did not confirm a publish.
    Publish,
    /// The payload is larger than [`super::PAYLOAD_BYTES_MAX`].
    MessageTooLarge,
    /// A header name or value that the bus cannot carry (control characters, a name reserved
    /// by the broker or by dcpipe).
    InvalidHeader,
    /// Fetching deliveries failed.
    Consume,
    /// Acking or naking failed (the message will be redelivered).
    Ack,
    /// A replay could not be set up or read.
    Replay,
    /// An operation did not finish within its deadline.
    Timeout,
    /// The bus was shut down.
    Closed,
}

impl BusErrorKind {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            BusErrorKind::Connect
                | BusErrorKind::Publish
                | BusErrorKind::Consume
                | BusErrorKind::Ack
                | BusErrorKind::Timeout
        )
    }
}

/// A bus error: a [`BusErrorKind`] with a message and the underlying cause.
#[derive(Debug)]
pub struct BusError {
    kind: BusErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl BusError {
    /// An error of `kind` with a message.
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: BusErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        BusError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for BusError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
