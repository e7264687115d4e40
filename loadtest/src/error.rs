//! Why a load test could not run or could not write its results.

use std::fmt;

/// What went wrong, as a stable code a caller (or a CI script reading stderr) can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadTestErrorKind {
    /// A setting is out of range or inconsistent (e.g. warm-up longer than the run).
    Config,
    /// The network (PKI, ledgers) could not be provisioned.
    Provision,
    /// The bus failed: connect, subjects, publish or consume.
    Bus,
    /// A ledger query failed (money check).
    Ledger,
    /// The synthetic terminals could not produce a payment.
    Generate,
    /// The signature work of the crypto ceiling failed (a key or certificate is unusable).
    Crypto,
    /// The report or the plot could not be written.
    Output,
    /// The plot format asked for is not supported.
    PlotFormat,
}

impl LoadTestErrorKind {
    /// The stable reason code, e.g. `loadtest.config`.
    pub fn reason_code(self) -> &'static str {
        match self {
            LoadTestErrorKind::Config => "loadtest.config",
            LoadTestErrorKind::Provision => "loadtest.provision",
            LoadTestErrorKind::Bus => "loadtest.bus",
            LoadTestErrorKind::Ledger => "loadtest.ledger",
            LoadTestErrorKind::Generate => "loadtest.generate",
            LoadTestErrorKind::Crypto => "loadtest.crypto",
            LoadTestErrorKind::Output => "loadtest.output",
            LoadTestErrorKind::PlotFormat => "loadtest.plot_format",
        }
    }
}

impl fmt::Display for LoadTestErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason_code())
    }
}

/// A load-test failure: a [`LoadTestErrorKind`] and a message for the operator.
#[derive(Debug)]
pub struct LoadTestError {
    kind: LoadTestErrorKind,
    message: String,
}

impl LoadTestError {
    /// An error of `kind`.
    pub fn new(kind: LoadTestErrorKind, message: impl Into<String>) -> Self {
        LoadTestError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> LoadTestErrorKind {
        self.kind
    }

    /// The stable reason code of the kind.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        LoadTestError::new(LoadTestErrorKind::Config, message)
    }

    pub(crate) fn bus(context: &str, error: impl fmt::Display) -> Self {
        LoadTestError::new(LoadTestErrorKind::Bus, format!("{context}: {error}"))
    }
}

impl fmt::Display for LoadTestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason_code(), self.message)
    }
}

impl std::error::Error for LoadTestError {}
