//! One error type for every area of the pipeline: [`Error<K>`], a kind the caller matches on,
//! a message for people and the cause underneath.
//!
//! An area defines only its kind (an enum of what a caller can do something about) and an
//! alias, e.g. `pub type StageError = Error<StageErrorKind>`; construction, `Display`, the
//! source chain and matching are shared.

use std::error::Error as StdError;
use std::fmt;

/// The cause of an error, boxed.
pub type Source = Box<dyn StdError + Send + Sync + 'static>;

/// An error of kind `K`: match on [`Error::kind`]; the message and the source are for people.
#[derive(Debug)]
pub struct Error<K> {
    kind: K,
    message: String,
    source: Option<Source>,
}

impl<K> Error<K>
where
    K: Clone + fmt::Debug + fmt::Display + PartialEq,
{
    /// An error of `kind` with a message.
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: K, message: impl Into<String>, source: impl Into<Source>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> K {
        self.kind.clone()
    }

    /// What went wrong, for people (without the source).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The cause, if it is of type `E` (e.g. a `LedgerError` under a stage error).
    pub fn source_as<E: StdError + 'static>(&self) -> Option<&E> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<E>())
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug + fmt::Display> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Broken,
    }

    impl fmt::Display for Kind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("broken")
        }
    }

    #[test]
    fn display_shows_kind_message_and_source() {
        let cause = std::io::Error::other("disk gone");
        let error = Error::with_source(Kind::Broken, "writing the record", cause);
        assert_eq!(error.kind(), Kind::Broken);
        assert_eq!(error.message(), "writing the record");
        assert_eq!(error.to_string(), "broken: writing the record: disk gone");
        assert!(StdError::source(&error).is_some());
        assert_eq!(
            error.source_as::<std::io::Error>().map(|e| e.to_string()),
            Some("disk gone".to_owned())
        );
        assert!(error.source_as::<fmt::Error>().is_none());
    }

    #[test]
    fn without_source_display_is_kind_and_message() {
        let error = Error::new(Kind::Broken, "nothing underneath");
        assert_eq!(error.to_string(), "broken: nothing underneath");
        assert!(StdError::source(&error).is_none());
    }
}
