//! The one error type of the codec, with a kind a caller can match and a stable reason code for
//! dead letters and metrics.

use std::fmt;

/// What went wrong while encoding or decoding a frame.
///
/// Each kind has a stable [`reason_code`](CodecErrorKind::reason_code); codes are never renamed
/// or reused, so dashboards and dead-letter consumers may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// The frame is longer than the limit of the message.
    TooLarge,
    /// The frame ends before its header or its datum is complete.
    Truncated,
    /// The first byte is not the Confluent magic byte `0`.
    BadMagic,
    /// The schema id is not in the schema table.
    UnknownSchemaId,
    /// The schema id belongs to another message than the one asked for.
    WrongMessage,
    /// The datum does not follow its writer schema (bad varint, index out of range, invalid
    /// UTF-8, ...).
    InvalidDatum,
    /// Bytes remain after the datum.
    TrailingBytes,
    /// A field breaks a contract rule (a limit, a sign, a format, a cross-field rule).
    InvalidField,
    /// The value could not be written with its schema: the Rust type and the schema disagree.
    EncodeFailed,
}

impl CodecErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 9] = [
        Self::TooLarge,
        Self::Truncated,
        Self::BadMagic,
        Self::UnknownSchemaId,
        Self::WrongMessage,
        Self::InvalidDatum,
        Self::TrailingBytes,
        Self::InvalidField,
        Self::EncodeFailed,
    ];

    /// The stable reason code of this kind, e.g. `schema.bad_magic`.
    pub const fn reason_code(self) -> &'static str {
        match self {
            Self::TooLarge => "schema.too_large",
            Self::Truncated => "schema.truncated",
            Self::BadMagic => "schema.bad_magic",
            Self::UnknownSchemaId => "schema.unknown_id",
            Self::WrongMessage => "schema.wrong_message",
            Self::InvalidDatum => "schema.invalid_datum",
            Self::TrailingBytes => "schema.trailing_bytes",
            Self::InvalidField => "schema.invalid_field",
            Self::EncodeFailed => "schema.encode_failed",
        }
    }
}

impl fmt::Display for CodecErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason_code())
    }
}

/// Longest detail kept in an error, in bytes: errors end up in logs and dead letters, and the
/// Avro library may describe a whole schema.
const ERROR_DETAIL_BYTES_MAX: usize = 512;

/// A frame was rejected or a message could not be encoded.
///
/// The detail names fields, sizes and limits; it never holds field contents such as keys or
/// signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    kind: CodecErrorKind,
    detail: String,
}

impl CodecError {
    pub(crate) fn new(kind: CodecErrorKind, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > ERROR_DETAIL_BYTES_MAX {
            let mut cut = ERROR_DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Self { kind, detail }
    }

    /// Builds an [`InvalidField`](CodecErrorKind::InvalidField) error for `field`.
    pub(crate) fn invalid_field(field: &str, problem: impl fmt::Display) -> Self {
        Self::new(CodecErrorKind::InvalidField, format!("{field}: {problem}"))
    }

    /// Prefixes the detail with the path of the enclosing field, e.g. `positions[3]`.
    pub(crate) fn within(mut self, path: impl fmt::Display) -> Self {
        self.detail = format!("{path}.{}", self.detail);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }

    /// The stable reason code, e.g. `schema.unknown_id`.
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_code()
    }

    /// A human-readable explanation: which field, which limit, which size.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason_code(), self.detail)
    }
}

impl std::error::Error for CodecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_distinct_and_prefixed() {
        let mut codes: Vec<&str> = CodecErrorKind::ALL
            .iter()
            .map(|k| k.reason_code())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CodecErrorKind::ALL.len());
        assert!(codes.iter().all(|c| c.starts_with("schema.")));
    }

    #[test]
    fn long_detail_is_cut_on_a_char_boundary() {
        let error = CodecError::new(CodecErrorKind::InvalidDatum, "é".repeat(600));
        assert!(error.detail().len() <= ERROR_DETAIL_BYTES_MAX + '…'.len_utf8());
        assert!(error.detail().ends_with('…'));
    }

    #[test]
    fn display_starts_with_reason_code() {
        let error = CodecError::invalid_field("amount_fen", "must be positive");
        assert_eq!(
            error.to_string(),
            "schema.invalid_field: amount_fen: must be positive"
        );
    }
}
