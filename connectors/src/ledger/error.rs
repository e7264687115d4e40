use std::error::Error as StdError;
use std::fmt;

/// What went wrong in a ledger or settlement store, for callers to match on.
///
/// A refusal of a payment (limits, funds, locked wallet) is not an error: it is a per-item result
/// ([`super::LedgerRefusal`]). An error means the whole batch did not happen: nothing moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LedgerErrorKind {
    /// The ledger URL or its options are wrong, or the stored data was made with another
    /// configuration (for example another settlement window length).
    Config,
    /// Could not open the database file or reach the database server.
    Connect,
    /// The database stayed locked or the transaction kept conflicting with concurrent ones
    /// beyond the retry bound. Retrying the same batch later is safe.
    Busy,
    /// The caller passed something no ledger accepts: an oversized batch, a malformed id.
    InvalidInput,
    /// A stored invariant is violated (money not conserved, a hold larger than the balance,
    /// positions not summing to zero). Nothing was committed; an operator must look.
    Integrity,
    /// Any other database failure.
    Database,
}

impl LedgerErrorKind {
    /// A stable code for logs, metrics and dead letters.
    pub fn code(self) -> &'static str {
        match self {
            LedgerErrorKind::Config => "ledger.config",
            LedgerErrorKind::Connect => "ledger.connect",
            LedgerErrorKind::Busy => "ledger.busy",
            LedgerErrorKind::InvalidInput => "ledger.invalid_input",
            LedgerErrorKind::Integrity => "ledger.integrity",
            LedgerErrorKind::Database => "ledger.database",
        }
    }

    /// Whether retrying the same batch later may succeed (the batch is idempotent, so a retry
    /// never moves money twice).
    pub fn is_retryable(self) -> bool {
        matches!(self, LedgerErrorKind::Connect | LedgerErrorKind::Busy)
    }
}

/// A ledger error: a [`LedgerErrorKind`] with a message and the underlying cause.
#[derive(Debug)]
pub struct LedgerError {
    kind: LedgerErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl LedgerError {
    /// An error of `kind` with a message.
    pub fn new(kind: LedgerErrorKind, message: impl Into<String>) -> Self {
        LedgerError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: LedgerErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        LedgerError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> LedgerErrorKind {
        self.kind
    }

    /// The stable code of [`Self::kind`].
    pub fn reason_code(&self) -> &'static str {
        self.kind.code()
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        LedgerError::new(LedgerErrorKind::InvalidInput, message)
    }

    pub(crate) fn integrity(message: impl Into<String>) -> Self {
        LedgerError::new(LedgerErrorKind::Integrity, message)
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for LedgerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
