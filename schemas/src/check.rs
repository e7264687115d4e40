//! Contract rules shared by the messages: the checks behind [`Message::validate`].
//!
//! Each check names the field it checks so the error says what to fix. They check shape and
//! bounds only; whether a signature verifies or a wallet may pay is the pipeline's business.
//!
//! [`Message::validate`]: crate::Message::validate

use std::fmt::Display;

use crate::{error::CodecError, limits::*};

/// An id: 1 to [`ID_CHARS_MAX`] ASCII letters, digits, `-` or `_`.
pub(crate) fn id(field: &str, value: &str) -> Result<(), CodecError> {
    if value.is_empty() || value.len() > ID_CHARS_MAX {
        return Err(CodecError::invalid_field(
            field,
            format_args!("{} characters, expected 1 to {ID_CHARS_MAX}", value.len()),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CodecError::invalid_field(
            field,
            "only ASCII letters, digits, '-' and '_' are allowed",
        ));
    }
    Ok(())
}

/// An ISO 4217 currency code: three upper-case ASCII letters.
pub(crate) fn currency(field: &str, value: &str) -> Result<(), CodecError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            "expected three upper-case letters (ISO 4217)",
        ))
    }
}

/// A reason code: 1 to [`REASON_CODE_CHARS_MAX`] lower-case ASCII letters, digits, `.` or `_`.
pub(crate) fn reason_code(field: &str, value: &str) -> Result<(), CodecError> {
    let well_formed = !value.is_empty()
        && value.len() <= REASON_CODE_CHARS_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            format_args!(
                "expected 1 to {REASON_CODE_CHARS_MAX} of a-z, 0-9, '.', '_' ({} bytes given)",
                value.len()
            ),
        ))
    }
}

/// A reason code that is present exactly when the status is a rejection.
pub(crate) fn reason_for_status(rejected: bool, reason: Option<&str>) -> Result<(), CodecError> {
    match (rejected, reason) {
        (true, Some(code)) => reason_code("reason_code", code),
        (false, None) => Ok(()),
        (true, None) => Err(CodecError::invalid_field(
            "reason_code",
            "required when the status is a rejection",
        )),
        (false, Some(_)) => Err(CodecError::invalid_field(
            "reason_code",
            "must be null unless the status is a rejection",
        )),
    }
}

/// Free text of at most `max` bytes (may be empty).
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), CodecError> {
    if value.len() <= max {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            format_args!("{} bytes, at most {max} allowed", value.len()),
        ))
    }
}

/// Free text of 1 to `max` bytes.
pub(crate) fn non_empty_text(field: &str, value: &str, max: usize) -> Result<(), CodecError> {
    if value.is_empty() {
        return Err(CodecError::invalid_field(field, "must not be empty"));
    }
    text(field, value, max)
}

/// An amount of a single payment, fee or limit: 1 to [`AMOUNT_FEN_MAX`].
pub(crate) fn amount_positive(field: &str, fen: i64) -> Result<(), CodecError> {
    range(field, fen, 1, AMOUNT_FEN_MAX)
}

/// An amount that may be zero: 0 to [`AMOUNT_FEN_MAX`].
pub(crate) fn amount(field: &str, fen: i64) -> Result<(), CodecError> {
    range(field, fen, 0, AMOUNT_FEN_MAX)
}

/// A count, sequence number, duration or timestamp: never negative.
pub(crate) fn non_negative(field: &str, value: i64) -> Result<(), CodecError> {
    if value >= 0 {
        Ok(())
    } else {
        Err(CodecError::invalid_field(field, "must not be negative"))
    }
}

/// A value within `min..=max`.
pub(crate) fn range<T: PartialOrd + Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), CodecError> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            format_args!("{value} outside {min}..={max}"),
        ))
    }
}

/// A moment that must come strictly after another (expiry after issue, window end after start).
pub(crate) fn after(
    field: &str,
    later_ms: i64,
    earlier_field: &str,
    earlier_ms: i64,
) -> Result<(), CodecError> {
    if later_ms > earlier_ms {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            format_args!("must be after {earlier_field}"),
        ))
    }
}

/// A collection length within `min..=max`.
pub(crate) fn count(field: &str, len: usize, min: usize, max: usize) -> Result<(), CodecError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(CodecError::invalid_field(
            field,
            format_args!("{len} elements, expected {min} to {max}"),
        ))
    }
}

/// A DER certificate: 1 to [`CERTIFICATE_BYTES_MAX`] bytes. Whether it parses is the PKI's check.
pub(crate) fn certificate(field: &str, der: &[u8]) -> Result<(), CodecError> {
    if der.is_empty() || der.len() > CERTIFICATE_BYTES_MAX {
        Err(CodecError::invalid_field(
            field,
            format_args!("{} bytes, expected 1 to {CERTIFICATE_BYTES_MAX}", der.len()),
        ))
    } else {
        Ok(())
    }
}

/// A signature: at most [`SIGNATURE_BYTES_MAX`] bytes.
///
/// Empty is allowed so that a message can be encoded in its to-be-signed form; an empty
/// signature never verifies.
pub(crate) fn signature(field: &str, signature: &[u8]) -> Result<(), CodecError> {
    if signature.len() > SIGNATURE_BYTES_MAX {
        Err(CodecError::invalid_field(
            field,
            format_args!(
                "{} bytes, at most {SIGNATURE_BYTES_MAX} allowed",
                signature.len()
            ),
        ))
    } else {
        Ok(())
    }
}

/// A position in 1e-7 degrees.
pub(crate) fn position(latitude_e7: i32, longitude_e7: i32) -> Result<(), CodecError> {
    range(
        "latitude_e7",
        latitude_e7,
        -LATITUDE_E7_MAX,
        LATITUDE_E7_MAX,
    )?;
    range(
        "longitude_e7",
        longitude_e7,
        -LONGITUDE_E7_MAX,
        LONGITUDE_E7_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rejects_dot_which_would_split_a_subject() {
        let error = id("wallet_id", "w.1").unwrap_err();
        assert_eq!(error.reason_code(), "schema.invalid_field");
        assert!(error.detail().starts_with("wallet_id:"));
    }

    #[test]
    fn id_accepts_the_longest_allowed() {
        assert_eq!(id("wallet_id", &"9".repeat(ID_CHARS_MAX)), Ok(()));
        assert!(id("wallet_id", &"9".repeat(ID_CHARS_MAX + 1)).is_err());
    }

    #[test]
    fn reason_is_required_exactly_for_rejections() {
        assert_eq!(reason_for_status(true, Some("cert.expired")), Ok(()));
        assert_eq!(reason_for_status(false, None), Ok(()));
        assert!(reason_for_status(true, None).is_err());
        assert!(reason_for_status(false, Some("cert.expired")).is_err());
        assert!(reason_for_status(true, Some("Cert Expired")).is_err());
    }

    #[test]
    fn currency_requires_three_upper_case_letters() {
        assert_eq!(currency("currency", "CNY"), Ok(()));
        assert!(currency("currency", "cny").is_err());
        assert!(currency("currency", "CNYX").is_err());
    }
}
